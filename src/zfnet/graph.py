"""The general path of the projection engine: the deconvnet, guided backpropagation and the
gradient through any network built of modules (paper Sec. 2.1 beyond a plain chain).

The windowed engine (`zfnet.deconvnet`) walks a chain of conv / ReLU / pool / norm modules. For
every other network — ResNets (residual additions), DenseNets and GoogLeNet (concatenations),
adaptive pooling, a ReLU module called twice in a block, in-place ReLUs, the fully connected
layers of any model — the images go forward once through PyTorch with autograd recording, and the
seeds go back down the recorded graph. For a signal g arriving at a ReLU whose output was y:

    deconvnet   max(g, 0)             the paper's "rectify"; the forward pass is not used
    guided      max(g, 0) * [y > 0]   Springenberg et al. 2015
    gradient    g * [y > 0]           Simonyan et al. 2014: the plain gradient

Every other operation goes back through its own transposed Jacobian, which for the layers of a
CNN — convolution (the paper's "filtering" with flipped filters), max-pooling (its gradient *is*
the unpooling through the recorded switches), batch norm in eval mode, average and adaptive
pooling, additions, concatenations, flattening, linear layers — is exactly the paper's deconvnet
step; contrast normalisation goes back through its transposed Jacobian, as `lrn="gradient"` in
the windowed engine. ReLU6 (`hardtanh(x, 0, t)`, MobileNetV2) is a rectifier whose gate is
0 < x < t. The deconvnet and guided rules are defined for rectifiers only: where the signal has to
go back through another non-linearity (GELU, SiLU, Hardswish, sigmoid, tanh, ELU, LayerNorm,
softmax …) the walk stops with `RuleUndefinedError`, naming the operation and saying that the
gradient rule applies — unless the walk is inside `nonlinear("gradient")`: then such an
operation goes back through its transposed Jacobian, like every other one, and the rule applies
at the rectifiers only. That is what Captum's `Deconvolution` and `GuidedBackprop` do (they
override ReLU modules and nothing else); a network without a rectifier on the way down then
gets the plain gradient, and a warning says so. What comes after the chosen layer is never
walked.

Speed: autograd's own backward takes one signal per forward image, so many seeds on one image
would need one backward pass each, and `is_grads_batched` (vmap) loops over them for convolutions.
Instead this module walks the recorded graph itself, node by node in topological order, with
every seed of a batch stacked along the batch dimension: R rounds x B images, round r holding the
r-th seed of each image. Each convolution's transposed pass then runs once on all R*B signals (its
weights are all it needs), a pooling's unpooling reads the one forward pass's switches, repeated.
Operations without a batched rule here are still exact: their own backward is called once per
round. Only input gradients are computed (no weight gradients). Nothing is put on the model but
one forward hook per chosen layer, removed in `finally`.

A module called several times in one forward pass (torchvision's `BasicBlock.relu`) names its
last call, as in Captum and as a forward hook sees it.
"""

from __future__ import annotations

import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn

from zfnet.activations import capture, running, shown_units
from zfnet.models.geometry import dim_index

RULES = ("deconvnet", "guided", "gradient")

# Non-linearities for which only the gradient rule is defined (autograd node names).
_NONLINEAR = {
    "GeluBackward0": "GELU", "SiluBackward0": "SiLU", "MishBackward0": "Mish",
    "HardswishBackward0": "Hardswish", "HardsigmoidBackward0": "Hardsigmoid",
    "SigmoidBackward0": "sigmoid", "TanhBackward0": "tanh", "EluBackward0": "ELU",
    "LeakyReluBackward0": "LeakyReLU", "SoftplusBackward0": "Softplus",
    "NativeLayerNormBackward0": "LayerNorm", "NativeGroupNormBackward0": "GroupNorm",
    "SoftmaxBackward0": "softmax", "LogSoftmaxBackward0": "log_softmax",
    "PreluKernelBackward0": "PReLU", "EluBackward1": "ELU", "LeakyReluBackward1": "LeakyReLU",
}

NONLINEAR_MODES = ("error", "gradient")
_NONLINEAR_MODE: ContextVar[str] = ContextVar("zfnet_nonlinear", default="error")


class RuleUndefinedError(ValueError):
    """The deconvnet / guided rule (`rule`) was asked to go back through a non-rectifier
    (`what`: "SiLU", "sigmoid", ...). The message names both ways on: the plain gradient rule,
    or the gradient at that non-linearity only; `message(rule_option=False)` the second alone,
    for a command that computes every rule (`zfnet analyze randomization`)."""

    def __init__(self, rule: str, what: str, rule_option: bool = True) -> None:
        self.rule, self.what = rule, what
        super().__init__(self.message(rule_option))

    def message(self, rule_option: bool = True, server: bool = False) -> str:
        """The error's words; `rule_option`: whether to offer the gradient rule (--rule);
        `server`: in the words of the explorer's server (`zfnet serve`) and its API."""
        rule, what = self.rule, self.what
        start = (f"the {rule} rule is defined for rectifiers (ReLU, ReLU6) only, but the signal "
                 f"has to go back through {what}; ")
        end = f"to take {what}'s gradient and apply the {rule} rule at the rectifiers only, as " \
            "Captum does"
        if server:
            return (start + "use rule=gradient (defined for every layer), or start the server "
                    f"with `zfnet serve --nonlinear gradient` {end}")
        return (start + "use "
                + ("rule 'gradient' (--rule gradient; defined for every layer), or "
                   if rule_option else "")
                + "nonlinear 'gradient' (--nonlinear gradient; in Python, "
                f"`with zfnet.graph.nonlinear(\"gradient\"):`) {end}")


class PlainGradientWarning(UserWarning):
    """Under `nonlinear("gradient")`, a walk met no rectifier: its projection is the gradient."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)


# the collections `fallbacks_recorded` has open: every walk, in any thread, adds to each
_FALLBACKS: list[dict[str, str]] = []


@contextmanager
def fallbacks_recorded() -> Iterator[dict[str, str]]:
    """While inside: each layer (by the name its walk was given, "" where none) whose
    deconvnet or guided walk went back through a non-rectifier by its gradient (under
    `nonlinear("gradient")`): "plain" where it met no rectifier, so its projection is the plain
    gradient, "mixed" where it met some (the rule at those). What `rule_label` words."""
    found: dict[str, str] = {}
    _FALLBACKS.append(found)
    try:
        yield found
    finally:
        _FALLBACKS[:] = [f for f in _FALLBACKS if f is not found]


def rule_label(rule: str, found: Mapping[str, str], layers: Sequence[str]) -> str:
    """What the projections by `rule` from `layers` are, in a figure's words, given what
    `fallbacks_recorded` found: the rule where none took a non-rectifier's gradient;
    "gradient" where all met no rectifier on the way down (the plain gradient throughout);
    else "deconvnet + gradient at non-rectifiers"."""
    kinds = {found.get(n) for n in layers}
    if rule == "gradient" or kinds <= {None}:
        return rule
    return "gradient" if kinds == {"plain"} else f"{rule} + gradient at non-rectifiers"


def fallback_words(rule: str, found: Mapping[str, str], layers: Sequence[str]) -> str:
    """A caption's sentence on the layers of `layers` whose `rule` walks took a non-rectifier's
    gradient (`fallbacks_recorded`); "" where none did."""
    plain = [n for n in layers if found.get(n) == "plain"]
    if rule == "gradient" or not any(n in found for n in layers):
        return ""
    text = (f"Under --nonlinear gradient the {rule} rule applies at rectifiers only, and the "
            "other non-linearities (GELU, SiLU, LayerNorm …) are walked back by their gradient")
    if len(plain) == len(layers):
        return (text + ": with no rectifier on the way down, every projection here is the "
                f"plain gradient (Simonyan et al. 2014), not a {rule} projection.")
    if plain:
        return (text + f"; below {', '.join(plain)}, with no rectifier on the way down, the "
                "projection is the plain gradient (Simonyan et al. 2014).")
    return text + "."


@contextmanager
def nonlinear(mode: str) -> Iterator[None]:
    """How the deconvnet and guided rules go back through a non-linearity other than a rectifier
    (GELU, SiLU, sigmoid, Hardswish, LayerNorm …) inside the block: "error" (the default) stops
    with `RuleUndefinedError`; "gradient" takes its transposed Jacobian, the rule applying at
    the rectifiers only, as Captum does. Per thread (a `ContextVar`); see `set_nonlinear`."""
    token = set_nonlinear(mode)
    try:
        yield
    finally:
        _NONLINEAR_MODE.reset(token)


def current_nonlinear() -> str:
    """This thread's `nonlinear` mode."""
    return _NONLINEAR_MODE.get()


def set_nonlinear(mode: str) -> Any:
    """Set `nonlinear`'s mode for this thread from now on (a worker thread's initializer); the
    token undoes it (`ContextVar.reset`)."""
    if mode not in NONLINEAR_MODES:
        raise ValueError(f"nonlinear={mode!r} is not known; valid: {', '.join(NONLINEAR_MODES)}")
    return _NONLINEAR_MODE.set(mode)


SEEDS = ("activation", "one")


def check_seed(seed: str) -> None:
    """ValueError for a seed mode that is not one of `SEEDS`."""
    if seed not in SEEDS:
        raise ValueError(f"seed={seed!r} is not known; valid: {', '.join(SEEDS)}")


def seed_values(value: Tensor, seed: str) -> Tensor:
    """What each unit goes down with: `"activation"`, its own value clamped at 0 (the paper's:
    a unit that is not active has nothing to show); `"one"`, 1 whatever its value (Captum's:
    the gradient of the unit itself, so a unit below zero, a class score among them, shows
    what would raise it)."""
    return value.clamp(min=0) if seed == "activation" else torch.ones_like(value)


def check_rule(rule: str) -> None:
    """A clear error for a rule that does not exist."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not known; valid: {', '.join(RULES)}")


def layer_outputs(model: nn.Module, x: Tensor, modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    """Run `model` on `x`; the output of each of `modules` (its last call), attached to the
    autograd graph, maps as (N, C, H, W) (`zfnet.activations.capture`: a channels-last output
    as its permuted view). No hook is left behind."""
    with capture(model, modules) as store, running(model, x):
        model(x.clone())  # not the leaf itself: a forward may change its input in place
    for name, out in store.items():
        if not isinstance(out, Tensor):
            raise ValueError(f"layer {name!r} returns {type(out).__name__}, not a "
                             "tensor: choose a module that outputs a feature map")
    missing = [n for n in modules if n not in store]
    if missing:
        raise ValueError(f"layer(s) {', '.join(missing)} did not run in the forward pass")
    return store


# --- the batched walk down the recorded graph ------------------------------------------------

Rule = Callable[[Any, Tensor, int, int], list[Tensor | None]]


def _rep(t: Tensor, rounds: int) -> Tensor:
    """A per-image saved tensor (B, ...) repeated for R rounds: (R*B, ...)."""
    return t if rounds == 1 else t.repeat(rounds, *([1] * (t.ndim - 1)))


def _rectifier(node: Any, g: Tensor, rounds: int, rule: str) -> list[Tensor | None]:
    """A ReLU (or ReLU6: hardtanh with min 0) under the rule."""
    if rule == "deconvnet":
        return [g.clamp(min=0)]
    if type(node).__name__ == "HardtanhBackward0":
        x = node._saved_self
        on = (x > 0) & (x < node._saved_max_val)  # (B, ...): the gate of each image
    else:
        on = node._saved_result > 0
    if rule == "guided":
        g = g.clamp(min=0)
    # every round gated by its image's mask, broadcast rather than repeated R times
    return [(g.unflatten(0, (rounds, -1)) * on).flatten(0, 1)]


def _elementwise(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    """An element-wise non-linearity f: g * f'(x), f'(x) from the node's own backward of ones
    (once per image, in the node's dtype), every round multiplied by it."""
    meta = node._input_metadata[0]
    slope = node(torch.ones(meta.shape, dtype=meta.dtype, device=meta.device))
    slope = slope[0] if isinstance(slope, tuple) else slope
    if slope is None or tuple(slope.shape) != tuple(meta.shape):
        raise NotImplementedError
    return [(g.unflatten(0, (rounds, -1)) * slope.to(g.dtype)).flatten(0, 1)]


def _conv(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    """The transposed convolution (the paper's "filtering"); a strided one back to few
    channels (conv1, to RGB) as one convolution per output phase, 3-4x faster on a CPU."""
    if node._saved_transposed or g.ndim != 4:
        raise NotImplementedError
    x, w = node._saved_input, node._saved_weight.to(g.dtype)
    stride, pad = tuple(node._saved_stride), tuple(node._saved_padding)
    pad = pad * 2 if len(pad) == 1 else pad  # padding="valid" saves (0,)
    if node._saved_groups == 1 and tuple(node._saved_dilation) == (1, 1) and \
            max(stride) > 1 and w.shape[1] <= 4 and g.device.type == "cpu":
        from zfnet.deconvnet import conv_transpose_phases, phase_weights

        h, wd = x.shape[-2:]
        gi = conv_transpose_phases(g.contiguous(memory_format=torch.channels_last),
                                   phase_weights(w, stride), stride, w.shape[1],
                                   h + pad[0], wd + pad[1])
        return [gi[..., pad[0]:, pad[1]:], None, None]
    size = (g.shape[0], *x.shape[1:])
    gi = torch.nn.grad.conv2d_input(size, w, g, stride, pad, node._saved_dilation,
                                    node._saved_groups)
    return [gi, None, None]


def _batchnorm(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    if node._saved_training:
        raise NotImplementedError  # batch statistics: not a per-image linear map
    scale = torch.rsqrt(node._saved_running_var + node._saved_eps)
    if node._saved_weight is not None:
        scale = scale * node._saved_weight
    shape = [1, -1] + [1] * (g.ndim - 2)
    return [g * scale.to(g.dtype).reshape(shape), None, None]


def _maxpool(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    """Unpooling: each value to its recorded switch, values of overlapping windows that share
    one added (PyTorch's own kernel: 2x the speed of a scatter-add in bf16)."""
    x, idx = node._saved_self, node._saved_result1  # input (B, C, H, W), switches (B, C, h, w)
    shape = (g.shape[0], *x.shape[1:])
    return [torch.ops.aten.max_pool2d_with_indices_backward(
        g, g.new_empty(()).expand(shape), node._saved_kernel_size, node._saved_stride,
        node._saved_padding, node._saved_dilation, node._saved_ceil_mode, _rep(idx, rounds))]


def _add(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    """Each operand gets g, summed over the dims it was broadcast along (a per-channel bias
    or gate added to a map, a scalar parameter)."""
    alpha = getattr(node, "_saved_alpha", 1)
    out = []
    for j, (f, i) in enumerate(node.next_functions):
        gj = g if j == 0 or alpha == 1 else g * alpha
        if f is not None and i < len(f._input_metadata):
            gj = _summed_to(gj, tuple(f._input_metadata[i].shape), rounds)
        out.append(gj)
    return out


def _summed_to(g: Tensor, shape: tuple[int, ...], rounds: int) -> Tensor:
    """g (R * B, ...: R rounds of a tensor of B rows) summed, round by round, to a tensor of
    `shape` that was broadcast to it: (R * shape[0], *shape[1:]), or (R,) for a scalar."""
    per = g.unflatten(0, (rounds, -1))  # (R, B, ...)
    if tuple(per.shape[1:]) == shape:
        return g
    extra = per.ndim - 1 - len(shape)  # leading dims the operand did not have
    if extra:
        per = per.sum(dim=tuple(range(1, 1 + extra)))
    per = per.sum_to_size((rounds, *shape))
    return per.flatten(0, 1) if shape else per


def _cat(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    dim = dim_index(node._saved_dim, len(node._input_metadata[0].shape))
    sizes = [fn._input_metadata[i].shape[dim] if fn is not None else None
             for fn, i in node.next_functions]
    if None in sizes or dim == 0:  # along the batch: rounds and images interleave
        raise NotImplementedError
    return list(g.split(sizes, dim))


def _view(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    """Back to the input's shape, round by round: a view may fold the batch into other dims
    (a linear layer on (N, H, W, C) maps sees N*H*W rows), so g's first dim is R times the
    output's, not the input's."""
    sizes = list(node._saved_self_sym_sizes)
    return [g.reshape(rounds * sizes[0], *sizes[1:])]


def _permute(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    """Back through a permutation that keeps the batch first (a ConvNeXt block's (N, C, H, W)
    <-> (N, H, W, C)): the inverse permutation, all rounds at once."""
    nd = g.ndim
    dims = [dim_index(d, nd) for d in node._saved_dims]
    if dims[0] != 0:
        raise NotImplementedError  # the batch moves: rounds and images would interleave
    inverse = [0] * nd
    for i, d in enumerate(dims):
        inverse[d] = i
    return [g.permute(inverse)]


def _identity(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    return [g]


def _mean(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    dims = [dim_index(d, len(node._saved_self_sym_sizes)) for d in node._saved_dim]
    if 0 in dims:
        raise NotImplementedError  # a mean over the batch mixes images
    sizes = list(node._saved_self_sym_sizes)
    if not node._saved_keepdim:
        for d in sorted(dims):
            g = g.unsqueeze(d)
    n = 1
    for d in dims:
        n *= int(sizes[d])
    return [g.expand(g.shape[0], *sizes[1:]) / n]


def _addmm(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    return [None, (g @ node._saved_mat2.T.to(g.dtype)) * node._saved_alpha, None]


def _avgpool(node: Any, g: Tensor, rounds: int) -> list[Tensor | None]:
    x = node._saved_self
    shape = (g.shape[0], *x.shape[1:])
    if type(node).__name__ == "AdaptiveAvgPool2DBackward0":
        gi = torch.ops.aten._adaptive_avg_pool2d_backward(g, g.new_empty(shape))
    else:
        gi = torch.ops.aten.avg_pool2d_backward(
            g, g.new_empty(shape), node._saved_kernel_size, node._saved_stride,
            node._saved_padding, node._saved_ceil_mode, node._saved_count_include_pad,
            node._saved_divisor_override)
    return [gi]


_BATCHED: dict[str, Callable[[Any, Tensor, int], list[Tensor | None]]] = {
    "ConvolutionBackward0": _conv, "NativeBatchNormBackward0": _batchnorm,
    "MaxPool2DWithIndicesBackward0": _maxpool, "AddBackward0": _add, "CatBackward0": _cat,
    "ViewBackward0": _view, "ReshapeAliasBackward0": _view, "UnsafeViewBackward0": _view,
    "PermuteBackward0": _permute,
    "CloneBackward0": _identity, "AliasBackward0": _identity, "MeanBackward1": _mean,
    "AddmmBackward0": _addmm, "AvgPool2DBackward0": _avgpool,
    "AdaptiveAvgPool2DBackward0": _avgpool,
}
# the element-wise non-linearities (walked under the gradient rule, or `nonlinear("gradient")`)
_BATCHED.update({name: _elementwise for name in _NONLINEAR if not name.startswith(
    ("Native", "Softmax", "LogSoftmax", "Prelu"))})


def _per_round(node: Any, grads: list[Tensor | None], rounds: int) -> list[Tensor | None]:
    """Any node: its own backward, once per round (exact, not batched)."""
    meta = node._input_metadata
    parts: list[list[Tensor | None]] = []
    for r in range(rounds):
        args = []
        for i, g in enumerate(grads):
            b = meta[i].shape[0] if len(meta[i].shape) else 1
            if g is None:
                args.append(torch.zeros(meta[i].shape, dtype=meta[i].dtype, device=meta[i].device))
            elif not len(meta[i].shape):  # a scalar: one value per round, (R,)
                args.append((g[r] if g.ndim else g).to(meta[i].dtype))
            else:  # in the node's own dtype (a walk in bf16 goes back through it in float32)
                args.append(g[r * b: (r + 1) * b].to(meta[i].dtype))
        res = node.apply(*args) if hasattr(node, "apply") else node(*args)  # Python / C++
        res = list(res) if isinstance(res, tuple) else [res]
        # autograd's engine sums a gradient over the dims its input was broadcast along (a
        # squeeze-and-excitation gate times a map) after calling the node; so must we
        for j, ((f, i), g) in enumerate(zip(node.next_functions, res, strict=False)):
            if f is not None and g is not None and i < len(f._input_metadata):
                want = tuple(f._input_metadata[i].shape)
                if tuple(g.shape) != want:
                    res[j] = g.sum_to_size(want)
        parts.append(res)
    dtype = next(g.dtype for g in grads if g is not None)
    # rounds one after another along the first dim; a scalar's, stacked: (R,)
    return [None if p[0] is None else (torch.cat(p) if p[0].ndim else torch.stack(p)).to(dtype)
            for p in zip(*parts, strict=True)]


def _postorder(root: Any) -> list[Any]:
    """Every node below `root`, each after all the nodes it leads to (iterative DFS)."""
    order: list[Any] = []
    done: set[Any] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        n, expanded = stack.pop()
        if expanded:
            order.append(n)
            continue
        if n in done:
            continue
        done.add(n)
        stack.append((n, True))
        stack.extend((f, False) for f, _ in n.next_functions if f is not None and f not in done)
    return order


@torch.no_grad()
def batched_backward(act: Tensor, x: Tensor, seeds: Tensor, rule: str,
                     dtype: torch.dtype | None = None, layer: str | None = None) -> Tensor:
    """Walk `seeds` (R, *act.shape) down the graph from `act` to the leaf `x` (B, ...) under
    `rule`: (R, *x.shape), seed r of image b in row [r, b]. Exact: equal to R calls of
    autograd (with the rule's rectifiers), done as one batched pass where rules allow.
    `dtype` (e.g. torch.bfloat16): the signals go down in it (the result in x's dtype).
    `layer`: the name of the layer `act` comes from, for the warning that names it."""
    if act.grad_fn is None:
        raise ValueError("the layer's output does not depend on the input")
    rounds = seeds.shape[0]
    order = _postorder(act.grad_fn)
    leaf = next((n for n in order if type(n).__name__ == "AccumulateGrad" and n.variable is x),
                None)
    if leaf is None:
        raise ValueError("the layer's output does not depend on the input")
    useful = {leaf}
    for n in order:  # children first: a node is useful if one of its children is
        if any(f in useful for f, _ in n.next_functions):
            useful.add(n)
    deps: dict[Any, int] = defaultdict(int)  # unprocessed consumers of each node
    for n in useful:
        for f, _ in n.next_functions:
            if f in useful:
                deps[f] += 1
    grads: dict[Any, list[Tensor | None]] = {}
    met: dict[str, int] = defaultdict(int)  # rectifiers and other non-linearities walked
    flat = seeds.reshape(rounds * seeds.shape[1], *seeds.shape[2:])
    grads[act.grad_fn] = [flat if dtype is None else flat.to(dtype)]
    ready = [act.grad_fn]
    while ready:
        node = ready.pop()
        if node is leaf:
            continue
        g_out = grads.pop(node)
        name = type(node).__name__
        g_in = _node_backward(node, name, g_out, rounds, rule, met)
        for (f, i), g in zip(node.next_functions, g_in, strict=False):
            if f is None or f not in useful:
                continue
            if g is not None:
                slot = grads.setdefault(f, [None] * max(1, len(f._input_metadata)))
                slot[i] = g if slot[i] is None else slot[i] + g
            deps[f] -= 1
            if deps[f] == 0:
                ready.append(f)
    if rule != "gradient" and met["other"]:
        for found in list(_FALLBACKS):
            if found.get(layer or "") != "plain":
                found[layer or ""] = "mixed" if met["rectifier"] else "plain"
    if rule != "gradient" and met["other"] and not met["rectifier"]:
        where = f"layer {layer!r}" if layer else "this layer"
        warnings.warn(f"no rectifier on the way down from {where}: the {rule} rule applies at "
                      "rectifiers only, so its projection here is the plain gradient",
                      PlainGradientWarning, stacklevel=caller_stacklevel())
    g = grads.get(leaf, [None])[0]
    if g is None:
        g = x.new_zeros(rounds * x.shape[0], *x.shape[1:])
    return g.to(x.dtype).reshape(rounds, *x.shape)


def _node_backward(node: Any, name: str, g_out: list[Tensor | None], rounds: int,
                   rule: str, met: dict[str, int]) -> list[Tensor | None]:
    if name in ("ReluBackward0", "ReluBackward1") or (
            name == "HardtanhBackward0" and node._saved_min_val == 0):
        met["rectifier"] += 1
        return _rectifier(node, g_out[0], rounds, rule)  # type: ignore[arg-type]
    if name in _NONLINEAR or name == "HardtanhBackward0":
        met["other"] += 1
        if rule != "gradient" and _NONLINEAR_MODE.get() == "error":
            what = _NONLINEAR.get(name) or \
                f"hardtanh({node._saved_min_val}, {node._saved_max_val})"
            raise RuleUndefinedError(rule, what)
    fn = _BATCHED.get(name)
    if fn is not None and len(g_out) == 1 and g_out[0] is not None:
        try:
            return fn(node, g_out[0], rounds)
        except NotImplementedError:
            pass
    return _per_round(node, g_out, rounds)


# --- projections of seeds ----------------------------------------------------------------------

def project_graph(
    model: nn.Module,
    images: Tensor,
    modules: dict[str, nn.Module],
    seeds: dict[str, tuple[Tensor, Tensor, Tensor | None]],
    rule: str,
    *,
    image_batch: int = 16,
    seed_batch: int = 16,
    dtype: torch.dtype | None = None,
    seed: str = "activation",
    progress: Callable[[int], None] | None = None,
) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Project seeds of several layers to the input through the model's real graph.

    images (N, C, H, W) on the model's device and dtype. `seeds[name]` = (image_index (S,),
    channels (S,), positions (S, 2) or None): positions in the layer's (h, w) map, None for the
    strongest unit of each seeded map (or for a flat (N, F) layer, which has no positions).
    A flat layer's units all sit at (0, 0) (as top-k mining records them).
    Each seed goes down with the activation's own value, clamped at 0 (a unit that is not active
    has nothing to show: its projection is zero), as in the windowed engine; `seed="one"`: with
    1 (`seed_values`). `image_batch`
    images go forward together; their seeds go down `seed_batch` signals per pass.

    Returns {name: (projections (S, C, H, W), activation values (S,), rows (S,), cols (S,))},
    rows/cols the units' positions (0 for a flat layer). The model must already be in the mode
    wanted (eval) — `zfnet.deconvnet.project_layers` takes care of it. progress: called with
    the number of seeds that went down, after each pass.
    """
    check_rule(rule)
    check_seed(seed)
    # out of inference mode (a notebook's `torch.inference_mode()`): the walk needs the graph
    with torch.inference_mode(False):
        return _project_graph(model, images, modules, seeds, rule, image_batch, seed_batch,
                              dtype, seed, progress)


def _project_graph(model: nn.Module, images: Tensor, modules: dict[str, nn.Module],
                   seeds: dict[str, tuple[Tensor, Tensor, Tensor | None]], rule: str,
                   image_batch: int, seed_batch: int, dtype: torch.dtype | None,
                   seed: str = "activation", progress: Callable[[int], None] | None = None
                   ) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    out = {k: images.new_zeros(len(v[0]), *images.shape[1:]) for k, v in seeds.items()}
    values = {k: torch.zeros(len(v[0]), dtype=torch.float32) for k, v in seeds.items()}
    where = {k: torch.zeros(len(v[0]), dtype=torch.long) for k, v in seeds.items()}
    width = {}
    wanted = sorted({int(i) for v in seeds.values() for i in v[0].tolist()})
    for lo in range(0, len(wanted), image_batch):
        chunk = wanted[lo: lo + image_batch]
        x = images[chunk].detach().requires_grad_(True)  # (B, C, H, W)
        with torch.enable_grad():
            acts = layer_outputs(model, x, {k: modules[k] for k in seeds})
        for name, act in acts.items():
            width[name] = act.shape[3] if act.ndim == 4 else 1
            _down_layer(x, act, name, seeds[name], chunk, rule, seed_batch, out[name],
                        values[name], where[name], dtype, seed, progress)
        del acts
    return {k: (out[k], values[k], where[k] // width.get(k, 1), where[k] % width.get(k, 1))
            for k in seeds}


def _down_layer(x: Tensor, act: Tensor, name: str, seed: tuple[Tensor, Tensor, Tensor | None],
                chunk: list[int], rule: str, seed_batch: int, out: Tensor,
                values: Tensor, positions: Tensor, dtype: torch.dtype | None = None,
                seed_mode: str = "activation",
                progress: Callable[[int], None] | None = None) -> None:
    """The seeds of one layer on the images `chunk` (the rows of `x`), down to `x` in rounds."""
    img, ch, pos = seed
    b, c = shown_units(name, act).shape[:2]
    if b != len(chunk):
        raise ValueError(f"layer {name!r} gives {b} row(s) for a batch of {len(chunk)} images: "
                         "its output does not follow the images (does it depend on them?); "
                         "name a layer the images go through")
    local = torch.full((max(chunk) + 1,), -1, dtype=torch.long)
    local[torch.tensor(chunk)] = torch.arange(len(chunk))
    sel = torch.nonzero((img <= max(chunk)) & (local[img.clamp(max=max(chunk))] >= 0)).flatten()
    if not sel.numel():
        return
    if bool((ch[sel] < 0).any() or (ch[sel] >= c).any()):
        raise ValueError(f"channels must lie in [0, {c}) for layer {name!r}, got "
                         f"{ch[sel].tolist()}")
    flat = act.detach().reshape(b, c, -1)  # (B, C, h*w), or (B, F, 1) for a flat layer
    bi = local[img[sel]].to(act.device)
    chs = ch[sel].to(act.device)
    if pos is None:
        where = flat[bi, chs].argmax(1)  # first maximum on ties
    else:
        p = pos[sel].to(act.device)
        if act.ndim != 4 and bool((p != 0).any()):
            raise ValueError(f"layer {name!r} has no spatial map: its units sit at (0, 0); "
                             "give no positions, or (0, 0)")
        h, w = act.shape[2:] if act.ndim == 4 else (1, 1)
        if bool(((p[:, 0] < 0) | (p[:, 0] >= h) | (p[:, 1] < 0) | (p[:, 1] >= w)).any()):
            raise ValueError(f"positions must lie in the {h}x{w} map of {name!r}")
        where = p[:, 0] * w + p[:, 1]
    value = flat[bi, chs, where]
    values[sel] = value.float().cpu()
    positions[sel] = where.cpu()
    # round of each seed: its rank among this layer's seeds on the same image
    order = torch.argsort(bi, stable=True)
    sorted_bi = bi[order]
    first = torch.searchsorted(sorted_bi, sorted_bi, right=False)
    rnd = torch.empty_like(bi)
    rnd[order] = torch.arange(len(bi), device=bi.device) - first
    n_rounds = int(rnd.max()) + 1
    per_pass = max(1, seed_batch // b)
    for r0 in range(0, n_rounds, per_pass):
        r1 = min(n_rounds, r0 + per_pass)
        m = (rnd >= r0) & (rnd < r1)
        seeds = act.new_zeros(r1 - r0, b, c, flat.shape[2])
        seeds[rnd[m] - r0, bi[m], chs[m], where[m]] = seed_values(value[m], seed_mode).to(act.dtype)
        g = batched_backward(act, x, seeds.view(r1 - r0, *act.shape), rule,
                             dtype, name)  # (R, B, C, H, W)
        out[sel[m.cpu()]] = g[rnd[m] - r0, bi[m]].detach().to(out.dtype)
        if progress is not None:
            progress(int(m.sum()))


def indices(values: Any, what: str) -> Tensor:
    """`values` (ints, a tensor or array of them) as a flat long tensor on the CPU; a value that
    is not a whole number is a ValueError naming `what`, not silently truncated; one that is
    no number at all (a string) a TypeError."""
    try:
        t = torch.as_tensor(values).cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{what} must be whole numbers (an int, a list or a tensor of them), "
                        f"got {type(values).__name__} {values!r:.60}") from e
    if t.dtype == torch.bool or t.is_complex() or (
            t.is_floating_point() and bool((t != t.trunc()).any())):
        raise ValueError(f"{what} must be whole numbers, got {t.flatten()[:8].tolist()}")
    return t.to(torch.long).reshape(-1)


def seeds_from(image_index: Sequence[int] | Tensor, channels: Sequence[int] | Tensor,
               positions: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Seeds as long tensors on the CPU, checked for whole numbers and matching lengths."""
    img = indices(image_index, "image_index")
    ch = indices(channels, "channels")
    if img.shape != ch.shape:
        raise ValueError(f"image_index has {img.numel()} entries but channels has {ch.numel()}")
    pos = None
    if positions is not None:
        pos = indices(positions, "positions")
        if pos.numel() != 2 * img.numel():
            raise ValueError(f"positions must be ({img.numel()}, 2), got "
                             f"{tuple(torch.as_tensor(positions).shape)}")
        pos = pos.reshape(-1, 2)
    return img, ch, pos


def caller_stacklevel() -> int:
    """The `stacklevel` of a warning that points at the user's call: the first frame outside
    zfnet (and the torch and contextlib wrappers around its functions), however deep in zfnet
    the warning is raised."""
    frame, level = sys._getframe(1), 1  # the frame calling warnings.warn
    while frame is not None and str(frame.f_globals.get("__name__", "")).partition(".")[0] in (
            "zfnet", "torch", "contextlib"):
        frame, level = frame.f_back, level + 1
    return level


__all__ = ["NONLINEAR_MODES", "RULES", "SEEDS", "PlainGradientWarning", "RuleUndefinedError",
           "batched_backward", "caller_stacklevel", "check_rule", "check_seed",
           "current_nonlinear", "fallback_words", "fallbacks_recorded", "indices",
           "layer_outputs", "nonlinear", "project_graph", "rule_label", "seed_values",
           "seeds_from", "set_nonlinear"]
