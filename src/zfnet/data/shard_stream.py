"""One epoch of training batches streamed from shards, split per rank and per DataLoader worker,
exact in length, deterministic and resumable.

The epoch's order, from the seed and the epoch alone (the same on every rank): the shards in a
shuffled order, each shard's samples in their stored order (`zfnet.data.shards`). Like
`DistributedSampler`, the order is padded by its own beginning to a multiple of the number of
ranks, and each rank takes an equal contiguous part: every rank has the same number of samples,
hence of batches (no rank waits at the end of an epoch for another), and the parts are disjoint
and together the whole epoch. A part is cut at sample boundaries, so a shard may be shared by two
ranks (each reads only its samples, through the index).

Each rank's part is split into contiguous pieces of whole batches, one per DataLoader worker;
a worker reads its piece in stored order (sequentially, shard by shard) through a shuffle buffer
(webdataset's, seeded by seed, epoch, rank and worker) and yields batches. The DataLoader hands
the workers' batches out in turn (worker 0, 1, ..., 0, 1, ...); the pieces are sized so that
this turn-taking is the epoch's batch order, with the only short batch last. Each sample's crop
and flip depend only on (seed, epoch, sample), as with the folder loader (`SeededSamples`).

Resuming k batches into an epoch (`start_step`): with the same number of workers as when it was
interrupted, each worker takes over the piece that the next batches in turn come from and skips
its batches already trained on (its reads of them too): the rest of the epoch is exactly the
uninterrupted run's. With another number of workers, the batches trained on are worked out from
the old split, and the samples not yet seen are split afresh: the epoch still shows every sample
once and has the same length, but the rest of it comes in another order (so the run is no longer
the uninterrupted one, from that step on). The number of processes must not change (as with the
folder loader).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import webdataset as wds
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from zfnet.data.shards import SHARD

if TYPE_CHECKING:
    from zfnet.data.shards import ShardImages


def _rng(*key: int) -> random.Random:
    """A Python RNG for one purpose, seeded from integers (seed, epoch, rank, worker, ...)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint64)
    return random.Random(int(state[0]) << 64 | int(state[1]))


def epoch_order(shard_of: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The items of an epoch (indices into `shard_of`, the shard of each item in stored order):
    the shards in an order drawn from (seed, epoch), each shard's items in stored order."""
    shards = np.unique(shard_of)
    position = np.empty(int(shards.max()) + 1 if len(shards) else 0, dtype=np.int64)
    position[shards] = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(shards))
    return np.argsort(position[shard_of], kind="stable")


def rank_part(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank `rank`'s contiguous part of the epoch's order, padded (as `DistributedSampler`
    pads) by the order's beginning so that every rank has ceil(n / world_size) items."""
    per_rank = math.ceil(len(order) / world_size)
    padded = np.resize(order, per_rank * world_size)  # repeats the order cyclically
    return padded[rank * per_rank:(rank + 1) * per_rank]


def worker_batches(batches: int, workers: int) -> list[int]:
    """How many batches each worker yields when the DataLoader takes them in turn: worker w's
    j-th batch is batch j * workers + w of the epoch."""
    return [max(0, math.ceil((batches - w) / workers)) for w in range(workers)]


def pieces(n: int, batch_size: int, workers: int) -> list[range]:
    """Each worker's piece of `n` positions (contiguous, whole batches): the worker that yields
    the epoch's last batch gets the short one, at the end of its piece, placed last."""
    batches = math.ceil(n / batch_size)
    counts = worker_batches(batches, workers)
    last = (batches - 1) % workers if batches else workers - 1
    out: list[range] = [range(0)] * workers
    start = 0
    for w in [*(w for w in range(workers) if w != last), last]:
        stop = min(n, start + counts[w] * batch_size)
        out[w] = range(start, stop)
        start = stop
    return out


def shuffled(positions: Sequence[int], buffer: int, rng: random.Random) -> list[int]:
    """`positions` in the order webdataset's shuffle buffer of `buffer` samples yields them
    (the buffer filled before the first is drawn); `buffer` < 2: as given."""
    if buffer < 2:
        return list(positions)
    return list(wds.filters.shuffle(buffer, buffer, rng=rng)(iter(positions)))


class ShardStream(IterableDataset):
    """This rank's training batches of one epoch from a shards split (see the module): each
    item is a list of `samples`' items (for the DataLoader's `collate_fn`, with
    `batch_size=None`). `samples` wraps `images` (the trainer's `SeededSamples`); its
    `__getitems__` gets the items, their bytes handed over through `images.pending`.
    `workers_before`: the DataLoader workers of the session interrupted at `start_step`."""

    def __init__(self, samples: Dataset, images: ShardImages, *, epoch: int, seed: int,
                 batch_size: int, rank: int = 0, world_size: int = 1, start_step: int = 0,
                 workers_before: int | None = None) -> None:
        self.samples, self.images = samples, images
        self.epoch, self.seed, self.batch_size = epoch, seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.start_step, self.workers_before = start_step, workers_before
        shard_of = images.split.index[images.rows, SHARD]
        self.part = rank_part(epoch_order(shard_of, seed, epoch), rank, world_size)
        self.batches = math.ceil(len(self.part) / batch_size)

    def __len__(self) -> int:
        return max(0, self.batches - self.start_step)

    def plan(self, worker: int, workers: int) -> tuple[list[int], list[int]]:
        """Worker `worker` of `workers`: (the positions in this rank's part it reads, in that
        order; the positions it yields, in that order, batch after batch)."""
        b, k = self.batch_size, self.start_step
        if k == 0 or self.workers_before in (None, workers):
            # Worker w takes over the piece whose batch comes next in turn: batch k + w.
            old, skip = (k + worker) % workers, (k + worker) // workers
            piece = pieces(len(self.part), b, workers)[old]
            order = shuffled(piece, self.images.shuffle_buffer, self._rng(old))
            return list(piece), order[skip * b:]
        # Another number of workers: the samples not trained on yet, split afresh.
        before = self.workers_before
        done: set[int] = set()
        for w, (piece, count) in enumerate(zip(pieces(len(self.part), b, before),
                                               worker_batches(self.batches, before),
                                               strict=True)):
            taken = min(count, max(0, math.ceil((k - w) / before)))
            done.update(shuffled(piece, self.images.shuffle_buffer, self._rng(w))[:taken * b])
        rest = [p for p in range(len(self.part)) if p not in done]
        piece = [rest[j] for j in pieces(len(rest), b, workers)[worker]]
        return piece, shuffled(piece, self.images.shuffle_buffer,
                               self._rng(worker, k, before))

    def _rng(self, worker: int, *extra: int) -> random.Random:
        return _rng(self.seed, self.epoch, self.rank, worker, *extra)

    def __iter__(self) -> Iterator[list[Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reads, order = self.plan(worker, workers)
        wanted = set(order)
        reader = (p for p in reads if p in wanted)  # sequential, batches skipped unread
        held: dict[int, bytearray] = {}  # read, not yet yielded: at most about the buffer
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for p in batch:
                while p not in held:
                    q = next(reader)
                    held[q] = self.images.read(int(self.part[q]))
            items = [int(self.part[p]) for p in batch]
            self.images.pending = {i: held.pop(p) for i, p in zip(items, batch, strict=True)}
            try:
                getitems = getattr(self.samples, "__getitems__", None)
                yield getitems(items) if getitems else [self.samples[i] for i in items]
            finally:
                self.images.pending = {}
