"""Benchmark: where `zfnet train` with the gpu loader loses against its compiled step (issue 27).

`zfnet train --compile --loader gpu` on an H200 trained at 9.6k img/s from shards where its
compiled step alone runs at 18k and the gpu loader alone at 12k. This runs the training loop
itself (`zfnet.train.recipe.train_one_epoch` over `epoch_loader`'s batches, the run built as
`zfnet train` builds it, compiled once) over the same shards with one setting changed at a time:

- base: `--loader gpu` as `zfnet train` runs it;
- the loop alone: one batch made by the loader, then fed again and again from the device: the
  training loop's own rate, the ceiling of any loader's end to end (issue 27 asks 90% of the
  compiled step: a loop below that needs work on the loop, not on the loaders);
- host share p: the workers decode a share p of the images themselves (`CropDataset.host_share`;
  `--loader mixed` measures its p, `zfnet.data.mixed`), the GPU the rest;
- threads: the threads that make the device's batches (`ZFNET_DEVICE_THREADS`, `--threads`;
  auto: 2 where nvImageCodec decodes, else 1), at share 0 and at the last share;
- decode priority: the loader threads' CUDA streams at high priority (their kernels first);
- main stream: the training loop on a CUDA stream of its own instead of the default stream.

Each line gives the epoch's img/s and, to tell the cause: the main process's CPU cores (one
core's worth, with the GIL, is its ceiling), the loader threads' seconds waiting for workers and
making batches (summed over the threads), and the GPU's utilisation. Then a profile of a few
steps of the base setting (the CUDA calls that wait: synchronisations, frees, copies). Output:
stdout and `--out`.

Measured once (docs/results.md): with the main stream, 9.7k img/s, the GPU 71% busy, the loader
thread decoding 3.6 s of the epoch's 4.1 s while the workers only read files: the thread is
the limit, hence `--loader mixed`.

    PYTHONPATH=src python bench/gpu_overlap.py --out /tmp/overlap     # GPU machine, ~2 min
    PYTHONPATH=src python bench/gpu_overlap.py --dry-run               # CPU, toy sizes
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_imagenet import replicate_shards  # noqa: E402
from common import hardware, make_folder  # noqa: E402

from zfnet.data import codec  # noqa: E402
from zfnet.data.batches import DeviceBatches  # noqa: E402
from zfnet.data.mixed import measure_share  # noqa: E402
from zfnet.data.shard_writer import write_shards  # noqa: E402
from zfnet.memory import keep_freed_memory  # noqa: E402
from zfnet.train import TrainConfig  # noqa: E402
from zfnet.train import compiled as compiled_mod  # noqa: E402
from zfnet.train.distributed import DistInfo  # noqa: E402
from zfnet.train.recipe import EpochState, train_one_epoch  # noqa: E402
from zfnet.train.run import build_run, epoch_loader  # noqa: E402


class TimedIter:
    """An iterable whose `next` waits are summed in `seconds` (the workers' batches)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds, self.first = inner, 0.0, None

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        it = iter(self.inner)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - t
            if self.first is None:
                self.first = self.seconds  # the workers' start
            yield item


class Repeated:
    """One batch (x, y), already on the device, `n` times: the loop without a loader."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
        self.x, self.y, self.n = x, y, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.x, self.y


class TimedCall:
    """A callable whose calls' time is summed in `seconds` (turning batches into inputs)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, batch: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.inner(batch)
        finally:
            self.seconds += time.perf_counter() - t


class GpuBusy:
    """The GPU's utilisation (%) sampled every 0.1 s while in the `with` block (nvml)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples = device, []
        self.stop = threading.Event()

    def __enter__(self) -> GpuBusy:
        if self.device.type == "cuda":
            def sample() -> None:
                while not self.stop.wait(0.1):
                    try:
                        self.samples.append(torch.cuda.utilization(self.device))
                    except Exception:  # noqa: BLE001 (no nvml: no figure)
                        return
            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")


def one_epoch(run: Any, st: EpochState, epoch: int, *, main_stream: bool, priority: int,
              share: float, end_step: int | None = None, profile: Path | None = None,
              alone: bool = False, threads: int | None = None) -> dict[str, float]:
    """One epoch of the training loop with the settings given; `alone`: the loop without a
    loader (`Repeated`: the epoch's first batch, as many times as the epoch has batches);
    `threads`: ZFNET_DEVICE_THREADS for it (None: as set, auto where unset)."""
    device = run.info.device
    run.train_set.dataset.host_share = share
    DeviceBatches.stream_priority = priority
    before = os.environ.get(codec.THREADS_ENV)
    if threads is not None:
        os.environ[codec.THREADS_ENV] = str(threads)
    try:
        batches, expected = epoch_loader(run, epoch)
    finally:
        os.environ.pop(codec.THREADS_ENV, None)
        if before is not None:
            os.environ[codec.THREADS_ENV] = before
    timed_loader = timed_inputs = None
    if alone:
        it = iter(batches)
        x, y = next(it)
        if hasattr(it, "close"):
            it.close()  # the loader's thread and workers stop
        batches = Repeated(x, y, len(batches))
    if isinstance(batches, DeviceBatches):
        batches.loader = timed_loader = TimedIter(batches.loader)
        batches.inputs = timed_inputs = TimedCall(batches.inputs)
    st.epoch, st.start_step, st.end_step = epoch, 0, end_step
    stream = torch.cuda.Stream(device) if main_stream and device.type == "cuda" else None
    prof = nullcontext()
    if profile is not None:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(activities=acts)
    cpu0 = time.process_time()
    with GpuBusy(device) as busy, prof as p:
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            r = train_one_epoch(run.model, batches, run.optimizer, st, run.info)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    cpu = time.process_time() - cpu0
    if profile is not None:
        table = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
        waits = [e for e in p.key_averages() if any(w in e.key for w in (
            "Synchronize", "cudaFree", "cudaMalloc", "cudaHostAlloc", "cudaMemcpy",
            "cudaEventSynchronize", "cudaStreamWait", "nvjpeg"))]
        lines = [f"{e.key:<40} calls {e.count:6d}  self cpu {e.self_cpu_time_total / 1e3:9.1f} ms"
                 for e in sorted(waits, key=lambda e: -e.self_cpu_time_total)]
        text = table + "\n\nCUDA calls that may wait:\n" + "\n".join(lines) + "\n"
        profile.write_text(text)
        print("\n".join(lines))
        try:
            trace = profile.with_suffix(".json")
            p.export_chrome_trace(str(trace))
            with open(trace, "rb") as f, gzip.open(f"{trace}.gz", "wb") as g:
                shutil.copyfileobj(f, g)
            trace.unlink()
        except Exception as e:  # noqa: BLE001
            print(f"no trace: {e}")
    images = r["seen"]
    made_by = batches.threads if isinstance(batches, DeviceBatches) and batches.prefetch else 0
    return {"img/s": images / r["time"], "time": r["time"], "images": images,
            "threads": made_by,
            "main cores": cpu / r["time"],
            "wait workers s": timed_loader.seconds if timed_loader else float("nan"),
            "first s": (timed_loader.first or 0.0) if timed_loader else float("nan"),
            "decode s": timed_inputs.seconds if timed_inputs else float("nan"),
            "gpu %": busy.mean}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=40_960,
                    help="samples an epoch (whole batches: a last, smaller one would be "
                         "compiled again, inside the timing)")
    ap.add_argument("--unique", type=int, default=2_048, help="distinct photos made")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model", default="zfnet")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shares", default="0.3,0.5,0.7,measured",
                    help="host shares to try (measured: as --loader mixed measures it)")
    ap.add_argument("--threads", default="1,3",
                    help="ZFNET_DEVICE_THREADS to try besides auto's, at share 0 and at the "
                         "last share (a comma list; empty: none)")
    ap.add_argument("--profile-steps", type=int, default=12)
    ap.add_argument("--out", default=None, help="folder for the profile (default: none)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    args.threads = [int(n) for n in args.threads.split(",") if n.strip()]
    spec = ""
    if args.dry_run:
        args.images, args.unique, args.classes, args.batch_size = 48, 24, 2, 8  # whole batches
        args.model, args.device, args.profile_steps, spec = "zfnet_small", "cpu", 2, "size=64"
    device = torch.device(args.device)
    keep_freed_memory()
    cores = os.cpu_count() or 1
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root, shards = work / "folder", work / "shards"
        make_folder(root, args.unique, args.classes, val=args.classes, workers=cores)
        write_shards(f"imagefolder:{root}", shards, workers=cores)
        replicate_shards(shards, max(1, args.images // args.unique))
        print(hardware())
        print(f"shards: {args.images} samples at 256 px ({args.unique} distinct), made in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        config = TrainConfig(data=f"shards:{shards}?{spec}", model=args.model,
                             out=str(work / "run"), batch_size=args.batch_size, loader="gpu",
                             workers="auto", device=args.device, compile=not args.dry_run,
                             progress=False, tensorboard=False, keep_epochs=())
        run = build_run(config, DistInfo(0, 1, 0, device))
        st = EpochState(epoch=0, epochs=1, amp_dtype=run.amp_dtype, scaler=run.scaler,
                        renorm_radius=config.renorm_radius if config.renorm else None,
                        first_radius=run.first_radius, channels_last=config.channels_last,
                        ema=run.ema, ema_source=run.bare)
        t = time.perf_counter()
        one_epoch(run, st, 0, main_stream=False, priority=0, share=0.0, end_step=20)
        print(f"warm-up (compilation): {time.perf_counter() - t:.0f} s; "
              f"{run.loader_kw['num_workers']} workers", flush=True)
        high = torch.cuda.Stream.priority_range()[1] if device.type == "cuda" else 0
        shares: list[tuple[str, float]] = []  # (its name, the share)
        for s in args.shares.split(","):
            if s == "measured":  # what --loader mixed would take (zfnet.data.mixed)
                m = measure_share(run.bundle.train, device, run.loader_kw["num_workers"],
                                  batch_size=args.batch_size)
                print(m.describe(), flush=True)
                shares.append((f"host share {m.share} (measured)", m.share))
            else:
                shares.append((f"host share {float(s)}", float(s)))
        alone = "the loop alone (one device batch, repeated)"
        # (name, main stream, priority, share, ZFNET_DEVICE_THREADS: None as set, auto)
        settings: list[tuple[str, bool, int, float, int | None]] = [
            (alone, False, 0, 0.0, None), ("base", False, 0, 0.0, None)]
        settings += [(f"base, {n} thread{'s' * (n > 1)}", False, 0, 0.0, n)
                     for n in args.threads]
        settings += [(name, False, 0, p, None) for name, p in reversed(shares)]
        settings += [(f"{shares[-1][0]}, {n} thread{'s' * (n > 1)}", False, 0, shares[-1][1], n)
                     for n in args.threads]
        settings += [("decode priority", False, high, 0.0, None),
                     (f"{shares[-1][0]} + decode priority", False, high, shares[-1][1], None),
                     ("main stream", True, 0, 0.0, None)]
        lines = []
        for k, (name, main_stream, prio, share, threads) in enumerate(settings, start=1):
            m = one_epoch(run, st, k, main_stream=main_stream, priority=prio, share=share,
                          alone=name == alone, threads=threads)
            text = (f"  {name:<44} {m['img/s']:7.0f} img/s  main process {m['main cores']:4.2f} "
                    f"cores  {m['threads']} loader threads: wait {m['wait workers s']:5.2f} s "
                    f"(start {m['first s']:4.2f}), make batches "
                    f"{m['decode s']:5.2f} s of {m['time']:5.2f} s  gpu {m['gpu %']:3.0f}%")
            print(text, flush=True)
            lines.append(text)
            if out:
                (out / "overlap.txt").write_text("\n".join(lines) + "\n")
        if args.profile_steps:
            print(f"profile of {args.profile_steps} steps, base:", flush=True)
            one_epoch(run, st, len(settings) + 1, main_stream=False, priority=0, share=0.0,
                      end_step=args.profile_steps,
                      profile=(out or work) / "profile.txt")
    print(f"whole benchmark {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    if "--dry-run" in sys.argv:
        compiled_mod.BACKEND = "aot_eager"
    main()
