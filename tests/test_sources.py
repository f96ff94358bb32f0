"""Model sources: zfnet's registry, torchvision (weights enums from the hub cache, local files),
timm, zfnet runs; the preprocessing each comes with; `_model_and_data` on the command line.
No downloads: ZFNET_OFFLINE=1 and TORCH_HOME in a temporary folder for every test."""

from __future__ import annotations

import importlib.util
import inspect
import pickle
import sys
import types
import urllib.error

import click
import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from zfnet.cli import main
from zfnet.cli.app import _Commands
from zfnet.cli.loading import _model_and_data
from zfnet.cli.options import _SOURCE, ModelOptions
from zfnet.data import Preprocessing, load_dataset, load_images, load_rgb
from zfnet.models import create_model
from zfnet.sources import from_module, hub_file, load_data, load_source, read_state_dict

TINY = "synthetic?n_train=64&n_val=32&size=32"


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no downloads


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A zfnet run of one epoch on tiny synthetic data."""
    out = tmp_path_factory.mktemp("run") / "run"
    res = CliRunner().invoke(main, ["train", "--data", TINY, "--model", "zfnet_small", "--out",
                                    str(out), "--epochs", "1", "--batch-size", "32",
                                    "--keep-epochs", "1", "--quiet", "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    return out


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- zfnet's registry ---

def test_registry_random_init_is_seeded_and_leaves_the_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = load_source("zfnet_small"), load_source("zfnet_small")
    assert torch.equal(torch.get_rng_state(), before)
    assert _same_weights(a.model, b.model) and not a.model.training
    assert (a.kind, a.name, a.labels) == ("zfnet", "zfnet_small (random init)", None)
    assert any("random init" in n for n in a.meta["notes"])
    p = a.preprocessing  # the paper's convention: 0..255 minus ImageNet's mean pixel, std 1
    assert (p.resize, p.crop, p.std) == (73, 64, (1.0, 1.0, 1.0))
    assert p.mean == pytest.approx((123.675, 116.28, 103.53))


def test_registry_state_dict_files(tmp_path):
    model = create_model("zfnet_small")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    for f in ("w.pth", "w.safetensors"):
        src = load_source("zfnet_small", str(tmp_path / f))
        assert _same_weights(src.model, model) and src.name == f"zfnet_small {tmp_path / f}"
    five = create_model("zfnet_small", num_classes=5)  # fine-tuned: 5 outputs
    torch.save({"state_dict": five.state_dict(), "epoch": 3}, tmp_path / "five.pth")
    src = load_source("zfnet_small", str(tmp_path / "five.pth"))
    assert src.model.config.num_classes == 5 and _same_weights(src.model, five)
    wide = create_model("zfnet_small", fc_width=16)  # another architecture
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"wide.pth holds weights of another architecture than "
                                         r"zfnet_small; shape mismatch: classifier.fc6.weight"):
        load_source("zfnet_small", str(tmp_path / "wide.pth"))
    with pytest.raises(FileNotFoundError, match="nothere.pth does not exist"):
        load_source("zfnet_small", str(tmp_path / "nothere.pth"))
    with pytest.raises(FileNotFoundError, match="^weights https://example.com/w.pth is a web "
                       "address; zfnet reads a weights file on this computer: download it, "):
        load_source("zfnet_small", "https://example.com/w.pth")


def test_registry_with_a_zfnet_checkpoint_is_its_run(run):
    weights = next((run / "checkpoints").glob("epoch_*")) / "model.safetensors"
    src = load_source("zfnet_small", str(weights))
    assert src.kind == "run" and src.meta["data"] == TINY
    with pytest.raises(ValueError, match="'zfnet_small' run, not 'zfnet'"):
        load_source("zfnet", str(weights))


# --- zfnet runs ---

def test_run_and_its_preprocessing(run):
    src = load_source(str(run))
    assert src.kind == "run" and src.labels == load_dataset(TINY).class_names
    assert "run" in src.name and "(epoch 1)" in src.name
    data = load_data(src)  # the run's dataset, as before: its own mean image
    own = load_dataset(TINY)
    assert data.preprocessing is None and torch.equal(data.mean, own.mean)
    p = src.preprocessing  # read from the data just loaded
    assert torch.equal(p.mean_image, own.mean) and (p.resize, p.crop) == (36, 32)
    torch.testing.assert_close(p.to_input(own.val.images[0]), own.val[0][0])
    with pytest.raises(ValueError, match="run: its checkpoint holds its weights"):
        load_source(str(run), "DEFAULT")


def test_run_on_a_folder_of_images_uses_its_mean_image(run, tmp_path):
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(tmp_path / "x.png")
    src = load_source(str(run))
    data = load_data(src, f"images:{tmp_path}")
    assert data.preprocessing is not None and data.preprocessing.mean_image is not None
    x, _ = data.val[0]
    expected = 200.0 - load_dataset(TINY).mean[:, 2:34, 2:34]  # 36 px mean, centre 32
    torch.testing.assert_close(x, expected)


def test_a_runs_moved_dataset_is_told_as_the_runs_and_how_to_give_it(run, tmp_path):
    """The path in the error is the run's, not one the user typed: say so, and what to do."""
    src = load_source(str(run))
    src.meta["data"] = f"imagefolder:{tmp_path / 'moved'}?size=32"
    with pytest.raises(FileNotFoundError, match=r"does not exist; .* \(the dataset .* was "
                       r"trained on, 'imagefolder:.*moved\?size=32'; give its new place "
                       r"with --data\)$"):
        load_data(src)
    with pytest.raises(FileNotFoundError) as e:  # a path the user gave: as it is
        load_data(src, f"imagefolder:{tmp_path / 'typed'}")
    assert "trained on" not in str(e.value)


def test_run_overrides_checked_at_once(run):
    with pytest.raises(ValueError, match="--crop 48: .* takes 32 px inputs"):
        load_source(str(run), crop=48)
    with pytest.raises(ValueError, match="mean has 2 values"):
        load_source(str(run), mean=(0.5, 0.25))
    src = load_source(str(run), std=(0.5,))
    data = load_data(src)  # overridden: the model's preprocessing, std 0.5 (127.5 of 0..255)
    assert data.preprocessing is not None and data.preprocessing.std == (127.5,) * 3


# --- torchvision ---

def test_torchvision_random_init():
    src = load_source("torchvision:resnet18")
    assert (src.kind, src.name, src.labels) == ("torchvision", "torchvision:resnet18 (random "
                                                "init)", None)
    assert src.preprocessing == Preprocessing.imagenet()
    assert any("256/224" in n for n in src.meta["notes"])
    assert _same_weights(src.model, load_source("torchvision:resnet18").model)
    src = load_source("torchvision:resnet18", crop=160, mean=(0.5,), std=0.5)
    p = src.preprocessing
    assert (p.resize, p.crop, p.mean, p.std) == (183, 160, (127.5,) * 3, (127.5,) * 3)


@pytest.mark.parametrize("build", [
    lambda **kw: load_source("torchvision:resnet18", **kw),
    lambda **kw: from_module(torchvision.models.resnet18(), **kw),
])
def test_mean_and_std_in_one_unit_everywhere(build):
    """load_source and from_module take --mean/--std's units (0..1, as model cards give
    them): one number for all channels, values over 1 refused by name."""
    p = build(mean=[0.485, 0.456, 0.406], std=0.25).preprocessing
    assert p.std == (63.75,) * 3
    assert p.mean == pytest.approx((123.675, 116.28, 103.53))
    with pytest.raises(ValueError, match=r"mean \(124, 117, 104\) must be numbers in \[0, 1\]"
                       r".*; these look like 0..255 units: divided by 255, 0.4863,0.4588,0.4078$"):
        build(mean=(124, 117, 104))
    with pytest.raises(ValueError, match=r"must be numbers in \(0, 1\].*0.225\)$"):
        build(std=(58.4, 300))  # not all in 0..255: no such guess
    with pytest.raises(ValueError, match=r"std 'wide' must be numbers in \(0, 1\], in 0..1 units"):
        build(std="wide")
    for std in (0, (0.2, 0.0, 0.2), 58.395, float("nan")):  # no division by 0; no 0..255 units
        with pytest.raises(ValueError, match=r"must be numbers in \(0, 1\]"):
            build(std=std)
    assert build(mean="0.5", std="0.5,0.25,0.5").preprocessing.std == (127.5, 63.75, 127.5)


def test_torchvision_files(tmp_path):
    ref = torchvision.models.squeezenet1_1()
    torch.save({"model": ref.state_dict()}, tmp_path / "sq.pt")
    assert _same_weights(load_source("torchvision:squeezenet1_1", str(tmp_path / "sq.pt")).model,
                         ref)
    save_file(ref.state_dict(), tmp_path / "sq.safetensors")
    assert _same_weights(
        load_source("torchvision:squeezenet1_1", str(tmp_path / "sq.safetensors")).model, ref)
    # DataParallel's prefix; a fine-tuned copy with 7 classes (its classifier is a 1x1 conv)
    seven = torchvision.models.squeezenet1_1(num_classes=7)
    torch.save({f"module.{k}": v for k, v in seven.state_dict().items()}, tmp_path / "s7.pth")
    src = load_source("torchvision:squeezenet1_1", str(tmp_path / "s7.pth"))
    assert src.meta["num_classes"] == 7 and _same_weights(src.model, seven)
    with pytest.raises(ValueError, match=r"sq.pt holds weights of another architecture than "
                                         r"torchvision:squeezenet1_0; .*features.0.weight"):
        load_source("torchvision:squeezenet1_0", str(tmp_path / "sq.pt"))
    # a PyTorch Lightning checkpoint: the weights of its `model` attribute, under "state_dict"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in
                                           seven.state_dict().items()}}, tmp_path / "s7.ckpt")
    src = load_source("torchvision:squeezenet1_1", str(tmp_path / "s7.ckpt"))
    assert src.meta["num_classes"] == 7 and _same_weights(src.model, seven)
    # ... but not a prefix that leaves no key of the model: another architecture still
    torch.save({f"model.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="another architecture than torchvision:resnet18; "
                                         "missing: conv1.weight.*unexpected: model.features"):
        load_source("torchvision:resnet18", str(tmp_path / "w.pth"))


@pytest.mark.parametrize("name", ["resnet18", "regnet_x_400mf", "swin_t"])
def test_a_torchvision_file_is_put_in_place_not_over_a_random_init(tmp_path, name, monkeypatch):
    """A weights file's tensors are put into a model built on the meta device (no random init
    to overwrite: a VGG-16's 138M numbers): the outputs are the ones of the model built and
    loaded as torchvision does, in its parameters' dtype (a half-precision file), with every
    tensor real (swin_t's relative position indexes, buffers), and the global RNG untouched.
    RegNet reads tensor values as it builds: built for real, as before."""
    ref = torchvision.models.get_model(name, num_classes=7).eval()
    sd = {k: v.half() if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    torch.save(sd, tmp_path / "w.pth")
    ref.load_state_dict(sd)  # the file's values, in float32
    drawn = []  # an init of a real tensor: random numbers drawn
    for f in ("normal_", "uniform_", "trunc_normal_", "kaiming_normal_", "kaiming_uniform_"):
        monkeypatch.setattr(torch.nn.init, f, lambda t, *a, **k: drawn.append(not t.is_meta) or t)
    rng = torch.get_rng_state()
    model = load_source(f"torchvision:{name}", str(tmp_path / "w.pth")).model.eval()
    assert torch.equal(torch.get_rng_state(), rng)
    assert any(drawn) == (name == "regnet_x_400mf"), drawn
    held = [*model.parameters(), *model.buffers()]
    assert not any(t.is_meta for t in held) and all(p.dtype == torch.float32 for p in
                                                    model.parameters())
    assert all(p.requires_grad and isinstance(p, torch.nn.Parameter) for p in model.parameters())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_a_meta_built_model_that_would_keep_a_meta_tensor_is_built_for_real(tmp_path):
    """A buffer the state dict does not hold (non-persistent) would stay on the meta device:
    the model is built for real, with the file's number of classes, and loaded."""
    from zfnet.sources import _with_weights

    class Net(torch.nn.Module):
        def __init__(self, num_classes: int = 4) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, num_classes)
            self.register_buffer("scale", torch.full((3,), 2.0), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x * self.scale)

    ref = Net(num_classes=5)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    model = _with_weights(Net, tmp_path / "w.pth", "net", on_meta=True)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    x = torch.rand(2, 3)
    assert model.fc.out_features == 5 and torch.equal(model(x), ref(x))


def test_a_timm_train_checkpoint_is_read(tmp_path):
    """timm's train.py writes model_best.pth.tar: its arguments as an argparse.Namespace (plain
    data, read with weights_only=True), the weights under state_dict and their moving average
    under state_dict_ema: state_dict is taken, as timm's loading does, and a note says so."""
    import argparse

    from zfnet.sources import WeightsNote

    ref = torchvision.models.squeezenet1_1(num_classes=7)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    torch.save({"epoch": 9, "arch": "squeezenet1_1", "state_dict": ref.state_dict(),
                "args": argparse.Namespace(lr=0.1, model="squeezenet1_1"), "version": 2,
                "state_dict_ema": ema, "metric": 71.2}, tmp_path / "model_best.pth.tar")
    with pytest.warns(WeightsNote, match=r"model_best.pth.tar holds 'state_dict' and "
                                         r"'state_dict_ema' .*'state_dict' is taken"):
        src = load_source("torchvision:squeezenet1_1", str(tmp_path / "model_best.pth.tar"))
    assert src.meta["num_classes"] == 7 and _same_weights(src.model, ref)


def test_torchvision_aux_classifiers_dropped(tmp_path):
    """GoogLeNet's DEFAULT weights come without its auxiliary classifiers."""
    ref = torchvision.models.googlenet(aux_logits=False, init_weights=False)
    torch.save(ref.state_dict(), tmp_path / "g.pth")
    src = load_source("torchvision:googlenet", str(tmp_path / "g.pth"))
    assert src.model.aux1 is None and _same_weights(src.model, ref)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_files_that_are_not_state_dicts(tmp_path, capfd):
    class Payload:
        def __reduce__(self):
            return (print, ("this must not run",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"w": Payload()}, f)  # not even a torch file
    torch.save({"w": Payload()}, tmp_path / "evil2.pth")
    for name, why in (("evil.pth", "is not a readable torch file"),
                      ("evil2.pth", r"holds more than weights \(a pickled print\), "
                                    r"which .* torch.save\(model.state_dict\(\), PATH\)")):
        with pytest.raises(ValueError, match=f"{name} {why}"):
            read_state_dict(tmp_path / name)
    assert "this must not run" not in capfd.readouterr().out
    torch.save(torchvision.models.squeezenet1_1(), tmp_path / "whole.pth")  # the model itself
    with pytest.raises(ValueError, match="a pickled torchvision.models.squeezenet.SqueezeNet"):
        read_state_dict(tmp_path / "whole.pth")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "meta.pth")
    (tmp_path / "photo.pth").write_bytes(b"\xff\xd8\xff\xe0 not a pickle")  # a JPEG's start
    with pytest.raises(ValueError, match="photo.pth is not a readable torch file"):
        read_state_dict(tmp_path / "photo.pth")
    for text in ("hi\n", "hello world\n"):  # a text file's bytes read as pickle opcodes
        (tmp_path / "notes.pth").write_text(text)
        with pytest.raises(ValueError, match=r"notes.pth is not a readable torch file: "
                           r"damaged, cut short or another kind of file \(KeyError"):
            read_state_dict(tmp_path / "notes.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.pth is empty \(0 bytes\); give a file of "):
        read_state_dict(tmp_path / "empty.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable .safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")


def test_weights_enum_from_the_hub_cache():
    """A file saved from a randomly initialised resnet18 under the name torch hub gives
    IMAGENET1K_V1 loads as `DEFAULT`, offline, with the enum's classes and preprocessing."""
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    with pytest.raises(FileNotFoundError) as e:
        load_source("torchvision:resnet18", "DEFAULT")
    assert enum.url in str(e.value) and str(hub_file(enum)) in str(e.value)
    assert "ZFNET_OFFLINE=1" in str(e.value)
    ref = torchvision.models.resnet18()
    hub_file(enum).parent.mkdir(parents=True)
    torch.save(ref.state_dict(), hub_file(enum))
    for name in ("DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "default"):
        src = load_source("torchvision:resnet18", name)
        assert src.name == "torchvision:resnet18 IMAGENET1K_V1" and _same_weights(src.model, ref)
    assert len(src.labels) == 1000 and src.labels[0] == "tench"
    assert src.preprocessing == Preprocessing.imagenet() and src.meta["notes"] == []
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET1K_V2' for torchvision:"
                                         "resnet18; valid: IMAGENET1K_V1, DEFAULT"):
        load_source("torchvision:resnet18", "IMAGENET1K_V2")


def test_failed_download_says_where_to_put_the_file(monkeypatch):
    monkeypatch.delenv("ZFNET_OFFLINE")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    enum = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    with pytest.raises(FileNotFoundError, match="downloading .* failed .*no route to host") as e:
        load_source("torchvision:squeezenet1_1", "DEFAULT")
    assert enum.url in str(e.value) and str(hub_file(enum)) in str(e.value)


def test_download_into_the_hub_cache(monkeypatch):
    """Online, a missing file is downloaded to where torch hub keeps it, its hash checked."""
    monkeypatch.delenv("ZFNET_OFFLINE")
    ref = torchvision.models.squeezenet1_1()
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        torch.save(ref.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    enum = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    src = load_source("torchvision:squeezenet1_1", "IMAGENET1K_V1")
    assert calls == [(enum.url, str(hub_file(enum)), "b8a52dc0")]  # squeezenet1_1-b8a52dc0.pth
    assert _same_weights(src.model, ref)
    load_source("torchvision:squeezenet1_1", "DEFAULT")  # cached now: no second download
    assert len(calls) == 1


def test_hub_file_that_is_not_a_state_dict():
    path = hub_file(torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_0().state_dict(), path)  # the wrong model
    with pytest.raises(ValueError, match=f"{path.name} does not hold torchvision:squeezenet1_1"):
        load_source("torchvision:squeezenet1_1", "DEFAULT")


def test_pretrained_model_on_a_users_image(tmp_path):
    """End to end: a file through `load_images` for the loaded model gives the logits of the
    model on torchvision's own `weights.transforms()` of the image (within its resampling)."""
    enum = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    hub_file(enum).parent.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), hub_file(enum))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (180, 240, 3), np.uint8)).save(
        tmp_path / "mine.png")
    src = load_source("torchvision:squeezenet1_1", "DEFAULT")
    x, _ = load_images(tmp_path / "mine.png", src.preprocessing)[0]
    theirs = enum.transforms()(load_rgb(tmp_path / "mine.png"))
    with torch.no_grad():
        torch.testing.assert_close(src.model(x[None]), src.model(theirs[None]), atol=2e-3,
                                   rtol=0)


def test_unknown_sources_say_what_is_valid(tmp_path):
    with pytest.raises(ValueError, match=r"'vgg16' \(did you mean torchvision:vgg16\?\); "
                                         "valid: a zfnet model name"):
        load_source("vgg16")
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet181'; closest: "
                                         "resnet18"):
        load_source("torchvision:resnet181")
    with pytest.raises(FileNotFoundError, match="runs/nope does not exist"):
        load_source("runs/nope")
    torch.save(torchvision.models.squeezenet1_1().state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="--weights beside its architecture"):
        load_source(str(tmp_path / "w.pth"))
    with pytest.raises(ValueError, match="empty model source"):
        load_source(" ")
    for typed, meant in (("torchvison:resnet18", "torchvision:resnet18"),
                         ("tim:resnet18", "timm:resnet18")):  # a misspelt prefix
        with pytest.raises(ValueError, match=f"'{typed}': did you mean {meant}\\? valid: "):
            load_source(typed, device="meta")
    with pytest.raises(ValueError, match="^time has no 'nope'"):
        load_source("time:nope", device="meta")  # a module of that name: your own code's form


def test_meta_device_builds_the_architecture_only():
    src = load_source("torchvision:vgg16", device="meta")
    assert next(src.model.parameters()).is_meta and src.meta["notes"] == [
        "preprocessing: ImageNet's mean and std at 256/224, torchvision's usual (no weights "
        "given; --mean/--std/--resize/--crop change it)"]


def test_load_data_for_a_torchvision_model():
    src = load_source("torchvision:squeezenet1_1", crop=64)
    data = load_data(src, "synthetic?n_train=4&n_val=2&size=32")
    x, _ = data.val[0]
    assert x.shape == (3, 64, 64) and data.preprocessing is src.preprocessing
    with pytest.raises(ValueError, match="no dataset given for torchvision:squeezenet1_1"):
        load_data(src)


# --- timm ---

def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(ValueError, match="pip install timm"):
        load_source("timm:resnet18")


def test_timm_preprocessing_and_weights(monkeypatch, tmp_path):
    """zfnet's side of timm's API (list_models, create_model, data.resolve_data_config), here
    with torchvision's resnet18 behind it where timm itself is not installed."""
    try:
        import timm  # noqa: F401
    except ImportError:
        fake = types.ModuleType("timm")
        fake.list_models = lambda: ["resnet18", "resnet34"]
        fake.create_model = lambda name, pretrained=False, **kw: \
            torchvision.models.get_model(name, **kw)
        fake.data = types.ModuleType("timm.data")
        fake.data.resolve_data_config = lambda args, model=None: {
            "input_size": (3, 224, 224), "interpolation": "bicubic",
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.95,
            "crop_mode": "center"}
        monkeypatch.setitem(sys.modules, "timm", fake)
        monkeypatch.setitem(sys.modules, "timm.data", fake.data)
    src = load_source("timm:resnet18")
    p = src.preprocessing
    assert (src.kind, p.crop, p.resize, p.interpolation) == ("timm", 224, 235, "bicubic")
    assert p.mean == pytest.approx((123.675, 116.28, 103.53))
    torch.save(src.model.state_dict(), tmp_path / "r18.pth")
    assert _same_weights(load_source("timm:resnet18", str(tmp_path / "r18.pth")).model,
                         src.model)
    with pytest.raises(ValueError, match="local file"):
        load_source("timm:resnet18", "IMAGENET1K_V1")
    with pytest.raises(ValueError, match="unknown timm model 'resnet181'"):
        load_source("timm:resnet181")


# --- the command line ---

@click.group(cls=_Commands)
def _cli() -> None:
    """A group with one command wired as every analysis command is."""


@_cli.command("look")
@_SOURCE
@click.option("--data")
def _look(model_options, data):
    source, bundle = _model_and_data(model_options, data, need_data=data is not None)
    click.echo(f"{source.name} | {source.preprocessing.describe()} | "
               f"{None if bundle is None else tuple(bundle.val[0][0].shape)} | "
               f"{model_options.device} {model_options.batch_size}")


def _runner() -> CliRunner:
    """A runner that keeps stderr apart from stdout: click 8.2's always does, click 8.1's (the
    lower end of zfnet's range) when asked."""
    if "mix_stderr" in inspect.signature(CliRunner).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


def test_model_options_and_their_errors(run):
    invoke = lambda *args: _runner().invoke(_cli, ["look", *args])  # noqa: E731
    res = invoke("--model", "torchvision:squeezenet1_1", "--mean", "0.5", "--std", "0.25",
                 "--crop", "64", "--data", "synthetic?n_train=2&n_val=2&size=32",
                 "--device", "cpu", "--batch-size", "8")
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "torchvision:squeezenet1_1 (random init) | resize 73, crop 64, mean " \
           "127.5,127.5,127.5, std 63.75,63.75,63.75" in res.stdout
    assert "| (3, 64, 64) | cpu 8" in res.stdout
    assert "random init" in res.stderr
    res = invoke("--checkpoint", str(run))
    assert res.exit_code == 0 and "zfnet_small run" in res.stdout
    for args, message in [
        (["--model", "zfnet_small", "--checkpoint", str(run)], "--model and --checkpoint both"),
        ([], "no model given: --model SOURCE"),
        (["--model", "torchvision:resnet18", "--weights", "DEFAULT"], "ZFNET_OFFLINE=1"),
        (["--model", "zfnet_small", "--mean", "124,117,104"], "--mean"),
        (["--model", "zfnet_small", "--mean", "0.5,0.5"], "mean has 2 values"),
        (["--model", "torchvision:alexnet", "--data", "images:/nonexistent"], "/nonexistent"),
    ]:
        res = invoke(*args)
        assert res.exit_code != 0 and "Traceback" not in res.stdout + res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and message in last, res.stderr


def test_models_command_for_any_source(tmp_path):
    res = _runner().invoke(main, ["models"])
    assert res.exit_code == 0 and "torchvision:NAME" in res.stdout
    res = _runner().invoke(main, ["models", "torchvision:"])
    assert "torchvision:resnet18" in res.stdout.split()
    res = _runner().invoke(main, ["models", "timm:"])
    if importlib.util.find_spec("timm") is not None:
        assert res.exit_code == 0 and "timm:resnet18" in res.stdout.split()
    else:
        assert res.exit_code == 1 and "pip install timm" in res.output
    res = _runner().invoke(main, ["models", "torchvision:vgg16"])
    assert res.exit_code == 0, res.stdout
    assert "ImageNet's mean and std at 256/224" in res.stderr  # a default, said so
    lines = res.stdout.splitlines()
    assert lines[0] == "torchvision:vgg16: 138,357,544 parameters, input 224 px"
    assert lines[1].startswith("preprocessing: resize 256, crop 224")
    assert lines[2].split() == ["layer", "kind", "maps", "size", "stride", "rf"]
    assert lines[3].split() == ["features.0", "conv", "64", "224", "1", "3"]
    assert "features.30 pool 512 7 32 212" in [" ".join(ln.split()) for ln in lines]
    res = _runner().invoke(main, ["models", "torchvision:vgg16", "--input-size", "100"])
    assert "features.30 pool 512 3 32 212" in [" ".join(ln.split()) for ln in
                                              res.stdout.splitlines()]
    res = _runner().invoke(main, ["models", "torchvision:resnet18"])
    assert res.exit_code == 0 and "layer4.1.conv2" in res.stdout
    # the blocks --layer takes, and the layers the analyses take without it
    # a BasicBlock's one ReLU runs twice: its row (rf 27, after the residual sum) is its
    # second call, and the listing says so
    assert res.stdout.splitlines()[-3:] == [
        "called 2 times in each forward pass: layer1.0.relu, layer1.1.relu, layer2.0.relu, "
        "... (8 modules); their rows and every analysis of them show the last call",
        "blocks, layers too (each module that holds others): layer1, layer1.0, layer1.1, "
        "layer2, layer2.0, layer2.0.downsample, layer2.1, layer3, layer3.0, "
        "layer3.0.downsample, layer3.1, layer4, layer4.0, layer4.0.downsample, layer4.1",
        "without --layer, the analyses show: relu, layer1, layer2, layer3, layer4"]
    seven = torchvision.models.squeezenet1_1(num_classes=7)
    torch.save(seven.state_dict(), tmp_path / "s7.pth")
    res = _runner().invoke(main, ["models", "torchvision:squeezenet1_1", "--weights",
                                  str(tmp_path / "s7.pth"), "--crop", "160"])
    assert res.exit_code == 0, res.stdout
    assert "input 160 px" in res.stdout and "classifier.1 conv 7" in " ".join(
        res.stdout.split())
    # the preprocessing said once, as it is with --crop (not the default's note)
    assert "preprocessing" not in res.stderr
    assert [ln for ln in res.stdout.splitlines() if ln.startswith("preprocessing")] == [
        "preprocessing: resize 183, crop 160, mean 123.7,116.3,103.5, std 58.40,57.12,57.38 "
        "(0..255 units) = --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"]  # as they are given
    assert "called" not in res.stdout  # squeezenet runs each module once
    zf = _runner().invoke(main, ["models", "zfnet"]).stdout.splitlines()
    assert zf[0] == "zfnet: 62,357,608 parameters, input 224 px"  # unchanged
    assert zf[1].split() == ["layer", "module", "kind", "maps", "size", "stride", "rf"]


def test_cli_names_the_source_forms():
    text = CliRunner().invoke(main, ["models", "-h"]).output
    assert "torchvision:NAME" in text and "FILE.py:NAME" in text and "--labels" in text
    assert ModelOptions.__dataclass_fields__.keys() == {
        "model", "checkpoint", "weights", "labels", "mean", "std", "resize", "crop", "device",
        "batch_size"}


def test_the_note_on_the_preprocessing_says_what_the_overrides_made_it(tmp_path):
    src = load_source("torchvision:resnet18", resize=72, crop=64)
    prep = [n for n in src.meta["notes"] if n.startswith("preprocessing:")]
    assert prep == ["preprocessing: resize 72, crop 64, mean 123.7,116.3,103.5, std "
                    "58.40,57.12,57.38 (0..255 units) (--resize, --crop given; the mean and "
                    "std: ImageNet's, a default)"]
    src = load_source("torchvision:resnet18")  # the default, said to be one
    assert any("ImageNet's mean and std at 256/224, torchvision's usual (no weights given; "
               in n for n in src.meta["notes"])
    # a weights file: the user is told that it cannot say its own, and how to give it
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r3.pth")
    src = load_source("torchvision:resnet18", str(tmp_path / "r3.pth"))
    assert [n for n in src.meta["notes"] if n.startswith("preprocessing:")] == [
        "preprocessing: ImageNet's mean and std at 256/224, torchvision's usual (a weights file "
        "does not say how its model was trained: if yours was trained on other inputs, give "
        "them with --mean/--std/--resize/--crop)"]


def test_a_model_whose_builder_reads_tensor_values_is_listed_too():
    """RegNet's builder calls .tolist() (no meta device): built for real for its layer list."""
    src = load_source("torchvision:regnet_x_400mf", device="meta")
    assert "trunk_output.block4" in dict(src.model.named_modules())


def test_label_names_are_compared_composed_as_class_folders_are() -> None:
    from zfnet.sources import _checked_labels

    assert _checked_labels(["cafe\u0301", "tea"], 2, "net") == ["caf\u00e9", "tea"]


def test_labels_imagenet_names_the_1000_classes(tmp_path, monkeypatch) -> None:
    """`--labels imagenet`: a plain weights file of an ImageNet model named without a file
    (torchvision's names, the ones its ImageNet weights come with); a file of that name wins;
    a model with other outputs is told the count."""
    import torchvision

    monkeypatch.chdir(tmp_path)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), tmp_path / "sq.pth")
    src = load_source("torchvision:squeezenet1_1", str(tmp_path / "sq.pth"), labels="imagenet")
    assert len(src.labels) == 1000 and src.labels[281] == "tabby"
    assert src.labels == torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r3.pth")
    with pytest.raises(ValueError, match=r"1000 class names \(ImageNet's\) for torchvision:"
                                         r"resnet18 .*, whose last layer has 3 outputs"):
        load_source("torchvision:resnet18", str(tmp_path / "r3.pth"), labels="imagenet")
    (tmp_path / "imagenet").write_text("a\nb\nc\n")  # a file named so is that file
    assert load_source("torchvision:resnet18", str(tmp_path / "r3.pth"),
                       labels="imagenet").labels == ["a", "b", "c"]


def test_timm_pretrained_weights_from_the_hugging_face_cache(tmp_path, monkeypatch):
    """--weights pretrained: timm's own weights for the model (its default tag, or the one
    named), read from the Hugging Face cache (offline here: ZFNET_OFFLINE=1); not in the cache,
    one error saying how to fill it; an unknown tag named."""
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file

    snapshot = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    torch.manual_seed(1)
    ref = timm.create_model("resnet18").eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              snapshot / "model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("ZFNET_OFFLINE", "1")
    src = load_source("timm:resnet18", "pretrained")
    assert _same_weights(src.model, ref) and src.meta["num_classes"] == 1000
    assert src.meta["notes"] == ["timm:resnet18: its pretrained weights, timm/resnet18.a1_in1k "
                                 "(the Hugging Face cache)"]
    with pytest.raises(FileNotFoundError, match=r"timm:resnet18.tv_in1k: its pretrained weights "
                       r"\(timm/resnet18.tv_in1k\) could not be read \(not in the Hugging "
                       r"Face cache, .*hub, and ZFNET_OFFLINE=1 is set: nothing else is read\); "
                       r"`hf download timm/resnet18.tv_in1k` where there is a network"):
        load_source("timm:resnet18.tv_in1k", "DEFAULT")
    with pytest.raises(ValueError, match=r"Invalid pretrained tag \(nope\) for resnet18"):
        load_source("timm:resnet18.nope", "pretrained")
    (snapshot / "model.safetensors").write_bytes(b"not safetensors")  # damaged in the cache
    with pytest.raises(ValueError, match=r"timm:resnet18: its pretrained weights in the Hugging "
                       r"Face cache, .*model.safetensors, do not load \(.*\); remove that file"):
        load_source("timm:resnet18", "pretrained")


def test_weights_of_another_number_of_input_channels_say_how_to_build_it(tmp_path):
    """A timm model trained on grey images (in_chans=1): the one difference, conv1's input
    channels, is named with the way to build it."""
    import timm

    torch.save(timm.create_model("resnet18", in_chans=1).state_dict(), tmp_path / "grey.pth")
    with pytest.raises(ValueError, match=r"conv1.weight file \(64, 1, 7, 7\) vs model \(64, 3, "
                       r"7, 7\) \(the file's model takes 1-channel images, timm:resnet18 "
                       r"3-channel ones: .*timm.create_model\(NAME, in_chans=1\)"):
        load_source("timm:resnet18", str(tmp_path / "grey.pth"))


def test_weights_named_by_a_folder_say_it_is_one(tmp_path, monkeypatch) -> None:
    """`--weights my_photos` (a folder, named without a slash) was 'unknown weights'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_photos").mkdir()
    with pytest.raises(ValueError, match=r"^--weights my_photos is a folder; give the weights "
                       r"file in it \(.pth, .*\) or a weights name: IMAGENET1K_V1"):
        load_source("torchvision:resnet18", weights="my_photos")


def test_a_googlenet_file_is_built_as_its_weights_were_and_inception_fed_at_299(tmp_path):
    """A GoogLeNet fine-tuned from torchvision's weights (saved with `state_dict()`) was built
    with transform_input off, its inputs not turned into its own normalisation as in training
    (its conv1 saw inputs up to 2.5 apart), silently; an Inception v3 file or random model was
    fed 224 px crops, not the 299 its architecture is made for."""
    trained = torchvision.models.googlenet(transform_input=True, init_weights=False,
                                           aux_logits=False, num_classes=4).eval()
    torch.save(trained.state_dict(), tmp_path / "g.pth")
    src = load_source("torchvision:googlenet", str(tmp_path / "g.pth"))
    assert src.model.transform_input
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(src.model(x), trained(x), atol=1e-5)
    assert any("built with transform_input=True" in n and "from_module" in n
               for n in src.meta["notes"])
    assert not load_source("torchvision:googlenet").model.transform_input  # random: as asked
    own = load_source("torchvision:googlenet", str(tmp_path / "g.pth"), mean=0.5, std=0.25)
    assert own.meta["notes"][-1].startswith("transform_input=True turns inputs normalised by "
                                            "ImageNet's mean and std")  # not yours: said
    src = load_source("torchvision:inception_v3", device="meta")
    assert (src.preprocessing.resize, src.preprocessing.crop) == (342, 299)
    assert src.meta["notes"] == [
        "preprocessing: ImageNet's mean and std at 342/299 (bilinear), the size of "
        "torchvision's own Inception_V3_Weights.IMAGENET1K_V1 (no weights given; "
        "--mean/--std/--resize/--crop change it)"]
    src = load_source("torchvision:resnet18", device="meta")  # 224 px: ImageNet's usual
    assert (src.preprocessing.resize, src.preprocessing.crop) == (256, 224)
