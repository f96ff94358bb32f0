"""A model from the user's own code (`zfnet.user_code`, `zfnet.sources`): `FILE.py:NAME` and
`package.module:NAME` through `load_source` and every command, `from_module` from Python, and the
explorer on such a model. The one-line errors of its mistakes are in tests/cli/test_errors.py."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from zfnet.cli import main
from zfnet.explorer.app import create_app
from zfnet.explorer.session import Explorer
from zfnet.models import create_model
from zfnet.pipeline import gallery
from zfnet.report import build_report, read_sections
from zfnet.sources import from_module, load_data, load_source
from zfnet.user_code import python_form

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no downloads

# A residual net written as people write them: functional ReLUs, a block imported from a file
# beside it, fc layers sized for 32 px inputs, the number of classes an argument.
NETS = """
import torch
import torch.nn.functional as F
from torch import nn

from blocks import Block


class Net(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Block(8)
        self.head = nn.Linear(8 * 8 * 8, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 4)
        return self.head(torch.flatten(self.block(x), 1))


def small():
    return Net(num_classes=3)


def timm_like():
    net = Net()
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5, 0.4, 0.3),
                          "std": (0.2, 0.2, 0.25), "crop_pct": 0.8, "interpolation": "bicubic"}
    return net


def grey():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


MODEL = Net(num_classes=4)
"""

BLOCKS = """
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv(x))
"""

SMALL = {"resize": 36, "crop": 32}


@pytest.fixture()
def code(tmp_path):
    """The user's folder: nets.py and blocks.py beside it, and a few photos."""
    from skimage import data

    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "blocks.py").write_text(BLOCKS)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.jpg")
    yield tmp_path
    sys.modules.pop("blocks", None)  # imported from the folder beside nets.py


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_forms() -> None:
    assert python_form("nets.py:build") == ("nets.py", "build")
    assert python_form("dir/my nets.py: Net ") == ("dir/my nets.py", "Net")
    assert python_form("my_pkg.models:zoo.small") == ("my_pkg.models", "zoo.small")
    for other in ("nets.py", "zfnet_small", "runs/demo", "nets.py:", "a/b:c", "x:1abc"):
        assert python_form(other) is None, other


def test_a_file_of_the_users_code(code) -> None:
    """Built from seed 0 (the same weights twice, the caller's RNG untouched), in eval mode,
    its sibling module imported from its folder, which leaves sys.path after."""
    path_before = list(sys.path)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = load_source(f"{code}/nets.py:small", **SMALL)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = load_source(f"{code}/nets.py:small", **SMALL)
    assert sys.path == path_before
    assert _same(a.model, b.model) and not a.model.training
    assert a.kind == "python" and a.name == f"{code}/nets.py:small (random init)"
    assert a.meta["num_classes"] == 3 and a.labels is None
    assert any("random init (seed 0)" in n for n in a.meta["notes"])
    # ImageNet's mean and std (a default), at the --resize/--crop given
    assert "preprocessing: resize 36, crop 32, mean 123.7,116.3,103.5, std 58.40,57.12,57.38 " \
        "(0..255 units) (--resize, --crop given; the mean and std: ImageNet's, a default)" \
        in a.meta["notes"]
    prep = a.preprocessing
    assert (prep.resize, prep.crop, prep.in_channels) == (36, 32, 3)
    assert prep.mean == pytest.approx((123.675, 116.28, 103.53))
    # a class, and a model object built at import, name what builds the model too
    assert load_source(f"{code}/nets.py:Net", **SMALL).meta["num_classes"] == 10
    assert load_source(f"{code}/nets.py:MODEL", **SMALL).meta["num_classes"] == 4


def test_a_module_found_from_the_current_folder(code, monkeypatch) -> None:
    pkg = code / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(NETS)
    monkeypatch.chdir(code)
    src = load_source("my_pkg.nets:small", **SMALL)
    assert src.meta["num_classes"] == 3 and src.kind == "python"
    for name in [m for m in sys.modules if m.startswith("my_pkg")]:
        monkeypatch.delitem(sys.modules, name)


def test_preprocessing_from_the_models_config_or_its_channels(code) -> None:
    """A timm-style pretrained_cfg gives the preprocessing (crop_pct sets the resize); a
    one-channel model gets ImageNet's mean and std averaged over the channels."""
    src = load_source(f"{code}/nets.py:timm_like")
    p = src.preprocessing
    assert (p.resize, p.crop, p.interpolation) == (40, 32, "bicubic")
    assert p.mean == pytest.approx((127.5, 102.0, 76.5)) and p.std == pytest.approx(
        (51.0, 51.0, 63.75))
    assert any("pretrained_cfg" in n for n in src.meta["notes"])
    g = load_source(f"{code}/nets.py:grey").preprocessing
    assert g.in_channels == 1 and (g.resize, g.crop) == (256, 224)
    assert g.mean == pytest.approx((255 * (0.485 + 0.456 + 0.406) / 3,))


def test_weights_files(code) -> None:
    """A state dict of another number of classes rebuilds a builder that takes num_classes;
    a model object takes its own only."""
    torch.manual_seed(1)
    nets = load_source(f"{code}/nets.py:Net", **SMALL).model.__class__
    trained = nets(num_classes=7)
    torch.save(trained.state_dict(), code / "seven.pth")
    src = load_source(f"{code}/nets.py:Net", str(code / "seven.pth"), **SMALL)
    assert _same(src.model, trained) and src.meta["num_classes"] == 7
    assert src.name == f"{code}/nets.py:Net {code / 'seven.pth'}"
    assert not any("random init" in n for n in src.meta["notes"])
    with pytest.raises(ValueError, match=r"fits .*nets.py:small\(num_classes=7\), which it "
                                         "does not take"):
        load_source(f"{code}/nets.py:small", str(code / "seven.pth"), **SMALL)
    four = nets(num_classes=4)
    torch.save(four.state_dict(), code / "four.pth")
    assert _same(load_source(f"{code}/nets.py:MODEL", str(code / "four.pth"), **SMALL).model,
                 four)


def test_the_layer_table_and_the_commands(code, tmp_path) -> None:
    """`zfnet models` lists its layers (on the meta device); `zfnet project` and `zfnet
    visualize topk` on a folder of photos work as for any other model, and the projection is
    the engine's on the same model."""
    net = f"{code}/nets.py:Net"
    res = CliRunner().invoke(main, ["models", net, "--crop", "32"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0] for line in res.output.splitlines()[2:]}
    assert {"stem", "block.conv", "head"} <= rows
    out = tmp_path / "look"
    model = ["--model", net, "--resize", "36", "--crop", "32"]
    res = CliRunner().invoke(main, ["project", str(code / "photos" / "coffee.jpg"), *model,
                                    "--layer", "block", "--top", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = json.loads((out / "project.json").read_text())
    assert [u["layer"] for u in written["units"]] == ["block", "block"]
    res = CliRunner().invoke(main, ["visualize", "topk", *model, "--data",
                                    f"images:{code / 'photos'}", "--layer", "block", "--k", "2",
                                    "--maps-per-layer", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["analyze", "filters", *model, "--out", str(out)])
    assert res.exit_code == 0, res.output  # its input size given, as to every command
    assert {s.key for s in read_sections(out)} >= {"topk_gallery", "filters"}


def test_from_module_in_python(code, tmp_path) -> None:
    """A model object of the user's own: its preprocessing, labels checked against its
    outputs, its size tried at once; the analyses and the explorer take it."""
    sys.path.insert(0, str(code))
    try:
        from nets import Net  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("nets", None)
    torch.manual_seed(0)
    net = Net(num_classes=3)
    with pytest.raises(ValueError, match=r"does not take 3x224x224 inputs .*; give the size it "
                       r"takes with crop= \(and resize=\), its channels with mean=/std= "
                       r"\(zfnet's commands feed it square crops; from Python, "
                       r"zfnet.deconvnet.project takes inputs of any HxW\)$"):
        from_module(net)  # its arguments named, not the command's --crop
    with pytest.raises(ValueError, match=r"^crop=8: ConvNet takes 32 px inputs"):
        from_module(create_model("zfnet_small", input_size=32), crop=8)
    with pytest.raises(ValueError, match="2 class names for Net, whose last layer has 3 outputs"):
        from_module(net, labels=["cat", "dog"], crop=32)
    with pytest.raises(ValueError, match="takes a torch.nn.Module, not a dict"):
        from_module({})
    with pytest.raises(ValueError, match=r"returns a tensor of shape \(1, 8, 30, 30\), not "
                       r"class scores \(N, classes\).*flattened"):
        from_module(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()), crop=32)
    with pytest.raises(ValueError, match=r"mean \[124.0\] must be numbers in \[0, 1\], in 0..1"):
        from_module(net, crop=32, mean=[124.0])
    # mean and std as model cards give them (0..1), one value for every channel
    p = from_module(net, crop=32, mean=[0.5], std=[0.25, 0.5, 0.25]).preprocessing
    assert p.mean == pytest.approx((127.5,) * 3) and p.std == pytest.approx(
        (63.75, 127.5, 63.75))
    src = from_module(net, resize=36, crop=32, labels=["cat", "dog", "fish"], name="mine")
    assert src.model is net and not net.training and src.name == "mine"
    bundle = load_data(src, f"images:{code / 'photos'}")
    out = tmp_path / "report"
    gallery(src.model, bundle, out, layers=["block"], k=2, n_maps=2)
    assert (build_report(out)).is_file()
    e = Explorer(src, bundle, cache_dir=tmp_path / "cache")
    assert {"stem", "block", "block.conv", "head"} <= {r.name for r in e.layers}
    assert e.default_layer == "block"  # the stages: stem and the residual block's output
    with TestClient(create_app(e)) as c:
        top = c.get("/api/predict?image=val:0").json()["top"]
        assert {t["name"] for t in top} == {"cat", "dog", "fish"}
        u = c.get("/api/unit?image=val:0&layer=block&unit=1").json()
        with torch.no_grad():  # the strongest unit of map 1, as the model computes it
            stem = torch.nn.functional.max_pool2d(torch.relu(net.stem(e.val[0][0][None])), 4)
            maps = torch.relu(stem + net.block.conv(stem))[0, 1]
        assert u["activation"] == pytest.approx(float(maps.max()), rel=1e-5)
        assert float(maps[u["row"], u["col"]]) == pytest.approx(float(maps.max()), rel=1e-5)
        for rule in ("deconvnet", "guided", "gradient"):
            png = np.asarray(Image.open(io.BytesIO(c.get(u["rules"][rule]).content)))
            assert png.ndim == 3 and png.std() > 0, rule
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())


def test_the_guide_runs_as_written(tmp_path, monkeypatch) -> None:
    """docs/your-model.md: its file, its commands (each through the CLI) and its Python, in a
    folder with a photo, a folder of photos and a 5-class my_net.pth."""
    import re
    import shlex
    from pathlib import Path

    from skimage import data

    doc = Path(__file__).parents[1] / "docs" / "your-model.md"
    blocks = re.findall(r"```(\w+)\n(.*?)```", doc.read_text(), re.S)
    python = [code for lang, code in blocks if lang == "python"]
    shell = [code for lang, code in blocks if lang == "sh"]
    assert len(python) == 2 and len(shell) == 2
    (tmp_path / "my_net.py").write_text(python[0])
    photos = tmp_path / "my_photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.jpg")
    Image.fromarray(data.rocket()).save(tmp_path / "my_photo.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # `from my_net import Net`, as python does
    monkeypatch.delitem(sys.modules, "my_net", raising=False)
    from my_net import Net  # type: ignore[import-not-found]

    torch.manual_seed(0)
    torch.save(Net(num_classes=5).state_dict(), tmp_path / "my_net.pth")
    # the training's data made small: 200 images instead of 6000
    training = shell[1].replace('"synthetic?size=32"', '"synthetic?size=32&n_train=200&n_val=64"')
    assert training != shell[1]
    for line in (shell[0] + training).strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "zfnet"
        res = CliRunner().invoke(main, argv[1:])
        assert res.exit_code == 0, f"{line}\n{res.output}"
    assert (tmp_path / "look" / "project.json").is_file()
    assert "evolution" in {s.key for s in read_sections(tmp_path / "runs" / "my_net")}
    exec(compile(python[1], str(doc), "exec"), {})
    sections = {s.key for s in read_sections(tmp_path / "look")}
    assert "topk_gallery" in sections and (tmp_path / "look" / "index.html").is_file()
    monkeypatch.delitem(sys.modules, "my_net", raising=False)


def test_class_names_from_a_file(code, tmp_path) -> None:
    """--labels / labels=: a text file of one name a line, a JSON list or an index object; one
    name per output; not for a zfnet run, which holds its own."""
    from zfnet.sources import read_labels

    (tmp_path / "names.txt").write_text("cat\n\ndog\nfish\n")
    (tmp_path / "names.json").write_text('["cat", "dog", "fish"]')
    (tmp_path / "id2label.json").write_text('{"2": "fish", "0": "cat", "1": "dog"}')
    for f in ("names.txt", "names.json", "id2label.json"):
        assert read_labels(tmp_path / f) == ["cat", "dog", "fish"], f
        src = load_source(f"{code}/nets.py:small", labels=str(tmp_path / f), **SMALL)
        assert src.labels == ["cat", "dog", "fish"]
    # Keras's imagenet_class_index.json (an index to a class and its words): as the lines of
    # Kaggle's LOC_synset_mapping.txt, whose first words score a copy of some classes by WNID
    (tmp_path / "imagenet_class_index.json").write_text(
        '{"1": ["n01443537", "goldfish"], "0": ["n01440764", "tench"], "2": ["n01484850", '
        '"great_white_shark"]}')
    assert read_labels(tmp_path / "imagenet_class_index.json") == [
        "n01440764 tench", "n01443537 goldfish", "n01484850 great_white_shark"]
    (tmp_path / "gaps.json").write_text('{"0": "cat", "2": "fish"}')
    (tmp_path / "bad.json").write_text('["cat", 3]')
    (tmp_path / "triple.json").write_text('{"0": ["n01", "cat", "x"]}')
    (tmp_path / "broken.json").write_text('["cat"')
    for f, message in (("gaps.json", "outputs 0..N-1"), ("bad.json", "list of names"),
                       ("triple.json", "or to a class and its words"),
                       ("broken.json", "not valid JSON"), ("none.txt", "does not exist")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            load_source(f"{code}/nets.py:small", labels=str(tmp_path / f), **SMALL)
    with pytest.raises(ValueError, match="3 class names .* 10 outputs: give one name per output"):
        load_source(f"{code}/nets.py:Net", labels=str(tmp_path / "names.txt"), **SMALL)
    # the occlusion report names each image's predicted class by the file's names
    out = tmp_path / "look"
    res = CliRunner().invoke(main, [
        "analyze", "occlusion", "--model", f"{code}/nets.py:small", "--labels",
        str(tmp_path / "names.txt"), "--resize", "36", "--crop", "32", "--data",
        f"images:{code / 'photos'}", "--images", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = json.loads((out / "sections" / "occlusion.json").read_text())["tables"][0]
    predicted = [row[table["columns"].index("predicted")] for row in table["rows"]]
    assert len(predicted) == 2 and set(predicted) <= {"cat", "dog", "fish"}
    # photos have no labels: each row named by its file, no true-class column
    assert table["columns"][:3] == ["image", "predicted", "p(predicted)"]
    assert all(str(row[0]).endswith((".png", ".jpg")) for row in table["rows"])
    figure = json.loads((out / "sections" / "occlusion.json").read_text())["figures"][0]
    assert "(d) p(predicted class)" in figure["caption"] and "val images" not in figure["caption"]


def test_from_module_takes_a_model_in_its_own_dtype_and_names_a_forward_of_more_inputs() -> None:
    import torchvision

    from zfnet.sources import from_module

    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float64):
        model = torchvision.models.resnet18(num_classes=3).to(dtype)
        assert from_module(model, resize=36, crop=32).model is model

    class TwoInputs(torch.nn.Module):
        def forward(self, x, *, mask):
            return x.mean((2, 3)) * mask

    with pytest.raises(ValueError, match=r"forward takes more than a batch of images \(.*mask"
                                         r".*\); zfnet calls model\(images\) alone: wrap"):
        from_module(TwoInputs(), crop=32)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in torch 2.14
def test_a_torchscript_model_is_refused_with_the_way_out(code, tmp_path) -> None:
    """A TorchScript module takes no hooks: each entry point says so and how to get a model
    zfnet can run (its weights into the Python model), where it failed with "get_submodule is
    not supported on ScriptModules" or read as a wrong input size; its archive as --weights
    likewise (torch.load(weights_only=True) cannot read it)."""
    from zfnet.activations import get_activations
    from zfnet.analyses.occlusion import occlusion
    from zfnet.deconvnet import project
    from zfnet.models import layer_info
    from zfnet.models.modes import ScriptedModelError

    net = load_source(f"{code}/nets.py:small", **SMALL).model
    x = torch.rand(1, 3, 32, 32)
    torch.jit.trace(net, x).save(str(tmp_path / "scripted.pt"))
    for scripted in (torch.jit.trace(net, x), torch.jit.load(str(tmp_path / "scripted.pt"))):
        for call in (lambda m=scripted: project(m, x, "stem", 0),
                     lambda m=scripted: get_activations(m, x, ["block"]),
                     lambda m=scripted: occlusion(m, x[0], size=16, stride=16),
                     lambda m=scripted: layer_info(m),
                     lambda m=scripted: from_module(m)):
            with pytest.raises((ScriptedModelError, ValueError),
                               match=r"is a TorchScript module \(\w+\), which takes none of the "
                                     r"hooks .*load_state_dict\(torch.jit.load\(PATH\)"):
                call()
    # the way out works: the Python model with the scripted one's weights
    fixed = load_source(f"{code}/nets.py:small", **SMALL).model
    fixed.load_state_dict(torch.jit.load(str(tmp_path / "scripted.pt")).state_dict())
    assert project(fixed, x, "stem", 0).shape == (1, 3, 32, 32) and _same(fixed, net)
    # from the command line: a builder that returns one, and the archive as --weights
    archive = str(tmp_path / "scripted.pt")
    (code / "scripted_net.py").write_text(
        f"import torch\n\ndef load():\n    return torch.jit.load({archive!r})\n")
    r = CliRunner().invoke(main, ["models", f"{code}/scripted_net.py:load"])
    assert r.exit_code == 1 and "scripted_net.py:load() returned a TorchScript module" in r.output
    r = CliRunner().invoke(main, ["project", str(code / "photos" / "coffee.jpg"), "--model",
                                  f"{code}/nets.py:small", "--weights",
                                  str(tmp_path / "scripted.pt"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines()[-1] == (
        f"Error: {tmp_path / 'scripted.pt'} is a TorchScript archive (torch.jit.save), not "
        "weights; from a file you trust, save its weights and give that file: torch.save("
        f"torch.jit.load('{tmp_path / 'scripted.pt'}').state_dict(), 'weights.pth')")
    assert not (tmp_path / "o").exists()


def test_from_module_leaves_a_refused_model_in_its_mode() -> None:
    """from_module refusing a model (a crop it cannot run) leaves it in training mode, as it
    came: only a model it takes is put in eval mode."""
    from torch import nn

    from zfnet.sources import from_module

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    model.train()
    with pytest.raises(ValueError):
        from_module(model, crop=40, resize=44)  # its Linear takes 32 px only
    assert all(m.training for m in model.modules())
    from_module(model, crop=32, resize=36)
    assert not any(m.training for m in model.modules())


FUNCTIONAL = """
import torch
import torch.nn.functional as F
from torch import nn


class Functional(nn.Module):  # F.conv2d on parameters of its own: no module inside
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.1)
        self.w2 = nn.Parameter(torch.randn(10, 8 * 8 * 8) * 0.01)

    def forward(self, x):
        x = F.max_pool2d(F.relu(F.conv2d(x, self.w1, padding=1)), 4)
        return F.linear(x.flatten(1), self.w2)
"""


def test_a_network_of_functional_calls_only_is_told_it_has_no_layer(code, tmp_path) -> None:
    """A network with no module inside it has no layer to name: every command that looks at
    layers says so and how to build one (an empty table, "`zfnet models` lists them" and
    "valid: " with nothing after it before); predict still runs it."""
    (code / "fnet.py").write_text(FUNCTIONAL)
    model = ["--model", f"{code}/fnet.py:Functional", "--crop", "32"]
    photo = str(code / "photos" / "coffee.jpg")
    for argv in (["models", *model[1:]], ["project", photo, *model, "--out", str(tmp_path / "o")],
                 ["analyze", "occlusion", *model, "--data", f"images:{code / 'photos'}",
                  "--layer", "fc", "--out", str(tmp_path / "o")],
                 ["visualize", "topk", *model, "--data", f"images:{code / 'photos'}",
                  "--out", str(tmp_path / "o")]):
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 1, (argv, r.output)
        assert r.output.strip().splitlines()[-1] == (
            "Error: Functional has no modules inside it, and zfnet names (and watches) a "
            "network's layers by its modules: build the layers to look at as modules "
            "(nn.Conv2d, nn.Linear, a block of your own; ReLUs may stay F.relu calls)"), argv
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(main, ["predict", photo, *model])
    assert r.exit_code == 0, r.output
