"""The `zfnet` command: thin — each subcommand parses, calls one library function, prints."""

from __future__ import annotations

import click

from zfnet import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zfnet")
def main() -> None:
    """ZFNet (Zeiler & Fergus 2013): train it, evaluate it, look inside it with the deconvnet."""


@main.command("models")
@click.argument("name", required=False)
@click.option("--input-size", type=int, default=None, help="Input side for the layer table.")
def models_cmd(name: str | None, input_size: int | None) -> None:
    """List the registered models, or the layers of model NAME (the names every command takes)."""
    from zfnet.models import create_model, layer_info, list_models

    if name is None:
        for n in list_models():
            click.echo(n)
        return
    opts = {"input_size": input_size} if input_size else {}
    try:
        model = create_model(name, **opts)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from e
    n_params = sum(p.numel() for p in model.parameters())
    click.echo(f"{name}: {n_params:,} parameters, input {model.config.input_size} px")
    click.echo(f"{'layer':<8} {'module':<20} {'kind':<8} {'maps':>6} {'size':>5} "
               f"{'stride':>6} {'rf':>5}")
    for info in layer_info(model).values():
        g = info.geometry
        size, jump, rf = (g.size, g.jump, g.rf) if g else ("", "", "")
        click.echo(f"{info.name:<8} {info.module:<20} {info.kind:<8} {info.channels or '':>6} "
                   f"{size:>5} {jump:>6} {rf:>5}")


# --- train / eval (zfnet.train) ---

def _list_of_ints(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as e:
        raise click.BadParameter(f"{value!r} is not a comma list of epochs, e.g. 1,2,5,10") from e


@main.command("train")
@click.option("--data", help="Dataset spec, e.g. synthetic, fashion-mnist, imagefolder:DIR.")
@click.option("--model", help="Registered model name (see `zfnet models`).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory (config.json, metrics.csv, tb/, checkpoints/).")
@click.option("--epochs", type=int, help="Epochs to train (default 70, the paper's).")
@click.option("--batch-size", type=int, help="Global batch, split over processes (default 128).")
@click.option("--lr", type=float, help="SGD learning rate (default 1e-2).")
@click.option("--momentum", type=float, help="SGD momentum (default 0.9).")
@click.option("--weight-decay", type=float, help="L2 weight decay (default 0; AlexNet used 5e-4).")
@click.option("--nesterov/--no-nesterov", default=None, help="Nesterov momentum (default off).")
@click.option("--schedule", type=click.Choice(["plateau", "step", "cosine", "onecycle",
                                                "constant"]),
              help="lr schedule (default plateau: x lr-factor when val error stops improving).")
@click.option("--patience", type=int, help="plateau: epochs without improvement (default 3).")
@click.option("--lr-factor", type=float, help="plateau/step: lr multiplier (default 0.1).")
@click.option("--step-epochs", type=int, help="step: epochs between lr drops (default 30).")
@click.option("--warmup-epochs", type=float, help="cosine: linear warm-up epochs (default 0).")
@click.option("--renorm/--no-renorm", default=None,
              help="Rescale conv filters with RMS > radius after each step (default on, Sec. 3).")
@click.option("--renorm-radius", type=float, help="Filter RMS radius (default 0.1).")
@click.option("--seed", type=int, help="Seed of init, data order and augmentation (default 0).")
@click.option("--device", help="auto (default: cuda if available), cpu, cuda, cuda:N.")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]),
              help="Mixed precision (default auto: bf16 on CUDA and on CPUs with native "
                   "bf16, else off).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="channels_last memory format (default on).")
@click.option("--workers", type=int, help="DataLoader worker processes (default 0).")
@click.option("--keep-epochs", callback=_list_of_ints,
              help="Epochs whose checkpoints are kept (default 1,2,5,10,20,30,40,64).")
@click.option("--model-opt", "model_opt", multiple=True, metavar="KEY=VALUE",
              help="Model override, repeatable: fc_width=2048, remove=conv3,conv4, init=paper, "
                   "conv_widths=512,1024,512, dropout=0.5.")
@click.option("--data-cache", type=click.Path(file_okay=False),
              help="Where the data layer may cache the mean image.")
@click.option("--resume", is_flag=True, default=None,
              help="Continue the run in --out exactly where its last checkpoint left it.")
@click.option("--progress/--quiet", default=None, help="Progress bar and epoch lines.")
@click.option("--tensorboard/--no-tensorboard", default=None, help="TensorBoard logs in tb/.")
def train_cmd(**opts) -> None:
    """Train a model with the paper's recipe (Sec. 3) and write a run directory.

    Exit status: 0 finished; 130 (SIGINT) / 143 (SIGTERM) interrupted after saving a
    checkpoint (continue with --resume); 1 on errors, a NaN/inf loss included (the last good
    checkpoint is kept). Many processes: `torchrun --nproc-per-node N -m zfnet.cli train ...`.
    """
    import sys

    from zfnet.train import EXIT_INTERRUPTED, NonFiniteLossError, parse_model_opt, resolve_config
    from zfnet.train import train as run_training

    given = {k: v for k, v in opts.items() if v is not None and k != "model_opt"}
    if "keep_epochs" in given:
        given["keep_epochs"] = tuple(given["keep_epochs"])
    try:
        if opts["model_opt"]:
            given["model_opts"] = dict(parse_model_opt(o) for o in opts["model_opt"])
        config = resolve_config(**given)
        summary = run_training(config)
    except NonFiniteLossError as e:
        raise click.ClickException(str(e)) from e
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    final = summary["final"]
    if final:
        click.echo(f"epoch {final['epoch']}: val top-1 error {final['val_top1_error']:.2%}, "
                   f"top-5 {final['val_top5_error']:.2%}")
    click.echo(f"{summary['status']} in {summary['wall_time_s']:.0f} s on {summary['device']}; "
               f"run: {summary['run_dir']}; checkpoint: {summary['checkpoint']}")
    if summary["status"] == "interrupted":
        import signal

        click.echo(f"interrupted by {summary['signal']}: continue with --resume", err=True)
        sys.exit(EXIT_INTERRUPTED[signal.Signals[summary["signal"]]])


@main.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="Run directory (its last checkpoint), checkpoint directory or weights file.")
@click.option("--data", help="Dataset spec (default: the one the model was trained on).")
@click.option("--ten-crop", is_flag=True, help="Average the softmax of the paper's 10 crops.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Write every result (per-class accuracy, confusion matrix) to this file.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, default=0, show_default=True)
def eval_cmd(checkpoint: str, data: str | None, ten_crop: bool, json_out: str | None,
             batch_size: int, device: str, workers: int) -> None:
    """Top-1 / top-5 error, per-class accuracy and confusion matrix on the validation split."""
    import json
    from pathlib import Path

    from zfnet.train import evaluate_checkpoint

    try:
        r = evaluate_checkpoint(checkpoint, data, ten_crop, batch_size=batch_size,
                                device=device, workers=workers)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    crops = "10 crops" if ten_crop else "centre crop"
    click.echo(f"{r['model']} (epoch {r['epoch']}) on {r['data']}, {r['n']} images, {crops}: "
               f"top-1 error {r['top1_error']:.2%}, top-5 error {r['top5_error']:.2%}")
    for name, acc in r["per_class_accuracy"].items():
        click.echo(f"  {name:<20} {'-' if acc is None else f'{acc:.2%}'}")
    if json_out:
        Path(json_out).write_text(json.dumps(r, indent=1) + "\n")
        click.echo(f"wrote {json_out}")


if __name__ == "__main__":
    main()
