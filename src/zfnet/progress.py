"""Progress bars: one kind for every long stage (training, evaluation, mining, occlusion, probes,
shards, the mean image, the atlas).

On a terminal a bar is redrawn ten times a second. Into a log (stderr not a terminal: a redirect,
torchrun's, a cluster's job file) its state is written once a minute, each state a line of its
own, and its last state is kept: the paper's 70 epochs of ImageNet (700k steps) would write
~70 MB of bars at every step, and a mining of 50k images that is silent for an hour looks hung.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm import tqdm

ON_TERMINAL_S = 0.1  # seconds between two drawings of a bar on a terminal
INTO_LOG_S = 60.0  # ... and into a log

_SHOWN: ContextVar[bool] = ContextVar("zfnet_bars_shown", default=True)


@contextmanager
def bars(shown: bool) -> Iterator[None]:
    """Within it, every bar drawn in this thread is shown or not (a command's --quiet): the
    stages deep inside an analysis need not be told."""
    token = _SHOWN.set(shown)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def terminal() -> bool:
    """Whether stderr is a terminal (bars redrawn in place) rather than a log."""
    return sys.stderr.isatty()


class _LogLines:
    """A log for a bar: each state a line of its own. tqdm redraws in place with a carriage
    return (and spaces over a longer state), which a log keeps as one long line: `less` shows
    an hour of states as one, `grep` finds none, and a warning printed meanwhile lands in the
    middle of it. A state that says what the last one written said — the same count at the same
    elapsed second, only its rate measured again — is not written: the end of a bar drawn by its
    last update (the minute's tick) and again as it closes."""

    def __init__(self, fp: Any) -> None:
        self.fp = fp
        self.encoding = getattr(fp, "encoding", None)  # tqdm draws blocks where it is UTF-8
        self.last: str | None = None

    def write(self, s: str) -> None:
        state = s.lstrip("\r").rstrip(" \n")
        if not state.strip():  # tqdm's clearing, or its line end at close
            return
        said = _SAID.match(state)
        said_now = said.group(0) if said else state
        if said_now == self.last:
            return
        if sys.stdout is not None and sys.stdout is not self.fp:
            sys.stdout.flush()  # a log of both: what was printed before comes before
        self.fp.write(state + "\n")
        self.last = said_now

    def flush(self) -> None:
        self.fp.flush()


# a state up to its elapsed time: "desc: 80%|bar| 16/20 [00:12" of "... [00:12<00:03, 1.3it/s]"
_SAID = re.compile(r"^.* \[[^<,\]]*")


class _Bar(tqdm):
    """A tqdm bar whose end is flushed: the line after it comes after it in a log that holds
    stdout and stderr both."""

    def close(self) -> None:
        shown = not self.disable  # close() disables it
        super().close()
        if shown:
            self.fp.flush()


def bars_shown() -> bool:
    """Whether bars are shown here (not within `bars(False)`, a command's --quiet): for the bars
    of other libraries (torch hub's download)."""
    return _SHOWN.get()


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, unit: str = "it",
                 total: float | None = None, initial: float = 0, shown: bool = True,
                 leave: bool = False, position: int | None = None) -> tqdm:
    """A tqdm bar on stderr: drawn every `ON_TERMINAL_S` on a terminal, every `INTO_LOG_S` into a
    log, each state a line, the last one kept (`leave` is for a terminal). `shown=False`: no bar
    (another process than torchrun's first), nor within `bars(False)` (--quiet); the iterable is
    still iterated. Move it on with `update` (`refresh` draws at every call, a log's once a
    minute included)."""
    on_terminal = terminal()
    return _Bar(iterable, desc=desc, unit=unit, total=total, initial=initial,
                disable=not (shown and bars_shown()), leave=leave or not on_terminal,
                position=position,
                dynamic_ncols=True, file=sys.stderr if on_terminal else _LogLines(sys.stderr),
                mininterval=ON_TERMINAL_S if on_terminal else INTO_LOG_S)


@contextmanager
def counted_progress(*, desc: str, unit: str = "it") -> Iterator[Callable[[int, int], None]]:
    """A bar for work that reports `(done, total)` as it goes (occlusion, the atlas): drawn at
    the first report, when its total is known (drawn before, a log's first line said "0it"
    with no total), closed at the end, also after an error."""
    bar: tqdm | None = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(desc=desc, unit=unit, total=total)
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield report
    finally:
        if bar is not None:
            bar.close()


def tally(report: Callable[[int, int], None] | None, total: int) -> Callable[[int], None]:
    """A counter for `report` (`counted_progress`'s): each call adds its n to the work done and
    reports (done, `total`); with no report it only counts."""
    done = 0

    def add(n: int) -> None:
        nonlocal done
        done += n
        if report is not None:
            report(done, total)

    return add
