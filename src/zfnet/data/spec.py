"""Dataset spec strings: `NAME[:PATH][?key=value&key=value]`.

Examples: `synthetic`, `synthetic?n_train=4000&seed=1`, `fashion-mnist`,
`fashion-mnist:/usr/share/datasets/fashion-mnist?classes=0,2,5&per_class=30`,
`imagefolder:/data/imagenet`.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed spec string: the dataset name, its path (or None) and raw string options."""

    name: str
    path: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_spec(spec: str) -> DatasetSpec:
    """Split `NAME[:PATH][?key=value&...]` into its parts (values stay strings).

    Raises ValueError naming the spec when it is empty, an option has no `=`, or an option
    is given twice.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty dataset spec {spec!r}; expected NAME[:PATH][?key=value&...]")
    head, _, query = spec.strip().partition("?")
    name, colon, path = head.partition(":")
    name = name.strip().lower()
    if not name:
        raise ValueError(f"dataset spec {spec!r} has no name; expected NAME[:PATH][?key=value&...]")
    if colon and not path:
        raise ValueError(f"dataset spec {spec!r} has ':' but no path after it")
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        key = unquote(key).strip()
        if not eq or not key:
            whole = f"{path}?{query}" if path else ""
            raise ValueError(
                f"option {part!r} in dataset spec {spec!r} is not key=value "
                "(e.g. synthetic?n_train=4000&seed=1)"
                + (f"; '?' starts the options: the folder {whole.strip()} needs a name "
                   "without '?' (rename it, or link to it from one)"
                   if whole and os.path.exists(os.path.expanduser(whole.strip())) else "")
            )
        if key in options:
            raise ValueError(f"option {key!r} is given twice in dataset spec {spec!r}")
        options[key] = unquote(value).strip()
    return DatasetSpec(name, path or None, options)


# Options whose value is a file: made absolute with the path.
PATH_OPTIONS = ("val_labels", "words")


def absolute_spec(spec: str) -> str:
    """`spec` with its path (and a file option's, `val_labels`, `words`) absolute, from the working
    directory: what a run saves, so that it is read from anywhere later (`zfnet eval`,
    `--resume`), normalised ("DIR/" is "DIR"). A spec without a path is returned as it is."""
    head, q, query = spec.strip().partition("?")
    name, colon, path = head.partition(":")

    def absolute(p: str) -> str:  # normalised too: "DIR/" and "DIR" are one folder
        return os.path.abspath(os.path.expanduser(p.strip()))

    if colon and path:
        head = f"{name}:{absolute(path)}"
    parts = []
    for part in query.split("&") if query else []:
        key, eq, value = part.partition("=")
        if eq and unquote(key).strip() in PATH_OPTIONS and value:
            value = quote(absolute(unquote(value)), safe="/")
        parts.append(f"{key}{eq}{value}")
    return head + (q + "&".join(parts) if q else "")


def with_options(spec: str, **options: Any) -> str:
    """`spec` with `key=value` options appended: `with_options("synthetic", per_class=5)` ->
    "synthetic?per_class=5"; `"synthetic?size=32"` -> "synthetic?size=32&per_class=5"."""
    sep = "&" if "?" in spec else "?"
    return spec + sep + "&".join(f"{k}={v}" for k, v in options.items())


def int_option(value: str, key: str, *, minimum: int = 0) -> int:
    """Parse an integer option, with an error naming the option."""
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"option {key}={value!r} must be an integer") from None
    if n < minimum:
        raise ValueError(f"option {key}={n} must be >= {minimum}")
    return n


def fraction_option(value: str, key: str) -> float:
    """Parse a share strictly between 0 and 1 (`val_split=0.2`), with an error naming the
    option."""
    try:
        f = float(value)
    except ValueError:
        raise ValueError(f"option {key}={value!r} must be a number between 0 and 1, e.g. "
                         f"{key}=0.2") from None
    if not 0 < f < 1:
        raise ValueError(f"option {key}={value} must lie between 0 and 1 (not either), e.g. "
                         f"{key}=0.2: the share of each class's images held out")
    return f


def nfc(name: str) -> str:
    """`name` in Unicode's composed form (NFC), in which names are compared: a folder `café`
    made on a Mac is stored decomposed (`cafe` + an accent), the same name typed elsewhere not."""
    return unicodedata.normalize("NFC", name)


def class_list_option(value: str, class_names: list[str], key: str = "classes") -> list[int]:
    """Parse `classes=0,2,5` (indices) or `classes=face,house` (names) into sorted-unique indices.

    The order given is kept: new label k is the k-th class listed.
    """
    out: list[int] = []
    for token in filter(None, (nfc(t.strip()) for t in value.split(","))):
        if token.lstrip("-").isdigit():
            idx = int(token)
            if not 0 <= idx < len(class_names):
                raise ValueError(
                    f"option {key}: class index {idx} out of range 0..{len(class_names) - 1}"
                )
        elif token in class_names:
            idx = class_names.index(token)
        else:
            raise ValueError(
                f"option {key}: unknown class {token!r}; valid: indices 0..{len(class_names) - 1}"
                f" or names {', '.join(class_names)}"
            )
        if idx in out:
            raise ValueError(f"option {key}: class {token!r} is listed twice")
        out.append(idx)
    if not out:
        raise ValueError(f"option {key}={value!r} names no class")
    return out


def check_options(
    spec: DatasetSpec, parsers: Mapping[str, Callable[[str, str], Any]], labelled: bool = True
) -> dict[str, Any]:
    """Parse `spec.options` with one parser per known key; unknown keys list the valid ones
    (with `random_labels` and `words`, which `zfnet.data.load_dataset` takes for every
    `labelled` dataset)."""
    from zfnet.data.relabel import OPTION
    from zfnet.data.words import OPTION as WORDS

    unknown = sorted(set(spec.options) - set(parsers))
    if unknown:
        valid = ", ".join(sorted({*parsers, *([OPTION, WORDS] if labelled else [])})) or "(none)"
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for dataset {spec.name!r}; valid: {valid}"
        )
    return {key: parsers[key](value, key) for key, value in spec.options.items()}
