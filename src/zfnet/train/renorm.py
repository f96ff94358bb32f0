"""Filter RMS renormalisation (paper Sec. 3).

"We renormalize each filter in the convolutional layers whose RMS value exceeds a fixed radius of
1e-1 to this fixed radius." The paper calls this crucial in layer 1, where the input is 0..255
minus the mean and without it a few filters come to dominate (Fig. 6a).
"""

from __future__ import annotations

import torch
from torch import nn

from zfnet.models.convnet import filter_rms


@torch.no_grad()
def renormalize_filters(
    model: nn.Module, radius: float = 0.1, first_radius: float | None = None
) -> None:
    """Rescale, in place, every conv filter of `model` whose RMS exceeds `radius` to RMS `radius`
    (the first conv layer's: `first_radius`, when given — see layer-1 preconditioning in
    `zfnet.train.recipe.param_groups`).

    Filters at or below the radius are left bit-for-bit untouched, and so are the filters of
    a layer that is not trained (`requires_grad` off: frozen). Biases are not filters and are
    not changed. Call after every optimizer step.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for i, m in enumerate(convs):
        r = first_radius if i == 0 and first_radius is not None else radius
        w = m.weight  # (out, in, kh, kw)
        if not w.requires_grad:
            continue
        rms = filter_rms(w)  # (out,)
        # Multiplying by exactly 1.0 leaves a filter unchanged, so no branch (and no
        # host-device sync on CUDA) is needed to skip the filters inside the radius.
        scale = torch.where(rms > r, r / rms, torch.ones_like(rms))
        w.mul_(scale.view(-1, 1, 1, 1).to(w.dtype))
