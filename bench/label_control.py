"""The reference for the data randomisation test: how alike are the maps of two runs that both
learned the TRUE labels (another seed, say)?

`zfnet analyze randomization --mode labels` compares a run's maps with those of a copy trained
on permuted labels. Two separately trained networks never give the same maps, so its rank
correlations read best beside this one: the same comparison (`zfnet.analyses.sanity.
data_randomization`: each model's own predicted class, projected for the first N training
images of RUN_A's data) between two runs of the same configuration on the true labels. A method
whose similarity drops from this reference to the random-label copy's depends on the labels.
Run from the repo:

    .venv/bin/python bench/label_control.py runs/small runs/small_seed1 --images 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from zfnet.analyses.sanity import data_randomization  # noqa: E402
from zfnet.data import load_dataset  # noqa: E402
from zfnet.train import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    a, meta = load_model(args.run_a)
    b, _ = load_model(args.run_b, meta["model"])
    train = load_dataset(meta["data"]).train.with_mode("centre")
    x = torch.stack([train[i][0] for i in range(args.images)])
    res = data_randomization(a, b, x)
    same = sum(p == q for p, q in zip(*res.classes, strict=True))
    print(f"{args.run_a} vs {args.run_b}, {args.images} training images of {meta['data']} "
          f"(the same class predicted for {same})")
    for rule, score in res.scores.items():
        each = " ".join(f"{v:.2f}" for v in res.per_image[rule])
        print(f"{rule:<10} rank correlation {score['spearman']:.3f}  SSIM {score['ssim']:.3f}  "
              f"per image {each}")


if __name__ == "__main__":
    main()
