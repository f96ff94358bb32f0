"""imagefolder: layout errors, mean image and its cache, unusual and broken files."""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zfnet.data.imagefolder as imagefolder
from zfnet.data import BadImageError, BrokenImageWarning, collate, load_dataset, load_rgb
from zfnet.data.transforms import centre_crop
from zfnet.data.workers import Loader

SIZE = 16  # crop side used in these tests: full size round(16 * 256 / 224) = 18


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(root: Path) -> dict[str, np.ndarray]:
    """2 classes x 2 train images (18x18, already at full size) + 1 val image each."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 2), ("val", 1)):
        for cls in ("cat", "ant"):
            for k in range(n):
                a = rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)
                rel = f"{split}/{cls}/{k}.png"
                _save(root / rel, a)
                arrays[rel] = a
    return arrays


def test_classes_mean_and_crops(tmp_path):
    arrays = _folder(tmp_path)
    data = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}")
    assert data.class_names == ["ant", "cat"]  # sorted folder names
    assert (data.input_size, data.full_size, data.in_channels) == (16, 18, 3)
    assert len(data.train) == 4 and len(data.val) == 2
    train = [v for k, v in arrays.items() if k.startswith("train")]
    expected = np.mean(np.stack(train).astype(np.float64), axis=0).transpose(2, 0, 1)
    assert data.mean.shape == (3, 18, 18)
    assert torch.allclose(data.mean, torch.from_numpy(expected).float(), atol=1e-4)
    # val item 0 is val/ant/0.png: its centre crop minus the matching crop of the mean.
    img = torch.from_numpy(arrays["val/ant/0.png"]).permute(2, 0, 1)
    x, y = data.val[0]
    assert y == 0
    assert torch.allclose(x, centre_crop(img.float(), 16) - centre_crop(data.mean, 16), atol=1e-4)
    assert torch.equal(data.raw_val(0), centre_crop(img, 16))


def test_mean_is_cached_and_keyed_by_file_list(tmp_path, monkeypatch):
    _folder(tmp_path)
    first = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}").mean
    assert list((tmp_path / ".zfnet-cache").glob("mean-18-*.npy"))

    def fail(*args, **kwargs):
        raise AssertionError("mean recomputed although cached")

    monkeypatch.setattr(imagefolder, "compute_mean", fail)
    assert torch.equal(load_dataset(f"imagefolder:{tmp_path}?size={SIZE}").mean, first)
    # A changed file list gets a new mean.
    _save(tmp_path / "train/ant/new.png", np.zeros((18, 18, 3), np.uint8))
    with pytest.raises(AssertionError, match="recomputed"):
        load_dataset(f"imagefolder:{tmp_path}?size={SIZE}")


def test_processes_needing_one_mean_at_once_compute_it_once(tmp_path):
    """The ranks of a torchrun on one machine ask for the same uncached mean together: one
    computes it (under a file lock), the others wait and read its file. Threads with their own
    open files contend for the lock exactly as processes do."""
    import threading
    import time

    calls, results = [], []

    def compute() -> torch.Tensor:
        calls.append(1)
        time.sleep(0.3)  # long enough for every other thread to arrive meanwhile
        return torch.full((3, 4, 4), 7.0)

    def rank() -> None:
        results.append(imagefolder.cached_mean(tmp_path, "k", 4, compute))

    threads = [threading.Thread(target=rank) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4
    assert all(torch.equal(r, torch.full((3, 4, 4), 7.0)) for r in results)
    assert [p.suffix for p in sorted((tmp_path / ".zfnet-cache").iterdir())] == [".lock", ".npy"]


def test_read_only_data_caches_in_cache_dir(tmp_path, monkeypatch):
    data_dir, cache = tmp_path / "data", tmp_path / "run"
    _folder(data_dir)
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == ".zfnet-cache":
            raise PermissionError(f"read-only: {self}")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    load_dataset(f"imagefolder:{data_dir}?size={SIZE}", cache_dir=cache)
    assert list(cache.glob("mean-18-*.npy"))
    assert not (data_dir / ".zfnet-cache").exists()


def test_a_cache_dir_given_comes_first_and_the_mean_is_every_users(tmp_path):
    """--data-cache is where the mean goes even where DIR is writable (it was used only where
    DIR was read-only); the file has the umask's mode (0644), not mkstemp's 0600, so a shared
    dataset's cached mean is readable by every user; a mean cached in DIR is still read."""
    import os

    data_dir, cache = tmp_path / "data", tmp_path / "cache"
    _folder(data_dir)
    old = os.umask(0o022)
    try:
        first = load_dataset(f"imagefolder:{data_dir}?size={SIZE}", cache_dir=cache).mean
        (made,) = cache.glob("mean-18-*.npy")
        assert not (data_dir / ".zfnet-cache").exists()
        assert made.stat().st_mode & 0o777 == 0o644
        load_dataset(f"imagefolder:{data_dir}?size={SIZE}")  # no cache dir: DIR's own
        (own,) = (data_dir / ".zfnet-cache").glob("mean-18-*.npy")
        assert own.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    made.unlink()
    again = load_dataset(f"imagefolder:{data_dir}?size={SIZE}", cache_dir=cache).mean
    assert torch.equal(again, first) and not list(cache.glob("mean-18-*.npy"))  # DIR's read


def test_an_outline_lists_the_folder_without_its_mean(tmp_path, monkeypatch):
    """load_dataset(outline=True): classes, sizes and files, no image decoded, nothing cached
    (what zfnet train checks before the mean pass)."""
    _folder(tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("an outline computed the mean")

    monkeypatch.setattr(imagefolder, "compute_mean", fail)
    data = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}", outline=True)
    assert data.outline and data.class_names == ["ant", "cat"]
    assert (data.input_size, len(data.train), len(data.val)) == (SIZE, 4, 2)
    assert not (tmp_path / ".zfnet-cache").exists()
    assert not load_dataset("synthetic?n_train=4&n_val=4&size=32", outline=True).outline
    monkeypatch.undo()
    # made whole from the files it listed (the folder not listed again): the full load's mean
    listed = imagefolder.select_folder
    monkeypatch.setattr(imagefolder, "select_folder", lambda *a, **k: fail())
    whole = data.with_mean_image()
    assert not whole.outline and whole.with_mean_image() is whole
    monkeypatch.setattr(imagefolder, "select_folder", listed)
    full = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}")
    assert torch.equal(whole.mean, full.mean) and whole.mean.abs().sum() > 0
    for a, b in ((whole.train, full.train), (whole.val, full.val)):
        assert torch.equal(a.mean, whole.mean) and a.paths == b.paths
    torch.manual_seed(0)
    x = whole.train[1][0]
    torch.manual_seed(0)
    assert torch.equal(x, full.train[1][0])
    assert data.train.mean.abs().sum() == 0  # the outline itself left as it was


def test_layout_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}.*train/<class>"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'train'}.*ImageNet layout"):
        load_dataset(f"imagefolder:{tmp_path}")
    _save(tmp_path / "train/a/0.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "train/b").mkdir()
    (tmp_path / "train/b/notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"empty class folder.*{tmp_path / 'train' / 'b'}"):
        load_dataset(f"imagefolder:{tmp_path}")
    _save(tmp_path / "train/b/0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'val'}"):
        load_dataset(f"imagefolder:{tmp_path}")
    _save(tmp_path / "val/zebra/0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="zebra.*train classes are: a, b"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_a_shards_folder_given_as_an_image_folder_says_to_give_shards(tmp_path):
    """`zfnet shards`' OUT named as imagefolder:OUT (it said: OUT/train is not a directory)."""
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "train-000000.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} holds shards \(its manifest.json\), "
                                                rf"not an image folder: give shards:{tmp_path}$"):
        load_dataset(f"imagefolder:{tmp_path}?size=64")


def test_a_labelled_test_set_alone_for_a_model_with_its_own_preprocessing(tmp_path):
    """DIR/val/<class>/* without train/: read for a model's preprocessing (its classes val's,
    no training images); for the paper's convention (the training images' mean) or a folder
    of class folders alone, an error that says what to give."""
    from zfnet.data.preprocess import Preprocessing

    _folder(tmp_path / "full")
    (tmp_path / "test").mkdir()
    (tmp_path / "full" / "val").rename(tmp_path / "test" / "val")  # the val split alone
    pre = Preprocessing.imagenet(crop=16, resize=18)
    bundle = load_dataset(f"imagefolder:{tmp_path / 'test'}", preprocessing=pre)
    assert bundle.class_names == ["ant", "cat"] and bundle.num_classes == 2
    assert len(bundle.train) == 0 and len(bundle.val) == 2
    assert bundle.val[0][0].shape == (3, 16, 16) and bundle.val.targets == [0, 1]
    with pytest.raises(FileNotFoundError, match="has val/ but no train/.*own preprocessing"):
        load_dataset(f"imagefolder:{tmp_path / 'test'}")
    # what needs training images says so
    import torchvision

    from zfnet.pipeline import probes

    with pytest.raises(ValueError, match="trained on the training split, and .* has none"):
        probes(torchvision.models.resnet18(), f"imagefolder:{tmp_path / 'test'}", tmp_path,
               preprocessing=pre)
    with pytest.raises(FileNotFoundError, match="holds class folders but no train/ or val/"):
        load_dataset(f"imagefolder:{tmp_path / 'test' / 'val'}", preprocessing=pre)
    # a flat folder of photos: what reads it as it is (it asked for DIR/train)
    flat = tmp_path / "test" / "val" / "ant"
    with pytest.raises(FileNotFoundError, match=rf"^{flat} holds images but no class folders "
                       rf"\(train/, val/\).*images:{flat} \(unlabelled\), or `zfnet predict "):
        load_dataset(f"imagefolder:{flat}", preprocessing=pre)


def test_classes_and_per_class_options(tmp_path):
    _folder(tmp_path)
    data = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}&classes=cat&per_class=1")
    assert data.class_names == ["cat"] and data.num_classes == 1
    assert len(data.train) == 1 and data.train.targets == [0]
    assert len(data.val) == 1


# --- unusual but valid images -> RGB ---


def _unusual(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    files = {}
    files["cmyk"] = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(files["cmyk"])
    files["gray"] = tmp_path / "gray.png"
    Image.fromarray(rgb[..., 0]).save(files["gray"])
    files["gray16"] = tmp_path / "gray16.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(files["gray16"])
    files["palette"] = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"])
    files["rgba"] = tmp_path / "rgba.png"
    rgba = np.dstack([rgb, np.full((20, 30), 255, np.uint8)])
    rgba[0, 0, 3] = 0  # one transparent pixel
    Image.fromarray(rgba, "RGBA").save(files["rgba"])
    return files, rgb


def test_unusual_modes_load_as_rgb(tmp_path):
    files, rgb = _unusual(tmp_path)
    for kind, path in files.items():
        img = load_rgb(path)
        assert img.dtype == torch.uint8 and img.shape == (3, 20, 30), kind
    gray = load_rgb(files["gray"])
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], torch.from_numpy(rgb[..., 0]))
    # 16-bit is scaled to 8 bits, not clipped at 255.
    assert torch.equal(load_rgb(files["gray16"])[0], torch.from_numpy(rgb[..., 0]))
    rgba = load_rgb(files["rgba"])
    assert rgba[:, 0, 0].tolist() == [255, 255, 255]  # transparent -> white background
    assert torch.equal(rgba[:, 1:, :], torch.from_numpy(rgb).permute(2, 0, 1)[:, 1:, :])
    cmyk = load_rgb(files["cmyk"]).float()
    assert (cmyk - torch.from_numpy(rgb).permute(2, 0, 1).float()).abs().mean() < 40


# --- broken files: skipped with a warning naming each, or strict raises naming it ---


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares a huge size (a decompression bomb) without the pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
    data += struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(data)


def _broken(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    good = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = folder / "full.jpg"
    Image.fromarray(good).save(full, quality=95)
    files["truncated"] = folder / "truncated.jpg"
    files["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    files["empty"] = folder / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["text"] = folder / "text.jpg"
    files["text"].write_text("this is not an image\n")
    files["bomb"] = folder / "bomb.png"
    _png_header_only(files["bomb"], 60000, 60000)  # 3.6e9 pixels > MAX_IMAGE_PIXELS
    return files


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "bomb"])
def test_broken_file_raises_naming_it(tmp_path, kind):
    path = _broken(tmp_path)[kind]
    with pytest.raises(BadImageError, match=str(path.name)) as e:
        load_rgb(path)
    assert e.value.path == path


def test_a_phones_108_megapixel_photo_is_read_and_a_bomb_past_pils_limit_is_not(
        tmp_path, monkeypatch):
    """Between MAX_IMAGE_PIXELS and twice it PIL only warns (a 108-megapixel phone photo,
    12000x9000, is there): read, as PIL and torchvision read it; beyond, a bomb."""
    path = tmp_path / "big.jpg"
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 pixels: 1.2 times the limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning printed either
        assert load_rgb(path).shape == (3, 30, 40)
        assert load_rgb(path, min_side=15).shape == (3, 15, 20)  # a JPEG's reduced decode
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(BadImageError, match=r"decompression bomb \(Image size \(1200 pixels\) "
                       r"exceeds limit of 1000 .*\); a photo this large: make it smaller first"):
        load_rgb(path)


def test_broken_files_skipped_with_warning_or_strict(tmp_path):
    _folder(tmp_path)
    bad = _broken(tmp_path / "train" / "ant") | {
        k + "_val": p for k, p in _broken(tmp_path / "val" / "cat").items()
    }
    spec = f"imagefolder:{tmp_path}?size={SIZE}"
    # strict: the mean image computation stops at the first broken training file.
    with pytest.raises(BadImageError, match=str(tmp_path / "train" / "ant")):
        load_dataset(spec, strict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(spec)  # the mean skips the 4 broken training files
        items = [data.train[i] for i in range(len(data.train))]
        val_items = [data.val[i] for i in range(len(data.val))]
    messages = [str(w.message) for w in caught if w.category is BrokenImageWarning]
    for path in bad.values():
        assert str(path) in " ".join(messages)
    # the mean's pass says it is one: an eval reads training files for it too
    assert sum(m.endswith("(while computing the training images' mean image)")
               for m in messages) == 4
    assert sum(x is None for x in items) == 4 and len(items) == 8
    assert sum(x is None for x in val_items) == 4
    x, y = collate(items)
    assert x.shape == (4, 3, SIZE, SIZE) and len(y) == 4
    strict = load_dataset(spec, strict=True)  # mean now cached: strict stops at the item
    with pytest.raises(BadImageError, match=str(tmp_path / "val" / "cat")):
        for i in range(len(strict.val)):
            strict.val[i]


def test_strict_error_from_a_worker_process_names_the_file_on_one_line(tmp_path):
    """A DataLoader worker re-raises the error with its traceback as the message; the error
    still names the file and says why, in one line."""
    _folder(tmp_path)
    bad = tmp_path / "val" / "ant" / "truncated.jpg"
    _broken(tmp_path / "scratch")["truncated"].rename(bad)
    data = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}", strict=True)
    loader = Loader(data.val, batch_size=8, num_workers=1, collate_fn=collate)  # zfnet's
    with pytest.raises(BadImageError) as e:
        next(iter(loader))
    assert e.value.path == bad and e.value.reason.startswith("cannot decode (")
    assert str(e.value) == f"broken image {bad}: {e.value.reason}" and "\n" not in str(e.value)


def test_a_link_to_a_missing_file_is_a_broken_file_like_any_other(tmp_path):
    """Listed and counted with the files, named when it is read, and stopped at with strict:
    it was skipped when the folder was scanned, with --strict too, and left out of every
    count (predict's "not read", eval's broken files, the gallery's "of N files")."""
    _folder(tmp_path)
    (tmp_path / "train" / "ant" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "train" / "ant" / "here.png").symlink_to(tmp_path / "train" / "ant" / "0.png")
    gone = tmp_path / "val" / "ant" / "gone.png"
    gone.symlink_to(tmp_path / "nowhere.png")
    with pytest.warns(BrokenImageWarning, match=r"gone.jpg: a link to .*nowhere.jpg, which "
                                                r"does not exist"):  # the mean image's pass
        data = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}")
    assert len(data.train) == 6 and len(data.val) == 3  # the links counted with the files
    i = data.val.paths.index(gone)
    with pytest.warns(BrokenImageWarning, match=r"gone.png: a link to .*nowhere.png, which "
                                                r"does not exist"):
        assert data.val[i] is None
    strict = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}", strict=True)  # mean cached
    loader = Loader(strict.val, batch_size=8, num_workers=1, collate_fn=collate)
    with pytest.raises(BadImageError) as e:  # from a worker: named on one line
        next(iter(loader))
    assert e.value.path == gone and e.value.reason.startswith("a link to ")
    (tmp_path / ".zfnet-cache").rename(tmp_path / "old-cache")
    with pytest.raises(BadImageError, match="gone.jpg: a link to "):  # the mean's pass
        load_dataset(f"imagefolder:{tmp_path}?size={SIZE}", strict=True)


def test_a_zips_macosx_folder_is_no_class_and_its_files_no_images(tmp_path):
    arrays = _folder(tmp_path)
    for split in ("train", "val"):  # a zip of the class folders made on a Mac, unpacked here
        junk = tmp_path / split / "__MACOSX" / "cat"
        junk.mkdir(parents=True)
        (junk / "._0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    (tmp_path / "train" / "cat" / "__MACOSX").mkdir()
    (tmp_path / "train" / "cat" / "__MACOSX" / "0.png").write_bytes(b"\x00\x05\x16\x07")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing counted as a broken image either
        data = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}")
    assert data.class_names == ["ant", "cat"]
    assert len(data.train) == sum(k.startswith("train/") for k in arrays) == 4


def test_links_to_folders_are_followed_as_torchvision_does_and_loops_once(tmp_path):
    _folder(tmp_path)
    elsewhere = tmp_path / "more_ants"
    _save(elsewhere / "x.png", np.zeros((18, 18, 3), np.uint8))
    (tmp_path / "train" / "ant" / "more").symlink_to(elsewhere)
    (tmp_path / "train" / "ant" / "up").symlink_to(tmp_path / "train")  # holds ant: a loop
    (elsewhere / "back").symlink_to(tmp_path / "train" / "ant")  # a loop through two links
    files = imagefolder.image_files(tmp_path / "train" / "ant")
    rel = [p.relative_to(tmp_path / "train" / "ant").as_posix() for p in files]
    assert rel == ["0.png", "1.png", "more/x.png"]
    data = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}")
    assert len(data.train) == 5 and data.class_names == ["ant", "cat"]


def test_a_macs_decomposed_class_names_are_the_names_typed_elsewhere(tmp_path):
    """A class folder `café` made on a Mac (stored decomposed: `cafe` + U+0301) is the class
    `café` of val/ made elsewhere, of `classes=café` and of a labels file."""
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    black = np.zeros((18, 18, 3), np.uint8)
    for split, name in (("train", decomposed), ("val", composed)):
        for k in range(2 if split == "train" else 1):
            _save(tmp_path / split / name / f"{decomposed} {k}.png", black)
            _save(tmp_path / split / "tea" / f"{k}.png", black)
    data = load_dataset(f"imagefolder:{tmp_path}?size={SIZE}&classes={composed}")
    assert data.class_names == [composed] and len(data.train) == 2 and len(data.val) == 1
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / f"{decomposed}.png").write_bytes(
        (tmp_path / "val" / composed / f"{decomposed} 0.png").read_bytes())
    (tmp_path / "labels.txt").write_text(f"{composed}.png {decomposed}\n")
    from zfnet.data.labels_file import labelled_images

    got = labelled_images(tmp_path / "flat", tmp_path / "labels.txt",
                          imagefolder.image_files(tmp_path / "flat"), [composed, "tea"])
    assert [label for _, label in got] == [0]


def test_one_class_folder_is_refused_for_training_naming_the_classes_a_level_down(tmp_path):
    """A zip unpacked into train/ (train/my_photos/<class>/...) makes one class: training
    would report 0% error and learn nothing. A model with its own preprocessing may still
    score one class folder."""
    for split in ("train", "val"):
        for cls in ("ant", "cat"):
            _save(tmp_path / split / "my_photos" / cls / "0.png", np.zeros((18, 18, 3), np.uint8))
    with pytest.raises(ValueError, match=r"train has one class folder, my_photos: a classifier "
                       r"needs two or more; its folders ant, cat look like the classes: move "
                       r"them up into .*train; expected"):
        load_dataset(f"imagefolder:{tmp_path}?size={SIZE}")
    from zfnet.data import Preprocessing

    data = load_dataset(f"imagefolder:{tmp_path}", preprocessing=Preprocessing.imagenet(crop=16))
    assert data.class_names == ["my_photos"] and len(data.val) == 2


def test_a_web_banner_is_cut_to_a_sane_aspect_before_it_is_resized(monkeypatch):
    """A 2000x1 spacer at 256 px was 512000x256 (1.6 GB at its peak): past 64:1 only the centre
    64 x shorter side of the longer side is resized. A photo (a panorama included) is resized
    whole, torchvision's pixels."""
    from torchvision.transforms.v2 import functional as TF

    import zfnet.data.images as images
    from zfnet.data import Preprocessing

    sizes = []
    real = TF.resize
    monkeypatch.setattr(TF, "resize", lambda img, *a, **k: sizes.append(
        tuple(img.shape[-2:])) or real(img, *a, **k))
    banner = torch.full((3, 1, 2000), 7, dtype=torch.uint8)
    assert torch.equal(images.resize_center_crop(banner, 256), torch.full((3, 256, 256), 7,
                                                                            dtype=torch.uint8))
    tall = Preprocessing(resize=256, crop=224, mean=(0.5,) * 3, std=(0.25,) * 3).fit(
        torch.full((3, 3000, 2), 9, dtype=torch.uint8))
    assert tall.shape == (3, 224, 224) and bool((tall == 9).all())
    assert sizes == [(1, 64), (128, 2)]
    pano = torch.randint(0, 256, (3, 40, 600), dtype=torch.uint8, generator=torch.Generator(
    ).manual_seed(0))  # 15:1
    assert torch.equal(images.resize_center_crop(pano, 32),
                       TF.center_crop(real(pano, [32], antialias=True), [32, 32]))


def test_one_class_folder_named_on_a_mac_is_refused_naming_its_folders(tmp_path):
    """The one class folder's name decomposed (made on a Mac): the error still looks inside it
    (its name compared composed is not the name on disk)."""
    import unicodedata

    cls = unicodedata.normalize("NFD", "café")
    for split in ("train", "val"):
        for sub in ("a", "b"):
            (tmp_path / split / cls / sub).mkdir(parents=True)
            _save(tmp_path / split / cls / sub / "x.jpg", np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="one class folder, café: a classifier needs two or "
                       "more; its folders a, b look like the classes"):
        load_dataset(f"imagefolder:{tmp_path}?size=32")


def test_a_long_mean_image_pass_is_said_with_a_bar(capsys) -> None:
    """The mean image of ImageNet's 1.28M training images takes half an hour on 2 cores before
    the first epoch: a pass of 2000 images or more says what it computes, with a bar (into a
    log: once a minute), where it was silent; a shorter one stays silent."""
    from zfnet.data.imagefolder import LONG_PASS, mean_of

    class Flat(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int):
            return torch.full((3, 4, 4), i % 3, dtype=torch.uint8) if i != 5 else ("x.jpg", "bad")

    for n in (LONG_PASS - 1, LONG_PASS):
        with pytest.warns(BrokenImageWarning, match="x.jpg"):
            mean = mean_of(Flat(n), 4, num_workers=0)
        want = sum(i % 3 for i in range(n) if i != 5) / (n - 1)
        assert torch.allclose(mean, torch.full((3, 4, 4), want))
        err = capsys.readouterr().err
        if n < LONG_PASS:
            assert err == ""
        else:
            assert "the training images' mean image (once, then cached)" in err
            assert f"{n}/{n}" in err and err.count("img/s") <= 2, err


# --------------------------------------------------------------------------- val_split


def _classes(root: Path, sizes: dict[str, int]) -> None:
    """Class folders of `sizes[c]` 18x18 PNGs each, at `root`."""
    rng = np.random.default_rng(1)
    for cls, n in sizes.items():
        for k in range(n):
            _save(root / cls / f"{k:02d}.png", rng.integers(0, 256, (18, 18, 3), dtype=np.uint8))


def _split(bundle) -> tuple[list[str], list[str]]:
    return ([f"{p.parent.name}/{p.name}" for p in bundle.train.paths],
            [f"{p.parent.name}/{p.name}" for p in bundle.val.paths])


def test_val_split_holds_out_a_share_of_each_class_the_same_at_every_run(tmp_path):
    """A folder of class folders (torchvision's ImageFolder, Keras's, fast.ai's layout): a share
    of each class held out, at least one of a class of two or more, never all of it; chosen by
    the files' paths under the folder, so the same wherever the folder lies."""
    import shutil

    _classes(tmp_path / "mine", {"ant": 10, "bee": 3, "cat": 2, "dog": 1})
    data = load_dataset(f"imagefolder:{tmp_path / 'mine'}?size={SIZE}&val_split=0.2")
    assert data.class_names == ["ant", "bee", "cat", "dog"]
    train, val = _split(data)
    held = {c: sum(v.startswith(c) for v in val) for c in data.class_names}
    assert held == {"ant": 2, "bee": 1, "cat": 1, "dog": 0}  # 0.2 x 10; at least one; none of 1
    assert sorted(train + val) == sorted(f"{c}/{k:02d}.png" for c, n in
                                         {"ant": 10, "bee": 3, "cat": 2, "dog": 1}.items()
                                         for k in range(n))
    assert sorted(data.val.targets) == [0, 0, 1, 2]
    assert {v for v in val if v.startswith("ant")} != {"ant/00.png", "ant/01.png"}  # not the first
    # the training images' mean alone (a held-out image is not in it)
    arrays = [np.asarray(Image.open(p)) for p in data.train.paths]
    want = torch.from_numpy(np.mean(np.stack(arrays).astype(np.float64), 0).transpose(2, 0, 1))
    assert torch.allclose(data.mean, want.float(), atol=1e-4)
    shutil.copytree(tmp_path / "mine", tmp_path / "elsewhere" / "copy")
    again = load_dataset(f"imagefolder:{tmp_path / 'elsewhere' / 'copy'}?size={SIZE}&val_split=0.2")
    assert _split(again) == (train, val)
    half = _split(load_dataset(f"imagefolder:{tmp_path / 'mine'}?size={SIZE}&val_split=0.5"))[1]
    assert set(val) < set(half)  # a larger share holds out the same images and more
    # a train/ without val/: its class folders split alike, the other options after it
    shutil.copytree(tmp_path / "mine", tmp_path / "dir" / "train")
    sub = load_dataset(f"imagefolder:{tmp_path / 'dir'}?size={SIZE}&val_split=0.2&classes=bee,ant")
    assert sub.class_names == ["bee", "ant"] and len(sub.val) == 3 and len(sub.train) == 10


def test_val_split_errors_and_the_layout_errors_offer_it(tmp_path):
    _classes(tmp_path / "mine", {"ant": 3, "bee": 3})
    spec = f"imagefolder:{tmp_path / 'mine'}?size={SIZE}"
    with pytest.raises(FileNotFoundError, match=rf"holds class folders but no train/ or val/.*"
                       rf"give {re.escape(spec)}&val_split=0\.2 \(a fifth, the same images "
                       r"at every run\)"):
        load_dataset(spec)
    _classes(tmp_path / "dir" / "train", {"ant": 3, "bee": 3})
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'dir' / 'val'} is not a "
                       r"directory.*share of each class's training images.*val_split=0\.2"):
        load_dataset(f"imagefolder:{tmp_path / 'dir'}")
    for value in ("0", "1", "1.5", "-0.1", "a fifth", "nan"):
        with pytest.raises(ValueError, match=rf"^option val_split={value}|'{value}' must"):
            load_dataset(f"{spec}&val_split={value}")
    _folder(tmp_path / "both")  # train/ and val/: nothing to hold out
    with pytest.raises(ValueError, match=r"has val/ already: val_split holds out images of a "
                       r"folder without one"):
        load_dataset(f"imagefolder:{tmp_path / 'both'}?val_split=0.2")
    _classes(tmp_path / "one", {"ant": 5})
    with pytest.raises(ValueError, match="has one class folder, ant: a classifier needs two"):
        load_dataset(f"imagefolder:{tmp_path / 'one'}?val_split=0.2")
    (tmp_path / "labels.txt").write_text("x ant\n")
    with pytest.raises(ValueError, match="val_labels and val_split"):
        load_dataset(f"{spec}&val_split=0.2&val_labels={tmp_path / 'labels.txt'}")


def test_val_split_takes_any_file_name_and_a_macs_decomposed_one_alike(tmp_path):
    """A name that is no UTF-8 (a file from an old archive) is split, not a UnicodeError; a
    name a Mac stored decomposed is held out as its composed twin is elsewhere."""
    import os
    import unicodedata

    rng = np.random.default_rng(2)
    for root, form in ((tmp_path / "mac", "NFD"), (tmp_path / "linux", "NFC")):
        for cls in ("ant", "bee"):
            for k in range(6):
                _save(root / cls / unicodedata.normalize(form, f"café{k}.png"),
                      rng.integers(0, 256, (18, 18, 3), dtype=np.uint8))
        _save(root / "ant" / os.fsdecode(b"odd\xff.png"),
              rng.integers(0, 256, (18, 18, 3), dtype=np.uint8))
    mac, linux = (load_dataset(f"imagefolder:{tmp_path / r}?size={SIZE}&val_split=0.3")
                  for r in ("mac", "linux"))
    assert len(mac.val) == len(linux.val) == 4  # round(0.3 x 7) + round(0.3 x 6)
    assert [unicodedata.normalize("NFC", str(p.relative_to(tmp_path / "mac")))
            for p in mac.val.paths] == [str(p.relative_to(tmp_path / "linux"))
                                        for p in linux.val.paths]
