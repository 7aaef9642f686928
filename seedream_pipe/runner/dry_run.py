"""What a run would do, from the plan and the folder's state alone (no network, no writes):
`run --dry-run`'s report, and whether a run needs the API (and so a token) at all."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seedream_pipe.errors import OutputError, UsageError
from seedream_pipe.runner.folder import (
    check_same_api,
    refuse_foreign,
    refuse_links,
    refuse_unwritable,
)
from seedream_pipe.runner.rules import (
    RunOptions,
    action_for,
    image_intact,
    left_for_forgotten,
    made_again,
    paid_not_fetched,
    submits_within_limit,
)
from seedream_pipe.state import STATE_FILE, JobRecord, StateStore
from seedream_pipe.words import option

if TYPE_CHECKING:
    from seedream_pipe.plan import Plan
    from seedream_pipe.recipe import Recipe


def dry_run_report(
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
    options: RunOptions,
    *,
    api_host: str | None = None,
    max_jobs: int = 10_000,
    allow_large: bool = False,
    fresh_simulator: bool = False,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """What `run` would do, from the plan and the folder's state, with no network and no writes.

    With `api_host`, a folder used with another API is refused as the real run would refuse it.
    `fresh_simulator` (`run --sim`): the run starts a new simulator, which knows none of the
    request ids an earlier one handed out, so jobs to poll or download are submitted again.
    """
    out_dir = Path(out_dir)
    plan = plan_of(recipe, plan, max_jobs=max_jobs, allow_large=allow_large)
    if out_dir.exists():  # (what the run would refuse, refused here too)
        if not out_dir.is_dir():
            raise OutputError(f"{out_dir}: is a file, not a folder; give the output folder another path ({option('--out', 'out_dir')})")
        refuse_links(out_dir)
        refuse_foreign(out_dir)
    refuse_unwritable(out_dir)
    known: dict[str, JobRecord] = {}
    if (out_dir / STATE_FILE).exists():
        with StateStore.for_reading(out_dir) as store:
            if api_host is not None:
                check_same_api(store, out_dir, api_host)
            known = {r.job_id: r for r in store.jobs(in_plan=None)}
    actions, held_back = _actions(plan, known, out_dir, options, fresh_simulator=fresh_simulator)
    submits = actions.get("submit", 0) + actions.get("resubmit", 0)
    cost = None if recipe.price_per_image is None else submits * recipe.price_per_image
    return {
        "jobs": len(plan.jobs),
        "warnings": list(plan.warnings),
        "out_dir": str(out_dir),
        "actions": actions,
        "held_back": held_back,
        "estimated_cost": cost,
    }


#: The actions of a run that call the API; the others (done, skip, fail) need no network.
NETWORK_ACTIONS = ("submit", "resubmit", "poll", "download")


def _actions(
    plan: Plan, known: Mapping[str, JobRecord], out_dir: Path, options: RunOptions, *, fresh_simulator: bool = False
) -> tuple[dict[str, int], int]:
    """How many jobs a run would submit, resubmit, poll, download, find done, skip or fail,
    from the plan and the folder's state (`known`, by job_id), and how many --limit holds back."""
    actions: dict[str, int] = {}
    submits: list[tuple[int, str, str]] = []  # (index, job_id, submit or resubmit)
    forgotten = 0  # jobs a new simulator does not know: made again with what --limit leaves
    for job in plan.jobs:
        rec = known.get(job.job_id)
        action = "submit" if rec is None else action_for(rec, options)
        if action == "verify":  # (the run downloads again a file gone or changed)
            action = "done" if rec is not None and image_intact(out_dir, rec) else "download"
        if fresh_simulator and action in ("poll", "download"):
            forgotten += 1  # (resubmitted, as the run does once the new simulator answers 404)
        elif action in ("submit", "resubmit"):
            submits.append((job.index, job.job_id, action))
        else:
            actions[action] = actions.get(action, 0) + 1
    if not fresh_simulator:  # (a new simulator knows none of them: they are lost, not made again)
        planned = {job.job_id for job in plan.jobs}
        for rec in known.values():
            if rec.job_id not in planned and paid_not_fetched(rec):  # fetched, as run fetches them
                action = "download" if rec.state == "completed" else "poll"
                actions[action] = actions.get(action, 0) + 1
    chosen, held_back = submits_within_limit(submits, options.limit, lambda s: (s[0], s[1]))
    for _, _, action in chosen:
        actions[action] = actions.get(action, 0) + 1
    if forgotten:  # (the run's submits take --limit first; a forgotten job is made with what is left)
        again = made_again(forgotten, left_for_forgotten(options.limit, len(chosen)))
        if again:
            actions["resubmit"] = actions.get("resubmit", 0) + again
        held_back += forgotten - again
    order = ("submit", "resubmit", "poll", "download")  # as the run says them; the rest after
    actions = dict(sorted(actions.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return actions, held_back


def needs_api(
    recipe: Recipe, out_dir: Path, options: RunOptions, *, plan: Plan | None = None, max_jobs: int = 10_000,
    allow_large: bool = False,
) -> bool:
    """Whether a run of the recipe into `out_dir` would call the API: something to submit,
    poll or download. One that would not (every job done, or failed and not to be retried)
    needs no token. Reads the folder's state only: no network, no writes."""
    if not (out_dir / STATE_FILE).exists():
        return True
    plan = plan_of(recipe, plan, max_jobs=max_jobs, allow_large=allow_large)
    with StateStore.for_reading(out_dir) as store:
        known = {r.job_id: r for r in store.jobs(in_plan=None)}
    return calls_api(plan, known, out_dir, options)


def calls_api(plan: Plan, known: Mapping[str, JobRecord], out_dir: Path, options: RunOptions) -> bool:
    actions, _ = _actions(plan, known, out_dir, options)
    return any(actions.get(action) for action in NETWORK_ACTIONS)


def plan_of(recipe: Recipe, plan: Plan | None, *, max_jobs: int, allow_large: bool) -> Plan:
    """The plan given (checked to be this recipe's), else the recipe planned now."""
    from seedream_pipe.plan import Plan

    if plan is None:
        return recipe.plan(max_jobs=max_jobs, allow_large=allow_large)
    if not isinstance(plan, Plan) or plan.recipe is not recipe:
        raise UsageError("plan= takes this recipe's own plan, as recipe.plan() makes it")
    return plan
