"""DataLoader workers: the cores there are for them (`usable_cores`), and starting them safely
(`Loader`, a DataLoader that forks them on Linux, calls `settle` and holds SIGINT and SIGTERM
(`held_signals`) while it does: every loader of zfnet that may have workers is one).

Forked, on Linux, whatever Python's default: Python 3.14 made it forkserver, under which each
worker imports torch and zfnet again, each time a loader is iterated, and gets the dataset
pickled (a lambda in it cannot be); and the rest of this module is about forked workers.
Elsewhere (macOS, Windows) the platform's own start method.

A DataLoader with workers forks them each time it is iterated. On Python before 3.12, a fork
made while another thread of the process is ending can leave the child waiting forever on the
interpreter's thread-list lock (CPython gh-112275, fixed in 3.12): the thread held it at the
moment of the fork, and the child never gets it back. A validation's worker, forked right after
a training epoch under torchrun, hung that way (gdb: `_PyThreadState_DeleteExcept` waiting in
`PyOS_AfterFork_Child`). The Python thread that ends around then is the queue-feeder thread of
the loader iterated just before: its queues are closed when it stops, and the thread ends a
little later. So before a loader forks, those threads are waited for; a thread that has been
joined has left the lock.

Ctrl-C while the workers are forked was lost: Python drops ("Exception ignored") a
KeyboardInterrupt raised in its at-fork callbacks (logging's, for one), and the command went on.
So the signals are held meanwhile and raised once the workers are started (`held_signals`).

A worker ignores SIGTERM (the main process decides), but PyTorch's worker start-up first sets
a SIGTERM handler that dies of a signal the main process did not send: a scheduler's SIGTERM
to the whole job landing then killed the worker. So a worker blocks SIGTERM from its fork to
the moment it ignores it. An iterator that fails as it starts (a worker dead already) has its
workers ended with the error: they outlived it, and the interpreter's exit waited for them.

The same held for any iterator alive at the exit: PyTorch ends the workers of an iterator the
program still holds (an error's traceback holds the loop that raised) by multiprocessing's
SIGTERM to its daemonic children at the exit, which these ignore. A `zfnet train --strict
--workers 2` that met a broken file printed its error and never ended. So an iterator that
raises (a worker's error, a broken file under --strict) ends its workers as it raises, and the
exit ends those of any iterator still alive, before multiprocessing joins them. (Ended when
the iterator was collected, they took 5 s each: the collection of an error's traceback closes
the queues before the iterator's clean-up can tell the workers to stop.)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing.util  # noqa: F401  (its exit function registered before `_end_live`)
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

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


HELD = (signal.SIGINT, signal.SIGTERM)
_holding: dict[int, Any] = {}  # while signals are held: their handlers, to restore in a child


def _unhold_in_child() -> None:
    """In a process forked while signals were held: the handlers it would have had (and the
    holder's way to put them back)."""
    for s, handler in _holding.items():
        signal.signal(s, handler)
    _holding.clear()


_starting_workers = False  # a `Loader` forking its workers (signals held meanwhile)


def _after_fork_in_child() -> None:
    """In any forked process: the handlers held at the fork put back (`_unhold_in_child`); in a
    `Loader`'s worker, SIGTERM also blocked until `_worker_init` ignores it. Between the fork
    and then, PyTorch's worker start-up installs a SIGTERM handler of its own that dies of the
    signal unless it comes from the main process: a scheduler's SIGTERM to the whole job,
    landing there, killed the worker, and the main process raised "DataLoader worker ...
    killed by signal" instead of saving."""
    if _starting_workers:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    _unhold_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """SIGINT and SIGTERM held while the block runs, then raised again, to the handlers they were
    meant for; on the main thread only (elsewhere, and when held already, nothing is done).
    Held by a handler, not a signal mask: a process-wide signal goes to any thread that does not
    block it, and Python runs its handlers in the main thread. A process forked meanwhile starts
    with the handlers as they were (`os.register_at_fork`)."""
    if _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    for s in HELD:
        handler = signal.signal(s, lambda signum, frame: held.append(signum))
        _holding[s] = handler if handler is not None else signal.SIG_DFL  # None: set outside Python
    try:
        yield
    finally:
        _unhold_in_child()  # here too: the handlers back
        for s in dict.fromkeys(held):
            signal.raise_signal(s)


def end_workers(batches: Any, *, stopping: bool = False) -> None:
    """End the workers of `batches` (a DataLoader's iterator, also one whose start failed) now.
    A DataLoader ends them when its iterator is collected, which after an exception can be as
    late as the interpreter's exit. `stopping`: called as an exception (a Ctrl-C) propagates,
    which a worker just forked may have got too and died of, before it could ignore it;
    PyTorch's check of its workers then raises "DataLoader worker exited unexpectedly" over the
    exception (and a half-started iterator's clean-up misses what it never set): not a second
    error here. A worker still alive after the iterator's own clean-up (which sends SIGTERM,
    ignored by them) is killed: its pid is no longer watched by then."""
    end = getattr(batches, "_shutdown_workers", None)  # the iterator's own clean-up
    if end is None:
        return
    try:
        end()
    except Exception:
        if not stopping:
            raise
    finally:
        for w in getattr(batches, "_workers", ()):
            if w.is_alive():
                w.kill()
                w.join(5)


def _worker_init(then: Callable[[int], Any] | None, worker: int) -> None:
    """A worker ignores SIGTERM, which a scheduler (scancel, a time limit) or `timeout` sends to
    every process of the job: the main process decides — `zfnet train` saves where it was — and
    ends its workers itself. A worker killed by it made PyTorch raise "DataLoader worker ...
    killed by signal" in the main process instead, before anything was saved. (Ctrl-C ends a
    worker quietly, by PyTorch's own rule; a main process killed outright: its workers see it
    gone, by PyTorch's watchdog, and end.) Then `then`, the loader's own `worker_init_fn`."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # blocked since the fork (`_after_fork_in_child`): one that came meanwhile is dropped now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if then is not None:
        then(worker)


_live: weakref.WeakSet[_MultiProcessingDataLoaderIter] = weakref.WeakSet()  # `Loader`s' own


class _Batches(_MultiProcessingDataLoaderIter):
    """A `Loader`'s iterator with workers, which ends them as it raises (a worker's error, a
    broken file under --strict, a Ctrl-C while it waits): no error of it is resumed after."""

    def __init__(self, loader: DataLoader) -> None:
        super().__init__(loader)
        _live.add(self)

    def _next_data(self) -> Any:
        try:
            return super()._next_data()
        except StopIteration:  # the end: ended already (PyTorch's own)
            raise
        except BaseException:
            end_workers(self, stopping=True)
            raise


@atexit.register
def _end_live() -> None:
    """At the exit, end the workers of every `Loader` iterator still alive (held by an error's
    traceback, say), before multiprocessing's exit function joins them forever: they ignore
    its SIGTERM. Runs before PyTorch's exit flag is set (registered later, it runs first), so
    the iterator's own clean-up still works."""
    for batches in list(_live):
        if not getattr(batches, "_shutdown", True):
            end_workers(batches, stopping=True)


class Loader(DataLoader):
    """A `DataLoader` whose workers are forked on Linux (unless `multiprocessing_context` says
    otherwise) and ignore SIGTERM (`_worker_init`), and that, each time it starts iterating
    with workers, waits for ending queue-feeder threads (`settle`) and holds SIGINT and SIGTERM
    while it starts them (`held_signals`). A signal raised then ends the workers before it
    propagates."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if (self.num_workers and self.multiprocessing_context is None
                and sys.platform.startswith("linux")):
            self.multiprocessing_context = "fork"
        self.worker_init_fn = functools.partial(_worker_init, self.worker_init_fn)

    def __iter__(self) -> Iterator[Any]:
        if not self.num_workers:
            return super().__iter__()
        settle(self)
        global _starting_workers
        batches = None
        try:
            with held_signals():
                _starting_workers = True
                try:
                    batches = super().__iter__()
                finally:
                    _starting_workers = False
        except BaseException as err:
            end_workers(batches if batches is not None else _half_started(err), stopping=True)
            raise
        return batches

    def _get_iterator(self) -> Any:
        if not self.num_workers:
            return super()._get_iterator()
        self.check_worker_number_rationality()
        return _Batches(self)


def _half_started(err: BaseException) -> Any:
    """The DataLoader iterator whose start raised `err` (a worker that died as it started, a
    signal), never returned but found in the traceback; None if there is none. Left alone, its
    workers (which ignore SIGTERM) outlived it, and the interpreter's exit waited for them."""
    tb = err.__traceback__
    while tb is not None:
        if isinstance(half := tb.tb_frame.f_locals.get("self"), _MultiProcessingDataLoaderIter):
            return half
        tb = tb.tb_next
    return None
