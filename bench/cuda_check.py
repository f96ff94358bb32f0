"""The CUDA paths, checked on a GPU machine: training (bf16 and fp16 autocast, channels_last), the
gpu loader (nvJPEG decoding against the CPU's inputs, training, a broken file, resume),
exact resume after SIGTERM, DDP over NCCL through torchrun (and two processes on one GPU
over gloo, against one process), evaluation (centre and 10 crops),
top-k mining, deconvnet projections and occlusion against the CPU, shards (`zfnet shards`,
then training, evaluation and mining from them with both loaders), a pretrained torchvision
network (the graph engine's three rules and bf16 against the CPU; `zfnet project`,
`visualize topk`, `analyze occlusion` and `analyze probes` with `--device`), and the speed of
the Fashion-MNIST recipe.

Every check runs the way a user would (the `zfnet` CLI in a subprocess, or the public API),
prints PASS/FAIL with its figures, and a failure does not stop the others. Run from the repo:

    PYTHONPATH=src python bench/cuda_check.py --out /tmp/cuda_check
    PYTHONPATH=src python bench/cuda_check.py --out /tmp/cuda_check --fmnist DIR --fmnist-epochs 26
    PYTHONPATH=src python bench/cuda_check.py --out /tmp/c --device cpu --data synthetic

The last line dry-runs the script without a GPU (the CPU against itself; no fp16 check;
add ?n_train=256 to the data spec for a quick one).

Exit status: the number of failed checks.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware, projection_agreement  # noqa: E402

ARGS = argparse.Namespace()
EPOCHS = 3
LAYERS = ["conv1", "conv3", "conv5"]
RESULTS: list[tuple[str, bool, str]] = []


def zfnet(*args: str, torchrun: int = 0, timeout: float = 600, one_device: bool = False) -> str:
    """Run the zfnet CLI (under torchrun with `torchrun` processes; with `one_device`, all of
    them on one device over gloo: `ddp_one_device.py`); its output, or raise. With
    --in-process (the CPU dry run's speed-up) a plain command runs in this process."""
    if ARGS.in_process and not torchrun:
        from click.testing import CliRunner

        from zfnet.cli import main as cli

        res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        if res.exit_code != 0:
            raise RuntimeError(f"zfnet {' '.join(args)} -> exit {res.exit_code}\n"
                               f"{res.output[-3000:]}")
        return res.output
    if torchrun:
        cli = ([str(Path(__file__).with_name("ddp_one_device.py"))] if one_device
               else ["-m", "zfnet.cli"])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={torchrun}", *cli, *args]
    else:
        cmd = [sys.executable, "-m", "zfnet.cli", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> exit {p.returncode}\n{p.stdout[-3000:]}\n"
                           f"{p.stderr[-3000:]}")
    return p.stdout + p.stderr


def metrics(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def logged(run: Path) -> int:
    """Epochs in the run's metrics.csv so far (0 while it is missing or being written)."""
    try:
        return len(metrics(run))
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """CUDA matrix products and convolutions in full float32 (TF32 off) inside the block."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def check(name: str, fn: Callable[[], str]) -> None:
    if ARGS.only and not any(word in name for word in ARGS.only):
        return
    t = time.perf_counter()
    try:
        detail, ok = fn(), True
    except Exception:  # noqa: BLE001 - every check reports, none stops the others
        detail, ok = traceback.format_exc(limit=6), False
    dt = time.perf_counter() - t
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'} {name} ({dt:.1f} s): {detail}", flush=True)


def train_args(out: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    # 4 workers feed a GPU; the CPU's dry run reads in-process (2 cores: forking 4 workers
    # each epoch took longer than the epoch)
    workers = "4" if ARGS.device == "cuda" else "0"
    return ["train", "--data", ARGS.data, "--model", "zfnet_small", "--out", str(out),
            "--epochs", str(epochs), "--batch-size", "64", "--lr", "0.02", "--schedule",
            "cosine", "--device", ARGS.device, "--workers", workers, "--quiet", *extra]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="scratch directory for the runs")
    ap.add_argument("--fmnist", default=None, help="Fashion-MNIST directory (skip if absent)")
    ap.add_argument("--fmnist-epochs", type=int, default=26)
    ap.add_argument("--data", default="synthetic?n_train=3000&n_val=500")
    ap.add_argument("--only", nargs="*", default=[],
                    help="run only the checks whose name holds one of these words")
    ap.add_argument("--device", default="cuda",
                    help="cuda; cpu only to dry-run this script (compares the CPU with itself)")
    ap.add_argument("--in-process", action="store_true",
                    help="run the zfnet commands in this process, not each in its own (the "
                         "dry run's speed-up: no start-up per command; torchrun still spawns)")
    args = ap.parse_args()
    vars(ARGS).update(vars(args))
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: nothing to check")
        return 1
    print(hardware(), flush=True)
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def bf16() -> str:
        from zfnet.train.checkpoint import read_train_state, resolve_checkpoint

        zfnet(*train_args(out / "bf16"))
        rows = metrics(out / "bf16")
        cfg = json.loads((out / "bf16" / "config.json").read_text())
        state = read_train_state(resolve_checkpoint(out / "bf16"))
        assert all(math.isfinite(r["train_loss"]) for r in rows), rows
        return (f"device {cfg['device']}, amp {cfg['amp']}; val error by epoch "
                f"{[round(r['val_top1_error'], 3) for r in rows]}, "
                f"{rows[-1]['img_per_s']:.0f} img/s (last epoch), saved CUDA RNG: "
                f"{bool(state['rng'].get('cuda'))}")

    def resume() -> str:
        # SIGTERM once the first epoch is logged (the run saves mid-epoch 2), then --resume
        cut = out / "cut"
        cmd = [sys.executable, "-m", "zfnet.cli", *train_args(cut, epochs=EPOCHS)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None and logged(cut) < 1:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 143, (proc.returncode, log[-2000:])
        stopped = len(metrics(cut))
        zfnet(*train_args(cut, "--resume", epochs=EPOCHS))
        a, b = metrics(out / "bf16"), metrics(cut)
        keys = ("train_loss", "val_loss", "val_top1_error")
        diffs = {k: max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True)) for k in keys}
        assert len(a) == len(b) == EPOCHS
        assert diffs["train_loss"] < 2e-3 and diffs["val_loss"] < 2e-3, diffs
        return (f"SIGTERM after {stopped} epoch(s), resumed: max |uninterrupted - resumed| "
                + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))

    def fp16() -> str:
        zfnet(*train_args(out / "fp16", "--amp", "fp16", epochs=1))
        r = metrics(out / "fp16")[-1]
        assert math.isfinite(r["train_loss"]) and r["val_top1_error"] < 0.9, r
        return f"val error {r['val_top1_error']:.3f}, {r['img_per_s']:.0f} img/s"

    def ddp() -> str:
        zfnet(*train_args(out / "ddp", "--ema", "0.99", epochs=1), torchrun=1)
        r = metrics(out / "ddp")[-1]
        assert math.isfinite(r["train_loss"]), r
        backend = "NCCL" if dev == "cuda" else "gloo"
        return f"torchrun 1 process, {backend}: val error {r['val_top1_error']:.3f}"

    def ddp_one_gpu() -> str:
        # two processes with half the batch each == one process with all of it (no dropout):
        # DDP's CUDA paths, and the per-step agreement on CUDA tensors, without a second GPU
        device = "cuda:0" if dev == "cuda" else "cpu"
        runs = {n: out / f"ddp_one_{n}" for n in (1, 2)}
        for n, run in runs.items():
            args = train_args(run, "--model-opt", "dropout=0", "--amp", "off", epochs=2)
            args[args.index("--device") + 1] = device
            args[args.index("--workers") + 1] = "2" if dev == "cuda" else "0"
            t = time.perf_counter()
            zfnet(*args, torchrun=n if n > 1 else 0, one_device=n > 1)
            runs[n] = (metrics(run), time.perf_counter() - t)
        (one, t1), (two, t2) = runs[1], runs[2]
        keys = ("train_loss", "val_loss", "val_top1_error")
        diffs = {k: max(abs(a[k] - b[k]) for a, b in zip(one, two, strict=True)) for k in keys}
        assert len(one) == len(two) == 2, (one, two)
        assert diffs["train_loss"] < 2e-2 and diffs["val_loss"] < 5e-2, diffs
        return (f"2 processes on {device} over gloo vs 1 with the global batch, --amp off: max "
                + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
                + f"; {t2:.0f} s vs {t1:.0f} s")

    def evaluation() -> str:
        from zfnet.train import evaluate_checkpoint

        run = str(out / "bf16")
        res = {}
        for d, amp in (("cpu", "off"), (dev, "off"), (dev, "auto")):
            for ten in (False, True):
                t = time.perf_counter()
                # 4 workers feed a GPU; the CPU dry run reads in-process (2 cores)
                r = evaluate_checkpoint(run, None, ten, device=d, amp=amp,
                                        workers=4 if dev == "cuda" else 0)
                res[d, amp, ten] = (r, time.perf_counter() - t)
        lines = []
        for ten in (False, True):
            ref = res["cpu", "off", ten][0]
            for key in ((dev, "off", ten), (dev, "auto", ten)):
                r, dt = res[key]
                dl, de = abs(r["loss"] - ref["loss"]), abs(r["top1_error"] - ref["top1_error"])
                tol = (1e-3, 0.005) if key[1] == "off" else (2e-2, 0.02)
                assert dl < tol[0] and de <= tol[1], (key, dl, de)
                lines.append(f"{'10-crop' if ten else 'centre'} {dev}/{key[1]}: |dloss| "
                             f"{dl:.1e}, |derr| {de:.4f}, {dt:.1f} s")
        return "; ".join(lines)

    cache: dict[str, object] = {}

    def inputs() -> tuple[torch.nn.Module, torch.utils.data.Dataset, dict]:
        """The bf16 check's model, 256 val images, and their top-9 mined on the CPU."""
        if not cache:
            from torch.utils.data import Subset

            from zfnet.analyses.topk import mine_topk
            from zfnet.data import load_dataset
            from zfnet.train import load_model

            net, _ = load_model(out / "bf16")
            val = load_dataset(args.data).val
            data = Subset(val, range(min(256, len(val))))
            cache.update(net=net, data=data, topk=mine_topk(net, data, LAYERS, 9))
        return cache["net"], cache["data"], cache["topk"]  # type: ignore[return-value]

    def mining() -> str:
        from zfnet.analyses.topk import mine_topk

        net, data, cpu = inputs()
        gpu = mine_topk(net.to(dev), data, LAYERS, 9)
        worst, same = 0.0, []
        for name in LAYERS:
            a, b = cpu[name], gpu[name]
            worst = max(worst, float((a.values - b.values.cpu()).abs().max()))
            same.append((a.index == b.index.cpu()).float().mean().item())
        assert min(same) > 0.95 and worst < 1e-2, (same, worst)
        return (f"{'/'.join(LAYERS)} top-9 over {len(data)} images: max |value diff| "
                f"{worst:.1e}, same images {min(same):.1%}")

    def projection() -> str:
        from zfnet.analyses.gallery import project_topk

        net, data, top = inputs()
        maps = {name: range(8) for name in LAYERS}
        pc = project_topk(net.cpu(), data, top, maps)

        def agreement() -> tuple[float, float]:
            return projection_agreement(pc, project_topk(net.to(dev), data, top, maps))

        tf32 = agreement()  # CUDA's default: convolutions in TF32
        with tf32_off():
            fp32 = agreement()
        # A near-tie in a pooling window may pick another switch on another device. On the
        # CPU, weights x (1 + 1e-6 noise) leave 99% of such projections within 1e-3 and move
        # a few by up to 0.8% of the layer's max (bench/switch_sensitivity.py); a wrong switch
        # or filter would move them all.
        assert fp32[0] >= 0.9, fp32
        return (f"8 maps/layer x 9: {fp32[0]:.1%} agree within 1e-3 in float32 (largest diff "
                f"{fp32[1]:.1e} of the layer's max); with TF32 (the default) {tf32[0]:.1%}, "
                f"{tf32[1]:.1e}")

    def occluded() -> str:
        from zfnet.analyses.occlusion import occlusion

        net, data, _ = inputs()
        image = data[0][0]
        oc = occlusion(net.cpu(), image, size=16, stride=4)
        with tf32_off():
            og = occlusion(net.to(dev), image.to(dev), size=16, stride=4)
        dp = float((oc.probability - og.probability.cpu()).abs().max())
        assert dp < 1e-3 and oc.feature_map == og.feature_map, (dp, oc.feature_map)
        return f"incremental occlusion, 16 px / 4 px: p(target) max diff {dp:.1e}"

    def jpegs() -> Path:
        """A folder of 96 + 24 ImageNet-shaped JPEGs in 3 classes (the CPU's dry run: 48 + 12,
        3 batches of 16 an epoch) and one broken file (made once, shared by the checks that
        read it)."""
        from common import make_folder

        folder = out / "jpegs"
        if not folder.is_dir():
            n, val = (96, 24) if dev == "cuda" else (48, 12)
            make_folder(folder, n, 3, val=val, workers=os.cpu_count() or 1)
            (folder / "train" / "class000" / "broken.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
        return folder

    def resumed(name: str, args_: list[str]) -> tuple[list[dict[str, float]], float]:
        """Train 2 epochs with `args_`, and 1 epoch then --resume to 2: the uninterrupted run's
        metrics and the largest loss difference between the two (asserted < 2e-3)."""
        ref, cut = out / f"{name}-ref", out / f"{name}-cut"
        zfnet("train", "--out", str(ref), "--epochs", "2", *args_)
        zfnet("train", "--out", str(cut), "--epochs", "1", *args_)
        zfnet("train", "--out", str(cut), "--epochs", "2", "--resume", "--quiet")
        a, b = metrics(ref), metrics(cut)
        diff = max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True)
                   for k in ("train_loss", "val_loss"))
        assert diff < 2e-3 and len(a) == 2, (name, diff, a)
        return a, diff

    def shards() -> str:
        # `zfnet shards` of the gpu loader's folder (its broken file left out and listed), then
        # training from them with each loader (resumed exactly), evaluation and mining
        folder = jpegs()
        zfnet("shards", f"imagefolder:{folder}", "--out", str(out / "shards"))
        manifest = json.loads((out / "shards" / "manifest.json").read_text())
        assert manifest["splits"]["train"]["skipped"] == ["train/class000/broken.JPEG"], manifest
        data = f"shards:{out / 'shards'}?size=64"
        lines = []
        for loader in ("gpu", "cpu") if dev == "cuda" else ("gpu",):  # the dry run: one
            a, diff = resumed(f"sh-{loader}", [
                "--data", data, "--model", "zfnet_small", "--batch-size", "16", "--device", dev,
                "--loader", loader, "--quiet"])
            lines.append(f"{loader} loader: {a[-1]['img_per_s']:.0f} img/s, resumed run max "
                         f"loss diff {diff:.1e}")
        text = zfnet("eval", "--checkpoint", str(out / "sh-gpu-ref"), "--ten-crop",
                     "--device", dev)
        zfnet("visualize", "topk", "--checkpoint", str(out / "sh-gpu-ref"), "--data", data,
              "--layer", "conv1,conv5", "--maps-per-layer", "2", "--device", dev, "--out",
              str(out / "sh-topk"))
        assert any(out.joinpath("sh-topk").rglob("*.png")), "no top-k figure"
        return (f"{manifest['splits']['train']['count']} + {manifest['splits']['val']['count']} "
                f"samples, the broken file listed; {'; '.join(lines)}; 10-crop eval: "
                f"{next(t for t in text.splitlines() if 'top-1' in t)}; top-k figures written")

    def any_cnn() -> str:
        # a torchvision network (random weights saved as a file: no download) through the graph
        # engine on the device against the CPU, then the commands a user runs with --device
        import torchvision
        from skimage import data as photos

        from zfnet.deconvnet import project

        torch.manual_seed(0)
        net = torchvision.models.resnet18().eval()
        weights = out / "resnet18.pth"
        torch.save(net.state_dict(), weights)
        gpu = dev == "cuda"  # the dry run (the CPU against itself) at small sizes
        side, n, k = (224, 4, 8) if gpu else (64, 2, 2)
        x = torch.randn(n, 3, side, side)
        maps = torch.arange(k).repeat(n, 1)  # (n, k): k maps of every image
        lines = []
        # Each device's float32 against float64 on the CPU: the device must agree about as well
        # as the CPU's own float32 does (10 points fewer within 1e-3 at most, the worst at most
        # twice as far). Guided backprop and the gradient deep in a random network flip masks
        # at values near 0 in float32 on any device: at layer4.1 the CPU's float32 has 28 of
        # 32 projections within 1e-3 of float64's, the worst 1.3% off.
        for layer in ("layer3", "layer4.1"):
            for rule in ("deconvnet", "guided", "gradient"):
                exact = project(net.cpu().double(), x.double(), layer, maps, rule=rule).float()
                net.float()
                a = project(net, x, layer, maps, rule=rule)
                with tf32_off():
                    b = project(net.to(dev), x.to(dev), layer, maps.to(dev), rule=rule).cpu()
                net.cpu()
                cpu_share, cpu_worst = projection_agreement({layer: exact}, {layer: a})
                share, worst = projection_agreement({layer: exact}, {layer: b})
                assert share >= cpu_share - 0.1 and \
                    worst <= max(2 * cpu_worst, 1e-3), (layer, rule, share, worst, cpu_share,
                                                        cpu_worst)
                lines.append(f"{layer}/{rule} {share:.0%} within 1e-3 of float64 (the CPU's "
                             f"float32: {cpu_share:.0%})")
        ref = project(net.to(dev), x.to(dev), "layer3", maps.to(dev))
        low = project(net.to(dev), x.to(dev), "layer3", maps.to(dev), precision="bfloat16")
        cos = float(torch.nn.functional.cosine_similarity(ref.flatten(1).float(),
                                                          low.flatten(1).float()).min())
        assert cos > 0.99, cos
        folder = out / "photos"
        folder.mkdir(exist_ok=True)
        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            from PIL import Image

            Image.fromarray(getattr(photos, name)()).save(folder / f"{name}.jpg", quality=92)
        model = ["--model", "torchvision:resnet18", "--weights", str(weights),
                 *([] if gpu else ["--resize", "72", "--crop", "64"])]
        found = {}
        for d in dict.fromkeys(("cpu", dev)):  # the dry run: once
            zfnet("project", str(folder), *model, "--layer", "layer3", "--top", "2",
                  "--device", d, "--out", str(out / f"project-{d}"))
            found[d] = json.loads((out / f"project-{d}" / "project.json").read_text())["units"]
        same = [(u["channel"], u["row"], u["col"]) == (v["channel"], v["row"], v["col"])
                for u, v in zip(found["cpu"], found[dev], strict=True)]
        rel = max(abs(u["activation"] - v["activation"]) / max(abs(u["activation"]), 1e-6)
                  for u, v in zip(found["cpu"], found[dev], strict=True))
        assert sum(same) >= 0.9 * len(same) and rel < 2e-2, (same, rel)
        data = ["--data", f"images:{folder}"]
        zfnet("visualize", "topk", *model, *data, "--layer", "layer2,layer4", "--k", "3",
              "--maps-per-layer", "2", "--device", dev, "--out", str(out / "r18-topk"))
        zfnet("analyze", "occlusion", *model, *data, "--images", "2", "--size", "32",
              "--stride", "16" if gpu else "32", "--device", dev, "--out", str(out / "r18-occ"))
        zfnet("analyze", "probes", *model, "--data", "synthetic?n_train=40&n_val=20",
              "--per-class", "2", "--device", dev, "--out", str(out / "r18-probes"))
        return (f"graph engine vs float64 (TF32 off): {', '.join(lines)}; bf16 vs float32 cosine "
                f">= {cos:.4f}; zfnet project cpu vs {dev}: {sum(same)}/{len(same)} same units, "
                f"activations within {rel:.1e}; visualize topk, analyze occlusion and probes "
                f"ran on {dev}")

    def gpu_loader() -> str:
        # --loader gpu (decode_batch on the device) against the per-item CPU inputs, then a
        # run that trains with it, skips a broken file and resumes exactly at an epoch boundary
        from zfnet.data import codec, load_dataset
        from zfnet.data.batches import BatchInputs, DeviceBatches
        from zfnet.data.loaders import collate_for
        from zfnet.train.recipe import SeededSamples

        folder = jpegs()
        bundle = load_dataset(f"imagefolder:{folder}")  # 224 px: no DCT scaling on the CPU
        data = f"imagefolder:{folder}?size=64"  # to train on
        worst = {}
        for mode, ds in (("train", bundle.train), ("centre", bundle.val),
                         ("ten_crop", bundle.val.with_mode("ten_crop"))):
            def inputs(form: str, device: str, ds=ds, mode=mode, share=0.0) -> torch.Tensor:
                d = ds if form == "float" else ds.with_form(form)  # (a copy)
                if share:
                    d.host_share = share  # --loader mixed: the workers decode that share
                idx = list(range(len(d)))
                items = (SeededSamples(d, 0).__getitems__(idx) if mode == "train"
                         else [d[i] for i in idx])
                x, _ = DeviceBatches._hand_on(BatchInputs(d, device)(collate_for(d)(items)))
                return x.float().cpu()
            a, b = inputs("float", "cpu"), inputs("encoded", dev)
            m = inputs("encoded", dev, share=0.5)  # mixed: half of them as the cpu's
            assert a.shape == b.shape == m.shape, (mode, a.shape, b.shape, m.shape)
            worst[mode] = round(float((a - b).abs().mean()), 3)
            worst[f"{mode} mixed"] = round(float((a - m).abs().mean()), 3)
            assert max(worst.values()) < 2.0, worst
        # the threads that make the device's batches (ZFNET_DEVICE_THREADS), each on a stream
        # of its own: the inline batches, in their order, to the bit
        from torch.utils.data import DataLoader

        enc = SeededSamples(bundle.train.with_form("encoded"), 0)
        loader = DataLoader(enc, batch_size=8, collate_fn=collate_for(enc.dataset))
        made = BatchInputs(enc.dataset, dev)
        inline = [(x.cpu(), y.cpu()) for x, y in DeviceBatches(loader, made)]
        for threads in (1, 2, 3):
            ahead = [(x.cpu(), y.cpu()) for x, y in DeviceBatches(loader, made, prefetch=2,
                                                                   threads=threads)]
            assert len(ahead) == len(inline) and all(
                torch.equal(a, c) and torch.equal(b, d)
                for (a, b), (c, d) in zip(inline, ahead, strict=True)), threads
        lines = [f"1-3 threads give the inline batches ({len(inline)})"]
        # the cpu loader's workers hand their windows over in slots of shared memory
        # (zfnet.data.slots), copied to page-locked memory and released on the way: the
        # batches the main process makes itself, to the bit
        pix = SeededSamples(bundle.train.with_form("pixels"), 0)
        pixels = BatchInputs(pix.dataset, dev)
        made_here, from_slots = (
            [(x.cpu(), y.cpu()) for x, y in DeviceBatches(
                DataLoader(pix, batch_size=8, num_workers=w, collate_fn=collate_for(pix.dataset),
                           pin_memory=w > 0), pixels, prefetch=2 * t, threads=t)]
            for w, t in ((0, 0), (2, 1)))
        assert len(from_slots) == len(made_here) and all(
            torch.equal(a, c) and torch.equal(b, d)
            for (a, b), (c, d) in zip(made_here, from_slots, strict=True))
        lines.append(f"windows from 2 workers' slots: the main process's batches "
                     f"({len(made_here)})")
        for loader in ("gpu", "mixed"):
            a, diff = resumed(f"gl-{loader}", [
                "--data", data, "--model", "zfnet_small", "--batch-size", "16", "--device", dev,
                "--loader", loader, "--quiet"])
            assert [r["skipped"] for r in a] == [1.0, 1.0], a
            lines.append(f"{loader}: resumed run max loss diff {diff:.1e}, "
                         f"{a[-1]['img_per_s']:.0f} img/s")
        return (f"decoded by {codec.device_decoder(dev)} in {codec.device_threads(dev)} "
                f"thread(s); "
                f"mean |gpu loader - cpu inputs| by mode {worst} (levels of 255); "
                f"{'; '.join(lines)}; broken file skipped each epoch")

    check("train on CUDA, bf16 autocast, channels_last", bf16)
    check("--loader gpu and mixed: nvJPEG inputs (its device decoder's) vs the CPU's, train, "
          "skip, resume",
          gpu_loader)
    check("shards: write, train with each loader, resume, evaluate, mine", shards)
    check("any CNN: torchvision resnet18 on CUDA vs CPU, and its commands", any_cnn)
    check("resume on CUDA equals the uninterrupted run", resume)
    if dev == "cuda":
        check("train on CUDA, fp16 autocast + GradScaler", fp16)
    check("DDP over NCCL through torchrun, with --ema", ddp)
    check("DDP: two processes on one GPU over gloo match one process", ddp_one_gpu)
    check("evaluate on CUDA vs CPU (centre, 10 crops; fp32 and bf16)", evaluation)
    check("top-k mining on CUDA vs CPU", mining)
    check("deconvnet projections on CUDA vs CPU", projection)
    check("occlusion on CUDA vs CPU", occluded)
    if args.fmnist and os.path.isdir(args.fmnist):
        def fmnist() -> str:
            run = out / "fmnist"
            t = time.perf_counter()
            zfnet("train", "--data", f"fashion-mnist:{args.fmnist}", "--model", "zfnet_small",
                  "--model-opt", "strides=1,1,1,1,1", "--model-opt", "batchnorm=true",
                  "--model-opt", "dropout=0.25", "--out", str(run), "--epochs",
                  str(args.fmnist_epochs), "--batch-size", "64", "--lr", "0.04",
                  "--weight-decay", "5e-4", "--label-smoothing", "0.1", "--schedule", "cosine",
                  "--no-renorm", "--ema", "0.999", "--workers", "6", "--quiet")
            wall = time.perf_counter() - t
            r = metrics(run)
            t = time.perf_counter()
            ten = zfnet("eval", "--checkpoint", str(run), "--ten-crop")
            return (f"{args.fmnist_epochs} epochs in {wall:.0f} s "
                    f"({statistics.median(x['img_per_s'] for x in r):.0f} img/s median), "
                    f"val error {r[-1]['val_top1_error']:.4f}; 10-crop eval "
                    f"{time.perf_counter() - t:.0f} s: {ten.strip().splitlines()[-3:]}")
        check("Fashion-MNIST recipe on CUDA", fmnist)
    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)}/{len(RESULTS)} passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return len(failed)


if __name__ == "__main__":
    raise SystemExit(main())
