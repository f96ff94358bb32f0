"""`zfnet eval --model SOURCE`: any model's top-1 / top-5 error on a dataset's validation split,
with its own preprocessing, the same figures as scoring its inputs by hand; and the errors of
giving the model twice, not at all, or with the wrong number of outputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from tests.processes import torchrun
from zfnet.cli import main
from zfnet.data import load_dataset
from zfnet.sources import load_data, load_source

CLASSES = ("n01", "n02", "n03")
WANT = [0, 2, 1, 1, 0, 2]  # the predictions made for the val images (labels 0 1 2 0 1 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    """3 classes of 2 photo-like images each (train and val), and resnet18 weights for 3
    classes saved from a random init (a fine-tuned copy)."""
    root = tmp_path_factory.mktemp("eval_source")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:60, 0:80] / 80
    for split in ("train", "val"):
        for k, cls in enumerate(CLASSES):
            (root / "data" / split / cls).mkdir(parents=True)
            for j in range(2):  # each image its own colours and stripes: far apart features
                f = rng.uniform(1, 6, 3)
                a = np.stack([128 + 120 * np.sin(2 * np.pi * (f[c] * xx + (c + 1) * j * yy)
                                                 + k) for c in range(3)], -1)
                Image.fromarray(a.astype(np.uint8)).save(root / "data" / split / cls / f"{j}.jpg")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    torch.save(net.state_dict(), root / "r18.pth")
    # its last layer fitted so that the 6 val images get the classes WANT (4 of them wrong):
    # a random init predicts one class for all, which would prove little
    src = load_source("torchvision:resnet18", str(root / "r18.pth"))
    val = load_data(src, f"imagefolder:{root / 'data'}").val
    x = torch.stack([val[i][0] for i in range(len(val))])
    src.model.fc = torch.nn.Identity()
    with torch.no_grad():
        features = src.model(x)  # (6, 512)
    target = torch.nn.functional.one_hot(torch.tensor(WANT), 3).float() * 10
    w = torch.linalg.lstsq(features, target).solution  # (512, 3)
    net.fc.weight.data, net.fc.bias.data = w.T.contiguous(), torch.zeros(3)
    torch.save(net.state_dict(), root / "r18.pth")
    return root


def _run(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["eval", *args])
    return r.exit_code, r.output


def _by_hand(setup: Path, ten_crop: bool) -> tuple[float, float]:
    """(top-1 error, top-2 error) of the model on its own inputs, scored here."""
    src = load_source("torchvision:resnet18", str(setup / "r18.pth"))
    val = load_data(src, f"imagefolder:{setup / 'data'}", ten_crop=ten_crop).val
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        if ten_crop:  # the softmax of the 10 crops averaged (paper Sec. 3)
            p = src.model(x.flatten(0, 1)).softmax(1).unflatten(0, (len(x), 10)).mean(1)
        else:
            p = src.model(x).softmax(1)
    order = p.argsort(1, descending=True)
    return ((order[:, 0] != y).float().mean().item(),
            (~(order[:, :2] == y[:, None]).any(1)).float().mean().item())


@pytest.mark.parametrize("ten_crop", [False, True])
def test_any_model_is_scored_on_its_own_inputs(setup, tmp_path, ten_crop) -> None:
    out = tmp_path / "r.json"
    code, text = _run(["--model", "torchvision:resnet18", "--weights", str(setup / "r18.pth"),
                       "--data", f"imagefolder:{setup / 'data'}", "--device", "cpu", "--amp",
                       "off", "--json", str(out), *(["--ten-crop"] if ten_crop else [])])
    assert code == 0, text
    r = json.loads(out.read_text())
    top1, _ = _by_hand(setup, ten_crop)
    if not ten_crop:  # the fitted predictions: 4 of 6 wrong, in this confusion matrix
        assert r["top1_error"] == pytest.approx(4 / 6)
        assert r["confusion_matrix"] == [[1, 1, 0], [1, 0, 1], [0, 1, 1]]
    assert r["n"] == 6 and r["epoch"] is None and r["model"].startswith("torchvision:resnet18")
    assert r["top1_error"] == pytest.approx(top1)
    assert r["class_names"] == list(CLASSES) and len(r["confusion_matrix"]) == 3
    crops = "10 crops" if ten_crop else "centre crop"
    assert f"on imagefolder:{setup / 'data'}, 6 images, {crops}: top-1 error " \
        f"{r['top1_error']:.2%}" in text, text
    assert "(epoch" not in text
    # 3 classes: a top-5 error would be 0 by construction; the per-class lines are headed
    assert f"{r['top1_error']:.2%}, top-5: every one of the 3 classes\ntop-1 accuracy per " \
        "class:\n" in text, text
    # the val split alone (a labelled test set, no train/): the same figures
    test_set = tmp_path / "test_set"
    shutil.copytree(setup / "data" / "val", test_set / "val")
    code, alone = _run(["--model", "torchvision:resnet18", "--weights", str(setup / "r18.pth"),
                        "--data", f"imagefolder:{test_set}", "--device", "cpu", "--amp", "off",
                        *(["--ten-crop"] if ten_crop else [])])
    assert code == 0, alone
    assert f"6 images, {crops}: top-1 error {r['top1_error']:.2%}" in alone, alone


def test_any_model_under_torchrun_counts_what_one_process_counts(setup, tmp_path) -> None:
    # two processes, each scoring its share of the val images and summing the counts: the
    # figures of one process (the loss up to float rounding), printed and written once; a
    # broken file in each share (val items 2 and 5 of 8: items r, r + 2, ... are process r's)
    data = tmp_path / "data"
    shutil.copytree(setup / "data", data)
    for cls in ("n01", "n02"):
        (data / "val" / cls / "x_broken.jpg").write_bytes(b"not a JPEG")
    # small crops: the counts and their sum do not depend on the size (80 crops each way)
    args = ["--model", "torchvision:resnet18", "--weights", str(setup / "r18.pth"), "--data",
            f"imagefolder:{data}", "--resize", "72", "--crop", "64", "--device", "cpu",
            "--amp", "off", "--ten-crop"]
    code, text = _run([*args, "--json", str(tmp_path / "one.json")])
    assert code == 0, text
    r = torchrun("-m", "zfnet", "eval", *args, "--json", str(tmp_path / "two.json"),
                 cwd=tmp_path, timeout=300)  # `-m zfnet` (zfnet/__main__.py) as `-m zfnet.cli`
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["n"], one["skipped"]) == (two["n"], two["skipped"]) == (6, 2)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert {k: v for k, v in two.items() if k != "loss"} == \
        {k: v for k, v in one.items() if k != "loss"}
    assert r.stdout.count("top-1 error") == 1 and r.stdout.count("wrote ") == 1, r.stdout
    # each process read only its share: each broken file was met (and warned about) once
    for cls in ("n01", "n02"):
        assert r.stderr.count(f"{cls}/x_broken.jpg") == 1, r.stderr[-3000:]


@pytest.mark.parametrize(("args", "says"), [
    (["--data", "imagefolder:{data}"], "give the model to score"),
    (["--model", "torchvision:resnet18", "--checkpoint", "{data}"],
     "--checkpoint and --model both"),
    (["--checkpoint", "{data}", "--weights", "DEFAULT"], "--weights go with --model"),
    (["--model", "torchvision:resnet18", "--live-weights", "--data", "imagefolder:{data}"],
     "--live-weights is for a --checkpoint run"),
    (["--model", "torchvision:resnet18"], "no dataset given"),
    (["--model", "torchvision:resnet18", "--data", "imagefolder:{data}"],
     "has 1000 outputs but dataset .* has 3 classes"),
    (["--model", "torchvision:resnet18", "--weights", "{weights}", "--data",
      "imagefolder:{data}", "--loader", "gpu"], "own preprocessing .* use --loader cpu"),
])
def test_wrong_model_options_are_one_line(setup, args, says) -> None:
    code, text = _run([a.format(data=setup / "data", weights=setup / "r18.pth") for a in args]
                      + ["--device", "cpu"])
    assert code != 0 and "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("Error: ") and re.search(says, last), text


def test_labels_score_each_class_by_the_output_of_its_name(setup, tmp_path) -> None:
    """A fine-tuned copy whose outputs are in another order than the sorted folders, with a
    4th class the data lacks: with --labels each folder is scored by the output named as it,
    the same confusion matrix as the model in the folders' order; a folder the labels do not
    name is an error naming it."""
    net = torchvision.models.resnet18(num_classes=3)
    net.load_state_dict(torch.load(setup / "r18.pth"))
    order = [2, 0, 1]  # output j of the new head is the old output order[j]
    w, b = net.fc.weight.data, net.fc.bias.data
    head = torch.nn.Linear(512, 4)
    head.weight.data[:3], head.bias.data[:3] = w[order], b[order]
    head.weight.data[3], head.bias.data[3] = 0.0, -100.0  # a class never predicted
    net.fc = head
    torch.save(net.state_dict(), tmp_path / "shuffled.pth")
    (tmp_path / "labels.txt").write_text("\n".join([CLASSES[k] for k in order] + ["n99"]))
    model = ["--model", "torchvision:resnet18", "--weights", str(tmp_path / "shuffled.pth"),
             "--data", f"imagefolder:{setup / 'data'}", "--device", "cpu", "--amp", "off"]
    code, text = _run([*model, "--labels", str(tmp_path / "labels.txt"),
                       "--json", str(tmp_path / "r.json")])
    assert code == 0, text
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["confusion_matrix"] == [[1, 1, 0], [1, 0, 1], [0, 1, 1]]  # as in the right order
    assert r["matched"] == [3, 4]
    assert "(each class scored by the output --labels names it; among 3 of the model's 4 " \
        "classes)" in text
    code, text = _run(model)  # without the names: 4 outputs for 3 classes
    assert code != 0 and "has 4 outputs but dataset" in text
    assert "give the model's class names with --labels FILE" in text  # the way on
    (tmp_path / "other.txt").write_text("n01\nn02\nn07\nn99\n")
    code, text = _run([*model, "--labels", str(tmp_path / "other.txt")])
    assert code != 0 and text.strip().splitlines()[-1] == (
        f"Error: dataset 'imagefolder:{setup / 'data'}' has classes that the labels of "
        f"torchvision:resnet18 {tmp_path / 'shuffled.pth'} do not name: n03; its class "
        "folders must be named as the labels are (the labels begin: n01, n02, n07, n99)")


def test_labels_may_be_kaggles_synset_mapping_a_wnid_and_its_words_a_line() -> None:
    """--labels LOC_synset_mapping.txt (Kaggle's: `n01440764 tench, Tinca tinca`) scores a
    copy of some of ImageNet's classes by the outputs of their WNIDs (it said: the labels do not
    name n01440764); labels whose first words repeat (`tiger shark`, `tiger cat`) match whole."""
    from types import SimpleNamespace

    from zfnet.train.evaluation import _outputs_by_name

    mapping = ["n01440764 tench, Tinca tinca", "n01443537 goldfish, Carassius auratus",
               "n01484850 great white shark, white shark"]
    bundle = SimpleNamespace(class_names=["n01443537", "n01484850"])
    assert _outputs_by_name(SimpleNamespace(labels=mapping, name="m"), bundle, "d") == [1, 2]
    words = SimpleNamespace(labels=["tiger shark", "tiger cat", "tiger"], name="m")
    assert _outputs_by_name(words, SimpleNamespace(class_names=["tiger"]), "d") == [2]
    with pytest.raises(ValueError, match="do not name: tiger cats"):
        _outputs_by_name(words, SimpleNamespace(class_names=["tiger cats"]), "d")


def test_a_class_named_as_two_outputs_is_refused() -> None:
    """Names that repeat (Keras's imagenet_class_index.json has two `crane`s, a bird and a
    machine): a folder `crane` is not scored by whichever comes first, it is an error."""
    from types import SimpleNamespace

    from zfnet.train.evaluation import _outputs_by_name

    source = SimpleNamespace(labels=["tench", "crane", "tabby", "crane"], name="m")
    assert _outputs_by_name(source, SimpleNamespace(class_names=["tabby"]), "d") == [2]
    with pytest.raises(ValueError, match=r"^dataset 'd' has class 'crane', which names 2 outputs "
                                         r"of m \(1, 3\); give --labels a file"):
        _outputs_by_name(source, SimpleNamespace(class_names=["tabby", "crane"]), "d")


def test_train_folders_problems_do_not_stop_or_warn_a_command_that_reads_val(setup,
                                                                              tmp_path) -> None:
    """eval and predict read val/ alone: an empty class folder or files of types not read
    under train/ stopped them ("Error: empty class folder(s) ...: DIR/train/n03") or were warned
    about; the classes are still numbered by train/'s class folders, as training numbers them."""
    data = tmp_path / "data"
    shutil.copytree(setup / "data", data)
    for f in (data / "train" / "n03").iterdir():
        f.unlink()  # an empty class folder
    (data / "train" / "n01" / "anim.gif").write_bytes(b"GIF89a")  # a type not read
    out = tmp_path / "r.json"
    model = ["--model", "torchvision:resnet18", "--weights", str(setup / "r18.pth")]
    code, text = _run([*model, "--data", f"imagefolder:{data}", "--device", "cpu", "--amp",
                       "off", "--json", str(out)])
    assert code == 0, text
    assert str(data / "train") not in text, text  # nothing said of train/
    r = json.loads(out.read_text())
    assert r["class_names"] == list(CLASSES) and r["top1_error"] == pytest.approx(4 / 6)
    res = CliRunner().invoke(main, ["predict", f"imagefolder:{data}", *model, "--top", "1"])
    assert res.exit_code == 0 and str(data / "train") not in res.output, res.output
    assert len([line for line in res.output.splitlines() if "/val/" in line]) == 6
    # what reads train/ (training, its mean image) is still stopped by its empty class folder
    with pytest.raises(ValueError, match=r"empty class folder\(s\) .*train/n03"):
        load_dataset(f"imagefolder:{data}?size=32")


def test_a_class_name_the_figure_font_lacks_is_one_note_not_warning_blocks(setup,
                                                                           tmp_path) -> None:
    """A class `café_日本`: matplotlib's confusion.png warned in 4 raw blocks (a glyph each,
    at each draw) with their source lines; now one note."""
    data = tmp_path / "data"
    shutil.copytree(setup / "data" / "val", data / "val")
    (data / "val" / "n02").rename(data / "val" / "café_日本")
    code, text = _run(["--model", "torchvision:resnet18", "--weights", str(setup / "r18.pth"),
                       "--data", f"imagefolder:{data}", "--device", "cpu", "--amp", "off",
                       "--out", str(tmp_path / "out")])
    assert code == 0, text
    assert "UserWarning" not in text and "Glyph" not in text, text
    notes = [line for line in text.splitlines() if "no glyph" in line]
    assert notes == ["note: the figures' font (DejaVu Sans) has no glyph for '日' (and maybe "
                     "other characters of their names): those characters are drawn as boxes"]
