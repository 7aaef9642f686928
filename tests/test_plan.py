"""The planner: axes, expansion order, filters, sample, repeats, templates, bodies and job_ids."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from seedream_pipe.cli import cli
from seedream_pipe.errors import RecipeError
from seedream_pipe.jobs import Job
from seedream_pipe.plan import Plan, canonical_json, job_id_for
from seedream_pipe.recipe import load_recipe
from seedream_pipe.words import speaking_to_cli

SEEDREAM = "bytedance/seedream-4-0/text-to-image"
RECIPES = Path(__file__).resolve().parent.parent / "recipes"

SEEDED_SCHEMA = {
    "type": "object",
    "required": ["prompt"],
    "additionalProperties": False,
    "properties": {
        "prompt": {"type": "string"},
        "resolution": {"type": "string", "enum": ["1K", "2560x1440 (16:9)"], "default": "1K"},
        "seed": {"type": "integer", "minimum": 0},
        "steps": {"type": "integer"},
    },
}


def plan_of(tmp_path: Path, text: str, **kwargs: object) -> Plan:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return load_recipe(path).plan(**kwargs)  # type: ignore[arg-type]


def problems_of(tmp_path: Path, text: str, **kwargs: object) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        plan_of(tmp_path, text, **kwargs)
    return [str(p) for p in caught.value.problems]


def only_problem(tmp_path: Path, text: str, **kwargs: object) -> str:
    found = problems_of(tmp_path, text, **kwargs)
    assert len(found) == 1, found
    return found[0]


def seeded(tmp_path: Path) -> str:
    (tmp_path / "seeded.json").write_text(json.dumps(SEEDED_SCHEMA), encoding="utf-8")
    return "model: example/seeded\ninput_schema: seeded.json\n"


# --- the demo and the shipped recipes ----------------------------------------------------------


def test_demo_plan() -> None:
    plan = load_recipe(RECIPES / "demo.yaml").plan()
    assert len(plan) == 8
    assert plan.axes == {
        "scene": ["lighthouse", "paper boat"],
        "light": ["dawn", "night"],
        "style": ["watercolor", "photo"],
        "resolution": ["1K"],
    }
    assert [job.index for job in plan] == list(range(1, 9))
    first: Job = plan.jobs[0]
    assert first.axes == {"scene": "lighthouse", "light": "dawn", "style": "watercolor", "resolution": "1K"}
    assert first.values["scene"] == "a lighthouse on a rocky coast"
    assert first.inputs == {
        "prompt": "a lighthouse on a rocky coast, soft dawn light with low mist, "
        "loose watercolor, visible paper texture",
        "resolution": "1K",
    }
    assert first.model == SEEDREAM
    assert first.repeat == 0
    # the last axis varies fastest
    assert [job.axes["style"] for job in plan.jobs[:2]] == ["watercolor", "photo"]
    assert [job.axes["scene"] for job in plan.jobs[3:5]] == ["lighthouse", "paper boat"]
    assert plan.estimated_cost == pytest.approx(0.24)
    assert plan.warnings == []
    assert len({job.job_id for job in plan}) == 8


@pytest.mark.parametrize(
    ("name", "jobs"),
    [("demo.yaml", 8), ("exploration.yaml", 60), ("showcase-base.yaml", 18), ("showcase.yaml", 18)],
)
def test_shipped_recipes_plan(name: str, jobs: int) -> None:
    plan = load_recipe(RECIPES / name).plan()
    assert len(plan) == jobs
    assert plan.warnings == []


def test_exploration_axes() -> None:
    plan = load_recipe(RECIPES / "exploration.yaml").plan()
    assert plan.axes["resolution"] == ["2048x2048 (1:1)", "2560x1440 (16:9)", "1440x2560 (9:16)"]
    assert len(plan.axes["style"]) == 5
    assert len(plan.axes["lighting"]) == 4


def test_showcase_uses_every_feature() -> None:
    recipe = load_recipe(RECIPES / "showcase.yaml")
    spec = recipe.spec
    assert spec.templates and len(spec.templates) == 2 and spec.zip and spec.exclude and spec.params
    assert "extends" in recipe.source_text
    plan = recipe.plan()
    assert list(plan.axes) == ["template", "subject+place", "time", "resolution", "seed"]
    assert {job.inputs["seed"] for job in plan} == {1, 42}
    assert all(job.inputs["guidance_scale"] == 6.5 for job in plan)


# --- job_id ------------------------------------------------------------------------------------


def test_job_id_definition() -> None:
    body = {"prompt": "a fox", "resolution": "1K"}
    text = '{"inputs":{"prompt":"a fox","resolution":"1K"},"model":"' + SEEDREAM + '","repeat":0}'
    assert canonical_json({"model": SEEDREAM, "inputs": body, "repeat": 0}) == text
    assert job_id_for(SEEDREAM, body, 0) == hashlib.sha256(text.encode()).hexdigest()[:12]
    # pinned: a change here would orphan every run's state
    assert job_id_for(SEEDREAM, body, 0) == "7ce91d103a32"
    assert job_id_for(SEEDREAM, {"resolution": "1K", "prompt": "a fox"}, 1) == "d737304aeb57"


def test_plan_job_ids_match_the_definition(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        seeded(tmp_path)
        + "template: |\n  {{ a }} \"quoted\" \\\\ back\n  line two, é 日本 {{ seed }}\n"
        "vars:\n  a: [x, 'tab\there', \"nl\"]\nparams:\n  seed: [0, 7]\ninputs: {steps: 20}\nrepeats: 2\n",
    )
    assert len(plan) == 3 * 2 * 2
    for job in plan:
        assert job.job_id == job_id_for(job.model, job.inputs, job.repeat)
    assert len({job.job_id for job in plan}) == len(plan)


def test_job_ids_are_stable_across_edits_that_keep_the_body(tmp_path: Path) -> None:
    a = plan_of(tmp_path, 'template: "{{ s }}"\nvars:\n  s: [fox, owl]\n')
    b = plan_of(tmp_path, 'template: "{{ s }}"\nvars:\n  s: [hare, owl, fox]\nresolutions: ["2048x2048 (1:1)"]\n')
    assert {j.axes["s"]: j.job_id for j in a} == {k: v for k, v in {j.axes["s"]: j.job_id for j in b}.items() if k != "hare"}


# --- axes --------------------------------------------------------------------------------------


def test_axis_order_templates_vars_zip_resolution_params_repeat(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        seeded(tmp_path)
        + "templates:\n  short: '{{ a }} {{ b }}'\n  long: '{{ a }} {{ b }} {{ c }} {{ d }} #{{ repeat }}'\n"
        "vars:\n  c: [c1]\n  a: [a1, a2]\n  d: [d1]\n  b: [b1, b2]\nzip: [[a, b]]\n"
        "resolutions: [1K]\nparams: {seed: [1]}\nrepeats: 2\n",
    )
    assert list(plan.axes) == ["template", "c", "a+b", "d", "resolution", "seed", "repeat"]
    assert plan.axes["a+b"] == ["a1 / b1", "a2 / b2"]
    assert plan.axes["repeat"] == ["1", "2"]
    job = plan.jobs[-1]
    assert list(job.axes) == list(plan.axes)
    assert job.axes["a+b"] == "a2 / b2"
    assert job.values["a+b"] == {"a": "a2", "b": "b2"}
    assert job.values["repeat"] == 2
    assert job.repeat == 1
    assert job.prompt == "a2 b2 c1 d1 #2"  # repeat is 1-based in templates
    assert job.inputs == {"prompt": "a2 b2 c1 d1 #2", "resolution": "1K", "seed": 1}


def test_single_named_template_is_no_axis(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'templates: {only: "{{ s }}"}\nvars: {s: [x, y]}\n')
    assert list(plan.axes) == ["s", "resolution"]


def test_labels_from_one_key_mappings(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "{{ mood }}"\nvars:\n  mood:\n    - mist: drifting morning mist\n    - light rain\n')
    assert plan.axes["mood"] == ["mist", "light rain"]
    assert [job.prompt for job in plan] == ["drifting morning mist", "light rain"]
    assert plan.jobs[0].values["mood"] == "drifting morning mist"


def test_rendered_prompts_are_trimmed_and_runs_of_spaces_or_tabs_become_one_space(tmp_path: Path) -> None:
    # a single tab is kept (and so are newlines): the prompt, and so the job_id, of a value
    # holding one stays what it has always been
    plan = plan_of(tmp_path, 'template: " a {{ v }}  b\\t\\tc \\t d\\n e "\nvars: {v: ["", "x\\ty"]}\n')
    assert [job.prompt for job in plan] == ["a b c d\n e", "a x\ty b c d\n e"]


def test_resolution_aliases_and_default(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "{{ s }}"\nvars: {s: [x]}\nresolutions: [16:9, "1:1", 2304X1728, 1k]\n')
    assert plan.axes["resolution"] == ["2560x1440 (16:9)", "2048x2048 (1:1)", "2304x1728 (4:3)", "1K"]
    default = plan_of(tmp_path, 'template: "{{ s }}"\nvars: {s: [x]}\n')
    assert default.jobs[0].inputs == {"prompt": "x", "resolution": "2048x2048 (1:1)"}


def test_unknown_resolution_lists_the_allowed_ones(tmp_path: Path) -> None:
    message = only_problem(tmp_path, 'template: "{{ s }}"\nvars: {s: [x]}\nresolutions: [16:9, 5:4]\n')
    assert message.startswith(f"{tmp_path / 'recipe.yaml'}:3:21: resolutions[1]: unknown resolution '5:4'; ")
    assert "1K, 2K, 4K, 2048x2048 (1:1), 2304x1728 (4:3)" in message
    assert "or a shorthand: 9:16, 2:3, 3:4, 1:1, 4:3, 3:2, 16:9, 21:9, or WIDTHxHEIGHT alone" in message


def test_many_resolutions_are_checked_for_repeats_in_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each resolution was looked for among those before it: 30,000 of a model whose resolution
    # is free text took 8 s, the 100,000 a recipe may hold minutes. Counted, not timed: a CPU
    # time limit passes the quadratic search on a fast enough machine.
    from seedream_pipe.models import ModelSchema

    compared = 0

    class Counted(str):
        __hash__ = str.__hash__

        def __str__(self) -> str:
            return self

        def __eq__(self, other: object) -> bool:
            nonlocal compared
            compared += 1
            return str.__eq__(self, other)

    canonical = ModelSchema.canonical_resolution
    monkeypatch.setattr(ModelSchema, "canonical_resolution", lambda self, text: Counted(canonical(self, text)))
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}, "resolution": {"type": "string"}}}
    (tmp_path / "free.json").write_text(json.dumps(schema), encoding="utf-8")
    sizes = ", ".join(f"r{i}" for i in range(2_000))
    found = problems_of(tmp_path, f'model: a/b\ninput_schema: free.json\ntemplate: "{{{{ a }}}}"\nvars: {{a: [x]}}\n'
                                  f"resolutions: [{sizes}, r7]\n", max_jobs=1)
    assert [p.split(": ", 1)[1] for p in found] == ["resolutions[2000]: 'r7' is 'r7', already listed"]
    assert compared < 20_000, compared  # (each with each before it: 2,000,000)


def test_same_resolution_twice(tmp_path: Path) -> None:
    message = only_problem(tmp_path, 'template: "{{ s }}"\nvars: {s: [x]}\nresolutions: [16:9, 2560x1440]\n')
    assert "resolutions[1]: '2560x1440' is '2560x1440 (16:9)', already listed" in message


def test_resolution_in_scope(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "{{ s }} ({{ resolution }})"\nvars: {s: [x]}\nresolutions: ["16:9"]\n')
    assert plan.jobs[0].prompt == "x (2560x1440 (16:9))"


def test_custom_schema_without_resolution_enum_passes_values_through(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"prompt": {"type": "string"},
                                               "resolution": {"type": "integer", "maximum": 2048}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    head = 'model: x/y\ninput_schema: s.json\ntemplate: "{{ s }}"\nvars: {s: [x]}\n'
    plan = plan_of(tmp_path, head + "resolutions: [1024, 512]\n")
    assert [job.inputs["resolution"] for job in plan] == [1024, 512]
    message = only_problem(tmp_path, head + "resolutions: [1024, 4096]\n")
    assert "resolutions[1]: 4096 is greater than the maximum of 2048" in message


def test_schema_without_resolution(tmp_path: Path) -> None:
    schema = {"type": "object", "additionalProperties": False, "properties": {"prompt": {"type": "string"}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    head = 'model: x/y\ninput_schema: s.json\ntemplate: "{{ s }}"\nvars: {s: [x]}\n'
    plan = plan_of(tmp_path, head)
    assert plan.jobs[0].inputs == {"prompt": "x"}
    assert list(plan.axes) == ["s"]
    message = only_problem(tmp_path, head + "resolutions: [1K]\n")
    assert "resolutions[0]: x/y does not accept the input 'resolution'" in message


# --- zip ---------------------------------------------------------------------------------------


def test_unequal_zip_lengths(tmp_path: Path) -> None:
    message = only_problem(tmp_path, 'template: "{{ a }} {{ b }}"\nvars:\n  a: [x, y]\n  b: [1, 2, 3]\nzip: [[a, b]]\n')
    assert message == f"{tmp_path / 'recipe.yaml'}:5:7: zip[0]: zipped vars need the same number of values: a has 2, b has 3"


def test_zip_problems(tmp_path: Path) -> None:
    found = problems_of(tmp_path, 'template: "{{ a }} {{ b }}"\nvars:\n  a: [x]\n  b: [y]\nzip: [[a], [a, c], [b, bb]]\n')
    assert any("zip[0]: a zip group needs at least two vars" in p for p in found)
    assert any("zip[1]: zip names 'c', which is not a var" in p for p in found)
    assert any("zip[2]: zip names 'bb', which is not a var (did you mean 'b'?)" in p for p in found)


def test_zip_group_naming_a_var_twice(tmp_path: Path) -> None:
    message = only_problem(tmp_path, 'template: "{{ a }}"\nvars: {a: [x, y]}\nzip: [[a, a]]\n')
    assert message.endswith("zip[0]: a zip group names the same var twice")


def test_values_json_cannot_carry(tmp_path: Path) -> None:
    found = problems_of(tmp_path, seeded(tmp_path) + 'template: "{{ s }}"\nvars: {s: [x]}\n'
                        "inputs: {steps: .nan}\nparams: {seed: [1, .inf]}\n")
    assert any("inputs.steps: nan is not a number JSON can carry" in p for p in found)
    assert any("params.seed[1]: inf is not a number JSON can carry" in p for p in found)


# --- templates ---------------------------------------------------------------------------------


def test_var_used_by_no_template(tmp_path: Path) -> None:
    message = only_problem(tmp_path, 'template: "{{ a }}"\nvars:\n  a: [x]\n  b: [y, z]\n')
    assert message == (
        f"{tmp_path / 'recipe.yaml'}:4:3: vars.b: var 'b' is used by no template (it would only repeat "
        "the same prompts); use {{ b }} or remove it"
    )


def test_var_used_by_one_of_several_templates_is_fine(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'templates: {a: "{{ x }}", b: "{{ x }} {{ y }}"}\nvars: {x: [1], y: [2, 3]}\n')
    # template a ignores y: its two jobs have one body and are merged
    assert len(plan) == 3
    assert plan.warnings == [
        "1 job(s) had the same request body as an earlier job and were merged into it "
        "(e.g. template=a, x=1, y=3, resolution=2048x2048 (1:1) = job 1)"
    ]


def test_undefined_template_variable_has_line_and_suggestion(tmp_path: Path) -> None:
    message = only_problem(
        tmp_path,
        "templates:\n  short: '{{ subject }} {{ color }}'\n  long: |\n    {{ subject }} in the\n"
        "    {{ colour }} light\nvars:\n  subject: [x]\n  color: [red]\n",
    )
    assert message == (
        f"{tmp_path / 'recipe.yaml'}:5: templates.long: template line 2: 'colour' is undefined "
        "(did you mean 'color'?); the template can use: color, index, repeat, resolution, subject"
    )


def test_a_template_may_guard_a_var_it_can_do_without(tmp_path: Path) -> None:
    # a base's template that takes a var only some extending recipes set
    text = ("template: \"{{ mood }} {{ kw | default('plain') }}{{ tone | d('') }}"
            "{% if extra is defined %} with {{ extra }}{% endif %}\"\nvars: {mood: [calm]}\n")
    assert [job.prompt for job in plan_of(tmp_path, text)] == ["calm plain"]
    more = text.replace("vars: {mood: [calm]}", "vars: {mood: [calm], kw: [bold], extra: [rain]}")
    assert [job.prompt for job in plan_of(tmp_path, more)] == ["calm bold with rain"]
    # the guard does not cover a bare use of the same name elsewhere: that still fails, at render
    message = only_problem(tmp_path, "template: \"{{ a }} {{ kw }}{% if kw is defined %}!{% endif %}\"\nvars: {a: [x]}\n")
    assert "'kw' is undefined" in message


def test_template_syntax_error_has_template_line(tmp_path: Path) -> None:
    message = only_problem(tmp_path, "template: |\n  {{ a }}\n  {% if a %}\n  {{ a }\nvars: {a: [x]}\n")
    # a `|` block keeps its lines: template line 3 is line 4 of the file
    assert message == f"{tmp_path / 'recipe.yaml'}:4: template: template line 3: syntax error: unexpected '}}'"


def test_template_problem_in_a_base_points_into_the_base(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("description: base\ntemplate: |\n  {{ a }}\n  {{ b }}\nvars: {a: [x]}\n", encoding="utf-8")
    message = only_problem(tmp_path, "extends: base.yaml\n")
    assert message.startswith(f"{base}:4: template: template line 2: 'b' is undefined")


def test_template_syntax_error_unclosed_block(tmp_path: Path) -> None:
    message = only_problem(tmp_path, "template: |\n  {{ a }}\n  {% if a %}\n  more\nvars: {a: [x]}\n")
    assert "template: template line " in message and "syntax error: Unexpected end of template" in message


@pytest.mark.parametrize(
    "template",
    [
        "{{ " + "(" * 80 + "a" + ")" * 80 + " }}",  # RecursionError in Jinja2's parser
        "{{ a" + "|upper" * 3000 + " }}",
        "{% for i in [1] %}" * 25 + "{{ a }}" + "{% endfor %}" * 25,  # SyntaxError: too many statically nested blocks
        "{% if a %}" * 100 + "{{ a }}" + "{% endif %}" * 100,  # SyntaxError: too many levels of indentation
    ],
)
def test_a_template_nested_too_deeply_is_a_problem_not_a_crash(tmp_path: Path, template: str) -> None:
    # Jinja2 parses recursively and compiles to Python, which Python compiles in turn: such a
    # template ended plan with "unexpected RecursionError" or "SyntaxError" (exit 70).
    message = only_problem(tmp_path, f'template: "{template}"\nvars: {{a: [x]}}\n')
    assert message.startswith(f"{tmp_path / 'recipe.yaml'}:1:1: template: nested too deeply to compile")
    assert message.endswith(": fewer brackets, filters or blocks one inside another")


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "''.__class__",
        "a.__init__.__globals__",
        "cycler.__init__.__globals__.os",
        "range.__self__",
    ],
)
def test_sandbox_escape_is_refused(tmp_path: Path, expression: str) -> None:
    text = f'template: "{{{{ a }}}} {{{{ {expression} }}}}"\nvars: {{a: [x]}}\n'
    message = only_problem(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'recipe.yaml'}:1:1: template: template line 1: ")
    assert "unsafe" in message or "undefined" in message or "refused" in message


def test_a_grid_too_large_to_filter_is_told_what_narrows_it(tmp_path: Path) -> None:
    # "narrow it with exclude/include/sample", then exclude/include refused: the grid was too
    # large to filter, and only sample (or fewer values) could narrow it.
    values = "\n".join(f"  {name}: [{', '.join(f'{name}{i}' for i in range(100))}]" for name in "abcd")
    grid = f'template: "{{{{ a }}}} {{{{ b }}}} {{{{ c }}}} {{{{ d }}}}"\nvars:\n{values}\n'
    assert only_problem(tmp_path, grid).endswith(
        "the plan has 100,000,000 jobs; seedream-pipe plans at most 1,000,000: narrow it with sample, or "
        "fewer values (exclude/include filter grids of at most 5,000,000 combinations)"
    )
    assert only_problem(tmp_path, grid + "include: [{a: a1}]\n").endswith(
        "at most 5,000,000 can be filtered: use sample (it draws without listing them), or fewer values"
    )
    assert len(plan_of(tmp_path, grid + "sample: {n: 10, seed: 1}\n")) == 10
    small = 'template: "{{ a }}"\nvars:\n  a: [' + ", ".join(f"v{i}" for i in range(1100)) + "]\nrepeats: 1000\n"
    assert only_problem(tmp_path, small).endswith("plans at most 1,000,000: narrow it with exclude/include/sample")


def test_sandbox_refuses_huge_repetition(tmp_path: Path) -> None:
    message = only_problem(tmp_path, "template: \"{{ a * 100000000 }}\"\nvars: {a: [x]}\n")
    assert "refused by the sandbox: repetition too large for a template" in message
    message = only_problem(tmp_path, "template: \"{{ a }}{{ 10 ** 100000 }}\"\nvars: {a: [x]}\n")
    assert "refused by the sandbox: exponent too large for a template" in message


def test_sandbox_is_immutable(tmp_path: Path) -> None:
    message = only_problem(tmp_path, "template: \"{% set l = [1] %}{{ l.append(2) }}{{ a }}\"\nvars: {a: [x]}\n")
    assert "refused by the sandbox" in message


def test_runtime_error_in_template(tmp_path: Path) -> None:
    message = only_problem(tmp_path, "template: |\n  {{ a }}\n  {{ 1 / 0 }}\nvars: {a: [x]}\n")
    assert message.startswith(f"{tmp_path / 'recipe.yaml'}:3: template: ")
    assert "template: template line 2: ZeroDivisionError: division by zero (rendering a=x" in message


def test_a_template_that_makes_a_lone_surrogate_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    # Jinja2 reads "\\ud800" in a string literal as the code point itself, which no UTF-8 text
    # holds: the job_id's hash ended plan with "unexpected UnicodeEncodeError" (exit 70).
    for expression in ('"\\ud800"', '"%c" % 56320'):
        message = only_problem(tmp_path, f"template: '{{{{ a }}}} {{{{ {expression} }}}}'\nvars: {{a: [x, y]}}\n")
        assert "template: the template makes U+D" in message and "half of a UTF-16 surrogate pair" in message
        assert "(rendering a=x, resolution=2048x2048 (1:1))" in message
    fox = plan_of(tmp_path, "template: '{{ a }} {{ \"\\U0001F98A\" }} é'\nvars: {a: [x]}\n")  # (a whole pair is fine)
    assert [job.prompt for job in fox] == ["x \U0001F98A é"]


def test_templates_that_fail_to_render_are_reported_together_once_each(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        "templates:\n  ok: '{{ a }}'\n  b: '{{ a }} {{ 1 / 0 }}'\n  c: '{{ a }} {{ range(10**6) }}'\n"
        "  e: '{{ a }} {{ a | int / 0 }}'\nvars: {a: [x, y, z]}\n",
    )
    assert len(found) == 3, found  # one per failing template, not one per job, nor only the first
    assert [p.split("templates.")[1].split(":")[0] for p in found] == ["b", "c", "e"]
    assert "ZeroDivisionError: division by zero (rendering template=b, a=x," in found[0]


def test_jinja_features_work(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        "template: \"{{ a | upper }}{% if a == 'x' %}, extra{% endif %}, #{{ index }} {{ range(2) | list }}\"\n"
        "vars: {a: [x, y]}\n",
    )
    assert [job.prompt for job in plan] == ["X, extra, #1 [0, 1]", "Y, #2 [0, 1]"]


def test_empty_prompt_is_an_error(tmp_path: Path) -> None:
    message = only_problem(tmp_path, "template: \"{% if a == 'x' %}{{ a }}{% endif %}  \"\nvars: {a: [x, y]}\n")
    assert message == (
        f"{tmp_path / 'recipe.yaml'}:1:1: template: the template renders an empty prompt for 1 job(s), "
        "first for a=y, resolution=2048x2048 (1:1) (grid positions 2)"
    )


def test_empty_prompts_are_placed_in_the_grid_not_in_the_plan_they_never_reach(tmp_path: Path) -> None:
    # Positions were counted among the jobs kept so far: two empty prompts in a row read "2, 2".
    message = only_problem(tmp_path, 'template: "{{ x }}"\nvars:\n  x: [a, e1: "", e2: " ", b, e3: ""]\n')
    assert message.endswith("renders an empty prompt for 3 job(s), first for x=e1, resolution=2048x2048 (1:1) "
                            "(grid positions 2, 3, 5)")


@pytest.mark.parametrize("more", ["resolutions: [1K, 2K]\n", "repeats: 2\n"])
@pytest.mark.parametrize("guard", ["{{ lihgt | default('') }}", "{% if lihgt is defined %}{{ lihgt }}{% endif %}"])
def test_a_guarded_name_no_axis_sets_plans_when_prompts_are_shared(tmp_path: Path, guard: str, more: str) -> None:
    # With an axis the template ignores, prompts are cached by the names the template uses; a
    # guarded name that nothing sets was in that key, and planning failed with a KeyError.
    plan = plan_of(tmp_path, f'template: "{{{{ a }}}} {guard}"\nvars: {{a: [a1, a2]}}\n{more}')
    assert [job.prompt for job in plan] == ["a1", "a1", "a2", "a2"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("\\u200b", "U+200B ZERO WIDTH SPACE"),
        ("\\ufeff", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
        ("\\u2060\\u3000\\u200b\\u2029", "U+2060 WORD JOINER, U+200B ZERO WIDTH SPACE"),
        ("\\x1b\\x7f", "U+001B, U+007F"),
    ],
)
def test_a_prompt_with_nothing_visible_is_an_empty_prompt(tmp_path: Path, value: str, shown: str) -> None:
    message = only_problem(tmp_path, f'template: "{{{{ a }}}}"\nvars: {{a: [x, "{value}", y]}}\n')
    invisible = value.encode().decode("unicode_escape")  # (the label is the value itself)
    assert message == (
        f"{tmp_path / 'recipe.yaml'}:1:1: template: the template renders a prompt with nothing visible "
        f"for 1 job(s), first for a={invisible}, resolution=2048x2048 (1:1) (grid positions 2): only {shown}"
    )


def test_a_prompt_with_one_visible_character_is_kept(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "{{ a }}"\nvars: {a: ["\\u200b.\\u200b", "\\u00e9"]}\n')
    assert [job.prompt for job in plan] == ["\u200b.\u200b", "\u00e9"]


def test_long_prompt_is_a_warning(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "{{ a }} {% for i in range(601) %}word {% endfor %}"\nvars: {a: [x]}\n')
    assert plan.warnings == [
        "1 prompt(s) are over 600 words (e.g. job 1); the model may ignore details of long prompts"
    ]
    assert len(plan.jobs[0].prompt.split()) == 602


def test_prompt_whitespace_is_tidied(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "  {{ a }}  {{ b }}, c\\n"\nvars: {a: [x], b: [""]}\n')
    assert plan.jobs[0].prompt == "x , c"


# --- filters and sample ------------------------------------------------------------------------

GRID = """\
template: "{{ subject }} {{ where }} at {{ time }}, {{ mood }}"
vars:
  subject: [fields, tea house]
  where: [in Bali, by a river]
  time: [golden hour, blue hour]
  mood:
    - mist: drifting morning mist
    - light rain
resolutions: ["1:1", 16:9, 1K]
zip: [[subject, where]]
"""


def test_exclude_matches_labels_values_and_zip_members(tmp_path: Path) -> None:
    full = plan_of(tmp_path, GRID)
    assert len(full) == 2 * 2 * 2 * 3
    plan = plan_of(tmp_path, GRID + "exclude:\n  - {time: blue hour, resolution: 1K}\n"
                   "  - {mood: drifting morning mist, where: by a river}\n  - {resolution: 16:9, subject: fields, mood: mist}\n")
    kept = [j.axes for j in plan]
    assert not any(a["time"] == "blue hour" and a["resolution"] == "1K" for a in kept)
    assert not any(a["mood"] == "mist" and a["subject+where"] == "tea house / by a river" for a in kept)
    assert not any(a["resolution"] == "2560x1440 (16:9)" and a["subject+where"].startswith("fields") and a["mood"] == "mist" for a in kept)
    expected = [
        j.axes for j in full
        if not (j.axes["time"] == "blue hour" and j.axes["resolution"] == "1K")
        and not (j.axes["mood"] == "mist" and j.axes["subject+where"] == "tea house / by a river")
        and not (j.axes["resolution"] == "2560x1440 (16:9)" and j.axes["subject+where"] == "fields / in Bali" and j.axes["mood"] == "mist")
    ]
    assert kept == expected
    assert [j.index for j in plan] == list(range(1, len(plan) + 1))
    assert plan.grid_size == 24 and plan.combinations == len(plan)


@pytest.mark.parametrize(("in_vars", "in_exclude"), [("caf\u00e9", "cafe\u0301"), ("cafe\u0301", "caf\u00e9")])
def test_an_exclude_value_matches_however_its_accents_were_typed(tmp_path: Path, in_vars: str, in_exclude: str) -> None:
    # "café" typed as one letter é or as e and a combining accent is the same text: the exclude
    # was refused, "'café' matches no value (did you mean 'café'?)"
    plan = plan_of(tmp_path, f'template: "{{{{ drink }}}} {{{{ n }}}}"\nvars:\n  drink: [{in_vars}, tea]\n  n: [a, b]\n'
                             f"exclude:\n  - {{drink: {in_exclude}, n: a}}\n")
    assert [(j.axes["drink"], j.axes["n"]) for j in plan] == [(in_vars, "b"), ("tea", "a"), ("tea", "b")]


def test_many_filter_entries_are_not_each_tried_on_every_label_and_combination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each value of each entry was looked for through every label of its axis, and each
    # combination tried against every entry in turn: 3,000 excludes on a var of 6,000 values
    # took 14 s, and the 100,000 values a recipe may hold, hours.
    import seedream_pipe.plan as plan_module

    labelled = tested = 0
    param_label, matching = plan_module._param_label, plan_module._matching

    class Counted(frozenset):  # type: ignore[type-arg]
        def __contains__(self, item: object) -> bool:
            nonlocal tested
            tested += 1
            return super().__contains__(item)

    def counted_label(value: object) -> str:
        nonlocal labelled
        labelled += 1
        return param_label(value)

    monkeypatch.setattr(plan_module, "_param_label", counted_label)
    monkeypatch.setattr(plan_module, "_matching", lambda *args, **kwargs: Counted(matching(*args, **kwargs)))
    seeds = ", ".join(str(i) for i in range(600))
    excludes = "".join(f"  - {{seed: {i}}}\n" for i in range(0, 600, 2))
    plan = plan_of(tmp_path, seeded(tmp_path) + f'template: "{{{{ a }}}}"\nvars: {{a: [x, y]}}\nparams: {{seed: [{seeds}]}}\n'
                   f"exclude:\n{excludes}  - {{a: y, seed: [1, 3, 5]}}\n")
    assert len(plan) == 2 * 300 - 3 and plan.combinations == 597
    assert [j.inputs["seed"] for j in plan][:3] == [1, 3, 5] and [j.inputs["seed"] for j in plan][300:302] == [7, 9]
    assert labelled < 5_000 and tested < 5_000, (labelled, tested)


@pytest.mark.parametrize("most", [1_000_000, 5, 0])
def test_filters_keep_what_each_entry_tried_in_turn_keeps(monkeypatch: pytest.MonkeyPatch, most: int) -> None:
    # The entries grouped by the axes they name keep exactly what trying each one keeps (and
    # so do those left as entries, past the most index tuples expanded).
    import seedream_pipe.plan as plan_module
    from seedream_pipe.plan import _Entries, _keep

    monkeypatch.setattr(plan_module, "_MAX_EXPANDED", most)
    rng = random.Random(7)
    sizes = [3, 4, 2, 3]
    for _ in range(200):
        def entries() -> list[list[tuple[int, frozenset[int]]]]:
            return [[(p, frozenset(rng.sample(range(sizes[p]), rng.randint(0, sizes[p]))))
                     for p in rng.sample(range(4), rng.randint(1, 3)) + ([0] if rng.random() < 0.2 else [])]
                    for _ in range(rng.randint(0, 4))]

        excludes, includes = entries(), entries()
        for combo in itertools.product(*map(range, sizes)):
            naive = not any(all(combo[p] in s for p, s in e) for e in excludes) and (
                not includes or any(all(combo[p] in s for p, s in e) for e in includes))
            assert _keep(combo, _Entries(excludes), _Entries(includes) if includes else None) == naive


def test_include_keeps_matching_and_lists_are_any_of(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, GRID + "include:\n  - {time: golden hour, resolution: [1K, '1:1']}\n")
    assert len(plan) == 2 * 2 * 2
    assert plan.axes["time"] == ["golden hour"]
    assert plan.axes["resolution"] == ["2048x2048 (1:1)", "1K"]


def test_filter_key_that_names_no_axis(tmp_path: Path) -> None:
    message = only_problem(tmp_path, GRID + "exclude:\n  - {tme: blue hour}\n")
    assert message == (
        f"{tmp_path / 'recipe.yaml'}:12:6: exclude[0].tme: 'tme' names no axis or var (did you mean "
        "'time'?); axes: subject+where, time, mood, resolution"
    )


def test_filter_value_that_matches_nothing(tmp_path: Path) -> None:
    message = only_problem(tmp_path, GRID + "include:\n  - {time: blue hr}\n")
    assert "include[0].time: 'blue hr' matches no value of 'time' (did you mean 'blue hour'?); labels: golden hour, blue hour" in message


def test_filter_on_repeat_and_empty_entry(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GRID + "exclude:\n  - {repeat: '1'}\n  - {}\n")
    assert any("exclude[0].repeat: repeats are made after exclude" in p for p in found)
    assert any("exclude[1]: an empty exclude entry would match every combination" in p for p in found)


def test_everything_excluded(tmp_path: Path) -> None:
    message = only_problem(tmp_path, GRID + "exclude:\n  - {time: [golden hour, blue hour]}\n")
    assert message.endswith("exclude: no combination is left after exclude/include")


def test_sample_is_reproducible_and_keeps_order(tmp_path: Path) -> None:
    base = GRID + "exclude:\n  - {time: blue hour, resolution: 1K}\n"
    survivors = [j.axes for j in plan_of(tmp_path, base)]
    plan = plan_of(tmp_path, base + "sample: {n: 5, seed: 7}\n")
    expected = [survivors[i] for i in sorted(random.Random(7).sample(range(len(survivors)), 5))]
    assert [j.axes for j in plan] == expected
    assert random.Random(7).sample(survivors, 5) == [survivors[i] for i in random.Random(7).sample(range(len(survivors)), 5)]
    assert [j.axes for j in plan_of(tmp_path, base + "sample: {n: 5, seed: 7}\n")] == expected
    assert [j.axes for j in plan_of(tmp_path, base + "sample: {n: 5, seed: 8}\n")] != expected


def test_sample_without_filters_draws_the_same_way(tmp_path: Path) -> None:
    everything = [j.axes for j in plan_of(tmp_path, GRID)]
    plan = plan_of(tmp_path, GRID + "sample: {n: 4, seed: 1}\n")
    assert [j.axes for j in plan] == [everything[i] for i in sorted(random.Random(1).sample(range(24), 4))]


def test_sample_larger_than_grid_keeps_all(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, GRID + "sample: {n: 100}\n")
    assert len(plan) == 24
    assert plan.warnings == ["sample.n (100) is not below the 24 combinations: all are kept"]


def huge_grid(vars_count: int) -> str:
    names = [f"v{i}" for i in range(vars_count)]
    return ('template: "' + " ".join(f"{{{{ {n} }}}}" for n in names) + '"\nvars:\n'
            + "".join(f"  {n}: [a, b, c, d, e, f, g, h, i, j]\n" for n in names))


def test_a_sample_of_a_grid_of_more_than_sys_maxsize_combinations_is_drawn(tmp_path: Path) -> None:
    # random.sample takes a range of at most sys.maxsize items: 20 vars of 10 values (10**20,
    # which the job limit's message tells to narrow with sample) ended in OverflowError (exit 70).
    plan = plan_of(tmp_path, huge_grid(20) + "sample: {n: 3, seed: 1}\n")
    again = plan_of(tmp_path, huge_grid(20) + "sample: {n: 3, seed: 1}\n")
    assert len(plan) == 3 and [j.job_id for j in plan] == [j.job_id for j in again]
    assert len({j.job_id for j in plan}) == 3 and plan.grid_size == 10**20


def test_a_sample_over_the_job_limits_is_refused_before_it_is_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `n: 30000000` of a 10**10 grid drew 30 million numbers (140 s, 6.5 GB) before the plan
    # of 30 million jobs was refused.
    def drawn(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sample was drawn")

    monkeypatch.setattr(random.Random, "sample", drawn)
    message = only_problem(tmp_path, huge_grid(10) + "sample: {n: 30000000, seed: 1}\n")
    assert message.endswith("the plan has 30,000,000 jobs; seedream-pipe plans at most 1,000,000: narrow it with "
                            "a smaller sample.n"), message
    message = only_problem(tmp_path, huge_grid(10) + "sample: {n: 20000, seed: 1}\n")
    assert "the plan has 20,000 jobs, over the limit of 10,000" in message


# --- repeats, duplicates, limits ---------------------------------------------------------------


def test_repeats_are_adjacent_distinct_jobs(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "{{ s }}"\nvars: {s: [a, b]}\nrepeats: 3\n')
    assert [(j.axes["s"], j.axes["repeat"], j.repeat) for j in plan] == [
        ("a", "1", 0), ("a", "2", 1), ("a", "3", 2), ("b", "1", 0), ("b", "2", 1), ("b", "3", 2)
    ]
    assert len({j.job_id for j in plan}) == 6
    assert plan.jobs[0].inputs == plan.jobs[1].inputs


def test_identical_bodies_are_merged(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "{{ s }}"\nvars:\n  s:\n    - one: fox\n    - two: fox\n    - owl\n')
    assert [j.axes["s"] for j in plan] == ["one", "owl"]
    assert [j.index for j in plan] == [1, 2]
    assert plan.warnings == [
        "1 job(s) had the same request body as an earlier job and were merged into it "
        "(e.g. s=two, resolution=2048x2048 (1:1) = job 1)"
    ]


def test_duplicate_labels_are_an_error(tmp_path: Path) -> None:
    message = only_problem(tmp_path, 'template: "{{ s }}"\nvars:\n  s:\n    - a: fox\n    - a: owl\n')
    assert message == (
        f"{tmp_path / 'recipe.yaml'}:5:7: vars.s[1]: the label 'a' appears twice on axis 's' "
        "(values and `label:` keys must be distinct)"
    )


def test_many_problems_are_gathered_without_comparing_each_with_every_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each new problem was looked for in the list of those found (to say it once), so a var file
    # with 20,000 duplicate lines took 33 s to refuse (200,000 would take an hour).
    from seedream_pipe.errors import Problem

    (tmp_path / "animals.txt").write_text("fox\n" * 2000, encoding="utf-8")
    compared = 0
    equal = Problem.__eq__

    def counted(self: Problem, other: object) -> bool:
        nonlocal compared
        compared += 1
        return equal(self, other)

    monkeypatch.setattr(Problem, "__eq__", counted)
    found = problems_of(tmp_path, 'template: "{{ s }}"\nvars: {s: {file: animals.txt}}\n')
    assert len(found) == 11 and "animals.txt:11:1: vars.s[10]: the label 'fox' appears twice" in found[-2]
    assert compared < 10_000, compared


def test_an_axis_of_many_repeated_labels_is_one_mistake_said_in_a_few_lines(tmp_path: Path) -> None:
    # A var file of 1,000,000 repeated lines was 999,999 lines of errors (and validate's list of
    # them took hours): the first ten are said, and how many more there are.
    (tmp_path / "animals.txt").write_text("fox\nowl\n" + "fox\n" * 30 + "Owl\n", encoding="utf-8")
    found = problems_of(tmp_path, 'template: "{{ s }}"\nvars: {s: {file: animals.txt}}\n')
    assert found[-1] == (f"{tmp_path / 'recipe.yaml'}:2:8: vars.s: 20 more labels on axis 's' repeat an earlier one "
                         "(30 in all; the first 10 are said)")
    assert [p.split(": ")[1] for p in found[:-1]] == [f"vars.s[{i}]" for i in range(2, 12)]
    only = only_problem(tmp_path, 'template: "{{ s }}"\nvars: {s: [a, b, a]}\n')  # (a few: each said)
    assert "vars.s[2]: the label 'a' appears twice on axis 's'" in only


def test_grid_over_max_jobs(tmp_path: Path) -> None:
    text = 'template: "{{ a }} {{ b }}"\nvars:\n  a: [' + ", ".join(map(str, range(101))) + "]\n  b: [" + ", ".join(map(str, range(100))) + "]\n"
    message = only_problem(tmp_path, text)
    assert message == (  # (plan() was called: its parameters, not `plan`'s --yes and --max-jobs)
        f"{tmp_path / 'recipe.yaml'}: the plan has 10,100 jobs, over the limit of 10,000; pass allow_large=True "
        "to go ahead anyway, or raise max_jobs"
    )
    with speaking_to_cli():  # (what `plan` and `run` say, word for word as before)
        assert only_problem(tmp_path, text).endswith("; pass --yes to go ahead anyway, or raise --max-jobs")
    assert len(plan_of(tmp_path, text, allow_large=True)) == 10_100
    assert len(plan_of(tmp_path, text, max_jobs=20_000)) == 10_100
    assert "over the limit of 50" in only_problem(tmp_path, 'template: "{{ a }}"\nvars: {a: [x]}\nrepeats: 51\n', max_jobs=50)


def test_index_is_final_position(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "{{ s }} #{{ index }}"\nvars: {s: [a, b, c]}\nexclude: [{s: b}]\n')
    assert [j.prompt for j in plan] == ["a #1", "c #2"]


# --- bodies and the model's schema -------------------------------------------------------------


def test_params_and_inputs_build_the_body(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, seeded(tmp_path) + 'template: "{{ s }} {{ seed }}"\nvars: {s: [x]}\n'
                   "params: {seed: [3, 4]}\ninputs: {steps: 30}\n")
    assert [j.inputs for j in plan] == [
        {"prompt": "x 3", "resolution": "1K", "steps": 30, "seed": 3},
        {"prompt": "x 4", "resolution": "1K", "steps": 30, "seed": 4},
    ]
    assert plan.axes["seed"] == ["3", "4"]
    assert plan.jobs[0].values["seed"] == 3


def test_structured_param_values(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}, "lora": {"type": "object"}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    plan = plan_of(tmp_path, 'model: x/y\ninput_schema: s.json\ntemplate: "{{ s }} {{ lora.name }}"\n'
                   "vars: {s: [x, y]}\nresolutions: [1K, 2K]\nparams:\n  lora: [{name: a, w: 0.5}, {name: b, w: 1}]\n")
    # the template ignores the resolution, so renders are cached, a mapping by its repr
    assert [j.prompt for j in plan] == ["x a", "x b", "x a", "x b", "y a", "y b", "y a", "y b"]
    assert plan.axes["lora"] == ['{"name":"a","w":0.5}', '{"name":"b","w":1}']
    assert plan.jobs[1].inputs == {"prompt": "x b", "resolution": "1K", "lora": {"name": "b", "w": 1}}


def test_param_values_python_takes_as_equal_render_apart_in_cached_prompts(tmp_path: Path) -> None:
    # A template that ignores a varying axis (here the resolution) has its renders cached by the
    # values it uses; 1, 1.0 and true are equal in Python, and 0.0 and -0.0, so every job of
    # them got the prompt of the first ("cfg 1" sent with cfg 1.0): a prompt not the template's.
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}, "cfg": {},
                                               "resolution": {"enum": ["1K", "2K"]}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    plan = plan_of(tmp_path, 'model: x/y\ninput_schema: s.json\ntemplate: "cfg {{ cfg }}"\nresolutions: [1K, 2K]\n'
                   "params:\n  cfg: [1, 1.0, true, 0.0, -0.0, [1], [1.0]]\n")
    shown = ["cfg 1", "cfg 1.0", "cfg True", "cfg 0.0", "cfg -0.0", "cfg [1]", "cfg [1.0]"]
    assert [j.prompt for j in plan] == shown * 2
    assert all(j.prompt == f"cfg {j.inputs['cfg']}" for j in plan)


def test_bad_param_value_points_at_it(tmp_path: Path) -> None:
    message = only_problem(tmp_path, seeded(tmp_path) + 'template: "{{ s }}"\nvars: {s: [x]}\nparams: {seed: [3, -1]}\n')
    assert message == f"{tmp_path / 'recipe.yaml'}:5:20: params.seed[1]: -1 is less than the minimum of 0"


def test_seedream_refuses_extra_inputs(tmp_path: Path) -> None:
    found = problems_of(tmp_path, 'template: "{{ s }}"\nvars: {s: [x]}\ninputs: {seed: 1}\nparams: {steps: [1, 2]}\n')
    assert found == [
        f"{tmp_path / 'recipe.yaml'}:3:10: inputs.seed: {SEEDREAM} does not accept the input 'seed' "
        "(it accepts: prompt, resolution)",
        f"{tmp_path / 'recipe.yaml'}:4:10: params.steps: {SEEDREAM} does not accept the input 'steps' "
        "(it accepts: prompt, resolution)",
    ]


def test_misspelt_input_gets_a_did_you_mean(tmp_path: Path) -> None:
    message = only_problem(tmp_path, seeded(tmp_path) + 'template: "{{ s }}"\nvars: {s: [x]}\ninputs: {step: 3}\n')
    assert message.endswith("inputs.step: example/seeded does not accept the input 'step' (did you mean 'steps'?)")


def test_inputs_cannot_set_prompt_or_resolution(tmp_path: Path) -> None:
    found = problems_of(tmp_path, 'template: "{{ s }}"\nvars: {s: [x]}\ninputs: {prompt: hi, resolution: 1K}\n')
    assert any("inputs.prompt: the prompt comes from `template:`" in p for p in found)
    assert any("inputs.resolution: set resolutions with `resolutions: [...]`" in p for p in found)


def test_required_input_missing(tmp_path: Path) -> None:
    schema = {"type": "object", "required": ["prompt", "steps"], "properties": {"prompt": {"type": "string"}, "steps": {"type": "integer"}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    message = only_problem(tmp_path, 'model: x/y\ninput_schema: s.json\ntemplate: "{{ s }}"\nvars: {s: [x]}\n')
    assert message == f"{tmp_path / 'recipe.yaml'}: x/y requires the input 'steps' (add it under `inputs:`)"


def test_prompt_constrained_by_schema_is_checked_per_job(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"prompt": {"type": "string", "maxLength": 5}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    message = only_problem(tmp_path, 'model: x/y\ninput_schema: s.json\ntemplate: "{{ s }}"\nvars: {s: [abc, abcdefgh]}\n')
    assert message == f"{tmp_path / 'recipe.yaml'}:3:1: template: job 2: the prompt is refused: 'abcdefgh' is too long"


def test_input_schema_problems(tmp_path: Path) -> None:
    head = 'template: "{{ s }}"\nvars: {s: [x]}\n'
    assert "no input schema ships for model 'x/y'" in only_problem(tmp_path, head + "model: x/y\n")
    assert "input_schema: cannot read input schema" in only_problem(tmp_path, head + "input_schema: nope.json\n")
    (tmp_path / "bad.json").write_text("{nope")
    assert "is not valid JSON (line 1, column 2)" in only_problem(tmp_path, head + "input_schema: bad.json\n")
    (tmp_path / "odd.json").write_text('{"type": 12}')
    assert "is not a valid JSON Schema" in only_problem(tmp_path, head + "input_schema: odd.json\n")


# --- names and sheets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("resolution", "is a reserved name"), ("for", "cannot be a var name"), ("2x", "cannot be a var name"),
     ("my-var", "cannot be a var name"), ("x²", "cannot be a var name"), ("٣x", "cannot be a var name")],
)
def test_bad_var_names(tmp_path: Path, name: str, fragment: str) -> None:
    found = problems_of(tmp_path, f'template: "x"\nvars:\n  "{name}": [a]\n')
    assert any(f"vars.{name}: " in p and fragment in p for p in found), found


@pytest.mark.parametrize("name", ["index", "repeat"])
def test_a_reserved_var_name_gets_one_problem_not_a_hint_to_use_it(tmp_path: Path, name: str) -> None:
    # The "used by no template; use {{ index }}" that came with it pointed at the planner's
    # own index, which the template would get instead of the var.
    assert only_problem(tmp_path, f'template: "{{{{ a }}}}"\nvars:\n  a: [x]\n  {name}: [d]\n').endswith(
        f"vars.{name}: {name!r} is a reserved name (the planner's own: index, prompt, repeat, resolution, "
        "template); give the var another name"
    )


@pytest.mark.parametrize("name", ["dict", "range", "cycler", "joiner", "namespace"])
def test_a_var_named_like_a_jinja_global_is_told_so_not_to_use_what_it_uses(tmp_path: Path, name: str) -> None:
    # `{{ dict }}` reads Jinja2's dict(), so the var was "used by no template; use {{ dict }}":
    # the advice the template already followed.
    assert only_problem(tmp_path, f'template: "{{{{ a }}}} {{{{ {name} }}}}"\nvars:\n  a: [x]\n  {name}: [d]\n').endswith(
        f"vars.{name}: {name!r} is a name templates already have (Jinja2's {name}()); give the var another name"
    )


def test_var_names_python_reads_as_one_are_refused_not_rendered_with_one_s_values(tmp_path: Path) -> None:
    # Jinja2 compiles a template to Python, which reads identifiers in NFKC: `ﬁsh` (a ligature)
    # and `fish` were one variable there, so every prompt had fish's value twice ("c c" for
    # ﬁsh=a, fish=c), and half the jobs were merged away.
    found = problems_of(tmp_path, 'template: "{{ ﬁsh }} {{ fish }}"\nvars: {ﬁsh: [a, b], fish: [c, d]}\n')
    assert found == [f"{tmp_path / 'recipe.yaml'}:2:21: vars.fish: 'fish' is the name 'ﬁsh' to a template "
                     "(Python reads names in their NFKC form); give one of them another name"]
    assert [j.prompt for j in plan_of(tmp_path, 'template: "{{ ﬁsh }}"\nvars: {ﬁsh: [a, b]}\n')] == ["a", "b"]


def test_labels_that_only_look_alike_are_duplicates(tmp_path: Path) -> None:
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    found = problems_of(tmp_path, f'template: "{{{{ d }}}} now"\nvars:\n  d: ["{nfc}", "{nfd}", tea, "tea "]\n')
    assert len(found) == 2, found
    assert f"vars.d[1]: the label {nfd!r} looks the same as {nfc!r} on axis 'd' (they differ only in Unicode form" in found[0]
    assert "vars.d[3]: the label 'tea ' looks the same as 'tea'" in found[1]


def test_problems_come_in_file_order(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "template: |\n  {{ zeta }}\n  {{ alpha }}\n  {{ a }}\nvars:\n  a: [x]\n  b: [y]\n")
    lines = [int(p.split(":")[1]) for p in found]
    assert lines == sorted(lines) and len(found) == 3, found  # zeta (line 2) before alpha (line 3)


def test_a_refused_var_name_does_not_lead_to_misleading_advice(tmp_path: Path) -> None:
    found = problems_of(tmp_path, 'template: "{{ a }} {{ my-var }}"\nvars:\n  a: [x]\n  my-var: [y]\n  "has space": [z]\n')
    text = "\n".join(found)
    assert "did you mean 'my-var'" not in text and "use {{ has space }}" not in text
    assert "'var' is undefined (part of the var 'my-var', whose name a template cannot use: rename it, e.g. 'my_var')" in text
    assert len(found) == 4  # two refused names, and the two halves of my-var


def test_a_var_named_by_a_template_word_is_not_advised_to_be_renamed_to_itself(tmp_path: Path) -> None:
    # `loop` is Jinja2's own in a template: "rename it, e.g. 'loop'" sent the author round in a circle
    found = problems_of(tmp_path, 'template: "{{ loop }}"\nvars:\n  loop: [x]\n')
    assert found[0].endswith("template: template line 1: 'loop' is undefined (part of the var 'loop', whose name "
                             "a template cannot use: rename it); the template can use: index, repeat, resolution")


def test_var_and_template_names_may_be_words_of_any_script(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        'templates: {写真: "{{ 色 }} {{ couleur_été }}", été-1: "{{ couleur_été }} {{ 色 }}"}\n'
        "vars: {色: [赤], couleur_été: [rouge]}\n",
    )
    assert [(job.axes["template"], job.prompt) for job in plan] == [("写真", "赤 rouge"), ("été-1", "rouge 赤")]


def test_a_var_name_may_hold_the_marks_its_script_writes_words_with(tmp_path: Path) -> None:
    # `रंग` (Hindi, colour) has a vowel sign, a mark: it was refused as not "letters (of any
    # script)", and so was `café` typed as e + U+0301, though Python and Jinja2 take both.
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "café")
    plan = plan_of(tmp_path, f'template: "{{{{ रंग }}}} {{{{ {decomposed} }}}}"\nvars: {{रंग: [लाल], {decomposed}: [noir]}}\n')
    assert [job.prompt for job in plan] == ["लाल noir"]
    # a one-letter name with its accent typed apart (a + U+0300) as well, not only longer ones
    one = unicodedata.normalize("NFD", "à")
    assert [job.prompt for job in plan_of(tmp_path, f'template: "{{{{ {one} }}}}"\nvars: {{{one}: [x]}}\n')] == ["x"]
    assert "'\u0301a' cannot be a var name" in only_problem(tmp_path, 'template: "{{ b }}"\nvars: {"\\u0301a": [x], b: [y]}\n')


def test_sheet_axes_must_exist(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GRID + "sheet: {rows: [mod], cols: [time, time], page_by: repeat}\n")
    assert any("sheet.rows[0]: 'mod' is not an axis of this recipe (did you mean 'mood'?)" in p for p in found)
    assert any("sheet.cols[1]: axis 'time' is already in sheet.cols" in p for p in found)
    assert any("sheet.page_by: 'repeat' is not an axis of this recipe" in p for p in found)


def test_a_sheet_naming_an_axis_refused_for_its_values_is_not_a_second_problem(tmp_path: Path) -> None:
    # the resolution axis could not be built: the sheet naming it is no problem of its own
    recipe = 'template: "{{ subject }}"\nvars: {subject: [fox, owl]}\nresolutions: ["5:4"]\n'
    message = only_problem(tmp_path, recipe + "sheet: {cols: [resolution]}\n")
    assert "unknown resolution '5:4'" in message
    # a sheet naming an axis the recipe does not write is still said
    found = problems_of(tmp_path, recipe + "sheet: {cols: [style]}\n")
    assert len(found) == 2 and any("sheet.cols[0]: 'style' is not an axis" in p for p in found)


def test_a_filter_naming_an_axis_refused_for_its_values_is_not_a_second_problem(tmp_path: Path) -> None:
    # as for the sheet: 'resolution names no axis' would vanish with the resolution fixed
    recipe = 'template: "{{ subject }}"\nvars: {subject: [fox, owl]}\nresolutions: ["5:4"]\n'
    message = only_problem(tmp_path, recipe + 'exclude: [{resolution: "5:4"}]\ninclude: [{resolution: 1K}]\n')
    assert "unknown resolution '5:4'" in message
    found = problems_of(tmp_path, recipe + "exclude: [{style: ink}]\n")
    assert len(found) == 2 and any("exclude[0].style: 'style' names no axis or var" in p for p in found)


def test_an_input_schema_that_cannot_be_read_leaves_the_rest_checked(tmp_path: Path) -> None:
    # the templates and vars need no schema; the resolutions, which need one, are not checked
    found = problems_of(tmp_path, 'template: "{{ s }} {{ t }}"\nvars: {s: [x], u: [y]}\nmodel: x/y\n'
                                  "input_schema: nope.json\nresolutions: [5:4]\nexclude: [{resolution: 5:4}]\n")
    path = tmp_path / "recipe.yaml"
    assert found == [
        f"{path}:1:1: template: template line 1: 't' is undefined; the template can use: index, repeat, "
        "resolution, s, u",
        f"{path}:2:16: vars.u: var 'u' is used by no template (it would only repeat the same prompts); "
        "use {{ u }} or remove it",
        f"{path}:4:1: input_schema: cannot read input schema {path.parent / 'nope.json'}: No such file or directory",
    ]


def test_a_sheet_naming_a_var_of_a_zip_group_is_pointed_at_the_group(tmp_path: Path) -> None:
    message = only_problem(
        tmp_path, 'template: "{{ city }} {{ place }}"\nvars: {city: [a, b], place: [c, d]}\nzip: [[city, place]]\n'
        "sheet: {rows: [city]}\n",
    )
    assert "sheet.rows[0]: 'city' is not an axis of this recipe (did you mean 'city+place'? 'city' varies with it)" in message


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    found = problems_of(tmp_path, 'template: "{{ a }} {{ nope }}"\nvars:\n  a: [x]\n  b: [y]\nresolutions: [7:7]\n')
    assert len(found) == 3


# --- the plan object ---------------------------------------------------------------------------


def test_to_dataframe(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, GRID + "repeats: 2\nexclude: [{time: blue hour}]\n")
    frame = plan.to_dataframe()
    assert list(frame.columns) == ["job_id", "index", "subject+where", "time", "mood", "resolution", "repeat", "prompt"]
    assert len(frame) == len(plan) == 2 * 2 * 3 * 2
    assert frame["index"].tolist() == list(range(1, len(plan) + 1))
    single = plan_of(tmp_path, seeded(tmp_path) + 'template: "{{ s }}"\nvars: {s: [x]}\ninputs: {steps: 2}\n').to_dataframe()
    assert list(single.columns) == ["job_id", "index", "s", "resolution", "prompt", "steps", "repeat"]
    assert single["repeat"].tolist() == [1]  # 1-based, as the repeat axis's labels are
    assert frame["repeat"].tolist()[:2] == [1, 2]  # a number either way: `df[df.repeat == 1]` works


def test_to_dataframe_names_an_axis_that_clashes_with_a_column_apart(tmp_path: Path) -> None:
    frame = plan_of(
        tmp_path,
        seeded(tmp_path) + 'template: "{{ job_id }} {{ steps }}"\nvars: {job_id: [a, b], steps: [x]}\ninputs: {steps: 2}\n',
    ).to_dataframe()
    columns = list(frame.columns)
    assert len(set(columns)) == len(columns)
    assert columns[:4] == ["job_id", "index", "job_id_label", "steps_label"]
    assert frame["job_id_label"].tolist() == ["a", "b"] and frame["steps"].tolist() == [2, 2]


def test_to_dataframe_renames_an_axis_apart_from_a_var_named_as_its_new_name(tmp_path: Path) -> None:
    # vars `job_id` and `job_id_label`: both were the column job_id_label, twice in plan's CSV
    plan = plan_of(tmp_path, 'template: "{{ job_id }} {{ job_id_label }}"\nvars: {job_id: [a, b], job_id_label: [c]}\n')
    frame = plan.to_dataframe()
    columns = list(frame.columns)
    assert columns[:4] == ["job_id", "index", "job_id_label_label", "job_id_label"]
    assert plan.axis_columns() == {"job_id": "job_id_label_label", "job_id_label": "job_id_label", "resolution": "resolution"}
    assert frame["job_id_label_label"].tolist() == ["a", "b"] and frame["job_id_label"].tolist() == ["c", "c"]


def test_to_dataframe_names_an_input_called_like_a_column_of_the_plan_apart(tmp_path: Path) -> None:
    # a model whose inputs include job_id, index and repeat: each was a second column of that
    # name, so `df["job_id"]` was a frame of two columns and plan's CSV had two job_id headers
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}, "job_id": {"type": "string"},
                                               "index": {"type": "integer"}, "repeat": {"type": "integer"}}}  # fmt: skip
    (tmp_path / "s.json").write_text(json.dumps(schema), encoding="utf-8")
    head = 'model: x/y\ninput_schema: s.json\ntemplate: "{{ a }}"\nvars: {a: [x, y]}\ninputs: {job_id: mine, index: 7, repeat: 3}\n'
    frame = plan_of(tmp_path, head).to_dataframe()
    assert list(frame.columns) == ["job_id", "index", "a", "prompt", "job_id_input", "index_input", "repeat_input", "repeat"]
    assert frame["job_id_input"].tolist() == ["mine", "mine"] and frame["index"].tolist() == [1, 2]
    assert frame["repeat"].tolist() == [1, 1] and frame["repeat_input"].tolist() == [3, 3]
    # the repeat axis keeps its column, repeat; a var named as an input's new name is set apart
    axis = plan_of(tmp_path, head.replace("{{ a }}", "{{ a }} {{ job_id_input }}")
                   .replace("{a: [x, y]}", "{a: [x], job_id_input: [z]}") + "repeats: 2\n").to_dataframe()
    assert list(axis.columns) == ["job_id", "index", "a", "job_id_input", "repeat", "prompt",
                                  "job_id_input_input", "index_input", "repeat_input"]
    assert axis["job_id_input"].tolist() == ["z", "z"] and axis["repeat"].tolist() == [1, 2]
    result = CliRunner().invoke(cli, ["plan", str(tmp_path / "recipe.yaml"), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == ",".join(axis.columns)


def test_plan_protocol(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, GRID)
    assert len(plan) == 24 and list(plan) == plan.jobs and plan[0] is plan.jobs[0]
    assert repr(plan).startswith("<Plan 'recipe': 24 jobs")
    assert plan.estimated_cost is None
    assert plan.jobs[0].as_dict()["inputs"] == dict(plan.jobs[0].inputs)
    json.dumps([job.as_dict() for job in plan])


def test_a_recipe_without_vars_is_one_job(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "a red fox in snow"\n')
    assert [job.inputs for job in plan] == [{"prompt": "a red fox in snow", "resolution": "2048x2048 (1:1)"}]


def test_expansion_is_the_product_in_written_order(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'template: "{{ c }}{{ a }}{{ b }}"\nvars: {c: ["1", "2"], a: [x, y, z], b: [p, q]}\n')
    assert [j.prompt for j in plan] == ["".join(t) for t in itertools.product("12", "xyz", "pq")]


def one_var_recipe(template: str) -> str:
    """A recipe of this template with one var, `a`, of one value, "x"."""
    return f"template: {json.dumps(template)}\nvars: {{a: [x]}}\n"


@pytest.mark.parametrize(
    "template",
    [
        "{{ a|center(10**9) }}",
        "{{ a|indent(width=10**9, first=true) }}",
        "{{ a.ljust(10**9) }}",
        "{{ '{:>999999999}'.format(a) }}",
        "{{ '%999999999s'|format(a) }}",
        "{{ '%*s'|format(999999999, a) }}",
        "{% for i in range(99999) %}{{ a * 99 }}{% endfor %}",
        "{% set ns = namespace(s=a) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}{{ f(a, 40) }}",
        # one string multiplied by another's size, refused before it is built (about 10 GB each)
        "{{ ((a * 1000)|replace(a, 'b' * 100000)) }}",
        "{{ (a * 1000).replace(a, 'b' * 1000) }}",
        "{{ range(99999)|join(a * 99999) }}",
        "{{ (a * 99999).join(range(9999)|map('string')) }}",
        "{{ ('{0}' * 33333).format(a * 99999) }}",
        "{{ ('%s' * 33333) % (a * 99999,) }}",
        "{{ ('%s' * 33333)|format(a * 99999) }}",
    ],
)
def test_sandbox_refuses_text_that_would_fill_memory(tmp_path: Path, template: str) -> None:
    # each of these made `plan` take gigabytes (or hang) before refusing or finishing
    message = only_problem(tmp_path, one_var_recipe(template))
    assert "refused by the sandbox: text too long for a template (over 100,000 characters)" in message


@pytest.mark.parametrize(
    "template",
    [
        "{{ a }}{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
        "{{ a }}{% for i in range(99999) %}{% for j in range(99999) if j < 0 %}{% endfor %}{% endfor %}",
        "{% for x in [range(99999)] * 99 recursive %}{% if x is iterable %}{{ loop(x) }}{% endif %}{% endfor %}{{ a }}",
        "{% for i in range(99999) %}{{ a.strip()|replace('x', '') }}{% endfor %}",
        # each turn cheap to count but slow to do: stopped by the time budget (28 s of work each)
        "{{ a }}{{ range(99999)|select('in', range(99999)|list)|list|length }}",
        "{{ a }}{% set big = range(99999)|list %}{% for i in range(99999) %}{% if -1 in big %}{% endif %}{% endfor %}",
    ],
)
def test_sandbox_refuses_a_template_that_would_keep_the_cpu(tmp_path: Path, template: str) -> None:
    # nested loops that print nothing ran for hours: the output cap never saw them
    message = only_problem(tmp_path, one_var_recipe(template))
    assert "refused by the sandbox: too much work for a template (over 100,000 loop turns and calls" in message


@pytest.mark.parametrize("tag", ["{% block b scoped %}{{ a }}{% endblock %}", "{% import 'x' as y %}{{ a }}"])
def test_tags_a_prompt_has_no_use_for_are_refused(tmp_path: Path, tag: str) -> None:
    # a scoped block in a loop rendered in a fresh context each turn, escaping the work budget
    message = only_problem(tmp_path, one_var_recipe(tag))
    assert "has no use in a prompt template" in message


def test_sandbox_counts_each_prompt_apart_and_keeps_loops_working(tmp_path: Path) -> None:
    # 3 prompts of 60,000 turns each: over the cap together, each well under it alone
    template = "{% for i in range(60000) %}{% endfor %}{% for x in a|list %}{{ loop.index }}/{{ loop.length }}{% endfor %}"
    plan = plan_of(tmp_path, f"template: {json.dumps(template)}\nvars: {{a: [xy, pqr, s]}}\n")
    assert [job.prompt for job in plan.jobs] == ["1/22/2", "1/32/33/3", "1/1"]


def test_a_plan_whose_prompts_together_take_too_long_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each prompt under its own cap, but 10,000 of them would take minutes: the plan has a cap
    # of its own (lowered here so that the test takes milliseconds, not 30 s)
    import seedream_pipe.plan as plan_module

    monkeypatch.setattr(plan_module, "MAX_PLAN_TEMPLATE_SECONDS", 0.001)
    template = "{% for i in range(90000) %}{% endfor %}{{ a }} {{ b }}"
    recipe = f"template: {json.dumps(template)}\nvars: {{a: [a1, a2, a3], b: [b1, b2, b3]}}\n"
    message = only_problem(tmp_path, recipe)
    assert "the templates took over 0.001 s in all, at job 1 of 9" in message
    assert "a loop in a template does too much work" in message


def test_sandbox_keeps_ordinary_replace_join_and_formatting(tmp_path: Path) -> None:
    template = (
        '{{ a|replace("x", "a fox") }}; {{ [a, "b"]|join(", ") }}; {{ "-".join([a, a]) }}; '
        '{{ "%s at %d" % (a, 3) }}; {{ "{}!".format(a) }}; {{ "{v}".format_map({"v": a}) }}; {{ 7 % 3 }}'
    )
    plan = plan_of(tmp_path, one_var_recipe(template))
    assert plan.jobs[0].prompt == "a fox; x, b; x-x; x at 3; x!; x; 1"


def test_a_template_over_its_work_budget_is_refused_once_and_at_its_line(tmp_path: Path) -> None:
    template = "{{ a }}\n{% for i in range(99999) %}\n{% for j in range(9999) %}{% endfor %}\n{% endfor %}"
    message = only_problem(tmp_path, one_var_recipe(template))
    assert "template line 3: refused by the sandbox: too much work" in message


def test_sandbox_allows_ordinary_padding_and_formats(tmp_path: Path) -> None:
    template = "{{ '%5s|%-3d'|format(a, 7) }} {{ '{:>6}|{}'.format(a, 10**9) }} {{ a|center(9) }}|{{ a.zfill(3) }}"
    plan = plan_of(tmp_path, one_var_recipe(template))
    assert plan.jobs[0].prompt == "x|7 x|1000000000 x |00x"


def test_output_sizes_are_worked_out_before_the_string_is_built() -> None:
    from seedream_pipe.templates import _formatted_length, _joined_length, _replaced_length

    assert _replaced_length("a" * 1000, "a", "b" * 100_000) == 100_000_000
    assert _replaced_length("abc", "", "xx") == 3 + 4 * 2  # "" matches between every character
    assert _replaced_length("aaa", "a", "bb", 1) == 4
    assert _joined_length("a" * 99_999, list(range(10))) == 10 + 9 * 99_999
    assert _formatted_length("{0}" * 3, ("a" * 10,), {}) == 9 + 3 * 10
    assert _formatted_length("%s%d", (), {"k": "v" * 5}) == 4 + 2 * 5


# Templates whose cost is driven by a number or a string they are given: each took seconds to
# minutes and gigabytes (or the machine's memory) before it was refused or finished.
_R = "{% set r = range(99999)|list %}"
_TOO_LONG_ANYWAY = [
    "{{ range(9)|slice(10**8)|list|length }}",
    "{{ range(99999)|map('string')|map('center', 99999)|list|length }}",
    "{{ range(99999)|map('string')|map('center', 99999)|join }}",
    "{{ range(9)|batch(10**9, 'x')|list|length }}",
    "{{ ('\\n' * 99999)|indent('x' * 99999) }}",
    "{{ ('a ' * 50000)|wordwrap(1, wrapstring='x' * 99999) }}",
    "{{ range(99999)|batch(1)|sum(start=[])|length }}",
    _R + "{{ [r, r]|length }}",
    _R + "{{ {}.fromkeys(range(99999), r)|length }}",
    "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
    "{% set s = 'a' * 99999 %}{% set s = s ~ s %}{{ s|length }}",
    "{% set s = 'a' * 99999 %}{% set s %}{{ s }}{{ s }}{% endset %}{{ s|length }}",
    "{{ ('a' * 99999)|list|string|list|string|list|string|length }}",
    "{{ ('&' * 99999)|forceescape|forceescape|forceescape|length }}",
    "{{ 'a'.encode().center(10**9) }}",
    "{{ ('\\t' * 99999).expandtabs(99999)|length }}",
    "{{ ('a' * 99999).translate({97: 'b' * 99999})|length }}",
    "{{ '{:>{}}'.format('a', 10**9)|length }}",
    "{{ '{:.{}f}'.format(1.0, 10**9)|length }}",
    "{{ ('%999999999s'.encode() % 'a'.encode())|length }}",
]
_NUMBER_TOO_LARGE = [
    "{{ (((9**100)**100)**100)**100 }}",
    "{% set ns = namespace(n=9) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n > 0 }}",
    "{{ 5|round(-10**9) }}",
]
_REPETITION = [
    _R + "{{ [r] * 99999 }}",
    _R + "{{ ([r] * 99999)|join(',')|length }}",
    "{{ 'a'.encode() * 10**9 }}",
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("template", "expected"),
    [(t, "text too long for a template (over 100,000 characters)") for t in _TOO_LONG_ANYWAY]
    + [(t, "number too large for a template (over 10,000 digits)") for t in _NUMBER_TOO_LARGE]
    + [(t, "repetition too large for a template") for t in _REPETITION]
    + [("{{ lipsum(n=10**7)|length }}", "'lipsum' is undefined")],
)
def test_validate_refuses_a_filter_or_call_that_would_fill_memory(tmp_path: Path, template: str, expected: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(f"template: {json.dumps('{{x}} ' + template)}\nvars: {{x: [abc]}}\nresolutions: [1K]\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 65, result.output
    assert f"template: template line 1: {'' if 'lipsum' in template else 'refused by the sandbox: '}{expected}" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("template", "prompt"),
    [
        ("{{ a|upper }} {{ a|title }} {{ (a ~ 'q')|replace('x', 'X') }} {{ a|first }}{{ a|last }}", "X X Xq xx"),
        ("{{ ['b', a]|join(', ') }} {{ [{'n': a}, {'n': 'b'}]|join('-', attribute='n') }}", "b, x x-b"),
        ("{{ range(9)|slice(3)|list }} {{ range(5)|batch(2, a)|list }}", "[[0, 1, 2], [3, 4, 5], [6, 7, 8]] [[0, 1], [2, 3], [4, 'x']]"),
        ("{{ [1, 2]|sum }} {{ [[1], [2]]|sum(start=[]) }} {{ [3, 1, 2]|sort|list }} {{ u|default('d') }} {{ a }}", "3 [1, 2] [1, 2, 3] d x"),
        ("{{ '%s-%s'|format(a, 1) }} [{{ a|center(5) }}] {{ a + 'z' }} {{ 2**10 }} {{ a * 3 }} {{ a }}", "x-1 [ x ] xz 1024 xxx x"),
        ("{% set s %}{{ a }}{{ a }}{% endset %}{{ s|upper }}{% for n, v in [(1, a), (2, a)] %} {{ n }}{{ v }}{% endfor %}", "XX 1x 2x"),
        ("{{ ['a', a]|map('upper')|list|join }} {{ dict(k=a)|items|list }} {{ 'a b c'|wordwrap(3, wrapstring='/') }}", "AX [('k', 'x')] a b/c"),
    ],
)
def test_filters_a_prompt_uses_still_render(tmp_path: Path, template: str, prompt: str) -> None:
    assert [job.prompt for job in plan_of(tmp_path, one_var_recipe(template)).jobs] == [prompt]


def test_the_random_filter_is_refused_as_a_plan_must_be_the_same_every_time(tmp_path: Path) -> None:
    # `{{ [...]|random }}` drew another prompt, so another job_id, at every plan: each run of the
    # recipe would submit (and pay for) new jobs, and never find the last run's done
    text = "template: \"{{ s }} {{ ['red', 'blue']|random }}\"\nvars: {s: [a fox]}\nresolutions: [1K]\n"
    problem = only_problem(tmp_path, text)
    assert "No filter named 'random'" in problem and "sample: {n: N, seed: S}" in problem


def test_a_misspelt_var_in_a_template_is_one_problem_not_two(tmp_path: Path) -> None:
    # "'plce' is undefined (did you mean 'place'?)" was followed by "var 'place' is used by no
    # template", which fixing the first makes untrue
    text = 'template: "a {{ animal }} {{ plce }}"\nvars: {animal: [fox], place: [here, there], mood: [calm]}\nresolutions: [1K]\n'
    problems = problems_of(tmp_path, text)
    assert any("'plce' is undefined (did you mean 'place'?)" in p for p in problems)
    assert not any("var 'place' is used by no template" in p for p in problems)
    assert any("var 'mood' is used by no template" in p for p in problems)  # a var no slip points at


def test_a_ratio_two_sizes_share_is_said_to_be_ambiguous_not_unknown() -> None:
    # It read "unknown resolution '1:1' ... (or a shorthand: or WIDTHxHEIGHT alone)": garbled,
    # and the ratio is no stranger to the model, only shared by two of its sizes.
    from seedream_pipe.models import ModelSchema

    sizes = ["1024x1024 (1:1)", "2048x2048 (1:1)"]
    schema = ModelSchema("acme/square", {"type": "object", "properties": {"resolution": {"enum": sizes}}}, "test")
    with pytest.raises(ValueError) as shared:
        schema.canonical_resolution("1:1")
    assert str(shared.value) == (
        "resolution '1:1' is the ratio of several of acme/square's sizes: 1024x1024 (1:1), 2048x2048 (1:1); "
        "write the one you mean"
    )
    assert schema.canonical_resolution("2048x2048") == "2048x2048 (1:1)"
    with pytest.raises(ValueError) as unknown:
        schema.canonical_resolution("3:2")
    assert str(unknown.value).endswith("accepts: 1024x1024 (1:1), 2048x2048 (1:1) (or WIDTHxHEIGHT alone)")
