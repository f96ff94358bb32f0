"""bench/codec_check.py's dry run: each decoder that loads here decodes the same JPEGs, with its
rate (alone, and in two threads at once) and its distance from torchvision's pixels (none on
the CPU: libjpeg-turbo both)."""

from tests.processes import bench_script


def test_dry_run_compares_the_decoders() -> None:
    p = bench_script("codec_check.py", "--dry-run")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [r for r in p.stdout.splitlines() if "img/s" in r]
    assert rows and rows[0].split()[0] == "torchvision", p.stdout
    for r in rows:
        assert float(r.split("img/s")[0].split()[-1]) > 0, r
        assert float(r.split("in 2 threads at once")[1].split()[0]) > 0, r
        assert "mean 0.000 levels, worst 0, shapes equal" in r, r
    assert "codec check: pass" in p.stdout
