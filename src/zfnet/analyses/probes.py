"""Per-layer linear probes (paper Table 7) and transfer with fixed features (Tables 4–5).

Table 7 trains a linear classifier (softmax or linear SVM) on the features of one layer of the
ImageNet-trained net, for Caltech-101/256, and finds that features grow more discriminative with
depth. Here the same is done on the data at hand: features of each chosen layer for N training
images per class, a linear classifier per layer, test accuracy per layer.

Features: a conv layer's maps are average-pooled to a 2×2 grid (4·C numbers: keeps the coarse
layout, and makes layers of very different sizes comparable in dimension; a smaller map as it
is); fc layers are taken as they are. Each feature is standardised on the training images
before the classifier.

Any CNN: `probe_layers` — zfnet's pool1, pool2, relu3, relu4, pool5, relu6, relu7; else the
stages of `zfnet.models.feature_layers` and the `vector_layer` the classifier reads. The labels
are the dataset's own: a probe never reads the model's outputs, so the model's classes need not
be the dataset's.

Transfer (Tables 4–5): keeping layers 1–7 fixed and training a new softmax on top is exactly a
softmax probe on layer 7's features, so `transfer` is `linear_probes` at relu7 on the new dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from zfnet.activations import capture, to_model
from zfnet.models import (
    NoSpatialStageError,
    eval_mode,
    feature_layers,
    is_zfnet_model,
    layer_names,
    vector_layer,
)

if TYPE_CHECKING:
    from zfnet.report import Section

CLASSIFIERS = ("softmax", "svm")
# the paper's Table 7: (classifier, layer) -> accuracy % on Caltech-101 (30 training images per
# class) and Caltech-256 (60), features of the ImageNet-trained network
PAPER_TABLE7 = {
    ("SVM", 1): (44.8, 24.6), ("SVM", 2): (66.2, 39.6), ("SVM", 3): (72.3, 46.0),
    ("SVM", 4): (76.6, 51.3), ("SVM", 5): (86.2, 65.6), ("SVM", 7): (85.5, 71.7),
    ("Softmax", 5): (82.9, 65.7), ("Softmax", 7): (85.4, 72.6),
}
ZFNET_LAYERS = ("pool1", "pool2", "relu3", "relu4", "pool5", "relu6", "relu7")


def probe_layers(model: torch.nn.Module, input_size: int | tuple[int, int] | None = None
                 ) -> list[str]:
    """The layers Table 7 probes: on zfnet's models those of `ZFNET_LAYERS` present (each
    layer after its ReLU / pooling); on any other model its `feature_layers` then its
    `vector_layer` (for an input of `input_size`); a model without spatial stages (a vision
    transformer) its vector alone."""
    if is_zfnet_model(model):
        names = layer_names(model)
        return [n for n in ZFNET_LAYERS if n in names]
    try:
        layers = feature_layers(model, input_size)
    except NoSpatialStageError:  # its blocks give tokens: the vector its classifier reads
        layers = []
    vec = vector_layer(model, input_size)
    return layers + ([vec] if vec not in layers else [])


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    layers: Sequence[str],
    grid: int = 2,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of `layers` for every image of `batches` ((x, y) pairs, e.g. a DataLoader).

    Returns ({layer: (N, D) float32}, labels (N,)). Conv maps are average-pooled to grid×grid.
    """
    feats: dict[str, list[np.ndarray]] = {k: [] for k in layers}
    labels: list[np.ndarray] = []
    with eval_mode(model):
        with capture(model, layers) as store:
            for x, y in batches:
                model(to_model(model, x))
                for k in layers:
                    f = store[k]
                    if f.dim() == 4:  # (N, C, H, W) -> (N, C*grid*grid); a smaller map as is
                        f = F.adaptive_avg_pool2d(f, (min(grid, f.shape[2]),
                                                      min(grid, f.shape[3])))
                    feats[k].append(f.flatten(1).float().cpu().numpy())
                labels.append(torch.as_tensor(y).cpu().numpy())
    return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(labels)


def fit_linear(
    kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    c: float = 1.0, seed: int = 0,
) -> float:
    """Train one linear classifier ("softmax" or "svm") and return its test accuracy."""
    if kind == "softmax":
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    elif kind == "svm":
        clf = LinearSVC(C=c * 0.01, max_iter=5000, random_state=seed)
    else:
        raise ValueError(f"unknown classifier {kind!r}; valid: {', '.join(CLASSIFIERS)}")
    pipe = make_pipeline(StandardScaler(), clf)
    pipe.fit(x_train, y_train)
    return float((pipe.predict(x_test) == y_test).mean())


@dataclass
class ProbeRow:
    """Test accuracy of each classifier on one layer's features."""

    layer: str
    dim: int
    accuracy: dict[str, float]  # classifier -> test accuracy


def linear_probes(
    model: torch.nn.Module,
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    layers: Sequence[str] = ZFNET_LAYERS,
    classifiers: Sequence[str] = CLASSIFIERS,
    seed: int = 0,
) -> list[ProbeRow]:
    """Table 7: a linear classifier per layer, trained on `train_batches`' features, tested on
    `test_batches`'. Choose N images per class by what `train_batches` holds (e.g. a dataset spec
    with `per_class=N`)."""
    for kind in classifiers:
        if kind not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {kind!r}; valid: {', '.join(CLASSIFIERS)}")
    ftr, ytr = extract_features(model, train_batches, layers)
    fte, yte = extract_features(model, test_batches, layers)
    return [
        ProbeRow(k, ftr[k].shape[1],
                 {c: fit_linear(c, ftr[k], ytr, fte[k], yte, seed=seed) for c in classifiers})
        for k in layers
    ]


def transfer(
    model: torch.nn.Module,
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    layer: str = "relu7",
    seed: int = 0,
) -> float:
    """Tables 4–5: layers 1–7 fixed, a new softmax trained on the new data; test accuracy."""
    return linear_probes(model, train_batches, test_batches, (layer,), ("softmax",), seed)[0] \
        .accuracy["softmax"]


def probes_section(
    run_dir: str | Path, rows: Sequence[ProbeRow], per_class: int | str, data: str,
    n_test: int | None = None, order: int = 84,
) -> Section:
    """Write the Table 7 section: accuracy per layer and classifier; `per_class`: the training
    images per class (a number or a text), `n_test` the held-out images they are tested on."""
    from zfnet.report import Section, Table, write_section

    kinds = list(rows[0].accuracy)
    tested = f", tested on {n_test} held-out images" if n_test is not None else ""
    tables = [Table(
        ["layer", "features"] + [f"{k} accuracy" for k in kinds],
        [[r.layer, r.dim] + [f"{100 * r.accuracy[k]:.1f}%" for k in kinds] for r in rows],
        f"linear classifiers on {per_class} training images per class of {data}{tested}",
    ), Table(
        ["the paper's classifier (layer)", "Caltech-101 accuracy", "Caltech-256 accuracy"],
        [[f"{kind} ({layer})", f"{a:.1f}%", f"{b:.1f}%"]
         for (kind, layer), (a, b) in PAPER_TABLE7.items()],
        "the paper's Table 7: its ImageNet-trained network's layers on Caltech-101 (30 "
        "training images per class) and Caltech-256 (60); its layers 1-5 and 7 are zfnet's "
        "pool1, pool2, relu3, relu4, pool5 and relu7",
    )]
    section = Section(
        key="probes", title="Features per layer (Table 7)",
        order=order,
        caption=(
            "A linear classifier (softmax = logistic regression, and a linear SVM) trained on "
            "the features of one layer at a time (conv maps average-pooled to 2x2, standardised) "
            f"of {per_class} images per class of {data}, tested on "
            f"{n_test if n_test is not None else 'the'} held-out images. The paper "
            "(Table 7, its numbers in the second table) trained them on Caltech-101 and -256, "
            "other data than its network learned from: accuracy grows with depth — the upper "
            "layers' features are the most discriminative."
        ),
        tables=tables,
    )
    write_section(run_dir, section)
    return section
