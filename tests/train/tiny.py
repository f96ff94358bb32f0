"""A stand-in DataBundle from tensors (no files, no data layer datasets) and a tiny run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from zfnet.train import TrainConfig

FULL, SIZE, CLASSES = 24, 20, 4


class TinyImages(Dataset):
    """Random images whose class shifts one colour channel; paper-style crops on top.

    train: random SIZE crop + flip from torch's global RNG (as the data layer does);
    val: centre crop, or the (10, C, S, S) ten crops."""

    def __init__(self, n: int, seed: int, mode: str) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % CLASSES
        self.x = torch.randn(n, 3, FULL, FULL, generator=g) * 50  # (N, 3, F, F)
        self.x[torch.arange(n), self.y % 3] += 40.0 * (1 + self.y // 3).float().view(-1, 1, 1)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.x[i], int(self.y[i])
        o = (FULL - SIZE) // 2
        if self.mode == "train":
            t, s = (int(v) for v in torch.randint(0, FULL - SIZE + 1, (2,)))
            x = x[:, t:t + SIZE, s:s + SIZE]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        elif self.mode == "ten_crop":
            e = FULL - SIZE
            corners = ((0, 0), (0, e), (e, 0), (e, e), (o, o))
            five = [x[:, a:a + SIZE, b:b + SIZE] for a, b in corners]
            x = torch.stack(five + [c.flip(-1) for c in five])
        else:
            x = x[:, o:o + SIZE, o:o + SIZE]
        return x.contiguous(), y


@dataclass
class TinyBundle:
    """Has the fields of zfnet.data.DataBundle that training and evaluation use."""

    train: Dataset
    val: Dataset
    spec: str = "tiny"
    num_classes: int = CLASSES
    class_names: list[str] = field(default_factory=lambda: [f"c{i}" for i in range(CLASSES)])
    in_channels: int = 3
    input_size: int = SIZE
    full_size: int = FULL


def tiny_bundle(n_train: int = 32, n_val: int = 16, ten_crop: bool = False) -> TinyBundle:
    return TinyBundle(TinyImages(n_train, 1, "train"),
                      TinyImages(n_val, 2, "ten_crop" if ten_crop else "centre"))


def tiny_config(out: str | Path, **overrides: Any) -> TrainConfig:
    """zfnet_small narrowed to a few thousand multiply-adds per pixel; dropout and renorm on."""
    kw: dict[str, Any] = dict(
        data="tiny", model="zfnet_small", out=str(out),
        model_opts={"conv_widths": [16, 16, 16], "fc_width": 32}, epochs=2, batch_size=8,
        lr=1e-3, keep_epochs=(1, 2, 3), progress=False, tensorboard=False, device="cpu",
        amp="off",
    )
    kw.update(overrides)
    return TrainConfig(**kw)
