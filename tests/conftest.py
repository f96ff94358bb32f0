"""Fixtures shared by the whole suite."""

import os
import shutil
import tempfile

import pytest
import torch

_CACHE = tempfile.mkdtemp(prefix="zfnet-test-cache-")


def pytest_configure(config):
    # zfnet's cache (`zfnet.cache`: the built-in photos as files, top-k indexes) is the suite's
    # own, never the user's ~/.cache; its subprocesses inherit it
    os.environ["XDG_CACHE_HOME"] = _CACHE
    # `make test` runs the suite in two pytest-xdist workers: each on one thread, its own and its
    # subprocesses' (torchrun, the CLI), so that the two never compete for the cores with spinning
    # threads; two workers of one thread take two thirds of the time of one worker of two.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    # torchvision 0.29 warns on every call of its image decoders that they move to TorchCodec
    # (zfnet's fast paths call decode_jpeg): known, not the tests' business.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: small convolutions on a shared 2-core machine run far
    faster that way than with threads competing for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No downloads: ZFNET_OFFLINE=1 and an empty torch hub cache (TORCH_HOME) of the test's own;
    a test that wants `--weights DEFAULT` saves a file at `zfnet.sources.hub_file(enum)`."""
    monkeypatch.setenv("ZFNET_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
