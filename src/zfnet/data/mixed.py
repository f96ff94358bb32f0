"""`--loader mixed`: how much of the decoding the workers take, measured on the machine at hand.

The gpu loader decodes every file in one thread of the training process (nvJPEG; its Huffman
stage runs on that thread's CPU core), while the DataLoader's workers only read the files; the
cpu loader has the workers decode everything. On an NVIDIA H200 with 16 cores each was bound
by its own side (docs/results.md): the thread busy 88% of an epoch with the workers idle, or
the workers busy with the thread idle. The mixed loader gives each side a share: the workers
decode a share p of the images (chosen by index, `zfnet.data.transforms.decoded_on_host`), the
device the rest. A batch is ready when both sides are done with it, so with the workers
decoding H images/s all together and the device's thread D images/s, the share that keeps
both busy is

    p = H / (H + D),  and the pipeline's rate is then H + D (instead of max(H, D)).

`measure_share` measures H and D on the dataset itself, in a few seconds: H with the run's
own workers decoding a sample of the files as they would (whole images, at full size), over
several rounds of batches so that their start is not counted; D with the device decoding
batches of the same files as the thread would (`BatchInputs`), after one batch that starts
the decoder. In a run of several processes every process measures (at the same time, as
they will train) and all use the mean. A resumed run takes the share it was saved with
(its checkpoint's meta, `host_share`): the same images are decoded on the same side, and
the inputs are the same as the uninterrupted run's.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Subset

from zfnet.data.batches import BatchInputs, collate_encoded
from zfnet.data.transforms import CropDataset
from zfnet.data.workers import Loader


@dataclass(frozen=True)
class ShareMeasure:
    """What `measure_share` found: the share of images the workers decode, and the two rates
    it is made of (images per second)."""

    share: float
    host_rate: float  # the workers', all together (0: no workers)
    device_rate: float  # the device's decoding thread's
    workers: int

    def describe(self) -> str:
        """One line for the run's log."""
        if self.workers == 0:
            return ("--loader mixed: no DataLoader workers (--workers 0), so the device decodes "
                    "every image")
        return (f"--loader mixed: the workers decode {self.share:.0%} of the images, the "
                f"device the rest (measured: {self.workers} workers {self.host_rate:,.0f} "
                f"img/s, the device {self.device_rate:,.0f} img/s)")


def _quiet_worker(_: int) -> None:
    """A measuring worker's start: broken files are warned about by the run, not here."""
    warnings.simplefilter("ignore")


def _sample(n: int, count: int) -> list[int]:
    """`count` indices spread over range(n), repeating it when n < count."""
    stride = max(1, n // count)
    return [(k * stride) % n for k in range(count)]


def measure_share(dataset: CropDataset, device: torch.device, workers: int, *,
                  batch_size: int, rounds: int = 3,
                  reduce: Callable[[float], float] | None = None) -> ShareMeasure:
    """The share of `dataset`'s images (an image-file dataset: imagefolder, shards) that
    `workers` DataLoader workers should decode so that they and `device`'s decoding keep pace
    (see the module), measured on batches of `batch_size`: `rounds` batches per worker and
    `rounds` on the device. `reduce` (e.g. the mean over a run's processes) is applied to
    the share. No workers: 0 (the decoding would be the training thread's own)."""
    device = torch.device(device)
    if workers <= 0 or len(dataset) == 0:
        share, host, dev = 0.0, 0.0, 0.0
    else:
        # centre crops: no crop parameters drawn from the process's RNG (the run's dropout)
        probe = dataset.with_mode("centre").with_form("encoded")
        probe.strict = False  # a broken file is the run's to report
        rounds = max(2, rounds)
        host = _host_rate(probe, workers, batch_size, rounds)
        dev = _device_rate(probe, device, batch_size, rounds)
        share = host / (host + dev) if host + dev > 0 else 0.0
    if reduce is not None:
        share = reduce(share)
    return ShareMeasure(round(min(1.0, max(0.0, share)), 2), host, dev, max(0, workers))


def _host_rate(probe: CropDataset, workers: int, batch_size: int, rounds: int) -> float:
    """Images per second the workers decode together: the batches after their first round
    (its start, the workers' forks and first reads, is left out), over the time they took."""
    probe.host_share = 1.0  # every image decoded by the workers, whole
    n = workers * rounds
    items = Subset(probe, _sample(len(probe), n * batch_size))
    loader = Loader(items, batch_size=batch_size, num_workers=workers,
                    collate_fn=collate_encoded, worker_init_fn=_quiet_worker)
    arrived: list[tuple[float, int]] = []
    for batch in loader:
        arrived.append((time.perf_counter(), len(batch.labels)))
    images = sum(k for _, k in arrived[workers:])
    seconds = arrived[-1][0] - arrived[workers - 1][0]
    return images / seconds if seconds > 0 else 0.0


def _device_rate(probe: CropDataset, device: torch.device, batch_size: int,
                 rounds: int) -> float:
    """Images per second the device decodes into full images, as the loader's thread does
    (`BatchInputs`, read in this process), after one batch that starts the decoder."""
    probe.host_share = 0.0  # every file to the device
    inputs = BatchInputs(probe, device)
    indices = _sample(len(probe), (rounds + 1) * batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = [collate_encoded([probe.formed_item(i) for i in indices[k:k + batch_size]])
                   for k in range(0, len(indices), batch_size)]
    images, seconds = 0, 0.0
    for k, batch in enumerate(batches):
        _sync(device)
        start = time.perf_counter()
        prepared = inputs(batch)
        _sync(device)
        if k:  # the first starts the decoder (nvJPEG's handles, CUDA's kernels)
            images += len(prepared.y)
            seconds += time.perf_counter() - start
    return images / seconds if seconds > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_share(meta: dict[str, Any] | None) -> float | None:
    """The share a checkpoint's run decoded on the host with `--loader mixed` (None: it was
    not a mixed run, or predates the record)."""
    share = (meta or {}).get("host_share")
    return None if share is None else float(share)
