"""The explorer's HTTP API (zfnet.explorer.app over zfnet.explorer.session): every view equals
what the engines give directly, bad requests get one-line JSON errors and the server keeps
serving, nothing outside the package's assets is readable, long jobs run off the request thread
with progress and cancel, and the top-k index is kept on disk."""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from zfnet.activations import get_activations
from zfnet.analyses.gallery import project_topk, render_layer, topk_patches
from zfnet.analyses.topk import mine_topk
from zfnet.data import BrokenImageWarning
from zfnet.deconvnet import project
from zfnet.display import projection_to_uint8
from zfnet.explorer.app import LOOPBACK, create_app
from zfnet.explorer.jobs import Cancelled, JobRunner
from zfnet.explorer.session import Explorer, NotFoundError
from zfnet.models import layer_geometry
from zfnet.sources import from_module, load_data, load_source
from zfnet.train import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def explorer(tiny_run, tmp_path_factory) -> Explorer:
    source = load_source(str(tiny_run))
    bundle = load_data(source, None)
    return Explorer(source, bundle, cache_dir=tmp_path_factory.mktemp("cache"),
                    evolution=list_checkpoints(tiny_run))


@pytest.fixture(scope="module")
def client(explorer) -> TestClient:
    with TestClient(create_app(explorer, max_upload=200_000)) as c:
        yield c


def _png(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


def _error(r, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    text = r.json()["error"]
    assert "\n" not in text and "Traceback" not in text
    for w in words:
        assert w in text, (w, text)
    return text


def _jpeg(size: int = 96) -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((size + 40, size)).save(buf, "JPEG")
    return buf.getvalue()


def _wait(client: TestClient, url: str) -> dict:
    r = client.get(url)
    deadline = time.monotonic() + 300  # generous: a loaded 2-core machine runs jobs slowly
    while r.status_code == 202 and time.monotonic() < deadline:
        job = r.json()["job"]
        assert job["state"] in ("queued", "running", "done"), job
        time.sleep(0.05)
        r = client.get(url)
    assert r.status_code == 200, r.text
    return r.json()


def test_model_layers_and_images(client, explorer) -> None:
    m = client.get("/api/model").json()
    assert m["kind"] == "run" and m["input"] == {"channels": 3, "size": [32, 32]}
    assert m["classes"] == 10 and m["labels"] and m["data"]["images"] == 32
    assert m["evolution"] == {"epochs": [1, 2]} and m["default_layer"] == "conv5"
    assert m["score_layer"] == "fc8"  # its units: the classes the top-5 names
    layers = client.get("/api/layers").json()["layers"]
    names = [lr["name"] for lr in layers]
    assert names[:4] == ["conv1", "relu1", "pool1", "norm1"] and "fc6" in names
    assert not any(n.startswith("drop") for n in names)  # the identity at inference
    conv5 = next(lr for lr in layers if lr["name"] == "conv5")
    g = layer_geometry(explorer.model, "conv5", 32)
    assert conv5["rf"] == [g.rows.rf, g.cols.rf] and conv5["size"] == [g.rows.size] * 2
    assert conv5["maps"] == explorer.model.features.conv5.out_channels
    fc6 = next(lr for lr in layers if lr["name"] == "fc6")
    assert fc6["spatial"] is False and fc6["size"] is None
    page = client.get("/api/images?offset=30&limit=10").json()
    assert page["total"] == 32 and [i["id"] for i in page["items"]] == ["val:30", "val:31"]
    img = _png(client.get("/api/image/val:30.png"))
    assert np.array_equal(img, explorer.bundle.raw_val(30).permute(1, 2, 0).numpy())


def test_predict_and_maps_equal_the_model(client, explorer) -> None:
    x = explorer.val[5][0][None]
    with torch.inference_mode():
        p = torch.softmax(explorer.model(x)[0], 0)
    top = client.get("/api/predict?image=val:5").json()["top"]
    assert [t["class"] for t in top] == p.topk(5).indices.tolist()
    assert top[0]["p"] == pytest.approx(float(p.max()), abs=1e-5)
    assert top[0]["name"] == explorer.bundle.class_names[top[0]["class"]]
    act = get_activations(explorer.model, x, ["conv2"])["conv2"][0]  # (C, h, w)
    m = client.get("/api/maps?image=val:5&layer=conv2").json()
    c, h, w = act.shape
    assert (m["maps"], m["size"]) == (c, [h, w])
    np.testing.assert_allclose(m["max"], act.reshape(c, -1).amax(1).numpy(), atol=1e-4)
    sprite = _png(client.get(m["sprite"]))
    th, tw = m["tile"]
    rows = -(-c // m["cols"])
    assert sprite.shape == (rows * (th + 1) - 1, m["cols"] * (tw + 1) - 1)
    for k in (0, c - 1):  # each tile: the map scaled to its own maximum
        y, x0 = (k // m["cols"]) * (th + 1), (k % m["cols"]) * (tw + 1)
        tile = sprite[y:y + th:th // h, x0:x0 + tw:tw // w]
        a = act[k].clamp(min=0)
        want = (a / a.max().clamp_min(1e-12) * 255).round().numpy()
        assert np.abs(tile.astype(float) - want).max() <= 1


def test_unit_projection_and_patch_equal_the_engine(client, explorer) -> None:
    u = client.get("/api/unit?image=val:3&layer=conv3&unit=7").json()
    x = explorer.val[3][0][None]
    act = get_activations(explorer.model, x, ["conv3"])["conv3"][0, 7]
    r, c = divmod(int(act.argmax()), act.shape[1])
    assert (u["row"], u["col"]) == (r, c)
    assert u["activation"] == pytest.approx(float(act.max()), abs=1e-5)
    assert u["active"] is (float(act.max()) > 0)
    g = layer_geometry(explorer.model, "conv3", 32)
    assert u["box"] == list(g.box(r, c, (32, 32)))
    assert f"model={explorer.id}" in u["link"] and "unit=7" in u["link"]
    top, left = g.rows.first + r * g.rows.jump, g.cols.first + c * g.cols.jump
    side = g.rows.rf
    assert list(u["rules"]) == ["deconvnet", "guided", "gradient"] and u["undefined"] == {}
    for rule in ("deconvnet", "guided", "gradient"):
        full = project(explorer.model, x, "conv3", [7], torch.tensor([[r, c]]), rule)[0]
        win = torch.zeros(3, side, side)  # the receptive field's window, zero outside
        t0, l0 = max(top, 0), max(left, 0)
        win[:, t0 - top:min(top + side, 32) - top, l0 - left:min(left + side, 32) - left] = \
            full[:, t0:top + side, l0:left + side]
        want = projection_to_uint8(win).permute(1, 2, 0).numpy()
        got = _png(client.get(u["rules"][rule]))
        assert np.array_equal(got, want), rule
    patch = _png(client.get(u["patch"]))
    raw = explorer.bundle.raw_val(3)
    t1, l1 = min(top + side, 32), min(left + side, 32)
    assert np.array_equal(patch[t0 - top:t1 - top, l0 - left:l1 - left],
                          raw[:, t0:t1, l0:l1].permute(1, 2, 0).numpy())
    # a position given, and a flat layer
    v = client.get("/api/unit?image=val:3&layer=conv3&unit=7&row=0&col=0").json()
    assert (v["row"], v["col"]) == (0, 0) and v["activation"] == pytest.approx(
        float(act[0, 0]), abs=1e-5)
    assert v["active"] is (float(act[0, 0]) > 0)
    idle = (act <= 0).nonzero()  # an inactive position: every rule projects it to nothing
    assert len(idle)
    q = f"image=val:3&layer=conv3&unit=7&row={int(idle[0, 0])}&col={int(idle[0, 1])}"
    w = client.get(f"/api/unit?{q}").json()
    assert w["active"] is False
    for rule in ("deconvnet", "guided", "gradient"):
        assert explorer.projection("val:3", "conv3", 7, rule, w["row"], w["col"]).abs(
            ).max() == 0
    fc = get_activations(explorer.model, x, ["fc7"])["fc7"][0].clamp(min=0)  # (F,)
    sprite = _png(client.get("/api/maps.png?image=val:3&layer=fc7"))
    m = client.get("/api/maps?image=val:3&layer=fc7").json()
    th, tw = m["tile"]
    tiles = [sprite[(i // m["cols"]) * (th + 1), (i % m["cols"]) * (tw + 1)]
             for i in range(m["maps"])]
    want = (fc / fc.max() * 255).round().numpy()  # a flat layer: scaled by the layer's max
    assert np.abs(np.array(tiles, float) - want).max() <= 1
    f = client.get("/api/unit?image=val:3&layer=fc7&unit=2").json()
    assert f["box"] is None and _png(client.get(f["rules"]["gradient"])).shape[:2] == (32, 32)
    # the class scores' units are named by their classes; no other unit is
    assert f["name"] is None and u["name"] is None
    s = client.get("/api/unit?image=val:3&layer=fc8&unit=2").json()
    assert s["name"] == explorer.bundle.class_names[2]
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in explorer.model.modules())


def test_a_unit_below_zero_seeded_with_one(client, explorer) -> None:
    """`seed=one`: the unit's projections go down seeded with 1 (Captum's seed), so a class
    score below zero shows what would raise it; the URLs and the link carry the seed, and an
    unknown seed is one line."""
    x = explorer.val[3][0][None]
    scores = get_activations(explorer.model, x, ["fc8"])["fc8"][0]
    k = int(scores.argmin())
    assert scores[k] < 0
    u = client.get(f"/api/unit?image=val:3&layer=fc8&unit={k}").json()
    assert u["active"] is False and u["seed"] == "activation"
    assert "seed" not in u["rules"]["gradient"] and "seed" not in u["link"]
    one = client.get(f"/api/unit?image=val:3&layer=fc8&unit={k}&seed=one").json()
    assert one["seed"] == "one" and "seed=one" in one["link"]
    for rule in ("deconvnet", "guided", "gradient"):
        assert one["rules"][rule].endswith(f"rule={rule}&seed=one")
        want = project(explorer.model, x, "fc8", [k], rule=rule, seed="one")[0]
        assert want.abs().max() > 0
        want = want * explorer.pre.pixel_scale().reshape(-1, 1, 1)
        got = _png(client.get(one["rules"][rule]))
        assert np.array_equal(got, projection_to_uint8(want).permute(1, 2, 0).numpy()), rule
        blank = _png(client.get(u["rules"][rule]))  # the activation's seed: nothing
        assert (blank == blank.flat[0]).all()
    _error(client.get("/api/unit?image=val:3&layer=fc8&unit=0&seed=1"), 400,
           "seed '1' is not known; valid: activation, one")
    _error(client.get("/api/projection.png?image=val:3&layer=fc8&unit=0&seed=ones"), 400,
           "valid: activation, one")


def test_uploads(client, explorer) -> None:
    data = _jpeg()
    r = client.post("/api/images", content=data, headers={"X-Filename": "astronaut.jpg"})
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["id"].startswith("up:") and (up["width"], up["height"]) == (136, 96)
    img = _png(client.get(up["src"]))
    assert img.shape == (32, 32, 3)
    from zfnet.data.images import load_rgb

    x = explorer.pre.to_input(load_rgb(io.BytesIO(data), min_side=explorer.pre.resize))
    with torch.inference_mode():
        p = torch.softmax(explorer.model(x[None])[0], 0)
    predicted = client.get(f"/api/predict?image={up['id']}").json()
    assert predicted["top"][0]["class"] == int(p.argmax())
    assert predicted["name"] == "astronaut.jpg"  # a page opened by a link names it so
    assert client.get(f"/api/maps?image={up['id']}&layer=conv1").status_code == 200
    again = client.post("/api/images", content=data).json()  # the same bytes, unnamed
    assert (again["id"], again["name"]) == (up["id"], "astronaut.jpg")
    named = client.post("/api/images", content=data, headers={"X-Filename": "caf%C3%A9.jpg"})
    assert named.json()["name"] == "café.jpg"
    assert client.get("/api/model").json()["max_upload"] == 200_000
    _error(client.post("/api/images", content=b"%PDF-1.4 not an image",
                       headers={"X-Filename": "paper.pdf"}), 400, "paper.pdf", "not an image")
    _error(client.post("/api/images", content=data[: len(data) // 2]), 400, "cannot be read")
    _error(client.post("/api/images", content=b""), 400, "empty")
    _error(client.post("/api/images", content=b"\xff" * 300_000), 413, "limit", "MiB")
    # a multipart form (curl -F, httpx files=): told how to send the file instead
    _error(client.post("/api/images", files={"file": ("astronaut.jpg", data, "image/jpeg")}),
           400, "multipart form", "--data-binary")
    _error(client.post("/api/images", content=_huge_png(12_000, 9_000)), 400,
           "12000x9000", "108 megapixels", "up to 40")
    # a strip of few pixels: its centre kept at 64 times its shorter side (as every command),
    # so it is no larger than a 64:1 image once resized, and taken
    strip = io.BytesIO()
    Image.fromarray(np.arange(2000 * 3, dtype=np.uint8).reshape(1, 2000, 3)).save(strip, "PNG")
    up = client.post("/api/images", content=strip.getvalue()).json()
    assert (up["width"], up["height"]) == (2000, 1) and _png(client.get(up["src"])).shape == \
        (32, 32, 3)
    assert client.get("/api/model").status_code == 200  # still serving


def test_an_uploads_name_sent_as_utf8_bytes_is_read_as_utf8(client) -> None:
    """curl -H "X-Filename: my photo é 日本.jpg" sends the name's UTF-8 bytes, which HTTP reads
    as latin-1: it was kept as "my photo Ã© æ¥æ¬.jpg". Percent-encoded names (the page's)
    are read as before, and bytes that are not UTF-8 as latin-1 reads them."""
    from urllib.parse import quote

    name = "my photo é 日本.jpg"
    for header, want in ((name.encode(), name), (quote(name).encode(), name),
                         ("café.jpg".encode("latin-1"), "café.jpg")):
        up = client.post("/api/images", content=_jpeg(), headers={"X-Filename": header})
        assert up.status_code == 201 and up.json()["name"] == want, up.text


def test_an_upload_a_large_resize_would_make_too_large_says_how_to_crop_it(tmp_path) -> None:
    """A 2000x1 strip was said to "be 131 megapixels" at a resize of 256, where the centre kept
    (64 times its shorter side) makes it 4; a model's large resize can pass the limit, and the
    message says what it would be and how far to crop."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 3, 32, 32))
    e = Explorer(from_module(net, resize=1024, crop=32), None, cache_dir=tmp_path)
    with TestClient(create_app(e)) as c:
        _error(c.post("/api/images", content=_huge_png(2000, 1)), 400, "2000x1",
               "with its shorter side at the model's 1024 px and its longer side 64 times that, "
               "it would be 67 megapixels, over the explorer's 40; crop it to at most 38:1 "
               "first")
        # 20:1 makes 21 megapixels: past the size check (to its pixels, which are not there)
        _error(c.post("/api/images", content=_huge_png(2000, 100)), 400, "cannot be read")


def test_an_uploaded_phone_photo_is_upright_and_sized_so(client) -> None:
    """A JPEG stored on its side with an EXIF rotation (as phones write them): its width and
    height are those of the photo upright, as it is shown."""
    from skimage import data

    upright = Image.fromarray(data.astronaut()).resize((136, 96))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes())
    up = client.post("/api/images", content=buf.getvalue()).json()
    assert (up["width"], up["height"]) == (136, 96)


def _huge_png(w: int, h: int) -> bytes:
    """A PNG whose header says w x h (a few bytes: its pixels are never decoded)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("url,status,words", [
    ("/api/maps?image=val:0&layer=conv9", 400, ("conv9", "valid: conv1")),
    ("/api/maps?image=val:99&layer=conv1", 404, ("val:99", "val:0..val:31")),
    ("/api/maps?image=up:0123&layer=conv1", 404, ("upload it again",)),
    ("/api/maps?image=/etc/passwd&layer=conv1", 400, ("not an image id", "val:N")),
    ("/api/maps?image=val:../../etc/passwd&layer=conv1", 400, ("not an image id",)),
    ("/api/maps?image=val:%C2%B2&layer=conv1", 400, ("not an image id",)),  # "²".isdigit()
    ("/api/unit?image=val:0&layer=conv2&unit=5000", 400, ("unit 5000", "0..")),
    ("/api/unit?image=val:0&layer=conv2&unit=-1", 400, ("unit -1",)),
    ("/api/unit?image=val:0&layer=conv2&unit=x", 400, ("unit", "integer")),
    ("/api/unit?image=val:0&layer=conv2&unit=1&row=99&col=0", 400, ("outside", "rows 0..")),
    ("/api/unit?image=val:0&layer=conv2&unit=1&row=1", 400, ("both row and col",)),
    ("/api/unit?image=val:0&layer=fc6&unit=1&row=1&col=1", 400, ("flat layer",)),
    ("/api/projection.png?image=val:0&layer=conv2&unit=1&rule=magic", 400,
     ("magic", "deconvnet, guided, gradient")),
    ("/api/maps?image=val:0", 400, ("layer",)),
    ("/api/topk.png?layer=conv1&unit=0", 404, ("not mined yet",)),  # as occlusion's
    ("/api/occlusion.png?image=val:0", 404, ("computes them",)),
    ("/api/jobs/nope", 404, ("no job",)),
    ("/api/nothing", 404, ("not found",)),
    ("/static/../../../../etc/passwd", 404, ()),
    ("/static/%2e%2e/%2e%2e/session.py", 404, ()),
    ("/api/image/..%2F..%2F..%2Fetc%2Fpasswd.png", 404, ()),
])
def test_bad_requests_are_one_line_errors(client, url, status, words) -> None:
    _error(client.get(url), status, *words)
    assert client.get("/api/layers").status_code == 200


def test_a_wrong_method_names_the_one_the_route_takes(client) -> None:
    _error(client.post("/api/maps?image=val:0&layer=conv1"), 405, "/api/maps takes GET",
           "not POST")  # it said only 'Method Not Allowed'
    _error(client.get("/api/images/x"), 404, "not found")


def test_the_pages_script_is_checked_before_each_use(client) -> None:
    """After an upgrade, no browser runs the last version's explorer.js on the new page."""
    js = client.get("/static/explorer.js")
    assert js.status_code == 200 and js.headers["cache-control"] == "no-cache"
    again = client.get("/static/explorer.js", headers={"If-None-Match": js.headers["etag"]})
    assert again.status_code == 304


def test_nothing_but_the_assets_is_served(client) -> None:
    r = client.get("/static/../app.py")
    assert r.status_code == 404 and "create_app" not in r.text
    assert client.get("/api/openapi.json").json()["paths"]["/api/unit"]


def test_an_error_inside_a_view_leaves_the_server_serving(explorer, monkeypatch) -> None:
    def broken(*a, **k):
        raise RuntimeError("disk on fire\nsecond line")
    with TestClient(create_app(explorer), raise_server_exceptions=False) as client:
        monkeypatch.setattr(explorer, "maps", broken)
        _error(client.get("/api/maps?image=val:0&layer=conv1"), 500, "disk on fire")
        monkeypatch.undo()
        assert client.get("/api/maps?image=val:0&layer=conv1").status_code == 200


def test_topk_job_equals_mining_and_is_kept_on_disk(client, explorer, tiny_run) -> None:
    first = client.get("/api/topk?layer=conv4&unit=3")
    assert first.status_code == 202
    job = first.json()["job"]
    assert job["kind"] == "topk" and "conv4" in job["what"]
    got = _wait(client, "/api/topk?layer=conv4&unit=3")
    done = client.get(f"/api/jobs/{job['id']}").json()
    assert done["state"] == "done" and done["done"] == done["total"] == 32
    want = mine_topk(explorer.model, explorer.val, ["conv4"], 9)["conv4"]
    assert [it["image"] for it in got["items"]] == [f"val:{i}" for i in want.index[3].tolist()]
    np.testing.assert_allclose([it["activation"] for it in got["items"]],
                               want.values[3].numpy(), atol=1e-4)
    fig = _png(client.get(got["figure"]))
    proj = project_topk(explorer.model, explorer.val, {"conv4": want}, {"conv4": [3]})["conv4"]
    geo = layer_geometry(explorer.model, "conv4", 32)
    patches = topk_patches(want, [3], geo, (3, 32, 32), False, explorer.bundle.raw_val)
    buf = io.BytesIO()
    render_layer(proj, patches, buf)
    assert np.array_equal(fig, np.asarray(Image.open(buf)))
    assert got["rules"]["deconvnet"] == got["figure"] and got["rule"] == "deconvnet"
    assert got["name"] is None  # conv4's maps are not classes
    guided = _png(client.get(got["rules"]["guided"]))  # by another rule: another figure
    proj = project_topk(explorer.model, explorer.val, {"conv4": want}, {"conv4": [3]},
                        "guided")["conv4"]
    buf = io.BytesIO()
    render_layer(proj, patches, buf)
    assert np.array_equal(guided, np.asarray(Image.open(buf))) and not np.array_equal(guided, fig)
    _error(client.get(got["figure"] + "&rule=nope"), 400, "rule 'nope' is not known")
    # the index is on disk: another session of the same model and data does not mine again
    again = Explorer(explorer.source, explorer.bundle, cache_dir=explorer.cache_dir.parent)
    assert again.cache_dir == explorer.cache_dir and again.topk("conv4", 3) == got
    assert again.topk("conv5", 0) is None


def test_occlusion_and_evolution_jobs(client, explorer) -> None:
    occ = _wait(client, "/api/occlusion?image=val:2")
    assert occ["layer"] == "conv5" and 0 <= occ["target"]["class"] < 10
    assert (occ["method"], occ["precision"]) == ("incremental", "float32")
    assert occ["target"]["name"] in explorer.bundle.class_names
    assert occ["map_rule"] == "strongest"
    assert _png(client.get(occ["figure"])).ndim == 3
    # a picked unit: maps (b) and (c) are its own, the figure another one
    picked = _wait(client, "/api/occlusion?image=val:2&layer=conv3&unit=5")
    assert (picked["layer"], picked["map"], picked["map_rule"]) == ("conv3", 5, "picked")
    assert picked["target"] == occ["target"] and picked["figure"] != occ["figure"]
    assert not np.array_equal(_png(client.get(picked["figure"])), _png(client.get(occ["figure"])))
    assert occ["target"]["followed"] == picked["target"]["followed"] == "predicted"
    # a class's score picked (a unit of the class-score layer): (d) follows that class
    other = (occ["target"]["class"] + 1) % 10
    chosen = _wait(client, f"/api/occlusion?image=val:2&layer=fc8&unit={other}")
    assert chosen["target"] == {"class": other, "name": explorer.bundle.class_names[other],
                                "followed": "picked"}
    for bad, words in (("&layer=conv3", "needs both layer and unit"),
                       ("&layer=conv3&unit=999", "unit 999 is not a map of conv3"),
                       ("&layer=conv9&unit=0", "conv9")):
        res = client.get(f"/api/occlusion?image=val:2{bad}")
        assert res.status_code in (400, 404) and words in res.json()["error"], res.json()
    evo = _wait(client, "/api/evolution?layer=conv2&unit=4")
    assert evo["epochs"] == [1, 2] and len(evo["similarity"]) == 2
    assert evo["similarity"][-1] == pytest.approx(1.0, abs=1e-5)  # the last epoch vs itself
    assert _png(client.get(evo["figure"])).ndim == 3


def test_views_stay_live_while_a_job_runs_and_a_job_can_be_cancelled(
        client, explorer, monkeypatch) -> None:
    started, stopped = threading.Event(), threading.Event()

    def slow(layer, progress):
        started.set()
        try:
            for i in range(10_000):
                progress(i, 10_000)
                time.sleep(0.01)
        finally:
            stopped.set()
    monkeypatch.setattr(explorer, "topk_job", slow)
    job = client.get("/api/topk?layer=relu5&unit=0").json()["job"]
    assert started.wait(10)
    t = time.perf_counter()
    assert client.get("/api/maps?image=val:9&layer=conv1").status_code == 200
    assert time.perf_counter() - t < 5  # served beside the job, not after it
    again = client.get("/api/topk?layer=relu5&unit=3").json()["job"]
    assert again["id"] == job["id"]  # the same computation is joined, not started twice
    queued = client.get("/api/occlusion?image=val:8").json()["job"]
    assert queued["state"] == "queued" and queued["waiting_for"] == job["what"]
    assert client.delete(f"/api/jobs/{queued['id']}").json()["state"] == "cancelled"
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
    assert stopped.wait(10)
    for _ in range(100):
        if client.get(f"/api/jobs/{job['id']}").json()["state"] == "cancelled":
            break
        time.sleep(0.02)
    assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"
    assert {j["id"] for j in client.get("/api/jobs").json()["jobs"]} >= {job["id"], queued["id"]}


def test_a_failed_job_is_told_once_then_tried_again(client, explorer, monkeypatch) -> None:
    """A client polling a view while its job fails gets the failure (a 400 naming it), not a
    new job on every poll; asking again after that tries again."""
    calls = []

    def fail(layer, progress):
        calls.append(layer)
        raise ValueError("the data held no images to mine")

    monkeypatch.setattr(explorer, "topk_job", fail)
    polls = []
    for _ in range(50):
        r = client.get("/api/topk?layer=relu4&unit=0")
        polls.append(r.status_code)
        if r.status_code != 202:
            break
        time.sleep(0.05)
    assert polls[-1] == 400 and len(calls) == 1, (polls, calls)
    assert "failed: the data held no images to mine (asking again tries again)" in r.json()["error"]
    job = client.get("/api/topk?layer=relu4&unit=0").json()["job"]  # tried again
    for _ in range(100):
        if client.get(f"/api/jobs/{job['id']}").json()["state"] == "failed":
            break
        time.sleep(0.05)
    assert len(calls) == 2
    # the page learned of the failure from the job itself: its next request tries again
    r = client.get("/api/topk?layer=relu4&unit=0")
    assert r.status_code == 202
    for _ in range(100):  # (ended before the next test)
        if client.get(f"/api/jobs/{r.json()['job']['id']}").json()["state"] == "failed":
            break
        time.sleep(0.05)
    assert len(calls) == 3


def test_job_runner_reports_failures_in_one_line() -> None:
    runner = JobRunner()
    try:
        def fail(progress):
            progress(1, 2)
            raise ValueError("no such thing\nmore")
        job = runner.submit("topk", "k", "mining", fail)
        job.future.result(10)
        assert (job.state, job.error, job.done, job.total) == ("failed", "no such thing", 1, 2)
        retry = runner.submit("topk", "k", "mining", lambda progress: None)
        assert retry.id != job.id  # a failed job is tried again
        retry.future.result(10)
        assert retry.state == "done"
        with pytest.raises(Cancelled):
            job.cancel.set()
            job.progress(0, 1)
    finally:
        runner.shutdown()


def test_a_job_never_runs_the_views_model(tmp_path) -> None:
    """The job thread works on its own copy: a forward pass of the view's model from it would
    fire the view's capture hooks (wrong maps) and race its modes. An explorer whose
    /api/model was never asked (a script) computing occlusion first showed it."""
    e = Explorer(load_source("zfnet_small"), None, cache_dir=tmp_path)
    up = e.upload(_jpeg())
    threads = set()
    handle = e.model.register_forward_hook(
        lambda *_: threads.add(threading.current_thread().name))
    try:
        worker = threading.Thread(target=e.occlusion_job,
                                  args=(up.id, None, None, lambda d, t: None), name="job")
        worker.start()
        worker.join(60)
    finally:
        handle.remove()
    assert (up.id, None, None) in e.occlusions and "job" not in threads


def test_an_upload_dropped_while_a_job_takes_it_is_still_used(tmp_path) -> None:
    """The uploads are kept on the views' thread and read by the jobs' thread: one dropped for
    a newer upload between the job's check and its use (its `move_to_end`) is still the job's
    image, not a failed job named by a bare KeyError 'up:…'."""
    from collections import OrderedDict

    e = Explorer(load_source("zfnet_small"), None, cache_dir=tmp_path)
    up = e.upload(_jpeg())

    class DroppedMeanwhile(OrderedDict):
        def move_to_end(self, key, last=True):  # another thread's upload drops it first
            self.pop(key)
            super().move_to_end(key, last)

    e.uploads = DroppedMeanwhile(e.uploads)
    assert e.image(up.id) is up
    with pytest.raises(NotFoundError, match="upload it again"):  # gone for the next request
        e.image(up.id)


def test_the_jobs_copy_of_the_model_has_none_of_the_views_hooks(tmp_path) -> None:
    """The copy made while a view captured the maps (the first job, beside a /api/maps)
    carried the view's capture hooks: every forward pass of the job wrote into them."""
    from zfnet.activations import capture

    e = Explorer(load_source("zfnet_small"), None, cache_dir=tmp_path)
    with capture(e.model, ["conv1"]) as store:  # the view thread, mid-request
        job = e.job_model()
    job(torch.zeros(1, 3, *e.size))
    assert not store and not any(m._forward_hooks for m in job.modules())


def test_server_without_a_dataset_takes_uploads_only(tmp_path) -> None:
    source = load_source("zfnet_small")
    e = Explorer(source, None, cache_dir=tmp_path)
    with TestClient(create_app(e)) as c:
        m = c.get("/api/model").json()
        assert m["data"] is None and m["default_image"] is None
        assert c.get("/api/images").json() == {"total": 0, "items": []}
        up = c.post("/api/images", content=_jpeg()).json()
        assert c.get(f"/api/maps?image={up['id']}&layer=conv1").status_code == 200
        _error(c.get("/api/topk?layer=conv1&unit=0"), 400, "--data")
        _error(c.get("/api/evolution?layer=conv1&unit=0"), 404, "kept epochs")
        # its figure gives the same reason, not "not computed yet: GET /api/evolution ..."
        text = _error(c.get("/api/evolution.png?layer=conv1&unit=0"), 404, "kept epochs")
        assert "yet" not in text


def test_a_broken_file_in_the_folder_is_named_and_not_shown_first(tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "aaa.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # sorts first
    (folder / "b.jpg").write_bytes(_jpeg())
    source = load_source("zfnet_small")
    with pytest.warns(BrokenImageWarning):
        e = Explorer(source, load_data(source, f"images:{folder}"), cache_dir=tmp_path / "c")
        with TestClient(create_app(e)) as c:
            assert c.get("/api/model").json()["default_image"] == "val:1"
            _error(c.get("/api/maps?image=val:0&layer=conv1"), 400,
                   f"dataset image val:0 is broken: {folder / 'aaa.jpg'} could not be read: ")
            assert c.get("/api/maps?image=val:1&layer=conv1").status_code == 200
    # the mined index is kept per folder as it is: a file replaced under its name, another
    same = Explorer(source, load_data(source, f"images:{folder}"), cache_dir=tmp_path / "c")
    assert same.cache_dir == e.cache_dir
    (folder / "b.jpg").write_bytes(_jpeg(64))
    os.utime(folder / "b.jpg", ns=(1, 1))
    other = Explorer(source, load_data(source, f"images:{folder}"), cache_dir=tmp_path / "c")
    assert other.cache_dir != e.cache_dir


def test_any_cnn_through_the_general_path(tmp_path) -> None:
    """A torchvision ResNet (random init, 64 px to stay quick) on a folder of photos: its
    stages are listed, a block's unit is projected through the graph (whole-image projection
    cut to the unit's window, as the gallery cuts it), its top-k mined."""
    from skimage import data

    from zfnet.analyses.gallery import unit_windows

    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(tmp_path / f"{name}.jpg")
    torch.manual_seed(0)
    source = load_source("torchvision:resnet18", resize=64, crop=64)
    e = Explorer(source, load_data(source, f"images:{tmp_path}"), cache_dir=tmp_path / "c")
    names = [r.name for r in e.layers]
    assert {"layer1", "layer3", "layer3.0.conv1", "fc"} <= set(names)
    assert e.default_layer == "layer4"
    with pytest.raises(ValueError, match="layer 'layer9' does not exist.*GET /api/layers") \
            as refused:
        e.layer("layer9")  # the API's list named, not the command line's, nor Python's
    assert "zfnet models" not in str(refused.value) and "Python" not in str(refused.value)
    # its blocks too: a BasicBlock's output (after the residual addition and its ReLU), not
    # the Sequential inside it (the same as its last module's)
    kinds = {r.name: r.kind for r in e.layers}
    assert kinds["layer3.1"] == "block" and kinds["layer3"] == "stage"
    assert "layer2.0.downsample" not in kinds and kinds["layer2.0.downsample.1"] == "norm"
    with TestClient(create_app(e)) as c:
        got = c.get("/api/maps?image=val:1&layer=layer3.1").json()
        with torch.no_grad():
            m = e.model
            x = m.maxpool(m.relu(m.bn1(m.conv1(e.val[1][0][None]))))
            want = m.layer3(m.layer2(m.layer1(x)))[0]  # layer3's last block's output
        np.testing.assert_allclose(got["max"], want.amax(dim=(1, 2)).numpy(), rtol=1e-4,
                                   atol=1e-5)
        u = c.get("/api/unit?image=val:1&layer=layer3&unit=5").json()
        x = e.val[1][0][None]
        pos = torch.tensor([[u["row"], u["col"]]])
        full = project(e.model, x, "layer3", [5], pos, "guided")[0]
        full = full * e.pre.pixel_scale().reshape(-1, 1, 1)
        geo = layer_geometry(e.model, "layer3", 64)
        top, left, h, w = unit_windows(geo, torch.tensor([u["row"]]), torch.tensor([u["col"]]),
                                       (64, 64), True)
        t, lf = int(top[0]), int(left[0])
        win = torch.zeros(3, h, w)
        t0, l0 = max(t, 0), max(lf, 0)
        win[:, t0 - t:min(t + h, 64) - t, l0 - lf:min(lf + w, 64) - lf] = \
            full[:, t0:t + h, l0:lf + w]
        got = _png(c.get(u["rules"]["guided"]))
        assert np.array_equal(got, projection_to_uint8(win).permute(1, 2, 0).numpy())
        top9 = _wait(c, "/api/topk?layer=layer3&unit=5")
        want = mine_topk(e.model, e.val, ["layer3"], 9)["layer3"]
        assert [i["image"] for i in top9["items"]] == [f"val:{i}" for i in want.index[5].tolist()
                                                       if i >= 0]
        assert _png(c.get(top9["figure"])).ndim == 3
    assert not any(m._forward_hooks or m._backward_hooks for m in e.model.modules())


def test_an_untrained_networks_tiny_activations_are_given_as_they_are(tmp_path) -> None:
    """Activations of 1e-8 (a random init's deep layers: inception_v3's reach 4e-8) keep 6
    significant digits in the maps, unit and top-k answers, where 6 decimals gave 0 beside
    `"active": true` and the page showed "activation 0.000"."""
    from skimage import data

    from zfnet.sources import from_module

    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).resize((48, 48)).save(tmp_path / f"{name}.png")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=2), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.mul_(1e-9)
        net[0].bias.fill_(1e-10)
    source = from_module(net, resize=48, crop=48)
    e = Explorer(source, load_data(source, f"images:{tmp_path}"), cache_dir=tmp_path / "c", k=2)
    with TestClient(create_app(e)) as c:
        with torch.no_grad():
            want = net[1](net[0](e.val[0][0][None]))[0]  # relu of conv: layer "1"
        got = c.get("/api/maps?image=val:0&layer=1").json()
        assert 0 < max(got["max"]) < 1e-6
        np.testing.assert_allclose(got["max"], want.amax(dim=(1, 2)).numpy(), rtol=1e-5)
        u = c.get("/api/unit?image=val:0&layer=1&unit=0").json()
        assert u["active"] and u["activation"] == pytest.approx(float(want[0].max()), rel=1e-5)
        top = _wait(c, "/api/topk?layer=1&unit=0")
        assert all(0 < i["activation"] < 1e-6 for i in top["items"]), top["items"]
    # the gallery's table likewise (its page shows 4 significant digits)
    from zfnet.pipeline import gallery
    from zfnet.report import build_report, read_sections

    gallery(net, e.bundle, tmp_path / "report", layers=["1"], k=2, n_maps=2)
    (row,) = next(t for sec in read_sections(tmp_path / "report") for t in sec.tables).rows
    assert 0 < row[-1] < 1e-6, row
    assert f"{row[-1]:.4g}" in build_report(tmp_path / "report").read_text()

def test_maps_of_1x1_are_drawn_as_a_flat_layers_units(tmp_path) -> None:
    """A global pool's maps (ResNet's avgpool) are 1×1: each scaled to its own maximum, every
    active one was pure white; they are scaled to the layer's maximum, as a flat layer's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 2))
    e = Explorer(from_module(net, resize=32, crop=32), None, cache_dir=tmp_path)
    with TestClient(create_app(e)) as c:
        up = c.post("/api/images", content=_jpeg()).json()["id"]
        assert next(lr for lr in c.get("/api/layers").json()["layers"]
                    if lr["name"] == "2")["size"] == [1, 1]
        m = c.get(f"/api/maps?image={up}&layer=2").json()
        assert (m["size"], m["scale"]) == ([1, 1], "layer")
        assert c.get(f"/api/maps?image={up}&layer=1").json()["scale"] == "map"
        sprite = _png(c.get(m["sprite"]))
        (th, tw), gap, cols = m["tile"], m["gap"], m["cols"]
        got = [int(sprite[(i // cols) * (th + gap), (i % cols) * (tw + gap)])
               for i in range(m["maps"])]
        top = max(m["max"])
        np.testing.assert_allclose(got, [max(v, 0) / top * 255 for v in m["max"]], atol=1)
        assert sum(v > 0 for v in m["max"]) > 1 and sorted(got)[-2] < 255  # not all white


class _ReluTwice(nn.Module):
    """A residual block as ResNet's: one ReLU module called after the conv and after the
    sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        y = self.relu(self.conv1(x))
        return self.head(self.relu(self.conv2(y) + y))


def test_a_module_called_twice_says_so_in_the_layer_table(tmp_path) -> None:
    """A module run twice in one forward pass is listed where it first runs but shows its
    last call: /api/layers says how many times it runs."""
    e = Explorer(from_module(_ReluTwice(), resize=32, crop=32), None, cache_dir=tmp_path)
    with TestClient(create_app(e)) as c:
        calls = {lr["name"]: lr["calls"] for lr in c.get("/api/layers").json()["layers"]}
    assert calls["relu"] == 2 and calls["conv1"] == calls["conv2"] == 1, calls


def test_a_loopback_server_answers_only_to_its_own_names(explorer) -> None:
    """DNS rebinding: another site's page cannot reach the server under a name of its own."""
    app = create_app(explorer, allowed_hosts=("127.0.0.1", "localhost"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/layers").status_code == 200
    with TestClient(app, base_url="http://localhost:8000") as c:
        assert c.get("/api/layers").status_code == 200
    with TestClient(app, base_url="http://evil.example:8000") as c:
        r = c.get("/api/layers")
        assert r.status_code == 400 and "layers" not in r.text
        assert r.json() == {"error": "host 'evil.example:8000' is not served here: this "
                                     "server answers to 127.0.0.1, localhost only"}
    # the IPv6 loopback as a browser sends it (a Host header: starlette's TestClient before
    # 0.40 cannot parse an IPv6 base_url)
    with TestClient(create_app(explorer, allowed_hosts=LOOPBACK)) as c:
        assert c.get("/api/layers", headers={"host": "[::1]:8000"}).status_code == 200
        assert c.get("/api/layers", headers={"host": "[::2]:8000"}).status_code == 400


def test_results_are_kept_for_the_recent_only_and_a_damaged_index_is_mined_again(
        explorer) -> None:
    from zfnet.explorer.session import _LRU

    keep = _LRU(2)
    for k in "abc":
        keep.put(k, k.upper())
    assert list(keep) == ["b", "c"] and keep.get("c") == "C"
    # drawn figures: also at most so many bytes (a class browsing a ResNet's layer4 top-9,
    # 1.4 MB each, kept 256 of them: 350 MB)
    figures = _LRU(256, max_bytes=3000)
    for i in range(10):
        figures.put(i, b"x" * 1000)
    figures.put("occlusion", {"png": b"y" * 1500})
    assert list(figures) == [9, "occlusion"] and figures.nbytes == 2500
    figures.put("big", b"z" * 5000)  # the newest is kept whatever its size
    assert list(figures) == ["big"] and figures.nbytes == 5000
    assert explorer._pngs.max_bytes == 64 * 2**20
    assert isinstance(explorer.occlusions, _LRU) and isinstance(explorer.evolutions, _LRU)
    explorer.topk_job("relu2", lambda d, t: None)
    path = explorer._topk_path("relu2")
    path.write_bytes(b"not a pickle at all")
    explorer._topk.pop("relu2")
    assert explorer.topk_ready("relu2") is None and not path.exists()


def test_a_job_cancelled_as_it_starts_never_runs() -> None:
    runner = JobRunner()
    gate, ran = threading.Event(), []
    try:
        first = runner.submit("topk", "a", "first", lambda progress: gate.wait(10))
        second = runner.submit("topk", "b", "second", lambda progress: ran.append(1))
        assert runner.cancel(second.id).state == "cancelled"
        gate.set()
        first.future.result(10)
        second.future.result(10)
        assert second.state == "cancelled" and not ran
    finally:
        gate.set()
        runner.shutdown()


def test_jobs_no_client_asks_about_are_dropped_and_the_queue_is_counted() -> None:
    """An abandonable job nobody asks about any more is dropped: queued, before it starts;
    running, at its next progress report. The one a client polls runs, and so does a job
    that is not abandonable (the shared top-k index). `ahead` counts only what will run."""
    runner = JobRunner(abandon_after=0.3)
    gate, ran = threading.Event(), []
    try:
        holder = runner.submit("topk", "hold", "the index", lambda progress: gate.wait(10))
        left = runner.submit("occlusion", "a", "left", lambda p: ran.append("a"), True)
        wanted = runner.submit("occlusion", "b", "wanted", lambda p: ran.append("b"), True)
        assert runner.describe(wanted)["ahead"] == 2
        for _ in range(100):
            if holder.state == "running":
                break
            time.sleep(0.01)
        end = time.monotonic() + 0.6
        while time.monotonic() < end:  # a page following its job
            runner.get(wanted.id)
            time.sleep(0.05)
        info = runner.describe(wanted)
        assert (info["ahead"], info["waiting_for"]) == (1, "the index")  # `left` will not run
        gate.set()
        wanted.future.result(10)
        left.future.result(10)
        assert (holder.state, wanted.state, ran) == ("done", "done", ["b"])
        assert (left.state, left.abandoned, runner.describe(left)["abandoned"]) == (
            "cancelled", True, True)

        def work(progress):
            for i in range(500):
                progress(i, 500)
                time.sleep(0.02)
        running = runner.submit("evolution", "c", "running", work, True)
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            runner.get(running.id)
            time.sleep(0.05)
        assert running.state == "running"
        t = time.monotonic()
        running.future.result(10)  # no one asks any more: it stops
        assert (running.state, running.abandoned) == ("cancelled", True)
        assert time.monotonic() - t < 2 and running.done < 499
        again = runner.submit("evolution", "c", "running", lambda p: None, True)
        assert again.id != running.id  # asking again starts it again
        again.future.result(10)
    finally:
        gate.set()
        runner.shutdown()


def test_occlusion_jobs_are_abandonable_but_the_topk_index_is_not(explorer) -> None:
    with TestClient(create_app(explorer)) as c:
        jobs = c.app.state.jobs
        jobs.abandon_after = 0.3
        gate = threading.Event()
        holder = jobs.submit("test", ("hold",), "a job holding the queue",
                             lambda progress: gate.wait(30))
        try:
            topk = c.get("/api/topk?layer=relu3&unit=0").json()["job"]
            occ = c.get("/api/occlusion?image=val:3").json()["job"]
            assert (occ["state"], occ["ahead"], occ["abandoned"]) == ("queued", 2, False)
            time.sleep(0.5)  # no one asks about either (the list of jobs is not asking)
        finally:
            gate.set()
        holder.future.result(30)
        jobs.last(("topk", "relu3")).future.result(300)
        jobs.last(("occlusion", "val:3", None, None)).future.result(30)
        listed = {j["id"]: j for j in c.get("/api/jobs").json()["jobs"]}
        assert (listed[topk["id"]]["state"], listed[topk["id"]]["abandoned"]) == ("done", False)
        assert (listed[occ["id"]]["state"], listed[occ["id"]]["abandoned"]) == ("cancelled", True)
        assert c.get("/api/topk?layer=relu3&unit=0").status_code == 200
        assert c.get("/api/occlusion?image=val:3").json()["job"]["id"] != occ["id"]  # again


def test_a_folder_with_broken_files_names_them_and_warns_once(tmp_path) -> None:
    """The strip names a folder's images by file and marks a broken one; the top-k job's
    progress ends at its total and its result counts the images mined and names the others;
    a broken file is warned about once per server, however often it is asked for."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "aaa.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "b.jpg").write_bytes(_jpeg())
    Image.open(io.BytesIO(_jpeg(64))).save(folder / "sub" / "c.png")
    source = load_source("zfnet_small")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = Explorer(source, load_data(source, f"images:{folder}"), cache_dir=tmp_path / "c")
        with TestClient(create_app(e)) as c:
            assert c.get("/api/model").json()["default_image"] == "val:1"
            items = c.get("/api/images").json()["items"]
            assert [(i["name"], i["broken"]) for i in items] == [
                ("aaa.jpg", True), ("b.jpg", False), ("sub/c.png", False)]  # under the folder
            for _ in range(3):
                _error(c.get("/api/image/val:0.png"), 400, "aaa.jpg")
            job = c.get("/api/topk?layer=conv1&unit=0").json()["job"]
            got = _wait(c, "/api/topk?layer=conv1&unit=0")
            done = c.get(f"/api/jobs/{job['id']}").json()
            assert (done["state"], done["done"], done["total"]) == ("done", 3, 3)
            assert (got["images"], got["mined"]) == (3, 2)
            assert got["unreadable"] == [{"image": "val:0", "name": "aaa.jpg"}]
            # each of the top k named by its file, as the page lists them (it said "val:2")
            assert {(i["image"], i["name"]) for i in got["items"]} == {
                ("val:1", "b.jpg"), ("val:2", "sub/c.png")}
    broken = [w for w in caught if issubclass(w.category, BrokenImageWarning)]
    assert len(broken) == 1 and "aaa.jpg" in str(broken[0].message)
    # a new server on the same index knows which files it left out without reading them
    again = Explorer(source, load_data(source, f"images:{folder}"), cache_dir=tmp_path / "c")
    assert again.topk("conv1", 0)["unreadable"] == got["unreadable"]


@pytest.mark.filterwarnings("ignore:no rectifier")  # convnext has none
def test_nonlinear_mode_reaches_the_views_and_the_jobs(tmp_path) -> None:
    """A network with GELU and sigmoid gates (torchvision's convnext, random init, 32 px):
    `error` refuses its deconvnet views in one line, `gradient` serves them (on the views'
    thread) and its top-k figures (on the jobs' thread), whatever the creating thread's mode.
    The layers inside its blocks, whose outputs are (N, H, W, C), are listed and shown as maps."""
    from skimage import data

    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(tmp_path / f"{name}.jpg")
    torch.manual_seed(0)
    source = load_source("torchvision:convnext_tiny", resize=32, crop=32)
    bundle = load_data(source, f"images:{tmp_path}")
    for mode in ("error", "gradient"):
        e = Explorer(source, bundle, cache_dir=tmp_path / "c", nonlinear=mode)
        with TestClient(create_app(e)) as c:
            assert c.get("/api/model").json()["nonlinear"] == mode
            # inside the blocks, (N, H, W, C) tensors: listed and shown as their maps
            rows = {row.name: row for row in e.layers}
            assert rows["features.1.0.block.3"].maps == 384
            assert rows["features.1.0.block.3"].rf == rows["features.1.0.block.0"].rf
            m = c.get("/api/maps?image=val:0&layer=features.1.0.block.3").json()
            assert (m["maps"], m["size"]) == (384, [8, 8])
            u = c.get("/api/unit?image=val:0&layer=features.3&unit=2").json()
            top = _wait(c, "/api/topk?layer=features.3&unit=2")
            if mode == "error":
                # only the rules defined here are offered (no URL bound to fail), the others
                # each with the reason the server gives for them, as the CLI decides
                assert list(u["rules"]) == ["gradient"]
                assert _png(c.get(u["rules"]["gradient"])).ndim == 3
                assert list(u["undefined"]) == ["deconvnet", "guided"]
                for rule in ("deconvnet", "guided"):
                    text = _error(c.get(u["rules"]["gradient"].replace("rule=gradient",
                                                                        f"rule={rule}")),
                                  400, "GELU", f"the {rule} rule", "rule=gradient",
                                  "zfnet serve --nonlinear gradient")  # the server's words
                    assert "--rule" not in text and "in Python" not in text
                    assert u["undefined"][rule] == text
                # the top-k figure's link takes a rule that is defined here: the gradient,
                # the only one offered
                assert top["rule"] == "gradient" and top["figure"].endswith("&rule=gradient")
                assert top["rules"] == {"gradient": top["figure"]}
                assert top["undefined"] == u["undefined"]
                assert _png(c.get(top["figure"])).ndim == 3
                continue
            assert list(u["rules"]) == ["deconvnet", "guided", "gradient"]
            assert u["undefined"] == {} and top["undefined"] == {}
            assert _png(c.get(u["rules"]["deconvnet"])).ndim == 3
            assert top["rule"] == "deconvnet" and _png(c.get(top["figure"])).ndim == 3
            assert list(top["rules"]) == ["deconvnet", "guided", "gradient"]
            u = c.get("/api/unit?image=val:0&layer=features.1.0.block.3&unit=300").json()
            assert _png(c.get(u["rules"]["gradient"])).ndim == 3


class _Residual(torch.nn.Module):
    """A residual block and a classifier: not a chain, small enough for bf16 emulated on a CPU
    without native bf16 (a ResNet-18's 841 occluder positions took minutes there)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.conv(h))
        return self.fc(h.mean((2, 3)))


def test_occlusion_of_a_network_that_is_not_a_chain_in_bf16(tmp_path) -> None:
    """`zfnet serve --occlusion-precision bfloat16`: the occluder positions of a network that is
    not a chain (one forward pass each) run in bf16, and the answer says so; a bad value is
    named."""
    from skimage import data

    from zfnet.sources import from_module

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.jpg")
    torch.manual_seed(0)
    source = from_module(_Residual(), resize=32, crop=32)
    bundle = load_data(source, f"images:{tmp_path}")
    with pytest.raises(ValueError, match="occlusion_precision='half' .*valid: float32, bfloat16"):
        Explorer(source, bundle, cache_dir=tmp_path / "c", occlusion_precision="half")
    e = Explorer(source, bundle, cache_dir=tmp_path / "c", occlusion_precision="bfloat16")
    with TestClient(create_app(e)) as c:
        occ = _wait(c, "/api/occlusion?image=val:0")
        assert (occ["method"], occ["precision"]) == ("full", "bfloat16")
        assert _png(c.get(occ["figure"])).ndim == 3


def test_one_client_cannot_cancel_a_job_another_follows(explorer) -> None:
    """Two pages wait for the same job (a link passed around a class): one's cancel lets it
    go on for the other, and says so; once no one else follows it, a cancel stops it. A
    script without a page id is told apart by its address."""
    with TestClient(create_app(explorer)) as c:
        jobs = c.app.state.jobs
        gate = threading.Event()
        holder = jobs.submit("test", ("hold",), "a job holding the queue",
                             lambda progress: gate.wait(30))
        try:
            a, b = {"X-Client-Id": "page-a"}, {"X-Client-Id": "page-b"}
            job = c.get("/api/occlusion?image=val:5", headers=a).json()["job"]
            assert c.get("/api/occlusion?image=val:5", headers=b).json()["job"]["id"] == job["id"]
            r = c.delete(f"/api/jobs/{job['id']}", headers=a)
            assert r.status_code == 200
            assert (r.json()["state"], r.json()["others"]) == ("queued", 1)  # b still wants it
            assert c.get(f"/api/jobs/{job['id']}", headers=b).json()["state"] == "queued"
            r = c.delete(f"/api/jobs/{job['id']}", headers=b)  # b was the last to follow it
            assert (r.json()["state"], r.json()["others"]) == ("cancelled", 0)
            again = c.get("/api/occlusion?image=val:5", headers=b).json()["job"]
            assert again["id"] != job["id"]
            c.get(f"/api/jobs/{again['id']}")  # a script (the test client's address) follows it
            assert c.delete(f"/api/jobs/{again['id']}", headers=b).json()["state"] == "queued"
        finally:
            gate.set()
            holder.future.result(30)
            jobs.shutdown()


def test_asking_again_after_a_cancel_gets_a_live_job_not_the_dying_one(
        explorer, monkeypatch) -> None:
    """A cancelled job runs on until its next progress report: a request for its result in
    that time gets a new job (queued behind it), not the dying one, and then the result."""
    reported, gate = threading.Event(), threading.Event()

    def slow(image_id, layer, unit, progress):
        progress(1, 3)
        reported.set()
        gate.wait(30)
        progress(2, 3)  # where a cancelled job stops
        explorer.occlusions.put((image_id, layer, unit), {"png": b"", "method": "fake"})
    monkeypatch.setattr(explorer, "occlusion_job", slow)
    with TestClient(create_app(explorer)) as c:
        try:
            page = {"X-Client-Id": "page-a"}
            first = c.get("/api/occlusion?image=val:16", headers=page).json()["job"]
            assert reported.wait(30)
            r = c.delete(f"/api/jobs/{first['id']}", headers=page)
            assert (r.json()["state"], r.json()["others"]) == ("running", 0)  # stops at its next
            again = c.get("/api/occlusion?image=val:16", headers=page)
            assert again.status_code == 202 and again.json()["job"]["id"] != first["id"]
        finally:
            gate.set()
        assert _wait(c, "/api/occlusion?image=val:16")["method"] == "fake"
        assert c.get(f"/api/jobs/{first['id']}").json()["state"] == "cancelled"


def test_every_api_answer_names_the_model_and_data_it_comes_from(client) -> None:
    """X-Explorer-Id (/api/model's id) on every /api/ answer, errors too: a page left open
    while the server is started again on another model sees the change."""
    own = client.get("/api/model").json()["id"]
    for url in ("/api/layers", "/api/maps?image=val:0&layer=conv1", "/api/image/val:0.png",
                "/api/maps?image=val:0&layer=nope", "/api/jobs/none", "/api/nothing"):
        r = client.get(url)
        assert r.headers.get("X-Explorer-Id") == own, (url, r.status_code, r.headers)
    assert "X-Explorer-Id" not in client.get("/").headers  # the page itself: not an answer


def test_a_topk_asked_for_as_its_mining_ends_is_not_mined_again(client, explorer,
                                                               monkeypatch) -> None:
    """A request that found the index not mined yet, just before its job ended, starts a job
    that finds it mined and ends at once: mining a large dataset again held every student's
    occlusion behind it for minutes."""
    import zfnet.explorer.session as session

    _wait(client, "/api/topk?layer=conv2&unit=0")
    real, mined, asked = explorer.topk, [], []

    def topk(*args):  # the first request's view: not mined yet
        asked.append(1)
        return None if len(asked) == 1 else real(*args)
    monkeypatch.setattr(explorer, "topk", topk)
    monkeypatch.setattr(session, "mine_topk", lambda *a, **k: mined.append(1))
    job = client.get("/api/topk?layer=conv2&unit=1").json()["job"]
    client.app.state.jobs.get(job["id"]).future.result(30)
    assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "done" and not mined
    assert client.get("/api/topk?layer=conv2&unit=1").status_code == 200


def test_an_upload_cut_off_is_neither_a_crash_nor_a_traceback(explorer, capfd) -> None:
    """A student's laptop closes mid-upload: the server answers no one and logs nothing (it
    printed 'zfnet serve: ClientDisconnect' and a traceback of 50 lines in the teacher's
    terminal), and keeps serving."""
    import asyncio

    app = create_app(explorer)
    sent: list[dict] = []
    messages = iter([{"type": "http.request", "body": b"\xff\xd8" + b"x" * 1000,
                      "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/api/images", "raw_path": b"/api/images",
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-length", b"5000000")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400
    out, err = capfd.readouterr()
    assert "Traceback" not in err + out and "ClientDisconnect" not in err + out


def test_a_figure_kept_by_the_browser_is_checked_against_the_model_serving(
        explorer, client, tmp_path) -> None:
    """The teacher stops the ResNet's server and starts a run's on the same port: a student's
    browser showed the ResNet's /api/image/val:0.png and conv1 sprite for an hour (kept as
    'max-age=3600'). Figures are kept but checked (no-cache, an ETag of the model and data
    and the URL): 304 from the same server, the new picture from another."""
    from zfnet.sources import from_module

    url = "/api/maps.png?image=val:0&layer=conv1"
    first = client.get(url)
    assert first.status_code == 200 and "no-cache" in first.headers["cache-control"]
    assert "max-age" not in first.headers["cache-control"]
    tag = first.headers["etag"]
    again = client.get(url, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/api/maps.png?image=val:1&layer=conv1",
                      headers={"If-None-Match": tag}).status_code == 200  # another figure
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10))
    image = client.get("/api/image/val:0.png").headers["etag"]
    other = Explorer(from_module(net, crop=32), explorer.bundle, cache_dir=tmp_path)
    with TestClient(create_app(other)) as c:  # the same URL on another model: not 304
        r = c.get("/api/image/val:0.png", headers={"If-None-Match": image})
        assert r.status_code == 200 and r.headers["etag"] != image
    explorer.occlusion_precision = "bfloat16"  # zfnet serve --occlusion-precision bfloat16
    try:
        assert client.get(url, headers={"If-None-Match": tag}).status_code == 200
    finally:
        explorer.occlusion_precision = "float32"


def test_an_iphone_photo_says_how_to_read_it(client, monkeypatch) -> None:
    """A HEIC photo dragged from a Mac, on a server without pillow-heif: the error says what
    it is and what to do (it said only: not an image PIL can read (JPEG, PNG ...))."""
    import zfnet.explorer.session as session

    monkeypatch.setattr(session, "HEIF_READ", False)
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200
    _error(client.post("/api/images", content=heic, headers={"X-Filename": "IMG_0042.HEIC"}),
           400, "'IMG_0042.HEIC' is a HEIC photo", "convert it to JPEG", "zfnet[heif]")


@pytest.mark.filterwarnings("ignore::zfnet.data.BrokenImageWarning")
def test_a_stopped_index_mining_is_continued_by_the_next_ask(tmp_path) -> None:
    """A top-k job stopped (a cancel, a server stopped) keeps its mining beside the index: the
    next server on the same model and data continues it, to the index a mining never stopped
    gives, and lists the broken file the continued mining never read again."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(70):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(
            folder / f"{k:02d}.png")
    (folder / "00b.png").write_bytes(b"not an image")  # item 1, in the first batch
    source = load_source("zfnet_small")
    bundle = load_data(source, f"images:{folder}")

    class Stop(Exception):
        pass

    calls: list[int] = []

    def stop_in_batch_3(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 3:
            raise Stop

    from zfnet.analyses.topk import MiningNote

    first = Explorer(source, bundle, cache_dir=tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MiningNote)  # its notes are a command's, not a page's
        with pytest.raises(Stop):
            first.topk_job("conv1", stop_in_batch_3)
        assert len(list((tmp_path / "cache").rglob(".topk_conv1.mining.pt"))) == 1
        again = Explorer(source, bundle, cache_dir=tmp_path / "cache")  # a new server
        seen: list[int] = []
        again.topk_job("conv1", lambda done, total: seen.append(done))
    assert seen[0] == 64 and seen[-1] == 71  # from the batch it stopped in, to the end
    assert not list((tmp_path / "cache").rglob(".topk_conv1.mining.pt"))
    fresh = Explorer(source, bundle, cache_dir=tmp_path / "fresh")
    fresh.topk_job("conv1", lambda done, total: None)
    got, want = again.topk("conv1", 3), fresh.topk("conv1", 3)
    assert got == want and [u["name"] for u in got["unreadable"]] == ["00b.png"]
    assert got["mined"] == 70


def test_a_class_is_found_by_name_synonym_or_number(client, explorer, tmp_path) -> None:
    """`/api/classes` lists the model's classes and finds the one a name, a synonym or a
    number gives, with its score's unit; a name that is no class, or several, is one line."""
    every = client.get("/api/classes").json()
    assert every["layer"] == "fc8" and len(every["classes"]) == 10
    names = [c["name"] for c in every["classes"]]
    assert names == explorer._class_names() and every["classes"][3]["class"] == 3
    k = names.index("house")
    for asked in ("house", " HOUSE ", str(k)):
        got = client.get("/api/classes", params={"name": asked}).json()
        assert got == {"class": k, "name": "house", "layer": "fc8", "unit": k}, asked
    _error(client.get("/api/classes", params={"name": "hous"}), 400, "did you mean", "'house'")
    _error(client.get("/api/classes", params={"name": "10"}), 400, "0 to 9")
    _error(client.get("/api/classes", params={"name": " "}), 400, "name or its number")
    _error(client.get("/api/classes", params={"name": "house,car"}), 400, "names 2 classes")

    labels = ["tabby, tabby cat", "crane", "crane", "tiger cat"]
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 4))
    e = Explorer(from_module(model, resize=32, crop=32, labels=labels), None,
                 cache_dir=tmp_path / "other")
    with TestClient(create_app(e)) as c:
        got = c.get("/api/classes", params={"name": "Tabby"}).json()
        assert got["class"] == 0 and got["name"] == "tabby, tabby cat" and got["unit"] == 0
        assert got["layer"] == e.score_layer == "3"
        _error(c.get("/api/classes", params={"name": "crane"}), 400, "names 2", "(1)", "(2)")
    unnamed = Explorer(from_module(model, resize=32, crop=32), None,
                       cache_dir=tmp_path / "unnamed")
    with TestClient(create_app(unnamed)) as c:
        assert c.get("/api/classes").json()["classes"][0] == {"class": 0, "name": None}
        assert c.get("/api/classes", params={"name": "2"}).json()["unit"] == 2
        _error(c.get("/api/classes", params={"name": "cat"}), 400, "no names",
               "by its number")


def test_images_n_limits_the_mining_not_the_images_shown(tiny_run, tmp_path) -> None:
    """`zfnet serve --images 5`: the top-k are mined over the first 5 images; all 32 are
    browsed, counted and opened."""
    source = load_source(str(tiny_run))
    e = Explorer(source, load_data(source, None), cache_dir=tmp_path, n_images=5)
    with TestClient(create_app(e)) as c:
        assert c.get("/api/model").json()["data"]["images"] == 32
        assert c.get("/api/model").json()["data"]["mined"] == 5
        assert c.get("/api/images?offset=24").json()["total"] == 32
        assert len(c.get("/api/images?offset=24").json()["items"]) == 8
        assert c.get("/api/maps?image=val:31&layer=conv1").status_code == 200
        _error(c.get("/api/maps?image=val:32&layer=conv1"), 404, "val:0..val:31")
        top = _wait(c, "/api/topk?layer=conv1&unit=0")
        assert top["images"] == 5 and all(int(i["image"][4:]) < 5 for i in top["items"])
        # its figure: the 5 there are, 2 rows of 3 as the gallery draws them, not 3 x 3 with
        # empty cells
        five = mine_topk(e.model, torch.utils.data.Subset(e.val, range(5)), ["conv1"], 5)
        proj = project_topk(e.model, e.val, five, {"conv1": [0]})["conv1"]
        geo = layer_geometry(e.model, "conv1", 32)
        patches = topk_patches(five["conv1"], [0], geo, (3, 32, 32), False, e.bundle.raw_val)
        buf = io.BytesIO()
        render_layer(proj, patches, buf)
        assert np.array_equal(_png(c.get(top["figure"])), np.asarray(Image.open(buf)))


def test_another_sites_page_cannot_post_or_cancel(client) -> None:
    """A page of another site open in the same browser may not upload or cancel (a simple
    cross-origin request needs no preflight): refused by its Origin; the server's own page
    and scripts (no Origin) may."""
    base = str(client.base_url).rstrip("/")
    host = base.split("://", 1)[1]
    foreign = {"Origin": "http://evil.example"}
    _error(client.post("/api/images", content=_jpeg(), headers=foreign), 403,
           "http://evil.example", "own page")
    _error(client.delete("/api/jobs/1", headers=foreign), 403, "DELETE")
    own = {"Origin": f"http://{host}"}
    assert client.post("/api/images", content=_jpeg(), headers=own).status_code == 201
    assert client.post("/api/images", content=_jpeg()).status_code == 201
    assert client.get("/api/model", headers=foreign).status_code == 200  # reading: the CORS
    # rules of the browser keep the answer from the other page


def test_a_jobs_words_call_a_map_a_map_and_a_unit_a_unit(client) -> None:
    """As the page does: "conv5 map 11" for a spatial layer, "fc8 unit 7" for a flat one (the
    evolution job said "unit" of a map, the occlusion job "map" of a unit)."""
    for url, words in (("/api/evolution?layer=conv5&unit=11", "evolution of conv5 map 11"),
                       ("/api/occlusion?image=val:9&layer=fc8&unit=7", "(fc8 unit 7)")):
        r = client.get(url)
        assert r.status_code == 202, r.text  # asked first here: a job
        assert words in r.json()["job"]["what"], r.json()
        _wait(client, url)


def test_a_file_name_that_is_no_utf8_is_listed_and_mined(tmp_path) -> None:
    """A file from an old archive, its name no UTF-8: the image list and its top-k name it (its
    odd byte as \\xNN, as the reports do), not an internal error that hid every image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    odd = os.fsdecode(b"old\xe9.jpg")
    (folder / odd).write_bytes(_jpeg())
    (folder / "b.jpg").write_bytes(_jpeg(64))
    source = load_source("zfnet_small")
    e = Explorer(source, load_data(source, f"images:{folder}"), cache_dir=tmp_path / "c")
    with TestClient(create_app(e)) as c:
        r = c.get("/api/images")
        assert r.status_code == 200 and b'"name":"b.jpg"' in r.content
        shown = "old\\xe9.jpg"  # its odd byte as the reports show it
        assert [i["name"] for i in r.json()["items"]] == ["b.jpg", shown]
        assert c.get("/api/maps?image=val:1&layer=conv1").status_code == 200
        done = _wait(c, "/api/topk?layer=conv1&unit=0")
        assert shown in [i["name"] for i in done["items"]], done
