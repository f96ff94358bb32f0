"""Beyond the paper: do the maps depend on the model at all? (Adebayo et al., "Sanity Checks
for Saliency Maps", NeurIPS 2018.)

Cascading model randomisation: starting from the top (fc8) and going down to conv1, the
weights of one more layer are re-initialised at each step — on any model, every module with
parameters of its own (convolutions, linear layers, batch norms …) in reverse forward order, on a
copy (the model is left as it was) — and the maps of each method
(deconvnet, guided backprop, gradient) are recomputed for the same images and the same seed
units. Each randomised map is compared with the trained model's map by SSIM and Spearman rank
correlation of the absolute values (1 = unchanged, ~0 = unrelated). Independent randomisation
(the paper's other variant) re-initialises one layer at a time, the others trained: which
layer's weights does a method's map depend on?

Data randomisation (the paper's second test): the same model trained with the same recipe on the
same images, their labels permuted (`random_labels=SEED`, `zfnet.data.relabel`), so that it can
only memorise them. Each model's map of its own predicted class (the logit, seeded as the
paper's class-logit maps) is compared for the same images: a method whose maps stay the same
whether the labels meant anything or not does not show what the model learned from them.

What it means: a method whose maps barely change while the layers that decide the output are
destroyed shows the image more than the model — deconvnet and guided backprop are known to stay
close to an edge detector (their ReLU rule discards the sign information of the upper layers),
while the plain gradient decorrelates as soon as the top layers are randomised (Adebayo et
al.'s findings on an ImageNet Inception v3; the section's table gives a model's own).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from zfnet.display import CAPTION as DISPLAY_CAPTION
from zfnet.display import save_grid
from zfnet.models.geometry import record_forward
from zfnet.models.layers import resolve_layer
from zfnet.models.modes import eval_mode
from zfnet.progress import tally

if TYPE_CHECKING:
    from zfnet.report import Section

RULES = ("deconvnet", "guided", "gradient")


def _map_images(maps: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) signed maps -> (N, H, W) absolute values summed over channels, in [0, 1]:
    each scaled by its own peak however small (a random network's maps can be ~1e-13); a map
    of zeros stays zeros."""
    a = maps.detach().float().abs().sum(1)  # (N, H, W)
    peak = a.flatten(1).amax(1)[:, None, None]
    a = a / peak.where(peak > 0, 1.0)
    return a.cpu().numpy()


def similarity(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean SSIM and Spearman rank correlation between two batches of maps (N, C, H, W)."""
    x, y = _map_images(a), _map_images(b)
    ssim = [structural_similarity(p, q, data_range=1.0) for p, q in zip(x, y, strict=True)]
    rank = []
    for p, q in zip(x, y, strict=True):
        if np.ptp(p) == 0 or np.ptp(q) == 0:  # a map of one value (a unit that went silent)
            rank.append(0.0)  # has no rank order: counted as unrelated
            continue
        r = spearmanr(p.ravel(), q.ravel()).statistic
        rank.append(0.0 if np.isnan(r) else float(r))
    return {"ssim": float(np.mean(ssim)), "spearman": float(np.mean(rank))}


def trainable_layers(model: nn.Module, up_to: str | None = None,
                     input_size: int | tuple[int, int] | None = None) -> list[str]:
    """Module paths of the modules with parameters of their own (conv, linear, batch norm …) that
    run at or before module path `up_to` (all when None) in the forward pass, top first (fc8 …
    conv1): forward order from one pass at `input_size` (default 224). Layers above the seed
    unit cannot change its map."""
    _, made = record_forward(model, input_size or 224)
    order = list(made)  # forward order: a block after the modules inside it
    if up_to is not None and up_to not in made:
        raise ValueError(f"module {up_to!r} does not run in the forward pass")
    stop = order.index(up_to) if up_to is not None else len(order)
    names = [n for n in order[: stop + 1]
             if next(model.get_submodule(n).parameters(recurse=False), None) is not None]
    return names[::-1]


STEPS = ("block", "module")
MIN_BLOCKS = 6  # blocks found by going down the module tree until there are this many


def blocks(model: nn.Module, min_blocks: int = MIN_BLOCKS) -> list[str]:
    """The network's main parts, as module paths: its children that hold parameters, each
    replaced by its own such children while there are fewer than `min_blocks` (torchvision
    resnet: `conv1`, `bn1`, `layer1` … `layer4`, `fc`; inception_v3: `Conv2d_1a_3x3` …
    `Mixed_7c`, `fc`, Adebayo et al.'s steps; densenet: `features.conv0` … `features.norm5`,
    `classifier`; zfnet's models: every layer, `features.conv1` … `classifier.fc8`)."""
    def parts(prefix: str, m: nn.Module) -> list[str]:
        return [f"{prefix}{n}" for n, c in m.named_children()
                if next(c.parameters(), None) is not None]

    found = parts("", model)
    while len(found) < min_blocks:
        deeper = []
        for path in found:
            deeper.extend(parts(f"{path}.", model.get_submodule(path)) or [path])
        if deeper == found:
            break
        found = deeper
    return found


def randomization_steps(model: nn.Module, up_to: str | None = None,
                        input_size: int | tuple[int, int] | None = None,
                        steps: str = "block") -> list[tuple[str, list[str]]]:
    """What each step of the randomisation re-initialises, top first: (the step's name, the
    module paths of `trainable_layers(model, up_to, input_size)` it takes). `steps="block"`:
    one block of `blocks(model)` per step (of a block that holds `up_to`, the modules that run
    up to it); `"module"`: every module with parameters on its own."""
    if steps not in STEPS:
        raise ValueError(f"unknown steps {steps!r}; valid: {', '.join(STEPS)}")
    modules = trainable_layers(model, up_to, input_size)
    if steps == "module":
        return [(m, [m]) for m in modules]
    parts = blocks(model)
    groups: dict[str, list[str]] = {}
    for m in modules:  # top first: a block where its last module to run is
        block = next((b for b in parts if m == b or m.startswith(f"{b}.")), m)
        groups.setdefault(block, []).append(m)
    return list(groups.items())


def reinitialise(m: nn.Module, g: torch.Generator) -> None:
    """Fresh parameters for module `m` (its own, not its children's), drawn from `g`:
    convolutions and linear layers He-normal with zero bias (the scale a freshly initialised
    layer has); others by their own `reset_parameters` (batch norm: weight 1, bias 0, running
    statistics reset), seeded from `g`; anything else N(0, its current std)."""
    with torch.no_grad():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.zero_()
        elif hasattr(m, "reset_parameters"):
            seed = int(torch.randint(2**31 - 1, (1,), generator=g))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                m.reset_parameters()
        else:
            for p in m.parameters(recurse=False):
                std = float(p.float().std()) if p.numel() > 1 else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * std)


MODES = ("cascading", "independent")


@dataclass
class RandomizationResult:
    """steps[i] is the layer re-initialised at step i: cumulative from the top ("cascading"),
    or alone ("independent"); scores[rule][metric][i] the similarity to the trained model's
    maps after that step."""

    steps: list[str]  # a block's module path, or a module's (`randomization_steps`)
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # rule -> (1 + steps, C, H, W): the first image's map from the trained model, then after
    # each step (paper-style figure of Adebayo et al.'s Fig. 2)
    examples: dict[str, torch.Tensor] = field(default_factory=dict)
    mode: str = "cascading"
    layer: str = ""  # the seed units' layer
    images: int = 0  # how many images each score is the mean over
    passed: int = 0  # maps of `layer` the first step passes through, not seeded (`passed_through`)


def model_randomization(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    channels: torch.Tensor,
    rules: Sequence[str] = RULES,
    seed: int = 0,
    mode: str = "cascading",
    steps: str = "block",
    progress: Callable[[int, int], None] | None = None,
) -> RandomizationResult:
    """Re-initialise `model`'s layers (on a copy) and score the maps: from the top down, one
    more at each step ("cascading"), or each alone, every other layer keeping its trained
    weights ("independent": the layer is restored after its step). A step is a block of the
    network (`steps="block"`: a ResNet stage, an Inception block, a layer of zfnet's models)
    or a module with parameters (`"module"`: each convolution, batch norm … on its own).

    Adebayo et al. seed at the class logit: `layer="fc8"`, `channels` = the predicted classes.
    Maps: `zfnet.deconvnet.project(model, images, layer, channels, rule=...)` for each rule —
    the same images (N, C, H, W) and seed units (the strongest activation of map `channels[i]` in
    `layer`) at every step, so only the weights change. Any model: every module with
    parameters of its own at or below `layer`, top first (`randomization_steps`,
    `reinitialise`). progress: called with (projections made, projections in all), one a
    rule at each step and before the first (`zfnet.progress.counted_progress`).
    """
    from zfnet.deconvnet import project  # the one projection engine

    for r in rules:
        if r not in RULES:
            raise ValueError(f"unknown rule {r!r}; valid: {', '.join(RULES)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if steps not in STEPS:
        raise ValueError(f"unknown steps {steps!r}; valid: {', '.join(STEPS)}")
    work = copy.deepcopy(model).eval()
    size = (int(images.shape[-2]), int(images.shape[-1]))
    plan = randomization_steps(work, resolve_layer(work, layer)[0], size, steps)
    made = tally(progress, (len(plan) + 1) * len(rules))

    def maps_by(rule: str) -> torch.Tensor:
        maps = project(work, images, layer, channels, rule=rule)
        made(1)
        return maps

    base = {r: maps_by(r) for r in rules}
    res = RandomizationResult([], {r: {"ssim": [], "spearman": []} for r in rules}, mode=mode,
                              layer=layer, images=len(images))
    shown = {r: [base[r][0].detach().cpu()] for r in rules}
    g = torch.Generator().manual_seed(seed)
    for name, paths in plan:
        modules = [work.get_submodule(p) for p in paths]
        trained = [{k: v.clone() for k, v in _own_state(m).items()} for m in modules]
        for m in modules:
            reinitialise(m, g)
        res.steps.append(name)
        for r in rules:
            maps = maps_by(r)
            shown[r].append(maps[0].detach().cpu())
            for k, v in similarity(base[r], maps).items():
                res.scores[r][k].append(v)
        if mode == "independent":
            with torch.no_grad():
                for m, kept in zip(modules, trained, strict=True):
                    for k, v in _own_state(m).items():
                        v.copy_(kept[k])
    res.examples = {r: torch.stack(m) for r, m in shown.items()}
    return res


def passed_through(model: nn.Module, images: torch.Tensor, layer: str, steps: str = "block",
                   seed: int = 0) -> torch.Tensor:
    """(C,) bool: the maps of `layer` that re-initialising the randomisation's first step (the
    top block, or module, at or below `layer`) leaves unchanged on `images` though they are not
    silent — a DenseNet block's output passes every map of its input through its concatenation.
    Seeded at one of those, the first step could not change any method's map (similarity 1.000
    whatever the rule): the check seeds the maps the step computes. On a copy of `model`."""
    from zfnet.activations import get_activations

    work = copy.deepcopy(model).eval()
    size = (int(images.shape[-2]), int(images.shape[-1]))
    _, paths = randomization_steps(work, resolve_layer(work, layer)[0], size, steps)[0]
    with torch.no_grad():
        before = get_activations(work, images, [layer])[layer]
        g = torch.Generator().manual_seed(seed)
        for path in paths:
            reinitialise(work.get_submodule(path), g)
        after = get_activations(work, images, [layer])[layer]
    dims = [d for d in range(before.ndim) if d != 1]  # all but the maps (the images at least)
    same = torch.isclose(after, before, rtol=1e-5, atol=1e-7).all(dim=dims)
    return same & before.ne(0).any(dim=dims)


@dataclass
class DataRandomizationResult:
    """The maps of a model and of its copy trained on permuted labels, for the same images:
    `scores[rule]` the mean SSIM and Spearman rank correlation, `per_image[rule]` each image's
    rank correlation; `classes` each model's predicted class per image (the seeds, at `layer`);
    `examples[rule]` (N, 2, C, H, W): each image's two maps; `accuracy`, where measured, the
    top-1 accuracy of the model and of the copy on their own training labels ("train",
    "random_train") and on the val split ("val", "random_val"; "reference_val"); `reference`,
    where measured, `scores` of the model against another run on the true labels."""

    layer: str
    classes: tuple[list[int], list[int]]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    per_image: dict[str, list[float]] = field(default_factory=dict)
    examples: dict[str, torch.Tensor] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    reference: dict[str, dict[str, float]] = field(default_factory=dict)


def output_layer(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> str:
    """The module path of the last module with parameters to run (zfnet's `classifier.fc8`,
    a ResNet's `fc`): where the class logits are made."""
    return trainable_layers(model, input_size=input_size)[0]


def data_randomization(
    model: nn.Module,
    random_model: nn.Module,
    images: torch.Tensor,
    rules: Sequence[str] = RULES,
) -> DataRandomizationResult:
    """Adebayo et al.'s data randomisation test: `model` and `random_model` (the same
    architecture trained on permuted labels) each project its own predicted class's logit (at
    `output_layer`) to pixels for `images` (N, C, H, W), by each rule; the two models' maps
    are compared image by image (`similarity`). Neither model is changed."""
    from zfnet.deconvnet import project  # the one projection engine

    for r in rules:
        if r not in RULES:
            raise ValueError(f"unknown rule {r!r}; valid: {', '.join(RULES)}")
    size = (int(images.shape[-2]), int(images.shape[-1]))
    layer = output_layer(model, size)
    if output_layer(random_model, size) != layer:
        raise ValueError(f"the two models differ: their outputs come from {layer!r} and "
                         f"{output_layer(random_model, size)!r}")
    with eval_mode(model), eval_mode(random_model):
        with torch.no_grad():
            classes = [m(images).argmax(1) for m in (model, random_model)]
        res = DataRandomizationResult(layer, (classes[0].tolist(), classes[1].tolist()))
        for r in rules:
            maps = [project(m, images, layer, c, rule=r)
                    for m, c in zip((model, random_model), classes, strict=True)]
            res.scores[r] = similarity(*maps)
            res.per_image[r] = [similarity(a[None], b[None])["spearman"]
                                for a, b in zip(*maps, strict=True)]
            res.examples[r] = torch.stack(maps, 1).detach().cpu()
    return res


def _own_state(m: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters and buffers of `m` itself (not its children's), by name."""
    return dict([*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)])


MAX_SHOWN = 12  # steps named on the plot's axis and drawn in the maps' figure


def _short(path: str) -> str:
    """zfnet's `features.conv3` as `conv3`; any other module path as it is."""
    head, _, rest = path.partition(".")
    if head in ("features", "classifier") and rest and not rest[0].isdigit() and "." not in rest:
        return rest
    return path


def _skipped(result: RandomizationResult) -> str:
    """Words for the seed maps left out (`passed_through`), or none."""
    if not result.passed:
        return ""
    n = result.passed
    return (f" (the strongest of the maps {_short(result.steps[0])} computes; the {n} it "
            "passes through unchanged from below are not seeded)")


def randomization_words(result: RandomizationResult) -> list[str]:
    """The check's outcome in a few lines for a terminal: what was re-initialised, then per
    rule the rank correlation (and SSIM) with the trained model's maps: after the first and
    the last step when cascading, at the least and the most similar layer when independent."""
    names = [_short(s) for s in result.steps]
    seeds = (f"; {result.images} image{'s' * (result.images != 1)} seeded at "
             f"{_short(result.layer)}{_skipped(result)}" if result.images else "")
    if result.mode == "independent":
        lines = [f"independent randomisation of {len(names)} layer{'s' * (len(names) != 1)}, "
                 f"each alone{seeds}; similarity to the trained model's maps, least and most "
                 "similar (1 = unchanged):"]
    else:
        lines = [f"cascading randomisation from {names[0]} down to {names[-1]} "
                 f"({len(names)} step{'s' * (len(names) != 1)}){seeds}; similarity to the "
                 "trained model's maps after the first and the last step (1 = unchanged):"]
    width = max(map(len, result.scores), default=0)
    for rule, score in result.scores.items():
        rho, ssim = score["spearman"], score["ssim"]
        if result.mode == "independent":
            lo, hi = int(np.argmin(rho)), int(np.argmax(rho))
            lines.append(f"{rule:<{width}}  rank correlation {rho[lo]:.3f} ({names[lo]}) "
                         f"to {rho[hi]:.3f} ({names[hi]})  SSIM {ssim[lo]:.3f} to "
                         f"{ssim[hi]:.3f}")
        else:
            lines.append(f"{rule:<{width}}  rank correlation {rho[0]:.3f} -> {rho[-1]:.3f}  "
                         f"SSIM {ssim[0]:.3f} -> {ssim[-1]:.3f}")
    return lines


def randomization_section(
    run_dir: str | Path, result: RandomizationResult, order: int = 90
) -> Section:
    """Write the randomisation plot (SSIM and rank correlation per step and rule), the maps'
    figure and the report section, of either mode (each its own section and files)."""
    from zfnet.report import Figure, Section, Table, write_section
    from zfnet.report.plots import plot_curves

    run_dir = Path(run_dir)
    steps = list(range(1, len(result.steps) + 1))
    panels = {  # titled as the table and the caption name them
        title: {rule: result.scores[rule][metric] for rule in result.scores}
        for metric, title in (("ssim", "SSIM"), ("spearman", "rank correlation (Spearman)"))
    }
    names = [_short(s) for s in result.steps]
    independent = result.mode == "independent"
    stem = "randomization_independent" if independent else "randomization"
    # each step named under its point when they are few, else numbered (the table names them)
    named = len(names) <= MAX_SHOWN and max(map(len, names), default=0) <= 24
    what = "the one layer re-initialised" if independent else "re-initialised from the top down to"
    numbered = "step (the table names each)"  # what a step is: the caption's words
    path = plot_curves(steps, panels, run_dir / "figures" / f"{stem}.png",
                       xlabel=what if named else numbered,
                       xticks=names if named else None,
                       joined=not independent)  # independent steps: no trend between them
    rows = [[i + 1, n] + [f"{result.scores[r]['spearman'][i]:.3f}" for r in result.scores]
            for i, n in enumerate(names)]  # the step as the curves' x axis numbers it
    figures = [Figure(str(path.relative_to(run_dir)), "similarity per randomisation step")]
    if result.examples:
        # at most MAX_SHOWN steps drawn (a ResNet has ~60): evenly spaced, always the last
        n = len(names)
        cols = sorted({round(i * n / (MAX_SHOWN - 1)) for i in range(MAX_SHOWN)}) \
            if n + 1 > MAX_SHOWN else list(range(n + 1))
        # columns named as the curves' x axis: by the step's layer where few, else its number
        heads = ["trained"] + [names[c - 1] if named else f"step {c}" for c in cols if c > 0]
        grid = save_grid(torch.stack([ex[cols] for ex in result.examples.values()]),
                         run_dir / "figures" / f"{stem}_maps.png", min_side=64,
                         col_labels=heads, row_labels=list(result.examples))
        figures.append(Figure(str(grid.relative_to(run_dir)), (
            f"the first image's map; rows: {', '.join(result.examples)}; columns: the trained "
            "model, then " + ("with only this layer re-initialised: " if independent else
                              "re-initialised down to ") +
            ", ".join(names[c - 1] for c in cols if c > 0))))
    how = ("Each layer's weights alone are re-initialised in turn, the others keeping their "
           "trained weights, " if independent else
           "From the top layer down, one more layer's weights are re-initialised at each step, ")
    section = Section(
        key=stem,
        title=f"Sanity check: {result.mode} randomisation (Adebayo et al. 2018)",
        order=order + (1 if independent else 0),
        caption=(
            how + "and the maps of each method are recomputed for the same images and units"
            + (f" ({result.images} val image{'s' * (result.images != 1)}, each seeded at its "
               f"strongest map of {_short(result.layer)}{_skipped(result)})"
               if result.images else "") + ". "
            "Similarity to the trained model's maps: SSIM and Spearman rank correlation of the "
            "absolute maps (1 = unchanged), the mean over the images"
            + (" (few images make the curves noisy: --images sets how many)"
               if 0 < result.images < 8 else "") + ". " + (
                "A map that stays similar whichever layer loses its weights shows the image "
                "more than what the model learned; the layers whose loss changes it most are "
                "the ones it depends on. " if independent else
                "A map that stays similar while the model is destroyed shows the image more "
                "than what the model learned. Adebayo et al. found deconvnet and guided "
                "backprop maps of an ImageNet Inception v3 staying close to edge maps, and the "
                "plain gradient decorrelating as soon as its top layers went: compare the "
                "table's columns, this model's own. ") +
            "Read deconvnet projections as 'which image structure excites this unit through "
            "the layers below', not as evidence of the model's decision. " + DISPLAY_CAPTION
        ),
        figures=figures,
        tables=[Table(["step", ("re-initialised alone" if independent
                                else "re-initialised down to")]
                      + [f"rank corr. {r}" for r in result.scores], rows)],
    )
    write_section(run_dir, section)
    return section


SHOWN_IMAGES = 8  # rows of the data randomisation test's figure


def data_randomization_section(
    run_dir: str | Path, result: DataRandomizationResult, pixels: torch.Tensor,
    random_run: str, reference_run: str | None = None, order: int = 92,
) -> Section:
    """Write the data randomisation test's figure (each image beside each rule's map from the
    model and from its copy trained on permuted labels), table and report section.
    `pixels`: the images as uint8 (N, C, H, W); `result.accuracy` must be measured;
    `random_run`, `reference_run` (where `result.reference` is measured): the copies' run
    directories, named in the caption."""
    from zfnet.report import Figure, Section, Table, write_section

    run_dir = Path(run_dir)
    rules, accuracy = list(result.scores), result.accuracy
    shown = pixels[:SHOWN_IMAGES].float() - 127.5  # the images as they are, by the maps' rule
    tiles = torch.cat([shown[:, None], *(result.examples[r][:SHOWN_IMAGES] for r in rules)], 1)
    # each rule's pair of columns headed by the rule, then the copy's "permuted labels"
    heads = ["image", *(h for r in rules for h in (r, "permuted"))]
    grid = save_grid(tiles, run_dir / "figures" / "randomization_labels.png", col_labels=heads)
    columns = ", ".join(f"{r}: the model, then the copy" for r in rules)
    ref = result.reference
    rows = [[r, f"{result.scores[r]['ssim']:.3f}", f"{result.scores[r]['spearman']:.3f}",
             *([f"{ref[r]['spearman']:.3f}"] if ref else []),
             " ".join(f"{v:.2f}" for v in result.per_image[r])] for r in rules]
    if ref:
        against = (f"The reference is a second run on the true labels, trained as the model was "
                   f"from the next seed ({reference_run}; on the val split "
                   f"{accuracy['reference_val']:.1%}): how alike two runs' maps are anyway "
                   "(its rank correlation with the model's maps in the table). ")
    else:
        against = ("Two runs on the true labels never give the same maps either: read these "
                   "figures beside that reference (--reference trains one from another seed). ")
    agree = sum(a == b for a, b in zip(*result.classes, strict=True))
    section = Section(
        key="randomization_labels",
        title="Sanity check: data randomisation (Adebayo et al. 2018)",
        order=order,
        caption=(
            f"A copy of the model was trained with the same recipe on the same images, their "
            f"labels permuted ({random_run}): it can only memorise them (it fits "
            f"{accuracy['random_train']:.1%} of its training labels, the model "
            f"{accuracy['train']:.1%} of the true ones; on the val split "
            f"{accuracy['random_val']:.1%} against {accuracy['val']:.1%}). For the same "
            f"training images, each model's predicted class ({_short(result.layer)}) is "
            "projected to pixels by each method, and the two maps are compared: SSIM and "
            "Spearman rank correlation of the absolute maps (1 = the same map). A method "
            "whose maps stay alike whether the labels meant anything or not shows the image "
            "more than what the model learned from its labels (Adebayo et al. found guided "
            "backprop insensitive to them, the gradient sensitive). " + against +
            "The check means most where the copy has memorised its labels. "
            f"The two models predicted the same class for {agree} of "
            f"{len(result.classes[0])} images. " + DISPLAY_CAPTION),
        figures=[Figure(str(grid.relative_to(run_dir)),
                        "rows: the images" + (f" (the first {len(shown)} of {len(pixels)})"
                                              if len(shown) < len(pixels) else "") +
                        f"; columns: the image, then {columns} (headed 'permuted')")],
        tables=[Table(["method", "SSIM", "rank corr.", *(["reference rank corr."] if ref else []),
                       "rank corr. per image"], rows)],
        metrics={"copy's training labels fitted": f"{accuracy['random_train']:.1%}",
                 **{f"rank corr. {r}": round(result.scores[r]["spearman"], 3) for r in rules},
                 **{f"reference {r}": round(ref[r]["spearman"], 3) for r in ref}},
    )
    write_section(run_dir, section)
    return section
