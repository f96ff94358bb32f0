"""A class uploading photos while a student clicks: how long a click (one unit's projection,
a new unit each time) waits while N students upload 12-megapixel photos at once, against the
same clicks on an idle server, in one run. Against a `zfnet serve` in its own process
(torchvision's ResNet-18, random weights, 224 px; uploads made from a scikit-image photo).

    python bench/bench_explorer_uploads.py [--uploads 20] [--clicks 20] [--megapixels 12]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).parent))
from bench_explorer import serve  # noqa: E402
from common import hardware  # noqa: E402


def photo(megapixels: float, seed: int) -> bytes:
    """A JPEG of about `megapixels` (4:3), a scikit-image photo scaled up; `seed` shifts its
    colours so that every upload is a new file (not one the server has kept)."""
    w = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    img = Image.fromarray(skdata.astronaut()).resize((w, w * 3 // 4))
    img = Image.eval(img, lambda v: (v + seed) % 256)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def clicks(client: httpx.Client, n: int, start: int) -> list[float]:
    """Seconds of each of `n` clicks: a new unit of layer3 projected, each time."""
    took = []
    for k in range(start, start + n):
        t = time.perf_counter()
        client.get("/api/projection.png", params={"image": "val:0", "layer": "layer3",
                                                  "unit": k}).raise_for_status()
        took.append(time.perf_counter() - t)
    return took


def summary(s: list[float]) -> str:
    q = statistics.quantiles(s, n=20)
    return f"p50 {statistics.median(s):.2f} s, p95 {q[-1]:.2f} s, max {max(s):.2f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--uploads", type=int, default=20, help="students uploading at once")
    p.add_argument("--clicks", type=int, default=20)
    p.add_argument("--megapixels", type=float, default=12)
    a = p.parse_args()
    print(hardware())
    files = [photo(a.megapixels, k) for k in range(a.uploads)]
    print(f"{a.uploads} uploads of {statistics.mean(map(len, files)) / 1e6:.1f} MB JPEGs "
          f"({a.megapixels:g} MP)")
    with tempfile.TemporaryDirectory() as cache:
        proc, url = serve(["--model", "torchvision:resnet18", "--data",
                           "synthetic?size=224&n_train=8&n_val=8"], cache)
        try:
            with httpx.Client(base_url=url, timeout=600) as c:
                clicks(c, 2, 200)  # warm up: the image's forward pass is kept
                idle = clicks(c, a.clicks, 0)
                go = threading.Barrier(a.uploads + 1)

                def upload(k: int) -> float:
                    with httpx.Client(base_url=url, timeout=600) as u:
                        go.wait()
                        t = time.perf_counter()
                        u.post("/api/images", content=files[k],
                               headers={"X-Filename": f"photo{k}.jpg"}).raise_for_status()
                        return time.perf_counter() - t

                with ThreadPoolExecutor(a.uploads) as pool:
                    ups = [pool.submit(upload, k) for k in range(a.uploads)]
                    go.wait()
                    busy = clicks(c, a.clicks, a.clicks)
                    uploads = [f.result() for f in ups]
        finally:
            proc.terminate()
            proc.wait()
    print(f"clicks on an idle server:      {summary(idle)}")
    print(f"clicks during the uploads:     {summary(busy)}")
    print(f"uploads (each, from the start): {summary(uploads)}")
    print(f"p95 click during the uploads / idle: "
          f"{statistics.quantiles(busy, n=20)[-1] / statistics.quantiles(idle, n=20)[-1]:.1f}x")


if __name__ == "__main__":
    main()
