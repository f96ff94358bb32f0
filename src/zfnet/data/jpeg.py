"""What a JPEG file's header says, read without decoding it: which decoder may take the file.

The fast decoders (`zfnet.data.codec.decode_jpeg`: libjpeg-turbo on the CPU, nvJPEG on a GPU)
give `zfnet.data.images.load_rgb`'s pixels only for "plain" files: 8-bit greyscale or YCbCr
JPEGs without an EXIF rotation, without Adobe's colour transform (CMYK, YCCK, RGB-coded files),
of at most `PIL.Image.MAX_IMAGE_PIXELS` pixels, that end with their end-of-image marker (a
truncated file does not: PIL rejects it, a GPU decoder might not). Everything else goes through
PIL (`load_rgb`), which converts it or names what is wrong with it. Reading the markers up to
the frame header takes ~10 us, against ~1 ms to decode an ImageNet photo.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from PIL import Image

# Start-of-frame markers (SOF0-SOF15 less DHT, JPG and DAC); SOF2, 6, 10, 14 are progressive.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_BASELINE = frozenset({0xC0, 0xC1})  # what a GPU's hardware decoder takes
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class JpegHeader:
    """The frame header and the markers before it."""

    width: int
    height: int
    components: int  # 1 grey, 3 YCbCr (or RGB with Adobe's marker), 4 CMYK / YCCK
    precision: int  # bits per sample (8, or 12 for a few medical / raw files)
    baseline: bool  # sequential Huffman (SOF0 / SOF1): a hardware decoder takes it
    progressive: bool
    orientation: int  # EXIF orientation, 1 (none) when there is no EXIF
    adobe: bool  # an Adobe APP14 marker (its colour transform decides what the channels mean)
    complete: bool  # ends with the end-of-image marker

    @property
    def plain(self) -> bool:
        """Decoded by `zfnet.data.codec.decode_jpeg` to exactly `load_rgb`'s pixels."""
        return (self.components in (1, 3) and self.precision == 8 and self.orientation == 1
                and not self.adobe and self.complete
                and self.width * self.height <= (Image.MAX_IMAGE_PIXELS or float("inf")))

    @property
    def device_decodable(self) -> bool:
        """Plain and baseline: nvJPEG's batched (hardware) path takes it; progressive files
        would be decoded one by one with the host doing the entropy decoding."""
        return self.plain and self.baseline


def read_header(data: bytes | bytearray | memoryview) -> JpegHeader | None:
    """The header of the JPEG file `data`; None when it is not a JPEG or its markers do not
    parse up to the frame header (PIL then says what is wrong)."""
    data = memoryview(data)
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    complete = b"\xff\xd9" in bytes(data[-64:])  # EOI (never inside entropy-coded data)
    pos, orientation, adobe = 2, 1, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segment = data[pos + 4:pos + 2 + length]
        if length < 2 or len(segment) < length - 2:
            return None
        if marker == 0xE1 and bytes(segment[:6]) == b"Exif\x00\x00":
            orientation = _exif_orientation(bytes(segment[6:]))
        elif marker == 0xEE and bytes(segment[:5]) == b"Adobe":
            adobe = True
        elif marker in _SOF:
            if len(segment) < 6:
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", segment)
            return JpegHeader(width, height, components, precision, marker in _BASELINE,
                              marker in _PROGRESSIVE, orientation, adobe, complete)
        elif marker in (0xDA, 0xD9):  # scan or end before any frame header
            return None
        pos += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int:
    """The orientation tag of an EXIF block's first directory (1 when absent, 0 when the block
    does not parse: then PIL decides)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 0
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (first,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, first)
        for k in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", tiff, first + 2 + 12 * k)
            if tag == _ORIENTATION_TAG:
                return struct.unpack_from(order + "H", value)[0] if kind == 3 else 0
    except struct.error:
        return 0
    return 1
