"""The one geometry (zfnet.models.geometry) against brute force.

- Receptive fields: for units at the corners, edges and centre of every conv / pool layer of
  every registered model (also with all conv strides 1) and torchvision's alexnet, vgg11 and
  vgg16, the box is the bounding box of where d unit / d input is nonzero, by autograd.
- Sizes: every layer's output size is the shape a real forward pass gives (meta device).
- Window arithmetic per axis, on random Conv2d / MaxPool2d / AvgPool2d layers with non-square
  kernels, strides and padding, dilation, ceil_mode and padding="same"/"valid": the output
  size, the input window an output window reads and the outputs an input change reaches,
  against which input pixels each output really reads (one-hot inputs).
- The engines: the deconvnet's crops sit at the geometry's boxes, and every layer type of the
  one list is either handled exactly by the deconvnet / incremental inference or refused by
  name.
"""

from __future__ import annotations

import random

import pytest
import torch
import torchvision
from torch import nn

import zfnet
from zfnet.deconvnet import _SUPPORTED, feature_chain, project_rf
from zfnet.incremental import UnsupportedModelError, as_chain, occlusion_logits
from zfnet.models import layer_info
from zfnet.models.geometry import (
    LAYER_TYPES,
    POINTWISE,
    WINDOWED,
    LayerGeometry,
    UnsupportedLayerError,
    Window,
    chain_geometry,
    chain_sizes,
    feature_size,
    sequential_geometry,
    sequential_leaves,
    window_of,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = [
    *[(name, {}) for name in zfnet.list_models()],
    *[(name, {"strides": (1, 1, 1, 1, 1)}) for name in zfnet.list_models()],
    ("tv:alexnet", {}), ("tv:vgg11", {}), ("tv:vgg16", {}),
]


def _build(name: str, opts: dict, device: str = "cpu") -> tuple[nn.Module, int]:
    """The model (on `device`) and its usual input side."""
    with torch.device(device):
        if name.startswith("tv:"):
            return getattr(torchvision.models, name[3:])(weights=None), 224
        model = zfnet.create_model(name, **opts)
    return model, model.config.input_size


def _id(p: tuple[str, dict]) -> str:
    return p[0] + ("-stride1" if p[1] else "")


# --------------------------------------------------------------------------- receptive fields


def _twin(leaves: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module | None]]:
    """The chain's windows on one channel, linear with positive weights: each conv a filter of
    positive taps summing to 1 (same kernel, stride, padding, dilation), each pooling an
    average (a max-pool's gradient reaches one pixel, an average its whole window), point-wise
    layers left out (None: they keep positions). Nothing can cancel, so d unit / d input is
    nonzero exactly on the pixels the unit depends on."""
    g = torch.Generator().manual_seed(0)
    out: list[tuple[str, nn.Module | None]] = []
    for path, m in leaves:
        twin: nn.Module | None = None
        if isinstance(m, nn.Conv2d):
            twin = nn.Conv2d(1, 1, m.kernel_size, m.stride, m.padding, m.dilation, bias=False,
                             dtype=torch.float64)
            w = torch.rand(twin.weight.shape, generator=g, dtype=torch.float64) + 0.5
            twin.weight.data = w / w.sum()
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            assert getattr(m, "dilation", 1) in (1, (1, 1)), "avg_pool has no dilation"
            twin = nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode)
        out.append((path, twin))
    return out


def _support_boxes(twin: list[tuple[str, nn.Module | None]], size: tuple[int, int],
                   units: dict[str, list[tuple[int, int]]]) -> dict[str, list[tuple]]:
    """For each layer path and unit (r, c): the bounding box (top, left, bottom, right) of the
    input pixels where d unit / d input != 0 (None if there are none)."""
    n = max(len(u) for u in units.values())
    x = torch.ones(n, 1, *size, dtype=torch.float64, requires_grad=True)
    h, acts = x, {}
    for path, m in twin:
        if m is not None:
            h = m(h)
        acts[path] = h
    boxes: dict[str, list[tuple]] = {}
    for path, us in units.items():
        a = acts[path]
        picked = torch.stack([a[b, 0, r, c] for b, (r, c) in enumerate(us)])
        (grad,) = torch.autograd.grad(picked.sum(), x, retain_graph=True)
        boxes[path] = []
        for b in range(len(us)):
            nz = grad[b, 0] != 0
            rows, cols = nz.any(1).nonzero()[:, 0], nz.any(0).nonzero()[:, 0]
            boxes[path].append(None if len(rows) == 0 else (
                int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1))
    return boxes


def _corners_edges_centre(h: int, w: int) -> list[tuple[int, int]]:
    rs, cs = sorted({0, h // 2, h - 1}), sorted({0, w // 2, w - 1})
    return [(r, c) for r in rs for c in cs]


def _features(model: nn.Module) -> nn.Sequential:
    return model.features


@pytest.mark.parametrize("spec", MODELS, ids=_id)
def test_receptive_fields_are_the_gradients_support(spec: tuple[str, dict]) -> None:
    """Every conv / pool layer, units at corners, edges and centre: the box (clipped to the
    image) is exactly the bounding box of the gradient's support; also on a non-square input
    for torchvision's models (whose geometry depends on the input size)."""
    model, side = _build(*spec, device="meta")  # the geometry needs no weights
    sizes = [(side, side)] + ([(97, 130)] if spec[0].startswith("tv:") else [])
    leaves = sequential_leaves(_features(model), "features.")
    twin = _twin(leaves)
    for size in sizes:
        if isinstance(model, zfnet.models.ConvNet):
            geo = {info.module: info.geometry for info in layer_info(model).values()}
        else:
            geo = sequential_geometry(_features(model), size, prefix="features.")
        units = {path: _corners_edges_centre(*geo[path].shape)
                 for path, m in leaves if isinstance(m, WINDOWED)}
        assert len(units) >= 5, "every conv and pool layer has a geometry"
        support = _support_boxes(twin, size, units)
        for path, us in units.items():
            for (r, c), got in zip(us, support[path], strict=True):
                assert got == geo[path].box(r, c, size), (size, path, r, c)


def test_real_weights_and_max_pools_reach_the_box() -> None:
    """The twin's simplifications hide nothing: on alexnet_small itself (max-pool switches,
    ReLUs, LRN, real weights), the gradient of interior units reaches exactly their box (union
    over maps and images, each with its own switches), and of corner units stays inside it."""
    torch.manual_seed(0)
    model = zfnet.create_model("alexnet_small", input_size=96).eval()
    with torch.no_grad():  # positive biases keep most ReLUs open
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.fill_(1.0)
    x = torch.randn(8, 3, 96, 96) * 60
    infos = layer_info(model)
    for layer in ("conv1", "pool1", "conv2", "conv3"):
        geo = infos[layer].geometry
        for r, q, interior in ((geo.size // 2, geo.size // 2, True), (0, geo.size - 1, False)):
            xg = x.clone().requires_grad_()
            h = xg
            for _, m in feature_chain(model, layer):
                h = m(h)
            (g,) = torch.autograd.grad(h[:, :, r, q].sum(), xg)
            nz = (g != 0).any(0).any(0)
            rows, cols = nz.any(1).nonzero()[:, 0], nz.any(0).nonzero()[:, 0]
            got = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
            box = geo.box(r, q, 96)
            if interior:
                assert box == geo.box(r, q) and got == box, layer
            else:
                assert box[0] <= got[0] and box[1] <= got[1], layer
                assert got[2] <= box[2] and got[3] <= box[3], layer


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("spec", MODELS, ids=_id)
def test_sizes_are_a_forward_pass(spec: tuple[str, dict]) -> None:
    """Every module's output size, per axis, is the shape of a real forward pass (on the meta
    device); for torchvision's models also at non-square and small inputs."""
    model, side = _build(*spec, device="meta")
    leaves = sequential_leaves(_features(model), "features.")
    inputs = [(side, side)] + ([(97, 130), (64, 64)] if spec[0].startswith("tv:") else [])
    for size in inputs:
        x = torch.empty(1, 3, *size, device="meta")
        shapes = []
        for _, m in leaves:
            x = m(x)
            shapes.append(tuple(x.shape[-2:]))
        geo = sequential_geometry(_features(model), size, prefix="features.")
        assert [geo[p].shape for p, _ in leaves] == shapes, size
        assert [g.shape for g in chain_geometry((m for _, m in leaves), size)] == shapes
        assert chain_sizes((m for _, m in leaves), size) == [size, *shapes]
        if isinstance(model, zfnet.models.ConvNet):
            infos = layer_info(model)
            assert [infos[p.removeprefix("features.")].geometry.shape for p, _ in leaves] == shapes


def test_feature_size_matches_torch() -> None:
    for size in range(5, 40):
        for k, s, p, d in ((3, 2, 0, 1), (7, 2, 1, 1), (5, 2, 2, 1), (3, 2, 1, 1), (3, 3, 1, 2),
                           (2, 3, 1, 3)):
            if p > k // 2:
                continue
            for ceil in (False, True):
                pool = torch.nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)
                got = pool(torch.zeros(1, 1, size, size)).shape[-1]
                assert feature_size(size, k, s, p, ceil, d) == got, (size, k, s, p, d, ceil)


# --------------------------------------------------------------------------- window arithmetic


def _random_layer(rng: random.Random) -> nn.Module:
    """A Conv2d, MaxPool2d or AvgPool2d with per-axis kernel / stride / padding, dilation,
    ceil_mode or string padding, valid for PyTorch."""
    kind = rng.choice(["conv", "conv", "max", "avg"])
    k = (rng.randint(1, 5), rng.randint(1, 5))
    s = (rng.randint(1, 4), rng.randint(1, 4))
    d = (rng.randint(1, 3), rng.randint(1, 3)) if kind != "avg" else (1, 1)
    if kind == "conv":
        pad = rng.choice(["int", "int", "same", "valid"])
        if pad == "same":
            return nn.Conv2d(1, 1, k, 1, "same", d, bias=False)
        if pad == "valid":
            return nn.Conv2d(1, 1, k, s, "valid", d, bias=False)
        # at most span - 1: every unit reads some pixel of the input on each axis
        p = (rng.randint(0, d[0] * (k[0] - 1)), rng.randint(0, d[1] * (k[1] - 1)))
        return nn.Conv2d(1, 1, k, s, p, d, bias=False)
    p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
    ceil = rng.random() < 0.5
    if kind == "max":
        return nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)
    return nn.AvgPool2d(k, s, p, ceil_mode=ceil)


def _reads(layer: nn.Module, h: int, w: int) -> torch.Tensor:
    """(oh, ow, h, w) bool: which input pixels each output unit reads, from one-hot inputs
    (positive weights: a unit is nonzero iff its window holds the hot pixel)."""
    if isinstance(layer, nn.Conv2d):
        with torch.no_grad():
            layer.weight.fill_(1.0)
    eye = torch.eye(h * w).view(h * w, 1, h, w)
    with torch.no_grad():
        out = layer(eye)[:, 0]  # (h*w, oh, ow)
    return (out > 0).permute(1, 2, 0).reshape(*out.shape[1:], h, w)


def _check_axis(read: torch.Tensor, lo: int, length: int, n: int, dense: bool, what: str) -> None:
    """The pixels `read` along one axis (bool (n,)) lie in [lo, lo + length); its ends are read
    where they lie in the input; with no dilation every pixel between them too."""
    idx = read.nonzero()[:, 0].tolist()
    assert idx and lo <= idx[0] and idx[-1] < lo + length, what
    if lo >= 0:
        assert idx[0] == lo, what
    if lo + length <= n:
        assert idx[-1] == lo + length - 1, what
    if dense:
        assert idx == list(range(idx[0], idx[-1] + 1)), what


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # PyTorch's note on its speed
@pytest.mark.parametrize("seed", range(40))
def test_window_arithmetic_is_what_torch_reads(seed: int) -> None:
    rng = random.Random(seed)
    layer = _random_layer(rng)
    win = window_of(layer)
    assert isinstance(win, Window)
    h, w = rng.randint(6, 16), rng.randint(6, 16)
    try:
        out = layer(torch.zeros(1, 1, h, w))
    except RuntimeError:  # too small an input for this layer: PyTorch refuses it too
        assert min(win.out_size((h, w))) < 1
        return
    oh, ow = out.shape[-2:]
    assert win.out_size((h, w)) == (oh, ow), layer
    reads = _reads(layer, h, w)  # (oh, ow, h, w)
    dense = [win.dilation[ax] == 1 or win.kernel[ax] == 1 for ax in (0, 1)]

    # backward: every output window, 1x1 and larger, against the union of what its units read
    windows = [(r, c, 1, 1) for r in range(oh) for c in range(ow)]
    windows += [(rng.randrange(oh), rng.randrange(ow), rng.randint(1, 3), rng.randint(1, 3))
                for _ in range(20)]
    for top, left, wh, ww in windows:
        wh, ww = min(wh, oh - top), min(ww, ow - left)
        t, lf, ih, iw = win.input_window(top, left, wh, ww)
        tt, tl, th, tw = win.input_window(torch.tensor([top]), torch.tensor([left]), wh, ww)
        assert (int(tt), int(tl), th, tw) == (t, lf, ih, iw), "ints and tensors agree"
        union = reads[top: top + wh, left: left + ww].any(0).any(0)  # (h, w)
        what = f"{layer} window {(top, left, wh, ww)} -> {(t, lf, ih, iw)}"
        # dilation leaves holes between a unit's taps, but neighbouring units may fill them
        _check_axis(union.any(1), t, ih, h, dense[0] and win.stride[0] <= win.span[0], what)
        _check_axis(union.any(0), lf, iw, w, dense[1] and win.stride[1] <= win.span[1], what)

    # forward: the outputs a change of input box [lo, hi) reaches
    for _ in range(20):
        r0, c0 = rng.randrange(h), rng.randrange(w)
        r1, c1 = rng.randint(r0 + 1, h), rng.randint(c0 + 1, w)
        touched = reads[:, :, r0:r1, c0:c1].any(-1).any(-1)  # (oh, ow)
        ranges = [win.output_range(torch.tensor([a]), torch.tensor([b]), ax, n)
                  for ax, (a, b, n) in enumerate(((r0, r1, oh), (c0, c1, ow)))]
        (lr, hr), (lc, hc) = [(int(a), int(b)) for a, b in ranges]
        planned = torch.zeros(oh, ow, dtype=torch.bool)
        planned[lr:hr, lc:hc] = True  # nothing where a range is empty
        what = f"{layer} change {(r0, c0, r1, c1)} -> rows {lr, hr} cols {lc, hc}"
        assert not (touched & ~planned).any(), what  # never misses a change
        if all(dense):  # and with no dilation it is exact
            assert torch.equal(touched, planned), what


# --------------------------------------------------------------------------- non-square chains


def _odd_chain() -> nn.Sequential:
    """Non-square kernels, strides and padding, dilation, padding="same", ceil_mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, (5, 3), stride=(2, 1), padding=(2, 0)),
        nn.ReLU(),
        nn.MaxPool2d((3, 2), stride=(2, 2), padding=(1, 0), ceil_mode=True),
        nn.Conv2d(6, 8, (3, 2), padding="same", dilation=(2, 1)),  # padded 2/2 rows, 0/1 cols
        nn.BatchNorm2d(8).eval(),
        nn.ReLU(),
        nn.Conv2d(8, 5, (2, 3), stride=(1, 2), dilation=(1, 2)),
        nn.Dropout2d(),
        nn.MaxPool2d(2, 2, dilation=(1, 2)),
    ).eval()


def test_non_square_chains() -> None:
    seq = _odd_chain()
    geo = sequential_geometry(seq, (41, 37))
    assert list(geo) == [str(i) for i in range(len(seq))]
    x = torch.zeros(1, 3, 41, 37)
    for name, m in seq.named_children():
        x = m(x)
        assert geo[name].shape == tuple(x.shape[-2:]), name
    last = geo[str(len(seq) - 1)]
    assert last.rows.rf != last.cols.rf
    with pytest.raises(ValueError, match=r"not square \(rf: .*read .rows and .cols"):
        _ = last.rf
    assert LayerGeometry.of_input((4, 5)).box(3, 4) == (3, 4, 4, 5)


def test_unknown_layers() -> None:
    with pytest.raises(UnsupportedLayerError, match="AdaptiveAvgPool2d.*known: Conv2d"):
        window_of(nn.AdaptiveAvgPool2d(3))
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(3), nn.Conv2d(4, 4, 1))
    assert list(sequential_geometry(seq, 16)) == ["0"]  # stops where it cannot know


# --------------------------------------------------------------------------- the engines


@pytest.mark.parametrize("name", ["zfnet_small", "tv:alexnet", "odd"])
def test_deconvnet_crops_are_the_boxes(name: str) -> None:
    """For every layer of the chain, the deconvnet's crop of a projection has the geometry's
    box: same top, left and size (the top-9 gallery cuts image patches with the box)."""
    torch.manual_seed(0)
    if name == "odd":
        model, size = _odd_chain(), (41, 37)
    elif name == "tv:alexnet":
        model, size = torchvision.models.alexnet(weights=None).eval(), (99, 99)
    else:
        model, size = zfnet.create_model(name).eval(), (64, 64)
    prefix = "" if name == "odd" else "features."
    root = model if name == "odd" else model.features
    geo = sequential_geometry(root, size, prefix=prefix)
    x = torch.randn(2, 3, *size)
    for path in geo:
        g = geo[path]
        rows, cols = g.shape
        pos = torch.tensor([[0, 0], [rows - 1, cols - 1], [rows // 2, cols // 3]])
        rf = project_rf(model, x, path, [0, 1, 1], [0, 0, 0], positions=pos)
        assert tuple(rf.values.shape[-2:]) == (g.rows.rf, g.cols.rf), path
        for s in range(3):
            top, left, _, _ = g.box(int(pos[s, 0]), int(pos[s, 1]))
            assert (int(rf.top[s]), int(rf.left[s])) == (top, left), (path, s)
    empty = project_rf(model, x, path, [], [])
    assert tuple(empty.values.shape[-2:]) == (g.rows.rf, g.cols.rf)


def test_deconvnet_gradient_on_odd_chain_is_autograd() -> None:
    """Per-axis windows on the way down: the gradient rule on the non-square, dilated, "same"
    padded, ceil-mode chain equals autograd's gradient, seeded with the activation."""
    model = _odd_chain()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 41, 37)
    for layer in ("2", "6", "8"):
        xg = x.clone().requires_grad_()
        h = model[: int(layer) + 1](xg)
        r, c = h.shape[-2] - 1, h.shape[-1] // 2
        (ref,) = torch.autograd.grad(h[0, 1, r, c], xg)
        got = project_rf(model, x, layer, [0], [1], positions=torch.tensor([[r, c]]),
                         rule="gradient")
        full = torch.zeros_like(x)
        t, lf = int(got.top[0]), int(got.left[0])
        v = got.values[0] / got.activation[0]
        t0, l0 = max(t, 0), max(lf, 0)
        t1, l1 = min(t + v.shape[-2], 41), min(lf + v.shape[-1], 37)
        full[0, :, t0:t1, l0:l1] = v[:, t0 - t: t1 - t, l0 - lf: l1 - lf]
        assert torch.allclose(full, ref, atol=1e-6 * float(ref.abs().max())), layer


@pytest.mark.parametrize("kind", LAYER_TYPES, ids=lambda t: t.__name__)
def test_every_layer_type_is_handled_or_refused(kind: type[nn.Module]) -> None:
    """The one list of layer types: each is either handled exactly by the deconvnet (its
    gradient rule equals autograd's) or refused naming it, and likewise by incremental
    inference (its occlusion logits equal the full model's)."""
    torch.manual_seed(0)
    mid: nn.Module
    if kind is nn.Conv2d:
        mid = nn.Conv2d(4, 4, 3, padding=1)
    elif kind in (nn.MaxPool2d, nn.AvgPool2d):
        mid = kind(2, 2)
    elif kind is nn.LocalResponseNorm:
        mid = nn.LocalResponseNorm(3, 0.1, 0.75, 2.0)
    elif kind is nn.BatchNorm2d:
        mid = nn.BatchNorm2d(4)
        mid.running_mean.uniform_(-1, 1)
        mid.running_var.uniform_(0.5, 2)
    else:
        mid = kind()
    assert kind in POINTWISE or kind in WINDOWED

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), mid, nn.Conv2d(4, 2, 3))
            side = 3 if kind in (nn.MaxPool2d, nn.AvgPool2d) else 4
            self.classifier = nn.Linear(2 * side * side, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(torch.flatten(self.features(x), 1))

    model = Net().eval()
    size = 12 if kind in (nn.MaxPool2d, nn.AvgPool2d) else 8
    x = torch.randn(1, 3, size, size)
    if issubclass(kind, _SUPPORTED):
        xg = x.clone().requires_grad_()
        h = model.features(xg)
        (ref,) = torch.autograd.grad(h[0, 1, 1, 2], xg)
        got = project_rf(model, x, "features.2", [0], [1], positions=torch.tensor([[1, 2]]),
                         rule="gradient")
        t, lf = int(got.top[0]), int(got.left[0])
        part = ref[0, :, t: t + got.values.shape[-2], lf: lf + got.values.shape[-1]]
        assert torch.allclose(got.values[0] / got.activation[0], part, atol=1e-6)
        assert torch.count_nonzero(ref) == torch.count_nonzero(part)
    else:
        with pytest.raises(ValueError, match=f"{kind.__name__}.*deconvnet only knows"):
            feature_chain(model, "features.2")
    image = torch.randn(3, size, size)
    boxes = torch.tensor([[0, 0, 3, 3], [2, 4, 6, 8]])
    if kind is nn.AvgPool2d:  # no incremental rule for average pooling
        with pytest.raises(UnsupportedModelError, match="AvgPool2d"):
            as_chain(model)
        return
    logits, _ = occlusion_logits(model, image, boxes)
    for b, (t, lf, bt, r) in enumerate(boxes.tolist()):
        occluded = image.clone()
        occluded[:, t:bt, lf:r] = 0
        with torch.no_grad():
            assert torch.allclose(logits[b], model(occluded[None])[0], atol=1e-5)
