"""`DataBundle`: what `load_dataset` returns, the same for every dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from zfnet.data.preprocess import Preprocessing
from zfnet.data.transforms import CropDataset


@dataclass
class DataBundle:
    """A dataset ready for training and evaluation in the paper's pixel convention, or in one
    model's (`preprocessing`).

    `train` items are (x float32 (C, S, S), y int) with random crops and flips; `val` items
    are centre crops, or (10, C, S, S) with `ten_crop=True` (paper Sec. 3). Inputs are
    0..255 minus the crop of `mean`, the per-pixel mean image of the training set; with a
    `preprocessing`, (pixels - mean) / std of that model, its images fitted to its channels and
    sizes (`input_size` = its crop, `full_size` = its resize, `mean` its mean broadcast).
    """

    spec: str  # the spec string it came from
    train: CropDataset
    val: CropDataset
    num_classes: int  # 0 for unlabelled images (`images:DIR`; their labels are -1)
    class_names: list[str]
    in_channels: int  # 3 for RGB, 1 for Fashion-MNIST
    input_size: int  # S, the crop side the model sees
    full_size: int  # side before cropping
    mean: torch.Tensor  # (C, full_size, full_size) float32
    preprocessing: Preprocessing | None = None  # the model's, when loaded for one
    # each class's words where the spec's `words=FILE` names it (`zfnet.data.words`), else None
    class_words: list[str | None] | None = None
    # `load_dataset(outline=True)`: its classes, sizes and images listed, no image decoded (an
    # imagefolder's mean image not made yet: zeros), for the checks before that pass; this
    # makes the mean from the files listed (`with_mean_image`)
    make_mean: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def outline(self) -> bool:
        """True for an outline (`load_dataset(outline=True)`) whose mean image is not made."""
        return self.make_mean is not None

    def with_mean_image(self) -> DataBundle:
        """An outline made whole: its mean image computed (or read from its cache) from the
        training files it lists, not listed again; any other bundle as it is."""
        if self.make_mean is None:
            return self
        mean = self.make_mean()
        return replace(self, mean=mean, train=self.train.with_mean(mean),
                       val=self.val.with_mean(mean), make_mean=None)

    def class_label(self, k: int) -> str:
        """Class k as a person reads it: "tench (n01440764)" with its words, else its name."""
        from zfnet.data.words import shown

        return shown(self.class_names[k], self.class_words[k] if self.class_words else None)

    @property
    def class_labels(self) -> list[str]:
        """Every class as `class_label` gives it (the class names, where no words are known)."""
        return [self.class_label(k) for k in range(len(self.class_names))]

    def raw_val(self, i: int) -> torch.Tensor:
        """Displayable uint8 (C, S, S) centre crop of val image i (no mean subtracted)."""
        if not 0 <= i < len(self.val):
            raise IndexError(f"val index {i} out of range 0..{len(self.val) - 1}")
        return self.val.raw(i)

    @property
    def input_preprocessing(self) -> Preprocessing:
        """How this bundle's pixels became its inputs, as a `Preprocessing` (its `normalize`,
        `to_pixels` and `pixel_scale` hold for every item): the model's, or the paper's
        convention with this dataset's mean image."""
        if self.preprocessing is not None:
            return self.preprocessing
        return Preprocessing.from_mean_image(self.mean, self.input_size)


def fitted(preprocessing: Preprocessing) -> dict:
    """`CropDataset` arguments that make it yield `preprocessing`'s model inputs."""
    return {"mean": preprocessing.full_mean(), "input_size": preprocessing.crop,
            "preprocessing": preprocessing}


def bundle_geometry(preprocessing: Preprocessing | None, **own) -> dict:
    """`DataBundle`'s in_channels, input_size, full_size, mean (and preprocessing): the
    dataset's `own` values, or the model's when fitted to one."""
    if preprocessing is None:
        return own
    p = preprocessing
    return {"in_channels": p.in_channels, "input_size": p.crop, "full_size": p.resize,
            "mean": p.full_mean(), "preprocessing": p}


def require_labels(bundle: DataBundle, purpose: str = "score against") -> None:
    """ValueError for a dataset without labels (`images:DIR`, 0 classes): nothing to `purpose`;
    says which datasets have them."""
    if bundle.num_classes == 0:
        raise ValueError(_no_labels(getattr(bundle, "spec", ""), purpose))


def require_labelled_spec(spec: str, purpose: str = "score against") -> None:
    """`require_labels` from the spec alone, before the dataset is loaded (an `images:DIR`
    loaded for the paper's inputs would first compute its mean image and cache it in DIR)."""
    from zfnet.data.spec import parse_spec

    if parse_spec(spec).name == "images":
        raise ValueError(_no_labels(spec, purpose))


def val_words(bundle: DataBundle) -> str:
    """How messages name the images the analyses take: "the val split of 'SPEC'", or for a
    folder of images without labels (`images:DIR`, all of it the val split) "the images of
    'images:DIR'"."""
    spec = getattr(bundle, "spec", "")
    return f"the images of {spec!r}" if bundle.num_classes == 0 else \
        f"the val split of {spec!r}"


def _no_labels(spec: str, purpose: str) -> str:
    return (f"dataset {spec!r} has no labels to {purpose} (images:DIR is for looking inside a "
            "model); give labelled images: imagefolder:DIR (DIR/train/<class>/*, "
            "DIR/val/<class>/*), shards:DIR, fashion-mnist, synthetic")


class ClassNamesWarning(UserWarning):
    """A model scored on a dataset whose class names are not the ones it was trained on."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)
