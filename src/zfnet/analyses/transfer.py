"""Transfer with fixed features against training from scratch (paper Tables 4–5).

The paper keeps layers 1–7 of its ImageNet-trained model fixed, trains a new softmax on top for
Caltech-101/256 with N = 15, 30, 45, 60 training images per class, and finds it far ahead of the
same architecture trained from scratch on those images (Caltech-101: 86.5% vs 46.5% at 30/class).

`transfer_study` does the same on the data at hand, for each N in `shots`:
- **fixed**: features at `layer` (default relu7, i.e. layers 1–7 kept) of N training images per
  class of the target dataset (centre crops), a softmax on them (`probes.fit_linear`), accuracy
  on the first `n_test` target val images;
- **scratch**: the same architecture, freshly initialised, trained by `zfnet.train` on the same
  N images per class (random crops and flips) for `scratch_steps` SGD steps, then scored on the
  same test images (the last epoch's model: no choice by test accuracy). A run whose loss turns
  NaN (seen with 1 image per class) is a result too: "diverged", no accuracy.

The target may be another dataset than the model was trained on — the paper's case (ImageNet →
Caltech): `adapt_bundle` replicates a grey image to RGB (or averages RGB to grey) and resizes
crops to the model's input size (bilinear, antialiased), after each dataset's own mean image has
been subtracted. Class subsets of one dataset (`classes=...` in a spec) give the other case: a
model trained on some classes, transferred to the others.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from zfnet.data import DataBundle, collate, load_dataset
from zfnet.data.spec import with_options

if TYPE_CHECKING:
    from zfnet.report import Section


class AdaptedImages(Dataset):
    """Items (x (C, S, S), y) of `dataset` with channels and side changed to (channels, size).

    1 → 3 channels replicates the grey image, 3 → 1 averages; the side is resized bilinearly
    (antialiased). Mean subtraction happened before, so "0" stays each dataset's mean.
    """

    def __init__(self, dataset: Dataset, channels: int, size: int) -> None:
        self.dataset = dataset
        self.channels = channels
        self.size = size

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        item = self.dataset[i]
        if item is None:  # a broken file, skipped by `collate`
            return None
        x, y = item
        return adapt_images(x, self.channels, self.size), y

    @property
    def mode(self) -> str:
        """The wrapped dataset's crop mode ("train", "centre", ...)."""
        return self.dataset.mode  # type: ignore[attr-defined]

    def with_mode(self, mode: str) -> AdaptedImages:
        """The same adaptation of `dataset.with_mode(mode)` (e.g. "centre" crops)."""
        return AdaptedImages(self.dataset.with_mode(mode), self.channels, self.size)  # type: ignore[attr-defined]


def adapt_images(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """(…, C, S, S) -> (…, channels, size, size); see `AdaptedImages`."""
    c = x.shape[-3]
    if c != channels:
        if c == 1:
            x = x.expand(*x.shape[:-3], channels, *x.shape[-2:])
        elif channels == 1:
            x = x.mean(-3, keepdim=True)
        else:
            raise ValueError(f"cannot adapt {c}-channel images to {channels} channels "
                             "(only grey <-> RGB)")
    if x.shape[-1] != size or x.shape[-2] != size:
        lead = x.shape[:-3]
        x = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True).reshape(*lead, -1, size, size)
    return x.contiguous()


class Repeated(Dataset):
    """`dataset` repeated `times` times (item i is item i mod len): longer epochs for tiny sets."""

    def __init__(self, dataset: Dataset, times: int) -> None:
        self.dataset = dataset
        self.times = max(1, int(times))

    def __len__(self) -> int:
        return len(self.dataset) * self.times  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i % len(self.dataset)]  # type: ignore[arg-type]


def adapt_bundle(bundle: DataBundle, channels: int, size: int) -> DataBundle:
    """`bundle` with its train and val items adapted to (channels, size); unchanged if they fit."""
    if bundle.in_channels == channels and bundle.input_size == size:
        return bundle
    mean = adapt_images(bundle.mean, channels, round(size * bundle.full_size / bundle.input_size))
    return replace(bundle, train=AdaptedImages(bundle.train, channels, size),  # type: ignore[arg-type]
                   val=AdaptedImages(bundle.val, channels, size),  # type: ignore[arg-type]
                   in_channels=channels, input_size=size, full_size=mean.shape[-1], mean=mean)


@dataclass
class TransferRow:
    """Test accuracy with N training images per class: fixed features + softmax vs scratch
    (None: the from-scratch run diverged, its loss NaN or inf)."""

    per_class: int
    n_train: int
    n_test: int
    fixed: float
    scratch: float | None
    scratch_seconds: float
    found: str = ""  # the images per class the data had where fewer than `per_class`: "20", "9-20"
    stuck: bool = False  # the from-scratch run's training loss stayed at ln(classes)

    def per_class_words(self) -> str:
        """`per_class`, or where the data had fewer: "100 (of which 20 in the data)"."""
        return f"{self.per_class} (of which {self.found} in the data)" if self.found \
            else str(self.per_class)

    def scratch_words(self) -> str:
        """The from-scratch accuracy as a percentage, or "diverged (NaN loss)"; "did not
        learn" where its loss stayed at ln(classes)."""
        if self.scratch is None:
            return "diverged (NaN loss)"
        return f"{100 * self.scratch:.1f}%" + (" (did not learn)" if self.stuck else "")


def transfer_study(
    model: torch.nn.Module,
    target: str,
    shots: Sequence[int],
    run_dir: str | Path,
    *,
    model_name: str,
    model_opts: dict[str, Any] | None = None,
    layer: str = "relu7",
    n_test: int = 1000,
    scratch_steps: int = 300,
    batch_size: int = 32,
    lr: float = 0.01,
    seed: int = 0,
    device: str = "cpu",
    in_channels: int | None = None,
    input_size: int | None = None,
    preprocessing: Any = None,
    on_row: Callable[[TransferRow], None] | None = None,
    progress: bool = False,
) -> list[TransferRow]:
    """Tables 4–5 for dataset spec `target`: for each N in `shots`, fixed layers 1–7 + a new
    softmax, against `model_name` (with `model_opts`) trained from scratch on the same N images
    per class for `scratch_steps` steps of `batch_size` (cosine schedule from `lr`), on
    `device` (the model's features are read where the model is).

    `model` must take `layer` (see `zfnet.models.layer_info`). The target's images are the
    paper's (its mean image subtracted) adapted to the model's input channels and size, or,
    with `preprocessing` (`zfnet.data.preprocess.Preprocessing`: a pretrained model's own), that
    model's inputs, for both arms. Scratch runs are written under `run_dir`/transfer/.
    `on_row` is called with each row as it is done, and `progress` draws the from-scratch
    runs' progress bars (each takes minutes).
    """
    from zfnet.analyses.probes import extract_features, fit_linear
    from zfnet.models import resolve_layer, zfnet_config
    from zfnet.sources import architecture_name
    from zfnet.train import NonFiniteLossError, TrainConfig, train
    from zfnet.train.logs import stuck_at_chance

    architecture_name(model_name)  # one zfnet can train from scratch, or a ValueError
    resolve_layer(model, layer)  # one the model has, or an UnknownLayerError naming them
    config = zfnet_config(model)
    channels = in_channels or (int(config.in_channels) if config else None)
    size = input_size or (int(config.input_size) if config else None)
    if preprocessing is not None:  # the images become the model's own inputs
        channels, size = preprocessing.in_channels, preprocessing.crop
    if channels is None or size is None:
        raise ValueError(f"in_channels and input_size are needed for {type(model).__name__}: "
                         "the run's (its checkpoint's meta)")
    from zfnet.data import list_datasets
    from zfnet.data.spec import parse_spec

    parsed = parse_spec(target)
    if parsed.name not in list_datasets():
        load_dataset(target)  # its error names the spec as given, and the valid ones
    if parsed.name == "images":
        raise ValueError(f"transfer trains a new softmax on labelled images, and {target} has "
                         "no labels; give imagefolder:DIR (train/ and val/ class folders), "
                         "shards:DIR, fashion-mnist, synthetic")
    if "per_class" in parsed.options:
        raise ValueError(f"option per_class in {target!r} does not apply: transfer takes the "
                         "images per class from its shots (--shots 1,5,20)")
    twice = sorted({n for n in shots if list(shots).count(n) > 1})
    if twice:
        raise ValueError(f"shots {', '.join(map(str, twice))} given twice; give each once")
    if small := [n for n in shots if n < 1]:
        raise ValueError(f"shots must be >= 1 image per class, got {small[0]}")
    # The largest N's data first: what it cannot be (too large to hold, no training split) is
    # said before the smaller ones' runs, not after them.
    largest = max(shots, default=1)
    ahead = {largest: load_dataset(with_options(target, per_class=largest),
                                   preprocessing=preprocessing)}
    if len(ahead[largest].train) == 0:  # a labelled test set alone (imagefolder:DIR, val/ only)
        raise ValueError(f"transfer trains on the training split, and {target} has none "
                         "(val/ alone); give a folder with train/ as well")
    rows: list[TransferRow] = []
    for n in shots:
        loaded = ahead.pop(n, None) or load_dataset(with_options(target, per_class=n),
                                                    preprocessing=preprocessing)
        found = _fewer_per_class(loaded.train, n)
        few = adapt_bundle(loaded, channels, size)  # with `preprocessing`: as it is
        test = Subset(few.val, range(min(n_test, len(few.val))))
        kw: dict[str, Any] = dict(batch_size=128, collate_fn=collate)
        ftr, ytr = extract_features(model, DataLoader(few.train.with_mode("centre"), **kw),
                                    [layer])
        fte, yte = extract_features(model, DataLoader(test, **kw), [layer])
        fixed = fit_linear("softmax", ftr[layer], ytr, fte[layer], yte, seed=seed)

        n_train = len(few.train)
        bs = min(batch_size, n_train)
        # Epochs of at least ~10 steps: a tiny set is repeated rather than evaluated every step.
        times = max(1, math.ceil(10 * bs / n_train))
        epochs = max(1, round(scratch_steps / ((n_train * times) // bs)))
        scratch_bundle = replace(few, train=Repeated(few.train, times), val=test)
        out = Path(run_dir) / "transfer" / f"scratch_{n}_per_class"
        if out.exists():  # this analysis's own output of an earlier call: redone
            shutil.rmtree(out)
        t0 = time.perf_counter()
        try:
            summary = train(TrainConfig(
                data=few.spec, model=model_name, out=str(out), model_opts=dict(model_opts or {}),
                epochs=epochs, batch_size=bs, lr=lr, schedule="cosine", seed=seed,
                # only the last model is scored: validating every epoch cost as much as training
                val_every=epochs, keep_epochs=(), progress=progress, tensorboard=False,
                device=device,
            ), bundle=scratch_bundle)
            scratch: float | None = 1.0 - float(summary["final"]["val_top1_error"])
            stuck = stuck_at_chance(float(summary["final"]["train_loss"]), few.num_classes)
        except NonFiniteLossError:
            scratch, stuck = None, False
        rows.append(TransferRow(n, n_train, len(test), fixed, scratch,
                                time.perf_counter() - t0, found, stuck))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def _fewer_per_class(train: Dataset, asked: int) -> str:
    """"" where every class of `train` has `asked` images; else their counts, "20" or "9-20"."""
    from collections import Counter

    targets = getattr(train, "targets", None)
    if not targets:
        return ""
    counts = Counter(int(t) for t in targets).values()
    lo, hi = min(counts), max(counts)
    if lo == hi == asked:
        return ""
    return str(lo) if lo == hi else f"{lo}-{hi}"


# the paper's Tables 4-5: (dataset, training images per class) -> accuracy % of its ImageNet
# features with a new softmax, and of the same network trained from scratch
PAPER_TABLES45 = {
    ("Caltech-101", 15): (83.8, 22.8), ("Caltech-101", 30): (86.5, 46.5),
    ("Caltech-256", 15): (65.7, 9.0), ("Caltech-256", 30): (70.6, 22.5),
    ("Caltech-256", 45): (72.7, 31.2), ("Caltech-256", 60): (74.2, 38.8),
}


def _here(rows: Sequence[TransferRow]) -> str:
    """What this run's table shows against the paper's finding, where it differs: the Ns at
    which the fixed features score below the model trained from scratch."""
    below = [r for r in rows if r.scratch is not None and r.fixed < r.scratch]
    if not below:
        return ""
    at = ", ".join(f"N = {r.per_class} ({100 * r.fixed:.1f}% against {100 * r.scratch:.1f}%)"
                   for r in below)
    return (f" Here the fixed features score below the model trained from scratch at {at}: "
            "this source data's features carry over to this target less than ImageNet's did "
            "to Caltech.")


def transfer_section(run_dir: str | Path, rows: Sequence[TransferRow], source: str,
                     target: str, layer: str = "relu7", order: int = 80) -> Section:
    """Write the Tables 4–5 section: accuracy per N, fixed features vs from scratch."""
    from zfnet.report import Section, Table, write_section

    table = Table(
        ["images per class", "train images", "test images",
         f"test accuracy: layers up to {layer} fixed + new softmax",
         "test accuracy: same model trained from scratch"],
        [[r.per_class_words() if r.found else r.per_class, r.n_train, r.n_test,
          f"{100 * r.fixed:.1f}%", r.scratch_words()] for r in rows],
        f"source: {source}; target: {target}",
    )
    paper = Table(
        ["the paper's data", "images per class", "ImageNet features + new softmax",
         "trained from scratch"],
        [[data, n, f"{fixed:.1f}%", f"{scratch:.1f}%"]
         for (data, n), (fixed, scratch) in PAPER_TABLES45.items()],
        "the paper's Tables 4-5 (Caltech-101, Caltech-256): its ImageNet-trained layers 1-7 "
        "kept fixed (its Table 6, PASCAL 2012 with the same features: mean AP 79.0%)",
    )
    section = Section(
        key="transfer", title="Transfer with fixed features vs from scratch (Tables 4–5)",
        order=order,
        caption=(
            "The model's layers up to the named one are kept as trained on the source data; a "
            "new softmax is trained on N images per class of the target data and tested on its "
            "held-out images. Beside it, the same architecture trained from scratch on the same "
            "N images per class (random crops and flips, fixed number of SGD steps, last model "
            "scored). The paper (second table; Caltech-101, 30 images/class): 86.5% with "
            "ImageNet features against 46.5% from scratch — features learned on a large set "
            "carry over, and the gap is largest when N is small." + _here(rows) + " Target "
            "images of another shape are adapted to the model's input: grey replicated to RGB "
            "or RGB averaged to grey, and resized."
            + (" A from-scratch run marked diverged stopped on a NaN loss: it has no model "
               "to score."
               if any(r.scratch is None for r in rows) else "")
            + (" A from-scratch run marked 'did not learn' ended with its training loss at ln "
               "of the number of classes, the loss of outputs that are the same for every "
               "image: its score is chance, not what the architecture can learn (a ReLU "
               "before its logits that never fires?)."
               if any(r.stuck for r in rows) else "")
        ),
        tables=[table, paper],
    )
    write_section(run_dir, section)
    return section
