"""Training and evaluation through the gpu and mixed loaders, run on the CPU (`--loader gpu
--device cpu`): the cpu loader's figures, broken files skipped and counted, a run interrupted
mid-epoch resumed exactly, from an image folder and from shards."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from click.testing import CliRunner

from tests.data.test_loaders import SPEC
from tests.data.test_loaders import folder as folder  # noqa: F401 (the fixture)
from tests.train.test_recipe import _assert_same_run
from tests.train.tiny import tiny_config
from zfnet.cli import main
from zfnet.data import codec
from zfnet.data.batches import DeviceBatches
from zfnet.data.mixed import ShareMeasure
from zfnet.data.shard_writer import write_shards
from zfnet.report.plots import read_metrics_csv
from zfnet.train import evaluate_checkpoint, find_last, load_model, train
from zfnet.train import recipe as recipe_mod
from zfnet.train import run as run_mod

pytestmark = pytest.mark.filterwarnings("ignore::zfnet.data.images.BrokenImageWarning")


def _share_is(monkeypatch, share: float | None) -> None:
    """--loader mixed measures `share` (None: a measure fails the test)."""
    def measured(*_, **__):
        assert share is not None, "the share was measured again"
        return ShareMeasure(share, 1.0, 1.0, 1.0, 2)

    monkeypatch.setattr(run_mod, "measure_share", measured)


def _sigterm_at_step(monkeypatch, n: int) -> None:
    real, calls = recipe_mod.renormalize_filters, {"n": 0}

    def renorm_then_signal(model, radius, *rest):
        real(model, radius, *rest)
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(recipe_mod, "renormalize_filters", renorm_then_signal)


@pytest.mark.parametrize(("source", "loader", "decoder", "threads"), [
    ("imagefolder", "gpu", None, None), ("shards", "gpu", None, "2"),
    ("imagefolder", "mixed", None, None),
    ("imagefolder", "mixed", "nvimgcodec", "2")])  # (the device's batches decoded by
# nvImageCodec; in two threads of the run, ZFNET_DEVICE_THREADS, where auto is none on a CPU)
def test_gpu_loader_on_the_cpu_trains_skips_and_resumes_exactly(folder, source, loader,  # noqa: F811
                                                                 decoder, threads, tmp_path,
                                                                 monkeypatch) -> None:
    if threads is not None:
        monkeypatch.setenv(codec.THREADS_ENV, threads)
        made = _count_calls(monkeypatch, run_mod, "as_inputs", keep=True)
    if decoder is not None:
        if decoder == "nvimgcodec" and codec._nvimgcodec() is None:
            pytest.skip("nvImageCodec is not installed here (the lower ends' set)")
        monkeypatch.setenv(codec.ENV, decoder)
        calls = _count_calls(monkeypatch, codec._NvImageCodec, "decode")
    if source == "shards":
        write_shards(f"imagefolder:{folder}", tmp_path / "shards", resize=37, workers=0)
        data = f"shards:{tmp_path / 'shards'}?{SPEC}&shuffle=4"
    else:
        data = f"imagefolder:{folder}?{SPEC}"
    kw = dict(data=data, loader=loader, workers=2, epochs=2)
    if loader == "mixed":  # a fixed share: measured ones differ from run to run
        _share_is(monkeypatch, 0.5)
    ref = tmp_path / "ref"
    train(tiny_config(ref, **kw))
    rows = read_metrics_csv(ref / "metrics.csv")
    if source == "imagefolder":  # the broken training file, the val file with bad tables
        assert rows["skipped"] == [1, 1]
        r = evaluate_checkpoint(ref, batch_size=4, device="cpu", amp="off", loader=loader)
        c = evaluate_checkpoint(ref, batch_size=4, device="cpu", amp="off", loader="cpu")
        assert (r["n"], r["skipped"]) == (c["n"], c["skipped"]) == (7, 1)
        assert r["loss"] == pytest.approx(c["loss"], rel=1e-2)  # one image resampled apart
    out = tmp_path / "run"
    per_epoch = int(rows["global_step"][0])
    _sigterm_at_step(monkeypatch, per_epoch + 2)  # during step 2 of epoch 2
    assert train(tiny_config(out, **kw))["status"] == "interrupted"
    monkeypatch.undo()
    assert find_last(out).name == "epoch_0001_step_000002"
    saved = load_model(out)[1]
    assert saved["workers"] == 2
    assert saved.get("host_share") == (0.5 if loader == "mixed" else None)
    _share_is(monkeypatch, None)  # a resume takes the run's own share: measures nothing
    if decoder is not None:
        monkeypatch.setenv(codec.ENV, decoder)
    if threads is not None:
        monkeypatch.setenv(codec.THREADS_ENV, threads)
    assert train(tiny_config(out, **kw, resume=True))["status"] == "completed"
    _assert_same_run(ref, out)
    if decoder == "nvimgcodec":
        assert calls["n"] > 0  # it decoded the device's batches
    if threads is not None:  # the reference run's batches were made by that many threads
        assert {b.threads for b in made["returned"] if b is not None} == {int(threads)}


def _count_calls(monkeypatch, owner, name: str, keep: bool = False) -> dict[str, Any]:
    """Counts the calls of `owner.name` (still made) in the returned dict's "n"; `keep`: what
    they returned in its "returned" (DeviceBatches, else None)."""
    real, calls = getattr(owner, name), {"n": 0, "returned": []}

    def counted(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if keep:
            calls["returned"].append(out if isinstance(out, DeviceBatches) else None)
        return out

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_the_loader_options_from_the_command_line(folder, tmp_path) -> None:  # noqa: F811
    run = tmp_path / "run"
    common = ["--model", "zfnet_small", "--model-opt", "conv_widths=16,16,16", "--model-opt",
              "fc_width=32", "--batch-size", "8", "--device", "cpu", "--amp", "off", "--quiet",
              "--no-tensorboard"]
    r = CliRunner().invoke(main, ["train", "--data", f"imagefolder:{folder}?{SPEC}", "--out",
                                  str(run), "--epochs", "1", "--loader", "gpu", "--workers",
                                  "auto", *common])
    assert r.exit_code == 0, r.output
    saved = load_model(run)[1]
    assert saved["train_config"]["loader"] == "gpu" and saved["train_config"]["workers"] == "auto"
    assert saved["workers"] == 0  # auto on a CPU device
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--ten-crop", "--loader",
                                  "gpu", "--workers", "1", "--device", "cpu"])
    assert r.exit_code == 0 and "7 images (1 broken file skipped), 10 crops" in r.output, \
        r.output
    # mixed measures its share and says it; the checkpoint keeps it for a resume
    r = CliRunner().invoke(main, ["train", "--data", f"imagefolder:{folder}?{SPEC}", "--out",
                                  str(tmp_path / "mixed"), "--epochs", "1", "--loader", "mixed",
                                  "--workers", "1", "--progress", *common[:-2], "--no-tensorboard"])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("--loader mixed: the workers"))
    share = load_model(tmp_path / "mixed")[1]["host_share"]
    assert (f"decode {share:.0%} of" if share < 1 else "decode every image") in line, line
