"""Run a model in eval mode for a while and give it back exactly as it was; refuse a model that
takes no hooks (TorchScript), before anything runs on it; say why a forward pass failed."""

from __future__ import annotations

import torch
from torch import nn


class ScriptedModelError(TypeError, ValueError):
    """A TorchScript module (`torch.jit.script`, `torch.jit.trace`, `torch.jit.load`): it takes
    no Python hooks and has no submodules to name, so no engine of zfnet's runs on it; or a
    `torch.compile`d one, whose compiled code the engines do not read (its `_orig_mod` they
    do)."""


def check_not_scripted(model: nn.Module, *, compiled: bool = False) -> None:
    """Raise ScriptedModelError, with the way out, where `model` is a TorchScript module, or a
    `torch.compile`d one unless `compiled` (it runs, as `eval_mode` and scoring take it; its
    layers are not named and walked); a TypeError where it is no module at all (a model's
    name, say)."""
    if not isinstance(model, nn.Module):
        hint = (f" (to build {model!r}: zfnet.create_model or torchvision.models.get_model)"
                if isinstance(model, str) else "")
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}{hint}")
    if isinstance(model, torch.jit.ScriptModule):
        raise ScriptedModelError(
            f"the model is a TorchScript module ({type(model).__name__}), which takes none of "
            "the hooks zfnet runs on; build the model in Python and load the scripted one's "
            "weights into it: model.load_state_dict(torch.jit.load(PATH).state_dict())")
    if not compiled and type(model).__name__ == "OptimizedModule" and isinstance(
            getattr(model, "_orig_mod", None), nn.Module):  # torch.compile(model)
        raise ScriptedModelError(
            f"the model is torch.compile'd ({type(model._orig_mod).__name__} inside an "
            "OptimizedModule): zfnet reads and differentiates the forward pass as PyTorch runs "
            "it eagerly; give the module it compiled, model._orig_mod (the same weights)")


# Words of PyTorch's errors for an input the model cannot take (its channels, its size):
# "Given groups=1, weight of size [..], expected input[..] to have 3 channels", "mat1 and mat2
# shapes cannot be multiplied", "Output size is too small", "Expected 3D (unbatched) or 4D ..."
_INPUT_WORDS = ("shape", "size", "channel", "dimension", "expected input", "must match", "4d")


def forward_failure(model: nn.Module, shape: tuple[int, ...] | torch.Size, error: Exception,
                    ) -> str:
    """Why `model`'s forward pass on an input of `shape` raised `error`, in a line: where the
    error speaks of shapes, that the input is not one the model takes; else that the error is
    the forward pass's own (a user's model that raises), with its first line either way."""
    msg = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    size = "x".join(map(str, shape))
    if any(w in msg.lower() for w in _INPUT_WORDS):
        return (f"{type(model).__name__} does not run on a {size} input ({msg}); give inputs of "
                "the channels and size it takes")
    return (f"{type(model).__name__}'s forward pass failed on a {size} input: "
            f"{type(error).__name__}: {msg} (an error of the model's own code)")


class eval_mode:  # noqa: N801  (used like a function: `with eval_mode(model):`)
    """Eval mode for the duration of a `with`; every module's own flag restored after, also
    after an exception. Restoring per module matters: `model.train(was_training)` would put
    a model with mixed train/eval submodules (a frozen BatchNorm, say) all in one mode.

    Re-entrant: nested blocks restore what their own entry saw.
    """

    def __init__(self, model: nn.Module) -> None:
        check_not_scripted(model, compiled=True)  # `zfnet eval --compile` scores one
        self.model = model
        self.saved: list[dict[nn.Module, bool]] = []  # one per entered block, innermost last

    def __enter__(self) -> nn.Module:
        self.saved.append({m: m.training for m in self.model.modules()})
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.saved.pop().items():
            m.training = mode
