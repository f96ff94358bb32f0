"""For tests that start other Python processes (torchrun, the CLI, a script)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def process_env() -> dict[str, str]:
    """The environment for a child process: one thread, this checkout's `src` first on the path
    (not whichever zfnet is installed), no torchrun variables inherited from the test's own."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def torchrun(*args: str, nproc: int = 2, cwd: str | Path = ROOT,
             env: dict[str, str] | None = None, timeout: float = 120
             ) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node NPROC ARGS` (ARGS: `-m module ...`), its output
    captured, as `subprocess.run` gives it (a timeout raises `subprocess.TimeoutExpired`). It
    runs in a process group of its own, stopped whole when it ends: a rank that hangs, and its
    loader workers, cannot outlive the test and slow the ones after it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(nproc), *args]
    p = subprocess.Popen(cmd, cwd=cwd, env=process_env() if env is None else env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(p)
        p.communicate()
        raise
    stop_group(p)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def stop_group(p: subprocess.Popen) -> None:
    """SIGKILL to what is left of `p`'s process group (`p` started with start_new_session)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def bench_script(name: str, *args: str, timeout: float = 170) -> subprocess.CompletedProcess:
    """`python bench/NAME ARGS` in a child process (`process_env`), its output captured."""
    return subprocess.run([sys.executable, str(ROOT / "bench" / name), *args],
                          capture_output=True, text=True, timeout=timeout, env=process_env())
