"""Every `zfnet visualize/analyze` command that makes sense on any CNN, end to end from the
command line: torchvision's resnet18 with weights saved from a randomly initialised copy (no
downloads), on a folder of the user's photos (`images:DIR`) or a labelled dataset, the
preprocessing given on the command line (small crops, to keep it fast)."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from zfnet.analyses.invariance import DEFAULT_VALUES
from zfnet.cli import main
from zfnet.report import read_sections

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no downloads


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder of photos and resnet18 weights (10 classes: a fine-tuned copy)."""
    from skimage import data

    root = tmp_path_factory.mktemp("any")
    photos = root / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        img = getattr(data, name)()
        Image.fromarray(img).convert("RGB").save(photos / f"{name}.jpg")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), root / "r18.pth")
    return root


def _model(setup) -> list[str]:
    return ["--model", "torchvision:resnet18", "--weights", str(setup / "r18.pth"),
            "--resize", "72", "--crop", "64"]


def _ok(args: list[str]) -> str:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_topk_over_a_folder_of_photos(setup, tmp_path) -> None:
    out = tmp_path / "look"
    _ok(["visualize", "topk", *_model(setup), "--data", f"images:{setup / 'photos'}",
         "--layer", "layer1,layer4", "--k", "3", "--maps-per-layer", "2", "--out", str(out)])
    sections = {s.key: s for s in read_sections(out)}
    gallery = sections["topk_gallery"]
    assert len(gallery.figures) == 2  # one per layer
    for fig in gallery.figures:
        assert (out / fig.path).is_file()
    assert (out / "index.html").is_file()
    # the page says what it was computed on: the model, its weights and preprocessing, the data
    want = f"torchvision:resnet18 {setup / 'r18.pth'} (resize 72, crop 64, mean 123.7"
    assert gallery.source.startswith(want) and gallery.source.endswith(
        f", data images:{setup / 'photos'}")
    assert f"Computed on {want}" in (out / "index.html").read_text()
    # the maps asked for, in every layer named; the classes asked for, by name
    _ok(["visualize", "topk", *_model(setup), "--data", f"images:{setup / 'photos'}",
         "--layer", "layer1,layer4", "--map", "7", "--map", "3,60,7", "--k", "2", "--out",
         str(tmp_path / "maps")])
    gallery = {s.key: s for s in read_sections(tmp_path / "maps")}["topk_gallery"]
    assert [f.caption for f in gallery.figures] == ["layer1: maps 7, 3, 60",
                                                    "layer4: maps 7, 3, 60"]  # as given
    assert gallery.tables[0].caption.startswith("Maps shown: those asked for")
    (tmp_path / "labels.txt").write_text("".join(f"c{k}\n" for k in range(10)))
    _ok(["visualize", "topk", *_model(setup), "--labels", str(tmp_path / "labels.txt"),
         "--data", f"images:{setup / 'photos'}", "--class", "c7", "--class", "2", "--k", "2",
         "--out", str(tmp_path / "classes")])
    gallery = {s.key: s for s in read_sections(tmp_path / "classes")}["topk_gallery"]
    (fig,) = gallery.figures
    assert fig.caption.startswith("fc: units 7 (c7), 2 (c2)")
    table = json.loads((tmp_path / "classes/gallery/topk.json").read_text())
    assert list(table["layers"]) == ["fc"]


def test_occlusion_in_bfloat16_and_a_bad_precision(setup, tmp_path) -> None:
    out = tmp_path / "look"
    args = ["analyze", "occlusion", *_model(setup), "--data", f"images:{setup / 'photos'}",
            "--images", "1", "--size", "32", "--stride", "32", "--out", str(out)]
    text = _ok([*args, "--precision", "bfloat16"])
    assert "method: full, bfloat16" in text
    metrics = {s.key: s for s in read_sections(out)}["occlusion"].metrics
    assert metrics["method"] == "full, bfloat16"
    res = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "not"), "--precision", "half"])
    assert res.exit_code == 2 and "'half' is not one of 'float32', 'bfloat16'" in res.output
    assert not (tmp_path / "not").exists()


@pytest.mark.parametrize(("given", "native", "bf16"), [
    ("auto", True, True), ("auto", False, False), ("bfloat16", False, True),
    ("float32", True, False)])
def test_topk_precision_auto_is_bfloat16_where_native_and_the_page_says_it(
        setup, tmp_path, monkeypatch, given, native, bf16) -> None:
    import zfnet.train.recipe
    from zfnet.analyses.gallery import BF16_NOTE

    monkeypatch.setattr(zfnet.train.recipe, "cpu_has_native_bf16", lambda: native)
    out = tmp_path / "look"
    _ok(["visualize", "topk", *_model(setup), "--data", f"images:{setup / 'photos'}",
         "--layer", "layer2", "--k", "2", "--maps-per-layer", "2", "--device", "cpu",
         "--precision", given, "--out", str(out)])
    caption = {s.key: s for s in read_sections(out)}["topk_gallery"].caption
    assert caption.endswith(BF16_NOTE) == bf16


def test_a_bad_precision_for_topk_writes_nothing(setup, tmp_path) -> None:
    res = CliRunner().invoke(main, ["visualize", "topk", *_model(setup), "--data",
                                    f"images:{setup / 'photos'}", "--precision", "half",
                                    "--out", str(tmp_path / "not")])
    assert res.exit_code == 2 and "'half' is not one of 'auto', 'float32', 'bfloat16'" in \
        res.output
    assert not (tmp_path / "not").exists()


def test_topk_shows_its_progress_on_a_terminal_and_in_a_log(setup, tmp_path,
                                                           monkeypatch) -> None:
    """Mining a folder takes a while: a bar says how far it is, redrawn on a terminal, its
    last state kept in a log."""
    from zfnet import progress

    args = ["visualize", "topk", *_model(setup), "--data", f"images:{setup / 'photos'}",
            "--layer", "layer1", "--k", "2", "--maps-per-layer", "1"]
    logged = _ok([*args, "--out", str(tmp_path / "log")])
    assert "top-k mining: 100%" in logged and logged.count("top-k mining") == 2, logged
    # and the projection after it (79 s of silence for resnet18's default gallery here)
    assert "projecting: 100%|" in logged and "2/2 [" in logged.split("projecting: 100%")[1], logged
    monkeypatch.setattr(progress, "terminal", lambda: True)
    assert "top-k mining" in _ok([*args, "--out", str(tmp_path / "terminal")])


def test_models_says_how_many_classes_a_weights_file_has(setup, tmp_path) -> None:
    """A fine-tuned copy's weights file: its 10 classes are said, named or not."""
    model = ["models", "torchvision:resnet18", "--weights", str(setup / "r18.pth")]
    text = _ok(model)
    assert "\nclasses: 10 (not named: --labels FILE names them, one a line)\n" in text, text
    (tmp_path / "labels.txt").write_text("".join(f"c{k}\n" for k in range(10)))
    text = _ok([*model, "--labels", str(tmp_path / "labels.txt")])
    assert "\nclasses: 10 (c0, c1, c2, ...)\n" in text and "not named" not in text


def test_occlusion_invariance_randomization_filters(setup, tmp_path) -> None:
    out = tmp_path / "look"
    data = ["--data", f"images:{setup / 'photos'}"]
    text = _ok(["analyze", "occlusion", *_model(setup), *data, "--images", "2", "--size", "16",
                "--stride", "8", "--out", str(out)])
    assert "layer: layer4" in text and "method: full" in text  # not a chain: recomputed whole
    # said first: how much there is to score (64 px, 16 px squares every 8 px: 7 x 7)
    assert "occlusion: 2 images x 49 occluder positions (16 px, stride 8 px) = up to 98 " \
        "occluded images to score (a broken file is skipped); a larger --stride or fewer " \
        "--images make fewer" in text
    (tmp_path / "labels.txt").write_text("".join(f"c{k}\n" for k in range(10)))
    named = [*_model(setup), "--labels", str(tmp_path / "labels.txt"), *data, "--images", "1",
             "--size", "32", "--stride", "32"]
    text = _ok(["analyze", "occlusion", *named, "--class", "c4", "--out",
                str(tmp_path / "chosen")])
    assert "p(class) of: the class 'c4'" in text
    bad = CliRunner().invoke(main, ["analyze", "occlusion", *named, "--class", "c44", "--out",
                                    str(tmp_path / "never")])
    assert bad.exit_code != 0 and "class 'c44' is not one of torchvision:resnet18" in bad.output
    assert not (tmp_path / "never").exists()
    text = _ok(["analyze", "randomization", *_model(setup), *data, "--out", str(out)])  # 5 photos
    # the outcome said, as every analysis says its numbers: one line a rule
    assert "cascading randomisation from layer4 down to conv1 (6 steps); 5 images seeded at " \
        "layer4; similarity to the trained model's maps after the first and the last step" in text
    assert re.search(r"^guided     rank correlation -?[\d.]+ -> -?[\d.]+  SSIM -?[\d.]+ -> "
                     r"-?[\d.]+$", text, re.M), text
    text = _ok(["analyze", "randomization", *_model(setup), *data, "--images", "1", "--layer",
                "layer1", "--mode", "independent", "--steps", "module", "--out", str(out)])
    assert "independent randomisation of 10 layers, each alone; 1 image seeded at layer1" in text
    assert "randomising: 100%|" in text and "33/33 [" in text, text  # a bar: (10 + 1) x 3 rules
    assert re.search(r"^deconvnet  rank correlation -?[\d.]+ \([\w.]+\) to -?[\d.]+ "
                     r"\([\w.]+\)  SSIM", text, re.M), text
    # two models side by side, each with its weights
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet.pth")
    _ok(["analyze", "filters", "--model", "torchvision:resnet18", "--weights",
         str(setup / "r18.pth"), "--model", "torchvision:alexnet", "--weights",
         str(tmp_path / "alexnet.pth"), "--out", str(out)])
    # one without a file beside one with (hf:DIR's own weights; here random init): none
    _ok(["analyze", "filters", "--model", "torchvision:resnet18", "--weights",
         str(setup / "r18.pth"), "--model", "torchvision:alexnet", "--weights", "none",
         "--out", str(tmp_path / "mixed")])
    (s,) = [s for s in read_sections(tmp_path / "mixed") if s.key == "filters"]
    assert "torchvision:alexnet" in s.caption + str(s.tables), s.caption
    text = _ok(["analyze", "invariance", *_model(setup), "--data", "synthetic?n_train=32&n_val=16",
                "--out", str(out)])
    # each line says which images, which transformation and what the numbers are
    assert re.search(r"^built-in photos, scale: mean relative distance relu [\d.]+, avgpool "
                     r"[\d.]+$", text, re.M), text
    assert "images of synthetic?n_train=32&n_val=16, rotate: mean relative distance " in text
    # the layers and the number of the dataset's images chosen (module paths: one naming)
    inv = tmp_path / "inv"
    text = _ok(["analyze", "invariance", *_model(setup), "--data", f"images:{setup / 'photos'}",
                "--layer", "layer1,layer3.1", "--layer", "fc", "--images", "2", "--out", str(inv)])
    assert re.search(r"^built-in photos, rotate: mean relative distance layer1 [\d.]+, "
                     r"layer3.1 [\d.]+, fc [\d.]+$", text, re.M), text
    chosen = {s.key: s for s in read_sections(inv)}["invariance_dataset"]
    assert chosen.caption.startswith("The images: 2 of images:")
    passes = sum(len(v) for v in DEFAULT_VALUES.values())  # a bar: each amount of each kind
    assert f"transformed: 100%|██████████| {2 * passes}/{2 * passes} [" in text, text
    assert chosen.tables[0].columns[1:4] == [
        "mean distance layer1", "mean distance layer3.1", "mean distance fc"]
    # no dataset: a pretrained model on the built-in photos alone, said so
    alone = tmp_path / "alone"
    text = _ok(["analyze", "invariance", *_model(setup), "--out", str(alone)])
    assert "no --data: the 5 built-in photos only" in text, text
    assert f"transformed: 100%|██████████| {passes}/{passes} [" in text, text  # one set
    assert re.search(r"^built-in photos, translate: mean relative distance relu [\d.]+, "
                     r"avgpool [\d.]+$", text, re.M) and "images of" not in text, text
    assert [s.key for s in read_sections(alone)] == ["invariance_photos"]
    bad = CliRunner().invoke(main, ["analyze", "invariance", *_model(setup), *data,
                                    "--layer", "layer9", "--out", str(tmp_path / "never")])
    assert bad.exit_code != 0 and "layer 'layer9' does not exist" in bad.output
    assert not (tmp_path / "never").exists()  # checked before anything is written
    sections = {s.key: s for s in read_sections(out)}
    assert "(5 val images, each seeded at its strongest map of layer4)" in sections[
        "randomization"].caption
    keys = set(sections)
    assert {"occlusion", "randomization", "randomization_independent", "filters"} <= keys and any(
        k.startswith("invariance") for k in keys)
    rows = sections["filters"].tables[0].rows  # (model, its weights file), layer
    assert [(r[0].split()[0], r[0].split()[1].rsplit("/", 1)[-1], r[1]) for r in rows] == [
        ("torchvision:resnet18", "r18.pth", "conv1"),
        ("torchvision:resnet18", "r18.pth", "layer1.0.conv1"),
        ("torchvision:alexnet", "alexnet.pth", "features.0"),
        ("torchvision:alexnet", "alexnet.pth", "features.3")]
    source = sections["filters"].source  # the section names both models, not the last one
    assert source.startswith("torchvision:resnet18 ") and ", torchvision:alexnet " in source
    by_block = [r[1] for r in sections["randomization"].tables[0].rows]
    assert by_block == ["layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    by_module = [r[1] for r in sections["randomization_independent"].tables[0].rows]
    assert by_module[0] == "layer1.1.bn2" and len(by_module) == 10


def test_probes_on_a_labelled_dataset(setup, tmp_path) -> None:
    out = tmp_path / "look"
    text = _ok(["analyze", "probes", *_model(setup), "--data", "synthetic?n_train=40&n_val=20",
                "--per-class", "2", "--out", str(out)])
    assert "layer4" in text and "avgpool" in text  # the stages and the vector layer
    # the layers named (a block's module, the classifier), one line each, aligned
    text = _ok(["analyze", "probes", *_model(setup), "--data", "synthetic?n_train=40&n_val=20",
                "--per-class", "2", "--layer", "layer2.1.conv2,fc", "--out", str(out)])
    lines = [x for x in text.splitlines() if x.startswith(("layer2.1.conv2 ", "fc "))]
    assert [x.split()[0] for x in lines] == ["layer2.1.conv2", "fc"], text
    assert lines[0].index("softmax") == lines[1].index("softmax")
    assert "  test accuracy: softmax " in lines[0]  # what the figures are, said
    rows = {s.key: s for s in read_sections(out)}["probes"].tables[0].rows
    assert [r[0] for r in rows] == ["layer2.1.conv2", "fc"]


def test_topk_on_zfnet_runs_is_unchanged(tmp_path) -> None:
    """--checkpoint RUN and --model RUN are the same source."""
    run = tmp_path / "run"
    _ok(["train", "--data", "synthetic?n_train=64&n_val=32&size=32", "--model", "zfnet_small",
         "--out", str(run), "--epochs", "1", "--batch-size", "32", "--quiet",
         "--no-tensorboard"])
    for how, out in ((["--checkpoint", str(run)], tmp_path / "a"),
                     (["--model", str(run)], tmp_path / "b")):
        _ok(["visualize", "topk", *how, "--layer", "conv1,conv5", "--maps-per-layer", "2",
             "--images", "16", "--out", str(out)])
    a = json.loads((tmp_path / "a/sections").glob("*gallery*.json").__next__().read_text())
    b = json.loads((tmp_path / "b/sections").glob("*gallery*.json").__next__().read_text())
    assert a["tables"] == b["tables"]


@pytest.mark.parametrize("args,message", [
    (["visualize", "topk", "--model", "torchvision:resnet18", "--out", "{out}"],
     "no dataset given"),
    (["analyze", "occlusion", "--model", "torchvision:resnet18", "--checkpoint", "{run}",
      "--out", "{out}"], "--model and --checkpoint"),
    (["analyze", "probes", "--model", "torchvision:resnet18", "--out", "{out}"],
     "no dataset given"),
    (["analyze", "probes", "--model", "torchvision:resnet18", "--data", "images:{photos}",
      "--out", "{out}"], "images:{photos} has no labels; give a labelled dataset"),
    (["analyze", "filters", "--out", "{out}"], "no model given"),
    (["analyze", "correspondence", "--checkpoint", "{photos}", "--out", "{out}"], ""),
])
def test_any_model_errors(setup, tmp_path, args, message) -> None:
    out = tmp_path / "out"
    argv = [a.format(out=out, run=setup, photos=setup / "photos") for a in args]
    res = CliRunner().invoke(main, argv)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert message.format(photos=setup / "photos") in " ".join(res.output.split())
    assert not out.exists()


def test_every_analysis_takes_device_and_batch_size(tmp_path) -> None:
    """--device everywhere a model runs; --batch-size wherever a batch means something (not the
    5 images of correspondence, not the weights of filters); evolution runs with both."""
    from zfnet.cli import analyze, visualize

    for group in (visualize, analyze):
        for name, cmd in group.commands.items():
            opts = {o for p in cmd.params for o in p.opts}
            if name != "filters":
                assert "--device" in opts, name
            if name not in ("filters", "correspondence"):
                assert "--batch-size" in opts, name
    run = tmp_path / "run"
    _ok(["train", "--data", "synthetic?n_train=64&n_val=32&size=32", "--model", "zfnet_small",
         "--out", str(run), "--epochs", "2", "--batch-size", "32", "--keep-epochs", "1,2",
         "--quiet", "--no-tensorboard"])
    text = _ok(["analyze", "evolution", "--checkpoint", str(run), "--images", "32", "--maps",
                "2", "--device", "cpu", "--batch-size", "8"])
    assert any(s.key == "evolution" for s in read_sections(run))
    # a bar over the work: at each of the 2 kept epochs, 32 images mined, 5 x 2 maps projected
    assert "evolution: 100%|" in text and "84/84 [" in text, text
    # the layers named: their maps followed, the others not
    _ok(["analyze", "evolution", "--checkpoint", str(run), "--images", "16", "--maps", "2",
         "--layer", "conv2,fc6", "--out", str(tmp_path / "chosen")])
    (section,) = read_sections(tmp_path / "chosen")
    shown = {r[0] for r in section.tables[0].rows}
    assert shown == {"conv2", "fc6"}, section.tables[0].rows


def test_the_rule_error_of_a_command_without_rule_offers_only_nonlinear(tmp_path) -> None:
    """analyze randomization computes every rule: its error at a Hardswish offers
    --nonlinear gradient, not a --rule option it does not have; nothing written."""
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["analyze", "randomization", "--model",
                                    "torchvision:mobilenet_v3_small", "--data",
                                    "synthetic?n_train=8&n_val=8&size=64", "--images", "1",
                                    "--out", str(out)])
    last = res.output.strip().splitlines()[-1]
    assert res.exit_code == 1 and last.startswith("Error: ") and "Hardswish" in last, last
    assert "--nonlinear gradient" in last and "--rule" not in last, last
    assert not out.exists()


def test_every_projecting_command_offers_what_the_rule_error_names(tmp_path) -> None:
    """The deconvnet's error at a Hardswish names --rule gradient and --nonlinear gradient: every
    command that projects takes both, evolution (Fig. 4) of a MobileNetV3 run included."""
    from zfnet.cli import analyze, visualize

    for group in (main, visualize, analyze):
        for name, cmd in group.commands.items():
            opts = {o for p in cmd.params for o in p.opts}
            if "--rule" in opts:
                assert "--nonlinear" in opts, name
    assert "--rule" in {o for p in analyze.commands["evolution"].params for o in p.opts}
    run = tmp_path / "run"
    _ok(["train", "--data", "synthetic?n_train=32&n_val=16&size=32", "--model",
         "torchvision:mobilenet_v3_small", "--out", str(run), "--epochs", "2",
         "--batch-size", "16", "--keep-epochs", "1,2", "--quiet", "--no-tensorboard"])
    evolution = ["analyze", "evolution", "--checkpoint", str(run), "--images", "16",
                 "--maps", "2"]
    res = CliRunner().invoke(main, evolution)
    last = res.output.strip().splitlines()[-1]
    assert res.exit_code == 1 and last.startswith("Error: ") and "Hardswish" in last
    assert "--rule gradient" in last and "--nonlinear gradient" in last, last
    assert not (run / "sections" / "evolution.json").exists()
    for options, said in ((["--nonlinear", "gradient"], "(deconvnet, paper Sec. 2.1;"),
                          (["--rule", "guided", "--nonlinear", "gradient"],
                           "(guided backpropagation;"),
                          (["--rule", "gradient"], "(gradient;")):
        _ok(evolution + options)
        section = next(s for s in read_sections(run) if s.key == "evolution")
        assert said in section.caption, (options, section.caption)


def test_topk_of_a_class_never_scored_above_zero_says_so_and_seed_one_shows_it(
        setup, tmp_path) -> None:
    """A fine-tuned model's class absent from the photos: its score is below zero on each, so
    its top-k were flat grey tiles and nothing said why; `zfnet project` offered --seed one,
    `visualize topk` had no such option."""
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(torch.load(setup / "r18.pth"))
    with torch.no_grad():
        model.fc.bias[3] = -1e4
    torch.save(model.state_dict(), tmp_path / "low.pth")
    (tmp_path / "labels.txt").write_text("".join(f"c{k}\n" for k in range(10)))
    args = ["visualize", "topk", "--model", "torchvision:resnet18", "--weights",
            str(tmp_path / "low.pth"), "--resize", "72", "--crop", "64", "--labels",
            str(tmp_path / "labels.txt"), "--data", f"images:{setup / 'photos'}", "--class",
            "c3", "--k", "2", "--quiet"]
    out = _ok([*args, "--out", str(tmp_path / "a")])
    assert ("note: fc class score 3 (c3) never above zero over the images: its projections "
            "are blank (--seed one shows what would raise it)") in out
    out = _ok([*args, "--seed", "one", "--out", str(tmp_path / "b")])
    assert "never above zero" not in out
    (gallery,) = read_sections(tmp_path / "b")
    assert gallery.metrics["seed"] == "one" and "seeded with 1" in gallery.caption


def test_a_run_looks_at_a_folder_of_photos_in_every_analysis(setup, tmp_path) -> None:
    """`--data images:DIR` with a zfnet run: topk and occlusion fitted the photos to the run's
    size, evolution refused them as 224 px images and invariance as having 0 classes; now
    each fits them, and invariance follows the class the run predicts."""
    run = tmp_path / "run"
    _ok(["train", "--data", "synthetic?n_train=64&n_val=32&size=32", "--model", "zfnet_small",
         "--out", str(run), "--epochs", "2", "--keep-epochs", "1,2", "--batch-size", "32",
         "--quiet", "--no-tensorboard"])
    photos = f"images:{setup / 'photos'}"
    _ok(["analyze", "evolution", "--checkpoint", str(run), "--data", photos, "--images", "3",
         "--maps", "2", "--layer", "conv1", "--out", str(tmp_path / "ev"), "--quiet"])
    out = _ok(["analyze", "invariance", "--checkpoint", str(run), "--data", photos,
               "--images", "2", "--out", str(tmp_path / "inv"), "--quiet"])
    assert "images of images:" in out
    sections = {s.key: s for s in read_sections(tmp_path / "inv")}
    assert "invariance_dataset" in sections and (tmp_path / "ev" / "index.html").is_file()
