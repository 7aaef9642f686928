"""Fakes for tests: a clock that tests move instead of sleeping, and a progress that keeps what a run said."""

from __future__ import annotations

from typing import Any


class FakeTime:
    """A clock (call it) with an async `sleep` that only moves the clock and records the wait."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Heard:
    """A progress that keeps every event a run gives it, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def event(self, kind: str, detail: dict[str, Any]) -> None:
        self.events.append((kind, detail))

    @property
    def started(self) -> dict[str, Any]:
        """The run's start event (its actions, what it has to do)."""
        return next(detail for kind, detail in self.events if kind == "run_started")

    def said(self) -> str:
        """Everything the events said, as one text."""
        return " ".join(str(detail) for _, detail in self.events)
