"""A fake clock for timing code (pacing, retries): tests move time instead of sleeping."""

from __future__ import annotations


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
