"""Benchmark: the p(class) occlusion map (paper Fig. 7 (d)) of full-size `zfnet` at 224 px, four
ways, with the same numbers.

- Captum `Occlusion` (forward = softmax of the model), with the best of several
  `perturbations_per_eval` (each tried once, the best one timed `--repeats` times);
- our full recomputation: the whole model on every occluded image, `--batch-size` at a time;
- our incremental inference, exact (`zfnet.incremental`, Krypton-style);
- incremental inference, approximate (projective-field threshold tau, `--tau`), with its error.

Printed: hardware, time per method (median, min, max over repeats), the FLOP bound of exact
incremental inference for these occluders (full-model FLOPs / mean incremental FLOPs, convs and
linear layers only, from the layer geometry), measured speed-ups and the maximum differences of
each method's map from our full recomputation. Weights are random (kaiming init, seed 0): timing
does not depend on them. The image is skimage's `chelsea` cat, centre-cropped to 224 px, minus
its per-channel mean.

The full pass also spends much of its time in pooling, ReLU and contrast normalisation on
full-size maps, which the FLOP bound leaves out and incremental inference runs on small patches
only: the measured speed-up can exceed the FLOP bound.

Run from anywhere (the full measurement, ~15 min on 2 cores; then a quick check):

    .venv/bin/python bench/bench_occlusion.py --sizes 32 48 --stride 8 --repeats 3
    .venv/bin/python bench/bench_occlusion.py --sizes 32 --stride 32 --repeats 1 --ppe 16 64
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import zfnet
from zfnet.analyses.occlusion import occluder_boxes, occluder_grid, pixel_map
from zfnet.incremental import incremental_flops, occlusion_logits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware  # noqa: E402  (bench/common.py)


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def spread(times: list[float]) -> str:
    return (f"median {statistics.median(times):7.2f} s (min {min(times):.2f}, "
            f"max {max(times):.2f}, n={len(times)})")


def test_image(size: int = 224) -> torch.Tensor:
    """skimage's chelsea, shorter side resized to `size`, centre crop, minus channel means."""
    from skimage import data

    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()  # (3, 300, 451)
    h, w = img.shape[1:]
    scale = size / min(h, w)
    img = F.interpolate(img[None], size=(round(h * scale), round(w * scale)),
                        mode="bilinear", align_corners=False)[0]
    top, left = (img.shape[1] - size) // 2, (img.shape[2] - size) // 2
    img = img[:, top:top + size, left:left + size]
    return img - img.mean(dim=(1, 2), keepdim=True)  # (3, size, size)


def full_logits(model, image, boxes, batch_size: int) -> torch.Tensor:
    """Our full recomputation: the whole model on every occluded image, in batches."""
    _, h, w = image.shape
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    out = []
    with torch.inference_mode():
        for a in range(0, len(boxes), batch_size):
            t, lft, b, r = boxes[a:a + batch_size].unbind(1)
            inside = ((ys >= t[:, None, None]) & (ys < b[:, None, None])
                      & (xs >= lft[:, None, None]) & (xs < r[:, None, None]))  # (B, H, W)
            out.append(model(torch.where(inside[:, None], 0.0, image)))
    return torch.cat(out)


def captum_map(model, image, size: int, stride: int, target: int, ppe: int) -> torch.Tensor:
    from captum.attr import Occlusion

    occ = Occlusion(lambda x: torch.softmax(model(x), dim=1))
    with torch.no_grad():
        attr = occ.attribute(image[None], sliding_window_shapes=(3, size, size),
                             strides=(3, stride, stride), target=target, baselines=0.0,
                             perturbations_per_eval=ppe)
    return attr[0, 0]  # (H, W): mean of p(orig) - p(occluded) over the covering windows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 48], help="occluder sides, px")
    ap.add_argument("--stride", type=int, default=8, help="occluder stride, px")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="positions per batch (ours)")
    ap.add_argument("--ppe", type=int, nargs="+", default=[8, 16, 32, 64],
                    help="Captum perturbations_per_eval values to try")
    ap.add_argument("--tau", type=float, nargs="*", default=[0.5, 0.7],
                    help="approximate-mode thresholds (none: skip)")
    ap.add_argument("--no-captum", action="store_true", help="skip Captum")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("hardware:", hardware())
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet").eval()  # random weights (kaiming), 1000 classes
    image = test_image(224)
    with torch.inference_mode():
        base = model(image[None])[0]
    target = int(base.argmax())
    print(f"model: zfnet, random weights (seed 0), 224 px; image: skimage chelsea; "
          f"target = predicted class {target} (p={float(base.softmax(0)[target]):.3f})")

    for size in args.sizes:
        tops, lefts = occluder_grid(224, 224, size, args.stride)
        boxes = occluder_boxes(tops, lefts, size, 224, 224)
        n = len(boxes)
        print(f"\n== occluder {size} px, stride {args.stride} px: {len(tops)}x{len(lefts)} = "
              f"{n} positions ==")
        flops = incremental_flops(model, (3, 224, 224), boxes)
        print(f"FLOPs per position: full {flops.full / 1e9:.3f} G, exact incremental "
              f"{flops.incremental / 1e9:.3f} G (our equal-size patches "
              f"{flops.batched / 1e9:.3f} G)")
        print(f"FLOP bound of exact incremental inference: {flops.bound:.2f}x "
              f"(with our patches {flops.batched_bound:.2f}x)")
        for path, (f_full, f_inc, _) in flops.per_layer.items():
            print(f"    {path:16s} full {f_full / 1e6:8.1f} M  incremental {f_inc / 1e6:8.1f} M")

        t_full, ref = timed(lambda b=boxes: full_logits(model, image, b, args.batch_size),
                            args.repeats)
        ref_p = ref.softmax(1)[:, target]
        p0 = float(base.softmax(0)[target])
        rows = [(f"full recomputation (ours), batch {args.batch_size}", t_full, 0.0)]

        def incremental(tau: float = 1.0, b: torch.Tensor = boxes) -> torch.Tensor:
            return occlusion_logits(model, image, b, batch_size=args.batch_size, tau=tau)[0]

        t_inc, inc = timed(incremental, args.repeats)
        rows.append(("incremental exact (ours)", t_inc,
                     float((inc.softmax(1)[:, target] - ref_p).abs().max())))
        logit_diff = float((inc - ref).abs().max() / ref.abs().max())
        for tau in args.tau:
            t_apx, apx = timed(lambda tau=tau: incremental(tau), args.repeats)
            rows.append((f"incremental approximate tau={tau}", t_apx,
                         float((apx.softmax(1)[:, target] - ref_p).abs().max())))
        if not args.no_captum:
            sweep = {}
            for ppe in args.ppe:
                t = time.perf_counter()
                captum_map(model, image, size, args.stride, target, ppe)
                sweep[ppe] = time.perf_counter() - t
            best = min(sweep, key=sweep.get)
            print("Captum perturbations_per_eval sweep (one run each): "
                  + ", ".join(f"{k}: {v:.2f} s" for k, v in sweep.items()) + f"; best {best}")
            t_cap, attr = timed(
                lambda s=size, p=best: captum_map(model, image, s, args.stride, target, p),
                args.repeats)
            ours = pixel_map(p0 - ref_p.view(len(tops), len(lefts)), tops, lefts, size,
                             (224, 224))
            rows.insert(0, (f"Captum Occlusion, perturbations_per_eval={best}", t_cap,
                            float((attr - ours).abs().max())))

        full_median = statistics.median(t_full)
        print(f"{'method':46s} {'time':46s} {'speed-up vs full':>16s} {'max |dp| vs full':>17s}")
        for name, times, diff in rows:
            print(f"{name:46s} {spread(times):46s} "
                  f"{full_median / statistics.median(times):15.2f}x {diff:17.2e}")
        speedup = full_median / statistics.median(t_inc)
        print(f"exact incremental: {speedup:.2f}x measured vs {flops.bound:.2f}x FLOP bound "
              f"= {100 * speedup / flops.bound:.0f}% of the bound; max relative logit "
              f"difference vs full {logit_diff:.1e}")
        if not args.no_captum:
            cap = statistics.median(rows[0][1])
            print(f"vs Captum (best ppe): full {cap / full_median:.2f}x, incremental exact "
                  f"{cap / statistics.median(t_inc):.2f}x faster")


if __name__ == "__main__":
    main()
