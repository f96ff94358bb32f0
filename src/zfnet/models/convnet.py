"""The five-conv / three-fc network of the paper, built from a small config.

ZFNet (paper Fig. 3), AlexNet as the paper replicated it, Table 3's variants and the
small versions used on this machine are all one class, `ConvNet`, with a different
`NetConfig`. Modules are named the way the paper names layers so that code that
visualises a layer looks it up by name, never by position::

    features:   conv1 relu1 pool1 norm1  conv2 relu2 pool2 norm2  conv3 relu3
                conv4 relu4  conv5 relu5 pool5
    classifier: fc6 relu6 drop6  fc7 relu7 drop7  fc8

The ReLUs are not in-place, so that hooks on them (the deconvnet, Captum) see clean tensors.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from zfnet.models.geometry import LayerGeometry, sequential_geometry
from zfnet.models.lrn import LocalResponseNorm
from zfnet.models.options import INITS, check_model_options


@dataclass(frozen=True)
class ConvSpec:
    """One convolutional layer and what follows it in the same block."""

    name: str  # conv1 … conv5
    channels: int  # output feature maps
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: bool = False  # max-pool 3/2 after the ReLU
    norm: bool = False  # contrast normalisation (LRN across maps) after the pool


@dataclass(frozen=True)
class NetConfig:
    """Everything that defines one architecture. Variants are a `replace(...)` away."""

    convs: tuple[ConvSpec, ...]
    fc: tuple[int, ...] = (4096, 4096)  # widths of fc6, fc7 (empty: fc8 straight on pool5)
    num_classes: int = 1000
    in_channels: int = 3
    input_size: int = 224  # square crop the fc6 input size is computed for
    dropout: float = 0.5  # on every hidden fc layer, as the paper does on fc6 and fc7
    pool_kernel: int = 3
    pool_stride: int = 2
    pool_ceil_mode: bool = True  # pool1/pool2 round up: reproduces the paper's 55 and 13
    # LRN as in AlexNet: b = a / (k + alpha/n * sum a^2)^beta; PyTorch divides alpha by n.
    lrn_size: int = 5
    lrn_alpha: float = 5e-4  # = AlexNet's 1e-4 per squared element times n=5
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    # Not in the paper: BatchNorm after every conv (before its ReLU, named bn1 … bn5) in place
    # of contrast normalisation — the modern choice for training fast on small data.
    batchnorm: bool = False
    init: str = "kaiming"  # "kaiming" (default, trains) or "paper" (N(0, 0.01), bias 0)
    input_std: float = 60.0  # std of the paper's 0..255-minus-mean pixels; "kaiming" divides
    # conv1 by it so that every layer starts at unit scale
    fc_names: tuple[str, ...] = field(default=("fc6", "fc7"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (saved next to results and inside checkpoints)."""
        d = asdict(self)
        d["convs"] = [asdict(c) for c in self.convs]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> NetConfig:
        """Inverse of `to_dict`."""
        d = dict(d)
        d["convs"] = tuple(ConvSpec(**c) for c in d["convs"])
        d["fc"] = tuple(d["fc"])
        d["fc_names"] = tuple(d["fc_names"])
        return NetConfig(**d)



class ConvNet(nn.Module):
    """ZFNet / AlexNet-style network: `features` (convs) then `classifier` (fcs).

    Input (N, in_channels, H, W) with H = W = `config.input_size`; output (N, num_classes) logits.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        if config.init not in INITS:
            raise ValueError(f"init={config.init!r} is not known; valid: {', '.join(INITS)}")
        self.config = config
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin = config.in_channels
        for spec in config.convs:
            i = spec.name.removeprefix("conv")
            layers[spec.name] = nn.Conv2d(
                cin, spec.channels, spec.kernel, spec.stride, spec.padding
            )
            if config.batchnorm:
                layers[f"bn{i}"] = nn.BatchNorm2d(spec.channels)
            layers[f"relu{i}"] = nn.ReLU(inplace=False)
            if spec.pool:
                layers[f"pool{i}"] = nn.MaxPool2d(
                    config.pool_kernel, config.pool_stride, ceil_mode=config.pool_ceil_mode
                )
            if spec.norm and not config.batchnorm:
                layers[f"norm{i}"] = LocalResponseNorm(
                    config.lrn_size, config.lrn_alpha, config.lrn_beta, config.lrn_k
                )
            cin = spec.channels
        self.features = nn.Sequential(layers)
        self.geometry: dict[str, LayerGeometry] = sequential_geometry(
            self.features, config.input_size, prefix="features."
        )
        last = self.geometry[f"features.{next(reversed(layers))}"]
        empty = next((k for k, g in self.geometry.items() if g.size < 1), None)
        if empty is not None:
            side = self.geometry[empty].size
            raise ValueError(
                f"input_size={config.input_size} is too small for this network: "
                f"{empty.removeprefix('features.')} would be {side}x{side}; "
                f"the smallest input it takes is {_smallest_input(self.features)} px"
            )
        head: OrderedDict[str, nn.Module] = OrderedDict()
        width = cin * last.size * last.size
        for name, out in zip(config.fc_names, config.fc, strict=True):
            i = name.removeprefix("fc")
            head[name] = nn.Linear(width, out)
            head[f"relu{i}"] = nn.ReLU(inplace=False)
            head[f"drop{i}"] = nn.Dropout(config.dropout)
            width = out
        head["fc8"] = nn.Linear(width, config.num_classes)
        self.classifier = nn.Sequential(head)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise weights as `config.init` says; biases 0.

        "paper": N(0, 0.01) everywhere (Sec. 3, "weights initialised to 1e-2"). Measured on
        zfnet_small with the paper's inputs, the signal vanishes with depth (RMS 5.8 after conv1,
        0.016 after conv5, 2e-4 at the logits) and the net stays at chance: it does not train
        from scratch without normalisation layers.
        "kaiming" (default): He-normal (fan-in, ReLU gain) for every hidden layer, conv1 further
        divided by `input_std` (the pixels' std, ~60 in the paper's 0..255 convention) so that
        every layer starts at unit scale, and N(0, 0.01) for fc8. Plain He init keeps the input's
        scale of ~60 through the depth and diverges at lr 1e-2; with the division it trains.
        """
        first_conv = next(m for m in self.features if isinstance(m, nn.Conv2d))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if self.config.init == "paper" or m is self.classifier.fc8:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    if m is first_conv:
                        with torch.no_grad():
                            m.weight.div_(self.config.input_std)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, C5, 6, 6) for zfnet at 224
        x = torch.flatten(x, 1)  # (N, C5*6*6)
        return self.classifier(x)  # (N, num_classes)


def zfnet_config(model: nn.Module) -> NetConfig | None:
    """The NetConfig of one of zfnet's models; None for any other (a Hugging Face model's
    `config` is its own kind)."""
    cfg = getattr(model, "config", None)
    return cfg if isinstance(cfg, NetConfig) else None


def is_zfnet_model(model: nn.Module) -> bool:
    """Whether `model` is one of zfnet's own models (`ConvNet`: zfnet_*, alexnet_*), whose
    layers have the paper's names (conv1…conv5, fc6…fc8)."""
    return isinstance(model, ConvNet)


def apply_overrides(config: NetConfig, **overrides: Any) -> NetConfig:
    """Return `config` changed by user-facing overrides (Table 3's variants and more).

    Every value is checked by `zfnet.models.options` (its type and range; ValueError naming the
    option). Besides the `NetConfig` fields (num_classes, in_channels, input_size, dropout, init,
    batchnorm, pool_*, lrn_*, input_std):
    - `conv_widths=(c3, c4, c5)`: feature maps of conv3–conv5 (Table 3: 512/1024/512);
      five values set conv1–conv5.
    - `fc_width=W`: width of fc6 and fc7 (Table 3: 2048, 8192).
    - `remove=("conv3", "conv4", "fc6", "fc7")`: drop any of these layers (Table 3's ablations).
      Removing a conv keeps the next layer's input width consistent.
    - `strides=(s1, …, s5)`: the stride of each conv layer, in order (before any removal); e.g.
      `strides=1,1,1,1,1` keeps `zfnet_small`'s conv2 at full resolution on 28 px inputs.
    """
    overrides = check_model_options(overrides)  # types and ranges: one place, one message
    convs = list(config.convs)
    fc = list(config.fc)
    fc_names = list(config.fc_names)
    widths = overrides.pop("conv_widths", None)
    if widths is not None:
        names = [c.name for c in convs]
        if len(widths) not in (3, len(names)):
            raise ValueError(f"conv_widths needs 3 positive values (conv3, conv4, conv5) or "
                             f"{len(names)} ({', '.join(names)}), got {widths}")
        targets = names[-3:] if len(widths) == 3 else names
        by_name = {c.name: i for i, c in enumerate(convs)}
        for name, w in zip(targets, widths, strict=True):
            convs[by_name[name]] = replace(convs[by_name[name]], channels=w)
    strides = overrides.pop("strides", None)
    if strides is not None:
        if len(strides) != len(convs):
            raise ValueError(f"strides needs {len(convs)} positive values "
                             f"({', '.join(c.name for c in convs)}), got {strides}")
        convs = [replace(c, stride=v) for c, v in zip(convs, strides, strict=True)]
    fc_width = overrides.pop("fc_width", None)
    if fc_width is not None:
        fc = [fc_width] * len(fc)
    for name in overrides.pop("remove", ()):
        if name.startswith("conv"):
            convs = [c for c in convs if c.name != name]
        elif name in fc_names:
            i = fc_names.index(name)
            del fc[i], fc_names[i]
    return replace(config, convs=tuple(convs), fc=tuple(fc), fc_names=tuple(fc_names), **overrides)


def _smallest_input(features: nn.Sequential, limit: int = 4096) -> int | str:
    """The smallest input side for which no feature map of `features` is empty (for errors)."""
    for side in range(1, limit + 1):
        if min(g.size for g in sequential_geometry(features, side).values()) >= 1:
            return side
    return f"over {limit}"


def filter_rms(weight: torch.Tensor) -> torch.Tensor:
    """RMS of each filter of a conv weight (out, in, kh, kw) -> (out,), as the paper's filter
    renormalisation (Sec. 3) and the filter diagnostics (Fig. 6) measure it."""
    return weight.detach().float().flatten(1).pow(2).mean(1).sqrt()
