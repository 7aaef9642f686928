"""The RunComfy Model API client: submit, status, result, cancel, and file downloads.

It speaks RunComfy's Model API protocol (docs/simulator.md lists its routes) over an injectable
`httpx.AsyncClient` (tests may pass one with a MockTransport; the simulator over a real socket is
the main partner), paces itself through a `SubmitPacer` (submits) and a `RequestBudget`
(everything else), and retries what is safe to retry. Every answer it cannot turn into progress
becomes one of the classes of `seedream_pipe.errors`, with a message that never contains the
token.

The one thing it refuses to decide is what to do when a submit's outcome is unknown (the body
was sent, then the connection died or the answer was unreadable): the job may exist and be
billed. `submit()` returns an `UnknownOutcome` for that, and the runner, which owns the job's
state, decides.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import html
import importlib.util
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, urljoin, urlsplit

import httpx

from seedream_pipe.config import ApiSettings
from seedream_pipe.errors import (
    CONTROL_CHARS,
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
)
from seedream_pipe.pacing import Backoff, RequestBudget, Sleep, SubmitPacer, parse_retry_after
from seedream_pipe.paths import fresh_temp, removed_on_error
from seedream_pipe.redaction import holds_secret, redact
from seedream_pipe.transport import AiohttpWire, HttpxWire, NeverConnects, Wire
from seedream_pipe.words import option


def _spare_httpcore_a_failed_import() -> None:
    """httpcore runs `import sniffio` on every request; when sniffio is not installed, each of
    those failed imports scans sys.path again (measured: over half a millisecond of CPU per
    request, the largest cost of a job). Recording its absence once makes the import fail at
    once, exactly as before, for free."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


_spare_httpcore_a_failed_import()

#: Defaults in one place.
DEFAULT_TIMEOUT_S = 20.0  # one API call, answer read whole; a slower answer is treated as lost
DEFAULT_DOWNLOAD_TIMEOUT_S = 60.0  # between two chunks of a download
DOWNLOAD_DEADLINE_S = 600.0  # one download, whole: a server trickling a byte at a time is let go
DEFAULT_MAX_RETRIES = 5  # transient failures of one call before giving up on it
DEFAULT_MAX_RATE_LIMITED = 30  # 429s in a row for one call before giving up on it
#: The most a download may write. The official CLI allows 2 GiB, but an image here is at most
#: downloads.MAX_PIXELS (32 Mpx) to be kept: 128 MiB as raw RGBA, and a file twice that is no
#: image of ours (a server's gzip bomb is cut off here, not after 2 GiB of disk).
MAX_DOWNLOAD_BYTES = 256 * 1024**2
ALLOWED_DOWNLOAD_SUFFIXES = (".runcomfy.net", ".runcomfy.com")
MAX_REDIRECTS = 3
CHUNK = 256 * 1024
#: A download carries no Authorization header: file URLs are pre-signed.
#: Nor a compression: an image is compressed already, and a server's gzip would only make the
#: length it declares differ from the bytes written (and a small answer a huge file).
_DOWNLOAD_HEADERS = {"Accept": "*/*", "Accept-Encoding": "identity"}
#: Characters after which URL parsers disagree about the host (see download_allowed).
_AMBIGUOUS_URL_CHARS = re.compile(r"[\\\s\x00-\x1f\x7f]")
#: A host name, not an IP literal: only these may match a RunComfy suffix.
_DNS_NAME = re.compile(r"[a-z0-9_.-]+")
#: The longest request id kept. RunComfy's are UUIDs (36 characters).
MAX_REQUEST_ID_CHARS = 256
#: Answers to a submit that come from a gateway in front of the API, after the body went through:
#: it got no usable answer from the API (502) or gave up waiting for one (504), so the API may
#: have taken the job. A 500 or 503 is the API's own refusal: nothing was created.
GATEWAY_LOST_ANSWER = frozenset({502, 504})
#: Server text (reasons, errors) is kept to this length, after the token is scrubbed out.
MAX_REASON_CHARS = 300

#: Status words seen from the API (and the official CLI), mapped to the job states we keep.
STATUS_WORDS = {
    "in_queue": "in_queue",
    "queued": "in_queue",
    "pending": "in_queue",
    "in_progress": "in_progress",
    "running": "in_progress",
    "processing": "in_progress",
    "completed": "completed",
    "succeeded": "completed",
    "success": "completed",
    "failed": "failed",
    "error": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}
TERMINAL = frozenset({"completed", "failed", "cancelled"})
KNOWN_STATES = TERMINAL | {"in_queue", "in_progress"}



#: The job a call is made for: the runner sets it in each job's task, so that the client can
#: count retries per job (report.csv's `retries`) as well as in all.
current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_job", default=None)

@dataclass(frozen=True, slots=True)
class Submission:
    """The API accepted a body: the job exists (and will be billed)."""

    request_id: str
    status_url: str | None
    result_url: str | None
    cancel_url: str | None
    attempts: int = 1  # POSTs sent for it (retries after refusals included)


@dataclass(frozen=True, slots=True)
class UnknownOutcome:
    """The body went out and no usable answer came back: the job may or may not exist."""

    reason: str
    attempts: int = 1


_TAG = re.compile(r"<[^>]{0,1000}>")


def _plain_text(body: str) -> str:
    """A non-JSON answer as one line to show: a gateway's HTML error page ("<html><head><title>
    504 Gateway Time-out</title>...") as its words, any text with its line breaks folded."""
    text = body.strip()
    if text.startswith("<"):
        text = html.unescape(_TAG.sub(" ", text))
    return " ".join(text.split())


def _port_of(parts: SplitResult) -> int:
    """The port a URL connects to: the one it names, else its scheme's (raises ValueError for a
    port that is no number)."""
    return parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True, slots=True)
class AcceptedUnread:
    """A 2xx answer to a submit with no request id that can be read: the API accepted the body
    (the job exists and will be billed), and nothing can follow it. Sending it again would pay
    twice for sure, not maybe."""

    reason: str
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class JobStatus:
    status: str  # one of in_queue, in_progress, completed, failed, cancelled (or the raw word)
    queue_position: int | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class JobResult:
    status: str
    output_urls: list[str] = field(default_factory=list)
    error: str | None = None
    created_at: str | None = None
    finished_at: str | None = None
    queue_position: int | None = None  # (a result read of a job still queued may carry it)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    cancelled: bool  # the job will not run (and not be billed)
    status: str | None
    outcome: str | None


@dataclass(slots=True)
class _Tries:
    """How often one call has failed in a way worth asking again: transient, and 429."""

    failures: int = 0
    limited: int = 0


@dataclass(frozen=True, slots=True)
class FetchedFile:
    """A downloaded file at `path` (a temporary name: the caller checks it, then renames it)."""

    path: Path
    sha256: str
    bytes: int


def server_time(value: Any) -> str | None:
    """A timestamp from an answer as it is kept: the server's ISO 8601 text when it reads as a
    moment between 2000 and 2200 (UTC when it names no zone); None for anything else. It goes
    into the state and the report, so no free text from the server rides along in it."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        utc = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return text if 2000 <= utc.year < 2200 else None


def normalize_status(word: Any) -> str:
    text = str(word or "").strip().lower()
    return STATUS_WORDS.get(text, text or "unknown")


def collect_urls(output: Any) -> list[str]:
    """Every http(s) URL in a result's `output`, in order, once each (never elsewhere).

    Walked with a stack of its own, not by recursion: an answer nested a thousand deep would
    otherwise raise RecursionError here, and a set keeps 100,000 URLs from taking quadratic time.
    """
    found: dict[str, None] = {}  # (ordered, and checked in O(1))
    stack: list[Any] = [output]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if value.startswith(("http://", "https://")):
                found.setdefault(value)
        elif isinstance(value, dict):
            stack.extend(reversed(list(value.values())))
        elif isinstance(value, list):
            stack.extend(reversed(value))
    return list(found)


def _error_text(value: Any) -> str | None:
    """A readable reason from an `error` field (string or {"code", "message"} or anything)."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, dict):
        message = value.get("message") or value.get("detail") or value.get("error")
        code = value.get("code") or value.get("error_code")
        if message and code:
            return f"{message} ({code})"
        if message or code:
            return str(message or code)
        try:
            return json.dumps(value, ensure_ascii=False)
        except RecursionError:  # nested past Python's stack: json.loads got it, dumps cannot
            return "an error the API sent nested too deeply to show"
    return str(value)


class ModelApiClient:
    """One API account's client. Use as an async context manager (it closes what it opened).

    Counters (`self.counters`): http_requests, submits (POSTs sent), accepted (answered with a
    request id), polls, result_reads, cancels, downloads, retries, rate_limited, unknown_submits.
    """

    def __init__(
        self,
        api: ApiSettings,
        *,
        http: httpx.AsyncClient | None = None,
        pacer: SubmitPacer | None = None,
        budget: RequestBudget | None = None,
        backoff: Backoff | None = None,
        sleep: Sleep | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        download_timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S,
        download_deadline_s: float = DOWNLOAD_DEADLINE_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_rate_limited: int = DEFAULT_MAX_RATE_LIMITED,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.api = api
        # An injected httpx client is used as given (and closed by whoever made it); without
        # one, requests go through aiohttp's pool directly (see transport.py for why).
        # No pool limit (0): the runner's own slots bound the connections (one request at a time
        # per job in flight, plus submits), and a call must never wait for a connection behind
        # slow downloads: its deadline (timeout_s) counts from the moment it is asked.
        self._wire: Wire = HttpxWire(http) if http is not None else AiohttpWire(limit=0)
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._download_timeout = httpx.Timeout(download_timeout_s, connect=min(download_timeout_s, 10.0))
        self._call_deadline = timeout_s
        self._download_deadline = download_deadline_s
        self.pacer = pacer or SubmitPacer(60.0)
        self.budget = budget or RequestBudget(100.0)
        self.backoff = backoff or Backoff(rng=random.Random())
        self._sleep: Sleep = sleep or asyncio.sleep
        self.max_retries = max_retries
        self.max_rate_limited = max_rate_limited
        self.max_download_bytes = max_download_bytes
        self._headers = {"Authorization": f"Bearer {api.token}", "Accept": "application/json"}
        self._on_event = on_event
        self.counters: Counter[str] = Counter()
        self.retries_by_job: Counter[str] = Counter()  # the retries counted while `current_job` was set
        base = urlsplit(api.base_url)
        self._base_host = (base.hostname or "").lower()
        self._base_port = _port_of(base)
        self._base_origin = f"{base.scheme}://{base.netloc}"

    def __repr__(self) -> str:
        return f"<ModelApiClient {self.api.base_url}>"

    async def __aenter__(self) -> ModelApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._wire.aclose()

    # -- helpers --------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return redact(text, self.api.token)

    def _event(self, kind: str, **detail: Any) -> None:
        if self._on_event is not None:
            self._on_event(kind, detail)

    def _link(self, url: str | None) -> str | None:
        """An API-supplied link, unless it carries our token: a pre-signed file link or an API
        link never does, and keeping one would write the token into the state and the report.
        A token too short to be real (`RUNCOMFY_TOKEN=x` for the simulator) is not looked for:
        it would match by chance."""
        return None if url is None or holds_secret(url, self.api.token) else url

    def _api_url(self, given: str | None, path: str) -> str:
        """A URL the API handed us (if it points at the API's own origin), else one we build.

        Following an API-supplied link to another host would send it our token: never.
        """
        if given:
            try:
                parts = urlsplit(given)
            except ValueError:  # malformed ("http://[::1/..."): build our own
                return f"{self.api.base_url}{path}"
            if f"{parts.scheme}://{parts.netloc}" == self._base_origin:
                return given
        return f"{self.api.base_url}{path}"

    def _answer_error(self, response: Any, what: str) -> ApiError:
        """The exception for a non-2xx API answer (not 429, not 5xx: those are retried)."""
        reason = self._reason(response)
        code = response.status_code
        message = self._redact(f"{what}: HTTP {code}: {reason}")
        if code in (401, 403):
            # (the CLI says next which variable or file the token came from)
            which = option("the token", "the token (the one given in code, or RUNCOMFY_TOKEN)")
            return AuthError(
                self._redact(
                    f"{what}: the API refused the token (HTTP {code}: {reason}). "
                    f"Check {which} or sign in again with `runcomfy login`."
                ),
                status=code,
            )
        if code == 402:
            return CreditError(self._redact(f"{what}: out of credit (HTTP 402: {reason})"), status=code)
        if code == 404:
            return NotFound(message, status=code)
        if code in (400, 413, 422):
            return RequestRejected(message, status=code)
        return ApiError(message, status=code)

    def _said(self, text: str) -> str:
        """Server text as we keep it: the token scrubbed out *first*, then cut to a line's
        length (cut first, a token straddling the cut would survive in part). Only the head
        that can be shown is scrubbed, so a 4 MiB answer costs no more than a short one, with
        room past the cut for the token escaped (`&#x2d;`: 6 characters each) so that one begun
        before the cut is cut out as one. Longer escapes need no more room: `redact` cuts any
        run of MIN_PIECE_LEN of its characters wherever it stands: a cut leaves fewer showing."""
        head = text[: MAX_REASON_CHARS + 6 * len(self.api.token or "")]
        return self._redact(head)[:MAX_REASON_CHARS]

    def _error(self, value: Any) -> str | None:
        """A status or result answer's `error` field as we keep it, or None."""
        text = _error_text(value)
        return None if text is None else self._said(text)

    def _reason(self, response: Any) -> str:
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
            return self._said(_plain_text(response.text) or response.reason_phrase)
        if isinstance(data, dict):
            text = _error_text(data.get("error")) or _error_text(data.get("detail")) or _error_text(
                data.get("message")
            )
            if text is None and data.get("error_code"):
                text = _error_text({"code": data.get("error_code"), "message": data.get("error_message")})
            if text:
                return self._said(text)
        return self._said(json.dumps(data, ensure_ascii=False))

    def _json(self, response: Any) -> dict[str, Any] | None:
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
            return None  # (RecursionError: "[[[[..." nested past Python's stack)
        return data if isinstance(data, dict) else None

    async def _ask(self, method: str, url: str, headers: dict[str, str], content: bytes | None) -> Any:
        """One request, its answer read whole within the call's timeout. The wire's own timeouts
        are per read, so a server trickling a byte every few seconds would never trip them."""
        try:
            async with asyncio.timeout(self._call_deadline):
                return await self._wire.request(method, url, headers=headers, content=content, timeout=self._timeout)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no whole answer within {self._call_deadline:g} s") from None

    async def _retry_pause(self, attempt: int, what: str, reason: str) -> None:
        self.counters["retries"] += 1
        job = current_job.get()
        if job is not None:
            self.retries_by_job[job] += 1
        delay = self.backoff.delay(attempt)
        self._event("retry", what=what, reason=reason, delay_s=round(delay, 3), attempt=attempt + 1)
        await self._sleep(delay)

    def _describe(self, exc: Exception) -> str:
        """A network error as one line for people, with the token scrubbed out."""
        if isinstance(exc, httpx.ConnectError) and str(exc):
            return self._redact(str(exc))  # already a sentence ("cannot connect to ...")
        return self._redact(f"{type(exc).__name__}: {exc}".rstrip(": "))

    def _unless_for_good(self, exc: httpx.HTTPError, what: str) -> str:
        """The error said for people; a connection no retry can make (NeverConnects) ends the call."""
        said = self._describe(exc)
        if isinstance(exc, NeverConnects):
            raise NotRetried(f"{what}: {said} (not retried: it fails the same way every time)")
        return said

    async def _after_transient(
        self, failures: int, what: str, reason: str, *, status: int | None = None
    ) -> None:
        """The `failures`-th transient failure of a call: give up past max_retries, else back off."""
        if failures > self.max_retries:
            raise ServiceUnavailable(f"{what}: {reason} (after {failures} tries)", status=status)
        await self._retry_pause(failures - 1, what, reason)

    def _after_rate_limited(
        self,
        response: httpx.Response,
        what: str,
        limited: int,
        throttle: Callable[[float | None], float | None],
    ) -> None:
        """The `limited`-th 429 of a call: slow down whoever sends it, or give up past the limit."""
        self.counters["rate_limited"] += 1
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        pause = throttle(retry_after)
        detail: dict[str, Any] = {"retry_after_s": retry_after}
        if pause is not None:
            detail["pause_s"] = round(pause, 3)
        self._event("rate_limited", what=what, **detail)
        if limited > self.max_rate_limited:
            raise RateLimited(f"{what}: still rate limited after {limited} tries", status=429)

    async def _ask_again(
        self,
        response: httpx.Response,
        what: str,
        tries: _Tries,
        throttle: Callable[[float | None], float | None],
        *,
        retry_answers: bool = True,
    ) -> bool:
        """True when this answer means "ask again": a 429 or a 5xx, after its pause (or an error
        once past the limits). Any other non-2xx answer raises its ApiError; a 2xx is False.
        Without `retry_answers`, a 5xx raises ServiceUnavailable at once."""
        code = response.status_code
        if code == 429:
            tries.limited += 1
            self._after_rate_limited(response, what, tries.limited, throttle)
            return True
        if code >= 500:
            tries.failures += 1
            reason = f"HTTP {code}: {self._reason(response)}"
            if not retry_answers:
                raise ServiceUnavailable(f"{what}: {reason}", status=code)
            await self._after_transient(tries.failures, what, reason, status=code)
            return True
        if code >= 300:
            raise self._answer_error(response, what)
        return False

    # -- idempotent calls: status, result, cancel -------------------------------------------

    async def _call(
        self, method: str, url: str, what: str, counter: str, *, retry_answers: bool = True
    ) -> dict[str, Any]:
        """One idempotent API call with the request budget, 429 pauses and transient retries.

        `retry_answers=False`: a 5xx or an unreadable answer raises ServiceUnavailable at once,
        with the answer's status (network errors and 429s are still waited out and retried):
        for a caller to whom such an answer says something about the endpoint itself.
        """
        tries = _Tries()
        error: str | None  # a transient network error of this try, if any
        while True:
            await self.budget.acquire()
            self.counters["http_requests"] += 1
            self.counters[counter] += 1
            try:
                response = await self._ask(method, url, self._headers, None)
            except httpx.HTTPError as exc:
                error = self._unless_for_good(exc, what)
            else:
                error = None
            if error is not None:
                tries.failures += 1
                await self._after_transient(tries.failures, what, error)
                continue
            if await self._ask_again(response, what, tries, self.budget.rate_limited, retry_answers=retry_answers):
                continue
            data = self._json(response)
            if data is None:
                if not retry_answers:
                    raise ServiceUnavailable(f"{what}: the answer was not a JSON object", status=response.status_code)
                # an unreadable 200: the call did nothing we rely on, so asking again is safe
                tries.failures += 1
                await self._after_transient(
                    tries.failures, what, "the answer was not a JSON object", status=response.status_code
                )
                continue
            if data.get("error_code"):
                raise RequestRejected(self._redact(f"{what}: {self._reason(response)}"), status=response.status_code)
            return data

    async def status(self, request_id: str, status_url: str | None = None) -> JobStatus:
        url = self._api_url(status_url, f"/requests/{quote(request_id, safe='')}/status")
        data = await self._call("GET", url, f"status of {request_id}", "polls")
        return JobStatus(
            status=normalize_status(data.get("status")),
            queue_position=_queue_position(data),
            error=self._error(data.get("error")),
        )

    async def result(self, request_id: str, result_url: str | None = None) -> JobResult:
        return await self._result(request_id, result_url, "result_reads")

    async def look(self, request_id: str, result_url: str | None = None, *, retry_answers: bool = True) -> JobResult:
        """A poll by the result endpoint, counted as a poll. Where the result endpoint answers a
        job not yet finished with its state, the look that sees a job finish also reads what it
        made: one request fewer than a status poll followed by a result read. RunComfy documents
        the result endpoint for finished jobs only, so the runner checks that it does
        (`retry_answers=False` until then: a 5xx may be its way of saying "not finished")."""
        return await self._result(request_id, result_url, "polls", retry_answers=retry_answers)

    async def _result(
        self, request_id: str, result_url: str | None, counter: str, *, retry_answers: bool = True
    ) -> JobResult:
        url = self._api_url(result_url, f"/requests/{quote(request_id, safe='')}/result")
        data = await self._call("GET", url, f"result of {request_id}", counter, retry_answers=retry_answers)
        return JobResult(
            status=normalize_status(data.get("status")),
            output_urls=[url for url in collect_urls(data.get("output")) if self._link(url)],
            error=self._error(data.get("error")),
            created_at=server_time(data.get("created_at")),
            finished_at=server_time(data.get("finished_at")),
            queue_position=_queue_position(data),
        )

    async def cancel(self, request_id: str, cancel_url: str | None = None) -> CancelOutcome:
        url = self._api_url(cancel_url, f"/requests/{quote(request_id, safe='')}/cancel")
        data = await self._call("POST", url, f"cancel of {request_id}", "cancels")
        status = normalize_status(data.get("status")) if data.get("status") else None
        outcome = str(data["outcome"]).lower() if data.get("outcome") else None
        cancelled = status == "cancelled" or outcome in ("cancelled", "canceled")
        if outcome == "not_cancellable":
            cancelled = False
        return CancelOutcome(cancelled=cancelled, status=status, outcome=outcome)

    # -- submit -------------------------------------------------------------------------------

    async def submit(
        self,
        model: str,
        body: dict[str, Any],
        *,
        on_send: Callable[[], bool | None] | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> Submission | UnknownOutcome | AcceptedUnread | None:
        """POST a body. `on_send` runs right before each POST goes out (after pacing), so the
        caller can commit "submitting" first; if it returns False nothing is sent and None is
        returned (the caller stopped submitting while this one waited for its turn).
        `on_refused` runs when an answer proves nothing was created, before the wait for the
        next try: the job is back to waiting for its turn (and may be stopped there).

        Refusals that prove nothing was created (429, 500, 503, a connection that never opened)
        are retried here; what might have created a job is returned as `UnknownOutcome` (a 502 or
        504 too: a gateway that lost or gave up waiting for the API's answer), and a 2xx answer
        with no request id to read as `AcceptedUnread`.
        """
        url = f"{self.api.base_url}/models/{quote(model, safe='/')}"  # (recipes check it; a notebook may not)
        what = f"submit to {model}"
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {**self._headers, "Content-Type": "application/json"}
        tries = _Tries()
        attempts = 0
        error: str | None  # a network error that proves the body never left, if any
        while True:
            await self.pacer.acquire()
            if on_send is not None and on_send() is False:
                return None
            attempts += 1
            self.counters["http_requests"] += 1
            self.counters["submits"] += 1
            try:
                response = await self._ask("POST", url, headers, payload)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # no connection was made: the body never left, so sending it again is safe
                error = self._unless_for_good(exc, what)
            except httpx.HTTPError as exc:
                self.counters["unknown_submits"] += 1
                reason = self._describe(exc)
                return UnknownOutcome(f"no answer to the submit ({reason})", attempts)
            else:
                error = None
            if error is not None:
                if on_refused is not None:
                    on_refused()
                tries.failures += 1
                await self._after_transient(tries.failures, what, error)
                continue
            if response.status_code in GATEWAY_LOST_ANSWER:
                # the body went through a gateway to the API, which may have taken it
                self.counters["unknown_submits"] += 1
                reason = f"HTTP {response.status_code} from a gateway: {self._reason(response)}"
                return UnknownOutcome(f"no answer to the submit ({reason})", attempts)
            if on_refused is not None and (response.status_code == 429 or response.status_code >= 500):
                on_refused()  # (429, 500, 503: the API's own refusals, asked again below)
            if await self._ask_again(response, what, tries, self.pacer.rate_limited):
                continue
            data = self._json(response)
            accepted = f"the API accepted the submit (HTTP {response.status_code}) but its answer"
            if data is None:
                self.counters["accepted"] += 1  # (a 2xx: the job exists, though we cannot follow it)
                return AcceptedUnread(f"{accepted} was not readable JSON", attempts)
            if data.get("error_code"):
                raise RequestRejected(self._redact(f"{what}: {self._reason(response)}"), status=response.status_code)
            request_id = data.get("request_id")
            if isinstance(request_id, int) and not isinstance(request_id, bool):
                request_id = str(request_id)  # (an id is a name: a number names a job as well)
            self.counters["accepted"] += 1  # (a job exists on the server, kept or not)
            if not isinstance(request_id, str) or not request_id:
                return AcceptedUnread(f"{accepted} carried no request_id", attempts)
            if (
                len(request_id) > MAX_REQUEST_ID_CHARS
                or CONTROL_CHARS.search(request_id)
                or request_id in (".", "..")
                or holds_secret(request_id, self.api.token)
            ):
                # It goes into the state, the report and every message about the job (and, quoted,
                # into URLs, where "." and ".." would be read as the path's own dots): an id holding
                # our token, a control character or a page of text is not kept. Any other id is,
                # whatever its characters.
                raise UnusableAnswer(
                    f"{what}: the API answered with a request id seedream-pipe will not keep "
                    f"({len(request_id)} characters: over {MAX_REQUEST_ID_CHARS}, a control character, "
                    "a dot path or the token); the job may exist on the server"
                )
            self.pacer.accepted()
            return Submission(
                request_id=request_id,
                status_url=self._link(_str_or_none(data.get("status_url"))),
                result_url=self._link(_str_or_none(data.get("result_url"))),
                cancel_url=self._link(_str_or_none(data.get("cancel_url"))),
                attempts=attempts,
            )

    # -- downloads ------------------------------------------------------------------------------

    def download_allowed(self, url: str) -> bool:
        """Whether a file may be fetched from `url` (see `download_refusal`)."""
        return self.download_refusal(url) is None

    def download_refusal(self, url: str) -> str | None:
        """Why a file is not fetched from `url`, in words, or None when it may be.

        Only https/http from *.runcomfy.net or *.runcomfy.com on the web's own ports, or from
        the API's own host and port: an answer cannot point a download at another service of
        the API's machine (say, a database on 127.0.0.1:5432).

        A URL with a backslash, white space or a control character is refused outright: parsers
        disagree about where its host ends (`https://evil.com\\@x.runcomfy.net/` is x.runcomfy.net
        to urlsplit and evil.com to others), so no host check on it can be trusted. So is one
        with a user name or password, which would be sent along (as Basic auth) to the host.
        """
        if _AMBIGUOUS_URL_CHARS.search(url):
            return "a malformed URL (backslash, space or control character)"
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            port = _port_of(parts)
        except ValueError:  # "http://[::1/x", a netloc NFKC would change, a port that is no number
            return "a malformed URL (its host cannot be read)"
        if "@" in parts.netloc:
            return "a URL with a user name or password in it"
        if parts.scheme not in ("http", "https") or not host:
            return f"from {host or url}: not a RunComfy host"
        if host == self._base_host:
            if port == self._base_port:
                return None
            return f"from {host}:{port}: the API's host, but not its port ({self._base_port})"
        if not _DNS_NAME.fullmatch(host) or not any(
            host.endswith(suffix) or host == suffix[1:] for suffix in ALLOWED_DOWNLOAD_SUFFIXES
        ):  # (`[::1%25.runcomfy.net]` ends in the suffix too: an IPv6 literal with a zone id)
            return f"from {host}: not a RunComfy host"
        if port not in (80, 443):
            return f"from {host}:{port}: a RunComfy host, but not on a web port (80, 443)"
        return None

    async def fetch(self, url: str, dest_dir: Path) -> FetchedFile:
        """Stream a file URL (no Authorization header) to a temporary file in `dest_dir`.

        One attempt: the caller decides about retries (a fresh URL may be needed first).
        Raises NotFound (404), ApiError (refused host, other 4xx, too large),
        ServiceUnavailable (5xx, network, cut short, or not done within the download deadline:
        the wire's timeouts are per read, which a trickling server never trips). A partial file
        is always deleted.
        """
        try:
            async with asyncio.timeout(self._download_deadline):
                return await self._fetch(url, dest_dir)
        except TimeoutError:
            raise ServiceUnavailable(f"download: not finished within {self._download_deadline:g} s") from None

    async def _fetch(self, url: str, dest_dir: Path) -> FetchedFile:
        for _hop in range(MAX_REDIRECTS + 1):
            refusal = self.download_refusal(url)
            if refusal is not None:
                raise DownloadRefused(self._redact(f"refusing to download {refusal}"))
            await self.budget.acquire()
            self.counters["http_requests"] += 1
            self.counters["downloads"] += 1
            tmp: Path | None = None
            try:
                async with self._wire.stream(
                    "GET", url, headers=_DOWNLOAD_HEADERS, timeout=self._download_timeout
                ) as response:
                    code = response.status_code
                    if code in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                        try:
                            url = urljoin(url, response.headers["Location"])
                        except ValueError:
                            raise DownloadRefused("refusing to follow a malformed redirect") from None
                        continue
                    if code == 429:
                        self.counters["rate_limited"] += 1
                        self.budget.rate_limited(parse_retry_after(response.headers.get("Retry-After")))
                        raise ServiceUnavailable("download: rate limited (HTTP 429)", status=code)
                    if code >= 500:
                        raise ServiceUnavailable(f"download: HTTP {code}", status=code)
                    if code == 404:
                        raise NotFound("download: the file is not there (HTTP 404)", status=code)
                    if code >= 300:
                        await response.aread()
                        raise ApiError(self._redact(f"download: HTTP {code}: {self._reason(response)}"), status=code)
                    declared = response.headers.get("Content-Length")
                    if response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
                        declared = None  # (compressed all the same: that length is not of the bytes written)
                    if declared and declared.isdigit() and int(declared) > self.max_download_bytes:
                        raise ApiError(f"download: the file is {int(declared)} bytes, over the cap")
                    digest = hashlib.sha256()
                    size = 0
                    tmp, out = fresh_temp(dest_dir, ".download-", ".part")
                    with removed_on_error(tmp), out:
                        async for chunk in response.aiter_bytes(CHUNK):
                            size += len(chunk)
                            if size > self.max_download_bytes:
                                raise ApiError(f"download: over the cap of {self.max_download_bytes} bytes")
                            digest.update(chunk)
                            out.write(chunk)
                    if declared and declared.isdigit() and int(declared) != size:
                        tmp.unlink(missing_ok=True)
                        raise ServiceUnavailable(f"download: cut short ({size} of {declared} bytes)")
                    return FetchedFile(path=tmp, sha256=digest.hexdigest(), bytes=size)
            except httpx.HTTPError as exc:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                raise ServiceUnavailable(
                    self._redact(f"download: {type(exc).__name__}: {exc}".rstrip(": "))
                ) from None
        raise ApiError("download: too many redirects")


def _queue_position(data: Mapping[str, Any]) -> int | None:
    """A status or result answer's queue position, when it gives a whole number (not a bool)."""
    position = data.get("queue_position")
    return position if isinstance(position, int) and not isinstance(position, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
