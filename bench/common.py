"""Shared by the benchmarks: the machine they ran on, timing, ImageNet-shaped JPEG folders, and how
two sets of projections agree."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from machine import cpu_description
from PIL import Image


def hardware() -> str:
    """CPU (see `cpu_description`), cores, torch threads, load average, GPU, torch and python
    versions."""
    cpu = cpu_description()
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"CPU {cpu} ({os.cpu_count()} logical cores, torch threads "
            f"{torch.get_num_threads()}, load average {load}), GPU {gpu}, torch "
            f"{torch.__version__}, python {platform.python_version()}")


def timed(fn: Callable[[], None], steps: int, warmup: int = 3) -> float:
    """Seconds per call of fn, after `warmup` calls (oneDNN builds its primitives on the first;
    torch.compile compiles there). CUDA work is waited for before and after."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             amp: torch.dtype | None = None) -> Callable[[], None]:
    """One training step of `model` on the batch (x, y) as a closure: forward under autocast
    (on x's device) to `amp` (None: full precision), cross-entropy, backward, SGD with
    momentum."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def photo(rng: np.random.Generator, h: int = 375, w: int = 500) -> np.ndarray:
    """An RGB image with natural images' 1/f spectrum and some sensor grain: JPEG compresses
    it about as much as an ImageNet photo (~76 kB at 500x375, quality 90). uint8 (h, w, 3)."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amp = f ** -1.3
    amp[0, 0] = 0.0

    def field() -> np.ndarray:
        return np.fft.irfft2(amp * np.exp(2j * np.pi * rng.random(amp.shape)), s=(h, w))

    base = field()
    x = np.stack([base + 0.5 * field() for _ in range(3)], -1)
    x = x @ (np.eye(3) + 0.3 * rng.normal(size=(3, 3)))  # correlated, coloured channels
    x = (x - x.mean()) / x.std() * 50 + 120 + rng.normal(0, 3, (h, w, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


def _write_photos(job: tuple[Path, list[tuple[str, int]]]) -> list[int]:
    root, files = job
    sizes = []
    for rel, seed in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(np.random.default_rng(seed))).save(path, quality=90)
        sizes.append(path.stat().st_size)
    return sizes


def make_folder(root: Path, n: int, classes: int = 10, val: int | None = None,
                workers: int = 1, unique: int | None = None) -> float:
    """`n` training and `val` (default max(classes, n // 10)) val JPEGs of 500x375 (`photo`,
    quality 90) in ImageNet layout under `root`, written by `workers` processes; their mean
    size (kB). Image k of a split has seed (split, k): the same folder for any `workers`.

    `unique`: training photos actually made; training image k >= `unique` is a hard link to
    image k % `unique` (a large folder made in seconds: what a loader reads and decodes is the
    same, and the page cache holds it either way)."""
    unique = n if unique is None else max(1, min(unique, n))
    jobs: list[tuple[str, int]] = []
    for s, (split, count) in enumerate((("train", unique),
                                        ("val", val or max(classes, n // 10)))):
        jobs += [(_member(split, i, classes), s * 10**7 + i) for i in range(count)]
    chunks = [(root, jobs[k::workers]) for k in range(workers)]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            sizes = [v for part in pool.map(_write_photos, chunks) for v in part]
    else:
        sizes = _write_photos(chunks[0])
    for i in range(unique, n):
        path = root / _member("train", i, classes)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(root / _member("train", i % unique, classes), path)
    return float(np.mean(sizes)) / 1000


def _member(split: str, i: int, classes: int) -> str:
    return f"{split}/class{i % classes:03d}/{split}_{i:06d}.JPEG"


def rates(loaders: dict[str, tuple[Callable[[int], Iterable], int]], repeats: int
          ) -> dict[str, float]:
    """Images per second of each loader's epochs (`epoch(e)`: an iterable of batches, read to
    the end), the median of `repeats` epochs after one untimed; the loaders take turns, so that
    the machine's load changes touch them alike."""
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for e in range(repeats + 1):
        for name, (epoch, _) in loaders.items():
            start = time.perf_counter()
            for _ in epoch(e):
                pass
            if e:
                times[name].append(time.perf_counter() - start)
    return {name: loaders[name][1] / statistics.median(t) for name, t in times.items()}


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
