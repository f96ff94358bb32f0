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
    config, meta = _run_facts(run_dir)
    done, planned = int(last["epoch"]), config.get("epochs")
    epochs = f"{done} of {planned}" if isinstance(planned, int) and planned > done else done
    section = Section(
        key="training", title="Training", order=order,
        caption=(
            "Loss and top-1 error per epoch on the training images (random crops, dropout on, "
            "so usually above validation early on) and on the validation images (centre crop), "
            f"and the learning rate: {_schedule_words(config)}"
            + (f" The run stopped before its last epoch ({_stopped_at(meta)}); `zfnet train "
               f"--out {run_dir} --resume` continues it." if epochs != done else "")
        ),
        figures=[Figure(str(path.relative_to(run_dir)), "loss, top-1 error and learning rate")],
        source=f"{config['model']}, data {config['data']}" if "model" in config else "",
        metrics={
            "epochs": epochs,
            "val top-1 error": f"{100 * last['val_top1_error']:.2f}%",
            "val top-5 error": _top5(last["val_top5_error"], meta.get("num_classes")),
            "training speed": f"{last['img_per_s']:.0f} images/s"
            + (f" ({meta['world_size']} processes)" if meta.get("world_size", 1) > 1 else ""),
        },
    )
    write_section(run_dir, section)
    return section


def run_page(run_dir: str | Path) -> Path | None:
    """A run's page: its Training section written and `run_dir/index.html` rebuilt, or None
    before its first epoch ends (no curves yet). Errors are the caller's to report: the run
    itself is saved already (`zfnet train`, `zfnet study`)."""
    from zfnet.report.html import build_report

    metrics = Path(run_dir) / "metrics.csv"
    if not metrics.is_file() or not read_metrics_csv(metrics):
        return None
    training_section(run_dir)
    return build_report(run_dir)


def _top5(error: float, classes: int | None) -> str:
    """The top-5 error as a percentage; with 5 classes or fewer (every class among the top 5,
    the error 0 by definition) "—" and why, as `zfnet train` says it."""
    if isinstance(classes, int) and classes <= 5:
        return f"— (every one of the {classes} classes is among the top 5)"
    return f"{100 * error:.2f}%"


def _run_facts(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's config.json and its newest checkpoint's meta ({} where there is none)."""
    import json

    from zfnet.train.checkpoint import find_last, read_meta

    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    try:
        last = find_last(run_dir)
        meta = read_meta(last) if last is not None else {}
    except (OSError, ValueError):
        meta = {}
    return (config if isinstance(config, dict) else {}), meta


def _schedule_words(config: dict[str, Any]) -> str:
    """How the run's learning rate moved, in words (the paper's: Sec. 3)."""
    schedule, factor = config.get("schedule", "plateau"), config.get("lr_factor", 0.1)
    by = f"divided by {1 / factor:.3g}" if factor < 1 else "kept"
    warmup = config.get("warmup_epochs") or 0
    ramp = f"after {warmup:g} epochs of linear warm-up, " if warmup else ""
    return {
        "plateau": f"as in the paper's recipe, {by} when the validation error stops "
                   f"improving for {config.get('patience', 3)} validations (Sec. 3).",
        "step": f"{by} every {config.get('step_epochs', 30)} epochs (the paper annealed "
                "by hand, on a plateau).",
        "cosine": f"{ramp}down to 0 over the run along half a cosine (the paper divided it "
                  "by 10 on a plateau).",
        "linear": f"{ramp}down to 0 over the run in a straight line (the paper divided it "
                  "by 10 on a plateau).",
        "onecycle": "torch's one-cycle schedule (the paper divided it by 10 on a plateau).",
        "constant": "constant (the paper divided it by 10 on a plateau).",
    }.get(schedule, f"schedule {schedule}.")


def _stopped_at(meta: dict[str, Any]) -> str:
    """Where the newest checkpoint stands, e.g. "saved at epoch 2 + 9 steps of epoch 3"."""
    from zfnet.train.checkpoint import checkpoint_label

    label = checkpoint_label(meta.get("epoch"), meta.get("step_in_epoch", 0))
    return f"saved at {label}" if label else "no checkpoint saved"


# the paper's Table 2 (ImageNet 2012 validation: top-1 / top-5 error, %), beside an evaluation
# of the network it is about
PAPER_TABLE2 = {
    "alexnet_zf": [("their replication of AlexNet, 1 net", 40.5, 18.1),
                   ("Krizhevsky et al.'s AlexNet, 1 net", 40.7, 18.2)],
    "zfnet": [("ZFNet (Fig. 3), 1 net", 38.4, 16.5),
              ("layers 3-5 at 512/1024/512 maps, 1 net", 37.5, 16.0),
              ("5 nets as Fig. 3", 36.7, 15.3), ("6 nets combined", 36.0, 14.7)],
}


def evaluation_section(run_dir: str | Path, result: dict[str, Any], order: int = 20) -> Section:
    """Section "Evaluation" from the dict `zfnet eval` / `evaluate_checkpoint` returns; for the
    paper's own networks (`PAPER_TABLE2`), its Table 2 beside it."""
    from zfnet.train.checkpoint import checkpoint_label

    run_dir = Path(run_dir)
    paper = PAPER_TABLE2.get(result["model"])
    names = list(result["class_names"])
    shown = list(result.get("class_labels") or names)  # with their words (words=FILE)
    path = plot_confusion(np.asarray(result["confusion_matrix"]), shown,
                          run_dir / "figures" / "confusion.png")
    acc = result["per_class_accuracy"]
    rows = [[label, "" if acc.get(n) is None or math.isnan(acc[n]) else f"{100 * acc[n]:.1f}%"]
            for n, label in zip(names, shown, strict=True)]
    crops = "the paper's 10 crops (4 corners + centre, each flipped, softmax averaged)" \
        if result.get("ten_crop") else "the centre crop"
    skipped = result.get("skipped") or 0  # broken files: not among the images scored
    unread = (f" ({skipped} broken file{'s' * (skipped != 1)} of the split skipped, not "
              "scored)" if skipped else "")
    section = Section(
        key="evaluation", title="Evaluation", order=order,
        caption=(
            f"Top-1 / top-5 error on {result['n']} validation images{unread}, each scored on "
            f"{crops}. "
            "The confusion matrix counts true classes (rows) against predictions (columns), "
            "coloured by the share of each row."
        ),
        figures=[Figure(str(path.relative_to(run_dir)), "confusion matrix")],
        tables=[Table(["class", "accuracy"], rows, "per-class accuracy")] + ([
            Table(["the paper's network", "top-1 error", "top-5 error"],
                  [[what, f"{top1:.1f}%", f"{top5:.1f}%"] for what, top1, top5 in paper],
                  "the paper's Table 2: ImageNet 2012 validation images, 1000 classes")]
            if paper else []),
        metrics={
            "top-1 error": f"{100 * result['top1_error']:.2f}%",
            "top-5 error": _top5(result["top5_error"], len(names)),
        } | ({"checkpoint": checkpoint_label(result["epoch"], result.get("step_in_epoch", 0))}
             if result.get("epoch") is not None else {}),
        source=f"{result['model']}, data {result['data']}",
    )
    write_section(run_dir, section)
    return section
