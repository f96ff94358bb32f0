"""Shared by the benchmarks: the machine they ran on, and how two sets of projections agree."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch


def cpu_description() -> str:
    """CPU model name, family/model numbers and the vector instructions the figures depend on,
    e.g. "AMD EPYC (family 25, model 1; avx2)": two CPUs with one name can differ several-fold
    (AVX-512 BF16 computes bf16 natively, without it bf16 is emulated and float32 is used)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    name = fields.get("model name", platform.machine())
    return (f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}; "
            f"{', '.join(vector) or 'no avx2'})")


def hardware() -> str:
    """CPU (see `cpu_description`), cores, torch threads, load average, GPU, torch and python
    versions."""
    cpu = cpu_description()
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"CPU {cpu} ({os.cpu_count()} logical cores, torch threads "
            f"{torch.get_num_threads()}, load average {load}), GPU {gpu}, torch "
            f"{torch.__version__}, python {platform.python_version()}")


def timed(fn: Callable[[], None], steps: int) -> float:
    """Seconds per call of fn, after 3 warm-up calls (oneDNN builds its primitives on the first)."""
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             amp: torch.dtype | None = None) -> Callable[[], None]:
    """One training step of `model` on the batch (x, y) as a closure: forward under CPU autocast
    to `amp` (None: full precision), cross-entropy, backward, SGD with momentum."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_parser(doc: str, batch_size: int, opt_default: str) -> argparse.ArgumentParser:
    """The options of the training-step benchmarks: batch size, steps, repeats, model options."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--opt", action="append", metavar="KEY=VALUE",
                    help=f"model option (repeatable); default: {opt_default}")
    return ap


def projection_agreement(ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor],
                         tol: float = 1e-3) -> tuple[float, float]:
    """Compare two sets of projections {layer: (..., C, h, w)} (`project_topk`'s results).

    Returns the share of projections within `tol` of `ref`'s (relative to each one's max
    |value|), and the largest difference relative to its layer's largest |value|."""
    close, worst = [], 0.0
    for n, r in ref.items():
        o = other[n].to(r.device)
        d = (r - o).abs().amax(dim=(-3, -2, -1))
        close.append((d <= tol * r.abs().amax(dim=(-3, -2, -1)).clamp_min(1e-12)).flatten())
        worst = max(worst, float(d.max() / r.abs().max()))
    return torch.cat(close).float().mean().item(), worst
