"""Weight averaging (`--ema`): the averaging rule, what a run validates and saves, exact resume."""

import pytest
import torch
from torch import nn

from tests.train.tiny import tiny_bundle, tiny_config
from zfnet.train import evaluate, evaluate_checkpoint, load_model, train
from zfnet.train.checkpoint import read_train_state
from zfnet.train.ema import ema_decay, make_ema

EMA_OPTS = {"conv_widths": [16, 16, 16], "fc_width": 32, "batchnorm": True}


def test_rule_warms_up_then_averages_floats_and_copies_counters() -> None:
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.999, 10**6) == 0.999
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = make_ema(net, 0.5)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for step in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        net(torch.randn(4, 2))  # moves the running statistics and the batch counter
        ema.update_parameters(net)
        d = 0.0 if step == 0 else ema_decay(0.5, step)  # the first update copies
        for k, v in net.state_dict().items():
            expected[k] = v.clone() if not v.is_floating_point() else d * expected[k] + (1 - d) * v
    got = ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v)
    assert int(got["1.num_batches_tracked"]) == 4
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\)"):
        make_ema(net, 1.0)
    with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
        tiny_config("unused", ema=1.5)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema") / "run"
    train(tiny_config(out, epochs=3, ema=0.9, model_opts=EMA_OPTS), bundle=tiny_bundle())
    return out


def test_the_average_is_validated_and_saved_the_live_weights_kept(ema_run) -> None:
    model, meta = load_model(ema_run)
    live = read_train_state(meta["checkpoint"])["live_weights"]
    saved = model.state_dict()
    assert set(live) == set(saved)
    assert any(not torch.equal(live[k], saved[k]) for k in saved if saved[k].is_floating_point())
    val = evaluate(model, torch.utils.data.DataLoader(tiny_bundle().val, batch_size=8),
                   meta["num_classes"])
    assert val["loss"] == pytest.approx(meta["history"][-1]["val_loss"], abs=1e-6)
    kw = {"bundle": tiny_bundle(), "device": "cpu", "amp": "off"}
    averaged = evaluate_checkpoint(ema_run, **kw)
    live = evaluate_checkpoint(ema_run, live_weights=True, **kw)
    assert averaged["loss"] == pytest.approx(val["loss"], abs=1e-6)
    assert live["live_weights"] and live["loss"] != pytest.approx(averaged["loss"], abs=1e-6)


def test_live_weights_of_a_run_without_ema_is_an_error(reference) -> None:
    with pytest.raises(ValueError, match="not from a run with --ema"):
        evaluate_checkpoint(reference[0], bundle=tiny_bundle(), live_weights=True)


def test_resume_with_ema_is_exact(ema_run, tmp_path) -> None:
    out = tmp_path / "run"
    cfg = {"ema": 0.9, "model_opts": EMA_OPTS}
    train(tiny_config(out, epochs=1, **cfg), bundle=tiny_bundle())
    with pytest.raises(ValueError, match=r"ema: 0\.9 in the run, 0\.5 now"):
        train(tiny_config(out, epochs=3, resume=True, ema=0.5, model_opts=EMA_OPTS),
              bundle=tiny_bundle())
    train(tiny_config(out, epochs=3, resume=True, **cfg), bundle=tiny_bundle())
    (a, ma), (b, mb) = load_model(ema_run), load_model(out)
    for ra, rb in zip(ma["history"], mb["history"], strict=True):
        for k in ("train_loss", "val_loss", "val_top1_error"):
            assert ra[k] == pytest.approx(rb[k], abs=1e-6), k
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=1e-6)
    la = read_train_state(ma["checkpoint"])
    lb = read_train_state(mb["checkpoint"])
    assert la["ema_updates"] == lb["ema_updates"] == 3 * 4  # 32 images / batch 8, 3 epochs
    for k, v in la["live_weights"].items():
        torch.testing.assert_close(lb["live_weights"][k], v, rtol=0, atol=1e-6)
