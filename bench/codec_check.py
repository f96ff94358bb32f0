"""Check: TorchCodec's JPEG decoder against torchvision's (zfnet.data.codec takes TorchCodec's
where it loads): the same pixels, and each one's rate, on the CPU or a CUDA device (nvJPEG,
batched calls as the gpu loader makes them).

Decodes ImageNet-shaped JPEGs (500x375, `common.make_folder`) in batches with each decoder
that loads here; prints each one's img/s (after one batch that starts it) and how far its
pixels are from torchvision's; exits 1 when TorchCodec's differ by more than one level on
average, or in shape (a decoder zfnet would take must give zfnet's inputs).

    PYTHONPATH=src python bench/codec_check.py              # CUDA if there is one, ~30 s
    PYTHONPATH=src python bench/codec_check.py --dry-run    # CPU, a few images
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware, make_folder  # noqa: E402

from zfnet.data.images import read_file  # noqa: E402


def decoders() -> dict[str, Callable]:
    """The decoders that load here, by name: (list of files, device) -> list of images."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as vision

    out: dict[str, Callable] = {
        "torchvision": lambda files, dev: vision(files, mode=ImageReadMode.RGB, device=dev)}
    try:
        from torchcodec.decoders import decode_jpeg as codec
    except Exception as e:  # noqa: BLE001 (not installed, or built for another torch)
        print(f"TorchCodec does not load here: {type(e).__name__}: {e}"[:300])
    else:
        import torchcodec

        print(f"TorchCodec {torchcodec.__version__}")
        out["torchcodec"] = lambda files, dev: codec(files, mode="RGB", device=dev)
    return out


def rate(decode: Callable, batches: list[list[torch.Tensor]], device: torch.device
         ) -> tuple[float, list[torch.Tensor]]:
    """img/s over all but the first batch, and every image decoded."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    images = list(decode(batches[0], device))
    sync()
    start = time.perf_counter()
    for b in batches[1:]:
        images += decode(b, device)
    sync()
    n = sum(len(b) for b in batches[1:])
    return n / max(time.perf_counter() - start, 1e-9), images


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    if args.dry_run:
        args.images, args.batch_size, args.device = 24, 8, "cpu"
    device = torch.device(args.device)
    warnings.simplefilter("ignore", DeprecationWarning)  # torchvision's decoders, since 0.29
    print(hardware())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kb = make_folder(root, args.images, val=1, workers=os.cpu_count() or 1,
                         unique=min(args.images, 512))
        files = [torch.frombuffer(read_file(p), dtype=torch.uint8)
                 for p in sorted((root / "train").rglob("*.JPEG"))]
    batches = [files[k:k + args.batch_size] for k in range(0, len(files), args.batch_size)]
    print(f"{len(files)} JPEGs of 500x375 ({kb:.0f} kB on average), batches of "
          f"{args.batch_size}, on {device}")
    found = {name: rate(fn, batches, device) for name, fn in decoders().items()}
    ref = found["torchvision"][1]
    ok = True
    for name, (r, images) in found.items():
        same_shape = all(a.shape == b.shape for a, b in zip(images, ref, strict=True))
        diff = [(a.int() - b.int()).abs() for a, b in zip(images, ref, strict=True)
                if a.shape == b.shape]
        mean = float(torch.stack([d.float().mean() for d in diff]).mean()) if diff else 0.0
        worst = max(int(d.max()) for d in diff) if diff else 0
        print(f"  {name:<12} {r:8.0f} img/s   against torchvision's pixels: mean "
              f"{mean:.3f} levels, worst {worst}, shapes {'equal' if same_shape else 'DIFFER'}")
        ok &= same_shape and mean <= 1.0
    print("codec check: " + ("pass" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
