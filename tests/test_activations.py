"""zfnet.activations: a layer's output as the layer gave it, whatever runs after it."""

from __future__ import annotations

import torch
from torch import nn

from zfnet.activations import capture, get_activations


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
    with torch.no_grad():
        want = model.bn(model.conv(x))
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
        with torch.no_grad():
            lin = model.lin(model.conv(x).permute(0, 2, 3, 1))
            out = model(x)
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
