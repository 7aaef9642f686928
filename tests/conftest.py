"""Fixtures shared by the CLI's test modules."""

from __future__ import annotations

from typing import Any

import pytest

#: What the `quick_runs` fixture gives `run`: jobs of 0.1 +/- 0.05 s, first looked at after 0.05 s.
QUICK_SIM_LATENCY_S = 0.1
QUICK_SIM_JITTER_S = 0.05
QUICK_FIRST_POLL_S = 0.05


@pytest.fixture
def quick_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` in this process with its timings shrunk, nothing else changed.

    `run --sim` starts a simulator whose jobs take 1.5 +/- 0.5 s (a demo's pace), and every run
    looks at its first job after 1 s (the real API's pace): each `run` in a test waited about
    2.5 s, for a simulator that takes 0.01 s still 1 s. Both are timings, not behaviour: the
    simulator is still started per run (a new port each time), with the same workers, seed and
    token, and the run keeps every other option the recipe and the command line give it.
    """
    from seedream_pipe import runner
    from seedream_pipe.cli import run_cmds
    from seedream_pipe.runner import entry

    monkeypatch.setattr(run_cmds, "SIM_LATENCY_S", QUICK_SIM_LATENCY_S)
    monkeypatch.setattr(run_cmds, "SIM_JITTER_S", QUICK_SIM_JITTER_S)
    real = runner.options_from_recipe

    def quick_options(recipe: Any, **overrides: Any) -> runner.RunOptions:
        return real(recipe, **{"first_poll_s": QUICK_FIRST_POLL_S, **overrides})

    # (the CLI imports it from the package; arun_recipe, given no options, calls entry's own)
    monkeypatch.setattr(runner, "options_from_recipe", quick_options)
    monkeypatch.setattr(entry, "options_from_recipe", quick_options)
