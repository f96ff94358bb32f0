"""Benchmark: training steps per second of the 20-minute Fashion-MNIST recipe's model, by precision
and memory layout, and what that rate means for the recipe's wall time on this machine.

The recipe (`bench/fmnist_recipe.sh`) was sized to fit 20 minutes on a CPU with native bf16
(AVX-512 BF16). On a CPU without it, `--amp auto` trains in float32 (emulated bf16 is far slower),
and the same 34 epochs take several times longer. This prints the CPU, the step rate of each
variant (float32 / bf16 autocast x contiguous / channels_last, interleaved over the repeats,
median), each as a ratio to float32 contiguous measured in the same run, what `--amp auto`
chooses here, and the minutes that 34 epochs of 60,000 images need at that choice's rate.
It also prints the ceiling: the step's floating-point operations per image (torch's
FlopCounterMode: convolutions and matrix products, forward and backward), this machine's
float32 matrix-product rate (torch.matmul 2048x2048, the best a convolution can hope for), and
the minutes the 34 epochs would need at that rate. Freed memory is kept in the process, as
`zfnet train` keeps it (`zfnet.memory`; `bench/bench_malloc.py` measures what that is worth).

    .venv/bin/python bench/bench_step.py                  # the recipe's zfnet_small, batch 64
    .venv/bin/python bench/bench_step.py --steps 10 --repeats 2 --opt conv_widths=48,128,192,192,128
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware, sgd_step, step_parser, timed  # noqa: E402  (bench/common.py)

import zfnet  # noqa: E402
from zfnet.memory import keep_freed_memory  # noqa: E402
from zfnet.train import parse_model_opt  # noqa: E402
from zfnet.train.recipe import amp_dtype_for  # noqa: E402

RECIPE_OPTS = ("strides=1,1,1,1,1", "batchnorm=true", "dropout=0.25",
               "conv_widths=32,96,160,160,128")
TRAIN_IMAGES, EPOCHS = 60_000, 34


def small_model(model_opts: dict) -> torch.nn.Module:
    """zfnet_small for Fashion-MNIST (10 classes, 1x28x28) with `model_opts`."""
    return zfnet.create_model("zfnet_small", num_classes=10, in_channels=1, input_size=28,
                              **model_opts)


def step_rate(model_opts: dict, bf16: bool, channels_last: bool, batch: int,
              steps: int) -> float:
    """Images per second of forward, loss, backward and SGD step on a random 1x28x28 batch."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = small_model(model_opts).to(memory_format=fmt)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt)
    step = sgd_step(model, x, torch.randint(0, 10, (batch,)), torch.bfloat16 if bf16 else None)
    return batch / timed(step, steps)


def step_flops(model_opts: dict, batch: int) -> float:
    """Floating-point operations per image of one float32 training step (forward and backward;
    convolutions and matrix products, which FlopCounterMode counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    step = sgd_step(small_model(model_opts), x, y)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """Float32 FLOP/s of an n x n matrix product on this machine (median of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / statistics.median(timed(lambda: a @ b, 3) for _ in range(repeats))


def main() -> None:
    ap = step_parser(__doc__, 64, "the recipe's")
    args = ap.parse_args()
    model_opts = dict(parse_model_opt(o) for o in (args.opt or RECIPE_OPTS))
    keep_freed_memory()  # as the `zfnet` command does (bench/bench_malloc.py: with vs without)
    print(hardware())
    print(f"zfnet_small {model_opts}, batch {args.batch_size}, {args.steps} steps x "
          f"{args.repeats} repeats")
    variants = [(bf16, cl) for bf16 in (False, True) for cl in (False, True)]
    rates: dict[tuple[bool, bool], list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for bf16, cl in variants:
            rates[(bf16, cl)].append(step_rate(model_opts, bf16, cl, args.batch_size,
                                               args.steps))
    base = statistics.median(rates[(False, False)])
    for (bf16, cl), r in rates.items():
        med = statistics.median(r)
        print(f"  {'bf16' if bf16 else 'float32':<8} {'channels_last' if cl else 'contiguous':<14}"
              f" {med:7.0f} img/s  ({med / base:.2f}x float32 contiguous)")
    auto = amp_dtype_for("auto", torch.device("cpu")) is not None
    chosen = statistics.median(rates[(auto, True)])
    minutes = EPOCHS * TRAIN_IMAGES / chosen / 60
    print(f"--amp auto here: {'bf16' if auto else 'float32'} (native bf16: {auto}); with "
          f"channels_last (the default) {EPOCHS} epochs of {TRAIN_IMAGES} images need "
          f"{minutes:.1f} min of training steps alone (loading and evaluation come on top)")
    flops, peak = step_flops(model_opts, args.batch_size), matmul_flops_per_s()
    fp32 = statistics.median(rates[(False, True)])
    print(f"ceiling: {flops / 1e6:.0f} MFLOP per image and step; float32 matrix products run "
          f"at {peak / 1e9:.0f} GFLOP/s here, so {EPOCHS} epochs need at least "
          f"{EPOCHS * TRAIN_IMAGES * flops / peak / 60:.1f} min in float32; the step reaches "
          f"{fp32 * flops / peak:.0%} of that rate (float32 channels_last)")


if __name__ == "__main__":
    main()
