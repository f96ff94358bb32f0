"""The top-k gallery (paper Fig. 2): for feature maps of layers 1-5, the k strongest activations
over a dataset, each projected to pixels with the deconvnet, beside the matching image patches.
Any CNN: the layers default to `zfnet.models.feature_layers` (zfnet's conv1…conv5, a chain's
convolutions, the main stages of a ResNet, DenseNet, MobileNet …).

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

Windows. Each tile and its patch show the same window of the input: the activation's receptive
field (`zfnet.models.layer_geometries`; rows and columns may differ). Layers of a plain chain
come from the windowed engine at their receptive field's size, as the paper shows them. Any other
layer comes from the general path as a whole-image projection, cut to the same box; a field
larger than the image (a ResNet's layer4) is shown as the whole image along that axis, and a
layer whose units see every position (global pooling, fc layers) shows the whole image. A
`gated` layer (squeeze-and-excitation, group norm) also depends on the whole image through its
gate or statistics, which its figure's caption says: its box is the field of the map they act
on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torch.utils.data import Dataset

from zfnet.analyses.topk import TopK, mine_topk, mine_topk_distributed, save_topk
from zfnet.deconvnet import PRECISIONS, Seeds, project_layers, windowed
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import (
    LABEL_COLOUR,
    LABEL_HEIGHT,
    fit_text,
    label_font,
    projection_to_uint8,
    save_png,
)
from zfnet.graph import SEEDS, check_rule, fallback_words, fallbacks_recorded, rule_label
from zfnet.models import LayerGeometry, feature_layers, layer_geometries
from zfnet.progress import counted_progress, tally
from zfnet.report import Figure, Section, Table, write_section
from zfnet.train.distributed import current_rank

MAP_RULES = ("strongest", "spaced")
# said where the projections went down a graph in bfloat16 (measured on a ResNet-50's gallery:
# every pixel within 4 of 255 grey levels of float32's, docs/results.md)
BF16_NOTE = (" The projections went down the network in bfloat16: the pictures are float32's "
             "within a few grey levels.")

CAPTION = """
Paper Fig. 2. Each block is one {block}. Left: the {k} strongest activations
of that {one} over {n}, one per image (its strongest position), each projected
separately down to pixels ({rule}) and cropped to
the activation's receptive field ({rf}). Right: the matching image patches. {display}
Reading the sign: the projection is in the units of the mean-subtracted
input, so bright / coloured pixels push the activation up and dark ones are the opposite
pattern; the deconvnet rectifies the signal at every ReLU on the way down, but the transposed
filters below that ReLU still mix signs. Deconvnet (the paper) vs guided backpropagation: the
deconvnet depends on the image only through the max-pooling switches (and the contrast
normalisation's rescaling, where the model has one), so it shows what the feature looks for;
guided backpropagation also masks by where the image activated each ReLU, so it is sharper
and more tied to the image; the plain gradient keeps negative signals too."""

RULE_NAMES = {"deconvnet": "deconvnet, paper Sec. 2.1", "guided": "guided backpropagation",
               "gradient": "gradient"}


@dataclass
class GalleryResult:
    """What `run_topk_gallery` made: the mined top-k, the maps shown, the files written."""

    topk: dict[str, TopK]
    maps: dict[str, list[int]]
    projections: dict[str, Tensor]  # layer -> (maps, k, C, h, w) projections, input units
    figures: dict[str, Path] = field(default_factory=dict)  # layer -> PNG
    patches: dict[str, Tensor] = field(default_factory=dict)  # layer -> (maps, k, C, h, w) uint8
    section: Path | None = None
    inactive: dict[str, list[int]] = field(default_factory=dict)  # layer -> maps shown blank


def default_layers(model: nn.Module, input_size: int | tuple[int, int] | None = None
                   ) -> list[str]:
    """The layers shown when none is named: `zfnet.models.feature_layers` (conv1…conv5 for
    zfnet's models, the convolutions of a `features` chain, the main stages of any other CNN)."""
    return feature_layers(model, input_size)


def unit_windows(geo: LayerGeometry | None, row: Tensor, col: Tensor, size: tuple[int, int],
                 whole: bool) -> tuple[Tensor, Tensor, int, int]:
    """Where the tiles of units (row[s], col[s]) of a layer of geometry `geo` lie in an input
    of `size` (H, W): (top (S,), left (S,), h, w), the same window for the projection and the
    image patch. The receptive field's box, at its full size (`whole` False: the windowed
    engine's crops), or, for whole-image projections, along an axis where the field is larger
    than the image, the whole axis; `geo` None: the whole image."""
    if geo is None:
        zero = torch.zeros_like(row)
        return zero, zero.clone(), size[0], size[1]
    out = []
    for ax, u, n in ((geo.rows, row, size[0]), (geo.cols, col, size[1])):
        start = ax.first + u * ax.jump
        if whole and ax.rf > n:
            out.append((torch.zeros_like(start), n))
        else:
            out.append((start, ax.rf))
    (top, h), (left, w) = out
    return top, left, h, w


def window(image: Tensor, top: int, left: int, h: int, w: int) -> Tensor:
    """The h x w window of `image` (C, H, W) at (top, left), of its dtype, zero (black) where
    it leaves the image: a unit's patch, or its projection cut from a whole-input one."""
    c, hh, ww = image.shape
    out = image.new_zeros(c, h, w)
    t0, l0, t1, l1 = max(top, 0), max(left, 0), min(top + h, hh), min(left + w, ww)
    if t1 > t0 and l1 > l0:
        out[:, t0 - top: t1 - top, l0 - left: l1 - left] = image[:, t0:t1, l0:l1]
    return out


def _cut(values: Tensor, top: Tensor, left: Tensor, h: int, w: int) -> Tensor:
    """Windows (top[s], left[s], h, w) of whole-input projections values (S, C, H, W):
    (S, C, h, w), zero outside the input."""
    out = values.new_zeros(values.shape[0], values.shape[1], h, w)
    for i, (t, lf) in enumerate(zip(top.tolist(), left.tolist(), strict=True)):
        out[i] = window(values[i], t, lf, h, w)
    return out


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


def first_image(dataset: Dataset) -> Tensor:
    """The model input (C, H, W) of the dataset's first readable item (broken files passed
    over); ValueError when there is none, or items are not model inputs or (x, y) pairs."""
    from zfnet.data.picks import first_item

    item = first_item(dataset)[1]  # type: ignore[arg-type]
    x = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(x, Tensor) or x.ndim != 3:
        raise ValueError("dataset items must be model inputs (C, H, W) or (x, y) pairs of them"
                         f", got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    return x


def check_defined(model: nn.Module, x: Tensor, layers: Sequence[str], rule: str,
                  lrn: str = "gradient") -> None:
    """`RuleUndefinedError` now, before a long mining pass, where `rule` cannot go back from
    one of `layers` through the model (a SiLU, GELU … on the way down, under
    `zfnet.graph.nonlinear("error")`, the default): one seed of each layer projected for one
    image `x` (C, H, W)."""
    from zfnet.graph import current_nonlinear

    if rule == "gradient" or current_nonlinear() != "error" or not layers:
        return
    project_layers(model, x[None], {name: Seeds([0], [0]) for name in layers}, rule, lrn=lrn)


def write_topk_table(topk: Mapping[str, TopK], dataset: Dataset,
                     geometries: Mapping[str, LayerGeometry | None], size: tuple[int, int],
                     path: str | Path) -> Path:
    """`path`, a JSON file anyone can read: for every map of every layer, its top k, best first,
    each the image (its file name where the dataset has files, else null; `item`: its index in
    the dataset), the activation, the unit's row and column in the map, and its receptive
    field in the input, [top, left, bottom, right] (bottom and right excluded; null for a
    layer whose units see the whole input)."""
    from zfnet.atomic import write_text_atomic
    from zfnet.data.picks import file_name

    names: dict[int, str | None] = {}
    layers = []
    for name, t in topk.items():
        geo = geometries.get(name)
        maps = []
        for c in range(t.values.shape[0]):
            entries = []
            for j in range(t.k):
                i = int(t.index[c, j])
                if i < 0:  # an empty slot: fewer than k images seen
                    break
                if i not in names:
                    names[i] = file_name(dataset, i)
                r, q = int(t.row[c, j]), int(t.col[c, j])
                entries.append({"image": names[i], "item": i,
                                "activation": round(float(t.values[c, j]), 6), "row": r,
                                "col": q, "box": list(geo.box(r, q, size)) if geo else None})
            maps.append(json.dumps(entries, separators=(",", ":")))  # a map a line
        head = json.dumps({"k": t.k, "mined": t.mined})[:-1]
        layers.append(f'{json.dumps(name)}: {head}, "maps": [\n' + ",\n".join(maps) + "]}")
    return write_text_atomic(path, '{"format": "zfnet-topk/1", "input": '
                             f'{json.dumps(list(size))}, "layers": {{\n'
                             + ",\n".join(layers) + "}}\n")


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
    geometries: Mapping[str, LayerGeometry | None] | None = None,
    precision: str = "float32",
    seed: str = "activation",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Tensor]:
    """Project every top-k activation of the chosen maps of each layer (paper Fig. 2).

    Returns {layer: (len(maps[layer]), k, C, h, w)}, each cut to its unit's window
    (`unit_windows`: the receptive field, rows x columns) and seeded with the activation; empty
    slots stay zero. Seeds of every layer are grouped by image: each chunk of
    `images_per_pass` images goes forward once, and all of its seeds (any layer, any map) go
    down from there, `batch_size` seeds at a time (`zfnet.deconvnet.project_layers`). Any layer
    of any model: off a plain chain, the general path's whole-image projections are cut to the
    same windows (`geometries`: each layer's, default `zfnet.models.layer_geometries`).
    precision: what the general path's signals go down in (`project_layers`). seed: what each
    unit goes down with, its activation or 1 (`project_layers`: "one" shows what would raise a
    unit at or below zero, which its activation projects to nothing). progress: called with
    (units projected, units in all) as they go down (`zfnet.progress.counted_progress`).
    """
    # (layer, block a, slot j, image) for every seed
    seeds = [(name, a, j, int(topk[name].index[c, j]))
             for name in maps for a, c in enumerate(maps[name]) for j in range(topk[name].k)
             if topk[name].index[c, j] >= 0]
    went = tally(progress, len(seeds))
    images = sorted({s[3] for s in seeds})
    whole = not windowed(model, list(maps))  # the general path: whole-image projections
    if whole and images and geometries is None:
        size = tuple(_item_image(dataset, images[0]).shape[-2:])
        geometries = layer_geometries(model, list(maps), size)  # type: ignore[arg-type]
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
        rfs = project_layers(model, x, asks, rule, lrn=lrn, batch_size=batch_size,
                             precision=precision, seed=seed, progress=went)
        for name, rf in rfs.items():
            values = _to_host(rf.values)
            if whole:  # (S, C, H, W) -> each unit's window
                top, left, h, w = unit_windows(geometries[name], rf.row.cpu(),  # type: ignore[index]
                                               rf.col.cpu(), tuple(x.shape[-2:]), True)
                values = _cut(values, top, left, h, w)
            if name not in out:
                out[name] = torch.zeros(len(maps[name]), topk[name].k, *values.shape[1:],
                                        dtype=values.dtype)  # on the CPU
            a_, j_ = todo[name]
            out[name][a_, j_] = values
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


def default_display(dataset: Dataset) -> Callable[[int], Tensor]:
    """Display images made from the model inputs: each image min-max scaled to 0..255."""

    def show(i: int) -> Tensor:
        x = _item_image(dataset, i).float()
        lo, hi = x.min(), x.max()
        return ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)

    return show


def block_grid(k: int) -> tuple[int, int]:
    """(rows, columns) of a block of k tiles in a top-k figure: ceil(sqrt(k)) to a row, as
    many rows as they fill — 3 x 3 for 9, 2 rows of 3 for 6 (k cut to the images mined), no
    empty row."""
    cols = max(1, math.ceil(math.sqrt(k)))
    return math.ceil(k / cols), cols


def render_layer(
    projections: Tensor, patches: Tensor, path: str | Path | BinaryIO, *,
    columns: int | None = None, min_side: int = 40, labels: Sequence[str] | None = None,
) -> Path | BinaryIO:
    """Draw a Fig. 2 grid: per map a block of k projections beside its k image patches, each
    `block_grid(k)` (3 x 3 for 9; 2 rows of 3 for 6).

    projections (M, k, C, h, w) float; patches (M, k, C, h, w) uint8. Small windows are
    enlarged (nearest neighbour, integer factor) until their longer side has at least
    `min_side` pixels. labels: one per block, drawn above it ("map 12"; cut to its width).
    path: a file path, or an open binary file the PNG is written to.
    """
    m, k, _, sh, sw = projections.shape
    zoom = max(1, math.ceil(min_side / max(sh, sw)))
    th, tw = sh * zoom, sw * zoom  # a tile
    g_rows, g = block_grid(k)  # each block of k: g to a row
    pad, gap = 1, 4
    half = g * (tw + pad) + pad  # a half block's width
    block_w, block_h = 2 * half + gap, g_rows * (th + pad) + pad
    cols = columns or min(m, max(1, round(math.sqrt(m * block_h / block_w * 1.6))))
    rows = math.ceil(m / cols)
    sep = 8
    if labels is not None and len(labels) != m:
        raise ValueError(f"{len(labels)} labels for {m} maps")
    top = LABEL_HEIGHT if labels is not None else 0  # each block's label above it
    canvas = np.full((rows * (top + block_h + sep), cols * (block_w + sep), 3), 255, np.uint8)
    shown = projection_to_uint8(projections)  # (M, k, C, s, s)
    for a in range(m):
        by, bx = (a // cols) * (top + block_h + sep) + top, (a % cols) * (block_w + sep)
        canvas[by: by + block_h, bx: bx + block_w] = 0
        for j in range(k):
            y = by + pad + (j // g) * (th + pad)
            for half_i, img in enumerate((to_rgb(shown[a, j]), to_rgb(patches[a, j]))):
                x = bx + half_i * (half + gap) + pad + (j % g) * (tw + pad)
                canvas[y: y + th, x: x + tw] = img.repeat(zoom, 0).repeat(zoom, 1)
    if labels is not None:
        img = Image.fromarray(canvas)
        draw, font = ImageDraw.Draw(img), label_font()
        for a, text in enumerate(labels):
            by, bx = (a // cols) * (top + block_h + sep), (a % cols) * (block_w + sep)
            draw.text((bx + 1, by + 1), fit_text(text, block_w - 2, font), fill=LABEL_COLOUR,
                      font=font)
        canvas = np.asarray(img)
    return save_png(canvas, path)


def run_topk_gallery(
    model: nn.Module,
    dataset: Dataset,
    layers: str | Sequence[str] | None = None,
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
    pixel_scale: Tensor | None = None,
    distributed: bool = False,
    num_workers: int = 0,
    unit_names: Mapping[str, Sequence[str]] | None = None,
    journal_key: str | None = None,
    precision: str = "float32",
    seed: str = "activation",
) -> GalleryResult:
    """The whole Fig. 2 job: mine the top-k of `layers` over `dataset`, project them, write
    `out_dir/topk.pt`, its table `out_dir/topk.json` (`write_topk_table`), one
    `out_dir/topk_<layer>.png` per layer, and the report section
    `topk_gallery` into `run_dir` (default `out_dir`, which must lie inside it).

    dataset items are (x, y) or x with x a model input (C, H, W). display_image(i) gives item
    i as uint8 (C, H, W) for the patches (e.g. `DataBundle.raw_val`); default: the model input
    min-max scaled. topk: already mined results to reuse. Layers default to `default_layers`.
    Any layer of any model (see the module doc for the windows shown). pixel_scale: (C,)
    model-input units -> the image's pixel units (`Preprocessing.pixel_scale`, a model whose
    inputs are divided by a std), applied to the projections kept and drawn.

    distributed: every process of the initialised process group (torchrun) calls this; each
    mines its contiguous shard of `dataset` and the shards are merged
    (`zfnet.analyses.topk.mine_topk_distributed`, the answer of one process); then the first
    process alone projects and writes everything. The others write nothing and return the
    merged top-k only (no maps, projections or files). num_workers: the mining's DataLoader
    workers (decoding a large dataset for a GPU). unit_names: {layer: a name per map} shown with
    the maps in the caption (the class scores' layer: its class names). journal_key: what
    identifies the model and the data (`zfnet.analyses.topk.mining_digest`): with it, the mining
    is kept in `out_dir` where it stops and continued by the same call (`mine_topk`'s journal,
    one per process); in one process, kept until the gallery is drawn. precision: what the
    projections go down in off a plain chain (`zfnet.deconvnet.project_layers`: bfloat16 about
    2x faster on a CPU with native bf16, `resolve_precision`); the caption says bfloat16.
    seed: what each unit goes down with (`project_topk`): its activation, the paper's (a map
    never above zero over the images is drawn blank, and said so: `GalleryResult.inactive`),
    or 1, Captum's.
    """
    check_rule(rule)  # before mining
    if seed not in SEEDS:
        raise ValueError(f"seed={seed!r} is not known; valid: {', '.join(SEEDS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not known; valid: {', '.join(PRECISIONS)}")
    if map_rule not in MAP_RULES:
        raise ValueError(f"map_rule={map_rule!r} is not known; valid: {', '.join(MAP_RULES)}")
    if maps is None and n_maps < 1:  # before the mining writes its journal
        raise ValueError(f"n_maps={n_maps}: give at least 1 map per layer")
    first_x = first_image(dataset)
    shape = tuple(first_x.shape)
    size = (int(shape[-2]), int(shape[-1]))
    try:  # one geometry pass: also says which layer is first
        defaults = default_layers(model, size)
    except ValueError:  # no spatial stage (a vision transformer): only named layers
        if not layers:
            raise
        defaults = []
    layers = [layers] if isinstance(layers, str) else list(layers) if layers else defaults
    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir is not None else out_dir
    try:
        rel_dir = out_dir.resolve().relative_to(run_dir.resolve())
    except ValueError:
        raise ValueError(f"out_dir {out_dir} must lie inside run_dir {run_dir}") from None
    for d in (run_dir, out_dir):  # found out before the long part, the mining
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"{d} is a file, not a directory for the gallery")
    check_defined(model, first_x, layers, rule, lrn)  # and the rule through the network
    if topk is None or any(name not in topk for name in layers):
        kept: dict[str, Any] = {} if journal_key is None else {
            "journal": out_dir / (f".topk-mining-{current_rank()}.pt" if distributed
                                  else ".topk-mining.pt"), "journal_key": journal_key}
        if kept and not distributed:  # kept until the gallery is drawn: a stop while it
            kept["keep_done"] = True  # draws does not mine it again
        if distributed:
            topk = mine_topk_distributed(model, dataset, layers, k, batch_size=batch_size,
                                         device=device, progress=progress and current_rank() == 0,
                                         num_workers=num_workers, **kept)
        else:
            topk = mine_topk(model, dataset, layers, k, batch_size=batch_size, device=device,
                             progress=progress, num_workers=num_workers, **kept)
    # k cut to the images read (a map has one activation an image): the title, caption, table
    # and layout all show the k there are, not empty cells for the broken files
    k, topk = within_mined({name: topk[name] for name in layers}, k, len(dataset))
    if distributed and current_rank() != 0:
        return GalleryResult(topk=topk, maps={}, projections={})
    save_topk(topk, out_dir / "topk.pt")
    geos = layer_geometries(model, layers, size)
    write_topk_table(topk, dataset, geos, size, out_dir / "topk.json")
    show = display_image or default_display(dataset)
    whole = not windowed(model, layers)
    first = defaults[0] if defaults else None  # shown whole, as the paper shows all of layer 1
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
    with fallbacks_recorded() as found, (  # what each layer's projection is (--nonlinear)
            counted_progress(desc="projecting", unit="unit") if progress else nullcontext()
    ) as bar:  # minutes on a CPU, after the mining's bar
        projections = project_topk(model, dataset, topk, chosen, rule, lrn=lrn,
                                   geometries=geos, precision=precision, seed=seed,
                                   progress=bar)
    cache: dict[int, Tensor] = {}
    for name in layers:
        t, proj = topk[name], projections[name]  # (M, k, C, h, w)
        if pixel_scale is not None:
            proj = proj * pixel_scale.to(proj.dtype).reshape(1, 1, -1, 1, 1)
        geo = geos[name]
        patches = topk_patches(t, chosen[name], geo, shape, whole, show, cache)
        named = (unit_names or {}).get(name)
        word = "maps" if geo is not None else "units"  # each sees the whole image
        named = named if named and len(named) == t.values.shape[0] else None
        png = render_layer(proj, patches, out_dir / f"topk_{name.replace('.', '_')}.png",
                           labels=[f"{c} {named[c]}" if named else f"{word[:-1]} {c}"
                                   for c in chosen[name]])
        result.maps[name], result.projections[name], result.figures[name] = (
            chosen[name], proj, png)
        result.patches[name] = patches
        gated = ("; gated: a scale computed from the whole image (a squeeze-and-excitation "
                 "gate, a group or instance norm's statistics) also acts on these maps, the "
                 "box is the field of the map it acts on"
                 if geo is not None and geo.gated else "")
        shown = ("units " + ", ".join(f"{c} ({named[c]})" for c in chosen[name])
                 if named else f"{word} {_ranges(chosen[name])}")
        own = rule_label(rule, found, [name])
        by = "" if own == rule else f"; projected by the {own}"
        blank = [c for c in chosen[name] if seed == "activation" and t.index[c, 0] >= 0
                 and float(t.values[c, 0]) <= 0]
        if blank:
            result.inactive[name] = blank
            one = len(blank) == 1
            by += (f"; {word[:-1] if one else word} {_ranges(blank)} never above zero over "
                   "these images, so blank (seeded with 1, Captum's seed, "
                   f"{'it shows' if one else 'they show'} what would raise "
                   f"{'it' if one else 'them'})")
        figures.append(Figure(str(rel_dir / png.name), f"{name}: {shown}{gated}{by}"))
        rows.append([name, len(chosen[name]), t.values.shape[0], _rf_text(geo),
                     float(t.values[chosen[name], 0].mean())])  # the page shows 4 digits
    n_images = _mined(topk[layers[0]], len(dataset))
    side = max(shape[-2:])
    fields = ", ".join(f"{r[0]} {r[3]}" + (" px" if isinstance(r[3], int) else "")
                       + (f", cut to the {side} px input" if isinstance(r[3], int)
                          and r[3] > side else "") for r in rows)
    label = rule_label(rule, found, layers)  # the gradient where no rectifier was met
    flat = [name for name in layers if geos[name] is None]  # units that see the whole image
    block, one = (("feature map of the layer", "map") if not flat else
                  ("unit of the layer (one number an image: of the class layer, a class's "
                   "score)", "unit") if len(flat) == len(layers) else
                  ("feature map of the layer (of a fully connected layer, one unit)", "map"))
    caption = " ".join(CAPTION.split()).format(block=block, one=one,
                                               k=k, n=images_text(n_images, len(dataset)),
                                               rule=RULE_NAMES.get(label, label),
                                               rf=fields, display=DISPLAY_CAPTION)
    caption += f" Above each block, its {one}'s number" + (
        " and class." if unit_names and any(n in unit_names for n in layers) else ".")
    fallback = fallback_words(rule, found, layers)
    caption += f" {fallback}" if fallback else ""
    if seed == "one":
        caption += (" Each unit went down seeded with 1, not with its activation (Captum's "
                    "seed): the same pictures for an active unit, and for one at or below zero "
                    "what would raise it.")
    caption += (f" Every map's top {k}, each its image, activation, unit and receptive field: "
                f"{(rel_dir / 'topk.json').as_posix()}."
                + (BF16_NOTE if whole and precision == "bfloat16" else ""))
    result.section = write_section(run_dir, Section(
        key="topk_gallery",
        title=f"Top-{k} activations and their projections (Fig. 2)",
        caption=caption,
        figures=figures,
        tables=[Table(["layer", "maps shown", "maps", "receptive field (px)",
                       "mean top-1 activation (shown maps)"], rows,
                      _maps_shown(layers, maps or {}, map_rule, first)
                      + ("; the way down undoes contrast normalisation by "
                         + ("its gradient" if lrn == "gradient" else "nothing (the identity)")
                         if any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
                         else "") + ".")],
        metrics={"images": n_images, "k": k, "rule": label, "seed": seed},
        order=30,
    ))
    if journal_key is not None and not distributed:  # the gallery is there: its mining done
        (out_dir / ".topk-mining.pt").unlink(missing_ok=True)
    return result


def _maps_shown(layers: Sequence[str], asked: Mapping[str, Sequence[int]],
                map_rule: str, whole: str | None = None) -> str:
    """The table's words for how its maps were chosen: asked for (in some layers or all),
    else by `map_rule`; `whole`: the layer shown with all its maps (the model's first, as the
    paper shows layer 1), where it is among `layers` and not asked for."""
    by_rule = ("those with the strongest top activation" if map_rule == "strongest"
               else "evenly spaced ones")
    if whole in layers and whole not in asked:
        by_rule += f" ({whole}: all of them)"
    named = [name for name in layers if name in asked]
    if not named:
        return "Maps shown: " + by_rule
    if len(named) == len(layers):
        return "Maps shown: those asked for"
    return f"Maps shown: those asked for in {', '.join(named)}; elsewhere {by_rule}"


def _mined(topk: TopK, files: int) -> int:
    """The images a top-k was taken over (`files` where it does not say)."""
    return files if topk.mined is None else topk.mined


def within_mined(topk: Mapping[str, TopK], k: int, files: int) -> tuple[int, dict[str, TopK]]:
    """k and `topk`, each map's top k cut to the images mined where there were fewer (a map
    has one activation an image: the rest were empty cells); `files`: the items mined, where a
    top-k does not say how many were read."""
    mined = _mined(next(iter(topk.values())), files)
    if 0 < mined < k:
        return mined, {name: t.first(mined) if t.k > mined else t for name, t in topk.items()}
    return k, dict(topk)


def images_text(mined: int, files: int) -> str:
    """"9 images", or "8 images (of 9 files, 1 unreadable)" where broken files were skipped."""
    unread = f" (of {files} files, {files - mined} unreadable)" if mined < files else ""
    return f"{mined} image{'s' * (mined != 1)}{unread}"


def topk_patches(topk: TopK, maps: Sequence[int], geo: LayerGeometry | None,
                 shape: tuple[int, ...], whole: bool, show: Callable[[int], Tensor],
                 cache: dict[int, Tensor] | None = None) -> Tensor:
    """The image patches beside `project_topk`'s projections: (M, k, C, h, w) uint8, each top-k
    unit's window (`unit_windows`) of its image as `show(i)` gives it — uint8 of the model
    input's `shape` (C, H, W) —, black where the window leaves the image or a slot is empty.
    cache: images already read, shared across calls (each is read once)."""
    cache = {} if cache is None else cache
    size = (int(shape[-2]), int(shape[-1]))
    ch = torch.tensor(list(maps), dtype=torch.long)
    tops, lefts, ph, pw = unit_windows(geo, topk.row[ch], topk.col[ch], size, whole)  # (M, k)
    patches = torch.zeros(len(ch), topk.k, shape[0], ph, pw, dtype=torch.uint8)
    for a, c in enumerate(ch.tolist()):
        for j in range(topk.k):
            i = int(topk.index[c, j])
            if i < 0:
                continue
            if i not in cache:
                cache[i] = _check_display(show(i), shape, i)
            patches[a, j] = window(cache[i], int(tops[a, j]), int(lefts[a, j]), ph, pw)
    return patches


def _rf_text(geo: LayerGeometry | None) -> int | str:
    """A receptive field's side in pixels ("rows x cols" if they differ), or the whole image."""
    if geo is None:
        return "whole image"
    if geo.rows.rf == geo.cols.rf:
        return geo.rows.rf
    return f"{geo.rows.rf}x{geo.cols.rf}"


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
