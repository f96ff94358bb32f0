"""zfnet.data.picks: the images an analysis shows, broken files passed over."""

import pytest

from zfnet.data.picks import first_item, pick_items


class Items(list):
    """A dataset of (x, label) items, None for a broken file; counts its reads."""

    def __init__(self, labels: list[int], broken: set[int]) -> None:
        super().__init__(None if i in broken else (f"x{i}", y) for i, y in enumerate(labels))
        self.targets, self.reads = labels, []

    def __getitem__(self, i):
        self.reads.append(i)
        return super().__getitem__(i)


def test_the_first_readable_items_in_order() -> None:
    ds = Items([0, 0, 1, 1, 2], broken={0, 3})
    assert pick_items(ds, 2) == [(1, ("x1", 0)), (2, ("x2", 1))]
    assert ds.reads == [0, 1, 2]  # no further than needed
    assert [i for i, _ in pick_items(ds, 9)] == [1, 2, 4]
    assert pick_items(ds, 0) == []


def test_one_per_class_first_then_the_next_ones() -> None:
    ds = Items([0, 0, 1, 1, 2, 2], broken={0, 4})
    # class 0's first is broken: its second stands for it; class 2's second for its first
    assert [i for i, _ in pick_items(ds, 3, one_per_class=True)] == [1, 2, 5]
    assert len(ds.reads) == len(set(ds.reads))  # each item read once
    assert [i for i, _ in pick_items(ds, 5, one_per_class=True)] == [1, 2, 5, 3]
    unlabelled = Items([-1] * 4, broken={1})  # one "class": the next ones fill up
    assert [i for i, _ in pick_items(unlabelled, 3, one_per_class=True)] == [0, 2, 3]
    del unlabelled.targets  # labels read from the items themselves
    assert [i for i, _ in pick_items(unlabelled, 3, one_per_class=True)] == [0, 2, 3]
    assert [i for i, _ in pick_items(ds, 2, among=[5, 3, 1])] == [5, 3]


def test_first_item_says_when_every_file_is_broken() -> None:
    assert first_item(Items([0, 1], broken={0})) == (1, ("x1", 1))
    with pytest.raises(ValueError, match="none of the val split can be read .2 file"):
        first_item(Items([0, 1], broken={0, 1}), "the val split")


def test_file_names_are_paths_under_the_shared_folder(tmp_path) -> None:
    """Two cameras' IMG_0001.jpg in one recursive folder are told apart by their subfolder;
    a lone file is its own name; a Subset names its base dataset's files."""
    import torch
    from torch.utils.data import Subset

    from zfnet.data.imagefolder import FolderImages
    from zfnet.data.picks import file_name

    def ds(paths):
        return FolderImages(paths, [0] * len(paths), mode="centre", classes=[],
                            mean=torch.zeros(3, 8, 8), input_size=8)

    two = ds([tmp_path / "a" / "IMG_0001.jpg", tmp_path / "b" / "x" / "IMG_0001.jpg"])
    assert [file_name(two, i) for i in range(2)] == ["a/IMG_0001.jpg", "b/x/IMG_0001.jpg"]
    assert file_name(Subset(two, [1]), 0) == "b/x/IMG_0001.jpg"
    assert file_name(ds([tmp_path / "a" / "one.png"]), 0) == "one.png"
