"""Robust image decoding: any valid image becomes RGB uint8, any broken one a clear error.

Valid but unusual files (CMYK, grayscale, 16-bit, palette, RGBA, EXIF-rotated) are converted
to RGB and used. Broken ones (truncated, zero-byte, not an image, a decompression bomb) raise
`BadImageError` naming the file; datasets turn that into a skip with a `BrokenImageWarning`
(the default) or let it through (`strict=True`).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError, features

from zfnet.data.codec import decode_jpeg
from zfnet.data.jpeg import JpegHeader, read_header

if TYPE_CHECKING:  # torchvision is imported where an image is resized: its import takes 2 s
    from torchvision.transforms import InterpolationMode  # (torch._dynamo) on a small CPU

# Extensions a labelled image folder (`imagefolder:DIR`) is scanned for: torchvision's
# ImageFolder list, so that its samples are torchvision's. Other files (README, .DS_Store,
# labels.txt) are ignored, not treated as broken images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# JPEGs under other names: a web browser saves many as `.jfif`; `.jpe` is an old one.
OTHER_JPEG_EXTENSIONS = (".jfif", ".jpe")
JPEG_EXTENSIONS = (".jpg", ".jpeg") + OTHER_JPEG_EXTENSIONS


def _heif_opener() -> bool:
    """Register pillow-heif's HEIC/HEIF reader with PIL where it is installed (`zfnet[heif]`)."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


HEIF_READ = _heif_opener()


def _has_avif() -> bool:
    """Whether this Pillow reads AVIF (11.2 and later may; earlier ones warn when asked)."""
    return "avif" in features.modules and bool(features.check_module("avif"))

# A user's own photos (`images:DIR`, files named one by one) are read for every type PIL reads
# here too: JPEGs saved from the web as `.jfif`, GIF (its first frame), AVIF where this Pillow
# has it, a phone's HEIC with pillow-heif.
PHOTO_EXTENSIONS = IMAGE_EXTENSIONS + OTHER_JPEG_EXTENSIONS + (".gif",) + (
    (".avif",) if _has_avif() else ()) + ((".heic", ".heif") if HEIF_READ else ())
# Images of other types a photo folder often holds (camera RAW files, SVG, ...): left out like
# any other file, but with a warning that counts them, never silently.
UNREAD_IMAGE_EXTENSIONS = (".gif", ".heic", ".heif", ".avif", ".jxl", ".svg", ".dng", ".cr2",
                           ".nef", ".arw")


def unread_advice(kinds: set[str], extensions: tuple[str, ...]) -> str:
    """What to do about image files of `kinds` that a scan for `extensions` leaves out."""
    if not kinds <= set(PHOTO_EXTENSIONS) - set(extensions):
        heif = " (HEIC once `pip install 'zfnet[heif]'` is done)" if (
            kinds & {".heic", ".heif"} and not HEIF_READ) else ""
        return f"convert them to JPEG or PNG to use them{heif}"
    if kinds <= set(OTHER_JPEG_EXTENSIONS):
        return "images:DIR and files named one by one read them; they are JPEGs: rename " \
            "them .jpg for a labelled folder (torchvision's types)"
    return "images:DIR and files named one by one read them; convert them to JPEG or PNG " \
        "for a labelled folder (torchvision's types)"


# Transparent pixels are composited onto white, the way an image viewer shows them; their
# stored RGB values are often arbitrary (black, or left-over colours).
ALPHA_BACKGROUND = (255, 255, 255)


# How `load_rgb`'s reasons begin (to read them back from a DataLoader worker's message).
_REASONS = ("decompression bomb", "empty file", "not a recognised image format", "cannot decode",
            "a link to")


class BadImageError(ValueError):
    """A file that cannot be used as an image. `path` names it, `reason` says why."""

    def __init__(self, path: str | Path, reason: str = "") -> None:
        if not reason and "\n" in str(path):
            path, reason = _from_worker(str(path))
        self.path = Path(path)
        self.reason = reason
        # One-argument form: DataLoader workers re-raise an exception as type(e)(message).
        super().__init__(f"broken image {self.path}: {reason}" if reason else str(path))


def check_link(path: str | Path) -> None:
    """`BadImageError` where `path` is a link to a file that does not exist: a broken file like
    any other (named and skipped, or stopped at with strict, and counted), not a path given
    wrong; nothing otherwise."""
    if os.path.islink(path) and not os.path.exists(path):
        raise BadImageError(path, f"a link to {os.readlink(path)}, which does not exist")


def _from_worker(message: str) -> tuple[str, str]:
    """(path, reason) of the error a DataLoader worker re-raises as `BadImageError(message)`,
    where `message` is the worker's traceback as text, the original error on its last line."""
    text = message.rstrip().splitlines()[-1].split("BadImageError: ", 1)[-1]
    m = re.fullmatch(rf"broken image (.+?): ((?:{'|'.join(_REASONS)}).*)", text)
    return (m[1], m[2]) if m else (text, "")


class BrokenImageWarning(UserWarning):
    """Emitted once per broken file that a dataset skips (`strict=False`); `file`: the file it
    names (`warn_skipped`), which `zfnet` names once per command, whatever was being done."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)
    file: str | None = None


class UnreadImagesWarning(UserWarning):
    """A folder holds images of types zfnet does not read (`UNREAD_IMAGE_EXTENSIONS`)."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)


def warn_skipped(err: BadImageError, doing: str = "") -> None:
    """Warn that the file in `err` is skipped; the message names the file, the reason and what
    was `doing` where that is not the caller's own work (computing a mean image)."""
    warning = BrokenImageWarning(
        f"skipping broken image {err.path}: {err.reason}" + (f" ({doing})" if doing else ""))
    warning.file = str(err.path)  # named once: the mean image's pass, then the first epoch
    warnings.warn(warning, stacklevel=3)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling high-bit-depth data instead of clipping it."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img).astype(np.float64)  # (H, W)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0  # 16-bit -> 8-bit (65535 / 255 = 257)
        elif img.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0  # float images in 0..1
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "1":
        img = img.convert("L")
    return img.convert("RGB")


def load_rgb(path: str | Path | BinaryIO, *, min_side: int | None = None,
             name: str | None = None) -> torch.Tensor:
    """Decode an image file (a path, or an open binary file such as an upload's bytes in a
    `BytesIO`, named in errors by `name`) to RGB: uint8 (3, H, W).

    `min_side`: a hint that the image will be downscaled to this shorter side, which lets
    large JPEGs decode at a reduced scale (never below `min_side`). Raises `BadImageError`
    naming the file when it is truncated, empty, not an image or a decompression bomb
    (larger than twice `PIL.Image.MAX_IMAGE_PIXELS`, where PIL refuses it; a 108-megapixel
    phone photo, past the limit but under twice it, is read, as PIL and torchvision read it).
    """
    if not hasattr(path, "read"):
        path = Path(path)
    label = name or (path if isinstance(path, Path) else "upload")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: a phone's 108-megapixel
            # photo (12000x9000) is there, and it is read; beyond, PIL raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if min_side is not None:
                    img.draft(None, (min_side, min_side))
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise BadImageError(label, f"decompression bomb ({e}); a photo this large: make it "
                            "smaller first") from e
    except UnidentifiedImageError as e:
        reason = "empty file (0 bytes)" if _is_empty(path) else "not a recognised image format"
        raise BadImageError(label, reason) from e
    except FileNotFoundError:
        if isinstance(path, Path):
            check_link(path)
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # PIL reports truncation and corrupt data as OSError/SyntaxError/ValueError.
        raise BadImageError(label, f"cannot decode ({type(e).__name__}: {e})") from e
    arr = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def decode_rgb_view(data: bytes, *, min_side: int | None = None, name: str = "upload"
                    ) -> torch.Tensor:
    """`load_rgb` of an image file's bytes, as a (3, H, W) view of an (H, W, 3) array: without
    the transposing copy of the whole image, for callers that copy only a crop of it. A plain
    JPEG (`decode_plain_jpeg`) is decoded here, the same pixels as `load_rgb`'s; any other
    file, or one that fails, goes through `load_rgb` (errors name it as `name`)."""
    img = decode_plain_jpeg(data, min_side=min_side)
    return img if img is not None else load_rgb(io.BytesIO(data), min_side=min_side, name=name)


def decode_plain_jpeg(data: bytes | bytearray, *, min_side: int | None = None,
                      header: JpegHeader | None = None) -> torch.Tensor | None:
    """The pixels `load_rgb` gives for a plain JPEG file's bytes (`zfnet.data.jpeg`), decoded
    the fastest way, as a (3, H, W) view of an (H, W, 3) array; None for any other file, or
    one the fast decoders refuse (`load_rgb` then decodes it, or says what is wrong).

    A file that `min_side` lets PIL decode at a reduced DCT scale (both sides at least twice
    it) goes through PIL's `draft`; the others through `zfnet.data.codec.decode_jpeg`
    (libjpeg-turbo like PIL, bit-identical pixels, ~30% faster: no copies in between).
    `header`: the file's, when the caller has read it already."""
    header = header or read_header(data)
    if header is None or not header.plain:
        return None
    try:
        if min_side is not None and min(header.width, header.height) >= 2 * min_side:
            with Image.open(io.BytesIO(data)) as img:
                img.draft(None, (min_side, min_side))
                img.load()
                rgb = img if img.mode == "RGB" else img.convert("RGB")
                return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)  # (3, H, W) view
        buf = torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data),
                               dtype=torch.uint8)
        return decode_jpeg(buf)  # (3, H, W), an (H, W, 3) view
    except (OSError, RuntimeError, ValueError, SyntaxError, EOFError):
        return None


def read_file(path: str | Path) -> bytearray:
    """A file's bytes, read in one call into a writable buffer (which `torch.frombuffer` takes
    without a copy or a warning); `BadImageError` for a link to a file that does not exist."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        check_link(path)
        raise
    with f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        n = f.readinto(data)
    return data if n == len(data) else data[:n]


def _is_empty(path: Path | BinaryIO) -> bool:
    if not isinstance(path, Path):
        return path.seek(0, 2) == 0
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


# An image whose longer side is more than this many times its shorter one (a web banner or
# spacer, 2000x1: no photo; a phone's panorama is under 10) keeps only that much of its longer
# side's centre before its shorter side is resized: 2000x1 to 256 px raised the peak memory
# by 907 MB (docs/results.md).
MAX_ASPECT = 64


def resize_shorter(img: torch.Tensor, size: int,
                   interpolation: InterpolationMode | None = None) -> torch.Tensor:
    """`img` (…, H, W) with its shorter side resized to `size`, antialiased: torchvision's
    `Resize([size])` (bilinear unless `interpolation` says). Past `MAX_ASPECT`, the centre
    `MAX_ASPECT` x shorter side of the longer side is kept first (its pixels then differ from
    torchvision's by resampling)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    h, w = img.shape[-2:]
    keep = MAX_ASPECT * min(h, w)
    if h > keep:
        img = img[..., (h - keep) // 2:(h - keep) // 2 + keep, :]
    if w > keep:
        img = img[..., (w - keep) // 2:(w - keep) // 2 + keep]
    return TF.resize(img, [size], interpolation=interpolation or InterpolationMode.BILINEAR,
                     antialias=True)


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Paper Sec. 3 preprocessing: shorter side -> `size` (`resize_shorter`), then the centre
    `size` x `size`.

    uint8 (C, H, W) in, uint8 (C, size, size) out; downscaling is antialiased. An image whose
    shorter side is `size` already (shards at 256 px) is only cut: a view, as torchvision's
    resize leaves it as it is.
    """
    h, w = img.shape[-2:]
    if min(h, w) == size:  # torchvision's calls cost more than their (no) work here
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        return img[..., top:top + size, left:left + size]
    from torchvision.transforms.v2 import functional as TF

    img = resize_shorter(img, size)  # shorter side -> size
    return TF.center_crop(img, [size, size])  # (C, size, size)
