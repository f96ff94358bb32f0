"""zfnet.data.workers.settle: before a loader forks its workers, an ending queue-feeder thread is
waited for (a fork while it ends can hang the child on Python < 3.12, CPython gh-112275), and
for a bounded time only; zfnet's `Loader` does it by itself."""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace

import pytest

from zfnet.data.workers import FEEDER, settle

pytestmark = pytest.mark.skipif(sys.version_info >= (3, 12),
                                reason="fixed in CPython 3.12: settle does nothing there")


def _feeder(seconds: float) -> threading.Thread:
    """A thread named as multiprocessing's feeder, ending after `seconds`."""
    t = threading.Thread(target=time.sleep, args=(seconds,), name=FEEDER, daemon=True)
    t.start()
    return t


def test_an_ending_feeder_is_waited_for_before_workers_fork() -> None:
    t = _feeder(0.3)
    settle(SimpleNamespace(num_workers=0))  # no workers, no fork: nothing to wait for
    assert t.is_alive()
    settle(SimpleNamespace(num_workers=2))
    assert not t.is_alive()


def test_the_wait_is_bounded() -> None:
    done = threading.Event()  # a feeder that is not ending (an open queue's), until the end
    t = threading.Thread(target=done.wait, name=FEEDER, daemon=True)
    t.start()
    try:
        start = time.monotonic()
        settle(SimpleNamespace(num_workers=1), timeout=0.2)
        assert time.monotonic() - start < 1.0 and t.is_alive()
    finally:
        done.set()
        t.join()


def test_a_loader_settles_before_it_forks_its_workers() -> None:
    """zfnet's DataLoader (every one of its loaders that may have workers) waits by itself."""
    from zfnet.data.workers import Loader

    t = _feeder(1.0)  # longer than the loader takes without waiting
    batches = list(Loader(list(range(4)), batch_size=2, num_workers=1))
    assert not t.is_alive() and [b.tolist() for b in batches] == [[0, 1], [2, 3]]
