"""Benchmark: top-k mining keeps constant memory over a stream far longer than RAM could hold.

Mining (`zfnet.analyses.topk.mine_topk`) keeps k activations per map per layer and nothing per
image, so its memory should not grow with the number of images. This mines conv1-conv5 of
zfnet_small over a stream of N synthetic images (default 200,000) generated on the fly — an
IterableDataset computing image i from i, never stored — and samples this process's resident
memory (RSS: psutil if installed, else /proc/self/status) every few batches. It prints the RSS
when 10k, 50k, 100k and 200k images (or the same fractions of --images) have been mined, each
with its growth since the mark before, the growth over the second half of the stream (100k to
200k: the first batches warm up allocator pools, which the first half absorbs), per 100k
images, the peak of the samples, and the mining rate. The images would take
N x 3 x S x S x 4 bytes if they were kept (printed too), so a flat RSS shows that none of them
is.

    .venv/bin/python bench/bench_topk_memory.py                  # 200k images of 64 px
    .venv/bin/python bench/bench_topk_memory.py --images 20000   # a quick check (marks scaled)
    .venv/bin/python bench/bench_topk_memory.py --workers 2 --opt ""  # full zfnet_small, workers

DataLoader workers are separate processes: their memory is not in this process's RSS (each
holds its prefetched batches only). Freed memory is kept in the process as `zfnet` keeps it
(`zfnet.memory`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
from torch.utils.data import IterableDataset, get_worker_info

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware  # noqa: E402  (bench/common.py)

import zfnet  # noqa: E402
from zfnet.analyses.topk import mine_topk  # noqa: E402
from zfnet.memory import keep_freed_memory  # noqa: E402
from zfnet.train import parse_model_opt  # noqa: E402

MARKS = (10_000, 50_000, 100_000, 200_000)
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


class SyntheticStream(IterableDataset):
    """`n` images (3, size, size) computed from their position: one of 64 fixed random images,
    shifted and brightened by amounts that depend on the position. Split between DataLoader
    workers item by item. Nothing is stored per image."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size
        g = torch.Generator().manual_seed(0)
        self.bank = torch.randn(64, 3, size, size, generator=g) * 60  # (64, 3, S, S)

    def __iter__(self):
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        for i in range(wid, self.n, workers):
            base = self.bank[i % 64]
            shift = (i // 64) % self.size
            yield base.roll(shift, dims=2) + float(i % 13)


def rss_mb() -> float:
    """This process's resident memory, MB."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    raise RuntimeError("no way to read the RSS here (no psutil, no /proc/self/status)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200_000)
    p.add_argument("--size", type=int, default=64, help="image side, px")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--k", type=int, default=9)
    p.add_argument("--every", type=int, default=20, help="sample the RSS every N batches")
    p.add_argument("--opt", default="conv_widths=16,32,32,32,32",
                   help="zfnet_small options, space separated ('' for the model as it is); "
                        "narrow by default so that 200k images take minutes on 2 cores")
    args = p.parse_args()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    keep_freed_memory()
    opts = dict(parse_model_opt(o) for o in args.opt.split())
    model = zfnet.create_model("zfnet_small", input_size=args.size, **opts)
    marks = [m for m in MARKS if m <= args.images] if args.images >= MARKS[-1] else \
        [round(args.images * m / MARKS[-1]) for m in MARKS]
    print(f"python {shlex.join(sys.argv)}")
    print(hardware())
    print(f"zfnet_small {opts or ''} at {args.size} px, layers {', '.join(LAYERS)}, k={args.k}, "
          f"batch {args.batch_size}, workers {args.workers}; {args.images:,} images "
          f"({args.images * 3 * args.size ** 2 * 4 / 2**30:.1f} GiB if they were kept)")

    peak = {"rss": 0.0, "samples": 0, "batches": 0}  # the bench keeps nothing per image either
    at_mark: dict[int, float] = {}
    t0 = time.perf_counter()

    def sample(done: int, total: int | None) -> None:
        if peak["batches"] % args.every == 0:
            peak["rss"] = max(peak["rss"], rss_mb())
            peak["samples"] += 1
        peak["batches"] += 1
        for m in marks:
            if m not in at_mark and done >= m:
                at_mark[m] = rss_mb()
                before = [at_mark[b] for b in marks if b < m and b in at_mark]
                since = f"{at_mark[m] - before[-1]:+6.1f} MB since the mark before" \
                    if before else " " * 33
                rate = done / (time.perf_counter() - t0)
                print(f"{done:>9,} images: RSS {at_mark[m]:8.1f} MB {since}  "
                      f"({rate:,.0f} img/s so far)", flush=True)

    rss_start = rss_mb()
    loader = torch.utils.data.DataLoader(SyntheticStream(args.images, args.size),
                                         batch_size=args.batch_size, num_workers=args.workers)
    result = mine_topk(model, loader, LAYERS, args.k, progress=sample)
    elapsed = time.perf_counter() - t0
    rss_end = rss_mb()
    if args.images not in at_mark:
        at_mark[args.images] = rss_end
    assert all(int(result[n].index.max()) < args.images for n in LAYERS)
    half = marks[-2] if len(marks) > 1 else min(at_mark)
    growth = rss_end - at_mark[half]
    per_100k = growth / max(args.images - half, 1) * 100_000
    print(f"RSS before mining {rss_start:.1f} MB; at the end {rss_end:.1f} MB; peak of "
          f"{peak['samples']} samples (every {args.every} batches) {peak['rss']:.1f} MB")
    print(f"growth from {half:,} images to the end ({args.images:,}): {growth:+.1f} MB "
          f"({per_100k:+.2f} MB per 100k images)")
    print(f"mined {args.images:,} images in {elapsed:.0f} s ({args.images / elapsed:,.0f} "
          "img/s)")


if __name__ == "__main__":
    main()
