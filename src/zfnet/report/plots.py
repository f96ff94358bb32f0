"""Figures drawn from saved results (metrics tables, matrices); nothing here runs a model."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def read_metrics_csv(path: str | Path) -> dict[str, list[float]]:
    """Columns of a metrics CSV as float lists (empty cells become NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    out: dict[str, list[float]] = {}
    for key in rows[0]:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[key]))
            except (TypeError, ValueError):
                vals.append(float("nan"))
        out[key] = vals
    return out


def plot_curves(
    x: Sequence[float],
    panels: dict[str, dict[str, Sequence[float]]],
    path: str | Path,
    xlabel: str = "epoch",
    xticks: Sequence[str] | None = None,
    joined: bool = True,
) -> Path:
    """One panel per entry of `panels` ({panel title: {series label: values}}), saved as PNG;
    `xticks`: a label for each x (layer names), slanted so that long ones fit; `joined`: points
    joined by lines (False: each x measured apart, no trend between them).

    NaN values (epochs without validation) are left out and the points around them joined.
    Panels of the same series share one legend, below them, where it hides no point.
    """
    shared = len({tuple(series) for series in panels.values()}) == 1
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items(), strict=True):
        for label, ys in series.items():
            xs, vs = np.asarray(x, dtype=float), np.asarray(ys, dtype=float)
            seen = np.isfinite(vs)  # e.g. val every few epochs: join the measured points
            ax.plot(xs[seen], vs[seen], marker="o", ms=3 if joined else 5, label=label,
                    linestyle="-" if joined else "none")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if xticks is not None:
            ax.set_xticks(list(x), list(xticks), rotation=30, ha="right", fontsize=7)
        elif all(float(v).is_integer() for v in x):  # epochs: no tick at 1.5 of 2 epochs
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not shared:
            ax.legend(fontsize=8)
    if shared:
        handles, labels = axes[0][0].get_legend_handles_labels()
        rows = -(-len(labels) // 5)  # at most 5 series a row
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8,
                   frameon=False)
        fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
    else:
        fig.tight_layout()
    return _save(fig, path)


def plot_images(pixels: np.ndarray, path: str | Path, col_titles: Sequence[str],
                row_titles: Sequence[str]) -> Path:
    """A grid of images, uint8 (rows, columns, H, W, C) with C 1 or 3, shown as they are (no
    rescaling), a title over each column and a name left of each row; saved as PNG.

    Drawn as one image (the grid on white, a small gap between its cells) in one axes, its
    titles placed around it: a figure of many axes took ~0.5 s to lay out and draw."""
    rows, cols, h, w, c = pixels.shape
    gap = max(2, round(0.06 * max(h, w)))
    grid = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, c), 255, np.uint8)
    for i in range(rows):
        for j in range(cols):
            grid[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = pixels[i, j]
    width, height = 1.6 * cols + 0.6, 1.6 * rows + 0.3
    fig = plt.figure(figsize=(width, height))
    # room left of the grid for the row names, above it for the column titles
    ax = fig.add_axes((0.45 / width, 0.05 / height, 1 - 0.55 / width, 1 - 0.35 / height))
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0,
              vmax=255)
    ax.set_axis_off()
    for j, title in enumerate(col_titles):
        ax.text(j * (w + gap) + w / 2, -gap, title, ha="center", va="bottom", fontsize=8)
    for i, name in enumerate(row_titles):
        ax.text(-gap, i * (h + gap) + h / 2, str(name)[-24:], ha="right", va="center",
                rotation=90, fontsize=7)
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix (rows: true class, columns: predicted), row-normalised, saved as PNG."""
    m = np.asarray(matrix, dtype=float)
    norm = m / np.clip(m.sum(1, keepdims=True), 1, None)
    n = len(class_names)
    # named cells up to 30 classes; past that a fixed 12 in (1320 px): ImageNet's 1000 classes
    # at 0.45 in each made a 50,000 px square, some 100 GB to draw
    size = max(4.0, 0.45 * n + 2) if n <= 30 else 12.0
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
