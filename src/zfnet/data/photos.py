"""Real photographs that ship with scikit-image and scikit-learn (no download): the images for
the invariance analysis (paper Fig. 5 uses 5 photos) and for quick looks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from zfnet.data.images import resize_center_crop

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
