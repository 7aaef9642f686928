"""The recipe commands as a user runs them: validate, plan, schema, init; and the bad-input list."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner, Result

from seedream_pipe.cli import cli

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def write(folder: Path, text: str | bytes, name: str = "recipe.yaml") -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- validate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path: Path) -> None:
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {path} (")
    assert result.stderr == ""


def test_validate_a_folder() -> None:
    result = invoke("validate", str(RECIPES))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("ok: ") == len(list(RECIPES.glob("*.yaml")))


def test_validate_a_folder_says_a_recipe_link_that_broke(tmp_path: Path) -> None:
    # a .yaml link to nothing, or to itself, was passed over: "ok" for the others, exit 0
    write(tmp_path, 'template: "a {{ x }}"\nvars: {x: [1, 2]}\n', "good.yaml")
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "moved-away.yaml")
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 65, result.output
    assert f"ok: {tmp_path / 'good.yaml'} (2 jobs)" in result.stdout
    assert f"{tmp_path / 'gone.yaml'}: is a symbolic link to {tmp_path / 'moved-away.yaml'}, which is not there" in result.stderr
    assert f"{tmp_path / 'loop.yaml'}: is a symbolic link that leads back to itself" in result.stderr


def test_validate_says_when_a_valid_recipe_is_over_the_job_limit(tmp_path: Path) -> None:
    # "ok: big.yaml (30,000 jobs)" and exit 0, then plan and run refused it with 65
    values = ", ".join(f"v{i}" for i in range(100))
    big = write(tmp_path, f'template: "{{{{ a }}}} {{{{ b }}}} {{{{ c }}}}"\nvars: {{a: [{values}], b: [{values}], c: [x, y, z]}}\n')
    result = invoke("validate", str(big))
    assert result.exit_code == 0
    assert result.stdout == (f"ok: {big} (30,000 jobs; over the 10,000 that plan and run take without --yes "
                             "or --max-jobs)\n")
    assert "over the" not in invoke("validate", str(RECIPES / "demo.yaml")).stdout


def test_validate_reports_every_problem_of_every_recipe(tmp_path: Path) -> None:
    a = write(tmp_path, 'template: "{{ a }}"\nvars:\n  a: [x]\n  b: [y]\n', "a.yaml")
    b = write(tmp_path, "- not a mapping\n", "b.yaml")
    result = invoke("validate", str(a), str(RECIPES / "demo.yaml"), str(b))
    assert result.exit_code == 65
    assert "ok: " in result.stdout and "demo.yaml (8 jobs)" in result.stdout
    assert result.stderr.splitlines() == [
        f"error: {a}:4:3: vars.b: var 'b' is used by no template (it would only repeat the same "
        "prompts); use {{ b }} or remove it",
        f"error: {b}:1:1: a recipe must be a mapping of keys (template:, vars:, ...), not a list",
    ]


# A new user's recipes (review): each problem was shown only once the one before it was fixed.
MISSPELT_KEY = """\
name: t1
template: "{{ subject }} at {{ tme }}"
vars:
  subject: [a fox, a cat]
  time: [dawn, dusk]
resolutons: [1K]
"""
EVERY_KIND = """\
name: "bad name!"
template: "{{ animal }} in {{ colour }}"
vars:
  animal: {file: missing.txt}
  colour: [red, blue]
resolutions: ["5:4"]
zip: [[animal, color]]
exclude: [{colour: red}]
sheet: {rows: [animl]}
price_per_image: free
run: {rpm: -1, concurency: 2}
"""


def test_validate_reports_every_problem_of_a_recipe_at_once_in_file_order(tmp_path: Path) -> None:
    t1 = write(tmp_path, MISSPELT_KEY, "t1.yaml")
    t3 = write(tmp_path, EVERY_KIND, "t3.yaml")
    result = invoke("validate", str(t1), str(t3))
    assert result.exit_code == 65
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {t1}:2:1: template: template line 1: 'tme' is undefined (did you mean 'time'?); "
        "the template can use: index, repeat, resolution, subject, time",
        # (not also "var 'time' is used by no template": 'tme' is the slip that leaves it unused)
        f"error: {t1}:6:1: resolutons: unknown key 'resolutons' (did you mean 'resolutions'?)",
        f"error: {t3}:1:1: name: a name uses only lower-case letters (any script), digits, - and _ "
        "(it names the output folder), got 'bad name!'; 'bad-name' would do",
        f"error: {t3}:4:12: vars.animal.file: var file not found: {tmp_path / 'missing.txt'}",
        f"error: {t3}:6:15: resolutions[0]: unknown resolution '5:4'; bytedance/seedream-4-0/text-to-image "
        "accepts: 1K, 2K, 4K, 2048x2048 (1:1), 2304x1728 (4:3), 1728x2304 (3:4), 2560x1440 (16:9), "
        "1440x2560 (9:16), 2496x1664 (3:2), 1664x2496 (2:3), 3024x1296 (21:9) (or a shorthand: 9:16, "
        "2:3, 3:4, 1:1, 4:3, 3:2, 16:9, 21:9, or WIDTHxHEIGHT alone)",
        f"error: {t3}:7:7: zip[0]: zip names 'color', which is not a var (did you mean 'colour'?)",
        f"error: {t3}:9:16: sheet.rows[0]: 'animl' is not an axis of this recipe (did you mean 'animal'?); "
        "axes: animal, colour",
        f"error: {t3}:10:1: price_per_image: should be a valid number, got 'free'",
        f"error: {t3}:11:7: run.rpm: should be greater than 0, got -1",
        f"error: {t3}:11:16: run.concurency: unknown key 'concurency' (did you mean 'concurrency'?)",
    ]


def test_plan_and_run_report_every_problem_at_once_as_validate_does(tmp_path: Path) -> None:
    t1 = write(tmp_path, MISSPELT_KEY, "t1.yaml")
    for command in ("plan", "run"):
        result = invoke(command, str(t1), "--sim") if command == "run" else invoke(command, str(t1))
        assert result.exit_code == 65, result.output
        assert [line.split(": ")[2] for line in result.stderr.splitlines()] == [
            "template", "resolutons"
        ], result.stderr


def test_validate_a_folder_checks_a_partial_base_through_the_recipes_that_extend_it(tmp_path: Path) -> None:
    write(tmp_path, "run: {rpm: 30}\nresolutions: [1K]\n", "common.yaml")  # no template: not a whole recipe
    write(tmp_path, 'extends: common.yaml\ntemplate: "{{ a }}"\nvars: {a: [x]}\n', "one.yaml")
    write(tmp_path, 'extends: common.yaml\ntemplate: "{{ b }}"\nvars: {b: [y]}\n', "two.yaml")
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"base: {tmp_path / 'common.yaml'} (not a whole recipe; checked as part of "
        f"{tmp_path / 'one.yaml'}, {tmp_path / 'two.yaml'})",
        f"ok: {tmp_path / 'one.yaml'} (1 job)",
        f"ok: {tmp_path / 'two.yaml'} (1 job)",
    ]
    # a problem in the base is still found, in the base, once
    write(tmp_path, "run: {rpm: -1}\nresolutions: [1K]\n", "common.yaml")
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 65
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'common.yaml'}:1:7: run.rpm: should be greater than 0, got -1"]
    # given on its own, it is not a recipe
    assert invoke("validate", str(tmp_path / "common.yaml")).exit_code == 65


def test_validate_reads_a_recipe_from_a_pipe_once(tmp_path: Path) -> None:
    # `validate <(generate-recipe)`, as `plan <(...)` takes it: the search for partial bases read
    # the pipe first, and the check itself then found "the recipe is empty" (exit 65)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b'template: "{{ a }}"\nvars: {a: [x, y]}\n')
        os.close(write_end)
        result = invoke("validate", f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"ok: /dev/fd/{read_end} (2 jobs)\n"


@pytest.mark.timeout(20)
def test_validate_does_not_wait_on_a_named_pipe_that_a_base_extends(tmp_path: Path) -> None:
    # plan refuses it; validate, looking for the files a.yaml extends to say which problems it
    # inherits, opened the pipe to read it and waited for a writer for good
    os.mkfifo(tmp_path / "pipe.yaml")
    write(tmp_path, "extends: pipe.yaml\n", "b.yaml")
    recipe = write(tmp_path, 'extends: b.yaml\ntemplate: "{{ a }}"\nvars: {a: [x]}\n', "a.yaml")
    result = invoke("validate", str(recipe))
    assert result.exit_code == 65
    assert result.stderr == (f"error: {tmp_path / 'b.yaml'}:1:1: extends: {tmp_path / 'pipe.yaml'} is not a regular "
                             f"file (a pipe or a device) (checking {recipe}, which extends it)\n")


def test_validate_a_folder_still_checks_a_base_that_is_a_whole_recipe(tmp_path: Path) -> None:
    # a base with a template is a recipe too (`run base.yaml` works or fails on its own): its
    # problems are its own, even where the recipe extending it overrides the broken part
    write(tmp_path, 'template: "a {{ subjcet }} in {{ style }}"\nvars: {subject: [fox], style: [ink]}\n', "base.yaml")
    write(tmp_path, 'extends: base.yaml\ntemplate: "a {{ subject }} in {{ style }}"\n', "child.yaml")
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 65
    assert "'subjcet' is undefined" in result.stderr and "base: " not in result.stdout
    assert f"ok: {tmp_path / 'child.yaml'} (1 job)" in result.stdout


def count_parses(monkeypatch: pytest.MonkeyPatch) -> dict[Path, int]:
    """How many times each recipe file (resolved) is parsed from now on in this test."""
    import seedream_pipe.recipe as recipe_module

    parsed: dict[Path, int] = {}
    parse = recipe_module.parse_yaml

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        parsed[path.resolve()] = parsed.get(path.resolve(), 0) + 1
        return parse(path, *args, **kwargs)

    monkeypatch.setattr(recipe_module, "parse_yaml", counting)
    return parsed


def test_validate_a_folder_checks_a_base_whose_template_comes_from_a_file_outside_it(tmp_path: Path) -> None:
    # mid.yaml takes its template from lib/root.yaml: it is a whole recipe (`plan mid.yaml`
    # fails, exit 65), yet validate called it "not a whole recipe" and, as leaf.yaml overrides
    # the broken key, said nothing of its problem and exited 0
    (tmp_path / "lib").mkdir()
    write(tmp_path / "lib", 'template: "{{ a }}"\nvars: {a: [x]}\n', "root.yaml")
    write(tmp_path, "extends: lib/root.yaml\nresolutions: [5:4]\n", "mid.yaml")
    write(tmp_path, "extends: mid.yaml\nresolutions: [1K]\n", "leaf.yaml")
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 65
    assert "base: " not in result.stdout and f"ok: {tmp_path / 'leaf.yaml'} (1 job)" in result.stdout
    assert result.stderr.startswith(f"error: {tmp_path / 'mid.yaml'}:2:15: resolutions[0]: unknown resolution '5:4'")


def test_validate_a_long_chain_of_recipes_takes_each_for_a_whole_recipe_and_reads_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only lib/root.yaml writes a template, which every file of the chain inherits: the search
    # for it gave up after 20 files (a chain may hold 100), so each file further from it was
    # "base: ... (not a whole recipe ...)", its problem said as one of the file extending it; and
    # lib/root.yaml was parsed again for every base.
    parsed = count_parses(monkeypatch)
    folder = tmp_path.resolve()
    (folder / "lib").mkdir()
    write(folder / "lib", 'template: "{{ a }}"\nvars: {a: [x]}\n', "root.yaml")
    for i in range(30):
        write(folder, f"extends: {f'r{i - 1:02d}' if i else 'lib/root'}.yaml\nrun: {{rpn: 1}}\n", f"r{i:02d}.yaml")
    result = invoke("validate", str(folder))
    assert result.exit_code == 65
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {folder / f'r{i:02d}.yaml'}:2:7: run.rpn: unknown key 'rpn' (did "
                                          "you mean 'rpm'?)" for i in range(30)]
    assert parsed == {folder / "lib" / "root.yaml": 1, **{folder / f"r{i:02d}.yaml": 1 for i in range(30)}}


def test_a_problem_a_recipe_makes_in_its_base_names_that_recipe(tmp_path: Path) -> None:
    # the child removed a var the base's template uses: the error is at the base's template,
    # but the base itself is fine; it said only "base.yaml:1:1 ... 'style' is undefined"
    write(tmp_path, 'template: "a {{ subject }}, {{ style }}"\nvars: {subject: [fox], style: [ink]}\n', "base.yaml")
    write(tmp_path, "extends: base.yaml\nvars: {style: ~}\n", "child.yaml")
    write(tmp_path, "extends: base.yaml\nvars: {style: ~}\n", "child2.yaml")
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 65
    assert f"ok: {tmp_path / 'base.yaml'} (1 job)" in result.stdout
    (line,) = result.stderr.splitlines()  # once, naming both
    assert line.startswith(f"error: {tmp_path / 'base.yaml'}:1:1: template") and "'style' is undefined" in line
    assert line.endswith(f"(checking {tmp_path / 'child.yaml'}, {tmp_path / 'child2.yaml'}, which extend it)")
    alone = invoke("validate", str(tmp_path / "child.yaml"))
    assert alone.stderr.strip().endswith(f"(checking {tmp_path / 'child.yaml'}, which extends it)")


def test_a_problem_in_a_var_file_names_the_recipe_reading_it_not_one_extending_it(tmp_path: Path) -> None:
    (tmp_path / "words.txt").write_text("a\nb\na\n", encoding="utf-8")
    write(tmp_path, 'template: "a {{ x }}"\nvars: {x: {file: words.txt}}\n', "w.yaml")
    result = invoke("validate", str(tmp_path / "w.yaml"))
    assert result.exit_code == 65
    assert result.stderr.strip().endswith(f"appears twice on axis 'x' (values and `label:` keys must be distinct) "
                                          f"(checking {tmp_path / 'w.yaml'})"), result.stderr


def test_validate_reads_each_file_of_a_chain_of_recipes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 400 recipes, each extending the one before and each with a problem: every recipe parsed
    # each base of its chain again (and again to find which files its problems came from),
    # 110,000 parses and 20 s, each file parsed as many times as the chain is long above it
    parsed = count_parses(monkeypatch)
    folder = tmp_path.resolve()
    for i in range(30):
        extends = f"extends: r{i - 1:02d}.yaml\n" if i else "vars: {a: [x]}\n"
        write(folder, f'{extends}template: "{{{{ a }}}} {i}"\nrun: {{rpn: 1}}\n', f"r{i:02d}.yaml")
    result = invoke("validate", str(folder))
    assert result.exit_code == 65
    assert parsed == {folder / f"r{i:02d}.yaml": 1 for i in range(30)}
    # the messages are those of each recipe checked on its own: each file's problem, once
    lines = result.stderr.splitlines()
    assert lines == [f"error: {folder / f'r{i:02d}.yaml'}:3:7: run.rpn: unknown key 'rpn' (did you mean "
                     "'rpm'?)" for i in range(30)]


def test_a_recipe_that_is_a_symbolic_link_loop_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    # `ln -s loop.yaml loop.yaml`: validate resolved it to find the partial bases and ended with
    # "unexpected RuntimeError" (exit 70); plan and run said "no such recipe file" of a file `ls` shows
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    (tmp_path / "a.yaml").symlink_to("b.yaml")
    (tmp_path / "b.yaml").symlink_to("a.yaml")
    ok = write(tmp_path, 'template: "{{ a }}"\nvars: {a: [x]}\n', "ok.yaml")
    result = invoke("validate", str(tmp_path / "loop.yaml"), str(ok), str(tmp_path / "a.yaml"))
    assert result.exit_code == 65, result.output
    assert result.stdout == f"ok: {ok} (1 job)\n"
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / name}: is a symbolic link that leads back to itself" for name in ("loop.yaml", "a.yaml")
    ]
    for args in (["plan"], ["run", "--dry-run"]):
        result = invoke(*args, str(tmp_path / "loop.yaml"))
        assert result.exit_code == 65, result.output
        assert result.stderr == f"error: {tmp_path / 'loop.yaml'}: is a symbolic link that leads back to itself\n"


def test_validate_prints_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ s }}"\nvars: {s: [{a: fox}, {b: fox}]}\n')
    result = invoke("validate", str(path))
    assert result.exit_code == 0
    assert "warning: " in result.stderr and "merged" in result.stderr


def test_validate_needs_a_recipe() -> None:
    assert invoke("validate").exit_code == 64


# --- the bad-input list: a clear message naming file, key path and line; exit 65 ---------------

BOMB = ['template: "{{ a }}"', 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
BOMB += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
BOMB += ["vars: {a: *l8}"]

BAD_INPUTS: dict[str, tuple[str | bytes, str]] = {
    "malformed YAML": ('template: "{{ a }}"\nvars:\n  a: [x, y\n  b: 1\n',
                       ":4:4: malformed YAML: did not find expected ',' or ']'"),
    "not a mapping": ("- a\n- b\n", ":1:1: a recipe must be a mapping of keys"),
    "unknown key": ('template: "{{ a }}"\nvars: {a: [x]}\ntemplates_: {}\n',
                    ":3:1: templates_: unknown key 'templates_' (did you mean 'templates'?)"),
    "wrong type": ('template: "{{ a }}"\nvars: {a: [x]}\nrepeats: many\n',
                   ":3:1: repeats: should be a valid integer, got 'many'"),
    "empty var list": ('template: "{{ a }}"\nvars:\n  a: []\n', ":3:3: vars.a: a var needs at least one value"),
    "unequal zip": ('template: "{{ a }}{{ b }}"\nvars: {a: [x], b: [y, z]}\nzip: [[a, b]]\n',
                    ":3:7: zip[0]: zipped vars need the same number of values: a has 1, b has 2"),
    "unused var": ('template: "{{ a }}"\nvars: {a: [x], b: [y]}\n', ":2:16: vars.b: var 'b' is used by no template"),
    "undefined variable": ('template: "{{ a }} {{ b }}"\nvars: {a: [x]}\n',
                           ":1:1: template: template line 1: 'b' is undefined"),
    "template syntax": ('template: |\n  {{ a }}\n  {{ a + }}\nvars: {a: [x]}\n',
                        ":3: template: template line 2: syntax error: "),
    "sandbox escape": ("template: \"{{ a }}{{ ''.__class__.__mro__ }}\"\nvars: {a: [x]}\n",
                       ":1:1: template: template line 1: refused by the sandbox: access to attribute '__class__'"),
    "unknown resolution": ('template: "{{ a }}"\nvars: {a: [x]}\nresolutions: [3K]\n',
                           ":3:15: resolutions[0]: unknown resolution '3K'; bytedance/seedream-4-0/text-to-image accepts: 1K, 2K, 4K, 2048x2048 (1:1)"),
    "extends missing": ('extends: base.yaml\ntemplate: "{{ a }}"\nvars: {a: [x]}\n',
                        ":1:1: extends: recipe not found: "),
    "extends cycle": ('extends: recipe.yaml\ntemplate: "{{ a }}"\nvars: {a: [x]}\n',
                      ":1:1: extends: cycle: recipe.yaml -> recipe.yaml"),
    "non-UTF-8": (b'template: "{{ a }}"\nvars: {a: [\xff]}\n', ":2:12: the recipe is not UTF-8 text"),
    "alias bomb": ("\n".join(BOMB) + "\n", "the YAML expands to more than 100,000 values through aliases"),
    "invisible prompt": ('template: "{{ a }}"\nvars: {a: [x, "\\u200b"]}\n',
                         ":1:1: template: the template renders a prompt with nothing visible for 1 job(s)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_bad_input(tmp_path: Path, case: str, command: str) -> None:
    text, expected = BAD_INPUTS[case]
    path = write(tmp_path, text)
    result = invoke(command, str(path))
    assert result.exit_code == 65, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {path}")
    assert expected in result.stderr
    assert "Traceback" not in result.output


def test_grid_over_max_jobs_needs_yes(tmp_path: Path) -> None:
    values = ", ".join(str(i) for i in range(101))
    path = write(tmp_path, f'template: "{{{{ a }}}} {{{{ b }}}}"\nvars:\n  a: [{values}]\n  b: [{values}]\n')
    result = invoke("plan", str(path))
    assert result.exit_code == 65
    assert result.stderr == (
        f"error: {path}: the plan has 10,201 jobs, over the limit of 10,000; pass --yes to go ahead "
        "anyway, or raise --max-jobs\n"
    )
    ok = invoke("plan", str(path), "--yes", "--limit", "2")
    assert ok.exit_code == 0, ok.output
    assert "jobs: 10,201" in ok.stdout
    assert invoke("plan", str(path), "--max-jobs", "20000", "--format", "json", "--limit", "1").exit_code == 0
    small = invoke("plan", str(RECIPES / "demo.yaml"), "--max-jobs", "5")
    assert small.exit_code == 65 and "the plan has 8 jobs, over the limit of 5" in small.stderr


# --- plan --------------------------------------------------------------------------------------


def test_plan_table() -> None:
    result = invoke("plan", str(RECIPES / "demo.yaml"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"recipe demo ({RECIPES / 'demo.yaml'}), model bytedance/seedream-4-0/text-to-image"
    assert lines[1] == "axes: scene 2 x light 2 x style 2 x resolution 1"
    assert lines[2] == "jobs: 8"
    assert lines[3] == "estimated cost: $0.24 (8 x $0.03 per image)"
    assert lines[5].split() == ["#", "job_id", "scene", "light", "style", "resolution", "prompt"]
    assert len(lines) == 7 + 8
    assert lines[7].startswith("1  ")


def test_plan_table_heads_each_axis_as_the_csv_does(tmp_path: Path) -> None:
    # a var named job_id made a second `job_id` header (the CSV and to_dataframe say job_id_label)
    path = write(tmp_path, 'template: "{{ job_id }} {{ job_id_label }}"\nvars: {job_id: [a, b], job_id_label: [c]}\n')
    table = invoke("plan", str(path)).stdout.splitlines()
    assert table[4].split() == ["#", "job_id", "job_id_label_label", "job_id_label", "resolution", "prompt"]
    assert table[6].split()[2:4] == ["a", "c"]
    csv_header = invoke("plan", str(path), "--format", "csv").stdout.splitlines()[0].split(",")
    assert csv_header == ["job_id", "index", "job_id_label_label", "job_id_label", "resolution", "prompt", "repeat"]


def test_the_plan_header_gives_the_grid_s_axes_when_a_sample_keeps_fewer(tmp_path: Path) -> None:
    # It counted the values left in the 3 jobs sampled, "a 2 x b 3": six jobs, by that header.
    path = tmp_path / "s.yaml"
    path.write_text('template: "{{ a }} {{ b }}"\nvars:\n  a: [w, x, y, z]\n  b: [1, 2, 3, 4, 5]\n'
                    "sample: {n: 3, seed: 1}\n", encoding="utf-8")
    lines = invoke("plan", str(path)).stdout.splitlines()
    assert lines[1:3] == ["axes: a 4 x b 5 x resolution 1", "jobs: 3 (3 of 20 combinations kept)"]
    # repeats are an axis of the grid too
    path.write_text('template: "{{ a }}"\nvars: {a: [w, x]}\nrepeats: 3\n', encoding="utf-8")
    assert invoke("plan", str(path)).stdout.splitlines()[1] == "axes: a 2 x resolution 1 x repeat 3"


def test_plan_table_lines_up_wide_characters_by_terminal_columns(tmp_path: Path) -> None:
    from rich.cells import cell_len

    path = write(tmp_path, 'template: "{{ food }} in {{ style }}"\nvars:\n  food: [ラーメン, sushi]\n'
                           "  style: [浮世絵の木版画で非常に詳細な描写を伴う長い説明文, ink]\n")
    lines = invoke("plan", str(path)).stdout.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("#  job_id"))):]
    header = table[0]
    for row in table[2:]:
        # each column starts at the same terminal column as its header
        food = "sushi" if "sushi" in row else "ラーメン"
        starts = {"style": row.index(food) + len(food), "resolution": row.index("2048x2048"),
                  "prompt": row.rindex(f"{food} in ")}
        starts["style"] = starts["style"] + len(row[starts["style"]:]) - len(row[starts["style"]:].lstrip())
        for column, at in starts.items():
            assert cell_len(row[:at]) == cell_len(header[: header.index(column)]), (column, row)
    assert "…" in table[2]  # the long style is cut, to 30 columns


def test_plan_table_limit_and_filtered_counts() -> None:
    result = invoke("plan", str(RECIPES / "showcase.yaml"), "--limit", "3")
    assert result.exit_code == 0, result.output
    assert "jobs: 18 (18 of 24 combinations kept)" in result.stdout
    assert result.stdout.rstrip().endswith("... 15 more (--limit 0 shows all)")


def test_plan_json_is_the_jobs() -> None:
    result = invoke("plan", str(RECIPES / "demo.yaml"), "--format", "json")
    assert result.exit_code == 0, result.output
    jobs = json.loads(result.stdout)
    assert len(jobs) == 8
    assert set(jobs[0]) >= {"job_id", "index", "axes", "inputs", "values", "model", "repeat"}
    assert jobs[0]["axes"] == {"scene": "lighthouse", "light": "dawn", "style": "watercolor", "resolution": "1K"}
    assert jobs[0]["inputs"]["resolution"] == "1K"
    assert "jobs: 8" in result.stderr
    limited = json.loads(invoke("plan", str(RECIPES / "demo.yaml"), "--format", "json", "--limit", "2").stdout)
    assert [job["index"] for job in limited] == [1, 2]


def test_plan_json_to_a_reader_that_stops_reading_exits_141_as_csv_does(tmp_path: Path) -> None:
    # `plan big.yaml --format json | head`: written in one go, the JSON cut short lost its rest
    # without a word and the command exited 0, where the README says 141
    values = ", ".join(str(i) for i in range(100))
    recipe = write(tmp_path, f'template: "{{{{ a }}}} {{{{ b }}}}"\nvars:\n  a: [{values}]\n  b: [{values}]\n')
    command = [sys.executable, "-m", "seedream_pipe", "plan", str(recipe), "--format", "json"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"[\n"
        proc.stdout.close()  # as `head -1` does: 10,000 jobs are far more than a pipe holds
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert code == 141, stderr
    assert "Traceback" not in stderr and "error" not in stderr, stderr


def test_plan_csv() -> None:
    result = invoke("plan", str(RECIPES / "exploration.yaml"), "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 60
    assert list(rows[0]) == ["job_id", "index", "style", "lighting", "resolution", "prompt", "repeat"]
    assert rows[0]["resolution"] == "2048x2048 (1:1)"


def test_plan_csv_writes_an_input_that_is_a_mapping_or_list_as_json(tmp_path: Path) -> None:
    # pandas wrote Python's repr ("{'a': [1, 2], 'b': None}"), which no JSON reader takes
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}, "style": {"type": "object"},
                                               "tags": {"type": "array"}}}  # fmt: skip
    (tmp_path / "s.json").write_text(json.dumps(schema), encoding="utf-8")
    path = write(tmp_path, 'model: x/y\ninput_schema: s.json\ntemplate: "{{ a }}"\nvars: {a: [x]}\n'
                           'inputs: {style: {a: [1, 2], b: null, c: true, d: "é"}, tags: [p, q]}\n')
    result = invoke("plan", str(path), "--format", "csv")
    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader(io.StringIO(result.stdout))
    assert json.loads(row["style"]) == {"a": [1, 2], "b": None, "c": True, "d": "é"}
    assert json.loads(row["tags"]) == ["p", "q"] and row["prompt"] == "x"


def test_plan_prints_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ s }}"\nvars: {s: [{a: fox}, {b: fox}]}\n')
    result = invoke("plan", str(path), "--format", "json")
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)) == 1
    assert "warning: 1 job(s) had the same request body" in result.stderr


# --- schema and init ---------------------------------------------------------------------------


def test_schema_prints_the_recipe_json_schema() -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert {"template", "templates", "vars", "resolutions", "exclude", "params"} <= set(schema["properties"])


def test_init_writes_a_starter_that_plans(tmp_path: Path) -> None:
    target = tmp_path / "My Sweep.yaml"
    result = invoke("init", str(target))
    assert result.exit_code == 0, result.output
    assert f"next: seedream-pipe plan '{target}'" in result.stdout  # quoted: pasteable as is
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# A seedream-pipe recipe")
    assert f"`seedream-pipe plan '{target}'`; run it with `seedream-pipe run '{target}' --sim`" in text
    assert "name: my-sweep" in text
    plan = invoke("plan", str(target))
    assert plan.exit_code == 0, plan.output
    assert "jobs: 8" in plan.stdout


def test_init_for_a_file_named_like_an_option_says_a_command_that_works(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # `init -- -x.yaml` said "next: seedream-pipe plan -x.yaml", which fails: No such option '-x'
    monkeypatch.chdir(tmp_path)
    result = invoke("init", "--", "-x.yaml")
    assert result.exit_code == 0, result.output
    assert result.stdout == "wrote -x.yaml; next: seedream-pipe plan ./-x.yaml\n"
    assert "`seedream-pipe plan ./-x.yaml`; run it with `seedream-pipe run ./-x.yaml --sim`" in (tmp_path / "-x.yaml").read_text()
    assert invoke("plan", "./-x.yaml").exit_code == 0


def test_init_for_a_non_ascii_file_writes_a_recipe_that_loads(tmp_path: Path) -> None:
    target = tmp_path / "Été.yaml"
    result = invoke("init", str(target))
    assert result.exit_code == 0, result.output
    plan = invoke("plan", str(target))
    assert plan.exit_code == 0, plan.output
    assert plan.stdout.startswith(f"recipe été ({target})")


@pytest.mark.parametrize("stem", ["123", "2024", "yes", "True", "off", "null", "1_000", "0x1f", "1e3", "2024-01-01"])
def test_init_for_a_file_whose_name_yaml_reads_as_no_text_writes_a_recipe_that_loads(tmp_path: Path, stem: str) -> None:
    # `init 2024.yaml` wrote `name: 2024`, which YAML reads as a number: the starter failed with
    # "name: should be a valid string, got 2024", exit 65, as did `yes.yaml`, `off.yaml` ...
    target = tmp_path / f"{stem}.yaml"
    assert invoke("init", str(target)).exit_code == 0
    plan = invoke("plan", str(target))
    assert plan.exit_code == 0, plan.output
    assert plan.stdout.startswith(f"recipe {stem.lower()} ({target})")


def test_init_for_a_path_with_a_control_character_writes_a_recipe_that_loads(tmp_path: Path) -> None:
    # the starter's first comment named the path raw: a newline in it ended the comment, and the
    # rest of the line was YAML ("malformed YAML"); nor is it printed raw to the terminal
    target = tmp_path / "a\nb\x1b[2J.yaml"
    result = invoke("init", str(target))
    assert result.exit_code == 0, result.output
    assert "\n" not in result.stdout.rstrip("\n") and "\x1b" not in result.stdout
    assert invoke("plan", str(target)).exit_code == 0


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    target = write(tmp_path, "mine\n", "recipe.yaml")
    result = invoke("init", str(target))
    assert result.exit_code == 64
    assert result.stderr == f"error: {target} already exists; pass --force to overwrite it\n"
    assert target.read_text() == "mine\n"
    assert invoke("init", str(target), "--force").exit_code == 0
    assert target.read_text().startswith("# A seedream-pipe recipe")


def test_init_refuses_a_link_to_nothing_rather_than_writing_where_it_points(tmp_path: Path) -> None:
    # a dangling recipe.yaml link did not "exist", so init wrote through it: a file appeared
    # wherever the link pointed, out of sight
    (tmp_path / "elsewhere").mkdir()
    away = tmp_path / "elsewhere" / "made.yaml"
    link = tmp_path / "recipe.yaml"
    link.symlink_to(away)
    result = invoke("init", str(link))
    assert result.exit_code == 64
    assert result.stderr == f"error: {link} already exists; pass --force to overwrite it\n"
    assert not away.exists() and link.is_symlink()


@pytest.mark.timeout(20)
def test_init_force_refuses_a_named_pipe_rather_than_waiting_on_it(tmp_path: Path) -> None:
    # `init --force fifo` waited for a reader for good (and --force /dev/null "wrote" nothing)
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    result = invoke("init", str(fifo), "--force")
    assert result.exit_code == 64
    assert result.stderr == f"error: {fifo} is not a regular file (a pipe or a device); give init the path of a .yaml file\n"


def test_init_given_a_folder_writes_recipe_yaml_in_it(tmp_path: Path) -> None:
    # `init dd` for a folder said "already exists; pass --force", then --force failed with
    # "Is a directory"; `init newdir/` wrote a file named newdir.
    (tmp_path / "dd").mkdir()
    for given, written in (("dd", "dd/recipe.yaml"), ("newdir/", "newdir/recipe.yaml")):
        result = invoke("init", f"{tmp_path}/{given}")  # (a Path would drop the slash)
        assert result.exit_code == 0, result.output
        assert (tmp_path / written).read_text(encoding="utf-8").startswith("# A seedream-pipe recipe")
        assert invoke("plan", str(tmp_path / written)).exit_code == 0
    assert invoke("init", str(tmp_path / "dd")).exit_code == 64  # the file in it is kept as ever


def test_init_makes_the_folder_of_a_new_file(tmp_path: Path) -> None:
    # `init recipes/bali.yaml` in a new project failed: "cannot write recipes/bali.yaml: No such
    # file or directory", exit 73, though `init recipes/` made the folder
    target = tmp_path / "recipes" / "deeper" / "bali.yaml"
    result = invoke("init", str(target))
    assert result.exit_code == 0, result.output
    assert invoke("plan", str(target)).exit_code == 0
    (tmp_path / "a-file").write_text("mine\n", encoding="utf-8")
    result = invoke("init", str(tmp_path / "a-file" / "x.yaml"))
    assert result.exit_code == 73
    assert f"error: cannot create the folder {tmp_path / 'a-file'}: " in result.stderr


def test_init_in_a_folder_that_is_a_symbolic_link_loop_says_what_is_there(tmp_path: Path) -> None:
    # the folder to make is a link loop (or a file): mkdir said only "File exists" of it
    (tmp_path / "loop").symlink_to("loop")
    result = invoke("init", f"{tmp_path / 'loop'}/")
    assert result.exit_code == 73
    assert result.stderr == (f"error: cannot create the folder {tmp_path / 'loop'}: something that is no folder has "
                             "that name (a file, or a symbolic link to no folder)\n")


def test_init_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert invoke("init").exit_code == 0
    assert (tmp_path / "recipe.yaml").is_file()


@pytest.mark.parametrize("command", ["validate", "plan", "schema", "init"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert f"seedream-pipe {command}" in result.stdout


# --- what reaches the terminal: recipe text can never drive it -----------------------------------

# A recipe whose values would clear the screen, recolour it and return the cursor if printed raw.
HOSTILE = 'template: "{{ s }}"\nvars: {s: [{"\\e[2Jfox": "a \\e[31mred\\e[0m fox\\r"}, {"owl\\x9b": "a \\e[31mred\\e[0m fox\\r"}]}\n'
RAW = ("\x1b[2J", "\x1b[31m", "\r", "\x9b")


def on_a_terminal(*args: str) -> Result:
    """As on a terminal: click strips escape sequences from what goes to a pipe, not to a tty."""
    return CliRunner().invoke(cli, list(args), color=True)


def test_plan_and_validate_show_control_characters_escaped(tmp_path: Path) -> None:
    path = write(tmp_path, HOSTILE)
    for result in (on_a_terminal("plan", str(path)), on_a_terminal("validate", str(path))):
        assert result.exit_code == 0, result.output
        for raw in RAW:
            assert raw not in result.stdout + result.stderr
    table = on_a_terminal("plan", str(path)).stdout
    assert "\\x1b[2Jfox" in table and "a \\x1b[31mred\\x1b[0m fox" in table
    warning = on_a_terminal("validate", str(path)).stderr  # both bodies are the same: merged, with their labels
    assert "warning: " in warning and "s=owl\\x9b" in warning


def test_plan_json_escapes_control_characters_but_keeps_the_exact_request(tmp_path: Path) -> None:
    result = on_a_terminal("plan", str(write(tmp_path, HOSTILE)), "--format", "json")
    assert result.exit_code == 0, result.output
    for raw in RAW:
        assert raw not in result.stdout + result.stderr
    jobs = json.loads(result.stdout)
    assert jobs[0]["inputs"]["prompt"] == "a \x1b[31mred\x1b[0m fox"  # what the API gets, untouched
    assert jobs[0]["axes"]["s"] == "\x1b[2Jfox"


def test_errors_show_control_characters_escaped(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ s }}{{ 1 / 0 }}"\nvars: {s: ["\\e[2Jx\\r"]}\n')
    result = on_a_terminal("validate", str(path))
    assert result.exit_code == 65
    assert "\x1b[2J" not in result.stderr and "\r" not in result.stderr  # (red itself is click's)
    assert "(rendering s=\\x1b[2Jx\\r, resolution=" in result.stderr
