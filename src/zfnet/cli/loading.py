"""What the commands that look inside a model share: the model and data loaded once, the
layers named, the report rebuilt."""

from __future__ import annotations

import os

import click

from zfnet.cli.options import ModelOptions


def _mining_workers(workers: int | str | None, device: object) -> int:
    """The DataLoader workers a command that mines a dataset uses: `--workers` as given (0
    included), or "auto" when it was not."""
    from zfnet.data.loaders import resolve_workers

    return resolve_workers("auto" if workers is None else workers, device)


def _model_and_data(options: ModelOptions, data: str | None = None, *, need_data: bool = True,
                    optional_data: bool = False, ten_crop: bool = False, strict: bool = False,
                    device=None, notes: bool = True, follows_class: bool = False):
    """(Source, DataBundle or None) for a command: the model `options` name, loaded once, with
    its preprocessing (the notes on how — random init, default preprocessing — go to stderr),
    and `data` (default: the run's dataset) as that model's inputs. `optional_data`: None
    instead of an error where neither `data` nor the model names a dataset. `device`: where
    the model goes instead of `options.device` (a torchrun process's own); `notes` False: not
    shown (torchrun's other processes). `follows_class`: the command follows each image's class
    (occlusion, invariance), and says how it finds it where the model names its classes
    otherwise than the dataset (`zfnet.analyses.classes.match_classes`)."""
    from zfnet.sources import load_data, load_source
    from zfnet.train.distributed import resolve_device

    if options.model is not None and options.checkpoint is not None:
        raise click.UsageError("--model and --checkpoint both name the model: give one of them")
    if options.model is None and options.checkpoint is None:
        raise click.UsageError("no model given: --model SOURCE (a zfnet model name, "
                               "torchvision:NAME, timm:NAME, hf:ORG/NAME, FILE.py:NAME, a "
                               "zfnet run) or "
                               "--checkpoint RUN")
    source = load_source(options.model or _run_path(options.checkpoint), options.weights,
                         mean=options.mean, std=options.std,
                         resize=options.resize, crop=options.crop, labels=options.labels,
                         device=device or resolve_device(options.device))
    for note in source.meta.get("notes", []) if notes else ():
        click.echo(note, err=True)
    if optional_data and not data and not source.meta.get("data"):
        need_data = False
    # the analyses read the val split alone: train/'s problems are not theirs
    bundle = load_data(source, data, ten_crop=ten_crop, strict=strict,
                       read_train=False) if need_data else None
    if bundle is not None and source.kind != "run":
        from zfnet.analyses.classes import match_classes

        matched = match_classes(source.model, source.labels,
                                getattr(bundle, "class_names", None))
        if matched == "other" and notes and follows_class:
            click.echo(f"{source.name} names its {len(source.labels)} outputs otherwise than "
                       f"{bundle.spec or 'the dataset'} names its classes (output 0 "
                       f"{source.labels[0]!r}, class 0 {bundle.class_names[0]!r}): the "
                       "analyses follow the class it predicts", err=True)
        elif matched == "by name" and notes and follows_class:
            click.echo(f"{source.name} names each of the {bundle.num_classes} classes of "
                       f"{bundle.spec or 'the dataset'} among its {len(source.labels)} "
                       "outputs: the analyses follow each image's class at the output of its "
                       "name", err=True)
    _computed_on(source, bundle)
    return source, bundle


def _broken_files(n: int) -> str:
    """"1 broken file", "3 broken files"."""
    return f"{n} broken file{'s' * (n != 1)}"


def _computed_on(source, bundle) -> None:  # noqa: ANN001
    """The report sections this command writes say the model, its preprocessing and the data
    (`zfnet.report.computed_on`), for as long as the command runs."""
    from zfnet.report.sections import computed_on

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    what = f"{source.name} ({source.preprocessing.describe()})"
    if bundle is not None and bundle.spec:
        what += f", data {bundle.spec}"
    ctx.with_resource(computed_on(what))


def _load(checkpoint: str, data: str | None, device: str = "cpu"):
    """(model, bundle) of a zfnet run's checkpoint for an analysis command, the model on
    `device` (auto: cuda if there); the data (default the run's) made into its inputs as every
    command makes them (`zfnet.sources.load_data`: a folder or shards minus the run's own mean
    image, `images:DIR` fitted to its size)."""
    from zfnet.sources import load_data, load_source
    from zfnet.train.distributed import resolve_device

    source = load_source(_run_path(checkpoint), device=resolve_device(device))
    return source.model, load_data(source, data)


def _run_path(checkpoint: str | None) -> str | None:
    """--checkpoint RUN as a path, never a model name: a run folder named `zfnet_small` is
    the run (`load_source` takes a registry name as that model, randomly initialised)."""
    from zfnet.models import list_models

    return os.path.join(".", checkpoint) if checkpoint in list_models() else checkpoint


def _layers(model, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """`names` as the names `zfnet models` lists (a module path such as features.conv1 -> conv1),
    checked before anything is written: an unknown one raises UnknownLayerError, which lists
    the valid names."""
    from zfnet.models import layer_name

    if not names:
        return names
    return tuple(layer_name(model, name) for name in names)


def _class_alone(classes: tuple[str, ...], others: dict[str, object]) -> None:
    """A UsageError where --class (the class scores' units) is given with an option in
    `others` ({option: its value}) that chooses other units."""
    for option, given in others.items():
        if classes and given:
            raise click.UsageError(f"--class picks the units of the class scores (the last "
                                   f"layer); {option} picks others: give one of them")


def _finish(out: str) -> None:
    """Build the report page of `out`; a section there that cannot be read (another's,
    corrupt) is said with what this command kept and how to build the page once it is mended."""
    from zfnet.report import build_report
    from zfnet.report.sections import SectionFileError

    try:
        page = build_report(out)
    except SectionFileError as e:
        raise click.ClickException(f"{e}; this command's results are saved in {out}: "
                                   f"`zfnet report {out}` then builds the page") from None
    click.echo(f"report: {page.resolve()}")
