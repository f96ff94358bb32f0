"""How live the explorer feels: request to image received, through its HTTP API, against a
`zfnet serve` in its own process, beside the engine alone measured in this process.

Two models, as issue 26 sets the targets: the demo's (a `zfnet_small` run, `runs/demo` or a
1-epoch one trained here) and ZFNet at 224 px (random init, `synthetic?size=224` images); and
a torchvision ResNet-18 at 224 px (random init), whose `layer3` goes the general path.
For each: one unit's projection (conv5 / layer3, a new unit each time: the image's forward
pass is kept, the projection is computed), a layer's thumbnails (`/api/maps` + its sprite, for a new
image: a forward pass included; and again for another layer of the same image), the top-9
index (mining job, polled), one unit's top-9 figure, and the occlusion maps (job). The engine
alone: `project_layers` of one unit and one forward pass, in this process, same threads.

    python bench/bench_explorer.py [--demo-run runs/demo] [--repeats 20] [--images 500]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import hardware  # noqa: E402

from zfnet.explorer.app import free_port  # noqa: E402


def serve(args: list[str], cache: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "zfnet.cli", "serve", *args, "--port",
                             str(port), "--cache", cache, "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{url}/api/model", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(f"zfnet serve failed:\n{proc.stdout.read()}") from None
            time.sleep(0.1)
    raise RuntimeError("zfnet serve did not start in 60 s")


def ms(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def get(client: httpx.Client, url: str) -> httpx.Response:
    r = client.get(url)
    r.raise_for_status()
    return r


def wait(client: httpx.Client, url: str) -> float:
    """Seconds from asking for a long computation to its result."""
    t = time.perf_counter()
    r = client.get(url)
    while r.status_code == 202:
        job = r.json()["job"]
        while job["state"] in ("queued", "running"):
            time.sleep(0.05)
            job = get(client, f"/api/jobs/{job['id']}").json()
        if job["state"] != "done":
            raise RuntimeError(f"job {job['what']}: {job['state']} {job['error']}")
        r = client.get(url)
    r.raise_for_status()
    return time.perf_counter() - t


def engine(args: list[str], data: str | None, layer: str, repeats: int) -> dict[str, float]:
    """The engine alone, in this process: one forward pass and one unit's projection."""
    from zfnet.deconvnet import Seeds, project_layers
    from zfnet.sources import load_data, load_source

    source = load_source(args[1])
    model = source.model.eval()
    bundle = load_data(source, data)
    x = bundle.val.with_mode("centre")[0][0][None]
    times_f, times_p = [], []
    with torch.inference_mode():
        model(x)
    for u in range(repeats + 2):
        with torch.inference_mode():
            times_f.append(ms(lambda: model(x)))
        times_p.append(ms(lambda u=u: project_layers(model, x, {layer: Seeds([0], [u])})))
    return {"forward": statistics.median(times_f[2:]), "project": statistics.median(times_p[2:])}


def measure(name: str, args: list[str], data: str | None, repeats: int,
            layer: str = "conv5", first: str = "conv1") -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        proc, url = serve([*args, *(["--data", data] if data else [])], cache)
        try:
            with httpx.Client(base_url=url, timeout=600) as c:
                info = get(c, "/api/model").json()
                out: dict[str, float] = {}
                # a layer's thumbnails for a new image (its forward pass included) ...
                cold = [ms(lambda i=i: (get(c, f"/api/maps?image=val:{i}&layer={layer}"),
                                        get(c, f"/api/maps.png?image=val:{i}&layer={layer}")))
                        for i in range(1, repeats + 1)]
                # ... and another layer of an image seen (forward pass kept)
                warm = [ms(lambda i=i: (get(c, f"/api/maps?image=val:{i}&layer={first}"),
                                        get(c, f"/api/maps.png?image=val:{i}&layer={first}")))
                        for i in range(1, repeats + 1)]
                out["maps_new_image_ms"] = statistics.median(cold)
                out["maps_seen_image_ms"] = statistics.median(warm)
                # one unit's projection, a new unit each time (the image's forward kept)
                get(c, f"/api/maps?image=val:0&layer={layer}")
                proj = [ms(lambda u=u: get(c, f"/api/projection.png?image=val:0&layer={layer}"
                                           f"&unit={u}&rule=deconvnet"))
                        for u in range(repeats)]
                out["projection_ms"] = statistics.median(proj)
                unit = [ms(lambda u=u: get(c, f"/api/unit?image=val:0&layer={layer}&unit={u}"))
                        for u in range(repeats)]
                out["unit_json_ms"] = statistics.median(unit)
                out["topk_index_s"] = wait(c, f"/api/topk?layer={layer}&unit=0")
                fig = [ms(lambda u=u: get(c, f"/api/topk.png?layer={layer}&unit={u}"))
                       for u in range(1, min(repeats, 8) + 1)]
                out["topk_figure_ms"] = statistics.median(fig)
                out["occlusion_s"] = wait(c, "/api/occlusion?image=val:0")
                out["images"] = info["data"]["images"]
        finally:
            proc.terminate()
            proc.wait(10)
    out.update({f"engine_{k}_ms": v for k, v in engine(args, data, layer, repeats).items()})
    print(f"\n{name}: {info['name']}, input {info['input']['size']}", flush=True)
    for k, v in out.items():
        print(f"  {k:24s} {v:10.1f}")
    print(f"  projection through HTTP (the image's pass kept) / the engine with its own pass: "
          f"{out['projection_ms'] / out['engine_project_ms']:.2f}x")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo-run", default="runs/demo")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--images", type=int, default=500, help="dataset images mined")
    a = p.parse_args()
    print(hardware())
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(a.demo_run)
        if not (run / "checkpoints").is_dir():
            run = Path(tmp) / "demo"
            subprocess.run([sys.executable, "-m", "zfnet.cli", "train", "--data", "synthetic",
                            "--model", "zfnet_small", "--out", str(run), "--epochs", "1",
                            "--quiet", "--no-tensorboard"], check=True)
        n = str(a.images)
        measure("demo model", ["--checkpoint", str(run), "--images", n], None, a.repeats)
        measure("ZFNet 224 px", ["--model", "zfnet", "--images", n],
                f"synthetic?size=224&n_train=16&n_val={a.images}", a.repeats)
        # any CNN: a torchvision ResNet-18 (random init), a stage through the general path
        measure("ResNet-18 224 px", ["--model", "torchvision:resnet18", "--images", n],
                f"synthetic?size=224&n_train=16&n_val={a.images}", a.repeats,
                layer="layer3", first="conv1")


if __name__ == "__main__":
    main()
