"""The built-in photos: `load_photos` (the invariance analysis's) and the dataset
`sample-photos` (the 6 of them as files in zfnet's cache, written once, all or none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zfnet.data import Preprocessing, load_dataset, load_images
from zfnet.data.photos import PHOTOS, _array, photos_folder


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "zfnet" / "photos"


def test_photos_is_the_six_photos_as_files_written_once(cache) -> None:
    data = load_dataset("sample-photos", preprocessing=Preprocessing.imagenet(crop=32))
    assert sorted(p.name for p in cache.glob("*.png")) == sorted(f"{n}.png" for n in PHOTOS)
    for name in PHOTOS:  # lossless: the pixels scikit-image and scikit-learn ship
        assert np.array_equal(np.asarray(Image.open(cache / f"{name}.png")), _array(name))
    assert (len(data.train), len(data.val), data.num_classes) == (6, 6, 0)
    assert data.spec == "sample-photos"
    x, y = data.val[0]
    assert x.shape == (3, 32, 32) and y == -1
    assert data.val.paths[0].name == "astronaut.png"  # the names the explorer shows
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert photos_folder() == cache and {p.name: p.stat().st_mtime_ns
                                         for p in cache.iterdir()} == before  # not rewritten
    # a photo lost (a cache cleaned by hand) is written again, the folder kept
    (cache / "rocket.png").unlink()
    assert len(load_dataset("sample-photos?n=2").val) == 2 and (cache / "rocket.png").is_file()
    assert not list(cache.parent.glob(".photos.tmp-*"))  # nothing left beside it


def test_photos_without_a_model_takes_the_papers_convention_and_options(cache) -> None:
    data = load_dataset("sample-photos?size=48&n=3")
    assert len(data.val) == 3 and data.input_size == 48 and data.val[1][0].shape == (3, 48, 48)
    # through load_images (zfnet project/predict sample-photos)
    items = load_images("sample-photos", Preprocessing.imagenet(crop=24))
    assert len(items) == 6 and torch.isfinite(items[5][0]).all()


@pytest.mark.parametrize(("spec", "message"), [
    ("sample-photos:my_dir", r"sample-photos takes no path \(got sample-photos:my_dir\).*a "
                             r"folder of your own is images:my_dir"),
    ("sample-photos?zz=1", r"unknown option\(s\) zz for dataset 'sample-photos'; valid: n, "
                           r"size"),
])
def test_photos_bad_specs(cache, spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(spec)
    with pytest.raises(ValueError, match="option size=40 in dataset spec "
                                         "'sample-photos[?]size=40' does not apply: the "
                                         "model's preprocessing sets"):
        load_dataset("sample-photos?size=40", preprocessing=Preprocessing.imagenet(crop=32))
    assert not cache.exists()  # checked before anything is written



def test_a_size_that_is_the_models_own_crop_is_taken(cache) -> None:
    """`--model zfnet_small --weights FILE --data "DIR?size=64"`: the size it says is the model's
    crop, so nothing is overruled (it was refused as if it differed)."""
    b = load_dataset("sample-photos?size=32", preprocessing=Preprocessing.imagenet(crop=32))
    assert b.val[0][0].shape[-1] == 32

