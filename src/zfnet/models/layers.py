"""One way to name a layer everywhere, and one way to choose layers for any model.

zfnet's models: `conv1`…`conv5`, `fc6`…`fc8`, and the modules around them — `relu1`, `pool1`,
`norm1`, …, `relu6`, `drop6`, … (see `zfnet.models.convnet`). `conv1` is the convolution's output;
`relu1` the rectified map, `pool1` after max-pooling, `norm1` after contrast normalisation.
Any other model: the module path, e.g. `features.10` for torchvision's alexnet/vgg, `layer3` or
`layer3.1.conv2` for a ResNet.

Which layers the analyses look at when none is named (the paper's "layers 1-5" and "layer 7",
for any CNN): `feature_layers` (the gallery, probes), `first_convs` (filters, Fig. 6),
`last_spatial_layer` (occlusion, Fig. 7; the randomisation check) and `vector_layer` (the
feature vector the classifier reads: invariance's layer 7, probes).
"""

from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from zfnet.models.geometry import (
    LAYER_TYPES,
    GeometryError,
    LayerGeometry,
    graph_geometry,
    graph_layers,
    pair,
    record_forward,
    sequential_geometry,
    sequential_leaves,
)
from zfnet.models.modes import check_not_scripted, eval_mode

# the stages `feature_layers` shows at most, and the input side used when none is given
MAX_STAGES = 8
DEFAULT_SIZE = 224


class UnknownLayerError(KeyError, ValueError):
    """A layer name that the model does not have; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class NoSpatialStageError(ValueError):
    """A model with no stage whose output is a spatial map (a vision transformer: its blocks
    give tokens): `feature_layers` has nothing to show without the layers named."""


@dataclass(frozen=True)
class LayerInfo:
    """Metadata of one addressable layer (timm's `feature_info`, per layer)."""

    name: str  # the name users type: "conv3" (zfnet) or "features.10" (others)
    module: str  # the module path inside the model: "features.conv3"
    kind: str  # conv, relu, act, pool, norm, fc, dropout, else the class name (flatten, ...)
    channels: int | None  # feature maps (or units) of the output, when known
    geometry: LayerGeometry | None  # spatial size, stride, receptive field (None for fc layers)
    # False where the forward pass never calls the module (a block's drop_path where it has no
    # skip, timm's attn_drop beside a fused attention): no output, channels and geometry None
    runs: bool = True


_KINDS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Conv2d,), "conv"),
    ((nn.ReLU, nn.ReLU6), "relu"),  # rectifiers: the deconvnet's rule is defined for them
    ((nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish,
      nn.LeakyReLU, nn.ELU, nn.PReLU, nn.Softplus), "act"),
    ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), "pool"),
    ((nn.LocalResponseNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
      nn.modules.instancenorm._InstanceNorm), "norm"),
    ((nn.Linear,), "fc"),
    ((nn.Dropout, nn.Dropout2d), "dropout"),
)


def _kind(m: nn.Module) -> str:
    """conv, relu (a rectifier), act (another activation), pool, norm, fc, dropout, or else the
    module's class name in lower case (flatten, identity, ...)."""
    for classes, kind in _KINDS:
        if isinstance(m, classes):
            return kind
    name = type(m).__name__.lower()
    # other libraries' own activations: timm's GELU, transformers' GELUActivation ...
    if name.endswith("activation") or name.removesuffix("me") in _ACTIVATION_NAMES:
        return "act"
    return name


# activation classes by name (lower case) beyond torch's own
_ACTIVATION_NAMES = {"gelu", "gelutanh", "quickgelu", "silu", "swish", "mish", "hardswish",
                     "hardsigmoid", "hardmish", "sigmoid", "tanh", "hardtanh", "elu", "celu",
                     "selu", "softplus", "prelu", "leakyrelu"}


def layer_info(model: nn.Module, input_size: int | tuple[int, int] | None = None
               ) -> dict[str, LayerInfo]:
    """Every layer of `model` that is a module of its own (no containers), in forward order,
    keyed by the name users type. (Containers — a ResNet's stage `layer3`, a block `layer3.1` —
    are layers for `resolve_layer` and the engines too; `layer_geometry` gives theirs.)

    For zfnet's models the keys are the short names (`conv1`, `pool1`, `fc6`, …). For other
    models the keys are module paths, and the geometry is for an input of `input_size` (a side
    or (H, W); default 224): along the chain for the modules of a `features` Sequential of
    known layers (torchvision's alexnet, vgg), else for every module from one forward pass
    (`zfnet.models.geometry.graph_geometry`: ResNets, DenseNets, GoogLeNet, MobileNets, ...).
    A model that cannot run the default 224 gets no geometry; with an explicit `input_size`
    it is a `GeometryError`. `channels` is the output's own count from that forward pass (a
    DenseNet's transition after its concatenation, a squeeze-and-excitation gate; the last
    dim of tokens, and of attention's (N, heads, L, D)); for a model that does not run, the
    count a convolution, linear layer or batch norm states, else None. A module the forward
    pass does not call has `runs` False, no channels and no geometry.
    """
    check_not_scripted(model)
    from zfnet.models.convnet import ConvNet  # local: convnet imports geometry, not layers

    if input_size is not None and min(pair(input_size)) < 1:
        raise ValueError(f"input_size {input_size} must be at least 1 px (or None: 224)")
    infos: dict[str, LayerInfo] = {}
    if isinstance(model, ConvNet):
        side = model.config.input_size
        if input_size is not None and pair(input_size) != (side, side):
            h, w = pair(input_size)
            raise GeometryError(f"this zfnet model takes {side}x{side} inputs only (its fc6 "
                                f"is sized for them), not {h}x{w}; give input_size {side}")
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
    chain = _plain_chain(model)
    try:  # one forward pass: every module's output channels (and, off a chain, its geometry)
        walked = graph_layers(model, input_size or DEFAULT_SIZE)
    except GeometryError:
        if input_size is not None and not chain:
            raise
        walked = {}
    geo = {path: g for path, (g, _) in walked.items()}
    if chain:  # along the chain of known layers, also for a model that fails to run
        geo = dict(sequential_geometry(model.features, input_size or DEFAULT_SIZE,
                                       prefix="features."))
        empty = next(((p, g) for p, g in geo.items() if min(g.rows.size, g.cols.size) < 1), None)
        if empty is not None:  # as graph_geometry's models, which fail to run
            if input_size is not None:
                h, w = pair(input_size)
                raise GeometryError(
                    f"{type(model).__name__} does not run on a {h}x{w} input ({empty[0]}'s "
                    f"output would be {empty[1].rows.size}x{empty[1].cols.size}); give an "
                    "input size the model takes")
            geo = {}
    for path, m in model.named_modules():
        if not path or any(True for _ in m.children()) or \
                isinstance(m, nn.ModuleList | nn.ModuleDict | nn.Sequential):
            continue  # containers are not layers, nor an empty one (a stage's absent
            # downsampling, transformers' ConvNeXt's): nothing runs in it
        # the output's own count (after a concatenation, in a gate); else what the module says
        runs = not walked or path in walked  # (a model that fails to run: not known)
        channels = walked[path][1] if path in walked else _own(m) if runs else None
        infos[path] = LayerInfo(path, path, _kind(m), channels, geo.get(path), runs)
    return infos


def _own(m: nn.Module) -> int | None:
    """The output channels a module states itself (a convolution's, a linear layer's, a batch
    norm's), for a model whose forward pass could not run; None for the others."""
    for attr in ("out_channels", "out_features", "num_features"):
        value = getattr(m, attr, None)
        if isinstance(value, int):
            return value
    return None


def layer_names(model: nn.Module) -> dict[str, str]:
    """The names `resolve_layer` takes, each to its module path, in forward order: zfnet's short
    names (`conv1`, `pool1`, `fc6`, …) for its models, then every module path (containers too:
    torchvision's `layer3`, `layer3.0`, `features.10`). Cheap: no forward pass."""
    from zfnet.models.convnet import ConvNet

    check_not_scripted(model)
    names: dict[str, str] = {}
    if isinstance(model, ConvNet):
        for seq_name in ("features", "classifier"):
            for name, _ in getattr(model, seq_name).named_children():
                names[name] = f"{seq_name}.{name}"
    for path, _ in model.named_modules():
        if path:
            names.setdefault(path, path)
    return names


def check_has_modules(model: nn.Module) -> None:
    """An UnknownLayerError where `model` has no modules inside it (a network written with
    `F.conv2d` on parameters of its own): layers are named and watched by their modules."""
    if next(model.children(), None) is None:
        raise UnknownLayerError(
            f"{type(model).__name__} has no modules inside it, and zfnet names (and watches) "
            "a network's layers by its modules: build the layers to look at as modules "
            "(nn.Conv2d, nn.Linear, a block of your own; ReLUs may stay F.relu calls)")


# where an error read from Python finds every layer; the command line leaves it out (and names
# its SOURCE: `zfnet.cli.app`), the explorer names its route
FROM_PYTHON = "; from Python, zfnet.layer_info(model)"


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """The module path and module that `layer` addresses — a name (`conv3`, `features.10`,
    `layer3.1`) or the module object itself, as Captum takes it; a clear error otherwise."""
    check_not_scripted(model)
    if not isinstance(layer, (str, nn.Module)):
        raise TypeError(f"layer must be a name (str) or one of the model's modules, got "
                        f"{type(layer).__name__} {layer!r}")
    if isinstance(layer, nn.Module):
        for path, m in model.named_modules():
            if m is layer and path:
                return path, m
        what = "is the model itself" if layer is model else "is not a module of this model"
        raise UnknownLayerError(f"layer {type(layer).__name__} {what}; give one of its modules "
                                "or a name from `zfnet models`")
    names = layer_names(model)
    if not names:
        check_has_modules(model)
    key = layer.strip() if isinstance(layer, str) else layer
    if key in names:
        return names[key], model.get_submodule(names[key])
    if isinstance(key, str) and "," in key and all(
            part.strip() in names for part in key.split(",")):
        raise UnknownLayerError(f"layer {layer!r} names {len(key.split(','))} layers; this "
                                "takes one")
    held = _held_elsewhere(model, key) if isinstance(key, str) else None
    if held is not None:  # named_modules names a module once: at its first path
        raise UnknownLayerError(
            f"layer {layer!r} is the module at {held!r}, one module held at both places: a "
            f"module is named by its first path and read at its last call in a forward pass; "
            f"give {held!r}, or give each place a module of its own")
    short = [n for n, p in names.items() if n != p]  # zfnet's models: their short names
    valid = short or list(names)
    close = ([n for n in valid if n.lower() == key.lower()]
             or difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
             if isinstance(key, str) else [])
    hint = (f"did you mean {', '.join(close[:-1])}{' or ' if len(close) > 1 else ''}"
            f"{close[-1]}? " if close else "")
    if len(valid) > 30:  # a deep network: its top-level modules, and how to see the rest
        top = [n for n in valid if "." not in n]
        listed = (f"{', '.join(top)} and the modules inside them ({len(valid)} in all: "
                  f"`zfnet models SOURCE` lists them{FROM_PYTHON})")
    else:
        listed = ", ".join(valid)
    raise UnknownLayerError(f"layer {layer!r} does not exist in {type(model).__name__}; "
                            f"{hint}valid: {listed}")


def _held_elsewhere(model: nn.Module, path: str) -> str | None:
    """The path `named_modules` gives the module at `path` where that is another one (the
    second place of a module held twice); None otherwise."""
    try:
        module = model.get_submodule(path)
    except (AttributeError, TypeError, ValueError):
        return None
    first = next((p for p, m in model.named_modules() if m is module), None)
    return first if first and first != path else None


def layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    """The name users type for `layer`: zfnet's short name where it has one, else its path."""
    path, _ = resolve_layer(model, layer)
    short = {p: n for n, p in layer_names(model).items() if n != p}
    return short.get(path, path)


def layer_geometry(model: nn.Module, layer: str | nn.Module,
                   input_size: int | tuple[int, int]) -> LayerGeometry | None:
    """Where the units of `layer`'s output sit in an input of `input_size` (a side or (H, W)):
    any layer of any model, containers (a ResNet stage, a block) included; None where a unit
    mixes every position (fully connected layers, global pooling) or the geometry is unknown.
    (`layer_geometries` for several layers at once.)"""
    path, _ = resolve_layer(model, layer)
    return layer_geometries(model, [path], input_size)[path]


def layer_geometries(model: nn.Module, layers: list[str] | tuple[str, ...],
                     input_size: int | tuple[int, int]) -> dict[str, LayerGeometry | None]:
    """`layer_geometry` of each of `layers` (names or module paths, containers too), keyed as
    given: zfnet's models and plain chains read it off the chain (a Sequential block of it: its
    last layer's); any other layer from one forward pass for all (`graph_geometry`)."""
    size = pair(input_size)
    resolved = {name: resolve_layer(model, name) for name in layers}
    by_path: dict[str, LayerGeometry | None] = {}
    if _is_convnet(model) or _plain_chain(model):
        by_path = {i.module: i.geometry for i in layer_info(model, size).values()}
    out: dict[str, LayerGeometry | None] = {}
    rest = []
    for name, (path, module) in resolved.items():
        leaves = sequential_leaves(module, path + ".") if isinstance(module, nn.Sequential) else []
        if path in by_path:
            out[name] = by_path[path]
        elif leaves and all(p in by_path for p, _ in leaves):  # a block of the chain
            out[name] = by_path[leaves[-1][0]]
        else:
            rest.append(name)
    if rest:
        try:
            geo = graph_geometry(model, size)
        except GeometryError:
            geo = {}
        out.update({name: geo.get(resolved[name][0]) for name in rest})
    return {name: out[name] for name in layers}


# --- which layers to look at, for any model ---------------------------------------------------


def _is_convnet(model: nn.Module) -> bool:
    from zfnet.models.convnet import ConvNet

    return isinstance(model, ConvNet)


def _plain_chain(model: nn.Module) -> bool:
    """A `features` nn.Sequential of layers of known geometry (torchvision's alexnet, vgg),
    which the model's forward runs as it is (not found otherwise by `chain_runs_as_forward`)."""
    features = getattr(model, "features", None)
    return isinstance(features, nn.Sequential) and chain_checked(model) is not False and all(
        isinstance(m, LAYER_TYPES) for _, m in sequential_leaves(features)) and \
        _once(features)


def _once(root: nn.Sequential) -> bool:
    """No module twice in the chain (one ReLU at two places): its leaves, which name each
    module once, are then every step the forward takes."""
    ids = [id(m) for s in root.modules() if isinstance(s, nn.Sequential)
           for m in s._modules.values()]
    return len(ids) == len(set(ids))


# model -> (its modules, as `_structure` gives them; whether its forward runs its chain as the
# chain is written: `chain_runs_as_forward`). A model changed since (a module replaced, a
# forward of its own set on an instance) is asked again.
_CHAIN_RUNS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, bool]] = \
    weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> tuple:
    """What the answer of `chain_runs_as_forward` rests on: each module and its type, and a
    forward set on an instance (a notebook's `model.forward = ...`)."""
    return tuple((id(m), type(m), id(m.__dict__.get("forward"))) for m in model.modules())


def hooked(model: nn.Module) -> bool:
    """Whether forward hooks or pre-hooks (a module's, or global ones) may change what the
    model's modules give: a walk along its chain would apply them on the way up and not on
    the way down (a hook halving a convolution's output gave twice the gradient), so such a
    model is taken by the general path, which differentiates what the forward computed."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _known(model: nn.Module) -> bool | None:
    entry = _CHAIN_RUNS.get(model)
    return entry[1] if entry is not None and entry[0] == _structure(model) else None


def _plainly_runs(model: nn.Module, root: nn.Sequential) -> bool:
    """The chain is run as written by construction: plain `nn.Sequential`s (no subclass with a
    forward of its own), no module in it twice, and the model that chain itself or zfnet's
    `ConvNet`, whose forward begins with it."""
    from zfnet.models.convnet import ConvNet

    seqs = [m for m in root.modules() if isinstance(m, nn.Sequential)]
    return all(type(m) is nn.Sequential for m in seqs) and _once(root) and (
        model is root or (type(model) is ConvNet))


def chain_checked(model: nn.Module) -> bool | None:
    """What `chain_runs_as_forward` found for this model; None where it was not asked yet (or
    the model changed since)."""
    return _known(model)


def chain_root(model: nn.Module) -> tuple[nn.Sequential, str] | None:
    """The plain chain a model's layers may be walked along — `model.features` as an
    `nn.Sequential`, or the model itself as one — with its path prefix; None without one."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return features, "features."
    if isinstance(model, nn.Sequential):
        return model, ""
    return None


def chain_runs_as_forward(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the model's own forward on `x` (N, C, H, W: its first image is used) runs its
    plain chain (`chain_root`) as written: the input itself into the chain's first module
    (no normalisation in `forward` before it), each module once, in order, each one's output
    the next one's input (not a Sequential subclass with its own forward, nor one module in it
    twice). Walking the chain instead of calling the model is only right then; the answer is
    kept per model (one forward pass of one image, the first time it is asked). False also
    for a model without a chain, and while forward hooks are on it (`hooked`); a forward that
    fails on `x` raises as it is."""
    if hooked(model):  # not kept: the chain is walked again once they are removed
        return False
    known = _known(model)
    if known is not None:
        return known
    root = chain_root(model)
    if root is None:
        return False
    if _plainly_runs(model, root[0]):  # known without running it
        _CHAIN_RUNS[model] = (_structure(model), True)
        return True
    leaves = sequential_leaves(*root)
    seen: list[tuple[str, torch.Tensor | None, object]] = []

    def record(path: str):  # noqa: ANN202
        def hook(_m: nn.Module, args: tuple, out: object) -> None:
            seen.append((path, args[0] if args and torch.is_tensor(args[0]) else None, out))
        return hook

    first = x[:1]
    handles = [m.register_forward_hook(record(p)) for p, m in leaves]
    try:
        with eval_mode(model), torch.no_grad():
            model(first)
    finally:
        for h in handles:
            h.remove()
    paths = [p for p, _ in leaves]

    def same(a: object, b: object) -> bool:
        return a is b or (torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape
                          and torch.equal(a, b))

    ok = bool(seen) and [p for p, _, _ in seen] == paths[: len(seen)] and \
        same(seen[0][1], first) and all(same(seen[i][1], seen[i - 1][2])
                                        for i in range(1, len(seen)))
    _CHAIN_RUNS[model] = (_structure(model), ok)
    return ok


def _has_conv(m: nn.Module) -> bool:
    return any(isinstance(c, nn.modules.conv._ConvNd) for c in m.modules())


def _spaced(items: list[str], n: int) -> list[str]:
    """At most `n` of `items`, evenly spaced, always the first and the last."""
    if len(items) <= n:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in picks]


def feature_layers(model: nn.Module, input_size: int | tuple[int, int] | None = None
                   ) -> list[str]:
    """The layers whose maps the analyses show when none is named — the paper's "layers 1-5",
    for any CNN — in forward order, as names `resolve_layer` takes:

    - zfnet's models: `conv1`…`conv5` (those present);
    - a plain `features` chain (torchvision's alexnet, vgg, vgg_bn): its convolutions, or
      where they are more than 5 (a VGG's 8 to 16), the last one at each resolution (the
      one before each pooling: a VGG-16's conv1_2, conv2_2, conv3_3, conv4_3, conv5_3); a
      convolution a norm (batch, group) reads, after that norm and its activation (a VGG-BN's
      `features.2` for `features.0`: the map the next layer reads, where a negative scale
      makes the convolution's strongest units the ones the network suppresses);
    - any other network: the outputs of its main stages, the last one at each resolution
      (torchvision resnet: `relu`, its stem convolution after `bn1` and `relu`, then
      `layer1`…`layer4`; densenet: `features.relu0` and the dense blocks; googlenet: `conv1`,
      `conv3` and the last inception block of each size; mobilenet / efficientnet:
      `features.N`, timm's `blocks.N`; a stem convolution a norm reads, after them, as
      a chain's). Stages are found
      generically: the top-level children that contain a convolution and output a map with a
      spatial geometry (`graph_geometry` at `input_size`, default 224); a stage whose own
      stages come out at three resolutions or more (a `features` Sequential, timm's
      `blocks` or `stages`) is replaced by them, going through a lone one (a wrapper); while
      fewer than 3 are found, each is replaced by its own stages, but not by a lone one alone
      (a block of one convolution stays the block). Of a run of stages at one resolution the
      last is shown, and the first stage always. At most 8, evenly spaced, always the first
      and the last.

    A ValueError, naming the convolutions that output a map, when no stage does (a
    transformer's blocks output tokens: a Swin's only map is its patch embedding's)."""
    check_has_modules(model)
    if _is_convnet(model) or _plain_chain(model):
        infos = [(n, i) for n, i in layer_info(model).items()
                 if i.kind == "conv" and i.module.startswith("features.")]
        if len(infos) > 5 and not _is_convnet(model):  # a deep chain (a VGG): by resolution

            def jump(k: int) -> int | None:
                g = infos[k][1].geometry
                return None if g is None else g.rows.jump

            infos = [c for k, c in enumerate(infos)
                     if k + 1 == len(infos) or jump(k) != jump(k + 1)]
        if infos:
            chain = list(layer_info(model).items())  # every layer, the norms after each conv
            return [_chain_rectified(model, chain, n) for n, _ in infos]
    geo = graph_geometry(model, input_size or DEFAULT_SIZE)
    objects: set[str] | None = None  # the modules whose output is no tensor, when asked
    vectors: set[str] = set()  # ... and those whose output is (N, C)
    mixed: set[str] = set()  # ... and (N, C, H, W) (or channels-last): a map without geometry

    def stages(parent: str, m: nn.Module, depth: int = 0, within: bool = False) -> list[str]:
        """The children with a convolution and a map out; through one whose output is not a
        tensor (a Hugging Face model's output object) or that is not called (a ModuleList),
        its own; through one whose map has no geometry (a hybrid's stages, whose last ones
        attend over the whole map), its own where they are two or more (a transformer's patch
        embedding alone is not), any `within` such a one; where no child is a stage, through
        those that output a vector (a wrapper around a whole network, whose output is the
        logits)."""
        nonlocal objects, vectors, mixed
        found, opaque = [], []
        for n, c in m.named_children():
            path = f"{parent}{n}"
            if not _has_conv(c):
                continue
            if geo.get(path) is not None:
                found.append(path)
                continue
            if objects is None:
                made = record_forward(model, input_size or DEFAULT_SIZE)[1]
                objects = {p for p, (_, shape, *_) in made.items() if shape == ()} | {
                    p for p, _ in model.named_modules() if p and p not in made}
                vectors = {p for p, (_, shape, *_) in made.items() if len(shape) == 2}
                mixed = {p for p, (_, shape, *_) in made.items() if len(shape) == 4}
            if depth >= 4:
                continue
            if path in objects:
                found.extend(stages(f"{path}.", c, depth + 1, within))
            elif path in vectors:
                opaque.append((path, c))
            elif path in mixed:
                inner = stages(f"{path}.", c, depth + 1, True)
                found.extend(inner if within or len(inner) >= 2 else [])
        if not found:
            found = [s for path, c in opaque for s in stages(f"{path}.", c, depth + 1, within)]
        return found

    def expand(path: str) -> list[str]:
        """A stage's own stages; through a lone one, that one's; the stage itself where that
        finds fewer than two (a block's output, not its first convolution's)."""
        inner = stages(f"{path}.", model.get_submodule(path))
        if len(inner) == 1:
            deeper = expand(inner[0])
            return deeper if len(deeper) >= 2 else [path]
        return inner or [path]

    def split(path: str) -> list[str]:
        """A stage, or, where its stages come out at three resolutions or more (a chain of
        stages, not one block that downsamples once), those, each split in turn."""
        inner = expand(path)
        if len({geo[p].shape for p in inner}) >= 3:
            return [q for p in inner for q in split(p)]
        return [path]

    found = [p for top in stages("", model) for p in split(top)]
    for _ in range(4):  # a few levels: a backbone inside a wrapper inside a wrapper
        if len(found) >= 3:
            break
        deeper = [p for path in found for p in expand(path)]
        if deeper == found:
            break
        found = deeper
    order = list(geo)  # forward order: a stage's position is where its call ends
    found.sort(key=order.index)
    if not found:  # a transformer: its blocks' outputs are tokens, not maps
        convs = [n for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and geo.get(n) is not None]
        some = ", ".join(convs[:8]) + (f", ... ({len(convs)} in all)" if len(convs) > 8 else "")
        raise NoSpatialStageError(
            f"{type(model).__name__} has no stage with a spatial map to show; give the layers "
            "(--layer)" + (f": its convolutions with a map are {some}, or any layer `zfnet "
                           "models` lists" if convs else "; `zfnet models` lists them"))
    # of each run at one resolution, its last stage (the stage's output); the first always
    last = [p for p, q in zip(found, [*found[1:], None], strict=True)
            if q is None or geo[q].shape != geo[p].shape]
    shown = _spaced(list(dict.fromkeys([found[0], *last])), MAX_STAGES)
    if any(isinstance(model.get_submodule(p), nn.Conv2d) for p in shown):  # a bare stem conv
        made = record_forward(model, input_size or DEFAULT_SIZE)[1]
        shown = [_graph_rectified(model, p, made) for p in shown]
    return shown


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish,
                nn.Mish)
# what may follow a convolution before the map the network passes on: a negative scale in any
# of them makes the convolution's strongest units the ones it suppresses
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def _passes_on(module: nn.Module, normed: bool) -> bool:
    """Whether `module`, next after a convolution (and its norm, `normed`), is part of the map
    the network passes on: a norm first (`_NORMS`), then activations."""
    return isinstance(module, _ACTIVATIONS if normed else _NORMS)


def _chain_rectified(model: nn.Module, chain: list[tuple[str, LayerInfo]], name: str) -> str:
    """A chain's convolution `name` (`chain`: its `layer_info` items, in order), or where a norm
    (`_NORMS`: batch, group, instance) reads it, the last of that norm and the activations
    after it (a VGG-BN's `features.2` for `features.0`): the map the next layer reads, where a
    negative scale would make the convolution's strongest units the ones the network
    suppresses."""
    k = next(i for i, (n, _) in enumerate(chain) if n == name)
    last, normed = name, False
    for n, info in chain[k + 1:]:
        if not _passes_on(model.get_submodule(info.module), normed):
            break
        last, normed = n, True
    return last


def _graph_rectified(model: nn.Module, path: str, made: dict) -> str:
    """`path`, or where it is a convolution whose output goes straight into a norm (a
    ResNet's stem `conv1`, a DenseNet's `features.conv0`), the last of that norm and the
    activations after it, each called once (`relu`, `features.relu0`): the map the network
    passes on (see `_chain_rectified`)."""
    if not isinstance(model.get_submodule(path), nn.Conv2d) or path not in made:
        return path
    order = list(made)
    out = made[path][0]
    last, normed = path, False
    for q in order[order.index(path) + 1:]:
        node, _, feeds, calls = made[q][:4]
        reads = feeds is out or (  # an in-place activation: its input is now its output
            feeds is node and any(f is out for f, _ in getattr(node, "next_functions", ())))
        if not reads or calls != 1 or not _passes_on(model.get_submodule(q), normed):
            break
        normed = True
        last, out = q, node
    return last


def first_convs(model: nn.Module, n: int = 2, input_size: int | tuple[int, int] | None = None
                ) -> list[str]:
    """The first `n` convolutions in forward order (paper Fig. 6's layers 1 and 2): `conv1`,
    `conv2` for zfnet's models, module paths otherwise (torchvision resnet: `conv1`,
    `layer1.0.conv1`). Those with a kernel larger than 1x1 come first, as a 1x1 only mixes
    channels and has no filter to see (GoogLeNet's `conv1`, `conv3`, not its 1x1 `conv2`); 1x1
    ones only where too few others. Order from one forward pass at `input_size` (default 224)
    where the model is not a chain; a ValueError if it has none."""
    if _is_convnet(model) or _plain_chain(model):
        convs = [name for name, i in layer_info(model).items() if i.kind == "conv"]
    else:
        _, made = record_forward(model, input_size or DEFAULT_SIZE)
        convs = [p for p in made if isinstance(model.get_submodule(p), nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d to show filters of")
    spatial = [c for c in convs if tuple(resolve_layer(model, c)[1].kernel_size) != (1, 1)]
    pointwise = [c for c in convs if c not in spatial]
    picked = set(spatial[:n] + pointwise[:max(0, n - len(spatial))])
    return [c for c in convs if c in picked]  # in forward order


def last_spatial_layer(model: nn.Module, input_size: int | tuple[int, int] | None = None
                       ) -> str:
    """The last of `feature_layers`: `conv5` on zfnet's models (the paper's layer 5), the last
    convolution of a plain chain, the last stage of any other network (`layer4` of a ResNet)."""
    return feature_layers(model, input_size)[-1]


# autograd nodes that only reshape or copy: the classifier reads the same numbers
_SAME_VALUES = {
    "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "CloneBackward0",
    "AliasBackward0", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2",
    "UnsqueezeBackward0", "ToCopyBackward0",
}


def vector_layer(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> str:
    """The layer whose output the classifier reads — the paper's "layer 7" for any CNN
    (invariance, Fig. 5; probes, Table 7):

    - zfnet's models: `relu7` (or `relu6`, or `fc8`, the first present);
    - any other model: the module whose output the last `nn.Linear` to run takes, up to a
      reshape (torchvision resnet / googlenet: `avgpool`; alexnet: `classifier.5`; vgg:
      `classifier.4`; mobilenet: `classifier.0`, the pooled vector);
    - where no module outputs it (DenseNet rectifies and pools `features` functionally): the
      last module that feeds it (`features.norm5`);
    - a model with no linear layer: its `last_spatial_layer`.

    Found from one forward pass at `input_size` (default 224)."""
    if _is_convnet(model):
        names = layer_names(model)
        return next(n for n in ("relu7", "relu6", "fc8") if n in names)
    _, made = record_forward(model, input_size or DEFAULT_SIZE)
    order = list(made)
    heads = [p for p in order if isinstance(model.get_submodule(p), nn.Linear)]
    if not heads:
        return last_spatial_layer(model, input_size)
    head = heads[-1]
    start = made[head][2]
    # the head's input up to a reshape, then everything that feeds it
    same, ancestors, todo = set(), set(), [(start, True)]
    while todo:
        node, direct = todo.pop()
        if node is None or node in ancestors:
            continue
        ancestors.add(node)
        if direct:
            same.add(node)
        direct = direct and type(node).__name__ in _SAME_VALUES
        todo.extend((f, direct) for f, _ in node.next_functions)
    before = order[: order.index(head)]
    for pick in (same, ancestors):
        hits = [p for p in before if made[p][0] in pick]
        if hits:
            # the last module to finish feeding the head; of those that output the very same
            # tensor (a block and its last layer, a ReLU and the dropout after it), the first
            node = made[hits[-1] if pick is ancestors else hits[0]][0]
            return next(p for p in before if made[p][0] is node)
    return last_spatial_layer(model, input_size)


def repeated_layers(model: nn.Module, input_size: int | tuple[int, int] | None = None
                    ) -> dict[str, int]:
    """The modules called more than once in one forward pass, with their number of calls (a
    ResNet block's one ReLU module: after bn1, then after the residual sum), by module path, in
    forward order. A hook, the geometry and every analysis see a module's last call. Found from
    one forward pass at `input_size` (default 224); none on zfnet's models and plain chains."""
    if _is_convnet(model) or _plain_chain(model):
        return {}
    _, made = record_forward(model, input_size or DEFAULT_SIZE)
    return {path: m[3] for path, m in made.items() if m[3] > 1}


def score_layer(model: nn.Module) -> str:
    """The layer whose units are the model's outputs, the class scores where it classifies
    (`fc8` on zfnet's models, `fc` of a ResNet, `classifier.6` of alexnet and vgg): the last
    layer in forward order. Its units are the ones that weights' class names name."""
    return next(reversed(layer_info(model)))
