"""The `zfnet` command: thin — each subcommand parses, calls one library function, prints."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import click

from zfnet import __version__

# Errors a user can cause. The library raises ValueError (CheckpointError, UnknownLayerError,
# BadImageError are ValueErrors) with a message naming the bad value and what is valid, or an
# OSError about a path; either becomes one `Error: ...` line and exit status 1. Anything else is
# a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)


# errors of the machine a command writes on, told in one line: no space, no quota, read-only
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class _OneLine(click.ClickException):
    """A usage error (a bad option value, a missing or unknown option) as one `Error: ...` line,
    without click's usage lines before it; its exit status kept (2)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Command(click.Command):
    """A zfnet command: an empty value (`--out ""`, `--data "$UNSET"`) is an error naming the
    option, not a silent default, nor the current directory for a path."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes = {name: p for p in self.params if isinstance(p, click.Option) and not p.is_flag
                 and not p.count for name in p.opts}
        arguments = [p for p in self.params if isinstance(p, click.Argument)]
        i = 0
        while i < len(args) and args[i] != "--":
            name, eq, value = args[i].partition("=")
            if name in takes and (value == "" if eq else i + 1 < len(args)
                                  and args[i + 1] == ""):
                p = takes[name]
                raise click.BadParameter(f"the value is empty (a shell variable not set?); "
                                         f"give {p.make_metavar(ctx)}", ctx=ctx, param=p)
            if args[i] == "" and arguments:
                raise click.BadParameter("an empty argument (a shell variable not set?)",
                                         ctx=ctx, param=arguments[0])
            i += 2 if name in takes and not eq else 1
        return super().parse_args(ctx, args)


class _Group(click.Group):
    """A group of zfnet commands (`visualize`, `analyze`): each one a `_Command`."""

    command_class = _Command


class _Commands(click.Group):
    """The `zfnet` group: a user error raised by any command becomes a one-line message."""

    command_class = _Command
    group_class = _Group

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            if _other_rank():  # the same command line: the first process says it for all
                ctx.exit(e.exit_code)
            raise _OneLine(" ".join(e.format_message().split()), e.exit_code) from e
        except USER_ERRORS as e:  # may be one process's own (its share of the data): named
            rank = _other_rank()
            raise click.ClickException((f"rank {rank}: " if rank else "")
                                       + (" ".join(str(e).split()) or type(e).__name__)) from e
        except OSError as e:  # the machine's, not the input's: a full disk, a read-only one
            if e.errno not in _MACHINE_ERRNOS:
                raise
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(f"{e.strerror or type(e).__name__}{where} (free space "
                                       "or choose another place to write)") from e
        except KeyboardInterrupt:  # Ctrl-C outside a training step (which saves and exits 130
            import sys  # itself): the shell's 130, as training's, not click's "Aborted!" 1

            click.echo("interrupted (SIGINT)", err=True)
            sys.exit(130)


def _other_rank() -> int:
    """Under torchrun, this process's rank where it is not the first; else 0."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    from zfnet.train.distributed import current_rank

    return current_rank()


def _names(ctx: click.Context, param: click.Parameter, value):
    """A comma list, or a repeated option of comma lists -> the names, spaces stripped."""
    if value is None or value == ():
        return None
    values = value if isinstance(value, tuple) else (value,)
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    if not names:
        raise click.BadParameter(f"{', '.join(map(repr, values))} names nothing")
    return names


def _ints(value, names: tuple[str, ...] | None, minimum: int, example: str):
    """`names` (a parsed comma list) as integers >= `minimum`, or a clear BadParameter."""
    if names is None:
        return None
    try:
        counts = tuple(int(n) for n in names)
    except ValueError:
        counts = ()
    if not counts or min(counts) < minimum:
        raise click.BadParameter(f"{value!r} is not a comma list of integers >= {minimum}, "
                                 f"e.g. {example}")
    return counts


def _counts(ctx: click.Context, param: click.Parameter, value: str | None):
    """A comma list of integers >= 1, e.g. 1,5,20 -> (1, 5, 20)."""
    return _ints(value, _names(ctx, param, value), 1, "1,5,20")


def _counts_from_zero(ctx: click.Context, param: click.Parameter, value):
    """A comma list (or repeated option) of map indices >= 0, e.g. 3,17 -> (3, 17)."""
    value = ",".join(value) if isinstance(value, tuple) else value
    return _ints(value, _names(ctx, param, value or None), 0, "3,17")


def _position(ctx: click.Context, param: click.Parameter, value: str | None):
    """ROW,COL: two integers >= 0, e.g. 3,5 -> (3, 5)."""
    rc = _ints(value, _names(ctx, param, value), 0, "3,5")
    if rc is not None and len(rc) != 2:
        raise click.BadParameter(f"{value!r} is not a row and a column, ROW,COL (from 0), e.g. "
                                 "3,5")
    return rc


def _device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from zfnet.train.distributed import parse_device

    if value is not None:
        try:
            parse_device(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from e
    return value


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zfnet")
def main() -> None:
    """ZFNet (Zeiler & Fergus 2013): train it, evaluate it, look inside it with the deconvnet."""
    from zfnet.memory import keep_freed_memory

    keep_freed_memory()  # no page faults on every step's tensors (zfnet/memory.py)
    _one_line_warnings()


def _one_line_warnings() -> None:
    """zfnet's own warnings (a skipped broken image, a projection that is the plain gradient, a
    resume that is not exact: each class with `one_line = True`) as one line each, without the
    source line Python's default format adds, and each only once per command (a broken file
    read again for each layer, or for the mean image and then in training, is named once), on a
    line of its own under a progress bar."""
    import warnings

    default = warnings.showwarning
    if getattr(default, "zfnet", False):
        default.shown.clear()  # installed by an earlier command in this process: a new one
        return
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if getattr(category, "one_line", False):
            text = f"{getattr(category, 'prefix', 'warning')}: {message}"
            # a warning about a file (a broken image) once per file, else once per text
            key = f"file\0{message.file}" if getattr(message, "file", None) else text
            if key not in shown:
                from tqdm import tqdm

                shown.add(key)
                tqdm.write(text, file=sys.stderr)  # a progress bar drawn: cleared first
                sys.stderr.flush()  # in order with what is echoed (click flushes)
        else:
            default(message, category, filename, lineno, file, line)

    show.zfnet = True  # type: ignore[attr-defined]
    show.shown = shown  # type: ignore[attr-defined]
    warnings.showwarning = show


# --- the model to look inside, from any source (zfnet.sources), the same for every command ---

@dataclass(frozen=True)
class ModelOptions:
    """What `_SOURCE` parsed: the model (`model` or `checkpoint`), its weights, class names,
    preprocessing overrides (mean/std as typed: 0..1 units), device and batch size."""

    model: str | None
    checkpoint: str | None
    weights: str | None
    labels: str | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    resize: int | None
    crop: int | None
    device: str
    batch_size: int


def _floats(ctx: click.Context, param: click.Parameter, value: str | None):
    """A comma list of numbers: --mean in [0, 1], --std in (0, 1] (0..1 units, as torchvision
    and timm publish them), checked by `zfnet.sources.unit_stats`."""
    from zfnet.sources import unit_stats

    if value is None:
        return None
    try:
        return unit_stats(param.name or "", value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


_WEIGHTS = click.option(
    "--weights", metavar="W",
    help="The model's weights: a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) or a "
         "file (.pth, .pt, .safetensors). Default: random init.")
_LABELS = click.option(
    "--labels", type=click.Path(), metavar="FILE",
    help="The model's class names, one per output: a text file of one name a line, or a JSON "
         "list; imagenet: ImageNet's 1000, as torchvision names them (default: the weights' "
         "own, if any).")
# The preprocessing a model comes with, overridden (for a plain weights file, say).
_PREPROCESSING = (
    click.option("--mean", callback=_floats, metavar="M,M,M",
                 help="Input mean per channel in 0..1 units (default: the weights' own)."),
    click.option("--std", callback=_floats, metavar="S,S,S",
                 help="Input std per channel in 0..1 units (default: the weights' own)."),
    click.option("--resize", type=click.IntRange(1),
                 help="Shorter image side before the centre crop (default: the weights' own)."),
    click.option("--crop", type=click.IntRange(1),
                 help="Side of the centre crop the model sees (default: the weights' own)."),
)
_DEVICE = click.option("--device", default="auto", show_default=True, callback=_device,
                       metavar="DEVICE", help="auto (cuda if available), cpu, cuda, cuda:N.")
_RULE_HELP = ("How a unit is projected to pixels: the deconvnet (paper Sec. 2.1), guided "
              "backpropagation, or the gradient.")
_BATCH = click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True,
                      help="Images per forward pass (lower it where memory is short).")
_SOURCE_OPTIONS = (
    click.option("--model", "model", metavar="SOURCE",
                 help="The model: a zfnet model name (`zfnet models`), torchvision:NAME, "
                      "timm:NAME, hf:ORG/NAME or hf:DIR (a Hugging Face image classifier), "
                      "your own FILE.py:NAME (a function or class that builds it), or a zfnet "
                      "run."),
    click.option("--checkpoint", "checkpoint", type=click.Path(exists=True), metavar="RUN",
                 help="A zfnet run directory, checkpoint directory or its model.safetensors "
                      "(the same as --model RUN)."),
    _WEIGHTS,
    _LABELS,
    *_PREPROCESSING,
    _DEVICE,
    _BATCH,
)


def _options(*options):
    """One decorator applying several click options, listed in the order given."""
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def _SOURCE(command):
    """Adds the model options (`_SOURCE_OPTIONS`) to a command; it receives them as one
    `ModelOptions` argument, `model_options`, to hand to `_model_and_data`."""
    keys = [f.name for f in fields(ModelOptions)]

    @functools.wraps(command)
    def run(*args, **kwargs):
        options = ModelOptions(**{k: kwargs.pop(k) for k in keys})
        return command(*args, model_options=options, **kwargs)

    return _options(*_SOURCE_OPTIONS)(run)


@main.command("models", short_help="List the models, or the layers of one")
@click.argument("name", required=False, metavar="[SOURCE]")
@click.option("--input-size", type=click.IntRange(1), default=None,
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
                click.echo(note, err=True)
        model, title = src.model, src.name if src.kind == "run" or weights else name
        fixed = getattr(zfnet_config(model), "input_size", None)
        if fixed is not None and input_size not in (None, fixed):
            raise click.BadParameter(f"{input_size}: {src.name} takes {fixed} px inputs",
                                     param_hint="--input-size")
        size = fixed or input_size or src.preprocessing.crop
    n_params = sum(p.numel() for p in model.parameters())
    infos = list(layer_info(model, size).values())
    click.echo(f"{title}: {n_params:,} parameters, input {size} px")
    if src is not None and own_line:
        click.echo(f"preprocessing: {src.preprocessing.describe()}")
    if src is not None and src.labels:
        click.echo(f"classes: {len(src.labels)} ({', '.join(src.labels[:3])}, ...)")
    elif src is not None and weights is not None and src.meta.get("num_classes"):
        click.echo(f"classes: {src.meta['num_classes']} (not named: "
                   f"{labels_hint(src.meta['num_classes'])})")  # a plain weights file
    # Short names (zfnet's) get a column beside their module paths; other models' names are
    # their module paths.
    short = any(i.name != i.module for i in infos)
    w_name = max([8, *(len(i.name) for i in infos)])
    w_module = max([20, *(len(i.module) for i in infos)])
    w_kind = max([8, *(len(i.kind) for i in infos)])
    head = f"{'layer':<{w_name}} " + (f"{'module':<{w_module}} " if short else "")
    click.echo(f"{head}{'kind':<{w_kind}} {'maps':>6} {'size':>5} {'stride':>6} {'rf':>5}")
    # zfnet's models: no geometry means an fc layer (blank); others: not known here ("-")
    unknown = "" if zfnet_config(model) is not None else "-"
    for info in infos:
        g = info.geometry
        size_, jump, rf = (per_axis(g, "size"), per_axis(g, "jump"), per_axis(g, "rf")) \
            if g else (unknown,) * 3
        head = f"{info.name:<{w_name}} " + (f"{info.module:<{w_module}} " if short else "")
        click.echo(f"{head}{info.kind:<{w_kind}} {info.channels or '':>6} {size_:>5} {jump:>6} "
                   f"{rf:>5}")
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
    except ValueError:  # no stage with a spatial map (a vision transformer)
        defaults = []
    if defaults:
        click.echo(f"without --layer, the analyses show: {', '.join(defaults)}")


# --- train / eval (zfnet.train) ---

def _model_opts(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]):
    """Every --model-opt KEY=VALUE typed and range-checked (zfnet.models.options); a bad one is
    `Error: --model-opt KEY=VALUE: what is valid`."""
    from zfnet.train import parse_model_opt

    opts, given = {}, {}
    for text in value:
        try:
            key, typed = parse_model_opt(text)
        except ValueError as e:
            raise click.ClickException(f"--model-opt {text}: {e}") from e
        if key in opts:  # the later wins, as for any option (a recipe's overrides), said
            click.echo(f"note: --model-opt {key} is given twice ({given[key]}, then {text}): "
                       f"the later is used; for both, give one list ({key}=A,B)", err=True)
        opts[key], given[key] = typed, text
    return opts or None


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from zfnet.train.budget import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


_POSITIVE = click.FloatRange(0, min_open=True)
_FRACTION = click.FloatRange(0, 1, max_open=True)


def _workers(ctx: click.Context, param: click.Parameter, value: str | None):
    from zfnet.data.loaders import parse_workers

    if value is None:
        return None
    try:
        return parse_workers(value)
    except ValueError as e:
        raise click.BadParameter(f"{value!r} is not auto or a number >= 0") from e


_WORKERS = click.option(
    "--workers", callback=_workers, metavar="auto|N",
    help="DataLoader worker processes per process (default auto: on CUDA the CPU cores less "
         "one, shared by torchrun's processes; on a CPU 0).")


def _mining_workers(workers: int | str | None, device: object) -> int:
    """The DataLoader workers a command that mines a dataset uses: `--workers` as given (0
    included), or "auto" when it was not."""
    from zfnet.data.loaders import resolve_workers

    return resolve_workers("auto" if workers is None else workers, device)


_LOADER = click.option(
    "--loader", type=click.Choice(["auto", "cpu", "gpu", "mixed"]),
    help="Input pipeline (default auto: gpu on CUDA for imagefolder:/shards:, else cpu). cpu: "
         "workers decode and cut uint8 crops, the mean is subtracted on the device; gpu: the "
         "device decodes the JPEGs too (nvJPEG); mixed: the workers decode a share of them, the "
         "device the rest (the share measured at the start; a resumed training run keeps it).")


@main.command("train", short_help="Train a model with the paper's recipe (Sec. 3)")
@click.option("--data", metavar="SPEC",
              help="Dataset spec, e.g. synthetic, fashion-mnist, imagefolder:DIR, shards:OUT.")
@click.option("--model", metavar="SOURCE",
              help="A zfnet model (`zfnet models`), or another architecture trained "
              "from scratch by the recipe: torchvision:NAME, timm:NAME, hf:ORG/NAME or hf:DIR "
              "(its config's architecture), your own FILE.py:NAME.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory (config.json, metrics.csv, tb/, checkpoints/).")
@click.option("--epochs", type=click.IntRange(1), help="Epochs to train (default 70, the paper's).")
@click.option("--batch-size", type=click.IntRange(1),
              help="Global batch, split over processes (default 128).")
@click.option("--lr", type=_POSITIVE, help="SGD learning rate (default 1e-2).")
@click.option("--momentum", type=_FRACTION, help="SGD momentum (default 0.9).")
@click.option("--weight-decay", type=click.FloatRange(0),
              help="L2 weight decay (default 0; AlexNet used 5e-4).")
@click.option("--norm-weight-decay", type=click.FloatRange(0),
              help="Weight decay of normalisation layers' parameters, e.g. 0 (default: "
                   "--weight-decay).")
@click.option("--bias-weight-decay", type=click.FloatRange(0),
              help="Weight decay of the other layers' biases, e.g. 0 (default: --weight-decay).")
@click.option("--nesterov/--no-nesterov", default=None, help="Nesterov momentum (default off).")
@click.option("--label-smoothing", type=_FRACTION,
              help="Cross-entropy label smoothing, 0 <= e < 1 (default 0, the paper's).")
@click.option("--random-erasing", type=click.FloatRange(0, 1),
              help="Probability of blanking a random rectangle of each training crop to the "
                   "mean (default 0).")
@click.option("--ema", type=_FRACTION,
              help="Keep a moving average of the weights with this decay per step (e.g. 0.999) "
                   "and validate and save it (default 0 = off).")
@click.option("--schedule", type=click.Choice(["plateau", "step", "cosine", "linear",
                                                "onecycle", "constant"]),
              help="lr schedule (default plateau: x lr-factor when val error stops improving).")
@click.option("--patience", type=click.IntRange(0),
              help="plateau: epochs without improvement (default 3).")
@click.option("--lr-factor", type=click.FloatRange(0, 1, min_open=True),
              help="plateau/step: lr multiplier (default 0.1).")
@click.option("--step-epochs", type=click.IntRange(1),
              help="step: epochs between lr drops (default 30).")
@click.option("--warmup-epochs", type=click.FloatRange(0),
              help="cosine, linear: linear warm-up epochs (default 0).")
@click.option("--renorm/--no-renorm", default=None,
              help="Rescale conv filters with RMS > radius after each step (default on, Sec. 3).")
@click.option("--renorm-radius", type=_POSITIVE, help="Filter RMS radius (default 0.1).")
@click.option("--precondition/--no-precondition", default=None,
              help="Train conv1 as if the 0..255 inputs were divided by their std (default on; "
                   "off = the literal recipe, see docs/design.md).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1),
              help="Seed of init, data order and augmentation (default 0).")
@click.option("--device", callback=_device, metavar="DEVICE",
              help="auto (default: cuda if available), cpu, cuda, cuda:N.")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]),
              help="Mixed precision (default auto: bf16 on CUDA and on CPUs with native "
                   "bf16, else off).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="channels_last memory format (default on).")
@click.option("--compile/--no-compile", "compile", default=None,
              help="torch.compile the training step (default off: faster on a GPU, slower "
                   "on a small CPU; the first steps take the compilation).")
@_WORKERS
@_LOADER
@click.option("--time-budget", callback=_duration, metavar="DURATION",
              help="Plan the run to end within this wall time, e.g. 18m, 1h30m, 900s: after "
                   "each epoch, the speed so far sets how many steps fit (at most --epochs), a "
                   "cosine or linear schedule reaches 0 there, and the last epoch may end "
                   "part-way.")
@click.option("--val-every", type=click.IntRange(1), metavar="N",
              help="Validate after every N-th epoch and after the last (default 1; plateau's "
                   "patience then counts validations).")
@click.option("--keep-epochs", callback=_counts, metavar="N,N,...",
              help="Epochs whose checkpoints are kept (default 1,2,5,10,20,30,40,64).")
@click.option("--model-opt", "model_opts", multiple=True, metavar="KEY=VALUE",
              callback=_model_opts,
              help="Model override, repeatable: fc_width=2048, remove=conv3,conv4, init=paper, "
                   "conv_widths=512,1024,512 (conv3-5; five values: conv1-5), dropout=0.5, "
                   "batchnorm=true (booleans: true or false).")
@click.option("--data-cache", type=click.Path(file_okay=False),
              help="Where the data layer may cache the mean image.")
@click.option("--strict/--no-strict", default=None,
              help="Stop at the first broken image file with an error naming it (default: "
                   "skip it with a warning naming it once, counted per epoch in metrics.csv).")
@click.option("--resume", is_flag=True, default=None,
              help="Continue the run in --out exactly where its last checkpoint left it.")
@click.option("--progress/--quiet", default=None, help="Progress bar and epoch lines.")
@click.option("--tensorboard/--no-tensorboard", default=None, help="TensorBoard logs in tb/.")
@click.option("--weights", "start_weights", hidden=True, expose_value=True, default=None)
def train_cmd(start_weights: str | None, **opts) -> None:
    """Train a model with the paper's recipe (Sec. 3) and write a run directory.

    Exit status: 0 finished; 130 (SIGINT) / 143 (SIGTERM) interrupted after saving a
    checkpoint (continue with --resume); 1 on errors, a NaN/inf loss included (the last good
    checkpoint is kept). Many processes: `torchrun --nproc-per-node N -m zfnet.cli train ...`.
    """
    import sys

    from zfnet.train import EXIT_INTERRUPTED, NonFiniteLossError, resolve_config
    from zfnet.train import train as run_training

    if start_weights is not None:  # a user with a trained model, hoping to fine-tune it
        raise click.UsageError(
            "zfnet train trains a model from scratch by the paper's recipe and takes no "
            "--weights; to look inside your trained model, give --model and --weights to zfnet "
            "project, visualize topk, atlas, serve, eval or analyze")
    given = {k: v for k, v in opts.items() if v is not None}
    missing = [f"--{k}" for k in ("data", "model") if k not in given]
    if missing and not given.get("resume"):
        from zfnet.train.checkpoint import has_checkpoint

        if has_checkpoint(given["out"]):
            raise click.UsageError(f"{given['out']} holds a run already: --resume continues it "
                                   "(its data and model are saved), or choose another --out")
        raise click.UsageError(f"{' and '.join(missing)} required to start a run in "
                               f"{given['out']}")
    config = resolve_config(**given)
    try:
        summary = run_training(config)
    except NonFiniteLossError as e:
        raise click.ClickException(str(e)) from e
    _training_report(summary["run_dir"])
    from zfnet.train.distributed import current_rank

    if current_rank() != 0:  # the first process speaks for all; each exits as the run ended
        if summary["status"] == "interrupted":
            import signal

            sys.exit(EXIT_INTERRUPTED[signal.Signals[summary["signal"] or "SIGTERM"]])
        return
    from zfnet.train.logs import top5_words

    final = summary["final"]
    figures = (f"epoch {final['epoch']}: val top-1 error {final['val_top1_error']:.2%}, "
               f"{top5_words(final['val_top5_error'], summary.get('num_classes'))}"
               if final and final.get("val_top1_error") is not None else "")
    steps = summary.get("step_in_epoch") or 0  # a checkpoint saved that far into the next epoch
    if steps:
        into = summary.get("epochs_completed", 0) + 1
        click.echo(f"stopped {steps} step{'s' if steps != 1 else ''} into epoch {into}"
                   + (f" ({figures})" if figures else ""))
    elif figures:
        click.echo(figures)
    processes = summary.get("world_size", 1)
    where = f"{processes} processes ({summary['device']})" if processes > 1 \
        else summary["device"]
    click.echo(f"{summary['status']} in {summary['wall_time_s']:.0f} s on {where}; "
               f"run: {summary['run_dir']}; checkpoint: {summary['checkpoint']}")
    if summary["plan"]:
        from zfnet.train.budget import Plan

        plan = Plan.from_dict(summary["plan"])
        click.echo(plan.describe())
        over = summary["wall_time_s"] - plan.budget_s
        if summary["status"] == "completed" and over > max(1.0, 0.05 * plan.budget_s):
            click.echo(f"note: the run took {over:.0f} s more than its time budget (at least one "
                       "epoch runs, and the plan is made from the first epoch's pace)", err=True)
    if summary["status"] == "interrupted":
        import signal

        # under torchrun, the processes that did not get the signal stop with the one that did
        by = summary["signal"] or "a signal to another process"
        click.echo(f"interrupted by {by}: continue with --resume", err=True)
        sys.exit(EXIT_INTERRUPTED[signal.Signals[summary["signal"] or "SIGTERM"]])


def _training_report(run_dir: str) -> None:
    """After a run (finished, or stopped after saving a checkpoint): its "Training" section
    (curves from metrics.csv) written into the run and RUN/index.html rebuilt, by the first
    process only. A failure here is a warning: the run's checkpoints are already saved."""
    from zfnet.train.distributed import current_rank

    if current_rank() != 0:
        return
    try:
        from zfnet.report.training import run_page

        page = run_page(run_dir)  # None: stopped within its first epoch, nothing to plot yet
        if page is not None:
            click.echo(f"report: {page.resolve()}")
    except (Exception, KeyboardInterrupt) as e:  # the run is saved; only its page is missing
        why = "stopped by SIGINT" if isinstance(e, KeyboardInterrupt) else \
            f"{type(e).__name__}: {e}"
        click.echo(f"warning: the run is saved, but its report page was not written ({why}); "
                   f"`zfnet report {run_dir}` rebuilds it from the sections there", err=True)


@main.command("eval", short_help="Top-1/top-5 error and confusion matrix of a model")
@click.option("--checkpoint", type=click.Path(exists=True), metavar="RUN",
              help="Run directory (its last checkpoint), checkpoint directory or weights file.")
@click.option("--model", "model", metavar="SOURCE",
              help="Or any model: a zfnet model name, torchvision:NAME, timm:NAME, "
                   "hf:ORG/NAME, FILE.py:NAME (with --weights), scored with its own preprocessing; "
                   "output k is the dataset's class k (sorted folder names, as ImageNet's WNIDs; "
                   "with --labels, the output of the class's name).")
@_options(_WEIGHTS, *_PREPROCESSING)
@click.option("--labels", type=click.Path(), metavar="FILE",
              help="The model's class names, one per output (a text file of one name a line, "
                   "or a JSON list; imagenet: ImageNet's 1000): each of the dataset's class "
                   "folders is scored by the output of its name, in any order, and a dataset "
                   "of some of the classes among those.")
@click.option("--data", metavar="SPEC",
              help="Dataset spec (default: the one the model was trained on).")
@click.option("--ten-crop", is_flag=True, help="Average the softmax of the paper's 10 crops.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Write every result (per-class accuracy, confusion matrix) to this file.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Add the report section \"Evaluation\" (per-class accuracy, confusion "
                   "matrix) to this directory, usually the run itself (--out RUN), and rebuild "
                   "its index.html.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True,
              help="Images per batch in each process.")
@click.option("--device", default="auto", show_default=True, callback=_device,
              metavar="DEVICE", help="auto (cuda if available), cpu, cuda, cuda:N.")
@_WORKERS
@_LOADER
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto",
              show_default=True,
              help="Mixed precision, as in training (auto: bf16 on CUDA and on CPUs with native "
                   "bf16); off scores in float32.")
@click.option("--live-weights", is_flag=True,
              help="For a run trained with --ema: score the live weights, not their average.")
@click.option("--strict", is_flag=True,
              help="Stop at the first broken image file with an error naming it (default: "
                   "skip it with a warning and count it).")
@click.option("--compile", "compile", is_flag=True,
              help="torch.compile the model (faster on a GPU over a large split, slower on a "
                   "small CPU; off by default).")
def eval_cmd(checkpoint: str | None, model: str | None, weights: str | None,
             mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
             resize: int | None, crop: int | None, labels: str | None, data: str | None,
             ten_crop: bool, json_out: str | None, out: str | None, batch_size: int, device: str,
             workers: int | str | None,
             loader: str | None, amp: str, live_weights: bool, strict: bool,
             compile: bool) -> None:
    """Top-1 / top-5 error, per-class accuracy and confusion matrix on the validation split:
    of a zfnet run (--checkpoint), or of any model (--model, e.g. torchvision:resnet50
    --weights DEFAULT --data imagefolder:DIR, to check a pretrained model's published error).

    With --out DIR (e.g. the run: `zfnet eval --checkpoint RUN --out RUN`) the results also
    become the section "Evaluation" of DIR's report page (DIR/index.html, rebuilt).

    Many processes: `torchrun --nproc-per-node N -m zfnet.cli eval ...` scores a share of the
    split in each and adds up the counts; the first process prints and writes --json and
    --out."""
    import json
    from pathlib import Path

    from zfnet.sources import load_source
    from zfnet.train import evaluate_checkpoint, evaluate_source
    from zfnet.train.checkpoint import checkpoint_label
    from zfnet.train.distributed import processes
    from zfnet.train.logs import top5_words

    if (checkpoint is None) == (model is None):
        raise click.UsageError("give the model to score: --checkpoint RUN, or --model SOURCE "
                               "(with --weights)" if checkpoint is None else
                               "--checkpoint and --model both name the model: give one of them")
    given = [f"--{k}" for k, v in (("weights", weights), ("mean", mean), ("std", std),
                                   ("resize", resize), ("crop", crop), ("labels", labels))
             if v is not None]
    if checkpoint is not None and given:
        raise click.UsageError(f"{', '.join(given)} go with --model SOURCE; a --checkpoint run "
                               "holds its weights, preprocessing and class names")
    if model is not None and live_weights:
        raise click.UsageError("--live-weights is for a --checkpoint run trained with --ema")
    if json_out and not Path(json_out).resolve().parent.is_dir() and not (
            out and Path(json_out).resolve().parent == Path(out).resolve()):
        raise click.BadParameter(f"the folder of {json_out} does not exist (it may be --out's)",
                                 param_hint="--json")
    common = dict(batch_size=batch_size, workers=workers if workers is not None else "auto",
                  loader=loader or "auto", amp=amp, strict=strict, compile=compile,
                  progress=True)  # 10 crops of 50k images: hours on a CPU
    with processes(device) as info:
        if checkpoint is not None:
            r = evaluate_checkpoint(checkpoint, data, ten_crop, live_weights=live_weights,
                                    info=info, **common)
        else:
            source = load_source(model, weights, mean=mean, std=std, resize=resize,
                                 crop=crop, labels=labels, device=info.device)
            for note in source.meta.get("notes", []) if info.is_main else ():
                click.echo(note, err=True)
            r = evaluate_source(source, data, ten_crop, info=info,
                                by_name=True if labels is not None else None, **common)
    if not info.is_main:
        return
    crops = "10 crops" if ten_crop else "centre crop"
    skipped = f" ({_broken_files(r['skipped'])} skipped)" if r["skipped"] else ""
    label = checkpoint_label(r["epoch"], r["step_in_epoch"])
    epoch = f" ({label})" if label else ""
    classes = len(r["per_class_accuracy"])
    top5 = top5_words(r["top5_error"], classes, "top-5 error")
    matched = r.get("matched")
    named = "--labels names it" if model is not None and labels is not None else \
        "of its name among the model's class names"
    among = (f" (each class scored by the output {named}; among {matched[0]} of the "
             f"model's {matched[1]} classes)" if matched and matched[0] < matched[1] else
             f" (each class scored by the output {named})" if matched else "")
    click.echo(f"{r['model']}{epoch} on {r['data']}{among}, {r['n']} images{skipped}, "
               f"{crops}: top-1 error {r['top1_error']:.2%}, {top5}")
    labels = r.get("class_labels") or list(r["per_class_accuracy"])  # with their words
    shown = list(zip(labels, r["per_class_accuracy"].values(), strict=True))
    if classes > PER_CLASS_SHOWN:  # ImageNet's 1000 lines scrolled the errors off the screen
        scored = sorted((a, k) for k, (_, a) in enumerate(shown) if a is not None)
        click.echo(f"top-1 accuracy per class, the 5 lowest and the 5 highest of {classes} "
                   "(every class's: --json FILE, --out DIR):")
        shown = [shown[k] for k in dict.fromkeys(k for _, k in scored[:5] + scored[-5:])]
    else:
        click.echo("top-1 accuracy per class:")
    width = max(20, *(len(name) + 1 for name, _ in shown)) if shown else 20
    for name, acc in shown:
        click.echo(f"  {name:<{width}} {'-' if acc is None else f'{acc:.2%}'}")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    if json_out:
        Path(json_out).write_text(json.dumps(r, indent=1) + "\n")
        click.echo(f"wrote {json_out}")
    if out:
        from zfnet.report import build_report
        from zfnet.report.training import evaluation_section

        evaluation_section(out, r)
        click.echo(f"report: {build_report(out).resolve()}")


PER_CLASS_SHOWN = 30  # zfnet eval prints every class's accuracy up to this many classes


def _byte_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from zfnet.data.shard_writer import parse_size

    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


@main.command("shards", short_help="Write an image folder as webdataset tar shards")
@click.argument("source", metavar="imagefolder:DIR")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to create: train-*.tar, val-*.tar, their index, manifest.json.")
@click.option("--resize", type=click.IntRange(0),
              help="Shorter side the images are re-encoded at, as JPEG (default 256, the "
                   "paper's; smaller images keep their bytes); 0 = --original.")
@click.option("--original", is_flag=True, help="Store the original files' bytes.")
@click.option("--square", is_flag=True,
              help="Store only each image's centre square at --resize px: all that the paper's "
                   "preprocessing and a model's centre crops use. Every image the same size, a "
                   "quarter fewer pixels than a 4:3 photo: faster to read.")
@click.option("--raw", is_flag=True,
              help="Store those centre squares as raw pixels (uint8 .npy; --square implied): "
                   "nothing to decode when reading, for GPUs that train faster than the cores "
                   "decode; 3 x resize^2 bytes an image (192 KiB at 256 px: 255 GB for "
                   "ImageNet's training split), read at that many bytes an image.")
@click.option("--shard-size", default="1GB", show_default=True, callback=_byte_size,
              metavar="SIZE", help="Bytes per shard at most, e.g. 1GB, 500MB, 2GiB; a shard "
                                   "holds at least one image (a larger one gets its own).")
@click.option("--quality", type=click.IntRange(1, 100),
              help="JPEG quality of the re-encoded images (default 90).")
@click.option("--workers", callback=_workers, metavar="auto|N",
              help="Decoding processes (default auto: one per core, up to 8; 0: this one).")
@click.option("--progress/--quiet", default=True, help="Progress bars.")
def shards_cmd(source: str, out: str, resize: int | None, original: bool, square: bool,
               raw: bool, shard_size: int, quality: int | None, workers: int | str | None,
               progress: bool) -> None:
    """Write the image folder SOURCE (imagefolder:DIR, both splits; a flat val folder, as
    ImageNet's, with imagefolder:DIR?val_labels=FILE) as webdataset tar shards in OUT, with a
    manifest and an index; then `--data shards:OUT` reads them in every command,
    as it reads imagefolder:DIR. Broken images are skipped and named. OUT appears complete or
    not at all: a write stopped (Ctrl-C, SIGTERM, an error, a kill) keeps its finished shards in
    a hidden folder beside OUT, and the same command continues it, to the same bytes. Exit
    status: 0 written, 130 (SIGINT) / 143 (SIGTERM) interrupted."""
    import signal

    from zfnet.data.shard_writer import DEFAULT_QUALITY, DEFAULT_RESIZE, Terminated, write_shards

    if original and resize not in (None, 0):
        raise click.UsageError(f"--original and --resize {resize} both set what is stored: "
                               "give one of them")
    resize = 0 if original else (DEFAULT_RESIZE if resize is None else resize)
    if (square or raw) and not resize:
        raise click.UsageError(f"--{'raw' if raw else 'square'} stores centre squares at "
                               "--resize px: it cannot keep the original bytes (--original or "
                               "--resize 0)")
    if raw and quality is not None:
        raise click.UsageError(f"--quality {quality} is for JPEGs: --raw stores the pixels "
                               "uncompressed")
    try:
        m = write_shards(source, out, resize=resize, shard_size=shard_size,
                         quality=DEFAULT_QUALITY if quality is None else quality, square=square,
                         raw=raw, workers=None if workers == "auto" else workers,
                         progress=progress)
    except Terminated as e:  # as Ctrl-C's "interrupted (SIGINT)" and 130 (zfnet.cli._Commands)
        click.echo(f"interrupted ({e.signal})", err=True)
        sys.exit(128 + signal.Signals[e.signal])
    splits = m["splits"]
    skipped = sum(len(s["skipped"]) for s in splits.values())
    what = (f"as {resize} px centre squares" + (" of raw pixels" if raw else "")
            if square or raw else f"at {resize} px") if resize else "as the original files"
    click.echo(", ".join(f"{s['count']} {name} images in {len(s['shards'])} shard(s)"
                         for name, s in splits.items())
               + f" {what}" + (f" ({_broken_files(skipped)} skipped)" if skipped else "")
               + f": {out}; read them with --data shards:{out}")
    over = [s for split in splits.values() for s in split["shards"] if s["bytes"] > shard_size]
    if over:
        click.echo(f"note: {len(over)} shard(s) hold one image larger than --shard-size "
                   f"{shard_size} bytes (a shard holds at least one image)", err=True)


@main.command("demo", short_help="Train ZFNet-small, run every analysis, write a report")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Run directory (re-running resumes or reuses it).")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(1),
              help="Training epochs before the analyses.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1),
              help="Images per training step.")
@click.option("--lr", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate (cosine schedule).")
@click.option("--data", default="synthetic", show_default=True, metavar="SPEC",
              help="Dataset spec.")
@click.option("--model", default="zfnet_small", show_default=True, metavar="NAME",
              help="Registered model.")
@click.option("--no-analyses", is_flag=True, help="Only train, evaluate and report.")
def demo_cmd(out: str, epochs: int, batch_size: int, lr: float, data: str, model: str,
             no_analyses: bool) -> None:
    """Train ZFNet-small on the built-in data, evaluate it, run the paper's analyses and write
    an offline report page (index.html); about 2.5 minutes on 2 CPU cores, each stage timed."""
    from zfnet.demo import run_demo

    r = run_demo(out, epochs, batch_size, lr, data, model, analyses=not no_analyses,
                 log=click.echo)
    if "report" in r:
        click.echo(f"total {r['wall_time_s']:.0f} s; val top-1 error {r['val_top1_error']:.2%}")
        click.echo(f"report: {Path(r['report']).resolve()}")
        exe = sys.argv[0] if Path(sys.argv[0]).name == "zfnet" else "zfnet"  # .venv/bin/zfnet
        click.echo(f"explore it in your browser (then open http://127.0.0.1:8000/): "
                   f"{exe} serve --checkpoint {out}")


# --- looking inside a trained model: each command writes figures + a report section into --out,
# then rebuilds --out/index.html ---


def _model_and_data(options: ModelOptions, data: str | None = None, *, need_data: bool = True,
                    optional_data: bool = False, ten_crop: bool = False, strict: bool = False,
                    device=None, notes: bool = True):
    """(Source, DataBundle or None) for a command: the model `options` name, loaded once, with
    its preprocessing (the notes on how — random init, default preprocessing — go to stderr),
    and `data` (default: the run's dataset) as that model's inputs. `optional_data`: None
    instead of an error where neither `data` nor the model names a dataset. `device`: where
    the model goes instead of `options.device` (a torchrun process's own); `notes` False: not
    shown (torchrun's other processes)."""
    from zfnet.sources import load_data, load_source
    from zfnet.train.distributed import resolve_device

    if options.model is not None and options.checkpoint is not None:
        raise click.UsageError("--model and --checkpoint both name the model: give one of them")
    if options.model is None and options.checkpoint is None:
        raise click.UsageError("no model given: --model SOURCE (a zfnet model name, "
                               "torchvision:NAME, timm:NAME, hf:ORG/NAME, FILE.py:NAME, a "
                               "zfnet run) or "
                               "--checkpoint RUN")
    source = load_source(options.model or options.checkpoint, options.weights,
                         mean=options.mean, std=options.std,
                         resize=options.resize, crop=options.crop, labels=options.labels,
                         device=device or resolve_device(options.device))
    for note in source.meta.get("notes", []) if notes else ():
        click.echo(note, err=True)
    if optional_data and not data and not source.meta.get("data"):
        need_data = False
    bundle = load_data(source, data, ten_crop=ten_crop, strict=strict) if need_data else None
    if bundle is not None and source.kind != "run":
        from zfnet.analyses.classes import other_classes

        if other_classes(source.model, source.labels, getattr(bundle, "class_names", None)) \
                and notes:
            click.echo(f"{source.name} names its {len(source.labels)} outputs otherwise than "
                       f"{bundle.spec or 'the dataset'} names its classes (output 0 "
                       f"{source.labels[0]!r}, class 0 {bundle.class_names[0]!r}): the "
                       "analyses follow the class it predicts", err=True)
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
_DATA = click.option("--data", default=None, metavar="SPEC",
                     help="Dataset spec (default: the one the model was trained on).")
_OUT = click.option("--out", required=True, type=click.Path(file_okay=False),
                    help="Directory for the figures, sections and index.html.")


def _runs_only(why: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command that needs a zfnet run: --model and --weights (hidden) are told so, and why,
    instead of click's 'No such option'."""
    def refuse(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:
            command = "zfnet " + ctx.command_path.partition(" ")[2]  # zfnet, or python -m
            raise click.UsageError(f"{command} needs a zfnet run (--checkpoint RUN): "
                                   f"{why}; --{param.name} is for the commands that take any "
                                   "model")

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        for name in ("weights", "model"):
            f = click.option(f"--{name}", name, hidden=True, expose_value=False,
                             callback=refuse, is_eager=True)(f)
        return f
    return wrap


def _nonlinear_mode(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The command runs inside `zfnet.graph.nonlinear(value)`, undone when it ends."""
    from zfnet.graph import nonlinear

    ctx.with_resource(nonlinear(value))
    return value


_NONLINEAR = click.option(
    "--nonlinear", type=click.Choice(["error", "gradient"]), default="error",
    show_default=True, callback=_nonlinear_mode, expose_value=False,
    help="Where the deconvnet or guided rule meets a non-linearity other than a rectifier "
         "(GELU, SiLU, sigmoid gates, LayerNorm): stop with an error, or take its gradient "
         "there and apply the rule at the rectifiers only, as Captum does.")


def _load(checkpoint: str, data: str | None, device: str = "cpu"):
    """(model, bundle) for an analysis command, the model on `device` (auto: cuda if there)."""
    from zfnet.data import load_dataset
    from zfnet.train import load_model
    from zfnet.train.distributed import resolve_device

    model, meta = load_model(checkpoint, device=resolve_device(device))
    return model, load_dataset(data or meta["data"])


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
    from zfnet.report import build_report

    click.echo(f"report: {build_report(out).resolve()}")


@main.command("project", short_help="Project units of your own images down to pixels")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@_SOURCE
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers, comma-separated and/or repeated: names from `zfnet models SOURCE` "
                   "(conv5, layer3, features.28). Default: conv1..conv5 on zfnet's models, the "
                   "main stages of any other CNN.")
@click.option("--channel", "channels", multiple=True, callback=_counts_from_zero,
              metavar="C[,C...]", help="These maps (repeat or comma list).")
@click.option("--top", type=click.IntRange(1), default=None,
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
@click.option("--seed", type=click.Choice(["activation", "one"]), default="activation",
              show_default=True,
              help="What each unit goes down with: its activation's value (the paper's; a unit "
                   "at or below zero projects to nothing), or 1 (Captum's: the same pictures "
                   "for an active unit, and for one below zero, a class score among them, what "
                   "would raise it).")
@_NONLINEAR
@_OUT
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
    from zfnet.data import load_images
    from zfnet.models import feature_layers, score_layer

    if channels and top:
        raise click.UsageError("--channel and --top both choose the maps: give one of them")
    _class_alone(classes, {"--layer": layers, "--channel": channels, "--top": top,
                           "--position": position})
    source, _ = _model_and_data(model_options, need_data=False)
    if classes:
        layers = (score_layer(source.model),)
        channels = tuple(class_indices(classes, source.labels, source.name,
                                         source.meta.get("num_classes")))
    layers = _layers(source.model, layers) or tuple(
        feature_layers(source.model, source.preprocessing.crop))
    data = load_images(images[0] if len(images) == 1 else list(images), source.preprocessing)
    names = [str(p) for p in getattr(data, "paths", [])] or None
    # the last layer's units are the classes the weights name (source.labels)
    last = score_layer(source.model) if source.labels else None
    results = [r for layer in layers for r in project_units(
        source.model, data, layer, channels=channels, top=top, rule=rule, position=position,
        pixel_scale=source.preprocessing.pixel_scale(), batch_size=model_options.batch_size,
        names=names, unit_names=source.labels if layer == last else None, seed=seed)]
    index = write_units(results, out, rule, source.name, seed)
    for unit, _, _ in results:
        fires = ("" if unit.active else " (seeded with 1)" if seed == "one" else
                 " (not active: this seed projects it to nothing; --seed one shows what would "
                 "raise it)")
        click.echo(f"{unit.name}: {unit.what}, activation {unit.activation:.3g}{fires} -> "
                   f"{Path(out) / unit.file}")
    click.echo(f"wrote {len(results)} projection{'s' * (len(results) != 1)} and {index}")


@main.command("predict", short_help="Each image's most probable classes")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@_SOURCE
@click.option("--top", default=5, show_default=True, type=click.IntRange(1),
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
def predict_cmd(images: tuple[str, ...], model_options: ModelOptions, top: int,
                ten_crop: bool, out: str | None, amp: str, workers: int | str | None) -> None:
    """The TOP most probable classes of each IMAGE, by the model's softmax, named by its class
    names (the weights' own or --labels).

    IMAGE: image files, a folder of images, or a dataset spec (images:DIR, synthetic, ...).
    """
    from zfnet.data import load_images
    from zfnet.predict import check_output, predict, write_predictions
    from zfnet.progress import progress_bar
    from zfnet.sources import labels_hint
    from zfnet.train.distributed import resolve_device
    from zfnet.train.recipe import amp_dtype_for

    device = resolve_device(model_options.device)
    amp_dtype = amp_dtype_for(amp, device)  # before the model is loaded, as the file is
    if out is not None:
        check_output(out)
    source, _ = _model_and_data(model_options, need_data=False)
    data = load_images(images[0] if len(images) == 1 else list(images), source.preprocessing,
                       ten_crop=ten_crop)
    names = [str(p) for p in getattr(data, "paths", [])] or None
    with progress_bar(total=len(data), desc="images", unit="img") as bar:
        found, unreadable = predict(
            source.model, data, top=top, labels=source.labels, names=names,
            batch_size=model_options.batch_size, workers=_mining_workers(workers, device),
            progress=bar.update, amp_dtype=amp_dtype)
    for p in found:
        click.echo(f"{p.image}: {p.words()}")
    if not source.labels:
        click.echo(f"the classes have no names ({labels_hint(source.meta.get('num_classes'))})",
                   err=True)
    if unreadable:
        click.echo(f"not read ({len(unreadable)}): {', '.join(unreadable)}", err=True)
    if not found:
        raise click.ClickException("none of the images could be read (see the warnings above)")
    if out is not None:
        crops = "the 10 crops" if ten_crop else "the centre crop"
        precision = str(amp_dtype or next(source.model.parameters()).dtype).split(".")[-1]
        path = write_predictions(found, out, {"source": source.name, "crops": crops,
                                              "precision": precision, "not_read": unreadable})
        click.echo(f"wrote {len(found)} image{'s' * (len(found) != 1)}' predictions to {path}")


@main.group("visualize", short_help="Deconvnet visualisations (Sec. 2.1, Fig. 2)")
def visualize() -> None:
    """Deconvnet visualisations (paper Sec. 2.1)."""


@visualize.command("topk", short_help="Fig. 2: top-k activations projected beside image patches")
@_SOURCE
@_DATA
@_OUT
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers to show, comma-separated and/or repeated (default: conv1..conv5 "
                   "on zfnet's models, the main stages of any other CNN).")
@click.option("--layers", "layers_alias", multiple=True, callback=_names, hidden=True)
@click.option("--k", default=9, show_default=True, type=click.IntRange(1),
              help="Strongest activations kept per map (the paper's 9).")
@click.option("--maps-per-layer", default=16, show_default=True, type=click.IntRange(1),
              help="Maps shown per layer above conv1 (conv1: every map).")
@click.option("--map-rule", type=click.Choice(["strongest", "spaced"]), default="strongest",
              show_default=True,
              help="Which maps above conv1 are shown: the strongest over the images, or "
                   "maps spaced evenly through the layer.")
@click.option("--rule", type=click.Choice(["deconvnet", "guided", "gradient"]),
              default="deconvnet", show_default=True, help=_RULE_HELP)
@_NONLINEAR
@click.option("--images", default=None, type=click.IntRange(1),
              help="Mine only the first N images of the val split (of images:DIR, the first "
                   "N of its images; default: all).")
@click.option("--map", "maps", multiple=True, callback=_counts_from_zero, metavar="M[,M...]",
              help="These maps of each layer (repeat or comma list), instead of "
                   "--maps-per-layer chosen by --map-rule.")
@click.option("--class", "classes", multiple=True, metavar="NAME",
              help="The images that score highest for this class (the model's last layer), by "
                   "its name as the weights or --labels give it, or its number; repeat for "
                   "more.")
@_WORKERS
def topk_cmd(model_options: ModelOptions, data: str | None, out: str,
             layers: tuple[str, ...] | None, layers_alias: tuple[str, ...] | None, k: int,
             maps_per_layer: int, map_rule: str, rule: str, images: int | None,
             maps: tuple[int, ...] | None, classes: tuple[str, ...],
             workers: int | str | None) -> None:
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
        pipeline.gallery(source.model, bundle, out, k=k, n_images=images or len(bundle.val),
                         n_maps=maps_per_layer, layers=list(names) if names else None,
                         maps=maps,
                         rule=rule, map_rule=map_rule, batch_size=model_options.batch_size,
                         distributed=info.enabled,
                         num_workers=_mining_workers(workers, info.device),
                         class_names=as_shown(source.labels, bundle) or None,
                         progress=info.is_main)  # mining a folder takes a while
    if info.is_main:
        _finish(out)


@main.command("atlas", short_help="A static site: each unit's top-k projections and evolution")
@_SOURCE
@_DATA
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for the site: new, empty, or an earlier atlas to replace.")
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers, comma-separated and/or repeated (default: conv1..conv5 on zfnet's "
                   "models, the main stages of any other CNN).")
@click.option("--k", default=9, show_default=True, type=click.IntRange(1),
              help="Strongest activations kept per map (the paper's 9).")
@click.option("--maps-per-layer", default=None, type=click.IntRange(1),
              help="The N strongest maps of each layer (default: every map).")
@click.option("--images", default=None, type=click.IntRange(1),
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
def atlas_cmd(model_options: ModelOptions, data: str | None, out: str,
              layers: tuple[str, ...] | None, k: int, maps_per_layer: int | None,
              images: int | None, rule: str, evolution: bool, figures: str,
              workers: int | str | None) -> None:
    """A static site of the model's units (open OUT/index.html from disk or any host): per
    layer a page of thumbnails, per unit its top-k projections beside their image patches
    (Fig. 2) and, for a zfnet run with kept epochs, its evolution (Fig. 4). A mining that
    stops is kept beside OUT, and the same command continues it."""
    from zfnet.data.words import as_shown
    from zfnet.explorer.atlas import write_atlas
    from zfnet.models import score_layer
    from zfnet.progress import counted_progress
    from zfnet.train import CheckpointModels, run_checkpoints
    from zfnet.train.distributed import resolve_device

    source, bundle = _model_and_data(model_options, data)
    names = _layers(source.model, layers)
    kept = run_checkpoints(source.meta["checkpoint"]) \
        if evolution and source.kind == "run" else []
    if evolution and source.kind == "run" and len(kept) < 2:
        click.echo(f"no evolution: the run keeps {len(kept)} checkpoint(s) up to this epoch "
                   "(train with --keep-epochs)", err=True)
    with counted_progress(desc="atlas", unit="step") as progress:
        index = write_atlas(
            source.model, bundle, out, layers=names, k=k, maps_per_layer=maps_per_layer,
            rule=rule, n_images=images, model_name=source.name,
            evolution=CheckpointModels(kept, resolve_device(model_options.device))
            if len(kept) > 1 else None,
            batch_size=model_options.batch_size, progress=progress, figures=figures,
            num_workers=_mining_workers(workers, resolve_device(model_options.device)),
            unit_names={score_layer(source.model): as_shown(source.labels, bundle)}
            if source.labels else None)
    click.echo(f"atlas: {index.resolve()}")
    run_dir = Path(out).parent
    if Path(out).name == "atlas" and (run_dir / "sections").is_dir():  # RUN/atlas: the run's
        from zfnet.report import build_report  # report page links to it from now on

        try:
            click.echo(f"report: {build_report(run_dir).resolve()}")
        except ValueError:  # no section there after all: no page to link
            pass


@main.group("analyze", short_help="The paper's analyses (Figs. 4-8, Tables 1, 4, 5, 7)")
def analyze() -> None:
    """The paper's analyses (Figs. 4-8, Tables 1, 4, 5, 7) and a sanity check."""


@analyze.command("evolution", short_help="Fig. 4: top activations projected at each kept epoch")
@_runs_only("Fig. 4 compares the checkpoints it kept while training")
@click.option("--checkpoint", "run_dir", type=click.Path(exists=True), metavar="RUN",
              help="Training run directory with kept checkpoints.  [required]")
@click.option("--run", "run_alias", type=click.Path(exists=True), hidden=True)
@_DATA
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Report directory (default: the run directory).")
@click.option("--images", default=1000, show_default=True, type=click.IntRange(1),
              help="Training images mined at each epoch (centre crops).")
@click.option("--maps", default=6, show_default=True, type=click.IntRange(1),
              help="Feature maps shown per layer: the last epoch's strongest.")
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers whose maps are followed, comma-separated and/or repeated: names "
                   "from `zfnet models RUN`. Default: conv1..conv5 on zfnet's models, the "
                   "main stages of any other CNN.")
@click.option("--rule", type=click.Choice(["deconvnet", "guided", "gradient"]),
              default="deconvnet", show_default=True, help=_RULE_HELP)
@_NONLINEAR
@_DEVICE
@_BATCH
def evolution_cmd(run_dir: str | None, run_alias: str | None, data: str | None,
                  out: str | None, images: int, maps: int, layers: tuple[str, ...] | None,
                  rule: str, device: str, batch_size: int) -> None:
    """Fig. 4: strongest activations projected at every kept epoch, side by side."""
    from zfnet import pipeline
    from zfnet.train import list_checkpoints

    run_dir = run_dir or run_alias
    if run_dir is None:
        raise click.MissingParameter(param_hint="'--checkpoint'", param_type="option")
    if Path(run_dir).is_file():  # a weights file: one state of the model, not its training
        raise click.BadParameter(
            f"{run_dir} is a file; Fig. 4 compares the checkpoints a training run kept: give "
            "the run directory of `zfnet train` (its --out)", param_hint="--checkpoint")
    kept = list_checkpoints(run_dir)
    if not kept:
        raise click.BadParameter(
            f"{run_dir} holds no kept checkpoints (checkpoints/epoch_NNNN/): give a run "
            "directory of `zfnet train` (--keep-epochs says which epochs it keeps)",
            param_hint="--checkpoint")
    last, bundle = _load(str(kept[-1][1]), data)
    layers = _layers(last, layers)
    if len(kept) < 2:
        raise click.BadParameter(
            f"{run_dir} keeps 1 checkpoint (epoch {kept[0][0]}); evolution compares 2 or more "
            "(train with --keep-epochs N,N,... naming the epochs to keep)",
            param_hint="--checkpoint")
    pipeline.evolution(run_dir, bundle, out, n_images=images, n_maps=maps,
                       batch_size=batch_size, device=device, rule=rule, layers=layers)
    _finish(out or run_dir)


@analyze.command("filters", short_help="Fig. 6: filters and their diagnostics, models side by side")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(exists=True),
              metavar="RUN", help="A zfnet run; repeat to compare runs side by side.")
@click.option("--model", "sources", multiple=True, metavar="SOURCE",
              help="Or any model: a zfnet model name, torchvision:NAME, timm:NAME, "
                   "hf:ORG/NAME, FILE.py:NAME; repeat to compare, each with its own "
                   "--weights in order.")
@click.option("--weights", "weights", multiple=True, metavar="W",
              help="Each --model's weights, in order: a torchvision weights name (DEFAULT, "
                   "IMAGENET1K_V1, ...) or a file (.pth, .pt, .safetensors). Default: random "
                   "init.")
@_options(*_PREPROCESSING)
@_DATA
@_OUT
def filters_cmd(checkpoints: tuple[str, ...], sources: tuple[str, ...],
                weights: tuple[str, ...], mean: tuple[float, ...] | None,
                std: tuple[float, ...] | None, resize: int | None, crop: int | None,
                data: str | None, out: str) -> None:
    """Fig. 6: the first two convolutions' filters and their diagnostics (dominance, dead,
    high frequency), models side by side."""
    from zfnet import pipeline
    from zfnet.report.sections import computed_on

    if not checkpoints and not sources:
        raise click.UsageError("no model given: --checkpoint RUN or --model SOURCE (repeat "
                               "either to compare)")
    given = [f"--{k}" for k, v in (("weights", weights or None), ("mean", mean), ("std", std),
                                   ("resize", resize), ("crop", crop)) if v is not None]
    if not sources and given:
        raise click.UsageError(f"{', '.join(given)} go with --model SOURCE; a --checkpoint run "
                               "holds its weights and preprocessing")
    if weights and len(weights) != len(sources):
        raise click.UsageError(f"{len(weights)} --weights for {len(sources)} --model: give "
                               "one --weights per --model, in the same order (or none: random "
                               "init)")
    models, bundle, src = {}, None, None
    short = [Path(c).name for c in checkpoints]
    for c, name in zip(checkpoints, short, strict=True):
        model, b = _load(c, data)
        bundle = bundle or b
        models[name if short.count(name) == 1 else c] = model  # runs/a/last, runs/b/last
    for k, source in enumerate(sources):
        w = weights[k] if weights else None
        options = ModelOptions(source, None, w, None, mean, std, resize, crop, "cpu", 64)
        src, b = _model_and_data(options, data, need_data=bundle is None and data is not None)
        bundle = bundle or b
        label = src.name if sum(s == source for s in sources) == 1 else f"{src.name} ({w})"
        if label in models:
            raise click.UsageError(f"--model {source} is given twice with the same weights")
        models[label] = src.model
    size = None if bundle is not None or src is None else src.preprocessing.crop
    ctx = click.get_current_context()  # the section names every model, not the last loaded
    ctx.with_resource(computed_on(", ".join(models) + (
        f", data {bundle.spec}" if bundle is not None and bundle.spec else "")))
    pipeline.filters(models, bundle, out, input_size=size)
    _finish(out)


@analyze.command("invariance", short_help="Fig. 5: features under translation, scaling, rotation")
@_SOURCE
@_DATA
@_OUT
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers whose features are compared, comma-separated and/or repeated: names "
                   "from `zfnet models SOURCE`. Default: the paper's layers 1 and 7 (zfnet's "
                   "norm1 and relu7; any other CNN's first stage and the vector its classifier "
                   "reads).")
@click.option("--images", default=5, show_default=True, type=click.IntRange(1),
              help="Images of the dataset transformed (its val split, one per class while "
                   "classes last), beside the 5 built-in photos.")
def invariance_cmd(model_options: ModelOptions, data: str | None, out: str,
                   layers: tuple[str, ...] | None, images: int) -> None:
    """Fig. 5: translation, scaling, rotation of 5 photos and 5 dataset images (a model
    without a dataset of its own and no --data: the photos alone)."""
    from zfnet import pipeline

    source, bundle = _model_and_data(model_options, data, optional_data=True)
    chosen = _layers(source.model, layers)
    if bundle is None:
        click.echo("no --data: the 5 built-in photos only (--data SPEC adds "
                   f"{images} of its images, e.g. images:DIR)", err=True)
    r = pipeline.invariance(source.model, bundle, out, n_dataset_images=images, layers=chosen,
                            preprocessing=source.preprocessing)
    images = {"invariance_photos": "built-in photos",
              "invariance_dataset": f"images of {bundle and bundle.spec or 'the dataset'}"}
    for key, kinds in r.items():
        for kind, d in kinds.items():  # distances relative to the untransformed features
            click.echo(f"{images.get(key, key)}, {kind}: mean relative distance "
                       + ", ".join(f"{k} {v:.3f}" for k, v in d.items()))
    _finish(out)


@analyze.command("occlusion", short_help="Fig. 7: occlusion sensitivity maps and pointing game")
@_SOURCE
@_DATA
@_OUT
@click.option("--images", default=4, show_default=True, type=click.IntRange(1),
              help="Val images in the figure, one per class while classes last.")
@click.option("--pointing", default=100, show_default=True, type=click.IntRange(0),
              help="Images for the pointing game (datasets with object masks).")
@click.option("--size", default=None, type=click.IntRange(1),
              help="Occluder side in px (default 1/7 of the image side: 32 at 224 px).")
@click.option("--stride", default=None, type=click.IntRange(1),
              help="Occluder step in px (default a quarter of --size: 8 at 224 px).")
@click.option("--layer", default=None, metavar="NAME",
              help="Layer of maps (b)/(c) (default: the last spatial layer, conv5 on zfnet's).")
@click.option("--class", "class_name", default=None, metavar="NAME",
              help="The class whose probability (a) and (d) follow on every image, by its name "
                   "as the weights or --labels give it, or its number (default: the image's "
                   "label where the model's classes are the dataset's, else the class it "
                   "predicts).")
@click.option("--method", type=click.Choice(["auto", "incremental", "full"]), default="auto",
              show_default=True,
              help="incremental: recompute only what each occluder position changes (chain "
                   "models); full: the whole model per position; auto: incremental where it "
                   "applies.")
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default="float32",
              show_default=True,
              help="bfloat16: the full method's forward passes (any network that is not a "
                   "chain) under bf16 autocast: ~1.9x faster on a CPU with AMX (resnet18), a "
                   "trained resnet18's maps within ~2% of float32's range; incremental "
                   "inference (chains) stays float32.")
@_NONLINEAR
def occlusion_cmd(model_options: ModelOptions, data: str | None, out: str, images: int,
                  pointing: int, size: int | None, stride: int | None, layer: str | None,
                  class_name: str | None, method: str, precision: str) -> None:
    """Fig. 7: a grey square slid over the image; activation, projection, p(class), label."""
    from zfnet.analyses.classes import class_indices
    from zfnet.analyses.occlusion import metric_words, occlusion_report
    from zfnet.pipeline import check_fits

    source, bundle = _model_and_data(model_options, data)
    check_fits(source.model, bundle)
    layer = _layers(source.model, (layer,))[0] if layer else None
    target = None if class_name is None else class_indices(
        [class_name], source.labels, source.name, source.meta.get("num_classes"))[0]
    _say_occlusion_work(bundle, images, size, stride)
    from zfnet.progress import counted_progress

    with counted_progress(desc="occluded images", unit="img") as scored:  # a ResNet-50: minutes
        r = occlusion_report(source.model, bundle, out, n_images=images, n_pointing=pointing,
                             size=size, stride=stride, layer=layer, method=method,
                             precision=precision, batch_size=model_options.batch_size,
                             class_names=source.labels, progress=scored, target_class=target)
    click.echo("; ".join(f"{k}: {v}" for k, v in metric_words(r).items()))
    _finish(out)


def _say_occlusion_work(bundle, images: int, size: int | None, stride: int | None) -> None:  # noqa: ANN001
    """How many occluded images the figure's images make (a stride of a quarter of the
    occluder gives hundreds each), and what makes them fewer: said before they are scored."""
    from zfnet.analyses.occlusion import occluder_plan

    side = bundle.input_size
    try:
        size, stride, tops, lefts = occluder_plan(side, side, size, stride)
    except ValueError:
        return  # a bad geometry: the analysis says what is wrong
    n = min(images, len(bundle.val))
    per = len(tops) * len(lefts)
    click.echo(f"occlusion: {n} image{'s' * (n != 1)} x {per} occluder positions "
               f"({size} px, stride {stride} px) = {n * per:,} occluded images to score; a "
               "larger --stride or fewer --images make fewer", err=True)


@analyze.command("correspondence", short_help="Fig. 8 / Table 1: part correspondence across images")
@_SOURCE
@_DATA
@_OUT
@click.option("--parts-file", type=click.Path(), metavar="FILE",
              help="The parts marked on your images (--data images:DIR): a box or an outline "
                   'per part per image, JSON {"dog1.jpg": {"left eye": [left, top, right, '
                   'bottom], "nose": [[x, y], [x, y], [x, y], ...]}, ...} or CSV lines image,'
                   "part,left,top,right,bottom, in the image's pixels; or COCO's JSON as "
                   "annotation tools export it (CVAT, Label Studio, VIA), a part a category, "
                   "outlined by its polygon segmentation or boxed by its bbox. Default: the "
                   "faces of the built-in 'synthetic' dataset.")
@click.option("--class", "class_name", default=None, metavar="NAME",
              help="Without --parts-file: the class whose images are masked, of a dataset with "
                   "part masks (default: face).")
@click.option("--parts", default=None, callback=_names, metavar="PART[,PART...]",
              help="Comma-separated parts masked in every image (default: every part the parts "
                   "file marks; synthetic's faces: eye_left,eye_right,mouth).")
@click.option("--images", default=None, type=click.IntRange(2),
              help="Images compared pairwise: the first N (default: every image the parts file "
                   "marks; of synthetic's faces, the paper's 5).")
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers compared (default: the paper's layers 5 and 7: pool5 and relu7 on "
                   "zfnet's models, the last stage and the classifier's input on any other CNN).")
@click.option("--draws", default=20, show_default=True, type=click.IntRange(1),
              help="Random-region draws for the control.")
def correspondence_cmd(model_options: ModelOptions, data: str | None, out: str,
                       parts_file: str | None, class_name: str | None,
                       parts: tuple[str, ...] | None, images: int | None,
                       layers: tuple[str, ...] | None, draws: int) -> None:
    """Fig. 8 / Table 1: sign consistency of feature changes when the same part is masked,
    on the parts you mark on your images (--parts-file) or on synthetic's faces."""
    from zfnet import pipeline
    from zfnet.data.parts import read_parts

    if parts_file is not None:
        if class_name is not None:
            raise click.UsageError("--class picks the images of a dataset with part masks; with "
                                   "--parts-file, the file names the images")
        if data is None:
            raise click.UsageError("--parts-file marks images of a folder: give it as --data "
                                   "images:DIR")
        read_parts(parts_file)  # checked before the model is loaded
    source, bundle = _model_and_data(model_options, data)
    rows = pipeline.correspondence(
        source.model, bundle, out, class_name.strip() if class_name else None, images, parts,
        draws, parts_file=parts_file, layers=_layers(source.model, layers))
    width = max(len(r.part) for r in rows)
    for r in rows:
        click.echo(f"{r.part:<{width}} " + "  ".join(f"{k} {v:.4f}" for k, v in r.delta.items()))
    _finish(out)


@analyze.command("probes", short_help="Table 7: linear classifier on each layer's features")
@_SOURCE
@_DATA
@_OUT
@click.option("--per-class", default=20, show_default=True, type=click.IntRange(1),
              help="Training images per class for each layer's linear classifier.")
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers probed, comma-separated and/or repeated: names from `zfnet models "
                   "SOURCE`. Default: the paper's layers 1-7 on zfnet's models; any other "
                   "CNN's main stages and the vector its classifier reads.")
def probes_cmd(model_options: ModelOptions, data: str | None, out: str, per_class: int,
               layers: tuple[str, ...] | None) -> None:
    """Table 7: a linear classifier on each layer's features, N training images per class of a
    labelled dataset."""
    from zfnet import pipeline
    from zfnet.sources import data_preprocessing

    source, _ = _model_and_data(model_options, need_data=False)
    spec = data or source.meta.get("data")
    if not spec:
        raise click.UsageError(f"no dataset given for {source.name}: --data SPEC with labels, "
                               "e.g. imagefolder:DIR, synthetic")
    rows = pipeline.probes(source.model, spec, out, per_class,
                           preprocessing=data_preprocessing(source, spec),
                           batch_size=model_options.batch_size, progress=True,
                           layers=_layers(source.model, layers))
    width = max(len(r.layer) for r in rows)
    for r in rows:
        click.echo(f"{r.layer:<{width}} "
                   + "  ".join(f"{k} {v:.1%}" for k, v in r.accuracy.items()))
    _finish(out)


@analyze.command("transfer", short_help="Tables 4-5: fixed features vs training from scratch")
@_options(*(o for o in _SOURCE_OPTIONS if o is not _BATCH))
@click.option("--data", "data", required=True, metavar="SPEC",
              help="Target dataset spec (another dataset, or other classes: `classes=...`); "
                   "a run's grey/RGB and size are adapted to its input, any other model "
                   "gets its own preprocessing.")
@_OUT
@click.option("--shots", default="1,5,20", show_default=True, metavar="N,N,...",
              callback=_counts, help="Training images per class of the target.")
@click.option("--test", "n_test", default=1000, show_default=True, type=click.IntRange(1),
              help="Target val images scored.")
@click.option("--scratch-steps", default=300, show_default=True, type=click.IntRange(1),
              help="SGD steps of each from-scratch run.")
@click.option("--layer", default=None, metavar="NAME",
              help="Layers up to this one are kept (default: relu7, layers 1-7 as the paper, "
                   "on zfnet's models; another architecture's classifier input, e.g. a "
                   "ResNet's avgpool).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Batch of the from-scratch runs.")
def transfer_cmd(data: str, out: str, shots: tuple[int, ...], n_test: int,
                 scratch_steps: int, layer: str, batch_size: int, **model: Any) -> None:
    """Tables 4-5: keep layers 1-7 (a pretrained model's features), train a new softmax on N
    images per class of the target, against the same architecture trained from scratch on
    those images."""
    from zfnet import pipeline
    from zfnet.sources import data_preprocessing

    options = ModelOptions(**model, batch_size=batch_size)
    source, _ = _model_and_data(options, need_data=False)
    if layer is not None:
        (layer,) = _layers(source.model, (layer,))
    # None for a run on a named dataset: the paper's inputs, adapted to the run's
    prep = data_preprocessing(source, data)

    def row(r: Any) -> None:
        fewer = f" ({r.found} in the data)" if r.found else ""
        click.echo(f"{r.per_class:>4}/class{fewer}  fixed {r.fixed:.1%}  "
                   f"scratch {r.scratch_words()}  ({r.scratch_seconds:.0f} s from scratch)")

    pipeline.transfer(source.model, source.meta, data, out, shots, n_test, scratch_steps,
                      layer, batch_size=batch_size, device=options.device,
                      preprocessing=prep, name=source.name, on_row=row,
                      progress=True)  # each run from scratch: minutes, a bar
    _finish(out)


@analyze.command("randomization", short_help="Sanity checks: model and data randomisation")
@_SOURCE
@_DATA
@_OUT
@click.option("--images", default=None, type=click.IntRange(1),
              help="Val images whose maps are compared; the scores are their mean "
                   "(default 16, or all where the split has fewer).")
@click.option("--layer", default=None, metavar="NAME",
              help="Layer of the seed units (default: the last spatial layer, conv5 on "
                   "zfnet's).")
@click.option("--mode", type=click.Choice(["cascading", "independent", "labels"]),
              default="cascading", show_default=True,
              help="Re-initialise the layers from the top down, one more at each step, or "
                   "each layer alone, the others keeping their trained weights; labels: train "
                   "a copy of a zfnet run on its images with permuted labels and compare each "
                   "model's map of its predicted class.")
@click.option("--steps", type=click.Choice(["block", "module"]), default="block",
              show_default=True,
              help="What one step re-initialises: a block of the network (a ResNet's layer1 "
                   "... layer4, an Inception block; each layer of zfnet's models), or each "
                   "module with parameters (convolution, batch norm, ...) on its own.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="--mode labels: epochs of the copy (default: the run's); memorising "
                   "random labels takes longer than learning true ones.")
@click.option("--random-run", type=click.Path(file_okay=False), default=None,
              help="--mode labels: the copy's run directory (default OUT/random-labels), "
                   "continued where it holds a checkpoint.")
@click.option("--reference", is_flag=True,
              help="--mode labels: also train the run again on the true labels from the next "
                   "seed (OUT/reference) and compare it the same way: how alike two runs' "
                   "maps are anyway.")
@_NONLINEAR
def randomization_cmd(model_options: ModelOptions, data: str | None, out: str,
                      images: int | None,
                      layer: str | None, mode: str, steps: str, epochs: int | None,
                      random_run: str | None, reference: bool) -> None:
    """Sanity checks (Adebayo et al. 2018): do the maps change when the model is randomised
    (--mode cascading, independent), or when it learned random labels (--mode labels)?"""
    from zfnet import pipeline

    if mode == "labels":
        _data_randomization(model_options, data, out, images or LABELS_IMAGES, layer, steps,
                            epochs, random_run, reference)
        return
    if epochs is not None or random_run is not None or reference:
        raise click.UsageError("--epochs, --random-run and --reference go with --mode labels")
    source, bundle = _model_and_data(model_options, data)
    layer = _layers(source.model, (layer,))[0] if layer else None
    result = pipeline.randomization(source.model, bundle, out, images, layer, mode, steps)
    from zfnet.analyses.sanity import randomization_words

    for line in randomization_words(result):
        click.echo(line)
    _finish(out)


LABELS_IMAGES = 16  # --mode labels' default --images: two passes a rule for all of them


def _data_randomization(model_options: ModelOptions, data: str | None, out: str, images: int,
                        layer: str | None, steps: str, epochs: int | None,
                        random_run: str | None, reference: bool) -> None:
    """`analyze randomization --mode labels`: its options checked, the copy trained, the
    section written."""
    import signal

    from zfnet import pipeline
    from zfnet.train import EXIT_INTERRUPTED

    source, _ = _model_and_data(model_options, need_data=False)  # first: what it needs most
    if source.kind != "run":
        raise click.UsageError(
            f"--mode labels trains the model again on permuted labels: it needs a zfnet run "
            f"(--checkpoint RUN), not {source.name}")
    refused = [name for name, given in (
        ("--data", data is not None), ("--layer", layer is not None),
        ("--steps module", steps != "block"),
        ("--mean/--std/--resize/--crop", any(v is not None for v in (
            model_options.mean, model_options.std, model_options.resize, model_options.crop))),
    ) if given]
    if refused:
        raise click.UsageError(
            f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to "
            "--mode labels: the copy is trained on "
            "the run's own data with its own recipe, and each model's map is seeded at its "
            "predicted class")
    result, summary = pipeline.data_randomization(source.model, source.meta, out, images,
                                                  epochs, random_run, reference,
                                                  device=model_options.device)
    if result is None:
        by = summary["signal"] or "a signal"
        click.echo(f"interrupted by {by}: the same command continues the copy's training",
                   err=True)
        sys.exit(EXIT_INTERRUPTED[signal.Signals[summary["signal"] or "SIGTERM"]])
    acc = result.accuracy
    click.echo(f"copy trained on permuted labels: {acc['random_train']:.1%} of its training "
               f"labels fitted (the model: {acc['train']:.1%} of the true ones)")
    for rule, score in result.scores.items():
        against = (f"  (reference: {result.reference[rule]['spearman']:.3f})"
                   if result.reference else "")
        click.echo(f"{rule:<10} rank correlation {score['spearman']:.3f}  "
                   f"SSIM {score['ssim']:.3f}{against}")
    _finish(out)


@main.command("study", short_help="Table 3: train model variants with one budget, compare")
@click.option("--data", required=True, metavar="SPEC", help="Dataset spec.")
@click.option("--models", default="zfnet_small", show_default=True, callback=_names,
              metavar="NAME[,NAME...]",
              help="Comma-separated base models: zfnet's (every variant), or any architecture "
                   "`zfnet train` takes (its baseline).")
@click.option("--variants", callback=_names, metavar="NAME[,NAME...]",
              help="Comma-separated Table 3 variants, of every model (default: baseline, fc_half, "
                   "fc_double, wide345, no_conv34, no_fc7, no_fc67 of zfnet's models, the "
                   "baseline of any other).")
@click.option("--epochs", required=True, type=click.IntRange(1),
              help="Epochs each variant trains (the same for all).")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1),
              help="Images per step, every variant.")
@click.option("--lr", default=0.01, show_default=True, type=_POSITIVE,
              help="Peak learning rate, every variant.")
@click.option("--schedule", default="cosine", show_default=True,
              type=click.Choice(["plateau", "step", "cosine", "linear", "onecycle", "constant"]),
              help="Learning-rate schedule, every variant (as `zfnet train --schedule`).")
@_OUT
def study_cmd(data: str, models: tuple[str, ...], variants: tuple[str, ...] | None, epochs: int,
              batch_size: int, lr: float, schedule: str, out: str) -> None:
    """Table 3: train each (model, variant) on DATA for the same epochs and report train/val
    top-1 and val top-5 error side by side, with the paper's numbers where it has them."""
    import signal
    import sys

    from zfnet.study import StudyInterrupted, study, study_section
    from zfnet.train import EXIT_INTERRUPTED, NonFiniteLossError

    try:
        rows = study(data, models, variants, out, epochs, batch_size=batch_size, lr=lr,
                     schedule=schedule, progress=False)
    except StudyInterrupted as e:
        click.echo(f"{e}: the same command continues the study (finished runs are kept)",
                   err=True)
        sys.exit(EXIT_INTERRUPTED[signal.Signals[e.signal or "SIGTERM"]])
    except NonFiniteLossError as e:
        raise click.ClickException(f"{e}; a lower --lr, in another --out, trains every "
                                   "variant with it") from e
    study_section(out, rows, data, epochs)
    click.echo(f"{'model':<14} {'variant':<18} error: train top-1  val top-1  val top-5")
    for r in rows:
        top5 = "—" if r["val_top5_error"] is None else f"{r['val_top5_error']:.1%}"
        click.echo(f"{r['model']:<14} {r['variant']:<18}        {r['train_top1_error']:>11.1%}"
                   f"  {r['val_top1_error']:>9.1%}  {top5:>9}")
    if any(r["val_top5_error"] is None for r in rows):
        click.echo("val top-5: — with 5 classes or fewer (every class is among the top 5)")
    _finish(out)


@main.command("serve", short_help="The explorer: a web page to look inside a network")
@_SOURCE
@click.option("--data", default=None, metavar="SPEC",
              help="Dataset spec whose images the page shows and mines (default: a zfnet run's "
                   "own; for other models `sample-photos`, the 6 built-in ones).")
@click.option("--host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on (0.0.0.0: every interface; the page has no login).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0: any free one).")
@click.option("--images", default=None, type=click.IntRange(1),
              help="Mine the top-k over the first N dataset images (default: all).")
@click.option("--k", default=9, show_default=True, type=click.IntRange(1),
              help="Strongest activations kept per map (the paper's 9).")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False),
              help="Where the top-k index is kept (default: ~/.cache/zfnet/explorer).")
@click.option("--max-upload-mb", default=20, show_default=True, type=click.IntRange(1),
              help="Largest image the page accepts, in MB.")
@click.option("--occlusion-precision", type=click.Choice(["float32", "bfloat16"]),
              default="float32", show_default=True,
              help="Occlusion's forward passes on a network that is not a chain (a ResNet: one "
                   "pass per occluder position) in bf16 (the job 1.5-1.7x faster on a CPU with "
                   "AMX); a chain's "
                   "exact incremental passes stay float32.")
@_NONLINEAR
def serve_cmd(model_options: ModelOptions, data: str | None, host: str, port: int,
              images: int | None, k: int, cache_dir: str | None, max_upload_mb: int,
              occlusion_precision: str) -> None:
    """The explorer: a local web page to click through the layers and units of the model with
    the dataset's images or your own (drag and drop): feature maps, projections by the
    deconvnet, guided backprop and the gradient, top-k over the dataset, occlusion and, for a
    zfnet run with kept epochs, evolution. The JSON API behind it: docs/explorer.md."""
    from zfnet.explorer.serve import check_address, serve

    try:  # the address first: a model can take a while to load
        port = check_address(host, port)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--port/--host") from None
    source, _ = _model_and_data(model_options, need_data=False)
    serve(source, data, host=host, port=port, cache_dir=cache_dir, images=images, k=k,
          max_upload=max_upload_mb * 2**20, occlusion_precision=occlusion_precision,
          echo=click.echo)


@main.command("report", short_help="Rebuild a report page from its saved sections")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report_cmd(run_dir: str) -> None:
    """Rebuild RUN_DIR/index.html from the sections saved there (RUN_DIR/sections/*.json,
    written by `zfnet demo`, `zfnet analyze ...` and `zfnet visualize ...`)."""
    from zfnet.report import read_sections

    page, folder = Path(run_dir) / "index.html", Path(run_dir) / "sections"
    if folder.is_dir() and not read_sections(run_dir) and page.is_file() and \
            "<p class=\"meta\">Made by zfnet on " in page.read_text(errors="replace"):
        page.unlink()  # zfnet's page of sections that are all gone
        click.echo(f"no sections left in {folder}: removed the page that showed them, {page}")
        return
    _finish(run_dir)


if __name__ == "__main__":
    main()
