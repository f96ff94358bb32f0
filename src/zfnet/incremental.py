"""Incremental inference for occlusion maps (Nakandala et al., "Incremental and Approximate
Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019 — "Krypton").

An occluder changes the input only inside its box. A convolution or pooling (kernel k, stride s,
padding p) passes the change on to the outputs whose windows touch it, so the changed region grows
layer by layer (the occluder's "projective field"); element-wise layers keep it where it is —
ReLU, and contrast normalisation, which mixes feature maps but not positions (spatial radius 0).
So for each occluder position every layer is recomputed only inside that region; everything else
is read from the activations of the unoccluded image, computed once. Once the change reaches the
fully connected layers, which see the whole map, they run on the whole (cheap) vector.

Batching. Positions are grouped (by how close they are to each border, where changed regions
are clipped and smaller) and every position of a group gets patches of one size per layer: the
group's largest changed region; a patch at the border is shifted inwards so that it stays inside
the map. A patch larger than the changed region is still exact: its extra units are recomputed
from correct inputs. The groups are chosen so that these patches cost at most ~2% more FLOPs than
the changed regions themselves (`incremental_flops` reports both; up to ~25% would be wasted
with one size for all positions on zfnet). For each layer and batch of positions we gather the
input window of every patch — from the previous layer's patch where it lies inside it, from the
cached activations elsewhere, and the layer's padding value (0 for a convolution, -inf for a
max-pool) outside the true map — and run the layer on the batch of windows without padding. The
last feature maps of all groups are pooled into full batches for the fully connected layers,
whose cost is mostly reading their weights.

Approximate mode (Krypton's projective-field threshold τ): a changed region wider than τ × the
map side is cut to that width around its centre; outside it the cached activations are used.
τ = 1 is exact.

Supported models: `features` (Conv2d, MaxPool2d and element-wise layers), then an optional
`avgpool`, flatten and `classifier` — zfnet's models and torchvision's alexnet and vgg.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zfnet.models.geometry import POINTWISE, Window, chain_sizes, pair, window_of
from zfnet.models.layers import resolve_layer
from zfnet.models.modes import eval_mode


class UnsupportedModelError(ValueError):
    """The model is not a chain that incremental inference can run; the message says why."""


@dataclass(frozen=True)
class Chain:
    """A model seen as `head(steps(x))`: spatial steps run incrementally, the head on full maps."""

    steps: tuple[tuple[str, nn.Module], ...]  # (module path, module) of `features`, in order
    head: Callable[[torch.Tensor], torch.Tensor]  # (N, C, h, w) last feature map -> (N, K) logits


def as_chain(model: nn.Module) -> Chain:
    """`model` as a `Chain`, or `UnsupportedModelError` naming the part that is not supported.

    The model must consist of `features` (an `nn.Sequential` of Conv2d, MaxPool2d and element-wise
    layers), an optional `avgpool` and a `classifier`, computing
    `classifier(flatten(avgpool(features(x))))` — as zfnet's models and torchvision's alexnet/vgg
    do. (The forward pass itself is checked against the model by `occlusion_logits`.)
    """
    children = dict(model.named_children())
    features, classifier = children.get("features"), children.get("classifier")
    extra = sorted(set(children) - {"features", "avgpool", "classifier"})
    if not isinstance(features, nn.Sequential) or classifier is None or extra:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a features/avgpool/classifier chain "
            f"(children: {', '.join(children) or 'none'}); incremental inference supports "
            "zfnet's models and torchvision's alexnet and vgg"
        )
    steps = []
    for name, m in features.named_children():
        path = f"features.{name}"
        if isinstance(m, nn.Conv2d):
            ok = m.padding_mode == "zeros" and not isinstance(m.padding, str)
            ok = ok and pair(m.dilation) == (1, 1)
        elif isinstance(m, nn.MaxPool2d):
            ok = pair(m.dilation) == (1, 1) and not m.return_indices
        else:
            ok = isinstance(m, POINTWISE)
        if not ok:
            raise UnsupportedModelError(
                f"layer {path} ({m}) is not supported by incremental inference; supported: "
                "Conv2d and MaxPool2d without dilation (zero padding), and element-wise layers "
                f"({', '.join(c.__name__ for c in POINTWISE)})"
            )
        steps.append((path, m))
    avgpool = children.get("avgpool")

    def head(x: torch.Tensor) -> torch.Tensor:
        if avgpool is not None:
            x = avgpool(x)
        return classifier(torch.flatten(x, 1))  # (N, K)

    return Chain(tuple(steps), head)


@dataclass
class _Level:
    """Where every occluder position's changed region lies in one map."""

    size: tuple[int, int]  # (H, W) of the map
    lo: tuple[torch.Tensor, torch.Tensor]  # (N,) first changed row, column
    hi: tuple[torch.Tensor, torch.Tensor]  # (N,) one past the last changed row, column


@dataclass
class _Group:
    """Positions computed together: per level, one patch size and each position's offsets."""

    idx: torch.Tensor  # (G,) positions
    patch: list[tuple[int, int]]  # per level: patch rows, columns
    off: list[tuple[torch.Tensor, torch.Tensor]]  # per level: (G,) patch top, left


def _grow(level: _Level, win: Window, out_size: tuple[int, int], tau: float) -> _Level:
    """The changed region in a layer's output, from the one in its input."""
    lo_out, hi_out = [], []
    for ax in (0, 1):
        lo, hi = win.output_range(level.lo[ax], level.hi[ax], ax, out_size[ax])
        lo = lo.clamp(max=out_size[ax] - 1)
        # stride > kernel can leave a change unseen: keep a 1-unit region (a harmless superset)
        hi = torch.maximum(hi, lo + 1)
        if tau < 1:  # Krypton's threshold: cut the region to tau x the map, around its centre
            cap = max(1, math.ceil(tau * out_size[ax]))
            lo = lo + (hi - lo - cap).clamp(min=0) // 2
            hi = torch.minimum(hi, lo + cap)
        lo_out.append(lo)
        hi_out.append(hi)
    return _Level(out_size, (lo_out[0], lo_out[1]), (hi_out[0], hi_out[1]))


def _levels(
    chain: Chain, shapes: list[tuple[int, int]], boxes: torch.Tensor, tau: float
) -> list[_Level]:
    """Level 0 is the input (the occluder boxes), level i + 1 the output of step i."""
    boxes = boxes.to(torch.long).cpu()
    level = _Level(shapes[0], (boxes[:, 0], boxes[:, 1]), (boxes[:, 2], boxes[:, 3]))
    levels = [level]
    for (_, m), out_size in zip(chain.steps, shapes[1:], strict=True):
        win = window_of(m)
        if win is not None:
            level = _grow(level, win, out_size, tau)
        levels.append(level)
    return levels


def _conv_units(chain: Chain) -> dict[int, float]:
    """FLOPs per output position of each convolution, keyed by its output level."""
    units = {}
    for i, (_, m) in enumerate(chain.steps):
        if isinstance(m, nn.Conv2d):
            kh, kw = pair(m.kernel_size)
            units[i + 1] = 2.0 * m.out_channels * (m.in_channels // m.groups) * kh * kw
    return units


def _axis_bins(levels: list[_Level], units: dict[int, float], ax: int, max_bins: int,
               waste: float = 0.02) -> torch.Tensor:
    """Bin of every position along one axis, so that a bin's patches can share one size.

    Positions near the border have smaller changed regions; one patch size for all would waste
    up to ~25% of the work on zfnet. Classes of equal region widths are sorted by size and cut
    into the fewest contiguous bins (at most `max_bins`) whose FLOPs (each bin at its largest
    widths) exceed those of one bin per class by at most `waste` (dynamic programming).
    """
    n = len(levels[0].lo[0])
    if not units or max_bins <= 1:
        return torch.zeros(n, dtype=torch.long)
    other = 1 - ax
    widths = torch.stack([levels[i].hi[ax] - levels[i].lo[ax] for i in units], 1)  # (N, L)
    weight = np.array([units[i] * float((levels[i].hi[other] - levels[i].lo[other]).double()
                                        .mean()) for i in units])
    uniq, inverse, counts = torch.unique(widths, dim=0, return_inverse=True, return_counts=True)
    order = sorted(range(len(uniq)), key=lambda u: uniq[u].tolist()[::-1])
    w = uniq[order].numpy().astype(np.float64)  # (m, L) classes, smallest regions first
    cnt = counts[order].numpy().astype(np.float64)
    m = len(order)

    # cost[i, j]: FLOP weight of classes i..j-1 in one bin (at the bin's largest widths)
    cost = np.full((m + 1, m + 1), np.inf)
    for i in range(m):
        widest = np.maximum.accumulate(w[i:], axis=0)  # (m - i, L)
        cost[i, i + 1:] = np.cumsum(cnt[i:]) * (widest @ weight)
    exact = float(sum(cost[i, i + 1] for i in range(m)))
    best = np.full(m + 1, np.inf)  # best[j]: classes 0..j-1 in k bins
    best[0] = 0.0
    cut: list[np.ndarray] = [np.zeros(m + 1, dtype=int)]
    for _k in range(1, min(m, max_bins) + 1):
        total = best[:, None] + cost  # (i, j): the first i classes in k-1 bins, then i..j-1
        arg = total.argmin(0)
        best = total[arg, np.arange(m + 1)]
        best[0] = np.inf
        cut.append(arg)
        if best[m] <= (1 + waste) * exact:
            break
    bin_of_class = torch.empty(m, dtype=torch.long)
    j, b = m, len(cut) - 1
    while j > 0:  # walk the cuts back
        i = int(cut[b][j])
        bin_of_class[i:j] = b
        j, b = i, b - 1
    rank = torch.empty(m, dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(m)
    return bin_of_class[rank[inverse]]


# Fewer positions than this per group on average and batches get too small to pay off.
MIN_GROUP = 16
MAX_BINS = 8  # per axis


def _groups(levels: list[_Level], units: dict[int, float]) -> list[_Group]:
    """Positions grouped by (row bin, column bin), each group with its patch sizes and offsets."""
    max_bins = min(MAX_BINS, math.isqrt(len(levels[0].lo[0]) // MIN_GROUP))
    rows = _axis_bins(levels, units, 0, max_bins)
    cols = _axis_bins(levels, units, 1, max_bins)
    key = rows * (int(cols.max()) + 1) + cols
    groups = []
    for k in torch.unique(key):
        idx = torch.nonzero(key == k).flatten()
        patch, off = [], []
        for lv in levels:
            sizes, offs = [], []
            for ax in (0, 1):
                lo, hi = lv.lo[ax][idx], lv.hi[ax][idx]
                p = int((hi - lo).max())
                sizes.append(p)
                # shifted inwards where the patch would overhang the map
                offs.append(torch.minimum(lo, torch.full_like(lo, lv.size[ax] - p)))
            patch.append((sizes[0], sizes[1]))
            off.append((offs[0], offs[1]))
        groups.append(_Group(idx, patch, off))
    return groups


def _check_boxes(boxes: torch.Tensor, height: int, width: int) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise ValueError(f"boxes must be (N, 4) rows of (top, left, bottom, right), got "
                         f"{tuple(boxes.shape)}")
    t, lft, b, r = boxes.unbind(1)
    if (t < 0).any() or (lft < 0).any() or (b > height).any() or (r > width).any() or \
            (b <= t).any() or (r <= lft).any():
        raise ValueError(f"boxes must be non-empty and inside the {height}x{width} image")


@dataclass(frozen=True)
class FlopCount:
    """FLOPs (2 per multiply-add of convolutions and linear layers; pooling, ReLU and LRN are not
    counted) of one full forward pass and, averaged over occluder positions, of incremental
    inference: exactly the changed regions (the bound) and the equal-size patches run here."""

    full: float
    incremental: float  # mean over positions, changed regions only
    batched: float  # mean over positions, the equal-size patches this module computes
    per_layer: dict[str, tuple[float, float, float]]  # path -> (full, incremental, batched)

    @property
    def bound(self) -> float:
        """Best speed-up exact incremental inference can reach: full / incremental."""
        return self.full / self.incremental

    @property
    def batched_bound(self) -> float:
        """Speed-up if FLOPs were all that counted, for the patches this module computes."""
        return self.full / self.batched


def incremental_flops(
    model: nn.Module, image_shape: tuple[int, int, int], boxes: torch.Tensor, tau: float = 1.0
) -> FlopCount:
    """FLOP counts of full and incremental inference for occluders `boxes` (N, 4) of (top, left,
    bottom, right) on images of `image_shape` (C, H, W) — the bound printed by the benchmark."""
    chain = as_chain(model)
    shapes = chain_sizes((m for _, m in chain.steps), image_shape[1:])
    _check_boxes(boxes, *shapes[0])
    levels = _levels(chain, shapes, boxes, tau)
    units = _conv_units(chain)
    groups = _groups(levels, units)
    n = len(boxes)
    per_layer: dict[str, tuple[float, float, float]] = {}
    for i, unit in units.items():
        lv = levels[i]
        area = ((lv.hi[0] - lv.lo[0]) * (lv.hi[1] - lv.lo[1])).double().mean().item()
        batched = sum(len(g.idx) * g.patch[i][0] * g.patch[i][1] for g in groups) / n
        per_layer[chain.steps[i - 1][0]] = (
            unit * lv.size[0] * lv.size[1], unit * area, unit * batched
        )
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear):  # the head runs on every position in full
            f = 2.0 * m.in_features * m.out_features
            per_layer[path] = (f, f, f)
    totals = [sum(v[j] for v in per_layer.values()) for j in range(3)]
    return FlopCount(totals[0], totals[1], totals[2], per_layer)


def _gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` (B, R, Q) of `table` (T, C) as a (B, C, R, Q) tensor in channels-last memory."""
    b, r, q = index.shape
    return table.index_select(0, index.reshape(-1)).view(b, r, q, -1).permute(0, 3, 1, 2)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B*H*W, C) rows, one per position."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


class _Runner:
    """The cached activations of one image and the plan for a set of occluder boxes."""

    def __init__(self, model: nn.Module, image: torch.Tensor, boxes: torch.Tensor,
                 fill: torch.Tensor, tau: float, watch: tuple[str, int] | None) -> None:
        self.model, self.chain = model, as_chain(model)
        self.windows = [window_of(m) for _, m in self.chain.steps]
        self.image, self.fill = image, fill  # (C, H, W) each
        x = image[None]  # (1, C, H, W)
        self.cache = [x]
        for _, m in self.chain.steps:
            x = m(x.clone() if getattr(m, "inplace", False) else x)
            self.cache.append(x)
        self.base_logits = self.chain.head(x)[0]  # (K,)
        reference = model(image[None])[0]
        scale = reference.abs().max().item() + 1e-12
        if not torch.allclose(self.base_logits, reference, rtol=1e-4, atol=1e-5 * scale):
            raise UnsupportedModelError(
                f"{type(model).__name__}: classifier(flatten(features(x))) is not the model's "
                "forward pass; incremental inference cannot be used"
            )
        shapes = [tuple(c.shape[2:]) for c in self.cache]
        self.levels = _levels(self.chain, shapes, boxes, tau)
        self.groups = _groups(self.levels, _conv_units(self.chain))
        self.rows = [_flat(c) for c in self.cache]  # (H*W, C) of every cached map
        self.watch_step, self.watch_layer, self.watch_channel = None, None, 0
        if watch is not None:
            # a module path is looked up directly, a layer name through the layer table
            module = dict(model.named_modules()).get(watch[0])
            if module is None or not watch[0]:
                _, module = resolve_layer(model, watch[0])
            self.watch_layer, self.watch_channel, self.watch_module = *watch, module
            for i, (_, m) in enumerate(self.chain.steps):
                if m is module:
                    self.watch_step = i
            if self.watch_step is not None:
                self.watch_map = self.cache[self.watch_step + 1][0, watch[1]].clamp(min=0)
                self.watch_base = self.watch_map.sum()

    def chunks(self, batch_size: int) -> list[tuple[_Group, slice]]:
        """Every group cut into batches of at most `batch_size` positions."""
        return [(g, slice(a, a + batch_size))
                for g in self.groups for a in range(0, len(g.idx), batch_size)]

    def _offsets(self, g: _Group, level: int, sub: slice) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.image.device
        return g.off[level][0][sub].to(dev), g.off[level][1][sub].to(dev)

    def _index(self, win: tuple[torch.Tensor, torch.Tensor], g: _Group, level: int,
               sub: slice) -> torch.Tensor:
        """Row of [cached map ; pad row ; the batch's patches] (of map `level`) that holds each
        window position; `win` are (B, R) rows and (B, Q) columns in that map's coordinates."""
        dev, batch = self.image.device, len(win[0])
        (h, w), (ph, pw) = self.levels[level].size, g.patch[level]
        top, left = self._offsets(g, level, sub)
        r, c = win[0][:, :, None], win[1][:, None, :]  # (B, R, 1), (B, 1, Q)
        pr, pc = r - top[:, None, None], c - left[:, None, None]
        in_patch = (pr >= 0) & (pr < ph) & (pc >= 0) & (pc < pw)
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        b = torch.arange(batch, device=dev)[:, None, None]
        patch_row = h * w + 1 + (b * ph + pr) * pw + pc
        return torch.where(in_patch, patch_row, torch.where(inside, r * w + c, h * w))

    def _table(self, level: int, patch: torch.Tensor, pad: float) -> torch.Tensor:
        cached = self.rows[level]
        return torch.cat([cached, cached.new_full((1, cached.shape[1]), pad), _flat(patch)])

    def features(self, g: _Group, sub: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Last feature maps (B, C, h, w) for positions `g.idx[sub]`, and the watched totals (B,)
        when the watched layer is one of the steps (else None)."""
        dev = self.image.device
        top, left = self._offsets(g, 0, sub)
        batch = len(top)
        rows = top[:, None] + torch.arange(g.patch[0][0], device=dev)  # (B, P)
        cols = left[:, None] + torch.arange(g.patch[0][1], device=dev)
        lv, idx = self.levels[0], g.idx[sub]
        lo = [v[idx].to(dev)[:, None] for v in lv.lo]
        hi = [v[idx].to(dev)[:, None] for v in lv.hi]
        occluded = ((rows >= lo[0]) & (rows < hi[0]))[:, :, None] & \
                   ((cols >= lo[1]) & (cols < hi[1]))[:, None, :]  # (B, P, P)
        index = rows[:, :, None] * lv.size[1] + cols[:, None, :]
        patch = torch.where(occluded[:, None], _gather(_flat(self.fill[None]), index),
                            _gather(self.rows[0], index))  # (B, C, P, P) the occluded input
        watched = None
        for i, (_, m) in enumerate(self.chain.steps):
            op = self.windows[i]
            if op is None:
                patch = m(patch)
            else:
                top, left = self._offsets(g, i + 1, sub)
                top, left, r, q = op.input_window(top, left, *g.patch[i + 1])
                win = (top[:, None] + torch.arange(r, device=dev),
                       left[:, None] + torch.arange(q, device=dev))
                # (B, R), (B, Q): the window's rows and columns in the input map
                conv = isinstance(m, nn.Conv2d)
                table = self._table(i, patch, 0.0 if conv else float("-inf"))
                window = _gather(table, self._index(win, g, i, sub))  # (B, Cin, R, Q)
                if conv:
                    patch = F.conv2d(window, m.weight, m.bias, m.stride, 0, 1, m.groups)
                else:
                    patch = F.max_pool2d(window, m.kernel_size, m.stride, 0, 1, False)
                # patch: (B, Cout, P, P)
            if i == self.watch_step:
                watched = self._watched(patch, g, i + 1, sub)
        h, w = self.levels[-1].size
        full = (torch.arange(h, device=dev).expand(batch, h),
                torch.arange(w, device=dev).expand(batch, w))
        last = len(self.chain.steps)
        x = _gather(self._table(last, patch, 0.0), self._index(full, g, last, sub))  # (B, C, h, w)
        return x.contiguous(), watched

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, K) of last feature maps `x` (B, C, h, w), and the watched totals (B,) when
        the watched layer is in the head (else None)."""
        if self.watch_layer is None or self.watch_step is not None:
            return self.chain.head(x), None
        store: list[torch.Tensor] = []  # cloned: an in-place ReLU may follow the layer
        handle = self.watch_module.register_forward_hook(
            lambda _m, _i, out: store.append(out.clone())
        )
        try:
            logits = self.chain.head(x)
        finally:
            handle.remove()
        act = store[-1][:, self.watch_channel].clamp(min=0)
        return logits, act.reshape(len(x), -1).sum(1)

    def _watched(self, patch: torch.Tensor, g: _Group, level: int, sub: slice) -> torch.Tensor:
        """Total rectified activation of the watched map: the cached total, with the patch's
        part replaced by its recomputed values."""
        dev = self.image.device
        top, left = self._offsets(g, level, sub)
        rows = top[:, None] + torch.arange(g.patch[level][0], device=dev)
        cols = left[:, None] + torch.arange(g.patch[level][1], device=dev)
        old = self.watch_map[rows[:, :, None], cols[:, None, :]].sum((1, 2))  # (B,)
        new = patch[:, self.watch_channel].clamp(min=0).sum((1, 2))
        return self.watch_base + (new - old)


def occlusion_logits(
    model: nn.Module,
    image: torch.Tensor,
    boxes: torch.Tensor,
    fill: torch.Tensor | float = 0.0,
    *,
    batch_size: int = 64,
    tau: float = 1.0,
    watch: tuple[str, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of `model` on `image` (C, H, W) occluded by each box of `boxes` (N, 4) (top, left,
    bottom, right; inside the image) filled with `fill` (a number, or a tensor broadcastable to
    (C, H, W)), by incremental inference (paper Fig. 7's maps, computed the Krypton way).

    Returns logits (N, K) and, when `watch` = (layer name, feature map) is given, the total
    rectified activation sum(max(a, 0)) of that map at each position (N,), else None.
    Positions run `batch_size` at a time, so peak memory does not grow with N. `tau` < 1 is
    Krypton's approximate mode. Raises `UnsupportedModelError` for a model `as_chain` rejects.
    progress(done, total): called after each group of positions with the positions done so
    far; an exception it raises (a cancelled job) stops the computation.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    if not 0 < tau <= 1:
        raise ValueError(f"tau={tau} must be in (0, 1] (1 = exact)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    _check_boxes(boxes, image.shape[1], image.shape[2])
    fill_full = torch.as_tensor(fill, dtype=image.dtype, device=image.device)
    fill_full = fill_full.expand_as(image).contiguous()
    # dropout off: an occlusion map of a random network makes no sense
    with eval_mode(model):
        with torch.inference_mode():
            runner = _Runner(model, image, boxes, fill_full, tau, watch)
            logits = image.new_empty((len(boxes), runner.base_logits.shape[0]))
            watched = image.new_empty(len(boxes)) if watch is not None else None
            # groups can be small; their last feature maps (small) are pooled so that the
            # fully connected layers, whose cost is mostly reading their weights, get full batches
            maps: list[torch.Tensor] = []  # (B, C, h, w) each, waiting for the head
            where: list[torch.Tensor] = []  # (B,) their positions

            def run_head(final: bool) -> None:
                x, idx = torch.cat(maps), torch.cat(where)
                done = len(idx) if final else len(idx) - len(idx) % batch_size
                for a in range(0, done, batch_size):
                    lg, wt = runner.head(x[a:a + batch_size])
                    logits[idx[a:a + batch_size]] = lg
                    if wt is not None:
                        watched[idx[a:a + batch_size]] = wt
                maps[:], where[:] = [x[done:]], [idx[done:]]

            done = 0
            for g, sub in runner.chunks(batch_size):
                x, wt = runner.features(g, sub)
                maps.append(x)
                where.append(g.idx[sub])
                done += len(where[-1])
                if progress is not None:
                    progress(done, len(boxes))
                if wt is not None:
                    watched[g.idx[sub]] = wt
                if sum(len(w) for w in where) >= batch_size:
                    run_head(final=False)
            run_head(final=True)
    return logits, watched
