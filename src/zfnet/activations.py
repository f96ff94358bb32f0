"""Read the outputs of named layers during a forward pass, leaving no hook behind."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from zfnet.models.layers import resolve_layer


@contextmanager
def capture(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward pass of `model` stores the output of every layer in
    `layers` (names as `zfnet.models.resolve_layer` takes them) in the yielded dict.

    The hooks are removed when the block ends, also on an exception. Outputs are stored as
    copies (not detached), so gradients can flow through them when the caller wants that.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in layers:
            _, module = resolve_layer(model, name)

            def hook(_m: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
                # a copy: an in-place op after the layer would overwrite its output — a module
                # (torchvision's ReLU(inplace=True)) or a plain op (a block's `out += identity`)
                store[name] = out.clone() if isinstance(out, torch.Tensor) else out

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


def to_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on the device and in the dtype of `model`'s parameters (as it is for a model
    without any): every analysis feeds the model through this, wherever the model lives."""
    p = next(model.parameters(), None)
    return x if p is None else x.to(p.device, p.dtype)


@torch.inference_mode()
def get_activations(
    model: nn.Module, x: torch.Tensor, layers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Outputs of `layers` for input `x` (N, C, H, W), each (N, …), computed without gradients."""
    with capture(model, layers) as store:
        model(to_model(model, x))
    return dict(store)
