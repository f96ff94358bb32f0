"""One way to name a layer everywhere.

zfnet's models: `conv1`…`conv5`, `fc6`…`fc8`, and the modules around them — `relu1`, `pool1`,
`norm1`, …, `relu6`, `drop6`, … (see `zfnet.models.convnet`). `conv1` is the convolution's output;
`relu1` the rectified map, `pool1` after max-pooling, `norm1` after contrast normalisation.
Any other model: the module path, e.g. `features.10` for torchvision's alexnet/vgg.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from zfnet.models.geometry import LayerGeometry, sequential_geometry


class UnknownLayerError(KeyError, ValueError):
    """A layer name that the model does not have; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


@dataclass(frozen=True)
class LayerInfo:
    """Metadata of one addressable layer (timm's `feature_info`, per layer)."""

    name: str  # the name users type: "conv3" (zfnet) or "features.10" (others)
    module: str  # the module path inside the model: "features.conv3"
    kind: str  # conv, relu, pool, norm, fc, dropout, other
    channels: int | None  # feature maps (or units) of the output, when known
    geometry: LayerGeometry | None  # spatial size, stride, receptive field (None for fc layers)


def _kind(m: nn.Module) -> str:
    for cls, kind in (
        (nn.Conv2d, "conv"), (nn.ReLU, "relu"), (nn.MaxPool2d, "pool"),
        (nn.LocalResponseNorm, "norm"), (nn.BatchNorm2d, "norm"), (nn.Linear, "fc"),
        (nn.Dropout, "dropout"),
    ):
        if isinstance(m, cls):
            return kind
    return "other"


def layer_info(model: nn.Module, input_size: int | tuple[int, int] | None = None
               ) -> dict[str, LayerInfo]:
    """Every addressable layer of `model`, in forward order, keyed by the name users type.

    For zfnet's models the keys are the short names (`conv1`, `pool1`, `fc6`, …). For other
    models the keys are module paths; geometry is known for the modules of a `features`
    Sequential (torchvision's alexnet, vgg) given `input_size` (a side or (H, W); default 224).
    """
    from zfnet.models.convnet import ConvNet  # local: convnet imports geometry, not layers

    infos: dict[str, LayerInfo] = {}
    if isinstance(model, ConvNet):
        geo = model.geometry
        channels = model.config.in_channels
        for seq_name in ("features", "classifier"):
            seq = getattr(model, seq_name)
            for name, m in seq.named_children():
                path = f"{seq_name}.{name}"
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    channels = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                infos[name] = LayerInfo(name, path, _kind(m), channels, geo.get(path))
        return infos
    features = getattr(model, "features", None)
    geo = {}
    if isinstance(features, nn.Sequential):
        geo = sequential_geometry(features, input_size or 224, prefix="features.")
    channels = None
    for path, m in model.named_modules():
        if not path or any(True for _ in m.children()):
            continue  # containers are not layers
        if isinstance(m, nn.Conv2d):
            channels = m.out_channels
        elif isinstance(m, nn.Linear):
            channels = m.out_features
        infos[path] = LayerInfo(path, path, _kind(m), channels, geo.get(path))
    return infos


def resolve_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The module path and module that `name` addresses; a clear error listing valid names."""
    infos = layer_info(model)
    if name in infos:
        path = infos[name].module
        return path, model.get_submodule(path)
    by_path = {i.module: i for i in infos.values()}
    if name in by_path:
        return name, model.get_submodule(name)
    raise UnknownLayerError(
        f"layer {name!r} does not exist in {type(model).__name__}; valid: {', '.join(infos)}"
    )
