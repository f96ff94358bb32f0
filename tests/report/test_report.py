"""The report: sections round-trip, the page embeds every figure and opens offline."""

import re

import numpy as np
import pytest

from zfnet.report import Figure, Section, Table, build_report, read_sections, write_section
from zfnet.report.plots import plot_confusion, plot_curves, read_metrics_csv


def test_a_confusion_matrix_of_many_classes_is_drawn_at_a_bounded_size(tmp_path) -> None:
    """Past 30 classes the cells are not named and the figure stops growing: ImageNet's 1000
    classes made `zfnet eval --out RUN` draw a 50,000 px square (some 100 GB)."""
    from PIL import Image

    n = 60
    m = np.eye(n, dtype=int) * 3
    path = plot_confusion(m, [f"n{k:08d}" for k in range(n)], tmp_path / "m.png")
    assert max(Image.open(path).size) <= 1400


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


def test_a_figure_deleted_after_its_section_is_told(tmp_path) -> None:
    from zfnet.report.html import MissingFigureWarning

    plot_curves([1, 2], {"loss": {"train": [2, 1]}}, tmp_path / "figs" / "c.png")
    write_section(tmp_path, Section("k", "Curves", "c", figures=[Figure("figs/c.png")]))
    (tmp_path / "figs" / "c.png").unlink()
    with pytest.warns(MissingFigureWarning) as seen:
        page = build_report(tmp_path).read_text()
    assert [str(w.message) for w in seen] == [
        f"{tmp_path / 'figs' / 'c.png'}, a figure of the section 'Curves', is missing: the page "
        "says so in its place (the command that made the section writes it again)"]
    assert "(missing figure figs/c.png)" in page


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
    (run / "sections" / "x.json").write_text('{"key": "x", "colour": "red"}')  # what is wrong
    with pytest.raises(ValueError, match=r"x\.json is not a report section \(corrupt or of "
                       r"another version: it lacks title, caption; unknown fields colour\)"):
        read_sections(run)


def test_a_rewritten_section_deletes_the_figures_it_no_longer_shows(tmp_path) -> None:
    """An analysis rerun on other layers leaves no orphan PNG behind; a figure another section
    shows, a file no section listed and anything outside the run stay."""
    run = tmp_path / "run"
    (run / "g").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png", "shared.png", "mine.png"):
        (run / "g" / name).write_bytes(b"png")
    (tmp_path / "outside.png").write_bytes(b"png")
    write_section(run, Section("other", "t", "c", figures=[Figure("g/shared.png")]))
    write_section(run, Section("k", "t", "c", figures=[
        Figure("g/a.png"), Figure("g/b.png"), Figure("g/shared.png")]))
    write_section(run, Section("k", "t", "c", figures=[Figure("g/b.png"), Figure("g/c.png")]))
    assert sorted(p.name for p in (run / "g").iterdir()) == [
        "b.png", "c.png", "mine.png", "shared.png"]
    # a section file edited to list a path outside the run: nothing outside is touched
    (run / "sections" / "k.json").write_text(
        '{"key": "k", "title": "t", "caption": "c", "figures": [{"path": "../outside.png"}]}')
    write_section(run, Section("k", "t", "c", figures=[Figure("g/c.png")]))
    assert (tmp_path / "outside.png").exists() and (run / "g" / "b.png").exists()


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


def _data_uris(page: str, kinds: str = "png") -> list[bytes]:
    """The images embedded in `page` of these kinds ("png", "png|jpeg"), in order."""
    import base64

    return [base64.b64decode(m) for m in re.findall(
        rf'src="data:image/(?:{kinds});base64,([^"]+)"', page)]


def test_figures_are_scaled_smoothly_not_nearest_neighbour(tmp_path) -> None:
    """Plots are shown at or below their drawn size: `image-rendering: pixelated` there drops
    1-px strokes (the minus signs of an axis, letters of a title)."""
    plot_curves([-0.3, 0, 0.3], {"p": {"a": [1, 2, 3]}}, tmp_path / "figs" / "c.png")
    write_section(tmp_path, Section("a", "A", "c", figures=[Figure("figs/c.png", "curve")]))
    page = build_report(tmp_path).read_text()
    assert "<img" in page and "pixelated" not in page and "crisp-edges" not in page


def test_a_wide_figure_is_embedded_reduced_and_links_to_its_full_size_file(tmp_path) -> None:
    from io import BytesIO

    from PIL import Image

    from zfnet.report.html import MAX_EMBED_WIDTH

    (tmp_path / "figs").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 5000, 3), dtype=np.uint8)).save(
        tmp_path / "figs" / "wide.png")
    plot_curves([1, 2, 3], {"p": {"a": [1, 2, 3]}}, tmp_path / "figs" / "small.png")
    full = (tmp_path / "figs" / "wide.png").read_bytes()
    write_section(tmp_path, Section("a", "A", "c", figures=[Figure("figs/wide.png", "gallery"),
                                                            Figure("figs/small.png", "curve")]))
    page = build_report(tmp_path).read_text()
    wide, small = (Image.open(BytesIO(b)) for b in _data_uris(page, "png|jpeg"))
    assert wide.size == (MAX_EMBED_WIDTH, 264)  # 600 * 2200 / 5000
    assert _data_uris(page)[-1] == (tmp_path / "figs" / "small.png").read_bytes()  # as it is
    assert len(page) < len(full) / 3  # 3.3x fewer pixels; the full file would be ~4/3 its size
    assert (tmp_path / "figs" / "wide.png").read_bytes() == full  # the file is left full-size
    assert '<a href="figs/wide.png"><img' in page and 'href="figs/small.png"' not in page
    assert "full 5000 × 600 px file" in page


def test_a_gallery_of_photos_is_embedded_as_a_jpeg_close_to_it_and_links_to_its_png(
        tmp_path) -> None:
    """A figure of projections and image patches, photo-like, is embedded as a JPEG (4:4:4,
    quality 90) where that is smaller than its PNG — a ResNet-18 top-9 gallery's page was
    13.6 MB, 10 MB of it PNGs ~4x larger than such JPEGs —, within a few levels of its pixels,
    linked to the exact PNG; a plot, a picture with transparency stay PNGs as they are."""
    from io import BytesIO

    from PIL import Image
    from skimage import data

    (tmp_path / "figs").mkdir()
    photo = np.concatenate([data.astronaut(), data.astronaut()[:, ::-1]], 1)  # (512, 1024, 3)
    Image.fromarray(photo).save(tmp_path / "figs" / "gallery.png")
    see_through = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    Image.fromarray(see_through).save(tmp_path / "figs" / "glass.png")
    plot_curves([1, 2, 3], {"p": {"a": [1, 2, 3]}}, tmp_path / "figs" / "curve.png")
    write_section(tmp_path, Section("a", "A", "c", figures=[
        Figure("figs/gallery.png", "top 9"), Figure("figs/curve.png", "loss"),
        Figure("figs/glass.png", "alpha")]))
    page = build_report(tmp_path).read_text()
    (jpeg,) = _data_uris(page, "jpeg")
    shown = np.asarray(Image.open(BytesIO(jpeg)).convert("RGB"), dtype=float)
    assert shown.shape == photo.shape and np.abs(shown - photo).mean() < 3
    assert len(jpeg) < (tmp_path / "figs" / "gallery.png").stat().st_size / 2
    assert _data_uris(page) == [(tmp_path / "figs" / f).read_bytes()
                                for f in ("curve.png", "glass.png")]
    assert '<a href="figs/gallery.png"><img' in page and "shown compressed: click it for the " \
        "exact PNG, <code>figs/gallery.png</code>" in page
    assert 'href="figs/curve.png"' not in page and 'href="figs/glass.png"' not in page


def test_the_configuration_is_in_the_table_of_contents(tmp_path) -> None:
    write_section(tmp_path, Section("a", "A", "c"))
    (tmp_path / "config.json").write_text('{"epochs": 3}')
    page = build_report(tmp_path).read_text()
    toc = page[page.index("<nav>"):page.index("</nav>")]
    assert re.findall(r'href="#(\w+)"', toc) == ["a", "config"]
    assert 'id="config"' in page


def _contrast(hex_colour: str, background: str = "#ffffff") -> float:
    """WCAG 2 contrast ratio of two #rgb / #rrggbb colours."""
    def luminance(h: str) -> float:
        h = h.lstrip("#")
        h = "".join(c * 2 for c in h) if len(h) == 3 else h
        c = [int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((luminance(hex_colour), luminance(background)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_colours_meet_wcag_aa_on_white(tmp_path) -> None:
    from importlib.resources import files

    write_section(tmp_path, Section("a", "A", "c"))
    page = build_report(tmp_path).read_text()
    atlas = (files("zfnet.explorer") / "templates" / "atlas_base.html.j2").read_text()
    for css in (page[:page.index("</style>")], atlas[:atlas.index("</style>")]):
        colours = re.findall(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{3,6})\b", css)
        assert colours
        assert [c for c in colours if _contrast(c) < 4.5] == []
    assert _contrast("#777") < 4.5 <= _contrast("#555")


def test_the_report_and_an_atlas_in_the_run_link_each_other(tmp_path) -> None:
    import torch
    from torch.utils.data import TensorDataset

    from zfnet.explorer.atlas import write_atlas
    from zfnet.models import create_model

    write_section(tmp_path, Section("a", "A", "c"))
    assert 'href="atlas/index.html"' not in build_report(tmp_path).read_text()  # none yet
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4, 3, 32, 32) * 50, torch.zeros(4, dtype=torch.long))
    model = create_model("zfnet_small", input_size=32)
    atlas = write_atlas(model, data, tmp_path / "atlas", layers=["conv1"], k=2, maps_per_layer=1)
    assert 'href="../index.html"' in atlas.read_text()  # back to the run's report
    assert 'href="atlas/index.html"' in build_report(tmp_path).read_text()
    elsewhere = write_atlas(model, data, tmp_path / "sub" / "atlas", layers=["conv1"], k=2,
                            maps_per_layer=1)
    assert 'href="../index.html"' not in elsewhere.read_text()  # no report above it


def test_panels_of_the_same_series_share_one_legend_below_them(tmp_path, monkeypatch) -> None:
    """One legend for the figure, outside the axes, where it hides no point; panels of
    different series keep their own."""
    from zfnet.report import plots

    figs = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), real(fig, path))[1])
    series = {name: [1, 2, 3] for name in ("astronaut", "chelsea", "coffee")}
    plot_curves([0, 1, 2], {"distance": series, "p(class)": series}, tmp_path / "a.png")
    (fig,) = figs
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(series)
    plot_curves([0, 1], {"loss": {"train": [1, 2]}, "error": {"top-1": [1, 2]}},
                tmp_path / "b.png")
    assert not figs[1].legends and all(ax.get_legend() for ax in figs[1].axes)


def test_a_folder_of_runs_without_sections_says_which_and_what_finishes_a_study(
        tmp_path) -> None:
    """`zfnet report` on a `zfnet study` folder stopped before its table: the error names its
    runs and the command that finishes it, not only demo/analyze/visualize."""
    (tmp_path / "zfnet_small-baseline").mkdir()
    (tmp_path / "zfnet_small-baseline" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"it holds runs \(zfnet_small-baseline\): a `zfnet "
                                         r"study` stopped before its table is finished"):
        build_report(tmp_path)
    assert not (tmp_path / "index.html").exists()


def test_a_runs_page_shows_no_top5_error_for_5_classes_or_fewer(tmp_path) -> None:
    """The Training section of a 2-class run: val top-5 is "—" and why, as `zfnet train` says
    it, not "0.00%" read as a perfect score."""
    from click.testing import CliRunner

    from zfnet.cli import main
    from zfnet.report.training import training_section

    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--data", "synthetic?n_train=32&n_val=16&size=32&"
                                    "classes=face,house", "--model", "zfnet_small", "--out",
                                    str(run), "--epochs", "1", "--batch-size", "16", "--quiet",
                                    "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    top5 = training_section(run).metrics["val top-5 error"]
    assert top5 == "— (every one of the 2 classes is among the top 5)"


def test_an_evaluation_of_the_papers_network_shows_its_table_2(tmp_path) -> None:
    """ZFNet's and the AlexNet replication's evaluations show the paper's Table 2 beside them;
    another network's (the small models on small data) show none."""
    from zfnet.report.training import evaluation_section

    result = {"class_names": ["a", "b"], "confusion_matrix": [[3, 1], [0, 4]],
              "per_class_accuracy": {"a": 0.75, "b": 1.0}, "n": 8, "top1_error": 0.125,
              "top5_error": 0.0, "data": "synthetic"}
    zf = evaluation_section(tmp_path / "zf", {**result, "model": "zfnet"})
    assert zf.tables[1].rows[0] == ["ZFNet (Fig. 3), 1 net", "38.4%", "16.5%"]  # PAPER.md
    assert zf.tables[1].rows[1] == ["layers 3-5 at 512/1024/512 maps, 1 net", "37.5%", "16.0%"]
    alex = evaluation_section(tmp_path / "alex", {**result, "model": "alexnet_zf"})
    assert alex.tables[1].rows[0] == ["their replication of AlexNet, 1 net", "40.5%", "18.1%"]
    small = evaluation_section(tmp_path / "s", {**result, "model": "zfnet_small"})
    assert len(small.tables) == 1
    # 2 classes: both always among the top 5, as the training section and `zfnet eval` say
    assert small.metrics["top-5 error"] == "— (every one of the 2 classes is among the top 5)"


def test_an_evaluation_says_the_broken_files_it_skipped(tmp_path) -> None:
    """`zfnet eval --out` on a split with unreadable files: the section said "on 8 validation
    images" alone; now how many files it skipped too (none said where none was)."""
    from zfnet.report.training import evaluation_section

    result = {"class_names": ["a", "b"], "confusion_matrix": [[3, 1], [0, 4]],
              "per_class_accuracy": {"a": 0.75, "b": 1.0}, "n": 8, "top1_error": 0.125,
              "top5_error": 0.0, "data": "imagefolder:x", "model": "zfnet_small"}
    some = evaluation_section(tmp_path / "a", {**result, "skipped": 3})
    assert some.caption.startswith("Top-1 / top-5 error on 8 validation images (3 broken files "
                                   "of the split skipped, not scored), each scored on the ")
    one = evaluation_section(tmp_path / "b", {**result, "skipped": 1})
    assert "(1 broken file of the split skipped, not scored)" in one.caption
    none = evaluation_section(tmp_path / "c", {**result, "skipped": 0})
    assert none.caption.startswith("Top-1 / top-5 error on 8 validation images, each scored")


def test_points_measured_apart_are_not_joined(tmp_path, monkeypatch) -> None:
    """joined=False (the independent randomisation's steps): markers alone, no line implying a
    trend between them."""
    from matplotlib.axes import Axes

    styles: list[str] = []
    real = Axes.plot

    def plot(self, *args, **kwargs):
        styles.append(kwargs.get("linestyle", "-"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot)
    plot_curves([1, 2], {"s": {"a": [1, 2]}}, tmp_path / "j.png")
    plot_curves([1, 2], {"s": {"a": [1, 2]}}, tmp_path / "n.png", joined=False)
    assert styles == ["-", "none"]


def test_epoch_curves_tick_whole_epochs(tmp_path, monkeypatch) -> None:
    """Two epochs: ticks at 1 and 2, not at 1.2, 1.4, ... (no epoch 1.2 was measured)."""
    import zfnet.report.plots as plots

    ticks = []
    save = plots._save

    def keep(fig, path):  # noqa: ANN001, ANN202
        lo, hi = fig.axes[0].get_xlim()
        ticks.append([float(t) for t in fig.axes[0].get_xticks() if lo <= t <= hi])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    plot_curves([1, 2], {"loss": {"train": [2, 1]}}, tmp_path / "c.png")
    assert ticks == [[1.0, 2.0]]


def test_a_phone_scrolls_a_wide_table_not_the_page(tmp_path) -> None:
    """At 420 px a wide table scrolls in its own box and a long unbroken caption word (a study's
    list of variants) wraps: the page itself is no wider than the window (it was 529 and 755
    px, the table's last columns cut off)."""
    from pathlib import Path

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    write_section(tmp_path, Section(
        key="wide", title="Wide", order=1,
        caption="--variants " + ",".join(f"variant_number_{k}" for k in range(12)),
        tables=[Table([f"column {k} with a long name" for k in range(9)],
                      [[f"value {k}" for k in range(9)]], "nine columns")]))
    page = build_report(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium))
        tab = browser.new_page(viewport={"width": 420, "height": 800})
        tab.goto(page.as_uri())
        width = tab.evaluate("document.documentElement.scrollWidth")
        box = tab.evaluate("document.querySelector('.table-wrap').scrollWidth")
        browser.close()
    assert width <= 420 and box > 420, (width, box)
