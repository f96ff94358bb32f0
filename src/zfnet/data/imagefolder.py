"""ImageNet-layout folders with the paper's preprocessing (Sec. 3).

Layout: `DIR/train/<class>/*.jpg` and `DIR/val/<class>/*.jpg` (sub-folders inside a class
folder and links to folders are searched too; files without an image extension, hidden files
and a zip's `__MACOSX/` are ignored). Class names are the train folder names, sorted; label k
is the k-th name.

Each image: shorter side -> 256, centre 256x256 crop (`full_size`), minus the per-pixel mean
image of the training set; training takes random 224 crops with horizontal flips,
evaluation the centre 224 crop or the 10 crops. Spec options: `size=S` (crop side; the
full size keeps the paper's ratio, round(S * 256 / 224)), `classes=a,b` (names or indices,
relabelled 0..k-1), `per_class=N` (first N training images of each class),
`n_train=N` / `n_val=N` (first N images, taken round-robin over the classes),
`val_labels=FILE` (DIR/val's images in any layout, e.g. ImageNet's flat one, their classes
from FILE: `zfnet.data.labels_file`), `val_split=F` (DIR/<class>/* or DIR/train/<class>/*
with no val/: a share F of each class held out as the val split, `hold_out`).

The mean image is computed once and cached as `.npy` in `cache_dir` where one is given, else in
`DIR/.zfnet-cache/`, or, where DIR is read-only, in `$XDG_CACHE_HOME/zfnet` (default
`~/.cache/zfnet`); a mean cached in any of them is read. The cache
is keyed by the training file list (relative paths and sizes) and the full size, so a
changed dataset gets a new mean.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zfnet.atomic import write_atomic
from zfnet.data.bundle import DataBundle, bundle_geometry, fitted
from zfnet.data.images import (
    IMAGE_EXTENSIONS,
    JPEG_EXTENSIONS,
    PHOTO_EXTENSIONS,
    UNREAD_IMAGE_EXTENSIONS,
    BadImageError,
    UnreadImagesWarning,
    decode_plain_jpeg,
    load_rgb,
    read_file,
    resize_center_crop,
    unread_advice,
    warn_skipped,
)
from zfnet.data.labels_file import labelled_images
from zfnet.data.preprocess import Preprocessing
from zfnet.data.spec import (
    DatasetSpec,
    check_options,
    class_list_option,
    fraction_option,
    int_option,
    nfc,
    with_options,
)
from zfnet.data.subset import select
from zfnet.data.transforms import CropDataset
from zfnet.data.workers import Loader, usable_cores
from zfnet.progress import progress_bar

LAYOUT = "DIR/train/<class>/<image> and DIR/val/<class>/<image> (ImageNet layout)"
PAPER_INPUT, PAPER_FULL = 224, 256
CACHE_VERSION = "zfnet-mean-v1"  # bump when the preprocessing changes


# Folders that never hold a dataset's images: a zip made on a Mac carries `__MACOSX/`, its
# AppleDouble `._name` copies of each file's metadata (hidden files and folders are skipped too).
JUNK_FOLDERS = frozenset({"__MACOSX"})


def _walk(folder: Path) -> Iterator[Path]:
    """Every file (and link to a missing file) under `folder`, hidden ones and junk folders
    left out; links to folders are followed, as torchvision's ImageFolder does, except one to
    a folder that holds the walk's place (a loop, whose files are listed already or are not
    the folder's)."""
    def skip(name: str) -> bool:
        return name.startswith(".") or name in JUNK_FOLDERS

    def loop(real: str, above: set[str]) -> bool:
        return any(a == real or a.startswith(real.rstrip(os.sep) + os.sep) for a in above)

    inside = {folder: {os.path.realpath(folder)}}  # each folder walked: the real paths above it
    for top, dirs, names in os.walk(folder, followlinks=True):
        above = inside.pop(Path(top))
        kept = []
        for d in dirs:
            real = os.path.realpath(os.path.join(top, d))
            if not skip(d) and not loop(real, above):
                kept.append(d)
                inside[Path(top, d)] = above | {real}
        dirs[:] = kept
        yield from (Path(top, n) for n in names if not skip(n))


def image_files(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under `folder` (recursive, through links to folders) of `extensions`
    (torchvision's types; a user's photos: `PHOTO_EXTENSIONS`), sorted, hidden files, `__MACOSX`
    folders and other extensions skipped; images of other types counted in an
    `UnreadImagesWarning`. A link to an image file that does not exist is listed: a broken
    file like any other, named when it is read (`check_link`), skipped or stopped at with
    strict, and counted with the others."""
    files, unread = [], Counter[str]()
    for p in _walk(folder):
        suffix = p.suffix.lower()
        if suffix not in extensions:
            unread.update([suffix] if suffix in UNREAD_IMAGE_EXTENSIONS + PHOTO_EXTENSIONS
                          else [])
            continue
        if p.is_file() or (p.is_symlink() and not p.exists()):
            files.append(p)
    if unread:
        n = sum(unread.values())
        kinds = ", ".join(f"{k}: {c}" for k, c in sorted(unread.items()))
        warnings.warn(f"{folder} holds {n} image file(s) of types not read here ({kinds}), "
                      f"left out; {unread_advice(set(unread), extensions)}",
                      UnreadImagesWarning, stacklevel=2)
    return sorted(files)


def class_folders(folder: Path) -> tuple[list[str], list[str]]:
    """The class names of `folder` (a split) and their folders' names, in torchvision's order
    (sorted), the names composed (a Mac's `café`: `nfc`); hidden and junk folders left out.
    Nothing under them is read: the classes as training numbers them."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory; expected {LAYOUT}")
    folders = sorted(d.name for d in folder.iterdir()
                     if d.is_dir() and not d.name.startswith(".") and d.name not in JUNK_FOLDERS)
    return [nfc(n) for n in folders], folders


def scan_split(
    root: Path, split: str, classes: list[str] | None = None
) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (path, label) samples of `root/split`; errors name the path at fault.

    With `classes` (the train classes) given, a class folder not among them is an error.
    """
    folder = root / split
    names, folders = class_folders(folder)
    if not names:
        flat = "; for a flat val folder (ImageNet's), give its labels file: " \
            "imagefolder:DIR?val_labels=FILE" if split == "val" and image_files(folder) else ""
        raise ValueError(f"{folder} has no class folders; expected {LAYOUT}{flat}")
    if classes is not None:
        extra = [n for n in names if n not in classes]
        if extra:
            raise ValueError(
                f"{folder} has class folder(s) {', '.join(extra)} that {root / 'train'} lacks; "
                f"train classes are: {', '.join(classes)}"
            )
    label_of = {n: i for i, n in enumerate(classes if classes is not None else names)}
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    for name, dirname in zip(names, folders, strict=True):
        files = image_files(folder / dirname)
        if not files:
            empty.append(str(folder / dirname))
        samples.extend((p, label_of[name]) for p in files)
    if empty:
        raise ValueError(
            f"empty class folder(s) with no image files ({', '.join(IMAGE_EXTENSIONS)}): "
            f"{', '.join(empty)}; expected {LAYOUT}"
        )
    return names, samples


def one_class(folder: Path, name: str) -> str:
    """What is wrong with `folder` (a train/) of one class folder, `name`: a classifier trained
    on it learns nothing (0% error); most often its classes are a level down (a zip unpacked
    there)."""
    only = next((d for d in folder.iterdir() if nfc(d.name) == name), folder / name)  # on disk
    inner = sorted(d.name for d in only.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and d.name not in JUNK_FOLDERS)
    below = f"; its folders {', '.join(inner[:5])}{', ...' if len(inner) > 5 else ''} look " \
        f"like the classes: move them up into {folder}" if len(inner) > 1 else ""
    return (f"{folder} has one class folder, {name}: a classifier needs two or more"
            f"{below}; expected {LAYOUT}")


def decode_file(path: Path, min_side: int | None) -> torch.Tensor:
    """`load_rgb(path, min_side=min_side)`'s pixels, (3, H, W) (possibly a view of (H, W, 3)):
    most files are plain JPEGs, which the fast decoder takes (`decode_plain_jpeg`)."""
    if path.suffix.lower() in JPEG_EXTENSIONS:
        img = decode_plain_jpeg(read_file(path), min_side=min_side)
        if img is not None:
            return img
    return load_rgb(path, min_side=min_side)


def unread_classes(paths: Sequence[Path], targets: Sequence[int], min_side: int = 32
                   ) -> dict[int, tuple[int, BadImageError]]:
    """The labels of which no file of `paths` decodes: {label: (its files, the first one's
    error)}. Each label's files are tried in order up to the first that decodes (at a small
    draft scale where a JPEG allows it): one decode a class for a sound folder."""
    by_label: dict[int, list[Path]] = {}
    for path, y in zip(paths, targets, strict=True):
        by_label.setdefault(int(y), []).append(path)
    unread = {}
    for y, files in by_label.items():
        first: BadImageError | None = None
        for path in files:
            try:
                decode_file(path, min_side)
                break
            except BadImageError as e:
                first = first or e
        else:
            unread[y] = (len(files), first)  # type: ignore[assignment]
    return unread


def check_classes_read(train: Dataset, class_names: Sequence[str]) -> None:
    """ValueError naming each class of which no training file of `train` (a `FolderImages`;
    any other dataset passes) can be read: a model trained on it would never see that class,
    as with an empty class folder (an error at once, where broken files are otherwise skipped
    when they are met)."""
    if not isinstance(train, FolderImages):
        return
    unread = unread_classes(train.paths, train.targets)
    if not unread:
        return
    named = ", ".join(
        f"{class_names[y] if 0 <= y < len(class_names) else y} ("
        + (f"its {n} files all broken" if n > 1 else "its one file broken")
        + f", e.g. {e.path}: {e.reason})" for y, (n, e) in sorted(unread.items()))
    many = len(unread) > 1
    raise ValueError(f"no readable training image in class{'es' * many} {named}: a model "
                     f"trained here would never see {'them' if many else 'it'}; fix or remove "
                     "the files, or leave the class out (classes=... in the dataset spec)")


class FolderImages(CropDataset):
    """Image files decoded on demand, preprocessed to uint8 (3, F, F) (or fitted to a model's
    `preprocessing`), cropped per `mode`."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], **kwargs: Any) -> None:
        super().__init__(targets, **kwargs)
        self.paths = list(paths)

    @functools.cached_property
    def _under(self) -> Path | None:
        """The folder every item's file lies under (None: no files, or paths of two kinds)."""
        try:
            return Path(os.path.commonpath(sorted({str(p.parent) for p in self.paths})))
        except ValueError:  # no paths, or absolute and relative ones mixed
            return None

    def short_name(self, i: int) -> str:
        """Item i's file by its path under the folder every item shares (`cat/x.jpg`, not
        `x.jpg`): two files of one name in two subfolders told apart."""
        path = self.paths[i]
        return path.name if self._under is None else path.relative_to(self._under).as_posix()

    def full_image(self, i: int) -> torch.Tensor:
        if self.preprocessing is not None:
            # A model's own preprocessing: decoded at full scale (no `draft`), so that its
            # inputs are the pixels its weights' transforms give (a large JPEG's reduced-scale
            # decode differs by up to ~50 levels at edges).
            return self.preprocessing.fit_full(decode_file(self.paths[i], None))  # (C, F, F)
        img = decode_file(self.paths[i], self.full_size)  # (3, H, W)
        return resize_center_crop(img, self.full_size)  # (3, F, F)

    def read_encoded(self, i: int) -> bytearray:
        return read_file(self.paths[i])

    def item_name(self, i: int) -> str:
        return str(self.paths[i])


class _FullImages(Dataset):
    """Preprocessed full-size images for the mean; (path, reason) for a broken file (`mean_of`
    warns about it)."""

    def __init__(self, paths: Sequence[Path], full_size: int, strict: bool) -> None:
        self.paths, self.full_size, self.strict = list(paths), full_size, strict

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor | tuple[str, str]:
        try:
            img = decode_file(self.paths[i], self.full_size)
        except BadImageError as err:
            if self.strict:
                raise
            return str(err.path), err.reason
        return resize_center_crop(img, self.full_size)  # (3, F, F) uint8


def _sum_batch(batch: list[torch.Tensor | tuple[str, str]]
               ) -> tuple[torch.Tensor | None, int, list[tuple[str, str]]]:
    """(the sum of a batch's images or None, how many, the (path, reason) of its broken
    files)."""
    kept = [b for b in batch if isinstance(b, torch.Tensor)]
    broken = [b for b in batch if not isinstance(b, torch.Tensor)]
    if not kept:
        return None, 0, broken
    return torch.stack(kept).to(torch.float64).sum(0), len(kept), broken  # (3, F, F)


def compute_mean(
    paths: Sequence[Path], full_size: int, *, strict: bool = False, num_workers: int | None = None
) -> torch.Tensor:
    """Per-pixel mean image (paper Sec. 3) of preprocessed images: float32 (3, F, F).

    Broken files are skipped with a warning (or raise with `strict`). Workers decode in
    parallel when there are many files.
    """
    # said: an eval or a look inside a model reads training files for this too
    return mean_of(_FullImages(paths, full_size, strict), full_size, num_workers=num_workers,
                   example=str(paths[0]) if paths else None,
                   doing="while computing the training images' mean image")


LONG_PASS = 2000  # images: a mean image pass over more runs in workers, with a bar


def mean_of(images: Dataset, full_size: int, *, num_workers: int | None = None,
            example: str | None = None, doing: str = "") -> torch.Tensor:
    """Per-pixel mean of a dataset whose items are uint8 (3, F, F) images, or (path, reason)
    for one skipped as broken: float32 (3, F, F). The broken ones are warned about here, in
    this process, `doing` saying what for: a command names each file once, also in the loader
    workers it forks later (`zfnet.cli`), which the workers of this pass could not tell.
    `example` names an image in the error raised when every one was skipped."""
    n = len(images)  # type: ignore[arg-type]
    long = n >= LONG_PASS
    if num_workers is None:  # a one-time pass: every core of this process's share
        num_workers = usable_cores() if long else 0
    loader = Loader(images, batch_size=64, num_workers=num_workers, collate_fn=_sum_batch)
    total = torch.zeros(3, full_size, full_size, dtype=torch.float64)
    count = 0
    # a long pass (ImageNet's 1.28M images: half an hour on 2 cores) is said, with a bar, where
    # it was silent before the first epoch
    with progress_bar(total=n, desc="the training images' mean image (once, then cached)",
                      unit="img", shown=long) as bar:
        for batch_sum, k, broken in loader:
            for path, reason in broken:
                warn_skipped(BadImageError(path, reason), doing)
            if batch_sum is not None:
                total += batch_sum
                count += k
            bar.update(k + len(broken))
    if count == 0:
        raise ValueError(
            f"no training image could be decoded (all {n} skipped as broken"
            + (f", e.g. {example})" if example else ")")
        )
    return (total / count).to(torch.float32)


def mean_cache_key(root: Path, paths: Sequence[Path], full_size: int) -> str:
    """Hash of the training file list (relative paths and sizes; a link to nothing, -1) and
    the preprocessing."""
    h = hashlib.sha256(f"{CACHE_VERSION}|{full_size}".encode())
    for p in paths:
        size = p.stat().st_size if p.exists() else -1  # the link's file made: computed again
        # any bytes a name holds (a name that is no UTF-8, from an old archive)
        h.update(os.fsencode(f"|{p.relative_to(root).as_posix()}|{size}"))
    return h.hexdigest()[:20]


def _cache_dirs(root: Path, cache_dir: str | Path | None) -> list[tuple[Path, bool]]:
    """Candidate cache folders, best first (a `cache_dir` given first, then `root`'s own);
    the flag says whether the key must include root."""
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    dirs = [(root / ".zfnet-cache", False)]
    if cache_dir is not None:
        dirs.insert(0, (Path(cache_dir), True))
    dirs.append((Path(xdg) / "zfnet", True))
    return dirs


def _cache_name(key: str, root: Path, full_size: int, outside: bool) -> str:
    if outside:  # a cache shared by several datasets: tell them apart by their location
        key = hashlib.sha256(os.fsencode(f"{key}|{root.resolve()}")).hexdigest()[:20]
    return f"mean-{full_size}-{key}.npy"


def load_or_compute_mean(
    root: Path,
    paths: Sequence[Path],
    full_size: int,
    *,
    strict: bool = False,
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """The training set's mean image, from the cache if present, else computed and cached."""
    key = mean_cache_key(root, paths, full_size)
    return cached_mean(root, key, full_size,
                       lambda: compute_mean(paths, full_size, strict=strict), cache_dir=cache_dir)


def cached_mean(root: Path, key: str, full_size: int, compute: Callable[[], torch.Tensor], *,
                cache_dir: str | Path | None = None) -> torch.Tensor:
    """The mean image cached under `key` for the dataset at `root` (in `cache_dir` where given,
    `root/.zfnet-cache/`, or $XDG_CACHE_HOME/zfnet), else `compute()`d and cached in the first
    of those places that is writable."""
    candidates = [(d / _cache_name(key, root, full_size, out)) for d, out in
                  _cache_dirs(root, cache_dir)]
    mean = _read_cached(candidates, full_size)
    if mean is not None:
        return mean
    with _one_at_a_time(candidates):  # the ranks of a torchrun: one computes, the rest read
        mean = _read_cached(candidates, full_size)
        if mean is not None:
            return mean
        mean = compute()
        for path in candidates:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # atomic (a reader never sees half a file), with the umask's mode: a mean
                # cached in a shared dataset folder is every user's, not mkstemp's 0600
                array = mean.numpy()
                write_atomic(path, lambda f, a=array: np.save(f, a))
                return mean
            except OSError:
                continue  # read-only: try the next place
    warnings.warn(
        f"could not cache the mean image in any of {', '.join(str(c.parent) for c in candidates)}",
        stacklevel=2,
    )
    return mean


def _read_cached(candidates: Sequence[Path], full_size: int) -> torch.Tensor | None:
    """The first readable cached mean of the right shape among `candidates`, or None."""
    for path in candidates:
        if path.is_file():
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                continue  # a damaged cache file is recomputed
            if arr.shape == (3, full_size, full_size):
                return torch.from_numpy(arr.astype(np.float32))
    return None


@contextmanager
def _one_at_a_time(candidates: Sequence[Path]) -> Iterator[None]:
    """Hold an exclusive lock (`fcntl.flock`) on `NAME.lock` beside the first candidate where
    one can be made, so that processes needing the same mean at once (a torchrun's ranks on one
    machine, each with its workers) compute it once: the others wait, then read its file. No
    lock where none can be made (every place read-only) or on a system without fcntl."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - held across the yield
        except OSError:
            continue
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
        return
    yield


Selection = tuple[list[Path], list[int]]  # image files and their labels


def select_folder(spec: DatasetSpec, raw_spec: str = "", *, val_only: bool = False,
                  read_train: bool = True
                  ) -> tuple[Path, dict[str, Any], list[str], Selection, Selection]:
    """The images `imagefolder:DIR?options` names: (DIR, its parsed options, the class names
    kept, (train files, labels), (val files, labels)), the options' subsets taken (`classes=`,
    `per_class=`, `n_train=`, `n_val=`) in the loader's order; errors name what is wrong.
    `val_only`: a DIR without train/ is a labelled test set alone (its classes those of val/,
    no training images). `read_train` False (with `val_only`: a command that reads the val
    split alone): train/ gives the class names only, its files not listed (no training
    images), so that its problems (an empty class folder, files of types not read) are not
    this command's."""
    if spec.path is None:
        raise ValueError(f"imagefolder needs a directory: imagefolder:DIR with {LAYOUT}")
    root = Path(spec.path).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"image folder {root} {what}; expected {LAYOUT}")
    if not (root / "train").exists() and (root / "manifest.json").is_file():
        raise FileNotFoundError(f"{root} holds shards (its manifest.json), not an image folder: "
                                f"give shards:{spec.path}")
    share = fraction_option(spec.options["val_split"], "val_split") \
        if "val_split" in spec.options else None
    classes_here = not (root / "train").exists() and not (root / "val").exists() and any(
        d.is_dir() and image_files(d) for d in root.iterdir())
    if share is not None:
        return _held_out(spec, raw_spec, root, share, classes_here)
    if classes_here:
        raise FileNotFoundError(
            f"{root} holds class folders but no train/ or val/; expected {LAYOUT}: to hold "
            f"out a share of each class's images as the val split, give {_split(spec, raw_spec)} "
            f"(a fifth, the same images at every run); "
            f"for a labelled test set alone, put the class folders in DIR/val and give DIR")
    if not (root / "train").exists() and not (root / "val").exists() and image_files(root):
        raise FileNotFoundError(
            f"{root} holds images but no class folders (train/, val/): imagefolder: is "
            f"labelled, {LAYOUT}; a labelled test set alone is DIR/val/<class>/<image>. For "
            f"the images as they are: images:{spec.path} (unlabelled), or `zfnet predict "
            f"{spec.path}`")
    no_train = not (root / "train").exists() and (root / "val").is_dir()
    if no_train and not val_only:
        raise FileNotFoundError(
            f"{root} has val/ but no train/; expected {LAYOUT}. A labelled test set alone "
            "(DIR/val/<class>/*) is read for a model with its own preprocessing (--model "
            "SOURCE), not for training or for a zfnet run, whose inputs are minus the mean "
            "image of its training images")
    skip_train = no_train or (val_only and not read_train)
    if no_train:
        all_names, train_samples = scan_split(root, "val")[0], []
    elif skip_train:  # numbered as training numbers them: every class folder of train/
        all_names, train_samples = class_folders(root / "train")[0], []
    else:
        all_names, train_samples = scan_split(root, "train")
        if len(all_names) == 1 and not val_only:
            raise ValueError(one_class(root / "train", all_names[0]))
    opts = _options(spec, all_names)
    if "val_labels" in opts:  # a flat val folder, its classes in a file (ImageNet's)
        if not (root / "val").is_dir():
            raise FileNotFoundError(f"{root / 'val'} is not a directory; expected {LAYOUT}")
        val_samples = labelled_images(root / "val", opts["val_labels"],
                                      image_files(root / "val"), all_names)
    else:
        if not (root / "val").exists() and not no_train:
            raise FileNotFoundError(
                f"{root / 'val'} is not a directory; expected {LAYOUT}: to hold out a share "
                f"of each class's training images as the val split, give "
                f"{_split(spec, raw_spec)} (a fifth, the same images at every run)")
        _, val_samples = scan_split(root, "val", all_names)
    return _picked(raw_spec, root, opts, all_names, train_samples, val_samples, skip_train)


def _split(spec: DatasetSpec, raw_spec: str) -> str:
    """The spec given with `val_split=0.2`, as an error offers it."""
    return with_options(raw_spec or f"imagefolder:{spec.path}", val_split=0.2)


def _options(spec: DatasetSpec, all_names: list[str]) -> dict[str, Any]:
    """imagefolder's options parsed (`classes` against the class names)."""
    return check_options(spec, IMAGEFOLDER_OPTIONS | {
        "classes": lambda v, k: class_list_option(v, all_names, k),
        "val_labels": lambda v, k: Path(v).expanduser(),
        "val_split": fraction_option})


def _picked(raw_spec: str, root: Path, opts: dict[str, Any], all_names: list[str],
            train_samples: list[tuple[Path, int]], val_samples: list[tuple[Path, int]],
            skip_train: bool) -> tuple[Path, dict[str, Any], list[str], Selection, Selection]:
    """`select_folder`'s answer: the options' subsets of the samples taken."""
    classes = opts.get("classes")
    names = [all_names[c] for c in classes] if classes is not None else all_names

    def pick(samples: list[tuple[Path, int]], first: int | None, per_class: int | None):
        idx, targets = select([y for _, y in samples], classes=classes, per_class=per_class,
                              first=first, round_robin=True)
        return [samples[i][0] for i in idx], targets

    train = pick(train_samples, opts.get("n_train"), opts.get("per_class"))
    val = pick(val_samples, opts.get("n_val"), None)
    if (not train[0] and not skip_train) or not val[0]:
        raise ValueError(f"dataset spec {raw_spec!r} selects no training or no val images")
    return root, opts, names, train, val


def _held_out(spec: DatasetSpec, raw_spec: str, root: Path, share: float, classes_here: bool
              ) -> tuple[Path, dict[str, Any], list[str], Selection, Selection]:
    """`select_folder` for `val_split=share`: DIR's class folders (or DIR/train's), a share of
    each class's images held out as the val split (`hold_out`)."""
    if (root / "val").exists():
        raise ValueError(f"{root} has val/ already: val_split holds out images of a folder "
                         f"without one (DIR/<class>/<image>, or DIR/train/<class>/<image>); "
                         f"drop val_split from {raw_spec!r} to score on {root / 'val'}")
    if not classes_here and not (root / "train").is_dir():
        raise FileNotFoundError(f"{root} holds no class folders to split; val_split takes "
                                "DIR/<class>/<image> or DIR/train/<class>/<image>")
    folder = split_folders(root, spec.options)["train"]
    all_names, samples = scan_split(folder.parent, folder.name)
    if len(all_names) == 1:
        raise ValueError(one_class(folder, all_names[0]))
    opts = _options(spec, all_names)
    if "val_labels" in opts:
        raise ValueError(f"val_labels and val_split in {raw_spec!r}: val_labels names the "
                         "classes of DIR/val's images, val_split holds out images of a folder "
                         "without val/; give one")
    train_samples, val_samples = hold_out(samples, share, folder)
    return _picked(raw_spec, root, opts, all_names, train_samples, val_samples, False)


def split_folders(root: Path, opts: Mapping[str, Any]) -> dict[str, Path]:
    """The folder each split's files lie under (what names them: a shard's key, a figure's
    file name): DIR/train and DIR/val; with `val_split` (in the spec's options, parsed or not),
    the one folder split (DIR/train, or DIR of class folders) for both."""
    if "val_split" not in opts:
        return {"train": root / "train", "val": root / "val"}
    folder = root / "train" if (root / "train").is_dir() else root
    return {"train": folder, "val": folder}


def hold_out(samples: Sequence[tuple[Path, int]], share: float, folder: Path
             ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(train, val) of `samples` ((path, label), the files under `folder`): of each class, a
    `share` of its images held out as val (rounded; at least one of a class of two or more,
    never all of them), chosen by a hash of each file's path under `folder` — the same split at
    every run, on every machine, wherever DIR is; a file added to a class moves at most one
    other of it (at the share's boundary). Both keep `samples`' order."""
    by_class: dict[int, list[int]] = {}
    for i, (_, y) in enumerate(samples):
        by_class.setdefault(y, []).append(i)

    def rank(i: int) -> str:  # the name composed (a Mac's café), any bytes a name holds
        name = nfc(samples[i][0].relative_to(folder).as_posix())
        return hashlib.sha256(os.fsencode(name)).hexdigest()

    held: set[int] = set()
    for idx in by_class.values():
        n = len(idx)
        k = min(n - 1, max(1 if n >= 2 else 0, round(share * n)))
        held.update(sorted(idx, key=rank)[:k])
    return ([s for i, s in enumerate(samples) if i not in held],
            [s for i, s in enumerate(samples) if i in held])


# imagefolder's spec options (and `classes`, parsed against the class names).
IMAGEFOLDER_OPTIONS: dict[str, Callable[[str, str], Any]] = {
    "size": lambda v, k: int_option(v, k, minimum=8),
    "n_train": int_option,
    "n_val": int_option,
    "per_class": lambda v, k: int_option(v, k, minimum=1),
}


def load_imagefolder(
    spec: DatasetSpec,
    *,
    ten_crop: bool = False,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    raw_spec: str = "",
    preprocessing: Preprocessing | None = None,
    outline: bool = False,
    mean_image: torch.Tensor | None = None,
    mean_input: int | None = None,
    read_train: bool = True,
) -> DataBundle:
    """Build the `DataBundle` for `imagefolder:DIR` (paper Sec. 3 preprocessing, or the
    model's `preprocessing`: then no mean image is computed, and DIR may hold val/ alone, a
    labelled test set to score a model on or look inside it with). `outline`: no mean image
    either (zeros; `bundle.outline`; `bundle.with_mean_image()` makes it from the files
    listed), for the checks made before that pass. `mean_image`: a zfnet run's (`load_dataset`),
    subtracted instead of DIR's own (none computed; DIR may hold val/ alone), for inputs of
    `mean_input` px (the run's). `read_train` False: no training images where none are needed
    for a mean image (`select_folder`)."""
    mean_image = None if preprocessing is not None else mean_image
    root, opts, names, (train_paths, train_y), (val_paths, val_y) = select_folder(
        spec, raw_spec, val_only=preprocessing is not None or mean_image is not None,
        read_train=read_train)
    check_no_size(opts, preprocessing, raw_spec)
    input_size = opts.get("size", PAPER_INPUT)
    full_size = round(input_size * PAPER_FULL / PAPER_INPUT)
    make_mean = None
    if mean_image is not None:
        input_size, full_size = given_mean_sizes(mean_image, opts, raw_spec, mean_input)
        common = dict(mean=mean_image, input_size=input_size, classes=names, strict=strict)
        mean = mean_image
    elif preprocessing is None:
        make_mean = functools.partial(load_or_compute_mean, root, train_paths, full_size,
                                      strict=strict, cache_dir=cache_dir)
        mean = torch.zeros(3, full_size, full_size) if outline else make_mean()
        common = dict(mean=mean, input_size=input_size, classes=names, strict=strict)
    else:
        mean = preprocessing.full_mean()
        common = dict(classes=names, strict=strict, **fitted(preprocessing))
    return DataBundle(
        spec=raw_spec,
        train=FolderImages(train_paths, train_y, mode="train", **common),
        val=FolderImages(val_paths, val_y, mode="ten_crop" if ten_crop else "centre", **common),
        num_classes=len(names),
        class_names=names,
        **bundle_geometry(preprocessing, in_channels=3, input_size=input_size,
                          full_size=full_size, mean=mean),
        make_mean=make_mean if outline else None,
    )


def given_mean_sizes(mean_image: torch.Tensor, opts: dict[str, Any], raw_spec: str,
                     run_input: int | None = None) -> tuple[int, int]:
    """(input_size, full_size) for a folder or shards given a zfnet run's mean image (C, F, F)
    instead of their own: the run's input size `run_input` (None: the paper's 224 of 256 of
    F) where the spec gives no `size=`; a `size=` of other inputs is a ValueError naming the
    run's. (A run on synthetic data has 36 px of mean for 32 px inputs, not the paper's
    ratio: its input size is the run's own, not one read from F.)"""
    full = int(mean_image.shape[-1])
    known = run_input is not None and 0 < run_input <= full
    run_input = run_input if known else round(full * PAPER_INPUT / PAPER_FULL)
    size = opts.get("size", run_input)
    if (size != run_input) if known else round(size * PAPER_FULL / PAPER_INPUT) != full:
        raise ValueError(f"size={size} in dataset spec {raw_spec!r}: the run's inputs are "
                         f"{run_input} px, minus its own mean image ({full}x{full}); give "
                         f"size={run_input}, or no size")
    return size, full


def check_no_size(opts: dict[str, Any], preprocessing: Preprocessing | None,
                  raw_spec: str) -> None:
    """A model's preprocessing sets the crop: `size=` would be silently overruled (the same
    size as its crop is taken: it says what the model does)."""
    if preprocessing is not None and "size" in opts and opts["size"] != preprocessing.crop:
        raise ValueError(
            f"option size={opts['size']} in dataset spec {raw_spec!r} does not apply: the "
            f"model's preprocessing sets the input ({preprocessing.crop} px crops of "
            f"{preprocessing.resize} px); change it with --crop/--resize")
