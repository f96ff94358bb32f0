"""The report: sections round-trip, the page embeds every figure and opens offline."""

import re

import numpy as np
import pytest

from zfnet.report import Figure, Section, Table, build_report, read_sections, write_section
from zfnet.report.plots import plot_confusion, plot_curves, read_metrics_csv


def test_sections_roundtrip_and_page(tmp_path) -> None:
    plot_curves([1, 2, 3], {"loss": {"train": [3, 2, 1]}}, tmp_path / "figs" / "c.png")
    plot_confusion(np.array([[5, 1], [0, 7]]), ["cat", "dog"], tmp_path / "figs" / "m.png")
    write_section(tmp_path, Section(
        key="b", title="Second <b>", caption="one\n\ntwo", order=2,
        figures=[Figure("figs/m.png", "matrix")],
        tables=[Table(["layer", "Δ"], [["conv5", 0.0671]], "t")],
        metrics={"top-1 error": np.float32(0.25)},
    ))
    write_section(tmp_path, Section(key="a", title="First", caption="c", order=1,
                                    figures=[Figure("figs/c.png")]))
    got = read_sections(tmp_path)
    assert [s.key for s in got] == ["a", "b"]
    assert got[1].tables[0].rows == [["conv5", 0.0671]] and got[1].metrics["top-1 error"] == 0.25
    page = build_report(tmp_path).read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "Second &lt;b&gt;" in page  # escaped
    assert not re.search(r'(src|href)="(http|//)', page)  # no external assets


def test_missing_figure_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        write_section(tmp_path, Section("k", "t", "c", figures=[Figure("nope.png")]))


def test_figures_must_stay_inside_the_run(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "figs").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"not for the page")
    for path in ("../secret.png", str(tmp_path / "secret.png")):
        with pytest.raises(ValueError, match="outside"):
            write_section(run, Section("k", "t", "c", figures=[Figure(path)]))
    (run / "figs" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match="outside"):
        write_section(run, Section("k", "t", "c", figures=[Figure("figs/link.png")]))
    # a section file edited by hand (or another tool) is refused when read, naming it
    (run / "sections").mkdir()
    (run / "sections" / "x.json").write_text(
        '{"key": "x", "title": "t", "caption": "c", "figures": [{"path": "../secret.png"}]}')
    with pytest.raises(ValueError, match=r"x\.json: figure '\.\./secret\.png' is outside"):
        build_report(run)
    assert not (run / "index.html").exists()
    (run / "sections" / "x.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"x\.json is not a report section"):
        read_sections(run)


def test_report_needs_sections(tmp_path) -> None:
    with pytest.raises(ValueError, match="has no report sections"):
        build_report(tmp_path)
    assert not (tmp_path / "index.html").exists()


def test_read_metrics_csv(tmp_path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("epoch,loss\n1,2.5\n2,\n")
    m = read_metrics_csv(p)
    assert m["epoch"] == [1.0, 2.0] and m["loss"][0] == 2.5 and np.isnan(m["loss"][1])


def test_the_command_removes_the_page_once_its_last_section_is_deleted(tmp_path) -> None:
    from click.testing import CliRunner

    from zfnet.cli import main

    write_section(tmp_path, Section(key="a", title="A", caption="one"))
    build_report(tmp_path)
    (tmp_path / "sections" / "a.json").unlink()
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 0 and "no sections left" in res.output, res.output
    assert not (tmp_path / "index.html").exists()
    (tmp_path / "index.html").write_text("<html>the user's own page</html>")  # not zfnet's
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "has no report sections" in res.output
    assert (tmp_path / "index.html").read_text() == "<html>the user's own page</html>"
