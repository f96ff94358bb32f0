"""JPEG decoding into tensors for the loaders, on the CPU (libjpeg-turbo) or a CUDA device
(nvJPEG).

Two calls:

- `decode_jpeg`, a file or a list of files (the workers, and every file decoded one at a
  time): TorchCodec's `decode_jpeg` where it is installed and loads, torchvision's otherwise.
  torchvision deprecated its image decoders in 0.29, in favour of TorchCodec's (0.16 on),
  which need torch 2.11 or newer; zfnet supports torch from 2.9 (`pip install zfnet[codec]`
  adds TorchCodec). The two take the same input (a 1-D uint8 tensor of a file's bytes, or a
  list of them), give the same (3, H, W) uint8 RGB tensors, pixel for pixel on the CPU
  (tests/data/test_codec.py compares them where both are installed), and raise RuntimeError
  for data they cannot decode. A TorchCodec that is installed but does not load (built for
  another torch) is passed over for torchvision's.
- `decode_batch`, the gpu and mixed loaders' one call per batch on the device: a list of
  files in, a list of images out, None for each file the library could not decode (the
  loader then gives it to PIL on the host). The library is `ZFNET_DEVICE_DECODER`'s:
  `auto` (the default) takes NVIDIA's nvImageCodec where it is installed
  (`pip install zfnet[nvimgcodec]`: its hardware decoder and a pool of threads that parse
  and decode the batch's files side by side, where torchvision's and TorchCodec's CUDA
  decoders are one instance per process behind a lock), `decode_jpeg`'s library otherwise;
  `nvimgcodec`, `torchcodec` or `torchvision` ask for that one (a ValueError, checked when a
  loader is made, where it does not load). On the CPU every one of them is libjpeg-turbo
  with the same pixels (tested), which is how the tests prove the loaders with each.

`device_threads`: how many threads of the training process make the device's batches
(`ZFNET_DEVICE_THREADS`, `zfnet.data.batches.DeviceBatches`). One thread was the gpu loader's
limit on an H200 (docs/results.md); a second one overlaps one batch's decoding with the next
one's. nvImageCodec's decoders are not to be shared by threads: each call takes one of a
pool of decoders of the device, made as calls need them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from zfnet.data.workers import usable_cores

Encoded = torch.Tensor | list[torch.Tensor]

ENV = "ZFNET_DEVICE_DECODER"
LIBRARIES = ("auto", "nvimgcodec", "torchcodec", "torchvision")
THREADS_ENV = "ZFNET_DEVICE_THREADS"
THREADS = "auto or a number >= 0"
_INSTALL = {"nvimgcodec": "pip install zfnet[nvimgcodec] (nvidia-nvimgcodec-cu13[nvjpeg]; "
                          "-cu12 for a torch built with CUDA 12)",
            "torchcodec": "pip install zfnet[codec] (TorchCodec needs torch >= 2.11)"}


@functools.cache
def _decoder() -> tuple[str, Callable[..., Any]]:
    """`decode_jpeg`'s library: (name, decode(data, device))."""
    try:
        from torchcodec.decoders import decode_jpeg as codec_decode
    except Exception:  # noqa: BLE001 (not installed, or built for another torch)
        return "torchvision", _torchvision

    def codec(data: Encoded, device: torch.device) -> Any:
        return codec_decode(data, mode="RGB", device=device)

    return "torchcodec", codec


def _torchvision(data: Encoded, device: torch.device) -> Any:
    """torchvision's `decode_jpeg` (deprecated since 0.29: where TorchCodec does not load)."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as vision_decode

    return vision_decode(data, mode=ImageReadMode.RGB, device=device)


def decoder_name() -> str:
    """Which library `decode_jpeg` uses: "torchcodec" or "torchvision"."""
    return _decoder()[0]


def decode_jpeg(data: Encoded, device: torch.device | str = "cpu") -> Any:
    """JPEG file(s) `data` (1-D uint8 tensors on the CPU) decoded to RGB on `device`: (3, H, W)
    uint8, or a list of them for a list (one call). RuntimeError when one cannot be decoded."""
    return _decoder()[1](data, torch.device(device))


# --- the device's batches ---

def device_decoder(device: torch.device | str) -> str:
    """The library `decode_batch` uses on `device` ("nvimgcodec", "torchcodec" or
    "torchvision"), as `ZFNET_DEVICE_DECODER` asks; ValueError, naming what is valid or how to
    install it, for a value that is not known or a library that does not load."""
    asked = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if asked not in LIBRARIES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r} is not known; valid: "
                         f"{', '.join(LIBRARIES)}")
    device = torch.device(device)
    if asked == "auto":
        nv = _nvimgcodec() if device.type == "cuda" else None
        return "nvimgcodec" if nv is not None and nv.failure(device) is None else decoder_name()
    nv = _nvimgcodec() if asked == "nvimgcodec" else None
    if asked == "nvimgcodec" and nv is None:
        raise ValueError(f"{ENV}=nvimgcodec, but nvImageCodec does not load here: "
                         f"{_INSTALL['nvimgcodec']}")
    if asked == "nvimgcodec" and (why := nv.failure(device)) is not None:
        raise ValueError(f"{ENV}=nvimgcodec, but nvImageCodec cannot decode on {device}: "
                         f"{why}")
    if asked == "torchcodec" and decoder_name() != "torchcodec":
        raise ValueError(f"{ENV}=torchcodec, but TorchCodec does not load here: "
                         f"{_INSTALL['torchcodec']}")
    return asked


def device_threads(device: torch.device | str, *, decodes: bool = True) -> int:
    """How many threads make the device's batches from the workers' (`ZFNET_DEVICE_THREADS`;
    `decodes`: the batches are files the device decodes): 0 makes them in the training loop's
    own thread, between steps. `auto` (the default): on a CUDA device 2 where nvImageCodec
    decodes (its calls overlap), else 1 (torchvision's and TorchCodec's CUDA decoders take
    one call at a time; windows decoded by the workers need little more than a copy); on the
    CPU 0 (the step uses every core). ValueError naming what is valid for another value."""
    asked = _asked_threads()
    if asked is not None:
        return asked
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    return 2 if decodes and device_decoder(device) == "nvimgcodec" else 1


def _asked_threads() -> int | None:
    """`ZFNET_DEVICE_THREADS` as a number, None for auto; ValueError for another value."""
    value = os.environ.get(THREADS_ENV, "auto").strip().lower() or "auto"
    if value == "auto":
        return None
    if not value.isdigit():
        raise ValueError(f"{THREADS_ENV}={os.environ[THREADS_ENV]!r} is not valid; valid: "
                         f"{THREADS}")
    return int(value)


def decode_batch(files: Sequence[torch.Tensor], device: torch.device | str
                 ) -> list[torch.Tensor | None]:
    """JPEG files (1-D uint8 tensors on the CPU) decoded on `device` by `device_decoder`'s
    library: (3, H, W) uint8 RGB images, None for each one it could not decode."""
    device = torch.device(device)
    if not files:
        return []
    name = device_decoder(device)
    if name == "nvimgcodec":
        return _nvimgcodec().decode(list(files), device)  # type: ignore[union-attr]
    decode = _library(name)
    try:
        return list(decode(list(files), device))  # one call
    except RuntimeError:
        pass  # one of them at least: find it
    out: list[torch.Tensor | None] = []
    for data in files:
        try:
            out.append(decode(data, device))
        except RuntimeError:
            out.append(None)
    return out


def _library(name: str) -> Callable[[Encoded, torch.device], Any]:
    """decode(data, device) of TorchCodec or torchvision."""
    return _decoder()[1] if name == decoder_name() else _torchvision


@functools.cache
def _nvimgcodec() -> _NvImageCodec | None:
    """nvImageCodec's decoders, or None where it is not installed or does not load."""
    # its errors and warnings would repeat each broken file zfnet names itself
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")
    try:
        with _quiet_stderr():  # its optional JPEG 2000 and TIFF libraries, said to be missing
            from nvidia import nvimgcodec
    except Exception:  # noqa: BLE001 (not installed, or not for this platform)
        return None
    return _NvImageCodec(nvimgcodec)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to a scratch file meanwhile (a C library's prints, which Python
    cannot catch otherwise)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to quiet
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _NvImageCodec:
    """nvImageCodec's decoders of each device (CUDA devices, the CPU), made on first use: a
    pool per device, one decoder per call at a time (they are not to be shared by threads).
    On a GPU a decoder tries its backends in turn for each image: the hardware decoder (A100,
    H100, H200: baseline JPEGs), then CUDA, then the CPU; on the CPU libjpeg-turbo."""

    def __init__(self, nv: Any) -> None:
        self.nv = nv
        # as torchvision's and TorchCodec's: no EXIF rotation (the loaders send no rotated
        # file to the device), 8-bit RGB, grey images as three equal channels
        self.params = nv.DecodeParams(apply_exif_orientation=False,
                                      color_spec=nv.ColorSpec.SRGB, allow_any_depth=False,
                                      sample_format=nv.SampleFormat.I_RGB)
        self._failures: dict[str, str | None] = {}  # by device: why none can be made, or None
        self._idle: dict[str, list[Any]] = {}  # by device: decoders no call is using
        self.made: dict[str, int] = {}  # by device: decoders made
        self._lock = threading.Lock()

    @staticmethod
    def _key(device: torch.device) -> str:
        if device.type == "cuda" and device.index is None and torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        return str(device)

    def failure(self, device: torch.device) -> str | None:
        """Why nvImageCodec cannot decode on `device` (no CUDA, no nvJPEG, ...), or None."""
        key = self._key(device)
        with self._lock:
            if key not in self._failures:  # the first decoder, which decodes a test image
                made = self._make(device, key)
                self._failures[key] = made if isinstance(made, str) else None
                self._idle[key] = [] if isinstance(made, str) else [made]
                self.made[key] = 0 if isinstance(made, str) else 1
            return self._failures[key]

    @contextlib.contextmanager
    def _borrowed(self, device: torch.device) -> Iterator[Any]:
        """An idle decoder of `device`'s pool (a new one where every one is in use), given
        back after the call. RuntimeError where none can be made."""
        if (why := self.failure(device)) is not None:
            raise RuntimeError(f"nvImageCodec cannot decode on {device}: {why}")
        key = self._key(device)
        with self._lock:
            decoder = self._idle[key].pop() if self._idle[key] else None
        if decoder is None:
            decoder = self._make(device, key)
            if isinstance(decoder, str):
                raise RuntimeError(f"nvImageCodec cannot decode on {device}: {decoder}")
            with self._lock:
                self.made[key] += 1
        try:
            yield decoder
        finally:
            with self._lock:
                self._idle[key].append(decoder)

    def _make(self, device: torch.device, key: str) -> Any:
        """A decoder of `device`, once it has decoded a test image; or why not (a str)."""
        nv = self.nv
        if device.type not in ("cpu", "cuda") or (device.type == "cuda"
                                                  and not torch.cuda.is_available()):
            return f"it decodes on CUDA devices and the CPU, and {device} is not one here"
        calls = max(1, _asked_threads() or 2)  # threads decoding at once (auto: 2 here)
        try:
            if device.type == "cpu":
                decoder = nv.Decoder(device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY,
                                     max_num_cpu_threads=1,
                                     backends=[nv.Backend(nv.BackendKind.CPU_ONLY)])
            else:
                # its pool of threads: this process's share of the cores (torchrun may have
                # started one process per GPU on this machine, as `--workers auto` counts),
                # shared by the threads that decode at once
                here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
                decoder = nv.Decoder(device_id=int(key.split(":")[1]),
                                     max_num_cpu_threads=max(1, usable_cores() // here // calls))
            # a decoder is made even where its libraries then fail (no nvJPEG, a driver too
            # old for it): each image would come back refused, so try one first
            if decoder.decode(nv.CodeStream(_test_jpeg()), params=self.params) is None:
                return "it could not decode a test image (is nvJPEG installed: nvidia-nvjpeg?)"
        except Exception as e:  # noqa: BLE001 (its CUDA runtime or nvJPEG missing, ...)
            return f"{type(e).__name__}: {e}".splitlines()[0]
        return decoder

    def decode(self, files: list[torch.Tensor], device: torch.device
               ) -> list[torch.Tensor | None]:
        """`decode_batch` (see there) in one call of a batched decoder of `device`'s pool, on
        the current CUDA stream of `device`."""
        streams = [self.nv.CodeStream(f.contiguous().numpy()) for f in files]
        with self._borrowed(device) as decoder:
            if device.type == "cuda":
                stream = torch.cuda.current_stream(device)
                images = decoder.decode(streams, params=self.params,
                                        cuda_stream=stream.cuda_stream)
                # DLPack: the images' buffers are kept. Handed over as capsules for the stream
                # they were decoded on (nvImageCodec takes the handle as it is, and then needs
                # no event per image; `torch.from_dlpack(im)` would first try keywords it
                # lacks)
                ptr = stream.cuda_stream
                return [None if im is None else torch.from_dlpack(im.__dlpack__(stream=ptr))
                        .permute(2, 0, 1) for im in images]
            images = decoder.decode(streams, params=self.params)
        # (a host image as a numpy array, which keeps it alive)
        return [None if im is None else torch.from_numpy(np.asarray(im)).permute(2, 0, 1)
                for im in images]


@functools.cache
def _test_jpeg() -> bytes:
    """A small baseline JPEG (what the loaders send to the device), made once."""
    from PIL import Image

    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], -1)).save(buf, "JPEG", quality=90)
    return buf.getvalue()
