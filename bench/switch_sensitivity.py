"""How far rounding-sized changes move deconvnet projections: switch flips at near-ties.

The deconvnet unpools through the forward pass's max-pooling switches. Where two values of a
pooling window are nearly equal, another device's rounding can pick the other one, and the
projection below that switch changes. This scales every weight of a trained model by
(1 + eps * N(0, 1)) for a few eps and compares the projections of the same top-9 seeds with
the unperturbed model's, as `bench/cuda_check.py` compares CUDA with the CPU. Run from the repo:

    .venv/bin/python bench/switch_sensitivity.py --checkpoint runs/demo
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware, projection_agreement  # noqa: E402

from zfnet.analyses.gallery import project_topk  # noqa: E402
from zfnet.analyses.topk import mine_topk  # noqa: E402
from zfnet.data import load_dataset  # noqa: E402
from zfnet.train import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="runs/demo", help="run dir or checkpoint")
    ap.add_argument("--data", default=None, help="dataset spec (default: the run's)")
    ap.add_argument("--images", type=int, default=256, help="val images mined")
    ap.add_argument("--maps", type=int, default=8, help="maps projected per layer")
    ap.add_argument("--layers", nargs="+", default=["conv1", "conv3", "conv5"])
    ap.add_argument("--eps", type=float, nargs="+", default=[1e-7, 1e-6, 1e-5])
    args = ap.parse_args()
    print(hardware())
    net, meta = load_model(args.checkpoint)
    val = load_dataset(args.data or meta["data"]).val
    data = Subset(val, range(min(args.images, len(val))))
    top = mine_topk(net, data, args.layers, 9)
    maps = {n: range(args.maps) for n in args.layers}
    ref = project_topk(net, data, top, maps)
    print(f"{args.checkpoint}: {len(data)} images, {args.maps} maps x 9 of "
          f"{', '.join(args.layers)}")
    for eps in args.eps:
        other = copy.deepcopy(net)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in other.parameters():
                p.mul_(1 + eps * torch.randn(p.shape, generator=g))
        share, worst = projection_agreement(ref, project_topk(other, data, top, maps))
        print(f"weights x (1 + {eps:g} N(0,1)): {share:.1%} of projections within 1e-3 of "
              f"their max, largest change {worst:.1e} of the layer's max")


if __name__ == "__main__":
    main()
