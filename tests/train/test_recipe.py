"""The recipe: resume equals the uninterrupted run (epoch boundary and mid-epoch after SIGTERM),
NaN stop keeps the last good checkpoint, resume refuses another configuration."""

import math
import os
import signal

import pytest
import torch

from tests.train.tiny import tiny_bundle, tiny_config
from zfnet.report.plots import read_metrics_csv
from zfnet.train import NonFiniteLossError, find_last, list_checkpoints, load_model, train
from zfnet.train import recipe as recipe_mod

LOSS_KEYS = ("train_loss", "train_top1_error", "val_loss", "val_top1_error", "global_step")


def _assert_same_run(a, b) -> None:
    ha, hb = load_model(a)[1]["history"], load_model(b)[1]["history"]
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb, strict=True):
        for k in LOSS_KEYS:
            assert ra[k] == pytest.approx(rb[k], abs=1e-6), k
    wa, wb = load_model(a)[0].state_dict(), load_model(b)[0].state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def test_resume_at_epoch_boundary_is_exact(reference, tmp_path) -> None:
    ref, _ = reference
    out = tmp_path / "run"
    train(tiny_config(out, epochs=1), bundle=tiny_bundle())
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(out, epochs=3), bundle=tiny_bundle())
    summary = train(tiny_config(out, epochs=3, resume=True), bundle=tiny_bundle())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    _assert_same_run(ref, out)
    assert read_metrics_csv(out / "metrics.csv")["epoch"] == [1, 2, 3]


def test_sigterm_mid_epoch_then_resume_is_exact(reference, tmp_path, monkeypatch,
                                                capsys) -> None:
    """SIGTERM arrives during step 6 (epoch 2, 2nd of 4 steps): the step finishes, a mid-epoch
    checkpoint is written, and resuming from it reproduces the uninterrupted run."""
    ref, _ = reference
    out = tmp_path / "run"
    real = recipe_mod.renormalize_filters
    calls = {"n": 0}

    def renorm_then_signal(model, radius, *rest):
        real(model, radius, *rest)
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(recipe_mod, "renormalize_filters", renorm_then_signal)
    summary = train(tiny_config(out, epochs=3), bundle=tiny_bundle())
    monkeypatch.setattr(recipe_mod, "renormalize_filters", real)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert find_last(out).name == "epoch_0001_step_000002"
    # where it stopped, as `zfnet train` tells it: 2 steps into epoch 2, epoch 1 complete
    assert summary["step_in_epoch"] == 2 and summary["epochs_completed"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    from zfnet.report.training import training_section

    section = training_section(out)  # the report says the run stopped, where, and what next
    assert section.metrics["epochs"] == "1 of 3"
    assert "stopped before its last epoch (saved at epoch 1 + 2 steps of epoch 2); `zfnet " \
        f"train --out {out} --resume` continues it" in section.caption
    assert "the learning rate: as in the paper's recipe, divided by 10 when" in section.caption
    capsys.readouterr()
    summary = train(tiny_config(out, epochs=3, resume=True, progress=True),
                    bundle=tiny_bundle())
    assert summary["status"] == "completed" and summary["step_in_epoch"] == 0
    # said once, where it resumes, 1-based (a start-up line: with progress, as the others)
    said = capsys.readouterr().out
    assert said.count("resuming") == 1 and f"resuming from {out}/checkpoints/" \
        "epoch_0001_step_000002: epoch 2 of 3, step 3 of 4\n" in said
    _assert_same_run(ref, out)
    section = training_section(out)
    assert section.metrics["epochs"] == 3 and "stopped" not in section.caption
    assert [e for e, _ in list_checkpoints(out)] == [1, 2, 3]  # the mid-epoch one is pruned


@pytest.mark.parametrize("poisoned", [5, 7])  # 4 steps an epoch: NaN at step 2 or 4 (the last)
def test_nan_loss_stops_and_keeps_last_good(tmp_path, monkeypatch, poisoned) -> None:
    """A step's loss is read one step late: a NaN is found at the next step, or at the end of
    the epoch for its last step, and in both cases before the epoch's checkpoint."""
    out = tmp_path / "run"
    real = recipe_mod.renormalize_filters
    calls = {"n": 0}

    def renorm_then_poison(model, radius, *rest):
        real(model, radius, *rest)
        calls["n"] += 1
        if calls["n"] == poisoned:  # after step 1 or 3 of epoch 2
            with torch.no_grad():
                model.classifier.fc8.weight.fill_(float("nan"))

    monkeypatch.setattr(recipe_mod, "renormalize_filters", renorm_then_poison)
    step = poisoned - 4 + 1
    with pytest.raises(NonFiniteLossError, match=rf"epoch 2, step {step}.*epoch_0001"):
        train(tiny_config(out, epochs=3), bundle=tiny_bundle())
    model, meta = load_model(out)
    assert meta["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [e for e, _ in list_checkpoints(out)] == [1]


def test_resume_with_other_model_or_config_errors(reference, tmp_path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    with pytest.raises(ValueError, match="model 'zfnet_small', not 'alexnet_small'"):
        train(tiny_config(out, model="alexnet_small", epochs=4, resume=True),
              bundle=tiny_bundle())
    with pytest.raises(ValueError, match=r"lr: 0\.001 in the run, 0\.1 now"):
        train(tiny_config(out, lr=0.1, epochs=4, resume=True), bundle=tiny_bundle())


def test_resolve_config_from_saved_run(reference) -> None:
    cfg = recipe_mod.resolve_config(out=str(reference[0]), resume=True, epochs=5)
    assert cfg.model == "zfnet_small" and cfg.epochs == 5 and cfg.lr == 1e-3
    with pytest.raises(ValueError, match="data and model required"):
        recipe_mod.resolve_config(out="/nonexistent/run")


def test_resume_in_a_runs_checkpoints_folder_names_the_run(reference) -> None:
    """--out RUN/checkpoints --resume 'continued' the run there, writing a second run's
    config.json, metrics.csv and report among RUN's checkpoints."""
    run = reference[0]
    last = find_last(run)
    for out, what in ((run / "checkpoints", "the checkpoints folder"), (last, "a checkpoint")):
        with pytest.raises(ValueError, match=rf"^{out} is {what} of the run in {run}: give "
                                             rf"--out {run}$"):
            recipe_mod.resolve_config(out=str(out), resume=True)
    assert recipe_mod.resolve_config(out=str(run), resume=True).model == "zfnet_small"


def test_schedules_step_as_documented(tmp_path) -> None:
    out = tmp_path / "run"
    train(tiny_config(out, epochs=2, schedule="cosine", warmup_epochs=1), bundle=tiny_bundle())
    rows = load_model(out)[1]["history"]
    assert rows[0]["lr"] == pytest.approx(1e-3)  # end of warm-up (lr logged after epoch 1)
    assert rows[1]["lr"] < 1e-3 * 0.2  # cosine near its end


def test_more_epochs_for_a_finished_cosine_run_says_why_not(tmp_path) -> None:
    """--resume --epochs 3 on a 2-epoch cosine run is refused, and the error says why: the
    schedule's length is the run's epochs; a step schedule's run may be given more."""
    out = tmp_path / "run"
    train(tiny_config(out, epochs=1, schedule="cosine"), bundle=tiny_bundle())
    with pytest.raises(ValueError, match=r"\(epochs: 1 in the run, 2 now\); use the run's "
                                         r"values or another --out; a cosine schedule's length "
                                         r"is the run's --epochs"):
        train(tiny_config(out, epochs=2, schedule="cosine", resume=True), bundle=tiny_bundle())
    step = tmp_path / "step"
    train(tiny_config(step, epochs=1, schedule="step"), bundle=tiny_bundle())
    train(tiny_config(step, epochs=2, schedule="step", resume=True), bundle=tiny_bundle())
    assert len(load_model(step)[1]["history"]) == 2


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_to_zero_schedules_per_step(tmp_path, schedule) -> None:
    """2 epochs of 10 steps, 0.5 of warm-up: lr rises to its peak over 5 steps, then falls to 0
    by the last step as half a cosine or a straight line."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    cfg = tiny_config(tmp_path / "run", epochs=2, schedule=schedule, warmup_epochs=0.5)
    sched, when = recipe_mod.build_scheduler(opt, cfg, steps_per_epoch=10)
    assert when == "step"
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    decay = [(s - 5) / 15 for s in range(5, 21)]  # fraction of the decay done after warm-up
    want = [0.05 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 0.1 * (1 - t)
            for t in decay]
    assert lrs[5:] == pytest.approx(want, abs=1e-12)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_val_every_skips_validation_between_and_keeps_training_the_same(
        reference, tmp_path) -> None:
    """val_every=2 over 3 epochs validates after epochs 2 and 3 (the last) only; training is
    that of the reference run, the skipped epoch has empty val cells, and the report copes."""
    from zfnet.report.training import training_section

    ref, _ = reference
    out = tmp_path / "run"
    summary = train(tiny_config(out, epochs=3, val_every=2), bundle=tiny_bundle())
    rows, ref_rows = load_model(out)[1]["history"], load_model(ref)[1]["history"]
    assert [r["val_top1_error"] is None for r in rows] == [True, False, False]
    for r, rr in zip(rows, ref_rows, strict=True):
        assert r["train_loss"] == pytest.approx(rr["train_loss"], abs=1e-6)
        if r["val_loss"] is not None:
            assert r["val_loss"] == pytest.approx(rr["val_loss"], abs=1e-6)
    assert summary["best_val_top1_error"] == min(r["val_top1_error"] for r in rows[1:])
    m = read_metrics_csv(out / "metrics.csv")
    assert math.isnan(m["val_loss"][0]) and not math.isnan(m["val_loss"][1])  # empty cell
    section = training_section(out)
    assert section.metrics["val top-1 error"] == f"{100 * rows[-1]['val_top1_error']:.2f}%"
    # plateau steps on validations, so resuming with another val_every is refused
    with pytest.raises(ValueError, match="val_every: 2 in the run, 1 now"):
        train(tiny_config(out, epochs=4, resume=True), bundle=tiny_bundle())
    with pytest.raises(ValueError, match="val_every must be >= 1"):
        tiny_config(out, val_every=0)


def test_worker_processes_give_the_same_run(reference, tmp_path) -> None:
    """Augmentation is seeded per (seed, epoch, sample): a worker process changes nothing."""
    out = tmp_path / "run"
    train(tiny_config(out, epochs=1, workers=1), bundle=tiny_bundle())
    a = load_model(reference[0] / "checkpoints" / "epoch_0001")[1]["history"][0]
    b = load_model(out)[1]["history"][0]
    for k in LOSS_KEYS:
        assert a[k] == pytest.approx(b[k], abs=1e-6), k


class _Broken(torch.utils.data.Dataset):
    """Every 4th training sample is an unreadable file (the data layer yields None)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        return None if i % 4 == 0 else self.inner[i]


def test_skipped_samples_are_counted(tmp_path) -> None:
    bundle = tiny_bundle()
    bundle.train = _Broken(bundle.train)
    train(tiny_config(tmp_path / "run", epochs=1), bundle=bundle)
    cols = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert cols["skipped"][0] == 8  # 32 samples, 8 of them broken


def test_bf16_autocast_on_cpu_trains(tmp_path) -> None:
    summary = train(tiny_config(tmp_path / "run", epochs=1, amp="bf16"), bundle=tiny_bundle())
    assert summary["amp"] == "bfloat16"
    assert torch.isfinite(torch.tensor(summary["final"]["train_loss"]))
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        train(tiny_config(tmp_path / "run2", epochs=1, amp="fp16"), bundle=tiny_bundle())


def test_label_smoothing_reaches_the_loss_is_checked_on_resume_and_old_runs_resume(
        reference, tmp_path, monkeypatch) -> None:
    import json
    import shutil

    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        tiny_config(tmp_path / "bad", label_smoothing=1.0)
    seen: list[float] = []
    cross_entropy = torch.nn.functional.cross_entropy

    def spy(*args, **kwargs):
        seen.append(kwargs.get("label_smoothing", 0.0))
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    train(tiny_config(tmp_path / "ls", epochs=1, label_smoothing=0.25), bundle=tiny_bundle())
    monkeypatch.undo()
    assert seen and set(seen) == {0.25}  # every training step

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    with pytest.raises(ValueError, match=r"label_smoothing: 0\.0 in the run, 0\.1 now"):
        train(tiny_config(out, label_smoothing=0.1, epochs=4, resume=True),
              bundle=tiny_bundle())
    # a run saved before the option existed resumes: the missing field had its default
    for state in out.glob("checkpoints/*/state.json"):
        meta = json.loads(state.read_text())
        for key in ("label_smoothing", "random_erasing"):
            del meta["train_config"][key]
        state.write_text(json.dumps(meta))
    train(tiny_config(out, epochs=4, resume=True), bundle=tiny_bundle())
    assert len(load_model(out)[1]["history"]) == 4


def test_random_erasing_is_per_sample_deterministic(tmp_path) -> None:
    data = tiny_bundle().train
    plain = recipe_mod.SeededSamples(data, seed=3)
    erased = recipe_mod.SeededSamples(data, seed=3, erasing=1.0)
    again = recipe_mod.SeededSamples(data, seed=3, erasing=1.0)
    for i in range(4):
        x0, y0 = plain[i]
        x1, y1 = erased[i]
        assert y1 == y0 and x1.shape == x0.shape
        blank = (x1 == 0) & (x0 != 0)  # a rectangle set to 0 (the mean), all channels
        assert blank.any() and blank.all(0).any()
        keep = x1 != 0
        torch.testing.assert_close(x1[keep], x0[keep])  # the same crop and flip elsewhere
        torch.testing.assert_close(again[i][0], x1)
    first = erased[0][0]
    erased.epoch = 1
    assert not torch.equal(erased[0][0], first)  # another epoch: another crop and rectangle
    with pytest.raises(ValueError, match=r"random_erasing must be in \[0, 1\]"):
        tiny_config(tmp_path / "bad", random_erasing=1.5)
    train(tiny_config(tmp_path / "run", epochs=1, random_erasing=0.5), bundle=tiny_bundle())


def test_per_sample_seeding_covers_the_rngs_a_dataset_uses(tmp_path) -> None:
    import random

    import numpy as np

    class NumpyNoise(torch.utils.data.Dataset):  # a user's dataset: numpy and python RNGs
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i):
            return torch.tensor([np.random.rand(), random.random()]), i

    data = recipe_mod.SeededSamples(torch.utils.data.Subset(NumpyNoise(), range(4)), seed=1)
    assert data.rngs == ("torch", "python", "numpy")
    np.random.seed(5)
    random.seed(5)
    before = (np.random.get_state()[1].copy(), random.getstate())
    first = data[2][0]
    torch.testing.assert_close(data[2][0], first)  # seeded: the same draw again
    assert not torch.equal(data[3][0], first)
    assert (np.random.get_state()[1] == before[0]).all() and random.getstate() == before[1]

    from zfnet.data import load_dataset

    crops = load_dataset("synthetic?n_train=8&n_val=8").train  # zfnet's: torch's RNG only
    fast = recipe_mod.SeededSamples(torch.utils.data.Subset(crops, range(8)), seed=1)
    assert fast.rngs == ("torch",)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(fast.sample_seed(3))
        want = crops[3][0]  # the dataset's own draw under sample 3's seed
    torch.manual_seed(123)  # a global state of its own: the sample's draw must not depend on it
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    torch.testing.assert_close(fast[3][0], want, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), torch_state)  # torch's state restored
    assert (np.random.get_state()[1] == np_state).all()  # numpy's not touched
    NumpyNoise.global_rngs = ("torch", "cupy")
    with pytest.raises(ValueError, match=r"\['cupy'\] unknown; valid: torch, python, numpy"):
        recipe_mod.SeededSamples(NumpyNoise(), seed=1)


def test_batched_training_items_equal_item_by_item(tmp_path) -> None:
    """`SeededSamples.__getitems__` (what the DataLoader calls) gives exactly `self[i]` for each
    i: the in-memory one-gather path (synthetic), the item-by-item path of other datasets,
    broken files included (image folder), and random erasing (falls back to `self[i]`)."""
    import warnings

    from tests.data.test_imagefolder import _broken, _folder
    from zfnet.data import collate, load_dataset

    _folder(tmp_path)
    _broken(tmp_path / "train" / "ant")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = load_dataset(f"imagefolder:{tmp_path}?size=16").train
    crops = load_dataset("synthetic?n_train=40&n_val=8").train
    for data, erasing in ((crops, 0.0), (folder, 0.0), (crops, 1.0)):
        seeded = recipe_mod.SeededSamples(data, seed=5, erasing=erasing)
        seeded.epoch = 2
        indices = [7, 0, 3, 3, 5, 1, 6, 2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = seeded.__getitems__(indices)
            single = [seeded[i] for i in indices]
        assert len(batch) == len(single)
        compared = 0
        for got, want in zip(batch, single, strict=True):
            if want is None:
                assert got is None
                continue
            assert got[1] == want[1] and got[0].is_contiguous()
            assert torch.equal(got[0], want[0])
            compared += 1
        assert compared == (5 if data is folder else 8)  # folder items 4-7 broken, 5-7 asked
        assert sum(item is None for item in batch) == sum(item is None for item in single)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        everything = recipe_mod.SeededSamples(folder, 5).__getitems__(list(range(len(folder))))
    assert sum(item is None for item in everything) == 4  # the broken files, as None
    # the DataLoader takes the batched path and stacks the same batch
    loader = torch.utils.data.DataLoader(recipe_mod.SeededSamples(crops, 1), batch_size=8,
                                         collate_fn=collate)
    x, y = next(iter(loader))
    want = collate([recipe_mod.SeededSamples(crops, 1)[i] for i in range(8)])
    assert torch.equal(x, want[0]) and torch.equal(y, want[1])
    assert recipe_mod.SeededSamples(crops, 1).__getitems__([]) == []


def test_norm_and_bias_weight_decay_groups(tmp_path) -> None:
    """`--norm-weight-decay` / `--bias-weight-decay` put BatchNorm parameters / biases in their
    own SGD groups with their own decay; unset, the groups are the ones before the options."""
    import json

    import zfnet
    from zfnet.train.config import TrainConfig

    model = zfnet.create_model("zfnet_small", num_classes=4, batchnorm=True)
    base = dict(data="tiny", model="zfnet_small", out=str(tmp_path), weight_decay=1e-3)
    groups, radius = recipe_mod.param_groups(model, TrainConfig(**base))
    first = model.features.conv1.weight
    assert len(groups) == 2 and groups[1]["params"] == [first] and radius is not None
    assert groups[1]["weight_decay"] == pytest.approx(1e-3 * 60.0**2)
    assert [id(p) for p in groups[0]["params"]] == [
        id(p) for p in model.parameters() if p is not first]  # the order of model.parameters()

    config = TrainConfig(**base, norm_weight_decay=0.0, bias_weight_decay=1e-4)
    groups, _ = recipe_mod.param_groups(model, config)
    decay = {id(p): g.get("weight_decay", "default") for g in groups for p in g["params"]}
    assert len(decay) == sum(1 for _ in model.parameters())  # each parameter exactly once
    for name, p in model.named_parameters():
        if ".bn" in name:
            assert decay[id(p)] == 0.0, name
        elif name.endswith("bias"):
            assert decay[id(p)] == 1e-4, name
        elif p is first:
            assert decay[id(p)] == pytest.approx(1e-3 * 60.0**2)
        else:
            assert decay[id(p)] == "default", name  # the optimizer's weight_decay
    optimizer = torch.optim.SGD(groups, lr=0.1, weight_decay=1e-3)
    bn = model.features.bn2.weight
    with torch.no_grad():
        bn.fill_(2.0)
    bn.grad = torch.zeros_like(bn)
    optimizer.step()
    assert torch.equal(bn, torch.full_like(bn, 2.0))  # no decay: a zero gradient leaves it
    with pytest.raises(ValueError, match="norm_weight_decay must be >= 0, got -1"):
        TrainConfig(**base, norm_weight_decay=-1.0)
    # a run records the options and resume refuses other values
    out = tmp_path / "run"
    train(tiny_config(out, epochs=1, norm_weight_decay=0.0), bundle=tiny_bundle())
    assert json.loads((out / "config.json").read_text())["norm_weight_decay"] == 0.0
    with pytest.raises(ValueError, match=r"norm_weight_decay: 0\.0 in the run, None now"):
        train(tiny_config(out, epochs=2, resume=True), bundle=tiny_bundle())


def test_the_progress_bar_into_a_log_is_drawn_once_a_minute(tmp_path, capsys) -> None:
    """Where stderr is not a terminal (a log, torchrun's, a cluster's job file), the bar's state
    is written once a minute at most, not at every step: 64 steps here wrote 68 bars, and the
    paper's 70 epochs of ImageNet (700k steps of 128) ~70 MB. The epoch's line is as before."""
    summary = train(tiny_config(tmp_path / "run", epochs=1, batch_size=1, progress=True),
                    bundle=tiny_bundle(n_train=64))
    assert summary["status"] == "completed"
    said = capsys.readouterr()
    bars = said.err.replace("\r", "\n").count("batch/s")
    assert 1 <= bars <= 2, said.err  # its start (and its end)
    assert "epoch 1/1  loss " in said.out


def test_an_epoch_whose_validation_loss_is_nan_is_not_kept_as_good(tmp_path, monkeypatch) -> None:
    """Weights blown up by an epoch whose every step's loss stayed finite (1e15 under torchrun
    with a high lr): its validation loss is NaN. The epoch is not saved; the run stops and the
    last good checkpoint is the one before (it was kept as "good", and last.json named it)."""
    from zfnet.train import loop

    out = tmp_path / "run"
    real, calls = loop.evaluate, [0]

    def nan_at_the_second(*args, **kw):
        got = real(*args, **kw)
        calls[0] += 1
        return {**got, "loss": float("nan")} if calls[0] == 2 else got

    monkeypatch.setattr(loop, "evaluate", nan_at_the_second)
    with pytest.raises(NonFiniteLossError, match=r"^epoch 2 diverged: its validation loss is "
                                                 r"nan; training stopped, the last good "
                                                 r"checkpoint is kept: .*epoch_0001$"):
        train(tiny_config(out, epochs=3), bundle=tiny_bundle())
    assert [e for e, _ in list_checkpoints(out)] == [1]
    assert find_last(out).name == "epoch_0001"


def test_the_bar_names_its_loss_the_first_processes_under_torchrun() -> None:
    """The bar's loss is the first process's batches' (only it draws the bar); the epoch's line
    averages every process's: under torchrun the bar's figure is named so (the two disagreed,
    1.5935 against 1.5705, each called "loss")."""
    from types import SimpleNamespace

    from tqdm import tqdm

    from zfnet.train.distributed import DistInfo

    for world, key in ((1, "loss="), (2, "rank0_loss=")):
        stats = SimpleNamespace(seen=8, loss_sum=12.0,
                                info=DistInfo(0, world, 0, torch.device("cpu")))
        with tqdm(total=3, disable=False, file=open(os.devnull, "w")) as bar:
            recipe_mod._figures(bar, stats, elapsed=2.0)
            assert bar.postfix == f"{key}1.5000, img_s={4 * world}"
