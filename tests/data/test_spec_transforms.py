"""Spec parsing and errors, the paper's crops (Sec. 3), collate, subsets."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from zfnet.data import collate, load_dataset, parse_spec, ten_crop
from zfnet.data.subset import select
from zfnet.data.transforms import TensorImages, centre_crop


def test_parse_spec_parts():
    s = parse_spec("fashion-mnist:/some/dir?n_train=10&classes=0,2")
    assert (s.name, s.path, s.options) == ("fashion-mnist", "/some/dir", {"n_train": "10",
                                                                       "classes": "0,2"})
    assert parse_spec("synthetic") == parse_spec("synthetic?")
    assert parse_spec("imagefolder:C:/x").path == "C:/x"  # only the first ':' splits


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "empty dataset spec"),
        ("synthetic?n_train", "not key=value"),
        ("synthetic?seed=1&seed=2", "given twice"),
        ("fashion-mnist:", "no path"),
    ],
)
def test_parse_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(spec)


def test_a_folder_whose_name_holds_a_question_mark_is_told_so(tmp_path):
    """'?' starts a spec's options: a folder named 'what?now' is told to be renamed, not only
    that 'now' is not key=value."""
    (tmp_path / "what?now").mkdir()
    with pytest.raises(ValueError, match=r"is not key=value .*; '\?' starts the options: the "
                       rf"folder {tmp_path}/what\?now needs a name without '\?'"):
        parse_spec(f"imagefolder:{tmp_path}/what?now")
    with pytest.raises(ValueError, match=r"key=value \(e.g. synthetic\?n_train=4000&seed=1\)$"):
        parse_spec(f"imagefolder:{tmp_path}/nothing?now")  # no such folder: no hint


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as e:
        load_dataset("mnist")
    for name in ("synthetic", "fashion-mnist", "imagefolder", "random_labels=SEED"):
        assert name in str(e.value)
    assert "is a folder" not in str(e.value) and "did you mean" not in str(e.value)
    with pytest.raises(ValueError, match="^unknown dataset 'imgfolder' in spec 'imgfolder:x'; "
                       "did you mean imagefolder[?] valid: synthetic, fashion-mnist, "
                       "imagefolder, images, sample-photos, shards$"):  # the names alone
        load_dataset("imgfolder:x")


def test_a_bare_folder_is_told_the_spec_that_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "labelled" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="; photos is a folder: images:photos reads every "
                       "image in it; valid: ") as e:
        load_dataset("photos")
    assert "did you mean" not in str(e.value)  # not the built-in sample-photos: the folder
    with pytest.raises(ValueError, match="; labelled is a folder: imagefolder:labelled reads "
                       "its train/ and val/ classes; valid: "):
        load_dataset("labelled")


def test_an_image_file_is_told_that_a_dataset_is_a_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="; photos/cat.jpg is a file, and a dataset is a "
                       "folder: images:photos reads every image in photos [(]`zfnet project "
                       "FILE` takes single images[)]; valid: "):
        load_dataset("photos/cat.jpg")


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown option.*n_trian.*valid: .*n_train"):
        load_dataset("synthetic?n_trian=10")
    with pytest.raises(ValueError, match="must be an integer"):
        load_dataset("synthetic?n_train=many")
    with pytest.raises(ValueError, match="unknown class 'dog'.*face"):
        load_dataset("synthetic?classes=face,dog")
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset("synthetic:/tmp")


def test_ten_crop_matches_torchvision():
    img = torch.arange(3 * 9 * 11, dtype=torch.float32).reshape(3, 9, 11)
    ours = ten_crop(img, 5)  # (10, 3, 5, 5)
    theirs = torch.stack(TF.ten_crop(img, [5, 5]))
    assert ours.shape == (10, 3, 5, 5)
    assert torch.equal(ours, theirs)
    # The first five are corners and centre, the last five the same crops of the mirror image.
    assert torch.equal(ours[0], img[:, :5, :5])
    assert torch.equal(ours[3], img[:, -5:, -5:])
    assert torch.equal(ours[4], TF.center_crop(img, [5, 5]))
    assert torch.equal(ours[5], img.flip(-1)[:, :5, :5])
    assert torch.equal(ours[9], TF.center_crop(img, [5, 5]).flip(-1))


def test_centre_crop_matches_torchvision():
    img = torch.randn(2, 10, 10)
    for s in (3, 4, 7):
        assert torch.equal(centre_crop(img, s), TF.center_crop(img, [s, s]))


def _toy(mode: str) -> TensorImages:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean = images.float().mean(0)
    return TensorImages(images, [0, 1, 2, 3], mean=mean, input_size=6, mode=mode,
                        classes=["a", "b", "c", "d"])


def test_modes_subtract_matching_mean_crop():
    ds = _toy("centre")
    x, y = ds[1]
    assert x.shape == (3, 6, 6) and y == 1
    assert torch.allclose(x, centre_crop(ds.images[1].float() - ds.mean, 6))
    assert torch.equal(ds.raw(1), centre_crop(ds.images[1], 6))
    x10, _ = ds.with_mode("ten_crop")[1]
    assert torch.allclose(x10, ten_crop(ds.images[1].float() - ds.mean, 6))
    # Every random training crop is one of the 3x3 positions, maybe flipped, of (image - mean).
    torch.manual_seed(0)
    full = ds.images[2].float() - ds.mean
    windows = [full[:, t : t + 6, s : s + 6] for t in range(3) for s in range(3)]
    windows += [w.flip(-1) for w in windows]
    for _ in range(10):
        xt, _ = ds.with_mode("train")[2]
        assert any(torch.equal(xt, w) for w in windows)
    with pytest.raises(ValueError, match="mode='bad'.*train"):
        ds.with_mode("bad")


def test_collate_drops_none():
    ds = _toy("centre")
    x, y = collate([ds[0], None, ds[2]])
    assert x.shape == (2, 3, 6, 6) and y.tolist() == [0, 2]
    x, y = collate([None, None])
    assert x.numel() == 0 and y.numel() == 0


def test_select_subsets():
    targets = [0, 1, 2, 0, 1, 2, 0, 1, 2]
    idx, labels = select(targets, classes=[2, 0])
    assert idx == [0, 2, 3, 5, 6, 8] and labels == [1, 0, 1, 0, 1, 0]
    idx, labels = select(targets, per_class=2)
    assert idx == [0, 1, 2, 3, 4, 5]
    idx, _ = select([0, 0, 0, 1, 1, 1], first=4, round_robin=True)
    assert idx == [0, 3, 1, 4]
