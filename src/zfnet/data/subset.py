"""Subsets for quick runs and few-shot analyses: `classes=`, `per_class=`, `n_train=`/`n_val=`."""

from __future__ import annotations

from collections.abc import Sequence


def select(
    targets: Sequence[int],
    *,
    classes: Sequence[int] | None = None,
    per_class: int | None = None,
    first: int | None = None,
    round_robin: bool = False,
) -> tuple[list[int], list[int]]:
    """Pick items of a labelled list; returns (indices into `targets`, new labels).

    - `classes`: keep only these original labels, relabelled 0..k-1 in the order given;
    - `per_class`: then keep the first N items of each kept class;
    - `first`: then keep the first N items. With `round_robin`, "first" walks the classes in
      turn (1st of each class, 2nd of each class, ...), for datasets stored class by class.
    Order is otherwise the dataset's own, so the result is deterministic.
    """
    relabel = (
        {c: k for k, c in enumerate(classes)} if classes is not None else None
    )
    picked: list[int] = []
    seen: dict[int, int] = {}
    for i, t in enumerate(targets):
        if relabel is not None and t not in relabel:
            continue
        if per_class is not None:
            if seen.get(t, 0) >= per_class:
                continue
            seen[t] = seen.get(t, 0) + 1
        picked.append(i)
    if round_robin:
        rank: dict[int, int] = {}
        keyed = []
        for i in picked:
            r = rank.get(targets[i], 0)
            rank[targets[i]] = r + 1
            keyed.append((r, targets[i], i))
        picked = [i for _, _, i in sorted(keyed)]
    if first is not None:
        picked = picked[:first]
    labels = [relabel[targets[i]] if relabel is not None else int(targets[i]) for i in picked]
    return picked, labels
