"""Benchmark: the full top-9 gallery job (paper Fig. 2) two ways, and the cost of mining.

The job: mine the 9 strongest activations of every map of conv1-conv5 of full-size `zfnet`
(224 px) over N images, then project each of them to pixels with the deconvnet.

- this engine: `zfnet.analyses.gallery.project_topk` (one forward pass per chunk of images,
  every seed of that chunk down together, each cropped to its receptive field);
- Captum: `NeuronDeconvolution` called once per feature map, batched over that map's 9 images,
  with a neuron selector that picks each image's strongest activation in the map.

Both give the same projections (checked: max abs / rel difference printed; Captum seeds with
1, so its result is multiplied by the activation). Mining is shared by both and timed apart,
with its overhead over a forward-only pass through the same layers and over a full forward.

This engine always projects every map. Captum costs the same for each map of a layer (one
call per map), so `--maps M` runs it on M evenly spaced maps per layer and extrapolates its
time to every map, layer by layer (printed as such); the comparison of results covers the maps
Captum ran. Run from anywhere:

    .venv/bin/python bench/bench_topk.py --images 32 --maps 8 --repeats 3   # as in docs/results.md
    .venv/bin/python bench/bench_topk.py --images 64 --repeats 3            # Captum on every map
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import statistics
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import zfnet
from zfnet.analyses.gallery import project_topk
from zfnet.analyses.topk import TopK, mine_topk
from zfnet.deconvnet import feature_chain
from zfnet.models import resolve_layer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware  # noqa: E402  (bench/common.py)

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def timed(fn, repeats: int, sync: bool) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times, out


def spread(times: list[float]) -> str:
    return (f"median {statistics.median(times):.3f} s (min {min(times):.3f}, "
            f"max {max(times):.3f}, n={len(times)})")


def captum_projections(model: nn.Module, images: torch.Tensor, topk: TopK,
                       maps: list[int]) -> torch.Tensor:
    """One NeuronDeconvolution call per map over its top-9 images: (M, 9, C, H, W), scaled
    by the activation (Captum seeds with 1)."""
    from captum.attr import NeuronDeconvolution

    module = model.get_submodule(resolve_layer(model, topk.layer)[0])
    out = []
    for c in maps:
        idx = topk.index[c]
        x = images[idx]  # (9, C, H, W)
        seen: dict[str, torch.Tensor] = {}
        handle = module.register_forward_hook(
            lambda m, i, o, seen=seen: seen.__setitem__("a", o.detach()))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                attr = NeuronDeconvolution(model, module).attribute(
                    x, neuron_selector=lambda a, c=c: a[:, c].flatten(1).max(1).values)
        finally:
            handle.remove()
        act = seen["a"][:, c].flatten(1).max(1).values
        out.append(attr.detach() * act[:, None, None, None])
    return torch.stack(out)


def compare(ours: torch.Tensor, theirs: torch.Tensor, topk: TopK, maps: list[int],
            geo) -> tuple[float, float, float]:
    """Max abs difference, max difference relative to each projection's max, and the largest
    |value| Captum puts outside the receptive field (must be 0), over positive activations
    (the deconvnet rectifies: a negative seed is not a multiple of Captum's seed of 1)."""
    s = ours.shape[-1]
    big = nn.functional.pad(theirs, (s, s, s, s))  # (M, 9, C, H+2s, W+2s)
    abs_d = rel_d = outside = 0.0
    for a, c in enumerate(maps):
        for j in range(topk.k):
            if topk.values[c, j] <= 0:  # Captum's seed 1 scales to a positive seed only
                continue
            top, left, _, _ = geo.box(int(topk.row[c, j]), int(topk.col[c, j]))
            window = (slice(None), slice(top + s, top + 2 * s), slice(left + s, left + 2 * s))
            crop = big[a, j][window]
            d = (ours[a, j] - crop).abs().max().item()
            abs_d = max(abs_d, d)
            rel_d = max(rel_d, d / max(crop.abs().max().item(), 1e-30))
            rest = big[a, j].clone()
            rest[window] = 0
            outside = max(outside, rest.abs().max().item())
    return abs_d, rel_d, outside


def spaced(c: int, m: int) -> list[int]:
    """m of range(c), evenly spaced (all of them when m is 0 or at least c)."""
    if not m or m >= c:
        return list(range(c))
    return [round(i * (c - 1) / max(m - 1, 1)) for i in range(m)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64, help="N images mined (default 64)")
    ap.add_argument("--size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--maps", type=int, default=0,
                    help="run Captum on this many maps per layer, extrapolate (0: all)")
    ap.add_argument("--engine-maps", type=int, default=0,
                    help="smoke test only: this engine on this many maps per layer (0: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-captum", action="store_true")
    ap.add_argument("--seed-batch", type=int, nargs="*", default=[None], metavar="S",
                    help="seeds projected together (default: the engine's own choice); several "
                         "values time the engine once per value")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="after timing, profile one run of this engine's projections and print "
                         "the ROWS costliest operators (torch.profiler)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = dev.type == "cuda"
    print("command:", shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    print("hardware:", hardware())

    torch.manual_seed(0)
    model = zfnet.create_model("zfnet").to(dev).eval()
    images = torch.randn(args.images, 3, args.size, args.size) * 60  # mean-subtracted scale
    data = TensorDataset(images, torch.zeros(args.images, dtype=torch.long))
    with torch.inference_mode():  # warm-up: first calls allocate and pick kernels
        model.features(images[:2].to(dev))
    print(f"model zfnet (random weights), {args.images} random images at {args.size} px, "
          f"layers {', '.join(LAYERS)}, k=9, device {dev}")

    # ---- mining and its overhead over a forward-only pass
    chain = feature_chain(model, LAYERS[-1])

    def forward_only(full: bool) -> None:  # the same data path as mining: a DataLoader
        with torch.inference_mode():
            for x, _ in DataLoader(data, batch_size=args.batch_size):
                x = x.to(dev)
                if full:
                    model(x)
                else:
                    for _, m in chain:
                        x = m(x)

    t_fwd, _ = timed(lambda: forward_only(False), args.repeats, sync)
    t_full, _ = timed(lambda: forward_only(True), args.repeats, sync)
    t_mine, topk = timed(lambda: mine_topk(model, data, LAYERS, 9, batch_size=args.batch_size,
                                           device=dev), args.repeats, sync)
    med = statistics.median
    print(f"forward to conv5 only: {spread(t_fwd)}")
    print(f"full forward (fc8):    {spread(t_full)}")
    print(f"mining top-9:          {spread(t_mine)}")
    print(f"mining overhead: {100 * (med(t_mine) / med(t_fwd) - 1):+.1f}% over the same layers "
          f"forward-only, {100 * (med(t_mine) / med(t_full) - 1):+.1f}% over a full forward")

    # ---- projections, both ways
    infos = zfnet.layer_info(model)
    all_maps = {n: list(range(topk[n].values.shape[0])) for n in LAYERS}
    engine_maps = {n: spaced(len(v), args.engine_maps) for n, v in all_maps.items()}
    for sb in args.seed_batch[:-1]:  # extra values: the engine's time only
        t, _ = timed(lambda sb=sb: project_topk(model, data, topk, engine_maps, batch_size=sb),
                     args.repeats + 1, sync)
        print(f"this engine, {sb} seeds at a time: {spread(t[1:])} (first run dropped)")
    sb = args.seed_batch[-1]
    t_ours, ours_part = timed(lambda: project_topk(model, data, topk, engine_maps, batch_size=sb),
                              args.repeats, sync)
    n_all, n_eng = sum(map(len, all_maps.values())), sum(map(len, engine_maps.values()))
    if n_eng < n_all:  # a smoke test: scaled by seeds, which overstates (forwards are shared)
        t_ours = [t * n_all / n_eng for t in t_ours]
        print(f"this engine, projections of {n_eng} of {n_all} maps x 9, EXTRAPOLATED "
              f"linearly to all (pessimistic: the forward passes are shared): {spread(t_ours)}")
    else:
        print(f"this engine, projections of all {n_all} maps x 9: {spread(t_ours)}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if sync else [])
        with profile(activities=acts) as prof:
            project_topk(model, data, topk, engine_maps, batch_size=sb)
            if sync:
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if sync else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile))
    # Captum costs the same for every map of a layer (one call each): a subset of maps per
    # layer, evenly spaced, measures it; the total is extrapolated layer by layer.
    maps = {n: spaced(len(engine_maps[n]), args.maps) for n in LAYERS}  # indices in engine_maps
    subset = any(len(maps[n]) < len(all_maps[n]) for n in LAYERS)
    if args.skip_captum:
        return

    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    dev_images = images.to(dev)

    # Warm-up, untimed: the first call allocates and picks kernels (as for the engine above).
    captum_projections(ref, dev_images, topk[LAYERS[0]], [0])
    per_layer: dict[str, list[float]] = {n: [] for n in LAYERS}
    theirs: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for n in LAYERS:
            chosen = [engine_maps[n][a] for a in maps[n]]
            t, theirs[n] = timed(
                lambda n=n, c=chosen: captum_projections(ref, dev_images, topk[n], c), 1, sync)
            per_layer[n].append(t[0])
    t_cap = [sum(per_layer[n][r] * len(all_maps[n]) / len(maps[n]) for n in LAYERS)
             for r in range(args.repeats)]
    what = "extrapolated from " + ", ".join(f"{len(maps[n])}/{len(all_maps[n])} maps of {n}"
                                            for n in LAYERS) if subset else "measured"
    print(f"Captum, one NeuronDeconvolution call per map, all maps ({what}): {spread(t_cap)}")
    for n in LAYERS:
        print(f"  {n}: {statistics.median(per_layer[n]) / len(maps[n]):.3f} s per map")
    worst = (0.0, 0.0, 0.0)
    for n in LAYERS:
        chosen = [engine_maps[n][a] for a in maps[n]]
        d = compare(ours_part[n][maps[n]].to(dev), theirs[n], topk[n], chosen, infos[n].geometry)
        worst = tuple(max(a, b) for a, b in zip(worst, d, strict=True))
        print(f"  {n}: max abs diff {d[0]:.3g}, max rel diff {d[1]:.3g}, "
              f"largest |Captum| outside the receptive field {d[2]:.3g}")
    print(f"compared on {sum(map(len, maps.values())) * 9} projections: max abs diff "
          f"{worst[0]:.3g}, max rel diff (per projection) {worst[1]:.3g}")
    mine_t = med(t_mine)
    ours_total, cap_total = mine_t + med(t_ours), mine_t + med(t_cap)
    label = " (Captum extrapolated as above)" if subset else ""
    print(f"full job, mining + projections{label}: this engine {ours_total:.1f} s, "
          f"Captum {cap_total:.1f} s, ratio {cap_total / ours_total:.1f}x "
          f"(projections alone {med(t_cap) / med(t_ours):.1f}x)")


if __name__ == "__main__":
    main()
