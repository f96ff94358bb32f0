"""Train on the stand-in data in a subprocess (SIGTERM and torchrun tests).

    python -m tests.train.run_tiny OUT '{"epochs": 3}' [N_TRAIN]
Prints the summary as JSON; exits like `zfnet train` (143 after SIGTERM). With
TINY_COMPILE_BACKEND set, `"compile": true` compiles with that torch.compile backend.
"""

import json
import os
import signal
import sys

import torch

from tests.train.tiny import tiny_bundle, tiny_config
from zfnet.train import EXIT_INTERRUPTED, compiled, train

if __name__ == "__main__":
    torch.set_num_threads(1)
    compiled.BACKEND = os.environ.get("TINY_COMPILE_BACKEND", compiled.BACKEND)
    out, overrides = sys.argv[1], json.loads(sys.argv[2])
    n_train = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    summary = train(tiny_config(out, **overrides), bundle=tiny_bundle(n_train=n_train))
    print(json.dumps(summary), flush=True)
    # several processes share stdout (torchrun): their lines may interleave, so each also writes
    # its own file
    rank = os.environ.get("RANK", "0")
    with open(f"{out}.summary{rank}.json", "w") as f:
        json.dump(summary, f)
    if summary["status"] == "interrupted":
        sys.exit(EXIT_INTERRUPTED[signal.Signals[summary["signal"]]])
