"""The top-k gallery (paper Fig. 2): the grid PNGs and the report section, projections matching
the engine. (Its receptive-field boxes are tested against the gradient's support with the rest of
the geometry, in tests/models/test_geometry.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import TensorDataset

import zfnet
from zfnet.analyses.gallery import (
    block_grid,
    default_layers,
    render_layer,
    run_topk_gallery,
    select_maps,
)
from zfnet.analyses.topk import TopK
from zfnet.deconvnet import project_rf
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import LABEL_HEIGHT, projection_to_uint8
from zfnet.models import layer_info
from zfnet.report import read_sections


def _data(n: int = 10) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 64, 64, generator=g) * 60, torch.zeros(n).long())


def test_gallery_end_to_end(tmp_path) -> None:
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small")
    data = _data()
    raw = (torch.rand(len(data), 3, 64, 64) * 255).to(torch.uint8)
    run = tmp_path / "run"
    res = run_topk_gallery(model, data, ["conv1", "conv3"], k=4, out_dir=run / "gallery",
                           run_dir=run, maps={"conv3": [5, 1, 7]},
                           display_image=lambda i: raw[i])
    assert res.maps["conv1"] == list(range(48))  # every map of the first layer
    assert res.maps["conv3"] == [5, 1, 7]
    geo = layer_info(model)["conv3"].geometry
    assert res.projections["conv3"].shape == (3, 4, 3, geo.rf, geo.rf)
    for name in ("conv1", "conv3"):
        png = res.figures[name]
        assert png.is_file() and Image.open(png).size[0] > 100
    (section,) = [s for s in read_sections(run) if s.key == "topk_gallery"]
    assert [f.path for f in section.figures] == ["gallery/topk_conv1.png",
                                                 "gallery/topk_conv3.png"]
    assert "negative" in section.caption.lower() or "dark" in section.caption
    assert "guided" in section.caption
    assert DISPLAY_CAPTION in section.caption  # says how projections became pixels
    assert section.tables[0].caption == (  # in words, for a reader (zfnet_small has LRN)
        "Maps shown: those asked for in conv3; elsewhere those with the strongest top "
        "activation (conv1: all of them); the way down undoes contrast "
        "normalisation by its gradient.")
    assert (run / "gallery" / "topk.pt").is_file()
    # A projection in the gallery is the engine's projection of that mined activation.
    t = res.topk["conv3"]
    c, j = 1, 2
    i, r, q = int(t.index[c, j]), int(t.row[c, j]), int(t.col[c, j])
    want = project_rf(model, data.tensors[0][i:i + 1], "conv3", [0], [c],
                      torch.tensor([[r, q]]))
    torch.testing.assert_close(res.projections["conv3"][1, j], want.values[0])
    torch.testing.assert_close(want.activation[0], t.values[c, j])
    # rerun on another layer: the first run's grids go, as the report no longer shows them
    run_topk_gallery(model, data, ["conv2"], k=2, out_dir=run / "gallery", run_dir=run,
                     n_maps=2, display_image=lambda i: raw[i])
    assert sorted(p.name for p in (run / "gallery").glob("*.png")) == ["topk_conv2.png"]
    (section,) = [s for s in read_sections(run) if s.key == "topk_gallery"]
    assert section.tables[0].caption.startswith(  # conv1, shown whole, is not among them
        "Maps shown: those with the strongest top activation; the way down")


def test_gallery_errors(tmp_path) -> None:
    model = zfnet.create_model("zfnet_small")
    data = _data(4)
    with pytest.raises(ValueError, match="must lie inside run_dir"):
        run_topk_gallery(model, data, ["conv1"], out_dir=tmp_path / "a", run_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="do not exist in conv2"):
        run_topk_gallery(model, data, ["conv2"], out_dir=tmp_path, maps={"conv2": [999]})
    with pytest.raises(ValueError, match="display_image"):
        run_topk_gallery(model, data, ["conv1"], k=2, out_dir=tmp_path,
                         display_image=lambda i: torch.zeros(3, 64, 64))


def test_select_maps_rules() -> None:
    t = TopK.empty("conv2", 6, 2)
    t.values[:, 0] = torch.tensor([1.0, 5.0, 3.0, 5.0, float("nan"), 0.0])
    assert select_maps(t, 3, "strongest") == [1, 2, 3]  # ties by map number, NaN last
    assert select_maps(t, 3, "spaced") == [0, 2, 5]
    assert select_maps(t, 10) == list(range(6))
    with pytest.raises(ValueError, match="strongest, spaced"):
        select_maps(t, 2, "random")


def test_render_layer_grid(tmp_path) -> None:
    proj = torch.randn(5, 9, 3, 7, 7)
    patches = torch.randint(0, 255, (5, 9, 3, 7, 7), dtype=torch.uint8)
    png = render_layer(proj, patches, tmp_path / "g.png", columns=5)
    w, h = Image.open(png).size
    side = 7 * 6  # enlarged to at least 40 px
    assert h == 3 * (side + 1) + 1 + 8 and w == 5 * (2 * (3 * (side + 1) + 1) + 4 + 8)


def test_a_block_of_fewer_than_k_has_no_empty_row(tmp_path) -> None:
    """k cut to 6 images: each block is 2 rows of 3 (`block_grid`), not 3 x 3 with a black
    row; the gallery's figure of 6 images with k 9 is drawn so."""
    assert [block_grid(k) for k in (9, 6, 5, 4, 3, 2, 1)] == [
        (3, 3), (2, 3), (2, 3), (2, 2), (2, 2), (1, 2), (1, 1)]
    proj = torch.randn(1, 6, 3, 8, 8)
    patches = torch.full((1, 6, 3, 8, 8), 200, dtype=torch.uint8)
    canvas = np.asarray(Image.open(render_layer(proj, patches, tmp_path / "g.png")))
    side, pad, sep = 40, 1, 8
    assert canvas.shape[:2] == (2 * (side + pad) + pad + sep, 2 * (3 * (side + pad) + pad) + 4
                                + sep)
    assert (canvas[-sep - side - pad: -sep - pad, -sep - side - pad: -sep - pad] == 200).all()
    torch.manual_seed(0)
    res = run_topk_gallery(zfnet.create_model("zfnet_small"), _data(6), ["conv1"], k=9,
                           out_dir=tmp_path / "run", maps={"conv1": [0]})
    side = res.projections["conv1"].shape[-1] * max(1, -(-40 // res.projections["conv1"]
                                                         .shape[-1]))
    height = Image.open(res.figures["conv1"]).size[1]
    assert height == LABEL_HEIGHT + 2 * (side + pad) + pad + sep  # 2 rows of 3, no third


def test_render_layer_draws_projections_by_the_display_rule(tmp_path) -> None:
    proj = torch.randn(2, 4, 3, 8, 8)
    proj[1, 3, :, 0, 0] = 1e3  # an outlier in one tile
    patches = torch.zeros(2, 4, 3, 8, 8, dtype=torch.uint8)
    png = render_layer(proj, patches, tmp_path / "g.png", columns=1)
    canvas = torch.from_numpy(np.asarray(Image.open(png)).copy())  # (H, W, 3)
    want = projection_to_uint8(proj)
    zoom, side, g, pad, sep = 5, 40, 2, 1, 8  # 8 px enlarged to 40; blocks of 2 x 2
    half = g * (side + pad) + pad
    for a in range(2):
        for j in range(4):
            y = a * (half + sep) + pad + (j // g) * (side + pad)
            x = pad + (j % g) * (side + pad)
            tile = canvas[y: y + side: zoom, x: x + side: zoom].permute(2, 0, 1)
            assert torch.equal(tile, want[a, j]), (a, j)


def test_default_layers() -> None:
    assert default_layers(zfnet.create_model("zfnet_small")) == [f"conv{i}" for i in range(1, 6)]
    vgg = torchvision.models.vgg11(weights=None)
    assert default_layers(vgg)[:2] == ["features.0", "features.3"]


# --- any CNN ---------------------------------------------------------------------------------


def _synthetic(n: int = 8):
    from torch.utils.data import Subset

    from zfnet.data import load_dataset

    bundle = load_dataset("synthetic?n_train=10&n_val=10&size=64")
    return bundle, Subset(bundle.val.with_mode("centre"), range(n))


def _tv(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, **kw)


def _check_windows(model, data, res, name: str, rule: str = "deconvnet") -> None:
    """Every tile is the engine's whole-image projection of that mined unit cut to the unit's
    window — which holds all of it (nothing nonzero outside) — and the patch beside it is the
    display image cut to the same window."""
    from zfnet.analyses.gallery import unit_windows
    from zfnet.deconvnet import paste
    from zfnet.models import layer_geometries

    t, proj = res.topk[name], res.projections[name]
    size = tuple(data[0][0].shape[-2:])
    geo = layer_geometries(model, [name], size)[name]
    for a, c in enumerate(res.maps[name][:2]):
        for j in range(t.k):
            i, r, q = int(t.index[c, j]), int(t.row[c, j]), int(t.col[c, j])
            x = data[i][0][None]
            rf = project_rf(model, x, name, [0], [c], torch.tensor([[r, q]]), rule)
            whole = paste(rf, size)[0]  # (C, H, W)
            top, left, h, w = unit_windows(geo, torch.tensor([r]), torch.tensor([q]), size, True)
            t0, l0 = int(top[0]), int(left[0])
            assert proj.shape[-2:] == (h, w)
            pad = torch.nn.functional.pad(whole, (w, w, h, h))
            want = pad[:, t0 + h: t0 + 2 * h, l0 + w: l0 + 2 * w]
            tol = 1e-4 * float(whole.abs().max()) + 1e-12  # batch-size rounding
            torch.testing.assert_close(proj[a, j], want, rtol=1e-4, atol=tol)
            torch.testing.assert_close(want.abs().sum(), whole.abs().sum(), rtol=1e-6, atol=0)
            img = torch.nn.functional.pad(_raw_of(data, i), (w, w, h, h))
            assert torch.equal(res.patches[name][a, j],
                               img[:, t0 + h: t0 + 2 * h, l0 + w: l0 + 2 * w])


def _raw_of(data, i: int) -> torch.Tensor:
    return data.dataset.raw(data.indices[i])


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_gallery_on_resnet18(tmp_path, num_classes) -> None:
    """Default layers: the stem (its conv after bn1 and relu) and the four stages; tiles cut
    from the general path's whole-image projections to the receptive field (the whole image
    where the field is larger), patches cut alike."""
    bundle, data = _synthetic()
    model = _tv("resnet18", num_classes=num_classes)
    raw = [_raw_of(data, i) for i in range(len(data))]
    res = run_topk_gallery(model, data, None, k=3, out_dir=tmp_path, n_maps=3,
                           display_image=lambda i: raw[i])
    assert list(res.projections) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert res.maps["relu"] == list(range(64))  # all of the first layer
    assert res.projections["relu"].shape[-2:] == (7, 7)
    assert res.projections["layer1"].shape[-2:] == (43, 43)
    assert res.projections["layer4"].shape[-2:] == (64, 64)  # its field is wider than 64 px
    for name in ("layer1", "layer3"):
        _check_windows(model, data, res, name)
    (section,) = [s for s in read_sections(tmp_path) if s.key == "topk_gallery"]
    assert len(section.figures) == 5
    assert [r[3] for r in section.tables[0].rows] == [7, 43, 99, 211, 435]
    assert not any(m._forward_hooks for m in model.modules())


def test_gallery_on_mobilenet_v2_flat_layers_and_non_square_images(tmp_path) -> None:
    bundle, data = _synthetic(6)
    model = _tv("mobilenet_v2")
    res = run_topk_gallery(model, data, ["features.3", "features.18", "classifier.1"], k=2,
                           out_dir=tmp_path, n_maps=2, display_image=bundle.raw_val)
    _check_windows(model, data, res, "features.3", rule="deconvnet")
    # the logits: every unit sees the whole image
    assert res.projections["classifier.1"].shape == (2, 2, 3, 64, 64)
    (section,) = [s for s in read_sections(tmp_path) if s.key == "topk_gallery"]
    assert section.tables[0].rows[-1][3] == "whole image"
    assert section.figures[-1].caption.startswith("classifier.1: units ")  # not maps
    assert section.figures[0].caption.startswith("features.3: maps ")
    assert "whole image" in section.caption
    assert "contrast normalisation" not in section.tables[0].caption  # MobileNet has none
    # non-square inputs: tiles of rows x columns
    g = torch.Generator().manual_seed(0)
    wide = TensorDataset(torch.randn(4, 3, 48, 64, generator=g) * 60, torch.zeros(4).long())
    res = run_topk_gallery(_tv("resnet18"), wide, ["layer1", "layer3"], k=2,
                           out_dir=tmp_path / "wide", n_maps=2)
    assert res.projections["layer1"].shape[-2:] == (43, 43)
    assert res.projections["layer3"].shape[-2:] == (48, 64)
    assert Image.open(res.figures["layer3"]).size[0] > Image.open(res.figures["layer3"]).size[1]


class _SE(torch.nn.Module):
    """conv -> ReLU -> a squeeze-and-excitation gate -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.gate = torch.nn.Linear(8, 8)
        self.out = torch.nn.Identity()
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        s = torch.sigmoid(self.gate(y.mean((2, 3))))[:, :, None, None]
        y = self.out(y * s)
        return self.fc(y.mean((2, 3)))


def test_a_gated_layer_says_so(tmp_path) -> None:
    torch.manual_seed(0)
    res = run_topk_gallery(_SE(), _data(4), ["relu", "out"], k=2, out_dir=tmp_path, n_maps=2,
                           rule="gradient")
    assert res.projections["out"].shape[-2:] == (3, 3)
    (section,) = [s for s in read_sections(tmp_path) if s.key == "topk_gallery"]
    relu, out = section.figures
    assert "gated" not in relu.caption and "gated" in out.caption


def test_fc_layers_of_zfnet_models_beside_conv_layers(tmp_path) -> None:
    """fc6 is mined like any layer (units at (0, 0)) and projected whole; conv1 beside it
    then comes from the general path too, cut to the same windows as the chain's crops."""
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small")
    data = _data(6)
    both = run_topk_gallery(model, data, ["conv1", "fc6"], k=2, out_dir=tmp_path / "a",
                            maps={"conv1": [0, 3], "fc6": [1, 2]})
    alone = run_topk_gallery(model, data, ["conv1"], k=2, out_dir=tmp_path / "b",
                             maps={"conv1": [0, 3]})
    assert both.projections["fc6"].shape == (2, 2, 3, 64, 64)
    assert (both.topk["fc6"].row == 0).all() and (both.topk["fc6"].col == 0).all()
    got, want = both.projections["conv1"], alone.projections["conv1"]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert torch.equal(both.patches["conv1"], alone.patches["conv1"])


class _WithBroken(torch.utils.data.Dataset):
    """`_data()` whose items in `broken` are unreadable files (None, as datasets give them)."""

    def __init__(self, n: int, broken: set[int]) -> None:
        self.data, self.broken = _data(n), broken

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return None if i in self.broken else self.data[i]


def test_the_gallery_counts_the_images_mined_not_the_unreadable_files(tmp_path) -> None:
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small")
    raw = (torch.rand(10, 3, 64, 64) * 255).to(torch.uint8)
    res = run_topk_gallery(model, _WithBroken(10, {3}), ["conv2"], k=4, out_dir=tmp_path,
                           display_image=lambda i: raw[i])
    assert res.topk["conv2"].mined == 9 and 3 not in res.topk["conv2"].index
    (section,) = read_sections(tmp_path)
    assert section.metrics["images"] == 9
    assert ("of that map over 9 images (of 10 files, 1 unreadable), one per image (its "
            "strongest position), each" in section.caption)


def test_the_images_are_counted_in_words() -> None:
    from zfnet.analyses.gallery import images_text

    assert images_text(9, 9) == "9 images"
    assert images_text(1, 1) == "1 image"  # one photo and a broken file: not "1 images"
    assert images_text(1, 2) == "1 image (of 2 files, 1 unreadable)"


def test_fewer_images_than_k_cut_k_to_them(tmp_path) -> None:
    """A map has one activation an image: k past the images read is cut to them (the title,
    caption, table and figure), not drawn as empty cells."""
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small")
    res = run_topk_gallery(model, _WithBroken(5, {1, 3}), ["conv1"], k=9, out_dir=tmp_path,
                           maps=[0])
    assert res.topk["conv1"].k == 3 and (res.topk["conv1"].index[0] >= 0).all()
    assert res.projections["conv1"].shape[1] == 3
    (section,) = read_sections(tmp_path)
    assert section.title.startswith("Top-3 activations") and section.metrics["k"] == 3
    assert "the 3 strongest activations of that map over 3 images (of 5 files, 2 unreadable)" \
        in section.caption and "blank" not in section.caption


def test_the_top_k_table_names_each_units_image_activation_and_box(tmp_path) -> None:
    """gallery/topk.json: every map of every layer, its top k best first, each entry the image
    (its file name for a folder; null without files), its index, the activation, the unit and
    its receptive field in the input; a map a line; k cut to the images there are."""
    import json

    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small")
    res = run_topk_gallery(model, _data(3), ["conv1", "conv3"], k=4, out_dir=tmp_path,
                           n_maps=1)
    text = (tmp_path / "topk.json").read_text()
    table = json.loads(text)
    assert table["format"] == "zfnet-topk/1" and table["input"] == [64, 64]
    assert list(table["layers"]) == ["conv1", "conv3"]
    for name in ("conv1", "conv3"):
        t, geo = res.topk[name], layer_info(model)[name].geometry
        layer = table["layers"][name]
        assert (layer["k"], layer["mined"], len(layer["maps"])) == (3, 3, t.values.shape[0])
        for c, entries in enumerate(layer["maps"]):
            assert len(entries) == 3  # 3 images: k=4 cut to them
            for j, e in enumerate(entries):
                r, q = int(t.row[c, j]), int(t.col[c, j])
                assert e == {"image": None, "item": int(t.index[c, j]),
                             "activation": pytest.approx(float(t.values[c, j]), abs=1e-6),
                             "row": r, "col": q, "box": list(geo.box(r, q, 64))}
    assert len(text.splitlines()) == 1 + (1 + 48) + (1 + 192)  # a line a layer, a line a map
    (section,) = read_sections(tmp_path)
    assert section.caption.endswith("Every map's top 3, each its image, activation, unit and "
                                    "receptive field: topk.json.")
    # a folder of images: each named by its file
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(3):
        Image.fromarray((np.random.default_rng(k).random((40, 50, 3)) * 255).astype(np.uint8)
                        ).save(folder / f"p{k}.png")
    from zfnet.data import load_dataset
    from zfnet.data.preprocess import Preprocessing

    bundle = load_dataset(f"images:{folder}", preprocessing=Preprocessing.from_unit_stats(
        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop=64, resize=64))
    run_topk_gallery(model, bundle.val, ["conv2"], k=2, out_dir=tmp_path / "f", n_maps=1)
    entries = json.loads((tmp_path / "f" / "topk.json").read_text())["layers"]["conv2"]["maps"]
    assert {e["image"] for m in entries for e in m} <= {"p0.png", "p1.png", "p2.png"}
    assert all(e["image"] == f"p{e['item']}.png" for m in entries for e in m)


def test_bfloat16_projections_are_float32s_within_rounding_and_the_caption_says_so(
        tmp_path) -> None:
    """precision="bfloat16": the same mining, the same maps, every tile close to float32's
    (the general path's signals in bf16); said in the caption. A chain (zfnet's models) is
    projected by the windowed engine, in float32 whatever is asked, and says nothing."""
    from zfnet.analyses.gallery import BF16_NOTE

    _, data = _synthetic(4)
    model = _tv("resnet18")
    runs = {p: run_topk_gallery(model, data, ["layer2", "layer4"], k=2, n_maps=3,
                                out_dir=tmp_path / p, precision=p)
            for p in ("float32", "bfloat16")}
    f32, b16 = runs["float32"], runs["bfloat16"]
    assert f32.maps == b16.maps
    for name in ("layer2", "layer4"):
        assert torch.equal(f32.topk[name].index, b16.topk[name].index)
        a, b = f32.projections[name].flatten(2), b16.projections[name].flatten(2)
        assert a.dtype == b.dtype == torch.float32
        assert not torch.equal(a, b)  # it did go down in bf16
        assert float(torch.nn.functional.cosine_similarity(a, b, dim=2).min()) > 0.999
    captions = {p: next(s for s in read_sections(tmp_path / p)
                        if s.key == "topk_gallery").caption for p in runs}
    assert captions["bfloat16"].endswith(BF16_NOTE) and BF16_NOTE not in captions["float32"]

    chain = zfnet.create_model("zfnet_small")
    kept = {p: run_topk_gallery(chain, _data(4), ["conv2"], k=2, n_maps=2,
                                out_dir=tmp_path / f"chain_{p}", precision=p)
            for p in ("float32", "bfloat16")}
    assert torch.equal(kept["float32"].projections["conv2"], kept["bfloat16"].projections["conv2"])
    (section,) = read_sections(tmp_path / "chain_bfloat16")
    assert BF16_NOTE not in section.caption


def test_an_unknown_precision_is_refused_before_mining(tmp_path) -> None:
    with pytest.raises(ValueError, match="precision='half' is not known; valid: float32, "
                                         "bfloat16"):
        run_topk_gallery(zfnet.create_model("zfnet_small"), _data(2), ["conv1"],
                         out_dir=tmp_path / "g", precision="half")
    assert not (tmp_path / "g").exists()


def test_each_block_is_labelled_with_its_map_above_it(tmp_path, monkeypatch) -> None:
    """The gallery's PNGs named no map (the caption listed them): a student could not tell
    which block was map 12. Each block now has its label above it, the tiles unmoved below."""
    from zfnet.analyses import gallery
    from zfnet.display import LABEL_HEIGHT

    proj = torch.randn(2, 4, 3, 8, 8)
    patches = torch.zeros(2, 4, 3, 8, 8, dtype=torch.uint8)
    plain = np.asarray(Image.open(render_layer(proj, patches, tmp_path / "a.png", columns=1)))
    named = np.asarray(Image.open(render_layer(proj, patches, tmp_path / "b.png", columns=1,
                                               labels=["map 3", "map 17"])))
    half = plain.shape[0] // 2  # one block and its gap
    assert named.shape[0] == plain.shape[0] + 2 * LABEL_HEIGHT
    for a in range(2):  # each block below its label, as drawn without one
        y = a * (half + LABEL_HEIGHT)
        band = named[y: y + LABEL_HEIGHT]
        assert (band < 128).any() and (band == 255).mean() > 0.5  # dark text on white
        assert np.array_equal(named[y + LABEL_HEIGHT: y + LABEL_HEIGHT + half],
                              plain[a * half: (a + 1) * half])
    with pytest.raises(ValueError, match="1 labels for 2 maps"):
        render_layer(proj, patches, tmp_path / "c.png", labels=["map 3"])
    drawn = []
    real = gallery.render_layer
    monkeypatch.setattr(gallery, "render_layer",
                        lambda *a, **k: drawn.append(k["labels"]) or real(*a, **k))
    model = zfnet.create_model("zfnet_small", input_size=32, num_classes=3)
    data = [(torch.randn(3, 32, 32), 0) for _ in range(4)]
    gallery.run_topk_gallery(model, data, ["conv2", "fc8"], k=2, out_dir=tmp_path / "g",
                             maps={"conv2": [5, 1], "fc8": [2, 0]},
                             unit_names={"fc8": ["cat", "dog", "owl"]})
    assert drawn == [["map 5", "map 1"], ["2 owl", "0 cat"]]


def test_a_map_never_above_zero_is_said_blank_and_seed_one_shows_it(tmp_path) -> None:
    """A class score below zero on every image (a fine-tuned model's class absent from the
    photos) was drawn as flat grey tiles, silently; the gallery now says which maps are blank,
    and `seed="one"` (Captum's, as `zfnet project --seed one`) shows what would raise them."""
    from zfnet.report import read_sections

    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", input_size=32).eval()
    with torch.no_grad():
        model.features.conv2.bias[5] = -1e4  # map 5 below zero everywhere
    data = [torch.randn(3, 32, 32) * 50 for _ in range(4)]
    res = run_topk_gallery(model, data, ["conv2"], k=2, out_dir=tmp_path / "a",
                           maps={"conv2": [5, 1]})
    assert res.inactive == {"conv2": [5]}
    assert res.projections["conv2"][0].abs().max() == 0 < res.projections["conv2"][1].abs().max()
    (s,) = read_sections(tmp_path / "a")
    assert "map 5 never above zero over these images, so blank" in s.figures[0].caption
    one = run_topk_gallery(model, data, ["conv2"], k=2, out_dir=tmp_path / "b",
                           maps={"conv2": [5, 1]}, seed="one")
    assert one.inactive == {} and one.projections["conv2"][0].abs().max() > 0
    (s,) = read_sections(tmp_path / "b")
    assert "seeded with 1" in s.caption and s.metrics["seed"] == "one"
    with pytest.raises(ValueError, match="seed='zero' is not known; valid: activation, one"):
        run_topk_gallery(model, data, ["conv2"], out_dir=tmp_path / "c", seed="zero")


def test_project_topk_reports_the_units_projected_of_all_across_its_passes() -> None:
    """The gallery's projection (minutes on a CPU after the mining) says how far it is:
    (units projected, units in all) after each batch, across the passes over the images."""
    from zfnet.analyses.gallery import project_topk
    from zfnet.analyses.topk import mine_topk

    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small").eval()
    data = _data(6)
    topk = mine_topk(model, data, ["conv2", "conv3"], 3)
    maps = {"conv2": [0, 1], "conv3": [2, 3, 4]}
    reports: list[tuple[int, int]] = []
    got = project_topk(model, data, topk, maps, images_per_pass=2, batch_size=2,
                       progress=lambda done, total: reports.append((done, total)))
    assert reports[-1] == (15, 15) and len(reports) > 3, reports  # 5 maps x k = 3
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert {t for _, t in reports} == {15}
    want = project_topk(model, data, topk, maps, images_per_pass=2, batch_size=2)
    for name in maps:
        assert torch.equal(got[name], want[name])
