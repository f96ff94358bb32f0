"""A user's own images: `images:DIR` (any folder of images) and image files given one by one.

`images:DIR` takes every image file under DIR (sub-folders too; hidden files and files without
an image extension are skipped; a file reached twice, through a link to a folder of the tree,
is taken once; besides torchvision's types, `.jfif`, GIF, AVIF and, with pillow-heif, a phone's
HEIC are read; RAW files and others not read are counted in an `UnreadImagesWarning`), in
sorted path order. There are no labels (every target is -1,
`class_names` is empty) and no train/val layout: `train` and `val` hold the same images. Loaded
for a model (`preprocessing`), the images become that model's inputs; without one, the paper's
pipeline as for `imagefolder` (256 -> 224 crops minus the folder's mean image, cached). Options:
`size=S` (crop side, without a model's preprocessing), `n=N` (the first N images).

`load_images(paths_or_spec, preprocessing)` is the same for files named one by one (or a folder,
or a dataset spec), as `zfnet project IMAGE...` takes them. Broken files are skipped with a
warning naming them, or raise `BadImageError` with `strict=True`, as everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from zfnet.data.bundle import DataBundle, bundle_geometry, fitted
from zfnet.data.imagefolder import (
    PAPER_FULL,
    PAPER_INPUT,
    FolderImages,
    check_no_size,
    image_files,
    load_or_compute_mean,
)
from zfnet.data.images import PHOTO_EXTENSIONS
from zfnet.data.preprocess import Preprocessing
from zfnet.data.spec import DatasetSpec, check_options, int_option
from zfnet.data.transforms import CropDataset

UNLABELLED = -1  # the target of an image without a label
FORM = "images:DIR (any folder of image files, searched recursively)"


def folder_images(folder: str | Path) -> list[Path]:
    """The image files under `folder` (recursive, sorted); a clear error when it is missing, not
    a folder, or holds none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"image folder {root} {what}; expected {FORM}")
    # each file once: a link to a folder of the same tree (photos/best -> photos/2024), or a
    # photo hard-linked into two albums, would list it twice, and a top 9 show it twice
    by_file: dict[object, Path] = {}  # the file's own path where the tree holds it, else the first
    real_root = os.path.realpath(root)  # (DIR itself may be reached through a link: /home)

    def own(f: Path) -> bool:  # no link on the way from DIR to the file
        return os.path.join(real_root, os.path.relpath(f, root)) == os.path.realpath(f)

    def same_file(f: Path) -> object:  # the file itself: its device and inode, where known
        try:
            st = f.stat()
        except OSError:  # listed, then gone or unreadable: named when it is read
            return os.path.realpath(f)
        return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(f)

    for f in image_files(root, PHOTO_EXTENSIONS):
        key = same_file(f)
        kept = by_file.get(key)
        if kept is None or (own(f) and not own(kept)):
            by_file[key] = f
    files = sorted(by_file.values())
    if not files:
        raise ValueError(f"image folder {root} holds no image files "
                         f"({', '.join(PHOTO_EXTENSIONS)}); expected {FORM}")
    return files


OPTIONS = {"size": lambda v, k: int_option(v, k, minimum=8),  # images:DIR's, photos'
           "n": lambda v, k: int_option(v, k, minimum=1)}


def load_images_dir(
    spec: DatasetSpec,
    *,
    ten_crop: bool = False,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    raw_spec: str = "",
    preprocessing: Preprocessing | None = None,
) -> DataBundle:
    """Build the `DataBundle` for `images:DIR`: train = val = every image, no labels."""
    if spec.path is None:
        raise ValueError(f"images needs a directory: {FORM}")
    opts = check_options(spec, OPTIONS, labelled=False)
    check_no_size(opts, preprocessing, raw_spec)
    root = Path(spec.path).expanduser()
    paths = folder_images(root)[:opts.get("n")]
    targets = [UNLABELLED] * len(paths)
    input_size = opts.get("size", PAPER_INPUT)
    full_size = round(input_size * PAPER_FULL / PAPER_INPUT)
    if preprocessing is None:
        mean = load_or_compute_mean(root, paths, full_size, strict=strict, cache_dir=cache_dir)
        common = dict(mean=mean, input_size=input_size, classes=[], strict=strict)
    else:
        mean = preprocessing.full_mean()
        common = dict(classes=[], strict=strict, **fitted(preprocessing))
    return DataBundle(
        spec=raw_spec,
        train=FolderImages(paths, targets, mode="train", **common),
        val=FolderImages(paths, targets, mode="ten_crop" if ten_crop else "centre", **common),
        num_classes=0,
        class_names=[],
        **bundle_geometry(preprocessing, in_channels=3, input_size=input_size,
                          full_size=full_size, mean=mean),
    )


def image_sources(images: str | Path | Sequence[str | Path]) -> str | list[Path]:
    """What `load_images` reads, found without opening an image (commands check it before
    loading a model): a dataset spec, given alone, or the image files (folders listed,
    recursively). A path that does not exist is a FileNotFoundError naming it; a spec among
    other images, or nothing at all, a ValueError."""
    from zfnet.data import DATASETS

    items = [images] if isinstance(images, (str, Path)) else list(images)
    if not items:
        raise ValueError("no image given: name image files, a folder or a dataset spec")

    def spec_name(item: str | Path) -> str:
        return str(item).partition("?")[0].partition(":")[0].strip().lower()

    specs = [i for i in items if isinstance(i, str) and spec_name(i) in DATASETS
             and not Path(i).expanduser().exists()]
    if specs and len(items) == 1:
        return specs[0]
    if specs:
        raise ValueError(f"{specs[0]} is a dataset spec, and a spec is read alone: give it as "
                         "the only IMAGE, or image files and folders without it")
    paths: list[Path] = []
    for item in items:
        if isinstance(item, str) and "://" in item:  # Path() would make https:// https:/
            raise FileNotFoundError(f"image {item} is a web address; zfnet reads image files "
                                    "on this computer: download it, then give its path")
        path = Path(item).expanduser()
        if path.is_dir():
            paths += folder_images(path)
        elif path.exists() or path.is_symlink():  # a link to nothing: a broken file, named
            paths.append(path)                     # when read, as a folder's are
        elif ":" in str(item) and not Path(str(item).partition(":")[0]).exists():
            raise FileNotFoundError(
                f"{item} is neither an image file nor a dataset spec ({spec_name(item)} is "
                f"not one of {', '.join(DATASETS)})")
        else:
            raise FileNotFoundError(f"image {path} does not exist; give image files, a folder "
                                    f"of images or a dataset spec such as {FORM}")
    return paths


def load_images(
    images: str | Path | Sequence[str | Path],
    preprocessing: Preprocessing,
    *,
    strict: bool = False,
    ten_crop: bool = False,
) -> CropDataset:
    """Images as one model's inputs: a file, several files, a folder (its images, recursive) or
    a dataset spec (`images:DIR`, `synthetic`, ...: its val split). Items are (x, -1) centre
    crops, x float32 (C, crop, crop), or with `ten_crop` the paper's 10 crops (10, C, crop,
    crop), and `raw(i)` the uint8 pixels the model sees; files in the order given. Errors as
    `image_sources`'s."""
    from zfnet.data import load_dataset

    found = image_sources(images)
    if isinstance(found, str):
        return load_dataset(found, strict=strict, preprocessing=preprocessing,
                            ten_crop=ten_crop, read_train=False).val
    return FolderImages(found, [UNLABELLED] * len(found),
                        mode="ten_crop" if ten_crop else "centre", classes=[], strict=strict,
                        **fitted(preprocessing))
