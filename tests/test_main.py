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
