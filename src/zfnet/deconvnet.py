"""The deconvnet (paper Sec. 2.1, Fig. 1): project one activation down to pixels.

Run the images forward once, recording at every max-pool where each maximum came from (the
"switches"). In the chosen layer keep one activation, set the rest of that layer to zero, and go
back down layer by layer:

- **unpool**: each value goes to its recorded switch (values of overlapping pooling windows that
  share a switch add up, as in the transpose of the pooling);
- **rectify**: ReLU on the reconstructed signal, *not* masked by the forward activation;
- **filter**: transposed (flipped) convolution with the layer's own filters.

The same walk gives guided backpropagation (Springenberg et al. 2015: rectify *and* mask by the
forward activation) and the plain gradient (Simonyan et al. 2014: mask only), picked by `rule` —
one engine, one flag, as in Captum. The projection is seeded with the activation's own value, as
in the paper (Captum seeds with 1: divide by `RFProjection.activation` to compare, or give
`seed="one"`, which also projects units at or below zero).

Contrast normalisation (`nn.LocalResponseNorm`) on the way down is not described by the paper.
Default `lrn="gradient"`: the signal goes through the LRN's transposed Jacobian at the recorded
forward input — the same "transpose of the linearised layer" that the filtering step is for the
convolutions, and exactly what Captum and any autograd implementation do, so results compare
across tools. With the paper's parameters (k=2, small alpha) this is close to a per-pixel
rescaling by k^-beta. `lrn="identity"` passes the signal straight through (the "deconvnet as a
probe" view: normalisation only rescales, it selects nothing).

Speed. Going down from one activation, only its receptive field can be reached, so every step
works on a window of the feature map that grows from 1x1 to the receptive field (139x139 pixels
for zfnet's conv5) instead of the whole map, and many projections — several maps of one image,
many images — go down together as one batch after a single forward pass. This is where most of
the speed-up over one Captum call per feature map comes from; the rest (each measured with
`bench/bench_topk.py`, together about 2x, to 20x over Captum, see docs/results.md):

- what the way down reads is prepared once per forward pass, over the whole map, zero-padded
  by exactly how far windows can reach past its edge, channels last: each max-pool switch as
  its offset (dy, dx) in the pooling window (the scatter index of a window is then one add),
  the ReLU masks, and the two factors of the LRN's transposed Jacobian;
- windows are block copies from those maps into buffers re-used from batch to batch (fresh
  allocations of tens of MB cost more in page faults than the copies), and the unpooling
  scatters into a re-used channels-last buffer that the transposed convolution reads as is;
- a transposed convolution with a stride and few output channels (conv1, back to RGB) runs as
  one ordinary convolution with a filter per output phase, then the phases interleaved: 3-4x
  faster than oneDNN's transposed convolution for 3 output channels (slower for many);
- seeds go down 32 at a time on the CPU (faster than 64 there: the windows stay in cache).

On a GPU the same walk is bound by kernel launches and host copies instead (profiled on an
H200): windows are gathered in one indexing op rather than a copy each, no step reads a mask
back to the host, and seeds go down 256 at a time — with page-locked result copies in
`zfnet.analyses.gallery.project_topk`, a top-9 gallery went from 3.0 s to 0.54 s there.

Which models. Layers are named as everywhere in the project (`zfnet.models.resolve_layer`):
`conv1`…`conv5` and the modules around them (`relu1`, `pool1`, `norm1`, …, `pool5`) for zfnet's
models, module paths such as `features.10` for torchvision's alexnet and vgg, `layer3` for a
ResNet, or the module object. This windowed engine walks layers of the model's convolutional
chain — `model.features` (or the model itself) as an `nn.Sequential` of Conv2d, ReLU,
MaxPool2d, LocalResponseNorm, BatchNorm2d, Dropout(2d) and Identity modules (the layer types of
`zfnet.models.geometry` that have a rule for the way down; kernels, strides, padding and
dilation per axis, windows as that module computes them); that chain's input is the model's
input. Any other layer takes the general path (`zfnet.graph`), with the same rules, and so does
a model with forward hooks on it (`zfnet.models.hooked`: a hook that changes a module's output
is in the forward pass the general path differentiates; a walk would apply it on the way up
only). The model is walked in eval mode, zfnet puts no hook on it for the walk, and it is left
exactly as it was (in-place ReLUs are evaluated out of place; training flags are restored, also
after an exception).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zfnet.activations import check_images, running, to_model
from zfnet.graph import (  # noqa: F401  (RULES, SEEDS: also read here)
    RULES,
    SEEDS,
    check_rule,
    check_seed,
    indices,
    seed_values,
    seeds_from,
)
from zfnet.models import (  # eval_mode also importable here
    chain_checked,
    chain_root,
    chain_runs_as_forward,
    eval_mode,
    hooked,
    layer_names,
    resolve_layer,
)
from zfnet.models.geometry import (
    LAYER_TYPES,
    Window,
    chain_geometry,
    sequential_leaves,
    window_of,
)
from zfnet.models.lrn import lrn_factors, lrn_vjp

PRECISIONS = ("float32", "bfloat16")
LRN_MODES = ("gradient", "identity")

# The layer types the geometry knows, less those with no rule for the way down (each rule
# below is for rectifiers and max-pooling).
_NO_RULE_DOWN = (nn.AvgPool2d, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)
_SUPPORTED = tuple(t for t in LAYER_TYPES if t not in _NO_RULE_DOWN)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """`precision` as `project_layers` takes it: "auto" is bfloat16 where `device` computes it
    natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else float32; float32 and
    bfloat16 are kept. Anything else: a ValueError naming the valid values."""
    if precision == "auto":  # where `--amp auto` computes in bf16
        from zfnet.train.recipe import amp_dtype_for

        device = torch.device(device)
        native = device.type in ("cpu", "cuda") and \
            amp_dtype_for("auto", device) is torch.bfloat16
        return "bfloat16" if native else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not known; valid: auto, "
                         f"{', '.join(PRECISIONS)}")
    return precision


@dataclass
class RFProjection:
    """Projections cropped to each activation's receptive field (one row per seed).

    `values[s]` covers input rows `top[s] : top[s] + rf` and columns `left[s] : left[s] + rf`;
    the part outside the image (`top` < 0 near the border) is zero. On the general path
    (`zfnet.graph`: a layer that is not in a plain chain) each projection covers the whole
    input: `top` = `left` = 0, rf = the input's sides.
    """

    values: Tensor  # (S, C_in, rf, rf) projection, in the units of the model input (rf per axis)
    top: Tensor  # (S,) int64, input row of values[s, :, 0, 0] (can be negative)
    left: Tensor  # (S,) int64
    activation: Tensor  # (S,) the seed: the activation's value in `layer`
    row: Tensor  # (S,) int64 position of the activation in `layer`'s map
    col: Tensor  # (S,) int64


def feature_chain(model: nn.Module, layer: str) -> list[tuple[str, nn.Module]]:
    """The modules from the model's input up to and including `layer`, as (path, module).

    The chain is `model.features` (or `model` itself) as an `nn.Sequential`, nested Sequentials
    flattened. Errors name the layer and list the valid ones.
    """
    path, target = resolve_layer(model, layer)
    found = chain_root(model)
    if found is not None:
        root, prefix = found
    else:
        raise ValueError(
            f"{type(model).__name__} has no `features` nn.Sequential: the deconvnet walks a "
            "sequential chain of conv/relu/pool/norm modules"
        )
    leaves = sequential_leaves(root, prefix)
    paths = [p for p, _ in leaves]
    if isinstance(target, nn.Sequential):  # a block: its output is its last leaf's output
        inside = [p for p in paths if p.startswith(path + ".")]
        path = inside[-1] if inside else path
    if path not in paths:
        where = prefix.rstrip(".") or "model"
        raise ValueError(
            f"layer {layer!r} ({path}) is not in the convolutional chain {where} that the "
            f"deconvnet projects; valid: {', '.join(_user_names(model, paths))}"
        )
    chain = leaves[: paths.index(path) + 1]
    for p, m in chain:
        if not isinstance(m, _SUPPORTED):
            raise ValueError(
                f"module {p} ({type(m).__name__}) is on the way down from {layer!r} but the "
                f"deconvnet only knows {', '.join(c.__name__ for c in _SUPPORTED)}"
            )
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise ValueError(f"conv {p} uses padding_mode={m.padding_mode!r}; only 'zeros' works")
        if isinstance(m, nn.BatchNorm2d) and m.running_var is None:
            raise ValueError(f"batch norm {p} keeps no running statistics; cannot project")
    return chain


def _user_names(model: nn.Module, paths: list[str]) -> list[str]:
    """The names users type for module `paths` (zfnet's short ones where they exist), without
    a forward pass: `project_layers` builds this message for every layer off the chain."""
    by_path = {p: n for n, p in reversed(layer_names(model).items())}  # short names win
    return [by_path.get(p, p) for p in paths]


@dataclass
class _Trace:
    """What one forward pass leaves for the way down (never attached to the model)."""

    outputs: dict[int, Tensor]  # step -> (N, C, h, w) activations of a chosen layer
    sizes: list[tuple[int, int]]  # spatial size of each chain step's input, then the output's
    channels_in: int  # channels of the model input
    saved: dict[int, Tensor]  # step -> pool switches / relu output / LRN input, (N, C, h, w)
    windows: list[Window | None]  # step -> its conv / pool window, None for point-wise steps
    # Filled for the way down (`_prepare`): per step, how far windows at its output reach
    # beyond the map, and the saved tensors zero-padded by that much, channels last.
    margins: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    padded: dict[int, Tensor] = field(default_factory=dict)  # (N, H + mt + mb, W + ml + mr, C)
    offsets: dict[tuple[int, int], Tensor] = field(default_factory=dict)  # (step, wi) -> unpool
    buffers: dict[tuple[int, ...], Tensor] = field(default_factory=dict)  # see `_buffer`
    phase_weights: dict[int, Tensor] = field(default_factory=dict)  # see `_phase_weight`


def _forward(chain: list[tuple[str, nn.Module]], x: Tensor, rule: str, lrn: str,
             keep: set[int]) -> _Trace:
    sizes: list[tuple[int, int]] = []
    saved: dict[int, Tensor] = {}
    outputs: dict[int, Tensor] = {}
    channels_in = x.shape[1]
    with torch.no_grad():
        for i, (_, m) in enumerate(chain):
            sizes.append((x.shape[-2], x.shape[-1]))
            if isinstance(m, nn.MaxPool2d):
                x, saved[i] = F.max_pool2d(
                    x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                    return_indices=True,
                )  # switches: flat index into the input plane
            elif isinstance(m, nn.ReLU):
                x = torch.relu(x)  # out of place, whatever the module's `inplace` says
                if rule != "deconvnet":
                    saved[i] = x > 0  # gates guided backprop and the gradient
            else:
                if isinstance(m, nn.LocalResponseNorm) and lrn == "gradient":
                    saved[i] = x
                x = m(x)
            if i in keep:
                outputs[i] = x
        sizes.append((x.shape[-2], x.shape[-1]))
    return _Trace(outputs=outputs, sizes=sizes, channels_in=channels_in, saved=saved,
                  windows=[window_of(m) for _, m in chain])


def _prepare(chain: list[tuple[str, nn.Module]], trace: _Trace) -> None:
    """Record how far windows of seeds anywhere in the chain's output reach past each step's
    output map (the seeds at the first and the last row / column reach farthest)."""
    h, w = trace.sizes[len(chain)]
    top, left, wh, ww = torch.tensor([0, h - 1]), torch.tensor([0, w - 1]), 1, 1
    for i in reversed(range(len(chain))):
        oh, ow = trace.sizes[i + 1]
        old = trace.margins.get(i, (0, 0, 0, 0))
        new = (max(0, -int(top.min())), max(0, int(top.max()) + wh - oh),
               max(0, -int(left.min())), max(0, int(left.max()) + ww - ow))
        trace.margins[i] = tuple(max(a, b) for a, b in zip(old, new, strict=True))
        win = trace.windows[i]
        if win is not None:
            top, left, wh, ww = win.input_window(top, left, wh, ww)


def _padded(chain: list[tuple[str, nn.Module]], trace: _Trace, i: int) -> Tensor:
    """What the way down reads at step i, over the whole map, zero-padded by the step's
    margins, channels last: (N, H', W', ...). Computed once per forward pass.

    - max-pool: the switch as its offset (dy, dx) in the pooling window, (N, H', W', 2, C)
      int64; zero in the padding (the window's corner);
    - ReLU: the forward activation > 0, (N, H', W', C);
    - LRN: its input x and the two factors of its transposed Jacobian (`lrn_vjp`),
      (N, H', W', 3, C)."""
    if i not in trace.padded:
        mt, mb, ml, mr = trace.margins[i]
        t = trace.saved[i]
        m = chain[i][1]
        if isinstance(m, nn.MaxPool2d):
            (s0, s1), (p0, p1) = trace.windows[i].stride, trace.windows[i].padding
            wi = trace.sizes[i][1]
            n, c, h, w = t.shape
            iy = t.div(wi, rounding_mode="floor")
            dx = t - iy * wi - (torch.arange(w, device=t.device) * s1 - p1)
            dy = iy - (torch.arange(h, device=t.device) * s0 - p0)[:, None]
            t = torch.stack([dy, dx], -1).permute(0, 2, 3, 4, 1)
        elif isinstance(m, nn.LocalResponseNorm):
            factors = lrn_factors(t, m.size, m.alpha, m.beta, m.k)
            t = torch.stack([t, *factors], -1).permute(0, 2, 3, 4, 1)
        else:
            t = t.permute(0, 2, 3, 1)
        pad = (0, 0) * (t.ndim - 3) + (ml, mr, mt, mb)
        trace.padded[i] = F.pad(t, pad).contiguous()
    return trace.padded[i]


def _gather(p: Tensor, margins: tuple[int, int, int, int], img: Tensor, top: Tensor,
            left: Tensor, h: int, w: int, out: Tensor | None) -> Tensor:
    """Windows `p[img[s], top[s]:top[s]+h, left[s]:left[s]+w]` of a padded channels-last map
    (N, H', W', ...) whose row 0 is map row -margins[0]: (S, h, w, ...).

    With `out` (on the CPU), one block copy per window into it: as fast as one
    advanced-indexing gather, and it can fill a re-used buffer (a fresh one of tens of MB costs
    more in page faults than the copy). Without (on a GPU, where a copy per window is a kernel
    launch per window), one advanced-indexing gather."""
    if out is None:
        dev = p.device
        rows = (top + margins[0])[:, None] + torch.arange(h, device=dev)  # (S, h)
        cols = (left + margins[2])[:, None] + torch.arange(w, device=dev)  # (S, w)
        return p[img[:, None, None], rows[:, :, None], cols[:, None, :]]
    rows = (top + margins[0]).tolist()
    cols = (left + margins[2]).tolist()
    for s, (n, r, c) in enumerate(zip(img.tolist(), rows, cols, strict=True)):
        out[s] = p[n, r: r + h, c: c + w]
    return out


def _gather_into(chain: list[tuple[str, nn.Module]], trace: _Trace, key: tuple, p: Tensor,
                 shape: tuple[int, ...]) -> Tensor | None:
    """The buffer `_gather` copies windows into on the CPU; None (one gather) elsewhere."""
    return _buffer(chain, trace, key, shape, p) if p.device.type == "cpu" else None


def _window(chain: list[tuple[str, nn.Module]], trace: _Trace, i: int, img: Tensor, top: Tensor,
            left: Tensor, h: int, w: int) -> Tensor:
    """Step i's windows (`_padded`) moved to (S, C, h, w) or (S, 3, C, h, w), channels last."""
    p = _padded(chain, trace, i)
    win = _gather(p, trace.margins[i], img, top, left, h, w,
                  _gather_into(chain, trace, ("window", i), p, (len(img), h, w, *p.shape[3:])))
    return win.movedim(1, -1).movedim(1, -1)


def _unpool_index(chain: list[tuple[str, nn.Module]], trace: _Trace, i: int, img: Tensor,
                  top: Tensor, left: Tensor, h: int, w: int, wi: int) -> Tensor:
    """For every value of the pooled windows, the flat position of its switch in the input
    window (side wi): (S, h*w, C) int64, laid out like a channels-last (S, C, h, w)."""
    key = (i, wi)
    if key not in trace.offsets:  # dy * wi + dx over the whole (padded) map, once per width
        dy, dx = _padded(chain, trace, i).unbind(3)
        trace.offsets[key] = torch.add(dx, dy, alpha=wi)
    off = trace.offsets[key]
    idx = _gather(off, trace.margins[i], img, top, left, h, w,
                  _gather_into(chain, trace, ("offsets", i), off, (len(img), h, w, off.shape[3])))
    s0, s1 = trace.windows[i].stride
    dev = idx.device
    base = (torch.arange(h, device=dev) * (s0 * wi))[:, None] + torch.arange(w, device=dev) * s1
    return idx.add_(base[None, :, :, None]).reshape(idx.shape[0], h * w, -1)


def _buffer(chain: list[tuple[str, nn.Module]], trace: _Trace, key: tuple, shape: tuple[int, ...],
            like: Tensor) -> Tensor:
    """An uninitialised tensor of `shape` for the way down at step key[-1], re-used from batch
    to batch (writing memory already mapped is several times faster than a fresh large
    allocation) where a convolution further down makes a new tensor, so that no result
    handed back can share it."""
    i = key[-1]
    if not any(isinstance(m, nn.Conv2d) for _, m in chain[:i]):
        return like.new_empty(shape)
    key = (*key, *shape)
    buf = trace.buffers.get(key)
    if buf is None or buf.dtype != like.dtype:
        buf = trace.buffers[key] = like.new_empty(shape)
    return buf


def _by_phases(m: nn.Conv2d, win: Window) -> bool:
    """Whether to run the transposed conv as s0*s1 ordinary convolutions (`_phase_weight`):
    3-4x faster than oneDNN's transposed conv when it has few output channels (a first layer,
    to RGB) and a stride (measured for zfnet's conv1 and alexnet's), slower otherwise."""
    return (m.in_channels <= 16 and m.groups == 1 and win.dilation == (1, 1)
            and win.stride != (1, 1))


def phase_weights(weight: Tensor, stride: tuple[int, int]) -> Tensor:
    """Filters (C_out, C_in, k0, k1) rearranged for `conv_transpose_phases`:
    (s0*s1*C_in, C_out, a0, a1), channels last.

    Output row s0*y + r of the transposed conv (stride s0, kernel k0) sums the taps
    r, r + s0, … (a0 = ceil(k0 / s0) of them) over input rows y, y - 1, …: an ordinary
    convolution of the input per phase r, with those taps flipped."""
    wt = weight.detach()  # (C_out, C_in, k0, k1), C_out = channels of the signal g
    (k0, k1), (s0, s1) = wt.shape[-2:], stride
    a0, a1 = -(-k0 // s0), -(-k1 // s1)
    out = wt.new_zeros(s0, s1, wt.shape[1], wt.shape[0], a0, a1)
    for r in range(s0):
        for q in range(s1):
            sub = wt[:, :, r::s0, q::s1]  # taps (r + s0 t, q + s1 u)
            t, u = sub.shape[-2:]
            out[r, q, :, :, a0 - t:, a1 - u:] = sub.flip(-2, -1).transpose(0, 1)
    return out.reshape(-1, wt.shape[0], a0, a1).contiguous(memory_format=torch.channels_last)


def conv_transpose_phases(g: Tensor, weight: Tensor, stride: tuple[int, int], in_channels: int,
                          hi: int, wi: int) -> Tensor:
    """`F.conv_transpose2d(g, w, stride=stride)` (padding 0, dilation 1) as one convolution
    with a filter per output phase (`weight` = `phase_weights(w, stride)`), then the phases
    interleaved, the first (hi, wi) rows and columns, zeros where no window reaches:
    (S, C_in, hi, wi). 3-4x faster than
    oneDNN's transposed convolution for few output channels (conv1 back to RGB)."""
    s0, s1 = stride
    a0, a1 = weight.shape[-2:]
    y = F.conv2d(g, weight, padding=(a0 - 1, a1 - 1))  # (S, s0*s1*C_in, h + a0 - 1, w + a1 - 1)
    n, _, m0, m1 = y.shape
    y = y.view(n, s0, s1, in_channels, m0, m1).permute(0, 3, 4, 1, 5, 2)
    y = y.reshape(n, in_channels, m0 * s0, m1 * s1)[..., :hi, :wi]
    if y.shape[-2] < hi or y.shape[-1] < wi:  # the last rows / columns no window reads (a
        y = F.pad(y, (0, wi - y.shape[-1], 0, hi - y.shape[-2]))  # stride 7 over 64 pixels)
    return y


def _phase_weight(trace: _Trace, i: int, m: nn.Conv2d) -> Tensor:
    """conv i's `phase_weights`, made once per forward pass."""
    if i not in trace.phase_weights:
        trace.phase_weights[i] = phase_weights(m.weight, trace.windows[i].stride)
    return trace.phase_weights[i]


def _keep_inside(g: Tensor, top: Tensor, left: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero the parts of windows that fall outside the feature map (its padding), in place."""
    h, w = g.shape[-2:]
    rows = top[:, None] + torch.arange(h, device=g.device)  # (S, h)
    cols = left[:, None] + torch.arange(w, device=g.device)  # (S, w)
    ok_r = (rows >= 0) & (rows < size[0])
    ok_c = (cols >= 0) & (cols < size[1])
    # The shortcut reads the masks back: worth it on the CPU, a stall per step on a GPU.
    if g.device.type == "cpu" and bool(ok_r.all()) and bool(ok_c.all()):
        return g
    return g.mul_((ok_r[:, :, None] & ok_c[:, None, :])[:, None].to(g.dtype))


def _down(
    chain: list[tuple[str, nn.Module]], trace: _Trace, img: Tensor, g: Tensor,
    top: Tensor, left: Tensor, rule: str, lrn: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Walk the windows `g` (S, C, h, w) at the chain's output down to the input.

    Windows are kept channels last (the layout oneDNN's transposed convolution is fastest in
    and the unpooling scatters in) except the smallest ones."""
    for i in reversed(range(len(chain))):
        _, m = chain[i]
        win = trace.windows[i]
        size = trace.sizes[i]
        h, w = g.shape[-2:]
        if isinstance(m, nn.Conv2d):
            # Transposed filters; with padding 0 the result is exactly the window the inputs
            # of these outputs span, (h-1)*s + d*(k-1) + 1 on a side.
            if h * w >= 64:  # oneDNN is 2-3x faster so on large windows, slower on tiny ones
                g = g.contiguous(memory_format=torch.channels_last)
            else:
                g = g.contiguous()
            top, left, hi, wi = win.input_window(top, left, h, w)
            if _by_phases(m, win):
                g = conv_transpose_phases(g, _phase_weight(trace, i, m), win.stride,
                                          m.in_channels, hi, wi)
            else:
                g = F.conv_transpose2d(g, m.weight, stride=m.stride, dilation=m.dilation,
                                       groups=m.groups)  # (S, C_in, h', w')
            g = _keep_inside(g, top, left, size)
        elif isinstance(m, nn.MaxPool2d):
            ti, li, hi, wi = win.input_window(top, left, h, w)
            idx = _unpool_index(chain, trace, i, img, top, left, h, w, wi)  # (S, h*w, C)
            # Unpool: scatter-add, so that two windows sharing a switch both count (the
            # transpose of max-pooling, and what autograd does). Window positions outside the
            # map carry zeros and padding's switch (0, 0), which is inside the window.
            n, c = g.shape[:2]
            src = g.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view when channels last
            out = _buffer(chain, trace, ("unpool", i), (n, hi * wi, c), g).zero_()
            out.scatter_add_(1, idx, src)
            g, top, left = out.view(n, hi, wi, c).permute(0, 3, 1, 2), ti, li
        elif isinstance(m, nn.ReLU):
            if rule == "deconvnet":
                g = g.clamp_(min=0)
            else:
                on = _window(chain, trace, i, img, top, left, h, w)
                g = (g.clamp(min=0) if rule == "guided" else g) * on
        elif isinstance(m, nn.LocalResponseNorm):
            if lrn == "gradient":
                # LRN mixes channels at one pixel only, so its Jacobian on a window is exact.
                x, d_b, q = _window(chain, trace, i, img, top, left, h, w).unbind(1)
                g = lrn_vjp(x, g, m.size, d_b, q)
        elif isinstance(m, nn.BatchNorm2d):
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = scale * m.weight
            g = g * scale.detach()[None, :, None, None]
        # Dropout, Dropout2d, Identity: the identity in eval mode.
    return g, top, left


def _check_rule(rule: str, lrn: str) -> None:
    check_rule(rule)
    if lrn not in LRN_MODES:
        raise ValueError(f"lrn={lrn!r} is not known; valid: {', '.join(LRN_MODES)}")


@dataclass
class Seeds:
    """S activations of one layer to project: seed s is map `channels[s]` of image
    `image_index[s]` at `positions[s]` = (row, col), or at the map's strongest unit if None."""

    image_index: Tensor | Sequence[int]  # (S,)
    channels: Tensor | Sequence[int]  # (S,)
    positions: Tensor | None = None  # (S, 2)


def project_layers(
    model: nn.Module,
    images: Tensor,
    seeds: dict[str, Seeds],
    rule: str = "deconvnet",
    *,
    lrn: str = "gradient",
    batch_size: int | None = None,
    precision: str = "float32",
    forward: Forward | None = None,
    seed: str = "activation",
    progress: Callable[[int], None] | None = None,
) -> dict[str, RFProjection]:
    """Project seeds of several layers of the same images with one forward pass (Fig. 2).

    images (N, C, H, W) go forward once, up to the deepest layer named in `seeds`; each
    layer's seeds then go down `batch_size` at a time (None: on the CPU 32 for the windowed
    engine, 16 for the general path — measured fastest, the working set stays in cache —, 256
    on a GPU, where fewer, larger launches pay), cropped to their receptive fields.
    Returns {layer: RFProjection} with values (S, C, rf, rf).

    Layers of a plain chain (`model.features` or the model as an `nn.Sequential` of conv,
    ReLU, max-pool, LRN, batch-norm modules) take the windowed engine of this module; any
    other layer of any model (ResNet blocks, DenseNet, fully connected layers …) the general
    path, `zfnet.graph`, with the same rules and results (each projection covering the whole
    input). Every seed goes down with its activation's value clamped at 0: a unit that is not
    active (a map whose strongest activation is <= 0) has nothing to show, its projection is 0;
    `seed="one"` sends 1 instead, whatever the value, as Captum does (the same pictures for an
    active unit, scaled by 1/activation; a unit below zero, a class score, shows what would
    raise it).
    `precision="bfloat16"`: the general path's signals go down in bf16 (about 2x faster on a
    CPU with native bf16, cosine to float32 > 0.9999 on resnet18); the windowed engine always
    works in the model's dtype. forward: a `forward_pass` of these images, reused instead of
    a new one (layers of the plain chain only). progress: called with the number of seeds
    that went down, after each batch of them (a bar over a long projection).
    """
    _check_rule(rule, lrn)
    check_seed(seed)
    check_images(images)
    x = to_model(model, images)  # on the model's device, whatever the images' one
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not known; valid: {', '.join(PRECISIONS)}")
    if forward is not None:
        if forward.model is not model or forward.lrn != lrn or \
                forward.images.shape != x.shape:
            raise ValueError("forward was made for other images, another model or lrn mode")
        off = [name for name in seeds if name not in forward.chains]
        if off:
            raise ValueError(f"forward does not reach {', '.join(off)}; it was made for "
                             f"{', '.join(forward.chains)}")
    else:
        maybe = {name: _chain_or_none(model, name, x) for name in seeds}
        if any(c is None for c in maybe.values()):
            # the general path: 16 signals a pass on a CPU (measured fastest, the working set
            # stays in cache: 1.5x faster than 64 on resnet18), 256 on a GPU
            return _project_graph(model, x, seeds, rule, lrn,
                                  batch_size or (16 if x.device.type == "cpu" else 256),
                                  precision, seed, progress)
        forward = _forward_pass(model, x, maybe, rule, lrn)  # type: ignore[arg-type]
    if batch_size is None:
        batch_size = 32 if x.device.type == "cpu" else 256
    trace = forward.trace
    # no_grad: the weights require grad, and an autograd graph kept alive by the results
    # would hold every intermediate window of the way down.
    with eval_mode(model), torch.no_grad():
        out = {}
        for name in seeds:
            out[name] = _project_seeds(forward.chains[name], trace, name, seeds[name],
                                       forward.images.shape[0], rule, lrn, batch_size, seed,
                                       progress)
            trace.offsets.clear()  # window sizes differ from layer to layer
            trace.buffers.clear()
        return out


@dataclass
class Forward:
    """One forward pass of `images` along a model's plain chain, kept to project seeds of its
    layers again and again, by any rule (an explorer's clicks on one image): give it to
    `project_layers(..., forward=)`. Made by `forward_pass`; holds the switches, rectifier
    masks and the layers' outputs, never anything on the model."""

    model: nn.Module
    images: Tensor  # (N, C, H, W) on the model's device
    chains: dict[str, list[tuple[str, nn.Module]]]  # layer -> its chain
    lrn: str
    trace: _Trace = field(repr=False)


def forward_pass(model: nn.Module, images: Tensor, layers: str | Sequence[str], *,
                 lrn: str = "gradient") -> Forward | None:
    """The forward pass `project_layers` makes, kept for reuse (`Forward`): None when a layer
    is off the model's plain chain (the general path makes its own pass each time)."""
    _check_rule("deconvnet", lrn)
    if isinstance(layers, str):  # one name, not its letters
        layers = [layers]
    x = to_model(model, images)
    chains = {name: _chain_or_none(model, name, x) for name in layers}
    if not chains or any(c is None for c in chains.values()):
        return None
    return _forward_pass(model, x, chains, None, lrn)  # type: ignore[arg-type]


def _forward_pass(model: nn.Module, x: Tensor, chains: dict[str, list[tuple[str, nn.Module]]],
                  rule: str | None, lrn: str) -> Forward:
    """One pass to the deepest of `chains`, prepared for seeds of each; rule None: rectifier
    masks kept for every rule."""
    chain = max(chains.values(), key=len)
    for name, c in chains.items():
        if chain[: len(c)] != c:
            raise ValueError(f"layer {name!r} is not on the chain to {chain[-1][0]}")
    with eval_mode(model), torch.no_grad(), running(model, x):
        trace = _forward(chain, x, rule or "guided", lrn, {len(c) - 1 for c in chains.values()})
        for c in chains.values():
            _prepare(c, trace)
    return Forward(model, x, dict(chains), lrn, trace)


def windowed(model: nn.Module, layers: Sequence[str], x: Tensor | None = None) -> bool:
    """Whether `project_layers` takes `layers`, seeded together, down the windowed engine
    (projections cropped to receptive fields) rather than the general path (each projection
    covering the whole input): whether every one of them lies on the model's plain chain, which
    its forward runs as written (`chain_runs_as_forward`: checked on `x`, a model input, where
    not known yet)."""
    return all(_chain_or_none(model, name, x) is not None for name in layers)


def _chain_or_none(model: nn.Module, layer: str, x: Tensor | None = None
                   ) -> list[tuple[str, nn.Module]] | None:
    """The chain the windowed engine walks down from `layer`, or None when it cannot (the
    general path will): off the chain, or the model's forward does not run the chain as it is
    written (checked on the model input `x` once per model; without `x`, only a model found so
    before); a layer that does not exist is an error either way."""
    resolve_layer(model, layer)
    try:
        chain = feature_chain(model, layer)
    except ValueError:
        return None
    if x is not None:
        return chain if chain_runs_as_forward(model, x) else None
    return None if chain_checked(model) is False or hooked(model) else chain


def _project_graph(model: nn.Module, x: Tensor, seeds: dict[str, Seeds], rule: str, lrn: str,
                   batch_size: int, precision: str = "float32", seed: str = "activation",
                   progress: Callable[[int], None] | None = None) -> dict[str, RFProjection]:
    """`project_layers` on the general path (`zfnet.graph`): whole-input projections."""
    from zfnet import graph

    if lrn != "gradient":
        raise ValueError(f"lrn={lrn!r} is for the windowed engine's chains only; layers "
                         f"{', '.join(seeds)} take the general path, where contrast "
                         "normalisation goes back through its gradient (lrn='gradient')")
    n = x.shape[0]
    resolved = {name: resolve_layer(model, name) for name in seeds}
    modules = {name: module for name, (_, module) in resolved.items()}
    parsed = {}
    for name, sd in seeds.items():
        img, ch, pos = graph.seeds_from(sd.image_index, sd.channels, sd.positions)
        if img.numel() and (img.min() < 0 or img.max() >= n):
            raise ValueError(f"image_index must lie in [0, {n}), got {img.tolist()}")
        parsed[name] = (img, ch, pos)
    with eval_mode(model):
        res = graph.project_graph(model, x, modules, parsed, rule, seed_batch=batch_size,
                                  dtype=None if precision == "float32" else torch.bfloat16,
                                  seed=seed, progress=progress)
    out = {}
    for name, (proj, value, row, col) in res.items():
        top = torch.zeros(proj.shape[0], dtype=torch.long)  # whole-input projections
        out[name] = RFProjection(proj, top, top.clone(), value.to(proj.device), row, col)
    return out


def _project_seeds(chain: list[tuple[str, nn.Module]], trace: _Trace, layer: str, seeds: Seeds,
                   n_images: int, rule: str, lrn: str, batch_size: int,
                   seed: str = "activation",
                   progress: Callable[[int], None] | None = None) -> RFProjection:
    act = trace.outputs[len(chain) - 1]  # (N, C, h, w)
    n, c, h, w = act.shape
    dev = act.device
    img, ch, pos = seeds_from(seeds.image_index, seeds.channels, seeds.positions)
    img, ch = img.to(dev), ch.to(dev)
    if img.numel() and (img.min() < 0 or img.max() >= n_images):
        raise ValueError(f"image_index must lie in [0, {n_images}), got {img.tolist()}")
    if ch.numel() and (ch.min() < 0 or ch.max() >= c):
        raise ValueError(f"channels must lie in [0, {c}) for layer {layer!r}, got {ch.tolist()}")
    if pos is None:
        flat = act[img, ch].flatten(1).argmax(1)  # first maximum on ties
        row, col = flat // w, flat % w
    else:
        pos = pos.to(dev)
        row, col = pos[:, 0], pos[:, 1]
        if bool(((row < 0) | (row >= h) | (col < 0) | (col >= w)).any()):
            raise ValueError(f"positions must lie in the {h}x{w} map of {layer!r}")
    value = act[img, ch, row, col]
    parts, tops, lefts = [], [], []
    for lo in range(0, img.numel(), batch_size):
        sl = slice(lo, lo + batch_size)
        s = img[sl].numel()
        g = act.new_zeros(s, c, 1, 1)  # the chosen activation alone, everything else zero
        g[torch.arange(s, device=dev), ch[sl], 0, 0] = seed_values(value[sl], seed)
        g, top, left = _down(chain, trace, img[sl], g, row[sl], col[sl], rule, lrn)
        parts.append(g.contiguous())
        tops.append(top)
        lefts.append(left)
        if progress is not None:
            progress(s)
    if not parts:  # no seeds: keep the shapes a caller expects
        geo = chain_geometry((m for _, m in chain), trace.sizes[0])[-1]
        empty = act.new_zeros(0, trace.channels_in, geo.rows.rf, geo.cols.rf)
        return RFProjection(empty, row, col, value, row, col)
    return RFProjection(torch.cat(parts), torch.cat(tops), torch.cat(lefts), value, row, col)


def project_rf(
    model: nn.Module,
    images: Tensor,
    layer: str | nn.Module,
    image_index: Tensor | Sequence[int],
    channels: Tensor | Sequence[int],
    positions: Tensor | None = None,
    rule: str = "deconvnet",
    *,
    lrn: str = "gradient",
    batch_size: int | None = None,
    precision: str = "float32",
    seed: str = "activation",
) -> RFProjection:
    """Project S activations of `layer`, each cropped to its receptive field (paper Fig. 1, 2).

    `layer`: a name (`conv5`, `features.10`, `layer3.1`) or the module itself. Seed s is
    the activation of map `channels[s]` of image `images[image_index[s]]` at
    `positions[s]` = (row, col), or at that map's strongest activation when `positions` is
    None. `images` (N, C, H, W) go forward once; the S seeds go down `batch_size` at a time.
    Returns an `RFProjection` whose values are (S, C, rf, rf) along a plain chain of layers
    (AlexNet, VGG, zfnet's); for a layer the general path projects (a ResNet's, any graph
    with branches) each covers the whole input, (S, C, H, W) at top = left = 0 (see
    `RFProjection`). `seed`: what each unit goes down with, its activation's value
    ("activation") or 1 ("one"), as in `project_layers`.
    """
    name = layer if isinstance(layer, str) else resolve_layer(model, layer)[0]
    seeds = Seeds(image_index, channels, positions)
    return project_layers(model, images, {name: seeds}, rule, lrn=lrn,
                          batch_size=batch_size, precision=precision, seed=seed)[name]


def paste(rf: RFProjection, size: int | tuple[int, int]) -> Tensor:
    """The projections of `rf` placed in zero images of `size` (H, W), or size x size:
    (S, C, H, W)."""
    if isinstance(size, int):
        size = (size, size)
    s, c, h, w = rf.values.shape
    out = rf.values.new_zeros(s, c, *size)
    for i, (t, lf) in enumerate(zip(rf.top.tolist(), rf.left.tolist(), strict=True)):
        t0, l0 = max(t, 0), max(lf, 0)
        t1, l1 = min(t + h, size[0]), min(lf + w, size[1])
        if t1 > t0 and l1 > l0:
            out[i, :, t0:t1, l0:l1] = rf.values[i, :, t0 - t: t1 - t, l0 - lf: l1 - lf]
    return out


def project(
    model: nn.Module,
    images: Tensor,
    layer: str | nn.Module,
    channels: int | Tensor | Sequence[int],
    positions: Tensor | None = None,
    rule: str = "deconvnet",
    *,
    lrn: str = "gradient",
    batch_size: int | None = None,
    precision: str = "float32",
    seed: str = "activation",
) -> Tensor:
    """Project one activation per image and map of `layer` down to pixels (paper Sec. 2.1).

    images: (N, C, H, W) model inputs (float, normalised as the model takes them). layer: a
    name as `zfnet.models.resolve_layer` takes it (`conv5`, `layer3`, `features.10`) or the
    module itself. channels: an int (the same map for every image) or N
    ints -> result (N, C, H, W); an (N, K) tensor (K maps per image) -> (N, K, C, H, W).
    positions: None (each map's strongest activation) or (N, 2) / (N, K, 2) (row, col) in the
    layer's map. rule: "deconvnet" (the paper), "guided" or "gradient". lrn: how contrast
    normalisation is undone ("gradient", default, or "identity"; see the module docstring).
    batch_size: seeds sent down at a time (default: all; fewer bounds memory). precision:
    "float32", or "bfloat16" for the general path's walk (`project_layers`).
    One forward pass for all N images, however many maps; the result is in input units and
    in the model's dtype (float64 images into a float32 model give float32: they are cast to
    it), seeded with the activation's value (`seed="one"`: with 1, as Captum seeds).
    """
    check_images(images)
    n = images.shape[0]
    ch = indices(channels, "channels")  # a TypeError for what is no number, before shaping
    given = torch.as_tensor(channels)
    ch = ch.view(given.shape)
    squeeze = ch.ndim <= 1
    if ch.ndim == 0:  # one map for every image (an int, numpy's or a 0-d tensor)
        ch = ch.expand(n)
    if ch.ndim == 1:
        ch = ch[:, None]
    if ch.ndim != 2 or ch.shape[0] != n:
        raise ValueError(f"channels must be an int, ({n},) or ({n}, K) for {n} images, got "
                         f"shape {tuple(given.shape)}")
    k = ch.shape[1]
    pos = None
    if positions is not None:
        pos = indices(positions, "positions")
        given = torch.as_tensor(positions)
        pos = pos.view(given.shape)
        if pos.shape not in ((n, k, 2), (n, 2)) or (pos.shape == (n, 2) and not squeeze):
            want = f"({n}, 2)" if squeeze else f"({n}, {k}, 2)"
            raise ValueError(f"positions must be {want}, got {tuple(pos.shape)}")
        pos = pos.reshape(n * k, 2)
    img = torch.arange(n)[:, None].expand(n, k).reshape(-1)
    rf = project_rf(model, images, layer, img, ch.reshape(-1), pos, rule, lrn=lrn,
                    batch_size=batch_size, precision=precision, seed=seed)
    out = paste(rf, (images.shape[-2], images.shape[-1]))  # (N*K, C, H, W)
    out = out.view(n, k, *out.shape[1:])
    return out[:, 0] if squeeze else out
