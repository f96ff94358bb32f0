"""Benchmark: occlusion (paper Fig. 7) of a network that is not a chain, whose every occluder
position is a whole forward pass (`method="full"`), in float32 and under bf16 autocast
(`precision="bfloat16"`, `zfnet analyze occlusion --precision bfloat16`), in one run.

torchvision's resnet18 (random init, seed 0: timing does not depend on the weights) on
skimage's photos, centre 224 px minus their per-channel mean, the default occluder (32 px,
stride 8: 625 positions). Printed per precision: seconds per image (median of `--repeats`),
the ratio, and how far bf16's maps are from float32's: the largest difference of p(class)
over the map's own range (max - min), the correlation of the two maps, and whether the most
sensitive position and the strongest feature map are the same. A random network's p(class)
maps are nearly flat, so the same comparison is then made where the maps have contrast: a
resnet18 trained here for `--train-epochs` on the built-in `synthetic` shapes (64 px, 10
classes), on `--images` of its val images (occluder 9 px, stride 2).

    .venv/bin/python bench/bench_occlusion_precision.py --images 4 --repeats 3

`--explorer`: instead, the explorer's occlusion job as the page runs it (`zfnet serve
--occlusion-precision`: the maps, the projection and the figure) on one photo (`--images` is
ignored), each precision `--repeats` times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware  # noqa: E402

from zfnet.analyses.occlusion import occlusion  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "motorcycle_left")


def photos(n: int, size: int) -> list[torch.Tensor]:
    import skimage.data

    out = []
    for name in PHOTOS[:n]:
        a = getattr(skimage.data, name)()
        a = a[0] if isinstance(a, tuple) else a
        x = torch.from_numpy(a[..., :3].copy()).permute(2, 0, 1).float()
        x = torchvision.transforms.functional.resize(x, [size], antialias=True)
        x = torchvision.transforms.functional.center_crop(x, [size, size])
        out.append((x - x.mean((1, 2), keepdim=True)) / 64.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--explorer", action="store_true",
                    help="time the explorer's occlusion job instead (see the module)")
    args = ap.parse_args()
    if args.explorer:
        explorer_job(args.repeats)
        return
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = photos(args.images, args.size)
    print(hardware())
    print(f"resnet18 (random init) at {args.size} px, {args.images} photos, occluder 32 px "
          f"stride 8, batches of {args.batch_size}, method full")
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    results: dict[str, list] = {}
    for _ in range(args.repeats):
        for precision in times:
            t = time.perf_counter()
            results[precision] = [occlusion(model, x, method="full", project=False,
                                            batch_size=args.batch_size, precision=precision)
                                  for x in images]
            times[precision].append((time.perf_counter() - t) / len(images))
    f32, b16 = (statistics.median(times[p]) for p in times)
    print(f"  float32   {f32:6.2f} s an image ({min(times['float32']):.2f}-"
          f"{max(times['float32']):.2f})")
    print(f"  bfloat16  {b16:6.2f} s an image ({min(times['bfloat16']):.2f}-"
          f"{max(times['bfloat16']):.2f}): {f32 / b16:.2f}x float32")
    for name, a, b in zip(PHOTOS, results["float32"], results["bfloat16"], strict=False):
        agreement(name, a, b)
    model, val, acc = trained(args.train_epochs)
    print(f"resnet18 trained {args.train_epochs} epochs on synthetic (64 px): val error "
          f"{1 - acc:.1%}; its first {args.images} val images, occluder 9 px stride 2")
    for i in range(args.images):
        x, y = val[i]
        a, b = (occlusion(model, x, target=y, method="full", project=False, precision=p)
                for p in ("float32", "bfloat16"))
        agreement(f"val image {i}", a, b)


def explorer_job(repeats: int) -> None:
    """Seconds of `Explorer.occlusion_job` for the first photo (resnet18's own preprocessing:
    224 px), float32 against bf16."""
    import tempfile

    from PIL import Image

    from zfnet.explorer.session import Explorer
    from zfnet.sources import load_data, load_source

    print(hardware())
    with tempfile.TemporaryDirectory() as tmp:
        import skimage.data

        Image.fromarray(getattr(skimage.data, PHOTOS[0])()).save(f"{tmp}/photo.png")
        torch.manual_seed(0)
        source = load_source("torchvision:resnet18")  # random init; its own preprocessing
        bundle = load_data(source, f"images:{tmp}?n=1")
        times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        for _ in range(repeats):
            for precision in times:
                e = Explorer(source, bundle, cache_dir=f"{tmp}/cache",
                             occlusion_precision=precision)
                t = time.perf_counter()
                e.occlusion_job("val:0", lambda done, total: None)
                times[precision].append(time.perf_counter() - t)
                assert e.occlusions.get("val:0")["precision"] == precision
    f32, b16 = (statistics.median(times[p]) for p in times)
    print(f"explorer occlusion job, resnet18 at 224 px, one photo: float32 {f32:.1f} s "
          f"({', '.join(f'{v:.1f}' for v in times['float32'])}), bfloat16 {b16:.1f} s "
          f"({', '.join(f'{v:.1f}' for v in times['bfloat16'])}): {f32 / b16:.2f}x")


def agreement(name: str, a, b) -> None:
    """How far occlusion result `b` (bf16) is from `a` (float32)."""
    pa, pb = a.probability.flatten(), b.probability.flatten()
    worst = float((pa - pb).abs().max())
    corr = float(torch.corrcoef(torch.stack([pa, pb]))[0, 1])
    position = "same" if a.most_sensitive() == b.most_sensitive() else "differs"
    strongest = "same" if a.feature_map == b.feature_map else "differs"
    print(f"  {name:<21} class {a.target}: p(class) {float(pa.min()):.4f}-{float(pa.max()):.4f}; "
          f"bf16's largest difference {worst:.1e}, {worst / float(pa.max() - pa.min()):.1%} of "
          f"the map's range; correlation {corr:.4f}; most sensitive position {position}; "
          f"strongest map {strongest}")


def trained(epochs: int) -> tuple[torch.nn.Module, object, float]:
    """resnet18 (10 classes) trained on `synthetic` for `epochs` (SGD, batch 64): (model,
    its val split, val accuracy)."""
    from torch.utils.data import DataLoader

    from zfnet.data import load_dataset

    torch.manual_seed(0)
    data = load_dataset("synthetic?n_train=3000&n_val=200")
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    batches = DataLoader(data.train, batch_size=64, shuffle=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=epochs * len(batches))
    for _ in range(epochs):
        model.train()
        for x, y in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x / 64.0), y).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x / 64.0).argmax(1) == y).sum())
                    for x, y in DataLoader(data.val, batch_size=100))
    scaled = [(x / 64.0, y) for x, y in (data.val[i] for i in range(len(data.val)))]
    return model, scaled, right / len(data.val)


if __name__ == "__main__":
    main()
