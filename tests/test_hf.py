"""Hugging Face transformers image classifiers as sources (`zfnet.hf`, `hf:DIR`, `hf:ORG/NAME`):
a folder save_pretrained wrote, loaded with its weights, class names and image processor, its
modules named as transformers names them, its main stages found through its output objects,
the engine equal to Captum on it, and every error one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.test_graph import _check_equal
from zfnet.cli import main
from zfnet.models import feature_layers
from zfnet.sources import load_source, read_state_dict

transformers = pytest.importorskip("transformers")

LABELS = ["tench", "goldfish", "shark", "eagle", "owl"]


def _small_resnet(num_labels: int = 5) -> object:
    cfg = transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 24, 32, 48], depths=[1, 1, 1, 1],
        num_labels=num_labels, id2label=dict(enumerate(LABELS[:num_labels])),
        label2id={n: k for k, n in enumerate(LABELS[:num_labels])})
    torch.manual_seed(0)
    return transformers.ResNetForImageClassification(cfg).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A ResNet as `save_pretrained` writes it, with a processor as microsoft/resnet-50's:
    shorter side to 224 / 0.875, centre 224, ImageNet's mean and std, bicubic."""
    out = tmp_path_factory.mktemp("hf") / "resnet"
    _small_resnet().save_pretrained(out)
    transformers.ConvNextImageProcessor(
        size={"shortest_edge": 224}, crop_pct=0.875, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


def test_a_saved_classifier_comes_with_its_weights_names_and_preprocessing(saved) -> None:
    src = load_source(f"hf:{saved}")
    assert (src.kind, src.labels, src.meta["num_classes"]) == ("hf", LABELS, 5)
    prep = src.preprocessing
    assert (prep.resize, prep.crop, prep.interpolation) == (256, 224, "bicubic")
    assert prep.mean == pytest.approx((123.675, 116.28, 103.53))
    assert prep.std == pytest.approx((58.395, 57.12, 57.375))
    assert "image processor" in src.meta["notes"][0]
    # the logits of transformers' own model of the same weights, its modules' names kept
    ref = transformers.ResNetForImageClassification.from_pretrained(saved).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(src.model(x), ref(pixel_values=x).logits)
    assert type(src.model).__name__ == "ResNetForImageClassification"
    assert src.model.state_dict().keys() == ref.state_dict().keys()
    # its stages, as a torchvision ResNet's: the stem and the four stages, found through the
    # output objects of `resnet` and `resnet.encoder`
    assert feature_layers(src.model, 64) == ["resnet.embedder", *(
        f"resnet.encoder.stages.{i}" for i in range(4))]


def test_the_engine_equals_captum_on_it(saved) -> None:
    model = load_source(f"hf:{saved}").model
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for layer in ("resnet.encoder.stages.1", "resnet.encoder.stages.3.layers.0.layer.1"):
        assert _check_equal(model, layer, x, [0, 5]) >= 3


def test_a_weights_file_of_a_fine_tuned_copy(saved, tmp_path) -> None:
    """--weights: a state dict of the architecture, another number of classes included."""
    three = _small_resnet(num_labels=3)
    torch.save(three.state_dict(), tmp_path / "three.pth")
    src = load_source(f"hf:{saved}", str(tmp_path / "three.pth"))
    assert src.meta["num_classes"] == 3 and src.labels is None  # the config names 5
    sd = read_state_dict(tmp_path / "three.pth")
    assert all(torch.equal(v, sd[k]) for k, v in src.model.state_dict().items())
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="holds weights of another architecture than hf:"):
        load_source(f"hf:{saved}", str(tmp_path / "other.pth"))


def test_commands_look_inside_it(saved, tmp_path) -> None:
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = torch.Generator().manual_seed(2)
    for i in range(3):
        pixels = torch.randint(0, 256, (80, 96, 3), generator=rng, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(photos / f"p{i}.png")
    model = ["--model", f"hf:{saved}", "--crop", "64", "--resize", "72"]
    res = CliRunner().invoke(main, ["project", str(photos / "p0.png"), *model, "--top", "1",
                                    "--out", str(tmp_path / "look")])
    assert res.exit_code == 0, res.output
    assert "resnet.encoder.stages.3 map" in res.output
    res = CliRunner().invoke(main, ["visualize", "topk", *model, "--data", f"images:{photos}",
                                    "--layer", "resnet.encoder.stages.2", "--maps-per-layer",
                                    "2", "--out", str(tmp_path / "look")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["analyze", "occlusion", *model, "--data", f"images:{photos}",
                                    "--images", "1", "--size", "32", "--stride", "32",
                                    "--out", str(tmp_path / "look")])
    assert res.exit_code == 0, res.output
    assert "layer: resnet.encoder.stages.3" in res.output
    page = (tmp_path / "look" / "index.html").read_text()
    assert 'id="topk_gallery"' in page and 'id="occlusion"' in page
    res = CliRunner().invoke(main, ["models", f"hf:{saved}"])
    assert res.exit_code == 0 and "classes: 5 (tench, goldfish, shark, ...)" in res.output
    assert res.output.count("crop 224, mean") == 1, res.output  # the values said once
    assert "without --layer, the analyses show: resnet.embedder, resnet.encoder.stages.0" \
        in res.output
    placeholder = tmp_path / "placeholder"  # transformers' LABEL_0 ...: no names
    cfg = _small_resnet().config
    cfg.id2label, cfg.label2id = {i: f"LABEL_{i}" for i in range(5)}, None
    transformers.ResNetForImageClassification(cfg).save_pretrained(placeholder)
    res = CliRunner().invoke(main, ["models", f"hf:{placeholder}"])
    assert res.exit_code == 0 and "classes: 5 (not named: --labels FILE" in res.output


def _error(args: list[str], env: dict[str, str] | None = None) -> str:
    res = CliRunner(env=env).invoke(main, args)
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    assert lines[-1].startswith("Error: "), res.output
    return lines[-1]


def test_what_is_not_an_image_classifier_is_one_line(tmp_path) -> None:
    backbone = tmp_path / "backbone"
    transformers.ResNetModel(_small_resnet().config).save_pretrained(backbone)
    assert "holds a ResNetModel, without a classification head" in _error(
        ["models", f"hf:{backbone}"])
    bert = tmp_path / "bert"
    transformers.BertConfig(num_hidden_layers=1).save_pretrained(bert)
    assert "is a 'bert' model, which transformers has no image classifier for" in _error(
        ["models", f"hf:{bert}"])
    # a classifier whose output has no logits (transformers 5.25's PP-LCNet): named, not a
    # traceback from the first analysis
    lcnet = tmp_path / "lcnet"
    cfg = transformers.AutoConfig.for_model("pp_lcnet", scale=0.25, num_labels=3)
    transformers.AutoModelForImageClassification.from_config(cfg).save_pretrained(lcnet)
    said = _error(["models", f"hf:{lcnet}"])
    assert "returns a BaseModelOutputWithNoAttention, not class scores" in said
    assert "hf:./nope: no such folder" in _error(["models", "hf:./nope"])
    # a name without ORG/ is a folder (a hub image classifier has an ORG): no network tried
    assert "hf:nope: no such folder" in _error(["models", "hf:nope"])
    assert "hf: names a model" in _error(["models", "hf:"])
    # offline, a hub id not in the cache: says how to fill it
    said = _error(["models", "hf:nobody/no-model"],
                  env={"ZFNET_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    assert "cannot read its config" in said and "hf download nobody/no-model" in said
    said = _error(["train", "--model", "hf:nobody/no-model", "--data", "synthetic", "--out",
                   str(tmp_path / "run")],
                  env={"ZFNET_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    assert "hf:nobody/no-model: cannot read its config" in said
    assert "is a 'bert' model" in _error(["train", "--model", f"hf:{bert}", "--data",
                                          "synthetic", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_no_network_says_how_to_fill_the_cache(monkeypatch) -> None:
    """Online mode without a network (transformers' "couldn't connect"): the error says how to
    get the model and read it offline, and the hub's retry lines are not shown."""
    import logging

    def unreachable(*args, **kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 8s [Retry 5/5].")
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and "
                      "couldn't find them in the cached files.")

    import zfnet.hf

    monkeypatch.delenv("ZFNET_OFFLINE", raising=False)
    monkeypatch.setattr(zfnet.hf, "hub_unreachable", lambda: None)  # the host answers
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", unreachable)
    res = CliRunner().invoke(main, ["models", "hf:nobody/no-model"])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "`hf download nobody/no-model` where there is one fills the Hugging Face cache; " \
        "ZFNET_OFFLINE=1 then reads it" in res.output


def test_a_hub_that_cannot_be_reached_is_told_at_once(monkeypatch) -> None:
    """Without a network (the hub's name unknown here) the hub's client retried for 28 s (a
    timm model's weights: 50 s) before failing: the host is tried first, in at most 3 s, and the
    cache alone read where it does not answer, which the error says."""
    import socket

    import timm  # noqa: F401  # imported before the clock starts

    import zfnet.hf
    from zfnet.sources import load_source

    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.delenv("ZFNET_OFFLINE", raising=False)
    for proxy in zfnet.hf.PROXIES:
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(socket, "create_connection", no_such_host)
    monkeypatch.setattr(zfnet.hf, "hub_unreachable",
                        zfnet.hf.hub_unreachable.__wrapped__)  # not the answer kept before
    asked = []
    config = transformers.AutoConfig.from_pretrained

    def cache_only(*args, **kwargs):
        asked.append(kwargs.get("local_files_only"))
        return config(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", cache_only)
    res = CliRunner().invoke(main, ["models", "hf:nobody/no-model"])
    assert res.exit_code == 1 and asked == [True], (asked, res.output)
    assert "; huggingface.co cannot be reached (Name or service not known), so only the " \
        "Hugging Face cache is read, which `hf download nobody/no-model` fills where there " \
        "is a network; give a folder" in res.output
    with pytest.raises(FileNotFoundError, match=r"timm:resnet18: its pretrained weights "
                       r"\(timm/resnet18.a1_in1k\) could not be read \(not in the Hugging Face "
                       r"cache, .*, and huggingface.co cannot be reached \(Name or service not "
                       r"known\)\); `hf download timm/resnet18.a1_in1k`"):
        load_source("timm:resnet18", "pretrained")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # behind a proxy: not probed
    assert zfnet.hf.hub_unreachable() is None


def test_preprocessing_of_each_kind_of_image_processor(tmp_path) -> None:
    """ViT's and EfficientNet's processors resize to a fixed height and width (said: here the
    shorter side and the centre); BiT's and MobileNet's resize the shorter side, then crop."""
    from zfnet.hf import hf_preprocessing

    cases = [
        (transformers.ViTImageProcessor(size={"height": 224, "width": 224}), (224, 224),
         "not keeping its shape"),
        (transformers.BitImageProcessor(size={"shortest_edge": 256},
                                        crop_size={"height": 224, "width": 224}), (256, 224),
         None),
        (transformers.ConvNextImageProcessor(size={"shortest_edge": 384}), (384, 384),
         "resizes each image to 384x384"),
        (transformers.BitImageProcessor(size={"shortest_edge": 256}, do_center_crop=False),
         (256, 256), "keeps the whole image"),
    ]
    for k, (proc, (resize, crop), said) in enumerate(cases):
        folder = tmp_path / str(k)
        proc.save_pretrained(folder)
        prep, notes = hf_preprocessing(str(folder), True, 3, "m")
        assert (prep.resize, prep.crop) == (resize, crop), proc
        assert (said in notes[0]) if said else ("here" not in notes[0]), notes
    prep, notes = hf_preprocessing(str(tmp_path / "none"), True, 3, "m")  # no processor saved
    assert (prep.resize, prep.crop) == (256, 224) and "has no image processor" in notes[0]


def test_a_model_object_from_python_is_seen_through_a_view(saved) -> None:
    """from_module(a transformers classifier): its logits and class names, the processor's
    preprocessing; your object is left as it was (called with pixel_values=, an output
    object back)."""
    from zfnet.sources import from_module

    model = transformers.ResNetForImageClassification.from_pretrained(saved).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(saved)
    src = from_module(model, processor=processor)
    assert src.labels == LABELS and (src.preprocessing.resize, src.preprocessing.crop) == (256, 224)
    assert "image processor" in src.meta["notes"][0]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, theirs = src.model(x), model(pixel_values=x)
    assert type(model) is transformers.ResNetForImageClassification and src.model is not model
    torch.testing.assert_close(ours, theirs.logits)
    assert src.model.resnet is model.resnet  # shared, not copied
    plain = from_module(model)  # no processor: ImageNet's, said
    assert "ImageNet's mean and std" in plain.meta["notes"][0]


def test_a_hub_id_is_read_from_the_hugging_face_cache(saved, tmp_path) -> None:
    """hf:ORG/NAME as the hub leaves it in the cache (refs/main -> snapshots/REV/), offline."""
    import os
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "hf-home" / "hub" / "models--acme--tiny-resnet"
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(saved, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (96, 80), (200, 120, 40)).save(photo)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "ZFNET_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    p = subprocess.run([sys.executable, "-m", "zfnet.cli", "project", str(photo), "--model",
                        "hf:acme/tiny-resnet", "--layer", "resnet.encoder.stages.1", "--top",
                        "1", "--out", str(tmp_path / "look")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "hf:acme/tiny-resnet's image processor (resize 256, crop 224" in p.stderr
    assert "resnet.encoder.stages.1 map" in p.stdout


def test_an_architecture_trains_from_scratch_from_its_config(saved, tmp_path,
                                                              monkeypatch) -> None:
    """`zfnet train --model hf:DIR`: the config's architecture for the data's classes, its
    weights not read; the run keeps the folder's absolute path, and eval, --resume and the
    analyses rebuild the model from it; a folder gone is named. The builder fits a config to
    the data's channels and, for a transformer, its size."""
    from zfnet.hf import hf_builder
    from zfnet.train import load_model

    monkeypatch.chdir(saved.parent)
    run = tmp_path / "run"
    common = ["--data", "synthetic?n_train=32&n_val=16&size=32", "--out", str(run),
              "--batch-size", "16", "--quiet", "--no-tensorboard"]
    res = CliRunner().invoke(main, ["train", "--model", f"hf:{saved.name}", "--epochs", "1",
                                    *common])
    assert res.exit_code == 0, res.output
    model, meta = load_model(run)
    assert meta["model"] == f"hf:{saved}" and meta["num_classes"] == 10
    assert type(model).__name__ == "ResNetForImageClassification"
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    pretrained = load_source(f"hf:{saved}").model.state_dict()
    first = "resnet.embedder.embedder.convolution.weight"
    assert not torch.equal(model.state_dict()[first], pretrained[first])  # not its weights
    res = CliRunner().invoke(main, ["train", "--resume", "--epochs", "2", *common])
    assert res.exit_code == 0, res.output
    assert load_model(run)[1]["epoch"] == 2
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run)])
    assert res.exit_code == 0 and "top-1" in res.output, res.output
    moved = saved.parent / "elsewhere"
    saved.rename(moved)
    try:
        said = _error(["eval", "--checkpoint", str(run)])
        assert f"the run's model hf:{saved} cannot be built again" in said
        assert "no such folder" in said or "cannot read its config" in said, said
    finally:
        moved.rename(saved)
    grey = hf_builder(transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        image_size=224, patch_size=8), in_channels=1, input_size=32)(num_classes=4)
    assert grey(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    assert (grey.config.num_channels, grey.config.image_size) == (1, 32)


def test_eval_scores_each_class_folder_by_the_models_own_class_names(saved, tmp_path) -> None:
    """Folders named as the model's `id2label` names are scored by name without --labels:
    sorted, owl and tench are outputs 4 and 0, not 0 and 1; folders it does not name are
    scored by position, as before."""
    import json

    from PIL import Image

    for k, name in enumerate(("owl", "tench", "owl", "tench")):
        folder = tmp_path / "data" / "val" / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (80, 72), (40 * k, 200 - 30 * k, 90)).save(folder / f"{k}.png")
    model = ["eval", "--model", f"hf:{saved}", "--resize", "72", "--crop", "64", "--data",
             f"imagefolder:{tmp_path / 'data'}", "--device", "cpu"]
    (tmp_path / "labels.txt").write_text("\n".join(LABELS))
    said = {}
    for how, extra in (("own", []), ("labels", ["--labels", str(tmp_path / "labels.txt")])):
        res = CliRunner().invoke(main, [*model, *extra, "--json", str(tmp_path / f"{how}.json")])
        assert res.exit_code == 0, res.output
        said[how] = res.output
    own, given = (json.loads((tmp_path / f"{h}.json").read_text()) for h in ("own", "labels"))
    assert own["matched"] == [2, 5] and own["confusion_matrix"] == given["confusion_matrix"]
    assert "(each class scored by the output of its name among the model's class names; " \
        "among 2 of the model's 5 classes)" in said["own"]
    assert "(each class scored by the output --labels names it; among 2" in said["labels"]
    (tmp_path / "data" / "val" / "owl").rename(tmp_path / "data" / "val" / "cat")
    assert "has 5 outputs but dataset" in _error(model)  # cat: not a name of the model's


def test_a_model_naming_the_classes_in_another_order_follows_each_by_its_name(saved,
                                                                             tmp_path) -> None:
    """As many outputs as class folders, named in another order (id2label: tench, goldfish,
    ...; folders sorted: eagle, goldfish, ...): label k is not output k, so each image's class
    is followed at the output of its name, as `zfnet eval` scores it (it followed the
    prediction, and said the classes were not the dataset's); folders named otherwise than
    the outputs: the class the model predicts, and why."""
    from PIL import Image

    from zfnet.analyses.classes import class_outputs, labels_are_classes, match_classes

    for k, name in enumerate(LABELS):
        for root, folder_name in (("data", name), ("other", f"kind{k}")):
            folder = tmp_path / root / "val" / folder_name
            folder.mkdir(parents=True)
            Image.new("RGB", (80, 72), (50 * k, 200 - 30 * k, 90)).save(folder / f"{k}.png")
    res = CliRunner().invoke(main, [
        "analyze", "occlusion", "--model", f"hf:{saved}", "--resize", "72", "--crop", "64",
        "--data", f"imagefolder:{tmp_path / 'data'}", "--images", "1", "--device", "cpu",
        "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert (f"hf:{saved} names each of the 5 classes of imagefolder:{tmp_path / 'data'} among "
            "its 5 outputs: the analyses follow each image's class at the output of its name"
            ) in res.output
    assert "p(class) of: the true class" in res.output
    section = json.loads((tmp_path / "out" / "sections" / "occlusion.json").read_text())
    assert section["tables"][0]["rows"][0][1] == "eagle"  # the true class, named
    res = CliRunner().invoke(main, [  # a command that follows no class does not say it
        "visualize", "topk", "--model", f"hf:{saved}", "--resize", "72", "--crop", "64",
        "--data", f"imagefolder:{tmp_path / 'data'}", "--maps-per-layer", "1", "--k", "1",
        "--device", "cpu", "--quiet", "--out", str(tmp_path / "topk")])
    assert res.exit_code == 0 and "names each of" not in res.output, res.output
    res = CliRunner().invoke(main, [
        "analyze", "occlusion", "--model", f"hf:{saved}", "--resize", "72", "--crop", "64",
        "--data", f"imagefolder:{tmp_path / 'other'}", "--images", "1", "--device", "cpu",
        "--out", str(tmp_path / "out2")])
    assert res.exit_code == 0, res.output
    assert (f"hf:{saved} names its 5 outputs otherwise than imagefolder:{tmp_path / 'other'} "
            "names its classes (output 0 'tench', class 0 'kind0'): the analyses follow the "
            "class it predicts") in res.output
    assert "p(class) of: the predicted class" in res.output
    model = torch.nn.Linear(2, 2)
    assert match_classes(model, ["n01 tench", "n02 goldfish"], ["n01", "n02"]) == ""
    assert match_classes(model, ["a", "b"], ["a", "b", "c"]) == ""  # c unnamed, counts differ
    assert match_classes(model, ["b", "c"], ["a", "b"]) == "other"
    assert match_classes(model, ["b", "a"], ["a", "b"]) == "by name"

    class Bundle:
        num_classes, class_names = 2, ["a", "b"]
    assert class_outputs(model, Bundle()) == [1, 0] and not labels_are_classes(model, Bundle())
    assert match_classes(model, ["x", "cat", "y", "dog"], ["cat", "dog"]) == "by name"
    Bundle.class_names = ["cat", "dog"]
    assert class_outputs(model, Bundle()) == [1, 3]  # some of the model's classes


def test_layers_of_a_convnext_are_its_modules_that_run() -> None:
    """transformers' ConvNeXt: its first stage's empty downsampling ModuleList is no layer, and
    its GELUActivation is an activation ("act"), as torch's and timm's are."""
    from zfnet.models import layer_info

    cfg = transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                      num_labels=3)
    infos = layer_info(transformers.ConvNextForImageClassification(cfg).eval(), 64)
    assert "convnext.encoder.stages.0.downsampling_layer" not in infos
    assert "convnext.encoder.stages.1.downsampling_layer.1" in infos  # a conv that runs
    assert infos["convnext.encoder.stages.0.layers.0.act"].kind == "act"
