"""An exponential moving average of the weights (Polyak averaging), updated after every step.

Not in the paper: a modern option of the recipe (`zfnet train --ema DECAY`, as timm's
`--model-ema`). The average covers the parameters and the floating-point buffers (BatchNorm's
running statistics); integer buffers (`num_batches_tracked`) are copied. Its decay warms up as in
TensorFlow's `ExponentialMovingAverage(num_updates=…)`: after n updates the decay is
min(decay, (1 + n) / (10 + n)), so that the random initial weights are forgotten within the
first few hundred steps instead of lingering for ~1/(1 - decay) of them.

Built on `torch.optim.swa_utils.AveragedModel` (which keeps the copy and the update count);
this module only supplies the averaging rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay(decay: float, updates: int) -> float:
    """The decay used for the update after `updates` earlier ones (the warm-up rule above)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def _ema_rule(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor],
                                        None]:
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               n_averaged: torch.Tensor) -> None:
        # AveragedModel groups tensors by dtype: floating groups are averaged, others copied.
        if not averaged:
            return
        if averaged[0].is_floating_point():
            weight = 1.0 - ema_decay(decay, int(n_averaged))
            torch._foreach_lerp_(averaged, current, weight)
        else:
            torch._foreach_copy_(averaged, current)

    return update


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """A moving average of `model` (a copy, on the same device and memory format). Call
    `.update_parameters(model)` after each optimizer step; `.module` is the averaged network."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=_ema_rule(decay), use_buffers=True)
