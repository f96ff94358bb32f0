"""Correspondence Δ (Fig. 8, Table 1) on hand-made cases."""

import pytest
import torch

import zfnet
from zfnet.analyses.correspondence import (
    correspondence,
    occlude_boxes,
    part_box,
    sign_consistency,
)


def test_sign_consistency_by_hand() -> None:
    eps = torch.tensor([[1.0, -2.0, 0.0, 3.0], [1.0, 2.0, 0.0, 3.0], [1.0, -2.0, 0.0, 3.0]])
    # pairs (0,1): 1/4, (0,2): 0, (1,2): 1/4 — each counted twice (ordered pairs)
    mean, std = sign_consistency(eps)
    assert mean == pytest.approx((0.25 + 0 + 0.25) / 3)
    assert std > 0
    with pytest.raises(ValueError, match="at least 2"):
        sign_consistency(eps[:1])


def test_part_box_and_occlusion() -> None:
    m = torch.zeros(10, 10, dtype=torch.bool)
    m[2:4, 5:9] = True
    assert part_box(m) == (2, 5, 4, 9)
    x = occlude_boxes(torch.ones(1, 3, 10, 10), [(2, 5, 4, 9)], fill=0.0)
    assert x.sum() == 300 - 3 * 8
    with pytest.raises(ValueError, match="empty"):
        part_box(torch.zeros(3, 3, dtype=torch.bool))


def test_correspondence_table_shape_and_determinism() -> None:
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", input_size=32)
    imgs = torch.randn(4, 3, 32, 32) * 50
    eyes = torch.zeros(4, 32, 32, dtype=torch.bool)
    eyes[:, 8:14, 8:14] = True
    rows = correspondence(model, imgs, {"eye": eyes}, random_draws=3)
    assert [r.part for r in rows] == ["eye", "random"]
    assert set(rows[0].delta) == {"pool5", "relu7"}
    assert all(0 <= v <= 1 for r in rows for v in r.delta.values())
    again = correspondence(model, imgs, {"eye": eyes}, random_draws=3)
    assert again[1].delta == rows[1].delta  # seeded random draws
    assert not any(m._forward_hooks for m in model.modules())


def test_correspondence_section(tmp_path) -> None:
    from zfnet.analyses.correspondence import CorrespondenceRow, correspondence_section
    from zfnet.report import read_sections

    rows = [CorrespondenceRow("eye", {"pool5": 0.05, "relu7": 0.06}, {"pool5": 0.01, "relu7": 0})]
    correspondence_section(tmp_path, rows, 5, "faces")
    (s,) = read_sections(tmp_path)
    assert s.tables[0].rows[0][0] == "eye" and len(s.tables[1].rows) == 4


def test_the_command_takes_any_model_and_the_parts_marked_on_your_photos(tmp_path) -> None:
    """`zfnet analyze correspondence --model torchvision:resnet18 --data images:DIR
    --parts-file FILE`: Table 1 and Fig. 8 of the user's photos, in the report. (It was
    refused: "needs a zfnet run".)"""
    import json

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from zfnet.cli import main
    from zfnet.report import read_sections

    photos = tmp_path / "dogs"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("rex.jpg", "fido.jpg", "lassie.jpg"):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(photos / name)
    parts = {n: {"left eye": [30, 20, 38, 28], "right eye": [42, 20, 50, 28],
                 "nose": [36, 32, 44, 40]} for n in ("rex.jpg", "fido", "lassie.jpg")}
    (photos / "parts.json").write_text(json.dumps(parts))
    out = tmp_path / "look"
    res = CliRunner().invoke(main, [
        "analyze", "correspondence", "--model", "torchvision:resnet18", "--mean", "0.5,0.5,0.5",
        "--std", "0.25,0.25,0.25", "--resize", "40", "--crop", "32", "--data", f"images:{photos}",
        "--parts-file", str(photos / "parts.json"), "--draws", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines[:4]] == [
        ["left", "eye"], ["right", "eye"], ["nose", "layer4"], ["random", "layer4"]]
    assert "avgpool" in lines[0] and lines[-1].startswith("report: ")
    (s,) = [s for s in read_sections(out) if s.key == "correspondence"]
    assert "3 images of parts.json (parts marked by hand)" in s.caption
    assert s.source.startswith("torchvision:resnet18") and f"images:{photos}" in s.source
    assert [r[0] for r in s.tables[0].rows] == ["left eye", "right eye", "nose", "random"]
    assert (out / s.figures[0].path).is_file()


def test_a_part_marked_past_its_image_is_cut_and_said(tmp_path) -> None:
    """A box far past its image (marked on a larger copy of the photo) was cut to the image
    without a word; the analysis still runs, and says so once."""
    import json

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from zfnet.cli import main

    photos = tmp_path / "dogs"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("rex.jpg", "fido.jpg"):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(photos / name)
    parts = {"rex.jpg": {"nose": [36, 32, 44, 40]}, "fido.jpg": {"nose": [30, 20, 5000, 5000]}}
    (photos / "parts.json").write_text(json.dumps(parts))
    res = CliRunner().invoke(main, [
        "analyze", "correspondence", "--model", "torchvision:resnet18", "--resize", "40",
        "--crop", "32", "--data", f"images:{photos}", "--parts-file",
        str(photos / "parts.json"), "--draws", "2", "--out", str(tmp_path / "look")])
    assert res.exit_code == 0, res.output
    said = [ln for ln in res.stderr.splitlines() if "reaches past the image" in ln]
    assert said == [f"warning: parts file {photos / 'parts.json'}, 'fido.jpg', part 'nose': it "
                    "reaches past the image (30, 20, 5000, 5000 on a 80x60 image, left, top, "
                    "right, bottom): cut to it (marked on another size of the image?)"]


def test_a_vision_transformer_is_compared_at_the_vector_its_classifier_reads() -> None:
    """Table 1 on a ViT (no stage with a spatial map): the vector its classifier reads, where
    the default layers stopped with "has no stage with a spatial map to show"."""
    import timm

    from zfnet.analyses.correspondence import default_layers

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                            num_classes=3).eval()
    assert default_layers(vit, 32) == ("fc_norm",)
