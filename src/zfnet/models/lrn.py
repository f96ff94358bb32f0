"""Local response (contrast) normalisation across channels, with its backward written out.

`LocalResponseNorm` computes exactly `torch.nn.LocalResponseNorm` (same arguments, same
formula, an instance of it for every `isinstance` check), but sums the window of squares as a
few shifted adds and differentiates in closed form, instead of autograd through PyTorch's
`avg_pool3d` formulation: forward and backward together 2-4x faster on a 2-core CPU
(`bench/bench_lrn.py`, also in the demo model's training step). It computes in the input's
dtype, bf16 included (torch's has no bf16 kernel on the CPU; autocast runs its pooling in float32).

The formulas are shared with the deconvnet, which pushes signals down through LRN layers with
the same transposed Jacobian (`lrn_factors`, `lrn_vjp`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["LocalResponseNorm", "channel_sum", "lrn_factors", "lrn_vjp"]


def channel_sum(t: Tensor, before: int, after: int) -> Tensor:
    """Sum over channels j - before … j + after (zeros beyond the ends), for every j."""
    c = t.shape[1]
    padded = F.pad(t, (0, 0, 0, 0, before, after))
    out = padded[:, 0:c].clone()
    for o in range(1, before + after + 1):
        out += padded[:, o: o + c]
    return out


def _denominator(x: Tensor, size: int, alpha: float, k: float) -> Tensor:
    """d_i = k + a/n sum_{j in W(i)} x_j^2, W(i) = i - n//2 … i + (n-1)//2 (PyTorch's window)."""
    return channel_sum(x * x, size // 2, (size - 1) // 2).mul_(alpha / size).add_(k)


def lrn_factors(x: Tensor, size: int, alpha: float, beta: float, k: float
                ) -> tuple[Tensor, Tensor]:
    """The two factors of LRN's transposed Jacobian at input x: d^-b and (2ab/n) x d^(-b-1)."""
    d = _denominator(x, size, alpha, k)
    d_b = d.pow(-beta)
    return d_b, (x * d_b).div_(d).mul_(2 * alpha * beta / size)


def lrn_vjp(x: Tensor, g: Tensor, size: int, d_b: Tensor, q: Tensor) -> Tensor:
    """g through the transposed Jacobian of LRN at input x (d_b, q: `lrn_factors`).

    y_i = x_i d_i^-b: (J^T g)_j = g_j d_j^-b - 2ab/n x_j sum_{i: j in W(i)} g_i x_i d_i^(-b-1).
    """
    return g * d_b - x * channel_sum(g * q, (size - 1) // 2, size // 2)


class _LRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
        if not ctx.needs_input_grad[0]:  # inference: the denominator only
            return x * _denominator(x, size, alpha, k).pow_(-beta)
        d_b, q = lrn_factors(x, size, alpha, beta, k)
        ctx.save_for_backward(x, d_b, q)
        ctx.size = size
        return x * d_b

    @staticmethod
    @once_differentiable  # the saved factors carry no graph: a second derivative would be wrong
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, d_b, q = ctx.saved_tensors
        return lrn_vjp(x, g, ctx.size, d_b, q), None, None, None, None


class LocalResponseNorm(nn.LocalResponseNorm):
    """`torch.nn.LocalResponseNorm` over the channels of (N, C, H, W) inputs, with a faster
    backward (see the module docstring); other ranks fall back to PyTorch's."""

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002  (nn.LocalResponseNorm's name)
        if input.dim() != 4:
            return super().forward(input)
        return _LRN.apply(input, self.size, self.alpha, self.beta, self.k)
