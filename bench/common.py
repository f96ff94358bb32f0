"""Shared by the benchmarks: the machine they ran on, and how two sets of projections agree."""

from __future__ import annotations

import os
import platform

import torch


def hardware() -> str:
    """CPU model, cores, torch threads, load average, GPU, torch and python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"CPU {cpu} ({os.cpu_count()} logical cores, torch threads "
            f"{torch.get_num_threads()}, load average {load}), GPU {gpu}, torch "
            f"{torch.__version__}, python {platform.python_version()}")


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
