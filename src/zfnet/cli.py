"""The `zfnet` command: thin — each subcommand parses, calls one library function, prints."""

from __future__ import annotations

import click

from zfnet import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zfnet")
def main() -> None:
    """ZFNet (Zeiler & Fergus 2013): train it, evaluate it, look inside it with the deconvnet."""


if __name__ == "__main__":
    main()
