"""Run logs: metrics.csv (one row per epoch) and TensorBoard. Only the main process writes."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from zfnet.train.checkpoint import write_text_atomic

CSV_COLUMNS = (
    "epoch", "global_step", "lr", "train_loss", "train_top1_error", "val_loss",
    "val_top1_error", "val_top5_error", "epoch_time_s", "img_per_s", "skipped",
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
