"""The explorer's web server: the page and the JSON API under /api/ (docs/explorer.md) over one
`Explorer`, served by FastAPI/uvicorn.

Work on the model never runs on the event loop: interactive requests (maps, projections, the
top classes) go to one worker thread, in order (uploads are decoded beside it, on a thread of
their own, and only kept on it), and the long computations (the top-k index,
occlusion, evolution) to the job runner's thread with their own copy of the model, so a page
stays live while a job runs. Every error a request can cause is a JSON `{"error": "..."}` of
one line with a 4xx status; the server keeps serving. Nothing outside the package's assets is
readable through it: images are addressed by id (`val:N`, `up:HEX`), never by path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from zfnet.explorer.jobs import JobRunner
from zfnet.explorer.session import Explorer, ExplorerError, NotFoundError
from zfnet.graph import RuleUndefinedError, set_nonlinear

MAX_UPLOAD = 20 * 1024 * 1024  # bytes
STATIC = Path(str(files("zfnet.explorer") / "static"))
# a figure's URL names the same picture only on the same model and data (a server restarted on
# another model answers /api/image/val:0.png with another image): the browser keeps it, and
# asks whether it is still good (ETag: the explorer's id and the URL) before each use
PNG_HEADERS = {"Cache-Control": "private, no-cache"}


class TooLarge(ExplorerError):
    """An upload over the size limit."""


# every /api/ answer names the model and data it comes from (`Explorer.id`, /api/model's id):
# a page left open while the server was started again on another model sees the change at its
# next request, and asks for a reload instead of mixing the two models' layers and pictures
SERVER_ID_HEADER = "X-Explorer-Id"

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
CLIENT_HEADER = "x-client-id"  # the page sends a random id of its tab's, kept over reloads



class AsciiJSON(JSONResponse):
    """JSON with every character past ASCII escaped (`\\u00e9`): text that holds a file name
    that is no UTF-8 (an old archive's; Python holds its odd bytes as surrogates, which UTF-8
    cannot write), an error message naming it, is sent as its escapes, not lost to a
    UnicodeEncodeError with every list it is in. The names the session lists are `printable`
    already, as the reports show them."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("ascii")


def client_of(request: Request) -> str:
    """Who asks, for the jobs (a cancel stops a job only when no one else follows it): the
    page's own id (header X-Client-Id), or for a script without one its address."""
    given = request.headers.get(CLIENT_HEADER, "")[:64]
    if given:
        return f"page:{given}"
    return f"address:{request.client.host if request.client else '?'}"


def create_app(explorer: Explorer, *, max_upload: int = MAX_UPLOAD,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The FastAPI application serving `explorer`: the page at /, its assets at /static/, the
    API at /api/ (its OpenAPI schema at /api/openapi.json). allowed_hosts: the Host headers
    answered (None: any); a server on the loopback answers only to its own names, so that no
    other web page can reach it through a DNS name that points there (DNS rebinding)."""
    # the model's one user; it and the jobs' thread walk non-linearities as the explorer says
    work = ThreadPoolExecutor(1, thread_name_prefix="zfnet-view", initializer=set_nonlinear,
                              initargs=(explorer.nonlinear,))
    # uploads are decoded beside it, one at a time (a class's 12-MP photos made a click wait
    # 4.4 s behind them; one decoded photo at a time keeps the memory they take bounded)
    decoding = ThreadPoolExecutor(1, thread_name_prefix="zfnet-decode")
    jobs = JobRunner(explorer.nonlinear)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        jobs.shutdown()  # a running job stops at its next progress report
        work.shutdown(wait=False, cancel_futures=True)
        decoding.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="zfnet explorer", docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json", lifespan=lifespan,
                  default_response_class=AsciiJSON)
    app.state.explorer, app.state.jobs = explorer, jobs

    @app.middleware("http")
    async def png_etag(request: Request, call_next: Callable[..., Any]) -> Any:
        # the figures (/api/….png): 304 for one the browser has from this model and data
        # (inside the check of the Host below: the middleware added last runs first)
        path = request.url.path
        if request.method != "GET" or not (path.startswith("/api/") and path.endswith(".png")):
            return await call_next(request)
        drawn = (f"{explorer.occlusion_precision} {explorer.nonlinear} {path}?"
                 f"{request.url.query}").encode()  # how, besides the model and data
        tag = f'"{explorer.id}-{hashlib.sha1(drawn).hexdigest()[:16]}"'
        if tag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers={**PNG_HEADERS, "ETag": tag})
        response = await call_next(request)
        if response.status_code == 200:
            response.headers["ETag"] = tag
        return response

    @app.middleware("http")
    async def name_the_model(request: Request, call_next: Callable[..., Any]) -> Any:
        response = await call_next(request)
        if request.url.path.startswith("/api/"):
            response.headers[SERVER_ID_HEADER] = explorer.id
        return response

    if allowed_hosts is not None:
        allowed = list(allowed_hosts)
        names = ", ".join(h for h in allowed if not h.startswith("["))

        @app.middleware("http")
        async def own_names_only(request: Request, call_next: Callable[..., Any]) -> Any:
            # DNS rebinding: another site's page must not reach the server under a name of
            # its own; told in JSON as every error (Starlette's TrustedHostMiddleware answers
            # in plain text)
            host = request.headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in allowed:
                return AsciiJSON({"error": f"host {host!r} is not served here: this server "
                                              f"answers to {names} only"}, status_code=400)
            return await call_next(request)

    @app.middleware("http")
    async def same_origin_changes(request: Request, call_next: Callable[..., Any]) -> Any:
        # an upload or a cancel comes from the server's own page (or a script, which sends no
        # Origin): another site's page open in the same browser may not post to it
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin is not None:
            host = request.headers.get("host", "")
            if origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
                return AsciiJSON({"error": f"a {request.method} from the page of {origin} "
                                              "is refused: only this server's own page (or a "
                                              "script) may change what it holds"},
                                    status_code=403)
        return await call_next(request)

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(work.submit(fn, *args))

    # --- errors: one JSON line, never a traceback ---

    @app.exception_handler(ExplorerError)
    async def _bad(_: Request, e: ExplorerError) -> JSONResponse:
        status = 413 if isinstance(e, TooLarge) else 404 if isinstance(e, NotFoundError) \
            else 400
        return AsciiJSON({"error": str(e)}, status_code=status)

    @app.exception_handler(RuleUndefinedError)
    async def _undefined(_: Request, e: RuleUndefinedError) -> JSONResponse:
        # the rule, not the server; in the server's words (rule=, zfnet serve --nonlinear)
        return AsciiJSON({"error": e.message(server=True)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return AsciiJSON({"error": "; ".join(parts)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        text = e.detail if isinstance(e.detail, str) else "error"
        if e.status_code == 404:
            text = "not found: see /api/openapi.json or docs/explorer.md for the routes"
        allow = (e.headers or {}).get("Allow")
        if e.status_code == 405 and allow:
            text = f"{request.url.path} takes {allow}, not {request.method}"
        return AsciiJSON({"error": text}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        print(f"zfnet serve: {type(e).__name__}: {e}", file=sys.stderr)
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return AsciiJSON({"error": f"internal error: {line}"}, status_code=500)

    # --- the page ---

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return AsciiJSON({"error": "the page's files are missing from this install"},
                                status_code=500)
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    if STATIC.is_dir():
        app.mount("/static", _Assets(directory=STATIC), name="static")

    # --- the model, its layers and images ---

    @app.get("/api/model")
    async def model() -> dict[str, Any]:
        """The model, its dataset and what the page can show."""
        return {**await call(explorer.describe), "max_upload": max_upload}

    @app.get("/api/layers")
    async def layers() -> dict[str, Any]:
        """Every layer with maps: name, module, kind, maps, size, receptive field, stride."""
        return {"layers": [r.to_dict() for r in explorer.layers]}

    @app.get("/api/images")
    async def images(offset: int = 0, limit: int = 60) -> dict[str, Any]:
        """A page of the dataset's images."""
        return await call(explorer.images, offset, limit)

    @app.get("/api/image/{image_id}.png")
    async def image_png(image_id: str) -> Response:
        """An image as the model sees it."""
        return _png(await call(explorer.image_png, image_id))

    @app.post("/api/images", status_code=201)
    async def upload(request: Request) -> Any:
        """Upload an image: the raw bytes of the file as the body (X-Filename: its name)."""
        if request.headers.get("content-type", "").lower().startswith("multipart/"):
            raise ExplorerError("the upload is a multipart form (curl -F, httpx files=): send "
                                "the file's bytes as the body instead (curl --data-binary "
                                "@FILE, httpx content=...), its name in the X-Filename header")
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_upload:
            raise TooLarge(_too_large(int(size), max_upload))
        chunks, total = [], 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > max_upload:
                    raise TooLarge(_too_large(total, max_upload, at_least=True))
                chunks.append(chunk)
        except ClientDisconnect:  # a laptop closed mid-upload: no one to tell, nothing to log
            return AsciiJSON({"error": "the upload was cut off before its end"},
                                status_code=400)
        name = _file_name(request.headers.get("x-filename") or "") or None
        decoded = await asyncio.wrap_future(
            decoding.submit(explorer.decode_upload, b"".join(chunks), name))
        entry = await call(explorer.keep_upload, decoded)
        w, h = entry.original
        return {"id": entry.id, "src": f"/api/image/{entry.id}.png", "name": entry.name,
                "width": w, "height": h}

    @app.get("/api/predict")
    async def predict(image: str) -> dict[str, Any]:
        """The model's top-5 classes on the image."""
        return await call(explorer.predict, image)

    @app.get("/api/classes")
    async def classes(name: str | None = None) -> dict[str, Any]:
        """The model's classes and the layer scoring them; with `name` (a class's name, a
        synonym of it, or its number), that one class and its unit."""
        return await call(explorer.classes, name)

    @app.get("/api/maps")
    async def maps(image: str, layer: str) -> dict[str, Any]:
        """The layout of the layer's maps for the image in the sprite, each map's maximum."""
        return await call(explorer.maps, image, layer)

    @app.get("/api/maps.png")
    async def maps_png(image: str, layer: str) -> Response:
        """Every map of the layer for the image, one sprite."""
        return _png(await call(explorer.maps_png, image, layer))

    # --- one unit ---

    @app.get("/api/unit")
    async def unit(image: str, layer: str, unit: int, row: int | None = None,
                   col: int | None = None, seed: str = "activation") -> dict[str, Any]:
        """A unit: its position (default: the map's strongest), activation, receptive field,
        and the URLs of its projections (seeded with its activation, or with 1) and patch."""
        return await call(explorer.unit, image, layer, unit, row, col, seed)

    @app.get("/api/projection.png")
    async def projection(image: str, layer: str, unit: int, rule: str = "deconvnet",
                         row: int | None = None, col: int | None = None,
                         seed: str = "activation") -> Response:
        """The unit projected to pixels by `rule`, cut to its receptive field; `seed`: what
        it goes down with, its activation's value or 1."""
        return _png(await call(explorer.projection_png, image, layer, unit, rule, row, col,
                               seed))

    @app.get("/api/patch.png")
    async def patch(image: str, layer: str, unit: int, row: int | None = None,
                    col: int | None = None) -> Response:
        """The image's patch under the unit's receptive field."""
        return _png(await call(explorer.patch_png, image, layer, unit, row, col))

    # --- long computations: 200 with the result, or 202 with the job computing it ---

    def started(request: Request, kind: str, key: tuple, what: str, fn: Callable[..., None],
                *args: Any, abandonable: bool = True) -> JSONResponse:
        """202 with the job computing `key` (joined if queued or running; a cancelled one is
        tried again; a failed one is told as a 400 once, then tried again). An abandonable
        job is dropped once no client asks about it (`zfnet.explorer.jobs`)."""
        failed = jobs.untold_failure(key)
        if failed is not None:
            raise ExplorerError(f"{failed.what} failed: {failed.error} (asking again tries "
                                "again)")
        job = jobs.submit(kind, key, what, lambda progress: fn(*args, progress), abandonable,
                          client_of(request))
        return AsciiJSON({"job": jobs.describe(job)}, status_code=202)

    @app.get("/api/topk")
    async def topk(request: Request, layer: str, unit: int) -> Any:
        """The unit's top-k over the dataset (the index is mined once per layer)."""
        out = await call(explorer.topk, layer, unit)
        if out is not None:
            return out
        name = explorer.layer(layer).name
        if not explorer.n_images:
            raise ExplorerError("no dataset to mine: start the server with --data SPEC")
        return started(request, "topk", ("topk", name),
                       f"top-{explorer.k} index of {name} over {explorer.n_images} images",
                       explorer.topk_job, name, abandonable=False)  # shared, kept on disk

    @app.get("/api/topk.png")
    async def topk_png(layer: str, unit: int, rule: str = "deconvnet") -> Response:
        """The unit's k projections (by `rule`) beside their k image patches."""
        return _png(await call(explorer.topk_png, layer, unit, rule))

    @app.get("/api/occlusion")
    async def occlusion(request: Request, image: str, layer: str | None = None,
                        unit: int | None = None) -> Any:
        """The four occlusion maps of Fig. 7 for the image: maps (b) and (c) of the picked
        unit (layer and unit), or of the image's strongest map of the default layer."""
        entry = await call(explorer.image, image)  # an unknown image: an error now
        layer, unit = explorer.occlusion_unit(layer, unit)
        done = explorer.occlusions.get((entry.id, layer, unit))
        if done is not None:
            return {k: v for k, v in done.items() if k != "png"}
        word = "map" if layer is None or explorer.layer(layer).size else "unit"  # as the page
        what = f"{layer} {word} {unit}" if layer is not None else "its strongest map"
        return started(request, "occlusion", ("occlusion", entry.id, layer, unit),
                       f"occlusion maps of {entry.id} ({what})",
                       explorer.occlusion_job, entry.id, layer, unit)

    @app.get("/api/occlusion.png")
    async def occlusion_png(image: str, layer: str | None = None,
                            unit: int | None = None) -> Response:
        layer, unit = explorer.occlusion_unit(layer, unit)
        done = explorer.occlusions.get((image, layer, unit))
        if done is None:
            picked = f"&layer={layer}&unit={unit}" if layer is not None else ""
            raise NotFoundError(f"no occlusion maps of {image!r} yet: GET "
                                f"/api/occlusion?image={image}{picked} computes them")
        return _png(done["png"])

    def _evolution_possible() -> None:
        if not explorer.evolution_checkpoints:
            raise NotFoundError("evolution needs a zfnet run with kept epochs: zfnet serve "
                                "--checkpoint RUN (zfnet train --keep-epochs)")

    @app.get("/api/evolution")
    async def evolution(request: Request, layer: str, unit: int) -> Any:
        """The unit across the run's kept epochs (Fig. 4)."""
        lr = explorer.layer(layer)
        explorer.unit_index(lr, unit)
        _evolution_possible()
        done = explorer.evolutions.get((lr.name, unit))
        if done is not None:
            return {k: v for k, v in done.items() if k != "png"}
        epochs = len(explorer.evolution_checkpoints)
        return started(request, "evolution", ("evolution", lr.name, unit),
                       f"evolution of {lr.name} {'map' if lr.size else 'unit'} {unit} over "
                       f"{epochs} epochs",
                       explorer.evolution_job, lr.name, unit)

    @app.get("/api/evolution.png")
    async def evolution_png(layer: str, unit: int) -> Response:
        name = explorer.layer(layer).name
        _evolution_possible()  # the true reason, not "not computed yet"
        done = explorer.evolutions.get((name, unit))
        if done is None:
            raise NotFoundError(f"no evolution of {name} unit {unit} yet: GET "
                                f"/api/evolution?layer={name}&unit={unit} computes it")
        return _png(done["png"])

    # --- jobs ---

    @app.get("/api/jobs")
    async def all_jobs() -> dict[str, Any]:
        """Every recent job, oldest first."""
        return {"jobs": [jobs.describe(j) for j in jobs.all()]}

    @app.get("/api/jobs/{job_id}")
    async def job(request: Request, job_id: str) -> dict[str, Any]:
        """A job's state and progress."""
        j = jobs.get(job_id, client_of(request))
        if j is None:
            raise NotFoundError(f"no job {job_id!r}; GET /api/jobs lists them")
        return jobs.describe(j)

    @app.delete("/api/jobs/{job_id}")
    async def cancel(request: Request, job_id: str) -> dict[str, Any]:
        """Cancel a job (a finished one stays as it is). A job other clients follow goes on
        for them: `others` counts them."""
        client = client_of(request)
        j = jobs.cancel(job_id, client)
        if j is None:
            raise NotFoundError(f"no job {job_id!r}; GET /api/jobs lists them")
        live = j.state in ("queued", "running")
        return {**jobs.describe(j), "others": j.others(client, jobs.abandon_after) if live else 0}

    return app


class _Assets(StaticFiles):
    """The page's script and style, checked by the browser before each use (ETag): after an
    upgrade of zfnet, a browser's kept explorer.js from the last version must not run the
    new page (no Cache-Control let browsers keep it for days by their own guess)."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers=PNG_HEADERS)


def _file_name(header: str) -> str:
    """The X-Filename header's name: percent-encoded (the page's), or its raw bytes as UTF-8
    (curl -H sends a name's own bytes, which arrive decoded as latin-1: "é" as "Ã©"; bytes
    that are not UTF-8 are kept as latin-1 read them)."""
    raw = header.encode("latin-1")  # the bytes sent: HTTP headers are read as latin-1
    try:
        header = raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    return unquote(header)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return (f"the upload is {more}{size / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB "
            "(zfnet serve --max-upload-mb)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` (an IPv4 or IPv6 address or name) now."""
    with socket.socket(socket.getaddrinfo(host, None)[0][0]) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Server:
    """uvicorn serving an app on a background thread (tests, benchmarks, the screenshot,
    `zfnet.explorer.serve.serve(background=True)`): `with Server(app) as url: ...`, or
    `start()` and `stop()`; `server.server.run()` serves in the calling thread instead."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6
        return f"http://{host}:{self.port}"

    def start(self) -> str:
        """Serve on the background thread; its URL once it answers."""
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self.url
            if not self.thread.is_alive():
                raise RuntimeError("the explorer's server did not start")
            threading.Event().wait(0.01)
        raise RuntimeError("the explorer's server did not start within 5 s")

    def stop(self) -> None:
        """Stop serving (the background thread ends within 10 s)."""
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
