"""The library entry points: arun_recipe and run_recipe (a run, from its checks to its outputs),
finish_if_done and options_from_recipe; and the folder's state made to follow the recipe."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

import httpx

from seedream_pipe import __version__
from seedream_pipe.client import ModelApiClient
from seedream_pipe.config import EMPTY_TOKEN_MESSAGE, ApiSettings, checked_api
from seedream_pipe.errors import (
    EX_INTERRUPTED,
    EX_IOERR,
    EX_NOPERM,
    AuthError,
    OutputError,
    UsageError,
)
from seedream_pipe.images import thumb_name
from seedream_pipe.pacing import Backoff, RequestBudget, SubmitPacer
from seedream_pipe.paths import THUMBS_DIR, default_output_dir, image_file_name, no_folder
from seedream_pipe.progress import Progress, QuietProgress
from seedream_pipe.redaction import redact
from seedream_pipe.runner.core import Runner
from seedream_pipe.runner.dry_run import calls_api, needs_api, plan_of
from seedream_pipe.runner.folder import (
    LAST_API,
    check_same_api,
    folder_lock,
    refuse_foreign,
    refuse_links,
    refuse_unwritable,
    sweep_stale_outputs,
)
from seedream_pipe.runner.rules import (
    RunOptions,
    RunResult,
    image_intact,
    paid_for_off_plan,
    paid_not_fetched,
)
from seedream_pipe.runner.signals import Presses, SignalHandlers
from seedream_pipe.state import STATE_FILE, StateStore
from seedream_pipe.words import counted, option

if TYPE_CHECKING:
    from seedream_pipe.plan import Plan
    from seedream_pipe.recipe import Recipe

_P = ParamSpec("_P")
# (by the name it had when the runner was one module: a logging filter set on that logger, or
# one matching record.name, would not see the records of a child logger)
log = logging.getLogger("seedream_pipe.runner")


def recipe_meta(recipe: Recipe) -> dict[str, Any]:
    """What the outputs need to know about the recipe, stored in the folder's meta."""
    return {
        "path": str(recipe.path),
        # (resolved: `path` is as the run was given it, relative to where it ran; a takeover by a
        # copy of the recipe at another path is told by this, see _follow_recipe)
        "file": str(recipe.resolved_path) if recipe.from_file else None,
        "name": recipe.name,
        "model": recipe.model,
        "hash": recipe.hash,
        "source_text": recipe.source_text,
        "resolved": recipe.resolved,
        "sheet": recipe.sheet.model_dump(),
        "price_per_image": recipe.price_per_image,
    }


def options_from_recipe(recipe: Recipe, **overrides: Any) -> RunOptions:
    """The recipe's `run:` settings, with the command line's choices on top (None: not given)."""
    unknown = sorted(set(overrides) - {f.name for f in fields(RunOptions)})
    if unknown:  # (a notebook's typo, `rmp=5`, would otherwise be dropped without a word)
        known = ", ".join(f.name for f in fields(RunOptions))
        raise UsageError(f"options_from_recipe: no option {', '.join(unknown)}; RunOptions has {known}")
    opts = RunOptions(
        rpm=recipe.run.rpm,
        concurrency=recipe.run.concurrency,
        timeout_s=recipe.run.timeout_s,
        resubmit_unknown=recipe.run.resubmit_unknown,
    )
    for name, value in overrides.items():
        if value is not None:
            setattr(opts, name, value)
    # Checked here, not only once a run has work: `run --rpm nan` exited 0 on a finished
    # folder or with --dry-run, and 64 on one with jobs to do.
    opts.check()
    return opts


def write_outputs(out_dir: str | os.PathLike[str], recipe: Recipe) -> list[Path]:
    """Write the end-of-run outputs (contact sheet, report, manifest, gallery); return their paths.

    Called after every run but an interrupted one, whatever its exit code, and when there was
    nothing left to do: an output (manifest.json, written last) is a make target whose
    prerequisite is the recipe, so it must be fresh after `run`.
    """
    from seedream_pipe import outputs

    return outputs.write_outputs(out_dir, recipe=recipe)


#: How much older than the edit of its recipe the outputs of a run are dated (see
#: date_before_edits): more than the coarsest clock of a file system (FAT's, 2 s).
BEFORE_EDIT_NS = 3_000_000_000


def date_before_edits(recipe: Recipe, written: Iterable[Path]) -> str | None:
    """When a file the recipe was read from (the recipe, a base, a var file) changed while it
    ran, date the outputs written just before that edit, and say what to do; else None.

    The outputs are of the recipe as it was read, not as it is now, yet written after the edit
    they would look newer than it, and make would take a target that never ran the new
    combinations as up to date. Dated before it, the next `make` runs the recipe again."""
    changed = recipe.changed_sources()
    if not changed:
        return None
    edits = []
    for source in changed:
        with contextlib.suppress(OSError):  # (removed: make itself stops for a missing prerequisite)
            edits.append(source.path.stat().st_mtime_ns)
    if edits:
        before = min(edits) - BEFORE_EDIT_NS
        for path in written:
            with contextlib.suppress(OSError):
                os.utime(path, ns=(path.stat().st_atime_ns, before))
    names = ", ".join(source.display for source in changed)
    dated = ", and dated before the change so that make runs it again" if edits else ""  # (removed: make stops)
    return (
        f"warning: {names} changed during the run; run it again to do the new plan (the outputs "
        f"written are of the recipe as it was read{dated})"
    )


def _follow_recipe(store: StateStore, recipe: Recipe, plan: Plan, out: Path) -> str | None:
    """Make the folder's state follow this recipe: its plan (jobs it no longer plans leave the
    outputs, their images stay) and its description for the outputs. Returns what to tell the
    user when the folder was another recipe's (another name, or the same name at another path).

    A takeover is not refused: a renamed or moved recipe keeps its folder and what was paid for
    in it. But a --out pointing at another recipe's folder, or a copy of a recipe that kept its
    `name:` (so its default folder), must not take it over unannounced: each run of the two would
    drop the other's jobs from the sheet, report and gallery."""
    earlier = store.get_meta("recipe", {})
    note = None
    if isinstance(earlier, Mapping) and earlier.get("name") not in (None, recipe.name):
        note = (
            f"warning: {out} held recipe {earlier['name']!r} ({earlier.get('path')}); this run of "
            f"{recipe.name!r} takes it over: the jobs only {earlier['name']!r} planned stay on "
            f"disk but leave its sheet, report and gallery. Give a recipe a folder of its own with {option('--out', 'out_dir')}"
        )
    elif isinstance(earlier, Mapping) and recipe.from_file and earlier.get("file") not in (None, str(recipe.resolved_path)):
        # (a folder of an older version, which kept no `file`, is taken to be this one's)
        note = (
            f"warning: {out} was last run by recipe {recipe.name!r} at {earlier['file']}; this run's "
            f"{recipe.display} has the same name but is another file, and takes the folder over: the jobs "
            "only the other planned stay on disk but leave its sheet, report and gallery. A copy of a "
            f"recipe needs a folder of its own: give it another `name:` or `output:`, or {option('--out', 'out_dir')}"
        )
    left = store.sync_plan(plan.jobs)["left"]
    if note is None and left and _unnamed_text(recipe):
        # A notebook's recipes given without a name are all 'recipe', in one folder; another
        # recipe (or this one, a value taken out) takes its jobs out of the outputs.
        note = (
            f"warning: {out} held {counted(left, 'job')} this recipe does not plan (another "
            f"recipe given without a name, or this one before an edit): their images stay on disk "
            f"but leave the sheet, report and gallery. Give each recipe a name of its own "
            f"(parse_recipe(..., name=...) or `name:`), or a folder of its own ({option('--out', 'out_dir')})"
        )
    store.set_meta("recipe", recipe_meta(recipe))
    _rename_to_plan(store, out)
    return note


def _unnamed_text(recipe: Recipe) -> bool:
    """A recipe from text or a dict (not a file) that names itself nowhere: it runs into the
    folder every such recipe does, outputs/recipe/."""
    return recipe.spec.name is None and not recipe.from_file


def _rename_to_plan(store: StateStore, out: Path) -> None:
    """Give each kept image (and its thumbnail) the name the plan gives it now: a value added
    at the front of a list moves every index after it, and a renamed label changes names, and
    `ls images/` would otherwise follow neither. The file is renamed, then the state follows
    (a crash between the two leaves a job whose file is missing: the next run fetches it again,
    without paying twice)."""
    for rec in store.jobs(states=("downloaded",)):
        if not rec.image_path:  # (the store gives only paths of one name inside images/)
            continue
        old = out / rec.image_path
        name = Path(image_file_name(rec.job_index, rec.job_id, list(rec.axes.values()))).stem + old.suffix
        if old.name == name or not old.is_file():
            continue
        new = old.with_name(name)
        if new.exists():  # (names hold the job id: only a file not ours could be there)
            continue
        os.replace(old, new)
        fields: dict[str, Any] = {"image_path": str(new.relative_to(out))}
        new_thumb = out / THUMBS_DIR / thumb_name(name)
        if rec.thumb_path and (out / rec.thumb_path).is_file():
            if not new_thumb.exists():
                os.replace(out / rec.thumb_path, new_thumb)
                fields["thumb_path"] = str(new_thumb.relative_to(out))
        else:  # (gone: remade under the new name when next needed)
            fields["thumb_path"] = str(new_thumb.relative_to(out))
        store.update(rec.job_id, **fields)


async def arun_recipe(
    recipe: Recipe,
    *,
    api: ApiSettings,
    out_dir: str | os.PathLike[str] | None = None,
    options: RunOptions | None = None,
    progress: Progress | None = None,
    http: httpx.AsyncClient | None = None,
    max_jobs: int = 10_000,
    allow_large: bool = False,
    handle_signals: bool = False,
    plan: Plan | None = None,
) -> RunResult:
    """Run a recipe to completion (or to the first reason to stop) and return what happened.

    - `recipe`: a Recipe (`load_recipe(path)` or `parse_recipe(text)` makes one);
    - `api`: the ApiSettings(base_url, token) to run against: `api_settings()` finds them as the
      CLI does, `ApiSettings(sim.base_url, "any-token")` points at a Simulator;
    - `out_dir`: the output folder (default: the recipe's `output`, else outputs/<name>/);
    - `options`: RunOptions; `options_from_recipe(recipe, rpm=30)` keeps the recipe's `run:`
      settings and changes the ones named (a bare RunOptions() starts from the defaults);
    - `progress`: where events go (default: nowhere; `LogProgress()` logs them);
    - `http`: an httpx.AsyncClient to send through (tests); `max_jobs`/`allow_large`: as --yes;
    - `handle_signals`: install Ctrl-C/SIGTERM handlers that wind the run down (the CLI does);
    - `plan`: the recipe's plan when it is already made (`recipe.plan(...)`, which applied
      max_jobs), so that a large recipe is not planned twice.

    The outcome is in the result (`result.ok`, `result.exit_code`, `result.reason`); arguments
    a run cannot use raise UsageError or AuthError before anything is written or sent.

    This is the form for a running event loop (`await arun_recipe(...)` in a notebook);
    `run_recipe(...)` takes the same arguments and blocks until the run ends.
    """
    from seedream_pipe.recipe import Recipe

    # A notebook's arguments are checked before anything is written or sent.
    if not isinstance(recipe, Recipe):
        raise UsageError(f"the recipe must be a Recipe, not {type(recipe).__name__}: load_recipe(path) makes one")
    # (an empty token passes only for a run with nothing to send: checked below, and again under
    # the folder's lock)
    api = checked_api(api, token_required=False)
    if options is not None and not isinstance(options, RunOptions):
        raise UsageError(
            f"options= takes RunOptions, not {type(options).__name__}: options_from_recipe(recipe, rpm=30) "
            "keeps the recipe's own run: settings and changes the ones named"
        )
    opts = options or options_from_recipe(recipe)
    opts.check()
    out = Path(out_dir) if out_dir is not None else default_output_dir(recipe)
    plan = plan_of(recipe, plan, max_jobs=max_jobs, allow_large=allow_large)
    if not api.token and needs_api(recipe, out, opts, plan=plan):
        raise AuthError(EMPTY_TOKEN_MESSAGE)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        if not (out.exists() or out.is_symlink()):  # (a file, or a link to no folder, above it: named as the dry run names it)
            refuse_unwritable(out)
        raise OutputError(f"{out}: is {no_folder(out)}; give the output folder another path ({option('--out', 'out_dir')})") from None
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder: {exc.strerror or exc}") from exc
    # (before the lock, which creates .run.lock: a folder refused is left as it was found)
    refuse_links(out)  # (first: a state.sqlite that is a dangling link is not "no state")
    refuse_foreign(out)
    progress = progress or QuietProgress()
    try:
        return await _run_in_folder(recipe, api, out, plan, opts, progress, http, handle_signals)
    finally:
        # A run that stops by an exception (a notebook's interrupt cancels it) sends no
        # run_finished: a live bar would go on redrawing from its thread after the cell ends.
        close = getattr(progress, "close", None)
        if callable(close):
            close()


async def _run_in_folder(
    recipe: Recipe, api: ApiSettings, out: Path, plan: Plan, opts: RunOptions, progress: Progress,
    http: httpx.AsyncClient | None, handle_signals: bool,
) -> RunResult:
    """The run of `arun_recipe`, its arguments checked and its output folder made."""
    signals = SignalHandlers()
    try:
        return await _run_and_write(recipe, api, out, plan, opts, progress, http, signals if handle_signals else None)
    finally:
        # Put back only now: a signal while the outputs are written (after the jobs ended) is
        # taken by the run's handler, which has nothing left to stop, instead of killing the
        # process half way (SIGTERM's default) or raising into it (Ctrl-C's).
        signals.restore()


async def _run_and_write(
    recipe: Recipe, api: ApiSettings, out: Path, plan: Plan, opts: RunOptions, progress: Progress,
    http: httpx.AsyncClient | None, signals: SignalHandlers | None,
) -> RunResult:
    with folder_lock(out), StateStore.for_output_dir(out) as store:
        check_same_api(store, out, api.host)
        if not api.token and calls_api(plan, {r.job_id: r for r in store.jobs(in_plan=None)}, out, opts):
            raise AuthError(EMPTY_TOKEN_MESSAGE)  # (another run changed the folder since arun_recipe looked)
        note = _follow_recipe(store, recipe, plan, out)
        if note:
            progress.event("message", {"text": note})
        for warning in plan.warnings:  # (as `plan` and `validate` show them: merged jobs, long prompts)
            progress.event("message", {"text": f"warning: {warning}"})
        store.start_run(
            recipe_path=str(recipe.path),
            recipe_hash=recipe.hash,
            api_host=api.host,
            tool_version=__version__,
        )
        # what a later run needs to go on with the same API (see go_on_with): a simulator of
        # `run --sim` is started anew each time, one of `seedream-pipe sim` lives at its URL
        earlier_api = store.get_meta(LAST_API)
        store.set_meta(LAST_API, {"base_url": api.base_url, "built_in_simulator": opts.forget_lost})
        started = time.time()
        rng = random.Random(opts.seed)
        budget = opts.requests_per_s or max(10.0, 5 * opts.rpm / 60)
        client = ModelApiClient(
            api,
            http=http,
            pacer=SubmitPacer(opts.rpm),
            budget=RequestBudget(budget, burst=max(10, int(budget))),
            backoff=Backoff(base=opts.backoff_base_s, cap=opts.backoff_cap_s, rng=rng),
            timeout_s=opts.request_timeout_s,
            max_retries=opts.max_retries,
            on_event=lambda kind, detail: progress.event(kind, detail),
        )
        runner = Runner(store, client, out, opts, progress=progress)
        # (a simulator at another URL than the last run's, started afresh: it knows none of them;
        # one restarted on the same port is not told apart, and its start line says "to poll")
        runner.simulator_forgot = opts.forget_lost and not (
            isinstance(earlier_api, dict) and earlier_api.get("base_url") == api.base_url
        )
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        presses = Presses()

        def on_signal() -> None:
            press = presses.press()
            if press == 1:
                runner.interrupt()
            elif press == 2 and main_task is not None:
                main_task.cancel()  # second Ctrl-C: out at once (every commit is atomic)

        if signals is not None:
            signals.install(loop, on_signal)
        result: RunResult | None = None
        try:
            async with client:
                result = await runner.run(store.jobs() + paid_for_off_plan(store))
        except (asyncio.CancelledError, KeyboardInterrupt) as exc:
            # The counters so far, as any run records them: the summary's requests, and the
            # record that this run reached its API (check_same_api), if it did.
            result = runner._result()
            result.exit_code = EX_INTERRUPTED
            if presses.count < 2:
                # Cancelled by its caller (a notebook's interrupt, asyncio.wait_for) or Ctrl-C
                # without handle_signals: recorded as interrupted, as `status` then says (it
                # said "killed"), and the caller's exception goes on.
                result.reason = f"interrupted ({type(exc).__name__}; state is consistent; run again to resume)"
                raise
            result.reason = "interrupted twice: stopped at once (state is consistent; run again to resume)"
        except AuthError as exc:
            result = runner._result()
            result.exit_code = EX_NOPERM
            result.reason = redact(str(exc), api.token)
        finally:
            ended = time.time()
            if result is not None:
                result.summary.update(
                    started_at=started,
                    ended_at=ended,
                    elapsed_s=round(ended - started, 3),
                    exit_code=result.exit_code,
                )
                if result.reason:
                    result.summary["reason"] = result.reason
                store.finish_run(exit_code=result.exit_code, summary=result.summary)
        assert result is not None
        if note:  # (in the result too: `run --quiet`, which shows no messages, says it at the end)
            result.warnings.append(note)
    if result.exit_code not in (EX_INTERRUPTED, EX_IOERR):
        # An interrupted run leaves the outputs as they were: a report written now would pass
        # for a finished run's (to make, too: the target would look up to date). The next run
        # writes them (or `report`, `sheet` and `gallery` DIR). Nor are they written after the
        # file system refused (a full disk): they would fail the same way, and hide why.
        result.outputs = write_outputs(out, recipe)
        edited = date_before_edits(recipe, result.outputs)
        if edited:
            result.warnings.append(edited)
            progress.event("message", {"text": edited})
    # last, so that what it names is there: the outputs, relative to the output folder
    progress.event("run_finished", _finished_event(result))
    return result


def _finished_event(result: RunResult) -> dict[str, Any]:
    """The detail of --json's last line: how the run ended and what it wrote."""
    return {
        "exit_code": result.exit_code,
        "reason": result.reason,
        "summary": result.summary,
        "out_dir": str(result.out_dir),
        "outputs": outputs_named(result.out_dir, result.outputs),
    }


def outputs_named(out_dir: Path, written: Iterable[Path]) -> list[str]:
    """The files written, named from the output folder (as `wrote ... in DIR` names them)."""
    return [str(p.relative_to(out_dir)) if p.is_relative_to(out_dir) else str(p) for p in written]


def _blocking(run: Callable[_P, Coroutine[Any, Any, RunResult]]) -> Callable[_P, RunResult]:
    """`run` made a plain call that runs it on an event loop of its own, same arguments."""

    @functools.wraps(run)
    def blocking(*args: _P.args, **kwargs: _P.kwargs) -> RunResult:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run(*args, **kwargs))
        # asyncio.run would fail with "cannot be called from a running event loop", which does
        # not say what to write instead; checked before the coroutine exists, so none is left
        # unawaited
        raise RuntimeError(
            "run_recipe() cannot run inside a running event loop (a Jupyter notebook has one): "
            "write `result = await arun_recipe(recipe, api=...)` instead (from seedream_pipe.runner)"
        )

    return blocking


#: `arun_recipe` as a plain call, for scripts: `result = run_recipe(recipe, api=...)`.
run_recipe = _blocking(arun_recipe)
run_recipe.__name__ = run_recipe.__qualname__ = "run_recipe"


def finish_if_done(recipe: Recipe, out_dir: str | os.PathLike[str], *, max_jobs: int = 10_000, allow_large: bool = False,
                   api_host: str | None = None, plan: Plan | None = None,
                   on_warning: Callable[[str], None] | None = None) -> list[Path] | None:
    """When every job of the recipe's plan is already downloaded with its file intact, bring the
    folder up to date with the recipe without any network call, and return the outputs written.
    None when there is work left: a run is needed.

    Up to date means: jobs the recipe no longer plans leave the sheet, report and gallery (their
    images stay on disk), renamed labels and reordered values show, and the outputs are written
    again, so a report used as a make target is newer than its recipe after every `run`.

    With `api_host`, a folder used with another API host is refused (UsageError), as `run`
    would refuse it. Lets `run` skip starting a simulator, and asking for a token, when a recipe
    is finished. `plan`: as for arun_recipe. `on_warning` hears what the user must be told
    however quiet (RunResult.warnings of a run); default: the package's log.
    """
    out_dir = Path(out_dir)
    if not (out_dir / STATE_FILE).exists():
        return None
    plan = plan_of(recipe, plan, max_jobs=max_jobs, allow_large=allow_large)
    with StateStore.for_reading(out_dir) as store:
        if api_host is not None:
            check_same_api(store, out_dir, api_host)
        known = {r.job_id: r for r in store.jobs(in_plan=None)}
    planned = {job.job_id for job in plan.jobs}
    if any(paid_not_fetched(r) for r in known.values() if r.job_id not in planned):
        return None  # (a job the recipe no longer plans, taken by the API: its image is still to fetch)
    for job in plan.jobs:
        rec = known.get(job.job_id)
        # (failed jobs go to the runner, which reports them and exits 1 with no network call)
        if rec is None or rec.state != "downloaded" or not image_intact(out_dir, rec):
            return None
    warn = on_warning or log.warning
    with folder_lock(out_dir), StateStore.for_output_dir(out_dir) as store:
        note = _follow_recipe(store, recipe, plan, out_dir)
        if note:
            warn(note)
        sweep_stale_outputs(out_dir, time.time())
        written = write_outputs(out_dir, recipe)  # under the lock: no run changes the folder meanwhile
    edited = date_before_edits(recipe, written)
    if edited:
        warn(edited)
    return written
