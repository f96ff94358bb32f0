"""The analyses as the commands call them (zfnet.pipeline), on models that are not zfnet's:
torchvision's resnet18 with the dataset's 10 classes and with ImageNet's 1000, on `synthetic`
(64 px inputs, the dataset's own normalisation), and on a user's own photos."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision

from zfnet import pipeline
from zfnet.analyses.correspondence import correspondence
from zfnet.analyses.evolution import feature_evolution
from zfnet.analyses.transfer import transfer_study
from zfnet.data import load_dataset
from zfnet.display import LABEL_HEIGHT
from zfnet.report import read_sections

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = "synthetic?n_train=20&n_val=20&size=64"


@pytest.fixture(scope="module")
def bundle():
    return load_dataset(SPEC)


def _resnet(num_classes: int = 1000) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def _section(run_dir, key: str):
    (s,) = [s for s in read_sections(run_dir) if s.key == key]
    return s


def test_gallery_filters_probes(bundle, tmp_path, monkeypatch) -> None:
    import zfnet.analyses.filters
    import zfnet.models

    model = _resnet()
    res = pipeline.gallery(model, bundle, tmp_path, k=2, n_images=6, n_maps=2)
    assert list(res.projections) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    found = []  # a model's first convolutions found once (a forward pass; it was twice)
    real = zfnet.models.first_convs
    for module in (zfnet.models, zfnet.analyses.filters):
        monkeypatch.setattr(module, "first_convs",
                            lambda *a, **k: found.append(1) or real(*a, **k))
    pipeline.filters({"resnet18": model}, bundle, tmp_path, n_images=6)
    assert len(found) == 1
    assert [r[1] for r in _section(tmp_path, "filters").tables[0].rows] == [
        "conv1", "layer1.0.conv1"]
    # layer 2 as the paper's Fig. 6 (d, e) shows it: its strongest maps' features, projected
    figs = _section(tmp_path, "filters").figures
    assert figs[1].path.endswith("layer1_0_conv1_features.png")
    assert "36 strongest maps, each its strongest activation over 6 val images, projected by "\
           "the deconvnet" in figs[1].caption
    from PIL import Image

    grid = np.asarray(Image.open(tmp_path / figs[1].path).convert("L"), dtype=float)
    assert grid.std() > 5  # projections, not a blank page
    rows = pipeline.probes(model, SPEC, tmp_path, per_class=2, n_test=10)
    assert [r.layer for r in rows] == ["relu", "layer1", "layer2", "layer3", "layer4",
                                       "avgpool"]
    assert [r[0] for r in _section(tmp_path, "probes").tables[0].rows][-1] == "avgpool"
    assert _section(tmp_path, "probes").tables[0].caption.startswith(
        "linear classifiers on 2 training images per class")
    pipeline.probes(model, SPEC, tmp_path, per_class=5, n_test=10)  # 20 images, 10 classes
    assert _section(tmp_path, "probes").tables[0].caption.startswith(
        "linear classifiers on 2 (of 5 asked: no more in the data) training images per class")


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_invariance_follows_the_label_only_for_the_datasets_classes(bundle, tmp_path,
                                                                    monkeypatch,
                                                                    num_classes) -> None:
    from zfnet.analyses import invariance as inv

    model = _resnet(num_classes)
    labels_asked: list = []
    real = inv.invariance

    def spy(*args, **kwargs):  # what pipeline.invariance asks of the analysis
        labels_asked.append(kwargs.get("labels"))
        return real(*args, **kwargs)

    monkeypatch.setattr(inv, "invariance", spy)
    n = 2 if num_classes == 10 else 1  # one image of a folder too: "1 image", not "1 images"
    out = pipeline.invariance(model, bundle, tmp_path, n_dataset_images=n)
    assert set(out["invariance_dataset"]["rotate"]) == {"relu", "avgpool"}
    photos, dataset = labels_asked[:3], labels_asked[3:]
    assert photos == [None] * 3
    if num_classes == 10:  # the dataset's labels are its classes
        targets = bundle.val.targets
        first_of_class = [i for i in range(len(targets)) if targets[i] not in targets[:i]]
        want = [targets[i] for i in first_of_class[:2]]
        assert all(list(lab) == want for lab in dataset)
    else:  # its own prediction, never ImageNet's class 3 for the dataset's class 3
        assert dataset == [None] * 3
    assert _section(tmp_path, "invariance_dataset").figures
    photos_section = _section(tmp_path, "invariance_photos")  # whose images they are, said
    assert photos_section.title == "Invariance on 5 built-in photos (Fig. 5)"
    assert photos_section.caption.startswith("The images: 5 sample photographs that ship with "
                                             "scikit-image and scikit-learn (astronaut, ")
    data_section = _section(tmp_path, "invariance_dataset")
    assert data_section.title == (f"Invariance on 2 images of {bundle.spec} (Fig. 5)" if n == 2
                                  else f"Invariance on 1 image of {bundle.spec} (Fig. 5)")
    assert data_section.caption.startswith(f"The images: {n} of {bundle.spec} (its val split")


def test_randomization_at_the_last_stage_by_default(bundle, tmp_path) -> None:
    model = _resnet(10)
    res = pipeline.randomization(model, bundle, tmp_path, n_images=2, layer="layer1")
    assert res.steps == ["layer1", "bn1", "conv1"]  # by blocks
    with pytest.raises(ValueError, match="no feature maps.*e.g. relu, layer1"):
        pipeline.randomization(model, bundle, tmp_path, n_images=2, layer="fc")
    with pytest.raises(ValueError, match="steps 'stages' is not known; valid: block, module"):
        pipeline.randomization(model, bundle, tmp_path / "new", n_images=2, steps="stages")
    assert not (tmp_path / "new").exists()
    s = _section(tmp_path, "randomization")
    assert s.tables[0].rows[0][:2] == [1, "layer1"]
    assert (res.layer, res.images) == ("layer1", 2)  # the caption says both, and the noise
    assert "(2 val images, each seeded at its strongest map of layer1)" in s.caption
    assert "--images sets how many" in s.caption
    default = pipeline.randomization(model, bundle, tmp_path / "default", n_images=1)
    assert default.steps[0] == "layer4"  # any model's last stage, not zfnet's conv5
    res = pipeline.randomization(model, bundle, tmp_path, n_images=2, layer="layer1",
                                 steps="module")
    assert res.steps[0] == "layer1.1.bn2" and res.steps[-1] == "conv1"
    assert _section(tmp_path, "randomization").tables[0].rows[0][:2] == [1, "layer1.1.bn2"]


def test_randomization_seeds_maps_the_first_step_computes(bundle, tmp_path) -> None:
    """A DenseNet block's output passes its input's maps through (a concatenation): seeded at
    one of those, re-initialising the block could not change any map (1.000 for every rule).
    The seeds are the block's own maps, and the words say how many were left out."""
    from zfnet.activations import get_activations
    from zfnet.analyses.sanity import passed_through, randomization_words

    torch.manual_seed(0)
    model = torchvision.models.DenseNet(growth_rate=4, block_config=(2, 2),
                                        num_init_features=64, num_classes=10).eval()
    x = torch.stack([bundle.val[i][0] for i in range(2)])
    through = passed_through(model, x, "features.denseblock2")
    # transition1 halves 64 + 2*4 maps to 36; the block adds 2*4 of its own
    assert through.tolist() == [True] * 36 + [False] * 8
    act = get_activations(model, x, ["features.denseblock2"])["features.denseblock2"]
    assert act.flatten(2).amax(2).argmax(1).lt(36).all()  # the strongest: passed through
    res = pipeline.randomization(model, bundle, tmp_path, n_images=2,
                                 layer="features.denseblock2")
    assert res.steps[0] == "features.denseblock2" and res.passed == 36
    assert all(score["spearman"][0] < 0.999 for score in res.scores.values())
    assert ("2 images seeded at denseblock2 (the strongest of the maps denseblock2 computes; "
            "the 36 it passes through unchanged from below are not seeded)"
            in randomization_words(res)[0])
    assert "the 36 it passes through unchanged" in _section(tmp_path, "randomization").caption


def test_mobilenet_gallery_and_occlusion_defaults(bundle, tmp_path) -> None:
    from zfnet.analyses.occlusion import occlusion_report

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None)
    res = pipeline.gallery(model, bundle, tmp_path, k=2, n_images=4, n_maps=2,
                           layers=["features.0", "features.7", "features.18"])
    assert res.projections["features.0"].shape[-2:] == (3, 3)
    m = occlusion_report(model, bundle, tmp_path, n_images=1, n_pointing=1, size=32, stride=32)
    assert m["layer"] == "features.18" and m["class_followed"] == "predicted"


def test_transfer_says_when_it_cannot_build_the_architecture_again(tmp_path) -> None:
    # transfer trains the architecture again from scratch: it must be one zfnet can build
    with pytest.raises(ValueError, match=r"unknown model 'resnet18'.*torchvision:NAME"):
        transfer_study(_resnet(10), SPEC, (1,), tmp_path, model_name="resnet18")


def test_correspondence_of_any_model_on_the_synthetic_faces(bundle, tmp_path) -> None:
    """Table 1 on a ResNet: its last stage and the vector its classifier reads stand for the
    paper's layers 5 and 7; the section shows Fig. 8's masked images. (It was refused: "not
    one of zfnet's models".)"""
    model = _resnet(10)
    rows = pipeline.correspondence(model, bundle, tmp_path, n_images=2, random_draws=2)
    assert [r.part for r in rows] == ["eye_left", "eye_right", "mouth", "random"]
    assert list(rows[0].delta) == ["layer4", "avgpool"]
    s = _section(tmp_path, "correspondence")
    assert s.tables[0].columns == ["part", "Δ layer4", "Δ avgpool"]
    assert (tmp_path / s.figures[0].path).stat().st_size > 0
    x = torch.randn(2, 3, 64, 64)
    masks = {"part": torch.zeros(2, 64, 64, dtype=torch.bool)}
    masks["part"][:, 4:9, 4:9] = True
    assert list(correspondence(model, x, masks, random_draws=1)[0].delta) == [
        "layer4", "avgpool"]


def test_correspondence_on_parts_marked_on_your_own_images(tmp_path) -> None:
    """A parts file's boxes, in each photo's own pixels, go where the model's preprocessing puts
    the photo: 96x64 photos, shorter side to 32 (x0.5), centre 28 crop from (2, 10); the box
    left 40, top 20, right 56, bottom 36 lands on rows 8..16, columns 10..18 of the input. Δ is
    then that of those inputs and masks, computed by hand."""
    from PIL import Image

    from zfnet.analyses.correspondence import default_layers
    from zfnet.data.preprocess import Preprocessing

    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    names = ["a.png", "b.png", "more/c.png"]
    photos = [torch.randint(0, 256, (64, 96, 3), generator=g, dtype=torch.uint8)
              for _ in names]
    for name, p in zip(names, photos, strict=True):
        Image.fromarray(p.numpy()).save(folder / name)
    (folder / "parts.csv").write_text(
        "image,part,left,top,right,bottom\n"
        "a.png,eye,40,20,56,36\na.png,nose,20,0,40,10\n"
        "b,eye,40,20,56,36\nb,nose,20,0,40,10\n"
        "more/c.png,eye,40,20,56,36\nmore/c.png,nose,20,0,40,10\n")
    pre = Preprocessing.from_unit_stats((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), crop=28, resize=32)
    bundle = load_dataset(f"images:{folder}", preprocessing=pre)
    model = _resnet(10)
    rows = pipeline.correspondence(model, bundle, tmp_path / "out", random_draws=3,
                                   parts_file=folder / "parts.csv")
    assert [r.part for r in rows] == ["eye", "nose", "random"]
    assert rows[0].boxes == [(8, 10, 16, 18)] * 3
    assert rows[1].boxes == [(0, 0, 3, 10)] * 3  # top cut by the crop: rows 2..5 of 32
    x = torch.stack([pre.to_input(p.permute(2, 0, 1)) for p in photos])
    masks = {k: torch.zeros(3, 28, 28, dtype=torch.bool) for k in ("eye", "nose")}
    masks["eye"][:, 8:16, 10:18] = True
    masks["nose"][:, 0:3, 0:10] = True
    want = correspondence(model, x, masks, layers=default_layers(model, 28), random_draws=3)
    assert [r.delta for r in rows] == [r.delta for r in want]
    # the same parts outlined (a polygon's inside and edge): the eye's square by its corners,
    # the nose's as COCO's polygon segmentation; the same masks, the same table
    import json

    square = [[40, 20], [55, 20], [55, 35], [40, 35]]
    (folder / "outlines.json").write_text(json.dumps({
        "images": [{"id": k, "file_name": n} for k, n in enumerate(names)],
        "categories": [{"id": 1, "name": "eye"}, {"id": 2, "name": "nose"}],
        "annotations": [a for k in range(3) for a in (
            {"id": 2 * k, "image_id": k, "category_id": 1,
             "segmentation": [[v for xy in square for v in xy]]},
            {"id": 2 * k + 1, "image_id": k, "category_id": 2,
             "segmentation": [[20, 0, 39, 0, 39, 9, 20, 9]]})]}))
    outlined = pipeline.correspondence(model, bundle, tmp_path / "out", random_draws=3,
                                       parts_file=folder / "outlines.json")
    assert [r.boxes for r in outlined] == [r.boxes for r in rows]
    assert [r.delta for r in outlined] == [r.delta for r in want]
    # --images 2: the first two the file names; --parts: some of them
    rows = pipeline.correspondence(model, bundle, tmp_path / "out", None, 2, ("nose",),
                                   random_draws=1, parts_file=folder / "parts.csv")
    assert [r.part for r in rows] == ["nose", "random"] and len(rows[0].boxes) == 2
    with pytest.raises(ValueError, match="a class picks the images"):
        pipeline.correspondence(model, bundle, tmp_path / "out", "face",
                                parts_file=folder / "parts.csv")
    with pytest.raises(ValueError, match=r"give that folder as --data images:DIR \(not "
                                         r"'synthetic"):
        pipeline.correspondence(model, load_dataset(SPEC), tmp_path / "x",
                                parts_file=folder / "parts.csv")
    (folder / "far.json").write_text(
        '{"a.png": {"eye": [0, 0, 8, 8]}, "b.png": {"eye": [0, 0, 8, 8]}}')
    with pytest.raises(ValueError, match="'a.png': part 'eye' falls outside the "
                                         "centre 28 px crop"):
        pipeline.correspondence(model, bundle, tmp_path / "x", parts_file=folder / "far.json")
    assert not (tmp_path / "x").exists()


def test_evolution_of_any_architecture(bundle) -> None:
    """Fig. 4 follows a ResNet's maps through its epochs as it does zfnet's (a run of any
    architecture `zfnet train` trains keeps its epochs)."""
    early, late = _resnet(10), _resnet(10)
    with torch.no_grad():  # a later epoch: other weights
        for p in late.parameters():
            p.add_(0.05 * torch.randn_like(p))
    res = feature_evolution([(1, early), (2, late)], bundle.val, ("layer1", "layer3"),
                            n_maps=2, n_images=8)
    assert res.epochs == [1, 2] and set(res.projections) == {"layer1", "layer3"}
    assert res.similarity["layer1"][-1] == pytest.approx(1.0)  # the last epoch against itself
    assert res.similarity["layer3"][0] < 1.0
    assert res.projections["layer3"].shape[:2] == (2, 2)


def test_a_models_own_preprocessing(tmp_path) -> None:
    """Data loaded for a model with ImageNet's mean and std: the gallery's projections are put
    in the image's pixel units (times std), invariance normalises pixels as the items were."""
    from torch.utils.data import Subset

    from zfnet.analyses.gallery import run_topk_gallery
    from zfnet.data.preprocess import Preprocessing

    pre = Preprocessing.imagenet(crop=64, resize=72)
    bundle = load_dataset(SPEC, preprocessing=pre)
    model = _resnet()
    res = pipeline.gallery(model, bundle, tmp_path, k=2, n_images=4, n_maps=2,
                           layers=["layer1"])
    plain = run_topk_gallery(model, Subset(bundle.val.with_mode("centre"), range(4)),
                             ["layer1"], k=2, out_dir=tmp_path / "plain", n_maps=2,
                             maps=res.maps)
    std = torch.tensor(pre.std).reshape(1, 1, 3, 1, 1)
    torch.testing.assert_close(res.projections["layer1"], plain.projections["layer1"] * std)
    val = bundle.val.with_mode("centre")
    x = pipeline._normalizer(bundle)(bundle.raw_val(0).float())
    torch.testing.assert_close(x, val[0][0], atol=1e-4, rtol=1e-5)


def test_data_randomization_trains_the_copy_once_and_compares(tmp_path) -> None:
    import json

    from click.testing import CliRunner
    from PIL import Image

    from zfnet.cli import main
    from zfnet.train import load_model

    tiny = "synthetic?n_train=64&n_val=32&size=32"
    run, out = tmp_path / "run", tmp_path / "out"
    train = ["train", "--data", tiny, "--model", "zfnet_small", "--out", str(run), "--epochs",
             "1", "--batch-size", "32", "--schedule", "cosine", "--quiet", "--no-tensorboard"]
    assert CliRunner().invoke(main, train).exit_code == 0
    check = ["analyze", "randomization", "--checkpoint", str(run), "--mode", "labels",
             "--out", str(out), "--device", "cpu", "--images", "3", "--epochs", "2"]
    res = CliRunner().invoke(main, check)
    assert res.exit_code == 0, res.output
    assert "copy trained on permuted labels" in res.output
    assert [line.split()[0] for line in res.output.splitlines()[-4:-1]] == [
        "deconvnet", "guided", "gradient"]
    copy = out / "random-labels"
    config = json.loads((copy / "config.json").read_text())
    assert config["data"] == f"{tiny}&random_labels=0" and config["epochs"] == 2
    assert config["device"] == "cpu"  # the command's --device, the run's was auto
    _, meta = load_model(copy)
    assert meta["epoch"] == 2 and meta["model"] == "zfnet_small"
    s = _section(out, "randomization_labels")
    assert "copy's training labels fitted" in s.metrics
    assert (out / "figures" / "randomization_labels.png").is_file()
    assert "reference" not in s.tables[0].columns[3]
    # again: the copy is continued where it is (finished: not trained again); --reference
    # trains the run again on the true labels, from the next seed; 16 images by default
    weights = next(copy.glob("checkpoints/*/model.safetensors"))
    stamp = weights.stat().st_mtime_ns
    without_images = [a for a in check if a not in ("--images", "3")]
    res = CliRunner().invoke(main, [*without_images, "--reference"])
    assert res.exit_code == 0, res.output
    assert weights.stat().st_mtime_ns == stamp
    config = json.loads((out / "reference" / "config.json").read_text())
    assert (config["data"], config["seed"], config["epochs"]) == (tiny, 1, 1)
    assert res.output.count("(reference: ") == 3
    s = _section(out, "randomization_labels")
    assert s.tables[0].columns[3] == "reference rank corr." and "reference guided" in s.metrics
    assert str(out / "reference") in s.caption
    assert [len(row[4].split()) for row in s.tables[0].rows] == [16] * 3
    height = Image.open(out / "figures" / "randomization_labels.png").height
    # the first 8 of the 16 drawn, 32 px enlarged to 64, under the column heads
    assert height == LABEL_HEIGHT + 8 * (64 + 2) + 2
    # another length of a cosine schedule is another copy: named, nothing written
    res = CliRunner().invoke(main, [*check[:-1], "3"])
    assert res.exit_code != 0 and "epochs: 2 in the run, 3 now" in res.output
    assert "another --random-run" in res.output and weights.stat().st_mtime_ns == stamp
    res = CliRunner().invoke(main, [*check[:-1], "1", "--random-run", str(tmp_path / "c1")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c1" / "config.json").read_text())["epochs"] == 1


def test_data_randomization_interrupted_says_how_to_continue(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    import zfnet.train
    from zfnet.cli import main

    tiny = "synthetic?n_train=64&n_val=32&size=32"
    run, out = tmp_path / "run", tmp_path / "out"
    assert CliRunner().invoke(main, ["train", "--data", tiny, "--model", "zfnet_small", "--out",
                                     str(run), "--epochs", "1", "--batch-size", "32", "--quiet",
                                     "--no-tensorboard"]).exit_code == 0

    def stopped(config, bundle=None):  # what `train` returns after SIGINT saved the copy
        return {"status": "interrupted", "signal": "SIGINT", "run_dir": config.out}

    monkeypatch.setattr(zfnet.train, "train", stopped)
    res = CliRunner().invoke(main, ["analyze", "randomization", "--checkpoint", str(run),
                                    "--mode", "labels", "--out", str(out), "--images", "2"])
    assert res.exit_code == 130
    assert "interrupted by SIGINT: the same command continues the copy's training" in res.output
    assert not (out / "sections").exists()


def test_a_broken_file_is_passed_over_by_every_analysis(tmp_path) -> None:
    """A folder of photos whose first file is broken: the analyses that show a few images
    take the next readable ones (a warning names the file), and the figures name the photos
    and the folder's files, not class numbers."""
    import warnings

    from PIL import Image
    from skimage import data as photos

    from zfnet.analyses import invariance as inv
    from zfnet.analyses.occlusion import occlusion_report
    from zfnet.data import BrokenImageWarning
    from zfnet.data.preprocess import Preprocessing

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "aaa.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # sorts first
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(photos, name)()).save(folder / f"{name}.jpg")
    bundle = load_dataset(f"images:{folder}",
                          preprocessing=Preprocessing.imagenet(crop=64, resize=72))
    model = _resnet()
    legends: dict[str, list[str]] = {}
    real = inv.invariance_section

    def spy(run_dir, res, names, *, key, **kwargs):
        legends[key] = list(names)
        return real(run_dir, res, names, key=key, **kwargs)

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(inv, "invariance_section", spy)
        pipeline.invariance(model, bundle, tmp_path / "out", n_dataset_images=5)
        m = occlusion_report(model, bundle, tmp_path / "out", n_images=2, size=32, stride=32)
        res = pipeline.randomization(model, bundle, tmp_path / "out", n_images=2,
                                     layer="layer1")
    assert legends["invariance_photos"] == ["astronaut", "chelsea", "coffee", "rocket", "china"]
    # one class (no labels), so the next images after the first: the 3 readable files
    assert legends["invariance_dataset"] == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    assert [r[0] for r in _section(tmp_path / "out", "occlusion").tables[0].rows] == [
        "astronaut.jpg", "chelsea.jpg"]  # items 1 and 2, named by file: item 0 is broken
    assert m["class_followed"] == "predicted" and res.steps[0] == "layer1"
    assert any(issubclass(w.category, BrokenImageWarning) and "aaa.jpg" in str(w.message)
               for w in caught)


def test_a_rule_undefined_through_the_network_is_said_before_mining(bundle, tmp_path,
                                                                     monkeypatch) -> None:
    """MobileNetV3's Hardswish: the deconvnet is undefined through it. The gallery says so
    before its mining pass, writing nothing; occlusion, whose maps do not need it, draws map
    (c) with the gradient and its caption says so."""
    from zfnet.analyses import gallery
    from zfnet.analyses.occlusion import occlusion_report
    from zfnet.graph import RuleUndefinedError, nonlinear

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    mined = []
    real = gallery.mine_topk
    monkeypatch.setattr(gallery, "mine_topk", lambda *a, **k: mined.append(1) or real(*a, **k))
    with pytest.raises(RuleUndefinedError, match="Hardswish"):
        pipeline.gallery(model, bundle, tmp_path / "g", k=2, n_images=4, n_maps=2)
    assert not mined and not (tmp_path / "g").exists()
    with nonlinear("gradient"), pytest.warns(UserWarning, match="no rectifier"):
        # as asked: the gradient through Hardswish; features.0 (conv, Hardswish) has no
        # rectifier below it, features.1 its block's ReLU
        pipeline.gallery(model, bundle, tmp_path / "g", k=2, n_images=4, n_maps=2,
                         layers=["features.0", "features.1"])
    assert mined and (tmp_path / "g" / "gallery" / "topk.pt").is_file()
    s = _section(tmp_path / "g", "topk_gallery")  # what the projections are, said
    assert s.metrics["rule"] == "deconvnet + gradient at non-rectifiers"
    assert [f.caption.split("; ")[-1] for f in s.figures] == [
        "projected by the gradient", "projected by the deconvnet + gradient at non-rectifiers"]
    assert ("Under --nonlinear gradient the deconvnet rule applies at rectifiers only, and the "
            "other non-linearities (GELU, SiLU, LayerNorm …) are walked back by their gradient; "
            "below features.0, with no rectifier on the way down, the projection is the plain "
            "gradient (Simonyan et al. 2014).") in s.caption
    occlusion_report(model, bundle, tmp_path / "o", n_images=1, n_pointing=0, size=32,
                     stride=32)
    caption = _section(tmp_path / "o", "occlusion").caption
    assert "projected to pixels with the gradient (the deconvnet is undefined" in caption


def test_the_class_scores_units_are_named_by_the_models_classes(bundle, tmp_path) -> None:
    """Top-k of resnet18's `fc` (its class scores): each unit named by its class in the
    caption; a hidden layer's maps keep their numbers."""
    names = [f"class {i}" for i in range(5)]
    pipeline.gallery(_resnet(5), bundle, tmp_path, k=2, n_images=4, n_maps=2,
                     layers=["layer4", "fc"], class_names=names)
    captions = [f.caption for f in _section(tmp_path, "topk_gallery").figures]
    assert captions[0].startswith("layer4: maps ")
    (first, second) = (int(c) for c in re.findall(r"(\d+) \(class \1\)", captions[1]))
    assert captions[1] == f"fc: units {first} (class {first}), {second} (class {second})"


def test_probes_of_a_zfnet_model_on_another_datasets_images(tmp_path) -> None:
    """Table 7's case: a model trained on one dataset (ImageNet), its layers probed on another
    (Caltech). A zfnet model of 32 px inputs probed on 48 px images gets them adapted as
    `analyze transfer` does (grey <-> RGB, resized), and the section says so; it was refused as
    data of another shape."""
    import zfnet

    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", num_classes=10, input_size=32)
    rows = pipeline.probes(model, "synthetic?n_train=40&n_val=20&size=48", tmp_path,
                           per_class=2, batch_size=16)
    assert [r.layer for r in rows][-1] == "relu7"
    assert "its images adapted to the model's 3-channel 32 px input" in \
        _section(tmp_path, "probes").tables[0].caption


def test_filters_measure_each_run_on_its_own_data(tmp_path) -> None:
    """Two zfnet models trained on data of other sizes: each one's dead filters are measured
    on its own val images (a dict of bundles by label); one bundle for both is refused by name
    before anything is written, not measured on the wrong images."""
    import zfnet

    small, large = load_dataset("synthetic?n_train=4&n_val=6&size=32"), \
        load_dataset("synthetic?n_train=4&n_val=6&size=48")
    torch.manual_seed(0)
    models = {"a": zfnet.create_model("zfnet_small", input_size=32, num_classes=10),
              "b": zfnet.create_model("zfnet_small", input_size=48, num_classes=10)}
    pipeline.filters(models, {"a": small, "b": large}, tmp_path / "own")
    rows = _section(tmp_path / "own", "filters").tables[0].rows
    assert [r[:2] for r in rows] == [["a", "conv1"], ["a", "conv2"], ["b", "conv1"],
                                     ["b", "conv2"]]
    with pytest.raises(ValueError, match="gives 3-channel 32 px images but the model takes "
                                         "3-channel 48 px"):
        pipeline.filters(models, small, tmp_path / "one")
    assert not (tmp_path / "one").exists()


def test_gallery_refuses_no_maps_before_writing(bundle, tmp_path) -> None:
    """n_maps=0 is refused as k=0 is, before the mining writes anything."""
    with pytest.raises(ValueError, match="n_maps=0: give at least 1 map per layer"):
        pipeline.gallery(_resnet(), bundle, tmp_path / "out", k=2, n_images=4, n_maps=0)
    assert not (tmp_path / "out").exists()
