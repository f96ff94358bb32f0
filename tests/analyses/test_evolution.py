"""Feature evolution (Fig. 4) on checkpoints whose answer is known."""

import copy

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import zfnet
from zfnet.analyses.evolution import evolution_section, feature_evolution, render_evolution
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import projection_to_uint8
from zfnet.report import read_sections


def test_evolution_settles_when_weights_stop_changing(tmp_path) -> None:
    torch.manual_seed(0)
    final = zfnet.create_model("zfnet_small", input_size=32)
    early = zfnet.create_model("zfnet_small", input_size=32)  # other random weights
    data = TensorDataset(torch.randn(12, 3, 32, 32) * 50, torch.zeros(12, dtype=torch.long))
    ckpts = [(1, early), (2, copy.deepcopy(final)), (3, final)]
    res = feature_evolution(ckpts, data, layers=("conv1", "conv3"), n_maps=3)
    assert res.epochs == [1, 2, 3]
    for layer in ("conv1", "conv3"):
        proj = res.projections[layer]
        assert proj.shape[:2] == (3, 3)
        sim = res.similarity[layer]
        assert abs(sim[1] - 1) < 1e-5 and abs(sim[2] - 1) < 1e-5 and sim[0] < 0.9
        assert res.settled[layer] == 2
    evolution_section(tmp_path, res)
    (s,) = read_sections(tmp_path)
    assert len(s.figures) == 2 and s.tables[0].rows[0][-1] == 2
    assert DISPLAY_CAPTION in s.caption


def test_render_evolution_draws_projections_by_the_display_rule(tmp_path) -> None:
    proj = torch.randn(2, 3, 1, 10, 10)  # (maps, epochs, C, s, s)
    proj[0, 2, 0, 4, 4] = -1e3
    canvas = np.asarray(Image.open(render_evolution(proj, tmp_path / "e.png")))
    want = projection_to_uint8(proj)
    zoom, side, pad = 4, 40, 2
    for a in range(2):
        for j in range(3):
            y, x = pad + a * (side + pad), pad + j * (side + pad)
            tile = torch.from_numpy(canvas[y: y + side: zoom, x: x + side: zoom, 0].copy())
            assert torch.equal(tile, want[a, j, 0]), (a, j)
