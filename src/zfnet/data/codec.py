"""JPEG decoding into tensors for the loaders, on the CPU (libjpeg-turbo) or a CUDA device
(nvJPEG): TorchCodec's `decode_jpeg` where it is installed and loads, torchvision's otherwise.

torchvision deprecated its image decoders in 0.29, in favour of TorchCodec's (0.16 on), which
need torch 2.11 or newer; zfnet supports torch from 2.9 (`pip install zfnet[codec]` adds
TorchCodec). The two take the same input (a 1-D uint8 tensor of a file's bytes, or a list of
them: one batched call on CUDA), give the same (3, H, W) uint8 RGB tensors, pixel for pixel
on the CPU (tests/data/test_codec.py compares them where both are installed), and raise
RuntimeError for data they cannot decode. A TorchCodec that is installed but does not load
(built for another torch) is passed over for torchvision's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

Encoded = torch.Tensor | list[torch.Tensor]


@functools.cache
def _decoder() -> tuple[str, Callable[..., Any]]:
    try:
        from torchcodec.decoders import decode_jpeg as codec_decode
    except Exception:  # noqa: BLE001 (not installed, or built for another torch)
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as vision_decode

        def vision(data: Encoded, device: torch.device) -> Any:
            return vision_decode(data, mode=ImageReadMode.RGB, device=device)

        return "torchvision", vision

    def codec(data: Encoded, device: torch.device) -> Any:
        return codec_decode(data, mode="RGB", device=device)

    return "torchcodec", codec


def decoder_name() -> str:
    """Which library decodes: "torchcodec" or "torchvision"."""
    return _decoder()[0]


def decode_jpeg(data: Encoded, device: torch.device | str = "cpu") -> Any:
    """JPEG file(s) `data` (1-D uint8 tensors on the CPU) decoded to RGB on `device`: (3, H, W)
    uint8, or a list of them for a list (one call). RuntimeError when one cannot be decoded."""
    return _decoder()[1](data, torch.device(device))
