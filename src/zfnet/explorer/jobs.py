"""Long computations of the explorer, off the request thread: one at a time, in order, each
with its progress and a way to cancel it.

A `Job` runs `work(progress)` on the runner's one worker thread; `progress(done, total)` is
what the engines call as they go (`mine_topk`, `occlusion`, …) and where a cancelled job stops:
it raises `Cancelled` there. Jobs are named by a key (what they compute), so a second request
for the same thing joins the job already queued or running instead of starting another.

A job submitted as `abandonable` (a view of one image or unit: occlusion, evolution) is wanted
only while someone follows it: one that no client has asked about (joined or read, `touch`)
for `abandon_after` seconds is cancelled as abandoned — queued, it never starts; running, it
stops at its next progress report — so that the job a page wants now does not wait behind
the ones it walked away from.

A job is shared by every client that asks for the same thing (students on one server, a link
passed around): a client's cancel withdraws its own interest, and stops the job only when no
other client has asked about it within `abandon_after` seconds (`JobRunner.cancel`).
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

STATES = ("queued", "running", "done", "failed", "cancelled")
KEEP = 200  # finished jobs remembered
ABANDON_AFTER = 10.0  # seconds without a client asking about an abandonable job


class Cancelled(Exception):
    """Raised inside a job's work, at its next progress report, once it is cancelled."""


@dataclass
class Job:
    """One long computation: its state, progress and, when it failed, the one-line reason."""

    id: str
    kind: str
    key: Hashable
    what: str
    state: str = "queued"
    done: int = 0
    total: int = 0
    error: str | None = None
    # a failure told to a client (its result asked for, or the job read when it had failed):
    # the next request for the result tries again
    told: bool = False
    # seconds without a client asking after which the job is dropped (None: it runs anyway)
    abandon_after: float | None = None
    seen: float = field(default_factory=time.monotonic)  # when a client last asked about it
    abandoned: bool = False  # cancelled because no client asked about it any more
    # client -> when it last asked about the job (`touch(client)`): who a cancel would let down
    followers: dict[str, float] = field(default_factory=dict, repr=False)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    future: Future | None = field(default=None, repr=False)

    def touch(self, client: str | None = None) -> None:
        """A client (named, where the caller knows it) asked about the job: it is still
        wanted."""
        self.seen = time.monotonic()
        if client is not None:
            self.followers[client] = self.seen

    def others(self, client: str | None, within: float) -> int:
        """How many clients other than `client` asked about the job in the last `within`
        seconds."""
        now = time.monotonic()
        return sum(c != client and now - t <= within for c, t in self.followers.items())

    def unwanted(self) -> bool:
        """Whether the job is abandonable and no client asked about it for too long."""
        return self.abandon_after is not None and \
            time.monotonic() - self.seen > self.abandon_after

    def progress(self, done: int, total: int) -> None:
        """The engines' callback: records progress; raises `Cancelled` once cancelled or
        abandoned."""
        self.done, self.total = int(done), int(total)
        if not self.cancel.is_set() and self.unwanted():
            self.abandoned = True
            self.cancel.set()
        if self.cancel.is_set():
            raise Cancelled

    def to_dict(self, waiting_for: str | None = None, ahead: int = 0) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "what": self.what, "state": self.state,
                "done": self.done, "total": self.total, "error": self.error,
                "waiting_for": waiting_for, "ahead": ahead, "abandoned": self.abandoned}


class JobRunner:
    """Runs jobs one after another on one thread (the CPU is the limit: two at once would only
    slow both), remembers the recent ones, and says what a queued job waits for."""

    def __init__(self, nonlinear: str = "error", abandon_after: float = ABANDON_AFTER) -> None:
        """`nonlinear`: the jobs' thread's `zfnet.graph.nonlinear` mode. `abandon_after`: how
        long an abandonable job waits for a client to ask about it (the module doc)."""
        from zfnet.graph import set_nonlinear

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zfnet-job",
                                        initializer=set_nonlinear, initargs=(nonlinear,))
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._by_key: dict[Hashable, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.abandon_after = abandon_after

    def submit(self, kind: str, key: Hashable, what: str,
               work: Callable[[Callable[[int, int], None]], None],
               abandonable: bool = False, client: str | None = None) -> Job:
        """The job computing `key`: the queued or running one (asked about again), or a new
        one running `work(progress)`. A finished job is not reused (its result is where
        `work` put it; a failed or cancelled one is tried again), nor is one asked to stop
        that has not reached its next progress report yet (a new one is queued behind it).
        `abandonable`: dropped once no client asks about it (the module doc). `client`: who
        asks (see `cancel`)."""
        with self._lock:
            job = self._by_key.get(key)
            if job is not None and job.state in ("queued", "running") \
                    and not job.cancel.is_set():
                job.touch(client)
                return job
            # a job cancelled (or abandoned) but still running until its next progress report
            # is not joined: it is dying, and would end "cancelled" for the one asking again
            job = Job(f"{kind}-{next(self._ids)}", kind, key, what,
                      abandon_after=self.abandon_after if abandonable else None)
            job.touch(client)
            self._jobs[job.id] = job
            self._by_key[key] = job
            while len(self._jobs) > KEEP:
                old = next(iter(self._jobs.values()))
                if old.state in ("queued", "running"):
                    break
                self._jobs.popitem(last=False)
                if self._by_key.get(old.key) is old:
                    del self._by_key[old.key]
        job.future = self._pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Callable[[int, int], None]], None]) -> None:
        with self._lock:  # one decision with `cancel`: never "cancelled" while it runs
            if not job.cancel.is_set() and job.unwanted():
                job.abandoned = True
                job.cancel.set()
            if job.cancel.is_set():
                job.state = "cancelled"
                return
            job.state = "running"
        try:
            work(job.progress)
        except Cancelled:
            job.state = "cancelled"
        except Exception as e:  # noqa: BLE001  # a job's failure is reported, not raised
            job.error = _one_line(e)
            job.state = "failed"
            traceback.print_exc()  # the server's log keeps the whole story
        else:
            job.state = "done"

    def get(self, job_id: str, client: str | None = None) -> Job | None:
        """The job, asked about by a client (a failed one is then marked as told: asking for
        its result tries again)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.touch(client)
                if job.state == "failed":
                    job.told = True
            return job

    def untold_failure(self, key: Hashable) -> Job | None:
        """The latest job for `key` if it failed and no client has been told yet, marking it
        told: its failure answers the next request for the result (a client polling for it
        stops), and the request after that tries again."""
        with self._lock:
            job = self._by_key.get(key)
            if job is None or job.state != "failed" or job.told:
                return None
            job.told = True
            return job

    def last(self, key: Hashable) -> Job | None:
        """The latest job for `key`, whatever its state."""
        with self._lock:
            return self._by_key.get(key)

    def cancel(self, job_id: str, client: str | None = None) -> Job | None:
        """Asks the job to stop: a queued one never starts, a running one stops at its next
        progress report. A finished job is left as it is, and so is one that a client other
        than `client` asked about in the last `abandon_after` seconds: `client` stops
        following it, and it goes on for the others (`Job.others`)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.state in ("queued", "running"):
                if client is not None:
                    job.followers.pop(client, None)
                if not job.others(client, self.abandon_after):
                    self._stop(job)
        return job

    @staticmethod
    def _stop(job: Job) -> None:
        job.cancel.set()
        if job.state == "queued":
            job.state = "cancelled"

    def waiting_for(self, job: Job) -> tuple[str | None, int]:
        """What runs before a queued job: the running job's words, and how many jobs will run
        before it (the running one and those queued ahead of it that will still start)."""
        if job.state != "queued":
            return None, 0
        running, ahead = None, 0
        with self._lock:
            for j in self._jobs.values():  # in the order they were submitted: the queue's
                if j is job:
                    break
                if j.state == "running":
                    running, ahead = j.what, ahead + 1
                elif j.state == "queued" and not j.cancel.is_set() and not j.unwanted():
                    ahead += 1
        return running, ahead

    def describe(self, job: Job) -> dict[str, Any]:
        return job.to_dict(*self.waiting_for(job))

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def shutdown(self) -> None:
        """Cancels every job and waits for the running one to stop."""
        with self._lock:
            for job in self._jobs.values():
                if job.state in ("queued", "running"):
                    self._stop(job)
        self._pool.shutdown(wait=True, cancel_futures=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
