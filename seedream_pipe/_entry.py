"""The `seedream-pipe` command's entry point: as little as possible imported before it runs.

The console script imports its target before calling it; pointed at `seedream_pipe.cli`, a
Ctrl-C while that loads (click, the commands) ended in a KeyboardInterrupt traceback. Here the
load happens inside a function that can say "Interrupted." instead.

SIGTERM is taken as Ctrl-C from the first instant, as the README's exit codes say (130): until a
run installs its own handlers (which wind it down), its default killed the process with 143 and
no word, half a second into `run` and in every other command.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

#: As the CLI exits on Ctrl-C (errors.EX_INTERRUPTED; not imported here, to stay light).
_INTERRUPTED = 130


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from seedream_pipe.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        raise SystemExit(_INTERRUPTED) from None
    run()
