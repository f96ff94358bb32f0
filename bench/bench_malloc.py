"""Benchmark: CPU training steps with glibc malloc's defaults vs with freed memory kept
(`zfnet.memory.keep_freed_memory`, which the `zfnet` command applies at start-up).

The setting is process-wide and cannot be undone, so each measurement runs in a fresh
interpreter, the two settings alternating over the repeats. Each measurement: warm-up steps, then
float32 channels_last training steps of zfnet_small on a random 1x28x28 batch (the Fashion-MNIST
model of `bench/fmnist_recipe.sh`; default: its Zen 3 form as the malloc figures (docs/results.md)
measured it: conv2 at stride 2, conv1 at 32 maps, batch 128, no dropout), reporting images per
second and minor page faults per step. Prints the medians and the speed of "kept" as a ratio to
"default" measured in the same run.

    .venv/bin/python bench/bench_malloc.py
    .venv/bin/python bench/bench_malloc.py --batch-size 64 --opt strides=1,1,1,1,1 \\
        --opt batchnorm=true
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware, step_parser  # noqa: E402  (bench/common.py)

ZEN3_OPTS = ("strides=1,2,1,1,1", "batchnorm=true", "dropout=0", "conv_widths=32,96,160,160,128")


def measure(keep: bool, opts: list[str], batch: int, steps: int) -> dict[str, float]:
    """One measurement in this (fresh) process: img/s and page faults per step."""
    from zfnet.memory import keep_freed_memory

    applied = keep_freed_memory() if keep else False
    import torch
    from bench_step import small_model
    from common import sgd_step, timed

    from zfnet.train import parse_model_opt

    torch.manual_seed(0)
    fmt = torch.channels_last
    model = small_model(dict(parse_model_opt(o) for o in opts)).to(memory_format=fmt)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt)
    step = sgd_step(model, x, torch.randint(0, 10, (batch,)))
    for _ in range(5):  # settle the heap (and oneDNN's primitives) before counting
        step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = timed(step, steps)  # 3 more warm-up steps, then `steps` timed ones
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / (steps + 3)
    return {"applied": applied, "img_per_s": batch / seconds, "faults_per_step": faults}


def main() -> None:
    ap = step_parser(__doc__, 128, "the recipe's Zen 3 model")
    ap.add_argument("--child", choices=("default", "kept"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    opts = args.opt or list(ZEN3_OPTS)
    if args.child:
        print(json.dumps(measure(args.child == "kept", opts, args.batch_size, args.steps)))
        return
    print(hardware())
    print(f"zfnet_small {opts}, batch {args.batch_size}, float32 channels_last, {args.steps} "
          f"steps x {args.repeats} repeats, each in a fresh process")
    env = {k: v for k, v in os.environ.items() if k != "ZFNET_KEEP_FREED_MEMORY"}
    results: dict[str, list[dict[str, float]]] = {"default": [], "kept": []}
    for _ in range(args.repeats):
        for mode in results:
            cmd = [sys.executable, __file__, "--child", mode, "--batch-size",
                   str(args.batch_size), "--steps", str(args.steps)]
            cmd += [a for o in opts for a in ("--opt", o)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results[mode].append(json.loads(out.stdout.splitlines()[-1]))
    if not all(r["applied"] for r in results["kept"]):
        sys.exit("freed memory cannot be kept here (no glibc): nothing to compare")
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in ("img_per_s", "faults_per_step")}
           for mode, rs in results.items()}
    for mode, m in med.items():
        each = ", ".join(f"{r['img_per_s']:.0f}" for r in results[mode])
        print(f"  {mode:<8} {m['img_per_s']:7.0f} img/s  {m['faults_per_step']:8.0f} page "
              f"faults per step  (img/s of each repeat: {each})")
    print(f"kept / default: {med['kept']['img_per_s'] / med['default']['img_per_s']:.2f}x "
          f"the img/s")


if __name__ == "__main__":
    main()
