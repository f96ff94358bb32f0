"""Many processes / machines with torchrun: process group, resumable sampler, reductions.

Launch (one line per machine; gloo on CPU, nccl on GPU is chosen automatically)::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --master-addr HOST0 --master-port 29500 \
        -m zfnet.cli train --data imagefolder:/data/imagenet --model zfnet --out runs/zf
    (the same on HOST1 with --node-rank 1)

Without torchrun's environment variables everything here is a no-op single process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank among world_size, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


DEVICES = "auto, cpu, cuda, cuda:N"


def parse_device(device: str) -> torch.device | None:
    """`device` as a torch.device (None for "auto"); ValueError listing the valid names for
    anything but auto, cpu, cuda and cuda:N. Does not look for a GPU."""
    if device == "auto":
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not known; valid: {DEVICES}")
    return dev


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """"auto" -> this process's GPU if CUDA is available, else the CPU; anything else as given
    (ValueError for an unknown name or a GPU that is not there)."""
    dev = parse_device(device)
    if dev is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine; valid: "
                         "cpu, auto")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                         f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def current_rank() -> int:
    """This process's rank: in the joined process group, else the one torchrun gave it (RANK),
    else 0. One answer for "is this the first process?" before, during and after `setup`."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


ERROR_KEY = "zfnet/error"  # where the first process posts its error, in the launch's store


def _launch_store(wait: float) -> Any:
    """The key-value store torchrun's agent holds for the processes of this launch (every node
    reaches it at MASTER_ADDR:MASTER_PORT, before and after they join a process group); None
    without one (no torchrun, or an agent without a store)."""
    from datetime import timedelta

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not dist.is_available():
        return None
    try:
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                             is_master=False, timeout=timedelta(seconds=wait),
                             wait_for_workers=False)
    except (KeyError, ValueError, RuntimeError, OSError):
        return None


def says_error(message: str, wait: float = 5.0) -> bool:
    """Under torchrun, whether this process prints its error `message` (the rest of the
    processes of a launch most often meet the same bad input, and would print it each): the
    first does, and posts it in the launch's store; another one prints its own only where the
    first's differs, or has not come within `wait` s (an error of its own share of the data).
    True without torchrun, or where the store cannot be reached."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return True
    store = _launch_store(wait)
    if store is None:
        return True
    key = f"{ERROR_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    from datetime import timedelta

    try:
        if current_rank() == 0:
            store.set(key, message)
            return True
        store.wait([key], timedelta(seconds=wait))
        return store.get(key).decode("utf-8", "replace") != message
    except (RuntimeError, OSError):  # not posted in time (the first has no such error)
        return True


def setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR…),
    or describe a single process. nccl when this process uses a GPU, gloo otherwise. A group
    joined already (by the caller) is used as it is."""
    joined = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if joined else int(os.environ.get("WORLD_SIZE", "1"))
    rank = current_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def teardown(info: DistInfo) -> None:
    """Leave the process group joined by `setup`."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def processes(device: str = "auto") -> Iterator[DistInfo]:
    """`setup` for the length of a `with` block: a dataset-wide stage (`zfnet eval`, top-k
    mining) across the processes torchrun started, or one process without torchrun. Leaves a
    process group that was joined before it (by the caller) as it found it."""
    joined_before = dist.is_available() and dist.is_initialized()
    info = setup(device)
    try:
        yield info
    finally:
        if not joined_before:
            teardown(info)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all processes (float64, so counts stay exact)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """The mean of one number over all processes (the number itself in one process)."""
    return all_reduce_sum([value], info)[0] / info.world_size


def all_reduce_max(flags: list[bool], info: DistInfo) -> list[bool]:
    """Each flag true on every process if it is true on any, so that all processes stop (or
    fail) at the same step instead of waiting for each other forever."""
    if not info.enabled:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [v > 0 for v in t.tolist()]


class LateFlags:
    """A few flags agreed by every process (true on all if true on any), read one step late so
    that the host never waits for the device to agree.

    `post(flags)` starts the all-reduce of this step's flags; `take()` returns the result of the
    last one posted (each post is taken once, in turn). On a GPU the flags go to the device and
    back through page-locked memory behind the work queued so far: taken after the next step is
    queued, they wait for the device to reach the point of the post, not for the step queued
    since (as the per-step losses of `zfnet.train.recipe`). An all-reduce that the host waits for
    at once (`all_reduce_max`) drains the device's queue instead: two such per step kept a GPU
    idle while the host queued the next step. On gloo the all-reduce runs in gloo's own threads.
    With one process, `take` returns the flags posted."""

    def __init__(self, info: DistInfo, n: int) -> None:
        self.info = info
        self._posted: Any = None  # one process: the flags; gloo: (tensor, work); GPU: True
        self._cuda = info.enabled and info.device.type == "cuda"
        if self._cuda:
            self._host_in = torch.zeros(n, pin_memory=True)
            self._host_out = torch.zeros(n, pin_memory=True)
            self._done = torch.cuda.Event()

    @property
    def pending(self) -> bool:
        """Whether flags were posted and not taken yet."""
        return self._posted is not None

    def post(self, flags: list[bool]) -> None:
        """Start agreeing on `flags` (a post must be taken before the next)."""
        if self._posted is not None:
            raise RuntimeError("the flags posted before were not taken")
        values = [1.0 if f else 0.0 for f in flags]
        if not self.info.enabled:
            self._posted = values
        elif self._cuda:
            self._host_in.copy_(torch.tensor(values))  # free: `take` waited for its last copy
            flags_dev = self._host_in.to(self.info.device, non_blocking=True)
            dist.all_reduce(flags_dev, op=dist.ReduceOp.MAX, async_op=True).wait()
            self._host_out.copy_(flags_dev, non_blocking=True)
            self._done.record()
            self._posted = True
        else:
            t = torch.tensor(values)
            self._posted = (t, dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True))

    def take(self) -> list[bool]:
        """The agreed flags of the last post (waits for that all-reduce only)."""
        posted, self._posted = self._posted, None
        if posted is None:
            raise RuntimeError("no flags were posted")
        if not self.info.enabled:
            values = posted
        elif self._cuda:
            self._done.synchronize()
            values = self._host_out.tolist()
        else:
            t, work = posted
            work.wait()
            values = t.tolist()
        return [v > 0 for v in values]


def first_difference(values: dict[str, Any], info: DistInfo
                     ) -> tuple[str, Any, int, Any] | None:
    """Where the processes were given different `values` (JSON-able, e.g. options): the first
    key whose value on some rank differs from rank 0's, as (key, rank 0's value, that rank,
    its value); None where all agree, or in one process. Collective: every process calls it."""
    if not info.enabled:
        return None
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, values)
    first = gathered[0]
    for rank, other in enumerate(gathered[1:], 1):
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                return key, first.get(key), rank, other.get(key)
    return None


def raise_any_error(failed: Exception | None, info: DistInfo, what: str) -> None:
    """Where any process of a stage failed, every process raises, none left waiting for the
    others: the one that failed its own error; the others the first failed process's again
    where it was a broken file (`BadImageError`) or a user's error (ValueError, OSError), so
    that torchrun's processes say one line (`says_error`), else a RuntimeError that `what`
    stopped. In one process, `failed` raised as it is. Collective: every process calls it."""
    from zfnet.data.images import BadImageError

    if not info.enabled:
        if failed is not None:
            raise failed
        return
    mine: tuple[str, Any] | None = None
    if isinstance(failed, BadImageError):
        mine = ("image", (str(failed.path), failed.reason))
    elif isinstance(failed, (ValueError, OSError)):
        mine = ("user", str(failed))
    elif failed is not None:
        mine = ("bug", None)
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, mine)
    first = next((g for g in gathered if g is not None), None)  # the first process's, by rank
    if failed is not None:
        raise failed
    if first is None:
        return
    kind, said = first
    if kind == "image":
        raise BadImageError(*said)
    if kind == "user":
        raise ValueError(said)
    raise RuntimeError(f"{what} stopped: another process failed (its error is printed too)")


def gather_tensors(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every process's copy of a same-shaped tensor (e.g. RNG states), on the CPU."""
    if not info.enabled:
        return [t.cpu()]
    local = t.to(info.device)
    out = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(out, local)
    return [o.cpu() for o in out]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` that can start part-way into an epoch.

    The order of an epoch depends only on (seed, epoch), as in `DistributedSampler`; with
    `skip = k` the first k indices of this rank's share are left out, so that a run resumed
    after k samples sees exactly the batches the uninterrupted run would have seen. Works
    without a process group (pass num_replicas=1, rank=0).
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=False)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip
