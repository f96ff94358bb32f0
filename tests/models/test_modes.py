"""`zfnet.models.eval_mode`: eval mode inside the block, every module's own flag back after it,
also after an exception and when blocks nest."""

import pytest
import torch
from torch import nn

import zfnet.deconvnet
from zfnet.models import eval_mode


def _mixed() -> nn.Module:
    """In training mode except a frozen BatchNorm and one dropout: a mixed model."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.5)))
    model.train()
    model[1].eval()
    model[3][1].eval()
    return model


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def test_eval_inside_and_each_flag_restored_after() -> None:
    model = _mixed()
    before = _modes(model)
    assert set(before.values()) == {True, False}  # the case is mixed
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(_modes(model).values())
        x = torch.ones(2, 3, 5, 5)
        torch.testing.assert_close(model(x), model(x))  # dropout off: deterministic
    assert _modes(model) == before
    # `model.train(was_training)`, the pattern this replaces, would not give this back
    model.train(True)
    assert _modes(model) != before


def test_restored_after_an_exception() -> None:
    model = _mixed()
    before = _modes(model)
    with pytest.raises(RuntimeError, match="channels"):
        with eval_mode(model):
            model(torch.ones(1, 5, 5, 5))  # 5 channels into a 3-channel conv
    assert _modes(model) == before


def test_nested_blocks_restore_what_each_saw() -> None:
    model = _mixed()
    before = _modes(model)
    modes = eval_mode(model)
    with modes:
        model[0].train()  # changed inside the outer block
        with modes:  # the same object entered again
            assert not any(_modes(model).values())
        assert model[0].training and not model[1].training
    assert _modes(model) == before


def test_one_implementation_also_importable_from_the_engine() -> None:
    assert zfnet.deconvnet.eval_mode is eval_mode


def test_a_compiled_model_is_refused_naming_the_module_inside() -> None:
    """torch.compile(model): the engines failed deep in AOTAutograd ("expected 2 grad_outs")
    after minutes of compiling; now one line, before any pass, naming `model._orig_mod`."""
    from torch._dynamo.utils import counters

    from zfnet.deconvnet import project
    from zfnet.models.modes import ScriptedModelError

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    compiled = torch.compile(model)
    frames = counters["frames"]["total"]
    for layer in ("1", "_orig_mod.1"):
        with pytest.raises(ScriptedModelError, match=r"torch\.compile'd \(Sequential inside an "
                                                     r"OptimizedModule\).*model\._orig_mod"):
            project(compiled, torch.rand(1, 3, 8, 8), layer, 0)
    assert counters["frames"]["total"] == frames  # refused before anything was compiled
    assert project(compiled._orig_mod, torch.rand(1, 3, 8, 8), "1", 0).shape == (1, 3, 8, 8)
