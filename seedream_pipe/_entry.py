"""The `seedream-pipe` command's entry point: as little as possible imported before it runs.

The console script imports its target before calling it; pointed at `seedream_pipe.cli`, a
Ctrl-C while that loads (click, the commands) ended in a KeyboardInterrupt traceback. Here the
load happens inside a function that can say "Interrupted." instead.

SIGTERM is taken as Ctrl-C from the first instant, as the README's exit codes say (130): until a
run installs its own handlers (which wind it down), its default killed the process with 143 and
no word, half a second into `run` and in every other command.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from types import FrameType

#: As the CLI exits on Ctrl-C (errors.EX_INTERRUPTED; not imported here, to stay light).
_INTERRUPTED = 130


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _exit_as_decided(code: int) -> None:
    """From here on a Ctrl-C or SIGTERM ends the process with `code`, the outcome of what was
    done (here, in the process's own entry: a notebook or a test calling the CLI in-process
    keeps its own handlers). While Python wound down, one raised a KeyboardInterrupt in its thread shutdown
    (printed as a traceback, "Exception ignored in ... _shutdown"), or, once Python had put
    back the system's own handlers, killed the process: a caller saw -2 where a run had ended
    0, 1 or 77."""

    def now(signum: int, frame: FrameType | None) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    def ignore() -> None:
        # (Python puts back the system's handler for any signal it handles as it finalizes,
        # after the atexit callbacks; one it ignores stays ignored to the end)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)

    if threading.current_thread() is threading.main_thread():  # (signals go to the main thread)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, now)
        atexit.register(ignore)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from seedream_pipe.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        raise SystemExit(_INTERRUPTED) from None
    try:
        run()
    except SystemExit as done:
        code = done.code
        _exit_as_decided(code if isinstance(code, int) else 0 if code is None else 1)
        raise
