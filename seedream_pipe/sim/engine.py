"""The simulator's back end: jobs, the FIFO queue, the workers, the rate limit and the counters.

Everything here runs on the simulator's event loop, except `Stats.snapshot`, which other threads
call (the in-process `Simulator.stats()`), hence its lock. Time comes from injected clocks: the
rate limiter reads a monotonic clock and timestamps read a wall clock, so tests can move time
instead of sleeping. Job durations are real `asyncio.sleep`s (tests use tiny latencies).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from seedream_pipe.sim.config import FAULT_NAMES, SimConfig
from seedream_pipe.sim.faults import Dice

Clock = Callable[[], float]

IN_QUEUE = "in_queue"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})

# Plain counters of stats(), in the order the contract lists them.
COUNTERS = (
    "submits_accepted",
    "submits_rejected",
    "rate_limited",
    "polls",
    "result_reads",
    "downloads",
    "downloads_with_token",
    "cancels",
    "cancelled",
    "completed",
    "failed",
    "requests_total",
)


def body_hash(body: Any) -> str:
    """The canonical hash of a request body: how stats tell one job's body from another's."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Stats:
    """What the simulator saw and did. Written on the event loop, read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._per_body: dict[str, int] = {}
        self._faults = dict.fromkeys(FAULT_NAMES, 0)
        self._in_flight = 0
        self._peak_in_flight = 0
        self.token_revoked = False

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def fault(self, name: str) -> None:
        with self._lock:
            self._faults[name] += 1

    def accepted(self, digest: str) -> int:
        """Count an accepted submit; returns how many of this body there now are (its take)."""
        with self._lock:
            self._counters["submits_accepted"] += 1
            take = self._per_body[digest] = self._per_body.get(digest, 0) + 1
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            return take

    def finished(self, status: str) -> None:
        """A job reached a terminal state (counted once per job)."""
        with self._lock:
            self._counters[status] += 1
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def submits_accepted(self) -> int:
        with self._lock:
            return self._counters["submits_accepted"]

    def snapshot(self) -> dict[str, Any]:
        """The dict `GET /admin/stats` answers (a copy: safe to keep and compare)."""
        with self._lock:
            c = self._counters
            return {
                "submits_accepted": c["submits_accepted"],
                "submits_rejected": c["submits_rejected"],
                "submits_per_body": dict(self._per_body),
                "duplicate_submits": sum(n - 1 for n in self._per_body.values()),
                "rate_limited": c["rate_limited"],
                "polls": c["polls"],
                "result_reads": c["result_reads"],
                "downloads": c["downloads"],
                "downloads_with_token": c["downloads_with_token"],
                "cancels": c["cancels"],
                "cancelled": c["cancelled"],
                "completed": c["completed"],
                "failed": c["failed"],
                "in_flight": self._in_flight,
                "peak_in_flight": self._peak_in_flight,
                "requests_total": c["requests_total"],
                "faults": dict(self._faults),
                "token_revoked": self.token_revoked,
            }


class SlidingWindowLimiter:
    """At most `rpm` admissions in any 60-second window (None: no limit).

    A sliding window rather than a token bucket: it is what "N requests per minute" means to a
    user reading an account's limits, and it never lets a burst of 2 x rpm through at a refill.
    """

    WINDOW_S = 60.0

    def __init__(self, rpm: int | None, clock: Clock) -> None:
        self.rpm = rpm
        self._clock = clock
        self._times: deque[float] = deque()

    def admit(self) -> float | None:
        """Admit one request now (None), or say in how many seconds a slot frees up."""
        if self.rpm is None:
            return None
        now = self._clock()
        while self._times and self._times[0] <= now - self.WINDOW_S:
            self._times.popleft()
        if len(self._times) < self.rpm:
            self._times.append(now)
            return None
        return self._times[0] + self.WINDOW_S - now


@dataclass(slots=True, eq=False)  # identity equality: the queue finds a job by `is`, fast
class SimJob:
    """One accepted request and where it is in its life."""

    request_id: str
    model: str
    body: Mapping[str, Any]
    digest: str
    created_at: float  # wall clock, unix seconds
    status: str = IN_QUEUE
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, str] | None = None
    ticket: int = 0  # order of arrival in the queue, for O(log n) queue positions
    take: int = 1  # the n-th accepted submit of this body: its image is the n-th drawn for it


class Engine:
    """The queue and its workers: accepted jobs go in_queue -> in_progress -> a terminal state."""

    def __init__(self, cfg: SimConfig, stats: Stats, dice: Dice, wall_clock: Clock) -> None:
        self.cfg = cfg
        self.stats = stats
        self.dice = dice
        self._wall = wall_clock
        self.jobs: dict[str, SimJob] = {}
        self._queue: deque[SimJob] = deque()
        # Queue positions without scanning the queue (a runner may poll thousands of queued
        # jobs thousands of times a second): queued jobs hold increasing tickets, so the jobs
        # ahead of one are the tickets between the head's and its own, minus those cancelled.
        self._next_ticket = 0
        self._cancelled_tickets: list[int] = []  # sorted; tickets of jobs cancelled while queued
        # created on the loop in start()
        self._queued: asyncio.Event
        self._changed: asyncio.Event
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._target = cfg.workers
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the workers (on the running loop)."""
        self._queued = asyncio.Event()
        self._changed = asyncio.Event()
        self._started = True
        self.set_workers(self.cfg.workers)

    async def stop(self) -> None:
        self._started = False
        tasks = list(self._workers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()

    def set_workers(self, count: int) -> None:
        """Change the number of workers at run time (0 pauses the queue); extra ones retire
        after their current job."""
        self._target = count
        if not self._started:
            return  # start() spawns them
        for index in range(count):
            task = self._workers.get(index)
            if task is None or task.done():
                self._workers[index] = asyncio.create_task(self._work(index), name=f"sim-worker-{index}")
        self._wake_workers()

    # An event that is set and replaced: every waiter wakes, re-checks its condition and waits
    # on the fresh event if it still has to. Single-threaded (the loop), so nothing is missed.
    def _wake_workers(self) -> None:
        self._queued.set()
        self._queued = asyncio.Event()

    def _announce_change(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds, re-checking it after every job state change."""
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    # -- jobs -------------------------------------------------------------------------------

    def submit(self, model: str, body: Mapping[str, Any], digest: str) -> SimJob:
        job = SimJob(
            request_id=str(uuid.uuid4()), model=model, body=body, digest=digest, created_at=self._wall()
        )
        self.jobs[job.request_id] = job
        job.ticket = self._next_ticket
        self._next_ticket += 1
        self._queue.append(job)
        job.take = self.stats.accepted(digest)
        self._wake_workers()
        self._announce_change()
        return job

    def queue_position(self, job: SimJob) -> int:
        """How many queued jobs are ahead of this one (0: it starts next)."""
        if job.status != IN_QUEUE or not self._queue:
            return 0
        head = self._queue[0].ticket
        cancelled = self._cancelled_tickets
        between = bisect.bisect_left(cancelled, job.ticket) - bisect.bisect_right(cancelled, head)
        return job.ticket - head - between

    def cancel(self, job: SimJob) -> str:
        """Cancel a queued job. Returns the outcome: cancelled or not_cancellable."""
        if job.status == IN_QUEUE:
            self._queue.remove(job)
            bisect.insort(self._cancelled_tickets, job.ticket)
            self._finish(job, CANCELLED)
            return "cancelled"
        if job.status == CANCELLED:
            return "cancelled"  # idempotent: a retried cancel gets the same answer
        return "not_cancellable"

    def _forget_cancelled_before_head(self) -> None:
        cancelled = self._cancelled_tickets
        if cancelled and (not self._queue or cancelled[0] < self._queue[0].ticket):
            head = self._queue[0].ticket if self._queue else self._next_ticket
            del cancelled[: bisect.bisect_left(cancelled, head)]

    def _renumber(self) -> None:
        """Give the queue consecutive tickets again (after a job went back to its head)."""
        for ticket, queued in enumerate(self._queue, start=self._next_ticket):
            queued.ticket = ticket
        self._next_ticket += len(self._queue)
        self._cancelled_tickets.clear()

    def _finish(self, job: SimJob, status: str, error: dict[str, str] | None = None) -> None:
        job.status = status
        job.error = error
        job.finished_at = self._wall()
        self.stats.finished(status)
        self._announce_change()

    def _duration(self) -> float:
        jitter = self.cfg.latency_jitter
        offset = self.dice.uniform("latency", -jitter, jitter) if jitter > 0 else 0.0
        return max(0.0, self.cfg.latency + offset)

    async def _work(self, index: int) -> None:
        while True:
            queued = self._queued
            if index >= self._target:
                return
            if not self._queue:
                await queued.wait()
                continue
            job = self._queue.popleft()
            self._forget_cancelled_before_head()
            job.status = IN_PROGRESS
            job.started_at = self._wall()
            self._announce_change()
            try:
                await asyncio.sleep(self._duration())
            except asyncio.CancelledError:
                # stopped mid-job: put it back at the head of the queue, so a simulator started
                # again (same object) finishes it instead of leaving it in_progress forever
                job.status = IN_QUEUE
                job.started_at = None
                self._queue.appendleft(job)
                self._renumber()
                raise
            if self.dice.hit("job_fail_rate", self.cfg.faults.job_fail_rate):
                self.stats.fault("job_fail_rate")
                self._finish(
                    job,
                    FAILED,
                    {"code": "generation_failed", "message": "The model failed to generate an image (simulated job failure)."},
                )
            else:
                self._finish(job, COMPLETED)
