"""ILSVRC-2012's files in their real layouts, made small, for the tests that read them: the
devkit (`ILSVRC2012_devkit_t12/data/meta.mat` and the validation ground truth) and the two image
archives as image-net.org serves them."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

DEVKIT = "ILSVRC2012_devkit_t12"
FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "wordnet_height",
          "num_train_images")


def write_devkit(root: Path, ids: dict[str, int], truth: list[str],
                 words: dict[str, str] | None = None) -> Path:
    """`root/ILSVRC2012_devkit_t12`: meta.mat's synsets (`ids`: WNID -> ILSVRC2012 ID, in any
    order, with `words` or "words"; and a synset with children, which is no class) and the
    ground truth of the val images 1, 2, ... (`truth`: the WNID of each)."""
    data = root / DEVKIT / "data"
    data.mkdir(parents=True)
    words = words or {}
    synsets = np.array([(i, w, words.get(w, "words"), "gloss", 0, 0, 2) for w, i in ids.items()]
                       + [(max(ids.values()) + 1, "n00000001", "parent", "gloss", 2, 1, 0)],
                       dtype=[(f, object) for f in FIELDS]).reshape(-1, 1)
    savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{ids[w]}\n" for w in truth))
    return root / DEVKIT


def _jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def photo_crops(photo: np.ndarray, n: int, size: tuple[int, int] = (500, 375)) -> list[bytes]:
    """`n` JPEGs of `photo` (H, W, 3): crops of 3/4 of it at other places, resized to `size`
    (W, H; ImageNet's photos are mostly 500x375 or so, in landscape)."""
    h, w = photo.shape[:2]
    ch, cw = h * 3 // 4, w * 3 // 4
    out = []
    for i in range(n):
        y, x = (h - ch) * (i % 3) // 2, (w - cw) * (i * 2 % 5) // 4
        out.append(_jpeg(np.asarray(Image.fromarray(photo[y:y + ch, x:x + cw]).resize(size))))
    return out


def write_archives(root: Path, photos: dict[str, np.ndarray], n_train: int, n_val: int,
                   words: dict[str, str]) -> dict[str, list[str]]:
    """image-net.org's three files in `root`: ILSVRC2012_img_train.tar (one `WNID.tar` a class,
    of `WNID_NUMBER.JPEG` photos), ILSVRC2012_img_val.tar (`ILSVRC2012_val_0000000K.JPEG`, the
    classes taken in turn) and ILSVRC2012_devkit_t12.tar.gz. `photos`: each class's WNID and
    the photo its images are cut from. Returns each class's val file names."""
    wnids = sorted(photos)
    crops = {w: photo_crops(photos[w], n_train + n_val) for w in wnids}
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as train:
        for w in wnids:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for i, jpeg in enumerate(crops[w][:n_train]):
                    _add(t, f"{w}_{10026 + 7 * i}.JPEG", jpeg)
            _add(train, f"{w}.tar", inner.getvalue())
    truth, val = [], {w: [] for w in wnids}
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(n_val * len(wnids)):
            w = wnids[i % len(wnids)]
            name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
            _add(tar, name, crops[w][n_train + i // len(wnids)])
            truth.append(w)
            val[w].append(name)
    # the IDs are not in WNID order (ImageNet's are not)
    devkit = write_devkit(root / ".devkit", {w: len(wnids) - k for k, w in enumerate(wnids)},
                          truth, words)
    with tarfile.open(root / f"{DEVKIT}.tar.gz", "w:gz") as tar:
        tar.add(devkit, arcname=DEVKIT)
    shutil.rmtree(devkit.parent)
    return val
