"""`python -m zfnet` is the `zfnet` command (zfnet/__main__.py)."""

import os
import subprocess
import sys


def test_python_m_zfnet_runs_the_command() -> None:
    r = subprocess.run([sys.executable, "-m", "zfnet", "models"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "zfnet" in r.stdout.split() and "alexnet_zf" in r.stdout.split()
    r = subprocess.run([sys.executable, "-m", "zfnet", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("Usage: python -m zfnet ")


def test_the_command_starts_without_torch() -> None:
    """`import zfnet` and the command's start import torch only where a command needs it
    (zfnet/__init__.py): `zfnet --help` answers at once."""
    r = subprocess.run([sys.executable, "-c", "import sys, zfnet, zfnet.cli\n"
                        "assert 'torch' not in sys.modules, 'torch imported'\n"
                        "print(zfnet.create_model.__module__, 'torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["zfnet.models.registry", "True"], r.stderr


def test_a_command_on_zfnets_own_model_and_data_does_not_import_torchvision(tmp_path) -> None:
    """torchvision is imported where an image is decoded, resized or transformed: its import
    takes 1.9 s of torch._dynamo on a 2-core Zen 1 (via its `ops`), 2.2 s of a `zfnet eval` of
    a zfnet run's 5.2 s there."""
    r = subprocess.run([sys.executable, "-c", f"""
import sys
from zfnet.cli import main
for args in (["train", "--model", "zfnet_small", "--data", "synthetic?n_train=16&n_val=8",
              "--epochs", "1", "--batch-size", "8", "--out", {str(tmp_path / "run")!r},
              "--quiet", "--no-tensorboard"],
             ["eval", "--checkpoint", {str(tmp_path / "run")!r}, "--quiet"]):
    try:
        main(args)
    except SystemExit as e:
        assert not e.code, e.code
assert "torchvision" not in sys.modules, "torchvision imported"
"""], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "top-1 error" in r.stdout, r.stdout


_CTRL_C_IN_IMPORT = """
import importlib.abc, os, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):  # Ctrl-C as torch starts to load
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
from zfnet.cli import main
main(["models"])
"""


def test_ctrl_c_while_torch_loads_is_one_line() -> None:
    r = subprocess.run([sys.executable, "-c", _CTRL_C_IN_IMPORT], capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stderr) == (130, "interrupted (SIGINT)\n")
