"""`zfnet project` and `zfnet predict`: a model on your own images."""

from __future__ import annotations

from pathlib import Path

import click

from zfnet.cli.app import main
from zfnet.cli.loading import _class_alone, _layers, _mining_workers, _model_and_data
from zfnet.cli.options import (
    _NONLINEAR,
    _OUT_DIR,
    _PROGRESS,
    _RULE_HELP,
    _SEED,
    _SOURCE,
    _WORKERS,
    ModelOptions,
    _counts_from_zero,
    _names,
    _position,
    _Whole,
)


@main.command("project", short_help="Project units of your own images down to pixels")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@_SOURCE
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers, comma-separated and/or repeated: names from `zfnet models SOURCE` "
                   "(conv5, layer3, features.28). Default: conv1..conv5 on zfnet's models, the "
                   "main stages of any other CNN.")
@click.option("--map", "--channel", "channels", multiple=True, callback=_counts_from_zero,
              metavar="M[,M...]", help="These maps (repeat or comma list; numbers from 0), "
                                       "as `visualize topk --map` takes them.")
@click.option("--top", type=_Whole(1), default=None,
              help="Each image's K most active maps (default 4).")
@click.option("--class", "classes", multiple=True, metavar="NAME",
              help="Project this class's score (the model's last layer), by its name as the "
                   "weights or --labels give it (tabby, \"tiger cat\") or its number; repeat "
                   "for more. The classes the model predicts: --top K without --class and "
                   "--layer set to its last layer.")
@click.option("--position", callback=_position, metavar="ROW,COL",
              help="The unit at this row and column of each map (from 0; a layer's map size: "
                   "`zfnet models SOURCE`), instead of each map's strongest; --top then ranks "
                   "the maps by their activation there.")
@click.option("--rule", type=click.Choice(["deconvnet", "guided", "gradient"]),
              default="deconvnet", show_default=True, help=_RULE_HELP)
@_SEED
@_NONLINEAR
@click.option("--out", required=True, type=_OUT_DIR,
              help="Folder for the projections: a PNG per unit and image (its receptive field, "
                   "the projection, the projection over the image) and project.json listing "
                   "them.")
@_PROGRESS
def project_cmd(images: tuple[str, ...], model_options: ModelOptions,
                layers: tuple[str, ...] | None, channels: tuple[int, ...] | None,
                top: int | None, classes: tuple[str, ...], position: tuple[int, int] | None,
                rule: str, seed: str, out: str) -> None:
    """Project the strongest unit of maps of each layer (or the unit at --position), in each
    IMAGE, down to pixels (paper Sec. 2.1): one PNG per unit with the image and the unit's
    receptive field, the projection, and the projection over the image, and OUT/project.json
    listing them.

    IMAGE: image files, a folder of images, or a dataset spec (images:DIR, synthetic, ...).
    """
    from zfnet.analyses.classes import class_indices
    from zfnet.analyses.units import project_units, write_units
    from zfnet.data import image_sources, load_images
    from zfnet.models import feature_layers, score_layer
    from zfnet.progress import progress_bar

    if channels and top:
        raise click.UsageError("--map and --top both choose the maps: give one of them")
    _class_alone(classes, {"--layer": layers, "--map": channels, "--top": top,
                           "--position": position})
    found = image_sources(images)  # before the model is loaded
    source, _ = _model_and_data(model_options, need_data=False)
    if classes:
        layers = (score_layer(source.model),)
        channels = tuple(class_indices(classes, source.labels, source.name,
                                         source.meta.get("num_classes")))
    layers = _layers(source.model, layers) or tuple(
        feature_layers(source.model, source.preprocessing.crop))
    data = load_images(found, source.preprocessing)
    names = [str(p) for p in getattr(data, "paths", [])] or None
    # the last layer's units are the classes the weights name (source.labels)
    last = score_layer(source.model) if source.labels else None
    # a bar over the images, each read, run and projected once for every layer (a folder of
    # photos takes a while)
    with progress_bar(total=len(data), desc="images", unit="img") as bar:
        results = project_units(
            source.model, data, layers, channels=channels, top=top, rule=rule,
            position=position, pixel_scale=source.preprocessing.pixel_scale(),
            batch_size=model_options.batch_size, names=names,
            unit_names={last: source.labels} if last and source.labels else None, seed=seed,
            progress=bar.update)
    # each image read gives units: the others were broken files (named in the warnings)
    seen = {unit.image for unit, _, _ in results}
    unreadable = list(dict.fromkeys(  # a file given twice (its folder, and by name): once
        names[i] if names else f"image {i}" for i in range(len(data)) if i not in seen))
    index = write_units(results, out, rule, source.name, seed, not_read=unreadable)
    for unit, _, _ in results:
        fires = ("" if unit.active else " (seeded with 1)" if seed == "one" else
                 " (not active: this seed projects it to nothing; --seed one shows what would "
                 "raise it)")
        by = f", projected by the {unit.projection}" if unit.projection else ""  # not --rule's
        click.echo(f"{unit.name}: {unit.what}, activation {unit.activation:.3g}{fires}{by} -> "
                   f"{Path(out) / unit.file}")
    if unreadable:
        click.echo(f"not read ({len(unreadable)}): {', '.join(unreadable)}", err=True)
    click.echo(f"wrote {len(results)} projection{'s' * (len(results) != 1)} and {index}")


@main.command("predict", short_help="Each image's most probable classes")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@_SOURCE
@click.option("--top", default=5, show_default=True, type=_Whole(1),
              help="Classes shown per image, the most probable first.")
@click.option("--ten-crop", is_flag=True,
              help="Average the probabilities over the paper's 10 crops (corners and centre, "
                   "each also flipped) instead of the centre crop.")
@click.option("--out", type=click.Path(), metavar="FILE",
              help="Also write the predictions to FILE: .csv (image, rank, class, name, "
                   "probability) or .json.")
@click.option("--amp", type=click.Choice(["off", "auto", "bf16", "fp16"]), default="off",
              show_default=True,
              help="Mixed precision, as in eval (auto: bf16 on CUDA and on CPUs with native "
                   "bf16; fp16: CUDA only); off: the probabilities in float32.")
@_WORKERS
@_PROGRESS
def predict_cmd(images: tuple[str, ...], model_options: ModelOptions, top: int,
                ten_crop: bool, out: str | None, amp: str, workers: int | str | None) -> None:
    """The TOP most probable classes of each IMAGE, by the model's softmax, named by its class
    names (the weights' own or --labels).

    IMAGE: image files, a folder of images, or a dataset spec (images:DIR, synthetic, ...).
    """
    from zfnet.data import image_sources, load_images
    from zfnet.predict import check_output, predict, write_predictions
    from zfnet.progress import progress_bar
    from zfnet.sources import labels_hint
    from zfnet.train.distributed import resolve_device
    from zfnet.train.recipe import amp_dtype_for

    device = resolve_device(model_options.device)
    amp_dtype = amp_dtype_for(amp, device)  # before the model is loaded, as the file is
    if out is not None:
        check_output(out)
    found = image_sources(images)
    source, _ = _model_and_data(model_options, need_data=False)
    data = load_images(found, source.preprocessing, ten_crop=ten_crop)
    names = [str(p) for p in getattr(data, "paths", [])] or None
    # a model without class names on labelled folders of as many classes: output k is the
    # k-th sorted class folder, as `zfnet eval` scores it (it said "class 2 (label: cat)")
    folders = list(getattr(data, "classes", None) or [])
    by_folders = not source.labels and bool(folders) and \
        len(folders) == source.meta.get("num_classes")
    labels = folders if by_folders else source.labels
    with progress_bar(total=len(data), desc="images", unit="img") as bar:
        found, unreadable = predict(
            source.model, data, top=top, labels=labels, names=names,
            batch_size=model_options.batch_size, workers=_mining_workers(workers, device),
            progress=bar.update, amp_dtype=amp_dtype)
    for p in found:
        click.echo(f"{p.image}: {p.words()}")
    if unreadable:
        click.echo(f"not read ({len(unreadable)}): {', '.join(unreadable)}", err=True)
    if not found:
        raise click.ClickException("none of the images could be read (see the warnings above)")
    if top > len(found[0].classes):
        click.echo(f"--top {top}: {source.name} has {len(found[0].classes)} classes, all shown",
                   err=True)
    if by_folders:
        click.echo("the model's classes have no names: output k is named by the data's k-th "
                   "class folder (sorted), as zfnet eval scores it", err=True)
    elif not source.labels:  # after the predictions it is about, not before an error
        click.echo(f"the classes have no names ({labels_hint(source.meta.get('num_classes'))})",
                   err=True)
    if out is not None:
        crops = "the 10 crops" if ten_crop else "the centre crop"
        precision = str(amp_dtype or next(source.model.parameters()).dtype).split(".")[-1]
        path = write_predictions(found, out, {"source": source.name, "crops": crops,
                                              "precision": precision, "not_read": unreadable})
        click.echo(f"wrote the predictions of {len(found)} image{'s' * (len(found) != 1)} "
                   f"to {path}")
