"""bench/bench_imagenet.py's dry run: every part of the ImageNet-scale benchmark (per worker,
loaders alone, step alone, end to end: from the folder, the
shards and the shards of centre squares) runs at toy sizes on the CPU and prints its figures."""

from tests.processes import bench_script


def test_dry_run_prints_every_part(tmp_path) -> None:
    p = bench_script("bench_imagenet.py", "--dry-run", "--dir", str(tmp_path), "--e2e",
                     "folder:gpu,shards:cpu,shards:mixed,squares:cpu")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    for part in ("1. per worker", "2. the loaders alone", "3. the training step alone",
                 "4. zfnet train end to end", "best end to end / compiled step",
                 "whole benchmark"):
        assert part in out, out
    rows = [line for line in out.splitlines() if "img/s" in line]
    assert len(rows) == 7 + 10 + 3 + 4, out  # every loader, step and run measured
    assert all("ImageNet epoch" in line for line in rows)
    assert all(float(line.split("img/s")[0].split()[-1]) > 0 for line in rows), out
    # hard links made the rest of the folder, and the shards as long
    assert "24 training JPEGs" in out and "8 distinct" in out, out
    assert "24 training samples in shards" in out, out
    assert "shards of 256 px squares" in out and "zfnet cpu loader, squares" in out, out
    assert "zfnet train, squares, cpu loader" in out, out
    assert not list(tmp_path.iterdir())  # its work folder is removed
