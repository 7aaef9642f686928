"""The run/status/cancel commands as a user types them: bad usage, no token, --dry-run, --sim,
status, cancel, and one run per folder at a time."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from seedream_pipe.cli import cli
from seedream_pipe.jobs import Job
from seedream_pipe.recipe import load_recipe
from seedream_pipe.runner.folder import folder_lock
from seedream_pipe.sim import Faults, SimConfig, Simulator
from seedream_pipe.state import StateStore

# every `run` here at the quick timings: what these tests check is what the commands say and do
pytestmark = pytest.mark.usefixtures("quick_runs")

RECIPE = """\
name: c
template: "{{ thing }}"
vars:
  thing: [a teapot, a comet]
resolutions: [1K]
run: {rpm: 6000, concurrency: 2}
price_per_image: 0.5
"""


@pytest.fixture(autouse=True)
def no_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("RUNCOMFY_TOKEN", "RUNCOMFY_API_TOKEN", "RUNCOMFY_MODEL_API_BASE", "RUNCOMFY_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(RECIPE, encoding="utf-8")
    return path


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False, standalone_mode=False)
    return result.return_value, result.stdout, result.stderr


def test_no_token_and_no_sim_says_both_ways_and_exits_77(recipe: Path, tmp_path: Path) -> None:
    code, _, err = invoke("run", str(recipe), "--out", str(tmp_path / "o"))
    assert code == 77
    assert "RUNCOMFY_TOKEN" in err and "runcomfy login" in err and "--sim" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "extra",
    [
        ["--quiet", "--json"], ["--sim", "--base-url", "http://127.0.0.1:1/v1"], ["--rpm", "0"],
        ["--concurrency", "1001"],  # (what a recipe's run.concurrency may be, at most)
    ],
)
def test_contradictory_or_bad_options_exit_64(recipe: Path, extra: list[str]) -> None:
    code, _, err = invoke("run", str(recipe), *extra)
    assert code == 64
    assert "Traceback" not in err


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
@pytest.mark.parametrize("rpm", ["nan", "inf"])
def test_an_rpm_that_is_no_number_exits_64_even_with_nothing_to_send(
    recipe: Path, tmp_path: Path, rpm: str, dry: list[str]
) -> None:
    # (click's FloatRange lets nan and inf through; the run refused them only when it had work)
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out), "--quiet")[0] == 0  # all done
    code, _, err = invoke("run", str(recipe), "--sim", "--out", str(out), "--rpm", rpm, *dry)
    assert code == 64, err
    assert f"rpm must be a number above 0, not {rpm}" in err


def test_a_bad_base_url_exits_64(recipe: Path) -> None:
    code, _, err = invoke("run", str(recipe), "--base-url", "not a url", env={"RUNCOMFY_TOKEN": "t"})
    assert code == 64
    assert "--base-url" in err


def test_a_base_url_with_a_user_and_password_is_refused_before_anything_is_recorded(
    recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    for url in ("http://user:pw-secret@127.0.0.1:1/v1", "https://user@model-api.runcomfy.net/v1"):
        code, _, err = invoke("run", str(recipe), "--base-url", url, "--out", str(out), env={"RUNCOMFY_TOKEN": "t"})
        assert code == 64, err
        assert "carries a user name or password" in err and "Traceback" not in err
    assert not out.exists()  # no job marked as being submitted, nothing to resume as unknown


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/v1?x=1", "https://model-api.runcomfy.net/v1#top", "https://h/v1?"])
def test_a_base_url_with_a_query_or_fragment_is_refused_before_anything_is_recorded(
    recipe: Path, tmp_path: Path, url: str
) -> None:
    # (the paths appended after it would be part of the query: every submit a 404, "unknown model")
    out = tmp_path / "o"
    code, _, err = invoke("run", str(recipe), "--base-url", url, "--out", str(out), env={"RUNCOMFY_TOKEN": "t"})
    assert code == 64, err
    assert "query or fragment" in err and "Traceback" not in err
    assert not out.exists()


def test_dry_run_says_what_would_happen_without_writing(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, stdout, _ = invoke("run", str(recipe), "--out", str(out), "--dry-run")
    assert code == 0
    assert "2 jobs in the plan" in stdout
    assert "submit: 2" in stdout
    assert "$1.00" in stdout
    assert not out.exists()


def test_a_recipe_reached_through_a_linked_folder_runs_into_the_folder_its_output_means(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `output: ../out/r` of links/r.yaml, links being a link to recipes/: tidied as text it was
    # ./out/r, where the system (and the recipe's var files and bases) read recipes/../out/r;
    # run as recipes/r.yaml and as links/r.yaml, the same recipe paid for every job twice
    (tmp_path / "work" / "recipes").mkdir(parents=True)
    (tmp_path / "work" / "recipes" / "r.yaml").write_text(RECIPE + "output: ../out/r\n", encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "links").symlink_to(tmp_path / "work" / "recipes")
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, stdout, err = invoke("run", "links/r.yaml", "--dry-run")
    assert code == 0, err
    assert stdout.startswith(f"2 jobs in the plan; output folder {tmp_path / 'work' / 'out' / 'r'}\n"), stdout
    # a folder an earlier version ran it into, beside the link, is not left behind unsaid
    (tmp_path / "elsewhere" / "out" / "r").mkdir(parents=True)
    (tmp_path / "elsewhere" / "out" / "r" / "state.sqlite").write_bytes(b"")
    code, _, err = invoke("run", "links/r.yaml", "--dry-run")
    assert code == 64 and f"earlier versions ran it into {tmp_path / 'elsewhere' / 'out' / 'r'}. Move that folder" in err
    code, _, err = invoke("run", "links/r.yaml", "--dry-run", "--out", "out/r")
    assert code == 0, err


def test_run_and_status_name_a_recipes_output_folder_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (the recipe keeps it absolute, for a notebook's `%cd`: what the commands print stays short)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "c.yaml").write_text(RECIPE + "output: ../runs/../out/x\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = invoke("run", "recipes/c.yaml", "--dry-run")
    assert code == 0
    assert stdout.startswith("2 jobs in the plan; output folder out/x\n")
    code, _, err = invoke("status", "recipes/c.yaml")
    assert code == 66 and err.startswith("error: out/x: no run has written here yet"), err


def test_status_of_a_folder_with_no_run_exits_66(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = invoke("status", str(tmp_path / "empty"))
    assert code == 66
    assert "no run has written here yet" in err and "default folder" not in err


@pytest.mark.parametrize("points_to", ["loop", "nowhere"])
def test_status_of_a_recipe_whose_out_is_a_link_to_no_folder_says_so(tmp_path: Path, points_to: str) -> None:
    # "no run has written here yet (run it first: seedream-pipe run ... --out loop)", and that
    # run is refused: the link leads nowhere a run can write
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    (tmp_path / "loop").symlink_to(tmp_path / points_to)
    code, _, err = invoke("status", str(recipe), "--out", str(tmp_path / "loop"))
    assert code == 66
    assert err == f"error: {tmp_path / 'loop'}: a symbolic link to no folder (to nothing, or back to itself): no run has written there, nor can one\n"


def test_status_sheet_and_report_of_a_0_byte_state_write_nothing(tmp_path: Path) -> None:
    # A run cut short before its first commit leaves a 0-byte state.sqlite; status (and sheet,
    # report) filled the schema into it: 49 kB written by commands that only read.
    out = tmp_path / "o"
    out.mkdir()
    (out / "state.sqlite").write_bytes(b"")
    code, stdout, _ = invoke("status", str(out))
    assert code == 0 and "0 jobs" in stdout
    for command in ("sheet", "report"):
        code, _, err = invoke(command, str(out))
        assert code == 66 and "holds no jobs" in err, err
    assert [(p.name, p.stat().st_size) for p in out.iterdir()] == [("state.sqlite", 0)]


@pytest.mark.parametrize("command", ["status", "cancel"])
def test_status_and_cancel_of_a_folder_never_run_say_it_as_sheet_does(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    # status said "outputs/c: no run here yet (no state.sqlite) (the default folder is ...);
    # start one with `seedream-pipe run`", sheet/report/gallery "outputs/c: no run has written
    # here yet (run it first: seedream-pipe run c.yaml)": one folder, two ways, one naming no recipe
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for target in (str(recipe), "empty"):
        code, _, err = invoke(command, target)
        said_by_sheet = CliRunner().invoke(cli, ["sheet", target]).stderr.strip()
        assert code == 66 and said_by_sheet.startswith("error: ")
        assert err.startswith(said_by_sheet), (err, said_by_sheet)


def test_status_of_a_recipe_never_run_here_says_where_its_default_folder_is(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not where a run happened
    code, _, err = invoke("status", str(recipe))
    assert code == 66
    assert "the default folder is outputs/c/ in the folder `run` ran from; or pass --out" in err


def test_run_with_sim_then_nothing_to_do_then_status(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out))
    assert code == 0
    assert "2 jobs: 2 done" in stdout
    outputs = ["report.csv", "contact_sheet.png", "gallery.html", "manifest.json"]
    assert f"wrote {', '.join(outputs)} in {out}" in stdout
    assert all((out / name).is_file() for name in outputs)
    (out / "report.csv").unlink()
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out))
    assert code == 0
    assert "Nothing to do" in stdout
    assert (out / "report.csv").is_file()  # outputs are remade even when no job is left
    code, stdout, _ = invoke("status", str(out))
    assert code == 0
    assert "downloaded      2" in stdout
    assert "exit 0" in stdout


def test_status_says_when_a_done_jobs_image_file_is_gone(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    first = sorted((out / "images").iterdir())[0]
    first.unlink()
    code, stdout, _ = invoke("status", str(out))
    assert code == 0
    assert "done, but the image file is not on disk as downloaded: 1 (1 missing); `run` fetches them again" in stdout
    code, stdout, _ = invoke("status", str(out), "--json")
    assert json.loads(stdout)["image_files_off_disk"] == {"missing": 1}
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    assert "not on disk" not in invoke("status", str(out))[1]


def test_status_of_an_edited_recipe_says_what_its_plan_adds_and_drops(recipe: Path, tmp_path: Path) -> None:
    # it described the last run only: "2 jobs, downloaded 2" for a recipe now planning more
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    recipe.write_text(RECIPE.replace("[a teapot, a comet]", "[a comet, a kite, a bell]"), encoding="utf-8")
    code, stdout, _ = invoke("status", str(recipe), "--out", str(out))
    assert code == 0
    assert (
        f"the recipe as it is now plans 3 jobs: 2 not run yet, 1 of the jobs above no longer in it; "
        f"`seedream-pipe run {recipe} --sim --out {out}` brings the folder up to date"
    ) in stdout  # (--sim: without it the run would be refused, the folder being a simulator's)
    code, stdout, _ = invoke("status", str(recipe), "--out", str(out), "--json")
    assert json.loads(stdout)["recipe_now"] == {"jobs": 3, "not_run_yet": 2, "no_longer_planned": 1}
    assert "recipe as it is now" not in invoke("status", str(out))[1]  # a folder alone: no recipe to compare


def test_dry_run_with_sim_says_an_earlier_simulators_jobs_are_submitted_again(recipe: Path, tmp_path: Path) -> None:
    # `run --sim` starts a new simulator: it knows no request id an earlier one handed out
    out = tmp_path / "o"
    out.mkdir()
    with StateStore.for_output_dir(out) as store:
        store.sync_plan(load_recipe(recipe).plan().jobs)
        first = store.jobs()[0]
        store.transition(first.job_id, "in_progress", request_id="r-from-a-gone-sim")
    code, stdout, _ = invoke("run", str(recipe), "--out", str(out), "--dry-run", "--sim")
    assert code == 0
    assert "resubmit: 1" in stdout and "poll" not in stdout
    code, stdout, _ = invoke("run", str(recipe), "--out", str(out), "--dry-run", env={"RUNCOMFY_TOKEN": "t"})
    assert code == 0 and "poll: 1" in stdout  # (another API still knows its request ids)


def test_dry_run_notes_a_run_at_work_in_the_folder(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    with folder_lock(out):  # what a run holds while it works
        code, stdout, err = invoke("run", str(recipe), "--sim", "--out", str(out), "--dry-run")
    assert code == 0 and "submit: 2" in stdout
    assert f"note: a run (pid {os.getpid()}) is at work in {out} now" in err
    assert "is at work" not in invoke("run", str(recipe), "--sim", "--out", str(out), "--dry-run")[2]


def test_load_recipe_given_the_text_of_a_recipe_says_it_takes_a_path() -> None:
    from seedream_pipe.errors import RecipeError

    with pytest.raises(RecipeError, match="takes the path of a recipe file, not its text") as info:
        load_recipe(RECIPE)
    assert "a teapot" not in str(info.value)  # the text is not echoed back as a file name


def test_status_counts_a_job_never_sent_as_not_run_and_survives_a_recipe_that_no_longer_plans(
    recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out), "--limit", "1")[0] == 0  # a comet: never sent
    recipe.write_text(RECIPE.replace("[a teapot, a comet]", "[a teapot]"), encoding="utf-8")
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0  # the comet leaves the plan
    recipe.write_text(RECIPE, encoding="utf-8")  # and comes back: it was never run
    code, stdout, _ = invoke("status", str(recipe), "--out", str(out), "--json")
    assert json.loads(stdout)["recipe_now"] == {"jobs": 2, "not_run_yet": 1, "no_longer_planned": 0}
    # loads, but fails to plan: "a teapot" has 8 characters
    recipe.write_text(RECIPE.replace("{{ thing }}", "{{ thing }} {{ 10 // (thing|length - 8) }}"), encoding="utf-8")
    code, stdout, err = invoke("status", str(recipe), "--out", str(out))
    assert code == 0 and f"{out}: 1 job\n" in stdout and "downloaded      1" in stdout
    assert "the recipe as it is now does not plan" in err and "ZeroDivisionError" in err


def test_a_finished_recipe_needs_no_token_and_says_so_in_json_too(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    with Simulator(SimConfig(latency=0.01, token="tok")) as api:  # stands for the real API
        base = api.base_url.replace("127.0.0.1", "localhost")  # another host than --sim's
        assert invoke("run", str(recipe), "--out", str(out), "--base-url", base, env={"RUNCOMFY_TOKEN": "tok"})[0] == 0
    # the API is gone and no token is set (a make target on another machine): nothing is missing,
    # so nothing is asked of either
    no_token = {"RUNCOMFY_TOKEN": "", "RUNCOMFY_API_TOKEN": "", "RUNCOMFY_CONFIG_DIR": str(tmp_path / "none")}
    code, stdout, err = invoke("run", str(recipe), "--out", str(out), "--base-url", base, env=no_token)
    assert (code, err) == (0, "")
    assert "Nothing to do" in stdout
    for where in (["--base-url", base], ["--sim"]):
        if where == ["--sim"]:
            out = tmp_path / "s"
            assert invoke("run", str(recipe), "--out", str(out), "--sim")[0] == 0
        code, stdout, _ = invoke("run", str(recipe), "--out", str(out), *where, "--json", env=no_token)
        events = [json.loads(line) for line in stdout.splitlines()]
        assert [e["event"] for e in events] == ["run_started", "run_finished"]
        assert events[0]["todo"] == 0 and events[0]["total"] == 2
        assert events[1]["exit_code"] == 0 and events[1]["summary"]["jobs_downloaded"] == 2
        assert events[1]["reason"] is None  # the same shape as a run that did something
        assert "report.csv" in events[1]["outputs"] and events[1]["out_dir"] == str(out)
        assert events[1]["summary"]["http_requests"] == 0
    # a finished folder of another API is still refused, as a run with work to do would be
    code, _, err = invoke("run", str(recipe), "--out", str(tmp_path / "s"), "--base-url", base, env=no_token)
    assert code == 64 and "holds the jobs of a run against 127.0.0.1" in err
    assert "a simulator on this machine" in err and "add --sim" in err  # the way to go on with it


def test_a_folder_whose_only_unfinished_jobs_failed_needs_no_token(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    no_token = {"RUNCOMFY_TOKEN": "", "RUNCOMFY_API_TOKEN": "", "RUNCOMFY_CONFIG_DIR": str(tmp_path / "none")}
    with Simulator(SimConfig(latency=0.01, token="tok", faults=Faults(job_fail_rate=1.0))) as api:
        run = ["run", str(recipe), "--out", str(out), "--base-url", api.base_url]
        assert invoke(*run, env={"RUNCOMFY_TOKEN": "tok"})[0] == 1
        sent = api.stats()["requests_total"]
        # without --retry-failed nothing would be sent, so no token is asked for (a make target on
        # a machine without one): the failures are said, and the exit is 1, as with a token
        code, stdout, err = invoke(*run, env=no_token)
        assert code == 1 and "2 jobs: 0 done, 2 failed" in stdout
        assert "2 job(s) failed" in err and "RUNCOMFY_TOKEN" not in err
        code, stdout, _ = invoke(*run, "--json", env=no_token)
        assert code == 1 and json.loads(stdout.splitlines()[-1])["exit_code"] == 1
        assert api.stats()["requests_total"] == sent
        # sending them again is what needs a token
        code, _, err = invoke(*run, "--retry-failed", env=no_token)
        assert code == 77 and "RUNCOMFY_TOKEN" in err
        assert api.stats()["requests_total"] == sent


def test_a_recipe_edited_during_the_run_leaves_outputs_older_than_the_edit(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A make target (report.csv, say) written after the edit would pass for the edited recipe's,
    # though its new combinations never ran: make would not run it again.
    from seedream_pipe.runner import entry

    out = tmp_path / "o"
    outputs = ["report.csv", "contact_sheet.png", "gallery.html", "manifest.json"]
    write_outputs = entry.write_outputs
    edit: list[str] = [RECIPE.replace("a comet]", "a comet, a kite]")]  # saved in an editor meanwhile

    def edited_meanwhile(out_dir: Path, the_recipe: object) -> list[Path]:
        if edit:
            recipe.write_text(edit.pop(), encoding="utf-8")
        return write_outputs(out_dir, the_recipe)  # type: ignore[arg-type]

    def older_than_the_recipe() -> bool:
        return all((out / name).stat().st_mtime_ns < recipe.stat().st_mtime_ns for name in outputs)

    monkeypatch.setattr(entry, "write_outputs", edited_meanwhile)  # (where the run calls it)
    code, stdout, err = invoke("run", str(recipe), "--sim", "--quiet", "--out", str(out))
    assert (code, stdout) == (0, "")
    assert f"warning: {recipe} changed during the run; run it again to do the new plan" in err
    assert older_than_the_recipe()
    # so make runs it again, and that run does the new plan
    code, stdout, err = invoke("run", str(recipe), "--sim", "--out", str(out))
    assert code == 0 and "3 jobs: 3 done" in stdout and "changed" not in err
    assert not older_than_the_recipe()
    # an edit while a finished recipe's outputs are rewritten, with --json: a message, as a run's
    edit.append(RECIPE)
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--json", "--out", str(out))
    events = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and events[-1]["summary"]["http_requests"] == 0
    assert [e["text"] for e in events if e["event"] == "message"] == [
        f"warning: {recipe} changed during the run; run it again to do the new plan (the outputs written are "
        "of the recipe as it was read, and dated before the change so that make runs it again)"
    ]
    assert older_than_the_recipe()


def test_a_second_run_on_a_folder_in_use_is_refused(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    with folder_lock(out):
        code, _, err = invoke("run", str(recipe), "--out", str(out), env={"RUNCOMFY_TOKEN": "t", "RUNCOMFY_MODEL_API_BASE": "http://127.0.0.1:9/v1"})
    assert code == 75  # (a moment's wait, not a mistake: make -j may try it again)
    assert "in use by another run" in err


@pytest.fixture
def paused_sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(workers=0, latency=0.01, token="tok")) as sim:  # accepts, never runs
        yield sim


def submitted_by_an_earlier_run(recipe: Path, out: Path, base_url: str, token: str) -> None:
    """A folder whose run (against 127.0.0.1) submitted every job of `recipe` to `base_url`."""
    out.mkdir()
    plan = load_recipe(recipe).plan()
    with StateStore.for_output_dir(out) as store:
        store.sync_plan(plan.jobs)
        store.start_run(api_host="127.0.0.1")
        for job in plan.jobs:
            answer = httpx.post(
                f"{base_url}/models/{job.model}", json=dict(job.inputs), headers={"Authorization": f"Bearer {token}"}
            ).json()
            store.transition(
                job.job_id, "submitted", request_id=answer["request_id"],
                status_url=answer["status_url"], cancel_url=answer["cancel_url"],
            )


def test_cancel_cancels_the_queued_jobs_of_an_earlier_run(paused_sim: Simulator, recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    submitted_by_an_earlier_run(recipe, out, paused_sim.base_url, "tok")
    # a folder whose jobs went to another host is not cancelled against this one
    code, _, err = invoke("cancel", str(out), "--base-url", "http://localhost:9/v1", env={"RUNCOMFY_TOKEN": "tok"})
    assert code == 64
    assert "were sent to 127.0.0.1" in err
    code, stdout, _ = invoke("cancel", str(out), "--base-url", paused_sim.base_url, env={"RUNCOMFY_TOKEN": "tok"})
    assert code == 0
    assert "cancelled 2 queued job(s)" in stdout
    assert paused_sim.stats()["cancelled"] == 2
    with StateStore.for_output_dir(out) as store:
        assert store.counts()["cancelled"] == 2


def test_cancel_refuses_a_folder_a_run_is_working_in(paused_sim: Simulator, recipe: Path, tmp_path: Path) -> None:
    # the run would take the jobs cancelled under it as finished, and exit 0 with holes
    out = tmp_path / "o"
    submitted_by_an_earlier_run(recipe, out, paused_sim.base_url, "tok")
    with folder_lock(out):  # what a run holds while it works
        code, _, err = invoke("cancel", str(out), "--base-url", paused_sim.base_url, env={"RUNCOMFY_TOKEN": "tok"})
        # said first, whatever else is missing: it asked for a token, then for the host (review)
        no_token = {"RUNCOMFY_TOKEN": "", "RUNCOMFY_API_TOKEN": "", "RUNCOMFY_CONFIG_DIR": str(tmp_path / "none")}
        code_without, _, err_without = invoke("cancel", str(out), env=no_token)
    assert code == 75
    assert f"in use by another run (pid {os.getpid()}, this same process" in err and f"kill -INT {os.getpid()}" in err
    assert code_without == 75 and f"in use by another run (pid {os.getpid()}" in err_without
    assert paused_sim.stats()["cancelled"] == 0


def test_cancel_after_a_killed_sim_run_says_its_simulator_is_gone(recipe: Path, tmp_path: Path) -> None:
    # What a `run --sim` killed with SIGKILL leaves: jobs in flight at the address of a simulator
    # that lived in the killed process.
    out = tmp_path / "o"
    sim = Simulator(SimConfig(workers=0)).start()
    try:
        submitted_by_an_earlier_run(recipe, out, sim.base_url, "x")
        address = sim.base_url.removeprefix("http://").removesuffix("/v1")
        code, _, err = invoke("cancel", str(out))  # still running: cancel goes on to need a token
        assert code == 77
        assert "RUNCOMFY_TOKEN" in err
    finally:
        sim.stop()
    code, stdout, err = invoke("cancel", str(out))
    assert code == 0
    assert stdout == (
        f"nothing to cancel: the 2 queued or running job(s) of {out} were submitted to a simulator at "
        f"{address} that is no longer running (the built-in simulator of `run --sim` stops with its run, "
        "and its jobs with it); simulator jobs are never billed. The next `run --sim` submits them again.\n"
    )
    assert err == ""
    with StateStore.for_output_dir(out) as store:
        assert store.counts()["submitted"] == 2  # nothing was asked, nothing recorded


def test_cancel_after_a_stopped_seedream_pipe_sim_says_what_a_restarted_one_does(recipe: Path, tmp_path: Path) -> None:
    # It said "the next `run --sim` submits them again" of jobs a run sent with --base-url to a
    # `seedream-pipe sim`, which a restarted sim answers 404 for.
    from seedream_pipe.runner.folder import LAST_API

    out = tmp_path / "o"
    sim = Simulator(SimConfig(workers=0)).start()
    try:
        submitted_by_an_earlier_run(recipe, out, sim.base_url, "x")
        with StateStore.for_output_dir(out) as store:
            store.set_meta(LAST_API, {"base_url": sim.base_url, "built_in_simulator": False})
    finally:
        sim.stop()
    code, stdout, _ = invoke("cancel", str(out))
    assert code == 0
    assert "that is no longer running (a `seedream-pipe sim` that was stopped)" in stdout
    assert "`run --retry-failed` makes them again" in stdout and "run --sim" not in stdout


@pytest.mark.parametrize(
    ("variable", "said"),
    [
        ("RUNCOMFY_TOKEN", "RUNCOMFY_TOKEN; it is used before RUNCOMFY_API_TOKEN and the token of `runcomfy login`."),
        ("RUNCOMFY_API_TOKEN", "RUNCOMFY_API_TOKEN; it is used before the token of `runcomfy login`."),
    ],
)
def test_a_run_stopped_by_a_refused_token_says_it_resumes_once_that_is_fixed(
    recipe: Path, tmp_path: Path, variable: str, said: str
) -> None:
    sim = Simulator(SimConfig(latency=0.05, latency_jitter=0.0, faults=Faults(revoke_after=1))).start()
    try:
        code, _, err = invoke(
            "run", str(recipe), "--out", str(tmp_path / "o"), "--base-url", sim.base_url, env={variable: "tok"}
        )
    finally:
        sim.stop()
    assert code == 77
    # said once, at the end with its fix (the run stops at once: no "stopping submits" line first)
    assert err.count("refused the token") == 1
    assert "Check the token or sign in again" in err and "given in code" not in err  # (the CLI's words)
    assert f"Fix that, then run the same command: it resumes where it stopped ({tmp_path / 'o'})." in err
    # which token was sent: a stale variable set long ago beats a fresh `runcomfy login`
    assert err.rstrip().endswith(f"The token sent was read from {said}")
    assert "tok\n" not in err and "'tok'" not in err


def test_cancel_with_nothing_in_flight_needs_no_token(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    code, stdout, _ = invoke("cancel", str(out))  # no token, no network: nothing to ask the API
    assert code == 0
    assert "nothing to cancel" in stdout


def test_cancel_without_a_token_does_not_suggest_sim(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    job = load_recipe(recipe).plan().jobs[0]
    with StateStore.for_output_dir(out) as store:
        store.sync_plan([job])
        store.transition(job.job_id, "submitted", request_id="r1")
    code, _, err = invoke("cancel", str(out))
    assert code == 77
    assert "RUNCOMFY_TOKEN" in err and "--sim" not in err


def test_status_and_cancel_show_server_text_with_control_characters_escaped(
    paused_sim: Simulator, recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    out.mkdir()
    first, second = load_recipe(recipe).plan().jobs
    with StateStore.for_output_dir(out) as store:
        store.sync_plan([first, second])
        store.start_run(api_host="127.0.0.1")
        store.transition(first.job_id, "failed", error="boom\x1b[2J\x1b]0;owned\x07\rdone")
        store.transition(second.job_id, "submitted", request_id="unknown\x1b[2J")
    result = CliRunner().invoke(cli, ["status", str(out)], color=True)  # as on a terminal
    assert result.exit_code == 0
    assert "\x1b" not in result.stdout and "\r" not in result.stdout and "\x07" not in result.stdout
    assert "boom\\x1b[2J\\x1b]0;owned\\x07\\rdone" in result.stdout
    result = CliRunner().invoke(
        cli, ["cancel", str(out), "--base-url", paused_sim.base_url], env={"RUNCOMFY_TOKEN": "tok"}, color=True
    )
    assert "could not cancel job 2" in result.stderr
    assert "\x1b[2J" not in result.stderr and "unknown\\x1b[2J" in result.stderr


def test_quiet_prints_no_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(RECIPE + "sheet: {rows: [], cols: [resolution]}\n", encoding="utf-8")  # `thing` on no side
    code, stdout, err = invoke("run", str(path), "--sim", "--quiet", "--out", str(tmp_path / "o"))
    assert code == 0
    assert stdout == "" and err == ""
    assert not caplog.records  # a warning would reach stderr through logging's last resort
    invoke("run", str(path), "--sim", "--out", str(tmp_path / "o2"))
    assert "is on no side of the sheet" in caplog.text  # without --quiet the warning is shown


@pytest.mark.parametrize("quiet", [["--quiet"], []])
def test_failed_jobs_are_said_with_what_to_do_quiet_or_not(recipe: Path, tmp_path: Path, quiet: list[str]) -> None:
    with Simulator(SimConfig(latency=0.01, token="tok", faults=Faults(job_fail_rate=1.0))) as sim:
        code, stdout, err = invoke(
            "run", str(recipe), *quiet, "--out", str(tmp_path / "o"), "--base-url", sim.base_url,
            env={"RUNCOMFY_TOKEN": "tok"},
        )
    assert code == 1
    assert (stdout == "") == bool(quiet)
    assert "2 job(s) failed" in err and "seedream-pipe status" in err and "--retry-failed" in err
    if quiet:  # a make log has nothing else: the reasons are named there
        assert err.count("generation failed") == 2 and "  job 1 (" in err
    # the hint to retry is not given to a run that just did
    with Simulator(SimConfig(latency=0.01, token="tok", faults=Faults(job_fail_rate=1.0))) as sim:
        code, _, err = invoke(
            "run", str(recipe), *quiet, "--retry-failed", "--out", str(tmp_path / "o"), "--base-url", sim.base_url,
            env={"RUNCOMFY_TOKEN": "tok"},
        )
    assert code == 1 and "2 job(s) failed" in err and "--retry-failed" not in err


def test_the_commands_run_and_status_suggest_are_pasteable_with_a_space_in_a_path(tmp_path: Path) -> None:
    # they read `seedream-pipe run my dir/c.yaml --sim --out out dir` and `seedream-pipe status
    # out dir`: pasted, the shell split each path in two (`init` quotes its next command)
    import shlex

    (tmp_path / "my dir").mkdir()
    recipe = tmp_path / "my dir" / "c.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    out = tmp_path / "out dir"
    with Simulator(SimConfig(latency=0.01, token="tok", faults=Faults(job_fail_rate=1.0))) as sim:
        base_url = sim.base_url
        code, _, err = invoke("run", str(recipe), "--out", str(out), "--base-url", base_url,
                              env={"RUNCOMFY_TOKEN": "tok"})
    assert code == 1
    said = err.split("`seedream-pipe status ", 1)[1].split("`", 1)[0]
    assert shlex.split(said) == [str(out)]
    recipe.write_text(RECIPE.replace("[a teapot, a comet]", "[a teapot, a comet, a kite]"), encoding="utf-8")
    code, stdout, _ = invoke("status", str(recipe), "--out", str(out))
    assert code == 0
    command = stdout.split("`seedream-pipe run ", 1)[1].split("`", 1)[0]
    assert shlex.split(command) == [str(recipe), "--base-url", base_url, "--out", str(out)]


def test_a_base_url_without_its_version_is_named_as_the_likely_cause(recipe: Path, tmp_path: Path) -> None:
    with Simulator(SimConfig(latency=0.01, token="tok")) as sim:
        bare = sim.base_url.removesuffix("/v1")
        code, _, err = invoke(
            "run", str(recipe), "--out", str(tmp_path / "o"), "--base-url", bare, env={"RUNCOMFY_TOKEN": "tok"}
        )
    assert code == 65
    assert f"{bare} does not end in /v1" in err
    assert "Fix that, then run the same command" in err and "Run the same command again" not in err


def test_https_to_the_simulators_plain_port_stops_at_once_and_says_to_fix_it(recipe: Path, tmp_path: Path) -> None:
    # every try fails the same way: it used to be retried for 26 s, then said "run again"
    with Simulator(SimConfig(latency=0.01, token="tok")) as sim:
        https = sim.base_url.replace("http://", "https://", 1)
        code, _, err = invoke(
            "run", str(recipe), "--out", str(tmp_path / "o"), "--base-url", https, env={"RUNCOMFY_TOKEN": "tok"}
        )
        assert sim.stats()["submits_accepted"] == 0
    assert code == 69
    assert "WRONG_VERSION_NUMBER" in err and "not retried" in err
    assert "Fix that, then run the same command" in err and "Run the same command again" not in err


def test_a_host_name_that_does_not_exist_stops_at_once_and_says_to_fix_it(recipe: Path, tmp_path: Path) -> None:
    # (.invalid never resolves, RFC 2606) it used to be retried, one line a try, for 25 s
    code, _, err = invoke(
        "run", str(recipe), "--out", str(tmp_path / "o"), "--base-url", "https://model-api.runcomfy.invalid/v1",
        env={"RUNCOMFY_TOKEN": "tok"},
    )
    assert code == 69
    assert "cannot find the host model-api.runcomfy.invalid" in err and "not retried" in err
    assert "retry in" not in err and "Fix that, then run the same command" in err


def test_a_run_that_never_reached_its_mistyped_host_does_not_bind_the_folder_to_it(
    recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    with Simulator(SimConfig(latency=0.01, token="tok")) as sim:
        wrong = sim.base_url.replace("http://127.0.0.1", "https://localhost", 1)  # https: no answer
        code, _, _ = invoke("run", str(recipe), "--out", str(out), "--base-url", wrong, env={"RUNCOMFY_TOKEN": "tok"})
        assert code == 69
        # it said "holds the jobs of a run against localhost" and refused, though no job got anywhere
        code, _, err = invoke("run", str(recipe), "--out", str(out), "--base-url", sim.base_url, env={"RUNCOMFY_TOKEN": "tok"})
        assert code == 0, err
        # a folder whose jobs did reach an API is still held to it
        code, _, err = invoke("run", str(recipe), "--out", str(out), "--base-url", wrong, env={"RUNCOMFY_TOKEN": "tok"})
    assert code == 64 and "holds the jobs of a run against 127.0.0.1" in err


def test_run_and_dry_run_show_the_plans_warnings_as_plan_does(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"  # two labels of one value: the same body, merged into one job
    path.write_text('template: "a fox {{ a }}"\nvars:\n  a:\n    - x: in snow\n    - y: in snow\n', encoding="utf-8")
    merged = "warning: 1 job(s) had the same request body as an earlier job and were merged into it"
    code, stdout, err = invoke("run", str(path), "--sim", "--out", str(tmp_path / "o"))
    assert code == 0 and merged in err
    assert "1 job: 1 done" in stdout
    code, _, err = invoke("run", str(path), "--sim", "--out", str(tmp_path / "o2"), "--dry-run")
    assert code == 0 and merged in err
    code, _, err = invoke("run", str(path), "--sim", "--out", str(tmp_path / "o3"), "--quiet")
    assert code == 0 and err == ""


def test_an_output_folder_that_is_a_file_says_so(recipe: Path, tmp_path: Path) -> None:
    (tmp_path / "o").write_text("not a folder", encoding="utf-8")
    code, _, err = invoke("run", str(recipe), "--sim", "--out", str(tmp_path / "o"))
    assert code == 73
    assert "is a file, not a folder" in err


def test_a_folder_run_against_one_api_is_not_taken_as_done_by_another(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0  # the simulator, on 127.0.0.1
    with Simulator(SimConfig(latency=0.01, token="tok")) as other:  # stands for the real API
        base = other.base_url.replace("127.0.0.1", "localhost")
        code, _, err = invoke("run", str(recipe), "--out", str(out), "--base-url", base, env={"RUNCOMFY_TOKEN": "tok"})
        assert code == 64
        assert "holds the jobs of a run against 127.0.0.1" in err and "--out" in err
        # a dry run says the same, rather than a plan the real run would refuse (no token needed)
        code, stdout, err = invoke("run", str(recipe), "--out", str(out), "--base-url", base, "--dry-run", env={})
        assert (code, stdout) == (64, "")
        assert "holds the jobs of a run against 127.0.0.1" in err
        code, _, err = invoke("run", str(recipe), "--out", str(out), "--sim", "--dry-run")
        assert code == 0, err  # the same simulator host: the plan, as before
        code, _, _ = invoke("run", str(recipe), "--out", str(tmp_path / "o2"), "--base-url", base, env={"RUNCOMFY_TOKEN": "tok"})
        assert code == 0
        assert other.stats()["submits_accepted"] == 2


def test_cancel_that_the_api_refuses_is_an_error_not_kept(paused_sim: Simulator, recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    job = load_recipe(recipe).plan().jobs[0]
    with StateStore.for_output_dir(out) as store:
        store.sync_plan([job])
        store.start_run(api_host="127.0.0.1")
        store.transition(job.job_id, "submitted", request_id="unknown-to-the-api")
    code, stdout, err = invoke("cancel", str(out), "--base-url", paused_sim.base_url, env={"RUNCOMFY_TOKEN": "tok"})
    assert code == 69
    assert "could not cancel job 1" in err and "404" in err
    assert "0 running job(s) kept" in stdout


def run_json(recipe: Path, out: Path, token: str) -> tuple[int, str]:
    """`run --json` against a simulator that takes the token "tok": (exit code, stdout)."""
    with Simulator(SimConfig(workers=2, latency=0.01, token="tok")) as sim:
        code, stdout, _ = invoke(
            "run", str(recipe), "--base-url", sim.base_url, "--out", str(out), "--json", env={"RUNCOMFY_TOKEN": token}
        )
    return code, stdout


def test_json_prints_one_event_per_line(recipe: Path, tmp_path: Path) -> None:
    code, stdout = run_json(recipe, tmp_path / "o", "tok")
    assert code == 0
    events = [json.loads(line) for line in stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert events[0]["total"] == 2 and events[0]["todo"] == 2
    done = [e for e in events if e["event"] == "job_state" and e["state"] == "downloaded"]
    assert len(done) == 2 and all(e["job_id"] and e["index"] for e in done)
    assert events[-1]["exit_code"] == 0 and events[-1]["summary"]["jobs_downloaded"] == 2
    assert events[-1]["reason"] is None
    # what it wrote, written before this last line, named from the output folder
    assert events[-1]["out_dir"] == str(tmp_path / "o")
    assert set(events[-1]["outputs"]) == {"contact_sheet.png", "report.csv", "gallery.html", "manifest.json"}
    assert all((tmp_path / "o" / name).is_file() for name in events[-1]["outputs"])


def test_json_run_finished_says_why_a_run_stopped(recipe: Path, tmp_path: Path) -> None:
    code, stdout = run_json(recipe, tmp_path / "o", "not-the-token")
    assert code == 77
    finished = json.loads(stdout.splitlines()[-1])
    assert finished["event"] == "run_finished" and finished["exit_code"] == 77
    assert "refused the token" in finished["reason"] and "not-the-token" not in stdout


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_an_unexpected_error_in_a_run_is_said_not_only_exit_1(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet: list[str]
) -> None:
    from seedream_pipe.client import ModelApiClient

    async def broken_submit(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the wire broke")

    monkeypatch.setattr(ModelApiClient, "submit", broken_submit)
    code, _, err = invoke("run", str(recipe), "--sim", "--out", str(tmp_path / "o"), *quiet)
    assert code == 70  # a bug, not "some jobs failed"
    assert "error: the wire broke" in err and "Traceback" not in err and "job(s) failed" not in err


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_sim_and_base_url_together_are_refused(recipe: Path, tmp_path: Path, dry: list[str]) -> None:
    code, _, err = invoke("run", str(recipe), "--sim", "--base-url", "https://x.runcomfy.net/v1", *dry,
                          "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 64
    assert "--sim and --base-url contradict each other" in err
    assert not (tmp_path / "o").exists()


def test_a_finished_recipe_that_shrinks_drops_the_job_from_the_outputs_without_a_run(
    recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    kept_images = sorted((out / "images").iterdir())
    recipe.write_text(RECIPE.replace("[a teapot, a comet]", "[a teapot]"), encoding="utf-8")
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out))
    assert code == 0 and "Nothing to do" in stdout
    report = (out / "report.csv").read_text(encoding="utf-8").splitlines()
    assert len(report) == 2 and "a teapot" in report[1]  # header + the one job still planned
    assert "a comet" not in (out / "gallery.html").read_text(encoding="utf-8")
    assert "2 jobs" not in invoke("status", str(out))[1]
    assert sorted((out / "images").iterdir()) == kept_images  # what was paid for stays on disk
    recipe.write_text(RECIPE, encoding="utf-8")  # and comes back with the value
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out))
    assert code == 0 and "Nothing to do" in stdout
    assert len((out / "report.csv").read_text(encoding="utf-8").splitlines()) == 3


def test_a_read_only_output_folder_is_a_clear_error(recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from seedream_pipe.runner import folder

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    out = tmp_path / "o"
    out.mkdir()
    monkeypatch.setattr(folder, "open", read_only, raising=False)  # folder_lock's open
    code, _, err = invoke("run", str(recipe), "--sim", "--out", str(out))
    assert code == 73
    assert "cannot write in the output folder: Read-only file system" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("error", "code", "said"),
    [
        (RuntimeError("boom"), 70, "unexpected RuntimeError: boom - a bug in seedream-pipe"),
        (OSError(28, "No space left on device", "state.sqlite"), 74, "No space left on device (state.sqlite)"),
    ],
)
def test_an_error_nobody_expected_is_one_line_and_its_own_exit_code(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, code: int, said: str
) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0

    def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(StateStore, "counts", broken)
    got, _, err = invoke("status", str(out))
    assert got == code and f"error: {said}" in err and "Traceback" not in err
    got, _, err = invoke("status", str(out), env={"SEEDREAM_PIPE_DEBUG": "1"})
    assert got == code and "Traceback" in err  # for a bug report


def test_limit_submits_that_many_and_says_what_it_leaves(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, _, err = invoke("run", str(recipe), "--sim", "--out", str(out), "--limit", "1")
    assert code == 0  # what was asked for is done; the rest waits for a later run
    assert "2 jobs in the plan, 1 to do (1 to submit; 1 left for a later run (--limit))" in err
    code, stdout, _ = invoke("run", str(recipe), "--out", str(out), "--sim", "--dry-run", "--limit", "0")
    assert code == 0
    assert "submit:" not in stdout and "left for a later run (--limit): 1" in stdout and "$0.00" in stdout
    report = json.loads(invoke("run", str(recipe), "--out", str(out), "--sim", "--dry-run", "--json")[1])
    assert report["event"] == "dry_run"  # one event, the shape of every other --json line
    assert (report["actions"], report["held_back"], report["estimated_cost"]) == ({"submit": 1, "done": 1}, 0, 0.5)
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out), "--limit", "5")
    assert code == 0 and "2 jobs: 2 done" in stdout


def test_json_says_a_run_that_cannot_start_as_an_error_event(recipe: Path, tmp_path: Path) -> None:
    code, stdout, err = invoke("run", str(recipe), "--out", str(tmp_path / "o"), "--json")  # no token
    (event,) = [json.loads(line) for line in stdout.splitlines()]
    assert (code, event["event"], event["exit_code"]) == (77, "error", 77)
    assert "RUNCOMFY_TOKEN" in event["message"] and "RUNCOMFY_TOKEN" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("template: {{ thing }}\n", encoding="utf-8")
    code, stdout, _ = invoke("run", str(bad), "--sim", "--json")
    (event,) = [json.loads(line) for line in stdout.splitlines()]
    assert (code, event["exit_code"]) == (65, 65) and "must be quoted" in event["problems"][0]


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_a_folder_taken_over_by_another_recipe_is_announced(recipe: Path, tmp_path: Path, quiet: list[str]) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    other = tmp_path / "other.yaml"
    other.write_text(RECIPE.replace("name: c", "name: other").replace("a comet", "a kite"), encoding="utf-8")
    code, _, err = invoke("run", str(other), "--sim", *quiet, "--out", str(out))
    assert code == 0
    # (with --quiet too: a make log is where a folder taken over by a wrong --out shows)
    assert err.count(f"warning: {out} held recipe 'c' ({recipe}); this run of 'other' takes it over") == 1
    assert len(list((out / "images").iterdir())) == 3  # the comet stays on disk
    code, _, err = invoke("run", str(other), "--sim", "--out", str(out))
    assert code == 0 and "held recipe" not in err  # said once, when it happens


def test_a_copy_of_a_recipe_that_kept_its_name_is_announced_when_it_takes_the_folder_over(
    recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    copy = tmp_path / "copy" / "c.yaml"  # `name: c` kept, so the same default folder
    copy.parent.mkdir()
    copy.write_text(RECIPE.replace("a comet", "a kite"), encoding="utf-8")
    code, _, err = invoke("run", str(copy), "--sim", "--quiet", "--out", str(out))
    assert code == 0  # warned, not refused
    assert (
        f"warning: {out} was last run by recipe 'c' at {recipe.resolve()}; this run's {copy} has the same "
        "name but is another file, and takes the folder over"
    ) in err
    code, stdout, _ = invoke("run", str(copy), "--sim", "--json", "--out", str(out))
    assert code == 0 and "last run by recipe" not in stdout  # said once, when it happens
    # going back to the first is a takeover too, said with --json as a message (as a run says it)
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--json", "--out", str(out))
    messages = [e["text"] for e in map(json.loads, stdout.splitlines()) if e["event"] == "message"]
    assert code == 0 and len(messages) == 1 and f"at {copy.resolve()}; this run's {recipe} has" in messages[0]


def test_a_finished_takeover_is_announced_and_the_folder_remembers_the_new_recipe(
    recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    small = tmp_path / "small.yaml"
    small.write_text(RECIPE.replace("name: c", "name: small").replace("[a teapot, a comet]", "[a teapot]"))
    code, stdout, err = invoke("run", str(small), "--sim", "--quiet", "--out", str(out))
    assert code == 0 and stdout == ""  # every job of small is in the folder already: nothing to do
    assert f"warning: {out} held recipe 'c' ({recipe}); this run of 'small' takes it over" in err
    assert invoke("report", str(out))[0] == 0  # rewritten from the folder's own memory
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert str(small) in json.dumps(manifest) and str(recipe) not in json.dumps(manifest)


def test_json_says_an_unexpected_error_as_an_error_event_too(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seedream_pipe import runner

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "finish_if_done", broken)
    code, stdout, err = invoke("run", str(recipe), "--sim", "--out", str(tmp_path / "o"), "--json")
    (event,) = [json.loads(line) for line in stdout.splitlines()]
    assert code == 74 and (event["event"], event["exit_code"]) == ("error", 74)
    assert "No space left on device" in err and "Traceback" not in err


def test_status_and_cancel_of_a_finished_folder_never_open_it_to_write(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0

    def read_only(*args: object, **kwargs: object) -> None:  # an archived run on a read-only mount
        raise AssertionError("opened to write")

    monkeypatch.setattr(StateStore, "for_output_dir", read_only)  # (for_reading is tested in test_state)
    assert invoke("status", str(out))[:2] == (0, f"{out}: 2 jobs\n  downloaded      2\nlast run: #1 against 127.0.0.1, exit 0\n")
    assert invoke("cancel", str(out))[:2] == (0, f"nothing to cancel: no job of {out} is queued or running\n")


def test_a_resumed_run_plans_its_recipe_once(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (a 100,000-job recipe takes about a second to plan: `run` used to plan it once to see
    # whether it was finished and again to run it)
    from seedream_pipe import plan as plan_module

    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out), "--limit", "1")[0] == 0  # 1 of 2 done
    calls: list[object] = []
    real = plan_module.build_plan

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plan_module, "build_plan", counted)
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out))
    assert code == 0, stdout
    assert "2 jobs: 2 done" in stdout
    assert len(calls) == 1


def test_a_plan_given_to_a_run_must_be_its_recipes(recipe: Path, tmp_path: Path) -> None:
    from seedream_pipe.config import ApiSettings
    from seedream_pipe.errors import UsageError
    from seedream_pipe.runner import run_recipe

    other = load_recipe(recipe)
    with pytest.raises(UsageError, match="this recipe's own plan"):
        run_recipe(
            load_recipe(recipe), api=ApiSettings("http://127.0.0.1:9/v1", "t"), out_dir=tmp_path / "o", plan=other.plan()
        )
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_run_takes_y_for_yes_as_plan_does(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, _, stderr = invoke("run", str(recipe), "--out", str(out), "--dry-run", "--max-jobs", "1")
    assert code == 65 and "--yes" in stderr
    code, stdout, _ = invoke("run", str(recipe), "--out", str(out), "--dry-run", "--max-jobs", "1", "-y")
    assert code == 0 and "2 jobs in the plan" in stdout


def test_a_folder_of_someone_elses_files_is_not_written_into(recipe: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "report.csv").write_text("my own precious report\n", encoding="utf-8")
    (project / "gallery.html").write_text("<html>my site</html>", encoding="utf-8")
    code, _, err = invoke("run", str(recipe), "--sim", "--out", str(project))
    assert code == 73, err
    assert "holds gallery.html, report.csv but no state.sqlite" in err and "new or empty folder" in err
    assert sorted(p.name for p in project.iterdir()) == ["gallery.html", "report.csv"]  # untouched
    assert (project / "report.csv").read_text(encoding="utf-8") == "my own precious report\n"
    # a folder holding only hidden files (a .gitkeep) is as good as empty
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / ".gitkeep").touch()
    (kept / ".gitignore").write_text("*\n", encoding="utf-8")
    assert invoke("run", str(recipe), "--sim", "--out", str(kept))[0] == 0
    # but other hidden files are someone's: a recipe's `output: ~` is a home folder
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export PS1=x\n", encoding="utf-8")
    code, _, err = invoke("run", str(recipe), "--sim", "--out", str(home))
    assert code == 73 and "holds .bashrc but no state.sqlite" in err
    assert [p.name for p in home.iterdir()] == [".bashrc"]


@contextlib.contextmanager
def planned_folder(recipe: Path, out: Path) -> Iterator[tuple[StateStore, list[Job]]]:
    """A new output folder whose state holds the recipe's plan, every job planned, to set up."""
    out.mkdir()
    jobs = load_recipe(recipe).plan().jobs
    with StateStore.for_output_dir(out) as store:
        store.sync_plan(jobs)
        yield store, jobs


def test_status_and_dry_run_show_dropped_jobs_the_api_took(recipe: Path, tmp_path: Path) -> None:
    # `status` left them out of every count, and nothing said the next run would fetch them
    out = tmp_path / "o"
    with planned_folder(recipe, out) as (store, jobs):
        store.transition(jobs[1].job_id, "in_queue", request_id="r-2")
        store.sync_plan(jobs[:1])  # a recipe edit dropped the second, queued on the API
    code, stdout, _ = invoke("status", str(out))
    assert code == 0 and "no longer planned, but taken by the API (paid for): 1; `run` fetches" in stdout
    assert json.loads(invoke("status", str(out), "--json")[1])["no_longer_planned_to_fetch"] == 1
    recipe.write_text(RECIPE.replace("[a teapot, a comet]", "[a teapot]"), encoding="utf-8")
    code, stdout, _ = invoke("run", str(recipe), "--out", str(out), "--dry-run", env={"RUNCOMFY_TOKEN": "t"})
    assert code == 0 and "submit: 1" in stdout and "poll: 1" in stdout


def test_a_job_that_may_not_be_sent_again_is_not_announced_as_a_resubmit(recipe: Path, tmp_path: Path) -> None:
    # "(1 to resubmit)", then the job failed "twice" without being sent
    out = tmp_path / "o"
    with planned_folder(recipe, out) as (store, jobs):
        store.transition(jobs[0].job_id, "submit_unknown", possible_duplicate=True)  # sent twice already
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out), "--dry-run")
    assert code == 0 and "fail: 1" in stdout and "resubmit" not in stdout
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out), "--json")
    started = json.loads(stdout.splitlines()[0])
    assert started["event"] == "run_started" and started["actions"]["resubmit"] == 0
    assert started["actions"]["submit"] == 1 and code == 1
    with StateStore.for_output_dir(out) as store:
        assert "not submitted a third time" in str(store.get(jobs[0].job_id).error)  # type: ignore[union-attr]


def test_dry_run_refuses_the_folders_run_refuses(recipe: Path, tmp_path: Path) -> None:
    # It said "submit: 2 ... $1.00" and exit 0 for a folder `run` then refused with 73.
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine\n", encoding="utf-8")
    code, stdout, err = invoke("run", str(recipe), "--sim", "--out", str(project), "--dry-run")
    assert code == 73 and "holds notes.txt but no state.sqlite" in err and "submit" not in stdout
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    code, _, err = invoke("run", str(recipe), "--sim", "--out", str(a_file), "--dry-run")
    assert code == 73 and "is a file, not a folder" in err


def test_dry_run_refuses_a_folder_run_could_not_make_or_write(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said "submit: 2" and exit 0 where `run` exits 73 at once.
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    for extra in ([], ["--dry-run"]):
        code, stdout, err = invoke("run", str(recipe), "--sim", "--out", str(a_file / "out"), *extra)
        assert code == 73 and "cannot create the output folder" in err and "submit" not in stdout
    # (a read-only disk, as the OS says it: tests may run as root, whom file modes do not stop)
    import seedream_pipe.runner.folder as folder

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        folder.os, "access",
        lambda path, mode, **kw: not (mode & os.W_OK and Path(path) == read_only) and real_access(path, mode, **kw),
    )
    for out, says in ((read_only, "cannot write in the output folder"), (read_only / "o", "cannot create the output folder in")):
        code, stdout, err = invoke("run", str(recipe), "--sim", "--out", str(out), "--dry-run")
        assert code == 73 and says in err and "read-only" in err and "submit" not in stdout, err
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("target", ["loop", "nowhere/x"], ids=["link-loop", "dangling-link"])
def test_an_output_folder_that_is_a_link_to_no_folder_is_refused_by_the_dry_run_too(tmp_path: Path, target: str) -> None:
    # `output: out` where out is a link loop (or leads nowhere): the dry run said "submit: 2",
    # exit 0, and the run "out: is a file, not a folder" (73) of a link
    (tmp_path / "out").symlink_to(target)
    recipe = tmp_path / "c.yaml"
    recipe.write_text(RECIPE + "output: out\n", encoding="utf-8")
    code, stdout, err = invoke("run", str(recipe), "--sim", "--dry-run")
    assert code == 73 and "submit" not in stdout
    assert err == f"error: {tmp_path / 'out'}: cannot create the output folder: {tmp_path / 'out'} is a symbolic link to no folder\n"
    code, _, err = invoke("run", str(recipe), "--sim")
    assert code == 73
    assert err == f"error: {tmp_path / 'out'}: is a symbolic link to no folder; give the output folder another path (--out)\n"


def test_an_emptied_state_is_not_taken_for_a_new_folder(recipe: Path, tmp_path: Path) -> None:
    # A state.sqlite truncated to 0 bytes opened as a new, empty state: the run submitted every
    # job again (paid twice on the real API) and overwrote the images.
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    images = sorted((out / "images").iterdir())
    before = [path.read_bytes() for path in images]
    (out / "state.sqlite").write_bytes(b"")
    for extra in ([], ["--dry-run"]):
        code, _, err = invoke("run", str(recipe), "--sim", "--out", str(out), *extra)
        assert code == 74, err
        assert "state.sqlite: is empty, but its folder holds contact_sheet.png, gallery.html, images and 3 more" in err
        assert "restore state.sqlite from a copy" in err
    code, _, err = invoke("status", str(out))
    assert code == 74 and "is empty" in err
    assert [path.read_bytes() for path in images] == before


def test_a_folder_holding_another_programs_state_is_refused_in_words_that_suit_each_command(
    recipe: Path, tmp_path: Path
) -> None:
    # sheet, report and status said "Give the run an output folder of its own (--out)": they
    # take no --out, and it was no run that met the file
    out = tmp_path / "o"
    out.mkdir()
    with contextlib.closing(sqlite3.connect(out / "state.sqlite")) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.commit()
    before = (out / "state.sqlite").read_bytes()
    for args in (["status"], ["sheet"], ["report"], ["cancel"], ["run", str(recipe), "--sim", "--dry-run", "--out"]):
        code, _, err = invoke(*args, str(out))
        assert code == 74, (args, err)
        assert "not a seedream-pipe state file (its tables: invoices); left untouched" in err
        assert "not the output folder of a seedream-pipe run" in err and "Give the run" not in err, err
    assert "give a run a folder of its own: --out" in err  # (what `run` can do about it)
    assert (out / "state.sqlite").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["state.sqlite"]


def test_dry_run_counts_a_lost_or_changed_image_as_work_to_do(recipe: Path, tmp_path: Path) -> None:
    # It said "done: 2" where the run then fetched both again.
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    first, second = sorted((out / "images").iterdir())
    first.unlink()
    second.write_bytes(b"not the image")
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out), "--dry-run", "--json")
    assert code == 0
    # (a new simulator knows no URL of the last one: the run submits them again, free)
    assert json.loads(stdout)["actions"] == {"resubmit": 2}
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out), "--json")
    assert code == 0 and json.loads(stdout.splitlines()[-1])["summary"]["jobs_downloaded"] == 2


@pytest.mark.parametrize("name", [".run.lock", "state.sqlite", "images", "thumbs"])
def test_a_folder_whose_files_are_links_is_not_written_through(recipe: Path, tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("ORIGINAL", encoding="utf-8")
    out = tmp_path / "out"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0  # a folder of its own
    target = victim / "precious" if name == ".run.lock" else victim / f"made-{name}"
    for path in (out / name,):
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        path.symlink_to(target)
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("a comet", "a comet, a kite"), encoding="utf-8")
    code, _, err = invoke("run", str(recipe), "--sim", "--out", str(out))
    assert code == 73, err
    assert f"{name} is a symbolic link" in err
    # the outputs commands replace their files by renaming (a link is replaced, not followed),
    # and a sheet that remakes missing thumbnails keeps them in memory rather than write there
    # (with state.sqlite a dangling link, there is no run to draw: 66, as for any such folder)
    assert invoke("sheet", str(out))[0] == (66 if name == "state.sqlite" else 0)
    assert (victim / "precious").read_text(encoding="utf-8") == "ORIGINAL"
    assert sorted(p.name for p in victim.iterdir()) == ["precious"]  # nothing made through the link


def test_a_folder_of_an_external_simulator_says_to_go_on_with_that_simulator(recipe: Path, tmp_path: Path) -> None:
    # `seedream-pipe sim` in another terminal, its URL in RUNCOMFY_MODEL_API_BASE: a later
    # `--sim` would start another simulator that knows none of that one's jobs
    out = tmp_path / "o"
    with Simulator(SimConfig(workers=2, latency=0.01, token="tok")) as sim:
        code, _, err = invoke(
            "run", str(recipe), "--base-url", sim.base_url, "--out", str(out), env={"RUNCOMFY_TOKEN": "tok"}
        )
        assert code == 0, err
        code, _, err = invoke(  # the env var forgotten: the default, the real API
            "run", str(recipe), "--out", str(out), env={"RUNCOMFY_TOKEN": "tok", "RUNCOMFY_MODEL_API_BASE": ""}
        )
        assert code == 64
        assert f"To go on with the simulator, add --base-url {sim.base_url};" in err and "add --sim" not in err
        recipe.write_text(RECIPE.replace("[a teapot, a comet]", "[a teapot, a comet, a kite]"), encoding="utf-8")
        code, stdout, _ = invoke("status", str(recipe), "--out", str(out))
        assert f"`seedream-pipe run {recipe} --base-url {sim.base_url} --out {out}` brings" in stdout
    # a state is just a file: one made to name a host elsewhere is not repeated as advice, which
    # would have the user send the token there
    with StateStore.for_output_dir(out) as store:
        store.set_meta("last_api", {"base_url": "https://runcomfy-sim.attacker.example/v1", "built_in_simulator": False})
    code, _, err = invoke("run", str(recipe), "--out", str(out), env={"RUNCOMFY_TOKEN": "tok", "RUNCOMFY_MODEL_API_BASE": ""})
    assert code == 64 and "attacker" not in err and "add --sim" in err


@pytest.mark.parametrize("command", ["status", "cancel"])
def test_a_folder_and_another_out_are_refused_not_one_read_for_the_other(
    recipe: Path, tmp_path: Path, command: str
) -> None:
    # `status outputs/a --out outputs/b` showed b, and `cancel outputs/a --out outputs/b`
    # cancelled b's queued jobs, with no word that the folder named was not the one acted on
    for name in ("a", "b"):
        assert invoke("run", str(recipe), "--sim", "--out", str(tmp_path / name))[0] == 0
    code, stdout, err = invoke(command, str(tmp_path / "a"), "--out", str(tmp_path / "b"))
    assert code == 64 and stdout == ""
    assert f"error: {tmp_path / 'a'} is an output folder, and --out names another ({tmp_path / 'b'})" in err
    assert invoke(command, str(tmp_path / "a"), "--out", str(tmp_path / "a"))[0] == 0  # the same: fine
    assert invoke(command, str(recipe), "--out", str(tmp_path / "b"))[0] == 0  # what --out is for


def test_status_tells_a_run_at_work_from_one_that_was_killed(recipe: Path, tmp_path: Path) -> None:
    from seedream_pipe.runner.folder import folder_lock

    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    with StateStore.for_output_dir(out) as store:
        run_id = store.start_run(api_host="127.0.0.1")  # started, never finished
    with folder_lock(out):  # as a run at work holds it
        assert f"last run: #{run_id} against 127.0.0.1, running now (pid {os.getpid()})" in invoke("status", str(out))[1]
        # the recipe's next command is for after that run: now it would be refused (exit 75)
        recipe.write_text(RECIPE.replace("[a teapot, a comet]", "[a teapot, a comet, a kite]"), encoding="utf-8")
        stdout = invoke("status", str(recipe), "--out", str(out))[1]
        assert f"brings the folder up to date once the run at work in it (pid {os.getpid()}) has ended" in stdout
    stdout = invoke("status", str(out))[1]  # nobody holds it: that run died
    assert f"last run: #{run_id} against 127.0.0.1, ended without recording how (killed, or its state could not be written; run again to resume)" in stdout


def test_a_run_keeps_every_report_format_the_folder_has_fresh(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert invoke("run", str(recipe), "--sim", "--out", str(out))[0] == 0
    assert invoke("report", str(out), "--format", "json")[0] == 0
    assert len(json.loads((out / "report.json").read_text(encoding="utf-8"))) == 2
    recipe.write_text(RECIPE.replace("[a teapot, a comet]", "[a teapot, a comet, a kite]"), encoding="utf-8")
    code, stdout, _ = invoke("run", str(recipe), "--sim", "--out", str(out))
    assert code == 0
    # report.json follows report.csv: a script reading it saw 2 jobs of a folder holding 3
    assert len(json.loads((out / "report.json").read_text(encoding="utf-8"))) == 3
    assert "report.json" in stdout
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert "report.json" in json.dumps(manifest["outputs"])
    assert not (out / "report.parquet").exists()  # only the formats it already had


def test_a_run_at_work_is_named_by_its_pid_only_when_the_lock_file_holds_one(tmp_path: Path) -> None:
    import fcntl

    from seedream_pipe.errors import FolderBusy
    from seedream_pipe.runner.folder import LOCK_FILE, at_work_here, folder_lock, run_in_progress

    assert at_work_here(tmp_path) is None
    with open(tmp_path / LOCK_FILE, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write("\x1b]0;owned\x07\udcff")  # (anyone may write the file: no escape codes to a terminal)
        handle.flush()
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        assert at_work_here(tmp_path) == f"a run is at work in {tmp_path} now"
        assert run_in_progress(tmp_path) == "unknown"  # (what `status` shows as its pid)
        with pytest.raises(FolderBusy, match=r"is in use by another run; "), folder_lock(tmp_path):
            pass  # (a second run: refused in words, not a UnicodeDecodeError)
    assert at_work_here(tmp_path) is None


#: A command whose Ctrl-C comes once its exit code is decided: while Python joins its threads
#: (a thread of the script's own sends it), or from an atexit callback, which runs after ours.
LATE_CTRL_C = """
import atexit, os, signal, sys, threading, time
phase, argv = sys.argv[1], sys.argv[2:]
decided = threading.Event()
real_exit = sys.exit
def exit_as(code=0):
    decided.set()
    real_exit(code)
sys.exit = exit_as
def late():
    decided.wait(60)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
if phase == "threads":
    threading.Thread(target=late).start()
else:
    atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))
sys.argv = ["seedream-pipe", *argv]
from seedream_pipe._entry import main
main()
"""


@pytest.mark.parametrize("phase", ["threads", "atexit"])
def test_a_ctrl_c_after_the_exit_code_is_decided_changes_it_not(tmp_path: Path, phase: str) -> None:
    # It came out as a traceback ("Exception ignored in ... threading ... KeyboardInterrupt")
    # or, once Python had put back the system's handlers, as death by SIGINT: -2, not 66.
    import subprocess
    import sys

    script = tmp_path / "late.py"
    script.write_text(LATE_CTRL_C, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), phase, "status", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 66, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr


def test_the_cli_called_in_process_leaves_the_callers_signal_handlers_alone(tmp_path: Path) -> None:
    # Only the process's own entry takes Ctrl-C over once its exit code is decided: called
    # in-process (a notebook's cli([...]), a test), a later Ctrl-C quit the caller outright.
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(cli, ["status", str(tmp_path / "none")])
    assert result.exit_code == 66
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_an_output_folder_below_a_link_to_nowhere_names_the_link(recipe: Path, tmp_path: Path) -> None:
    # `--out dangling/sub`, dangling a link to nothing: the dry run named the link, but the run
    # said "dangling/sub: is a file, not a folder", of a path that is not there at all
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    out = tmp_path / "dangling" / "sub"
    for extra in (["--dry-run"], []):
        code, stdout, err = invoke("run", str(recipe), "--sim", "--out", str(out), *extra)
        assert code == 73 and "submit" not in stdout
        assert err == f"error: {out}: cannot create the output folder: {tmp_path / 'dangling'} is a symbolic link to no folder\n"
