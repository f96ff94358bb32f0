"""Writing files safely: replacing one atomically (readers see the old file or the new one,
never half of one), and knowing before any work whether a path can be written at all."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_text_atomic(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """Write `text` to `path` through a temporary file in the same directory, then rename it
    into place. The temporary's name is unique (`.NAME.tmp-<random>`), so two processes or
    threads writing one run directory at once never share one; `durable` also fsyncs the file
    and the directory (checkpoints: the rename survives a crash). Returns `path`."""
    return write_atomic(path, lambda f: f.write(printable(text).encode("utf-8")), durable=durable)


def printable(text: str) -> str:
    """`text` as UTF-8 can hold it. A file name that is no UTF-8 (from an old archive; Python
    holds its odd bytes as surrogate escapes, which UTF-8 cannot write) with each odd byte as
    `\\xNN`, as bash's `$'...'` quotes it: a report, a table, a CSV or a web page that names
    such a file is written, not lost to a UnicodeEncodeError after the work it shows."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that is no escaped byte
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")


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
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename in (str(tmp), tmp) and e.errno is not None:  # said of the file meant,
            raise type(e)(e.errno, e.strerror, str(path)) from None  # not of its temporary
        raise
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


def cannot_write(path: str | Path, *, folder: bool) -> str | None:
    """Why `path` cannot be written, as a folder (`folder`) or as a file, or None where it can:
    the nearest of it and its folders that exists must be a folder zfnet can create in (tried
    with an empty folder it removes at once, so read-only mounts and /proc are caught, also
    as root). Commands call it before any work, so a bad --out costs nothing."""
    path = Path(path).expanduser()
    if path.exists() and path.is_dir() != folder:
        kinds = ("file", "folder") if folder else ("folder", "file")
        return f"{path} is a {kinds[0]}, not a {kinds[1]}"
    above = next(p for p in ((path,) if folder else ()) + tuple(path.parents) if p.exists())
    if not above.is_dir():
        return f"{above} is a file, so {path} cannot be made in it"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".zfnet-probe-", dir=above))
    except OSError as e:
        why = (e.strerror or str(e)).lower()
        where = f"zfnet cannot create anything in {above} ({why})"
        return where if above == path else f"{path} cannot be made: {where}"
    return None
