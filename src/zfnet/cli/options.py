"""The options commands share, and the callbacks that check their values before any work."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import click

from zfnet.cli.app import WITHIN


class _Whole(click.IntRange):
    """click.IntRange whose error says "'1.5' is not a valid integer", not "... integer
    range"."""

    name = "integer"


def _split(value: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """A comma list, or a repeated option of comma lists -> the items, spaces stripped."""
    if value is None or value == ():
        return None
    values = value if isinstance(value, tuple) else (value,)
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    if not names:
        raise click.BadParameter(f"{', '.join(map(repr, values))} names nothing")
    gap = next((v for v in values if any(not n.strip() for n in v.split(","))), None)
    if gap is not None:  # "layer3,,layer4": a name left out, perhaps by a typo
        raise click.BadParameter(f"{gap!r} has an empty name between its commas; give the "
                                 "names separated by single commas")
    return names


def _names(ctx: click.Context, param: click.Parameter, value):
    """A comma list, or a repeated option of comma lists -> the names, spaces stripped; each
    once."""
    names = _split(value)
    twice = [n for n in dict.fromkeys(names or ()) if names.count(n) > 1]
    if twice:  # "conv1,conv1": the same figure twice, or a typo for another name
        verb = "is" if len(twice) == 1 else "are"
        raise click.BadParameter(f"{', '.join(map(repr, twice))} {verb} given twice; give "
                                 "each once")
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
    return _ints(value, _split(value), 1, "1,5,20")


def _counts_from_zero(ctx: click.Context, param: click.Parameter, value):
    """A comma list (or repeated option) of map indices >= 0, e.g. 3,17 -> (3, 17)."""
    value = ",".join(value) if isinstance(value, tuple) else value
    return _ints(value, _split(value or None), 0, "3,17")


def _position(ctx: click.Context, param: click.Parameter, value: str | None):
    """ROW,COL: two integers >= 0, e.g. 3,5 -> (3, 5)."""
    rc = _ints(value, _split(value), 0, "3,5")
    if rc is not None and len(rc) != 2:
        raise click.BadParameter(f"{value!r} is not a row and a column, ROW,COL (from 0), e.g. "
                                 "3,5")
    return rc


def _device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A device this machine has (cuda without a GPU is a bad value, exit 2, as tpu is)."""
    import os

    from zfnet.train.distributed import resolve_device

    if value is not None:
        try:
            resolve_device(value, int(os.environ.get("LOCAL_RANK", "0")))
        except ValueError as e:
            raise click.BadParameter(str(e)) from e
    return value


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
         "file (.pth, .pt, .bin, .ckpt, .safetensors). Default: random init.")


_LABELS = click.option(
    "--labels", type=click.Path(), metavar="FILE",
    help="The model's class names, one per output: a text file of one name a line, a JSON "
         "list, or a JSON object of output number to name ({\"0\": \"cat\", ...}, as "
         "id2label); imagenet: ImageNet's 1000, as torchvision names them (default: the "
         "weights' own, if any).")


# The preprocessing a model comes with, overridden (for a plain weights file, say).
_PREPROCESSING = (
    click.option("--mean", callback=_floats, metavar="M,M,M",
                 help="Input mean per channel in 0..1 units (default: the weights' own)."),
    click.option("--std", callback=_floats, metavar="S,S,S",
                 help="Input std per channel in 0..1 units (default: the weights' own)."),
    click.option("--resize", type=_Whole(1),
                 help="Shorter image side before the centre crop (default: the weights' own)."),
    click.option("--crop", type=_Whole(1),
                 help="Side of the centre crop the model sees (default: the weights' own)."),
)


_DEVICE = click.option("--device", default="auto", show_default=True, callback=_device,
                       metavar="DEVICE", help="auto (cuda if available), cpu, cuda, cuda:N.")


_RULE_HELP = ("How a unit is projected to pixels: the deconvnet (paper Sec. 2.1), guided "
              "backpropagation, or the gradient.")


_BATCH = click.option("--batch-size", type=_Whole(1), default=64, show_default=True,
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


class _Finite(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (nan passes any bound, inf a lower one:
    a learning rate of either trains nothing)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


_POSITIVE = _Finite(0, min_open=True)


_FRACTION = _Finite(0, 1, max_open=True)


class _OutPath(click.Path):
    """--out and kin: a folder (or a file) that exists or can be made, checked before any work
    (a path under a file, a read-only or virtual file system)."""

    def __init__(self, *, folder: bool) -> None:
        super().__init__(file_okay=not folder, dir_okay=folder)
        self.folder = folder

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        from zfnet.atomic import cannot_write

        if why := cannot_write(value, folder=self.folder):  # before click's "... is a file."
            self.fail(f"{why}; give a {'folder' if self.folder else 'file'} zfnet can write",
                      param, ctx)
        return super().convert(value, param, ctx)


_OUT_DIR = _OutPath(folder=True)
_OUT_FILE = _OutPath(folder=False)


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


_LOADER = click.option(
    "--loader", type=click.Choice(["auto", "cpu", "gpu", "mixed"]),
    help="Input pipeline (default auto: gpu on CUDA for imagefolder:/shards:, else cpu). cpu: "
         "workers decode and cut uint8 crops, the mean is subtracted on the device; gpu: the "
         "device decodes the JPEGs too (nvJPEG); mixed: the workers decode a share of them, the "
         "device the rest (the share measured at the start; a resumed training run keeps it). "
         "Their pixels differ by a level or so (and large images: cpu decodes them at reduced "
         "DCT scale): compare scores made with the same loader.")


_DATA = click.option("--data", default=None, metavar="SPEC",
                     help="Dataset spec (default: the one the model was trained on).")


_OUT = click.option("--out", required=True, type=_OUT_DIR,
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


def _within(ctx: click.Context, context: Callable[[], Any]) -> None:
    """The command runs inside `context()`, entered once every option is read and exited when
    it ends (`zfnet.cli.app`'s commands): not entered by an option's callback, which a later
    bad option would leave entered (click closes no context whose parsing failed)."""
    ctx.meta.setdefault(WITHIN, []).append(context)


def _nonlinear_mode(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The command runs inside `zfnet.graph.nonlinear(value)`, undone when it ends."""
    from zfnet.graph import nonlinear

    _within(ctx, lambda: nonlinear(value))
    return value


def _bars(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool | None:
    """--progress/--quiet: every bar the command draws, down to its stages', shown or not
    (`zfnet.progress.bars`; None, train's default: its own choice, bars allowed)."""
    from zfnet.progress import bars

    _within(ctx, lambda: bars(value is not False))
    return value


def _progress_option(default: bool | None = True, help: str = "Progress bars on stderr "
                    "(--quiet: none; what the command finds still prints).",
                    expose_value: bool = False):
    """The --progress/--quiet option of a command that draws bars."""
    return click.option("--progress/--quiet", default=default, callback=_bars,
                        expose_value=expose_value, help=help)


_PROGRESS = _progress_option()

class _ProjectionSeed(click.Choice):
    """--seed of the projections: activation or one. A number (`zfnet train --seed 0`'s
    meaning) is told as such: nothing here is drawn at random."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            self.fail(f"{value!r} is a random seed (as `zfnet train --seed` takes one); this "
                      "--seed is what each unit goes down with: activation or one (nothing "
                      "here is drawn at random)", param, ctx)
        return super().convert(value, param, ctx)


_SEED = click.option(
    "--seed", type=_ProjectionSeed(["activation", "one"]), default="activation",
    show_default=True,
    help="What each unit goes down with: its activation's value (the paper's; a unit at or "
         "below zero projects to nothing), or 1 (Captum's: the same pictures for an active "
         "unit, and for one below zero, a class score among them, what would raise it).")

_PRECISION = click.option(
    "--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
    show_default=True,
    help="What the projections go down in where they go through the network's graph (a "
         "ResNet, any network that is not a plain chain): bfloat16 (a ResNet-50's gallery "
         "1.7x faster on a CPU with native bf16, its pictures within 4 of 255 grey levels of "
         "float32's) or float32; auto: bfloat16 where the device computes it natively (a GPU "
         "with bf16, a CPU with AVX512-BF16 or AMX). A chain (zfnet's models, AlexNet, VGG) "
         "is projected in float32.")
_NONLINEAR = click.option(
    "--nonlinear", type=click.Choice(["error", "gradient"]), default="error",
    show_default=True, callback=_nonlinear_mode, expose_value=False,
    help="Where the deconvnet or guided rule meets a non-linearity other than a rectifier "
         "(GELU, SiLU, sigmoid gates, LayerNorm): stop with an error, or take its gradient "
         "there and apply the rule at the rectifiers only, as Captum does.")
