"""The `zfnet` command: thin — each subcommand parses, calls one library function, prints."""

from __future__ import annotations

from pathlib import Path

import click

from zfnet import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zfnet")
def main() -> None:
    """ZFNet (Zeiler & Fergus 2013): train it, evaluate it, look inside it with the deconvnet."""
    from zfnet.memory import keep_freed_memory

    keep_freed_memory()  # no page faults on every step's tensors (zfnet/memory.py)


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


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from zfnet.train.budget import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


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
@click.option("--norm-weight-decay", type=float,
              help="Weight decay of normalisation layers' parameters, e.g. 0 (default: "
                   "--weight-decay).")
@click.option("--bias-weight-decay", type=float,
              help="Weight decay of the other layers' biases, e.g. 0 (default: --weight-decay).")
@click.option("--nesterov/--no-nesterov", default=None, help="Nesterov momentum (default off).")
@click.option("--label-smoothing", type=float,
              help="Cross-entropy label smoothing, 0 <= e < 1 (default 0, the paper's).")
@click.option("--random-erasing", type=float,
              help="Probability of blanking a random rectangle of each training crop to the "
                   "mean (default 0).")
@click.option("--ema", type=float,
              help="Keep a moving average of the weights with this decay per step (e.g. 0.999) "
                   "and validate and save it (default 0 = off).")
@click.option("--schedule", type=click.Choice(["plateau", "step", "cosine", "linear",
                                                "onecycle", "constant"]),
              help="lr schedule (default plateau: x lr-factor when val error stops improving).")
@click.option("--patience", type=int, help="plateau: epochs without improvement (default 3).")
@click.option("--lr-factor", type=float, help="plateau/step: lr multiplier (default 0.1).")
@click.option("--step-epochs", type=int, help="step: epochs between lr drops (default 30).")
@click.option("--warmup-epochs", type=float,
              help="cosine, linear: linear warm-up epochs (default 0).")
@click.option("--renorm/--no-renorm", default=None,
              help="Rescale conv filters with RMS > radius after each step (default on, Sec. 3).")
@click.option("--renorm-radius", type=float, help="Filter RMS radius (default 0.1).")
@click.option("--precondition/--no-precondition", default=None,
              help="Train conv1 as if the 0..255 inputs were divided by their std (default on; "
                   "off = the literal recipe, see README).")
@click.option("--seed", type=int, help="Seed of init, data order and augmentation (default 0).")
@click.option("--device", help="auto (default: cuda if available), cpu, cuda, cuda:N.")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]),
              help="Mixed precision (default auto: bf16 on CUDA and on CPUs with native "
                   "bf16, else off).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="channels_last memory format (default on).")
@click.option("--workers", type=int, help="DataLoader worker processes (default 0).")
@click.option("--time-budget", callback=_duration, metavar="DURATION",
              help="Plan the run to end within this wall time, e.g. 18m, 1h30m, 900s: after "
                   "each epoch, the speed so far sets how many steps fit (at most --epochs), a "
                   "cosine or linear schedule reaches 0 there, and the last epoch may end "
                   "part-way.")
@click.option("--val-every", type=int, metavar="N",
              help="Validate after every N-th epoch and after the last (default 1; plateau's "
                   "patience then counts validations).")
@click.option("--keep-epochs", callback=_list_of_ints,
              help="Epochs whose checkpoints are kept (default 1,2,5,10,20,30,40,64).")
@click.option("--model-opt", "model_opt", multiple=True, metavar="KEY=VALUE",
              help="Model override, repeatable: fc_width=2048, remove=conv3,conv4, init=paper, "
                   "conv_widths=512,1024,512 (conv3-5; five values: conv1-5), dropout=0.5.")
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
    if final and final.get("val_top1_error") is not None:
        click.echo(f"epoch {final['epoch']}: val top-1 error {final['val_top1_error']:.2%}, "
                   f"top-5 {final['val_top5_error']:.2%}")
    click.echo(f"{summary['status']} in {summary['wall_time_s']:.0f} s on {summary['device']}; "
               f"run: {summary['run_dir']}; checkpoint: {summary['checkpoint']}")
    if summary["plan"]:
        from zfnet.train.budget import Plan

        click.echo(Plan.from_dict(summary["plan"]).describe())
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
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto",
              show_default=True,
              help="Mixed precision, as in training (auto: bf16 on CUDA and on CPUs with native "
                   "bf16); off scores in float32.")
@click.option("--live-weights", is_flag=True,
              help="For a run trained with --ema: score the live weights, not their average.")
def eval_cmd(checkpoint: str, data: str | None, ten_crop: bool, json_out: str | None,
             batch_size: int, device: str, workers: int, amp: str, live_weights: bool) -> None:
    """Top-1 / top-5 error, per-class accuracy and confusion matrix on the validation split."""
    import json
    from pathlib import Path

    from zfnet.train import evaluate_checkpoint

    try:
        r = evaluate_checkpoint(checkpoint, data, ten_crop, batch_size=batch_size,
                                device=device, workers=workers, amp=amp,
                                live_weights=live_weights)
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


@main.command("demo")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Run directory (re-running resumes or reuses it).")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--data", default="synthetic", show_default=True, help="Dataset spec.")
@click.option("--model", default="zfnet_small", show_default=True, help="Registered model.")
@click.option("--no-analyses", is_flag=True, help="Only train, evaluate and report.")
def demo_cmd(out: str, epochs: int, batch_size: int, lr: float, data: str, model: str,
             no_analyses: bool) -> None:
    """Train ZFNet-small on the built-in data, evaluate it, run the paper's analyses and write
    an offline report page (index.html); about 2.5 minutes on 2 CPU cores, each stage timed."""
    from zfnet.demo import run_demo

    r = _run(run_demo, out, epochs, batch_size, lr, data, model, analyses=not no_analyses,
             log=click.echo)
    if "report" in r:
        click.echo(f"total {r['wall_time_s']:.0f} s; val top-1 error {r['val_top1_error']:.2%}")
        click.echo(f"report: {Path(r['report']).resolve()}")


# --- looking inside a trained model: each command writes figures + a report section into --out,
# then rebuilds --out/index.html ---

_CKPT = click.option("--checkpoint", required=True, type=click.Path(exists=True),
                     help="Run directory (its last checkpoint), checkpoint directory or weights.")
_DATA = click.option("--data", default=None,
                     help="Dataset spec (default: the one the model was trained on).")
_OUT = click.option("--out", required=True, type=click.Path(file_okay=False),
                    help="Directory for the figures, sections and index.html.")


def _load(checkpoint: str, data: str | None):
    """(model, bundle) for an analysis command; user errors become clean CLI errors."""
    from zfnet.data import load_dataset
    from zfnet.train import load_model

    try:
        model, meta = load_model(checkpoint)
        return model, load_dataset(data or meta["data"])
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e


def _finish(out: str) -> None:
    from zfnet.report import build_report

    click.echo(f"report: {build_report(out).resolve()}")


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e


@main.group("visualize")
def visualize() -> None:
    """Deconvnet visualisations (paper Sec. 2.1)."""


@visualize.command("topk", short_help="Fig. 2: top-k activations projected beside image patches")
@_CKPT
@_DATA
@_OUT
@click.option("--layers", default=None, help="Comma-separated layers (default conv1..conv5).")
@click.option("--k", default=9, show_default=True, type=click.IntRange(1))
@click.option("--maps-per-layer", default=16, show_default=True, type=click.IntRange(1),
              help="Maps shown per layer above conv1 (conv1: every map).")
@click.option("--map-rule", type=click.Choice(["strongest", "spaced"]), default="strongest",
              show_default=True)
@click.option("--rule", type=click.Choice(["deconvnet", "guided", "gradient"]),
              default="deconvnet", show_default=True)
@click.option("--images", default=None, type=click.IntRange(1),
              help="Mine only the first N val images (default: all).")
def topk_cmd(checkpoint: str, data: str | None, out: str, layers: str | None, k: int,
             maps_per_layer: int, map_rule: str, rule: str, images: int | None) -> None:
    """Fig. 2: the k strongest activations of feature maps over a dataset, projected to pixels
    beside their image patches."""
    from zfnet import pipeline

    model, bundle = _load(checkpoint, data)
    names = layers.split(",") if layers else None
    _run(pipeline.gallery, model, bundle, out, k=k, n_images=images or len(bundle.val),
         n_maps=maps_per_layer, layers=names, rule=rule, map_rule=map_rule)
    _finish(out)


@main.group("analyze")
def analyze() -> None:
    """The paper's analyses (Figs. 4-8, Tables 1, 3-7) and a sanity check."""


@analyze.command("evolution", short_help="Fig. 4: top activations projected at each kept epoch")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Training run directory with kept checkpoints.")
@_DATA
@click.option("--out", default=None, help="Report directory (default: the run directory).")
@click.option("--images", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--maps", default=6, show_default=True, type=click.IntRange(1))
def evolution_cmd(run_dir: str, data: str | None, out: str | None, images: int,
                  maps: int) -> None:
    """Fig. 4: strongest activations projected at every kept epoch, side by side."""
    from zfnet import pipeline
    from zfnet.train import find_last

    _, bundle = _load(str(find_last(run_dir)), data)
    _run(pipeline.evolution, run_dir, bundle, out, n_images=images, n_maps=maps)
    _finish(out or run_dir)


@analyze.command("filters", short_help="Fig. 6: filters and their diagnostics, models side by side")
@click.option("--checkpoint", "checkpoints", multiple=True, required=True,
              type=click.Path(exists=True), help="Repeat to compare models side by side.")
@_DATA
@_OUT
def filters_cmd(checkpoints: tuple[str, ...], data: str | None, out: str) -> None:
    """Fig. 6: conv1/conv2 filters and their diagnostics (dominance, dead, high frequency)."""
    from zfnet import pipeline

    models, bundle = {}, None
    for c in checkpoints:
        model, b = _load(c, data)
        bundle = bundle or b
        models[Path(c).name] = model
    _run(pipeline.filters, models, bundle, out)
    _finish(out)


@analyze.command("invariance", short_help="Fig. 5: features under translation, scaling, rotation")
@_CKPT
@_DATA
@_OUT
def invariance_cmd(checkpoint: str, data: str | None, out: str) -> None:
    """Fig. 5: translation, scaling, rotation of 5 photos and 5 dataset images."""
    from zfnet import pipeline

    model, bundle = _load(checkpoint, data)
    r = _run(pipeline.invariance, model, bundle, out)
    for key, kinds in r.items():
        for kind, d in kinds.items():
            click.echo(f"{key} {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in d.items()))
    _finish(out)


@analyze.command("occlusion", short_help="Fig. 7: occlusion sensitivity maps and pointing game")
@_CKPT
@_DATA
@_OUT
@click.option("--images", default=4, show_default=True, type=click.IntRange(1))
@click.option("--pointing", default=100, show_default=True, type=click.IntRange(0),
              help="Images for the pointing game (datasets with object masks).")
@click.option("--size", default=None, type=click.IntRange(1), help="Occluder side (px).")
@click.option("--stride", default=None, type=click.IntRange(1), help="Occluder stride (px).")
@click.option("--layer", default=None, help="Layer of maps (b)/(c) (default: the last conv).")
@click.option("--method", type=click.Choice(["auto", "incremental", "full"]), default="auto",
              show_default=True)
def occlusion_cmd(checkpoint: str, data: str | None, out: str, images: int, pointing: int,
                  size: int | None, stride: int | None, layer: str | None, method: str) -> None:
    """Fig. 7: a grey square slid over the image; activation, projection, p(class), label."""
    from zfnet.analyses.occlusion import occlusion_report

    model, bundle = _load(checkpoint, data)
    r = _run(occlusion_report, model, bundle, out, n_images=images, n_pointing=pointing,
             size=size, stride=stride, layer=layer, method=method)
    click.echo(", ".join(f"{k} {v}" for k, v in r.items()))
    _finish(out)


@analyze.command("correspondence", short_help="Fig. 8 / Table 1: part correspondence across images")
@_CKPT
@_DATA
@_OUT
@click.option("--class", "class_name", default="face", show_default=True)
@click.option("--parts", default="eye_left,eye_right,mouth", show_default=True)
@click.option("--images", default=5, show_default=True, type=click.IntRange(2))
@click.option("--draws", default=20, show_default=True, type=click.IntRange(1),
              help="Random-region draws for the control.")
def correspondence_cmd(checkpoint: str, data: str | None, out: str, class_name: str,
                       parts: str, images: int, draws: int) -> None:
    """Fig. 8 / Table 1: sign consistency of feature changes when the same part is masked."""
    from zfnet import pipeline

    model, bundle = _load(checkpoint, data)
    rows = _run(pipeline.correspondence, model, bundle, out, class_name, images,
                tuple(parts.split(",")), draws)
    for r in rows:
        click.echo(f"{r.part:<10} " + "  ".join(f"{k} {v:.4f}" for k, v in r.delta.items()))
    _finish(out)


@analyze.command("probes", short_help="Table 7: linear classifier on each layer's features")
@_CKPT
@_DATA
@_OUT
@click.option("--per-class", default=20, show_default=True, type=click.IntRange(1))
def probes_cmd(checkpoint: str, data: str | None, out: str, per_class: int) -> None:
    """Table 7: a linear classifier on each layer's features, N training images per class."""
    from zfnet import pipeline
    from zfnet.train import load_model

    model, meta = load_model(checkpoint)
    rows = _run(pipeline.probes, model, data or meta["data"], out, per_class)
    for r in rows:
        click.echo(f"{r.layer:<6} " + "  ".join(f"{k} {v:.1%}" for k, v in r.accuracy.items()))
    _finish(out)


@analyze.command("transfer", short_help="Tables 4-5: fixed features vs training from scratch")
@_CKPT
@click.option("--data", "data", required=True, metavar="SPEC",
              help="Target dataset spec (another dataset, or other classes: `classes=...`); "
                   "grey/RGB and size are adapted to the model's input.")
@_OUT
@click.option("--shots", default="1,5,20", show_default=True, metavar="N,N,...",
              help="Training images per class of the target.")
@click.option("--test", "n_test", default=1000, show_default=True, type=click.IntRange(1),
              help="Target val images scored.")
@click.option("--scratch-steps", default=300, show_default=True, type=click.IntRange(1),
              help="SGD steps of each from-scratch run.")
@click.option("--layer", default="relu7", show_default=True,
              help="Layers up to this one are kept (relu7: layers 1-7, as the paper).")
def transfer_cmd(checkpoint: str, data: str, out: str, shots: str, n_test: int,
                 scratch_steps: int, layer: str) -> None:
    """Tables 4-5: keep layers 1-7, train a new softmax on N images per class of the target,
    against the same model trained from scratch on those images."""
    from zfnet import pipeline
    from zfnet.train import load_model

    try:
        counts = tuple(int(v) for v in shots.split(",") if v.strip())
    except ValueError as e:
        raise click.BadParameter(f"{shots!r} is not a list of integers, e.g. 1,5,20",
                                 param_hint="--shots") from e
    model, meta = _run(load_model, checkpoint)
    rows = _run(pipeline.transfer, model, meta, data, out, counts, n_test, scratch_steps, layer)
    for r in rows:
        click.echo(f"{r.per_class:>4}/class  fixed {r.fixed:.1%}  scratch {r.scratch:.1%}")
    _finish(out)


@analyze.command("randomization", short_help="Sanity check: cascading model randomisation")
@_CKPT
@_DATA
@_OUT
@click.option("--images", default=4, show_default=True, type=click.IntRange(1))
@click.option("--layer", default="conv5", show_default=True)
def randomization_cmd(checkpoint: str, data: str | None, out: str, images: int,
                      layer: str) -> None:
    """Sanity check (Adebayo et al. 2018): do the maps change when the model is randomised?"""
    from zfnet import pipeline

    model, bundle = _load(checkpoint, data)
    _run(pipeline.randomization, model, bundle, out, images, layer)
    _finish(out)


@main.command("study", short_help="Table 3: train model variants with one budget, compare")
@click.option("--data", required=True, help="Dataset spec.")
@click.option("--models", default="zfnet_small", show_default=True,
              help="Comma-separated base models.")
@click.option("--variants", default="baseline,fc_half,fc_double,wide345,no_conv34,no_fc7,no_fc67",
              show_default=True, help="Comma-separated Table 3 variants.")
@click.option("--epochs", required=True, type=click.IntRange(1))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=0.01, show_default=True, type=float)
@click.option("--schedule", default="cosine", show_default=True)
@_OUT
def study_cmd(data: str, models: str, variants: str, epochs: int, batch_size: int, lr: float,
              schedule: str, out: str) -> None:
    """Table 3: train each (model, variant) on DATA for the same epochs and report train/val
    top-1 and val top-5 error side by side, with the paper's numbers where it has them."""
    import json

    from zfnet.study import study, study_section

    rows = _run(study, data, models.split(","), variants.split(","), out, epochs,
                batch_size=batch_size, lr=lr, schedule=schedule, progress=False)
    (Path(out) / "study.json").write_text(json.dumps(rows, indent=1))
    study_section(out, rows, data, epochs)
    for r in rows:
        click.echo(f"{r['model']:<14} {r['variant']:<18} train {r['train_top1_error']:.1%}  "
                   f"val {r['val_top1_error']:.1%}  top-5 {r['val_top5_error']:.1%}")
    _finish(out)


@main.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report_cmd(run_dir: str) -> None:
    """Rebuild RUN_DIR/index.html from the sections saved there."""
    _finish(run_dir)


if __name__ == "__main__":
    main()
