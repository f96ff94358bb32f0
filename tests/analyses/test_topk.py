"""Top-k mining (paper Fig. 2): exact against brute force, shards merge into one answer (also
across two processes), deterministic ties, DataLoader inputs."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    TensorDataset,
    get_worker_info,
)

import zfnet
from zfnet.analyses.topk import (
    TopK,
    load_topk,
    merge_topk,
    mine_topk,
    mine_topk_distributed,
    save_topk,
)

LAYERS = ["conv1", "relu3", "pool5"]


def _data(n: int = 23, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g) * 60, torch.zeros(n).long())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return zfnet.create_model("zfnet_small", input_size=32)


def _same(a: TopK, b: TopK) -> None:
    """Same images and positions; values equal up to float rounding (a convolution's last
    bits depend on the batch size it runs at, and its kernels on the CPU). Two units whose
    values are equal up to that rounding may come in either order, the last one may be
    either; every other slot holds the same unit."""
    torch.testing.assert_close(a.values, b.values, rtol=1e-5, atol=1e-4)
    units_a = torch.stack([a.index, a.row, a.col], -1)
    units_b = torch.stack([b.index, b.row, b.col], -1)
    k = a.values.shape[1]
    for c, j in (units_a != units_b).any(-1).nonzero().tolist():
        v = a.values[c]
        tie = j == k - 1 or any(
            0 <= i < k and i != j and abs(v[i] - v[j]) <= 1e-5 * abs(v[j]) + 1e-4
            for i in (j - 1, j + 1))
        assert tie, (a.layer, c, j, units_a[c, j].tolist(), units_b[c, j].tolist(), v.tolist())


def test_matches_brute_force() -> None:
    model, data = _model(), _data()
    got = mine_topk(model, data, LAYERS, k=4, batch_size=5)
    x = data.tensors[0]
    model.eval()
    with torch.no_grad():
        acts, h = {}, x
        for name, m in model.features.named_children():
            h = m(h)
            acts[name] = h
    for name in LAYERS:
        a = acts[name]  # (N, C, h, w)
        n, c, hh, w = a.shape
        per_image, where = a.reshape(n, c, -1).max(2)  # (N, C)
        for ch in range(c):
            order = sorted(range(n), key=lambda i, ch=ch: (-float(per_image[i, ch]), i))[:4]
            assert got[name].index[ch].tolist() == order, (name, ch)
            torch.testing.assert_close(got[name].values[ch], per_image[order, ch])
            assert got[name].row[ch].tolist() == (where[order, ch] // w).tolist()
            assert got[name].col[ch].tolist() == (where[order, ch] % w).tolist()


def test_memory_is_layers_maps_k_and_fewer_images_than_k() -> None:
    got = mine_topk(_model(), _data(3), ["conv2"], k=5)
    t = got["conv2"]
    assert t.values.shape == t.index.shape == (128, 5)
    assert (t.index[:, 3:] == -1).all() and torch.isinf(t.values[:, 3:]).all()


def test_ties_break_by_image_index() -> None:
    """Identical images give identical activations: the lower index must come first, whatever
    the batching and whatever the order of the merge."""
    x = torch.randn(1, 3, 32, 32).expand(6, -1, -1, -1).clone() * 60
    data = TensorDataset(x, torch.zeros(6).long())
    model = _model()
    one = mine_topk(model, data, ["conv3"], k=3, batch_size=4)["conv3"]
    assert (one.index == torch.tensor([0, 1, 2])).all()
    a = mine_topk(model, data, ["conv3"], k=3, indices=[5, 3, 1])["conv3"]
    b = mine_topk(model, data, ["conv3"], k=3, indices=[4, 2, 0])["conv3"]
    _same(merge_topk(a, b), one)
    _same(merge_topk(b, a), one)


def test_shards_merge_to_one_pass_and_dataloaders() -> None:
    model, data = _model(), _data()
    whole = mine_topk(model, data, LAYERS, k=9, batch_size=8)
    parts = [mine_topk(model, data, LAYERS, k=9, indices=range(lo, min(lo + 7, 23)),
                       batch_size=3) for lo in range(0, 23, 7)]
    for name in LAYERS:
        _same(merge_topk(*(p[name] for p in parts)), whole[name])
    # DistributedSampler shards (interleaved, padded to equal size by repeating items) merge
    # to the same answer: a repeated image counts once.
    shards = [
        mine_topk(model, DataLoader(data, batch_size=4, sampler=DistributedSampler(
            data, num_replicas=2, rank=r, shuffle=True, seed=3)), LAYERS, k=9)
        for r in range(2)
    ]
    for name in LAYERS:
        _same(merge_topk(*(s[name] for s in shards)), whole[name])
    # the images each was taken over: 23, however split (the padding's repeat counted once)
    assert {t.mined for t in whole.values()} == {23}
    assert merge_topk(*(p["conv1"] for p in parts)).mined == 23
    assert sorted(s["conv1"].mined for s in shards) == [11, 12]
    assert merge_topk(*(s["conv1"] for s in shards)).mined == 23
    with pytest.raises(ValueError, match="SequentialSampler or DistributedSampler"):
        mine_topk(model, DataLoader(data, shuffle=True), LAYERS)


def test_save_load_and_errors(tmp_path) -> None:
    model, data = _model(), _data(4)
    got = mine_topk(model, data, ["conv1"], k=2)
    _same(load_topk(save_topk(got, tmp_path / "t.pt"))["conv1"], got["conv1"])
    with pytest.raises(ValueError, match="k must be"):
        mine_topk(model, data, ["conv1"], k=0)
    with pytest.raises(KeyError, match="valid: conv1"):
        mine_topk(model, data, ["conv7"])
    with pytest.raises(ValueError, match="cannot merge"):
        merge_topk(got["conv1"], TopK.empty("conv2", 5, 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        got = mine_topk_distributed(_model(), _data(), LAYERS, k=9, batch_size=4)
        out[rank] = {n: t.to_dict() for n, t in got.items()}
    finally:
        dist.destroy_process_group()


class _FlatAfter(TensorDataset):
    """`_data(n)` whose items from `bad` on are vectors, not images (an error in mining)."""

    def __init__(self, n: int, bad: int) -> None:
        super().__init__(*_data(n).tensors)
        self.bad = bad

    def __getitem__(self, i: int):
        x, y = super().__getitem__(i)
        return (x.flatten(), y) if i >= self.bad else (x, y)


def _edge_worker(rank: int, world: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        # one image for two processes: the first one's shard is empty
        got = mine_topk_distributed(_model(), _data(1), LAYERS, k=2)
        out[(rank, "one image")] = {n: t.to_dict() for n, t in got.items()}
        try:  # the second shard fails: both processes raise, neither waits
            mine_topk_distributed(_model(), _FlatAfter(6, bad=3), LAYERS, k=2)
        except ValueError as e:
            out[(rank, "error")] = str(e)
    finally:
        dist.destroy_process_group()


def test_empty_shards_and_errors_across_two_processes() -> None:
    whole = mine_topk(_model(), _data(1), LAYERS, k=2)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_edge_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        results = dict(out)
    for rank in range(2):
        for name in LAYERS:
            _same(TopK.from_dict(results[(rank, "one image")][name]), whole[name])
    assert results[(1, "error")].startswith("items must be images")
    assert results[(0, "error")] == results[(1, "error")]  # said alike: torchrun prints one


def test_two_processes_merge_to_the_one_process_answer() -> None:
    whole = mine_topk(_model(), _data(), LAYERS, k=9)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        results = dict(out)
    for rank in range(2):
        for name in LAYERS:
            _same(TopK.from_dict(results[rank][name]), whole[name])
            assert TopK.from_dict(results[rank][name]).mined == 23


# --- any layer of any model ----------------------------------------------------------------


def _resnet(num_classes: int) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def _brute(model: nn.Module, x: torch.Tensor, name: str, k: int) -> TopK:
    """Top-k of one layer by one forward pass over all of x and Python sorting."""
    from zfnet.activations import get_activations

    model.eval()
    a = get_activations(model, x, [name])[name]
    if a.ndim == 2:
        a = a[:, :, None, None]
    n, c, _, w = a.shape
    per_image, where = a.reshape(n, c, -1).max(2)  # (N, C)
    t = TopK.empty(name, c, k)
    for ch in range(c):
        order = sorted(range(n), key=lambda i, ch=ch: (-float(per_image[i, ch]), i))[:k]
        t.values[ch, : len(order)] = per_image[order, ch]
        t.index[ch, : len(order)] = torch.tensor(order)
        t.row[ch, : len(order)] = where[order, ch] // w
        t.col[ch, : len(order)] = where[order, ch] % w
    return t


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_any_layer_of_a_resnet_by_hooks(num_classes) -> None:
    """Blocks, an inner ReLU called twice, global pooling (1x1 maps) and the logits (flat,
    position (0, 0)): equal to brute force, shards merge into one pass, no hook left."""
    model, data = _resnet(num_classes), _data(11)
    layers = ["layer1", "layer2.0.relu", "layer4", "avgpool", "fc"]
    model.train()  # mined in eval mode, given back in training mode
    got = mine_topk(model, data, layers, k=3, batch_size=4)
    assert model.training and not any(m._forward_hooks for m in model.modules())
    for name in layers:
        _same(got[name], _brute(model, data.tensors[0], name, 3))
    assert got["fc"].values.shape == (num_classes, 3)
    assert (got["fc"].row == 0).all() and (got["fc"].col == 0).all()
    parts = [mine_topk(model, data, layers, k=3, indices=range(lo, min(lo + 4, 11)),
                       batch_size=3) for lo in range(0, 11, 4)]
    for name in layers:
        _same(merge_topk(*(p[name] for p in parts)), got[name])
    one = mine_topk(model, data, "layer4", k=3, batch_size=4)  # one name: not its letters
    assert list(one) == ["layer4"]
    _same(one["layer4"], got["layer4"])


def test_chain_and_classifier_layers_together() -> None:
    """A chain model's conv and fc layers in one call: one pass of the whole model, the conv
    layer as the chain's fast path finds it."""
    import torchvision

    torch.manual_seed(0)
    vgg = torchvision.models.vgg11_bn(weights=None, num_classes=5)
    data = _data(5)
    fast = mine_topk(vgg, data, ["features.4"], k=2)["features.4"]
    both = mine_topk(vgg, data, ["features.4", "classifier.3"], k=2)
    _same(both["features.4"], fast)
    _same(both["classifier.3"], _brute(vgg, data.tensors[0], "classifier.3", 2))
    with pytest.raises(KeyError, match="does not exist"):
        mine_topk(vgg, data, ["features.4", "layer9"])


def test_progress_callback_counts_images_and_can_stop_the_mining() -> None:
    model, data = _model(), _data()
    seen: list[tuple[int, int]] = []
    mine_topk(model, data, ["conv1"], k=2, batch_size=5, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 23), (5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        if done >= 10:
            raise Stop

    with pytest.raises(Stop):
        mine_topk(model, data, ["conv1"], k=2, batch_size=5, progress=stop)
    assert not any(m._forward_hooks for m in model.modules())  # no hook left behind


# --- streams (an IterableDataset of any length) ----------------------------------------------

class _Stream(IterableDataset):
    """`_data()`'s items as a stream, every `broken`-th item unreadable (None); split between
    DataLoader workers item by item, so that the loader yields them in their order."""

    def __init__(self, broken: int = 0) -> None:
        self.data, self.broken = _data(), broken

    def __iter__(self):
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        for i in range(wid, len(self.data), n):
            yield None if self.broken and i % self.broken == 0 else self.data[i]


def test_a_stream_is_numbered_by_position_and_mines_like_a_dataset() -> None:
    model = _model()
    whole = mine_topk(model, _data(), LAYERS, k=9, batch_size=5)
    seen: list[tuple[int, int | None]] = []
    got = mine_topk(model, _Stream(), LAYERS, k=9, batch_size=5,
                    progress=lambda d, t: seen.append((d, t)))
    for name in LAYERS:
        _same(got[name], whole[name])
    assert seen == [(0, None), (5, None), (10, None), (15, None), (20, None), (23, None)]
    # two workers (batches alternate between them) and broken items: positions are kept
    loader = DataLoader(_Stream(broken=4), batch_size=1, num_workers=2)
    got = mine_topk(model, loader, LAYERS, k=9)
    keep = [i for i in range(23) if i % 4]
    part = mine_topk(model, _data(), LAYERS, k=9, indices=keep)
    for name in LAYERS:
        _same(got[name], part[name])
    with pytest.raises(ValueError, match="cannot pick items of a stream"):
        mine_topk(model, _Stream(), LAYERS, indices=[0, 1])


class _Stop(Exception):
    pass


def _stop_after(batches: int):
    """A progress callback that stops the mining before batch `batches` (0-based)."""
    seen = [0]

    def report(done: int, total: int | None) -> None:
        seen[0] += 1
        if seen[0] == batches + 1:
            raise _Stop

    return report


def _identical(a: dict[str, TopK], b: dict[str, TopK]) -> None:
    assert list(a) == list(b)
    for name in a:
        for f in ("values", "index", "row", "col"):
            assert torch.equal(getattr(a[name], f), getattr(b[name], f)), (name, f)
        assert a[name].mined == b[name].mined


def test_a_stopped_mining_is_kept_and_continued_to_the_answer_of_one_never_stopped(
        tmp_path) -> None:
    """Stopped twice (after 2 batches, then 2 more), the same call goes on from where it was
    kept: the same images, positions and values (the same batches) as a mining never stopped;
    the journal is gone once it is done."""
    from zfnet.analyses.topk import MiningNote

    model, data, journal = _model(), _data(), tmp_path / "kept.pt"
    whole = mine_topk(model, data, LAYERS, k=3, batch_size=4)
    kw = dict(k=3, batch_size=4, journal=journal, journal_key="m", save_every=3600)
    with pytest.warns(MiningNote, match=rf"kept the top-k mining in {journal} \(8 of 23 images "
                      "mined\\): the same command continues it"), pytest.raises(_Stop):
        mine_topk(model, data, LAYERS, progress=_stop_after(2), **kw)
    with pytest.warns(MiningNote, match="kept the top-k mining .* \\(16 of 23 images mined\\)"), \
            pytest.warns(MiningNote, match="continuing .*: 8 of 23"), pytest.raises(_Stop):
        mine_topk(model, data, LAYERS, progress=_stop_after(2), **kw)
    with pytest.warns(MiningNote, match=rf"continuing the top-k mining kept in {journal}: 16 of "
                      "23 images are mined"):
        resumed = mine_topk(model, data, LAYERS, **kw)
    _identical(resumed, whole)
    assert whole["conv1"].mined == 23 and not journal.exists()


def test_a_kept_mining_of_other_settings_is_not_continued(tmp_path) -> None:
    """Another key (model or data), k, batch size or items: mined from the start, as if
    nothing were kept (no note), and the file replaced."""
    import warnings

    from zfnet.analyses.topk import MiningNote

    model, data, journal = _model(), _data(), tmp_path / "kept.pt"
    with pytest.warns(MiningNote), pytest.raises(_Stop):
        mine_topk(model, data, LAYERS, k=3, batch_size=4, journal=journal, journal_key="a",
                  progress=_stop_after(3))
    kept = journal.read_bytes()
    for other in ({"journal_key": "b"}, {"k": 2}, {"batch_size": 5}, {"indices": range(20)}):
        kw = {"k": 3, "batch_size": 4, "journal_key": "a"} | other
        journal.write_bytes(kept)
        with warnings.catch_warnings():
            warnings.simplefilter("error", MiningNote)  # not "continuing"
            got = mine_topk(model, data, LAYERS, journal=journal, **kw)
        fresh = mine_topk(model, data, LAYERS, **{k: v for k, v in kw.items()
                                                  if k != "journal_key"})
        _identical(got, fresh)
        assert not journal.exists()


def ctrl_c_at_update(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """A Ctrl-C in the mining: at its `call`-th update of a layer's top-k (`topk._update`)."""
    import zfnet.analyses.topk as topk

    real, calls = topk._update, [0]

    def update(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(topk, "_update", update)


def test_the_command_keeps_a_stopped_mining_and_continues_it(tmp_path, monkeypatch) -> None:
    """`zfnet visualize topk` stopped by Ctrl-C while mining says where the mining is kept;
    the same command continues it, and its top-k is that of a command never stopped."""
    from click.testing import CliRunner

    from zfnet.cli import main

    def command(out: str) -> list[str]:
        return ["visualize", "topk", "--model", "zfnet_small", "--data",
                "synthetic?n_train=8&n_val=24&size=32", "--images", "24", "--batch-size", "4",
                "--k", "3", "--maps-per-layer", "2", "--device", "cpu", "--out",
                str(tmp_path / out)]

    assert CliRunner().invoke(main, command("whole")).exit_code == 0
    ctrl_c_at_update(monkeypatch, 18)  # 5 layers a batch: the 4th batch's 3rd layer
    res = CliRunner().invoke(main, command("stopped"))
    kept = tmp_path / "stopped" / "gallery" / ".topk-mining.pt"
    assert res.exit_code == 130, res.output
    assert res.output.splitlines()[-2:] == [
        f"note: kept the top-k mining in {kept} (12 of 24 images mined): the same command "
        "continues it", "interrupted (SIGINT)"]
    monkeypatch.undo()
    res = CliRunner().invoke(main, command("stopped"))
    assert res.exit_code == 0, res.output
    assert f"note: continuing the top-k mining kept in {kept}: 12 of 24 images are mined" \
        in res.output
    _identical(load_topk(tmp_path / "stopped/gallery/topk.pt"),
               load_topk(tmp_path / "whole/gallery/topk.pt"))
    assert not kept.exists()


def test_a_stop_while_the_gallery_draws_keeps_the_finished_mining(tmp_path, monkeypatch
                                                                  ) -> None:
    """`zfnet visualize topk` stopped after its mining, while it draws, keeps the mining: the
    same command draws from it (no batch mined again) and removes it once the gallery is
    there."""
    from click.testing import CliRunner

    import zfnet.analyses.gallery as gallery
    import zfnet.analyses.topk as topk
    from zfnet.cli import main

    command = ["visualize", "topk", "--model", "zfnet_small", "--data",
               "synthetic?n_train=8&n_val=24&size=32", "--images", "24", "--batch-size", "4",
               "--k", "3", "--maps-per-layer", "2", "--device", "cpu", "--out", str(tmp_path)]

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(gallery, "project_topk", ctrl_c)  # the first step of the drawing
        assert CliRunner().invoke(main, command).exit_code == 130
    kept = tmp_path / "gallery" / ".topk-mining.pt"
    assert kept.exists()
    updates = [0]
    real = topk._update

    def counted(*args, **kwargs):
        updates[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(topk, "_update", counted)
    res = CliRunner().invoke(main, command)
    assert res.exit_code == 0, res.output
    assert updates[0] == 0 and not kept.exists()  # drawn from the kept mining
    assert (tmp_path / "sections" / "topk_gallery.json").exists()


def test_a_k_past_the_images_is_cut_to_them_and_said(tmp_path) -> None:
    """--k 1000 of 3 images drew a page of empty cells (14414 px wide for 3 photos): each map
    has as many activations to show as there are images."""
    import json

    from click.testing import CliRunner

    from zfnet.cli import main

    res = CliRunner().invoke(main, [
        "visualize", "topk", "--model", "zfnet_small", "--data", "synthetic?n_val=3&size=32",
        "--k", "1000", "--layer", "conv1", "--maps-per-layer", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "--k 1000: 3 images read, so the top 3 of each map" in res.output
    index = json.loads((tmp_path / "gallery" / "topk.json").read_text())
    assert index["layers"]["conv1"]["k"] == 3


def test_k_is_cut_to_the_images_read_not_the_files(tmp_path) -> None:
    """5 files of which 3 unreadable: said "5 images to mine, so the top 5", titled Top-5, k 5 in
    topk.json and laid out for 5 with blank cells; now k is the 2 images read everywhere."""
    import json

    import torchvision
    from click.testing import CliRunner
    from PIL import Image

    from zfnet.cli import main
    from zfnet.report import read_sections

    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    said = {}
    for name in ("messy", "clean"):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(2):
            Image.new("RGB", (40, 48), (60 * i, 90, 200)).save(folder / f"p{i}.png")
        if name == "messy":
            (folder / "empty.jpg").write_bytes(b"")
            (folder / "text.png").write_text("not an image\n")
            (folder / "cut.jpg").write_bytes((folder / "p0.png").read_bytes()[:40])
        res = CliRunner().invoke(main, [
            "visualize", "topk", "--model", "torchvision:resnet18", "--weights", str(weights),
            "--resize", "40", "--crop", "32", "--data", f"images:{folder}", "--layer",
            "layer1", "--maps-per-layer", "2", "--out", str(tmp_path / f"out_{name}")])
        assert res.exit_code == 0, res.output
        said[name] = res.output
    assert "--k 9: 2 images read (of 5 files, 3 unreadable), so the top 2 of each map" \
        in said["messy"] and "5 images" not in said["messy"]
    assert "--k 9: 2 images read, so the top 2 of each map" in said["clean"]
    out = tmp_path / "out_messy"
    table = json.loads((out / "gallery" / "topk.json").read_text())
    assert table["layers"]["layer1"]["k"] == 2
    (section,) = read_sections(out)
    assert section.title.startswith("Top-2 activations") and section.metrics["k"] == 2
    assert "the 2 strongest activations of that map over 2 images (of 5 files, 3 unreadable)" \
        in section.caption and "cells stay blank" not in section.caption
    # laid out as for the 2 images alone: no blank cells
    sizes = {Image.open(tmp_path / f"out_{name}" / "gallery" / "topk_layer1.png").size
             for name in said}
    assert len(sizes) == 1
