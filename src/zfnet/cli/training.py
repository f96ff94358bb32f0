"""`zfnet train`, `zfnet eval` and `zfnet study`: the paper's recipe (zfnet.train)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from zfnet.cli.app import main
from zfnet.cli.loading import _broken_files, _finish
from zfnet.cli.options import (
    _FRACTION,
    _LOADER,
    _OUT,
    _OUT_DIR,
    _OUT_FILE,
    _POSITIVE,
    _PREPROCESSING,
    _PROGRESS,
    _WEIGHTS,
    _WORKERS,
    _counts,
    _device,
    _duration,
    _Finite,
    _model_opts,
    _names,
    _options,
    _progress_option,
    _Whole,
)


@main.command("train", short_help="Train a model with the paper's recipe (Sec. 3)")
@click.option("--data", metavar="SPEC",
              help="Dataset spec, e.g. synthetic, fashion-mnist, imagefolder:DIR, shards:OUT.")
@click.option("--model", metavar="SOURCE",
              help="A zfnet model (`zfnet models`), or another architecture trained "
              "by the recipe: torchvision:NAME, timm:NAME, hf:ORG/NAME or hf:DIR "
              "(its config's architecture), your own FILE.py:NAME.")
@click.option("--weights", metavar="W",
              help="Fine-tune: start from these weights (a torchvision weights name: DEFAULT, "
                   "IMAGENET1K_V1; pretrained: timm's or a Hugging Face model's own; a weights "
                   "file; a run fine-tuned before; for zfnet's models any run) instead of "
                   "training from scratch. The "
                   "classifier is built again for the data's classes, the images are the "
                   "weights' own inputs, --renorm is off by default.")
@_options(*_PREPROCESSING)
@click.option("--freeze-to", metavar="LAYER",
              help="Keep LAYER and every layer before it as they start, with --weights as the "
                   "weights have them (not trained, batch norm statistics fixed), e.g. relu7 "
                   "(the paper's Sec. 5.2), a ResNet's avgpool (a linear probe) or layer3.")
@click.option("--out", required=True, type=_OUT_DIR,
              help="Run directory (config.json, metrics.csv, tb/, checkpoints/).")
@click.option("--epochs", type=_Whole(1), help="Epochs to train (default 70, the paper's).")
@click.option("--batch-size", type=_Whole(1),
              help="Global batch, split over processes (default 128).")
@click.option("--lr", type=_POSITIVE, help="SGD learning rate (default 1e-2).")
@click.option("--momentum", type=_FRACTION, help="SGD momentum (default 0.9).")
@click.option("--weight-decay", type=_Finite(0),
              help="L2 weight decay (default 0; AlexNet used 5e-4).")
@click.option("--norm-weight-decay", type=_Finite(0),
              help="Weight decay of normalisation layers' parameters, e.g. 0 (default: "
                   "--weight-decay).")
@click.option("--bias-weight-decay", type=_Finite(0),
              help="Weight decay of the other layers' biases, e.g. 0 (default: --weight-decay).")
@click.option("--nesterov/--no-nesterov", default=None, help="Nesterov momentum (default off).")
@click.option("--label-smoothing", type=_FRACTION,
              help="Cross-entropy label smoothing, 0 <= e < 1 (default 0, the paper's).")
@click.option("--random-erasing", type=_Finite(0, 1),
              help="Probability of blanking a random rectangle of each training crop to the "
                   "mean (default 0).")
@click.option("--ema", type=_FRACTION,
              help="Keep a moving average of the weights with this decay per step (e.g. 0.999) "
                   "and validate and save it (default 0 = off).")
@click.option("--schedule", type=click.Choice(["plateau", "step", "cosine", "linear",
                                                "onecycle", "constant"]),
              help="lr schedule (default plateau: x lr-factor when val error stops improving).")
@click.option("--patience", type=_Whole(0),
              help="plateau: epochs without improvement (default 3).")
@click.option("--lr-factor", type=_Finite(0, 1, min_open=True),
              help="plateau/step: lr multiplier (default 0.1).")
@click.option("--step-epochs", type=_Whole(1),
              help="step: epochs between lr drops (default 30).")
@click.option("--warmup-epochs", type=_Finite(0),
              help="cosine, linear: linear warm-up epochs (default 0).")
@click.option("--renorm/--no-renorm", default=None,
              help="Rescale conv filters with RMS > radius after each step (default on, Sec. 3).")
@click.option("--renorm-radius", type=_POSITIVE,
              help="Filter RMS radius (default 0.1; conv1's ÷60 under --precondition).")
@click.option("--precondition/--no-precondition", default=None,
              help="Train conv1 as if the 0..255 inputs were divided by their std (default on; "
                   "off = the literal recipe, see docs/design.md).")
@click.option("--seed", type=_Whole(0, 2**32 - 1),
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
@click.option("--val-every", type=_Whole(1), metavar="N",
              help="Validate after every N-th epoch and after the last (default 1; plateau's "
                   "patience then counts validations).")
@click.option("--keep-epochs", callback=_counts, metavar="N,N,...",
              help="Epochs whose checkpoints are kept (default 1,2,5,10,20,30,40,64).")
@click.option("--model-opt", "model_opts", multiple=True, metavar="KEY=VALUE",
              callback=_model_opts,
              help="Model override, repeatable: fc_width=2048, remove=conv3,conv4, init=paper, "
                   "conv_widths=512,1024,512 (conv3-5; five values: conv1-5), dropout=0.5, "
                   "strides=1,1,1,1,1 (conv1-5), batchnorm=true (booleans: true or false).")
@click.option("--data-cache", type=_OUT_DIR,
              help="Where to cache an imagefolder's mean image (default: DIR/.zfnet-cache, "
                   "or ~/.cache/zfnet where DIR is read-only); a mean cached in any of them "
                   "is read.")
@click.option("--strict/--no-strict", default=None,
              help="Stop at the first broken image file with an error naming it (default: "
                   "skip it with a warning naming it once, counted per epoch in metrics.csv).")
@click.option("--resume", is_flag=True, default=None,
              help="Continue the run in --out exactly where its last checkpoint left it.")
@_progress_option(default=None, help="Progress bar and epoch lines.", expose_value=True)
@click.option("--tensorboard/--no-tensorboard", default=None, help="TensorBoard logs in tb/.")
def train_cmd(**opts) -> None:
    """Train a model with the paper's recipe (Sec. 3) and write a run directory.

    Exit status: 0 finished; 130 (SIGINT) / 143 (SIGTERM) interrupted after saving a
    checkpoint (continue with --resume); 2 on a bad option value; 1 on other errors, a NaN/inf
    loss included (the last good checkpoint is kept). Many processes: `torchrun
    --nproc-per-node N -m zfnet.cli train ...`.
    """

    from zfnet.train import EXIT_INTERRUPTED, NonFiniteLossError, resolve_config
    from zfnet.train import train as run_training

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
    from zfnet.train.checkpoint import checkpoint_label
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
    # a mid-epoch checkpoint's name, epoch_0032_step_000004, in words: 4 steps into epoch 33
    held = (f" ({checkpoint_label(summary.get('epochs_completed', 0), steps)})"
            if steps and summary["checkpoint"] else "")
    click.echo(f"{summary['status']} in {summary['wall_time_s']:.0f} s on {where}; "
               f"run: {summary['run_dir']}; checkpoint: {summary['checkpoint']}{held}")
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
                   "a JSON list or object as id2label; imagenet: ImageNet's 1000): each of "
                   "the dataset's class folders is scored by the output of its name, in any "
                   "order, and a dataset of some of the classes among those.")
@click.option("--data", metavar="SPEC",
              help="Dataset spec (default: the one the model was trained on).")
@click.option("--ten-crop", is_flag=True, help="Average the softmax of the paper's 10 crops.")
@click.option("--json", "json_out", type=_OUT_FILE,
              help="Write every result (per-class accuracy, confusion matrix) to this file.")
@click.option("--out", type=_OUT_DIR,
              help="Add the report section \"Evaluation\" (per-class accuracy, confusion "
                   "matrix) to this directory, usually the run itself (--out RUN), and rebuild "
                   "its index.html.")
@click.option("--batch-size", type=_Whole(1), default=128, show_default=True,
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
@_progress_option(help="A progress bar over the batches.", expose_value=True)
def eval_cmd(checkpoint: str | None, model: str | None, weights: str | None,
             mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
             resize: int | None, crop: int | None, labels: str | None, data: str | None,
             ten_crop: bool, json_out: str | None, out: str | None, batch_size: int, device: str,
             workers: int | str | None,
             loader: str | None, amp: str, live_weights: bool, strict: bool,
             compile: bool, progress: bool) -> None:
    """Top-1 / top-5 error, per-class accuracy and confusion matrix on the validation split:
    of a zfnet run (--checkpoint), or of any model (--model, e.g. torchvision:resnet50
    --weights DEFAULT --data imagefolder:DIR, to check a pretrained model's published error).

    With --out DIR (e.g. the run: `zfnet eval --checkpoint RUN --out RUN`) the results also
    become the section "Evaluation" of DIR's report page (DIR/index.html, rebuilt).

    Many processes: `torchrun --nproc-per-node N -m zfnet.cli eval ...` scores a share of the
    split in each and adds up the counts; the first process prints and writes --json and
    --out."""
    import json

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
    common = dict(batch_size=batch_size, workers=workers if workers is not None else "auto",
                  loader=loader or "auto", amp=amp, strict=strict, compile=compile,
                  progress=progress)  # 10 crops of 50k images: hours on a CPU
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
    epoch = f" ({label})" if label and checkpoint is not None else ""  # --model RUN's name has it
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
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)  # checked makeable up front
        Path(json_out).write_text(json.dumps(r, indent=1) + "\n")
        click.echo(f"wrote {json_out}")
    if out:
        from zfnet.report import build_report
        from zfnet.report.training import evaluation_section

        evaluation_section(out, r)
        click.echo(f"report: {build_report(out).resolve()}")


PER_CLASS_SHOWN = 30  # zfnet eval prints every class's accuracy up to this many classes


@main.command("study", short_help="Table 3: train model variants with one budget, compare")
@click.option("--data", required=True, metavar="SPEC", help="Dataset spec.")
@click.option("--models", default="zfnet_small", show_default=True, callback=_names,
              metavar="NAME[,NAME...]",
              help="Comma-separated base models: zfnet's (every variant), or any architecture "
                   "`zfnet train` takes (its baseline).")
@click.option("--variants", callback=_names, metavar="NAME[,NAME...]",
              help="Comma-separated Table 3 variants, of every model (default: baseline, fc_half, "
                   "fc_double, wide345, no_conv34, no_fc7, no_fc67 of zfnet's models, the "
                   "baseline of any other). Variants are of zfnet's models only: with another "
                   "architecture among --models, leave --variants out.")
@click.option("--epochs", required=True, type=_Whole(1),
              help="Epochs each variant trains (the same for all).")
@click.option("--batch-size", default=128, show_default=True, type=_Whole(1),
              help="Images per step, every variant.")
@click.option("--lr", default=0.01, show_default=True, type=_POSITIVE,
              help="Peak learning rate, every variant.")
@click.option("--schedule", default="cosine", show_default=True,
              type=click.Choice(["plateau", "step", "cosine", "linear", "onecycle", "constant"]),
              help="Learning-rate schedule, every variant (as `zfnet train --schedule`).")
@_OUT
@_PROGRESS
def study_cmd(data: str, models: tuple[str, ...], variants: tuple[str, ...] | None, epochs: int,
              batch_size: int, lr: float, schedule: str, out: str) -> None:
    """Table 3: train each (model, variant) on DATA for the same epochs and report train/val
    top-1 and val top-5 error side by side, with the paper's numbers where it has them."""
    import signal

    from zfnet.study import StudyInterrupted, chance_words, study, study_section
    from zfnet.train import EXIT_INTERRUPTED, NonFiniteLossError

    try:
        rows = study(data, models, variants, out, epochs, batch_size=batch_size, lr=lr,
                     schedule=schedule, progress=True, say=click.echo)
    except StudyInterrupted as e:
        click.echo(f"{e}: the same command continues the study (finished runs are kept)",
                   err=True)
        sys.exit(EXIT_INTERRUPTED[signal.Signals[e.signal or "SIGTERM"]])
    except NonFiniteLossError as e:
        raise click.ClickException(f"{e}; a lower --lr, in another --out, trains every "
                                   "variant with it") from e
    study_section(out, rows, data, epochs)
    wm = max(14, *(len(r["model"]) + 1 for r in rows))  # a long my_net.py:Net stays aligned
    wv = max(18, *(len(r["variant"]) + 1 for r in rows))
    click.echo(f"{'model':<{wm}} {'variant':<{wv}} error: train top-1  val top-1  val top-5")
    for r in rows:
        top5 = "—" if r["val_top5_error"] is None else f"{r['val_top5_error']:.1%}"
        click.echo(f"{r['model']:<{wm}} {r['variant']:<{wv}}        "
                   f"{r['train_top1_error']:>11.1%}  {r['val_top1_error']:>9.1%}  {top5:>9}")
    if any(r["val_top5_error"] is None for r in rows):
        click.echo("val top-5: — with 5 classes or fewer (every class is among the top 5)")
    if chance_words(rows):
        click.echo(chance_words(rows).removeprefix("; ").capitalize())
    _finish(out)
