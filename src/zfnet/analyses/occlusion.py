"""Occlusion sensitivity (paper Sec. 4.2, Fig. 7): does the model look at the object?

A square of `fill` slides over the image (size and stride in pixels). At every occluder position
the model runs on the occluded image and we record four maps over the positions:

- (b) the total activation of one feature map of `layer` — the map that is strongest on the
  unoccluded image; by default the last spatial layer (`zfnet.models.last_spatial_layer`: the
  paper's layer 5, `conv5`, on zfnet's models; `layer4` of a ResNet): sum over the map of
  max(a, 0), i.e. of the rectified map (a no-op for ReLU and pooling outputs); on a flat
  layer (a fully connected one) its strongest unit, whose rectified value is its total;
- (c) that map's deconvnet projection on the unoccluded image (`zfnet.deconvnet.project`: its
  strongest activation, taken down to pixels), to show which structure drives it (where the
  deconvnet rule is undefined — SiLU, GELU … on the way down — the gradient's, said in `meta`);
- (d) the probability of the correct class (of the class the model predicts on the unoccluded
  image where the dataset's labels are not the model's classes: `zfnet.analyses.classes`);
- (e) the most probable label.

Occluder positions follow Captum's `Occlusion`: tops (and lefts) 0, stride, 2 stride, … as long as
the previous square does not reach the border, the last square clipped at the border, so that
every pixel is covered when stride <= size. Map entry (i, j) is the square with top-left corner
(tops[i], lefts[j]). The default fill 0 is the grey of the dataset: inputs are pixel values minus
the training set's mean image (the paper's convention), so 0 puts the mean image in the square.

Positions run in batches (`batch_size` at a time), so peak memory is bounded by the batch, not by
the number of positions. On chain models (zfnet's, torchvision's alexnet and vgg) the default is
incremental inference (`zfnet.incremental`): each layer is recomputed only where the occluder can
have changed it — the same numbers as the full recomputation, several times faster. Any other
model (ResNets, DenseNets, MobileNets …) runs in full on every occluded image, batched.

`pointing_game` measures localisation on the built-in `synthetic` dataset, whose images come with
object masks; `occlusion_report` does the whole job for the report.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from zfnet.activations import capture, check_images, cpu_layout, to_model
from zfnet.analyses.classes import class_outputs
from zfnet.data.bundle import val_words
from zfnet.data.picks import file_name, pick_items
from zfnet.data.words import as_shown, labels_of
from zfnet.deconvnet import PRECISIONS
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import projection_to_uint8
from zfnet.incremental import UnsupportedModelError, as_chain, occlusion_logits
from zfnet.models import eval_mode, last_spatial_layer, layer_name, score_layer

METHODS = ("auto", "incremental", "full")


@dataclass
class OcclusionResult:
    """The four maps of paper Fig. 7 for one image, over occluder positions (R rows, Q columns)."""

    layer: str  # the layer of map (b), e.g. "conv5"
    feature_map: int  # the map of `layer` strongest on the unoccluded image
    target: int  # the class of map (d)
    size: int  # occluder side in pixels
    stride: int  # pixels between occluder positions
    tops: list[int]  # (R,) top row of the occluder for each map row
    lefts: list[int]  # (Q,) left column of the occluder for each map column
    image_size: tuple[int, int]  # (H, W)
    activation: torch.Tensor  # (R, Q) (b) total rectified activation of `feature_map`
    probability: torch.Tensor  # (R, Q) (d) p(target)
    label: torch.Tensor  # (R, Q) int64 (e) most probable class
    label_probability: torch.Tensor  # (R, Q) its probability
    base_activation: float  # (b) on the unoccluded image
    base_probability: float  # (d) on the unoccluded image
    base_label: int  # (e) on the unoccluded image
    method: str  # "incremental" or "full"
    projection: torch.Tensor | None = None  # (C, H, W) (c), in input units
    meta: dict[str, Any] = field(default_factory=dict)
    flat: bool = False  # `layer` is flat (N, C): `feature_map` is a unit, (b) its value

    @property
    def what(self) -> str:
        """What `feature_map` is, in words: "map" of a conv layer, "unit" of a flat one."""
        return "unit" if self.flat else "map"

    @property
    def unit_words(self) -> str:
        """`layer`, what its `feature_map` is and its number, and the class it scores where
        known (meta "unit_name"): "conv5 map 12", "fc unit 3 (tabby cat)"."""
        name = self.meta.get("unit_name")
        return f"{self.layer} {self.what} {self.feature_map}" + (f" ({name})" if name else "")

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """Occluder of map entry (i, j) as (top, left, bottom, right), bottom/right exclusive."""
        h, w = self.image_size
        t, left = self.tops[i], self.lefts[j]
        return t, left, min(t + self.size, h), min(left + self.size, w)

    def most_sensitive(self) -> tuple[int, int]:
        """Map entry (i, j) where p(target) is lowest: the occluder that hurts the most."""
        flat = int(torch.argmin(self.probability))
        return divmod(flat, self.probability.shape[1])

    def lowered(self) -> bool:
        """Whether some occluder lowers p(target) by more than a thousandth of it: where none
        does (a saturated 1.000 everywhere), `most_sensitive` is only the first of a tie."""
        return float(self.probability.min()) < self.base_probability * (1 - 1e-3)

    def to_pixels(self, values: torch.Tensor) -> torch.Tensor:
        """A map over positions (R, Q) as pixels (H, W): each pixel the mean over the occluders
        covering it (Captum's `Occlusion` form); NaN where none does (stride > size)."""
        return pixel_map(values, self.tops, self.lefts, self.size, self.image_size)


def occluder_grid(height: int, width: int, size: int, stride: int) -> tuple[list[int], list[int]]:
    """Tops and lefts of the occluder positions (Captum's `Occlusion` grid: the last square is
    clipped at the border)."""
    _check_geometry(height, width, size, stride)
    # With a stride longer than the occluder, Captum's last position may start past the image
    # (e.g. 64 px, size 9, stride 25: 0, 25, 50, 75); it would occlude nothing: left out.
    tops = [t for i in range(math.ceil((height - size) / stride) + 1) if (t := i * stride) < height]
    lefts = [q for j in range(math.ceil((width - size) / stride) + 1) if (q := j * stride) < width]
    return tops, lefts


def occluder_boxes(tops: list[int], lefts: list[int], size: int, height: int,
                   width: int) -> torch.Tensor:
    """(R*Q, 4) boxes (top, left, bottom, right), row-major over (tops, lefts)."""
    t = torch.tensor(tops)[:, None].expand(len(tops), len(lefts)).reshape(-1)
    lft = torch.tensor(lefts)[None, :].expand(len(tops), len(lefts)).reshape(-1)
    return torch.stack([t, lft, (t + size).clamp(max=height), (lft + size).clamp(max=width)], 1)


def pixel_map(values: torch.Tensor, tops: list[int], lefts: list[int], size: int,
              image_size: tuple[int, int]) -> torch.Tensor:
    """Spread a map over occluder positions (R, Q) to pixels (H, W): the mean over the squares
    covering each pixel, NaN where none does."""
    h, w = image_size
    ys, xs = torch.arange(h), torch.arange(w)
    rows = ((ys >= torch.tensor(tops)[:, None]) & (ys < torch.tensor(tops)[:, None] + size))
    cols = ((xs >= torch.tensor(lefts)[:, None]) & (xs < torch.tensor(lefts)[:, None] + size))
    rows, cols = rows.to(torch.float64), cols.to(torch.float64)  # (R, H), (Q, W)
    total = rows.T @ values.to(torch.float64) @ cols  # (H, W)
    count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    out = total / count
    return out.masked_fill(count == 0, float("nan")).to(values.dtype)


def _check_geometry(height: int, width: int, size: int, stride: int) -> None:
    if not isinstance(size, int) or not 1 <= size <= min(height, width):
        raise ValueError(
            f"occluder size={size} does not fit the {height}x{width} image; "
            f"valid: 1..{min(height, width)} pixels"
        )
    if not isinstance(stride, int) or not 1 <= stride <= min(height, width):
        raise ValueError(f"occluder stride={stride} does not fit the {height}x{width} image; "
                         f"valid: 1..{min(height, width)} pixels")


def default_layer(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> str:
    """The layer of maps (b) and (c) when none is named: `zfnet.models.last_spatial_layer` —
    `conv5` on zfnet's models (the paper's layer 5), the last convolution of a chain, the last
    stage of any other CNN (`layer4` of a ResNet); for an input of `input_size`. Its
    ValueError where there is none says which layers to give."""
    return last_spatial_layer(model, input_size)


def default_size(height: int, width: int) -> int:
    """Default occluder side: 1/7 of the shorter side (32 px at 224, 9 at 64)."""
    return max(1, min(height, width) // 7)


def gap_words(size: int, stride: int) -> str:
    """What a stride longer than the occluder leaves out, in words ("" where every pixel is
    covered): the bands between the squares' positions, which no square covers."""
    if stride <= size:
        return ""
    return (f" (longer than its side: the {stride - size} px between one position and the next "
            "are never covered, so what lies only there cannot show in the maps)")


def occluder_plan(height: int, width: int, size: int | None = None,
                  stride: int | None = None) -> tuple[int, int, list[int], list[int]]:
    """(size, stride, tops, lefts) of the occluder over an image of (height, width): the
    defaults filled in (`default_size`, a quarter of the side as the stride), then
    `occluder_grid`'s positions."""
    size = default_size(height, width) if size is None else size
    stride = max(1, size // 4) if stride is None else stride
    return size, stride, *occluder_grid(height, width, size, stride)


def _full_logits(
    model: nn.Module, image: torch.Tensor, boxes: torch.Tensor, fill: torch.Tensor,
    batch_size: int, watch: tuple[str, int],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and watched totals (N,) by running the model on every occluded image."""
    _, h, w = image.shape
    ys = torch.arange(h, device=image.device)[None, :, None]
    xs = torch.arange(w, device=image.device)[None, None, :]
    logits, watched = [], []
    with capture(model, [watch[0]]) as store:
        for start in range(0, len(boxes), batch_size):
            t, lft, b, r = boxes[start:start + batch_size].to(image.device).unbind(1)
            inside = ((ys >= t[:, None, None]) & (ys < b[:, None, None])
                      & (xs >= lft[:, None, None]) & (xs < r[:, None, None]))  # (B, H, W)
            x = cpu_layout(model, torch.where(inside[:, None], fill, image))  # (B, C, H, W)
            logits.append(model(x))
            act = store[watch[0]][:, watch[1]].clamp(min=0)
            watched.append(act.reshape(len(x), -1).sum(1))
            if progress is not None:
                progress(start + len(x), len(boxes))
    return torch.cat(logits), torch.cat(watched)


def occlusion(
    model: nn.Module,
    image: torch.Tensor,
    target: int | None = None,
    layer: str | nn.Module | None = None,
    size: int | None = None,
    stride: int | None = None,
    fill: float | torch.Tensor = 0.0,
    batch_size: int = 64,
    *,
    method: str = "auto",
    tau: float = 1.0,
    project: bool = True,
    precision: str = "float32",
    feature_map: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> OcclusionResult:
    """Occlusion sensitivity of `model` on `image` (paper Fig. 7).

    image: one model input (C, H, W) in the model's pixel convention. target: the class of map
    (d) (default: the class predicted on the unoccluded image). layer: the layer of maps (b) and
    (c), a name as `zfnet.models.resolve_layer` takes it (default: `default_layer`, `conv5`
    on zfnet's models). size, stride: occluder side and step in pixels (default 1/7 of the image
    side and a quarter of that: 32 and 8 at 224 px). fill: the occluder's value, a number or a
    tensor broadcastable to (C, H, W) (default 0: the dataset's mean image, see the module doc).
    batch_size: occluder positions per batch; bounds peak memory. method: "incremental"
    (`zfnet.incremental`; chain models only), "full" (run the whole model per position) or
    "auto" (incremental where supported). tau < 1: incremental inference's approximate mode.
    project: compute map (c) with the deconvnet (one extra forward/backward pass).
    precision: "bfloat16" runs the full method's passes (the unoccluded image's too) under bf16
    autocast: faster on a CPU with native bf16 (1.8-1.9x on resnet18 with AMX; on a GPU not
    measured yet), the maps close to float32's (a trained resnet18's p(class) within 1.2-1.6%
    of the map's range, correlation >= 0.999: bench/bench_occlusion_precision.py), a
    near-tie's most sensitive position may move; incremental inference always works in the
    model's dtype.
    feature_map: the map of `layer` that maps (b) and (c) show (default: the unoccluded
    image's strongest, as in the paper).
    progress(done, total): called as occluder positions are done; an exception it raises (a
    cancelled job) stops the computation.
    """
    # the model's dtype and device (float64 images: cast, as `project` does), and a copy: a
    # first layer in place (an nn.ReLU(inplace=True)) changed the caller's image
    image = to_model(model, check_images(image, 3, "image")[None])[0].clone()
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; valid: {', '.join(METHODS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not known; valid: {', '.join(PRECISIONS)}")
    _, h, w = image.shape
    size, stride, tops, lefts = occluder_plan(h, w, size, stride)
    layer = default_layer(model, (h, w)) if layer is None else layer
    # its name (a module given: the name the result and figures show); an unknown layer fails
    # here, listing the valid names
    layer = layer_name(model, layer)
    try:
        fill_t = torch.as_tensor(fill, dtype=image.dtype, device=image.device).expand_as(image)
    except RuntimeError as err:
        raise ValueError(f"fill of shape {tuple(torch.as_tensor(fill).shape)} does not "
                         f"broadcast to the image's {tuple(image.shape)}") from err
    requested = method
    if method == "auto":
        try:
            as_chain(model)
            method = "incremental"
        except UnsupportedModelError:
            method = "full"
    if tau != 1.0 and method == "full":
        raise ValueError(f"tau={tau} is incremental inference's approximate mode, which this "
                         "model or method='full' cannot use; pass tau=1")

    def passes():  # the precision of the full method's passes (the incremental one's: float32)
        if precision == "float32" or method != "full":
            return nullcontext()
        return torch.autocast(image.device.type, dtype=torch.bfloat16)

    with eval_mode(model):
        with torch.inference_mode():
            base_logits, totals, flat = _unoccluded(model, image, layer, passes())
            if feature_map is not None and not 0 <= feature_map < totals.numel():
                what = "unit" if flat else "map"
                raise ValueError(f"feature_map={feature_map} is not a {what} of {layer}; "
                                 f"valid: 0..{totals.numel() - 1}")
            channel = int(torch.argmax(totals)) if feature_map is None else feature_map
            k = base_logits.shape[0]
            predicted = target is None
            if target is None:
                target = int(torch.argmax(base_logits.float()))
            if not 0 <= target < k:
                raise ValueError(f"target={target} is not a class of this model; valid: 0..{k - 1}")
            boxes = occluder_boxes(tops, lefts, size, h, w)
            if progress is not None:  # the total, before the first group is scored
                progress(0, len(boxes))
            watch = (layer, channel)
            if method == "incremental":
                try:
                    logits, watched = occlusion_logits(model, image, boxes, fill_t,
                                                       batch_size=batch_size, tau=tau, watch=watch,
                                                       progress=progress)
                except UnsupportedModelError:
                    if requested != "auto" or tau != 1.0:
                        raise
                    method = "full"  # forward differs from the chain: fall back, still exact
                    if precision != "float32":  # the same precision as the occluded passes
                        base_logits, totals, _ = _unoccluded(model, image, layer, passes())
                        if predicted:  # the class those passes predict, the one followed
                            target = int(torch.argmax(base_logits.float()))
                        if feature_map is None:  # ... and their strongest map, watched
                            channel = int(torch.argmax(totals))
                            watch = (layer, channel)
            if method == "full":
                with passes():
                    logits, watched = _full_logits(model, image, boxes, fill_t, batch_size,
                                                   watch, progress)
        projection, projection_rule = (_deconv_projection(model, image, layer, channel)
                                       if project else (None, None))

    grid = (len(tops), len(lefts))
    probs = torch.softmax(logits.float(), dim=1)  # (N, K)
    best_p, best = probs.max(1)
    base_probs = torch.softmax(base_logits.float(), dim=0)
    return OcclusionResult(
        layer=layer, feature_map=channel, target=target, size=size, stride=stride,
        tops=tops, lefts=lefts, image_size=(h, w),
        activation=_widened(watched).view(grid).cpu(),
        probability=probs[:, target].view(grid).cpu(),
        label=best.view(grid).cpu(),
        label_probability=best_p.view(grid).cpu(),
        base_activation=float(totals[channel]),
        base_probability=float(base_probs[target]),
        base_label=int(torch.argmax(base_logits.float())),  # the class `target` follows
        method=method,
        projection=None if projection is None else projection.cpu(),
        meta={"fill": "tensor" if isinstance(fill, torch.Tensor) else float(fill), "tau": tau,
              "target": "predicted" if predicted else "given",
              "projection_rule": projection_rule,
              "precision": "float32" if method == "incremental" else precision},
        flat=flat,
    )


def _unoccluded(model: nn.Module, image: torch.Tensor, layer: str,
                within: AbstractContextManager) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The unoccluded image's logits (K,), the summed positive activation of each map of
    `layer` (C_layer,), at least in float32 (the model's float64 kept), and whether `layer` is
    flat (its maps single units); the pass run `within` a context (an autocast, or none)."""
    with within, capture(model, [layer]) as store:
        base_logits = model(image[None])[0]  # (K,)
    base_act = _widened(store[layer][0].clamp(min=0))
    return (_widened(base_logits), base_act.reshape(base_act.shape[0], -1).sum(1),
            base_act.ndim == 1)


def _widened(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32 where it is in a narrower float (bf16 autocast's), else as it is."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _deconv_projection(model: nn.Module, image: torch.Tensor, layer: str,
                       channel: int) -> tuple[torch.Tensor, str]:
    """Map (c): the strongest activation of map `channel` of `layer` on the unoccluded image,
    projected to pixels by the project's one engine (paper Sec. 2.1): (C, H, W) and the rule,
    the deconvnet's, or the gradient's where the deconvnet is undefined (a SiLU, GELU … on the
    way down)."""
    from zfnet.deconvnet import project  # the engine is only needed for this map
    from zfnet.graph import RuleUndefinedError

    try:
        return project(model, image[None], layer, channels=channel)[0], "deconvnet"
    except RuleUndefinedError:
        return project(model, image[None], layer, channels=channel, rule="gradient")[0], \
            "gradient"


# --- localisation on the built-in dataset -------------------------------------------------


def _val_centre(bundle: Any) -> Any:
    """The bundle's val split with centre crops (one (C, S, S) input per item)."""
    val = bundle.val
    return val.with_mode("centre") if getattr(val, "mode", "centre") != "centre" else val


def pointing_game(
    model: nn.Module,
    bundle: Any,
    n_images: int = 100,
    *,
    size: int | None = None,
    stride: int | None = None,
    fill: float | torch.Tensor = 0.0,
    layer: str | None = None,
    batch_size: int = 64,
    method: str = "auto",
    precision: str = "float32",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Pointing game with occlusion (paper Sec. 4.2's question, measured): for the first
    `n_images` val images of `bundle` (a `zfnet.data.DataBundle` whose val split has object
    masks: the built-in `synthetic` dataset), is the most sensitive occluder position — the
    minimum of the p(true class) map — on the object? A position is "on the object" when the
    centre pixel of its square lies in the object mask. For a model of other classes than the
    dataset's (`zfnet.analyses.classes`), the class followed is the model's prediction on the
    unoccluded image.

    Returns {"n_images", "hits", "hit_rate", "chance", "per_image": [...]}, where `chance` is
    the mean share of occluder centres that lie on the object: the hit rate of a random pick.
    `progress(done, total)`: called as the occluded images are scored (all images together).
    """
    val = _val_centre(bundle)
    if not hasattr(val, "sample"):
        raise ValueError(
            f"dataset {bundle.spec!r} has no object masks; the pointing game needs the built-in "
            "'synthetic' dataset"
        )
    if n_images < 1:
        raise ValueError(f"n_images={n_images} must be >= 1")
    picks = pick_items(val, n_images)  # the first readable ones
    n = len(picks)
    outputs = class_outputs(model, bundle)  # each class's output, where the model has them
    layer = layer or default_layer(model, tuple(picks[0][1][0].shape[-2:]))  # once
    per_image = []
    for k, (i, (x, y)) in enumerate(picks):  # (C, S, S), int
        mask = torch.from_numpy(val.sample(i).mask)  # (S, S) bool
        each = None if progress is None else (
            lambda done, total, k=k: progress(k * total + done, n * total))
        r = occlusion(model, x, target=_output(outputs, y), layer=layer, size=size,
                      stride=stride, fill=fill, batch_size=batch_size, method=method,
                      project=False, precision=precision, progress=each)
        ci, cj = r.most_sensitive()
        cy, cx = _centre(r.box(ci, cj))
        centres = [_centre(r.box(a, b)) for a in range(len(r.tops)) for b in range(len(r.lefts))]
        chance = float(np.mean([bool(mask[p]) for p in centres]))
        per_image.append({
            "index": i, "label": y, "predicted": r.base_label,
            "p_class": r.base_probability, "min_p_class": float(r.probability.min()),
            "point": (cy, cx), "hit": bool(mask[cy, cx]), "chance": chance,
        })
    hits = sum(p["hit"] for p in per_image)
    return {
        "n_images": n, "hits": hits, "hit_rate": hits / n,
        "chance": float(np.mean([p["chance"] for p in per_image])), "per_image": per_image,
    }


def _centre(box: tuple[int, int, int, int]) -> tuple[int, int]:
    t, left, b, r = box
    return (t + b - 1) // 2, (left + r - 1) // 2


# --- figures and the report section ---------------------------------------------------------


def _display(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W, C) image as float (H, W, 3) or (H, W) in 0..1, min-max stretched
    unless it is uint8."""
    a = torch.as_tensor(np.asarray(img)).detach().cpu()
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a.permute(1, 2, 0)
    a = a.squeeze(-1) if a.ndim == 3 and a.shape[-1] == 1 else a
    if a.dtype == torch.uint8:
        return a.numpy() / 255.0
    a = a.double()
    return ((a - a.min()) / (a.max() - a.min() + 1e-12)).numpy()


def _projection_display(p: torch.Tensor) -> np.ndarray:
    """A projection (C, H, W) as uint8 (H, W, 3) or (H, W) by `zfnet.display`'s rule."""
    u8 = projection_to_uint8(p.detach().cpu()).permute(1, 2, 0)
    return (u8.squeeze(-1) if u8.shape[-1] == 1 else u8).numpy()


def _colorbar(fig: Any, im: Any, ax: Any) -> None:
    """A colour bar beside panel `ax`, whose common factor or offset (1e-13 for a random
    network's tiny activations) is its label, at its side: above its top, where matplotlib puts
    it, it ran into the panel's title."""
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    axis = bar.ax.yaxis
    formatter = axis.get_major_formatter()
    formatter.set_locs(axis.get_majorticklocs())
    offset = formatter.get_offset()
    if offset:
        axis.offsetText.set_visible(False)
        bar.set_label(offset, fontsize=8)


def plot_occlusion(
    panels: list[tuple[torch.Tensor | np.ndarray, OcclusionResult]],
    class_names: list[str] | None,
    path: str | Path | BinaryIO,
) -> Path | BinaryIO:
    """Paper Fig. 7 as a PNG: one row per (displayable image, result) in `panels`, columns
    (a) the image with the most sensitive occluder drawn, (b) activation map, (c) its deconv
    projection, (d) p(correct class), (e) most probable label. Returns the path."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: no backend, no global state
    from matplotlib.patches import Patch, Rectangle

    def name(c: int) -> str:
        return class_names[c] if class_names and 0 <= c < len(class_names) else f"class {c}"

    def title(ax: Any, text: str) -> None:  # a long class name wraps inside its panel
        ax.set_title("\n".join(textwrap.fill(line, 30) for line in text.split("\n")),
                     fontsize=9)

    fig = Figure(figsize=(16, 3.3 * len(panels)))
    axes = fig.subplots(len(panels), 5, squeeze=False)
    for row, (img, r) in zip(axes, panels, strict=True):
        h, w = r.image_size
        half = r.stride / 2
        extent = (r.lefts[0] + r.size / 2 - half, r.lefts[-1] + r.size / 2 + half,
                  r.tops[-1] + r.size / 2 + half, r.tops[0] + r.size / 2 - half)
        ci, cj = r.most_sensitive()
        t, left, b, rr = r.box(ci, cj)
        cy, cx = _centre((t, left, b, rr))
        shown = _display(img)
        row[0].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        lowered = r.lowered()  # else no square is the one that hurts: none is marked
        if lowered:
            row[0].add_patch(Rectangle((left - 0.5, t - 0.5), rr - left, b - t, fill=False,
                                       ec="red", lw=1.5, ls="--"))
        if r.meta.get("target") == "predicted":  # the model's own class, not a label
            title(row[0], f"(a) predicted: {name(r.target)} (p={_p(r.base_probability)})")
        else:  # the image's label, or the class asked for
            how = "chosen" if r.meta.get("target") == "chosen" else "true"
            title(row[0], f"(a) {how}: {name(r.target)} (p={_p(r.base_probability)})\n"
                          f"predicted: {name(r.base_label)}")
        im = row[1].imshow(r.activation.numpy(), cmap="jet", extent=extent)
        title(row[1], f"(b) {'activation' if r.flat else 'total activation'}, "
                      f"{r.unit_words}")
        _colorbar(fig, im, row[1])
        if r.projection is not None:
            proj = _projection_display(r.projection)
            row[2].imshow(proj, cmap="gray" if proj.ndim == 2 else None, vmin=0, vmax=255)
            how = "gradient" if r.meta.get("projection_rule") == "gradient" else "deconv"
            title(row[2], f"(c) {how} projection, {r.unit_words}")
        else:
            row[2].text(0.5, 0.5, "(c) not computed", ha="center", va="center")
        im = row[3].imshow(r.probability.numpy(), cmap="jet", extent=extent, vmin=0)
        if lowered:
            row[3].plot([cx], [cy], marker="x", color="white", ms=9, mew=2)
        title(row[3], f"(d) p({name(r.target)}), min {float(r.probability.min()):.3g}"
                      + ("" if lowered else "\n(no square lowers it)"))
        _colorbar(fig, im, row[3])
        labels, counts = torch.unique(r.label, return_counts=True)
        order = labels[torch.argsort(counts, descending=True)].tolist()[:10]
        codes = torch.full_like(r.label, len(order))  # beyond the 10 commonest: "other"
        for k, c in enumerate(order):
            codes[r.label == c] = k
        colours = [f"C{k}" for k in range(len(order))] + ["lightgrey"]
        row[4].imshow(codes.numpy(), cmap=ListedColormap(colours), extent=extent,
                      vmin=-0.5, vmax=len(order) + 0.5, interpolation="nearest")
        followed = {"predicted": " (predicted)", "chosen": " (chosen)"}.get(
            r.meta.get("target", ""), " (true)")
        handles = [Patch(color=f"C{k}", label=name(c) + (followed if c == r.target else ""))
                   for k, c in enumerate(order)]
        row[4].legend(handles=handles, fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        row[4].set_title("(e) most probable label", fontsize=9)
        for ax in row:
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    if hasattr(path, "write"):  # an open binary file (the explorer's PNG bytes)
        fig.savefig(path, dpi=100, format="png")
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


CAPTION = (
    "Occlusion sensitivity (paper Fig. 7). A square of {fill} of {size} px slides over each "
    "image in steps of {stride} px{gaps}; each map "
    "has one value per occluder position, drawn at the square's centre. (a) The image; the "
    "dashed red square is the occluder that lowers the probability of the {target} class most "
    "(none where no square lowers it). "
    "{b} projected to pixels with {rule}: the structure it responds to. {display} "
    "(d) Probability of the {target} class: blue where covering the "
    "image hurts the classification — if the model relies on the object, the blue region lies "
    "on the object, not on the background. (e) The most probable label at each position: where "
    "covering the object makes the model switch to another class. {classes}{pointing}"
)
FILL_DATASET = "the dataset's mean colour (fill 0 after mean subtraction)"
FILL_MODEL = "the mean colour of the model's preprocessing (fill 0 after its normalisation)"
MAP_B = (
    "(b) Total activation of the {layer} feature map that is strongest on the unoccluded image "
    "(sum of its rectified map): blue where covering the image switches that feature off. "
    "(c) That map's strongest activation"
)
UNIT_B = (  # a flat layer (a fully connected one): its units are single numbers
    "(b) Activation of the {layer} unit that is strongest on the unoccluded image (its value, "
    "rectified): blue where covering the image switches that unit off. (c) That unit"
)
OTHER_CLASSES = (
    "The model's classes are not the dataset's, so (a) and (d) follow the class the model "
    "predicts on the unoccluded image, not a label of the image. "
)
CHOSEN_CLASS = "(a) and (d) follow the class asked for, {name}, on every image. "


def _output(outputs: list[int] | None, label: int) -> int | None:
    """The model's output of dataset class `label` (`class_outputs`), None to follow the
    prediction (the model's classes are others, or the image has no label)."""
    return outputs[label] if outputs is not None and 0 <= label < len(outputs) else None


def _p(v: float) -> str:
    """A probability for the table: 3 decimals, or 3 significant digits below 0.001 (the
    figure's colour bar reads 2e-06 there, not 0)."""
    return f"{v:.3f}" if v >= 1e-3 or v == 0 else f"{v:.2g}"


def occlusion_report(
    model: nn.Module,
    bundle: Any,
    run_dir: str | Path,
    *,
    n_images: int = 4,
    n_pointing: int = 100,
    size: int | None = None,
    stride: int | None = None,
    fill: float = 0.0,
    layer: str | None = None,
    batch_size: int = 64,
    method: str = "auto",
    precision: str = "float32",
    class_names: list[str] | None = None,
    pixel_scale: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    target_class: int | None = None,
) -> dict[str, Any]:
    """The whole occlusion job for the report (paper Fig. 7): maps for `n_images` val images of
    `bundle` (one per class while classes last), the figure `occlusion/fig7_occlusion.png` and,
    when the dataset has object masks (`synthetic`), the pointing game over `n_pointing` images;
    writes the report section `occlusion` into `run_dir`. Returns the numbers (also in the
    section's metrics).

    Any model: `layer` defaults to `default_layer`. Where the dataset's labels are not the
    model's classes (`zfnet.analyses.classes`: a torchvision ImageNet model on `synthetic`), map
    (d) follows the model's own prediction (where its class names name the dataset's classes,
    each at the output of its name: `class_outputs`); `class_names`: the model's class names
    (e.g. its weights' categories) for the labels drawn, default the dataset's when they are the
    model's, else class numbers. `pixel_scale`: (C,) model-input units -> pixel units for map (c)
    (`Preprocessing.pixel_scale`; default: the bundle's model's, if it has one).
    `progress(done, total)`: called as the figure's occluded images are scored (all of its
    images' together). `target_class`: the model's output whose probability (a) and (d) follow
    on every image (default: the label, else the prediction); the pointing game keeps the
    labels."""
    from zfnet.report import Figure, Section, Table, write_section

    run_dir = Path(run_dir)
    val = _val_centre(bundle)
    if n_images < 1:
        raise ValueError(f"n_images={n_images} must be >= 1")
    # one image per class first, then the next ones; broken files passed over (and said)
    broken: list[int] = []
    picks = pick_items(val, n_images, one_per_class=True, passed=broken)
    if not picks:
        raise ValueError(f"none of {val_words(bundle)} can be read (each file is broken)")
    outputs = class_outputs(model, bundle)  # each class's output, where the model has them
    own = outputs is not None
    shown = labels_of(bundle)  # with their words (words=FILE)
    names = as_shown(class_names, bundle) or (
        shown if outputs == list(range(len(shown))) else None)
    pre = getattr(bundle, "preprocessing", None)
    if pixel_scale is None and pre is not None:
        pixel_scale = pre.pixel_scale()
    layer = layer or default_layer(model, tuple(picks[0][1][0].shape[-2:]))
    on_scores = layer_name(model, layer) == layer_name(model, score_layer(model))
    # the pointing game's images counted in the total too: it often takes most of the time
    pointed = min(n_pointing, len(val)) if hasattr(val, "sample") and n_pointing > 0 else 0
    whole = len(picks) + pointed
    panels, rows = [], []
    for k, (i, (x, y)) in enumerate(picks):
        # every image has the same occluder positions: k images' worth of them before this one
        each = None if progress is None else (
            lambda done, total, k=k: progress(k * total + done, whole * total))
        target = target_class if target_class is not None else _output(outputs, y)
        r = occlusion(model, x, target=target, layer=layer, size=size,
                      stride=stride, fill=fill, batch_size=batch_size, method=method,
                      precision=precision, progress=each)
        if target_class is not None:
            r.meta["target"] = "chosen"
        if pixel_scale is not None and r.projection is not None:
            r.projection = r.projection * pixel_scale.reshape(-1, 1, 1)
        if r.flat and names and on_scores and r.feature_map < len(names):
            r.meta["unit_name"] = names[r.feature_map]  # a class's score
        panels.append((bundle.raw_val(i), r))
        predicted = (names[r.base_label] if names and r.base_label < len(names)
                     else f"class {r.base_label}")  # a model without class names
        true = [shown[y] if 0 <= y < len(shown) else "-"] \
            if shown else []  # a folder of photos has none
        rows.append([file_name(val, i) or i, *true, predicted,
                     _p(r.base_probability), _p(float(r.probability.min())),
                     r.unit_words])
    fig_path = plot_occlusion(panels, names, run_dir / "occlusion" / "fig7_occlusion.png")
    first = panels[0][1]
    chosen = None if target_class is None else (
        repr(names[target_class]) if names and target_class < len(names)
        else f"class {target_class}")
    metrics: dict[str, Any] = {"occluder_px": first.size, "stride_px": first.stride,
                               "layer": first.layer, "method": first.method,
                               "precision": first.meta["precision"],
                               "class_followed": "label" if own else "predicted"}
    if chosen is not None:
        metrics["class_followed"] = f"chosen: {chosen}"
    pointing_text = ""
    followed = chosen or ("true" if own else "predicted")
    tables = [Table(["image", *(["true class"] if bundle.class_names else []), "predicted",
                     f"p({followed})", f"min p({followed}) occluded",
                     f"strongest {first.what}"], rows,
                    "The images of the figure, in its order." + (
                        f" {len(broken)} broken file{'s' * (len(broken) > 1)} passed over: "
                        + ", ".join(str(file_name(val, i) or i) for i in sorted(broken))
                        if broken else ""))]
    if pointed:
        per = len(first.tops) * len(first.lefts)  # occluder positions, the same for every image
        pg = pointing_game(
            model, bundle, n_pointing, size=size, stride=stride, fill=fill, layer=layer,
            batch_size=batch_size, method=method, precision=precision,
            progress=None if progress is None else (  # after the figure's images
                lambda done, _total: progress(len(picks) * per + done, whole * per)))
        metrics.update(pointing_hit_rate=round(pg["hit_rate"], 3),
                       pointing_chance=round(pg["chance"], 3), pointing_images=pg["n_images"])
        pointing_text = (
            f"Pointing game on {pg['n_images']} val images of '{bundle.spec}': the most "
            f"sensitive occluder position lies on the object mask in {pg['hit_rate']:.0%} of "
            f"the images; a random position would in {pg['chance']:.0%} (the object's share of "
            "occluder centres)."
        )
    rules = {r.meta.get("projection_rule") for _, r in panels} - {None}
    rule = ("the gradient (the deconvnet is undefined through this model's non-rectifier "
            "activations)" if rules == {"gradient"} else "the deconvnet")
    # what fill 0 is: the mean the inputs had subtracted (a model's normalisation: its mean)
    fill_words = FILL_DATASET if pre is None or pre.mean_image is not None else FILL_MODEL
    caption = CAPTION.format(size=first.size, stride=first.stride, fill=fill_words,
                             gaps=gap_words(first.size, first.stride),
                             b=(UNIT_B if first.flat else MAP_B).format(layer=first.layer),
                             pointing=pointing_text, display=DISPLAY_CAPTION, rule=rule,
                             classes=CHOSEN_CLASS.format(name=chosen) if chosen
                             else "" if own else OTHER_CLASSES,
                             target=f"chosen ({chosen})" if chosen
                             else "true" if own else "predicted")
    write_section(run_dir, Section(
        key="occlusion", title="Occlusion sensitivity (Fig. 7)", caption=caption,
        figures=[Figure(str(fig_path.relative_to(run_dir)), "Rows: the images of the table. "
                        "Columns: (a) image, (b) layer activation, (c) "
                        + ("gradient" if rules == {"gradient"} else "deconv") + " projection, "
                        f"(d) p({chosen or followed + ' class'}), (e) most probable "
                        "label.")],
        tables=tables, metrics=metric_words(metrics), order=70,
    ))
    return metrics


def metric_words(metrics: dict[str, Any]) -> dict[str, str]:
    """`occlusion_report`'s numbers as a reader's labelled phrases (the report section's
    metrics and the CLI's summary line)."""
    words = {
        "occluder": f"{metrics['occluder_px']} px, stride {metrics['stride_px']} px",
        "layer": str(metrics["layer"]),
        "method": f"{metrics['method']}, {metrics['precision']}",
        "p(class) of": "the true class" if metrics["class_followed"] == "label"
        else "the predicted class" if metrics["class_followed"] == "predicted"
        else "the class " + metrics["class_followed"].removeprefix("chosen: "),
    }
    if "pointing_hit_rate" in metrics:
        words["pointing game"] = (f"{metrics['pointing_hit_rate']:.0%} hits on "
                                  f"{metrics['pointing_images']} images (chance "
                                  f"{metrics['pointing_chance']:.0%})")
    return words
