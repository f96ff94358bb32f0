"""`zfnet eval` across processes: two gloo processes give the counts, the confusion matrix and the
broken-file count of one process (the loss up to float rounding), centre crop and 10 crops, with
shards of unequal length; an error in one process stops both with an error instead of a hang;
under torchrun only the first process prints and writes --json."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner
from torch.utils.data import Dataset

from tests.processes import torchrun
from tests.train.test_broken_files import CLI, _dataset
from tests.train.tiny import TinyBundle, tiny_bundle, tiny_config
from zfnet.cli import main
from zfnet.data import BadImageError
from zfnet.train import evaluate_checkpoint, train
from zfnet.train.distributed import processes

pytestmark = pytest.mark.filterwarnings("ignore::zfnet.data.BrokenImageWarning")

ROOT = Path(__file__).resolve().parents[2]
N_VAL = 15  # odd: the two shards hold 8 and 7 images
BROKEN = (3, 8)  # one in each process's share (items r, r + 2, ...)
FAILING = 9  # in the second process's share


class _Broken(Dataset):
    """The tiny val set with unreadable items: None (skipped, as the data layer gives them), or
    with `strict` a BadImageError at FAILING."""

    def __init__(self, base: Dataset, strict: bool = False) -> None:
        self.base, self.strict = base, strict

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        if self.strict and i == FAILING:
            raise BadImageError(f"img{i}.jpg", "truncated file")
        return None if i in BROKEN else self.base[i]


def _bundles() -> dict[str, TinyBundle]:
    centre, ten = tiny_bundle(n_val=N_VAL), tiny_bundle(n_val=N_VAL, ten_crop=True)
    broken = tiny_bundle(n_val=N_VAL)
    broken.val = _Broken(broken.val)
    strict = tiny_bundle(n_val=N_VAL)
    strict.val = _Broken(strict.val, strict=True)
    return {"centre": centre, "ten_crop": ten, "broken": broken, "strict": strict}


def _evaluate(run: Path, name: str, bundle: TinyBundle, info=None) -> dict:
    return evaluate_checkpoint(run, ten_crop=name == "ten_crop", batch_size=4, amp="off",
                               bundle=bundle, info=info)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run: str, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        with processes("cpu") as info:
            assert (info.rank, info.world_size) == (rank, world)
            for name, bundle in _bundles().items():
                try:
                    out[(rank, name)] = _evaluate(Path(run), name, bundle, info)
                except (ValueError, RuntimeError) as e:
                    out[(rank, name)] = f"{type(e).__name__}: {e}"
        assert dist.is_initialized()  # a group joined before is left as it was
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    train(tiny_config(out, epochs=1, keep_epochs=(1,)), bundle=tiny_bundle())
    return out


def _same_figures(got: dict, want: dict) -> None:
    """Every count exactly; the loss up to float32 rounding (a convolution's last bits depend
    on the batch it runs in)."""
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert {k: v for k, v in got.items() if k != "loss"} == \
        {k: v for k, v in want.items() if k != "loss"}


def test_two_processes_count_what_one_process_counts(tiny_run) -> None:
    one = {name: _evaluate(tiny_run, name, b) for name, b in _bundles().items()
           if name != "strict"}
    assert one["centre"]["n"] == N_VAL and one["centre"]["skipped"] == 0
    assert one["broken"]["n"] == N_VAL - len(BROKEN) and one["broken"]["skipped"] == 2
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), str(tiny_run), out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        for name, want in one.items():
            _same_figures(results[(rank, name)], want)
    # --strict: the process that read the file names it; the other stops too, without waiting,
    # with the same error (torchrun's processes print it once)
    assert results[(1, "strict")].startswith("BadImageError: broken image img9.jpg")
    assert results[(0, "strict")] == results[(1, "strict")]




def test_torchrun_eval_prints_once_and_matches_one_process(tmp_path) -> None:
    """An image folder with two broken val files, one in each process's share."""
    spec = _dataset(tmp_path / "images")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--data", spec, "--out", str(run), "--epochs", "1",
                                    "--keep-epochs", "1", *CLI])
    assert res.exit_code == 0, res.output
    one = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--device", "cpu",
                                    "--json", str(tmp_path / "one.json")])
    assert one.exit_code == 0, one.output
    r = torchrun("-m", "zfnet.cli", "eval", "--checkpoint", str(run), "--device", "cpu",
                 "--json", str(tmp_path / "two.json"), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    want = json.loads((tmp_path / "one.json").read_text())
    got = json.loads((tmp_path / "two.json").read_text())
    assert want["n"] == 2 and want["skipped"] == 2
    _same_figures(got, want)
    # the first process alone prints: one summary line, one "wrote"
    assert r.stdout.count("top-1 error") == 1 and r.stdout.count("wrote ") == 1, r.stdout
    assert "(2 broken files skipped)" in r.stdout
    # each process warns about the broken file it read
    assert r.stderr.count("x_broken1.jpg") == 1 and r.stderr.count("x_broken2.jpg") == 1
