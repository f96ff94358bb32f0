"""Fashion-MNIST from its four IDX `.gz` files, in the paper's crop convention.

The 28x28 images are zero-padded by 2 on each side to `full_size` 32 (as 224 is cropped
from 256): training takes random 28 crops with horizontal flips, evaluation the centre 28
crop (= the original image) or the 10 crops. `val` is the 10k test set. `pad=P` pads by P
instead (random shifts of up to P pixels; the 10 crops' corners move by P too).
`holdout=N` makes `val` the last N training images instead of the test set (and trains on
the rest): a validation split for choosing settings without looking at the test set.
Spec: `fashion-mnist[:DIR][?n_train=N&n_val=N&classes=0,2,5&per_class=N&pad=P&holdout=N]`.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from zfnet.data.bundle import DataBundle, bundle_geometry, fitted
from zfnet.data.preprocess import Preprocessing
from zfnet.data.spec import DatasetSpec, check_options, class_list_option, int_option
from zfnet.data.subset import select
from zfnet.data.transforms import TensorImages

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "val_images": "t10k-images-idx3-ubyte.gz",
    "val_labels": "t10k-labels-idx1-ubyte.gz",
}
INPUT_SIZE = 28
PAD = 2  # 28 -> 32, the ratio of the paper's 224 -> 256
FULL_SIZE = INPUT_SIZE + 2 * PAD
_IDX_MAGIC = {1: 2049, 3: 2051}  # IDX magic numbers: unsigned bytes, 1-d labels / 3-d images


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes: labels (N,) or images (N, H, W) uint8.
    A damaged file is a ValueError naming it (one file holds a whole split: it cannot be
    skipped like a broken image)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # not gzip, truncated, corrupt
        raise ValueError(f"{path} is damaged: not a readable .gz file ({type(e).__name__}: "
                         f"{e}); replace it with a good copy") from e
    if len(data) < 8:
        raise ValueError(f"{path} is too short to be an IDX file")
    magic = int.from_bytes(data[0:4], "big")
    ndim = data[3]
    if _IDX_MAGIC.get(ndim) != magic:
        raise ValueError(
            f"{path}: IDX magic {magic} is not an unsigned-byte label (2049) or image (2051) file"
        )
    dims = [int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(
            f"{path}: header says {dims} ({expected} bytes) but has {len(data) - offset}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def find_files(root: Path) -> dict[str, Path]:
    """The four IDX files in `root`; a clear error when the directory or a file is missing."""
    hint = (
        "install the Debian package with `sudo apt-get install dataset-fashion-mnist` "
        f"(puts them in {DEFAULT_DIR}) or pass the directory as fashion-mnist:DIR"
    )
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST directory {root} does not exist; {hint}")
    paths = {key: root / name for key, name in FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST directory {root} lacks {', '.join(missing)} "
            f"(expected the four files {', '.join(FILES.values())}); {hint}"
        )
    return paths


def load_fashion_mnist(spec: DatasetSpec, *, ten_crop: bool = False, strict: bool = False,
                       raw_spec: str = "",
                       preprocessing: Preprocessing | None = None) -> DataBundle:
    """Build the Fashion-MNIST `DataBundle` (1 channel, 28 px crops of 32 px padded images);
    with a model's `preprocessing`, the padded images fitted to its inputs."""
    opts = check_options(
        spec,
        {
            "n_train": int_option,
            "n_val": int_option,
            "per_class": lambda v, k: int_option(v, k, minimum=1),
            "classes": lambda v, k: class_list_option(v, CLASS_NAMES, k),
            "pad": int_option,
            "holdout": lambda v, k: int_option(v, k, minimum=1),
        },
    )
    paths = find_files(Path(spec.path) if spec.path else DEFAULT_DIR)
    classes = opts.get("classes")
    pad = opts.get("pad", PAD)
    if pad > INPUT_SIZE // 2:
        raise ValueError(f"option pad={pad} must be <= {INPUT_SIZE // 2}")
    names = [CLASS_NAMES[c] for c in classes] if classes is not None else list(CLASS_NAMES)

    def split(images_key: str, labels_key: str, per_class: int | None):
        images = read_idx(paths[images_key])  # (N, 28, 28)
        labels = read_idx(paths[labels_key])  # (N,)
        if len(images) != len(labels):
            raise ValueError(f"{paths[images_key]} and {paths[labels_key]} differ in length")
        idx, targets = select(labels.tolist(), classes=classes, per_class=per_class)
        x = torch.from_numpy(images[idx]).unsqueeze(1)  # (n, 1, 28, 28)
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (n, 1, 32, 32) for pad 2
        return x.contiguous(), targets

    def first(x: torch.Tensor, y: list[int], n: int | None) -> tuple[torch.Tensor, list[int]]:
        return (x, y) if n is None else (x[:n], y[:n])

    train_x, train_y = split("train_images", "train_labels", opts.get("per_class"))
    holdout = opts.get("holdout")
    if holdout is None:
        val_x, val_y = split("val_images", "val_labels", None)
    else:  # the last `holdout` training images (after any class / per_class selection)
        if holdout >= len(train_x):
            raise ValueError(f"option holdout={holdout} must be below the {len(train_x)} "
                             "training images selected, to leave some to train on")
        val_x, val_y = train_x[-holdout:], train_y[-holdout:]
        train_x, train_y = train_x[:-holdout], train_y[:-holdout]
    train_x, train_y = first(train_x, train_y, opts.get("n_train"))
    val_x, val_y = first(val_x, val_y, opts.get("n_val"))
    if len(train_x) == 0 or len(val_x) == 0:
        raise ValueError(f"dataset spec {raw_spec!r} selects no training or no test images")
    mean = train_x.to(torch.float64).mean(0).to(torch.float32)  # (1, 32, 32)
    common = dict(mean=mean, input_size=INPUT_SIZE, classes=names, strict=strict)
    if preprocessing is not None:
        common.update(fitted(preprocessing))
    return DataBundle(
        spec=raw_spec,
        train=TensorImages(train_x, train_y, mode="train", **common),
        val=TensorImages(val_x, val_y, mode="ten_crop" if ten_crop else "centre", **common),
        num_classes=len(names),
        class_names=names,
        **bundle_geometry(preprocessing, in_channels=1, input_size=INPUT_SIZE,
                          full_size=INPUT_SIZE + 2 * pad, mean=mean),
    )
