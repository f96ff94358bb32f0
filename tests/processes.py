"""For tests that start other Python processes (torchrun, the CLI, a script)."""

from __future__ import annotations

import os
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
