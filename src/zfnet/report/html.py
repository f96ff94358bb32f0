"""Lay out a run's sections as one offline HTML page (`index.html`, images embedded)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from zfnet.atomic import write_text_atomic
from zfnet.report.sections import read_sections

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("zfnet.report", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_ENV.filters["fmt"] = _fmt


def build_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Write `run_dir/index.html` from the sections saved in `run_dir`; return its path.

    The page has no external assets (figures are embedded as data URIs), so it opens offline
    and can be mailed as one file. The run's `config.json`, if present, is shown at the end.
    ValueError when `run_dir` holds no sections or a section's figure lies outside it.
    """
    run_dir = Path(run_dir)
    sections = read_sections(run_dir)
    if not sections:
        raise ValueError(f"{run_dir} has no report sections ({run_dir / 'sections'}/*.json); "
                         "write some into it first with `zfnet demo`, `zfnet analyze ...` or "
                         "`zfnet visualize topk` (--out)")
    figures = {
        f.path: _data_uri(run_dir / f.path)
        for s in sections
        for f in s.figures
        if (run_dir / f.path).is_file()
    }
    config_path = run_dir / "config.json"
    config = ""
    if config_path.is_file():
        config = json.dumps(json.loads(config_path.read_text()), indent=1)
    html = _ENV.get_template("report.html.j2").render(
        title=title or f"zfnet report — {run_dir.resolve().name}",
        sections=sections,
        figures=figures,
        config=config,
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    return write_text_atomic(run_dir / "index.html", html)
