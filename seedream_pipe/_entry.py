"""The `seedream-pipe` command's entry point: as little as possible imported before it runs.

The console script imports its target before calling it; pointed at `seedream_pipe.cli`, a
Ctrl-C while that loads (click, the commands) ended in a KeyboardInterrupt traceback. Here the
load happens inside a function that can say "Interrupted." instead.
"""

from __future__ import annotations

import sys

#: As the CLI exits on Ctrl-C (errors.EX_INTERRUPTED; not imported here, to stay light).
_INTERRUPTED = 130


def main() -> None:
    try:
        from seedream_pipe.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        raise SystemExit(_INTERRUPTED) from None
    run()
