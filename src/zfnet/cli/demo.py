"""`zfnet demo`: ZFNet-small trained on the built-in data, every analysis, one report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from zfnet.cli.app import main
from zfnet.cli.options import _OUT_DIR, _PROGRESS, _Finite, _Whole


@main.command("demo", short_help="Train ZFNet-small, run every analysis, write a report")
@click.option("--out", default="runs/demo", show_default=True, type=_OUT_DIR,
              help="Run directory (re-running resumes or reuses it).")
@click.option("--epochs", default=5, show_default=True, type=_Whole(1),
              help="Training epochs before the analyses.")
@click.option("--batch-size", default=64, show_default=True, type=_Whole(1),
              help="Images per training step.")
@click.option("--lr", default=0.05, show_default=True, type=_Finite(min=0, min_open=True),
              help="Peak learning rate (after a short warm-up, down to 0 in a straight line).")
@click.option("--data", default="synthetic", show_default=True, metavar="SPEC",
              help="Dataset spec.")
@click.option("--model", default="zfnet_small", show_default=True, metavar="NAME",
              help="Registered model.")
@click.option("--no-analyses", is_flag=True, help="Only train, evaluate and report.")
@_PROGRESS
def demo_cmd(out: str, epochs: int, batch_size: int, lr: float, data: str, model: str,
             no_analyses: bool) -> None:
    """Train ZFNet-small on the built-in data, evaluate it, run the paper's analyses and write
    an offline report page (index.html); about 2.5 minutes on 2 CPU cores, each stage timed."""
    from zfnet.demo import run_demo

    r = run_demo(out, epochs, batch_size, lr, data, model, analyses=not no_analyses,
                 log=click.echo)
    if r.get("status") == "interrupted":  # as `zfnet train` ends: 130 (SIGINT) or 143
        import signal

        from zfnet.train import EXIT_INTERRUPTED

        sys.exit(EXIT_INTERRUPTED[signal.Signals[r.get("signal") or "SIGTERM"]])
    if "report" in r:
        click.echo(f"total {r['wall_time_s']:.0f} s; val top-1 error {r['val_top1_error']:.2%}")
        click.echo(f"report: {Path(r['report']).resolve()}")
        exe = sys.argv[0] if Path(sys.argv[0]).name == "zfnet" else "zfnet"  # .venv/bin/zfnet
        click.echo(f"explore it in your browser (then open http://127.0.0.1:8000/): "
                   f"{exe} serve --checkpoint {out}")
