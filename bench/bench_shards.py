"""Benchmark: the shard loader's training images per second per worker, against torchvision's
ImageFolder + PIL on the original JPEGs (issue 27's target: at least 2x from 256 px shards).

A folder of ImageNet-shaped JPEGs is generated (500x375, ~76 kB at quality 90, 1/f "photo"
statistics, 10 classes), written as shards at 256 px (`zfnet shards`), and one training epoch is
read by each loader in one process on one thread (what one DataLoader worker does), batches of
64:

- torchvision ImageFolder + PIL: Resize(256), RandomCrop(224), RandomHorizontalFlip, ToTensor,
  on the originals (the classic ImageNet recipe's work per image);
- zfnet imagefolder:DIR on the originals (decode, shorter side -> 256, centre 256^2, the paper's
  random 224 crop and flip, minus the mean image);
- zfnet shards:OUT: the same items from the 256 px shards, streamed as training reads them;
- decoding alone (PIL, to RGB) of the originals and of the shards' JPEGs: the floor.

    .venv/bin/python bench/bench_shards.py                 # 1000 images, 3 timed epochs each
    .venv/bin/python bench/bench_shards.py --quick         # 200 images, 1 timed epoch each
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware, make_folder, rates  # noqa: E402  (bench/common.py)

from zfnet.data import collate, load_dataset  # noqa: E402
from zfnet.data.shard_writer import write_shards  # noqa: E402
from zfnet.memory import keep_freed_memory  # noqa: E402
from zfnet.train.recipe import SeededSamples  # noqa: E402

BATCH = 64


def torchvision_epochs(root: Path) -> tuple[Callable[[int], Iterable], int]:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(256), transforms.RandomCrop(224),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    data = datasets.ImageFolder(str(root / "train"), transform=tf)
    return (lambda e: DataLoader(data, batch_size=BATCH, shuffle=True,
                                 generator=torch.Generator().manual_seed(e)), len(data))


def zfnet_folder_epochs(root: Path) -> tuple[Callable[[int], Iterable], int]:
    train = load_dataset(f"imagefolder:{root}").train
    seeded = SeededSamples(train, seed=0)

    def epoch(e: int) -> Iterable:
        seeded.epoch = e
        return DataLoader(seeded, batch_size=BATCH, shuffle=True, collate_fn=collate,
                          generator=torch.Generator().manual_seed(e))

    return epoch, len(train)


def shard_epochs(out: Path) -> tuple[Callable[[int], Iterable], int]:
    train = load_dataset(f"shards:{out}").train
    seeded = SeededSamples(train, seed=0)

    def epoch(e: int) -> Iterable:
        seeded.epoch = e
        stream = train.epoch_stream(seeded, epoch=e, seed=0, batch_size=BATCH)
        return DataLoader(stream, batch_size=None, collate_fn=collate)

    return epoch, len(train)


def decode_epochs(blobs: list[bytes]) -> tuple[Callable[[int], Iterable], int]:
    def epoch(e: int) -> Iterable:
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                yield np.asarray(im.convert("RGB"))

    return epoch, len(blobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1000, help="training images (default 1000)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed epochs per loader (default 3); the median")
    ap.add_argument("--quick", action="store_true", help="200 images, 1 epoch each")
    ap.add_argument("--dir", help="work folder (default: a temporary one)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeats = 200, 1
    torch.set_num_threads(1)  # one DataLoader worker's share
    keep_freed_memory()  # as `zfnet` does at start-up, for every loader here
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root, out = Path(tmp) / "folder", Path(tmp) / "shards"
        kb = make_folder(root, args.images)
        write_shards(f"imagefolder:{root}", out, workers=os.cpu_count())
        load_dataset(f"imagefolder:{root}")  # the mean image, computed once, cached
        shards = load_dataset(f"shards:{out}").train
        stored = [shards.read(i) for i in range(len(shards))]
        originals = [p.read_bytes() for p in sorted((root / "train").rglob("*.JPEG"))]
        measured = rates({
            "torchvision ImageFolder + PIL, originals": torchvision_epochs(root),
            "zfnet imagefolder, originals": zfnet_folder_epochs(root),
            "zfnet shards, 256 px": shard_epochs(out),
            "decoding alone (PIL), originals": decode_epochs(originals),
            "decoding alone (PIL), shards' JPEGs": decode_epochs(stored),
        }, args.repeats)
    print(hardware())
    print(f"{args.images} training JPEGs 500x375 ({kb:.0f} kB on average), shards at 256 px "
          f"({np.mean([len(b) for b in stored]) / 1000:.0f} kB); one process, one thread (one "
          f"worker), batches of {BATCH}; median of {args.repeats} epoch(s) after one untimed, "
          "the loaders taking turns")
    base = measured["torchvision ImageFolder + PIL, originals"]
    for name, r in measured.items():
        print(f"  {name:<42} {r:7.0f} img/s  {r / base:5.2f}x torchvision")
    ratio = measured["zfnet shards, 256 px"] / base
    print(f"shards / torchvision per worker: {ratio:.2f}x (issue 27's target: >= 2x)")


if __name__ == "__main__":
    main()
