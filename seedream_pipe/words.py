"""How counts are said to people: one place, so no message says "1 jobs" again."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 job`, `2 jobs`, `10,000 jobs` (`plural` when the noun takes no plain -s)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
