"""A tiny trained zfnet run with two kept epochs, shared by the explorer's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from zfnet.cli import main as zfnet_cli


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """`zfnet_small` trained 2 epochs on 64 synthetic 32-px images (32 val), epochs 1 and 2
    kept (a few seconds)."""
    run = tmp_path_factory.mktemp("explorer") / "run"
    r = CliRunner().invoke(zfnet_cli, [
        "train", "--data", "synthetic?n_train=64&n_val=32&size=32", "--model", "zfnet_small",
        "--out", str(run), "--epochs", "2", "--batch-size", "32", "--keep-epochs", "1,2",
        "--quiet", "--no-tensorboard", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return run
