"""The runner: a recipe's plan executed against the Model API, resumably. A job the API took is
never submitted again unless asked (--retry-failed); one whose submit outcome is unknown is sent
once more by default (see below).

    from seedream_pipe.runner import run_recipe
    result = run_recipe(load_recipe("recipes/demo.yaml"), api=api_settings())
    result.exit_code, result.counts

Resume is the normal path. Each run re-plans, syncs the plan into the output folder's state
(matched by job_id) and does only what is missing, by state:

    planned, cancelled        -> submit
    submitting, submit_unknown -> the first POST may have created the job: submit once more and
                                 mark it possible_duplicate (or fail it: --no-resubmit-unknown)
    submitted, in_queue, in_progress -> poll; never submit again
    completed                 -> download
    downloaded                -> skip, unless the file is missing or its sha256 differs
    failed                    -> skip (--retry-failed: poll it if it has a request id and only
                                 timed out or lost contact, else submit again)

Every transition is committed before the network call that depends on it: `submitting` before
the POST, the request_id right after the answer. Concurrency is the number of jobs in flight
(submitted, not finished); submits are paced by the `SubmitPacer`, everything else by the
`RequestBudget`.

How a run ends (exit code): 0 all done; 1 some jobs failed; 77 the token was refused (stop at
once); 75 out of credit (in-flight jobs are finished first) or rate limited beyond every retry;
69 the service kept failing (5xx/network beyond every retry): submits stop, jobs already in
flight stay resumable; 65 the model is unknown; 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import functools
import logging
import math
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar
from urllib.parse import urlsplit

import httpx

from seedream_pipe import __version__
from seedream_pipe.client import (
    KNOWN_STATES,
    MAX_DOWNLOAD_BYTES,
    AcceptedUnread,
    JobResult,
    JobStatus,
    ModelApiClient,
    Submission,
    UnknownOutcome,
    current_job,
)
from seedream_pipe.config import (
    EMPTY_TOKEN_MESSAGE,
    ApiSettings,
    api_host,
    checked_api,
    is_loopback,
)
from seedream_pipe.downloads import NotAnImage, keep_image, remake_thumbnail
from seedream_pipe.errors import (
    EX_INTERRUPTED,
    EX_IOERR,
    EX_NOPERM,
    EX_OK,
    EX_SOME_FAILED,
    EX_UNAVAILABLE,
    ApiError,
    AuthError,
    CreditError,
    DownloadRefused,
    FolderBusy,
    NotFound,
    NotRetried,
    OutputError,
    RateLimited,
    RequestRejected,
    ServiceUnavailable,
    UnusableAnswer,
    UsageError,
    exit_code_for,
    printable,
    redact,
)
from seedream_pipe.images import thumb_name
from seedream_pipe.pacing import Backoff, PollSchedule, RequestBudget, SubmitPacer
from seedream_pipe.paths import (
    IMAGES_DIR,
    THUMBS_DIR,
    default_output_dir,
    file_sha256,
    image_file_name,
)
from seedream_pipe.progress import Progress, QuietProgress
from seedream_pipe.state import FINAL_STATES, STATE_FILE, JobRecord, StateStore, iso_seconds
from seedream_pipe.words import counted, option, some_of

if TYPE_CHECKING:
    from seedream_pipe.plan import Plan
    from seedream_pipe.recipe import Recipe

_T = TypeVar("_T")
_P = ParamSpec("_P")
log = logging.getLogger(__name__)

#: Error texts that mean "we stopped watching", not "the job failed": --retry-failed polls these.
TIMED_OUT = "timed out"
LOST_CONTACT = "lost contact"
#: The error of a job the API said failed.
GENERATION_FAILED = "generation failed"
#: How old a temporary output file (`.report.csv.<hex>.tmp`) must be for a run to take it as
#: left by a process killed while writing, and remove it.
STALE_OUTPUT_S = 3600
#: The error of a job whose request the API no longer knows (404): --retry-failed makes it again.
UNKNOWN_REQUEST = "the API no longer knows request"

#: Submits accepted with answers that cannot be read (no request id) before the run stops
#: submitting: one is a garbled answer, several an API whose answers changed.
UNREAD_ANSWERS_STOP = 3
#: Submits in a row whose outcome is unknown (the answer lost: dropped, timed out, a gateway's
#: 502/504) before the run stops submitting. Each may have been taken and billed with nothing
#: to follow; past a few, the API (or a gateway before it) is losing every answer, and going on
#: would pay for the whole plan, twice by default, for no image.
UNKNOWN_IN_A_ROW_STOP = 10

#: Looks at a job whose request id answers 404 before it counts as lost (the first may come
#: from a part of the API that has not heard of the job yet).
NOT_FOUND_LOOKS = 3

#: Two interrupts closer than this are one: `timeout -s INT` sends its signal to the run and
#: then to its whole process group, microseconds apart. A second Ctrl-C by hand comes later.
SAME_INTERRUPT_S = 0.1


class Presses:
    """The Ctrl-C presses (SIGINT, SIGTERM) a run has had: the first winds it down, the second
    stops it at once. A signal within SAME_INTERRUPT_S of the first is that press again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.count = 0
        self._clock = clock
        self._first = 0.0

    def press(self) -> int | None:
        """Count a signal: the press it is (1, 2, ...), or None when it repeats the first."""
        now = self._clock()
        if self.count == 1 and now - self._first < SAME_INTERRUPT_S:
            return None
        self.count += 1
        if self.count == 1:
            self._first = now
        return self.count


@dataclass
class RunOptions:
    """How a run behaves. Defaults suit the real API; tests shrink the timings."""

    rpm: float = 60.0
    concurrency: int = 4
    limit: int | None = None  # work on at most this many unfinished jobs this run
    retry_failed: bool = False
    resubmit_unknown: bool = True
    timeout_s: float = 900.0  # a job not finished this long after its submit is given up on
    request_timeout_s: float = 20.0
    # polls, result reads, cancels, downloads; None: 5 per submit the rpm allows (a job needs
    # about 2-3), at least 10/s
    requests_per_s: float | None = None
    first_poll_s: float = 1.0
    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    download_attempts: int = 4
    forget_lost: bool = False  # the built-in simulator forgets its jobs: resubmit unknown ids
    seed: int | None = None  # jitter RNG, for reproducible tests

    def check(self) -> None:
        """Raise UsageError naming every option whose value a run cannot use (a notebook's
        `RunOptions(rpm="fast")` failed deep in the pacer, after the run was recorded)."""
        wrong: list[str] = []
        for name, rule in _OPTION_RULES.items():
            value = getattr(self, name)
            if value is None and rule.optional:
                continue
            number = isinstance(value, int if rule.whole else int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < rule.least or (rule.above and value == rule.least):
                bound = f"above {rule.least}" if rule.above else f"at least {rule.least}"
                wrong.append(f"{name} must be {'a whole number' if rule.whole else 'a number'} {bound}, not {value!r}")
        for name in ("retry_failed", "resubmit_unknown", "forget_lost"):
            if not isinstance(getattr(self, name), bool):
                wrong.append(f"{name} must be True or False, not {getattr(self, name)!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            wrong.append(f"seed must be a whole number or None, not {self.seed!r}")
        if wrong:
            raise UsageError("RunOptions: " + "; ".join(wrong))


class _Rule(NamedTuple):
    """What RunOptions.check allows for one option."""

    whole: bool = False  # an int, not a float
    least: int = 0  # the smallest value allowed...
    above: bool = False  # ...or only the values above it (rates and times a run cannot use at 0)
    optional: bool = False  # None allowed


_OPTION_RULES: dict[str, _Rule] = {
    "rpm": _Rule(above=True),
    "concurrency": _Rule(whole=True, least=1),
    "limit": _Rule(whole=True, optional=True),
    "timeout_s": _Rule(above=True),
    "request_timeout_s": _Rule(above=True),
    "requests_per_s": _Rule(above=True, optional=True),
    "first_poll_s": _Rule(),
    "max_retries": _Rule(whole=True),
    "backoff_base_s": _Rule(),
    "backoff_cap_s": _Rule(),
    "download_attempts": _Rule(whole=True, least=1),
}


@dataclass
class RunResult:
    """What a run did. `exit_code` is what the CLI exits with."""

    exit_code: int
    out_dir: Path
    counts: dict[str, int]
    summary: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why the run stopped early, for people
    fix_first: bool = False  # the same command would stop the same way until something changes
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (index, job_id, error)
    outputs: list[Path] = field(default_factory=list)  # sheet pages, report, gallery, manifest
    # What the user must hear however quiet the run (also sent to `progress` as messages): a
    # folder taken over, a recipe edited while it ran.
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == EX_OK


#: The states of a job the API took (and bills) whose image is not fetched yet.
PAID_NOT_FETCHED = ("submitted", "in_queue", "in_progress", "completed")


def paid_not_fetched(rec: JobRecord) -> bool:
    """The API took the job, and bills it, and its image is still to fetch (poll, download)."""
    return rec.state in PAID_NOT_FETCHED and bool(rec.request_id or (rec.state == "completed" and rec.image_url))


def paid_for_off_plan(store: StateStore) -> list[JobRecord]:
    """Jobs a recipe edit dropped that the API took, whose image is not fetched yet: a run
    still follows them to their image (polls them, downloads them), and never submits one.
    Their images stay in images/ and out of the sheet and report, as any dropped job's."""
    return [rec for rec in store.jobs(in_plan=False, states=PAID_NOT_FETCHED) if paid_not_fetched(rec)]


def image_intact(out_dir: Path, rec: JobRecord) -> bool:
    """A downloaded job's image file is in the folder as it was downloaded (size, then sha256)."""
    if not rec.image_path:
        return False
    image = out_dir / rec.image_path
    if rec.bytes is not None:
        try:
            if image.stat().st_size != rec.bytes:
                return False
        except OSError:
            return False
    return file_sha256(image, max_bytes=rec.bytes if rec.bytes is not None else MAX_DOWNLOAD_BYTES) == rec.sha256


def may_not_resend(rec: JobRecord, opt: RunOptions) -> bool:
    """For a job whose submit outcome is unknown: it may not be sent again (--no-resubmit-unknown,
    or it was sent again once already, and a third try could mean a third charge)."""
    return not opt.resubmit_unknown or rec.possible_duplicate


def action_for(rec: JobRecord, opt: RunOptions) -> str:
    """What a run does with a job: skip, submit, resubmit, poll, download, verify, or fail (a
    job whose submit outcome is unknown and which may not be sent again)."""
    state = rec.state
    if state == "downloaded":
        return "verify"
    if state == "completed":
        return "download"
    if state in ("submitted", "in_queue", "in_progress") and rec.request_id:
        return "poll"
    if state in ("submitted", "in_queue", "in_progress", "submitting", "submit_unknown"):
        return "fail" if may_not_resend(rec, opt) else "resubmit"
    if state in ("planned", "cancelled"):
        return "submit"
    if state == "failed":
        if not opt.retry_failed:
            return "skip"
        if rec.request_id and rec.error and rec.error.startswith((TIMED_OUT, LOST_CONTACT)):
            return "poll"
        if rec.request_id and rec.output_urls and not (rec.error or "").startswith(UNKNOWN_REQUEST):
            return "download"  # (a fresh URL from its result; one the API no longer knows is made again)
        return "submit"
    return "skip"


class _Slots:
    """Jobs in flight (submitted, not finished) against the concurrency limit."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self._freed = asyncio.Event()

    async def wait_free(self) -> None:
        while self.used >= self.limit:
            self._freed.clear()
            await self._freed.wait()

    def take(self) -> None:
        self.used += 1

    def give(self) -> None:
        self.used = max(0, self.used - 1)
        self._freed.set()


#: What to add to the stop message of an API error, where the error alone leaves the user guessing.
_STOP_HINTS: dict[type[ApiError], str] = {
    CreditError: " (jobs already in flight are finished first)",
    NotFound: " (is the model id right?)",
}

def submits_within_limit(
    submits: Iterable[_T], limit: int | None, plan_order: Callable[[_T], tuple[int, str]]
) -> tuple[list[_T], int]:
    """The jobs a run submits, in plan order (`plan_order` gives a job's (index, job_id)), and
    how many `limit` (--limit) holds back for a later run. Polls and downloads are never held
    back: those jobs are paid for already."""
    ordered = sorted(submits, key=plan_order)
    if limit is None:
        return ordered, 0
    return ordered[:limit], max(0, len(ordered) - limit)


def made_again_within_limit(forgotten: int, limit: int | None, submitting: int) -> int:
    """How many of the `forgotten` jobs (ones a restarted simulator no longer knows) a run makes
    again: --limit's submits go to the `submitting` jobs of the plan first, and a forgotten job
    takes what is left. The run and its dry run count them by this one rule."""
    return forgotten if limit is None else min(forgotten, max(0, limit - submitting))


def actions_text(actions: Mapping[str, int], held_back: int = 0) -> str:
    """"3 to submit, 2 to poll", and what --limit leaves for later, for people."""
    text = ", ".join(f"{n} to {action}" for action, n in actions.items() if n) or "nothing"
    if held_back:
        text += f"; {held_back} left for a later run (--limit)"
    return text


class Runner:
    """One run over one output folder's state. `await runner.run()` -> RunResult."""

    def __init__(
        self,
        store: StateStore,
        client: ModelApiClient,
        out_dir: Path,
        options: RunOptions,
        *,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.out_dir = out_dir
        self.images_dir = out_dir / IMAGES_DIR
        self.thumbs_dir = out_dir / THUMBS_DIR
        self.opt = options
        self.progress = progress or QuietProgress()
        self._clock = clock
        self.schedule = PollSchedule(first=options.first_poll_s)
        self.slots = _Slots(options.concurrency)
        # Downloads at once: jobs in flight hold a slot each, but a resumed folder's finished
        # jobs are all downloaded without one; this keeps their connections (and .part files)
        # to the concurrency too, so none waits out its deadline behind a thousand others.
        self._fetching = asyncio.Semaphore(max(1, options.concurrency))
        self.stop_submitting = False
        self.interrupted = False
        self.fatal: BaseException | None = None
        self.stop_code: int | None = None
        self.stop_reason: str | None = None
        self.stop_fix_first = False
        self.lost_contact = 0
        self.accepted_unread = 0  # submits accepted with answers that could not be read
        self._unknown_in_a_row = 0  # submits whose outcome was unknown since the last one taken
        self._not_found: dict[str, int] = {}  # 404s for a job's request id in this run
        self._run_again_left: int | None = None  # submits --limit still allows (None: no limit)
        #: The API is a simulator started afresh (`forget_lost`, at another URL than the last
        #: run's): the jobs to poll or download will be made again, and the start line says so.
        self.simulator_forgot = False
        self.possible_duplicates = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._posting: set[asyncio.Task[Any]] = set()  # a POST on the wire (or about to be)
        self._waiting_turn: set[asyncio.Task[Any]] = set()  # at the pacer, nothing sent yet
        self._wake = asyncio.Event()
        self._dispatching = False
        self._polls: dict[str, int] = {}
        # Looks read the result endpoint until the API shows it will not answer it for a job
        # still running; from then on, status (see _look). Proven: it has answered one with
        # its state, so its 5xx are outages like any other, retried.
        self._looks_read_result = True
        self._result_looks_proven = False
        self._retries_before: dict[str, int] = {}  # a job's retries recorded by earlier runs
        self._ran_again: set[str] = set()
        self.summary_extra: dict[str, Any] = {}

    # -- reporting ----------------------------------------------------------------------------

    def _emit(self, kind: str, **detail: Any) -> None:
        self.progress.event(kind, detail)

    def _redact(self, text: str) -> str:
        return redact(text, self.client.api.token)

    def _transition(self, rec: JobRecord, state: str, *, left_flight: bool = False, **fields: Any) -> None:
        """Commit a state change (before anything that depends on it), then tell the user."""
        if fields.get("error"):
            fields["error"] = self._redact(str(fields["error"]))
        if rec.job_id in self._polls:
            fields.setdefault("polls", self._polls[rec.job_id])
        retried = self.client.retries_by_job.get(rec.job_id)
        if retried:  # (this run's, on top of what earlier runs recorded)
            fields.setdefault("retries", self._retries_before.setdefault(rec.job_id, rec.retries) + retried)
        self.store.transition(rec.job_id, state, **fields)
        rec.state = state
        setattr(rec, f"{state}_at", self._clock())  # the store stamped the same moment
        for name, value in fields.items():
            if hasattr(rec, name):
                setattr(rec, name, value)
        detail: dict[str, Any] = {"job_id": rec.job_id, "index": rec.job_index, "state": state}
        if fields.get("error"):
            detail["error"] = fields["error"]
        if left_flight:
            detail["left_flight"] = True
        self._emit("job_state", **detail)

    def _stop(self, code: int, reason: str, *, fix_first: bool = False) -> None:
        """Stop submitting; remember the most serious reason for the exit code."""
        self.stop_submitting = True
        if self.stop_code is None or code == EX_NOPERM:
            self.stop_code = code
            self.stop_reason = reason
            self.stop_fix_first = fix_first
            if code != EX_NOPERM:  # (a refused token ends the run at once, which then says why)
                self._emit("message", text=f"stopping submits: {reason}")
        self._end_waiting_turns()
        self._wake.set()

    def _end_waiting_turns(self) -> None:
        """Jobs waiting for their submit turn have sent nothing: they end now, as they were,
        rather than each waiting out its turn (at a low rpm, or in a 429's pause: minutes) only
        to find the run stopped."""
        for waiting in self._waiting_turn:
            waiting.cancel()

    def _stop_for(self, exc: ApiError) -> None:
        """Stop submitting because of an API error; its exit code comes from the error itself."""
        hint = _STOP_HINTS.get(type(exc), "")
        base = self.client.api.base_url
        if isinstance(exc, NotFound) and not urlsplit(base).path.rstrip("/").endswith("/v1"):
            # the commonest 404 of a hand-typed --base-url: the API's version left out
            hint = f" (is the base URL right? {base} does not end in /v1 as RunComfy's does)"
        self._stop(exc.exit_code, f"{exc}{hint}", fix_first=isinstance(exc, NotRetried))

    # -- planning what to do ----------------------------------------------------------------

    def action_for(self, rec: JobRecord) -> str:
        return action_for(rec, self.opt)

    # -- the run ------------------------------------------------------------------------------

    async def run(self, records: list[JobRecord]) -> RunResult:
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.thumbs_dir.mkdir(parents=True, exist_ok=True)
        # partial files of a run that was killed mid-download (never referenced by the state)
        for stale in [*self.images_dir.glob(".download-*.part"), *self.thumbs_dir.glob(".*.tmp")]:
            stale.unlink(missing_ok=True)
        sweep_stale_outputs(self.out_dir, self._clock())
        plan: dict[str, list[JobRecord]] = {}
        for rec in records:
            plan.setdefault(self.action_for(rec), []).append(rec)
        # downloaded jobs whose file went missing or changed are downloaded again
        for rec in plan.pop("verify", []):
            if not await asyncio.to_thread(self._file_intact, rec):
                plan.setdefault("download", []).append(rec)
        stuck = plan.pop("fail", [])  # (failed after the start line, which does not count them)
        resubmits = {rec.job_id for rec in plan.get("resubmit", [])}
        submit_now, held_back = submits_within_limit(
            plan.get("resubmit", []) + plan.get("submit", []), self.opt.limit, lambda r: (r.job_index, r.job_id)
        )
        # what --limit leaves for jobs a restarted simulator forgot, made again (_run_again)
        self._run_again_left = None if self.opt.limit is None else max(0, self.opt.limit - len(submit_now))
        todo = len(submit_now) + len(plan.get("poll", [])) + len(plan.get("download", []))
        actions = {
            "submit": sum(1 for rec in submit_now if rec.job_id not in resubmits),
            "resubmit": sum(1 for rec in submit_now if rec.job_id in resubmits),
            "poll": len(plan.get("poll", [])),
            "download": len(plan.get("download", [])),
        }
        forgotten_held = 0  # (forgotten jobs --limit leaves for a later run, or lost ones)
        if self.simulator_forgot:  # (as the dry run counts them: one look each, then made again)
            followed = [*plan.get("poll", []), *plan.get("download", [])]
            forgotten = sum(1 for rec in followed if rec.in_plan)  # (a dropped one is lost, not made)
            actions["poll"] = actions["download"] = 0
            again = made_again_within_limit(forgotten, self.opt.limit, len(submit_now))
            actions["resubmit"] += again
            held_back += forgotten - again
            forgotten_held = len(followed) - again
        self._emit(
            "run_started",
            total=sum(1 for rec in records if rec.in_plan),  # (not the dropped jobs it fetches)
            todo=todo - forgotten_held,
            actions=actions,
            held_back=held_back,
            actions_text=actions_text(actions, held_back),
            out_dir=str(self.out_dir),
        )
        for rec in stuck:
            self._gives_up(rec)
        if todo:
            await self._work(plan.get("poll", []), plan.get("download", []), submit_now)
        return self._result()

    async def _work(self, to_poll: list[JobRecord], to_download: list[JobRecord], to_submit: list[JobRecord]) -> None:
        for rec in to_poll:
            self.slots.take()  # already in flight on the server, whatever the limit
            self._spawn(self._follow(rec), rec)
        for rec in to_download:
            self._spawn(self._download(rec), rec)
        self._dispatching = True
        dispatcher = asyncio.create_task(self._dispatch(to_submit))
        try:
            while True:
                self._wake.clear()
                if self.fatal is not None or self.interrupted:
                    break
                if not self._dispatching and not self._tasks:
                    break
                await self._wake.wait()
        except asyncio.CancelledError:
            # The run itself was cancelled (a notebook cell's timeout, a second Ctrl-C): its
            # jobs' tasks stop with it rather than go on polling a closed state and session.
            await self._halt(dispatcher)
            raise
        finally:
            if self.fatal is not None or self.interrupted or not dispatcher.done():
                dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
        if self.fatal is not None:
            await self._end_after_fatal()
        elif self.interrupted:
            await self._wind_down()

    async def _end_after_fatal(self) -> None:
        """A job's task failed the run (a full disk, a refused token, a bug): every other task
        stops now but the POSTs on the wire, as on an interrupt (see _let_posts_answer). Cut
        short, such a job would stay `submitting` and be sent once more by the next run."""
        self.stop_submitting = True  # (a posting job then stops at its answer; see _submit_and_follow)
        self._end_waiting_turns()
        await self._let_posts_answer()

    async def _halt(self, dispatcher: asyncio.Task[None]) -> None:
        """Stop every task of the run now but the POSTs on the wire (see _let_posts_answer)."""
        self.stop_submitting = self.interrupted = True  # (posting jobs then stop at their answer)
        await self._let_posts_answer(dispatcher)

    async def _let_posts_answer(self, *also: asyncio.Task[None]) -> None:
        """Cancel every task of the run (and `also`) now, except that a POST already on the wire
        is given its answer (up to one request's deadline): it may have created a job, and once
        its request id is committed the next run polls that job instead of paying for it again.
        Another cancel of the run (a second Ctrl-C) cuts even that wait short."""
        posting = {task for task in self._posting if not task.done()}
        try:
            await self._cancel_tasks([*also, *(self._tasks - posting)])
            if posting:
                await asyncio.wait(posting, timeout=self.opt.request_timeout_s)
            await self._cancel_tasks(self._tasks)
        finally:  # cancelled again while waiting: every task is still told to stop
            for task in self._tasks:
                task.cancel()

    def _spawn(self, coro: Any, rec: JobRecord) -> asyncio.Task[None]:
        """A task working on one job; the client counts the retries of its calls for that job."""
        context = contextvars.copy_context()
        context.run(current_job.set, rec.job_id)
        task: asyncio.Task[None] = asyncio.create_task(coro, context=context)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._posting.discard(t)
            if not t.cancelled() and t.exception() is not None and self.fatal is None:
                self.fatal = t.exception()
            self._wake.set()

        task.add_done_callback(done)
        return task

    async def _cancel_tasks(self, tasks: Iterable[asyncio.Task[None]]) -> None:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _dispatch(self, to_submit: list[JobRecord]) -> None:
        """Start jobs as slots free up, in plan order, until told to stop."""
        try:
            for rec in to_submit:
                await self.slots.wait_free()
                if self.stop_submitting or self.interrupted:
                    break
                self.slots.take()
                self._spawn(self._submit_and_follow(rec), rec)
                await asyncio.sleep(0)  # let the job take its place at the pacer in order
        finally:
            self._dispatching = False
            self._wake.set()

    # -- interrupts -----------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Ctrl-C / SIGTERM: stop submitting, then cancel what is queued (see _wind_down)."""
        if not self.interrupted:
            self.interrupted = True
            self.stop_submitting = True
            self._emit(
                "interrupt",
                text="interrupted: no more submits; cancelling queued jobs (Ctrl-C again to quit at once)",
            )
            self._end_waiting_turns()
            self._wake.set()

    async def _wind_down(self) -> None:
        # A POST already on the wire may create a job: wait for its answer, so its request id is
        # recorded and it can be cancelled too. Everything else (pacing waits, polls,
        # downloads) stops now; its state is already committed.
        posting = set(self._posting)
        await self._cancel_tasks(self._tasks - posting)
        if posting:
            await asyncio.gather(*posting, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await self._cancel_tasks(self._tasks)
        cancelled, kept = await cancel_queued(self.store, self.client, on_done=self._cancelled_one)
        after = (
            "the built-in simulator stops with this run, so the next run makes them again; never billed"
            if self.opt.forget_lost
            else "they are billed; the next run picks them up"
        )
        self._emit(
            "message",
            text=f"interrupted: cancelled {cancelled} queued job(s); kept {kept} already running or "
            f"finished ({after})",
        )
        self.summary_extra = {"cancelled_on_interrupt": cancelled, "kept_running": kept}

    def _cancelled_one(self, rec: JobRecord, outcome: str, error: str | None) -> None:
        self._emit("cancel", job_id=rec.job_id, index=rec.job_index, outcome=outcome, error=error)
        if outcome == "cancelled":
            self._emit("job_state", job_id=rec.job_id, index=rec.job_index, state="cancelled")

    # -- one job ----------------------------------------------------------------------------------

    async def _submit_and_follow(self, rec: JobRecord) -> None:
        """Submit, watch and download one job. The caller took its slot; it is given back
        as soon as the job is no longer in flight."""
        done = "gone"
        try:
            if await self._submit(rec) and not self.interrupted and self.fatal is None:
                # (when interrupted, its request id is committed and the wind-down cancels it;
                # after another task failed the run, the next run follows it)
                done = await self._poll(rec)
        finally:
            self.slots.give()
        await self._after(rec, done)

    async def _follow(self, rec: JobRecord) -> None:
        """A job already in flight when the run started (its slot taken by the caller)."""
        try:
            done = await self._poll(rec)
        finally:
            self.slots.give()
        await self._after(rec, done)

    async def _after(self, rec: JobRecord, done: str) -> None:
        if done == "completed":
            await self._download(rec, url_from_this_run=True)
        elif done == "lost":
            await self._run_again(rec)

    async def _run_again(self, rec: JobRecord) -> None:
        """The built-in simulator forgot the job (it restarted): make the image again, once."""
        if self.stop_submitting or rec.job_id in self._ran_again or not rec.in_plan:
            return  # (a job a recipe edit dropped is fetched if paid for, never made again)
        if self._run_again_left is not None:
            if self._run_again_left == 0:
                return  # (planned: --limit holds it for a later run, as any submit past it)
            self._run_again_left -= 1
        self._ran_again.add(rec.job_id)
        await self.slots.wait_free()
        if self.stop_submitting:
            return
        self.slots.take()
        await self._submit_and_follow(rec)

    def _gives_up(self, rec: JobRecord) -> bool:
        """For a job whose submit outcome is unknown: fail it, and say True, when it may not be
        sent again (see may_not_resend)."""
        if not may_not_resend(rec, self.opt):
            return False
        if not self.opt.resubmit_unknown:
            self._transition(
                rec,
                "failed",
                error="submit outcome unknown: not submitted again (--no-resubmit-unknown); "
                "it may still run and be billed",
            )  # (not a possible duplicate: sent once; a --retry-failed of it is, see _submit)
        else:  # it was sent again once already, and that outcome is unknown too
            self._transition(
                rec,
                "failed",
                error="submit outcome unknown twice: not submitted a third time "
                "(--retry-failed submits it again)",
            )
        return True

    async def _submit(self, rec: JobRecord) -> bool:
        """Submit a job. True when it now has a request id (and is in flight)."""
        maybe_exists = rec.state in ("submitting", "submit_unknown", "submitted", "in_queue", "in_progress")
        if maybe_exists and self._gives_up(rec):
            return False
        # What to fall back to if the server refuses this attempt: a job that may exist stays
        # "submit_unknown"; one that surely does not goes back to "planned".
        refused_state = "submit_unknown" if maybe_exists else "planned"
        # A failed job sent again (--retry-failed) that had a request id existed on the server:
        # unless the API said its generation failed, it may have been billed.
        billed_before = (
            rec.state == "failed" and rec.request_id is not None and not (rec.error or "").startswith(GENERATION_FAILED)
        )
        # So may one whose submit outcome was unknown (failed so by --no-resubmit-unknown).
        unknown_before = rec.state == "failed" and rec.submit_unknown_at is not None
        duplicate = rec.possible_duplicate or maybe_exists or billed_before or unknown_before
        while True:
            if self.stop_submitting:
                return False  # stopped before this job's first step: it waits for no turn
            task = asyncio.current_task()

            def on_send(dup: bool = duplicate, me: asyncio.Task[Any] | None = task) -> bool:
                if self.stop_submitting:
                    return False  # the run stopped while this job waited for its turn
                # committed before the POST leaves: a crash from here on leaves "submitting"
                self._transition(
                    rec,
                    "submitting",
                    attempts=rec.attempts + 1,
                    possible_duplicate=dup,
                    request_id=None,
                    error=None,
                )
                if me is not None:
                    self._waiting_turn.discard(me)
                    self._posting.add(me)
                return True

            def on_refused(state: str = refused_state, me: asyncio.Task[Any] | None = task) -> None:
                # nothing was created: back to where it was, waiting for its turn like any job
                # (so that a stop or an interrupt ends it now, not after the 429's pause)
                self._revert(rec, state)
                if me is not None:
                    self._posting.discard(me)
                    self._waiting_turn.add(me)
                    if self.stop_submitting:
                        me.cancel()

            if task is not None:
                self._waiting_turn.add(task)
            try:
                outcome = await self.client.submit(
                    rec.model, dict(rec.inputs), on_send=on_send, on_refused=on_refused
                )
            except (AuthError, CreditError, RateLimited, ServiceUnavailable, NotFound) as exc:
                # Refusals that created nothing: the job goes back to where it was, and the run
                # stops submitting (401/403 stops everything at once).
                self._revert(rec, refused_state)
                self._stop_for(exc)
                if isinstance(exc, AuthError):
                    raise
                return False
            except RequestRejected as exc:
                self._unknown_in_a_row = 0  # (the API answered: the row of lost answers is broken)
                self._transition(rec, "failed", error=f"rejected by the API: {exc}")
                return False
            except UnusableAnswer as exc:
                self._unknown_in_a_row = 0
                # Accepted, perhaps billed, but not followable: failed and flagged, so that
                # --retry-failed and the report say it may be paid for twice; and no more
                # submits, since every answer will be the same.
                if duplicate:
                    self.possible_duplicates += 1
                self._transition(rec, "failed", error=str(exc), possible_duplicate=True)
                self._stop_for(exc)
                return False
            except ApiError as exc:
                self._transition(rec, "failed", error=str(exc))
                return False
            finally:
                if task is not None:
                    self._posting.discard(task)
                    self._waiting_turn.discard(task)
            if outcome is None:
                # not sent this time (earlier tries, if any, were refused): nothing was created
                self._revert(rec, refused_state)
                return False
            if duplicate:  # (sent again, and it reached the API: taken, unreadable or unknown)
                self.possible_duplicates += 1
            if not isinstance(outcome, UnknownOutcome):
                self._unknown_in_a_row = 0  # (answered, if unreadably: not a lost answer)
            if isinstance(outcome, Submission):
                self._transition(
                    rec,
                    "submitted",
                    request_id=outcome.request_id,
                    status_url=outcome.status_url,
                    result_url=outcome.result_url,
                    cancel_url=outcome.cancel_url,
                    possible_duplicate=duplicate,  # (attempts: on_send counted each POST)
                )
                self._polls[rec.job_id] = 0
                return True
            if isinstance(outcome, AcceptedUnread):
                # Billed, and nothing to follow: sending it again would pay twice for sure. It
                # fails flagged, so --retry-failed (the user's choice) counts it as a duplicate.
                self._transition(
                    rec,
                    "failed",
                    error=f"{outcome.reason}: it is billed and cannot be followed; not submitted again "
                    "(--retry-failed sends it again, and pays again)",
                    possible_duplicate=True,
                )
                self.accepted_unread += 1
                if self.accepted_unread == UNREAD_ANSWERS_STOP:
                    self._stop(
                        EX_UNAVAILABLE,
                        f"{UNREAD_ANSWERS_STOP} submits were accepted with answers seedream-pipe could not "
                        "read: no more submits, which would each be paid for nothing",
                    )
                return False
            assert isinstance(outcome, UnknownOutcome)
            self._transition(rec, "submit_unknown", error=outcome.reason)
            self._unknown_in_a_row += 1
            if self._unknown_in_a_row == UNKNOWN_IN_A_ROW_STOP:
                self._stop(
                    EX_UNAVAILABLE,
                    f"{UNKNOWN_IN_A_ROW_STOP} submits in a row got no answer (the last: {outcome.reason}): "
                    "no more submits, which may each be paid for with no image to show; jobs in flight "
                    "are finished first",
                )
            if not self.opt.resubmit_unknown:
                self._transition(
                    rec,
                    "failed",
                    error=f"{outcome.reason}; not submitted again (--no-resubmit-unknown): "
                    "it may still run and be billed",
                )  # (not a possible duplicate: sent once; a --retry-failed of it is, see _submit)
                return False
            if duplicate:
                self._transition(rec, "failed", error=f"{outcome.reason}, twice: not submitted a third time")
                return False
            if self.stop_submitting:
                return False  # stays submit_unknown: the next run decides
            duplicate = True
            refused_state = "submit_unknown"

    def _revert(self, rec: JobRecord, state: str) -> None:
        if rec.state == "submitting":
            self._transition(rec, state)

    async def _poll(self, rec: JobRecord) -> str:
        """Watch a job until it finishes. Returns completed, failed, cancelled, lost or gone."""
        assert rec.request_id is not None
        started = rec.submitted_at or self._clock()
        last_gap: float | None = None
        polls = self._polls.setdefault(rec.job_id, rec.polls)
        polled_here = False
        while True:
            elapsed = self._clock() - started
            # (a job resumed after a long break is looked at once before it can time out)
            if polled_here and elapsed > self.opt.timeout_s:
                self._transition(
                    rec,
                    "failed",
                    left_flight=True,
                    error=f"{TIMED_OUT} after {self.opt.timeout_s:g} s (request {rec.request_id} kept: "
                    "--retry-failed polls it again)",
                )
                return "failed"
            gap = min(self.schedule.next_delay(elapsed, last_gap), max(0.0, self.opt.timeout_s - elapsed) + 0.001)
            await asyncio.sleep(gap)
            last_gap = gap
            try:
                status = await self._look(rec)
            except AuthError as exc:
                self._stop_for(exc)
                raise
            except NotFound:
                if self._may_look_again(rec):
                    continue
                return self._lost(rec)
            except RequestRejected as exc:
                self._transition(rec, "failed", left_flight=True, error=str(exc))
                return "failed"
            except ApiError as exc:
                self._lose_contact(rec, exc)
                return "gone"
            polls += 1
            polled_here = True
            self._polls[rec.job_id] = polls
            if status.status in ("in_queue", "in_progress") and status.status != rec.state:
                self._transition(rec, status.status, queue_position=status.queue_position)
            if status.finished:
                done = await self._finish(
                    rec, status.status, status.error, status if isinstance(status, JobResult) else None
                )
                if done != "again":
                    return done

    def _may_look_again(self, rec: JobRecord) -> bool:
        """After a 404 for a job's request id: whether to look once more before it counts as
        lost. The API gave us that id; a 404 for it may be a replica that has not seen it yet,
        and losing the job would make --retry-failed pay for it again. (Not so for a simulator
        started afresh, `forget_lost`: it never knew the jobs of the one before.)"""
        if self.opt.forget_lost:
            return False
        misses = self._not_found[rec.job_id] = self._not_found.get(rec.job_id, 0) + 1
        return misses < NOT_FOUND_LOOKS

    async def _look(self, rec: JobRecord) -> JobResult | JobStatus:
        """One look at a job in flight: a result read (which for a finished job carries its
        outputs, saving the result read after a status poll), else a status poll.

        RunComfy documents status polls, then a result read once the job is completed; what its
        result endpoint answers for a job still running is not documented. So a look reads the
        result, and any answer that is not a state (a 4xx a status read does not give; before
        the endpoint has answered a running job with its state, a 5xx or an unreadable answer,
        not retried; a state it does not name) is checked by one status read. If that shows
        the job still running, this run's looks use status from then on: the result endpoint
        alone never makes a job lost, failed or timed out, and never stops the run.
        """
        assert rec.request_id is not None
        if not self._looks_read_result:
            return await self.client.status(rec.request_id, rec.status_url)
        proven = self._result_looks_proven
        try:
            result = await self.client.look(rec.request_id, rec.result_url, retry_answers=proven)
        except ApiError as exc:
            # Any 4xx but a 429 (the limit, already waited out) may be this endpoint refusing a
            # job that is not finished: even a 401/403/404, which the status read then confirms
            # (and which then stops the run or loses the job as before). An error_code in a 2xx
            # answer is about the job, not the endpoint. A network error is not an answer.
            refused = exc.status is not None and 400 <= exc.status < 500 and exc.status != 429
            unproven = not proven and isinstance(exc, ServiceUnavailable) and exc.status is not None
            if not (refused or unproven):
                raise
            said = "with an answer that was not JSON" if exc.status is not None and exc.status < 300 else f"with {exc.status}"
            return await self._look_by_status(rec, said)
        if result.status not in KNOWN_STATES:
            # (scrubbed, then cut: cut first, a token across the cut would keep its head)
            named = self._redact(result.status)[:40]
            return await self._look_by_status(rec, f"with no state it names ({named!r})")
        if not result.finished:
            self._result_looks_proven = True
        return result

    async def _look_by_status(self, rec: JobRecord, how: str) -> JobStatus:
        assert rec.request_id is not None
        status = await self.client.status(rec.request_id, rec.status_url)
        # (a job finished: the result endpoint's answer was about something else, a passing
        # fault; a state the status endpoint does not name either: it is no clearer. Keep both.)
        if status.status in ("in_queue", "in_progress") and self._looks_read_result:
            self._looks_read_result = False
            self._emit(
                "message",
                text=f"the API answered a result read of a job still running {self._redact(how)}; "
                "polling its status instead",
            )
        return status

    def _lose_contact(self, rec: JobRecord, exc: ApiError) -> None:
        """The API stopped answering about a job in flight: stop submitting, say so, and leave the
        job as it is (its request id is kept; the next run asks again)."""
        self.lost_contact += 1
        self._stop_for(exc)
        self._emit("message", text=f"job {rec.job_index}: {LOST_CONTACT}: {exc}; left for the next run")

    def _lost(self, rec: JobRecord) -> str:
        if self.opt.forget_lost:
            self._transition(rec, "planned", request_id=None, error=None)
            return "lost"
        self._transition(rec, "failed", left_flight=True, error=self._unknown_request(rec))
        return "failed"

    def _unknown_request(self, rec: JobRecord) -> str:
        said = f"{UNKNOWN_REQUEST} {rec.request_id} (404)"
        if is_loopback(self.client.api.host):  # (a simulator, most likely one started afresh)
            said += (
                "; a simulator started afresh knows none of the jobs of the one before "
                "(--retry-failed, or retry_failed=True in a notebook, makes them again)"
            )
        return said

    async def _finish(self, rec: JobRecord, status: str, error: str | None, result: JobResult | None = None) -> str:
        """A finished job: read its result (unless the look that saw it finish was one) and record it.
        "again": the result read answered 404, and the job is to be looked at once more."""
        assert rec.request_id is not None
        if status == "cancelled":
            self._transition(rec, "cancelled", left_flight=True)
            return "cancelled"
        try:
            if result is None:
                result = await self.client.result(rec.request_id, rec.result_url)
        except AuthError as exc:
            self._stop_for(exc)
            raise
        except NotFound:
            return "again" if self._may_look_again(rec) else self._lost(rec)
        except ApiError as exc:
            self._lose_contact(rec, exc)
            return "gone"
        self._observe(rec, result)
        server_times = {"server_created_at": result.created_at, "server_finished_at": result.finished_at}
        if status == "failed" or result.status == "failed":
            reason = result.error or error or "the API reported the job failed"
            self._transition(rec, "failed", left_flight=True, error=f"{GENERATION_FAILED}: {reason}", **server_times)
            return "failed"
        if not result.output_urls:
            self._transition(
                rec, "failed", left_flight=True, error="the result carried no image URL", **server_times
            )
            return "failed"
        self._transition(
            rec,
            "completed",
            left_flight=True,
            output_urls=result.output_urls,
            image_url=result.output_urls[0],
            **server_times,
        )
        return "completed"

    def _observe(self, rec: JobRecord, result: JobResult) -> None:
        """Teach the poll schedule how long a job takes (server timestamps when given)."""
        created = iso_seconds(result.created_at)
        finished = iso_seconds(result.finished_at)
        seen = None if rec.submitted_at is None else self._clock() - rec.submitted_at
        if created is not None and finished is not None and finished >= created:
            # the server's own times leave out the network, but cannot be longer than what this
            # run saw from submit to now: a clock far off (or a hostile answer) is held to that
            duration = finished - created
            self.schedule.observe(duration if seen is None else min(duration, seen))
        elif seen is not None:
            self.schedule.observe(seen)

    # -- downloads ------------------------------------------------------------------------------

    def _paths(self, rec: JobRecord) -> tuple[Path, Path]:
        name = image_file_name(rec.job_index, rec.job_id, list(rec.axes.values()))
        return self.images_dir / name, self.thumbs_dir / thumb_name(name)

    def _file_intact(self, rec: JobRecord) -> bool:
        """A downloaded job's file is there with the recorded sha256 (thumbnail remade if gone)."""
        if not image_intact(self.out_dir, rec):
            return False
        image = self.out_dir / str(rec.image_path)
        thumb = self.out_dir / rec.thumb_path if rec.thumb_path else self._paths(rec)[1]
        if not thumb.exists():
            remake_thumbnail(image, thumb)
        return True

    async def _download(self, rec: JobRecord, *, url_from_this_run: bool = False) -> None:
        """Fetch, prove, thumbnail and record the job's image; retry with fresh URLs."""
        dest, thumb = self._paths(rec)
        url = rec.image_url
        from_api_now = url_from_this_run  # (else the URL an earlier run stored: a simulator's of then)
        last_error = "no image URL"
        attempt = -1
        for attempt in range(self.opt.download_attempts):
            if attempt > 0 or not url:
                await asyncio.sleep(self.client.backoff.delay(attempt - 1) if attempt else 0)
                fresh = await self._fresh_url(rec)
                if fresh is None:
                    return
                url, from_api_now = fresh, True
            assert url is not None
            try:
                async with self._fetching:
                    fetched = await self.client.fetch(url, self.images_dir)
            except (NotFound, ServiceUnavailable) as exc:
                last_error = str(exc)
                continue
            except DownloadRefused as exc:
                last_error = str(exc)
                if from_api_now:
                    break  # the API's own answer, now: asking again gives the same
                continue  # stored by an earlier run (a simulator's port of then): ask for today's
            except ApiError as exc:
                last_error = str(exc)
                if exc.status is None:
                    break  # over the size cap: no retry helps
                continue  # e.g. 403: the signed URL expired
            try:
                kept = await asyncio.to_thread(keep_image, fetched.path, dest, thumb)
            except NotAnImage as exc:
                last_error = str(exc)
                continue
            replaced = rec.image_path
            self._transition(
                rec,
                "downloaded",
                image_url=url,
                image_path=str(kept.path.relative_to(self.out_dir)),
                thumb_path=str(thumb.relative_to(self.out_dir)),
                sha256=fetched.sha256,
                width=kept.width,
                height=kept.height,
                bytes=fetched.bytes,
                error=None,
            )
            self._drop_replaced(replaced, kept.path)
            return
        tries = attempt + 1  # (fewer than download_attempts when a retry could not help)
        self._transition(
            rec, "failed", error=f"download failed after {tries} {'try' if tries == 1 else 'tries'}: {last_error}"
        )

    def _drop_replaced(self, replaced: str | None, kept: Path) -> None:
        """Delete the file a job had before it was downloaded again, when the new one has another
        name (the image came back in another format): it changed on disk or went missing, and
        no job refers to it any more. After the commit, so the state never names a gone file."""
        if not replaced:
            return
        old = self.out_dir / replaced
        if old != kept and old.parent == self.images_dir:  # (only ever a file of images/)
            old.unlink(missing_ok=True)

    async def _fresh_url(self, rec: JobRecord) -> str | None:
        """Read the result again for a freshly signed URL (None: the job ended otherwise)."""
        if not rec.request_id:
            self._transition(rec, "failed", error="no image URL and no request id to ask for one")
            return None
        try:
            result = await self.client.result(rec.request_id, rec.result_url)
        except AuthError as exc:
            self._stop_for(exc)
            raise
        except NotFound:
            if self.opt.forget_lost:
                self._transition(rec, "planned", request_id=None, error=None)
                await self._run_again(rec)
                return None
            self._transition(rec, "failed", error=self._unknown_request(rec))
            return None
        except ApiError as exc:
            self._lose_contact(rec, exc)
            return None
        if not result.output_urls:
            self._transition(rec, "failed", error="the result carried no image URL")
            return None
        self.store.update(rec.job_id, output_urls=result.output_urls, image_url=result.output_urls[0])
        rec.output_urls = result.output_urls
        rec.image_url = result.output_urls[0]
        return rec.image_url

    # -- the end --------------------------------------------------------------------------------

    def _result(self) -> RunResult:
        counts = self.store.counts()
        failures = [
            (r.job_index, r.job_id, r.error or "")
            for r in self.store.jobs(states=("failed",))
        ]
        # (a job cancelled by `cancel` or on the API's side is not done: the next run submits it)
        unfinished = sum(n for state, n in counts.items() if state not in FINAL_STATES) + counts["cancelled"]
        if self.interrupted:
            code = EX_INTERRUPTED
        elif self.fatal is not None:
            code = exit_code_for(self.fatal)  # (a disk full while writing an image: 74, not a bug's 70)
        elif self.stop_code is not None:
            code = self.stop_code
        elif counts["failed"] or (unfinished and self.opt.limit is None):
            code = EX_SOME_FAILED
        else:
            code = EX_OK
        reason = self.stop_reason
        if self.fatal is not None:
            reason = self._redact(str(self.fatal))
        elif self.interrupted:
            reason = "interrupted"
        elif code == EX_SOME_FAILED:
            # (for a notebook's `assert result.ok, result.reason`; the CLI prints its own lines)
            reason = _not_all_done(counts["failed"], unfinished, failures)
        c = self.client.counters
        summary: dict[str, Any] = {
            **{f"jobs_{k}": v for k, v in counts.items()},
            "http_requests": c["http_requests"],
            "submits": c["submits"],
            "accepted": c["accepted"],
            "polls": c["polls"],
            "result_reads": c["result_reads"],
            "downloads": c["downloads"],
            "cancels": c["cancels"],
            "rate_limited": c["rate_limited"],
            "retries": c["retries"],
            "unknown_submits": c["unknown_submits"],
            "possible_duplicates": self.possible_duplicates,
            "lost_contact": self.lost_contact,
            **self.summary_extra,
        }
        return RunResult(
            exit_code=code,
            out_dir=self.out_dir,
            counts=counts,
            summary=summary,
            reason=reason,
            failures=failures,
            fix_first=code == self.stop_code and self.stop_fix_first,
        )


def _not_all_done(failed: int, unfinished: int, failures: list[tuple[int, str, str]]) -> str:
    """Why a run ended with some jobs not done, in a line: how many, and the first failure."""
    parts = []
    if failed:
        index, job_id, error = failures[0]
        more = f" (and {failed - 1} more)" if failed > 1 else ""
        parts.append(f"{counted(failed, 'job')} failed: job {index} ({job_id}): {error}{more}")
    if unfinished:
        parts.append(f"{counted(unfinished, 'job')} not done (the next run takes them up)")
    return "; ".join(parts)


# --- the library entry points ------------------------------------------------------------------


async def cancel_queued(
    store: StateStore,
    client: ModelApiClient,
    *,
    on_done: Callable[[JobRecord, str, str | None], None] | None = None,
) -> tuple[int, int]:
    """Ask the API to cancel every job of this folder that is in flight. Returns (cancelled,
    kept): queued jobs are cancelled (never billed) and recorded as such; running ones answer
    not_cancellable and are kept, to be polled by the next run."""
    jobs = store.jobs(in_plan=None, states=("submitted", "in_queue", "in_progress"))
    cancelled = kept = 0

    async def cancel_one(rec: JobRecord) -> None:
        nonlocal cancelled, kept
        if not rec.request_id:
            return
        try:
            outcome = await client.cancel(rec.request_id, rec.cancel_url)
        except AuthError:
            raise
        except ApiError as exc:
            kept += 1
            if on_done is not None:
                on_done(rec, "error", str(exc))
            return
        if outcome.cancelled:
            cancelled += 1
            store.transition(rec.job_id, "cancelled", detail={"by": "cancel"})
        else:
            kept += 1
            if outcome.status in ("in_progress", "completed") and outcome.status != rec.state:
                store.transition(rec.job_id, outcome.status)
        if on_done is not None:
            on_done(rec, "cancelled" if outcome.cancelled else (outcome.outcome or "kept"), None)

    await asyncio.gather(*(cancel_one(rec) for rec in jobs))
    return cancelled, kept


#: What `cancel` says of a folder a run is at work in ("{pid}": that run's).
CANCEL_WHILE_RUNNING = (
    "interrupt it instead (Ctrl-C in its terminal, or `kill -INT {pid}`): it cancels its queued jobs itself"
)


def cancel_folder(
    out_dir: str | os.PathLike[str],
    *,
    api: ApiSettings,
    http: httpx.AsyncClient | None = None,
    on_done: Callable[[JobRecord, str, str | None], None] | None = None,
) -> tuple[int, int]:
    """`seedream-pipe cancel`: cancel the queued jobs of an earlier run of this folder.

    `on_done(job, outcome, error)` hears of each job; outcome "error" when the API could not be
    asked (the job is counted as kept)."""
    out_dir = Path(out_dir)
    if not (out_dir / STATE_FILE).exists():
        from seedream_pipe.errors import NothingToShow

        raise NothingToShow(f"{out_dir}: no run here (no {STATE_FILE})")
    api = checked_api(api)

    async def go() -> tuple[int, int]:
        with StateStore.for_output_dir(out_dir) as store:
            async with ModelApiClient(api, http=http) as client:
                return await cancel_queued(store, client, on_done=on_done)

    # A run at work in the folder would take its cancelled jobs as finished; it cancels its
    # queued jobs itself when interrupted.
    with folder_lock(out_dir, busy=CANCEL_WHILE_RUNNING):
        return asyncio.run(go())


#: How long `gone_simulator` waits for a simulator on this machine to accept a connection.
#: Loopback refuses at once when nothing listens; this only bounds a port slow to answer.
PROBE_TIMEOUT_S = 1.0


def _sent_to(rec: JobRecord) -> tuple[str, int] | None:
    """The (host, port) a job's API links point at, as the API handed them out, or None."""
    url = rec.cancel_url or rec.status_url
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a malformed host or a port that is no number: no address to look at
        return None
    return (parts.hostname, port) if parts.hostname else None


def _nothing_listens(host: str, port: int) -> bool:
    """True only when the address refuses a connection: proof that no server is there any more.

    Any other failure (a timeout, say) proves nothing, so `cancel` goes on and reports what the
    API answers."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def gone_simulator(last_host: str | None, in_flight: list[JobRecord]) -> str | None:
    """The address of the simulator on this machine that held these jobs, if it is gone; else None.

    `run --sim` starts its simulator inside the run's process: once that run is killed, its jobs
    exist nowhere, so asking to cancel them could only fail, and retrying would never help.
    """
    if not last_host or not is_loopback(last_host):
        return None
    addresses: set[tuple[str, int]] = set()
    for rec in in_flight:
        address = _sent_to(rec)
        if address is None or not is_loopback(address[0]):
            return None  # a job we cannot place on this machine: let the API say what it holds
        addresses.add(address)
    if not all(_nothing_listens(host, port) for host, port in addresses):
        return None
    return ", ".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in sorted(addresses))


def recipe_meta(recipe: Recipe) -> dict[str, Any]:
    """What the outputs need to know about the recipe, stored in the folder's meta."""
    return {
        "path": str(recipe.path),
        # (resolved: `path` is as the run was given it, relative to where it ran; a takeover by a
        # copy of the recipe at another path is told by this, see _follow_recipe)
        "file": str(recipe.path.resolve()) if recipe.from_file else None,
        "name": recipe.name,
        "model": recipe.model,
        "hash": recipe.hash,
        "source_text": recipe.source_text,
        "resolved": recipe.resolved,
        "sheet": recipe.sheet.model_dump(),
        "price_per_image": recipe.price_per_image,
    }


def options_from_recipe(recipe: Recipe, **overrides: Any) -> RunOptions:
    """The recipe's `run:` settings, with the command line's choices on top (None: not given)."""
    unknown = sorted(set(overrides) - {f.name for f in fields(RunOptions)})
    if unknown:  # (a notebook's typo, `rmp=5`, would otherwise be dropped without a word)
        known = ", ".join(f.name for f in fields(RunOptions))
        raise UsageError(f"options_from_recipe: no option {', '.join(unknown)}; RunOptions has {known}")
    opts = RunOptions(
        rpm=recipe.run.rpm,
        concurrency=recipe.run.concurrency,
        timeout_s=recipe.run.timeout_s,
        resubmit_unknown=recipe.run.resubmit_unknown,
    )
    for name, value in overrides.items():
        if value is not None:
            setattr(opts, name, value)
    return opts


def write_outputs(out_dir: str | os.PathLike[str], recipe: Recipe) -> list[Path]:
    """Write the end-of-run outputs (contact sheet, report, manifest, gallery); return their paths.

    Called after every run but an interrupted one, whatever its exit code, and when there was
    nothing left to do: an output (manifest.json, written last) is a make target whose
    prerequisite is the recipe, so it must be fresh after `run`.
    """
    from seedream_pipe import outputs

    return outputs.write_outputs(out_dir, recipe=recipe)


#: How much older than the edit of its recipe the outputs of a run are dated (see
#: date_before_edits): more than the coarsest clock of a file system (FAT's, 2 s).
BEFORE_EDIT_NS = 3_000_000_000


def date_before_edits(recipe: Recipe, written: Iterable[Path]) -> str | None:
    """When a file the recipe was read from (the recipe, a base, a var file) changed while it
    ran, date the outputs written just before that edit, and say what to do; else None.

    The outputs are of the recipe as it was read, not as it is now, yet written after the edit
    they would look newer than it, and make would take a target that never ran the new
    combinations as up to date. Dated before it, the next `make` runs the recipe again."""
    changed = recipe.changed_sources()
    if not changed:
        return None
    edits = []
    for source in changed:
        with contextlib.suppress(OSError):  # (removed: make itself stops for a missing prerequisite)
            edits.append(source.path.stat().st_mtime_ns)
    if edits:
        before = min(edits) - BEFORE_EDIT_NS
        for path in written:
            with contextlib.suppress(OSError):
                os.utime(path, ns=(path.stat().st_atime_ns, before))
    names = ", ".join(source.display for source in changed)
    dated = ", and dated before the change so that make runs it again" if edits else ""  # (removed: make stops)
    return (
        f"warning: {names} changed during the run; run it again to do the new plan (the outputs "
        f"written are of the recipe as it was read{dated})"
    )


LOCK_FILE = ".run.lock"
#: What a run opens or writes into inside its folder other than by renaming a finished file
#: into place: none of these may be a symbolic link, or the run would write where it points.
_OPENED_IN_PLACE = (LOCK_FILE, STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm", IMAGES_DIR, THUMBS_DIR)


def refuse_links(out_dir: Path) -> None:
    """Raise OutputError when a file or folder a run writes into is a symbolic link: a folder
    shared with others (or unpacked from an archive) could point it at ~/.bashrc."""
    linked = [name for name in _OPENED_IN_PLACE if (out_dir / name).is_symlink()]
    if linked:
        raise OutputError(
            f"{out_dir}: {', '.join(linked)} {'is a symbolic link' if len(linked) == 1 else 'are symbolic links'}; "
            f"seedream-pipe writes only into its own files and folders: remove the link or use another {option('--out', 'out_dir')}"
        )


def refuse_foreign(out_dir: Path) -> None:
    """Raise OutputError when a folder a first run would write into already holds files of
    someone else's: the run would add its own and replace any report.csv or gallery.html."""
    if (out_dir / STATE_FILE).exists():
        return
    theirs = sorted(entry.name for entry in out_dir.iterdir() if not _as_good_as_empty(entry.name))
    if theirs:
        raise OutputError(
            f"{out_dir}: holds {some_of(theirs)} but no {STATE_FILE}, so it is no seedream-pipe output folder "
            f"(or one whose state was deleted); give {option('--out', 'out_dir')} a new or empty folder, or empty this one"
        )


def _as_good_as_empty(name: str) -> bool:
    """A file a new output folder may hold: a placeholder (`.gitkeep`), a file manager's, or
    what a run cut short before its state left (its lock, a temporary file). Other hidden
    files are someone's (`.bashrc`: `output: ~` is a home folder, not an empty one)."""
    return name in (LOCK_FILE, ".gitkeep", ".keep", ".gitignore", ".DS_Store") or (
        name.startswith(".") and name.endswith((".tmp", ".part"))
    )


@contextlib.contextmanager
def folder_lock(out_dir: Path, *, busy: str = "wait for it or stop it first") -> Iterator[None]:
    """One run per output folder at a time: two runs of the same recipe would both submit the
    jobs still planned, and pay twice. The OS drops the lock when the process dies, even by
    SIGKILL, so a crashed run never blocks the next one. `busy` says what to do when the folder
    is in use ("{pid}" in it is the holder's). Whoever writes in a folder takes this lock first,
    so it is also where a folder whose files are links is refused (see refuse_links)."""
    refuse_links(out_dir)
    path = out_dir / LOCK_FILE
    try:
        # (O_NOFOLLOW: a link put there after the check above is refused all the same)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        handle = open(fd, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    except OSError as exc:  # a read-only folder, say: nothing was written, so nothing is lost
        raise OutputError(f"{out_dir}: cannot write in the output folder: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise folder_busy(out_dir, handle.read().strip(), busy) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def folder_busy(out_dir: Path, holder: str, busy: str) -> FolderBusy:
    """The error of a folder whose lock `holder` (a pid, as its lock file says) holds; `busy`
    says what to do ("{pid}" in it is the holder's)."""
    pid = holder if holder.isdigit() else "<its pid>"
    return FolderBusy(f"{out_dir} is in use by {holder_of(holder)}; {busy.format(pid=pid)}")


def holder_of(pid: str) -> str:
    """Who holds a folder's lock, in words: "another run (pid 123)", and which one when it is
    this very process (a notebook's run started earlier and still going)."""
    if not pid.isdigit():  # (a lock file it had no time to write its pid in)
        return "another run"
    if pid == str(os.getpid()):
        return f"another run (pid {pid}, this same process: a run started earlier here, still going)"
    return f"another run (pid {pid})"


def run_in_progress(out_dir: Path) -> str | None:
    """The pid of a run at work in the folder now, or None. Reads only: `--dry-run` and
    `status` may look at a folder they cannot write."""
    try:
        with open(out_dir / LOCK_FILE, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "unknown"
    except OSError:  # no lock file: no run ever held one here
        return None
    return None


def _follow_recipe(store: StateStore, recipe: Recipe, plan: Plan, out: Path) -> str | None:
    """Make the folder's state follow this recipe: its plan (jobs it no longer plans leave the
    outputs, their images stay) and its description for the outputs. Returns what to tell the
    user when the folder was another recipe's (another name, or the same name at another path).

    A takeover is not refused: a renamed or moved recipe keeps its folder and what was paid for
    in it. But a --out pointing at another recipe's folder, or a copy of a recipe that kept its
    `name:` (so its default folder), must not take it over unannounced: each run of the two would
    drop the other's jobs from the sheet, report and gallery."""
    earlier = store.get_meta("recipe", {})
    note = None
    if isinstance(earlier, Mapping) and earlier.get("name") not in (None, recipe.name):
        note = (
            f"warning: {out} held recipe {earlier['name']!r} ({earlier.get('path')}); this run of "
            f"{recipe.name!r} takes it over: the jobs only {earlier['name']!r} planned stay on "
            f"disk but leave its sheet, report and gallery. Give a recipe a folder of its own with {option('--out', 'out_dir')}"
        )
    elif isinstance(earlier, Mapping) and recipe.from_file and earlier.get("file") not in (None, str(recipe.path.resolve())):
        # (a folder of an older version, which kept no `file`, is taken to be this one's)
        note = (
            f"warning: {out} was last run by recipe {recipe.name!r} at {earlier['file']}; this run's "
            f"{recipe.display} has the same name but is another file, and takes the folder over: the jobs "
            "only the other planned stay on disk but leave its sheet, report and gallery. A copy of a "
            f"recipe needs a folder of its own: give it another `name:` or `output:`, or {option('--out', 'out_dir')}"
        )
    left = store.sync_plan(plan.jobs)["left"]
    if note is None and left and _unnamed_text(recipe):
        # A notebook's recipes given without a name are all 'recipe', in one folder; another
        # recipe (or this one, a value taken out) takes its jobs out of the outputs.
        note = (
            f"warning: {out} held {counted(left, 'job')} this recipe does not plan (another "
            f"recipe given without a name, or this one before an edit): their images stay on disk "
            f"but leave the sheet, report and gallery. Give each recipe a name of its own "
            f"(parse_recipe(..., name=...) or `name:`), or a folder of its own ({option('--out', 'out_dir')})"
        )
    store.set_meta("recipe", recipe_meta(recipe))
    _rename_to_plan(store, out)
    return note


def sweep_stale_outputs(out_dir: Path, now: float) -> None:
    """Remove the temporary outputs (`.report.csv.<hex>.tmp`) of a process killed while it wrote
    them, those an hour old: `sheet DIR` takes no lock, and one at work may be writing now."""
    for stale in out_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if stale.is_file() and now - stale.lstat().st_mtime > STALE_OUTPUT_S:
                stale.unlink()


def _unnamed_text(recipe: Recipe) -> bool:
    """A recipe from text or a dict (not a file) that names itself nowhere: it runs into the
    folder every such recipe does, outputs/recipe/."""
    return recipe.spec.name is None and not recipe.from_file


def _rename_to_plan(store: StateStore, out: Path) -> None:
    """Give each kept image (and its thumbnail) the name the plan gives it now: a value added
    at the front of a list moves every index after it, and a renamed label changes names, and
    `ls images/` would otherwise follow neither. The file is renamed, then the state follows
    (a crash between the two leaves a job whose file is missing: the next run fetches it again,
    without paying twice)."""
    for rec in store.jobs(states=("downloaded",)):
        if not rec.image_path:  # (the store gives only paths of one name inside images/)
            continue
        old = out / rec.image_path
        name = Path(image_file_name(rec.job_index, rec.job_id, list(rec.axes.values()))).stem + old.suffix
        if old.name == name or not old.is_file():
            continue
        new = old.with_name(name)
        if new.exists():  # (names hold the job id: only a file not ours could be there)
            continue
        os.replace(old, new)
        fields: dict[str, Any] = {"image_path": str(new.relative_to(out))}
        new_thumb = out / THUMBS_DIR / thumb_name(name)
        if rec.thumb_path and (out / rec.thumb_path).is_file():
            if not new_thumb.exists():
                os.replace(out / rec.thumb_path, new_thumb)
                fields["thumb_path"] = str(new_thumb.relative_to(out))
        else:  # (gone: remade under the new name when next needed)
            fields["thumb_path"] = str(new_thumb.relative_to(out))
        store.update(rec.job_id, **fields)


async def arun_recipe(
    recipe: Recipe,
    *,
    api: ApiSettings,
    out_dir: str | os.PathLike[str] | None = None,
    options: RunOptions | None = None,
    progress: Progress | None = None,
    http: httpx.AsyncClient | None = None,
    max_jobs: int = 10_000,
    allow_large: bool = False,
    handle_signals: bool = False,
    plan: Plan | None = None,
) -> RunResult:
    """Run a recipe to completion (or to the first reason to stop) and return what happened.

    - `recipe`: a Recipe (`load_recipe(path)` or `parse_recipe(text)` makes one);
    - `api`: the ApiSettings(base_url, token) to run against: `api_settings()` finds them as the
      CLI does, `ApiSettings(sim.base_url, "any-token")` points at a Simulator;
    - `out_dir`: the output folder (default: the recipe's `output`, else outputs/<name>/);
    - `options`: RunOptions; `options_from_recipe(recipe, rpm=30)` keeps the recipe's `run:`
      settings and changes the ones named (a bare RunOptions() starts from the defaults);
    - `progress`: where events go (default: nowhere; `LogProgress()` logs them);
    - `http`: an httpx.AsyncClient to send through (tests); `max_jobs`/`allow_large`: as --yes;
    - `handle_signals`: install Ctrl-C/SIGTERM handlers that wind the run down (the CLI does);
    - `plan`: the recipe's plan when it is already made (`recipe.plan(...)`, which applied
      max_jobs), so that a large recipe is not planned twice.

    The outcome is in the result (`result.ok`, `result.exit_code`, `result.reason`); arguments
    a run cannot use raise UsageError or AuthError before anything is written or sent.

    This is the form for a running event loop (`await arun_recipe(...)` in a notebook);
    `run_recipe(...)` takes the same arguments and blocks until the run ends.
    """
    from seedream_pipe.recipe import Recipe

    # A notebook's arguments are checked before anything is written or sent.
    if not isinstance(recipe, Recipe):
        raise UsageError(f"the recipe must be a Recipe, not {type(recipe).__name__}: load_recipe(path) makes one")
    # (an empty token passes only for a run with nothing to send: checked below, and again under
    # the folder's lock)
    api = checked_api(api, token_required=False)
    if options is not None and not isinstance(options, RunOptions):
        raise UsageError(
            f"options= takes RunOptions, not {type(options).__name__}: options_from_recipe(recipe, rpm=30) "
            "keeps the recipe's own run: settings and changes the ones named"
        )
    opts = options or options_from_recipe(recipe)
    opts.check()
    out = Path(out_dir) if out_dir is not None else default_output_dir(recipe)
    plan = _plan_of(recipe, plan, max_jobs=max_jobs, allow_large=allow_large)
    if not api.token and needs_api(recipe, out, opts, plan=plan):
        raise AuthError(EMPTY_TOKEN_MESSAGE)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{out}: is a file, not a folder; give the output folder another path ({option('--out', 'out_dir')})") from None
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder: {exc.strerror or exc}") from exc
    # (before the lock, which creates .run.lock: a folder refused is left as it was found)
    refuse_links(out)  # (first: a state.sqlite that is a dangling link is not "no state")
    refuse_foreign(out)
    progress = progress or QuietProgress()
    try:
        return await _run_in_folder(recipe, api, out, plan, opts, progress, http, handle_signals)
    finally:
        # A run that stops by an exception (a notebook's interrupt cancels it) sends no
        # run_finished: a live bar would go on redrawing from its thread after the cell ends.
        close = getattr(progress, "close", None)
        if callable(close):
            close()


class _SignalHandlers:
    """Ctrl-C and SIGTERM handlers on the run's event loop, and the ones they replaced."""

    def __init__(self) -> None:
        # sig -> the handler it had before: asyncio's remove_signal_handler leaves the default
        # behind, and a caller's own (a script's SIGTERM handler, a kernel's SIGINT) must come back
        self._before: dict[signal.Signals, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> None:
        self._loop = loop
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                before = signal.getsignal(sig)
                loop.add_signal_handler(sig, handler)
                self._before[sig] = before

    def restore(self) -> None:
        for sig, before in self._before.items():
            if self._loop is not None:
                self._loop.remove_signal_handler(sig)
            if before is not None:  # (None: a handler not set from Python, which cannot be put back)
                signal.signal(sig, before)
        self._before.clear()


async def _run_in_folder(
    recipe: Recipe, api: ApiSettings, out: Path, plan: Plan, opts: RunOptions, progress: Progress,
    http: httpx.AsyncClient | None, handle_signals: bool,
) -> RunResult:
    """The run of `arun_recipe`, its arguments checked and its output folder made."""
    signals = _SignalHandlers()
    try:
        return await _run_and_write(recipe, api, out, plan, opts, progress, http, signals if handle_signals else None)
    finally:
        # Put back only now: a signal while the outputs are written (after the jobs ended) is
        # taken by the run's handler, which has nothing left to stop, instead of killing the
        # process half way (SIGTERM's default) or raising into it (Ctrl-C's).
        signals.restore()


async def _run_and_write(
    recipe: Recipe, api: ApiSettings, out: Path, plan: Plan, opts: RunOptions, progress: Progress,
    http: httpx.AsyncClient | None, signals: _SignalHandlers | None,
) -> RunResult:
    with folder_lock(out), StateStore.for_output_dir(out) as store:
        check_same_api(store, out, api.host)
        if not api.token and _calls_api(plan, {r.job_id: r for r in store.jobs(in_plan=None)}, out, opts):
            raise AuthError(EMPTY_TOKEN_MESSAGE)  # (another run changed the folder since arun_recipe looked)
        note = _follow_recipe(store, recipe, plan, out)
        if note:
            progress.event("message", {"text": note})
        for warning in plan.warnings:  # (as `plan` and `validate` show them: merged jobs, long prompts)
            progress.event("message", {"text": f"warning: {warning}"})
        store.start_run(
            recipe_path=str(recipe.path),
            recipe_hash=recipe.hash,
            api_host=api.host,
            tool_version=__version__,
        )
        # what a later run needs to go on with the same API (see go_on_with): a simulator of
        # `run --sim` is started anew each time, one of `seedream-pipe sim` lives at its URL
        earlier_api = store.get_meta(LAST_API)
        store.set_meta(LAST_API, {"base_url": api.base_url, "built_in_simulator": opts.forget_lost})
        started = time.time()
        rng = random.Random(opts.seed)
        budget = opts.requests_per_s or max(10.0, 5 * opts.rpm / 60)
        client = ModelApiClient(
            api,
            http=http,
            pacer=SubmitPacer(opts.rpm),
            budget=RequestBudget(budget, burst=max(10, int(budget))),
            backoff=Backoff(base=opts.backoff_base_s, cap=opts.backoff_cap_s, rng=rng),
            timeout_s=opts.request_timeout_s,
            max_retries=opts.max_retries,
            on_event=lambda kind, detail: progress.event(kind, detail),
        )
        runner = Runner(store, client, out, opts, progress=progress)
        # (a simulator at another URL than the last run's, started afresh: it knows none of them;
        # one restarted on the same port is not told apart, and its start line says "to poll")
        runner.simulator_forgot = opts.forget_lost and not (
            isinstance(earlier_api, dict) and earlier_api.get("base_url") == api.base_url
        )
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        presses = Presses()

        def on_signal() -> None:
            press = presses.press()
            if press == 1:
                runner.interrupt()
            elif press == 2 and main_task is not None:
                main_task.cancel()  # second Ctrl-C: out at once (every commit is atomic)

        if signals is not None:
            signals.install(loop, on_signal)
        result: RunResult | None = None
        try:
            async with client:
                result = await runner.run(store.jobs() + paid_for_off_plan(store))
        except asyncio.CancelledError:
            if presses.count < 2:
                raise
            # The counters so far, as any run records them: the summary's requests, and the
            # record that this run reached its API (check_same_api), if it did.
            result = runner._result()
            result.exit_code = EX_INTERRUPTED
            result.reason = "interrupted twice: stopped at once (state is consistent; run again to resume)"
        except AuthError as exc:
            result = runner._result()
            result.exit_code = EX_NOPERM
            result.reason = redact(str(exc), api.token)
        finally:
            ended = time.time()
            if result is not None:
                result.summary.update(
                    started_at=started,
                    ended_at=ended,
                    elapsed_s=round(ended - started, 3),
                    exit_code=result.exit_code,
                )
                if result.reason:
                    result.summary["reason"] = result.reason
                store.finish_run(exit_code=result.exit_code, summary=result.summary)
        assert result is not None
        if note:  # (in the result too: `run --quiet`, which shows no messages, says it at the end)
            result.warnings.append(note)
    if result.exit_code not in (EX_INTERRUPTED, EX_IOERR):
        # An interrupted run leaves the outputs as they were: a report written now would pass
        # for a finished run's (to make, too: the target would look up to date). The next run
        # writes them (or `report`, `sheet` and `gallery` DIR). Nor are they written after the
        # file system refused (a full disk): they would fail the same way, and hide why.
        result.outputs = write_outputs(out, recipe)
        edited = date_before_edits(recipe, result.outputs)
        if edited:
            result.warnings.append(edited)
            progress.event("message", {"text": edited})
    # last, so that what it names is there: the outputs, relative to the output folder
    progress.event("run_finished", _finished_event(result))
    return result


def _finished_event(result: RunResult) -> dict[str, Any]:
    """The detail of --json's last line: how the run ended and what it wrote."""
    return {
        "exit_code": result.exit_code,
        "reason": result.reason,
        "summary": result.summary,
        "out_dir": str(result.out_dir),
        "outputs": outputs_named(result.out_dir, result.outputs),
    }


def outputs_named(out_dir: Path, written: Iterable[Path]) -> list[str]:
    """The files written, named from the output folder (as `wrote ... in DIR` names them)."""
    return [str(p.relative_to(out_dir)) if p.is_relative_to(out_dir) else str(p) for p in written]


def _blocking(run: Callable[_P, Coroutine[Any, Any, RunResult]]) -> Callable[_P, RunResult]:
    """`run` made a plain call that runs it on an event loop of its own, same arguments."""

    @functools.wraps(run)
    def blocking(*args: _P.args, **kwargs: _P.kwargs) -> RunResult:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run(*args, **kwargs))
        # asyncio.run would fail with "cannot be called from a running event loop", which does
        # not say what to write instead; checked before the coroutine exists, so none is left
        # unawaited
        raise RuntimeError(
            "run_recipe() cannot run inside a running event loop (a Jupyter notebook has one): "
            "write `result = await arun_recipe(recipe, api=...)` instead (from seedream_pipe.runner)"
        )

    return blocking


#: `arun_recipe` as a plain call, for scripts: `result = run_recipe(recipe, api=...)`.
run_recipe = _blocking(arun_recipe)
run_recipe.__name__ = run_recipe.__qualname__ = "run_recipe"


def _reached_its_api(run: Mapping[str, Any]) -> bool:
    """Whether a run got anything from its API host: a job accepted, a submit of unknown outcome,
    a poll or a download. A run that never reached its host (a typo in --base-url) leaves nothing
    another host's run could take as done. A run killed before its summary, or recorded by an
    older version, is taken to have reached it."""
    summary = run.get("summary")
    if not isinstance(summary, Mapping) or "accepted" not in summary:
        return True
    return any(summary.get(key) for key in ("accepted", "unknown_submits", "polls", "result_reads", "downloads"))


#: The meta key of the API the folder's last run went to: {"base_url", "built_in_simulator"}.
LAST_API = "last_api"


def go_on_with(store: StateStore) -> str:
    """The option that sends a run to the simulator this folder's last run used: `--sim` for
    the built-in one (and for folders of older versions, which did not say), else the base URL
    of the `seedream-pipe sim` it ran against, whose jobs only that simulator knows."""
    last = store.get_meta(LAST_API)
    if isinstance(last, dict) and last.get("built_in_simulator") is False and isinstance(last.get("base_url"), str):
        # (only a simulator's, on this machine: a state is just a file, and one made to name
        # another host would have the user send the token there)
        with contextlib.suppress(ValueError):
            if is_loopback(api_host(last["base_url"])):
                return f"--base-url {printable(last['base_url'])}"
    return "--sim"


def check_same_api(store: StateStore, out: Path, host: str) -> None:
    """Refuse a folder whose jobs went to another API host (UsageError).

    E.g. `run --sim`, then the real API: the simulator's images would count as done.
    """
    earlier = {run["api_host"] for run in store.runs() if run["api_host"] and _reached_its_api(run)}
    if earlier and host not in earlier:
        hosts = ", ".join(sorted(earlier))
        if all(is_loopback(h) for h in earlier):  # (plain http goes to this machine only: a simulator)
            raise UsageError(
                f"{out} holds the jobs of a run against {hosts}, a simulator on this machine; this "
                f"run goes to {host} and would take them as done. To go on with the simulator, add "
                f"{go_on_with(store)}; for {host}, give the run its own folder with {option('--out', 'out_dir')}, or delete {out}"
            )
        raise UsageError(
            f"{out} holds the jobs of a run against {hosts}; this run goes to "
            f"{host} and would take them as done. Give it its own folder with {option('--out', 'out_dir')}, or delete "
            f"{out} to start afresh"
        )


def dry_run_report(
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
    options: RunOptions,
    *,
    api_host: str | None = None,
    max_jobs: int = 10_000,
    allow_large: bool = False,
    fresh_simulator: bool = False,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """What `run` would do, from the plan and the folder's state, with no network and no writes.

    With `api_host`, a folder used with another API is refused as the real run would refuse it.
    `fresh_simulator` (`run --sim`): the run starts a new simulator, which knows none of the
    request ids an earlier one handed out, so jobs to poll or download are submitted again.
    """
    out_dir = Path(out_dir)
    plan = _plan_of(recipe, plan, max_jobs=max_jobs, allow_large=allow_large)
    if out_dir.exists():  # (what the run would refuse, refused here too)
        if not out_dir.is_dir():
            raise OutputError(f"{out_dir}: is a file, not a folder; give the output folder another path ({option('--out', 'out_dir')})")
        refuse_links(out_dir)
        refuse_foreign(out_dir)
    known: dict[str, JobRecord] = {}
    if (out_dir / STATE_FILE).exists():
        with StateStore.for_reading(out_dir) as store:
            if api_host is not None:
                check_same_api(store, out_dir, api_host)
            known = {r.job_id: r for r in store.jobs(in_plan=None)}
    actions, held_back = _actions(plan, known, out_dir, options, fresh_simulator=fresh_simulator)
    submits = actions.get("submit", 0) + actions.get("resubmit", 0)
    cost = None if recipe.price_per_image is None else submits * recipe.price_per_image
    return {
        "jobs": len(plan.jobs),
        "warnings": list(plan.warnings),
        "out_dir": str(out_dir),
        "actions": actions,
        "held_back": held_back,
        "estimated_cost": cost,
    }


#: The actions of a run that call the API; the others (done, skip, fail) need no network.
NETWORK_ACTIONS = ("submit", "resubmit", "poll", "download")


def _actions(
    plan: Plan, known: Mapping[str, JobRecord], out_dir: Path, options: RunOptions, *, fresh_simulator: bool = False
) -> tuple[dict[str, int], int]:
    """How many jobs a run would submit, resubmit, poll, download, find done, skip or fail,
    from the plan and the folder's state (`known`, by job_id), and how many --limit holds back."""
    actions: dict[str, int] = {}
    submits: list[tuple[int, str, str]] = []  # (index, job_id, submit or resubmit)
    forgotten = 0  # jobs a new simulator does not know: made again with what --limit leaves
    for job in plan.jobs:
        rec = known.get(job.job_id)
        action = "submit" if rec is None else action_for(rec, options)
        if action == "verify":  # (the run downloads again a file gone or changed)
            action = "done" if rec is not None and image_intact(out_dir, rec) else "download"
        if fresh_simulator and action in ("poll", "download"):
            forgotten += 1  # (resubmitted, as the run does once the new simulator answers 404)
        elif action in ("submit", "resubmit"):
            submits.append((job.index, job.job_id, action))
        else:
            actions[action] = actions.get(action, 0) + 1
    if not fresh_simulator:  # (a new simulator knows none of them: they are lost, not made again)
        planned = {job.job_id for job in plan.jobs}
        for rec in known.values():
            if rec.job_id not in planned and paid_not_fetched(rec):  # fetched, as run fetches them
                action = "download" if rec.state == "completed" else "poll"
                actions[action] = actions.get(action, 0) + 1
    chosen, held_back = submits_within_limit(submits, options.limit, lambda s: (s[0], s[1]))
    for _, _, action in chosen:
        actions[action] = actions.get(action, 0) + 1
    if forgotten:  # (the run's submits take --limit first; a forgotten job is made with what is left)
        again = made_again_within_limit(forgotten, options.limit, len(chosen))
        if again:
            actions["resubmit"] = actions.get("resubmit", 0) + again
        held_back += forgotten - again
    order = ("submit", "resubmit", "poll", "download")  # as the run says them; the rest after
    actions = dict(sorted(actions.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return actions, held_back


def needs_api(
    recipe: Recipe, out_dir: Path, options: RunOptions, *, plan: Plan | None = None, max_jobs: int = 10_000,
    allow_large: bool = False,
) -> bool:
    """Whether a run of the recipe into `out_dir` would call the API: something to submit,
    poll or download. One that would not (every job done, or failed and not to be retried)
    needs no token. Reads the folder's state only: no network, no writes."""
    if not (out_dir / STATE_FILE).exists():
        return True
    plan = _plan_of(recipe, plan, max_jobs=max_jobs, allow_large=allow_large)
    with StateStore.for_reading(out_dir) as store:
        known = {r.job_id: r for r in store.jobs(in_plan=None)}
    return _calls_api(plan, known, out_dir, options)


def _calls_api(plan: Plan, known: Mapping[str, JobRecord], out_dir: Path, options: RunOptions) -> bool:
    actions, _ = _actions(plan, known, out_dir, options)
    return any(actions.get(action) for action in NETWORK_ACTIONS)


def _plan_of(recipe: Recipe, plan: Plan | None, *, max_jobs: int, allow_large: bool) -> Plan:
    """The plan given (checked to be this recipe's), else the recipe planned now."""
    from seedream_pipe.plan import Plan

    if plan is None:
        return recipe.plan(max_jobs=max_jobs, allow_large=allow_large)
    if not isinstance(plan, Plan) or plan.recipe is not recipe:
        raise UsageError("plan= takes this recipe's own plan, as recipe.plan() makes it")
    return plan


def finish_if_done(recipe: Recipe, out_dir: str | os.PathLike[str], *, max_jobs: int = 10_000, allow_large: bool = False,
                   api_host: str | None = None, plan: Plan | None = None,
                   on_warning: Callable[[str], None] | None = None) -> list[Path] | None:
    """When every job of the recipe's plan is already downloaded with its file intact, bring the
    folder up to date with the recipe without any network call, and return the outputs written.
    None when there is work left: a run is needed.

    Up to date means: jobs the recipe no longer plans leave the sheet, report and gallery (their
    images stay on disk), renamed labels and reordered values show, and the outputs are written
    again, so a report used as a make target is newer than its recipe after every `run`.

    With `api_host`, a folder used with another API host is refused (UsageError), as `run`
    would refuse it. Lets `run` skip starting a simulator, and asking for a token, when a recipe
    is finished. `plan`: as for arun_recipe. `on_warning` hears what the user must be told
    however quiet (RunResult.warnings of a run); default: the package's log.
    """
    out_dir = Path(out_dir)
    if not (out_dir / STATE_FILE).exists():
        return None
    plan = _plan_of(recipe, plan, max_jobs=max_jobs, allow_large=allow_large)
    with StateStore.for_reading(out_dir) as store:
        if api_host is not None:
            check_same_api(store, out_dir, api_host)
        known = {r.job_id: r for r in store.jobs(in_plan=None)}
    planned = {job.job_id for job in plan.jobs}
    if any(paid_not_fetched(r) for r in known.values() if r.job_id not in planned):
        return None  # (a job the recipe no longer plans, taken by the API: its image is still to fetch)
    for job in plan.jobs:
        rec = known.get(job.job_id)
        # (failed jobs go to the runner, which reports them and exits 1 with no network call)
        if rec is None or rec.state != "downloaded" or not image_intact(out_dir, rec):
            return None
    warn = on_warning or log.warning
    with folder_lock(out_dir), StateStore.for_output_dir(out_dir) as store:
        note = _follow_recipe(store, recipe, plan, out_dir)
        if note:
            warn(note)
        sweep_stale_outputs(out_dir, time.time())
        written = write_outputs(out_dir, recipe)  # under the lock: no run changes the folder meanwhile
    edited = date_before_edits(recipe, written)
    if edited:
        warn(edited)
    return written


__all__ = [
    "RunOptions",
    "RunResult",
    "Runner",
    "action_for",
    "arun_recipe",
    "cancel_folder",
    "cancel_queued",
    "date_before_edits",
    "dry_run_report",
    "finish_if_done",
    "gone_simulator",
    "needs_api",
    "options_from_recipe",
    "recipe_meta",
    "run_recipe",
    "write_outputs",
]
