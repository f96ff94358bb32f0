"""The classes of a folder's images from a labels file: ImageNet's validation images come as one
flat folder (`val/ILSVRC2012_val_00000001.JPEG`, ...) and their classes in a file of their own.

`imagefolder:DIR?val_labels=FILE` reads DIR/val's images (recursive, any layout) with the
classes FILE gives them, instead of from class folders. FILE is one of:

- Kaggle's `LOC_val_solution.csv` (the ImageNet object localization challenge): a header
  `ImageId,PredictionString`, then one row per image, its class the prediction's first word
  (`ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...`);
- two columns, image and class, separated by a comma or spaces (a header line is allowed):
  the image by its file name, with or without the extension, or its path under DIR/val; the
  class by its name (a DIR/train folder) or its index among the sorted names (0-based: Caffe's
  `val.txt` for ILSVRC-2012, `ILSVRC2012_val_00000001.JPEG 65`);
- the ILSVRC2012 devkit, as its folder or its archive (`ILSVRC2012_devkit_t12.tar.gz`): its
  `data/ILSVRC2012_validation_ground_truth.txt` gives image k (`ILSVRC2012_val_0000000k`) an
  ILSVRC2012 ID a line, which its `data/meta.mat` maps to a class (the synsets without
  children: the 1000 classes, by WNID).

The ground-truth file alone (one number a line) is refused with a message saying to give the
devkit: only its `meta.mat` maps the IDs to classes.

The samples come in the order class folders would give them (by class, then by path), so a
flat folder and its labels make the same dataset as the folder rearranged into classes.
Errors name the file, the line and what is wrong: an unknown class, an image of DIR/val that
FILE does not label, a file that labels none of DIR/val's images. Images FILE labels that
DIR/val lacks (a val tar unpacked in part, or a copy of some of the images) are left out with
a `MissingValImagesWarning` that counts them and names one.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
import warnings
from pathlib import Path

from zfnet.data.images import IMAGE_EXTENSIONS
from zfnet.data.spec import nfc

KAGGLE_HEADER = ("ImageId", "PredictionString")
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"  # in the devkit's data/
META = "meta.mat"
ARCHIVES = (".tar.gz", ".tgz", ".tar")
DEVKIT_PLACES = ("", "data/", "*/data/", "*/*/data/")  # where a devkit folder's files may be


class MissingValImagesWarning(UserWarning):
    """A labels file names images that the val folder lacks: they are left out."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)


def image_name_key(name: str) -> str:
    """An image's name as a labels file may give it: its path without an image extension."""
    name = nfc(name.strip()).replace("\\", "/").removeprefix("./")
    stem, dot, ext = name.rpartition(".")
    return stem if dot and f".{ext.lower()}" in IMAGE_EXTENSIONS else name


def devkit_files(path: Path, option: str = "val_labels") -> tuple[bytes, bytes]:
    """The ground truth's and meta.mat's bytes of the devkit at `path` (a folder or an archive);
    errors begin with the spec `option` it was given as."""
    found: dict[str, bytes] = {}
    if path.is_dir():  # the devkit, its data/ or the folder it was unpacked in: not a walk of
        for name in (GROUND_TRUTH, META):  # a whole tree (a wrong path: ImageNet's 1.28M files)
            hits = [h for pattern in DEVKIT_PLACES for h in sorted(path.glob(pattern + name))]
            if hits:
                found[name] = hits[0].read_bytes()
    else:
        try:
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    name = member.name.rsplit("/", 1)[-1]
                    if name in (GROUND_TRUTH, META) and name not in found and member.isfile():
                        f = tar.extractfile(member)
                        found[name] = f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"{option}: cannot read the archive {path} ({e})") from None
    missing = [n for n in (GROUND_TRUTH, META) if n not in found]
    if missing:
        kits = sorted(p.name for p in path.glob("*devkit*") if p.name.lower().endswith(ARCHIVES)
                      ) if path.is_dir() else []  # the folder it was downloaded to
        raise ValueError(f"{option}: {path} is not the ILSVRC2012 devkit: no "
                         f"{' or '.join(missing)} in it"
                         + (f"; it holds {kits[0]}: give {path / kits[0]}" if kits else ""))
    return found[GROUND_TRUTH], found[META]


def devkit_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, image, WNID) of each line of the devkit's validation ground truth."""
    from scipy.io import loadmat

    truth, meta = devkit_files(path)
    try:
        synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets
                   if int(s["num_children"]) == 0}
    except Exception as e:  # noqa: BLE001 (any malformed meta.mat: named)
        raise ValueError(f"val_labels: the {META} of {path} has no synsets with ILSVRC2012_ID, "
                         f"WNID and num_children ({type(e).__name__}: {e})") from None
    rows = []
    for n, line in enumerate(truth.decode("ascii", "replace").splitlines(), start=1):
        word = line.strip()
        if not word:
            continue
        if not word.isdigit() or int(word) not in wnid_of:
            raise ValueError(f"val_labels: {GROUND_TRUTH} of {path} line {n}: {word!r} is not "
                             f"an ILSVRC2012 ID of a class in its {META}")
        rows.append((n, f"ILSVRC2012_val_{n:08d}", wnid_of[int(word)]))
    return rows


def read_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, image, class) of each labelled line of the labels file (or devkit) at
    `path`."""
    if not path.exists():
        raise FileNotFoundError(f"val_labels: {path} does not exist")
    if path.is_dir() or path.name.lower().endswith(ARCHIVES):
        return devkit_rows(path)
    if path.suffix.lower() == ".mat":
        raise ValueError(f"val_labels: {path} is a MATLAB file, not a labels file; for the "
                         f"devkit's {META}, give the devkit it comes with (its folder or "
                         f"ILSVRC2012_devkit_t12.tar.gz): its {GROUND_TRUTH} gives the images' "
                         "classes")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"val_labels: cannot read {path} as text ({e})") from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    rows: list[tuple[int, str, str]] = []
    if tuple(c.strip() for c in first.split(",")[:2]) == KAGGLE_HEADER:
        for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if n == 1 or not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[1].split():
                raise ValueError(f"val_labels: {path} line {n}: expected ImageId,PredictionString "
                                 f"with the class first; got {','.join(row)!r}")
            rows.append((n, row[0], row[1].split()[0]))
        return rows
    for n, line in enumerate(lines, start=1):
        words = line.replace(",", " ").split()
        if not words:
            continue
        if len(words) == 1:
            raise ValueError(
                f"val_labels: {path} line {n} has one column ({words[0]!r}); give an image and "
                "its class a line (e.g. Kaggle's LOC_val_solution.csv), or, for "
                f"{GROUND_TRUTH}'s ILSVRC2012 IDs, the devkit they come with (its folder or "
                f"ILSVRC2012_devkit_t12.tar.gz): its {META} maps them to classes")
        rows.append((n, words[0], words[1]))
    return rows


def image_keys(folder: Path, images: list[Path]) -> dict[str, Path | None]:
    """Each name a file may give one of `images` (files under `folder`) by -> that image: its
    path under `folder` and its file name, each without an image extension
    (`image_name_key`); None for a name two images share."""
    by_key: dict[str, Path | None] = {}
    for p in images:
        rel = p.relative_to(folder).as_posix()
        for key in {image_name_key(rel), image_name_key(p.name)}:
            by_key[key] = p if by_key.get(key, p) == p else None
    return by_key


def labelled_images(folder: Path, labels: Path, images: list[Path],
                    classes: list[str]) -> list[tuple[Path, int]]:
    """(path, label) of each of `images` (the image files under `folder`, sorted) with its class
    from the labels file `labels` (see the module), labels indexing `classes`; in the order
    class folders would give: by label, then by path."""
    by_key = image_keys(folder, images)
    label_of = {name: k for k, name in enumerate(classes)}
    found: dict[Path, int] = {}
    absent: list[str] = []  # labelled images the folder lacks
    rows = read_rows(labels)
    for i, (n, image, cls) in enumerate(rows):
        key = image_name_key(image)
        if key not in by_key:  # an image not in the folder (a subset), or a header line
            if i > 0 or nfc(cls) in label_of or cls.isdigit():
                absent.append(image)
            continue
        path = by_key[key]
        if path is None:
            raise ValueError(f"val_labels: {labels} line {n}: {image!r} names more than one "
                             f"image of {folder}; give its path under {folder}")
        if nfc(cls) in label_of:
            label = label_of[nfc(cls)]
        elif cls.isdigit() and int(cls) < len(classes):
            label = int(cls)
        else:
            shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
            raise ValueError(f"val_labels: {labels} line {n}: class {cls!r} is not one of the "
                             f"{len(classes)} training classes ({shown}) nor an index "
                             f"0..{len(classes) - 1} of them")
        if found.setdefault(path, label) != label:
            raise ValueError(f"val_labels: {labels} line {n} labels {image!r} again, with "
                             "another class")
    if not found:
        classes_first = next((r for r in rows if nfc(r[1]) in label_of), None)
        raise ValueError(f"val_labels: {labels} labels none of the {len(images)} images in "
                         f"{folder} (e.g. {images[0].name if images else 'none there'})" + (
                             f"; its line {classes_first[0]} begins with a class, "
                             f"{classes_first[1]!r}: a labels file gives an image, then its class "
                             "(Kaggle's LOC_val_solution.csv, not LOC_synset_mapping.txt)"
                             if classes_first else ""))
    missing = [p for p in images if p not in found]
    if missing:
        raise ValueError(f"val_labels: {labels} has no class for {len(missing)} of the "
                         f"{len(images)} images in {folder}, e.g. {missing[0].name}")
    absent = list(dict.fromkeys(absent))
    if absent and os.environ.get("RANK", "0") == "0":  # under torchrun, said once, not by each
        warnings.warn(f"val_labels: {labels} labels {len(absent) + len(found)} images; "
                      f"{len(absent)} of them {'is' if len(absent) == 1 else 'are'} not in "
                      f"{folder} (e.g. {absent[0]}): only the "
                      f"{len(found)} there are used", MissingValImagesWarning, stacklevel=2)
    return sorted(found.items(), key=lambda item: (item[1], item[0]))
