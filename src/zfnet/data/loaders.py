"""Which input pipeline feeds a model: `--loader auto|cpu|gpu|mixed` and `--workers auto|N`.

- cpu: the DataLoader's workers decode each file (libjpeg-turbo, at a reduced DCT scale where
  an image is large enough), resize it once and hand over only the uint8 window the input is
  cut from, in shared memory the worker reuses batch after batch (`zfnet.data.slots`)
  ("pixels" items); the float conversion, the mean subtraction and
  the ten crops are done on the device, for the whole batch (`zfnet.data.batches`). Datasets
  held in memory (synthetic, fashion-mnist) have nothing to decode: their workers keep making
  the inputs themselves ("float" items), as do all datasets with random erasing (drawn and
  applied per item).
- gpu: the workers only read the files; the device decodes them in one call per batch (nvJPEG
  on CUDA, through nvImageCodec where installed, else TorchCodec or torchvision:
  `zfnet.data.codec.decode_batch`), then resizes, cuts, flips and subtracts the mean
  ("encoded" items). Files nvJPEG's batched path does not take (PNG and other formats,
  CMYK or progressive JPEGs, EXIF-rotated ones, truncated ones) are decoded by the workers as
  the cpu loader does. It runs on a CPU device too (`decode_batch` on the CPU), which is how
  its tests prove it.
- mixed: gpu, with the workers decoding a share of the images themselves (chosen by index, the
  same ones in every epoch, so that a resumed run gets the same inputs; the workers hand them
  over whole, at the full size). The share is measured at the start of a run so that both
  sides keep pace (`zfnet.data.mixed`). For machines where the device's decoding is the
  limit: it runs in one thread of the training process, and on an NVIDIA H200 with 16 cores
  that thread was busy 88% of an epoch while the workers, which only read the files, idled
  (docs/results.md).
- auto: gpu on a CUDA device for image files (imagefolder:, shards:), cpu otherwise (raw
  shards among them: their workers only copy pixels).

On CUDA the device's part of the batches (the float conversion and the mean; the decoding
too with gpu and mixed) is done by threads of the training process, each on a stream of its
own, a batch or two ahead of the step: `ZFNET_DEVICE_THREADS` (`zfnet.data.codec.device_threads`)
says how many.

Workers: `auto` is, on CUDA, the CPU cores this process may use (shared by the processes
torchrun started on this machine), less one for the process itself; on a CPU device, 0: the
training step itself uses every core there, and decoding in the main process keeps it so.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader

from zfnet.data.batches import COLLATES, BatchInputs, DeviceBatches
from zfnet.data.codec import device_decoder, device_threads
from zfnet.data.transforms import CropDataset, Form
from zfnet.data.workers import usable_cores

LOADERS = ("auto", "cpu", "gpu", "mixed")
DEVICE_DECODES = ("gpu", "mixed")  # the loaders whose items are the files ("encoded")
WORKERS = "auto or a number >= 0"


def decodes_files(dataset: Any) -> bool:
    """Does `dataset` read image files (which the gpu loader can hand to the device)?"""
    return (isinstance(dataset, CropDataset) and dataset.preprocessing is None
            and type(dataset).read_encoded is not CropDataset.read_encoded)


def stores_pixels(dataset: Any) -> bool:
    """Are `dataset`'s files raw pixels (`zfnet shards --raw`), with nothing to decode?"""
    return bool(getattr(dataset, "raw_side", 0))


class LoaderWarning(UserWarning):
    """A loader asked for that works, but not as it would where it is made for (gpu on a
    CPU)."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)


def loader_kind(loader: str, dataset: Any, device: torch.device, *,
                erasing: float = 0.0, spec: str = "") -> str:
    """"cpu", "gpu" or "mixed": what `loader` (auto, cpu, gpu, mixed) means for `dataset` on
    `device`. ValueError naming the option for gpu or mixed where it cannot work, or a
    `ZFNET_DEVICE_DECODER` that does not (`zfnet.data.codec.device_decoder`)."""
    if loader not in LOADERS:
        raise ValueError(f"loader={loader!r} is not known; valid: {', '.join(LOADERS)}")
    files = decodes_files(dataset)
    if loader == "auto":
        loader = "gpu" if (device.type == "cuda" and files and not erasing
                           and not stores_pixels(dataset)) else "cpu"
    if loader in DEVICE_DECODES and getattr(dataset, "preprocessing", None) is not None:
        raise ValueError(f"--loader {loader} makes the paper's inputs on the device; a model's "
                         "own preprocessing (resize, crop, mean and std) is done by the "
                         "loader's workers: use --loader cpu or auto")
    if loader in DEVICE_DECODES and not files:
        what = f"dataset {spec!r}" if spec else type(dataset).__name__
        raise ValueError(f"--loader {loader} decodes image files on the device, and {what} "
                         "has none to decode (imagefolder: and shards: do); use --loader cpu "
                         "or auto")
    if loader in DEVICE_DECODES and stores_pixels(dataset):
        what = f"dataset {spec!r} holds" if spec else "these shards hold"
        raise ValueError(f"--loader {loader} decodes image files on the device, and {what} "
                         "raw pixels (zfnet shards --raw): nothing to decode; use --loader cpu "
                         "or auto")
    if loader in DEVICE_DECODES and erasing:
        raise ValueError("--random-erasing is drawn and applied per image by the loader's "
                         "workers; use --loader cpu (or auto) with it")
    if loader in DEVICE_DECODES:
        device_decoder(device)  # ZFNET_DEVICE_DECODER checked before anything runs
        if device.type != "cuda":
            warnings.warn(f"--loader {loader} on the {device.type}: the main process decodes "
                          "the JPEGs of each batch (the GPU path, run where there is no GPU); "
                          "--loader cpu (or auto) decodes them in the worker processes",
                          LoaderWarning, stacklevel=2)
    if files and not erasing:  # its batches are made by DeviceBatches: ZFNET_DEVICE_THREADS
        device_threads(device, decodes=loader in DEVICE_DECODES)
    return loader


def item_form(kind: str, dataset: Any, *, erasing: float = 0.0) -> Form:
    """The form of `dataset`'s items that the loader `kind` ("cpu"/"gpu"/"mixed") hands
    over."""
    if kind in DEVICE_DECODES:
        return "encoded"
    return "pixels" if decodes_files(dataset) and not erasing else "float"


def resolve_workers(workers: int | str, device: torch.device) -> int:
    """DataLoader worker processes for `workers` (a number, or "auto": see the module)."""
    if workers != "auto":
        return int(workers)
    if device.type != "cuda":
        return 0
    cores = usable_cores()
    here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun's on this machine
    return max(1, cores // here - 1)


def parse_workers(value: Any) -> int | str:
    """`workers` as given (a number >= 0 or "auto"); ValueError naming what is valid."""
    if value == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or (isinstance(value, float) and value != n):
        raise ValueError(f"workers={value!r} is not valid; valid: {WORKERS}")
    return n


def formed(dataset: Any, form: Form) -> Any:
    """`dataset` with items in `form` (itself for "float")."""
    return dataset if form == "float" else dataset.with_form(form)


def for_loader(kind: str, dataset: Any, *, erasing: float = 0.0, share: float = 0.0) -> Any:
    """`dataset` as the loader `kind` (`loader_kind`'s answer) reads it: its items in that
    loader's form, and with "mixed" the `share` (0..1) of images the workers decode
    (`zfnet.data.mixed.measure_share`)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share={share!r} is not valid; valid: 0 to 1")
    data = formed(dataset, item_form(kind, dataset, erasing=erasing))
    if kind == "mixed":
        data.host_share = share  # a copy: `with_form` made one
    return data


def as_inputs(loader: DataLoader, dataset: Any, device: torch.device) -> Iterable:
    """The batches of `loader` (over `dataset`, possibly through a Subset or a seeded
    wrapper) as model inputs on `device`: the loader itself for "float" items, else a
    `DeviceBatches` whose threads, `ZFNET_DEVICE_THREADS`'s (`device_threads`: on CUDA 1 or
    2, on the CPU none), prepare up to two batches ahead (or one per thread)."""
    if getattr(dataset, "form", "float") == "float":
        return loader
    threads = device_threads(device, decodes=dataset.form == "encoded")  # a float form: above
    return DeviceBatches(loader, BatchInputs(dataset, device),
                         prefetch=max(2, threads) if threads else 0, threads=threads)


def collate_for(dataset: Any) -> Any:
    """The `collate_fn` of `dataset`'s items."""
    return COLLATES[getattr(dataset, "form", "float")]
