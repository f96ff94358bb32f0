"""DataLoader workers: the cores there are for them (`usable_cores`), and starting them safely
(`Loader`, a DataLoader that calls `settle` before it forks them: every loader of zfnet that
may have workers is one).

A DataLoader with workers forks them each time it is iterated. On Python before 3.12, a fork
made while another thread of the process is ending can leave the child waiting forever on the
interpreter's thread-list lock (CPython gh-112275, fixed in 3.12): the thread held it at the
moment of the fork, and the child never gets it back. A validation's worker, forked right after
a training epoch under torchrun, hung that way (gdb: `_PyThreadState_DeleteExcept` waiting in
`PyOS_AfterFork_Child`). The Python thread that ends around then is the queue-feeder thread of
the loader iterated just before: its queues are closed when it stops, and the thread ends a
little later. So before a loader forks, those threads are waited for; a thread that has been
joined has left the lock.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

FEEDER = "QueueFeederThread"  # multiprocessing.Queue's thread (torch.multiprocessing's too)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity; every core where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def settle(loader: Any, timeout: float = 2.0) -> None:
    """If `loader` (a DataLoader, or anything with `num_workers`) is about to fork workers, wait
    up to `timeout` seconds in all for other queue-feeder threads to end. Nothing on Python
    3.12+ or without workers."""
    if sys.version_info >= (3, 12) or not getattr(loader, "num_workers", 0):
        return
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name == FEEDER and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


class Loader(DataLoader):
    """A `DataLoader` that waits for ending queue-feeder threads (`settle`) each time it starts
    iterating, before it forks its workers."""

    def __iter__(self) -> Iterator[Any]:
        settle(self)
        return super().__iter__()
