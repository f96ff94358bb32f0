"""Fixtures shared by the whole suite."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: small convolutions on a shared 2-core machine run far
    faster that way than with threads competing for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
