"""How counts are said to people: one place, so no message says "1 jobs" again."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 job`, `2 jobs`, `10,000 jobs` (`plural` when the noun takes no plain -s)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def some_of(names: list[str], shown: int = 3) -> str:
    """`a, b, c and 2 more`: the first few of a list of names, and how many were left out."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
