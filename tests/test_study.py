"""`zfnet study` (Table 3): each (model, variant) trained in a folder of its own under --out,
any architecture zfnet trains among the models."""

from __future__ import annotations

import pytest

from zfnet.study import run_name, study

TINY = "synthetic?n_train=64&n_val=32&size=32"
NET = """
from torch import nn


def net(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))
"""


def test_run_names_stay_inside_out() -> None:
    assert run_name("zfnet_small", "baseline") == "zfnet_small-baseline"
    assert run_name("torchvision:resnet18", "fc_half") == "torchvision_resnet18-fc_half"
    assert run_name("/home/me/nets.py:Net", "baseline") == "nets.py_Net-baseline"
    assert run_name("my_pkg.nets:Net", "baseline") == "my_pkg.nets_Net-baseline"


def test_a_study_of_zfnets_model_and_your_own(tmp_path) -> None:
    (tmp_path / "nets.py").write_text(NET)
    out = tmp_path / "study"
    rows = study(TINY, ["zfnet_small", f"{tmp_path}/nets.py:net"], ["baseline"], out, 1,
                 batch_size=32, progress=False, tensorboard=False)
    assert [(r["model"], r["variant"]) for r in rows] == [
        ("zfnet_small", "baseline"), (f"{tmp_path}/nets.py:net", "baseline")]
    assert sorted(p.name for p in out.iterdir()) == ["nets.py_net-baseline",
                                                     "zfnet_small-baseline"]
    assert rows[1]["parameters"] == 3 * 8 * 9 + 8 + 8 * 10 + 10
    # a variant is one of zfnet's model options: not for another architecture
    with pytest.raises(ValueError, match="takes none: study its baseline"):
        study(TINY, [f"{tmp_path}/nets.py:net"], ["fc_half"], out, 1)
