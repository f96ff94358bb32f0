"""Fine-tuning (`zfnet train --weights`, zfnet.train.finetune): a run started from a trained
network's weights, its classifier built again for the data's classes, the layers up to
`--freeze-to` kept as they were, its inputs the weights' own in every later command."""

import json

import pytest
import torch
import torchvision
from click.testing import CliRunner

from zfnet.cli import main
from zfnet.sources import hub_file, load_source
from zfnet.train import evaluate_checkpoint, load_model
from zfnet.train.finetune import freeze_to, transplant

DATA = "synthetic?n_train=32&n_val=16"
FAST = ["--epochs", "1", "--batch-size", "16", "--device", "cpu", "--amp", "off",
        "--no-tensorboard", "--quiet"]
RESNET = ["--model", "torchvision:resnet18", "--weights", "DEFAULT", "--data", DATA,
          "--crop", "32", "--resize", "36"]


@pytest.fixture
def resnet_weights(offline) -> dict[str, torch.Tensor]:
    """ResNet-18's DEFAULT weights in the torch hub cache: a file saved from random init."""
    enum = torchvision.models.ResNet18_Weights.DEFAULT
    hub_file(enum).parent.mkdir(parents=True)
    torch.manual_seed(0)
    sd = torchvision.models.resnet18().state_dict()
    torch.save(sd, hub_file(enum))
    return sd


def test_a_pretrained_resnet_fine_tuned_keeps_what_is_frozen_and_is_read_with_its_inputs(
        resnet_weights, tmp_path) -> None:
    out = tmp_path / "ft"
    r = CliRunner().invoke(main, ["train", *RESNET, "--freeze-to", "layer2", "--out", str(out),
                                  *FAST[:-1]])
    assert r.exit_code == 0, r.output
    assert ("fine-tuning torchvision:resnet18 IMAGENET1K_V1: fc.weight, fc.bias new for the "
            "data's 10 classes; inputs: resize 36, crop 32, mean 123.7,116.3,103.5, std "
            "58.40,57.12,57.38 (0..255 units); up to layer2 kept as it is (683,072 of "
            "11,181,642 parameters)") in r.output
    config = json.loads((out / "config.json").read_text())
    assert (config["weights"], config["renorm"], config["precondition"]) == ("DEFAULT", False,
                                                                            False)

    def check(sd: dict[str, torch.Tensor]) -> None:
        # up to layer2 as the weights have them, batch norm statistics too; after it, trained
        for k in ("conv1.weight", "bn1.running_mean", "layer2.1.conv2.weight",
                  "layer2.1.bn2.running_var"):
            assert torch.equal(sd[k], resnet_weights[k]), k
        for k in ("layer3.0.conv1.weight", "layer4.1.bn2.running_mean"):
            assert not torch.equal(sd[k], resnet_weights[k]), k
        assert sd["fc.weight"].shape == (10, 512)

    model, meta = load_model(out)
    check(model.state_dict())
    # every later command feeds it the inputs it trained on: the same figures as in training
    prep = load_source(str(out)).preprocessing
    assert (prep.resize, prep.crop, prep.std[0]) == (36, 32, pytest.approx(255 * 0.229))
    scored = evaluate_checkpoint(str(out), amp="off")
    assert scored["top1_error"] == pytest.approx(meta["metrics"]["val_top1_error"])
    # resumed: no weights read again (the hub file gone), the frozen layers still as they were
    hub_file(torchvision.models.ResNet18_Weights.DEFAULT).unlink()
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    model, meta = load_model(out)
    assert meta["epoch"] == 2
    check(model.state_dict())
    # a second stage started from the run: every layer trains, on the inputs the run had
    second = tmp_path / "second"
    r = CliRunner().invoke(main, ["train", "--model", "torchvision:resnet18", "--weights",
                                  str(out), "--data", DATA, "--lr", "0.001", "--out",
                                  str(second), *FAST[:-1]])
    assert r.exit_code == 0, r.output
    assert "its classifier kept (10 outputs, as many as the data's classes); inputs: resize " \
        "36, crop 32" in r.output
    assert load_source(str(second)).preprocessing.crop == 32
    assert not torch.equal(load_model(second)[0].state_dict()["conv1.weight"],
                           resnet_weights["conv1.weight"])


def test_zfnet_from_a_run_keeps_layers_1_to_7_and_trains_a_new_softmax(tmp_path) -> None:
    """The paper's Sec. 5.2: an ImageNet-trained model's layers 1-7 kept, a new softmax for
    other classes; zfnet's models keep the paper's pixels (the new data's mean image) and
    renormalisation."""
    data = "synthetic?n_train=32&n_val=16&size=32"
    base, out = tmp_path / "base", tmp_path / "ft"
    small = ["--model", "zfnet_small", "--model-opt", "conv_widths=16,16,16", "--model-opt",
             "fc_width=32"]
    r = CliRunner().invoke(main, ["train", *small, "--data", data, "--out", str(base), *FAST])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["train", *small, "--weights", str(base), "--freeze-to",
                                  "relu7", "--data", f"{data}&classes=0,1,2", "--out", str(out),
                                  *FAST[:-1]])
    assert r.exit_code == 0, r.output
    assert "classifier.fc8.weight, classifier.fc8.bias new for the data's 3 classes" in r.output
    assert "inputs:" not in r.output
    start, tuned = load_model(base)[0].state_dict(), load_model(out)[0].state_dict()
    assert tuned["classifier.fc8.weight"].shape == (3, 32)
    assert all(torch.equal(v, start[k]) for k, v in tuned.items() if "fc8" not in k)
    config = json.loads((out / "config.json").read_text())
    assert config["renorm"] is True and config["precondition"] is True
    assert load_source(str(out)).preprocessing.mean_image is not None  # the paper's pixels
    r = CliRunner().invoke(main, ["train", "--model", "torchvision:resnet18", "--weights",
                                  str(base), "--data", data, "--out", str(tmp_path / "no")])
    assert r.exit_code != 0 and f"{base} is a run of zfnet_small, not of " \
        "torchvision:resnet18: give --model zfnet_small" in r.output, r.output
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("args, says", [
    (["--model", "torchvision:resnet18", "--data", DATA, "--mean", "0.5"],
     "mean sets the inputs of pretrained weights: give weights with them (a model trained from "
     "scratch takes the paper's pixels)"),
    (["--model", "zfnet_small", "--weights", "x.pth", "--data", DATA, "--crop", "32"],
     "crop sets the inputs of pretrained weights: give weights with them (zfnet's models take "
     "the paper's pixels, 0..255 minus the data's mean image)"),
    ([*RESNET, "--precondition"], "precondition trains the first convolution for the paper's "
     "0..255 pixels"),
    ([*RESNET, "--freeze-to", "layer9"], "layer 'layer9' does not exist in ResNet; did you "
     "mean layer4, layer3 or layer2? valid: conv1, bn1"),
    ([*RESNET, "--freeze-to", "fc"], "--freeze-to fc: every parameter of the model is at or "
     "before fc, so nothing is left to train; give an earlier layer"),
    (["--model", "torchvision:resnet18", "--weights", "gone.pth", "--data", DATA],
     "gone.pth does not exist; give a file of torchvision:resnet18's weights"),
    (["--model", "torchvision:resnet18", "--weights", "r34.pth", "--data", DATA],
     "holds weights of another architecture than torchvision:resnet18"),
], ids=["mean-no-weights", "crop-zfnet", "precondition", "no-layer", "last-layer", "no-file",
        "other-architecture"])
def test_a_bad_start_is_one_line_and_writes_nothing(resnet_weights, tmp_path, monkeypatch,
                                                    args, says) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save(torchvision.models.resnet34().state_dict(), "r34.pth")
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", *args, "--out", str(out), *FAST])
    assert r.exit_code != 0 and r.output.startswith("Error: ") and says in r.output, r.output
    assert r.output.count("\n") == 1, r.output
    assert not out.exists()


def test_transplant_rebuilds_a_conv_classifier_and_refuses_other_differences() -> None:
    torch.manual_seed(0)
    start, new = torchvision.models.squeezenet1_1(), torchvision.models.squeezenet1_1(
        num_classes=5)
    assert transplant(start, new, "squeezenet") == ["classifier.1.weight", "classifier.1.bias"]
    assert torch.equal(new.features[0].weight, start.features[0].weight)
    assert new.classifier[1].weight.shape == (5, 512, 1, 1)
    with pytest.raises(ValueError, match=r"missing: layer1\.2\.conv1\.weight.*only the "
                                         r"classifier's number of outputs may differ"):
        transplant(torchvision.models.resnet18(), torchvision.models.resnet34(num_classes=5),
                   "resnet18")


def test_freeze_to_leaves_no_hook_and_freezes_what_runs_before_the_layer() -> None:
    model = torchvision.models.resnet18(num_classes=3)
    frozen = freeze_to(model, "layer1", 3, 32)
    assert [m for m in frozen if m is model.maxpool] and model.layer1 in frozen
    assert not model.layer1[1].conv2.weight.requires_grad
    assert model.layer2[0].conv1.weight.requires_grad and model.fc.weight.requires_grad
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="does not exist"):
        freeze_to(model, "layer7", 3, 32)
    assert not any(m._forward_hooks for m in model.modules())


def test_another_architecture_trained_on_the_papers_pixels_is_continued_not_fine_tuned(
        tmp_path) -> None:
    """Its weights were trained on 0..255 minus a mean image, not on an input preprocessing a
    fine-tuned run could keep: the error says how to continue it."""
    run = tmp_path / "scratch"
    data = "synthetic?n_train=16&n_val=8&size=32"
    r = CliRunner().invoke(main, ["train", "--model", "torchvision:resnet18", "--data", data,
                                  "--out", str(run), *FAST])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["train", "--model", "torchvision:resnet18", "--weights",
                                  str(run), "--data", data, "--out", str(tmp_path / "no")])
    assert r.exit_code != 0 and f"{run} trained torchvision:resnet18 from scratch on the " \
        f"paper's pixels: continue it with zfnet train --out {run} --resume" in r.output
    assert r.output.count("\n") == 1 and not (tmp_path / "no").exists()
