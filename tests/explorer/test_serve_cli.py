"""`zfnet serve` from the command line: it starts, prints its address and answers; a port
already taken is a one-line error before anything starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
from click.testing import CliRunner

from zfnet.cli import main


def test_serve_starts_prints_its_address_and_answers(tiny_run, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zfnet.cli", "serve", "--checkpoint", str(tiny_run),
         "--port", str(port), "--cache", str(tmp_path / "cache"), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                model = httpx.get(f"{url}/api/model", timeout=2).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "zfnet serve did not answer in 120 s"
                time.sleep(0.1)
        assert model["kind"] == "run" and model["evolution"] == {"epochs": [1, 2]}
        page = httpx.get(f"{url}/", timeout=5)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"open http://127.0.0.1:{port}/" in out
    assert "Traceback" not in out


def test_a_port_in_use_is_one_line(tiny_run, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(main, ["serve", "--checkpoint", str(tiny_run), "--port",
                                      str(port), "--cache", str(tmp_path)])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("Error: ")
    assert f"cannot listen on 127.0.0.1:{port}" in r.output


def test_the_address_is_checked_before_the_model_loads(tmp_path) -> None:
    """An address not of this machine (TEST-NET-1) fails at once, naming it, before the model
    (which does not exist) is even looked at."""
    r = CliRunner().invoke(main, ["serve", "--model", "zfnett", "--host", "192.0.2.1",
                                  "--cache", str(tmp_path)])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "cannot listen on 192.0.2.1" in r.output.strip().splitlines()[-1]
