"""docs/imagenet.md runs as written on a miniature ILSVRC-2012: image-net.org's three archives
in their real layouts (tests/data/ilsvrc.py), of 3 classes of photos that ship with
scikit-image, in a temporary folder that stands for `/data`.

Its blocks run in order, as a user following the page would, through tests/doc_blocks.py (the
README's runner): `zfnet` lines in this process, `torchrun` lines under torchrun with 2
processes, the rest (tar, the unpacking loop) in bash. REPLACE is every change made to a block
before it runs; each must occur in the page. Then what a user would look at: the folders
unpacked, the shards and their manifest, each run's checkpoint and metrics, `--resume` of a
finished run, the 10-crop errors (the same under torchrun), the gallery's and occlusion's
figures, and the classes shown with their words ("tench (n01440764)") where the page says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.data.ilsvrc import write_archives
from tests.doc_blocks import RUN, SHOWN, Session, blocks, check_replacements
from zfnet.data import load_dataset
from zfnet.data.shards import read_manifest

DOC = Path(__file__).resolve().parents[1] / "docs" / "imagenet.md"
DATA = "{data}"  # the temporary folder that stands for /data

# Every change made to a block before it runs (block text -> what runs instead); applied in
# order, `/data` last.
REPLACE = {
    # a CPU: 2 processes, and no torch.compile (off by default: slower on a small CPU)
    "--nproc-per-node 8": "--nproc-per-node 2",
    " --compile": "",
    # 70 epochs cut to one
    "--model zfnet": "--model zfnet --epochs 1",
    # the miniature is a copy of 3 classes: the model's 1000 names in their order, as the page
    # says for one (here: the 3 WNIDs at their places among fillers)
    "--weights IMAGENET1K_V1 --data": "--weights IMAGENET1K_V1 --labels LOC_synset_mapping.txt "
                                      "--data",
    # the analyses cut to a few maps and occluder positions
    "visualize topk --checkpoint": "visualize topk --maps-per-layer 2 --k 3 --checkpoint",
    "analyze occlusion --checkpoint": "analyze occlusion --images 3 --stride 56 --checkpoint",
    "/data": DATA,
}
# The classes: real WNIDs with their devkit words, each cut from one photo
PHOTOS = {"n01440764": "astronaut", "n02123045": "chelsea", "n07920052": "coffee"}
WORDS = {"n01440764": "tench, Tinca tinca", "n02123045": "tabby, tabby cat",
         "n07920052": "espresso"}
WITH_WORDS = ["tench (n01440764)", "tabby (n02123045)", "espresso (n07920052)"]
N_TRAIN, N_VAL = 4, 2


def _synset_mapping(path: Path) -> None:
    """Kaggle's LOC_synset_mapping.txt made up: ImageNet's 1000 classes in sorted order, ours
    at their real places (0, 281, 967), fillers between."""
    lines = [f"n0{1440765 + k} filler" for k in range(280)] + \
        [f"n0{2123046 + k} filler" for k in range(685)] + \
        [f"n0{7920053 + k} filler" for k in range(32)]
    lines += [f"{w} {t}" for w, t in WORDS.items()]
    assert len(lines) == 1000
    path.write_text("\n".join(sorted(lines)) + "\n")


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """/data as the page begins: the three archives (and the mapping for the copy's ResNet-50);
    torchvision's ResNet-50 IMAGENET1K_V1 in the torch hub cache (saved from a randomly
    initialised copy: no download, ZFNET_OFFLINE=1)."""
    import skimage.data
    import torchvision

    from zfnet.sources import hub_file

    d = tmp_path / "data"
    d.mkdir()
    write_archives(d, {w: getattr(skimage.data, p)() for w, p in PHOTOS.items()},
                   N_TRAIN, N_VAL, WORDS)
    _synset_mapping(d / "LOC_synset_mapping.txt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ZFNET_OFFLINE", "1")
    path = hub_file(torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return d


def test_every_block_runs_but_the_servers() -> None:
    """What the test below leaves out is said on the page: the explorer's server alone."""
    for b in blocks(DOC):
        assert b.lang in RUN + SHOWN, f"{DOC.name}:{b.line - 1}: a block says no language"
        assert not b.not_run or b.text.startswith("zfnet serve "), (
            f"{DOC.name}:{b.line - 2}: only `zfnet serve` is not run")
    check_replacements(DOC, REPLACE)


def test_the_guide_runs_on_a_miniature_imagenet(data, tmp_path, monkeypatch, one_thread) -> None:
    home = tmp_path / "home"  # where the user's shell begins; the page's `cd /data` moves it
    home.mkdir()
    monkeypatch.chdir(home)
    replace = {old: new.replace(DATA, str(data)) for old, new in REPLACE.items()}
    session = Session(DOC, home)
    ran = session.run_blocks(replace)
    assert ran >= 5, f"only {ran} blocks of {DOC.name} ran"

    # 1. the archives unpacked: a folder a class, the val images in one folder
    train, val = data / "imagenet" / "train", data / "imagenet" / "val"
    assert sorted(p.name for p in train.iterdir()) == sorted(PHOTOS)
    assert all(len(list((train / w).glob(f"{w}_*.JPEG"))) == N_TRAIN for w in PHOTOS)
    assert len(list(val.glob("ILSVRC2012_val_*.JPEG"))) == N_VAL * len(PHOTOS)
    # 2. the shards, with their manifest; the words kept
    shards = data / "imagenet-shards"
    counts = {k: v["count"] for k, v in read_manifest(shards)["splits"].items()}
    assert counts == {"train": N_TRAIN * len(PHOTOS), "val": N_VAL * len(PHOTOS)}
    assert load_dataset(f"shards:{shards}").class_labels == WITH_WORDS
    # the pretrained model, scored on the original files with its own preprocessing
    out = session.output("zfnet eval --model torchvision:resnet50")
    assert f"{N_VAL * len(PHOTOS)} images, centre crop: top-1 error" in out, out
    assert all(s in out for s in WITH_WORDS), out
    # 3. each run (one process, and two under torchrun): a checkpoint and its metrics
    runs = session.cwd / "runs"
    assert session.cwd == data  # the page's shell is back in /data for the runs
    for run in sorted(runs.iterdir()):
        assert (run / "checkpoints" / "epoch_0001").is_dir(), run
        rows = (run / "metrics.csv").read_text().splitlines()
        assert rows[0].startswith("epoch,") and len(rows) == 2, (run, rows)
    assert len(list(runs.iterdir())) == 2
    # --resume of a finished run says so and trains nothing
    out = session.output("zfnet train --out runs/zfnet --resume")
    assert "all 1 epochs are trained already, nothing is left to train" in out, out
    # 4. the 10-crop errors, the same counted by 2 processes as by one
    one = session.output("zfnet eval --checkpoint runs/zfnet --ten-crop")
    two = session.output("torchrun --nproc-per-node 2 -m zfnet.cli eval")
    summary = [ln for ln in one.splitlines() if "10 crops: top-1 error" in ln]
    assert len(summary) == 1 and "top-5" in summary[0], one
    assert f"{N_VAL * len(PHOTOS)} images" in summary[0], one
    assert two.count(summary[0]) == 1, two  # printed once, by the first process
    assert all(s in one for s in WITH_WORDS), one  # the per-class lines, with their words
    run = runs / "zfnet"  # --out: the errors in its report beside Table 2's, a confusion matrix
    assert "Table 2" in (run / "sections" / "evaluation.json").read_text()
    assert (run / "figures" / "confusion.png").is_file()
    # the gallery: a figure a layer; its images named as the val folder's files
    gallery = run / "gallery"
    assert {p.name for p in gallery.glob("topk_conv*.png")} == {
        f"topk_conv{i}.png" for i in range(1, 6)}
    named = {t["image"] for layer in json.loads((gallery / "topk.json").read_text())[
        "layers"].values() for m in layer["maps"] for t in m}
    assert named <= {p.name for p in val.iterdir()}, named
    # occlusion's figure, its classes with their words; the report shows them too
    assert (run / "occlusion" / "fig7_occlusion.png").is_file()
    assert all(s in (run / "sections" / "occlusion.json").read_text() for s in WITH_WORDS)
    report = (run / "index.html").read_text()
    assert all(s in report for s in WITH_WORDS)
    # words= for a val folder in class folders (a copy of ours arranged so)
    classed = tmp_path / "classed"
    classed.mkdir()
    (classed / "train").symlink_to(train)
    labels = load_dataset(f"imagefolder:{data / 'imagenet'}?val_labels="
                          f"{data / 'ILSVRC2012_devkit_t12.tar.gz'}")
    for p, y in zip(labels.val.paths, labels.val.targets, strict=True):
        (classed / "val" / labels.class_names[y]).mkdir(parents=True, exist_ok=True)
        (classed / "val" / labels.class_names[y] / Path(p).name).symlink_to(p)
    words = load_dataset(f"imagefolder:{classed}?words={data / 'ILSVRC2012_devkit_t12.tar.gz'}")
    assert words.class_labels == WITH_WORDS and words.class_names == sorted(PHOTOS)
