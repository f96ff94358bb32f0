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
those).

Any other network (ResNets, DenseNets, GoogLeNet, MobileNets, ConvNeXt ...): `graph_geometry`
gives every module's `LayerGeometry` from the autograd graph of one forward pass on a meta-device
copy, composing the same `Window`s per branch and taking the union where branches merge (its
own section below). None where a unit mixes every position (global pooling, linear layers on a
flattened map): such a unit sees the whole image.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor, nn

from zfnet.models.modes import check_not_scripted, eval_mode, forward_failure

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
    # True where the units also depend on the whole image through a gate broadcast over the
    # map (squeeze-and-excitation: the map times a per-channel scale computed from all of it;
    # group norm: less a mean, over a std, of all of it): the box is then the field of the map
    # the gate acts on (`graph_geometry`).
    gated: bool = False

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
                             _axis_then(self.cols, lf, w, sw, ow), self.gated)

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


def per_axis(geometry: LayerGeometry, attr: str) -> str:
    """A geometry value for a layer table: "13", or "13x9" where rows and columns differ
    (attr: size, jump, rf)."""
    rows, cols = getattr(geometry.rows, attr), getattr(geometry.cols, attr)
    return str(rows) if rows == cols else f"{rows}x{cols}"


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


# =============================================================================================
# Any network: every module's geometry, read off the autograd graph of one forward pass
# =============================================================================================
#
# A network that is not a chain (residual additions, concatenations, squeeze-and-excitation
# gates, reshapes around linear layers) has no list of layers to compose. Its forward pass does:
# the autograd graph of one pass records every operation with its arguments (a convolution's
# stride, padding, dilation and weight shape; a pooling's window; a concatenation's dim), so the
# geometry of every tensor follows from its inputs', node by node from the input up:
#
#   conv, max / avg pooling          its `Window` (`LayerGeometry.then`)
#   adaptive pooling H -> h > 1       the window of stride H/h when h divides H; None otherwise
#   element-wise nodes                keep it (ReLU, batch norm in eval, dropout, clone, ...)
#   add, mul, cat along channels ...  the union of the inputs' fields (jumps must agree)
#   a gate broadcast over the map     keeps the map's field, `gated` set (squeeze-and-excitation;
#                                     group norm's per-group statistics likewise)
#   view, permute, squeeze, select,   keep it, following where the rows and columns go; a linear
#   linear on (N*H*W, C) ...          layer acting per position (ConvNeXt) keeps it
#   mean over H, W, flatten + linear  None: the unit mixes every position (it sees the image)
#   anything else                     None: never a wrong box
#
# A tensor's rows and columns need not be its last two dims: each axis is followed as (dim,
# step) — unit index = (index along dim // step) % size — through reshapes (on the row-major
# order a reshape keeps) and permutations. Beside the symbolic geometry, the walk computes, per
# axis, the input interval every unit depends on (the windows' taps that fall inside their
# input, the union's min / max); the geometry is kept only where its clipped box equals them for
# every unit, so a union whose last units' reach cannot be one number, or a crop before a
# padded window, gives None rather than a wrong box.


class _Mark:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_CONST = _Mark("CONST")  # does not depend on the input (weights, constants)
_GATE = _Mark("GATE")  # depends on the input, the same at every position (a broadcast gate)

_Dim = tuple[int, int] | None  # (tensor dim, step) of one axis; None: the axis has size 1
_Spans = tuple[tuple[int, ...], tuple[int, ...]]  # per unit along one axis: input [lo, hi)


@dataclass(frozen=True)
class _Field:
    """A tensor whose units sit at `geo`; `dims` says where rows and columns are in its shape,
    `spans` which input pixels each unit depends on (the check on `geo`)."""

    geo: LayerGeometry
    dims: tuple[_Dim, _Dim]
    spans: tuple[_Spans, _Spans]
    # False where `spans` is not `geo`'s box (a reflection padding's border reads pixels
    # inside): the next window re-checks it; a module's output like that has no geometry
    exact: bool = True


_State = _Field | _Mark | None  # None: depends on the input, no spatial geometry


class GeometryError(ValueError):
    """The model could not run the forward pass the geometry is read from."""


def graph_geometry(model: nn.Module, input_size: int | tuple[int, int],
                   in_channels: int | None = None) -> dict[str, LayerGeometry | None]:
    """Geometry of the output of every module of any model fed `input_size` (a side or (H, W)),
    keyed by module path (the model itself left out), in forward order (`record_forward`); for a
    module called several times in one forward pass, its last call. None where the output has no
    spatial geometry: a unit that mixes every position (global pooling, flatten + linear, the
    logits) — it sees the whole image —, after a node the walk does not know, or an output that
    is not maps, (N, C, H, W) or channels-last (N, H, W, C) (`channels_last_layers`). Modules
    that do not run are left out.

    One forward pass on a meta-device copy of the model (no weights copied, nothing computed),
    in eval mode; if the model cannot run on the meta device, on the model itself with a zero
    input (eval mode for the pass, every module's flag restored). The model is left as it was:
    no hook, no flag, no parameter moved. `in_channels`: default, the first convolution's (3 if
    the model does not run on that: a stem that rearranges the pixels first).
    `GeometryError` if the forward pass fails (e.g. an input too small for the model).
    """
    return {path: geo for path, (geo, _) in graph_layers(model, input_size, in_channels).items()}


def graph_layers(model: nn.Module, input_size: int | tuple[int, int],
                 in_channels: int | None = None
                 ) -> dict[str, tuple[LayerGeometry | None, int | None]]:
    """`graph_geometry` and, from the same forward pass, each module's output channels: the
    maps of an (N, C, H, W) or channels-last (N, H, W, C) output, the features of an (N, F)
    one, the last dim of tokens (N, L, C) and of any other tensor (attention's (N, heads, L,
    D): D); None for an output that is not a tensor. Read from the output itself, so right
    after a concatenation (a DenseNet's transition) or inside a squeeze-and-excitation gate,
    where the last convolution's count is not the output's. A 4-dim output is maps where
    its rows and columns are followed (`graph_geometry`) or where it is made as maps
    (`_maps_channels`: a squeeze-and-excitation gate's (N, C, 1, 1))."""
    out: dict[str, tuple[LayerGeometry | None, int | None]] = {}
    for path, state, out_shape, made in _walked(model, input_size, in_channels):
        # maps (N, C, H, W), or (N, H, W, C), which every reader sees as (N, C, H, W)
        last = _channels_last(state, out_shape)
        maps = _last_two(state, out_shape) or last
        channels = (None if len(out_shape) < 2  # not a tensor, or a scalar per image
                    else out_shape[-1] if last
                    else out_shape[1] if len(out_shape) == 2 or maps
                    else out_shape[made] if made is not None else out_shape[-1])
        out[path] = (state.geo if maps and state.exact else None, channels)
    return out


# per model: (input shape, its modules' paths and types) -> its `channels_last_layers`, kept
# while the model lives; one walk costs about a third of projecting one unit of a ResNet-18 at
# 224 px, and every forward pass that reads a layer's output asks (so the key is cheap: 1 ms on
# a DenseNet-201, where `_structure` takes 11 ms, a mining batch's time on a GPU)
_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def channels_last_layers(model: nn.Module, input_size: int | tuple[int, int],
                         in_channels: int | None = None) -> frozenset[str]:
    """Module paths whose output is maps laid out (N, H, W, C) — rows and columns at dims 1
    and 2 — rather than (N, C, H, W): inside a ConvNeXt block (its LayerNorm, linear layers and
    GELU), the stages of MambaOut. Every reader of a layer's output (`zfnet.activations.capture`,
    the engine) sees them as (N, C, H, W) views.

    Rows and columns are followed as `graph_geometry` follows them, and also past where a unit
    stops having a box (a unit that mixes whole rows, as Sequencer2d's LSTMs do: `_LayoutWalk`);
    an output whose rows and columns are lost is read as (N, C, H, W). The same forward pass as
    `graph_geometry`, remembered per model and input until the model's modules change;
    `GeometryError` if it fails."""
    size = pair(input_size)
    key = (size, in_channels, tuple((p, type(m)) for p, m in model.named_modules()))
    known = _LAYOUTS.setdefault(model, {})
    if key not in known:
        known.clear()
        x0, made = record_forward(model, size, in_channels)
        walk = _LayoutWalk(x0, size)
        known[key] = frozenset(
            path for path, (node, shape, *_) in made.items()
            if node is not None and node is not _CONST and len(shape) == 4
            and _channels_last(walk.state(node), shape))
    return known[key]


def _walked(model: nn.Module, input_size: int | tuple[int, int], in_channels: int | None
            ) -> list[tuple[str, _State, tuple[int, ...], int | None]]:
    """Per module path, in forward order: the walk's state of its output, the output's shape
    and, for 4-dim maps, the dim of their channels (`_maps_channels`)."""
    size = pair(input_size)
    x0, made = record_forward(model, size, in_channels)
    walk = _Walk(x0, size)
    out, memo = [], {}
    for path, (node, shape, *_) in made.items():
        const = node is None or node is _CONST
        state = _CONST if const else walk.state(node)
        out.append((path, state, shape, None if const or len(shape) != 4 else
                    _maps_channels(walk, node, memo)))
    return out


def _maps_channels(walk: _Walk, node: object, memo: dict[object, int | None]) -> int | None:
    """Where a 4-dim output of `node` has its channels when it is maps also where the walk has
    no field for it (a squeeze-and-excitation gate's (N, C, 1, 1), maps after an upsampling, a
    channels-first norm that permutes to (N, H, W, C) and back): up its graph, through nodes
    that keep the layout (element-wise ones, norms, a reduction kept 4-dim, an expand, a
    concatenation, a view to the same shape) or permute it, one of its inputs comes from a
    convolution, a pooling, an upsampling or the input image; then the dim of their channels.
    None for another 4-dim tensor (attention's (N, heads, L, D), made by a reshape; a Swin's
    (N, H, W, C) after attention: its last dim). `memo`: per node, its answer."""
    stack = [node]
    while stack:  # iterative post-order, as `_Walk.state`
        n = stack[-1]
        if n in memo:
            stack.pop()
            continue
        name = type(n).__name__
        handler = _HANDLERS.get(name)
        keeps = name in _ELEMENTWISE or _pointwise_function(n) or handler in (
            _reduce, _expand, _norm_of_maps, _layer_norm, _cat, _permute) or (
            # a view to the same shape (a meta device's global pooling's as_strided)
            (handler is _view or name.startswith("AsStrided")) and all(
                _shape(f, i) == _shape(n, 0) for f, i in n.next_functions  # type: ignore[attr-defined]
                if f is not None and walk.memo.get(f) is not _CONST))
        ups = [f for f, i in n.next_functions  # type: ignore[attr-defined]
               if f is not None and walk.memo.get(f) is not _CONST
               and len(_shape(f, i)) == 4] if keeps else []
        todo = [f for f in ups if f not in memo]
        if todo:
            stack.extend(todo)
            continue
        stack.pop()
        if name == "AccumulateGrad":
            memo[n] = 1 if n.variable is walk.leaf else None  # type: ignore[attr-defined]
        elif handler in (_conv, _pool, _adaptive) or name.startswith("Upsample"):
            memo[n] = 1
        else:
            c = next((memo[f] for f in ups if memo[f] is not None), None)
            if c is not None and handler is _permute:  # output dim j is input dim order[j]
                if name == "PermuteBackward0":
                    order = [dim_index(d, 4) for d in n._saved_dims]  # type: ignore[attr-defined]
                else:
                    j, k = (dim_index(n._saved_dim0, 4),  # type: ignore[attr-defined]
                            dim_index(n._saved_dim1, 4))  # type: ignore[attr-defined]
                    order = list(range(4))
                    order[j], order[k] = k, j
                c = order.index(c)
            memo[n] = c
    return memo[node]


# per module path: (the autograd node that made its output, the output's shape, the node that
# made its first tensor input, the number of calls); `_CONST` for an output that is not a tensor
_Made = dict[str, tuple[object, tuple[int, ...], object, int]]


def record_forward(model: nn.Module, input_size: int | tuple[int, int],
                   in_channels: int | None = None) -> tuple[Tensor, _Made]:
    """One forward pass of a zero input of `input_size` with autograd recording, on a meta-device
    copy of `model` (or, if it cannot run there, on the model itself): the input leaf, and per
    module path — in forward order, each module at the end of its first call — the node that
    made its output (its last call), the output's shape, the node that made its first tensor
    input and how many times the module was called. What `graph_geometry` reads, and
    `zfnet.models.layers` to tell which module feeds the classifier. Eval mode; the model left
    as it was. `GeometryError` if the pass fails.

    The pass on the meta copy is remembered per model, input and dtype until the model's modules
    change (`_structure`): what it returns is shared, to read, not to change."""
    size = pair(input_size)
    if min(size) < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    check_not_scripted(model)  # its hooks would fail, and read as a wrong input size
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if in_channels is not None:
        channels = [in_channels]
    else:  # the first convolution's input channels, then RGB: a stem that rearranges the image
        # before any convolution (TResNet's space-to-depth: 3 channels in, 48 at its first)
        channels = list(dict.fromkeys((next((int(m.in_channels) for m in model.modules()
                                              if isinstance(m, nn.modules.conv._ConvNd)), 3), 3)))
    structure = _structure(model)
    known = _RECORDED.setdefault(model, {})
    if (size, channels[0], dtype, structure) in known:
        return known[(size, channels[0], dtype, structure)]
    failed: list[GeometryError] = []
    for c in channels:
        try:
            recorded, on_meta = _record(model, (1, c, *size), dtype)
        except GeometryError as e:
            failed.append(e)
            continue
        if on_meta:  # a pass on the model itself keeps its activations: not kept
            if any(k[3] != structure for k in known):
                known.clear()
            while len(known) >= _RECORDS_KEPT:  # the oldest first
                del known[next(iter(known))]
            known[(size, c, dtype, structure)] = recorded
        return recorded
    raise failed[0]


# per model: (input shape, input channels, dtype, its structure: `_structure`) -> its
# `record_forward` on the meta device, kept while the model lives (for each input its analyses
# use: the geometry's 224 px, the images' size): one pass costs ~0.2 s on a ResNet-18 (autograd
# on meta tensors runs torch's Python reference kernels), and listing a network's layers, their
# geometry, the stages to show and the layer its classifier reads each ask for it
_RECORDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_RECORDS_KEPT = 4  # per model: the explorer's images come in any size


def _structure(model: nn.Module) -> tuple:
    """What a forward pass's graph is made of, to know when a remembered one no longer holds:
    every module (its path, type, identity and settings: stride, padding, sizes), every
    parameter's and buffer's shape. A module replaced, resized or set otherwise changes it."""
    return (tuple((p, type(m), id(m), m.extra_repr()) for p, m in model.named_modules()),
            tuple((n, tuple(t.shape)) for n, t in model.named_parameters()),
            tuple((n, tuple(t.shape)) for n, t in model.named_buffers()))


def _record(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype
            ) -> tuple[tuple[Tensor, _Made], bool]:
    """`record_forward` for an input of this shape: on a meta copy, else on the model itself;
    and whether it ran on the meta copy."""
    try:
        # out of inference mode, also for the copy: a caller's `torch.inference_mode()` would
        # make tensors autograd cannot record
        with torch.inference_mode(False):
            meta = _meta_copy(model)
            return _forward(meta, torch.zeros(shape, dtype=dtype, device="meta")), True
    except Exception:  # noqa: BLE001  (an op with no meta kernel, .item(), ...: run it for real)
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        try:
            with torch.inference_mode(False):
                return _forward(model, torch.zeros(shape, dtype=dtype, device=device)), False
        except Exception as e:  # noqa: BLE001  (any failure of the user's forward pass)
            raise GeometryError(forward_failure(model, shape, e)) from e


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers are meta tensors (no data copied)."""
    memo: dict[int, object] = {}
    for t in (*model.parameters(), *model.buffers()):
        m = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(m, requires_grad=False) if isinstance(t, nn.Parameter) else m
    return copy.deepcopy(model, memo)


def _forward(model: nn.Module, zeros: Tensor) -> tuple[Tensor, _Made]:
    """One forward pass of `zeros` in eval mode, autograd recording: the input leaf and, per
    module path, what `record_forward` says."""
    made: _Made = {}
    handles = []
    try:
        for path, m in model.named_modules():
            if not path:
                continue

            def hook(_m: nn.Module, inp: tuple, out: object, path: str = path) -> None:
                # the node that made the output *now*: an in-place op later (`out += identity`)
                # gives the tensor another grad_fn
                first = next((t.grad_fn for t in inp if isinstance(t, Tensor)), None)
                calls = made[path][3] + 1 if path in made else 1
                made[path] = ((out.grad_fn, tuple(out.shape), first, calls)
                              if isinstance(out, Tensor) else (_CONST, (), first, calls))
            handles.append(m.register_forward_hook(hook))
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            x0 = zeros.requires_grad_(True)
            model(x0.clone())  # a clone, so that the model may change its input in place
    finally:
        for h in handles:
            h.remove()
    return x0, made


class _Walk:
    """The states of a forward pass's autograd nodes, each from its inputs' (memoised)."""

    def __init__(self, leaf: Tensor, size: tuple[int, int]) -> None:
        self.leaf, self.size = leaf, size
        self.input = _image(size, leaf.ndim)
        self.memo: dict[object, _State] = {}

    def state(self, root: object) -> _State:
        stack = [root]
        while stack:  # iterative post-order: a node after every node it reads
            n = stack[-1]
            if n in self.memo:
                stack.pop()
                continue
            todo = [f for f, _ in n.next_functions if f is not None and f not in self.memo]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            self.memo[n] = self._node(n)
        return self.memo[root]

    def _node(self, n: object) -> _State:
        name = type(n).__name__
        if name == "AccumulateGrad":
            return self.input if n.variable is self.leaf else _CONST
        ins = [(_CONST, (), None) if f is None else (self.memo[f], _shape(f, i), f)
               for f, i in n.next_functions]
        if all(s is _CONST for s, _, _ in ins):
            return _CONST
        out = _shape(n, 0)
        if name in _ELEMENTWISE or _pointwise_function(n):
            if getattr(n, "_saved_training", False):  # a norm with the input's statistics
                return _norm_of_maps(self, n, ins, out)  # (instance norm, in eval too)
            return self._merge([self._operand(s, sh, f) for s, sh, f in ins], out)
        handler = _HANDLERS.get(name)
        return None if handler is None else handler(self, n, ins, out)

    def _operand(self, s: _State, shape: tuple[int, ...], f: object
                 ) -> tuple[_State, tuple[int, ...]]:
        """An operand of an element-wise node; an explicit `expand` (a gate made as big as the
        map: `x * s.expand_as(x)`) read as the broadcast it is."""
        if f is not None and type(f).__name__ == "ExpandBackward0":
            g, _ = f.next_functions[0]
            return (_CONST if g is None else self.memo[g]), tuple(f._saved_self_sym_sizes)
        return s, shape

    # --- merging branches ---------------------------------------------------------------------

    def _merge(self, ops: list[tuple[_State, tuple[int, ...]]], out: tuple[int, ...],
               cat_dim: int | None = None) -> _State:
        """Element-wise (broadcasting) or concatenating along `cat_dim`: the union of the
        operands' fields; an operand broadcast over the map is a gate."""
        dep = [(s, sh) for s, sh in ops if s is not _CONST]
        if not dep:
            return _CONST
        nd = len(out)
        big = [(s, sh) for s, sh in dep
               if isinstance(s, _Field) and any(d is not None for d in s.dims)]
        fields: list[_Field] = []
        gated = False
        if not big:  # every field is one unit, or there is none
            for s, sh in dep:
                if s is _GATE:
                    gated = True
                elif s is None:
                    return None
                elif any(a != b for i, (a, b) in enumerate(zip(_aligned(sh, nd), out, strict=True))
                         if i != cat_dim):
                    return None  # one unit broadcast, but along which dims is not known
                else:
                    fields.append(_shifted(s, nd - len(sh)))
            return _union(fields, self.size, gated) if fields else _GATE
        dims = _mapped(big[0][0], nd - len(big[0][1]))
        spatial = {d[0] for d in dims if d is not None}
        if cat_dim in spatial:
            return None  # concatenated along rows or columns
        for s, sh in dep:
            off = nd - len(sh)
            bc = {d for d in spatial if d - off < 0 or sh[d - off] == 1}
            if bc:  # the same value at every position: a gate (or a row / column one: None)
                if bc != spatial:
                    return None
                gated = True
            elif isinstance(s, _Field) and _mapped(s, off) == dims:
                fields.append(_shifted(s, off))
            elif s is _GATE:
                gated = True
            else:
                return None  # input-dependent at every position, but without a field
        return _union(fields, self.size, gated)


class _LayoutWalk(_Walk):
    """The walk, following where rows and columns are also where a unit stops having a box.
    After a node that leaves no geometry, its output is taken as a new image (a field of its
    own): at the last two dims after a convolution or pooling of an input laid out
    (N, C, H, W); else at the dims of the nearest field it is computed from (an input's, or
    that input's nearest), where the output has that field's rows and columns there — an LSTM
    run along rows (Sequencer2d), attention within a map. Only `channels_last_layers` reads
    it: its fields say where rows and columns are, not which pixels a unit sees."""

    def __init__(self, leaf: Tensor, size: tuple[int, int]) -> None:
        super().__init__(leaf, size)
        # per node: the nearest field it is computed from, and that tensor's shape
        self.near: dict[object, tuple[_Field, tuple[int, ...]]] = {}

    def _node(self, n: object) -> _State:
        state = super()._node(n)
        out = _shape(n, 0)
        near = next((self.near[g] for g, _ in n.next_functions if g in self.near), None)
        if state is None and near is not None:
            state = self._anchored(n, out, *near)
        if isinstance(state, _Field):
            self.near[n] = (state, out)
        elif near is not None:
            self.near[n] = near
        return state

    @staticmethod
    def _anchored(n: object, out: tuple[int, ...], f: _Field, shape: tuple[int, ...]
                  ) -> _Field | None:
        if _HANDLERS.get(type(n).__name__) in (_conv, _pool, _adaptive):
            return _image(out[-2:], len(out)) if _last_two(f, shape) and len(out) >= 3 else None
        if len(out) == len(shape) and all(d is None or out[d[0]] == shape[d[0]] for d in f.dims):
            return _image(f.geo.shape, len(out), f.dims)
        return None


def _image(hw: tuple[int, ...], nd: int, dims: tuple[_Dim, _Dim] | None = None) -> _Field:
    """The field of an image of `hw` pixels whose rows and columns are at `dims` (default the
    last two of `nd` dims): every unit its own pixel."""
    h, w = int(hw[0]), int(hw[1])
    if dims is None:
        dims = ((nd - 2, 1) if h > 1 else None, (nd - 1, 1) if w > 1 else None)
    return _Field(LayerGeometry.of_input((h, w)), dims,
                  ((tuple(range(h)), tuple(range(1, h + 1))),
                   (tuple(range(w)), tuple(range(1, w + 1)))))


def _shape(node: object, i: int) -> tuple[int, ...]:
    """Shape of output `i` of an autograd node (what its backward receives)."""
    meta = node._input_metadata  # type: ignore[attr-defined]
    return tuple(int(v) for v in meta[i].shape) if i < len(meta) else ()


def _aligned(shape: tuple[int, ...], nd: int) -> tuple[int, ...]:
    return (1,) * (nd - len(shape)) + tuple(shape)


def _mapped(f: _Field, off: int) -> tuple[_Dim, _Dim]:
    return tuple(None if d is None else (d[0] + off, d[1]) for d in f.dims)  # type: ignore[return-value]


def _shifted(f: _Field, off: int) -> _Field:
    return f if off == 0 else _Field(f.geo, _mapped(f, off), f.spans, f.exact)


def _union(fields: list[_Field], size: tuple[int, int], gated: bool) -> _Field | None:
    """The union of fields on the same units: per axis the smallest first pixel and the largest
    last; None where the jumps or sizes differ, or the result is not exact."""
    f0 = fields[0]
    gated = gated or any(f.geo.gated for f in fields)
    if len(fields) == 1:
        return _Field(LayerGeometry(f0.geo.rows, f0.geo.cols, gated), f0.dims, f0.spans,
                      f0.exact)
    axes, spans = [], []
    for a, name in enumerate(("rows", "cols")):
        gs = [getattr(f.geo, name) for f in fields]
        if len({g.size for g in gs}) > 1 or len({g.jump for g in gs}) > 1:
            return None
        lo = tuple(min(v) for v in zip(*(f.spans[a][0] for f in fields), strict=True))
        hi = tuple(max(v) for v in zip(*(f.spans[a][1] for f in fields), strict=True))
        first = min(g.first for g in gs)
        end = max(g.first + g.rf for g in gs)
        axes.append(AxisGeometry(gs[0].size, gs[0].jump, end - first, first, max(hi)))
        spans.append((lo, hi))
    return _checked(LayerGeometry(axes[0], axes[1], gated), f0.dims, (spans[0], spans[1]), size)


def _checked(geo: LayerGeometry, dims: tuple[_Dim, _Dim], spans: tuple[_Spans, _Spans],
             size: tuple[int, int]) -> _Field | None:
    """The field if `geo`'s clipped box is every unit's interval, else None. A unit that
    reads only padding (an explicit padding layer's border) depends on no pixel: its box is
    where the lattice puts it."""
    for ax, (lo, hi), n in zip((geo.rows, geo.cols), spans, size, strict=True):
        if len(lo) != ax.size:
            return None
        for r in range(ax.size):
            top = max(ax.first + r * ax.jump, 0)
            bottom = min(ax.first + r * ax.jump + ax.rf, n, ax.reach)
            if lo[r] < hi[r] and (top, bottom) != (lo[r], hi[r]):
                return None
    return _Field(geo, dims, spans)


def _spans_then(spans: _Spans, win: Window, ax: int, out_n: int, n_in: int) -> _Spans:
    """Per output unit of `win` along `ax`: the union of the intervals of the taps that fall
    inside the input (padding reads nothing); (n_in, 0) where none does."""
    lo, hi = spans
    n = len(lo)
    s, p, k, d = win.stride[ax], win.padding[ax], win.kernel[ax], win.dilation[ax]
    new_lo, new_hi = [], []
    for o in range(out_n):
        start = o * s - p
        j0 = 0 if start >= 0 else -(start // d)  # first tap at or after position 0
        j1 = min(k - 1, (n - 1 - start) // d)  # last tap before position n
        if j0 > j1:
            new_lo.append(n_in)
            new_hi.append(0)
            continue
        taps = range(start + j0 * d, start + j1 * d + 1, d)
        new_lo.append(min(lo[t] for t in taps))
        new_hi.append(max(hi[t] for t in taps))
    return tuple(new_lo), tuple(new_hi)


def _windowed(f: _Field, win: Window, out_hw: tuple[int, int], dims: tuple[_Dim, _Dim],
              size: tuple[int, int]) -> _Field | None:
    """`f` through `win` (both axes), to an output of `out_hw` whose axes are `dims`."""
    geo = f.geo.then(win)
    if geo.shape != out_hw:
        return None
    spans = tuple(_spans_then(f.spans[a], win, a, out_hw[a], size[a]) for a in (0, 1))
    dims = tuple(d if n > 1 else None for d, n in zip(dims, out_hw, strict=True))
    return _checked(geo, dims, spans, size)  # type: ignore[arg-type]


def _last_two(f: _State, shape: tuple[int, ...]) -> bool:
    """Whether `f` is a field whose rows and columns are the last two dims of `shape`."""
    if not isinstance(f, _Field) or len(shape) < 3 or f.geo.shape != shape[-2:]:
        return False
    nd = len(shape)
    return all(d == (nd - 2 + a, 1) or (d is None and shape[nd - 2 + a] == 1)
               for a, d in enumerate(f.dims))


def _channels_last(f: _State, shape: tuple[int, ...]) -> bool:
    """Whether `f` is a field laid out (N, H, W, C): rows and columns at dims 1 and 2 (and
    not also its last two: a 1x1 map of one channel is (N, C, H, W))."""
    return (isinstance(f, _Field) and len(shape) == 4 and f.geo.shape == shape[1:3]
            and all(d == (1 + a, 1) or (d is None and shape[1 + a] == 1)
                    for a, d in enumerate(f.dims)) and not _last_two(f, shape))


def _sole(ins: list, i: int = 0) -> _State:
    """Input `i`'s state when every other input is constant (weights), else None."""
    if any(s is not _CONST for j, (s, _, _) in enumerate(ins) if j != i):
        return None
    return ins[i][0]


def dim_index(d: int, nd: int) -> int:
    """A dim an autograd node saved (`_saved_dim`), as an index into `nd` dims: a negative one
    comes back as uint64 (cat's or mean's -1 is 2**64 - 1)."""
    if d >= 2**63:
        d -= 2**64
    return d % nd if nd else 0


def _spatial(f: _Field) -> set[int]:
    return {d[0] for d in f.dims if d is not None}


def _relabel(f: _Field, new: dict[int, int]) -> _Field | None:
    """`f` with its dims renumbered by `new` (old -> new); None if one is not kept."""
    dims = []
    for d in f.dims:
        if d is not None:
            if d[0] not in new:
                return None
            d = (new[d[0]], d[1])
        dims.append(d)
    return _Field(f.geo, (dims[0], dims[1]), f.spans, f.exact)


def _dropped(f: _Field, removed: set[int], nd: int) -> _Field | None:
    """`f` after dims `removed` of an `nd`-dim tensor are gone."""
    keep = [d for d in range(nd) if d not in removed]
    return _relabel(f, {d: i for i, d in enumerate(keep)})


def _conv(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    f, shape = _sole(ins), ins[0][1]
    stride = tuple(n._saved_stride)
    if n._saved_transposed or len(stride) < 2 or not _last_two(f, shape):
        return None
    k = tuple(int(v) for v in n._saved_weight.shape[-2:])
    pad = tuple(n._saved_padding)  # one value for both sides: padding="valid" saves (0,)
    win = Window(k, stride[-2:], (pad * 2 if len(pad) == 1 else pad)[-2:],  # type: ignore[arg-type]
                 tuple(n._saved_dilation)[-2:])  # type: ignore[arg-type]
    return _windowed(f, win, out[-2:], ((len(out) - 2, 1), (len(out) - 1, 1)), w.size)


def _pool(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    f, shape = _sole(ins), ins[0][1]
    if not _last_two(f, shape):
        return None
    k = tuple(n._saved_kernel_size)
    stride = tuple(n._saved_stride) or k  # an empty stride is the kernel (F.max_pool2d(x, 2))
    k, stride = k * 2 if len(k) == 1 else k, stride * 2 if len(stride) == 1 else stride
    pad = tuple(n._saved_padding)
    pad = pad * 2 if len(pad) == 1 else pad
    dil = tuple(getattr(n, "_saved_dilation", (1, 1)))
    dil = dil * 2 if len(dil) == 1 else dil
    win = Window(k[-2:], stride[-2:], pad[-2:], dil[-2:],  # type: ignore[arg-type]
                 bool(n._saved_ceil_mode))
    return _windowed(f, win, out[-2:], ((len(out) - 2, 1), (len(out) - 1, 1)), w.size)


def _adaptive(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    """Adaptive pooling H -> h: the window of kernel = stride = H / h where h divides H and
    h > 1 (h = H > 1: the identity); to one unit (a global pooling, also of a 1x1 map: the same
    at any input size) or uneven: None."""
    f, shape = _sole(ins), ins[0][1]
    if not _last_two(f, shape) or tuple(out[-2:]) == (1, 1):
        return None
    ks = []
    for n_in, n_out in zip(shape[-2:], out[-2:], strict=True):
        if n_out == n_in:
            ks.append(1)
        elif n_out > 1 and n_in % n_out == 0:
            ks.append(n_in // n_out)
        else:
            return None
    win = Window((ks[0], ks[1]), (ks[0], ks[1]), (0, 0))
    return _windowed(f, win, out[-2:], ((len(out) - 2, 1), (len(out) - 1, 1)), w.size)


def _view(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    """A reshape keeps the row-major order: each axis's flat step, found again in `out`. An
    axis split into (blocks, r) adjacent dims (space-to-depth: TResNet's stem) becomes the
    blocks, a window of kernel = stride = r, the r positions within one a dim like channels."""
    f, shape = _sole(ins), ins[0][1]
    if not isinstance(f, _Field):
        return None
    dims, block = [], [1, 1]
    for a, (d, size) in enumerate(zip(f.dims, f.geo.shape, strict=True)):
        if d is not None:
            flat = d[1] * math.prod(shape[d[0] + 1:])
            for j in range(len(out)):
                sj = math.prod(out[j + 1:])
                if sj <= flat < sj * out[j]:
                    break
            else:
                return None
            if flat % sj:
                return None
            if flat * size > sj * out[j]:  # the axis is split across two dims
                if not (d[1] == 1 and flat == sj and j > 0 and out[j - 1] * out[j] == size):
                    return None
                block[a], d = out[j], (j - 1, 1)
            else:
                d = (j, flat // sj)
        dims.append(d)
    if block == [1, 1]:
        return _Field(f.geo, (dims[0], dims[1]), f.spans, f.exact)
    win = Window((block[0], block[1]), (block[0], block[1]), (0, 0))
    hw = tuple(g // b for g, b in zip(f.geo.shape, block, strict=True))
    return _windowed(f, win, hw, (dims[0], dims[1]), w.size)  # type: ignore[arg-type]


def _unshuffle(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    """pixel_unshuffle by r (space-to-depth): a window of kernel = stride = r."""
    f, shape = _sole(ins), ins[0][1]
    if not _last_two(f, shape):
        return None
    r = int(n._saved_downscale_factor)
    win = Window((r, r), (r, r), (0, 0))
    return _windowed(f, win, out[-2:], ((len(out) - 2, 1), (len(out) - 1, 1)), w.size)


def _permute(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    f, nd = _sole(ins), len(out)
    if not isinstance(f, _Field):
        return None
    name = type(n).__name__
    if name == "PermuteBackward0":
        order = [dim_index(d, nd) for d in n._saved_dims]  # out dim j is input dim order[j]
    else:  # a transpose: TBackward0 swaps the two dims of a matrix
        a, b = (0, 1) if name == "TBackward0" else (dim_index(n._saved_dim0, nd),
                                                      dim_index(n._saved_dim1, nd))
        order = list(range(nd))
        order[a], order[b] = b, a
    return _relabel(f, {d: j for j, d in enumerate(order)})


def _unsqueeze(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    f, k = _sole(ins), dim_index(n._saved_dim, len(out))
    if not isinstance(f, _Field):
        return None
    return _relabel(f, {d: d + (d >= k) for d in range(len(out) - 1)})


def _squeeze(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    f, shape = _sole(ins), ins[0][1]
    if not isinstance(f, _Field):
        return None
    nd = len(shape)
    saved = getattr(n, "_saved_dim", None)
    cand = (range(nd) if saved is None else
            [dim_index(saved, nd)] if isinstance(saved, int) else [dim_index(d, nd) for d in saved])
    return _dropped(f, {d for d in cand if shape[d] == 1}, nd)


def _select(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    """select / unbind along a dim that is not the rows' or columns'."""
    f, nd = _sole(ins), len(ins[0][1])
    if not isinstance(f, _Field):
        return None
    d = dim_index(n._saved_dim, nd)
    return None if d in _spatial(f) else _dropped(f, {d}, nd)


def _split(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    f = _sole(ins)
    if not isinstance(f, _Field):
        return None
    return None if dim_index(n._saved_dim, len(out)) in _spatial(f) else f


def _slice(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    """A slice along another dim keeps the field; along rows or columns, it is a crop: a
    window of kernel 1, stride `step`, starting at `start`."""
    f, shape = _sole(ins), ins[0][1]
    if not isinstance(f, _Field):
        return None
    d = dim_index(n._saved_dim, len(shape))
    axes = [a for a, dd in enumerate(f.dims) if dd is not None and dd[0] == d]
    if not axes:
        return f
    a = axes[0]
    if len(axes) > 1 or f.dims[a][1] != 1:  # type: ignore[index]
        return None  # rows and columns merged in one dim
    size = shape[d]
    start = n._saved_start if n._saved_start is not None else 0
    start = max(0, min(size, start + size if start < 0 else start))
    count = out[d]
    pad, stride = [0, 0], [1, 1]
    pad[a], stride[a] = -start, int(n._saved_step)
    end_pad = [0, 0]
    end_pad[a] = -(size - start - (count - 1) * stride[a] - 1)  # what follows the last unit
    win = Window((1, 1), (stride[0], stride[1]), (pad[0], pad[1]),
                 padding_end=(end_pad[0], end_pad[1]))
    hw = list(f.geo.shape)
    hw[a] = count
    return _windowed(f, win, (hw[0], hw[1]), f.dims, w.size)


def _pad(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    """Constant padding (also a negative one: a crop) of rows / columns: a window of kernel 1
    padded like it; padding of other dims keeps the field. Reflection and replication padding
    (`padding_mode="reflect"`, timm's blur pooling) as the same window, but a border unit reads
    the pixels it copies (`spans`): the next window is exact where those lie in its clipped box
    (a kernel wider than twice the padding), else it has no geometry."""
    f, shape = _sole(ins), ins[0][1]
    if not isinstance(f, _Field):
        return None
    copies = type(n).__name__ != "ConstantPadNdBackward0"
    pads = list(n._saved_padding if copies else n._saved_pad)
    nd = len(shape)

    def of(d: int) -> tuple[int, int]:  # (before, after) of dim d
        k = nd - 1 - d
        return (pads[2 * k], pads[2 * k + 1]) if 2 * k + 1 < len(pads) else (0, 0)
    before, after = [0, 0], [0, 0]
    for a, d in enumerate(f.dims):
        if d is None:
            if any(pads) and any(shape[j] == 1 and of(j) != (0, 0) for j in range(nd)):
                return None  # a size-1 dim padded: it may be this axis
            continue
        if of(d[0]) != (0, 0):
            if d[1] != 1 or sum(1 for dd in f.dims if dd and dd[0] == d[0]) > 1:
                return None
            before[a], after[a] = of(d[0])
    if before == [0, 0] and after == [0, 0]:
        return f
    win = Window((1, 1), (1, 1), (before[0], before[1]), padding_end=(after[0], after[1]))
    hw = tuple(f.geo.shape[a] + before[a] + after[a] for a in (0, 1))
    if not copies:
        return _windowed(f, win, hw, f.dims, w.size)  # type: ignore[arg-type]
    geo = f.geo.then(win)
    if geo.shape != hw:
        return None
    spans = []
    for a in (0, 1):
        lo, hi = f.spans[a]
        last = len(lo) - 1
        at = [o - before[a] for o in range(hw[a])]  # the input unit each output copies
        if type(n).__name__.startswith("Reflection"):
            src = [abs(i) if i < 0 else 2 * last - i if i > last else i for i in at]
        else:  # replication
            src = [min(max(i, 0), last) for i in at]
        spans.append((tuple(lo[i] for i in src), tuple(hi[i] for i in src)))
    return _Field(geo, f.dims, (spans[0], spans[1]), exact=False)


def _expand(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    f = _sole(ins)
    src = tuple(n._saved_self_sym_sizes)
    off = len(out) - len(src)
    grows = any(s == 1 and o > 1 for s, o in zip(src, out[off:], strict=True))
    if f is _GATE:
        return _GATE
    if not isinstance(f, _Field):
        return None
    if not grows or all(d is not None for d in f.dims):
        return _shifted(f, off)  # rows and columns (of size > 1) cannot grow
    return _GATE if all(d is None for d in f.dims) else None


def _reduce(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    """A reduction (mean, sum, max, ...) over dims that are not rows or columns keeps the
    field; over them, a unit mixes every position: None. So does one over the last two dims
    of maps (N, C, H, W) that are 1x1 (a global pooling on the meta device: None at any input
    size, as at one whose map is bigger)."""
    f, shape = _sole(ins), ins[0][1]
    if not isinstance(f, _Field):
        return None
    nd = len(shape)
    saved = getattr(n, "_saved_dim", None)
    if saved is None or (not isinstance(saved, int) and len(saved) == 0):
        dims = set(range(nd))
    else:
        dims = {dim_index(d, nd) for d in ([saved] if isinstance(saved, int) else saved)}
    if dims & _spatial(f) or (_last_two(f, shape) and {nd - 2, nd - 1} <= dims):
        return None
    return f if getattr(n, "_saved_keepdim", False) else _dropped(f, dims, nd)


def _layer_norm(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    f, shape = _sole(ins), ins[0][1]
    if not isinstance(f, _Field):
        return None
    k = len(n._saved_normalized_shape)
    return None if set(range(len(shape) - k, len(shape))) & _spatial(f) else f


def _norm_of_maps(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    """Group norm, instance norm (batch norm on the maps of one image, viewed as a batch of
    one): each map less a mean over the whole map, over its std, then scaled and shifted per
    channel. The statistics are one number per map (group) and image, broadcast over the map as
    a squeeze-and-excitation gate is: the map's field, `gated` set (a BiT's, a ResNetV2's
    stages keep their boxes)."""
    f = _sole(ins)
    if not isinstance(f, _Field) or tuple(ins[0][1]) != tuple(out):
        return None
    return _union([f], w.size, True)


def _matmul(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    """A linear layer on a matrix (N*H*W, C) whose rows are positions acts per position; so
    does a batched one, (B, N, C) @ (B, C, K) with positions along B and N (how older torch
    runs a linear layer on a non-contiguous (N, H, W, C) map)."""
    name = type(n).__name__
    i = 1 if name == "AddmmBackward0" else 0  # addmm(bias, mat1, mat2)
    f = _sole(ins, i)
    rows = {0, 1} if name == "BmmBackward0" else {0}
    if not isinstance(f, _Field) or _spatial(f) - rows:
        return None
    return f


def _cat(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    d = dim_index(n._saved_dim, len(out))
    return w._merge([(s, sh) for s, sh, _ in ins], out, cat_dim=d)


def _stack(w: _Walk, n: object, ins: list, out: tuple[int, ...]) -> _State:
    k = dim_index(n._saved_dim, len(out))
    ops = []
    for s, sh, _ in ins:  # each input gets the new dim k
        if isinstance(s, _Field):
            s = _relabel(s, {d: d + (d >= k) for d in range(len(sh))})
        ops.append((s, (*sh[:k], 1, *sh[k:])))
    return w._merge(ops, out, cat_dim=k)


_ELEMENTWISE = {
    f"{op}Backward{v}" for op, vs in {
        "Relu": "01", "Threshold": "01", "Hardtanh": "01", "Sigmoid": "01", "Tanh": "01",
        "Gelu": "01", "Silu": "01", "Mish": "01", "Hardswish": "01", "Hardsigmoid": "01",
        "Elu": "01", "LeakyRelu": "01", "Softplus": "0", "LogSigmoid": "0", "Celu": "01",
        "PreluKernel": "0", "Exp": "0", "Log": "0", "Abs": "0", "Neg": "0", "Sqrt": "0",
        "Rsqrt": "0", "Reciprocal": "0", "Pow": "012", "Erf": "0", "Clamp": "01",
        "ClampMin": "01", "ClampMax": "01", "Clone": "0", "Alias": "0", "ToCopy": "0",
        "NativeDropout": "0", "Add": "01", "Sub": "01", "Rsub": "01", "Mul": "01",
        "Div": "0123", "Maximum": "0", "Minimum": "0", "Where": "0", "Lerp": "01",
        "Addcmul": "0", "Addcdiv": "0", "NativeBatchNorm": "0", "CudnnBatchNorm": "0",
        "MiopenBatchNorm": "0", "NativeBatchNormLegitNoTraining": "0",
    }.items() for v in vs
}

_HANDLERS = {
    "ConvolutionBackward0": _conv,
    **dict.fromkeys(("MaxPool2DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0",
                     "AvgPool2DBackward0", "AvgPool3DBackward0"), _pool),
    **dict.fromkeys(("AdaptiveAvgPool2DBackward0", "AdaptiveMaxPool2DBackward0"), _adaptive),
    **dict.fromkeys(("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"), _view),
    **dict.fromkeys(("PermuteBackward0", "TransposeBackward0", "TBackward0"), _permute),
    "UnsqueezeBackward0": _unsqueeze,
    **dict.fromkeys(("SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2"), _squeeze),
    **dict.fromkeys(("SelectBackward0", "UnbindBackward0"), _select),
    **dict.fromkeys(("SplitBackward0", "SplitWithSizesBackward0"), _split),
    "SliceBackward0": _slice,
    "PixelUnshuffleBackward0": _unshuffle,
    **dict.fromkeys(("ConstantPadNdBackward0", *(f"{kind}Pad{d}DBackward0" for kind in (
        "Reflection", "Replication") for d in "123")), _pad),
    "ExpandBackward0": _expand,
    **dict.fromkeys(tuple(f"{op}Backward{v}" for op in (
        "Mean", "Sum", "Amax", "Amin", "Max", "Min", "Std", "Var", "Logsumexp", "Prod", "Norm")
        for v in "01"), _reduce),
    "NativeLayerNormBackward0": _layer_norm,
    "NativeGroupNormBackward0": _norm_of_maps,
    **dict.fromkeys(("AddmmBackward0", "MmBackward0", "BmmBackward0"), _matmul),
    "CatBackward0": _cat,
    "StackBackward0": _stack,
}


def _pointwise_function(n: object) -> bool:
    """A custom autograd function known to act on each position separately: zfnet's local
    response normalisation (it mixes maps, not positions)."""
    from zfnet.models.lrn import _LRN  # local: lrn is a model module

    return getattr(n, "_forward_cls", None) is _LRN


__all__ = [
    "LAYER_TYPES", "POINTWISE", "WINDOWED", "AxisGeometry", "LayerGeometry",
    "UnsupportedLayerError", "Window", "chain_geometry", "chain_sizes", "feature_size", "pair",
    "GeometryError", "channels_last_layers", "dim_index", "graph_geometry", "record_forward",
    "sequential_geometry", "sequential_leaves", "window_of",
]
