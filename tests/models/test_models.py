"""Every registered model: shapes, sizes, parameter counts, gradients; the registry; overrides."""

import pytest
import torch

import zfnet
from zfnet.models import NetConfig, layer_info, resolve_layer


def _small_input(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    c = model.config
    return torch.randn(n, c.in_channels, c.input_size, c.input_size) * 50


@pytest.mark.parametrize("name", zfnet.list_models())
def test_every_model_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = zfnet.create_model(name, num_classes=7)
    x = _small_input(model)
    y = model(x)
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()
    y.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets no gradient"


@pytest.mark.parametrize("name", zfnet.list_models())
def test_geometry_matches_forward(name: str) -> None:
    """The computed per-layer sizes are the sizes a forward pass actually produces."""
    model = zfnet.create_model(name)
    x = _small_input(model, 1)
    infos = layer_info(model)
    for lname, m in model.features.named_children():
        x = m(x)
        assert x.shape[-1] == infos[lname].geometry.size, lname
        assert x.shape[1] == infos[lname].channels, lname


def test_zfnet_sizes_are_the_papers() -> None:
    infos = layer_info(zfnet.create_model("zfnet"))
    sizes = [infos[n].geometry.size for n in
             ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")]
    assert sizes == [110, 55, 26, 13, 13, 13, 13, 6]
    assert infos["conv1"].geometry.rf == 7 and infos["conv1"].geometry.jump == 2
    assert infos["pool5"].channels == 256


def test_seedtable_sizes() -> None:
    infos = layer_info(zfnet.create_model("zfnet_seedtable"))
    assert [infos[n].geometry.size for n in ("conv1", "pool1", "conv2", "pool2", "pool5")] == [
        112, 55, 28, 13, 6]


def test_alexnet_zf_sizes() -> None:
    m = zfnet.create_model("alexnet_zf")
    infos = layer_info(m)
    assert [infos[n].geometry.size for n in ("conv1", "pool1", "conv2", "pool2", "pool5")] == [
        55, 27, 27, 13, 6]
    assert (m.features.conv1.kernel_size, m.features.conv1.stride) == ((11, 11), (4, 4))
    assert [m.features.get_submodule(f"conv{i}").out_channels for i in range(1, 6)] == [
        96, 256, 384, 384, 256]


def test_parameter_counts() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(zfnet.create_model("zfnet")) == 62_357_608
    assert count(zfnet.create_model("zfnet", num_classes=10)) == 62_357_608 - 990 * 4097


def test_zfnet_structure_is_the_papers() -> None:
    m = zfnet.create_model("zfnet")
    f = dict(m.features.named_children())
    assert list(f) == ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2",
                       "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5"]
    assert f["norm1"].size == 5 and f["norm1"].alpha == 5e-4 and f["norm1"].k == 2
    assert [c.p for c in m.classifier if isinstance(c, torch.nn.Dropout)] == [0.5, 0.5]
    assert m.classifier.fc6.in_features == 9216 and m.classifier.fc8.out_features == 1000


def test_table3_variants() -> None:
    m = zfnet.create_model("zfnet", conv_widths=(512, 1024, 512))
    assert [m.features.get_submodule(f"conv{i}").out_channels for i in (3, 4, 5)] == [
        512, 1024, 512]
    m = zfnet.create_model("zfnet_small", conv_widths="32,96,160,160,96")  # all five
    assert [m.features.get_submodule(f"conv{i}").out_channels for i in range(1, 6)] == [
        32, 96, 160, 160, 96]
    assert m.features.conv2.in_channels == 32 and m(_small_input(m)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"conv_widths needs 3 positive values .* or 5"):
        zfnet.create_model("zfnet_small", conv_widths=(32, 96))
    m = zfnet.create_model("zfnet", fc_width=2048)
    assert m.classifier.fc6.out_features == 2048 and m.classifier.fc8.in_features == 2048
    m = zfnet.create_model("alexnet_small", remove=("conv3", "conv4"))
    assert not hasattr(m.features, "conv3") and m.features.conv5.in_channels == 128
    assert m(_small_input(m)).shape == (2, 10)
    m = zfnet.create_model("zfnet_small", remove="fc6,fc7")
    assert list(dict(m.classifier.named_children())) == ["fc8"]
    m = zfnet.create_model("zfnet_small", remove=("fc7",))
    assert m.classifier.fc8.in_features == 512


def test_strides_and_batchnorm_options() -> None:
    m = zfnet.create_model("zfnet_small", input_size=28, in_channels=1, strides="1,1,1,1,1")
    sizes = [m.geometry[f"features.{n}"].size for n in ("conv1", "pool1", "conv2", "pool2",
                                                         "conv5", "pool5")]
    assert sizes == [28, 14, 14, 7, 7, 3]
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="strides needs 5 positive values"):
        zfnet.create_model("zfnet_small", strides=(1, 1))
    # one number (`--model-opt strides=2` parses to the int 2) is a one-value list, not a crash
    with pytest.raises(ValueError, match="strides needs 5 positive values"):
        zfnet.create_model("zfnet_small", strides=2)
    for bad in ("1,a,1,1,1", 1.5, [1, 2.5, 1, 1, 1]):
        with pytest.raises(ValueError, match="strides needs comma-separated integers"):
            zfnet.create_model("zfnet_small", strides=bad)
    m = zfnet.create_model("zfnet_small", batchnorm=True)
    names = list(dict(m.features.named_children()))
    assert names[:4] == ["conv1", "bn1", "relu1", "pool1"] and "norm1" not in names
    assert layer_info(m)["bn3"].kind == "norm"
    m.train()
    m(_small_input(m)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_small_models_accept_28_to_96_px() -> None:
    for name in ("zfnet_small", "alexnet_small"):
        for size in (28, 64, 96):
            m = zfnet.create_model(name, input_size=size, in_channels=1)
            assert m(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_errors_name_what_is_valid() -> None:
    with pytest.raises(ValueError, match="valid: .*zfnet_small"):
        zfnet.create_model("zfnett")
    with pytest.raises(ValueError, match="unknown model option.*colour.*valid"):
        zfnet.create_model("zfnet", colour=1)
    with pytest.raises(ValueError, match="removable"):
        zfnet.create_model("zfnet", remove=("conv1",))
    with pytest.raises(ValueError, match="too small"):
        zfnet.create_model("zfnet", input_size=16)
    with pytest.raises(KeyError, match="conv9.*valid: conv1, relu1"):
        resolve_layer(zfnet.create_model("zfnet_small"), "conv9")


def test_resolve_layer_short_and_path() -> None:
    m = zfnet.create_model("zfnet_small")
    assert resolve_layer(m, "conv3") == ("features.conv3", m.features.conv3)
    assert resolve_layer(m, "features.pool1")[1] is m.features.pool1
    assert resolve_layer(m, "fc7")[1] is m.classifier.fc7


def test_torchvision_models_get_metadata() -> None:
    tv = pytest.importorskip("torchvision")
    infos = layer_info(tv.models.vgg11())
    assert infos["features.0"].geometry.rf == 3
    assert infos["features.2"].geometry.size == 112  # first max-pool
    assert infos["features.2"].geometry.jump == 2
    assert resolve_layer(tv.models.alexnet(), "features.10")[0] == "features.10"


def test_config_roundtrip() -> None:
    m = zfnet.create_model("zfnet_small", fc_width=256, remove=("conv4",))
    cfg = NetConfig.from_dict(m.config.to_dict())
    assert cfg == m.config


def test_init_paper_is_n001() -> None:
    torch.manual_seed(0)
    m = zfnet.create_model("zfnet_small", init="paper")
    w = m.features.conv3.weight
    assert abs(w.std().item() - 0.01) < 1e-3 and m.features.conv3.bias.abs().max() == 0
