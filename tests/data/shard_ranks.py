"""One epoch's training samples of this process, streamed from shards (the two-process test).

    torchrun --standalone --nproc-per-node 2 -m tests.data.shard_ranks OUT RESULT

Each rank joins the process group (gloo), streams epoch 1 of `shards:OUT?size=32` with batch 4
and 2 DataLoader workers, and writes the item indices of its batches to RESULT.<rank>.json.
"""

import json
import sys

import torch
from torch.utils.data import DataLoader, Dataset

from zfnet.data import load_dataset
from zfnet.train import distributed as ddp


class Recorder(Dataset):
    """Stands in for the trainer's `SeededSamples`: a batch of items is their indices, and
    each item's bytes must have been handed over by the stream (`images.pending`), equal to
    what the index points at."""

    def __init__(self, images) -> None:
        self.dataset = images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> list[int]:
        for i in indices:
            assert self.dataset.pending[i] == self.dataset.read(i), i
        return list(indices)


def batches_of(stream, workers: int) -> list[list[int]]:
    """The stream's batches through a DataLoader with `workers` worker processes."""
    loader = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=list)
    return [list(b) for b in loader]


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, result = sys.argv[1], sys.argv[2]
    info = ddp.setup("cpu")
    train = load_dataset(f"shards:{out}?size=32").train
    stream = train.epoch_stream(Recorder(train), epoch=1, seed=0, batch_size=4, rank=info.rank,
                                world_size=info.world_size)
    batches = batches_of(stream, workers=2)
    with open(f"{result}.{info.rank}.json", "w") as f:
        json.dump({"rank": info.rank, "world_size": info.world_size, "batches": batches,
                   "len": len(stream)}, f)
    ddp.teardown(info)
