"""Layer geometry: feature-map size, stride and receptive field of every layer.

For a chain of convolutions and poolings (paper Fig. 3; torchvision's alexnet/vgg `features`),
unit (r, c) of a layer sees the input window of side `rf` whose centre is at
`start + (r, c) * jump` input pixels. Element-wise layers (ReLU, LRN, dropout) keep the geometry.
The top-9 gallery (paper Fig. 2) crops image patches with these windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

_PASS_THROUGH = (
    nn.ReLU, nn.LocalResponseNorm, nn.Dropout, nn.BatchNorm2d, nn.Identity, nn.LeakyReLU,
    nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
)


@dataclass(frozen=True)
class LayerGeometry:
    """Where the units of one layer's output sit in input pixels."""

    size: int  # spatial side of the output feature map
    jump: int  # input pixels between neighbouring units (cumulative stride)
    rf: int  # receptive field side in input pixels
    start: float  # input coordinate of the centre of unit 0's receptive field

    def box(self, row: int, col: int, input_size: int | None = None) -> tuple[int, int, int, int]:
        """Receptive field of unit (row, col) as (top, left, bottom, right), bottom/right exclusive.

        Clipped to [0, input_size) when `input_size` is given.
        """
        half = (self.rf - 1) / 2
        top = math.floor(self.start + row * self.jump - half)
        left = math.floor(self.start + col * self.jump - half)
        bottom, right = top + self.rf, left + self.rf
        if input_size is not None:
            top, left = max(top, 0), max(left, 0)
            bottom, right = min(bottom, input_size), min(right, input_size)
        return top, left, bottom, right


def feature_size(size: int, kernel: int, stride: int, padding: int, ceil: bool = False) -> int:
    """Output side of a conv or pool window sliding over `size` pixels (PyTorch's rule)."""
    span = size + 2 * padding - kernel
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + padding:  # last window must start inside the input
        out -= 1
    return out


def _pair(v: int | tuple[int, ...]) -> int | None:
    """The side of a square kernel/stride/padding; None when it is not square."""
    if isinstance(v, tuple):
        return int(v[0]) if len(set(v)) == 1 else None
    return int(v)


def sequential_geometry(
    seq: nn.Sequential, input_size: int, prefix: str = ""
) -> dict[str, LayerGeometry]:
    """Geometry of the output of every module of `seq`, keyed by `prefix + name`.

    Walks the chain in order; stops (leaving later modules out) at the first module whose
    geometry it cannot know, e.g. an adaptive pooling.
    """
    geo = LayerGeometry(size=input_size, jump=1, rf=1, start=0.0)
    out: dict[str, LayerGeometry] = {}
    for name, m in seq.named_children():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            if isinstance(m.padding, str):
                break  # "same"/"valid": not handled; geometry unknown from here on
            k, s, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
            d = _pair(getattr(m, "dilation", 1))
            if None in (k, s, p) or d != 1:
                break  # non-square or dilated: geometry unknown from here on
            ceil = bool(getattr(m, "ceil_mode", False))
            geo = LayerGeometry(
                size=feature_size(geo.size, k, s, p, ceil),
                jump=geo.jump * s,
                rf=geo.rf + (k - 1) * geo.jump,
                start=geo.start + ((k - 1) / 2 - p) * geo.jump,
            )
        elif not isinstance(m, _PASS_THROUGH):
            break
        out[prefix + name] = geo
    return out
