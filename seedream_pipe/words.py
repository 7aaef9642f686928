"""How counts and choices are said to people: one place, so no message says "1 jobs" again,
and none tells a notebook to pass `--out`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

#: Set while a command of the CLI runs (`speaking_to_cli()`, around `SeedreamCli.main`).
_SPEAKING_TO_CLI: ContextVar[bool] = ContextVar("speaking_to_cli", default=False)


@contextlib.contextmanager
def speaking_to_cli() -> Iterator[None]:
    """Within this block, messages name the command line's options (see `option`)."""
    token = _SPEAKING_TO_CLI.set(True)
    try:
        yield
    finally:
        _SPEAKING_TO_CLI.reset(token)


def option(flag: str, parameter: str) -> str:
    """A choice as the caller can make it: `flag` (`--out`) for a command, `parameter`
    (`out_dir=`) for a notebook or script that called the library, which has no flag to pass.
    The CLI's messages stay word for word what they were."""
    return flag if _SPEAKING_TO_CLI.get() else parameter


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 job`, `2 jobs`, `10,000 jobs` (`plural` when the noun takes no plain -s)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def some_of(names: list[str], shown: int = 3) -> str:
    """`a, b, c and 2 more`: the first few of a list of names, and how many were left out."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
