"""Training to a time budget: durations, the plan's arithmetic, and budgeted runs (the plan is
kept in checkpoints, the schedule ends at it, the last epoch ends part-way, resume is exact)."""

import itertools
import math
import os
import random
import signal

import pytest
from click.testing import CliRunner

from tests.train.test_recipe import _assert_same_run
from tests.train.tiny import tiny_bundle, tiny_config
from zfnet.cli import main
from zfnet.report.plots import read_metrics_csv
from zfnet.train import list_checkpoints, load_model, train
from zfnet.train import recipe as recipe_mod
from zfnet.train.budget import Plan, parse_duration, plan_steps, validations


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("18m", 1080), ("1.5h", 5400), ("1h30m", 5400), (" 2m 30s ", 150),
    (".5m", 30), ("20M", 1200),
])
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["18", "", "5x", "m", "1m1", "-1m", "1m-2s", "h30m"])
def test_parse_duration_needs_numbers_with_units(text) -> None:
    with pytest.raises(ValueError, match="e.g. 90s, 18m"):
        parse_duration(text)
    with pytest.raises(ValueError, match="must be > 0"):
        parse_duration("0s")


def test_validations_count_every_nth_and_the_last() -> None:
    assert validations(1, 6, 7) == 1  # the last only
    assert validations(1, 14, 7) == 2  # 7 and 14 (the last)
    assert validations(1, 15, 7) == 3  # 7, 14, 15
    assert validations(1, 6, 1) == 5
    assert validations(2, 2, 1) == 0


def test_plan_by_hand() -> None:
    """10 steps per epoch, 1 done; 80 s left at 1 s/step and 5 s/validation (every epoch):
    60 steps cost 50 + 5 validations = 75 s; 61 would need a 6th validation (81 s)."""
    p = plan_steps(100, 20, 1.0, 5.0, 10, 10, 700, 1)
    assert (p.total_steps, p.epochs, p.last_epoch_steps) == (60, 6, 10)
    p = plan_steps(100, 20, 1.0, 5.0, 10, 10, 700, 7)  # validations after 7 and 8: 70 + 10 s
    assert (p.total_steps, p.epochs, p.last_epoch_steps) == (80, 8, 10)
    p = plan_steps(100, 20, 1.0, 5.0, 10, 10, 700, 3)  # after 3, 6 and 8 (the last): 65 + 15 s
    assert (p.total_steps, p.epochs, p.last_epoch_steps) == (75, 8, 5)
    assert plan_steps(100, 20, 1.0, 5.0, 10, 10, 40, 1).total_steps == 40  # --epochs 4 caps it
    p = plan_steps(100, 120, 1.0, 5.0, 10, 10, 700, 1)  # already over: no more steps
    assert (p.total_steps, p.epochs, p.last_epoch_steps) == (10, 1, 10)
    assert p.end_step(0) == 10 and Plan.from_dict(p.to_dict()) == p
    assert p.describe() == ("time budget 100 s: 10 steps planned (1 epochs, the last with 10 "
                            "steps) from 1000 ms/step and 5.0 s/validation so far")
    assert plan_steps(1080, 20, 1.0, 5.0, 10, 10, 700, 7).describe().startswith(
        "time budget 18.0 min: ")  # minutes from 2 min on


def test_plan_is_the_largest_that_fits() -> None:
    """Against a brute-force search over every total, on random rates."""
    rng = random.Random(0)
    for _ in range(300):
        spe, every = rng.randint(1, 12), rng.randint(1, 8)
        done, top = spe * rng.randint(1, 3), spe * rng.randint(1, 20)
        budget, used = rng.uniform(1, 200), rng.uniform(0, 50)
        step_s, val_s = rng.uniform(0.05, 2), rng.uniform(0, 20)

        def cost(t, spe=spe, done=done, every=every, step_s=step_s, val_s=val_s):
            return ((t - done) * step_s
                    + validations(done // spe, math.ceil(t / spe), every) * val_s)

        fits = [t for t in range(done, max(done, top) + 1) if cost(t) <= budget - used]
        p = plan_steps(budget, used, step_s, val_s, spe, done, top, every)
        assert p.total_steps == max(fits, default=done)
        assert (p.epochs - 1) * spe + p.last_epoch_steps == p.total_steps
        assert 1 <= p.last_epoch_steps <= spe


def test_budget_options_are_checked() -> None:
    with pytest.raises(ValueError, match="time_budget must be > 0"):
        tiny_config("x", time_budget=0)
    with pytest.raises(ValueError, match="onecycle.*use cosine, linear"):
        tiny_config("x", time_budget=60, schedule="onecycle")
    r = CliRunner().invoke(main, ["train", "--out", "x", "--time-budget", "18"])
    assert r.exit_code == 2 and "e.g. 90s, 18m" in r.output


def test_ample_budget_changes_nothing(reference, tmp_path) -> None:
    """A budget the run fits in plans every step of --epochs: the reference run, exactly."""
    out = tmp_path / "run"
    summary = train(tiny_config(out, epochs=3, time_budget=3600), bundle=tiny_bundle())
    assert summary["plan"]["total_steps"] == 12 and summary["plan"]["epochs"] == 3
    _assert_same_run(reference[0], out)


def test_exhausted_budget_stops_after_the_first_epoch(tmp_path) -> None:
    summary = train(tiny_config(tmp_path / "run", epochs=3, time_budget=1e-3),
                    bundle=tiny_bundle())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    assert summary["plan"]["total_steps"] == 4


@pytest.fixture
def planned(monkeypatch):
    """plan_steps replaced by one that plans 10 steps (2.5 of the tiny run's epochs of 4 steps)
    whatever the machine's speed; counts its calls."""
    calls = []

    def fixed(budget_s, used_s, step_s, val_s, steps_per_epoch, done_steps, max_steps, every):
        calls.append(done_steps)
        return Plan(total_steps=10, epochs=3, last_epoch_steps=2, budget_s=budget_s,
                    step_s=step_s, val_s=val_s)

    monkeypatch.setattr(recipe_mod, "plan_steps", fixed)
    return calls


def _budgeted(out, **kw):
    return tiny_config(out, epochs=6, schedule="cosine", lr=0.01, val_every=5, time_budget=60,
                       **kw)


def test_budgeted_run_ends_at_its_plan(planned, tmp_path) -> None:
    out = tmp_path / "run"
    summary = train(_budgeted(out), bundle=tiny_bundle())
    assert planned == [4, 8]  # planned after every whole epoch but the last
    rows = load_model(out)[1]["history"]
    assert [r["global_step"] for r in rows] == [4, 8, 10]  # the last epoch ends after 2 steps
    # validated after epoch 1 (to time it) and the last, not epoch 2 (val_every=5)
    assert [r["val_top1_error"] is None for r in rows] == [False, True, False]
    # cosine re-planned to end at step 10: the lr logged after each epoch is the next step's
    assert rows[1]["lr"] == pytest.approx(0.005 * (1 + math.cos(math.pi * 8 / 10)))
    assert rows[2]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert read_metrics_csv(out / "metrics.csv")["skipped"] == [0, 0, 0]  # none counted lost
    assert summary["epochs_completed"] == 3 and summary["plan"]["total_steps"] == 10
    for _, path in list_checkpoints(out):
        assert load_model(path)[1]["plan"]["total_steps"] == 10


def test_budgeted_run_resumes_its_plan_exactly(planned, tmp_path, monkeypatch) -> None:
    """SIGTERM in the last, partial epoch; the resumed run keeps the plan (no second planning)
    and equals the uninterrupted one. Another budget on resume is refused."""
    ref = tmp_path / "ref"
    train(_budgeted(ref), bundle=tiny_bundle())
    out = tmp_path / "run"
    real = recipe_mod.renormalize_filters
    n = itertools.count(1)

    def renorm_then_signal(model, radius, *rest):
        real(model, radius, *rest)
        if next(n) == 9:  # step 1 of the last epoch (2 steps)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(recipe_mod, "renormalize_filters", renorm_then_signal)
    assert train(_budgeted(out), bundle=tiny_bundle())["status"] == "interrupted"
    monkeypatch.setattr(recipe_mod, "renormalize_filters", real)
    with pytest.raises(ValueError, match=r"time_budget: 60\.0 in the run, 120\.0 now"):
        train(tiny_config(out, epochs=6, schedule="cosine", lr=0.01, val_every=5,
                          time_budget=120, resume=True), bundle=tiny_bundle())
    summary = train(_budgeted(out, resume=True), bundle=tiny_bundle())
    # planned after epochs 1 and 2 of each run; the resumed last epoch is not re-planned
    assert summary["status"] == "completed" and planned == [4, 8, 4, 8]
    _assert_same_run(ref, out)


def test_replanning_moves_the_end_and_validates_a_new_last_epoch(tmp_path, monkeypatch) -> None:
    """After epoch 1 the plan is 5 epochs; after epoch 2 the machine turned out slower and the
    plan ends the run there: epoch 2 (not due with val_every=5) is validated as the last, and
    the cosine lr, moved twice, ends at 0."""
    plans = iter([Plan(20, 5, 4, 60, 1.0, 1.0), Plan(8, 2, 4, 60, 1.5, 1.0)])
    monkeypatch.setattr(recipe_mod, "plan_steps", lambda *a: next(plans))
    out = tmp_path / "run"
    summary = train(_budgeted(out), bundle=tiny_bundle())
    rows = load_model(out)[1]["history"]
    assert [r["global_step"] for r in rows] == [4, 8]
    assert [r["val_top1_error"] is None for r in rows] == [False, False]
    assert rows[0]["lr"] == pytest.approx(0.005 * (1 + math.cos(math.pi * 4 / 20)))
    assert rows[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert summary["plan"]["total_steps"] == 8 and summary["epochs_completed"] == 2


def test_the_command_says_when_a_run_went_over_its_budget(tmp_path, monkeypatch) -> None:
    import zfnet.train

    plan = Plan(total_steps=4, epochs=1, last_epoch_steps=4, budget_s=1.0, step_s=1.5, val_s=0)
    summary = {"status": "completed", "final": {}, "wall_time_s": 6.0, "device": "cpu",
               "run_dir": str(tmp_path), "checkpoint": None, "plan": plan.to_dict()}
    monkeypatch.setattr(zfnet.train, "train", lambda config: summary)
    r = CliRunner().invoke(main, ["train", "--data", "synthetic", "--model", "zfnet_small",
                                  "--out", str(tmp_path / "run"), "--time-budget", "1s"])
    assert r.exit_code == 0, r.output
    assert "time budget 1 s: 4 steps planned" in r.output
    assert "note: the run took 5 s more than its time budget" in r.output
