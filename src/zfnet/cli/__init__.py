"""The `zfnet` command: thin — each subcommand parses, calls one library function, prints.

`app` is the group and its one-line errors; `options` the options commands share and the
checks of their values; `loading` the model and data every look-inside command loads; each
other module holds the commands of one idea. Importing the package registers them all.
"""

from zfnet.cli import (  # noqa: F401  (each registers its commands on `main`)
    analyses,
    demo,
    gallery,
    look,
    models,
    report,
    serve,
    shards,
    training,
)
from zfnet.cli.analyses import analyze
from zfnet.cli.app import main
from zfnet.cli.gallery import visualize

__all__ = ["analyze", "main", "visualize"]
