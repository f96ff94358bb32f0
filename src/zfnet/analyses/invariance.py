"""Invariance (paper Fig. 5): how features and the prediction change as an image is translated
vertically, scaled and rotated.

For each image and each transformation value the transformed image goes through the model and we
record, at a low layer (the paper's layer 1) and a high one (layer 7):
- the Euclidean distance between the feature vectors of the original and the transformed image,
  divided by the norm of the original's feature vector (a relative distance, so that layers of
  very different scale share one axis; 0 = unchanged, 1 = as large as the feature vector itself);
- the probability of the true class (or, when no label is given, of the class predicted on the
  untransformed image).
The paper's finding: small transformations move layer 1 a lot and layer 7 much less; the output
is fairly stable to translation and scaling, less to rotation (except for symmetric objects).

Any CNN: "layer 1" and "layer 7" are `default_layers` — zfnet's norm1 and relu7, else the first
of `zfnet.models.feature_layers` and the `vector_layer` the classifier reads (a ResNet's relu and
avgpool). Without labels (or where the dataset's labels are not the model's classes, see
`zfnet.analyses.classes`) the class followed is the one predicted on the untransformed image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from zfnet.activations import capture, to_model
from zfnet.models import eval_mode, feature_layers, is_zfnet_model, layer_names, vector_layer

if TYPE_CHECKING:
    from zfnet.report import Section

KINDS = ("translate", "scale", "rotate")

# Default sweeps, as fractions of the image side (translation), zoom factors and degrees.
DEFAULT_VALUES: dict[str, tuple[float, ...]] = {
    "translate": tuple(v / 100 for v in range(-30, 31, 5)),
    "scale": (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6),
    "rotate": tuple(float(a) for a in range(0, 361, 30)),
}


def transform_images(images: torch.Tensor, kind: str, value: float) -> torch.Tensor:
    """Apply one transformation to float images (N, C, H, W) in pixel units (0..255).

    translate: vertical shift by `value` × H pixels (positive = down); scale: zoom about the
    centre by `value`; rotate: `value` degrees anticlockwise. Uncovered pixels get each image's
    mean colour, so that no artificial black border appears.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown transformation {kind!r}; valid: {', '.join(KINDS)}")
    import torchvision.transforms.v2.functional as TF

    n, c, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(n):  # per image: each has its own fill colour
        fill = images[i].mean(dim=(1, 2)).tolist()
        if kind == "translate":
            args = dict(angle=0.0, translate=[0, round(value * h)], scale=1.0, shear=[0.0])
        elif kind == "scale":
            args = dict(angle=0.0, translate=[0, 0], scale=float(value), shear=[0.0])
        else:
            args = dict(angle=float(value), translate=[0, 0], scale=1.0, shear=[0.0])
        out[i] = TF.affine(
            images[i], **args, interpolation=TF.InterpolationMode.BILINEAR, fill=fill
        )
    return out


@dataclass
class InvarianceResult:
    """Curves of one sweep: values (V,), per layer distances (N, V), probabilities (N, V)."""

    kind: str
    values: list[float]
    layers: list[str]
    distance: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (N, V)
    prob: torch.Tensor | None = None  # (N, V) probability of the true (or first-predicted) class
    labels: list[int] = field(default_factory=list)


def default_layers(model: torch.nn.Module, input_size: int | tuple[int, int] | None = None
                   ) -> tuple[str, str]:
    """The paper's "layer 1" and "layer 7": on zfnet's models layer 1 after pooling and contrast
    normalisation (`norm1`, else `pool1`, `relu1`) and layer 7 after its ReLU (`relu7`, else
    `relu6`, `fc8`); on any other model the first of `feature_layers` and the `vector_layer`
    (for an input of `input_size`)."""
    if is_zfnet_model(model):
        names = layer_names(model)
        low = next(n for n in ("norm1", "pool1", "relu1", "conv1") if n in names)
        return low, vector_layer(model)
    return feature_layers(model, input_size)[0], vector_layer(model, input_size)


def invariance(
    model: torch.nn.Module,
    images: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    kind: str,
    values: Sequence[float] | None = None,
    layers: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> InvarianceResult:
    """Fig. 5 for `images` (N, C, H, W) float in 0..255 at the model's input size.

    `normalize` turns pixel images into model inputs (e.g. subtracting the mean image, or a
    model's `(x - mean) / std`). `layers`: the layers whose feature vectors are compared
    (default: `default_layers`, the paper's "layer 1" and "layer 7" — on zfnet's models layer
    1 after pooling and contrast normalisation and layer 7 after its ReLU — for any model).
    `labels`: true classes (N,) as indices of the model's outputs; without them the class
    predicted on the original image is followed. Returns distances relative to the original's
    feature norm (see module doc). progress: called with 1 after each amount's pass.
    """
    values = list(DEFAULT_VALUES[kind] if values is None else values)
    if isinstance(layers, str):  # one layer, not its letters
        layers = [layers]
    if layers is None:
        layers = default_layers(model, tuple(images.shape[-2:]))
    with eval_mode(model), torch.inference_mode():
        with capture(model, layers) as store:
            logits = model(to_model(model, normalize(images)))
            ref = {k: v.flatten(1).clone() for k, v in store.items()}  # (N, D) per layer
            target = (
                torch.as_tensor(list(labels)) if labels is not None else logits.argmax(1)
            )
            bad = [int(t) for t in target if not 0 <= int(t) < logits.shape[1]]
            if bad:
                raise ValueError(f"label(s) {bad} are not classes of this model (it has "
                                 f"{logits.shape[1]} outputs); give no labels to follow the "
                                 "class it predicts")
            dist = {k: torch.zeros(len(images), len(values)) for k in layers}
            prob = torch.zeros(len(images), len(values))
            for j, v in enumerate(values):
                logits = model(to_model(model, normalize(transform_images(images, kind, v))))
                p = logits.float().softmax(1)
                prob[:, j] = p.gather(1, target[:, None])[:, 0]
                for k in layers:
                    f = store[k].flatten(1)
                    dist[k][:, j] = (f - ref[k]).norm(dim=1) / ref[k].norm(dim=1).clamp_min(1e-12)
                if progress is not None:
                    progress(1)
    return InvarianceResult(kind, values, list(layers), dist, prob, target.tolist())


EXAMPLES = 5  # amounts of each transformation shown as images


def example_values(kind: str, values: Sequence[float], n: int = EXAMPLES) -> list[float]:
    """`n` of a sweep's `values` to show as images: spread evenly from the first to the last,
    the untransformed amount (0, or scale 1) among them where the sweep has it, and a rotation
    a whole turn from another (360° after 0°: the same image) left out."""
    if len(values) <= n:
        return list(values)
    picks = [round(k * (len(values) - 1) / (n - 1)) for k in range(n)]
    identity = 1.0 if kind == "scale" else 0.0
    if identity in values and identity not in [values[i] for i in picks]:
        at = list(values).index(identity)
        nearest = min(range(1, n - 1), key=lambda k: abs(picks[k] - at))
        picks[nearest] = at
    shown = [values[i] for i in sorted(set(picks))]
    if kind == "rotate":
        shown = [v for k, v in enumerate(shown) if all((v - u) % 360 for u in shown[:k])]
    return shown


def _amount(kind: str, value: float) -> str:
    """An amount as the examples' column title: "shift -0.15", "scale 0.8", "90°"."""
    if kind == "translate":
        return f"shift {value:+g}" if value else "shift 0"
    return f"scale {value:g}" if kind == "scale" else f"{value:g}°"


def invariance_section(
    run_dir: str | Path,
    results: Sequence[InvarianceResult],
    image_names: Sequence[str],
    key: str = "invariance",
    title: str = "Invariance (Fig. 5)",
    order: int = 50,
    about: str = "",
    paper_layers: bool = True,
    class_names: Sequence[str] | None = None,
    images: torch.Tensor | None = None,
) -> Section:
    """Write one figure per transformation (distance at each layer, class probability, one
    curve per image) and the report section; returns the Section. `about`: a sentence saying
    which images these are, put first in the caption. `paper_layers`: the results' two layers
    stand for the paper's layers 1 and 7 (the defaults), as the caption then says.
    `class_names`: the model's, naming in the legend the class each image's p(class) follows
    (else its number). `images`: the images swept (N, C, H, W) in pixels (0..255); with them
    each transformation's figure is preceded by the images at `EXAMPLES` of its amounts, as the
    paper's first column shows them."""
    from zfnet.report import Figure, Section, Table, write_section
    from zfnet.report.plots import plot_curves, plot_images

    run_dir = Path(run_dir)
    xlabels = {"translate": "vertical shift (fraction of height)", "scale": "scale factor",
               "rotate": "rotation (degrees)"}
    figures, rows = [], []
    layers = results[0].layers
    shown_names = list(image_names)  # the examples' rows: the images' names alone
    followed = results[0].labels  # the same class for every transformation of an image
    if len(followed) == len(image_names):  # the legend names it: "astronaut: p(tabby)"
        def named(c: int) -> str:
            return class_names[c] if class_names and 0 <= c < len(class_names) else f"class {c}"

        image_names = [f"{n}: p({named(c)})" for n, c in zip(image_names, followed, strict=True)]
    for r in results:
        if images is not None:
            amounts = example_values(r.kind, r.values)
            pixels = torch.stack([transform_images(images.float(), r.kind, v) for v in amounts],
                                 dim=1)  # (N, amounts, C, H, W)
            path = plot_images(
                pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy(),
                run_dir / "figures" / f"{key}_{r.kind}_examples.png",
                [_amount(r.kind, v) for v in amounts], shown_names)
            figures.append(Figure(str(path.relative_to(run_dir)),
                                  f"{r.kind}: the images at {len(amounts)} of the amounts"))
        panels = {f"{name}: relative distance": {
            n: r.distance[name][i].tolist() for i, n in enumerate(image_names)}
            for name in r.layers}
        panels["p(class)"] = {n: r.prob[i].tolist() for i, n in enumerate(image_names)}
        path = plot_curves(r.values, panels, run_dir / "figures" / f"{key}_{r.kind}.png",
                           xlabel=xlabels[r.kind])
        figures.append(Figure(str(path.relative_to(run_dir)), f"{r.kind}"
                              + (": distances and p(class)" if images is not None else "")))
        rows.append([r.kind, *(f"{r.distance[name].mean().item():.3f}" for name in r.layers),
                     f"{r.prob.min(1).values.mean().item():.3f}"])
    if paper_layers and len(layers) == 2:
        where = (f"at a low layer ({layers[0]}, the paper's layer 1) and a high one "
                 f"({layers[1]}, layer 7)")
    else:
        where = (f"at the layer{'s' * (len(layers) > 1)} {', '.join(layers)} (the paper "
                 "compares its layers 1 and 7)")
    section = Section(
        key=key, title=title, order=order,
        caption=(
            (f"{about} " if about else "")
            + "Each image is shifted vertically, scaled and rotated; for every amount we compare "
            f"its feature vectors with those of the untransformed image {where}. "
            + ("Each transformation's curves follow its images at a few of the amounts (the "
               "paper's first column). " if images is not None else "")
            + "Distances are "
            "Euclidean, divided by the norm of the untransformed image's feature vector so "
            "that all layers share a scale "
            "(0 = unchanged, 1 = a change as large as the features). The last panel is the "
            "probability of the true class (or, without a label, of the class first "
            "predicted). The paper (Fig. 5): small transformations change layer 1 a lot and "
            "layer 7 much less; the output is robust to translation and scaling, less to "
            "rotation."
        ),
        figures=figures,
        tables=[Table(["transformation", *(f"mean distance {name}" for name in layers),
                       "mean min p(class)"], rows,
                      "Means over the images: of the relative distance over every amount, and "
                      "of the lowest p(class) any amount gives.")],
    )
    write_section(run_dir, section)
    return section
