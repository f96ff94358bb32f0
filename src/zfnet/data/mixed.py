"""`--loader mixed`: how much of the decoding the workers take, measured on the machine at hand.

The gpu loader decodes every file in threads of the training process (nvJPEG; its Huffman stage
runs on the CPU; `ZFNET_DEVICE_THREADS` threads, each making whole batches), while the
DataLoader's workers only read the files; the cpu loader has the workers decode everything. On
an NVIDIA H200 with 16 cores each was bound by its own side (docs/results.md): the thread busy
88% of an epoch with the workers idle, or the workers busy with the thread idle. The mixed
loader gives each side a share: the workers decode a share p of the images (chosen by index,
`zfnet.data.transforms.decoded_on_host`) and hand them over whole, the device decodes the rest.
Per image, the threads then spend (1 - p) d + c, with d its decoding and c what they do with
every image however decoded (the copy to the device, the windows, the mean), both as wall time
of the threads together; the workers, H images/s all together, spend p / H.
A batch is ready when both sides are done with it, so the share that keeps both busy is

    p = (d + c) / (1 / H + d),  clipped to 0..1; the pipeline's rate is then H / p.

(Without c this is H / (H + D) with D = 1 / d, and the rate H + D. c matters where the
"device" is a CPU: there the windows and the mean are the thread's own work, and on a 2-core
machine the workers decoding everything was the fastest share, bench/bench_mixed_share.py.)

`measure_share` measures H, d + c and c on the dataset itself, in a few seconds: H with the
run's own workers decoding a sample of the files as they would, over several rounds of batches
so that their start is not counted; d + c and c with the device making inputs of batches of
the same files as the threads would (`BatchInputs` in as many threads, `DeviceBatches`),
once from the files and once from the images already decoded, after one batch per thread
that starts its decoder. In a run of several
processes every process measures (at the same time, as they will train) and all use the mean.
A resumed run takes the share it was saved with (its checkpoint's meta, `host_share`): the
same images are decoded on the same side, and the inputs are the same as the uninterrupted
run's.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Subset

from zfnet.data.batches import BatchInputs, DeviceBatches, collate_encoded
from zfnet.data.codec import device_threads
from zfnet.data.transforms import CropDataset, centre_offset
from zfnet.data.workers import Loader


@dataclass(frozen=True)
class ShareMeasure:
    """What `measure_share` found: the share of images the workers decode, and the rates it is
    made of (images per second; 0 where nothing was measured)."""

    share: float
    host_rate: float  # H: the workers' decoding, all together
    device_rate: float  # 1 / (d + c): the device's inputs made from the files
    finish_rate: float  # 1 / c: the device's inputs made from images decoded already
    workers: int

    def describe(self) -> str:
        """One line for the run's log."""
        if self.workers == 0:
            return ("--loader mixed: no DataLoader workers (--workers 0), so the device decodes "
                    "every image")
        split = (f"the workers decode {self.share:.0%} of the images, the device the rest"
                 if self.share < 1 else "the workers decode every image")
        return (f"--loader mixed: {split} (measured: {self.workers} workers {self.host_rate:,.0f} "
                f"img/s; the device {self.device_rate:,.0f} img/s from the files, "
                f"{self.finish_rate:,.0f} from decoded images)")


def _quiet_worker(_: int) -> None:
    """A measuring worker's start: broken files are warned about by the run, not here."""
    warnings.simplefilter("ignore")


def _sample(n: int, count: int) -> list[int]:
    """`count` indices spread over range(n), repeating it when n < count."""
    stride = max(1, n // count)
    return [(k * stride) % n for k in range(count)]


def best_share(host_rate: float, device_rate: float, finish_rate: float) -> float:
    """The share p of images the workers decode (0..1) that keeps them and the device's thread
    equally busy (see the module): p = (d + c) / (1 / H + d)."""
    if host_rate <= 0 or device_rate <= 0:
        return 0.0
    both = 1.0 / device_rate  # d + c
    finish = min(both, 1.0 / finish_rate) if finish_rate > 0 else 0.0  # c
    return min(1.0, max(0.0, both / (1.0 / host_rate + both - finish)))


def measure_share(dataset: CropDataset, device: torch.device, workers: int, *,
                  batch_size: int, rounds: int = 3,
                  reduce: Callable[[float], float] | None = None) -> ShareMeasure:
    """The share of `dataset`'s images (an image-file dataset: imagefolder, shards) that
    `workers` DataLoader workers should decode so that they and `device`'s thread keep pace
    (see the module), measured on batches of `batch_size`: `rounds` batches per worker and
    `rounds` on the device each way. `reduce` (e.g. the mean over a run's processes) is applied
    to the share. No workers: 0 (the decoding would be the training thread's own)."""
    device = torch.device(device)
    host = both = finish = 0.0
    if workers > 0 and len(dataset) > 0:
        probe = dataset.with_form("encoded")  # a copy, in the dataset's own mode
        probe.strict = False  # a broken file is the run's to report
        rounds = max(2, rounds)
        host = _host_rate(probe, workers, batch_size, rounds)
        both, finish = _device_rates(probe, device, batch_size, rounds)
    share = best_share(host, both, finish)
    if reduce is not None:
        share = reduce(share)
    return ShareMeasure(round(min(1.0, max(0.0, share)), 2), host, both, finish, max(0, workers))


def _host_rate(probe: CropDataset, workers: int, batch_size: int, rounds: int) -> float:
    """Images per second the workers decode together: the batches after their first round
    (its start, the workers' forks and first reads, is left out), over the time they took."""
    probe.host_share = 1.0  # every image decoded by the workers, whole
    n = workers * rounds
    items = Subset(probe, _sample(len(probe), n * batch_size))
    loader = Loader(items, batch_size=batch_size, num_workers=workers,
                    collate_fn=collate_encoded, worker_init_fn=_quiet_worker,
                    generator=torch.Generator())  # its workers' seeds: not the run's RNG
    arrived: list[tuple[float, int]] = []
    for batch in loader:
        arrived.append((time.perf_counter(), len(batch.labels)))
    images = sum(k for _, k in arrived[workers:])
    seconds = arrived[-1][0] - arrived[workers - 1][0]
    return images / seconds if seconds > 0 else 0.0


def _device_rates(probe: CropDataset, device: torch.device, batch_size: int,
                  rounds: int) -> tuple[float, float]:
    """Images per second the device makes into inputs, as the loader's threads do
    (`BatchInputs` in `ZFNET_DEVICE_THREADS`' threads, `DeviceBatches`; the batches read in
    this process beforehand, pinned for a CUDA device as the loader pins them): from the
    files, and from the same images decoded already. The crops are fixed ones, not drawn:
    the process's RNG is the run's."""
    inputs = BatchInputs(probe, device)
    threads = device_threads(device)
    indices = _sample(len(probe), (rounds + max(1, threads)) * batch_size)
    centre = centre_offset(probe.full_size, probe.input_size)  # where training windows lie

    def batches(share: float) -> list[Any]:
        probe.host_share = share
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k in range(0, len(indices), batch_size):
                part = indices[k:k + batch_size]
                params = [(centre, centre, j % 2 == 1) if probe.mode == "train" else None
                          for j in range(len(part))]  # every other one flipped
                batch = collate_encoded([probe.formed_item(i, p) for i, p in
                                         zip(part, params, strict=True)])
                if device.type == "cuda":
                    batch = type(batch)(*(t.pin_memory() for t in batch))
                out.append(batch)
        return out

    return (_rate(inputs, batches(0.0), device, threads),  # every file to the device
            _rate(inputs, batches(1.0), device, threads))  # every image decoded already


def _rate(inputs: BatchInputs, batches: list[Any], device: torch.device, threads: int
          ) -> float:
    """Images per second of `inputs` over `batches` made by `threads` threads at once as the
    loader's (`DeviceBatches`; 0: in this thread), after one batch per thread (which starts
    its decoder: nvJPEG's handles, CUDA's kernels)."""
    first = max(1, threads)

    def made(part: list[Any]) -> int:
        images = 0
        with warnings.catch_warnings():  # the files skipped: the run's to warn about
            warnings.simplefilter("ignore")
            for _, y in DeviceBatches(part, inputs, prefetch=max(2, threads) if threads else 0,
                                      threads=threads):
                images += len(y)
        _sync(device)
        return images

    made(batches[:first])
    start = time.perf_counter()
    images = made(batches[first:])
    seconds = time.perf_counter() - start
    return images / seconds if seconds > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_share(meta: dict[str, Any] | None) -> float | None:
    """The share a checkpoint's run decoded on the host with `--loader mixed` (None: it was
    not a mixed run, or predates the record)."""
    share = (meta or {}).get("host_share")
    return None if share is None else float(share)
