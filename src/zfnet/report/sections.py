"""What analyses hand to the report: sections of figures, tables and numbers, saved as JSON.

An analysis computes its results, saves its figures as PNG files inside the run directory and
calls `write_section(run_dir, Section(...))`. The report (`zfnet.report.build_report`) reads every
section back and lays them out; it never runs a model, and no analysis writes HTML.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from zfnet.atomic import write_text_atomic


@dataclass
class Figure:
    """A PNG inside the run directory (path relative to it) and what it shows."""

    path: str
    caption: str = ""


@dataclass
class Table:
    """A small table: column names, rows of cells (numbers or text), a caption; `links`: per
    row, a page its first cell links to (relative to the report; "" for none)."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    links: list[str] = field(default_factory=list)


@dataclass
class Section:
    """One captioned section of the report.

    `key` names it (file `sections/<key>.json`, a later write replaces it); `order` sorts the
    sections on the page; `caption` says what it shows, how to read it and which figure of the
    paper it reproduces; `metrics` are headline numbers shown beside it; `source` the model
    and data it was computed on, in a line (`computed_on` fills it in where it is left empty).
    """

    key: str
    title: str
    caption: str
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    order: int = 100
    source: str = ""


_SOURCE: ContextVar[str] = ContextVar("zfnet_section_source", default="")


@contextmanager
def computed_on(source: str) -> Iterator[None]:
    """Sections written in the block without a `source` of their own get `source`: what a
    command computed them on, e.g. "torchvision:resnet18 IMAGENET1K_V1 (resize 256, crop 224,
    ...), data images:/home/me/photos"."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


def inside(run_dir: str | Path, rel: str) -> bool:
    """Does the relative path `rel` stay inside `run_dir` (after `..` and symlinks)?"""
    root = Path(run_dir).resolve()
    return not Path(rel).is_absolute() and (root / rel).resolve().is_relative_to(root)


def write_section(run_dir: str | Path, section: Section) -> Path:
    """Save `section` as `run_dir/sections/<key>.json` (atomically) and return the path.

    Figures the section's previous version listed and this one does not (an analysis rerun on
    other layers) are deleted, unless another section shows them: the run directory keeps no
    figure that no report shows."""
    run_dir = Path(run_dir)
    if not section.source and _SOURCE.get():
        section = replace(section, source=_SOURCE.get())
    for fig in section.figures:
        if not inside(run_dir, fig.path):
            raise ValueError(f"section {section.key!r}: figure {fig.path} is outside {run_dir}; "
                             "figures are paths inside the run directory")
        if not (run_dir / fig.path).is_file():
            raise FileNotFoundError(
                f"section {section.key!r}: figure {fig.path} is not in {run_dir}"
            )
    out = run_dir / "sections" / f"{section.key}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    before = _figure_paths(out)
    written = write_text_atomic(out, json.dumps(asdict(section), indent=1, default=_jsonable))
    stale = before - {f.path for f in section.figures}
    if stale:
        for other in out.parent.glob("*.json"):
            if other != out:
                stale -= _figure_paths(other)
        for rel in sorted(stale):
            if inside(run_dir, rel):
                (run_dir / rel).unlink(missing_ok=True)
    return written


def _figure_paths(section_file: Path) -> set[str]:
    """The figure paths a saved section lists (none where it is missing or unreadable)."""
    try:
        return {str(f["path"]) for f in json.loads(section_file.read_text())["figures"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


class SectionFileError(ValueError):
    """A file in a run's `sections/` that is not a report section (corrupt, of another
    version): the page cannot be built until it is deleted or written again."""


def read_sections(run_dir: str | Path) -> list[Section]:
    """Every section saved in `run_dir`, sorted by (order, key).

    A figure path that leads out of `run_dir` (`../`, absolute, a symlink elsewhere) is refused
    with a ValueError naming the section file: the report embeds figures' bytes, and a section
    file must not make it read anything else."""
    sections = []
    for p in sorted((Path(run_dir) / "sections").glob("*.json")):
        try:
            d = json.loads(p.read_text())
            if not isinstance(d, dict):
                raise ValueError(f"it holds a JSON {type(d).__name__}, not an object")
            known = {f.name for f in fields(Section)}
            missing = [k for k in ("key", "title", "caption") if k not in d]
            if missing or d.keys() - known:
                raise ValueError("; ".join(
                    ([f"it lacks {', '.join(missing)}"] if missing else [])
                    + ([f"unknown fields {', '.join(sorted(d.keys() - known))}"]
                       if d.keys() - known else [])))
            d["figures"] = [Figure(**f) for f in d.get("figures", [])]
            d["tables"] = [Table(**t) for t in d.get("tables", [])]
            section = Section(**d)
        except (ValueError, TypeError, AttributeError) as e:
            raise SectionFileError(f"{p} is not a report section (corrupt or of another "
                                   f"version: {e}); delete it or write it again") from None
        for f in section.figures:
            if not inside(run_dir, f.path):
                raise ValueError(f"{p}: figure {f.path!r} is outside {run_dir}; refusing to "
                                 "read it (figures are paths inside the run directory)")
        sections.append(section)
    return sorted(sections, key=lambda s: (s.order, s.key))


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy / torch scalars
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot save {type(v).__name__} in a report section")
