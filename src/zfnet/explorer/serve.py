"""Serving the explorer on a model: what `zfnet serve` does, callable from Python on any source
(`zfnet.sources.load_source`, or `from_module` for a model object of your own).

    source = from_module(model, crop=32)
    serve(source, "images:my_photos")                       # until Ctrl-C
    server = serve(source, port=0, background=True)         # in a notebook: returns at once
    print(server.url); ...; server.stop()

The address is checked first (a dataset can take a while to scan), then the dataset is read as
the model's inputs, the top-k index's cache folder chosen, and the page served.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zfnet.cache import cache_root
from zfnet.explorer.app import LOOPBACK, MAX_UPLOAD, Server, create_app, free_port
from zfnet.explorer.session import Explorer


def check_address(host: str, port: int) -> int:
    """The port to serve on (`port`, or a free one for 0) once `host:port` is known to be
    free to listen on; a ValueError naming the address otherwise."""
    try:
        family = socket.getaddrinfo(host, port or None)[0][0]
        port = port or free_port(host)
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            s.bind((host, port))
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return port


def default_cache() -> Path:
    """Where top-k indexes are kept unless told: `zfnet.cache.cache_root()`/explorer."""
    return cache_root() / "explorer"


ANY_ADDRESS = ("0.0.0.0", "::", "")


def _where(server: Server) -> str:
    """The address to open: the server's URL, or for one on every address (`--host 0.0.0.0`,
    a class) the loopback here and this machine's name from others (http://0.0.0.0/ opens
    nothing on a student's laptop)."""
    if server.host not in ANY_ADDRESS:
        return f"{server.url}/"
    here = "[::1]" if server.host == "::" else "127.0.0.1"
    return (f"http://{here}:{server.port}/ here; from other computers "
            f"http://{socket.gethostname()}:{server.port}/ (or this machine's address)")


def serve(source: Any, data: str | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          cache_dir: str | Path | None = None, images: int | None = None, k: int = 9,
          max_upload: int = MAX_UPLOAD, occlusion_precision: str = "float32",
          nonlinear: str | None = None, background: bool = False,
          echo: Callable[[str], Any] = print) -> Server | None:
    """Serve the explorer on `source` (a `zfnet.sources.Source`) with the images of the
    dataset `data` (default: a zfnet run's own; for other models `sample-photos`, the 6 built-in
    ones), and the images dropped onto the page.

    `port` 0 takes a free one. `images`: mine the top-k over the first N images; `k`: how many
    (9, Fig. 2). `max_upload` in bytes. `occlusion_precision`, `nonlinear`: as `Explorer`
    takes them. A host other than a loopback address serves every name it is reached by (the
    page has no login). `echo` tells what is served and where. Blocks until Ctrl-C, or with
    `background` returns the running `Server` at once (`server.url`, `server.stop()`).
    """
    from zfnet.sources import load_data
    from zfnet.train import run_checkpoints

    port = check_address(host, port)
    bundle = load_data(source, data or (None if source.kind == "run" else "sample-photos"),
                       read_train=False)  # the explorer shows the val split alone
    kept = run_checkpoints(source.meta["checkpoint"]) if source.kind == "run" else []
    explorer = Explorer(source, bundle, cache_dir=Path(cache_dir) if cache_dir else
                        default_cache(), n_images=images, k=k,
                        evolution=kept if len(kept) > 1 else None, nonlinear=nonlinear,
                        occlusion_precision=occlusion_precision)
    app = create_app(explorer, max_upload=max_upload,
                     allowed_hosts=LOOPBACK if host in LOOPBACK else None)
    server = Server(app, host, port)
    n, mined = explorer.n_shown, explorer.n_images
    echo(f"zfnet explorer: {source.name}, {n} image{'s' * (n != 1)} of {bundle.spec}"
         + (f" (the top-{k} mined over the first {mined})" if mined < n else "")
         + (" (the built-in photos; --data images:DIR shows yours)"
            if bundle.spec == "sample-photos" and data is None else ""))
    where = _where(server)
    if background:
        server.start()
        echo(f"open {where}  (server.stop() stops it)")
        return server
    echo(f"open {where}  (Ctrl-C stops it)")
    server.server.run()
    return None
