"""`--compile`: `torch.compile` of the network a run trains (`zfnet train`) or scores
(`zfnet eval`).

What is compiled: the module's forward and, when it trains, its backward (through
AOTAutograd) — under DDP the DDP wrapper, as PyTorch recommends (DDP first, then compile: its
graph is split at the gradient buckets, so the all-reduce still overlaps the backward). The
compiled wrapper shares the module's parameters and buffers; checkpoints are written from the
module itself (or its weight average, which is not compiled), so their keys are the uncompiled
ones (no `_orig_mod.` prefix), and a run trained compiled resumes uncompiled and vice versa.
Validation during training runs the uncompiled module.

Off by default. The first steps pay for the compilation (tens of seconds; Inductor caches the
result on disk, so a second run with the same shapes starts faster), and the gain depends on
the machine: on an NVIDIA H200 the training step of ZFNet-224 (bf16, channels_last) went from
11.6k to 18.0k img/s; on a 2-core CPU the compiled step of zfnet_small was slower than the
eager one, in bf16 and in float32 (docs/results.md has the figures).
"""

from __future__ import annotations

import logging
import os
import shutil

import torch
from torch import nn

# Inductor, torch.compile's default. The tests set "eager" (tracing without code generation)
# where only the plumbing is under test.
BACKEND = "inductor"


def check_compile(device: torch.device) -> None:
    """ValueError, before anything runs, when `--compile` cannot work on `device`: Inductor
    needs a C++ compiler for the CPU and Triton for a GPU."""
    if BACKEND != "inductor":
        return
    if device.type == "cpu":
        cxx = os.environ.get("CXX")
        if not (cxx and shutil.which(cxx)) and not any(
                shutil.which(c) for c in ("g++", "clang++", "c++")):
            raise ValueError("--compile on the CPU needs a C++ compiler (g++ or clang++, or "
                             "one named by $CXX); install one or leave out --compile")
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ValueError("--compile on a GPU needs Triton (the `triton` package that "
                             "comes with PyTorch's CUDA wheels); install it or leave out "
                             "--compile")


def compile_model(model: nn.Module) -> nn.Module:
    """`model` compiled (`torch.compile`): a wrapper sharing its parameters; call it as the
    model. Save and load `model` itself, not the wrapper."""
    if BACKEND == "inductor":
        _import_cpp_extension_quietly()
    return torch.compile(model, backend=BACKEND)


def _import_cpp_extension_quietly() -> None:
    """Import `torch.utils.cpp_extension` (Inductor does, at the first step) without its
    warning "No CUDA runtime is found, using CUDA_HOME=…", which it logs on a machine with
    CUDA's compiler but no GPU: true of every CPU run there, and cut into the progress bar."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        log.setLevel(level)
