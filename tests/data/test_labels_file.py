"""labels_file: a flat val folder (ImageNet's) with its classes in a labels file (or the
ILSVRC2012 devkit) gives the same dataset as the folder arranged in classes, in every accepted
format; every bad file is named."""

from __future__ import annotations

import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.ilsvrc import write_devkit
from zfnet.data import load_dataset
from zfnet.data.labels_file import MissingValImagesWarning, labelled_images
from zfnet.data.shard_writer import write_shards
from zfnet.data.shards import read_manifest

CLASSES = ("n01440764", "n01443537", "n01484850")  # sorted, as ImageNet's wnids
SPEC = "size=16"


def _classed(root: Path) -> Path:
    """3 classes x 2 training images, and 5 val images in class folders, named as ImageNet's."""
    rng = np.random.default_rng(0)
    k = 0
    for split, counts in (("train", (2, 2, 2)), ("val", (2, 1, 2))):
        for cls, n in zip(CLASSES, counts, strict=True):
            (root / split / cls).mkdir(parents=True)
            for _ in range(n):
                k += 1
                name = f"ILSVRC2012_val_{k:08d}.JPEG" if split == "val" else f"{cls}_{k}.JPEG"
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    root / split / cls / name, quality=95)
    return root


@pytest.fixture(scope="module")
def classed(tmp_path_factory) -> Path:
    return _classed(tmp_path_factory.mktemp("labels") / "classed")


def _flat(classed: Path, out: Path) -> list[tuple[str, int]]:
    """`classed` with its val images in one folder; (file name, label) of each, in order."""
    shutil.copytree(classed / "train", out / "train")
    (out / "val").mkdir()
    truth = []
    for label, cls in enumerate(CLASSES):
        for p in sorted((classed / "val" / cls).iterdir()):
            shutil.copy(p, out / "val" / p.name)
            truth.append((p.name, label))
    return truth


FORMATS = {
    "kaggle": lambda t: "ImageId,PredictionString\n" + "".join(
        f"{n.removesuffix('.JPEG')},{CLASSES[y]} 1 2 30 40 {CLASSES[y]} 5 6 7 8\n"
        for n, y in reversed(t)),
    "names": lambda t: "".join(f"{n} {CLASSES[y]}\n" for n, y in t),
    "caffe indices": lambda t: "".join(f"{n} {y}\n" for n, y in t),
    "csv with a header": lambda t: "file,label\n" + "".join(
        f"{n.removesuffix('.JPEG')},{CLASSES[y]}\n" for n, y in t),
    "more images than the folder": lambda t: "".join(
        f"{n} {CLASSES[y]}\n" for n, y in t) + "ILSVRC2012_val_00049999.JPEG n01440764\n",
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_flat_val_folder_with_labels_is_the_classed_one(classed, tmp_path, fmt) -> None:
    truth = _flat(classed, tmp_path / "flat")
    labels = tmp_path / "labels.txt"
    labels.write_text(FORMATS[fmt](truth))
    a = load_dataset(f"imagefolder:{classed}?{SPEC}")
    b = load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={labels}")
    assert b.class_names == a.class_names == list(CLASSES)
    assert [p.name for p in b.val.paths] == [p.name for p in a.val.paths]
    assert b.val.targets == a.val.targets == [0, 1, 2, 0, 2]  # round-robin over the classes
    assert torch.equal(b.mean, a.mean)
    for i in range(len(a.val)):
        assert torch.equal(b.val[i][0], a.val[i][0]) and b.val[i][1] == a.val[i][1]
    sub = load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={labels}"
                       "&classes=n01484850")
    assert sub.val.targets == [0, 0] and len(sub.val) == 2


def test_labelled_images_the_val_folder_lacks_are_counted_and_named(classed, tmp_path,
                                                                    monkeypatch) -> None:
    """A val tar unpacked in part (or a copy of some images) is scored on fewer images than
    its labels list: one warning says how many are left out and names one; a full folder, a
    header line, says nothing."""
    truth = _flat(classed, tmp_path / "flat")
    labels = tmp_path / "labels.txt"
    labels.write_text("file,label\n" + FORMATS["names"](truth))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingValImagesWarning)
        load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={labels}")
    (tmp_path / "flat" / "val" / truth[1][0]).unlink()
    with pytest.warns(MissingValImagesWarning, match=rf"labels 5 images; 1 of them is not in "
                      rf".*val \(e\.g\. {truth[1][0]}\): only the 4 there are used"):
        d = load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={labels}")
    assert len(d.val) == 4
    monkeypatch.setenv("RANK", "1")  # torchrun's other processes: said once, by the first
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingValImagesWarning)
        load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={labels}")


def test_paths_under_val_and_nested_folders(classed, tmp_path) -> None:
    flat = tmp_path / "flat"
    shutil.copytree(classed / "train", flat / "train")
    shutil.copytree(classed / "val", flat / "val")  # class folders, labelled by the file
    rows = [f"{p.relative_to(flat / 'val').as_posix()} {CLASSES[-1]}"
            for p in sorted((flat / "val").rglob("*.JPEG"))]
    (tmp_path / "l.txt").write_text("\n".join(rows) + "\n")
    d = load_dataset(f"imagefolder:{flat}?{SPEC}&val_labels={tmp_path / 'l.txt'}")
    assert d.val.targets == [2] * 5  # the file's classes, not the folders'


@pytest.mark.parametrize(("text", "match"), [
    ("ILSVRC2012_val_00000007 n09999999\n", r"line 1: class 'n09999999' is not one of the 3 "
                                             r"training classes .* nor an index 0\.\.2"),
    ("ILSVRC2012_val_00000007 3\n", r"class '3'"),
    ("65\n12\n", r"line 1 has one column .* meta\.mat"),
    ("nothing_here n01440764\n", r"labels none of the 5 images in \S+ \(e\.g\. [^)]*\)$"),
    ("n01440764 tench, Tinca tinca\nn01443537 goldfish\n",  # LOC_synset_mapping.txt
     r"labels none of the 5 images .*; its line 1 begins with a class, 'n01440764': a labels "
     r"file gives an image, then its class \(Kaggle's LOC_val_solution.csv, not "
     r"LOC_synset_mapping.txt\)"),
    ("ILSVRC2012_val_00000007 n01440764\n", r"no class for 4 of the 5 images .* "
                                            r"ILSVRC2012_val_00000008\.JPEG"),
    ("ILSVRC2012_val_00000007 n01440764\nILSVRC2012_val_00000007.JPEG 1\n",
     r"line 2 labels 'ILSVRC2012_val_00000007.JPEG' again, with another class"),
    ("ImageId,PredictionString\nILSVRC2012_val_00000007,\n", r"line 2: expected ImageId,"),
])
def test_bad_labels_files_are_named_with_the_line(classed, tmp_path, text, match) -> None:
    _flat(classed, tmp_path / "flat")
    labels = tmp_path / "bad.txt"
    labels.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={labels}")
    assert str(labels) in str(e.value)


def test_missing_file_ambiguous_names_and_the_flat_folder_hint(classed, tmp_path) -> None:
    _flat(classed, tmp_path / "flat")
    for nope in ("nope.csv", "ILSVRC2012_devkit_t12.tar.gz"):
        with pytest.raises(FileNotFoundError, match=rf"val_labels: .*{nope} does not exist"):
            load_dataset(f"imagefolder:{tmp_path / 'flat'}?val_labels={tmp_path / nope}")
    with pytest.raises(ValueError, match=r"no class folders.*val_labels=FILE"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}")
    val = tmp_path / "two" / "val"
    for d in ("a", "b"):
        (val / d).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(val / d / "x.jpg")
    (tmp_path / "l.txt").write_text("x.jpg n01440764\n")
    with pytest.raises(ValueError, match=r"'x.jpg' names more than one image"):
        labelled_images(val, tmp_path / "l.txt", sorted(val.rglob("*.jpg")), list(CLASSES))


def test_shards_of_a_flat_val_folder(classed, tmp_path) -> None:
    truth = _flat(classed, tmp_path / "flat")
    labels = tmp_path / "labels.txt"
    labels.write_text(FORMATS["names"](truth))
    write_shards(f"imagefolder:{tmp_path / 'flat'}?val_labels={labels}", tmp_path / "shards",
                 resize=0, workers=0)
    assert read_manifest(tmp_path / "shards")["splits"]["val"]["count"] == 5
    s = load_dataset(f"shards:{tmp_path / 'shards'}?{SPEC}")
    assert s.val.targets == [0, 1, 2, 0, 2]


def _devkit(root: Path, truth: dict[str, int]) -> Path:
    """An ILSVRC2012 devkit's two files: meta.mat's synsets (IDs not in WNID order, and a
    synset with children, which is no class) and the ground truth of images 1..11."""
    return write_devkit(root, {CLASSES[2]: 1, CLASSES[0]: 2, CLASSES[1]: 3},
                        [CLASSES[truth.get(f"ILSVRC2012_val_{k:08d}.JPEG", 0)]
                         for k in range(1, 12)])


def test_the_ilsvrc2012_devkit_folder_or_archive(classed, tmp_path) -> None:
    truth = _flat(classed, tmp_path / "flat")
    devkit = _devkit(tmp_path, dict(truth))
    archive = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(devkit, arcname=devkit.name)
    a = load_dataset(f"imagefolder:{classed}?{SPEC}")
    for labels in (devkit, archive):
        b = load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={labels}")
        assert [p.name for p in b.val.paths] == [p.name for p in a.val.paths]
        assert b.val.targets == a.val.targets
    # the ground truth alone is refused with what to give instead
    gt = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    with pytest.raises(ValueError, match=r"one column .* the devkit they come with"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}?val_labels={gt}")
    # so is its meta.mat (it said: cannot read it as text, 'utf-8' codec can't decode ...)
    with pytest.raises(ValueError, match=r"meta\.mat is a MATLAB file, not a labels file; .* "
                                         r"give the devkit it comes with"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}?val_labels={devkit / 'data/meta.mat'}")
    # a wrong folder is refused without a walk of its whole tree (ImageNet's 1.28M files)
    deep = tmp_path / "data" / "imagenet" / "train" / "n01440764"
    shutil.copytree(devkit, deep / "ILSVRC2012_devkit_t12")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Path, "rglob", lambda *a, **k: pytest.fail("walked the whole tree"))
        with pytest.raises(ValueError, match=r"data is not the ILSVRC2012 devkit"):
            load_dataset(f"imagefolder:{tmp_path / 'flat'}?val_labels={tmp_path / 'data'}")
        # the folder the archive was downloaded to: the archive is named
        shutil.copy(archive, tmp_path / "data")
        with pytest.raises(ValueError, match=rf"data is not the ILSVRC2012 devkit: .*; it "
                                             rf"holds {archive.name}: give {tmp_path / 'data'}/"):
            load_dataset(f"imagefolder:{tmp_path / 'flat'}?val_labels={tmp_path / 'data'}")
        # the folder the devkit was unpacked in is the devkit too, and so is its data/ folder
        d = load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={deep}")
        assert d.val.targets == a.val.targets
    d = load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={devkit / 'data'}")
    assert d.val.targets == a.val.targets
    # an ID that is no class (the synset with children), and a folder that is no devkit
    gt.write_text("4\n" * 11)
    with pytest.raises(ValueError, match=r"line 1: '4' is not an ILSVRC2012 ID of a class"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}?val_labels={devkit}")
    with pytest.raises(ValueError, match=r"is not the ILSVRC2012 devkit: no "
                                         r"ILSVRC2012_validation_ground_truth\.txt or meta\.mat"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}?val_labels={tmp_path / 'flat' / 'train'}")
