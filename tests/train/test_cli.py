"""`zfnet train` / `zfnet eval` command lines, and evaluate_checkpoint's report."""

import json
import re

import pytest
from click.testing import CliRunner

from tests.train.tiny import tiny_bundle
from zfnet.cli import main
from zfnet.train import TrainConfig, evaluate_checkpoint, parse_model_opt


@pytest.mark.parametrize("cmd", ["train", "eval"])
def test_help(cmd) -> None:
    r = CliRunner().invoke(main, [cmd, "--help"])
    assert r.exit_code == 0, r.output
    assert {"train": "--resume", "eval": "--ten-crop"}[cmd] in r.output


def test_parse_model_opt() -> None:
    assert parse_model_opt("fc_width=2048") == ("fc_width", 2048)
    assert parse_model_opt("remove=conv3,conv4") == ("remove", ["conv3", "conv4"])
    assert parse_model_opt("conv_widths=512,1024,512") == ("conv_widths", [512, 1024, 512])
    assert parse_model_opt("init=paper") == ("init", "paper")
    assert parse_model_opt("dropout=0.25") == ("dropout", 0.25)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_opt("fc_width")


def test_a_model_opt_given_twice_is_the_later_said_so(tmp_path) -> None:
    res = CliRunner().invoke(main, [
        "train", "--data", "synthetic?n_train=16&n_val=8&size=32", "--model", "zfnet_small",
        "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", "--quiet",
        "--no-tensorboard", "--model-opt", "remove=conv3", "--model-opt", "remove=conv4"])
    assert res.exit_code == 0, res.output
    assert "note: --model-opt remove is given twice (remove=conv3, then remove=conv4): the " \
        "later is used; for both, give one list (remove=A,B)" in res.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model_opts"]
    assert saved["remove"] == ["conv4"]


def test_train_errors_are_clear(tmp_path) -> None:
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--data and --model required to start a run" in r.output
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "r"), "--data", "x",
                                  "--model", "zfnet_small", "--model-opt", "nope"])
    assert r.exit_code == 1 and "KEY=VALUE" in r.output


def test_evaluate_checkpoint_report(reference) -> None:
    out = reference[0]
    centre = evaluate_checkpoint(out, None, bundle=tiny_bundle(), device="cpu")
    ten = evaluate_checkpoint(out, "tiny", True, bundle=tiny_bundle(ten_crop=True), device="cpu")
    for r in (centre, ten):
        json.dumps(r)  # JSON-ready
        assert r["n"] == 16 and r["model"] == "zfnet_small" and r["epoch"] == 3
        cm = r["confusion_matrix"]
        assert len(cm) == 4 and sum(map(sum, cm)) == 16
        assert r["top1_error"] == pytest.approx(1 - sum(cm[i][i] for i in range(4)) / 16)
        assert set(r["per_class_accuracy"]) == {"c0", "c1", "c2", "c3"}
    assert ten["ten_crop"] and not centre["ten_crop"]
    exact = evaluate_checkpoint(out, None, bundle=tiny_bundle(), device="cpu", amp="off")
    assert exact["loss"] == pytest.approx(reference[1]["final"]["val_loss"], abs=1e-6)  # fp32 run
    bf16 = evaluate_checkpoint(out, None, bundle=tiny_bundle(), device="cpu", amp="bf16")
    assert bf16["amp"] == "bf16" and bf16["loss"] == pytest.approx(exact["loss"], rel=0.05)
    with pytest.raises(ValueError, match="has 10 classes but the model"):
        from dataclasses import replace

        evaluate_checkpoint(out, "tiny", bundle=replace(tiny_bundle(), num_classes=10))
    # as many classes, other names: scored, with a warning that names the first that differ
    from zfnet.data.bundle import ClassNamesWarning

    other = replace(tiny_bundle(), class_names=["c0", "dog", "c2", "cat"])
    with pytest.warns(ClassNamesWarning, match=r"2 of 4 differ \('c1' vs 'dog', 'c3' vs 'cat'\)"):
        assert evaluate_checkpoint(out, "other", bundle=other, device="cpu")["n"] == 16


@pytest.mark.parametrize(("sig", "code", "by"), [("SIGINT", 130, "SIGINT"),
                                                 (None, 143, "a signal to another process")])
def test_train_interrupted_exits_as_its_signal_says(tmp_path, monkeypatch, sig, code, by) -> None:
    """Under torchrun the processes that did not get the signal stop too (signal None): they
    exit as after SIGTERM, naming why, instead of failing on the missing name."""
    import zfnet.train

    summary = {"status": "interrupted", "signal": sig, "final": {}, "wall_time_s": 1.0,
               "device": "cpu", "run_dir": str(tmp_path), "checkpoint": "c", "plan": None}
    monkeypatch.setattr(zfnet.train, "train", lambda config: summary)
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "r"), "--data", "synthetic",
                                  "--model", "zfnet_small"])
    assert r.exit_code == code, r.output
    assert f"interrupted by {by}: continue with --resume" in r.output


def test_a_relative_data_path_is_saved_absolute(tmp_path, monkeypatch) -> None:
    """A run started in the data's folder is scored and resumed from anywhere: its spec is
    saved with the path (and val_labels' file) made absolute; the relative form, given again
    from there, is the same data."""
    from PIL import Image

    from zfnet.data.spec import absolute_spec

    for split in ("train", "val"):
        for k, cls in enumerate(("a", "b")):
            (tmp_path / "photos" / split / cls).mkdir(parents=True)
            for j in range(4 if split == "train" else 2):
                Image.new("RGB", (40, 40), (60 * k + 10 * j, 90, 120)).save(
                    tmp_path / "photos" / split / cls / f"{j}.png")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    args = ["--model", "zfnet_small", "--out", str(run), "--batch-size", "4", "--quiet",
            "--no-tensorboard"]
    res = CliRunner().invoke(main, ["train", "--data", "imagefolder:photos?size=32",
                                    "--epochs", "1", *args])
    assert res.exit_code == 0, res.output
    saved = json.loads((run / "config.json").read_text())["data"]
    assert saved == f"imagefolder:{tmp_path / 'photos'}?size=32"
    res = CliRunner().invoke(main, ["train", "--data", "imagefolder:photos?size=32",
                                    "--epochs", "2", "--resume", *args])  # the same data
    assert res.exit_code == 0, res.output
    monkeypatch.chdir(tmp_path / "photos")  # elsewhere
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run)])
    assert res.exit_code == 0 and "top-1 error" in res.output, res.output
    assert absolute_spec("imagefolder:x?val_labels=v.txt&size=32") == \
        f"imagefolder:{tmp_path / 'photos' / 'x'}?val_labels={tmp_path / 'photos' / 'v.txt'}" \
        "&size=32"
    assert absolute_spec("synthetic?n_train=8") == "synthetic?n_train=8"
    assert absolute_spec("imagefolder:/data/x") == "imagefolder:/data/x"


def test_a_folder_of_class_folders_trains_and_scores_on_its_held_out_share(tmp_path) -> None:
    """`my_photos/<class>/*` with val_split: trained on the rest, validated, resumed and scored
    later on the same held-out images (the run's spec holds the share)."""
    from PIL import Image

    for k, cls in enumerate(("a", "b")):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for j in range(5):
            Image.new("RGB", (40, 40), (60 * k + 10 * j, 90, 120)).save(
                tmp_path / "photos" / cls / f"{j}.png")
    run = tmp_path / "run"
    data = f"imagefolder:{tmp_path / 'photos'}?size=32&val_split=0.2"
    args = ["--model", "zfnet_small", "--out", str(run), "--batch-size", "4", "--quiet",
            "--no-tensorboard", "--data", data]
    res = CliRunner().invoke(main, ["train", "--epochs", "1", *args])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["train", "--epochs", "2", "--resume", *args])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run)])
    assert res.exit_code == 0, res.output
    assert re.search(r"^  a +\d+\.\d+%$", res.output, re.M), res.output  # per class, of 2
    from zfnet.data import load_dataset

    bundle = load_dataset(data)
    assert (len(bundle.train), len(bundle.val)) == (8, 2)


def test_a_file_whose_name_is_no_utf8_is_trained_on_scored_mined_and_named(tmp_path) -> None:
    """A file from an old archive (its name Latin-1 bytes, no UTF-8) in a folder: the mean
    image's cache key, the mining's digest and every page, table and CSV that names it took it
    (each was a UnicodeEncodeError, after the work); written with its odd byte as \\xe9."""
    import os

    from PIL import Image

    for split in ("train", "val"):
        for k, cls in enumerate(("a", "b")):
            (tmp_path / "photos" / split / cls).mkdir(parents=True)
            for j in range(3 if split == "train" else 2):
                name = os.fsdecode(b"caf\xe9%d.png" % j) if cls == "b" else f"{j}.png"
                Image.new("RGB", (40, 40), (60 * k + 10 * j, 90, 120)).save(
                    tmp_path / "photos" / split / cls / name)
    run, data = tmp_path / "run", f"imagefolder:{tmp_path / 'photos'}?size=32"
    for args in (["train", "--data", data, "--model", "zfnet_small", "--out", str(run),
                  "--epochs", "1", "--batch-size", "4", "--quiet", "--no-tensorboard"],
                 ["eval", "--checkpoint", str(run), "--out", str(run)],
                 ["visualize", "topk", "--checkpoint", str(run), "--out", str(run), "--layer",
                  "conv1", "--k", "2"],
                 ["predict", str(tmp_path / "photos" / "val" / "b"), "--checkpoint", str(run),
                  "--out", str(tmp_path / "pred.csv")]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, (args[0], res.output)
    assert "caf\\xe90.png" in (tmp_path / "pred.csv").read_text()
    table = json.loads((run / "gallery" / "topk.json").read_text())  # exact in JSON
    assert os.fsdecode(b"b/caf\xe90.png") in json.dumps(table, ensure_ascii=False)


def test_train_writes_its_report_and_eval_out_adds_the_evaluation(tmp_path) -> None:
    """`zfnet train` ends with the Training section and RUN/index.html; `zfnet eval --out RUN`
    adds the Evaluation section, printing and writing --json exactly as without --out."""
    run = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "--data", "synthetic?n_train=16&n_val=8&size=32", "--model", "zfnet_small",
        "--out", str(run), "--epochs", "1", "--batch-size", "8", "--quiet", "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    assert f"report: {(run / 'index.html').resolve()}" in res.output
    assert (run / "sections" / "training.json").is_file()
    page = (run / "index.html").read_text()
    assert 'id="training"' in page and 'id="evaluation"' not in page
    plain = CliRunner().invoke(main, ["eval", "--checkpoint", str(run),
                                      "--json", str(tmp_path / "plain.json")])
    assert plain.exit_code == 0, plain.output
    assert not (run / "sections" / "evaluation.json").exists()
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--out", str(run),
                                    "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert res.stdout == plain.stdout.replace("plain.json", "e.json") + \
        f"report: {(run / 'index.html').resolve()}\n"
    assert (tmp_path / "e.json").read_text() == (tmp_path / "plain.json").read_text()
    page = (run / "index.html").read_text()
    assert 'id="training"' in page and 'id="evaluation"' in page and "per-class accuracy" in page
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["top1_error"] == round(r["top1_error"], 6) and r["top5_error"] * 8 % 1 == 0
    assert "--out" in CliRunner().invoke(main, ["eval", "--help"]).output
    # --json into the --out folder it creates; a mid-epoch checkpoint named as such
    import shutil

    from zfnet.train import find_last

    last = find_last(run)
    meta = json.loads((last / "state.json").read_text())
    meta["epoch"], meta["step_in_epoch"] = 0, 1  # as if stopped one step into epoch 1
    (last / "state.json").write_text(json.dumps(meta))
    new = tmp_path / "new"
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(last), "--out", str(new),
                                    "--json", str(new / "e.json")])
    assert res.exit_code == 0, res.output
    assert "zfnet_small (epoch 0 + 1 step of epoch 1) on synthetic" in res.output
    assert json.loads((new / "e.json").read_text())["step_in_epoch"] == 1
    section = json.loads((new / "sections" / "evaluation.json").read_text())
    assert section["metrics"]["checkpoint"] == "epoch 0 + 1 step of epoch 1"
    assert section["source"].startswith("zfnet_small, data synthetic")
    shutil.rmtree(new)
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(last),  # its folder made, as
                                    "--json", str(tmp_path / "nowhere" / "e.json")])  # predict's
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "nowhere" / "e.json").read_text())["step_in_epoch"] == 1


def test_eval_writes_error_rates_without_float_noise() -> None:
    """Errors as counts over n: 1 wrong of 3 is 1 / 3 exactly, not 1 - 2 / 3 (and 59 of 1000
    is 0.059 in eval.json and metrics.csv, not 0.05900000000000005)."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from zfnet.train.recipe import evaluate

    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3))  # predicts the input's one-hot class
    x, y = torch.eye(3).view(3, 3, 1, 1), torch.tensor([0, 1, 0])  # the third is wrong
    r = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=2), 3)
    assert 1 - 2 / 3 != 1 / 3 and r["top1_error"] == 1 / 3 and r["top5_error"] == 0


def _fake_run(run, monkeypatch, status: str, sig: str | None):
    """`zfnet train` with a stand-in training that leaves a run of one epoch in `run`."""
    import zfnet.train

    run.mkdir()
    (run / "metrics.csv").write_text(
        "epoch,global_step,lr,train_loss,train_top1_error,val_loss,val_top1_error,"
        "val_top5_error,epoch_time_s,img_per_s,skipped\n1,4,0.01,2.3,0.9,2.2,0.85,0.4,1.0,50,0\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "epoch_0001.pth").write_bytes(b"weights")
    summary = {"status": status, "signal": sig, "final": {}, "wall_time_s": 1.0,
               "device": "cpu", "run_dir": str(run), "checkpoint": "c", "plan": None}
    monkeypatch.setattr(zfnet.train, "train", lambda config: summary)
    return CliRunner().invoke(main, ["train", "--out", str(run), "--data", "synthetic",
                                     "--model", "zfnet_small"])


def test_a_run_stopped_by_a_signal_still_gets_its_report(tmp_path, monkeypatch) -> None:
    r = _fake_run(tmp_path / "r", monkeypatch, "interrupted", "SIGTERM")
    assert r.exit_code == 143, r.output
    assert 'id="training"' in (tmp_path / "r" / "index.html").read_text()


def test_a_report_failure_is_a_warning_and_keeps_the_run(tmp_path, monkeypatch) -> None:
    import zfnet.report.training

    def broken(run_dir):
        raise OSError("disk full")

    monkeypatch.setattr(zfnet.report.training, "training_section", broken)
    r = _fake_run(tmp_path / "r", monkeypatch, "completed", None)
    assert r.exit_code == 0, r.output
    assert "warning: the run is saved, but its report page was not written (OSError: disk " \
        "full)" in r.output
    assert (tmp_path / "r" / "checkpoints" / "epoch_0001.pth").read_bytes() == b"weights"
    assert not (tmp_path / "r" / "index.html").exists()


def test_resume_on_moved_or_changed_data(tmp_path) -> None:
    """The run's images moved (another path, "DIR/" for "DIR") continue the run, said in a
    warning; the same path whose images changed continues with a warning that says how; other
    classes, or another number of images under a new path, are refused before anything is
    written."""
    import shutil

    from PIL import Image

    def photos(root, per_class=4, classes=("a", "b")):
        for split in ("train", "val"):
            for k, cls in enumerate(classes):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                for j in range(per_class if split == "train" else 2):
                    Image.new("RGB", (40, 40), (60 * k + 10 * j, 90, 120)).save(
                        root / split / cls / f"{j}.png")

    photos(tmp_path / "photos")
    run = tmp_path / "run"
    args = ["--model", "zfnet_small", "--out", str(run), "--batch-size", "4", "--quiet",
            "--no-tensorboard"]

    def train(data, epochs):
        return CliRunner().invoke(main, ["train", "--data", f"imagefolder:{data}?size=32",
                                         "--epochs", str(epochs), "--resume", *args])

    assert train(tmp_path / "photos", 1).exit_code == 0
    res = train(f"{tmp_path / 'photos'}/", 2)  # the same folder
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    shutil.copytree(tmp_path / "photos", tmp_path / "moved")
    res = train(tmp_path / "moved", 3)
    assert res.exit_code == 0, res.output
    assert f"warning: the run's data is now imagefolder:{tmp_path / 'moved'}?size=32 (was " \
        f"imagefolder:{tmp_path / 'photos'}?size=32): 8 training images of 2 classes, as " \
        "many as the run's (their contents are not compared)" in " ".join(res.output.split())
    assert json.loads((run / "config.json").read_text())["data"].startswith(
        f"imagefolder:{tmp_path / 'moved'}")
    Image.new("RGB", (40, 40)).save(tmp_path / "moved" / "train" / "a" / "9.png")
    res = train(tmp_path / "moved", 4)
    assert res.exit_code == 0, res.output
    assert "warning: the data of the run has changed since it was saved (9 training images " \
        "now, 8 in the run): it continues" in res.output
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    photos(tmp_path / "other", per_class=3)  # the classes, not the images
    res = train(tmp_path / "other", 5)
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert f"cannot --resume the run in {run} on imagefolder:{tmp_path / 'other'}?size=32: " \
        "6 training images now, 9 in the run" in res.output
    photos(tmp_path / "three", classes=("a", "b", "c"))
    res = train(tmp_path / "three", 5)
    assert res.exit_code == 1 and "3 classes now, 2 in the run; new: c" in res.output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    # refused before a pass over their training images for a mean image: none made, none cached
    assert not (tmp_path / "other" / ".zfnet-cache").exists()
    assert not (tmp_path / "three" / ".zfnet-cache").exists()
    res = CliRunner().invoke(main, ["train", "--data", f"imagefolder:{tmp_path / 'three'}?size=8",
                                    "--epochs", "1", *args[:-5], str(tmp_path / "small"),
                                    "--quiet", "--no-tensorboard"])
    assert res.exit_code == 1 and "input_size=8 is too small" in res.output, res.output
    assert not (tmp_path / "three" / ".zfnet-cache").exists() and not (tmp_path / "small").exists()


def test_a_resume_on_another_number_of_processes_says_it_is_not_exact() -> None:
    import torch

    from zfnet.train.distributed import DistInfo
    from zfnet.train.run import ResumeWarning, _warn_inexact

    one = DistInfo(0, 1, 0, torch.device("cpu"))
    with pytest.warns(ResumeWarning, match=r"resumed on 1 process\(es\), the run had 2"):
        _warn_inexact({"world_size": 2, "workers": 0}, one, 0, tiny_bundle(), 0)
    shards = type("Bundle", (), {"train": type("S", (), {"epoch_stream": None})()})()
    with pytest.warns(ResumeWarning, match=r"mid-epoch with 0 worker\(s\), the run had 2.*"
                                           r"--workers 2 keeps it"):
        _warn_inexact({"world_size": 1, "workers": 2}, one, 0, shards, 3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_inexact({"world_size": 1, "workers": 2}, one, 0, shards, 0)  # epoch start: exact
        _warn_inexact({"world_size": 1, "workers": 2}, one, 0, tiny_bundle(), 3)  # a folder


@pytest.mark.parametrize("status", ["completed", "interrupted"])
def test_under_torchrun_only_the_first_process_prints_the_summary(monkeypatch, tmp_path,
                                                                  status) -> None:
    import zfnet.train
    import zfnet.train.distributed

    summary = {"run_dir": str(tmp_path), "status": status, "final": {}, "wall_time_s": 1.0,
               "device": "cpu", "checkpoint": None, "plan": None,
               "signal": "SIGTERM" if status == "interrupted" else None}
    monkeypatch.setattr(zfnet.train, "train", lambda config: summary)
    monkeypatch.setattr(zfnet.train.distributed, "current_rank", lambda: 1)
    r = CliRunner().invoke(main, ["train", "--data", "synthetic", "--model", "zfnet_small",
                                  "--out", str(tmp_path / "run")])
    assert r.output == "" and r.exit_code == (143 if status == "interrupted" else 0)
    monkeypatch.setattr(zfnet.train.distributed, "current_rank", lambda: 0)
    r = CliRunner().invoke(main, ["train", "--data", "synthetic", "--model", "zfnet_small",
                                  "--out", str(tmp_path / "run")])
    assert f"{status} in 1 s on cpu" in r.output


@pytest.mark.parametrize(("summary", "said"), [
    # stopped 4 steps into epoch 16, epoch 15 complete: its name reads epoch_0015_step_000004
    ({"status": "interrupted", "signal": "SIGINT", "epochs_completed": 15, "step_in_epoch": 4,
      "final": {"epoch": 15, "val_top1_error": 0.381, "val_top5_error": 0.12},
      "num_classes": 10, "checkpoint": "r/checkpoints/epoch_0015_step_000004"},
     "stopped 4 steps into epoch 16 (epoch 15: val top-1 error 38.10%, top-5 12.00%)\n"
     "interrupted in 1 s on cpu; run: r; checkpoint: r/checkpoints/epoch_0015_step_000004 "
     "(epoch 15 + 4 steps of epoch 16)\n"),
    ({"status": "interrupted", "signal": "SIGINT", "epochs_completed": 0, "step_in_epoch": 1,
      "final": {}, "checkpoint": "c"}, "stopped 1 step into epoch 1\ninterrupted in 1 s on"),
    # 5 classes: top-5 as eval words it; 2 processes said
    ({"status": "completed", "signal": None, "epochs_completed": 2, "step_in_epoch": 0,
      "final": {"epoch": 2, "val_top1_error": 0.5, "val_top5_error": 0.0}, "num_classes": 5,
      "world_size": 2, "checkpoint": "c"},
     "epoch 2: val top-1 error 50.00%, top-5: every one of the 5 classes\n"
     "completed in 1 s on 2 processes (cpu); run: r; checkpoint: c\n"),
])
def test_the_closing_lines_say_where_the_run_stopped(monkeypatch, tmp_path, summary,
                                                     said) -> None:
    import zfnet.train

    monkeypatch.chdir(tmp_path)

    summary = {"run_dir": "r", "wall_time_s": 1.0, "device": "cpu", "plan": None, **summary}
    monkeypatch.setattr(zfnet.train, "train", lambda config: summary)
    r = CliRunner().invoke(main, ["train", "--data", "synthetic", "--model", "zfnet_small",
                                  "--out", "r"])
    assert r.output.startswith(said), r.output


def test_a_batch_not_divisible_by_the_processes_says_what_is(monkeypatch) -> None:
    import torch

    from zfnet.train import distributed
    from zfnet.train.distributed import DistInfo
    from zfnet.train.run import build_run

    # (no process group here: the processes' options are taken as the same)
    monkeypatch.setattr(distributed, "first_difference", lambda values, info: None)

    two = DistInfo(0, 2, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"batch_size=7 is not divisible by the 2 processes; "
                                         r"give a multiple of 2 \(6, 8\)"):
        build_run(TrainConfig(data="synthetic", model="zfnet_small", out="x", batch_size=7),
                  two)


def test_eval_of_many_classes_prints_the_lowest_and_highest_not_every_one(monkeypatch,
                                                                          tmp_path) -> None:
    """ImageNet's 1000 per-class lines scrolled the top-1 error off the screen: past 30
    classes zfnet eval prints the 5 lowest and the 5 highest, every class staying in --json."""
    import zfnet.train

    n = 40
    acc = {f"n{k:08d}": k / n for k in range(n)}
    r = {"model": "zfnet", "epoch": 70, "step_in_epoch": 0, "data": "shards:x", "n": 80,
         "skipped": 0, "top1_error": 0.5, "top5_error": 0.25, "per_class_accuracy": acc}
    monkeypatch.setattr(zfnet.train, "evaluate_checkpoint", lambda *a, **k: r)
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(tmp_path), "--device", "cpu",
                                    "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    at = lines.index("top-1 accuracy per class, the 5 lowest and the 5 highest of 40 (every "
                     "class's: --json FILE, --out DIR):")
    assert [line.split()[0] for line in lines[at + 1:at + 11]] == \
        [f"n{k:08d}" for k in (0, 1, 2, 3, 4, 35, 36, 37, 38, 39)]
    assert len(json.loads((tmp_path / "r.json").read_text())["per_class_accuracy"]) == 40


def test_eval_of_a_run_whose_data_moved_says_to_give_its_new_place(tmp_path) -> None:
    """The path in the error is the run's, not one the user typed: `zfnet eval` says so and
    what to do, as the analyses do (it said only that the folder does not exist)."""
    import shutil

    from PIL import Image

    for split in ("train", "val"):
        for k, cls in enumerate(("a", "b")):
            (tmp_path / "photos" / split / cls).mkdir(parents=True)
            for j in range(2):
                Image.new("RGB", (40, 40), (90 * k, 30 * j, 120)).save(
                    tmp_path / "photos" / split / cls / f"{j}.png")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--data", f"imagefolder:{tmp_path / 'photos'}?size=32",
                                    "--model", "zfnet_small", "--epochs", "1", "--out", str(run),
                                    "--batch-size", "4", "--quiet", "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    shutil.move(tmp_path / "photos", tmp_path / "moved")
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run)])
    assert res.exit_code == 1
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "does not exist" in last, res.output
    assert last.endswith(f"trained on, 'imagefolder:{tmp_path / 'photos'}?size=32'; give its "
                         "new place with --data)"), last
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--data",
                                    f"imagefolder:{tmp_path / 'typed'}?size=32"])
    assert res.exit_code == 1 and "trained on" not in res.output  # a path the user gave
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--data",
                                    f"imagefolder:{tmp_path / 'moved'}?size=32"])
    assert res.exit_code == 0, res.output


def test_eval_draws_a_bar_on_a_terminal_and_into_a_log(tmp_path, monkeypatch) -> None:
    """`zfnet eval` of 10 crops of ImageNet takes hours on a CPU: a bar over the batches,
    redrawn on a terminal, into a pipe or a log at its start and end (and once a minute); the
    figures printed are the same."""
    from zfnet import progress

    run = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "--data", "synthetic?n_train=16&n_val=24&size=32", "--model", "zfnet_small",
        "--out", str(run), "--epochs", "1", "--batch-size", "8", "--quiet", "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    args = ["eval", "--checkpoint", str(run), "--batch-size", "8", "--ten-crop"]
    piped = CliRunner().invoke(main, args)
    assert piped.exit_code == 0, piped.output
    assert piped.stderr.count("evaluating") == 2 and "3/3 [" in piped.stderr, piped.stderr
    monkeypatch.setattr(progress, "terminal", lambda: True)
    shown = CliRunner().invoke(main, args)
    assert shown.exit_code == 0, shown.output
    assert "evaluating" in shown.stderr and "/3 [" in shown.stderr, shown.stderr
    assert shown.stdout == piped.stdout


def test_eval_of_a_run_given_as_model_on_other_data_is_one_line(reference, tmp_path) -> None:
    """eval --model RUN (or a run's weights file with --model NAME) on data of another shape:
    the one-line error --checkpoint gives, not PyTorch's traceback from the first layer."""
    run = reference[0]
    weights = next(run.glob("checkpoints/*/model.safetensors"))
    for model in (["--model", str(run)], ["--model", "zfnet_small", "--weights", str(weights)],
                  ["--checkpoint", str(run)]):
        spec = "synthetic?n_train=8&n_val=8&size=32&classes=0,1,2,3"  # the run's 4 classes
        res = CliRunner().invoke(main, ["eval", *model, "--data", spec])
        last = res.output.strip().splitlines()[-1]
        assert res.exit_code == 1 and "Traceback" not in res.output, (model, res.output)
        assert last.startswith(f"Error: dataset {spec!r} gives "), (model, last)


def test_a_run_keeps_its_mean_image_and_subtracts_it_from_any_folder(tmp_path) -> None:
    """A run's inputs are minus its own training images' mean (paper Sec. 3): kept in its
    checkpoints, and subtracted from the images of any folder or shards it is later given
    (not that folder's own mean); its input size comes with it; a folder of val/ alone is a
    test set; a size= of other inputs is one line."""
    import shutil

    import torch
    from PIL import Image

    from zfnet.train import find_last
    from zfnet.train.checkpoint import MEAN_IMAGE, read_mean_image

    def photos(root, shade):
        for split in ("train", "val"):
            for k, cls in enumerate(("a", "b")):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                for j in range(4 if split == "train" else 2):
                    level = shade if split == "train" else 60 * k + 10 * j
                    Image.new("RGB", (40, 40), (level, 90, 120)).save(
                        root / split / cls / f"{j}.png")

    photos(tmp_path / "photos", 20)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "--data", f"imagefolder:{tmp_path / 'photos'}?size=32", "--model",
        "zfnet_small", "--out", str(run), "--batch-size", "4", "--epochs", "1", "--quiet",
        "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    last = find_last(run)
    mean = read_mean_image(last)
    assert (last / MEAN_IMAGE).is_file() and mean.shape == (3, 37, 37)
    assert torch.allclose(mean[0], torch.full((37, 37), 20.0))  # its training images' mean
    photos(tmp_path / "other", 200)  # the same val images, other training images
    shutil.copytree(tmp_path / "photos" / "val", tmp_path / "test" / "val")  # val/ alone

    def scores(data):
        res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--data", data,
                                        "--json", str(tmp_path / "e.json"), "--amp", "off",
                                        "--quiet"])
        assert res.exit_code == 0 and "%|" not in res.output, res.output  # no bar
        return json.loads((tmp_path / "e.json").read_text())

    own = scores(f"imagefolder:{tmp_path / 'photos'}?size=32")
    for other in ("other", "test"):  # no size=: the run's
        got = scores(f"imagefolder:{tmp_path / other}")
        assert (got["loss"], got["top1_error"]) == (own["loss"], own["top1_error"]), other
    assert not (tmp_path / "other" / ".zfnet-cache").exists()  # no mean of its own made
    from zfnet.cli.loading import _load
    from zfnet.sources import load_data, load_source

    for bundle in (load_data(load_source(str(run)), f"imagefolder:{tmp_path / 'other'}"),
                   _load(str(run), f"imagefolder:{tmp_path / 'test'}")[1]):  # the analyses'
        assert torch.equal(bundle.mean, mean) and bundle.input_size == 32
    assert torch.equal(load_source(str(run)).preprocessing.mean_image, mean)
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--data",
                                    f"imagefolder:{tmp_path / 'other'}?size=64"])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "size=64 in dataset spec" in res.output and "give size=32, or no size" in res.output
    # resumed on another folder of its images' count: still minus its own mean
    res = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--epochs", "2",
                                    "--data", f"imagefolder:{tmp_path / 'other'}", "--quiet",
                                    "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    assert torch.equal(read_mean_image(find_last(run)), mean)


def test_a_run_on_synthetic_data_scores_a_folder_at_its_own_input_size(tmp_path) -> None:
    """synthetic's mean image is 36 px for 32 px inputs (9/8, not the paper's 256/224): a
    folder given to its run takes the run's input size, read from the run, not guessed from
    the mean image's side (it was refused whatever size= was given)."""
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "test" / "val" / cls).mkdir(parents=True)
        Image.new("RGB", (50, 40), (30, 90, 120)).save(tmp_path / "test" / "val" / cls / "0.png")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "--data", "synthetic?n_train=64&n_val=32&size=32&classes=face,house",
        "--model", "zfnet_small", "--out", str(run), "--batch-size", "32", "--epochs", "1",
        "--quiet", "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    for data in ("", "?size=32"):
        res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--data",
                                        f"imagefolder:{tmp_path / 'test'}{data}", "--quiet"])
        assert res.exit_code == 0 and "top-1 error" in res.output, res.output
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--data",
                                    f"imagefolder:{tmp_path / 'test'}?size=36"])
    assert res.exit_code == 1 and "the run's inputs are 32 px" in res.output, res.output


def test_a_one_step_epochs_bar_shows_its_figures_not_zeros(tmp_path) -> None:
    """An epoch of one batch (a small folder at the README's --batch-size 64): its loss is read
    a step late, at the pass's end; the bar showed `img_s=0, loss=0.0000` before."""
    res = CliRunner().invoke(main, ["train", "--data", "synthetic?n_train=32&n_val=16&size=32",
                                    "--model", "zfnet_small", "--out", str(tmp_path / "r"),
                                    "--epochs", "1", "--batch-size", "32", "--no-tensorboard",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    bar = [line for line in res.output.splitlines() if "1/1 [" in line]
    assert bar and "loss=0.0000" not in bar[-1] and "img_s=0," not in bar[-1], res.output
    assert "loss=" in bar[-1], res.output
