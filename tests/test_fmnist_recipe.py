"""bench/fmnist_recipe.sh, the README's 20-minute Fashion-MNIST recipe, by what its commands do:
every form's `zfnet train` / `zfnet eval` commands (its dry run) are accepted by zfnet's own CLI
and resolve to the run the script describes (model, data, epochs and time budget, optimiser);
`auto` picks the form by `zfnet.train`'s own rule and leaves device and precision to the
trainer's defaults; options after OUT win; an unknown form is refused, listing the valid ones.
Nothing trains: the commands run through zfnet's CLI up to the library call, which is replaced
by a recorder."""

from __future__ import annotations

import functools
import inspect
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import zfnet
import zfnet.train
from zfnet import memory
from zfnet.cli import main
from zfnet.data import load_dataset
from zfnet.data.fashion_mnist import DEFAULT_DIR
from zfnet.data.spec import parse_spec, with_options
from zfnet.train.distributed import resolve_device
from zfnet.train.recipe import amp_dtype_for

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "fmnist_recipe.sh"
FORMS = ("auto", "stride1", "epochs34", "budget")

pytestmark = [
    pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(),
                       reason="the script runs .venv/bin/python: needs make setup"),
    pytest.mark.skipif(not DEFAULT_DIR.is_dir(),
                       reason=f"{DEFAULT_DIR} missing: apt-get install dataset-fashion-mnist"),
]


def dry_run(*args: str, form: str = "auto") -> tuple[str, list[list[str]]]:
    """The script's chosen form and the commands it would run (each split into words)."""
    env = {**os.environ, "FMNIST_RECIPE": form, "FMNIST_RECIPE_DRY_RUN": "1"}
    p = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    chosen = p.stdout.split("recipe: ")[1].split()[0]
    return chosen, [shlex.split(line) for line in p.stderr.splitlines() if line.strip()]


class _Called(BaseException):
    """Raised by the recorders: stops the command at its library call (a BaseException, so
    that no error handling of the command turns it into a message). `what`: the function's
    name; `given`: its arguments by name."""

    def __init__(self, what: str, given: dict[str, Any]) -> None:
        super().__init__(what)
        self.what, self.given = what, given


@pytest.fixture
def run_cli(monkeypatch, tmp_path):
    """Run a dry-run command (`.venv/bin/zfnet train ...`) through zfnet's CLI in tmp_path,
    up to its call of `zfnet.train.train` or `zfnet.train.evaluate_checkpoint`: the `_Called`
    that says which, with what."""

    def recorder(fn):
        def record(*args: Any, **kwargs: Any) -> None:
            bound = inspect.signature(fn).bind(*args, **kwargs)
            bound.apply_defaults()
            raise _Called(fn.__name__, dict(bound.arguments))
        return record

    for name in ("train", "evaluate_checkpoint"):
        monkeypatch.setattr(zfnet.train, name, recorder(getattr(zfnet.train, name)))
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: True)  # a process-wide setting
    monkeypatch.chdir(tmp_path)

    def run(cmd: list[str]) -> _Called:
        assert Path(cmd[0]).name == "zfnet", cmd
        if cmd[1] == "eval":  # `--checkpoint` must exist: the run the train command writes
            words = cmd[2:]
            (tmp_path / words[words.index("--checkpoint") + 1]).mkdir(parents=True,
                                                                     exist_ok=True)
        try:
            result = CliRunner().invoke(main, cmd[1:])
        except _Called as called:
            return called
        raise AssertionError(f"zfnet {cmd[1]} refused the command {shlex.join(cmd)}:\n"
                             f"{result.output}{result.exception!r}")

    return run


def _train_config(run, cmd: list[str]) -> zfnet.train.TrainConfig:
    called = run(cmd)
    assert called.what == "train"
    return called.given["config"]


def _eval_args(run, cmd: list[str]) -> dict[str, Any]:
    called = run(cmd)
    assert called.what == "evaluate_checkpoint"
    return called.given


def _model(config) -> Any:
    """What the run would train: the model its options build (they must be valid options)."""
    return zfnet.create_model(config.model, **config.model_opts).config


@functools.cache
def _shift(spec: str) -> int:
    """How far the training crops of data spec `spec` move: (full size - crop) / 2."""
    bundle = load_dataset(with_options(spec, n_train=16, n_val=16))
    return (bundle.full_size - bundle.input_size) // 2


RECIPE = dict(model="zfnet_small", weight_decay=1e-3, label_smoothing=0.1, schedule="cosine",
              renorm=False, val_every=7, progress=False, device="auto", amp="auto")


@pytest.mark.parametrize("form,args,want", [
    ("stride1", ("3", "runs/x"),
     dict(strides=(1, 1, 1, 1, 1), widths=(32, 96, 160, 160, 128), dropout=0.25, batch_size=64,
          lr=0.04, epochs=60, time_budget=18.5 * 60, shift=1, seed=3, out="runs/x")),
    ("epochs34", (),  # the defaults: seed 0 into runs/fmnist_recipe_s0
     dict(strides=(1, 1, 1, 1, 1), widths=(32, 96, 160, 160, 128), dropout=0.25, batch_size=64,
          lr=0.04, epochs=34, time_budget=None, shift=2, seed=0, out="runs/fmnist_recipe_s0")),
    ("budget", ("1", "runs/b"),
     dict(strides=(1, 2, 1, 1, 1), widths=(16, 96, 160, 160, 128), dropout=0.0, batch_size=128,
          lr=0.05, epochs=34, time_budget=18.5 * 60, shift=1, seed=1, out="runs/b")),
])
def test_each_form_is_a_run_zfnet_accepts(run_cli, form: str, args: tuple, want: dict) -> None:
    chosen, (train_cmd, eval_cmd) = dry_run(*args, form=form)
    assert chosen == form
    config = _train_config(run_cli, train_cmd)
    for key, value in RECIPE.items():
        assert getattr(config, key) == value, key
    for key in ("seed", "out", "batch_size", "lr", "epochs", "time_budget"):
        assert getattr(config, key) == want[key], key
    net = _model(config)
    assert tuple(c.stride for c in net.convs) == want["strides"]
    assert tuple(c.channels for c in net.convs) == want["widths"]
    assert net.batchnorm and net.dropout == want["dropout"]
    assert parse_spec(config.data).name == "fashion-mnist" and _shift(config.data) == want["shift"]
    # then the paper's 10 crops of the test set, corners 1 px off centre, of that run
    ev = _eval_args(run_cli, eval_cmd)
    assert Path(ev["path"]) == Path(want["out"]) and ev["ten_crop"]
    assert parse_spec(ev["spec"]).name == "fashion-mnist" and _shift(ev["spec"]) == 1
    assert "holdout" not in parse_spec(ev["spec"]).options  # the test set


def test_holdout_trains_on_50k_and_scores_the_other_10k_at_each_shift(run_cli) -> None:
    _, (train_cmd, *eval_cmds) = dry_run("--holdout", "runs/h", form="budget")
    config = _train_config(run_cli, train_cmd)
    assert config.out == "runs/h" and _shift(config.data) == 1
    assert parse_spec(config.data).options["holdout"] == "10000"
    shifts = []
    for cmd in eval_cmds:
        ev = _eval_args(run_cli, cmd)
        assert Path(ev["path"]) == Path("runs/h") and ev["ten_crop"]
        assert parse_spec(ev["spec"]).options["holdout"] == "10000"  # the same held-out images
        shifts.append(_shift(ev["spec"]))
    assert shifts == [0, 1, 2, 3]


def test_options_after_out_win(run_cli) -> None:
    _, (train_cmd, _) = dry_run("1", "runs/b", "--lr", "0.07", "--model-opt", "dropout=0.1",
                                "--epochs", "5", form="budget")
    config = _train_config(run_cli, train_cmd)
    assert (config.seed, config.out, config.lr, config.epochs) == (1, "runs/b", 0.07, 5)
    net = _model(config)
    assert net.dropout == 0.1 and net.convs[1].stride == 2  # the rest of the form stays


def test_auto_picks_stride1_where_the_trainer_runs_in_reduced_precision(run_cli) -> None:
    """The script's rule is the trainer's: reduced precision under `zfnet train`'s defaults
    (--device auto, --amp auto), which the chosen command leaves in place (RECIPE above)."""
    fast = amp_dtype_for("auto", resolve_device("auto")) is not None
    chosen, (train_cmd, _) = dry_run()
    assert chosen == ("stride1" if fast else "budget")
    config = _train_config(run_cli, train_cmd)
    assert (config.device, config.amp) == ("auto", "auto")
    assert _model(config).convs[1].stride == (1 if fast else 2)


def test_an_unknown_form_is_refused() -> None:
    env = {**os.environ, "FMNIST_RECIPE": "fast", "FMNIST_RECIPE_DRY_RUN": "1"}
    p = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert "FMNIST_RECIPE=fast is not known" in p.stderr
    valid = p.stderr.split("valid:")[1]
    assert [f.strip() for f in valid.split(",")] == list(FORMS)
