"""Benchmark: zfnet's `LocalResponseNorm` (written-out backward) vs torch's, alone and in a model's
training step, measured in the same run and checked to give the same values.

The layer alone: forward + backward at the demo model's two LRN shapes (batch 64: 48 maps at
32 px after pool1, 128 maps at 8 px after pool2), channels_last. The step: forward, loss, backward
and SGD step of `zfnet_small` at 64 px (the demo's model and batch), once with each LRN, with the
precision `--amp auto` picks on this CPU. Both are interleaved over the repeats (median).

    .venv/bin/python bench/bench_lrn.py
    .venv/bin/python bench/bench_lrn.py --model zfnet --batch-size 16 --image-size 224 --steps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware, sgd_step, timed  # noqa: E402  (bench/common.py)

import zfnet  # noqa: E402
from zfnet.models.lrn import LocalResponseNorm  # noqa: E402
from zfnet.train.recipe import amp_dtype_for  # noqa: E402


def with_torch_lrn(model: nn.Module) -> nn.Module:
    """The same model with every zfnet LRN replaced by torch's own (same parameters)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LocalResponseNorm):
                setattr(parent, name, nn.LocalResponseNorm(child.size, child.alpha, child.beta,
                                                           child.k))
    return model


def layer_check(shape: tuple[int, ...]) -> tuple[Callable[[], None], Callable[[], None], float]:
    """Forward + backward of each LRN at `shape` (channels_last) and their largest difference."""
    x = (3 * torch.randn(shape)).contiguous(memory_format=torch.channels_last).requires_grad_()
    ours, ref = LocalResponseNorm(5, 5e-4, 0.75, 2.0), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    g = torch.randn(shape)
    ya, yb = ours(x), ref(x)
    diff = max(float((ya - yb).abs().max().detach()), float(
        (torch.autograd.grad(ya, x, g)[0] - torch.autograd.grad(yb, x, g)[0]).abs().max()))
    return (lambda: ours(x).backward(g)), (lambda: ref(x).backward(g)), diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="zfnet_small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(hardware())
    amp = amp_dtype_for("auto", torch.device("cpu"))
    for shape in ((args.batch_size, 48, 32, 32), (args.batch_size, 128, 8, 8)):
        ours, ref, diff = layer_check(shape)
        layer_times: dict[str, list[float]] = {"zfnet": [], "torch": []}
        for _ in range(args.repeats):  # interleaved, as the step below
            layer_times["zfnet"].append(timed(ours, args.steps))
            layer_times["torch"].append(timed(ref, args.steps))
        t_ours, t_ref = (statistics.median(layer_times[w]) for w in ("zfnet", "torch"))
        print(f"LRN alone {tuple(shape)} fwd+bwd: torch {1e3 * t_ref:.1f} ms, zfnet "
              f"{1e3 * t_ours:.1f} ms ({t_ref / t_ours:.2f}x); largest difference {diff:.1e}")
    fmt = torch.channels_last
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size).contiguous(
        memory_format=fmt)
    y = torch.randint(0, 10, (args.batch_size,))
    models = {}
    for which in ("zfnet", "torch"):
        torch.manual_seed(0)
        m = zfnet.create_model(args.model, num_classes=10, input_size=args.image_size)
        models[which] = (with_torch_lrn(m) if which == "torch" else m).to(memory_format=fmt)
    models["torch"].load_state_dict(models["zfnet"].state_dict())
    with torch.no_grad():
        for m in models.values():
            m.eval()
        out = [models[w](x) for w in ("zfnet", "torch")]
        for m in models.values():
            m.train()
    steps = {w: sgd_step(m, x, y, amp) for w, m in models.items()}
    times: dict[str, list[float]] = {w: [] for w in steps}
    for _ in range(args.repeats):
        for w, fn in steps.items():
            times[w].append(timed(fn, args.steps))
    t_ours, t_ref = (statistics.median(times[w]) for w in ("zfnet", "torch"))
    logits_diff = float((out[0] - out[1]).abs().max())
    print(f"{args.model} training step, batch {args.batch_size} at {args.image_size} px, "
          f"{'bf16' if amp else 'float32'}, channels_last: torch's LRN "
          f"{args.batch_size / t_ref:.0f} img/s, zfnet's {args.batch_size / t_ours:.0f} img/s "
          f"({t_ref / t_ours:.2f}x); eval logits differ by {logits_diff:.1e}")


if __name__ == "__main__":
    main()
