"""`--compile` (zfnet.train.compiled): a compiled run trains, saves the keys of an uncompiled one
(no `_orig_mod.`), resumes compiled or not, keeps its weight average; `zfnet eval --compile`
scores as the uncompiled model does. The plumbing is tested with torch.compile's "eager"
backend (Dynamo traces the step, no code is generated: seconds); one slow test runs Inductor,
the default, whose first compilation takes a minute on a small CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.processes import process_env, torchrun
from tests.train.tiny import tiny_bundle, tiny_config
from zfnet.cli import main
from zfnet.train import compiled, evaluate_checkpoint, find_last, load_model, train
from zfnet.train.checkpoint import read_train_state
from zfnet.train.distributed import DistInfo
from zfnet.train.run import build_run


@pytest.fixture
def eager(monkeypatch):
    """torch.compile traced by Dynamo and run eagerly (no code generation)."""
    monkeypatch.setattr(compiled, "BACKEND", "eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _keys(run: Path) -> tuple[list[str], list[str]]:
    """The checkpoint's weight names and its saved live weights' names (--ema)."""
    last = find_last(run)
    return (sorted(load_file(last / "model.safetensors")),
            sorted(read_train_state(last)["live_weights"]))


def test_compiled_run_saves_the_same_keys_and_resumes(tmp_path, eager) -> None:
    opts = {"ema": 0.9, "keep_epochs": (1, 2)}
    plain = train(tiny_config(tmp_path / "plain", epochs=1, **opts), bundle=tiny_bundle())
    run = tmp_path / "compiled"
    done = train(tiny_config(run, epochs=1, compile=True, **opts), bundle=tiny_bundle())
    assert done["status"] == "completed" and plain["status"] == "completed"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it was compiled
    assert _keys(run) == _keys(tmp_path / "plain")
    assert not any("_orig_mod" in k for k in _keys(run)[0])
    # the same numbers as the uncompiled run (the eager backend computes what eager does)
    assert done["final"]["train_loss"] == pytest.approx(plain["final"]["train_loss"], rel=1e-5)
    # resumed compiled, then uncompiled: a checkpoint is a checkpoint
    done = train(tiny_config(run, epochs=2, compile=True, resume=True, **opts),
                 bundle=tiny_bundle())
    assert done["status"] == "completed" and load_model(run)[1]["epoch"] == 2
    done = train(tiny_config(run, epochs=3, resume=True, keep_epochs=(1, 2, 3), ema=0.9),
                 bundle=tiny_bundle())
    assert done["status"] == "completed" and load_model(run)[1]["epoch"] == 3
    # what trains is the compiled wrapper; what is saved and validated is not
    r = build_run(tiny_config(tmp_path / "x", compile=True),
                  DistInfo(0, 1, 0, torch.device("cpu")), tiny_bundle())
    assert isinstance(r.model, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(r.shown, torch._dynamo.eval_frame.OptimizedModule)


def test_eval_compile_scores_as_uncompiled(tmp_path, eager) -> None:
    run = tmp_path / "run"
    train(tiny_config(run, epochs=1, keep_epochs=(1,)), bundle=tiny_bundle())
    plain = evaluate_checkpoint(run, bundle=tiny_bundle(), amp="off")
    torch._dynamo.utils.counters.clear()
    got = evaluate_checkpoint(run, bundle=tiny_bundle(), amp="off", compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert got["confusion_matrix"] == plain["confusion_matrix"]
    assert got["loss"] == pytest.approx(plain["loss"], rel=1e-6)


def test_cli_compile_flags(tmp_path, eager) -> None:
    data = "synthetic?n_train=32&n_val=16&size=32"
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--data", data, "--model", "zfnet_small",
                                    "--out", str(run), "--epochs", "1", "--batch-size", "16",
                                    "--keep-epochs", "1", "--quiet", "--no-tensorboard",
                                    "--device", "cpu", "--compile"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["compile"] is True
    assert "compiling" not in res.output  # --quiet: no start-up lines
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--device", "cpu",
                                    "--compile"])
    assert res.exit_code == 0 and "top-1 error" in res.output, res.output
    # --resume keeps the run's choice unless told otherwise
    res = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--epochs", "2",
                                    "--no-compile", "--keep-epochs", "1,2"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["compile"] is False
    assert "compiling" not in res.output
    # with progress, the first steps' wait is said before them (and where a resume starts)
    res = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--epochs", "3",
                                    "--compile", "--keep-epochs", "1,2,3", "--progress"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(
        f"resuming from {run}/checkpoints/epoch_0002: epoch 3 of 3, step 1 of 2\n"
        "compiling the model (torch.compile; the first steps take longer, ~1 min on a CPU)\n"
    ), res.output


def test_compile_without_a_compiler_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, clang++ or c++ on it
    monkeypatch.delenv("CXX", raising=False)
    res = CliRunner().invoke(main, ["train", "--data", "synthetic?n_train=32&n_val=16&size=32",
                                    "--model", "zfnet_small", "--out", str(tmp_path / "run"),
                                    "--device", "cpu", "--compile", "--quiet"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("Error: --compile on the CPU needs a C++")
    assert not (tmp_path / "run").exists()


def test_compiling_on_a_cpu_with_cudas_compiler_logs_no_cuda_home_note(tmp_path) -> None:
    """Where CUDA's compiler is installed but no GPU is there (CUDA_HOME set), compiling for
    the CPU does not log torch's "No CUDA runtime is found" into the progress bar."""
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("the note is logged only where no GPU is found")
    code = ("import torch; from zfnet.train import compiled; "
            "compiled.compile_model(torch.nn.Linear(2, 2)); import torch.utils.cpp_extension")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**process_env(), "CUDA_HOME": str(tmp_path)}, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "No CUDA runtime" not in p.stderr, p.stderr


@pytest.mark.slow
def test_compiled_ddp_matches_one_uncompiled_process(tmp_path) -> None:
    """torch.compile of the DDP wrapper (graph split at the gradient buckets) in two gloo
    processes: the weights of one uncompiled process with the same global batch."""
    opts = {"epochs": 1, "ema": 0.9, "model_opts": {"conv_widths": [16, 16, 16],
                                                    "fc_width": 32, "dropout": 0.0}}
    r = torchrun("-m", "tests.train.run_tiny", str(tmp_path / "ddp"),
                 json.dumps({**opts, "compile": True}),
                 env={**process_env(), "TINY_COMPILE_BACKEND": "eager"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    train(tiny_config(tmp_path / "one", **opts), bundle=tiny_bundle())
    m2, meta2 = load_model(tmp_path / "ddp")
    m1, _ = load_model(tmp_path / "one")
    assert meta2["world_size"] == 2 and meta2["train_config"]["compile"] is True
    for k, v in m1.state_dict().items():
        torch.testing.assert_close(m2.state_dict()[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_inductor_compiled_run_trains_and_resumes(tmp_path) -> None:
    """The default backend, Inductor (C++ code for the CPU): a 1-epoch run trains, saves the
    uncompiled keys, resumes compiled."""
    torch._dynamo.reset()
    run = tmp_path / "run"
    done = train(tiny_config(run, epochs=1, compile=True), bundle=tiny_bundle())
    assert done["status"] == "completed"
    assert done["final"]["train_loss"] == pytest.approx(
        train(tiny_config(tmp_path / "plain", epochs=1), bundle=tiny_bundle())
        ["final"]["train_loss"], rel=0.05)  # dropout masks differ: Inductor draws its own
    assert sorted(load_file(find_last(run) / "model.safetensors")) == sorted(
        load_file(find_last(tmp_path / "plain") / "model.safetensors"))
    done = train(tiny_config(run, epochs=2, compile=True, resume=True), bundle=tiny_bundle())
    assert done["status"] == "completed" and load_model(run)[1]["epoch"] == 2
    torch._dynamo.reset()
