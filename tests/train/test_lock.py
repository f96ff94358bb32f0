"""zfnet.train.lock: one process trains a run directory at once."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from zfnet.cli import main
from zfnet.train.lock import LOCK_FILE, RunLockedError, run_lock

TINY = ["--data", "synthetic?n_train=32&n_val=16&size=32", "--model", "zfnet_small",
        "--batch-size", "16", "--quiet", "--no-tensorboard"]


def test_a_second_holder_is_refused_naming_the_first(tmp_path) -> None:
    run = tmp_path / "run"
    with run_lock(run):
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunLockedError, match=rf"being trained by another process \(pid "
                                                 rf"{os.getpid()}\)"), run_lock(run):
            pass
        with run_lock(run, hold=False):  # a process other than the main one: nothing held
            pass
    with run_lock(run):  # released
        pass


def test_train_stops_while_another_process_trains_the_run(tmp_path) -> None:
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", *TINY, "--out", str(run), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != LOCK_FILE}
    with run_lock(run):  # as a first `zfnet train` would hold it
        res = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--epochs", "2"])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1].startswith(
        f"Error: {run} is being trained by another process"), res.output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != LOCK_FILE} == before
    res = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--epochs", "2"])
    assert res.exit_code == 0, res.output
