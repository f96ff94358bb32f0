"""Every command with bad input: a one-line error naming the bad value, a nonzero exit, no
traceback, and nothing written to --out (absent afterwards, or unchanged when it existed)."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from zfnet.cli import main
from zfnet.data.shard_writer import write_shards
from zfnet.models import create_model
from zfnet.report import read_sections

# eval-broken-images warns about each file it skips before it fails: expected here
pytestmark = pytest.mark.filterwarnings("ignore::zfnet.data.images.BrokenImageWarning")

TINY = "synthetic?n_train=64&n_val=32&size=32"
OTHER_SIZE = "synthetic?n_train=64&n_val=32&size=48"  # not the 32 px the run's model takes


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No downloads: weights enums only from an empty torch hub cache."""
    monkeypatch.setenv("ZFNET_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """One trained run and the broken things the table points at."""
    root = tmp_path_factory.mktemp("errors")
    run = root / "run"
    res = CliRunner().invoke(main, ["train", "--data", TINY, "--model", "zfnet_small",
                                    "--out", str(run), "--epochs", "1", "--batch-size", "32",
                                    "--keep-epochs", "1", "--quiet", "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    empty = root / "empty"
    empty.mkdir()
    (root / "notes.txt").write_text("not a checkpoint\n")
    # a checkpoint whose weights are another model's (fc6 of width 16)
    other = root / "other_weights"
    shutil.copytree(run / "checkpoints" / "epoch_0001", other)
    save_file(create_model("zfnet_small", input_size=32, fc_width=16).state_dict(),
              other / "model.safetensors")
    corrupt = root / "corrupt_state"
    shutil.copytree(run / "checkpoints" / "epoch_0001", corrupt)
    (corrupt / "state.json").write_text("{not json")
    # an image folder whose every file is broken, and one without train/ val/
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / "broken_images" / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                (d / f"{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bad_fmnist = root / "bad_fmnist"  # the four files Fashion-MNIST needs, none gzipped
    bad_fmnist.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (bad_fmnist / f"{name}.gz").write_bytes(b"junk")
    flat = root / "flat_images"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(flat / "x.png")
    # a report directory whose section points outside it
    escape = root / "escape"
    (escape / "sections").mkdir(parents=True)
    (root / "secret.png").write_bytes(b"\x89PNG secret")
    (escape / "sections" / "x.json").write_text(json.dumps(
        {"key": "x", "title": "t", "caption": "c", "figures": [{"path": "../secret.png"}]}))
    # a small valid image folder; its shards with a shard gone; a manifest of another version
    images = root / "images"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = images / split / cls
            d.mkdir(parents=True)
            Image.fromarray(np.full((40, 40, 3), 60 if cls == "a" else 200, np.uint8)).save(
                d / "0.png")
    flat_val = root / "flat_val"  # ImageNet's layout: val/ without class folders
    shutil.copytree(images / "train", flat_val / "train")
    (flat_val / "val").mkdir()
    shutil.copy(images / "val" / "a" / "0.png", flat_val / "val" / "v1.png")
    (root / "val_labels.csv").write_text("ImageId,PredictionString\nv1,c 1 2 3 4\n")
    write_shards(f"imagefolder:{images}", root / "shards_missing", resize=0, workers=0)
    (root / "shards_missing" / "train-000000.tar").unlink()
    (root / "old_shards").mkdir()
    (root / "old_shards" / "manifest.json").write_text('{"format": "zfnet-shards/0"}')
    squeezenet = root / "squeezenet1_1.pth"  # a torchvision state dict
    torch.save(torchvision.models.squeezenet1_1().state_dict(), squeezenet)
    # a model of the user's own (zfnet.user_code): a net for 32 px inputs, and mistakes
    (root / "user_net.py").write_text(USER_NET)
    (root / "user_syntax.py").write_text("def build(:\n")
    (root / "user_script.py").write_text("import sys\nsys.exit(2)\n")
    # parts files for correspondence on images:{images} (40 px images, 0.png in four folders)
    box = [4, 4, 12, 12]
    for name, marks in {
        "parts_absent": {"train/a/0.png": {"eye": box}, "y.png": {"eye": box}},
        "parts_ambiguous": {"train/a/0.png": {"eye": box}, "0.png": {"eye": box}},
        "parts_lacking": {"train/a/0.png": {"eye": box, "nose": box},
                          "train/b/0.png": {"eye": box}},
        "parts_outside": {"train/a/0.png": {"eye": [50, 50, 60, 60]},
                          "train/b/0.png": {"eye": box}},
        "parts_one": {"train/a/0.png": {"eye": box}},
    }.items():
        (root / f"{name}.json").write_text(json.dumps(marks))
    (root / "parts_columns.csv").write_text("train/a/0.png,eye,1,2,3\n")
    torch.save(torch.nn.Linear(3, 3).state_dict(), root / "linear.pth")
    return {"run": run, "empty": empty, "notes": root / "notes.txt", "other": other,
            "squeezenet": squeezenet,
            "corrupt": corrupt, "broken_images": root / "broken_images", "flat": flat,
            "escape": escape, "bad_fmnist": bad_fmnist, "root": root, "images": images,
            "shards_missing": root / "shards_missing", "old_shards": root / "old_shards",
            "flat_val": flat_val, "val_labels": root / "val_labels.csv",
            "user_net": root / "user_net.py", "user_syntax": root / "user_syntax.py",
            "user_script": root / "user_script.py", "linear": root / "linear.pth",
            **{p.stem: p for p in root.glob("parts_*")}}


USER_NET = """
import torch
from torch import nn


class Net(nn.Module):  # fc sized for 32 px inputs
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 32 * 32, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def needs_depth(depth):
    return Net()


def fails():
    raise RuntimeError("no such checkpoint")


def not_a_model():
    return 42


class Outputs(Net):  # as a Hugging Face model answers
    def forward(self, x):
        return {"logits": super().forward(x)}


SETTING = 3
"""


CK = ["--checkpoint", "{run}"]
OUT = ["--out", "{out}"]
TRAIN_ON = ["train", "--model", "zfnet_small", *OUT, "--epochs", "1", "--quiet",
            "--no-tensorboard"]  # with its --data (an option given twice is an error)
TRAIN = [*TRAIN_ON, "--data", TINY]
TOPK = ["visualize", "topk", *CK, *OUT, "--k", "2", "--images", "8", "--maps-per-layer", "2"]

# (id, arguments, what the message must name)
CASES = [
    # models
    ("models-unknown", ["models", "zfnett"], "zfnett"),
    ("models-a-text-file", ["models", "{notes}"], "notes.txt is a file, not a model"),
    ("models-a-weights-file", ["models", "{squeezenet}"],
     "squeezenet1_1.pth is a weights file without a zfnet checkpoint around it"),
    ("models-input-too-small", ["models", "zfnet_small", "--input-size", "5"], "input_size=5"),
    ("models-input-zero", ["models", "zfnet_small", "--input-size", "0"], "--input-size"),
    # model sources (zfnet.sources), as every command given --model/--weights takes them
    ("source-unknown", ["models", "vgg16"], "did you mean torchvision:vgg16"),
    ("source-torchvision-unknown", ["models", "torchvision:resnet181"], "closest: resnet18"),
    ("source-weights-enum", ["models", "torchvision:resnet18", "--weights", "IMAGENET1K_V9"],
     "valid: IMAGENET1K_V1"),
    ("source-weights-other-architecture", ["models", "torchvision:squeezenet1_0", "--weights",
                                           "{squeezenet}"], "another architecture"),
    ("source-weights-missing", ["models", "torchvision:resnet18", "--weights",
                                "/nonexistent/w.pth"], "/nonexistent/w.pth does not exist"),
    ("source-hub-offline", ["models", "torchvision:resnet18", "--weights", "DEFAULT"],
     "download https://download.pytorch.org/models/resnet18-f37072fd.pth"),
    ("source-path-missing", ["models", "runs/nope"], "runs/nope does not exist"),
    ("source-weights-file-as-model", ["models", "{squeezenet}"], "--weights"),
    ("source-run-with-weights", ["models", "{run}", "--weights", "DEFAULT"], "holds its weights"),
    ("source-mean-count", ["models", "torchvision:resnet18", "--mean", "0.5,0.5"],
     "mean has 2 values"),
    ("source-mean-range", ["models", "torchvision:resnet18", "--mean", "124,117,104"], "--mean"),
    ("source-mean-not-numbers", ["models", "torchvision:resnet18", "--mean", "a,b,c"], "--mean"),
    ("source-std-zero", ["models", "torchvision:resnet18", "--std", "0"], "--std"),
    ("source-crop-fixed", ["models", "zfnet_small", "--crop", "100"], "takes 64 px"),
    ("source-resize-below-crop", ["models", "torchvision:resnet18", "--resize", "100"],
     "resize 100 is smaller than crop 224"),
    # your own code: FILE.py:NAME, package.module:NAME
    ("source-user-file-missing", ["models", "{root}/nope.py:build"], "nope.py does not exist"),
    ("source-user-module-missing", ["models", "no_such_pkg.nets:build"],
     "no module 'no_such_pkg.nets'"),
    ("source-user-no-name", ["models", "{user_net}"],
     "user_net.py:NAME; what builds a model there: Net, fails, not_a_model, Outputs "
     "(needs_depth needs arguments: parts of a model, or wrap them in a function that builds "
     "it)"),
    ("source-user-unknown-name", ["models", "{user_net}:net"], "has no 'net' (did you mean Net?)"),
    # the same list of what builds a model as without :NAME (it listed needs_depth with them)
    ("source-user-missing-name", ["models", "{user_net}:Nope"],
     "user_net.py has no 'Nope'; what builds a model there: Net, fails, not_a_model, Outputs "
     "(needs_depth needs arguments: parts of a model, or wrap them in a function that builds "
     "it)"),
    ("source-user-syntax", ["models", "{user_syntax}:build"], "SyntaxError"),
    ("source-user-exits", ["models", "{user_script}:build"], 'if __name__ == "__main__"'),
    ("source-user-build-fails", ["models", "{user_net}:fails"],
     "fails() failed (RuntimeError: no such checkpoint) at user_net.py:"),
    ("source-user-needs-arguments", ["models", "{user_net}:needs_depth"],
     "must build the model without arguments"),
    ("source-user-not-a-model", ["models", "{user_net}:not_a_model"],
     "returned a value of type int"),
    ("source-user-not-callable", ["models", "{user_net}:SETTING"], "is of type int"),
    ("source-user-input-size", ["models", "{user_net}:Net"], "does not take 3x224x224 inputs"),
    ("source-user-not-scores", ["models", "{user_net}:Outputs", "--crop", "32"],
     "returns a dict, not class scores"),
    ("source-user-weights", ["models", "{user_net}:Net", "--crop", "32", "--weights",
                             "{linear}"], "another architecture"),
    ("source-crop-too-small", ["models", "torchvision:alexnet", "--crop", "16"],
     "does not take 3x16x16 inputs"),
    # --labels: the model's class names
    ("labels-missing", ["models", "torchvision:resnet18", "--labels", "{root}/nope.txt"],
     "labels file {root}/nope.txt does not exist"),
    ("labels-count", ["models", "torchvision:resnet18", "--labels", "{notes}"],
     "1 class names in {notes} for torchvision:resnet18 (random init), whose last layer has "
     "1000 outputs"),
    ("labels-run", [*TOPK, "--labels", "{notes}"], "it holds its class names"),
    # a model name with a run's checkpoint file: the file is the run's (it said "zfnet_small
    # is a zfnet run"); a checkpoint folder as --weights: --checkpoint is named
    ("labels-run-weights", ["predict", "{images}/train/a/0.png", "--model", "zfnet_small",
                            "--weights", "{run}/checkpoints/epoch_0001/model.safetensors",
                            "--labels", "{notes}"],
     "/checkpoints/epoch_0001/model.safetensors is a checkpoint of a zfnet run: it holds its "
     "class names ("),
    ("weights-checkpoint-folder", ["predict", "{images}/train/a/0.png", "--model",
                                   "zfnet_small", "--weights", "{run}/checkpoints/epoch_0001"],
     "or the checkpoint itself: --checkpoint "),
    ("evolution-of-a-model", ["analyze", "evolution", "--model", "torchvision:resnet18", *OUT],
     "zfnet analyze evolution needs a zfnet run (--checkpoint RUN): Fig. 4 compares the "
     "checkpoints it kept while training; --model is for the commands that take any model"),
    ("transfer-weights", ["analyze", "transfer", *CK, "--weights", "{notes}", "--data",
                          "synthetic", *OUT], "is a zfnet run: its checkpoint holds its weights"),
    ("filters-crop-without-model", ["analyze", "filters", *CK, *OUT, "--crop", "32"],
     "--crop go with --model SOURCE"),
    ("filters-same-run-twice", ["analyze", "filters", *CK, *CK, *OUT], "is given twice"),
    ("filters-weights-per-model", ["analyze", "filters", *OUT, "--model", "zfnet_small",
                                   "--model", "alexnet_small", "--weights", "{notes}"],
     "1 --weights for 2 --model: give one --weights per --model"),
    *([("source-timm-missing", ["models", "timm:resnet18"], "pip install timm")]
      if importlib.util.find_spec("timm") is None else []),
    # train: what to train, on what
    ("train-no-data-model", ["train", *OUT], "--data and --model"),
    ("train-unknown-dataset", [*TRAIN_ON, "--data", "nope"], "nope"),
    ("train-dataset-option", [*TRAIN_ON, "--data", "synthetic?bogus=1"], "bogus"),
    ("train-dataset-value", [*TRAIN_ON, "--data", "synthetic?n_train=abc"], "n_train"),
    ("train-spec-syntax", [*TRAIN_ON, "--data", "synthetic:"], "synthetic:"),
    ("train-imagefolder-layout", [*TRAIN_ON, "--data", "imagefolder:{flat}"], "train"),
    ("train-unlabelled", [*TRAIN_ON, "--data", "images:{flat}"], "has no labels to train on"),
    ("study-unlabelled", ["study", "--data", "images:{flat}", "--epochs", "1", *OUT],
     "has no labels to train on"),
    ("train-flat-val", [*TRAIN_ON, "--data", "imagefolder:{flat_val}"], "val_labels=FILE"),
    ("train-val-labels-class", [*TRAIN_ON, "--data",
                                "imagefolder:{flat_val}?val_labels={val_labels}"],
     "class 'c' is not one of the 2 training classes"),
    ("train-val-labels-missing", [*TRAIN_ON, "--data",
                                  "imagefolder:{flat_val}?val_labels={out}.csv"],
     "does not exist"),
    ("train-unknown-model", ["train", "--data", TINY, "--model", "zfnett", *OUT],
     "unknown model 'zfnett'"),
    ("train-existing-run", ["train", "--data", TINY, "--model", "zfnet_small", "--out", "{run}",
                            "--epochs", "1"], "--resume"),
    ("train-existing-run-no-model", ["train", "--data", TINY, "--out", "{run}"],
     "holds a run already: --resume continues it"),
    ("train-resume-not-a-run", ["train", "--out", "{empty}", "--resume"],
     "holds no run to resume (no checkpoint, no config.json): give --data and --model"),
    # train: --model-opt, each key's type and range
    ("opt-dropout-abc", [*TRAIN, "--model-opt", "dropout=abc"], "dropout=abc"),
    ("opt-dropout-1", [*TRAIN, "--model-opt", "dropout=1"], "dropout"),
    ("opt-lrn-size-abc", [*TRAIN, "--model-opt", "lrn_size=abc"], "lrn_size=abc"),
    ("opt-input-size", [*TRAIN, "--model-opt", "input_size=5"], "input_size"),
    ("opt-fc-width-negative", [*TRAIN, "--model-opt", "fc_width=-5"], "fc_width=-5"),
    ("opt-fc-width-abc", [*TRAIN, "--model-opt", "fc_width=abc"], "fc_width must be a positive"),
    ("opt-pool-kernel-0", [*TRAIN, "--model-opt", "pool_kernel=0"], "pool_kernel=0"),
    ("opt-batchnorm-maybe", [*TRAIN, "--model-opt", "batchnorm=maybe"], "true or false"),
    ("opt-unknown-key", [*TRAIN, "--model-opt", "colour=red"], "colour"),
    ("opt-no-equals", [*TRAIN, "--model-opt", "nope"], "KEY=VALUE"),
    ("opt-remove", [*TRAIN, "--model-opt", "remove=conv1"], "conv1"),
    ("opt-strides-count", [*TRAIN, "--model-opt", "strides=1,1"], "strides needs 5"),
    ("opt-init", [*TRAIN, "--model-opt", "init=zeros"], "zeros"),
    # train: option values
    ("train-batch-0", [*TRAIN, "--batch-size", "0"], "--batch-size"),
    ("train-epochs-0", ["train", "--data", TINY, *OUT, "--epochs", "0"],
     "'--epochs': 0 is not in the range x>=1"),
    ("train-lr-negative", [*TRAIN, "--lr", "-1"], "--lr"),
    ("train-time-budget", [*TRAIN, "--time-budget", "abc"], "abc"),
    ("train-keep-epochs", [*TRAIN, "--keep-epochs", "x"], "--keep-epochs"),
    ("train-device", [*TRAIN, "--device", "gpu"], "gpu"),
    ("train-seed", [*TRAIN, "--seed", "-1"], "--seed"),
    ("train-momentum", [*TRAIN, "--momentum", "2"], "--momentum"),
    ("train-loader-unknown", [*TRAIN, "--loader", "fast"], "--loader"),
    ("train-workers", [*TRAIN, "--workers", "many"], "'many' is not auto or a number >= 0"),
    ("train-loader-gpu-in-memory", [*TRAIN, "--loader", "gpu"], "has none to decode"),
    ("train-loader-gpu-erasing", [*TRAIN_ON, "--data", "imagefolder:{images}?size=32",
                                  "--loader", "gpu", "--random-erasing", "0.5"], "--loader cpu"),
    ("train-onecycle-budget", [*TRAIN, "--schedule", "onecycle", "--time-budget", "1m"],
     "onecycle"),
    # eval
    ("eval-imagefolder-layout", ["eval", *CK, "--data", "imagefolder:{flat}"], "flat_images"),
    ("eval-unlabelled-images", ["eval", *CK, "--data", "images:{flat}"],
     "has no labels to score against"),
    ("eval-any-model-unlabelled", ["eval", "--model", "zfnet_small", "--data", "images:{flat}"],
     "has no labels to score against"),
    ("eval-fmnist-missing", ["eval", *CK, "--data", "fashion-mnist:/nonexistent"],
     "/nonexistent"),
    ("eval-fmnist-corrupt", ["eval", *CK, "--data", "fashion-mnist:{bad_fmnist}"],
     "is damaged"),
    ("eval-imagefolder-a-file", ["eval", *CK, "--data", "imagefolder:{notes}"],
     "notes.txt is not a directory"),
    ("eval-device", ["eval", *CK, "--device", "gpu"], "gpu"),
    ("eval-not-a-run", ["eval", "--checkpoint", "{empty}"], "empty"),
    ("eval-a-text-file", ["eval", "--checkpoint", "{notes}"], "notes.txt"),
    ("eval-other-weights", ["eval", "--checkpoint", "{other}/model.safetensors"],
     "different model"),
    ("eval-corrupt-state", ["eval", "--checkpoint", "{corrupt}"], "corrupt"),
    ("eval-batch-0", ["eval", *CK, "--batch-size", "0"], "--batch-size"),
    ("eval-workers", ["eval", *CK, "--workers", "-2"], "'-2' is not auto or a number >= 0"),
    ("eval-loader-gpu-in-memory", ["eval", *CK, "--loader", "gpu"], "has none to decode"),
    ("eval-json-a-folder", ["eval", *CK, "--json", "{empty}"], "empty is a folder, not a file"),
    ("eval-other-classes", ["eval", *CK, "--data", TINY + "&classes=0,1"], "2 classes"),
    ("eval-other-size", ["eval", *CK, "--data", OTHER_SIZE], "48 px"),
    ("eval-live-weights", ["eval", *CK, "--live-weights"], "--ema"),
    ("eval-broken-images", ["eval", *CK, "--data", "imagefolder:{broken_images}"],
     "broken_images"),
    # shards: writing them, and reading what is not shards
    ("shards-not-imagefolder", ["shards", "synthetic", *OUT], "imagefolder:DIR"),
    ("shards-layout", ["shards", "imagefolder:{flat}", *OUT], "train"),
    ("shards-out-used", ["shards", "imagefolder:{images}", "--out", "{run}"],
     "not an empty folder"),
    ("shards-size", ["shards", "imagefolder:{images}", *OUT, "--shard-size", "big"],
     "--shard-size"),
    ("shards-size-below-a-tar", ["shards", "imagefolder:{images}", *OUT, "--shard-size", "10KB"],
     "10000 bytes is less than the smallest tar file, 10240 bytes"),
    ("shards-original-and-resize", ["shards", "imagefolder:{images}", *OUT, "--original",
                                    "--resize", "128"], "--original and --resize 128"),
    ("shards-square-original", ["shards", "imagefolder:{images}", *OUT, "--square",
                                "--original"], "--square"),
    ("shards-resize-tiny", ["shards", "imagefolder:{images}", *OUT, "--resize", "3"],
     "resize=3"),
    ("shards-size-option", ["shards", "imagefolder:{images}?size=64", *OUT], "size=64"),
    ("shards-random-labels", ["shards", "imagefolder:{images}?random_labels=3", *OUT],
     "option random_labels in"),
    ("shards-out-inside-source", ["shards", "imagefolder:{images}", "--out",
                                  "{images}/train/shards"], "where it would become a class folder"),
    ("shards-all-broken", ["shards", "imagefolder:{broken_images}", *OUT, "--workers", "0"],
     "skipped as broken"),
    ("eval-shards-missing", ["eval", *CK, "--data", "shards:/nonexistent"],
     "/nonexistent does not exist"),
    ("eval-shards-not-shards", ["eval", *CK, "--data", "shards:{empty}"], "no manifest.json"),
    ("train-shards-other-version", [*TRAIN_ON, "--data", "shards:{old_shards}"],
     "'zfnet-shards/0', this zfnet reads 'zfnet-shards/1'"),
    ("topk-shards-missing-shard", [*TOPK, "--data", "shards:{shards_missing}"],
     "train-000000.tar is missing"),
    # visualize topk
    ("topk-layer", [*TOPK, "--layer", "conv9"], "conv9"),
    # train's --seed is a random seed; this one is what each unit goes down with
    ("topk-seed-a-number", [*TOPK, "--seed", "0"],
     "'0' is a random seed (as `zfnet train --seed` takes one); this --seed is what each unit "
     "goes down with: activation or one"),
    ("topk-layers-alias", [*TOPK, "--layers", "conv1, conv9"], "conv9"),
    ("topk-layer-empty", [*TOPK, "--layer", " , "], "--layer"),
    ("topk-k-0", [*TOPK[:TOPK.index("--k")], "--k", "0"], "'--k': 0 is not in the range x>=1"),
    ("topk-map", [*TOPK, "--layer", "conv1,conv5", "--map", "4000"],
     "map 4000 outside the"),
    ("topk-class", [*TOPK, "--class", "dragon"], "class 'dragon' is not one of"),
    ("topk-class-and-layer", [*TOPK, "--class", "face", "--layer", "conv1"],
     "--layer picks others"),
    ("topk-not-a-run", ["visualize", "topk", "--checkpoint", "{empty}", *OUT], "empty"),
    ("topk-dataset", [*TOPK, "--data", "nope"], "nope"),
    ("topk-out-is-file", ["visualize", "topk", *CK, "--out", "{notes}"], "notes.txt"),
    ("topk-other-input-size", [*TOPK, "--data", OTHER_SIZE], "48 px"),
    ("topk-images-empty", [*TOPK, "--data", "images:{empty}"], "holds no image files"),
    ("topk-images-missing", [*TOPK, "--data", "images:/nonexistent"], "/nonexistent does not"),
    ("topk-images-a-file", [*TOPK, "--data", "images:{notes}"], "is not a directory"),
    # atlas
    ("atlas-layer", ["atlas", *CK, *OUT, "--layer", "conv9"], "conv9"),
    ("atlas-no-data", ["atlas", "--model", "zfnet_small", *OUT],
     "no dataset given for zfnet_small (random init): give one with --data, e.g. images:DIR (a "
     "folder of images), sample-photos (6 built-in photos)"),
    ("atlas-out-not-an-atlas", ["atlas", *CK, "--out", "{run}"], "holds no atlas"),
    # analyze
    ("evolution-no-checkpoints", ["analyze", "evolution", "--run", "{empty}", *OUT], "empty"),
    ("evolution-no-run", ["analyze", "evolution", *OUT], "--checkpoint"),
    ("evolution-a-file", ["analyze", "evolution", "--checkpoint", "{notes}", *OUT],
     "notes.txt is a file; Fig. 4 compares the checkpoints a training run kept"),
    ("evolution-dataset", ["analyze", "evolution", *CK, "--data", "nope", *OUT], "nope"),
    ("evolution-one-epoch", ["analyze", "evolution", *CK, *OUT], "keeps 1 checkpoint (epoch 1)"),
    ("evolution-layer", ["analyze", "evolution", *CK, *OUT, "--layer", "conv1,conv9"], "conv9"),
    ("invariance-layer", ["analyze", "invariance", *CK, *OUT, "--layer", "conv9"], "conv9"),
    ("filters-not-a-run", ["analyze", "filters", "--checkpoint", "{empty}", *OUT], "empty"),
    # invariance on data of other classes (or none) follows the prediction, as occlusion does
    ("invariance-all-broken", ["analyze", "invariance", "--model", "torchvision:resnet18", *OUT,
                               "--data", "images:{broken_images}"],
     "none of the images of 'images:"),
    ("invariance-dataset", ["analyze", "invariance", *CK, *OUT, "--data",
                            "fashion-mnist:/nonexistent"], "/nonexistent"),
    ("occlusion-layer", ["analyze", "occlusion", *CK, *OUT, "--layer", "conv9"], "conv9"),
    ("occlusion-size", ["analyze", "occlusion", *CK, *OUT, "--size", "1000"], "1000"),
    # occlusion on data with other classes follows the model's own prediction (tested in
    # tests/analyses/test_occlusion.py), so it is not an error
    ("occlusion-stride", ["analyze", "occlusion", *CK, *OUT, "--stride", "500"],
     "stride=500 does not fit the 32x32 image; valid: 1..32 pixels"),
    ("occlusion-two-models", ["analyze", "occlusion", *CK, *CK, *OUT], "given 2 times"),
    ("predict-weights-twice", ["predict", "--model", "torchvision:resnet18", "--weights", "a.pth",
                               "--weights", "b.pth", "{notes}"],
     "--weights': given 2 times (a.pth, b.pth); give it once"),
    ("eval-two-models", ["eval", "--model", "zfnet_small", "--model", "alexnet", "--data", TINY],
     "given 2 times (zfnet_small, alexnet); this command takes one model"),
    ("occlusion-images-0", ["analyze", "occlusion", *CK, *OUT, "--images", "0"], "--images"),
    ("occlusion-incremental-bf16", ["analyze", "occlusion", *CK, *OUT, "--method", "incremental",
                                    "--precision", "bfloat16"],
     "--method incremental recomputes exactly, in float32: give one of them"),
    ("correspondence-part", ["analyze", "correspondence", *CK, *OUT, "--parts", "nose"], "nose"),
    ("correspondence-class", ["analyze", "correspondence", *CK, *OUT, "--class", "dragon"],
     "dragon"),
    ("correspondence-no-masks", ["analyze", "correspondence", *CK, *OUT, "--data",
                                 "images:{images}"], "has no part masks; mark the parts"),
    *[(f"correspondence-{name}", ["analyze", "correspondence", *CK, *OUT, "--data",
                                  "images:{images}", "--parts-file", f"{{parts_{name}}}"], says)
      for name, says in [
          ("absent", "image 'y.png' is not in"),
          ("ambiguous", "'0.png' names more than one image of"),
          ("lacking", "part 'nose' is not marked on 'train/b/0.png' (it marks 'eye'); each part "
                      "is masked on every image: mark it, or leave it out: --parts eye"),
          ("outside", "'train/a/0.png', part 'eye': box [50, 50, 60, 60] lies outside the 40x40 "
                      "image"),
          ("one", "marks 1 image(s); correspondence compares at least 2"),
          ("columns", "line 1: expected 6 columns")]],
    ("correspondence-parts-missing", ["analyze", "correspondence", *CK, *OUT, "--data",
                                      "images:{images}", "--parts-file", "{root}/nope.json"],
     "nope.json does not exist"),
    ("correspondence-parts-class", ["analyze", "correspondence", *CK, *OUT, "--data",
                                    "images:{images}", "--parts-file", "{parts_one}", "--class",
                                    "face"], "--class picks the images"),
    ("correspondence-parts-no-data", ["analyze", "correspondence", *CK, *OUT, "--parts-file",
                                      "{parts_one}"], "give it as --data images:DIR"),
    ("correspondence-parts-synthetic", ["analyze", "correspondence", *CK, *OUT, "--data", TINY,
                                        "--parts-file", "{parts_absent}"],
     "give that folder as --data images:DIR"),
    ("correspondence-layer", ["analyze", "correspondence", *CK, *OUT, "--layer", "conv9"],
     "conv9"),
    ("probes-not-a-run", ["analyze", "probes", "--checkpoint", "{notes}", *OUT], "notes.txt"),
    # another dataset's images are adapted to the model (Table 7's case: tests/test_pipeline.py)
    ("probes-unlabelled", ["analyze", "probes", *CK, *OUT, "--data", "images:{flat}"],
     "has no labels"),
    ("probes-per-class-0", ["analyze", "probes", *CK, *OUT, "--per-class", "0"], "--per-class"),
    ("probes-layer", ["analyze", "probes", *CK, *OUT, "--layer", "fc9"], "fc9"),
    ("probes-layer-gap", ["analyze", "probes", *CK, *OUT, "--layer", "conv1,,conv2"],
     "empty name between its commas"),
    ("transfer-shots-a", ["analyze", "transfer", *CK, *OUT, "--data", TINY, "--shots", "a"],
     "--shots"),
    ("transfer-shots-0", ["analyze", "transfer", *CK, *OUT, "--data", TINY, "--shots", "1,0"],
     "--shots"),
    ("transfer-layer", ["analyze", "transfer", *CK, *OUT, "--data", TINY, "--layer", "conv9"],
     "conv9"),
    ("transfer-dataset", ["analyze", "transfer", *CK, *OUT, "--data", "nope"], "nope"),
    ("transfer-unlabelled", ["analyze", "transfer", *CK, *OUT, "--data", "images:{flat}"],
     "has no labels"),
    ("transfer-per-class", ["analyze", "transfer", *CK, *OUT, "--data", f"{TINY}&per_class=1"],
     "option per_class in"),
    ("randomization-layer", ["analyze", "randomization", *CK, *OUT, "--layer", "conv9"],
     "conv9"),
    ("randomization-fc-layer", ["analyze", "randomization", *CK, *OUT, "--layer", "fc6"],
     "fc6"),
    ("randomization-images", ["analyze", "randomization", *CK, *OUT, "--images", "1000"],
     "1000"),
    ("randomization-mode", ["analyze", "randomization", *CK, *OUT, "--mode", "sideways"],
     "sideways"),
    ("randomization-steps", ["analyze", "randomization", *CK, *OUT, "--steps", "layers"],
     "layers"),
    ("randomization-labels-layer", ["analyze", "randomization", *CK, *OUT, "--mode", "labels",
                                    "--layer", "conv5"], "--layer does not apply"),
    ("randomization-labels-data", ["analyze", "randomization", *CK, *OUT, "--mode", "labels",
                                   "--data", TINY, "--steps", "module"],
     "--data, --steps module do not apply"),
    ("randomization-labels-not-a-run", ["analyze", "randomization", "--model", "zfnet_small",
                                        *OUT, "--mode", "labels"], "needs a zfnet run"),
    ("randomization-labels-not-a-run-with-data", [  # what it needs most said first
        "analyze", "randomization", "--model", "zfnet_small", "--data", TINY, *OUT, "--mode",
        "labels"], "needs a zfnet run"),
    ("randomization-labels-images", ["analyze", "randomization", *CK, *OUT, "--mode", "labels",
                                     "--images", "1000"], "give 1 to 64"),
    ("randomization-epochs-without-labels", ["analyze", "randomization", *CK, *OUT, "--epochs",
                                             "3"], "go with --mode labels"),
    ("randomization-reference-without-labels", ["analyze", "randomization", *CK, *OUT,
                                                "--reference"], "go with --mode labels"),
    ("train-random-labels-value", ["train", "--data", f"{TINY}&random_labels=all", "--model",
                                   "zfnet_small", *OUT, "--epochs", "1"], "random_labels='all'"),
    ("eval-random-labels-no-labels", ["eval", *CK, "--data", "images:{images}?random_labels=0"],
     "needs labelled images"),
    # study, demo, report
    ("study-model", ["study", "--data", TINY, "--models", "zfnet_small, zfnett", "--epochs", "1",
                     *OUT], "zfnett"),
    ("study-variant", ["study", "--data", TINY, "--variants", "baseline,huge", "--epochs", "1",
                       *OUT], "huge"),
    ("study-variant-twice", ["study", "--data", TINY, "--variants", "baseline,baseline",
                             "--epochs", "1", *OUT], "'baseline' is given twice; give each once"),
    ("probes-layer-twice", ["analyze", "probes", *CK, *OUT, "--layer", "conv1, conv1"],
     "'conv1' is given twice; give each once"),
    ("study-schedule", ["study", "--data", TINY, "--schedule", "nope", "--epochs", "1", *OUT],
     "nope"),
    ("study-lr-nan", ["study", "--data", TINY, "--lr", "nan", "--epochs", "1", *OUT],
     "'nan' is not a finite number"),
    ("train-lr-inf", [*TRAIN, "--lr", "inf"], "'inf' is not a finite number"),
    ("demo-lr-nan", ["demo", "--data", TINY, "--lr", "nan", *OUT], "'nan' is not a finite"),
    # an --out that cannot be made is refused before any work (training, mining, a model run)
    ("study-out-under-a-file", ["study", "--data", TINY, "--epochs", "1", "--out",
                                "{notes}/sub"], "notes.txt is a file, so {notes}/sub cannot be"),
    ("occlusion-out-under-a-file", ["analyze", "occlusion", *CK, "--out", "{notes}/x"],
     "notes.txt is a file, so {notes}/x cannot be made in it"),
    ("topk-out-under-a-file", [*TOPK[:-8], "--out", "{notes}/x"], "notes.txt is a file"),
    ("train-out-proc", ["train", "--data", TINY, "--out", "/proc/zfnet-nope"],
     "zfnet cannot create anything in /proc"),
    ("train-out-a-file", ["train", "--data", TINY, "--out", "{notes}"],
     "notes.txt is a file, not a folder; give a folder zfnet can write"),
    ("eval-json-under-a-file", ["eval", *CK, "--json", "{notes}/r.json"], "notes.txt is a file"),
    ("predict-spec-among-images", ["predict", *CK, "{notes}", "images:{images}"],
     "images:{images} is a dataset spec, and a spec is read alone"),
    ("project-unknown-spec", ["project", *CK, "bogus:xyz", *OUT],
     "bogus:xyz is neither an image file nor a dataset spec (bogus is not one of synthetic, "),
    ("project-layer-names-the-source", ["project", "--model", "torchvision:resnet18", "{notes}",
                                        "--layer", "nope", *OUT],
     "(67 in all: `zfnet models torchvision:resnet18` lists them)"),
    # an --out among the images read: its figures would be read as photos the next time
    ("topk-out-among-its-images", ["visualize", "topk", *CK, "--data", "images:{images}",
                                   "--out", "{images}/figures"],
     "{images}/figures is inside the folder {images}, whose images are read (recursively)"),
    ("project-out-its-images", ["project", *CK, "{images}", "--out", "{images}"],
     "{images} is the folder {images}, whose images are read"),
    ("predict-out-proc", ["predict", "--model", "zfnet_small", "{notes}", "--out",
                          "/proc/p.csv"], "zfnet cannot create anything in /proc"),
    ("demo-dataset", ["demo", "--data", "nope", *OUT], "nope"),
    ("demo-model", ["demo", "--data", TINY, "--model", "zfnett", *OUT], "zfnett"),
    ("serve-no-model", ["serve", "--port", "0"], "no model given"),
    ("serve-unknown-model", ["serve", "--model", "zfnett", "--port", "0"], "zfnett"),
    ("serve-bad-data", ["serve", *CK, "--data", "nope", "--port", "0"], "nope"),
    ("serve-port", ["serve", *CK, "--port", "70000"], "70000"),
    ("serve-upload-limit", ["serve", *CK, "--max-upload-mb", "0"], "--max-upload-mb"),
    ("serve-occlusion-precision", ["serve", *CK, "--occlusion-precision", "half", "--port", "0"],
     "'half' is not one of"),
    # an empty value (a shell variable not set) is not a default, nor "." for a path
    ("empty-out", ["visualize", "topk", *CK, "--out", ""],
     "'--out': the value is empty (a shell variable not set?); give DIRECTORY"),
    ("empty-data", ["eval", *CK, "--data="], "'--data': the value is empty"),
    ("empty-map", ["visualize", "topk", *CK, *OUT, "--map", ""], "give M[,M...]"),
    ("empty-model", ["train", "--model", "", "--data", TINY, *OUT],
     "'--model': the value is empty"),
    ("empty-image", ["project", "", *CK, *OUT], "'IMAGE...': an empty argument"),
    ("report-no-sections", ["report", "{empty}"], "no report sections"),
    ("report-figure-outside", ["report", "{escape}"], "../secret.png"),
]


def _snapshot(path: Path) -> dict[str, tuple[int, int]] | None:
    """Every file under `path` with its size and modification time; None when absent."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize(("args", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(places, tmp_path, args, names) -> None:
    out = tmp_path / "out"
    where = {k: str(v) for k, v in places.items()} | {"out": str(out)}
    argv = [a.format(**where) for a in args]
    watched = {p: _snapshot(p) for p in (out, places["run"], places["empty"], places["escape"])}
    res = CliRunner().invoke(main, argv)
    assert res.exit_code != 0, res.output
    # a handled error exits through SystemExit; anything else is an uncaught exception
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert "Usage:" not in res.output and "for help" not in res.output  # no click preamble
    last = res.output.strip().splitlines()[-1]
    names = names.format(**where)
    assert last.startswith("Error: ") and names in last, res.output
    for p, before in watched.items():
        assert _snapshot(p) == before, f"{p} was written to"


def test_a_bad_device_decoder_is_one_clear_line(places, tmp_path, monkeypatch) -> None:
    # ZFNET_DEVICE_DECODER (zfnet.data.codec), checked when the gpu loader is chosen (by
    # `loader_kind`, which every command's loader goes through)
    monkeypatch.setenv("ZFNET_DEVICE_DECODER", "dali")
    test_bad_input_is_one_clear_line(
        places, tmp_path, [*TRAIN_ON, "--data", "imagefolder:{images}?size=32", "--loader", "gpu"],
        "ZFNET_DEVICE_DECODER='dali'")


def test_a_bad_thread_count_is_one_clear_line(places, tmp_path, monkeypatch) -> None:
    # ZFNET_DEVICE_THREADS, checked as the loader is chosen: the cpu loader's batches of
    # windows are made by the same threads
    monkeypatch.setenv("ZFNET_DEVICE_THREADS", "many")
    test_bad_input_is_one_clear_line(
        places, tmp_path, [*TRAIN_ON, "--data", "imagefolder:{images}?size=32", "--loader", "cpu"],
        "ZFNET_DEVICE_THREADS='many' is not valid; valid: auto or a number >= 0")


def test_names_and_aliases(places, tmp_path) -> None:
    """--layer takes comma lists (spaces stripped) and repeats, module paths included; the old
    spellings --layers and --run still work; --checkpoint RUN names the run everywhere."""
    run, out = str(places["run"]), tmp_path / "out"
    res = CliRunner().invoke(main, ["visualize", "topk", "--checkpoint", run, "--out", str(out),
                                    "--layer", " conv1 , features.conv2", "--layer", "pool5",
                                    "--layers", "conv3", "--k", "2", "--images", "8",
                                    "--maps-per-layer", "2"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "gallery").glob("*.png")) == [
        "topk_conv1.png", "topk_conv2.png", "topk_conv3.png", "topk_pool5.png"]
    # a class's score: its blocks are units of the class layer, not feature maps
    res = CliRunner().invoke(main, ["visualize", "topk", "--checkpoint", run, "--out",
                                    str(tmp_path / "classes"), "--class", "face", "--k", "2",
                                    "--images", "8"])
    assert res.exit_code == 0, res.output
    (section,) = read_sections(tmp_path / "classes")
    assert section.caption.startswith("Paper Fig. 2. Each block is one unit of the layer (one "
                                      "number an image: of the class layer, a class's score)")
    # a second call of other layers makes the section its own: said, not done silently
    res = CliRunner().invoke(main, ["visualize", "topk", "--checkpoint", run, "--out", str(out),
                                    "--layer", "conv2", "--k", "2", "--images", "8",
                                    "--maps-per-layer", "2"])
    assert res.exit_code == 0, res.output
    assert ("note: the gallery section now shows 1 figure, this command's; conv1, pool5, conv3 "
            "it showed before are left out") in " ".join(res.output.split()), res.output
    for flag in ("--checkpoint", "--run"):  # the run keeps one epoch: refused, but by name
        res = CliRunner().invoke(main, ["analyze", "evolution", flag, run, "--out", str(out),
                                        "--images", "8", "--maps", "2"])
        assert res.exit_code == 2 and "keeps 1 checkpoint" in res.output, res.output
    res = CliRunner().invoke(main, ["analyze", "correspondence", "--checkpoint", run, "--out",
                                    str(out), "--parts", "eye_left, mouth", "--images", "3",
                                    "--draws", "1"])
    assert res.exit_code == 0, res.output
    assert [line.split()[0] for line in res.output.splitlines()[:3]] == [
        "eye_left", "mouth", "random"]


def test_help_is_whole() -> None:
    """Every command's short help is a whole phrase (not cut at "Figs." or "Sec."), and the old
    option spellings are hidden."""
    for group in ([], ["analyze"], ["visualize"]):
        res = CliRunner().invoke(main, [*group, "-h"])
        assert res.exit_code == 0, res.output
        listed = res.output.split("Commands:")[1].strip().splitlines()
        assert len(listed) >= 1
        for line in listed:
            name, text = line.split(maxsplit=1)
            assert not text.endswith(("...", "(Figs.", "(Sec.", "(paper Sec.")), line
    evo = CliRunner().invoke(main, ["analyze", "evolution", "-h"]).output
    topk = CliRunner().invoke(main, ["visualize", "topk", "-h"]).output
    assert "--checkpoint RUN" in evo and "--run" not in evo
    assert "--layer NAME" in topk and "--layers" not in topk


def test_ctrl_c_outside_training_exits_130_in_one_line(monkeypatch) -> None:
    import zfnet.sources

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zfnet.sources, "load_source", interrupted)
    res = CliRunner().invoke(main, ["models", "torchvision:resnet18"])
    assert res.exit_code == 130 and res.output == "interrupted (SIGINT)\n"


def test_a_full_or_read_only_disk_is_one_line_and_other_os_errors_stay_bugs(monkeypatch
                                                                          ) -> None:
    import errno

    import zfnet.sources

    def fails(number: int):
        def load(*args, **kwargs):
            raise OSError(number, os.strerror(number), "/data/out/model.safetensors")
        return load

    for number in (errno.ENOSPC, errno.EROFS):
        monkeypatch.setattr(zfnet.sources, "load_source", fails(number))
        res = CliRunner().invoke(main, ["models", "torchvision:resnet18"])
        assert res.exit_code == 1 and res.output == (
            f"Error: {os.strerror(number)}: /data/out/model.safetensors (free space or choose "
            "another place to write)\n")
    monkeypatch.setattr(zfnet.sources, "load_source", fails(errno.EIO))
    res = CliRunner().invoke(main, ["models", "torchvision:resnet18"])
    assert isinstance(res.exception, OSError)  # not the user's: its traceback is kept


def test_under_torchrun_a_usage_error_is_told_once_and_a_process_names_its_own(
        places, monkeypatch) -> None:
    """The same bad option in every process: only the first says it (all exit 2). An error that
    may be one process's own (its share of the data) is said by each, named by its rank."""
    bad_option = ["visualize", "topk", "--checkpoint", str(places["run"]), "--k", "0"]
    bad_path = ["eval", "--checkpoint", str(places["run"]), "--data", "imagefolder:/nonexistent"]
    said = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        said[rank] = [CliRunner().invoke(main, args) for args in (bad_option, bad_path)]
    option0, path0 = said["0"]
    option1, path1 = said["1"]
    assert option0.exit_code == option1.exit_code == 2
    assert "--k" in option0.output and option1.output == ""
    assert path0.exit_code == path1.exit_code == 1
    assert path0.output.startswith("Error: ") and "rank" not in path0.output
    assert path1.output == path0.output.replace("Error: ", "Error: rank 1: ", 1)


def test_every_option_says_what_it_does() -> None:
    """`--help` of every command explains each of its options (the hidden old spellings
    aside)."""
    import click

    def bare(command: click.Command, path: str) -> list[str]:
        if isinstance(command, click.Group):
            return [m for name, sub in command.commands.items()
                    for m in bare(sub, f"{path} {name}")]
        return [f"{path} {p.opts[0]}" for p in command.params
                if isinstance(p, click.Option) and not p.hidden and not p.help]

    assert bare(main, "zfnet") == []


def test_every_option_names_what_it_takes() -> None:
    """Each option with a value shows what kind (SPEC, SOURCE, NAME, DIRECTORY ...) in --help
    and in the error about an empty value, never click's bare TEXT or PATH."""
    import click

    ctx = click.Context(main)

    def bare(command: click.Command, path: str) -> list[str]:
        if isinstance(command, click.Group):
            return [m for name, sub in command.commands.items()
                    for m in bare(sub, f"{path} {name}")]
        return [f"{path} {p.opts[0]}" for p in command.params
                if isinstance(p, click.Option) and not p.hidden and not p.is_flag
                and p.make_metavar(ctx) in ("TEXT", "PATH")]

    assert bare(main, "zfnet") == []


def test_a_warning_under_a_progress_bar_is_a_line_of_its_own(capsys) -> None:
    """A broken file met while a bar is drawn (`zfnet shards`, top-k mining) is named on its
    own line, not after the bar's text."""
    import sys
    import warnings

    from tqdm import tqdm

    from zfnet.cli.app import _one_line_warnings
    from zfnet.data.images import BadImageError, warn_skipped

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        _one_line_warnings()
        with tqdm(total=2, desc="writing train", file=sys.stderr) as bar:
            bar.update(1)
            warn_skipped(BadImageError("a/zero.jpg", "empty file (0 bytes)"))
            bar.update(1)
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert "warning: skipping broken image a/zero.jpg: empty file (0 bytes)" in lines


def test_too_many_loader_workers_is_one_line_once(capsys) -> None:
    """torch's warning of more DataLoader workers than cores (`--workers 64`) is zfnet's one
    line, once (torch's came with its file and source line, once for each loader)."""
    import warnings

    import torch

    from zfnet.cli.app import _one_line_warnings

    data = torch.utils.data.TensorDataset(torch.zeros(2))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        _one_line_warnings()
        for _ in range(2):
            torch.utils.data.DataLoader(data, num_workers=512).check_worker_number_rationality()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: 512 loader worker processes, more "
                                               "than the "), err
    assert err[0].endswith("give fewer --workers")


def test_mode_labels_refuses_a_model_by_name_before_loading_it(tmp_path) -> None:
    """--mode labels needs a zfnet run: a torchvision model is refused in one line, before it
    is built (no 'random init' or preprocessing notes first)."""
    res = CliRunner().invoke(main, ["analyze", "randomization", "--model",
                                    "torchvision:resnet18", "--mode", "labels", "--out",
                                    str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        "Error: --mode labels trains the model again on permuted labels: it needs a zfnet run "
        "(--checkpoint RUN), not torchvision:resnet18"], res.output


def test_memory_running_out_is_one_line_saying_what_to_ask_for(places, monkeypatch) -> None:
    """--resize 200000 (or --k 100000) asks for more memory than the machine has: one line,
    not the allocator's traceback."""
    import zfnet.predict

    def huge(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "120000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(zfnet.predict, "predict", huge)
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(places["run"]),
                                    str(places["images"] / "val")])
    assert isinstance(res.exception, SystemExit) and res.exit_code == 1, res.output
    assert res.output.strip().splitlines()[-1] == (
        "Error: out of memory (120 GB asked for): ask for less, a smaller --batch-size, --crop "
        "or --resize, --k, or fewer --images")


def test_a_corrupt_section_in_out_says_the_results_are_kept(places, tmp_path) -> None:
    """Another section file in --out that cannot be read stops the page, after the work: the
    message says the command's results are saved and how to build the page once mended (it
    named the file alone). A command's own corrupt section it writes again."""
    out = tmp_path / "out"
    (out / "sections").mkdir(parents=True)
    (out / "sections" / "zzz.json").write_text("{bad json")
    (out / "sections" / "filters.json").write_text("{bad json")
    res = CliRunner().invoke(main, ["analyze", "filters", "--checkpoint", str(places["run"]),
                                    "--out", str(out)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "zzz.json is not a report section" in res.output
    assert (f"this command's results are saved in {out}: `zfnet report {out}` then builds the "
            "page") in res.output
    (out / "sections" / "zzz.json").unlink()
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output  # filters.json written again by the command


def test_a_run_folder_named_as_a_model_is_the_run(places, tmp_path, monkeypatch) -> None:
    """`--checkpoint zfnet_small`, a run folder of that name: the registry's name won, so the
    analyses looked at a randomly initialised zfnet_small, silently."""
    from zfnet.cli.loading import _load

    monkeypatch.chdir(tmp_path)
    shutil.copytree(places["run"], tmp_path / "zfnet_small")
    model, _ = _load("zfnet_small", None)
    run_model, _ = _load(str(tmp_path / "zfnet_small"), None)
    for a, b in zip(model.state_dict().values(), run_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    res = CliRunner().invoke(main, ["eval", "--checkpoint", "zfnet_small"])
    assert res.exit_code == 0 and "random init" not in res.output, res.output


def test_a_device_this_machine_lacks_is_a_bad_option_value(places, monkeypatch) -> None:
    """`--device cuda` without a GPU exited 1, as a failed run does, where `--device tpu` exits
    2, as `--help` says a bad option value does."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        res = CliRunner().invoke(main, ["eval", "--checkpoint", str(places["run"]),
                                        "--device", device])
        assert res.exit_code == 2, res.output
        assert res.output == (f"Error: Invalid value for '--device': device '{device}': CUDA "
                              "is not available on this machine; valid: cpu, auto\n")


def test_a_ctrl_c_that_lands_in_a_callback_ends_the_command(tmp_path) -> None:
    """A Ctrl-C that lands in a finalizer or weakref callback (matplotlib's, while the report's
    figures are drawn) printed "Exception ignored in: <function ...>" with a traceback, and the
    command went on; it now ends the command, which says so in one line and exits 130, also
    from a wait the command is in (it waited until the wait's end)."""
    import subprocess
    import sys

    from tests.processes import process_env

    script = tmp_path / "interrupted.py"
    script.write_text(
        "import sys, time, weakref\n"
        "import click\n"
        "from zfnet.cli import main\n"
        "@main.command('slow-figure')\n"
        "def slow_figure():\n"
        "    class Figure: pass\n"
        "    def callback(_): raise KeyboardInterrupt  # Ctrl-C, landing here\n"
        "    figure = Figure(); kept = weakref.ref(figure, callback)\n"
        "    del figure\n"
        "    time.sleep(120)\n"
        "    click.echo('went on')\n"
        "sys.exit(main(['slow-figure']))\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env=process_env(), timeout=60)  # not the sleep's end
    assert (r.returncode, r.stdout, r.stderr) == (130, "", "interrupted (SIGINT)\n")


@pytest.mark.parametrize("argv, meant", [
    (["analyze", "sanity"], "Did you mean 'zfnet analyze randomization'?"),  # "Sanity checks: …"
    (["explorer"], "Did you mean 'zfnet serve'?"),  # "The explorer: a web page …"
    (["deconvnet"], "Did you mean 'zfnet visualize'?"),  # "Deconvnet visualisations …"
    (["analyze", "table"], None),  # a word of several commands' help: no guess
])
def test_a_command_named_by_a_word_of_its_help_is_suggested(argv, meant) -> None:
    """A name the user took from the paper or the docs, which is no command and not close to
    one: the command whose help says it is named (click suggests only close spellings)."""
    r = CliRunner().invoke(main, argv, prog_name="zfnet")
    assert r.exit_code == 2 and "Traceback" not in r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: No such command '{argv[-1]}'.")
    assert line.endswith(meant or f"'{argv[-1]}'.")
