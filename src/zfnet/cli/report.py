"""`zfnet report`: a report page rebuilt from its saved sections."""

from __future__ import annotations

from pathlib import Path

import click

from zfnet.cli.app import main
from zfnet.cli.loading import _finish


@main.command("report", short_help="Rebuild a report page from its saved sections")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report_cmd(run_dir: str) -> None:
    """Rebuild RUN_DIR/index.html from the sections saved there (RUN_DIR/sections/*.json,
    written by `zfnet train` (its curves), `zfnet eval --out`, `zfnet study`, `zfnet demo`,
    `zfnet analyze ...` and `zfnet visualize ...`; an atlas in RUN_DIR/atlas is linked)."""
    from zfnet.report import read_sections

    page, folder = Path(run_dir) / "index.html", Path(run_dir) / "sections"
    if folder.is_dir() and not read_sections(run_dir) and page.is_file() and \
            "<p class=\"meta\">Made by zfnet on " in page.read_text(errors="replace"):
        page.unlink()  # zfnet's page of sections that are all gone
        click.echo(f"no sections left in {folder}: removed the page that showed them, {page}")
        return
    _finish(run_dir)
