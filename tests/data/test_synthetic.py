"""The built-in synthetic dataset: determinism, masks and parts, balance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zfnet.data import SyntheticSample, load_dataset
from zfnet.data.synthetic import CLASS_NAMES, PARTS


@pytest.fixture(scope="module")
def small():
    return load_dataset("synthetic?n_train=60&n_val=40")


def test_bundle_fields(small):
    assert small.num_classes == 10 and small.class_names == CLASS_NAMES
    assert (small.in_channels, small.input_size, small.full_size) == (3, 64, 72)
    assert small.mean.shape == (3, 72, 72)
    x, y = small.train[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    # the paper's pixel convention: 0..255 minus the mean, no /255
    assert 20 < x.std() < 120
    assert small.raw_val(0).dtype == torch.uint8


def test_deterministic_and_seeded(small):
    again = load_dataset("synthetic?n_train=60&n_val=40")
    assert torch.equal(again.train.images, small.train.images)
    assert torch.equal(again.val.images, small.val.images)
    other = load_dataset("synthetic?n_train=60&n_val=40&seed=1")
    assert not torch.equal(other.train.images, small.train.images)
    # train and val are different draws
    assert not torch.equal(small.train.images[:40], small.val.images)
    # a sample depends on (seed, split, index) only, not on how many are drawn
    fewer = load_dataset("synthetic?n_train=10&n_val=5")
    assert torch.equal(fewer.train.images, small.train.images[:10])


def test_balanced(small):
    counts = np.bincount(small.train.targets, minlength=10)
    assert counts.tolist() == [6] * 10
    assert np.bincount(small.val.targets, minlength=10).tolist() == [4] * 10


def test_masks_and_parts(small):
    for i in range(20):
        s = small.val.sample(i)
        assert isinstance(s, SyntheticSample)
        assert s.label == small.val.targets[i] and s.class_name == CLASS_NAMES[s.label]
        assert torch.equal(s.image, small.raw_val(i))
        assert s.mask.shape == (64, 64) and s.mask.dtype == bool
        # the object is visible and lies inside the crop, away from the border
        assert s.mask.sum() > 50
        assert not (s.mask[0].any() or s.mask[-1].any() or s.mask[:, 0].any()
                    or s.mask[:, -1].any())
        assert list(s.parts) == PARTS[s.class_name]
        for name, part in s.parts.items():
            assert part.shape == (64, 64) and part.any(), (s.class_name, name)
            assert not (part & ~s.mask).any()
        assert np.array_equal(np.logical_or.reduce(list(s.parts.values())), s.mask)


def test_object_pixels_differ_from_background(small):
    # masks are aligned with the image: the object's colour differs from its surroundings
    s = small.val.sample(0)  # a face
    img = s.image.float().numpy()
    inside = img[:, s.mask].mean(1)
    ring = np.zeros_like(s.mask)
    ys, xs = np.nonzero(s.mask)
    ring[max(ys.min() - 3, 0) : ys.max() + 4, max(xs.min() - 3, 0) : xs.max() + 4] = True
    outside = img[:, ring & ~s.mask].mean(1)
    assert np.linalg.norm(inside - outside) > 30


def test_face_parts_are_where_they_belong(small):
    s = next(small.val.sample(i) for i in range(40) if small.val.targets[i] == 0)
    assert s.class_name == "face"
    col = lambda m: np.nonzero(m)[1].mean()
    row = lambda m: np.nonzero(m)[0].mean()
    assert col(s.parts["eye_left"]) < col(s.parts["eye_right"])
    assert row(s.parts["mouth"]) > row(s.parts["eye_left"])


def test_options():
    d = load_dataset("synthetic?classes=face,car&per_class=3&n_val=4&size=32")
    assert d.class_names == ["face", "car"] and d.num_classes == 2
    assert len(d.train) == 6 and sorted(d.train.targets) == [0, 0, 0, 1, 1, 1]
    assert (d.input_size, d.full_size) == (32, 36)
    assert d.val.sample(1).class_name == "car"
    x10, _ = load_dataset("synthetic?n_train=2&n_val=2", ten_crop=True).val[0]
    assert x10.shape == (10, 3, 64, 64)


def test_a_synthetic_set_too_large_to_hold_is_refused_before_it_is_drawn() -> None:
    """`analyze transfer --shots 100000` asked synthetic for a million images (15 GiB) and
    drew them for minutes, saying nothing, until memory ran out."""
    with pytest.raises(ValueError, match=r"asks for 1001000 images of 72 px, 14\.5 GiB held in "
                                         r"memory \(at most 8 GiB\): ask for fewer"):
        load_dataset("synthetic?per_class=100000")


def test_a_command_reading_the_val_split_alone_draws_no_training_image() -> None:
    """read_train=False with a model's preprocessing (its mean, not the training images'):
    `zfnet project synthetic?n_val=4` drew the default 6000 training images first (4 s)."""
    from zfnet.data.preprocess import Preprocessing

    p = Preprocessing.imagenet(resize=72, crop=64)
    alone = load_dataset("synthetic?n_train=20&n_val=4", preprocessing=p, read_train=False)
    both = load_dataset("synthetic?n_train=20&n_val=4", preprocessing=p)
    assert len(alone.train) == 0 and len(both.train) == 20 and len(alone.val) == 4
    assert torch.equal(alone.mean, both.mean)
    for i in range(4):
        assert torch.equal(alone.val[i][0], both.val[i][0])
    # without a model's preprocessing the mean is the training images': they are drawn
    assert len(load_dataset("synthetic?n_train=20&n_val=4", read_train=False).train) == 20
