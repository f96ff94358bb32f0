"""Check: the libraries that can decode the gpu and mixed loaders' batches on the device
(`zfnet.data.codec.decode_batch`: nvImageCodec, TorchCodec, torchvision): the same pixels, and
each one's rate, on the CPU or a CUDA device (nvJPEG, one call per batch as the loaders make
it), on ImageNet-shaped JPEGs and on the 256 px centre squares `zfnet shards --square` stores.

Decodes 500x375 JPEGs (`common.make_folder`) and their squares in batches with each library
that loads here (`ZFNET_DEVICE_DECODER` set to it); prints each one's img/s (after one batch
that starts it), the same in two threads decoding batches at once (as the loaders' threads,
`ZFNET_DEVICE_THREADS`), and how far its pixels are from torchvision's; exits 1 when one differs by
more than one level on average, or in shape, or refuses a file (a decoder zfnet would take
must give zfnet's inputs).

    PYTHONPATH=src python bench/codec_check.py              # CUDA if there is one, ~40 s
    PYTHONPATH=src python bench/codec_check.py --dry-run    # CPU, a few images
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware, make_folder  # noqa: E402

from zfnet.data import codec  # noqa: E402
from zfnet.data.images import read_file  # noqa: E402
from zfnet.data.shard_writer import DEFAULT_QUALITY  # noqa: E402


def libraries() -> list[str]:
    """The libraries that load here, torchvision first (the reference)."""
    out = []
    for name in ("torchvision", "torchcodec", "nvimgcodec"):
        os.environ[codec.ENV] = name
        try:
            codec.device_decoder("cpu")
        except ValueError as e:
            print(f"{name} does not load here: {e}"[:300])
        else:
            out.append(name)
    return out


def rate(name: str, batches: list[list[torch.Tensor]], device: torch.device
         ) -> tuple[float, list[torch.Tensor | None]]:
    """`name`'s img/s over all but the first batch, and every image decoded."""
    os.environ[codec.ENV] = name
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    images = codec.decode_batch(batches[0], device)
    sync()
    start = time.perf_counter()
    for b in batches[1:]:
        images += codec.decode_batch(b, device)
    sync()
    n = sum(len(b) for b in batches[1:])
    return n / max(time.perf_counter() - start, 1e-9), images


def rate_in_threads(name: str, batches: list[list[torch.Tensor]], device: torch.device,
                    threads: int) -> float:
    """`name`'s img/s with `threads` threads decoding batches at once, as the loaders'
    threads do (`ZFNET_DEVICE_THREADS`; each on a CUDA stream of its own): the batches after
    each thread's first, dealt in turn."""
    os.environ[codec.ENV] = name
    cuda = device.type == "cuda"

    def run(parts: list[list[list[torch.Tensor]]]) -> float:
        def work(mine: list[list[torch.Tensor]]) -> None:
            stream = torch.cuda.Stream(device) if cuda else None
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                for b in mine:
                    codec.decode_batch(b, device)
            if cuda:
                stream.synchronize()

        pool = [threading.Thread(target=work, args=(part,)) for part in parts]
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return time.perf_counter() - start

    run([[b] for b in batches[:threads]])  # each thread's decoder started
    rest = batches[threads:]
    seconds = run([rest[k::threads] for k in range(threads)])
    return sum(len(b) for b in rest) / max(seconds, 1e-9)


def square(data: torch.Tensor, side: int = 256) -> torch.Tensor:
    """The file's centre square, shorter side `side`, re-encoded as `zfnet shards --square`
    stores it."""
    img = Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB")
    w, h = img.size
    img = img.resize((round(w * side / min(w, h)), round(h * side / min(w, h))),
                     Image.Resampling.BILINEAR)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    buf = io.BytesIO()
    img.crop((left, top, left + side, top + side)).save(buf, "JPEG", quality=DEFAULT_QUALITY)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def compare(title: str, files: list[torch.Tensor], names: list[str], batch_size: int,
            device: torch.device) -> bool:
    """Each library's rate and pixels on `files`, printed; whether all pass."""
    batches = [files[k:k + batch_size] for k in range(0, len(files), batch_size)]
    print(f"{title}: {len(files)} files, {sum(f.numel() for f in files) / len(files) / 1000:.0f}"
          f" kB on average, batches of {batch_size}, on {device}")
    found = {name: rate(name, batches, device) for name in names}
    two = {name: rate_in_threads(name, batches, device, 2) for name in names}
    ref = found["torchvision"][1]
    ok = True
    for name, (r, images) in found.items():
        refused = sum(a is None for a in images)
        pairs = [(a, b) for a, b in zip(images, ref, strict=True)
                 if a is not None and b is not None]
        same_shape = all(a.shape == b.shape for a, b in pairs)
        diff = [(a.int() - b.int()).abs() for a, b in pairs if a.shape == b.shape]
        mean = float(torch.stack([d.float().mean() for d in diff]).mean()) if diff else 0.0
        worst = max(int(d.max()) for d in diff) if diff else 0
        print(f"  {name:<12} {r:8.0f} img/s, in 2 threads at once {two[name]:8.0f}   "
              f"against torchvision's pixels: mean "
              f"{mean:.3f} levels, worst {worst}, shapes {'equal' if same_shape else 'DIFFER'}"
              + (f", {refused} files REFUSED" if refused else ""))
        ok &= same_shape and mean <= 1.0 and not refused
    return ok


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
    names = libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root, args.images, val=1, workers=os.cpu_count() or 1,
                    unique=min(args.images, 512))
        files = [torch.frombuffer(read_file(p), dtype=torch.uint8)
                 for p in sorted((root / "train").rglob("*.JPEG"))]
    made: dict[bytes, torch.Tensor] = {}  # the distinct photos' squares, repeated as they are
    squares = [made[b] if b in made else made.setdefault(b, square(f))
               for f in files for b in [bytes(f.numpy())]]
    ok = compare("500x375 JPEGs", files, names, args.batch_size, device)
    ok &= compare("256 px centre squares (zfnet shards --square)", squares, names,
                  args.batch_size, device)
    print("codec check: " + ("pass" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
