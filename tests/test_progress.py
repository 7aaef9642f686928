"""What a run shows while it goes, with text from the API that is not ours to trust."""

from __future__ import annotations

import io
import json

from seedream_pipe.progress import LogProgress, RichProgress

HOSTILE = "boom\x1b[2J\x1b]0;owned\x07 [/] [bold]x[/bold] [link=file:///etc/passwd]y[/link] :skull:\r"


def test_log_lines_show_api_text_with_control_characters_escaped() -> None:
    out = io.StringIO()
    progress = LogProgress(out)
    progress.event("run_started", {"total": 1, "todo": 1, "actions_text": "1 to submit", "out_dir": "o"})
    progress.event("job_state", {"job_id": "j", "index": 0, "state": "failed", "error": HOSTILE})
    progress.event("message", {"text": f"stopping submits: {HOSTILE}"})
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert text.count("boom\\x1b[2J\\x1b]0;owned\\x07 [/] [bold]x[/bold]") == 2


def test_the_live_bar_prints_api_text_as_text_not_markup() -> None:
    progress = RichProgress()
    sink = io.StringIO()
    progress.console.file = sink  # a plain file: no live redraws, no colour codes
    progress.event("run_started", {"total": 1, "todo": 1})
    # "[/]" alone would make rich raise a MarkupError mid-run if the text were read as markup
    progress.event("job_state", {"job_id": "j", "index": 0, "state": "failed", "error": HOSTILE})
    progress.event("message", {"text": HOSTILE})
    progress.event("run_finished", {})
    text = " ".join(sink.getvalue().split())  # (rich wraps long lines)
    assert "\x1b[2J" not in text and "\x07" not in text
    assert text.count("[/] [bold]x[/bold] [link=file:///etc/passwd]y[/link] :skull:") == 2
    assert "failed: job 0: boom\\x1b[2J" in text


def test_the_live_bar_says_what_comes_before_it_starts() -> None:
    progress = RichProgress()
    sink = io.StringIO()
    progress.console.file = sink
    # (a folder taken over, the plan's warnings: said before the run_started that starts the bar)
    progress.event("message", {"text": "warning: o held recipe 'c'; this run of 'other' takes it over"})
    progress.event("run_started", {"total": 1, "todo": 0})
    progress.event("run_finished", {})
    assert "warning: o held recipe 'c'; this run of 'other' takes it over" in sink.getvalue()


def test_every_sink_keeps_the_token_out_whatever_reaches_it() -> None:
    secret = "tok-SECRET-0123456789"
    events = [
        ("run_started", {"total": 1, "todo": 1, "actions_text": "1 to submit", "out_dir": "o"}),
        ("retry", {"what": f"status of r-{secret}", "reason": "HTTP 503", "delay_s": 0.1}),
        ("job_state", {"job_id": "j", "index": 0, "state": "failed", "error": f"echo {secret}"}),
        ("message", {"text": f"lost: {secret}"}),
        ("run_finished", {}),
    ]
    out = io.StringIO()
    log = LogProgress(out, secret=secret)
    rich = RichProgress(secret=secret)
    rich.console.file = sink = io.StringIO()
    for kind, detail in events:
        log.event(kind, detail)
        rich.event(kind, detail)
    assert secret not in out.getvalue() and out.getvalue().count("***") == 3
    assert secret not in sink.getvalue() and "***" in sink.getvalue()


def test_a_json_line_holding_the_token_in_another_encoding_stays_one_json_object() -> None:
    from seedream_pipe.progress import JsonProgress

    # (an encoding redact withholds rather than cuts: a character of two bytes escaped byte by byte)
    secret = "clé-secrète-123"
    out = io.StringIO()
    JsonProgress(out, secret=secret).event("message", {"text": "seen cl%C3%A9-secr%C3%A8te-1"})
    event = json.loads(out.getvalue())
    assert event["event"] == "message" and "withheld" in event and "secr" not in out.getvalue()


def test_a_zero_second_pause_is_said_as_zero() -> None:
    out = io.StringIO()
    LogProgress(out).event("rate_limited", {"retry_after_s": 0.0, "pause_s": None})
    assert out.getvalue() == "rate limited (429): pausing 0.0 s\n"


class _GonePipe(io.StringIO):
    """A stream whose reader went away after `keep` lines: `run --json | head -3`."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes > self.keep:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_sink_whose_reader_went_away_goes_quiet_instead_of_failing_the_run() -> None:
    # The BrokenPipeError of `run --json | head -3` came out of the sink into the job's task
    # and failed the run (exit 74) with POSTs on the wire: those jobs stayed `submitting`
    # and the next run paid for them again. The run must go on as with --quiet.
    from seedream_pipe.progress import JsonProgress

    for sink_type in (JsonProgress, LogProgress):
        stream = _GonePipe(keep=1)
        sink = sink_type(stream)
        for n in range(4):
            sink.event("message", {"text": f"line {n}"})  # never raises
        assert stream.getvalue().count("\n") == 1 and "line 0" in stream.getvalue()
        assert stream.writes == 2  # silenced after the first failure, not trying every line
