"""Replacing a file atomically: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_text_atomic(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """Write `text` to `path` through a temporary file in the same directory, then rename it
    into place. The temporary's name is unique (`.NAME.tmp-<random>`), so two processes or
    threads writing one run directory at once never share one; `durable` also fsyncs the file
    and the directory (checkpoints: the rename survives a crash). Returns `path`."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")), durable=durable)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], *,
                 durable: bool = False) -> Path:
    """`write_text_atomic` for any content: `write(f)` fills the open binary temporary (e.g.
    `lambda f: np.save(f, array)`). The file is made as any new file is (the umask's mode, not
    mkstemp's 0600)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "xb") as f:  # "x": never another writer's file
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path
