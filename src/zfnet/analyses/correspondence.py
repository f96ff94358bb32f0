"""Correspondence (paper Fig. 8, Table 1): does the network tie the same object part together
across different images, implicitly?

Take N images of one kind with the same part marked in each (e.g. the left eye of N faces).
Occlude that part in every image and, as control, a random region of the same size. At layer l,
ε_i = f_l(x_i) − f_l(x̃_i) is the change the occlusion causes in image i's feature vector, and

    Δ_l = mean over ordered pairs i ≠ j of Hamming(sign ε_i, sign ε_j) / D

with D the feature dimension: the paper's Σ_{i≠j} H(·,·) normalised per pair and per dimension
(that normalisation reproduces its values, e.g. 0.067 for the eyes at layer 5). Lower Δ means
the part changes the representation in the same way in every image: a consistent
correspondence. The paper: layer 5, eyes 0.067/0.069 and nose 0.079 vs random 0.107; at layer 7
all about 0.07.

Any CNN: the layers default to its last stage and the vector its classifier reads
(`default_layers`). A part at about the same place in every image changes the same features
even in an untrained network (the random boxes land anywhere): the same images through the
same architecture at random init (no `--weights`) show what training adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from zfnet.activations import capture, to_model
from zfnet.models import (
    NoSpatialStageError,
    eval_mode,
    is_zfnet_model,
    last_spatial_layer,
    layer_info,
    vector_layer,
)

if TYPE_CHECKING:
    from zfnet.report import Section

PAPER_TABLE1 = {  # part -> (layer 5 Δ, layer 7 Δ), paper Table 1 means
    "right eye": (0.067, 0.069),
    "left eye": (0.069, 0.068),
    "nose": (0.079, 0.069),
    "random": (0.107, 0.073),
}


def part_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Bounding box (top, left, bottom, right), bottom/right exclusive, of a bool mask (H, W)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("a part mask is empty: every image needs its part marked")
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def occlude_boxes(
    images: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]], fill: float = 0.0
) -> torch.Tensor:
    """Copy of `images` (N, C, H, W) with box i of `boxes` set to `fill` in image i."""
    out = images.clone()
    for i, (t, left, b, r) in enumerate(boxes):
        out[i, :, t:b, left:r] = fill
    return out


def random_boxes(
    boxes: Sequence[tuple[int, int, int, int]], size: int, generator: torch.Generator
) -> list[tuple[int, int, int, int]]:
    """Boxes of the same sizes as `boxes` at uniformly random places inside a size×size image."""
    out = []
    for t, left, b, r in boxes:
        h, w = b - t, r - left
        y = int(torch.randint(0, size - h + 1, (1,), generator=generator))
        x = int(torch.randint(0, size - w + 1, (1,), generator=generator))
        out.append((y, x, y + h, x + w))
    return out


def sign_consistency(eps: torch.Tensor) -> tuple[float, float]:
    """Δ of feature changes `eps` (N, D): mean and std over ordered pairs i ≠ j of the
    normalised Hamming distance between sign(ε_i) and sign(ε_j)."""
    s = eps.sign()  # (N, D) in {-1, 0, 1}
    n = s.shape[0]
    if n < 2:
        raise ValueError("correspondence needs at least 2 images")
    diff = (s[:, None, :] != s[None, :, :]).float().mean(-1)  # (N, N)
    off = diff[~torch.eye(n, dtype=torch.bool)]
    return off.mean().item(), off.std().item()


def default_layers(model: torch.nn.Module, input_size: int | tuple[int, int] | None = None
                   ) -> tuple[str, ...]:
    """Where Table 1 compares features when no layer is named: the paper's layer 5, after
    pooling, and layer 7, after its ReLU — `pool5` and `relu7` (or `relu6`, `fc8`) on zfnet's
    models; on any other CNN its last stage (`last_spatial_layer`: `layer4` of a ResNet) and
    the vector its classifier reads (`vector_layer`: `avgpool`, alexnet's `classifier.5`); a
    model without spatial stages (a vision transformer) that vector alone."""
    if is_zfnet_model(model):
        infos = layer_info(model)
        return tuple([n for n in ("pool5",) if n in infos]
                     + [n for n in ("relu7", "relu6", "fc8") if n in infos][:1])
    try:
        last = (last_spatial_layer(model, input_size),)
    except NoSpatialStageError:  # its blocks give tokens
        last = ()
    return tuple(dict.fromkeys((*last, vector_layer(model, input_size))))


@dataclass
class CorrespondenceRow:
    """Δ at each layer for one part (or 'random', with the spread over random draws)."""

    part: str
    delta: dict[str, float]  # layer -> mean Δ
    spread: dict[str, float]  # layer -> std (over pairs; for 'random' over draws)
    # per image (top, left, bottom, right); for 'random' its first draw's
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


@torch.inference_mode()
def correspondence(
    model: torch.nn.Module,
    images: torch.Tensor,
    part_masks: dict[str, torch.Tensor],
    layers: Sequence[str] | None = None,
    fill: float = 0.0,
    random_draws: int = 10,
    seed: int = 0,
) -> list[CorrespondenceRow]:
    """Table 1 for `images` (N, C, S, S) model inputs and `part_masks` {part: bool (N, S, S)}.

    Each part is occluded by its bounding box in each image, filled with `fill` (0 = the mean
    image after mean subtraction, i.e. grey). The control 'random' occludes, in each of
    `random_draws` draws, a random box of the same size as the first part's box in each image.
    `layers`: where features are compared (default: the paper's layers 5 and 7,
    `default_layers`).
    """
    if layers is None:
        layers = default_layers(model, tuple(images.shape[-2:]))
    if not part_masks:
        raise ValueError("part_masks is empty: give at least one part")
    if random_draws < 1:
        raise ValueError(f"random_draws={random_draws} must be >= 1: the random control")
    images = to_model(model, images)
    with eval_mode(model):
        with capture(model, layers) as store:
            model(images)
            ref = {k: v.flatten(1).clone() for k, v in store.items()}

            def eps_for(boxes: Sequence[tuple[int, int, int, int]]) -> dict[str, torch.Tensor]:
                model(occlude_boxes(images, boxes, fill))
                return {k: ref[k] - store[k].flatten(1) for k in layers}

            rows = []
            first_boxes = None
            for part, masks in part_masks.items():
                boxes = [part_box(m) for m in masks]
                first_boxes = first_boxes or boxes
                stats = {k: sign_consistency(e) for k, e in eps_for(boxes).items()}
                rows.append(CorrespondenceRow(
                    part, {k: v[0] for k, v in stats.items()}, {k: v[1] for k, v in stats.items()},
                    boxes))
            g = torch.Generator().manual_seed(seed)
            draws: dict[str, list[float]] = {k: [] for k in layers}
            shown = None
            for _ in range(random_draws):
                drawn = random_boxes(first_boxes, images.shape[-1], g)
                shown = shown or drawn
                eps = eps_for(drawn)
                for k, e in eps.items():
                    draws[k].append(sign_consistency(e)[0])
            d = {k: torch.tensor(v) for k, v in draws.items()}
            rows.append(CorrespondenceRow(
                "random",
                {k: v.mean().item() for k, v in d.items()},
                {k: (v.std().item() if len(v) > 1 else 0.0) for k, v in d.items()},
                shown or [],
            ))
    return rows


def plot_correspondence(
    pixels: torch.Tensor, rows: Sequence[CorrespondenceRow], names: Sequence[str],
    path: str | Path,
) -> Path:
    """Fig. 8: a row per image, as the model sees it (`pixels`, uint8 (N, C, S, S): the
    occluded inputs made back into pixels), first whole, then with each part masked and with
    the first random draw's box; every part's box outlined in the first column."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n, cols = pixels.shape[0], len(rows) + 1
    colours = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:cyan"]
    fig = Figure(figsize=(1.9 * cols, 1.9 * n + 0.4))
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        for c in range(cols):
            ax = axes[i][c]
            img = pixels[i, c].permute(1, 2, 0).squeeze(-1).numpy()
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("image" if c == 0 else f"{rows[c - 1].part} masked", fontsize=8)
        axes[i][0].set_ylabel(str(names[i])[-24:], fontsize=7)
        for k, r in enumerate(rows[:-1]):  # each part's box on the whole image (not random)
            t, left, b, rt = r.boxes[i]
            axes[i][0].add_patch(Rectangle((left - 0.5, t - 0.5), rt - left, b - t, fill=False,
                                           lw=1.2, ec=colours[k % len(colours)]))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def occluded_views(images: torch.Tensor, rows: Sequence[CorrespondenceRow], fill: float = 0.0
                   ) -> torch.Tensor:
    """Model inputs (N, C, S, S) -> (N, 1 + len(rows), C, S, S): each image, then each with
    row k's box filled (the masked images the features of `correspondence` came from)."""
    views = [images] + [occlude_boxes(images, r.boxes, fill) for r in rows]
    return torch.stack(views, 1)


def correspondence_section(
    run_dir: str | Path, rows: Sequence[CorrespondenceRow], n_images: int, what: str,
    order: int = 75, figure: str | Path | None = None,
) -> Section:
    """Write the Table 1 section: Δ per part and layer beside the paper's values (and the
    `figure` of the masked images, a path under `run_dir`, where given)."""
    from zfnet.report import Figure, Section, Table, write_section

    layers = list(rows[0].delta)
    table_rows = [
        [r.part] + [f"{r.delta[k]:.4f} ± {r.spread[k]:.4f}" for k in layers] for r in rows
    ]
    paper = [[p, f"{v5:.3f}", f"{v7:.3f}"] for p, v5, v7 in
             ((p, *v) for p, v in PAPER_TABLE1.items())]
    figures = [] if figure is None else [Figure(
        str(Path(figure).relative_to(run_dir)),
        "Fig. 8: each image as the model sees it, the parts' boxes outlined; then the same "
        "image with each part masked, and with a random box of the first part's size")]
    section = Section(
        key="correspondence", title="Correspondence (Fig. 8, Table 1)", order=order,
        caption=(
            f"{n_images} images of {what}; the same part is masked in each (its bounding box, "
            "filled with the mean image), or as control a random box of the same size. Δ is the "
            "mean over image pairs of the share of features whose change has a different sign "
            "(normalised Hamming distance): lower = the part changes every image's "
            "representation in the same way, i.e. the network ties that part together across "
            f"images. Layers: {' and '.join(layers)} (the paper's layers 5 and 7). Spread: std "
            "over pairs (parts) or over random draws (random). The paper "
            "finds parts clearly below random at layer 5 and all alike at layer 7. Δ's scale "
            "depends on the network and the images (the paper's: ZFNet on 5 dog faces): "
            "compare a part with this table's random row, not with the paper's numbers. A part "
            "at about the same place in every image scores below random even in an untrained "
            "network: this analysis run on the same architecture at random init (zfnet analyze "
            "correspondence --model NAME, no --weights) shows what training adds."
        ),
        figures=figures,
        tables=[
            Table(["part"] + [f"Δ {k}" for k in layers], table_rows, "this model"),
            Table(["part (paper, dog faces)", "Δ layer 5", "Δ layer 7"], paper, "paper Table 1"),
        ],
    )
    write_section(run_dir, section)
    return section
