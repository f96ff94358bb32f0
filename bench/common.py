"""What every benchmark prints first: the machine it ran on."""

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
