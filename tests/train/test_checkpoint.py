"""Checkpoints: atomic writes (a save killed midway leaves the previous one loadable), exact
state round trip without pickle, and clear errors for wrong models, corrupt files, wrong paths."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import zfnet
from zfnet.train import CheckpointError, list_checkpoints, load_model, save_checkpoint
from zfnet.train.checkpoint import (
    decode_state,
    encode_state,
    find_last,
    load_weights,
    read_train_state,
    remove_stale_temporaries,
)


@pytest.fixture
def run_dir(reference):
    """The shared finished 3-epoch run (read only)."""
    return reference[0]


def test_run_layout_and_meta(run_dir) -> None:
    assert [e for e, _ in list_checkpoints(run_dir)] == [1, 2, 3]
    model, meta = load_model(run_dir)
    assert not model.training
    assert meta["model"] == "zfnet_small" and meta["epoch"] == 3 and meta["data"] == "tiny"
    assert meta["class_names"] == ["c0", "c1", "c2", "c3"]
    assert meta["model_config"]["fc"] == [32, 32]
    assert meta["train_config"]["lr"] == 1e-3
    assert len(meta["history"]) == 3
    assert json.loads((run_dir / "config.json").read_text())["model"] == "zfnet_small"
    # the same model from a checkpoint directory and from its weights file
    ckpt1 = list_checkpoints(run_dir)[0][1]
    m1, meta1 = load_model(ckpt1 / "model.safetensors")
    assert meta1["epoch"] == 1
    m1b, _ = load_model(ckpt1)
    for a, b in zip(m1.state_dict().values(), m1b.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_state_round_trip_exact() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.randn(3))], lr=0.1, momentum=0.9)
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    state = {"opt": opt.state_dict(), "rng": torch.get_rng_state(), "np": np.random.get_state(),
             "tuple": (1, 2.5, None), "inf": float("inf")}
    tensors: dict = {}
    encoded = json.loads(json.dumps(encode_state(state, tensors)))  # JSON must hold it
    back = decode_state(encoded, tensors)
    assert torch.equal(back["rng"], state["rng"])
    assert back["opt"]["state"][0]["momentum_buffer"].equal(
        state["opt"]["state"][0]["momentum_buffer"])
    assert back["np"][0] == "MT19937" and np.array_equal(back["np"][1], state["np"][1])
    assert back["np"][1].dtype == state["np"][1].dtype
    assert back["tuple"] == (1, 2.5, None) and back["inf"] == float("inf")
    with pytest.raises(TypeError, match="cannot store"):
        encode_state({"f": object()}, {})


def _next_epoch_args(run_dir):
    model, meta = load_model(run_dir)
    meta = {k: v for k, v in meta.items() if k != "checkpoint"}
    return model, {**meta, "epoch": 4}


@pytest.mark.parametrize("fail_at", ["fsync", "rename", "pointer"])
def test_save_failing_midway_keeps_previous(run_dir, tmp_path, monkeypatch, fail_at) -> None:
    """Simulate a crash at each stage of writing epoch 4: the epoch-3 checkpoint stays the
    loadable last one and nothing is pruned."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    model, meta = _next_epoch_args(run)
    calls = {"n": 0}
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def boom(*a):
        raise OSError("simulated crash")

    if fail_at == "fsync":
        def fsync(fd):  # die after the weights are written, before state.json
            calls["n"] += 1
            if calls["n"] == 2:
                boom()
            real_fsync(fd)
        monkeypatch.setattr(os, "fsync", fsync)
    elif fail_at == "rename":
        monkeypatch.setattr(os, "rename", boom)
    else:
        monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(run / "checkpoints", "epoch_0004", model, meta, {"x": torch.ones(2)},
                        keep=set())
    monkeypatch.setattr(os, "fsync", real_fsync)
    monkeypatch.setattr(os, "rename", real_rename)
    monkeypatch.setattr(os, "replace", real_replace)
    _, meta_now = load_model(run)
    assert meta_now["epoch"] == 3  # last.json still names the previous good checkpoint
    assert [e for e, _ in list_checkpoints(run)][:3] == [1, 2, 3]  # nothing pruned
    remove_stale_temporaries(run / "checkpoints")
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_killed_writer_leaves_loadable_checkpoint(tmp_path) -> None:
    """A real process writing checkpoints in a loop is SIGKILLed at an arbitrary moment."""
    script = textwrap.dedent(f"""
        import torch, zfnet
        from zfnet.train import save_checkpoint
        torch.manual_seed(0)
        m = zfnet.create_model("zfnet_small", num_classes=10)  # ~20 MB of weights
        meta = {{"model": "zfnet_small", "model_config": m.config.to_dict(), "epoch": 0}}
        for e in range(1, 10_000):
            with torch.no_grad():
                m.classifier.fc8.bias.fill_(e)
            save_checkpoint({str(tmp_path)!r}, f"epoch_{{e:04d}}", m, {{**meta, "epoch": e}},
                            {{"opt": torch.randn(1000)}}, keep=set())
            print(e, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # at least one checkpoint exists
        time.sleep(0.4)
    finally:
        proc.kill()
        proc.wait()
    model, meta = load_model(tmp_path)
    assert float(model.classifier.fc8.bias[0].detach()) == meta["epoch"] >= 1
    assert read_train_state(find_last(tmp_path))["opt"].shape == (1000,)


def test_errors_name_the_file(run_dir, tmp_path) -> None:
    last = find_last(run_dir)
    with pytest.raises(CheckpointError, match="model 'zfnet_small', expected 'alexnet_small'"):
        load_model(run_dir, model="alexnet_small")
    other = zfnet.create_model("alexnet_small", num_classes=4)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*different model"):
        load_weights(other, last)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="neither a checkpoint directory"):
        load_model(tmp_path)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(last, bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"bad/model\.safetensors is corrupt"):
        load_model(bad)
    (bad / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"bad/state\.json is corrupt"):
        load_model(bad)
    (bad / "state.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not a zfnet checkpoint"):
        load_model(bad)


def test_pointer_outside_the_checkpoints_is_not_followed(run_dir, tmp_path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(list_checkpoints(run)[0][1], elsewhere)  # a complete checkpoint, outside
    (run / "checkpoints" / "last.json").write_text(json.dumps({"checkpoint": "../../elsewhere"}))
    assert (run / "checkpoints" / "../../elsewhere" / "state.json").is_file()
    assert find_last(run) == run / "checkpoints" / "epoch_0003"  # the newest inside instead


def test_a_damaged_last_checkpoint_names_the_earlier_one(tmp_path) -> None:
    from tests.train.tiny import tiny_bundle, tiny_config
    from zfnet.train import train
    from zfnet.train.checkpoint import read_meta

    out = tmp_path / "run"
    train(tiny_config(out, epochs=2, keep_epochs=(1, 2)), bundle=tiny_bundle())
    last = find_last(out)
    assert last.name == "epoch_0002"
    (last / "state.json").write_text("{damaged")
    with pytest.raises(CheckpointError, match=r"epoch_0002/state.json is corrupt .*newest "
                                              r"earlier checkpoint is .*epoch_0001: give it as "
                                              r"--checkpoint, or move epoch_0002 out"):
        read_meta(last)
    last.rename(tmp_path / "epoch_0002.damaged")
    assert find_last(out).name == "epoch_0001"
