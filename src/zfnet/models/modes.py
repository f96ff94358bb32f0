"""Run a model in eval mode for a while and give it back exactly as it was; refuse a model that
takes no hooks (TorchScript), before anything runs on it."""

from __future__ import annotations

import torch
from torch import nn


class ScriptedModelError(TypeError, ValueError):
    """A TorchScript module (`torch.jit.script`, `torch.jit.trace`, `torch.jit.load`): it takes
    no Python hooks and has no submodules to name, so no engine of zfnet's runs on it."""


def check_not_scripted(model: nn.Module) -> None:
    """Raise ScriptedModelError, with the way out, where `model` is a TorchScript module."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ScriptedModelError(
            f"the model is a TorchScript module ({type(model).__name__}), which takes none of "
            "the hooks zfnet runs on; build the model in Python and load the scripted one's "
            "weights into it: model.load_state_dict(torch.jit.load(PATH).state_dict())")


class eval_mode:  # noqa: N801  (used like a function: `with eval_mode(model):`)
    """Eval mode for the duration of a `with`; every module's own flag restored after, also
    after an exception. Restoring per module matters: `model.train(was_training)` would put
    a model with mixed train/eval submodules (a frozen BatchNorm, say) all in one mode.

    Re-entrant: nested blocks restore what their own entry saw.
    """

    def __init__(self, model: nn.Module) -> None:
        check_not_scripted(model)
        self.model = model
        self.saved: list[dict[nn.Module, bool]] = []  # one per entered block, innermost last

    def __enter__(self) -> nn.Module:
        self.saved.append({m: m.training for m in self.model.modules()})
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.saved.pop().items():
            m.training = mode
