"""The one exception tree of seedream-pipe, and the exit code of each branch.

    SeedreamPipeError                 1   something went wrong (base class)
    ├── UsageError                   64   bad command-line arguments or combination of options
    ├── FolderBusy                   75   the output folder is in use by another run: try later
    ├── RecipeError                  65   a recipe that cannot be loaded, validated or planned;
    │                                     carries one Problem per thing wrong
    ├── OutputError                  73   the output folder cannot be created or written
    ├── StateError                   74   the state database is unreadable or from a newer version
    ├── NothingToShow                66   an output folder with no run in it (sheet/report/gallery)
    ├── ApiError                          an answer of the RunComfy Model API (or the simulator)
    │   ├── AuthError                77   401/403, or no token at all: nothing will succeed
    │   ├── CreditError              75   402: the account is out of credit
    │   ├── RateLimited              75   429 after every retry
    │   ├── ServiceUnavailable       69   5xx / network errors after every retry
    │   │   └── NotRetried           69   a failure every try would repeat (https to a plain
    │   │                                 http port, an untrusted certificate): given up at once
    │   ├── UnusableAnswer           69   an accepted submit whose answer cannot be kept (its
    │   │                                 request id holds the token, say): the API is broken
    │   ├── RequestRejected          65   400/422: the body does not fit the model's schema
    │   └── NotFound                 65   404: unknown model or request id

    outside the tree: OSError        74   the file system refused (read-only, disk full, ...)
                      KeyboardInterrupt  130   Ctrl-C; state was committed first
                      any other      70   a bug in seedream-pipe

No exception stands for an interrupt: a run interrupted with `handle_signals=True` (as the CLI
runs) returns its RunResult, exit_code 130, and one without it is cancelled (CancelledError)
or interrupted (KeyboardInterrupt) as any Python code is.

The CLI maps an exception to its exit code in one place (`seedream_pipe.cli.main`) by reading
`exit_code`. Library code raises the most specific class, chaining the low-level cause with
`raise ... from exc`. Messages never contain the API token: `seedream_pipe.redaction.redact()`
scrubs any text that might have echoed it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# sysexits(3), as the official runcomfy CLI uses them
EX_OK = 0
EX_SOME_FAILED = 1
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70  # an error seedream-pipe did not expect: a bug, said as such rather than as "some jobs failed"
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_INTERRUPTED = 130
EX_PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell shows for `yes | head`


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a recipe, located as precisely as we can."""

    file: str
    message: str
    key_path: str = ""  # e.g. "vars.mood[1]" or "" for the whole file
    line: int | None = None  # 1-based, where YAML gives one
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.key_path:
            where += f": {self.key_path}"
        return f"{where}: {self.message}"


class SeedreamPipeError(Exception):
    """Base class of every error seedream-pipe raises on purpose."""

    exit_code: int = EX_SOME_FAILED


class UsageError(SeedreamPipeError):
    """Options that contradict each other or name something that does not exist."""

    exit_code = EX_USAGE


class FolderBusy(SeedreamPipeError):
    """The output folder is in use by another run: a moment's wait, not a mistake (75, as
    `make -j` running two targets on one folder would want to try again later)."""

    exit_code = EX_TEMPFAIL


class RecipeError(SeedreamPipeError):
    """A recipe that cannot be loaded, validated or expanded. Holds every problem found."""

    exit_code = EX_DATAERR

    def __init__(self, problems: list[Problem] | Problem) -> None:
        self.problems: list[Problem] = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[type[RecipeError], tuple[list[Problem]], dict[str, Any]]:
        # Made again from its problems: the default, from args, gave the message text as the
        # problems, one per character (pickled to or from a worker process, copy.copy).
        return type(self), (self.problems,), self.__dict__


class OutputError(SeedreamPipeError):
    """The output folder (or a file in it) cannot be created or written."""

    exit_code = EX_CANTCREAT


class StateError(SeedreamPipeError):
    """The state database is corrupt, locked or written by a newer seedream-pipe."""

    exit_code = EX_IOERR


class NothingToShow(SeedreamPipeError):
    """An output folder holding no run: nothing to lay out or report."""

    exit_code = EX_NOINPUT


class ApiError(SeedreamPipeError):
    """An answer from the Model API that the client could not turn into progress."""

    exit_code = EX_UNAVAILABLE

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class AuthError(ApiError):
    """401/403, or no token: stop the whole run at once."""

    exit_code = EX_NOPERM


class CreditError(ApiError):
    """402: stop submitting, finish what is in flight."""

    exit_code = EX_TEMPFAIL


class RateLimited(ApiError):
    """429 that outlasted every retry."""

    exit_code = EX_TEMPFAIL


class ServiceUnavailable(ApiError):
    """5xx, timeouts or dropped connections that outlasted every retry."""

    exit_code = EX_UNAVAILABLE


class NotRetried(ServiceUnavailable):
    """A failure that every try would repeat (https sent to a plain-http port, a certificate this
    machine does not trust): given up at once, and something must change before a run gets on."""


class DownloadRefused(ApiError):
    """A file URL seedream-pipe will not fetch: malformed, or not RunComfy's nor the API's own
    place. Fetching the same URL again cannot help; a freshly read one may."""


class UnusableAnswer(ApiError):
    """A submit the API accepted (the job may be billed) whose answer cannot be kept: the run
    stops submitting, since the next answer will be the same."""

    exit_code = EX_UNAVAILABLE


class RequestRejected(ApiError):
    """400/422: the server refused this body; the job fails with the server's reason."""

    exit_code = EX_DATAERR


class NotFound(ApiError):
    """404: unknown model id or request id."""

    exit_code = EX_DATAERR


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an exception (the one place the CLI asks)."""
    if isinstance(exc, SeedreamPipeError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EX_INTERRUPTED
    if isinstance(exc, OSError):
        return EX_IOERR
    # Not 1: a make target or script reads 1 as "some jobs failed", and a bug is not that.
    return EX_SOFTWARE


#: C0 controls, DEL and C1 controls (Unicode category Cc): what a terminal acts on instead of
#: showing, and what no HTTP header may carry.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


#: The invisible marks that reorder text (bidirectional overrides and isolates): shown as they
#: are, "\u202egnp.exe" reads as "exe.png".
BIDI_MARKS = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: What printable() escapes: both of the above.
UNSHOWN = re.compile(f"{CONTROL_CHARS.pattern}|{BIDI_MARKS.pattern}")


def visible_marks(text: str) -> str:
    """`text` with its bidirectional marks written out (`\\u202e`), for pages and files read by
    people: "\u202egnp.exe" would show as "exe.png". Nothing else is changed."""
    return BIDI_MARKS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """Text from a recipe or a server, safe to print on a terminal: `\x1b` -> `\\x1b`, `\r` -> `\\r`.

    A recipe value or an API error is not ours: printed raw, an escape sequence in it could
    recolour, clear or retitle the user's terminal, and `\r` could overwrite what came before.
    Only for what people read; request bodies, files and --format csv keep the text as it is.
    """

    def escaped(match: re.Match[str]) -> str:
        char = match.group()
        return char if keep_newlines and char == "\n" else char.encode("unicode_escape").decode("ascii")

    return UNSHOWN.sub(escaped, text)
