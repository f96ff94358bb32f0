"""Whose classes? A dataset's labels index a model's outputs only when the model was trained on
that dataset's classes. A torchvision ImageNet model shown `synthetic` images has 1000 outputs
for the dataset's 10 classes: its output at the dataset's label 3 is ImageNet's class 3 ("tiger
shark"), not the dataset's "car". Analyses that follow one class (occlusion's p(class) map, the
pointing game, invariance's probability curve) then follow the model's own prediction on the
unaltered image, and name classes by the model's own names where given (else by number)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zfnet.activations import to_model
from zfnet.models import eval_mode, zfnet_config


def model_outputs(model: nn.Module, x: torch.Tensor) -> int:
    """The number of classes `model` scores: the last dim of its output for one input x
    (C, H, W); zfnet's models say it without running."""
    cfg = zfnet_config(model)
    if cfg is not None and hasattr(cfg, "num_classes"):
        return int(cfg.num_classes)
    with eval_mode(model), torch.inference_mode():
        return int(model(to_model(model, x[None])).shape[-1])


def labels_are_classes(model: nn.Module, bundle: Any) -> bool:
    """Whether `bundle`'s labels index `model`'s outputs: the model has exactly as many outputs
    as the dataset has classes (a model trained on it, the usual case for zfnet's runs). False
    for unlabelled data and for a model of other classes (see the module doc)."""
    n = int(getattr(bundle, "num_classes", 0) or 0)
    if n < 1:
        return False
    val = bundle.val.with_mode("centre") if getattr(bundle.val, "mode", "centre") != "centre" \
        else bundle.val
    return model_outputs(model, val[0][0]) == n
