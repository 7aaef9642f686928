"""The README's command reference is each command's own --help, and every command has one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from seedream_pipe.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def _reference_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("readme_reference", ROOT / "scripts" / "readme_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_command_reference_is_current() -> None:
    script = _reference_script()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert script.render(readme) == readme, "run: python scripts/readme_reference.py"


def test_every_command_has_help_with_an_example_and_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in cli.list_commands(None):  # type: ignore[arg-type]
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"{name} --help has no Example block"
        assert f"### `seedream-pipe {name}`" in readme


def test_readme_gives_the_two_setup_commands_and_ci_runs_make_test() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_every_doc_the_readme_links_exists() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in ("docs/recipes.md", "docs/runner.md", "docs/simulator.md", "docs/outputs.md", "docs/demo-sheet.jpg"):
        assert f"({target})" in readme
        assert (ROOT / target).is_file(), target


def test_the_readme_notebook_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run as a notebook runs a cell: top-level await, in a folder holding the recipes
    import ast
    import asyncio
    import re
    import shutil

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python", readme.index("The same from a notebook")) + len("```python")
    source = readme[start : readme.index("```", start)]
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    # The copy's submits unpaced: at the demo's rpm of 60 its 8 submits took 7 s, a pace the
    # pacer's own tests check; here what is checked is the example's code, which runs as written.
    demo = tmp_path / "recipes" / "demo.yaml"
    demo.write_text(re.sub(r"\brpm: *\d+", "rpm: 6000", demo.read_text(encoding="utf-8"), count=1), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    scope: dict[str, Any] = {}
    asyncio.run(eval(code, scope))  # (the README's own example, as written)
    assert scope["result"].ok
    assert len(scope["df"]) == len(scope["plan"].jobs) == 8


def test_the_outputs_notebook_example_gives_the_report_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It gave report_frame the jobs alone: its DataFrame had no word on whether an image was on disk.
    from _outputs_fixture import make_folder

    docs = (ROOT / "docs" / "outputs.md").read_text(encoding="utf-8")
    start = docs.index("```python", docs.index("A notebook calls the same library")) + len("```python")
    source = docs[start : docs.index("```", start)]
    make_folder(tmp_path / "outputs" / "demo")  # 5 jobs of 8 done
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(source, "docs/outputs.md", "exec"), scope)  # (the example as written)
    assert list(scope["df"]["image_file"].fillna("")) == ["present"] * 2 + [""] + ["present"] * 2 + ["", "present", ""]
    assert (tmp_path / "outputs" / "demo" / "report.csv").is_file()


def test_the_readme_says_what_a_timeout_around_a_run_raises(tmp_path: Path) -> None:
    # It said CancelledError, which the timeout catches and turns into its own TimeoutError.
    import asyncio

    from seedream_pipe.config import ApiSettings
    from seedream_pipe.recipe import load_recipe
    from seedream_pipe.runner import arun_recipe
    from seedream_pipe.sim import SimConfig, Simulator
    from seedream_pipe.state import StateStore

    async def timed_out(base_url: str) -> None:
        async with asyncio.timeout(0.5):
            await arun_recipe(load_recipe(ROOT / "recipes" / "demo.yaml"), api=ApiSettings(base_url, "x"),
                              out_dir=tmp_path / "out")

    with Simulator(SimConfig(workers=0)) as sim, pytest.raises(BaseException) as caught:  # (jobs never finish)
        asyncio.run(timed_out(sim.base_url))
    with StateStore.for_reading(tmp_path / "out") as store:
        assert store.jobs()  # (state kept, as the README says)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    said = readme[readme.index("Interrupting the cell") :]
    said = said[: said.index(". ")]
    assert "a timeout around it" in said and f"raises `{type(caught.value).__name__}`" in said


def test_the_readme_make_rule_targets_the_file_a_run_writes_last_and_retries_nothing(tmp_path: Path) -> None:
    import re

    from seedream_pipe.config import ApiSettings
    from seedream_pipe.recipe import load_recipe
    from seedream_pipe.runner import RunOptions, run_recipe
    from seedream_pipe.sim import SimConfig, Simulator

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("```make") + len("```make")
    rule = readme[start : readme.index("```", start)]
    # --retry-failed sends again failed jobs the API may have billed: not for a rule make repeats
    commands = [line for line in rule.splitlines() if line.startswith("\t")]
    assert commands and not any("--retry-failed" in command for command in commands)
    target = re.search(r"^outputs/[\w-]+/([\w.]+):", rule, re.MULTILINE)
    assert target is not None
    # the file a run writes last, so that a run stopped half way never leaves it up to date
    recipe = tmp_path / "r.yaml"
    recipe.write_text('template: "{{ thing }}"\nvars:\n  thing: [a kite]\nresolutions: [1K]\n', encoding="utf-8")
    with Simulator(SimConfig(latency=0.01)) as sim:
        result = run_recipe(
            load_recipe(recipe), api=ApiSettings(sim.base_url, "tok"), out_dir=tmp_path / "o",
            options=RunOptions(rpm=6000, first_poll_s=0.02),
        )
    assert result.ok and result.outputs[-1].name == target.group(1)
    # the promise about paying says its exception where it is made
    intro = readme[: readme.index("\n## ")]
    assert "never pays twice" not in readme and "--no-resubmit-unknown" in intro


def test_the_command_list_of_help_reads_whole_on_an_80_column_terminal() -> None:
    # `seedream-pipe --help` cut 7 of its 11 summaries short on 80 columns, some mid-phrase:
    # "init      Write a commented starter recipe to PATH (default:..."
    result = CliRunner().invoke(cli, ["--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    listed = result.output.split("Commands:\n", 1)[1].splitlines()
    assert len(listed) == len(cli.list_commands(None))  # type: ignore[arg-type]  # (one line each)
    for line in listed:
        assert len(line) <= 80 and not line.endswith("..."), line


def test_sheet_options_a_recipe_sets_name_the_recipe_in_their_default() -> None:
    # --max-cells said "[default: 100]", while `sheet DIR` takes a recipe's sheet.max_cells when
    # the option is not given, as --cell takes sheet.cell (and says so)
    result = CliRunner().invoke(cli, ["sheet", "--help"], terminal_width=1000)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for option, key in (("--cell", "sheet.cell"), ("--max-cells", "sheet.max_cells")):
        line = next(line for line in lines if line.strip().startswith(option))
        assert f"recipe's {key}" in line, line

