"""Read the outputs of named layers during a forward pass, leaving no hook behind."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from zfnet.models.geometry import GeometryError, channels_last_layers
from zfnet.models.layers import resolve_layer
from zfnet.models.modes import eval_mode, forward_failure

# layers whose output is (N, C, H, W) by what they compute: no walk needed to read it
_NCHW = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.pooling._MaxPoolNd,
         nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
         nn.LocalResponseNorm)


def shown_units(name: str, act: Any) -> torch.Tensor:
    """`act`, the output of layer `name`, when its units are ones the analyses show: feature
    maps (N, C, H, W) or a vector (N, F). Otherwise a ValueError naming the layer and what it
    outputs (a transformer's tokens (N, L, C), a tuple), before any work on it."""
    if not isinstance(act, torch.Tensor):
        raise ValueError(f"layer {name!r} outputs {type(act).__name__}, not a tensor; choose a "
                         "module that outputs feature maps")
    if act.ndim not in (2, 4):
        raise ValueError(f"layer {name!r} outputs shape {tuple(act.shape)}, neither feature "
                         "maps (N, C, H, W) nor a vector (N, F) (a transformer's tokens are "
                         "neither); choose a layer that outputs them, e.g. a convolution")
    return act


@contextmanager
def capture(model: nn.Module, layers: Sequence[str] | Mapping[str, nn.Module]
            ) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward pass of `model` stores the output of every layer in
    `layers` (names as `zfnet.models.resolve_layer` takes them, or {name: module}) in the
    yielded dict, under its name.

    Maps are stored as (N, C, H, W): a layer whose output is laid out (N, H, W, C) (inside a
    ConvNeXt block, MambaOut's stages: `zfnet.models.geometry.channels_last_layers` at the
    input's size) is stored as its permuted view. The hooks are removed when the block ends,
    also on an exception. Outputs are stored as copies (not detached), so gradients can flow
    through them when the caller wants that.
    """
    if isinstance(layers, Mapping):
        modules = dict(layers)
    else:
        modules = {name: resolve_layer(model, name)[1] for name in layers}
    paths = {id(m): p for p, m in model.named_modules()}
    # the layers whose layout a walk must tell (a convolution's output is (N, C, H, W))
    maybe = [n for n, mod in modules.items() if not isinstance(mod, _NCHW)]
    store: dict[str, torch.Tensor] = {}
    permuted: set[str] = set()  # names laid out (N, H, W, C) at the current input
    walking = [False]
    handles = []

    def layouts(m: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        # the geometry's walk runs a copy of the model, or the model itself: with these hooks
        if m is not model or walking[0]:
            return
        permuted.clear()
        x = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        if x is None or x.ndim != 4:
            return
        walking[0] = True
        try:
            last = channels_last_layers(model, tuple(x.shape[-2:]), int(x.shape[1]))
        except GeometryError:  # the forward pass itself will say why it fails
            last = frozenset()
        finally:
            walking[0] = False
        permuted.update(n for n in maybe if paths.get(id(modules[n])) in last)

    try:
        if maybe:
            handles.append(model.register_forward_pre_hook(layouts, with_kwargs=True))
        for name, module in modules.items():

            def hook(m: nn.Module, _inp: object, out: torch.Tensor, name: str = name,
                     module: nn.Module = module) -> None:
                if m is not module or walking[0]:
                    return  # the geometry's walk (on a copy of the model, or on the model)
                if not isinstance(out, torch.Tensor):
                    store[name] = out
                    return
                # a copy: an in-place op after the layer would overwrite its output — a module
                # (torchvision's ReLU(inplace=True)) or a plain op (a block's `out += identity`)
                out = out.clone()
                store[name] = out.permute(0, 3, 1, 2) if name in permuted else out

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


def check_images(x: object, ndim: int = 4, what: str = "images") -> torch.Tensor:
    """`x` where it is model inputs: a float tensor of `ndim` dims ((N, C, H, W), or (C, H, W)
    for one image). Otherwise a TypeError (not a tensor: a PIL image, a numpy array) or a
    ValueError (pixels as integers, another number of dims) naming what was given and how to
    make inputs of it — not torch's error from deep inside a pass."""
    shape = "(N, C, H, W)" if ndim == 4 else "(C, H, W)"
    make = ("a transform makes them (torchvision's weights.transforms()), or "
            "zfnet.data.load_images(files, source.preprocessing) of the image files")
    if not isinstance(x, torch.Tensor):
        how = ("torch.from_numpy(a).float(), normalised as the model was trained"
               if type(x).__name__ == "ndarray" else make)
        raise TypeError(f"{what} must be a float torch.Tensor {shape} of model inputs, got "
                        f"{type(x).__module__.split('.')[0]}.{type(x).__name__}; {how}")
    if not x.is_floating_point():
        raise ValueError(f"{what} are {str(x.dtype).removeprefix('torch.')} (pixels?): model "
                         f"inputs are float, normalised as the model was trained; {make}")
    if x.ndim != ndim:
        raise ValueError(f"{what} must be {shape}, got shape {tuple(x.shape)}")
    return x


def to_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` on the device and in the dtype of `model`'s parameters (as it is for a model
    without any): every analysis feeds the model through this, wherever the model lives.
    Not a float tensor: the error of `check_images`."""
    check_images(x, x.ndim if isinstance(x, torch.Tensor) else 4)
    p = next(model.parameters(), None)
    if p is not None and p.device.type == "meta" and x.device.type != "meta":
        raise ValueError(f"{type(model).__name__} is on the meta device: it has the shapes but "
                         "no weights to run; load it on a real one (e.g. load_source(..., "
                         "device='cpu'))")
    return x if p is None else cpu_layout(model, x.to(p.device, p.dtype))


# per model: {(C, H, W, dtype): whether its forward takes a channels-last input}
_TAKES_NHWC: weakref.WeakKeyDictionary[nn.Module, dict[tuple, bool]] = \
    weakref.WeakKeyDictionary()


def cpu_layout(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A CPU batch `x` (N, C, H, W) in channels-last memory where `model` runs on it, else `x`
    as it is. Convolutions on the CPU run 1.4-1.9x faster so (bench/bench_cpu_layout.py), the
    same numbers up to float rounding: the order of summation differs, and a deep layer's
    projection moves by up to 3e-5 of its largest value on an AVX2 CPU (under 1e-5 on AVX-512
    ones). A model whose forward `.view()`s a map (an old `x.view(x.size(0), -1)`) cannot:
    found once per model and input shape (`_takes_nhwc`)."""
    if x.ndim != 4 or x.device.type != "cpu" or x.is_contiguous(
            memory_format=torch.channels_last) or not _takes_nhwc(model, x):
        return x
    return x.contiguous(memory_format=torch.channels_last)


def _takes_nhwc(model: nn.Module, x: torch.Tensor) -> bool:
    """Does `model` run on `x` laid out channels-last? One forward pass of one image on a twin
    of the model (its own weights, shared, and no hooks), remembered per model and shape."""
    key = (*x.shape[1:], x.dtype)
    # torch.compile(model): its module, eagerly (a twin of it would be compiled, for one image)
    model = getattr(model, "_orig_mod", model)
    try:
        known = _TAKES_NHWC.setdefault(model, {})
    except TypeError:  # a model that cannot be weakly referenced: asked every time
        known = {}
    if key not in known:
        try:
            shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
            twin = copy.deepcopy(model, shared)
            for m in twin.modules():  # the hooks of a capture around this call stay out
                for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                              m._backward_pre_hooks):
                    hooks.clear()
            with torch.inference_mode(), eval_mode(twin):
                twin(x[:1].contiguous(memory_format=torch.channels_last))
            known[key] = True
        except Exception:  # noqa: BLE001  (a view of a channels-last map; a model deepcopy fails on)
            known[key] = False
    return known[key]


@contextmanager
def running(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """A forward pass of `model` on `x` that the model cannot take (channels, size): a
    ValueError naming the input's shape and the first line of PyTorch's reason."""
    try:
        yield
    except torch.OutOfMemoryError:  # the input fits the model, not the device: as it is
        raise
    except RuntimeError as e:
        raise ValueError(forward_failure(model, x.shape, e)) from e


@torch.inference_mode()
def get_activations(
    model: nn.Module, x: torch.Tensor, layers: str | Sequence[str]
) -> dict[str, torch.Tensor]:
    """Outputs of `layers` (names, or one name) for input `x` (N, C, H, W), each (N, …) —
    maps (N, C, H, W), as `capture` stores them —, computed without gradients in eval mode,
    as every analysis runs a model (a model in train mode: its mode and batch-norm statistics
    are left as they were; dropout does not change the answer)."""
    with eval_mode(model), capture(model, [layers] if isinstance(layers, str) else layers
                                   ) as store:
        model(to_model(model, x))
    return dict(store)
