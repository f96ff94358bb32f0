"""The paper's training recipe (Sec. 3), piece by piece: one epoch, evaluation, the parameter
groups and lr schedules, and what makes a run exactly resumable.

SGD (lr 1e-2, momentum 0.9, batch 128), dropout 0.5 (the model's), after every step each conv
filter with RMS > 0.1 is rescaled to 0.1, lr / 10 when the validation error plateaus. The run
around these pieces (checks, model, loaders, checkpoints, signals) is built by
`zfnet.train.run` and driven epoch by epoch by `zfnet.train.loop.train`.

Exactness of `--resume`: the data order depends only on (seed, epoch) (`ResumableSampler`), the
augmentation of a sample only on (seed, epoch, index) (`SeededSamples`), and dropout on the
torch RNG, whose state (per process) is saved in every checkpoint (`rng_state`), as are the
optimizer and scheduler states and the position in the data order (epoch, steps into it).
A run resumed from any checkpoint, also one written mid-epoch after SIGTERM, computes the same
losses as the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from zfnet.data.images import BadImageError
from zfnet.data.transforms import CropDataset, random_crop_params
from zfnet.models import eval_mode, zfnet_config
from zfnet.progress import progress_bar
from zfnet.train import checkpoint as ckpt
from zfnet.train import distributed as ddp
from zfnet.train.budget import Plan, plan_steps
from zfnet.train.config import TrainConfig
from zfnet.train.logs import TensorBoard
from zfnet.train.metrics import confusion_matrix, topk_correct
from zfnet.train.renorm import renormalize_filters

if TYPE_CHECKING:
    from torch.optim.swa_utils import AveragedModel


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


def rng_state(info: ddp.DistInfo) -> dict[str, Any]:
    """The RNG states a checkpoint keeps: torch's (and CUDA's) of every process, gathered (a
    collective: every process calls it), Python's and numpy's."""
    state: dict[str, Any] = {
        "torch": ddp.gather_tensors(torch.get_rng_state(), info),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if info.device.type == "cuda":
        state["cuda"] = ddp.gather_tensors(torch.cuda.get_rng_state(info.device), info)
    return state


def set_rng_state(state: dict[str, Any], info: ddp.DistInfo) -> None:
    """Restore `rng_state`'s states, this process's own torch state among them."""
    per_rank = state["torch"]
    if len(per_rank) == info.world_size:
        torch.set_rng_state(per_rank[info.rank])
        if info.device.type == "cuda" and state.get("cuda"):
            torch.cuda.set_rng_state(state["cuda"][info.rank], info.device)
    else:  # another number of processes: exactness is impossible anyway, stay distinct per rank
        torch.manual_seed(int(per_rank[0][:8].sum()) + info.rank)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


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


# --- one epoch, evaluation ---

@dataclass
class EpochState:
    """What one process needs to run one training epoch."""

    epoch: int  # 0-based
    epochs: int
    start_step: int = 0
    # batches of the run so far (of the data order: a batch of only broken files counts too)
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
    # a strict dataset's broken file, met fetching a batch: the epoch stops as for a signal
    # (every process at the same step, saved there), then the run raises it
    broken: BadImageError | None = None
    progress: bool = False
    tb: TensorBoard | None = None
    # modules kept as pretrained weights have them (`--freeze-to`): in eval mode while training
    frozen: tuple[nn.Module, ...] = ()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    st: EpochState,
    info: ddp.DistInfo,
) -> dict[str, float]:
    """One pass over `loader` (from step `st.start_step`): forward, cross-entropy, backward, SGD
    step, filter renormalisation (Sec. 3). Stops early, after a complete step, when a signal
    arrived. Raises `NonFiniteLossError` on a NaN/inf loss, before anything is saved.

    A step's loss and hits are read on the host one step later (`_Stats`), and what every
    process must agree on — this rank's next batch is empty, a signal arrived, the loss read was
    not finite — is agreed one step later too (`ddp.LateFlags`): on a GPU the host queues step
    k+1 while step k runs, instead of waiting for the device to finish each step. So a NaN loss
    is found after the next step's update (never saved), and the pass ends by reading the last
    step's.

    A batch whose every file was broken (`collate` gives 0 items) makes no update, but it is a
    step of the data order: the step counters and a per-step lr schedule move past it, so that
    a checkpoint's position (steps into the epoch) still names the same place. Under DDP, such a
    step is skipped by every process when any process has no item (the samples of the others
    then count as skipped too): a process cannot sit out the gradient all-reduce alone. Each
    batch is therefore fetched one step ahead, so that the processes agree on it in time.

    Returns sums over this process: loss_sum, correct, seen, steps (the step index reached),
    interrupted (1.0 / 0.0), time.
    """
    model.train()
    for m in st.frozen:  # batch norm statistics kept, dropout off
        m.eval()
    stats = _Stats(info)
    agree = ddp.LateFlags(info, 3)  # the next batch is empty, stop, a non-finite loss
    step = st.start_step
    interrupted = False
    t0 = time.perf_counter()
    total = st.start_step + len(loader)
    end = total if st.end_step is None else min(total, st.end_step)
    bar = progress_bar(total=end, initial=st.start_step, unit="batch",
                       desc=f"epoch {st.epoch + 1}/{st.epochs}",
                       shown=st.progress and info.is_main)
    batches = iter(loader)

    def fetch() -> Any:
        """The next batch, or None at the end or at a broken file (`st.broken`, strict)."""
        try:
            return next(batches, None)
        except BadImageError as e:
            st.broken = e
            return None

    try:
        batch = fetch() if step < end else None
        agree.post([_empty(batch), st.broken is not None, False])
        while batch is not None:
            empty, stop_now, bad_any = agree.take()
            if bad_any:
                _non_finite(stats.posted, st)
            # One process stops before the step after the signal's; several before the step
            # after the one where all of them have seen it.
            if stop_now or (not info.enabled and st.stop["signal"] is not None):
                interrupted = True
                break
            x, y = batch
            loss, previous = (None, None) if empty else _forward(model, x, y, st, step, stats)
            # the next batch, a step ahead: on a GPU fetched once this step's forward is queued
            # (the device waits for the batch's preparation from there on)
            batch = fetch() if step + 1 < end else None
            agree.post([_empty(batch), st.stop["signal"] is not None or st.broken is not None,
                        stats.check_with_others(previous)])
            if loss is not None:
                _update(model, loss, optimizer, st)
            _advance_schedule(st.step_scheduler, updated=not empty)
            step += 1
            st.global_step += 1
            if info.is_main:
                _show_progress(bar, st, optimizer, stats, time.perf_counter() - t0)
        # the last step's loss read (and checked), the device's work done
        interrupted = stats.flush(st, agree) or interrupted or st.broken is not None
        if info.is_main:  # the last step's figures too (a one-step epoch showed zeros)
            _figures(bar, stats, time.perf_counter() - t0)
    finally:
        bar.close()
    return {"loss_sum": stats.loss_sum, "correct": stats.correct, "seen": stats.seen,
            "steps": float(step), "interrupted": float(interrupted),
            "time": time.perf_counter() - t0}


def _empty(batch: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    """Whether a fetched batch has no item (every file of it broken); None (no batch) is not."""
    return batch is not None and batch[1].shape[0] == 0


class _Stats:
    """The epoch's running sums of loss, hits and images, each step's figures read on the host
    one step late: a step's (loss, hits) are copied to page-locked memory as soon as its forward
    pass ends, and read after the next step is queued, when they are there (on a CPU at once)."""

    def __init__(self, info: ddp.DistInfo) -> None:
        self.info = info
        self.loss_sum = self.correct = self.seen = 0.0
        self.last: tuple[int, float] | None = None  # (global step, loss) of the last step read
        # the last read this process checked with the others: (loss, step, global step)
        self.posted: tuple[float, int, int] | None = None
        self._pending: tuple[torch.Tensor, Any, int, int, int] | None = None

    def add(self, loss: torch.Tensor, hits: torch.Tensor, n: int, step: int,
            global_step: int) -> None:
        """Queue a step's figures: its loss and hits (0-d tensors on the device), batch size,
        step of the epoch and global step (for the error message of a NaN)."""
        figures = torch.stack([loss.detach().float(), hits.float()])
        ready = None
        if figures.is_cuda:
            figures = figures.to("cpu", non_blocking=True)  # into page-locked memory
            ready = torch.cuda.Event()
            ready.record()
        self._pending = (figures, ready, n, step, global_step)

    def read(self) -> tuple[float, int, int] | None:
        """Add the queued step's figures to the sums: (its loss, step, global step), or None
        if none was queued. Waits for that step's forward pass only."""
        if self._pending is None:
            return None
        figures, ready, n, step, global_step = self._pending
        self._pending = None
        if ready is not None:
            ready.synchronize()
        loss, hits = figures.tolist()
        self.loss_sum += loss * n
        self.correct += hits
        self.seen += n
        self.last = (global_step, loss)
        return loss, step, global_step

    def flush(self, st: EpochState, agree: ddp.LateFlags) -> bool:
        """At the end of a pass: take the flags still posted, read and check the last queued
        step (on every process, as `_update` does), and wait for the device (the epoch's time
        includes its last step). Returns whether the flags taken ask every process to stop."""
        stop = False
        if agree.pending:
            _, stop, bad_any = agree.take()
            if bad_any:
                _non_finite(self.posted, st)
        read = self.read()
        (bad_any,) = ddp.all_reduce_max([read is not None and not math.isfinite(read[0])],
                                        self.info)
        if bad_any:
            _non_finite(read, st)
        if self.info.device.type == "cuda":
            torch.cuda.synchronize(self.info.device)
        return stop

    def check_with_others(self, read: tuple[float, int, int] | None) -> bool:
        """Whether `read` (a step's figures, or None) has a loss that is not finite; kept as the
        read this process posts to the others, to name its step if they agree on a stop."""
        if read is not None:
            self.posted = read
        return read is not None and not math.isfinite(read[0])


def _non_finite(read: tuple[float, int, int] | None, st: EpochState) -> None:
    here = read[0] if read is not None and not math.isfinite(read[0]) else "not finite elsewhere"
    where = f"step {read[1] + 1} (global step {read[2] + 1})" if read else "a step"
    raise NonFiniteLossError(
        f"loss is {here} at epoch {st.epoch + 1}, {where}; training stopped, the last good "
        "checkpoint is kept")


def _forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, st: EpochState, step: int,
             stats: _Stats) -> tuple[torch.Tensor, tuple[float, int, int] | None]:
    """The forward pass and loss of a step on the batch (x, y), its loss and hits queued in
    `stats`: (the loss, the step before's figures read from `stats` or None)."""
    dev = stats.info.device
    fmt = torch.channels_last if st.channels_last else torch.contiguous_format
    x = x.to(dev, non_blocking=True, memory_format=fmt)  # (N, C, S, S)
    y = y.to(dev, non_blocking=True)
    autocast = torch.autocast(dev.type, dtype=st.amp_dtype) if st.amp_dtype else nullcontext()
    with autocast:
        logits = model(x)  # (N, num_classes)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=st.label_smoothing)
    previous = stats.read()  # the step before: done by now, unless the device is far behind
    stats.add(loss, (logits.detach().argmax(1) == y).sum(), y.shape[0], step, st.global_step)
    return loss, previous


def _update(model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
            st: EpochState) -> None:
    """The rest of an SGD step from its loss: backward, update, the paper's renormalisation
    and the weight average."""
    optimizer.zero_grad(set_to_none=True)
    if st.scaler is not None:
        st.scaler.scale(loss).backward()
        st.scaler.step(optimizer)
        st.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    if st.renorm_radius is not None:
        renormalize_filters(model, st.renorm_radius, st.first_radius)
    if st.ema is not None:
        st.ema.update_parameters(st.ema_source)


def _advance_schedule(scheduler: Any, updated: bool) -> None:
    """Step a per-step lr schedule (None: none), also past a step without an update, so that
    it stays at the run's step count (which a time budget's plan is made in)."""
    if scheduler is None:
        return
    with warnings.catch_warnings():
        if not updated:  # torch warns when the first step of a schedule precedes any update
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
        scheduler.step()


def _figures(bar: tqdm, stats: _Stats, elapsed: float) -> None:
    """The bar's loss and images a second so far; none before a step is read (the first, read
    a step late: not zeros). Under torchrun the loss is the first process's batches' (named
    rank0_loss: the epoch's line gives every process's), the images every process's."""
    if stats.seen:
        images = stats.seen * stats.info.world_size
        loss = "rank0_loss" if stats.info.world_size > 1 else "loss"
        bar.set_postfix({loss: f"{stats.loss_sum / stats.seen:.4f}",
                         "img_s": f"{images / max(elapsed, 1e-9):.0f}"}, refresh=False)


def _show_progress(bar: tqdm, st: EpochState, optimizer: torch.optim.Optimizer,
                   stats: _Stats, elapsed: float) -> None:
    """The progress bar's line (the figures read so far: one step behind on a GPU), and every
    20th step's loss and lr in TensorBoard."""
    _figures(bar, stats, elapsed)
    bar.update(1)  # drawn as often as the bar's mininterval allows
    if st.tb is not None and stats.last is not None:
        (global_step, loss), stats.last = stats.last, None  # each step's once
        if global_step % 20 == 19:
            st.tb.scalars({"train/loss_step": loss,
                           "train/lr": optimizer.param_groups[0]["lr"]}, global_step + 1)


# Images per forward pass in `evaluate` (a batch of 10-crop items is 10x its size): measured on
# the CPU, Fashion-MNIST with 10 crops takes 35 s in passes of 1280 crops, 28 s in passes of 256.
EVAL_CHUNK = 256


def crop_probabilities(model: nn.Module, x: torch.Tensor,
                       prepare: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
                       ) -> torch.Tensor:
    """Class probabilities (N, K) of a batch of centre crops x (N, C, S, S), or of the paper's
    ten crops x (N, 10, C, S, S), whose softmax outputs are averaged (Sec. 3 / Table 2); the
    model sees `EVAL_CHUNK` crops a pass, each through `prepare` (e.g. to its device)."""
    crops = x.shape[1] if x.ndim == 5 else 1
    flat = x.flatten(0, 1) if x.ndim == 5 else x  # (N*crops, C, S, S)
    logits = torch.cat([model(prepare(p)).float() for p in flat.split(EVAL_CHUNK)])
    return logits.softmax(1).view(-1, crops, logits.shape[1]).mean(1)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    info: ddp.DistInfo | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Loss, top-1 / top-5 error and confusion matrix of `model` over `loader` (summed over all
    processes). Batches of (N, C, S, S) are centre crops; (N, 10, C, S, S) are the paper's ten
    crops, whose softmax outputs are averaged (Sec. 3 / Table 2). Broken files (dropped by
    `collate`; a batch of only broken files has 0 items) are left out of every figure and
    counted in `skipped` (None when the loader's length is unknown).

    Several processes: each scores its own part of the data (`loader`), and the sums are
    added once at the end; an error in one process (a broken file with `strict`) stops every
    process there with an error, instead of leaving the others waiting for it. `progress`: a
    bar over the batches (hours of 10-crop ImageNet on a CPU)."""
    info = info or ddp.DistInfo(0, 1, 0, next(model.parameters()).device)
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top1 correct, top5 correct, n
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    failed: Exception | None = None
    try:
        batches = progress_bar(loader, desc="evaluating", unit="batch", shown=progress)
        try:
            _score(model, batches, info, amp_dtype, channels_last, sums, confusion)
        finally:
            batches.close()
    except Exception as e:
        if not info.enabled:
            raise
        failed = e  # raised here, and said by the others too
    ddp.raise_any_error(failed, info, "evaluation")
    sampled = _length(getattr(loader, "sampler", None))
    totals = ddp.all_reduce_sum(sums.tolist() + [float(sampled or 0)]
                                + confusion.flatten().tolist(), info)
    loss, c1, c5, n, expected = totals[:5]
    cm = torch.tensor(totals[5:], dtype=torch.float64).view(num_classes, num_classes).long()
    if n == 0:
        raise ValueError("the evaluation set is empty" if not expected else
                         f"every one of the {int(expected)} evaluation images is a broken file")
    # the errors as counts over n (59 / 1000 is 0.059; 1 - 941 / 1000 is 0.05900000000000005)
    return {"loss": loss / n, "top1_error": (n - c1) / n, "top5_error": (n - c5) / n, "n": int(n),
            "skipped": None if sampled is None else int(expected - n), "confusion": cm}


def _score(model: nn.Module, loader: Iterable[Any], info: ddp.DistInfo,
           amp_dtype: torch.dtype | None, channels_last: bool, sums: torch.Tensor,
           confusion: torch.Tensor) -> None:
    """`evaluate`'s pass over this process's data: adds to `sums` (loss, top-1 correct, top-5
    correct, n) and `confusion` in place. The sums stay on the device until the pass ends, so
    that on a GPU the host queues batch after batch instead of waiting for each one's scores."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    num_classes = confusion.shape[0]
    dev_sums = torch.zeros(3, dtype=torch.float64, device=info.device)
    n = 0
    dev_confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=info.device)
    with eval_mode(model):  # the caller's train/eval flags come back as they were
        for x, y in loader:
            if y.shape[0] == 0:  # only broken files: nothing to score
                continue
            x = x.to(info.device, non_blocking=True)
            y = y.to(info.device, non_blocking=True)
            with torch.autocast(info.device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                probs = crop_probabilities(  # (N, K)
                    model, x, lambda p: p.contiguous(memory_format=fmt))
            dev_sums += torch.stack([
                F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum"),
                topk_correct(probs, y, 1).sum(),
                topk_correct(probs, y, 5).sum(),
            ]).double()
            n += y.shape[0]
            dev_confusion += confusion_matrix(probs.argmax(1), y, num_classes)
    sums += torch.cat([dev_sums.cpu(), torch.tensor([float(n)], dtype=torch.float64)])
    confusion += dev_confusion.cpu()


def _length(sampler: Any) -> int | None:
    """How many items a loader's sampler yields (None when it cannot say)."""
    try:
        return len(sampler)
    except TypeError:
        return None


# --- parameter groups, lr schedules ---

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
    from zfnet.sources import INPUT_STD

    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    # zfnet's models say theirs; another architecture's first convolution was scaled for the
    # paper's pixels by `zfnet.sources.build_architecture`
    std = float(getattr(zfnet_config(model), "input_std", INPUT_STD))
    special = first.weight if config.precondition and first is not None and std != 1.0 \
        and first.weight.requires_grad else None
    seen = {id(special)} if special is not None else set()
    rest, norm, bias = [], [], []  # norm / bias: own decay when config says so
    for module in model.modules():  # the order of model.parameters(), shared ones once
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:  # frozen (`--freeze-to`): not trained
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


def replan(config: TrainConfig, info: ddp.DistInfo, scheduler: Any, steps_per_epoch: int,
           done_steps: int, used_s: float, step_s: float, val_s: float) -> Plan:
    """Plan a budgeted run after a whole epoch (from the processes' mean rates, so that all
    agree) and move a decaying schedule's end to the planned step (`zfnet.train.budget`)."""
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


# --- the configuration of a run ---

def resolve_config(**given: Any) -> TrainConfig:
    """A `TrainConfig` from the options a user gave explicitly. With `resume=True` and a run in
    `out`, options not given are taken from that run's saved configuration (its last
    checkpoint's, or its config.json when it stopped before the first checkpoint), so
    `zfnet train --out DIR --resume` needs nothing else."""
    out = given.get("out")
    if out is None:
        raise ValueError("out (the run directory) is required")
    run = _run_above(Path(out))
    if run is not None:  # a run written inside it would mix with the run's checkpoints
        what = "the checkpoints folder" if run == Path(out).parent else "a checkpoint"
        raise ValueError(f"{out} is {what} of the run in {run}: give --out {run}")
    base = saved_config(out) if given.get("resume") else {}
    if given.get("data") is not None:  # saved absolute: the run is read from anywhere later
        from zfnet.data.spec import absolute_spec

        given = {**given, "data": absolute_spec(given["data"])}
    merged = {**base, **given}
    missing = [k for k in ("data", "model") if merged.get(k) is None]
    if missing:
        raise ValueError(
            f"{out} holds no run to resume (no checkpoint, no config.json): give "
            f"{' and '.join('--' + k for k in missing)} to start one there"
            if given.get("resume") and not base else
            f"{' and '.join(missing)} required (no checkpoint to resume in {out})")
    return TrainConfig.from_dict(merged)


def _run_above(out: Path) -> Path | None:
    """The run whose checkpoints folder, or one of whose checkpoints, `out` is; else None."""
    if (out / ckpt.POINTER).is_file() or (out.name == "checkpoints" and ckpt.has_checkpoint(out)):
        return out.parent
    if (out / ckpt.STATE).is_file() and (out / ckpt.WEIGHTS).is_file():
        return out.parent.parent
    return None


def saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The configuration the run in `run_dir` was started with: its last checkpoint's, else its
    config.json, else {} (no run there)."""
    try:
        return dict(ckpt.read_meta(ckpt.find_last(run_dir))["train_config"])
    except FileNotFoundError:
        pass
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e}); start the run afresh with --data and "
                         "--model in another --out") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a run configuration (a JSON object)")
    return saved
