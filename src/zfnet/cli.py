"""The `zfnet` command: thin — each subcommand parses, calls one library function, prints."""

from __future__ import annotations

import click

from zfnet import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zfnet")
def main() -> None:
    """ZFNet (Zeiler & Fergus 2013): train it, evaluate it, look inside it with the deconvnet."""


@main.command("models")
@click.argument("name", required=False)
@click.option("--input-size", type=int, default=None, help="Input side for the layer table.")
def models_cmd(name: str | None, input_size: int | None) -> None:
    """List the registered models, or the layers of model NAME (the names every command takes)."""
    from zfnet.models import create_model, layer_info, list_models

    if name is None:
        for n in list_models():
            click.echo(n)
        return
    opts = {"input_size": input_size} if input_size else {}
    try:
        model = create_model(name, **opts)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from e
    n_params = sum(p.numel() for p in model.parameters())
    click.echo(f"{name}: {n_params:,} parameters, input {model.config.input_size} px")
    click.echo(f"{'layer':<8} {'module':<20} {'kind':<8} {'maps':>6} {'size':>5} "
               f"{'stride':>6} {'rf':>5}")
    for info in layer_info(model).values():
        g = info.geometry
        size, jump, rf = (g.size, g.jump, g.rf) if g else ("", "", "")
        click.echo(f"{info.name:<8} {info.module:<20} {info.kind:<8} {info.channels or '':>6} "
                   f"{size:>5} {jump:>6} {rf:>5}")


if __name__ == "__main__":
    main()
