"""`zfnet predict`: each image's most probable classes, checked against the model run by hand
and against `zfnet eval` on the same images."""

import csv
import json
import re

import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from torchvision.transforms import v2

from zfnet.cli import main

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no downloads


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three photos of different sizes, a broken file, and a 3-class resnet18 with names."""
    from skimage import data

    root = tmp_path_factory.mktemp("predict")
    photos = root / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(photos / f"{name}.jpg")
    (root / "broken.jpg").write_bytes((photos / "coffee.jpg").read_bytes()[:400])
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    torch.save(net.state_dict(), root / "r3.pth")
    (root / "labels.txt").write_text("tabby, tabby cat\ncoffee mug\nrocket\n")
    return root


def _model(setup) -> list[str]:
    return ["--model", "torchvision:resnet18", "--weights", str(setup / "r3.pth"), "--labels",
            str(setup / "labels.txt"), "--resize", "72", "--crop", "64"]


def _by_hand(setup, ten_crop: bool = False) -> dict[str, torch.Tensor]:
    """Each photo's class probabilities, by torchvision's own transforms and the model."""
    net = torchvision.models.resnet18(num_classes=3)
    net.load_state_dict(torch.load(setup / "r3.pth"))
    net.eval()
    norm = v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    out = {}
    for name in ("astronaut", "chelsea", "coffee"):
        img = v2.functional.pil_to_tensor(Image.open(setup / "photos" / f"{name}.jpg"))
        img = v2.functional.resize(img, 72, antialias=True).float() / 255
        with torch.no_grad():
            if ten_crop:  # the 10 crops of the centre square the centre crop is cut from
                square = v2.functional.center_crop(img, [72, 72])
                crops = torch.stack(v2.functional.ten_crop(square, [64, 64]))
                out[name] = net(norm(crops)).softmax(1).mean(0)
            else:
                out[name] = net(norm(v2.functional.center_crop(img, [64, 64]))[None]).softmax(1)[0]
    return out


def test_predictions_are_the_models_softmax_named_and_written(setup, tmp_path) -> None:
    out = tmp_path / "new" / "pred.json"  # its folder made
    res = CliRunner().invoke(main, ["predict", str(setup / "photos"), str(setup / "broken.jpg"),
                                    *_model(setup), "--top", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = json.loads(out.read_text())
    assert written["source"].startswith("torchvision:resnet18 ")
    assert written["not_read"] == [str(setup / "broken.jpg")]
    assert all("label" not in e for e in written["images"])  # photos have no labels
    assert f"not read (1): {setup / 'broken.jpg'}" in res.output
    assert f"wrote the predictions of {len(written['images'])} images to {out}" in res.output
    hand = _by_hand(setup)
    images = written["images"]
    assert [e["image"].rsplit("/", 1)[-1] for e in images] == [
        "astronaut.jpg", "chelsea.jpg", "coffee.jpg"]  # the folder's order, the broken left out
    names = ["tabby, tabby cat", "coffee mug", "rocket"]
    for e in images:
        p = hand[e["image"].rsplit("/", 1)[-1][:-4]]
        want = p.topk(2)
        assert [t["class"] for t in e["top"]] == want.indices.tolist()
        assert [t["name"] for t in e["top"]] == [names[k] for k in want.indices]
        # resampling differs a little from torchvision's (zfnet decodes and resizes its own way)
        assert [t["probability"] for t in e["top"]] == pytest.approx(want.values.tolist(),
                                                                     abs=0.02)
        first = e["top"][0]
        assert f"{e['image']}: {first['name']} {first['probability']:.1%}, " in res.output
    # CSV: a line per class; the 10 crops averaged
    res = CliRunner().invoke(main, ["predict", str(setup / "photos"), *_model(setup),
                                    "--ten-crop", "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 9 and [r["rank"] for r in rows[:3]] == ["1", "2", "3"]  # 3 classes
    ten = _by_hand(setup, ten_crop=True)
    for r in rows:
        p = ten[r["image"].rsplit("/", 1)[-1][:-4]]
        assert float(r["probability"]) == pytest.approx(p[int(r["class"])].item(), abs=0.02)


def test_unnamed_classes_are_told_how_to_name_them(setup, tmp_path) -> None:
    model = _model(setup)[:4] + ["--resize", "72", "--crop", "64"]  # no --labels
    res = CliRunner().invoke(main, ["predict", str(setup / "photos" / "coffee.jpg"), *model])
    assert res.exit_code == 0, res.output
    assert "coffee.jpg: class " in res.output
    assert "the classes have no names (--labels FILE names them, one a line)\n" in res.output
    torch.save(torchvision.models.squeezenet1_1().state_dict(), tmp_path / "sq.pth")
    sq = ["--model", "torchvision:squeezenet1_1", "--weights", str(tmp_path / "sq.pth"),
          "--resize", "72", "--crop", "64", str(setup / "photos" / "coffee.jpg")]
    res = CliRunner().invoke(main, ["predict", *sq])  # ImageNet's 1000 outputs: said so
    assert "(--labels FILE names them, one a line; --labels imagenet: ImageNet's 1000)" \
        in res.output, res.output
    res = CliRunner().invoke(main, ["predict", *sq, "--labels", "imagenet", "--top", "1000"])
    assert res.exit_code == 0 and "no names" not in res.output and "tabby 0." in res.output
    assert "--top 1000" not in res.output  # all 1000: nothing left out, nothing to say
    res = CliRunner().invoke(main, ["predict", *sq, "--top", "1001"])
    assert res.exit_code == 0 and "--top 1001: torchvision:squeezenet1_1" in res.output
    assert "has 1000 classes, all shown" in res.output, res.output
    # labelled folders of as many classes as the model: named as eval scores them (they were
    # "class 2 (label: coffee)")
    folder = tmp_path / "folder"
    for k, name in enumerate(("astronaut", "chelsea", "coffee")):
        (folder / "val" / f"c{k}_{name}").mkdir(parents=True)
        (folder / "val" / f"c{k}_{name}" / f"{name}.jpg").write_bytes(
            (setup / "photos" / f"{name}.jpg").read_bytes())
    res = CliRunner().invoke(main, ["predict", f"imagefolder:{folder}", *model, "--top", "1"])
    assert res.exit_code == 0, res.output
    assert re.search(r"astronaut\.jpg: c\d_\w+ [\d.]+% \(label: c0_astronaut\)$", res.output,
                     re.M), res.output
    assert "output k is named by the data's k-th class folder (sorted)" in res.output


def test_mixed_precision_predicts_the_same_classes(setup, tmp_path) -> None:
    """`--amp bf16`: the model under bf16 autocast, the same top classes as float32 and
    probabilities close to them; the file says which precision made them."""
    runner = CliRunner()
    got = {}
    for amp in ("off", "bf16"):
        out = tmp_path / f"{amp}.json"
        res = runner.invoke(main, ["predict", str(setup / "photos"), *_model(setup), "--amp",
                                   amp, "--out", str(out)])
        assert res.exit_code == 0, res.output
        got[amp] = json.loads(out.read_text())
    assert got["off"]["precision"] == "float32" and got["bf16"]["precision"] == "bfloat16"
    for f32, b16 in zip(got["off"]["images"], got["bf16"]["images"], strict=True):
        assert b16["top"][0]["class"] == f32["top"][0]["class"]
        assert [t["probability"] for t in b16["top"]] == pytest.approx(
            [t["probability"] for t in f32["top"]], abs=0.03)
        assert [t["probability"] for t in b16["top"]] != [t["probability"] for t in f32["top"]]


def test_a_runs_predictions_agree_with_its_evaluation(tmp_path) -> None:
    """On a zfnet run's val images, the top-1 predictions score what `zfnet eval` scores in
    float32."""
    spec = "synthetic?n_train=96&n_val=48&size=32"
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--data", spec, "--model", "zfnet_small", "--out",
                               str(run), "--epochs", "2", "--batch-size", "32", "--quiet",
                               "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["eval", "--checkpoint", str(run), "--amp", "off", "--json",
                               str(tmp_path / "e.json")])  # float32, as predict runs
    assert res.exit_code == 0, res.output
    top1 = json.loads((tmp_path / "e.json").read_text())["top1_error"]
    res = runner.invoke(main, ["predict", spec, "--checkpoint", str(run), "--top", "1", "--out",
                               str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    from zfnet.data import load_dataset

    bundle = load_dataset(spec)
    images = json.loads((tmp_path / "p.json").read_text())["images"]
    assert len(images) == 48
    assert [e["label"] for e in images] == [bundle.class_names[t] for t in bundle.val.targets]
    right = [e["top"][0]["name"] == e["label"] for e in images]
    assert 1 - sum(right) / len(right) == pytest.approx(top1, abs=1e-6)
    assert re.search(r"^image 0: \w+ [\d.]+% \(label: face\)$", res.output, re.M), res.output


@pytest.mark.parametrize("args,message", [
    (["--out", "{tmp}/p.txt"], "ends in .txt; give a file ending in .csv or .json"),
    (["--out", "{tmp}/f.csv/p.csv"], "f.csv is a file, so {tmp}/f.csv/p.csv cannot be made"),
    (["--out", "{tmp}/sub/"], "sub/ is a folder; give a file ending in .csv or .json"),
    (["--top", "0"], "--top"),
    (["--class", "1"], "No such option"),
    (["--amp", "fp16", "--out", "{tmp}/p.csv"], "needs a CUDA device"),
])
def test_bad_input_is_one_line_and_writes_nothing(setup, tmp_path, args, message) -> None:
    argv = [a.format(tmp=tmp_path) for a in args]
    (tmp_path / "f.csv").write_text("a file in the way\n")
    res = CliRunner().invoke(main, ["predict", str(setup / "photos"), *_model(setup), *argv])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert message.format(tmp=tmp_path) in res.output, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["f.csv"]  # nothing written


def test_nothing_readable_is_an_error(setup, tmp_path) -> None:
    res = CliRunner().invoke(main, ["predict", str(setup / "broken.jpg"), *_model(setup)])
    assert res.exit_code != 0 and "none of the images could be read" in res.output
    unnamed = _model(setup)[:4] + ["--resize", "72", "--crop", "64"]  # no --labels
    res = CliRunner().invoke(main, ["predict", str(setup / "broken.jpg"), *unnamed])
    assert res.output.strip().splitlines()[-1].startswith("Error: none of the images")
    assert "no names" not in res.output  # no hint about predictions there are none of


def test_a_link_to_a_missing_file_is_counted_as_not_read(setup, tmp_path) -> None:
    """A dangling link in a folder was warned about when listed and left out of "not read"."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes((setup / "photos" / "coffee.jpg").read_bytes())
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    res = CliRunner().invoke(main, ["predict", str(folder), *_model(setup), "--top", "1"])
    assert res.exit_code == 0, res.output
    assert f"not read (1): {folder / 'gone.jpg'}" in res.output
    assert re.search(r"gone.jpg: a link to .*nowhere.jpg, which does not exist", res.output)


def test_project_says_and_lists_the_images_it_could_not_read(setup, tmp_path) -> None:
    """`zfnet project` on a folder with unreadable files said only "wrote 2 projections": now
    which were not read, as predict says it, and project.json lists them."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes((setup / "photos" / "coffee.jpg").read_bytes())
    (folder / "broken.jpg").write_bytes((setup / "broken.jpg").read_bytes())
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["project", str(folder), *_model(setup), "--layer",
                                    "layer1", "--top", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"not read (2): {folder / 'broken.jpg'}, {folder / 'empty.png'}" in res.output
    index = json.loads((out / "project.json").read_text())
    assert index["not_read"] == [str(folder / "broken.jpg"), str(folder / "empty.png")]
    assert [u["name"] for u in index["units"]] == [str(folder / "coffee.jpg")]
