"""Train on the stand-in data in a subprocess (SIGTERM and torchrun tests).

    python -m tests.train.run_tiny OUT '{"epochs": 3}' [N_TRAIN]
Prints the summary as JSON; exits like `zfnet train` (143 after SIGTERM). With
TINY_COMPILE_BACKEND set, `"compile": true` compiles with that torch.compile backend. With
TINY_POISON=RANK:STEP, process RANK's last layer is made NaN after its STEP-th update (1-based),
so that the next step's loss is NaN there alone; a NonFiniteLossError exits 3 with its message.
With TINY_SIGNAL=RANK:STEP, process RANK sends itself SIGTERM after its STEP-th update (with
TINY_SIGNAL_EVAL=RANK:N, during its N-th validation); with TINY_EMPTY=RANK:N, process RANK's
N-th batch of the session (1-based) has no item, as a batch of only broken files. With
TINY_OWN_GROUP set, the script joins the process group itself (gloo) and says in the summary
whether training left it joined ("group_kept"). With TINY_RANK_CONFIG=RANK:JSON, process RANK
takes those options on top (a torchrun whose processes were given different options); a
ValueError exits 2 with its message.
"""

import json
import os
import signal
import sys

import torch

from tests.train.tiny import tiny_bundle, tiny_config
from zfnet.train import EXIT_INTERRUPTED, NonFiniteLossError, compiled, loop, recipe, train


def after_update(rank: int, after: int, action) -> None:
    """`action(model)` on process `rank` after its `after`-th update (1-based)."""
    if int(os.environ.get("RANK", "0")) != rank:
        return
    real, calls = recipe.renormalize_filters, [0]

    def renorm_then_act(model, *args):
        real(model, *args)
        calls[0] += 1
        if calls[0] == after:
            action(model)

    recipe.renormalize_filters = renorm_then_act


def poison(model) -> None:
    with torch.no_grad():
        getattr(model, "module", model).classifier.fc8.weight.fill_(float("nan"))


def sigterm(model) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def signal_in_validation(rank: int, n: int) -> None:
    """SIGTERM to process `rank` itself during its `n`-th validation of this session."""
    if int(os.environ.get("RANK", "0")) != rank:
        return
    real, calls = loop.evaluate, [0]

    def evaluate_then_signal(*args, **kw):
        result = real(*args, **kw)
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    loop.evaluate = evaluate_then_signal


class _EmptyAt:
    """A loader whose batches pass through, but for the one counted `n` (1-based, counting on
    across epochs in `seen`), which comes with no item."""

    def __init__(self, loader, n: int, seen: list[int]) -> None:
        self.loader, self.n, self.seen = loader, n, seen

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            self.seen[0] += 1
            yield (x[:0], y[:0]) if self.seen[0] == self.n else (x, y)


def empty_at(rank: int, n: int) -> None:
    """Process `rank`'s `n`-th training batch of this session empty (see the module's doc)."""
    if int(os.environ.get("RANK", "0")) != rank:
        return
    real, seen = loop.epoch_loader, [0]

    def epoch_loader(*args, **kw):
        loader, expected = real(*args, **kw)
        return _EmptyAt(loader, n, seen), expected

    loop.epoch_loader = epoch_loader


if __name__ == "__main__":
    torch.set_num_threads(1)
    compiled.BACKEND = os.environ.get("TINY_COMPILE_BACKEND", compiled.BACKEND)
    out, overrides = sys.argv[1], json.loads(sys.argv[2])
    if os.environ.get("TINY_RANK_CONFIG"):
        rank, _, more = os.environ["TINY_RANK_CONFIG"].partition(":")
        if os.environ.get("RANK", "0") == rank:
            overrides.update(json.loads(more))
    n_train = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    if os.environ.get("TINY_POISON"):
        after_update(*map(int, os.environ["TINY_POISON"].split(":")), poison)
    if os.environ.get("TINY_SIGNAL"):
        after_update(*map(int, os.environ["TINY_SIGNAL"].split(":")), sigterm)
    if os.environ.get("TINY_SIGNAL_EVAL"):
        signal_in_validation(*map(int, os.environ["TINY_SIGNAL_EVAL"].split(":")))
    if os.environ.get("TINY_EMPTY"):
        empty_at(*map(int, os.environ["TINY_EMPTY"].split(":")))
    own_group = bool(os.environ.get("TINY_OWN_GROUP"))
    if own_group:
        torch.distributed.init_process_group("gloo")
    try:
        summary = train(tiny_config(out, **overrides), bundle=tiny_bundle(n_train=n_train))
        if own_group:
            summary["group_kept"] = torch.distributed.is_initialized()
            torch.distributed.destroy_process_group()
    except NonFiniteLossError as e:
        print(f"NonFiniteLossError: {e}", file=sys.stderr, flush=True)
        sys.exit(3)
    except ValueError as e:
        print(f"ValueError: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(json.dumps(summary), flush=True)
    # several processes share stdout (torchrun): their lines may interleave, so each also writes
    # its own file
    rank = os.environ.get("RANK", "0")
    with open(f"{out}.summary{rank}.json", "w") as f:
        json.dump(summary, f)
    if summary["status"] == "interrupted":
        sys.exit(EXIT_INTERRUPTED[signal.Signals[summary["signal"] or "SIGTERM"]])
