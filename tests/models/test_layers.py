"""Choosing layers for any model (zfnet.models.layers): the stages the analyses show, the first
two convolutions, the last spatial layer and the vector the classifier reads — on zfnet's
models and on torchvision's alexnet, vgg11_bn, resnet18, densenet121, googlenet and
mobilenet_v2, each checked against a real forward pass where it can be."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

import zfnet
from zfnet.activations import get_activations
from zfnet.models import (
    UnknownLayerError,
    feature_layers,
    first_convs,
    last_spatial_layer,
    layer_geometries,
    layer_info,
    repeated_layers,
    resolve_layer,
    score_layer,
    vector_layer,
)
from zfnet.models.geometry import graph_geometry

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64


def _tv(name: str) -> nn.Module:
    kw: dict = {"weights": None}
    if name == "googlenet":
        kw.update(aux_logits=False, init_weights=False)
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(**kw).eval()


STAGES = {
    "alexnet": ["features.0", "features.3", "features.6", "features.8", "features.10"],
    # the last convolution at each resolution (before each pooling): 5 of its 8; each after
    # its batch norm and ReLU, the map the next layer reads (a negative scale inverts it)
    "vgg11_bn": ["features.2", "features.6", "features.13", "features.20", "features.27"],
    "vgg16": ["features.2", "features.7", "features.14", "features.21", "features.28"],
    "resnet18": ["relu", "layer1", "layer2", "layer3", "layer4"],  # the stem after bn1, relu
    # the last stage at each resolution, and the first: not a transition before its block
    "densenet121": ["features.relu0", "features.denseblock1", "features.denseblock2",
                    "features.denseblock3", "features.denseblock4"],
    "googlenet": ["conv1", "conv3", "inception3b", "inception4e", "inception5b"],
    "mobilenet_v2": [f"features.{i}" for i in (0, 1, 3, 6, 13, 18)],
    "mobilenet_v3_small": [f"features.{i}" for i in (0, 1, 3, 8, 12)],
}
VECTOR = {"alexnet": "classifier.5", "vgg11_bn": "classifier.4", "vgg16": "classifier.4",
          "resnet18": "avgpool",
          "densenet121": "features.norm5", "googlenet": "avgpool",
          "mobilenet_v2": "classifier.0", "mobilenet_v3_small": "classifier.1"}


def test_zfnet_models_keep_their_names() -> None:
    for name in ("zfnet_small", "alexnet_small"):
        model = zfnet.create_model(name)
        assert feature_layers(model) == [f"conv{i}" for i in range(1, 6)]
        assert first_convs(model) == ["conv1", "conv2"]
        assert last_spatial_layer(model) == "conv5"
        assert vector_layer(model) == "relu7"


@pytest.mark.parametrize("name", list(STAGES))
def test_stages_of_torchvision_models(name) -> None:
    model = _tv(name)
    layers = feature_layers(model, SIZE)
    assert layers == STAGES[name]
    assert last_spatial_layer(model, SIZE) == layers[-1]
    # each one a map with a spatial geometry, in forward order
    geo = graph_geometry(model, SIZE)
    order = list(geo)
    assert all(geo[p] is not None for p in layers)
    assert [order.index(p) for p in layers] == sorted(order.index(p) for p in layers)
    # the geometry of each, containers too, is graph_geometry's (and the chain's on chains)
    got = layer_geometries(model, layers, SIZE)
    for p in layers:
        assert got[p] is not None and got[p].shape == geo[p].shape


def _run_order(model: nn.Module) -> tuple[list[str], dict[str, torch.Tensor], torch.Tensor]:
    """By a real forward pass: the Conv2d modules in the order they run, every module's output,
    and the input of the last nn.Linear to run."""
    ran: list[str] = []
    outs: dict[str, torch.Tensor] = {}
    head_in: list[torch.Tensor] = []
    handles = []
    for path, m in model.named_modules():
        if not path:
            continue
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_pre_hook(
                lambda _m, _i, p=path: ran.append(p) if p not in ran else None))
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_pre_hook(
                lambda _m, i: head_in.append(i[0].detach().clone())))
        handles.append(m.register_forward_hook(
            lambda _m, _i, o, p=path: outs.__setitem__(p, o.detach().clone())))
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, SIZE, SIZE))
    finally:
        for h in handles:
            h.remove()
    return ran, outs, head_in[-1]


@pytest.mark.parametrize("name", list(STAGES))
def test_first_convs_and_vector_layer_by_a_real_forward_pass(name) -> None:
    model = _tv(name)
    ran, outs, head_in = _run_order(model)
    # 1x1 convolutions mix channels, with no filter to see: Fig. 6 takes those with a kernel
    spatial = [p for p in ran if model.get_submodule(p).kernel_size != (1, 1)]
    assert first_convs(model, 2, SIZE) == spatial[:2]
    assert first_convs(model, 3, SIZE) == spatial[:3]
    if name == "googlenet":
        assert spatial[:2] == ["conv1.conv", "conv3.conv"] != ran[:2]
    vec = vector_layer(model, SIZE)
    assert vec == VECTOR[name]
    out = outs[vec]
    if name == "densenet121":  # rectified and pooled in forward(), by no module
        out = torch.relu(out).mean((2, 3))
    torch.testing.assert_close(out.flatten(1), head_in)


def test_no_linear_layer_and_no_conv() -> None:
    torch.manual_seed(0)
    squeeze = torchvision.models.squeezenet1_0(weights=None).eval()  # a 1x1 conv classifier
    assert vector_layer(squeeze, SIZE) == last_spatial_layer(squeeze, SIZE) == "features.12"
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ValueError, match=r"no stage with a spatial map to show; give the layers "
                                         r"\(--layer\); `zfnet models` lists them"):
        feature_layers(mlp, 8)
    with pytest.raises(ValueError, match="no Conv2d"):
        first_convs(mlp, 2, 8)
    # 1x1 convolutions fill in only where too few have a kernel, the 3x3 kept, in order
    pointwise = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(),
                              nn.Conv2d(4, 4, 3), nn.ReLU())
    assert first_convs(pointwise, 2, 8) == ["0", "4"]


class _Whole(nn.Module):
    """A wrapper around a whole network, as people write one (and Hugging Face's timm
    wrapper is): its one child's output is the logits, no map."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_the_stages_of_a_network_wrapped_whole_are_found() -> None:
    torch.manual_seed(0)
    wrapped = _Whole().eval()
    assert feature_layers(wrapped, SIZE) == ["net.relu", *(f"net.layer{i}" for i in range(1, 5))]
    assert (last_spatial_layer(wrapped, SIZE), vector_layer(wrapped, SIZE)) == (
        "net.layer4", "net.avgpool")


def test_a_backbone_inside_a_wrapper_is_found() -> None:
    """Fewer than 3 stages at the top: each is replaced by its own stages."""
    torch.manual_seed(0)
    inner = torchvision.models.resnet18(weights=None)
    wrapped = nn.Sequential(nn.Sequential(inner.conv1, inner.bn1, inner.relu, inner.maxpool,
                                          inner.layer1, inner.layer2, inner.layer3,
                                          inner.layer4),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)).eval()
    assert feature_layers(wrapped, SIZE) == ["0.2", "0.4", "0.5", "0.6", "0.7"]
    assert vector_layer(wrapped, SIZE) == "1"
    assert resolve_layer(wrapped, "0.4")[1] is inner.layer1


def test_stages_that_output_channels_last_maps() -> None:
    """timm's MambaOut: every stage outputs (N, H, W, C); its stages are the layers to show, and
    each is read as (N, C, H, W) maps of the stage's width at the stage's resolution."""
    timm = pytest.importorskip("timm")
    from zfnet.activations import get_activations

    if "mambaout_femto" not in timm.list_models():
        pytest.skip(f"timm {timm.__version__} has no MambaOut")

    torch.manual_seed(0)
    model = timm.create_model("mambaout_femto", pretrained=False).eval()
    layers = feature_layers(model, SIZE)
    assert layers == ["stem", "stages.0", "stages.1", "stages.2", "stages.3"]
    acts = get_activations(model, torch.randn(1, 3, SIZE, SIZE), layers)
    geo = layer_geometries(model, layers, SIZE)
    widths = [48, 48, 96, 192, 288]  # the stem's, then its stages' dims
    for name, width in zip(layers, widths, strict=True):
        assert acts[name].shape == (1, width, *geo[name].shape), name


def test_the_stages_of_a_group_norm_network() -> None:
    """BiT, timm's ResNetV2: group norm's statistics span the whole map, yet each stage keeps
    its units' boxes (`graph_geometry`), so the stages are found as a batch-norm ResNet's."""
    model = torchvision.models.resnet18(norm_layer=lambda c: nn.GroupNorm(2, c))
    # the stem after its norm and ReLU, as a batch-norm ResNet's
    assert feature_layers(model) == ["relu", "layer1", "layer2", "layer3", "layer4"]


def test_the_convolutional_stages_of_a_hybrid_are_found() -> None:
    """A hybrid (EfficientFormerV2, CoAtNet, MobileViT): its `stages` end with attention over
    the whole map, so their output has no box, but its first, convolutional, stages do."""

    class Attention(nn.Module):  # every position attends to every other
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = x.flatten(2).transpose(1, 2)  # (N, HW, C)
            a = torch.softmax(t @ t.transpose(1, 2) / t.shape[-1] ** 0.5, -1)
            return (a @ t).transpose(1, 2).reshape(x.shape)

    def stage(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU())

    class Hybrid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = stage(3, 8)
            self.stages = nn.Sequential(stage(8, 16), stage(16, 24),
                                        nn.Sequential(stage(24, 32), Attention()))
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stages(self.stem(x)).mean((2, 3)))

    assert feature_layers(Hybrid(), 64) == ["stem", "stages.0", "stages.1", "stages.2.0"]


def test_a_block_of_one_convolution_stays_the_block() -> None:
    """Two blocks at the top, each of one convolution (with its norm, rectifier and pooling,
    or a residual with functional ReLUs): the blocks' outputs are the stages, not their
    convolutions' (which come before the rectifier)."""

    class Residual(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.conv(x))

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                             nn.ReLU(), nn.MaxPool2d(2))

    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(block1=block(3, 8), block2=block(8, 16),
                                    pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                    fc=nn.Linear(16, 4))).eval()
    assert feature_layers(net, 32) == ["block1", "block2"]
    res = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 8, 3), res=Residual(8),
                                    pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                    fc=nn.Linear(8, 4))).eval()
    assert feature_layers(res, 32) == ["stem", "res"]


def test_a_chain_of_blocks_inside_one_module_is_split_by_resolution() -> None:
    """timm's EfficientNet keeps its blocks in one `blocks` Sequential beside `conv_stem` and
    `conv_head`: the blocks are the stages, the last at each resolution shown."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False).eval()
    assert feature_layers(model, SIZE) == ["conv_stem", "blocks.0", "blocks.1", "blocks.2",
                                           "blocks.4", "conv_head"]


def test_every_layer_has_a_kind_a_reader_recognises() -> None:
    """Rectifiers apart from other activations (the deconvnet is defined for the first only),
    every pooling and normalisation by its family, anything else by its class name."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.SiLU(), nn.GroupNorm(2, 8),
                        nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(),
                        nn.Linear(8, 2))
    kinds = [i.kind for i in layer_info(net, 16).values()]
    assert kinds == ["conv", "relu", "act", "norm", "norm", "pool", "flatten", "dropout", "fc"]


def test_modules_called_more_than_once_are_counted() -> None:
    """A BasicBlock calls its one ReLU twice, a Bottleneck three times; the geometry (and a
    hook) sees the last call, after the residual sum."""
    r18 = torchvision.models.resnet18()
    assert repeated_layers(r18, SIZE) == {f"layer{s}.{b}.relu": 2 for s in range(1, 5)
                                          for b in range(2)}
    assert set(repeated_layers(torchvision.models.resnet50(), SIZE).values()) == {3}
    info = layer_info(r18, SIZE)
    # its first call (after bn1) would have bn1's field; the last sees through conv2 too
    assert info["layer1.0.relu"].geometry.rf == info["layer1.0.conv2"].geometry.rf > info[
        "layer1.0.bn1"].geometry.rf
    assert repeated_layers(zfnet.create_model("zfnet_small"), 64) == {}
    assert repeated_layers(torchvision.models.mobilenet_v2(), SIZE) == {}


@pytest.mark.parametrize("name,want", [("resnet18", "fc"), ("vgg11_bn", "classifier.6"),
                                       ("densenet121", "classifier"),
                                       ("squeezenet1_1", "classifier.3")])
def test_the_score_layer_outputs_the_logits(name, want) -> None:
    """The layer whose units the weights' class names name: its output is the model's."""
    net = getattr(torchvision.models, name)(num_classes=7).eval()
    assert score_layer(net) == want
    x = torch.randn(1, 3, SIZE, SIZE)
    out = get_activations(net, x, [want])[want]
    torch.testing.assert_close(out.flatten(1), net(x))
    assert score_layer(zfnet.create_model("zfnet_small")) == "fc8"


def test_an_unknown_layer_names_the_closest_and_a_deep_networks_top_modules() -> None:
    """A misspelt or mis-cased name gets its nearest names; a network of 67 layers lists its
    top-level modules and says how to see all; a comma list that a one-layer option got is
    told as such."""
    net = torchvision.models.resnet18()
    cases = {
        "Layer3": "did you mean layer3? ",
        "layr4": "did you mean layer4, layer4.1 or layer4.0? ",
        "conv5": "did you mean conv1? ",
    }
    for name, hint in cases.items():
        with pytest.raises(UnknownLayerError) as e:
            resolve_layer(net, name)
        assert str(e.value) == (
            f"layer '{name}' does not exist in ResNet; {hint}valid: conv1, bn1, relu, maxpool, "
            "layer1, layer2, layer3, layer4, avgpool, fc and the modules inside them (67 in "
            "all: `zfnet models SOURCE` lists them; from Python, zfnet.layer_info(model))")
    with pytest.raises(UnknownLayerError, match=r"^layer 'layer3,layer4' names 2 layers; this "
                       "takes one$"):
        resolve_layer(net, "layer3,layer4")
    with pytest.raises(UnknownLayerError, match="'conv9' does not exist in ConvNet; did you "
                       r"mean conv5, conv4 or conv3\? valid: conv1, relu1"):
        resolve_layer(zfnet.create_model("zfnet_small"), "conv9")


def test_layer_info_channels_of_any_output_and_modules_not_called() -> None:
    """A module the forward pass never calls has `runs` False and no channels (they read as
    blank maps); attention's (N, heads, L, D) has D, tokens' last dim, not the heads; a
    squeeze-and-excitation gate's (N, C, 1, 1) and a channels-first norm that permutes to
    (N, H, W, C) and back keep C; a Swin's (N, H, W, C) after attention has C, not H."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.squeeze = nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 2, 1)
            self.skip = nn.Dropout()  # not called
            self.norm = nn.LayerNorm(8)
            self.qkv, self.q_norm = nn.Linear(8, 24), nn.Identity()
            self.after = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            gate = self.squeeze(x.mean((2, 3), keepdim=True))
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * gate.sum(1, True)
            n, c, h, w = x.shape
            q, k, v = self.qkv(x.flatten(2).transpose(1, 2)).reshape(
                n, h * w, 3, 2, 4).permute(2, 0, 3, 1, 4)
            q = self.q_norm(q)
            att = torch.softmax(q @ k.transpose(-2, -1), -1) @ v  # (N, 2, L, 4)
            return self.after(att.transpose(1, 2).reshape(n, h, w, c))  # (N, H, W, C)

    info = layer_info(Net(), 21)  # 10x10 maps
    assert not info["skip"].runs and info["skip"].channels is None
    assert info["stem"].runs and info["stem"].channels == 8
    assert info["squeeze"].channels == 2 and info["norm"].channels == 8
    assert info["qkv"].channels == 24 and info["q_norm"].channels == 4
    assert info["after"].channels == 8
