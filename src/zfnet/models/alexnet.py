"""AlexNet as the paper replicated it (single tower, dense), and a small version for this machine.

torchvision's `alexnet` is a later variant (64-192-384-256-256 maps); this is the 2012 one the
paper compares with: 96@11x11/4, 256@5x5, 384@3x3, 384@3x3, 256@3x3, LRN after 1 and 2.
"""

from __future__ import annotations

from typing import Any

from zfnet.models.convnet import ConvNet, ConvSpec, NetConfig, apply_overrides
from zfnet.models.registry import register_model

# At 224 px with conv1 pad 2: 224 -> 55 -> 27 -> 27 -> 13 -> 13 -> 6 (as AlexNet at 227, pad 0).
ALEXNET_ZF = NetConfig(
    convs=(
        ConvSpec("conv1", 96, 11, 4, 2, pool=True, norm=True),
        ConvSpec("conv2", 256, 5, 1, 2, pool=True, norm=True),
        ConvSpec("conv3", 384, 3, 1, 1),
        ConvSpec("conv4", 384, 3, 1, 1),
        ConvSpec("conv5", 256, 3, 1, 1, pool=True),
    ),
    pool_ceil_mode=False,
)

# The small twin of zfnet_small (same channels, fc widths, input size): only the first layers
# differ, the way AlexNet differs from ZFNet — conv1 9x9/2 (vs 5x5/1), conv2 5x5/1 (vs 5x5/2).
# At 64 px: 64 -conv1-> 32 -pool1-> 16 -conv2-> 16 -pool2-> 8 -conv3,4,5-> 8 -pool5-> 4.
ALEXNET_SMALL = NetConfig(
    convs=(
        ConvSpec("conv1", 48, 9, 2, 4, pool=True, norm=True),
        ConvSpec("conv2", 128, 5, 1, 2, pool=True, norm=True),
        ConvSpec("conv3", 192, 3, 1, 1),
        ConvSpec("conv4", 192, 3, 1, 1),
        ConvSpec("conv5", 128, 3, 1, 1, pool=True),
    ),
    fc=(512, 512),
    input_size=64,
)


@register_model
def alexnet_zf(num_classes: int = 1000, **overrides: Any) -> ConvNet:
    """AlexNet as replicated in the paper (Table 2/3 baseline), 224 px."""
    return ConvNet(apply_overrides(ALEXNET_ZF, num_classes=num_classes, **overrides))


@register_model
def alexnet_small(num_classes: int = 10, **overrides: Any) -> ConvNet:
    """AlexNet scaled like zfnet_small (28-96 px, default 64), for the Fig. 6 comparison."""
    return ConvNet(apply_overrides(ALEXNET_SMALL, num_classes=num_classes, **overrides))
