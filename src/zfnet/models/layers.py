"""One way to name a layer everywhere.

zfnet's models: `conv1`…`conv5`, `fc6`…`fc8`, and the modules around them — `relu1`, `pool1`,
`norm1`, …, `relu6`, `drop6`, … (see `zfnet.models.convnet`). `conv1` is the convolution's output;
`relu1` the rectified map, `pool1` after max-pooling, `norm1` after contrast normalisation.
Any other model: the module path, e.g. `features.10` for torchvision's alexnet/vgg.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from zfnet.models.geometry import (
    LAYER_TYPES,
    GeometryError,
    LayerGeometry,
    graph_geometry,
    sequential_geometry,
    sequential_leaves,
)


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
    models the keys are module paths, and the geometry is for an input of `input_size` (a side
    or (H, W); default 224): along the chain for the modules of a `features` Sequential of
    known layers (torchvision's alexnet, vgg), else for every module from one forward pass
    (`zfnet.models.geometry.graph_geometry`: ResNets, DenseNets, GoogLeNet, MobileNets, ...).
    A model that cannot run the default 224 gets no geometry; with an explicit `input_size`
    it is a `GeometryError`.
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
    geo: dict[str, LayerGeometry | None] = {}
    if isinstance(features, nn.Sequential) and all(
            isinstance(m, LAYER_TYPES) for _, m in sequential_leaves(features)):
        geo = dict(sequential_geometry(features, input_size or 224, prefix="features."))
    else:
        try:
            geo = graph_geometry(model, input_size or 224)
        except GeometryError:
            if input_size is not None:
                raise
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


def layer_names(model: nn.Module) -> dict[str, str]:
    """The names `resolve_layer` takes, each to its module path, in forward order: zfnet's short
    names (`conv1`, `pool1`, `fc6`, …) for its models, then every module path (containers too:
    torchvision's `layer3`, `layer3.0`, `features.10`). Cheap: no forward pass."""
    from zfnet.models.convnet import ConvNet

    names: dict[str, str] = {}
    if isinstance(model, ConvNet):
        for seq_name in ("features", "classifier"):
            for name, _ in getattr(model, seq_name).named_children():
                names[name] = f"{seq_name}.{name}"
    for path, _ in model.named_modules():
        if path:
            names.setdefault(path, path)
    return names


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """The module path and module that `layer` addresses — a name (`conv3`, `features.10`,
    `layer3.1`) or the module object itself, as Captum takes it; a clear error otherwise."""
    if isinstance(layer, nn.Module):
        for path, m in model.named_modules():
            if m is layer and path:
                return path, m
        what = "is the model itself" if layer is model else "is not a module of this model"
        raise UnknownLayerError(f"layer {type(layer).__name__} {what}; give one of its modules "
                                "or a name from `zfnet models`")
    names = layer_names(model)
    key = layer.strip() if isinstance(layer, str) else layer
    if key in names:
        return names[key], model.get_submodule(names[key])
    short = [n for n, p in names.items() if n != p]  # zfnet's models: their short names
    raise UnknownLayerError(f"layer {layer!r} does not exist in {type(model).__name__}; "
                            f"valid: {', '.join(short or names)}")


def layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    """The name users type for `layer`: zfnet's short name where it has one, else its path."""
    path, _ = resolve_layer(model, layer)
    short = {p: n for n, p in layer_names(model).items() if n != p}
    return short.get(path, path)


def layer_geometry(model: nn.Module, layer: str | nn.Module,
                   input_size: int | tuple[int, int]) -> LayerGeometry | None:
    """Where the units of `layer`'s output sit in an input of `input_size` (a side or (H, W)):
    any layer of any model, containers (a ResNet stage, a block) included; None where a unit
    mixes every position (fully connected layers, global pooling) or the geometry is unknown."""
    path, module = resolve_layer(model, layer)
    by_path = {i.module: i.geometry for i in layer_info(model, input_size).values()}
    if path in by_path:
        return by_path[path]
    if isinstance(module, nn.Sequential):  # a block of a chain: its last leaf's output
        inside = [p for p in by_path if p.startswith(path + ".")]
        if inside and all(p in by_path for p, _ in sequential_leaves(module, path + ".")):
            return by_path[inside[-1]]
    try:
        return graph_geometry(model, input_size).get(path)
    except GeometryError:
        return None
