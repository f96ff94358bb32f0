"""Preprocessing: a model's inputs from any image, equal to torchvision's own transforms; back to
pixels; datasets loaded for a model."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image

from zfnet.data import Preprocessing, load_dataset, load_rgb
from zfnet.data.fashion_mnist import DEFAULT_DIR as FMNIST_DIR
from zfnet.data.transforms import centre_crop
from zfnet.sources import torchvision_preprocessing

WEIGHTS = [torchvision.models.ResNet18_Weights.IMAGENET1K_V1,  # bilinear 256/224
           torchvision.models.ResNet50_Weights.IMAGENET1K_V2,  # bilinear 232/224
           torchvision.models.Inception_V3_Weights.IMAGENET1K_V1,  # bilinear 342/299
           torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1]  # bicubic 256/224
TINY = "synthetic?n_train=6&n_val=4&size=32"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A real photograph, not square (301 x 450), as a PNG file."""
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()[:301, :450]).save(path)
    return path


@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda w: str(w).split("_Weights")[0])
def test_to_input_equals_torchvision_transforms(photo, weights):
    """`to_input` of a file vs torchvision's `weights.transforms()` of the same file opened with
    PIL (how torchvision evaluates its weights): the same resize, crop and normalisation; the
    resampling differs (PIL's vs torchvision's antialiased tensor resize) by at most one grey
    level per pixel, 0.01 level on average."""
    prep = torchvision_preprocessing(weights)
    ours = prep.to_input(load_rgb(photo))  # (3, S, S)
    theirs = weights.transforms()(Image.open(photo).convert("RGB"))
    assert ours.shape == theirs.shape == (3, prep.crop, prep.crop)
    levels = (ours - theirs).abs() * prep.std_tensor()  # in 0..255 pixel levels
    assert levels.max() <= 1 + 1e-3, levels.max()
    assert levels.mean() < 0.01, levels.mean()


def test_preprocessing_from_weights_metadata():
    p = torchvision_preprocessing(torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
    assert (p.resize, p.crop, p.interpolation) == (232, 224, "bilinear")
    assert p.mean == pytest.approx((123.675, 116.28, 103.53))
    assert p.std == pytest.approx((58.395, 57.12, 57.375))
    p = torchvision_preprocessing(torchvision.models.EfficientNet_B3_Weights.IMAGENET1K_V1)
    assert (p.resize, p.crop, p.interpolation) == (320, 300, "bicubic")
    assert Preprocessing.imagenet() == torchvision_preprocessing(WEIGHTS[0])


@pytest.mark.parametrize("hw", [(301, 450), (450, 301), (257, 400), (300, 300), (231, 236)])
@pytest.mark.parametrize("resize, crop", [(256, 224), (230, 224), (342, 299), (224, 224)])
def test_full_square_holds_the_centre_crop(hw, resize, crop):
    """Datasets cut their crops from `fit_full`'s square: its centre crop is exactly the
    resize-then-centre-crop of `fit` (torchvision's), whatever the rounding of the offsets."""
    gen = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=gen)
    p = Preprocessing.imagenet(crop=crop, resize=resize)
    full = p.fit_full(img)
    assert full.shape == (3, resize, resize)
    resized = torchvision.transforms.v2.functional.resize(img, [resize], antialias=True)
    expected = torchvision.transforms.v2.functional.center_crop(resized, [crop, crop])
    assert torch.equal(centre_crop(full, crop), expected)
    assert torch.equal(p.fit(img), expected)


def test_round_trip_and_pixel_scale():
    img = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(1))
    for p in (Preprocessing.imagenet(crop=32),
              Preprocessing.from_mean_image(torch.rand(3, 36, 36) * 255, crop=32)):
        x = p.to_input(img)
        assert torch.equal(p.to_pixels(x), p.fit(img))  # the inverse, exactly
        # A change d in pixels is d / std in model input; pixel_scale turns it back.
        d = torch.zeros(3, 32, 32)
        d[:, 5, 7] = torch.tensor([10.0, -20.0, 30.0])
        dx = p.normalize(p.fit(img).float() + d) - p.normalize(p.fit(img).float())
        torch.testing.assert_close(dx * p.pixel_scale()[:, None, None], d, atol=1e-4, rtol=0)
    assert torch.equal(Preprocessing.imagenet().pixel_scale(),
                       torch.tensor([58.395, 57.12, 57.375]))
    mean_image = Preprocessing.from_mean_image(torch.zeros(1, 32, 32), crop=28)
    assert torch.equal(mean_image.pixel_scale(), torch.ones(1))  # zfnet: std 1
    assert mean_image.to_dict() == {"resize": 32, "crop": 28, "mean": [0.0], "std": [1.0],
                                    "in_channels": 1, "mean_image": True,
                                    "interpolation": "bilinear"}
    assert mean_image.describe() == "resize 32, crop 28, mean the mean image, std 1 (0..255 units)"
    # one number of decimals per list: 4 significant digits in its largest value
    assert Preprocessing.imagenet().describe() == (
        "resize 256, crop 224, mean 123.7,116.3,103.5, std 58.40,57.12,57.38 (0..255 units)")
    assert Preprocessing(8, 8, (127.5,) * 3, (0.5, 63.75, 1.0)).describe().endswith(
        "mean 127.5,127.5,127.5, std 0.50,63.75,1.00 (0..255 units)")


def test_channels_adapted():
    grey = torch.arange(60, dtype=torch.uint8).reshape(1, 6, 10)
    rgb = Preprocessing.imagenet(crop=6, resize=6).fit(grey)
    assert rgb.shape == (3, 6, 6) and torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    one = Preprocessing(6, 6, (0.0,), (1.0,), in_channels=1)
    colour = torch.zeros(3, 6, 6, dtype=torch.uint8)
    colour[0] = 100  # pure red -> luma 0.299 * 100
    assert one.fit(colour).shape == (1, 6, 6) and int(one.fit(colour)[0, 0, 0]) == 30
    with pytest.raises(ValueError, match="2-channel"):
        Preprocessing.imagenet().fit(torch.zeros(2, 8, 8, dtype=torch.uint8))


def test_checks_and_overrides():
    with pytest.raises(ValueError, match="resize 200 is smaller than crop 224"):
        Preprocessing(200, 224, (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(ValueError, match="mean has 2 value"):
        Preprocessing(256, 224, (0.0, 0.0), (1.0,) * 3)
    with pytest.raises(ValueError, match="std .* must be > 0"):
        Preprocessing(256, 224, (0.0,) * 3, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="mean image of shape"):
        Preprocessing(256, 224, (0.0,) * 3, (1.0,) * 3, mean_image=torch.zeros(3, 10, 10))
    p = Preprocessing.imagenet()
    assert (p.with_overrides(crop=112).resize, p.with_overrides(crop=112).crop) == (128, 112)
    assert p.with_overrides(mean=[127.5]).mean == (127.5,) * 3  # one value: every channel
    with pytest.raises(ValueError, match="mean has 2 values but the model takes 3"):
        p.with_overrides(mean=[1.0, 2.0])
    with pytest.raises(ValueError, match="resize 100 is smaller than crop 224"):
        p.with_overrides(resize=100)
    zf = Preprocessing.from_mean_image(torch.full((3, 36, 36), 50.0), crop=32)
    assert zf.with_overrides(std=[2.0]).mean_image is not None  # std alone keeps the image
    assert zf.with_overrides(mean=[0.0]).mean_image is None  # a new mean replaces it


def test_default_datasets_unchanged():
    """No preprocessing: the paper's convention, as before; `input_preprocessing` describes it
    (its normalize of the raw crop is the item)."""
    data = load_dataset(TINY)
    assert data.preprocessing is None and data.val.std is None
    x, _ = data.val[0]
    torch.testing.assert_close(data.input_preprocessing.normalize(data.raw_val(0)), x)


def test_synthetic_for_a_model():
    """A torchvision-like model's inputs from the 32 px synthetic images: fitted to 56/48, the
    item is `to_input` of the dataset's own image, masks follow."""
    own = load_dataset(TINY)
    p = Preprocessing.imagenet(crop=48)
    data = load_dataset(TINY, preprocessing=p)
    assert (data.in_channels, data.input_size, data.full_size) == (3, 48, 55)
    assert data.preprocessing is p and data.input_preprocessing is p
    for i in range(len(data.val)):
        x, y = data.val[i]
        assert y == own.val.targets[i]
        torch.testing.assert_close(x, p.to_input(own.val.images[i]), atol=0, rtol=0)
        assert torch.equal(data.raw_val(i), p.fit(own.val.images[i]))
    x, _ = data.train[0]
    assert x.shape == (3, 48, 48)
    s = data.val.sample(0)
    assert s.mask.shape == (48, 48) and s.mask.sum() > 0
    for part in s.parts.values():
        assert part.shape == (48, 48) and not (part & ~s.mask).any()
    items = data.train.train_items([0, 1], [(0, 0, False), (3, 7, True)])
    assert [tuple(it[0].shape) for it in items] == [(3, 48, 48)] * 2
    ten = load_dataset(TINY, ten_crop=True, preprocessing=p).val[0][0]
    assert ten.shape == (10, 3, 48, 48)


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason=f"{FMNIST_DIR} missing")
def test_grey_dataset_for_an_rgb_model():
    p = Preprocessing.imagenet(crop=56)
    data = load_dataset("fashion-mnist?n_train=4&n_val=2", preprocessing=p)
    x, _ = data.val[0]
    assert x.shape == (3, 56, 56) and data.in_channels == 3
    raw = data.raw_val(0)
    assert torch.equal(raw[0], raw[1]) and torch.equal(raw[1], raw[2])


def test_imagefolder_for_a_model(tmp_path):
    """With a model's preprocessing no mean image is computed (nothing cached) and an item is
    `to_input` of its file; `size=` would be overruled, so it is refused."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(
                tmp_path / split / cls / "0.png")
    p = Preprocessing.imagenet(crop=24)
    data = load_dataset(f"imagefolder:{tmp_path}", preprocessing=p)
    assert not (tmp_path / ".zfnet-cache").exists()
    x, y = data.val[1]
    assert y == 1
    assert torch.equal(x, p.to_input(load_rgb(tmp_path / "val" / "b" / "0.png")))
    with pytest.raises(ValueError, match="size=16 .* --crop/--resize"):
        load_dataset(f"imagefolder:{tmp_path}?size=16", preprocessing=p)
