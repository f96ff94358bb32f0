"""Shared memory that each DataLoader worker reuses, batch after batch, to hand its batches'
images to the training process.

A worker's batch of windows (256 x 224 x 224 x 3 uint8: 38.5 MB) normally goes into new shared
memory: the kernel maps and zeroes every page of it as the worker writes it, and frees them when
the training process drops the batch. Measured on a 2-core CPU, that cost a worker ~100 us an
image beside ~300 us to decode a 256 px square, and the training process ~7 ms a batch
(docs/results.md). Here a worker stacks a batch into one of its own slots of shared memory,
kept from batch to batch; the training process gets a `Parcel` (the slot's memory the first
time, then only its name), reads the images and releases the slot (`Slots.release`), which the
worker then fills again. Byte 0 of a slot says whether it is being read: only the worker sets
it, only the training process clears it.

A worker never waits for a slot: where all of its slots are in use and it has `MAX_SLOTS`, it
hands the batch over in new shared memory as before. So a consumer that does not release
(anything but `zfnet.data.batches.BatchInputs`) only costs what every batch cost before.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import default_collate, get_worker_info

HEADER = 64  # bytes of a slot before its data (byte 0: in use), keeping the data aligned
MAX_SLOTS = 8  # per worker: the batches a loader holds ahead are ~2 a worker and a few more


@dataclass
class Parcel:
    """A batch's images in a worker's slot: (N, ...) uint8 of `shape`, in the slot `slot` of
    the worker process `pid`; `memory` is the slot's memory the first time it is sent."""

    pid: int
    slot: int
    shape: tuple[int, ...]
    memory: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def pin_memory(self) -> Parcel:
        """Left as it is by a DataLoader's pin-memory thread (on a GPU, `BatchInputs` copies
        the images to page-locked memory as it reads them)."""
        return self


class _WorkerSlots:
    """This worker process's slots (made as its batches need them)."""

    def __init__(self) -> None:
        self.memory: list[torch.Tensor] = []
        self.sent: list[bool] = []

    def stack(self, images: Sequence[torch.Tensor]) -> Parcel | None:
        """`images` (equal shapes, uint8) stacked into a free slot; None where every slot is in
        use and there are `MAX_SLOTS`."""
        shape = (len(images), *images[0].shape)
        need = HEADER + len(images) * images[0].numel()
        k = next((k for k, m in enumerate(self.memory) if int(m[0]) == 0), None)
        if k is None and len(self.memory) >= MAX_SLOTS:
            return None
        if k is None or self.memory[k].numel() < need:  # a new slot, or a larger one
            memory = torch.empty(0, dtype=torch.uint8).set_(
                torch.UntypedStorage._new_shared(need))
            if k is None:
                k = len(self.memory)
                self.memory.append(memory)
                self.sent.append(False)
            else:
                self.memory[k], self.sent[k] = memory, False
        memory = self.memory[k]
        memory[0] = 1  # in use until the training process has read it
        torch.stack(list(images), out=memory[HEADER:need].view(shape))
        parcel = Parcel(os.getpid(), k, shape, None if self.sent[k] else memory)
        self.sent[k] = True
        return parcel


_worker: tuple[int, _WorkerSlots] | None = None  # (the process, its slots)


def stack(images: Sequence[torch.Tensor]) -> torch.Tensor | Parcel:
    """uint8 images of one shape stacked as a batch: in a DataLoader worker into one of its
    slots (a `Parcel`, where one is free), else as `default_collate` stacks them (into new
    shared memory in a worker)."""
    global _worker
    if get_worker_info() is not None and images and images[0].dtype == torch.uint8:
        if _worker is None or _worker[0] != os.getpid():  # a forked worker: its parent's
            _worker = (os.getpid(), _WorkerSlots())
        parcel = _worker[1].stack(images)
        if parcel is not None:
            return parcel
    return default_collate(list(images))


class Slots:
    """The training process's side: the slots' memory as parcels bring it, for one pass over a
    loader (its workers live as long), and the releases."""

    def __init__(self) -> None:
        self._memory: dict[tuple[int, int], torch.Tensor] = {}
        self._lock = threading.Lock()

    def open(self, parcel: Parcel) -> torch.Tensor:
        """The parcel's images, a view of its slot: read them, then `release` the parcel."""
        key = (parcel.pid, parcel.slot)
        with self._lock:
            if parcel.memory is not None:
                self._memory[key] = parcel.memory
            memory = self._memory.get(key)
        if memory is None:
            raise RuntimeError(f"slot {parcel.slot} of worker process {parcel.pid} was not "
                               "sent to this pass over the loader")
        return memory[HEADER:HEADER + math.prod(parcel.shape)].view(parcel.shape)

    def release(self, parcel: Parcel) -> None:
        """The parcel's images are read: its worker may fill the slot again."""
        with self._lock:
            memory = self._memory.get((parcel.pid, parcel.slot))
        if memory is not None:
            memory[0] = 0
