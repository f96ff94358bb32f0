"""`zfnet.explorer.serve.serve`: the explorer served from Python on a model object of your own
(`from_module`), in the background, as in a notebook; the address checked first."""

from __future__ import annotations

import socket

import httpx
import pytest
import torch
from torch import nn

from zfnet.explorer.serve import check_address, serve
from zfnet.sources import from_module


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def test_serve_a_model_object_in_the_background(tmp_path) -> None:
    from PIL import Image
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.jpg")
    source = from_module(_net(), resize=40, crop=32, labels=["a", "b", "c"], name="mine")
    said: list[str] = []
    server = serve(source, f"images:{photos}", port=0, cache_dir=tmp_path / "cache",
                   background=True, echo=said.append)
    try:
        assert said[0] == f"zfnet explorer: mine, 2 images of images:{photos}"
        assert said[1] == f"open {server.url}/  (server.stop() stops it)"
        model = httpx.get(f"{server.url}/api/model", timeout=30).json()
        assert model["name"] == "mine" and model["kind"] == "python" and model["labels"]
        assert model["data"] == {"spec": f"images:{photos}", "images": 2, "mined": 2}
        top = httpx.get(f"{server.url}/api/predict", params={"image": "val:1"},
                        timeout=30).json()["top"]
        assert {t["name"] for t in top} == {"a", "b", "c"}
    finally:
        server.stop()
    assert not server.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/api/model", timeout=5)


def test_one_image_is_said_so(tmp_path) -> None:
    from PIL import Image
    from skimage import data

    (tmp_path / "one").mkdir()
    Image.fromarray(data.coffee()).save(tmp_path / "one" / "coffee.jpg")
    said: list[str] = []
    server = serve(from_module(_net(), resize=40, crop=32, name="mine"),
                   f"images:{tmp_path / 'one'}", port=0, cache_dir=tmp_path / "cache",
                   background=True, echo=said.append)
    server.stop()
    assert said[0] == f"zfnet explorer: mine, 1 image of images:{tmp_path / 'one'}"


def test_a_model_without_data_shows_the_built_in_photos(tmp_path) -> None:
    """A pretrained model served with no --data opens on the 6 built-in photos (it opened on an
    empty page, uploads only), each named by its file; uploads still work beside them."""
    said: list[str] = []
    server = serve(from_module(_net(), resize=40, crop=32, name="mine"), port=0,
                   cache_dir=tmp_path / "cache", background=True, echo=said.append)
    try:
        assert said[0] == ("zfnet explorer: mine, 6 images of sample-photos (the built-in photos; "
                           "--data images:DIR shows yours)")
        model = httpx.get(f"{server.url}/api/model", timeout=30).json()
        assert model["data"] == {"spec": "sample-photos", "images": 6, "mined": 6}
        items = httpx.get(f"{server.url}/api/images", timeout=30).json()["items"]
        assert [i["name"] for i in items][:2] == ["astronaut.png", "chelsea.png"]
        maps = httpx.get(f"{server.url}/api/maps", params={"image": "val:1", "layer": "3"},
                         timeout=30)
        assert maps.status_code == 200 and maps.json()["maps"] == 8
    finally:
        server.stop()


def test_the_address_is_checked_first(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{busy}"):
            serve(from_module(_net(), crop=32), "images:/nonexistent", port=busy,
                  cache_dir=tmp_path, background=True)
    assert check_address("127.0.0.1", 0) > 0


@pytest.mark.parametrize("xdg", ["", "relative/cache"])
def test_the_default_cache_is_never_the_current_folder(xdg, monkeypatch, tmp_path) -> None:
    """An empty or relative $XDG_CACHE_HOME is ignored, as the XDG spec says: the top-k index
    went into ./zfnet/explorer of wherever the teacher started the server."""
    from zfnet.explorer.serve import default_cache

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    assert default_cache() == tmp_path / ".cache" / "zfnet" / "explorer"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache() == tmp_path / "xdg" / "zfnet" / "explorer"


def test_a_server_on_every_address_says_where_to_open_it(tmp_path) -> None:
    """`--host 0.0.0.0` for a class: the address told is one a browser can open, here and on
    a student's laptop (it said http://0.0.0.0:PORT/)."""
    said: list[str] = []
    server = serve(from_module(_net(), crop=32), host="0.0.0.0", port=0,
                   cache_dir=tmp_path / "cache", background=True, echo=said.append)
    try:
        here = f"http://127.0.0.1:{server.port}/"
        assert said[1] == (f"open {here} here; from other computers http://"
                           f"{socket.gethostname()}:{server.port}/ (or this machine's "
                           "address)  (server.stop() stops it)")
        assert "0.0.0.0" not in said[1]
        assert httpx.get(f"{here}api/model", timeout=30).status_code == 200
    finally:
        server.stop()
