"""Object parts marked on a user's own images, for correspondence (paper Fig. 8, Table 1): the
paper masks "the same part of the face in each image (e.g. all left eyes)" of 5 dog photos.

A parts file gives, for each image, a box or an outline per part in the image's own pixels as
a viewer shows it (x to the right, y down, the EXIF orientation applied). A box is left, top,
right, bottom, the right and bottom edges excluded (PIL's `crop` box; fractional values are
rounded); an outline is a polygon of 3 points or more, its inside and its edge masked (as PIL
draws it). Either form:

- JSON, an object of images, each an object of parts, a box or a list of [x, y] points:
  `{"dog1.jpg": {"left eye": [120, 80, 150, 105], "nose": [[140, 120], [180, 125], [160, 150]]}}`;
- CSV, one box a line: `image,part,left,top,right,bottom` (a header line is allowed);
- COCO's JSON (`images`, `annotations`, `categories`), as CVAT, Label Studio, VIA and Roboflow
  export it: each annotation is a part named by its category, outlined by its polygon
  `segmentation` (one or more polygons, [x1, y1, x2, y2, ...] each) where it has one, else
  its box (`bbox`, x, y, width, height; a brush's mask, run-length encoded, by its box); one
  per category and image, since a part is masked as one region.

An image is named by its path under the folder (`images:DIR`), or by its file name where no
other image of the folder has it (with or without the extension, as `val_labels` names them;
a path the folder does not have, as a tool may export it, by its file name).
Errors name the file, the line or image, and what is wrong.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from zfnet.data.labels_file import image_keys, image_name_key

Box = tuple[float, float, float, float]  # left, top, right, bottom (right, bottom excluded)


@dataclass(frozen=True)
class Outline:
    """A part outlined by one or more polygons, each of 3 points (x, y) or more."""

    polygons: tuple[tuple[tuple[float, float], ...], ...]


Region = Box | Outline
PartBoxes = dict[str, dict[str, Region]]  # image as the file names it -> part -> its region
FORMS = ('JSON {"IMAGE": {"PART": [left, top, right, bottom] or [[x, y], [x, y], [x, y], ...], '
         "...}, ...}, CSV lines image,part,left,top,right,bottom, or COCO's JSON (images, "
         "annotations, categories)")
COCO_KEYS = ("images", "annotations", "categories")


def _box(values: object, where: str) -> Box:
    """Four finite numbers, left < right and top < bottom, as a box."""
    ok = isinstance(values, (list, tuple)) and len(values) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in values)
    if not ok:
        raise ValueError(f"{where}: a box is 4 numbers, left, top, right, bottom; got {values!r}")
    left, top, right, bottom = (float(v) for v in values)  # type: ignore[union-attr]
    if right <= left or bottom <= top:
        raise ValueError(f"{where}: box [{left:g}, {top:g}, {right:g}, {bottom:g}] is empty: "
                         "right must exceed left and bottom top (left, top, right, bottom)")
    return left, top, right, bottom


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _points(flat: object, where: str) -> tuple[tuple[float, float], ...]:
    """A polygon from COCO's flat [x1, y1, x2, y2, ...]: 3 points or more."""
    if not (isinstance(flat, list) and len(flat) >= 6 and len(flat) % 2 == 0
            and all(_finite(v) for v in flat)):
        raise ValueError(f"{where}: a polygon of 'segmentation' is a list of x, y numbers, 3 "
                         f"points or more, [x1, y1, x2, y2, x3, y3, ...]; got {flat!r}")
    return tuple((float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2))


def _region(values: object, where: str) -> Region:
    """A box (4 numbers) or an outline (a list of 3 [x, y] points or more)."""
    if isinstance(values, list) and values and all(isinstance(v, list) for v in values):
        if not (len(values) >= 3 and all(len(v) == 2 and all(_finite(c) for c in v)
                                         for v in values)):
            raise ValueError(f"{where}: an outline is a list of 3 [x, y] points or more; got "
                             f"{values!r}")
        return Outline((tuple((float(x), float(y)) for x, y in values),))
    return _box(values, where)


def _from_json(text: str, path: Path) -> PartBoxes:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"parts file {path} line {e.lineno}: not valid JSON ({e.msg}); "
                         f"expected {FORMS}") from None
    if not isinstance(data, dict):
        raise ValueError(f"parts file {path} holds a JSON {type(data).__name__}; expected "
                         f"{FORMS}")
    if "annotations" in data and "images" in data:
        return _from_coco(data, path)
    out: PartBoxes = {}
    for image, parts in data.items():
        if not isinstance(parts, dict) or not parts:
            raise ValueError(f"parts file {path}, image {image!r}: expected an object of parts "
                             f'and their boxes or outlines, {{"PART": [left, top, right, '
                             f'bottom]}}; got {parts!r}')
        out[image] = {str(p).strip(): _region(b, f"parts file {path}, image {image!r}, part "
                                                 f"{p!r}")
                      for p, b in parts.items()}
    return out


def _coco_list(data: dict, key: str, path: Path) -> list[dict]:
    items = data.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"parts file {path} is COCO's JSON (it has 'images' and "
                         f"'annotations') but its {key!r} is not a list of objects; expected "
                         + ", ".join(repr(k) for k in COCO_KEYS))
    return items


def _coco_ids(items: list[dict], field: str, key: str, path: Path) -> dict[object, str]:
    """{id: the item's `field`} of COCO's `images` or `categories`."""
    out: dict[object, str] = {}
    for n, item in enumerate(items):
        if not isinstance(item.get("id"), (int, str)) or not isinstance(item.get(field), str) \
                or not item[field].strip():
            raise ValueError(f"parts file {path}: {key}[{n}] has no 'id' and {field!r} "
                             f"(got {item!r})")
        out[item["id"]] = item[field].strip()
    return out


def _from_coco(data: dict, path: Path) -> PartBoxes:
    """COCO's JSON: each annotation's polygon `segmentation`, or where it has none its `bbox`
    (x, y, width, height), is the part its category names, on the image its `image_id` names
    (by `file_name`)."""
    images = _coco_ids(_coco_list(data, "images", path), "file_name", "images", path)
    parts = _coco_ids(_coco_list(data, "categories", path), "name", "categories", path)
    out: PartBoxes = {}
    marked: dict[tuple[str, str], object] = {}
    for n, a in enumerate(_coco_list(data, "annotations", path)):
        where = f"parts file {path}, annotations[{n}] (id {a.get('id')!r})"
        if not isinstance(a.get("image_id"), (int, str)) or a["image_id"] not in images:
            raise ValueError(f"{where}: image_id {a.get('image_id')!r} is none of 'images' ids")
        if not isinstance(a.get("category_id"), (int, str)) or a["category_id"] not in parts:
            raise ValueError(f"{where}: category_id {a.get('category_id')!r} is none of "
                             "'categories' ids")
        image, part = images[a["image_id"]], parts[a["category_id"]]
        if (image, part) in marked:
            raise ValueError(f"{where}: {image!r} has a second {part!r} (annotation "
                             f"{marked[(image, part)]!r} is the first); a part is one region "
                             f"an image: give each its own category (e.g. 'left {part}', "
                             f"'right {part}')")
        marked[(image, part)] = a.get("id")
        polygons = a.get("segmentation")
        if isinstance(polygons, list) and polygons:  # not a mask's run-length code (a dict)
            out.setdefault(image, {})[part] = Outline(tuple(_points(f, where) for f in polygons))
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
            raise ValueError(f"{where}: expected a polygon 'segmentation' or a 'bbox' [x, y, "
                             f"width, height]; got bbox {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        out.setdefault(image, {})[part] = _box([x, y, x + w, y + h], where)
    return out


def _number(word: str) -> float | str:
    try:
        return float(word)
    except ValueError:
        return word


def _from_csv(text: str, path: Path) -> PartBoxes:
    out: PartBoxes = {}
    for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        row = [c.strip() for c in row]
        if not any(row):
            continue
        if len(row) != 6:
            raise ValueError(f"parts file {path} line {n}: expected 6 columns, image,part,"
                             f"left,top,right,bottom; got {len(row)}: {','.join(row)!r}")
        values = [_number(c) for c in row[2:]]
        if n == 1 and all(isinstance(v, str) for v in values):
            continue  # a header
        image, part = row[0], row[1]
        boxes = out.setdefault(image, {})
        if part in boxes:
            raise ValueError(f"parts file {path} line {n}: part {part!r} of {image!r} is "
                             "marked again")
        boxes[part] = _box(values, f"parts file {path} line {n}")
    return out


def read_parts(path: str | Path) -> PartBoxes:
    """The box or outline of each part of each image in the parts file at `path` (JSON, CSV or
    COCO's JSON, see the module), in the file's order."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"parts file {path} {what}; expected a file of {FORMS}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"parts file {path}: cannot read it as text ({e})") from None
    first = text.lstrip()[:1]
    boxes = _from_json(text, path) if first in ("{", "[") else _from_csv(text, path)
    if not boxes:
        raise ValueError(f"parts file {path} marks no part; expected {FORMS}")
    return boxes


def find_images(boxes: PartBoxes, folder: Path, images: Sequence[Path],
                parts_file: str | Path) -> dict[str, Path]:
    """Each image `boxes` names -> its file among `images` (the files of `folder`): by its path
    under `folder` or its file name, with or without the extension (a path that is not under
    `folder`, as an annotation tool may export it, by its file name)."""
    by_key = image_keys(folder, images)
    found: dict[str, Path] = {}
    for image in boxes:
        path = by_key.get(image_name_key(image), False)
        if path is False:  # a path from elsewhere (a tool's export: images/dog1.jpg, /data/..)
            path = by_key.get(image_name_key(image.replace("\\", "/").rsplit("/", 1)[-1]),
                              False)
        if path is None:
            raise ValueError(f"parts file {parts_file}: {image!r} names more than one image of "
                             f"{folder}; give its path under {folder}")
        if path is False:
            shown = ", ".join(p.relative_to(folder).as_posix() for p in images[:3])
            raise ValueError(f"parts file {parts_file}: image {image!r} is not in {folder} "
                             f"({len(images)} image(s): {shown}{', ...' * (len(images) > 3)})")
        found[image] = path  # type: ignore[assignment]
    return found


class PartCutWarning(UserWarning):
    """A part's box or outline reaches past its image: cut to it (marked on another size of the
    image?)."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)


def region_bounds(region: Region) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a box or of an outline's points, in the image's pixels."""
    if isinstance(region, Outline):
        xs = [x for poly in region.polygons for x, _ in poly]
        ys = [y for poly in region.polygons for _, y in poly]
        return min(xs), min(ys), max(xs), max(ys)
    return tuple(float(v) for v in region)  # type: ignore[return-value]


def past_image(region: Region, height: int, width: int, slack: float = 1.0) -> bool:
    """Whether `region` reaches more than `slack` pixels past a width x height image (a box
    drawn a pixel over the edge is usual; one twice the image's size was marked on another)."""
    left, top, right, bottom = region_bounds(region)
    return left < -slack or top < -slack or right > width + slack or bottom > height + slack


def part_mask(region: Region, height: int, width: int) -> torch.Tensor:
    """Bool (height, width): the pixels of a box (rounded to whole pixels) or of an outline (its
    polygons' insides and edges, as PIL fills them), cut to the image; a ValueError when no
    pixel of the image is in it."""
    if isinstance(region, Outline):
        canvas = Image.new("1", (width, height))
        draw = ImageDraw.Draw(canvas)
        for polygon in region.polygons:
            draw.polygon(list(polygon), fill=1, outline=1)
        mask = torch.from_numpy(np.array(canvas, dtype=bool))
        if not mask.any():
            left, top, right, bottom = region_bounds(region)
            raise ValueError(f"outline (x {left:g} to {right:g}, y {top:g} to {bottom:g}) "
                             f"lies outside the {width}x{height} image (in its pixels)")
        return mask
    box = region
    left, top, right, bottom = (round(v) for v in box)
    t, b = max(top, 0), min(bottom, height)
    lft, r = max(left, 0), min(right, width)
    if b <= t or r <= lft:
        raise ValueError(f"box [{box[0]:g}, {box[1]:g}, {box[2]:g}, {box[3]:g}] lies outside the "
                         f"{width}x{height} image (left, top, right, bottom in its pixels)")
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[t:b, lft:r] = True
    return mask
