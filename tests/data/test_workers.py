"""zfnet.data.workers: before a loader forks its workers, an ending queue-feeder thread is
waited for (`settle`: a fork while it ends can hang the child on Python < 3.12, CPython
gh-112275), and for a bounded time only; SIGINT and SIGTERM are held while they are forked
(`held_signals`), not lost; zfnet's `Loader` does both by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from tests.processes import ROOT, process_env
from zfnet.data.workers import FEEDER, Loader, held_signals, settle

before_312 = pytest.mark.skipif(sys.version_info >= (3, 12),
                                reason="fixed in CPython 3.12: settle does nothing there")


def _feeder(seconds: float) -> threading.Thread:
    """A thread named as multiprocessing's feeder, ending after `seconds`."""
    t = threading.Thread(target=time.sleep, args=(seconds,), name=FEEDER, daemon=True)
    t.start()
    return t


@before_312
def test_an_ending_feeder_is_waited_for_before_workers_fork() -> None:
    t = _feeder(0.3)
    settle(SimpleNamespace(num_workers=0))  # no workers, no fork: nothing to wait for
    assert t.is_alive()
    settle(SimpleNamespace(num_workers=2))
    assert not t.is_alive()


@before_312
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


@before_312
def test_a_loader_settles_before_it_forks_its_workers() -> None:
    """zfnet's DataLoader (every one of its loaders that may have workers) waits by itself."""
    t = _feeder(1.0)  # longer than the loader takes without waiting
    batches = list(Loader(list(range(4)), batch_size=2, num_workers=1))
    assert not t.is_alive() and [b.tolist() for b in batches] == [[0, 1], [2, 3]]


_CTRL_C_AT_FORK = """
import multiprocessing, os, signal
from zfnet.data.workers import Loader
forks = []
def ctrl_c_once():  # SIGINT as the first worker is forked: it lands in an at-fork callback
    forks.append(1)
    if len(forks) == 1:
        os.kill(os.getpid(), signal.SIGINT)
os.register_at_fork(after_in_parent=ctrl_c_once)
try:
    for batch in Loader(list(range(8)), batch_size=2, num_workers=2):
        pass
    print("went on")
except KeyboardInterrupt:
    print("interrupted", len(forks), "forks,", len(multiprocessing.active_children()), "left")
"""


def test_ctrl_c_while_a_loader_forks_its_workers_is_not_lost() -> None:
    """Python drops a KeyboardInterrupt raised in its at-fork callbacks ("Exception ignored"):
    the loop went on. Held, it is raised once the workers are started, and they are ended."""
    res = subprocess.run([sys.executable, "-c", _CTRL_C_AT_FORK], env=process_env(),
                         capture_output=True, text=True, timeout=120)
    assert (res.stdout, res.stderr) == ("interrupted 2 forks, 0 left\n", "")


_RUNNING_CHILDREN = """
import os
# counted from /proc: a worker that PyTorch's error interrupted multiprocessing in reaping
# stays in its list of children, gone as it is (Python 3.12, a loaded machine)
def running_children():
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, ppid = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        n += int(ppid) == os.getpid() and state != "Z"
    return n
"""

_A_WORKER_DIES_OF_IT = _RUNNING_CHILDREN + """
import multiprocessing.process, signal
from zfnet.data.workers import Loader
real, started = multiprocessing.process.BaseProcess.start, []
def start(self):  # the Ctrl-C comes as the 2nd worker is forked, which dies
    real(self)
    started.append(self)
    if len(started) == 2:
        os.kill(self.pid, signal.SIGKILL)
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
        signal.raise_signal(signal.SIGINT)
multiprocessing.process.BaseProcess.start = start
try:
    iter(Loader(list(range(8)), batch_size=2, num_workers=2))
    print("went on")
except KeyboardInterrupt:
    print("interrupted", running_children(), "left")
"""


def test_a_worker_that_dies_of_the_ctrl_c_is_not_a_second_error() -> None:
    """A worker forked as Ctrl-C comes gets it before it can ignore it, and dies (exit 1 of a
    KeyboardInterrupt in its bootstrap; here SIGKILL, which always kills): the ending of the
    workers is not then PyTorch's "DataLoader worker exited unexpectedly" over the
    KeyboardInterrupt (seen on Python 3.13: `zfnet shards` ended with that traceback, exit 1)."""
    res = subprocess.run([sys.executable, "-c", _A_WORKER_DIES_OF_IT], env=process_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.stdout == "interrupted 0 left\n", res.stderr[-3000:]
    assert "exited unexpectedly" not in res.stderr, res.stderr[-3000:]


_SIGTERM_AS_A_WORKER_STARTS = """
import os, signal
from torch.utils.data._utils import signal_handling
from zfnet.data.workers import Loader
real = signal_handling._set_worker_signal_handlers
def start_up(*args):  # PyTorch's worker start-up, and a scheduler's SIGTERM to the job right then
    real(*args)
    os.kill(os.getpid(), signal.SIGTERM)
signal_handling._set_worker_signal_handlers = start_up
signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the main process's (zfnet train's)
print([b.tolist() for b in Loader(list(range(4)), batch_size=2, num_workers=2)])
"""


def test_a_sigterm_as_a_worker_starts_does_not_kill_it() -> None:
    """PyTorch's worker start-up installs a SIGTERM handler that dies of a SIGTERM not sent by
    the main process, before the worker gets to ignore it: a scheduler's SIGTERM to the whole
    job landing then killed the worker, and `zfnet train` ended with "DataLoader worker ...
    killed by signal: Terminated", nothing saved (1 run in 7 of the process-group test on a
    loaded machine). Blocked from the fork until ignored, it is dropped."""
    res = subprocess.run([sys.executable, "-c", _SIGTERM_AS_A_WORKER_STARTS],
                         env=process_env(), capture_output=True, text=True, timeout=60)
    assert (res.stdout, res.returncode) == ("[[0, 1], [2, 3]]\n", 0), res.stderr[-3000:]


_HALF_STARTED = _RUNNING_CHILDREN + """
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter
from zfnet.data.workers import Loader
def broken(self):  # an error after the workers are forked, before the iterator is returned
    raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")
_MultiProcessingDataLoaderIter._try_put_index = broken
try:
    iter(Loader(list(range(8)), batch_size=2, num_workers=2))
except RuntimeError:
    print("raised,", running_children(), "left")
"""


def test_the_workers_of_an_iterator_that_failed_half_started_are_ended() -> None:
    """An error as the iterator starts (a worker killed then) left its workers running, which
    ignore SIGTERM: the interpreter's exit waited for them forever (the process-group SIGTERM
    test hung 1 run in 7 on a loaded machine). They are ended with the error."""
    res = subprocess.run([sys.executable, "-c", _HALF_STARTED], env=process_env(),
                         capture_output=True, text=True, timeout=60)
    assert (res.stdout, res.returncode) == ("raised, 0 left\n", 0), res.stderr[-3000:]


class _RaisesAt:
    """A dataset of 8 items whose item `bad` raises (a broken file under --strict)."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        if i == self.bad:
            raise ValueError(f"item {i} is broken")
        return i


def test_an_iterator_that_raises_ends_its_workers_as_it_raises() -> None:
    """A worker's error: the workers were left running while the error's traceback held the
    iterator, and ended when it was collected (5 s a worker, a suite's random test paying
    for them) or never (the exit, below)."""
    batches = iter(Loader(_RaisesAt(5), batch_size=2, num_workers=2))
    assert next(batches).tolist() == [0, 1]
    with pytest.raises(ValueError, match="item 5 is broken"):
        list(batches)
    assert [w.is_alive() for w in batches._workers] == [False, False]
    ok = iter(Loader(_RaisesAt(-1), batch_size=2, num_workers=2))  # to its end: as before
    assert [b.tolist() for b in ok] == [[0, 1], [2, 3], [4, 5], [6, 7]]


_HELD_AT_THE_EXIT = """
import sys
from zfnet.data.workers import Loader
from tests.data.test_workers import _RaisesAt
def main():  # its frame, in the traceback, holds the iterator
    batches = iter(Loader(_RaisesAt(int(sys.argv[1])), batch_size=2, num_workers=2))
    for batch in batches:
        if batch[0] == 2:
            raise RuntimeError("the loop's own error")
main()
"""


@pytest.mark.parametrize("bad", [-1, 3])
def test_the_exit_ends_the_workers_of_an_iterator_still_held(bad: int) -> None:
    """An error raised by the loop (-1) or by the loader (3), uncaught: the traceback holds the
    iterator at the exit, and multiprocessing joined its workers forever after a SIGTERM they
    ignore: `zfnet train --strict --workers 2` printed its error and never ended."""
    res = subprocess.run([sys.executable, "-c", _HELD_AT_THE_EXIT, str(bad)], cwd=ROOT,
                         env=process_env(), capture_output=True, text=True, timeout=60)
    error = "the loop's own error" if bad < 0 else "item 3 is broken"
    assert res.returncode == 1 and error in res.stderr, res.stderr[-3000:]


class _Handlers:
    """A dataset whose items are the SIGINT and SIGTERM handlers of the process reading it."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> list[str]:
        return [repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)] + (
            [os.environ["ZFNET_TEST_INIT"]] if "ZFNET_TEST_INIT" in os.environ else [])


def test_workers_start_with_the_handlers_they_would_have_had() -> None:
    """Forked while the signals are held, a worker gets the process's own SIGINT handler back
    (a worker left with the holding one would ignore Ctrl-C), and ignores SIGTERM: the main
    process stops (a scheduler sends it to every process of the job), and ends its workers.
    The loader's own worker_init_fn is still called."""
    own = _Handlers()[0]
    loader = Loader(_Handlers(), batch_size=None, num_workers=1,
                    worker_init_fn=lambda w: os.environ.__setitem__("ZFNET_TEST_INIT", str(w)))
    assert next(iter(loader)) == [own[0], repr(signal.SIG_IGN), "0"]
    assert _Handlers()[0] == own  # given back here too


def test_held_signals_reach_their_handlers_once_the_block_ends() -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with pytest.raises(KeyboardInterrupt):
            with held_signals():
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)  # twice: raised once
                with held_signals():  # held already: the outer block raises them
                    signal.raise_signal(signal.SIGTERM)
                assert got == []
        assert got == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_only_the_main_thread_holds_signals() -> None:
    """Elsewhere a signal handler cannot be set: the block runs as it is."""
    seen: list[object] = []

    def elsewhere() -> None:
        with held_signals():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]


_NOT_PICKLED = """
import multiprocessing, sys
from torch.utils.data import Dataset
from zfnet.data.workers import Loader


class Mapped(Dataset):  # a dataset with a lambda (a transforms.Lambda, say) cannot be pickled
    def __init__(self, items, f):
        self.items, self.f = items, f
    def __len__(self):
        return len(self.items)
    def __getitem__(self, i):
        return self.f(self.items[i])


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1], force=True)  # Python 3.14's is forkserver
    data = Mapped(range(4), lambda x: x * x)
    print([b.tolist() for b in Loader(data, batch_size=2, num_workers=2)])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked on Linux only")
@pytest.mark.parametrize("default", ["forkserver", "spawn"])
def test_workers_are_forked_whatever_pythons_default(default: str, tmp_path) -> None:
    """Not started afresh, importing torch and zfnet again each time a loader is iterated, with
    the dataset pickled (a lambda in it could not be); a context given is kept."""
    script = tmp_path / "script.py"
    script.write_text(_NOT_PICKLED)
    res = subprocess.run([sys.executable, str(script), default], env=process_env(),
                         capture_output=True, text=True, timeout=120)
    assert (res.stdout, res.stderr) == ("[[0, 1], [4, 9]]\n", "")
    assert Loader([1], num_workers=1, multiprocessing_context="spawn"
                  ).multiprocessing_context.get_start_method() == "spawn"
    assert Loader([1]).multiprocessing_context is None  # no workers: none to start
