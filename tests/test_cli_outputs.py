"""The `sheet`, `report` and `gallery` commands: what they write, print, and how they fail."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from _outputs_fixture import make_folder
from click.testing import CliRunner, Result

from seedream_pipe.cli import cli
from seedream_pipe.errors import EX_CANTCREAT, EX_NOINPUT, EX_USAGE

RECIPE = """\
name: sweep
template: "{{ subject }}, {{ style }}"
vars:
  subject: [cat, tea]
  style: [watercolor, photo]
resolutions: ["1:1", "16:9"]
sheet: {rows: [style], cols: [subject, resolution], cell: 64}
output: out
"""


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def ended_run(folder: Path) -> Path:
    """The manifest a run writes when it ends, listing nothing yet."""
    from seedream_pipe.outputs import open_output, write_manifest

    return write_manifest(open_output(folder))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_folder(tmp_path / "out")
    return tmp_path / "out"


def test_sheet_of_a_folder(folder: Path) -> None:
    result = run("sheet", folder, "--cell", "48")
    assert result.exit_code == 0, result.output
    assert (folder / "contact_sheet.png").is_file()
    assert "rows: subject, style; columns: resolution" in result.output
    assert str(folder / "contact_sheet.png") in result.output


def test_sheet_of_a_single_axis_says_it_wraps(tmp_path: Path) -> None:
    from _outputs_fixture import plan_jobs

    subjects = {f"s{i}": f"subject {i}" for i in range(1, 8)}
    make_folder(tmp_path, jobs=plan_jobs(subjects=subjects, styles={"photo": "photo"}, resolutions={"1:1": "1K"}), states={})
    result = run("sheet", tmp_path, "--cell", "32")
    assert result.exit_code == 0, result.output
    assert "1 page(s), subject wrapped 3 across, left to right then down" in result.output


@pytest.mark.parametrize("command", ["sheet", "report", "gallery"])
def test_a_command_drawing_a_folder_a_run_works_in_says_so_and_draws_what_is_done(folder: Path, command: str) -> None:
    import os

    from seedream_pipe.runner.folder import folder_lock

    with folder_lock(folder):  # what a run holds while it works
        result = run(command, folder)
    assert result.exit_code == 0, result.output
    assert (
        f"note: a run (pid {os.getpid()}) is at work in {folder} now: these are its outputs so far, "
        "and it writes them again when it ends"
    ) in result.stderr
    assert "is at work" not in run(command, folder).stderr  # (the lock released: no run there)


def test_sheet_options_page_and_format(folder: Path) -> None:
    result = run(
        "sheet",
        folder,
        "--rows",
        "style",
        "--cols",
        "resolution",
        "--page-by",
        "subject",
        "--cell",
        "32",
        "--format",
        "jpeg",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.glob("contact_sheet*")) == [
        "contact_sheet-01.jpg",
        "contact_sheet-02.jpg",
    ]
    assert "2 page(s)" in result.output


def test_a_recipe_argument_uses_its_output_folder_and_its_sheet_settings(
    tmp_path: Path, folder: Path
) -> None:
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    result = run("sheet", recipe)
    assert result.exit_code == 0, result.output
    assert "rows: style; columns: subject, resolution" in result.output
    assert (folder / "contact_sheet.png").is_file()


def test_report_prints_the_summary_and_writes_the_report_and_manifest(folder: Path) -> None:
    ended_run(folder)
    result = run("report", folder)
    assert result.exit_code == 0, result.output
    assert (
        result.output.splitlines()[0]
        == "8 jobs: 5 done, 1 failed, 1 cancelled, 1 not done (1 in_queue)"
    )
    assert "429s 2 · retries 3" in result.output
    assert len(pd.read_csv(folder / "report.csv")) == 8
    assert (folder / "manifest.json").is_file()
    assert run("report", folder, "--format", "parquet").exit_code == 0
    assert len(pd.read_parquet(folder / "report.parquet")) == 8
    # both reports are there, and the manifest says so (it listed report.parquet alone)
    outputs = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["outputs"]
    assert {"report.csv", "report.parquet"} <= set(outputs)


def test_reports_in_two_formats_leave_the_manifest_as_it_was(folder: Path) -> None:
    # Each switch of format put the report just written first, so a make file with a csv and a
    # json target rewrote manifest.json (and its generated_at) at every make.
    ended_run(folder)
    assert run("report", folder, "--format", "csv").exit_code == 0
    assert run("report", folder, "--format", "json").exit_code == 0
    manifest = (folder / "manifest.json").read_text(encoding="utf-8")
    assert json.loads(manifest)["outputs"][:2] == ["report.csv", "report.json"]
    for fmt in ("csv", "json", "csv"):
        assert run("report", folder, "--format", fmt).exit_code == 0
        assert (folder / "manifest.json").read_text(encoding="utf-8") == manifest


def test_outputs_drawn_again_never_get_newer_than_the_run_that_made_them(folder: Path) -> None:
    # A make target (manifest.json, report.csv) rewritten by `sheet --page-by` or `report
    # --format json` (new files, which the manifest lists) took the time of the rewrite: newer
    # than a recipe edited since, so make skipped the run the edit needs. Only a run dates them.
    import os

    ended_run(folder)
    assert run("report", folder).exit_code == 0 and run("gallery", folder).exit_code == 0
    long_ago = 1_000_000_000_000_000_000  # (2001, in ns)
    targets = [folder / "manifest.json", folder / "report.csv", folder / "gallery.html"]
    for path in targets:
        os.utime(path, ns=(long_ago, long_ago))
    manifest = (folder / "manifest.json").read_bytes()
    assert run("sheet", folder, "--page-by", "resolution").exit_code == 0
    assert run("report", folder, "--format", "json").exit_code == 0
    assert run("gallery", folder).exit_code == 0
    assert (folder / "manifest.json").read_bytes() != manifest  # (drawn anew: it lists the pages)
    assert [path.stat().st_mtime_ns for path in targets] == [long_ago] * 3
    assert (folder / "report.json").stat().st_mtime_ns > long_ago  # (a new file: dated now)


def test_report_never_makes_a_manifest_a_make_rule_would_take_for_a_finished_run(folder: Path) -> None:
    # After an interrupted run (no outputs), `report` wrote manifest.json, dated now: the make
    # rule's target, newer than its recipe, so make took the sweep as done.
    result = run("report", folder)
    assert result.exit_code == 0, result.output
    assert (folder / "report.csv").is_file()
    assert not (folder / "manifest.json").exists()
    assert "manifest.json" not in result.output
    # one a run wrote gets the report added, as `sheet` and `gallery` add theirs
    ended_run(folder)
    assert run("report", folder, "--format", "json").exit_code == 0
    assert json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["outputs"] == ["report.json"]


def test_report_shows_the_api_s_failure_text_with_control_characters_escaped(folder: Path) -> None:
    from seedream_pipe.state import StateStore

    with StateStore.for_output_dir(folder) as store:
        failed = store.jobs(states=("failed",))[0]
        store.update(failed.job_id, error="rejected\x1b[2J\x1b]0;owned\x07\rok")
    result = CliRunner().invoke(cli, ["report", str(folder)], color=True)  # as on a terminal
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\r" not in result.output and "\x07" not in result.output
    assert "rejected\\x1b[2J\\x1b]0;owned\\x07\\rok" in result.output


def test_gallery_command(folder: Path) -> None:
    result = run("gallery", folder)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(folder / "gallery.html")


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sheet", "report", "gallery"])
def test_an_empty_folder_is_nothing_to_show_and_stays_empty(tmp_path: Path, command: str) -> None:
    result = run(command, tmp_path)
    assert result.exit_code == EX_NOINPUT
    assert "no run has written here yet" in result.output
    assert list(tmp_path.iterdir()) == []  # no state database created by looking


def test_a_recipe_never_run_is_nothing_to_show(tmp_path: Path) -> None:
    # the command it gives pastes as it is, a space in the path included
    recipe = tmp_path / "my sweep.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    result = run("sheet", recipe)
    assert result.exit_code == EX_NOINPUT
    assert f"run it first: seedream-pipe run '{recipe}')" in result.output


def test_a_folder_whose_state_has_no_jobs_is_nothing_to_show(tmp_path: Path) -> None:
    from seedream_pipe.state import StateStore

    StateStore.for_output_dir(tmp_path).close()
    result = run("report", tmp_path)
    assert result.exit_code == EX_NOINPUT
    assert "holds no jobs" in result.output


def test_unknown_axes_list_the_axes_the_sweep_has(folder: Path) -> None:
    result = run("sheet", folder, "--rows", "mood,style")
    assert result.exit_code == EX_USAGE
    assert (
        "error: --rows: no axis 'mood' in this sweep; its axes are: subject, style, resolution"
        in result.output
    )
    result = run("sheet", folder, "--cols", "size")
    assert result.exit_code == EX_USAGE
    assert "its axes are: subject, style, resolution" in result.output
    assert not (folder / "contact_sheet.png").exists()


def test_the_same_axis_on_both_sides(folder: Path) -> None:
    result = run("sheet", folder, "--rows", "subject,style", "--cols", "style")
    assert result.exit_code == EX_USAGE
    assert "axis 'style' is named in both --rows and --cols" in result.output


@pytest.mark.parametrize("given", ["recipe", "folder"])
def test_one_sheet_option_wins_over_the_recipe_s_sheet_settings(tmp_path: Path, given: str) -> None:
    # The recipe puts style down the side and subject, resolution across; naming one of those
    # axes elsewhere moves it there, and was refused as if the user had named it twice.
    sheet = {"rows": ["style"], "cols": ["subject", "resolution"], "page_by": None, "cell": 64}
    make_folder(tmp_path / "out", recipe_meta={"name": "sweep", "sheet": sheet})
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    target = recipe if given == "recipe" else tmp_path / "out"
    for option, sides in [
        (["--cols", "style"], "rows: subject; columns: style"),  # (the recipe's rows emptied: the default)
        (["--rows", "subject"], "rows: subject; columns: resolution"),
        (["--rows", "subject,resolution"], "rows: subject, resolution; columns: -"),
        (["--page-by", "subject"], "2 page(s), rows: style; columns: resolution"),
    ]:
        result = run("sheet", target, *option)
        assert result.exit_code == 0, result.output
        assert sides in result.output, option
    result = run("sheet", target, "--rows", "subject", "--cols", "subject")
    assert result.exit_code == EX_USAGE
    assert "error: axis 'subject' is named in both --rows and --cols" in result.output


def test_a_clash_in_the_recorded_sheet_settings_names_them_not_the_options(tmp_path: Path) -> None:
    clash = {"rows": ["style"], "cols": ["style", "resolution"], "page_by": None}
    make_folder(tmp_path, recipe_meta={"name": "sweep", "sheet": clash})
    result = run("sheet", tmp_path, "--cell", "32")
    assert result.exit_code == EX_USAGE
    assert "error: axis 'style' is named in both sheet.rows and sheet.cols" in result.output
    assert run("sheet", tmp_path, "--cols", "resolution", "--cell", "32").exit_code == 0  # one side given: no clash


def test_a_read_only_output_folder_is_a_clear_error(folder: Path) -> None:
    # Tests run as root, for whom chmod does not bite: make each output path something a file
    # cannot replace, which fails the same way a read-only folder does.
    for name in ("report.csv", "contact_sheet.png", "gallery.html"):
        (folder / name).mkdir()
    for command, name in (
        ("report", "report.csv"),
        ("sheet", "contact_sheet.png"),
        ("gallery", "gallery.html"),
    ):
        result = run(command, folder)
        assert result.exit_code == EX_CANTCREAT, result.output
        assert f"error: {folder / name}: cannot write" in result.output
        assert "Traceback" not in result.output
    assert not list(folder.glob(".*.tmp"))  # no temporary file left behind


def test_a_folder_under_a_regular_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = run("report", tmp_path / "file" / "out")
    assert result.exit_code == EX_NOINPUT  # nothing there to read, as for any path that is not there
    assert "no such recipe file or output folder" in result.output


def test_every_command_has_help() -> None:
    for command in ("sheet", "report", "gallery"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert "Example:" in result.output


def test_a_read_only_folder_is_refused_up_front(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root, chmod cannot make a folder read-only to us, so the permission check is what is
    # faked here; the write failures it stands for are exercised for real above.
    import seedream_pipe.outputs._folder as folder_module

    real_access = folder_module.os.access

    def access(path: str | Path, mode: int) -> bool:
        if Path(path) == folder and mode & folder_module.os.W_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(folder_module.os, "access", access)
    for command in ("sheet", "report", "gallery"):
        result = run(command, folder)
        assert result.exit_code == EX_CANTCREAT
        assert "the output folder is read-only" in result.output
    assert not (folder / "report.csv").exists()


def test_the_docs_show_each_command_s_current_help() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "outputs.md").read_text(encoding="utf-8")
    for command in ("sheet", "report", "gallery"):
        result = CliRunner().invoke(
            cli, [command, "--help"], prog_name="seedream-pipe", terminal_width=100
        )
        assert result.output.strip() in docs, f"docs/outputs.md: refresh the --help of {command}"


@pytest.mark.usefixtures("quick_runs")  # (two `run --sim`: their timings are not what is tested)
def test_outputs_drawn_again_unchanged_keep_their_files_and_a_run_writes_anew(tmp_path: Path) -> None:
    # `report DIR` rewrote report.csv with a new date: make then took it as newer than a recipe
    # edited since, and skipped the run the edit needed. (The inode tells a file rewritten.)
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(RECIPE + "run: {rpm: 6000, concurrency: 8}\n", encoding="utf-8")
    assert run("run", recipe, "--sim", "--quiet").exit_code == 0
    out = tmp_path / "out"
    names = ["report.csv", "manifest.json", "contact_sheet.png", "gallery.html"]

    def files() -> dict[str, int]:
        return {name: (out / name).stat().st_ino for name in names}

    after_run = files()
    for command in ("report", "sheet", "gallery"):
        assert run(command, out).exit_code == 0
    assert files() == after_run
    manifest = (out / "manifest.json").read_text(encoding="utf-8")
    assert all(f'"{name}"' in manifest for name in names[:1] + names[2:])  # `report` lists them all

    assert run("sheet", out, "--rows", "subject", "--cols", "style").exit_code == 0  # a new layout
    assert files()["contact_sheet.png"] != after_run["contact_sheet.png"]
    # pages are drawn in threads: the same holds for each of them
    assert run("sheet", out, "--rows", "subject", "--cols", "resolution", "--page-by", "style").exit_code == 0
    pages = sorted(out.glob("contact_sheet-*.png"))
    inodes = [page.stat().st_ino for page in pages]
    assert len(pages) == 2 and run("sheet", out, "--rows", "subject", "--cols", "resolution", "--page-by", "style").exit_code == 0
    assert [page.stat().st_ino for page in pages] == inodes
    assert run("run", recipe, "--sim", "--quiet").exit_code == 0  # a run: newer than its recipe
    assert all(files()[name] != after_run[name] for name in ("report.csv", "manifest.json", "gallery.html"))


@pytest.mark.usefixtures("quick_runs")
@pytest.mark.parametrize("command", ["sheet", "report", "gallery"])
def test_a_recipe_edited_since_its_run_leaves_the_manifest_s_recipe_the_one_that_ran(
    tmp_path: Path, command: str
) -> None:
    # The edited recipe never ran: a manifest crediting it with the run's files would re-run
    # another experiment than the one on disk.
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(RECIPE + "run: {rpm: 6000, concurrency: 8}\n", encoding="utf-8")
    assert run("run", recipe, "--sim", "--quiet").exit_code == 0
    out = tmp_path / "out"
    ran = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    recipe.write_text(RECIPE.replace("[watercolor, photo]", "[watercolor, photo, ink]") + "run: {rpm: 6000}\n", encoding="utf-8")

    result = CliRunner().invoke(cli, [command, str(recipe)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["recipe"] == ran["recipe"]
    assert manifest["recipe"]["hash"] == manifest["runs"][-1]["recipe_hash"]
    assert "ink" not in manifest["recipe"]["source_text"]
    assert manifest["counts"]["jobs"] == len(manifest["files"]) == 8
    assert result.stderr.strip() == (
        f"warning: {recipe} was edited since its last run: the outputs show the jobs of the recipe "
        "that ran, and manifest.json keeps that recipe; run it to bring them up to date"
    )


def test_the_manifest_lists_the_outputs_as_they_are_after_sheet_and_gallery(folder: Path) -> None:
    import json

    def listed() -> list[str]:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["outputs"]

    ended_run(folder)
    assert run("sheet", folder, "--cell", "32").exit_code == 0
    assert run("report", folder).exit_code == 0
    assert listed() == ["report.csv", "contact_sheet.png"]
    assert run("sheet", folder, "--cell", "32", "--format", "jpeg").exit_code == 0
    assert listed() == ["report.csv", "contact_sheet.jpg"]
    assert run("sheet", folder, "--cell", "32", "--max-cells", "3").exit_code == 0
    assert listed() == ["report.csv", *(f"contact_sheet-0{i}.png" for i in range(1, 5))]
    assert run("gallery", folder).exit_code == 0
    assert listed() == ["report.csv", *(f"contact_sheet-0{i}.png" for i in range(1, 5)), "gallery.html"]
    assert all((folder / name).is_file() for name in listed())
    # nothing changed: the manifest keeps its file (the rule `report` and `sheet` DIR follow)
    inode = (folder / "manifest.json").stat().st_ino
    assert run("sheet", folder, "--cell", "32", "--max-cells", "3").exit_code == 0
    assert run("gallery", folder).exit_code == 0
    assert (folder / "manifest.json").stat().st_ino == inode


def test_sheet_and_gallery_make_no_manifest_where_there_is_none(folder: Path) -> None:
    assert run("sheet", folder, "--cell", "32").exit_code == 0
    assert run("gallery", folder).exit_code == 0
    assert not (folder / "manifest.json").exists()


def test_report_warns_of_image_files_gone_from_disk(folder: Path) -> None:
    from _outputs_fixture import IMAGES_DIR

    images = sorted((folder / IMAGES_DIR).iterdir())
    images[0].unlink()
    images[3].write_bytes(b"garbage")
    result = CliRunner().invoke(cli, ["report", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (
        "warning: 2 image files of done jobs are not on disk as downloaded (1 missing, 1 changed): "
        "run the recipe again to fetch them (report.csv's image_file column names them)"
    )
    clean = CliRunner().invoke(cli, ["report", str(make_folder(folder.parent / "clean").path)])
    assert clean.exit_code == 0 and clean.stderr == ""


def test_gallery_warns_of_image_files_gone_from_disk(folder: Path) -> None:
    from _outputs_fixture import IMAGES_DIR

    sorted((folder / IMAGES_DIR).iterdir())[0].unlink()
    result = CliRunner().invoke(cli, ["gallery", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (
        "warning: 1 image file of a done job is not on disk as downloaded (1 missing): "
        "run the recipe again to fetch it (the gallery marks it)"
    )


def test_the_sheet_help_example_lays_out_the_demo_without_a_warning(tmp_path: Path) -> None:
    # It was `sheet outputs/demo --rows style --cols resolution`: on the demo (scene x light x
    # style, one resolution) it warned that scene and light were on no side, four images a cell.
    from seedream_pipe.recipe import load_recipe

    demo = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"
    make_folder(tmp_path / "demo", jobs=load_recipe(demo).plan().jobs, states={})
    example = next(line.split() for line in run("sheet", "--help").output.splitlines()
                   if line.strip().startswith("seedream-pipe sheet outputs/demo"))
    assert example[:3] == ["seedream-pipe", "sheet", "outputs/demo"]
    result = CliRunner().invoke(cli, ["sheet", str(tmp_path / "demo"), *example[3:]])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    assert "rows: scene, light; columns: style" in result.stdout


def test_sheet_counts_the_thumbnails_it_made_in_words(tmp_path: Path) -> None:
    # "made 1 missing thumbnails (kept for next time)"
    make_folder(tmp_path / "one", no_thumbs=[1])
    assert "made 1 missing thumbnail (kept for next time)\n" in run("sheet", tmp_path / "one", "--cell", "32").output
    make_folder(tmp_path / "two", no_thumbs=[1, 2])
    assert "made 2 missing thumbnails (kept for next time)\n" in run("sheet", tmp_path / "two", "--cell", "32").output
