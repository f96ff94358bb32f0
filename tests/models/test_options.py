"""Model options: each key's type and range checked in one place, for `create_model` and
`--model-opt` alike, with a message naming the option and what is valid."""

import pytest

import zfnet
from zfnet.models import MODEL_OPTIONS, check_model_options, parse_model_option

# one value of the wrong type and one out of range (or not a name) for every option
BAD = {
    "num_classes": ("ten", 0), "in_channels": ("rgb", 0), "input_size": ("big", -3),
    "dropout": ("abc", 1.0), "pool_kernel": (2.5, 0), "pool_stride": ("x", 0),
    "pool_ceil_mode": ("maybe", 1), "lrn_size": ("abc", 0), "lrn_alpha": ("a", -1e-4),
    "lrn_beta": ("b", -0.5), "lrn_k": ("k", 0), "batchnorm": ("maybe", 0),
    "init": (3, "zeros"), "input_std": ("std", 0), "conv_widths": ("a,b", "0,16,16"),
    "fc_width": ("abc", -5), "remove": (5, "conv1"), "strides": ("1,a,1,1,1", "0,1,1,1,1"),
}


def test_every_option_has_bad_values_here() -> None:
    assert set(BAD) == set(MODEL_OPTIONS)


@pytest.mark.parametrize("key", sorted(BAD))
def test_bad_values_name_the_option(key: str) -> None:
    named = "remov" if key == "remove" else key  # "cannot remove ...; removable: ..."
    for value in BAD[key]:
        with pytest.raises(ValueError, match=named) as e:
            zfnet.create_model("zfnet_small", **{key: value})
        assert "\n" not in str(e.value) and repr(value).strip("'") in str(e.value)
        assert type(e.value) is ValueError  # not a class private to zfnet.models.options
        with pytest.raises(ValueError, match=named):
            parse_model_option(f"{key}={value}")


def test_values_are_typed() -> None:
    assert parse_model_option("fc_width=2048") == ("fc_width", 2048)
    assert parse_model_option("dropout = 0") == ("dropout", 0.0)
    assert parse_model_option("batchnorm=TRUE") == ("batchnorm", True)
    assert parse_model_option("batchnorm=false") == ("batchnorm", False)
    assert parse_model_option("remove=conv3, conv4") == ("remove", ["conv3", "conv4"])
    assert parse_model_option("remove=fc7") == ("remove", ["fc7"])
    assert parse_model_option("strides=1, 2,1,1,1") == ("strides", [1, 2, 1, 1, 1])
    assert check_model_options({"conv_widths": [16, 32, 16], "init": "paper"}) == {
        "conv_widths": (16, 32, 16), "init": "paper"}
    assert zfnet.create_model("zfnet_small", batchnorm="true").config.batchnorm is True


def test_messages() -> None:
    with pytest.raises(ValueError, match=r"^fc_width must be a positive integer, got 'abc'$"):
        parse_model_option("fc_width=abc")
    with pytest.raises(ValueError, match=r"^batchnorm must be true or false, got 1$"):
        zfnet.create_model("zfnet_small", batchnorm=1)  # 1/0 are not booleans here
    with pytest.raises(ValueError, match=r"unknown model option 'colour'; valid: batchnorm, "):
        parse_model_option("colour=red")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_option("fc_width")
    # too small an input: which layer empties and the smallest input that works
    with pytest.raises(ValueError, match=r"input_size=5 .* pool2 would be 0x0; the smallest input "
                                         r"it takes is (\d+) px") as e:
        zfnet.create_model("zfnet_small", input_size=5)
    smallest = int(str(e.value).rsplit(" ", 2)[-2])
    zfnet.create_model("zfnet_small", input_size=smallest)
    with pytest.raises(ValueError, match="too small"):
        zfnet.create_model("zfnet_small", input_size=smallest - 1)
