"""bench/gpu_overlap.py's dry run: the training loop over shards with each setting (the gpu
loader, host shares, threads, stream priority, the loop's own stream) at toy sizes on the CPU,
each line with its rate and what tells its cause, then the profile of a few steps."""

from tests.processes import bench_script


def test_dry_run_measures_every_setting_and_profiles(tmp_path) -> None:
    p = bench_script("gpu_overlap.py", "--dry-run", "--out", str(tmp_path), "--threads", "2",
                     "--shares", "0.5,measured")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = (tmp_path / "overlap.txt").read_text().splitlines()
    names = [r.split("  ")[1].strip() for r in rows]
    measured = "host share 0.0 (measured)"  # no workers in the dry run: nothing to share
    assert names == ["the loop alone (one device batch, repeated)", "base", "base, 2 threads",
                     measured, "host share 0.5", f"{measured}, 2 threads", "decode priority",
                     f"{measured} + decode priority", "main stream"], rows
    for name, r in zip(names, rows, strict=True):
        assert float(r.split("img/s")[0].split()[-1]) > 0, r
        assert "main process" in r and "make batches" in r, r
        # the threads that made the batches: ZFNET_DEVICE_THREADS' (auto: none on a CPU)
        threads = name.split(", ")[-1].split()[0] if "thread" in name else "0"
        assert f" {threads} loader threads" in r, r
    assert "CUDA calls that may wait" in (tmp_path / "profile.txt").read_text()
    assert (tmp_path / "profile.json.gz").stat().st_size > 0
