"""bench/gpu_session.sh, the one command a GPU lease runs: its modes and its time budget (each
step gets what is left of it; one with too little left is skipped and said so). Its steps' dry
runs are tests of their own (test_cuda_check.py, test_bench_imagenet.py, test_gpu_overlap.py,
test_codec_check.py)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_session.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable, **env})


def test_an_unknown_mode_is_refused() -> None:
    p = _run("gpus")
    assert p.returncode == 2 and "usage" in p.stderr, p.stderr


def test_steps_with_too_little_time_left_are_skipped_and_logged(tmp_path) -> None:
    p = _run("dry", OUT=str(tmp_path), BUDGET="19")
    assert p.returncode == 0, p.stdout + p.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert "torch" in summary  # the machine's versions head it
    assert "device decoder:" in summary  # and which library decodes the device's batches
    for step in ("codec_check", "cuda_check_loader", "bench_imagenet", "gpu_overlap",
                 "mixed_share", "cuda_check_more"):
        assert f"== {step}: skipped" in summary, summary
    assert "whole session" in summary
