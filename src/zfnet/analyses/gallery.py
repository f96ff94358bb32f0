"""The top-k gallery (paper Fig. 2): for feature maps of layers 1-5, the k strongest activations
over a dataset, each projected to pixels with the deconvnet, beside the matching image patches.

`run_topk_gallery` does the whole job: mine (`zfnet.analyses.topk`), choose the maps, project
every top-k activation (one forward pass per chunk of images, all its seeds together, cropped
to receptive fields), draw one PNG per layer and hand the report a section.

Which maps: every map of the first conv layer (as the paper shows all of layer 1); for higher
layers `n_maps` (default 16) chosen by `map_rule`: "strongest" (default) takes the maps with
the highest top-1 activation over the data, ties by map number, so that maps that never fire
are not shown; "spaced" takes maps evenly spaced over 0..C-1 (an unbiased sample, like the
paper's random subset). `maps={layer: [...]}` overrides both.

Display: each projection on its own scale by the one rule of `zfnet.display` (mid-grey = 0,
sign kept, clipped at a high percentile of its |values|), so no projection's scale hides
another's and one extreme pixel does not grey out the rest. Image patches are the
receptive-field boxes of the activations (`LayerGeometry.box`); parts outside the image are
black.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from zfnet.analyses.topk import TopK, mine_topk, save_topk
from zfnet.deconvnet import RULES, Seeds, project_layers
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import projection_to_uint8
from zfnet.models import layer_info
from zfnet.report import Figure, Section, Table, write_section

MAP_RULES = ("strongest", "spaced")

CAPTION = """
Paper Fig. 2. Each block is one feature map of the layer. Left: the {k} strongest activations
of that map over {n} images, each projected separately down to pixels ({rule}) and cropped to
the activation's receptive field ({rf}). Right: the matching image patches. {display}
Reading the sign: the projection is in the units of the mean-subtracted
input, so bright / coloured pixels push the activation up and dark ones are the opposite
pattern; the deconvnet rectifies the signal at every ReLU on the way down, but the transposed
filters below that ReLU still mix signs. Deconvnet (the paper) vs guided backpropagation: the
deconvnet depends on the image only through the max-pooling switches, so it shows what the
feature looks for; guided backpropagation also masks by where the image activated each ReLU,
so it is sharper and more tied to the image; the plain gradient keeps negative signals too."""

_RULE_NAMES = {"deconvnet": "deconvnet, paper Sec. 2.1", "guided": "guided backpropagation",
               "gradient": "gradient"}


@dataclass
class GalleryResult:
    """What `run_topk_gallery` made: the mined top-k, the maps shown, the files written."""

    topk: dict[str, TopK]
    maps: dict[str, list[int]]
    projections: dict[str, Tensor]  # layer -> (maps, k, C, rf, rf) projections, input units
    figures: dict[str, Path] = field(default_factory=dict)  # layer -> PNG
    section: Path | None = None


def default_layers(model: nn.Module) -> list[str]:
    """conv1…conv5 for zfnet's models (those present), every Conv2d in `features` otherwise."""
    infos = layer_info(model)
    convs = [n for n, i in infos.items() if i.kind == "conv" and i.module.startswith("features.")]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no conv layer in `features` to show")
    return convs


def select_maps(topk: TopK, n: int, rule: str = "strongest") -> list[int]:
    """`n` maps of a layer to show, by `rule` ("strongest" or "spaced", see module doc)."""
    c = topk.values.shape[0]
    if rule not in MAP_RULES:
        raise ValueError(f"map_rule={rule!r} is not known; valid: {', '.join(MAP_RULES)}")
    if n >= c:
        return list(range(c))
    if rule == "spaced":
        return [int(round(i * (c - 1) / max(n - 1, 1))) for i in range(n)]
    top1 = topk.values[:, 0].masked_fill(topk.values[:, 0].isnan(), float("-inf"))
    order = torch.argsort(top1, descending=True, stable=True)[:n]
    return sorted(order.tolist())


def _item_image(dataset: Dataset, i: int) -> Tensor:
    item = dataset[i]
    x = item[0] if isinstance(item, (tuple, list)) else item
    if x is None:
        raise ValueError(f"dataset item {i} could not be read")
    return x


def project_topk(
    model: nn.Module,
    dataset: Dataset,
    topk: Mapping[str, TopK],
    maps: Mapping[str, Sequence[int]],
    rule: str = "deconvnet",
    *,
    lrn: str = "gradient",
    images_per_pass: int = 32,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    """Project every top-k activation of the chosen maps of each layer (paper Fig. 2).

    Returns {layer: (len(maps[layer]), k, C, rf, rf)}, cropped to the receptive field and
    seeded with the activation; empty slots stay zero. Seeds of every layer are grouped by
    image: each chunk of `images_per_pass` images goes forward once, and all of its seeds
    (any layer, any map) go down from there, `batch_size` seeds at a time
    (`zfnet.deconvnet.project_layers`).
    """
    # (layer, block a, slot j, image) for every seed
    seeds = [(name, a, j, int(topk[name].index[c, j]))
             for name in maps for a, c in enumerate(maps[name]) for j in range(topk[name].k)
             if topk[name].index[c, j] >= 0]
    images = sorted({s[3] for s in seeds})
    out: dict[str, Tensor] = {}
    for lo in range(0, len(images), images_per_pass):
        chunk = images[lo: lo + images_per_pass]
        local = {g: i for i, g in enumerate(chunk)}
        x = torch.stack([_item_image(dataset, g) for g in chunk])  # (B, C, H, W)
        todo: dict[str, tuple[Tensor, Tensor]] = {}
        asks: dict[str, Seeds] = {}
        for name in maps:
            mine = [(a, j, i) for n, a, j, i in seeds if n == name and i in local]
            if not mine:
                continue
            t = topk[name]
            a_ = torch.tensor([m[0] for m in mine])
            j_ = torch.tensor([m[1] for m in mine])
            ch = torch.tensor(list(maps[name]), dtype=torch.long)[a_]
            pos = torch.stack([t.row[ch, j_], t.col[ch, j_]], 1)  # (S, 2)
            asks[name] = Seeds(torch.tensor([local[m[2]] for m in mine]), ch, pos)
            todo[name] = (a_, j_)
        rfs = project_layers(model, x, asks, rule, lrn=lrn, batch_size=batch_size)
        for name, rf in rfs.items():
            if name not in out:
                out[name] = torch.zeros(len(maps[name]), topk[name].k, *rf.values.shape[1:],
                                        dtype=rf.values.dtype)  # on the CPU
            a_, j_ = todo[name]
            out[name][a_, j_] = _to_host(rf.values)
    missing = [name for name in maps if name not in out]
    if missing:
        raise ValueError(f"no activations to project for {', '.join(missing)}: top-k is empty")
    return out


def _to_host(t: Tensor) -> Tensor:
    """`t` on the CPU. From a GPU through page-locked memory: a copy to ordinary (pageable)
    memory runs at a fraction of the bus's speed, and was over half the time of a top-9
    gallery on an H200 (bench/bench_topk.py --profile)."""
    if t.device.type != "cuda":
        return t.cpu()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)  # cached by torch after once
    return host.copy_(t)


def to_rgb(u8: Tensor) -> np.ndarray:
    """(C, h, w) uint8 with C in {1, 3} -> (h, w, 3) numpy."""
    if u8.shape[0] == 1:
        u8 = u8.expand(3, *u8.shape[1:])
    elif u8.shape[0] != 3:
        raise ValueError(f"cannot show images with {u8.shape[0]} channels; 1 or 3 expected")
    return u8.permute(1, 2, 0).contiguous().numpy()


def _patch(image: Tensor, top: int, left: int, side: int) -> Tensor:
    """The side x side window of a uint8 (C, H, W) image at (top, left); black outside."""
    c, h, w = image.shape
    out = torch.zeros(c, side, side, dtype=torch.uint8)
    t0, l0, t1, l1 = max(top, 0), max(left, 0), min(top + side, h), min(left + side, w)
    if t1 > t0 and l1 > l0:
        out[:, t0 - top: t1 - top, l0 - left: l1 - left] = image[:, t0:t1, l0:l1]
    return out


def default_display(dataset: Dataset) -> Callable[[int], Tensor]:
    """Display images made from the model inputs: each image min-max scaled to 0..255."""

    def show(i: int) -> Tensor:
        x = _item_image(dataset, i).float()
        lo, hi = x.min(), x.max()
        return ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)

    return show


def render_layer(
    projections: Tensor, patches: Tensor, path: str | Path, *, columns: int | None = None,
    min_side: int = 40,
) -> Path:
    """Draw a Fig. 2 grid: per map a block of k projections beside its k image patches.

    projections (M, k, C, s, s) float; patches (M, k, C, s, s) uint8. Small windows are
    enlarged (nearest neighbour, integer factor) to at least `min_side` pixels.
    """
    m, k, _, s, _ = projections.shape
    zoom = max(1, math.ceil(min_side / s))
    side = s * zoom
    g = math.ceil(math.sqrt(k))  # each block of k is g x g
    pad, gap = 1, 4
    half = g * (side + pad) + pad
    block_w, block_h = 2 * half + gap, half
    cols = columns or min(m, max(1, round(math.sqrt(m * block_h / block_w * 1.6))))
    rows = math.ceil(m / cols)
    sep = 8
    canvas = np.full((rows * (block_h + sep), cols * (block_w + sep), 3), 255, np.uint8)
    shown = projection_to_uint8(projections)  # (M, k, C, s, s)
    for a in range(m):
        by, bx = (a // cols) * (block_h + sep), (a % cols) * (block_w + sep)
        canvas[by: by + block_h, bx: bx + block_w] = 0
        for j in range(k):
            y = by + pad + (j // g) * (side + pad)
            for half_i, img in enumerate((to_rgb(shown[a, j]), to_rgb(patches[a, j]))):
                x = bx + half_i * (half + gap) + pad + (j % g) * (side + pad)
                canvas[y: y + side, x: x + side] = img.repeat(zoom, 0).repeat(zoom, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


def run_topk_gallery(
    model: nn.Module,
    dataset: Dataset,
    layers: Sequence[str] | None = None,
    k: int = 9,
    out_dir: str | Path = "gallery",
    *,
    maps: Mapping[str, Sequence[int]] | None = None,
    n_maps: int = 16,
    map_rule: str = "strongest",
    rule: str = "deconvnet",
    lrn: str = "gradient",
    display_image: Callable[[int], Tensor] | None = None,
    topk: Mapping[str, TopK] | None = None,
    run_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> GalleryResult:
    """The whole Fig. 2 job: mine the top-k of `layers` over `dataset`, project them, write
    `out_dir/topk.pt`, one `out_dir/topk_<layer>.png` per layer, and the report section
    `topk_gallery` into `run_dir` (default `out_dir`, which must lie inside it).

    dataset items are (x, y) or x with x a model input (C, S, S). display_image(i) gives item
    i as uint8 (C, S, S) for the patches (e.g. `DataBundle.raw_val`); default: the model input
    min-max scaled. topk: already mined results to reuse. Layers default to `default_layers`.
    """
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not known; valid: {', '.join(RULES)}")
    layers = list(layers) if layers else default_layers(model)
    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir is not None else out_dir
    try:
        rel_dir = out_dir.resolve().relative_to(run_dir.resolve())
    except ValueError:
        raise ValueError(f"out_dir {out_dir} must lie inside run_dir {run_dir}") from None
    if topk is None or any(name not in topk for name in layers):
        topk = mine_topk(model, dataset, layers, k, batch_size=batch_size, device=device,
                         progress=progress)
    topk = {name: topk[name] for name in layers}
    save_topk(topk, out_dir / "topk.pt")
    show = display_image or default_display(dataset)
    infos = layer_info(model, _input_size(model, dataset))
    first = default_layers(model)[0]  # shown whole, as the paper shows all of layer 1
    shape = tuple(_item_image(dataset, 0).shape)
    result = GalleryResult(topk=topk, maps={}, projections={})
    figures, rows = [], []
    chosen: dict[str, list[int]] = {}
    for name in layers:
        t = topk[name]
        chosen[name] = list(maps[name]) if maps and name in maps else select_maps(
            t, t.values.shape[0] if name == first else n_maps, map_rule)
        bad = [c for c in chosen[name] if not 0 <= c < t.values.shape[0]]
        if bad:
            raise ValueError(f"maps {bad} do not exist in {name} ({t.values.shape[0]} maps)")
    projections = project_topk(model, dataset, topk, chosen, rule, lrn=lrn)
    cache: dict[int, Tensor] = {}
    for name in layers:
        t, proj = topk[name], projections[name]  # (M, k, C, s, s)
        geo = infos[name].geometry
        patches = torch.zeros(*proj.shape, dtype=torch.uint8)
        for a, c in enumerate(chosen[name]):
            for j in range(t.k):
                i = int(t.index[c, j])
                if i < 0:
                    continue
                if i not in cache:
                    cache[i] = _check_display(show(i), shape, i)
                top, left, _, _ = geo.box(int(t.row[c, j]), int(t.col[c, j]))
                patches[a, j] = _patch(cache[i], top, left, proj.shape[-1])
        png = render_layer(proj, patches, out_dir / f"topk_{name.replace('.', '_')}.png")
        result.maps[name], result.projections[name], result.figures[name] = (
            chosen[name], proj, png)
        figures.append(Figure(str(rel_dir / png.name), f"{name}: maps {_ranges(chosen[name])}"))
        rows.append([name, len(chosen[name]), t.values.shape[0], geo.rf,
                     round(float(t.values[chosen[name], 0].mean()), 3)])
    n_images = len(dataset)
    caption = " ".join(CAPTION.split()).format(k=k, n=n_images, rule=_RULE_NAMES[rule],
                             rf=", ".join(f"{r[0]} {r[3]} px" for r in rows),
                             display=DISPLAY_CAPTION)
    result.section = write_section(run_dir, Section(
        key="topk_gallery",
        title=f"Top-{k} activations and their projections (Fig. 2)",
        caption=caption,
        figures=figures,
        tables=[Table(["layer", "maps shown", "maps", "receptive field (px)",
                       "mean top-1 activation (shown maps)"], rows,
                      f"Maps chosen by '{map_rule}' (see zfnet.analyses.gallery); "
                      f"contrast normalisation undone by '{lrn}'.")],
        metrics={"images": n_images, "k": k, "rule": rule},
        order=30,
    ))
    return result


def _input_size(model: nn.Module, dataset: Dataset) -> int:
    return int(_item_image(dataset, 0).shape[-1])


def _check_display(img: Any, shape: tuple[int, ...], i: int) -> Tensor:
    """Display images must be uint8 and the size of the model input (boxes are in its pixels)."""
    img = torch.as_tensor(img)
    if img.dtype != torch.uint8 or tuple(img.shape) != shape:
        raise ValueError(f"display_image({i}) must give uint8 {shape} like the model input, got "
                         f"{img.dtype} {tuple(img.shape)}")
    return img


def _ranges(maps: list[int]) -> str:
    if maps == list(range(len(maps))):
        return f"all {len(maps)}"
    return ", ".join(str(c) for c in maps)
