"""Feature evolution during training (paper Fig. 4).

For a selection of feature maps per layer, the strongest activation over (a subset of) the
training set is found again at every kept checkpoint and projected to pixels with the
deconvnet; the epochs are shown side by side. The paper: lower layers settle within a few
epochs, upper layers only after 40–50.

The number per layer that says when it settles: for each epoch, the mean over the chosen maps
of the cosine similarity between that epoch's projection and the last epoch's (both cropped to
the receptive field, so the comparison is of the pattern, wherever in the image it was found).
A layer has settled at the first epoch from which this stays ≥ `settle_at` (default 0.8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from zfnet.analyses.gallery import project_topk, select_maps
from zfnet.analyses.topk import mine_topk
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import save_grid
from zfnet.models import is_zfnet_model


@dataclass
class EvolutionResult:
    """Projections per layer: (maps, epochs, C, rf, rf); similarity to the last epoch per layer."""

    epochs: list[int]
    maps: dict[str, list[int]]
    projections: dict[str, Tensor] = field(default_factory=dict)
    similarity: dict[str, list[float]] = field(default_factory=dict)  # layer -> per epoch
    settled: dict[str, int | None] = field(default_factory=dict)  # layer -> first settled epoch


def feature_evolution(
    checkpoints: Sequence[tuple[int, nn.Module]],
    dataset: Dataset,
    layers: Sequence[str] = ("conv1", "conv2", "conv3", "conv4", "conv5"),
    n_maps: int = 6,
    n_images: int | None = 2000,
    settle_at: float = 0.8,
    rule: str = "deconvnet",
    batch_size: int = 64,
) -> EvolutionResult:
    """Fig. 4 from `checkpoints` [(epoch, model), …] in training order and `dataset` (training
    images as model inputs, e.g. centre crops; the first `n_images` are searched).

    Maps are chosen once, on the last checkpoint (the `n_maps` strongest of each layer, see
    `zfnet.analyses.gallery.select_maps`), and followed back through the epochs.
    """
    if not checkpoints:
        raise ValueError("no checkpoints: train with kept epochs (TrainConfig.keep_epochs)")
    for epoch, model in checkpoints:
        if not is_zfnet_model(model):
            raise ValueError(
                f"feature evolution (Fig. 4) follows the checkpoints a `zfnet train` run keeps, "
                f"epoch by epoch; the model of epoch {epoch} ({type(model).__name__}) is not one "
                "of zfnet's models (zfnet_*, alexnet_*). For a pretrained model, `zfnet visualize "
                "topk` shows its features")
    indices = range(min(len(dataset), n_images)) if n_images else None
    mined = [mine_topk(m, dataset, layers, k=1, indices=indices, batch_size=batch_size)
             for _, m in checkpoints]
    maps = {layer: select_maps(mined[-1][layer], n_maps) for layer in layers}
    res = EvolutionResult([e for e, _ in checkpoints], maps)
    per_ckpt = [  # one pass per checkpoint for all layers: {layer: (M, 1, C, rf, rf)}
        project_topk(model, dataset, {k: tk[k] for k in layers}, maps, rule)
        for (_, model), tk in zip(checkpoints, mined, strict=True)
    ]
    for layer in layers:
        per_epoch = [p[layer][:, 0] for p in per_ckpt]  # each (M, C, rf, rf)
        proj = torch.stack(per_epoch, 1)  # (M, E, C, rf, rf)
        res.projections[layer] = proj
        flat = proj.flatten(2)  # (M, E, D)
        sim = torch.nn.functional.cosine_similarity(flat, flat[:, -1:].expand_as(flat), dim=2)
        curve = sim.mean(0).tolist()  # (E,)
        res.similarity[layer] = curve
        settled = None
        for i in range(len(curve)):
            if all(c >= settle_at for c in curve[i:]):
                settled = res.epochs[i]
                break
        res.settled[layer] = settled
    return res


def render_evolution(projections: Tensor, path: str | Path, min_side: int = 40) -> Path:
    """One PNG per layer: a row per map, a column per epoch (maps, epochs, C, s, s)."""
    return save_grid(projections, path, min_side)


def evolution_section(run_dir: str | Path, result: EvolutionResult, order: int = 50):
    """Write the Fig. 4 figures (one per layer) and the report section."""
    from zfnet.report import Figure, Section, Table, write_section

    run_dir = Path(run_dir)
    figures = []
    for layer, proj in result.projections.items():
        path = render_evolution(proj, run_dir / "figures" / "evolution" / f"{layer}.png")
        figures.append(Figure(str(path.relative_to(run_dir)),
                              f"{layer}: maps {result.maps[layer]} (rows), epochs "
                              f"{', '.join(map(str, result.epochs))} (columns)"))
    rows = [[layer] + [f"{v:.2f}" for v in sims] + [result.settled[layer] or "not yet"]
            for layer, sims in result.similarity.items()]
    section = Section(
        key="evolution", title="Feature evolution during training (Fig. 4)", order=order,
        caption=(
            "For a few feature maps of each layer, the strongest activation over the training "
            "images at each kept epoch, projected to pixels with the deconvnet (rows: maps; "
            "columns: epochs). The table gives, per layer and epoch, the mean cosine similarity "
            "of the projection to the last epoch's, and the first epoch from which it stays "
            "≥ 0.8. The paper: lower layers settle within a few epochs, upper layers only "
            "after 40–50 epochs. " + DISPLAY_CAPTION
        ),
        figures=figures,
        tables=[Table(["layer"] + [f"epoch {e}" for e in result.epochs] + ["settled at"], rows)],
    )
    write_section(run_dir, section)
    return section
