"""`zfnet train --model` beyond zfnet's own models: torchvision:NAME, timm:NAME and your own
code (FILE.py:NAME), trained from scratch by the paper's recipe; the run reloads, resumes, and
the run-only analyses (evolution, transfer) and the explorer's evolution take it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from zfnet.cli import main
from zfnet.sources import INPUT_STD, architecture_name, build_architecture
from zfnet.train import TrainConfig, load_model
from zfnet.train.recipe import param_groups

DATA = "synthetic?n_train=96&n_val=32&size=32"
QUIET = ["--quiet", "--no-tensorboard"]

# A plain network without normalisation, written as people write them; its builder takes the
# number of classes. Without its first convolution scaled for the paper's 0..255 pixels (and
# that layer preconditioned), its first epoch's loss here was ~19 instead of ~2.3: the reason
# zfnet's own models are initialised that way.
NETS = """
import torch
import torch.nn.functional as F
from torch import nn


class Plain(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def five():
    return Plain(num_classes=5)
"""


@pytest.fixture()
def nets(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path / "nets.py"


def _train(out, model, *more):
    res = CliRunner().invoke(main, ["train", "--data", DATA, "--model", model, "--out",
                                    str(out), "--batch-size", "32", "--lr", "0.02", *QUIET,
                                    *more])
    return res


def test_names_of_architectures_to_train(nets, tmp_path, monkeypatch) -> None:
    assert architecture_name("zfnet_small") == "zfnet_small"
    assert architecture_name(" torchvision:resnet18 ") == "torchvision:resnet18"
    monkeypatch.chdir(nets.parent)
    assert architecture_name("nets.py:Plain") == f"{nets.resolve()}:Plain"  # found anywhere
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet181'.*resnet18"):
        architecture_name("torchvision:resnet181")
    with pytest.raises(FileNotFoundError, match="nope.py does not exist"):
        architecture_name("nope.py:Net")
    with pytest.raises(ValueError, match="unknown model 'zfnet_smal'.*zfnet_small.*FILE.py"):
        architecture_name("zfnet_smal")
    # a torchvision model named bare: the form that trains it
    with pytest.raises(ValueError, match=r"unknown model 'resnet18' \(did you mean "
                                         r"torchvision:resnet18\?\); valid: a zfnet model"):
        architecture_name("resnet18")
    # zfnet's typed model options are zfnet's models' only
    with pytest.raises(ValueError, match="takes none: write a function in a FILE.py"):
        TrainConfig(data=DATA, model="torchvision:resnet18", out=str(tmp_path),
                    model_opts={"dropout": 0.1})


def test_built_for_the_data_and_the_papers_pixels(nets) -> None:
    """The classes are the data's; the first convolution's init is divided by the pixels'
    std, and the recipe trains it as if the inputs were divided by it."""
    torch.manual_seed(0)
    net = build_architecture(f"{nets}:Plain", 4)
    torch.manual_seed(0)
    plain = build_architecture(f"{nets}:Plain", 4)
    assert net.fc.out_features == 4
    torch.manual_seed(0)
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("nets_ref", nets)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    ref = module.Plain(num_classes=4)
    torch.testing.assert_close(net.conv1.weight, ref.conv1.weight / INPUT_STD)
    torch.testing.assert_close(net.conv2.weight, ref.conv2.weight)
    torch.testing.assert_close(plain.conv1.weight, net.conv1.weight)  # seeded by the caller
    config = TrainConfig(data=DATA, model=f"{nets}:Plain", out="x", lr=0.02)
    groups, first_radius = param_groups(net, config)
    conv1 = [g for g in groups if any(p is net.conv1.weight for p in g["params"])][0]
    assert conv1["lr"] == pytest.approx(0.02 / INPUT_STD**2)
    assert first_radius == pytest.approx(0.1 / INPUT_STD)
    # a builder without num_classes must build the data's number of outputs
    with pytest.raises(ValueError, match="builds a model with 5 outputs, and the data has 10"):
        build_architecture(f"{nets}:five", 10)
    tv = build_architecture("torchvision:resnet18", 7)
    assert tv.fc.out_features == 7


def test_your_own_network_trains_reloads_resumes(nets, tmp_path) -> None:
    """FILE.py:NAME through the whole recipe: it learns (a plain network, no normalisation,
    on the paper's pixels), its run reloads anywhere (the file's absolute path is kept), an
    interrupted run resumes to the same losses, and a run whose file is gone says so."""
    run = tmp_path / "run"
    res = _train(run, f"{nets}:Plain", "--epochs", "4", "--keep-epochs", "1,2,3,4",
                 "--schedule", "cosine")
    assert res.exit_code == 0, res.output
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == f"{nets.resolve()}:Plain"
    rows = (run / "metrics.csv").read_text().splitlines()
    first, last = (dict(zip(rows[0].split(","), r.split(","), strict=True))
                   for r in (rows[1], rows[-1]))
    assert float(last["train_loss"]) < float(first["train_loss"]) < 3  # no blow-up
    model, meta = load_model(run)
    assert type(model).__name__ == "Plain" and meta["model"] == config["model"]
    # the same run stopped after epoch 2 (its later checkpoints gone), then --resume
    split = tmp_path / "split"
    shutil.copytree(run, split)
    for e in (3, 4):
        shutil.rmtree(split / "checkpoints" / f"epoch_{e:04d}")
    res = CliRunner().invoke(main, ["train", "--out", str(split), "--resume", *QUIET])
    assert res.exit_code == 0, res.output
    a = [r.split(",")[:8] for r in (run / "metrics.csv").read_text().splitlines()]
    b = [r.split(",")[:8] for r in (split / "metrics.csv").read_text().splitlines()]
    assert len(a) == 5  # the header and 4 epochs: losses and errors, to the last digit
    assert a == b
    # the run-only analyses: Fig. 4 over its kept epochs, Tables 4-5 against a scratch copy
    out = tmp_path / "look"
    res = CliRunner().invoke(main, ["analyze", "evolution", "--checkpoint", str(run), "--out",
                                    str(out), "--images", "16", "--maps", "2"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["analyze", "transfer", "--checkpoint", str(run), "--data",
                                    "synthetic?size=32&n_val=32", "--out", str(out),
                                    "--shots", "1", "--scratch-steps", "4", "--test", "32"])
    assert res.exit_code == 0, res.output
    sections = {p.stem for p in (out / "sections").glob("*.json")}
    assert {"evolution", "transfer"} <= sections
    # the file gone: loading the run names it
    moved = tmp_path / "moved.py"
    shutil.move(nets, moved)
    with pytest.raises(ValueError, match=r"cannot be built again: .*nets.py does not exist"):
        load_model(run)


def test_a_torchvision_architecture_trains(tmp_path) -> None:
    run = tmp_path / "r18"
    res = _train(run, "torchvision:resnet18", "--epochs", "1")
    assert res.exit_code == 0, res.output
    model, meta = load_model(run)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10
    assert meta["model"] == "torchvision:resnet18"
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run)])
    assert res.exit_code == 0 and "torchvision:resnet18 (epoch 1)" in res.output


def test_a_network_that_cannot_take_the_data_writes_nothing(nets, tmp_path) -> None:
    out = tmp_path / "run"
    res = _train(out, f"{nets}:five", "--epochs", "1")
    assert res.exit_code != 0 and "builds a model with 5 outputs" in res.output
    res = _train(out, "torchvision:resnet18", "--epochs", "1", "--model-opt", "dropout=0.1")
    assert res.exit_code != 0 and "takes none" in res.output
    assert not out.exists()


def test_a_timm_architecture_takes_the_datas_channels(tmp_path) -> None:
    """timm builds for the data's classes and channels (in_chans): a grey dataset too."""
    timm = pytest.importorskip("timm")
    name = "resnet10t" if "resnet10t" in timm.list_models() else "resnet18"
    net = build_architecture(f"timm:{name}", 3, in_channels=1)
    assert net.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 3)
    run = tmp_path / "timm"
    res = _train(run, f"timm:{name}", "--epochs", "1")
    assert res.exit_code == 0, res.output
    model, meta = load_model(run)
    assert meta["model"] == f"timm:{name}" and model.num_classes == 10


@pytest.mark.slow
def test_torchrun_trains_your_own_network_as_one_process(nets, tmp_path) -> None:
    """Two gloo processes of 4 images a step == one process of 8: each process imports the
    file and builds the same network."""
    from tests.processes import torchrun
    from tests.train.tiny import tiny_bundle, tiny_config

    opts = {"epochs": 1, "model": f"{nets}:Plain", "model_opts": {}}
    r = torchrun("-m", "tests.train.run_tiny", str(tmp_path / "ddp"), json.dumps(opts))
    assert r.returncode == 0, r.stderr[-3000:]
    from zfnet.train import train

    train(tiny_config(tmp_path / "one", **opts), bundle=tiny_bundle())
    (m2, meta2), (m1, _) = load_model(tmp_path / "ddp"), load_model(tmp_path / "one")
    assert meta2["world_size"] == 2 and type(m2).__name__ == "Plain"
    for k, v in m1.state_dict().items():
        torch.testing.assert_close(m2.state_dict()[k], v, rtol=1e-4, atol=1e-5)
