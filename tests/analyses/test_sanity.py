"""Cascading randomisation (Adebayo et al. 2018): the maps shown per step and the section."""

import numpy as np
import pytest
import torch
from PIL import Image

import zfnet
from zfnet.analyses.sanity import (
    RandomizationResult,
    model_randomization,
    randomization_section,
    randomization_words,
)
from zfnet.deconvnet import project
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import LABEL_HEIGHT, projection_to_uint8
from zfnet.report import read_sections

pytestmark = pytest.mark.usefixtures("one_thread")


def test_maps_per_step_are_kept_and_drawn(tmp_path) -> None:
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", input_size=32).eval()
    x = torch.randn(2, 3, 32, 32) * 50
    channels = torch.tensor([3, 5])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reports: list[tuple[int, int]] = []  # a bar: --steps module on a ResNet takes minutes
    res = model_randomization(model, x, "conv3", channels, rules=("deconvnet", "gradient"),
                              progress=lambda done, total: reports.append((done, total)))
    assert res.steps == ["features.conv3", "features.conv2", "features.conv1"]
    assert reports == [(i, 8) for i in range(1, 9)]  # 2 rules, trained and after each step
    for k, v in model.state_dict().items():  # randomised a copy, not the model
        assert torch.equal(v, before[k]), k
    for rule in ("deconvnet", "gradient"):
        ex = res.examples[rule]
        assert ex.shape == (4, 3, 32, 32)
        torch.testing.assert_close(ex[0], project(model, x, "conv3", channels, rule=rule)[0])
        assert not torch.allclose(ex[-1], ex[0])  # every layer below re-initialised
    drawn = {}

    def plot_curves(x, panels, path, xlabel, xticks=None, joined=True):  # what it is told
        drawn.update(x=list(x), xlabel=xlabel, xticks=xticks)
        return real_plot(x, panels, path, xlabel, xticks, joined)

    from zfnet.report import plots
    real_plot = plots.plot_curves
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "plot_curves", plot_curves)
        randomization_section(tmp_path, res)
    # each step named under its point, not a list squeezed into the axis label
    assert drawn == {"x": [1, 2, 3], "xlabel": "re-initialised from the top down to",
                     "xticks": ["conv3", "conv2", "conv1"]}
    (s,) = read_sections(tmp_path)
    assert [f.path for f in s.figures] == ["figures/randomization.png",
                                           "figures/randomization_maps.png"]
    assert DISPLAY_CAPTION in s.caption
    canvas = np.asarray(Image.open(tmp_path / "figures" / "randomization_maps.png"))
    zoom, side, pad = 2, 64, 2  # 32 px enlarged to 64
    # the grid under the steps' names (trained, conv3, ...) and right of the rules' names
    top = canvas.shape[0] - (2 * (side + pad) + pad)
    left = canvas.shape[1] - (4 * (side + pad) + pad)
    assert top >= 10 and left >= 40 and canvas.shape[2] == 3
    y, x0 = top + pad + (side + pad), left + pad + 3 * (side + pad)  # gradient row, last step
    tile = torch.from_numpy(canvas[y: y + side: zoom, x0: x0 + side: zoom].copy())
    assert torch.equal(tile.permute(2, 0, 1), projection_to_uint8(res.examples["gradient"][3]))


def test_any_model_every_module_with_parameters_from_the_top() -> None:
    """resnet18 seeded at layer1, `steps="module"`: its convolutions and batch norms, in
    reverse forward order, on a copy; batch norms re-initialised by their own reset. By
    blocks (the default): layer1, bn1, conv1, and the last block's maps equal the modules'."""
    import torchvision
    from torch import nn

    from zfnet.analyses.sanity import reinitialise, trainable_layers

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    block = ["conv1", "bn1", "conv2", "bn2"]
    want = ["conv1", "bn1"] + [f"layer1.{b}.{m}" for b in (0, 1) for m in block]
    assert trainable_layers(model, "layer1", 32) == want[::-1]
    assert trainable_layers(model, None, 32)[0] == "fc"
    x = torch.randn(2, 3, 32, 32) * 50
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = model_randomization(model, x, "layer1", torch.tensor([3, 5]), rules=("gradient",),
                              steps="module")
    assert res.steps == want[::-1]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    ex = res.examples["gradient"]
    assert ex.shape == (11, 3, 32, 32)
    torch.testing.assert_close(ex[0], project(model, x, "layer1", torch.tensor([3, 5]),
                                              rule="gradient")[0])
    assert not torch.allclose(ex[-1], ex[0])
    by_block = model_randomization(model, x, "layer1", torch.tensor([3, 5]),
                                   rules=("gradient",))
    assert by_block.steps == ["layer1", "bn1", "conv1"]
    got = by_block.examples["gradient"]
    assert got.shape == (4, 3, 32, 32)
    # the same draws in the same order: every module re-initialised, the same maps
    torch.testing.assert_close(got[-1], ex[-1])
    torch.testing.assert_close(got[1], ex[8])  # layer1 whole = its 8 modules'
    with pytest.raises(ValueError, match="valid: block, module"):
        model_randomization(model, x, "layer1", torch.tensor([3, 5]), steps="layers")
    bn = nn.BatchNorm2d(4)
    bn.weight.data.fill_(3.0)
    bn.running_mean.fill_(2.0)
    reinitialise(bn, torch.Generator().manual_seed(0))
    assert (bn.weight == 1).all() and (bn.bias == 0).all() and (bn.running_mean == 0).all()
    a, b = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3)
    reinitialise(a, torch.Generator().manual_seed(1))
    reinitialise(b, torch.Generator().manual_seed(1))
    assert torch.equal(a.weight, b.weight) and (a.bias == 0).all()


def test_blocks_of_networks() -> None:
    """The main parts: a ResNet's stages, Inception v3's named blocks (Adebayo et al.'s
    steps), a DenseNet's blocks and transitions, every layer of zfnet's models; a seed inside
    a block takes the block's modules that run up to it."""
    import torchvision

    from zfnet.analyses.sanity import blocks, randomization_steps

    def tv(name: str, **kw):
        with torch.device("meta"):
            return getattr(torchvision.models, name)(weights=None, **kw)

    assert blocks(tv("resnet18")) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4",
                                      "fc"]
    inception = blocks(tv("inception_v3", init_weights=False))
    assert inception[0] == "Conv2d_1a_3x3" and inception[-2:] == ["Mixed_7c", "fc"]
    assert "AuxLogits" in inception
    dense = blocks(tv("densenet121"))
    assert dense[:3] == ["features.conv0", "features.norm0", "features.denseblock1"]
    assert dense[-2:] == ["features.norm5", "classifier"] and len(dense) == 11
    model = zfnet.create_model("zfnet_small", input_size=32)
    assert blocks(model) == [f"features.conv{i}" for i in range(1, 6)] + [
        f"classifier.fc{i}" for i in (6, 7, 8)]
    resnet = torchvision.models.resnet18(weights=None)
    steps = randomization_steps(resnet, "layer2.0", 32)
    assert [n for n, _ in steps] == ["layer2", "layer1", "bn1", "conv1"]
    assert steps[0][1][-1] == "layer2.0.conv1" and not any(
        p.startswith("layer2.1") for p in steps[0][1])  # above the seed: left alone


def test_similarity_of_a_silent_map_is_unrelated_and_quiet() -> None:
    """A map of one value (a unit silenced by the randomisation) has no rank order: Spearman
    0 for it, without scipy's warning about constant input."""
    import warnings

    from zfnet.analyses.sanity import similarity

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 16, 16, generator=g)
    b = a.clone()
    b[1] = 0.0  # silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = similarity(a, b)
    assert s["spearman"] == pytest.approx(0.5)  # 1 for the equal map, 0 for the silent one
    assert similarity(a, a)["spearman"] == pytest.approx(1.0)


def test_similarity_does_not_depend_on_the_maps_scale() -> None:
    """Each map is scaled by its own peak however small: two unrelated maps of a random
    network, whose values are ~1e-13, score as they do at scale 1 (an SSIM of 1.000 before)."""
    from zfnet.analyses.sanity import similarity

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 2, 3, 16, 16, generator=g)
    at_one = similarity(a, b)
    assert at_one["ssim"] < 0.5
    for scale in (1e-13, 1e-30):
        tiny = similarity(a * scale, b * scale)
        assert tiny == pytest.approx(at_one, abs=1e-5), scale


def test_independent_randomization_one_layer_at_a_time(tmp_path, monkeypatch) -> None:
    """Each step re-initialises one layer alone (the same weights as the cascading step that
    reaches it first), the others trained; the model is left as it was; each mode writes its
    own section and figures (the independent steps' points not joined: no trend between)."""
    from zfnet.report import plots

    joined: list[bool] = []
    real_plot = plots.plot_curves
    monkeypatch.setattr(plots, "plot_curves",
                        lambda *a, **k: joined.append(k.get("joined", True)) or real_plot(*a, **k))
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", input_size=32).eval()
    x = torch.randn(2, 3, 32, 32) * 50
    channels = torch.tensor([3, 5])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one = model_randomization(model, x, "conv3", channels, rules=("gradient",),
                              mode="independent")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    cascade = model_randomization(model, x, "conv3", channels, rules=("gradient",))
    assert one.steps == cascade.steps and one.mode == "independent"
    a, b = one.examples["gradient"], cascade.examples["gradient"]
    torch.testing.assert_close(a[:2], b[:2])  # the trained model; conv3 alone in both
    assert not torch.allclose(a[2], b[2])  # conv2 alone vs conv3 and conv2
    assert not torch.allclose(a[3], b[3])  # conv1 alone vs every layer
    assert not torch.allclose(a[3], a[0])
    randomization_section(tmp_path, cascade)
    randomization_section(tmp_path, one)
    assert joined == [True, False]
    sections = {s.key: s for s in read_sections(tmp_path)}
    assert set(sections) == {"randomization", "randomization_independent"}
    s = sections["randomization_independent"]
    assert [f.path for f in s.figures] == ["figures/randomization_independent.png",
                                           "figures/randomization_independent_maps.png"]
    assert "alone are re-initialised in turn" in s.caption
    assert s.tables[0].columns[:2] == ["step", "re-initialised alone"]
    assert (tmp_path / "figures" / "randomization_maps.png").is_file()


def test_data_randomization_compares_each_models_own_class(tmp_path) -> None:
    from zfnet.analyses.sanity import (
        data_randomization,
        data_randomization_section,
        output_layer,
    )

    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", input_size=32, num_classes=5)
    other = zfnet.create_model("zfnet_small", input_size=32, num_classes=5)
    model.train()  # left in the mode it was in
    x = torch.randn(3, 3, 32, 32) * 50
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert output_layer(model, 32) == "classifier.fc8"
    same = data_randomization(model, model, x, rules=("deconvnet", "gradient"))
    assert same.classes[0] == same.classes[1]
    for rule in ("deconvnet", "gradient"):
        assert same.scores[rule]["spearman"] == pytest.approx(1.0)
        assert same.scores[rule]["ssim"] == pytest.approx(1.0)
    res = data_randomization(model, other, x)
    assert model.training and not any(m.training is False for m in model.modules())
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        classes = other.eval()(x).argmax(1)
    assert res.classes[1] == classes.tolist()
    # each model's map is its own predicted class's logit projected
    torch.testing.assert_close(res.examples["guided"][:, 1],
                               project(other, x, "fc8", classes, rule="guided"))
    assert res.examples["deconvnet"].shape == (3, 2, 3, 32, 32)
    for rule in ("deconvnet", "guided", "gradient"):
        assert res.scores[rule]["spearman"] < 0.999
        assert len(res.per_image[rule]) == 3
        assert np.mean(res.per_image[rule]) == pytest.approx(res.scores[rule]["spearman"])
    with pytest.raises(ValueError, match="unknown rule 'smooth'"):
        data_randomization(model, other, x, rules=("smooth",))
    res.accuracy = {"train": 0.9, "random_train": 0.95, "val": 0.8, "random_val": 0.2}
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    data_randomization_section(tmp_path, res, pixels, "runs/copy")
    (s,) = read_sections(tmp_path)
    assert s.key == "randomization_labels" and "runs/copy" in s.caption
    assert "95.0% of its training labels" in s.caption
    assert [row[0] for row in s.tables[0].rows] == ["deconvnet", "guided", "gradient"]
    canvas = np.asarray(Image.open(tmp_path / "figures" / "randomization_labels.png"))
    side, pad = 64, 2  # 32 px enlarged to 64; the image, then two maps per rule
    # under a row of column heads: "image", then each rule and "permuted"
    assert canvas.shape == (LABEL_HEIGHT + 3 * (side + pad) + pad, 7 * (side + pad) + pad, 3)
    assert (canvas[:LABEL_HEIGHT] < 200).any()
    assert "--reference trains one" in s.caption and len(s.tables[0].columns) == 4
    res.reference = data_randomization(model, model, x).scores  # the model against itself
    res.accuracy["reference_val"] = 0.85
    data_randomization_section(tmp_path, res, pixels, "runs/copy", "runs/again")
    (s,) = read_sections(tmp_path)
    assert "(runs/again; on the val split 85.0%)" in s.caption
    assert [row[3] for row in s.tables[0].rows] == ["1.000"] * 3


def test_the_outcome_in_words_names_the_steps_and_the_similarities() -> None:
    scores = {"deconvnet": {"spearman": [0.9, 0.5, 0.2], "ssim": [0.8, 0.4, 0.1]},
              "gradient": {"spearman": [0.3, 0.7, 0.6], "ssim": [0.2, 0.6, 0.5]}}
    steps = ["features.conv3", "features.conv2", "features.conv1"]
    res = RandomizationResult(steps, scores, mode="cascading", layer="features.conv3", images=4)
    assert randomization_words(res) == [
        "cascading randomisation from conv3 down to conv1 (3 steps); 4 images seeded at conv3; "
        "similarity to the trained model's maps after the first and the last step "
        "(1 = unchanged):",
        "deconvnet  rank correlation 0.900 -> 0.200  SSIM 0.800 -> 0.100",
        "gradient   rank correlation 0.300 -> 0.600  SSIM 0.200 -> 0.500"]
    res = RandomizationResult(steps, scores, mode="independent", layer="layer1.0", images=1)
    assert randomization_words(res)[0].startswith(
        "independent randomisation of 3 layers, each alone; 1 image seeded at layer1.0; ")
    assert randomization_words(res)[1:] == [  # the least and the most similar layer
        "deconvnet  rank correlation 0.200 (conv1) to 0.900 (conv3)  SSIM 0.100 to 0.800",
        "gradient   rank correlation 0.300 (conv3) to 0.700 (conv2)  SSIM 0.200 to 0.600"]
