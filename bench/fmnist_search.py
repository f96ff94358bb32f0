"""Screen Fashion-MNIST recipes fast on a GPU: many short trainings side by side, each scored on
the test set with the paper's 10 crops (corners 1 px off centre, as `bench/fmnist_recipe.sh`).

What a CPU session can try is one 20-minute training at a time; a lent GPU runs dozens in the same
minutes. This script trains `zfnet_small` (or any registered model) the way `zfnet train` does, with
zfnet's own model, SGD parameter groups, lr schedule, label smoothing and EMA, but keeps the whole
dataset on the device and draws each batch's crops and flips there in one gather (the trainer's
own `gather_crops`, the same distribution as its per-sample crops: 28 px of the 32 px image padded
by 2, flipped with p = 1/2, minus the mean image; other random numbers, so runs are not bit-equal
to `zfnet train`'s). The test set is scored by `zfnet eval`'s own `evaluate`.
Matrix products and convolutions run in float32 without TF32 (as a CPU without bf16 trains) unless
`--tf32`.

A screen says which recipe is worth a 20-minute run on the CPU; the figure that counts is that run's
(`bench/fmnist_recipe.sh`). Give each run the epochs that CPU fits in its budget: `epochs`, run on
that CPU, times each line's model there and writes them into the grid. It times the training step
alone: the loader's share of a real run is larger for a faster model, so it overstates a faster
model's epochs (on a Zen 3, conv1 at 16 maps timed 1.38x the step rate of 32 maps but trained
1.23x the epochs of it within `--time-budget 18.5m`).

    # one run
    python bench/fmnist_search.py run --epochs 20 --batch-size 128 --lr 0.08 \\
        --model-opt strides=1,2,1,1,1 --json /tmp/r.json
    # on the CPU: each line's epochs in its 20 minutes ("name: options" per line of FILE)
    python bench/fmnist_search.py epochs FILE --write FILE2
    # on the GPU: every line, N processes at a time
    python bench/fmnist_search.py grid FILE2 --parallel 8 --out DIR
    # dry run on the CPU: 2000 training and 1000 test images
    python bench/fmnist_search.py run --device cpu --n-train 2000 --n-test 1000 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import zfnet
from zfnet.data import load_dataset
from zfnet.data.transforms import TensorImages, collate, gather_crops
from zfnet.train import parse_model_opt
from zfnet.train.ema import make_ema
from zfnet.train.recipe import build_scheduler, evaluate, param_groups, resolve_config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
TRAIN_IMAGES = 60_000

# What every run starts from: `bench/fmnist_recipe.sh`'s budget form as it was before this screen
# (conv1 at 32 maps, lr 0.08, 2-px shifts; the screen moved the script to 16 maps, lr 0.05, 1 px).
# The lines of bench/grids/fmnist_zen3.txt are written against these defaults.
DEFAULTS = dict(model="zfnet_small", batch_size=128, lr=0.08, weight_decay=1e-3,
                label_smoothing=0.1, schedule="cosine", epochs=20)
BASE_OPTS = ("batchnorm=true", "dropout=0", "conv_widths=32,96,160,160,128",
             "strides=1,2,1,1,1")


def run_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fmnist_search.py run", description="One screening run.")
    ap.add_argument("--model", default=DEFAULTS["model"])
    ap.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                    help=f"model option, added to {' '.join(BASE_OPTS)} (a later one wins)")
    ap.add_argument("--epochs", type=float, default=DEFAULTS["epochs"],
                    help="epochs, may be fractional (the CPU's budgeted runs end mid-epoch)")
    ap.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--nesterov", action="store_true")
    ap.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    ap.add_argument("--norm-weight-decay", type=float, default=None)
    ap.add_argument("--label-smoothing", type=float, default=DEFAULTS["label_smoothing"])
    ap.add_argument("--schedule", default=DEFAULTS["schedule"], choices=["cosine", "linear"])
    ap.add_argument("--warmup-epochs", type=float, default=0.0)
    ap.add_argument("--ema", type=float, default=0.0)
    ap.add_argument("--pad", type=int, default=2, help="training crops' shift range (px)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=None, help="first N training images only")
    ap.add_argument("--n-test", type=int, default=None, help="first N test images only")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 (CUDA's default; off here)")
    ap.add_argument("--json", default=None, help="write the result here")
    return ap


def test_errors(model: torch.nn.Module, test: TensorImages) -> tuple[float, float]:
    """Top-1 error of the centre crop and of the paper's 10 crops, scored by `zfnet eval`'s own
    `evaluate` (softmax of the 10 crops averaged)."""
    errors = []
    for mode in ("centre", "ten_crop"):
        loader = DataLoader(test.with_mode(mode), batch_size=500, collate_fn=collate)
        errors.append(evaluate(model, loader, 10, channels_last=True)["top1_error"])
    return errors[0], errors[1]


def run(a: argparse.Namespace, argv: list[str]) -> dict:
    """Train the recipe of `a` (`run_parser`'s options, given as `argv`); its test errors, train
    loss/error of the last epoch and timings."""
    dev = torch.device(a.device)
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    opts = dict(parse_model_opt(o) for o in (*BASE_OPTS, *a.model_opt))
    config = resolve_config(
        data="fashion-mnist", model=a.model, out="-", model_opts=opts,
        epochs=max(1, math.ceil(a.epochs)), batch_size=a.batch_size, lr=a.lr,
        momentum=a.momentum, nesterov=a.nesterov, weight_decay=a.weight_decay,
        norm_weight_decay=a.norm_weight_decay, label_smoothing=a.label_smoothing,
        schedule=a.schedule, warmup_epochs=a.warmup_epochs, ema=a.ema, renorm=False,
        seed=a.seed, amp="off")
    spec = f"fashion-mnist?pad={a.pad}" + (f"&n_train={a.n_train}" if a.n_train else "")
    train = load_dataset(spec).train
    test = load_dataset("fashion-mnist?pad=1" + (f"&n_val={a.n_test}" if a.n_test else "")).val
    size = train.input_size
    xs, ys = train.images.to(dev), torch.as_tensor(train.targets, device=dev)
    mean = train.mean.to(dev)
    torch.manual_seed(config.seed)
    model = zfnet.create_model(config.model, num_classes=10, in_channels=1, input_size=size,
                               **config.model_opts).to(dev, memory_format=torch.channels_last)
    groups, _ = param_groups(model, config)
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    n = len(xs)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = round(a.epochs * steps_per_epoch)
    scheduler, _ = build_scheduler(optimizer, config, steps_per_epoch, total)
    ema = make_ema(model, config.ema) if config.ema else None
    gen = torch.Generator(device=dev).manual_seed(config.seed)
    full = xs.shape[-1]
    step, t0 = 0, time.perf_counter()
    loss_sum = torch.zeros((), device=dev)
    wrong = torch.zeros((), device=dev, dtype=torch.long)
    last_epoch_seen = 0
    while step < total:
        model.train()
        order = torch.randperm(n, device=dev, generator=gen)
        loss_sum.zero_(), wrong.zero_()
        last_epoch_seen = 0
        for i in range(0, n, config.batch_size):
            idx = order[i:i + config.batch_size]
            m = len(idx)
            tl = torch.randint(0, full - size + 1, (2, m), device=dev, generator=gen)
            flips = torch.rand(m, device=dev, generator=gen) < 0.5
            x = gather_crops(xs[idx], mean, tl[0], tl[1], flips, size)
            x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x)
            loss = F.cross_entropy(logits.float(), ys[idx], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            scheduler.step()
            loss_sum += loss.detach() * m
            wrong += (logits.detach().argmax(1) != ys[idx]).sum()
            last_epoch_seen += m
            step += 1
            if step == total:
                break
    loss_value = float(loss_sum) / last_epoch_seen
    if not math.isfinite(loss_value):
        raise SystemExit(f"loss is {loss_value}: this recipe diverged")
    train_s = time.perf_counter() - t0
    shown = ema.module if ema is not None else model
    centre, ten = test_errors(shown, test)
    return {"args": argv, "epochs": a.epochs, "steps": total, "train_loss": loss_value,
            "train_error": float(wrong) / last_epoch_seen, "test_error_centre": centre,
            "test_error_10crop": ten, "train_s": train_s, "device": str(dev),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def grid(argv: list[str]) -> int:
    """Run every line of a file ("name: run options"), `--parallel` at a time; print a table."""
    ap = argparse.ArgumentParser(prog="fmnist_search.py grid")
    ap.add_argument("file")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--out", required=True)
    ap.add_argument("--common", default="", help="options added to every line")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, [*opts, *shlex.split(a.common)]) for name, opts in read_grid(a.file)]
    running: list[tuple[str, subprocess.Popen, float]] = []
    failed = 0
    t0 = time.perf_counter()
    while jobs or running:
        while jobs and len(running) < a.parallel:
            name, opts = jobs.pop(0)
            cmd = [sys.executable, __file__, "run", *opts, "--json", str(out / f"{name}.json")]
            log = open(out / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=log), time.time()))
        time.sleep(0.5)
        for job in list(running):
            name, p, started = job
            if p.poll() is not None:
                running.remove(job)
                if p.returncode:
                    failed += 1
                    tail = (out / f"{name}.log").read_text()[-400:]
                    print(f"{name}: FAILED (exit {p.returncode}): {tail}", flush=True)
                    continue
                r = json.loads((out / f"{name}.json").read_text())
                print(f"{name:24s} epochs {r['epochs']:5.1f}  test 10-crop "
                      f"{100 * r['test_error_10crop']:5.2f}%  centre "
                      f"{100 * r['test_error_centre']:5.2f}%  train err "
                      f"{100 * r['train_error']:5.2f}%  {time.time() - started:5.0f} s "
                      f"(at {time.perf_counter() - t0:4.0f} s)", flush=True)
    return failed


def read_grid(path: str) -> list[tuple[str, list[str]]]:
    """The lines of a grid file as (name, options); "#" starts a comment."""
    jobs = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, opts = line.partition(":")
            jobs.append((name.strip(), shlex.split(opts)))
    return jobs


def epochs(argv: list[str]) -> int:
    """On the CPU that will train the recipe: each grid line's training-step rate and the epochs
    of Fashion-MNIST's 60,000 images that fit in `--budget`; `--write` saves the grid with them."""
    ap = argparse.ArgumentParser(prog="fmnist_search.py epochs")
    ap.add_argument("file")
    ap.add_argument("--budget", default="17.3m",
                    help="training time (default 17.3m: what `zfnet train --time-budget 18.5m` "
                         "spends on steps at this benchmark's rate, measured on a Zen 3)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", default=None, help="the grid with each line's --epochs set")
    a = ap.parse_args(argv)
    from common import hardware, sgd_step, timed  # bench/common.py

    from zfnet.memory import keep_freed_memory
    from zfnet.train.budget import parse_duration
    from zfnet.train.recipe import amp_dtype_for

    budget = parse_duration(a.budget)
    keep_freed_memory()  # as `zfnet train` does
    amp = amp_dtype_for("auto", torch.device("cpu"))  # what `zfnet train` picks on this CPU
    jobs = read_grid(a.file)
    # One timing per distinct model and batch: lines that differ in training options alone
    # (lr, seed, shifts, ...) share it, so they get the same epochs.
    keys: dict[str, tuple] = {}
    steps: dict[tuple, tuple] = {}
    for name, opts in jobs:
        r, _ = run_parser().parse_known_args(opts)
        kw = dict(parse_model_opt(o) for o in (*BASE_OPTS, *r.model_opt))
        key = keys[name] = (r.model, tuple(sorted((k, str(v)) for k, v in kw.items())),
                            r.batch_size)
        if key in steps:
            continue
        model = zfnet.create_model(r.model, num_classes=10, in_channels=1, input_size=28, **kw)
        model = model.to(memory_format=torch.channels_last).train()
        x = torch.randn(r.batch_size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (r.batch_size,))
        steps[key] = (sgd_step(model, x, y, amp), r.batch_size)
    rates: dict[tuple, list[float]] = {key: [] for key in steps}
    for _ in range(a.repeats):  # interleaved: a machine that slows down slows every model
        for key, (fn, batch) in steps.items():
            rates[key].append(batch / timed(fn, a.steps))
    print(f"{hardware()}; zfnet train here: {'bf16 autocast' if amp else 'float32'}; "
          f"{len(steps)} distinct models timed", flush=True)
    lines = []
    for name, opts in jobs:
        rate = statistics.median(rates[keys[name]])
        n_epochs = round(rate * budget / TRAIN_IMAGES, 1)
        print(f"{name:24s} {rate:7.0f} img/s  {n_epochs:5.1f} epochs in {a.budget}", flush=True)
        kept = [o for i, o in enumerate(opts)
                if o != "--epochs" and (i == 0 or opts[i - 1] != "--epochs")]
        lines.append(f"{name}: {shlex.join([*kept, '--epochs', str(n_epochs)])}")
    if a.write:
        Path(a.write).write_text("\n".join(lines) + "\n")
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "grid", "epochs"):
        print(__doc__)
        return 2
    if sys.argv[1] == "grid":
        return grid(sys.argv[2:])
    if sys.argv[1] == "epochs":
        return epochs(sys.argv[2:])
    a = run_parser().parse_args(sys.argv[2:])
    text = json.dumps(run(a, sys.argv[2:]), indent=1)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
