"""`zfnet shards`: an image folder written as webdataset tar shards."""

from __future__ import annotations

import sys

import click

from zfnet.cli.app import main
from zfnet.cli.loading import _broken_files
from zfnet.cli.options import _OUT_DIR, _progress_option, _Whole, _workers


def _byte_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    import tarfile

    from zfnet.data.shard_writer import parse_size, small_shards

    try:
        size = parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    if size < tarfile.RECORDSIZE:  # before the folder is read
        raise click.BadParameter(f"{value}: {small_shards(size)}")
    return size


@main.command("shards", short_help="Write an image folder as webdataset tar shards")
@click.argument("source", metavar="imagefolder:DIR")
@click.option("--out", required=True, type=_OUT_DIR,
              help="Folder to create: train-*.tar, val-*.tar, their index, manifest.json.")
@click.option("--resize", type=_Whole(0),
              help="Shorter side the images are re-encoded at, as JPEG (default 256, the "
                   "paper's; smaller images keep their bytes); 0 = --original.")
@click.option("--original", is_flag=True, help="Store the original files' bytes.")
@click.option("--square", is_flag=True,
              help="Store only each image's centre square at --resize px: all that the paper's "
                   "preprocessing and a model's centre crops use. Every image the same size, a "
                   "quarter fewer pixels than a 4:3 photo: faster to read.")
@click.option("--raw", is_flag=True,
              help="Store those centre squares as raw pixels (uint8 .npy; --square implied): "
                   "nothing to decode when reading, for GPUs that train faster than the cores "
                   "decode; 3 x resize^2 bytes an image (192 KiB at 256 px: 255 GB for "
                   "ImageNet's training split), read at that many bytes an image.")
@click.option("--shard-size", default="1GB", show_default=True, callback=_byte_size,
              metavar="SIZE", help="Bytes per shard at most, e.g. 1GB, 500MB, 2GiB; a shard "
                                   "holds at least one image (a larger one gets its own).")
@click.option("--quality", type=_Whole(1, 100),
              help="JPEG quality of the re-encoded images (default 90).")
@click.option("--workers", callback=_workers, metavar="auto|N",
              help="Decoding processes (default auto: one per core, up to 8; 0: this one).")
@_progress_option(help="Progress bars.", expose_value=True)
def shards_cmd(source: str, out: str, resize: int | None, original: bool, square: bool,
               raw: bool, shard_size: int, quality: int | None, workers: int | str | None,
               progress: bool) -> None:
    """Write the image folder imagefolder:DIR (both splits; a flat val folder, as ImageNet's,
    with imagefolder:DIR?val_labels=FILE) as webdataset tar shards in OUT, with a
    manifest and an index; then `--data shards:OUT` reads them in every command,
    as it reads imagefolder:DIR. Broken images are skipped and named. OUT appears complete or
    not at all: a write stopped (Ctrl-C, SIGTERM, an error, a kill) keeps its finished shards in
    a hidden folder beside OUT, and the same command continues it, to the same bytes. Exit
    status: 0 written, 130 (SIGINT) / 143 (SIGTERM) interrupted."""
    import signal

    from zfnet.data.shard_writer import DEFAULT_QUALITY, DEFAULT_RESIZE, Terminated, write_shards

    if original and resize not in (None, 0):
        raise click.UsageError(f"--original and --resize {resize} both set what is stored: "
                               "give one of them")
    resize = 0 if original else (DEFAULT_RESIZE if resize is None else resize)
    if (square or raw) and not resize:
        raise click.UsageError(f"--{'raw' if raw else 'square'} stores centre squares at "
                               "--resize px: it cannot keep the original bytes (--original or "
                               "--resize 0)")
    if raw and quality is not None:
        raise click.UsageError(f"--quality {quality} is for JPEGs: --raw stores the pixels "
                               "uncompressed")
    try:
        m = write_shards(source, out, resize=resize, shard_size=shard_size,
                         quality=DEFAULT_QUALITY if quality is None else quality, square=square,
                         raw=raw, workers=None if workers == "auto" else workers,
                         progress=progress)
    except Terminated as e:  # as Ctrl-C's "interrupted (SIGINT)" and 130 (zfnet.cli.app._Commands)
        click.echo(f"interrupted ({e.signal})", err=True)
        sys.exit(128 + signal.Signals[e.signal])
    splits = m["splits"]
    skipped = sum(len(s["skipped"]) for s in splits.values())
    what = (f"as {resize} px centre squares" + (" of raw pixels" if raw else "")
            if square or raw else f"at {resize} px") if resize else "as the original files"
    click.echo(", ".join(f"{s['count']} {name} images in {len(s['shards'])} shard(s)"
                         for name, s in splits.items())
               + f" {what}" + (f" ({_broken_files(skipped)} skipped)" if skipped else "")
               + f": {out}; read them with --data shards:{out}")
    over = [s for split in splits.values() for s in split["shards"] if s["bytes"] > shard_size]
    if over:
        click.echo(f"note: {len(over)} shard(s) hold one image larger than --shard-size "
                   f"{shard_size} bytes (a shard holds at least one image)", err=True)
