"""Real processes: SIGTERM saves and exits 143; torchrun with two CPU processes (gloo) trains,
and gives the weights of one process with the same global batch."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.processes import process_env, stop_group, torchrun
from tests.train.tiny import tiny_bundle, tiny_config
from zfnet.train import find_last, list_checkpoints, load_model, train
from zfnet.train.checkpoint import read_train_state

ROOT = Path(__file__).resolve().parents[2]




def _stopped_once_saved(proc: subprocess.Popen, out: Path, stop) -> tuple[str, str]:
    """`stop()` once the run in `out` has a checkpoint; `proc`'s output (its process group
    killed if it outlives the test)."""
    try:
        deadline = time.monotonic() + 180
        while not list_checkpoints(out):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.05)
        stop()
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            stop_group(proc)


def test_sigterm_saves_and_exits_143(tmp_path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.train.run_tiny", str(out), '{"epochs": 500}'],
        cwd=ROOT, env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own group: `stop_group` ends it and nothing else
    )
    stdout, stderr = _stopped_once_saved(proc, out, lambda: proc.send_signal(signal.SIGTERM))
    assert proc.returncode == 143, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    last = find_last(out)
    assert summary["checkpoint"] == str(last)
    _, meta = load_model(out)
    # resume finishes the epoch that was interrupted (or the next one) and stops cleanly
    done = meta["epoch"] + 1
    summary = train(tiny_config(out, epochs=done, resume=True), bundle=tiny_bundle())
    assert summary["status"] == "completed" and load_model(out)[1]["epoch"] == done


def test_sigterm_to_the_process_group_with_workers_saves_and_exits_143(tmp_path) -> None:
    """SIGTERM to every process of the job (a scheduler's scancel or time limit, `timeout`):
    the DataLoader workers get it too. They let the main process stop the run: it saves
    where it was and exits 143 (a worker killed by it was a traceback and exit 1, nothing
    saved)."""
    import os

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.train.run_tiny", str(out),
         '{"epochs": 500, "workers": 2}', "256"],
        cwd=ROOT, env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    stdout, stderr = _stopped_once_saved(  # into the next epoch: its workers running
        proc, out, lambda: time.sleep(0.5) or os.killpg(proc.pid, signal.SIGTERM))
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert summary["checkpoint"] == str(find_last(out))


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one(tmp_path) -> None:
    """Two gloo processes with 4 samples each per step == one process with batch 8 (dropout
    off, so that the only difference is where the gradient is summed). With weight averaging
    on: the averages and the live weights both match."""
    opts = {"epochs": 2, "ema": 0.9, "model_opts": {"conv_widths": [16, 16, 16], "fc_width": 32,
                                        "dropout": 0.0}}
    ddp_out = tmp_path / "ddp"
    r = torchrun("-m", "tests.train.run_tiny", str(ddp_out), json.dumps(opts))
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = [json.loads((tmp_path / f"ddp.summary{rank}.json").read_text())
                 for rank in (0, 1)]
    assert {s["world_size"] for s in summaries} == {2}
    one_out = tmp_path / "one"
    train(tiny_config(one_out, **opts), bundle=tiny_bundle())
    m2, meta2 = load_model(ddp_out)
    m1, meta1 = load_model(one_out)
    assert meta2["world_size"] == 2 and meta2["epoch"] == 2
    for k, v in m1.state_dict().items():
        torch.testing.assert_close(m2.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    live1 = read_train_state(meta1["checkpoint"])["live_weights"]
    live2 = read_train_state(meta2["checkpoint"])["live_weights"]
    for k, v in live1.items():
        torch.testing.assert_close(live2[k], v, rtol=1e-4, atol=1e-5)
    for a, b in zip(meta1["history"], meta2["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_top1_error"] == pytest.approx(b["val_top1_error"], abs=1e-9)


@pytest.mark.slow
def test_torchrun_a_nan_on_one_process_stops_both(tmp_path) -> None:
    """A NaN loss on one process alone (read a step late, like every loss) stops both at the
    same step, each saying where; the last good checkpoint is the run's last."""
    out = tmp_path / "ddp"
    env = {**process_env(), "TINY_POISON": "1:6"}  # rank 1, after its 6th update: epoch 2 step 2
    r = torchrun("-m", "tests.train.run_tiny", str(out), json.dumps({"epochs": 3}), env=env)
    assert r.returncode != 0, r.stdout[-2000:]
    # the two processes' messages may share a line of stderr
    errors = [e for e in r.stderr.split("NonFiniteLossError: ")[1:] if e.startswith("loss is")]
    assert len(errors) == 2, r.stderr[-3000:]
    assert any("loss is nan at epoch 2, step 3" in e for e in errors), errors
    assert any("not finite elsewhere at epoch 2" in e for e in errors), errors
    # each names the last good checkpoint (rank 1's said "none written yet")
    assert all(e.split("\n")[0].endswith(f"kept: {out / 'checkpoints' / 'epoch_0001'}")
               for e in errors), errors
    assert [e for e, _ in list_checkpoints(out)] == [1]
    model, _ = load_model(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())



@pytest.mark.slow
def test_torchrun_agrees_on_an_empty_batch_and_a_signal_of_one_process(tmp_path,
                                                                        monkeypatch) -> None:
    """What the processes agree on (each step a step late, without waiting for the device; and
    after each validation): three sessions of one run under torchrun, then the same run in one
    process with the global batch and the same empty step gives the same weights.
    1. Process 1's 3rd batch has no item (epoch 1, step 3): neither process updates there.
       Process 1 alone gets SIGTERM during the first validation: both stop after epoch 1.
    2. Process 0 alone gets SIGTERM after its first update (epoch 2, step 1): seen in step 2,
       agreed on after it, so both stop after step 2 and save there.
    3. The run resumed to its end, by a script that joined the process group itself: zfnet
       uses that group and leaves it joined."""
    opts = {"epochs": 3, "model_opts": {"conv_widths": [16, 16, 16], "fc_width": 32,
                                        "dropout": 0.0}}
    out = tmp_path / "ddp"

    def launch(resume: bool, **env: str) -> list[dict]:
        r = torchrun("-m", "tests.train.run_tiny", str(out),
                     json.dumps({**opts, "resume": resume}), env={**process_env(), **env})
        stopped = "TINY_SIGNAL" in env or "TINY_SIGNAL_EVAL" in env  # 143 each, torchrun 1
        assert r.returncode == (1 if stopped else 0), r.stderr[-3000:]
        return [json.loads((tmp_path / f"ddp.summary{rank}.json").read_text())
                for rank in (0, 1)]

    first = launch(False, TINY_EMPTY="1:3", TINY_SIGNAL_EVAL="1:1")
    assert [s["status"] for s in first] == ["interrupted"] * 2
    assert [(s["epochs_completed"], s["global_step"]) for s in first] == [(1, 4)] * 2
    second = launch(True, TINY_SIGNAL="0:1")
    assert [(s["status"], s["global_step"]) for s in second] == [("interrupted", 6)] * 2
    assert find_last(out).name == "epoch_0001_step_000002"
    third = launch(True, TINY_OWN_GROUP="1")
    assert [(s["status"], s["group_kept"]) for s in third] == [("completed", True)] * 2

    from tests.train import run_tiny

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(run_tiny.loop, "epoch_loader", run_tiny.loop.epoch_loader)
    run_tiny.empty_at(0, 3)
    one_out = tmp_path / "one"
    train(tiny_config(one_out, **opts), bundle=tiny_bundle())
    m2, meta2 = load_model(out)
    m1, _ = load_model(one_out)
    assert meta2["epoch"] == 3
    for k, v in m1.state_dict().items():
        torch.testing.assert_close(m2.state_dict()[k], v, rtol=1e-4, atol=1e-5)


def test_torchrun_processes_given_different_options_say_so_and_write_nothing(tmp_path) -> None:
    """Two processes launched with different batch sizes (two torchrun commands of one job,
    edited apart): each says which option differs, before anything is written (a gloo
    "Received data size doesn't match" abort and a traceback, and a run folder left, before)."""
    out = tmp_path / "mixed"
    env = {**process_env(), "TINY_RANK_CONFIG": '1:{"batch_size": 4}'}
    r = torchrun("-m", "tests.train.run_tiny", str(out), json.dumps({"epochs": 1}), env=env)
    assert r.returncode != 0, r.stdout[-2000:]
    errors = [e.split("\n")[0] for e in r.stderr.split("ValueError: ")[1:]]
    assert len(errors) == 2, r.stderr[-3000:]
    assert all(e.startswith("the processes were given different options: batch_size is 8 "
                            "on rank 0 but 4 on rank 1") for e in errors), errors
    assert sum("(this process)" in e for e in errors) == 1, errors
    assert not out.exists()


def test_torchrun_a_bad_input_every_process_meets_is_said_once(tmp_path) -> None:
    """Three processes given a batch size they cannot share: one `Error:` line, the first
    process's (each printed it, rank 1's and 2's named by rank, sometimes before rank 0's)."""
    r = torchrun("-m", "zfnet.cli", "train", "--data", "synthetic?n_train=30&n_val=9&size=32",
                 "--model", "zfnet_small", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--batch-size", "16", nproc=3)
    said = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert said == ["Error: batch_size=16 is not divisible by the 3 processes; give a multiple "
                    "of 3 (15, 18)"], r.stderr[-3000:]
    assert r.returncode != 0 and not (tmp_path / "run").exists()
