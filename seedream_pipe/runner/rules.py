"""What a run does with each job, by rule: the run's options and result (RunOptions,
RunResult), the error texts and limits it goes by, and the pure rules the run and its dry run
share (action_for, paid_not_fetched, what --limit lets through)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from seedream_pipe.client import MAX_DOWNLOAD_BYTES
from seedream_pipe.errors import EX_OK, UsageError
from seedream_pipe.paths import file_sha256
from seedream_pipe.state import JobRecord, StateStore

_T = TypeVar("_T")


#: Error texts that mean "we stopped watching", not "the job failed": --retry-failed polls these.
TIMED_OUT = "timed out"
LOST_CONTACT = "lost contact"
#: A finished job whose result the API refused to give (400/422, an error_code): it was made,
#: and maybe billed, so --retry-failed reads it again, never submits it again.
RESULT_REFUSED = "result refused"
#: The error of a job the API said failed.
GENERATION_FAILED = "generation failed"
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
        if rec.request_id and rec.error and rec.error.startswith((TIMED_OUT, LOST_CONTACT, RESULT_REFUSED)):
            return "poll"
        if rec.request_id and rec.output_urls and not (rec.error or "").startswith(UNKNOWN_REQUEST):
            return "download"  # (a fresh URL from its result; one the API no longer knows is made again)
        return "submit"
    return "skip"


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


def left_for_forgotten(limit: int | None, submitting: int) -> int | None:
    """The submits --limit leaves for jobs a restarted simulator forgot (made again), once the
    plan's `submitting` jobs have theirs; None: no limit. The run spends this budget, and its
    start line and its dry run count the forgotten jobs made again by it."""
    return None if limit is None else max(0, limit - submitting)


def made_again(forgotten: int, left: int | None) -> int:
    """How many of `forgotten` jobs a budget `left` (left_for_forgotten) lets a run make again."""
    return forgotten if left is None else min(forgotten, left)


def actions_text(actions: Mapping[str, int], held_back: int = 0) -> str:
    """"3 to submit, 2 to poll", and what --limit leaves for later, for people."""
    text = ", ".join(f"{n} to {action}" for action, n in actions.items() if n) or "nothing"
    if held_back:
        text += f"; {held_back} left for a later run (--limit)"
    return text
