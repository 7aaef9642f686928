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

# Each name from the module of its topic: rules (what a run does with a job), loop (the Runner),
# folder (the output folder's guards), cancel, dry_run, signals, entry (the entry points).
# `__all__` is the library's surface; a name imported "as" itself is re-exported besides, so
# that it imports from here as it did from the single module runner.py (the CLI and tests do).
from seedream_pipe.runner.cancel import CANCEL_WHILE_RUNNING as CANCEL_WHILE_RUNNING
from seedream_pipe.runner.cancel import PROBE_TIMEOUT_S as PROBE_TIMEOUT_S
from seedream_pipe.runner.cancel import cancel_folder, cancel_queued, gone_simulator
from seedream_pipe.runner.dry_run import NETWORK_ACTIONS as NETWORK_ACTIONS
from seedream_pipe.runner.dry_run import dry_run_report, needs_api
from seedream_pipe.runner.entry import BEFORE_EDIT_NS as BEFORE_EDIT_NS
from seedream_pipe.runner.entry import (
    arun_recipe,
    date_before_edits,
    finish_if_done,
    options_from_recipe,
    recipe_meta,
    run_recipe,
    write_outputs,
)
from seedream_pipe.runner.entry import outputs_named as outputs_named
from seedream_pipe.runner.folder import LAST_API as LAST_API
from seedream_pipe.runner.folder import LOCK_FILE as LOCK_FILE
from seedream_pipe.runner.folder import STALE_OUTPUT_S as STALE_OUTPUT_S
from seedream_pipe.runner.folder import check_same_api as check_same_api
from seedream_pipe.runner.folder import folder_busy as folder_busy
from seedream_pipe.runner.folder import folder_lock as folder_lock
from seedream_pipe.runner.folder import go_on_with as go_on_with
from seedream_pipe.runner.folder import holder_of as holder_of
from seedream_pipe.runner.folder import refuse_foreign as refuse_foreign
from seedream_pipe.runner.folder import refuse_links as refuse_links
from seedream_pipe.runner.folder import run_in_progress as run_in_progress
from seedream_pipe.runner.folder import sweep_stale_outputs as sweep_stale_outputs
from seedream_pipe.runner.loop import Runner
from seedream_pipe.runner.rules import GENERATION_FAILED as GENERATION_FAILED
from seedream_pipe.runner.rules import LOST_CONTACT as LOST_CONTACT
from seedream_pipe.runner.rules import NOT_FOUND_LOOKS as NOT_FOUND_LOOKS
from seedream_pipe.runner.rules import PAID_NOT_FETCHED as PAID_NOT_FETCHED
from seedream_pipe.runner.rules import TIMED_OUT as TIMED_OUT
from seedream_pipe.runner.rules import UNKNOWN_IN_A_ROW_STOP as UNKNOWN_IN_A_ROW_STOP
from seedream_pipe.runner.rules import UNKNOWN_REQUEST as UNKNOWN_REQUEST
from seedream_pipe.runner.rules import UNREAD_ANSWERS_STOP as UNREAD_ANSWERS_STOP
from seedream_pipe.runner.rules import RunOptions, RunResult, action_for
from seedream_pipe.runner.rules import actions_text as actions_text
from seedream_pipe.runner.rules import image_intact as image_intact
from seedream_pipe.runner.rules import made_again_within_limit as made_again_within_limit
from seedream_pipe.runner.rules import may_not_resend as may_not_resend
from seedream_pipe.runner.rules import paid_for_off_plan as paid_for_off_plan
from seedream_pipe.runner.rules import paid_not_fetched as paid_not_fetched
from seedream_pipe.runner.rules import submits_within_limit as submits_within_limit
from seedream_pipe.runner.signals import SAME_INTERRUPT_S as SAME_INTERRUPT_S
from seedream_pipe.runner.signals import Presses as Presses

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
