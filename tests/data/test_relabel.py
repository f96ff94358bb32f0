"""`random_labels=SEED`: the training labels permuted in every labelled dataset, the val labels
kept (Adebayo et al.'s data randomisation test)."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from zfnet.data import collate, load_dataset
from zfnet.data.relabel import permuted
from zfnet.data.shard_writer import write_shards

SPEC = "synthetic?n_train=200&n_val=40&size=32"


def test_training_labels_are_permuted_and_val_labels_kept() -> None:
    true = load_dataset(SPEC)
    shuffled = load_dataset(f"{SPEC}&random_labels=0")
    assert shuffled.spec == f"{SPEC}&random_labels=0"  # the run's config.json says so
    assert Counter(shuffled.train.targets) == Counter(true.train.targets)  # class sizes kept
    kept = sum(a == b for a, b in zip(true.train.targets, shuffled.train.targets, strict=True))
    assert kept < 0.25 * len(true.train.targets)  # ~1 in 10 classes by chance
    assert shuffled.val.targets == true.val.targets
    assert torch.equal(shuffled.mean, true.mean)
    # the same images: item i's pixels are the true dataset's item i, only its label moved
    assert torch.equal(shuffled.train.raw(7), true.train.raw(7))
    # the items carry the permuted labels in every form a loader takes
    x, y = next(iter(DataLoader(shuffled.train, batch_size=200, collate_fn=collate)))
    assert y.tolist() == shuffled.train.targets
    assert [shuffled.train.with_mode("centre")[i][1] for i in range(5)] == \
        shuffled.train.targets[:5]
    # the same permutation on every load (every torchrun process), another for another seed
    assert load_dataset(f"{SPEC}&random_labels=0").train.targets == shuffled.train.targets
    assert load_dataset(f"{SPEC}&random_labels=1").train.targets != shuffled.train.targets


def test_permuted_is_a_permutation() -> None:
    targets = [0, 0, 1, 2, 2, 2]
    out = permuted(targets, 3)
    assert sorted(out) == sorted(targets) and out == permuted(targets, 3)


def _folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("ant", "bee", "cat"):
            for k in range(n):
                path = root / split / cls / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)).save(path)


def test_folders_and_shards_take_it_too(tmp_path) -> None:
    _folder(tmp_path / "f")
    write_shards(f"imagefolder:{tmp_path / 'f'}", tmp_path / "s", resize=18)
    for spec in (f"imagefolder:{tmp_path / 'f'}?size=16", f"shards:{tmp_path / 's'}?size=16"):
        true, shuffled = load_dataset(spec), load_dataset(f"{spec}&random_labels=5")
        assert Counter(shuffled.train.targets) == Counter(true.train.targets)
        assert shuffled.train.targets != true.train.targets
        assert shuffled.train.targets == permuted(true.train.targets, 5)
        assert shuffled.val.targets == true.val.targets


@pytest.mark.parametrize(("spec", "message"), [
    (f"{SPEC}&random_labels=yes", "option random_labels='yes' must be an integer"),
    (f"{SPEC}&random_labels=-1", "option random_labels=-1 must be >= 0"),
    (f"{SPEC}&shuffled=1",
     "valid: classes, n_train, n_val, per_class, random_labels, seed, size, words"),
])
def test_bad_values_are_named(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(spec)


def test_images_without_labels_are_refused(tmp_path) -> None:
    (tmp_path / "a.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="random_labels .* needs labelled images"):
        load_dataset(f"images:{tmp_path}?random_labels=0")
