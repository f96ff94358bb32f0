"""Top-k mining: the strongest activations of every feature map over a dataset (paper Fig. 2).

Any layer of any model. Where every chosen layer lies in the model's convolutional chain
(`model.features` of zfnet's models, torchvision's alexnet / vgg) the data go through that chain
only, up to the deepest chosen layer; otherwise (ResNet blocks, DenseNet, fully connected
layers, …) through the whole model once per batch, every chosen layer read by a forward hook
(`zfnet.activations.capture`, removed after). A flat layer (N, F) counts as F maps of one unit
at (0, 0). For every image and map only the image's strongest position counts (so the k
entries of one map come from k different images, as the nine patches of each map in the
paper's Fig. 2), and a running merge per batch keeps the k best: memory is layers x maps x k,
never the dataset.

Order is deterministic: by value descending, ties by dataset index ascending, and within an
image the first maximum in row-major order. The same order makes shards mined by several
processes (`torchrun`) merge into the answer of one process (`merge_topk`,
`mine_topk_distributed`): the same images and positions, values equal up to the float
rounding by which a convolution's result depends on its batch size.

A long mining is resumable (`mine_topk(journal=...)`): its state (the k best so far and how
many items are done) is saved at most every `save_every` seconds and when it stops on an
error or Ctrl-C; the same call then continues from the last batch saved, with the same batches,
so that the answer is the one of a mining never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
)

from zfnet.activations import capture, cpu_layout, shown_units
from zfnet.data.workers import Loader
from zfnet.deconvnet import feature_chain
from zfnet.models import chain_runs_as_forward, eval_mode, resolve_layer

_NO_IMAGE = torch.iinfo(torch.int64).max  # sorts after every real index


class MiningNote(UserWarning):
    """A top-k mining kept where it stopped, or continued from there."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)
    prefix = "note"


def mining_digest(model: nn.Module, settings: Mapping[str, Any],
                  paths: Iterable[str | Path] | None = None) -> str:
    """A hex digest that changes when the model's weights, the JSON `settings` (the data's
    spec, how many images, k, ...) or the files mined (`paths`: each one's size and time, so
    that a file replaced under its name counts) do: what a mined top-k, or a mining kept to be
    continued, is valid for."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(dict(settings), sort_keys=True).encode())
    for path in paths or ():
        try:
            st = os.stat(path)
            h.update(os.fsencode(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n"))
        except OSError:  # os.fsencode: any bytes a name holds (no UTF-8, an old archive's)
            h.update(os.fsencode(f"{path}\0gone\n"))
    return h.hexdigest()


class NoImagesError(ValueError):
    """The data (or a process's shard of it) held no image to mine."""


@dataclass
class TopK:
    """The k strongest activations of every map of one layer, best first.

    Entry [c, j]: the j-th strongest image for map c is dataset item `index[c, j]`, with its
    strongest activation `values[c, j]` at (`row[c, j]`, `col[c, j]`) of the layer's map.
    Slots not filled (fewer than k images seen) hold value -inf and index -1. `mined`: the
    number of images it was taken over (broken files not counted; None where not known, a top-k
    saved before it was kept).
    """

    layer: str
    values: Tensor  # (C, k) float32
    index: Tensor  # (C, k) int64
    row: Tensor  # (C, k) int64
    col: Tensor  # (C, k) int64
    mined: int | None = None

    @property
    def k(self) -> int:
        return self.values.shape[1]

    @staticmethod
    def empty(layer: str, channels: int, k: int) -> TopK:
        """k empty slots for each of `channels` maps."""
        return TopK(
            layer,
            torch.full((channels, k), float("-inf")),
            torch.full((channels, k), -1, dtype=torch.long),
            torch.zeros(channels, k, dtype=torch.long),
            torch.zeros(channels, k, dtype=torch.long),
        )

    def first(self, k: int) -> TopK:
        """The k strongest of each map (copies: the rest is not kept, nor saved)."""
        return TopK(self.layer, *(t[:, :k].contiguous()
                                  for t in (self.values, self.index, self.row, self.col)),
                    self.mined)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and strings, for `torch.save` or `all_gather_object`."""
        return {"layer": self.layer, "values": self.values, "index": self.index,
                "row": self.row, "col": self.col, "mined": self.mined}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TopK:
        return TopK(d["layer"], d["values"], d["index"], d["row"], d["col"], d.get("mined"))


def _keep_best(values: Tensor, index: Tensor, row: Tensor, col: Tensor, k: int):
    """The k best of (C, m) candidates per row: value descending, then index ascending.

    An image that appears twice (DistributedSampler pads shards by repeating items) is kept
    once, at its best entry; its other entries become empty slots.
    """
    key = torch.where(index < 0, _NO_IMAGE, index)
    order = torch.argsort(key, dim=1, stable=True)
    values = values.masked_fill(values.isnan(), float("-inf"))  # NaN ranks last
    by_value = torch.argsort(values.gather(1, order), dim=1, descending=True, stable=True)
    order = order.gather(1, by_value)
    values, index, row, col = (t.gather(1, order) for t in (values, index, row, col))
    # Repeats: in index order (stable, so best first within an image), all but the first.
    by_index = torch.argsort(index, dim=1, stable=True)
    sorted_index = index.gather(1, by_index)
    repeat = torch.zeros_like(sorted_index, dtype=torch.bool)
    repeat[:, 1:] = (sorted_index[:, 1:] == sorted_index[:, :-1]) & (sorted_index[:, 1:] >= 0)
    repeat = torch.zeros_like(repeat).scatter_(1, by_index, repeat)
    if bool(repeat.any()):
        values = values.masked_fill(repeat, float("-inf"))
        index = index.masked_fill(repeat, -1)
        last = torch.argsort(repeat.to(torch.uint8), dim=1, stable=True)  # repeats to the end
        values, index, row, col = (t.gather(1, last) for t in (values, index, row, col))
    # copies, not views: a view would keep (and torch.save would write) all m columns
    return tuple(t[:, :k].contiguous() for t in (values, index, row, col))


def merge_topk(*parts: TopK) -> TopK:
    """One `TopK` from several over disjoint parts of the data (e.g. one per process).

    The same answer as mining all of the data in one pass, whatever the split.
    """
    if not parts:
        raise ValueError("merge_topk needs at least one TopK")
    first = parts[0]
    for p in parts[1:]:
        if p.layer != first.layer or p.values.shape != first.values.shape:
            raise ValueError(
                f"cannot merge top-k of {p.layer} {tuple(p.values.shape)} into "
                f"{first.layer} {tuple(first.values.shape)}: same layer and (maps, k) needed"
            )
    cat = [torch.cat([getattr(p, f).cpu() for p in parts], 1)
           for f in ("values", "index", "row", "col")]
    mined = None if any(p.mined is None for p in parts) else sum(p.mined for p in parts)
    return TopK(first.layer, *_keep_best(*cat, first.k), mined=mined)


class _Indexed(Dataset):
    """Items of `dataset` at `indices`, each tagged with its dataset index."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        j = int(self.indices[i])
        return j, self.dataset[j]


def _collate(batch: list[tuple[int, Any]]) -> tuple[Tensor, Tensor]:
    """(indices (B,), images (B, C, H, W)); items that are None (broken files) are dropped."""
    keep = [(j, item[0] if isinstance(item, (tuple, list)) else item)
            for j, item in batch if item is not None]
    if not keep:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.tensor([j for j, _ in keep]), torch.stack([x for _, x in keep])


def _loader(data: Dataset | DataLoader, indices: Iterable[int] | None, batch_size: int,
            num_workers: int, pin: bool) -> DataLoader:
    if isinstance(data, DataLoader):
        sampler = data.sampler
        if indices is None:
            if not isinstance(sampler, (SequentialSampler, DistributedSampler)):
                raise ValueError(
                    f"cannot tell which dataset item each batch holds with a "
                    f"{type(sampler).__name__}; pass a Dataset, or a DataLoader with a "
                    "SequentialSampler or DistributedSampler"
                )
            indices = list(iter(sampler))  # both are deterministic: same order as the loader
            if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
                # its padding repeats other processes' items (positions past the dataset's
                # end in the padded order): left out, so that each item is mined, and counted,
                # by one process
                positions = range(sampler.rank, sampler.total_size, sampler.num_replicas)
                indices = [i for pos, i in zip(positions, indices, strict=True)
                           if pos < len(sampler.dataset)]  # type: ignore[arg-type]
        batch_size = data.batch_size or batch_size
        num_workers = data.num_workers
        data = data.dataset
    # A range stays a range: nothing held per image, however long the dataset.
    if indices is None:
        idx: Sequence[int] = range(len(data))
    elif isinstance(indices, range):
        idx = indices
    else:  # each item once (a DistributedSampler pads by repeating items): counted once
        idx = list(dict.fromkeys(int(i) for i in indices))
    return Loader(_Indexed(data, idx), batch_size=batch_size, shuffle=False,
                  num_workers=num_workers, collate_fn=_collate, pin_memory=pin)


def _is_stream(data: Dataset | DataLoader) -> bool:
    """An IterableDataset (or a DataLoader of one): items come in order, without indices."""
    return isinstance(data.dataset if isinstance(data, DataLoader) else data, IterableDataset)


def _stream_loader(data: IterableDataset | DataLoader, batch_size: int, num_workers: int,
                   pin: bool) -> DataLoader:
    """Batches (positions within the batch, images, items in the batch) of a stream; broken
    items (None) are dropped but still counted, so that positions stay those of the stream."""
    if isinstance(data, DataLoader):
        batch_size = data.batch_size or batch_size
        num_workers = data.num_workers
        data = data.dataset  # type: ignore[assignment]
    return Loader(data, batch_size=batch_size, num_workers=num_workers,
                  collate_fn=_collate_stream, pin_memory=pin)


def _collate_stream(batch: list[Any]) -> tuple[Tensor, Tensor, int]:
    idx, x = _collate(list(enumerate(batch)))
    return idx, x, len(batch)


def _numbered(loader: DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
    """(stream positions, images) of each batch of `_stream_loader`."""
    start = 0
    for idx, x, n in loader:
        yield idx + start, x
        start += n


def mine_topk(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: str | Sequence[str],
    k: int = 9,
    *,
    indices: Iterable[int] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int | None], None] = False,
    journal: str | Path | None = None,
    journal_key: str = "",
    save_every: float = 60.0,
    notes: bool = True,
    keep_done: bool = False,
) -> dict[str, TopK]:
    """Stream `data` through `model` once; for every map of each of `layers`, the k strongest
    activations over the data (paper Fig. 2). Returns {layer: TopK}.

    data: a Dataset of (x, y) or x items, x (C, H, W) a model input; or a DataLoader (its
    dataset, batch size, workers and sampler order are used). indices: mine only these
    dataset items (a shard). A stream (an IterableDataset, or a DataLoader of one) is mined as
    it comes, of any length; its items are numbered by their position in it (the order the
    DataLoader yields them, workers included), and `indices` cannot pick from it. Memory does
    not grow with the number of images. Layers: any of the model's, named as
    `zfnet.models.resolve_layer` takes them (see the module doc for how they are read).
    progress: True for a progress bar on stderr, or a callable (done, total) called after each
    batch with the images done so far (total None for a stream); an exception it raises (a
    cancelled job) stops the mining.
    journal: a file where the mining is kept (at most every `save_every` seconds, and when it
    stops on an exception, with a `MiningNote`) and continued from by a call of the same
    model, layers, k, batch size, items and `journal_key` (what else identifies the data:
    `mining_digest`); removed when the mining is done (with `keep_done`, kept whole: the
    caller removes it once it has written what it makes of it). Not for a stream. notes: False
    for no `MiningNote` (a caller that tells its users itself: the explorer's job).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if isinstance(layers, str):  # one layer, not its letters
        layers = [layers]
    if not layers:
        raise ValueError("layers is empty; name at least one, e.g. conv1")
    chain = _chain(model, layers)
    p0 = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (p0.device if p0 is not None
                                                           else torch.device("cpu"))
    dtype = p0.dtype if p0 is not None else torch.float32
    pin = dev.type == "cuda"
    batches: Iterable[tuple[Tensor, Tensor]]
    if _is_stream(data):
        if indices is not None:
            raise ValueError("indices cannot pick items of a stream (an IterableDataset); "
                             "mine it whole, or pass a map-style Dataset")
        loader = _stream_loader(data, batch_size, num_workers, pin)  # type: ignore[arg-type]
        batches, total = _numbered(loader), None
    else:
        loader = _loader(data, indices, batch_size, num_workers, pin)
        batches, total = loader, len(loader.dataset)  # type: ignore[arg-type]
    best: dict[str, TopK] = {}
    start = done = mined = 0
    kept = None
    if journal is not None and total is not None:
        kept = _Journal(Path(journal), _journal_key(journal_key, layers, k, loader))
        start, mined, best = kept.read()
        if start:
            if notes:
                warnings.warn(f"continuing the top-k mining kept in {kept.path}: {start} of "
                              f"{total} images are mined", MiningNote, stacklevel=2)
            loader = batches = _skipping(loader, start)
            done = start
    it = batches
    report = progress if callable(progress) else None
    if progress is True:
        from zfnet.progress import progress_bar

        it = progress_bar(batches, desc="top-k mining", unit="batch",
                          total=None if total is None else len(loader))
    finished, mined_before = 0, mined  # batches whose every layer is in `best`, their images
    try:
        with eval_mode(model), torch.inference_mode(), ExitStack() as stack:
            # off the chain: one pass of the whole model per batch, every layer read by a hook
            store = stack.enter_context(capture(model, list(layers))) if chain is None else None
            for finished, (idx, x) in enumerate(it):
                mined_before = mined
                if kept is not None:
                    kept.save(best, start + finished * loader.batch_size, mined, save_every)
                if report is not None:
                    report(done, total)  # before the batch: a cancelled job stops here
                done += len(idx)
                if not idx.numel():  # only broken files
                    continue
                mined += idx.numel()
                if x.ndim != 4:
                    raise ValueError(f"items must be images (C, H, W); got a batch of "
                                     f"{tuple(x.shape)} (ten-crop data? mine the centre crops)")
                x = cpu_layout(model, x.to(dev, dtype, non_blocking=True))
                if chain is not None and store is None and not chain_runs_as_forward(model, x):
                    chain = None  # its forward does more than walk the chain: read it by hooks
                    store = stack.enter_context(capture(model, list(layers)))
                if chain is None:
                    model(x)
                    for name in layers:
                        if name not in store:
                            raise ValueError(f"layer {name!r} did not run in the forward pass")
                        _update(best, name, store[name], idx, k)
                    store.clear()
                    continue
                steps, ends = chain
                for path, m in steps:
                    x = m(x)
                    for name in ends.get(path, ()):
                        _update(best, name, x, idx, k)
        if report is not None:
            report(done, total)
    except BaseException:
        # at most the batch it stopped in is mined again: an image seen twice is kept once
        if kept is not None:
            kept.save(best, start + finished * loader.batch_size, mined_before)
        if kept is not None and kept.position and notes:
            warnings.warn(f"kept the top-k mining in {kept.path} ({kept.position} of {total} "
                          "images mined): the same command continues it", MiningNote,
                          stacklevel=2)
        raise
    if kept is not None and keep_done and best:
        kept.save(best, total, mined)  # (a continued mining already done: kept as it was)
    elif kept is not None:
        kept.path.unlink(missing_ok=True)
    if not best:
        raise NoImagesError("the data held no images to mine")
    for t in best.values():
        t.mined = mined
    return {name: best[name] for name in layers}


def _journal_key(key: str, layers: Sequence[str], k: int, loader: DataLoader) -> str:
    """What a kept mining is valid for: the caller's `key` (model and data), the layers, k, the
    batches (a continued mining cuts the same ones) and the items, in their order."""
    items = loader.dataset.indices  # type: ignore[attr-defined]
    h = hashlib.sha256(json.dumps({"key": key, "layers": list(layers), "k": k,
                                   "batch": loader.batch_size}).encode())
    if isinstance(items, range):
        h.update(f"range({items.start}, {items.stop}, {items.step})".encode())
    else:
        h.update(torch.as_tensor(list(items), dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def _skipping(loader: DataLoader, n: int) -> DataLoader:
    """`loader` (over `_Indexed` items) without its first `n` items (whole batches)."""
    items: _Indexed = loader.dataset  # type: ignore[assignment]
    return Loader(_Indexed(items.dataset, items.indices[n:]), batch_size=loader.batch_size,
                  shuffle=False, num_workers=loader.num_workers, collate_fn=_collate,
                  pin_memory=loader.pin_memory)


class _Journal:
    """A mining kept in a file (`path`): the k best so far, how many items are done and mined,
    valid for `key`. Saved atomically: a stop while it is written keeps the last one."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self.position = 0  # items done in the last save
        self.saved_at = time.monotonic()

    def read(self) -> tuple[int, int, dict[str, TopK]]:
        """(items done, images mined, the best so far) kept for this key; (0, 0, {}) where
        none is (a mining of other settings is left to be replaced)."""
        try:
            d = torch.load(self.path, weights_only=True)
            if d["key"] == self.key:
                self.position = int(d["position"])
                return self.position, int(d["mined"]), {
                    n: TopK.from_dict(t) for n, t in d["best"].items()}
        except (OSError, KeyError, TypeError, ValueError, RuntimeError, EOFError):
            pass
        return 0, 0, {}

    def save(self, best: dict[str, TopK], position: int, mined: int,
             every: float = 0.0) -> bool:
        """Keep the state if it has moved on and `every` seconds have passed since the last
        save; whether it was saved."""
        if position <= self.position or time.monotonic() - self.saved_at < every:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"key": self.key, "position": position, "mined": mined,
                    "best": {n: t.to_dict() for n, t in best.items()}}, tmp)
        os.replace(tmp, self.path)
        self.position, self.saved_at = position, time.monotonic()
        return True


def _chain(model: nn.Module, layers: Sequence[str]
           ) -> tuple[list[tuple[str, nn.Module]], dict[str, list[str]]] | None:
    """The chain to walk (up to the deepest of `layers`) and, per module path on it, the
    layers read there (a Sequential block: at its last leaf); None when a layer is off the
    chain. A layer that does not exist is an error either way."""
    ends: dict[str, list[str]] = {}
    chains = []
    for name in layers:
        resolve_layer(model, name)  # unknown: an error listing the valid names
        try:
            c = feature_chain(model, name)
        except ValueError:
            return None
        chains.append(c)
        ends.setdefault(c[-1][0], []).append(name)
    return max(chains, key=len), ends


def _update(best: dict[str, TopK], name: str, act: Any, idx: Tensor, k: int) -> None:
    act = shown_units(name, act)
    if act.ndim == 2:  # (B, F): F maps of one unit each
        act = act[:, :, None, None]
    b, c, h, w = act.shape
    value, where = act.reshape(b, c, h * w).max(2)  # (B, C): each image's strongest unit
    value, where = value.float().T.cpu(), where.T.cpu()  # (C, B)
    cur = best.get(name) or TopK.empty(name, c, k)
    cat = (
        torch.cat([cur.values, value], 1),
        torch.cat([cur.index, idx[None].expand(c, b)], 1),
        torch.cat([cur.row, where // w], 1),
        torch.cat([cur.col, where % w], 1),
    )
    best[name] = TopK(name, *_keep_best(*cat, k))


def shard_range(n: int, rank: int, world: int) -> range:
    """The contiguous part of range(n) that process `rank` of `world` mines."""
    lo, hi = n * rank // world, n * (rank + 1) // world
    return range(lo, hi)


def mine_topk_distributed(
    model: nn.Module, dataset: Dataset, layers: Sequence[str], k: int = 9, **kwargs: Any
) -> dict[str, TopK]:
    """`mine_topk` under torchrun: each process mines its contiguous shard of `dataset`, the
    shards are gathered and merged; every process returns the answer of one process.

    A shard without images (more processes than images, or only broken files) adds nothing.
    An error in one process is raised there and in every other one (`raise_any_error`: the
    same error where it is a user's, else a RuntimeError saying so): none is left waiting.
    Needs an initialised process group (any backend). Keyword arguments go to `mine_topk`.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("mine_topk_distributed needs torch.distributed.init_process_group()")
    if _is_stream(dataset):
        raise ValueError("mine_topk_distributed shards a map-style Dataset by index; a stream "
                         "(an IterableDataset) must be split per process by itself")
    rank, world = dist.get_rank(), dist.get_world_size()
    failed: Exception | None = None
    part: dict[str, Any] | None = None  # the shard's top-k, or None (empty, or an error)
    try:
        mine = mine_topk(model, dataset, layers, k,
                         indices=shard_range(len(dataset), rank, world), **kwargs)
        part = {n: t.to_dict() for n, t in mine.items()}
    except NoImagesError:
        part = None
    except Exception as e:
        failed = e
    from zfnet.train.distributed import DistInfo, raise_any_error

    raise_any_error(failed, DistInfo(rank, world, 0, torch.device("cpu")), "top-k mining")
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, part)
    parts = [g for g in gathered if g is not None]
    if not parts:
        raise NoImagesError("the data held no images to mine")
    return {n: merge_topk(*(TopK.from_dict(g[n]) for g in parts)) for n in layers}


def save_topk(result: dict[str, TopK], path: str | Path) -> Path:
    """Save {layer: TopK} with `torch.save` (plain tensors and strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({n: t.to_dict() for n, t in result.items()}, path)
    return path


def load_topk(path: str | Path) -> dict[str, TopK]:
    """Inverse of `save_topk`."""
    return {n: TopK.from_dict(d) for n, d in torch.load(path, weights_only=True).items()}
