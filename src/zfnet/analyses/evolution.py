"""Feature evolution during training (paper Fig. 4).

For a selection of feature maps per layer, the strongest activation over (a subset of) the
training set is found again at every kept checkpoint and projected to pixels with the
deconvnet; the epochs are shown side by side. The paper: lower layers settle within a few
epochs, upper layers only after 40–50.

The number per layer that says when it settles: for each epoch, the mean over the chosen maps
of the cosine similarity between that epoch's projection and the last epoch's (both cropped to
the receptive field, so the comparison is of the pattern, wherever in the image it was found).
A layer has settled at the first epoch before the last from which this stays ≥ `settle_at`
(default 0.8); one that only the last epoch resembles has not settled yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from zfnet.analyses.gallery import RULE_NAMES, check_defined, first_image, project_topk, select_maps
from zfnet.analyses.topk import TopK, mine_topk
from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import save_grid

if TYPE_CHECKING:
    from zfnet.report import Section


def similarity_to_last(flat: Tensor) -> Tensor:
    """(M, E, D) projections of M maps at E epochs -> (M, E): each one's cosine similarity to
    its map's last. Two blank projections (a unit that never fires: nothing to project) are
    the same picture, 1 — the last epoch's own 1 included —, one blank beside another, 0."""
    last = flat[:, -1:].expand_as(flat)
    # within [-1, 1]: float rounding gave the last epoch's own 1.0000002
    sim = torch.nn.functional.cosine_similarity(flat, last, dim=2).clamp(-1.0, 1.0)
    blank = flat.eq(0).all(2)
    return sim.masked_fill(blank & last.eq(0).all(2), 1.0)


@dataclass
class EvolutionResult:
    """Projections per layer: (maps, epochs, C, rf, rf); similarity to the last epoch per layer."""

    epochs: list[int]
    maps: dict[str, list[int]]
    projections: dict[str, Tensor] = field(default_factory=dict)
    similarity: dict[str, list[float]] = field(default_factory=dict)  # layer -> per epoch
    # layer -> first settled epoch; None: not yet (only the last epoch is like the last)
    settled: dict[str, int | None] = field(default_factory=dict)
    # layer -> (maps, epochs): each map's own similarity to its last epoch (`similarity` is
    # the mean over the maps)
    unit_similarity: dict[str, Tensor] = field(default_factory=dict)
    images: int = 0  # the training images searched at each epoch
    rule: str = "deconvnet"  # how the units were projected: deconvnet, guided or gradient


def feature_evolution(
    checkpoints: Sequence[tuple[int, nn.Module]],
    dataset: Dataset,
    layers: Sequence[str] = ("conv1", "conv2", "conv3", "conv4", "conv5"),  # any model's names
    n_maps: int = 6,
    n_images: int | None = 2000,
    settle_at: float = 0.8,
    rule: str = "deconvnet",
    batch_size: int = 64,
    *,
    maps: Mapping[str, Sequence[int]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvolutionResult:
    """Fig. 4 from `checkpoints` [(epoch, model), …] in training order and `dataset` (training
    images as model inputs, e.g. centre crops; the first `n_images` are searched).

    Maps are chosen once, on the last checkpoint (the `n_maps` strongest of each layer, see
    `zfnet.analyses.gallery.select_maps`), and followed back through the epochs; or given:
    `maps` {layer: [map, …]} (its keys are then the layers, `layers` and `n_maps` unused).
    Each checkpoint is read once (by index) and mined once for all layers, so `checkpoints` may
    be a sequence that loads each model when indexed.
    progress(done, total): the work done over all the checkpoints, images mined and units
    projected, (images + maps) per checkpoint in all; an exception it raises (a cancelled job)
    stops the work.
    """
    if not checkpoints:
        raise ValueError("no checkpoints: train with kept epochs (TrainConfig.keep_epochs)")
    if maps is not None:
        layers = list(maps)
        if not layers:
            raise ValueError("maps is empty: give the maps of at least one layer")
    layers = list(layers)
    indices = range(min(len(dataset), n_images)) if n_images else None
    per_pass = len(indices) if indices is not None else len(dataset)  # type: ignore[arg-type]
    # the work: per checkpoint, its images mined and its maps projected (n_maps a layer until
    # they are chosen)
    work = {"done": 0, "units": sum(len(v) for v in maps.values()) if maps is not None
            else n_maps * len(layers)}

    def reporter() -> Callable[[int, int], None] | None:
        """A report of the work done from here on, `done` counted from this point."""
        if progress is None:
            return None
        offset = work["done"]
        return lambda done, _: progress(offset + done,
                                        (per_pass + work["units"]) * len(checkpoints))

    def mine(epoch: int, model: nn.Module) -> dict[str, TopK]:
        mined = mine_topk(model, dataset, layers, k=1, indices=indices, batch_size=batch_size,
                          progress=reporter() or False)
        work["done"] += per_pass
        return mined

    last = len(checkpoints) - 1
    first: tuple[int, nn.Module, dict[str, TopK]] | None = None
    if maps is None:  # chosen on the last checkpoint: mine it first
        epoch, model = checkpoints[last]
        check_defined(model, first_image(dataset), layers, rule)  # before mining
        first = (epoch, model, mine(epoch, model))
        chosen = {layer: select_maps(first[2][layer], n_maps) for layer in layers}
        work["units"] = sum(len(c) for c in chosen.values())
    else:
        chosen = {layer: [int(c) for c in maps[layer]] for layer in layers}
    res = EvolutionResult([], chosen, images=per_pass, rule=rule)
    per_ckpt = []  # one pass per checkpoint for all layers: {layer: (M, 1, C, rf, rf)}
    for i in range(len(checkpoints)):
        if i == last and first is not None:
            epoch, model, mined = first
        else:
            epoch, model = checkpoints[i]
            if first is None and i == 0:
                check_defined(model, first_image(dataset), layers, rule)  # before mining
            mined = mine(epoch, model)
        if i == 0:
            _check_maps(chosen, mined)
        res.epochs.append(epoch)
        per_ckpt.append(project_topk(model, dataset, {k: mined[k] for k in layers}, chosen,
                                     rule, progress=reporter()))
        work["done"] += work["units"]
    for layer in layers:
        per_epoch = [p[layer][:, 0] for p in per_ckpt]  # each (M, C, rf, rf)
        proj = torch.stack(per_epoch, 1)  # (M, E, C, rf, rf)
        res.projections[layer] = proj
        sim = similarity_to_last(proj.flatten(2))  # (M, E)
        res.unit_similarity[layer] = sim
        curve = sim.mean(0).tolist()  # (E,)
        res.similarity[layer] = curve
        settled = None
        for i in range(len(curve) - 1):  # the last epoch is 1 beside itself: not a settling
            if all(c >= settle_at for c in curve[i:]):
                settled = res.epochs[i]
                break
        res.settled[layer] = settled
    return res


def _check_maps(maps: Mapping[str, Sequence[int]], mined: Mapping[str, TopK]) -> None:
    for layer, chosen in maps.items():
        c = mined[layer].values.shape[0]
        bad = [m for m in chosen if not 0 <= m < c]
        if bad or not chosen:
            raise ValueError(f"maps {bad or '[]'} of {layer}: it has maps 0..{c - 1}")


class UnitEvolution(NamedTuple):
    """One feature map followed through the kept epochs (paper Fig. 4, one row)."""

    epochs: list[int]
    projections: Tensor  # (E, C, h, w): each epoch's strongest activation, projected
    similarity: list[float]  # per epoch: cosine similarity of its projection to the last's


def unit_evolution(
    checkpoints: Sequence[tuple[int, nn.Module]],
    dataset: Dataset,
    layer: str,
    unit: int,
    n_images: int | None = 2000,
    progress: Callable[[int, int], None] | None = None,
    *,
    rule: str = "deconvnet",
    batch_size: int = 64,
) -> UnitEvolution:
    """Map `unit` of `layer` at every checkpoint (`feature_evolution` for that one map): its
    strongest activation over the first `n_images` of `dataset`, projected to pixels and cut
    to the receptive field, and its similarity to the last epoch's."""
    res = feature_evolution(checkpoints, dataset, n_images=n_images, rule=rule,
                            batch_size=batch_size, maps={layer: [unit]}, progress=progress)
    return UnitEvolution(res.epochs, res.projections[layer][0],
                         res.unit_similarity[layer][0].tolist())


def render_evolution(projections: Tensor, path: str | Path | BinaryIO, min_side: int = 64,
                     epochs: Sequence[int] | None = None, maps: Sequence[int] | None = None
                     ) -> Path | BinaryIO:
    """One PNG per layer: a row per map, a column per epoch (maps, epochs, C, s, s), labelled
    by epoch number above ("epoch" in the corner) and "map M" on the left where `epochs` /
    `maps` are given. path: a file path or an open binary file."""
    return save_grid(projections, path, min_side,
                     col_labels=None if epochs is None else [str(e) for e in epochs],
                     row_labels=None if maps is None else [f"map {m}" for m in maps],
                     corner=None if epochs is None else "epoch")


def render_unit_evolution(evolution: UnitEvolution | Tensor, path: str | Path | BinaryIO,
                          min_side: int = 64, epochs: Sequence[int] | None = None
                          ) -> Path | BinaryIO:
    """One map's row, a column per epoch: a `UnitEvolution` (its epochs label the columns) or
    its projections (E, C, h, w) with `epochs`. path: a file path or an open binary file (the
    explorer's PNG bytes)."""
    if isinstance(evolution, UnitEvolution):
        proj, epochs = evolution.projections, evolution.epochs
    else:
        proj = evolution
    return render_evolution(proj[None], path, min_side, epochs=epochs)


def evolution_section(run_dir: str | Path, result: EvolutionResult, order: int = 40) -> Section:
    """Write the Fig. 4 figures (one per layer) and the report section."""
    from zfnet.report import Figure, Section, Table, write_section

    run_dir = Path(run_dir)
    figures = []
    for layer, proj in result.projections.items():
        path = render_evolution(proj, run_dir / "figures" / "evolution" / f"{layer}.png",
                                epochs=result.epochs, maps=result.maps[layer])
        figures.append(Figure(str(path.relative_to(run_dir)),
                              f"{layer}: maps {', '.join(map(str, result.maps[layer]))} "
                              "(rows), epochs "
                              f"{', '.join(map(str, result.epochs))} (columns)"))
    rows = [[layer] + [f"{v:.2f}" for v in sims] + [result.settled[layer] or "not yet"]
            for layer, sims in result.similarity.items()]
    section = Section(
        key="evolution", title="Feature evolution during training (Fig. 4)", order=order,
        caption=(
            "For a few feature maps of each layer, the strongest activation over "
            + (f"{result.images} " if result.images else "the ") + "training "
            f"images at each kept epoch, projected to pixels ({RULE_NAMES[result.rule]}; "
            "rows: maps, columns: epochs). The table gives, per layer and epoch, the mean "
            "cosine similarity of the projection to the last epoch's, and the first epoch "
            "before the last from which it stays ≥ 0.8 ('not yet' where none). The paper: "
            "lower layers settle within a few epochs, upper layers only after 40–50 epochs. "
            + DISPLAY_CAPTION
        ),
        figures=figures,
        tables=[Table(["layer"] + [f"epoch {e}" for e in result.epochs] + ["settled at"], rows)],
    )
    write_section(run_dir, section)
    return section
