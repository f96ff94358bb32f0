"""`zfnet.models.lrn.LocalResponseNorm` is torch's LRN with a written-out backward."""

import pytest
import torch
from torch import nn

import zfnet
from zfnet.models.lrn import LocalResponseNorm

# (size, alpha, beta, k): the models' (alpha = 1e-4 x n), even windows, a window of 1, and
# strong normalisation, where the cross-channel term of the Jacobian matters.
PARAMS = [(5, 5e-4, 0.75, 2.0), (4, 1e-2, 0.5, 1.0), (1, 0.1, 0.75, 1.0), (2, 1.0, 1.5, 0.5),
          (7, 0.5, 0.75, 2.0)]


@pytest.mark.parametrize("size,alpha,beta,k", PARAMS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_torch_forward_and_gradient(size, alpha, beta, k, channels_last) -> None:
    torch.manual_seed(size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (3 * torch.randn(4, 9, 5, 6)).contiguous(memory_format=fmt).requires_grad_()
    ours, ref = LocalResponseNorm(size, alpha, beta, k), nn.LocalResponseNorm(size, alpha, beta, k)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    assert y.is_contiguous(memory_format=fmt)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,alpha,beta,k", PARAMS[:3])
def test_gradient_is_the_jacobian(size, alpha, beta, k) -> None:
    x = torch.randn(2, 7, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(LocalResponseNorm(size, alpha, beta, k), (x,))


def test_is_a_torch_lrn_without_state_and_used_by_the_models() -> None:
    m = LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    assert isinstance(m, nn.LocalResponseNorm) and not m.state_dict()
    assert repr(m) == repr(nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0))
    for name in ("zfnet", "alexnet_zf", "zfnet_small", "alexnet_small"):
        norms = [mod for mod in zfnet.create_model(name).modules()
                 if isinstance(mod, nn.LocalResponseNorm)]
        assert len(norms) == 2 and all(type(mod) is LocalResponseNorm for mod in norms), name


def test_other_ranks_fall_back_and_second_derivatives_are_refused() -> None:
    m, ref = LocalResponseNorm(3), nn.LocalResponseNorm(3)
    x3 = torch.randn(2, 6, 10)  # (N, C, L): PyTorch's own path
    torch.testing.assert_close(m(x3), ref(x3))
    x = torch.randn(1, 4, 2, 2, requires_grad=True)
    (gx,) = torch.autograd.grad(m(x).sum(), x, create_graph=True)
    assert not gx.requires_grad  # no second derivative rather than a wrong one
    with pytest.raises(RuntimeError, match="does not require grad"):
        gx.sum().backward()


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_stays_close_to_float32(channels_last) -> None:
    """bf16 inputs (conv outputs under CPU autocast) in either layout, where torch's LRN has
    no contiguous bf16 kernel: within bf16 rounding of float32 LRN, forward and gradient."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (4 * torch.randn(8, 16, 6, 6)).bfloat16().contiguous(memory_format=fmt)
    x.requires_grad_()
    x32 = x.detach().float().requires_grad_()
    m, ref = LocalResponseNorm(5, 5e-4, 0.75, 2.0), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    y, y_ref = m(x), ref(x32)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)
    g = torch.randn_like(y_ref)
    (gx,) = torch.autograd.grad(y, x, g.bfloat16())
    (gx_ref,) = torch.autograd.grad(y_ref, x32, g)
    torch.testing.assert_close(gx.float(), gx_ref, rtol=2e-2, atol=2e-2)
