"""docs/explorer.md's scripting example runs as written against a real server, and every route
it lists exists in the app."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfnet.explorer.app import Server, create_app
from zfnet.explorer.session import Explorer
from zfnet.sources import load_data, load_source

DOC = Path(__file__).parents[2] / "docs" / "explorer.md"


@pytest.mark.parametrize("model", ["run", "torchvision:resnet18"])
def test_scripting_example_runs(model, tiny_run, tmp_path, monkeypatch) -> None:
    """On a zfnet run and on a torchvision ResNet (whose layers are not conv5: the script
    asks the server for its default layer)."""
    import torch
    from skimage import data

    text = DOC.read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    Image.fromarray(data.coffee()).save(tmp_path / "my_photo.jpg")
    if model == "run":
        source = load_source(str(tiny_run))
        bundle = load_data(source, None)
    else:
        (tmp_path / "photos").mkdir()
        for name in ("astronaut", "chelsea"):
            Image.fromarray(getattr(data, name)()).save(tmp_path / "photos" / f"{name}.jpg")
        torch.manual_seed(0)
        source = load_source(model, resize=64, crop=64)
        bundle = load_data(source, f"images:{tmp_path / 'photos'}")
    explorer = Explorer(source, bundle, cache_dir=tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    with Server(create_app(explorer)) as url:
        exec(compile(code.replace("http://127.0.0.1:8000", url), str(DOC), "exec"), {})
    for name in ("unit.png", "top9.png"):
        assert np.asarray(Image.open(tmp_path / name)).size > 0


def test_every_documented_route_exists(tiny_run, tmp_path) -> None:
    source = load_source(str(tiny_run))
    app = create_app(Explorer(source, None, cache_dir=tmp_path))
    routes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ())}
    documented = re.findall(r"`(GET|POST|DELETE) (/api/[^`?\s]*)", DOC.read_text())
    documented += [("GET", p) for p in re.findall(r", `GET (/api/[^`?\s]*)", DOC.read_text())]
    assert len(documented) >= 18
    for method, path in documented:
        path = path.replace("{id}.png", "{image_id}.png").replace("{id}", "{job_id}")
        assert (method, path) in routes, (method, path)


def test_the_errors_table_says_when_an_upload_is_too_large() -> None:
    """An upload is refused over 40 megapixels, or when it would be once its shorter side is
    scaled to the model's resize (a thin strip): the table says both."""
    row = next(line for line in DOC.read_text().splitlines() if line.startswith("| 400 |"))
    assert "over 40 megapixels, or would be once scaled to the model's input" in row
