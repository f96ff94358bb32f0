"""`zfnet project` and zfnet.analyses.units: a user's own images through any model's units,
end to end from the command line (weights from a file and from the torch hub cache, offline)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from zfnet.analyses.units import (
    TopCapped,
    Unit,
    choose_maps,
    project_units,
    unit_figure,
    write_units,
)
from zfnet.cli import main
from zfnet.data import load_images
from zfnet.deconvnet import project
from zfnet.display import LABEL_HEIGHT
from zfnet.sources import hub_file, load_source

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no downloads


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three of the user's photos (scikit-image's) of different sizes, and a broken file."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.jpg")
    return folder


def test_choose_maps() -> None:
    strength = torch.tensor([[0.1, 3.0, 2.0], [5.0, 0.0, 1.0]])
    assert choose_maps(strength, None, 2).tolist() == [[1, 2], [0, 2]]
    assert choose_maps(strength, [2, 0], None).tolist() == [[2, 0], [2, 0]]
    with pytest.warns(TopCapped, match="^top 9 is more than the 3 maps of conv1: all 3 are "):
        assert choose_maps(strength, None, 9, "conv1").shape == (2, 3)  # at most every map
    with pytest.raises(ValueError, match="outside the layer's 3 maps; valid: 0..2"):
        choose_maps(strength, [3], None)


def test_units_equal_the_engine_in_pixel_units(photos) -> None:
    """Each unit is the engine's projection of that map's strongest unit, times the inverse
    normalisation, with the receptive field of its position."""
    src = load_source("torchvision:resnet18")
    data = load_images([photos / "coffee.jpg", photos / "chelsea.jpg"], src.preprocessing)
    x = torch.stack([data[i][0] for i in range(2)])
    results = project_units(src.model, data, "layer2", top=3, rule="guided",
                            pixel_scale=src.preprocessing.pixel_scale())
    assert len(results) == 6
    scale = src.preprocessing.pixel_scale().reshape(-1, 1, 1)
    for unit, image, proj in results:
        want = project(src.model, x[unit.image: unit.image + 1], "layer2", unit.channel,
                       rule="guided")[0] * scale
        torch.testing.assert_close(proj, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
        assert image.dtype == torch.uint8 and image.shape == (3, 224, 224)
        t, left, b, r = unit.box
        assert 0 <= t < b <= 224 and 0 <= left < r <= 224
        outside = proj.clone()
        outside[:, t:b, left:r] = 0
        assert outside.abs().max() == 0  # nothing outside the unit's receptive field
    # the maps are each image's most active ones, strongest first
    acts = [u.activation for u, _, _ in results[:3]]
    assert acts == sorted(acts, reverse=True)


def test_several_layers_at_once_read_and_run_each_image_once(photos) -> None:
    """`zfnet project`'s layers (5 by default): each batch of images is read, run and projected
    once for all of them (each layer read every image again and ran its own forward pass); the
    units are the ones each layer alone gives, layer by layer, the class names at the layer
    they name."""
    src = load_source("torchvision:resnet18")
    data = load_images([photos / "coffee.jpg", photos / "chelsea.jpg", photos / "astronaut.jpg"],
                       src.preprocessing)
    read, forwards = [], []
    get = type(data).__getitem__

    class Counted(type(data)):  # the same dataset, its reads counted
        def __getitem__(self, i):
            read.append(i)
            return get(self, i)

    data.__class__ = Counted
    handle = src.model.register_forward_hook(  # (the geometry's pass on the meta device aside)
        lambda _m, inp, _o: forwards.append(1) if not inp[0].is_meta else None)
    names = [f"class {k}" for k in range(1000)]
    done = []
    both = project_units(src.model, data, ["layer1", "fc", "layer3"], top=2, batch_size=2,
                         unit_names={"fc": names}, progress=done.append)
    handle.remove()
    # 2 batches of images, each run to choose its units, then by the engine that projects them
    assert sorted(read) == [0, 1, 2] and len(forwards) == 2 * 2
    assert done == [2, 1]
    alone = [r for layer in ("layer1", "fc", "layer3")
             for r in project_units(src.model, data, layer, top=2,
                                    unit_names=names if layer == "fc" else None)]
    assert len(both) == len(alone) == 3 * 3 * 2
    for (u, image, proj), (v, image2, proj2) in zip(both, alone, strict=True):
        assert u == v and torch.equal(image, image2)
        torch.testing.assert_close(proj, proj2, rtol=1e-4, atol=1e-5 * float(proj2.abs().max()))
    assert {u.label is not None for u, _, _ in both if u.layer == "fc"} == {True}
    assert {u.label for u, _, _ in both if u.layer != "fc"} == {None}


def test_the_unit_at_a_position_is_the_engines_projection_of_that_unit(photos) -> None:
    """--position ROW,COL: each map's unit there, not its strongest; --top ranks the maps by
    their activation there."""
    from zfnet.activations import get_activations

    src = load_source("torchvision:resnet18")
    data = load_images([photos / "coffee.jpg", photos / "chelsea.jpg"], src.preprocessing)
    x = torch.stack([data[i][0] for i in range(2)])
    at = get_activations(src.model, x, ["layer3"])["layer3"][:, :, 3, 11]  # (2, 256)
    results = project_units(src.model, data, "layer3", top=2, position=(3, 11))
    assert [(u.image, u.channel) for u, _, _ in results] == [
        (i, int(c)) for i in range(2) for c in at[i].argsort(descending=True)[:2]]
    for unit, _, proj in results:
        assert (unit.row, unit.col) == (3, 11)
        assert unit.activation == pytest.approx(float(at[unit.image, unit.channel]), rel=1e-5)
        want = project(src.model, x[unit.image: unit.image + 1], "layer3", unit.channel,
                       positions=torch.tensor([[3, 11]]))[0]
        torch.testing.assert_close(proj, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
        t, left, b, r = unit.box
        outside = proj.clone()
        outside[:, t:b, left:r] = 0
        assert outside.abs().max() == 0 and b - t < 224  # the field of (3, 11), not the image


def test_figure_has_three_panels(tmp_path) -> None:
    image = torch.full((3, 20, 30), 200, dtype=torch.uint8)
    proj = torch.zeros(3, 20, 30)
    proj[:, 5:8, 10:12] = 1.0
    path = unit_figure(image, proj, (2, 3, 12, 15), tmp_path / "u.png", zoom=2)
    arr = np.asarray(Image.open(path))
    assert arr.shape == (40, 3 * 60 + 2 * 4, 3)
    mid = arr[:, 64:124]
    assert (mid[0, 0] == 128).all() and mid[12, 22].max() > 200  # grey 0, bright unit
    assert tuple(arr[4, 6]) == (255, 220, 0)  # the receptive field's outline
    # a title over each panel: the same panels under a strip of text
    titled = np.asarray(Image.open(unit_figure(image, proj, (2, 3, 12, 15), tmp_path / "t.png",
                                               zoom=2, titles=("a.jpg: conv1 map 5",
                                                               "deconvnet, activation 3.2",
                                                               "where: |projection|"))))
    top = titled.shape[0] - arr.shape[0]
    assert top > 10 and np.array_equal(titled[top:], arr)
    for j in range(3):  # ink over every panel, cut to its width
        assert (titled[:top, j * 64:j * 64 + 60] < 128).any()
        assert (titled[:top, j * 64 + 60:j * 64 + 64] == 255).all()
    # a long title wraps under itself (up to 3 lines): the unit's map and position kept
    long = ("photos/chelsea.png: resnet.encoder.stages.2 map 21 at (row 5, col 4)",
            "deconvnet, activation 3.2", "where: |projection|")
    wrapped = np.asarray(Image.open(unit_figure(image, proj, (2, 3, 12, 15), tmp_path / "w.png",
                                                zoom=4, titles=long)))
    assert wrapped.shape[0] - 4 * 20 == 3 * LABEL_HEIGHT + 2
    assert (wrapped[2 * LABEL_HEIGHT: 3 * LABEL_HEIGHT, :120] < 128).any()  # its third line


def test_files_of_images_that_share_a_name_stay_apart(tmp_path) -> None:
    """Photos in several folders, or one photo as .jpg and .png: a PNG each, none written over;
    the same map of one image twice: numbered."""
    names = ["dup/a/x.jpg", "dup/a/x.png", "dup/b/x.jpg", "dup/b/y.jpg", "dup/b/y.jpg"]
    image, proj = torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8)
    units = [Unit(i, n, "conv1", 5, 1.0, 0, 0, None) for i, n in enumerate(names)]
    index = json.loads(write_units([(u, image, proj) for u in units], tmp_path, "deconvnet",
                                   "test").read_text())
    files = [u["file"] for u in index["units"]]
    assert files == ["a_x.jpg_conv1_map5_deconvnet.png", "a_x.png_conv1_map5_deconvnet.png",
                     "b_x.jpg_conv1_map5_deconvnet.png", "y_conv1_map5_deconvnet.png",
                     "y_conv1_map5_deconvnet_2.png"]
    assert all((tmp_path / f).is_file() for f in files)


def test_file_names_keep_letters_of_any_script(tmp_path) -> None:
    """"my photo é 日本.jpg" was written as my_photo_...png and "日本.jpg" as image_...png: the
    letters are kept, spaces and separators are not; the images not read are listed."""
    names = ["my photo é 日本.jpg", "日本.jpg", "a/b\\c.jpg"]
    image, proj = torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8)
    units = [Unit(i, n, "conv1", 5, 1.0, 0, 0, None) for i, n in enumerate(names)]
    index = json.loads(write_units([(u, image, proj) for u in units], tmp_path, "deconvnet",
                                   "test", not_read=["broken.jpg"]).read_text())
    assert [u["file"] for u in index["units"]] == [
        "my_photo_é_日本_conv1_map5_deconvnet.png", "日本_conv1_map5_deconvnet.png",
        "b_c_conv1_map5_deconvnet.png"]
    assert index["not_read"] == ["broken.jpg"]


def test_project_command_with_a_weights_file(photos, tmp_path) -> None:
    """torchvision's vgg11 with weights saved from a randomly initialised copy, the
    preprocessing given on the command line, two files and a folder."""
    torch.manual_seed(1)
    torch.save(torchvision.models.vgg11().state_dict(), tmp_path / "vgg.pth")
    out = tmp_path / "look"
    res = CliRunner().invoke(main, [
        "project", str(photos / "coffee.jpg"), str(photos / "astronaut.jpg"),
        "--model", "torchvision:vgg11", "--weights", str(tmp_path / "vgg.pth"),
        "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--resize", "80", "--crop", "64",
        "--layer", "features.8", "--map", "3,17", "--out", str(out)])
    assert res.exit_code == 0, res.output
    index = json.loads((out / "project.json").read_text())
    units = index["units"]
    assert [(u["name"].split("/")[-1], u["channel"]) for u in units] == [
        ("coffee.jpg", 3), ("coffee.jpg", 17), ("astronaut.jpg", 3), ("astronaut.jpg", 17)]
    for u in units:
        png = Image.open(out / u["file"])
        titles = png.size[1] - 2 - 64 * 4  # the 64 px crop enlarged 4x, under the titles
        assert titles in (LABEL_HEIGHT, 2 * LABEL_HEIGHT, 3 * LABEL_HEIGHT)
    assert "coffee_features.8_map3_deconvnet.png" in res.output
    res = CliRunner().invoke(main, ["project", str(photos), "--model", "torchvision:vgg11",
                                    "--weights", str(tmp_path / "vgg.pth"), "--crop", "64",
                                    "--resize", "72", "--layer", "classifier.0", "--top", "1",
                                    "--out", str(tmp_path / "folder")])
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "folder/project.json").read_text())["units"]) == 3


def test_project_command_with_hub_weights_offline(photos, tmp_path) -> None:
    """`--weights DEFAULT` reads the torch hub cache (here a file saved from random init) and
    takes the weights' own preprocessing (resize 256, crop 224)."""
    enum = torchvision.models.ResNet18_Weights.DEFAULT
    hub_file(enum).parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), hub_file(enum))
    out = tmp_path / "look"
    res = CliRunner().invoke(main, ["project", str(photos / "chelsea.jpg"), "--model",
                                    "torchvision:resnet18", "--weights", "DEFAULT", "--layer",
                                    "layer4", "--top", "2", "--rule", "gradient", "--out",
                                    str(out)])
    assert res.exit_code == 0, res.output
    units = json.loads((out / "project.json").read_text())["units"]
    assert len(units) == 2 and all(u["file"].endswith("_gradient.png") for u in units)
    width, height = Image.open(out / units[0]["file"]).size
    assert width == 3 * 224 + 8 and height - 2 - 224 in (LABEL_HEIGHT, 2 * LABEL_HEIGHT,
                                                         3 * LABEL_HEIGHT)  # titles' lines
    # the same again with another rule into the same folder: both listed, each by its rule
    res = CliRunner().invoke(main, ["project", str(photos / "chelsea.jpg"), "--model",
                                    "torchvision:resnet18", "--weights", "DEFAULT", "--layer",
                                    "layer4", "--top", "2", "--rule", "guided", "--out",
                                    str(out)])
    assert res.exit_code == 0, res.output
    both = json.loads((out / "project.json").read_text())["units"]
    assert [u["rule"] for u in both] == ["gradient", "gradient", "guided", "guided"]
    assert [u["file"] for u in both[:2]] == [u["file"] for u in units]


def test_project_command_layers_default_to_the_main_stages(photos, tmp_path) -> None:
    """Without --layer, the layers are the network's main stages (as in `visualize topk`); a
    comma list names several."""
    torch.manual_seed(2)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    model = ["--model", "torchvision:resnet18", "--weights", str(tmp_path / "r18.pth"),
             "--resize", "72", "--crop", "64", "--top", "1"]
    for how, want in (([], ["relu", "layer1", "layer2", "layer3", "layer4"]),
                      (["--layer", "layer4,layer1"], ["layer4", "layer1"])):
        out = tmp_path / f"look{len(how)}"
        res = CliRunner().invoke(main, ["project", str(photos / "coffee.jpg"), *model, *how,
                                        "--out", str(out)])
        assert res.exit_code == 0, res.output
        units = json.loads((out / "project.json").read_text())["units"]
        assert [u["layer"] for u in units] == want
        assert len({u["file"] for u in units}) == len(want)  # a PNG each


@pytest.mark.filterwarnings("ignore:no rectifier")
def test_project_command_nonlinear_option(photos, tmp_path) -> None:
    """A network with GELUs (convnext): the deconvnet rule stops with a one-line error that
    names the way on, and nothing is written; `--nonlinear gradient` takes it; the mode ends
    with the command."""
    from zfnet.graph import current_nonlinear

    torch.manual_seed(3)
    torch.save(torchvision.models.convnext_tiny().state_dict(), tmp_path / "cnx.pth")
    argv = ["project", str(photos / "coffee.jpg"), "--model", "torchvision:convnext_tiny",
            "--weights", str(tmp_path / "cnx.pth"), "--resize", "40", "--crop", "32",
            "--layer", "features.3", "--top", "2"]
    res = CliRunner().invoke(main, [*argv, "--out", str(tmp_path / "no")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "GELU" in res.output and "--nonlinear gradient" in res.output, res.output
    assert not (tmp_path / "no").exists()
    res = CliRunner().invoke(main, [*argv, "--nonlinear", "gradient", "--out",
                                    str(tmp_path / "yes")])
    assert res.exit_code == 0, res.output
    units = json.loads((tmp_path / "yes/project.json").read_text())["units"]
    # no rectifier below features.3: the deconvnet rule there is the plain gradient, said so
    assert [(u["rule"], u["projection"]) for u in units] == [("deconvnet", "gradient")] * 2
    assert res.stdout.count(", projected by the gradient -> ") == 2  # on the command line too
    assert current_nonlinear() == "error"
    # inside a block, the linear layer on (N, H, W, C): its 384 maps, not its rows
    res = CliRunner().invoke(main, [*argv[:-4], "--layer", "features.1.0.block.3", "--channel",
                                    "300", "--rule", "gradient", "--out", str(tmp_path / "in")])
    assert res.exit_code == 0, res.output
    units = json.loads((tmp_path / "in/project.json").read_text())["units"]
    assert [(u["layer"], u["channel"]) for u in units] == [("features.1.0.block.3", 300)]
    assert f"wrote 1 projection and {tmp_path / 'in' / 'project.json'}" in res.output


@pytest.mark.parametrize("args,message", [
    (["--layer", "layer9"], "layer 'layer9' does not exist"),
    (["--layer", "layer1", "--map", "64"], "outside the 64 maps of layer1; valid: 0..63"),
    # of several layers, the one the map is not in is named
    (["--layer", "layer4,conv1", "--channel", "100"], "100 outside the 64 maps of conv1"),
    (["--layer", "layer1", "--channel", "1", "--top", "2"], "--map and --top"),
    (["--layer", "layer1", "--rule", "lrp"], "'lrp' is not one of"),
    (["--layer", "layer3,layer4", "--position", "10,5"],
     "position (row 10, col 5) is outside the 7x7 maps of layer 'layer4' (rows 0 to 6, "
     "columns 0 to 6)"),
    (["--layer", "fc", "--position", "0,0"], "layer 'fc' has no maps (a vector of 1000 units)"),
    (["--position", "3"], "'3' is not a row and a column, ROW,COL (from 0), e.g. 3,5"),
    (["--position", "3,-1"], "'3,-1' is not a comma list of integers >= 0"),
])
def test_project_command_errors(photos, tmp_path, args, message) -> None:
    out = tmp_path / "look"
    res = CliRunner().invoke(main, ["project", str(photos / "coffee.jpg"), "--model",
                                    "torchvision:resnet18", "--out", str(out), *args])
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert not out.exists()  # nothing written before the input is checked


def test_a_class_score_layer_is_told_as_units_named_by_their_class(photos, tmp_path) -> None:
    """A fine-tuned copy with 3 classes and --labels: its last layer's units are named by
    class, called units (no map, no position), and one that does not fire is said to project
    to nothing, on the line and over the panel."""
    torch.manual_seed(3)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Linear(512, 3)
    with torch.no_grad():  # class 1 never fires, class 2 always does
        net.fc.bias[:] = torch.tensor([0.0, -1e3, 1e3])
    torch.save(net.state_dict(), tmp_path / "r3.pth")
    (tmp_path / "labels.txt").write_text("cat\ncoffee\nrocket\n")
    out = tmp_path / "look"
    res = CliRunner().invoke(main, [
        "project", str(photos / "chelsea.jpg"), "--model", "torchvision:resnet18",
        "--weights", str(tmp_path / "r3.pth"), "--labels", str(tmp_path / "labels.txt"),
        "--resize", "72", "--crop", "64", "--layer", "fc,layer4", "--channel", "1,2",
        "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert any("fc unit 1 (coffee), activation -1e+03 (not active: this seed projects it to "
               "nothing; --seed one shows what would raise it) -> " in line for line in lines), \
        res.output
    assert any("fc unit 2 (rocket), activation 1e+03 -> " in line for line in lines)
    assert any(re.search(r"layer4 map 1 at \(row \d, col \d\), activation", line) for line in lines)
    units = json.loads((out / "project.json").read_text())["units"]
    fc = [u for u in units if u["layer"] == "fc"]
    assert [(u["label"], u["flat"], u["file"]) for u in fc] == [
        ("coffee", True, "chelsea_fc_unit1_deconvnet.png"),
        ("rocket", True, "chelsea_fc_unit2_deconvnet.png")]
    assert all(u["label"] is None and not u["flat"] for u in units if u["layer"] == "layer4")
    silent = np.asarray(Image.open(out / fc[0]["file"]))
    assert (silent[-64 * 4:, 64 * 4 + 4: 2 * 64 * 4 + 4] == 128).all()  # nothing


def test_project_a_class_by_its_name(photos, tmp_path) -> None:
    """--class NAME: the score of that class (the last layer's unit), found by its name, a
    synonym of it, or its number; whatever else would choose the units is refused with it."""
    torch.manual_seed(3)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Linear(512, 3)
    with torch.no_grad():
        net.fc.bias[:] = 1e3  # every class fires
    torch.save(net.state_dict(), tmp_path / "r3.pth")
    (tmp_path / "labels.txt").write_text("tabby, tabby cat\ncoffee mug\nrocket\n")
    model = ["--model", "torchvision:resnet18", "--weights", str(tmp_path / "r3.pth"),
             "--labels", str(tmp_path / "labels.txt"), "--resize", "72", "--crop", "64"]
    out = tmp_path / "look"
    res = CliRunner().invoke(main, ["project", str(photos / "chelsea.jpg"), *model, "--class",
                                    "Tabby Cat", "--class", "2", "--rule", "gradient",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    units = json.loads((out / "project.json").read_text())["units"]
    assert [(u["layer"], u["channel"], u["label"]) for u in units] == [
        ("fc", 0, "tabby, tabby cat"), ("fc", 2, "rocket")]
    for args, message in (
            (["--class", "rockt"], "class 'rockt' is not one of torchvision:resnet18 "),
            (["--class", "rockt"], "3 classes; did you mean 'rocket'?"),
            (["--class", "3"], "class 3 is outside torchvision:resnet18"),
            (["--class", "rocket", "--layer", "layer4"], "--layer picks others"),
            (["--class", "rocket", "--top", "2"], "--top picks others")):
        bad = tmp_path / "never"
        res = CliRunner().invoke(main, ["project", str(photos / "chelsea.jpg"), *model, *args,
                                        "--out", str(bad)])
        assert res.exit_code != 0 and "Traceback" not in res.output
        assert message in res.output, (args, res.output)
        assert not bad.exists()


def test_a_class_below_zero_is_projected_seeded_with_one(photos, tmp_path) -> None:
    """A class whose score is below zero projects to nothing with the paper's seed, and the
    output says --seed one shows it; with --seed one, its projection is the engine's gradient
    of the score (seeded with 1), in its own file, and project.json says how it was seeded."""
    torch.manual_seed(3)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Linear(512, 2)
    with torch.no_grad():
        net.fc.bias[:] = torch.tensor([-1e3, 1e3])  # "rocket" never scores above zero
    torch.save(net.state_dict(), tmp_path / "r2.pth")
    (tmp_path / "labels.txt").write_text("rocket\ncoffee mug\n")
    model = ["--model", "torchvision:resnet18", "--weights", str(tmp_path / "r2.pth"),
             "--labels", str(tmp_path / "labels.txt"), "--resize", "72", "--crop", "64"]
    out = tmp_path / "look"
    photo = str(photos / "coffee.jpg")
    res = CliRunner().invoke(main, ["project", photo, *model, "--class", "rocket", "--rule",
                                    "gradient", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "not active: this seed projects it to nothing; --seed one shows" in res.output
    res = CliRunner().invoke(main, ["project", photo, *model, "--class", "rocket", "--rule",
                                    "gradient", "--seed", "one", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "(seeded with 1)" in res.output
    units = json.loads((out / "project.json").read_text())["units"]
    assert [(u["file"].endswith("_gradient_seed1.png"), u["seed"]) for u in units] == [
        (False, "activation"), (True, "one")]  # both kept, in files of their own
    assert units[1]["activation"] < 0
    src = load_source("torchvision:resnet18", str(tmp_path / "r2.pth"), resize=72, crop=64)
    data = load_images([photos / "coffee.jpg"], src.preprocessing)
    [(unit, _, proj)] = project_units(src.model, data, "fc", channels=[0], rule="gradient",
                                      pixel_scale=src.preprocessing.pixel_scale(), seed="one")
    want = project(src.model, data[0][0][None], "fc", 0, rule="gradient", seed="one")[0]
    torch.testing.assert_close(proj, want * src.preprocessing.pixel_scale().reshape(-1, 1, 1))
    assert proj.abs().max() > 0 and unit.activation < 0
    x = data[0][0][None].requires_grad_(True)
    src.model(x)[0, 0].backward()  # the gradient of the score: what seed one projects
    torch.testing.assert_close(want, x.grad[0], rtol=1e-4, atol=1e-6 * x.grad.abs().max().item())


def test_a_broken_file_is_named_once_over_several_layers(photos, tmp_path) -> None:
    """A folder with a broken file and a text file, projected at three layers (each reads the
    folder again): each file is named by one warning line, not one per layer."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes((photos / "coffee.jpg").read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = tmp_path / "look"
    res = CliRunner().invoke(main, [
        "project", str(folder), str(folder / "broken.jpg"), "--model", "torchvision:resnet18",
        "--resize", "40", "--crop", "32", "--layer", "conv1,layer1,layer2", "--top", "1",
        "--out", str(out)])
    assert res.exit_code == 0, res.output
    named = [line for line in res.output.splitlines() if "broken.jpg" in line]
    assert len(named) == 2 and named[0].startswith("warning: skipping broken image "), named
    assert named[1] == f"not read (1): {folder / 'broken.jpg'}", named  # the summary, once
    assert len(json.loads((out / "project.json").read_text())["units"]) == 3
