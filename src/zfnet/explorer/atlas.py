"""`zfnet atlas`: the explorer's per-unit views written once as a static site.

    out/index.html             the model, the dataset, a table of the layers
    out/atlas.json             the same as data (every unit's top-k; its evolution's similarity)
    out/<layer>/index.html     a tile per unit: its top-1 projection (one sprite, thumbs.png)
    out/<layer>/<unit>.html    the unit's top-k projections beside their image patches (paper
                               Fig. 2 for one map, <unit>.png), each one's image and activation;
                               for a zfnet run with kept epochs its evolution (Fig. 4,
                               <unit>_evolution.png); links to the next and previous units, the
                               layer and the other layers

The pictures are the gallery's PNGs; with `figures="jpeg"` each is a JPEG where that is smaller
(`JPEG_QUALITY`, full-resolution colour: a ResNet-18 layer4 unit's 1.6 MB picture in 0.5 MB),
for a static host.

Links are relative and nothing is loaded from elsewhere, so the site opens from disk (file://)
and from any static host.

Nothing here computes a view of its own: the top-k of every layer comes from one mining pass
(`zfnet.analyses.topk.mine_topk`), projections and patches from the gallery's
(`zfnet.analyses.gallery.project_topk`, `topk_patches`), each unit's picture is the gallery's
block for that map (`render_layer`), drawn by the one contrast rule (`zfnet.display`), and the
evolution is `zfnet.analyses.evolution.feature_evolution` for every unit shown, each checkpoint
mined once. Its images are those of the top-k (not the training set of `zfnet analyze
evolution`), so a unit's last column is its top-1 when the last kept epoch is the model shown.

Every input is checked before anything is written; the site is built in a hidden directory
beside `out_dir` and renamed into place at the end (an earlier atlas there is replaced, any
other non-empty directory refused), so a failure or a cancelled job leaves no half of one; a
Ctrl-C or SIGTERM waits for the renaming (`held_signals`). A
mining that stops is kept beside it (`.{out}.topk-mining.pt`) and continued by the same call.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import jinja2
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from zfnet.activations import get_activations, shown_units
from zfnet.analyses.evolution import EvolutionResult, feature_evolution, render_unit_evolution
from zfnet.analyses.gallery import (
    BF16_NOTE,
    CAPTION,
    RULE_NAMES,
    block_grid,
    check_defined,
    default_display,
    default_layers,
    first_image,
    images_text,
    project_topk,
    render_layer,
    select_maps,
    to_rgb,
    topk_patches,
    within_mined,
)
from zfnet.analyses.topk import TopK, mine_topk
from zfnet.atomic import write_text_atomic
from zfnet.data import DataBundle
from zfnet.data.picks import file_name
from zfnet.data.workers import held_signals
from zfnet.deconvnet import PRECISIONS, windowed
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import projection_to_uint8, smaller_jpeg
from zfnet.graph import check_rule, fallback_words, fallbacks_recorded, rule_label
from zfnet.models import (
    LayerGeometry,
    feature_layers,
    layer_geometries,
    layer_info,
    layer_name,
    resolve_layer,
)
from zfnet.models.geometry import per_axis

FORMAT = "zfnet-atlas/1"
FIGURES = ("png", "jpeg")  # the pictures' file type (`write_atlas(figures=)`)
ATLAS_FILE = "atlas.json"  # also marks a directory as an atlas that a new one may replace
THUMB = 64  # side of a unit's thumbnail on its layer's page
THUMB_COLUMNS = 16  # thumbnails per row of a layer's sprite
# Projections of one project_topk call are held at once: (maps, k, C, h, w) float32. A layer
# whose maps would take more goes in parts (zfnet's conv5 at 224 px: 256 maps x 9 x 163^2 px).
CHUNK_BYTES = 256 * 2**20

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("zfnet.explorer", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)


@dataclass
class _Layer:
    """One layer of the atlas: what its pages say and where they are."""

    name: str
    slug: str  # its folder
    module: str
    kind: str
    maps: int
    geometry: LayerGeometry | None
    shown: list[int] = field(default_factory=list)
    names: Sequence[str] | None = None  # a name per unit: the class scores' classes
    graph: bool = False  # projected by the general path (off the plain chain): `precision` told
    # where its walks took a non-rectifier's gradient (`zfnet.graph.fallbacks_recorded`):
    # "plain" (no rectifier met: the projection is the gradient) or "mixed"; None: nowhere
    fallback: str | None = None

    @property
    def word(self) -> str:
        """What one of its units is called: a "map", or a "unit" where each sees the whole
        image (a fully connected layer, global pooling)."""
        return "map" if self.geometry else "unit"

    def unit_name(self, c: int) -> str | None:
        """Unit `c`'s name (its class), where the layer's units have names."""
        return self.names[c] if self.names is not None else None

    @property
    def size(self) -> str:
        return per_axis(self.geometry, "size") if self.geometry else "1"

    @property
    def stride(self) -> str:
        return per_axis(self.geometry, "jump") if self.geometry else "–"

    @property
    def rf(self) -> str:
        return f"{per_axis(self.geometry, 'rf')} px" if self.geometry else "whole image"


def write_atlas(
    model: nn.Module,
    data: DataBundle | Dataset,
    out_dir: str | Path,
    *,
    layers: Sequence[str] | None = None,
    k: int = 9,
    maps_per_layer: int | None = None,
    rule: str = "deconvnet",
    evolution: Sequence[tuple[int, nn.Module]] | None = None,
    n_images: int | None = None,
    display_image: Callable[[int], Tensor] | None = None,
    pixel_scale: Tensor | None = None,
    model_name: str | None = None,
    data_name: str | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    num_workers: int = 0,
    unit_names: Mapping[str, Sequence[str]] | None = None,
    journal_key: str | None = None,
    figures: str = "png",
    precision: str = "float32",
) -> Path:
    """Write the atlas of `model` over `data` into `out_dir` (see the module doc); return the
    path of its index.html.

    data: a `DataBundle` (the centre crops of its val split are mined and shown, its raw
    pixels in the patches, its preprocessing's pixel scale applied to projections), or a
    Dataset of model inputs (x (C, H, W) or (x, y) items; `display_image(i)` gives item i as
    uint8 for the patches, default the input min-max scaled; `pixel_scale` as in
    `run_topk_gallery`). n_images: the first N images only (default all). layers: names
    `zfnet models` lists (default `zfnet.models.feature_layers`: conv1…conv5 on zfnet's
    models). maps_per_layer: the N strongest maps of each layer (default every map). rule:
    deconvnet, guided or gradient. evolution: [(epoch, model)] of a zfnet run's kept epochs in
    order (e.g. `zfnet.train.CheckpointModels(run_checkpoints(...))`), each unit's
    projection shown at each.
    progress(done, total): called as the work goes (images mined, at each checkpoint too, and
    units drawn; total grows once, when the mining has said how many maps there are); an
    exception it raises stops the atlas and leaves nothing written. num_workers: the mining's
    DataLoader workers (decoding a large dataset for a GPU). unit_names: {layer: a name per
    unit} shown with its units (the class scores' layer, `zfnet.models.score_layer`: the
    model's class names).
    journal_key: what identifies a Dataset's items beyond their order
    (`zfnet.analyses.topk.mining_digest`); a DataBundle's is `zfnet.pipeline.mining_key`. With
    one, a mining that stops (Ctrl-C, an error; or the drawing after it) is kept beside
    `out_dir`, in `.{name}.topk-mining.pt`, and the same call continues it (`mine_topk`'s
    journal); the evolution's minings are done again.
    figures: "png" (lossless, the gallery's pictures) or "jpeg" (each picture a JPEG where that
    is smaller: a ResNet's site in about a third of the bytes, for a static host).
    precision: what the top-k projections go down in off a plain chain (float32, bfloat16:
    `zfnet.deconvnet.project_layers`); the evolution's stay float32 (they are compared).
    """
    check_rule(rule)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not known; valid: {', '.join(PRECISIONS)}")
    if figures not in FIGURES:
        raise ValueError(f"figures={figures!r}: give one of {', '.join(FIGURES)}")
    if k < 1:
        raise ValueError(f"k={k}: give at least 1")
    if maps_per_layer is not None and maps_per_layer < 1:
        raise ValueError(f"maps_per_layer={maps_per_layer}: give at least 1, or None for all")
    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images={n_images}: give at least 1, or None for all")
    out_dir = Path(os.path.abspath(out_dir))  # "." and "../site/": built beside, by name
    _check_out(out_dir)
    if isinstance(data, DataBundle):
        from zfnet.pipeline import check_fits, mining_key

        check_fits(model, data)
        val = data.val.with_mode("centre") if data.val.mode != "centre" else data.val
        dataset: Dataset = val
        display_image = display_image or data.raw_val
        if pixel_scale is None and data.preprocessing is not None:
            pixel_scale = data.preprocessing.pixel_scale()
        data_name = data_name or data.spec
    else:
        dataset = data
    total_images = len(dataset)  # type: ignore[arg-type]
    n = total_images if n_images is None else min(n_images, total_images)
    if n == 0:
        raise ValueError(f"{data_name or 'the dataset'} holds no images to mine")
    if isinstance(data, DataBundle) and journal_key is None:
        journal_key = mining_key(model, data, n)
    dataset = Subset(dataset, range(n))
    show = display_image or default_display(dataset)
    first_x = first_image(dataset)
    shape = tuple(first_x.shape)  # (C, H, W)
    size = (int(shape[-2]), int(shape[-1]))
    names = list(dict.fromkeys(layer_name(model, n_) for n_ in layers)) if layers \
        else default_layers(model, size)
    table = _layer_table(model, names, size)
    check_defined(model, first_x, names, rule)  # before the mining
    unknown = [layer for layer in table if not layer.maps]
    if unknown:  # a container's maps (a ResNet's layer3), which layer_info does not list
        acts = get_activations(model, first_x[None], [layer.name for layer in unknown])
        for layer in unknown:
            layer.maps = int(shown_units(layer.name, acts[layer.name]).shape[1])
    if evolution is not None and len(evolution) == 0:
        evolution = None

    # the work: mining (n images), evolution's mining and projecting (n images and the units
    # shown, per checkpoint), every unit drawn
    epochs = len(evolution) if evolution is not None else 0
    # ... the units counted before the mining as well, where the layers' maps are known: a
    # bar's total that grew at the end (0/5000 ... 5080/5080) looked like more work found
    state = {"done": 0, "total": (n + sum(
        layer.maps if maps_per_layer is None else min(maps_per_layer, layer.maps)
        for layer in table)) * (1 + epochs)}

    def report(done: int, offset: int) -> None:
        if progress is not None:
            progress(offset + done, state["total"])

    kept: dict[str, Any] = {} if journal_key is None else {
        "journal": out_dir.parent / f".{out_dir.name}.topk-mining.pt",
        "journal_key": journal_key, "keep_done": True}  # removed once the site is written
    topk = mine_topk(model, dataset, names, k, batch_size=batch_size, device=device,
                     progress=lambda done, _: report(done, 0), num_workers=num_workers,
                     **kept)
    k, topk = within_mined(topk, k, n)  # cut to the images read: no empty cells, k said true
    for layer in table:
        t = topk[layer.name]
        layer.maps = int(t.values.shape[0])
        named = (unit_names or {}).get(layer.name)
        layer.names = list(named) if named is not None and len(named) == layer.maps else None
        layer.shown = list(range(layer.maps)) if maps_per_layer is None else \
            select_maps(t, maps_per_layer)
    shown = sum(len(layer.shown) for layer in table)
    state["total"] = (n + shown) * (1 + epochs)
    evo = None
    if evolution is not None:
        evo = feature_evolution(evolution, dataset, n_images=None, rule=rule,
                                batch_size=batch_size,
                                maps={layer.name: layer.shown for layer in table},
                                progress=lambda done, _: report(done, n))
    state["done"] = n + (n + shown) * epochs
    meta = {
        "format": FORMAT, "model": model_name or type(model).__name__,
        "data": data_name or type(data).__name__, "k": k, "rule": rule,
        # the images mined (broken files skipped) of the `files` read
        "images": next(iter(topk.values())).mined or n, "files": n,
        "input": list(shape),
        "evolution": {"epochs": evo.epochs} if evo is not None else None,
        "figures": figures, "precision": precision,
    }

    def drawn(units: int) -> None:
        state["done"] += units
        report(state["done"], 0)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex}")
    old: Path | None = None
    try:
        tmp.mkdir()
        units = _write_layers(tmp, model, dataset, table, topk, evo, rule, shape, show,
                              pixel_scale, meta, drawn)
        _render(tmp / "index.html", "atlas_index.html.j2", root="", meta=meta, layers=table,
                projection=_projection(meta, table),
                caption=_caption(meta, table), display_caption=DISPLAY_CAPTION,
                report=_beside_report(out_dir))
        doc = {**meta, "layers": [
            {"name": layer.name, "folder": layer.slug, "module": layer.module,
             "kind": layer.kind, "maps": layer.maps, "size": layer.size,
             "stride": layer.stride, "receptive_field": layer.rf,
             "page": f"{layer.slug}/index.html", "projection": _projection(meta, [layer]),
             "units": units[layer.name]}
            for layer in table]}
        write_text_atomic(tmp / ATLAS_FILE, json.dumps(doc, indent=1, allow_nan=False))
        # a Ctrl-C or SIGTERM waits for the swap (milliseconds), then stops the command: never
        # half of each site in OUT (the earlier atlas's entries moved out, the new ones not in)
        with held_signals():
            old = _replace(tmp, out_dir)
            if "journal" in kept:  # the site is there: its mining is no longer needed
                kept["journal"].unlink(missing_ok=True)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return out_dir / "index.html"


def _beside_report(out_dir: Path) -> bool:
    """Is there a zfnet report page in the folder above `out_dir` (an atlas in `RUN/atlas`)?"""
    page = out_dir.parent / "index.html"
    try:
        with open(page, "rb") as f:
            return b'<p class="meta">Made by zfnet on ' in f.read(8192)
    except OSError:
        return False


def _check_out(out_dir: Path) -> None:
    """`out_dir` may be new, an empty directory or an earlier atlas (which is replaced)."""
    if not out_dir.name:  # the site is built beside it and renamed into place
        raise ValueError(f"{out_dir} is the file system's root: give a folder for the atlas")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file: give a directory for the atlas")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / ATLAS_FILE).is_file():
        raise FileExistsError(f"{out_dir} is not empty and holds no atlas ({ATLAS_FILE}): give "
                              "a new or empty directory, or an earlier atlas to replace")


def _replace(tmp: Path, out_dir: Path) -> Path | None:
    """Rename the finished site `tmp` to `out_dir`; into an existing `out_dir` (empty, or the
    earlier atlas) its entries are renamed, the folder itself kept: a shell or a
    `python -m http.server` working in it goes on seeing the site, not a deleted folder. The
    folder the earlier atlas's entries were moved to, for the caller to remove (None if none)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return None
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex}")
    old.mkdir()
    for entry in list(out_dir.iterdir()):
        os.replace(entry, old / entry.name)
    for entry in list(tmp.iterdir()):
        os.replace(entry, out_dir / entry.name)
    return old


def _layer_table(model: nn.Module, names: list[str], size: tuple[int, int]) -> list[_Layer]:
    """Each layer's module, kind and geometry (as the explorer names them: a network's stage,
    a ResNet's layer3, 'stage'; any other module with modules inside, 'block'); maps as
    `layer_info` counts them (0 where it has none), set from the mining."""
    infos = layer_info(model, size)
    geos = layer_geometries(model, names, size)
    try:
        stages = set(feature_layers(model, size))
    except ValueError:
        stages = set()
    slugs: set[str] = set()
    table = []
    for name in names:
        info = infos.get(name)
        module = info.module if info else resolve_layer(model, name)[0]
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "layer"
        while slug in slugs:  # distinct folders, whatever the names
            slug += "_"
        slugs.add(slug)
        kind = info.kind if info else "stage" if name in stages else "block"
        table.append(_Layer(name, slug, module, kind, info.channels or 0 if info else 0,
                            geos[name]))
    return table


def _chunks(maps: list[int], per_map: int) -> list[list[int]]:
    """`maps` in parts whose projections (`per_map` bytes each) fit in CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // max(per_map, 1))
    return [maps[i: i + step] for i in range(0, len(maps), step)]


def _write_layers(root: Path, model: nn.Module, dataset: Dataset, table: list[_Layer],
                  topk: dict[str, TopK], evo: EvolutionResult | None, rule: str,
                  shape: tuple[int, ...], show: Callable[[int], Tensor],
                  pixel_scale: Tensor | None, meta: dict[str, Any],
                  drawn: Callable[[int], None]) -> dict[str, list[dict[str, Any]]]:
    """Every layer's folder: the units' pictures and pages, the thumbnails, the layer page.
    Returns each layer's units as atlas.json lists them."""
    size = (int(shape[-2]), int(shape[-1]))
    cache: dict[int, Tensor] = {}  # display images, each read once for every layer
    name_of = partial(file_name, dataset)
    out: dict[str, list[dict[str, Any]]] = {}
    for li, layer in enumerate(table):
        folder = root / layer.slug
        folder.mkdir()
        t = topk[layer.name]
        whole = layer.graph = not windowed(model, [layer.name])
        geos = {layer.name: layer.geometry}
        h, w = _window(layer.geometry, size, whole)
        thumbs: list[Tensor] = []
        units: list[dict[str, Any]] = []
        for part in _chunks(layer.shown, t.k * shape[0] * h * w * 4):
            with fallbacks_recorded() as found:  # what its pages say projected it
                proj = project_topk(model, dataset, {layer.name: t}, {layer.name: part}, rule,
                                    geometries=geos, precision=meta["precision"]
                                    )[layer.name]  # (M, k, C, h, w)
            layer.fallback = layer.fallback or found.get(layer.name)
            proj = _scaled(proj, pixel_scale)
            patches = topk_patches(t, part, layer.geometry, shape, whole, show, cache)
            for a, c in enumerate(part):
                figure = _picture(partial(render_layer, proj[a: a + 1], patches[a: a + 1]),
                                  folder, str(c), meta["figures"])
                thumbs.append(proj[a, 0])
                units.append(_unit_page(folder, layer, c, t, evo, pixel_scale, meta, table,
                                        li, name_of, figure))
            drawn(len(part))
        sprite = _picture(partial(_sprite, thumbs), folder, "thumbs", meta["figures"])
        tiles = [{"map": c, "name": layer.unit_name(c),
                  "x": (i % THUMB_COLUMNS) * THUMB, "y": (i // THUMB_COLUMNS) * THUMB,
                  "top1": units[i]["topk"][0]["activation"] if units[i]["topk"] else None}
                 for i, c in enumerate(layer.shown)]
        _render(folder / "index.html", "atlas_layer.html.j2", root="../", meta=meta,
                projection=_projection(meta, [layer]),
                layer=layer, layers=table, index=li, tiles=tiles, thumb=THUMB,
                sprite=sprite, display_caption=DISPLAY_CAPTION)
        out[layer.name] = units
    return out


def _window(geo: LayerGeometry | None, size: tuple[int, int], whole: bool) -> tuple[int, int]:
    """(h, w) of a unit's tiles (`zfnet.analyses.gallery.unit_windows`), for sizing chunks."""
    if geo is None:
        return size
    return tuple(min(ax.rf, n) if whole else ax.rf  # type: ignore[return-value]
                 for ax, n in ((geo.rows, size[0]), (geo.cols, size[1])))


def _scaled(proj: Tensor, pixel_scale: Tensor | None) -> Tensor:
    """Projections (..., C, h, w) in the image's pixel units (as `run_topk_gallery` draws)."""
    if pixel_scale is None:
        return proj
    return proj * pixel_scale.to(proj.dtype).reshape(-1, 1, 1)


def _unit_page(folder: Path, layer: _Layer, c: int, t: TopK, evo: EvolutionResult | None,
               pixel_scale: Tensor | None, meta: dict[str, Any], table: list[_Layer],
               li: int, name_of: Callable[[int], str | None] = lambda i: None,
               figure: str = ""
               ) -> dict[str, Any]:
    """Write map `c`'s page (its picture, the file `figure`, is drawn already) and its
    evolution row; return its atlas.json entry (each top-k image by index, and by its file's
    name where it has one)."""
    items = [{"rank": j + 1, "image": int(t.index[c, j]),
              "activation": float(t.values[c, j]), "row": int(t.row[c, j]),
              "col": int(t.col[c, j])}
             for j in range(t.k) if int(t.index[c, j]) >= 0]
    for it in items:
        name = name_of(it["image"])
        if name is not None:
            it["name"] = name
    entry: dict[str, Any] = {"map": c, "page": f"{layer.slug}/{c}.html",
                             "figure": f"{layer.slug}/{figure}", "topk": items}
    if layer.unit_name(c) is not None:
        entry["name"] = layer.unit_name(c)
    evolution = None
    if evo is not None:
        a = evo.maps[layer.name].index(c)
        row = _scaled(evo.projections[layer.name][a], pixel_scale)  # (E, C, h, w)
        drawn = _picture(partial(render_unit_evolution, row, epochs=evo.epochs), folder,
                         f"{c}_evolution", meta["figures"])
        sims = [round(float(s), 4) for s in evo.unit_similarity[layer.name][a]]
        evolution = {"epochs": evo.epochs, "similarity": sims, "figure": drawn}
        entry["evolution"] = {"epochs": evo.epochs, "similarity": sims,
                              "figure": f"{layer.slug}/{drawn}"}
    shown = layer.shown
    i = shown.index(c)
    side = block_grid(t.k)[1]  # the figure's tiles to a row
    _render(folder / f"{c}.html", "atlas_unit.html.j2", root="../", meta=meta, layer=layer,
            projection=_projection(meta, [layer]),
            layers=table, index=li, unit=c, name=layer.unit_name(c), items=items,
            figure=figure, evolution=evolution,
            prev=shown[i - 1] if i > 0 else None,
            next=shown[i + 1] if i + 1 < len(shown) else None,
            side=side, caption=_caption(meta, [layer], unit=True),
            display_caption=DISPLAY_CAPTION)
    return entry


def _picture(draw: Callable[[BinaryIO], object], folder: Path, stem: str, figures: str
             ) -> str:
    """Write the picture `draw` draws (its PNG, into a file object) as `folder/stem.png`, or
    with figures="jpeg" as `stem.jpg` where that is smaller (`JPEG_QUALITY`, 4:4:4; a small
    or flat picture stays a PNG); its file name."""
    buf = io.BytesIO()
    draw(buf)
    data, name = buf.getvalue(), f"{stem}.png"
    if figures == "jpeg":
        with Image.open(io.BytesIO(data)) as im:
            jpg = smaller_jpeg(im, len(data))
        if jpg is not None:
            data, name = jpg, f"{stem}.jpg"
    (folder / name).write_bytes(data)
    return name


def _sprite(thumbs: list[Tensor], file: BinaryIO) -> None:
    """Each unit's top-1 projection (C, h, w), by the contrast rule, fitted into a THUMB px
    square (nearest neighbour up, area average down), THUMB_COLUMNS to a row: a PNG into
    `file`."""
    cols = min(len(thumbs), THUMB_COLUMNS)
    rows = math.ceil(len(thumbs) / cols)
    canvas = np.full((rows * THUMB, cols * THUMB, 3), 255, np.uint8)
    for i, p in enumerate(thumbs):
        img = Image.fromarray(to_rgb(projection_to_uint8(p)))
        scale = THUMB / max(img.size)
        fit = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(fit, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX)
        y = (i // cols) * THUMB + (THUMB - img.height) // 2
        x = (i % cols) * THUMB + (THUMB - img.width) // 2
        canvas[y: y + img.height, x: x + img.width] = np.asarray(img)
    Image.fromarray(canvas).save(file, format="PNG")


def _fallbacks(layers: Sequence[_Layer]) -> dict[str, str]:
    """The layers' `fallback`s as `zfnet.graph.fallbacks_recorded` gives them."""
    return {layer.name: layer.fallback for layer in layers if layer.fallback}


def _projection(meta: dict[str, Any], layers: Sequence[_Layer]) -> str:
    """What the layers' projections are (`zfnet.graph.rule_label`): the rule, or the gradient
    where --nonlinear gradient met no rectifier on the way down."""
    return rule_label(meta["rule"], _fallbacks(layers), [layer.name for layer in layers])


def _caption(meta: dict[str, Any], layers: list[_Layer], unit: bool = False) -> str:
    """The gallery's Fig. 2 caption for these layers, said of a unit's page (`unit`) or, on
    the index, of the pages its layers link to."""
    rf = ", ".join(f"{layer.name} {layer.rf}" for layer in layers)
    by = _projection(meta, layers)  # the gradient where no rectifier was met
    text = " ".join(CAPTION.split()).format(
        block="feature map of the layer", one="map", k=meta["k"],
        n=images_text(meta["images"], meta.get("files", meta["images"])),
        rule=RULE_NAMES.get(by, by), rf=rf, display="")
    fallback = fallback_words(meta["rule"], _fallbacks(layers), [layer.name for layer in layers])
    text += f" {fallback}" if fallback else ""
    text = text.replace("Each block is one feature map of the layer. ",
                        "" if unit else "Each map has a page of its own (the layers below link "
                        "to them). On it: ")
    if meta.get("precision") == "bfloat16" and any(layer.graph for layer in layers):
        text += BF16_NOTE
    return " ".join(text.split())


def _href(path: str) -> str:
    """A relative link to `path` (folders are layer slugs: only safe characters)."""
    return quote(path)


_ENV.filters["href"] = _href
# 4 significant digits, trailing zeros kept (3.440 beside 3.935 in one column)
_ENV.filters["num"] = lambda v: "–" if v is None else f"{v:#.4g}".removesuffix(".")


def _render(path: Path, template: str, **context: Any) -> None:
    write_text_atomic(path, _ENV.get_template(template).render(**context))
