"""What the user sees while a run goes: a live bar on a terminal, plain lines otherwise,
JSON lines with `--json`, nothing with `--quiet`.

The runner reports through the small `Progress` interface (`start`, `event`, `finish`); it never
prints. Every text passed here was already scrubbed of the token by the client, and the JSON
sink redacts again as a last line of defence. Error texts come from the API: the terminal sinks
show their control characters escaped and never read them as rich markup.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Protocol

from seedream_pipe.errors import printable
from seedream_pipe.paths import send_to_devnull
from seedream_pipe.redaction import WITHHELD, redact
from seedream_pipe.words import counted

#: Events the runner sends (kind -> meaning):
#: run_started, job_state (a job changed state), retry, rate_limited, interrupt, cancel,
#: message (a sentence for people), run_finished.


class Progress(Protocol):
    """Where a run's events go. A sink may also have `close()`: the run calls it when it ends,
    however it ends (a run stopped by an exception sends no run_finished)."""

    def event(self, kind: str, detail: dict[str, Any]) -> None: ...


class Tally:
    """Counts shared by every sink: done, failed, in flight, 429s, retries."""

    def __init__(self) -> None:
        self.total = 0
        self.todo = 0
        self.done = 0
        self.failed = 0
        self.in_flight = 0
        self.rate_limited = 0
        self.retries = 0
        self.started = time.monotonic()

    def update(self, kind: str, detail: dict[str, Any]) -> None:
        if kind == "run_started":
            self.total = int(detail.get("total", 0))
            self.todo = int(detail.get("todo", 0))
            self.started = time.monotonic()
            # A sink kept for another run (a notebook's `progress=` in a variable) counts this
            # one from nothing: it said "9/8 done" at the second run's first image.
            self.done = self.failed = self.in_flight = self.rate_limited = self.retries = 0
        elif kind == "job_state":
            state = detail.get("state")
            if state == "downloaded":
                self.done += 1
            elif state == "failed":
                self.failed += 1
            if state == "submitted":
                self.in_flight += 1
            if detail.get("left_flight"):
                self.in_flight = max(0, self.in_flight - 1)
        elif kind == "rate_limited":
            self.rate_limited += 1
        elif kind == "retry":
            self.retries += 1

    def rate_per_min(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed * 60 if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        remaining = self.todo - self.done - self.failed
        rate = self.rate_per_min() / 60
        return remaining / rate if rate > 0 and remaining > 0 else None


class _Lines:
    """Writes lines to a stream until the stream fails: a reader that went away (`run --json |
    head -3` closes the pipe), a log file on a full disk. The run must not stop for it: an
    exception out of a progress sink fails the job's task, and the run with it, cutting short
    POSTs on the wire and downloads. So a failed write silences the sink for the rest of the
    run, which goes on as with --quiet; its end (exit code, state, outputs) is as ever."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._gone = False

    def _write(self, line: str) -> None:
        if self._gone:
            return
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # (ValueError: a stream closed under it)
            self._gone = True
            if self._stream in (sys.stdout, sys.stderr):
                send_to_devnull(self._stream)  # (what is left in its buffer would fail at exit)


class QuietProgress:
    """Nothing while running (`--quiet`)."""

    def event(self, kind: str, detail: dict[str, Any]) -> None:
        return None


class JsonProgress(_Lines):
    """One JSON object per line: {"event": kind, "t": unix seconds, ...detail}."""

    def __init__(self, stream: IO[str] | None = None, *, secret: str | None = None) -> None:
        super().__init__(stream or sys.stdout)
        self._secret = secret

    def event(self, kind: str, detail: dict[str, Any]) -> None:
        t = round(time.time(), 3)
        line = redact(json.dumps({"event": kind, "t": t, **detail}, default=str), self._secret)
        if line == WITHHELD:  # (still one JSON object: a script reading the lines goes on)
            line = json.dumps({"event": kind, "t": t, "withheld": WITHHELD})
        self._write(line)


class LogProgress(_Lines):
    """Plain lines for logs and pipes: failures, retries, 429s and a line every few jobs."""

    def __init__(self, stream: IO[str] | None = None, *, every: int = 10, secret: str | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self.tally = Tally()
        self._every = every
        self._secret = secret

    def _say(self, text: str) -> None:
        # (the client scrubs what it passes on; this is the last look before a terminal or a log)
        self._write(printable(redact(text, self._secret)))

    def event(self, kind: str, detail: dict[str, Any]) -> None:
        self.tally.update(kind, detail)
        t = self.tally
        if kind == "run_started":
            self._say(
                f"run: {counted(t.total, 'job')} in the plan, {t.todo} to do "
                f"({detail.get('actions_text', '')}) -> {detail.get('out_dir')}"
            )
        elif kind == "job_state":
            state = detail.get("state")
            if state == "failed":
                self._say(f"failed: job {detail.get('index')} ({detail.get('job_id')}): {detail.get('error')}")
            elif state == "downloaded" and (t.done % self._every == 0 or t.done + t.failed >= t.todo):
                self._say(f"{t.done}/{t.todo} done, {t.failed} failed, {t.in_flight} in flight")
        elif kind == "rate_limited":
            pause = next((detail[k] for k in ("pause_s", "retry_after_s") if detail.get(k) is not None), "?")
            self._say(f"rate limited (429): pausing {pause} s")  # (0 is a pause too, not "?")
        elif kind == "retry":
            self._say(f"retry in {detail.get('delay_s')} s: {detail.get('what')}: {detail.get('reason')}")
        elif kind in ("message", "interrupt"):
            self._say(str(detail.get("text", "")))


class RichProgress:
    """A live bar on a terminal: done/failed/in flight, rate, ETA, 429s and retries."""

    def __init__(self, *, secret: str | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        self._text = Text  # API text goes in as Text: never parsed as markup or :emoji: codes

        self.console = Console(stderr=True)
        self.tally = Tally()
        self._secret = secret
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task: Any = None

    def _info(self) -> str:
        t = self.tally
        return (
            f"failed {t.failed} · in flight {t.in_flight} · {t.rate_per_min():.1f}/min"
            f" · 429s {t.rate_limited} · retries {t.retries}"
        )

    def event(self, kind: str, detail: dict[str, Any]) -> None:
        self.tally.update(kind, detail)
        t = self.tally
        if kind == "run_started":
            if self._task is not None:  # (an earlier run's bar: already on screen, not drawn again)
                self._bar.remove_task(self._task)
            self._bar.start()
            self._task = self._bar.add_task("run", total=max(1, t.todo), info=self._info())
            return
        if kind in ("message", "interrupt"):
            # (before the bar too: a folder taken over, the plan's warnings are said before it starts)
            text = printable(redact(str(detail.get("text", "")), self._secret))
            self.console.print(self._text(text), highlight=False)
        if self._task is None:
            return
        if kind == "job_state" and detail.get("state") == "failed":
            reason = printable(redact(f": job {detail.get('index')}: {detail.get('error')}", self._secret))
            self.console.print(self._text.assemble(("failed", "red"), reason), highlight=False)
        if kind == "run_finished":
            self._bar.update(self._task, completed=t.done + t.failed, info=self._info())
            self._bar.stop()
            return
        self._bar.update(self._task, completed=t.done + t.failed, info=self._info())

    def close(self) -> None:
        """Stop the bar and its refresh thread, if the run did not (it was cancelled); the
        bar stays on screen as it last was."""
        if self._bar.live.is_started:
            self._bar.stop()


def make_progress(*, quiet: bool = False, json_lines: bool = False, secret: str | None = None) -> Progress:
    """The right sink for where output goes."""
    if json_lines:
        return JsonProgress(secret=secret)
    if quiet:
        return QuietProgress()
    if sys.stderr.isatty():
        return RichProgress(secret=secret)
    return LogProgress(secret=secret)
