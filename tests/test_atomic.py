"""`zfnet.atomic`: whole-file replacement through a unique temporary name; whether a path
can be written."""

import os
import threading

import pytest

from zfnet.atomic import cannot_write, write_text_atomic


def test_replaces_and_leaves_no_temporary(tmp_path) -> None:
    p = tmp_path / "index.html"
    p.write_text("old")
    assert write_text_atomic(p, "new") == p and p.read_text() == "new"
    assert os.listdir(tmp_path) == ["index.html"]


def test_writers_never_share_a_temporary(tmp_path, monkeypatch) -> None:
    """Two writers of one file at once: each renames its own complete temporary into place
    (a fixed temporary name would let one rename the other's half-written file)."""
    p = tmp_path / "sections.json"
    names: list[str] = []
    both_open = threading.Barrier(2)
    real_replace = os.replace

    def replace(src, dst):
        names.append(os.path.basename(src))
        both_open.wait(timeout=10)  # both temporaries exist before either is renamed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    texts = ["a" * 100_000, "b" * 100_000]
    threads = [threading.Thread(target=write_text_atomic, args=(p, t)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 2 and all(n.startswith(".sections.json.tmp-") for n in names)
    assert p.read_text() in texts and os.listdir(tmp_path) == ["sections.json"]


def test_cannot_write_names_what_is_in_the_way(tmp_path) -> None:
    (tmp_path / "f").write_text("a file\n")
    assert cannot_write(tmp_path / "new" / "deeper", folder=True) is None
    assert cannot_write(tmp_path / "new.csv", folder=False) is None
    assert cannot_write(tmp_path, folder=True) is None
    assert cannot_write(tmp_path / "f", folder=True) == f"{tmp_path / 'f'} is a file, not a folder"
    assert cannot_write(tmp_path, folder=False) == f"{tmp_path} is a folder, not a file"
    assert cannot_write(tmp_path / "f" / "x", folder=True) == (
        f"{tmp_path / 'f'} is a file, so {tmp_path / 'f' / 'x'} cannot be made in it")
    # a file system that takes nothing new, even from root: found by trying, not by access()
    assert "zfnet cannot create anything in /proc" in cannot_write("/proc/zfnet/x", folder=True)
    assert list(tmp_path.iterdir()) == [tmp_path / "f"]  # the probe left nothing behind


def test_a_file_that_cannot_be_replaced_is_named_not_its_temporary(tmp_path, monkeypatch) -> None:
    """An index.html made immutable (or another user's): the error named the hidden
    `.index.html.tmp-…` beside it, which the user never made; now the file itself, and no
    temporary is left."""
    from zfnet import atomic

    def refuse(src, dst):  # noqa: ANN001
        raise PermissionError(1, "Operation not permitted", str(src), str(dst))

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(PermissionError) as e:
        atomic.write_text_atomic(tmp_path / "index.html", "<p>")
    assert e.value.filename == str(tmp_path / "index.html") and ".tmp-" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_a_file_name_that_is_no_utf8_is_written_with_its_odd_bytes_escaped(tmp_path) -> None:
    """A report or CSV naming a file from an old archive (a name Python holds with surrogate
    escapes, which UTF-8 cannot write) is written, its odd bytes as bash's $'...' shows them."""
    from zfnet.atomic import printable

    odd = os.fsdecode(b"caf\xe9 \xff.jpg")  # Latin-1 bytes: no UTF-8
    p = tmp_path / "pred.csv"
    write_text_atomic(p, f"path,class\n{odd},cat\ncafé.jpg,dog\n")
    assert p.read_bytes() == b"path,class\ncaf\\xe9 \\xff.jpg,cat\ncaf\xc3\xa9.jpg,dog\n"
    assert printable(odd) == "caf\\xe9 \\xff.jpg"
    assert printable("café.jpg") == "café.jpg"  # any other text as it is
    assert printable("\ud800 lone") == "\\ud800 lone"  # no escaped byte: its code written
