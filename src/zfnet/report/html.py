"""Lay out a run's sections as one offline HTML page (`index.html`, images embedded)."""

from __future__ import annotations

import base64
import io
import json
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from PIL import Image

from zfnet.atomic import write_text_atomic
from zfnet.display import smaller_jpeg
from zfnet.report.sections import read_sections


class MissingFigureWarning(UserWarning):
    """A figure a section lists is not in the run (deleted or moved): the page says so in its
    place."""

    one_line = True  # `zfnet` prints it as one line (zfnet.cli)

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("zfnet.report", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


# The page is at most 1100 CSS px wide: a figure is embedded at most twice that wide (sharp on
# a 2x screen); a wider one is downscaled for the page and links to its full-size file.
MAX_EMBED_WIDTH = 2200


@dataclass
class _Embedded:
    src: str  # data URI
    href: str | None = None  # the file itself (relative to the page) when `src` is not it
    full: tuple[int, int] | None = None  # its size (width, height) when `src` is reduced


def _embed(run_dir: Path, rel: str, max_width: int = MAX_EMBED_WIDTH) -> _Embedded:
    """The figure `run_dir/rel` as a data URI: downscaled (Lanczos) to `max_width` px if wider,
    and as a JPEG where that is smaller than its PNG (`zfnet.display.smaller_jpeg`: a gallery
    of projections and patches, ~4x smaller; a plot stays a PNG); linked to the file itself,
    which is left as it is, wherever what is shown is not it."""
    data = (run_dir / rel).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            full = im.size
            if im.width > max_width:
                if im.mode not in ("RGB", "RGBA", "L", "LA"):
                    im = im.convert("RGBA" if "transparency" in im.info or "A" in im.mode
                                    else "RGB")
                height = max(1, round(im.height * max_width / im.width))
                im = im.resize((max_width, height), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                png = buf.getvalue()
            else:
                im.load()
                png = data
            jpeg = smaller_jpeg(im, len(png))
    except (OSError, ValueError):  # not an image PIL reads or converts: embedded as it is
        return _Embedded(_uri(data))
    reduced = full[0] > max_width
    if jpeg is None and not reduced:
        return _Embedded(_uri(data))
    return _Embedded(_uri(png) if jpeg is None else _uri(jpeg, "jpeg"), href=quote(rel),
                     full=full if reduced else None)


def _uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_ENV.filters["fmt"] = _fmt


def build_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Write `run_dir/index.html` from the sections saved in `run_dir`; return its path.

    The page has no external assets (figures are embedded as data URIs), so it opens offline
    and can be mailed as one file; a figure wider than MAX_EMBED_WIDTH px is embedded
    downscaled and links to its full-size file in `run_dir` (a relative link: it opens where
    the run's folder is). The run's `config.json`, if present, is shown at the end, and an atlas
    in `run_dir/atlas` (`zfnet atlas --out RUN/atlas`) is linked.
    ValueError when `run_dir` holds no sections or a section's figure lies outside it.
    """
    run_dir = Path(run_dir)
    sections = read_sections(run_dir)
    if not sections:
        raise ValueError(f"{run_dir} has no report sections ({run_dir / 'sections'}/*.json)"
                         f"{_runs_inside(run_dir)}; write some into it first with `zfnet demo`, "
                         "`zfnet train`, `zfnet study`, `zfnet analyze ...` or `zfnet visualize "
                         "topk` (--out)")
    figures = {}
    for s in sections:
        for f in s.figures:
            if (run_dir / f.path).is_file():
                figures[f.path] = _embed(run_dir, f.path)
            elif f.path not in figures:
                figures[f.path] = None
                warnings.warn(f"{run_dir / f.path}, a figure of the section {s.title!r}, is "
                              "missing: the page says so in its place (the command that made "
                              "the section writes it again)", MissingFigureWarning, stacklevel=2)
    config_path = run_dir / "config.json"
    config = ""
    if config_path.is_file():
        config = json.dumps(json.loads(config_path.read_text()), indent=1)
    html = _ENV.get_template("report.html.j2").render(
        title=title or f"zfnet report — {run_dir.resolve().name}",
        sections=sections,
        figures=figures,
        config=config,
        atlas=(run_dir / "atlas" / "index.html").is_file(),
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    return write_text_atomic(run_dir / "index.html", html)


def _runs_inside(folder: Path) -> str:
    """Where `folder` holds runs (a `zfnet study` stopped before its table, or a folder of
    runs): which, and what finishes the study ("" otherwise)."""
    runs = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file()) \
        if folder.is_dir() else []
    if not runs:
        return ""
    named = ", ".join(runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
    return (f"; it holds runs ({named}): a `zfnet study` stopped before its table is finished "
            "by the same command, and each run has its own page (`zfnet report "
            f"{folder / runs[0]}`)")
