"""Real photographs that ship with scikit-image and scikit-learn (no download): the images for
the invariance analysis (paper Fig. 5 uses 5 photos) and the dataset `sample-photos` (all six as
files, for a first look inside a pretrained model: the explorer's default for one)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zfnet.data.bundle import DataBundle
from zfnet.data.imagedir import OPTIONS, load_images_dir
from zfnet.data.imagefolder import check_no_size
from zfnet.data.images import resize_center_crop
from zfnet.data.spec import DatasetSpec, check_options

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


def _array(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    return getattr(skimage.data, name)()


def load_photos(
    size: int, names: Sequence[str] = PHOTOS[:5], channels: int = 3
) -> tuple[torch.Tensor, list[str]]:
    """Photos as uint8 (N, channels, size, size): shorter side to `size`, centre square.

    `channels=1` gives grey images (for models trained on Fashion-MNIST)."""
    out = []
    for name in names:
        if name not in PHOTOS:
            raise ValueError(f"unknown photo {name!r}; valid: {', '.join(PHOTOS)}")
        img = torch.from_numpy(np.array(_array(name))).permute(2, 0, 1)  # (3, H, W), a copy
        img = resize_center_crop(img, size)  # (3, S, S) uint8
        if channels == 1:
            grey = (img.float() * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0)
            img = grey.round().clamp(0, 255).to(torch.uint8)[None]
        out.append(img)
    return torch.stack(out), list(names)


FORM = "sample-photos (the 6 built-in photos, no labels; options size, n)"


def photos_folder() -> Path:
    """The built-in photos as PNG files, one per name of `PHOTOS`, in
    `zfnet.cache.cache_root()`/photos, written there the first time: into a hidden folder
    beside it, renamed into place, so that a reader sees all of them or none."""
    from zfnet.cache import cache_root

    folder = cache_root() / "photos"
    if all((folder / f"{name}.png").is_file() for name in PHOTOS):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        for name in PHOTOS:
            Image.fromarray(np.asarray(_array(name))).save(tmp / f"{name}.png")
        try:
            os.rename(tmp, folder)
        except OSError:  # there already (another process wrote it, or a part of it is there)
            for png in tmp.iterdir():
                os.replace(png, folder / png.name)
    finally:
        if tmp.exists():
            for png in tmp.iterdir():
                png.unlink()
            tmp.rmdir()
    return folder


def load_photos_dataset(spec: DatasetSpec, *, cache_dir: str | Path | None = None,
                        **kwargs: Any) -> DataBundle:
    """The `DataBundle` of the dataset `sample-photos`: `images:DIR` of `photos_folder()` (its
    options, `size` and `n`; train = val = the 6 photos, no labels)."""
    if spec.path is not None:
        raise ValueError(f"sample-photos takes no path (got sample-photos:{spec.path}): "
                         f"{FORM}; a folder of your own is images:{spec.path}")
    # checked before the photos are written
    check_no_size(check_options(spec, OPTIONS, labelled=False), kwargs.get("preprocessing"),
                  kwargs.get("raw_spec", spec.name))
    folder = photos_folder()
    return load_images_dir(DatasetSpec(spec.name, str(folder), spec.options),
                           cache_dir=cache_dir, **kwargs)
