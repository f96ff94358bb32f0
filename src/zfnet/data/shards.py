"""`shards:OUT`: an image folder written as webdataset tar shards (`zfnet shards`), read as a
drop-in for `imagefolder:DIR`.

Layout of OUT (written by `zfnet.data.shard_writer.write_shards`)::

    OUT/manifest.json          format, source, classes, resize, counts per split and per shard
    OUT/train-000000.tar ...   webdataset shards: per sample KEY.jpg (or the original's
    OUT/val-000000.tar ...     extension; KEY.npy for raw pixels) and KEY.cls (the label); KEY
                               is the file's path in its split without the extension, e.g.
                               n01440764/n01440764_10026
    OUT/train-index.npy        per sample: shard, byte offset and size of the image, label
    OUT/val-index.npy
    OUT/mean-256.npy           the training split's mean image at 256 px (paper Sec. 3)

Samples are stored in the order `imagefolder:DIR` gives them (round-robin over the classes:
the first image of each class, then the second, ...), broken files left out when writing, so a
shard's consecutive samples mix the classes and item i of a split is the folder loader's item i
when no file was broken. The images are the originals re-encoded as JPEG at a shorter side of
`resize` px (256, the paper's; smaller images keep their bytes), or only the centre
`resize` x `resize` square of each (`zfnet shards --square`, "square" in the manifest: all a
reader keeps of an image, so its items are the same up to JPEG rounding), or the original
bytes (`resize` 0), or the centre squares as raw pixels (`zfnet shards --raw`, "raw" in the
manifest: uint8 arrays of `resize` x `resize` x 3 in NumPy's .npy format, which plain webdataset
decodes too): nothing to decode when reading, for machines whose cores cannot decode as fast as
their GPU trains, at 192 KiB an image at 256 px (ImageNet's training split: 255 GB), and the
folder loader's items exactly where they are read at the stored side (else up to resampling).

Reading: every item is decoded and preprocessed as `imagefolder` does it (shorter side -> the
full size, centre square, minus the mean image, random crops and flips or the centre / 10
crops), from bytes found through the index (one `pread` per image). Evaluation and mining read
the val split in order, so a split is read sequentially, shard after shard. Training streams
(`zfnet.data.shard_stream`): each epoch the shards are read in a shuffled order, each rank and
DataLoader worker reading its own contiguous part through a shuffle buffer. Spec options as
`imagefolder` (size, classes, per_class, n_train, n_val) and `shuffle=N`, the samples in each
worker's shuffle buffer (default 1000; 0: the stored order).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zfnet.data.bundle import DataBundle, bundle_geometry, fitted
from zfnet.data.imagefolder import (
    CACHE_VERSION,
    IMAGEFOLDER_OPTIONS,
    PAPER_FULL,
    PAPER_INPUT,
    cached_mean,
    check_no_size,
    given_mean_sizes,
    mean_of,
)
from zfnet.data.images import BadImageError, decode_rgb_view, resize_center_crop, warn_skipped
from zfnet.data.preprocess import Preprocessing
from zfnet.data.spec import DatasetSpec, check_options, class_list_option, int_option
from zfnet.data.subset import select
from zfnet.data.transforms import CropDataset, CropParams, crop

FORMAT = "zfnet-shards/2"  # bump when the layout changes; readers refuse other versions
READABLE = ("zfnet-shards/1", FORMAT)  # /2 added raw pixels (KEY.npy, "raw" in the manifest)
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
FORM = "shards:OUT (a folder written by `zfnet shards imagefolder:DIR --out OUT`)"
DEFAULT_SHUFFLE = 1000  # samples in each worker's shuffle buffer (~25 MB of 256 px JPEGs,
# 192 MiB of raw 256 px squares)
# Columns of a split's index (an int64 array, one row per sample).
SHARD, OFFSET, SIZE, LABEL = range(4)


AGAIN = "the shards are incomplete or were changed: write them again with `zfnet shards`"


class ShardsError(ValueError):
    """A folder that is not usable shards; the message names the file and what to do."""


class ResolutionWarning(UserWarning):
    """Shards hold images smaller than the size they are read at (they are upsampled)."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)


# --- the manifest and the index ---

def shard_name(split: str, number: int) -> str:
    """`train-000003.tar`: the file of shard `number` of `split`."""
    return f"{split}-{number:06d}.tar"


def index_name(split: str) -> str:
    return f"{split}-index.npy"


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The parsed `root/manifest.json`; ShardsError (a ValueError) or FileNotFoundError naming
    what is wrong when root is not shards of this format."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"shards folder {root} {what}; expected {FORM}")
    path = root / MANIFEST
    if not path.is_file():
        tars = " (its .tar files lack the manifest: an unfinished or foreign write)" \
            if any(root.glob("*.tar")) else ""
        raise ShardsError(f"{root} has no {MANIFEST}{tars}; expected {FORM}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ShardsError(f"{path} is unreadable ({e}); write the shards again with "
                          "`zfnet shards`") from None
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    if found not in READABLE:
        raise ShardsError(f"{path} is format {found!r}, this zfnet reads "
                          f"{' and '.join(map(repr, READABLE))}: write the shards again with "
                          "this version's `zfnet shards`")
    _check_fields(path, manifest)
    return manifest


def _check_fields(path: Path, manifest: dict[str, Any]) -> None:
    """ShardsError naming the field of the manifest at `path` that a reader relies on and that
    does not hold what `zfnet shards` writes there."""
    def bad(field: str, valid: str) -> ShardsError:
        return ShardsError(f"{path}: {field!r} is {json.dumps(manifest.get(field))}, not "
                           f"{valid}; {AGAIN}")

    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes \
            or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a list of class names")
    resize = manifest.get("resize", 0)
    if type(resize) is not int or resize < 0:
        raise bad("resize", "the stored side in px (an integer >= 0)")
    for flag in ("square", "raw"):
        if type(manifest.get(flag, False)) is not bool:
            raise bad(flag, "true or false")
    if manifest.get("raw") and not resize:
        raise bad("resize", "the side of the raw squares (an integer > 0)")


def _inside(root: Path, name: Any, what: str) -> Path:
    """`root / name` where `name` (from the manifest) is a file name in `root`; ShardsError
    otherwise: shards never point outside their folder."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name \
            or "\\" in name:
        raise ShardsError(f"{root / MANIFEST}: {what} {json.dumps(name)} is not a file name in "
                          f"{root} (shards keep every file in their folder); {AGAIN}")
    return root / name


def raw_bytes(img: torch.Tensor) -> bytes:
    """A uint8 (3, S, S) image as stored in raw shards: the (S, S, 3) array in NumPy's .npy
    format (version 1.0)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(img.permute(1, 2, 0).numpy()),
                              version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def raw_image(data: bytearray, side: int) -> torch.Tensor:
    """The image in `raw_bytes`' `data`, of `side` px, as a uint8 (3, S, S) view of the bytes
    (no copy). BadImageError (its path for the caller to set) saying what is wrong with them."""
    f = io.BytesIO(memoryview(data)[:4096])
    try:
        if np.lib.format.read_magic(f) != (1, 0):
            raise ValueError("not .npy version 1.0")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    except ValueError as e:
        raise BadImageError("", f"cannot decode (raw pixels: {e})") from None
    start = f.tell()
    if shape != (side, side, 3) or dtype != np.uint8 or fortran \
            or len(data) - start != side * side * 3:
        raise BadImageError("", f"cannot decode (raw pixels: {dtype} {shape} in "
                                f"{len(data) - start} bytes, expected uint8 ({side}, {side}, 3))")
    pixels = torch.frombuffer(data, dtype=torch.uint8, offset=start)
    return pixels.view(side, side, 3).permute(2, 0, 1)


UNREAD_MEMBER = "the member at byte "  # a member whose tar header cannot be read, by place


@dataclass(frozen=True)
class ShardSplit:
    """One split of a shards folder: its shard files and its index (rows: shard, offset, size,
    label of each sample, in stored order)."""

    root: Path
    name: str
    files: list[Path]
    index: np.ndarray  # (N, 4) int64
    suffix: str | None = None  # the originals' most common extension (.JPEG); None: unknown
    renamed: dict[int, str] = field(default_factory=dict)  # row: file, where key+suffix is not

    def __len__(self) -> int:
        return len(self.index)


def read_split(root: Path, manifest: dict[str, Any], split: str) -> ShardSplit:
    """A split's shards and index, checked against the manifest (files present, of the sizes
    and sample counts it records): ShardsError naming the first file that differs."""
    try:
        entry = manifest["splits"][split]
        shards = entry["shards"]
        index_file = entry["index"]
    except (KeyError, TypeError):
        raise ShardsError(f"{root / MANIFEST} lacks the {split} split's entry: write the "
                          "shards again with `zfnet shards`") from None
    index_file = _inside(root, index_file, f"the {split} index")
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("count"), int)
            and isinstance(s.get("bytes"), int) for s in shards):
        raise ShardsError(f"{root / MANIFEST}: the {split} split's \"shards\" are not a list of "
                          f"file, count and bytes entries; {AGAIN}")
    files = [_inside(root, s.get("file"), f"the {split} shard") for s in shards]
    try:
        index = np.load(index_file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ShardsError(f"{index_file} is missing or unreadable ({e}); {AGAIN}") from None
    if index.ndim != 2 or index.shape != (entry["count"], 4) or index.dtype != np.int64:
        raise ShardsError(f"{index_file} does not index the manifest's {entry['count']} "
                          f"{split} samples; {AGAIN}")
    if len(index):
        numbers, labels = index[:, SHARD], index[:, LABEL]
        if numbers.min() < 0 or numbers.max() >= len(files):
            wrong = numbers.max() if numbers.max() >= len(files) else numbers.min()
            raise ShardsError(f"{index_file} points at {split} shard {wrong}, but the manifest "
                              f"lists {len(files)} {split} shards; {AGAIN}")
        classes = len(manifest["classes"])
        if labels.min() < 0 or labels.max() >= classes:
            wrong = labels.max() if labels.max() >= classes else labels.min()
            raise ShardsError(f"{index_file} holds label {wrong}, the manifest names {classes} "
                              f"classes (labels 0 to {classes - 1}); {AGAIN}")
    counts = np.bincount(index[:, SHARD], minlength=len(files)) if len(index) else []
    for k, (f, s) in enumerate(zip(files, shards, strict=True)):
        size = f.stat().st_size if f.is_file() else None
        if size is None:
            raise ShardsError(f"{f} is missing; {AGAIN}")
        if size != s["bytes"]:
            raise ShardsError(f"{f} has {size} bytes, the manifest says {s['bytes']}; {AGAIN}")
        if counts[k] != s["count"]:
            raise ShardsError(f"{index_file} has {counts[k]} samples in {f.name}, the manifest "
                              f"says {s['count']}; {AGAIN}")
    suffix, renamed = entry.get("suffix"), entry.get("renamed") or {}
    if not isinstance(suffix, str) or not isinstance(renamed, dict):  # older shards: by member
        suffix, renamed = None, {}
    return ShardSplit(root, split, files, np.asarray(index), suffix,
                      {int(k): str(v) for k, v in renamed.items() if str(k).isdigit()})


class _OpenFiles:
    """Shard files opened on first use (at most `limit` at once), read with `os.pread`: no
    shared file position, so DataLoader workers forked with them open read safely. Not pickled
    (a spawned worker opens its own)."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self.fds: OrderedDict[Path, int] = OrderedDict()
        self.lock = threading.Lock()

    def pread(self, path: Path, size: int, offset: int) -> bytearray:
        """`size` bytes at `offset` (fewer where the file ends), in a writable buffer (which
        `torch.frombuffer` takes without a copy or a warning)."""
        with self.lock:  # one reader at a time: a file closed for the limit is not in use
            fd = self.fds.pop(path, None)
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                while len(self.fds) >= self.limit:
                    os.close(self.fds.popitem(last=False)[1])
            self.fds[path] = fd  # most recently used last
            data = bytearray(size)
            n = os.preadv(fd, [data], offset)
            return data if n == size else data[:n]

    def __getstate__(self) -> dict[str, Any]:
        return {"limit": self.limit}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["limit"])

    def __del__(self) -> None:
        for fd in getattr(self, "fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


# --- the dataset ---

class ShardImages(CropDataset):
    """Images of a shards split, decoded on demand from the bytes the index points at and
    preprocessed as `imagefolder`'s (uint8 (3, F, F), or fitted to a model's `preprocessing`),
    cropped per `mode`. `rows`: the samples of the split it holds (its items, in order).
    `raw_side`: the side of the squares of raw shards (their pixels are read, not decoded),
    0 for shards of image files."""

    def __init__(self, split: ShardSplit, rows: Sequence[int], targets: Sequence[int], *,
                 shuffle_buffer: int = DEFAULT_SHUFFLE, raw_side: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(targets, **kwargs)
        self.split = split
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shuffle_buffer = shuffle_buffer
        self.raw_side = raw_side
        self.pending: dict[int, bytearray] = {}  # bytes a stream has read already, by item
        self._files = _OpenFiles()

    def location(self, i: int) -> tuple[int, int, int]:
        """(shard number, byte offset, size) of item i's image."""
        row = self.split.index[self.rows[i]]
        return int(row[SHARD]), int(row[OFFSET]), int(row[SIZE])

    def read(self, i: int) -> bytearray:
        """Item i's image file, as stored (one read)."""
        shard, offset, size = self.location(i)
        return self._files.pread(self.split.files[shard], size, offset)

    def member(self, i: int) -> str:
        """Item i's image member in its shard, e.g. n01440764/n01440764_10026.jpg (read from
        its tar header)."""
        shard, offset, _ = self.location(i)
        header = self._files.pread(self.split.files[shard], 512, offset - 512)
        try:
            return tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").name
        except tarfile.TarError:
            return f"{UNREAD_MEMBER}{offset}"

    def key(self, i: int) -> str:
        """Item i's webdataset key: its file's path in its split, without the extension."""
        return self.member(i).rsplit(".", 1)[0]

    def name(self, i: int) -> str:
        """Item i in messages: `OUT/train-000003.tar:n01440764/n01440764_10026.jpg` (a member
        whose header cannot be read: `OUT/train-000003.tar, the member at byte 512`)."""
        member = self.member(i)
        return f"{self.split.files[self.location(i)[0]]}" + \
            (f", {member}" if member.startswith(UNREAD_MEMBER) else f":{member}")

    def full_image(self, i: int) -> torch.Tensor:
        data = self.pending.get(i)
        if data is None:
            data = self.read(i)
        if len(data) != self.location(i)[2]:
            raise BadImageError(self.name(i), "cannot decode (the shard ends early)")
        try:
            img = raw_image(data, self.raw_side) if self.raw_side else \
                decode_rgb_view(data, min_side=self.full_size)  # (3, H, W), strided
        except BadImageError as e:
            raise BadImageError(self.name(i), e.reason) from None
        if self.preprocessing is not None:
            return self.preprocessing.fit_full(img)  # (C, F, F), the model's
        return resize_center_crop(img, self.full_size)  # (3, F, F)

    def train_items(self, indices: Sequence[int], params: Sequence[CropParams]
                    ) -> list[tuple[torch.Tensor, int] | None]:
        """`CropDataset.train_items` with the crop cut before the mean is subtracted and
        flipped after (the same values: all three act per pixel), so that only the crop is
        copied, once made float and contiguous: 0.2 ms an image instead of 0.45 here."""
        if self.form != "float":
            return super().train_items(indices, params)
        items: list[tuple[torch.Tensor, int] | None] = []
        for i, p in zip(indices, params, strict=True):
            try:
                img = self.full_image(i)  # (C, F, F) uint8
            except BadImageError as err:
                if self.strict:
                    raise
                warn_skipped(err)
                items.append(None)
                continue
            top, left, flipped = p
            x = crop(img, top, left, self.input_size).to(
                torch.float32, memory_format=torch.contiguous_format)
            x.sub_(crop(self.mean, top, left, self.input_size))
            if self.std is not None:
                x.div_(self.std)
            items.append((x.flip(-1) if flipped else x, self.targets[i]))
        return items

    def read_encoded(self, i: int) -> bytearray:
        data = self.pending.get(i)
        return data if data is not None else self.read(i)

    def item_name(self, i: int) -> str:
        return self.name(i)

    def short_name(self, i: int) -> str:
        """Item i as a figure or a table shows it: the file's path in its split, as the folder's
        `short_name` shows it (`n01440764/n01440764_10026.JPEG`, stored re-encoded as .jpg or
        as .npy), from its key and the manifest's "suffix" and "renamed"; shards written
        before those: its member's name."""
        renamed = self.split.renamed.get(int(self.rows[i]))
        if renamed is not None:
            return renamed
        member = self.member(i)
        if self.split.suffix is None or member.startswith(UNREAD_MEMBER):
            return member
        return member.rsplit(".", 1)[0] + self.split.suffix

    def epoch_stream(self, samples: Dataset, **kwargs: Any) -> Dataset:
        """The training batches of one epoch read as a stream (`zfnet.data.shard_stream`):
        `samples` wraps this dataset (the trainer's `SeededSamples`), `kwargs` are
        `ShardStream`'s."""
        from zfnet.data.shard_stream import ShardStream

        return ShardStream(samples, self, **kwargs)


class _FullImages(Dataset):
    """A shards split's full-size images for its mean; (path, reason) for a broken one
    (`mean_of` warns about it)."""

    def __init__(self, images: ShardImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor | tuple[str, str]:
        try:
            return self.images.full_image(i)
        except BadImageError as err:
            if self.images.strict:
                raise
            return str(err.path), err.reason


# --- the bundle ---

def load_shards(
    spec: DatasetSpec,
    *,
    ten_crop: bool = False,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    raw_spec: str = "",
    preprocessing: Preprocessing | None = None,
    mean_image: torch.Tensor | None = None,
    mean_input: int | None = None,
) -> DataBundle:
    """Build the `DataBundle` for `shards:OUT`, as `imagefolder:DIR` builds it for the folder
    the shards were written from (`mean_image`: a zfnet run's, instead of OUT's own, for
    inputs of `mean_input` px)."""
    mean_image = None if preprocessing is not None else mean_image
    if spec.path is None:
        raise ValueError(f"shards needs a folder: {FORM}")
    # absolute, as a run saves its dataset's path: each file named alike from every command
    root = Path(os.path.abspath(Path(spec.path).expanduser()))
    manifest = read_manifest(root)
    all_names = list(manifest["classes"])
    opts = check_options(spec, IMAGEFOLDER_OPTIONS | {
        "classes": lambda v, k: class_list_option(v, all_names, k),
        "shuffle": int_option})
    check_no_size(opts, preprocessing, raw_spec)
    train, val = (read_split(root, manifest, s) for s in SPLITS)
    raw_side = int(manifest["resize"]) if manifest.get("raw") else 0
    input_size = opts.get("size", PAPER_INPUT)
    full_size = round(input_size * PAPER_FULL / PAPER_INPUT)
    if mean_image is not None:
        input_size, full_size = given_mean_sizes(mean_image, opts, raw_spec, mean_input)
    _check_resolution(root, manifest, preprocessing.resize if preprocessing else full_size)
    classes = opts.get("classes")
    names = [all_names[c] for c in classes] if classes is not None else all_names

    def pick(split: ShardSplit, first: int | None, per_class: int | None):
        # The stored order is imagefolder's already (round-robin over the classes):
        # kept, so that a subset reads its shards in order.
        return select(split.index[:, LABEL].tolist(), classes=classes, per_class=per_class,
                      first=first)

    train_rows, train_y = pick(train, opts.get("n_train"), opts.get("per_class"))
    val_rows, val_y = pick(val, opts.get("n_val"), None)
    if not train_rows or not val_rows:
        raise ValueError(f"dataset spec {raw_spec!r} selects no training or no val images")
    if mean_image is not None:
        mean = mean_image
        common = dict(mean=mean, input_size=input_size, classes=names, strict=strict)
    elif preprocessing is None:
        mean = _mean(root, manifest, train, train_rows, full_size, strict, cache_dir,
                     raw_side)
        common = dict(mean=mean, input_size=input_size, classes=names, strict=strict)
    else:
        mean = preprocessing.full_mean()
        common = dict(classes=names, strict=strict, **fitted(preprocessing))
    buffer = opts.get("shuffle", DEFAULT_SHUFFLE)
    return DataBundle(
        spec=raw_spec,
        train=ShardImages(train, train_rows, train_y, mode="train", shuffle_buffer=buffer,
                          raw_side=raw_side, **common),
        val=ShardImages(val, val_rows, val_y, mode="ten_crop" if ten_crop else "centre",
                        raw_side=raw_side, **common),
        num_classes=len(names),
        class_names=names,
        **bundle_geometry(preprocessing, in_channels=3, input_size=input_size,
                          full_size=full_size, mean=mean),
        class_words=_class_words(manifest, classes),
    )


def _class_words(manifest: dict[str, Any], classes: list[int] | None) -> list | None:
    """The words the manifest keeps for the classes picked (`zfnet.data.words`), or None."""
    words = manifest.get("class_words")
    if not isinstance(words, list) or len(words) != len(manifest["classes"]):
        return None
    return [words[c] for c in classes] if classes is not None else list(words)


def _check_resolution(root: Path, manifest: dict[str, Any], side: int) -> None:
    """Warn when the shards' images are smaller than the side they are resized to."""
    stored = int(manifest.get("resize") or 0)
    if stored and side > stored:
        warnings.warn(f"the shards in {root} hold images at {stored} px (shorter side): "
                      f"{side} px inputs upsample them; write shards with --resize {side} (or "
                      "--original) for these inputs", ResolutionWarning, stacklevel=1)


def _mean(root: Path, manifest: dict[str, Any], train: ShardSplit, rows: list[int],
          full_size: int, strict: bool, cache_dir: str | Path | None,
          raw_side: int) -> torch.Tensor:
    """The mean image of the training rows at `full_size`: the one written with the shards when
    it is that (every training image at its size), else computed once and cached as
    imagefolder's is (`raw_side`: `ShardImages`')."""
    stored = manifest.get("mean") or {}
    if stored.get("full_size") == full_size and rows == list(range(len(train))):
        try:
            arr = np.load(_inside(root, stored["file"], "the mean image"), allow_pickle=False)
        except (OSError, ValueError, KeyError):
            arr = None  # recomputed below
        if arr is not None and arr.shape == (3, full_size, full_size):
            return torch.from_numpy(arr.astype(np.float32))
    h = hashlib.sha256(f"{CACHE_VERSION}|shards|{manifest.get('id')}|{full_size}|".encode())
    h.update(np.asarray(rows, dtype=np.int64).tobytes())
    images = ShardImages(train, rows, [0] * len(rows), mean=torch.zeros(1).expand(
        3, full_size, full_size), input_size=full_size, mode="centre", classes=[],
        strict=strict, raw_side=raw_side)
    return cached_mean(root, h.hexdigest()[:20], full_size,
                       lambda: mean_of(_FullImages(images), full_size,
                                       example=str(train.files[0])), cache_dir=cache_dir)
