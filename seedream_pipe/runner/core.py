"""The Runner: one run over one output folder's state, which moves each job through its states
(submit, poll, download) within the concurrency limit and the API's pacing."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from seedream_pipe.client import (
    KNOWN_STATES,
    AcceptedUnread,
    JobResult,
    JobStatus,
    ModelApiClient,
    Submission,
    UnknownOutcome,
    current_job,
)
from seedream_pipe.config import is_loopback
from seedream_pipe.downloads import NotAnImage, keep_image, remake_thumbnail
from seedream_pipe.errors import (
    EX_INTERRUPTED,
    EX_NOPERM,
    EX_OK,
    EX_SOME_FAILED,
    EX_UNAVAILABLE,
    ApiError,
    AuthError,
    CreditError,
    DownloadRefused,
    NotFound,
    NotRetried,
    RateLimited,
    RequestRejected,
    ServiceUnavailable,
    UnusableAnswer,
    exit_code_for,
)
from seedream_pipe.images import thumb_name
from seedream_pipe.pacing import PollSchedule
from seedream_pipe.paths import IMAGES_DIR, THUMBS_DIR, image_file_name
from seedream_pipe.progress import Progress, QuietProgress
from seedream_pipe.redaction import redact
from seedream_pipe.runner.cancel import cancel_queued
from seedream_pipe.runner.folder import sweep_stale_outputs
from seedream_pipe.runner.rules import (
    GENERATION_FAILED,
    LOST_CONTACT,
    NOT_FOUND_LOOKS,
    RESULT_REFUSED,
    TIMED_OUT,
    UNKNOWN_IN_A_ROW_STOP,
    UNKNOWN_REQUEST,
    UNREAD_ANSWERS_STOP,
    RunOptions,
    RunResult,
    action_for,
    actions_text,
    image_intact,
    left_for_forgotten,
    made_again,
    may_not_resend,
    submits_within_limit,
)
from seedream_pipe.state import FINAL_STATES, JobRecord, StateStore, iso_seconds
from seedream_pipe.words import counted


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
        self._sweep_unrecorded()
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
        self._run_again_left = left_for_forgotten(self.opt.limit, len(submit_now))
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
            again = made_again(forgotten, self._run_again_left)
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
            self._sweep_unrecorded()
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
            # (and which then stops the run or loses the job as before). So may an error_code in
            # a 2xx answer ("not completed"?): taken as the job's own, it failed every running
            # job at its first look. A job that did fail says so to the status read, and its
            # result read then gives the reason. A network error is not an answer.
            refused = exc.status is not None and (
                (400 <= exc.status < 500 and exc.status != 429)
                or (isinstance(exc, RequestRejected) and exc.status < 300)
            )
            unproven = not proven and isinstance(exc, ServiceUnavailable) and exc.status is not None
            if not (refused or unproven):
                raise
            said = "with an answer that was not JSON" if exc.status is not None and exc.status < 300 else f"with {exc.status}"
            return await self._look_by_status(rec, said)
        if result.status not in KNOWN_STATES:
            # Scrubbed, then cut (cut first, a token across the cut would keep its head), but only
            # the head that can be shown, with room for a token begun in it (as client._said): a
            # 4 MiB state of near-misses held the event loop for seconds at every look.
            head = result.status[: 40 + 6 * len(self.client.api.token or "")]
            named = self._redact(head)[:40]
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

    def _refused(self, rec: JobRecord, exc: ApiError) -> str:
        return f"{RESULT_REFUSED}: {exc} (request {rec.request_id} kept: --retry-failed reads it again)"

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
        except RequestRejected as exc:
            # This job fails with the API's reason and the others go on (taken for lost contact,
            # it stopped every submit, and met every later run again). A job the API says it
            # made is no generation failure: --retry-failed reads its result again, not resubmits.
            reason = f"{GENERATION_FAILED}: {error or exc}" if status == "failed" else self._refused(rec, exc)
            self._transition(rec, "failed", left_flight=True, error=reason)
            return "failed"
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

    def _sweep_unrecorded(self) -> None:
        """Delete the images (and thumbnails) of a run killed between keeping a download and
        committing it, or between that commit and _drop_replaced: whole files on no record. The
        job's next download has the same name only while its index and labels stay; once a
        recipe edit renumbers or relabels it, that file stayed in images/ for good beside the
        job's own. Only a file named for a job of this folder whose recorded image is on disk,
        intact, and is another file goes: until then it may be the job's only copy (a rename
        cut short before its commit), and anything else in the folders is not the run's to
        delete. (At the start of a run and at its end, once this run's downloads are recorded.)"""
        records: dict[str, JobRecord] = {rec.job_id: rec for rec in self.store.jobs(in_plan=None)}
        intact: dict[str, bool] = {}
        for folder in (self.images_dir, self.thumbs_dir):
            for path in folder.iterdir():
                index, _, rest = path.name.partition("_")
                rec = records.get(rest.partition("_")[0])
                if rec is None or not index.isdigit() or not path.is_file():
                    continue
                # (a state without the thumbnail's path: _file_intact makes it under the job's name)
                thumb = rec.thumb_path or str(self._paths(rec)[1].relative_to(self.out_dir))
                if str(path.relative_to(self.out_dir)) in (rec.image_path, thumb):
                    continue
                if rec.job_id not in intact:  # (read once, and only for a job with a stray file)
                    intact[rec.job_id] = image_intact(self.out_dir, rec)
                if intact[rec.job_id]:
                    path.unlink(missing_ok=True)

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
        except RequestRejected as exc:  # (the API's reason for this job: see _finish)
            self._transition(rec, "failed", error=self._refused(rec, exc))
            return None
        except ApiError as exc:
            self._lose_contact(rec, exc)
            return None
        if not result.output_urls:
            self._transition(rec, "failed", error="the result carried no image URL")
            return None
        # The API's own times too, where the job has none: one `cancel` found completed was
        # recorded as finishing when cancel looked, and its latency counted the hours between.
        times = {
            name: value
            for name, value in (("server_created_at", result.created_at), ("server_finished_at", result.finished_at))
            if value and getattr(rec, name) is None
        }
        self.store.update(rec.job_id, output_urls=result.output_urls, image_url=result.output_urls[0], **times)
        rec.output_urls = result.output_urls
        rec.image_url = result.output_urls[0]
        for name, value in times.items():
            setattr(rec, name, value)
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
