"""`zfnet shards`: write an image folder (`imagefolder:DIR`) as webdataset tar shards.

Both splits, in the order `imagefolder:DIR` reads them, each image decoded once (a broken file is
skipped with a `BrokenImageWarning` naming it, and listed in the manifest), then stored as a
JPEG re-encoded at a shorter side of `resize` px (resized as the folder loader resizes;
images no larger keep their bytes), or with `square` as the centre `resize` x `resize` square
the folder loader keeps of it (every image, smaller ones resized up as a reader would: all of
one size, a quarter fewer pixels than a 4:3 photo's at that shorter side), with `raw` as that
square's raw pixels (nothing to decode when reading), or, with `resize=0`, as the original
bytes. The training split's mean image at 256 px (the paper's full size) is
computed on the way, from the stored images as a reader decodes them. Format:
`zfnet.data.shards`.

Atomic and resumable: everything is written into a hidden folder beside OUT (`.OUT.tmp-<hex>`),
renamed to OUT at the end, so OUT is either complete or absent. Each closed shard is recorded in
the folder's journal (`_Journal`: the shards, their index rows, the mean's running sum, where
the next image starts), so Ctrl-C, SIGTERM, an error (a full disk) or a write killed outright
(SIGKILL, a crash) loses at most the shard being written: the same command run again continues
from the last closed one (`_take_over`), and gives the same bytes as a write never interrupted.
A write stopped before its first shard is closed leaves nothing. Tar members carry a fixed
mtime: the same folder gives byte-identical shards.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import tarfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import Dataset

from zfnet import __version__
from zfnet.atomic import write_text_atomic
from zfnet.data.imagefolder import LAYOUT, PAPER_FULL, select_folder, split_folders
from zfnet.data.images import (
    BadImageError,
    BrokenImageWarning,
    check_link,
    load_rgb,
    resize_center_crop,
    resize_shorter,
)
from zfnet.data.shards import FORMAT, MANIFEST, SPLITS, index_name, raw_bytes, shard_name
from zfnet.data.spec import DatasetSpec, parse_spec
from zfnet.data.words import OPTION as WORDS
from zfnet.data.words import class_words
from zfnet.data.workers import Loader, end_workers, usable_cores
from zfnet.progress import progress_bar

DEFAULT_RESIZE = PAPER_FULL
DEFAULT_QUALITY = 90
DEFAULT_SHARD_SIZE = 10**9
CHUNK = 32  # images per task of a writing worker
TAR_FORMAT = tarfile.PAX_FORMAT  # any name length and characters (USTAR: 256 ASCII bytes)
_BLOCK = 512  # tar's block: every member is a header block and its data padded to blocks
# What a write puts in its hidden folder: nothing else is removed as a killed write's leftovers
_WRITTEN = re.compile(r"(train|val)-(\d{6}\.tar|index\.npy|rows\.bin|sum-\d{6}\.npy)|mean-\d+\.npy"
                      r"|(manifest|journal)\.json|\.(manifest|journal)\.json\.tmp-[0-9a-f]{32}")
JOURNAL = "journal.json"  # a write's progress, in its hidden folder only
JOURNAL_FORMAT = "zfnet-shards-journal/1"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and `timeout` send) while `write_shards` writes: raised as Ctrl-C's
    KeyboardInterrupt is, after the hidden folder is removed; a command exits 143 on it."""

    signal = "SIGTERM"


class StaleWriteWarning(UserWarning):
    """A hidden folder left beside OUT by a write that was killed: removed, or named and kept."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)


class PartialWriteNote(UserWarning):
    """What an interrupted write kept (and how to continue it), or that a write continues one."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)
    prefix = "note"


def parse_size(text: str) -> int:
    """"1GB" -> 10**9 bytes; also kB, MB, TB (powers of 1000), KiB, MiB, GiB, TiB, plain bytes.
    ValueError naming the text otherwise, or when it is not at least 1 byte."""
    m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m[2].lower() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: a number with an optional unit, e.g. 1GB, "
                         "500MB, 2GiB")
    size = float(m[1]) * _UNITS[unit]
    if size < 1:
        what = "negative" if size < 0 else "zero" if size == 0 else "less than 1 byte"
        raise ValueError(f"{text!r} is {what}: a size must be > 0 (at least 1 byte), e.g. 1GB, "
                         "500MB, 2GiB")
    return int(size)


def small_shards(size: int) -> str:
    """The refusal of a shard size below a tar file's smallest (tar's record: 10 KiB)."""
    return (f"{size} bytes is less than the smallest tar file, {tarfile.RECORDSIZE} bytes "
            "(tar's record, 10KiB): give 10KiB or more (every shard would exceed it)")


def mean_side(resize: int) -> int:
    """The side of the mean image written with shards of `resize` px: the paper's 256, or the
    stored side where images are smaller."""
    return PAPER_FULL if resize == 0 or resize >= PAPER_FULL else resize


def _key(relative: Path) -> str:
    """The webdataset key of a file at `relative` in its split: its path without the
    extension, dots in its name made underscores (webdataset splits a name at its first dot)."""
    stem = relative.name.rsplit(".", 1)[0].replace(".", "_") or "_"
    return (relative.parent / stem).as_posix().removeprefix("./")


class _Chunks(Dataset):
    """Task c of a writing worker: images c*CHUNK to (c+1)*CHUNK of a split, each decoded (the
    check that it is an image) and made what is stored. Returns the stored samples, the broken
    files, and the sum of the stored images' centre squares at the mean's side (None: no mean)."""

    def __init__(self, paths: Sequence[Path], resize: int, quality: int,
                 mean_size: int | None, square: bool = False, raw: bool = False) -> None:
        self.paths, self.resize, self.quality, self.mean_size = list(paths), resize, quality, \
            mean_size
        self.square, self.raw = square, raw

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / CHUNK)

    def __getitem__(self, c: int) -> dict[str, Any]:
        stored: list[tuple[str, bytes] | None] = []
        broken: list[tuple[str, str]] = []
        total = None if self.mean_size is None else \
            torch.zeros(3, self.mean_size, self.mean_size, dtype=torch.float64)
        for path in self.paths[c * CHUNK:(c + 1) * CHUNK]:
            try:
                ext, data, seen = self._one(path)
            except BadImageError as e:
                stored.append(None)
                broken.append((str(e.path), e.reason))
                continue
            stored.append((ext, data))
            if total is not None:
                total += resize_center_crop(seen, self.mean_size).to(torch.float64)
        return {"stored": stored, "broken": broken, "sum": total}

    def _one(self, path: Path) -> tuple[str, bytes, torch.Tensor | None]:
        """(extension, bytes stored, the image a reader decodes at the mean's side or None)."""
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            check_link(path)  # a link to nothing: a broken file, as any other
            raise
        side = self.mean_size or self.resize or PAPER_FULL
        img = load_rgb(io.BytesIO(blob), min_side=self.resize or side, name=str(path))
        if self.raw:  # what a reader keeps, as it is
            small = resize_center_crop(img, self.resize)
            return "npy", raw_bytes(small), small
        original = _pixels(blob)
        if self.square or (self.resize and original is not None
                           and min(original) > self.resize):
            small = (resize_center_crop(img, self.resize) if self.square  # what a reader keeps
                     else resize_shorter(img, self.resize))  # as resize_center_crop
            buf = io.BytesIO()
            Image.fromarray(small.permute(1, 2, 0).numpy()).save(buf, "JPEG",
                                                                 quality=self.quality)
            data = buf.getvalue()
            seen = None if self.mean_size is None else \
                load_rgb(io.BytesIO(data), min_side=side, name=str(path))
            return "jpg", data, seen
        if self.mean_size is not None and (self.resize or side) != side:
            img = load_rgb(io.BytesIO(blob), min_side=side, name=str(path))  # as a reader
        return path.suffix.lower().lstrip(".") or "img", blob, img


def _pixels(raw: bytes) -> tuple[int, int] | None:
    """An image file's (width, height) from its header, None when PIL cannot tell."""
    try:
        with Image.open(io.BytesIO(raw)) as im:
            return im.size
    except Exception:  # decoding proper already succeeded: any odd header is kept as is
        return None


class _SplitWriter:
    """A split's samples into tar shards of at most about `shard_size` bytes, recording where
    each image's bytes start (its index row)."""

    def __init__(self, folder: Path, split: str, shard_size: int,
                 on_close: Callable[[_SplitWriter], None] | None = None) -> None:
        self.folder, self.split, self.shard_size = folder, split, shard_size
        self.on_close = on_close  # called as each shard but the last is closed (the journal)
        self.shards: list[dict[str, Any]] = []
        self.rows: list[tuple[int, int, int, int]] = []
        self.file: Any = None
        self.tar: wds.TarWriter | None = None

    def add(self, key: str, label: int, ext: str, data: bytes) -> None:
        label_bytes = str(int(label)).encode()
        grows = (_header(f"{key}.{ext}", len(data)) + _padded(len(data))
                 + _header(f"{key}.cls", len(label_bytes)) + _padded(len(label_bytes)))
        if self.tar is None or (self.shards[-1]["count"] and
                                _closed_size(self.tar.tarstream.offset + grows)
                                > self.shard_size):
            self._next()
        assert self.tar is not None
        self.tar.write({"__key__": key, ext: data})
        offset = self.tar.tarstream.offset - _padded(len(data))  # the image's data, last
        self.tar.write({"__key__": key, "cls": label_bytes})
        self.rows.append((len(self.shards) - 1, offset, len(data), int(label)))
        self.shards[-1]["count"] += 1

    def _next(self) -> None:
        if self.tar is not None:
            self._close()
            if self.on_close is not None:
                self.on_close(self)
        name = shard_name(self.split, len(self.shards))
        self.file = open(self.folder / name, "wb")  # noqa: SIM115 (closed in _close)
        # mtime an int: a float one would take a PAX header per member
        self.tar = wds.TarWriter(self.file, encoder=True, mtime=0, format="PAX_FORMAT")
        self.shards.append({"file": name, "count": 0, "bytes": 0})

    def _close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.file.flush()
            os.fsync(self.file.fileno())  # on the disk before the journal says it is closed
            self.file.close()
            self.shards[-1]["bytes"] = (self.folder / self.shards[-1]["file"]).stat().st_size
            self.tar = self.file = None

    def finish(self) -> np.ndarray:
        """Close the last shard; the index (N, 4) int64: shard, offset, size, label."""
        self._close()
        return np.asarray(self.rows, dtype=np.int64).reshape(-1, 4)


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _header(name: str, size: int) -> int:
    """Bytes of the header(s) of a member `name` of `size` bytes: one block, or more where a
    long or non-ASCII name needs a PAX header."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, 0
    return len(info.tobuf(TAR_FORMAT, "utf-8", "surrogateescape"))


def _closed_size(n: int) -> int:
    """The size of a tar file of `n` bytes of members once closed: two zero blocks end it, and
    it is padded to whole records (tarfile.RECORDSIZE)."""
    return -(-(n + 2 * _BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def write_shards(source: str, out: str | Path, *, resize: int = DEFAULT_RESIZE,
                 shard_size: int = DEFAULT_SHARD_SIZE, quality: int = DEFAULT_QUALITY,
                 square: bool = False, raw: bool = False, workers: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Write the image folder `source` (`imagefolder:DIR`, options `classes`, `per_class`,
    `n_train`, `n_val` taking a subset) as shards in `out`; returns the manifest.

    `resize`: the shorter side the images are stored at (re-encoded as JPEG of `quality`);
    0 keeps the original bytes. `square`: store only each image's centre `resize` x `resize`
    square, the part the paper's preprocessing (and a model's centre crops) use; the readers'
    inputs are the same up to JPEG rounding. `raw`: store those squares' pixels uncompressed
    (`zfnet.data.shards.raw_bytes`; `square` implied): the readers' inputs exactly at that side,
    nothing to decode, 3 * resize**2 bytes an image. `shard_size`: bytes per shard file at most (a
    larger image gets a shard of its own). `workers`: decoding processes (None: up to 8, one
    per core). `out` must not exist or be an empty folder. Errors: ValueError / FileNotFoundError /
    FileExistsError naming the cause, before anything is written (also where an interrupted
    write of `out` with other settings waits beside it). SIGTERM: `Terminated` (a
    KeyboardInterrupt), as Ctrl-C. Interrupted, failed or killed after its first shard, a write
    keeps its closed shards beside `out` (a `PartialWriteNote` says where): the next call with
    these settings continues it (`_take_over`, with a `PartialWriteNote`), to the same bytes.
    """
    spec = parse_spec(source)
    if spec.name != "imagefolder":
        raise ValueError(f"zfnet shards reads an image folder: imagefolder:DIR with {LAYOUT}; "
                         f"got {source!r}")
    if resize and resize < 8:
        raise ValueError(f"resize={resize}: give a shorter side of at least 8 px, or 0 to keep "
                         "the original bytes")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality={quality}: JPEG quality is 1 to 100")
    if shard_size < tarfile.RECORDSIZE:
        raise ValueError(small_shards(shard_size))
    if (square or raw) and not resize:
        raise ValueError(f"{'raw' if raw else 'square'}=True stores centre squares at a side of "
                         "`resize` px: give resize > 0 (the original bytes, resize=0, are not "
                         "squares)")
    square = square or raw  # raw pixels are of the centre squares
    from zfnet.data.relabel import OPTION

    if OPTION in spec.options:
        raise ValueError(f"option {OPTION} in {source!r} does not apply to shards (they keep the "
                         f"true labels): give it when reading them, shards:OUT?{OPTION}=SEED")
    options = dict(spec.options)
    words_file = options.pop(WORDS, None)  # the classes' words, kept in the manifest
    root, opts, names, train, val = select_folder(
        DatasetSpec(spec.name, spec.path, options), source)
    words = class_words(names, words_file, opts.get("val_labels"), repr(source))
    bases = split_folders(root, opts)
    inside = [f for f in dict.fromkeys(bases.values())
              if Path(out).expanduser().resolve().is_relative_to(f.resolve())]
    if inside:
        raise ValueError(f"--out {out} lies inside {inside[0]}, where it would become a "
                         "class folder of the images it is made from; choose a folder outside "
                         + " and ".join(str(f) for f in dict.fromkeys(bases.values())))
    if "size" in opts:
        raise ValueError(f"option size={opts['size']} in {source!r} does not apply to shards "
                         "(they keep the images at --resize px): give it when reading them, "
                         "shards:OUT?size=...")
    out = Path(out).expanduser()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        held = " (it holds shards already)" if (out / MANIFEST).exists() else ""
        raise FileExistsError(f"{out} exists and is not an empty folder{held}; choose another "
                              "--out or remove it")
    splits = {"train": train, "val": val}
    settings = _settings(root, names, splits, resize, square, raw, quality, shard_size)
    file = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if file is not None:
        raise NotADirectoryError(f"--out {out}: {file} is a file, not a folder; choose a "
                                 "folder for the shards")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # named as given
        cls = type(e) if type(e) is not OSError else PermissionError
        raise cls(f"--out {out} cannot be created ({e.strerror or e}): choose a folder where "
                  "you may write") from None
    if out.exists():
        _check_replaceable(out)  # before the write, not after hours of it
    found = _take_over(out, settings)  # an interrupted write of the same, to continue
    if found:
        tmp, lock, journal = found
        warnings.warn(f"continuing the interrupted write of {out} kept in {tmp}: "
                      f"{journal.progress()} are written", PartialWriteNote, stacklevel=2)
    else:
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
        except OSError as e:  # named as given, not by the hidden folder's name
            cls = type(e) if type(e) is not OSError else PermissionError
            raise cls(f"--out {out} cannot be created ({e.strerror or e}): choose a folder "
                      "where you may write") from None
        lock = os.open(tmp, os.O_RDONLY)
        fcntl.flock(lock, fcntl.LOCK_EX)  # this write is running: `_take_over` leaves it alone
        journal = _Journal.new(tmp, settings, source)
    state: dict[str, bool] = {}
    try:
        with _sigterm_raises(state):
            try:
                manifest = _write(journal, root, names, splits, shard_size, quality, workers,
                                  progress, lock, bases)
                if words is not None:  # shards:OUT shows them as imagefolder:DIR did
                    manifest["class_words"] = words
                write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
                if out.exists():
                    out.rmdir()  # empty, checked above
                os.rename(tmp, out)
                state["done"] = True  # complete: a SIGTERM from now on changes nothing
                (out / JOURNAL).unlink(missing_ok=True)  # kept to here: a stop before, continued
            except BaseException as e:
                state["done"] = True  # a SIGTERM now must not cut the removal short
                if journal.saved():  # Ctrl-C, SIGTERM, a full disk, a broken split: kept
                    warnings.warn(f"kept what this write of {out} did in {tmp} "
                                  f"({journal.progress()} are written): the same command "
                                  "continues it; remove that folder to start again",
                                  PartialWriteNote, stacklevel=2)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
                if state.get("terminated") and not isinstance(e, Terminated):
                    # e.g. the decoding workers, sent SIGTERM too, ended first
                    raise Terminated from e
                raise
    finally:
        os.close(lock)
    return manifest


@contextlib.contextmanager
def _sigterm_raises(state: dict[str, bool]) -> Iterator[None]:
    """SIGTERM raises `Terminated` (once, until `state["done"]`), recorded as
    `state["terminated"]`, and SIGINT KeyboardInterrupt, also where the process was started
    ignoring it (a job started with `&` by a script: `kill -INT` stops it, as it stops `zfnet
    train`); in the main thread only (elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        first = not state.get("terminated")
        state["terminated"] = True
        if first and not state.get("done"):
            raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, interrupt)


def _settings(root: Path, names: list[str], splits: dict[str, tuple[list[Path], list[int]]],
              resize: int, square: bool, raw: bool, quality: int,
              shard_size: int) -> dict[str, Any]:
    """All that decides a write's bytes (the folder's files and labels as a digest): a write
    continues an interrupted one only where these are equal."""
    prefix = f"{root}{os.sep}"  # the files' names inside it (2 s for ImageNet's, not 5)
    text = "\0".join(names) + "\n" + "\n".join(
        f"{str(path).removeprefix(prefix)}\0{label}"
        for split in SPLITS for path, label in zip(*splits[split], strict=True))
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape"))
    return {"source": str(root.resolve()), "resize": resize, "square": square, "raw": raw,
            "quality": quality if resize and not raw else None, "shard_size": shard_size,
            "zfnet": __version__, "images": {s: len(splits[s][0]) for s in SPLITS},
            "files": digest.hexdigest()}


_SETTING_WORDS = {"source": "imagefolder:{}", "resize": "--resize {}", "square": "--square {}",
                  "raw": "--raw {}", "quality": "--quality {}", "shard_size": "--shard-size {}",
                  "zfnet": "zfnet {}"}


def _differences(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How the settings `then` (a journal's) differ from `now`, in a user's words."""
    def said(key: str, value: Any) -> str:
        if isinstance(value, bool):
            value = "on" if value else "off"
        return _SETTING_WORDS[key].format(value)

    told = [f"{said(k, then.get(k))} (now {said(k, now[k])})" for k in _SETTING_WORDS
            if then.get(k) != now[k]]
    if then.get("images") != now["images"]:
        count = " and ".join(f"{n:,} {s}" for s, n in (then.get("images") or {}).items())
        told.append(f"{count or 'other'} images (now "
                    + " and ".join(f"{n:,} {s}" for s, n in now["images"].items()) + " images)")
    elif then.get("files") != now["files"]:
        told.append("other files or classes in the folder (as many images)")
    return told


class _Journal:
    """A write's progress, in its hidden folder: saved (durably) as each shard is closed and as
    each split is done, with the closed shards' index rows (`SPLIT-rows.bin`, appended) and the
    mean's running sum (`train-sum-K.npy`). All a later write of the same settings needs to
    continue it from the last closed shard."""

    def __init__(self, folder: Path, state: dict[str, Any]) -> None:
        self.folder, self.state = folder, state

    @classmethod
    def new(cls, folder: Path, settings: dict[str, Any], spec: str) -> _Journal:
        """The journal of a write begun in `folder` (saved as its first shard is closed)."""
        return cls(folder, {"format": JOURNAL_FORMAT, "settings": settings, "spec": spec,
                            "id": uuid.uuid4().hex,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "splits": {}, "current": None})

    @classmethod
    def read(cls, folder: Path) -> _Journal | None:
        """The journal saved in `folder`; None where there is none or it cannot be read."""
        try:
            state = json.loads((folder / JOURNAL).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        keys = {"format", "settings", "spec", "id", "created", "splits", "current"}
        return cls(folder, state) if isinstance(state, dict) and keys <= state.keys() \
            and isinstance(state["settings"], dict) else None

    def saved(self) -> bool:
        return (self.folder / JOURNAL).is_file()

    def current(self, split: str) -> dict[str, Any] | None:
        cur = self.state["current"]
        return cur if cur and cur["split"] == split else None

    def done_images(self) -> int:
        images = self.state["settings"]["images"]
        cur = self.state["current"]
        return sum(images[s] for s in self.state["splits"]) + (cur["next"] if cur else 0)

    def progress(self) -> str:
        """E.g. "train's first 9,600 of 20,800 images (3 shards)"."""
        images = self.state["settings"]["images"]
        told = [f"all {images[s]:,} {s} images" for s in self.state["splits"]]
        cur = self.state["current"]
        if cur:
            told.append(f"{cur['split']}'s first {cur['next']:,} of {images[cur['split']]:,} "
                        f"images ({len(cur['shards'])} shard{'s' * (len(cur['shards']) > 1)})")
        return " and ".join(told) or "no image"

    def shard_closed(self, writer: _SplitWriter, at: dict[str, int], skipped: list[str],
                     total: torch.Tensor | None) -> None:
        """Save that `writer`'s shards are closed: `at["next"]` (the split's path index) starts
        the next; the first `at["skipped"]` of `skipped`, and `total` (the mean's sum), are
        those of the images before `at["summed"]` (where the chunk that holds it starts)."""
        split = writer.split
        cur = self.current(split) or {}
        with open(self.folder / f"{split}-rows.bin", "ab") as f:
            f.write(np.asarray(writer.rows[cur.get("rows", 0):], np.int64).tobytes())
            f.flush()
            os.fsync(f.fileno())
        sum_file = None
        if total is not None:
            sum_file = f"{split}-sum-{len(writer.shards):06d}.npy"
            with open(self.folder / sum_file, "wb") as f:
                np.save(f, total.numpy())
                f.flush()
                os.fsync(f.fileno())
        self._save({**self.state, "current": {
            "split": split, "shards": [dict(s) for s in writer.shards], "rows": len(writer.rows),
            "next": at["next"], "summed": at["summed"], "skipped": skipped[:at["skipped"]],
            "sum": sum_file}})
        if cur.get("sum") and cur["sum"] != sum_file:
            (self.folder / cur["sum"]).unlink(missing_ok=True)

    def split_done(self, split: str, entry: dict[str, Any]) -> None:
        """Save that `split` is written (its index and mean too), as `entry` in the manifest."""
        self._save({**self.state, "splits": {**self.state["splits"], split: entry},
                    "current": None})
        self._tidy()

    def restore(self, split: str) -> tuple[list[dict[str, Any]], np.ndarray, int, int,
                                           list[str], np.ndarray | None]:
        """Where `split` stands: its closed shards, their index rows, the next image, the image
        before which the skipped files and the mean's sum (None: no sum saved) were saved, and
        those. ValueError where the rows saved are not all there."""
        cur = self.current(split)
        if cur is None:
            return [], np.zeros((0, 4), np.int64), 0, 0, [], None
        rows = np.fromfile(self.folder / f"{split}-rows.bin", np.int64,
                           count=cur["rows"] * 4) if cur["rows"] else np.zeros(0, np.int64)
        if rows.size != cur["rows"] * 4:
            raise ValueError(f"{self.folder} cannot be continued: {split}-rows.bin holds "
                             f"{rows.size // 4} rows, not {cur['rows']}; remove that folder "
                             "to start again")
        total = np.load(self.folder / cur["sum"]) if cur["sum"] else None
        return (cur["shards"], rows.reshape(-1, 4), cur["next"], cur["summed"], cur["skipped"],
                total)

    def _save(self, state: dict[str, Any]) -> None:
        """Make `state` the journal, on the disk, then in memory: what `progress` tells of a
        write stopped while saving is what was saved."""
        write_text_atomic(self.folder / JOURNAL, json.dumps(state) + "\n", durable=True)
        self.state = state

    def _tidy(self) -> None:
        """Remove what the journal does not hold: the shard an interrupt cut short, rows and
        sums no longer needed, a split's files written after its last save."""
        keep = {JOURNAL}
        for split, entry in self.state["splits"].items():
            keep |= {s["file"] for s in entry["shards"]} | {entry["index"]}
            if split == "train":
                keep |= {f for f in os.listdir(self.folder) if f.startswith("mean-")}
        cur = self.state["current"]
        if cur:
            keep |= {s["file"] for s in cur["shards"]} | {f"{cur['split']}-rows.bin"}
            keep |= {cur["sum"]} if cur["sum"] else set()
        for name in os.listdir(self.folder):
            if name not in keep:
                (self.folder / name).unlink(missing_ok=True)

    def continue_here(self) -> None:
        """Make the folder as the journal last saved it: cut the rows file to the rows saved,
        remove anything written after (`_tidy`). ValueError, before anything is changed, where
        a shard it holds is missing or not as written."""
        cur = self.state["current"]
        done = [s for entry in self.state["splits"].values() for s in entry["shards"]]
        for shard in done + (cur["shards"] if cur else []):
            path = self.folder / shard["file"]
            size = path.stat().st_size if path.is_file() else None
            if size != shard["bytes"]:
                raise ValueError(f"{self.folder} cannot be continued: {shard['file']} is "
                                 f"{'missing' if size is None else f'{size} bytes'}, written as "
                                 f"{shard['bytes']}; remove that folder to start again")
        self._tidy()
        if cur:
            with open(self.folder / f"{cur['split']}-rows.bin", "ab") as f:
                f.truncate(cur["rows"] * 32)  # 4 int64 a row


def _take_over(out: Path, settings: dict[str, Any]) -> tuple[Path, int, _Journal] | None:
    """The hidden folders that interrupted or killed writes of `out` left beside it (named
    `.OUT.tmp-<32 hex>`, holding nothing but files a write makes, and not locked by a write
    still running: each holds a lock on its folder): the one whose journal has these settings
    (the furthest, if several do) is returned with its lock held, to be continued; the others
    are removed. One whose journal has other settings is an error (FileExistsError naming
    them), raised before anything is removed. A StaleWriteWarning names each folder removed, and
    each such name kept because it holds anything else."""
    name = re.compile(rf"\.{re.escape(out.name)}\.tmp-[0-9a-f]{{32}}")
    try:
        found = [d for d in out.parent.iterdir() if name.fullmatch(d.name) and d.is_dir()
                 and not d.is_symlink()]
    except OSError:
        return None  # a folder whose entries cannot be listed: nothing found to take over
    held: list[tuple[Path, int, _Journal | None]] = []
    try:
        for folder in sorted(found):
            try:
                fd = os.open(folder, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                files = list(folder.iterdir())
            except OSError:
                os.close(fd)
                continue  # another write of OUT is running in it
            other = [f.name for f in files if not (_WRITTEN.fullmatch(f.name) and f.is_file()
                                                   and not f.is_symlink())]
            if other:
                os.close(fd)
                warnings.warn(f"{folder} looks like what an interrupted `zfnet shards --out "
                              f"{out}` leaves, but holds other things too (e.g. {other[0]}): "
                              "kept; remove it if it is one", StaleWriteWarning, stacklevel=3)
                continue
            held.append((folder, fd, _Journal.read(folder)))
        for folder, _, journal in held:
            then = journal.state if journal else None
            if then and (then.get("format") != JOURNAL_FORMAT
                         or _differences(then["settings"], settings)):
                told = (", ".join(_differences(then["settings"], settings))
                        if then.get("format") == JOURNAL_FORMAT
                        else f"a journal of format {then.get('format')!r}")
                raise FileExistsError(
                    f"{folder} holds an interrupted write of {out} with other settings ({told}): "
                    "run the command that started it to continue it, or remove that folder to "
                    "write with these")
        ours = max((h for h in held if h[2]), key=lambda h: h[2].done_images(), default=None)
        for folder, _fd, journal in held:
            if ours and folder == ours[0]:
                continue
            size = sum(f.stat().st_size for f in folder.iterdir())
            shutil.rmtree(folder, ignore_errors=True)
            why = ("that was killed before it finished a shard" if journal is None else
                   f"that stopped before {ours[0].name}, which is continued" if ours else "")
            warnings.warn(f"removed {folder} ({size / 1e6:.1f} MB), left by an earlier write of "
                          f"{out} {why}", StaleWriteWarning, stacklevel=3)
    except BaseException:
        for _, fd, _ in held:
            os.close(fd)
        raise
    for folder, fd, _ in held:
        if not ours or folder != ours[0]:
            os.close(fd)
    if ours is None:
        return None
    try:
        ours[2].continue_here()
    except BaseException:
        os.close(ours[1])
        raise
    return ours[0], ours[1], ours[2]


def _write(journal: _Journal, root: Path, names: list[str],
           splits: dict[str, tuple[list[Path], list[int]]], shard_size: int, quality: int,
           workers: int | None, progress: bool, lock: int | None,
           bases: dict[str, Path]) -> dict[str, Any]:
    """Both splits into the journal's folder; `bases`: the folder under which each split's
    files are named (`imagefolder.split_folders`)."""
    folder, settings = journal.folder, journal.state["settings"]
    resize, square, raw = settings["resize"], settings["square"], settings["raw"]
    if workers is None:
        workers = min(8, usable_cores())  # the cores this process may run on (its affinity)
    side = mean_side(resize)
    manifest: dict[str, Any] = {
        "format": FORMAT, "id": journal.state["id"],
        "source": f"imagefolder:{root.resolve()}", "spec": journal.state["spec"],
        "zfnet": __version__, "created": journal.state["created"], "resize": resize,
        "square": square, "raw": raw, "quality": quality if resize and not raw else None,
        "classes": names, "splits": {},
    }
    for split in SPLITS:
        if split in journal.state["splits"]:  # written before an interrupt
            manifest["splits"][split] = journal.state["splits"][split]
            if split == "train":
                manifest["mean"] = {"file": f"mean-{side}.npy", "full_size": side}
            continue
        paths, labels = splits[split]
        mean_size = side if split == "train" else None
        # where the chunk that held the first image not yet in a shard started: from there on
        closed, rows, first, start, skipped, saved_sum = journal.restore(split)
        chunks = _Chunks(paths[start:], resize, quality, mean_size, square, raw)
        total = None if mean_size is None else torch.zeros(3, side, side, dtype=torch.float64)
        if total is not None and saved_sum is not None:
            total += torch.from_numpy(saved_sum)
        at = {"next": first, "summed": start, "skipped": len(skipped)}
        writer = _SplitWriter(folder, split, shard_size, on_close=functools.partial(
            journal.shard_closed, at=at, skipped=skipped, total=total))
        writer.shards, writer.rows = [dict(s) for s in closed], [tuple(r) for r in rows.tolist()]
        used: set[str] = set()
        stored: list[tuple[str, Path]] = []  # each sample's key and file, in stored order
        dropped = set(skipped)
        for path in paths[:start]:  # the keys taken before: the same ones again
            if path.relative_to(root).as_posix() not in dropped:
                stored.append((_unique(_key(path.relative_to(bases[split])), used), path))
        loader = Loader(chunks, batch_size=None, num_workers=workers if len(chunks) > 1 else 0,
                        collate_fn=lambda r: r,
                        worker_init_fn=functools.partial(_worker_start, lock, folder))
        bar = progress_bar(total=len(paths), initial=first, desc=f"writing {split}",
                           unit="img", shown=progress)
        try:
            with _batches(loader) as batches:
                for c, result in enumerate(batches):
                    at["summed"], at["skipped"] = start + c * CHUNK, len(skipped)
                    for (path, reason) in result["broken"]:
                        warnings.warn(f"skipping broken image {path}: {reason} (left out of the "
                                      "shards)", BrokenImageWarning, stacklevel=2)
                        skipped.append(Path(path).relative_to(root).as_posix())
                    for j, sample in enumerate(result["stored"]):
                        if sample is None:
                            continue
                        n = start + c * CHUNK + j
                        key = _unique(_key(paths[n].relative_to(bases[split])), used)
                        stored.append((key, paths[n]))
                        if n >= first:  # not in a shard closed before an interrupt
                            at["next"] = n
                            writer.add(key, labels[n], *sample)
                    if total is not None and result["sum"] is not None:
                        total += result["sum"]
                    bar.update(len(result["stored"]) - max(0, min(first - at["summed"], CHUNK)))
        finally:
            bar.close()
            index = writer.finish()
        if not len(index):
            raise ValueError(f"no {split} image of {root} could be decoded (all {len(paths)} "
                             f"skipped as broken, e.g. {paths[0]})")
        np.save(folder / index_name(split), index)
        entry = {"count": len(index), "index": index_name(split), "shards": writer.shards,
                 "skipped": skipped}
        entry.update(_original_names(stored, bases[split]))
        assert len(stored) == len(index), (len(stored), len(index))
        if total is not None:
            np.save(folder / f"mean-{side}.npy", (total / len(index)).to(torch.float32).numpy())
            manifest["mean"] = {"file": f"mean-{side}.npy", "full_size": side}
        journal.split_done(split, entry)
        manifest["splits"][split] = entry
    return manifest


def _check_replaceable(out: Path) -> None:
    """The empty folder `out` can be replaced by the finished write (made beside it, then
    renamed into place): not a mount point, nor a folder that cannot be moved (immutable, a
    parent without write access); tried by moving it and back. Else an error naming a way on."""
    if os.path.ismount(out):
        raise ValueError(f"--out {out} is a mount point: the shards are written beside --out "
                         "and renamed into place, which a mount point cannot take; give a "
                         f"folder inside it, e.g. --out {out / 'shards'}")
    probe = out.parent / f".{out.name}.probe-{uuid.uuid4().hex}"
    try:
        os.rename(out, probe)
    except OSError as e:
        cls = type(e) if type(e) is not OSError else PermissionError
        raise cls(f"--out {out} cannot be replaced by the finished shards ({e.strerror or e}): "
                  "they are written beside it and renamed into place; give a folder that does "
                  f"not exist yet, e.g. --out {out / 'shards'}") from None
    os.rename(probe, out)


@contextlib.contextmanager
def _batches(loader: Loader) -> Iterator[Iterator[Any]]:
    """`loader`'s batches, its workers ended as the block ends, also on an exception. A
    DataLoader ends them when its iterator is collected, which after Ctrl-C can be as late as the
    interpreter's exit, where multiprocessing terminates them with SIGTERM, which writing
    workers ignore (`_worker_start`), and waits for them: for ever. (A signal while the workers
    are forked is held by `Loader`, which ends them before raising it.)"""
    batches = None
    try:
        batches = iter(loader)
        yield batches
    finally:
        end_workers(batches)


def _worker_start(lock: int | None, folder: Path, worker: int) -> None:
    """A writing worker ignores SIGTERM and SIGINT (sent to the whole process group by
    `timeout`, a scheduler, Ctrl-C in a terminal): the main process stops, keeps or removes its
    folder and ends the workers itself (`_batches`; a worker stopped by a signal would make the
    DataLoader raise an error of its own, or wait, also while stopping). It
    closes its copy of the folder's lock: a worker left behind by a main process killed
    outright would keep the folder looking in use (a worker not forked has no such copy). And
    it is killed when the main process dies (Linux): else, after a SIGKILL of the main process,
    the workers can stay, idle, for ever."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    with contextlib.suppress(OSError):
        if lock is not None and os.path.samestat(os.fstat(lock), os.stat(folder)):
            os.close(lock)


def _original_names(stored: Sequence[tuple[str, Path]], split_root: Path) -> dict[str, Any]:
    """A split's manifest entries that name its samples as the folder named their files (a
    figure, topk.json): "suffix", the originals' most common extension (.JPEG; the stored one
    is .jpg or .npy), and "renamed", {row: the file's path in its split} for each sample its
    key and that suffix do not name (a dot in its name, a key made unique, another extension):
    none on ImageNet."""
    names = [(key, path.relative_to(split_root).as_posix()) for key, path in stored]
    if not names:
        return {}
    suffix = Counter(Path(name).suffix for _, name in names).most_common(1)[0][0]
    renamed = {str(row): name for row, (key, name) in enumerate(names) if key + suffix != name}
    return {"suffix": suffix, **({"renamed": renamed} if renamed else {})}


def _unique(key: str, used: set[str]) -> str:
    """`key`, or `key_2`, `key_3`, ... when an earlier file of the split had it (a.jpg and
    a.png, say)."""
    candidate, n = key, 1
    while candidate in used:
        n += 1
        candidate = f"{key}_{n}"
    used.add(candidate)
    return candidate
