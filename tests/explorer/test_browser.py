"""The explorer's page in a real browser: Playwright driving Debian's chromium against the real
server (uvicorn on a background thread) on the tiny trained run. A person's path through it:
pick a layer, hover and click a map, see the unit's projections load; upload a photo (file
button and drag and drop) and a non-image; the top-9, evolution and occlusion jobs with their
progress and Cancel; every view's link reopens it; no JavaScript error on the way."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse

import httpx
import pytest
from PIL import Image

from zfnet.explorer.app import Server, create_app
from zfnet.explorer.session import Explorer
from zfnet.sources import load_data, load_source
from zfnet.train import list_checkpoints

CHROMIUM = Path("/usr/bin/chromium")
MAX_UPLOAD = 2 * 2**20
LOADED = "(sel) => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)"

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed "
                       "(make test installs it)"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """(the app, its URL): the explorer on the tiny run, its images and its two kept epochs."""
    source = load_source(str(tiny_run))
    explorer = Explorer(source, load_data(source, None),
                        cache_dir=tmp_path_factory.mktemp("explorer-cache"),
                        evolution=list_checkpoints(tiny_run))
    app = create_app(explorer, max_upload=MAX_UPLOAD)
    with Server(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=str(CHROMIUM))
    yield b
    b.close()
    pw.stop()


class Console:
    """A page's JavaScript errors and failed requests, less those a test expects (the server's
    400/413 answer to a bad upload is logged by the browser as a failed resource)."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.allowed: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("console", self._message)

    def _message(self, m) -> None:
        if m.type != "error":
            return
        where = m.location.get("url", "")
        if not any(where.endswith(a) for a in self.allowed):
            self.errors.append(f"{m.text} ({where})")


@pytest.fixture
def page(browser, server):
    _, url = server
    context = browser.new_context(base_url=url, viewport={"width": 1300, "height": 900})
    p = context.new_page()
    p.set_default_timeout(30_000)
    p.console = Console(p)
    yield p
    context.close()


def _open(page, path: str = "/") -> None:
    page.goto(path)
    page.wait_for_selector("body[data-ready]")


def _query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def _at(page, maps: dict, m: int, row: int, col: int) -> tuple[float, float]:
    """The point of the window over position (row, col) of map m in the sprite (the API's
    geometry), scrolled into view."""
    (th, tw), (h, w), gap, cols = maps["tile"], maps["size"], maps["gap"], maps["cols"]
    x = (m % cols) * (tw + gap) + (col + 0.5) * tw / w
    y = (m // cols) * (th + gap) + (row + 0.5) * th / h
    natural = page.eval_on_selector("#sprite", "i => i.naturalWidth")
    for _ in range(2):
        box = page.locator("#sprite").bounding_box()
        scale = box["width"] / natural
        px, py = box["x"] + x * scale, box["y"] + y * scale
        if 0 <= py < page.viewport_size["height"]:
            break
        page.evaluate("dy => window.scrollBy(0, dy)", py - page.viewport_size["height"] / 2)
    return px, py


def _unit_shown(page) -> dict[str, str]:
    section = page.locator("#unit-section")
    return {k: section.get_attribute(f"data-{k}") for k in ("layer", "unit", "row", "col")}


def _photo(fmt: str) -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, fmt)
    return buf.getvalue()



@contextmanager
def _queue_held(app, name: str | None) -> Iterator[None]:
    """A job holding the explorer's worker for the block (released at its end, also after a
    failure): the page's jobs wait their turn behind it."""
    gate = threading.Event()
    holder = app.state.jobs.submit("test", ("hold",) + ((name,) if name else ()),
                                   "a job holding the queue", lambda progress: gate.wait(30))
    try:
        yield
    finally:
        gate.set()
    holder.future.result(timeout=30)

def test_pick_a_layer_and_a_map_see_the_unit_and_reopen_it_by_its_link(page, server) -> None:
    app, url = server
    _open(page)
    explorer = app.state.explorer
    assert page.text_content("#model-name") == httpx.get(f"{url}/api/model").json()["name"]
    rows = page.eval_on_selector_all("#layers tbody tr", "rs => rs.map(r => r.dataset.layer)")
    assert rows == [r.name for r in explorer.layers]
    # the default view: the default layer's maps for the first image
    page.wait_for_selector('#maps[data-layer="conv5"][data-image="val:0"]')

    page.click('tr[data-layer="conv2"]')
    page.wait_for_selector('#maps[data-layer="conv2"]')
    assert _query(page)["layer"] == "conv2" and "unit" not in _query(page)
    maps = httpx.get(f"{url}/api/maps", params={"image": "val:0", "layer": "conv2"}).json()
    m = max(range(maps["maps"]), key=lambda k: maps["max"][k])  # a map that is not all zero
    page.mouse.move(*_at(page, maps, m, 0, 0))
    info = page.text_content("#map-info")
    assert info.startswith(f"map {m} · max ") and "pointer at (0, 0)" in info

    # a first click picks the map's strongest unit
    page.mouse.click(*_at(page, maps, m, 0, 0))
    page.wait_for_selector(f'#unit-section[data-unit="{m}"]')
    strongest = maps["argmax"][m]
    assert _unit_shown(page) == {"layer": "conv2", "unit": str(m), "row": str(strongest[0]),
                                 "col": str(strongest[1])}
    page.wait_for_function(LOADED, arg="#unit-figures img")
    rules = page.eval_on_selector_all("#unit-figures img.projection",
                                      "is => is.map(i => i.dataset.rule)")
    assert rules == ["deconvnet", "guided", "gradient"]
    shown = re.match(r"activation (\S+) at", page.text_content("#unit-meta")).group(1)
    assert float(shown) == pytest.approx(maps["max"][m], abs=1e-3)
    assert not page.locator("#unit-box").is_hidden()
    box = httpx.get(f"{url}/api/unit", params={"image": "val:0", "layer": "conv2",
                                               "unit": m}).json()["box"]  # half-open
    assert (f"receptive field rows {box[0]}–{box[2] - 1}, columns {box[1]}–{box[3] - 1} "
            "(inclusive)") in page.text_content("#unit-meta")

    # a click inside the picked map picks that position
    row, col = (strongest[0] + 1) % maps["size"][0], strongest[1]
    page.mouse.click(*_at(page, maps, m, row, col))
    page.wait_for_selector(f'#unit-section[data-row="{row}"][data-col="{col}"]')
    page.wait_for_function(LOADED, arg="#unit-figures img")
    q = _query(page)
    assert (q["layer"], q["unit"], q["row"], q["col"]) == ("conv2", str(m), str(row), str(col))
    assert q["model"] == explorer.id

    # the link reopens the same view in a new page
    link = page.get_attribute("#permalink", "href")
    assert link == urlparse(page.url)._replace(scheme="", netloc="").geturl()
    other = page.context.new_page()
    other.console = Console(other)
    _open(other, link)
    other.wait_for_selector(f'#unit-section[data-unit="{m}"]')
    assert _unit_shown(other) == _unit_shown(page)
    other.wait_for_function(LOADED, arg="#unit-figures img")
    assert other.get_attribute('tr[data-layer="conv2"] button', "aria-pressed") == "true"
    assert other.get_attribute('#strip button[data-image="val:0"]', "aria-pressed") == "true"
    assert other.console.errors == []

    # the browser's back button goes back through the views
    page.go_back()
    page.wait_for_selector(f'#unit-section[data-row="{strongest[0]}"]')
    assert "row" not in _query(page)
    page.go_back()
    page.wait_for_selector("#unit-section", state="hidden")
    assert page.console.errors == []


def test_a_flat_layer_shows_one_square_per_unit(page, server) -> None:
    _, url = server
    _open(page, "/?image=val:4&layer=fc6")
    page.wait_for_selector('#maps[data-layer="fc6"]')
    maps = httpx.get(f"{url}/api/maps", params={"image": "val:4", "layer": "fc6"}).json()
    assert maps["size"] == [1, 1]
    m = next(u for u in reversed(range(maps["maps"]))  # an active unit: it has projections
             if httpx.get(f"{url}/api/unit", params={"image": "val:4", "layer": "fc6",
                                                      "unit": u}).json()["active"])
    page.mouse.move(*_at(page, maps, m, 0, 0))
    assert page.text_content("#map-info").startswith(f"unit {m} · value ")
    page.mouse.click(*_at(page, maps, m, 0, 0))
    page.wait_for_selector(f'#unit-section[data-unit="{m}"]')
    page.wait_for_function(LOADED, arg="#unit-figures img")
    assert "unit" in _query(page) and "row" not in _query(page)
    assert page.locator("#unit-box").is_hidden()  # the whole image is its receptive field
    assert page.console.errors == []


def test_a_top5_class_opens_its_score_and_occlusion_follows_it(page, server) -> None:
    """Clicking a class of the top 5: the class-score layer's unit of that class is picked
    (its projections, in the URL), the class is marked, and its occlusion follows it."""
    _open(page, "/?image=val:1&layer=conv1")
    page.wait_for_selector("#predict-list .class-pick")
    second = page.locator("#predict-list .class-pick").nth(1)
    k = second.get_attribute("data-class")
    name = page.locator("#predict-list .class-name").nth(1).text_content()
    second.click()
    page.wait_for_selector(f'#unit-section[data-unit="{k}"]')
    assert _query(page)["layer"] == "fc8" and _query(page)["unit"] == k
    assert second.get_attribute("aria-pressed") == "true"
    assert page.locator("#predict-list .class-pick").nth(0).get_attribute("aria-pressed") \
        == "false"
    page.click("#tab-occlusion")
    page.wait_for_selector('#view-result[data-view="occlusion"]', timeout=60_000)
    assert f"the probability of the picked class, {name} (class {k})" in page.text_content(
        "#view-meta")
    assert page.console.errors == []


def test_the_arrow_keys_move_across_the_tabs_and_enter_opens_one(page, server) -> None:
    """ArrowRight on the "Top 9" tab opened the occlusion tab at once, starting its job (35 s
    on a ResNet) just by passing over it; the keys move the focus, Enter opens the tab."""
    _open(page, "/?image=val:3&layer=conv2&unit=1")
    page.wait_for_selector('#unit-section[data-unit="1"]')
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/occlusion" in r.url else None)
    page.focus("#tab-topk")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-occlusion"
    page.wait_for_timeout(300)
    assert page.get_attribute("#tab-occlusion", "aria-selected") == "false" and asked == []
    page.keyboard.press("Enter")
    page.wait_for_selector('#view-result[data-view="occlusion"]', timeout=60_000)
    assert page.get_attribute("#tab-occlusion", "aria-selected") == "true"
    assert page.console.errors == []


def test_the_first_tab_stop_skips_to_the_maps(page, server) -> None:
    """Reaching the maps by keyboard took 93 Tab presses on a ResNet (its 66 layer rows,
    the strip): the first stop is a link past them."""
    _open(page, "/?image=val:3&layer=conv2")
    page.wait_for_selector('#maps[data-layer="conv2"]')
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to the feature maps"
    length = page.evaluate("history.length")
    page.keyboard.press("Enter")
    page.wait_for_function("document.activeElement.id === 'maps'")
    assert page.evaluate("history.length") == length and "#" not in page.url
    page.keyboard.press("ArrowRight")  # the keys then pick maps
    page.wait_for_selector('#unit-section[data-unit="0"]')
    assert page.console.errors == []


def test_shift_and_the_arrow_keys_move_the_position_inside_the_picked_map(page, server) -> None:
    """The keyboard reached each map's strongest unit only; a click inside the picked map
    picks any position: Shift with the arrows does too, from the strongest one."""
    _, url = server
    _open(page, "/?image=val:5&layer=conv2&unit=2")
    page.wait_for_selector('#unit-section[data-unit="2"]')
    page.wait_for_selector('#maps[data-layer="conv2"]')  # the keys act once the maps are in
    maps = httpx.get(f"{url}/api/maps", params={"image": "val:5", "layer": "conv2"}).json()
    h, w = maps["size"]
    r, c = maps["argmax"][2]
    page.focus("#maps")
    page.keyboard.press("Shift+ArrowDown")
    page.keyboard.press("Shift+ArrowLeft")
    want = (min(h - 1, r + 1), max(0, c - 1))
    page.wait_for_function("([r, c]) => { const q = new URLSearchParams(location.search); "
                           "return q.get('row') === String(r) && q.get('col') === String(c); }",
                           arg=list(want))
    assert _query(page)["unit"] == "2"
    assert page.text_content("#map-info") == f"map 2 at ({want[0]}, {want[1]})"
    assert page.console.errors == []


def test_any_class_named_in_the_box_opens_its_score(page, server) -> None:
    """A class outside the top 5, typed by name (the box offers every class's name), is
    picked as a click on the top 5 picks one; a misspelt name gets "did you mean"."""
    _open(page, "/?image=val:1&layer=conv1")
    page.wait_for_selector("#predict-list .class-pick")
    page.wait_for_function("document.querySelectorAll('#class-names option').length === 10")
    offered = page.eval_on_selector_all("#class-names option", "os => os.map(o => o.value)")
    top5 = page.eval_on_selector_all("#predict-list .class-name",
                                     "ns => ns.map(n => n.textContent)")
    other = next(n for n in offered if n not in top5)
    k = offered.index(other)
    page.fill("#class-name", other.upper())
    page.press("#class-name", "Enter")
    page.wait_for_selector(f'#unit-section[data-unit="{k}"]')
    assert _query(page)["layer"] == "fc8" and _query(page)["unit"] == str(k)
    assert all(b.get_attribute("aria-pressed") == "false"
               for b in page.locator("#predict-list .class-pick").all())
    page.console.allowed.append("/api/classes")  # the server's 400 below
    page.fill("#class-name", other[:-1])
    page.click("#class-find button[type=submit]")
    page.wait_for_selector("#error", state="visible")
    assert f"did you mean '{other}'" in page.text_content("#error-text")
    assert _query(page)["unit"] == str(k)  # nothing else changed
    page.fill("#class-name", str(k))
    page.press("#class-name", "Enter")
    page.wait_for_selector("#error", state="hidden")


def test_a_class_below_zero_is_seeded_with_one_on_a_click(page, server) -> None:
    """A class score below zero: nothing to project with its activation, and a button that
    seeds it with 1 instead (in the link: seed=one), whose pictures then show; another click
    goes back to the activation's seed."""
    app, _ = server
    explorer = app.state.explorer
    scores = explorer.forward("val:3")["__logits__"]
    k = int(scores.argmin())
    assert scores[k] < 0
    _open(page, f"/?image=val:3&layer=fc8&unit={k}")
    page.wait_for_selector(f'#unit-section[data-unit="{k}"]')
    assert "not active on this image" in page.text_content("#unit-meta")
    assert page.locator("#unit-figures .unavailable").first.is_visible()
    page.click("#seed-switch")
    page.wait_for_function("new URLSearchParams(location.search).get('seed') === 'one'")
    page.wait_for_function(
        "document.querySelector('#unit-meta').textContent.includes('seeded with 1')")
    page.wait_for_function(LOADED, arg="#unit-figures img.projection")
    assert page.locator("#unit-figures .unavailable").first.is_hidden()
    assert all("seed=one" in (img.get_attribute("src") or "")
               for img in page.locator("#unit-figures img.projection").all())
    page.click("#seed-switch")
    page.wait_for_function("!new URLSearchParams(location.search).has('seed')")
    page.wait_for_function(
        "document.querySelector('#unit-meta').textContent.includes('not active on this image')")
    assert page.console.errors == []


def test_uploads_become_the_current_image_and_bad_ones_are_told(page, server) -> None:
    _, url = server
    _open(page, "/?layer=conv1")
    page.wait_for_selector('#maps[data-layer="conv1"][data-image="val:0"]')
    page.console.allowed.append("/api/images")  # the server's 400 and 413 below

    page.set_input_files("#upload-file", files=[{  # "%2F" in it: the server decodes names
        "name": "astronaut%2F1.png", "mimeType": "image/png", "buffer": _photo("PNG")}])
    page.wait_for_function("new URLSearchParams(location.search).get('image').startsWith('up:')")
    up = _query(page)["image"]
    page.wait_for_selector(f'#maps[data-layer="conv1"][data-image="{up}"]')
    page.wait_for_function(LOADED, arg="#current-image")
    assert page.get_attribute(f'#strip button[data-image="{up}"]', "aria-pressed") == "true"
    assert "astronaut%2F1.png" in page.text_content("#current-caption")
    assert httpx.get(f"{url}/api/predict", params={"image": up}).json()["name"] == \
        "astronaut%2F1.png"  # as other tabs and links show it (it was "astronaut/1.png")
    assert page.locator("#predict-list li").count() == 5

    page.set_input_files("#upload-file", files=[{
        "name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image\n" * 100}])
    page.wait_for_selector("#error", state="visible")
    assert re.search(r"notes\.txt.*not an image", page.text_content("#error-text"))
    assert page.text_content("#error-text").count("notes.txt") == 1  # named once
    assert _query(page)["image"] == up  # nothing else changed

    page.set_input_files("#upload-file", files=[{
        "name": "big.bmp", "mimeType": "image/bmp", "buffer": b"\0" * (MAX_UPLOAD + 1)}])
    page.wait_for_function("document.querySelector('#error-text').textContent.includes('big.bmp')")
    assert "limit" in page.text_content("#error-text")

    # the page keeps working, and a file dropped anywhere on it is uploaded too
    page.click('tr[data-layer="pool1"]')
    page.wait_for_selector(f'#maps[data-layer="pool1"][data-image="{up}"]')
    assert page.locator("#error").is_hidden()
    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'astronaut.jpg', {type: 'image/jpeg'}));
        document.body.dispatchEvent(new DragEvent('dragenter', {dataTransfer: dt, bubbles: true}));
        document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                           cancelable: true}));
    }""", base64.b64encode(_photo("JPEG")).decode())
    page.wait_for_function(f"(u => u !== {up!r} && u.startsWith('up:'))"
                           "(new URLSearchParams(location.search).get('image'))")
    page.wait_for_selector(f'#maps[data-layer="pool1"][data-image="{_query(page)["image"]}"]')
    assert page.locator("#drop-overlay").is_hidden()
    assert page.locator("#strip li.uploaded").count() == 2
    assert page.text_content("#strip-info").startswith("2 uploaded images (first on the strip)")

    # several files dropped together: each uploaded, the last one shown; a link dropped
    # (a picture dragged from another page) is told, not ignored
    length = page.evaluate("history.length")
    page.evaluate("""(b64) => {
        const dt = new DataTransfer();
        for (const [name, w] of [['small.png', 40], ['wide.png', 90]]) {
          const c = document.createElement('canvas');
          c.width = w; c.height = 30;
          const bytes = Uint8Array.from(atob(c.toDataURL('image/png').split(',')[1]),
                                        ch => ch.charCodeAt(0));
          dt.items.add(new File([bytes], name, {type: 'image/png'}));
        }
        document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                           cancelable: true}));
    }""", "")
    page.wait_for_function("document.querySelectorAll('#strip li.uploaded').length === 4")
    page.wait_for_function("document.querySelector('#current-caption').textContent"
                           ".startsWith('wide.png')")
    assert page.evaluate("history.length") == length + 1  # the last shown, one entry
    page.evaluate("""() => {
        const dt = new DataTransfer();
        dt.setData('text/uri-list', 'https://example.org/cat.jpg');
        document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                           cancelable: true}));
    }""")
    page.wait_for_selector("#error", state="visible")
    assert "a link was dropped, not a file" in page.text_content("#error-text")
    page.focus("#error-close")
    page.keyboard.press("Escape")  # Esc closes the bar too, the keyboard put back
    assert page.locator("#error").is_hidden()
    assert page.evaluate("document.activeElement.id") != ""
    assert page.console.errors == []


def test_top9_and_evolution_jobs_show_their_figures(page, server) -> None:
    _open(page, "/?image=val:2&layer=conv5&unit=3&view=topk")
    page.wait_for_selector('#view-result[data-view="topk"]', timeout=60_000)
    page.wait_for_function(LOADED, arg="#view-figure, #topk-items img")
    assert page.locator("#topk-items li").count() == 9
    assert "over 32 images" in page.text_content("#view-meta")
    # the figure by another rule, as the API draws it (the page offered the deconvnet only)
    assert page.get_attribute('#view-rules [data-rule="deconvnet"]', "aria-pressed") == "true"
    page.click('#view-rules [data-rule="guided"]')
    page.wait_for_function("document.querySelector('#view-figure').src.includes('rule=guided')")
    page.wait_for_function(LOADED, arg="#view-figure")
    assert page.get_attribute('#view-rules [data-rule="guided"]', "aria-pressed") == "true"
    first = page.locator("#topk-items button").first
    target = first.get_attribute("data-image")
    first.click()  # opens that image at the unit's strongest position in it
    page.wait_for_selector(f'#maps[data-image="{target}"]')
    q = _query(page)
    assert (q["image"], q["layer"], q["unit"], q["view"]) == (target, "conv5", "3", "topk")
    assert "row" in q and "col" in q

    page.click("#tab-evolution")
    page.wait_for_selector('#view-result[data-view="evolution"]', timeout=60_000)
    page.wait_for_function(LOADED, arg="#view-figure")
    assert "epoch 1:" in page.text_content("#view-meta") and _query(page)["view"] == "evolution"
    assert page.console.errors == []


def test_occlusion_waits_its_turn_can_be_cancelled_and_computed_again(page, server) -> None:
    app, _ = server
    with _queue_held(app, None):
        _open(page, "/?image=val:1&view=occlusion")
        page.wait_for_selector("#job", state="visible")
        assert "1 job ahead (running: a job holding the queue)" in page.text_content("#job-what")
        page.focus("#job-cancel")
        page.keyboard.press("Enter")
        page.wait_for_selector("#view-again")
        assert "was cancelled. " in page.text_content("#view-hint")  # by this page
        # the keyboard stays in the panel: on the button that computes it again
        assert page.evaluate("document.activeElement.id") == "view-again"
    page.click("#view-again")
    page.wait_for_selector('#view-result[data-view="occlusion"]', timeout=60_000)
    page.wait_for_function(LOADED, arg="#view-figure")
    assert page.locator("#job").is_hidden()
    assert "pick a unit to follow it instead" in page.text_content("#view-meta")
    # a picked unit: the tab follows it (maps (b) and (c) are its own)
    _open(page, "/?image=val:1&layer=conv3&unit=2&view=occlusion")
    page.wait_for_function("document.querySelector('#view-meta').textContent"
                           ".includes('conv3 map 2, the picked unit')", timeout=60_000)
    page.wait_for_function(LOADED, arg="#view-figure")
    assert "unit=2" in page.get_attribute("#view-figure", "src")
    assert page.console.errors == []


def test_a_bad_link_is_told_and_the_page_falls_back(page) -> None:
    _open(page, "/?layer=conv9&unit=2&view=sideways")
    text = page.text_content("#error-text")
    assert "layer conv9 is not a layer of this model" in text
    assert "the layers are conv1, relu1" in text
    assert "view=sideways is not one of topk, occlusion, evolution" in text
    page.wait_for_selector('#maps[data-layer="conv5"]')
    assert page.locator("#unit-section").is_hidden()
    # a row without its col is told (as the API tells it), and the map's strongest unit shown
    _open(page, "/?image=val:0&layer=conv2&unit=5&row=3")
    assert "give both row and col, or neither (the map's strongest unit): row=3 without col " \
        "is left out" in page.text_content("#error-text")
    page.wait_for_selector('#unit-section[data-unit="5"]')
    assert "row" not in _query(page)
    assert page.console.errors == []


def test_without_a_dataset_the_page_works_on_uploads(browser, tiny_run, tmp_path) -> None:
    source = load_source(str(tiny_run))
    with Server(create_app(Explorer(source, None, cache_dir=tmp_path))) as url:
        context = browser.new_context(base_url=url, viewport={"width": 1300, "height": 900})
        page = context.new_page()
        page.console = Console(page)
        _open(page)
        assert "No dataset" in page.text_content("#strip-info")
        assert "upload" in page.text_content("#maps-meta")
        assert page.locator("#tab-topk").is_disabled()
        assert page.locator("#strip li").count() == 0
        page.set_input_files("#upload-file", files=[{
            "name": "astronaut.jpg", "mimeType": "image/jpeg", "buffer": _photo("JPEG")}])
        page.wait_for_selector('#maps[data-layer="conv5"][data-image^="up:"]')
        page.locator("#maps").focus()
        page.keyboard.press("ArrowRight")  # the keyboard picks a map too: the first one
        page.wait_for_selector('#unit-section[data-unit="0"]')
        page.wait_for_function(LOADED, arg="#unit-figures img")
        assert page.console.errors == []
        context.close()


def _broken_val3(route) -> None:
    route.fulfill(status=400, json={"error": "dataset image val:3 is broken: "
                                             "/photos/notes.jpg could not be read: not a "
                                             "recognised image format; pick another image"})


def test_a_narrow_window_scrolls_past_the_layers_to_the_views(page) -> None:
    page.set_viewport_size({"width": 800, "height": 500})
    _open(page, "/?image=val:5&layer=conv5")
    page.wait_for_selector('#maps[data-layer="conv5"]')
    assert page.eval_on_selector("#layers-panel", "p => getComputedStyle(p).position") == "static"
    assert page.locator("#layers-panel").bounding_box()["height"] < 0.5 * 500  # 40vh and padding
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    hit = page.eval_on_selector("#tab-topk", """t => {
        const r = t.getBoundingClientRect();
        return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === t; }""")
    assert hit
    page.click("#tab-topk", timeout=5000)
    assert _query(page)["view"] == "topk" and "Pick a unit" in page.text_content("#view-hint")
    # a phone (390 px): the header wraps, and nothing is wider than the screen (the page
    # scrolled sideways, the Copy button cut off)
    page.set_viewport_size({"width": 390, "height": 700})
    page.evaluate("window.scrollTo(0, 0)")
    copy = page.locator("#copy-link").bounding_box()
    assert copy["x"] >= 0 and copy["x"] + copy["width"] <= 390
    wide = page.evaluate("""() => Array.from(document.querySelectorAll('body *'))
        .filter(e => e.getBoundingClientRect().right > 390.5 && e.offsetParent !== null)
        .map(e => e.id || e.tagName)""")
    assert wide == [] and page.evaluate("document.documentElement.scrollWidth") <= 390


def test_a_broken_image_clears_the_last_ones_maps_and_is_marked_in_the_strip(page) -> None:
    page.route(lambda url: "val:3" in url or "val%3A3" in url, _broken_val3)
    _open(page, "/?image=val:0&layer=conv5&unit=1")
    page.wait_for_selector('#maps[data-image="val:0"]')
    page.wait_for_function(LOADED, arg="#unit-figures img")
    mark = page.locator('#strip li.broken button[data-image="val:3"]')
    mark.wait_for()
    assert "unreadable" in mark.get_attribute("title") and mark.locator("img").count() == 0
    mark.click()
    page.wait_for_function("document.querySelector('#maps-meta').textContent.includes('notes.jpg')")
    assert page.locator("#maps").is_hidden()
    assert page.get_attribute("#sprite", "src") is None
    page.wait_for_selector("#current-broken", state="visible")
    assert page.locator("#current-image").is_hidden()
    page.wait_for_selector("#unit-figures", state="hidden")
    page.wait_for_function("document.querySelector('#error-text').textContent.includes('notes')")
    assert page.text_content("#error-text").count("val:3") == 1  # the image named once
    page.click('#strip button[data-image="val:4"]')  # a good image shows again
    page.wait_for_selector('#maps[data-image="val:4"]', state="visible")
    page.wait_for_function(LOADED, arg="#current-image, #unit-figures img")
    assert page.locator("#current-broken").is_hidden()
    assert not [e for e in page.console.errors if e.startswith("uncaught")]


def test_back_to_a_url_without_a_view_restores_the_panels_text(page) -> None:
    _open(page, "/?image=val:0&layer=conv3")
    default = " ".join(page.text_content("#view-hint").split())
    page.click("#tab-evolution")
    # the evolution job mines every kept epoch: on 2 busy cores (the suite's torchrun tests
    # beside it) it took over 30 s
    page.wait_for_function("document.querySelector('#view-hint').textContent.includes('evolved')",
                           timeout=120_000)
    page.go_back()
    page.wait_for_function("!new URLSearchParams(location.search).has('view')")
    page.wait_for_function(f"document.querySelector('#view-hint').textContent === {default!r}")
    assert page.locator("#view-again").count() == 0
    assert page.console.errors == []


def test_a_queued_job_counts_the_jobs_ahead_and_no_one_else_cancels_it(page, server) -> None:
    """A job this page follows goes on when another client cancels it, and when this page
    cancels a job another client follows, it goes on for that one: this page says so."""
    app, url = server
    with _queue_held(app, "ahead"):
        other = httpx.get(f"{url}/api/occlusion", params={"image": "val:6"}).json()["job"]
        _open(page, "/?image=val:7&view=occlusion")
        page.wait_for_function("document.querySelector('#job-what').textContent.includes("
                               "'2 jobs ahead (running: a job holding the queue)')")
        mine = app.state.jobs.last(("occlusion", "val:7", None, None))  # no unit picked
        httpx.delete(f"{url}/api/jobs/{other['id']}")
        kept = httpx.delete(f"{url}/api/jobs/{mine.id}").json()  # a student's script
        assert (kept["state"], kept["others"]) == ("queued", 1)  # this page follows it
        assert httpx.get(f"{url}/api/jobs/{mine.id}").json()["state"] == "queued"  # follows too
        page.click("#job-cancel")
        page.wait_for_selector("#view-again")
        assert "Cancelled for this page only: 1 other page follows" in page.text_content(
            "#view-hint")
        assert page.locator("#job").is_hidden() and mine.state == "queued"
    assert page.console.errors == []


def test_a_reloaded_page_is_the_same_client_so_its_cancel_stops_the_job(page, server) -> None:
    """The tab keeps its client id over a reload (F5): the page before it is not "1 other
    page" following the job, and Cancel stops it."""
    app, _ = server
    with _queue_held(app, "reload"):
        _open(page, "/?image=val:12&view=occlusion")
        page.wait_for_selector("#job", state="visible")
        page.reload()
        page.wait_for_selector("body[data-ready]")
        page.wait_for_selector("#job", state="visible")
        page.click("#job-cancel")
        page.wait_for_selector("#view-again")
        assert "was cancelled. " in page.text_content("#view-hint")
        assert app.state.jobs.last(("occlusion", "val:12", None, None)).state == "cancelled"
    assert page.console.errors == []


def test_a_page_open_when_the_server_serves_another_model_asks_for_a_reload(
        page, server) -> None:
    """The server started again on another model at the same address: the open page's next
    request sees another id; it hides the last model's layers and pictures and says to
    reload, rather than mixing the two."""
    app, _ = server
    explorer = app.state.explorer
    _open(page, "/?image=val:2&layer=conv1")
    page.wait_for_selector("#maps[data-layer]")
    own = explorer.id
    try:
        explorer.id = "another-model"
        page.click('#strip button[data-image="val:3"]')
        page.wait_for_selector("#stale", state="visible")
        assert "another model or dataset" in page.text_content("#stale-text")
        assert page.locator("#layout").is_hidden() and page.locator("#error").is_hidden()
        page.click("#stale-reload")
        page.wait_for_selector("body[data-ready]")
        assert page.locator("#stale").is_hidden() and page.locator("#layout").is_visible()
    finally:
        explorer.id = own
    assert page.console.errors == []


def test_a_view_left_behind_is_cancelled_not_left_queued(page, server) -> None:
    """Arrow keys or strip clicks with the occlusion tab open: the job of the image left
    behind is cancelled, not left queued ahead of the one the page waits for now."""
    app, _ = server
    with _queue_held(app, "left"):
        _open(page, "/?image=val:4&view=occlusion")
        page.wait_for_function("document.querySelector('#job-what').textContent"
                               ".includes('1 job ahead')")
        left = app.state.jobs.last(("occlusion", "val:4", None, None))
        page.click('#strip button[data-image="val:5"]')
        page.wait_for_function("document.querySelector('#job-what').textContent"
                               ".includes('occlusion maps of val:5')")
        deadline = time.monotonic() + 10
        while left.state != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left.state == "cancelled" and not left.abandoned  # by the page, at once
        now = app.state.jobs.last(("occlusion", "val:5", None, None))
        assert now.state == "queued"
        assert "1 job ahead" in page.text_content("#job-what")  # not 2
    assert page.console.errors == []


def test_the_page_says_the_k_the_server_mines(page) -> None:
    """`zfnet serve --k 4`: the tab, the hints and the class box say top 4, not 9."""
    def k4(route):
        route.fulfill(json={**route.fetch().json(), "k": 4})

    page.route("**/api/model", k4)
    _open(page, "/?image=val:0&layer=conv5")
    assert page.text_content("#tab-topk") == "Top 4 over the dataset"
    assert "top 4" in page.get_attribute("#class-name", "title")
    page.click("#tab-topk")
    page.wait_for_function("document.querySelector('#view-hint').textContent"
                           ".includes('see its top 4 over the dataset')")


def test_a_link_to_an_image_out_of_range_shows_the_first_page(page) -> None:
    page.console.allowed.append("val:99999.png")
    _open(page, "/?image=val:99999&layer=conv5")
    page.wait_for_selector("#error", state="visible")
    assert "does not exist" in page.text_content("#error-text")
    page.wait_for_function("document.querySelector('#strip-info').textContent.startsWith("
                           "'dataset images 1–24 of 32')")
    page.click("#strip-next")
    page.wait_for_function("document.querySelector('#strip-info').textContent.startsWith("
                           "'dataset images 25–32 of 32')")
    assert page.locator("#strip-next").is_disabled()


def test_long_layer_names_leave_every_column_in_view(page) -> None:
    def longer(route):
        body = route.fetch().json()
        row = dict(body["layers"][0], name="layer4.0.downsample.0.a_very_long_name")
        dotted = dict(body["layers"][0], name="layer2.0.downsample.0")
        route.fulfill(json={"layers": [*body["layers"], row, dotted]})
    page.route("**/api/layers", longer)
    _open(page)
    fits = page.eval_on_selector("#layers-panel", """p => {
        const right = p.getBoundingClientRect().right;
        const inside = (th) => th.getBoundingClientRect().right <= right;
        return p.scrollWidth <= p.clientWidth && [...p.querySelectorAll('th')].every(inside); }""")
    assert fits
    name = page.locator('tr[data-layer="layer4.0.downsample.0.a_very_long_name"] button')
    assert name.get_attribute("title").startswith("layer4.0.downsample.0.a_very_long_name · ")
    assert name.evaluate("b => b.scrollWidth > b.clientWidth")  # cut short, with an ellipsis
    # a name of short parts wraps after its dots: all of it in view, its text the name
    dotted = page.locator('tr[data-layer="layer2.0.downsample.0"] button')
    assert dotted.text_content() == "layer2.0.downsample.0"
    assert dotted.evaluate("b => b.scrollWidth <= b.clientWidth && b.getBoundingClientRect()"
                           ".height > 1.5 * (parseFloat(getComputedStyle(b).lineHeight) || 15)")


def test_the_top9_says_what_it_mined_and_shows_a_sign_until_its_figure_is_drawn(page) -> None:
    def unreadable(route):
        response = route.fetch()
        body = response.json()
        if response.status == 200:
            body.update(mined=30, unreadable=[{"image": "val:9", "name": "notes.jpg"},
                                              {"image": "val:11", "name": None}])
        route.fulfill(response=response, json=body)
    held = []
    page.route("**/api/topk?*", unreadable)
    page.route("**/api/topk.png?*", lambda route: held.append(route))
    _open(page, "/?image=val:2&layer=conv5&unit=4&view=topk")
    page.wait_for_selector("#view-drawing", state="visible", timeout=60_000)
    assert page.text_content("#view-drawing") == "drawing…"
    assert "over 30 images (2 unreadable: notes.jpg, val:11)" in page.text_content("#view-meta")
    for route in held:
        route.continue_()
    page.wait_for_selector('#view-result[data-view="topk"]')
    assert page.locator("#view-drawing").is_hidden() and page.locator("#view-figure").is_visible()
    assert page.console.errors == []


def test_arrow_keys_browse_the_maps_in_one_history_entry(page, server) -> None:
    _, url = server
    _open(page, "/?image=val:5&layer=conv2")
    page.wait_for_selector('#maps[data-layer="conv2"]')
    assert "Enter" not in page.get_attribute("#maps", "aria-label")
    maps = httpx.get(f"{url}/api/maps", params={"image": "val:5", "layer": "conv2"}).json()
    page.mouse.click(*_at(page, maps, 2, 0, 0))  # a click pushes an entry, and focuses the maps
    page.wait_for_selector('#unit-section[data-unit="2"]')
    length = page.evaluate("history.length")
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    page.wait_for_selector('#unit-section[data-unit="6"]')
    assert page.evaluate("history.length") == length + 1 and _query(page)["unit"] == "6"
    # the map picked by the keys is said in the live region (a hover's place), not the last
    # hover's map
    assert page.text_content("#map-info").startswith("map 6 · max ")
    page.go_back()
    page.wait_for_selector('#unit-section[data-unit="2"]')
    assert page.console.errors == []


def test_a_rule_that_does_not_run_on_the_network_says_why_in_its_panel(browser,
                                                                       tmp_path) -> None:
    """ConvNeXt's GELU gates: the deconvnet and guided panels hold the server's reason (and
    how to get past it) instead of a broken image, from the unit's `undefined`: nothing bound
    to fail is asked for; the gradient's panel its projection. The top-k figure, by the
    gradient, offers no rule button and says why."""
    import torch
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.jpg")
    torch.manual_seed(0)
    source = load_source("torchvision:convnext_tiny", resize=32, crop=32)
    explorer = Explorer(source, load_data(source, f"images:{tmp_path}"),
                        cache_dir=tmp_path / "c")
    with Server(create_app(explorer)) as url:
        context = browser.new_context(base_url=url, viewport={"width": 1300, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.console = Console(page)
        asked: list[str] = []  # the projections and top-k figures asked by a rule not offered
        page.on("request", lambda r: asked.append(r.url) if ".png?" in r.url and (
            "rule=deconvnet" in r.url or "rule=guided" in r.url) else None)
        _open(page, "/?image=val:0&layer=features.3&unit=2")
        page.wait_for_selector('#unit-section[data-unit="2"]')
        # a dataset image's caption names its file, as an upload's does
        page.wait_for_function("t => document.querySelector('#current-caption').textContent "
                               "=== t", arg="astronaut.jpg (val:0)")
        for rule in ("deconvnet", "guided"):
            note = page.locator(f'img[data-rule="{rule}"] + p.unavailable')
            page.wait_for_function("n => n.textContent.includes('GELU')", arg=note.element_handle())
            assert note.is_visible() and "--nonlinear gradient" in note.text_content()
            assert page.locator(f'img[data-rule="{rule}"]').is_hidden()
        page.wait_for_function(LOADED, arg='img[data-rule="gradient"]')
        assert page.locator('img[data-rule="gradient"] + p.unavailable').is_hidden()
        assert page.locator("#error").is_hidden()  # a fact of the network, not an error
        # on another unit and back: its reason is shown again, never asked for
        page.wait_for_selector('#maps[data-layer="features.3"]')
        page.focus("#maps")
        page.keyboard.press("ArrowRight")
        page.wait_for_selector('#unit-section[data-unit="3"]')
        page.keyboard.press("ArrowLeft")
        page.wait_for_selector('#unit-section[data-unit="2"]')
        note = page.locator('img[data-rule="deconvnet"] + p.unavailable')
        page.wait_for_function("n => n.textContent.includes('GELU')", arg=note.element_handle())
        # the unit's top-k figure: by the gradient, said (and why), not a broken image
        _open(page, "/?image=val:0&layer=features.3&unit=2&view=topk")
        page.wait_for_function(LOADED, arg="#view-figure")
        meta = page.text_content("#view-meta")
        assert "by the gradient, as the deconvnet and guided backpropagation are not " \
            "offered here: the deconvnet rule is defined for rectifiers" in meta
        assert "through GELU" in meta and "zfnet serve --nonlinear gradient" in meta
        assert page.locator("#view-rules").is_hidden()  # no rule to offer but the gradient
        assert asked == [] and page.console.errors == [], (asked, page.console.errors)
        context.close()


def test_an_inactive_unit_says_why_it_has_no_projection_and_a_flat_unit_is_a_unit(
        page, server) -> None:
    """A unit whose activation is <= 0 projects to nothing under every rule: the page says so
    instead of showing three blank panels. A fully connected layer's unit is called a unit, and
    its receptive field is the whole image."""
    _, url = server
    maps = httpx.get(f"{url}/api/maps", params={"image": "val:0", "layer": "fc6"}).json()
    idle = next(u for u, m in enumerate(maps["max"]) if m <= 0)
    busy = next(u for u, m in enumerate(maps["max"]) if m > 0)
    _open(page, f"/?image=val:0&layer=fc6&unit={idle}")
    page.wait_for_selector(f'#unit-section[data-unit="{idle}"]')
    assert page.text_content("#unit-heading") == f"fc6 · unit {idle}"
    assert "not active on this image" in page.text_content("#unit-meta")
    notes = page.locator("#unit-figures .unavailable")
    assert notes.count() == 3 and all(
        "not active here" in notes.nth(i).text_content() for i in range(3))
    assert page.locator("#unit-figures img.projection:visible").count() == 0
    assert "all of it feeds the unit" in page.text_content("#unit-image-caption")
    _open(page, f"/?image=val:0&layer=fc6&unit={busy}")  # an active one: its pictures again
    page.wait_for_selector(f'#unit-section[data-unit="{busy}"]')
    page.wait_for_function(LOADED, arg="#unit-figures img.projection")
    assert "not active" not in page.text_content("#unit-meta")
    assert page.locator("#unit-figures .unavailable:visible").count() == 0
    _open(page, "/?image=val:0&layer=conv2&unit=0")
    page.wait_for_selector('#unit-section[data-unit="0"]')
    assert page.text_content("#unit-heading") == "conv2 · map 0"
    assert page.text_content("#unit-image-caption") == "image · receptive field"
    # a unit of the class scores is named by its class
    name = httpx.get(f"{url}/api/unit", params={"image": "val:0", "layer": "fc8",
                                                 "unit": 1}).json()["name"]
    _open(page, "/?image=val:0&layer=fc8&unit=1")
    page.wait_for_selector('#unit-section[data-unit="1"]')
    assert name and page.text_content("#unit-heading") == f"fc8 · unit 1 ({name})"
    assert page.console.errors == []


def test_a_students_link_to_an_upload_opens_named_and_copies_anywhere(page, browser,
                                                                      server) -> None:
    """One student uploads a photo and passes the link on; the other's page names the photo
    (it showed only its id) and its Copy button copies the link also where the page has no
    clipboard API (a server opened at http://192.168.…, not a secure context: it said
    'could not copy')."""
    _, url = server
    _open(page, "/?layer=conv2")
    page.set_input_files("#upload-file", files=[{
        "name": "my cat.png", "mimeType": "image/png", "buffer": _photo("PNG")}])
    page.wait_for_function("new URLSearchParams(location.search).get('image').startsWith('up:')")
    link = page.get_attribute("#permalink", "href")
    other = browser.new_context(base_url=url)
    try:
        other.add_init_script("""
            Object.defineProperty(Navigator.prototype, "clipboard", { get: () => undefined });
            document.execCommand = (command) => {
              window.copied = [command, document.activeElement.value];
              return true;
            };""")
        friend = other.new_page()
        friend.console = Console(friend)
        _open(friend, link)
        friend.wait_for_function("document.querySelector('#current-caption').textContent"
                                 ".startsWith('my cat.png (up:')")
        friend.click("#copy-link")
        friend.wait_for_function("document.querySelector('#copy-link').textContent === 'Copied'")
        assert friend.evaluate("window.copied") == ["copy", friend.url]
        assert friend.locator("#error").is_hidden() and friend.console.errors == []
    finally:
        other.close()


def test_a_reload_and_another_tab_list_this_browsers_uploads(page) -> None:
    """The strip listed only the uploads made in this page: a reload lost them (the link kept
    the one shown). The browser remembers them, names included; one the server no longer has
    (restarted, or past the last it keeps) leaves the strip and the browser's list."""
    gone = "up:00000000deadbeef"
    page.console.allowed.append(f"/api/image/{quote(gone)}.png")  # its 404, expected
    asked = []  # each request for the gone upload's picture: a few, not one per redrawing
    page.on("request", lambda r: asked.append(r.url) if quote(gone) in r.url else None)
    _open(page, "/?layer=conv1")
    page.evaluate("id => localStorage.setItem('zfnet-explorer-uploads', "
                  "JSON.stringify([{id, name: 'old.png'}]))", gone)
    page.set_input_files("#upload-file", files=[{
        "name": "my dog.png", "mimeType": "image/png", "buffer": _photo("PNG")}])
    page.wait_for_function("new URLSearchParams(location.search).get('image').startsWith('up:')")
    up = _query(page)["image"]
    page.goto("/?layer=conv1")  # a reload without the upload in its link
    page.wait_for_selector("body[data-ready]")
    page.wait_for_selector(f'#strip button[data-image="{up}"]')
    assert "my dog.png" in page.get_attribute(f'#strip button[data-image="{up}"]', "title")
    page.wait_for_function(f"!document.querySelector('#strip button[data-image=\"{gone}\"]')")
    kept = page.evaluate("JSON.parse(localStorage.getItem('zfnet-explorer-uploads'))")
    assert kept == [{"id": up, "name": "my dog.png"}]
    assert "1 uploaded image" in page.text_content("#strip-info")
    assert 1 <= len(asked) <= 2, asked  # its picture, then the one question whether it is gone
    tab = page.context.new_page()  # another tab of the same browser
    tab.console = Console(tab)
    _open(tab, "/?layer=conv1")
    tab.wait_for_selector(f'#strip button[data-image="{up}"]')
    assert page.console.errors == [] and tab.console.errors == []
