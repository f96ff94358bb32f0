"""`torchrun -m zfnet.cli visualize topk`: two gloo processes mine a shard each, the first writes
the gallery; the same top-k (images, positions and values) and the same PNG bytes as one
process (which reads in-process; the two, each with a DataLoader worker), and nothing written
twice or printed twice."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from tests.processes import torchrun
from zfnet.analyses.topk import load_topk
from zfnet.cli import main

ROOT = Path(__file__).resolve().parents[2]
DATA = "synthetic?n_train=64&n_val=32&size=32"
# 32 images in batches of 8: each process's shard (16 images) is two of one process's batches,
# so every convolution runs on the same batches and the values agree to the last bit.
MINE = ["visualize", "topk", "--images", "32", "--batch-size", "8", "--k", "4",
        "--maps-per-layer", "3", "--device", "cpu"]




def _files(d: Path) -> dict[str, bytes]:
    """Every file under `d` but the report page (which names its directory) and topk.pt (whose
    bytes hold a random serialization id; compared by content)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name not in ("index.html", "topk.pt")}


def test_two_processes_write_what_one_process_writes(tmp_path, monkeypatch, one_thread) -> None:
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--data", DATA, "--model", "zfnet_small",
                                    "--out", str(run), "--epochs", "1", "--batch-size", "32",
                                    "--keep-epochs", "1", "--quiet", "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    args = [*MINE, "--checkpoint", str(run)]
    # one process: this one, on one thread as each of torchrun's (no interpreter to start)
    monkeypatch.chdir(tmp_path)
    one = CliRunner().invoke(main, [*args, "--out", "one"])
    assert one.exit_code == 0, one.output[-3000:]
    two = torchrun("-m", "zfnet.cli", *args, "--workers", "1", "--out", "two",  # a worker each
                   cwd=tmp_path, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_topk(tmp_path / "one/gallery/topk.pt")
    b = load_topk(tmp_path / "two/gallery/topk.pt")
    assert list(a) == list(b) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    for name in a:
        for f in ("values", "index", "row", "col"):
            assert torch.equal(getattr(a[name], f), getattr(b[name], f)), (name, f)
        # both shards contributed: images from each half of the 32
        assert (a[name].index < 16).any() and (a[name].index >= 16).any()
    one_files, two_files = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(one_files) == sorted(two_files)
    assert sorted(p.name for p in (tmp_path / "two").rglob("*") if p.is_file()) == sorted(
        p.name for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert sum(n.endswith(".png") for n in one_files) == 5
    for name, data in one_files.items():
        assert two_files[name] == data, name  # the PNGs, the section
    section = json.loads(two_files["sections/topk_gallery.json"])
    assert section["metrics"]["images"] == 32
    # the first process alone writes and prints the report line
    assert two.stdout.count("report: ") == 1, two.stdout


def test_mining_workers_as_given_zero_included() -> None:
    """--workers N reaches the mining as N (0 too: it is not "not given"); without it, auto:
    the cores less one on CUDA, 0 on a CPU."""
    from zfnet.cli.loading import _mining_workers

    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert _mining_workers(0, cuda) == 0 and _mining_workers(3, torch.device("cpu")) == 3
    assert _mining_workers(None, torch.device("cpu")) == 0 and _mining_workers(None, cuda) >= 1
