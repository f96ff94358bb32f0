"""Units of a user's own images, projected to pixels (paper Sec. 2.1, Fig. 1): `zfnet project`.

For each image, the chosen feature maps of one layer — the maps given, or the image's K most
active ones — and, in each, its strongest unit, projected down to pixels by the deconvnet (or
guided backprop, or the gradient) through the one engine, whatever the model: a zfnet run, a
torchvision or timm network. The projection is put in the image's own pixel units (the model's
input normalisation undone: `Preprocessing.pixel_scale`) and drawn three ways side by side: the
image as the model sees it with the unit's receptive field outlined, the projection
(`zfnet.display`'s rule), and the projection's magnitude over the darkened image.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torch.utils.data import Dataset

from zfnet.activations import get_activations, shown_units, to_model
from zfnet.atomic import write_text_atomic
from zfnet.deconvnet import Seeds, paste, project_layers
from zfnet.display import (
    CAPTION,
    LABEL_COLOUR,
    LABEL_HEIGHT,
    label_font,
    projection_scale,
    projection_to_uint8,
    save_png,
    wrap_text,
)
from zfnet.graph import fallbacks_recorded, rule_label
from zfnet.models import LayerGeometry, eval_mode, layer_geometries, layer_name


@dataclass
class Unit:
    """One projected unit: map `channel` of `layer` in image `image` (its strongest unit)."""

    image: int  # index in the images given
    name: str  # the image's file name (or "image N")
    layer: str
    channel: int
    activation: float  # the unit's value (a projection of a unit <= 0 is empty)
    row: int  # position in the layer's map (0 for a flat layer)
    col: int
    box: tuple[int, int, int, int] | None  # receptive field (top, left, bottom, right), clipped
    file: str = ""  # the PNG written, relative to the output directory
    flat: bool = False  # a unit of a flat layer (N, F): no map, no position
    label: str | None = None  # what the unit is named, where it has a name (a class score's class)
    # what its projection is where that is not the rule asked for (`zfnet.graph.rule_label`:
    # "gradient" where --nonlinear gradient met no rectifier on the way down)
    projection: str | None = None

    @property
    def what(self) -> str:
        """"layer3 map 61 at (row 5, col 4)", or for a flat layer "fc unit 2" (" (rocket)": its
        name)."""
        where = (f"{self.layer} unit {self.channel}" if self.flat
                 else f"{self.layer} map {self.channel} at (row {self.row}, col {self.col})")
        return where + (f" ({self.label})" if self.label else "")

    @property
    def active(self) -> bool:
        """Whether the unit fires (> 0): every rule projects an inactive unit to nothing."""
        return self.activation > 0



class TopCapped(UserWarning):
    """A top K larger than a layer's maps: all of them are projected."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)

def choose_maps(strength: Tensor, channels: Sequence[int] | None, top: int | None,
                layer: str | None = None) -> Tensor:
    """(N, C) strongest activation per map -> (N, K) maps to show: `channels` for every image,
    or each image's `top` most active maps, strongest first. `layer`: its name, for errors."""
    n, c = strength.shape
    if channels:
        bad = [ch for ch in channels if not 0 <= ch < c]
        if bad:
            which = f"the {c} maps of {layer}" if layer else f"the layer's {c} maps"
            raise ValueError(f"channel(s) {', '.join(map(str, bad))} outside {which}; "
                             f"valid: 0..{c - 1}")
        return torch.tensor(list(channels)).repeat(n, 1)
    if top and top > c:
        warnings.warn(f"top {top} is more than the {c} maps of {layer or 'the layer'}: all {c} "
                      "are projected", TopCapped, stacklevel=2)
    k = min(top or 4, c)
    return strength.topk(k, dim=1).indices


def project_units(model: nn.Module, images: Dataset,
                  layer: str | nn.Module | Sequence[str | nn.Module], *,
                  channels: Sequence[int] | None = None, top: int | None = None,
                  rule: str = "deconvnet", pixel_scale: Tensor | None = None,
                  batch_size: int = 16, names: Sequence[str] | None = None,
                  unit_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
                  position: tuple[int, int] | None = None, seed: str = "activation",
                  progress: Callable[[int], None] | None = None,
                  ) -> list[tuple[Unit, Tensor, Tensor]]:
    """Project the strongest unit of the chosen maps (`choose_maps`) of every image, or the
    unit at `position` (row, col) of each (the maps then ranked by their activation there), at
    `layer` or at each of several layers: each batch of images is read, run and projected once
    for all of them, and the units come layer by layer (every image's units at the first, then
    at the next).

    images: items (x, y) of model inputs (C, H, W) — `zfnet.data.load_images` — with `raw(i)`
    the uint8 pixels the model sees; broken files (None items) are skipped. pixel_scale: (C,)
    model-input units -> pixel units. unit_names: a name for each of a layer's units or maps
    (the classes of a class-score layer), used where their number matches; {layer: names} for
    some of several layers. seed: what each unit goes down with
    (`zfnet.deconvnet.project_layers`): its activation, or 1 ("one": also a unit at or below
    zero, a class score below zero among them). progress: called with the number of images
    done, after each batch is projected (a bar's `update`). Returns, per unit, (Unit, uint8
    image (C, H, W), projection (C, H, W) in pixel units).
    """
    given = [layer] if isinstance(layer, (str, nn.Module)) else list(layer)
    # unknown layers: an error listing the valid ones, before any image is read
    layers = list(dict.fromkeys(layer_name(model, g) for g in given))
    named = ({layer_name(model, k): v for k, v in unit_names.items()}
             if isinstance(unit_names, Mapping) else dict.fromkeys(layers, unit_names))
    out: dict[str, list[tuple[Unit, Tensor, Tensor]]] = {n: [] for n in layers}
    geometry: dict[str, LayerGeometry | None] = {}
    for lo in range(0, len(images), batch_size):
        # each file read once here (and its pixels once below): decoding is the slow part
        items = {i: images[i] for i in range(lo, min(lo + batch_size, len(images)))}
        idx = [i for i, item in items.items() if item is not None]
        if idx:
            x = to_model(model, torch.stack([items[i][0] for i in idx]))  # (B, C, H, W)
            if not geometry:
                geometry = layer_geometries(model, layers, tuple(x.shape[-2:]))
            pixels = {i: images.raw(i) for i in idx}
            for name, units in _project_batch(model, x, layers, channels, top, rule, position,
                                              seed).items():
                for row, ch, r, c, activation, proj, act_shape, shown_by in units:
                    i = idx[row]
                    geo = geometry[name]
                    box = (geo.box(r, c, (x.shape[-2], x.shape[-1]))
                           if geo is not None and len(act_shape) == 4 else None)
                    labels = named.get(name)
                    label = labels[ch] if labels and len(labels) == act_shape[1] else None
                    unit = Unit(i, names[i] if names else f"image {i}", name, ch, activation, r,
                                c, box, flat=len(act_shape) == 2, label=label,
                                projection=None if shown_by == rule else shown_by)
                    if pixel_scale is not None:
                        proj = proj * pixel_scale.reshape(-1, 1, 1)
                    out[name].append((unit, pixels[i], proj))
        if progress is not None:
            progress(len(items))
    if not any(out.values()):
        raise ValueError("none of the images could be read (see the warnings above)")
    return [r for name in layers for r in out[name]]


def _project_batch(model: nn.Module, x: Tensor, layers: list[str],
                   channels: Sequence[int] | None, top: int | None, rule: str,
                   position: tuple[int, int] | None, seed: str
                   ) -> dict[str, list[tuple[int, int, int, int, float, Tensor, tuple[int, ...],
                                             str]]]:
    """`project_units` of one batch `x` (B, C, H, W), one forward pass for every layer: per
    layer, the B x K units image by image, each (its image's row in `x`, map, row, col,
    activation, projection pasted at the input's size, the layer's output shape, what
    projected it)."""
    with eval_mode(model):
        acts = get_activations(model, x, layers)
    seeds, maps, shapes = {}, {}, {}
    for name in layers:
        act = shown_units(name, acts[name])  # (B, C, h, w) or (B, F)
        if position is not None:
            _check_position(position, act, name)
            strength = act[:, :, position[0], position[1]]
        else:
            strength = act.flatten(2).amax(2) if act.ndim > 2 else act
        maps[name] = choose_maps(strength.float().cpu(), channels, top, name)  # (B, K)
        b, k = maps[name].shape
        seeds[name] = Seeds(torch.arange(b).repeat_interleave(k), maps[name].reshape(-1),
                            None if position is None else torch.tensor([position] * (b * k)))
        shapes[name] = tuple(act.shape)
    with fallbacks_recorded() as found:
        rfs = project_layers(model, x, seeds, rule, seed=seed)
    out = {}
    for name in layers:
        rf = rfs[name]
        proj = paste(rf, (x.shape[-2], x.shape[-1])).float().cpu()  # (B*K, C, H, W)
        shown_by = rule_label(rule, found, [name])
        k = maps[name].shape[1]
        out[name] = [(s // k, int(ch), int(rf.row[s]), int(rf.col[s]), float(rf.activation[s]),
                      proj[s], shapes[name], shown_by)
                     for s, ch in enumerate(maps[name].reshape(-1))]
    return out


def _check_position(position: tuple[int, int], act: Tensor, layer: str) -> None:
    """A ValueError unless (row, col) is a unit of the layer's maps."""
    if act.ndim != 4:
        raise ValueError(f"layer {layer!r} has no maps (a vector of {act.shape[-1]} units): a "
                         "position (--position) is a row and a column of a map")
    h, w = act.shape[-2:]
    if not (0 <= position[0] < h and 0 <= position[1] < w):
        raise ValueError(f"position (row {position[0]}, col {position[1]}) is outside the "
                         f"{h}x{w} maps of layer {layer!r} (rows 0 to {h - 1}, columns 0 to "
                         f"{w - 1})")


def unit_figure(image: Tensor, projection: Tensor, box: tuple[int, int, int, int] | None,
                path: str | Path, zoom: int | None = None,
                titles: Sequence[str] | None = None) -> Path:
    """One PNG: the image with the unit's receptive field outlined | the projection
    (`zfnet.display`) | its magnitude over the darkened image. image uint8 (C, H, W).
    `titles`: one above each panel, in up to three lines (the last cut to its width)."""
    c, h, w = image.shape
    zoom = zoom or max(1, 256 // max(h, w))
    rgb = image.expand(3, h, w) if c == 1 else image
    shown = projection_to_uint8(projection)
    shown = shown.expand(3, h, w) if shown.shape[0] == 1 else shown
    mag = projection.abs().sum(0, keepdim=True)  # (1, H, W)
    heat = (mag / projection_scale(mag)).clamp(0, 1)  # 0..1, the same percentile rule
    hot = torch.stack([torch.ones_like(heat[0]), heat[0], torch.zeros_like(heat[0])]) * 255
    overlay = rgb.float() * 0.35 * (1 - heat) + hot * heat
    panels = [rgb.float(), shown.float(), overlay]
    pad = 4
    font = label_font()
    # each title over its panel, in up to 3 lines (a long layer name and position kept)
    lines = [wrap_text(text, w * zoom, font, max_lines=3) for text in titles or ()]
    top = LABEL_HEIGHT * max(map(len, lines), default=0) + (2 if titles else 0)
    canvas = np.full((top + h * zoom, 3 * w * zoom + 2 * pad, 3), 255, np.uint8)
    for j, p in enumerate(panels):
        tile = p.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        tile = tile.repeat(zoom, 0).repeat(zoom, 1)
        x0 = j * (w * zoom + pad)
        canvas[top:, x0: x0 + w * zoom] = tile
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    if box is not None:
        t, left, b, r = box
        draw.rectangle([left * zoom, top + t * zoom, r * zoom - 1, top + b * zoom - 1],
                       outline=(255, 220, 0), width=2)
    for j, panel_lines in enumerate(lines):
        for i, text in enumerate(panel_lines):
            draw.text((j * (w * zoom + pad), 1 + i * LABEL_HEIGHT), text, fill=LABEL_COLOUR,
                      font=font)
    return Path(save_png(np.asarray(img), path))


def _slug(text: str) -> str:
    """`text` as part of a file name: letters and digits of any script kept (`é`, `日本`:
    they were dropped, "日本.jpg" became "image"), anything else a "_" (separators, spaces,
    control characters)."""
    return re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", text)).strip("_") or "image"


def _file_stems(names: list[str]) -> dict[str, str]:
    """A file-name stem for each image name, one of its own: the file's stem, or where images
    share one (`a/x.jpg`, `a/x.png`, `b/x.jpg`), their paths from their common folder with
    the extension (`a_x.jpg`, `a_x.png`, `b_x.jpg`)."""
    distinct = list(dict.fromkeys(names))
    stems = {n: _slug(Path(n).stem) for n in distinct}
    counts = Counter(stems.values())
    shared = [n for n in distinct if counts[stems[n]] > 1]
    if shared:
        try:
            root = os.path.commonpath([os.path.dirname(n) for n in shared])
        except ValueError:  # absolute and relative paths mixed
            root = ""
        for n in shared:
            stems[n] = _slug(os.path.relpath(n, root) if root else n)
    return stems


def write_units(results: list[tuple[Unit, Tensor, Tensor]], out: str | Path, rule: str,
                source: str, seed: str = "activation", not_read: Sequence[str] = ()) -> Path:
    """Each unit's PNG (`unit_figure`) into `out`, and `project.json` listing them all with
    how they were made (`seed`: as `project_units` was given it) and the images that could not
    be read (`not_read`, as `predict --out` lists them). Returns the JSON's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stems = _file_stems([u.name for u, _, _ in results])
    used: set[str] = set()
    for unit, image, proj in results:
        kind = "unit" if unit.flat else "map"
        base = (f"{stems[unit.name]}_{_slug(unit.layer)}_{kind}{unit.channel}_{rule}"
                + ("_seed1" if seed == "one" else ""))
        unit.file, k = f"{base}.png", 1
        while unit.file in used:  # the same map of one image twice: numbered
            k += 1
            unit.file = f"{base}_{k}.png"
        used.add(unit.file)
        by = unit.projection or rule  # the gradient where no rectifier was met
        unit_figure(image, proj, unit.box, out / unit.file, titles=(
            f"{unit.name}: {unit.what}",
            f"{by}, seeded with 1 (activation {unit.activation:.3g})" if seed == "one"
            else f"{by}, activation {unit.activation:.3g}" if unit.active
            else f"{by}: nothing, not active ({unit.activation:.3g} <= 0)",
            "where: |projection|"))
    units = [asdict(u) | {"rule": rule, "seed": seed} for u, _, _ in results]
    path = out / "project.json"
    written = {u["file"] for u in units}
    units = [u for u in _earlier_units(path, source)
             if u["file"] not in written and (out / u["file"]).is_file()] + units
    index = {"source": source, "rule": rule, "display": CAPTION,
             "panels": "the image as the model sees it (the unit's receptive field outlined), "
                       "the projection, its magnitude over the darkened image",
             "units": units, "not_read": list(not_read)}
    write_text_atomic(path, json.dumps(index, indent=1) + "\n")
    return path


def _earlier_units(path: Path, source: str) -> list[dict[str, Any]]:
    """The units an earlier `zfnet project` of the same model into the same folder listed (with
    another rule, or other images): kept in the list beside the new ones, each with its rule."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(earlier, dict) or earlier.get("source") != source:
        return []
    return [u | {"rule": u.get("rule", earlier.get("rule"))} for u in earlier.get("units", [])
            if isinstance(u, dict) and isinstance(u.get("file"), str)]
