"""Occlusion sensitivity (paper Fig. 7): agreement with Captum's `Occlusion`, incremental ==
full recomputation, chunking, map (c) from the deconvnet, the pointing game and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zfnet import create_model
from zfnet.activations import get_activations
from zfnet.analyses.occlusion import (
    _projection_display,
    occluder_grid,
    occlusion,
    occlusion_report,
    pixel_map,
    plot_occlusion,
    pointing_game,
)
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import projection_to_uint8
from zfnet.incremental import UnsupportedModelError
from zfnet.models import UnknownLayerError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("zfnet_small", input_size=48).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 48, 48) * 60


@pytest.mark.parametrize("size,stride", [(12, 6), (10, 4), (16, 16)])
def test_probability_map_agrees_with_captum(model, image, size, stride) -> None:
    """Captum's attribution at a pixel is the mean, over the windows covering it, of
    p(orig) - p(occluded); our map spread to pixels the same way must give the same numbers.
    (10, 4) has a clipped last window; (16, 16) compares window by window."""
    captum = pytest.importorskip("captum.attr")
    target = 3
    r = occlusion(model, image, target=target, size=size, stride=stride, project=False)
    occ = captum.Occlusion(lambda x: torch.softmax(model(x), dim=1))
    attr = occ.attribute(image[None], sliding_window_shapes=(3, size, size),
                         strides=(3, stride, stride), target=target, baselines=0.0,
                         perturbations_per_eval=16)[0]  # (C, H, W), the same in every channel
    ours = r.to_pixels(r.base_probability - r.probability)  # (H, W)
    assert torch.allclose(attr[0], ours, atol=1e-6, rtol=1e-4)
    if stride == size:  # no averaging: each window's own value
        for i, t in enumerate(r.tops):
            for j, left in enumerate(r.lefts):
                assert attr[0, t, left] == pytest.approx(
                    r.base_probability - float(r.probability[i, j]), abs=1e-6)


@pytest.mark.parametrize("name", ["zfnet_small", "alexnet_small"])
def test_incremental_equals_full(name, image) -> None:
    torch.manual_seed(0)
    net = create_model(name, input_size=48).eval()
    inc = occlusion(net, image, size=11, stride=5, method="incremental", project=False)
    full = occlusion(net, image, size=11, stride=5, method="full", project=False)
    assert (inc.method, full.method) == ("incremental", "full")
    assert inc.feature_map == full.feature_map and inc.target == full.target
    assert torch.allclose(inc.probability, full.probability, atol=1e-6, rtol=1e-4)
    assert torch.allclose(inc.activation, full.activation, rtol=1e-5)
    close = torch.isclose(inc.label_probability, full.label_probability, atol=1e-6)
    assert ((inc.label == full.label) | close).all()  # a tie could flip; none here
    assert (inc.label == full.label).float().mean() == 1.0


@pytest.mark.parametrize("method", ["incremental", "full"])
def test_batch_size_does_not_change_results(model, image, method) -> None:
    ref = occlusion(model, image, size=8, stride=4, batch_size=1000, method=method,
                    project=False)
    for batch_size in (1, 9):
        r = occlusion(model, image, size=8, stride=4, batch_size=batch_size, method=method,
                      project=False)
        assert torch.allclose(r.probability, ref.probability, atol=1e-6, rtol=1e-4)
        assert torch.allclose(r.activation, ref.activation, rtol=1e-5)


def test_strongest_map_and_its_projection(model, image) -> None:
    from zfnet.deconvnet import project

    r = occlusion(model, image, layer="conv5", size=24, stride=24)
    act = get_activations(model, image[None], ["conv5"])["conv5"][0].clamp(min=0)
    totals = act.flatten(1).sum(1)
    assert r.feature_map == int(totals.argmax())
    assert r.base_activation == pytest.approx(float(totals.max()), rel=1e-5)
    expected = project(model, image[None], "conv5", channels=r.feature_map)[0]
    assert r.projection is not None and torch.allclose(r.projection, expected)
    # an occluder over the whole image gives the activation of the fill image
    whole = occlusion(model, image, layer="conv5", size=48, stride=1, project=False)
    blank = get_activations(model, torch.zeros(1, 3, 48, 48), ["conv5"])["conv5"][0]
    assert float(whole.activation[0, 0]) == pytest.approx(
        float(blank[r.feature_map].clamp(min=0).sum()), rel=1e-5, abs=1e-4)


def test_torchvision_alexnet_module_path_layer() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.alexnet(num_classes=5).eval()
    x = torch.randn(3, 72, 72) * 60
    inc = occlusion(net, x, size=36, stride=36, project=False)
    assert inc.layer == "features.10" and inc.method == "incremental"  # the last conv
    full = occlusion(net, x, size=36, stride=36, method="full", project=False)
    assert torch.allclose(inc.probability, full.probability, atol=1e-6, rtol=1e-4)
    assert torch.allclose(inc.activation, full.activation, rtol=1e-5)


def test_non_chain_model_falls_back_to_full(model, image) -> None:
    wrapped = nn.Sequential(model)  # no features/classifier children
    r = occlusion(wrapped, image, layer="0.features.conv5", size=24, stride=12, project=False)
    assert r.method == "full"
    ref = occlusion(model, image, size=24, stride=12, project=False)
    assert torch.allclose(r.probability, ref.probability, atol=1e-6, rtol=1e-4)
    with pytest.raises(UnsupportedModelError, match="children"):
        occlusion(wrapped, image, layer="0.features.conv5", size=24, method="incremental",
                  project=False)


def test_grid_and_pixel_map() -> None:
    # Captum's grid: 0, 4, 8 and a last window at 12 clipped to 12..15 of 15 rows
    assert occluder_grid(15, 10, 6, 4) == ([0, 4, 8, 12], [0, 4])
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    px = pixel_map(values, [0, 1], [0, 1], 2, (3, 3))
    assert px[0, 0] == 1 and px[0, 2] == 2 and px[2, 0] == 3 and px[2, 2] == 4
    assert px[1, 1] == pytest.approx(2.5) and px[0, 1] == pytest.approx(1.5)
    gaps = pixel_map(values, [0, 3], [0, 3], 2, (5, 5))  # stride 3 > size 2
    assert torch.isnan(gaps[2, 2]) and gaps[4, 4] == 4


def test_most_sensitive_and_box(model, image) -> None:
    r = occlusion(model, image, size=10, stride=4, project=False)
    i, j = r.most_sensitive()
    assert r.probability[i, j] == r.probability.min()
    assert r.box(len(r.tops) - 1, 0) == (r.tops[-1], 0, 48, 10)


def test_argument_errors_name_the_fault(model, image) -> None:
    with pytest.raises(ValueError, match=r"size=49 .*48x48.*1\.\.48"):
        occlusion(model, image, size=49)
    with pytest.raises(ValueError, match="stride=0"):
        occlusion(model, image, size=8, stride=0)
    with pytest.raises(UnknownLayerError, match="conv9.*valid: conv1"):
        occlusion(model, image, layer="conv9")
    with pytest.raises(ValueError, match="method='fast'.*incremental"):
        occlusion(model, image, method="fast")
    with pytest.raises(ValueError, match=r"target=10 .*0\.\.9"):
        occlusion(model, image, target=10, size=24, project=False)
    with pytest.raises(ValueError, match="fill of shape"):
        occlusion(model, image, fill=torch.zeros(2), size=24, project=False)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        occlusion(model, image[None])


def test_model_left_as_it_was(model, image) -> None:
    model.train()
    model.features.norm1.eval()  # a mixed model comes back mixed
    before = [m.training for m in model.modules()]
    try:
        occlusion(model, image, size=24, stride=24)
        assert [m.training for m in model.modules()] == before
        assert not any(m._forward_hooks for m in model.modules())
    finally:
        model.eval()


@pytest.fixture(scope="module")
def synthetic():
    from zfnet.data import load_dataset

    return load_dataset("synthetic?n_train=10&n_val=4")


class MaskOracle(nn.Module):
    """Class `label`'s logit falls with the number of object pixels hidden by a zero fill:
    the most sensitive occluder is the one covering most of the object."""

    def __init__(self, mask: torch.Tensor, label: int, num_classes: int) -> None:
        super().__init__()
        self.mask, self.label, self.num_classes = mask, label, num_classes
        self.conv = nn.Conv2d(3, 1, 1)  # a layer to watch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv(x)
        hidden = ((x == 0).all(1) & self.mask).flatten(1).sum(1).float()  # (N,)
        logits = torch.zeros(len(x), self.num_classes)
        logits[:, self.label] = -0.2 * hidden
        return logits


def test_pointing_game_reads_the_mask_in_image_coordinates(synthetic) -> None:
    sample = synthetic.val.sample(0)
    oracle = MaskOracle(torch.from_numpy(sample.mask), sample.label, synthetic.num_classes)
    pg = pointing_game(oracle, synthetic, 1, size=8, stride=4)
    assert pg["n_images"] == 1 and pg["hits"] == 1 and pg["hit_rate"] == 1.0
    assert 0 < pg["chance"] < 1
    cy, cx = pg["per_image"][0]["point"]
    assert sample.mask[cy, cx]


def test_occlusion_report_writes_figure_and_section(synthetic, tmp_path) -> None:
    torch.manual_seed(0)
    net = create_model("zfnet_small", num_classes=synthetic.num_classes).eval()
    told: list[tuple[int, int]] = []  # `zfnet analyze occlusion`'s bar: the figure's images
    # and then the pointing game's, in one total (it was left out: the bar sat at 100%)
    metrics = occlusion_report(net, synthetic, tmp_path, n_images=2, n_pointing=2, size=16,
                               stride=16, progress=lambda *a: told.append(a))
    assert 0 <= metrics["pointing_hit_rate"] <= 1 and metrics["pointing_images"] == 2
    positions = len(occluder_grid(64, 64, 16, 16)[0]) * len(occluder_grid(64, 64, 16, 16)[1])
    assert told[-1] == (4 * positions, 4 * positions) and len(told) >= 4
    assert {t for _, t in told} == {4 * positions}
    assert [d for d, _ in told] == sorted(d for d, _ in told)  # on, across the images
    section = json.loads((tmp_path / "sections" / "occlusion.json").read_text())
    assert "Fig. 7" in section["caption"] and "Pointing game" in section["caption"]
    assert DISPLAY_CAPTION in section["caption"]
    png = tmp_path / section["figures"][0]["path"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(section["tables"][0]["rows"]) == 2


def test_a_flat_layer_is_told_by_its_units(synthetic, tmp_path) -> None:
    """On a fully connected layer (b) is one unit's value, not a map's sum: the result, the
    caption, the table and the errors say "unit"."""
    torch.manual_seed(0)
    net = create_model("zfnet_small", num_classes=synthetic.num_classes).eval()
    x = synthetic.val.with_mode("centre")[0][0]
    r = occlusion(net, x, layer="relu7", size=16, stride=16)
    assert r.flat and r.what == "unit"
    fc = get_activations(net, x[None], ["relu7"])["relu7"][0]
    assert r.feature_map == int(fc.argmax()) and r.base_activation == pytest.approx(
        float(fc.max()))
    assert not occlusion(net, x, layer="relu5", size=16, stride=16).flat
    with pytest.raises(ValueError, match="feature_map=9999 is not a unit of relu7"):
        occlusion(net, x, layer="relu7", feature_map=9999, size=16, stride=16)
    occlusion_report(net, synthetic, tmp_path, n_images=1, n_pointing=0, size=16, stride=16,
                     layer="relu7")
    section = json.loads((tmp_path / "sections" / "occlusion.json").read_text())
    assert "(b) Activation of the relu7 unit that is strongest" in section["caption"]
    assert "feature map" not in section["caption"] and "rectified map" not in section["caption"]
    assert section["tables"][0]["columns"][-1] == "strongest unit"
    assert section["tables"][0]["rows"][0][-1] == f"relu7 unit {r.feature_map}"
    # the class scores' units: named by their class, where the classes have names
    occlusion_report(net, synthetic, tmp_path, n_images=1, n_pointing=0, size=16, stride=16,
                     layer="fc8")
    section = json.loads((tmp_path / "sections" / "occlusion.json").read_text())
    unit = occlusion(net, x, layer="fc8", size=16, stride=16).feature_map
    assert section["tables"][0]["rows"][0][-1] == (
        f"fc8 unit {unit} ({synthetic.class_names[unit]})")


def test_projection_panel_uses_the_display_rule() -> None:
    p = torch.randn(3, 12, 12)
    p[:, :4] = 0
    p[0, 6, 6] = 1e3
    shown = _projection_display(p)
    assert shown.dtype == np.uint8 and shown.shape == (12, 12, 3)
    assert np.array_equal(shown, projection_to_uint8(p).permute(1, 2, 0).numpy())
    assert _projection_display(p[:1]).shape == (12, 12)  # one channel: a grey image


def test_approximate_mode_needs_incremental(model, image) -> None:
    approx = occlusion(model, image, size=12, stride=6, tau=0.5, project=False)
    exact = occlusion(model, image, size=12, stride=6, project=False)
    assert approx.method == "incremental" and approx.meta["tau"] == 0.5
    assert not torch.equal(approx.probability, exact.probability)
    with pytest.raises(ValueError, match="tau=0.5"):
        occlusion(model, image, size=12, tau=0.5, method="full", project=False)


# --- any CNN ---------------------------------------------------------------------------------


def _tv(name: str, **kw) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, **kw).eval()


@pytest.mark.parametrize("name,layer", [("resnet18", "layer4"), ("mobilenet_v2", "features.18")])
def test_any_cnn_runs_in_full_at_its_last_stage(name, layer) -> None:
    """Not a chain: every occluded image through the whole model, batched; maps (b) and (d)
    are what the model gives on that occluded image, (c) the engine's projection."""
    from zfnet.deconvnet import project

    net = _tv(name, num_classes=7)
    x = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(2)) * 60
    r = occlusion(net, x, size=24, stride=20, batch_size=3)
    assert (r.layer, r.method, r.meta["target"]) == (layer, "full", "predicted")
    assert r.probability.shape == (len(r.tops), len(r.lefts))
    for i, j in ((0, 0), (1, 2)):
        t, left, b, rr = r.box(i, j)
        occluded = x.clone()
        occluded[:, t:b, left:rr] = 0
        act = get_activations(net, occluded[None], [layer])[layer][0, r.feature_map]
        assert float(r.activation[i, j]) == pytest.approx(float(act.clamp(min=0).sum()),
                                                          rel=1e-4, abs=1e-4)
        p = net(occluded[None]).detach().softmax(1)[0]
        assert float(r.probability[i, j]) == pytest.approx(float(p[r.target]), abs=1e-5)
        assert int(r.label[i, j]) == int(p.argmax())
    want = project(net, x[None], layer, channels=r.feature_map)[0]
    assert r.meta["projection_rule"] == "deconvnet" and torch.allclose(r.projection, want)
    again = occlusion(net, x, size=24, stride=20, batch_size=100, project=False)
    assert torch.allclose(again.probability, r.probability, atol=1e-6, rtol=1e-4)
    assert not any(m._forward_hooks for m in net.modules())
    with pytest.raises(UnsupportedModelError):
        occlusion(net, x, size=24, method="incremental", project=False)


def test_projection_falls_back_to_the_gradient_where_the_deconvnet_is_undefined() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    r = occlusion(net, torch.randn(3, 16, 16), size=8, stride=8)
    assert r.layer == "2" and r.meta["projection_rule"] == "gradient"
    assert r.projection is not None and r.projection.abs().sum() > 0


@pytest.fixture(scope="module")
def synthetic64():
    from zfnet.data import load_dataset

    return load_dataset("synthetic?n_train=10&n_val=4&size=64")


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_report_on_resnet18_follows_the_models_own_class(synthetic64, tmp_path,
                                                        num_classes) -> None:
    """A model of the dataset's 10 classes follows the label; one of 1000 (ImageNet's) follows
    its own prediction, never its output at the dataset's label."""
    from zfnet.analyses.classes import labels_are_classes

    net = _tv("resnet18", num_classes=num_classes)
    own = num_classes == synthetic64.num_classes
    assert labels_are_classes(net, synthetic64) is own
    metrics = occlusion_report(net, synthetic64, tmp_path, n_images=2, n_pointing=2, size=16,
                               stride=16)
    assert metrics["layer"] == "layer4" and metrics["method"] == "full"
    assert metrics["class_followed"] == ("label" if own else "predicted")
    assert 0 <= metrics["pointing_hit_rate"] <= 1
    section = json.loads((tmp_path / "sections" / "occlusion.json").read_text())
    assert ("not the dataset's" in section["caption"]) is not own
    target = "true" if own else "predicted"  # (a) and (d) name the class they follow
    assert f"lowers the probability of the {target} class most" in section["caption"]
    assert f"(d) Probability of the {target} class" in section["caption"]
    assert section["tables"][0]["columns"][3] == ("p(true)" if own else "p(predicted)")
    val = synthetic64.val.with_mode("centre")
    x, y = val[0]
    r = occlusion(net, x, target=None, size=16, stride=16, project=False)
    followed = section["tables"][0]["rows"][0][3]
    p = net(x[None]).detach().softmax(1)[0]
    assert float(followed) == pytest.approx(float(p[y if own else r.target]), abs=1e-3)
    # the predicted class by its name, or without names (ImageNet's 1000 here) by its number
    predicted = section["tables"][0]["rows"][0][2]
    assert predicted == (synthetic64.class_names[r.base_label] if own else
                         f"class {r.target}")
    # the section's metrics are a reader's words, not the returned dict's keys
    words = section["metrics"]
    assert words["occluder"] == "16 px, stride 16 px" and words["method"] == "full, float32"
    assert words["p(class) of"] == ("the true class" if own else "the predicted class")
    assert words["pointing game"].endswith(f"hits on {metrics['pointing_images']} images "
                                           f"(chance {metrics['pointing_chance']:.0%})")


def test_report_follows_the_class_asked_for(synthetic64, tmp_path) -> None:
    """target_class: (a) and (d) follow that class on every image, whatever the label or the
    prediction; the table, the caption and the metrics name it."""
    net = _tv("resnet18", num_classes=1000)
    names = [f"n{k}" for k in range(1000)]
    metrics = occlusion_report(net, synthetic64, tmp_path, n_images=2, n_pointing=0, size=32,
                               stride=32, target_class=7, class_names=names)
    assert metrics["class_followed"] == "chosen: 'n7'"
    section = json.loads((tmp_path / "sections" / "occlusion.json").read_text())
    assert "lowers the probability of the chosen ('n7') class most" in section["caption"]
    assert "(a) and (d) follow the class asked for, 'n7', on every image." in section["caption"]
    assert section["tables"][0]["columns"][3:5] == ["p('n7')", "min p('n7') occluded"]
    assert section["metrics"]["p(class) of"] == "the class 'n7'"
    val = synthetic64.val.with_mode("centre")
    for row, k in zip(section["tables"][0]["rows"], (0, 1), strict=True):
        p = net(val[k][0][None]).detach().softmax(1)[0, 7]
        assert float(row[3]) == pytest.approx(float(p), rel=1e-2)


def test_the_caption_says_whose_mean_colour_the_occluder_is(synthetic64, tmp_path) -> None:
    """The paper's inputs (minus the dataset's mean image): the dataset's mean colour; a
    model's own preprocessing (a torchvision model on your photos): its mean."""
    from zfnet.data import Preprocessing, load_dataset

    net = _tv("resnet18", num_classes=10)
    occlusion_report(net, synthetic64, tmp_path / "paper", n_images=1, n_pointing=0, size=32,
                     stride=32)
    caption = json.loads((tmp_path / "paper/sections/occlusion.json").read_text())["caption"]
    assert "A square of the dataset's mean colour (fill 0 after mean subtraction) of 32 px" \
        in caption
    pre = Preprocessing(72, 64, (123.7, 116.3, 103.5), (58.4, 57.1, 57.4))
    bundle = load_dataset("synthetic?n_train=10&n_val=4&size=64", preprocessing=pre)
    occlusion_report(net, bundle, tmp_path / "model", n_images=1, n_pointing=0, size=32,
                     stride=32)
    caption = json.loads((tmp_path / "model/sections/occlusion.json").read_text())["caption"]
    assert "A square of the mean colour of the model's preprocessing (fill 0 after its " \
        "normalisation) of 32 px slides over each image in steps of 32 px" in caption


def test_table_probabilities_keep_their_digits_below_a_thousandth() -> None:
    from zfnet.analyses.occlusion import _p

    assert [_p(v) for v in (0.98765, 0.001, 2.04e-6, 0.0)] == ["0.988", "0.001", "2e-06",
                                                               "0.000"]


@pytest.mark.parametrize("method", ["incremental", "full"])
def test_progress_reaches_every_position_and_can_stop(model, image, method) -> None:
    seen: list[tuple[int, int]] = []
    r = occlusion(model, image, size=8, stride=4, batch_size=9, method=method, project=False,
                  progress=lambda d, t: seen.append((d, t)))
    n = r.probability.numel()
    assert seen[0] == (0, n)  # the total before the first group (a page's bar and count)
    assert seen[-1] == (n, n) and all(t == n for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) > 1

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        occlusion(model, image, size=8, stride=4, batch_size=9, method=method, project=False,
                  progress=stop)
    assert not any(m._forward_hooks for m in model.modules())
    assert not model.training


def test_bfloat16_runs_the_full_passes_in_bf16_and_stays_close(model, image) -> None:
    """precision="bfloat16": every pass of the full method (the unoccluded image's too) under
    bf16 autocast, the maps close to float32's and given in float32; incremental inference
    (a chain) stays in float32 and says so."""
    net = _tv("resnet18", num_classes=7)
    x = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(2)) * 60
    seen: list[torch.dtype] = []  # the passes' (not the geometry's walks on meta tensors)
    handle = net.fc.register_forward_hook(
        lambda m, i, o: None if o.is_meta else seen.append(o.dtype))
    try:
        exact = occlusion(net, x, size=24, stride=20, project=False)
        passes = len(seen)
        assert set(seen) == {torch.float32}
        fast = occlusion(net, x, size=24, stride=20, project=False, precision="bfloat16")
    finally:
        handle.remove()
    assert len(seen) >= passes + 2 and set(seen[passes:]) == {torch.bfloat16}  # base + occluded
    assert (exact.meta["precision"], fast.meta["precision"]) == ("float32", "bfloat16")
    assert fast.method == "full" and fast.target == exact.target
    for a, b in ((exact.probability, fast.probability), (exact.activation, fast.activation)):
        assert b.dtype == torch.float32 and b.shape == a.shape
    # (raw 0..255-scale inputs: large logits, where bf16's 3 digits show most)
    assert (fast.probability - exact.probability).abs().max() < 5e-2
    assert fast.base_probability == pytest.approx(exact.base_probability, abs=5e-2)
    rel = (fast.activation - exact.activation).abs().max() / exact.activation.abs().max()
    assert rel < 5e-2
    chain = occlusion(model, image, size=12, stride=6, project=False, precision="bfloat16")
    ref = occlusion(model, image, size=12, stride=6, project=False)
    assert chain.method == "incremental" and chain.meta["precision"] == "float32"
    assert torch.equal(chain.probability, ref.probability)
    with pytest.raises(ValueError, match="precision='half' is not known; valid: float32, "
                                         "bfloat16"):
        occlusion(net, x, precision="half")


def test_a_colour_bars_factor_is_its_label_not_over_the_title() -> None:
    """Tiny activations (a random network's, ~1e-13): the colour bar's factor is its label at
    its side, not matplotlib's text above its top, where it overlapped the panel's title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from zfnet.analyses.occlusion import _colorbar

    for scale, factor in ((1e-13, "1e\u221212"), (1.0, "")):  # 0 to 1.5e-12
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        im = ax.imshow(np.arange(16.0).reshape(4, 4) * scale)
        ax.set_title("(b) total activation")
        _colorbar(fig, im, ax)
        fig.canvas.draw()
        bar = fig.axes[-1]
        offset = bar.yaxis.offsetText
        assert not (offset.get_visible() and offset.get_text()), scale
        assert factor in bar.get_ylabel() and bool(bar.get_ylabel()) == bool(factor), scale


def test_a_long_class_name_stays_inside_the_figure(model, image, tmp_path) -> None:
    """Panel (a)'s title with a long class name ("Greater Swiss Mountain dog") wraps within
    its panel: no text touches the figure's left edge (it was cut off there)."""
    r = occlusion(model, image, size=16, stride=16, project=False)
    r.meta["target"] = "chosen"
    names = [f"Greater Swiss Mountain dog number {k}" for k in range(10)]
    pixels = (image - image.min()) / (image.max() - image.min()) * 255
    plot_occlusion([(pixels.to(torch.uint8), r)], names, tmp_path / "o.png")
    drawn = np.asarray(Image.open(tmp_path / "o.png").convert("L"))
    assert drawn[:, :3].min() > 200, "text cut off at the left edge"


def test_the_predicted_class_is_one_class_everywhere() -> None:
    """Logits a hair apart (a random EfficientNet's) tie once made probabilities: the class
    followed was the logits' argmax, the one the table and panel (e) named the probabilities'
    (the first of the tie), so the figure said class 65 and the table class 0."""
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.conv(x).mean((2, 3))  # (N, 2)
            return torch.stack([torch.zeros(len(x)), 1e-9 + 0 * a[:, 0]], 1)

    r = occlusion(Tied(), torch.randn(3, 16, 16), layer="conv", size=8, stride=8,
                  project=False)
    assert torch.softmax(torch.tensor([0.0, 1e-9]), 0).argmax() == 0  # the tie
    assert r.target == r.base_label == 1


def test_a_notebook_s_image_module_and_dtype() -> None:
    """A float64 image raised torch's "Input type (double) and bias type (float)", where
    `project` casts; a layer given as its module put the module's repr in the result and the
    figure's titles; a first in-place ReLU changed the caller's image."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(3, 4, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    image = torch.randn(3, 24, 24)
    kept = image.clone()
    r = occlusion(model, image, layer=model[2], size=8, stride=8)
    assert r.layer == "2" and torch.equal(image, kept)
    r64 = occlusion(model, image.double(), layer="2", size=8, stride=8)
    torch.testing.assert_close(r64.probability, r.probability)
    with pytest.raises(ValueError, match=r"image must be \(C, H, W\)"):
        occlusion(model, image[None])


def test_no_square_is_marked_where_none_lowers_the_probability(tmp_path, monkeypatch) -> None:
    """A model sure of its class everywhere (p 1.000 at every position): the red square and
    the white cross marked the first position of the tie, the image's corner, as "the
    occluder that lowers the probability most"; now neither is drawn and (d) says so."""
    from matplotlib.figure import Figure

    class Sure(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3)) * 0 + torch.tensor([50.0, 0.0])

    image = torch.rand(3, 24, 24)
    r = occlusion(Sure().eval(), image, layer="conv", size=8, stride=8, project=False)
    assert not r.lowered() and r.most_sensitive() == (0, 0)
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self))
    plot_occlusion([((image * 255).to(torch.uint8), r)], None, tmp_path / "o.png")
    a, _, _, d, _ = figures[0].axes[:5]
    assert not a.patches and not d.lines and "no square lowers it" in d.get_title()
    r.probability[1, 1] = 0.5  # one square that does
    plot_occlusion([((image * 255).to(torch.uint8), r)], None, tmp_path / "o.png")
    a, _, _, d, _ = figures[1].axes[:5]
    assert r.lowered() and len(a.patches) == 1 and len(d.lines) == 1


def test_the_section_names_the_broken_files_it_passed_over(tmp_path) -> None:
    """A folder with a broken file: the figure took the next image, and nothing in the
    section said one was passed over."""
    from click.testing import CliRunner
    from skimage import data

    from zfnet.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    for name in ("coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.jpg")
    out = tmp_path / "look"
    res = CliRunner().invoke(main, ["analyze", "occlusion", "--model", "zfnet_small",
                                    "--data", f"images:{photos}", "--images", "2",
                                    "--size", "16", "--stride", "16", "--quiet",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    section = json.loads((out / "sections" / "occlusion.json").read_text())
    caption = section["tables"][0]["caption"]
    assert caption.endswith(" 1 broken file passed over: a_broken.jpg"), caption


def test_a_stride_longer_than_the_occluder_says_what_it_leaves_uncovered(synthetic,
                                                                          tmp_path) -> None:
    """`--stride 16` with a 9 px occluder leaves 7 px bands no square covers: the caption says
    so (nothing did), and nothing where every pixel is covered."""
    torch.manual_seed(0)
    net = create_model("zfnet_small", num_classes=synthetic.num_classes).eval()
    occlusion_report(net, synthetic, tmp_path, n_images=1, n_pointing=0, size=9, stride=16)
    caption = json.loads((tmp_path / "sections" / "occlusion.json").read_text())["caption"]
    assert "in steps of 16 px (longer than its side: the 7 px between one position and the " \
        "next are never covered, so what lies only there cannot show in the maps); " in caption
    occlusion_report(net, synthetic, tmp_path, n_images=1, n_pointing=0, size=16, stride=16)
    caption = json.loads((tmp_path / "sections" / "occlusion.json").read_text())["caption"]
    assert "in steps of 16 px; " in caption and "never covered" not in caption
