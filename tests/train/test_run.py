"""The trainer's pieces: building a run (every check before the first write to --out), the
checked model, the resumed progress and loaders, the epoch's row and log lines."""

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zfnet
from tests.train.tiny import tiny_bundle, tiny_config
from zfnet.cli import main
from zfnet.train import load_model, train
from zfnet.train import recipe as recipe_mod
from zfnet.train.distributed import DistInfo
from zfnet.train.logs import epoch_lines, epoch_row
from zfnet.train.run import Progress, build_model, build_run, epoch_loader

CPU = DistInfo(0, 1, 0, torch.device("cpu"))
TINY = ["--model", "zfnet_small", "--model-opt", "conv_widths=16,16,16", "--model-opt",
        "fc_width=32", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--amp", "off",
        "--quiet", "--no-tensorboard"]
SYNTHETIC = "synthetic?n_train=16&n_val=8&size=32"


def _files(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (what "unchanged" compares)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_folder_of_photos_without_labels_is_refused_before_anything_is_written(
        tmp_path) -> None:
    """images:DIR has no labels: said at once, not after its mean image was computed and
    cached in the user's folder."""
    from PIL import Image
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.coffee()).save(photos / "coffee.jpg")
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--out", str(out), *TINY, "--data",
                                  f"images:{photos}"])
    assert r.exit_code == 1 and r.output.startswith("Error: "), r.output
    assert "has no labels to train on" in r.output and r.output.count("\n") == 1
    assert not out.exists() and [p.name for p in photos.iterdir()] == ["coffee.jpg"]


@pytest.mark.parametrize(("args", "named"), [
    (["--data", SYNTHETIC, "--model-opt", "pool_kernel=0"], "pool_kernel=0"),
    (["--data", SYNTHETIC, "--model-opt", "input_size=5"], "input_size"),
    (["--data", SYNTHETIC, "--model-opt", "fc_width=-5"], "fc_width=-5"),
    (["--data", "synthetic?n_train=16&nope=1"], "nope"),
    (["--data", "imagefolder:/nonexistent/images"], "/nonexistent/images"),
])
def test_bad_input_writes_nothing(tmp_path, args, named) -> None:
    """A bad model option or data spec is a one-line error naming it, before --out exists."""
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--out", str(out), *TINY, *args])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output  # not a crash
    assert "Traceback" not in r.output and named in r.output
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1
    assert not out.exists()


def test_bad_input_on_resume_leaves_the_run_unchanged(reference, tmp_path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    before = _files(out)
    bad = [({"amp": "fp16"}, 32, "fp16.*CUDA"),  # checked after the data and resume
           ({"model_opts": {"pool_kernel": 0}}, 32, "model_opts"),
           ({"data": "other"}, 24, r"on other: 24 training images now, 32 in the run")]
    for change, n_train, match in bad:
        with pytest.raises(ValueError, match=match):
            train(tiny_config(out, epochs=4, resume=True, **change),
                  bundle=tiny_bundle(n_train=n_train))
        assert _files(out) == before, change


def test_build_model_refuses_options_the_data_fixes_and_names_the_bad_one(
        tmp_path, monkeypatch) -> None:
    bundle = tiny_bundle()
    with pytest.raises(ValueError, match=r"input_size cannot be set: .* 20 px crops"):
        build_model(tiny_config(tmp_path, model_opts={"input_size": 5}), bundle)
    # a value out of range is refused with the config (zfnet.models.options), before building
    with pytest.raises(ValueError, match=r"model_opts: pool_kernel must be a positive integer"):
        build_model(tiny_config(tmp_path, model_opts={"pool_kernel": 0}), bundle)
    # built, but a layer fails on the first forward pass: a ValueError naming the options
    from zfnet.models.lrn import LocalResponseNorm

    def refuse(self, x):
        raise RuntimeError("this layer refuses the input")

    monkeypatch.setattr(LocalResponseNorm, "forward", refuse)
    with pytest.raises(ValueError, match=r"'zfnet_small' with .*lrn_size=3 does not work on "
                                         r"20 px 3-channel images: RuntimeError: this layer"):
        build_model(tiny_config(tmp_path, model_opts={"lrn_size": 3}), bundle)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model(tiny_config(tmp_path, model="nope"), bundle)


def test_build_model_is_seeded_and_its_check_leaves_the_rngs_alone(tmp_path) -> None:
    config = tiny_config(tmp_path, seed=3)
    model = build_model(config, tiny_bundle())
    after = torch.get_rng_state()
    torch.manual_seed(3)
    plain = zfnet.create_model("zfnet_small", num_classes=4, in_channels=3, input_size=20,
                               **config.model_opts)
    assert torch.equal(torch.get_rng_state(), after)  # the blank forward drew nothing
    assert model.training
    for k, v in plain.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_build_run_writes_nothing_and_resumes_the_saved_position(reference, tmp_path,
                                                                 capsys) -> None:
    import shutil

    config = tiny_config(tmp_path / "new", epochs=3)
    run = build_run(config, CPU, tiny_bundle())
    assert not (tmp_path / "new").exists()
    assert run.progress == Progress() and run.resume_from is None
    assert run.steps_per_epoch == 4 and run.shown is run.bare is run.model

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    meta = load_model(out / "checkpoints" / "epoch_0002")[1]
    (out / "checkpoints" / "last.json").write_text('{"checkpoint": "epoch_0002"}')
    run = build_run(tiny_config(out, epochs=3, resume=True), CPU, tiny_bundle())
    assert run.resume_from.name == "epoch_0002"
    assert (run.progress.epoch, run.progress.step, run.progress.global_step) == (2, 0, 8)
    assert run.progress.history == meta["history"]
    assert capsys.readouterr().out == ""  # a start-up line: with progress only (not --quiet)
    build_run(tiny_config(out, epochs=3, resume=True, progress=True), CPU, tiny_bundle())
    (out / "checkpoints" / "last.json").unlink()
    build_run(tiny_config(out, epochs=3, resume=True, progress=True), CPU, tiny_bundle())
    assert capsys.readouterr().out == (
        f"resuming from {out}/checkpoints/epoch_0002: epoch 3 of 3, step 1 of 4\n"
        f"resuming from {out}/checkpoints/epoch_0003: all 3 epochs are trained already, "
        "nothing is left to train\n")
    with pytest.raises(FileExistsError, match="--resume"):
        build_run(tiny_config(out, epochs=3), CPU, tiny_bundle())


def test_a_resumed_epoch_gives_the_rest_of_the_uninterrupted_one(tmp_path) -> None:
    run = build_run(tiny_config(tmp_path / "run", epochs=3), CPU, tiny_bundle(n_train=30))
    whole, n_whole = epoch_loader(run, 1)
    batches = [(x.clone(), y.clone()) for x, y in whole]
    rest, n_rest = epoch_loader(run, 1, start_step=2)
    assert (n_whole, n_rest, len(batches)) == (30, 14, 4)
    for (xa, ya), (xb, yb) in zip(batches[2:], rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first, n_first = epoch_loader(run, 1, end_step=1)  # a budgeted run's last, partial epoch
    assert n_first == 8 and torch.equal(next(iter(first))[0], batches[0][0])


def test_progress_from_old_and_mid_epoch_meta() -> None:
    old = {"epoch": 2, "global_step": 8, "history": [{"epoch": 1}, {"epoch": 2}]}
    p = Progress.from_meta(old)  # a run saved before train_time_s, plans and mid-epoch sums
    assert (p.epoch, p.step, p.global_step, p.train_time_s, p.plan) == (2, 0, 8, 0.0, None)
    assert p.partial == dict.fromkeys(p.partial, 0.0)
    mid = {**old, "step_in_epoch": 3, "partial_epoch": {"loss_sum": 1.5, "seen": 24.0},
           "plan": {"total_steps": 10, "epochs": 3, "last_epoch_steps": 2, "budget_s": 60.0,
                    "step_s": 1.0, "val_s": 1.0}}
    p = Progress.from_meta(mid)
    assert p.step == 3 and p.partial["loss_sum"] == 1.5 and p.partial["correct"] == 0.0
    assert p.plan.total_steps == 10


def test_checkpoints_with_the_old_sampler_entry_still_resume(reference, tmp_path) -> None:
    """Checkpoints used to hold the sampler's state, never read (the position is the meta's);
    they resume, and new ones no longer hold it."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    for state in out.glob("checkpoints/*/state.json"):
        meta = json.loads(state.read_text())
        assert "sampler" not in meta["train_state"]
        meta["train_state"]["sampler"] = {"epoch": meta["epoch"], "skip": 0, "seed": 0}
        state.write_text(json.dumps(meta))
    summary = train(tiny_config(out, epochs=4, resume=True), bundle=tiny_bundle())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 4


def test_resume_before_the_first_checkpoint_takes_config_json(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(tiny_config(out, lr=0.005).to_json())
    config = recipe_mod.resolve_config(out=str(out), resume=True, epochs=2)
    assert config.lr == 0.005 and config.epochs == 2 and config.data == "tiny"
    (out / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"config\.json is unreadable"):
        recipe_mod.resolve_config(out=str(out), resume=True)


def test_epoch_row_and_lines() -> None:
    sums = {"loss_sum": 12.0, "correct": 18.0, "seen": 24.0, "expected": 32.0, "time": 2.0}
    val = {"loss": 0.4, "top1_error": 0.25, "top5_error": 0.0}
    row = epoch_row(1, 8, 0.01, sums, val)
    assert row == {"epoch": 2, "global_step": 8, "lr": 0.01, "train_loss": 0.5,
                   "train_top1_error": 0.25, "val_loss": 0.4, "val_top1_error": 0.25,
                   "val_top5_error": 0.0, "epoch_time_s": 2.0, "img_per_s": 12.0, "skipped": 8,
                   "val_skipped": None}
    lines = epoch_lines(row, 3, validated=True)
    assert len(lines) == 2  # no validation line: nothing was left out of it
    assert lines[0] == ("epoch 2/3  loss 0.5000  train err 25.00%  val top-1 err 25.00%  "
                        "top-5 0.00%  lr 0.01  12 img/s")
    assert lines[1].startswith("epoch 2: 8 training sample(s) skipped")
    # a validation that left unreadable images out says how many, on a line of its own
    left_out = epoch_row(1, 8, 0.01, sums, {**val, "skipped": 3})
    assert left_out["val_skipped"] == 3
    assert epoch_lines(left_out, 3, validated=True)[2].startswith(
        "epoch 2: 3 validation image(s) left out of its figures")
    # with 5 classes or fewer, top-5 is worded as `zfnet eval` does, not "0.00%"
    assert epoch_lines(row, 3, validated=True, classes=5)[0] == (
        "epoch 2/3  loss 0.5000  train err 25.00%  val top-1 err 25.00%  "
        "top-5: every one of the 5 classes  lr 0.01  12 img/s")
    assert "top-5 0.00%" in epoch_lines(row, 3, validated=True, classes=6)[0]
    # an epoch whose every sample was a broken file: no division by zero
    nothing = {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "expected": 8.0, "time": 0.0}
    empty = epoch_row(0, 4, 0.01, nothing, dict.fromkeys(val))
    assert empty["train_loss"] == 0.0 and empty["skipped"] == 8
    assert empty["img_per_s"] == 0.0 and not math.isnan(empty["train_top1_error"])
    assert epoch_lines(empty, 3, validated=False)[0] == (
        "epoch 1/3  loss 0.0000  train err 100.00%  lr 0.01  0 img/s")


class _FailingImages(torch.utils.data.Dataset):
    """Training images whose read number `at` fails, as a damaged dataset does after start-up
    (read in the main process: workers=0)."""

    def __init__(self, images, at: int) -> None:
        self.images, self.at, self.reads = images, at, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        self.reads += 1
        if self.reads == self.at:
            raise IndexError("list index out of range")
        return self.images[i]


def _failing(at: int = 6) -> object:
    from dataclasses import replace

    bundle = tiny_bundle()
    return replace(bundle, train=_FailingImages(bundle.train, at))


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path) -> None:
    """A new run's folder (and the parents it made) is removed when the run fails before its
    first checkpoint; in a folder that was there, only what the run made is removed."""
    out = tmp_path / "runs" / "new"
    with pytest.raises(IndexError):
        train(tiny_config(out, workers=0, tensorboard=True), bundle=_failing())
    assert not (tmp_path / "runs").exists()
    there = tmp_path / "there"
    there.mkdir()
    (there / "notes.txt").write_text("mine")
    (there / "tb").mkdir()  # someone's, before the run
    with pytest.raises(IndexError):
        train(tiny_config(there, workers=0, tensorboard=True), bundle=_failing())
    assert sorted(p.name for p in there.iterdir()) == ["notes.txt", "tb"]


def test_a_run_that_fails_after_a_checkpoint_or_on_resume_is_kept(reference, tmp_path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    before = _files(out)
    with pytest.raises(IndexError):  # a resumed run's folder is never removed
        train(tiny_config(out, epochs=4, resume=True, workers=0), bundle=_failing())
    assert set(_files(out)) == set(before)
    new = tmp_path / "new"
    with pytest.raises(IndexError):  # in epoch 2: epoch 1's checkpoint is kept, and the run
        train(tiny_config(new, workers=0), bundle=_failing(at=40))
    assert [p.name for p in (new / "checkpoints").iterdir() if not p.name.endswith(".json")] \
        == ["epoch_0001"]
    assert (new / "config.json").is_file() and (new / "metrics.csv").is_file()


def test_a_resume_on_data_of_another_input_size_says_so(tmp_path) -> None:
    """A run trained at `?size=64`, resumed with `--data shards:OUT` (224 px): the data's size
    is named (it was: the checkpoint 'holds weights of a different model', a shape mismatch)."""
    from types import SimpleNamespace

    from zfnet.train.run import check_resumed_data

    meta = {"class_names": ["a", "b"], "input_size": 64, "train_images": 2, "val_images": 2,
            "train_config": {"data": "shards:/d?size=64"}}
    bundle = SimpleNamespace(class_names=["a", "b"], input_size=224, train=[0, 1], val=[0, 1])
    config = tiny_config(tmp_path / "run", data="shards:/d")
    with pytest.raises(ValueError, match=r"cannot --resume the run in .*run on shards:/d: its "
                                         r"inputs are 224 px, the run's 64 px .* give the run's "
                                         r"size \(size=64\)"):
        check_resumed_data(meta, config, bundle)
    check_resumed_data(meta, config, SimpleNamespace(**{**vars(bundle), "input_size": 64}))


def test_a_loss_stuck_at_ln_classes_is_said() -> None:
    """A SqueezeNet trained from scratch stayed at ln 7 = 1.94591 for every step (its outputs
    the same for every image: a ReLU before the logits that never fires) and nothing said so;
    an epoch whose mean loss is ln C to 4 decimals now says it has not started to learn."""
    val = dict.fromkeys(("loss", "top1_error", "top5_error"))
    stuck = epoch_row(0, 4, 0.01, {"loss_sum": 24 * math.log(7), "correct": 3.0, "seen": 24.0,
                                   "expected": 24.0, "time": 1.0}, val)
    lines = epoch_lines(stuck, 3, validated=False, classes=7)
    assert lines[-1].startswith("epoch 1: the training loss is ln 7 = 1.9459, the loss of "
                                "outputs that are the same for every image")
    moving = dict(stuck, train_loss=math.log(7) - 0.01)
    assert len(epoch_lines(moving, 3, validated=False, classes=7)) == 1
    assert len(epoch_lines(stuck, 3, validated=False)) == 1  # classes unknown: no claim


def test_a_new_run_asked_to_resume_is_said_as_new_not_as_a_failure(tmp_path) -> None:
    """`study` and the randomisation runs resume what they find: on a first run the line read
    "no checkpoint in …: starting from scratch", like something missing."""
    from zfnet.train import TrainConfig
    from zfnet.train.run import find_resume

    said: list[str] = []
    config = TrainConfig(data="synthetic", model="zfnet_small", out=str(tmp_path / "r"),
                         resume=True)
    assert find_resume(config, said.append) == (None, None)
    assert said == [f"{tmp_path / 'r'}: a new run (no checkpoint in it to continue)"]
