"""Benchmark: does `--loader mixed`'s measured share pick the fastest one? The mixed loader alone
(the workers and the device's decoding, built as `zfnet train` builds them, no training step)
over ImageNet-shaped JPEGs (500x375) or their 256 px shards, at each share from 0 (the gpu
loader) to 1 (the workers decode everything, whole), then at the share `measure_share` picks
(`zfnet.data.mixed`). Prints each pass's img/s, and the measured share's rate against the best.

    PYTHONPATH=src python bench/bench_mixed_share.py          # CUDA if there is one, workers auto
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_mixed_share.py --device cpu \\
        --workers 1                                           # a CPU: one worker, the main thread
    PYTHONPATH=src .venv/bin/python bench/bench_mixed_share.py --dry-run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_imagenet import pass_rate, seed_mean, train_config  # noqa: E402
from common import hardware, make_folder  # noqa: E402

from zfnet.data.mixed import ShareMeasure, measure_share  # noqa: E402
from zfnet.data.shard_writer import write_shards  # noqa: E402
from zfnet.train.distributed import DistInfo  # noqa: E402
from zfnet.train.run import build_run, epoch_loader  # noqa: E402


def predicted(m: ShareMeasure) -> float:
    """The rate `zfnet.data.mixed`'s model gives the pipeline at the share m found: the slower
    of the workers (p / H an image) and the device's thread ((1 - p) d + c)."""
    p, h = m.share, m.host_rate
    both = 1 / m.device_rate if m.device_rate else float("inf")
    c = 1 / m.finish_rate if m.finish_rate else 0.0
    thread = (1 - p) * (both - c) + c
    return 1 / max(p / h if h else float("inf"), thread)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4096, help="JPEGs made (all distinct)")
    ap.add_argument("--pass-images", type=int, default=2048, help="images each pass reads")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", choices=("folder", "shards"), default="folder")
    ap.add_argument("--shares", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    spec = ""
    if args.dry_run:
        args.images, args.pass_images, args.batch_size, args.workers = 48, 24, 4, "1"
        args.device, args.shares, spec = "cpu", "0,0.5,1", "size=64"
    device = torch.device(args.device)
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "folder"
        kb = make_folder(root, args.images, 10, val=10, workers=cores)
        data = f"imagefolder:{root}?{spec}"
        if args.data == "shards":
            write_shards(data.split("?")[0], work / "shards", workers=cores)
            data = f"shards:{work / 'shards'}?{spec}"
        seed_mean(root, spec)
        print(hardware())
        config = train_config(work / "run", data, "zfnet_small" if args.dry_run else "zfnet",
                              "gpu", args)
        run = build_run(config, DistInfo(0, 1, 0, device))
        workers = run.loader_kw["num_workers"]
        print(f"{args.images} JPEGs of 500x375 ({kb:.0f} kB on average) from the {args.data}, "
              f"batches of {args.batch_size}, {workers} workers, device {device}; made in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)

        def rate(share: float, epoch: int) -> float:
            run.train_set.dataset.host_share = share
            batches, _ = epoch_loader(run, epoch)
            return pass_rate(batches, device, args.pass_images)

        found = measure_share(run.bundle.train, device, workers, batch_size=args.batch_size)
        print(found.describe(), flush=True)
        rates: dict[float, float] = {}
        for k, s in enumerate(args.shares.split(",")):
            rates[float(s)] = rate(float(s), k)
            print(f"  share {float(s):4.2f}  {rates[float(s)]:8.0f} img/s", flush=True)
        measured = rate(found.share, len(rates))
        best = max(rates, key=rates.__getitem__)
        gpu = rates.get(0.0, float("nan"))
        print(f"  measured share {found.share:4.2f}  {measured:8.0f} img/s: "
              f"{measured / rates[best]:.0%} of the best swept (share {best:.2f}, "
              f"{rates[best]:.0f} img/s); the gpu loader (share 0) {gpu:.0f}; predicted "
              f"{predicted(found):.0f} img/s")
    print(f"whole benchmark {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
