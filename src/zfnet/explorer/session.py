"""What the explorer shows, without the web: one model, its images and every view of a unit.

`Explorer` holds a model (any source: `zfnet.sources`), the dataset it is shown with (optional)
and the images uploaded to it, and answers each view of the page with arrays and PNG bytes:
the layer table, an image's feature maps as one sprite, a unit's projection by each rule beside
its receptive field's patch, the top-5 classes, and — as long computations run by
`zfnet.explorer.jobs` — a unit's top-k over the dataset (the mining index cached on disk), an
image's occlusion maps (paper Fig. 7) and a unit's evolution across a run's kept epochs (Fig. 4).

Everything goes through the project's one engine (`zfnet.deconvnet.project_layers`), one
geometry (`zfnet.models.layer_geometries`), one way to name layers (`zfnet.models.layer_name`),
the gallery's mining, projections and patches (`zfnet.analyses.topk`, `.gallery`) and one
contrast rule (`zfnet.display`). What a second request can reuse is kept: the forward pass of
the recent images (every listed layer's output), projections and figures as PNG bytes.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from zfnet.activations import capture, to_model
from zfnet.analyses.classes import class_indices
from zfnet.analyses.gallery import (
    check_defined,
    project_topk,
    render_layer,
    topk_patches,
    unit_windows,
    window,
    within_mined,
)
from zfnet.analyses.topk import TopK, load_topk, mine_topk, mining_digest, save_topk
from zfnet.atomic import printable, write_text_atomic
from zfnet.data.images import HEIF_READ, MAX_ASPECT, BadImageError, load_rgb
from zfnet.data.picks import file_name
from zfnet.data.words import as_shown, labels_of
from zfnet.deconvnet import (
    SEEDS,
    Forward,
    Seeds,
    forward_pass,
    paste,
    project_layers,
    windowed,
)
from zfnet.display import projection_to_uint8
from zfnet.graph import RuleUndefinedError
from zfnet.models import (
    eval_mode,
    feature_layers,
    layer_geometries,
    layer_info,
    layer_name,
    repeated_layers,
    score_layer,
)
from zfnet.models.layers import FROM_PYTHON

RULES = ("deconvnet", "guided", "gradient")
MAX_UPLOADS = 64  # uploaded images kept (the oldest goes first)
MAX_PIXELS = 40_000_000  # an upload larger than this is refused, not decoded
MAX_PNG_BYTES = 64 * 2**20  # figures and maps kept drawn, at most
# an ISO media file's brands of HEIC/HEIF photos (bytes 8..12, after "ftyp")
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
TILE_MIN = 24  # a feature map's thumbnail is enlarged to at least this many pixels a side
FLAT_TILE = 6  # a unit of a flat (fc) layer: a square of this side


class ExplorerError(ValueError):
    """A request that cannot be answered as asked: the message says what is valid."""


class NotFoundError(ExplorerError):
    """What the request names does not exist (an image id, a job)."""


def _check_seed(seed: str) -> None:
    if seed not in SEEDS:
        raise ExplorerError(f"seed {seed!r} is not known; valid: {', '.join(SEEDS)} (what a "
                            "unit goes down with: its activation's value, or 1)")


@dataclass(frozen=True)
class LayerRow:
    """One layer of the table: its output's maps and spatial size, receptive field, stride."""

    name: str
    module: str
    kind: str
    maps: int
    size: tuple[int, int] | None  # (h, w) of a map; None for a flat layer
    rf: tuple[int, int] | None
    stride: tuple[int, int] | None
    # times its module runs in one forward pass (a ResNet block's one ReLU: after bn1, then
    # after the residual sum); every view shows its last call
    calls: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "kind": self.kind, "maps": self.maps,
                "size": self.size, "rf": self.rf, "stride": self.stride,
                "spatial": self.size is not None, "calls": self.calls}


@dataclass
class ImageEntry:
    """An image as the model sees it: pixels uint8 (C, H, W) and the model input."""

    id: str
    pixels: Tensor
    x: Tensor
    label: str | None = None
    name: str | None = None
    original: tuple[int, int] | None = None  # (W, H) of an upload before fitting


@dataclass(frozen=True)
class DecodedUpload:
    """An upload decoded and fitted, not yet kept (`Explorer.decode_upload`)."""

    id: str
    pixels: Tensor
    x: Tensor
    name: str | None
    size: tuple[int, int]  # (W, H) of the file, upright


class _LRU(OrderedDict):
    """A dict that keeps its `size` most recently used entries, and where `max_bytes` is given
    at most that many bytes of them (a value's bytes: its length, or its "png"'s)."""

    def __init__(self, size: int, max_bytes: int | None = None) -> None:
        super().__init__()
        self.size, self.max_bytes = size, max_bytes
        self.nbytes = 0
        self.lock = threading.Lock()

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        self.put(key, value)
        return value

    def put(self, key: Any, value: Any) -> None:
        """Keep `value` as the most recent entry, the oldest going beyond `size` entries or
        `max_bytes` (the newest is kept whatever its size)."""
        with self.lock:
            if key in self:
                self.nbytes -= _nbytes(self[key])
            self[key] = value
            self.nbytes += _nbytes(value)
            self.move_to_end(key)
            while len(self) > self.size or (
                    self.max_bytes is not None and self.nbytes > self.max_bytes
                    and len(self) > 1):
                self.nbytes -= _nbytes(self.popitem(last=False)[1])


def _nbytes(value: Any) -> int:
    if isinstance(value, dict):
        value = value.get("png", b"")
    return len(value) if isinstance(value, bytes) else 0


class _Readable(Dataset):
    """The explorer's first `n_images` dataset items (those mined; `shown`: every image shown)
    through `Explorer.item` (a broken file is read once per server), counting the broken ones
    this reader met."""

    def __init__(self, explorer: Explorer, shown: bool = False) -> None:
        self.explorer, self.shown, self.skipped = explorer, shown, 0

    def __len__(self) -> int:
        return self.explorer.n_shown if self.shown else self.explorer.n_images

    def __getitem__(self, i: int) -> Any:
        item = self.explorer.item(i)
        self.skipped += item is None
        return item


def _one_value(row: LayerRow) -> bool:
    """Whether each of the layer's maps is one value: a flat layer's units, or maps of 1×1 (a
    ResNet's `avgpool`): drawn alike, as squares scaled to the layer's maximum."""
    return row.size is None or tuple(row.size) == (1, 1)


def _sig(value: float) -> float:
    """`value` to 6 significant digits for the JSON: an untrained network's activations (1e-8)
    stay themselves, where 6 decimals made them 0 beside `"active": true`."""
    return float(f"{value:.6g}")


def png(array: np.ndarray | Tensor) -> bytes:
    """uint8 (H, W), (H, W, 3) array or (C, H, W) tensor -> PNG bytes (fast compression: these
    go to a browser on the same machine)."""
    if isinstance(array, Tensor):
        t = array.detach().cpu()
        if t.ndim == 3:
            t = t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)
        array = t.contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Explorer:
    """A model, its dataset and uploads, and every view of the explorer (see the module doc).

    source: a `zfnet.sources.Source`. bundle: a `DataBundle` of the model's inputs (centre
    crops of its val split are the images shown), or None. cache_dir: where the top-k index is
    kept (one file per model, dataset and layer). n_images: mine the first N dataset images
    (default all; every image is shown). evolution: [(epoch, checkpoint path)] of a zfnet
    run's kept epochs, or None.
    Methods are not thread-safe: the web layer calls them from one thread; long computations
    (`topk_job`, `occlusion_job`, `evolution_job`) work on their own copy of the model.
    """

    def __init__(self, source: Any, bundle: Any = None, *, cache_dir: str | Path,
                 n_images: int | None = None, k: int = 9,
                 evolution: Sequence[tuple[int, Path]] | None = None,
                 max_pixels: int = MAX_PIXELS, nonlinear: str | None = None,
                 occlusion_precision: str = "float32") -> None:
        from zfnet.deconvnet import PRECISIONS
        from zfnet.graph import current_nonlinear

        if occlusion_precision not in PRECISIONS:
            raise ValueError(f"occlusion_precision={occlusion_precision!r} is not known; "
                             f"valid: {', '.join(PRECISIONS)}")
        # of occlusion's forward passes where the model is not a chain (`occlusion`'s
        # `precision`); a chain's incremental passes stay float32
        self.occlusion_precision = occlusion_precision

        # how the rules meet GELU, SiLU … (`zfnet.graph.nonlinear`): the views' and the jobs'
        # threads take it (default: the creating thread's)
        self.nonlinear = nonlinear or current_nonlinear()
        self.source = source
        self.model: nn.Module = source.model.eval()
        self.pre = source.preprocessing
        self.bundle = bundle
        self.k = k
        self.max_pixels = max_pixels
        self.evolution_checkpoints = list(evolution or [])
        # copied now, before any view runs: a copy made later, while a view captures maps,
        # would carry the view's hooks into every pass of the jobs
        self._job_model: nn.Module = copy.deepcopy(self.model).eval()
        self.val = None
        if bundle is not None:
            val = bundle.val
            self.val = val.with_mode("centre") if getattr(val, "mode", "centre") != "centre" \
                else val
        self.n_shown = len(self.val) if self.val is not None else 0  # browsed
        self.n_images = self.n_shown  # mined (top-k, evolution): the first n_images
        if n_images is not None:
            self.n_images = min(self.n_images, n_images)
        self.size = (self.pre.crop, self.pre.crop)
        self.channels = self.pre.in_channels
        self.layers = self._layer_table()
        self._forward_of_zero()  # now: a job's _class_names() must not run the view's model
        self.default_layer = self._default_layer()
        self.uploads: OrderedDict[str, ImageEntry] = OrderedDict()
        self._forward = _LRU(8)  # image id -> {layer: activation (C, h, w) or (F,)}, logits
        # (view, ...) -> PNG bytes: at most 64 MB (a ResNet's layer4 top-9 is 1.4 MB)
        self._pngs = _LRU(256, max_bytes=MAX_PNG_BYTES)
        self._passes = _LRU(4)  # image id -> its kept forward pass (`forward_pass`) or None
        # the layers the windowed engine takes: on the chain, which the forward runs as it
        # is written (checked once on a random input: `chain_runs_as_forward`)
        probe = to_model(self.model, torch.rand(1, self.channels, *self.size,
                                                generator=torch.Generator().manual_seed(0)))
        self._chain_layers = [r.name for r in self.layers
                              if windowed(self.model, [r.name], probe)]
        self._probe = probe[0]  # and the way down from each layer (`undefined_rules`)
        self._topk: dict[str, TopK] = {}
        # layer -> the non-rectifier the deconvnet and guided rules cannot go back through
        # from it (GELU, LayerNorm …), None where they can (`undefined_rules`)
        self._undefined: dict[str, str | None] = {}
        # dataset images found broken, index -> why: read once, warned about once per server
        self._broken: dict[int, str] = {}
        self._listed_read = False  # the list of broken files beside a mined index, read once
        key = self._cache_key()
        self.id = key.rsplit("-", 1)[-1]  # names this model and data in links
        self.cache_dir = Path(cache_dir) / key
        # (image id, layer, map) -> result and figure (the recent ones); layer and map None:
        # the default layer's strongest map
        self.occlusions = _LRU(32)
        self.evolutions = _LRU(64)  # (layer, unit) -> result and figure

    # --- the model ---

    def describe(self) -> dict[str, Any]:
        """The model, its data and what the page can show (`/api/model`)."""
        classes = self._num_classes()
        return {
            "id": self.id, "name": self.source.name, "kind": self.source.kind,
            "input": {"channels": self.channels, "size": list(self.size)},
            "classes": classes, "labels": self._class_names() is not None,
            "data": None if self.bundle is None else {"spec": self.bundle.spec,
                                                      "images": self.n_shown,
                                                      "mined": self.n_images},
            "preprocessing": self.pre.describe(),
            "evolution": {"epochs": [e for e, _ in self.evolution_checkpoints]}
            if self.evolution_checkpoints else None,
            "default_layer": self.default_layer, "score_layer": self.score_layer,
            "default_image": self._default_image(),
            "rules": list(RULES), "nonlinear": self.nonlinear, "k": self.k,
        }

    def _default_image(self) -> str | None:
        """The page's first image: the dataset's first readable one (found once)."""
        if not hasattr(self, "_first_image"):
            from zfnet.data.picks import pick_items

            got = pick_items(_Readable(self, shown=True), 1) if self.n_shown else []
            self._first_image = f"val:{got[0][0]}" if got else None
        return self._first_image

    def _layer_table(self) -> list[LayerRow]:
        """Every layer `--layer` takes that outputs maps or units: the leaves `layer_info`
        lists, the network's stages (`feature_layers`: a ResNet's `layer3`) and its blocks
        (every other module with modules inside that is not an `nn.Sequential`, whose output
        is its last module's: a ResNet's `layer3.1`, a block whose ReLUs are `F.relu` calls),
        dropouts left out (the identity at inference), with the output shape of one real
        forward pass (maps as (N, C, H, W), channels-last ones included: `capture`)."""
        infos = layer_info(self.model, self.size)
        names = [n for n, i in infos.items() if i.kind != "dropout"]
        try:
            stages = feature_layers(self.model, self.size)
        except ValueError:
            stages = []
        listed = {infos[n].module for n in names} | set(stages)
        blocks = [path for path, m in self.model.named_modules()
                  if path and path not in listed and next(m.children(), None) is not None
                  and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))]
        order = {m: i for i, (m, _) in enumerate(self.model.named_modules())}
        module_of = {n: infos[n].module if n in infos else n
                     for n in [*names, *stages, *blocks]}
        names = sorted(dict.fromkeys([*names, *stages, *blocks]),
                       key=lambda n: (order.get(module_of[n], 0), n not in stages))
        x = torch.zeros(1, self.channels, *self.size)
        with eval_mode(self.model), torch.inference_mode(), \
                capture(self.model, names) as store:
            self.model(to_model(self.model, x))
        geos = layer_geometries(self.model, [n for n in names if n in store], self.size)
        self._geometries = geos  # one geometry pass at start-up, for every view
        try:
            repeated = repeated_layers(self.model, self.size)
        except Exception:  # noqa: BLE001  # a model it cannot trace: every layer runs once
            repeated = {}
        rows = []
        for n in names:
            out = store.get(n)
            if not isinstance(out, Tensor) or out.ndim not in (2, 4):
                continue  # did not run, or its output is not maps nor a vector
            g = geos.get(n)
            size = tuple(out.shape[-2:]) if out.ndim == 4 else None
            kind = infos[n].kind if n in infos else "stage" if n in stages else "block"
            rows.append(LayerRow(
                n, module_of[n], kind, int(out.shape[1]), size,  # type: ignore[arg-type]
                (g.rows.rf, g.cols.rf) if g is not None and size else None,
                (g.rows.jump, g.cols.jump) if g is not None and size else None,
                repeated.get(module_of[n], 1)))
        return rows

    def _default_layer(self) -> str:
        try:
            stages = feature_layers(self.model, self.size)
        except ValueError:
            stages = []
        names = [r.name for r in self.layers]
        for n in reversed(stages):
            if n in names:
                return n
        return names[0]

    def layer(self, name: str) -> LayerRow:
        """The table's row of layer `name` (any name `--layer` takes); an ExplorerError naming
        the valid ones otherwise."""
        rows = {r.name: r for r in self.layers}
        if name in rows:
            return rows[name]
        try:
            canonical = layer_name(self.model, name)
        except ValueError as e:  # the API lists the layers, not the command line
            raise ExplorerError(str(e).replace(f"`zfnet models SOURCE` lists them{FROM_PYTHON}",
                                               "GET /api/layers lists those with maps")
                                ) from None
        if canonical in rows:
            return rows[canonical]
        raise ExplorerError(f"layer {name!r} has no maps to show; valid: "
                            f"{', '.join(rows)}")

    def unit_index(self, row: LayerRow, unit: int) -> int:
        if not 0 <= unit < row.maps:
            raise ExplorerError(f"unit {unit} is not a map of {row.name}; valid: "
                                f"0..{row.maps - 1}")
        return unit

    @property
    def score_layer(self) -> str:
        """The layer whose units are the model's class scores (`zfnet.models.score_layer`)."""
        if not hasattr(self, "_score_layer"):
            self._score_layer = layer_name(self.model, score_layer(self.model))
        return self._score_layer

    def unit_name(self, row: LayerRow, unit: int) -> str | None:
        """The class a unit of the class-score layer stands for (`score_layer`), where the
        model's classes have names; None for any other unit."""
        names = self._class_names()
        if names is None or row.maps != len(names):
            return None
        return names[unit] if row.name == self.score_layer else None

    def _num_classes(self) -> int | None:
        out = self._forward_of_zero()
        return int(out.shape[-1]) if out.ndim == 2 else None

    def _forward_of_zero(self) -> Tensor:
        if not hasattr(self, "_zero_out"):
            with eval_mode(self.model), torch.inference_mode():
                x = torch.zeros(1, self.channels, *self.size)
                self._zero_out = self.model(to_model(self.model, x)).float().cpu()
        return self._zero_out

    def _class_names(self) -> list[str] | None:
        n = self._num_classes()
        if self.source.labels and len(self.source.labels) == n:
            return as_shown(self.source.labels, self.bundle)  # with their words (words=FILE)
        names = labels_of(self.bundle)  # with their words (words=FILE)
        if names and len(names) == n and getattr(self.bundle, "num_classes", 0) == n:
            return list(names)
        return None

    def _cache_key(self) -> str:
        """A directory name that changes when the model's weights or the images mined do."""
        # a folder's files as they are now: one replaced under the same name is mined again
        digest = mining_digest(self.model, {"data": getattr(self.bundle, "spec", None),
                                            "images": self.n_images, "k": self.k,
                                            "pre": self.pre.to_dict()},
                               list(getattr(self.val, "paths", None) or [])[: self.n_images])
        slug = "".join(c if c.isalnum() else "_" for c in self.source.name)[:40]
        return f"{slug}-{digest[:16]}"

    # --- images ---

    def images(self, offset: int = 0, limit: int = 60) -> dict[str, Any]:
        """A page of the dataset's images (`/api/images`)."""
        if offset < 0 or limit < 1:
            raise ExplorerError("offset must be >= 0 and limit >= 1")
        names = labels_of(self.bundle)
        items = []
        for i in range(offset, min(offset + min(limit, 500), self.n_shown)):
            items.append({"id": f"val:{i}", "label": self._label(i, names),
                          "name": self._name(i), "broken": i in self._broken,
                          "src": f"/api/image/val:{i}.png"})
        return {"total": self.n_shown, "items": items}

    def _name(self, i: int) -> str | None:
        """Dataset image i's file name as the page shows it (a name's odd bytes, no UTF-8, as
        `\\xNN`, as the reports show them: `printable`), or None where its items are no files."""
        name = file_name(self.val, i)
        return None if name is None else printable(name)

    def _label(self, i: int, names: Sequence[str]) -> str | None:
        targets = getattr(self.val, "targets", None)
        if targets is None or not names:
            return None
        y = int(targets[i])
        return names[y] if 0 <= y < len(names) else None

    def image(self, image_id: str) -> ImageEntry:
        """The image `image_id` names: `val:N` (dataset image N) or `up:HEX` (an upload)."""
        if image_id.startswith("up:"):
            entry = self.uploads.get(image_id)
            if entry is None:
                raise NotFoundError(f"no uploaded image {image_id!r} (uploads are kept while "
                                    f"the server runs, the last {MAX_UPLOADS}); upload it again")
            try:
                self.uploads.move_to_end(image_id)
            except KeyError:  # dropped meanwhile for a newer upload (a job's thread): still used
                pass
            return entry
        kind, _, index = image_id.partition(":")
        if kind != "val" or not (index.isascii() and index.isdigit()):  # "²".isdigit()
            raise ExplorerError(f"image {image_id!r} is not an image id; valid: val:N (a dataset "
                                "image) or up:ID (an upload)")
        i = int(index)
        if not 0 <= i < self.n_shown:
            raise NotFoundError(f"image {image_id!r} does not exist; the dataset shown has "
                                + (f"images val:0..val:{self.n_shown - 1}" if self.n_shown
                                   else "no images (start the server with --data)"))
        item = self.item(i)
        if item is None:
            raise ExplorerError(f"dataset image {image_id} is broken: {self._broken[i]}; "
                                "pick another image")
        names = labels_of(self.bundle)
        return ImageEntry(image_id, self.bundle.raw_val(i), item[0], self._label(i, names),
                          self._name(i))

    def item(self, i: int) -> Any:
        """Dataset item i (its input and label), or None for a broken file: such a file is
        read (and warned about) once, then known as broken (`_broken`, with the reason)."""
        if i in self._broken:
            return None
        item = self.val[i]
        if item is None:
            try:
                self.val.raw(i)  # its error says which file and why
                self._broken[i] = "its file could not be read"
            except BadImageError as e:
                self._broken[i] = f"{e.path} could not be read: {e.reason}"
        return item

    def upload(self, data: bytes, name: str | None = None) -> ImageEntry:
        """Decode an uploaded file and keep it as the model sees it; an ExplorerError for a
        file that is not an image, is truncated, or is larger than `max_pixels`."""
        return self.keep_upload(self.decode_upload(data, name))

    def decode_upload(self, data: bytes, name: str | None = None) -> DecodedUpload:
        """An uploaded file decoded and fitted to the model's input (`upload`'s first half),
        touching nothing the explorer keeps: the server runs it beside the view worker, so
        that a click does not wait for a photo being decoded."""
        what = f"{name!r}" if name else "the upload"
        if not data:
            raise ExplorerError(f"{what} is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sized below
                with Image.open(io.BytesIO(data)) as img:
                    w, h = img.size
        except Image.DecompressionBombError:
            raise ExplorerError(f"{what} is over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
                                f"megapixels; the explorer takes images up to "
                                f"{self.max_pixels / 1e6:.0f} megapixels") from None
        except Exception:  # noqa: BLE001  # PIL raises many kinds for what is not an image
            if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS and not HEIF_READ:
                raise ExplorerError(f"{what} is a HEIC photo (an iPhone's), which this server "
                                    "does not read: convert it to JPEG, or pip install "
                                    "'zfnet[heif]' where the server runs") from None
            raise ExplorerError(f"{what} is not an image PIL can read (JPEG, PNG, WebP, "
                                "BMP, TIFF, GIF ...)") from None
        if w * h > self.max_pixels:
            raise ExplorerError(f"{what} is {w}x{h} ({w * h / 1e6:.0f} megapixels); the "
                                f"explorer takes images up to {self.max_pixels / 1e6:.0f} "
                                "megapixels: make it smaller first")
        # its shorter side goes to the model's resize, its longer side's centre kept up to
        # MAX_ASPECT times that (`resize_shorter`, as every command): a 2000x1 strip becomes
        # 16384x256, not 131 megapixels; only a model's large resize can pass the limit
        aspect = min(max(w, h) / max(min(w, h), 1), MAX_ASPECT)
        fitted = self.pre.resize ** 2 * aspect
        if fitted > self.max_pixels:
            most = self.max_pixels / self.pre.resize ** 2  # the longest side : shortest fitted
            raise ExplorerError(f"{what} is {w}x{h}: with its shorter side at the model's "
                                f"{self.pre.resize} px and its longer side {aspect:.0f} times "
                                f"that, it would be {fitted / 1e6:.0f} megapixels, over the "
                                f"explorer's {self.max_pixels / 1e6:.0f}; crop it to at most "
                                f"{math.floor(most)}:1 first")
        try:
            rgb = load_rgb(io.BytesIO(data), name=name or "upload")  # full scale, as the CLI
        except BadImageError as e:
            raise ExplorerError(f"{what} cannot be read: {e.reason}") from None
        pixels = self.pre.fit(rgb)
        return DecodedUpload(f"up:{hashlib.sha256(data).hexdigest()[:16]}", pixels,
                             self.pre.normalize(pixels), name,
                             (rgb.shape[-1], rgb.shape[-2]))  # (W, H) upright: EXIF applied

    def keep_upload(self, decoded: DecodedUpload) -> ImageEntry:
        """Keep a decoded upload (`upload`'s second half, on the view worker), named by its
        file; the same bytes again keep the name they had when this one has none."""
        kept = self.uploads.get(decoded.id)
        name = decoded.name or (kept.name if kept else None)
        entry = ImageEntry(decoded.id, decoded.pixels, decoded.x, None, name, decoded.size)
        self.uploads[entry.id] = entry
        self.uploads.move_to_end(entry.id)
        while len(self.uploads) > MAX_UPLOADS:
            self.uploads.popitem(last=False)
        return entry

    def image_png(self, image_id: str) -> bytes:
        return self._pngs.get_or(("image", image_id),
                                 lambda: png(self.image(image_id).pixels))

    # --- one image forward: maps and classes ---

    def forward(self, image_id: str) -> dict[str, Tensor]:
        """Every listed layer's output for the image, and its logits ("__logits__"): one
        forward pass, kept for the recent images."""
        def run() -> dict[str, Tensor]:
            entry = self.image(image_id)
            names = [r.name for r in self.layers]
            with eval_mode(self.model), torch.inference_mode(), \
                    capture(self.model, names) as store:
                logits = self.model(to_model(self.model, entry.x[None]))
            out = {n: t[0].float().cpu() for n, t in store.items()}
            out["__logits__"] = logits[0].float().cpu()
            return out
        return self._forward.get_or(image_id, run)

    def predict(self, image_id: str, top: int = 5) -> dict[str, Any]:
        """The top classes of the model on the image (`/api/predict`), its label and file
        name (an upload's or a dataset file's: a page opened by a link knows it by this)."""
        entry = self.image(image_id)
        logits = self.forward(image_id)["__logits__"]
        names = self._class_names()
        if logits.ndim != 1:
            return {"top": [], "label": entry.label, "name": entry.name}
        p = torch.softmax(logits, 0)
        values, idx = p.topk(min(top, p.numel()))
        return {"top": [{"class": int(c), "name": names[int(c)] if names else None,
                         "p": round(float(v), 6)} for v, c in zip(values, idx, strict=True)],
                "label": entry.label, "name": entry.name}

    def classes(self, name: str | None = None) -> dict[str, Any]:
        """The model's classes (`/api/classes`): every class's number and name, and the layer
        whose units score them; with `name`, the one class it names — its whole name (case
        aside), a comma synonym ("tabby") or its number — and that class's unit, or an
        ExplorerError saying which names are close."""
        n = self._num_classes()
        if not n:
            raise ExplorerError(f"{self.source.name} gives no class scores (its output is not "
                                f"one score a class): it has no classes to pick")
        names = self._class_names()
        if name is None:
            return {"layer": self.score_layer, "classes": [
                {"class": k, "name": names[k] if names else None} for k in range(n)]}
        wanted = name.strip()
        if not wanted:
            raise ExplorerError("name: give a class's name or its number")
        try:
            found = class_indices([wanted], names, "the model", n)  # not a checkpoint path
        except ValueError as e:
            raise ExplorerError(str(e)) from None
        if len(found) != 1:
            raise ExplorerError(f"{wanted!r} names {len(found)} classes: give one")
        k = found[0]
        if k >= n:
            raise ExplorerError(f"class {k} is outside {self.source.name}'s {n} classes "
                                f"(0 to {n - 1})")
        return {"class": k, "name": names[k] if names else None, "layer": self.score_layer,
                "unit": k}

    def maps(self, image_id: str, layer: str) -> dict[str, Any]:
        """The layout of the layer's maps in its sprite (`/api/maps`), each map's strongest
        activation and where it is."""
        row = self.layer(layer)
        act = self.forward(image_id)[row.name]
        m = row.maps
        flat = act.reshape(m, -1)
        best, where = flat.max(1)
        h, w = row.size or (1, 1)
        cols, tile = self._layout(row)
        return {"layer": row.name, "maps": m, "size": [h, w], "cols": cols,
                "tile": list(tile), "gap": 1, "scale": "layer" if _one_value(row) else "map",
                "max": [_sig(float(v)) for v in best],
                "argmax": [[int(i) // w, int(i) % w] for i in where],
                "sprite": f"/api/maps.png?image={image_id}&layer={row.name}"}

    def _layout(self, row: LayerRow) -> tuple[int, tuple[int, int]]:
        """(columns, (tile h, tile w)) of the sprite: maps enlarged by an integer factor to at
        least TILE_MIN px, in about a 4:3 page."""
        if _one_value(row):
            return max(1, min(64, math.ceil(math.sqrt(row.maps * 4 / 3)))), (FLAT_TILE,) * 2
        h, w = row.size
        zoom = max(1, math.ceil(TILE_MIN / max(h, w)))
        th, tw = h * zoom, w * zoom
        cols = max(1, min(row.maps, round(math.sqrt(row.maps * th / tw * 4 / 3))))
        return cols, (th, tw)

    def maps_png(self, image_id: str, layer: str) -> bytes:
        """The sprite: every map of the layer for the image, each scaled from 0 to its own
        maximum (rectified: grey levels of max(a, 0)) — a flat layer's units, and maps of
        1×1 (a global pool's), to the layer's maximum: scaled to its own, each active one
        would be white —, on a dark grid."""
        row = self.layer(layer)

        def draw() -> bytes:
            act = self.forward(image_id)[row.name].clamp(min=0)
            cols, (th, tw) = self._layout(row)
            h, w = row.size or (1, 1)
            a = act.reshape(row.maps, h, w)
            if _one_value(row):  # a "map" of one value: scaled by the layer's max
                top = a.max().clamp_min(1e-12).expand(row.maps)
            else:
                top = a.reshape(row.maps, -1).amax(1).clamp_min(1e-12)
            u8 = (a / top[:, None, None] * 255).round().to(torch.uint8)
            u8 = u8.repeat_interleave(th // h, 1).repeat_interleave(tw // w, 2)
            rows_n = math.ceil(row.maps / cols)
            canvas = torch.full((rows_n * (th + 1) - 1, cols * (tw + 1) - 1), 40,
                                dtype=torch.uint8)
            for i in range(row.maps):
                y, x = (i // cols) * (th + 1), (i % cols) * (tw + 1)
                canvas[y:y + th, x:x + tw] = u8[i]
            return png(canvas.numpy())
        return self._pngs.get_or(("maps", image_id, row.name), draw)

    # --- one unit ---

    def unit(self, image_id: str, layer: str, unit: int, row: int | None = None,
             col: int | None = None, seed: str = "activation") -> dict[str, Any]:
        """Where the unit is, its activation and receptive field (`/api/unit`); by default
        the map's strongest unit. `active`: activation > 0 (seeded with its activation, every
        rule projects an inactive unit to nothing; `seed="one"`: its projections' URLs seed
        it with 1, which shows what would raise a unit below zero). `rules`: the projections'
        URLs by the rules defined for the layer; `undefined`: the others, each with why
        (`undefined_rules`)."""
        _check_seed(seed)
        lr = self.layer(layer)
        unit = self.unit_index(lr, unit)
        r, c = self._position(image_id, lr, unit, row, col)
        act = self.forward(image_id)[lr.name]
        value = float(act[unit, r, c]) if act.ndim == 3 else float(act[unit])
        geo = self._geometries.get(lr.name)
        box = list(geo.box(r, c, self.size)) if geo is not None and lr.size else None
        q = f"image={image_id}&layer={lr.name}&unit={unit}&row={r}&col={c}"
        one = {"seed": "one"} if seed == "one" else {}
        undefined = self.undefined_rules(lr.name)
        return {"layer": lr.name, "unit": unit, "name": self.unit_name(lr, unit),
                "row": r, "col": c,
                "activation": _sig(value), "active": value > 0, "box": box, "seed": seed,
                "rules": {rule: f"/api/projection.png?{q}&rule={rule}"
                          + ("&seed=one" if one else "") for rule in RULES
                          if rule not in undefined},
                "undefined": undefined,
                "patch": f"/api/patch.png?{q}", "image": f"/api/image/{image_id}.png",
                "link": "/?" + urlencode({"model": self.id, "image": image_id, "layer": lr.name,
                                          "unit": unit, "row": r, "col": c, **one})}

    def _position(self, image_id: str, lr: LayerRow, unit: int, row: int | None,
                  col: int | None) -> tuple[int, int]:
        if lr.size is None:
            if row not in (None, 0) or col not in (None, 0):
                raise ExplorerError(f"{lr.name} is a flat layer: its units have no position "
                                    "(row and col are 0)")
            return 0, 0
        h, w = lr.size
        if row is None and col is None:
            act = self.forward(image_id)[lr.name][unit]
            i = int(act.reshape(-1).argmax())
            return i // w, i % w
        if row is None or col is None:
            raise ExplorerError("give both row and col, or neither (the map's strongest unit)")
        if not (0 <= row < h and 0 <= col < w):
            raise ExplorerError(f"position ({row}, {col}) is outside {lr.name}'s {h}x{w} maps; "
                                f"valid: rows 0..{h - 1}, cols 0..{w - 1}")
        return row, col

    def _window(self, lr: LayerRow, r: int, c: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the unit's receptive field in the input, as the gallery cuts
        it (`unit_windows`): at full size on the windowed engine, within the image on the
        general path, the whole image for a flat layer."""
        geo = self._geometries.get(lr.name) if lr.size else None
        top, left, h, w = unit_windows(geo, torch.tensor([r]), torch.tensor([c]), self.size,
                                       self._whole(lr.name))
        return int(top[0]), int(left[0]), h, w

    def _pass(self, image_id: str) -> Forward | None:
        """The image's forward pass along the model's plain chain, kept for its projections."""
        return self._passes.get_or(image_id, lambda: forward_pass(
            self.model, self.image(image_id).x[None], self._chain_layers))

    def _whole(self, name: str) -> bool:
        """Whether the layer's projections cover the whole image (the general path)."""
        return not windowed(self.model, [name])

    def projection(self, image_id: str, layer: str, unit: int, rule: str,
                   row: int | None = None, col: int | None = None,
                   seed: str = "activation") -> Tensor:
        """The unit projected to pixels by `rule`, seeded with its activation or 1 (`seed`),
        in the image's pixel units: (C, H, W)."""
        if rule not in RULES:
            raise ExplorerError(f"rule {rule!r} is not known; valid: {', '.join(RULES)}")
        _check_seed(seed)
        lr = self.layer(layer)
        unit = self.unit_index(lr, unit)
        r, c = self._position(image_id, lr, unit, row, col)
        pos = torch.tensor([[r, c]]) if lr.size else None
        seeds = {lr.name: Seeds([0], [unit], pos)}
        fwd = self._pass(image_id) if lr.name in self._chain_layers else None
        if fwd is not None:  # the image's kept pass: switches and masks, any rule
            rf = project_layers(self.model, fwd.images, seeds, rule, forward=fwd,
                                seed=seed)[lr.name]
        else:  # the general path makes its own pass
            rf = project_layers(self.model, self.image(image_id).x[None], seeds, rule,
                                seed=seed)[lr.name]
        p = paste(rf, self.size)[0].float().cpu()
        return p * self.pre.pixel_scale().reshape(-1, 1, 1)

    def projection_png(self, image_id: str, layer: str, unit: int, rule: str,
                       row: int | None = None, col: int | None = None,
                       seed: str = "activation") -> bytes:
        """The projection cut to the unit's receptive-field window, drawn by `zfnet.display`'s
        rule (mid-grey 0, clipped at the 99th percentile)."""
        lr = self.layer(layer)
        r, c = self._position(image_id, lr, self.unit_index(lr, unit), row, col)

        def draw() -> bytes:
            p = self.projection(image_id, layer, unit, rule, r, c, seed)
            return png(projection_to_uint8(window(p, *self._window(lr, r, c))))
        return self._pngs.get_or(("proj", image_id, lr.name, unit, r, c, rule, seed), draw)

    def patch_png(self, image_id: str, layer: str, unit: int, row: int | None = None,
                  col: int | None = None) -> bytes:
        """The image in the unit's receptive-field window (black outside the image)."""
        lr = self.layer(layer)
        r, c = self._position(image_id, lr, self.unit_index(lr, unit), row, col)
        pixels = self.image(image_id).pixels
        return png(window(pixels, *self._window(lr, r, c)))

    # --- long computations: each on the job thread, with its own copy of the model ---

    def job_model(self) -> nn.Module:
        """The job thread's copy of the model (made at start-up): hooks and modes of one
        thread never touch a forward pass of the other."""
        return self._job_model

    def topk_ready(self, layer: str) -> TopK | None:
        """The layer's top-k index if it is mined (in memory or on disk), else None."""
        lr = self.layer(layer)
        if lr.name in self._topk:
            return self._topk[lr.name]
        path = self._topk_path(lr.name)
        if path.exists():
            try:
                self._topk[lr.name] = load_topk(path)[lr.name]
                return self._topk[lr.name]
            except Exception:  # noqa: BLE001  # damaged (truncated, not a pickle ...): mine again
                path.unlink(missing_ok=True)
        return None

    def _topk_path(self, name: str) -> Path:
        return self.cache_dir / f"topk_{name.replace('.', '_')}.pt"

    def topk_job(self, layer: str, progress: Callable[[int, int], None]) -> None:
        """Mine the layer's top-k over the dataset's first `n_images` images and keep it on
        disk (written whole or not at all), with the list of the files that could not be
        read. Its progress counts those too: it ends at its total. An index mined already
        (by a job that ended just before this one was asked for) is not mined again."""
        lr = self.layer(layer)
        if self.val is None or not self.n_images:
            raise ExplorerError("no dataset to mine: start the server with --data")
        if lr.name in self._topk:
            return
        data = _Readable(self)
        path = self._topk_path(lr.name)
        try:
            result = mine_topk(
                self.job_model(), data, [lr.name], self.k, indices=range(self.n_images),
                batch_size=32, progress=lambda done, total: progress(done + data.skipped, total),
                # a cancel or a stopped server keeps the mining: asking again continues it
                journal=path.with_name(f".{path.stem}.mining.pt"),
                journal_key=self.cache_dir.name, notes=False)
        except BaseException:
            self._keep_unreadable()  # a continued mining does not read them again
            raise
        self._keep_unreadable()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_topk(result, tmp)
        os.replace(tmp, path)
        self._topk[lr.name] = result[lr.name]

    def _keep_unreadable(self) -> None:
        """Write the list of the files that could not be read beside the index: those this
        server found and those listed there already (by a mining stopped before)."""
        self._unreadable()  # those listed already, read into this server's
        broken = {i: why for i, why in list(self._broken.items()) if i < self.n_images}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.cache_dir / "unreadable.json",
                          json.dumps({str(i): broken[i] for i in sorted(broken)}))

    def _unreadable(self) -> list[int]:
        """The dataset images (of the first `n_images`) that could not be read: those found
        by this server, and those listed beside a mined index."""
        listed = self.cache_dir / "unreadable.json"
        if not self._listed_read and listed.exists():
            try:
                for i, why in json.loads(listed.read_text()).items():
                    self._broken.setdefault(int(i), why)
            except (ValueError, AttributeError):  # damaged: what this server found is told
                pass
        self._listed_read = True
        # a copy: a top-k job's thread may add to it meanwhile
        return sorted(i for i in list(self._broken) if i < self.n_images)

    def topk(self, layer: str, unit: int) -> dict[str, Any] | None:
        """The unit's top-k over the dataset (`/api/topk`), None until it is mined; its
        figure's URL by each rule defined for the layer (`rules`; `undefined`, the others and
        why), `figure` by the deconvnet where it is defined, else by the gradient."""
        lr = self.layer(layer)
        unit = self.unit_index(lr, unit)
        t = self.topk_ready(lr.name)
        if t is None:
            return None
        items = [{"image": f"val:{int(t.index[unit, j])}",
                  "name": self._name(int(t.index[unit, j])),  # its file's, or None
                  "activation": _sig(float(t.values[unit, j])),
                  "row": int(t.row[unit, j]), "col": int(t.col[unit, j])}
                 for j in range(t.k) if int(t.index[unit, j]) >= 0]
        figure = f"/api/topk.png?layer={lr.name}&unit={unit}"
        undefined = self.undefined_rules(lr.name)
        # the paper's rule, or the gradient where the deconvnet is undefined here
        rule = "gradient" if "deconvnet" in undefined else "deconvnet"
        broken = self._unreadable()
        return {"layer": lr.name, "unit": unit, "name": self.unit_name(lr, unit), "k": t.k,
                "images": self.n_images,
                "mined": self.n_images - len(broken),
                "unreadable": [{"image": f"val:{i}", "name": self._name(i)}
                               for i in broken],
                "items": items, "figure": f"{figure}&rule={rule}", "rule": rule,
                "rules": {r: f"{figure}&rule={r}" for r in RULES if r not in undefined},
                "undefined": undefined}

    def undefined_rules(self, name: str) -> dict[str, str]:
        """The rules undefined for the units of layer `name`, each with why (one line, in the
        server's words): the deconvnet and guided rules where the way down from the layer goes
        through a non-rectifier (GELU, SiLU, LayerNorm …) and the server's `nonlinear` is
        "error"; none under "gradient". Decided as the CLI's commands decide
        (`check_defined`: one seed projected), once per layer."""
        from zfnet.graph import nonlinear

        if name not in self._undefined:
            try:
                with nonlinear(self.nonlinear):  # the server's, whatever this thread's
                    check_defined(self.model, self._probe, [name], "deconvnet")
                self._undefined[name] = None
            except RuleUndefinedError as e:
                self._undefined[name] = e.what
            except Exception:  # noqa: BLE001  # not this check's to say: the projections say it
                return {}
        what = self._undefined[name]
        return {} if what is None else {
            rule: RuleUndefinedError(rule, what).message(server=True)
            for rule in RULES if rule != "gradient"}

    def topk_png(self, layer: str, unit: int, rule: str = "deconvnet") -> bytes:
        """The unit's k projections by `rule` beside their k image patches (`render_layer`;
        k cut to the images mined where fewer)."""
        if rule not in RULES:
            raise ExplorerError(f"rule {rule!r} is not known; valid: {', '.join(RULES)}")
        lr = self.layer(layer)
        unit = self.unit_index(lr, unit)
        t = self.topk_ready(lr.name)
        if t is None:
            raise NotFoundError(f"the top-{self.k} of {lr.name} is not mined yet: GET "
                                f"/api/topk?layer={lr.name}&unit={unit} starts it")

        def draw() -> bytes:
            geos = {lr.name: self._geometries.get(lr.name)}
            # cut to the images mined where fewer than k: no empty cells (as the gallery's)
            cut = within_mined({lr.name: t}, t.k, self.n_images)[1][lr.name]
            proj = project_topk(self.model, self.val, {lr.name: cut}, {lr.name: [unit]}, rule,
                                geometries=geos)[lr.name]
            proj = proj * self.pre.pixel_scale().reshape(1, 1, -1, 1, 1)
            whole = self._whole(lr.name)
            patches = topk_patches(cut, [unit], geos[lr.name], (self.channels, *self.size),
                                   whole, self.bundle.raw_val)
            buf = io.BytesIO()
            render_layer(proj, patches, buf)
            return buf.getvalue()
        return self._pngs.get_or(("topk", lr.name, unit, rule), draw)

    def occlusion_unit(self, layer: str | None, unit: int | None) -> tuple[str | None,
                                                                           int | None]:
        """The (layer, map) whose maps (b) and (c) an occlusion shows: a picked unit's, checked,
        or (None, None): the default layer's strongest map (the paper's choice)."""
        if layer is None and unit is None:
            return None, None
        if layer is None or unit is None:
            raise ExplorerError("occlusion of a unit needs both layer and unit (or neither: "
                                "the image's strongest map of the last spatial layer)")
        row = self.layer(layer)
        return row.name, self.unit_index(row, unit)

    def occlusion_job(self, image_id: str, layer: str | None, unit: int | None,
                      progress: Callable[[int, int], None]) -> None:
        """The four maps of Fig. 7 for the image (zfnet.analyses.occlusion), computed
        incrementally where the model allows, and its figure: maps (b) and (c) of `unit` of
        `layer` (both None: the default layer's strongest map); (d) follows the predicted
        class, or the class `unit` is where `layer` is the class-score layer."""
        from zfnet.analyses.occlusion import occlusion, plot_occlusion

        entry = self.image(image_id)
        layer, unit = self.occlusion_unit(layer, unit)
        model = self.job_model()
        target = unit if layer is not None and layer == self.score_layer else None
        result = occlusion(model, entry.x, layer=layer, feature_map=unit, target=target,
                           progress=progress, precision=self.occlusion_precision)
        named = self.unit_name(self.layer(result.layer), result.feature_map)
        if named is not None:
            result.meta["unit_name"] = named  # a class's score
        if target is not None:
            result.meta["target"] = "chosen"  # the figure says so, not "true"
        if result.projection is not None:
            result.projection = result.projection * self.pre.pixel_scale().reshape(-1, 1, 1)
        buf = io.BytesIO()
        plot_occlusion([(entry.pixels, result)], self._class_names(), buf)
        names = self._class_names()
        query = {"image": image_id} | ({"layer": layer, "unit": unit} if layer is not None
                                       else {})
        self.occlusions.put((image_id, layer, unit), {
            "target": {"class": result.target,
                       "name": names[result.target] if names else None,
                       "followed": "picked" if target is not None else "predicted"},
            "layer": result.layer, "map": result.feature_map,
            "map_rule": "picked" if layer is not None else "strongest",
            "method": result.method, "precision": result.meta["precision"],
            "figure": "/api/occlusion.png?" + urlencode(query),
            "png": buf.getvalue()})

    def evolution_job(self, layer: str, unit: int, progress: Callable[[int, int], None]
                      ) -> None:
        """The unit's strongest activation over the dataset, found again and projected at each
        kept epoch of the run (Fig. 4)."""
        from zfnet.analyses.evolution import render_unit_evolution, unit_evolution
        from zfnet.train import CheckpointModels

        lr = self.layer(layer)
        unit = self.unit_index(lr, unit)
        if not self.evolution_checkpoints:
            raise NotFoundError("evolution needs a zfnet run with kept epochs (zfnet serve "
                                "--checkpoint RUN)")
        if self.val is None:
            raise ExplorerError("no dataset to search: start the server with --data")
        models = CheckpointModels(self.evolution_checkpoints)  # one in memory at a time
        result = unit_evolution(models, _Readable(self), lr.name, unit,
                                n_images=self.n_images, progress=progress)
        buf = io.BytesIO()
        render_unit_evolution(result, buf)
        self.evolutions.put((lr.name, unit), {
            "epochs": result.epochs, "similarity": result.similarity,
            "figure": f"/api/evolution.png?layer={lr.name}&unit={unit}",
            "png": buf.getvalue()})
