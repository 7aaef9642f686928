"""Seeded dice: whether a fault strikes this request, reproducibly.

Each kind of draw has its own `random.Random`, seeded from (seed, kind). So the outcome of the
n-th draw of one kind depends only on the seed and n: turning another fault on or off, or
changing its rate, never shifts this one's sequence. A string seed is hashed by `random` with
SHA-512, so the sequences are the same on every machine and Python run (no PYTHONHASHSEED).
"""

from __future__ import annotations

import random


class Dice:
    """One seeded random stream per named kind of draw."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._streams: dict[str, random.Random] = {}

    def reseed(self, seed: int) -> None:
        """Start every stream again from a new seed."""
        self._seed = seed
        self._streams.clear()

    def stream(self, kind: str) -> random.Random:
        rng = self._streams.get(kind)
        if rng is None:
            rng = self._streams[kind] = random.Random(f"seedream-sim:{self._seed}:{kind}")
        return rng

    def hit(self, kind: str, rate: float) -> bool:
        """True with probability `rate`. A rate of 0 draws nothing (and so shifts nothing)."""
        if rate <= 0.0:
            return False
        return self.stream(kind).random() < rate

    def uniform(self, kind: str, low: float, high: float) -> float:
        return self.stream(kind).uniform(low, high)

    def choice(self, kind: str, options: tuple[int, ...]) -> int:
        return options[self.stream(kind).randrange(len(options))]
