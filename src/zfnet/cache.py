"""Where zfnet keeps what it can make again (top-k indexes, the built-in photos as files):
$XDG_CACHE_HOME/zfnet, or ~/.cache/zfnet where that is unset, empty or relative (the XDG
spec: never the current folder)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """zfnet's folder in the user's cache (not created here)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "zfnet"
