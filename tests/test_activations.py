"""zfnet.activations: a layer's output as the layer gave it, whatever runs after it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from zfnet.activations import capture, get_activations, to_model


class _Residual(nn.Module):
    """A block whose batch-norm output is then changed in place by a plain op (as a ResNet's
    `out += identity`), with no in-place module anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x.mean(1, keepdim=True)
        return torch.relu(out)


def test_an_in_place_op_after_the_layer_does_not_change_what_was_read() -> None:
    model = _Residual().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # on the layout get_activations runs it on (channels-last on a CPU)
        want = model.bn(model.conv(to_model(model, x)))
    got = get_activations(model, x, ["bn"])["bn"]
    assert torch.equal(got, want)
    assert not model.bn._forward_hooks  # no hook left


def test_capture_keeps_what_is_not_a_tensor_as_it_is() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, -x

    model = nn.Sequential(Pair())
    x = torch.ones(1, 3, 2, 2)
    with capture(model, ["0"]) as store:
        model(x)
    assert isinstance(store["0"], tuple) and torch.equal(store["0"][1], -x)


class _PerPosition(nn.Module):
    """A linear layer on each position's channels, as in a ConvNeXt block: (N, H, W, C) inside."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.lin = nn.Linear(4, 6)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.lin(self.conv(x).permute(0, 2, 3, 1)))
        return y.permute(0, 3, 1, 2)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_channels_last_outputs_are_read_as_maps() -> None:
    """Outputs laid out (N, H, W, C) are stored as (N, C, H, W) views — at every input size,
    and only those; also where the geometry's walk, which runs inside the forward pass, cannot
    run on a meta copy and runs the model itself; no hook is left, also after an exception."""
    model = _PerPosition().eval()
    for size in ((7, 9), (5, 5)):
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
        got = get_activations(model, x, ["conv", "lin", "act"])
        with torch.no_grad():  # on the layout get_activations runs it on
            lin = model.lin(model.conv(to_model(model, x)).permute(0, 2, 3, 1))
            out = model(to_model(model, x))
        assert got["lin"].shape == (2, 6, *size)
        assert torch.equal(got["lin"], lin.permute(0, 3, 1, 2))
        assert torch.equal(got["act"], out)  # the model's output is its permuted GELU
        assert got["conv"].shape == (2, 4, *size)
    assert _hooks(model) == 0
    with capture(model, ["lin"]) as store:
        model(x)
        assert store["lin"].device == x.device and len(store) == 1
        try:
            model(torch.randn(1, 5, 4, 4))  # wrong channels: the forward fails
        except RuntimeError:
            pass
    assert _hooks(model) == 0


class _ReadsAValue(_PerPosition):
    """`.item()` in the forward pass: no meta copy runs it, the geometry's walk runs the model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (1 + 0 * float(x.detach().sum()))


def test_channels_last_outputs_of_a_model_the_walk_runs_itself() -> None:
    model = _ReadsAValue().eval()
    x = torch.randn(1, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    calls = []
    model.conv.register_forward_hook(lambda _m, _i, out: calls.append(out.device.type))
    got = get_activations(model, x, ["lin"])["lin"]
    assert got.shape == (1, 6, 6, 5)
    assert calls.count("cpu") == 2  # the walk's pass on the model (not on meta), the real one
    assert _hooks(model) == 1  # the test's own


class _Embed(nn.Module):
    """A patch embedding that makes its maps tokens (N, L, C) itself, as timm's PatchEmbed."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, 16, 8)


class _Tokens(nn.Module):
    """A vision transformer's layout in small: the patch embedding, token mixing, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = _Embed()
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.embed(x))).mean(1))


def test_layers_without_maps_are_refused_by_name_and_named_maps_are_shown(tmp_path) -> None:
    from zfnet.analyses.gallery import run_topk_gallery
    from zfnet.analyses.topk import mine_topk
    from zfnet.analyses.units import project_units
    from zfnet.data import load_images
    from zfnet.data.preprocess import Preprocessing
    from zfnet.deconvnet import project

    model = _Tokens().eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    data = [(img, -1) for img in x]
    said = (r"layer 'mix' outputs shape \(\d, 16, 8\), neither feature maps \(N, C, H, W\) "
            r"nor a vector \(N, F\) \(a transformer's tokens are neither\)")
    with pytest.raises(ValueError, match=said):
        project(model, x, "mix", 0, rule="gradient")
    with pytest.raises(ValueError, match=said):
        mine_topk(model, data, ["mix"], k=2)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        pixels = (torch.rand(16, 16, 3) * 255).byte().numpy()
        Image.fromarray(pixels).save(photos / f"{i}.png")
    images = load_images(str(photos), Preprocessing(16, 16, (0.5,) * 3, (0.25,) * 3))
    with pytest.raises(ValueError, match=said):
        project_units(model, images, "mix", top=1, rule="gradient")
    assert not model.mix._forward_hooks and not model._forward_pre_hooks  # none left
    # no stage with a spatial map (the embedding's output is tokens): the gallery shows the
    # maps of a named convolution, and asks for names only when none is given
    out = tmp_path / "gallery"
    result = run_topk_gallery(model, data, ["embed.proj"], k=2, out_dir=out, n_maps=2)
    assert (out / "topk_embed_proj.png").is_file()
    assert len(result.maps["embed.proj"]) == 2
    with pytest.raises(ValueError, match=r"no stage with a spatial map to show; give the "
                                         r"layers \(--layer\): its convolutions with a map are "
                                         "embed.proj, or any layer"):
        run_topk_gallery(model, data, None, k=2, out_dir=tmp_path / "none")


class _Viewed(nn.Module):
    """An old-style forward that `.view()`s its maps: it fails on channels-last memory."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 14 * 14, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.size(0), -1))


def test_cpu_inputs_go_channels_last_where_the_model_takes_them() -> None:
    """Faster convolutions on the CPU (bench/bench_cpu_layout.py), the same numbers up to
    rounding; a model that cannot take them keeps its layout; the probe runs no hook."""
    import torchvision

    from zfnet.activations import cpu_layout, to_model

    torch.manual_seed(0)
    x = torch.randn(3, 3, 16, 16)
    net = torchvision.models.resnet18(num_classes=5).eval()
    calls = []
    handle = net.layer1.register_forward_hook(lambda *a: calls.append(1))
    try:
        fast = to_model(net, x)
    finally:
        handle.remove()
    assert fast.is_contiguous(memory_format=torch.channels_last) and calls == []
    with torch.inference_mode():
        torch.testing.assert_close(net(fast), net(x.contiguous()), rtol=1e-4, atol=1e-5)
    old = _Viewed()
    assert cpu_layout(old, x).is_contiguous() and old(to_model(old, x)).shape == (3, 2)
    assert not any(m._forward_hooks for m in net.modules())
    flat = torch.randn(3, 8)  # not maps: as it is
    assert cpu_layout(net, flat) is flat


def test_what_is_not_model_inputs_is_named_with_how_to_make_them() -> None:
    """A notebook passes a numpy array, a PIL image or uint8 pixels: a TypeError or ValueError
    saying what was given and how to make model inputs, not torch's `'Image' object has no
    attribute 'ndim'` (uint8 pixels were projected as they were, 0-255 into a model of
    normalised inputs, silently)."""
    from zfnet.activations import check_images
    from zfnet.deconvnet import project

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(TypeError, match=r"got numpy\.ndarray; torch\.from_numpy\(a\)\.float\(\)"):
        project(model, x.numpy(), "1", 0)
    with pytest.raises(TypeError, match=r"got PIL\.Image; a transform makes them"):
        project(model, Image.new("RGB", (16, 16)), "1", 0)
    with pytest.raises(ValueError, match="images are uint8 \\(pixels\\?\\): model inputs are "
                                         "float"):
        project(model, (x * 255).to(torch.uint8), "1", 0)
    with pytest.raises(TypeError, match="got numpy"):
        get_activations(model, x.numpy(), ["1"])
    with pytest.raises(ValueError, match=r"image must be \(C, H, W\), got shape \(2, 3, 16, 16\)"):
        check_images(x, 3, "image")
    assert check_images(x) is x


def test_get_activations_runs_the_model_in_eval_mode_and_takes_one_name() -> None:
    """A model in train mode: its batch-norm statistics were updated and its dropout drawn
    by reading its activations; and one layer's name was read letter by letter."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 16, 16)
    a, b = get_activations(model, x, "3"), get_activations(model, x, ["3"])
    assert list(a) == ["3"] and torch.equal(a["3"], b["3"]) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
