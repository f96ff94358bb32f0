"""Broken image files in training and evaluation: a batch of only broken files is skipped like
any broken file (counted, no update, the position in the data order kept), in training and in
evaluation (centre crop and 10 crops); `--strict` stops at the first one with a one-line error
naming it, after which `--resume` continues."""

import io
import json
import os
import signal
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import zfnet.data.imagefolder as imagefolder
from tests.data.test_imagefolder import _folder
from tests.train.test_recipe import _assert_same_run
from zfnet.cli import main
from zfnet.data import BadImageError
from zfnet.report.plots import read_metrics_csv
from zfnet.train import (
    TrainConfig,
    evaluate_checkpoint,
    find_last,
    list_checkpoints,
    load_model,
    train,
)
from zfnet.train import recipe as recipe_mod
from zfnet.train.distributed import ResumableSampler

pytestmark = pytest.mark.filterwarnings("ignore::zfnet.data.BrokenImageWarning")

BROKEN = ("x_broken1.jpg", "x_broken2.jpg")  # sorted after their class's good files
# The training set's order (imagefolder takes the classes in turn): ant/0, cat/0, ant/1, cat/1,
# then the two broken files of ant/.
N_TRAIN, BROKEN_INDICES = 6, (4, 5)
OPTS = {"conv_widths": [16, 16, 16], "fc_width": 32}
CLI = ["--model", "zfnet_small", "--model-opt", "conv_widths=16,16,16", "--model-opt",
       "fc_width=32", "--batch-size", "2", "--device", "cpu", "--amp", "off", "--quiet",
       "--no-tensorboard"]


def _dataset(root, splits=("train", "val")) -> str:
    """An image folder of 2 classes (tests.data.test_imagefolder._folder: 2 good training
    images and 1 good val image each) with two truncated JPEGs in ant/ of each of `splits`:
    with batches of 2, the val set's second batch is only broken files."""
    _folder(root)
    buf = io.BytesIO()
    Image.fromarray(np.full((18, 18, 3), 128, np.uint8)).save(buf, "JPEG")
    for split in splits:
        for name in BROKEN:
            (root / split / "ant" / name).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return f"imagefolder:{root}?size=16"


def _empty_batches(seed: int, epoch: int) -> list[int]:
    """The batches (of 2) of `epoch` that hold only the broken training files."""
    sampler = ResumableSampler(range(N_TRAIN), 1, 0, seed=seed)
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [b for b in range(N_TRAIN // 2)
            if {order[2 * b], order[2 * b + 1]} == set(BROKEN_INDICES)]


# seeds whose first epoch's middle / first batch is the two broken files
SEED = next(s for s in range(1000) if _empty_batches(s, 0) == [1])
SEED_FIRST = next(s for s in range(1000) if _empty_batches(s, 0) == [0])


def _config(out, spec: str, **kw) -> TrainConfig:
    return TrainConfig(**{
        "data": spec, "model": "zfnet_small", "out": str(out), "model_opts": OPTS,
        "epochs": 2, "batch_size": 2, "lr": 1e-3, "seed": SEED, "keep_epochs": (1, 2),
        "progress": False, "tensorboard": False, "device": "cpu", "amp": "off", **kw})


def test_a_batch_of_only_broken_files_takes_no_step_and_keeps_the_position(
        tmp_path, monkeypatch) -> None:
    spec = _dataset(tmp_path / "data")
    updates = []
    renorm = recipe_mod.renormalize_filters
    monkeypatch.setattr(recipe_mod, "renormalize_filters",
                        lambda *a: (updates.append(1), renorm(*a)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = train(_config(tmp_path / "ref", spec))
    monkeypatch.setattr(recipe_mod, "renormalize_filters", renorm)
    empty = len(_empty_batches(SEED, 0) + _empty_batches(SEED, 1))
    assert ref["status"] == "completed"
    assert ref["global_step"] == 6  # 3 batches per epoch: the empty one is a step of the order
    assert len(updates) == 6 - empty  # but makes no update
    rows = read_metrics_csv(tmp_path / "ref" / "metrics.csv")
    assert rows["skipped"] == [2, 2]  # the two broken files, every epoch
    assert rows["val_skipped"] == [2, 2]  # and the validation's two (its column was missing)
    assert all(np.isfinite(rows["train_loss"])) and all(np.isfinite(rows["val_loss"]))
    # validation met a batch of only broken files too; the warnings name each file
    assert all(name in " ".join(str(w.message) for w in caught) for name in BROKEN)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]

    # SIGTERM while the batch after the broken one loads (batches are fetched a step ahead:
    # during the empty step): the run stops after the empty step (step 2 of epoch 1), and
    # resuming there gives the uninterrupted run.
    assert list((tmp_path / "data" / ".zfnet-cache").glob("mean-*.npy"))  # no reload of them
    load = imagefolder.load_rgb

    broken_loaded, sent = set(), []

    def load_then_signal(path, **kw):
        if path.name in BROKEN:
            broken_loaded.add(path.name)
        elif broken_loaded == set(BROKEN) and not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGTERM)
        return load(path, **kw)

    monkeypatch.setattr(imagefolder, "load_rgb", load_then_signal)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train(_config(out, spec))
        monkeypatch.setattr(imagefolder, "load_rgb", load)
        assert summary["status"] == "interrupted" and summary["global_step"] == 2
        assert find_last(out).name == "epoch_0000_step_000002"
        assert train(_config(out, spec, resume=True))["status"] == "completed"
    _assert_same_run(tmp_path / "ref", out)
    assert read_metrics_csv(out / "metrics.csv")["skipped"] == [2, 2]


def test_a_cosine_schedule_moves_past_a_batch_of_only_broken_files(tmp_path) -> None:
    """The lr schedule counts the empty step, so that it ends where the run does; the first
    step of the run being the empty one is no reason for torch's warning about the order of
    `optimizer.step()` and `lr_scheduler.step()`."""
    spec = _dataset(tmp_path / "data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_config(tmp_path / "run", spec, schedule="cosine", seed=SEED_FIRST))
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert load_model(tmp_path / "run")[1]["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_evaluation_skips_a_batch_of_only_broken_files(tmp_path) -> None:
    spec = _dataset(tmp_path / "data", splits=("val",))
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(_config(out, spec, epochs=1))  # its validation meets the broken batch
        for ten_crop in (False, True):
            r = evaluate_checkpoint(out, ten_crop=ten_crop, batch_size=2, device="cpu",
                                    amp="off")
            assert (r["n"], r["skipped"]) == (2, 2), ten_crop
            assert sum(map(sum, r["confusion_matrix"])) == 2
    assert r["loss"] >= 0
    with pytest.raises(BadImageError, match=BROKEN[0]):
        evaluate_checkpoint(out, strict=True, batch_size=2, device="cpu")
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(out), "--ten-crop",
                                  "--batch-size", "2", "--device", "cpu"])
    assert r.exit_code == 0 and "2 images (2 broken files skipped), 10 crops" in r.output
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(out), "--batch-size", "2",
                                  "--device", "cpu", "--strict"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    said = [line for line in r.output.split("\n") if line and not line.startswith("evaluating")]
    assert len(said) == 1 and said[0].startswith("Error: broken image "), r.output  # a bar before
    assert str(tmp_path / "data" / "val" / "ant" / BROKEN[0]) in r.output


def test_strict_stops_at_a_broken_val_file_keeping_the_trained_epoch(tmp_path) -> None:
    """The broken files are val images: the first validation stops the run, its epoch's
    training saved first (as at its last step, not lost); once they are removed, `--resume`
    alone continues from config.json, validates that epoch without training it again, and
    ends where an uninterrupted run ends."""
    data = tmp_path / "data"
    spec = _dataset(data, splits=("val",))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", spec, "--out", str(out), "--epochs", "2",
                                  "--strict", *CLI])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert r.output.startswith(f"Error: broken image {data / 'val' / 'ant' / BROKEN[0]}: ")
    assert r.output.count("\n") == 1 and "Traceback" not in r.output
    kept = out / "checkpoints" / "epoch_0000_step_000002"  # 4 images, batches of 2
    assert f"the last checkpoint is {kept}" in r.output and "--resume" in r.output
    assert json.loads((out / "config.json").read_text())["strict"] is True
    assert find_last(out) == kept and not list_checkpoints(out)  # no epoch validated yet
    for name in BROKEN:
        (data / "val" / "ant" / name).unlink()
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    meta = load_model(out)[1]
    assert meta["epoch"] == 2 and meta["train_config"]["strict"] is True
    assert meta["global_step"] == 4  # the first epoch's 2 steps not taken twice
    whole = tmp_path / "whole"
    r = CliRunner().invoke(main, ["train", "--data", spec, "--out", str(whole), "--epochs", "2",
                                  "--strict", *CLI])
    assert r.exit_code == 0, r.output
    _assert_same_run(out, whole)


def test_strict_in_a_worker_mid_run_then_resume_without_it(tmp_path) -> None:
    """A broken training file stops a strict run at once: while loading the data (the mean
    image reads every file) before anything is written, or, when that mean is cached, in the
    epoch, also from a DataLoader worker; `--resume --no-strict` then skips it."""
    data = tmp_path / "data"
    spec = _dataset(data)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", spec, "--out", str(out), "--epochs", "1",
                                  "--strict", *CLI])
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert str(data / "train" / "ant" / BROKEN[0]) in r.output and not out.exists()

    r = CliRunner().invoke(main, ["train", "--data", spec, "--out", str(out), "--epochs", "1",
                                  *CLI])  # skips them (and caches the mean)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--epochs", "2",
                                  "--strict", "--workers", "1"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert r.output.startswith(f"Error: broken image {data / 'train' / 'ant' / 'x_broken'}")
    assert r.output.count("\n") == 1 and "Traceback" not in r.output
    assert f"the last checkpoint is {out / 'checkpoints' / 'epoch_0001'}" in r.output
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--epochs", "2",
                                  "--no-strict"])
    assert r.exit_code == 0, r.output
    assert read_metrics_csv(out / "metrics.csv")["skipped"] == [2, 2]
    assert json.loads((out / "config.json").read_text())["strict"] is False


def test_under_torchrun_the_file_one_process_meets_is_said_by_every_process(tmp_path) -> None:
    """--strict, two processes, one broken training file, met by one of them: the run is saved
    where they stopped and the file is said once, both ending with exit 1. The other process
    said "interrupted by a signal to another process" and ended with 143, and torchrun ended
    the one that met the file before it could say it: the file was named nowhere."""
    from tests.processes import process_env, torchrun
    from zfnet.data import load_dataset

    spec = _dataset(tmp_path / "data", splits=("train",))
    (tmp_path / "data" / "train" / "ant" / BROKEN[1]).unlink()  # one broken file: one process
    load_dataset(spec)  # the mean image cached (skipping it): a strict run gets to train
    out = tmp_path / "run"
    r = torchrun("-m", "zfnet.cli", "train", "--data", spec, "--out", str(out), "--epochs", "1",
                 "--strict", "--workers", "0", *CLI, env=process_env())
    said = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(said) == 1, r.stderr[-3000:]
    assert said[0].startswith(f"Error: broken image {tmp_path / 'data' / 'train' / 'ant'}"
                              f"/{BROKEN[0]}: ") and "training stopped (--strict)" in said[0]
    # (the other process ends with exit 1 too, or is ended by torchrun as the first ends)
    assert "interrupted" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert find_last(out) is not None


def test_strict_mid_epoch_keeps_the_steps_before_the_broken_file(tmp_path) -> None:
    """A strict run meets the broken files in the epoch's second batch: the first step is kept
    in a checkpoint at the file (not lost back to the epoch's start), and the error names it;
    `--resume --no-strict` continues from there."""
    from zfnet.data import load_dataset

    spec = _dataset(tmp_path / "data")
    load_dataset(spec)  # the mean image cached (skipping them): a strict run gets to train
    out = tmp_path / "run"
    with pytest.raises(BadImageError, match=r"x_broken.\.jpg.*the last checkpoint is "
                                            r".*epoch_0000_step_000001"):
        train(_config(out, spec, strict=True, epochs=1))
    last = find_last(out)
    assert last.name == "epoch_0000_step_000001"
    assert load_model(out)[1]["step_in_epoch"] == 1
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--no-strict"])
    assert r.exit_code == 0, r.output
    meta = load_model(out)[1]
    assert meta["epoch"] == 1 and meta["global_step"] == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_each_broken_file_is_named_once_not_every_epoch(tmp_path, capfd, workers) -> None:
    """The first pass over each set names its broken files; later epochs only count them
    (metrics.csv), in the main process and in the loader workers alike."""
    spec = _dataset(tmp_path / "data")
    train(_config(tmp_path / "warm", spec, epochs=1))  # the mean image: cached, not warned again
    capfd.readouterr()
    import sys

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every warning shown: what repeats is the trainer's
        # printed, by the workers too (forked, they inherit it; pytest's recorder would not
        # bring theirs back)
        warnings.showwarning = lambda message, *_, **__: print(message, file=sys.stderr)
        train(_config(tmp_path / "run", spec, epochs=3, workers=workers))
    err = capfd.readouterr().err
    for split in ("train", "val"):
        for name in BROKEN:
            assert err.count(f"{split}/ant/{name}") == 1, (split, name, err)
    assert read_metrics_csv(tmp_path / "run" / "metrics.csv")["skipped"] == [2, 2, 2]


def test_a_broken_file_is_named_once_by_a_command_that_computes_the_mean_first(
        tmp_path) -> None:
    """The mean image's pass names a broken training file; the first epoch, whose loader
    worker is forked after it, does not name it again (it was named twice: '(while computing
    the training images' mean image)', then by the epoch's worker)."""
    import subprocess
    import sys

    from tests.processes import process_env

    spec = _dataset(tmp_path / "data")
    res = subprocess.run([
        sys.executable, "-m", "zfnet.cli", "train", "--data", spec, "--model", "zfnet_small",
        "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--workers", "1",
        "--quiet", "--no-tensorboard", "--device", "cpu"], env=process_env(),
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for name in BROKEN:
        assert res.stderr.count(f"train/ant/{name}") == 1, res.stderr
        assert res.stderr.count(f"val/ant/{name}") == 1, res.stderr
    assert "while computing the training images' mean image" in res.stderr


@pytest.mark.filterwarnings("default::zfnet.data.BrokenImageWarning")
def test_the_mean_images_broken_files_are_named_by_the_main_process(tmp_path) -> None:
    """Its workers pass them on: named where the command can name each once."""
    from zfnet.data import BrokenImageWarning

    _dataset(tmp_path / "data")
    paths = sorted(p for p in (tmp_path / "data" / "train").rglob("*") if p.is_file())
    with pytest.warns(BrokenImageWarning) as caught:
        imagefolder.compute_mean(paths, 16, num_workers=2)
    named = sorted(str(w.message.file) for w in caught if w.category is BrokenImageWarning)
    assert named == [str(tmp_path / "data" / "train" / "ant" / n) for n in BROKEN]


def test_a_class_whose_training_files_are_all_broken_is_an_error_at_once(tmp_path) -> None:
    """It trained, silently, a class it never saw (the per-file warnings aside), where an empty
    class folder is an error: now the same error, before any training, naming the class."""
    spec = _dataset(tmp_path, splits=())
    for name in ("0.png", "1.png"):  # cat/'s training files broken too: cat has none left
        (tmp_path / "train" / "cat" / name).write_bytes(b"not an image")
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--data", spec, "--out", str(out), "--epochs", "1",
                                    *CLI])
    assert res.exit_code == 1 and not out.exists(), res.output
    last = res.output.strip().splitlines()[-1]
    assert last == (f"Error: no readable training image in class cat (its 2 files all broken, "
                    f"e.g. {tmp_path / 'train' / 'cat' / '0.png'}: not a recognised image "
                    "format): a model trained here would never see it; fix or remove the "
                    "files, or leave the class out (classes=... in the dataset spec)")
    # a class with one readable file left trains, its broken ones skipped as before
    (tmp_path / "train" / "cat" / "0.png").unlink()
    _folder(tmp_path / "again")
    (tmp_path / "again" / "train" / "cat" / "0.png").rename(tmp_path / "train" / "cat" / "0.png")
    res = CliRunner().invoke(main, ["train", "--data", spec, "--out", str(out), "--epochs", "1",
                                    *CLI])
    assert res.exit_code == 0, res.output
