"""ZFNet as in the paper's Fig. 3, the seed table's padding, and a small ZFNet for this machine."""

from __future__ import annotations

from typing import Any

from zfnet.models.convnet import ConvNet, ConvSpec, NetConfig, apply_overrides
from zfnet.models.registry import register_model

# Paper Fig. 3. The paper states no padding; this padding reproduces its sizes exactly:
# 224 -conv1-> 110 -pool1-> 55 -conv2-> 26 -pool2-> 13 -conv3,4,5-> 13 -pool5-> 6.
ZFNET = NetConfig(
    convs=(
        ConvSpec("conv1", 96, 7, 2, 1, pool=True, norm=True),
        ConvSpec("conv2", 256, 5, 2, 0, pool=True, norm=True),
        ConvSpec("conv3", 384, 3, 1, 1),
        ConvSpec("conv4", 384, 3, 1, 1),
        ConvSpec("conv5", 256, 3, 1, 1, pool=True),
    ),
)

# The seed note's table: conv1 7x7/2 pad 3, conv2 5x5/2 pad 2 (112 -> 55 -> 28 -> 13 -> 6).
ZFNET_SEEDTABLE = NetConfig(
    convs=(
        ConvSpec("conv1", 96, 7, 2, 3, pool=True, norm=True),
        ConvSpec("conv2", 256, 5, 2, 2, pool=True, norm=True),
        ConvSpec("conv3", 384, 3, 1, 1),
        ConvSpec("conv4", 384, 3, 1, 1),
        ConvSpec("conv5", 256, 3, 1, 1, pool=True),
    ),
    pool_ceil_mode=False,
)

# ZFNet scaled for 28-96 px inputs (default 64) and ~1/2-1/3 of the channels, so that the
# paper's comparisons run on a 2-core CPU. Same five-conv/three-fc structure, LRN after 1 and 2,
# and the paper's first-layer contrast with AlexNet: a smaller kernel at half the stride
# (5x5/1 here vs alexnet_small's 9x9/2, as 7x7/2 vs 11x11/4). At 64 px:
# 64 -conv1-> 64 -pool1-> 32 -conv2-> 16 -pool2-> 8 -conv3,4,5-> 8 -pool5-> 4 (ceil mode).
ZFNET_SMALL = NetConfig(
    convs=(
        ConvSpec("conv1", 48, 5, 1, 2, pool=True, norm=True),
        ConvSpec("conv2", 128, 5, 2, 2, pool=True, norm=True),
        ConvSpec("conv3", 192, 3, 1, 1),
        ConvSpec("conv4", 192, 3, 1, 1),
        ConvSpec("conv5", 128, 3, 1, 1, pool=True),
    ),
    fc=(512, 512),
    input_size=64,
)


@register_model
def zfnet(num_classes: int = 1000, **overrides: Any) -> ConvNet:
    """ZFNet, paper Fig. 3 (224 px, 96-256-384-384-256 maps, 4096-4096-C)."""
    return ConvNet(apply_overrides(ZFNET, num_classes=num_classes, **overrides))


@register_model
def zfnet_seedtable(num_classes: int = 1000, **overrides: Any) -> ConvNet:
    """ZFNet with the seed table's padding (conv1 pad 3, conv2 pad 2)."""
    return ConvNet(apply_overrides(ZFNET_SEEDTABLE, num_classes=num_classes, **overrides))


@register_model
def zfnet_small(num_classes: int = 10, **overrides: Any) -> ConvNet:
    """ZFNet scaled for 28-96 px inputs (default 64 px), for training on a CPU."""
    return ConvNet(apply_overrides(ZFNET_SMALL, num_classes=num_classes, **overrides))
