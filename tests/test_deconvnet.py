"""The deconvnet engine (paper Sec. 2.1, Fig. 1): hand-computed cases, Captum as an independent
oracle on every supported model, an explicit full-map unpool/ReLU/conv_transpose2d reference,
and a model left exactly as it was."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import zfnet
from zfnet.activations import get_activations, to_model
from zfnet.deconvnet import RULES, feature_chain, forward_pass, paste, project, project_rf
from zfnet.models import UnknownLayerError, layer_info, resolve_layer

captum_attr = pytest.importorskip("captum.attr")

# --------------------------------------------------------------------------- hand-computed


def _tiny() -> nn.Sequential:
    """conv1 (3 maps: top-left tap, bottom-right tap, minus top-right tap) relu1 pool1 conv2."""
    conv1 = nn.Conv2d(1, 3, 2, bias=False)
    conv2 = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv1.weight.zero_()
        conv1.weight[0, 0, 0, 0] = 1.0
        conv1.weight[1, 0, 1, 1] = 1.0
        conv1.weight[2, 0, 0, 1] = -1.0
        conv2.weight.copy_(torch.tensor([1.0, -0.5, 2.0]).view(1, 3, 1, 1))
    layers = {"conv1": conv1, "relu1": nn.ReLU(inplace=True), "pool1": nn.MaxPool2d(2, 1),
              "conv2": conv2}
    return nn.Sequential(*layers.values())  # features.0 … features.3


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = _tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def test_hand_computed_three_rules() -> None:
    """conv1 maps: ch0 = x[0:2,0:2] (max 5 at (1,1)), ch1 = x[1:3,1:3] (max 5 at (0,0)),
    ch2 = -x[0:2,1:3] (all negative: after the ReLU its switch is (0,0), an inactive unit).
    conv2 = ch0 - 0.5 ch1 + 2 ch2 = 5 - 2.5 + 0 = 2.5, the seed.
    Unpooled signal: ch0 2.5 at (1,1), ch1 -1.25 at (0,0), ch2 5 at (0,0).
    deconvnet keeps 2.5 and 5 (rectified, not masked): x(1,1) += 2.5, x(0,1) -= 5.
    guided also masks by the forward: only 2.5 at x(1,1).
    gradient masks without rectifying: 2.5 - 1.25 at x(1,1)."""
    model = _Tiny()
    x = torch.tensor([[3.0, 1, 2], [0, 5, 4], [1, 2, 1]]).view(1, 1, 3, 3)
    want = {
        "deconvnet": [[0.0, -5, 0], [0, 2.5, 0], [0, 0, 0]],
        "guided": [[0.0, 0, 0], [0, 2.5, 0], [0, 0, 0]],
        "gradient": [[0.0, 0, 0], [0, 1.25, 0], [0, 0, 0]],
    }
    for rule, w in want.items():
        got = project(model, x, "features.3", 0, rule=rule)
        torch.testing.assert_close(got, torch.tensor(w).view(1, 1, 3, 3), rtol=0, atol=1e-6)
    # The gradient rule is the gradient, seeded with the activation's value.
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(xg).sum(), xg)
    torch.testing.assert_close(project(model, x, "features.3", 0, rule="gradient"), 2.5 * g)


def test_unpooling_adds_values_that_share_a_switch() -> None:
    """Two overlapping pooling windows both pick x[1] = 9; conv [1, 2] over them gives 27.
    Going down, 27 and 54 both land on x[1]: 81 (max_unpool2d would overwrite: 54)."""
    conv = nn.Conv2d(1, 1, (1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0]).view(1, 1, 1, 2))
    model = nn.Sequential(nn.MaxPool2d((1, 2), 1), conv)
    x = torch.tensor([0.0, 9, 0]).view(1, 1, 1, 3)
    got = project(model, x, "1", 0)
    torch.testing.assert_close(got, torch.tensor([0.0, 81, 0]).view(1, 1, 1, 3))


# --------------------------------------------------------------------------- Captum oracle

_CAPTUM = {
    "deconvnet": "NeuronDeconvolution",
    "guided": "NeuronGuidedBackprop",
    "gradient": "NeuronGradient",
}


def _captum_copy(model: nn.Module) -> nn.Module:
    """A copy for Captum, without in-place ReLUs (its hooks need them out of place)."""
    ref = copy.deepcopy(model).eval()
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return ref


def _captum(ref: nn.Module, x: torch.Tensor, layer: str, ch: torch.Tensor, rule: str,
            pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's projection of map ch[i] of image i (strongest unit, or `pos`), seeded with 1,
    and the activation; on the input laid out as zfnet lays it out for `ref` (`to_model`: on
    the CPU, channels-last where the model takes it). On a CPU without AVX-512 the two layouts'
    convolutions sum in other orders, 3e-5 apart (of the largest value) in a deep layer; in one
    layout the rules agree to 2e-6."""
    module = ref.get_submodule(resolve_layer(ref, layer)[0])
    n = x.shape[0]

    def select(out: torch.Tensor) -> torch.Tensor:
        maps = out[torch.arange(n), ch]  # (N, h, w)
        if pos is None:
            return maps.flatten(1).max(1).values
        return maps[torch.arange(n), pos[:, 0], pos[:, 1]]

    seen: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o.detach()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attr = getattr(captum_attr, _CAPTUM[rule])(ref, module).attribute(
                to_model(ref, x).clone(), neuron_selector=select
            )
    finally:
        handle.remove()
    return attr.detach(), select(seen["a"])


def _tv(name: str) -> nn.Module:
    """A torchvision model, random weights; its 100M-parameter classifier swapped for a small
    head, which keeps Captum's copy and forward fast (the deconvnet never goes there)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    width = next(m for m in model.classifier if isinstance(m, nn.Linear)).in_features
    model.classifier = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(width, 10))
    return model


CASES = [  # model, input size, images, layers
    ("zfnet_small", 64, 3, ["conv1", "relu2", "norm2", "conv3", "conv5", "pool5"]),
    ("alexnet_small", 64, 3, ["pool1", "conv2", "conv4", "relu5"]),
    ("zfnet_small:batchnorm", 64, 2, ["bn2", "relu3", "pool5"]),
    pytest.param("zfnet", 224, 1, ["conv5"], marks=pytest.mark.slow),
    ("tv:alexnet", 96, 2, ["features.3", "features.7", "features.12"]),
    ("tv:vgg11", 32, 2, ["features.4", "features.13", "features.18"]),
    pytest.param("tv:vgg16", 32, 1, ["features.15", "features.29"], marks=pytest.mark.slow),
]


def _build(name: str) -> nn.Module:
    if name.startswith("tv:"):
        return _tv(name[3:])
    torch.manual_seed(0)
    if name.endswith(":batchnorm"):  # BatchNorm with non-trivial statistics and affine terms
        model = zfnet.create_model(name.split(":")[0], batchnorm=True)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.5, 0.5)
        return model
    return zfnet.create_model(name)


def _positive_maps(model: nn.Module, x: torch.Tensor, layer: str,
                   first: torch.Tensor) -> torch.Tensor:
    """For image i, the first map from `first[i]` on (cyclically) whose strongest unit is
    positive: a negative seed is not a rescaling of Captum's seed of 1 (the deconvnet and
    guided rules rectify), and a dead map projects nothing."""
    peak = get_activations(model, x, [layer])[layer].flatten(2).amax(2)  # (N, C)
    order = (first[:, None] + torch.arange(peak.shape[1])) % peak.shape[1]  # (N, C)
    pick = (peak.gather(1, order) > 0).float().argmax(1)  # the first positive one
    return order[torch.arange(len(x)), pick]


@pytest.mark.parametrize("name,size,n,layers", CASES,
                         ids=[c.values[0] if hasattr(c, "marks") else c[0] for c in CASES])
def test_agrees_with_captum(name: str, size: int, n: int, layers: list[str]) -> None:
    """Within 1e-5 of the largest value, up to Captum's seed of 1, for every image, layer and
    rule, on maps whose strongest activation is positive."""
    model = _build(name)
    ref = _captum_copy(model)
    torch.manual_seed(1)
    x = torch.randn(n, 3, size, size) * 60
    for li, layer in enumerate(layers):
        channels = layer_info(model, size)[layer].channels
        ch = _positive_maps(ref, x, layer, (torch.arange(n) * 7 + 3 * li + 1) % channels)
        for rule in RULES:
            ours = project(model, x, layer, ch, rule=rule)
            theirs, act = _captum(ref, x, layer, ch, rule)
            assert (act > 0).all(), f"{name} {layer}: maps {ch.tolist()} give {act.tolist()}"
            want = theirs * act[:, None, None, None]
            for i in range(n):
                err = (ours[i] - want[i]).abs().max() / want[i].abs().max()
                assert err < 1e-5, f"{name} {layer} map {int(ch[i])} {rule}: rel. error {err:.2e}"


def test_captum_at_given_positions_and_k_maps_per_image() -> None:
    model = _build("zfnet_small")
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64) * 60
    pos = torch.tensor([[[3, 4], [0, 7]], [[7, 7], [5, 1]]])  # (N, K, 2) in conv4's 8x8
    ch = torch.tensor([[1, 2], [3, 4]])
    ours = project(model, x, "relu4", ch, pos, rule="guided")  # (N, K, C, H, W)
    assert ours.shape == (2, 2, 3, 64, 64)
    for k in range(2):
        theirs, act = _captum(_captum_copy(model), x, "relu4", ch[:, k], "guided", pos[:, k])
        torch.testing.assert_close(ours[:, k], theirs * act[:, None, None, None],
                                   rtol=1e-5, atol=1e-5 * ours.abs().max().item())


def test_k_maps_cost_one_forward_pass() -> None:
    model = _build("zfnet_small")
    calls = []
    handle = model.features.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        x = torch.randn(3, 3, 64, 64) * 60
        ch = torch.arange(15).view(3, 5)
        many = project(model, x, "conv3", ch)
        assert len(calls) == 1
    finally:
        handle.remove()
    assert many.shape == (3, 5, 3, 64, 64)
    for k in range(5):
        torch.testing.assert_close(many[:, k], project(model, x, "conv3", ch[:, k]))


# --------------------------------------------------------------------------- explicit reference


def _reference(model: nn.Module, x: torch.Tensor, layer: str, c: int, lrn: str) -> torch.Tensor:
    """The paper's deconvnet on whole maps, layer by layer, for zfnet's ConvNet: record the
    switches going up; going down, unpool with them (scatter-add: overlapping 3/2 windows
    can share a switch), ReLU, conv_transpose2d with the layer's filters."""
    mods = list(model.features.named_children())
    stop = [name for name, _ in mods].index(layer)
    inputs, switches = [], {}
    with torch.no_grad():
        h = x
        for i, (_, m) in enumerate(mods[: stop + 1]):
            inputs.append(h)
            if isinstance(m, nn.MaxPool2d):
                h, switches[i] = F.max_pool2d(h, m.kernel_size, m.stride, m.padding,
                                              ceil_mode=m.ceil_mode, return_indices=True)
            else:
                h = m(h)
    n = x.shape[0]
    value, where = h[:, c].flatten(1).max(1)
    g = torch.zeros_like(h)
    g[:, c].view(n, -1)[torch.arange(n), where] = value.clamp(min=0)  # an inactive unit: 0
    for i in reversed(range(stop + 1)):
        m, size = mods[i][1], inputs[i].shape[-2:]
        if isinstance(m, nn.Conv2d):
            full = (g.shape[-1] - 1) * m.stride[0] - 2 * m.padding[0] + m.kernel_size[0]
            g = F.conv_transpose2d(g, m.weight, stride=m.stride, padding=m.padding,
                                   output_padding=size[-1] - full)
        elif isinstance(m, nn.MaxPool2d):
            out = g.new_zeros(*g.shape[:2], size[0] * size[1])
            out.scatter_add_(2, switches[i].flatten(2), g.flatten(2))
            g = out.view(*g.shape[:2], *size)
        elif isinstance(m, nn.ReLU):
            g = g.clamp(min=0)
        elif isinstance(m, nn.LocalResponseNorm) and lrn == "gradient":
            xi = inputs[i].clone().requires_grad_()
            with torch.enable_grad():
                y = F.local_response_norm(xi, m.size, m.alpha, m.beta, m.k)
                (g,) = torch.autograd.grad(y, xi, g)
    return g


@pytest.mark.parametrize("lrn", ["gradient", "identity"])
def test_agrees_with_explicit_reference_on_zfnet(lrn: str) -> None:
    cases = [("zfnet_small", 64, 3, ["conv2", "norm1", "conv4", "pool5"])]
    if lrn == "gradient":  # the paper's full-size net once: 224 px, pool1/pool2 in ceil mode
        cases.append(("zfnet", 224, 1, ["pool5"]))
    for name, size, n, layers in cases:
        model = _build(name).eval()
        torch.manual_seed(3)
        x = torch.randn(n, 3, size, size) * 60
        for layer in layers:
            for c in (0, 5, 17):
                ours = project(model, x, layer, c, lrn=lrn)
                want = _reference(model, x, layer, c, lrn)
                err = (ours - want).abs().max() / want.abs().max().clamp_min(1e-30)
                assert err < 1e-5, f"{name} {layer} map {c} lrn={lrn}: {err:.2e}"


def test_lrn_identity_differs_from_gradient() -> None:
    """The two contrast-normalisation choices really are different (and both finite)."""
    model = _build("zfnet_small")
    x = torch.randn(2, 3, 64, 64) * 60
    a = project(model, x, "conv3", 4, lrn="gradient")
    b = project(model, x, "conv3", 4, lrn="identity")
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.allclose(a, b)


def test_crop_is_the_receptive_field_box() -> None:
    """`project_rf` windows sit where LayerGeometry.box says and hold the whole projection: put
    back in the image (`paste`), each equals the explicit full-map reference, which is zero
    outside the box; pasted back, they equal `project`."""
    model = _build("zfnet_small").eval()
    torch.manual_seed(4)
    x = torch.randn(2, 3, 64, 64) * 60
    geo = layer_info(model)["conv4"].geometry
    img, ch = [0, 1, 1], [2, 2, 9]
    rf = project_rf(model, x, "conv4", img, ch)
    assert rf.values.shape == (3, 3, geo.rf, geo.rf)
    pasted = paste(rf, (64, 64))  # (3, 3, 64, 64)
    for s in range(3):
        top, left, _, _ = geo.box(int(rf.row[s]), int(rf.col[s]))
        assert (int(rf.top[s]), int(rf.left[s])) == (top, left)
        want = _reference(model, x[img[s]:img[s] + 1], "conv4", ch[s], "gradient")[0].detach()
        scale = want.abs().max()
        assert scale > 0
        torch.testing.assert_close(pasted[s], want, rtol=0, atol=1e-5 * float(scale))
        # the part of the window outside the image (a border unit's) holds nothing
        torch.testing.assert_close(rf.values[s].abs().sum(), pasted[s].abs().sum())
    full = project(model, x, "conv4", torch.tensor([[2], [9]]))  # (2, 1, 3, 64, 64)
    torch.testing.assert_close(full[:, 0], pasted[[0, 2]], rtol=0, atol=0)


# --------------------------------------------------------------------------- leaves no trace


def _snapshot(model: nn.Module) -> dict:
    state = {}
    for name, m in model.named_modules():
        state[name] = (
            m.training, getattr(m, "inplace", None), sorted(vars(m)),
            {k: len(v) for k, v in vars(m).items()
             if k.endswith("hooks") and hasattr(v, "__len__")},
        )
    for name, p in model.named_parameters():
        state["p:" + name] = (p.requires_grad, p.grad is None, p.detach().clone())
    for name, b in model.named_buffers():
        state["b:" + name] = b.clone()
    return state


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, tuple) and isinstance(x[-1], torch.Tensor):
            if x[:-1] != y[:-1] or not torch.equal(x[-1], y[-1]):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("name", ["zfnet_small", "tv:alexnet"])
def test_model_left_unchanged_also_after_an_error(name: str) -> None:
    model = _build(name)
    model.train()  # the engine switches to eval; it must come back in train mode
    if name == "zfnet_small":
        model.features.conv2.eval()  # and a mixed mode must come back mixed
    layer = "conv3" if name == "zfnet_small" else "features.8"
    before = _snapshot(model)
    x = torch.randn(2, 3, 64, 64) * 60
    for rule in RULES:
        project(model, x, layer, torch.tensor([[1, 2], [3, 4]]), rule=rule)
        assert _same(before, _snapshot(model)), rule
    with pytest.raises(ValueError, match=r"does not run on a 2x4x64x64 input \(.*channels"):
        project(model, torch.randn(2, 4, 64, 64), layer, 0)  # fails inside the forward pass
    assert _same(before, _snapshot(model))
    with pytest.raises(ValueError, match="channels must lie in"):  # fails after the forward
        project(model, x, layer, 10_000)
    assert _same(before, _snapshot(model))


def test_errors_name_what_is_wrong() -> None:
    model = _build("zfnet_small")
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(UnknownLayerError, match="valid: conv1, relu1"):
        project(model, x, "conv9", 0)
    # fc6 is past the chain: the general path (zfnet.graph) takes it, but not lrn="identity"
    assert project(model, x, "fc6", 0).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="lrn='identity' is for the windowed engine"):
        project(model, x, "fc6", 0, lrn="identity")
    with pytest.raises(ValueError, match="valid: deconvnet, guided, gradient"):
        project(model, x, "conv1", 0, rule="lrp")
    with pytest.raises(ValueError, match="lrn="):
        project(model, x, "conv1", 0, lrn="skip")
    with pytest.raises(ValueError, match=r"positions must be \(1, 2\)"):
        project(model, x, "conv1", 0, torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="positions must lie in"):
        project(model, x, "conv1", 0, torch.tensor([[99, 0]]))
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        project(model, x, "conv1", 0, batch_size=0)
    tv = _tv("vgg11")
    with pytest.raises(UnknownLayerError, match="features.0"):
        project(tv, x, "conv1", 0)


def test_feature_chain_stops_at_the_layer() -> None:
    model = _build("zfnet_small")
    chain = feature_chain(model, "pool2")
    assert [p for p, _ in chain][-3:] == ["features.conv2", "features.relu2", "features.pool2"]


def test_float64_and_batch_chunks() -> None:
    model = _build("zfnet_small").double()
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64) * 60
    one = project(model, x, "conv5", torch.arange(6).view(3, 2), batch_size=1)
    many = project(model, x, "conv5", torch.arange(6).view(3, 2), batch_size=64)
    assert one.dtype == torch.float64
    torch.testing.assert_close(one, many)


@pytest.mark.parametrize("rule", RULES)
def test_gpu_gather_path_equals_cpu_copies(rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the windows are gathered in one indexing op instead of a copy per window
    (`_gather_into` gives no buffer there): the same projections, here forced on the CPU."""
    import zfnet.deconvnet as dn

    model = _build("zfnet_small")
    x = torch.randn(4, 3, 64, 64) * 60
    ch = torch.arange(12).view(4, 3)
    want = {layer: project(model, x, layer, ch, rule=rule, batch_size=5)
            for layer in ("conv2", "conv5")}
    calls: list[int] = []
    monkeypatch.setattr(dn, "_gather_into", lambda *a, **k: calls.append(1))  # gives None
    for layer, ref in want.items():
        torch.testing.assert_close(project(model, x, layer, ch, rule=rule, batch_size=5), ref,
                                   rtol=0, atol=0)
    assert calls  # the one-gather path was taken


def test_a_kept_forward_pass_gives_the_same_projections_by_every_rule() -> None:
    """`forward_pass` once, then seeds of several layers by each rule: the same as a fresh
    `project_layers` each time; the general path has no kept pass (None)."""
    from zfnet.deconvnet import Seeds, forward_pass, project_layers

    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", input_size=48).eval()
    x = torch.randn(2, 3, 48, 48) * 50
    fwd = forward_pass(model, x, ["conv2", "conv5", "relu3"])
    assert fwd is not None and set(fwd.chains) == {"conv2", "conv5", "relu3"}
    for rule in RULES:
        for layer, ch in (("conv5", [3, 7, 1]), ("conv2", [0, 5, 5]), ("relu3", [2, 2, 9])):
            seeds = {layer: Seeds([0, 1, 1], ch, torch.tensor([[1, 1], [0, 2], [2, 0]])
                                  if layer != "conv2" else None)}
            again = project_layers(model, x, seeds, rule, forward=fwd)[layer]
            fresh = project_layers(model, x, seeds, rule)[layer]
            assert torch.equal(again.values, fresh.values), (rule, layer)
            assert torch.equal(again.top, fresh.top) and torch.equal(again.left, fresh.left)
    with pytest.raises(ValueError, match="does not reach conv4"):
        project_layers(model, x, {"conv4": Seeds([0], [0])}, forward=fwd)
    with pytest.raises(ValueError, match="other images"):
        project_layers(model, x[:1], {"conv5": Seeds([0], [0])}, forward=fwd)
    assert forward_pass(model, x, ["fc6"]) is None  # off the chain: the general path
    assert not any(m._forward_hooks for m in model.modules())


def test_a_notebook_user_s_arguments() -> None:
    """What a user in a notebook passes: numpy's and 0-d tensors' ints, one layer name for
    `forward_pass`, an int size for `paste`; floats that are not whole are refused, not
    truncated; a model it cannot run on, or one without weights, is one ValueError."""
    import numpy as np

    model = _tv("alexnet")
    x = torch.randn(2, 3, 96, 96) * 60
    want = project(model, x, "features.10", 3)
    for ch in (np.int64(3), torch.tensor(3), [3, 3], np.array([3, 3])):
        torch.testing.assert_close(project(model, x, "features.10", ch), want)
    with pytest.raises(ValueError, match=r"for 2 images, got shape \(3,\)"):
        project(model, x, "features.10", [1, 2, 3])
    with pytest.raises(ValueError, match=r"positions must be whole numbers, got \[1.5"):
        project(model, x, "features.10", 3, torch.tensor([[1.5, 1.0], [0.0, 0.0]]))
    whole = torch.tensor([[1.0, 2.0], [0.0, 3.0]])  # floats that are whole numbers are fine
    torch.testing.assert_close(project(model, x, "features.10", 3, whole),
                               project(model, x, "features.10", 3, whole.long()))
    with pytest.raises(ValueError, match="channels must be whole numbers"):
        project_rf(model, x, "features.10", [0], [0.5])
    fwd = forward_pass(model, x, "features.10")
    assert fwd is not None and list(fwd.chains) == ["features.10"]
    rf = project_rf(model, x, "features.10", [0, 1], [3, 3])
    torch.testing.assert_close(paste(rf, 96), want)
    with pytest.raises(ValueError, match=r"AlexNet does not run on a 1x3x16x16 input \(.*small"):
        project(model, torch.randn(1, 3, 16, 16), "features.10", 0)
    meta = _tv("alexnet").to("meta")
    with pytest.raises(ValueError, match="AlexNet is on the meta device: it has the shapes but "
                       "no weights"):
        project(meta, x, "features.10", 0)
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().eval()
    with pytest.raises(ValueError, match="ResNet does not run on a 2x1x64x64 input"):
        project(resnet, torch.randn(2, 1, 64, 64), "layer2", 0)
    assert not any(m._forward_hooks for m in resnet.modules())


@pytest.mark.parametrize("layer", ["features.10", "layer2"])
def test_inside_inference_mode(layer: str) -> None:
    """A notebook cell under `torch.inference_mode()`: both engines give what they give
    outside it (the general path leaves inference mode for its walk down the graph)."""
    torch.manual_seed(0)
    model = (_tv("alexnet") if layer.startswith("features") else
             torchvision.models.resnet18().eval())
    x = torch.randn(2, 3, 64, 64) * 60
    want = project(model, x, layer, 5, rule="guided")
    with torch.inference_mode():
        got = project(model, x.clone(), layer, 5, rule="guided")
    torch.testing.assert_close(got, want)


# --- a chain the model's forward does not run as it is written ------------------------------


class _Normalised(nn.Module):
    """Normalises its input in `forward`, then runs `features`: walking `features` on the raw
    input would give other activations."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3), nn.ReLU())
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features((x - self.mean) / 0.25).mean((2, 3)))


class _OwnForward(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[3](self[2](self[1](self[0](x)) * 3.0 + 1.0))


def _odd_chains() -> dict[str, tuple[nn.Module, str]]:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    return {
        "normalised in forward": (_Normalised(), "features.4"),
        "a Sequential with its own forward": (
            _OwnForward(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()), "3"),
        "one module twice": (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), conv,
                                           nn.ReLU(), conv, nn.ReLU()), "5"),
    }


@pytest.mark.parametrize("case", list(_odd_chains()))
def test_a_chain_its_forward_does_not_run_as_written_takes_the_general_path(case) -> None:
    """The windowed engine and the mining walk `features` module by module only where the
    model's forward does just that; otherwise (normalisation in `forward`, a Sequential with
    its own forward, one module twice) they read the real forward, as for any model."""
    from torch.utils.data import TensorDataset

    from zfnet.analyses.topk import mine_topk
    from zfnet.deconvnet import windowed
    from zfnet.models import chain_runs_as_forward

    model, layer = _odd_chains()[case]
    model.eval()
    x = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    real = get_activations(model, x, [layer])[layer]  # (N, C, h, w) of the real forward
    best = real.flatten(2).max(2).values  # (N, C)
    ch = int(best[0].argmax())
    rf = project_rf(model, x, layer, [0], [ch])
    torch.testing.assert_close(rf.activation[0], best[0, ch])
    t = mine_topk(model, TensorDataset(x, torch.zeros(6)), [layer], k=3)[layer]
    want = best.T.topk(3, dim=1)  # per map: its 3 strongest images
    torch.testing.assert_close(t.values, want.values)
    assert not chain_runs_as_forward(model, x) and not windowed(model, [layer])
    for m in model.modules():  # the check leaves no hook behind
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_a_chain_its_forward_runs_as_written_keeps_the_windowed_engine() -> None:
    from zfnet.deconvnet import windowed
    from zfnet.models import chain_runs_as_forward

    torch.manual_seed(0)
    for model, layer in ((zfnet.create_model("zfnet_small"), "conv3"),
                         (torchvision.models.vgg11(), "features.8"),
                         (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True),
                                        nn.MaxPool2d(2)), "2")):
        x = torch.rand(2, 3, 64, 64)
        assert chain_runs_as_forward(model.eval(), x) and windowed(model, [layer], x)


def _autograd(model: nn.Module, x: torch.Tensor, module: nn.Module, ch: int) -> torch.Tensor:
    """The gradient of each image's strongest unit of map `ch` of `module` (its last call),
    by autograd through the model's own forward, hooks and all."""
    x = x.clone().requires_grad_()
    out: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda m, i, o: out.__setitem__("a", o))
    try:
        model(x)
    finally:
        handle.remove()
    a = out["a"][:, ch].flatten(1)
    a.gather(1, a.argmax(1, keepdim=True)).sum().backward()
    return x.grad


def test_forward_hooks_on_the_model_are_in_the_projection() -> None:
    """A notebook adds a hook after a first projection: a pre-hook normalising the input, a
    hook halving a convolution. The walk along the chain applied them on the way up only (the
    gradient 2x autograd's) or not at all (the first answer, kept per model); a hooked model
    takes the general path, and the chain again once the hooks are gone."""
    from zfnet.deconvnet import windowed

    torch.manual_seed(0)
    model = torchvision.models.alexnet(num_classes=10).eval()
    x = torch.randn(2, 3, 96, 96)
    conv = model.features[3]
    first = project(model, x, "features.3", 0, rule="gradient", seed="one")
    torch.testing.assert_close(first, _autograd(model, x, conv, 0))
    for hooked in (lambda: model.register_forward_pre_hook(lambda m, a: (a[0] * 2 - 1,)),
                   lambda: model.features[0].register_forward_hook(lambda m, i, o: o * 0.5)):
        handle = hooked()
        try:
            p = project(model, x, "features.3", 0, rule="gradient", seed="one")
            want = _autograd(model, x, conv, 0)
            assert not windowed(model, ["features.3"], x)
        finally:
            handle.remove()
        assert not torch.allclose(want, first, atol=1e-4)  # the hook matters here
        torch.testing.assert_close(p, want)
    assert windowed(model, ["features.3"], x)


def test_a_module_held_twice_is_read_at_its_last_call_and_named_by_its_first_path() -> None:
    """One ReLU at two places of a `features` chain: the walk's geometry put it at its first
    place (8 maps' size beside the second call's 16 maps), `repeated_layers` said nothing, and
    its second path, which `print(model)` shows, did not exist."""
    from zfnet.models import repeated_layers

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            relu = nn.ReLU()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), relu, nn.MaxPool2d(2),
                                          nn.Conv2d(8, 16, 3, padding=1), relu, nn.MaxPool2d(2))
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 64, 64)
    assert repeated_layers(model, 64) == {"features.1": 2}
    info = layer_info(model, 64)["features.1"]
    assert info.channels == 16 and info.geometry.rows.size == 32
    p = project(model, x, "features.1", 12, rule="gradient", seed="one")
    torch.testing.assert_close(p, _autograd(model, x, model.features[1], 12))
    with pytest.raises(UnknownLayerError, match="'features.4' is the module at 'features.1', "
                                                "one module held at both places"):
        project(model, x, "features.4", 0)


# --------------------------------------------------------------------------- seed="one"


@pytest.mark.parametrize("name,size,layer", [
    ("zfnet_small", 64, "conv3"),  # the windowed engine, a convolution before its ReLU
    ("tv:alexnet", 96, "features.8"),
    ("tv:resnet18", 64, "layer3.0.conv2"),  # the general path
])
def test_seed_one_is_captums_also_below_zero(name: str, size: int, layer: str) -> None:
    """seed="one" is Captum's seed of 1, with no rescaling, also at units below zero (each
    map's weakest unit), which the activation's seed projects to nothing."""
    if name == "tv:resnet18":
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10).eval()
    else:
        model = _build(name)
    ref = _captum_copy(model)
    torch.manual_seed(3)
    x = torch.randn(2, 3, size, size) * 60
    act = get_activations(model, x, [layer])[layer]  # (N, C, h, w)
    ch = torch.tensor([1, 5])
    w = act.shape[-1]
    weakest = act[torch.arange(2), ch].flatten(1).argmin(1)
    pos = torch.stack([weakest // w, weakest % w], 1)  # (N, 2)
    assert (act[torch.arange(2), ch, pos[:, 0], pos[:, 1]] < 0).all()
    for rule in RULES:
        ours = project(model, x, layer, ch, pos, rule=rule, seed="one")
        theirs, _ = _captum(ref, x, layer, ch, rule, pos)
        assert theirs.abs().amax() > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
        assert project(model, x, layer, ch, pos, rule=rule).abs().max() == 0  # the paper's seed


def test_seed_one_projects_a_class_score_below_zero() -> None:
    """A class whose score is below zero: seeded with 1, its projection is Captum's (the
    gradient of the score, by each rule); seeded with its value, nothing."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    torch.manual_seed(4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        scores = model(x)[0]
    k = int(scores.argmin())
    assert scores[k] < 0
    ref = _captum_copy(model)
    for rule in RULES:
        ours = project(model, x, "fc", k, rule=rule, seed="one")[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = getattr(captum_attr, _CAPTUM[rule])(ref, ref.fc).attribute(
                to_model(ref, x).clone(), neuron_selector=k)[0]
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
        assert project(model, x, "fc", k, rule=rule).abs().max() == 0


def test_an_unknown_seed_is_named() -> None:
    model = _build("zfnet_small")
    with pytest.raises(ValueError, match="seed='ones' is not known; valid: activation, one"):
        project(model, torch.zeros(1, 3, 64, 64), "conv1", 0, seed="ones")


def test_auto_precision_is_bfloat16_where_the_device_computes_it_natively(monkeypatch) -> None:
    import zfnet.train.recipe
    from zfnet.deconvnet import resolve_precision

    for given in ("float32", "bfloat16"):
        assert resolve_precision(given, "cpu") == resolve_precision(given, "cuda") == given
    for native, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(zfnet.train.recipe, "cpu_has_native_bf16", lambda n=native: n)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda n=native: n)
        assert resolve_precision("auto", "cpu") == want  # emulated bf16 is ~10x slower
        assert resolve_precision("auto", torch.device("cuda", 0)) == want
        assert resolve_precision("auto", "meta") == "float32"
    with pytest.raises(ValueError, match="precision='fp8' is not known; valid: auto, float32, "
                                         "bfloat16"):
        resolve_precision("fp8", "cpu")


def test_api_misuse_is_named_plainly() -> None:
    """A model's name for a model, a number for a layer, a string for channels: a TypeError
    saying what is expected; a forward pass that raises on its own is not blamed on the input's
    size."""
    net = torchvision.models.vgg11().eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module, got str \(to build "
                       r"'resnet18': zfnet.create_model or torchvision.models.get_model\)$"):
        layer_info("resnet18")
    with pytest.raises(TypeError, match=r"^layer must be a name \(str\) or one of the model's "
                       "modules, got int 5$"):
        project(net, x, 5, 1)
    with pytest.raises(TypeError, match=r"^channels must be whole numbers \(an int, a list or "
                       "a tensor of them\\), got str '1'$"):
        project(net, x, "features.3", "1")

    class Strict(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if y.mean() < 1e9:
                raise RuntimeError("this model refuses dark images")
            return y

    with pytest.raises(ValueError, match=r"^Strict's forward pass failed on a 1x3x64x64 input: "
                       r"RuntimeError: this model refuses dark images \(an error of the "
                       r"model's own code\)$"):
        project(Strict(), x, "conv", 0)


# --------------------------------------------------------------------------- progress


@pytest.mark.parametrize("name,size,layers", [
    ("zfnet_small", 64, ("conv2", "conv3")),  # the windowed engine
    ("tv:resnet18", 64, ("layer1", "layer2.0.conv1")),  # the general path
])
def test_project_layers_reports_each_batch_of_seeds_as_it_goes_down(name: str, size: int,
                                                                   layers: tuple) -> None:
    """A long projection (a gallery's hundreds of units) says how far it is: each batch of
    seeds reported as it goes down, every seed once, the same projections as without."""
    from zfnet.deconvnet import Seeds, project_layers

    torch.manual_seed(0)
    model = (torchvision.models.resnet18() if name == "tv:resnet18" else _build(name)).eval()
    x = torch.randn(3, 3, size, size)
    seeds = {layer: Seeds([0, 1, 2, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5, 6]) for layer in layers}
    reports: list[int] = []
    got = project_layers(model, x, seeds, batch_size=3, progress=reports.append)
    assert sum(reports) == 14 and len(reports) > 2 and all(r > 0 for r in reports), reports
    want = project_layers(model, x, seeds, batch_size=3)
    for layer in layers:
        assert torch.equal(got[layer].values, want[layer].values)
