"""The training loop: `train` builds a run (`zfnet.train.run`), then trains it epoch by epoch.

Each epoch: `train_one_epoch`, then validation (every `val_every`-th epoch and the last), a new
plan when the run has a time budget, the lr schedule's epoch step, a checkpoint, metrics.csv and
the log line. SIGTERM / SIGINT end the step under way, save a mid-epoch checkpoint and return
(`EXIT_INTERRUPTED`); a NaN loss stops with the last good checkpoint kept; with `strict`, a
broken file stops the run with an error naming it.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zfnet.data.images import BadImageError, BrokenImageWarning
from zfnet.data.words import labels_of
from zfnet.train import checkpoint as ckpt
from zfnet.train import distributed as ddp
from zfnet.train.config import TrainConfig
from zfnet.train.lock import LOCK_FILE, run_lock
from zfnet.train.logs import TensorBoard, epoch_lines, epoch_row, write_metrics_csv
from zfnet.train.recipe import (
    EpochState,
    NonFiniteLossError,
    evaluate,
    replan,
    rng_state,
    train_one_epoch,
)
from zfnet.train.run import PARTIAL_KEYS, Run, build_run, epoch_loader, model_config

# Exit codes of `zfnet train` after SIGINT / SIGTERM: the shell convention 128 + signal number,
# so that schedulers see "terminated", although a checkpoint was saved and `--resume` continues.
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


def train(config: TrainConfig, bundle: Any = None) -> dict[str, Any]:
    """Train `config.model` on `config.data` with the paper's recipe; write the run directory.

    `bundle` (a `zfnet.data.DataBundle`) may be given to skip `load_dataset(config.data)`.
    Works the same in one process and under torchrun (DDP; a process group the caller joined
    before is used, and left joined). Every input is checked before the first write to
    `config.out`, and a new run that fails before its first checkpoint removes what it wrote
    there (`NewRunDir`). Returns a summary: run_dir, status ("completed" or "interrupted"),
    signal, epochs_completed, global_step, step_in_epoch (> 0: the steps into the next epoch
    that the checkpoint saved on a signal holds), final (the last epoch's metrics),
    best_val_top1_error, checkpoint, wall_time_s, device, amp, world_size, num_classes, plan.
    Raises `NonFiniteLossError` on a NaN/inf loss (the last good checkpoint is kept), and
    `BadImageError` naming a broken file with `config.strict`.
    """
    t_start = time.perf_counter()
    with ddp.processes(config.device) as info:  # a group the caller joined is left joined
        run = build_run(config, info, bundle)
        # a new run that fails before its first checkpoint leaves nothing in --out
        made = NewRunDir(run.run_dir) if run.resume_from is None and info.is_main else None
        try:
            with run_lock(run.run_dir, run.info.is_main):  # one process trains a run at once
                try:
                    start_run_dir(run)
                    return Session(run, t_start).train()
                except BaseException:
                    if made is not None:
                        made.undo()
                    raise
        finally:
            if info.enabled:
                _free_before_the_group_goes(run)


def _free_before_the_group_goes(run: Run) -> None:
    """Free the run's DDP wrapper while the process group is still registered. Its reducer
    holds the group: freed after it, it was the group's last holder, and up to torch 2.9 its
    destructor joined gloo's worker threads with the GIL held while one of them waited for the
    GIL to free a finished collective's tensor — a deadlock at the end of some runs."""
    run.model = run.bare  # the DDP wrapper (and a compiled one around it) dropped
    gc.collect()  # and any reference cycle through it


class NewRunDir:
    """What a new run makes in its directory, noted before it starts (`start_run_dir`, the
    lock, TensorBoard's tb/), so that a run that fails before its first checkpoint can remove
    it (`undo`): the files and folders it made, the directory and its parents if it made them
    and they are then empty; never what was there before, nor anything once a checkpoint is
    saved."""

    MADE = ("config.json", "metrics.csv", "tb", "checkpoints", LOCK_FILE)

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.before = {n for n in self.MADE if os.path.lexists(run_dir / n)}
        self.dirs: list[Path] = []  # the folders that do not exist yet, innermost first
        d = run_dir.absolute()
        while not os.path.lexists(d) and d != d.parent:
            self.dirs.append(d)
            d = d.parent

    def undo(self) -> None:
        """Remove what the run made, unless it holds a checkpoint (then all is kept)."""
        try:
            if ckpt.has_checkpoint(self.run_dir):
                return
            for name in self.MADE:
                p = self.run_dir / name
                if name in self.before or not os.path.lexists(p):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            for d in self.dirs:
                d.rmdir()  # only an empty one: anything else put there stays
        except OSError:
            pass  # what could not be removed stays; the run's own error is what is told


def start_run_dir(run: Run) -> None:
    """The run's first writes (main process): the directory, config.json, metrics.csv (a
    resumed run's rows so far); half-written checkpoints of a killed process are removed."""
    if run.info.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(run.run_dir / "checkpoints")
        ckpt.write_text_atomic(run.run_dir / "config.json", run.config.to_json() + "\n")
        write_metrics_csv(run.run_dir / "metrics.csv", run.progress.history)


class Checkpoints:
    """Writes a run's checkpoints (`zfnet.train.checkpoint`): the validated weights, the meta
    (model, data, configuration, progress, metrics, plan) and what a resume restores."""

    def __init__(self, run: Run) -> None:
        self.run = run
        config = run.config
        self.keep = {ckpt.checkpoint_name(e) for e in config.keep_epochs}
        # the mean image the inputs are minus (the paper's convention; None: a model's own
        # preprocessing), kept with the weights for every later command's data
        mean = getattr(run.bundle, "mean", None)
        self.mean_image = mean if getattr(run.bundle, "preprocessing", None) is None and \
            getattr(mean, "ndim", 0) == 3 else None
        self.base_meta = {
            "model": config.model, "model_opts": config.to_dict()["model_opts"],
            "model_config": model_config(run.bare), "data": run.bundle.spec,
            "class_names": list(run.bundle.class_names), "num_classes": run.bundle.num_classes,
            "class_labels": labels_of(run.bundle),  # as shown: with their words (words=FILE)
            "in_channels": run.bundle.in_channels, "input_size": run.bundle.input_size,
            "train_config": config.to_dict(), "world_size": run.info.world_size,
            "workers": run.loader_kw["num_workers"],  # what --workers auto came to
            # what a resume checks its data against (the folder moved, or changed under it)
            "train_images": len(run.bundle.train), "val_images": len(run.bundle.val),
        }
        prep = getattr(run.bundle, "preprocessing", None)
        if prep is not None and prep.mean_image is None:  # a model's own inputs: theirs
            self.base_meta["preprocessing"] = prep.to_dict()
        if run.host_share is not None:  # --loader mixed: a resume decodes the same images
            self.base_meta["host_share"] = run.host_share
        self.last = str(run.resume_from) if run.resume_from else None  # the newest one

    def save(self, epoch: int, step_in_epoch: int, st: EpochState, elapsed: float,
             history: list[dict[str, Any]], plan: Any,
             partial: dict[str, float] | None = None) -> None:
        """Checkpoint `epoch_EEEE` (after `epoch` epochs), or `epoch_EEEE_step_SSSSSS` when
        `step_in_epoch` steps into the next with its `partial` sums. Every process takes part."""
        run = self.run
        train_state: dict[str, Any] = {
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "rng": rng_state(run.info),  # collective: every process takes part
        }
        if run.ema is not None:
            train_state["live_weights"] = {k: v.detach().cpu().contiguous()
                                           for k, v in run.bare.state_dict().items()}
            train_state["ema_updates"] = int(run.ema.n_averaged)
        if run.info.is_main:
            meta = {**self.base_meta, "epoch": epoch, "step_in_epoch": step_in_epoch,
                    "global_step": st.global_step, "train_time_s": elapsed,
                    "metrics": history[-1] if history else {}, "history": history,
                    "partial_epoch": partial or {}, "saved_at": time.time(),
                    "plan": plan.to_dict() if plan else None}
            name = ckpt.checkpoint_name(epoch, step_in_epoch)
            ckpt.save_checkpoint(run.run_dir / "checkpoints", name, run.shown, meta,
                                 train_state, keep=self.keep | {name},
                                 mean_image=self.mean_image)
        # known to every process: its messages name it too
        self.last = str(run.run_dir / "checkpoints" / ckpt.checkpoint_name(epoch, step_in_epoch))
        ddp.barrier(run.info)


class Session:
    """One session of a run: from where `build_run` left it to the end of its epochs (or of
    its plan), a signal, or an error."""

    def __init__(self, run: Run, t_start: float) -> None:
        self.run = run
        config, p = run.config, run.progress
        self.t_start = t_start  # when `train` was called: a time budget counts the set-up too
        self.plan = p.plan
        self.history = p.history
        self.carry = dict(p.partial)  # the sums of the resumed epoch's part done before
        self._trained: tuple[int, int, dict[str, float]] | None = None  # (epoch, steps, sums)
        self.checkpoints = Checkpoints(run)
        self.tb = TensorBoard(run.run_dir / "tb" if (config.tensorboard and run.info.is_main)
                              else None, purge_step=p.global_step or None)
        self.st = EpochState(
            epoch=p.epoch, epochs=self.n_epochs, global_step=p.global_step,
            amp_dtype=run.amp_dtype, scaler=run.scaler,
            renorm_radius=config.renorm_radius if config.renorm else None,
            first_radius=run.first_radius, label_smoothing=config.label_smoothing,
            step_scheduler=run.scheduler if run.sched_when == "step" else None,
            channels_last=config.channels_last, ema=run.ema, ema_source=run.bare,
            progress=config.progress, tb=self.tb, frozen=run.frozen)
        self.status = "completed"
        self.stopped_step = 0  # steps into the next epoch of the checkpoint saved on a signal
        # the broken files of the training / validation set are named (warned about) in the
        # first whole pass over it; later passes count them only (metrics.csv, epoch lines)
        self.named = {"train": False, "val": False}
        self.seg_time, self.seg_steps = 0.0, 0  # this process's training time and steps
        self.t_run = time.perf_counter()

    @property
    def n_epochs(self) -> int:
        """The epochs the run trains: its plan's with a time budget, else `config.epochs`."""
        return self.plan.epochs if self.plan else self.run.config.epochs

    def elapsed(self) -> float:
        """Training time of the run so far, earlier sessions included."""
        return self.run.progress.train_time_s + time.perf_counter() - self.t_run

    def train(self) -> dict[str, Any]:
        """Train the remaining epochs; the summary `train` returns."""
        try:
            with _stop_on_signals(self.st.stop):
                epoch = self.run.progress.epoch
                while epoch < self.n_epochs and self._epoch(epoch):
                    epoch += 1
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e}: {self.checkpoints.last or 'none written yet'}"
                                     ) from None
        except BadImageError as e:  # only strict datasets raise it
            stop = (f"training stopped (--strict), the last checkpoint is "
                    f"{self.checkpoints.last or 'none yet'}: fix or remove the file and "
                    "continue with --resume, or with --resume --no-strict to skip broken files")
            raise (BadImageError(e.path, f"{e.reason}; {stop}") if e.reason
                   else BadImageError(f"{e}; {stop}")) from None
        finally:
            self.tb.close()
        return self.summary()

    def _epoch(self, epoch: int) -> bool:
        """Train, validate, re-plan, save and log 0-based `epoch`; False when the run stops
        after it (a signal)."""
        r, sums = self._train_epoch(epoch)
        if r["interrupted"]:
            # (by every process alike: a broken file stops the others at the same step)
            self.checkpoints.save(epoch, int(r["steps"]), self.st, self.elapsed(),
                                  self.history, self.plan, sums)
            self.status, self.stopped_step = "interrupted", int(r["steps"])
            # strict: saved up to the file, which stops it; under torchrun every process says
            # the file one of them met (the others said "interrupted by a signal to another
            # process", exit 143, and the one that met it was ended before it could say it)
            ddp.raise_any_error(self.st.broken, self.run.info, "training")
            return False
        self._trained = (epoch, int(r["steps"]), sums)  # saved if its validation fails
        val, validated = self._validate_and_plan(epoch, r)
        diverged = next((f"{what} is {v}" for what, v in (
            ("its training loss", sums["loss_sum"] / max(sums["seen"], 1)),
            ("its validation loss", val["loss"])) if v is not None and not math.isfinite(v)),
            None)  # (the same figures in every process: all stop here)
        if diverged:  # every step's loss finite, the weights blown up all the same
            raise NonFiniteLossError(f"epoch {epoch + 1} diverged: {diverged}; training "
                                     "stopped, the last good checkpoint is kept")
        self._close_epoch(epoch, sums, val, validated)
        # arrived during evaluation, on any process: all stop here (once an epoch, so the host
        # may wait for the device)
        (stop,) = ddp.all_reduce_max([self.st.stop["signal"] is not None], self.run.info)
        if stop:
            self.status = "interrupted"
            return False
        return True

    def _train_epoch(self, epoch: int) -> tuple[dict[str, float], dict[str, float]]:
        """`train_one_epoch` of `epoch` (from the resumed step, to the plan's end): its result
        and the sums over every process (PARTIAL_KEYS), the resumed part included."""
        run, st = self.run, self.st
        st.epoch, st.epochs = epoch, self.n_epochs
        st.start_step = run.progress.step if epoch == run.progress.epoch else 0
        st.end_step = self.plan.end_step(epoch) if self.plan else None
        loader, expected = epoch_loader(run, epoch, st.start_step, st.end_step)
        with _broken_named(self.named["train"]):
            r = train_one_epoch(run.model, loader, run.optimizer, st, run.info)
        if not (st.start_step or r["interrupted"] or st.end_step is not None):
            self.named["train"] = True  # a whole pass: every broken file was met
        skip = st.start_step * run.per_rank_batch
        done = min(int(r["steps"]) * run.per_rank_batch, run.sampler.num_samples)
        sums = ddp.all_reduce_sum(
            [r["loss_sum"], r["correct"], r["seen"],
             float(done - skip if r["interrupted"] else expected)], run.info)
        totals = {k: v + self.carry[k] for k, v in zip(PARTIAL_KEYS[:4], sums, strict=True)}
        totals["time"] = r["time"] + self.carry["time"]
        self.carry = dict.fromkeys(PARTIAL_KEYS, 0.0)
        return r, totals

    def _validate_and_plan(self, epoch: int, r: dict[str, float]
                           ) -> tuple[dict[str, Any], bool]:
        """Validate when due, and re-plan a budgeted run after every whole epoch but its last
        (the first plan also times a validation): (the validation's figures, validated?)."""
        config = self.run.config
        to_plan = config.time_budget is not None and epoch + 1 < self.n_epochs
        validate = ((epoch + 1) % config.val_every == 0 or epoch + 1 == self.n_epochs
                    or (to_plan and self.plan is None))
        t_val = time.perf_counter()
        val = (self._validation() if validate
               else dict.fromkeys(("loss", "top1_error", "top5_error")))
        t_val = time.perf_counter() - t_val
        if to_plan:
            self._replan(r, t_val if validate else self.plan.val_s)  # the first validates
            if epoch + 1 == self.n_epochs and not validate:  # the plan ends the run here
                val, validate = self._validation(), True
        return val, validate

    def _validation(self) -> dict[str, Any]:
        """The validation set's figures. An error there (a broken file with --strict: raised
        in every process alike) comes after the epoch's training is saved, as at its last
        step: a resume validates it and goes on, the epoch not trained again."""
        run = self.run
        try:
            with _broken_named(self.named["val"]):
                val = evaluate(run.shown, run.val_loader, run.bundle.num_classes, run.info,
                               run.amp_dtype, run.config.channels_last)
            self.named["val"] = True
            return val
        except Exception:
            if self._trained is None:
                raise
            epoch, steps, sums = self._trained
            self.checkpoints.save(epoch, steps, self.st, self.elapsed(), self.history,
                                  self.plan, sums)
            raise

    def _replan(self, r: dict[str, float], val_s: float) -> None:
        """Plan the run from the rates of this session's epochs (`zfnet.train.budget`)."""
        run = self.run
        self.seg_time += r["time"]
        self.seg_steps += int(r["steps"]) - self.st.start_step
        before = self.plan
        used = run.progress.train_time_s + time.perf_counter() - self.t_start
        self.plan = replan(run.config, run.info, run.scheduler, run.steps_per_epoch,
                           self.st.global_step, used, self.seg_time / max(1, self.seg_steps),
                           val_s)
        if before is None or before.total_steps != self.plan.total_steps:
            run.say(self.plan.describe())

    def _close_epoch(self, epoch: int, sums: dict[str, float], val: dict[str, Any],
                     validated: bool) -> None:
        """The lr schedule's epoch step, the epoch's row, its checkpoint and its log lines."""
        run, config = self.run, self.run.config
        lr = run.optimizer.param_groups[0]["lr"]
        if run.sched_when == "epoch":
            if config.schedule != "plateau":
                run.scheduler.step()
            elif validated:  # patience counts validations
                run.scheduler.step(val["top1_error"])
        row = epoch_row(epoch, self.st.global_step, lr, sums, val)
        self.history.append(row)
        self.checkpoints.save(epoch + 1, 0, self.st, self.elapsed(), self.history, self.plan)
        if run.info.is_main:
            write_metrics_csv(run.run_dir / "metrics.csv", self.history)
            self.tb.scalars({f"epoch/{k}": v for k, v in row.items() if k != "epoch"},
                            self.st.global_step)
        for line in epoch_lines(row, self.n_epochs, validated, run.bundle.num_classes):
            run.say(line)

    def summary(self) -> dict[str, Any]:
        """What `train` returns (see there)."""
        run, sig = self.run, self.st.stop["signal"]
        best = min((h["val_top1_error"] for h in self.history
                    if h["val_top1_error"] is not None), default=None)
        return {
            "run_dir": str(run.run_dir), "status": self.status,
            "signal": signal.Signals(sig).name if sig else None,
            "epochs_completed": len(self.history), "global_step": self.st.global_step,
            "step_in_epoch": self.stopped_step,  # > 0: the checkpoint is that far into the next
            "num_classes": run.bundle.num_classes,
            "final": self.history[-1] if self.history else {}, "best_val_top1_error": best,
            "checkpoint": self.checkpoints.last,
            "wall_time_s": time.perf_counter() - self.t_start, "device": str(run.info.device),
            "amp": str(run.amp_dtype).removeprefix("torch.") if run.amp_dtype else "off",
            "world_size": run.info.world_size,
            "plan": self.plan.to_dict() if self.plan else None,
        }


@contextmanager
def _broken_named(named: bool) -> Iterator[None]:
    """Inside, with `named` (a set whose broken files were named in an earlier pass), skipped
    files are not warned about again, in this process and in the loader workers forked here
    (they inherit the filter): each broken file is named once, not once per epoch."""
    if not named:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=BrokenImageWarning)
        yield


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
