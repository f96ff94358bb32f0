"""A model's preprocessing: how an image of any size becomes that model's input, and back.

Every model comes with one (`zfnet.sources`): torchvision's weights carry theirs (resize the
shorter side to 256, centre crop 224, x = (pixels/255 - mean) / std), a zfnet run subtracts its
training set's per-pixel mean image from 0..255 pixels (paper Sec. 3). Both are the same map,

    x = (pixels - mean) / std        pixels in 0..255, mean and std in 0..255 units

with `mean` a per-channel constant (torchvision: 255 * m, std 255 * s) or a mean image (zfnet:
the run's, std 1). Because it is affine per channel, a projection in model-input units is shown
in the image's own pixel space by multiplying it by `std` (`pixel_scale`), whatever the model.

Geometry, as torchvision's `ImageClassification` does it on a tensor: the shorter side is
resized to `resize` (antialiased), then the centre `crop` x `crop` square is cut. Datasets keep a
`resize` x `resize` square per image to cut training crops from; it is placed so that its own
centre crop is exactly torchvision's centre crop of the resized image (`fit_full`), so a
dataset's centre item equals `to_input` of the same file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from zfnet.data.images import resize_shorter
from zfnet.data.transforms import centre_crop, centre_offset

if TYPE_CHECKING:  # torchvision imported where it resizes: 1.9 s of torch._dynamo on import
    from torchvision.transforms import InterpolationMode

# ImageNet's per-channel statistics (torchvision's and timm's defaults), in 0..1 units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The paper's 256 -> 224 (Sec. 3): the default resize for a crop without one.
PAPER_RATIO = 256 / 224
# Grey from RGB (ITU-R 601 luma), for a one-channel model given colour images.
LUMA = (0.299, 0.587, 0.114)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """How images become one model's inputs: x = (pixels - mean) / std at `crop` x `crop`.

    `resize`: the shorter side is resized to this first (>= crop); `crop`: the centre square
    the model sees; `mean`, `std`: per channel, in 0..255 units (torchvision's 0.485 is
    123.675); `in_channels`: what the model takes (grey images are replicated to RGB, colour
    ones turned grey for a one-channel model); `mean_image`: zfnet's per-pixel mean image
    (C, resize, resize), subtracted instead of `mean` (whose values then only describe it);
    `interpolation` of the resize: bilinear, bicubic or nearest.
    """

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int = 3
    mean_image: torch.Tensor | None = field(default=None, compare=False, repr=False)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.in_channels < 1:
            raise ValueError(f"in_channels={self.in_channels} must be >= 1")
        if self.crop < 1:
            raise ValueError(f"crop {self.crop} must be >= 1")
        if self.resize < self.crop:
            raise ValueError(f"resize {self.resize} is smaller than crop {self.crop}: the "
                             "shorter side is resized first, then the centre crop is cut")
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.in_channels:
                raise ValueError(f"{what} has {len(values)} value(s) but the model takes "
                                 f"{self.in_channels} channel(s): give {self.in_channels}")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{what} {values} must be finite numbers")
        if min(self.std) <= 0:
            raise ValueError(f"std {self.std} must be > 0 for every channel")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not known; valid: "
                             f"{', '.join(INTERPOLATIONS)}")
        if self.mean_image is not None:
            shape = (self.in_channels, self.resize, self.resize)
            if tuple(self.mean_image.shape) != shape:
                raise ValueError(f"mean image of shape {tuple(self.mean_image.shape)} does not "
                                 f"match {shape} (channels, resize, resize)")
            object.__setattr__(self, "mean_image", self.mean_image.to(torch.float32))

    # --- constructors ---

    @classmethod
    def imagenet(cls, crop: int = 224, resize: int | None = None,
                 interpolation: str = "bilinear") -> Preprocessing:
        """ImageNet's mean and std (torchvision's and timm's default) at `resize`/`crop`
        (default 256/224)."""
        return cls(resize or round(crop * PAPER_RATIO), crop,
                   tuple(255 * m for m in IMAGENET_MEAN), tuple(255 * s for s in IMAGENET_STD),
                   3, interpolation=interpolation)

    @classmethod
    def from_mean_image(cls, mean_image: torch.Tensor, crop: int) -> Preprocessing:
        """zfnet's convention (paper Sec. 3): 0..255 pixels minus the per-pixel mean image
        (C, F, F) of the training set, std 1; images are resized to F and cropped to `crop`."""
        c, f = int(mean_image.shape[0]), int(mean_image.shape[-1])
        channel_means = tuple(mean_image.double().mean(dim=(1, 2)).tolist())
        return cls(f, crop, channel_means, (1.0,) * c, c, mean_image=mean_image)

    @classmethod
    def from_unit_stats(cls, mean: Sequence[float], std: Sequence[float], crop: int,
                        resize: int | None = None, interpolation: str = "bilinear"
                        ) -> Preprocessing:
        """From mean and std in 0..1 units, as torchvision and timm publish them."""
        return cls(resize or round(crop * PAPER_RATIO), crop, tuple(255 * m for m in mean),
                   tuple(255 * s for s in std), len(mean), interpolation=interpolation)

    def with_overrides(self, *, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, resize: int | None = None,
                       crop: int | None = None) -> Preprocessing:
        """This preprocessing with some values replaced (mean and std in 0..255 units; one value
        stands for every channel). A new mean, or a new size, replaces a mean image; a crop
        alone keeps the resize/crop ratio."""
        changes: dict[str, Any] = {}
        if mean is not None:
            changes["mean"] = self._per_channel(mean, "mean")
        if std is not None:
            changes["std"] = self._per_channel(std, "std")
        if crop is not None:
            changes["crop"] = crop
            if resize is None:
                changes["resize"] = max(crop, round(crop * self.resize / self.crop))
        if resize is not None:
            changes["resize"] = resize
        if self.mean_image is not None and (
                "mean" in changes or changes.get("resize", self.resize) != self.resize):
            changes["mean_image"] = None
        return replace(self, **changes)

    def _per_channel(self, values: Sequence[float], what: str) -> tuple[float, ...]:
        values = tuple(float(v) for v in values)
        if len(values) == 1:
            return values * self.in_channels
        if len(values) != self.in_channels:
            raise ValueError(f"{what} has {len(values)} values but the model takes "
                             f"{self.in_channels} channel(s): give {self.in_channels} (or 1 "
                             "for all)")
        return values

    # --- tensors of the normalisation ---

    def std_tensor(self) -> torch.Tensor:
        """std as float32 (C, 1, 1), 0..255 units."""
        return torch.tensor(self.std, dtype=torch.float32)[:, None, None]

    def full_mean(self) -> torch.Tensor:
        """What is subtracted from a `resize` x `resize` image: float32 (C, resize, resize), the
        mean image or the per-channel mean broadcast (a view, no memory)."""
        if self.mean_image is not None:
            return self.mean_image
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        return mean.expand(self.in_channels, self.resize, self.resize)

    def crop_mean(self) -> torch.Tensor:
        """What is subtracted from a centre crop: float32 (C, crop, crop) or (C, 1, 1)."""
        if self.mean_image is not None:
            return centre_crop(self.mean_image, self.crop)
        return torch.tensor(self.mean, dtype=torch.float32)[:, None, None]

    def pixel_scale(self) -> torch.Tensor:
        """Per channel factor (C,) that turns a signal in model-input units into pixel units:
        the inverse normalisation's slope, `std`. Projections and patches are shown in the
        image's own pixel space whatever the normalisation."""
        return torch.tensor(self.std, dtype=torch.float32)

    # --- images ---

    def adapt_channels(self, img: torch.Tensor) -> torch.Tensor:
        """(…, c, H, W) -> (…, in_channels, H, W): grey replicated to RGB, RGB to grey (luma);
        other mismatches are a ValueError."""
        c = img.shape[-3]
        if c == self.in_channels:
            return img
        if c == 1:
            return img.expand(*img.shape[:-3], self.in_channels, *img.shape[-2:])
        if self.in_channels == 1 and c == 3:
            luma = torch.tensor(LUMA, dtype=torch.float32)[:, None, None]
            grey = (img.to(torch.float32) * luma).sum(-3, keepdim=True)
            if img.is_floating_point():
                return grey
            return grey.round().clamp(0, 255).to(img.dtype)
        raise ValueError(f"cannot turn {c}-channel images into the model's {self.in_channels} "
                         "channels (only grey <-> RGB)")

    def fit_full(self, img: torch.Tensor) -> torch.Tensor:
        """An image (C, H, W), uint8 0..255, as the `resize` x `resize` square the crops are cut
        from: channels adapted, shorter side -> resize, the square placed so that its centre
        `crop` is torchvision's centre crop of the resized image. uint8 (in_channels, R, R)."""
        img = self.adapt_channels(img)
        img = self._resize(img)  # (C, H', W'), shorter side = resize
        h, w = img.shape[-2:]
        r, s = self.resize, self.crop
        # Offsets of the R-square whose centre S-crop is the image's centre S-crop.
        top = min(max(centre_offset(h, s) - centre_offset(r, s), 0), h - r)
        left = min(max(centre_offset(w, s) - centre_offset(r, s), 0), w - r)
        return img[..., top:top + r, left:left + r].contiguous()

    def fit(self, img: torch.Tensor) -> torch.Tensor:
        """The pixels the model sees, for display: uint8 (C, H, W) -> (in_channels, crop, crop),
        the shorter side resized to `resize`, then the centre crop."""
        return centre_crop(self.fit_full(img), self.crop).contiguous()

    def fit_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A bool mask (H, W) aligned with an image -> bool (crop, crop) aligned with `fit` of
        that image (resized like it, then > 0.5)."""
        m = mask.to(torch.float32)[None]  # (1, H, W)
        m = resize_shorter(m, self.resize, self._mode())
        h, w = m.shape[-2:]
        top, left = centre_offset(h, self.crop), centre_offset(w, self.crop)
        return m[0, top:top + self.crop, left:left + self.crop] > 0.5

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (…, C, crop, crop) in 0..255 -> model input float32: (pixels - mean) / std."""
        x = pixels.to(torch.float32) - self.crop_mean().to(pixels.device)
        return x / self.std_tensor().to(pixels.device)

    def to_input(self, img: torch.Tensor) -> torch.Tensor:
        """An image uint8 (C, H, W) -> model input float32 (in_channels, crop, crop): shorter
        side to `resize`, centre crop, normalised (as torchvision's `weights.transforms()`)."""
        return self.normalize(self.fit(img))

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (…, C, crop, crop) -> uint8 pixels (the inverse of `normalize`, rounded
        and clipped to 0..255), for display."""
        std, mean = self.std_tensor().to(x.device), self.crop_mean().to(x.device)
        pixels = x.to(torch.float32) * std + mean
        return pixels.round().clamp(0, 255).to(torch.uint8)

    def describe(self) -> str:
        """One line for humans: "resize 256, crop 224, mean 123.7,116.3,103.5, std 58.4,...".
        """
        mean = "the mean image" if self.mean_image is not None else _fmt(self.mean)
        interp = "" if self.interpolation == "bilinear" else f", {self.interpolation}"
        return (f"resize {self.resize}, crop {self.crop}, mean {mean}, std {_fmt(self.std)} "
                f"(0..255 units){interp}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of it (a mean image is noted, not stored)."""
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean),
                "std": list(self.std), "in_channels": self.in_channels,
                "mean_image": self.mean_image is not None, "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Inverse of `to_dict` for a preprocessing without a mean image (a fine-tuned run's)."""
        return cls(int(d["resize"]), int(d["crop"]), tuple(d["mean"]), tuple(d["std"]),
                   int(d.get("in_channels", len(d["mean"]))),
                   interpolation=d.get("interpolation", "bilinear"))

    def _mode(self) -> InterpolationMode:
        from torchvision.transforms import InterpolationMode

        return InterpolationMode(self.interpolation)

    def _resize(self, img: torch.Tensor) -> torch.Tensor:
        if min(img.shape[-2:]) == self.resize:
            return img  # already there: no resampling
        return resize_shorter(img, self.resize, self._mode())


def _fmt(values: Sequence[float]) -> str:
    """Per-channel values with one number of decimals: none where all are whole, else what
    gives the largest 4 significant digits ("58.40,57.12,57.38"; "123.7,116.3,103.5")."""
    if all(float(v).is_integer() for v in values):
        return ",".join(str(int(v)) for v in values)
    digits = len(str(int(max(abs(v) for v in values))))
    return ",".join(f"{v:.{max(0, 4 - digits)}f}" for v in values)
