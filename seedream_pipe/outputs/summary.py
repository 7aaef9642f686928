"""The summary of a sweep: what the runner prints when it ends and `report` prints on demand.

Counts by status, latency percentiles, throughput, the estimated cost, and how hard the API
pushed back (429s and retries). Pure: from job records and run rows to numbers to text.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedream_pipe.state import IN_FLIGHT_STATES, JOB_STATES, JobRecord, StateStore
from seedream_pipe.words import counted

#: Summary keys the runner records per run (in `runs.summary`) that we add up across runs.
_RATE_LIMITED_KEYS = ("rate_limited", "http_429", "429s")
_RETRY_KEYS = ("retries",)


@dataclass(frozen=True, slots=True)
class Summary:
    """Figures of one output folder's jobs (those in the latest plan)."""

    jobs: int
    counts: dict[str, int]  # every job state, zeros included
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    images_per_minute: float | None
    estimated_cost: float | None  # USD; None when the recipe names no price
    rate_limited: int
    retries: int
    http_requests: int | None = None
    price_per_image: float | None = None
    wall_s: float | None = None
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (index, job_id, reason)
    possible_duplicates: int = 0  # jobs maybe sent (and paid for) twice, over all runs
    in_flight: int = 0  # jobs the API took that have not finished: billed when they do
    runs: int = 0  # the runs whose time wall_s adds up (the figures are the folder's, of them all)

    @property
    def done(self) -> int:
        return self.counts.get("downloaded", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def cancelled(self) -> int:
        return self.counts.get("cancelled", 0)

    @property
    def pending(self) -> int:
        """Jobs neither done, failed nor cancelled (never run, in flight, or interrupted)."""
        return self.jobs - self.done - self.failed - self.cancelled

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "counts": dict(self.counts),
            "done": self.done,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "pending": self.pending,
            "latency_s": {
                "p50": self.latency_p50,
                "p90": self.latency_p90,
                "p99": self.latency_p99,
            },
            "images_per_minute": self.images_per_minute,
            "estimated_cost_usd": self.estimated_cost,
            "in_flight": self.in_flight,
            "price_per_image": self.price_per_image,
            "rate_limited": self.rate_limited,
            "retries": self.retries,
            "http_requests": self.http_requests,
            "wall_s": self.wall_s,
            "runs": self.runs,
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation, like numpy's default; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _run_total(runs: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> int | None:
    total: int | None = None
    for run in runs:
        summary = run.get("summary") or {}
        for key in keys:
            value = summary.get(key) if isinstance(summary, Mapping) else None
            if isinstance(value, int | float):
                total = (total or 0) + int(value)
                break
    return total


def summarize_jobs(
    jobs: Sequence[JobRecord],
    *,
    runs: Sequence[Mapping[str, Any]] = (),
    price_per_image: float | None = None,
) -> Summary:
    """The summary of these jobs; `runs` (the state's run rows) supply 429 and request counts."""
    counts = {state: 0 for state in JOB_STATES}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    latencies = [job.latency_s for job in jobs if job.latency_s is not None]
    done = [job for job in jobs if job.state == "downloaded"]

    # Throughput over the time spent running: the sum of the runs' durations, so that a sweep
    # interrupted today and resumed tomorrow is not credited with the night in between. A
    # folder without run records falls back to first submit -> last image on disk.
    run_spans = [
        float(run["finished_at"]) - float(run["started_at"])
        for run in runs
        if run.get("started_at") is not None and run.get("finished_at") is not None
    ]
    wall: float | None = sum(run_spans) if run_spans else None
    timed_runs = len(run_spans) if wall else 0  # (the runs the time is of; none when it is not)
    if not wall:
        starts = [job.submitted_at for job in jobs if job.submitted_at is not None]
        ends = [job.downloaded_at for job in done if job.downloaded_at is not None]
        wall = (max(ends) - min(starts)) if starts and ends else None
    per_minute = len(done) / wall * 60 if wall and wall > 0 else None

    # Every image the API made is billed, including those whose download later failed, so
    # the cost counts jobs that reached `completed`, plus possible duplicates sent twice.
    billed = sum(1 for job in jobs if job.completed_at is not None or job.state == "downloaded")
    billed += sum(1 for job in jobs if job.possible_duplicate)
    cost = None if price_per_image is None else round(billed * price_per_image, 6)
    in_flight = sum(counts.get(state, 0) for state in IN_FLIGHT_STATES)

    retries = _run_total(runs, _RETRY_KEYS)
    return Summary(
        jobs=len(jobs),
        counts=counts,
        latency_p50=percentile(latencies, 50),
        latency_p90=percentile(latencies, 90),
        latency_p99=percentile(latencies, 99),
        images_per_minute=per_minute,
        estimated_cost=cost,
        rate_limited=_run_total(runs, _RATE_LIMITED_KEYS) or 0,
        retries=retries if retries is not None else sum(job.retries for job in jobs),
        http_requests=_run_total(runs, ("http_requests",)),
        price_per_image=price_per_image,
        in_flight=in_flight,
        wall_s=wall,
        failures=[
            (job.job_index, job.job_id, job.error or "no reason recorded") for job in jobs if job.state == "failed"
        ],
        possible_duplicates=sum(1 for job in jobs if job.possible_duplicate),
        runs=timed_runs,
    )


def summarize(source: str | os.PathLike[str] | StateStore) -> Summary:
    """The summary of an output folder (or of an open state store)."""
    if isinstance(source, StateStore):
        meta = source.get_meta("recipe", {}) or {}
        price = meta.get("price_per_image") if isinstance(meta, Mapping) else None
        return summarize_jobs(
            source.jobs(),
            runs=source.runs(),
            price_per_image=float(price) if isinstance(price, int | float) else None,
        )
    from seedream_pipe.outputs._folder import open_output

    folder = open_output(Path(source), for_writing=False)
    return summarize_jobs(folder.jobs, runs=folder.runs, price_per_image=folder.price_per_image)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


def format_summary(summary: Summary, *, max_failures: int = 5) -> str:
    """A few lines for the terminal."""
    parts = [f"{summary.done:,} done"]  # (thousands grouped, as counted() groups the total)
    if summary.failed:
        parts.append(f"{summary.failed:,} failed")
    if summary.cancelled:
        parts.append(f"{summary.cancelled:,} cancelled")
    if summary.pending:
        in_flight = {
            state: n
            for state, n in summary.counts.items()
            if n and state not in ("downloaded", "failed", "cancelled")
        }
        detail = ", ".join(f"{n:,} {state}" for state, n in in_flight.items())
        parts.append(f"{summary.pending:,} not done ({detail})")
    lines = [f"{counted(summary.jobs, 'job')}: " + ", ".join(parts)]
    lines.append(
        f"latency p50 {_seconds(summary.latency_p50)} · p90 {_seconds(summary.latency_p90)} · p99 {_seconds(summary.latency_p99)}"
    )
    throughput = (
        f"{summary.images_per_minute:.1f} images/min"
        if summary.images_per_minute is not None
        else "- images/min"
    )
    if summary.wall_s is not None:
        throughput += f" over {_seconds(summary.wall_s)}"
        if summary.runs > 1:  # (a resumed folder: its figures are of every run, not the last)
            throughput += f" of {summary.runs} runs"
    cost = (
        f"estimated cost ${summary.estimated_cost:.2f}"
        if summary.estimated_cost is not None
        else "estimated cost: no price_per_image in the recipe"
    )
    if summary.estimated_cost is not None and summary.runs > 1:
        cost += " in all"
    if summary.in_flight and summary.price_per_image is not None:
        # (an interrupted run keeps the jobs already running: the API bills each as it finishes)
        more = round(summary.in_flight * summary.price_per_image, 6)
        cost += f" (up to ${more:.2f} more for {summary.in_flight:,} in flight)"
    lines.append(f"{throughput} · {cost}")
    pushback = f"429s {summary.rate_limited} · retries {summary.retries}"
    if summary.http_requests is not None:
        pushback += f" · HTTP requests {summary.http_requests}"
    lines.append(pushback)
    if summary.possible_duplicates:
        lines.append(
            f"possible duplicates: {summary.possible_duplicates} (jobs the API may have taken without "
            "a usable answer: one sent again may be paid for twice; report.csv's possible_duplicate "
            "says which)"
        )
    for index, job_id, reason in summary.failures[:max_failures]:
        lines.append(f"  failed: job {index} ({job_id}): {reason}")  # (as `status` names a job)
    if len(summary.failures) > max_failures:
        lines.append(
            f"  ... and {len(summary.failures) - max_failures} more failures (see report.csv)"
        )
    return "\n".join(lines)
