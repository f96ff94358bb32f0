"""bench/cuda_check.py, the script a GPU session runs, works: on CUDA where the machine has it,
else as its dry run on the CPU (the CPU against itself)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_check_passes(tmp_path) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cuda_check.py"), "--out", str(tmp_path / "cc"),
         "--device", device, "--data", "synthetic?n_train=128&n_val=64",  # every path, small
         *([] if device == "cuda" else ["--in-process"])],
        capture_output=True, text=True, env=env, timeout=900,
    )
    log = p.stdout + p.stderr[-3000:]
    assert p.returncode == 0, log
    checks = 12 if device == "cuda" else 11  # fp16 autocast exists on CUDA only
    assert f"{checks}/{checks} passed" in p.stdout, log
