"""zfnet.data.codec: TorchCodec's decoder where it loads, torchvision's otherwise; the two give
the same pixels, take a list in one call and fail alike on a broken file."""

from __future__ import annotations

import builtins
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from zfnet.data import codec


def _jpeg(arr: np.ndarray, **kw) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _files() -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    photo = (rng.random((75, 100, 3)) * 255).astype(np.uint8)
    grey = (rng.random((40, 30)) * 255).astype(np.uint8)
    return [_jpeg(photo, quality=90), _jpeg(grey, quality=75),
            _jpeg(photo, quality=95, subsampling=0), _jpeg(photo, progressive=True)]


def _torchvision(data):
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated since 0.29
        return decode_jpeg(data, mode=ImageReadMode.RGB)


def test_decodes_as_torchvision_did_one_file_or_a_list() -> None:
    files = _files()
    one = [codec.decode_jpeg(f) for f in files]
    many = codec.decode_jpeg(files, "cpu")
    for f, a, b in zip(files, one, many, strict=True):
        want = _torchvision(f)  # what zfnet decoded with before: the same pixels
        assert a.dtype == torch.uint8 and a.shape[0] == 3 and torch.equal(a, want)
        assert torch.equal(b, want)
    pil = np.array(Image.open(io.BytesIO(files[0].numpy().tobytes())).convert("RGB"))
    assert torch.equal(one[0].permute(1, 2, 0), torch.from_numpy(pil))  # libjpeg-turbo both


@pytest.mark.parametrize("name", ["truncated", "not a JPEG", "empty"])
def test_a_broken_file_is_a_runtime_error(name) -> None:
    good = _files()[0]
    data = {"truncated": good[:len(good) // 2].clone(),
            "not a JPEG": torch.tensor([1, 2, 3, 4], dtype=torch.uint8),
            "empty": torch.empty(0, dtype=torch.uint8)}[name]
    with pytest.raises(RuntimeError):
        codec.decode_jpeg(data)
    with pytest.raises(RuntimeError):  # and in a list: the batch fails (the loader then
        codec.decode_jpeg([good, data])  # decodes one by one to find it)


def test_torchcodec_where_it_loads_else_torchvision(monkeypatch) -> None:
    try:
        import torchcodec.decoders  # noqa: F401
        want = "torchcodec"
    except Exception:  # noqa: BLE001 (not installed: the lower ends' set)
        want = "torchvision"
    assert codec.decoder_name() == want
    real_import = builtins.__import__

    def no_torchcodec(name, *args, **kwargs):
        if name.startswith("torchcodec"):
            raise OSError("libtorchcodec_image.so: undefined symbol")  # built for another torch
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchcodec)
    codec._decoder.cache_clear()
    try:
        assert codec.decoder_name() == "torchvision"
        f = _files()[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert torch.equal(codec.decode_jpeg(f), _torchvision(f))
    finally:
        monkeypatch.undo()
        codec._decoder.cache_clear()
    assert codec.decoder_name() == want
