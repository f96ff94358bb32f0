"""One training process per run directory: `zfnet train` holds an advisory lock on
`RUN/.lock` while it trains (its main process; `fcntl.flock`, released by the system if the
process dies), so that a second `zfnet train --resume` of the same run, say a scheduler's
requeued job that overlaps the first, stops at once instead of writing the same checkpoints."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"


class RunLockedError(ValueError):
    """Another process trains this run directory now."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path, hold: bool = True) -> Iterator[None]:
    """Hold `run_dir`'s lock inside the block (the directory is made if missing); with `hold`
    False (a process other than the main one), do nothing. `RunLockedError` naming the
    process that holds it when another does."""
    if not hold:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            raise RunLockedError(
                f"{run_dir} is being trained by another process (pid {pid}): wait for it to "
                "end, or stop it (it saves a checkpoint; --resume then continues)") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
