"""`--loader mixed`'s share (zfnet.data.mixed): measured on the dataset's own files, it follows
which side is slower; no workers, no share; the processes of a run take one (`reduce`; with
torchrun: tests/data/test_shards.py's two nodes)."""

from __future__ import annotations

import time

import pytest
import torch

from tests.data.test_loaders import SPEC
from tests.data.test_loaders import folder as folder  # noqa: F401 (the fixture)
from zfnet.data import load_dataset
from zfnet.data import mixed as mixed_mod
from zfnet.data.batches import BatchInputs
from zfnet.data.mixed import ShareMeasure, best_share, measure_share, saved_share
from zfnet.data.transforms import CropDataset

pytestmark = pytest.mark.filterwarnings("ignore::zfnet.data.images.BrokenImageWarning")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def train_set(folder):  # noqa: F811
    return load_dataset(f"imagefolder:{folder}?{SPEC}").train


def test_the_share_is_measured_on_the_files(train_set) -> None:
    seed = torch.random.get_rng_state()
    m = measure_share(train_set, CPU, 2, batch_size=4)
    assert torch.equal(torch.random.get_rng_state(), seed)  # no crops drawn: the run's RNG
    assert m.host_rate > 0 and m.device_rate > 0 and m.finish_rate > 0 and m.workers == 2
    assert m.share == pytest.approx(best_share(m.host_rate, m.device_rate, m.finish_rate),
                                    abs=0.006)
    assert train_set.mode == "train" and train_set.form == "float"  # measured on a copy
    assert "--loader mixed: the workers decode" in m.describe()
    split = f"{m.share:.0%} of the images" if m.share < 1 else "every image"  # as measured
    assert split in m.describe() and "2 workers" in m.describe()


def test_the_best_share_keeps_both_sides_busy() -> None:
    # nothing done to decoded images (c = 0): H / (H + D), for a rate of H + D
    assert best_share(100.0, 300.0, float("inf")) == pytest.approx(0.25)
    # with c: the workers' p / H equals the thread's (1 - p) d + c
    h, d, c = 100.0, 1 / 300, 1 / 900
    p = best_share(h, 1 / (d + c), 1 / c)
    assert p / h == pytest.approx((1 - p) * d + c)
    # a thread slower with decoded images than workers decoding all of them: they decode all
    assert best_share(1000.0, 300.0, 400.0) == 1.0
    assert best_share(0.0, 300.0, 900.0) == 0.0 and best_share(100.0, 0.0, 0.0) == 0.0


def test_the_share_follows_the_slower_side(train_set, monkeypatch) -> None:
    """A device that takes 200 ms a batch gets few images; workers that take 50 ms an image
    get few. (Both far above what the 37 px images cost to decode here.)"""
    real_call = BatchInputs.__call__

    def slow_device(self, batch):
        time.sleep(0.2)
        return real_call(self, batch)

    with monkeypatch.context() as m:
        m.setattr(BatchInputs, "__call__", slow_device)
        assert measure_share(train_set, CPU, 2, batch_size=4).share >= 0.8
    real_item = CropDataset.formed_item

    def slow_workers(self, i, params=None):
        if self.host_share == 1.0:  # the workers' measuring pass
            time.sleep(0.05)
        return real_item(self, i, params)

    with monkeypatch.context() as m:
        m.setattr(CropDataset, "formed_item", slow_workers)
        assert measure_share(train_set, CPU, 2, batch_size=4).share <= 0.2


def test_the_device_side_is_measured_in_the_runs_threads(train_set, monkeypatch) -> None:
    """The device's rates are those of ZFNET_DEVICE_THREADS' threads making batches at once
    (`DeviceBatches`), as the run's loader makes them: a device call of 100 ms a batch gives
    about twice the rate in two threads."""
    real_call = BatchInputs.__call__

    def slow_device(self, batch):
        time.sleep(0.1)
        return real_call(self, batch)

    monkeypatch.setattr(BatchInputs, "__call__", slow_device)
    rates = {}
    for threads in ("1", "2"):
        monkeypatch.setenv("ZFNET_DEVICE_THREADS", threads)
        m = measure_share(train_set, CPU, 2, batch_size=4, rounds=4)
        rates[threads] = m.device_rate
        assert m.device_rate < 4 / 0.1 * int(threads) * 1.05  # no faster than the calls
    assert rates["2"] > 1.6 * rates["1"]


def test_no_workers_no_share_and_the_processes_agree(train_set, monkeypatch) -> None:
    def fail(*_):
        raise AssertionError("nothing to measure without workers")

    monkeypatch.setattr(mixed_mod, "_host_rate", fail)
    m = measure_share(train_set, CPU, 0, batch_size=4)
    assert (m.share, m.host_rate, m.device_rate, m.finish_rate) == (0.0, 0.0, 0.0, 0.0)
    assert m.describe() == ("--loader mixed: no DataLoader workers (--workers 0), so the device "
                            "decodes every image")
    # every process calls `reduce` (a collective), also with nothing measured
    assert measure_share(train_set, CPU, 0, batch_size=4, reduce=lambda p: p + 0.3).share == 0.3
    monkeypatch.undo()
    assert measure_share(train_set, CPU, 2, batch_size=4, reduce=lambda p: 0.456).share == 0.46


def test_a_checkpoints_share() -> None:
    assert saved_share({"host_share": 0.6, "workers": 3}) == 0.6
    assert saved_share({"workers": 3}) is None and saved_share(None) is None
    assert ShareMeasure(0.25, 100.0, 300.0, 1200.0, 4).describe() == (
        "--loader mixed: the workers decode 25% of the images, the device the rest "
        "(measured: 4 workers 100 img/s; the device 300 img/s from the files, 1,200 from "
        "decoded images)")
