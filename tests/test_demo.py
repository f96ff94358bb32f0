"""End to end: the demo's pipeline on a tiny synthetic set writes a report with every section,
and the analysis commands run on its run directory."""

import json
import re

import pytest
from click.testing import CliRunner

from zfnet.cli import main
from zfnet.demo import run_demo

TINY = "synthetic?n_train=200&n_val=60&size=32"


@pytest.fixture(scope="module")
def demo_log() -> list[str]:
    return []


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_log):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = run_demo(out, epochs=2, batch_size=32, data=TINY, log=demo_log.append,
                      transfer="fashion-mnist?n_val=40", transfer_shots=(2,), transfer_steps=3)
    return out, result


def test_demo_writes_every_section(demo_run) -> None:
    out, result = demo_run
    page = (out / "index.html").read_text()
    # every section, in the paper's order: Figs. 2, 4, 5, 6, 7, 8, Tables 4-5, 7, then beyond
    keys = ("training", "evaluation", "topk_gallery", "evolution", "invariance_photos",
            "invariance_dataset", "filters", "occlusion", "correspondence", "transfer", "probes",
            "randomization", "randomization_independent")
    where = [page.find(f'<section id="{key}"') for key in keys]
    assert -1 not in where and where == sorted(where), dict(zip(keys, where, strict=True))
    assert not re.search(r'src="(http|//)', page)
    assert 0 <= result["val_top1_error"] <= 1
    assert 0 <= result["pointing_hit_rate"] <= 1
    assert json.loads((out / "eval.json").read_text())["n"] == 60


def test_demo_times_every_stage(demo_run, demo_log) -> None:
    _, result = demo_run
    stages = result["stages"]
    assert list(stages) == [
        "data", "training (2 epochs)", "evaluation", "top-9 gallery (Fig. 2)", "filters (Fig. 6)",
        "feature evolution (Fig. 4)", "occlusion (Fig. 7)", "invariance (Fig. 5)",
        "correspondence (Fig. 8)", "linear probes (Table 7)", "randomisation check",
        "randomisation check, each layer alone", "transfer (Tables 4-5)", "report"]
    assert all(t >= 0 for t in stages.values())
    assert sum(stages.values()) <= result["wall_time_s"] + 0.1 * len(stages)  # rounding
    assert "a few minutes" in demo_log[0]  # said before the work starts
    for name, t in stages.items():  # each logged as it ends, in order
        assert sum(line.strip() == f"{name}: {t:.1f} s" for line in demo_log) == 1, name
    assert any("val top-1 error" in line and "chance 90%" in line for line in demo_log)


def test_demo_rerun_reuses_the_run(demo_run) -> None:
    """No training again (training is deterministic: equal numbers alone would not show it):
    the checkpoints are the same files, untouched."""
    out, first = demo_run
    files = sorted((out / "checkpoints").rglob("*"))
    stamps = [p.stat().st_mtime_ns for p in files]
    again = run_demo(out, epochs=2, batch_size=32, data=TINY, analyses=False, log=lambda s: None)
    assert again["val_top1_error"] == first["val_top1_error"]
    assert sorted((out / "checkpoints").rglob("*")) == files
    assert [p.stat().st_mtime_ns for p in files] == stamps


@pytest.mark.parametrize("args", [
    ["visualize", "topk", "--layers", "conv1,conv3", "--k", "4", "--images", "30"],
    ["analyze", "correspondence", "--images", "3", "--draws", "2"],
    ["analyze", "filters"],
    ["analyze", "transfer", "--data", "fashion-mnist?n_val=20&classes=0,1", "--shots", "2",
     "--scratch-steps", "2", "--test", "10", "--layer", "pool5"],
])
def test_analysis_commands(demo_run, tmp_path, args) -> None:
    out, _ = demo_run
    res = CliRunner().invoke(main, [*args, "--checkpoint", str(out), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "index.html").is_file()


def test_analysis_errors_are_clean(demo_run, tmp_path) -> None:
    out, _ = demo_run
    res = CliRunner().invoke(main, ["visualize", "topk", "--checkpoint", str(out), "--out",
                                    str(tmp_path), "--layers", "conv9"])
    assert res.exit_code == 1 and "conv9" in res.output and "valid" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(main, ["analyze", "correspondence", "--checkpoint", str(out),
                                    "--out", str(tmp_path), "--class", "dragon"])
    assert res.exit_code == 1 and "dragon" in res.output and "face" in res.output
    res = CliRunner().invoke(main, ["analyze", "transfer", "--checkpoint", str(out), "--out",
                                    str(tmp_path), "--data", "synthetic", "--shots", "1,x"])
    assert res.exit_code == 2 and "--shots" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["analyze", "transfer", "--checkpoint", str(out), "--out",
                                    str(tmp_path), "--data", "fashion-mnist:/nowhere"])
    assert res.exit_code == 1 and "/nowhere" in res.output and "Traceback" not in res.output


def test_study_command(tmp_path) -> None:
    res = CliRunner().invoke(main, [
        "study", "--data", "synthetic?n_train=64&n_val=32&size=32", "--variants",
        "baseline,no_fc7", "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "study.json").read_text())
    assert [r["variant"] for r in rows] == ["baseline", "no_fc7"]
    assert rows[1]["parameters"] < rows[0]["parameters"]
    assert rows[0]["paper"] == [33.1, 38.4, 16.5]
    page = (tmp_path / "index.html").read_text()
    assert 'id="study"' in page and "for 1 epoch with" in page
    *table, chance, _ = res.output.strip().splitlines()[-5:]  # then the chance; report
    head, *lines = table  # its table says "error"
    assert "error: train top-1  val top-1  val top-5" in head
    assert chance.startswith("Chance: ") and "% top-1 error (" in chance
    assert [line.split()[:2] for line in lines] == [["zfnet_small", "baseline"],
                                                    ["zfnet_small", "no_fc7"]]


def test_a_one_epoch_demo_leaves_evolution_out_and_finishes(tmp_path, monkeypatch) -> None:
    """`--epochs 1` was taken, then the demo stopped at Fig. 4 (one kept checkpoint; its hint,
    --keep-epochs, no option of the demo) with no report; now Fig. 4 is left out, said so, and
    the rest runs."""
    from zfnet import demo, pipeline

    ran = []
    for name in ("gallery", "filters", "evolution", "invariance", "correspondence", "probes",
                 "randomization"):
        monkeypatch.setattr(pipeline, name, lambda *a, _n=name, **k: ran.append(_n) or {})
    monkeypatch.setattr(demo, "_occlusion", lambda *a, **k: ran.append("occlusion") or {})
    log: list[str] = []
    result = run_demo(tmp_path / "run", epochs=1, batch_size=32, data=TINY, log=log.append,
                      transfer=None)
    assert "evolution" not in ran and {"gallery", "occlusion", "probes"} <= set(ran)
    assert any("feature evolution (Fig. 4) left out: it compares the checkpoints of 2 epochs "
               "or more (--epochs 2)" in line for line in log), log
    assert (tmp_path / "run" / "index.html").is_file() and result["report"]


def test_an_interrupted_demo_writes_the_report_so_far_and_exits_as_train_does(
        tmp_path, monkeypatch) -> None:
    """Stopped during training (a timeout's SIGINT), the demo said how to resume and left no
    page, and ended with status 0; `zfnet train` writes the epochs so far and ends 130."""
    import dataclasses

    from zfnet import demo

    real = demo.train

    def stopped(cfg, bundle):  # one epoch done, then the signal
        summary = real(dataclasses.replace(cfg, epochs=1), bundle=bundle)
        return {**summary, "status": "interrupted", "signal": "SIGINT"}

    monkeypatch.setattr(demo, "train", stopped)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--epochs", "2", "--data", TINY,
                                    "--batch-size", "32", "--quiet"])
    assert res.exit_code == 130, res.output
    assert "run the same command again to resume; the report so far: " in res.output
    assert 'id="training"' in (out / "index.html").read_text()
