"""manifest.json: the recipe, versions, host, times, counts and who made each file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _outputs_fixture import MODEL, make_folder

from seedream_pipe import __version__
from seedream_pipe.outputs import open_output, write_manifest
from seedream_pipe.outputs.manifest import safe_host
from seedream_pipe.state import StateStore

#: The recipe make_folder records for its run, as the manifest names it.
RECORDED_RECIPE = {
    "name": "sweep",
    "path": "recipes/sweep.yaml",
    "hash": "f" * 64,
    "source_text": "name: sweep\n",
    "resolved": {"name": "sweep"},
}


def test_manifest_names_the_recipe_versions_host_times_counts_and_files(tmp_path: Path) -> None:
    fx = make_folder(tmp_path)
    path = write_manifest(open_output(tmp_path), outputs=[tmp_path / "report.csv"])
    manifest = json.loads(path.read_text(encoding="utf-8"))
    assert manifest["tool"] == {"name": "seedream-pipe", "version": __version__}
    assert manifest["recipe"] == RECORDED_RECIPE
    assert manifest["model"] == MODEL
    assert manifest["api_host"] == "127.0.0.1:8765"
    assert manifest["started_at"] == "2026-09-21T14:13:20.000Z"
    assert manifest["finished_at"].startswith("2026-09-21T14:")
    assert manifest["counts"] == {
        "jobs": 8,
        "done": 5,
        "failed": 1,
        "cancelled": 1,
        "pending": 1,
        "by_state": {"downloaded": 5, "failed": 1, "cancelled": 1, "in_queue": 1},
    }
    files = {entry["job_id"]: entry for entry in manifest["files"]}
    assert sorted(files) == ["j001", "j002", "j004", "j005", "j007"]
    assert files["j002"]["path"] == fx.image(2).relative_to(tmp_path).as_posix()
    assert files["j002"]["sha256"] == "ab" * 32
    assert (files["j002"]["width"], files["j002"]["height"]) == (128, 72)
    assert files["j002"]["axes"] == {"subject": "cat", "style": "watercolor", "resolution": "16:9"}
    assert manifest["outputs"] == ["report.csv"]
    assert manifest["runs"][0]["summary"] == {"rate_limited": 2, "retries": 3, "http_requests": 40}


def test_no_credential_survives(tmp_path: Path) -> None:
    make_folder(tmp_path, with_run=False)
    with StateStore.for_output_dir(tmp_path) as store:
        store.start_run(
            api_host="https://user:sk-SECRET@model-api.runcomfy.net/v1?token=sk-SECRET2"
        )
        store.finish_run(exit_code=0, summary={"note": "Bearer sk-SECRET3", "retries": 1})
    text = write_manifest(open_output(tmp_path)).read_text(encoding="utf-8")
    assert "SECRET" not in text
    assert json.loads(text)["api_host"] == "model-api.runcomfy.net"


def test_safe_host() -> None:
    assert safe_host("http://127.0.0.1:8765/v1") == "127.0.0.1:8765"
    assert safe_host("model-api.runcomfy.net") == "model-api.runcomfy.net"
    assert safe_host("https://a:b@h.example/x?y=z") == "h.example"
    assert safe_host("") is None
    assert safe_host(None) is None
    assert safe_host("http://h:notaport/") is None


def test_a_folder_without_recipe_meta_still_gets_a_manifest(tmp_path: Path) -> None:
    make_folder(tmp_path, recipe_meta={}, with_run=False)
    manifest = json.loads(write_manifest(open_output(tmp_path)).read_text(encoding="utf-8"))
    assert manifest["recipe"]["name"] == tmp_path.name
    assert manifest["recipe"]["hash"] is None
    assert manifest["model"] == MODEL  # from the jobs themselves
    assert manifest["runs"] == [] and manifest["started_at"] is None


def test_a_recipe_given_keeps_the_recorded_recipe_in_the_manifest(tmp_path: Path) -> None:
    # A recipe file given (`report RECIPE`, a notebook's open_output(recipe=...)) may have been
    # edited since the run: its sheet settings may lay the sheet out, but the manifest records
    # the recipe the folder's jobs follow, which the runner recorded.
    from seedream_pipe.recipe import load_recipe

    make_folder(tmp_path / "out")
    edited = tmp_path / "sweep.yaml"
    edited.write_text(
        'name: sweep\ntemplate: "{{ s }}"\nvars: {s: [a, b, c]}\noutput: out\n',
        encoding="utf-8",
    )
    folder = open_output(tmp_path / "out", recipe=load_recipe(edited))
    manifest = json.loads(write_manifest(folder).read_text(encoding="utf-8"))
    assert manifest["recipe"] == RECORDED_RECIPE
    assert manifest["model"] == MODEL

    from seedream_pipe.outputs._folder import edited_recipe_warning

    assert edited_recipe_warning(folder) == (
        f"{edited} was edited since its last run: the outputs show the jobs of the recipe that ran, "
        "and manifest.json keeps that recipe; run it to bring them up to date"
    )
    assert edited_recipe_warning(open_output(tmp_path / "out")) is None


def test_write_outputs_writes_all_four_and_the_manifest_lists_them(tmp_path: Path) -> None:
    from seedream_pipe.outputs import write_outputs

    make_folder(tmp_path)
    written = write_outputs(tmp_path)
    assert [p.name for p in written] == [
        "report.csv",
        "contact_sheet.png",
        "gallery.html",
        "manifest.json",
    ]
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["outputs"] == ["report.csv", "contact_sheet.png", "gallery.html"]


@pytest.mark.usefixtures("quick_runs")  # (two `run --sim`: their timings are not what is tested)
def test_api_host_is_the_host_the_folder_is_bound_to_and_the_docs_say_so(tmp_path: Path) -> None:
    # `run --sim` serves on a new port each time and a folder is bound to the API's host name
    # (config.api_host, runner.check_same_api), so the runs record the host without its port:
    # the manifest shows exactly that, and the docs must not promise a port.
    from click.testing import CliRunner

    from seedream_pipe.cli import cli

    recipe = tmp_path / "one.yaml"
    for colours in ("red", "red, blue"):  # the second run, on another port, is let into the folder
        recipe.write_text(
            f'name: one\ntemplate: "a {{{{ c }}}} cat"\nvars: {{c: [{colours}]}}\nresolutions: ["1K"]\n'
            "output: out\nrun: {rpm: 6000}\n",
            encoding="utf-8",
        )
        result = CliRunner().invoke(cli, ["run", str(recipe), "--sim", "--quiet"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["api_host"] == "127.0.0.1"
    assert [run["api_host"] for run in manifest["runs"]] == ["127.0.0.1", "127.0.0.1"]
    docs = (Path(__file__).resolve().parent.parent / "docs" / "outputs.md").read_text(encoding="utf-8")
    assert "host[:port]" not in docs
    assert '"api_host": "model-api.runcomfy.net"' in docs
    assert "`api_host` is the API's host name alone" in docs


def test_the_manifest_lists_only_image_files_still_on_disk(tmp_path: Path) -> None:
    fx = make_folder(tmp_path)
    fx.image(1).unlink()
    fx.image(5).write_bytes(b"corrupt")
    manifest = json.loads(write_manifest(open_output(tmp_path)).read_text(encoding="utf-8"))
    assert sorted(entry["job_id"] for entry in manifest["files"]) == ["j002", "j004", "j007"]
    assert manifest["missing_files"] == [
        {"path": fx.image(1).relative_to(tmp_path).as_posix(), "job_id": "j001", "index": 1, "image_file": "missing"},
        {"path": fx.image(5).relative_to(tmp_path).as_posix(), "job_id": "j005", "index": 5, "image_file": "changed"},
    ]


def test_the_outputs_a_run_writes_warn_of_missing_image_files(tmp_path: Path, caplog: object) -> None:
    import logging

    from seedream_pipe.outputs import write_outputs

    fx = make_folder(tmp_path)
    fx.image(1).unlink()
    fx.thumb(1).unlink()
    with caplog.at_level(logging.WARNING):  # type: ignore[attr-defined]
        write_outputs(tmp_path)
    text = caplog.text  # type: ignore[attr-defined]
    assert "1 image file of a done job is not on disk as downloaded (1 missing)" in text
    assert "run the recipe again to fetch it" in text
