"""Building a training run: every check first, then the parts, and nothing written meanwhile.

`build_run` checks what a user can get wrong (batch split, an existing run and whether it may be
resumed with this configuration, the data spec, the model with its options, a forward pass of
it), then builds the model, its weight average, the DDP wrapper, the optimizer, the lr schedule
and the loaders, and restores a resumed run's state. The first write to the run directory comes
after it (`zfnet.train.loop`), so a bad option leaves `--out` as it was.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

import zfnet
from zfnet.data.bundle import require_labels
from zfnet.data.imagefolder import check_classes_read
from zfnet.data.loaders import (
    as_inputs,
    collate_for,
    for_loader,
    loader_kind,
    resolve_workers,
)
from zfnet.data.mixed import measure_share, saved_share
from zfnet.data.spec import absolute_spec
from zfnet.data.workers import Loader
from zfnet.models import eval_mode, zfnet_config
from zfnet.train import checkpoint as ckpt
from zfnet.train import distributed as ddp
from zfnet.train.budget import Plan
from zfnet.train.compiled import check_compile, compile_model
from zfnet.train.config import IDENTITY_FIELDS, TrainConfig
from zfnet.train.ema import make_ema
from zfnet.train.finetune import describe, freeze_to, load_start, transplant
from zfnet.train.recipe import (
    SeededSamples,
    amp_dtype_for,
    build_scheduler,
    param_groups,
    set_rng_state,
)

if TYPE_CHECKING:
    from torch.optim.swa_utils import AveragedModel

# Sums over the part of an epoch done before a mid-epoch checkpoint (all processes).
PARTIAL_KEYS = ("loss_sum", "correct", "seen", "expected", "time")


@dataclass
class Progress:
    """Where a run stands: what a checkpoint records besides weights and optimizer state."""

    epoch: int = 0  # complete epochs; the 0-based epoch to train next
    step: int = 0  # steps done into `epoch` (a mid-epoch checkpoint), else 0
    global_step: int = 0
    train_time_s: float = 0.0  # time spent by the sessions before this one
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv's rows
    # the sums of the part of `epoch` done (PARTIAL_KEYS), so that the resumed epoch's row in
    # metrics.csv equals the uninterrupted run's
    partial: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTIAL_KEYS, 0.0))
    plan: Plan | None = None  # a budgeted run's plan

    @staticmethod
    def from_meta(meta: dict[str, Any] | None) -> Progress:
        """The progress a checkpoint's state.json records (None: a new run's)."""
        if meta is None:
            return Progress()
        p = Progress(epoch=int(meta["epoch"]), step=int(meta.get("step_in_epoch", 0)),
                     global_step=int(meta["global_step"]),
                     train_time_s=float(meta.get("train_time_s", 0.0)),
                     history=list(meta.get("history", [])),
                     plan=Plan.from_dict(meta["plan"]) if meta.get("plan") else None)
        if p.step:
            p.partial.update(meta.get("partial_epoch", {}))
        return p


@dataclass
class Run:
    """A training run, built and checked (`build_run`); what `zfnet.train.loop` drives."""

    config: TrainConfig
    info: ddp.DistInfo
    bundle: Any  # a zfnet.data.DataBundle, or anything with its fields
    say: Callable[[str], None]  # a line for the log (the main process's, with --progress)
    model: nn.Module  # what trains: `bare`, or its DDP wrapper; compiled with --compile
    bare: nn.Module
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    scheduler: Any
    sched_when: str  # "epoch", "step" or "none" (`build_scheduler`)
    first_radius: float | None  # renormalisation radius of conv1 (preconditioning)
    amp_dtype: torch.dtype | None
    train_set: SeededSamples
    sampler: ddp.ResumableSampler
    val_loader: Any  # a DataLoader, or its batches as inputs on the device (DeviceBatches)
    loader_kw: dict[str, Any]
    host_share: float | None  # --loader mixed: the share of images the workers decode
    per_rank_batch: int
    steps_per_epoch: int
    resume_from: Path | None
    progress: Progress
    frozen: tuple[nn.Module, ...] = ()  # kept as the weights have them (`--freeze-to`)

    @property
    def shown(self) -> nn.Module:
        """The model that is validated and saved: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.bare

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


# options whose value may differ between the processes of a torchrun: where each machine keeps
# its data and writes, its loader workers, what it prints, its device
LOCAL_OPTIONS = ("data", "out", "data_cache", "workers", "progress", "tensorboard", "device")


def check_same_options(config: TrainConfig, info: ddp.DistInfo) -> None:
    """A ValueError in every process where the processes of a torchrun were given different
    training options (the batch size, the model, the lr …): they would fail later in a
    collective that does not match, with no word of why. Where each keeps its data and what it
    prints may differ (`LOCAL_OPTIONS`)."""
    mine = {k: v for k, v in config.to_dict().items() if k not in LOCAL_OPTIONS}
    found = ddp.first_difference(mine, info)
    if found is None:
        return
    key, first, rank, other = found
    this = " (this process)" if rank == info.rank else ""
    raise ValueError(
        f"the processes were given different options: {key} is {first!r} on rank 0 but "
        f"{other!r} on rank {rank}{this}; give every process the same command line (only "
        "where each machine keeps the data, --out, --workers and --device may differ)")


def build_run(config: TrainConfig, info: ddp.DistInfo, bundle: Any = None) -> Run:
    """Check `config` and build its run on this process, resumed from the run directory's
    last checkpoint with `config.resume`. Writes nothing; user errors raise ValueError,
    FileNotFoundError or FileExistsError (an existing run without `resume`) naming the cause.
    `bundle` may be given instead of loading `config.data`."""
    say = tqdm.write if (config.progress and info.is_main) else (lambda *_: None)
    check_same_options(config, info)  # first: a check below may differ between them
    if config.batch_size % info.world_size:
        lo = config.batch_size // info.world_size * info.world_size
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the "
                         f"{info.world_size} processes; give a multiple of {info.world_size}"
                         f" ({', '.join(str(b) for b in (lo, lo + info.world_size) if b)})")
    per_rank_batch = config.batch_size // info.world_size
    resume_from, meta = find_resume(config, say)
    start = None  # a fine-tuning run's weights, read where it begins (a resume has its own)
    if config.weights is not None and resume_from is None:
        start = load_start(config.model, config.weights, mean=config.mean, std=config.std,
                           resize=config.resize, crop=config.crop)
    # the inputs of a model of another architecture started from weights: theirs, kept with
    # the run; None: the paper's pixels
    prep = start.preprocessing if start is not None else ckpt.saved_preprocessing(meta)
    if bundle is None:
        from zfnet.data import load_dataset
        from zfnet.data.bundle import require_labelled_spec

        require_labelled_spec(config.data, "train on")  # before a mean image is made
        # its classes and sizes first: every check below before a pass over the training
        # images for their mean (an ImageNet's 1.28M decoded), nor a mean left in its cache
        bundle = load_dataset(config.data, strict=config.strict, cache_dir=config.data_cache,
                              outline=prep is None,  # a resumed run: minus its own mean image
                              mean_image=None if resume_from is None else
                              ckpt.read_mean_image(resume_from),
                              mean_input=None if meta is None else meta.get("input_size"),
                              preprocessing=prep)
    require_labels(bundle, "train on")
    check_classes_read(bundle.train, bundle.class_names)  # as an empty class folder: at once
    if meta is not None:
        check_resumed_data(meta, config, bundle)
    amp_dtype = amp_dtype_for(config.amp, info.device)
    if config.compile:
        check_compile(info.device)
    bare = build_model(config, bundle)
    head = transplant(start.model, bare, start.label) if start is not None else []
    frozen = (freeze_to(bare, config.freeze_to, bundle.in_channels, bundle.input_size)
              if config.freeze_to else [])
    if start is not None:
        say(describe(start, head, bundle.num_classes, frozen, bare, config.freeze_to))
        for note in start.notes:
            say(note)
        del start  # its weights are the model's now
    if getattr(bundle, "outline", False):  # checked: now its mean image, from its listing
        bundle = bundle.with_mean_image()
    torch.manual_seed(config.seed + info.rank)  # distinct dropout masks per process
    state = ckpt.read_train_state(resume_from, meta) if resume_from is not None else None
    model, bare, ema = _place(bare, config, info, resume_from, state)
    groups, first_radius = param_groups(bare, config)
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    train_set, sampler, val_loader, loader_kw, share = _data(config, bundle, info,
                                                             per_rank_batch, meta, say)
    steps_per_epoch = math.ceil(sampler.num_samples / per_rank_batch)
    progress = Progress.from_meta(meta)
    scheduler, sched_when = build_scheduler(
        optimizer, config, steps_per_epoch, progress.plan.total_steps if progress.plan else None)
    if state is not None:
        _restore(state, optimizer, scheduler, scaler, info)
        say(resume_line(resume_from, progress, config.epochs, steps_per_epoch))
        _warn_inexact(meta, info, loader_kw["num_workers"], bundle, progress.step)
    if config.compile:  # torch.compile compiles at the first steps: a silent wait otherwise
        say("compiling the model (torch.compile; the first steps take longer, "
            f"{'~1 min on a CPU' if info.device.type == 'cpu' else 'tens of seconds'})")
    return Run(config=config, info=info, bundle=bundle, say=say, model=model, bare=bare,
               ema=ema, optimizer=optimizer, scaler=scaler, scheduler=scheduler,
               sched_when=sched_when, first_radius=first_radius, amp_dtype=amp_dtype,
               train_set=train_set, sampler=sampler, val_loader=val_loader, loader_kw=loader_kw,
               host_share=share, per_rank_batch=per_rank_batch, steps_per_epoch=steps_per_epoch,
               resume_from=resume_from, progress=progress, frozen=tuple(frozen))


def resume_line(resume_from: Path, progress: Progress, epochs: int, steps_per_epoch: int
                ) -> str:
    """The line that says where a resumed run continues: "resuming from RUN/checkpoints/
    epoch_0017_step_000002: epoch 18 of 70, step 3 of 75" (1-based: the epoch and step trained
    next), or that nothing is left to train. `epochs`: the run's (its plan's with a budget)."""
    total = progress.plan.epochs if progress.plan else epochs
    where = f"resuming from {resume_from}: "
    if progress.epoch >= total:
        return where + f"all {total} epochs are trained already, nothing is left to train"
    return where + (f"epoch {progress.epoch + 1} of {total}, step {progress.step + 1} of "
                    f"{steps_per_epoch}")


def find_resume(config: TrainConfig, say: Callable[[str], None] | None = None, *,
                action: str = "--resume") -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint a run continues from and its meta, or (None, None) for a new run.

    A run directory that holds a checkpoint is continued only with `config.resume`
    (FileExistsError otherwise), and only with the model and the configuration it was
    started with (`check_resumable`); the errors say they cannot `action` it."""
    run_dir = Path(config.out)
    if not ckpt.has_checkpoint(run_dir):
        if config.resume and say is not None:
            say(f"{run_dir}: a new run (no checkpoint in it to continue)")
        return None, None
    if not config.resume:
        raise FileExistsError(
            f"{run_dir} already holds a run ({run_dir / 'checkpoints'}); pass --resume to "
            f"continue it or choose another --out"
        )
    resume_from = ckpt.find_last(run_dir)
    meta = ckpt.read_meta(resume_from)
    if meta.get("model") != config.model:
        raise ValueError(f"cannot {action} {resume_from}: it is a run of model "
                         f"{meta.get('model')!r}, not {config.model!r}")
    check_resumable(meta["train_config"], config, run_dir, action=action,
                    moved_data="train_images" in meta)  # (a run that counted its images)
    return resume_from, meta


class ResumeWarning(UserWarning):
    """A resumed run continues, but not exactly as it would have without the stop."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)


def check_resumed_data(meta: dict[str, Any], config: TrainConfig, bundle: Any) -> None:
    """A resumed run's data against what the run was trained on (`meta`, its checkpoint's):
    the same classes, and under another spec (the folder moved, or made into shards) the same
    number of images, else a ValueError saying what differs; under the same spec, changed
    contents go on with a `ResumeWarning` that says so."""
    import warnings

    then, now = list(meta.get("class_names") or []), list(bundle.class_names)
    saved_spec = absolute_spec(meta["train_config"]["data"])
    moved = saved_spec != absolute_spec(config.data)
    counts = {"training": (meta.get("train_images"), len(bundle.train)),
              "validation": (meta.get("val_images"), len(bundle.val))}
    # shards written from the run's folder hold its readable images: its broken files, which
    # the run counted (and skipped), are listed in their manifest instead
    left_out = _shards_left_out(config.data) if moved else {}
    without = [f"{b} {what} images in them, {a} in the run: the {left_out[what]} broken "
               "file(s) the run skipped were left out when they were written"
               for what, (a, b) in counts.items()
               if a is not None and a != b and b + left_out.get(what, 0) == a]
    differ = [f"{b} {what} images now, {a} in the run" for what, (a, b) in counts.items()
              if a is not None and a != b and b + left_out.get(what, 0) != a]
    if then != now:
        new, gone = sorted(set(now) - set(then)), sorted(set(then) - set(now))
        differ.insert(0, f"{len(now)} classes now, {len(then)} in the run" + "".join(
            f"; {w}: {', '.join(c[:5])}{', ...' if len(c) > 5 else ''}"
            for w, c in (("new", new), ("gone", gone)) if c))
    where = "the data of the run" if not moved else f"{config.data}"
    size_then, size_now = meta.get("input_size"), getattr(bundle, "input_size", None)
    if None not in (size_then, size_now) and size_then != size_now:  # the weights do not fit
        raise ValueError(f"cannot --resume the run in {config.out} on {where}: its inputs are "
                         f"{size_now} px, the run's {size_then} px (the run: {saved_spec}); give "
                         f"the run's size (size={size_then}) or train a new run with another "
                         "--out")
    if then != now or (moved and differ):
        raise ValueError(f"cannot --resume the run in {config.out} on {where}: "
                         + "; ".join(differ) + f" (the run: {saved_spec}); give the run's data "
                         "or train a new run with another --out")
    if differ or without:
        what = (f"the data of the run has changed since it was saved ({'; '.join(differ)})"
                if differ else f"the run's data is now {config.data} ({'; '.join(without)})")
        warnings.warn(f"{what}: it continues on the images as they are now, not exactly as it "
                      "would have", ResumeWarning, stacklevel=2)
    elif moved:
        warnings.warn(f"the run's data is now {config.data} (was {saved_spec}): "
                      f"{len(bundle.train)} training images of {len(now)} classes, as many as "
                      "the run's (their contents are not compared)", ResumeWarning, stacklevel=2)


def _shards_left_out(spec: str) -> dict[str, int]:
    """For `shards:OUT` of whole splits (no subset options): the broken files of the folder
    they were written from, left out of each split ("training", "validation"); else none."""
    from zfnet.data.spec import parse_spec

    parsed = parse_spec(spec)
    if parsed.name != "shards" or not parsed.path or \
            set(parsed.options) & {"n_train", "n_val", "per_class", "classes"}:
        return {}
    from zfnet.data.shards import read_manifest

    try:
        splits = read_manifest(parsed.path)["splits"]
    except (OSError, ValueError, KeyError):
        return {}
    return {what: len(splits.get(split, {}).get("skipped") or [])
            for what, split in (("training", "train"), ("validation", "val"))}


def check_resumable(saved: dict[str, Any], config: TrainConfig, where: Path, *,
                    action: str = "--resume", instead: str = "another --out",
                    moved_data: bool = False) -> None:
    """Refuse to continue a run saved with `saved` (its TrainConfig as a dict) under a
    configuration that would compute something else (`IDENTITY_FIELDS`, and the fields the
    schedule depends on); the ValueError says it cannot `action` the run, lists every
    difference and ends with what to give `instead`. With `moved_data`, another data spec is
    let through: the caller checks that it holds the run's images (`check_resumed_data`)."""
    fields = [f for f in IDENTITY_FIELDS if not (moved_data and f == "data")]
    if config.schedule in ("cosine", "linear", "onecycle"):
        fields.append("epochs")  # the schedule's length depends on it
    if config.schedule == "plateau":
        fields.append("val_every")  # the schedule steps on validations
    fields.append("time_budget")  # a budgeted run's plan is kept on resume
    now = config.to_dict()
    # Through the config class, as a resume loads it: a field the run predates had its default.
    saved = TrainConfig.from_dict(saved).to_dict()
    # the same data, however its path is written (a run started with a relative one)
    saved["data"], now["data"] = absolute_spec(saved["data"]), absolute_spec(now["data"])
    diffs = [f"{k}: {saved.get(k)!r} in the run, {now[k]!r} now" for k in fields
             if json.dumps(saved.get(k), sort_keys=True) != json.dumps(now[k], sort_keys=True)]
    if diffs:
        longer = (f"; a {config.schedule} schedule's length is the run's --epochs (its learning "
                  "rate ends there), so only a run under --schedule plateau or step can be "
                  "given more epochs" if any(d.startswith("epochs:") for d in diffs)
                  and config.schedule in ("cosine", "linear", "onecycle") else "")
        raise ValueError(
            f"cannot {action} the run in {where} with a different configuration ("
            + "; ".join(diffs) + f"); use the run's values or {instead}{longer}"
        )


# The model options a dataset fixes: they follow from the data, never from --model-opt.
DATA_FIXED = ("num_classes", "in_channels", "input_size")


def build_model(config: TrainConfig, bundle: Any) -> nn.Module:
    """`config.model` with `config.model_opts` for `bundle`'s images and classes, initialised
    from `config.seed` (the same weights on every process), in training mode on the CPU.

    Checked before a run writes anything: an option the data fixes is refused, and one forward
    pass of a blank image must run. Whatever building or running it raises (a bad option value
    that only the layers notice) becomes a ValueError naming the model and its options."""
    fixed = {"num_classes": bundle.num_classes, "in_channels": bundle.in_channels,
             "input_size": bundle.input_size}
    clash = [k for k in DATA_FIXED if k in config.model_opts]
    if clash:
        raise ValueError(
            f"model option(s) {', '.join(clash)} cannot be set: they follow from the data "
            f"({config.data!r}: {fixed['num_classes']} classes, {fixed['in_channels']} "
            f"channel(s), {fixed['input_size']} px crops); choose them through --data"
        )
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    try:
        if config.model in zfnet.list_models():
            model = zfnet.create_model(config.model, **fixed, **config.model_opts)
        else:  # torchvision's, timm's, your own
            from zfnet.sources import build_architecture

            model = build_architecture(config.model, fixed["num_classes"],
                                       fixed["in_channels"], fixed["input_size"])
        _forward_blank(model, fixed["in_channels"], fixed["input_size"])
    except ValueError:
        raise  # the model's own checks: their messages name the option
    except Exception as e:  # any layer's complaint about an option value
        opts = ", ".join(f"{k}={v}" for k, v in config.model_opts.items()) or "no options"
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(
            f"model {config.model!r} with {opts} does not work on {fixed['input_size']} px "
            f"{fixed['in_channels']}-channel images: {type(e).__name__}: {reason}"
        ) from e
    return model


def _forward_blank(model: nn.Module, channels: int, size: int) -> None:
    """Run `model` once on a blank (1, C, S, S) image in eval mode, leaving its state, its
    mode and the RNGs as they were."""
    with torch.random.fork_rng(devices=[]), torch.no_grad(), eval_mode(model):
        model(torch.zeros(1, channels, size, size))


def _place(
    bare: nn.Module, config: TrainConfig, info: ddp.DistInfo, resume_from: Path | None,
    state: dict[str, Any] | None,
) -> tuple[nn.Module, nn.Module, AveragedModel | None]:
    """The model with a resumed run's weights, on the device, its weight average (`--ema`)
    and its DDP wrapper, compiled with `--compile`: (what trains, the model itself, the average
    or None)."""
    if state is not None:
        if config.ema:  # model.safetensors holds the average; the live weights are kept here
            bare.load_state_dict(state["live_weights"])
        else:
            ckpt.load_weights(bare, resume_from)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    bare = bare.to(info.device, memory_format=fmt)
    ema = make_ema(bare, config.ema) if config.ema else None
    if ema is not None and state is not None:
        ckpt.load_weights(ema.module, resume_from)
        ema.n_averaged.fill_(int(state["ema_updates"]))
    model = bare
    if info.enabled:
        dev = info.device
        model = nn.parallel.DistributedDataParallel(
            bare, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    if config.compile:  # after DDP (zfnet.train.compiled); `bare` stays what is saved
        model = compile_model(model)
    return model, bare, ema


def _data(
    config: TrainConfig, bundle: Any, info: ddp.DistInfo, per_rank_batch: int,
    meta: dict[str, Any] | None, say: Callable[[str], None],
) -> tuple[SeededSamples, ddp.ResumableSampler, Any, dict[str, Any], float | None]:
    """This process's share of the data: the seeded training set and its sampler, the
    validation loader, the loader options an epoch's loader is made with, and with --loader
    mixed the share of images the workers decode (a resumed run's own, else measured)."""
    # the input pipeline (zfnet.data.loaders): what the workers hand over, the rest on the device
    erasing = config.random_erasing
    kind = loader_kind(config.loader, bundle.train, info.device, erasing=erasing,
                       spec=config.data)
    workers = resolve_workers(config.workers, info.device)
    share = None
    if kind == "mixed":
        share = saved_share(meta)
        if share is None:
            found = measure_share(bundle.train, info.device, workers, batch_size=per_rank_batch,
                                  reduce=lambda p: ddp.all_reduce_mean(p, info))
            share = found.share
            say(found.describe())
    train = for_loader(kind, bundle.train, erasing=erasing, share=share or 0.0)
    val = for_loader(kind, bundle.val, share=share or 0.0)
    train_set = SeededSamples(train, config.seed, erasing)
    sampler = ddp.ResumableSampler(train_set, info.world_size, info.rank, shuffle=True,
                                   seed=config.seed)
    loader_kw: dict[str, Any] = {"num_workers": workers,
                                 "collate_fn": collate_for(train),
                                 "pin_memory": info.device.type == "cuda"}
    val_set = Subset(val, range(info.rank, len(bundle.val), info.world_size))
    val_loader = as_inputs(Loader(val_set, batch_size=per_rank_batch, shuffle=False,
                                  generator=torch.Generator().manual_seed(0),
                                  **{**loader_kw, "collate_fn": collate_for(val)}),
                           val, info.device)
    return train_set, sampler, val_loader, loader_kw, share


def _warn_inexact(meta: dict[str, Any], info: ddp.DistInfo, workers: int, bundle: Any,
                  step: int) -> None:
    """A `ResumeWarning` where the resumed run cannot be exact: another number of processes
    (each draws its own dropout masks), or, for shards resumed mid-epoch, of workers (the rest
    of the epoch is split afresh, in another order)."""
    import warnings

    then = meta.get("world_size", info.world_size)
    if then != info.world_size:
        warnings.warn(f"resumed on {info.world_size} process(es), the run had {then}: the same "
                      "data order and batch, but not exactly the run it would have been (each "
                      "process draws its own dropout masks)", ResumeWarning, stacklevel=2)
    if step and hasattr(bundle.train, "epoch_stream") and meta.get("workers", workers) != workers:
        warnings.warn(f"resumed mid-epoch with {workers} worker(s), the run had "
                      f"{meta['workers']}: the rest of this epoch of shards comes in another "
                      f"order (--workers {meta['workers']} keeps it)", ResumeWarning,
                      stacklevel=2)


def _restore(state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any,
             scaler: torch.amp.GradScaler | None, info: ddp.DistInfo) -> None:
    """A checkpoint's optimizer, schedule, gradient scaler and RNG states. (Older checkpoints
    also hold a "sampler" entry, not read: the position it repeats is the meta's epoch and
    step_in_epoch.)"""
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], info)


def epoch_loader(run: Run, epoch: int, start_step: int = 0,
                 end_step: int | None = None) -> tuple[Any, int]:
    """The training batches of `epoch` on this process, from step `start_step` to `end_step`
    (None: the epoch's end), and how many samples they hold. The order depends only on (seed,
    epoch) and each sample's augmentation on (seed, epoch, index): a resumed epoch gives the
    batches the uninterrupted one would have."""
    sampler = run.sampler
    sampler.set_epoch(epoch)
    sampler.skip = start_step * run.per_rank_batch
    run.train_set.epoch = epoch
    end = (sampler.num_samples if end_step is None
           else min(sampler.num_samples, end_step * run.per_rank_batch))
    # Workers' seeds from their own generator, not from torch's (dropout's: resumed exactly).
    generator = torch.Generator().manual_seed(run.config.seed * 1000 + epoch)
    stream = getattr(run.bundle.train, "epoch_stream", None)
    if stream is not None:  # shards: streamed, split per rank and worker (same lengths)
        batches = stream(run.train_set, epoch=epoch, seed=run.config.seed,
                         batch_size=run.per_rank_batch, rank=run.info.rank,
                         world_size=run.info.world_size, start_step=start_step,
                         workers_before=_workers_before(run) if start_step else None)
        loader = Loader(batches, batch_size=None, generator=generator, **run.loader_kw)
    else:
        loader = Loader(run.train_set, batch_size=run.per_rank_batch, sampler=sampler,
                        generator=generator, **run.loader_kw)
    return as_inputs(loader, run.train_set.dataset, run.info.device), end - sampler.skip


def _workers_before(run: Run) -> int | None:
    """The DataLoader workers of the session that saved the checkpoint a run resumes from (a
    streamed epoch's split depends on them): the number it used (`workers` in its meta), or
    its configuration's from before `--workers auto`."""
    if run.resume_from is None:
        return None
    meta = ckpt.read_meta(run.resume_from)
    used = meta.get("workers", meta.get("train_config", {}).get("workers", 0))
    return max(1, int(used or 0))


def model_config(model: nn.Module) -> dict[str, Any]:
    """The model's NetConfig as a dict (what a checkpoint rebuilds it from); {} for others."""
    cfg = zfnet_config(model)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else {}
