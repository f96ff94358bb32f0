"""Filter diagnostics (Fig. 6) on hand-made filters."""

import math

import numpy as np
import pytest
import torch

from zfnet.analyses.filters import (
    filter_mosaic,
    filter_rms,
    filter_stats,
    high_frequency_share,
    save_filter_mosaic,
)


def test_rms_and_dominance() -> None:
    w = torch.zeros(4, 3, 5, 5)
    w[0] = 0.1
    w[1] = 0.2
    w[2] = 0.1
    w[3] = 1.0
    assert torch.allclose(filter_rms(w), torch.tensor([0.1, 0.2, 0.1, 1.0]))
    s = filter_stats(w)
    assert math.isclose(s["dominance"], 1.0 / 0.1, rel_tol=1e-5)
    assert s["near_zero_share"] == 0 and s["dead_share"] == 0


def test_dead_filters_by_norm_and_activation() -> None:
    w = torch.randn(10, 3, 7, 7)
    w[:2] = 0
    s = filter_stats(w, max_activation=torch.tensor([1.0] * 7 + [0.0, -1.0, 2.0]))
    assert s["near_zero_share"] == pytest.approx(0.2)
    assert s["never_active_share"] == pytest.approx(0.2)
    assert s["dead_share"] == pytest.approx(0.4)


def test_high_frequency_share_orders_smooth_and_checkerboard() -> None:
    smooth = torch.ones(1, 1, 7, 7)
    checker = (torch.arange(7)[:, None] + torch.arange(7)[None, :]) % 2 * 2.0 - 1
    assert high_frequency_share(smooth) < 0.1
    assert high_frequency_share(checker.view(1, 1, 7, 7)) > 0.9
    # white noise: 80%, the caption's reference; a 1x1 kernel has no frequency to tell
    torch.manual_seed(0)
    assert abs(high_frequency_share(torch.randn(256, 16, 5, 5)) - 0.804) < 0.01
    assert math.isnan(high_frequency_share(torch.randn(8, 4, 1, 1)))


def test_mosaic_shapes(tmp_path) -> None:
    rgb = filter_mosaic(torch.randn(96, 3, 7, 7))
    assert rgb.shape == (10 * 8 + 1, 10 * 8 + 1, 3) and 0 <= rgb.min() and rgb.max() <= 1
    grey = filter_mosaic(torch.randn(8, 40, 5, 5), max_inputs=16)
    assert grey.shape == (8 * 6 + 1, 16 * 6 + 1, 3)
    # a layer 2 of 96 filters: their strips in 3 columns of 32 (3 px apart), not 96 rows
    w = torch.randn(96, 64, 5, 5)
    wide = filter_mosaic(w)
    assert wide.shape == (32 * 6 + 1, 3 * 16 * 6 + 2 * 3 + 1, 3)
    assert 0.5 < wide.shape[0] / wide.shape[1] < 2
    strip = filter_mosaic(w[33:34])  # filter 33: column 2, row 2 (read down each column)
    x0 = 16 * 6 + 3
    assert np.array_equal(wide[1 * 6:1 * 6 + 7, x0:x0 + 16 * 6 + 1], strip)
    assert save_filter_mosaic(torch.randn(4, 1, 5, 5), tmp_path / "f.png").is_file()


def test_mosaic_of_any_kernel_shape(tmp_path) -> None:
    wide = filter_mosaic(torch.randn(4, 3, 1, 7))  # 1x7 kernels (inception-style)
    assert wide.shape == (2 * 2 + 1, 2 * 8 + 1, 3)
    depthwise = filter_mosaic(torch.randn(9, 1, 3, 3))  # one input map each: grey tiles
    assert depthwise.shape == (3 * 4 + 1, 3 * 4 + 1, 3)
    assert (depthwise[..., 0] == depthwise[..., 1]).all()


def test_section_shows_each_models_first_two_convolutions(tmp_path) -> None:
    import torchvision

    import zfnet
    from zfnet.analyses.filters import filters_section
    from zfnet.report import read_sections

    torch.manual_seed(0)
    models = {"zf": zfnet.create_model("zfnet_small"),
              "resnet": torchvision.models.resnet18(weights=None),
              "mobilenet": torchvision.models.mobilenet_v2(weights=None)}
    filters_section(tmp_path, models, layers=None, input_size=64)
    (s,) = read_sections(tmp_path)
    assert [r[:3] for r in s.tables[0].rows] == [
        ["zf", "conv1", 48], ["zf", "conv2", 128], ["resnet", "conv1", 64],
        ["resnet", "layer1.0.conv1", 64], ["mobilenet", "features.0.0", 32],
        ["mobilenet", "features.1.conv.0.0", 32]]
    assert all((tmp_path / f.path).is_file() for f in s.figures)
    with pytest.raises(ValueError, match="not a Conv2d"):
        filters_section(tmp_path, {"resnet": models["resnet"]}, layers=("layer1",))
