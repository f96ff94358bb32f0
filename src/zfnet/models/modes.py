"""Run a model in eval mode for a while and give it back exactly as it was."""

from __future__ import annotations

from torch import nn


class eval_mode:  # noqa: N801  (used like a function: `with eval_mode(model):`)
    """Eval mode for the duration of a `with`; every module's own flag restored after, also
    after an exception. Restoring per module matters: `model.train(was_training)` would put
    a model with mixed train/eval submodules (a frozen BatchNorm, say) all in one mode.

    Re-entrant: nested blocks restore what their own entry saw.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved: list[dict[nn.Module, bool]] = []  # one per entered block, innermost last

    def __enter__(self) -> nn.Module:
        self.saved.append({m: m.training for m in self.model.modules()})
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.saved.pop().items():
            m.training = mode
