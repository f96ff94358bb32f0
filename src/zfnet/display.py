"""How a projection becomes pixels: one rule for every figure that shows deconvnet (or guided
backprop, or gradient) projections — the top-k gallery (paper Fig. 2), feature evolution
(Fig. 4), occlusion (Fig. 7) and any command that draws a projection.

The rule: each projection (one tile) on its own scale, mid-grey = 0, sign kept (brighter /
more saturated = pushes the activation up), clipped at the `CLIP_PERCENTILE`th percentile of
|value| over the tile's nonzero pixels and channels. A projection's magnitudes are heavy-tailed
(at conv3-5 of the demo model the median nonzero |value| is ~4% of the largest), so scaling by
the largest value leaves nearly everything grey beside one bright pixel; clipping the top few
per cent saturates those few instead, as Captum's `visualize_image_attr` (`outlier_perc`) and
the figures of the paper do. Zero pixels are left out of the percentile so that the black
border of a receptive field that overhangs the image does not lower it.

It depends on nothing else in zfnet: analyses, the report and the CLI can all import it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

CLIP_PERCENTILE = 99.0

CAPTION = (f"Each projection is scaled on its own: mid-grey is 0, the sign is kept, and "
           f"values beyond the {CLIP_PERCENTILE:g}th percentile of |value| over its nonzero "
           f"pixels saturate (so one extreme pixel does not grey out the rest); compare the "
           f"patterns, not their brightness.")
"""One sentence for the caption of every figure drawn with `projection_to_uint8`."""


def projection_scale(p: Tensor, percentile: float = CLIP_PERCENTILE) -> Tensor:
    """(..., C, h, w) projections -> (..., 1, 1, 1): per tile, the `percentile`th percentile
    (linear interpolation, as `torch.quantile`) of |p| over its nonzero entries; 1 for a tile
    that is all zero, so that dividing by it is always safe."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile} must be in (0, 100]")
    if p.dim() < 3:
        raise ValueError(f"projections must be (..., C, h, w), got shape {tuple(p.shape)}")
    a = p.detach().abs().float().flatten(-3).nan_to_num(0.0)  # (..., D)
    s, _ = a.sort(-1)  # zeros first
    d = s.shape[-1]
    n = (s > 0).sum(-1, keepdim=True)  # (..., 1) nonzero entries per tile
    # position of the percentile among the last n (the nonzero) sorted entries
    pos = (d - n) + (percentile / 100.0) * (n - 1).clamp_min(0)
    lo = pos.floor().long().clamp(max=d - 1)
    hi = (lo + 1).clamp(max=d - 1)
    frac = pos - lo
    scale = s.gather(-1, lo) * (1 - frac) + s.gather(-1, hi) * frac  # (..., 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale[..., None, None]


def projection_to_uint8(p: Tensor, percentile: float = CLIP_PERCENTILE) -> Tensor:
    """(..., C, h, w) signed projections -> uint8 of the same shape, by the module's rule:
    128 is 0, ±255/2 is ±`projection_scale`, clipped beyond it."""
    scaled = p.detach().float().nan_to_num(0.0) / projection_scale(p, percentile)
    return ((0.5 + 0.5 * scaled).clamp(0, 1) * 255).round().to(torch.uint8)


def save_grid(projections: Tensor, path: str | Path | BinaryIO, min_side: int = 40
              ) -> Path | BinaryIO:
    """Draw (rows, columns, C, h, w) projections (C 1 or 3) as one PNG grid, each tile by
    `projection_to_uint8` and enlarged (nearest neighbour, integer factor) to at least
    `min_side` pixels, 2 px white between tiles. path: a file path, or an open binary file the
    PNG is written to. Returns it."""
    if projections.dim() != 5 or projections.shape[2] not in (1, 3):
        raise ValueError("projections must be (rows, columns, C, h, w) with C 1 or 3, got "
                         f"shape {tuple(projections.shape)}")
    rows, cols, c, h, w = projections.shape
    zoom = max(1, math.ceil(min_side / min(h, w)))
    th, tw, pad = h * zoom, w * zoom, 2
    shown = projection_to_uint8(projections).expand(rows, cols, 3, h, w)
    tiles = shown.permute(0, 1, 3, 4, 2).numpy()  # (rows, cols, h, w, 3)
    canvas = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), 255, np.uint8)
    for a in range(rows):
        for j in range(cols):
            y, x = pad + a * (th + pad), pad + j * (tw + pad)
            canvas[y: y + th, x: x + tw] = tiles[a, j].repeat(zoom, 0).repeat(zoom, 1)
    return save_png(canvas, path)


def save_png(canvas: np.ndarray, path: str | Path | BinaryIO) -> Path | BinaryIO:
    """Write uint8 (H, W[, 3]) as a PNG to a path (its folder made) or an open binary file
    (the explorer's PNG bytes); returns where it went."""
    if hasattr(path, "write"):
        Image.fromarray(canvas).save(path, format="PNG")
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
