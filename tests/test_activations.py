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
