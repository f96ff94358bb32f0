"""Transfer (Tables 4-5): input adaptation, repetition, and the study end to end on tiny data."""

import pytest
import torch

import zfnet
from zfnet.analyses.transfer import (
    AdaptedImages,
    Repeated,
    adapt_bundle,
    adapt_images,
    transfer_section,
    transfer_study,
)
from zfnet.data import load_dataset
from zfnet.report import read_sections
from zfnet.train import load_model

TINY = "synthetic?n_train=40&n_val=20&size=32&classes=face,house"


def test_grey_to_rgb_replicates_and_resizes() -> None:
    x = torch.arange(16.0).reshape(1, 4, 4)
    y = adapt_images(x, 3, 4)
    assert y.shape == (3, 4, 4) and torch.equal(y[0], x[0]) and torch.equal(y[2], x[0])
    z = adapt_images(torch.full((2, 1, 28, 28), 7.0), 3, 64)  # batched, constant stays constant
    assert z.shape == (2, 3, 64, 64) and torch.allclose(z, torch.full_like(z, 7.0))
    assert adapt_images(torch.ones(3, 8, 8) * torch.tensor([1.0, 2, 3])[:, None, None], 1,
                        8).unique().tolist() == [2.0]
    with pytest.raises(ValueError, match="grey <-> RGB"):
        adapt_images(torch.ones(2, 4, 4), 3, 4)


def test_adapted_bundle_and_repeated_items() -> None:
    b = load_dataset(TINY)
    a = adapt_bundle(b, 1, 24)
    x, y = a.train[3]
    assert x.shape == (1, 24, 24) and y == b.train[3][1]
    assert a.in_channels == 1 and a.input_size == 24 and a.mean.shape[0] == 1
    assert adapt_bundle(b, 3, 32) is b
    r = Repeated(AdaptedImages(b.val, 3, 16), 3)
    assert len(r) == 3 * len(b.val) and torch.equal(r[len(b.val) + 1][0], r[1][0])


def test_transfer_study_end_to_end(tmp_path, one_thread) -> None:
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", num_classes=4, input_size=32, in_channels=1)
    rows = transfer_study(model, TINY, (1, 3), tmp_path, model_name="zfnet_small",
                          model_opts={}, n_test=10, scratch_steps=4, batch_size=4)
    assert [r.per_class for r in rows] == [1, 3]
    assert [r.n_train for r in rows] == [2, 6] and all(r.n_test == 10 for r in rows)
    for r in rows:
        assert 0 <= r.fixed <= 1 and 0 <= r.scratch <= 1
    # the scratch runs took the model's input shape (grey 32 px) from the adapted target
    cfg = (tmp_path / "transfer" / "scratch_3_per_class" / "config.json").read_text()
    assert '"model": "zfnet_small"' in cfg
    net = load_model(tmp_path / "transfer" / "scratch_3_per_class")[1]["model_config"]
    assert (net["in_channels"], net["input_size"], net["num_classes"]) == (1, 32, 2)
    again = transfer_study(model, TINY, (1,), tmp_path, model_name="zfnet_small", n_test=10,
                           scratch_steps=2, batch_size=4)  # re-run replaces its own output
    assert len(again) == 1
    transfer_section(tmp_path, rows, "zfnet_small on x", TINY)
    (section,) = [s for s in read_sections(tmp_path) if s.key == "transfer"]
    assert section.tables[0].rows[1][:3] == [3, 6, 10]
    assert section.tables[1].rows == [  # the paper's Tables 4-5 beside ours (PAPER.md)
        ["Caltech-101", 15, "83.8%", "22.8%"], ["Caltech-101", 30, "86.5%", "46.5%"],
        ["Caltech-256", 15, "65.7%", "9.0%"], ["Caltech-256", 30, "70.6%", "22.5%"],
        ["Caltech-256", 45, "72.7%", "31.2%"], ["Caltech-256", 60, "74.2%", "38.8%"]]
    with pytest.raises(ValueError, match="valid"):
        transfer_study(model, TINY, (1,), tmp_path, model_name="zfnet_small", layer="fc99")


def test_a_from_scratch_run_that_diverges_is_a_row_that_says_so(tmp_path, one_thread,
                                                                  monkeypatch) -> None:
    """A NaN loss in a from-scratch run (seen with 1 image per class) is
    that row's result, "diverged", in the table and the command's output: not a traceback."""
    from click.testing import CliRunner

    from zfnet.cli import main

    model = zfnet.create_model("zfnet_small", num_classes=4, input_size=32, in_channels=1)
    rows = transfer_study(model, TINY, (1, 2), tmp_path, model_name="zfnet_small", n_test=10,
                          scratch_steps=20, batch_size=2, lr=1e4)
    assert [r.scratch for r in rows] == [None, None] and all(0 <= r.fixed <= 1 for r in rows)
    transfer_section(tmp_path, rows, "zfnet_small on x", TINY)
    (section,) = [s for s in read_sections(tmp_path) if s.key == "transfer"]
    assert section.tables[0].rows[0][4] == "diverged (NaN loss)"
    assert "marked diverged stopped on a NaN loss" in section.caption

    run = tmp_path / "run"
    assert CliRunner().invoke(main, ["train", "--data", TINY, "--model", "zfnet_small", "--out",
                                     str(run), "--epochs", "1", "--batch-size", "16",
                                     "--quiet", "--no-tensorboard"]).exit_code == 0
    from zfnet.analyses import transfer

    real = transfer.transfer_study
    monkeypatch.setattr(transfer, "transfer_study", lambda *a, **k: real(*a, **k, lr=1e4))
    res = CliRunner().invoke(main, ["analyze", "transfer", "--checkpoint", str(run), "--data",
                                    TINY, "--shots", "1", "--scratch-steps", "4",
                                    "--batch-size", "2", "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert "1/class  test accuracy: fixed" in res.output  # accuracy, said
    assert "scratch diverged (NaN loss)" in res.output


def test_shots_beyond_the_data_say_how_many_it_had_and_bad_shots_are_refused(
        tmp_path, one_thread) -> None:
    """`--shots 30` on classes of 20 images is not a row reading "30 per class" (the paper's
    30/class figures beside it): it says how many the data had. A shot given twice, or an
    unknown dataset, is refused before anything is written, the spec named as given."""
    model = zfnet.create_model("zfnet_small", num_classes=4, input_size=32, in_channels=1)
    small = "synthetic?n_train=20&n_val=10&size=32&classes=face,house"
    (row,) = transfer_study(model, small, (30,), tmp_path, model_name="zfnet_small",
                            n_test=10, scratch_steps=2, batch_size=4)
    assert row.found and row.per_class_words() == f"30 (of which {row.found} in the data)"
    transfer_section(tmp_path, [row], "zfnet_small on x", small)
    (section,) = [s for s in read_sections(tmp_path) if s.key == "transfer"]
    assert section.tables[0].rows[0][0] == row.per_class_words()
    with pytest.raises(ValueError, match="shots 5 given twice"):
        transfer_study(model, TINY, (5, 1, 5), tmp_path / "b", model_name="zfnet_small")
    with pytest.raises(ValueError, match="in spec 'nosuch';"):
        transfer_study(model, "nosuch", (1,), tmp_path / "b", model_name="zfnet_small")
    # a last N too large to hold is refused before the first N's runs, not after them
    with pytest.raises(ValueError, match="at most 8 GiB"):
        transfer_study(model, "synthetic", (1, 100000), tmp_path / "b", model_name="zfnet_small")
    assert not (tmp_path / "b").exists()


def test_a_pretrained_model_of_any_source_transfers_on_its_own_inputs(tmp_path, one_thread,
                                                                     offline) -> None:
    """`zfnet analyze transfer --model torchvision:resnet18 --weights FILE`: the fixed arm is
    the model's classifier input (avgpool) on the target as that model's inputs (its mean and
    std, resize and crop), the scratch arm the same architecture trained on those inputs; the
    report names the model. It was refused: "needs a zfnet run"."""
    import torchvision
    from click.testing import CliRunner
    from torch.utils.data import DataLoader, Subset

    from zfnet.analyses.probes import extract_features, fit_linear
    from zfnet.cli import main
    from zfnet.data import collate
    from zfnet.sources import load_source

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "w.pth")
    model = ["--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pth"),
             "--resize", "40", "--crop", "32"]
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["analyze", "transfer", *model, "--data", TINY, "--out",
                                  str(out), "--shots", "1,3", "--test", "10",
                                  "--scratch-steps", "3", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "/class" in ln]
    assert [ln.split()[0] for ln in lines] == ["1/class", "3/class"]
    # the fixed arm, computed here from the model's own inputs
    src = load_source("torchvision:resnet18", str(tmp_path / "w.pth"), resize=40, crop=32)
    few = load_dataset(f"{TINY}&per_class=3", preprocessing=src.preprocessing)
    kw = {"batch_size": 128, "collate_fn": collate}
    ftr, ytr = extract_features(src.model, DataLoader(few.train.with_mode("centre"), **kw),
                                ["avgpool"])
    fte, yte = extract_features(src.model, DataLoader(Subset(few.val, range(10)), **kw),
                                ["avgpool"])
    fixed = fit_linear("softmax", ftr["avgpool"], ytr, fte["avgpool"], yte, seed=0)
    assert f"fixed {fixed:.1%}" in lines[1], (fixed, lines)
    # the scratch arm: torchvision's resnet18 built for the target's 2 classes at 32 px
    meta = load_model(out / "transfer" / "scratch_3_per_class")[1]
    assert meta["model"] == "torchvision:resnet18" and meta["num_classes"] == 2
    (section,) = [s for s in read_sections(out) if s.key == "transfer"]
    assert section.tables[0].caption.startswith(f"source: torchvision:resnet18 {tmp_path}")
    assert "layers up to avgpool fixed" in section.tables[0].columns[3]


def test_the_caption_says_where_this_run_differs_from_the_papers_finding(tmp_path) -> None:
    """The paper found fixed features far ahead at small N; a run whose fixed features score
    below the model trained from scratch says so, at which N, beside the paper's words."""
    from zfnet.analyses.transfer import TransferRow

    rows = [TransferRow(5, 20, 40, 0.494, 0.582, 1.0), TransferRow(20, 80, 40, 0.8, 0.7, 1.0)]
    section = transfer_section(tmp_path, rows, "zfnet_small on x", TINY)
    assert ("Here the fixed features score below the model trained from scratch at N = 5 "
            "(49.4% against 58.2%)") in section.caption
    rows = [TransferRow(5, 20, 40, 0.7, 0.5, 1.0)]
    assert "Here the fixed" not in transfer_section(tmp_path, rows, "m", TINY).caption


def test_a_from_scratch_run_that_did_not_learn_is_marked(tmp_path, monkeypatch) -> None:
    """A SqueezeNet from scratch kept its loss at ln 7 for every step (its outputs the same for
    every image) and the table showed its chance score as what it learned; now marked."""
    import math

    import zfnet.train

    monkeypatch.setattr(zfnet.train, "train", lambda *a, **k: {
        "final": {"val_top1_error": 0.5, "train_loss": math.log(2) + 1e-5}})
    model = zfnet.create_model("zfnet_small", num_classes=4, input_size=32, in_channels=1)
    (row,) = transfer_study(model, TINY, (1,), tmp_path, model_name="zfnet_small", n_test=10,
                            scratch_steps=2, batch_size=2)
    assert row.stuck and row.scratch_words() == "50.0% (did not learn)"
    section = transfer_section(tmp_path, [row], "zfnet_small on x", TINY)
    assert "marked 'did not learn' ended with its training loss at ln" in section.caption
