"""A class on one explorer: many clients at once (threads over real HTTP) get what one client
alone gets, share one job for the same result, and every answer is JSON or a PNG, never a
500."""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from zfnet.explorer.app import Server, create_app
from zfnet.explorer.session import Explorer
from zfnet.sources import load_data, load_source

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def url(tiny_run, tmp_path_factory):
    source = load_source(str(tiny_run))
    explorer = Explorer(source, load_data(source, None),
                        cache_dir=tmp_path_factory.mktemp("cache"))
    with Server(create_app(explorer)) as u:
        yield u


def _answer(r: httpx.Response) -> tuple[int, str]:
    if r.headers.get("content-type", "").startswith("image/"):
        return r.status_code, hashlib.sha1(r.content).hexdigest()
    return r.status_code, r.text


def test_many_clients_at_once_get_what_one_gets(url) -> None:
    rnd = random.Random(0)
    views = []
    for _ in range(40):
        image, layer = f"val:{rnd.randrange(8)}", rnd.choice(["conv1", "relu2", "conv5", "fc6"])
        unit = rnd.randrange(48)
        views += [("/api/maps", {"image": image, "layer": layer}),
                  ("/api/unit", {"image": image, "layer": layer, "unit": unit}),
                  ("/api/projection.png", {"image": image, "layer": layer, "unit": unit,
                                           "rule": rnd.choice(["deconvnet", "guided"])})]
    views += [("/api/unit", {"image": "val:0", "layer": "conv9", "unit": 0}),
              ("/api/unit", {"image": "val:0", "layer": "conv1", "unit": 999})]
    with httpx.Client(base_url=url, timeout=120) as one:
        alone = [_answer(one.get(path, params=p)) for path, p in views]

    def student(seed: int) -> list[tuple[int, tuple[int, str]]]:
        order = list(range(len(views)))
        random.Random(seed).shuffle(order)
        with httpx.Client(base_url=url, timeout=120) as c:
            return [(i, _answer(c.get(views[i][0], params=views[i][1]))) for i in order[:30]]

    with ThreadPoolExecutor(8) as pool:
        for got in pool.map(student, range(8)):
            for i, answer in got:
                assert answer == alone[i], views[i]
    assert {status for status, _ in alone} == {200, 400}


def test_a_class_asking_for_one_occlusion_shares_one_job(url) -> None:
    def student(n: int) -> tuple[str, int, str]:
        with httpx.Client(base_url=url, timeout=120,
                          headers={"X-Client-Id": f"student-{n}"}) as c:
            ids = set()
            deadline = time.monotonic() + 300
            while (r := c.get("/api/occlusion", params={"image": "val:4"})).status_code == 202:
                ids.add(r.json()["job"]["id"])
                assert time.monotonic() < deadline
                time.sleep(0.2)
            return ",".join(sorted(ids)), r.status_code, r.text

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(student, range(6)))
    assert {status for _, status, _ in got} == {200}
    assert len({text for _, _, text in got}) == 1  # the same answer
    assert len({i for ids, _, _ in got for i in ids.split(",") if i}) == 1  # one job


def test_a_click_does_not_wait_for_an_upload_being_decoded(url, monkeypatch) -> None:
    """A student's photo is decoded beside the view worker: another student's click is
    answered meanwhile (it waited behind the decode: up to 4.4 s behind a class's 12-MP
    photos), and the upload is then kept and shown as before."""
    from zfnet.explorer import session

    entered, release, real = threading.Event(), threading.Event(), session.load_rgb

    def slow(f, *args, name: str | None = None, **kw):  # noqa: ANN001, ANN202
        if name == "slow.png":
            entered.set()
            release.wait(60)
        return real(f, *args, name=name, **kw)

    monkeypatch.setattr(session, "load_rgb", slow)
    photo = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 90, 10)).save(photo, "PNG")
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=url, timeout=120) as c:
        up = pool.submit(c.post, "/api/images", content=photo.getvalue(),
                         headers={"X-Filename": "slow.png"})
        try:
            assert entered.wait(60)
            r = c.get("/api/predict", params={"image": "val:1"}, timeout=10)
            assert r.status_code == 200 and r.json()["top"], r.text
        finally:
            release.set()
        got = up.result()
        assert got.status_code == 201 and got.json()["name"] == "slow.png", got.text
        assert c.get(got.json()["src"]).status_code == 200  # kept, and shown
