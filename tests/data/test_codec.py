"""zfnet.data.codec: TorchCodec's decoder where it loads, torchvision's otherwise; the two give
the same pixels, take a list in one call and fail alike on a broken file."""

from __future__ import annotations

import builtins
import contextlib
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


# --- the device's batches (decode_batch): nvImageCodec, TorchCodec or torchvision ---

def _loads(name: str) -> bool:
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(codec.ENV, name)
            codec.device_decoder("cpu")
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", ["nvimgcodec", "torchcodec", "torchvision"])
def test_every_device_decoder_gives_the_same_pixels_and_none_for_a_broken_file(
        name, monkeypatch) -> None:
    if not _loads(name):
        pytest.skip(f"{name} does not load here (the lower ends' set)")
    monkeypatch.setenv(codec.ENV, name)
    assert codec.device_decoder("cpu") == name
    files = _files()  # a photo, a grey one, 4:4:4, progressive
    good = files[0]
    broken = [good[:len(good) // 2].clone(), torch.tensor([1, 2, 3, 4], dtype=torch.uint8),
              torch.empty(0, dtype=torch.uint8)]
    got = codec.decode_batch([*files, *broken, good], "cpu")  # one call
    assert len(got) == len(files) + len(broken) + 1
    for f, img in zip([*files, good], [*got[:len(files)], got[-1]], strict=True):
        assert img.dtype == torch.uint8 and torch.equal(img, _torchvision(f)), name
    assert got[len(files):-1] == [None] * len(broken)  # each in its place
    assert codec.decode_batch([], "cpu") == []


def test_the_device_decoder_is_chosen_and_checked(monkeypatch) -> None:
    monkeypatch.delenv(codec.ENV, raising=False)
    assert codec.device_decoder("cpu") == codec.decoder_name()  # auto: decode_jpeg's
    if _loads("nvimgcodec"):
        # on CUDA, nvImageCodec where it can make a decoder for the device
        nv = codec._nvimgcodec()
        cuda = torch.cuda.is_available()
        assert codec.device_decoder("cuda") == ("nvimgcodec" if cuda else codec.decoder_name())
        monkeypatch.setenv(codec.ENV, "nvimgcodec")
        if not cuda:
            with pytest.raises(ValueError, match=r"nvImageCodec cannot decode on cuda: it "
                                                 r"decodes on CUDA devices and the CPU"):
                codec.device_decoder("cuda")
        monkeypatch.delenv(codec.ENV)
        monkeypatch.setattr(nv, "failure", lambda device: None)  # as if it could
        assert codec.device_decoder("cuda") == "nvimgcodec"
        assert codec.device_decoder("cpu") == codec.decoder_name()
        monkeypatch.undo()
    monkeypatch.setenv(codec.ENV, " TorchVision ")
    assert codec.device_decoder("cuda") == "torchvision"
    monkeypatch.setenv(codec.ENV, "dali")
    with pytest.raises(ValueError, match=r"ZFNET_DEVICE_DECODER='dali' is not known; valid: "
                                         r"auto, nvimgcodec, torchcodec, torchvision"):
        codec.device_decoder("cpu")
    # a library asked for that does not load: how to install it
    monkeypatch.setattr(codec, "_nvimgcodec", lambda: None)
    monkeypatch.setenv(codec.ENV, "nvimgcodec")
    with pytest.raises(ValueError, match=r"nvImageCodec does not load here: pip install "
                                         r"zfnet\[nvimgcodec\]"):
        codec.device_decoder("cuda")
    monkeypatch.setenv(codec.ENV, "auto")
    assert codec.device_decoder("cuda") == codec.decoder_name()
    monkeypatch.setattr(codec, "decoder_name", lambda: "torchvision")
    monkeypatch.setenv(codec.ENV, "torchcodec")
    with pytest.raises(ValueError, match=r"TorchCodec does not load here: pip install "
                                         r"zfnet\[codec\]"):
        codec.device_decoder("cpu")


def test_nvimgcodec_loads_quietly() -> None:
    # its optional JPEG 2000 and TIFF libraries (not installed) are said to be missing on
    # stderr, by its C code, when it is imported: zfnet's users are not shown that
    script = ("from zfnet.data import codec; import sys; "
              "sys.exit(0 if codec._nvimgcodec() is not None else 3)")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    if r.returncode == 3:
        pytest.skip("nvImageCodec is not installed here")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_nvimgcodec_whose_decoder_decodes_nothing_is_not_taken(monkeypatch) -> None:
    # nvImageCodec makes a decoder even where its nvJPEG then fails (every image refused):
    # it must decode a test image first, else auto passes it over and asking for it says why
    if not _loads("nvimgcodec"):
        pytest.skip("nvImageCodec is not installed here")
    real = codec._nvimgcodec().nv

    class Refusing:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def decode(self, *args, **kwargs):
            return None

    class FakeModule:  # nvImageCodec, its decoder refusing everything
        def __getattr__(self, name):
            return Refusing if name == "Decoder" else getattr(real, name)

    broken = codec._NvImageCodec(FakeModule())
    monkeypatch.setattr(codec, "_nvimgcodec", lambda: broken)
    assert "could not decode a test image" in broken.failure(torch.device("cpu"))
    monkeypatch.setenv(codec.ENV, "nvimgcodec")
    with pytest.raises(ValueError, match="cannot decode on cpu: it could not decode a test image"):
        codec.device_decoder("cpu")
    monkeypatch.delenv(codec.ENV)
    assert codec.device_decoder("cpu") == codec.decoder_name()


def test_threads_that_decode_at_once_each_take_a_decoder_of_the_pool() -> None:
    # nvImageCodec's decoders are not to be shared by threads: calls at once take one each,
    # a call after them takes one back, and every one gives torchvision's pixels
    if not _loads("nvimgcodec"):
        pytest.skip("nvImageCodec is not installed here")
    import threading

    nv = codec._NvImageCodec(codec._nvimgcodec().nv)  # a pool of its own
    cpu = torch.device("cpu")
    assert nv.failure(cpu) is None and nv.made["cpu"] == 1  # the first, which was tried
    files = _files() * 8
    want = [_torchvision(f) for f in files]
    barrier, results, errors = threading.Barrier(3), {}, []
    real = nv._borrowed

    @contextlib.contextmanager
    def together(device):  # each call holds its decoder until all three have one
        with real(device) as decoder:
            barrier.wait(timeout=30)
            yield decoder

    nv._borrowed = together

    def decode(i: int) -> None:
        try:
            results[i] = nv.decode(files, cpu)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and nv.made["cpu"] == 3  # three at once: three decoders
    nv._borrowed = real
    results[3] = nv.decode(files, cpu)
    assert nv.made["cpu"] == 3  # then one of them again
    for got in results.values():
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_the_threads_that_make_the_device_batches(monkeypatch) -> None:
    monkeypatch.delenv(codec.THREADS_ENV, raising=False)
    assert codec.device_threads("cpu") == 0  # the step uses every core: in its thread
    monkeypatch.setattr(codec, "device_decoder", lambda device: "nvimgcodec")
    assert codec.device_threads("cuda") == 2  # its calls overlap
    assert codec.device_threads("cuda", decodes=False) == 1  # windows from the workers
    monkeypatch.setattr(codec, "device_decoder", lambda device: "torchvision")
    assert codec.device_threads("cuda") == 1  # one call at a time in the process
    monkeypatch.setenv(codec.THREADS_ENV, " 3 ")
    assert codec.device_threads("cpu") == 3 and codec.device_threads("cuda") == 3
    monkeypatch.setenv(codec.THREADS_ENV, "0")
    assert codec.device_threads("cuda") == 0
    for bad in ("two", "-1", "1.5"):
        monkeypatch.setenv(codec.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=rf"ZFNET_DEVICE_THREADS='{bad}' is not valid; "
                                             r"valid: auto or a number >= 0"):
            codec.device_threads("cuda")
