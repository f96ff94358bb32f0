"""Datasets named by a spec string, in the paper's input convention (Sec. 3).

    data = load_dataset("synthetic")                       # or "fashion-mnist", "imagefolder:DIR"
    loader = DataLoader(data.train, batch_size=128, shuffle=True, collate_fn=collate)

Spec strings: `NAME[:PATH][?key=value&...]`. Every model input is 0..255 minus the matching
crop of the training set's per-pixel mean image (no /255): roughly zero-centred, std ~60.
Loaded for a model (`preprocessing=`, `zfnet.data.preprocess.Preprocessing`), every dataset
yields that model's inputs instead: images fitted to its channels and sizes, normalised by its
mean and std (torchvision's `(x/255 - mean) / std`, say).
Training items are random crops with horizontal flips; val items the centre crop or, with
`ten_crop=True`, (10, C, S, S): the 4 corners and the centre, each also flipped.

Datasets (`DATASETS`):
- `synthetic` — built in, no files: 10 shape classes at 64 px with object and part masks
  (`data.val.sample(i)`, see `zfnet.data.synthetic`).
- `fashion-mnist[:DIR]` — the four IDX .gz files (default /usr/share/datasets/fashion-mnist).
- `imagefolder:DIR` — DIR/train/<class>/*, DIR/val/<class>/*, the paper's 256/224 pipeline.
- `shards:OUT` — an image folder written as webdataset tar shards by `zfnet shards`
  (`zfnet.data.shards`): the same items, training streamed shard by shard.
- `images:DIR` — any folder of images, no labels (-1), train = val = all of them
  (`zfnet.data.imagedir`; `load_images` takes files one by one).
- `sample-photos` — the 6 built-in photos (scikit-image's, scikit-learn's) as `images:DIR` of files
  written once into zfnet's cache (`zfnet.data.photos`): a first look without photos of one's own.

Every labelled dataset also takes `random_labels=SEED`: its training labels permuted
(`zfnet.data.relabel`, for the data randomisation test), the val labels kept; and
`words=FILE`: its classes' words, shown beside their IDs (`zfnet.data.words`: ImageNet's
WNIDs, from the devkit or Kaggle's LOC_synset_mapping.txt).

Broken image files are skipped with a `BrokenImageWarning` naming the file (the item is
None and `collate` drops it), or raise `BadImageError` naming it with `strict=True`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from zfnet.data.bundle import DataBundle
from zfnet.data.fashion_mnist import load_fashion_mnist
from zfnet.data.imagedir import image_sources, load_images, load_images_dir
from zfnet.data.imagefolder import load_imagefolder
from zfnet.data.images import BadImageError, BrokenImageWarning, UnreadImagesWarning, load_rgb
from zfnet.data.photos import load_photos_dataset
from zfnet.data.preprocess import Preprocessing
from zfnet.data.relabel import OPTION as RANDOM_LABELS
from zfnet.data.relabel import with_random_labels
from zfnet.data.shards import load_shards
from zfnet.data.spec import DatasetSpec, int_option, parse_spec
from zfnet.data.synthetic import SyntheticDataset, SyntheticSample, load_synthetic
from zfnet.data.transforms import CropDataset, collate, ten_crop
from zfnet.data.words import OPTION as WORDS
from zfnet.data.words import class_words

DATASETS: dict[str, str] = {
    "synthetic": "built-in shapes with part masks; options n_train, n_val, seed, size, "
    "classes, per_class",
    "fashion-mnist": "fashion-mnist[:DIR]; options n_train, n_val, classes, per_class",
    "imagefolder": "imagefolder:DIR (DIR/train/<class>/*, DIR/val/<class>/*); options size, "
    "n_train, n_val, classes, per_class, val_labels (a file of the val images' classes, for a "
    "flat DIR/val)",
    "images": "images:DIR (any folder of images, recursive, no labels); options size, n",
    "sample-photos": "the 6 built-in photos (scikit-image's and scikit-learn's), no labels; "
    "options size, n",
    "shards": "shards:OUT (written by `zfnet shards imagefolder:DIR --out OUT`); options as "
    "imagefolder's but val_labels, and shuffle (each training worker's shuffle buffer, "
    "default 1000)",
}


def list_datasets() -> list[str]:
    """Names accepted as the NAME part of a spec."""
    return list(DATASETS)


def _folder_hint(spec: str) -> str:
    """Where a spec is a bare folder: which spec reads it; where it is a file: that a dataset
    is a folder ("" otherwise)."""
    folder = Path(spec.partition("?")[0]).expanduser()
    if folder.is_file():
        return (f"{folder} is a file, and a dataset is a folder: images:{folder.parent} reads "
                f"every image in {folder.parent} (`zfnet project FILE` takes single images); ")
    if not folder.is_dir():
        return ""
    if (folder / "val").is_dir() or (folder / "train").is_dir():
        return f"{folder} is a folder: imagefolder:{folder} reads its train/ and val/ classes; "
    return f"{folder} is a folder: images:{folder} reads every image in it; "


def load_dataset(
    spec: str,
    *,
    ten_crop: bool = False,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    preprocessing: Preprocessing | None = None,
    outline: bool = False,
    mean_image: torch.Tensor | None = None,
    mean_input: int | None = None,
    read_train: bool = True,
) -> DataBundle:
    """Load the dataset named by `spec` (`NAME[:PATH][?key=value&...]`) as a `DataBundle`.

    `ten_crop`: val items are the paper's 10 crops (10, C, S, S) instead of the centre crop.
    `strict`: a broken image file raises `BadImageError` instead of being skipped.
    `cache_dir`: where imagefolder's mean image is cached when its DIR is read-only.
    `preprocessing`: a model's (`zfnet.sources`): items are that model's inputs, whatever the
    dataset's own channels and size; None: the paper's convention with the dataset's mean image.
    `outline`: an imagefolder's classes, sizes and files without its mean image (zeros, and
    `bundle.outline` True; `bundle.with_mean_image()` makes it): what a command checks before
    that pass over every training image; every other dataset loads as usual.
    `mean_image`: a zfnet run's (C, F, F), for its inputs: an imagefolder or shards dataset
    subtracts it instead of its own training images' mean (none computed; its input size is
    the run's, `mean_input`, where the spec gives no `size=`; a folder of val/ alone is then
    taken); the other datasets keep their own (the paper's convention for them).
    `read_train` False: for a command that reads the val split alone, an imagefolder given a
    `preprocessing` or `mean_image` lists no training images (train/ gives its classes only:
    its empty folders and unread files are not that command's concern); synthetic given a
    `preprocessing` draws none.
    `random_labels=SEED` (any labelled dataset): the training labels permuted
    (`zfnet.data.relabel`); `words=FILE`: the classes' words (`zfnet.data.words`).
    Unknown names and options raise ValueError listing the valid ones.
    """
    parsed: DatasetSpec = parse_spec(spec)
    # random_labels' seed and the words file: taken here, for every dataset alike
    options = dict(parsed.options)
    shuffle = int_option(options.pop(RANDOM_LABELS), RANDOM_LABELS) \
        if RANDOM_LABELS in options else None
    words = options.pop(WORDS, None)
    if words is not None and not words.strip():
        raise ValueError(f"{WORDS}= is empty in spec {spec!r}; give a file of a class and its "
                         "words a line, or the ILSVRC2012 devkit")
    parsed = DatasetSpec(parsed.name, parsed.path, options)
    if mean_image is not None and mean_image.shape[0] != 3:  # a run on grey images: not RGB's
        mean_image = None
    loaders: dict[str, Callable[..., DataBundle]] = {
        "synthetic": lambda s, **kw: load_synthetic(s, read_train=read_train, **kw),
        "fashion-mnist": load_fashion_mnist,
        "imagefolder": lambda s, **kw: load_imagefolder(s, cache_dir=cache_dir,
                                                        outline=outline, mean_image=mean_image,
                                                        mean_input=mean_input,
                                                        read_train=read_train, **kw),
        "images": lambda s, **kw: load_images_dir(s, cache_dir=cache_dir, **kw),
        "sample-photos": lambda s, **kw: load_photos_dataset(s, cache_dir=cache_dir, **kw),
        "shards": lambda s, **kw: load_shards(s, cache_dir=cache_dir, mean_image=mean_image,
                                              mean_input=mean_input, **kw),
    }
    if parsed.name not in loaders:
        valid = "; ".join(f"{k}: {v}" for k, v in DATASETS.items())
        hint = _folder_hint(spec)  # a path of the user's: what reads it, not a near name
        near = difflib.get_close_matches(parsed.name.lower(), list(loaders), n=1, cutoff=0.6)
        meant = f"did you mean {near[0]}? " if near and not hint else ""
        if meant or hint:  # the way on is said: the names alone, not every one's options
            raise ValueError(f"unknown dataset {parsed.name!r} in spec {spec!r}; {meant}{hint}"
                             f"valid: {', '.join(loaders)}")
        raise ValueError(f"unknown dataset {parsed.name!r} in spec {spec!r}; "
                         f"valid: {valid}; and every labelled one "
                         f"{RANDOM_LABELS}=SEED (its training labels permuted) and {WORDS}=FILE "
                         "(its classes' words)")
    bundle = loaders[parsed.name](parsed, ten_crop=ten_crop, strict=strict, raw_spec=spec,
                                  preprocessing=preprocessing)
    found = class_words(bundle.class_names, words, options.get("val_labels"), repr(bundle.spec))
    if found is not None:
        bundle = replace(bundle, class_words=found)
    return bundle if shuffle is None else with_random_labels(bundle, shuffle, spec)


__all__ = [
    "DATASETS",
    "BadImageError",
    "BrokenImageWarning",
    "CropDataset",
    "DataBundle",
    "Preprocessing",
    "SyntheticDataset",
    "SyntheticSample",
    "UnreadImagesWarning",
    "collate",
    "list_datasets",
    "load_dataset",
    "image_sources",
    "load_images",
    "load_rgb",
    "parse_spec",
    "ten_crop",
]
