"""Incremental inference for occlusion (zfnet.incremental): the same logits as running the whole
model on every occluded image, on zfnet's small models, a zfnet-like chain with every supported
layer kind (LRN, ceil-mode and padded pooling, in-place ReLU, non-square kernels) and
torchvision's alexnet; border positions, several sizes and strides, chunking, the approximate
mode and the FLOP bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zfnet import create_model
from zfnet.incremental import (
    UnsupportedModelError,
    as_chain,
    incremental_flops,
    occlusion_logits,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def grid_boxes(h: int, w: int, size: int, stride: int) -> torch.Tensor:
    """Captum's grid: the last square clipped at the border."""
    tops = range(0, (math.ceil((h - size) / stride)) * stride + 1, stride)
    lefts = range(0, (math.ceil((w - size) / stride)) * stride + 1, stride)
    return torch.tensor([(t, lft, min(t + size, h), min(lft + size, w))
                         for t in tops for lft in lefts])


def full_logits(model: nn.Module, image: torch.Tensor, boxes: torch.Tensor,
                fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The reference: the whole model on every occluded image, one at a time."""
    fill = torch.as_tensor(fill, dtype=image.dtype).expand_as(image)
    out = []
    with torch.no_grad():
        for t, lft, b, r in boxes.tolist():
            x = image.clone()
            x[:, t:b, lft:r] = fill[:, t:b, lft:r]
            out.append(model(x[None])[0])
    return torch.stack(out)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() <= 1e-5 * scale + 1e-6, (a - b).abs().max().item()


class TinyChain(nn.Module):
    """zfnet-like, with every layer kind incremental inference handles, at 37x45 px."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0),
            nn.Conv2d(8, 12, (3, 5), stride=(1, 2), padding=(1, 2)),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.MaxPool2d(2, 2, padding=1),
            nn.Conv2d(12, 6, 1, groups=2),
            nn.Dropout(0.5),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Linear(54, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    model = TinyChain().eval()
    bn = model.features[5]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize("size,stride", [(1, 1), (4, 3), (7, 5), (12, 12), (20, 9)])
def test_tiny_chain_matches_full(tiny: nn.Module, size: int, stride: int) -> None:
    torch.manual_seed(size)
    image = torch.randn(3, 37, 45) * 50
    boxes = grid_boxes(37, 45, size, stride)
    logits, _ = occlusion_logits(tiny, image, boxes, batch_size=13)
    assert_close(logits, full_logits(tiny, image, boxes))


def test_tiny_chain_arbitrary_boxes_and_fill(tiny: nn.Module) -> None:
    """Boxes of mixed sizes touching every border, and a per-pixel fill."""
    torch.manual_seed(1)
    image = torch.randn(3, 37, 45) * 50
    fill = torch.randn(3, 37, 45) * 20
    boxes = torch.tensor([[0, 0, 5, 5], [32, 40, 37, 45], [0, 30, 9, 45], [20, 0, 37, 3],
                          [10, 10, 11, 11], [0, 0, 37, 45], [5, 7, 25, 44]])
    logits, _ = occlusion_logits(tiny, image, boxes, fill, batch_size=3)
    assert_close(logits, full_logits(tiny, image, boxes, fill))


@pytest.mark.parametrize("name", ["zfnet_small", "alexnet_small"])
@pytest.mark.parametrize("size,stride", [(9, 4), (16, 7)])
def test_small_models_match_full(name: str, size: int, stride: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, input_size=48).eval()
    image = torch.randn(3, 48, 48) * 60
    boxes = grid_boxes(48, 48, size, stride)
    logits, _ = occlusion_logits(model, image, boxes, batch_size=32)
    assert_close(logits, full_logits(model, image, boxes))


def test_torchvision_alexnet_matches_full() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.alexnet(num_classes=7).eval()  # in-place ReLUs, avgpool
    image = torch.randn(3, 80, 80) * 60
    boxes = grid_boxes(80, 80, 24, 28)[:6]
    logits, _ = occlusion_logits(model, image, boxes, batch_size=4)
    assert_close(logits, full_logits(model, image, boxes))


def test_chunking_does_not_change_results(tiny: nn.Module) -> None:
    torch.manual_seed(2)
    image = torch.randn(3, 37, 45) * 50
    boxes = grid_boxes(37, 45, 6, 2)  # 288 positions: several groups
    ref, _ = occlusion_logits(tiny, image, boxes, batch_size=1000)
    for batch_size in (1, 7, 64):
        logits, _ = occlusion_logits(tiny, image, boxes, batch_size=batch_size)
        assert_close(logits, ref)


def test_watched_layer_total(tiny: nn.Module) -> None:
    """Total rectified activation of one map: in the steps (delta on the patch) and in the
    head (a hook), against the layer's output on the fully occluded images."""
    torch.manual_seed(3)
    image = torch.randn(3, 37, 45) * 50
    boxes = grid_boxes(37, 45, 8, 6)
    for layer, channel, module in [("features.4", 5, tiny.features[4]),
                                   ("features.7", 2, tiny.features[7]),
                                   ("classifier.0", 3, tiny.classifier[0])]:
        _, watched = occlusion_logits(tiny, image, boxes, watch=(layer, channel))
        outs: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o, outs=outs: outs.append(o.clone()))
        try:
            full_logits(tiny, image, boxes)
        finally:
            handle.remove()
        ref = torch.stack([o[0, channel].clamp(min=0).sum() for o in outs])
        assert_close(watched, ref)
    assert not any(m._forward_hooks for m in tiny.modules())


def test_changed_region_contains_every_change(tiny: nn.Module) -> None:
    """The planned region at every layer covers every activation the occluder changes."""
    from zfnet.incremental import _levels

    chain = as_chain(tiny)
    torch.manual_seed(4)
    image = torch.randn(3, 37, 45) * 50
    boxes = grid_boxes(37, 45, 5, 8)
    acts = []
    with torch.no_grad():
        x = image[None]
        for _, m in chain.steps:
            x = m(x.clone())
            acts.append(x)
        shapes = [tuple(image.shape[1:])] + [tuple(a.shape[2:]) for a in acts]
        levels = _levels(chain, shapes, boxes, 1.0)
        for n, (t, lft, b, r) in enumerate(boxes.tolist()):
            x = image.clone()
            x[:, t:b, lft:r] = 0
            x = x[None]
            for i, (_, m) in enumerate(chain.steps):
                x = m(x.clone())
                changed = (x != acts[i]).any(1)[0]  # (h, w)
                lv = levels[i + 1]
                inside = torch.zeros_like(changed)
                inside[lv.lo[0][n]:lv.hi[0][n], lv.lo[1][n]:lv.hi[1][n]] = True
                assert not (changed & ~inside).any(), (n, i)


def test_approximate_mode_error_shrinks_with_tau() -> None:
    torch.manual_seed(0)
    model = create_model("zfnet_small", input_size=48).eval()
    image = torch.randn(3, 48, 48) * 60
    boxes = grid_boxes(48, 48, 12, 6)
    exact, _ = occlusion_logits(model, image, boxes)
    errors = []
    for tau in (0.3, 0.6, 1.0):
        approx, _ = occlusion_logits(model, image, boxes, tau=tau)
        errors.append((approx - exact).abs().max().item())
    assert errors[0] > 0 and errors[0] >= errors[1] >= errors[2]
    assert errors[2] <= 1e-5 * exact.abs().max().item()


def test_flop_bound_zfnet_224() -> None:
    """The geometry-only bound the benchmark prints: ~3-4x at 32/48 px, stride 8."""
    model = create_model("zfnet")
    bounds = []
    for size in (32, 48):
        boxes = grid_boxes(224, 224, size, 8)
        count = incremental_flops(model, (3, 224, 224), boxes)
        assert count.full == pytest.approx(sum(v[0] for v in count.per_layer.values()))
        # conv1 7x7/2 pad 1, 3 -> 96 maps, 110x110 outputs
        assert count.per_layer["features.conv1"][0] == 2 * 96 * 3 * 49 * 110 * 110
        assert count.incremental <= count.batched < count.full
        assert count.batched <= 1.06 * count.incremental  # border-aware grouping wastes little
        bounds.append(count.bound)
    assert 3.0 < bounds[1] < bounds[0] < 5.0


def test_unsupported_models_name_the_layer() -> None:
    model = TinyChain()
    model.features[2] = nn.AvgPool2d(2)
    with pytest.raises(UnsupportedModelError, match=r"features\.2.*AvgPool2d"):
        as_chain(model)
    with pytest.raises(UnsupportedModelError, match="children"):
        as_chain(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_argument_errors(tiny: nn.Module) -> None:
    image = torch.randn(3, 37, 45)
    with pytest.raises(ValueError, match="inside the 37x45 image"):
        occlusion_logits(tiny, image, torch.tensor([[0, 0, 38, 5]]))
    with pytest.raises(ValueError, match="tau"):
        occlusion_logits(tiny, image, torch.tensor([[0, 0, 5, 5]]), tau=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        occlusion_logits(tiny, image, torch.tensor([[0, 0, 5, 5]]), batch_size=0)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        occlusion_logits(tiny, image[None], torch.tensor([[0, 0, 5, 5]]))


def test_model_left_as_it_was(tiny: nn.Module) -> None:
    tiny.train()
    tiny.features[5].eval()  # a frozen BatchNorm: a mixed model comes back mixed
    before = [m.training for m in tiny.modules()]
    try:
        occlusion_logits(tiny, torch.randn(3, 37, 45), torch.tensor([[0, 0, 5, 5]]),
                         watch=("classifier.0", 1))
        assert [m.training for m in tiny.modules()] == before
        assert not any(m._forward_hooks for m in tiny.modules())
    finally:
        tiny.eval()
