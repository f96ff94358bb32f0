"""One finished tiny run shared by the tests that only read it (3 epochs, all kept)."""

import pytest

from tests.train.tiny import tiny_bundle, tiny_config
from zfnet.train import train


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """The uninterrupted 3-epoch run (augmentation, dropout and renorm on): (run_dir, summary)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    summary = train(tiny_config(out, epochs=3), bundle=tiny_bundle())
    return out, summary
