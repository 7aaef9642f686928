"""The package used as a library, the way a script or a notebook does."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from seedream_pipe import errors, parse_recipe
from seedream_pipe.config import api_settings
from seedream_pipe.progress import LogProgress, RichProgress
from seedream_pipe.sim import SimConfig, Simulator
from seedream_pipe.words import speaking_to_cli


@pytest.mark.parametrize("send", [lambda e: pickle.loads(pickle.dumps(e)), copy.copy], ids=["pickle", "copy"])
def test_a_recipe_error_comes_back_whole_from_a_worker_process(send: Callable[[errors.RecipeError], errors.RecipeError]) -> None:
    # A recipe loaded in a ProcessPoolExecutor worker sends its RecipeError back pickled: made
    # again from its message, it took the text for its problems, one per character.
    problems = [errors.Problem("r.yaml", "bad", "vars.x", 3, 4), errors.Problem("s.yaml", "worse")]
    exc = errors.RecipeError(problems)
    again = send(exc)
    assert again.problems == problems
    assert str(again) == "r.yaml:3:4: vars.x: bad\ns.yaml: worse"
    assert again.exit_code == errors.EX_DATAERR


def test_api_settings_tells_a_notebook_its_parameter_and_the_simulator_not_the_cli_s_options(tmp_path: Path) -> None:
    # A notebook's api_settings() without a token was told to "add --sim", and a bad base_url
    # was named "--base-url": it has neither option. The CLI's words stay as they were.
    nobody = {"HOME": str(tmp_path)}
    with pytest.raises(errors.AuthError) as no_token:
        api_settings(None, nobody)
    assert "--sim" not in str(no_token.value) and "seedream_pipe.Simulator()" in str(no_token.value)
    with pytest.raises(errors.UsageError, match=r"^base_url: 'ftp://x' is not an http"):
        api_settings("ftp://x", {"RUNCOMFY_TOKEN": "a-token"})
    with speaking_to_cli():
        with pytest.raises(errors.AuthError, match=r"or add --sim to run against the built-in simulator"):
            api_settings(None, nobody)
        with pytest.raises(errors.UsageError, match=r"^--base-url: 'ftp://x' is not an http"):
            api_settings("ftp://x", {"RUNCOMFY_TOKEN": "a-token"})


def _two_runs_of_two_jobs(progress: LogProgress | RichProgress) -> None:
    for _ in range(2):
        progress.event("run_started", {"total": 2, "todo": 2, "actions_text": "2 to submit", "out_dir": "o"})
        for index in range(2):
            progress.event("job_state", {"job_id": "j", "index": index, "state": "submitted"})
            progress.event("job_state", {"job_id": "j", "index": index, "state": "downloaded", "left_flight": True})
        progress.event("run_finished", {})


def test_a_progress_sink_kept_for_a_second_run_counts_that_run_alone() -> None:
    # `progress = LogProgress()` in one cell, given to run after run: the second run's first
    # image was "3/2 done", the live bar went past its end and drew the first run's bar again.
    out = io.StringIO()
    log = LogProgress(out, every=1)
    _two_runs_of_two_jobs(log)
    assert [line for line in out.getvalue().splitlines() if "done" in line] == [
        "1/2 done, 0 failed, 0 in flight", "2/2 done, 0 failed, 0 in flight"
    ] * 2
    bar = RichProgress()
    bar.console.file = io.StringIO()
    _two_runs_of_two_jobs(bar)
    assert [(task.completed, task.total) for task in bar._bar.tasks] == [(2, 2)]
    assert (bar.tally.done, bar.tally.in_flight) == (2, 0)


def test_a_simulator_s_changes_stay_its_own_not_the_config_it_was_given() -> None:
    # cfg = SimConfig(...) in one cell, `with Simulator(cfg) as sim:` in others: one cell's
    # sim.configure(workers=0) (pause the queue) or set_faults(...) was written into cfg, and
    # every simulator made from it afterwards started paused, or failing.
    cfg = SimConfig(latency=0.05)
    with Simulator(cfg) as sim:
        sim.configure(workers=0, token="only-this")
        sim.set_faults(error_rate=0.5)
        assert (sim.cfg.workers, sim.cfg.faults.error_rate) == (0, 0.5)
    assert (cfg.workers, cfg.token, cfg.faults.error_rate) == (SimConfig().workers, None, 0)
    again = Simulator(cfg)
    assert (again.cfg.workers, again.cfg.token, again.cfg.faults.error_rate) == (cfg.workers, None, 0)


@pytest.mark.parametrize("cfg", [{"latency": 0.1}, "fast"])
def test_a_simulator_given_no_sim_config_says_what_it_takes(cfg: object) -> None:
    # Simulator({"latency": 0.1}) ended in dataclasses' "must be called with a dataclass type
    # or instance", naming neither the argument nor what it takes.
    with pytest.raises(errors.UsageError, match=r"takes a SimConfig, not (dict|str)"):
        Simulator(cfg)  # type: ignore[arg-type]


def test_a_recipe_and_its_plan_go_to_a_worker_process_and_back() -> None:
    # ProcessPoolExecutor pickles what it sends: a recipe (or a plan, which holds its recipe)
    # failed with "Can't pickle local object '_result_checked.<locals>.checked'", from the
    # compiled templates it keeps; deepcopy failed too.
    recipe = parse_recipe({"name": "sweep", "template": "{{ a | upper }} {{ b }}", "vars": {"a": ["x", "y"], "b": ["u"]}})
    plan = recipe.plan()
    for again in (pickle.loads(pickle.dumps(plan)), copy.deepcopy(plan)):
        assert [job.as_dict() for job in again] == [job.as_dict() for job in plan]
        assert again.recipe.hash == recipe.hash
        assert [job.prompt for job in again.recipe.plan()] == ["X u", "Y u"]


def test_a_folder_of_a_simulator_run_tells_a_notebook_how_to_go_on_in_its_own_words(tmp_path: Path) -> None:
    # "To go on with the simulator, add --sim": a flag a notebook has no way to pass
    from seedream_pipe.config import ApiSettings
    from seedream_pipe.runner import options_from_recipe, run_recipe

    recipe = parse_recipe('template: "a {{ x }}"\nvars: {x: [fox]}\n', folder=tmp_path)
    with Simulator() as sim:
        assert run_recipe(recipe, api=ApiSettings(sim.base_url, "tok"), out_dir=tmp_path / "out").ok
    elsewhere = ApiSettings("https://model-api.example.com/v1", "tok-real-1234")
    with pytest.raises(errors.UsageError) as refused:
        run_recipe(recipe, api=elsewhere, out_dir=tmp_path / "out", options=options_from_recipe(recipe))
    message = str(refused.value)
    assert "To go on with the simulator, pass its ApiSettings as api=;" in message
    assert "own folder with out_dir" in message and "--" not in message


def test_a_run_its_caller_cancels_is_recorded_as_interrupted(tmp_path: Path) -> None:
    # asyncio.wait_for (or a notebook's interrupt) cancelling arun_recipe left the run with no
    # recorded end: `status` then called it "killed, or its state could not be written"
    import asyncio

    from click.testing import CliRunner

    from seedream_pipe.cli import cli
    from seedream_pipe.config import ApiSettings
    from seedream_pipe.runner import arun_recipe

    recipe = parse_recipe('template: "a {{ x }}"\nvars: {x: [fox, owl]}\n', folder=tmp_path)
    with Simulator(SimConfig(latency=30.0)) as sim:

        async def cancelled() -> None:
            run = arun_recipe(recipe, api=ApiSettings(sim.base_url, "tok"), out_dir=tmp_path / "out")
            await asyncio.wait_for(run, timeout=1.0)

        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(cancelled())
    status = CliRunner().invoke(cli, ["status", str(tmp_path / "out")])
    assert status.exit_code == 0, status.output
    assert "last run: #1 against 127.0.0.1, exit 130" in status.output
