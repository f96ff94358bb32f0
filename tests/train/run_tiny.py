"""Train on the stand-in data in a subprocess (SIGTERM and torchrun tests).

    python -m tests.train.run_tiny OUT '{"epochs": 3}' [N_TRAIN]
Prints the summary as JSON; exits like `zfnet train` (143 after SIGTERM). With
TINY_COMPILE_BACKEND set, `"compile": true` compiles with that torch.compile backend. With
TINY_POISON=RANK:STEP, process RANK's last layer is made NaN after its STEP-th update (1-based),
so that the next step's loss is NaN there alone; a NonFiniteLossError exits 3 with its message.
"""

import json
import os
import signal
import sys

import torch

from tests.train.tiny import tiny_bundle, tiny_config
from zfnet.train import EXIT_INTERRUPTED, NonFiniteLossError, compiled, recipe, train


def poison(rank: int, after: int) -> None:
    """Process `rank`'s last layer NaN after its `after`-th update (see the module's doc)."""
    if int(os.environ.get("RANK", "0")) != rank:
        return
    real, calls = recipe.renormalize_filters, [0]

    def renorm_then_poison(model, *args):
        real(model, *args)
        calls[0] += 1
        if calls[0] == after:
            with torch.no_grad():
                getattr(model, "module", model).classifier.fc8.weight.fill_(float("nan"))

    recipe.renormalize_filters = renorm_then_poison

if __name__ == "__main__":
    torch.set_num_threads(1)
    compiled.BACKEND = os.environ.get("TINY_COMPILE_BACKEND", compiled.BACKEND)
    out, overrides = sys.argv[1], json.loads(sys.argv[2])
    n_train = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    if os.environ.get("TINY_POISON"):
        poison(*map(int, os.environ["TINY_POISON"].split(":")))
    try:
        summary = train(tiny_config(out, **overrides), bundle=tiny_bundle(n_train=n_train))
    except NonFiniteLossError as e:
        print(f"NonFiniteLossError: {e}", file=sys.stderr, flush=True)
        sys.exit(3)
    print(json.dumps(summary), flush=True)
    # several processes share stdout (torchrun): their lines may interleave, so each also writes
    # its own file
    rank = os.environ.get("RANK", "0")
    with open(f"{out}.summary{rank}.json", "w") as f:
        json.dump(summary, f)
    if summary["status"] == "interrupted":
        sys.exit(EXIT_INTERRUPTED[signal.Signals[summary["signal"]]])
