"""bench/fmnist_search.py, the GPU screen of Fashion-MNIST recipes: its crops are the trainer's,
and a run (on the CPU here) trains, scores the 10 crops and writes its result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from zfnet.data import load_dataset
from zfnet.data.fashion_mnist import DEFAULT_DIR
from zfnet.data.transforms import random_crop_params

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from fmnist_search import gather_crops  # noqa: E402

pytestmark = pytest.mark.skipif(
    not DEFAULT_DIR.exists(), reason=f"{DEFAULT_DIR} missing: apt-get install dataset-fashion-mnist"
)


def test_crops_equal_the_trainers() -> None:
    """The screen's batched crops are the ones the trainer gives sample by sample (the
    dataset's `__getitem__` after torch is seeded with the sample's seed) and the ones
    torchvision's crop and flip give by hand: every offset 0-4 and both flips occur."""
    train = load_dataset("fashion-mnist?n_train=40&n_val=1").train
    full, size = train.full_size, train.input_size
    idx = list(range(40))
    params, per_sample = [], []
    with torch.random.fork_rng(devices=[]):
        for i in idx:
            torch.manual_seed(1000 + i)
            params.append(random_crop_params(full, full, size))  # the draws `__getitem__` makes
            torch.manual_seed(1000 + i)
            x, _ = train[i]  # the per-sample path: random crop and flip from torch's RNG
            per_sample.append(x)
    tops, lefts, flips = (torch.tensor(v) for v in zip(*params, strict=True))
    assert set(tops.tolist()) == set(lefts.tolist()) == set(range(full - size + 1))
    assert set(flips.tolist()) == {True, False}
    got = gather_crops(train.images[idx], train.mean, tops, lefts, flips, size)
    assert torch.equal(got, torch.stack(per_sample))
    for k, (t, lf, flip) in enumerate(params):
        want = TF.crop(train.images[idx[k]].float() - train.mean, t, lf, size, size)
        torch.testing.assert_close(got[k], TF.hflip(want) if flip else want, rtol=0, atol=0)


def test_a_run_learns_and_writes_its_result(tmp_path) -> None:
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fmnist_search.py"), "run", "--device", "cpu",
         "--n-train", "2000", "--n-test", "300", "--epochs", "3", "--pad", "1", "--lr", "0.05",
         "--model-opt", "conv_widths=16,32,48,48,32", "--json", str(out)],  # narrow: ~3 s
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["steps"] == 3 * 16  # ceil(2000 / 128) per epoch
    assert r["test_error_10crop"] < 0.5 and r["test_error_centre"] < 0.5  # chance is 0.9
    assert r["train_error"] < 0.6


def test_grid_reports_a_failed_line(tmp_path) -> None:
    grid = tmp_path / "grid.txt"
    grid.write_text("bad: --model-opt strides=9  # one stride for five layers\n")
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fmnist_search.py"), "grid", str(grid),
         "--out", str(tmp_path / "g"), "--common", "--device cpu --n-train 64 --n-test 10"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=300,
    )
    assert p.returncode == 1
    assert "bad: FAILED" in p.stdout and "strides needs 5 positive values" in p.stdout


def test_epochs_times_each_line_and_writes_them(tmp_path) -> None:
    grid, out = tmp_path / "grid.txt", tmp_path / "timed.txt"
    grid.write_text("small: --model-opt conv_widths=8,16,16,16,16 --epochs 99 --lr 0.05\n"
                    "big: --model-opt conv_widths=32,64,64,64,64  # comment\n"
                    "small_seed1: --model-opt conv_widths=8,16,16,16,16 --seed 1\n")
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fmnist_search.py"), "epochs", str(grid),
         "--steps", "3", "--repeats", "1", "--budget", "1m", "--write", str(out)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    lines = out.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["small", "big", "small_seed1"]
    assert "--epochs 99" not in lines[0] and "--lr 0.05" in lines[0]
    small, big, small_again = (float(line.rsplit("--epochs ", 1)[1]) for line in lines)
    assert small > 0 and big > 0  # which fits more is a timing: not asserted (load decides)
    assert small_again == small  # one model, one timing
    assert "2 distinct models timed" in p.stdout
