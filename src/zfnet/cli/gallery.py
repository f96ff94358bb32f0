"""`zfnet visualize topk` (Fig. 2) and `zfnet atlas` (a static site of every unit)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from zfnet.cli.app import main
from zfnet.cli.loading import _class_alone, _finish, _layers, _mining_workers, _model_and_data
from zfnet.cli.options import (
    _DATA,
    _NONLINEAR,
    _OUT,
    _OUT_DIR,
    _PRECISION,
    _PROGRESS,
    _RULE_HELP,
    _SEED,
    _SOURCE,
    _WORKERS,
    ModelOptions,
    _counts_from_zero,
    _names,
    _Whole,
)


@main.group("visualize", short_help="Deconvnet visualisations (Sec. 2.1, Fig. 2)")
def visualize() -> None:
    """Deconvnet visualisations (paper Sec. 2.1)."""


def _gallery_figures(out: str) -> list[str]:
    """The figures the gallery section of `out` shows now (none: no section, or unreadable)."""
    from zfnet.report import read_sections

    try:
        return [f.path for s in read_sections(out) if s.key == "topk_gallery" for f in s.figures]
    except (OSError, ValueError):
        return []


def _files(images: int | None, val: int) -> int:
    """The items mined: --images, at most the `val` images there are."""
    return min(images or val, val)


def _k_within(k: int, files: int) -> int:
    """--k, at most the `files` to mine (a map has no more activations to show: --k 1000 of 3
    photos drew a page of empty cells); the mining cuts it again to the images it could read,
    and `_say_k` says so."""
    return min(k, files) if files > 0 else k


def _say_k(asked: int, k: int, mined: int, files: int) -> None:
    """Where --k `asked` was cut to the `k` shown: by the `mined` images read of `files`."""
    if k < asked:
        unread = f" (of {files} files, {files - mined} unreadable)" if mined < files else ""
        click.echo(f"--k {asked}: {mined} image{'s' * (mined != 1)} read{unread}, so the top "
                   f"{k} of each map", err=True)


@visualize.command("topk", short_help="Fig. 2: top-k activations projected beside image patches")
@_SOURCE
@_DATA
@_OUT
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers to show, comma-separated and/or repeated (default: conv1..conv5 "
                   "on zfnet's models, the main stages of any other CNN).")
@click.option("--layers", "layers_alias", multiple=True, callback=_names, hidden=True)
@click.option("--k", default=9, show_default=True, type=_Whole(1),
              help="Strongest activations kept per map (the paper's 9).")
@click.option("--maps-per-layer", default=16, show_default=True, type=_Whole(1),
              help="Maps shown per layer above conv1 (conv1: every map).")
@click.option("--map-rule", type=click.Choice(["strongest", "spaced"]), default="strongest",
              show_default=True,
              help="Which maps above conv1 are shown: the strongest over the images, or "
                   "maps spaced evenly through the layer.")
@click.option("--rule", type=click.Choice(["deconvnet", "guided", "gradient"]),
              default="deconvnet", show_default=True, help=_RULE_HELP)
@_NONLINEAR
@click.option("--images", default=None, type=_Whole(1),
              help="Mine only the first N images of the val split (of images:DIR, the first "
                   "N of its images; default: all).")
@click.option("--map", "maps", multiple=True, callback=_counts_from_zero, metavar="M[,M...]",
              help="These maps of each layer (repeat or comma list), instead of "
                   "--maps-per-layer chosen by --map-rule.")
@click.option("--class", "classes", multiple=True, metavar="NAME",
              help="The images that score highest for this class (the model's last layer), by "
                   "its name as the weights or --labels give it, or its number; repeat for "
                   "more.")
@_SEED
@_WORKERS
@_PRECISION
@_PROGRESS
def topk_cmd(model_options: ModelOptions, data: str | None, out: str,
             layers: tuple[str, ...] | None, layers_alias: tuple[str, ...] | None, k: int,
             maps_per_layer: int, map_rule: str, rule: str, images: int | None,
             maps: tuple[int, ...] | None, classes: tuple[str, ...],
             workers: int | str | None, precision: str, seed: str) -> None:
    """Fig. 2: the k strongest activations of feature maps over a dataset (or a folder of your
    images: --data images:DIR), projected to pixels beside their image patches; every map's
    top k, each its image, activation and receptive field, in OUT/gallery/topk.json.

    Many processes: `torchrun --nproc-per-node N -m zfnet.cli visualize topk ...` mines a
    share of the images in each and merges them (the answer of one process); the first
    process projects and writes the gallery. A mining stopped (Ctrl-C) is kept in
    OUT/gallery, and the same command continues it."""
    from zfnet import pipeline
    from zfnet.analyses.classes import class_indices
    from zfnet.data.words import as_shown
    from zfnet.deconvnet import resolve_precision
    from zfnet.models import score_layer
    from zfnet.train.distributed import processes

    names = (*(layers or ()), *(layers_alias or ())) or None
    _class_alone(classes, {"--layer": names, "--map": maps})
    with processes(model_options.device) as info:
        source, bundle = _model_and_data(model_options, data, device=info.device,
                                         notes=info.is_main)
        if classes:
            names = (score_layer(source.model),)
            maps = tuple(class_indices(classes, source.labels, source.name,
                                         source.meta.get("num_classes")))
        names = _layers(source.model, names)
        files = _files(images, len(bundle.val))
        before = _gallery_figures(out) if info.is_main else []
        result = pipeline.gallery(
            source.model, bundle, out, k=_k_within(k, files), n_images=files,
            n_maps=maps_per_layer, layers=list(names) if names else None, maps=maps,
            rule=rule, map_rule=map_rule, batch_size=model_options.batch_size,
            distributed=info.enabled, num_workers=_mining_workers(workers, info.device),
            class_names=as_shown(source.labels, bundle) or None,
            progress=info.is_main,  # mining a folder takes a while
            precision=resolve_precision(precision, info.device), seed=seed)
    if info.is_main:
        shown = next(iter(result.topk.values()))
        _say_k(k, shown.k, files if shown.mined is None else shown.mined, files)
        for name, blank in result.inactive.items():  # drawn blank: said, and what shows them
            labels = source.labels or []
            which = ", ".join(f"{c} ({labels[c]})" if classes and c < len(labels) else str(c)
                              for c in blank)
            many = len(blank) > 1
            what = ("class score" if classes else "map") + "s" * many
            click.echo(f"note: {name} {what} {which} never above zero over the images: "
                       f"{'their' if many else 'its'} projections are blank (--seed one shows "
                       f"what would raise {'them' if many else 'it'})", err=True)
        now = _gallery_figures(out)
        gone = [Path(f).stem.removeprefix("topk_") for f in before if f not in now]
        if gone:  # the section is this call's: said, not done silently
            click.echo(f"note: the gallery section now shows {len(now)} figure"
                       f"{'s' * (len(now) != 1)}, this command's; {', '.join(gone)} it showed "
                       "before are left out (the same command without --layer/--map/--class "
                       "shows every layer again)", err=True)
        _finish(out)


@main.command("atlas", short_help="A static site: each unit's top-k projections and evolution")
@_SOURCE
@_DATA
@click.option("--out", required=True, type=_OUT_DIR,
              help="Directory for the site: new, empty, or an earlier atlas to replace.")
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers, comma-separated and/or repeated (default: conv1..conv5 on zfnet's "
                   "models, the main stages of any other CNN).")
@click.option("--k", default=9, show_default=True, type=_Whole(1),
              help="Strongest activations kept per map (the paper's 9).")
@click.option("--maps-per-layer", default=None, type=_Whole(1),
              help="The N strongest maps of each layer (default: every map).")
@click.option("--images", default=None, type=_Whole(1),
              help="Mine only the first N images of the val split (of images:DIR, the first "
                   "N of its images; default: all).")
@click.option("--rule", type=click.Choice(["deconvnet", "guided", "gradient"]),
              default="deconvnet", show_default=True, help=_RULE_HELP)
@_NONLINEAR
@click.option("--evolution/--no-evolution", default=True, show_default=True,
              help="For a zfnet run with kept epochs: each unit at every kept epoch (Fig. 4).")
@click.option("--figures", type=click.Choice(["png", "jpeg"]), default="png",
              show_default=True,
              help="The pictures: the gallery's PNGs, or each a JPEG (quality 90, full colour) "
                   "where that is smaller: a ResNet's site in about a third of the bytes, for "
                   "a static host.")
@_WORKERS
@_PRECISION
@_PROGRESS
def atlas_cmd(model_options: ModelOptions, data: str | None, out: str,
              layers: tuple[str, ...] | None, k: int, maps_per_layer: int | None,
              images: int | None, rule: str, evolution: bool, figures: str,
              workers: int | str | None, precision: str) -> None:
    """A static site of the model's units (open OUT/index.html from disk or any host): per
    layer a page of thumbnails, per unit its top-k projections beside their image patches
    (Fig. 2) and, for a zfnet run with kept epochs, its evolution (Fig. 4). A mining that
    stops is kept beside OUT, and the same command continues it."""
    from zfnet.data.words import as_shown
    from zfnet.deconvnet import resolve_precision
    from zfnet.explorer.atlas import ATLAS_FILE, write_atlas
    from zfnet.models import score_layer
    from zfnet.progress import counted_progress
    from zfnet.train import CheckpointModels, run_checkpoints
    from zfnet.train.distributed import resolve_device

    source, bundle = _model_and_data(model_options, data)
    names = _layers(source.model, layers)
    files = _files(images, len(bundle.val))
    kept = run_checkpoints(source.meta["checkpoint"]) \
        if evolution and source.kind == "run" else []
    if evolution and source.kind == "run" and len(kept) < 2:
        click.echo(f"no evolution: the run keeps {len(kept)} checkpoint(s) up to this epoch "
                   "(train with --keep-epochs)", err=True)
    with counted_progress(desc="atlas", unit="step") as progress:
        index = write_atlas(
            source.model, bundle, out, layers=names, k=_k_within(k, files),
            maps_per_layer=maps_per_layer,
            rule=rule, n_images=images, model_name=source.name,
            evolution=CheckpointModels(kept, resolve_device(model_options.device))
            if len(kept) > 1 else None,
            batch_size=model_options.batch_size, progress=progress, figures=figures,
            num_workers=_mining_workers(workers, resolve_device(model_options.device)),
            unit_names={score_layer(source.model): as_shown(source.labels, bundle)}
            if source.labels else None,
            precision=resolve_precision(precision, resolve_device(model_options.device)))
    meta = json.loads((index.parent / ATLAS_FILE).read_text())
    _say_k(k, meta["k"], meta["images"], meta["files"])
    click.echo(f"atlas: {index.resolve()}")
    run_dir = Path(out).parent
    if Path(out).name == "atlas" and (run_dir / "sections").is_dir():  # RUN/atlas: the run's
        from zfnet.report import build_report  # report page links to it from now on

        try:
            click.echo(f"report: {build_report(run_dir).resolve()}")
        except ValueError:  # no section there after all: no page to link
            pass
