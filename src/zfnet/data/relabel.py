"""`random_labels=SEED`, an option of every labelled dataset's spec: the training split's labels
permuted, for the data randomisation test of Adebayo et al. ("Sanity Checks for Saliency Maps",
NeurIPS 2018; `zfnet analyze randomization --mode labels`).

The labels are shuffled among the training images, so that each class keeps its number of
images and no image keeps a reason for its label: a model can only memorise them. The val
split keeps its true labels (a model trained on random labels scores chance there). The
permutation depends on the seed and the number of training images only, so every process of a
torchrun run, and every reload of the run, sees the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from zfnet.data.bundle import DataBundle

OPTION = "random_labels"


def permuted(targets: Sequence[int], seed: int) -> list[int]:
    """`targets` in the order of a random permutation drawn from `seed`."""
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    return [int(targets[i]) for i in order.tolist()]


def with_random_labels(bundle: DataBundle, seed: int, spec: str) -> DataBundle:
    """`bundle` with its training labels permuted from `seed`, named `spec` (its training split
    a shallow copy: the images, the val split and the mean image are shared); a split without
    labels (-1, `images:DIR`) is refused, naming the spec."""
    train = bundle.train
    if any(t < 0 for t in train.targets):
        raise ValueError(f"option {OPTION} in dataset spec {spec!r} needs labelled images; "
                         "this dataset has none (use imagefolder:DIR, fashion-mnist, synthetic "
                         "or shards:OUT)")
    return replace(bundle, spec=spec, train=train.with_targets(permuted(train.targets, seed)))
