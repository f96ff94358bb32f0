"""Benchmark: projections through a network that is not a chain (torchvision resnet18), the
general path (`zfnet.graph`) against one Captum call per feature map, in the same run.

The job: for each of N images, the strongest unit of every map of resnet18's `layer3` (256 maps)
and `layer4` (512 maps), projected to pixels with the deconvnet rule — 768 * N projections.

- zfnet: `zfnet.graph.project_graph` — the images go forward once (one pass gives both layers'
  outputs), and the seeds go down the recorded graph stacked, `--seed-batch` signals per pass;
- Captum: `NeuronDeconvolution(model, layer).attribute(images, neuron_selector=...)` once per
  map, batched over the N images, with a selector that picks each image's strongest unit of the
  map (Captum seeds with 1: its result times the activation is compared).

Results are compared by cosine similarity per projection (the worst is printed). Captum costs
the same for every map of a layer, so `--captum-maps M` runs it on M evenly spaced maps per layer
and extrapolates its time to every map (printed as such); the default runs every map.

The bound: a projection needs one input-gradient pass from the layer down (what autograd
computes for one seed); the floor printed is that pass timed on a batch of `--seed-batch`
different images (one plain autograd backward, no rule, each image one seed) scaled to the
number of seeds — what the general path would take if walking the graph stacked cost nothing
more than one ordinary backward pass.

    .venv/bin/python bench/bench_graph.py                 # the figure in docs/results.md
    .venv/bin/python bench/bench_graph.py --captum-maps 32 --repeats 1   # quicker
    .venv/bin/python bench/bench_graph.py --model efficientnet_b0 --layers features.4 \
        features.6 --nonlinear gradient --precision float32 --captum-maps 16   # SiLU, gates
    python bench/bench_graph.py --device cuda             # on a GPU

`--model` takes any torchvision classification model (random weights); `--nonlinear gradient`
walks GELU, SiLU and gates by their gradient (`zfnet.graph.nonlinear`), as Captum does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
import torchvision
from torch import nn

from zfnet.graph import layer_outputs, project_graph, seeds_from, set_nonlinear

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware  # noqa: E402  (bench/common.py)


def unit_rows(t: torch.Tensor) -> torch.Tensor:
    """Each row divided by its largest |value| (in float64): cosines of tiny projections (a
    random network's, 1e-18) would drown in cosine_similarity's eps."""
    t = t.double()
    return t / t.abs().amax(-1, keepdim=True).clamp_min(1e-300)


def sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def captum_time(model: nn.Module, module: nn.Module, x: torch.Tensor, maps: list[int],
                ours: torch.Tensor, values: torch.Tensor) -> tuple[float, float]:
    """Seconds of one Captum call per map in `maps`, and the worst cosine against `ours`
    ((C*N, ...) in image-major order of all C maps)."""
    from captum.attr import NeuronDeconvolution

    n = x.shape[0]
    channels = ours.shape[0] // n
    worst = 1.0
    total = 0.0
    for c in maps:
        def strongest(out: torch.Tensor, c: int = c) -> torch.Tensor:
            return out[:, c].flatten(1).max(1).values

        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = NeuronDeconvolution(model, module).attribute(x, neuron_selector=strongest)
        sync(x)
        total += time.perf_counter() - t
        for i in range(n):
            s = i * channels + c
            if values[s] <= 0:
                continue
            a, b = unit_rows(ours[s].flatten()), unit_rows((ref[i] * values[s]).flatten())
            cos = torch.nn.functional.cosine_similarity(a, b.to(a.device), 0)
            worst = min(worst, float(cos))
    return total, worst


def floor_time(model: nn.Module, module: nn.Module, x: torch.Tensor, batch: int,
               seeds: int) -> float:
    """One plain autograd input-gradient pass from `module` on `batch` images (one seed each),
    scaled to `seeds` seeds."""
    xb = x[torch.arange(batch) % x.shape[0]].clone().requires_grad_(True)
    act = layer_outputs(model, xb, {"l": module})["l"]
    g = torch.zeros_like(act)
    g.view(batch, -1)[:, 0] = 1.0
    sync(xb)
    t = time.perf_counter()
    torch.autograd.grad(act, xb, g)
    sync(xb)
    return (time.perf_counter() - t) * seeds / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--layers", nargs="+", default=["layer3", "layer4"])
    ap.add_argument("--seed-batch", type=int, default=16)
    ap.add_argument("--captum-maps", type=int, default=None,
                    help="Captum on M evenly spaced maps per layer, time extrapolated")
    ap.add_argument("--repeats", type=int, default=3, help="timings of the general path")
    ap.add_argument("--model", default="resnet18", help="a torchvision model (random weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nonlinear", choices=["error", "gradient"], default="error",
                    help="how the deconvnet rule meets GELU, SiLU, gates (zfnet.graph.nonlinear)")
    ap.add_argument("--precision", nargs="+", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16"],
                    help="the general path's precision(s), each timed and compared")
    args = ap.parse_args()
    set_nonlinear(args.nonlinear)
    print(hardware())
    print(f"{args.model}, layers {' '.join(args.layers)}, {args.images} images at {args.size} px, "
          f"device {args.device}, nonlinear {args.nonlinear}")
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(args.device)
    x = torch.randn(args.images, 3, args.size, args.size, device=args.device)
    modules = {name: model.get_submodule(name) for name in args.layers}
    with torch.no_grad():
        acts = layer_outputs(model, x, modules)
    seeds = {}
    for name, act in acts.items():
        c = act.shape[1]
        seeds[name] = seeds_from(torch.arange(args.images).repeat_interleave(c),
                                 torch.arange(c).repeat(args.images), None)
    n_seeds = sum(len(s[0]) for s in seeds.values())
    timed: dict[str, float] = {}
    results = {}
    for precision in args.precision:
        dtype = None if precision == "float32" else torch.bfloat16
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            results[precision] = project_graph(model, x, modules, seeds, "deconvnet",
                                               seed_batch=args.seed_batch, dtype=dtype)
            sync(x)
            times.append(time.perf_counter() - t)
        timed[precision] = statistics.median(times)
        print(f"zfnet general path, {precision}: {n_seeds} projections in "
              f"{timed[precision]:.2f} s (median of {args.repeats}: "
              f"{', '.join(f'{t:.2f}' for t in times)})")
    res = results[args.precision[0]]
    ours = timed[args.precision[0]]
    floor = sum(floor_time(model, m, x, args.seed_batch, len(seeds[n][0]))
                for n, m in modules.items())
    print(f"floor (plain autograd input gradients in float32, {args.seed_batch} images per "
          f"pass): {floor:.2f} s -> the general path in {args.precision[0]} takes "
          f"{ours / floor:.2f}x the floor")
    cap_total, worst = 0.0, 1.0
    for name, module in modules.items():
        c = acts[name].shape[1]
        maps = list(range(c)) if args.captum_maps is None else \
            sorted({int(i * c / args.captum_maps) for i in range(args.captum_maps)})
        proj, values = res[name][:2]
        t, w = captum_time(model, module, x, maps, proj, values)
        worst = min(worst, w)
        extrapolated = t * c / len(maps)
        cap_total += extrapolated
        note = "" if len(maps) == c else f" (extrapolated from {len(maps)} maps)"
        print(f"Captum NeuronDeconvolution, {name}: {c} calls, {extrapolated:.2f} s{note}")
    print(f"Captum total {cap_total:.2f} s; worst cosine of {args.precision[0]} to Captum "
          f"{worst:.6f}")
    for precision, t in timed.items():
        cos = 1.0
        for n in modules:
            a, b = results[precision][n][0].flatten(1), res[n][0].flatten(1)
            shown = b.abs().amax(1) > 0  # an inactive unit's projection is zero on both
            a, b = unit_rows(a[shown]), unit_rows(b[shown])
            cos = min(cos, float(torch.nn.functional.cosine_similarity(a, b, 1).min()))
        print(f"  {precision}: {t:.2f} s, {cap_total / t:.2f}x faster than Captum "
              f"(worst cosine to {args.precision[0]}: {cos:.6f})")


if __name__ == "__main__":
    main()
