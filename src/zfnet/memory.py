"""Keep freed tensor memory in the process, so that CPU training steps do not page-fault.

A training step allocates and frees the same activations and gradients every time. With glibc's
default malloc, blocks over its (adaptive) mmap threshold are given back to the kernel when freed
and the top of the heap is trimmed, so the next step touches fresh pages: every page of every
large tensor costs a page fault and a kernel-side zeroing. On a 2-core AMD EPYC (Zen 3),
`zfnet_small` on Fashion-MNIST at batch 128 took 6,500 to 12,000 page faults per step, and steps
ran 1.11-1.31x as fast without them (`bench/bench_malloc.py`, three runs).
PyTorch's CPU tuning guide fixes this by preloading jemalloc or tcmalloc; `keep_freed_memory` gets
the same effect from glibc itself: blocks up to 32 MiB come from the heap, and the heap is trimmed
only when 2 GiB of its top are free, so the process keeps (and reuses) its peak memory instead of
returning it between steps. Larger blocks (full-size ImageNet activations) still come from mmap
and go back on free.

The `zfnet` command calls it at start-up; set `ZFNET_KEEP_FREED_MEMORY=0` to leave malloc as it
is. It does nothing where the C library is not glibc (macOS, musl), or under another allocator
preloaded with `LD_PRELOAD` (mallopt then changes glibc's unused heap only).
"""

from __future__ import annotations

import ctypes
import os
import re

# mallopt parameters from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # accepted by every glibc (older ones cap it at 32 MiB on 64-bit)
TRIM_THRESHOLD = 2**31 - 1  # trim the heap top only when 2 GiB of it are free (int max)
ENV_SWITCH = "ZFNET_KEEP_FREED_MEMORY"

_done = False


def keep_freed_memory() -> bool:
    """Make glibc malloc serve blocks up to 32 MiB from a heap it keeps (see the module doc).

    Returns True when the setting is in effect (now or from an earlier call), False where it
    cannot apply (no glibc) or `ZFNET_KEEP_FREED_MEMORY=0` turns it off. Process-wide and not
    undone; forked DataLoader workers inherit it.
    """
    global _done
    if _done:
        return True
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:  # glibc names itself here; other C libraries raise or return None
        glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        glibc = False
    if not glibc:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success. Setting either threshold also stops glibc's adaptive
    # adjustment of both, which is what lets a trimmed top come back every step.
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _done = ok
    return ok


def out_of_memory(e: BaseException) -> str | None:
    """Where `e` is memory running out — Python's MemoryError, torch's OutOfMemoryError (a
    device's: CUDA's "Tried to allocate 2.00 GiB"), the CPU allocator's RuntimeError
    ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 120000000000 bytes")
    — what was asked for, in words ("120 GB asked for"); None for any other error. Commands
    turn it into one line: the input was too large for the machine, not wrong."""
    text = str(e)
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "not enough memory" in text):
        return None
    asked = re.search(r"tried to allocate ([\d.]+) ?(bytes|[KMGT]i?B)", text, re.IGNORECASE)
    if asked is None:
        return "memory ran out"
    size, unit = float(asked.group(1)), asked.group(2)
    if unit == "bytes":
        size, unit = size / 1e9, "GB"
    return f"{size:.3g} {unit} asked for"
