"""bench/fmnist_recipe.sh, the README's 20-minute Fashion-MNIST recipe: each form composes the
`zfnet train` / `zfnet eval` commands its README rows were measured with (seen in its dry run)."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from zfnet.train.distributed import resolve_device
from zfnet.train.recipe import amp_dtype_for

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "fmnist_recipe.sh"


def dry_run(*args: str, form: str = "auto") -> tuple[str, list[list[str]]]:
    """The script's chosen form and the commands it would run (each split into words)."""
    env = {**os.environ, "FMNIST_RECIPE": form, "FMNIST_RECIPE_DRY_RUN": "1"}
    p = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    chosen = p.stdout.split("recipe: ")[1].split()[0]
    return chosen, [shlex.split(line) for line in p.stderr.splitlines() if line.strip()]


def last(cmd: list[str], option: str) -> str:
    """The value a repeated option ends with (a later one wins in `zfnet train`)."""
    return [cmd[i + 1] for i, word in enumerate(cmd) if word == option][-1]


def model_opts(cmd: list[str]) -> dict[str, str]:
    pairs = (cmd[i + 1].split("=", 1) for i, word in enumerate(cmd) if word == "--model-opt")
    return dict(pairs)  # a later --model-opt of one key wins, as in apply_overrides


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="needs make setup")
class TestForms:
    def test_stride1_trains_what_fits_the_time(self) -> None:
        form, (train, evaluate) = dry_run("3", "runs/x", form="stride1")
        assert form == "stride1" and train[1:2] == ["train"] and evaluate[1:2] == ["eval"]
        assert last(train, "--data") == "fashion-mnist?pad=1" and last(train, "--seed") == "3"
        assert (last(train, "--epochs"), last(train, "--time-budget")) == ("60", "18.5m")
        assert model_opts(train) == {"strides": "1,1,1,1,1", "batchnorm": "true",
                                     "dropout": "0.25", "conv_widths": "32,96,160,160,128"}
        assert (last(train, "--batch-size"), last(train, "--lr")) == ("64", "0.04")
        assert last(evaluate, "--checkpoint") == "runs/x" and "--ten-crop" in evaluate
        assert last(evaluate, "--data") == "fashion-mnist?pad=1"

    def test_epochs34_is_the_fixed_34_epochs(self) -> None:
        _, (train, _) = dry_run(form="epochs34")
        assert last(train, "--epochs") == "34" and "--time-budget" not in train
        assert last(train, "--data") == "fashion-mnist"  # the Zen 4's 2-px shifts
        assert last(train, "--out") == "runs/fmnist_recipe_s0"

    def test_budget_form_and_its_holdout(self) -> None:
        _, (train, _) = dry_run("1", "runs/b", "--lr", "0.07", form="budget")
        assert model_opts(train)["strides"] == "1,2,1,1,1"
        assert model_opts(train)["conv_widths"] == "16,96,160,160,128"
        assert model_opts(train)["dropout"] == "0"
        assert last(train, "--data") == "fashion-mnist?pad=1"
        assert (last(train, "--epochs"), last(train, "--time-budget")) == ("34", "18.5m")
        assert last(train, "--lr") == "0.07"  # an option after OUT wins
        _, (train, *evals) = dry_run("--holdout", "runs/h", form="budget")
        assert last(train, "--data") == "fashion-mnist?holdout=10000&pad=1"
        assert [last(e, "--data") for e in evals] == [
            f"fashion-mnist?holdout=10000&pad={p}" for p in range(4)]

    def test_auto_picks_stride1_where_training_runs_in_reduced_precision(self) -> None:
        fast = amp_dtype_for("auto", resolve_device("auto")) is not None
        assert dry_run()[0] == ("stride1" if fast else "budget")

    def test_an_unknown_form_is_refused(self) -> None:
        env = {**os.environ, "FMNIST_RECIPE": "fast", "FMNIST_RECIPE_DRY_RUN": "1"}
        p = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2
        assert "FMNIST_RECIPE=fast is not known; valid: auto, stride1, epochs34, budget" in p.stderr
