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
                                 timed out or lost contact, else submit again)

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

# The library's surface, each name from the module of its topic: rules (what a run does with a
# job), core (the Runner), folder (the output folder's lock and guards), cancel, dry_run,
# signals (Ctrl-C), entry (the entry points). Everything else is imported from its module.
from seedream_pipe.runner.cancel import cancel_folder, cancel_queued, gone_simulator
from seedream_pipe.runner.core import Runner
from seedream_pipe.runner.dry_run import dry_run_report, needs_api
from seedream_pipe.runner.entry import (
    arun_recipe,
    date_before_edits,
    finish_if_done,
    options_from_recipe,
    recipe_meta,
    run_recipe,
    write_outputs,
)
from seedream_pipe.runner.rules import RunOptions, RunResult, action_for

__all__ = [
    "RunOptions",
    "RunResult",
    "Runner",
    "action_for",
    "arun_recipe",
    "cancel_folder",
    "cancel_queued",
    "date_before_edits",
    "dry_run_report",
    "finish_if_done",
    "gone_simulator",
    "needs_api",
    "options_from_recipe",
    "recipe_meta",
    "run_recipe",
    "write_outputs",
]
