"""Run logs: metrics.csv (one row per epoch) and TensorBoard. Only the main process writes."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from zfnet.train.checkpoint import write_text_atomic

CSV_COLUMNS = (
    "epoch", "global_step", "lr", "train_loss", "train_top1_error", "val_loss",
    "val_top1_error", "val_top5_error", "epoch_time_s", "img_per_s", "skipped", "val_skipped",
)


def write_metrics_csv(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Write every epoch's row (the history kept in the checkpoint) to `path`, atomically.

    Rewriting the whole file from the checkpoint's history keeps the CSV consistent with the
    weights after a resume, whatever moment the previous process was killed at.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: _fmt(row.get(k)) for k in CSV_COLUMNS})
    write_text_atomic(Path(path), buf.getvalue())


def epoch_row(epoch: int, global_step: int, lr: float, sums: dict[str, float],
              val: dict[str, Any]) -> dict[str, Any]:
    """metrics.csv's row (`CSV_COLUMNS`) of 0-based `epoch`, from the training sums over all
    processes (loss_sum, correct, seen; expected: the samples the epoch held, broken files
    included; time) and the validation's loss / top1_error / top5_error / skipped (None: not
    validated). `skipped`: the training samples left out (broken files), `val_skipped` the
    validation's."""
    seen = sums["seen"]
    return {
        "epoch": epoch + 1, "global_step": global_step, "lr": lr,
        "train_loss": sums["loss_sum"] / max(seen, 1),
        "train_top1_error": 1 - sums["correct"] / max(seen, 1),
        "val_loss": val["loss"], "val_top1_error": val["top1_error"],
        "val_top5_error": val["top5_error"], "epoch_time_s": sums["time"],
        "img_per_s": seen / max(sums["time"], 1e-9), "skipped": int(sums["expected"] - seen),
        "val_skipped": val.get("skipped"),
    }


def top5_words(error: float, classes: int | None, label: str = "top-5") -> str:
    """The top-5 figure in words, `label` and the error: with 5 classes or fewer every class is
    among the top 5 (the error is 0 by definition), which is said instead of "0.00%"."""
    if classes is not None and classes <= 5:
        return f"top-5: every one of the {classes} classes"
    return f"{label} {error:.2%}"


STUCK = 5e-4  # a mean training loss this close to ln(classes): outputs that do not move


def stuck_at_chance(loss: float, classes: int | None) -> bool:
    """Whether a mean training loss is ln(classes) to `STUCK`: the loss of outputs that are the
    same for every image, a network that has not started to learn."""
    return bool(classes) and classes > 1 and abs(loss - math.log(classes)) < STUCK


def epoch_lines(row: dict[str, Any], epochs: int, validated: bool,
                classes: int | None = None) -> list[str]:
    """The log lines of an epoch's `epoch_row`: its figures, and the samples skipped if any.
    `classes`: the dataset's (its top-5 is worded as `top5_words` says)."""
    val = (f"val top-1 err {row['val_top1_error']:.2%}  "
           f"{top5_words(row['val_top5_error'], classes)}  " if validated else "")
    lines = [f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  "
             f"train err {row['train_top1_error']:.2%}  {val}lr {row['lr']:.2g}  "
             f"{row['img_per_s']:.0f} img/s"]
    if row["skipped"]:
        lines.append(f"epoch {row['epoch']}: {row['skipped']} training sample(s) skipped "
                     f"(unreadable files, named in the warnings above)")
    if row.get("val_skipped"):
        lines.append(f"epoch {row['epoch']}: {row['val_skipped']} validation image(s) left out "
                     "of its figures (unreadable files, named in the warnings above)")
    if stuck_at_chance(row["train_loss"], classes):
        lines.append(f"epoch {row['epoch']}: the training loss is ln {classes} = "
                     f"{math.log(classes):.4f}, the loss of outputs that are the same for every "
                     "image: the network has not started to learn (a ReLU before the logits "
                     "that never fires? a --lr too high or too low?)")
    return lines


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


class TensorBoard:
    """Thin wrapper around `SummaryWriter` that does nothing when disabled."""

    def __init__(self, log_dir: str | Path | None, purge_step: int | None = None) -> None:
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float | None], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if v is not None:
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
