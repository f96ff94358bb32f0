"""The paper's training recipe (Sec. 3) as `train_one_epoch`, `evaluate` and `train`.

SGD (lr 1e-2, momentum 0.9, batch 128), dropout 0.5 (the model's), after every step each conv
filter with RMS > 0.1 is rescaled to 0.1, lr / 10 when the validation error plateaus. Around it:
exact resume, atomic checkpoints, SIGTERM/SIGINT handling, NaN stop, DDP, AMP and logs.

Exactness of `--resume`: the data order depends only on (seed, epoch) (`ResumableSampler`), the
augmentation of a sample only on (seed, epoch, index) (`SeededSamples`), and dropout on the
torch RNG, whose state (per process) is saved in every checkpoint, as are the optimizer, scheduler
and sampler states. A run resumed from any checkpoint, also one written mid-epoch after SIGTERM,
computes the same losses as the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

import zfnet
from zfnet.data import collate
from zfnet.data.transforms import CropDataset, random_crop_params
from zfnet.models import eval_mode
from zfnet.train import checkpoint as ckpt
from zfnet.train import distributed as ddp
from zfnet.train.budget import Plan, plan_steps
from zfnet.train.config import IDENTITY_FIELDS, TrainConfig
from zfnet.train.ema import make_ema
from zfnet.train.logs import TensorBoard, write_metrics_csv
from zfnet.train.metrics import confusion_matrix, topk_correct
from zfnet.train.renorm import renormalize_filters

if TYPE_CHECKING:
    from torch.optim.swa_utils import AveragedModel

    from zfnet.data import DataBundle

# Exit codes of `zfnet train` after SIGINT / SIGTERM: the shell convention 128 + signal number,
# so that schedulers see "terminated", although a checkpoint was saved and `--resume` continues.
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the epoch and step and the last good
    checkpoint (which is kept)."""


# --- determinism helpers ---

class SeededSamples(Dataset):
    """Wraps a training set so that the random augmentation of sample i in epoch e depends only
    on (seed, e, i): not on the process, the worker, the batch split or where a run resumed.

    The global RNGs the dataset draws from (`dataset_rngs`: torch only for zfnet's datasets;
    torch, `random` and numpy for others) are seeded for the duration of one `__getitem__` and
    restored afterwards, so that the training loop's own RNG (dropout) is not disturbed. (Saving
    and restoring numpy's state costs ~70 us per sample: 15% of a Fashion-MNIST epoch.)
    `erasing` > 0: after the dataset's crop and flip, torchvision's `RandomErasing` with that
    probability blanks a random rectangle to 0, the mean image (Zhong et al. 2017).
    """

    def __init__(self, dataset: Dataset, seed: int, erasing: float = 0.0) -> None:
        self.dataset = dataset
        self.rngs = dataset_rngs(dataset)
        self.seed = seed
        self.epoch = 0
        self.erase = None
        if erasing > 0:
            from torchvision.transforms import v2

            self.erase = v2.RandomErasing(p=erasing, value=0.0)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def sample_seed(self, i: int) -> int:
        """The seed of sample i's augmentation in the current epoch."""
        return ((self.seed * 1_000_003 + self.epoch) * 2_147_483_647 + int(i)) % (2**63 - 1)

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """A batch (the DataLoader's fetcher calls this when it exists): the same items as
        `self[i]` for each i. For a `CropDataset` in "train" mode without random erasing, the
        crops are drawn from a private generator seeded the same way (the same draws, without
        saving and restoring torch's global RNG per sample) and cut in one `train_items`
        call: 0.82 s instead of 1.22 s per Fashion-MNIST epoch here (bench/bench_loader.py)."""
        data = self.dataset
        if not (isinstance(data, CropDataset) and data.mode == "train" and self.erase is None):
            return [self[i] for i in indices]
        gen = torch.Generator()
        full, size = data.full_size, data.input_size
        params = []
        for i in indices:
            gen.manual_seed(self.sample_seed(i))
            params.append(random_crop_params(full, full, size, gen))
        return data.train_items(indices, params)

    def __getitem__(self, i: int) -> Any:
        s = self.sample_seed(i)
        py_state = random.getstate() if "python" in self.rngs else None
        np_state = np.random.get_state() if "numpy" in self.rngs else None
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: `torch.manual_seed` also queues lazy CUDA seeding, which
            # records a Python stack per call (measured: half of a Fashion-MNIST epoch).
            torch.default_generator.manual_seed(s)
            if py_state is not None:
                random.seed(s)
            if np_state is not None:
                np.random.seed(s % 2**32)
            try:
                item = self.dataset[i]
                if self.erase is not None and item is not None:
                    item = (self.erase(item[0]), *item[1:])  # torchvision: torch's RNG
                return item
            finally:
                if py_state is not None:
                    random.setstate(py_state)
                if np_state is not None:
                    np.random.set_state(np_state)


ALL_RNGS = ("torch", "python", "numpy")


def dataset_rngs(dataset: Dataset) -> tuple[str, ...]:
    """The global RNGs that `dataset[i]` draws from: its `global_rngs` attribute (looking through
    `Subset`s), or all of torch, python and numpy when it does not say. (torch's CPU generator is
    seeded per sample in any case: it is cheap.)"""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    rngs = tuple(getattr(dataset, "global_rngs", ALL_RNGS))
    unknown = set(rngs) - set(ALL_RNGS)
    if unknown:
        raise ValueError(f"{type(dataset).__name__}.global_rngs={rngs!r}: {sorted(unknown)} "
                         f"unknown; valid: {', '.join(ALL_RNGS)}")
    return rngs


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an `--amp` mode on `device` (None: full precision)."""
    if amp == "off":
        return None
    if amp == "auto":
        # CUDA: bf16 where supported, else fp16. CPU: bf16 only with native bf16 instructions
        # (AVX512-BF16 / AMX); measured on such a CPU, zfnet_small at 64 px trains ~1.5x faster
        # per core with bf16 autocast and reaches the same errors. Emulated bf16 is slower.
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; on the CPU use amp='bf16'")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def cpu_has_native_bf16() -> bool:
    """Does this CPU compute bf16 natively (AVX512-BF16 or AMX)?"""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(f()) for f in (getattr(torch.cpu, p, None) for p in probes) if f is not None)


@contextmanager
def _stop_on_signals(flag: dict[str, int | None]) -> Iterator[None]:
    """SIGTERM / SIGINT set `flag["signal"]` instead of killing: the loop finishes its step,
    saves and returns. A second SIGINT interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class EpochState:
    """What one process needs to run one training epoch."""

    epoch: int  # 0-based
    epochs: int
    start_step: int = 0
    global_step: int = 0
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    renorm_radius: float | None = 0.1
    label_smoothing: float = 0.0
    first_radius: float | None = None  # radius of the first conv layer (preconditioning)
    step_scheduler: Any = None  # stepped after every optimizer step (cosine, linear, onecycle)
    end_step: int | None = None  # stop this epoch after this step (a budgeted run's last epoch)
    channels_last: bool = False
    ema: AveragedModel | None = None  # updated from `ema_source` after every optimizer step
    ema_source: nn.Module | None = None
    stop: dict[str, int | None] = field(default_factory=lambda: {"signal": None})
    progress: bool = False
    tb: TensorBoard | None = None


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    st: EpochState,
    info: ddp.DistInfo,
) -> dict[str, float]:
    """One pass over `loader` (from step `st.start_step`): forward, cross-entropy, backward, SGD
    step, filter renormalisation (Sec. 3). Stops early, after a complete step, when a signal
    arrived. Raises `NonFiniteLossError` on a NaN/inf loss, before the weights are updated.

    Returns sums over this process: loss_sum, correct, seen, steps (the step index reached),
    interrupted (1.0 / 0.0).
    """
    model.train()
    dev = info.device
    fmt = torch.channels_last if st.channels_last else torch.contiguous_format
    loss_sum = correct = seen = 0.0
    step = st.start_step
    interrupted = False
    t0 = time.perf_counter()
    total = st.start_step + len(loader)
    bar = tqdm(total=total if st.end_step is None else min(total, st.end_step),
               initial=st.start_step, unit="batch",
               desc=f"epoch {st.epoch + 1}/{st.epochs}", leave=False, dynamic_ncols=True,
               disable=not (st.progress and info.is_main))
    try:
        for x, y in loader:
            x = x.to(dev, non_blocking=True, memory_format=fmt)  # (N, C, S, S)
            y = y.to(dev, non_blocking=True)
            autocast = (torch.autocast(dev.type, dtype=st.amp_dtype) if st.amp_dtype
                        else nullcontext())
            with autocast:
                logits = model(x)  # (N, num_classes)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=st.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if st.scaler is not None:
                st.scaler.scale(loss).backward()
            else:
                loss.backward()
            loss_value = loss.item()
            # Agreed by every process after backward (whose gradient all-reduce they all join),
            # before the update: a NaN leaves the weights untouched, a signal stops all at once.
            stop_now, bad_any = ddp.all_reduce_max(
                [st.stop["signal"] is not None, not math.isfinite(loss_value)], info
            )
            if bad_any:
                here = loss_value if not math.isfinite(loss_value) else "not finite elsewhere"
                raise NonFiniteLossError(
                    f"loss is {here} at epoch {st.epoch + 1}, step {step + 1} (global step "
                    f"{st.global_step + 1}); training stopped, the last good checkpoint is kept"
                )
            if st.scaler is not None:
                st.scaler.step(optimizer)
                st.scaler.update()
            else:
                optimizer.step()
            if st.renorm_radius is not None:
                renormalize_filters(model, st.renorm_radius, st.first_radius)
            if st.ema is not None:
                st.ema.update_parameters(st.ema_source)
            if st.step_scheduler is not None:
                st.step_scheduler.step()
            n = y.shape[0]
            loss_sum += loss_value * n
            correct += float((logits.detach().argmax(1) == y).sum())
            seen += n
            step += 1
            st.global_step += 1
            if info.is_main:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                                img_s=f"{seen * info.world_size / elapsed:.0f}")
                bar.update(1)
                if st.tb is not None and st.global_step % 20 == 0:
                    st.tb.scalars({"train/loss_step": loss_value,
                                   "train/lr": optimizer.param_groups[0]["lr"]}, st.global_step)
            # One process can stop right after the step the signal arrived in; several stop
            # at the step where all of them have seen it.
            if stop_now or (not info.enabled and st.stop["signal"] is not None):
                interrupted = True
                break
            if step == st.end_step:
                break
    finally:
        bar.close()
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen, "steps": float(step),
            "interrupted": float(interrupted), "time": time.perf_counter() - t0}


# Images per forward pass in `evaluate` (a batch of 10-crop items is 10x its size): measured on
# the CPU, Fashion-MNIST with 10 crops takes 35 s in passes of 1280 crops, 28 s in passes of 256.
EVAL_CHUNK = 256


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    info: ddp.DistInfo | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Loss, top-1 / top-5 error and confusion matrix of `model` over `loader` (summed over all
    processes). Batches of (N, C, S, S) are centre crops; (N, 10, C, S, S) are the paper's ten
    crops, whose softmax outputs are averaged (Sec. 3 / Table 2)."""
    info = info or ddp.DistInfo(0, 1, 0, next(model.parameters()).device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top1 correct, top5 correct, n
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    with eval_mode(model):  # the caller's train/eval flags come back as they were
        for x, y in loader:
            crops = x.shape[1] if x.ndim == 5 else 1
            x = x.flatten(0, 1) if x.ndim == 5 else x  # (N*crops, C, S, S)
            x = x.to(info.device, non_blocking=True, memory_format=fmt)
            with torch.autocast(info.device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                logits = torch.cat([model(p).float() for p in x.split(EVAL_CHUNK)])  # (N*crops, K)
            probs = logits.softmax(1).view(-1, crops, logits.shape[1]).mean(1).cpu()  # (N, K)
            y = y.cpu()
            sums += torch.tensor([
                float(F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum")),
                float(topk_correct(probs, y, 1).sum()),
                float(topk_correct(probs, y, 5).sum()),
                float(y.shape[0]),
            ], dtype=torch.float64)
            confusion += confusion_matrix(probs.argmax(1), y, num_classes)
    totals = ddp.all_reduce_sum(sums.tolist() + confusion.flatten().tolist(), info)
    loss, c1, c5, n = totals[:4]
    cm = torch.tensor(totals[4:], dtype=torch.float64).view(num_classes, num_classes).long()
    if n == 0:
        raise ValueError("the evaluation set is empty")
    return {"loss": loss / n, "top1_error": 1 - c1 / n, "top5_error": 1 - c5 / n, "n": int(n),
            "confusion": cm}


# --- building blocks of `train` ---

# Layers whose parameters `--norm-weight-decay` applies to.
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
               nn.modules.instancenorm._InstanceNorm)


def param_groups(
    model: nn.Module, config: TrainConfig
) -> tuple[list[dict[str, Any]], float | None]:
    """SGD parameter groups, and the renormalisation radius of the first conv layer.

    Layer-1 preconditioning (`config.precondition`, default on): the paper feeds pixels in
    0..255 (std s ~ 60), so the first conv layer's gradients are s times larger, and its
    weights s times smaller, than a unit-scale layer's; with one learning rate the first steps
    replace its filters outright and the net dies (measured: stuck at chance on `synthetic`).
    Training the first layer as if the input were divided by s — its lr times 1/s², its weight
    decay times s², its renormalisation radius times 1/s — is exactly SGD on the network with
    unit-scale inputs, while the model keeps taking the paper's 0..255 pixels. s is the model's
    `config.input_std`; with `precondition=False` every layer gets the same lr and radius, as in
    the paper.
    `config.norm_weight_decay` / `bias_weight_decay` (None: `weight_decay`): the decay of the
    normalisation layers' parameters / of the other layers' biases, as torchvision's reference
    scripts offer (`--norm-weight-decay`, `--bias-weight-decay`); 0 exempts them.
    """
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    std = float(getattr(getattr(model, "config", None), "input_std", 1.0))
    special = first.weight if config.precondition and first is not None and std != 1.0 else None
    seen = {id(special)} if special is not None else set()
    rest, norm, bias = [], [], []  # norm / bias: own decay when config says so
    for module in model.modules():  # the order of model.parameters(), shared ones once
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if config.norm_weight_decay is not None and isinstance(module, NORM_LAYERS):
                norm.append(p)
            elif config.bias_weight_decay is not None and name == "bias":
                bias.append(p)
            else:
                rest.append(p)
    groups: list[dict[str, Any]] = [
        {"params": rest},
        {"params": norm, "weight_decay": config.norm_weight_decay},
        {"params": bias, "weight_decay": config.bias_weight_decay},
    ]
    if special is not None:
        groups.append({"params": [special], "lr": config.lr / std**2,
                       "weight_decay": config.weight_decay * std**2})
    groups = [g for g in groups if g["params"]]  # empty groups (options unset) dropped
    return groups, (config.renorm_radius / std if special is not None else None)


class DecayToZero:
    """lr factor of step s: linear warm-up over `warm` steps, then half a cosine or a straight
    line to 0 at step `total`. An object, not a closure, so that a budgeted run can move `total`
    (and LambdaLR saves it in its state)."""

    def __init__(self, warm: int, total: int, cosine: bool) -> None:
        self.warm, self.total, self.cosine = warm, total, cosine

    def __call__(self, s: int) -> float:
        if s < self.warm:
            return (s + 1) / self.warm
        t = min(1.0, (s - self.warm) / max(1, self.total - self.warm))  # fraction of the decay
        return 0.5 * (1 + math.cos(math.pi * t)) if self.cosine else 1.0 - t


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int,
    total_steps: int | None = None,
) -> tuple[Any, str]:
    """The lr schedule and when it steps: "epoch" (plateau: with the val error; step),
    "step" (cosine, linear, onecycle) or "none" (constant). Decaying schedules end at
    `total_steps` (default: `config.epochs` of `steps_per_epoch`)."""
    total = total_steps or config.epochs * steps_per_epoch
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.lr_factor, patience=config.patience
        ), "epoch"
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_epochs, gamma=config.lr_factor
        ), "epoch"
    if config.schedule in ("cosine", "linear"):
        factor = DecayToZero(int(config.warmup_epochs * steps_per_epoch), total,
                             cosine=config.schedule == "cosine")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "step"
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total
        ), "step"
    return None, "none"


def _rng_state(info: ddp.DistInfo) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": ddp.gather_tensors(torch.get_rng_state(), info),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if info.device.type == "cuda":
        state["cuda"] = ddp.gather_tensors(torch.cuda.get_rng_state(info.device), info)
    return state


def _set_rng_state(state: dict[str, Any], info: ddp.DistInfo) -> None:
    per_rank = state["torch"]
    if len(per_rank) == info.world_size:
        torch.set_rng_state(per_rank[info.rank])
        if info.device.type == "cuda" and state.get("cuda"):
            torch.cuda.set_rng_state(state["cuda"][info.rank], info.device)
    else:  # another number of processes: exactness is impossible anyway, stay distinct per rank
        torch.manual_seed(int(per_rank[0][:8].sum()) + info.rank)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def resolve_config(**given: Any) -> TrainConfig:
    """A `TrainConfig` from the options a user gave explicitly. With `resume=True` and a run in
    `out`, options not given are taken from that run's saved configuration, so
    `zfnet train --out DIR --resume` needs nothing else."""
    out = given.get("out")
    if out is None:
        raise ValueError("out (the run directory) is required")
    base: dict[str, Any] = {}
    if given.get("resume"):
        try:
            meta = ckpt.read_meta(ckpt.find_last(out))
            base = dict(meta["train_config"])
        except FileNotFoundError:
            base = {}
    merged = {**base, **given}
    missing = [k for k in ("data", "model") if merged.get(k) is None]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} required (no checkpoint to resume in {out})"
        )
    return TrainConfig.from_dict(merged)


def _check_resumable(saved: dict[str, Any], config: TrainConfig, where: Path) -> None:
    fields = list(IDENTITY_FIELDS)
    if config.schedule in ("cosine", "linear", "onecycle"):
        fields.append("epochs")  # the schedule's length depends on it
    if config.schedule == "plateau":
        fields.append("val_every")  # the schedule steps on validations
    fields.append("time_budget")  # a budgeted run's plan is kept on resume
    now = config.to_dict()
    # Through the config class, as a resume loads it: a field the run predates had its default.
    saved = TrainConfig.from_dict(saved).to_dict()
    diffs = [f"{k}: {saved.get(k)!r} in the run, {now[k]!r} now" for k in fields
             if json.dumps(saved.get(k), sort_keys=True) != json.dumps(now[k], sort_keys=True)]
    if diffs:
        raise ValueError(
            f"cannot --resume the run in {where} with a different configuration ("
            + "; ".join(diffs) + "); use the run's values or another --out"
        )


def _model_config(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else {}


def train(config: TrainConfig, bundle: DataBundle | None = None) -> dict[str, Any]:
    """Train `config.model` on `config.data` with the paper's recipe; write the run directory.

    `bundle` (a `zfnet.data.DataBundle`) may be given to skip `load_dataset(config.data)`.
    Works the same in one process and under torchrun (DDP). Returns a summary: run_dir, status
    ("completed" or "interrupted"), signal, epochs_completed, global_step, final (the last
    epoch's metrics), best_val_top1_error, checkpoint, wall_time_s, device, amp, world_size.
    Raises `NonFiniteLossError` on a NaN/inf loss (the last good checkpoint is kept).
    """
    t_start = time.perf_counter()
    info = ddp.setup(config.device)
    try:
        return _train(config, bundle, info, t_start)
    finally:
        ddp.teardown(info)


def _train(config: TrainConfig, bundle: Any, info: ddp.DistInfo, t_start: float) -> dict:
    run_dir = Path(config.out)
    ckpt_root = run_dir / "checkpoints"
    say = tqdm.write if (config.progress and info.is_main) else (lambda *_: None)
    if config.batch_size % info.world_size:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the "
                         f"{info.world_size} processes")
    per_rank_batch = config.batch_size // info.world_size

    resume_from: Path | None = None
    if ckpt.has_checkpoint(run_dir):
        if not config.resume:
            raise FileExistsError(
                f"{run_dir} already holds a run ({ckpt_root}); pass --resume to continue it "
                f"or choose another --out"
            )
        resume_from = ckpt.find_last(run_dir)
    elif config.resume:
        say(f"no checkpoint in {ckpt_root}: starting from scratch")
    meta = ckpt.read_meta(resume_from) if resume_from else None
    if meta is not None:
        if meta.get("model") != config.model:
            raise ValueError(f"cannot --resume {resume_from}: it is a run of model "
                             f"{meta.get('model')!r}, not {config.model!r}")
        _check_resumable(meta["train_config"], config, run_dir)

    if bundle is None:
        from zfnet.data import load_dataset

        bundle = load_dataset(config.data, cache_dir=config.data_cache)
    dev = info.device
    amp_dtype = amp_dtype_for(config.amp, dev)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    model = zfnet.create_model(
        config.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
        input_size=bundle.input_size, **config.model_opts,
    )
    torch.manual_seed(config.seed + info.rank)  # distinct dropout masks per process
    state = ckpt.read_train_state(resume_from, meta) if resume_from is not None else None
    if state is not None:
        if config.ema:  # model.safetensors holds the average; the live weights are kept here
            model.load_state_dict(state["live_weights"])
        else:
            ckpt.load_weights(model, resume_from)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=fmt)
    bare = model
    ema = make_ema(bare, config.ema) if config.ema else None
    if ema is not None and state is not None:
        ckpt.load_weights(ema.module, resume_from)
        ema.n_averaged.fill_(int(state["ema_updates"]))
    shown = ema.module if ema is not None else bare  # what is validated and saved
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    groups, first_radius = param_groups(bare, config)
    optimizer = torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, nesterov=config.nesterov,
    )
    scaler = (torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None)

    train_set = SeededSamples(bundle.train, config.seed, config.random_erasing)
    sampler = ddp.ResumableSampler(train_set, info.world_size, info.rank, shuffle=True,
                                   seed=config.seed)
    loader_kw: dict[str, Any] = {"num_workers": config.workers, "collate_fn": collate,
                                 "pin_memory": dev.type == "cuda"}
    steps_per_epoch = math.ceil(sampler.num_samples / per_rank_batch)
    val_set = Subset(bundle.val, range(info.rank, len(bundle.val), info.world_size))
    val_loader = DataLoader(val_set, batch_size=per_rank_batch, shuffle=False,
                            generator=torch.Generator().manual_seed(0), **loader_kw)
    plan = Plan.from_dict(meta["plan"]) if meta is not None and meta.get("plan") else None
    scheduler, sched_when = build_scheduler(optimizer, config, steps_per_epoch,
                                            plan.total_steps if plan else None)

    history: list[dict[str, Any]] = []
    start_epoch, start_step, global_step, elapsed_before = 0, 0, 0, 0.0
    # Sums over the part of an epoch done before a mid-epoch checkpoint (all processes),
    # so that the resumed epoch's row in metrics.csv equals the uninterrupted run's.
    carry = dict.fromkeys(("loss_sum", "correct", "seen", "expected", "time"), 0.0)
    if state is not None and meta is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(meta.get("history", []))
        start_epoch, start_step = int(meta["epoch"]), int(meta.get("step_in_epoch", 0))
        global_step = int(meta["global_step"])
        elapsed_before = float(meta.get("train_time_s", 0.0))
        if start_step:
            carry.update(meta.get("partial_epoch", {}))
        _set_rng_state(state["rng"], info)
        say(f"resuming {resume_from} (epoch {start_epoch}, step {start_step})")

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(ckpt_root)
        ckpt.write_text_atomic(run_dir / "config.json", config.to_json() + "\n")
        write_metrics_csv(run_dir / "metrics.csv", history)
    tb = TensorBoard(run_dir / "tb" if (config.tensorboard and info.is_main) else None,
                     purge_step=global_step or None)
    keep = {ckpt.checkpoint_name(e) for e in config.keep_epochs}
    base_meta = {
        "model": config.model, "model_opts": config.to_dict()["model_opts"],
        "model_config": _model_config(bare), "data": bundle.spec,
        "class_names": list(bundle.class_names), "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels, "input_size": bundle.input_size,
        "train_config": config.to_dict(), "world_size": info.world_size,
    }
    last_saved = str(resume_from) if resume_from else None

    def save(epoch: int, step_in_epoch: int, elapsed: float,
             partial: dict[str, float] | None = None) -> None:
        nonlocal last_saved
        sampler_state = {"epoch": epoch, "skip": step_in_epoch * per_rank_batch,
                         "seed": config.seed}
        train_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "sampler": sampler_state,
            "rng": _rng_state(info),  # collective: every process takes part
        }
        if ema is not None:
            train_state["live_weights"] = {k: v.detach().cpu().contiguous()
                                           for k, v in bare.state_dict().items()}
            train_state["ema_updates"] = int(ema.n_averaged)
        if info.is_main:
            meta_now = {**base_meta, "epoch": epoch, "step_in_epoch": step_in_epoch,
                        "global_step": st.global_step, "train_time_s": elapsed,
                        "metrics": history[-1] if history else {}, "history": history,
                        "partial_epoch": partial or {}, "saved_at": time.time(),
                        "plan": plan.to_dict() if plan else None}
            name = ckpt.checkpoint_name(epoch, step_in_epoch)
            path = ckpt.save_checkpoint(ckpt_root, name, shown, meta_now, train_state,
                                        keep=keep | {name})
            last_saved = str(path)
        ddp.barrier(info)

    stop: dict[str, int | None] = {"signal": None}
    n_epochs = plan.epochs if plan else config.epochs
    st = EpochState(epoch=start_epoch, epochs=n_epochs, global_step=global_step,
                    amp_dtype=amp_dtype, scaler=scaler,
                    renorm_radius=config.renorm_radius if config.renorm else None,
                    first_radius=first_radius, label_smoothing=config.label_smoothing,
                    step_scheduler=scheduler if sched_when == "step" else None,
                    channels_last=config.channels_last, ema=ema, ema_source=bare, stop=stop,
                    progress=config.progress, tb=tb)
    status = "completed"
    t_run = time.perf_counter()
    seg_time, seg_steps = 0.0, 0  # training time and steps of this process's epochs (plans)

    def validation() -> dict[str, Any]:
        return evaluate(shown, val_loader, bundle.num_classes, info, amp_dtype,
                        config.channels_last)

    try:
        with _stop_on_signals(stop):
            epoch = start_epoch
            while epoch < n_epochs:
                st.epoch, st.epochs = epoch, n_epochs
                st.start_step = start_step if epoch == start_epoch else 0
                st.end_step = plan.end_step(epoch) if plan else None
                sampler.set_epoch(epoch)
                sampler.skip = st.start_step * per_rank_batch
                train_set.epoch = epoch
                end = (sampler.num_samples if st.end_step is None
                       else min(sampler.num_samples, st.end_step * per_rank_batch))
                expected = end - sampler.skip
                loader = DataLoader(
                    train_set, batch_size=per_rank_batch, sampler=sampler,
                    generator=torch.Generator().manual_seed(config.seed * 1000 + epoch),
                    **loader_kw,
                )
                r = train_one_epoch(model, loader, optimizer, st, info)
                elapsed = elapsed_before + time.perf_counter() - t_run
                done = min(int(r["steps"]) * per_rank_batch, sampler.num_samples)
                sums = ddp.all_reduce_sum(
                    [r["loss_sum"], r["correct"], r["seen"],
                     float(done - sampler.skip if r["interrupted"] else expected)], info)
                loss_sum, correct, seen, expected_all = (
                    v + carry[k] for v, k in zip(sums, ("loss_sum", "correct", "seen", "expected"),
                                                 strict=True))
                epoch_time = r["time"] + carry["time"]
                carry = dict.fromkeys(carry, 0.0)
                if r["interrupted"]:
                    partial = {"loss_sum": loss_sum, "correct": correct, "seen": seen,
                               "expected": expected_all, "time": epoch_time}
                    save(epoch, int(r["steps"]), elapsed, partial)
                    status = "interrupted"
                    break
                # A budgeted run is planned after every whole epoch but its last; the first
                # plan also times a validation.
                to_plan = config.time_budget is not None and epoch + 1 < n_epochs
                validate = ((epoch + 1) % config.val_every == 0 or epoch + 1 == n_epochs
                            or (to_plan and plan is None))
                t_val = time.perf_counter()
                val = (validation() if validate
                       else dict.fromkeys(("loss", "top1_error", "top5_error")))
                t_val = time.perf_counter() - t_val
                if to_plan:
                    seg_time += r["time"]
                    seg_steps += int(r["steps"]) - st.start_step
                    before = plan
                    plan = _make_plan(config, info, scheduler, steps_per_epoch, st.global_step,
                                      elapsed_before + time.perf_counter() - t_start,
                                      seg_time / max(1, seg_steps),
                                      t_val if validate else before.val_s)  # the first validates
                    n_epochs = plan.epochs
                    if before is None or before.total_steps != plan.total_steps:
                        say(plan.describe())
                    if epoch + 1 == n_epochs and not validate:  # the plan ends the run here
                        val, validate = validation(), True
                lr = optimizer.param_groups[0]["lr"]
                if sched_when == "epoch":
                    if config.schedule != "plateau":
                        scheduler.step()
                    elif validate:  # patience counts validations
                        scheduler.step(val["top1_error"])
                skipped = int(expected_all - seen)
                row = {
                    "epoch": epoch + 1, "global_step": st.global_step, "lr": lr,
                    "train_loss": loss_sum / max(seen, 1),
                    "train_top1_error": 1 - correct / max(seen, 1),
                    "val_loss": val["loss"], "val_top1_error": val["top1_error"],
                    "val_top5_error": val["top5_error"], "epoch_time_s": epoch_time,
                    "img_per_s": seen / max(epoch_time, 1e-9), "skipped": skipped,
                }
                history.append(row)
                elapsed = elapsed_before + time.perf_counter() - t_run
                save(epoch + 1, 0, elapsed)
                if info.is_main:
                    write_metrics_csv(run_dir / "metrics.csv", history)
                    tb.scalars({f"epoch/{k}": v for k, v in row.items() if k != "epoch"},
                               st.global_step)
                shown_val = (f"val top-1 err {row['val_top1_error']:.2%}  "
                             f"top-5 {row['val_top5_error']:.2%}  " if validate else "")
                say(f"epoch {epoch + 1}/{n_epochs}  loss {row['train_loss']:.4f}  "
                    f"train err {row['train_top1_error']:.2%}  {shown_val}lr {lr:.2g}  "
                    f"{row['img_per_s']:.0f} img/s")
                if skipped:
                    say(f"epoch {epoch + 1}: {skipped} training sample(s) skipped "
                        f"(unreadable files, named in the warnings above)")
                if stop["signal"] is not None:  # arrived during evaluation
                    status = "interrupted"
                    break
                epoch += 1
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"{e}: {last_saved or 'none written yet'}") from None
    finally:
        tb.close()

    best = min((h["val_top1_error"] for h in history if h["val_top1_error"] is not None),
               default=None)
    return {
        "run_dir": str(run_dir), "status": status,
        "signal": signal.Signals(stop["signal"]).name if stop["signal"] else None,
        "epochs_completed": len(history), "global_step": st.global_step,
        "final": history[-1] if history else {}, "best_val_top1_error": best,
        "checkpoint": last_saved, "wall_time_s": time.perf_counter() - t_start,
        "device": str(info.device), "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype
        else "off", "world_size": info.world_size, "plan": plan.to_dict() if plan else None,
    }


def _make_plan(config: TrainConfig, info: ddp.DistInfo, scheduler: Any, steps_per_epoch: int,
               done_steps: int, used_s: float, step_s: float, val_s: float) -> Plan:
    """Plan a budgeted run after a whole epoch (from the processes' mean rates, so that all
    agree) and move a decaying schedule's end to the planned step."""
    used_s, step_s, val_s = (v / info.world_size for v in
                             ddp.all_reduce_sum([used_s, step_s, val_s], info))
    plan = plan_steps(config.time_budget, used_s, step_s, val_s, steps_per_epoch, done_steps,
                      config.epochs * steps_per_epoch, config.val_every)
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        step = scheduler.last_epoch
        for g, base, f in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                              scheduler.lr_lambdas, strict=True):
            if isinstance(f, DecayToZero):
                f.total = plan.total_steps
                g["lr"] = base * f(step)  # the next step's lr already follows the plan
    return plan

