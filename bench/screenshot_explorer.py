"""The README's picture of the explorer (docs/explorer.png): `zfnet serve`'s page on a trained
run, opened on one unit with its top 9, as a browser shows it (Playwright driving Debian's
chromium, as the browser tests do).

The view is given as the page's own query string (what its "Link to this view" holds); by
default: the first dataset image, `--layer`, the map that image excites most there (its
strongest unit), and the unit's top 9 over the dataset.

    python bench/screenshot_explorer.py [--checkpoint runs/demo] [--out docs/explorer.png]
        [--layer conv3] [--view "image=val:3&layer=conv3&unit=12&view=topk"]

docs/explorer.png: `python bench/screenshot_explorer.py --checkpoint runs/demo` after
`make demo`.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import httpx
from PIL import Image

from zfnet.explorer.app import Server, create_app
from zfnet.explorer.session import Explorer
from zfnet.sources import load_data, load_source
from zfnet.train import list_checkpoints

CHROMIUM = "/usr/bin/chromium"
LOADED = "() => [...document.images].filter(i => i.getAttribute('src') && i.offsetParent)" \
         ".every(i => i.complete && i.naturalWidth > 0)"


def default_view(url: str, layer: str) -> str:
    """The first image, `layer`, its most excited map, and the top-9 view."""
    model = httpx.get(f"{url}/api/model").json()
    image = model["default_image"]
    maps = httpx.get(f"{url}/api/maps", params={"image": image, "layer": layer}).json()
    unit = max(range(maps["maps"]), key=lambda m: maps["max"][m])
    return f"image={image}&layer={layer}&unit={unit}&view=topk"


def screenshot(url: str, view: str, out: Path, width: int, height: int, colors: int) -> None:
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": width, "height": height})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{url}/?{view}")
        page.wait_for_selector("body[data-ready]")
        page.wait_for_selector("#unit-section[data-unit]", timeout=60_000)
        if "view=" in view:
            page.wait_for_selector("#view-result[data-view]", timeout=600_000)
        page.wait_for_function(LOADED, timeout=60_000)
        if errors or page.locator("#error").is_visible():
            raise SystemExit(f"the page reported errors: {errors or page.text_content('#error')}")
        png = page.screenshot(full_page=True)
        browser.close()
    finally:
        pw.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if colors:  # a third of the size for the README; undithered, the page looks the same
        image = image.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(out, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/demo", help="a zfnet run (make demo's)")
    p.add_argument("--data", default=None, help="dataset spec (default: the run's own)")
    p.add_argument("--images", type=int, default=None, help="mine the top 9 over N images")
    p.add_argument("--layer", default="conv3", help="the layer of the default view")
    p.add_argument("--view", default=None, help="the page's query string to show")
    p.add_argument("--out", default="docs/explorer.png", type=Path)
    p.add_argument("--width", type=int, default=1440)
    p.add_argument("--height", type=int, default=1100)
    p.add_argument("--colors", type=int, default=256, help="palette size (0: full colour)")
    args = p.parse_args()

    source = load_source(args.checkpoint)
    bundle = load_data(source, args.data)
    kept = list_checkpoints(Path(source.meta["checkpoint"]).parent)
    with tempfile.TemporaryDirectory() as cache:
        explorer = Explorer(source, bundle, cache_dir=cache, n_images=args.images,
                            evolution=kept if len(kept) > 1 else None)
        with Server(create_app(explorer)) as url:
            view = args.view or default_view(url, args.layer)
            screenshot(url, view, args.out, args.width, args.height, args.colors)
    print(f"{args.out}: {source.name}, /?{view}")


if __name__ == "__main__":
    main()
