"""Feature evolution (Fig. 4) on checkpoints whose answer is known."""

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import zfnet
from zfnet.analyses.evolution import (
    UnitEvolution,
    evolution_section,
    feature_evolution,
    render_evolution,
    render_unit_evolution,
    unit_evolution,
)
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import LABEL_HEIGHT, projection_to_uint8
from zfnet.report import read_sections


def test_a_layer_only_its_last_epoch_resembles_has_not_settled(tmp_path) -> None:
    """Three different sets of weights: every layer's curve is 1 at the last epoch only (beside
    itself), which is no settling: 'not yet' (it was 'settled at 3' whatever the weights)."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(zfnet.create_model("zfnet_small", input_size=32))
    data = TensorDataset(torch.randn(12, 3, 32, 32) * 50, torch.zeros(12, dtype=torch.long))
    res = feature_evolution(list(enumerate(models, 1)), data, layers=("conv1", "conv3"),
                            n_maps=3)
    for layer in ("conv1", "conv3"):
        assert res.similarity[layer][-1] == pytest.approx(1.0)
        assert max(res.similarity[layer][:-1]) < 0.8 and res.settled[layer] is None
    evolution_section(tmp_path, res)
    (s,) = read_sections(tmp_path)
    assert [r[-1] for r in s.tables[0].rows] == ["not yet", "not yet"]


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
    assert "over 12 training images" in s.caption  # how many were searched
    maps = ", ".join(map(str, res.maps["conv1"]))
    assert s.figures[0].caption.startswith(f"conv1: maps {maps} (rows)")  # no Python list


def test_render_evolution_draws_projections_by_the_display_rule(tmp_path) -> None:
    proj = torch.randn(2, 3, 1, 10, 10)  # (maps, epochs, C, s, s)
    proj[0, 2, 0, 4, 4] = -1e3
    canvas = np.asarray(Image.open(render_evolution(proj, tmp_path / "e.png")))
    want = projection_to_uint8(proj)
    zoom, side, pad = 7, 70, 2  # 10 px enlarged to at least 64
    for a in range(2):
        for j in range(3):
            y, x = pad + a * (side + pad), pad + j * (side + pad)
            tile = torch.from_numpy(canvas[y: y + side: zoom, x: x + side: zoom, 0].copy())
            assert torch.equal(tile, want[a, j, 0]), (a, j)


class _Counted(list):
    """Checkpoints that count how often each is read (a sequence that loads on access)."""

    def __init__(self, items) -> None:
        super().__init__(items)
        self.reads = [0] * len(items)

    def __getitem__(self, i):
        self.reads[i] += 1
        return super().__getitem__(i)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def test_evolution_of_given_maps_and_of_one_unit() -> None:
    torch.manual_seed(0)
    models = [zfnet.create_model("zfnet_small", input_size=32) for _ in range(3)]
    data = TensorDataset(torch.randn(10, 3, 32, 32) * 50, torch.zeros(10, dtype=torch.long))
    ckpts = list(zip((1, 2, 3), models, strict=True))
    chosen = feature_evolution(ckpts, data, layers=("conv1", "conv3"), n_maps=3, n_images=8)
    calls = []
    counted = _Counted(ckpts)
    given = feature_evolution(counted, data, n_images=8, maps=chosen.maps,
                              progress=lambda done, total: calls.append((done, total)))
    assert counted.reads == [1, 1, 1]  # each checkpoint mined once for every layer
    _Counted.__init__(counted, ckpts)
    feature_evolution(counted, data, layers=("conv1",), n_images=8)
    assert counted.reads == [1, 1, 1]  # the last, read first to choose the maps, is kept
    assert given.maps == chosen.maps and given.epochs == [1, 2, 3]
    for layer in ("conv1", "conv3"):
        assert torch.equal(given.projections[layer], chosen.projections[layer])
        assert given.similarity[layer] == chosen.similarity[layer]
        assert torch.allclose(given.unit_similarity[layer].mean(0),
                              torch.tensor(chosen.similarity[layer]))
    # the work at each of 3 epochs: 8 images mined, 6 maps projected
    assert calls[-1] == (42, 42) and {t for _, t in calls} == {42}
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    unit = chosen.maps["conv3"][1]
    one = unit_evolution(ckpts, data, "conv3", unit, n_images=8)
    assert one.epochs == [1, 2, 3] and one.projections.shape == chosen.projections["conv3"][1].shape
    assert torch.allclose(one.projections, chosen.projections["conv3"][1], atol=1e-4)
    assert one.similarity[-1] == pytest.approx(1.0)
    assert one.similarity == pytest.approx(chosen.unit_similarity["conv3"][1].tolist(), abs=1e-4)
    with pytest.raises(ValueError, match="maps \\[999\\] of conv3"):
        unit_evolution(ckpts, data, "conv3", 999, n_images=8)


def test_render_unit_evolution_is_one_row(tmp_path) -> None:
    proj = torch.randn(3, 1, 10, 10)  # (epochs, C, s, s)
    one = np.asarray(Image.open(render_unit_evolution(proj, tmp_path / "u.png")))
    row = np.asarray(Image.open(render_evolution(proj[None], tmp_path / "r.png")))
    assert np.array_equal(one, row) and one.shape[:2] == (2 + 70 + 2, 2 + 3 * (70 + 2))
    buf = io.BytesIO()  # an open file, from the whole UnitEvolution (the explorer's way)
    render_unit_evolution(UnitEvolution([1, 2, 30], proj, [0.0, 0.5, 1.0]), buf)
    labelled = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    # its epochs label the columns ("epoch" in the corner), in a strip above the same tiles
    margin = labelled.shape[1] - row.shape[1]
    assert margin > 20 and np.array_equal(labelled[LABEL_HEIGHT:, margin:], row)
    header = labelled[:LABEL_HEIGHT]
    x0 = margin + 2
    inked = [(header[:, x0 + j * 72:x0 + j * 72 + 70] < 128).sum() for j in range(3)]
    assert (header[:, :margin] < 128).any()  # "epoch"
    assert min(inked) > 0 and inked[2] > inked[0]  # "30" has more ink than "1"


def test_the_layer_figure_names_its_epochs_and_maps(tmp_path) -> None:
    proj = torch.randn(2, 3, 1, 10, 10)  # (maps, epochs, C, s, s)
    plain = np.asarray(Image.open(render_evolution(proj, tmp_path / "p.png")))
    named = np.asarray(Image.open(render_evolution(proj, tmp_path / "n.png", epochs=[1, 2, 5],
                                                   maps=[3, 17])))
    margin = named.shape[1] - plain.shape[1]
    assert named.shape[0] == plain.shape[0] + LABEL_HEIGHT and margin > 20
    assert np.array_equal(named[LABEL_HEIGHT:, margin:], plain)
    assert (named[LABEL_HEIGHT:, :margin] < 128).any()  # "map 3", "map 17"
    with pytest.raises(ValueError, match="2 labels for 3 columns"):
        render_evolution(proj, tmp_path / "x.png", epochs=[1, 2])


def test_a_blank_projection_is_like_another_blank_one() -> None:
    """A unit that never fires projects to nothing at every epoch: 1 to its last epoch (its
    own last included, which was 0), where a blank beside a picture stays 0."""
    from zfnet.analyses.evolution import similarity_to_last

    g = torch.Generator().manual_seed(0)
    flat = torch.randn(3, 4, 10, generator=g)
    flat[0] = 0.0  # dead throughout
    flat[1, :2] = 0.0  # blank at the first two epochs only
    sim = similarity_to_last(flat)
    assert sim[0].tolist() == [1.0] * 4
    assert sim[1, :2].tolist() == [0.0, 0.0] and sim[1, -1] == pytest.approx(1.0)
    assert sim[2, -1] == pytest.approx(1.0) and sim[2, :3].abs().max() < 1


def test_similarity_stays_within_one() -> None:
    """A projection's similarity to itself read 1.000000238418579 in the explorer's JSON."""
    from zfnet.analyses.evolution import similarity_to_last

    g = torch.Generator().manual_seed(0)
    flat = torch.randn(64, 3, 1000, generator=g) * 1e3
    raw = torch.nn.functional.cosine_similarity(flat, flat[:, -1:].expand_as(flat), dim=2)
    assert raw.max() > 1  # float rounding does go past it here
    sim = similarity_to_last(flat)
    assert sim.max() <= 1 and sim.min() >= -1
