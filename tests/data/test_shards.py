"""shards: `zfnet shards` writes an image folder as webdataset tars; `shards:OUT` gives the folder
loader's items, streams training epochs split per rank and worker (exact, resumable), and
trains, evaluates and mines from the command line, also under torchrun (two processes, and two
"nodes" meeting at one rendezvous)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from click.testing import CliRunner
from PIL import Image

from tests.data.shard_ranks import Recorder, batches_of
from tests.processes import process_env, stop_group, torchrun
from tests.train.tiny import tiny_config
from zfnet.cli import main
from zfnet.data import BrokenImageWarning, collate, load_dataset
from zfnet.data import shard_writer as writer_mod
from zfnet.data.images import BadImageError
from zfnet.data.loaders import item_form, loader_kind
from zfnet.data.shard_stream import epoch_order, pieces, worker_batches
from zfnet.data.shard_writer import parse_size, write_shards
from zfnet.data.shards import FORMAT, SHARD, ShardsError, read_manifest
from zfnet.train import evaluate_checkpoint, find_last, load_model, train
from zfnet.train import recipe as recipe_mod
from zfnet.train.recipe import SeededSamples

pytestmark = pytest.mark.filterwarnings("ignore::zfnet.data.images.BrokenImageWarning")

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("ant", "bee", "cat")
SPEC = "size=32"  # 32 px crops of 37 px images: small, and the full size the shards store


def _image(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    """A smooth photo-like image (JPEG keeps it well): colour waves of a class's hue and a
    bright square at a random place. uint8 (h, w, 3)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    f = rng.uniform(0.5, 2.0, 3)
    chans = [128 + 90 * np.sin(2 * np.pi * (f[c] * xx + (k + c) * yy / 3 + rng.uniform()))
             for c in range(3)]
    img = np.stack(chans, -1)
    t, s = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[t:t + h // 3, s:s + w // 3] = 235
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: Path) -> Path:
    """3 classes, 7 training and 2 val images each, JPEGs of 96x72 and 72x96 with some odd
    ones (EXIF-rotated, grey, palette PNG, smaller than the stored size, a dotted name), and a
    broken file among the training images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("val", 2)):
        for k, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for j in range(n):
                h, w = (72, 96) if (j + k) % 3 else (96, 72)
                im = Image.fromarray(_image(rng, h, w, k))
                name = f"{j}.jpg"
                if split == "train" and (k, j) == (0, 0):  # rotated by its EXIF orientation
                    exif = Image.Exif()
                    exif[0x0112] = 6
                    im.save(d / name, quality=95, exif=exif)
                    continue
                if split == "train" and (k, j) == (1, 1):
                    im.convert("P", palette=Image.Palette.ADAPTIVE).save(d / "1.png")
                    continue
                if split == "train" and (k, j) == (2, 2):
                    im = im.convert("L")
                if split == "train" and (k, j) == (2, 3):
                    im = im.resize((40, 30))  # smaller than the 37 px stored
                if split == "val" and (k, j) == (0, 1):
                    name = "x.v2.jpg"
                im.save(d / name, quality=95)
    (root / "train" / "bee" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("shards") / "folder")


@pytest.fixture(scope="module")
def original(folder) -> Path:
    """The folder's original bytes in shards (one per split)."""
    out = folder.parent / "original"
    with pytest.warns(BrokenImageWarning, match=r"train/bee/broken\.jpg"):
        write_shards(f"imagefolder:{folder}", out, resize=0, workers=0)
    return out


@pytest.fixture(scope="module")
def resized(folder) -> Path:
    """The folder re-encoded at 37 px in shards of at most 16 kB (several per split)."""
    out = folder.parent / "resized"
    write_shards(f"imagefolder:{folder}", out, resize=37, shard_size=16_000, workers=0)
    return out


def _keys(paths: list[Path], split_root: Path) -> list[str]:
    return [p.relative_to(split_root).with_suffix("").as_posix().replace(".", "_")
            for p in paths if p.name != "broken.jpg"]


# --- writing ---

def test_manifest_counts_and_plain_webdataset_reads_them(folder, original, resized) -> None:
    m = read_manifest(original)
    assert m["format"] == FORMAT and m["classes"] == list(CLASSES) and m["resize"] == 0
    train, val = m["splits"]["train"], m["splits"]["val"]
    assert (train["count"], val["count"]) == (21, 6)
    assert train["skipped"] == ["train/bee/broken.jpg"] and val["skipped"] == []
    r = read_manifest(resized)
    assert r["resize"] == 37 and len(r["splits"]["train"]["shards"]) > 3
    for split in ("train", "val"):
        shards = r["splits"][split]["shards"]
        assert sum(s["count"] for s in shards) == r["splits"][split]["count"]
        assert all(s["bytes"] <= 16_000 for s in shards)
        assert [s["file"] for s in shards] == [f"{split}-{k:06d}.tar" for k in range(len(shards))]
    # any webdataset reader takes them: keys, labels, the images' bytes
    folder_data = load_dataset(f"imagefolder:{folder}?{SPEC}")
    urls = [str(original / s["file"]) for s in train["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == _keys(folder_data.train.paths, folder / "train")
    kept = [(p, y) for p, y in zip(folder_data.train.paths, folder_data.train.targets,
                                   strict=True) if p.name != "broken.jpg"]
    shards = load_dataset(f"shards:{original}?{SPEC}").train
    for i, (s, (path, y)) in enumerate(zip(samples, kept, strict=True)):
        assert int(s["cls"]) == y and s[path.suffix[1:]] == path.read_bytes()
        assert shards.read(i) == path.read_bytes()  # the index points at them


def test_writing_is_atomic_and_refuses_a_used_out(folder, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    real, calls = writer_mod._SplitWriter.add, {"n": 0}

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real(self, *args)

    monkeypatch.setattr(writer_mod._SplitWriter, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_shards(f"imagefolder:{folder}", out, workers=0)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half-written folder
    monkeypatch.setattr(writer_mod._SplitWriter, "add", real)
    out.mkdir()  # an empty folder is fine, a used one is not
    write_shards(f"imagefolder:{folder}?n_train=4&n_val=2", out, resize=37, workers=0)
    assert read_manifest(out)["splits"]["train"]["count"] == 4
    with pytest.raises(FileExistsError, match="holds shards already"):
        write_shards(f"imagefolder:{folder}", out, workers=0)


def test_a_folder_of_class_folders_split_by_val_split_is_written_as_it_is_read(folder,
                                                                            tmp_path) -> None:
    """imagefolder:DIR?val_split=F: the shards hold its two splits, each sample keyed and named
    by its path under DIR (as under DIR/train and DIR/val otherwise); --out inside DIR, where it
    would be a class folder, is refused before anything is written."""
    flat = tmp_path / "flat"
    shutil.copytree(folder / "train", flat)  # ant/, bee/, cat/ at the top
    spec = f"imagefolder:{flat}?val_split=0.25"
    with pytest.raises(ValueError, match=rf"--out {flat / 'shards'} lies inside {flat}, where "
                       "it would become a class folder"):
        write_shards(spec, flat / "shards", resize=37, workers=0)
    assert not (flat / "shards").exists()
    with pytest.warns(BrokenImageWarning, match=r"bee/broken\.jpg"):
        write_shards(spec, tmp_path / "out", resize=37, workers=0)
    read = load_dataset(f"{spec}&{SPEC}")
    m = read_manifest(tmp_path / "out")
    shards = load_dataset(f"shards:{tmp_path / 'out'}?{SPEC}")
    for split in ("train", "val"):
        files = getattr(read, split)
        kept = [i for i, p in enumerate(files.paths) if p.name != "broken.jpg"]
        assert m["splits"][split]["count"] == len(kept) > 0
        urls = [str(tmp_path / "out" / x["file"]) for x in m["splits"][split]["shards"]]
        samples = list(wds.WebDataset(urls, shardshuffle=False))
        assert [x["__key__"] for x in samples] == _keys(files.paths, flat)
        assert [int(x["cls"]) for x in samples] == [files.targets[i] for i in kept]
        assert len(getattr(shards, split)) == len(kept)


class _KilledBySigterm(Exception):
    """What SIGTERM raises in a test while no handler of zfnet's is installed (its default
    would end the test process)."""


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_leaves_nothing_and_exits_as_a_signal(folder, tmp_path, monkeypatch,
                                                      workers) -> None:
    def not_caught(signum, frame):
        raise _KilledBySigterm

    monkeypatch.setattr(writer_mod, "CHUNK", 4)  # several tasks: the workers write some
    real, calls = writer_mod._SplitWriter.add, {"n": 0}

    def terminated(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:  # as `timeout` or a scheduler sends it
            os.kill(os.getpid(), signal.SIGTERM)
        real(self, *args)

    monkeypatch.setattr(writer_mod._SplitWriter, "add", terminated)
    previous = signal.signal(signal.SIGTERM, not_caught)
    try:
        res = CliRunner().invoke(main, ["shards", f"imagefolder:{folder}", "--out",
                                        str(tmp_path / "out"), "--workers", str(workers),
                                        "--quiet"])
        assert signal.getsignal(signal.SIGTERM) is not_caught  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert res.exit_code == 143, (res.output, res.exception)
    assert res.output.strip().splitlines()[-1] == "interrupted (SIGTERM)"
    assert list(tmp_path.iterdir()) == []  # no hidden half-written folder


def test_folders_of_killed_writes_are_removed_by_the_next(folder, tmp_path) -> None:
    import fcntl

    out = tmp_path / "out"

    def hidden(name: str, *files: str) -> Path:
        d = tmp_path / f".{name}.tmp-{os.urandom(16).hex()}"
        d.mkdir()
        for f in files:
            (d / f).write_bytes(b"x" * 1000)
        return d

    killed = hidden("out", "train-000000.tar", "train-000001.tar", "train-index.npy",
                    "mean-37.npy", f".manifest.json.tmp-{os.urandom(16).hex()}")
    empty = hidden("out")  # killed right after it was made
    mixed = hidden("out", "train-000000.tar", "notes.txt")  # not only what a write makes
    running = hidden("out", "train-000000.tar")  # a write of OUT still running holds its lock
    other = hidden("other", "train-000000.tar")  # another OUT's
    odd = tmp_path / ".out.tmp-notahexname"
    odd.mkdir()
    lock = os.open(running, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with pytest.warns(writer_mod.StaleWriteWarning) as seen:
            write_shards(f"imagefolder:{folder}?n_train=4&n_val=2", out, resize=37, workers=0)
    finally:
        os.close(lock)
    said = [str(w.message) for w in seen if w.category is writer_mod.StaleWriteWarning]
    assert sorted(said) == sorted([
        f"removed {killed} (0.0 MB), left by an earlier write of {out} that was killed before "
        "it finished a shard",
        f"removed {empty} (0.0 MB), left by an earlier write of {out} that was killed before it "
        "finished a shard",
        f"{mixed} looks like what an interrupted `zfnet shards --out {out}` leaves, but holds "
        "other things too (e.g. notes.txt): kept; remove it if it is one"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (out, mixed, running, other, odd))


def _stop_at(monkeypatch, k: int, exc: BaseException) -> None:
    """`exc` raised as the k-th image is about to be added to a shard (both splits counted)."""
    real, calls = writer_mod._SplitWriter.add, {"n": 0}

    def stopping(self, *args):
        calls["n"] += 1
        if calls["n"] == k:
            raise exc
        real(self, *args)

    monkeypatch.setattr(writer_mod._SplitWriter, "add", stopping)


def _same_shards(out: Path, reference: Path) -> None:
    """`out` holds `reference`'s files byte for byte, and its manifest but for id and time."""
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names  # no journal, rows or sums left
    for name in names:
        if name != "manifest.json":
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    mine, theirs = read_manifest(out), read_manifest(reference)
    for m in (mine, theirs):
        del m["id"], m["created"]
    assert mine == theirs


# 21 training images (one file broken) in 7 shards of 3, then 6 val ones in 2: image 12 is in
# train's fourth shard, 22 is val's first image (train saved whole), 25 in val's second shard;
# a run that continues from train's 10th image stops at its 16th: in val's second shard
@pytest.mark.parametrize(("stops", "workers"), [((12,), 0), ((22,), 0), ((12, 16), 0),
                                                ((25,), 2)])
def test_an_interrupted_write_continues_to_the_same_bytes(folder, resized, tmp_path, monkeypatch,
                                                          stops, workers) -> None:
    out, spec = tmp_path / "out", f"imagefolder:{folder}"
    if workers:
        monkeypatch.setattr(writer_mod, "CHUNK", 4)  # several tasks: the workers write some
    ids, real = set(), writer_mod._SplitWriter.add
    for k in stops:  # each run stops at its k-th image; the next continues it
        _stop_at(monkeypatch, k, KeyboardInterrupt())
        with pytest.warns(writer_mod.PartialWriteNote) as seen, \
                pytest.raises(KeyboardInterrupt):
            write_shards(spec, out, resize=37, shard_size=16_000, workers=workers)
        (kept,) = tmp_path.iterdir()
        assert not out.exists() and kept.name.startswith(".out.tmp-")
        note = str(seen[-1].message)
        assert note.startswith(f"kept what this write of {out} did in {kept} (") and note.endswith(
            " are written): the same command continues it; remove that folder to start again")
        ids.add(json.loads((kept / "journal.json").read_text())["id"])
        monkeypatch.setattr(writer_mod._SplitWriter, "add", real)
    with pytest.warns(writer_mod.PartialWriteNote, match=rf"continuing the interrupted write of "
                      rf"{re.escape(str(out))} kept in {re.escape(str(kept))}: ") as seen:
        write_shards(spec, out, resize=37, shard_size=16_000, workers=workers)
    _same_shards(out, resized)
    assert len(ids) == 1 and read_manifest(out)["id"] in ids  # one write, continued
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.filterwarnings("ignore::zfnet.data.shard_writer.PartialWriteNote")  # each checked
def test_what_was_kept_is_told_by_split(folder, resized, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    for k, said in ((12, "train's first 9 of 22 images (3 shards)"),  # the second continues
                    (17, "all 22 train images and val's first 3 of 6 images (1 shard)")):
        _stop_at(monkeypatch, k, KeyboardInterrupt())
        with pytest.warns(writer_mod.PartialWriteNote, match=re.escape(f"({said} are written)")), \
                pytest.raises(KeyboardInterrupt):
            write_shards(f"imagefolder:{folder}", out, resize=37, shard_size=16_000, workers=0)
        monkeypatch.undo()
        if k == 12:  # a copy of the first: two writes of OUT stopped, this one not as far
            (kept,) = tmp_path.iterdir()
            shutil.copytree(kept, tmp_path.parent / f"{tmp_path.name}-copy")
    behind = tmp_path / f".out.tmp-{os.urandom(16).hex()}"
    shutil.move(tmp_path.parent / f"{tmp_path.name}-copy", behind)
    size = sum(f.stat().st_size for f in behind.iterdir()) / 1e6
    with pytest.warns(writer_mod.StaleWriteWarning) as seen:
        write_shards(f"imagefolder:{folder}", out, resize=37, shard_size=16_000, workers=0)
    assert [str(w.message) for w in seen if w.category is writer_mod.StaleWriteWarning] == [
        f"removed {behind} ({size:.1f} MB), left by an earlier write of {out} that stopped before "
        f"{kept.name}, which is continued"]
    _same_shards(out, resized)


@pytest.mark.filterwarnings("ignore::zfnet.data.shard_writer.PartialWriteNote")  # each checked
def test_errors_keep_what_can_be_continued(folder, resized, tmp_path, monkeypatch) -> None:
    import errno

    out, spec = tmp_path / "out", f"imagefolder:{folder}"
    _stop_at(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError):  # no shard closed yet: nothing to keep
        write_shards(spec, out, resize=37, shard_size=16_000, workers=0)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    for k, error in ((14, OSError(errno.ENOSPC, "No space left on device")),
                     (5, RuntimeError("the first run's images, then this"))):
        _stop_at(monkeypatch, k, error)
        with pytest.warns(writer_mod.PartialWriteNote, match="kept what this write"), \
                pytest.raises(type(error)):
            write_shards(spec, out, resize=37, shard_size=16_000, workers=0)
        monkeypatch.undo()
        assert len(list(tmp_path.iterdir())) == 1
    with pytest.warns(writer_mod.PartialWriteNote, match=r"continuing .*: train's first 15 of "):
        write_shards(spec, out, resize=37, shard_size=16_000, workers=0)
    _same_shards(out, resized)


def test_a_write_stopped_as_it_ends_is_ended_by_the_next(folder, resized, tmp_path,
                                                         monkeypatch) -> None:
    out, real = tmp_path / "out", writer_mod.write_text_atomic

    def no_manifest(path, *args, **kwargs):
        if Path(path).name == "manifest.json":
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(writer_mod, "write_text_atomic", no_manifest)
    with pytest.warns(writer_mod.PartialWriteNote, match=r"\(all 22 train images and all 6 val "
                      r"images are written\)"), pytest.raises(KeyboardInterrupt):
        write_shards(f"imagefolder:{folder}", out, resize=37, shard_size=16_000, workers=0)
    monkeypatch.undo()
    with pytest.warns(writer_mod.PartialWriteNote, match="continuing"):
        write_shards(f"imagefolder:{folder}", out, resize=37, shard_size=16_000, workers=0)
    _same_shards(out, resized)


_KILL_AT = """
import os, signal, sys
from zfnet.data import shard_writer as w
what, k = sys.argv[3], int(sys.argv[4])
real, calls = getattr(w, what.split(".")[0]), {"n": 0}
cls, name = getattr(w, what.split(".")[0]), what.split(".")[1]
method = getattr(cls, name)
def killing(self, *args):
    calls["n"] += 1
    if calls["n"] == k:
        os.kill(os.getpid(), signal.SIGKILL)
    return method(self, *args)
setattr(cls, name, killing)
w.write_shards(sys.argv[1], sys.argv[2], resize=37, shard_size=16_000, workers=0)
"""


# SIGKILL as image 17 is added (a shard half written), and in the middle of saving the journal
# for train's third closed shard (its rows appended and its sum written, the journal not yet)
@pytest.mark.parametrize(("what", "k"), [("_SplitWriter.add", 17), ("_Journal._save", 3)])
def test_a_write_killed_outright_continues_to_the_same_bytes(folder, resized, tmp_path, what,
                                                             k) -> None:
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", _KILL_AT, f"imagefolder:{folder}", str(out), what,
                        str(k)], env=process_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    (kept,) = tmp_path.iterdir()
    assert (kept / "journal.json").is_file() and not out.exists()
    with pytest.warns(writer_mod.PartialWriteNote, match="continuing the interrupted write"):
        write_shards(f"imagefolder:{folder}", out, resize=37, shard_size=16_000, workers=0)
    _same_shards(out, resized)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _shards_in_a_group(script: str, folder: Path, out: Path) -> subprocess.Popen:
    """`zfnet shards` of `folder` at 37 px, 16 kB shards, 2 workers, run by `script` (which
    calls zfnet.cli.main) in a process group of its own, as a terminal's foreground job."""
    command = ["shards", f"imagefolder:{folder}", "--out", str(out), "--resize", "37",
               "--shard-size", "16kB", "--workers", "2", "--quiet"]
    return subprocess.Popen([sys.executable, "-c", script, *command], env=process_env(),
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


_SLOW_CHUNKS = """
import sys, time
from zfnet.cli import main
from zfnet.data import shard_writer as w
w.CHUNK = 2
real = w._Chunks.__getitem__
def slow(self, c):  # a slow chunk with a large result: the queue to the main process fills
    time.sleep(0.3)
    return {**real(self, c), "pad": bytes(2**20)}
w._Chunks.__getitem__ = slow
main(sys.argv[1:])
"""


def test_ctrl_c_with_workers_keeps_the_write_and_ends_at_once(folder, resized, tmp_path) -> None:
    """Ctrl-C in a terminal: SIGINT to the whole process group, the writing workers too, while
    they hold results the main process has not read. The command ends with no worker left,
    keeping the write, which the same command continues."""
    out = tmp_path / "out"
    p = _shards_in_a_group(_SLOW_CHUNKS, folder, out)
    try:
        for _ in range(600):  # until the first shard is saved
            if list(tmp_path.glob(".out.tmp-*/journal.json")) or p.poll() is not None:
                break
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        stop_group(p)
    assert p.returncode == 130, err
    assert err.splitlines()[-1] == "interrupted (SIGINT)" and "note: kept what this write" in err
    with pytest.raises(ProcessLookupError):  # no worker left behind
        for _ in range(100):
            os.killpg(p.pid, 0)
            time.sleep(0.05)
    with pytest.warns(writer_mod.PartialWriteNote, match="continuing the interrupted write"):
        write_shards(f"imagefolder:{folder}", out, resize=37, shard_size=16_000, workers=0)
    _same_shards(out, resized)


def test_a_background_write_started_ignoring_sigint_stops_on_it(folder, tmp_path) -> None:
    """A write started with `&` by a script inherits SIGINT ignored (the shell's doing):
    `kill -INT` stops it all the same, keeping the write, as it stops `zfnet train` (it ran to
    its end with exit status 0)."""
    out = tmp_path / "out"
    command = ["shards", f"imagefolder:{folder}", "--out", str(out), "--resize", "37",
               "--shard-size", "16kB", "--workers", "0", "--quiet"]
    p = subprocess.Popen([sys.executable, "-c", _SLOW_CHUNKS, *command], env=process_env(),
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for _ in range(600):  # until the first shard is saved
            if list(tmp_path.glob(".out.tmp-*/journal.json")) or p.poll() is not None:
                break
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        stop_group(p)
    assert p.returncode == 130, err
    assert "note: kept what this write" in err and not out.exists()


_CTRL_C_AT_FORK = """
import multiprocessing.process, os, signal, sys
from zfnet.cli import main
from zfnet.data import shard_writer
shard_writer.CHUNK = 2  # tasks for two workers in each split
real, started = multiprocessing.process.BaseProcess.start, []
def start(self):  # Ctrl-C as val's first writing worker is started
    real(self)
    started.append(self)
    if len(started) == 3:
        os.killpg(0, signal.SIGINT)
multiprocessing.process.BaseProcess.start = start
main(sys.argv[1:])
"""


def test_ctrl_c_while_workers_start_is_not_lost(folder, tmp_path) -> None:
    """SIGINT to the group while the DataLoader forks its workers: neither lost (Python drops a
    KeyboardInterrupt raised in its at-fork callbacks) nor leaving workers that the exit then
    waits for."""
    out = tmp_path / "out"
    p = _shards_in_a_group(_CTRL_C_AT_FORK, folder, out)
    try:
        _, err = p.communicate(timeout=60)
    finally:
        stop_group(p)
    assert p.returncode == 130, err
    assert err.splitlines()[-2:] == [
        f"note: kept what this write of {out} did in {next(tmp_path.iterdir())} (all 22 train "
        "images are written): the same command continues it; remove that folder to start "
        "again", "interrupted (SIGINT)"], err


def test_an_interrupted_write_of_other_settings_is_not_continued(folder, tmp_path,
                                                                 monkeypatch) -> None:
    out, spec = tmp_path / "out", f"imagefolder:{folder}"
    _stop_at(monkeypatch, 12, KeyboardInterrupt())
    with pytest.warns(writer_mod.PartialWriteNote), pytest.raises(KeyboardInterrupt):
        write_shards(spec, out, resize=37, shard_size=16_000, workers=0)
    monkeypatch.undo()
    (kept,) = tmp_path.iterdir()
    before = sorted((p.name, p.stat().st_size) for p in kept.iterdir())
    for args, said in (
            ({"resize": 40, "shard_size": 16_000}, "--resize 37 (now --resize 40)"),
            ({"resize": 37, "shard_size": 10**9, "square": True},
             "--square off (now --square on), --shard-size 16000 (now --shard-size 1000000000)"),
            ({"resize": 37, "shard_size": 16_000, "spec": f"{spec}?n_train=4"},
             "22 train and 6 val images (now 4 train and 6 val images)")):
        with pytest.raises(FileExistsError) as e:
            write_shards(args.pop("spec", spec), out, workers=0, **args)
        assert str(e.value) == (
            f"{kept} holds an interrupted write of {out} with other settings ({said}): run the "
            "command that started it to continue it, or remove that folder to write with these")
    assert sorted((p.name, p.stat().st_size) for p in kept.iterdir()) == before  # untouched
    assert list(tmp_path.iterdir()) == [kept]
    (kept / "train-000001.tar").unlink()  # damaged: told, not continued, kept as it is
    before = sorted(p.name for p in kept.iterdir())
    with pytest.raises(ValueError, match=re.escape(
            f"{kept} cannot be continued: train-000001.tar is missing, written as ")):
        write_shards(spec, out, resize=37, shard_size=16_000, workers=0)
    assert sorted(p.name for p in kept.iterdir()) == before


def test_the_command_keeps_an_interrupted_write_and_continues_it(folder, resized, tmp_path,
                                                                  monkeypatch) -> None:
    out = tmp_path / "out"
    command = ["shards", f"imagefolder:{folder}", "--out", str(out), "--resize", "37",
               "--shard-size", "16kB", "--workers", "0", "--quiet"]
    _stop_at(monkeypatch, 12, KeyboardInterrupt())
    res = CliRunner().invoke(main, command)
    assert res.exit_code == 130, res.output
    (kept,) = tmp_path.iterdir()
    assert res.output.splitlines()[-2:] == [
        f"note: kept what this write of {out} did in {kept} (train's first 9 of 22 images "
        "(3 shards) are written): the same command continues it; remove that folder to start "
        "again", "interrupted (SIGINT)"]
    monkeypatch.undo()
    res = CliRunner().invoke(main, command)
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == (
        f"note: continuing the interrupted write of {out} kept in {kept}: train's first 9 of "
        "22 images (3 shards) are written")
    _same_shards(out, resized)
    res = CliRunner().invoke(main, [*command[:4], "--resize", "40"])
    assert res.exit_code == 1 and "exists and is not an empty folder" in res.output


def test_an_out_that_cannot_be_made_is_named_as_given(folder, tmp_path) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc (Linux)")
    res = CliRunner().invoke(main, ["shards", f"imagefolder:{folder}", "--out", "/proc/nope"])
    assert res.exit_code == 2 and ".nope.tmp" not in res.output, res.output  # a usage error
    assert res.output == ("Error: Invalid value for '--out': /proc/nope cannot be made: zfnet "
                          "cannot create anything in /proc (no such file or directory); give a "
                          "folder zfnet can write\n"), res.output


def test_an_out_that_cannot_take_the_shards_is_refused_before_writing(folder, tmp_path,
                                                                      monkeypatch) -> None:
    """An empty --out is replaced by the finished write: a mount point, or a folder that cannot
    be moved (immutable), is one line before any image is read — it was after the whole write,
    a traceback; an --out under a file names the file."""
    from zfnet.data import shard_writer

    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(main, ["shards", f"imagefolder:{folder}", "--out",
                                    str(tmp_path / "afile" / "out")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert f"{tmp_path / 'afile'} is a file, so {tmp_path / 'afile' / 'out'} cannot be made" \
        in res.output
    mount = tmp_path / "mnt"
    mount.mkdir()
    read = []
    monkeypatch.setattr(shard_writer, "_write", lambda *a, **k: read.append(1))
    monkeypatch.setattr(shard_writer.os.path, "ismount", lambda p: Path(p) == mount)
    res = CliRunner().invoke(main, ["shards", f"imagefolder:{folder}", "--out", str(mount)])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert f"--out {mount} is a mount point" in res.output and f"--out {mount / 'shards'}" in \
        res.output
    real = os.rename

    def immutable(src, dst):
        if Path(src) == mount:
            raise OSError(1, "Operation not permitted")
        return real(src, dst)

    monkeypatch.setattr(shard_writer.os.path, "ismount", lambda p: False)
    monkeypatch.setattr(shard_writer.os, "rename", immutable)
    res = CliRunner().invoke(main, ["shards", f"imagefolder:{folder}", "--out", str(mount)])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert f"--out {mount} cannot be replaced by the finished shards (Operation not permitted)" \
        in res.output
    assert not read and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mnt"]
    assert mount.is_dir() and not any(mount.iterdir())


def test_shards_workers_take_what_train_takes(folder, tmp_path) -> None:
    res = CliRunner().invoke(main, ["shards", f"imagefolder:{folder}?n_train=4&n_val=2",
                                    "--out", str(tmp_path / "auto"), "--workers", "auto",
                                    "--resize", "37", "--quiet"])
    assert res.exit_code == 0 and read_manifest(tmp_path / "auto"), res.output
    for bad in ("-3", "x"):
        said = {}
        for command in (["shards", f"imagefolder:{folder}", "--out", str(tmp_path / "no")],
                        ["train", "--data", "synthetic", "--out", str(tmp_path / "no")]):
            res = CliRunner().invoke(main, [*command, "--workers", bad])
            assert res.exit_code == 2, res.output
            said[command[0]] = res.output
        assert said["shards"] == said["train"] == \
            f"Error: Invalid value for '--workers': '{bad}' is not auto or a number >= 0\n"
    assert not (tmp_path / "no").exists()


def test_shards_smaller_than_an_image_are_told(folder, tmp_path) -> None:
    res = CliRunner().invoke(main, ["shards", "--help"])
    assert "a shard holds at least one image" in " ".join(res.output.split())
    # raw 64 px squares: 12 KiB an image, over the 10 KiB shards (tar's smallest file)
    res = CliRunner().invoke(main, ["shards", f"imagefolder:{folder}?n_train=4&n_val=2",
                                    "--out", str(tmp_path / "small"), "--shard-size", "10KiB",
                                    "--resize", "64", "--raw", "--quiet"])
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "small")
    assert [len(s["shards"]) for s in m["splits"].values()] == [4, 2]  # one image each
    assert res.output.strip().splitlines()[-1] == (
        "note: 6 shard(s) hold one image larger than --shard-size 10240 bytes (a shard holds "
        "at least one image)")


def test_workers_write_the_same_bytes(folder, resized, tmp_path) -> None:
    out = tmp_path / "two"
    write_shards(f"imagefolder:{folder}", out, resize=37, shard_size=16_000, workers=2)
    files = sorted(p.name for p in resized.iterdir() if p.name != "manifest.json")
    assert files == sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
    for name in files:
        assert (out / name).read_bytes() == (resized / name).read_bytes(), name


def test_default_writers_are_the_cores_this_process_may_use(folder, tmp_path,
                                                            monkeypatch) -> None:
    class Seen(Exception):
        pass

    def recording(*args, num_workers, **kwargs):
        raise Seen(num_workers)

    monkeypatch.setattr(writer_mod, "CHUNK", 4)  # several tasks: workers are asked for
    monkeypatch.setattr(writer_mod, "Loader", recording)
    for cores, writers in ((3, 3), (20, 8)):  # at most 8
        monkeypatch.setattr(writer_mod, "usable_cores", lambda cores=cores: cores)
        with pytest.raises(Seen) as e:
            write_shards(f"imagefolder:{folder}", tmp_path / f"out{cores}")
        assert e.value.args == (writers,)
        assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_parse_size() -> None:
    assert parse_size("1GB") == 10**9 and parse_size("16kB") == 16_000
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("4096") == 4096
    for bad in ("abc", "1XB", ""):
        with pytest.raises(ValueError, match="not a size: a number with an optional unit"):
            parse_size(bad)
    for bad, what in (("0", "zero"), ("0kB", "zero"), ("-5MB", "negative"),
                      ("0.5", "less than 1 byte")):  # numbers, but no size
        with pytest.raises(ValueError, match=rf"'{bad}' is {what}: a size must be > 0"):
            parse_size(bad)


# --- reading: the folder loader's items ---

def test_original_bytes_give_the_folder_loaders_items_exactly(folder, original) -> None:
    f = load_dataset(f"imagefolder:{folder}?{SPEC}", ten_crop=True)
    s = load_dataset(f"shards:{original}?{SPEC}", ten_crop=True)
    assert (s.class_names, s.input_size, s.full_size) == (f.class_names, 32, 37)
    assert torch.equal(s.mean, f.mean)  # the broken file left out of both
    for split in ("train", "val"):
        fd, sd = getattr(f, split), getattr(s, split)
        good = [i for i, p in enumerate(fd.paths) if p.name != "broken.jpg"]
        assert [sd.key(i) for i in range(len(sd))] == _keys(fd.paths, folder / split)
        assert sd.targets == [fd.targets[i] for i in good]
        for i, j in enumerate(good):
            assert torch.equal(sd.full_image(i), fd.full_image(j)), (split, i)
    for i in range(len(s.val)):
        xs, ys = s.val[i]
        xf, yf = f.val[i]
        assert xs.shape == (10, 3, 32, 32) and torch.equal(xs, xf) and ys == yf
        assert torch.equal(s.raw_val(i), f.raw_val(i))
    # training crops: the same for the same draws
    params = [(1, 4, True), (5, 0, False), (0, 5, True)]
    good = [i for i, p in enumerate(f.train.paths) if p.name != "broken.jpg"]
    for a, b in zip(s.train.train_items([0, 3, 20], params),
                    f.train.train_items([good[0], good[3], good[20]], params), strict=True):
        assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_resized_shards_match_within_jpeg_tolerance(folder, resized) -> None:
    f = load_dataset(f"imagefolder:{folder}?{SPEC}")
    s = load_dataset(f"shards:{resized}?{SPEC}")
    assert (s.mean - f.mean).abs().mean() < 1.0
    for split in ("train", "val"):
        fd, sd = getattr(f, split), getattr(s, split)
        good = [i for i, p in enumerate(fd.paths) if p.name != "broken.jpg"]
        assert [sd.key(i) for i in range(len(sd))] == _keys(fd.paths, folder / split)
        for i, j in enumerate(good):
            a, b = sd.full_image(i).float(), fd.full_image(j).float()
            assert a.shape == b.shape == (3, 37, 37)
            rms = (a - b).square().mean().sqrt()
            if sd.key(i) == "cat/3":  # smaller than 37 px: its own bytes are kept
                assert rms == 0
            assert rms < 8, (split, i)  # JPEG quality 90: PSNR above 30 dB
    with pytest.warns(UserWarning, match="37 px .* 73 px inputs upsample them"):
        load_dataset(f"shards:{resized}?size=64")
    # a subset selects as imagefolder does, by name and per class
    sub = load_dataset(f"shards:{resized}?{SPEC}&classes=cat,ant&per_class=2")
    assert sub.class_names == ["cat", "ant"] and sub.train.targets == [1, 0, 1, 0]
    assert [sub.train.key(i) for i in range(4)] == ["ant/0", "cat/0", "ant/1", "cat/1"]


def test_square_shards_store_the_centre_squares_the_readers_use(folder, resized,
                                                                 tmp_path) -> None:
    out = tmp_path / "squares"
    said = _run_cli(["shards", f"imagefolder:{folder}", "--out", str(out), "--resize", "37",
                     "--square", "--workers", "0", "--quiet"])
    assert "21 train images in 1 shard(s), 6 val images in 1 shard(s) as 37 px centre " \
        "squares (1 broken file skipped)" in said
    m = read_manifest(out)
    assert m["square"] is True and read_manifest(resized)["square"] is False
    assert m["splits"]["train"]["skipped"] == ["train/bee/broken.jpg"]
    for split in ("train", "val"):  # every image re-encoded at 37 x 37, the small one too
        urls = [str(out / s["file"]) for s in m["splits"][split]["shards"]]
        sizes = {Image.open(io.BytesIO(s["jpg"])).size for s in wds.WebDataset(
            urls, shardshuffle=False)}
        assert sizes == {(37, 37)}, split
    f = load_dataset(f"imagefolder:{folder}?{SPEC}", ten_crop=True)
    q = load_dataset(f"shards:{out}?{SPEC}", ten_crop=True)
    r = load_dataset(f"shards:{resized}?{SPEC}", ten_crop=True)
    assert (q.mean - f.mean).abs().mean() < 1.0 and q.mean.shape == f.mean.shape
    for split in ("train", "val"):
        fd, qd, rd = getattr(f, split), getattr(q, split), getattr(r, split)
        good = [i for i, p in enumerate(fd.paths) if p.name != "broken.jpg"]
        assert [qd.key(i) for i in range(len(qd))] == [rd.key(i) for i in range(len(rd))]
        assert qd.targets == rd.targets
        for i, j in enumerate(good):  # the folder loader's full images, up to JPEG rounding
            a, b = qd.full_image(i).float(), fd.full_image(j).float()
            assert a.shape == b.shape == (3, 37, 37)
            assert (a - b).square().mean().sqrt() < 8, (split, i)
    for i in range(len(q.val)):  # the 10 crops of evaluation
        xq, yq = q.val[i]
        xf, yf = f.val[i]
        assert xq.shape == (10, 3, 32, 32) and yq == yf
        assert (xq - xf).square().mean().sqrt() < 8
    with pytest.raises(ValueError, match="resize > 0"):
        write_shards(f"imagefolder:{folder}", tmp_path / "none", resize=0, square=True)
    assert not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def raw(folder) -> Path:
    """The folder's centre squares at 37 px, the full size of SPEC's crops, as raw pixels."""
    out = folder.parent / "raw"
    said = _run_cli(["shards", f"imagefolder:{folder}", "--out", str(out), "--resize", "37",
                     "--raw", "--workers", "0", "--quiet"])
    assert "21 train images in 1 shard(s), 6 val images in 1 shard(s) as 37 px centre " \
        "squares of raw pixels (1 broken file skipped)" in said
    return out


def test_raw_shards_give_the_folder_loaders_items_exactly(folder, raw) -> None:
    m = read_manifest(raw)
    assert m["format"] == FORMAT and (m["raw"], m["square"], m["resize"]) == (True, True, 37)
    assert m["quality"] is None and m["splits"]["train"]["skipped"] == ["train/bee/broken.jpg"]
    f = load_dataset(f"imagefolder:{folder}?{SPEC}", ten_crop=True)
    r = load_dataset(f"shards:{raw}?{SPEC}", ten_crop=True)
    torch.testing.assert_close(r.mean, f.mean, rtol=0, atol=1e-3)  # (sums in another order)
    for split in ("train", "val"):
        fd, rd = getattr(f, split), getattr(r, split)
        good = [i for i, p in enumerate(fd.paths) if p.name != "broken.jpg"]
        assert [rd.key(i) for i in range(len(rd))] == _keys(fd.paths, folder / split)
        assert rd.targets == [fd.targets[j] for j in good]
        for i, j in enumerate(good):  # not decoded: the very pixels the folder loader makes
            assert torch.equal(rd.full_image(i), fd.full_image(j)), (split, i)
        # plain webdataset reads them as (S, S, 3) uint8 arrays
        urls = [str(raw / s["file"]) for s in m["splits"][split]["shards"]]
        arrays = [s["npy"] for s in wds.WebDataset(urls, shardshuffle=False).decode()]
        assert len(arrays) == len(rd)
        for i, a in enumerate(arrays):
            assert a.dtype == np.uint8 and a.shape == (37, 37, 3)
            assert np.array_equal(a, rd.full_image(i).permute(1, 2, 0).numpy())
    for i in range(len(r.val)):  # the 10 crops of evaluation, exactly
        xr, yr = r.val[i]
        xf, yf = f.val[i]
        assert torch.equal(xr, xf) and yr == yf


def test_raw_shards_train_with_workers_and_score_as_the_folder(folder, raw, tmp_path) -> None:
    run = tmp_path / "run"
    train(tiny_config(run, data=f"shards:{raw}?{SPEC}", workers=2, epochs=1))
    scores = [evaluate_checkpoint(run, data, ten_crop=True, workers=0, device="cpu")
              for data in (f"shards:{raw}?{SPEC}", f"imagefolder:{folder}?{SPEC}")]
    assert scores[0]["n"] == scores[1]["n"] == 6
    for key in ("loss", "top1_error", "top5_error", "confusion_matrix"):
        assert scores[0][key] == scores[1][key], key


def test_a_damaged_raw_image_is_skipped_and_named(raw, tmp_path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(raw, damaged)
    r = load_dataset(f"shards:{damaged}?{SPEC}")
    shard, offset, _ = r.train.location(4)
    with open(r.train.split.files[shard], "r+b") as f:  # its header's shape, made (37, 38, 3)
        f.seek(offset)
        header = f.read(128)
        f.seek(offset)
        f.write(header.replace(b"(37, 37, 3)", b"(37, 38, 3)"))
    name = r.train.name(4)
    assert name.endswith("train-000000.tar:bee/1.npy")
    with pytest.warns(BrokenImageWarning, match=rf"{re.escape(name)}: cannot decode \(raw "
                                                 r"pixels: uint8 \(37, 38, 3\)"):
        assert r.train[4] is None
    assert r.train[3] is not None and r.train[5] is not None
    strict = load_dataset(f"shards:{damaged}?{SPEC}", strict=True).train
    with pytest.raises(BadImageError, match="expected uint8 \\(37, 37, 3\\)") as e:
        strict.full_image(4)
    assert str(e.value.path) == name


def test_raw_options_that_cannot_hold_are_refused(folder, raw, tmp_path) -> None:
    for extra, said in ((["--original"], "--raw stores centre squares at --resize px"),
                        (["--quality", "80"], "--quality 80 is for JPEGs")):
        res = CliRunner().invoke(main, ["shards", f"imagefolder:{folder}", "--out",
                                        str(tmp_path / "no"), "--raw", *extra])
        assert res.exit_code == 2 and said in res.output, res.output
    with pytest.raises(ValueError, match="raw=True stores centre squares"):
        write_shards(f"imagefolder:{folder}", tmp_path / "no", resize=0, raw=True)
    assert not (tmp_path / "no").exists()
    # the gpu loader has nothing to decode; auto picks the cpu loader on CUDA too
    train_split = load_dataset(f"shards:{raw}?{SPEC}").train
    assert loader_kind("auto", train_split, torch.device("cuda")) == "cpu"
    assert item_form("cpu", train_split) == "pixels"
    for device_decodes in ("gpu", "mixed"):
        with pytest.raises(ValueError, match=f"--loader {device_decodes} decodes image files "
                                             "on the device, and these shards hold raw pixels"):
            loader_kind(device_decodes, train_split, torch.device("cpu"))
    # shards of the format before raw pixels are still read; a later one is refused
    old = tmp_path / "old"
    shutil.copytree(raw, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": "zfnet-shards/1"}))
    assert len(load_dataset(f"shards:{old}?{SPEC}").train) == 21
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": "zfnet-shards/9"}))
    with pytest.raises(ShardsError, match=r"format 'zfnet-shards/9', this zfnet reads "
                                          r"'zfnet-shards/1' and 'zfnet-shards/2'"):
        load_dataset(f"shards:{old}?{SPEC}")


def test_val_is_read_once_in_stored_order(resized) -> None:
    s = load_dataset(f"shards:{resized}?{SPEC}")
    reads: list[tuple[str, int]] = []
    files = s.val._files
    real = files.pread

    def record(path, size, offset):
        reads.append((path.name, offset))
        return real(path, size, offset)

    files.pread = record
    n = sum(len(y) for _, y in torch.utils.data.DataLoader(s.val, batch_size=4,
                                                           collate_fn=collate))
    assert n == len(s.val) == 6
    assert reads == sorted(reads) and len(set(reads)) == len(reads) == 6


def test_items_are_shown_by_their_class_folder_and_name(folder, resized) -> None:
    """A figure or topk.json names a shards item as the folder's loader names its file: with its
    class folder (two classes' files of one name told apart), not the bare file name."""
    from zfnet.data.picks import file_name

    shards = load_dataset(f"shards:{resized}?{SPEC}")
    names = [file_name(shards.val, i) for i in range(len(shards.val))]
    assert [n.split("/")[0] for n in names] == [CLASSES[y] for y in shards.val.targets]
    assert len(set(names)) == len(names) and all(n.count("/") == 1 for n in names)


@pytest.mark.parametrize("shards", ["original", "resized", "raw"])
def test_items_are_named_as_the_folder_names_their_files(folder, shards, request) -> None:
    """topk.json and the figures name an item of shards as the folder does: the same file
    (`ant/x.v2.jpg`, `bee/1.png`), not its member (`ant/x_v2.jpg`, re-encoded `bee/1.jpg`,
    raw `bee/1.npy`), whatever each split's files were (a JPEG folder's ImageNet `.JPEG`)."""
    from zfnet.data.picks import file_name

    stored = request.getfixturevalue(shards)
    for split in ("train", "val"):
        want = [f"{p.parent.name}/{p.name}" for p in getattr(
            load_dataset(f"imagefolder:{folder}?{SPEC}"), split).paths
            if p.name != "broken.jpg"]
        got = getattr(load_dataset(f"shards:{stored}?{SPEC}"), split)
        assert [file_name(got, i) for i in range(len(got))] == want, split
    manifest = json.loads((stored / "manifest.json").read_text())
    assert manifest["splits"]["val"]["suffix"] == ".jpg"
    assert set(manifest["splits"]["train"]["renamed"].values()) == {"bee/1.png"}


# --- streaming training epochs ---

def _epoch(train, workers: int, world: int = 1, rank: int = 0, **kw) -> list[list[int]]:
    kw = {"epoch": 1, "seed": 0, "batch_size": 4, **kw}
    stream = train.epoch_stream(Recorder(train), rank=rank, world_size=world, **kw)
    return batches_of(stream, workers)


def test_pieces_follow_the_dataloaders_turns() -> None:
    for n, b, k in ((21, 4, 3), (24, 4, 3), (5, 4, 3), (9, 2, 4), (21, 4, 1)):
        batches = math.ceil(n / b)
        ps = pieces(n, b, k)
        assert sorted(p for piece in ps for p in piece) == list(range(n))
        for w, (piece, count) in enumerate(zip(ps, worker_batches(batches, k), strict=True)):
            assert math.ceil(len(piece) / b) == count
            short = len(piece) % b
            assert not short or w == (batches - 1) % k  # the short batch is the last in turn


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_rank_the_same_batches_disjoint_parts_the_whole_epoch(resized, world) -> None:
    train = load_dataset(f"shards:{resized}?{SPEC}&shuffle=5").train
    n, per_rank = len(train), math.ceil(len(train) / world)
    order = epoch_order(train.split.index[train.rows, SHARD], 0, 1)
    seen = []
    for rank in range(world):
        batches = _epoch(train, workers=2, world=world, rank=rank)
        assert len(batches) == math.ceil(per_rank / 4)
        assert [len(b) for b in batches[:-1]] == [4] * (len(batches) - 1)
        seen += [i for b in batches for i in b]
    padded = list(order) + list(order[:per_rank * world - n])  # as DistributedSampler pads
    assert Counter(seen) == Counter(padded) and set(seen) == set(range(n))


def test_epochs_are_deterministic_shuffled_and_differ(resized) -> None:
    train = load_dataset(f"shards:{resized}?{SPEC}&shuffle=5").train
    one = _epoch(train, workers=0)
    assert one == _epoch(train, workers=0)
    assert one != _epoch(train, workers=0, epoch=2) != _epoch(train, workers=0, seed=1)
    flat = [i for b in one for i in b]
    assert sorted(flat) == list(range(len(train))) and flat != sorted(flat)
    # the items are the map-style training set's: (seed, epoch, index) fixes each crop
    order = [i for b in _epoch(train, 0, epoch=2, seed=3) for i in b]
    seeded = SeededSamples(train, seed=3)
    seeded.epoch = 2
    stream = train.epoch_stream(seeded, epoch=2, seed=3, batch_size=4)
    items = [item for batch in torch.utils.data.DataLoader(stream, batch_size=None,
                                                            collate_fn=list) for item in batch]
    assert len(items) == len(order) == len(train)
    for (x, y), i in zip(items, order, strict=True):
        assert torch.equal(x, seeded[i][0]) and y == seeded[i][1]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_with_the_same_workers_is_exact(resized, workers) -> None:
    train = load_dataset(f"shards:{resized}?{SPEC}&shuffle=5").train
    whole = _epoch(train, workers)
    assert len(whole) == 6
    for k in (1, 2, 4, 5):
        rest = _epoch(train, workers, start_step=k, workers_before=max(1, workers))
        assert rest == whole[k:], k


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_resume_with_other_workers_keeps_the_epoch(resized) -> None:
    train = load_dataset(f"shards:{resized}?{SPEC}&shuffle=5").train
    whole = _epoch(train, 2)
    for k in (1, 3):
        stream = train.epoch_stream(Recorder(train), epoch=1, seed=0, batch_size=4,
                                    start_step=k, workers_before=2)
        rest = batches_of(stream, 3)
        assert len(rest) == len(stream) == len(whole) - k
        done = [i for b in whole[:k] for i in b]
        assert Counter(done + [i for b in rest for i in b]) == Counter(range(len(train)))


# --- the commands ---

def _run_cli(args: list[str]) -> str:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_train_resume_eval_and_mine_from_shards(resized, tmp_path) -> None:
    data = f"shards:{resized}?{SPEC}"
    run = tmp_path / "run"
    common = ["--model-opt", "conv_widths=16,16,16", "--model-opt", "fc_width=32"]
    _run_cli(["train", "--data", data, "--model", "zfnet_small", "--out", str(run),
              "--epochs", "1", "--batch-size", "8", "--workers", "2", "--quiet",
              "--no-tensorboard", "--device", "cpu", *common])
    _run_cli(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"])
    meta = load_model(run)[1]
    assert meta["epoch"] == 2 and meta["data"] == data
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    out = _run_cli(["eval", "--checkpoint", str(run), "--ten-crop"])
    assert f"on {data}, 6 images, 10 crops" in out
    _run_cli(["visualize", "topk", "--checkpoint", str(run), "--out", str(tmp_path / "topk"),
              "--k", "2", "--layer", "conv1", "--maps-per-layer", "2"])
    assert (tmp_path / "topk" / "gallery" / "topk_conv1.png").is_file()


def test_a_run_on_a_folder_with_a_broken_file_resumes_on_its_shards(folder, resized,
                                                                    tmp_path) -> None:
    """The run counted the folder's broken file (and skipped it); its shards hold the readable
    images and list the broken one: a --resume on them is taken, saying why the counts differ
    (it was refused: "21 training images now, 22 in the run")."""
    run = tmp_path / "run"
    common = ["--model-opt", "conv_widths=16,16,16", "--model-opt", "fc_width=32", "--quiet",
              "--no-tensorboard", "--device", "cpu", "--batch-size", "8"]
    _run_cli(["train", "--data", f"imagefolder:{folder}?{SPEC}", "--model", "zfnet_small",
              "--out", str(run), "--epochs", "1", *common])
    assert load_model(run)[1]["train_images"] == 22
    out = _run_cli(["train", "--data", f"shards:{resized}?{SPEC}", "--out", str(run),
                    "--resume", "--epochs", "2", "--model", "zfnet_small", *common])
    assert f"the run's data is now shards:{resized}?{SPEC} (21 training images in them, 22 " \
        "in the run: the 1 broken file(s) the run skipped were left out when they were " \
        "written)" in " ".join(out.split())
    assert load_model(run)[1]["epoch"] == 2


def test_sigterm_mid_epoch_then_resume_is_exact(resized, tmp_path, monkeypatch) -> None:
    """Streamed with 2 workers, 3 batches an epoch: SIGTERM during step 5 (epoch 2), then
    --resume: the uninterrupted run's losses and weights."""
    data = f"shards:{resized}?{SPEC}&shuffle=4"
    ref = tmp_path / "ref"
    train(tiny_config(ref, data=data, workers=2, epochs=2))
    out = tmp_path / "run"
    real, calls = recipe_mod.renormalize_filters, {"n": 0}

    def renorm_then_signal(model, radius, *rest):
        real(model, radius, *rest)
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(recipe_mod, "renormalize_filters", renorm_then_signal)
    assert train(tiny_config(out, data=data, workers=2, epochs=2))["status"] == "interrupted"
    monkeypatch.setattr(recipe_mod, "renormalize_filters", real)
    assert find_last(out).name == "epoch_0001_step_000002"
    assert train(tiny_config(out, data=data, workers=2, epochs=2, resume=True)
                 )["status"] == "completed"
    ha, hb = load_model(ref)[1]["history"], load_model(out)[1]["history"]
    for ra, rb in zip(ha, hb, strict=True):
        for key in ("train_loss", "train_top1_error", "val_loss", "global_step"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), key
    wa, wb = load_model(ref)[0].state_dict(), load_model(out)[0].state_dict()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)


def test_bad_shards_folders_are_named(resized, tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-000000.tar").write_bytes(b"")
    with pytest.raises(ShardsError, match=r"no manifest\.json \(its \.tar files"):
        load_dataset(f"shards:{bad}")
    changed = tmp_path / "changed"
    shutil.copytree(resized, changed)
    with open(changed / "train-000001.tar", "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(ShardsError, match=r"train-000001\.tar has \d+ bytes, the manifest"):
        load_dataset(f"shards:{changed}")
    (changed / "train-000001.tar").unlink()
    with pytest.raises(ShardsError, match=r"train-000001\.tar is missing"):
        load_dataset(f"shards:{changed}")


def test_files_of_shards_are_named_by_absolute_paths(resized, tmp_path, monkeypatch) -> None:
    """As a run saves its dataset's path: train and eval name a file alike."""
    shutil.copytree(resized, tmp_path / "moved")
    (tmp_path / "moved" / "train-000001.tar").unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ShardsError) as e:
        load_dataset("shards:moved")
    assert str(e.value).startswith(f"{tmp_path / 'moved' / 'train-000001.tar'} is missing")


def _edited(resized: Path, folder: Path, edit) -> str:
    """A copy of `resized` with its manifest edited by `edit` (in place): its spec."""
    shutil.copytree(resized, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return f"shards:{folder}?{SPEC}"


AGAIN = "the shards are incomplete or were changed: write them again with `zfnet shards`"


@pytest.mark.parametrize(("name", "edit", "said"), [
    ("no-classes", lambda m: m.update(classes=None),
     "'classes' is null, not a list of class names"),
    ("fewer-classes", lambda m: m.update(classes=m["classes"][:2]),
     "train-index.npy holds label 2, the manifest names 2 classes (labels 0 to 1)"),
    ("no-shards", lambda m: m["splits"]["train"].update(shards=[]),
     "train-index.npy points at train shard 6, but the manifest lists 0 train shards"),
    ("resize-text", lambda m: m.update(resize="abc"),
     "'resize' is \"abc\", not the stored side in px (an integer >= 0)"),
    ("raw-text", lambda m: m.update(raw="yes"), "'raw' is \"yes\", not true or false"),
    ("shard-outside", lambda m: m["splits"]["train"]["shards"][0].update(
        file="../other/train-000000.tar"),
     'the train shard "../other/train-000000.tar" is not a file name in'),
    ("index-outside", lambda m: m["splits"]["val"].update(index="/etc/passwd"),
     'the val index "/etc/passwd" is not a file name in'),
    ("shard-entry", lambda m: m["splits"]["val"]["shards"][0].pop("bytes"),
     "the val split's \"shards\" are not a list of file, count and bytes entries"),
])
def test_edited_manifests_are_refused_in_one_line(resized, tmp_path, name, edit, said) -> None:
    spec = _edited(resized, tmp_path / name, edit)
    with pytest.raises(ShardsError) as e:
        load_dataset(spec)
    assert said in str(e.value) and str(e.value).endswith(AGAIN), str(e.value)
    res = CliRunner().invoke(main, ["eval", "--model", "zfnet_small", "--data",
                                    spec.partition("?")[0]])
    last = res.output.strip().splitlines()[-1]
    assert res.exit_code == 1 and last.startswith("Error: ") and said in last, res.output


def test_small_shards_warn_once_in_one_line(resized, tmp_path) -> None:
    from zfnet.data.shards import ResolutionWarning

    assert ResolutionWarning.one_line  # `zfnet` prints it as `warning: ...`
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        for _ in range(2):  # two callers (eval loads a dataset more than once)
            load_dataset(f"shards:{resized}?size=64")
        from zfnet.data.shards import load_shards
        from zfnet.data.spec import parse_spec
        load_shards(parse_spec(f"shards:{resized}?size=64"), raw_spec="")
    said = [str(w.message) for w in seen if w.category is ResolutionWarning]
    assert said == [f"the shards in {resized} hold images at 37 px (shorter side): 73 px inputs "
                    "upsample them; write shards with --resize 73 (or --original) for these "
                    "inputs"]


# --- several processes ---



def test_two_processes_stream_disjoint_parts_of_one_epoch(resized, tmp_path) -> None:
    result = tmp_path / "ranks"
    r = torchrun("-m", "tests.data.shard_ranks", str(resized), str(result))
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads(Path(f"{result}.{k}.json").read_text()) for k in (0, 1)]
    assert [x["world_size"] for x in ranks] == [2, 2]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == ranks[0]["len"] == 3
    parts = [{i for b in x["batches"] for i in b} for x in ranks]
    n = len(load_dataset(f"shards:{resized}?{SPEC}").train)  # 21: 11 per rank, 1 repeated
    assert parts[0] | parts[1] == set(range(n)) and len(parts[0] & parts[1]) == 1


def test_two_nodes_meet_at_one_rendezvous_and_train(resized, tmp_path) -> None:
    """Two torchrun launches (--nnodes 2, one process each) on this machine, as on two: they
    meet at a c10d rendezvous and train one epoch on the shards, with --loader mixed (each
    measures the workers' share, and both take the mean: a collective, so a process that did
    not take part would hang the other).

    The rendezvous store lives in this process, as on a cluster with a store of its own: were it
    in one launch, that launch could exit first and the other fail to leave the rendezvous, and
    a port chosen beforehand could be taken by another test in between."""
    from torch.distributed import TCPStore

    run = tmp_path / "run"
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-conf", "is_host=false",
         "--rdzv-endpoint", f"127.0.0.1:{store.port}", "--rdzv-id", "shards-test",
         "-m", "zfnet.cli", "train", "--data", f"shards:{resized}?{SPEC}", "--model",
         "zfnet_small", "--model-opt", "conv_widths=16,16,16", "--model-opt", "fc_width=32",
         "--out", str(run), "--epochs", "1", "--batch-size", "8", "--workers", "1",
         "--loader", "mixed", "--device", "cpu", "--quiet", "--no-tensorboard"],
        cwd=ROOT, env=process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # a group each: a hang is stopped whole, workers included
        for node in (0, 1)]
    try:
        outputs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            stop_group(p)  # torchrun's ranks and their workers too
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    meta = load_model(run)[1]
    assert meta["world_size"] == 2 and meta["epoch"] == 1
    assert meta["history"][0]["global_step"] == 3  # 21 images: 11 per node, batches of 4
    assert 0.0 <= meta["host_share"] <= 1.0
