"""`zfnet.train.distributed` in one process (several: tests/train/test_processes.py)."""

import pytest
import torch

from zfnet.train import distributed as ddp


def test_late_flags_in_one_process_take_what_was_posted_once() -> None:
    flags = ddp.LateFlags(ddp.DistInfo(0, 1, 0, torch.device("cpu")), 3)
    assert not flags.pending
    flags.post([True, False, True])
    assert flags.pending
    with pytest.raises(RuntimeError, match="not taken"):
        flags.post([False] * 3)
    assert flags.take() == [True, False, True]
    assert not flags.pending
    with pytest.raises(RuntimeError, match="no flags were posted"):
        flags.take()
