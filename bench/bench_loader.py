"""Benchmark: one epoch of training batches, item by item vs batched (`SeededSamples.__getitems__`).

The trainer wraps the training set in `SeededSamples` (each sample's crop and flip depend only
on seed, epoch and index). Item by item, every sample seeds and restores torch's global RNG and
is cropped alone; batched (what the DataLoader calls now), the same crops are drawn from a
private generator and an in-memory dataset cuts the whole batch in one gather. Both loaders
run here, in the same process, over the same epoch; the batches are checked to be equal.

    .venv/bin/python bench/bench_loader.py                          # Fashion-MNIST, batch 64
    .venv/bin/python bench/bench_loader.py --data synthetic --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware  # noqa: E402  (bench/common.py)

from zfnet.data import collate, load_dataset  # noqa: E402
from zfnet.train.recipe import SeededSamples  # noqa: E402


class ItemByItem(torch.utils.data.Dataset):
    """`SeededSamples` without `__getitems__`: the DataLoader fetches `self[i]` one by one."""

    def __init__(self, seeded: SeededSamples) -> None:
        self.seeded = seeded

    def __len__(self) -> int:
        return len(self.seeded)

    def __getitem__(self, i: int):
        return self.seeded[i]


def epoch(dataset: torch.utils.data.Dataset, batch_size: int) -> tuple[float, list]:
    """Seconds for one shuffled epoch (fixed order), and its first batches."""
    order = torch.Generator().manual_seed(0)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=order,
                        collate_fn=collate)
    start, first = time.perf_counter(), []
    for k, batch in enumerate(loader):
        if k < 3:
            first.append(batch)
    return time.perf_counter() - start, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="fashion-mnist", help="dataset spec (default fashion-mnist)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="epochs per way; the median is shown")
    args = ap.parse_args()
    train = load_dataset(args.data).train
    seeded = SeededSamples(train, seed=0)
    times: dict[str, list[float]] = {"item by item": [], "batched": []}
    firsts = {}
    for _ in range(args.repeats):
        for name, data in (("item by item", ItemByItem(seeded)), ("batched", seeded)):
            t, firsts[name] = epoch(data, args.batch_size)
            times[name].append(t)
    for (xa, ya), (xb, yb) in zip(firsts["item by item"], firsts["batched"], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb), "the two ways differ"
    print(hardware())
    print(f"{args.data}: {len(train)} training images, batch {args.batch_size}, "
          f"median of {args.repeats} epochs; the batches of both ways are equal")
    base = statistics.median(times["item by item"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<13} {med:6.2f} s/epoch  {len(train) / med:8.0f} img/s  "
              f"{base / med:4.2f}x")


if __name__ == "__main__":
    main()
