"""Which images of a dataset an analysis shows: the first ones that can be read, one per class
first where it asks for variety. Broken files are skipped as everywhere else (a
`BrokenImageWarning` naming each, or `BadImageError` with `strict`), never handed on as None."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Subset

from zfnet.data.transforms import CropDataset


def pick_items(ds: Sequence[Any], n: int, *, one_per_class: bool = False,
               among: Iterable[int] | None = None,
               passed: list[int] | None = None) -> list[tuple[int, Any]]:
    """Up to `n` readable items of `ds` as (index, item), in index order (or `among`'s); with
    `one_per_class`, the first readable item of each class first (while classes last), then
    the next readable ones in order. Items are read once each, and only as far as needed: a
    broken file (an item of None) is passed over for the next one (its index appended to
    `passed`, where given)."""
    order = range(len(ds)) if among is None else list(among)  # (a range: no list of all)
    read: dict[int, Any] = {}

    def item(i: int) -> Any:
        if i not in read:
            read[i] = ds[i]
        return read[i]

    picked: list[int] = []
    if one_per_class:
        targets = getattr(ds, "targets", None)
        seen: set[int] = set()
        for i in order:
            if len(picked) == n:
                break
            if targets is None:
                label = None if item(i) is None else int(item(i)[1])
            else:
                label = int(targets[i])
            if label is not None and label not in seen and item(i) is not None:
                picked.append(i)
                seen.add(label)
    taken = set(picked)
    for i in order:
        if len(picked) == n:
            break
        if i not in taken and item(i) is not None:
            picked.append(i)
    if passed is not None:
        passed.extend(i for i, got in read.items() if got is None)
    return [(i, read[i]) for i in picked]


def first_item(ds: Sequence[Any], what: str = "the dataset") -> tuple[int, Any]:
    """The first readable item of `ds` as (index, item); ValueError naming `what` when every
    file is broken (or there is none)."""
    got = pick_items(ds, 1)
    if not got:
        raise ValueError(f"none of {what} can be read ({len(ds)} file(s), each broken)")
    return got[0]


def file_name(ds: Any, i: int) -> str | None:
    """The file name of item i of `ds` (a dataset of files, or a `Subset` of one) to show it
    by: its path under the folder all items share where the dataset knows it (`short_name`);
    None where its items are not files (`CropDataset.item_name` not overridden)."""
    base, j = (ds.dataset, ds.indices[i]) if isinstance(ds, Subset) else (ds, i)
    if hasattr(base, "short_name"):
        return str(base.short_name(j))
    own = getattr(type(base), "item_name", None)
    if own is None or own is CropDataset.item_name:
        return None
    return Path(str(base.item_name(j))).name


def item_paths(ds: Any) -> list[Path] | None:
    """The file of each item of `ds` (a dataset of files, or a `Subset` of one), in item
    order; None where its items are not files."""
    base, idx = (ds.dataset, ds.indices) if isinstance(ds, Subset) else (ds, None)
    paths = getattr(base, "paths", None)
    if paths is None:
        return None
    return list(paths) if idx is None else [paths[j] for j in idx]
