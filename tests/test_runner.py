"""The runner against the simulator over a real socket: the happy path, every fault, auth and
credit stops, resume by state, recipe edits, and a finished recipe that makes no request."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fakes import Heard
from PIL import Image

from seedream_pipe.config import ApiSettings
from seedream_pipe.errors import AuthError, UsageError
from seedream_pipe.paths import default_output_dir
from seedream_pipe.progress import JsonProgress
from seedream_pipe.recipe import load_recipe
from seedream_pipe.runner import RunOptions, RunResult, arun_recipe, run_recipe
from seedream_pipe.runner.rules import UNREAD_ANSWERS_STOP
from seedream_pipe.sim import Faults, SimConfig, Simulator, body_hash
from seedream_pipe.state import StateStore

TOKEN = "test-token-runner"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

RECIPE = """\
name: t
template: "{{ animal }} {{ place }}"
vars:
  animal: [a red fox, a blue whale]
  place: [in snow, at sea, on a roof]
resolutions: [1K]
run: {rpm: 60000, concurrency: 4}
"""


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(workers=4, latency=0.02, latency_jitter=0.0, seed=3)) as simulator:
        yield simulator


def write_recipe(folder: Path, text: str = RECIPE) -> Path:
    path = folder / "t.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def fast(**changes: Any) -> RunOptions:
    opts = RunOptions(
        rpm=60000,
        concurrency=4,
        first_poll_s=0.02,
        request_timeout_s=2.0,
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        max_retries=6,
        seed=7,
    )
    for name, value in changes.items():
        setattr(opts, name, value)
    return opts


def run(sim: Simulator, recipe_path: Path, out: Path, **kwargs: Any) -> RunResult:
    options = kwargs.pop("options", None) or fast()
    return run_recipe(
        load_recipe(recipe_path), api=ApiSettings(sim.base_url, TOKEN), out_dir=out, options=options, **kwargs
    )


def assert_images_intact(out: Path, expected: int) -> None:
    with StateStore.for_output_dir(out) as store:
        done = store.jobs(states=("downloaded",))
    assert len(done) == expected
    for rec in done:
        assert rec.image_path is not None and rec.thumb_path is not None
        data = (out / rec.image_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec.sha256
        assert len(data) == rec.bytes
        with Image.open(out / rec.image_path) as img:
            img.load()
            assert img.size == (rec.width, rec.height)
        with Image.open(out / rec.thumb_path) as thumb:
            assert max(thumb.size) == 512


def no_unflagged_duplicates(sim: Simulator, out: Path) -> None:
    """Every body the simulator accepted more than once belongs to a job flagged as such."""
    stats = sim.stats()
    with StateStore.for_output_dir(out) as store:
        flagged = {body_hash(r.inputs) for r in store.jobs(in_plan=None) if r.possible_duplicate}
        cancelled = {body_hash(r.inputs) for r in store.jobs(in_plan=None) if r.cancelled_at is not None}
    for digest, n in stats["submits_per_body"].items():
        if n > 1:
            assert digest in flagged or digest in cancelled, f"{digest} submitted {n} times, not flagged"


def test_happy_path_downloads_every_image_once(sim: Simulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(sim, write_recipe(tmp_path), out)
    assert result.exit_code == 0
    assert result.counts["downloaded"] == 6
    stats = sim.stats()
    assert stats["submits_accepted"] == 6
    assert stats["duplicate_submits"] == 0
    assert stats["peak_in_flight"] <= 4
    assert stats["downloads"] == 6 and stats["downloads_with_token"] == 0  # files go without the token
    assert_images_intact(out, 6)
    names = sorted(p.name for p in (out / "images").iterdir())
    # the simulator serves JPEG, as Seedream 4.0 makes: kept under the suffix of its real format
    assert len(names) == 6 and all(n.endswith(".jpg") and n[:4].isdigit() for n in names)
    with StateStore.for_output_dir(out) as store:
        runs = store.runs()
        meta = store.get_meta("recipe")
    assert runs[-1]["exit_code"] == 0 and runs[-1]["api_host"] == "127.0.0.1"
    assert runs[-1]["summary"]["http_requests"] == result.summary["http_requests"]
    assert meta["name"] == "t" and meta["hash"] and "template" in meta["source_text"]
    assert set(meta["sheet"]) >= {"rows", "cols"}


def test_a_recipe_loaded_by_a_relative_path_is_still_its_file_after_the_folder_changes(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A notebook's `%cd` after loading: the recipe was taken for text, so the run kept no
    # record of its file, and a copy of it could take its folder over unannounced.
    write_recipe(tmp_path)
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("t.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert recipe.from_file and recipe.resolved_path == (tmp_path / "t.yaml").resolve()
    out = tmp_path / "out"
    result = run_recipe(recipe, api=ApiSettings(sim.base_url, TOKEN), out_dir=out, options=fast())
    assert result.exit_code == 0
    with StateStore.for_output_dir(out) as store:
        assert store.get_meta("recipe")["file"] == str((tmp_path / "t.yaml").resolve())


@pytest.mark.parametrize("pickled", [False, True], ids=["after-cd", "pickled-after-cd"])
def test_a_recipe_writes_into_its_output_folder_after_the_working_folder_changes(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pickled: bool
) -> None:
    # `output: out/x` was kept relative to the folder the recipe was loaded from: run after a
    # notebook's `%cd`, or in a worker process started elsewhere, it wrote into that folder's
    # recipes/out/x
    (tmp_path / "recipes").mkdir()
    write_recipe(tmp_path / "recipes", RECIPE + "output: out/x\n")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("recipes/t.yaml")
    assert default_output_dir(recipe) == Path("recipes/out/x")  # (as run and status name it)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    if pickled:
        recipe = pickle.loads(pickle.dumps(recipe))
    result = run_recipe(recipe, api=ApiSettings(sim.base_url, TOKEN), options=fast())
    assert result.exit_code == 0
    assert result.out_dir == tmp_path / "recipes" / "out" / "x"
    assert_images_intact(tmp_path / "recipes" / "out" / "x", 6)
    assert list(elsewhere.iterdir()) == []
    with StateStore.for_output_dir(result.out_dir) as store:  # (the hash of the recipe as written, as before)
        assert store.get_meta("recipe")["hash"] == recipe.hash == "4c57cc24bf57fb7142e0b21ef9cb6f29d87b69fbd84966560faef6cbb5479f33"


def test_repeats_send_the_same_body_and_get_different_pictures(sim: Simulator, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, RECIPE.replace("  place: [in snow, at sea, on a roof]\n", "  place: [in snow]\n")
                          + "repeats: 3\n")
    out = tmp_path / "out"
    assert run(sim, recipe, out).exit_code == 0
    assert_images_intact(out, 6)
    with StateStore.for_output_dir(out) as store:
        jobs = store.jobs()
    by_prompt: dict[str, set[str | None]] = {}
    for rec in jobs:
        by_prompt.setdefault(str(rec.inputs["prompt"]), set()).add(rec.sha256)
    # each combination's three repeats: one body sent three times, three pictures, as the real
    # model's would be (the simulator draws each take of a body anew)
    assert {len(shas) for shas in by_prompt.values()} == {3} and len(by_prompt) == 2
    assert sorted(sim.stats()["submits_per_body"].values()) == [3, 3]
    assert not any(rec.possible_duplicate for rec in jobs)  # repeats are asked for, not duplicates
    # run again: nothing to do, nothing sent
    before = sim.stats()["requests_total"]
    assert run(sim, recipe, out).exit_code == 0
    assert sim.stats()["requests_total"] == before


def test_png_images_are_kept_as_png_with_their_thumbnails(sim: Simulator, tmp_path: Path) -> None:
    sim.configure(image_format="png")  # what other models, and Seedream from 5.0, can make
    out = tmp_path / "out"
    result = run(sim, write_recipe(tmp_path), out)
    assert result.exit_code == 0 and result.counts["downloaded"] == 6
    assert_images_intact(out, 6)
    assert all(p.suffix == ".png" for p in (out / "images").iterdir())
    assert len(list((out / "thumbs").glob("*.jpg"))) == 6


def test_an_image_downloaded_again_in_another_format_leaves_no_old_file(sim: Simulator, tmp_path: Path) -> None:
    sim.configure(image_format="png")
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path)
    assert run(sim, recipe, out).exit_code == 0
    with StateStore.for_output_dir(out) as store:
        rec = store.jobs()[0]
        # its URL no longer works, so the next run reads the result again: now a JPEG's
        store.update(rec.job_id, image_url=str(rec.image_url).replace("sig=", "sig=0"))
    assert rec.image_path is not None
    changed = out / rec.image_path
    changed.write_bytes(changed.read_bytes() + b"edited")  # changed on disk: downloaded again
    sim.configure(image_format="jpeg")
    assert run(sim, recipe, out).exit_code == 0
    assert_images_intact(out, 6)
    assert not changed.exists()
    names = sorted(p.name for p in (out / "images").iterdir())
    assert len(names) == 6 and sum(n.endswith(".jpg") for n in names) == 1


def test_file_paths_a_state_was_made_to_say_never_reach_outside_the_folder(sim: Simulator, tmp_path: Path) -> None:
    # A state file is just a file: one crafted (or corrupted) to point image_path/thumb_path out
    # of the folder must not make a run rename, overwrite or remove anything there. Such a path
    # reads as no file at all, and the image is fetched again into the folder.
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path)
    assert run(sim, recipe, out).exit_code == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    crafted = [
        ("images/../../outside/a.png", "thumbs/../../outside/a_t.png"),
        (str(outside / "b.png"), str(outside / "b_t.png")),
        ("images/../images/../../outside/c.png", "thumbs/x/../../../outside/c_t.png"),
    ]
    with StateStore.for_output_dir(out) as store:
        for rec, (image, thumb) in zip(store.jobs(), crafted, strict=False):
            store.update(rec.job_id, image_path=image, thumb_path=thumb)
    victims = {outside / name: name.encode() for name in ("a.png", "a_t.png", "b.png", "b_t.png", "c.png", "c_t.png")}
    for path, data in victims.items():
        path.write_bytes(data)
    # a value added at the front moves every index, so the run renames every kept image
    edited = recipe.read_text(encoding="utf-8").replace("[a red fox, a blue whale]", "[an owl, a red fox, a blue whale]")
    assert edited != recipe.read_text(encoding="utf-8")
    recipe.write_text(edited, encoding="utf-8")
    assert run(sim, recipe, out).exit_code == 0
    assert {path: path.read_bytes() for path in outside.iterdir()} == victims
    assert_images_intact(out, 9)


@pytest.mark.timeout(60)  # (a hang guard: the run once hashed /dev/zero for ever)
def test_an_image_swapped_for_a_device_a_pipe_or_a_link_is_fetched_again_not_read(sim: Simulator, tmp_path: Path) -> None:
    # A shared output folder someone tampered with: the check that a kept image is intact must
    # not read /dev/zero to its end nor wait on a pipe nobody writes, and a link is not our file.
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path)
    assert run(sim, recipe, out).exit_code == 0
    elsewhere = tmp_path / "elsewhere.png"
    with StateStore.for_output_dir(out) as store:
        recs = store.jobs()[:3]
        for rec, size in zip(recs, (0, None, None), strict=True):
            store.update(rec.job_id, bytes=size)
    images = [out / str(rec.image_path) for rec in recs]
    elsewhere.write_bytes(images[2].read_bytes())
    for image in images:
        image.unlink()
    images[0].symlink_to("/dev/zero")
    os.mkfifo(images[1])
    images[2].symlink_to(elsewhere)  # (the very bytes, but not in the folder)
    assert run(sim, recipe, out).exit_code == 0
    assert_images_intact(out, 6)
    assert not any(image.is_symlink() for image in (out / "images").iterdir())


def test_outputs_a_killed_run_was_writing_are_swept_by_the_next_once_old(sim: Simulator, tmp_path: Path) -> None:
    # A run killed while it wrote its sheet left `.contact_sheet.png.<hex>.tmp`, and no later
    # run removed it: they piled up. One just made may be a `sheet` command's at work: kept.
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path)
    assert run(sim, recipe, out).exit_code == 0
    old, new = out / ".contact_sheet.png.0123456789ab.tmp", out / ".report.csv.ba9876543210.tmp"
    old.write_bytes(b"half a sheet")
    new.write_bytes(b"a sheet command at work")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert run(sim, recipe, out).exit_code == 0
    assert not old.exists() and new.exists()
    # and so does a finished recipe run again, which only writes its outputs
    from seedream_pipe.runner import finish_if_done

    os.utime(new, (time.time() - 7200, time.time() - 7200))
    assert finish_if_done(load_recipe(recipe), out) is not None
    assert not new.exists()


def test_the_look_that_sees_a_job_finish_also_reads_its_outputs(sim: Simulator, tmp_path: Path) -> None:
    # Looks read the result endpoint, which answers a running job with its state: no separate
    # result read after the poll that sees a job finish, so each job costs one request less.
    sim.configure(latency=0.15)  # long enough that most jobs are looked at before they finish
    out = tmp_path / "out"
    result = run(sim, write_recipe(tmp_path), out)
    assert result.exit_code == 0 and result.counts["downloaded"] == 6
    stats = sim.stats()
    assert stats["polls"] == 0  # the status endpoint was never needed
    looks = stats["result_reads"]
    assert looks > 6  # some looks saw a job still running, and went on
    assert (result.summary["polls"], result.summary["result_reads"]) == (looks, 0)
    assert stats["requests_total"] == 6 + looks + 6  # submit, looks, download: nothing else
    with StateStore.for_output_dir(out) as store:
        assert sum(rec.polls for rec in store.jobs()) == looks


def test_a_finished_recipe_run_again_makes_no_request(sim: Simulator, tmp_path: Path) -> None:
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    assert run(sim, recipe, out).exit_code == 0
    before = sim.stats()["requests_total"]
    again = run(sim, recipe, out)
    assert again.exit_code == 0
    assert again.summary["http_requests"] == 0
    assert sim.stats()["requests_total"] == before


def test_the_library_takes_a_folder_given_as_text(sim: Simulator, tmp_path: Path) -> None:
    # A notebook writes "outputs/x": dry_run_report raised AttributeError ('str' has no .exists).
    from seedream_pipe.errors import NothingToShow
    from seedream_pipe.runner import cancel_folder, dry_run_report, finish_if_done, write_outputs

    recipe, out = load_recipe(write_recipe(tmp_path)), str(tmp_path / "out")
    assert dry_run_report(recipe, out, fast())["actions"] == {"submit": 6}
    assert run(sim, recipe.path, Path(out)).exit_code == 0
    assert dry_run_report(recipe, out, fast()) == dry_run_report(recipe, Path(out), fast())
    written = finish_if_done(recipe, out)
    assert written is not None and written == write_outputs(out, recipe)
    assert cancel_folder(out, api=ApiSettings(sim.base_url, TOKEN)) == (0, 0)
    with pytest.raises(NothingToShow, match="no run here"):
        cancel_folder(str(tmp_path / "none"), api=ApiSettings(sim.base_url, TOKEN))


def test_a_notebook_is_told_the_parameter_where_the_cli_is_told_its_option(tmp_path: Path) -> None:
    # "give the output folder another path (--out)": a notebook has no --out, it has out_dir=.
    from seedream_pipe.errors import OutputError
    from seedream_pipe.runner import dry_run_report
    from seedream_pipe.words import speaking_to_cli

    recipe, taken = load_recipe(write_recipe(tmp_path)), tmp_path / "a-file"
    taken.write_text("x", encoding="utf-8")
    with pytest.raises(OutputError, match=r"give the output folder another path \(out_dir\)$"):
        dry_run_report(recipe, taken, fast())
    with pytest.raises(OutputError, match="give out_dir a new or empty folder"):
        asyncio.run(arun_recipe(recipe, api=ApiSettings("http://127.0.0.1:9/v1", TOKEN), out_dir=tmp_path))
    with speaking_to_cli(), pytest.raises(OutputError, match=r"another path \(--out\)$"):
        dry_run_report(recipe, taken, fast())


def test_a_deleted_or_changed_image_is_downloaded_again(sim: Simulator, tmp_path: Path) -> None:
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    run(sim, recipe, out)
    files = sorted((out / "images").iterdir())
    files[0].unlink()
    files[1].write_bytes(b"scribbled over")
    again = run(sim, recipe, out)
    assert again.exit_code == 0
    assert sim.stats()["submits_accepted"] == 6  # fetched again, not generated again
    assert again.summary["downloads"] == 2
    assert_images_intact(out, 6)


def test_an_image_a_killed_run_kept_but_never_recorded_is_not_left_behind(sim: Simulator, tmp_path: Path) -> None:
    # A run killed between moving a download into images/ and the commit that records it left
    # a whole image (and its thumbnail) on no record. The next download of the job reuses the
    # name only while the job's index and labels stay: after a recipe edit renumbered it, the
    # old file stayed in images/ for good beside the job's new one.
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    assert run(sim, recipe, out).exit_code == 0
    with StateStore.for_output_dir(out) as store:
        whale = next(r for r in store.jobs() if r.axes["animal"] == "a blue whale" and r.axes["place"] == "on a roof")
    assert whale.image_path is not None and whale.thumb_path is not None
    left_image, left_thumb = out / whale.image_path, out / whale.thumb_path
    # as the killed run left it: the files in place, the job still "completed" in the state
    with contextlib.closing(sqlite3.connect(out / "state.sqlite")) as db, db:
        db.execute(
            "UPDATE jobs SET state = 'completed', image_path = NULL, thumb_path = NULL, sha256 = NULL WHERE job_id = ?",
            (whale.job_id,),
        )
    (out / "images" / "notes.txt").write_text("mine", encoding="utf-8")  # not the run's to delete
    recipe.write_text(RECIPE.replace("[in snow, at sea, on a roof]", "[at sea, on a roof]"), encoding="utf-8")
    assert run(sim, recipe, out).exit_code == 0
    assert not left_image.exists() and not left_thumb.exists()
    with StateStore.for_output_dir(out) as store:
        done = store.jobs(in_plan=None, states=("downloaded",))
    recorded = {r.image_path for r in done} | {r.thumb_path for r in done}
    on_disk = {str(p.relative_to(out)) for folder in ("images", "thumbs") for p in (out / folder).iterdir()}
    assert on_disk == recorded | {"images/notes.txt"}
    assert sim.stats()["submits_accepted"] == 6  # fetched again, not generated again


def test_an_unrecorded_image_that_may_be_the_jobs_only_copy_is_kept(sim: Simulator, tmp_path: Path) -> None:
    # A rename cut short before its commit leaves the job's image under a name the state does
    # not record, and the recorded one gone. It was deleted at the start of the next run,
    # before the download meant to replace it; when that failed, the image was lost.
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    assert run(sim, recipe, out).exit_code == 0
    with StateStore.for_output_dir(out) as store:
        whale = next(r for r in store.jobs() if r.axes["animal"] == "a blue whale" and r.axes["place"] == "on a roof")
    assert whale.image_path is not None
    recorded = out / whale.image_path
    moved = recorded.with_name("0099_" + recorded.name.partition("_")[2])
    kept = recorded.read_bytes()
    recorded.rename(moved)
    sim.set_faults(garbage_rate=1.0)  # (every download fails: the job cannot be fetched again)
    assert run(sim, recipe, out).exit_code == 1
    assert moved.read_bytes() == kept
    assert sim.stats()["submits_accepted"] == 6  # (and never paid for again)


def test_an_edited_recipe_runs_only_the_new_combinations(sim: Simulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(sim, write_recipe(tmp_path), out)
    edited = RECIPE.replace("[in snow, at sea, on a roof]", "[in snow, at sea, on a roof, in a cave]")
    result = run(sim, write_recipe(tmp_path, edited), out)
    assert result.exit_code == 0
    assert result.summary["submits"] == 2
    assert sim.stats()["submits_accepted"] == 8
    assert sim.stats()["duplicate_submits"] == 0
    assert_images_intact(out, 8)


def test_a_job_with_a_request_id_is_polled_never_submitted_again(sim: Simulator, tmp_path: Path) -> None:
    recipe_path, out = write_recipe(tmp_path), tmp_path / "out"
    recipe = load_recipe(recipe_path)
    plan = recipe.plan()
    out.mkdir()
    first = plan.jobs[0]
    # a run that crashed right after the API accepted this job's body
    answer = httpx.post(
        f"{sim.base_url}/models/{first.model}", json=dict(first.inputs), headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    with StateStore.for_output_dir(out) as store:
        store.sync_plan(plan.jobs)
        store.transition(first.job_id, "submitting", attempts=1)
        store.transition(first.job_id, "submitted", request_id=answer["request_id"])
    result = run(sim, recipe_path, out)
    assert result.exit_code == 0
    stats = sim.stats()
    assert stats["submits_per_body"][body_hash(dict(first.inputs))] == 1
    assert stats["duplicate_submits"] == 0
    assert result.summary["submits"] == 5
    assert_images_intact(out, 6)


def test_a_job_crashed_mid_submit_is_submitted_once_more_and_flagged(sim: Simulator, tmp_path: Path) -> None:
    recipe_path, out = write_recipe(tmp_path), tmp_path / "out"
    plan = load_recipe(recipe_path).plan()
    out.mkdir()
    with StateStore.for_output_dir(out) as store:
        store.sync_plan(plan.jobs)
        store.transition(plan.jobs[0].job_id, "submitting", attempts=1)
    result = run(sim, recipe_path, out)
    assert result.exit_code == 0
    assert result.summary["possible_duplicates"] == 1
    with StateStore.for_output_dir(out) as store:
        assert store.get(plan.jobs[0].job_id).possible_duplicate  # type: ignore[union-attr]

    # and with --no-resubmit-unknown it is failed instead, never risking a second charge
    out2 = tmp_path / "out2"
    out2.mkdir()
    with StateStore.for_output_dir(out2) as store:
        store.sync_plan(plan.jobs)
        store.transition(plan.jobs[0].job_id, "submit_unknown", attempts=1)
    result = run(sim, recipe_path, out2, options=fast(resubmit_unknown=False))
    assert result.exit_code == 1
    assert result.counts["failed"] == 1 and result.counts["downloaded"] == 5
    assert "--no-resubmit-unknown" in result.failures[0][2]
    # a notebook's `assert result.ok, result.reason` says which job and why, not "None"
    index, job_id, error = result.failures[0]
    assert result.reason == f"1 job failed: job {index} ({job_id}): {error}"
    # sent once, it is no possible duplicate ("maybe paid for twice", `status` says) yet
    assert result.summary["possible_duplicates"] == 0
    with StateStore.for_output_dir(out2) as store:
        assert not store.get(plan.jobs[0].job_id).possible_duplicate  # type: ignore[union-attr]
    # that job may have been billed: sending it again later (the user's choice) is flagged
    again = run(sim, recipe_path, out2, options=fast(retry_failed=True))
    assert again.exit_code == 0 and again.summary["possible_duplicates"] == 1
    with StateStore.for_output_dir(out2) as store:
        assert store.get(plan.jobs[0].job_id).possible_duplicate  # type: ignore[union-attr]


def test_a_jobs_attempts_count_the_posts_sent_for_it(sim: Simulator, tmp_path: Path) -> None:
    sim.set_faults(error_rate=0.4)  # a submit refused with 500/503 is sent again
    result = run(sim, write_recipe(tmp_path), tmp_path / "out", options=fast(max_retries=20))
    assert result.exit_code == 0
    with StateStore.for_output_dir(tmp_path / "out") as store:
        attempts = [rec.attempts for rec in store.jobs()]
    stats = sim.stats()
    assert stats["submits_rejected"] > 0  # (else this proves nothing)
    # each POST counted once: they were counted twice over on a job sent more than once
    assert sum(attempts) == stats["submits_accepted"] + stats["submits_rejected"]


def test_each_jobs_retries_are_recorded_and_add_up_to_the_runs(sim: Simulator, tmp_path: Path) -> None:
    sim.set_faults(error_rate=0.3)
    out = tmp_path / "out"
    result = run(sim, write_recipe(tmp_path), out, options=fast(max_retries=20))
    assert result.exit_code == 0
    with StateStore.for_output_dir(out) as store:
        retries = {r.job_id: r.retries for r in store.jobs()}
    assert result.summary["retries"] > 0
    assert sum(retries.values()) == result.summary["retries"]  # each retry is some job's
    assert sum(1 for n in retries.values() if n) >= 2


@pytest.mark.parametrize(
    "fault",
    [
        {"error_rate": 0.3},
        {"gateway_rate": 0.3},  # a submit taken, its answer a gateway's 502/504: unknown, sent again once
        {"drop_rate": 0.15},
        {"malformed_rate": 0.2},
        {"result_404_rate": 0.3},
        {"expired_rate": 0.3},
        {"truncate_rate": 0.3},
        {"garbage_rate": 0.3},
        {"submit_drop_rate": 0.5},
        {"slow_rate": 0.15, "slow_s": 3.0},
    ],
    ids=lambda f: next(iter(f)),
)
def test_faults_are_survived(sim: Simulator, tmp_path: Path, fault: dict[str, Any]) -> None:
    sim.set_faults(**fault)
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    # Each download fault strikes 30% of tries, drawn in whatever order the downloads happen:
    # with the default 4 tries a job fails now and then (0.3^4 per job), which proves nothing.
    # With 10 tries that is 6e-6 per job, and every fault is still met and survived.
    options = fast(request_timeout_s=0.5 if "slow_rate" in fault else 2.0, download_attempts=10)
    result = run(sim, recipe, out, options=options)
    name = next(iter(fault))
    assert sim.stats()["faults"][name] > 0, "the fault never struck: the test proves nothing"
    no_unflagged_duplicates(sim, out)
    # jobs whose submit outcome stayed unknown twice fail (by design), as do jobs whose submit was
    # accepted with an answer that could not be read (billed: never sent again); the rest is done
    unread = [error for _, _, error in result.failures if "it is billed and cannot be followed" in error]
    for _, _, error in result.failures:
        assert "twice" in error or error in unread
    if len(unread) >= UNREAD_ANSWERS_STOP:  # then the run stops submitting, as it should
        assert result.exit_code == 69 and "could not read" in (result.reason or "")
    else:
        assert result.counts["downloaded"] + result.counts["failed"] == 6
        assert result.exit_code == (1 if result.failures else 0)
    assert_images_intact(out, result.counts["downloaded"])
    assert not list((out / "images").glob(".download-*")), "a partial download was left behind"


def test_a_submit_accepted_with_an_unreadable_answer_is_never_sent_again(sim: Simulator, tmp_path: Path) -> None:
    sim.set_faults(malformed_rate=1.0)  # every 200 answer garbled, submits' first
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    result = run(sim, recipe, out, options=fast(concurrency=1))
    stats = sim.stats()
    # billed once each, and never sent again; after the third the run stops paying for nothing
    assert stats["submits_accepted"] == UNREAD_ANSWERS_STOP and stats["duplicate_submits"] == 0
    assert result.exit_code == 69 and "could not read" in (result.reason or "")
    with StateStore.for_output_dir(out) as store:
        jobs = store.jobs()
    failed = [rec for rec in jobs if rec.state == "failed"]
    assert len(failed) == UNREAD_ANSWERS_STOP and all(rec.possible_duplicate for rec in failed)
    assert all("was not readable JSON: it is billed" in (rec.error or "") for rec in failed)
    assert sum(rec.state == "planned" for rec in jobs) == 6 - UNREAD_ANSWERS_STOP
    # the user's choice: --retry-failed sends them again, counted as possible duplicates
    sim.set_faults(malformed_rate=0.0)
    again = run(sim, recipe, out, options=fast(retry_failed=True))
    assert again.exit_code == 0 and again.counts["downloaded"] == 6
    assert again.summary["possible_duplicates"] == UNREAD_ANSWERS_STOP
    no_unflagged_duplicates(sim, out)


def test_failed_jobs_fail_with_the_servers_reason_and_retry_failed_retries(sim: Simulator, tmp_path: Path) -> None:
    sim.set_faults(job_fail_rate=0.5)
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    result = run(sim, recipe, out)
    assert result.exit_code == 1
    assert result.counts["failed"] == sim.stats()["failed"] > 0
    assert all("simulated job failure" in error for _, _, error in result.failures)
    sim.set_faults(job_fail_rate=0.0)
    assert run(sim, recipe, out).counts["failed"] == result.counts["failed"]  # left alone
    again = run(sim, recipe, out, options=fast(retry_failed=True))
    assert again.exit_code == 0
    assert again.counts["downloaded"] == 6


def test_a_run_with_nothing_to_send_needs_no_token(sim: Simulator, tmp_path: Path) -> None:
    sim.set_faults(job_fail_rate=1.0)
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    assert run(sim, recipe, out).exit_code == 1
    sent = sim.stats()["requests_total"]
    no_token = ApiSettings(sim.base_url, "")
    again = run_recipe(load_recipe(recipe), api=no_token, out_dir=out, options=fast())
    assert (again.exit_code, again.counts["failed"], again.summary["http_requests"]) == (1, 6, 0)
    with pytest.raises(AuthError, match="the token in ApiSettings is empty"):
        run_recipe(load_recipe(recipe), api=no_token, out_dir=out, options=fast(retry_failed=True))
    assert sim.stats()["requests_total"] == sent


def test_revoked_token_stops_at_once_and_a_later_run_completes(sim: Simulator, tmp_path: Path) -> None:
    sim.set_faults(revoke_after=3)
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    result = run(sim, recipe, out, options=fast(concurrency=2))
    assert result.exit_code == 77
    assert TOKEN not in (result.reason or "")
    # a notebook passes its token in code: the message does not send it to the variable alone
    assert "Check the token (the one given in code, or RUNCOMFY_TOKEN)" in (result.reason or "")
    with StateStore.for_output_dir(out) as store:
        states = store.counts()
    assert states["submitting"] == 0  # the refused submit went back to planned
    assert sim.stats()["submits_accepted"] == 3
    sim.restore_token()
    again = run(sim, recipe, out)
    assert again.exit_code == 0
    assert sim.stats()["duplicate_submits"] == 0
    assert_images_intact(out, 6)


def test_out_of_credit_finishes_what_is_in_flight_then_exits_75(sim: Simulator, tmp_path: Path) -> None:
    sim.set_faults(credit_limit=4)
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    result = run(sim, recipe, out, options=fast(concurrency=6))
    assert result.exit_code == 75
    assert "credit" in (result.reason or "")
    assert result.counts["downloaded"] == 4  # the four accepted ones were finished
    assert result.counts["planned"] == 2
    sim.set_faults(credit_limit=None)
    assert run(sim, recipe, out).exit_code == 0
    assert sim.stats()["duplicate_submits"] == 0


def test_a_stop_ends_the_jobs_waiting_for_their_submit_turn_at_once(sim: Simulator, tmp_path: Path) -> None:
    # At 6 rpm, three jobs wait 10, 20 and 30 s for their turn. A 402 on the first submit used
    # to leave the run waiting out every turn (30 s) only for each to find the stop; they have
    # sent nothing, so they end at once and stay planned.
    sim.set_faults(credit_limit=0)
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    started = time.monotonic()
    result = run(sim, recipe, out, options=fast(rpm=6, concurrency=4))
    took = time.monotonic() - started
    assert result.exit_code == 75
    assert result.counts["planned"] == 6 and sim.stats()["submits_accepted"] == 0
    assert took < 9, f"the run waited {took:.1f} s for submit turns after the stop"
    sim.set_faults(credit_limit=None)


def test_a_job_whose_task_starts_after_a_stop_never_goes_to_the_pacer(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop landing between a job task's creation and its first step left it out of the set the
    # stop cancels: it waited out its whole submit turn (10 s at 6 rpm) to find the stop.
    from seedream_pipe import runner as runner_module
    from seedream_pipe.client import ModelApiClient

    spawn, submit = runner_module.Runner._spawn, ModelApiClient.submit
    submits: list[str] = []

    def spawn_then_stop(self: Any, coro: Any, rec: Any) -> Any:
        task = spawn(self, coro, rec)
        self._stop(75, "stopped as the first job's task was made")  # before that task's first step
        return task

    async def counted_submit(self: Any, model: str, body: Any, **kwargs: Any) -> Any:
        submits.append(model)
        return await submit(self, model, body, **kwargs)

    monkeypatch.setattr(runner_module.Runner, "_spawn", spawn_then_stop)
    monkeypatch.setattr(ModelApiClient, "submit", counted_submit)
    result = run(sim, write_recipe(tmp_path), tmp_path / "out", options=fast(rpm=6))
    assert result.exit_code == 75 and result.counts["planned"] == 6
    assert submits == []


def test_jobs_cancelled_on_the_apis_side_are_not_done_and_the_next_run_submits_them(
    sim: Simulator, tmp_path: Path
) -> None:
    # A job cancelled from elsewhere (the API's dashboard, say) ended the run with exit 0, "all
    # done", so a make target counted a sweep with holes in it as finished.
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    results: list[RunResult] = []
    with Simulator(SimConfig(workers=0, latency=0.01)) as paused:  # accepts jobs, never runs them
        worker = threading.Thread(target=lambda: results.append(run(paused, recipe, out)))
        worker.start()
        while worker.is_alive():  # cancel every job as soon as the run has submitted it
            if (out / "state.sqlite").exists():
                state = f"file:{out / 'state.sqlite'}?mode=ro"
                # (suppressed: the run may still be making the file)
                with contextlib.closing(sqlite3.connect(state, uri=True)) as db, contextlib.suppress(sqlite3.Error):
                    for (request_id,) in db.execute("SELECT request_id FROM jobs WHERE request_id IS NOT NULL"):
                        httpx.post(f"{paused.base_url}/requests/{request_id}/cancel", headers=AUTH)
            worker.join(0.05)
    assert results[0].exit_code == 1
    assert results[0].counts["cancelled"] == 6
    again = run(sim, recipe, out)
    assert again.exit_code == 0 and again.counts["downloaded"] == 6


async def cancelled_once_submitted(
    sim: Simulator, recipe: Path, out: Path, submits: int, **kwargs: Any
) -> list[asyncio.Task[Any]]:
    """Run the recipe and cancel it, as a notebook's interrupt does, once the simulator has taken
    `submits` jobs; return the tasks left behind."""
    run = asyncio.create_task(
        arun_recipe(load_recipe(recipe), api=ApiSettings(sim.base_url, TOKEN), out_dir=out, options=fast(), **kwargs)
    )
    while sim.stats()["submits_accepted"] < submits:
        await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def test_a_cancelled_run_stops_every_task_it_started_and_the_next_run_finishes(tmp_path: Path) -> None:
    # A notebook cell's timeout cancels the run: its jobs' tasks went on polling for seconds,
    # then died on the closed state, and the HTTP session was left unclosed.
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    with Simulator(SimConfig(workers=0, latency=0.01)) as sim:  # the jobs wait in its queue
        assert asyncio.run(cancelled_once_submitted(sim, recipe, out, 4)) == []
        sim.configure(workers=4)
        again = run(sim, recipe, out)
        assert again.exit_code == 0 and again.counts["downloaded"] == 6
        assert sim.stats()["duplicate_submits"] == 0  # the jobs in flight were polled, not sent again


def test_jobs_a_recipe_edit_drops_while_the_api_has_them_are_still_fetched(tmp_path: Path) -> None:
    # Dropped from the plan while queued on the API, they were never looked at again: billed
    # images never downloaded, and gone from `status`.
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    with Simulator(SimConfig(workers=0, latency=0.01)) as sim:  # the jobs wait in its queue
        asyncio.run(cancelled_once_submitted(sim, recipe, out, 4))
        with StateStore.for_output_dir(out) as store:
            taken = {r.job_id for r in store.jobs() if r.request_id}
        assert len(taken) == 4
        write_recipe(tmp_path, RECIPE.replace("a red fox, a blue whale", "a blue whale"))  # fox dropped
        sim.configure(workers=4)
        events = io.StringIO()
        result = run(sim, recipe, out, progress=JsonProgress(events))
        assert result.exit_code == 0 and result.counts == {**result.counts, "downloaded": 3}
        started = json.loads(events.getvalue().splitlines()[0])
        assert (started["event"], started["total"]) == ("run_started", 3)  # the plan's jobs, not those fetched
        with StateStore.for_output_dir(out) as store:
            records = {r.job_id: r for r in store.jobs(in_plan=None)}
        off_plan_taken = [records[j] for j in taken if not records[j].in_plan]
        assert off_plan_taken and all(r.state == "downloaded" for r in off_plan_taken)
        assert all((out / str(r.image_path)).is_file() for r in off_plan_taken)
        stats = sim.stats()
        assert stats["duplicate_submits"] == 0
        # every job the API took was fetched, and none of the dropped ones it had not was made
        assert stats["submits_accepted"] == len(taken | {j for j, r in records.items() if r.in_plan})


def test_finish_if_done_warns_through_the_runners_logger(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its warnings went to logging.getLogger("seedream_pipe.runner") while the runner was one
    # module; a filter put on that logger by name (logging applies it to its own records only)
    # must still see them.
    from seedream_pipe.runner import finish_if_done

    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    assert run(sim, recipe, out).exit_code == 0
    write_recipe(tmp_path, RECIPE.replace("name: t", "name: u"))  # the same jobs, another name
    with caplog.at_level(logging.WARNING):
        assert finish_if_done(load_recipe(recipe), out) is not None
    (record,) = [r for r in caplog.records if "takes it over" in r.getMessage()]
    assert record.name == "seedream_pipe.runner"


def test_a_finished_recipe_still_fetches_what_an_edit_dropped_in_flight(sim: Simulator, tmp_path: Path) -> None:
    # Every planned job done, so `run` took the recipe as finished (no network call), while jobs
    # an edit had just dropped were still queued on the API, paid for.
    from seedream_pipe.runner import finish_if_done

    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    assert run(sim, recipe, out).exit_code == 0
    wider = write_recipe(tmp_path, RECIPE.replace("on a roof]", "on a roof, in a forest]"))
    sim.configure(workers=0)  # the two new jobs wait in the API's queue
    asyncio.run(cancelled_once_submitted(sim, wider, out, 8))
    write_recipe(tmp_path)  # the edit undone: the two queued jobs are no longer planned
    assert finish_if_done(load_recipe(recipe), out) is None  # work left: their images
    sim.configure(workers=4)
    assert run(sim, recipe, out).exit_code == 0
    with StateStore.for_output_dir(out) as store:
        dropped = store.jobs(in_plan=False)
    assert len(dropped) == 2 and all(r.state == "downloaded" for r in dropped)
    assert finish_if_done(load_recipe(recipe), out) is not None
    assert sim.stats()["duplicate_submits"] == 0


def test_a_full_disk_stops_the_run_with_74_not_a_bugs_70(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ENOSPC writing an image stopped the run as "a bug" (70), and the outputs written after it
    # failed the same way, so the CLI's last word was "report.csv: cannot write" (73).
    import errno

    from seedream_pipe import client as client_module

    def full(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(client_module, "fresh_temp", full)  # (where a download's file is made)
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    result = run(sim, recipe, out)
    assert result.exit_code == 74 and "No space left on device" in str(result.reason)
    assert not (out / "report.csv").exists()
    monkeypatch.undo()  # space again: the run goes on, nothing paid for twice unflagged
    assert run(sim, recipe, out).exit_code == 0
    no_unflagged_duplicates(sim, out)
    assert_images_intact(out, 6)


def test_a_cancelled_run_stops_its_live_bar(tmp_path: Path) -> None:
    # A notebook cell interrupted mid-run: the run raised CancelledError without run_finished,
    # and the bar's refresh thread went on redrawing it after the cell had ended.
    from seedream_pipe.progress import RichProgress

    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    bar = RichProgress()
    bar.console.file = io.StringIO()

    with Simulator(SimConfig(workers=0, latency=0.01)) as sim:
        asyncio.run(cancelled_once_submitted(sim, recipe, out, 2, progress=bar))
    assert bar.tally.todo == 6  # (run_started came, which starts the bar: what the run must stop)
    assert not bar._bar.live.is_started
    # (rich's stop() tells its refresh thread to end and does not wait for it: given a moment,
    # as a loaded machine may need, it must have ended, never to redraw)
    for thread in threading.enumerate():
        if type(thread).__name__ == "_RefreshThread":
            thread.join(timeout=5)
    assert not any(type(t).__name__ == "_RefreshThread" for t in threading.enumerate())  # (rich's)


def test_a_run_cancelled_while_posts_are_on_the_wire_records_their_answers(tmp_path: Path) -> None:
    # The cancel cut those POSTs off: the server made (and would bill) the jobs, the state kept
    # them "submitting", and the next run paid for them a second time.
    recipe, out = write_recipe(tmp_path), tmp_path / "out"

    async def cancelled_mid_post(sim: Simulator) -> None:
        run = asyncio.create_task(
            arun_recipe(load_recipe(recipe), api=ApiSettings(sim.base_url, TOKEN), out_dir=out, options=fast())
        )
        await asyncio.sleep(0.5)  # every answer takes 1.5 s: the first POSTs are on the wire
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    with Simulator(SimConfig(workers=0, latency=0.01, faults=Faults(slow_rate=1.0, slow_s=1.5))) as sim:
        asyncio.run(cancelled_mid_post(sim))
        accepted = sim.stats()["submits_accepted"]
        with StateStore.for_output_dir(out) as store:
            recorded = [rec for rec in store.jobs() if rec.request_id]
            assert store.counts()["submitting"] == 0
        assert accepted >= 1 and len(recorded) == accepted
        sim.set_faults(slow_rate=0.0)
        sim.configure(workers=4)
        assert run(sim, recipe, out).exit_code == 0
        assert sim.stats()["duplicate_submits"] == 0


def test_options_from_recipe_refuses_a_name_runoptions_does_not_have(tmp_path: Path) -> None:
    from seedream_pipe.runner import options_from_recipe

    recipe = load_recipe(write_recipe(tmp_path))
    with pytest.raises(UsageError, match="no option concurency, rmp; RunOptions has rpm, concurrency"):
        options_from_recipe(recipe, rmp=5, concurency=1)  # it took them without a word
    assert options_from_recipe(recipe, rpm=5).rpm == 5


def test_arun_recipes_docstring_says_every_parameter() -> None:
    # A notebook's help(arun_recipe) said nothing of `recipe` and `api`, the two it must give.
    import inspect

    for run_it in (arun_recipe, run_recipe):
        doc = inspect.getdoc(run_it) or ""
        assert [name for name in inspect.signature(run_it).parameters if f"`{name}`" not in doc] == []


def test_handle_signals_gives_back_the_signal_handlers_it_found(sim: Simulator, tmp_path: Path) -> None:
    # asyncio's remove_signal_handler leaves default_int_handler / SIG_DFL behind: a script's own
    # SIGTERM handler (a scheduler's graceful stop) was gone after run_recipe(handle_signals=True),
    # and the next SIGTERM killed the process outright.
    def mine(signum: int, frame: Any) -> None:
        return None

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in before:
            signal.signal(sig, mine)
        assert run(sim, write_recipe(tmp_path), tmp_path / "out", handle_signals=True).exit_code == 0
        assert {sig: signal.getsignal(sig) for sig in before} == {signal.SIGINT: mine, signal.SIGTERM: mine}
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_outputs_are_written_does_not_break_them_off(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    # The handlers were given back before the outputs were written: a Ctrl-C then raised
    # KeyboardInterrupt into them (exit 130 after run_finished said 0), and a SIGTERM killed
    # the process by its default with no message and no outputs.
    from seedream_pipe.runner import entry

    write_outputs = entry.write_outputs

    def signalled(*args: Any, **kwargs: Any) -> Any:
        signal.raise_signal(sig)  # (as from another terminal, mid-way)
        return write_outputs(*args, **kwargs)

    monkeypatch.setattr(entry, "write_outputs", signalled)  # (where the run calls it)
    caught: list[int] = []
    before = signal.signal(sig, lambda signum, frame: caught.append(signum))  # (the test's own, put back)
    try:
        result = run(sim, write_recipe(tmp_path), tmp_path / "out", handle_signals=True)
    finally:
        signal.signal(sig, before)
    assert result.exit_code == 0 and (tmp_path / "out" / "report.csv").is_file()
    assert caught == []  # the run's handler took it, not the one it gives back


def test_with_handle_signals_an_interrupt_cancels_the_queued_jobs_and_returns_the_result(tmp_path: Path) -> None:
    # What the README tells a notebook (whose interrupt is a SIGINT) and a script: without
    # handle_signals the run is only cancelled, and its queued jobs stay queued on the API.
    with Simulator(SimConfig(workers=0, latency=0.01)) as sim:  # the jobs wait in its queue
        def interrupt_once_jobs_are_queued() -> None:
            sim.wait_for(lambda stats: stats["submits_accepted"] >= 4, timeout=10)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt_once_jobs_are_queued, daemon=True).start()
        result = run(sim, write_recipe(tmp_path), tmp_path / "out", options=fast(timeout_s=20), handle_signals=True)
        accepted = sim.stats()["submits_accepted"]
        assert result.exit_code == 130 and result.reason == "interrupted"
        assert result.summary["cancelled_on_interrupt"] == accepted == sim.stats()["cancelled"]
        assert result.counts["cancelled"] == accepted


def test_a_run_cancelled_twice_stops_at_once_with_no_task_left(tmp_path: Path) -> None:
    # the second cancel (a second Ctrl-C) cuts short the wait for POSTs on the wire
    recipe, out = write_recipe(tmp_path), tmp_path / "out"

    async def cancelled_twice(sim: Simulator) -> list[asyncio.Task[Any]]:
        run = asyncio.create_task(
            arun_recipe(load_recipe(recipe), api=ApiSettings(sim.base_url, TOKEN), out_dir=out, options=fast())
        )
        await asyncio.sleep(0.5)  # POSTs on the wire: every answer takes 5 s
        run.cancel()
        await asyncio.sleep(0.1)  # the run now waits for their answers
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await asyncio.sleep(0.1)  # (the tasks told to stop take a step to do so)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    with Simulator(SimConfig(workers=0, latency=0.01, faults=Faults(slow_rate=1.0, slow_s=5.0))) as sim:
        assert asyncio.run(cancelled_twice(sim)) == []


@pytest.mark.parametrize(
    ("change", "error", "says"),
    [
        # the token over plain http to another machine: api_settings() refused it, ApiSettings did not
        ({"api": ApiSettings("http://192.0.2.2:9/v1", TOKEN)}, UsageError, "refusing to send the token over plain http"),
        ({"api": ApiSettings("http://127.0.0.1:9/v1", "tok\nen")}, AuthError, "contains a control character"),
        # no token, and jobs to send (a new folder)
        ({"api": ApiSettings("http://127.0.0.1:9/v1", "")}, AuthError, "the token in ApiSettings is empty"),
        # the two swapped: the token is never quoted back as a bad URL
        ({"api": ApiSettings(TOKEN, "http://127.0.0.1:9/v1")}, UsageError, "takes the base URL first, then the token"),
        ({"api": "http://127.0.0.1:9/v1"}, UsageError, "api= takes ApiSettings, not str"),
        ({"options": {"rpm": 30}}, UsageError, "options_from_recipe(recipe, rpm=30)"),
        ({"options": RunOptions(rpm="fast", limit=-1)}, UsageError,  # type: ignore[arg-type]
         "rpm must be a number above 0, not 'fast'; limit must be a whole number at least 0, not -1"),
        ({"recipe": "t.yaml"}, UsageError, "load_recipe(path) makes one"),
    ],
)
def test_a_notebooks_wrong_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, change: dict[str, Any], error: type[Exception], says: str
) -> None:
    out = tmp_path / "out"
    arguments: dict[str, Any] = {
        "recipe": load_recipe(write_recipe(tmp_path)), "api": ApiSettings("http://127.0.0.1:9/v1", TOKEN), **change,
    }
    with pytest.raises(error) as info:
        run_recipe(arguments.pop("recipe"), out_dir=out, **arguments)
    assert says in str(info.value)
    assert TOKEN not in str(info.value) and "tok\nen" not in str(info.value)
    assert not out.exists()


class RejectOne(httpx.AsyncBaseTransport):
    """The simulator accepts every body the planner makes; this answers 422 to one of them."""

    def __init__(self, marker: str) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._marker = marker.encode()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and self._marker in request.content:
            return httpx.Response(422, json={"error": {"code": "validation_error", "message": "prompt: not allowed"}})
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def test_a_rejected_body_fails_that_job_only(sim: Simulator, tmp_path: Path) -> None:
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    http = httpx.AsyncClient(transport=RejectOne("blue whale on a roof"))
    result = run(sim, recipe, out, http=http)
    assert result.exit_code == 1
    assert result.counts == {**result.counts, "downloaded": 5, "failed": 1}
    assert "prompt: not allowed" in result.failures[0][2]


def test_a_nameless_notebook_recipe_taking_another_ones_jobs_out_of_the_outputs_is_warned(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recipes given as dicts without a name are all 'recipe', in outputs/recipe/: one run after
    # another took the other's jobs out of the sheet and report without a word.
    from seedream_pipe.recipe import parse_recipe

    monkeypatch.chdir(tmp_path)

    def nameless(*animals: str) -> Any:
        return parse_recipe({"template": "a {{ animal }}", "vars": {"animal": list(animals)}, "resolutions": ["1K"]})

    def run_it(recipe: Any) -> RunResult:
        return run_recipe(recipe, api=ApiSettings(sim.base_url, TOKEN), options=fast())

    first = run_it(nameless("fox", "owl"))
    assert first.ok and first.out_dir == Path("outputs/recipe") and first.warnings == []
    grown = run_it(nameless("fox", "owl", "cat"))  # an edit that adds: nothing leaves, nothing said
    assert grown.ok and grown.warnings == []
    other = run_it(nameless("whale"))
    assert other.ok and len(other.warnings) == 1
    assert "held 3 jobs this recipe does not plan" in other.warnings[0] and "name=" in other.warnings[0]
    # a named one, from another working folder: no file at another path took the folder over
    named = parse_recipe({"name": "zoo", "template": "a {{ animal }}", "vars": {"animal": ["fox"]}})
    assert run_recipe(named, api=ApiSettings(sim.base_url, TOKEN), options=fast()).warnings == []
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = parse_recipe({"name": "zoo", "template": "a {{ animal }}", "vars": {"animal": ["fox"]}})
    assert run_recipe(again, api=ApiSettings(sim.base_url, TOKEN), out_dir=tmp_path / "outputs" / "zoo", options=fast()).warnings == []
    # a recipe file's edit is the user's own: said by the plan, not warned about
    recipe = write_recipe(tmp_path)
    assert run(sim, recipe, tmp_path / "out").warnings == []
    recipe.write_text(RECIPE.replace(", a blue whale", ""), encoding="utf-8")
    assert run(sim, recipe, tmp_path / "out").warnings == []


def test_a_simulator_that_forgot_its_jobs_runs_them_again_with_forget_lost(tmp_path: Path) -> None:
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    with Simulator(SimConfig(workers=0, latency=0.02)) as first:  # accepts, never runs
        result = run(first, recipe, out, options=fast(timeout_s=0.3))
        assert result.counts["failed"] == 6  # timed out, request ids kept
    with Simulator(SimConfig(workers=4, latency=0.02)) as second:
        heard = Heard()
        result = run(second, recipe, out, options=fast(retry_failed=True, forget_lost=True), progress=heard)
        assert result.exit_code == 0
        assert second.stats()["submits_accepted"] == 6
    assert_images_intact(out, 6)
    # the start line says what the run does (as the dry run does), not "6 to poll"
    assert heard.started["actions_text"] == "6 to resubmit" and heard.started["todo"] == 6


@pytest.mark.parametrize("before", ["timed out", "image never came"])
def test_jobs_a_new_simulator_does_not_know_say_how_to_make_them_again_and_that_makes_them(
    tmp_path: Path, before: str
) -> None:
    # A notebook's second Simulator() without forget_lost: the jobs of the first fail as unknown
    # (404), and the reason says why and what makes them again; doing so does. A job that had
    # finished, its image URL kept but its image never fetched, was only read again (404) by
    # --retry-failed, run after run, though the reason said it would be made again.
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    if before == "timed out":
        first_sim, options = SimConfig(workers=0, latency=0.02), fast(timeout_s=0.3)  # accepts, never runs
    else:
        first_sim, options = SimConfig(workers=4, latency=0.02, faults=Faults(garbage_rate=1.0)), fast()
    with Simulator(first_sim) as first:
        assert run(first, recipe, out, options=options).counts["failed"] == 6
    with Simulator(SimConfig(workers=4, latency=0.02)) as second:  # knows none of them
        lost = run(second, recipe, out, options=fast(retry_failed=True))
        assert lost.exit_code == 1 and lost.counts["failed"] == 6
        assert "a simulator started afresh knows none of the jobs" in str(lost.reason)
        assert "retry_failed=True" in lost.failures[0][2]
        again = run(second, recipe, out, options=fast(retry_failed=True))
        assert again.exit_code == 0 and second.stats()["submits_accepted"] == 6
    assert_images_intact(out, 6)


def test_the_start_line_after_a_simulator_restart_leaves_out_the_jobs_an_edit_dropped(tmp_path: Path) -> None:
    # They are looked at once and lost, never made again: "6 to resubmit" for 3 made.
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    with Simulator(SimConfig(workers=0, latency=0.02)) as first:  # accepts, never runs
        assert run(first, recipe, out, options=fast(timeout_s=0.3)).counts["failed"] == 6
    with sqlite3.connect(out / "state.sqlite") as db:  # as a run killed while they were queued
        db.execute("UPDATE jobs SET state = 'in_queue', error = NULL")
    recipe.write_text(RECIPE.replace(", a blue whale", ""), encoding="utf-8")
    with Simulator(SimConfig(workers=4, latency=0.02)) as second:
        heard = Heard()
        result = run(second, recipe, out, options=fast(forget_lost=True), progress=heard)
        assert result.exit_code == 0 and second.stats()["submits_accepted"] == 3
    assert heard.started["actions_text"] == "3 to resubmit" and heard.started["todo"] == 3


def test_limit_holds_back_the_jobs_a_forgotten_simulator_would_make_again(tmp_path: Path) -> None:
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    with Simulator(SimConfig(workers=0, latency=0.02)) as first:  # accepts, never runs
        assert run(first, recipe, out, options=fast(timeout_s=0.3)).counts["failed"] == 6  # ids kept
    with Simulator(SimConfig(workers=4, latency=0.02)) as second:  # knows none of them
        heard = Heard()
        result = run(second, recipe, out, options=fast(retry_failed=True, forget_lost=True, limit=2), progress=heard)
        assert second.stats()["submits_accepted"] == 2  # --limit 2: two made again, not six
    assert heard.started["actions_text"] == "2 to resubmit; 4 left for a later run (--limit)"
    with StateStore.for_output_dir(out) as store:
        counts = store.counts()
    assert counts["downloaded"] == 2 and counts["planned"] == 4  # held for a later run
    assert result.exit_code == 0


def test_a_server_limit_below_the_rpm_is_found_from_429s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seedream_pipe.sim import engine

    # a server that takes 4 submits per 1 s window (its window shortened from a minute so the
    # test is quick); the recipe asks for 100x that
    monkeypatch.setattr(engine.SlidingWindowLimiter, "WINDOW_S", 1.0)
    text = RECIPE.replace("[in snow, at sea, on a roof]", "[in snow, at sea, on a roof, in fog, at dusk, in rain]")
    with Simulator(SimConfig(workers=8, latency=0.02, rpm=4)) as limited:
        result = run(limited, write_recipe(tmp_path, text), tmp_path / "out", options=fast(concurrency=8))
        stats = limited.stats()
    assert result.exit_code == 0
    assert result.counts["downloaded"] == 12
    assert stats["duplicate_submits"] == 0
    # the first 429s come from the submits already on the wire (up to one per slot), then it
    # backs off: a few more at most, never one per retry loop
    assert 1 <= stats["rate_limited"] <= 8 + 2
    assert result.summary["rate_limited"] == stats["rate_limited"]


def test_a_run_accepts_every_answer_form_the_protocol_allows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every answer in another allowed form (statuses 'succeeded'/'COMPLETED'/'In_Progress', no
    # URLs in the submit answer, instance_id, 429s without Retry-After), over a real socket.
    from seedream_pipe.sim import engine

    monkeypatch.setattr(engine.SlidingWindowLimiter, "WINDOW_S", 1.0)
    config = SimConfig(workers=4, latency=0.05, rpm=4, seed=5, faults=Faults(variant_rate=1.0))
    with Simulator(config) as varied:
        result = run(varied, write_recipe(tmp_path), tmp_path / "out")
        stats = varied.stats()
    assert result.exit_code == 0, result.reason
    assert result.counts["downloaded"] == 6
    assert stats["duplicate_submits"] == 0
    assert stats["rate_limited"] >= 1  # (each one without a Retry-After)
    # every submit answer, every poll and every result read came in another form
    assert stats["faults"]["variant_rate"] >= stats["polls"] + stats["result_reads"] + 6
    assert_images_intact(tmp_path / "out", 6)


def test_a_refused_token_as_403_stops_the_run_as_401_does(tmp_path: Path) -> None:
    config = SimConfig(workers=4, latency=0.02, token="the-right-one", faults=Faults(variant_rate=1.0))
    with Simulator(config) as varied:
        result = run(varied, write_recipe(tmp_path), tmp_path / "out")
        assert varied.stats()["submits_accepted"] == 0
    assert result.exit_code == 77


def test_an_api_error_stops_the_run_with_that_error_s_exit_code(tmp_path: Path) -> None:
    # A 402 while polling (the simulator only sends 402 on submits): the run stops with 75, the
    # code of CreditError, not a generic 69; the jobs keep their request ids for the next run.
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            n = handler.count = getattr(handler, "count", 0) + 1  # type: ignore[attr-defined]
            return httpx.Response(200, json={"request_id": f"r{n}"})
        return httpx.Response(402, json={"error": {"message": "not enough credit"}})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    result = run_recipe(
        load_recipe(write_recipe(tmp_path)),
        api=ApiSettings("https://model-api.runcomfy.net/v1", TOKEN),
        out_dir=tmp_path / "out",
        options=fast(),
        http=http,
    )
    assert result.exit_code == 75
    with StateStore.for_output_dir(tmp_path / "out") as store:
        assert all(r.request_id for r in store.jobs() if r.state != "planned")


def test_run_recipe_in_a_running_loop_says_to_await_arun_recipe(tmp_path: Path) -> None:
    # as in a Jupyter cell: asyncio.run's own error did not say what to write instead
    recipe = load_recipe(write_recipe(tmp_path))

    async def in_a_notebook() -> None:
        with pytest.raises(RuntimeError, match=r"await arun_recipe\(recipe, api=\.\.\.\)"):
            run_recipe(recipe, api=ApiSettings("http://127.0.0.1:9/v1", "t"), out_dir=tmp_path / "o")

    asyncio.run(in_a_notebook())
    assert not (tmp_path / "o").exists()


def test_losing_the_api_while_reading_results_says_so_and_keeps_every_request(tmp_path: Path) -> None:
    # Submits and polls answer; every result read fails (503): the run must stop with 69, say
    # which jobs it lost contact with, and keep their request ids for the next run.
    count = 0

    def api(request: httpx.Request) -> httpx.Response:
        nonlocal count
        if request.method == "POST":
            count += 1
            return httpx.Response(200, json={"request_id": f"r{count}"})
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json={"status": "completed"})
        return httpx.Response(503, json={"detail": "down for maintenance"})

    seen: list[tuple[str, dict[str, Any]]] = []

    class Collect:
        def event(self, kind: str, detail: dict[str, Any]) -> None:
            seen.append((kind, detail))

    async def go() -> RunResult:
        from seedream_pipe.runner import arun_recipe

        async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as http:
            return await arun_recipe(
                load_recipe(write_recipe(tmp_path)),
                api=ApiSettings("https://model-api.runcomfy.net/v1", TOKEN),
                out_dir=tmp_path / "out",
                options=fast(max_retries=1),
                progress=Collect(),
                http=http,
            )

    result = asyncio.run(go())
    assert result.exit_code == 69
    said = [d["text"] for kind, d in seen if kind == "message" and "lost contact" in d.get("text", "")]
    assert said and all("left for the next run" in text for text in said)
    assert result.summary["lost_contact"] == len(said)
    with StateStore.for_output_dir(tmp_path / "out") as store:
        in_flight = [r for r in store.jobs() if r.request_id]
    assert in_flight and all(r.state not in ("failed", "planned") for r in in_flight)


def test_submits_within_limit_takes_plan_order_and_counts_the_rest() -> None:
    from seedream_pipe.runner.rules import actions_text, submits_within_limit

    jobs = [(3, "c"), (1, "a"), (2, "b")]

    def key(job: tuple[int, str]) -> tuple[int, str]:
        return job

    assert submits_within_limit(jobs, None, key) == ([(1, "a"), (2, "b"), (3, "c")], 0)
    assert submits_within_limit(jobs, 2, key) == ([(1, "a"), (2, "b")], 1)
    assert submits_within_limit(jobs, 0, key) == ([], 3)
    assert submits_within_limit(jobs, 9, key) == ([(1, "a"), (2, "b"), (3, "c")], 0)
    assert actions_text({"submit": 2, "poll": 0, "download": 1}, 1) == (
        "2 to submit, 1 to download; 1 left for a later run (--limit)"
    )
    assert actions_text({"submit": 0}) == "nothing"


def test_jobs_a_restarted_simulator_forgot_take_what_the_limit_leaves_after_the_plan() -> None:
    from seedream_pipe.runner.rules import left_for_forgotten, made_again

    assert left_for_forgotten(None, 3) is None
    assert left_for_forgotten(5, 3) == 2  # the plan's 3 submits first
    assert left_for_forgotten(2, 3) == 0  # (never below zero)
    assert made_again(4, None) == 4
    assert made_again(4, 2) == 2
    assert made_again(4, 0) == 0
    assert made_again(1, 9) == 1


def test_a_resumed_folder_downloads_no_more_at_once_than_the_concurrency(tmp_path: Path) -> None:
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(png, "PNG")
    now = {"open": 0, "most": 0}

    async def api(request: httpx.Request) -> httpx.Response:
        now["open"] += 1
        now["most"] = max(now["most"], now["open"])
        try:
            await asyncio.sleep(0.02)
            return httpx.Response(200, content=png.getvalue(), headers={"Content-Type": "image/png"})
        finally:
            now["open"] -= 1

    recipe = load_recipe(write_recipe(tmp_path, 'template: "{{ n }}"\nvars: {n: [a, b, c, d, e, f, g, h]}\n'))
    (tmp_path / "out").mkdir()
    with StateStore.for_output_dir(tmp_path / "out") as store:  # a run killed after every job finished
        store.sync_plan(recipe.plan().jobs)
        for i, rec in enumerate(store.jobs()):
            url = f"https://cdn.runcomfy.net/{i}.png"
            store.transition(rec.job_id, "submitting")
            store.transition(rec.job_id, "submitted", request_id=f"r{i}")
            store.transition(rec.job_id, "completed", output_urls=[url], image_url=url)
    result = run_recipe(
        recipe, api=ApiSettings("https://model-api.runcomfy.net/v1", TOKEN), out_dir=tmp_path / "out",
        options=fast(concurrency=2), http=httpx.AsyncClient(transport=httpx.MockTransport(api)),
    )  # fmt: skip
    assert result.exit_code == 0 and result.counts["downloaded"] == 8
    assert now["most"] == 2


def test_a_job_cancel_found_completed_is_timed_by_the_apis_finish_not_by_when_cancel_looked(tmp_path: Path) -> None:
    # `cancel` records a job the API says is completed as completed now, without its result;
    # the run that downloads it read the API's finished_at and dropped it, so the report gave
    # the job the whole time until `cancel` looked as its latency.
    import io
    from datetime import UTC, datetime

    from PIL import Image

    from seedream_pipe.runner import cancel_folder

    png = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(png, "PNG")
    recipe, out = load_recipe(write_recipe(tmp_path, 'template: "a {{ n }}"\nvars: {n: [fox]}\n')), tmp_path / "out"
    out.mkdir()
    with StateStore.for_output_dir(out) as store:
        store.sync_plan(recipe.plan().jobs)
        (job_id,) = (rec.job_id for rec in store.jobs())
        store.transition(job_id, "submitting", attempts=1)
        store.transition(job_id, "submitted", request_id="r1")
        submitted = store.get(job_id).submitted_at  # type: ignore[union-attr]
    assert submitted is not None
    finished = submitted + 0.000_5  # (well before cancel looks, in any test's timing)

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat()

    def api(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cancel"):
            return httpx.Response(200, json={"outcome": "not_cancellable", "status": "completed"})
        if request.url.path.endswith("/result"):
            return httpx.Response(200, json={
                "status": "completed", "created_at": iso(submitted), "finished_at": iso(finished),
                "output": {"image": "https://cdn.runcomfy.net/r1.png"},
            })  # fmt: skip
        return httpx.Response(200, content=png.getvalue(), headers={"Content-Type": "image/png"})

    api_settings = ApiSettings("https://model-api.runcomfy.net/v1", TOKEN)
    assert cancel_folder(out, api=api_settings, http=httpx.AsyncClient(transport=httpx.MockTransport(api))) == (0, 1)
    result = run_recipe(recipe, api=api_settings, out_dir=out, options=fast(),
                        http=httpx.AsyncClient(transport=httpx.MockTransport(api)))  # fmt: skip
    assert result.exit_code == 0
    with StateStore.for_output_dir(out) as store:
        rec = store.get(job_id)
    assert rec is not None and rec.state == "downloaded" and rec.completed_at is not None
    assert rec.server_finished_at == iso(finished)
    assert rec.latency_s == pytest.approx(0.000_5, abs=1e-5)


def test_a_signal_repeated_at_once_is_the_same_ctrl_c() -> None:
    from _fakes import FakeTime

    from seedream_pipe.runner.signals import SAME_INTERRUPT_S, Presses

    clock = FakeTime(100.0)
    presses = Presses(clock=clock)
    assert presses.press() == 1
    clock.now += SAME_INTERRUPT_S / 10  # `timeout -s INT` signals the run, then its group
    assert presses.press() is None
    assert presses.count == 1
    clock.now += SAME_INTERRUPT_S  # a second Ctrl-C by hand
    assert presses.press() == 2
    assert presses.press() == 3  # (after the second, every signal counts)



def test_kept_images_are_renamed_to_follow_an_edited_recipe_without_a_download(sim: Simulator, tmp_path: Path) -> None:
    recipe, out = write_recipe(tmp_path, RECIPE.replace("[in snow, at sea, on a roof]", "[in snow, at sea]")), tmp_path / "out"
    assert run(sim, recipe, out).exit_code == 0
    before = {p.name for p in (out / "images").iterdir()}
    assert "0001_" in min(before) and any("red-fox-in-snow" in n for n in before)
    downloads = sim.stats()["downloads"]
    # a value added at the front (every index moves) and a label given to a value
    edited = RECIPE.replace("[a red fox, a blue whale]", "[an owl, a red fox, a blue whale]").replace(
        "[in snow, at sea, on a roof]", "[{snowy: in snow}, at sea]"
    )
    recipe.write_text(edited, encoding="utf-8")
    assert run(sim, recipe, out).exit_code == 0
    assert sim.stats()["downloads"] == downloads + 2  # the owl's two images only
    with StateStore.for_output_dir(out) as store:
        jobs = store.jobs()
    names = sorted(p.name for p in (out / "images").iterdir())
    assert len(names) == 6 and not set(names) & before  # every index moved by two, every name with it
    for rec in jobs:
        assert rec.image_path is not None and rec.thumb_path is not None
        image, thumb = out / rec.image_path, out / rec.thumb_path
        assert image.name.startswith(f"{rec.job_index:04d}_{rec.job_id}_") and image.is_file()
        assert thumb.is_file() and thumb.stem == image.stem
        assert hashlib.sha256(image.read_bytes()).hexdigest() == rec.sha256
    assert any(n.endswith("red-fox-snowy-1k.jpg") for n in names)  # the label, not the value
    assert not any("in-snow" in n for n in names)
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == sorted(Path(n).stem + ".jpg" for n in names)


def test_a_post_on_the_wire_when_another_job_fails_the_run_gets_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One job's download hits a full disk (a fatal error of the run) while another job's submit
    # is on the wire. The run cancelled that POST at once, so the job stayed `submitting`
    # though the API had taken it, and the next run sent it again (paid twice, flagged). As on
    # an interrupt, the POST is given its answer and its request id committed first.
    import errno

    from seedream_pipe import client as client_module

    png = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(png, "PNG")
    posted, failed = asyncio.Event(), asyncio.Event()

    async def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posted.set()
            await failed.wait()  # answered only once the other job has failed the run
            for _ in range(100):  # (and the run has had every chance to cancel it)
                await asyncio.sleep(0)
            return httpx.Response(200, json={"request_id": "r-b"})
        await posted.wait()  # the download fails while the POST is on the wire
        return httpx.Response(200, content=png.getvalue(), headers={"Content-Type": "image/png"})

    def full(path: Any, *args: Any, **kwargs: Any) -> Any:
        failed.set()
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(client_module, "fresh_temp", full)
    recipe = load_recipe(write_recipe(tmp_path, 'template: "{{ n }}"\nvars: {n: [a, b]}\n'))
    out = tmp_path / "out"
    out.mkdir()
    with StateStore.for_output_dir(out) as store:  # job a finished in an earlier run, b never sent
        store.sync_plan(recipe.plan().jobs)
        a, b = store.jobs()
        url = "https://cdn.runcomfy.net/a.png"
        store.transition(a.job_id, "submitting")
        store.transition(a.job_id, "submitted", request_id="r-a")
        store.transition(a.job_id, "completed", output_urls=[url], image_url=url)

    async def go() -> RunResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as http:
            return await arun_recipe(
                recipe, api=ApiSettings("https://model-api.runcomfy.net/v1", TOKEN), out_dir=out,
                options=fast(), http=http,
            )  # fmt: skip

    result = asyncio.run(go())
    assert result.exit_code == 74 and "No space left on device" in str(result.reason)
    with StateStore.for_output_dir(out) as store:
        sent = store.get(b.job_id)
    assert sent is not None and sent.state == "submitted" and sent.request_id == "r-b"
    assert not sent.possible_duplicate


def test_the_summary_counts_a_job_sent_twice_whose_second_answer_was_lost_too(sim: Simulator, tmp_path: Path) -> None:
    # Every submit is taken, then answered by a gateway's 502/504: each job is sent once more,
    # lost again, and fails "twice". The API took every body twice, and the folder flags each
    # job; the run's summary said possible_duplicates 0, counting only resends that came back.
    sim.set_faults(gateway_rate=1.0)
    result = run(sim, write_recipe(tmp_path), tmp_path / "out", options=fast(limit=4))  # (8 lost answers)
    assert result.exit_code == 1 and result.counts["failed"] == 4
    assert sim.stats()["duplicate_submits"] == 4
    assert result.summary["possible_duplicates"] == 4


def test_dry_run_with_a_new_simulator_and_limit_says_what_the_run_does(tmp_path: Path) -> None:
    # Two jobs an earlier simulator took, four never sent, --limit 1, --sim: the run submits
    # the first never-sent job and makes the forgotten ones again only with what --limit leaves
    # ("1 to submit; 5 left"); the dry run said "resubmit: 1" (a forgotten job), in plan order.
    from seedream_pipe.runner import dry_run_report

    recipe, out = load_recipe(write_recipe(tmp_path)), tmp_path / "out"
    out.mkdir()
    with StateStore.for_output_dir(out) as store:
        store.sync_plan(recipe.plan().jobs)
        for n, rec in enumerate(store.jobs()[:2]):
            store.transition(rec.job_id, "submitting")
            store.transition(rec.job_id, "submitted", request_id=f"r{n}")
    for limit, actions, held in [(1, {"submit": 1}, 5), (5, {"submit": 4, "resubmit": 1}, 1), (None, {"submit": 4, "resubmit": 2}, 0)]:
        said = dry_run_report(recipe, out, fast(limit=limit, forget_lost=True), fresh_simulator=True)
        assert (said["actions"], said["held_back"]) == (actions, held), limit
    with Simulator(SimConfig(workers=4, latency=0.02)) as fresh:  # knows none of r0, r1
        heard = Heard()
        run(fresh, write_recipe(tmp_path), out, options=fast(limit=1, forget_lost=True), progress=heard)
    assert heard.started["actions"]["submit"] == 1 and heard.started["actions"]["resubmit"] == 0
    assert heard.started["held_back"] == 5


def test_submits_stop_when_every_answer_is_lost(sim: Simulator, tmp_path: Path) -> None:
    # Every submit taken (billed), its answer replaced by a gateway's 502/504: the run sent
    # every job of the plan twice (2 x the plan paid for, not one image), with no stop, where
    # unreadable answers stop it after UNREAD_ANSWERS_STOP.
    sim.set_faults(gateway_rate=1.0)
    text = RECIPE.replace("[in snow, at sea, on a roof]", "[in snow, at sea, on a roof, in fog, at dusk, in rain, on ice]")
    result = run(sim, write_recipe(tmp_path, text), tmp_path / "out", options=fast(concurrency=2))
    assert result.exit_code == 69 and "in a row got no answer" in (result.reason or "")
    # (the submits on the wire when the stop came get their answers: at most one per slot more)
    assert 10 <= sim.stats()["submits_accepted"] <= 10 + 2  # (UNKNOWN_IN_A_ROW_STOP; 14 jobs: 28 before)
    assert result.counts["planned"] > 0  # the rest wait for a run that gets answers
    no_unflagged_duplicates(sim, tmp_path / "out")


def test_an_answered_submit_breaks_the_row_of_lost_answers(tmp_path: Path) -> None:
    # The stop after UNKNOWN_IN_A_ROW_STOP submits "in a row" with no answer counted across
    # submits the API did answer (a 422 for a job it refused): a run whose answers came back
    # for one submit in four stopped (69) as if every answer were lost.
    posts = 0

    async def api(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        assert request.method == "POST"
        posts += 1
        if posts % 4 == 0:
            return httpx.Response(422, json={"error": "prompt refused"})
        return httpx.Response(502, text="Bad Gateway")

    names = ", ".join(f"n{i}" for i in range(12))
    recipe = load_recipe(write_recipe(tmp_path, f'template: "{{{{ n }}}}"\nvars: {{n: [{names}]}}\n'))

    async def go() -> RunResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as http:
            return await arun_recipe(
                recipe, api=ApiSettings("https://model-api.runcomfy.net/v1", TOKEN), out_dir=tmp_path / "out",
                options=fast(concurrency=1), http=http,
            )  # fmt: skip

    result = asyncio.run(go())
    assert "in a row got no answer" not in (result.reason or ""), result.reason
    assert result.exit_code != 69 and result.counts["planned"] == 0  # every job was tried
    assert posts > 10  # (the unreset count stopped it at its 10th lost answer, the 13th POST)


def test_no_resubmit_unknown_sends_a_job_whose_answer_was_lost_once_only(sim: Simulator, tmp_path: Path) -> None:
    # --no-resubmit-unknown promises that a submit whose outcome is unknown (taken, perhaps
    # billed, its answer lost) is never sent again: the job fails, unflagged (sent once), and
    # the next run leaves it alone unless --retry-failed asks.
    sim.set_faults(submit_drop_rate=1.0)  # every submit taken, then its connection dropped
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    result = run(sim, recipe, out, options=fast(resubmit_unknown=False))
    assert result.exit_code == 1 and result.counts["failed"] == 6
    assert sorted(sim.stats()["submits_per_body"].values()) == [1] * 6  # not one body sent twice
    assert all("not submitted again (--no-resubmit-unknown)" in error for _, _, error in result.failures)
    assert result.summary["possible_duplicates"] == 0
    with StateStore.for_output_dir(out) as store:
        jobs = store.jobs()
    assert {(r.attempts, r.possible_duplicate, r.submit_unknown_at is not None) for r in jobs} == {(1, False, True)}
    sim.set_faults(submit_drop_rate=0.0)
    again = run(sim, recipe, out, options=fast(resubmit_unknown=False))
    assert again.exit_code == 1 and again.summary["submits"] == 0  # failed jobs stay failed
    assert sum(sim.stats()["submits_per_body"].values()) == 6


def test_cancel_records_only_what_the_api_cancelled_and_keeps_the_rest_to_poll(tmp_path: Path) -> None:
    # `cancel`: a queued job the API cancels is never billed (a later run submits it again); a
    # running one it will not cancel, or one it could not be asked about, keeps its request id
    # and is polled by the next run, never submitted again. A refused token changes nothing.
    from seedream_pipe.runner import cancel_folder
    from seedream_pipe.runner.rules import action_for

    answers = {
        "r1": httpx.Response(200, json={"status": "cancelled"}),
        "r2": httpx.Response(200, json={"outcome": "not_cancellable", "status": "in_progress"}),
        "r3": httpx.Response(404, json={"error": {"message": "no such request"}}),
    }
    refuse_token = False

    def api(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path.endswith("/cancel")
        if refuse_token:
            return httpx.Response(401, json={"error": {"message": "bad token"}})
        return answers[request.url.path.split("/")[3]]

    recipe, out = load_recipe(write_recipe(tmp_path)), tmp_path / "out"
    out.mkdir()
    jobs = recipe.plan().jobs[:3]
    with StateStore.for_output_dir(out) as store:
        store.sync_plan(jobs)
        for n, job in enumerate(jobs, 1):
            store.transition(job.job_id, "submitting", attempts=1)
            store.transition(job.job_id, "submitted", request_id=f"r{n}")
    heard: list[tuple[str, str, str | None]] = []
    api_settings = ApiSettings("https://model-api.runcomfy.net/v1", TOKEN)

    def cancel() -> tuple[int, int]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(api))
        return cancel_folder(out, api=api_settings, http=http, on_done=lambda r, o, e: heard.append((r.request_id or "", o, e)))

    refuse_token = True
    with pytest.raises(AuthError) as refused:
        cancel()
    assert refused.value.exit_code == 77
    with StateStore.for_output_dir(out) as store:
        assert {r.state for r in store.jobs()} == {"submitted"}
    refuse_token = False
    heard.clear()
    assert cancel() == (1, 2)
    said = {rid: (outcome, error) for rid, outcome, error in heard}
    assert said["r1"] == ("cancelled", None) and said["r2"] == ("not_cancellable", None)
    assert said["r3"][0] == "error" and "no such request" in str(said["r3"][1])
    with StateStore.for_output_dir(out) as store:
        recs = {r.request_id: r for r in store.jobs()}
    assert {rid: r.state for rid, r in recs.items()} == {"r1": "cancelled", "r2": "in_progress", "r3": "submitted"}
    assert {rid: action_for(r, fast()) for rid, r in recs.items()} == {"r1": "submit", "r2": "poll", "r3": "poll"}


def test_a_folder_whose_jobs_went_to_one_api_host_is_refused_for_another_before_any_request(tmp_path: Path) -> None:
    # Its request ids mean nothing to another host (polled there with the token) and its images
    # would count as done for it: refused (64) before a request, whatever the run was doing.
    recipe, out = load_recipe(write_recipe(tmp_path)), tmp_path / "out"
    out.mkdir()
    with StateStore.for_output_dir(out) as store:
        store.sync_plan(recipe.plan().jobs)
        store.start_run(api_host="model-api.runcomfy.net")  # (killed before its summary: it reached its host)
    asked: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(500)

    with pytest.raises(UsageError, match=r"holds the jobs of a run against model-api\.runcomfy\.net; this run goes to staging\.example\.com") as refused:
        run_recipe(
            recipe, api=ApiSettings("https://staging.example.com/v1", TOKEN), out_dir=out, options=fast(),
            http=httpx.AsyncClient(transport=httpx.MockTransport(api)),
        )  # fmt: skip
    assert refused.value.exit_code == 64 and "own folder with out_dir" in str(refused.value)
    assert asked == []
    with StateStore.for_output_dir(out) as store:
        assert len(store.runs()) == 1 and store.counts()["planned"] == 6


def test_a_deleted_thumbnail_is_remade_from_the_kept_image_without_a_request(sim: Simulator, tmp_path: Path) -> None:
    recipe, out = write_recipe(tmp_path), tmp_path / "out"
    assert run(sim, recipe, out).exit_code == 0
    thumbs = sorted((out / "thumbs").iterdir())
    thumbs[0].unlink()
    before = sim.stats()["requests_total"]
    again = run(sim, recipe, out)
    assert again.exit_code == 0 and again.summary["http_requests"] == 0 and sim.stats()["requests_total"] == before
    assert sorted((out / "thumbs").iterdir()) == thumbs
    with Image.open(thumbs[0]) as thumb:
        assert max(thumb.size) == 512
    assert_images_intact(out, 6)
