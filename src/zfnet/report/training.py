"""The training part of a run's report: curves from metrics.csv, the evaluation's confusion
matrix and per-class accuracy. Reads results only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from zfnet.report.plots import plot_confusion, plot_curves, read_metrics_csv
from zfnet.report.sections import Figure, Section, Table, write_section


def training_section(run_dir: str | Path, order: int = 10) -> Section:
    """Section "Training" from `run_dir/metrics.csv` (written by `zfnet train`)."""
    run_dir = Path(run_dir)
    m = read_metrics_csv(run_dir / "metrics.csv")
    if not m:
        raise FileNotFoundError(f"{run_dir / 'metrics.csv'} has no epochs yet")
    ep = m["epoch"]
    pct = lambda xs: [100 * x for x in xs]  # noqa: E731
    path = plot_curves(ep, {
        "loss": {"train": m["train_loss"], "val": m["val_loss"]},
        "top-1 error (%)": {"train": pct(m["train_top1_error"]), "val": pct(m["val_top1_error"])},
        "learning rate": {"lr": m["lr"]},
    }, run_dir / "figures" / "training_curves.png")
    # the last measured value of each column (val cells are empty on epochs not validated)
    last = {k: next((x for x in reversed(v) if math.isfinite(x)), math.nan)
            for k, v in m.items()}
    section = Section(
        key="training", title="Training", order=order,
        caption=(
            "Loss and top-1 error per epoch on the training images (random crops, dropout on, "
            "so usually above validation early on) and on the validation images (centre crop), "
            "and the learning rate: the paper's recipe divides it by 10 when the validation "
            "error stops improving (Sec. 3)."
        ),
        figures=[Figure(str(path.relative_to(run_dir)), "loss, top-1 error and learning rate")],
        metrics={
            "epochs": int(last["epoch"]),
            "val top-1 error": f"{100 * last['val_top1_error']:.2f}%",
            "val top-5 error": f"{100 * last['val_top5_error']:.2f}%",
            "training speed": f"{last['img_per_s']:.0f} images/s",
        },
    )
    write_section(run_dir, section)
    return section


def evaluation_section(run_dir: str | Path, result: dict[str, Any], order: int = 20) -> Section:
    """Section "Evaluation" from the dict `zfnet eval` / `evaluate_checkpoint` returns."""
    run_dir = Path(run_dir)
    names = list(result["class_names"])
    path = plot_confusion(np.asarray(result["confusion_matrix"]), names,
                          run_dir / "figures" / "confusion.png")
    acc = result["per_class_accuracy"]
    rows = [[n, "" if acc.get(n) is None or math.isnan(acc[n]) else f"{100 * acc[n]:.1f}%"]
            for n in names]
    crops = "the paper's 10 crops (4 corners + centre, each flipped, softmax averaged)" \
        if result.get("ten_crop") else "the centre crop"
    section = Section(
        key="evaluation", title="Evaluation", order=order,
        caption=(
            f"Top-1 / top-5 error on {result['n']} validation images, each scored on {crops}. "
            "The confusion matrix counts true classes (rows) against predictions (columns), "
            "coloured by the share of each row."
        ),
        figures=[Figure(str(path.relative_to(run_dir)), "confusion matrix")],
        tables=[Table(["class", "accuracy"], rows, "per-class accuracy")],
        metrics={
            "top-1 error": f"{100 * result['top1_error']:.2f}%",
            "top-5 error": f"{100 * result['top5_error']:.2f}%",
        } | ({"checkpoint epoch": result["epoch"]} if result.get("epoch") is not None else {}),
    )
    write_section(run_dir, section)
    return section
