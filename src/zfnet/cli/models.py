"""`zfnet models`: the models, or the layers of one (names, sizes, receptive fields)."""

from __future__ import annotations

import click

from zfnet.cli.app import main
from zfnet.cli.options import _LABELS, _PREPROCESSING, _WEIGHTS, _options, _Whole


@main.command("models", short_help="List the models, or the layers of one")
@click.argument("name", required=False, metavar="[SOURCE]")
@click.option("--input-size", type=_Whole(1), default=None,
              help="Input side for the layer table (default: the model's crop).")
@_options(_WEIGHTS, _LABELS, *_PREPROCESSING)
def models_cmd(name: str | None, input_size: int | None, weights: str | None,
               labels: str | None, mean: tuple[float, ...] | None,
               std: tuple[float, ...] | None, resize: int | None, crop: int | None) -> None:
    """List zfnet's models, or the layers of model SOURCE (the names every command takes): a
    zfnet model name, torchvision:NAME, timm:NAME, hf:ORG/NAME, your own FILE.py:NAME or a zfnet
    run; with --weights and the preprocessing options, what that source loads (its classes, its
    preprocessing).
    `zfnet models torchvision:` lists torchvision's models, `zfnet models timm:` timm's."""
    import torch

    from zfnet.models import (
        NoSpatialStageError,
        check_has_modules,
        create_model,
        feature_layers,
        layer_info,
        list_models,
        repeated_layers,
        zfnet_config,
    )
    from zfnet.models.geometry import per_axis
    from zfnet.sources import labels_hint, load_source, timm_models, torchvision_models

    if name is None:
        for n in list_models():
            click.echo(n)
        click.echo("\nand any torchvision classification model as torchvision:NAME (list them: "
                   "`zfnet models torchvision:`), timm:NAME with timm installed (`zfnet "
                   "models timm:`), a Hugging Face image classifier as hf:ORG/NAME or hf:DIR "
                   "with transformers installed, your own FILE.py:NAME (a function or class "
                   "that builds it), or a zfnet run")
        return
    if name.strip().lower() in ("torchvision", "torchvision:"):
        for n in torchvision_models():
            click.echo(f"torchvision:{n}")
        return
    if name.strip().lower() in ("timm", "timm:"):
        for n in timm_models():
            click.echo(f"timm:{n}")
        return
    overrides = {"mean": mean, "std": std, "resize": resize, "crop": crop}
    src = None
    if name in list_models() and weights is None and labels is None and \
            not any(overrides.values()):
        with torch.device("meta"):  # shapes only: no memory, however large the input
            model = create_model(name, **({"input_size": input_size} if input_size else {}))
        size = fixed = model.config.input_size
        title = name
    else:
        src = load_source(name, weights, mean=mean, std=std, resize=resize, crop=crop,
                          labels=labels,
                          device="cpu" if weights else "meta")  # meta: the architecture only
        own_line = src.kind != "run" or any(overrides.values())  # its preprocessing, below
        for note in src.meta.get("notes", []):  # (as overridden: said once, below)
            if not (any(overrides.values()) and note.startswith("preprocessing:")):
                if own_line:  # its values are the line below: said once
                    note = note.replace(f" ({src.preprocessing.describe()})", "")
                click.echo(note, err=True)
        model, title = src.model, src.name if src.kind == "run" or weights else name
        fixed = getattr(zfnet_config(model), "input_size", None)
        if fixed is not None and input_size not in (None, fixed):
            raise click.BadParameter(f"{input_size}: {src.name} takes {fixed} px inputs",
                                     param_hint="--input-size")
        size = fixed or input_size or src.preprocessing.crop
    check_has_modules(model)  # no layer to list: said, not an empty table
    n_params = sum(p.numel() for p in model.parameters())
    infos = list(layer_info(model, size).values())
    click.echo(f"{title}: {n_params:,} parameters, input {size} px")
    if src is not None and own_line:
        prep = src.preprocessing
        unit = ("" if prep.mean_image is not None else  # as --mean/--std take them: 0..1
                f" = --mean {','.join(f'{v / 255:.4g}' for v in prep.mean)} --std "
                f"{','.join(f'{v / 255:.4g}' for v in prep.std)}")
        click.echo(f"preprocessing: {prep.describe()}{unit}")
    if src is not None and src.labels:
        click.echo(f"classes: {len(src.labels)} ({', '.join(src.labels[:3])}, ...)")
    elif src is not None and src.meta.get("num_classes") and (
            weights is not None or src.kind == "hf"):  # a plain weights file, a hf: folder's
        click.echo(f"classes: {src.meta['num_classes']} (not named: "
                   f"{labels_hint(src.meta['num_classes'])})")
    # Short names (zfnet's) get a column beside their module paths; other models' names are
    # their module paths.
    short = any(i.name != i.module for i in infos)
    w_name = max([8, *(len(i.name) for i in infos)])
    w_module = max([20, *(len(i.module) for i in infos)])
    w_kind = max([8, *(len(i.kind) for i in infos)])
    head = f"{'layer':<{w_name}} " + (f"{'module':<{w_module}} " if short else "")
    click.echo(f"{head}{'kind':<{w_kind}} {'maps':>6} {'size':>5} {'stride':>6} {'rf':>5}")
    # zfnet's models: no geometry means an fc layer (blank); others: no place in the image, or
    # not known here ("-")
    unknown = "" if zfnet_config(model) is not None else "-"
    for info in infos:
        g = info.geometry
        size_, jump, rf = (per_axis(g, "size"), per_axis(g, "jump"),
                           per_axis(g, "rf") + ("*" if g.gated else "")) if g else (unknown,) * 3
        head = f"{info.name:<{w_name}} " + (f"{info.module:<{w_module}} " if short else "")
        click.echo(f"{head}{info.kind:<{w_kind}} " + (
            f"{info.channels or '':>6} {size_:>5} {jump:>6} {rf:>5}" if info.runs else
            "  not called in the forward pass"))
    if any(i.geometry is None and i.runs for i in infos) and unknown:
        click.echo("size, stride, rf -: no place in the image: each unit sees all of it (a "
                   "global pooling, what follows it), or where is not known (tokens, maps after "
                   "an operation zfnet does not follow)")
    if any(i.geometry is not None and i.geometry.gated for i in infos):
        click.echo("rf *: gated: a scale computed from the whole image (a squeeze-and-excitation "
                   "gate, a group or instance norm's statistics) also acts on these maps; rf is "
                   "the field of the map it acts on")
    # a module run more than once (a ResNet block's one ReLU): which call its row is
    repeated: dict[int, list[str]] = {}
    if not short:
        for path, calls in repeated_layers(model, size).items():
            repeated.setdefault(calls, []).append(path)
    for calls, paths in repeated.items():
        listed = ", ".join(paths) if len(paths) <= 4 else (
            f"{', '.join(paths[:3])}, ... ({len(paths)} modules)")
        click.echo(f"called {calls} times in each forward pass: {listed}; their rows and "
                   "every analysis of them show the last call")
    # the names --layer takes beyond the rows: the blocks that hold them, and the default
    blocks = [n for n, m in model.named_modules() if n and any(True for _ in m.children())]
    if blocks and not short:
        shown = 40  # a ResNet-50's 27 in full; a DenseNet's hundreds cut short
        more = f", ... ({len(blocks)} in all)" if len(blocks) > shown else ""
        click.echo(f"blocks, layers too (each module that holds others): "
                   f"{', '.join(blocks[:shown])}{more}")
    try:
        defaults = feature_layers(model, size)
    except NoSpatialStageError:  # a vision transformer
        defaults = []
    if defaults:
        click.echo(f"without --layer, the analyses show: {', '.join(defaults)}")
