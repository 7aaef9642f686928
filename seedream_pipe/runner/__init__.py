"""The runner: a recipe's plan executed against the Model API, resumably. A job the API took is
never submitted again unless asked (--retry-failed); one whose submit outcome is unknown is sent
once more by default (see below).

    from seedream_pipe.runner import run_recipe
    result = run_recipe(load_recipe("recipes/demo.yaml"), api=api_settings())
    result.exit_code, result.counts

Resume is the normal path. Each run re-plans, syncs the plan into the output folder's state
(matched by job_id) and does only what is missing, by state:

    planned, cancelled        -> submit
    submitting, submit_unknown -> the first POST may have created the job: submit once more and
                                 mark it possible_duplicate (or fail it: --no-resubmit-unknown)
    submitted, in_queue, in_progress -> poll; never submit again
    completed                 -> download
    downloaded                -> skip, unless the file is missing or its sha256 differs
    failed                    -> skip (--retry-failed: poll it if it has a request id and only
                                 timed out, lost contact or had its result refused, else submit
                                 again)

Every transition is committed before the network call that depends on it: `submitting` before
the POST, the request_id right after the answer. Concurrency is the number of jobs in flight
(submitted, not finished); submits are paced by the `SubmitPacer`, everything else by the
`RequestBudget`.

How a run ends (exit code): 0 all done; 1 some jobs failed; 77 the token was refused (stop at
once); 75 out of credit (in-flight jobs are finished first) or rate limited beyond every retry;
69 the service kept failing (5xx/network beyond every retry): submits stop, jobs already in
flight stay resumable; 65 the model is unknown; 130 interrupted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seedream_pipe._lazy import lazy_exports

# The library's surface, each name from the module of its topic: rules (what a run does with a
# job), core (the Runner), folder (the output folder's lock and guards), cancel, dry_run,
# signals (Ctrl-C), entry (the entry points). Everything else is imported from its module.
# Lazily, as the top-level package does: `sheet` or `status` reads a folder's lock through
# runner.folder without loading aiohttp and httpx (0.3 s) for a run it does not start.
if TYPE_CHECKING:  # what type checkers see of the lazily loaded names ("X as X": re-exported)
    from seedream_pipe.runner.cancel import cancel_folder as cancel_folder
    from seedream_pipe.runner.cancel import cancel_queued as cancel_queued
    from seedream_pipe.runner.cancel import gone_simulator as gone_simulator
    from seedream_pipe.runner.core import Runner as Runner
    from seedream_pipe.runner.dry_run import dry_run_report as dry_run_report
    from seedream_pipe.runner.dry_run import needs_api as needs_api
    from seedream_pipe.runner.entry import arun_recipe as arun_recipe
    from seedream_pipe.runner.entry import date_before_edits as date_before_edits
    from seedream_pipe.runner.entry import finish_if_done as finish_if_done
    from seedream_pipe.runner.entry import options_from_recipe as options_from_recipe
    from seedream_pipe.runner.entry import recipe_meta as recipe_meta
    from seedream_pipe.runner.entry import run_recipe as run_recipe
    from seedream_pipe.runner.entry import write_outputs as write_outputs
    from seedream_pipe.runner.rules import RunOptions as RunOptions
    from seedream_pipe.runner.rules import RunResult as RunResult
    from seedream_pipe.runner.rules import action_for as action_for

_EXPORTS: dict[str, str] = {
    "RunOptions": "seedream_pipe.runner.rules",
    "RunResult": "seedream_pipe.runner.rules",
    "Runner": "seedream_pipe.runner.core",
    "action_for": "seedream_pipe.runner.rules",
    "arun_recipe": "seedream_pipe.runner.entry",
    "cancel_folder": "seedream_pipe.runner.cancel",
    "cancel_queued": "seedream_pipe.runner.cancel",
    "date_before_edits": "seedream_pipe.runner.entry",
    "dry_run_report": "seedream_pipe.runner.dry_run",
    "finish_if_done": "seedream_pipe.runner.entry",
    "gone_simulator": "seedream_pipe.runner.cancel",
    "needs_api": "seedream_pipe.runner.dry_run",
    "options_from_recipe": "seedream_pipe.runner.entry",
    "recipe_meta": "seedream_pipe.runner.entry",
    "run_recipe": "seedream_pipe.runner.entry",
    "write_outputs": "seedream_pipe.runner.entry",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, __all__)
