"""Batches as a loader's workers hand them over, and the model inputs made of them on the device.

A dataset's items come in one of three forms (`zfnet.data.transforms.CropDataset.form`); each
has its `collate_fn` here, and `BatchInputs` turns its batches into what the "float" form's
items would have been, stacked, on the device the model trains on:

- "float": (x float32 (N, C, S, S) or (N, 10, C, S, S), y): `zfnet.data.transforms.collate`,
  nothing left to do;
- "pixels" (the CPU loader): `PixelBatch`, uint8 windows of the full images, as they lie in
  the image (not flipped). On the device: made float, minus the same windows of the mean image
  (one gather for the batch), the training crops flipped where their params say (one op for
  the batch), divided by std, the ten crops cut for evaluation;
- "encoded" (the GPU loader): `EncodedBatch`, the files' bytes (and, for the few files the
  device cannot decode, the full images decoded by the workers). On the device: decoded in one
  `zfnet.data.codec.decode_batch` call (nvJPEG on CUDA, through nvImageCodec, TorchCodec or
  torchvision), each image's shorter side resized to F (images of one size in one call) and
  its centre F x F kept, then the windows cut (one gather) and finished as "pixels". A file
  the device's decoder refuses is decoded by PIL on the host (`load_rgb`): it is used if PIL
  can read it, else skipped with a warning naming it (or `BadImageError` with `strict`).

Every form gives the same inputs, the "encoded" form up to its decoder's and resampler's
rounding (nvJPEG's IDCT and CUDA's resampling differ from libjpeg-turbo's and the CPU's by a
few levels; on the CPU, `decode_batch` is libjpeg-turbo and the same resampling: the same
pixels, except for images large enough that the CPU loader decodes them at a reduced DCT
scale). Items of a batch keep their order; crops and flips are the dataset's (per sample,
`zfnet.train.recipe.SeededSamples`), so runs resume exactly with any form.
"""

from __future__ import annotations

import io
import itertools
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, get_worker_info

from zfnet.data.codec import ENV, LIBRARIES, decode_batch, device_decoder
from zfnet.data.images import BadImageError, load_rgb, resize_center_crop, warn_skipped
from zfnet.data.slots import Parcel, Slots, stack
from zfnet.data.transforms import CropDataset, Form, collate, ten_crop


class PixelBatch(NamedTuple):
    """A batch of "pixels" items (broken files dropped)."""

    # (N, s, s, C) uint8: each input's window of its full image, unflipped (from a worker: in
    # its slot of shared memory, `zfnet.data.slots`)
    pixels: torch.Tensor | Parcel
    labels: torch.Tensor  # (N,) int64
    params: torch.Tensor  # (N, 3) int64: top, left, flipped of each window (flipped on the device)


class EncodedBatch(NamedTuple):
    """A batch of "encoded" items (broken files the workers met dropped)."""

    data: torch.Tensor  # (B,) uint8: the files the device decodes, one after another
    offsets: torch.Tensor  # (J + 1,) int64: file j is data[offsets[j]:offsets[j + 1]]
    decoded: torch.Tensor | Parcel  # (M, F, F, C) uint8: the other images, decoded by the workers
    encoded: torch.Tensor  # (N,) bool: item k is the next file of `data`, else of `decoded`
    labels: torch.Tensor  # (N,) int64
    params: torch.Tensor  # (N, 3) int64: top, left, flipped of each input in its full image
    indices: torch.Tensor  # (N,) int64: each item's index in its dataset (to name its file)


def _shared_cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """`torch.cat` of 1-D uint8 tensors, into shared memory in a DataLoader worker (as
    `default_collate` stacks): the batch reaches the main process without another copy."""
    if not tensors:
        return torch.empty(0, dtype=torch.uint8)
    out = None
    if get_worker_info() is not None:
        n = sum(t.numel() for t in tensors)
        out = tensors[0].new(tensors[0]._typed_storage()._new_shared(n)).resize_(n)
    return torch.cat(list(tensors), out=out)


def collate_pixels(batch: Sequence[Any]) -> PixelBatch:
    """`collate_fn` of "pixels" items: drops `None` (skipped broken files), stacks the rest
    (into the worker's slot of shared memory in a worker: `zfnet.data.slots`). All broken:
    N = 0."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return PixelBatch(torch.empty(0, 0, 0, 0, dtype=torch.uint8),
                          torch.empty(0, dtype=torch.long), torch.empty(0, 3, dtype=torch.long))
    pixels, labels, params = zip(*kept, strict=True)
    return PixelBatch(stack(pixels), torch.as_tensor(labels, dtype=torch.long),
                      torch.as_tensor(params, dtype=torch.long))


def collate_encoded(batch: Sequence[Any]) -> EncodedBatch:
    """`collate_fn` of "encoded" items: drops `None`, concatenates the files, stacks the images
    the workers decoded (into shared memory in a worker; the images into its slot)."""
    kept = [item for item in batch if item is not None]
    files = [payload for payload, *_ in kept if payload.ndim == 1]
    images = [payload for payload, *_ in kept if payload.ndim != 1]
    sizes = torch.tensor([0] + [f.numel() for f in files], dtype=torch.long)
    return EncodedBatch(
        data=_shared_cat(files), offsets=sizes.cumsum(0),
        decoded=stack(images) if images else torch.empty(0, 0, 0, 0, dtype=torch.uint8),
        encoded=torch.tensor([payload.ndim == 1 for payload, *_ in kept], dtype=torch.bool),
        labels=torch.as_tensor([y for _, y, *_ in kept], dtype=torch.long),
        params=torch.as_tensor([p for *_, p, _ in kept], dtype=torch.long).reshape(-1, 3),
        indices=torch.as_tensor([i for *_, i in kept], dtype=torch.long))


COLLATES: dict[str, Callable[[Sequence[Any]], Any]] = {
    "float": collate, "pixels": collate_pixels, "encoded": collate_encoded}


# --- on the device ---

def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (indices, params) on `device` without waiting: on CUDA copied from
    page-locked memory (torch's cache of it) with `non_blocking`. A copy from pageable memory
    would first wait for the stream's queued work (the batch's decoding), and the thread that
    makes the batches could not run ahead of the GPU."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


def cut_windows(images: torch.Tensor, params: torch.Tensor, side: int,
                which: torch.Tensor | None = None) -> torch.Tensor:
    """The windows `params` (N, 3: top, left, flipped) of images (R, H, W, C), in one gather:
    (N, side, side, C), mirrored where flipped. Window k is cut from image `which[k]` (None:
    image k)."""
    device = images.device
    tops, lefts, flips = to_device(params, device).unbind(1)
    ramp = torch.arange(side, device=device)
    rows = (tops[:, None] + ramp)[:, :, None]  # (N, s, 1)
    cols = lefts[:, None] + ramp  # (N, s)
    cols = torch.where(flips[:, None].bool(), cols.flip(1), cols)[:, None, :]  # (N, 1, s)
    which = (torch.arange(len(params), device=device) if which is None
             else to_device(which, device))
    return images[which[:, None, None], rows, cols]  # (N, s, s, C)


def full_images(images: Sequence[torch.Tensor], side: int) -> torch.Tensor:
    """Decoded images of one size, (3, H, W) uint8 each -> (g, side, side, 3): each one's
    shorter side resized to `side` and its centre kept (`resize_center_crop`'s pixels).
    Images whose memory is (H, W, 3), as nvImageCodec's are, are stacked in that layout, in
    one copy (stacking their (3, H, W) views copies image by image, one kernel each on a GPU),
    and images at the size already are only cut."""
    hwc = [img.permute(1, 2, 0) for img in images]
    if all(h.is_contiguous() for h in hwc):
        chw = torch.stack(hwc).permute(0, 3, 1, 2)  # (g, 3, H, W), a view of (g, H, W, 3)
        if min(chw.shape[-2:]) != side:
            chw = chw.contiguous()  # resampled: in the layout it always was
    else:
        chw = torch.stack(list(images))  # (g, 3, H, W)
    return resize_center_crop(chw, side).permute(0, 2, 3, 1)


@dataclass
class Prepared:
    """One batch as model inputs: x on the device, y, and the files skipped while decoding it
    on the device (warned about by whoever hands the batch on)."""

    x: torch.Tensor
    y: torch.Tensor
    skipped: list[BadImageError]


class BatchInputs:
    """Turns batches of `dataset`'s form into model inputs on `device` (see the module): x
    float32 (N, C, S, S) in channels_last layout (the trainer's default), or (N, 10, C, S, S)
    for ten crops, and y (N,) int64."""

    def __init__(self, dataset: CropDataset, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.form: Form = dataset.form
        self.mode = dataset.mode
        self.input_size, self.full_size = dataset.input_size, dataset.full_size
        self.strict = dataset.strict
        self.name = dataset.item_name
        self._said_refused = False  # that the device's decoder refuses most files
        self.slots = Slots()  # the workers' slots of this pass over the loader (`new_pass`)
        mean = dataset.mean.to(self.device, torch.float32)  # (C, F, F)
        self.mean_hwc = mean.permute(1, 2, 0)  # (F, F, C), for gathering windows
        self.std = None if dataset.std is None else dataset.std.to(self.device)  # (C, 1, 1)
        self.side = dataset.input_size  # of the training windows
        # centre crops and ten crops: every window in the same place, one mean window for all
        self.fixed: tuple[int, int, int] | None = None  # top, left, side
        if dataset.mode != "train":
            (top, left, _), side = dataset.window()
            self.fixed = (top, left, side)
            self._fixed_mean = self.mean_hwc[top:top + side, left:left + side]  # (s, s, C)

    def new_pass(self) -> None:
        """Before a pass over the loader (its workers are new, and so are their slots) and
        after it: the slots of the last pass are let go."""
        self.slots = Slots()

    def __call__(self, batch: Any) -> Prepared:
        if isinstance(batch, PixelBatch):
            with self._opened(batch.pixels) as pixels:
                windows = pixels.to(self.device, non_blocking=True)
                x = self.finish(windows, batch.params, flipped=False)
            return Prepared(x, batch.labels, [])
        if isinstance(batch, EncodedBatch):
            with self._opened(batch.decoded) as decoded:
                full, rows, keep, skipped = self.decode(batch._replace(decoded=decoded))
                params = batch.params if rows is None else batch.params[keep]
                if self.fixed is None:
                    windows = cut_windows(full, params, self.side, rows)  # (N', S, S, C)
                else:
                    top, left, side = self.fixed
                    if rows is not None:
                        full = full[to_device(rows, self.device)]
                    windows = full[:, top:top + side, left:left + side]
                x = self.finish(windows, params)
            labels = batch.labels if rows is None else batch.labels[keep]
            return Prepared(x, labels, skipped)
        x, y = batch  # the "float" form: inputs already
        return Prepared(x.to(self.device, non_blocking=True), y, [])

    @contextmanager
    def _opened(self, images: torch.Tensor | Parcel) -> Iterator[torch.Tensor]:
        """A batch's images on the host, for the block: a tensor as it is; a worker's slot
        (`zfnet.data.slots`) released after the block, or on a GPU as soon as its images are
        copied to page-locked memory (from which they go to the device without waiting)."""
        if not isinstance(images, Parcel):
            yield images
            return
        view = self.slots.open(images)
        released = False
        try:
            if self.device.type == "cuda":
                view = view.pin_memory()
                self.slots.release(images)
                released = True
            yield view
        finally:
            if not released:
                self.slots.release(images)

    def finish(self, windows: torch.Tensor, params: torch.Tensor, *,
               flipped: bool = True) -> torch.Tensor:
        """uint8 windows (N, s, s, C) on the device, at `params` -> float32 inputs: minus the
        mean's windows, flipped where `params` say (`flipped`: the windows are already), / std,
        ten crops cut in "ten_crop" mode. The same values, pixel for pixel, as the "float"
        form's items (whose crops and flips commute with these)."""
        if len(windows) == 0:
            return torch.empty(0, device=self.device)
        flips = None
        if self.fixed is not None:
            mean = self._fixed_mean  # (s, s, C), broadcast over the batch
        else:
            if not flipped:  # the mean's windows as the images' (both flipped after)
                flips = params[:, 2].nonzero().flatten()
                params = params * torch.tensor([1, 1, 0])
            mean = cut_windows(self.mean_hwc.expand(len(windows), -1, -1, -1), params,
                               self.side)  # (N, s, s, C)
        x = (windows.to(torch.float32) - mean).permute(0, 3, 1, 2)  # (N, C, s, s), NHWC
        if flips is not None and len(flips):
            k = to_device(flips, x.device)
            x[k] = x[k].flip(-1)  # (x is this call's own)
        if self.std is not None:
            x = x / self.std
        if self.mode == "ten_crop":
            return ten_crop(x, self.input_size).transpose(0, 1)  # (N, 10, C, S, S)
        return x

    # --- decoding on the device ---

    def decode(self, batch: EncodedBatch
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, list[BadImageError]]:
        """The batch's full images on the device, (R, F, F, C) uint8 in an order of their own;
        the row of each kept item, in item order (None: item k is row k, all kept); which items
        are kept (a bool mask of the batch: broken files are not); the files skipped.

        The images the device decodes are resized in one call per size and the workers' are
        appended: no write into a shared output, the order is the gather's (`cut_windows`)."""
        n, f = len(batch.labels), self.full_size
        skipped: list[BadImageError] = []
        where = batch.encoded.nonzero().flatten().tolist()  # the items sent as files
        files = [batch.data[a:b] for a, b in itertools.pairwise(batch.offsets.tolist())]
        images = self._decode_files(files, batch.indices, where, skipped)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, img in zip(where, images, strict=True):
            if img is not None:
                by_shape.setdefault(tuple(img.shape), []).append(k)
        decoded = dict(zip(where, images, strict=True))
        parts: list[torch.Tensor] = []
        order: list[int] = []  # the item of each row
        for ks in by_shape.values():  # images of one size resized in one call
            parts.append(full_images([decoded[k] for k in ks], f))  # (g, F, F, 3)
            order += ks
        host = (~batch.encoded).nonzero().flatten().tolist()  # decoded by the workers
        if host:
            parts.append(batch.decoded.to(self.device, non_blocking=True))  # (M, F, F, C)
            order += host
        if not parts:
            full = torch.empty(0, f, f, 3, dtype=torch.uint8, device=self.device)
        else:
            full = parts[0] if len(parts) == 1 else torch.cat(parts)
        if order == list(range(n)):
            return full, None, torch.ones(n, dtype=torch.bool), skipped
        keep = torch.zeros(n, dtype=torch.bool)
        keep[order] = True
        row_of = {k: r for r, k in enumerate(order)}
        rows = torch.tensor([row_of[k] for k in range(n) if k in row_of], dtype=torch.long)
        return full, rows, keep, skipped

    def _decode_files(self, files: list[torch.Tensor], indices: torch.Tensor,
                      where: list[int], skipped: list[BadImageError]
                      ) -> list[torch.Tensor | None]:
        """Decode `files` (items `where` of the batch, whose dataset indices are `indices`) on
        the device, in one call (`decode_batch`); the ones the device refuses on the host
        (None: broken)."""
        images = decode_batch(files, self.device)
        out = [img if img is not None
               else self._decode_on_host(data, int(indices[k]), skipped)
               for img, data, k in zip(images, files, where, strict=True)]
        rescued = sum(a is None and b is not None for a, b in zip(images, out, strict=True))
        if rescued >= 4 and 2 * rescued > len(files) and not self._said_refused:
            # once: a decoder that refuses most files is the decoder's fault, not the files'
            self._said_refused = True
            warnings.warn(
                f"the device's JPEG decoder ({device_decoder(self.device)}) refused {rescued} of "
                f"the {len(files)} files of a batch that PIL reads; they are decoded on the host, "
                f"which is slow: {ENV} names another ({', '.join(LIBRARIES[1:])})",
                RuntimeWarning, stacklevel=2)
        return out

    def _decode_on_host(self, data: torch.Tensor, i: int,
                        skipped: list[BadImageError]) -> torch.Tensor | None:
        """A file the device refused, decoded by PIL (`load_rgb`): its (3, H, W) on the device,
        or None when it is broken (recorded in `skipped`; raised with `strict`)."""
        try:
            img = load_rgb(io.BytesIO(data.numpy().tobytes()), min_side=self.full_size,
                           name=self.name(i))
        except BadImageError as err:
            if self.strict:
                raise
            skipped.append(err)
            return None
        return img.to(self.device)


class DeviceBatches:
    """A DataLoader whose batches come out as model inputs on a device (`BatchInputs`): what
    the training and evaluation loops iterate, with the DataLoader's length and sampler.
    Files skipped on the device are warned about (`BrokenImageWarning`) as the batch is handed
    on. `prefetch` > 0: `threads` threads prepare up to max(prefetch, threads) batches ahead,
    on a CUDA device each on a stream of its own, so that decoding the next batches overlaps
    the step on this one; they come out in the loader's order whichever thread made them, and
    an error is raised where its batch would have come."""

    # CUDA priority of the threads' streams (lower is higher; torch.cuda.Stream's range):
    # the decoding's kernels before the step's when both wait for the GPU
    stream_priority = 0

    def __init__(self, loader: DataLoader, inputs: BatchInputs, prefetch: int = 0,
                 threads: int = 1) -> None:
        self.loader, self.inputs = loader, inputs
        self.prefetch, self.threads = prefetch, max(1, threads)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self) -> Any:
        return self.loader.sampler

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.inputs.new_pass()
        try:
            if self.prefetch <= 0:
                for batch in self.loader:
                    yield self._hand_on(self.inputs(batch))
            else:
                yield from self._prefetched()
        finally:  # the pass's slots, freed with its workers (not kept through a validation)
            self.inputs.new_pass()

    @staticmethod
    def _hand_on(prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        for err in prepared.skipped:
            warn_skipped(err)
        return prepared.x, prepared.y

    def _prefetched(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.inputs.device
        ahead = max(self.prefetch, self.threads)
        source = iter(self.loader)
        reading = threading.Lock()  # the loader's iterator: one thread at a time
        ready = threading.Condition()  # guards `done` and `state`
        done: dict[int, Any] = {}  # batch number -> (prepared, event), or the error
        # next: the number of the next batch read; handed: batches handed on; end: the number
        # of batches there are (known at the loader's end or an error)
        state: dict[str, Any] = {"next": 0, "handed": 0, "end": None}
        stop = threading.Event()

        def finish(k: int, item: Any, *, last: bool = False) -> None:
            with ready:
                if item is not None:
                    done[k] = item
                if last:
                    state["end"] = k if state["end"] is None else min(state["end"], k)
                ready.notify_all()

        # a new thread's CUDA device is device 0: the consumer's, for a device without index
        index = (device.index if device.index is not None else torch.cuda.current_device()
                 ) if device.type == "cuda" else None

        failed: list[BaseException] = []  # threads that could not start

        def take() -> tuple[int, Any] | None:
            """The loader's next batch and its number, once there is room for it ahead of the
            consumer; None when this thread is to stop (the end, an error, the consumer's)."""
            while True:
                with ready:  # at most `ahead` batches beyond the consumer's
                    while (not stop.is_set() and state["end"] is None
                           and state["next"] >= state["handed"] + ahead):
                        ready.wait()
                if stop.is_set():
                    return None
                with reading:
                    with ready:
                        if state["end"] is not None:
                            return None
                        if state["next"] >= state["handed"] + ahead:
                            continue  # another thread took the last place meanwhile
                        k = state["next"]
                    try:
                        batch = next(source)
                    except StopIteration:
                        finish(k, None, last=True)
                        return None
                    except BaseException as e:  # noqa: BLE001 (raised in the consumer)
                        finish(k, e, last=True)
                        return None
                    with ready:
                        state["next"] = k + 1
                    return k, batch

        def produce() -> None:
            stream = None
            try:
                if index is not None:
                    torch.cuda.set_device(index)
                    stream = torch.cuda.Stream(index, priority=self.stream_priority)
            except BaseException as e:  # noqa: BLE001 (raised in the consumer if none start)
                failed.append(e)
                return
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                while (taken := take()) is not None:
                    k, batch = taken
                    try:
                        prepared = self.inputs(batch)
                        event = None
                        if stream is not None:
                            event = torch.cuda.Event()
                            event.record(stream)
                    except BaseException as e:  # noqa: BLE001 (raised in the consumer)
                        finish(k, e)
                        finish(k + 1, None, last=True)  # no batch after it is read
                        return
                    finish(k, (prepared, event))

        workers = [threading.Thread(target=produce, name=f"zfnet-batches-{i}", daemon=True)
                   for i in range(self.threads)]
        for thread in workers:
            thread.start()
        try:
            k = 0
            while True:
                with ready:
                    while k not in done and (state["end"] is None or k < state["end"]):
                        if not any(t.is_alive() for t in workers):
                            if failed:
                                raise failed[0]
                            raise RuntimeError("the threads that prepare batches stopped")
                        ready.wait(timeout=1.0)
                    if k not in done:
                        return  # the loader's end
                    item = done.pop(k)
                    state["handed"] = k + 1
                    ready.notify_all()
                if isinstance(item, BaseException):
                    raise item
                prepared, event = item
                if event is not None:  # the batch was made on its thread's stream
                    current = torch.cuda.current_stream(device)
                    current.wait_event(event)
                    for t in (prepared.x, prepared.y):
                        if t.device.type == "cuda":
                            t.record_stream(current)
                k += 1
                yield self._hand_on(prepared)
        finally:
            stop.set()
            with ready:
                ready.notify_all()
            for thread in workers:
                thread.join()
