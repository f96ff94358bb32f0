"""Fashion-MNIST from the Debian package's IDX files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from zfnet.data import load_dataset
from zfnet.data.fashion_mnist import CLASS_NAMES, DEFAULT_DIR, read_idx

needs_data = pytest.mark.skipif(
    not DEFAULT_DIR.is_dir(),
    reason=f"{DEFAULT_DIR} missing: apt-get install dataset-fashion-mnist",
)


@needs_data
def test_loads_real_data():
    data = load_dataset("fashion-mnist?n_train=2000&n_val=500")
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert (data.in_channels, data.input_size, data.full_size, data.num_classes) == (1, 28, 32, 10)
    assert len(data.train) == 2000 and len(data.val) == 500
    assert data.mean.shape == (1, 32, 32)
    assert data.mean[:, :2].abs().max() == 0  # the 2-pixel zero padding stays zero on average
    x, y = data.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y < 10
    assert set(data.val.targets) == set(range(10))
    raw = data.raw_val(0)  # the centre 28 crop of the padded image is the original image
    assert raw.shape == (1, 28, 28) and raw.dtype == torch.uint8
    original = read_idx(DEFAULT_DIR / "t10k-images-idx3-ubyte.gz")[0]
    assert torch.equal(raw[0], torch.from_numpy(original.copy()))
    x10, _ = load_dataset("fashion-mnist?n_train=10&n_val=3", ten_crop=True).val[0]
    assert x10.shape == (10, 1, 28, 28)


@needs_data
def test_class_subset_and_per_class():
    data = load_dataset("fashion-mnist?classes=0,2,5&per_class=7&n_val=300")
    assert data.class_names == [CLASS_NAMES[0], CLASS_NAMES[2], CLASS_NAMES[5]]
    assert sorted(data.train.targets) == [0] * 7 + [1] * 7 + [2] * 7
    assert set(data.val.targets) <= {0, 1, 2}
    assert data.num_classes == 3


@needs_data
def test_pad_sets_the_shift_range():
    data = load_dataset("fashion-mnist?n_train=50&n_val=20&pad=4")
    assert data.full_size == 36 and data.mean.shape == (1, 36, 36)
    assert data.mean[:, :4].abs().max() == 0
    raw = data.raw_val(0)  # the centre crop is still the original image
    original = read_idx(DEFAULT_DIR / "t10k-images-idx3-ubyte.gz")[0]
    assert torch.equal(raw[0], torch.from_numpy(original.copy()))
    x10, _ = load_dataset("fashion-mnist?n_train=10&n_val=3&pad=0", ten_crop=True).val[0]
    assert x10.shape == (10, 1, 28, 28)  # pad 0: every crop is the image (or its mirror)
    assert torch.equal(x10[0], x10[4]) and torch.equal(x10[5], x10[0].flip(-1))
    with pytest.raises(ValueError, match="pad=15 must be <= 14"):
        load_dataset("fashion-mnist?n_train=10&n_val=3&pad=15")


@needs_data
def test_holdout_takes_val_from_the_end_of_the_training_set():
    data = load_dataset("fashion-mnist?holdout=500&n_train=300&n_val=200")
    assert len(data.train) == 300 and len(data.val) == 200
    train = read_idx(DEFAULT_DIR / "train-images-idx3-ubyte.gz")  # (60000, 28, 28)
    labels = read_idx(DEFAULT_DIR / "train-labels-idx1-ubyte.gz")
    assert torch.equal(data.raw_val(0)[0], torch.from_numpy(train[-500].copy()))
    assert data.val.targets[:5] == labels[-500:-495].tolist()
    assert torch.equal(data.train.raw(0)[0], torch.from_numpy(train[0].copy()))
    whole = load_dataset("fashion-mnist?holdout=10000")
    assert (len(whole.train), len(whole.val)) == (50000, 10000)
    # the mean image is over the images trained on, not the held-out ones
    expected = torch.from_numpy(train[:50000].astype(np.float64).mean(0)).float()
    assert torch.allclose(whole.mean[0, 2:-2, 2:-2], expected, atol=1e-4)
    with pytest.raises(ValueError, match="holdout=21 must be below the 21 training images"):
        load_dataset("fashion-mnist?classes=0,1,2&per_class=7&holdout=21")


def test_missing_directory_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="lacks .*t10k-images"):
        load_dataset(f"fashion-mnist:{tmp_path}")


def test_read_idx_hand_made(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x.gz"
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2, 3, 4))
    with gzip.open(path, "wb") as f:
        f.write(header + images.tobytes())
    assert np.array_equal(read_idx(path), images)
    with gzip.open(path, "wb") as f:
        f.write(header + images.tobytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(path)


def test_damaged_gz_is_an_error_naming_the_file(tmp_path):
    """One file holds a whole split: a damaged one cannot be skipped like a broken image."""
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write((2049).to_bytes(4, "big") + (1000).to_bytes(4, "big") + bytes(1000))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # truncated
    with pytest.raises(ValueError, match=f"{path} is damaged: not a readable .gz file"):
        read_idx(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=f"{path} is damaged"):
        read_idx(path)
