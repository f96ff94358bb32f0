"""The general path (zfnet.graph): equal to Captum's oracles on torchvision networks, batched
seeds equal to one seed at a time, rules refused where undefined, nothing left on the model."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from zfnet.graph import (
    RuleUndefinedError,
    batched_backward,
    layer_outputs,
    nonlinear,
    project_graph,
    seeds_from,
)

captum_attr = pytest.importorskip("captum.attr")

ORACLES = {"deconvnet": "NeuronDeconvolution", "guided": "NeuronGuidedBackprop",
           "gradient": "NeuronGradient"}


def _net(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, **kw).eval()


def _captum(model: nn.Module, layer: nn.Module, x: torch.Tensor, channel: int,
            rule: str, channels_last: bool = False) -> torch.Tensor:
    """Captum's projection of each image's strongest unit of `channel` (seeded with 1); of a
    layer whose output is (N, H, W, C) with `channels_last`."""
    def strongest(out: torch.Tensor) -> torch.Tensor:
        o = out[..., channel] if channels_last else out[:, channel]
        return o.flatten(1).max(1).values if o.ndim > 1 else o

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = getattr(captum_attr, ORACLES[rule])(model, layer)
        return oracle.attribute(x, neuron_selector=strongest)


def _check_equal(model: nn.Module, layer: str, x: torch.Tensor, channels: list[int],
                 channels_last: bool = False) -> int:
    """Every rule, every channel, every image: ours / activation == Captum's to 1e-5 of the
    largest value. Returns the number of projections compared."""
    module = model.get_submodule(layer)
    n = x.shape[0]
    img = torch.arange(n).repeat_interleave(len(channels))
    ch = torch.tensor(channels).repeat(n)
    compared = 0
    for rule in ORACLES:
        proj, val, *_ = project_graph(model, x, {layer: module},
                                  {layer: seeds_from(img, ch, None)}, rule)[layer]
        for j, c in enumerate(channels):
            ref = _captum(model, module, x, c, rule, channels_last)
            for i in range(n):
                s = i * len(channels) + j
                if val[s] <= 0:  # no active unit: nothing to show, a zero projection
                    assert proj[s].abs().max() == 0
                    continue
                ours = proj[s] / val[s]
                scale = ref[i].abs().max()
                assert scale > 0, (layer, rule, c, i)
                assert (ours - ref[i]).abs().max() <= 1e-5 * scale, (layer, rule, c, i)
                compared += 1
    return compared


@pytest.mark.parametrize("layer", ["layer1.0", "layer2.1.relu", "layer3.0.conv2", "layer4",
                                   "avgpool", "fc"])
def test_resnet18_equals_captum(layer: str) -> None:
    model = _net("resnet18")
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    assert _check_equal(model, layer, x, [0, 5, 17]) >= 3 * 3  # at least one per rule


@pytest.mark.parametrize("name,layer", [("vgg16_bn", "features.23"), ("alexnet", "features.8"),
                                        ("alexnet", "classifier.5")])
def test_vgg_bn_and_alexnet_equal_captum(name: str, layer: str) -> None:
    model = _net(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert _check_equal(model, layer, x, [1, 7, 11, 20, 33]) >= 3


def test_many_seeds_per_image_go_down_together_exactly() -> None:
    """Rounds of seeds in one batched walk == autograd called once per seed."""
    model = _net("resnet18")
    x = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    module = model.layer3
    img = torch.tensor([0, 0, 0, 0, 1, 2, 2])  # uneven: 4, 1 and 2 seeds per image
    ch = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    for rule in ("deconvnet", "gradient"):
        proj, val, *_ = project_graph(model, x, {"l3": module}, {"l3": seeds_from(img, ch, None)},
                                  rule, seed_batch=6)["l3"]
        for s in range(len(img)):
            one, v1, *_ = project_graph(model, x, {"l3": module},
                                    {"l3": seeds_from(img[s:s + 1], ch[s:s + 1], None)},
                                    rule)["l3"]
            assert torch.allclose(proj[s], one[0], rtol=1e-5, atol=1e-6 * one.abs().max())
            assert torch.isclose(val[s], v1[0], rtol=1e-5)  # batch of 3 vs 1: rounding


def test_gradient_rule_is_autograd_on_densenet_googlenet_mobilenet() -> None:
    """Concatenations, ReLU6, adaptive pooling: the gradient rule is exactly the gradient."""
    for name, layer, kw in [("densenet121", "features.denseblock2", {}),
                            ("googlenet", "inception4a", {"aux_logits": False,
                                                         "init_weights": False}),
                            ("mobilenet_v2", "features.6", {})]:
        model = _net(name, **kw)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
        module = model.get_submodule(layer)
        proj, val, *_ = project_graph(model, x, {layer: module},
                                  {layer: seeds_from([0, 1], [3, 3], None)}, "gradient")[layer]
        xg = x.clone().requires_grad_(True)
        act = layer_outputs(model, xg, {layer: module})[layer]
        for i in range(2):
            flat = act[i, 3].flatten()
            k = int(flat.argmax())
            (g,) = torch.autograd.grad(flat[k], xg, retain_graph=True)
            ref = g[i] * flat[k].detach()
            assert torch.allclose(proj[i], ref, atol=1e-6 * ref.abs().max()), name


def test_gradient_rule_through_squeeze_and_excitation_gates() -> None:
    """mobilenet_v3's gates (a per-channel scale broadcast over the map): a node's own backward
    gives the gate the unreduced gradient, which the walk sums over the broadcast dims as
    autograd's engine does."""
    model = _net("mobilenet_v3_small")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    layer, module = "features.4", model.features[4]
    img, ch = torch.tensor([0, 0, 1, 1]), torch.tensor([3, 7, 3, 7])
    proj, *_ = project_graph(model, x, {layer: module}, {layer: seeds_from(img, ch, None)},
                             "gradient")[layer]
    xg = x.clone().requires_grad_(True)
    act = layer_outputs(model, xg, {layer: module})[layer]
    for s in range(4):
        flat = act[int(img[s]), int(ch[s])].flatten()
        k = int(flat.argmax())
        (g,) = torch.autograd.grad(flat[k], xg, retain_graph=True)
        ref = g[int(img[s])] * flat[k].detach()
        assert torch.allclose(proj[s], ref, atol=1e-5 * ref.abs().max()), s


class _Broadcasts(nn.Module):
    """What global-context blocks (timm's gcresnet), NFNets (a scalar gain) and the like do: a
    per-channel context computed from the map added back to it, a scalar parameter times and
    plus the map, a scalar of the whole batch added to it, a per-image maximum added along the
    batch dim of a permuted map."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.gain = nn.Parameter(torch.tensor(0.7))
        self.bias = nn.Parameter(torch.randn(4, 1, 1, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = y + y.mean((2, 3), keepdim=True)  # a context (N, C, 1, 1) added to the map
        y = y + y.amax((2, 3), keepdim=True)
        y = y * self.gain + self.gain + self.bias  # scalar and (C, 1, 1) parameters
        y = y + 2 * y.mean()  # a scalar of the whole batch
        y = torch.add(y.amax((1, 2, 3)), y.permute(1, 2, 3, 0), alpha=0.5).permute(3, 0, 1, 2)
        return self.b(torch.relu(y))


class _NegativeDims(nn.Module):
    """Dims counted from the end (autograd saves -1 as 2**64 - 1) on a (N, C, H*W) tensor: a
    mean over the channels (dim -2 of 3), a concatenation along the last dim; and a
    concatenation along the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.a(x).flatten(2)  # (N, C, H*W)
        t = t - t.mean(-2, keepdim=True)
        t = torch.cat([t[..., :50], t[..., 50:] * 2], -1)
        y = t.unflatten(-1, (10, 10))
        y = torch.cat([y, y], 0)[: y.shape[0]]
        return self.b(torch.relu(y))


class _UnreadPixels(nn.Module):
    """A patch stem whose stride does not divide the input (Sequencer2d's 7x7 / 7 at 64 px): the
    last rows and columns are read by no window, and get a zero gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 5, stride=5), nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("net", [_Broadcasts, _NegativeDims, _UnreadPixels])
def test_gradient_rule_equals_autograd_seed_by_seed(net: type[nn.Module]) -> None:
    """The walk of 3 rounds of seeds against autograd called once per seed. Broadcasts: a
    tensor added to a map it was broadcast to gets the gradient summed over the broadcast dims,
    round by round, a scalar one value per round (before: a wrong projection, or a crash on a
    scalar). Dims from the end: before, the mean's gradient went to the wrong dim (a max error
    of 0.35) and a concatenation along -1 raised an IndexError (as on timm's MambaOut).
    Unread pixels: before, the walk's gradient was 10 rows short and did not fit the input."""
    torch.manual_seed(0)
    model = net().eval()
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    act = model(x)
    seeds = torch.randn(3, *act.shape, generator=torch.Generator().manual_seed(2))
    got = batched_backward(act, x, seeds, "gradient")
    want = torch.stack([torch.autograd.grad(act, x, s, retain_graph=True)[0] for s in seeds])
    assert torch.allclose(got, want, atol=1e-6 * want.abs().max())


def test_deconvnet_on_mobilenet_v2_rectifies_at_relu6() -> None:
    model = _net("mobilenet_v2")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    proj, *_ = project_graph(model, x, {"f": model.features[3]},
                            {"f": seeds_from([0], [2], None)}, "deconvnet")["f"]
    assert proj.abs().sum() > 0


def test_rule_undefined_for_gelu_names_it_and_the_valid_rule() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 3), nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    seeds = {"3": seeds_from([0], [1], None)}
    for rule in ("deconvnet", "guided"):
        with pytest.raises(RuleUndefinedError, match="GELU.*gradient.*in Python, `with "
                           r"zfnet.graph.nonlinear\(\"gradient\"\):`"):
            project_graph(model, x, {"3": model[3]}, seeds, rule)
    proj, *_ = project_graph(model, x, {"3": model[3]}, seeds, "gradient")["3"]
    assert proj.shape == (1, 3, 16, 16)
    # below the GELU only: fine for every rule
    project_graph(model, x, {"0": model[0]}, {"0": seeds_from([0], [1], None)}, "deconvnet")


@pytest.mark.parametrize("name,layer", [
    ("regnet_y_400mf", "trunk_output.block2"),  # ReLUs, squeeze-and-excitation sigmoid gates
    ("mobilenet_v3_small", "features.6"),       # Hardswish, Hardsigmoid gates, ReLUs
    ("convnext_tiny", "features.3"),            # GELU, LayerNorm on (N, H, W, C) maps
])
@pytest.mark.filterwarnings("ignore:no rectifier")  # convnext has none: rules = the gradient
def test_nonlinear_gradient_equals_captum_on_modern_networks(name: str, layer: str) -> None:
    """Inside nonlinear("gradient") the rules apply at the rectifiers and every other
    non-linearity takes its gradient: Captum's Deconvolution and GuidedBackprop exactly (they
    override ReLU modules only). Outside, the deconvnet rule refuses these networks."""
    model = _net(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with pytest.raises(RuleUndefinedError, match="nonlinear 'gradient'.*as Captum does"):
        project_graph(model, x, {layer: model.get_submodule(layer)},
                      {layer: seeds_from([0], [1], None)}, "deconvnet")
    with nonlinear("gradient"):
        assert _check_equal(model, layer, x, [1, 5]) >= 6


def test_nonlinear_mode_is_scoped_checked_and_warns_without_rectifiers() -> None:
    """The mode holds inside the block only, also after an error; an unknown one is refused;
    a network with no rectifier below the layer gets the gradient, and a warning saying so."""
    silu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3)).eval()
    x = torch.randn(2, 3, 12, 12)
    seeds = {"2": seeds_from([0, 1], [1, 1], None)}
    with pytest.raises(ValueError, match="nonlinear='relu' is not known; valid: error, gradient"):
        with nonlinear("relu"):
            pass
    with pytest.raises(KeyError), nonlinear("gradient"):
        raise KeyError  # the mode is reset on the way out
    with pytest.raises(RuleUndefinedError, match="SiLU; use rule 'gradient' [(]--rule gradient; "
                       ".*[(]--nonlinear gradient; "):  # each way on as the command line gives it
        project_graph(silu, x, {"2": silu[2]}, seeds, "guided")
    with nonlinear("gradient"), pytest.warns(UserWarning, match="no rectifier on the way down "
                                              "from layer '2': .*plain gradient") as told:
        guided, *_ = project_graph(silu, x, {"2": silu[2]}, seeds, "guided")["2"]
    assert told[0].filename == __file__  # the user's line, not zfnet's
    grad, *_ = project_graph(silu, x, {"2": silu[2]}, seeds, "gradient")["2"]
    torch.testing.assert_close(guided, grad)


@pytest.mark.filterwarnings("ignore:no rectifier")
def test_the_walks_that_took_a_gradient_are_recorded_and_named() -> None:
    """Under nonlinear("gradient"), each layer's walk through a non-rectifier is recorded:
    "plain" with no rectifier on the way down (the projection is the gradient), "mixed" with
    some; what figures then call the projection (rule_label) and the caption's sentence."""
    from zfnet.graph import fallback_words, fallbacks_recorded, rule_label

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.SiLU(),
                        nn.Conv2d(4, 4, 3)).eval()
    x = torch.randn(1, 3, 12, 12)
    layers = {n: net[int(n)] for n in ("0", "2", "4")}
    seeds = {n: seeds_from([0], [1], None) for n in layers}
    with fallbacks_recorded() as outer:
        with nonlinear("gradient"), fallbacks_recorded() as found:
            project_graph(net, x, layers, seeds, "deconvnet")
        project_graph(net, x, layers, seeds, "gradient")  # the gradient rule: nothing to say
    assert found == outer == {"4": "mixed"}  # conv2 and conv0: no non-rectifier below them
    with nonlinear("gradient"), fallbacks_recorded() as found:
        project_graph(net[3:], x[:, :1].expand(1, 4, 12, 12), {"4": net[4]},
                      {"4": seeds_from([0], [1], None)}, "guided")
    assert found == {"4": "plain"}
    with fallbacks_recorded() as after:
        project_graph(net, x, layers, seeds, "gradient")
    assert after == {}  # a collection closed hears no more walks
    assert rule_label("deconvnet", {}, ["4"]) == "deconvnet"
    assert rule_label("guided", {"4": "plain"}, ["4"]) == "gradient"
    mixed = "+ gradient at non-rectifiers"
    assert rule_label("guided", {"4": "plain"}, ["2", "4"]) == f"guided {mixed}"
    assert rule_label("deconvnet", {"4": "mixed"}, ["4"]) == f"deconvnet {mixed}"
    assert rule_label("gradient", {"4": "plain"}, ["4"]) == "gradient"
    assert fallback_words("deconvnet", {}, ["4"]) == ""
    assert fallback_words("deconvnet", {"4": "plain"}, ["4"]).endswith(
        "every projection here is the plain gradient (Simonyan et al. 2014), not a deconvnet "
        "projection.")
    assert "below 4, with no rectifier" in fallback_words("guided", {"4": "plain"}, ["2", "4"])
    assert fallback_words("guided", {"4": "mixed"}, ["4"]).startswith(
        "Under --nonlinear gradient the guided rule applies at rectifiers only")


def test_no_hook_left_also_after_an_exception() -> None:
    model = _net("resnet18")
    x = torch.randn(1, 3, 32, 32)

    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                   for m in model.modules())

    project_graph(model, x, {"l": model.layer2}, {"l": seeds_from([0], [0], None)}, "guided")
    assert hooks() == 0
    with pytest.raises(ValueError, match="channels must lie"):
        project_graph(model, x, {"l": model.layer2}, {"l": seeds_from([0], [999], None)},
                      "guided")
    assert hooks() == 0
    assert all(p.grad is None for p in model.parameters())


def test_positions_and_flat_layers() -> None:
    model = _net("resnet18")
    x = torch.randn(1, 3, 32, 32)
    act = layer_outputs(model, x, {"l": model.layer1})["l"].detach()
    pos = torch.tensor([[2, 3]])
    proj, val, *_ = project_graph(model, x, {"l": model.layer1},
                              {"l": seeds_from([0], [4], pos)}, "gradient")["l"]
    assert val[0] == act[0, 4, 2, 3]
    with pytest.raises(ValueError, match="positions must lie"):
        project_graph(model, x, {"l": model.layer1},
                      {"l": seeds_from([0], [4], torch.tensor([[99, 0]]))}, "gradient")
    with pytest.raises(ValueError, match="no spatial map"):
        project_graph(model, x, {"fc": model.fc}, {"fc": seeds_from([0], [4], pos)}, "gradient")


def test_batched_backward_refuses_an_unrelated_output() -> None:
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    y = torch.randn(1, 4, 8, 8, requires_grad=True) * 2
    with pytest.raises(ValueError, match="does not depend on the input"):
        batched_backward(y, x, torch.ones(1, 1, 4, 8, 8), "gradient")


def test_a_layer_that_does_not_follow_the_batch_is_named() -> None:
    """A module run on a constant inside forward: one row whatever the batch, refused by name."""
    from zfnet.deconvnet import project

    class Const(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.const = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(1, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3)) + self.const(torch.ones(1, 1, 4, 4)).mean()

    with pytest.raises(ValueError, match="layer 'const' gives 1 row\\(s\\) for a batch of 2 "
                                         "images: its output does not follow the images"):
        project(Const().eval(), torch.randn(2, 3, 16, 16), "const", 0)


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_general_path_equals_the_windowed_engine_on_a_chain(rule: str) -> None:
    """Both paths of the one engine give the same projections on zfnet's chain (LRN, ceil-mode
    pooling), so a layer's projection does not depend on which path took it."""
    from zfnet.deconvnet import eval_mode, project
    from zfnet.models import create_model

    torch.manual_seed(0)
    model = create_model("zfnet_small").eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6)) * 60
    for layer in ("conv2", "norm2", "pool5"):
        module = model.get_submodule(f"features.{layer}")
        windowed = project(model, x, layer, torch.tensor([[1, 4], [2, 7]]), rule=rule)
        with eval_mode(model):
            general, *_ = project_graph(model, x, {layer: module},
                                        {layer: seeds_from([0, 0, 1, 1], [1, 4, 2, 7], None)},
                                        rule)[layer]
        windowed = windowed.reshape(4, 3, 64, 64)
        scale = windowed.abs().max()
        assert scale > 0
        assert (general - windowed).abs().max() <= 1e-4 * scale, layer


def test_project_takes_a_module_object_and_any_layer() -> None:
    from zfnet.deconvnet import project, project_rf

    model = _net("resnet18")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    by_object = project(model, x, model.layer2[1], torch.tensor([[0, 3], [1, 2]]))
    by_name = project(model, x, "layer2.1", torch.tensor([[0, 3], [1, 2]]))
    assert by_object.shape == (2, 2, 3, 32, 32)
    assert torch.equal(by_object, by_name)
    rf = project_rf(model, x, "fc", [0, 1], [5, 5])
    assert rf.values.shape == (2, 3, 32, 32) and rf.top.tolist() == [0, 0]
    with pytest.raises(ValueError, match="not a module of this model"):
        project(model, x, nn.Conv2d(3, 3, 3), 0)


def test_bfloat16_walk_is_close_and_float32_is_the_default() -> None:
    from zfnet.deconvnet import project

    model = _net("resnet18")
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(8))
    maps = torch.tensor([[0, 9], [3, 4]])
    exact = project(model, x, "layer3", maps)
    fast = project(model, x, "layer3", maps, precision="bfloat16")
    assert exact.dtype == fast.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(exact.flatten(2), fast.flatten(2), dim=2)
    assert float(cos.min()) > 0.9999 and not torch.equal(exact, fast)
    assert torch.equal(exact, project(model, x, "layer3", maps, precision="float32"))
    with pytest.raises(ValueError, match="valid: float32, bfloat16"):
        project(model, x, "layer3", maps, precision="fp8")


def test_a_channels_last_layer_projects_as_maps() -> None:
    """A layer whose output is (N, H, W, C) (inside a ConvNeXt block: LayerNorm, the linear
    layers, GELU) is read as maps (N, C, H, W) — 384 maps of the expansion layer, not 16 rows —
    and each rule equals Captum's seeded on the raw output's last dim."""
    model = _net("convnext_tiny")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    layer = "features.1.0.block.3"
    act = layer_outputs(model, x, {layer: model.get_submodule(layer)})[layer]
    assert act.shape == (2, 384, 16, 16)
    with nonlinear("gradient"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no rectifier: every rule is the gradient
        assert _check_equal(model, layer, x, [0, 5, 300], channels_last=True) >= 3 * 3


@pytest.mark.parametrize("name,layer", [
    ("mambaout_femto", "stages.1"),        # every stage (N, H, W, C)
    ("sequencer2d_s", "stages.1.blocks.0"),  # (N, H, W, C) after LSTMs along rows and columns
])
def test_channels_last_stages_of_timm_networks_equal_autograd(name: str, layer: str) -> None:
    """Maps of a channels-last stage, projected with the gradient rule, are each unit's own
    gradient times its value (autograd seeded on the raw output's last dim)."""
    timm = pytest.importorskip("timm")
    from zfnet.deconvnet import project

    if name not in timm.list_models():
        pytest.skip(f"timm {timm.__version__} has no {name}")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    maps = [3, 40]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no rectifier: the gradient rule
        proj = project(model, x, layer, [maps], rule="gradient")[0]
    xg = x.clone().requires_grad_(True)
    out: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, o: out.__setitem__("o", o))
    try:
        model(xg)
    finally:
        handle.remove()
    act = out["o"]  # (1, H, W, C)
    for k, c in enumerate(maps):
        unit = act[0, ..., c].flatten()
        v = unit.max()
        (g,) = torch.autograd.grad(v, xg, retain_graph=True)
        ref = g[0] * v.clamp(min=0).detach()
        assert (proj[k] - ref).abs().max() <= 1e-4 * ref.abs().max(), (name, c)


class _ValidPadding(nn.Module):
    """Convolutions with string padding, as Hugging Face's EfficientNet has them: autograd
    saves padding="valid" as (0,), one value for both sides."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding="valid")
        self.conv2 = nn.Conv2d(8, 8, 3, padding="same")
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_a_strided_valid_padding_convolution_has_a_geometry_and_equals_captum() -> None:
    from zfnet.models import graph_geometry

    torch.manual_seed(0)
    model = _ValidPadding().eval()
    geo = graph_geometry(model, 32)
    assert (geo["conv1"].rows.size, geo["conv1"].rows.rf) == (15, 3)
    assert (geo["conv2"].rows.size, geo["conv2"].rows.rf, geo["conv2"].rows.first) == (15, 7, -2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert _check_equal(model, "conv2", x, [0, 3]) >= 3


def test_a_forward_that_changes_its_input_in_place_and_a_float64_default() -> None:
    """A wrapper normalising with `x.sub_(mean)` failed ("a leaf Variable that requires grad
    is being used in an in-place operation", blamed on the model's code); and under
    `torch.set_default_dtype(torch.float64)` a float32 model's projection failed ("Index put
    requires the source and destination dtypes match")."""

    class Normalised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=10)
            self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.sub_(self.mean))

    from zfnet.deconvnet import project

    torch.manual_seed(0)
    model = Normalised().eval()
    x = torch.randn(2, 3, 32, 32)
    kept = x.clone()
    p = project(model, x, "net.layer2", 0, rule="gradient", seed="one")
    leaf = x.clone().requires_grad_()
    out = {}
    handle = model.net.layer2.register_forward_hook(lambda m, i, o: out.__setitem__("a", o))
    model(leaf.clone())
    handle.remove()
    a = out["a"][:, 0].flatten(1)
    a.gather(1, a.argmax(1, keepdim=True)).sum().backward()
    torch.testing.assert_close(p, leaf.grad)
    assert torch.equal(x, kept)  # the caller's images as they were
    torch.set_default_dtype(torch.float64)
    try:
        again = project(model, x, "net.layer2", 0, rule="gradient", seed="one")
    finally:
        torch.set_default_dtype(torch.float32)
    assert again.dtype == torch.float32
    torch.testing.assert_close(again, p)
