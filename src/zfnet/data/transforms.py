"""The paper's input pipeline (Sec. 3) on full-size images, and the dataset base class.

Every dataset stores (or decodes) images at `full_size` (256 for ImageNet) as uint8 and
hands the model crops of side `input_size` (224), in the paper's pixel convention:
values 0..255 (no /255) minus the per-pixel mean image of the training set, where the crop
of the mean that matches the crop of the image is subtracted.

- train: a random `input_size` crop, horizontally flipped with probability 1/2;
- centre: the centre crop (evaluation, and `DataBundle.raw_val` for display);
- ten_crop: the 4 corner crops and the centre crop, then the same five of the horizontally
  flipped image, in torchvision's `ten_crop` order (top-left, top-right, bottom-left,
  bottom-right, centre, then the flipped image's five); the paper averages their softmax.

With a model's `Preprocessing` (`zfnet.data.preprocess`) a dataset yields that model's inputs
instead: each image is fitted to the model's channels and `resize` side, and
x = (pixels - mean) / std with its per-channel mean (or mean image) and std.

Random crops and flips draw from torch's global RNG, which a DataLoader seeds per worker.

Item forms (`CropDataset.form`, set by `with_form`): "float" items are the model inputs above;
the loaders' workers hand over less, and the rest is done on the device, batched
(`zfnet.data.batches`): "pixels" items are the uint8 window of the full image that the input is
cut from (the training crop, not yet flipped; the centre crop; the whole image for ten crops),
with where it lies and whether it is flipped, and the mean is subtracted and the flip made on
the device; "encoded" items are the image file's bytes, decoded, resized and cut on the device,
or, for a file the device decoder cannot take, the full image decoded by the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.utils.data import Dataset, default_collate

from zfnet.data.images import BadImageError, warn_skipped
from zfnet.data.jpeg import read_header

if TYPE_CHECKING:
    from zfnet.data.preprocess import Preprocessing

Mode = Literal["train", "centre", "ten_crop"]
MODES: tuple[str, ...] = ("train", "centre", "ten_crop")
Form = Literal["float", "pixels", "encoded"]
FORMS: tuple[str, ...] = ("float", "pixels", "encoded")


def centre_offset(full_size: int, size: int) -> int:
    """Top/left offset of the centre `size` crop in a `full_size` image (as torchvision rounds)."""
    return int(round((full_size - size) / 2.0))


def crop(img: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    """The `size` x `size` window at (top, left) of (..., H, W)."""
    return img[..., top : top + size, left : left + size]


def centre_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Centre `size` x `size` crop of a square (..., F, F) image."""
    top = centre_offset(img.shape[-2], size)
    left = centre_offset(img.shape[-1], size)
    return crop(img, top, left, size)


def ten_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Paper Sec. 3 test-time crops: (..., H, W) -> (10, ..., size, size).

    Corners and centre, then the corners and centre of the horizontally flipped image
    (same order as `torchvision.transforms.v2.functional.ten_crop`).
    """
    h, w = img.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"crop size {size} is larger than the image ({h}x{w})")
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    centre = (centre_offset(h, size), centre_offset(w, size))
    five = [crop(img, t, s, size) for t, s in (*corners, centre)]
    flipped = img.flip(-1)
    five_flipped = [crop(flipped, t, s, size) for t, s in (*corners, centre)]
    return torch.stack(five + five_flipped)  # (10, ..., size, size)


CropParams = tuple[int, int, bool]  # (top, left, flipped) of one training crop


def random_crop_params(
    h: int, w: int, size: int, generator: torch.Generator | None = None
) -> CropParams:
    """Draw a training crop of an (H, W) image: top, left of the `size` square, and whether it
    is flipped (p = 1/2). Three draws, in this order, from `generator` (torch's global one
    when None)."""
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return top, left, bool(torch.rand((), generator=generator) < 0.5)


def apply_crop(img: torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
    """The crop `params` describes, of (..., H, W) -> (..., size, size)."""
    top, left, flipped = params
    out = crop(img, top, left, size)
    return out.flip(-1) if flipped else out


def random_crop_flip(
    img: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Paper Sec. 3 training augmentation: random `size` crop of (C, H, W), flipped with p=1/2."""
    h, w = img.shape[-2:]
    return apply_crop(img, random_crop_params(h, w, size, generator), size)


def gather_crops(images: torch.Tensor, mean: torch.Tensor, tops: torch.Tensor,
                 lefts: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Training crops of a batch in one gather, on the images' device: uint8 images (N, C, F, F)
    cut at (tops[k], lefts[k]) to `size`, mirrored where flips[k], minus the mean image (C, F, F)
    -> float32 (N, C, size, size); `apply_crop` of each centred image, for all at once."""
    ramp = torch.arange(size, device=images.device)
    rows = (tops[:, None] + ramp)[:, :, None]  # (N, S, 1)
    cols = lefts[:, None] + ramp  # (N, S)
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, :]  # (N, 1, S)
    batch = torch.arange(len(images), device=images.device)[:, None, None]
    nhwc = images.permute(0, 2, 3, 1)  # (N, F, F, C)
    mean = mean.permute(1, 2, 0)  # (F, F, C)
    x = nhwc[batch, rows, cols].to(torch.float32) - mean[rows, cols]  # (N, S, S, C)
    return x.permute(0, 3, 1, 2).contiguous()  # (N, C, S, S)


class CropDataset(Dataset):
    """Base class: images at `full_size` in, the paper's crops out.

    Subclasses implement `full_image(i)` (uint8 (C, F, F), raising `BadImageError` for a
    broken file; with `preprocessing`, the image fitted by `preprocessing.fit_full`). Items are
    `(x, y)`: x float32 (C, S, S), or (10, C, S, S) in "ten_crop" mode; `None` when the file
    is broken and `strict` is off (`collate` drops it). x = image - mean, divided by
    `preprocessing`'s std when there is one. y is -1 for unlabelled images.
    """

    # The global RNGs `__getitem__` draws from (the crops: torch's); the trainer's per-sample
    # seeding (zfnet.train.recipe.SeededSamples) seeds and restores only these.
    global_rngs: tuple[str, ...] = ("torch",)
    form: Form = "float"  # what items are (see the module); `with_form` changes it
    # "encoded" form: the share of items the workers decode themselves (the rest go to the
    # device as files), chosen by index (`decoded_on_host`): the same items in every epoch
    host_share: float = 0.0

    def __init__(
        self,
        targets: Sequence[int],
        mean: torch.Tensor,
        input_size: int,
        mode: Mode,
        *,
        classes: Sequence[str],
        strict: bool = False,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not known; valid: {', '.join(MODES)}")
        if mean.shape[-1] < input_size:
            raise ValueError(f"input_size {input_size} > full_size {mean.shape[-1]}")
        self.targets = [int(t) for t in targets]
        self.mean = mean.to(torch.float32)  # (C, F, F), may be a broadcast view
        self.input_size = input_size
        self.mode: Mode = mode
        self.classes = list(classes)
        self.strict = strict
        self.preprocessing = preprocessing  # None: the paper's convention, std 1
        self.std = None if preprocessing is None else preprocessing.std_tensor()  # (C, 1, 1)

    @property
    def full_size(self) -> int:
        return int(self.mean.shape[-1])

    def full_image(self, i: int) -> torch.Tensor:
        """uint8 (C, F, F) image i before cropping; raises `BadImageError` if broken."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.targets)

    def _full_or_none(self, i: int) -> torch.Tensor | None:
        """`full_image(i)`; None (with a warning) when the file is broken and `strict` is off."""
        try:
            return self.full_image(i)  # (C, F, F) uint8
        except BadImageError as err:
            if self.strict:
                raise
            warn_skipped(err)
            return None

    def _centred(self, i: int) -> torch.Tensor | None:
        """Image i as float32 (C, F, F) minus the mean image; None (with a warning) when the
        file is broken and `strict` is off."""
        img = self._full_or_none(i)
        if img is None:
            return None
        x = img.to(torch.float32) - self.mean  # paper's convention: 0..255 - mean
        return x if self.std is None else x / self.std  # a model's: (pixels - mean) / std

    def __getitem__(self, i: int) -> Any:
        if self.form != "float":
            return self.formed_item(i)
        x = self._centred(i)  # (C, F, F)
        if x is None:
            return None
        if self.mode == "train":
            x = random_crop_flip(x, self.input_size)  # (C, S, S)
        elif self.mode == "centre":
            x = centre_crop(x, self.input_size)  # (C, S, S)
        else:
            x = ten_crop(x, self.input_size)  # (10, C, S, S)
        return x.contiguous(), self.targets[i]

    def train_items(
        self, indices: Sequence[int], params: Sequence[CropParams]
    ) -> list[tuple[torch.Tensor, int] | None]:
        """Training items `indices`, each cropped as its `params` say (`random_crop_params`):
        what `__getitem__` gives in "train" mode after drawing the same params, for a batch.
        Subclasses that hold their images in memory do it in one gather. In the "pixels" and
        "encoded" forms, the items of that form (`formed_item`)."""
        if self.form != "float":
            return [self.formed_item(i, p) for i, p in zip(indices, params, strict=True)]
        items: list[tuple[torch.Tensor, int] | None] = []
        for i, p in zip(indices, params, strict=True):
            x = self._centred(i)
            items.append(None if x is None
                         else (apply_crop(x, p, self.input_size).contiguous(), self.targets[i]))
        return items

    # --- the "pixels" and "encoded" forms ---

    def window(self, params: CropParams | None = None) -> tuple[CropParams, int]:
        """Where the part of the full (F, F) image that an input is made from lies, and its
        side: train: the crop `params` (drawn from torch's global RNG, as `__getitem__` draws
        them, when None), S; centre: the centre crop, S; ten_crop: the whole image, F."""
        full, size = self.full_size, self.input_size
        if self.mode == "train":
            return (params or random_crop_params(full, full, size)), size
        if self.mode == "centre":
            c = centre_offset(full, size)
            return (c, c, False), size
        return (0, 0, False), full

    def formed_item(self, i: int, params: CropParams | None = None) -> tuple | None:
        """Item i in this dataset's form (`form`), its window at `params` in "train" mode; None
        for a broken file (skipped with a warning, or `BadImageError` with `strict`).

        "pixels": (uint8 (s, s, C): the window, a view, not flipped (the device flips it where
        params say so, `zfnet.data.batches.BatchInputs`: one batched op there, where a flip
        here is a copy per image); y; (top, left, flipped) ints). "encoded": (uint8 (B,): the
        file when the device can decode it, else uint8 (F, F, C): the full image decoded here;
        y; the same (3,) ints; i). Their collates copy each window or file once, into the
        batch."""
        (top, left, flipped), side = self.window(params)
        where = (top, left, int(flipped))
        if self.form == "encoded" and not decoded_on_host(i, self.host_share):
            try:
                data = self.read_encoded(i)
            except BadImageError:  # a link to nothing: said (or raised) by _full_or_none
                data = b""
            header = read_header(data)
            if header is not None and header.device_decodable:
                return torch.frombuffer(data, dtype=torch.uint8), self.targets[i], where, i
        img = self._full_or_none(i)  # (C, F, F) uint8
        if img is None:
            return None
        if self.form == "encoded":  # decoded here: the image the device would have made
            return img.permute(1, 2, 0), self.targets[i], where, i  # (F, F, C), a view
        return crop(img, top, left, side).permute(1, 2, 0), self.targets[i], where  # (s, s, C)

    def read_encoded(self, i: int) -> bytearray:
        """Item i's image file, as stored (datasets of image files: the "encoded" form)."""
        raise NotImplementedError(f"{type(self).__name__} holds no image files")

    def item_name(self, i: int) -> str:
        """Item i in messages (its file, where it has one)."""
        return f"item {i}"

    def with_form(self, form: Form) -> CropDataset:
        """A shallow copy of this dataset whose items are in `form` (see the module)."""
        if form not in FORMS:
            raise ValueError(f"form={form!r} is not known; valid: {', '.join(FORMS)}")
        if form == "encoded" and (self.preprocessing is not None or
                                  type(self).read_encoded is CropDataset.read_encoded):
            raise ValueError(f"{type(self).__name__} cannot hand over encoded files"
                             + (" for a model's preprocessing" if self.preprocessing else ""))
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.form = form
        return other

    def with_targets(self, targets: Sequence[int]) -> CropDataset:
        """A shallow copy of this dataset whose item i has label `targets[i]` (the images are
        shared)."""
        if len(targets) != len(self.targets):
            raise ValueError(f"{len(targets)} labels for {len(self.targets)} items")
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.targets = [int(t) for t in targets]
        return other

    def with_mean(self, mean: torch.Tensor) -> CropDataset:
        """A shallow copy of this dataset minus `mean` (C, F, F) of the same shape (the images
        are shared)."""
        if mean.shape != self.mean.shape:
            raise ValueError(f"a mean of shape {tuple(mean.shape)} for images of "
                             f"{tuple(self.mean.shape)}")
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.mean = mean.to(torch.float32)
        return other

    def raw(self, i: int) -> torch.Tensor:
        """Displayable uint8 (C, S, S) centre crop of item i (raises `BadImageError` if broken)."""
        return centre_crop(self.full_image(i), self.input_size).contiguous()

    def with_mode(self, mode: Mode) -> CropDataset:
        """A shallow copy of this dataset that crops in `mode` (the images are shared)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not known; valid: {', '.join(MODES)}")
        other.mode = mode
        return other


def decoded_on_host(i: int, share: float) -> bool:
    """Is item i one of the `share` (0..1) of items decoded by the workers in the "encoded"
    form? Chosen by index alone (i times the golden ratio, modulo 1, below `share`): spread
    evenly over any run of indices, the same in every epoch and process."""
    return share > 0 and (i * 0.6180339887498949) % 1.0 < share


class TensorImages(CropDataset):
    """In-memory uint8 images (N, C, F, F) with labels; the paper's crops on top."""

    def __init__(self, images: torch.Tensor, targets: list[int], **kwargs: Any) -> None:
        super().__init__(targets, **kwargs)
        self.images = images  # (N, C, F, F) uint8

    def full_image(self, i: int) -> torch.Tensor:
        img = self.images[i]  # (C, F, F)
        return img if self.preprocessing is None else self.preprocessing.fit_full(img)

    def train_items(
        self, indices: Sequence[int], params: Sequence[CropParams]
    ) -> list[tuple[torch.Tensor, int] | None]:
        """`CropDataset.train_items` as one gather over the batch (the same values)."""
        if self.preprocessing is not None or self.form != "float":  # one by one
            return super().train_items(indices, params)
        if len(indices) == 0:
            return []
        tops, lefts, flips = (torch.as_tensor(v) for v in zip(*params, strict=True))
        x = gather_crops(self.images[torch.as_tensor(indices)], self.mean, tops, lefts, flips,
                         self.input_size)
        return [(x[k], self.targets[i]) for k, i in enumerate(indices)]


def collate(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader `collate_fn`: drops `None` items (skipped broken files), stacks the rest.

    Returns x (N, C, S, S) or (N, 10, C, S, S) float32 and y (N,) int64, N <= len(batch).
    A batch whose every item was broken gives x of shape (0,) and y of shape (0,);
    `len(batch) - N` is the number of files skipped in this batch. In a DataLoader worker,
    x is stacked straight into shared memory (as torch's `default_collate` does), so that it
    reaches the main process without another copy.
    """
    kept = [item for item in batch if item is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    xs, ys = zip(*kept, strict=True)
    return default_collate(list(xs)), torch.as_tensor(ys, dtype=torch.long)
