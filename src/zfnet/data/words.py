"""`words=FILE`, an option of every labelled dataset's spec: classes named by IDs (ImageNet's
WNIDs, `n01440764`) shown with their words, "tench (n01440764)", wherever a person reads them
(`zfnet eval`'s per-class lines, the report, occlusion's figures, the gallery's and the atlas's
class units, the explorer). The class names themselves (folders, checkpoints, `--labels`
matching, `classes=`) stay the IDs.

FILE is one of:
- a text file of a class and its words a line, Kaggle's `LOC_synset_mapping.txt`:
  `n01440764 tench, Tinca tinca`;
- the ILSVRC2012 devkit (its folder, or `ILSVRC2012_devkit_t12.tar.gz`): its `meta.mat` (or
  that `data/meta.mat` itself);
- a JSON file: Keras's (and PyTorch's tutorials') `imagenet_class_index.json`, an output index
  to a class and its words (`{"0": ["n01440764", "tench"], ...}`), or an object of a class to
  its words (`{"n01440764": "tench, Tinca tinca", ...}`).

A class the file does not name is shown by its name alone; a file that names none of the
dataset's classes is an error. Without `words=`, an `imagefolder` whose `val_labels` is the
devkit takes the words from it, and one whose `val_labels` is Kaggle's CSV from the
`LOC_synset_mapping.txt` beside it (`implied_words`); `zfnet shards` keeps the words of the
folder it writes in its manifest, and `shards:OUT` shows them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OPTION = "words"


def short(words: str) -> str:
    """The first of a class's words ("tench, Tinca tinca" -> "tench")."""
    return words.split(",")[0].strip()


def shown(name: str, words: str | None) -> str:
    """How a person reads class `name`: "tench (n01440764)" with its words, else the name."""
    word = short(words) if words else ""
    return f"{word} ({name})" if word and word != name else name


def labels_of(bundle: Any) -> list[str]:
    """A bundle's classes as shown (`DataBundle.class_labels`); for any other object with
    `class_names` (a user's own bundle), those names."""
    shown_ = getattr(bundle, "class_labels", None)
    return list(shown_) if shown_ is not None else list(getattr(bundle, "class_names", []) or [])


def as_shown(names: Sequence[str] | None, bundle: Any) -> list[str] | None:
    """A model's class `names` as shown: each that is one of the bundle's own class names (a
    run trained before `words=`, whose checkpoint names its outputs by the IDs; a model's
    `--labels` of WNIDs on some of ImageNet's classes) as the bundle's `class_labels` show it,
    the others as they are."""
    if names is None:
        return None
    own = list(getattr(bundle, "class_names", None) or []) if bundle is not None else []
    shown_ = dict(zip(own, labels_of(bundle), strict=True)) if own else {}
    return [shown_.get(name, name) for name in names]


def read_words(path: str | Path) -> dict[str, str]:
    """{class: words} from a `words=FILE` file (see the module doc)."""
    from zfnet.data.labels_file import ARCHIVES, META, devkit_files

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"words: {path} does not exist; give a file of a class and its "
                                "words a line (Kaggle's LOC_synset_mapping.txt) or the "
                                "ILSVRC2012 devkit")
    if path.is_dir() or path.name.lower().endswith(ARCHIVES) or path.suffix.lower() == ".mat":
        from scipy.io import loadmat

        # the devkit, or its data/meta.mat itself
        meta = path.read_bytes() if path.is_file() and path.suffix.lower() == ".mat" \
            else devkit_files(path, "words")[1]
        try:
            synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
            return {str(s["WNID"]): str(s["words"]) for s in synsets}
        except Exception as e:  # noqa: BLE001 (any malformed meta.mat: named)
            raise ValueError(f"words: the {META} of {path} has no synsets with WNID and words "
                             f"({type(e).__name__}: {e})") from None
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as e:
        raise ValueError(f"words: cannot read {path} ({e}); give a file of a class and "
                         "its words a line, or the ILSVRC2012 devkit") from None
    except UnicodeDecodeError as e:  # saved as Latin-1 or Windows-1252 by an editor
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"words: {path} is not UTF-8 text (line {line}: byte "
                         f"0x{raw[e.start]:02x}); save it as UTF-8, a class and its words a "
                         "line") from None
    if path.suffix.lower() == ".json":
        return _json_words(path, text)
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, words = (line.split(None, 1) + ["", ""])[:2]  # a space or a tab between them
        if name and words.strip():
            found.setdefault(name, words.strip())
    return found


def _json_words(path: Path, text: str) -> dict[str, str]:
    """{class: words} from a JSON words file (see the module doc)."""
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"words: {path} is not valid JSON ({e.msg}, line {e.lineno})"
                         ) from None
    pairs = [tuple(v) if isinstance(v, list) else (k, v)
             for k, v in (data.items() if isinstance(data, dict) else [])]
    if not pairs or not all(len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs):
        raise ValueError(f"words: {path} is not a JSON object of an index to a class and its "
                         'words ({"0": ["n01440764", "tench"], ...}, imagenet_class_index.json)'
                         ' or of a class to its words ({"n01440764": "tench"})')
    found: dict[str, str] = {}
    for name, words in pairs:
        if name.strip() and words.strip():
            found.setdefault(name.strip(), words.strip())
    return found


def words_for(names: Sequence[str], path: str | Path, what: str) -> list[str | None]:
    """Each of the class `names`' words from `path` (None for one it does not name); an error
    when it names none of them (`what`: the dataset, for the message)."""
    from zfnet.data.spec import nfc

    if not names:
        raise ValueError(f"words: {what} has no classes to name (a folder of images)")
    found = {nfc(k): v for k, v in read_words(path).items()}
    words = [found.get(name) for name in names]
    if not any(words):
        theirs = ", ".join(list(found)[:3]) or "none"
        beside = implied_words(str(path))  # Kaggle's labels CSV given: its words beside it
        hint = f"; the words are in {beside}" if beside is not None \
            and beside.name == KAGGLE_WORDS and beside != Path(path).expanduser() else ""
        raise ValueError(f"words: {path} names none of the {len(words)} classes of {what} "
                         f"({', '.join(names[:3])} ...); it names {theirs} ...{hint}")
    return words


def class_words(names: Sequence[str], given: str | None, val_labels: str | None, what: str
                ) -> list[str | None] | None:
    """The words of the class `names` from a spec's `words=FILE` (`given`: an error if it names
    none of them), else those its `val_labels` brings (`implied_words`; none where they are not
    words after all), else None. `what`: the dataset, for the messages. `load_dataset` and
    `zfnet shards` (its manifest) take them here."""
    if given is not None:
        return words_for(names, given, what)
    implied = implied_words(val_labels)
    if implied is None:
        return None
    try:  # ImageNet's devkit or Kaggle's mapping, read for the labels already
        return words_for(names, implied, what)
    except (OSError, ValueError):  # not words after all: the classes keep their names
        return None


KAGGLE_WORDS = "LOC_synset_mapping.txt"  # beside Kaggle's LOC_val_solution.csv


def implied_words(val_labels: str | None) -> Path | None:
    """The words file a spec's `val_labels` brings (see the module doc), or None."""
    from zfnet.data.labels_file import ARCHIVES

    if not val_labels:
        return None
    path = Path(val_labels).expanduser()
    if path.is_dir() or path.name.lower().endswith(ARCHIVES):
        return path
    beside = path.parent / KAGGLE_WORDS
    return beside if path.suffix.lower() == ".csv" and beside.is_file() else None
