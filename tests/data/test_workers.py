"""zfnet.data.workers.settle: before a loader forks its workers, an ending queue-feeder thread is
waited for (a fork while it ends can hang the child on Python < 3.12, CPython gh-112275), and
for a bounded time only."""

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
