"""Training to a wall-clock budget: how many steps fit, planned from the speed measured so far.

`zfnet train --time-budget 18m` trains the first epoch (and validates it, to time that too), then
plans the run: the largest number of steps, at most `--epochs` worth, whose training steps and
validations fit in what is left of the budget at the rates measured so far. A cosine or linear
schedule is moved to reach 0 at that step ("budgeted training", Li et al. 2020: a schedule that
decays to zero at the budget beats one cut short), and the last epoch may end part-way. The
plan is made again after every whole epoch, so that a machine that slows down or speeds up
moves the end with it, and it is saved in every checkpoint for `--resume`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "90s", "18m", "1.5h" or "1h30m" (a unit is required)."""
    s = text.strip().lower().replace(" ", "")
    parts = _PART.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"{text!r} is not a duration; give a number with a unit h, m or s, "
                         f"e.g. 90s, 18m, 1.5h, 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"the duration {text!r} must be > 0")
    return seconds


@dataclass(frozen=True)
class Plan:
    """Where a budgeted run ends: after `total_steps` optimizer steps, in epoch `epochs` (whose
    last `last_epoch_steps` steps are trained; a whole epoch when equal to steps per epoch), and
    the rates it was planned from."""

    total_steps: int
    epochs: int
    last_epoch_steps: int
    budget_s: float
    step_s: float  # seconds per training step (per process) in the first epoch
    val_s: float  # seconds per validation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Plan:
        return Plan(**d)

    def describe(self) -> str:
        """One line for the log and the CLI."""
        budget = (f"{self.budget_s:.0f} s" if self.budget_s < 120
                  else f"{self.budget_s / 60:.1f} min")
        return (f"time budget {budget}: {self.total_steps} steps planned "
                f"({self.epochs} epochs, the last with {self.last_epoch_steps} steps) from "
                f"{self.step_s * 1000:.0f} ms/step and {self.val_s:.1f} s/validation so far")

    def end_step(self, epoch: int) -> int | None:
        """The step at which 0-based `epoch` stops (None: its end)."""
        return self.last_epoch_steps if epoch + 1 == self.epochs else None


def validations(done_epochs: int, total_epochs: int, val_every: int) -> int:
    """Validations after epochs done_epochs+1 … total_epochs: every `val_every`-th and the last."""
    if total_epochs <= done_epochs:
        return 0
    every = total_epochs // val_every - done_epochs // val_every
    return every + (0 if total_epochs % val_every == 0 else 1)


def plan_steps(budget_s: float, used_s: float, step_s: float, val_s: float,
               steps_per_epoch: int, done_steps: int, max_steps: int, val_every: int) -> Plan:
    """The largest total T in [done_steps, max_steps] (done_steps a whole number of epochs)
    whose remaining cost, (T - done_steps) * step_s plus val_s per validation still due, fits
    in budget_s - used_s."""
    left = budget_s - used_s
    done_epochs = done_steps // steps_per_epoch

    def cost(total: int) -> float:
        epochs = math.ceil(total / steps_per_epoch)
        return (total - done_steps) * step_s + validations(done_epochs, epochs, val_every) * val_s

    lo, hi = done_steps, max(done_steps, max_steps)  # cost(lo) = 0; cost is non-decreasing
    if left <= 0:
        hi = lo
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= left:
            lo = mid
        else:
            hi = mid - 1
    epochs = max(1, math.ceil(lo / steps_per_epoch))
    return Plan(total_steps=lo, epochs=epochs, last_epoch_steps=lo - (epochs - 1) * steps_per_epoch,
                budget_s=budget_s, step_s=step_s, val_s=val_s)
