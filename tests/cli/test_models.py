"""`zfnet models SOURCE`'s layer table (`zfnet.cli.models`): what its marks say — a gated
row's rf, a layer with no place in the image, a module the forward pass does not call — on a
small network of one's own (FILE.py:NAME), with the footnotes that explain them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from zfnet.cli import main

pytestmark = pytest.mark.usefixtures("offline", "one_thread")  # tests/conftest.py

# a squeeze-and-excitation gate, a dropout its forward never calls, attention internals
# (N, heads, L, D), then a global pooling
NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.squeeze, self.excite = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.unused = nn.Dropout(0.1)  # a block's skip it never takes
        self.qkv = nn.Linear(8, 3 * 8)
        self.q_norm = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.conv(x * torch.sigmoid(self.excite(self.squeeze(x.mean((2, 3), True)))))
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, L, C)
        q, k, v = self.qkv(tokens).reshape(n, h * w, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
        q = self.q_norm(q)  # (N, heads 2, L, D 4)
        x = x + torch.softmax(q @ k.transpose(-2, -1), -1).matmul(v).transpose(1, 2).reshape(
            n, h * w, c).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.pool(x).flatten(1))
"""


def _rows(tmp_path, size: int) -> dict[str, list[str]]:
    (tmp_path / "net.py").write_text(NET)
    res = CliRunner().invoke(main, ["models", f"{tmp_path}/net.py:Net", "--input-size",
                                    str(size)])
    assert res.exit_code == 0, res.output
    return {line.split()[0]: line.split()[1:] for line in res.stdout.splitlines() if line}


def test_a_gated_layer_is_marked_and_explained(tmp_path) -> None:
    """Maps after a squeeze-and-excitation gate depend on the whole image: rf with a *, and
    the footnote says so in the gallery caption's words (it showed 7, no mark)."""
    rows = _rows(tmp_path, 32)
    assert rows["stem"] == ["conv", "8", "16", "2", "3"]  # before the gate: no mark
    assert rows["conv"] == ["conv", "8", "8", "4", "7*"]
    assert rows["squeeze"] == ["conv", "2", "-", "-", "-"]  # the gate: no place in the image
    assert " ".join(rows["rf"]) == (
        "*: gated: a scale computed from the whole image (a squeeze-and-excitation gate, a "
        "group or instance norm's statistics) also acts on these maps; rf is the field of the "
        "map it acts on")


@pytest.mark.parametrize("size", [8, 32])  # 8: the pooling's input is already 1x1
def test_a_global_pooling_reads_the_same_at_any_size(tmp_path, size: int) -> None:
    """The pooling to 1x1 has no place in the image at any input size (at 8 px it showed the
    map before it's box), and the footnote says what "-" means."""
    rows = _rows(tmp_path, size)
    assert rows["pool"] == ["pool", "8", "-", "-", "-"]
    assert " ".join(rows["size,"]).startswith(
        "stride, rf -: no place in the image: each unit sees all of it (a global pooling, "
        "what follows it)")


def test_a_module_not_called_and_attention_internals(tmp_path) -> None:
    """A module the forward pass never calls says so (its maps were blank); attention's
    (N, heads, L, D) shows D, as tokens show their last dim (it showed the heads as maps)."""
    rows = _rows(tmp_path, 32)
    assert rows["unused"] == ["dropout", "not", "called", "in", "the", "forward", "pass"]
    assert rows["qkv"][:2] == ["fc", "24"] and rows["q_norm"][:2] == ["identity", "4"]
