"""`images:DIR` (any folder of images, no labels) and `load_images` (files one by one)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from zfnet.data import (
    BadImageError,
    BrokenImageWarning,
    Preprocessing,
    UnreadImagesWarning,
    collate,
    load_dataset,
    load_images,
    load_rgb,
)
from zfnet.data.imagedir import UNLABELLED

PREP = Preprocessing.imagenet(crop=24)  # 27 px shorter side, 24 px crops


def _save(path, shape=(30, 41, 3), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(a).save(path)  # (H, W): grey
    return path


@pytest.fixture
def folder(tmp_path):
    """b.png, a.jpg, sub/c.png, plus files that are not images or are hidden."""
    root = tmp_path / "photos"
    _save(root / "b.png", seed=1)
    _save(root / "a.jpg", seed=2)
    _save(root / "sub" / "c.png", (20, 20), seed=3)  # grey
    (root / "notes.txt").write_text("not an image")
    _save(root / ".hidden" / "d.png", seed=4)
    _save(root / ".e.png", seed=5)
    return root


def test_every_image_sorted_no_labels(folder):
    data = load_dataset(f"images:{folder}", preprocessing=PREP)
    assert [p.relative_to(folder).as_posix() for p in data.val.paths] == [
        "a.jpg", "b.png", "sub/c.png"]
    assert data.train.paths == data.val.paths  # train = val = all
    assert (data.num_classes, data.class_names) == (0, [])
    assert data.val.targets == [UNLABELLED] * 3 == [-1] * 3
    assert (data.in_channels, data.input_size, data.full_size) == (3, 24, 27)
    for i, path in enumerate(data.val.paths):
        x, y = data.val[i]
        assert y == -1
        assert torch.equal(x, PREP.to_input(load_rgb(path)))
    grey = data.raw_val(2)  # the grey file as RGB
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert load_dataset(f"images:{folder}?n=2", preprocessing=PREP).val.paths == \
        data.val.paths[:2]
    x, y = collate([data.train[0], data.train[1]])
    assert x.shape == (2, 3, 24, 24) and y.tolist() == [-1, -1]


def test_a_link_to_a_folder_of_the_tree_lists_its_images_once(folder):
    """photos/best -> photos/sub: c.png is one photo, not two (a top 9 showed it twice);
    a link to a folder outside the tree is followed as before."""
    (folder / "best").symlink_to(folder / "sub")
    _save(folder.parent / "elsewhere" / "z.png", seed=6)
    (folder / "more").symlink_to(folder.parent / "elsewhere")
    data = load_dataset(f"images:{folder}", preprocessing=PREP)
    assert [p.relative_to(folder).as_posix() for p in data.val.paths] == [
        "a.jpg", "b.png", "more/z.png", "sub/c.png"]  # sub/c.png reached first as best/c.png
    assert len(data.train) == 4


def test_a_photo_hard_linked_into_two_albums_is_listed_once(folder):
    """album/c.png a hard link of sub/c.png (as some photo managers make): one photo, kept
    under the first path; a copy of the same bytes is another file, and stays."""
    import os
    import shutil

    (folder / "album").mkdir()
    os.link(folder / "sub" / "c.png", folder / "album" / "c.png")
    shutil.copy(folder / "b.png", folder / "album" / "b_copy.png")
    data = load_dataset(f"images:{folder}", preprocessing=PREP)
    assert [p.relative_to(folder).as_posix() for p in data.val.paths] == [
        "a.jpg", "album/b_copy.png", "album/c.png", "b.png"]


def test_a_folder_given_through_a_link_keeps_each_photo_by_its_own_path(folder, tmp_path):
    """DIR reached through a link (a cluster's /home -> /gpfs/home, a Mac's /tmp): a photo
    reached twice is still kept by its own path, not by the link's (a_best/c.png sorts first)."""
    (folder / "a_best").symlink_to(folder / "sub")
    (tmp_path / "home").symlink_to(folder)
    data = load_dataset(f"images:{tmp_path / 'home'}", preprocessing=PREP)
    assert [p.relative_to(tmp_path / "home").as_posix() for p in data.val.paths] == [
        "a.jpg", "b.png", "sub/c.png"]


def test_without_a_model_the_papers_pipeline(folder):
    """No preprocessing: 256/224-style crops (`size=`) minus the folder's mean image, cached."""
    data = load_dataset(f"images:{folder}?size=16")
    assert (data.input_size, data.full_size, data.preprocessing) == (16, 18, None)
    assert data.mean.shape == (3, 18, 18)
    assert (folder / ".zfnet-cache").is_dir()
    x, _ = data.val[0]
    torch.testing.assert_close(x, data.raw_val(0).float() - data.mean[:, 1:17, 1:17])
    with pytest.raises(ValueError, match="size=16 .*--crop/--resize"):
        load_dataset(f"images:{folder}?size=16", preprocessing=PREP)
    with pytest.raises(ValueError, match="unknown option.*colour.*valid: n, size"):
        load_dataset(f"images:{folder}?colour=1")


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty holds no image files"):
        load_dataset(f"images:{tmp_path / 'empty'}", preprocessing=PREP)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_dataset(f"images:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_dataset(f"images:{tmp_path / 'empty' / 'readme.txt'}")
    with pytest.raises(ValueError, match="images needs a directory"):
        load_dataset("images")


def test_a_phones_photos_are_read_and_raw_files_counted_not_silently_left_out(folder):
    """images:DIR reads GIF (its first frame), AVIF and, with pillow-heif (`zfnet[heif]`), a
    phone's HEIC, each as PIL decodes it; camera RAW files are left out with one warning that
    counts them; a folder of nothing else says so before it is refused."""
    from PIL import features

    from zfnet.data.images import HEIF_READ

    photos = {"e.gif": "GIF", "sub/f.HEIC": "HEIF" if HEIF_READ else None,
              "g.avif": "AVIF" if features.check("avif") else None}
    for name, fmt in photos.items():
        if fmt is not None:
            (folder / name).parent.mkdir(exist_ok=True)
            Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / name, fmt)
    (folder / "h.dng").write_bytes(b"II*\x00 raw")
    with pytest.warns(UnreadImagesWarning, match=r"photos holds 1 image file\(s\) of types not "
                      r"read here \(.dng: 1\), left out; convert them to JPEG or PNG"):
        data = load_dataset(f"images:{folder}", preprocessing=PREP)
    read = [p.name for p in data.val.paths]
    assert read == sorted(read, key=lambda n: str(next(folder.rglob(n)))) and len(read) == 3 + sum(
        fmt is not None for fmt in photos.values())
    for i, p in enumerate(data.val.paths):
        if p.suffix.lower() in (".gif", ".heic", ".avif"):  # decoded: red, not skipped
            assert data.val.raw(i)[0].float().mean() > 190 > data.val.raw(i)[1].float().mean()
    only = folder.parent / "camera"
    only.mkdir()
    (only / "g.cr2").write_bytes(b"II*\x00 raw")
    with pytest.warns(UnreadImagesWarning, match=r"\.cr2: 1"), \
            pytest.raises(ValueError, match="camera holds no image files"):
        load_dataset(f"images:{only}", preprocessing=PREP)
    plain = folder.parent / "plain"
    _save(plain / "a.jpg")
    (plain / "notes.txt").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # other files (notes.txt) are not images: no warning
        load_dataset(f"images:{plain}", preprocessing=PREP)


def test_a_labelled_folder_reads_torchvisions_types_and_says_where_gifs_are_read(tmp_path):
    """imagefolder:DIR keeps torchvision ImageFolder's samples: a GIF there is counted, with
    the advice that images:DIR reads it."""
    for split in ("train", "val"):
        _save(tmp_path / split / "ant" / "a.jpg")
        _save(tmp_path / split / "cat" / "a.jpg")
        Image.new("RGB", (40, 30)).save(tmp_path / split / "cat" / "b.gif")
    with pytest.warns(UnreadImagesWarning, match=r"\(.gif: 1\), left out; images:DIR and files "
                      r"named one by one read them; convert them to JPEG or PNG for a labelled"):
        data = load_dataset(f"imagefolder:{tmp_path}?size=24")
    assert [p.as_posix().split("/")[-2:] for p in data.val.paths] == [["ant", "a.jpg"],
                                                                        ["cat", "a.jpg"]]


def test_heic_without_pillow_heif_says_how_to_read_it(monkeypatch) -> None:
    from zfnet.data import images

    heic = images.PHOTO_EXTENSIONS + (".heic", ".heif")
    monkeypatch.setattr(images, "PHOTO_EXTENSIONS", heic)
    monkeypatch.setattr(images, "HEIF_READ", True)
    assert images.unread_advice({".heic"}, images.IMAGE_EXTENSIONS).startswith(
        "images:DIR and files named one by one read them")
    monkeypatch.setattr(images, "PHOTO_EXTENSIONS", tuple(e for e in heic if "hei" not in e))
    monkeypatch.setattr(images, "HEIF_READ", False)
    assert images.unread_advice({".heic", ".dng"}, images.PHOTO_EXTENSIONS) == (
        "convert them to JPEG or PNG to use them (HEIC once `pip install 'zfnet[heif]'` is done)")


def test_broken_files_skipped_or_strict(folder):
    (folder / "z_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    data = load_dataset(f"images:{folder}", preprocessing=PREP)
    with pytest.warns(BrokenImageWarning, match="z_broken.jpg"):
        assert data.val[3] is None
    with pytest.raises(BadImageError, match="z_broken.jpg"):
        load_dataset(f"images:{folder}", preprocessing=PREP, strict=True).val[3]


def test_load_images_files_folder_or_spec(folder, tmp_path):
    a, b = folder / "a.jpg", folder / "b.png"
    one = load_images(str(b), PREP)
    assert len(one) == 1 and one.mode == "centre"
    x, y = one[0]
    assert y == -1 and torch.equal(x, PREP.to_input(load_rgb(b)))
    assert torch.equal(one.raw(0), PREP.fit(load_rgb(b)))
    two = load_images([b, a], PREP)  # the order given
    assert two.paths == [b, a]
    assert len(load_images(folder, PREP)) == 3
    assert len(load_images(f"images:{folder}", PREP)) == 3
    synthetic = load_images("synthetic?n_train=2&n_val=3&size=32", PREP)
    assert len(synthetic) == 3 and synthetic[0][0].shape == (3, 24, 24)
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        load_images([a, tmp_path / "missing.png"], PREP)
    with pytest.raises(FileNotFoundError, match="synthetc does not exist"):
        load_images("synthetc", PREP)
    with pytest.raises(FileNotFoundError, match="^image https://example.com/cat.jpg is a web "
                       "address; zfnet reads image files on this computer: download it, "):
        load_images("https://example.com/cat.jpg", PREP)
    with pytest.raises(ValueError, match="no image given"):
        load_images([], PREP)
    not_image = tmp_path / "notes.png"
    not_image.write_text("text")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BrokenImageWarning, match="notes.png"):
            load_images(not_image, PREP)[0]


def test_a_large_jpeg_gives_the_pixels_of_torchvisions_transforms(tmp_path):
    """A model's preprocessing decodes a JPEG at full scale: a photo at least twice the resize
    (which the paper's pipeline decodes at a reduced DCT scale) becomes the input that
    torchvision's Resize + CenterCrop make of it, up to the rounding of two resamplers."""
    import torchvision.transforms.v2 as T
    from skimage import data as photos

    path = tmp_path / "astronaut.jpg"
    Image.fromarray(photos.astronaut()).save(path, quality=90)  # 512 x 512: 2x the resize
    prep = Preprocessing.imagenet(crop=128, resize=256)
    got = load_images(path, prep).raw(0).int()  # (3, 128, 128)
    with Image.open(path) as img:
        want = T.Compose([T.PILToTensor(), T.Resize(256, antialias=True),
                          T.CenterCrop(128)])(img.convert("RGB")).int()
    diff = (got - want).abs()
    assert diff.max() <= 2 and diff.float().mean() < 0.5


def test_messages_call_a_folders_images_its_images(tmp_path) -> None:
    """A folder of photos has no splits: messages about the images the analyses take say "the
    images of 'images:DIR'", a labelled dataset's "the val split of ..."."""
    from types import SimpleNamespace

    from zfnet.data.bundle import val_words

    _save(tmp_path / "a.png")
    bundle = load_dataset(f"images:{tmp_path}")
    assert val_words(bundle) == f"the images of 'images:{tmp_path}'"
    labelled = SimpleNamespace(spec="synthetic", num_classes=10)
    assert val_words(labelled) == "the val split of 'synthetic'"


def test_jpegs_saved_from_the_web_as_jfif_are_read_not_silently_left_out(tmp_path):
    """A browser saves many JPEGs as `.jfif` (`.jpe`: an older name): images:DIR reads them; a
    labelled folder (torchvision's types) counts them and says to rename them."""
    _save(tmp_path / "web" / "a.jfif")
    _save(tmp_path / "web" / "b.JPE")
    data = load_dataset(f"images:{tmp_path / 'web'}", preprocessing=PREP)
    assert [p.name for p in data.val.paths] == ["a.jfif", "b.JPE"]
    assert data.val.raw(0).shape == data.val.raw(1).shape == (3, PREP.crop, PREP.crop)
    for split in ("train", "val"):
        _save(tmp_path / "set" / split / "ant" / "a.jpg")
        _save(tmp_path / "set" / split / "cat" / "a.jpg")
        _save(tmp_path / "set" / split / "cat" / "b.jfif")
    with pytest.warns(UnreadImagesWarning, match=r"\(.jfif: 1\), left out; images:DIR and files "
                      r"named one by one read them; they are JPEGs: rename them .jpg"):
        load_dataset(f"imagefolder:{tmp_path / 'set'}?size=24")
