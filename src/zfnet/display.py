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

import functools
import importlib.util
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
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


def save_grid(projections: Tensor, path: str | Path | BinaryIO, min_side: int = 40,
              col_labels: Sequence[str] | None = None,
              row_labels: Sequence[str] | None = None,
              corner: str | None = None) -> Path | BinaryIO:
    """Draw (rows, columns, C, h, w) projections (C 1 or 3) as one PNG grid, each tile by
    `projection_to_uint8` and enlarged (nearest neighbour, integer factor) to at least
    `min_side` pixels, 2 px white between tiles; `col_labels` above the columns, `row_labels`
    left of the rows (e.g. "map 12") and `corner` above those (what the column labels count,
    e.g. "epoch"), in dark grey. path: a file path, or an open binary file the PNG is written
    to. Returns it."""
    if projections.dim() != 5 or projections.shape[2] not in (1, 3):
        raise ValueError("projections must be (rows, columns, C, h, w) with C 1 or 3, got "
                         f"shape {tuple(projections.shape)}")
    rows, cols, c, h, w = projections.shape
    for labels, n, what in ((col_labels, cols, "columns"), (row_labels, rows, "rows")):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} {what}")
    zoom = max(1, math.ceil(min_side / min(h, w)))
    th, tw, pad = h * zoom, w * zoom, 2
    font = label_font()
    top = LABEL_HEIGHT if col_labels is not None or corner is not None else 0
    side = [*(row_labels or ()), *([corner] if corner else [])]
    left = 4 + max(math.ceil(font.getlength(t)) for t in side) if side else 0
    shown = projection_to_uint8(projections).expand(rows, cols, 3, h, w)
    tiles = shown.permute(0, 1, 3, 4, 2).numpy()  # (rows, cols, h, w, 3)
    canvas = np.full((top + rows * (th + pad) + pad, left + cols * (tw + pad) + pad, 3), 255,
                     np.uint8)
    for a in range(rows):
        for j in range(cols):
            y, x = top + pad + a * (th + pad), left + pad + j * (tw + pad)
            canvas[y: y + th, x: x + tw] = tiles[a, j].repeat(zoom, 0).repeat(zoom, 1)
    if top or left:
        img = Image.fromarray(canvas)
        draw = ImageDraw.Draw(img)
        for j, text in enumerate(col_labels or ()):  # centred over its column, cut to fit
            text = fit_text(text, tw, font)
            x = left + pad + j * (tw + pad) + (tw - font.getlength(text)) / 2
            draw.text((x, 2), text, fill=LABEL_COLOUR, font=font)
        if corner:
            draw.text((2, 2), corner, fill=LABEL_COLOUR, font=font)
        for a, text in enumerate(row_labels or ()):
            y = top + pad + a * (th + pad) + (th - LABEL_FONT) / 2
            draw.text((2, y), text, fill=LABEL_COLOUR, font=font)
        canvas = np.asarray(img)
    return save_png(canvas, path)


LABEL_FONT = 13  # px: the labels of `save_grid` and the projections' titles, readable at 1:1
LABEL_HEIGHT = 17  # px a line of labels takes (above the tiles for `save_grid`'s columns)
LABEL_COLOUR = (60, 60, 60)


def label_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font of the figures' drawn labels, at `LABEL_FONT` px: DejaVu Sans, the TrueType
    font matplotlib ships (Latin, Greek, Cyrillic: a photo's "é" drawn, where Pillow's own
    default has ASCII alone and drew it as a box), or Pillow's own where it is not found.
    A new font object each call: one FreeType face is not to be drawn with from two threads
    (the explorer's)."""
    path = _label_font_file()
    if path is not None:
        return ImageFont.truetype(path, LABEL_FONT)
    return ImageFont.load_default(size=LABEL_FONT)


@functools.cache
def _label_font_file() -> str | None:
    """DejaVu Sans in matplotlib's package data (found without importing matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return str(path) if path.is_file() else None


def fit_text(text: str, width: float, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
             ) -> str:
    """`text`, its end cut (with "…") until it fits `width` pixels in `font`."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def wrap_text(text: str, width: float, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
              max_lines: int = 2) -> list[str]:
    """`text` in lines that fit `width` pixels in `font`, broken at spaces, at most `max_lines`
    (the last cut by `fit_text`); a word wider than a line (a long layer name) is broken after a
    `.`, `_` or `/` where it has one, else where the line ends."""
    pieces: list[tuple[str, str]] = []  # (piece, what joins it to the one before on a line)
    for word in _kept_together(text.split(" "), width, font):
        for k, piece in enumerate(_word_pieces(word, width, font)):
            pieces.append((piece, "" if k else " "))
    lines: list[str] = []
    for n, (piece, glue) in enumerate(pieces):
        if lines and font.getlength(lines[-1] + glue + piece) <= width:
            lines[-1] += glue + piece
        elif len(lines) == max_lines - 1:  # the last line: the rest, cut to fit
            rest = piece + "".join(g + p for p, g in pieces[n + 1:])
            lines.append(fit_text(rest, width, font))
            break
        else:
            lines.append(piece)
    return lines


def _kept_together(words: list[str], width: float,
                   font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> list[str]:
    """`words` with each parenthesised group that fits a line made one word: "(row 5, col 4)"
    is not broken after "(row"."""
    out: list[str] = []
    k = 0
    while k < len(words):
        end = next((j for j in range(k, len(words)) if words[j].endswith(")")), None) \
            if words[k].startswith("(") else None
        group = " ".join(words[k:end + 1]) if end is not None else ""
        if end is not None and end > k and font.getlength(group) <= width:
            out.append(group)
            k = end + 1
        else:
            out.append(words[k])
            k += 1
    return out


def _word_pieces(word: str, width: float,
                 font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> list[str]:
    """`word` cut into pieces that each fit `width`: after its last `.`, `_` or `/` that fits,
    else after its last character that does."""
    pieces = []
    while font.getlength(word) > width and len(word) > 1:
        fits = next((n for n in range(len(word) - 1, 0, -1)
                     if font.getlength(word[:n]) <= width), 1)
        cut = max((k + 1 for k, ch in enumerate(word[:fits]) if ch in "._/"), default=fits)
        pieces.append(word[:cut])
        word = word[cut:]
    return [*pieces, word]


# zlib's level for every PNG zfnet draws: 3 writes a projection's figure in 60% of the time of
# PIL's default 6 (20 ms, not 33 here), ~10% larger; `zfnet project` of 20 photos writes 360
PNG_LEVEL = 3


# JPEG's quality where a figure is kept as a JPEG (the atlas's figures="jpeg", the report's
# embedded figures), without chroma subsampling (4:4:4): WebP and JPEG's usual 4:2:0 smear the
# projections' saturated colours (99th percentile error ~70 levels of 255 on a ResNet-18 layer4
# picture, against 18 here, mean 3)
JPEG_QUALITY = 90


def smaller_jpeg(im: Image.Image, png_bytes: int) -> bytes | None:
    """`im` as a JPEG (`JPEG_QUALITY`, 4:4:4) where that is smaller than its PNG of `png_bytes`
    bytes (a photo-like figure: projections, image patches); None where it is not (a plot, a
    flat or small picture) or where `im` has transparency, which a JPEG cannot hold."""
    if "A" in im.mode or "transparency" in im.info:
        alpha = im.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return None
    buf = io.BytesIO()
    im.convert("L" if im.mode in ("1", "L", "LA", "I;16") else "RGB").save(
        buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue() if buf.tell() < png_bytes else None


def save_png(canvas: np.ndarray, path: str | Path | BinaryIO) -> Path | BinaryIO:
    """Write uint8 (H, W[, 3]) as a PNG to a path (its folder made) or an open binary file
    (the explorer's PNG bytes); returns where it went."""
    if hasattr(path, "write"):
        Image.fromarray(canvas).save(path, format="PNG", compress_level=PNG_LEVEL)
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path, format="PNG", compress_level=PNG_LEVEL)
    return path
