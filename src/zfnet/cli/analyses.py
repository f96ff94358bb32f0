"""`zfnet analyze ...`: the paper's analyses (Figs. 4-8, Tables 1, 4, 5, 7) and a sanity
check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from zfnet.cli.app import main
from zfnet.cli.loading import _finish, _layers, _load, _model_and_data
from zfnet.cli.options import (
    _BATCH,
    _DATA,
    _DEVICE,
    _NONLINEAR,
    _OUT,
    _OUT_DIR,
    _PREPROCESSING,
    _PROGRESS,
    _RULE_HELP,
    _SOURCE,
    _SOURCE_OPTIONS,
    ModelOptions,
    _counts,
    _names,
    _options,
    _runs_only,
    _Whole,
)


@main.group("analyze", short_help="The paper's analyses (Figs. 4-8, Tables 1, 4, 5, 7)")
def analyze() -> None:
    """The paper's analyses (Figs. 4-8, Tables 1, 4, 5, 7) and a sanity check."""


@analyze.command("evolution", short_help="Fig. 4: top activations projected at each kept epoch")
@_runs_only("Fig. 4 compares the checkpoints it kept while training")
@click.option("--checkpoint", "run_dir", type=click.Path(exists=True), metavar="RUN",
              help="Training run directory with kept checkpoints.  [required]")
@click.option("--run", "run_alias", type=click.Path(exists=True), hidden=True)
@_DATA
@click.option("--out", default=None, type=_OUT_DIR,
              help="Report directory (default: the run directory).")
@click.option("--images", default=1000, show_default=True, type=_Whole(1),
              help="Training images mined at each epoch (centre crops).")
@click.option("--maps", default=6, show_default=True, type=_Whole(1),
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
@_PROGRESS
def evolution_cmd(run_dir: str | None, run_alias: str | None, data: str | None,
                  out: str | None, images: int, maps: int, layers: tuple[str, ...] | None,
                  rule: str, device: str, batch_size: int) -> None:
    """Fig. 4: strongest activations projected at every kept epoch, side by side."""
    from zfnet import pipeline
    from zfnet.progress import counted_progress
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
    # one step an image mined or a unit projected, at each kept epoch
    with counted_progress(desc="evolution", unit="step") as went:
        pipeline.evolution(run_dir, bundle, out, n_images=images, n_maps=maps,
                           batch_size=batch_size, device=device, rule=rule, layers=layers,
                           progress=went)
    _finish(out or run_dir)


@analyze.command("filters", short_help="Fig. 6: filters and their diagnostics, one model or more")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(exists=True),
              metavar="RUN", help="A zfnet run; repeat to compare runs (one under another).")
@click.option("--model", "sources", multiple=True, metavar="SOURCE",
              help="Or any model: a zfnet model name, torchvision:NAME, timm:NAME, "
                   "hf:ORG/NAME, FILE.py:NAME; repeat to compare, each with its own "
                   "--weights in order.")
@click.option("--weights", "weights", multiple=True, metavar="W",
              help="Each --model's weights, in order: a torchvision weights name (DEFAULT, "
                   "IMAGENET1K_V1, ...) or a file (.pth, .pt, .bin, .ckpt, .safetensors); "
                   "none: no file "
                   "(hf:DIR's own weights, or random init). Default: random init.")
@_options(*_PREPROCESSING)
@_DATA
@_OUT
@_PROGRESS
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
                               "one --weights per --model, in the same order (--weights none "
                               "for one without a file: hf:DIR's own, or random init)")
    twice = sorted({c for c in checkpoints if checkpoints.count(c) > 1})
    if twice:
        raise click.UsageError(f"--checkpoint {twice[0]} is given twice")
    models, bundle, src = {}, None, None
    own = {}  # each run measured on its own data, unless --data names one for all
    short = [Path(c).name for c in checkpoints]
    for c, name in zip(checkpoints, short, strict=True):
        model, b = _load(c, data)
        bundle = bundle or b
        label = name if short.count(name) == 1 else c  # runs/a/last, runs/b/last
        models[label], own[label] = model, b
    for k, source in enumerate(sources):
        w = weights[k] if weights and weights[k].strip().lower() != "none" else None
        options = ModelOptions(source, None, w, None, mean, std, resize, crop, "cpu", 64)
        src, b = _model_and_data(options, data, need_data=bundle is None and data is not None)
        bundle = bundle or b
        label = src.name if sum(s == source for s in sources) == 1 else f"{src.name} ({w})"
        if label in models:
            raise click.UsageError(f"--model {source} is given twice with the same weights")
        models[label] = src.model
    size = None if bundle is not None or src is None else src.preprocessing.crop
    used = own.values() if own else [bundle] if bundle is not None else []
    specs = list(dict.fromkeys(b.spec for b in used if b.spec))
    ctx = click.get_current_context()  # the section names every model, not the last loaded
    ctx.with_resource(computed_on(", ".join(models) + (
        f", data {', '.join(specs)}" if specs else "")))
    measured = own if own and data is None else bundle  # a --model's is --data's, or none
    pipeline.filters(models, measured, out, input_size=size)
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
@click.option("--images", default=5, show_default=True, type=_Whole(1),
              help="Images of the dataset transformed (its val split, one per class while "
                   "classes last), beside the 5 built-in photos.")
@_PROGRESS
def invariance_cmd(model_options: ModelOptions, data: str | None, out: str,
                   layers: tuple[str, ...] | None, images: int) -> None:
    """Fig. 5: translation, scaling, rotation of 5 photos and 5 dataset images (a model
    without a dataset of its own and no --data: the photos alone)."""
    from zfnet import pipeline
    from zfnet.progress import counted_progress

    source, bundle = _model_and_data(model_options, data, optional_data=True,
                                     follows_class=True)
    chosen = _layers(source.model, layers)
    if bundle is None:
        click.echo("no --data: the 5 built-in photos only (--data SPEC adds "
                   f"{images} of its images, e.g. images:DIR)", err=True)
    with counted_progress(desc="transformed", unit="pass") as passed:  # a ResNet-50: minutes
        r = pipeline.invariance(source.model, bundle, out, n_dataset_images=images,
                                layers=chosen, preprocessing=source.preprocessing,
                                class_names=source.labels, progress=passed)
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
@click.option("--images", default=4, show_default=True, type=_Whole(1),
              help="Val images in the figure, one per class while classes last.")
@click.option("--pointing", default=100, show_default=True, type=_Whole(0),
              help="Images for the pointing game (datasets with object masks).")
@click.option("--size", default=None, type=_Whole(1),
              help="Occluder side in px (default 1/7 of the image side: 32 at 224 px).")
@click.option("--stride", default=None, type=_Whole(1),
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
@_PROGRESS
def occlusion_cmd(model_options: ModelOptions, data: str | None, out: str, images: int,
                  pointing: int, size: int | None, stride: int | None, layer: str | None,
                  class_name: str | None, method: str, precision: str) -> None:
    """Fig. 7: a grey square slid over the image; activation, projection, p(class), label."""
    if method == "incremental" and precision == "bfloat16":
        raise click.UsageError("--precision bfloat16 is for the full method's passes; "
                               "--method incremental recomputes exactly, in float32: give one "
                               "of them")
    from zfnet.analyses.classes import class_indices
    from zfnet.analyses.occlusion import metric_words, occlusion_report
    from zfnet.pipeline import check_fits

    source, bundle = _model_and_data(model_options, data, follows_class=True)
    check_fits(source.model, bundle)
    layer = _layers(source.model, (layer,))[0] if layer else None
    target = None if class_name is None else class_indices(
        [class_name], source.labels, source.name, source.meta.get("num_classes"))[0]
    _say_occlusion_work(bundle, images, size, stride, pointing)
    from zfnet.progress import counted_progress

    with counted_progress(desc="occluded images", unit="img") as scored:  # a ResNet-50: minutes
        r = occlusion_report(source.model, bundle, out, n_images=images, n_pointing=pointing,
                             size=size, stride=stride, layer=layer, method=method,
                             precision=precision, batch_size=model_options.batch_size,
                             class_names=source.labels, progress=scored, target_class=target)
    click.echo("; ".join(f"{k}: {v}" for k, v in metric_words(r).items()))
    _finish(out)


def _say_occlusion_work(bundle, images: int, size: int | None, stride: int | None,  # noqa: ANN001
                        pointing: int = 0) -> None:
    """How many occluded images the figure's images and the pointing game's make (a stride of
    a quarter of the occluder gives hundreds each), and what makes them fewer: said before
    they are scored."""
    from zfnet.analyses.occlusion import gap_words, occluder_plan

    side = bundle.input_size
    try:
        size, stride, tops, lefts = occluder_plan(side, side, size, stride)
    except ValueError:
        return  # a bad geometry: the analysis says what is wrong
    n = min(images, len(bundle.val))
    pointed = min(pointing, len(bundle.val)) if hasattr(bundle.val, "sample") else 0
    per = len(tops) * len(lefts)
    images_ = f"{n} image{'s' * (n != 1)}"
    if pointed:
        images_ = f"({images_} + {pointed} for the pointing game)"
    click.echo(f"occlusion: {images_} x {per} occluder positions "
               f"({size} px, stride {stride} px{gap_words(size, stride)}) = up to "
               f"{(n + pointed) * per:,} occluded "
               "images to score (a broken file is skipped); "
               + ("a larger --stride, fewer --images or a smaller --pointing" if pointed
                  else "a larger --stride or fewer --images")
               + " make fewer", err=True)


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
@click.option("--images", default=None, type=_Whole(2),
              help="Images compared pairwise: the first N (default: every image the parts file "
                   "marks; of synthetic's faces, the paper's 5).")
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers compared (default: the paper's layers 5 and 7: pool5 and relu7 on "
                   "zfnet's models, the last stage and the classifier's input on any other CNN).")
@click.option("--draws", default=20, show_default=True, type=_Whole(1),
              help="Random-region draws for the control.")
@_PROGRESS
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
@click.option("--per-class", default=20, show_default=True, type=_Whole(1),
              help="Training images per class for each layer's linear classifier.")
@click.option("--layer", "layers", multiple=True, callback=_names, metavar="NAME[,NAME...]",
              help="Layers probed, comma-separated and/or repeated: names from `zfnet models "
                   "SOURCE`. Default: the paper's layers 1-7 on zfnet's models; any other "
                   "CNN's main stages and the vector its classifier reads.")
@_PROGRESS
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
        click.echo(f"{r.layer:<{width}}  test accuracy: "  # as transfer's rows say it
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
@click.option("--test", "n_test", default=1000, show_default=True, type=_Whole(1),
              help="Target val images scored.")
@click.option("--scratch-steps", default=300, show_default=True, type=_Whole(1),
              help="SGD steps of each from-scratch run.")
@click.option("--layer", default=None, metavar="NAME",
              help="Layers up to this one are kept (default: relu7, layers 1-7 as the paper, "
                   "on zfnet's models; another architecture's classifier input, e.g. a "
                   "ResNet's avgpool).")
@click.option("--batch-size", type=_Whole(1), default=32, show_default=True,
              help="Batch of the from-scratch runs.")
@_PROGRESS
def transfer_cmd(data: str, out: str, shots: tuple[int, ...], n_test: int,
                 scratch_steps: int, layer: str, batch_size: int, **model: Any) -> None:
    """Tables 4-5: keep layers 1-7 (a pretrained model's features), train a new softmax on N
    images per class of the target, against the same architecture trained from scratch on
    those images."""
    from zfnet import pipeline
    from zfnet.progress import bars_shown
    from zfnet.sources import data_preprocessing

    options = ModelOptions(**model, batch_size=batch_size)
    source, _ = _model_and_data(options, need_data=False)
    if layer is not None:
        (layer,) = _layers(source.model, (layer,))
    # None for a run on a named dataset: the paper's inputs, adapted to the run's
    prep = data_preprocessing(source, data)

    def row(r: Any) -> None:
        fewer = f" ({r.found} in the data)" if r.found else ""
        click.echo(f"{r.per_class:>4}/class{fewer}  test accuracy: fixed {r.fixed:.1%}  "
                   f"scratch {r.scratch_words()}  ({r.scratch_seconds:.0f} s from scratch)")

    pipeline.transfer(source.model, source.meta, data, out, shots, n_test, scratch_steps,
                      layer, batch_size=batch_size, device=options.device,
                      preprocessing=prep, name=source.name, on_row=row,
                      progress=bars_shown())  # each run from scratch: minutes, a bar
    _finish(out)


@analyze.command("randomization", short_help="Sanity checks: model and data randomisation")
@_SOURCE
@_DATA
@_OUT
@click.option("--images", default=None, type=_Whole(1),
              help="Images whose maps are compared, the scores their mean: val images "
                   "(--mode labels: training images, whose labels the copy fitted); default "
                   "16, or all where the split has fewer.")
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
@click.option("--epochs", type=_Whole(1), default=None,
              help="--mode labels: epochs of the copy (default: the run's); memorising "
                   "random labels takes longer than learning true ones.")
@click.option("--random-run", type=_OUT_DIR, default=None,
              help="--mode labels: the copy's run directory (default OUT/random-labels), "
                   "continued where it holds a checkpoint.")
@click.option("--reference", is_flag=True,
              help="--mode labels: also train the run again on the true labels from the next "
                   "seed (OUT/reference) and compare it the same way: how alike two runs' "
                   "maps are anyway.")
@_NONLINEAR
@_PROGRESS
def randomization_cmd(model_options: ModelOptions, data: str | None, out: str,
                      images: int | None,
                      layer: str | None, mode: str, steps: str, epochs: int | None,
                      random_run: str | None, reference: bool) -> None:
    """Sanity checks (Adebayo et al. 2018): do the maps change when the model is randomised
    (--mode cascading, independent), or when it learned random labels (--mode labels)?"""
    from zfnet import pipeline
    from zfnet.analyses.sanity import randomization_words
    from zfnet.progress import counted_progress

    if mode == "labels":
        _data_randomization(model_options, data, out, images or LABELS_IMAGES, layer, steps,
                            epochs, random_run, reference)
        return
    if epochs is not None or random_run is not None or reference:
        raise click.UsageError("--epochs, --random-run and --reference go with --mode labels")
    source, bundle = _model_and_data(model_options, data)
    layer = _layers(source.model, (layer,))[0] if layer else None
    with counted_progress(desc="randomising", unit="projection") as projected:  # --steps
        result = pipeline.randomization(source.model, bundle, out, images, layer, mode, steps,
                                        progress=projected)  # module on a ResNet: minutes

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

    def not_a_run(name: str) -> click.UsageError:
        return click.UsageError(f"--mode labels trains the model again on permuted labels: it "
                                f"needs a zfnet run (--checkpoint RUN), not {name}")

    given = model_options.model
    if model_options.checkpoint is None and given is not None and not Path(given).exists():
        raise not_a_run(given)  # a model by name (torchvision:…): said before it is loaded
    source, _ = _model_and_data(model_options, need_data=False)  # first: what it needs most
    if source.kind != "run":
        raise not_a_run(source.name)
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
