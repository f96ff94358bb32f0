"""`synthetic`: the built-in dataset, drawn deterministically in memory from a seed.

Ten object classes whose identity is shape and part structure (a face is a disc with two
eyes and a mouth, a house a wall with a roof and a door, ...). Colour, size, position,
rotation, a textured background and clutter (blobs and lines behind the object) are
nuisances. Images are RGB at `full_size` = S + S/8 (72 for the default S = 64); like the
paper's 256 -> 224, training takes random S crops with flips and evaluation the centre crop.
The object always lies inside the centre crop.

Ground truth for the analyses: every sample has its object mask and named part masks
(bool (S, S), aligned with the centre crop, i.e. with `DataBundle.raw_val(i)` and the
centre-crop model input)::

    data = load_dataset("synthetic")
    s = data.val.sample(i)        # SyntheticSample for val item i
    s.image                       # uint8 (3, S, S), = data.raw_val(i)
    s.label, s.mask               # int, bool (S, S): the object's pixels
    s.parts["eye_left"]           # bool (S, S), names in PARTS[class_name]

Part names are in the object's own frame ("eye_left" is the eye on the image's left when the
face is upright; upright classes rotate by at most +-25 degrees). Part masks may overlap
(a face's "head" includes its eyes) and always lie inside the object mask.

Spec: `synthetic[?n_train=6000&n_val=1000&seed=0&size=64&classes=face,car&per_class=N]`.
Sample i of a split is drawn from (seed, split, i) alone: the same for any worker count,
and `sample(i)` redraws it with its masks. Labels cycle through the classes (i % k), so
every split is balanced and `per_class=N` is the first N*k items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zfnet.data.bundle import DataBundle, bundle_geometry, fitted
from zfnet.data.preprocess import Preprocessing
from zfnet.data.spec import DatasetSpec, check_options, class_list_option, int_option
from zfnet.data.transforms import TensorImages, centre_offset

Part = tuple[str, np.ndarray, str]  # (name, bool (F, F) mask, colour role: body/body2/detail)


@dataclass
class SyntheticSample:
    """One synthetic image with its ground truth, all at model-input resolution (centre crop)."""

    image: torch.Tensor  # uint8 (3, S, S)
    label: int  # index into the bundle's class_names
    class_name: str
    mask: np.ndarray  # bool (S, S): the object's pixels
    parts: dict[str, np.ndarray]  # part name -> bool (S, S)


# --- shape primitives on the object's local frame (u right, v down, unit = object radius) ---


def _disc(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
    return (u - cu) ** 2 + (v - cv) ** 2 <= r * r


def _ellipse(u, v, cu: float, cv: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cu, v - cv
    return ((du * c + dv * s) / a) ** 2 + ((-du * s + dv * c) / b) ** 2 <= 1.0


def _annulus(u, v, cu: float, cv: float, r0: float, r1: float) -> np.ndarray:
    d2 = (u - cu) ** 2 + (v - cv) ** 2
    return (d2 >= r0 * r0) & (d2 <= r1 * r1)


def _rect(u, v, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _convex(u, v, pts: list[tuple[float, float]]) -> np.ndarray:
    """Inside a convex polygon given by its vertices (either orientation)."""
    signs = []
    for (u0, v0), (u1, v1) in zip(pts, pts[1:] + pts[:1], strict=True):
        signs.append((u1 - u0) * (v - v0) - (v1 - v0) * (u - u0))
    pos = np.logical_and.reduce([s >= 0 for s in signs])
    neg = np.logical_and.reduce([s <= 0 for s in signs])
    return pos | neg


# --- the ten classes: each returns its parts in drawing order ---


def _face(u, v, rng) -> list[Part]:
    ey = rng.uniform(-0.35, -0.15)
    ex = rng.uniform(0.3, 0.42)
    er = rng.uniform(0.13, 0.18)
    return [
        ("head", _disc(u, v, 0, 0, 1.0), "body"),
        ("eye_left", _disc(u, v, -ex, ey, er), "detail"),
        ("eye_right", _disc(u, v, ex, ey, er), "detail"),
        ("mouth", _annulus(u, v, 0, -0.05, 0.42, 0.6) & (v > 0.22), "detail"),
    ]


def _house(u, v, rng) -> list[Part]:
    eave = rng.uniform(-0.2, 0.0)
    du = rng.choice([-0.3, 0.0, 0.3])
    return [
        ("wall", _rect(u, v, -0.65, 0.65, eave, 0.9), "body"),
        ("roof", _convex(u, v, [(-0.9, eave), (0.9, eave), (0.0, -0.95)]), "body2"),
        ("door", _rect(u, v, du - 0.16, du + 0.16, 0.35, 0.9), "detail"),
    ]


def _car(u, v, rng) -> list[Part]:
    wr = rng.uniform(0.22, 0.28)
    return [
        ("body", _rect(u, v, -1.0, 1.0, -0.15, 0.35), "body"),
        ("cabin", _convex(u, v, [(-0.55, -0.15), (0.55, -0.15), (0.35, -0.6), (-0.35, -0.6)]),
         "body2"),
        ("wheel_back", _disc(u, v, -0.58, 0.38, wr), "detail"),
        ("wheel_front", _disc(u, v, 0.58, 0.38, wr), "detail"),
    ]


def _flower(u, v, rng) -> list[Part]:
    n = int(rng.integers(5, 8))
    phase = rng.uniform(0, 2 * np.pi)
    cv = -0.3
    petals = np.zeros_like(u, dtype=bool)
    for k in range(n):
        a = phase + 2 * np.pi * k / n
        petals |= _ellipse(u, v, 0.42 * np.cos(a), cv + 0.42 * np.sin(a), 0.3, 0.15, a)
    return [
        ("stem", _rect(u, v, -0.07, 0.07, cv, 1.0), "body2"),
        ("petals", petals, "body"),
        ("centre", _disc(u, v, 0, cv, 0.2), "detail"),
    ]


def _fish(u, v, rng) -> list[Part]:
    return [
        ("tail", _convex(u, v, [(0.45, 0.0), (1.0, -0.5), (1.0, 0.5)]), "body2"),
        ("body", _ellipse(u, v, -0.15, 0.0, 0.75, rng.uniform(0.35, 0.45)), "body"),
        ("eye", _disc(u, v, -0.55, -0.08, 0.1), "detail"),
    ]


def _key(u, v, rng) -> list[Part]:
    n_teeth = int(rng.integers(2, 4))
    teeth = np.zeros_like(u, dtype=bool)
    for k in range(n_teeth):
        u0 = 0.85 - 0.22 * k
        teeth |= _rect(u, v, u0 - 0.1, u0, 0.06, 0.32)
    return [
        ("bow", _annulus(u, v, -0.62, 0.0, 0.16, 0.38), "body"),
        ("shaft", _rect(u, v, -0.26, 0.95, -0.08, 0.08), "body"),
        ("teeth", teeth, "body2"),
    ]


def _cross(u, v, rng) -> list[Part]:
    w = rng.uniform(0.2, 0.3)
    return [
        ("bar_vertical", _rect(u, v, -w, w, -1.0, 1.0), "body"),
        ("bar_horizontal", _rect(u, v, -1.0, 1.0, -w, w), "body2"),
    ]


def _arrow(u, v, rng) -> list[Part]:
    return [
        ("shaft", _rect(u, v, -1.0, 0.3, -0.11, 0.11), "body"),
        ("head", _convex(u, v, [(0.25, -0.5), (1.0, 0.0), (0.25, 0.5)]), "body2"),
    ]


def _star(u, v, rng) -> list[Part]:
    n = 5
    inner = rng.uniform(0.38, 0.48)
    outer_pts = [(np.sin(2 * np.pi * k / n), -np.cos(2 * np.pi * k / n)) for k in range(n)]
    inner_pts = [
        (inner * np.sin(2 * np.pi * (k + 0.5) / n), -inner * np.cos(2 * np.pi * (k + 0.5) / n))
        for k in range(n)
    ]
    core = _convex(u, v, inner_pts)
    points = np.zeros_like(u, dtype=bool)
    for k in range(n):
        points |= _convex(u, v, [inner_pts[k - 1], outer_pts[k], inner_pts[k]])
    return [("core", core, "body"), ("points", points, "body2")]


def _ring(u, v, rng) -> list[Part]:
    return [
        ("band", _annulus(u, v, 0, 0.15, 0.5, 0.8), "body"),
        ("gem", _disc(u, v, 0, -0.72, 0.26), "detail"),
    ]


CLASSES: dict[str, Callable[..., list[Part]]] = {
    "face": _face,
    "house": _house,
    "car": _car,
    "flower": _flower,
    "fish": _fish,
    "key": _key,
    "cross": _cross,
    "arrow": _arrow,
    "star": _star,
    "ring": _ring,
}
CLASS_NAMES = list(CLASSES)
UPRIGHT = {"face", "house", "car", "flower", "fish"}  # rotate little: "left"/"top" stay meaningful
MIRRORED = {"car", "fish"}  # drawn facing either way
PARTS: dict[str, list[str]] = {
    name: [p[0] for p in fn(np.zeros((1, 1)), np.zeros((1, 1)), np.random.default_rng(0))]
    for name, fn in CLASSES.items()
}

# Nuisance ranges (S = model input side). With these, logistic regression on the raw pixels of
# the default split scores 14-16% on val (chance 10%); zfnet_small, 300 CPU-s of SGD, ~87%.
RADIUS = (0.3, 0.42)  # object radius as a fraction of S
EXTENT = 1.12  # farthest point of any class's shape, in object radii (a house's wall corner)
MAX_TILT = np.deg2rad(25)  # rotation range of UPRIGHT classes; the others rotate freely
MIN_CONTRAST = 80.0  # RGB distance between background, body and detail colours
N_CLUTTER = (0, 3)  # distractor blobs and lines behind the object
NOISE = 6.0  # per-pixel Gaussian noise (0..255 scale)
TEXTURE = 20.0  # amplitude of the background gratings per channel
_SPLITS = {"train": 0, "val": 1}


def _colour(rng: np.random.Generator, away_from: list[np.ndarray]) -> np.ndarray:
    """A random RGB colour at least MIN_CONTRAST from each of `away_from`."""
    for _ in range(100):
        c = rng.uniform(0, 255, 3)
        if all(np.linalg.norm(c - a) >= MIN_CONTRAST for a in away_from):
            return c
    return 255.0 - away_from[0]  # practically unreachable; the complement is always far


def _background(rng: np.random.Generator, yy, xx, full: int) -> tuple[np.ndarray, np.ndarray]:
    """A base colour plus 1-2 coloured gratings: float (F, F, 3) and the base colour."""
    base = rng.uniform(30, 225, 3)
    img = np.broadcast_to(base, (full, full, 3)).copy()
    for _ in range(int(rng.integers(1, 3))):
        period = rng.uniform(5, 18)
        phi = rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period
                      + rng.uniform(0, 2 * np.pi))
        img += wave[..., None] * rng.uniform(-TEXTURE, TEXTURE, 3)
    return img, base


def _clutter(rng: np.random.Generator, img: np.ndarray, yy, xx, full: int) -> None:
    """Distractor blobs and line segments, drawn in place before the object."""
    for _ in range(int(rng.integers(N_CLUTTER[0], N_CLUTTER[1] + 1))):
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            cy, cx = rng.uniform(0, full, 2)
            a, b = rng.uniform(0.03, 0.1, 2) * full
            m = _ellipse(xx, yy, cx, cy, a, b, rng.uniform(0, np.pi))
        else:
            p0 = rng.uniform(0, full, 2)
            d = p0 + rng.uniform(0.15, 0.4) * full * np.array(
                [np.cos(t := rng.uniform(0, 2 * np.pi)), np.sin(t)]
            )
            m = _segment(xx, yy, p0, d, rng.uniform(0.6, 1.5))
        img[m] = colour


def _segment(xx, yy, p0: np.ndarray, p1: np.ndarray, half_width: float) -> np.ndarray:
    """Pixels within `half_width` of the segment p0-p1 (points as (x, y))."""
    d = p1 - p0
    t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / (d @ d), 0, 1)
    return (xx - p0[0] - t * d[0]) ** 2 + (yy - p0[1] - t * d[1]) ** 2 <= half_width**2


def render(
    seed: int, split: str, index: int, class_name: str, size: int = 64
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Draw sample `index` of `split` deterministically from (seed, split, index).

    Returns the image uint8 (F, F, 3), the object mask bool (F, F) and the part masks
    {name: bool (F, F)}, with F = full_size(size).
    """
    full = full_size_for(size)
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    yy, xx = np.mgrid[0:full, 0:full].astype(np.float64) + 0.5  # pixel centres, (F, F)
    img, base = _background(rng, yy, xx, full)  # (F, F, 3) float
    _clutter(rng, img, yy, xx, full)

    # The object stays inside the centre crop: every shape fits in a disc of EXTENT radii.
    radius = rng.uniform(*RADIUS) * size
    off = centre_offset(full, size)
    reach = min(EXTENT * radius + 1, size / 2)  # small sizes: the +1 margin may not fit
    cy, cx = rng.uniform(off + reach, off + size - reach, 2)
    angle = rng.uniform(-MAX_TILT, MAX_TILT) if class_name in UPRIGHT else rng.uniform(0, 2 * np.pi)
    mirror = -1.0 if class_name in MIRRORED and rng.random() < 0.5 else 1.0
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xx - cx, yy - cy
    u = mirror * (dx * c + dy * s) / radius  # object frame, unit = radius
    v = (-dx * s + dy * c) / radius

    parts = CLASSES[class_name](u, v, rng)
    body = _colour(rng, [base])
    body2 = body if rng.random() < 0.5 else _colour(rng, [base])
    detail = _colour(rng, [body, body2])
    colours = {"body": body, "body2": body2, "detail": detail}
    # A gentle linear shading across the object, so that its colour is not one flat value.
    shade = (u * rng.uniform(-15, 15) + v * rng.uniform(-15, 15))[..., None]  # (F, F, 1)
    obj = np.zeros((full, full), dtype=bool)
    for _, m, role in parts:
        img[m] = colours[role] + shade[m]
        obj |= m
    img += rng.normal(0.0, NOISE, img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, obj, {name: m & obj for name, m, _ in parts}


def full_size_for(size: int) -> int:
    """Side before cropping for model input `size` (72 for 64, the paper's 256/224 ~ 9/8)."""
    return size + size // 8


class SyntheticDataset(TensorImages):
    """The synthetic images of one split, with `sample(i)` giving masks and parts."""

    def __init__(
        self, images: torch.Tensor, targets: list[int], *, seed: int, split: str,
        class_ids: list[int], size: int, **kwargs: Any,
    ) -> None:
        super().__init__(images, targets, **kwargs)
        self.seed, self.split, self.class_ids = seed, split, class_ids
        self.size = size  # the side drawn at (input_size, unless fitted to a model)

    def sample(self, i: int) -> SyntheticSample:
        """Item i with its ground truth: image uint8 (3, S, S), mask and parts bool (S, S)."""
        if not 0 <= i < len(self):
            raise IndexError(f"{self.split} index {i} out of range 0..{len(self) - 1}")
        name = CLASS_NAMES[self.class_ids[self.targets[i]]]
        _, obj, parts = render(self.seed, self.split, i, name, self.size)
        if self.preprocessing is not None:  # the masks go where the model's fitting puts them
            fit = self.preprocessing.fit_mask
            return SyntheticSample(
                image=self.raw(i), label=self.targets[i], class_name=name,
                mask=fit(torch.from_numpy(obj)).numpy(),
                parts={k: (fit(torch.from_numpy(m)) & fit(torch.from_numpy(obj))).numpy()
                       for k, m in parts.items()},
            )
        off = centre_offset(self.full_size, self.input_size)
        sl = (slice(off, off + self.input_size),) * 2
        return SyntheticSample(
            image=self.raw(i),
            label=self.targets[i],
            class_name=name,
            mask=obj[sl].copy(),
            parts={k: m[sl].copy() for k, m in parts.items()},
        )


MAX_BYTES = 8 * 2**30  # the images a synthetic dataset may hold: 0.8M of 64 px (72 stored)


def generate(
    seed: int, split: str, n: int, class_ids: list[int], size: int
) -> tuple[torch.Tensor, list[int]]:
    """All images of a split: uint8 (n, 3, F, F) and labels i % len(class_ids)."""
    full = full_size_for(size)
    images = np.empty((n, full, full, 3), dtype=np.uint8)
    targets = [i % len(class_ids) for i in range(n)]
    for i, t in enumerate(targets):
        images[i] = render(seed, split, i, CLASS_NAMES[class_ids[t]], size)[0]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), targets  # (n, 3, F, F)


def load_synthetic(spec: DatasetSpec, *, ten_crop: bool = False, strict: bool = False,
                   raw_spec: str = "synthetic", preprocessing: Preprocessing | None = None,
                   read_train: bool = True) -> DataBundle:
    """Build the synthetic `DataBundle` (defaults: 6000 train, 1000 val, seed 0, 64 px); with
    a model's `preprocessing`, drawn at `size` and fitted to its inputs (masks too).
    `read_train` False with a `preprocessing` (a command that reads the val split alone, the
    model's mean subtracted): no training image drawn (an empty train split), not the 6000
    of the default spec for nothing."""
    if spec.path is not None:
        raise ValueError(f"synthetic takes no path (got {spec.path!r}); options go after '?'")
    opts = check_options(
        spec,
        {
            "n_train": int_option,
            "n_val": int_option,
            "seed": int_option,
            "size": lambda v, k: int_option(v, k, minimum=24),
            "per_class": lambda v, k: int_option(v, k, minimum=1),
            "classes": lambda v, k: class_list_option(v, CLASS_NAMES, k),
        },
    )
    class_ids = opts.get("classes", list(range(len(CLASS_NAMES))))
    names = [CLASS_NAMES[c] for c in class_ids]
    n_train = opts.get("n_train", 6000)
    if "per_class" in opts:
        n_train = min(n_train, opts["per_class"] * len(names)) if "n_train" in opts else (
            opts["per_class"] * len(names))
    n_val = opts.get("n_val", 1000)
    if n_train == 0 or n_val == 0:
        raise ValueError(f"dataset spec {raw_spec!r} selects no training or no val images")
    seed, size = opts.get("seed", 0), opts.get("size", 64)
    held = (n_train + n_val) * 3 * full_size_for(size) ** 2  # bytes: every image in memory
    if held > MAX_BYTES:
        raise ValueError(
            f"dataset spec {raw_spec!r} asks for {n_train + n_val} images of "
            f"{full_size_for(size)} px, {held / 2**30:.1f} GiB held in memory (at most "
            f"{MAX_BYTES // 2**30} GiB): ask for fewer (n_train=, n_val=, per_class=; --shots "
            "of `analyze transfer` is per_class) or a smaller size=")
    skip_train = preprocessing is not None and not read_train  # its mean is the model's
    train_x, train_y = generate(seed, "train", 0 if skip_train else n_train, class_ids, size)
    val_x, val_y = generate(seed, "val", n_val, class_ids, size)
    mean = None if skip_train else train_x.to(torch.float64).mean(0).to(torch.float32)
    common = dict(mean=mean, input_size=size, classes=names, strict=strict, seed=seed,
                  class_ids=class_ids, size=size)
    if preprocessing is not None:
        common.update(fitted(preprocessing))
    return DataBundle(
        spec=raw_spec,
        train=SyntheticDataset(train_x, train_y, split="train", mode="train", **common),
        val=SyntheticDataset(val_x, val_y, split="val",
                             mode="ten_crop" if ten_crop else "centre", **common),
        num_classes=len(names),
        class_names=names,
        **bundle_geometry(preprocessing, in_channels=3, input_size=size,
                          full_size=full_size_for(size), mean=mean),
    )
