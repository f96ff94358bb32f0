"""TrainConfig refuses what cannot train before a run directory is touched."""

import pytest

from zfnet.train import TrainConfig
from zfnet.train.distributed import parse_device


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"data": "synthetic", "model": "zfnet_small", "out": "unused", **kw})


@pytest.mark.parametrize(("kw", "message"), [
    ({"model": "zfnett"}, r"unknown model 'zfnett' \(did you mean zfnet.*\); valid: .*"
                          "torchvision:NAME, timm:NAME, hf:ORG/NAME or hf:DIR .*, or your own "
                          "FILE.py:NAME"),
    ({"model_opts": {"fc_width": "abc"}}, "model_opts: fc_width must be a positive integer"),
    ({"model_opts": {"batchnorm": "maybe"}}, "model_opts: batchnorm must be true or false"),
    ({"model_opts": {"colour": "red"}}, r"model_opts: unknown model option\(s\) \['colour'\]"),
    ({"device": "gpu"}, "device 'gpu' is not known; valid: auto, cpu, cuda, cuda:N"),
    ({"device": "meta"}, "device 'meta' is not known"),
    ({"patience": -1}, "patience must be >= 0"),
    ({"lr_factor": 0}, r"lr_factor must be in \(0, 1\]"),
    ({"momentum": 1.5}, "momentum must be in"),
    ({"nesterov": True, "momentum": 0}, "with nesterov"),
    ({"seed": -1}, "seed must be in"),
    ({"keep_epochs": (0, 2)}, "keep_epochs must be epochs >= 1"),
])
def test_refused(kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**kw)


def test_model_opts_are_stored_typed() -> None:
    c = _config(model_opts={"strides": "1,1,1,1,1", "batchnorm": "true", "dropout": "0",
                            "remove": "fc7"})
    assert c.model_opts == {"strides": [1, 1, 1, 1, 1], "batchnorm": True, "dropout": 0.0,
                            "remove": ["fc7"]}
    assert TrainConfig.from_dict(c.to_dict()).to_dict() == c.to_dict()  # resume compares these


def test_device_names() -> None:
    assert parse_device("auto") is None
    assert parse_device("cpu").type == "cpu" and parse_device("cuda:1").index == 1
