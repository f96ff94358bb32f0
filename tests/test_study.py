"""`zfnet study` (Table 3): each (model, variant) trained in a folder of its own under --out,
any architecture zfnet trains among the models."""

from __future__ import annotations

import pytest

from zfnet.data import load_dataset
from zfnet.report import read_sections
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
    assert sorted(p.name for p in out.iterdir()) == ["nets.py_net-baseline", "study.json",
                                                     "zfnet_small-baseline"]
    assert rows[1]["parameters"] == 3 * 8 * 9 + 8 + 8 * 10 + 10
    # a variant is one of zfnet's model options: not for another architecture
    with pytest.raises(ValueError, match="takes none: study its baseline"):
        study(TINY, [f"{tmp_path}/nets.py:net"], ["fc_half"], out, 1)


def test_without_variants_named_each_model_gets_those_it_has(tmp_path) -> None:
    """zfnet's models Table 3's variants, another architecture its baseline: `zfnet study
    --models zfnet_small,torchvision:resnet18` needs no --variants (it was refused: resnet18 has
    no fc_half)."""
    from click.testing import CliRunner

    from zfnet.cli import main
    from zfnet.study import DEFAULT_VARIANTS, default_variants

    assert default_variants("zfnet_small") == DEFAULT_VARIANTS == (
        "baseline", "fc_half", "fc_double", "wide345", "no_conv34", "no_fc7", "no_fc67")
    assert default_variants("torchvision:resnet18") == ("baseline",)
    (tmp_path / "nets.py").write_text(NET)
    out = tmp_path / "study"
    res = CliRunner().invoke(main, ["study", "--data", TINY, "--models",
                                    f"{tmp_path}/nets.py:net", "--epochs", "1", "--batch-size",
                                    "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("*-*")) == ["nets.py_net-baseline"]
    # which run trains, and how it ended, as it goes; a long model name keeps the table aligned
    lines = res.output.splitlines()
    assert f"[1/1] {tmp_path}/nets.py:net, variant baseline: 1 epoch in {out}" in res.output
    assert any(x.startswith("[1/1] ") and "val top-1 error" in x for x in lines), res.output
    assert any(x.startswith("epoch 1/1 ") for x in lines), res.output  # train's epoch line
    header = next(x for x in lines if x.startswith("model "))
    row = next(x for x in lines if x.startswith(f"{tmp_path}/nets.py:net "))
    assert row.index("baseline") == header.index("variant"), res.output
    # what a guess scores, beside the errors (a 90% error is chance on 10 classes)
    classes = load_dataset(TINY).num_classes
    chance = f"chance: {100 * (1 - 1 / classes):.1f}% top-1 error ({classes} classes)"
    assert chance.capitalize() in lines, res.output
    (section,) = [s for s in read_sections(out) if s.key == "study"]
    assert chance in section.caption


def test_a_folder_of_photos_without_labels_is_refused_before_anything_is_written(
        tmp_path) -> None:
    from PIL import Image
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.coffee()).save(photos / "coffee.jpg")
    with pytest.raises(ValueError, match="has no labels to train on"):
        study(f"images:{photos}", ["zfnet_small"], ["baseline"], tmp_path / "study", 1)
    assert not (tmp_path / "study").exists()
    assert [p.name for p in photos.iterdir()] == ["coffee.jpg"]  # no mean image cached there


def test_a_signal_stops_the_study_and_the_same_call_continues_it(tmp_path, monkeypatch) -> None:
    """SIGTERM during the second variant's first epoch: the study stops (no row for a half-
    trained run), that run saved where it was; the same call then continues it and keeps the
    finished one. A variant given twice, or a run of another configuration where a variant's
    would go, is refused before anything trains."""
    import os
    import signal

    from zfnet.study import StudyInterrupted
    from zfnet.train import load_model, recipe

    out = tmp_path / "study"
    opts = {"batch_size": 16, "progress": False, "tensorboard": False}
    real, updates = recipe.renormalize_filters, [0]

    def renorm_then_signal(model, *args):  # after the 6th update in all: the 2nd run's 2nd
        real(model, *args)
        updates[0] += 1
        if updates[0] == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(recipe, "renormalize_filters", renorm_then_signal)
    with pytest.raises(StudyInterrupted, match="SIGTERM while training .*zfnet_small-fc_half"):
        study(TINY, ["zfnet_small"], ["baseline", "fc_half"], out, 1, **opts)
    assert load_model(out / "zfnet_small-baseline")[1]["epoch"] == 1
    monkeypatch.setattr(recipe, "renormalize_filters", real)
    rows = study(TINY, ["zfnet_small"], ["baseline", "fc_half"], out, 1, **opts)
    assert [r["variant"] for r in rows] == ["baseline", "fc_half"]
    assert load_model(out / "zfnet_small-fc_half")[1]["epoch"] == 1
    with pytest.raises(ValueError, match="variant 'baseline' is given twice"):
        study(TINY, ["zfnet_small"], ["baseline", "baseline"], tmp_path / "new", 1, **opts)
    with pytest.raises(ValueError) as e:  # another batch size: no --resume a study lacks
        study(TINY, ["zfnet_small"], ["no_fc7", "baseline"], out, 1, batch_size=32,
              progress=False, tensorboard=False)
    assert str(e.value).startswith(
        f"cannot continue the run in {out / 'zfnet_small-baseline'} with a different "
        "configuration (batch_size: ")
    assert not (out / "zfnet_small-no_fc7").exists() and not (tmp_path / "new").exists()


def test_a_variant_whose_loss_diverges_is_one_error_line_naming_it(tmp_path) -> None:
    """A NaN loss (an lr too high for a variant) stops the study with one `Error:` line naming
    the run and what to change, not a traceback."""
    from click.testing import CliRunner

    from zfnet.cli import main

    res = CliRunner().invoke(main, ["study", "--data", TINY, "--epochs", "2", "--batch-size",
                                    "16", "--variants", "baseline", "--lr", "50",
                                    "--out", str(tmp_path / "study")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = res.output.splitlines()  # the progress lines of the run, then one error line
    assert [x for x in lines if x.startswith("Error")] == lines[-1:], res.output
    assert lines[-1].startswith("Error: zfnet_small-baseline diverged: loss is nan")
    assert "a lower --lr, in another --out" in lines[-1]


def test_the_table_shows_no_top5_error_for_5_classes_or_fewer_and_the_papers_findings(
        tmp_path) -> None:
    """With 2 classes every class is in the top 5: the val top-5 error is "—" (as `zfnet train`
    says it), not a 0.0 that reads as a perfect score; the caption words Table 3's findings as
    the paper does (fc width: little difference; the removals are AlexNet's)."""
    import json

    from click.testing import CliRunner

    from zfnet.cli import main
    from zfnet.report import read_sections

    out = tmp_path / "study"
    res = CliRunner().invoke(main, ["study", "--data", f"{TINY}&classes=face,house", "--epochs",
                                    "1", "--batch-size", "16", "--variants", "baseline",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("zfnet_small"))
    assert line.split()[-1] == "—" and "0.0%" not in line.split()[-1]
    assert json.loads((out / "study.json").read_text())[0]["val_top5_error"] is None
    (section,) = [s for s in read_sections(out) if s.key == "study"]
    assert section.tables[0].rows[0][5] == "—"
    # each row's model links to its run's own page
    assert section.tables[0].links == ["zfnet_small-baseline/index.html"]
    assert '<a href="zfnet_small-baseline/index.html">zfnet_small</a>' in \
        (out / "index.html").read_text()
    assert "no val top-5 (—) with 5 classes or fewer" in section.caption
    assert "with the same recipe (batch 16, lr 0.01, cosine schedule)" in section.caption
    assert "the width of fc6-7 makes little difference" in section.caption
    assert "wider fc layers overfit" not in section.caption
    # the combinations the findings compare with: how to add their rows
    assert ("(no_conv34_fc67, wide345_fc_double, the combinations these findings compare "
            "with, were not trained here: --variants baseline,no_conv34_fc67,wide345_fc_double "
            "adds them.)") in section.caption


def test_a_variant_added_later_joins_the_table_of_the_same_study(tmp_path) -> None:
    """A second call into the same folder with another variant keeps the first call's rows
    (in Table 3's order; study.json holds them all); rows of runs removed since, or of another
    budget, are not shown beside it."""
    import json
    import shutil

    out = tmp_path / "study"
    opts = {"batch_size": 32, "progress": False, "tensorboard": False}
    study(TINY, ["zfnet_small"], ["no_fc7"], out, 1, **opts)
    rows = study(TINY, ["zfnet_small"], ["baseline"], out, 1, **opts)
    assert [r["variant"] for r in rows] == ["baseline", "no_fc7"]
    # each run has its own page, its training curves, as `zfnet train` leaves one
    assert (out / "zfnet_small-baseline" / "sections" / "training.json").is_file()
    assert (out / "zfnet_small-baseline" / "index.html").is_file()
    assert [r["variant"] for r in json.loads((out / "study.json").read_text())] == [
        "baseline", "no_fc7"]
    shutil.rmtree(out / "zfnet_small-baseline")
    said: list[str] = []
    rows = study(TINY, ["zfnet_small"], ["fc_half"], out, 1, say=said.append, **opts)
    assert [r["variant"] for r in rows] == ["fc_half", "no_fc7"]
    assert said[0] == (f"left out of the table: zfnet_small baseline, trained in {out} with "
                       "another budget or options, or removed since (their folders are kept)")
    said.clear()
    rows = study(TINY, ["zfnet_small"], ["fc_double"], out, 2, say=said.append,
                 **opts)  # another budget
    assert [r["variant"] for r in rows] == ["fc_double"]
    assert said[0].startswith("left out of the table: zfnet_small fc_half, zfnet_small no_fc7,")
