"""Every analysis entry point runs the model in eval mode and gives it back as it was: a model
in training mode with some submodules in eval mode (a frozen layer) comes back mixed, the same
modules in the same modes, and no hook is left behind."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import zfnet
from zfnet import pipeline
from zfnet.analyses.correspondence import correspondence
from zfnet.analyses.evolution import feature_evolution
from zfnet.analyses.gallery import project_topk, run_topk_gallery
from zfnet.analyses.invariance import invariance
from zfnet.analyses.occlusion import occlusion, occlusion_report, pointing_game
from zfnet.analyses.probes import extract_features, linear_probes
from zfnet.analyses.sanity import model_randomization
from zfnet.analyses.topk import mine_topk
from zfnet.analyses.transfer import transfer_study
from zfnet.data import load_dataset
from zfnet.deconvnet import project
from zfnet.incremental import occlusion_logits

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = "synthetic?n_train=20&n_val=20&size=32"


@pytest.fixture(scope="module")
def bundle():
    return load_dataset(SPEC)


def _mixed_model() -> nn.Module:
    """zfnet_small in training mode, norm1 and drop7 in eval mode."""
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", input_size=32)
    model.train()
    model.features.norm1.eval()
    model.classifier.drop7.eval()
    return model


@pytest.fixture
def inputs(bundle, tmp_path) -> SimpleNamespace:
    """What the calls below take: the bundle, its val split as model inputs, a few images as
    inputs (x) and as pixels, two batches, part masks and a directory to write into."""
    val = bundle.val.with_mode("centre")
    x = torch.stack([val[i][0] for i in range(4)])  # (4, 3, 32, 32) model inputs
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[:, 8:16, 8:16] = True
    return SimpleNamespace(
        bundle=bundle, val=val, x=x, tmp=tmp_path,
        pixels=torch.stack([bundle.raw_val(i) for i in range(4)]).float(),  # 0..255
        batches=[(x[:2], torch.tensor([0, 1])), (x[2:], torch.tensor([0, 1]))],
        masks={"part": masks},
    )


def _topk_then_project(m: nn.Module, a: SimpleNamespace) -> Any:
    tk = mine_topk(m, a.val, ["conv2"], k=2, indices=range(6))
    return project_topk(m, a.val, tk, {"conv2": [0, 1]})


# Not pipeline.invariance: `invariance` is all it runs on the model, and its photos and plots
# take ~10 s.
CALLS: dict[str, Callable[[nn.Module, SimpleNamespace], Any]] = {
    "mine_topk": lambda m, a: mine_topk(m, a.val, ["conv1", "pool5"], k=2, indices=range(6)),
    "project_topk": _topk_then_project,
    "run_topk_gallery": lambda m, a: run_topk_gallery(
        m, Subset(a.val, range(6)), ["conv2"], k=2, out_dir=a.tmp / "gallery", n_maps=2),
    "feature_evolution": lambda m, a: feature_evolution([(1, m)], a.val, ("conv1",), n_maps=2,
                                                        n_images=6),
    "project": lambda m, a: project(m, a.x, "conv3", 1),
    "occlusion_logits": lambda m, a: occlusion_logits(m, a.x[0], torch.tensor([[0, 0, 8, 8]])),
    "occlusion incremental": lambda m, a: occlusion(m, a.x[0], size=16, stride=16,
                                                    method="incremental"),
    "occlusion full": lambda m, a: occlusion(m, a.x[0], size=16, stride=16, method="full"),
    "pointing_game": lambda m, a: pointing_game(m, a.bundle, 1, size=16, stride=16),
    "occlusion_report": lambda m, a: occlusion_report(m, a.bundle, a.tmp, n_images=1,
                                                      n_pointing=1, size=16, stride=16),
    "invariance": lambda m, a: invariance(m, a.pixels, lambda p: p - 128, "rotate",
                                          values=[0, 90]),
    "correspondence": lambda m, a: correspondence(m, a.x, a.masks, random_draws=2),
    "extract_features": lambda m, a: extract_features(m, a.batches, ["pool1", "relu7"]),
    "linear_probes": lambda m, a: linear_probes(m, a.batches, a.batches, ("pool2",),
                                                ("softmax",)),
    "transfer_study": lambda m, a: transfer_study(
        m, SPEC, (1,), a.tmp, model_name="zfnet_small", n_test=4, scratch_steps=1, batch_size=4),
    "model_randomization": lambda m, a: model_randomization(
        m, a.x[:2], "conv2", torch.tensor([0, 1]), rules=("deconvnet",)),
    "pipeline.gallery": lambda m, a: pipeline.gallery(m, a.bundle, a.tmp, k=2, n_images=6,
                                                      n_maps=2, layers=["conv1"]),
    "pipeline.filters": lambda m, a: pipeline.filters({"a": m}, a.bundle, a.tmp, n_images=6),
    "pipeline.correspondence": lambda m, a: pipeline.correspondence(m, a.bundle, a.tmp,
                                                                    n_images=2, random_draws=2),
    "pipeline.probes": lambda m, a: pipeline.probes(m, SPEC, a.tmp, per_class=1, n_test=4),
    "pipeline.randomization": lambda m, a: pipeline.randomization(m, a.bundle, a.tmp,
                                                                  n_images=2, layer="conv2"),
}


def _check_eval_and_restored(model, before: dict[str, bool], run) -> None:
    """`run()` runs every module of `model` it runs in eval mode, and leaves the model's flags
    as `before` and no hook behind."""
    seen: list[tuple[str, bool]] = []
    handles = [m.register_forward_pre_hook(lambda m, _, n=n: seen.append((n, m.training)))
               for n, m in model.named_modules() if not list(m.children())]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    assert seen, "the analysis ran no module of the model"
    assert [n for n, training in seen if training] == []
    assert {n: m.training for n, m in model.named_modules()} == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", list(CALLS))
def test_runs_in_eval_mode_and_leaves_the_model_as_it_was(name, inputs) -> None:
    model = _mixed_model()
    before = {n: m.training for n, m in model.named_modules()}
    assert set(before.values()) == {True, False}
    # every module the analysis runs must be in eval mode when it runs (dropout off)
    _check_eval_and_restored(model, before, lambda: CALLS[name](model, inputs))


def _mixed_resnet() -> nn.Module:
    """torchvision resnet18 (ImageNet's 1000 classes) in training mode, bn1 and layer2's batch
    norms in eval mode (frozen)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.train()
    model.bn1.eval()
    for m in model.layer2.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


# The calls that take any model, on a ResNet: hooks instead of the chain, the general path,
# full occlusion, layers chosen for it.
ANY_MODEL: dict[str, Callable[[nn.Module, SimpleNamespace], Any]] = {
    "mine_topk": lambda m, a: mine_topk(m, a.val, ["layer1", "layer4", "fc"], k=2,
                                        indices=range(4)),
    "project_topk": lambda m, a: project_topk(
        m, a.val, mine_topk(m, a.val, ["layer2"], k=2, indices=range(4)), {"layer2": [0, 1]}),
    "run_topk_gallery": lambda m, a: run_topk_gallery(
        m, Subset(a.val, range(4)), ["conv1", "layer3"], k=2, out_dir=a.tmp / "gallery",
        n_maps=2),
    "project": lambda m, a: project(m, a.x, "layer3", 1),
    "occlusion full": lambda m, a: occlusion(m, a.x[0], size=16, stride=16),
    "pointing_game": lambda m, a: pointing_game(m, a.bundle, 1, size=16, stride=16),
    "occlusion_report": lambda m, a: occlusion_report(m, a.bundle, a.tmp, n_images=1,
                                                      n_pointing=1, size=16, stride=16),
    "invariance": lambda m, a: invariance(m, a.pixels, lambda p: p - 128, "rotate",
                                          values=[0, 90], layers=None),
    "extract_features": lambda m, a: extract_features(m, a.batches, ["layer2", "avgpool"]),
    "model_randomization": lambda m, a: model_randomization(
        m, a.x[:2], "layer1", torch.tensor([0, 1]), rules=("gradient",)),
    "pipeline.gallery": lambda m, a: pipeline.gallery(m, a.bundle, a.tmp, k=2, n_images=4,
                                                      n_maps=2, layers=["layer1"]),
    "pipeline.filters": lambda m, a: pipeline.filters({"a": m}, a.bundle, a.tmp, n_images=4),
    "pipeline.probes": lambda m, a: pipeline.probes(m, SPEC, a.tmp, per_class=1, n_test=4),
    "pipeline.randomization": lambda m, a: pipeline.randomization(m, a.bundle, a.tmp,
                                                                  n_images=2, layer="layer1"),
}


@pytest.mark.parametrize("name", list(ANY_MODEL))
def test_any_model_runs_in_eval_mode_and_is_left_as_it_was(name, inputs) -> None:
    model = _mixed_resnet()
    before = {n: m.training for n, m in model.named_modules()}
    params = {k: v.clone() for k, v in model.state_dict().items()}
    _check_eval_and_restored(model, before, lambda: ANY_MODEL[name](model, inputs))
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
