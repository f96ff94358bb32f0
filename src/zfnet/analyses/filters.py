"""Filter diagnostics (paper Fig. 6): filter images and the numbers behind "one filter dominates",
"dead filters" and "a mix of extreme high and low frequencies".

Measured per conv layer:
- dominance: max / median filter RMS. Without renormalisation one layer-1 filter can take over
  (Fig. 6a); with RMS renormalisation to 0.1 the ratio stays small.
- dead share: filters whose norm is near zero (RMS < 1% of the layer's median RMS) or, when the
  per-map maximum activation over a validation set is given, maps that are never active (max ≤ 0).
- high-frequency share: share of the filters' spectral energy above half the Nyquist frequency
  (radial frequency > 0.25 cycles/pixel of the kernel's 2-D DFT, zero-padded to 32x32, DC excluded
  from neither sum). AlexNet's 11x11/4 layer 1 has more of it than ZFNet's 7x7/2 (Fig. 6b vs 6c).

Any CNN: the layers are the first two convolutions in forward order with a kernel larger than
1x1 (`zfnet.models.first_convs`: conv1, conv2 on zfnet's models; a ResNet's conv1 and
layer1.0.conv1; GoogLeNet's conv1 and conv3), of any kernel size (rows x columns) and groups (a
depthwise filter has one input map).

Layer 2 as the paper shows it (Fig. 6 d, e): not its weights (a strip of kernels per filter, over
dozens of input maps, says little) but its features — each of its strongest maps' strongest
activation over the validation images, projected to pixels by the deconvnet and cut to its
receptive field (`second_layer_figure`), where AlexNet's stride-4 layer 1 shows as aliasing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from zfnet.models import first_convs, resolve_layer
from zfnet.models.convnet import filter_rms

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from zfnet.analyses.topk import TopK
    from zfnet.report import Section

_PAD = 32  # DFT size: fine enough frequency sampling for 3x3 … 11x11 kernels


WHITE_NOISE_HIGH_FREQ = 1 - math.pi / 16  # `high_frequency_share` of white noise: 80.4%


def high_frequency_share(weight: torch.Tensor, cutoff: float = 0.25) -> float:
    """Share of spectral energy of all filters at radial frequency > `cutoff` cycles/pixel;
    NaN for 1x1 kernels (a point's spectrum is flat: nothing to tell). White noise, a random
    init's filters, gives `WHITE_NOISE_HIGH_FREQ` at the default cutoff."""
    w = weight.detach().float().cpu()  # (O, I, k, k)
    if tuple(w.shape[-2:]) == (1, 1):
        return math.nan
    spec = torch.fft.fft2(w, s=(_PAD, _PAD)).abs().pow(2).sum(dim=(0, 1))  # (P, P)
    f = torch.fft.fftfreq(_PAD)
    radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    total = spec.sum().item()
    return float(spec[radius > cutoff].sum().item() / total) if total > 0 else 0.0


def filter_stats(
    weight: torch.Tensor, max_activation: torch.Tensor | None = None
) -> dict[str, float]:
    """Diagnostics of one conv layer's filters (O, I, k, k); see the module docstring.

    `max_activation` (O,), optional: each map's largest activation over a validation set (e.g.
    from `zfnet.analyses.topk`), which adds the share of never-active maps.
    """
    rms = filter_rms(weight)
    median = rms.median().item()
    near_zero = rms < 0.01 * median if median > 0 else torch.ones_like(rms, dtype=torch.bool)
    stats = {
        "filters": int(rms.numel()),
        "rms_max": rms.max().item(),
        "rms_median": median,
        "dominance": rms.max().item() / median if median > 0 else math.inf,
        "near_zero_share": near_zero.float().mean().item(),
        "high_freq_share": high_frequency_share(weight),
    }
    if max_activation is not None:
        never = max_activation.detach().cpu() <= 0
        stats["never_active_share"] = never.float().mean().item()
        stats["dead_share"] = (never | near_zero.cpu()).float().mean().item()
    else:
        stats["dead_share"] = stats["near_zero_share"]
    return stats


def filter_mosaic(weight: torch.Tensor, max_filters: int = 96, max_inputs: int = 16) -> np.ndarray:
    """Tile filters into one image (H, W, 3) float in [0, 1], each filter scaled on its own.

    3-input-channel filters (layer 1 on RGB) are shown in colour, one tile each; 1-input ones
    (grey images, depthwise convolutions) likewise, in grey. Other layers show a strip per filter
    (first `max_filters`) of its kernels for the first `max_inputs` input maps, in grey, the
    strips in as many columns (a wider gap between them) as make the mosaic about square. Each
    tile (or strip) is contrast-stretched to [0, 1] around 0.5 = zero weight. Kernels may be
    non-square (kh, kw).
    """
    w = weight.detach().float().cpu()[:max_filters]  # (O, I, kh, kw)
    o, i, kh, kw = w.shape
    gap = 1
    if i == 3 or i == 1:
        cols = math.ceil(math.sqrt(o))
        rows = math.ceil(o / cols)
        out = np.ones((rows * (kh + gap) + gap, cols * (kw + gap) + gap, 3), dtype=np.float32)
        for n in range(o):
            t = w[n]
            t = 0.5 + 0.5 * t / t.abs().max().clamp_min(1e-12)  # (I, kh, kw) in [0, 1]
            t = t.expand(3, kh, kw) if i == 1 else t
            r, c = divmod(n, cols)
            y, x = gap + r * (kh + gap), gap + c * (kw + gap)
            out[y : y + kh, x : x + kw] = t.permute(1, 2, 0).numpy()
        return out
    i = min(i, max_inputs)
    w = w[:, :i]
    strip_w, sep = i * (kw + gap), 2 * gap + 1  # one filter's strip; space between columns
    cols = max(1, min(o, math.ceil(math.sqrt(o * (kh + gap) / (strip_w + sep)))))
    rows = math.ceil(o / cols)
    cols = math.ceil(o / rows)  # no empty column at the end
    out = np.ones((rows * (kh + gap) + gap, cols * (strip_w + sep) - sep + gap, 3),
                  dtype=np.float32)
    for n in range(o):
        t = 0.5 + 0.5 * w[n] / w[n].abs().max().clamp_min(1e-12)  # (I, kh, kw)
        c, r = divmod(n, rows)  # down each column, then the next
        for j in range(i):
            y, x = gap + r * (kh + gap), gap + c * (strip_w + sep) + j * (kw + gap)
            out[y : y + kh, x : x + kw] = t[j].numpy()[..., None]
    return out


def save_filter_mosaic(weight: torch.Tensor, path: str | Path, scale: int = 6) -> Path:
    """Save `filter_mosaic(weight)` as a PNG, each weight shown as `scale`×`scale` pixels."""
    from zfnet.display import save_png

    img = (filter_mosaic(weight) * 255).round().astype(np.uint8)
    return Path(save_png(img.repeat(scale, 0).repeat(scale, 1), path))


SECOND_LAYER_MAPS = 36  # layer-2 maps projected (Fig. 6 d, e): the strongest


def second_layer_figure(model: torch.nn.Module, dataset: Dataset, layer: str, topk: TopK,
                        path: str | Path, n_maps: int = SECOND_LAYER_MAPS
                        ) -> tuple[Path, str, int]:
    """Fig. 6 (d, e): the `n_maps` maps of `layer` strongest over `dataset`, each its strongest
    activation (`topk`, a `zfnet.analyses.topk.TopK` of k >= 1 mined there) projected by the
    deconvnet — by the gradient where the deconvnet is undefined through the model (a SiLU) —
    and cut to its receptive field, in a square grid. Returns (the PNG, the rule, the maps)."""
    from zfnet.analyses.gallery import project_topk, select_maps
    from zfnet.display import save_grid
    from zfnet.graph import RuleUndefinedError

    maps = select_maps(topk, n_maps, "strongest")
    rule = "deconvnet"
    try:
        proj = project_topk(model, dataset, {layer: topk}, {layer: maps}, rule)[layer]
    except RuleUndefinedError:
        rule = "gradient"
        proj = project_topk(model, dataset, {layer: topk}, {layer: maps}, rule)[layer]
    tiles = proj[:, 0]  # (maps, C, h, w): each map's strongest
    cols = math.ceil(math.sqrt(len(maps)))
    rows = math.ceil(len(maps) / cols)
    grid = torch.zeros(rows * cols, *tiles.shape[1:], dtype=tiles.dtype)
    grid[: len(maps)] = tiles
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(grid.reshape(rows, cols, *tiles.shape[1:]), path, min_side=48)
    return path, rule, len(maps)


def filters_section(
    run_dir: str | Path,
    models: dict[str, torch.nn.Module],
    max_activation: dict[str, dict[str, torch.Tensor]] | None = None,
    layers: Sequence[str] | Mapping[str, Sequence[str]] | None = ("conv1", "conv2"),
    order: int = 60,
    input_size: int | tuple[int, int] | None = None,
    second_layer: dict[str, tuple[str, TopK, Dataset]] | None = None,
) -> Section:
    """Fig. 6: filter mosaics of `layers` for each labelled model and a table of the diagnostics.

    `models`: {label: model} (e.g. "zfnet_small", "alexnet_small", "zfnet_small, no renorm").
    `layers`: convolutions by name, for every model or {label: names} (None: each model's
    `first_convs`, found by one forward pass at `input_size`, default 224). `max_activation`:
    optional {label: {layer: (O,) max activation over a validation set}}, which adds the share
    of never-active maps.
    `second_layer`: optional {label: (layer, its top-k mined over the validation images, those
    images)}: that model's second layer shown by its features projected (the paper's Fig. 6
    d, e: `second_layer_figure`) instead of its weights. Writes PNGs under
    `run_dir/figures/filters/` and the report section "filters"; returns the Section.
    """
    from zfnet.report import Figure, Section, Table, write_section

    run_dir = Path(run_dir)
    figures, rows = [], []
    projected = False  # some model's layer 2 shown by its features
    for label, model in models.items():
        names = list(layers[label]) if isinstance(layers, Mapping) else list(layers) \
            if layers is not None else first_convs(model, 2, input_size)
        for n_layer, layer in enumerate(names):
            conv = resolve_layer(model, layer)[1]
            if not isinstance(conv, torch.nn.Conv2d):
                raise ValueError(f"layer {layer!r} of {label} is a {type(conv).__name__}, not a "
                                 "Conv2d: filters are shown for convolutions")
            w = conv.weight
            slug = "".join(ch if ch.isalnum() else "_" for ch in f"{label}_{layer}")
            shown = (second_layer or {}).get(label) if n_layer == 1 else None
            if shown is not None:  # its features, as the paper shows layer 2
                mined, topk, dataset = shown
                path, rule, n = second_layer_figure(
                    model, dataset, mined, topk,
                    run_dir / "figures" / "filters" / f"{slug}_features.png")
                by = "the deconvnet" if rule == "deconvnet" else \
                    "the gradient (the deconvnet is undefined through this model)"
                figures.append(Figure(str(path.relative_to(run_dir)), (
                    f"{label}: {layer}'s features (Fig. 6 d, e): its {n} strongest maps, each "
                    f"its strongest activation over {len(dataset)} val images, projected by "
                    f"{by}, cut to its receptive field")))
                projected = True
            else:
                path = save_filter_mosaic(w, run_dir / "figures" / "filters" / f"{slug}.png",
                                          scale=8 if n_layer == 0 else 4)
                figures.append(Figure(str(path.relative_to(run_dir)),
                                      f"{label}: {layer} filters"))
            acts = (max_activation or {}).get(label, {}).get(layer)
            s = filter_stats(w, acts)
            rows.append([
                label, layer, s["filters"], f"{s['rms_max']:.3g}", f"{s['dominance']:.2f}",
                f"{100 * s['dead_share']:.1f}%",
                "n/a (1x1)" if math.isnan(s["high_freq_share"])
                else f"{100 * s['high_freq_share']:.1f}%",
            ])
    section = Section(
        key="filters", title="Filters (Fig. 6)", order=order,
        caption=(
            "The learned filters of the first convolution, each scaled on its own (grey = 0), "
            "in colour; "
            + ("the second layer as the paper shows it, by its features: each of its "
               "strongest maps' strongest activation over the validation images projected to "
               "pixels, cut to its receptive field. "
               if projected else
               "the second as one strip per filter over its first input maps (the strips in "
               "columns, read down each column; with a dataset, --data, its features are "
               "shown instead, as in the paper). ")
            + "The paper's Fig. 6 shows layer-1 filters without renormalisation, one "
            "dominating (6a); AlexNet's 11x11/4 layer 1 with dead filters and a mix of very "
            "high and very low frequencies (6b), where ZFNet's 7x7/2 layer 1 is cleaner (6c); "
            "and AlexNet's layer-2 features with aliasing — regular grid-like artefacts from "
            "its first layer's stride of 4 (6d) — where ZFNet's, after a stride of 2, have "
            "none (6e).\n\n"
            "Table: dominance = largest / median filter RMS (large: one filter dominates); dead "
            "= near-zero filters or maps never active on the validation images (measured after "
            "the layer's ReLU, on zfnet's models; near-zero filters alone elsewhere); high-freq = "
            "share of filter energy above half the Nyquist frequency (white noise, a random "
            f"init's filters, gives {100 * WHITE_NOISE_HIGH_FREQ:.0f}%; smooth filters much "
            "less). Max RMS is in the layer's own units: a first layer that reads the paper's "
            "0..255 pixels (std ~60) has weights ~60x smaller than one reading unit-scale inputs "
            "(zfnet's recipe renormalises the filters of the models it trains to an RMS of at "
            "most 0.1 / 60 on 0..255 pixels, 0.1 on unit-scale inputs; weights trained "
            "elsewhere have no such cap)."
        ),
        figures=figures,
        tables=[Table(["model", "layer", "filters", "max RMS", "dominance", "dead",
                       "high-freq"], rows)],
    )
    write_section(run_dir, section)
    return section
