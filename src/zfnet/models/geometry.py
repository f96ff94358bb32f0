"""Layer geometry: where every unit of a conv / pool chain sits in input pixels — the one place.

What it covers. The layer types the project knows, in one list: windowed layers (`WINDOWED`:
Conv2d, MaxPool2d, AvgPool2d), which read a window of their input per output unit, and
point-wise ones (`POINTWISE`: activations, LRN, batch norm, dropout, identity), which keep
positions where they are (LRN mixes maps, not positions). Per module, a `Window` gives its
kernel, stride, padding and dilation per axis (rows, columns) and the window arithmetic:
the output size (PyTorch's rule, dilation and `ceil_mode` included), the input window an
output window reads (`Window.input_window`: the deconvnet's way down and incremental
inference's gathers, on ints or int64 tensors of many windows at once) and the outputs an
input change [lo, hi) reaches (`Window.output_range`: incremental inference's changed
regions). For a chain of modules (paper Fig. 3; torchvision's alexnet / vgg `features`),
`LayerGeometry` gives every layer's output size, cumulative stride (jump), receptive field and
where unit 0's field starts, per axis: unit (r, c) sees input rows
`rows.first + r * rows.jump` … `+ rows.rf - 1` and likewise columns (`LayerGeometry.box`),
computed by composing `Window.input_window` — the same arithmetic the deconvnet uses to crop
its projections, so the top-9 gallery's image patches and projections line up. Clipped to the
input (and to the layer's `reach`: floor-mode windows can leave an input's last pixels unread),
the box is exactly where the unit's gradient is nonzero (tests/models/test_geometry.py).

The windows are those of the module's zero padding; with `padding_mode` "reflect" or
"circular" a border unit also depends on the mirrored / wrapped pixels (the engines refuse
those). Windows are per module, so a graph (residual blocks) can combine them per branch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor, nn

# Layers that read a window of their input per output unit.
WINDOWED: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
# Layers that act on each position separately (LRN mixes maps, not positions): the geometry
# passes through them unchanged.
POINTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
    nn.LocalResponseNorm, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity,
)
LAYER_TYPES = WINDOWED + POINTWISE

Index = TypeVar("Index", int, Tensor)


class UnsupportedLayerError(ValueError):
    """A module whose geometry is not known; the message names it and the known types."""


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    """A kernel / stride / padding / dilation argument as (rows, columns)."""
    if isinstance(v, int):
        return v, v
    a, b = v  # a 2-sequence; anything else is a bug in the module's arguments
    return int(a), int(b)


@dataclass(frozen=True)
class Window:
    """The window of one conv / pool layer, per axis (rows, columns), as PyTorch slides it.

    Output unit o (along an axis) reads input positions `o * stride - padding + j * dilation`,
    j < kernel: a span of `dilation * (kernel - 1) + 1` positions; positions outside the
    input are padding. `padding_end` is the padding after the input (equal to `padding`
    except for Conv2d's padding="same" with an even span).
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]  # before the input: top, left
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    padding_end: tuple[int, int] | None = None  # after: bottom, right (None: = padding)
    span: tuple[int, int] = field(init=False)  # input positions one window covers

    def __post_init__(self) -> None:
        if self.padding_end is None:
            object.__setattr__(self, "padding_end", self.padding)
        span = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation, strict=True))
        object.__setattr__(self, "span", span)

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the output for an input of `size` (H, W): PyTorch's rule."""
        return (self._out(0, size[0]), self._out(1, size[1]))

    def _out(self, ax: int, n: int) -> int:
        s, pb, pe = self.stride[ax], self.padding[ax], self.padding_end[ax]  # type: ignore[index]
        room = n + pb + pe - self.span[ax]
        out = (-(-room // s) if self.ceil_mode else room // s) + 1
        if self.ceil_mode and (out - 1) * s >= n + pb:  # the last window must start inside
            out -= 1
        return out

    def input_window(self, top: Index, left: Index, h: int, w: int
                     ) -> tuple[Index, Index, int, int]:
        """The input window (top, left, h, w) that the output window (top, left, h, w) reads.

        `top`/`left` are ints or int64 tensors (one per window); the result can reach into
        the padding (negative, or past the input's end)."""
        (s0, s1), (p0, p1), (a0, a1) = self.stride, self.padding, self.span
        return top * s0 - p0, left * s1 - p1, (h - 1) * s0 + a0, (w - 1) * s1 + a1

    def output_range(self, lo: Tensor, hi: Tensor, axis: int, out_size: int
                     ) -> tuple[Tensor, Tensor]:
        """Along `axis`, the outputs [lo', hi') whose windows span an input change [lo, hi).

        `lo`/`hi` are int64 tensors (one per change). The range is clipped to the output
        [0, out_size) and can be empty (hi' <= lo') where the change falls between windows
        (stride > span) or in the end that floor mode leaves unread. With dilation
        it is the outputs whose windows' *span* meets the change: a superset of those that
        read it."""
        s, p, a = self.stride[axis], self.padding[axis], self.span[axis]
        # output o reads [o*s - p, o*s - p + a): it meets [lo, hi) iff o*s - p + a > lo
        # and o*s - p <= hi - 1
        first = torch.div(lo + p - a, s, rounding_mode="floor") + 1
        last = torch.div(hi - 1 + p, s, rounding_mode="floor") + 1
        return first.clamp(0, out_size), last.clamp(0, out_size)


def window_of(m: nn.Module) -> Window | None:
    """The `Window` of a windowed layer, None for a point-wise one; `UnsupportedLayerError`
    naming the module otherwise."""
    if isinstance(m, POINTWISE):
        return None
    if isinstance(m, nn.Conv2d):
        k, d = pair(m.kernel_size), pair(m.dilation)
        if m.padding == "valid":
            return Window(k, pair(m.stride), (0, 0), d)
        if m.padding == "same":  # PyTorch pads the extra position, if any, at the end
            total = [dd * (kk - 1) for kk, dd in zip(k, d, strict=True)]
            before = (total[0] // 2, total[1] // 2)
            end = (total[0] - before[0], total[1] - before[1])
            return Window(k, pair(m.stride), before, d, padding_end=end)
        return Window(k, pair(m.stride), pair(m.padding), d)
    if isinstance(m, nn.MaxPool2d):
        return Window(pair(m.kernel_size), pair(m.stride), pair(m.padding), pair(m.dilation),
                      bool(m.ceil_mode))
    if isinstance(m, nn.AvgPool2d):
        return Window(pair(m.kernel_size), pair(m.stride), pair(m.padding), (1, 1),
                      bool(m.ceil_mode))
    raise UnsupportedLayerError(
        f"{type(m).__name__} has no known geometry; known: "
        f"{', '.join(t.__name__ for t in LAYER_TYPES)}"
    )


@dataclass(frozen=True)
class AxisGeometry:
    """Where the units of one layer's output sit along one input axis."""

    size: int  # units along this axis (the output map's height or width)
    jump: int  # input pixels between neighbouring units (cumulative stride)
    rf: int  # receptive field length in input pixels
    first: int  # input coordinate of unit 0's first receptive-field pixel (< 0: padding)
    # Input pixels from `reach` on reach no unit of the layer: windows that do not fit are
    # left out (floor mode), so the last rows / columns of an input can go unseen.
    reach: int

    @property
    def start(self) -> float:
        """Input coordinate of the centre of unit 0's receptive field."""
        return self.first + (self.rf - 1) / 2


@dataclass(frozen=True)
class LayerGeometry:
    """Where the units of one layer's output sit in input pixels, per axis.

    `size`, `jump`, `rf` and `start` are the common value of both axes, for the usual
    square maps; a non-square geometry has them per axis only (`rows`, `cols`).
    """

    rows: AxisGeometry
    cols: AxisGeometry

    @classmethod
    def of_input(cls, size: int | tuple[int, int]) -> LayerGeometry:
        """The input itself: every pixel its own receptive field."""
        h, w = pair(size)
        return cls(AxisGeometry(h, jump=1, rf=1, first=0, reach=h),
                   AxisGeometry(w, jump=1, rf=1, first=0, reach=w))

    def then(self, win: Window | None) -> LayerGeometry:
        """The geometry after one more layer (`win` None: a point-wise one)."""
        if win is None:
            return self
        # unit 0 of the new layer reads window (t, l, h, w) of this layer's units; those
        # units' receptive fields cover the new unit's
        t, lf, h, w = win.input_window(0, 0, 1, 1)
        (sh, sw), (oh, ow) = win.stride, win.out_size((self.rows.size, self.cols.size))
        return LayerGeometry(_axis_then(self.rows, t, h, sh, oh),
                             _axis_then(self.cols, lf, w, sw, ow))

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the layer's output map."""
        return self.rows.size, self.cols.size

    def _square(self, name: str) -> int | float:
        a, b = getattr(self.rows, name), getattr(self.cols, name)
        if a != b:
            raise ValueError(f"the geometry is not square ({name}: {a} rows, {b} columns); "
                             "read .rows and .cols")
        return a

    @property
    def size(self) -> int:
        """Spatial side of the (square) output map."""
        return int(self._square("size"))

    @property
    def jump(self) -> int:
        """Input pixels between neighbouring units (cumulative stride)."""
        return int(self._square("jump"))

    @property
    def rf(self) -> int:
        """Receptive field side in input pixels."""
        return int(self._square("rf"))

    @property
    def start(self) -> float:
        """Input coordinate of the centre of unit 0's receptive field (both axes)."""
        return self._square("start")

    def box(self, row: int, col: int, input_size: int | tuple[int, int] | None = None
            ) -> tuple[int, int, int, int]:
        """Receptive field of unit (row, col) as (top, left, bottom, right), bottom/right exclusive.

        When `input_size` (a side, or (H, W)) is given, clipped to the pixels the unit can
        depend on: inside the input, and before the layer's `reach`.
        """
        top = self.rows.first + row * self.rows.jump
        left = self.cols.first + col * self.cols.jump
        bottom, right = top + self.rows.rf, left + self.cols.rf
        if input_size is not None:
            h, w = pair(input_size)
            top, left = max(top, 0), max(left, 0)
            bottom = min(bottom, h, self.rows.reach)
            right = min(right, w, self.cols.reach)
        return top, left, bottom, right


def _axis_then(a: AxisGeometry, top: int, length: int, stride: int, size: int) -> AxisGeometry:
    jump, rf, first = a.jump * stride, (length - 1) * a.jump + a.rf, a.first + top * a.jump
    # the last unit's field ends at first + (size - 1) * jump + rf, but reads nothing the
    # previous layer did not see
    return AxisGeometry(size=size, jump=jump, rf=rf, first=first,
                        reach=min(a.reach, first + (size - 1) * jump + rf))


def feature_size(size: int, kernel: int, stride: int, padding: int, ceil: bool = False,
                 dilation: int = 1) -> int:
    """Output side of a conv or pool window sliding over `size` pixels (PyTorch's rule)."""
    win = Window((kernel, 1), (stride, 1), (padding, 0), (dilation, 1), ceil)
    return win.out_size((size, 1))[0]


def chain_geometry(modules: Iterable[nn.Module], input_size: int | tuple[int, int]
                   ) -> list[LayerGeometry]:
    """Geometry of the output of each module of a chain fed `input_size` (a side or (H, W));
    `UnsupportedLayerError` at a module of unknown geometry."""
    geo = LayerGeometry.of_input(input_size)
    out = []
    for m in modules:
        geo = geo.then(window_of(m))
        out.append(geo)
    return out


def chain_sizes(modules: Iterable[nn.Module], input_size: int | tuple[int, int]
                ) -> list[tuple[int, int]]:
    """(H, W) of the input, then of each module's output, of a chain fed `input_size`."""
    sizes = [pair(input_size)]
    for m in modules:
        win = window_of(m)
        sizes.append(sizes[-1] if win is None else win.out_size(sizes[-1]))
    return sizes


def sequential_leaves(seq: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules of `seq` in order as (prefix + path, module), nested Sequentials flattened."""
    leaves: list[tuple[str, nn.Module]] = []
    for name, m in seq.named_children():
        if isinstance(m, nn.Sequential):
            leaves.extend(sequential_leaves(m, f"{prefix}{name}."))
        else:
            leaves.append((f"{prefix}{name}", m))
    return leaves


def sequential_geometry(
    seq: nn.Sequential, input_size: int | tuple[int, int], prefix: str = ""
) -> dict[str, LayerGeometry]:
    """Geometry of the output of every module of `seq` (nested Sequentials flattened), keyed
    by `prefix + path`, for an input of `input_size` (a side or (H, W)).

    Walks the chain in order; stops (leaving later modules out) at the first module whose
    geometry it cannot know, e.g. an adaptive pooling.
    """
    geo = LayerGeometry.of_input(input_size)
    out: dict[str, LayerGeometry] = {}
    for path, m in sequential_leaves(seq, prefix):
        try:
            geo = geo.then(window_of(m))
        except UnsupportedLayerError:
            break
        out[path] = geo
    return out


__all__ = [
    "LAYER_TYPES", "POINTWISE", "WINDOWED", "AxisGeometry", "LayerGeometry",
    "UnsupportedLayerError", "Window", "chain_geometry", "chain_sizes", "feature_size", "pair",
    "sequential_geometry", "sequential_leaves", "window_of",
]
