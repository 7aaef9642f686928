"""Ctrl-C and SIGTERM during a run: the presses counted (the first winds the run down, the
second stops it at once), and the handlers installed on the run's event loop, then given back."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any

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


class SignalHandlers:
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
