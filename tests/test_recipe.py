"""Recipe loading: YAML with locations, the recipe model, extends, var files, the JSON Schema."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from seedream_pipe.errors import RecipeError
from seedream_pipe.recipe import Recipe, RecipeFiles, default_name, load_recipe, recipe_json_schema
from seedream_pipe.recipe_file import MAX_YAML_NODES, Location, format_key_path

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

MINIMAL = """\
template: "{{ subject }}, {{ style }}"
vars:
  subject: [a fox, an owl]
  style: [watercolor]
"""


def write(folder: Path, text: str | bytes, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    return [str(p) for p in caught.value.problems]


def only_problem(path: Path) -> str:
    found = problems_of(path)
    assert len(found) == 1, found
    return found[0]


# --- the loaded recipe -------------------------------------------------------------------------


def test_demo_recipe_attributes() -> None:
    recipe = load_recipe(RECIPES / "demo.yaml")
    assert isinstance(recipe, Recipe)
    assert recipe.name == "demo"
    assert recipe.path == RECIPES / "demo.yaml"
    assert recipe.model == "bytedance/seedream-4-0/text-to-image"
    assert recipe.run.rpm == 60.0
    assert recipe.run.concurrency == 4
    assert recipe.run.timeout_s == 900.0
    assert recipe.run.resubmit_unknown is True
    assert recipe.sheet.rows == ["scene", "light"]
    assert recipe.sheet.cols == ["style"]
    assert recipe.sheet.page_by is None
    assert (recipe.sheet.cell, recipe.sheet.max_cells, recipe.sheet.repeats) == (256, 100, "inline")
    assert recipe.price_per_image == 0.03
    assert recipe.output is None
    assert recipe.source_text == (RECIPES / "demo.yaml").read_text(encoding="utf-8")
    assert recipe.resolved["vars"]["scene"][0] == {"lighthouse": "a lighthouse on a rocky coast"}
    canonical = json.dumps(recipe.resolved, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert recipe.hash == hashlib.sha256(canonical.encode()).hexdigest()


def test_defaults_name_from_stem_and_output_relative_to_recipe(tmp_path: Path) -> None:
    path = write(tmp_path / "sub", MINIMAL + "output: ../out/here\n", "My Sweep.yaml")
    recipe = load_recipe(path)
    assert recipe.name == "my-sweep"
    # relative to the recipe, and tidied: messages say "out/here", not "sub/../out/here"
    assert recipe.output == tmp_path / "out" / "here" and ".." not in str(recipe.output)
    assert recipe.price_per_image is None
    assert recipe.sheet.rows is None and recipe.sheet.cols is None
    assert default_name("___") == "___"
    assert default_name("Été!") == "été"


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("Été", "été"),
        ("E\u0301te\u0301", "été"),  # decomposed, as macOS names files: the same folder name
        ("東京の夜 2", "東京の夜-2"),
        ("Москва", "москва"),
        ("हिन्दी", "हिन्दी"),  # vowel signs and virama are marks: a word keeps them
        ("a/b\\c", "a-b-c"),
        ("..", "recipe"),
        ("🐱", "recipe-" + hashlib.sha256("🐱".encode()).hexdigest()[:8]),  # (not one `recipe` for all)
        ("🐶", "recipe-" + hashlib.sha256("🐶".encode()).hexdigest()[:8]),
        ("..Été..", "été"),
        ("a\x1b[31mb\r", "a-31mb"),
        ("zero\u200bwidth", "zerowidth"),  # an invisible format character would hide in the name
        ("a:b*c?d|e<f>g\"h", "a-b-c-d-e-f-g-h"),
        ("a -b__c", "a--b__c"),
    ],
)
def test_default_name_keeps_letters_of_any_script_and_nothing_unsafe(stem: str, expected: str) -> None:
    assert default_name(stem) == expected


def test_a_recipe_named_by_a_non_ascii_file_gets_its_own_output_folder(tmp_path: Path) -> None:
    from seedream_pipe.paths import default_output_dir

    recipe = load_recipe(write(tmp_path, MINIMAL, "Été.yaml"))
    assert recipe.name == "été"
    assert default_output_dir(recipe) == Path("outputs") / "été"


def test_hash_ignores_comments_and_layout_but_not_values(tmp_path: Path) -> None:
    a = load_recipe(write(tmp_path, MINIMAL, "a.yaml"))
    b = load_recipe(write(tmp_path, "# a comment\n" + MINIMAL.replace("[a fox, an owl]", "\n    - a fox\n    - an owl"), "b.yaml"))
    c = load_recipe(write(tmp_path, MINIMAL.replace("an owl", "a hare"), "c.yaml"))
    assert a.hash == b.hash
    assert a.hash != c.hash


def test_format_key_path() -> None:
    assert format_key_path(("vars", "mood", 1)) == "vars.mood[1]"
    assert format_key_path(("zip", 0)) == "zip[0]"
    assert format_key_path(()) == ""


# --- YAML problems -----------------------------------------------------------------------------


def test_malformed_yaml_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ a }}"\nvars:\n  a: [x, y\n  b: 1\n')
    message = only_problem(path)
    assert message.startswith(f"{path}:4:4: malformed YAML: ")
    assert "did not find expected ',' or ']'" in message


@pytest.mark.parametrize(
    "line",
    ["template: {{ subject }}", "template: {{ subject }} at dawn", "prompts:\n  - {{ subject }} at dusk",
     "template: {% if subject %}x{% endif %}"],
)
def test_an_unquoted_template_says_to_quote_it(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, f"{line}\nvars:\n  subject: [a, b]\n")
    assert "must be quoted, or YAML reads it as a mapping" in only_problem(path)


def test_a_tab_indent_says_yaml_wants_spaces(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ subject }}"\nvars:\n\tsubject: [a, b]\n')
    message = only_problem(path)
    assert message.startswith(f"{path}:3:1: malformed YAML: ") and "YAML indents with spaces, not tabs" in message


def test_a_quoted_template_or_other_error_gets_no_quoting_hint(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ a }}"\nvars:\n  a: [x, y\n  b: 1\n')
    assert "must be quoted" not in only_problem(path)


def test_bad_indentation_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "template: x\n vars: 1\n")
    assert only_problem(path).startswith(f"{path}:2:")


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- a\n- b\n", "not a list"), ("just text\n", "not a single value"), ("42\n", "not a single value")],
)
def test_recipe_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    message = only_problem(write(tmp_path, text))
    assert message == f"{tmp_path / 'recipe.yaml'}:1:1: a recipe must be a mapping of keys (template:, vars:, ...), {kind}"


def test_empty_file(tmp_path: Path) -> None:
    assert only_problem(write(tmp_path, "# nothing\n")).endswith(
        "the recipe is empty; it needs at least a `template:` (`template: \"a fox\"` alone plans one job)"
    )


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert only_problem(tmp_path / "nope.yaml").endswith("nope.yaml: no such recipe file")
    assert "is a folder" in only_problem(tmp_path)


def test_duplicate_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "template: again\n")
    assert only_problem(path) == f"{path}:5:1: template: duplicate key 'template' (first written on line 1)"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = write(tmp_path, b'template: "{{ a }}"\nvars:\n  a: [caf\xe9]\n')
    assert only_problem(path) == (
        f"{path}:3:10: the recipe is not UTF-8 text: byte 0xe9 cannot be decoded; save the file as UTF-8"
    )


def test_utf16_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.encode("utf-16"))
    assert "not UTF-8 text (it looks like UTF-16)" in only_problem(path)


def test_utf32_file_is_named_as_such_not_as_utf16(tmp_path: Path) -> None:
    # its byte order mark, ff fe 00 00, begins with UTF-16's: it was said to look like UTF-16
    path = write(tmp_path, b"\xff\xfe\x00\x00" + MINIMAL.encode("utf-32-le"))
    assert "not UTF-8 text (it looks like UTF-32)" in only_problem(path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, b"\xef\xbb\xbf" + MINIMAL.encode()))
    assert recipe.spec.template == "{{ subject }}, {{ style }}"


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ['template: "{{ a }}"', 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    lines.append("vars: {a: *l8}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    message = only_problem(path)
    assert f"expands to more than {MAX_YAML_NODES:,} values through aliases (an alias bomb?)" in message
    assert message.startswith(f"{path}:")


def test_a_number_too_long_to_write_as_text_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    # Python reads and writes ints of at most 4,300 digits as text (a hex or binary one is read,
    # but has no decimal text): the recipe's hash and the request bodies are JSON, so such a number
    # ended plan and validate with "unexpected ValueError" (exit 70).
    import seedream_pipe as sp

    for where in ("inputs: {seed: %s}", "params: {seed: [%s]}", "sample: {n: 1, seed: %s}", "x-big: %s"):
        for number in ("9" * 5000, "0x" + "f" * 4000):
            path = write(tmp_path, MINIMAL + where % number + "\n")
            message = only_problem(path)
            assert "a number of over 4,300 digits" in message, message
            assert message.startswith(f"{path}:5:"), message
    with pytest.raises(RecipeError, match="holds a number of over 4,300 digits"):
        sp.parse_recipe({"template": "{{ a }}", "vars": {"a": ["x"]}, "inputs": {"seed": 10**5000}}, folder=tmp_path)
    big = load_recipe(write(tmp_path, MINIMAL + "sample: {n: 1, seed: 0x1%s}\n" % ("f" * 16)))
    assert big.spec.sample is not None and big.spec.sample.seed == 2**65 - 1  # (a long one still is one)


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ a }}"\nvars:\n  a: &x [1, *x]\n')
    assert "an alias refers to a value that contains it" in only_problem(path)


@pytest.mark.parametrize("depth", [60, 200_000])
def test_deep_nesting_is_refused_without_crashing(tmp_path: Path, depth: int) -> None:
    # libyaml's composer recurses per level: this deep, it would crash the interpreter
    path = write(tmp_path, "template: x\nvars: " + "[" * depth + "]" * depth + "\n")
    message = only_problem(path)
    # (where: the 51st bracket, or where PyYAML >= 6.0.4 met its own limit while scanning ahead)
    assert message.startswith(f"{path}:2:") and message.endswith(": nested more than 50 levels deep")


def test_deep_nesting_through_aliases_is_refused(tmp_path: Path) -> None:
    deep = "[" * 40 + "x" + "]" * 40
    path = write(tmp_path, f"template: x\nanchor: &a {deep}\nvars: {{a: {'[' * 20}*a{']' * 20}}}\n")
    message = only_problem(path)
    assert message.endswith(": vars.a[0]: nested more than 50 levels deep")


def test_python_tags_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "description: !!python/object/apply:os.system ['echo hi']\n")
    message = only_problem(path)
    assert "unsupported YAML tag tag:yaml.org,2002:python/object/apply:os.system" in message
    assert ":5:" in message


def test_text_values_keep_what_was_written(tmp_path: Path) -> None:
    # YAML 1.1 reads 16:9 as 969 and `on` as True; the planner wants the text.
    path = write(tmp_path, 'template: "{{ a }}"\nvars:\n  a: [on, 1.50, 16:9, ~]\nresolutions: [16:9, 1k]\n')
    recipe = load_recipe(path)
    assert recipe.spec.vars["a"] == ["on", "1.50", "16:9", "~"]
    assert recipe.spec.resolutions == ["16:9", "1k"]


def test_yaml_merge_keys(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "run:\n  <<: {rpm: 120, concurrency: 8}\n  concurrency: 2\n")
    recipe = load_recipe(path)
    assert (recipe.run.rpm, recipe.run.concurrency) == (120.0, 2)


# --- the recipe model --------------------------------------------------------------------------


def test_unknown_keys_get_a_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "resolution: [16:9]\nrun: {rpn: 3}\nsheet: {rowz: [a]}\n")
    assert problems_of(path) == [
        f"{path}:5:1: resolution: unknown key 'resolution' (did you mean 'resolutions'?)",
        f"{path}:6:7: run.rpn: unknown key 'rpn' (did you mean 'rpm'?)",
        f"{path}:7:9: sheet.rowz: unknown key 'rowz' (did you mean 'rows'?)",
    ]


def test_keys_from_other_tools_words_get_the_key_meant_here(tmp_path: Path) -> None:
    path = write(tmp_path, 'prompt: "{{ a }}"\nSeed: 4\nvars: {a: [x]}\n')
    assert problems_of(path) == [
        f"{path}:1:1: prompt: unknown key 'prompt' (did you mean 'template'?)",
        f"{path}:2:1: Seed: unknown key 'Seed' (did you mean `sample: {{n: N, seed: S}}`?)",
    ]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('template: "{{ a }} {{ b }}"\nvars: {a: [x], b: [y]}\nzip: [a, b]\n',
         ":3:1: zip: a list of groups, each a list of vars that vary together: zip: [[a, b]]"),
        ('template: "{{ a }}"\nvars: {a: {path: x.txt}}\n',
         ":2:8: vars.a: a var file is written {file: PATH}: file: x.txt, not path: x.txt"),
        ('extends: sub\n', ":1:1: extends: TMP/sub is a folder; give the path of a recipe .yaml file"),
    ],
)
def test_common_slips_are_said_with_their_fix(tmp_path: Path, text: str, said: str) -> None:
    (tmp_path / "sub").mkdir()
    assert problems_of(write(tmp_path, text)) == [f"{tmp_path / 'recipe.yaml'}{said.replace('TMP', str(tmp_path))}"]


def test_json_schema_checks_the_part_of_a_var_name_an_editor_can() -> None:
    validator = jsonschema.Draft202012Validator(recipe_json_schema())
    for good in ("color", "couleur_été", "色", "_x2"):
        assert not list(validator.iter_errors({"vars": {good: ["a"]}})), good
    for bad in ("my-var", "has space", "2x"):
        assert list(validator.iter_errors({"vars": {bad: ["a"]}})), bad


def test_top_level_x_keys_are_the_authors_own_a_place_for_anchors(tmp_path: Path) -> None:
    text = ("x-styles: &styles [ink, oil]\nx-note: anything at all\n"
            'template: "{{ a }} in {{ style }}"\nvars:\n  a: [x]\n  style: *styles\n')
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.spec.vars["style"] == ["ink", "oil"]
    assert "x-styles" not in recipe.resolved
    assert recipe.hash == load_recipe(write(tmp_path, text.replace("anything at all", "else"), "b.yaml")).hash
    jsonschema.Draft202012Validator(recipe_json_schema()).validate({"x-styles": ["a"], "template": "t"})
    assert "unknown key 'y-styles'" in only_problem(write(tmp_path, text.replace("x-note", "y-styles"), "c.yaml"))


def test_parse_recipe_reads_text_as_if_it_were_a_file_in_a_folder(tmp_path: Path) -> None:
    import seedream_pipe as sp

    write(tmp_path, BASE, "base.yaml")
    (tmp_path / "moods.txt").write_text("calm\nwild\n", encoding="utf-8")
    text = 'extends: base.yaml\ntemplate: "{{ subject }}, {{ mood }}"\nvars:\n  time: ~\n  mood: {file: moods.txt}\n'
    recipe = sp.parse_recipe(text, folder=tmp_path, name="notebook")
    assert recipe.name == "notebook" and recipe.source_text == text
    assert [job.prompt for job in recipe.plan()] == ["a fox, calm", "a fox, wild", "an owl, calm", "an owl, wild"]
    assert recipe.hash == load_recipe(write(tmp_path, text, "notebook.yaml")).hash  # the same recipe as a file
    with pytest.raises(RecipeError) as caught:
        sp.parse_recipe('template: "{{ a }}"\nvars:\n  a: [x]\n  b: [y]\n')
    assert [str(p) for p in caught.value.problems] == [
        "recipe.yaml:4:3: vars.b: var 'b' is used by no template (it would only repeat the same prompts); "
        "use {{ b }} or remove it"
    ]
    with pytest.raises(RecipeError, match="takes the recipe's YAML text or a dict, not bytes"):
        sp.parse_recipe(b"template: x")  # type: ignore[arg-type]
    for name in (None, ""):  # (None made a recipe named "none", writing to outputs/none/)
        with pytest.raises(RecipeError, match=r"name= is the recipe file's stem, text such as 'sweep'"):
            sp.parse_recipe('template: "a fox"', name=name)  # type: ignore[arg-type]
    # a slice of a plan is the list of those jobs
    assert [job.index for job in sp.parse_recipe(text, folder=tmp_path).plan()[1:3]] == [2, 3]


def test_parse_recipe_takes_a_recipe_built_in_python(tmp_path: Path) -> None:
    import seedream_pipe as sp

    text = 'name: nb\ntemplate: "{{ animal }} {{ n }}"\nvars:\n  animal: [fox, owl]\n  n: [0, 1, 2]\n'
    built = {"name": "nb", "template": "{{ animal }} {{ n }}", "vars": {"animal": ("fox", "owl"), "n": list(range(3))}}
    recipe = sp.parse_recipe(built, folder=tmp_path)
    assert recipe.hash == sp.parse_recipe(text, folder=tmp_path).hash  # the same recipe as its YAML
    assert len(recipe.plan()) == 6 and "animal:" in recipe.source_text
    with pytest.raises(RecipeError) as caught:  # located in the YAML source_text shows
        sp.parse_recipe({"template": "{{ a }}", "vars": {"a": [1], "b": ["y"]}})
    assert [p.key_path for p in caught.value.problems] == ["vars.b"]
    with pytest.raises(RecipeError, match="holds a value of type object, which YAML cannot hold"):
        sp.parse_recipe({"template": "{{ a }}", "vars": {"a": [object()]}})
    with pytest.raises(RecipeError, match="holds a set, which has no order; use a list"):
        sp.parse_recipe({"template": "{{ a }}", "vars": {"a": {"x", "y"}}})
    deep: dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"x": deep}
    with pytest.raises(RecipeError, match="nested too deeply"):
        sp.parse_recipe(deep)


def test_a_recipe_dict_takes_numpys_numbers_bools_and_text_as_pythons(tmp_path: Path) -> None:
    # They come from arrays and DataFrames; refused as types "YAML cannot hold" (`int64`, `bool`).
    import decimal

    import numpy as np

    import seedream_pipe as sp

    def built(animal: Any, hours: list[Any], scale: Any, sharp: Any) -> dict[str, Any]:
        return {"name": "nb", "template": "{{ animal }} at {{ hour }}:00, {{ scale }}, {{ sharp }}",
                "vars": {"animal": [{animal: "a fox"}, "an owl"], "hour": hours, "scale": [scale], "sharp": [sharp]}}

    plain = sp.parse_recipe(built("fox", [6, 10], 0.5, True), folder=tmp_path)
    numpys = sp.parse_recipe(built(np.str_("fox"), list(np.arange(6, 14, 4)), np.float32(0.5), np.True_), folder=tmp_path)
    assert numpys.source_text == plain.source_text and numpys.hash == plain.hash
    assert [job.prompt for job in numpys.plan()][:2] == ["a fox at 6:00, 0.5, true", "a fox at 10:00, 0.5, true"]
    for wrong, kind in ((decimal.Decimal("0.5"), "Decimal"), (2j, "complex"), (np.datetime64("2026-01-01"), "datetime64")):
        with pytest.raises(RecipeError, match=f"holds a value of type {kind}, which YAML cannot hold"):
            sp.parse_recipe(built("fox", [6], wrong, True), folder=tmp_path)


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    message = only_problem(write(tmp_path, MINIMAL + "sample: {n: 3, flavour: x}\n"))
    assert "unknown key 'flavour' (known keys: n, seed)" in message


def test_wrong_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'template: "{{ a }}"\nvars:\n  a: [x]\n  b: hello\nrepeats: many\nrun: {rpm: "fast", concurrency: 0}\n'
        "price_per_image: -1\n",
    )
    assert problems_of(path) == [
        f"{path}:4:3: vars.b: expected a list of values, or {{file: PATH}}, got 'hello'",
        # (b is used by no template whatever its values: a problem of its own, said at once)
        f"{path}:4:3: vars.b: var 'b' is used by no template (it would only repeat the same prompts); "
        "use {{ b }} or remove it",
        f"{path}:5:1: repeats: should be a valid integer, got 'many'",
        f"{path}:6:7: run.rpm: should be a valid number, got 'fast'",
        f"{path}:6:20: run.concurrency: should be greater than or equal to 1, got 0",
        f"{path}:7:1: price_per_image: should be greater than or equal to 0, got -1",
    ]


def test_empty_var_list(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ a }}"\nvars:\n  a: []\n')
    assert only_problem(path) == f"{path}:3:3: vars.a: a var needs at least one value"


def test_bad_var_item(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ a }}"\nvars:\n  a:\n    - ok\n    - [nested, list]\n    - {two: keys, in: one}\n')
    assert problems_of(path) == [
        f"{path}:5:7: vars.a[1]: expected text, or a one-key mapping `label: text`",
        f"{path}:6:7: vars.a[2]: expected text, or a one-key mapping `label: text`",
    ]


def test_bad_name(tmp_path: Path) -> None:
    message = only_problem(write(tmp_path, MINIMAL + "name: My Sweep\n"))
    assert message.endswith(
        ":5:1: name: a name uses only lower-case letters (any script), digits, - and _ "
        "(it names the output folder), got 'My Sweep'; 'my-sweep' would do"
    )


def test_a_name_spelt_with_a_combining_accent_is_told_apart_from_the_fix(tmp_path: Path) -> None:
    # "got 'éte'; 'éte' would do": the two look the same on screen
    message = only_problem(write(tmp_path, MINIMAL + 'name: "e\u0301te"\n'))
    assert message.endswith("got 'e\u0301te'; '\u00e9te' (its letters composed, NFC) would do")


@pytest.mark.parametrize("name", ["été", "東京-2024", "a_b-1"])
def test_a_name_may_be_any_name_a_file_would_give(tmp_path: Path, name: str) -> None:
    assert load_recipe(write(tmp_path, MINIMAL + f"name: {name}\n")).name == name


def test_a_name_too_long_for_a_folder_is_refused_and_the_longest_one_loads(tmp_path: Path) -> None:
    # 256 bytes passed every check, and `run` stopped at its first write: "File name too long"
    message = only_problem(write(tmp_path, MINIMAL + f"name: {'é' * 128}\n"))
    assert message.endswith("name: a name is at most 255 bytes in UTF-8 (it names the output folder, and "
                            "file systems allow no longer), got 256 bytes")
    assert load_recipe(write(tmp_path, MINIMAL + f"name: {'a' * 255}\n")).name == "a" * 255


@pytest.mark.parametrize("name", ["'..'", "'a/b'", '"e\u0301"', '"a\u200bb"', "'{x}'"])
def test_a_name_that_is_not_its_own_folder_name_is_refused(tmp_path: Path, name: str) -> None:
    assert "would do" in only_problem(write(tmp_path, MINIMAL + f"name: {name}\n"))


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("run: 5\n", ":5:1: run: should be a mapping (key: value), got 5"),
        ("resolutions: 16:9\n", ":5:1: resolutions: should be a list ([a, b] or one `- item` per line), got '16:9'"),
        ("resolutions: []\n", ":5:1: resolutions: needs at least one value"),
        ("price_per_image: .inf\n", ":5:1: price_per_image: should be a finite number, got inf"),
        ("model: ''\n", ":5:1: model: a model id is names of letters, digits, '.', '_' and '-' joined by '/' (e.g. bytedance/seedream-4-0/text-to-image), got ''"),
    ],
)
def test_plain_type_messages(tmp_path: Path, tail: str, expected: str) -> None:
    path = write(tmp_path, MINIMAL + tail)
    assert only_problem(path) == f"{path}{expected}"


def test_control_character(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "description: a\x01b\n")
    assert only_problem(path) == (
        f"{path}:5:15: malformed YAML: character #x0001 is not allowed (control characters cannot appear in YAML)"
    )


def test_several_documents(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "---\nname: two\n")
    assert "malformed YAML: but found another document" in only_problem(path)


def test_sample_needs_n(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "sample: {seed: 3}\n")
    assert only_problem(path) == f"{path}:5:1: sample.n: missing required key"


# --- extends -----------------------------------------------------------------------------------

BASE = """\
name: base
output: base-out
description: the base
template: "{{ subject }} at {{ time }}"
vars:
  subject: [a fox, an owl]
  time: [dawn, dusk]
resolutions: ["1:1"]
run: {rpm: 30, concurrency: 2}
price_per_image: 0.03
"""


def test_extends_overrides_key_by_key(tmp_path: Path) -> None:
    write(tmp_path, BASE, "base.yaml")
    child = write(
        tmp_path,
        "extends: base.yaml\nvars:\n  time: [noon]\n  mood: [calm]\n"
        'template: "{{ subject }} at {{ time }}, {{ mood }}"\nrun: {rpm: 10}\nprice_per_image: ~\n',
        "child.yaml",
    )
    recipe = load_recipe(child)
    assert recipe.name == "child"  # name and output are never inherited
    assert recipe.output is None
    assert recipe.spec.vars == {"subject": ["a fox", "an owl"], "time": ["noon"], "mood": ["calm"]}
    assert (recipe.run.rpm, recipe.run.concurrency) == (10.0, 2)
    assert recipe.price_per_image is None  # null drops what the base set
    assert recipe.spec.description == "the base"
    assert recipe.spec.resolutions == ["1:1"]
    assert "extends" not in recipe.resolved
    assert recipe.source_text.startswith("extends: base.yaml")


def test_a_recipe_knows_the_files_it_was_read_from_and_which_changed_since(tmp_path: Path) -> None:
    write(tmp_path, 'template: "{{ subject }}, {{ style }}"\nvars:\n  style: {file: styles.txt}\n', "base.yaml")
    styles = write(tmp_path, "watercolor\nink\n", "styles.txt")
    child = write(tmp_path, "extends: base.yaml\nvars:\n  subject: [a fox]\n", "child.yaml")
    recipe = load_recipe(child)
    assert [s.display for s in recipe.sources] == [str(child), str(tmp_path / "base.yaml"), str(styles)]
    assert recipe.changed_sources() == []
    child.write_text(child.read_text(encoding="utf-8"), encoding="utf-8")  # touched, same bytes
    assert recipe.changed_sources() == []
    styles.write_text("watercolor\nink\ncharcoal\n", encoding="utf-8")
    (tmp_path / "base.yaml").unlink()
    assert [s.display for s in recipe.changed_sources()] == [str(tmp_path / "base.yaml"), str(styles)]


@pytest.mark.timeout(20)
def test_a_source_replaced_by_a_pipe_is_changed_not_waited_on(tmp_path: Path) -> None:
    # The end of a run asks which sources changed: a var file swapped for a named pipe was
    # read with no writer, and the run hung there for good.
    styles = write(tmp_path, "watercolor\nink\n", "styles.txt")
    recipe = load_recipe(write(tmp_path, 'template: "{{ style }}"\nvars:\n  style: {file: styles.txt}\n'))
    styles.unlink()
    os.mkfifo(styles)
    assert [s.display for s in recipe.changed_sources()] == [str(styles)]


@pytest.mark.parametrize("removal", ["~", "null", ""])
def test_extends_null_removes_a_var_and_the_excludes_of_the_base(tmp_path: Path, removal: str) -> None:
    write(tmp_path, BASE + "exclude: [{time: dusk}]\n", "base.yaml")
    child = write(
        tmp_path, f'extends: base.yaml\ntemplate: "{{{{ subject }}}}"\nvars:\n  time: {removal}\nexclude: {removal}\n', "c.yaml"
    )
    recipe = load_recipe(child)
    assert recipe.spec.vars == {"subject": ["a fox", "an owl"]}
    assert recipe.spec.exclude == []
    assert [job.prompt for job in recipe.plan()] == ["a fox", "an owl"]


def test_a_null_var_with_no_base_to_remove_it_from_says_it_has_no_values(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ a }}"\nvars:\n  a: ~\n  b: ["~"]\n')
    first, second = problems_of(path)
    assert first.endswith("vars.a: expected a list of values, or {file: PATH}, got nothing")
    assert second.endswith("vars.b: var 'b' is used by no template (it would only repeat the same prompts); "
                           "use {{ b }} or remove it")  # (whatever a holds: said at once)


def test_a_quoted_null_or_one_inside_a_list_stays_a_value(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, 'template: "{{ a }}"\nvars:\n  a: [~, "null"]\n'))
    assert [job.prompt for job in recipe.plan()] == ["~", "null"]


def test_an_exclude_of_the_base_that_a_narrowed_var_leaves_empty_is_a_warning(tmp_path: Path) -> None:
    write(tmp_path, BASE + "exclude: [{time: dusk, subject: an owl}, {time: [dawn, dusk], subject: a fox}]\n",
          "base.yaml")
    recipe = load_recipe(write(tmp_path, "extends: base.yaml\nvars:\n  time: [dawn, noon]\n", "c.yaml"))
    plan = recipe.plan()
    # the fox at dawn is still excluded; the owl at dusk is not planned at all
    assert [job.prompt for job in plan] == ["a fox at noon", "an owl at dawn", "an owl at noon"]
    assert len(plan.warnings) == 2
    assert all(f"{tmp_path / 'base.yaml'}:" in w and "'dusk' matches no value of 'time'" in w for w in plan.warnings)
    assert "c.yaml extends this recipe without it" in plan.warnings[0]
    # a typo in the base, on an axis no extending file touched, is still an error (it would
    # otherwise run, and pay for, what the author meant to exclude)
    write(tmp_path, BASE + "exclude: [{tmie: dusk}, {subject: an olw}]\n", "typo.yaml")
    found = problems_of(write(tmp_path, "extends: typo.yaml\nvars:\n  time: [dawn, noon]\n", "e.yaml"))
    assert len(found) == 2 and all(f"{tmp_path / 'typo.yaml'}:" in p for p in found), found
    assert "'tmie' names no axis or var" in found[0] and "'an olw' matches no value of 'subject'" in found[1]
    # the recipe's own exclude is still held to naming what it plans (a typo excludes nothing)
    problem = only_problem(write(tmp_path, "extends: base.yaml\nexclude: [{time: dsuk}]\n", "d.yaml"))
    assert problem.startswith(f"{tmp_path / 'd.yaml'}:2:") and "'dsuk' matches no value of 'time' (did you mean 'dusk'?)" in problem


def test_an_exclude_of_the_base_on_a_zip_axis_a_narrowed_member_leaves_empty_is_a_warning(tmp_path: Path) -> None:
    # `subject+time` is labelled by its members' labels: setting `time` removes 'an owl / dusk'
    # as much as setting an unzipped var removes its values, so there is nothing of it to exclude
    write(tmp_path, BASE + "zip: [[subject, time]]\nexclude: [{subject+time: an owl / dusk}]\n", "base.yaml")
    recipe = load_recipe(write(tmp_path, "extends: base.yaml\nvars:\n  time: [dawn, noon]\n", "c.yaml"))
    plan = recipe.plan()
    assert [job.prompt for job in plan] == ["a fox at dawn", "an owl at noon"]
    assert len(plan.warnings) == 1 and "'an owl / dusk' matches no value of 'subject+time'" in plan.warnings[0]
    # a zip group no extending file touched is still held to its values
    write(tmp_path, BASE + "zip: [[subject, time]]\nexclude: [{subject+time: an olw / dusk}]\n", "typo.yaml")
    found = problems_of(write(tmp_path, "extends: typo.yaml\nrepeats: 2\n", "e.yaml"))
    assert len(found) == 1 and "'an olw / dusk' matches no value of 'subject+time'" in found[0], found


def test_a_typo_in_a_middle_recipes_exclude_on_a_var_it_set_itself_is_an_error(tmp_path: Path) -> None:
    # mid.yaml sets `time` and excludes a misspelt value of it: an error planning mid.yaml, and
    # as much one planning a recipe that extends mid.yaml without touching `time` (it was a
    # warning there, as if leaf.yaml had removed 'nooon', and leaf.yaml planned 'at noon')
    write(tmp_path, BASE, "base.yaml")
    write(tmp_path, "extends: base.yaml\nvars:\n  time: [dawn, noon]\nexclude: [{time: nooon}]\n", "mid.yaml")
    leaf = write(tmp_path, "extends: mid.yaml\nrepeats: 1\n", "leaf.yaml")
    found = problems_of(leaf)
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'mid.yaml'}:4:"), found
    assert "'nooon' matches no value of 'time' (did you mean 'noon'?)" in found[0]
    # a var a file above the one that wrote the exclude sets still makes it a warning
    write(tmp_path, "extends: base.yaml\nvars:\n  time: [dawn, noon]\nexclude: [{time: dusk}]\n", "m2.yaml")
    plan = load_recipe(write(tmp_path, "extends: m2.yaml\nvars:\n  time: [dawn]\n", "l3.yaml")).plan()
    assert len(plan) == 2 and len(plan.warnings) == 1 and "'dusk' matches no value of 'time'" in plan.warnings[0]


def test_an_exclude_of_the_base_on_templates_a_child_replaced_is_a_warning(tmp_path: Path) -> None:
    # `template:` in the extending file drops the base's `templates` (and so the template axis):
    # the base's exclude on it has nothing left to exclude, as for a var the child set. It was
    # an error ("'template' names no axis"), and the child could not be planned at all.
    templates = 'templates: {a: "{{ subject }} {{ time }}", b: "{{ time }} {{ subject }}"}'
    write(tmp_path, BASE.replace('template: "{{ subject }} at {{ time }}"', templates)
          + "exclude: [{template: a, time: dusk}]\n", "base.yaml")
    plan = load_recipe(write(tmp_path, 'extends: base.yaml\ntemplate: "{{ subject }}/{{ time }}"\n', "c.yaml")).plan()
    assert len(plan) == 4
    assert len(plan.warnings) == 1 and "'template' names no axis or var" in plan.warnings[0]
    # `templates:` merges into the base's: the base's exclude still applies, and says nothing
    plan = load_recipe(write(tmp_path, 'extends: base.yaml\ntemplates: {c: "{{ subject }}, {{ time }}"}\n', "d.yaml")).plan()
    assert len(plan) == 10 and not plan.warnings  # (a, b, c x 4, less the fox and the owl at dusk in a)


def test_extends_template_replaces_templates(tmp_path: Path) -> None:
    write(tmp_path, BASE.replace('template: "{{ subject }} at {{ time }}"',
                                 'templates: {a: "{{ subject }} {{ time }}", b: "{{ time }} {{ subject }}"}'),
          "base.yaml")
    recipe = load_recipe(write(tmp_path, 'extends: base.yaml\ntemplate: "{{ subject }}/{{ time }}"\n', "c.yaml"))
    assert recipe.spec.templates is None
    assert recipe.spec.template == "{{ subject }}/{{ time }}"


def test_extends_chain_and_subfolder(tmp_path: Path) -> None:
    write(tmp_path, BASE, "base.yaml")
    write(tmp_path, "extends: base.yaml\nvars: {time: [noon]}\n", "mid.yaml")
    recipe = load_recipe(write(tmp_path, "extends: ../mid.yaml\nrepeats: 2\n", "variants/leaf.yaml"))
    assert recipe.spec.vars["time"] == ["noon"]
    assert recipe.spec.repeats == 2


def test_extends_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "extends: nowhere.yaml\n")
    assert only_problem(path) == (
        f"{path}:5:1: extends: recipe not found: {tmp_path / 'nowhere.yaml'} "
        "(paths are relative to the recipe that extends)"
    )


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path, "extends: b.yaml\n" + MINIMAL, "a.yaml")
    b = write(tmp_path, "extends: a.yaml\n", "b.yaml")
    message = only_problem(tmp_path / "a.yaml")
    assert message == f"{b}:1:1: extends: cycle: a.yaml -> b.yaml -> a.yaml"


@pytest.mark.parametrize("length", [100, 2000])
def test_a_chain_of_extends_is_at_most_100_files_long(tmp_path: Path, length: int) -> None:
    # each base is read in a nested call: some 1,000 of them ended plan with a RecursionError
    for i in range(length - 1):
        write(tmp_path, f"extends: r{i + 1}.yaml\n", f"r{i}.yaml")
    write(tmp_path, MINIMAL, f"r{length - 1}.yaml")
    if length == 100:
        assert load_recipe(tmp_path / "r0.yaml").plan().jobs
    else:
        assert only_problem(tmp_path / "r0.yaml") == (f"{tmp_path / 'r99.yaml'}:1:1: extends: {tmp_path / 'r100.yaml'} "
                                                      "makes the chain of extends longer than 100 files, the most a recipe may build on")


def test_extends_self(tmp_path: Path) -> None:
    path = write(tmp_path, "extends: recipe.yaml\n" + MINIMAL)
    assert "extends: cycle: recipe.yaml -> recipe.yaml" in only_problem(path)


def test_problem_in_base_names_the_base_file(tmp_path: Path) -> None:
    base = write(tmp_path, BASE.replace("run:", "rn:"), "base.yaml")
    child = write(tmp_path, "extends: base.yaml\n", "child.yaml")
    assert only_problem(child) == f"{base}:9:1: rn: unknown key 'rn' (did you mean 'run'?)"


@pytest.mark.parametrize("kept_bytes", [None, 0], ids=["kept", "over-the-limit"])
def test_recipes_that_share_their_bases_read_them_once_and_load_as_each_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept_bytes: int | None
) -> None:
    # (validate reads each file once for all its recipes: merging a child into its base, or
    # reading in a var file, must not change the base for the next recipe)
    if kept_bytes is not None:
        import seedream_pipe.recipe as recipe_module

        monkeypatch.setattr(recipe_module, "MAX_KEPT_RECIPE_BYTES", kept_bytes)
    write(tmp_path, "ink\noil\n", "styles.txt")
    write(tmp_path, 'x-a: &a [fox, owl]\ntemplate: "{{ a }} {{ style }}"\nvars: {a: *a, style: {file: styles.txt}}\n'
          "run: {rpm: 30, rpn: 1}\n", "base.yaml")
    write(tmp_path, 'extends: base.yaml\nvars: {a: [cat], style: ~}\ntemplate: "{{ a }}"\nrun: {rpm: 5}\n', "one.yaml")
    write(tmp_path, "extends: one.yaml\nvars: {b: [x]}\n", "two.yaml")
    write(tmp_path, "extends: base.yaml\nsheet: {cell: 64}\n", "three.yaml")
    names = ["two.yaml", "one.yaml", "three.yaml", "base.yaml", "two.yaml"]
    files = RecipeFiles()
    for name in names:
        with pytest.raises(RecipeError) as shared:
            load_recipe(tmp_path / name, files=files)
        with pytest.raises(RecipeError) as alone:
            load_recipe(tmp_path / name)
        assert shared.value.problems == alone.value.problems
    files = RecipeFiles()
    for name in names:
        fixed = write(tmp_path, f"extends: {name}\nrun: {{rpn: ~}}\nvars: {{b: ~}}\n", f"ok-{name}")
        shared, alone = load_recipe(fixed, files=files), load_recipe(fixed)
        assert (shared.resolved, shared.hash, shared.sources) == (alone.resolved, alone.hash, alone.sources)
        assert shared.location(("vars", "a", 0)) == alone.location(("vars", "a", 0)) is not None
        assert [job.as_dict() for job in shared.plan()] == [job.as_dict() for job in alone.plan()]


def test_extends_must_be_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "extends: [a.yaml]\n")
    assert only_problem(path) == f"{path}:5:1: extends: expected the path of a recipe file"


def test_input_schema_is_relative_to_the_file_that_names_it(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}}}
    write(tmp_path, json.dumps(schema), "base/schema.json")
    write(tmp_path, BASE.replace('resolutions: ["1:1"]\n', "") + "model: x/y\ninput_schema: schema.json\n",
          "base/base.yaml")
    recipe = load_recipe(write(tmp_path, "extends: base/base.yaml\n", "child.yaml"))
    assert recipe.input_schema is not None
    assert recipe.input_schema.resolve() == (tmp_path / "base" / "schema.json").resolve()
    assert len(recipe.plan()) == 4


def test_input_schema_is_read_from_where_it_was_whatever_the_working_folder_is_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A recipe loaded as `recipe.yaml` kept `schema.json`, relative to the working folder: sent
    # to a worker process, or planned after a notebook's %cd, it read the schema.json there.
    seeded = {"type": "object", "additionalProperties": False,
              "properties": {"prompt": {"type": "string"}, "seed": {"type": "integer"}}}  # fmt: skip
    write(tmp_path, json.dumps(seeded), "project/schema.json")
    write(tmp_path, 'model: x/y\ninput_schema: schema.json\ntemplate: "{{ a }}"\nvars: {a: [fox]}\nparams: {seed: [1, 2]}\n',
          "project/recipe.yaml")
    # (elsewhere, a schema.json of a model that takes no seed)
    write(tmp_path, json.dumps({**seeded, "properties": {"prompt": {"type": "string"}}}), "elsewhere/schema.json")
    monkeypatch.chdir(tmp_path / "project")
    recipe = load_recipe("recipe.yaml")
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = pickle.loads(pickle.dumps(recipe))
    assert [job.inputs["seed"] for job in again.plan()] == [1, 2]
    assert again.input_schema == (tmp_path / "project" / "schema.json").resolve()
    assert recipe.hash == again.hash == load_recipe(tmp_path / "project" / "recipe.yaml").hash
    # messages still name the file as the recipe's path joined to what it wrote
    monkeypatch.chdir(tmp_path / "project")
    write(tmp_path, "{", "project/schema.json")
    assert only_problem(Path("recipe.yaml")) == ("recipe.yaml:2:1: input_schema: input schema schema.json is not valid "
                                                 "JSON (line 1, column 2): Expecting property name enclosed in double quotes")


# --- var files ---------------------------------------------------------------------------------


def test_var_file_values(tmp_path: Path) -> None:
    write(tmp_path, "# styles\nwatercolor\n\n  oil paint  \n# not this\nink\n", "lists/styles.txt")
    path = write(tmp_path, 'template: "{{ style }}"\nvars:\n  style: {file: lists/styles.txt}\n')
    recipe = load_recipe(path)
    assert recipe.spec.vars["style"] == ["watercolor", "oil paint", "ink"]
    assert recipe.resolved["vars"]["style"] == ["watercolor", "oil paint", "ink"]
    assert [job.prompt for job in recipe.plan()] == ["watercolor", "oil paint", "ink"]


def test_var_files_are_inlined_without_going_through_every_value_read_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # For each var file, every location was scanned for the var's own (values of the var files
    # read before included): 1,000 var files of 1,000 values took a minute to load.
    import seedream_pipe.recipe as recipe_module

    walked = 0

    class Locations(dict):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            nonlocal walked
            for key in super().__iter__():
                walked += 1
                yield key

    parse = recipe_module.parse_yaml

    def counting(*args: Any, **kwargs: Any) -> Any:
        doc = parse(*args, **kwargs)
        doc.locations = Locations(doc.locations)
        return doc

    monkeypatch.setattr(recipe_module, "parse_yaml", counting)
    write(tmp_path, "".join(f"w{i}\n" for i in range(100)), "words.txt")
    names = [f"v{i}" for i in range(100)]
    path = write(tmp_path, 'template: "' + " ".join(f"{{{{ {n} }}}}" for n in names) + '"\nvars:\n'
                 + "".join(f"  {n}: {{file: words.txt}}\n" for n in names) + "sample: {n: 2}\n")
    recipe = load_recipe(path)
    assert len(recipe.spec.vars) == 100 and recipe.spec.vars["v99"][99] == "w99"
    assert recipe.location(("vars", "v99", 99)) == Location(str(tmp_path / "words.txt"), 100, 1)
    assert recipe.location(("vars", "v99", "file")) is None
    assert walked < 50_000, walked  # (a few passes over the 10,000 values, not one per var file)


def test_the_values_of_all_var_files_together_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 16 MB var file of one-letter lines is 8 million values (a MemoryError at 8 GB, after a
    # minute and a half), and 20 vars may name one such file: the count is of them all, bases too.
    import seedream_pipe.recipe as recipe_module

    assert recipe_module.MAX_VAR_FILE_VALUES == 1_000_000
    monkeypatch.setattr(recipe_module, "MAX_VAR_FILE_VALUES", 10)
    write(tmp_path, "# six\n" + "".join(f"w{i}\n" for i in range(6)), "words.txt")
    base = write(tmp_path, 'template: "{{ a }} {{ b }}"\nvars:\n  a: {file: words.txt}\n', "base.yaml")
    assert len(load_recipe(write(tmp_path, 'extends: base.yaml\nvars: {b: [x]}\n')).plan()) == 6
    found = problems_of(write(tmp_path, "extends: base.yaml\nvars:\n  b: {file: words.txt}\n"))
    # (this file's are read first, then the base's: the base's passes the count)
    assert found == [f"{base}:3:7: vars.a.file: var file {tmp_path / 'words.txt'} brings the values of the "
                     "recipe's var files over 10 together (line 6), the most a recipe may hold, "
                     "sampled or not (each value takes memory once planned): keep a subset of its lines"]
    found = problems_of(write(tmp_path, 'template: "{{ a }} {{ b }}"\nvars: {a: {file: words.txt}, b: {file: words.txt}}\n'))
    assert [p.split(": ", 2)[1] for p in found] == ["vars.b.file"], found


def test_var_file_with_windows_line_ends(tmp_path: Path) -> None:
    write(tmp_path, b"ink\r\n# note\r\nwatercolor\r\n", "styles.txt")
    recipe = load_recipe(write(tmp_path, b'template: "{{ style }}"\r\nvars:\r\n  style: {file: styles.txt}\r\n'))
    assert recipe.spec.vars["style"] == ["ink", "watercolor"]


def test_var_file_lines_break_only_where_an_editor_breaks_them(tmp_path: Path) -> None:
    # str.splitlines() also split at U+2028, U+0085 and a form feed, and numbered the lines
    # after one differently from the editor the author reads the problem's line in.
    styles = write(tmp_path, "ink\u2028wash\noil\x85paint\r\nchalk\x0cdust\r\nink\u2028wash\n", "styles.txt")
    path = write(tmp_path, 'template: "{{ style }}"\nvars:\n  style: {file: styles.txt}\n')
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    (problem,) = caught.value.problems
    assert (str(problem.file), problem.line) == (str(styles), 4)  # the repeated value, on line 4
    styles.write_text("ink\u2028wash\noil\x85paint\r\nchalk\x0cdust\r\n", encoding="utf-8")
    assert load_recipe(path).spec.vars["style"] == ["ink\u2028wash", "oil\x85paint", "chalk\x0cdust"]


def test_var_file_change_changes_the_hash(tmp_path: Path) -> None:
    styles = write(tmp_path, "a\nb\n", "styles.txt")
    path = write(tmp_path, 'template: "{{ style }}"\nvars:\n  style: {file: styles.txt}\n')
    before = load_recipe(path).hash
    styles.write_text("a\nc\n", encoding="utf-8")
    assert load_recipe(path).hash != before


def test_var_file_problem_points_into_the_file(tmp_path: Path) -> None:
    styles = write(tmp_path, "ink\nwatercolor\nink\n", "styles.txt")
    path = write(tmp_path, 'template: "{{ style }}"\nvars:\n  style: {file: styles.txt}\n')
    assert only_problem(path) == (
        f"{styles}:3:1: vars.style[2]: the label 'ink' appears twice on axis 'style' "
        "(values and `label:` keys must be distinct)"
    )


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("/etc/passwd", "a var file must be a path relative to the recipe's folder, not '/etc/passwd'"),
        ("~/secrets.txt", "a var file must be a path relative to the recipe's folder, not '~/secrets.txt'"),
        ("../outside.txt", "var file '../outside.txt' is outside the recipe's folder"),
        ("missing.txt", "var file not found: "),
        ("empty.txt", "has no values (blank lines and # comments are skipped)"),
    ],
)
def test_var_file_refusals(tmp_path: Path, written: str, expected: str) -> None:
    write(tmp_path, "secret\n", "outside.txt")
    write(tmp_path / "r", "# only a comment\n\n", "empty.txt")
    path = write(tmp_path / "r", f'template: "{{{{ style }}}}"\nvars:\n  style: {{file: "{written}"}}\n')
    message = only_problem(path)
    assert expected in message
    assert message.startswith(f"{path}:3:")


def test_var_file_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "secret\n", "outside.txt")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "link.txt").symlink_to(tmp_path / "outside.txt")
    path = write(tmp_path / "r", 'template: "{{ s }}"\nvars:\n  s: {file: link.txt}\n')
    assert "is outside the recipe's folder" in only_problem(path)


def test_a_symbolic_link_that_leads_back_to_itself_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    # Path.resolve() raises on a link loop: a var file, a base or an input schema so linked
    # ended plan and validate with "unexpected RuntimeError" (exit 70).
    for name in ("loop.yaml", "loop.txt", "loop.json"):
        (tmp_path / name).symlink_to(name)
    base = only_problem(write(tmp_path, 'extends: loop.yaml\ntemplate: "{{ a }}"\nvars: {a: [x]}\n'))
    assert base == f"{tmp_path / 'recipe.yaml'}:1:1: extends: {tmp_path / 'loop.yaml'} is a symbolic link that leads back to itself"
    var = only_problem(write(tmp_path, 'template: "{{ a }}"\nvars: {a: {file: loop.txt}}\n'))
    assert var == f"{tmp_path / 'recipe.yaml'}:2:12: vars.a.file: var file 'loop.txt' is a symbolic link that leads back to itself"
    schema = only_problem(write(tmp_path, 'template: "{{ a }}"\nvars: {a: [x]}\nmodel: a/b\ninput_schema: loop.json\n'))
    assert "input_schema: cannot read input schema" in schema and schema.endswith("loop.json: Too many levels of symbolic links")
    from seedream_pipe.recipe import partial_bases_among

    assert partial_bases_among([tmp_path / "recipe.yaml", write(tmp_path, "extends: loop.yaml\n", "b.yaml")]) == {}
    # the recipe itself a link loop: no base, and its own load says why
    assert partial_bases_among([tmp_path / "loop.yaml", tmp_path / "b.yaml"]) == {}
    assert only_problem(tmp_path / "loop.yaml") == f"{tmp_path / 'loop.yaml'}: is a symbolic link that leads back to itself"


def test_parse_recipe_in_a_folder_that_is_a_symbolic_link_loop_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    # its path, `<folder>/<name>.yaml`, was resolved to start the chain of extends: RuntimeError
    from seedream_pipe.recipe import parse_recipe

    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "sweep.yaml").symlink_to("sweep.yaml")
    text = 'template: "a {{ x }}"\nvars: {x: [fox]}\n'
    assert parse_recipe(text, folder=tmp_path / "loop").name == "recipe"  # (it reads no file there)
    assert parse_recipe(text, folder=tmp_path, name="sweep").name == "sweep"
    with pytest.raises(RecipeError) as caught:
        parse_recipe('template: "a {{ x }}"\nvars: {x: {file: x.txt}}\nmodel: a/b\ninput_schema: s.json\n',
                     folder=tmp_path / "loop")
    assert [str(p) for p in caught.value.problems] == [
        "recipe.yaml:2:12: vars.x.file: var file 'x.txt' is a symbolic link that leads back to itself",
        f"recipe.yaml:4:1: input_schema: cannot read input schema {tmp_path / 'loop' / 's.json'}: Too many levels of "
        "symbolic links",
    ]


def test_a_base_is_a_whole_recipe_when_its_template_is_within_the_chain_a_recipe_may_hold(tmp_path: Path) -> None:
    # (the search gave up after 20 files; a recipe may build on MAX_EXTENDS_DEPTH)
    from seedream_pipe.recipe import MAX_EXTENDS_DEPTH, partial_bases_among

    paths = [write(tmp_path, 'template: "{{ a }}"\nvars: {a: [x]}\n', "r000.yaml")]
    for i in range(1, MAX_EXTENDS_DEPTH + 2):
        paths.append(write(tmp_path, f"extends: r{i - 1:03d}.yaml\n", f"r{i:03d}.yaml"))
    # r100 would load 101 files to reach its template, which no recipe may: it is no whole recipe
    last = MAX_EXTENDS_DEPTH
    assert partial_bases_among(paths) == {paths[last].resolve(): [paths[last + 1]]}
    assert len(load_recipe(paths[last - 1]).plan()) == 1


def test_a_nul_in_a_path_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    # "\0" in YAML is a NUL: the OS takes no such path, and Path.resolve() and open() raise
    # ValueError for it, which ended plan and validate with "unexpected ValueError" (exit 70).
    base = only_problem(write(tmp_path, 'extends: "a\\0b.yaml"\ntemplate: "{{ a }}"\nvars: {a: [x]}\n'))
    assert base == f"{tmp_path / 'recipe.yaml'}:1:1: extends: expected the path of a recipe file, not 'a\\x00b.yaml'"
    var = only_problem(write(tmp_path, 'template: "{{ a }}"\nvars: {a: {file: "a\\0b.txt"}}\n'))
    assert var == (f"{tmp_path / 'recipe.yaml'}:2:12: vars.a.file: a var file must be a path relative to the "
                   "recipe's folder, not 'a\\x00b.txt'")
    schema = only_problem(write(tmp_path, 'template: "{{ a }}"\nvars: {a: [x]}\ninput_schema: "a\\0b.json"\n'))
    assert schema == f"{tmp_path / 'recipe.yaml'}:3:1: input_schema: a file path cannot hold a NUL character, got 'a\\x00b.json'"
    from seedream_pipe.recipe import partial_bases_among

    assert partial_bases_among([write(tmp_path, 'extends: "a\\0b.yaml"\n', "b.yaml")]) == {}


def test_a_var_file_that_is_a_named_pipe_is_refused_rather_than_waited_on(tmp_path: Path) -> None:
    # Opening a FIFO waits for a writer: a recipe folder holding one (a tar keeps them) made
    # plan and validate hang for good.
    os.mkfifo(tmp_path / "styles.txt")
    path = write(tmp_path, 'template: "{{ a }}"\nvars: {a: {file: styles.txt}}\n')
    found: list[str] = []
    checking = threading.Thread(target=lambda: found.extend(problems_of(path)), daemon=True)
    checking.start()
    checking.join(10)
    if checking.is_alive():  # (let the waiting open go, so that no thread is left behind)
        with open(tmp_path / "styles.txt", "w"):
            pass
        checking.join(10)
        pytest.fail("load_recipe waited on the named pipe")
    assert found == [f"{path}:2:12: vars.a.file: var file {tmp_path / 'styles.txt'} is not a regular file (a pipe or a device)"]


def test_var_file_not_utf8(tmp_path: Path) -> None:
    styles = write(tmp_path, b"ok\ncaf\xe9\n", "styles.txt")
    path = write(tmp_path, 'template: "{{ s }}"\nvars:\n  s: {file: styles.txt}\n')
    assert only_problem(path).startswith(f"{styles}:2:4: the var file is not UTF-8 text")


def test_var_file_with_other_keys(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ s }}"\nvars:\n  s: {file: a.txt, sep: ","}\n')
    assert only_problem(path) == f"{path}:3:3: vars.s: a var file is written {{file: PATH}} with no other key"


# --- every problem at once, and none that only follows from another --------------------------


def test_a_misspelt_vars_key_is_the_one_problem_not_every_name_the_template_uses(tmp_path: Path) -> None:
    # Which names are vars is unknown: 'undefined' for each, a zip naming no var, an exclude or
    # sheet naming no axis would all vanish with the spelling fixed.
    path = write(tmp_path, 'template: "{{ subject }} by {{ style }}"\nvar:\n  subject: [a fox]\n  style: [ink]\n'
                           "zip: [[subject, style]]\nexclude: [{style: oil}]\nsheet: {rows: [subject]}\n")
    assert problems_of(path) == [f"{path}:2:1: var: unknown key 'var' (did you mean 'vars'?)"]
    path = write(tmp_path, 'template: "{{ a }}"\nvariables: {a: [x]}\n', "other.yaml")
    assert problems_of(path) == [f"{path}:2:1: variables: unknown key 'variables' (did you mean 'vars'?)"]


def test_a_misspelt_template_key_leaves_no_prompt_and_no_unused_var_to_report(tmp_path: Path) -> None:
    path = write(tmp_path, 'templte: "{{ a }}"\nvars: {a: [x], b: [y]}\n')
    assert problems_of(path) == [f"{path}:1:1: templte: unknown key 'templte' (did you mean 'template'?)"]


def test_a_misspelt_key_is_checked_as_absent_without_follow_on_errors(tmp_path: Path) -> None:
    # the model's default resolution stands in, but what resolutions were meant is not known
    path = write(tmp_path, MINIMAL + "resolutons: [2K]\nexclude: [{resolution: 2K}]\nsheet: {cols: [resolution]}\n"
                                     "repeats: 0\n")
    assert problems_of(path) == [
        f"{path}:5:1: resolutons: unknown key 'resolutons' (did you mean 'resolutions'?)",
        f"{path}:8:1: repeats: should be greater than or equal to 1, got 0",
    ]


def test_a_var_whose_file_is_missing_is_still_a_var_with_unknown_values(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ animal }} in {{ colour }} {{ mood }}"\nvars:\n'
                           "  animal: {file: missing.txt}\n  colour: [red, blue]\n  extra: [x]\n"
                           "zip: [[animal, colour]]\nexclude: [{animal: fox}, {colour: green}]\n"
                           "sheet: {rows: [animal+colour]}\n")
    assert problems_of(path) == [
        f"{path}:1:1: template: template line 1: 'mood' is undefined; the template can use: animal, colour, "
        "extra, index, repeat, resolution",
        f"{path}:3:12: vars.animal.file: var file not found: {tmp_path / 'missing.txt'}",
        f"{path}:5:3: vars.extra: var 'extra' is used by no template (it would only repeat the same prompts); "
        "use {{ extra }} or remove it",
        # (an exclude on the known var is checked; one on the var of unknown values is not)
        f"{path}:7:27: exclude[1].colour: 'green' matches no value of 'colour'; labels: red, blue",
    ]


def test_a_refused_value_is_reported_with_the_rest_and_checked_no_further(tmp_path: Path) -> None:
    path = write(tmp_path, 'template: "{{ a }} {{ b }} {{ c }}"\nvars:\n  a: [x, y]\n  b: hello\n'
                           "zip: [[a, b]]\nparams: {seed: []}\nsheet: {rows: [a+b], cols: [seed]}\n"
                           "model: ''\nresolutions: [5:4]\n")
    assert problems_of(path) == [
        f"{path}:1:1: template: template line 1: 'c' is undefined; the template can use: a, b, index, repeat, "
        "resolution, seed",
        f"{path}:4:3: vars.b: expected a list of values, or {{file: PATH}}, got 'hello'",
        f"{path}:6:10: params.seed: needs at least one value",
        f"{path}:8:1: model: a model id is names of letters, digits, '.', '_' and '-' joined by '/' (e.g. "
        "bytedance/seedream-4-0/text-to-image), got ''",
    ]


def test_problems_of_a_base_and_of_the_recipe_extending_it_are_reported_together(tmp_path: Path) -> None:
    base = write(tmp_path, BASE.replace("  time: [dawn, dusk]", "  time: {file: times.txt}"), "base.yaml")
    child = write(tmp_path, 'extends: base.yaml\ntemplate: "{{ subject }} at {{ time }}, {{ mood }}"\n'
                            "vars: {mood: {file: moods.txt}}\nrepeats: -1\n", "child.yaml")
    assert problems_of(child) == [
        f"{base}:7:10: vars.time.file: var file not found: {tmp_path / 'times.txt'}",
        f"{child}:3:15: vars.mood.file: var file not found: {tmp_path / 'moods.txt'}",
        f"{child}:4:1: repeats: should be greater than or equal to 1, got -1",
    ]


# --- the JSON Schema ---------------------------------------------------------------------------


def test_json_schema_describes_every_key() -> None:
    schema = recipe_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "name", "description", "extends", "model", "input_schema", "template", "templates", "vars",
        "resolutions", "zip", "exclude", "include", "sample", "repeats", "inputs", "params", "run",
        "sheet", "price_per_image", "output",
    }


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_fit_the_json_schema(path: Path) -> None:
    recipe = load_recipe(path)
    jsonschema.Draft202012Validator(recipe_json_schema()).validate(recipe.resolved)


def test_json_schema_accepts_file_vars_and_refuses_unknown_keys() -> None:
    validator = jsonschema.Draft202012Validator(recipe_json_schema())
    good = {"template": "{{ s }}", "vars": {"s": {"file": "s.txt"}, "t": ["a", {"b": "bee"}]}}
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors({"templtes": {}}))


def test_json_schema_takes_the_nulls_an_extending_file_removes_keys_with(tmp_path: Path) -> None:
    validator = jsonschema.Draft202012Validator(recipe_json_schema())
    write(tmp_path, BASE + "exclude: [{time: dusk}]\nsheet: {rows: [subject]}\n", "base.yaml")
    text = ("extends: base.yaml\nvars: {time: ~}\nexclude: ~\nsheet: ~\nrun: {rpm: ~}\nprice_per_image: ~\n"
            'template: "{{ subject }}"\ninputs: {seed: ~}\n')
    load_recipe(write(tmp_path, text, "child.yaml")).plan()  # the tool takes it
    import yaml

    assert list(validator.iter_errors(yaml.safe_load(text))) == []
    assert list(validator.iter_errors({"vars": {"time": 3}}))  # (still a check of what is not null)
    assert list(validator.iter_errors({"run": {"rpm": "fast"}}))


def _feed_fifo(path: Path, text: str) -> threading.Thread:
    os.mkfifo(path)

    def feed() -> None:
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except BrokenPipeError:  # the reader stopped at its limit
            pass

    writer = threading.Thread(target=feed)
    writer.start()
    return writer


def test_a_recipe_from_a_pipe_loads_and_an_endless_one_is_cut_at_the_limit(tmp_path: Path) -> None:
    """`seedream-pipe plan <(generate-recipe)` reads a FIFO, which has no size to check first;
    neither has /dev/zero, which must not be read forever."""
    writer = _feed_fifo(tmp_path / "a.fifo", 'name: piped\ntemplate: "{{ a }}"\nvars: {a: [x, y]}\n')
    try:
        assert len(load_recipe(tmp_path / "a.fifo").plan().jobs) == 2
    finally:
        writer.join()
    writer = _feed_fifo(tmp_path / "b.fifo", "#" * (2 * 1024 * 1024 + 10))
    try:
        with pytest.raises(RecipeError, match="over the limit of 2,097,152 bytes"):
            load_recipe(tmp_path / "b.fifo")
    finally:
        writer.join()


def test_a_base_that_is_a_pipe_is_said_to_be_one_not_missing(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "base.yaml")
    recipe = write(tmp_path, "extends: base.yaml\n")
    with pytest.raises(RecipeError, match=r"base\.yaml is not a regular file"):
        load_recipe(recipe)


def test_an_input_schema_over_the_limit_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "schema.json", "wb") as f:
        f.truncate(4 * 1024 * 1024 + 10)
    recipe = write(tmp_path, 'input_schema: schema.json\ntemplate: "{{ a }}"\nvars: {a: [x]}\n')
    with pytest.raises(RecipeError, match="over the limit of 4,194,304 bytes"):
        load_recipe(recipe)


@pytest.mark.timeout(20)
def test_an_input_schema_that_is_a_pipe_is_refused_not_waited_on(tmp_path: Path) -> None:
    # Opening a named pipe waits for a writer: validate and plan hung for good.
    os.mkfifo(tmp_path / "schema.json")
    recipe = write(tmp_path, 'input_schema: schema.json\ntemplate: "{{ a }}"\nvars: {a: [x]}\n')
    with pytest.raises(RecipeError, match="is not a regular file"):
        load_recipe(recipe)


@pytest.mark.parametrize("name", ["sweep-", "-old", "a--b"])
def test_a_name_the_old_rule_took_still_loads(tmp_path: Path, name: str) -> None:
    assert load_recipe(write(tmp_path, MINIMAL + f"name: {name}\n")).name == name


def test_a_loaded_recipe_is_read_only_rather_than_silently_unplanned(tmp_path: Path) -> None:
    # its plan comes from a cached blueprint: a notebook's `recipe.spec.template = ...` or
    # `recipe.run.rpm = 5` was accepted and then ignored without a word
    import pydantic

    recipe = load_recipe(write(tmp_path, 'template: "a {{ a }}"\nvars: {a: [cat]}\n'))
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        recipe.spec.template = "a dog"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        recipe.run.rpm = 5  # type: ignore[misc]
    assert recipe.plan().jobs[0].prompt == "a cat"


@pytest.mark.parametrize("folder", ["o\x1b]0;PWNED\x07\x1b[31mRED", "out\u202egnp", "a\nb"])
def test_an_output_folder_with_what_a_terminal_acts_on_is_refused(tmp_path: Path, folder: str) -> None:
    # Every command prints the output folder: `output:` is recipe text, and an escape in it would
    # set the window title or colours (a bidi mark, reorder what is shown).
    message = only_problem(write(tmp_path, MINIMAL + f"output: {json.dumps(folder)}\n"))
    assert "recipe.yaml:5:1: output: a folder path with a control character" in message
    assert "\x1b" not in message and "\u202e" not in message and "\n" not in message
    assert load_recipe(write(tmp_path, MINIMAL + "output: ../outputs/été ✓\n")).output is not None


def test_a_label_with_no_value_and_a_file_with_no_path_are_refused(tmp_path: Path) -> None:
    # `- mist:` planned the label 'mist' with an empty value: the prompt "a " sent, and paid for
    text = 'template: "a {{ x }}"\nvars:\n  x:\n    - mist:\n    - rain\n'
    message = only_problem(write(tmp_path, text))
    assert message.startswith(f"{tmp_path / 'recipe.yaml'}:4:12: vars.x[0].mist: the label 'mist' has no value after it")
    assert '`mist: ""` for an empty one, or `- mist` for a value' in message
    recipe = load_recipe(write(tmp_path, 'template: "a {{ x }}"\nvars:\n  x:\n    - mist: ""\n    - rain\n'))
    assert [job.prompt for job in recipe.plan()] == ["a", "a rain"]
    # `{file: }` was said to be "an empty list item (a "-" with nothing after it)"
    message = only_problem(write(tmp_path, 'template: "a {{ x }}"\nvars:\n  x: {file: }\n'))
    assert "vars.x.file: `file:` names no file" in message


def test_an_empty_list_item_of_a_var_is_refused_and_an_empty_value_written_so_is_kept(tmp_path: Path) -> None:
    # A "-" with nothing after it sent "a " as a prompt (and paid for it): a value not written yet.
    text = 'template: "a {{ x }}"\nvars:\n  x:\n    - fox\n    -\n    - owl\n'
    message = only_problem(write(tmp_path, text))
    assert "recipe.yaml:5:" in message and 'vars.x[1]: an empty list item' in message and 'write ""' in message
    recipe = load_recipe(write(tmp_path, 'template: "a {{ x }}"\nvars:\n  x: ["", fox, null]\n'))
    assert [job.prompt for job in recipe.plan()] == ["a", "a fox", "a null"]  # (null as written, as no and yes)
