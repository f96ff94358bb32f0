"""`zfnet atlas`: a static site whose every link and image resolves on disk, whose unit pages
show what the gallery's mining, projections and patches give (and evolution's, for a run with
kept epochs), that bad inputs leave unwritten, and that a real browser opens from file://."""

from __future__ import annotations

import html
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import Subset, TensorDataset

from zfnet.analyses.evolution import feature_evolution, render_unit_evolution
from zfnet.analyses.gallery import render_layer, run_topk_gallery
from zfnet.analyses.topk import mine_topk
from zfnet.cli import main
from zfnet.explorer.atlas import ATLAS_FILE, write_atlas
from zfnet.models import create_model
from zfnet.sources import load_data, load_source
from zfnet.train import CheckpointModels, list_checkpoints, run_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ["conv1", "conv3"]
K, IMAGES, MAPS = 4, 16, 3
CHROMIUM = Path("/usr/bin/chromium")


def _atlas(args: list[str]) -> str:
    res = CliRunner().invoke(main, ["atlas", *args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def site(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("atlas") / "site"
    text = _atlas(["--checkpoint", str(tiny_run), "--out", str(out), "--layer", ",".join(LAYERS),
                   "--k", str(K), "--images", str(IMAGES), "--maps-per-layer", str(MAPS),
                   "--workers", "1"])  # mined through a loader worker: the same as in-process
    assert text.strip().splitlines()[-1] == f"atlas: {(out / 'index.html').resolve()}"
    return out


class _Refs(HTMLParser):
    """Every href and <img src> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("href"):
            self.links.append(a["href"])  # type: ignore[arg-type]
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag in ("script", "link") or (tag == "img" and "//" in (a.get("src") or "")):
            raise AssertionError(f"external or scripted asset: <{tag} {attrs}>")


def _check_site(root: Path) -> dict[Path, _Refs]:
    """Every page's links and images resolve to files inside `root`; images are PNGs (or
    JPEGs, in a site of figures="jpeg")."""
    kinds = {"png": {"PNG"}, "jpeg": {"PNG", "JPEG"}}[
        json.loads((root / ATLAS_FILE).read_text())["figures"]]
    pages = {}
    for page in sorted(root.rglob("*.html")):
        refs = _Refs()
        refs.feed(page.read_text())
        for ref in refs.links + refs.images:
            url = urlparse(ref)
            assert not url.scheme and not url.netloc, f"{page}: {ref} is not relative"
            target = (page.parent / unquote(url.path)).resolve()
            assert target.is_file(), f"{page}: {ref} -> {target} does not exist"
            assert target.is_relative_to(root.resolve()), f"{page}: {ref} leaves the site"
        for src in refs.images:
            with Image.open(page.parent / unquote(src)) as im:
                assert im.format in kinds, (page, src)
                im.verify()
        pages[page] = refs
    return pages


def test_every_link_and_image_resolves(site) -> None:
    pages = _check_site(site)
    doc = json.loads((site / ATLAS_FILE).read_text())
    assert [layer["name"] for layer in doc["layers"]] == LAYERS
    assert doc["k"] == K and doc["images"] == IMAGES and doc["evolution"]["epochs"] == [1, 2]
    index = pages[site / "index.html"]
    assert {f"{name}/index.html" for name in LAYERS} <= set(index.links)
    text = (site / "index.html").read_text()  # its caption speaks of the pages it links to
    assert "Each map has a page of its own" in text and "Each block" not in text
    for layer in doc["layers"]:
        assert len(layer["units"]) == MAPS
        shown = [u["map"] for u in layer["units"]]
        assert shown == sorted(shown)
        tiles = pages[site / layer["folder"] / "index.html"]
        assert [f"{c}.html" for c in shown] == [h for h in tiles.links if h[0].isdigit()]
        for i, c in enumerate(shown):  # prev / next / up / across layers
            links = pages[site / layer["folder"] / f"{c}.html"].links
            assert "index.html" in links and "../index.html" in links
            assert {f"../{name}/index.html" for name in LAYERS if name != layer["name"]} \
                <= set(links)
            beside = [shown[j] for j in (i - 1, i + 1) if 0 <= j < len(shown)]
            assert [h for h in links if h[0].isdigit()] == [f"{c}.html" for c in beside]


def test_unit_pages_show_the_gallerys_topk_and_projections(site, tiny_run, tmp_path) -> None:
    source = load_source(str(tiny_run))
    bundle = load_data(source, None)
    images = Subset(bundle.val.with_mode("centre"), range(IMAGES))
    mined = mine_topk(source.model, images, LAYERS, K)
    doc = json.loads((site / ATLAS_FILE).read_text())
    for layer in doc["layers"]:
        t, shown = mined[layer["name"]], [u["map"] for u in layer["units"]]
        assert shown == sorted(torch.argsort(t.values[:, 0], descending=True)[:MAPS].tolist())
        gallery = run_topk_gallery(source.model, images, [layer["name"]], K, tmp_path / "g",
                                   maps={layer["name"]: shown}, display_image=bundle.raw_val)
        for a, unit in enumerate(layer["units"]):
            c = unit["map"]
            assert [u["image"] for u in unit["topk"]] == t.index[c].tolist()
            assert [u["activation"] for u in unit["topk"]] == t.values[c].tolist()
            assert [(u["row"], u["col"]) for u in unit["topk"]] == list(
                zip(t.row[c].tolist(), t.col[c].tolist(), strict=True))
            html = (site / unit["page"]).read_text()
            for u in unit["topk"]:
                value = f"{u['activation']:#.4g}".removesuffix(".")
                assert f"<td>{u['rank']}</td><td>{u['image']}</td><td>{value}</td>" in html
            # the picture is the gallery's block for this map, pixel for pixel
            want = render_layer(gallery.projections[layer["name"]][a: a + 1],
                                gallery.patches[layer["name"]][a: a + 1], tmp_path / "want.png")
            got = np.asarray(Image.open(site / unit["figure"]))
            assert np.array_equal(got, np.asarray(Image.open(want))), unit["figure"]
            assert got.std() > 0


def test_evolution_rows_are_evolutions_projections(site, tiny_run) -> None:
    source = load_source(str(tiny_run))
    images = Subset(load_data(source, None).val.with_mode("centre"), range(IMAGES))
    doc = json.loads((site / ATLAS_FILE).read_text())
    maps = {layer["name"]: [u["map"] for u in layer["units"]] for layer in doc["layers"]}
    kept = run_checkpoints(source.meta["checkpoint"])
    assert kept == list_checkpoints(tiny_run)
    res = feature_evolution(CheckpointModels(kept), images, n_images=None, maps=maps)
    for layer in doc["layers"]:
        for a, unit in enumerate(layer["units"]):
            evo = unit["evolution"]
            assert evo["epochs"] == [1, 2]
            assert evo["similarity"] == pytest.approx(
                res.unit_similarity[layer["name"]][a].tolist(), abs=1e-4)
            got = np.asarray(Image.open(site / evo["figure"]))
            want = render_unit_evolution(res.projections[layer["name"]][a],
                                         site.parent / "want.png", epochs=[1, 2])
            assert np.array_equal(got, np.asarray(Image.open(want)))
            assert "Evolution during training (Fig. 4)" in (site / unit["page"]).read_text()


def test_no_evolution_for_other_models_or_when_asked(tiny_run, tmp_path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    out = tmp_path / "r18"
    text = _atlas(["--model", "torchvision:resnet18", "--weights", str(weights), "--resize",
                   "40", "--crop", "32", "--data", "synthetic?n_train=8&n_val=8&size=32",
                   "--layer", "layer1", "--k", "2", "--maps-per-layer", "2", "--out", str(out)])
    _check_site(out)
    # the bar's total known from the start: 8 images mined, 2 units drawn (a stage's maps,
    # which layer_info does not count, were taken as none: 0/8 ... 10/10)
    assert "atlas:   0%|          | 0/10 [" in text and "| 10/10 [" in text, text
    doc = json.loads((out / ATLAS_FILE).read_text())
    assert doc["evolution"] is None and doc["layers"][0]["kind"] == "stage"  # as the explorer says
    assert not list(out.rglob("*_evolution.*"))
    assert all("Evolution" not in p.read_text() for p in out.rglob("*.html"))
    out = tmp_path / "run"
    _atlas(["--checkpoint", str(tiny_run), "--out", str(out), "--layer", "conv1", "--k", "2",
            "--images", "4", "--maps-per-layer", "2", "--no-evolution"])
    assert json.loads((out / ATLAS_FILE).read_text())["evolution"] is None
    assert not list(out.rglob("*_evolution.*"))


def test_precision_is_recorded_and_said_where_the_graph_projects(tiny_run, tmp_path) -> None:
    """--precision bfloat16: a ResNet's (graph) projections in bf16, atlas.json and every page's
    caption say so; float32 says nothing. A zfnet run (a chain) is projected in float32."""
    from zfnet.analyses.gallery import BF16_NOTE

    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    for precision in ("bfloat16", "float32"):
        out = tmp_path / precision
        _atlas(["--model", "torchvision:resnet18", "--weights", str(weights), "--resize", "40",
                "--crop", "32", "--data", "synthetic?n_train=8&n_val=8&size=32", "--layer",
                "layer1", "--k", "2", "--maps-per-layer", "2", "--precision", precision,
                "--out", str(out)])
        assert json.loads((out / ATLAS_FILE).read_text())["precision"] == precision
        units = [p for p in (out / "layer1").glob("*.html") if p.name != "index.html"]
        assert len(units) == 2  # with the site's index, the pages with the Fig. 2 caption
        said = [_says(p, BF16_NOTE) for p in [out / "index.html", *units]]
        assert all(said) if precision == "bfloat16" else not any(said)
    out = tmp_path / "chain"
    _atlas(["--checkpoint", str(tiny_run), "--out", str(out), "--layer", "conv1", "--k", "2",
            "--images", "4", "--maps-per-layer", "2", "--precision", "bfloat16"])
    assert not any(_says(p, BF16_NOTE) for p in out.rglob("*.html"))


def _says(page: Path, text: str) -> bool:
    """Whether the page's text (entities undone, spaces folded) holds `text`."""
    return " ".join(text.split()) in " ".join(html.unescape(page.read_text()).split())


@pytest.mark.parametrize(("args", "message"), [
    (["--layer", "conv9"], "conv9"),
    (["--data", "images:/nonexistent"], "/nonexistent does not exist"),
    (["--data", "nope"], "nope"),
], ids=["unknown-layer", "missing-data", "unknown-dataset"])
def test_bad_input_is_one_line_and_writes_nothing(tiny_run, tmp_path, args, message) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["atlas", "--checkpoint", str(tiny_run), "--out", str(out),
                                    "--images", "4", *args])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last and "Traceback" not in res.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_atlas_in_the_run_and_the_runs_report_link_each_other(tiny_run, tmp_path) -> None:
    """`zfnet train` wrote the run's page; `zfnet atlas --out RUN/atlas` links back to it and
    rebuilds it with a link to the atlas."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert 'href="atlas/index.html"' not in (run / "index.html").read_text()
    res = CliRunner().invoke(main, ["atlas", "--checkpoint", str(run), "--out",
                                    str(run / "atlas"), "--layer", "conv1", "--images", "4",
                                    "--maps-per-layer", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert 'href="../index.html"' in (run / "atlas" / "index.html").read_text()
    assert 'href="atlas/index.html"' in (run / "index.html").read_text()
    assert f"report: {(run / 'index.html').resolve()}" in res.output


def test_a_rule_undefined_through_the_network_is_said_before_mining(tmp_path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [
        "atlas", "--model", "torchvision:mobilenet_v3_small", "--weights", str(weights),
        "--resize", "40", "--crop", "32", "--data", "synthetic?n_train=8&n_val=8&size=32",
        "--out", str(out), "--k", "2"])
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines()[-1].startswith("Error: the deconvnet rule is "
                                                          "defined for rectifiers")
    assert not out.exists()
    # --nonlinear gradient: the pages say what each layer's projections are (features.0,
    # conv and Hardswish, has no rectifier: the gradient; features.1 has its block's ReLU)
    res = CliRunner().invoke(main, [
        "atlas", "--model", "torchvision:mobilenet_v3_small", "--weights", str(weights),
        "--resize", "40", "--crop", "32", "--data", "synthetic?n_train=8&n_val=8&size=32",
        "--out", str(out), "--k", "2", "--maps-per-layer", "1", "--nonlinear", "gradient",
        "--layer", "features.0,features.1"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / ATLAS_FILE).read_text())
    mixed = "deconvnet + gradient at non-rectifiers"
    assert [layer["projection"] for layer in doc["layers"]] == ["gradient", mixed]
    index = html.unescape((out / "index.html").read_text())
    assert f"<dt>projection</dt><dd>{mixed}</dd>" in index
    assert "below features.0, with no rectifier on the way down" in index
    unit = html.unescape((out / doc["layers"][0]["units"][0]["page"]).read_text())
    assert "projected by the gradient." in " ".join(unit.split())
    assert "not a deconvnet projection" in unit


def test_replaces_an_atlas_never_anything_else_and_a_stop_leaves_nothing(tiny_run,
                                                                        tmp_path) -> None:
    source = load_source(str(tiny_run))
    bundle = load_data(source, None)
    out = tmp_path / "site"
    totals: list[int] = []  # the bar's total is the work's from the start (it grew at the end)
    write_atlas(source.model, bundle, out, layers=["conv1"], k=2, maps_per_layer=2, n_images=4,
                progress=lambda done, total: totals.append(total))
    assert set(totals) == {4 + 2}  # the images mined, the units drawn
    first = sorted(p.name for p in (out / "conv1").iterdir())
    write_atlas(source.model, bundle, out, layers=["conv3"], k=2, maps_per_layer=1, n_images=4)
    assert not (out / "conv1").exists() and len(list((out / "conv3").glob("*.html"))) == 2
    assert len(first) == 2 * 2 + 2  # per unit its page and picture; index.html, thumbs.png

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        if done > 0:
            raise Stop

    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(Stop):  # a cancelled job: the earlier atlas stays as it was
        write_atlas(source.model, bundle, out, layers=["conv1"], k=2, n_images=4,
                    progress=stop)
    with pytest.raises(Stop):  # stopped while drawing: no half-written site either
        write_atlas(source.model, bundle, tmp_path / "new", layers=["conv1"], k=2,
                    n_images=4, progress=lambda d, t: (_ for _ in ()).throw(Stop())
                    if d > 4 else None)
    (tmp_path / ".new.topk-mining.pt").unlink()  # its finished mining kept: continued
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    other = tmp_path / "other"
    (other / "keep").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="holds no atlas"):
        write_atlas(source.model, bundle, other, layers=["conv1"], n_images=4)
    assert [p.name for p in other.iterdir()] == ["keep"]
    shutil.rmtree(other)


def test_a_ctrl_c_while_the_site_is_swapped_in_waits_for_the_swap(tmp_path, monkeypatch
                                                                    ) -> None:
    """A Ctrl-C as the new site's entries are moved into an earlier atlas's OUT stops the
    command once the swap is done: OUT is the whole new site, nothing is left beside it. It
    left half of each site before (the new entries not yet moved were removed), and OUT, with
    no atlas.json, was then refused as "not empty and holds no atlas"."""
    import os
    import signal

    model = create_model("zfnet_small", input_size=32)
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    out = tmp_path / "site"
    write_atlas(model, data, out, layers=["conv1"], k=2, maps_per_layer=1)
    real = os.replace

    def replace(src, dst) -> None:  # noqa: ANN001
        if Path(dst).parent == out and Path(src).parent.name.startswith(".site.tmp-"):
            signal.raise_signal(signal.SIGINT)  # as the first new entry goes in
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_atlas(model, data, out, layers=["conv2"], k=2, maps_per_layer=1)
    monkeypatch.undo()
    assert [layer["name"] for layer in json.loads((out / ATLAS_FILE).read_text())["layers"]
            ] == ["conv2"]
    assert not (out / "conv1").exists()
    _check_site(out)
    assert [p.name for p in tmp_path.iterdir()] == ["site"]


def test_a_dataset_of_model_inputs(tmp_path) -> None:
    """Not a bundle: any Dataset of inputs, the patches its inputs min-max scaled."""
    torch.manual_seed(0)
    model = create_model("zfnet_small", input_size=32)
    data = TensorDataset(torch.randn(6, 3, 32, 32) * 50, torch.zeros(6, dtype=torch.long))
    index = write_atlas(model, data, tmp_path / "site", layers=["features.conv2"], k=3,
                        maps_per_layer=2)
    _check_site(tmp_path / "site")
    doc = json.loads((tmp_path / "site" / ATLAS_FILE).read_text())
    assert doc["data"] == "TensorDataset" and doc["images"] == 6 and index.is_file()
    assert doc["layers"][0]["name"] == "conv2"  # one way to name a layer
    mined = mine_topk(model, data, ["conv2"], 3)["conv2"]
    for unit in doc["layers"][0]["units"]:
        assert [u["image"] for u in unit["topk"]] == mined.index[unit["map"]].tolist()


def test_out_as_the_working_directory_or_relative(tmp_path, monkeypatch) -> None:
    """`cd site && zfnet atlas ... --out .` (or `--out ../site2/`): the site is written there;
    it ended, after the whole mining, in "Error: PosixPath('.') has an empty name"."""
    model = create_model("zfnet_small", input_size=32)
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    (tmp_path / "site").mkdir()
    monkeypatch.chdir(tmp_path / "site")
    for out in (".", "../site2/"):
        index = write_atlas(model, data, out, layers=["conv1"], k=2, maps_per_layer=1)
        assert index.is_file() and index.parent.name == Path(out).resolve().name
        _check_site(Path(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "site2"]


def test_a_browser_opens_a_unit_page_from_disk(site) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no Debian chromium at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    doc = json.loads((site / ATLAS_FILE).read_text())
    layer = doc["layers"][1]
    first, second = (u["map"] for u in layer["units"][:2])
    all_loaded = ("() => { const im = Array.from(document.images); return im.length > 0 && "
                  "im.every(i => i.complete && i.naturalWidth > 0); }")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page()
            page.goto((site / layer["folder"] / f"{first}.html").as_uri())
            page.wait_for_load_state("load")
            assert page.evaluate(all_loaded)
            assert page.locator("img").count() == 2  # top-k and evolution
            page.click("a[rel=next]")
            page.wait_for_load_state("load")
            assert page.url.endswith(f"/{layer['folder']}/{second}.html")
            assert page.evaluate(all_loaded)
            page.click("a[rel=up]")
            page.wait_for_load_state("load")
            assert page.url.endswith(f"/{layer['folder']}/index.html")
            assert page.evaluate(all_loaded) and page.locator("a.tile img").count() == MAPS
            page.click(f"nav.layers a:text-is('{LAYERS[0]}')")
            page.wait_for_load_state("load")
            assert page.url.endswith(f"/{LAYERS[0]}/index.html") and page.evaluate(all_loaded)
        finally:
            browser.close()


def test_every_page_fits_a_phone(site) -> None:
    """At 360 px no page of the atlas scrolls sideways (21 of 26 did, by 50-190 px: the title,
    the dataset's path, the layers table, the top-9 figure)."""
    if not CHROMIUM.exists():
        pytest.skip("no Debian chromium at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    pages = sorted(site.rglob("*.html"))
    wide = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            tab = browser.new_page(viewport={"width": 360, "height": 740})
            for page in pages:
                tab.goto(page.as_uri())
                tab.wait_for_load_state("load")
                width = tab.evaluate("document.documentElement.scrollWidth")
                if width > 360:
                    wide.append((page.relative_to(site).as_posix(), width))
        finally:
            browser.close()
    assert len(pages) > 3 and not wide, wide


def test_a_folder_of_photos_names_its_images(tmp_path) -> None:
    from skimage import data as photos

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(photos, name)()).save(folder / f"{name}.jpg")
    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    (tmp_path / "labels.txt").write_text("tabby cat\nespresso\nastronaut\n")
    out = tmp_path / "site"
    _atlas(["--model", "torchvision:resnet18", "--weights", str(weights), "--resize", "40",
            "--crop", "32", "--data", f"images:{folder}", "--layer", "layer1,fc", "--k", "2",
            "--maps-per-layer", "1", "--labels", str(tmp_path / "labels.txt"),
            "--out", str(out)])
    maps, scores = json.loads((out / ATLAS_FILE).read_text())["layers"]
    (unit,) = maps["units"]
    files = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]  # the folder's sorted order
    assert [u["name"] for u in unit["topk"]] == [files[u["image"]] for u in unit["topk"]]
    html = (out / unit["page"]).read_text()
    assert all(f"<td>{u['name']} (#{u['image']})</td>" in html for u in unit["topk"])
    assert "<h1>layer1 · map " in html and "name" not in unit
    # the class scores: units (not maps) named by the classes the labels give
    (score,) = scores["units"]
    name = ["tabby cat", "espresso", "astronaut"][score["map"]]
    assert score["name"] == name
    html = (out / score["page"]).read_text()
    assert f"<h1>fc · unit {score['map']} ({name})</h1>" in html
    assert "position (row, col)" not in html  # a unit of a flat layer has none
    page = (out / scores["folder"] / "index.html").read_text()
    assert "3 units, each of which sees the whole image" in page and "1 units shown" not in page
    assert f"<span>{score['map']} {name}</span>" in page
    _check_site(out)


def test_activations_have_four_significant_digits_with_their_zeros() -> None:
    from zfnet.explorer.atlas import _ENV

    num = _ENV.filters["num"]
    assert [num(v) for v in (3.935, 3.44, 1234.0, 0.00123, None)] == [
        "3.935", "3.440", "1234", "0.001230", "–"]


def test_a_stopped_mining_is_kept_beside_the_site_and_continued(tmp_path, monkeypatch) -> None:
    """`zfnet atlas` stopped by Ctrl-C while mining keeps the mining beside OUT (the site
    itself is not there yet) and says so; the same command continues it, and the site is
    that of a command never stopped."""
    from tests.analyses.test_topk import ctrl_c_at_update

    def command(out: str) -> list[str]:
        return ["--model", "zfnet_small", "--data", "synthetic?n_train=8&n_val=24&size=32",
                "--images", "24", "--batch-size", "4", "--k", "3", "--maps-per-layer", "2",
                "--layer", "conv1,conv3", "--out", str(tmp_path / out)]

    _atlas(command("whole"))
    ctrl_c_at_update(monkeypatch, 8)  # 2 layers a batch: the 4th batch's 2nd layer
    res = CliRunner().invoke(main, ["atlas", *command("stopped"), "--device", "cpu"])
    kept = tmp_path / ".stopped.topk-mining.pt"
    assert res.exit_code == 130, res.output
    said = [line for line in res.output.splitlines()
            if line.strip() and not line.startswith("atlas:")]
    assert "atlas:  43%|" in res.output and "| 12/28 " in res.output  # where it stopped, in a
    # log: 12 of the 24 images mined, of 28 steps with the 4 units drawn
    assert said[-2:] == [
        f"note: kept the top-k mining in {kept} (12 of 24 images mined): the same command "
        "continues it", "interrupted (SIGINT)"]
    assert not (tmp_path / "stopped").exists()
    monkeypatch.undo()
    text = _atlas(command("stopped"))
    assert f"note: continuing the top-k mining kept in {kept}: 12 of 24 images are mined" in text
    assert not kept.exists()
    whole, resumed = (json.loads((tmp_path / d / ATLAS_FILE).read_text())
                      for d in ("whole", "stopped"))
    assert resumed == whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_stop_while_drawing_keeps_the_finished_mining(tiny_run, tmp_path, monkeypatch
                                                       ) -> None:
    """Ctrl-C after the mining (the pictures of every map take a while): the mining stays
    kept beside OUT and the same call draws from it, to the site of a call never stopped; it
    was removed when the mining ended, and all of it was mined again."""
    import zfnet.explorer.atlas as atlas

    source = load_source(str(tiny_run))
    bundle = load_data(source, None)

    def write(out: str) -> dict:
        write_atlas(source.model, bundle, tmp_path / out, layers=["conv1"], k=2,
                    maps_per_layer=2, n_images=8, batch_size=4)
        return json.loads((tmp_path / out / ATLAS_FILE).read_text())

    whole = write("whole")
    drawing = atlas._write_layers

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(atlas, "_write_layers", stopped)
    with pytest.raises(KeyboardInterrupt):
        write("site")
    kept = tmp_path / ".site.topk-mining.pt"
    assert kept.is_file() and not (tmp_path / "site").exists()
    monkeypatch.setattr(atlas, "_write_layers", drawing)
    mined = []
    monkeypatch.setattr(atlas, "mine_topk", lambda *a, **kw: mined.append(
        torch.load(kw["journal"], weights_only=True)["position"]) or mine_topk(*a, **kw))
    with pytest.warns(UserWarning, match="8 of 8 images are mined"):
        assert write("site") == whole
    assert mined == [8] and not kept.exists()


def test_jpeg_figures_where_smaller_and_close_to_the_pngs(tiny_run, tmp_path) -> None:
    """figures="jpeg": each picture (unit, evolution, sprite) a JPEG where that is smaller than
    its PNG, else the PNG itself; a JPEG within a few levels of the PNG's pixels (full-
    resolution colour); pages and atlas.json name the files written. Another value is refused
    before anything is written."""
    source = load_source(str(tiny_run))
    bundle = load_data(source, None)
    kw = dict(layers=["conv1", "conv3"], k=4, maps_per_layer=2, n_images=8,
              evolution=CheckpointModels(run_checkpoints(source.meta["checkpoint"])))
    reports: list[tuple[int, int]] = []
    write_atlas(source.model, bundle, tmp_path / "png", progress=lambda *r: reports.append(r),
                **kw)
    # the bar's total from the start: 8 images and 4 units, mined and drawn, then at each of
    # the 2 kept epochs mined and projected again
    assert {t for _, t in reports} == {(8 + 4) * 3} and reports[-1] == (36, 36), reports
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)
    write_atlas(source.model, bundle, tmp_path / "jpeg", figures="jpeg", **kw)
    pngs = sorted(p.relative_to(tmp_path / "png") for p in (tmp_path / "png").rglob("*.png"))
    assert len(pngs) == 2 * (2 * 2 + 1)  # per layer: per unit its picture and evolution; sprite
    kinds = set()
    for rel in pngs:
        png, jpg = tmp_path / "png" / rel, (tmp_path / "jpeg" / rel).with_suffix(".jpg")
        assert jpg.exists() != (tmp_path / "jpeg" / rel).exists(), rel  # one or the other
        if not jpg.exists():
            assert (tmp_path / "jpeg" / rel).read_bytes() == png.read_bytes()
            kinds.add("png")
            continue
        kinds.add("jpeg")
        assert Image.open(jpg).format == "JPEG" and jpg.stat().st_size < png.stat().st_size
        a, b = (np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) for f in (png, jpg))
        d = np.abs(a - b)
        assert d.mean() < 6 and np.percentile(d, 99) < 40, (rel, d.mean())  # levels of 255
    assert kinds == {"png", "jpeg"}  # tiny flat pictures stay PNGs
    doc = json.loads((tmp_path / "jpeg" / ATLAS_FILE).read_text())
    assert doc["figures"] == "jpeg"
    for layer in doc["layers"]:
        for unit in layer["units"]:
            assert (tmp_path / "jpeg" / unit["figure"]).is_file()
            assert (tmp_path / "jpeg" / unit["evolution"]["figure"]).is_file()
            page = (tmp_path / "jpeg" / unit["page"]).read_text()
            assert f'src="{unit["figure"].split("/")[-1]}"' in page
    _check_site(tmp_path / "jpeg")
    with pytest.raises(ValueError, match="figures='webp': give one of png, jpeg"):
        write_atlas(source.model, bundle, tmp_path / "webp", figures="webp", **kw)
    assert not (tmp_path / "webp").exists()


class _Broken(torch.utils.data.Dataset):
    """4 images, of which items 1 and 2 are unreadable files (None, as datasets give them)."""

    def __init__(self) -> None:
        self.data = TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return None if i in (1, 2) else self.data[i]


def test_k_is_cut_to_the_images_read(tmp_path) -> None:
    """--k 3 of 4 files of which 2 unreadable: each map has 2 activations to show, not 3 cells
    of which one blank."""
    torch.manual_seed(0)
    model = create_model("zfnet_small", input_size=32)
    out = tmp_path / "site"
    write_atlas(model, _Broken(), out, layers=["conv1"], k=3, maps_per_layer=1)
    doc = json.loads((out / ATLAS_FILE).read_text())
    assert (doc["k"], doc["images"], doc["files"]) == (2, 2, 4)
    assert [len(u["topk"]) for u in doc["layers"][0]["units"]] == [2]
    page = (out / "index.html").read_text()
    assert "the 2 strongest activations" in page and "cells stay blank" not in page
