"""Model registry in the style of torchvision/timm: `create_model(name, **overrides)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name; a duplicate name is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Build model `name` with `num_classes` outputs (default: the builder's own, 1000 for the
    ImageNet-sized models, 10 for the small ones); `overrides` change its config.

    See `zfnet.models.convnet.apply_overrides` for the options (Table 3's variants:
    `conv_widths=(512, 1024, 512)`, `fc_width=2048`, `remove=("conv3", "conv4")`, …).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return _MODELS[name](**overrides)
