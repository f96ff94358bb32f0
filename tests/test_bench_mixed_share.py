"""bench/bench_mixed_share.py's dry run: the mixed loader alone at each share swept and at the
measured one, each with its rate, and the measured one against the best."""

from tests.processes import bench_script


def test_dry_run_sweeps_the_shares_and_the_measured_one() -> None:
    p = bench_script("bench_mixed_share.py", "--dry-run")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [r for r in p.stdout.splitlines() if r.startswith("  share")]
    assert [r.split()[1] for r in rows] == ["0.00", "0.50", "1.00"], p.stdout
    assert all(float(r.split()[2]) > 0 for r in rows), p.stdout
    assert "--loader mixed: the workers decode" in p.stdout
    last = next(r for r in p.stdout.splitlines() if r.startswith("  measured share"))
    assert "of the best swept" in last and "predicted" in last, last
