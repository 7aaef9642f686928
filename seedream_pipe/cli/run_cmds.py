"""The runner's commands: `run`, `status` and `cancel`.

Only parsing and printing: the work is `seedream_pipe.runner` (run_recipe, cancel_folder), which a
notebook can call the same way.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shlex
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from seedream_pipe.cli import printable
from seedream_pipe.config import (
    MAX_CONCURRENCY,
    ApiSettings,
    api_host,
    api_settings,
    is_loopback,
    require_token,
    resolve_base_url,
)
from seedream_pipe.errors import (
    EX_INTERRUPTED,
    EX_NOPERM,
    EX_OK,
    EX_SOFTWARE,
    EX_SOME_FAILED,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    AuthError,
    RecipeError,
    UsageError,
    exit_code_for,
)
from seedream_pipe.paths import default_output_dir, locate
from seedream_pipe.state import IN_FLIGHT_STATES, STATE_FILE, StateStore
from seedream_pipe.words import counted

if TYPE_CHECKING:
    from seedream_pipe.recipe import Recipe

#: The simulator `run --sim` starts: realistic in shape, quick enough for a demo.
SIM_LATENCY_S = 1.5
SIM_JITTER_S = 0.5
SIM_WORKERS = 4
SIM_TOKEN = "sim-local-token"
#: Stops that the same command, run again later, gets past: the API was away, slow or out of
#: credit, or the user stopped it. Other stops (a rejected request, a wrong URL) need a fix first.
RESUMES_AS_IS = (EX_UNAVAILABLE, EX_SOFTWARE, EX_TEMPFAIL, EX_INTERRUPTED)
#: The states of a job the API may still hold: what `cancel` asks it to cancel.


@contextlib.contextmanager
def _api_for_run(sim: bool, base_url: str | None) -> Iterator[ApiSettings]:
    """The API a run talks to: a simulator started for it, or the configured one with its token.
    (`run` has already checked the options with `_host_for_run`.)

    The token may be missing (""): a run whose unfinished jobs are all failed, and not to be
    retried, reports them and exits 1 without calling the API, as a finished one exits 0, so
    neither needs one (a make target on a machine without it). The runner refuses an empty
    token when it has something to send, before it sends anything."""
    if not sim:
        yield api_settings(base_url, token_required=False)
        return
    from seedream_pipe.sim import SimConfig, Simulator

    config = SimConfig(workers=SIM_WORKERS, latency=SIM_LATENCY_S, latency_jitter=SIM_JITTER_S, seed=0)
    with Simulator(config) as simulator:
        yield ApiSettings(simulator.base_url, SIM_TOKEN)


def _host_for_run(sim: bool, base_url: str | None) -> str:
    """The API host a run would record, found without a token or a server; refuses options
    that contradict each other."""
    if not sim:
        return api_host(resolve_base_url(base_url))
    if base_url:
        raise UsageError("--sim and --base-url contradict each other: --sim runs its own server")
    from seedream_pipe.sim.config import DEFAULT_HOST

    return DEFAULT_HOST


def _json_nothing_to_do(out_dir: Path, written: list[Path], warnings: list[str]) -> None:
    """The events a run with nothing to do sends with --json, so scripts see the same shape
    (its warnings as `message` events, as a run sends them)."""
    from seedream_pipe.progress import JsonProgress
    from seedream_pipe.runner.entry import outputs_named

    with StateStore.for_output_dir(out_dir) as store:
        counts = store.counts()
    events = JsonProgress()
    for warning in warnings:
        events.event("message", {"text": warning})
    events.event("run_started", {
        "total": sum(counts.values()), "todo": 0,
        "actions": {"submit": 0, "resubmit": 0, "poll": 0, "download": 0},
        "actions_text": "nothing", "out_dir": str(out_dir),
    })  # fmt: skip
    summary = {**{f"jobs_{state}": n for state, n in counts.items()}, "http_requests": 0, "exit_code": EX_OK}
    events.event("run_finished", {
        "exit_code": EX_OK, "reason": None, "summary": summary,
        "out_dir": str(out_dir), "outputs": outputs_named(out_dir, written),
    })  # fmt: skip


#: Failures a --quiet run names on stderr (a make log's only account of them); `status` has all.
QUIET_FAILURES_SHOWN = 3


def _print_summary(result: Any, *, quiet: bool, retried: bool = False) -> None:
    """The same summary `report` prints, then what this run wrote and why it stopped early."""
    from seedream_pipe.outputs import format_summary, summarize

    if not quiet:
        # The summary lists failures with the API's own words: shown, not obeyed.
        click.echo(printable(format_summary(summarize(result.out_dir)), keep_newlines=True))
        _print_written(result.out_dir, result.outputs)
    else:  # (without --quiet the run said them as it went)
        for warning in result.warnings:
            _print_warning(warning)
    failed = result.counts.get("failed", 0)
    if result.exit_code == EX_SOME_FAILED and failed:
        # quiet or not: a make target failing needs one line of why, and of what to do
        again = "" if retried else ", `run --retry-failed` tries them again"
        click.secho(
            f"error: {failed} job(s) failed; `seedream-pipe status {printable(shlex.quote(str(result.out_dir)))}` "
            f"says why{again}",
            fg="red",
            err=True,
        )
        if quiet:  # (without --quiet, the summary above lists them)
            for index, job_id, error in result.failures[:QUIET_FAILURES_SHOWN]:
                click.echo(f"  job {index} ({job_id}): {printable(error)}", err=True)
            if failed > QUIET_FAILURES_SHOWN:
                click.echo(f"  ... and {failed - QUIET_FAILURES_SHOWN} more", err=True)
    cancelled = result.counts.get("cancelled", 0)
    if result.exit_code == EX_SOME_FAILED and cancelled:
        click.secho(
            f"error: {cancelled} job(s) were cancelled before they ran (by `seedream-pipe cancel`, or on "
            "the API's side); the next run submits them again",
            fg="red",
            err=True,
        )
    if quiet and result.exit_code == EX_INTERRUPTED and result.reason == "interrupted":
        # (without --quiet the run said so as it wound down; a make log has only this line)
        s = result.summary
        click.echo(
            f"interrupted: cancelled {s.get('cancelled_on_interrupt', 0)} queued job(s), kept "
            f"{s.get('kept_running', 0)} running; run the same command again to resume ({result.out_dir})",
            err=True,
        )
    # Every stop with a reason says it, a bug's (70) included: without this line the user saw a
    # summary with no failed job and no word of what went wrong.
    said_above = result.exit_code == EX_SOME_FAILED and (failed or cancelled)  # (the lines above)
    if result.exit_code != EX_OK and result.reason and result.reason != "interrupted" and not said_above:
        prefix = "interrupted" if result.exit_code == EX_INTERRUPTED else "error"
        text = result.reason if result.reason.startswith("interrupted") else f"{prefix}: {result.reason}"
        click.secho(printable(text), fg="red", err=True)
        if result.exit_code in RESUMES_AS_IS and not result.fix_first:
            click.echo(f"Run the same command again to resume: nothing paid for is lost ({result.out_dir}).", err=True)
        else:  # (77 included: its message says how to fix the token, this that nothing is lost)
            click.echo(
                f"Fix that, then run the same command: it resumes where it stopped ({result.out_dir}).", err=True
            )


def _print_warning(text: str) -> None:
    """A warning the user must see however quiet the run: a make log may hold nothing else."""
    click.secho(printable(text), fg="yellow", err=True)


def _silence_warnings() -> Callable[[], None]:
    """Keep the package's logged warnings quiet until the returned function is called."""
    logger = logging.getLogger("seedream_pipe")
    level = logger.level
    logger.setLevel(logging.ERROR)
    return lambda: logger.setLevel(level)


def _print_written(out_dir: Path, written: list[Path]) -> None:
    if written:
        names = ", ".join(path.name for path in written)
        click.echo(f"wrote {names} in {out_dir}")


def _errors_as_json_events(command: Callable[..., int]) -> Callable[..., int]:
    """With --json, a run that stops before it starts (a bad recipe, no token, a folder in use)
    still says so on stdout, as an `error` event, so a script reading events is never left with
    nothing. The message and exit code stay as for every command (stderr, the CLI's mapping)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Abort):
            raise  # click's own (usage, Ctrl-C at a prompt): said by click
        except Exception as exc:  # the CLI's one mapping still prints it and picks the exit code
            if kwargs.get("json_lines"):
                from seedream_pipe.progress import JsonProgress

                detail: dict[str, Any] = {"exit_code": exit_code_for(exc), "message": str(exc)}
                if isinstance(exc, RecipeError):
                    detail["problems"] = [str(problem) for problem in exc.problems]
                JsonProgress().event("error", detail)
            raise

    return wrapper


@click.command("run", short_help="Run a recipe: submit, poll, download every image (resumable).")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--sim", is_flag=True, help="Run against the built-in simulator (started here; no token needed).")
@click.option("--base-url", metavar="URL", help="API base. [default: $RUNCOMFY_MODEL_API_BASE, else https://model-api.runcomfy.net/v1]")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder. [default: the recipe's output, else outputs/<name>/]")
@click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="Submits per minute at most. [default: the recipe's run.rpm]")
@click.option("--concurrency", type=click.IntRange(min=1, max=MAX_CONCURRENCY), help="Jobs in flight at most. [default: the recipe's run.concurrency]")
@click.option("--limit", type=click.IntRange(min=0),
              help="Submit at most N jobs in this run (0: none, only finish what is in flight).")
@click.option("--yes", "-y", is_flag=True, help="Allow a plan over --max-jobs jobs.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=10_000, show_default=True, help="Largest plan run without --yes.")
@click.option("--retry-failed", is_flag=True, help="Try failed jobs again (timed-out ones are polled, not resubmitted).")
@click.option("--no-resubmit-unknown", is_flag=True,
              help="Fail a job whose submit outcome is unknown instead of submitting it once more (never risks a second charge).")
@click.option("--dry-run", is_flag=True, help="Say what would be done, with no network call.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "json_lines", is_flag=True, help="Machine-readable events, one JSON object per line, on stdout.")
@_errors_as_json_events
def run_command(
    recipe_path: Path,
    sim: bool,
    base_url: str | None,
    out: Path | None,
    rpm: float | None,
    concurrency: int | None,
    limit: int | None,
    yes: bool,
    max_jobs: int,
    retry_failed: bool,
    no_resubmit_unknown: bool,
    dry_run: bool,
    quiet: bool,
    json_lines: bool,
) -> int:
    """Run a recipe: submit its jobs, poll them, download every image (resumable).

    Running the same recipe again does only what is missing: jobs the API took are polled, not
    submitted again; finished ones are skipped; new combinations of an edited recipe run.
    Ctrl-C stops submitting and cancels queued jobs (a second Ctrl-C quits at once).

    Exit codes: 0 all done, 1 some jobs failed, 64 usage, 65 bad recipe, 69 service unavailable,
    70 a bug in seedream-pipe, 73/74 output folder or file system, 75 rate limit, credit or
    folder in use, 77 token missing or refused, 130 interrupted.

    \b
    Example:
        seedream-pipe run recipes/demo.yaml --sim
        RUNCOMFY_TOKEN=... seedream-pipe run recipes/demo.yaml --rpm 30 --concurrency 8
    """
    from seedream_pipe.progress import make_progress
    from seedream_pipe.recipe import load_recipe
    from seedream_pipe.runner import (
        dry_run_report,
        finish_if_done,
        options_from_recipe,
        run_recipe,
    )

    if quiet and json_lines:
        raise UsageError("--quiet and --json contradict each other: choose one")
    if quiet:  # the library's warnings (e.g. the sheet's) are not errors
        click.get_current_context().call_on_close(_silence_warnings())
    recipe = load_recipe(recipe_path)
    out_dir = out if out is not None else default_output_dir(recipe)
    options = options_from_recipe(
        recipe,
        rpm=rpm,
        concurrency=concurrency,
        limit=limit,
        retry_failed=retry_failed or None,
        resubmit_unknown=False if no_resubmit_unknown else None,
        forget_lost=True if sim else None,
    )
    if dry_run:
        report = dry_run_report(
            recipe, out_dir, options, api_host=_host_for_run(sim, base_url), max_jobs=max_jobs, allow_large=yes,
            fresh_simulator=sim,
        )
        if json_lines:  # (an event as every --json line is, so a script dispatches on "event")
            from seedream_pipe.progress import JsonProgress

            JsonProgress().event("dry_run", report)
        else:
            jobs = report["jobs"]
            click.echo(f"{counted(jobs, 'job')} in the plan; output folder {report['out_dir']}")
            for action, n in report["actions"].items():
                click.echo(f"  {action}: {n}")
            if report["held_back"]:
                click.echo(f"  left for a later run (--limit): {report['held_back']}")
            if report.get("estimated_cost") is not None:
                click.echo(f"  estimated cost of the new submits: ${report['estimated_cost']:.2f}")
            for warning in report["warnings"]:
                click.secho(f"warning: {printable(warning)}", fg="yellow", err=True)
            from seedream_pipe.runner.folder import at_work_here

            at_work = at_work_here(out_dir)
            if at_work is not None:  # (`run` itself would refuse the folder until that run ends)
                click.secho(f"note: {printable(at_work)}: what it does changes this", fg="yellow", err=True)
        return EX_OK
    host = _host_for_run(sim, base_url)
    # A finished recipe: no simulator, no network, so no token needed either (a make target on a
    # machine without one); the folder still follows the recipe and its outputs are rewritten.
    plan = recipe.plan(max_jobs=max_jobs, allow_large=yes)  # once, for both steps
    warnings: list[str] = []
    written = finish_if_done(recipe, out_dir, api_host=host, plan=plan, on_warning=warnings.append)
    if written is not None:
        if json_lines:
            _json_nothing_to_do(out_dir, written, warnings)
            return EX_OK
        for warning in warnings:
            _print_warning(warning)
        if not quiet:
            click.echo(f"Nothing to do: every job of {recipe.name} is done ({out_dir}).")
            _print_written(out_dir, written)
        return EX_OK
    with _api_for_run(sim, base_url) as api:
        progress = make_progress(quiet=quiet, json_lines=json_lines, secret=api.token)
        try:
            result = run_recipe(
                recipe,
                api=api,
                out_dir=out_dir,
                options=options,
                progress=progress,
                handle_signals=True,
                plan=plan,
            )
        except AuthError:
            if not api.token:  # (the run had something to send: say where a token comes from)
                require_token()
            raise
    if not json_lines:
        _print_summary(result, quiet=quiet, retried=options.retry_failed)
        if result.exit_code == EX_NOPERM and not sim:
            _say_token_source()
    return result.exit_code


def _say_token_source() -> None:
    """Which token a refused run used: with two variables and a login file, the one fixed may
    not be the one read."""
    from seedream_pipe.config import TOKEN_ENVS, token_source

    source = token_source()
    if source is None:
        return
    shadowing = ""
    if source in TOKEN_ENVS:
        after = [*TOKEN_ENVS[TOKEN_ENVS.index(source) + 1 :], "the token of `runcomfy login`"]
        shadowing = f"; it is used before {' and '.join(after)}"
    click.echo(f"The token sent was read from {source}{shadowing}.", err=True)


TARGET = click.argument("target", metavar="RECIPE|DIR", type=click.Path(path_type=Path))


def _open_state(target: Path, out: Path | None) -> tuple[Path, Recipe | None, StateStore]:
    """The output folder of RECIPE|DIR and its state, read-only where the folder is (`status` of
    an archived run, or `cancel` of one with nothing left to cancel: cancel_folder opens it to
    write only when a job is in flight)."""
    out_dir, recipe = locate(target, out=out)
    if not (out_dir / STATE_FILE).exists():
        from seedream_pipe.outputs._folder import (
            no_run_yet,  # (as `sheet`, `report` and `gallery` say it)
        )

        where = ""
        if recipe is not None and out is None and recipe.output is None:
            # the default folder is relative to where `run` ran, as a make target's is
            where = f"; the default folder is outputs/{recipe.name}/ in the folder `run` ran from; or pass --out"
        raise no_run_yet(out_dir, _run_args(target, out) if recipe is not None else None, where)
    return out_dir, recipe, StateStore.for_reading(out_dir)


def _run_args(target: Path, out: Path | None, *more: str) -> list[str]:
    """What follows `seedream-pipe run` to run RECIPE|DIR `target` again into its folder."""
    return [str(target), *more, *(["--out", str(out)] if out is not None else [])]


@click.command("status", short_help="Show a run's jobs by state, and its failures; no network.")
@TARGET
@click.option("--out", type=click.Path(path_type=Path), help="Output folder of the recipe, if not its default.")
@click.option("--json", "json_out", is_flag=True, help="Print the counts and failures as JSON.")
def status_command(target: Path, out: Path | None, json_out: bool) -> int:
    """Show how far a recipe's run got: jobs by state, failures with their reasons.

    No network: it reads the output folder's state.

    \b
    Example:
        seedream-pipe status recipes/demo.yaml
        seedream-pipe status outputs/demo
    """
    from seedream_pipe.runner.folder import go_on_with, run_in_progress
    from seedream_pipe.runner.rules import paid_not_fetched

    out_dir, recipe, store = _open_state(target, out)
    with store:
        counts = store.counts()
        every = store.jobs(in_plan=None)  # (read once: a folder may hold 100,000 jobs)
        runs = store.runs()
        same_simulator = go_on_with(store)
    here = [r for r in every if r.in_plan]
    failed = [r for r in here if r.state == "failed"]
    # (a stat per done job, no hashing: what `report` warns of, and `run` fetches again)
    from seedream_pipe.outputs._folder import IMAGE_PRESENT, image_file_state

    off_disk = Counter(
        state for r in here if r.state == "downloaded"
        if (state := image_file_state(r, out_dir)) not in (None, IMAGE_PRESENT)
    )
    duplicates = sum(1 for r in here if r.possible_duplicate)
    # jobs a recipe edit dropped that the API took: paid for, so the next run still fetches them
    dropped_paid = sum(1 for r in every if not r.in_plan and paid_not_fetched(r))
    planned_here = {r.job_id for r in here}
    sent = {r.job_id for r in every if r.state != "planned"}  # ever submitted
    last = runs[-1] if runs else None
    # The folder holds the last run's plan; a recipe given by name may have changed since.
    changes: dict[str, Any] | None = None
    if recipe is not None:
        try:
            now = {job.job_id for job in recipe.plan(allow_large=True).jobs}
        except RecipeError as exc:  # the folder's state is still worth showing
            changes = {"error": str(exc)}
        else:
            changes = {"jobs": len(now), "not_run_yet": len(now - sent), "no_longer_planned": len(planned_here - now)}
    if json_out:
        click.echo(
            json.dumps(
                {
                    "out_dir": str(out_dir),
                    "counts": counts,
                    "possible_duplicates": duplicates,
                    "failures": [{"index": r.job_index, "job_id": r.job_id, "error": r.error} for r in failed],
                    "last_run": {k: last[k] for k in ("id", "started_at", "finished_at", "exit_code", "api_host")}
                    if last
                    else None,
                    "recipe_now": changes,
                    "image_files_off_disk": dict(off_disk),
                    "no_longer_planned_to_fetch": dropped_paid,
                }
            )
        )
        return EX_OK
    total = sum(counts.values())
    click.echo(f"{out_dir}: {counted(total, 'job')}")
    for state, n in counts.items():
        if n:
            click.echo(f"  {state:<15} {n}")
    if duplicates:
        click.echo(f"  possible duplicates (maybe paid for twice; report.csv says which): {duplicates}")
    if dropped_paid:
        click.echo(f"  no longer planned, but taken by the API (paid for): {dropped_paid}; `run` fetches "
                   "their images into images/ (they stay out of the sheet and report)")
    if off_disk:
        how = ", ".join(f"{n} {state}" for state, n in sorted(off_disk.items()))
        click.echo(f"  done, but the image file is not on disk as downloaded: {sum(off_disk.values())} ({how}); "
                   "`run` fetches them again, without paying twice")
    holder = run_in_progress(out_dir)  # (a run at work in the folder holds its lock)
    if last:
        code = last["exit_code"]
        if code is not None:
            ended = f"exit {code}"
        else:
            ended = f"running now (pid {holder})" if holder else "ended without recording how (killed, or its state could not be written; run again to resume)"
        click.echo(f"last run: #{last['id']} against {printable(str(last['api_host']))}, {ended}")
    for r in failed:
        # The reason is the API's text (or the simulator's): shown, never obeyed by the terminal.
        click.echo(f"failed: job {r.job_index} ({r.job_id}): {printable(str(r.error))}")
    if changes and "error" in changes:
        click.secho(f"the recipe as it is now does not plan: {printable(changes['error'])}", fg="red", err=True)
    elif changes and (changes["not_run_yet"] or changes["no_longer_planned"]):
        parts = [f"{changes['not_run_yet']} not run yet"] if changes["not_run_yet"] else []
        if changes["no_longer_planned"]:
            parts.append(f"{changes['no_longer_planned']} of the jobs above no longer in it")
        # (a folder of runs against this machine was a simulator's: go on with that one)
        sim = same_simulator.split(" ", 1) if last and is_loopback(str(last["api_host"])) else []
        # (quoted: a path with a space is pasteable as is, as `init` says its next command)
        command = printable(shlex.join(["seedream-pipe", "run", *_run_args(target, out, *sim)]))
        # (while a run is at work, the same command is refused, exit 75: it is for after that run)
        when = f" once the run at work in it (pid {holder}) has ended" if holder else ""
        click.echo(
            f"the recipe as it is now plans {counted(changes['jobs'], 'job')}: {', '.join(parts)}; "
            f"`{command}` brings the folder up to date{when}"
        )
    return EX_OK


@click.command("cancel", short_help="Cancel the queued jobs of an earlier run (e.g. a killed one).")
@TARGET
@click.option("--out", type=click.Path(path_type=Path), help="Output folder of the recipe, if not its default.")
@click.option("--base-url", metavar="URL", help="API base. [default: $RUNCOMFY_MODEL_API_BASE, else https://model-api.runcomfy.net/v1]")
def cancel_command(target: Path, out: Path | None, base_url: str | None) -> int:
    """Cancel every queued job of an earlier run (e.g. one that was killed).

    Queued jobs are cancelled and not billed; running ones cannot be cancelled: they finish,
    and the next `run` downloads them. Uses the token and API base from the environment.

    \b
    Example:
        seedream-pipe cancel recipes/demo.yaml
    """
    from seedream_pipe.runner import cancel_folder
    from seedream_pipe.runner.folder import go_on_with

    out_dir, _, store = _open_state(target, out)
    with store:
        runs = store.runs()
        in_flight = [r for r in store.jobs(in_plan=None, states=IN_FLIGHT_STATES) if r.request_id]
        built_in = go_on_with(store) == "--sim"  # (else a `seedream-pipe sim` at its URL)
    if not in_flight:
        # Nothing the API could cancel: no token, no network (e.g. after a finished --sim run).
        click.echo(f"nothing to cancel: no job of {out_dir} is queued or running")
        return EX_OK
    from seedream_pipe.runner import gone_simulator
    from seedream_pipe.runner.cancel import CANCEL_WHILE_RUNNING
    from seedream_pipe.runner.folder import folder_busy, run_in_progress

    # before the token and the host are asked for: neither is what stands in the way
    pid = run_in_progress(out_dir)
    if pid is not None:
        raise folder_busy(out_dir, pid, CANCEL_WHILE_RUNNING)

    gone = gone_simulator(runs[-1]["api_host"] if runs else None, in_flight)
    if gone:
        # Exit 0 as for any folder with nothing to cancel: the jobs are not queued anywhere, and
        # 69 ("try again later") would send a script retrying a server that will never answer.
        then = (
            "(the built-in simulator of `run --sim` stops with its run, and its jobs with it); simulator "
            "jobs are never billed. The next `run --sim` submits them again."
            if built_in
            else "(a `seedream-pipe sim` that was stopped); simulator jobs are never billed. Started "
            "again, a simulator knows none of them: a run against it fails them (the API no longer "
            "knows them, 404), and `run --retry-failed` makes them again."
        )
        click.echo(
            f"nothing to cancel: the {len(in_flight)} queued or running job(s) of {out_dir} were "
            f"submitted to a simulator at {gone} that is no longer running {then}"
        )
        return EX_OK
    try:
        api = api_settings(base_url)
    except AuthError:
        raise AuthError(
            f"no RunComfy API token found to cancel the {len(in_flight)} queued or running job(s) of "
            f"{out_dir}: set RUNCOMFY_TOKEN, or sign in with the official CLI: `runcomfy login`"
        ) from None
    last_host = runs[-1]["api_host"] if runs else None
    if last_host and last_host != api.host:
        raise UsageError(
            f"the jobs in {out_dir} were sent to {last_host}, but the API configured here is {api.host}; "
            "pass --base-url (or set RUNCOMFY_MODEL_API_BASE) for that host"
        )
    errors: list[str] = []

    def on_done(rec: Any, outcome: str, error: str | None) -> None:
        if outcome == "error":
            errors.append(f"job {rec.job_index} ({rec.job_id}): {error}")

    cancelled, kept = cancel_folder(out_dir, api=api, on_done=on_done)
    for line in errors:
        click.secho(f"error: could not cancel {printable(line)}", fg="red", err=True)
    kept -= len(errors)
    click.echo(f"cancelled {cancelled} queued job(s); {kept} running job(s) kept (the next run downloads them)")
    if errors:
        click.echo(f"{len(errors)} job(s) could not be asked; run `cancel` again when the API answers", err=True)
        return EX_UNAVAILABLE
    return EX_OK


COMMANDS: list[click.Command] = [run_command, status_command, cancel_command]
