"""`zfnet serve`: the explorer, a local web page on a model."""

from __future__ import annotations

import click

from zfnet.cli.app import main
from zfnet.cli.loading import _model_and_data
from zfnet.cli.options import _NONLINEAR, _OUT_DIR, _SOURCE, ModelOptions, _Whole


@main.command("serve", short_help="The explorer: a web page to look inside a network")
@_SOURCE
@click.option("--data", default=None, metavar="SPEC",
              help="Dataset spec whose images the page shows and mines (default: a zfnet run's "
                   "own; for other models `sample-photos`, the 6 built-in ones).")
@click.option("--host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on (0.0.0.0: every interface; the page has no login).")
@click.option("--port", default=8000, show_default=True, type=_Whole(0, 65535),
              help="Port (0: any free one).")
@click.option("--images", default=None, type=_Whole(1),
              help="Mine the top-k over the first N dataset images (default: all); every "
                   "image is shown.")
@click.option("--k", default=9, show_default=True, type=_Whole(1),
              help="Strongest activations kept per map (the paper's 9).")
@click.option("--cache", "cache_dir", default=None, type=_OUT_DIR,
              help="Where the top-k index is kept (default: ~/.cache/zfnet/explorer).")
@click.option("--max-upload-mb", default=20, show_default=True, type=_Whole(1),
              help="Largest image the page accepts, in MB.")
@click.option("--occlusion-precision", type=click.Choice(["float32", "bfloat16"]),
              default="float32", show_default=True,
              help="Occlusion's forward passes on a network that is not a chain (a ResNet: one "
                   "pass per occluder position) in bf16 (the job 1.5-1.7x faster on a CPU with "
                   "AMX); a chain's "
                   "exact incremental passes stay float32.")
@_NONLINEAR
def serve_cmd(model_options: ModelOptions, data: str | None, host: str, port: int,
              images: int | None, k: int, cache_dir: str | None, max_upload_mb: int,
              occlusion_precision: str) -> None:
    """The explorer: a local web page to click through the layers and units of the model with
    the dataset's images or your own (drag and drop): feature maps, projections by the
    deconvnet, guided backprop and the gradient, top-k over the dataset, occlusion and, for a
    zfnet run with kept epochs, evolution. The JSON API behind it: docs/explorer.md."""
    from zfnet.explorer.serve import check_address, serve

    try:  # the address first: a model can take a while to load
        port = check_address(host, port)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--port/--host") from None
    source, _ = _model_and_data(model_options, need_data=False)
    serve(source, data, host=host, port=port, cache_dir=cache_dir, images=images, k=k,
          max_upload=max_upload_mb * 2**20, occlusion_precision=occlusion_precision,
          echo=click.echo)
