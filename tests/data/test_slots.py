"""zfnet.data.slots: a worker stacks its batches' images into slots of shared memory it keeps,
sends a slot's memory once, fills a slot again only once the training process has released
it, and falls back to new shared memory where all its slots are in use; BatchInputs releases
every slot it reads, also after an error, and a loader's batches are the same either way."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from zfnet.data import slots as slots_mod
from zfnet.data.batches import BatchInputs, DeviceBatches, PixelBatch, collate_pixels
from zfnet.data.slots import MAX_SLOTS, Parcel, Slots, stack


@pytest.fixture
def in_a_worker(monkeypatch):
    """`stack` as a DataLoader worker's: a process of its own (new slots)."""
    monkeypatch.setattr(slots_mod, "get_worker_info", lambda: object())
    monkeypatch.setattr(slots_mod, "_worker", None)


def _images(n: int, value: int, side: int = 4) -> list[torch.Tensor]:
    return [torch.full((side, side, 3), value + k, dtype=torch.uint8) for k in range(n)]


def test_a_slot_is_sent_once_and_filled_again_only_after_its_release(in_a_worker) -> None:
    rx = Slots()
    first = stack(_images(3, 10))
    assert isinstance(first, Parcel) and first.memory is not None and first.memory.is_shared()
    assert torch.equal(rx.open(first), torch.stack(_images(3, 10)))
    # not released: the next batch goes to a second slot, and the first keeps its images
    second = stack(_images(3, 50))
    assert second.slot != first.slot and second.memory is not None
    assert torch.equal(rx.open(first), torch.stack(_images(3, 10)))
    rx.release(first)
    third = stack(_images(2, 90))  # the first slot again, without its memory
    assert (third.slot, third.memory, len(third)) == (first.slot, None, 2)
    assert torch.equal(rx.open(third), torch.stack(_images(2, 90)))
    assert torch.equal(rx.open(second), torch.stack(_images(3, 50)))
    rx.release(third)
    bigger = stack(_images(5, 0, side=6))  # larger than the slot: a new one, sent again
    assert bigger.slot == first.slot and bigger.memory is not None
    assert torch.equal(rx.open(bigger), torch.stack(_images(5, 0, side=6)))
    assert Parcel(bigger.pid, bigger.slot, bigger.shape).pin_memory().memory is None  # as is


def test_a_worker_whose_slots_are_all_in_use_hands_new_memory_over(in_a_worker) -> None:
    parcels = [stack(_images(2, k)) for k in range(MAX_SLOTS)]
    assert len({p.slot for p in parcels}) == MAX_SLOTS
    fallback = stack(_images(2, 200))  # never waits for the training process
    assert isinstance(fallback, torch.Tensor)  # (default_collate's, in shared memory)
    assert torch.equal(fallback, torch.stack(_images(2, 200)))
    rx = Slots()
    for k, p in enumerate(parcels):
        assert torch.equal(rx.open(p), torch.stack(_images(2, k)))


def test_outside_a_worker_images_are_stacked_as_default_collate_does() -> None:
    out = stack(_images(2, 7))
    assert isinstance(out, torch.Tensor) and torch.equal(out, torch.stack(_images(2, 7)))


def test_an_unknown_slot_is_an_error(in_a_worker) -> None:
    stack(_images(1, 0))
    later = stack(_images(1, 0))
    later.memory = None  # as if its memory had gone to another pass over the loader
    with pytest.raises(RuntimeError, match="was not sent to this pass"):
        Slots().open(later)


class _Windows(Dataset):
    """"pixels" items of 8 px windows, a value of each index."""

    form, mode, strict = "pixels", "train", False
    input_size = full_size = 8
    mean = torch.zeros(3, 8, 8)
    std = None

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        return torch.full((8, 8, 3), i, dtype=torch.uint8), i % 3, (0, 0, i % 2)

    def item_name(self, i: int) -> str:
        return str(i)


def _made(workers: int, threads: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = _Windows()
    loader = DataLoader(data, batch_size=6, num_workers=workers, collate_fn=collate_pixels,
                        multiprocessing_context="fork" if workers else None)
    return list(DeviceBatches(loader, BatchInputs(data, "cpu"), prefetch=2 * threads,
                              threads=threads))


def test_a_loaders_batches_are_the_same_from_slots_and_they_are_released(monkeypatch) -> None:
    want = _made(0)
    released: list[Parcel] = []
    release = Slots.release

    def counted(self, parcel):
        released.append(parcel)
        release(self, parcel)

    monkeypatch.setattr(Slots, "release", counted)
    for workers, threads in ((2, 0), (1, 2)):
        released.clear()
        got = _made(workers, threads)
        assert len(got) == len(want) == 7
        for (x, y), (wx, wy) in zip(got, want, strict=True):
            assert torch.equal(x, wx) and torch.equal(y, wy)
        assert len(released) == 7  # every batch came in a slot, and each was released
        # a worker's slots: the DataLoader's 2 batches ahead, the one being read, the threads'
        used = {(p.pid, p.slot) for p in released}
        assert len(used) < 7 and len(used) <= workers * (2 + 1 + threads)  # and reused


def test_a_slot_is_released_when_making_its_batch_fails(in_a_worker, monkeypatch) -> None:
    data = _Windows()
    inputs = BatchInputs(data, "cpu")
    parcel = stack([data[k][0] for k in range(3)])
    batch = PixelBatch(parcel, torch.zeros(3, dtype=torch.long), torch.zeros(3, 3,
                                                                            dtype=torch.long))

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(inputs, "finish", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        inputs(batch)
    assert int(parcel.memory[0]) == 0  # free for the worker again


def test_a_pass_lets_its_slots_go_at_its_end() -> None:
    data = _Windows()
    inputs = BatchInputs(data, "cpu")
    loader = DataLoader(data, batch_size=6, num_workers=1, collate_fn=collate_pixels,
                        multiprocessing_context="fork")
    held = []
    for _ in DeviceBatches(loader, inputs):
        held.append(len(inputs.slots._memory))
    assert min(held) >= 1 and not inputs.slots._memory  # (their shared memory freed)
