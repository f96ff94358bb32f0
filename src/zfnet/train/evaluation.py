"""`evaluate_checkpoint`: top-1 / top-5 error, per-class accuracy and confusion matrix of a
trained model on a dataset's validation split, centre crop or the paper's 10 crops (Table 2);
`evaluate_source`: the same for any model a source names (`zfnet.sources`: a pretrained
torchvision or timm model, say), with its own preprocessing."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Subset

from zfnet.data.bundle import ClassNamesWarning, require_labels
from zfnet.data.loaders import (
    as_inputs,
    collate_for,
    for_loader,
    loader_kind,
    resolve_workers,
)
from zfnet.data.mixed import measure_share
from zfnet.data.words import labels_of
from zfnet.data.workers import Loader
from zfnet.train.checkpoint import (
    load_model,
    read_mean_image,
    read_train_state,
    saved_preprocessing,
)
from zfnet.train.compiled import check_compile, compile_model
from zfnet.train.distributed import DistInfo, all_reduce_mean, resolve_device
from zfnet.train.metrics import per_class_accuracy
from zfnet.train.recipe import amp_dtype_for, evaluate

if TYPE_CHECKING:
    from torch import nn

    from zfnet.data import DataBundle
    from zfnet.sources import Source


def evaluate_checkpoint(
    path: str | Path,
    spec: str | None = None,
    ten_crop: bool = False,
    *,
    batch_size: int = 128,
    device: str = "auto",
    workers: int | str = "auto",
    loader: str = "auto",
    amp: str = "auto",
    channels_last: bool = True,
    live_weights: bool = False,
    strict: bool = False,
    compile: bool = False,
    bundle: Any = None,
    info: DistInfo | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the checkpoint at `path` (run dir, checkpoint dir or weights file) on the
    validation split of dataset `spec` (None: the dataset the model was trained on).

    `workers` (a number or "auto") and `loader` (auto, cpu, gpu): the input pipeline, as in
    training (`zfnet.data.loaders`). `progress`: a bar over the batches (the main process's).

    With `ten_crop`, each image is scored by the average softmax over its 4 corner and centre
    crops and their mirror images (paper Sec. 3). `amp` and `channels_last` as in training (the
    defaults are the trainer's; "off" scores in float32). `live_weights`: for a run trained with
    `--ema`, score the live weights instead of their average (which the checkpoint's
    model.safetensors holds). `strict`: a broken image file raises `BadImageError` naming it,
    instead of being skipped with a warning and counted. `compile`: score with the
    `torch.compile`d model (`zfnet.train.compiled`). `bundle` may be given instead of loading
    `spec`.

    Several processes (`info` from `zfnet.train.distributed.processes`, under torchrun; its
    device replaces `device`): process r of w scores val items r, r + w, r + 2w, … (each item
    once, no padding), and the counts, the confusion matrix, the loss and the broken files are
    summed over the processes; every process returns the figures of the whole split, the same
    counts and confusion matrix as one process (the loss up to float rounding).

    Returns a JSON-ready dict: checkpoint, model, epoch, data, ten_crop, amp, live_weights,
    n (images scored), skipped (broken files left out), loss, top1_error, top5_error,
    class_names, class_labels (the names as shown: with their words, `words=FILE`),
    per_class_accuracy ({name: accuracy}), confusion_matrix (rows: true class, columns:
    predicted).
    """
    info = info or DistInfo(0, 1, 0, resolve_device(device))
    dev = info.device
    if compile:
        check_compile(dev)
    model, meta = load_model(path, device=dev)
    if live_weights:
        if not meta.get("train_config", {}).get("ema"):
            raise ValueError(f"{meta['checkpoint']} is not from a run with --ema: its weights "
                             "are the live ones already (omit live_weights)")
        model.load_state_dict(read_train_state(meta["checkpoint"])["live_weights"])
    given, spec = spec, spec or meta["data"]
    if bundle is None:
        from zfnet.data import load_dataset

        try:
            # a folder or shards minus the run's own mean image, not theirs; a model
            # fine-tuned from weights: their inputs
            bundle = load_dataset(spec, ten_crop=ten_crop, strict=strict,
                                  mean_image=read_mean_image(meta["checkpoint"]),
                                  mean_input=meta.get("input_size"),
                                  preprocessing=saved_preprocessing(meta),
                                  read_train=False)  # the val split alone
        except FileNotFoundError as e:
            if given:
                raise
            # a path the user did not type: the run's own dataset, moved or on another machine
            raise FileNotFoundError(f"{e} (the dataset the run in {meta['checkpoint']} was "
                                    f"trained on, {spec!r}; give its new place with --data)"
                                    ) from None
    require_labels(bundle)
    n_out = meta.get("num_classes") or bundle.num_classes
    if bundle.num_classes != n_out:
        raise ValueError(
            f"dataset {spec!r} has {bundle.num_classes} classes but the model in "
            f"{meta['checkpoint']} has {n_out} outputs (it was trained on {meta.get('data')!r})"
        )
    trained = meta.get("class_names")
    if trained and list(trained) != list(bundle.class_names):
        differ = [(a, b) for a, b in zip(trained, bundle.class_names, strict=True) if a != b]
        warnings.warn(
            f"the run's classes are not those of dataset {spec!r}: output k is scored as the "
            f"dataset's class k, and {len(differ)} of {n_out} differ ("
            + ", ".join(f"{a!r} vs {b!r}" for a, b in differ[:3])
            + (", ..." if len(differ) > 3 else "") + ")", ClassNamesWarning, stacklevel=2)
    if bundle.input_size != meta.get("input_size", bundle.input_size):
        raise ValueError(
            f"dataset {spec!r} gives {bundle.input_size} px crops but the model in "
            f"{meta['checkpoint']} expects {meta['input_size']} px"
        )
    r = _scores(model, bundle, spec, info, batch_size=batch_size, workers=workers, loader=loader,
                amp=amp, channels_last=channels_last, compile=compile,
                progress=progress)
    return {"checkpoint": meta["checkpoint"], "model": meta["model"], "epoch": meta.get("epoch"),
            "step_in_epoch": meta.get("step_in_epoch", 0), "data": spec, "ten_crop": ten_crop,
            "amp": amp, "live_weights": live_weights, **r}


def evaluate_source(
    source: Source,
    spec: str | None = None,
    ten_crop: bool = False,
    *,
    batch_size: int = 128,
    workers: int | str = "auto",
    loader: str = "auto",
    amp: str = "auto",
    channels_last: bool = True,
    strict: bool = False,
    compile: bool = False,
    info: DistInfo | None = None,
    by_name: bool | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """`evaluate_checkpoint` for the model of `source` (`zfnet.sources.load_source`, on the
    device `info` names), on dataset `spec`'s validation split made into its inputs by its own
    preprocessing (None: a zfnet run's own dataset). Output k of the model is scored as the
    dataset's class k: its classes in sorted folder order, as ImageNet's WNIDs give torchvision's
    and timm's 1000 outputs — or, `by_name`, the output that `source.labels` names as the
    class (its order is then free, and a dataset of some of the model's classes is scored
    among those: key "matched" says how many of how many). `by_name` None: by name where the
    model's class names name every class of the dataset (a Hugging Face model's `id2label`,
    a weights' categories: sorted folders need not be its output order), else by position.
    The same keys as
    `evaluate_checkpoint`; checkpoint and epoch None unless the source is a run, live_weights
    False."""
    from zfnet.sources import load_data

    info = info or DistInfo(0, 1, 0, next(source.model.parameters()).device)
    bundle = load_data(source, spec, ten_crop=ten_crop, strict=strict, read_train=False)
    spec = spec or source.meta.get("data")
    n_out = source.meta.get("num_classes")
    require_labels(bundle)
    model, matched = source.model, None
    if by_name is None:
        by_name = bool(source.labels) and source.kind != "run" and _names_every_class(
            source.labels, bundle.class_names)
    if by_name and source.labels:
        model = ClassesByName(source.model, _outputs_by_name(source, bundle, spec))
        matched = [bundle.num_classes, len(source.labels)]
    elif n_out is not None and n_out != bundle.num_classes:
        raise ValueError(
            f"{source.name} has {n_out} outputs but dataset {spec!r} has {bundle.num_classes} "
            "classes: output k is scored as the dataset's class k (sorted folder names; "
            "ImageNet's WNIDs sorted are torchvision's and timm's order); give the model's "
            "class names with --labels FILE (one a line, in output order) to score each class "
            "folder by the output of its name")
    from zfnet.pipeline import check_fits

    check_fits(source.model, bundle)  # a zfnet run given as --model, on data of another shape
    if compile:
        check_compile(info.device)
    r = _scores(model, bundle, spec, info, batch_size=batch_size, workers=workers,
                loader=loader, amp=amp, channels_last=channels_last, compile=compile,
                progress=progress)
    return {"checkpoint": source.meta.get("checkpoint"), "model": source.name,
            "epoch": source.meta.get("epoch"), "step_in_epoch": source.meta.get("step_in_epoch", 0),
            "data": spec, "ten_crop": ten_crop, "amp": amp,
            "live_weights": False, "matched": matched, **r}


class ClassesByName(torch.nn.Module):
    """A model's scores of some of its outputs, in another order: column j is output
    `index[j]` (the dataset's class j, found by name among the model's)."""

    def __init__(self, model: torch.nn.Module, index: list[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.index.to(x.device)]


def _names_every_class(labels: list[str], classes: list[str]) -> bool:
    """Whether the model's class names (`label_index`) name every class."""
    from zfnet.analyses.classes import label_index

    names = label_index(labels)
    return bool(classes) and all(c in names for c in classes)


def _outputs_by_name(source: Source, bundle: DataBundle, spec: str | None) -> list[int]:
    """For each of the dataset's classes, the model's output of that name (`source.labels`),
    or, where each label's first word is its own, of that first word (Kaggle's
    LOC_synset_mapping.txt: `n01440764 tench, Tinca tinca`, a WNID and its words a line); a
    class it does not name is an error listing them."""
    from zfnet.analyses.classes import label_index

    names = label_index(list(source.labels or []))
    missing = [c for c in bundle.class_names if c not in names]
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5
                                          else "")
        raise ValueError(f"dataset {spec!r} has classes that the labels of {source.name} do not "
                         f"name: {shown}; its class folders must be named as the labels are "
                         f"(the labels begin: {', '.join((source.labels or [])[:5])})")
    labels = list(source.labels or [])
    for c in bundle.class_names:
        same = [k for k, name in enumerate(labels) if name == c]
        if len(same) > 1:  # ImageNet's names hold two cranes (a bird, a machine)
            raise ValueError(f"dataset {spec!r} has class {c!r}, which names {len(same)} "
                             f"outputs of {source.name} ({', '.join(map(str, same))}); give "
                             "--labels a file whose names are distinct, and name the class "
                             "folder as one of them")
    return [names[c] for c in bundle.class_names]


def _scores(model: nn.Module, bundle: DataBundle, spec: str, info: DistInfo, *,
            batch_size: int, workers: int | str, loader: str, amp: str, channels_last: bool,
            compile: bool, progress: bool = False) -> dict[str, Any]:
    """The figures of `model` on `bundle`'s validation split (see `evaluate_checkpoint`)."""
    dev = info.device
    kind = loader_kind(loader, bundle.val, dev, spec=spec)
    n_workers = resolve_workers(workers, dev)
    host_share = 0.0
    if kind == "mixed":  # the share of images the workers decode, measured here
        host_share = measure_share(
            bundle.val, dev, n_workers, batch_size=batch_size,
            reduce=lambda p: all_reduce_mean(p, info)).share
    val = for_loader(kind, bundle.val, share=host_share)
    part = val
    if info.enabled:  # a strided share, as training's validation: no item twice, none padded
        part = Subset(val, range(info.rank, len(val), info.world_size))
    batches = as_inputs(Loader(part, batch_size=batch_size, shuffle=False,
                               num_workers=n_workers,
                               collate_fn=collate_for(val), pin_memory=dev.type == "cuda"),
                        val, dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = compile_model(model)
    r = evaluate(model, batches, bundle.num_classes, info, amp_dtype_for(amp, dev),
                 channels_last, progress=progress and info.is_main)
    cm: torch.Tensor = r["confusion"]
    names = list(bundle.class_names)
    return {
        "n": r["n"], "skipped": r["skipped"], "loss": r["loss"],
        "top1_error": r["top1_error"], "top5_error": r["top5_error"], "class_names": names,
        "class_labels": labels_of(bundle),  # as shown: with their words (words=FILE)
        "per_class_accuracy": dict(zip(names, per_class_accuracy(cm), strict=True)),
        "confusion_matrix": cm.tolist(),
    }
