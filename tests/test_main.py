"""`python -m zfnet` is the `zfnet` command (zfnet/__main__.py)."""

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
