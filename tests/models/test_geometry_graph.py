"""The geometry of any network (zfnet.models.geometry.graph_geometry) against brute force.

- Receptive fields: on torchvision's resnet18, resnet50, vgg11_bn, densenet121, googlenet,
  mobilenet_v2 and convnext_tiny (residual additions, concatenations, ceil-mode pooling, reused
  ReLUs, channel-last linear layers), units at corners, edges and centre: the box is the
  bounding box of where d unit / d input is nonzero, by autograd, on a twin of the model in
  which nothing can cancel (positive weights, average pools for max pools, a positive input).
- Sizes: every geometry's size is the shape a real forward pass gives; keys are module paths;
  a module called twice gives its last call.
- Reflection and replication padding, space-to-depth (a reshape into blocks, pixel_unshuffle):
  windows, against brute force.
- Where a unit mixes every position (global pooling, linear on a flattened map) or a node is not
  known (upsampling), None; a broadcast gate keeps the map's field, flagged.
- Equal to the chain's geometry on alexnet / vgg and zfnet's own models.
- The model is left as it was: flags, hooks, parameters (also when the forward fails, or runs
  on the model itself because it cannot run on the meta device).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F  # noqa: N812

import zfnet
from zfnet.models import layer_info
from zfnet.models.geometry import (
    GeometryError,
    LayerGeometry,
    chain_geometry,
    channels_last_layers,
    graph_geometry,
    sequential_leaves,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _tv(name: str, **kw: object) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None, **kw)


# --------------------------------------------------------------------------- brute force


def _twin(model: nn.Module) -> nn.Module:
    """A copy in which d unit / d input is nonzero exactly where the unit depends on the input:
    convolutions and linear layers with positive weights (each filter summing to 1, small
    positive biases), batch norm in eval as a positive scale, max-pools as average pools of the
    same window (a max-pool's gradient reaches one pixel of its window, an average all of them),
    ReLU6 as ReLU (it saturates) and layer norms as identities (position-wise; on a positive
    input their gradient sums to 0 over the maps). Fed a positive input, every activation is
    positive and nothing cancels."""
    twin = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(0)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                assert child.dilation in (1, (1, 1))
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride,
                                                   child.padding, child.ceil_mode))
            elif isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.ReLU())
            elif isinstance(child, nn.LayerNorm):
                setattr(parent, name, nn.Identity())
    for m in twin.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.weight.data = w / w[0].sum()
            if m.bias is not None:
                m.bias.data.fill_(0.01)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            m.weight.data.fill_(1.0)
            m.bias.data.fill_(0.01)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin.double()


def _units(h: int, w: int) -> list[tuple[int, int]]:
    """A corner, the middles of two edges, the centre and the opposite corner."""
    return sorted({(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2), (h - 1, w - 1)})


def _support_boxes(twin: nn.Module, size: tuple[int, int], paths: list[str],
                   in_channels: int = 3) -> dict[str, dict[tuple[int, int], tuple | None]]:
    """For each module path and unit (r, c): the bounding box (top, left, bottom, right) of
    the input pixels where d (sum over maps of the unit) / d input != 0 (None: nowhere)."""
    acts: dict[str, torch.Tensor] = {}
    handles = [twin.get_submodule(p).register_forward_hook(
        lambda _m, _i, out, p=p: acts.__setitem__(p, out.clone())) for p in paths]
    x = torch.ones(5, in_channels, *size, dtype=torch.float64, requires_grad=True)
    try:
        twin(x)
    finally:
        for h in handles:
            h.remove()
    boxes: dict[str, dict[tuple[int, int], tuple | None]] = {}
    for p in paths:
        a = acts[p]
        units = _units(*a.shape[-2:])
        picked = torch.stack([a[b, :, r, c].sum() for b, (r, c) in enumerate(units)])
        (grad,) = torch.autograd.grad(picked.sum(), x, retain_graph=True)
        boxes[p] = {}
        for b, u in enumerate(units):
            nz = grad[b].ne(0).any(0)
            rows, cols = nz.any(1).nonzero()[:, 0], nz.any(0).nonzero()[:, 0]
            boxes[p][u] = None if len(rows) == 0 else (
                int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    return boxes


def _assert_boxes(model: nn.Module, size: tuple[int, int], paths: list[str]) -> None:
    geo = graph_geometry(model, size)
    missing = [p for p in paths if geo.get(p) is None]
    assert not missing, f"no geometry for {missing}"
    support = _support_boxes(_twin(model), size, paths)
    for p in paths:
        assert not geo[p].gated
        for (r, c), got in support[p].items():
            assert got == geo[p].box(r, c, size), (size, p, (r, c))


# Per model: its builder's arguments, the input (small, one of them not square) and the
# layers checked: the stem, blocks with and without a downsampling shortcut, a ReLU module
# called twice in a block (its last call: after the addition), concatenations, ceil-mode and
# stride-1 max-pools, transitions, the deepest block.
CASES = {
    "resnet18": ({}, (97, 130), [
        "conv1", "maxpool", "layer1.0.relu", "layer1.1", "layer2.0.conv1",
        "layer2.0.downsample", "layer2.0", "layer3.1", "layer4"]),
    "resnet18-64": ({}, (64, 64), ["layer1", "layer2.0", "layer3.0.relu", "layer4.0", "layer4"]),
    "resnet50": ({}, (97, 130), ["layer1.0", "layer2.0.conv2", "layer2.0.downsample",
                                 "layer2.0", "layer3.0"]),
    "vgg11_bn": ({}, (97, 130), ["features.0", "features.3", "features.14", "features"]),
    "densenet121": ({}, (64, 64), [
        "features.pool0", "features.denseblock1.denselayer1", "features.denseblock1",
        "features.transition1", "features.denseblock2.denselayer4", "features.denseblock2"]),
    "googlenet": ({"aux_logits": False, "init_weights": False}, (97, 130), [
        "maxpool1", "conv3", "inception3a.branch3", "inception3a", "maxpool3",
        "inception4b"]),
    "mobilenet_v2": ({}, (97, 130), [
        "features.0", "features.1", "features.2", "features.3", "features.7", "features.14"]),
    "convnext_tiny": ({}, (64, 64), ["features.0", "features.1.0", "features.2",
                                     "features.3.1"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_receptive_fields_are_the_gradients_support(case: str) -> None:
    kw, size, paths = CASES[case]
    model = _tv(case.split("-")[0], **kw)
    if case.startswith("vgg"):
        model.classifier = nn.Identity()  # 120M weights after the layers looked at
    _assert_boxes(model, size, paths)


# --------------------------------------------------------------------------- sizes and keys


def _output_shapes(model: nn.Module, size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Each module's output shape (last call) in a real forward pass on the meta device."""
    shapes: dict[str, tuple[int, ...]] = {}
    meta = copy.deepcopy(model).to("meta").eval()
    for path, m in meta.named_modules():
        if path:
            m.register_forward_hook(
                lambda _m, _i, out, path=path: shapes.__setitem__(path, tuple(out.shape)))
    meta(torch.zeros(1, 3, *size, device="meta"))
    return shapes


@pytest.mark.parametrize("case", list(CASES))
def test_sizes_equal_a_real_forward_and_keys_are_module_paths(case: str) -> None:
    kw, size, _ = CASES[case]
    with torch.device("meta"):
        model = _tv(case.split("-")[0], **kw)
    geo = graph_geometry(model, size)
    shapes = _output_shapes(model, size)
    assert list(geo) == list(shapes)  # every module that runs, by path, in the order it ends
    paths = {p for p, _ in model.named_modules()}
    assert set(geo) <= paths and "" not in geo
    last = channels_last_layers(model, size)  # (N, H, W, C): rows and columns at dims 1, 2
    for path, g in geo.items():
        if g is not None:
            assert g.shape == (shapes[path][1:3] if path in last else shapes[path][-2:]), path
    assert bool(last) == (case == "convnext_tiny")
    convs = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(geo[p] is not None for p in convs), "every convolution has a geometry"


def test_a_module_called_twice_gives_its_last_call() -> None:
    """torchvision's BasicBlock calls `relu` after bn1 and again after the addition: its
    geometry is the block's. A ReLU shared by two resolutions gives the second."""
    geo = graph_geometry(_tv("resnet18"), 64)
    assert geo["layer2.0.relu"] == geo["layer2.0"] != geo["layer2.0.bn1"]

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, 2), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.b(self.act(self.a(x))))

    geo = graph_geometry(Twice(), 20)
    assert geo["act"] == geo["b"] and geo["act"].shape == (8, 8)


# --------------------------------------------------------------------------- what has none


def test_units_that_mix_every_position_have_none() -> None:
    """Global pooling (resnet's avgpool: a mean on the meta device), the linear layer after
    it, and a flatten into a vector: None. An adaptive pooling that is the identity (vgg's 7x7
    at 224) keeps the geometry; to an uneven size (97x130: 3x4 -> 7x7) it has none."""
    with torch.device("meta"):
        resnet, vgg = _tv("resnet18"), _tv("vgg11")
    geo = graph_geometry(resnet, 64)
    assert geo["avgpool"] is None and geo["fc"] is None and geo["layer4"] is not None
    geo = graph_geometry(vgg, 224)
    assert geo["avgpool"] == geo["features"] and geo["classifier.0"] is None
    assert graph_geometry(vgg, (97, 130))["avgpool"] is None


@pytest.mark.parametrize("device", ["meta", "cpu"])  # meta: a mean; cpu: adaptive pooling
def test_a_global_pooling_has_none_at_any_input_size(device: str) -> None:
    """A global pooling mixes every position also where its input is already 1x1 (resnet18's
    layer4 at 16 px): None there too, as at 64 and 224 (it was layer4's box at 16 px)."""
    with torch.device(device):
        resnet = _tv("resnet18")
    for size in (16, 64, 224):
        geo = graph_geometry(resnet, size)
        assert geo["avgpool"] is None and geo["layer4"] is not None, size
    assert graph_geometry(resnet, 16)["layer4"].shape == (1, 1)
    assert layer_info(resnet, 16)["avgpool"].geometry is None


def test_adaptive_pooling_to_a_divisor_is_a_window() -> None:
    """6x8 -> 3x4 by adaptive average / max pooling: windows of 2 at stride 2, exact."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.avg, self.max = nn.AdaptiveAvgPool2d((3, 4)), nn.AdaptiveMaxPool2d((3, 2))
            self.head = nn.Conv2d(4, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.max(self.avg(self.conv(x))))

    size = (6, 8)
    geo = graph_geometry(Net(), size)
    assert geo["avg"].jump == 2 and geo["avg"].shape == (3, 4) and geo["max"].shape == (3, 2)
    twin = _twin(Net())
    twin.max = nn.AdaptiveAvgPool2d((3, 2))
    support = _support_boxes(twin, size, ["avg", "max", "head"])
    for p in ("avg", "max", "head"):
        for (r, c), got in support[p].items():
            assert got == geo[p].box(r, c, size), (p, r, c)


def test_unknown_nodes_give_none_from_there_on() -> None:
    """Upsampling is not a window: the geometry stops there, never a wrong box; before it, it
    is kept. So does reflection padding followed by a window too narrow to hold the pixels it
    mirrors (kernel 2 after padding 1: the border unit reads pixels 0 and 1, the clipped box is
    pixel 0); a reflection padding layer's own output (its border copies pixels inside) has
    none either."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)
            self.b = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
            self.up = nn.Upsample(scale_factor=2)
            self.c = nn.Conv2d(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.up(self.b(self.a(x))))

    geo = graph_geometry(Net(), 16)
    assert geo["a"] is not None and geo["b"] is not None
    assert geo["up"] is None and geo["c"] is None
    geo = graph_geometry(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2)), 16)
    assert geo["0"] is not None and geo["1"] is None
    geo = graph_geometry(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReflectionPad2d(1),
                                       nn.Conv2d(4, 4, 2), nn.Conv2d(4, 4, 3)), 16)
    assert geo["0"] is not None and geo["1"] is None and geo["2"] is None and geo["3"] is None


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_reflection_and_replication_padding_against_brute_force(mode: str) -> None:
    """Convolutions with `padding_mode` reflect / replicate (a "same" padding, as in timm's blur
    pooling and image-to-image networks), stride 1 and 2, uneven sizes: the box is the
    gradient's support, equal to the zero-padded network's geometry."""

    def net(padding_mode: str) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode=padding_mode),
                             nn.Conv2d(4, 4, 5, stride=2, padding=2, padding_mode=padding_mode),
                             nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, padding_mode=padding_mode))

    size = (15, 22)
    _assert_boxes(net(mode), size, ["0", "1", "3"])
    assert graph_geometry(net(mode), size) == graph_geometry(net("zeros"), size)


class _SpaceToDepth(nn.Module):
    """TResNet's stem (timm's SpaceToDepth): each 4x4 block of pixels becomes 48 channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.view(n, c, h // 4, 4, w // 4, 4).permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(n, c * 16, h // 4, w // 4)  # (N, 16C, H/4, W/4)


def test_space_to_depth_is_a_window_of_its_block() -> None:
    """A reshape that splits rows and columns into blocks (TResNet's space-to-depth) and
    `pixel_unshuffle`: windows of kernel = stride = the block, against brute force, with the
    convolutions after them. The input has 3 channels though the first convolution takes 48:
    the geometry tries RGB when the first convolution's channels do not run. Splitting and
    merging back (pixel_shuffle after pixel_unshuffle) has no geometry."""
    s2d = nn.Sequential(_SpaceToDepth(), nn.Conv2d(48, 4, 3, padding=1), nn.Conv2d(4, 4, 3))
    _assert_boxes(s2d, (24, 32), ["0", "1", "2"])
    geo = graph_geometry(s2d, (24, 32))
    assert (geo["0"].rows.rf, geo["0"].rows.jump, geo["0"].shape) == (4, 4, (6, 8))
    unshuffle = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.PixelUnshuffle(2),
                              nn.Conv2d(16, 4, 3, stride=2))
    _assert_boxes(unshuffle, (22, 30), ["1", "2"])
    back = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 8, 1), nn.PixelShuffle(2),
                         nn.Conv2d(2, 4, 3))
    geo = graph_geometry(back, 16)
    assert geo["1"] is not None and geo["2"] is None and geo["3"] is None
    with pytest.raises(GeometryError, match="1x96x24x32"):  # neither 96 nor 3 runs: the first
        graph_geometry(nn.Sequential(_SpaceToDepth(), nn.Conv2d(96, 4, 3)), (24, 32))


def test_a_broadcast_gate_keeps_the_maps_field_flagged() -> None:
    """Squeeze-and-excitation (torchvision's, and one written with expand_as): the map times
    a per-channel scale computed from all of it. The geometry is the map's field with `gated`
    set — the box is the support once the gate is held fixed, while the gate itself reaches
    every pixel — and stays flagged through the layers after it."""

    class SE(nn.Module):
        def __init__(self, expand: bool) -> None:
            super().__init__()
            self.expand = expand
            self.conv = nn.Conv2d(3, 4, 3, stride=2)
            self.se = torchvision.ops.SqueezeExcitation(4, 2)
            self.fc = nn.Conv2d(4, 4, 1)
            self.head = nn.Conv2d(4, 4, 3)
            self.frozen = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if self.expand:  # the gate made as big as the map, then multiplied
                s = torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))
                y = y * (s.detach() if self.frozen else s).expand_as(y)
            elif self.frozen:
                y = y * self.se._scale(y).detach()
            else:
                y = self.se(y)
            return self.head(y)

    size = (17, 23)
    for expand in (False, True):
        geo = graph_geometry(SE(expand), size)
        assert not geo["conv"].gated and geo["head"].gated
        _check_gated_head(SE(expand), geo, size)


def _check_gated_head(model: nn.Module, geo: dict, size: tuple[int, int]) -> None:
    """`model` (conv 3x3/2, something gated, head conv 3x3): the head's field is the two
    convolutions' alone; with the gate held fixed (`model.frozen`), each unit's support is its
    box, and with it, every pixel the first convolution reads."""
    plain = graph_geometry(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3)), size)
    assert (geo["head"].rows, geo["head"].cols) == (plain["1"].rows, plain["1"].cols)
    twin = _twin(model)
    whole = _support_boxes(twin, size, ["head"])["head"]
    twin.frozen = True
    local = _support_boxes(twin, size, ["head"])["head"]
    for (r, c), got in local.items():
        assert got == geo["head"].box(r, c, size)
        assert whole[(r, c)] == (0, 0, geo["conv"].rows.reach, geo["conv"].cols.reach)


@pytest.mark.parametrize("groups", [2, 4])
def test_group_norm_keeps_the_maps_field_flagged(groups) -> None:
    """Group norm (BiT's, ResNetV2's), and instance norm (a group a map): each map less its
    group's mean, over its std, both of the whole map. As with a gate, the geometry is the
    map's field with `gated` set: the box is the support once the statistics are held fixed,
    while they reach every pixel."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2)
            self.gn = nn.GroupNorm(2, 4) if groups == 2 else nn.InstanceNorm2d(4, affine=True)
            self.head = nn.Conv2d(4, 4, 3)
            self.frozen = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if self.frozen:  # the norm by hand, its statistics constants
                g = y.reshape(y.shape[0], groups, -1)
                mean = g.mean(-1, keepdim=True).detach()
                std = (g.var(-1, unbiased=False, keepdim=True) + self.gn.eps).sqrt().detach()
                y = ((g - mean) / std).reshape(y.shape) * self.gn.weight[:, None, None] \
                    + self.gn.bias[:, None, None]
            else:
                y = self.gn(y)
            return self.head(y)

    size = (17, 23)
    geo = graph_geometry(Net(), size)
    assert not geo["conv"].gated and geo["gn"].gated and geo["head"].gated
    _check_gated_head(Net(), geo, size)


def test_reshapes_permutes_slices_and_pads() -> None:
    """Rows and columns followed through a channel split, a channel shuffle (view, transpose,
    view), a channels-last linear layer (permute, view to (N*H*W, C), addmm, view back),
    constant padding, a strided slice of rows and a concatenation: against brute force."""

    class PerPosition(nn.Module):  # a linear layer on the maps of each position
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.left = nn.Conv2d(4, 4, 5, padding=2)
            self.mix = PerPosition()
            self.pad = nn.ZeroPad2d((1, 0, 2, 1))
            self.out = nn.Conv2d(6, 4, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x)
            a, b = y.chunk(2, 1)
            y = torch.cat([self.left(a), b], 1)
            n, c, h, w = y.shape
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # shuffle
            y = self.mix(y)
            y = self.pad(y)[:, :, ::2]
            return self.out(y)

    size = (31, 40)
    geo = graph_geometry(Net(), size)
    assert all(geo[p] is not None for p in ("stem", "left", "mix", "pad", "out"))
    assert geo["mix"] == geo["left"]  # the union of `left`'s field and the stem's it holds
    assert geo["mix.lin"] == geo["mix"]  # channels last (N, H, W, C): the same units
    support = _support_boxes(_twin(Net()), size, ["pad", "out"])
    for p in ("pad", "out"):
        for (r, c), got in support[p].items():
            if p == "pad" and (r < 2 or r == 18 or c < 1):
                assert got is None  # the padding itself depends on no pixel
                continue
            assert got == geo[p].box(r, c, size), (p, r, c)
    assert geo["out"].rows.jump == 8 and geo["out"].cols.jump == 4  # the slice took every 2nd row


# --------------------------------------------------------------------------- chains


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "vgg16"])
def test_equal_to_the_chain_on_alexnet_and_vgg(name: str) -> None:
    with torch.device("meta"):
        model = _tv(name)
    leaves = sequential_leaves(model.features, "features.")
    for size in ((224, 224), (97, 130)):
        chain = chain_geometry([m for _, m in leaves], size)
        geo = graph_geometry(model, size)
        assert [geo[p] for p, _ in leaves] == chain


@pytest.mark.parametrize("name", zfnet.list_models())
def test_equal_to_zfnets_own_geometry(name: str) -> None:
    """zfnet's models (contrast normalisation its own autograd function): the graph gives the
    chain's geometry for every layer of `features`."""
    model = zfnet.create_model(name)
    geo = graph_geometry(model, model.config.input_size)
    own = {p: g for p, g in model.geometry.items() if p.startswith("features.")}
    assert own and all(geo[p] == g for p, g in own.items())


def test_layer_info_gives_every_torchvision_cnn_a_geometry() -> None:
    """layer_info: the graph's geometry for a ResNet (the chain's for vgg, unchanged), with
    kind and channels as before."""
    with torch.device("meta"):
        model = _tv("resnet18")
    infos = layer_info(model, 64)
    geo = graph_geometry(model, 64)
    assert [i.module for i in infos.values()] == [
        p for p, m in model.named_modules() if p and not any(True for _ in m.children())]
    for info in infos.values():
        assert info.geometry == geo[info.module]
    assert infos["layer4.1.conv2"].kind == "conv" and infos["layer4.1.conv2"].channels == 512
    assert infos["layer4.1.conv2"].geometry.shape == (2, 2)
    assert infos["fc"].geometry is None and infos["fc"].kind == "fc"
    assert layer_info(model)["layer4.1.conv2"].geometry.shape == (7, 7)  # default: 224


@pytest.mark.parametrize("name", ["densenet121", "efficientnet_b0", "alexnet", "convnext_tiny"])
def test_layer_info_channels_are_the_outputs_own(name: str) -> None:
    """channels is each layer's real output count, not the last convolution's carried forward:
    a DenseNet's transition and final norm after a concatenation (256, 1024 — not 32), inside
    an EfficientNet's squeeze-and-excitation gate (8 — not 32), alexnet's classifier dropout
    after the flattening (9216), a ConvNeXt's channels-last layers."""
    model = _tv(name).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [m.register_forward_hook(
        lambda _m, _i, o, p=p: shapes.__setitem__(p, tuple(o.shape)))
        for p, m in model.named_modules() if p and not any(True for _ in m.children())]
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    for h in handles:
        h.remove()
    infos = layer_info(model, 64)
    for path, shape in shapes.items():
        channels_last = len(shape) == 4 and shape[1] == shape[2] != shape[3]  # square input
        assert infos[path].channels == shape[-1 if channels_last or len(shape) != 4 else 1], path
    expect = {"densenet121": {"features.transition1.norm": 256, "features.norm5": 1024},
              "efficientnet_b0": {"features.1.0.block.1.activation": 8},
              "alexnet": {"classifier.0": 9216},
              "convnext_tiny": {"features.1.0.block.3": 384}}[name]
    assert {p: infos[p].channels for p in expect} == expect


def test_layer_info_of_a_model_that_cannot_run_the_input() -> None:
    """A model that takes 32x32 only: layer_info without an input size (224 is a guess) lists
    its layers without geometry; given 32, with; given a size it cannot run, GeometryError."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    assert [i.geometry for i in layer_info(net).values()] == [None] * 4
    assert layer_info(net, 32)["0"].geometry == chain_geometry([net[0]], 32)[0]
    with pytest.raises(GeometryError, match="Sequential does not run on a 1x3x40x40 input"):
        layer_info(net, 40)


def test_layer_info_of_a_chain_too_small_for_the_input() -> None:
    """A plain chain (alexnet's features) read along the chain says so too: no map of 0 or
    fewer pixels; a size under 1 px is refused."""
    alexnet = torchvision.models.alexnet()
    assert layer_info(alexnet, 64)["features.12"].geometry.shape == (1, 1)
    with pytest.raises(GeometryError, match=r"AlexNet does not run on a 8x8 input "
                       r"\(features.2's output would be 0x0\)"):
        layer_info(alexnet, 8)
    with pytest.raises(ValueError, match="input_size 0 must be at least 1 px"):
        layer_info(alexnet, 0)


# --------------------------------------------------------------------------- the model


def _snapshot(model: nn.Module) -> tuple:
    return ([(m.training, dict(m._forward_hooks), dict(m._forward_pre_hooks))
             for m in model.modules()],
            [(p, p.device, p.requires_grad, p.detach().clone()) for p in model.parameters()],
            [b.clone() for b in model.buffers()])


def _assert_same(model: nn.Module, before: tuple) -> None:
    modules, params, buffers = _snapshot(model)
    assert modules == before[0]
    for (p, dev, rg, val), (p0, dev0, rg0, val0) in zip(params, before[1], strict=True):
        assert p is p0 and dev == dev0 and rg == rg0 and torch.equal(val, val0)
    assert all(torch.equal(a, b) for a, b in zip(buffers, before[2], strict=True))


def test_the_model_is_left_as_it_was() -> None:
    """Mixed train / eval flags, frozen and trainable parameters, batch-norm statistics: all
    as before, no hook left, also when the forward pass fails (GeometryError, one line)."""
    model = _tv("resnet18")
    model.layer2.eval()
    model.layer1.requires_grad_(False)
    before = _snapshot(model)
    graph_geometry(model, 64)
    _assert_same(model, before)
    with pytest.raises(GeometryError, match=r"ResNet does not run on a 1x1x64x64 input") as e:
        graph_geometry(model, 64, in_channels=1)
    assert "\n" not in str(e.value)
    _assert_same(model, before)


def test_a_model_that_cannot_run_on_meta_runs_on_a_zero_input() -> None:
    """A forward pass that reads a value (`.item()`) has no meta kernel: the geometry comes
    from the model itself on zeros, in eval mode, flags and hooks restored after."""

    class Reads(nn.Module):
        seen: list[bool] = []  # noqa: RUF012  (on the class: shared with the meta copy)

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(x.is_meta)
            if x.abs().sum().item() >= 0:  # data-dependent: no meta kernel
                x = self.conv(x)
            return self.bn(x)

    model = Reads().train()
    before = _snapshot(model)
    geo = graph_geometry(model, 15)
    assert model.seen == [True, False]  # tried on the meta device, then on the model
    want = chain_geometry([model.conv], 15)[0]
    assert geo["conv"] == want and geo["bn"] == want
    _assert_same(model, before)


def test_the_pass_is_remembered_per_model_until_its_modules_change(monkeypatch) -> None:
    """Listing a network's layers, their geometry and the layer its classifier reads each ask
    for the forward pass: one pass per model, input size and channels, done again where a
    module is replaced, resized or set otherwise; a pass on the model itself (no meta kernel)
    is not kept (it holds the model's activations)."""
    from zfnet.models import geometry, vector_layer

    passes: list[bool] = []
    forward = geometry._forward
    monkeypatch.setattr(geometry, "_forward",
                        lambda m, x: passes.append(x.is_meta) or forward(m, x))
    model = _tv("resnet18")
    geo = graph_geometry(model, 64)
    assert passes == [True]
    layer_info(model, 64), vector_layer(model, 64), channels_last_layers(model, 64, 3)
    assert graph_geometry(model, 64) == geo and passes == [True]  # in_channels None or 3: one
    assert graph_geometry(copy.deepcopy(model), 64) == geo and len(passes) == 2  # another model
    graph_geometry(model, 96)
    assert len(passes) == 3 and graph_geometry(model, 64) == geo and len(passes) == 3
    model.fc = nn.Linear(512, 10)  # a new head, the same type at the same path
    assert layer_info(model, 64)["fc"].channels == 10 and len(passes) == 4
    model.layer4[0].conv1.stride = (1, 1)
    model.layer4[0].downsample[0].stride = (1, 1)  # set otherwise: its maps twice as large
    assert graph_geometry(model, 64)["layer4"].shape == (4, 4) and len(passes) == 5
    assert geo["layer4"].shape == (2, 2)

    class Reads(nn.Module):  # no meta kernel: the pass runs on the model, every time
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.abs().sum().item() >= 0 else x

    reads, passes[:] = Reads(), []
    graph_geometry(reads, 15), graph_geometry(reads, 15)
    assert passes == [True, False, True, False]


def test_geometry_is_a_layer_geometry_and_in_channels_is_read() -> None:
    """A one-channel model (the first convolution's in_channels) and an explicit one."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    geo = graph_geometry(net, 8)
    assert isinstance(geo["0"], LayerGeometry) and geo["1"] is None and geo["2"] is None
    with pytest.raises(GeometryError, match="1x3x8x8"):
        graph_geometry(net, 8, in_channels=3)
    with pytest.raises(ValueError, match="input_size must be positive"):
        graph_geometry(net, (0, 8))


def test_functional_and_in_place_operations() -> None:
    """Operations called as functions (no module) are in the graph all the same, and a
    module's output is the tensor as it left the module, whatever is done to it in place
    after: an in-place ReLU, F.max_pool2d, an in-place residual addition of a wider branch."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True)
            self.b, self.out = nn.Conv2d(4, 4, 3, padding=1), nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.max_pool2d(self.relu(self.a(x)), 3, 2, ceil_mode=True)
            y += self.b(y)
            return self.out(y)

    geo = graph_geometry(Net(), 20)
    chain = chain_geometry([nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(3, 2, ceil_mode=True),
                            nn.Conv2d(4, 4, 3, padding=1)], 20)
    assert geo["a"] == geo["relu"] == chain[0] and geo["b"] == geo["out"] == chain[2]


def test_channels_last_layers() -> None:
    """Outputs laid out (N, H, W, C): inside torchvision's ConvNeXt blocks (after the permute:
    LayerNorm, the linear layers, GELU), not the blocks themselves nor a ResNet's layers; a
    layer of a permuted map that is (N, C, H, W) again is not one."""
    from zfnet.models.geometry import channels_last_layers

    with torch.device("meta"):
        convnext, resnet = _tv("convnext_tiny"), _tv("resnet18")
    last = channels_last_layers(convnext, 64)
    assert {"features.1.0.block.2", "features.1.0.block.3", "features.1.0.block.4"} <= last
    assert not {"features.1.0", "features.1.0.block.0", "features.1.0.block.6", "features.1",
                "features.2"} & last
    assert channels_last_layers(resnet, 64) == set()



def test_channels_last_layers_past_units_that_mix_rows() -> None:
    """Where a unit has no box (an LSTM run along each row of a (N, H, W, C) map, as in
    Sequencer2d; attention over a whole (N, C, H, W) map), rows and columns are still followed:
    the layers after it are channels-last where they are, and a convolution's output is not."""
    from zfnet.activations import get_activations
    from zfnet.models.geometry import channels_last_layers

    class Attention(nn.Module):  # every position attends to every other, on (N, C, H, W)
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Conv2d(4, 12, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, c, h, w = x.shape
            q, k, v = self.qkv(x).flatten(2).chunk(3, 1)  # (N, C, HW) each
            a = torch.softmax(q.transpose(1, 2) @ k, -1)  # (N, HW, HW)
            return (v @ a.transpose(1, 2)).reshape(n, c, h, w)

    class RowMixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.lstm = nn.LSTM(8, 6, batch_first=True)
            self.fc = nn.Linear(6, 5)
            self.down = nn.Conv2d(5, 4, 2, stride=2)
            self.act = nn.GELU()
            self.attn = Attention()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x).permute(0, 2, 3, 1)  # (N, H, W, 8)
            n, h, w, c = y.shape
            r, _ = self.lstm(y.reshape(n * h, w, c))  # along each row
            y = self.fc(r.reshape(n, h, w, -1))  # (N, H, W, 5)
            y = self.down(y.permute(0, 3, 1, 2))  # (N, 4, H/2, W/2)
            return self.act(self.attn(y).permute(0, 2, 3, 1))  # (N, H/2, W/2, 4)

    torch.manual_seed(0)
    model = RowMixer().eval()
    size = (12, 20)
    assert channels_last_layers(model, size) == {"fc", "act"}
    geo = graph_geometry(model, size)
    assert geo["stem"] is not None and geo["fc"] is None and geo["attn"] is None
    x = torch.randn(2, 3, *size)
    acts = get_activations(model, x, ["fc", "down", "attn", "act"])
    assert acts["fc"].shape == (2, 5, 6, 10) and acts["act"].shape == (2, 4, 3, 5)
    assert acts["down"].shape == acts["attn"].shape == (2, 4, 3, 5)


def test_layer_info_of_a_zfnet_model_at_another_size_is_refused() -> None:
    """zfnet's models run their own input size only (fc6 is sized for it): layer_info at
    another one is a GeometryError, not that size's geometry silently replaced by 64's."""
    model = zfnet.create_model("zfnet_small", input_size=64)
    assert layer_info(model, 64)["conv5"].geometry == layer_info(model)["conv5"].geometry
    with pytest.raises(GeometryError, match="takes 64x64 inputs only .* not 8x8; give "
                                            "input_size 64"):
        layer_info(model, 8)
