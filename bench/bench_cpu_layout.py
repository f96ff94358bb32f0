"""Benchmark: inference on the CPU with the input in channels-last memory vs the default
(contiguous NCHW), per model, measured in the same run — why zfnet's analyses keep the default
layout on the CPU (docs/design.md, "Memory layout on the CPU").

Each model (random init, eval mode, no gradients) runs a batch at 224 px both ways, taking turns
over the repeats (median); the two outputs are compared (they differ by float rounding only).
A ratio > 1: channels-last is that many times faster.

    .venv/bin/python bench/bench_cpu_layout.py
    .venv/bin/python bench/bench_cpu_layout.py --models resnet18,zfnet --batch-size 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware  # noqa: E402  (bench/common.py)

import zfnet  # noqa: E402

MODELS = ("alexnet", "vgg11", "resnet18", "densenet121", "mobilenet_v2", "efficientnet_b0",
          "convnext_tiny", "zfnet")


def build(name: str) -> torch.nn.Module:
    """A zfnet model by its name, else torchvision's."""
    if name in zfnet.list_models():
        return zfnet.create_model(name)
    return torchvision.models.get_model(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of model names")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(hardware())
    print(f"batch {args.batch_size} at {args.image_size} px, float32, median of {args.repeats}")
    print(f"{'model':<16} {'NCHW s':>8} {'NHWC s':>8} {'ratio':>6} {'max rel diff':>13}")
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    layouts = {"nchw": x, "nhwc": x.contiguous(memory_format=torch.channels_last)}
    for name in args.models.split(","):
        model = build(name).eval()
        times: dict[str, list[float]] = {k: [] for k in layouts}
        out = {}
        with torch.inference_mode():
            for k, inp in layouts.items():  # warm-up: oneDNN builds its primitives
                out[k] = model(inp)
            for _ in range(args.repeats):
                for k, inp in layouts.items():
                    t = time.perf_counter()
                    model(inp)
                    times[k].append(time.perf_counter() - t)
        a, b = (statistics.median(times[k]) for k in layouts)
        diff = float((out["nchw"] - out["nhwc"]).abs().max() / out["nchw"].abs().max())
        print(f"{name:<16} {a:>8.3f} {b:>8.3f} {a / b:>6.2f} {diff:>13.1e}")


if __name__ == "__main__":
    main()
