"""What a model predicts on your images: each image's k most probable classes, by the softmax of
its outputs over the centre crop (or averaged over the paper's 10 crops, Sec. 3), named by the
model's class names where it has them. `zfnet predict` prints them and writes them as CSV or
JSON; the first thing to look at before asking a model why (`zfnet project --class`)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from zfnet.activations import to_model
from zfnet.atomic import cannot_write, write_text_atomic
from zfnet.data.workers import Loader
from zfnet.models import eval_mode
from zfnet.train.recipe import crop_probabilities

FORMATS = (".csv", ".json")


@dataclass(frozen=True)
class Prediction:
    """One image's top classes: `classes` (output indices, most probable first), their
    `names` (None where the model's classes have none) and `probabilities`; `label`: the
    image's own class in its dataset, where it has one."""

    image: str
    classes: list[int]
    names: list[str | None]
    probabilities: list[float]
    label: str | None = None

    def words(self) -> str:
        """'tabby 45.2%, tiger cat 21.0%, ... (label: tabby)' (a class without a name by its
        number)."""
        return ", ".join(f"{n if n is not None else f'class {c}'} {p:.1%}" for c, n, p in zip(
            self.classes, self.names, self.probabilities, strict=True)) + (
            f" (label: {self.label})" if self.label is not None else "")


class _Indexed(Dataset):
    """`images`' items with their index: (i, item), item None for a file that cannot be read."""

    def __init__(self, images: Dataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.images[i]


def _collate(batch: Sequence[tuple[int, Any]]) -> tuple[list[int], torch.Tensor | None]:
    """(indices of the readable items, their inputs stacked); None where none was readable."""
    kept = [(i, item[0]) for i, item in batch if item is not None]
    if not kept:
        return [], None
    return [i for i, _ in kept], torch.stack([torch.as_tensor(x) for _, x in kept])


def check_output(path: str | Path) -> Path:
    """`path` as a predictions file: .csv or .json, where a folder can hold it (its folders
    are made when it is written); checked before any work."""
    given = str(path)
    path = Path(path).expanduser()
    formats = " or ".join(FORMATS)
    if given.endswith(("/", os.sep)) or path.is_dir():
        raise ValueError(f"{given} is a folder; give a file ending in {formats}, e.g. "
                         f"{path / 'predictions.csv'}")
    if path.suffix.lower() not in FORMATS:
        ends = f"ends in {path.suffix}" if path.suffix else "has no extension"
        raise ValueError(f"predictions file {given} {ends}; give a file ending in {formats}")
    if why := cannot_write(path, folder=False):
        raise ValueError(f"{why}; write the predictions elsewhere")
    return path


@torch.inference_mode()
def predict(model: nn.Module, images: Dataset, *, top: int = 5,
            labels: Sequence[str] | None = None, names: Sequence[str] | None = None,
            batch_size: int = 64, workers: int = 0,
            progress: Callable[[int], None] | None = None,
            amp_dtype: torch.dtype | None = None,
            ) -> tuple[list[Prediction], list[str]]:
    """The `top` most probable classes of each image of `images` (items (x, y): x a centre
    crop (C, S, S), or the 10 crops (10, C, S, S), whose probabilities are averaged; None for
    a file that cannot be read). `labels`: the model's class names, one per output. `names`:
    each image's name (default: its index). `progress(n)`: called with each batch's number of
    images. `amp_dtype`: the model runs under autocast in it (bf16, fp16 on CUDA; None:
    its own dtype), the softmax in float32. Returns (predictions in the images' order, the
    names of those that could not be read)."""
    loader = Loader(_Indexed(images), batch_size=batch_size, num_workers=workers,
                    collate_fn=_collate)
    found: list[Prediction] = []
    unreadable: list[str] = []
    total = len(images)  # type: ignore[arg-type]

    def name(i: int) -> str:
        return names[i] if names else f"image {i}"

    classes_of = list(getattr(images, "classes", None) or [])
    targets = getattr(images, "targets", None)

    def label(i: int) -> str | None:  # the image's class in a labelled dataset
        t = int(targets[i]) if targets is not None else -1
        return classes_of[t] if 0 <= t < len(classes_of) else None

    dev = next((t.device for t in model.parameters()), torch.device("cpu"))
    autocast = (torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype is not None
                else nullcontext())
    with eval_mode(model):
        for b, (idx, x) in enumerate(loader):  # in order: batch b holds images b*size...
            lo, hi = b * batch_size, min((b + 1) * batch_size, total)
            kept = set(idx)
            unreadable += [name(i) for i in range(lo, hi) if i not in kept]
            if x is not None:
                with autocast:
                    p = crop_probabilities(model, x, lambda c: to_model(model, c)).cpu()
                if labels and len(labels) != p.shape[1]:
                    raise ValueError(f"{len(labels)} class names for a model with {p.shape[1]} "
                                     "outputs: give one name per output, in order")
                values, classes = p.topk(min(top, p.shape[1]), dim=1)
                found += [Prediction(name(i), c, [labels[k] if labels else None for k in c], v,
                                     label(i))
                          for i, c, v in zip(idx, classes.tolist(), values.tolist(),
                                             strict=True)]
            if progress:
                progress(hi - lo)
    return found, unreadable


def write_predictions(predictions: Sequence[Prediction], path: str | Path,
                      about: dict[str, Any] | None = None) -> Path:
    """Write `predictions` to `path`: CSV (image, rank, class, name, probability, and label
    where the images have labels: a line per class) or JSON ({"images": [{"image", ["label",]
    "top": [{"class", "name", "probability"}]}]}, `about` beside it: the model, the crops),
    replacing the file atomically."""
    labelled = any(p.label is not None for p in predictions)
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "rank", "class", "name", "probability"]
                   + (["label"] if labelled else []))
        for p in predictions:
            for rank, (c, n, v) in enumerate(zip(p.classes, p.names, p.probabilities,
                                                 strict=True), 1):
                w.writerow([p.image, rank, c, "" if n is None else n, f"{v:.6f}"]
                           + ([p.label or ""] if labelled else []))
        text = buf.getvalue()
    else:
        text = json.dumps({**(about or {}), "images": [
            {"image": p.image, **({"label": p.label} if labelled else {}), "top": [
                {"class": c, "name": n, "probability": round(v, 6)}
                for c, n, v in zip(p.classes, p.names, p.probabilities, strict=True)]}
            for p in predictions]}, indent=1) + "\n"
    return write_text_atomic(path, text)
