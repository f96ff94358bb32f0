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


def _agree_in_two(rank: int, store_path: str, results) -> None:
    """One of two gloo processes: posts its own flags each round, takes the agreed ones."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=2)
    try:
        flags = ddp.LateFlags(ddp.DistInfo(rank, 2, 0, torch.device("cpu")), 2)
        got = []
        rounds = [[False, False], [rank == 1, False], [False, rank == 0], [rank == 0, rank == 1]]
        flags.post(rounds[0])
        for mine in rounds[1:]:
            agreed = flags.take()  # the round before, while this one is not posted yet
            flags.post(mine)
            got.append(agreed)
        got.append(flags.take())
        results[rank] = got
    finally:
        dist.destroy_process_group()


def test_late_flags_in_two_processes_are_true_where_any_process_posted_true(tmp_path) -> None:
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_agree_in_two, args=(str(tmp_path / "store"), results), nprocs=2, join=True)
    want = [[False, False], [True, False], [False, True], [True, True]]
    assert results[0] == results[1] == want


def test_current_rank_is_torchruns_rank_without_a_group_and_0_without_torchrun(monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert ddp.current_rank() == 0
    monkeypatch.setenv("RANK", "3")
    assert ddp.current_rank() == 3  # after the group is left, a later stage still knows
    monkeypatch.setenv("WORLD_SIZE", "1")
    info = ddp.setup("cpu")
    assert (info.rank, info.is_main) == (3, False)


def test_an_error_of_every_process_is_said_by_the_first_alone(monkeypatch) -> None:
    """Under torchrun each process met the same bad input and printed it (3 processes: 3
    lines, rank 1's sometimes first): the first says it, posting it in the launch's store; the
    others say theirs only where it differs or the first has none (its own share of the data)."""
    import socket
    from datetime import timedelta

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10),
                           wait_for_workers=False)  # torchrun's agent holds it
    for k, v in {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                 "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0"
                 }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RANK", "1")
    assert ddp.says_error("rank 1's own", wait=0.5)  # the first has said nothing
    monkeypatch.setenv("RANK", "0")
    assert ddp.says_error("bad --k")
    monkeypatch.setenv("RANK", "1")
    assert not ddp.says_error("bad --k")  # the first said it
    assert ddp.says_error("its share of the data is broken")  # not what the first said
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # a restarted launch: said again
    assert ddp.says_error("bad --k", wait=0.5)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # no store: each says its own
    assert ddp.says_error("bad --k")
    del server
