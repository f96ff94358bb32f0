"""bench/bench_imagenet.py's dry run: every part of the ImageNet-scale benchmark (per worker,
loaders alone, step alone, end to end: from the folder, the shards, the shards of centre
squares and of their raw pixels) runs at toy sizes on the CPU and prints its figures."""

import pytest

from tests.processes import bench_script
from zfnet.data import codec


def _nvimgcodec_loads() -> bool:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(codec.ENV, "nvimgcodec")
        try:
            codec.device_decoder("cpu")
        except ValueError:
            return False
    return True


def test_dry_run_prints_every_part(tmp_path) -> None:
    # the last run's decoder and threads named (where nvImageCodec is not installed:
    # torchvision's)
    last = "nvimgcodec" if _nvimgcodec_loads() else "torchvision"
    p = bench_script("bench_imagenet.py", "--dry-run", "--dir", str(tmp_path), "--e2e",
                     f"folder:gpu,shards:mixed,squares:cpu,squares:gpu:2:{last},raw:cpu")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    for part in ("1. per worker", "2. the loaders alone", "3. the training step alone",
                 "4. zfnet train end to end", "best end to end / compiled step",
                 "whole benchmark"):
        assert part in out, out
    rows = [line for line in out.splitlines() if "img/s" in line]
    # one worker process, its batches in its slots of shared memory and in new shared memory
    worker = [line for line in rows if "the main process" in line]
    assert [line.split()[0] for line in worker] == ["slots", "new"], out
    assert all(float(line.split("img/s")[0].split()[-1]) > 0 for line in worker), out
    rows = [line for line in rows if line not in worker]
    # every loader, step and run measured, each run also over its epoch's later part
    assert len(rows) == 9 + 11 + 3 + 5 * 2, out
    runs = [k for k, r in enumerate(rows) if "zfnet train," in r]
    assert len(runs) == 5 and all("steady: after its first 10% of batches" in rows[k + 1]
                                  for k in runs), out
    assert "; steady (an epoch after its first 10% of batches" in out, out
    assert all("ImageNet epoch" in line for line in rows)
    assert all(float(line.split("img/s")[0].split()[-1]) > 0 for line in rows), out
    # hard links made the rest of the folder, and the shards as long
    assert "24 training JPEGs" in out and "8 distinct" in out, out
    assert "24 training samples in shards" in out, out
    assert "shards of 256 px squares" in out and "zfnet cpu loader, squares" in out, out
    assert "zfnet train, squares, cpu loader" in out, out
    assert "raw 256 px squares" in out and "zfnet cpu loader, raw squares" in out, out
    assert "zfnet train, raw, cpu loader" in out and "x the squares" in out, out
    assert "decoding alone, the squares" in out and "on the squares; issue 27" in out, out
    auto = codec.decoder_name()  # on the CPU, auto is decode_jpeg's library
    assert f"zfnet train, folder, gpu loader, {auto}, 0 threads" in out, out  # auto on a CPU
    assert f"zfnet train, squares, gpu loader, {last}, 2 threads" in out, out
    assert not list(tmp_path.iterdir())  # its work folder is removed
