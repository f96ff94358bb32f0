"""`DataBundle`: what `load_dataset` returns, the same for every dataset."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zfnet.data.transforms import CropDataset


@dataclass
class DataBundle:
    """A dataset ready for training and evaluation in the paper's pixel convention.

    `train` items are (x float32 (C, S, S), y int) with random crops and flips; `val` items
    are centre crops, or (10, C, S, S) with `ten_crop=True` (paper Sec. 3). Inputs are
    0..255 minus the crop of `mean`, the per-pixel mean image of the training set.
    """

    spec: str  # the spec string it came from
    train: CropDataset
    val: CropDataset
    num_classes: int
    class_names: list[str]
    in_channels: int  # 3 for RGB, 1 for Fashion-MNIST
    input_size: int  # S, the crop side the model sees
    full_size: int  # side before cropping
    mean: torch.Tensor  # (C, full_size, full_size) float32

    def raw_val(self, i: int) -> torch.Tensor:
        """Displayable uint8 (C, S, S) centre crop of val image i (no mean subtracted)."""
        if not 0 <= i < len(self.val):
            raise IndexError(f"val index {i} out of range 0..{len(self.val) - 1}")
        return self.val.raw(i)
