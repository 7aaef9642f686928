"""Recipe commands: `validate`, `plan`, `schema` and `init`. They parse, call the library, print."""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.cells import cell_len, set_cell_size

from seedream_pipe.cli import printable
from seedream_pipe.errors import OutputError, Problem, RecipeError, UsageError
from seedream_pipe.jobs import Job
from seedream_pipe.paths import real_path
from seedream_pipe.plan import Plan
from seedream_pipe.recipe import (
    DEFAULT_MAX_JOBS,
    RecipeFiles,
    bases_of,
    default_name,
    iter_recipe_files,
    load_recipe,
    partial_bases_among,
    recipe_json_schema,
)
from seedream_pipe.words import counted

TABLE_LIMIT = 50  # jobs a table shows unless --limit says otherwise
PROMPT_WIDTH = 70


def _warn(message: str) -> None:
    click.secho(f"warning: {printable(message)}", fg="yellow", err=True)


def _recipe_files(paths: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = list(iter_recipe_files(path))
            if not found:
                raise UsageError(f"{path}: no .yaml recipe in this folder")
            files.extend(found)
        else:
            files.append(path)
    return files


@click.command("validate", short_help="Check recipes without sending anything.")
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate_cmd(recipes: tuple[Path, ...]) -> int:
    """Check recipes without sending anything: syntax, keys, templates, axes, request bodies.

    Each RECIPE is a .yaml file or a folder of them (not its subfolders). Every problem is
    printed on its own line with the file, line and key path; the exit code is 65 if any recipe
    has one. A file with no template of its own that another recipe given here extends (shared
    `run:` settings, say) is a partial base: it is checked as part of each recipe that extends it.

    \b
    Example:
        seedream-pipe validate recipes/demo.yaml
        seedream-pipe validate recipes/
    """
    problems: list[Problem] = []
    # problems located in a base, found through the recipes extending it (which are named)
    inherited: dict[Problem, list[Path]] = {}
    in_a_base: set[Problem] = set()  # (of those, the ones in a file the recipes extend: not a var file)
    files = _recipe_files(recipes)
    # Each file read once for all the recipes: a chain of 400 recipes, each extending the one
    # before, read its bases 110,000 times. And each file a problem names resolved once: tried
    # against each base in turn (same_file), there were 37,000 resolves, a third of the rest.
    recipe_files = RecipeFiles()
    resolved = functools.cache(real_path)
    bases = partial_bases_among(files, recipe_files)
    for path in files:
        try:
            recipe = load_recipe(path, files=recipe_files)
            plan = recipe.plan(allow_large=True)
        except RecipeError as exc:
            real = resolved(path)  # (None for a symbolic link loop: no base, and its problem says so)
            extended_by = bases.get(real) if real is not None else None
            parents: set[Path] | None = None
            if extended_by is None:
                for problem in exc.problems:
                    file = resolved(problem.file)
                    # (its own: in its file, named as given when it has no real path, a link loop;
                    # a partial base's problems are its own too: its `base:` line names who found them)
                    if problem.file == str(path) or (file is not None and (file == real or file in bases)):
                        problems.append(problem)
                    else:  # e.g. the child removed a var its base's template uses: name the child
                        inherited.setdefault(problem, []).append(path)
                        if parents is None:  # (found once for the recipe)
                            parents = bases_of(path, recipe_files)
                        if file in parents:
                            in_a_base.add(problem)
            else:  # (its problems in what they inherit show under their names)
                names = ", ".join(printable(str(p)) for p in extended_by)
                click.echo(f"base: {printable(str(path))} (not a whole recipe; checked as part of {names})")
            continue
        for warning in plan.warnings:
            _warn(f"{path}: {warning}")
        over = (f"; over the {DEFAULT_MAX_JOBS:,} that plan and run take without --yes or --max-jobs"
                if len(plan) > DEFAULT_MAX_JOBS else "")  # (valid all the same: a size is no mistake)
        click.echo(f"ok: {printable(str(path))} ({counted(len(plan), 'job')}{over})")
    # a base's own problem is said once, as the base's, not again for each recipe extending it
    said = set(problems)
    for located, through in inherited.items():
        if located not in said:
            names = ", ".join(str(p) for p in through)
            which = ""  # (a var file's problem: the recipe reads it, it does not extend it)
            if located in in_a_base:
                which = ", which extends it" if len(through) == 1 else ", which extend it"
            problems.append(replace(located, message=f"{located.message} (checking {names}{which})"))
    if problems:
        raise RecipeError(list(dict.fromkeys(problems)))
    return 0


def _summary(plan: Plan) -> list[str]:
    recipe = plan.recipe
    lines = [f"recipe {recipe.name} ({recipe.path}), model {recipe.model}"]
    # (the grid's axes, as the recipe sets them: with a sample or a filter kept fewer jobs, the
    # values left in them multiply to more or fewer jobs than there are; the next line says both)
    sizes = " x ".join(f"{name} {size}" for name, size in recipe.blueprint.axis_sizes.items())
    lines.append(f"axes: {sizes}")
    detail = []
    if plan.combinations != plan.grid_size:
        detail.append(f"{plan.combinations:,} of {plan.grid_size:,} combinations kept")
    jobs_line = f"jobs: {len(plan):,}"
    if detail:
        jobs_line += f" ({'; '.join(detail)})"
    lines.append(jobs_line)
    if plan.estimated_cost is not None:
        lines.append(
            f"estimated cost: ${plan.estimated_cost:,.2f} "
            f"({len(plan):,} x ${recipe.price_per_image:g} per image)"
        )
    return [printable(line) for line in lines]  # the path and the model come from the user


# Widths are terminal columns, not characters: ラーメン takes 8, a combining accent none.
def _shorten(text: str, width: int) -> str:
    text = printable(" ".join(text.split()))
    return text if cell_len(text) <= width else set_cell_size(text, width - 1).rstrip() + "…"


def _table(jobs: list[Job], axis_columns: dict[str, str]) -> list[str]:
    """The jobs, one line each; each axis headed by its CSV column (a var `job_id` is `job_id_label`)."""
    headers = ["#", "job_id", *(printable(c) for c in axis_columns.values()), "prompt"]
    rows = [
        [str(job.index), job.job_id, *(_shorten(job.axes.get(n, ""), 30) for n in axis_columns),
         _shorten(job.prompt, PROMPT_WIDTH)]
        for job in jobs
    ]
    widths = [max(cell_len(h), *(cell_len(r[i]) for r in rows)) if rows else cell_len(h)
              for i, h in enumerate(headers)]
    out = ["  ".join(set_cell_size(h, w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(set_cell_size(c, w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return out


_JSON_SLICE = 1 << 16  # characters of plan's JSON written at a time (see plan_cmd)

# What JSON leaves raw of the controls a terminal acts on: DEL and C1 (JSON escapes only C0).
_RAW_IN_JSON = re.compile(r"[\x7f-\x9f]")


def _json_for_terminal(text: str) -> str:
    """JSON text with DEL and C1 controls as \\u escapes: the same data once parsed, nothing
    a terminal would act on if it is printed there (e.g. U+009B, the one-byte CSI)."""
    return _RAW_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


@click.command("plan", short_help="Show the jobs, axes and estimated cost of a recipe; no network.")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="table for people; csv or json (all on stdout) for scripts")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help=f"show at most N jobs (table default {TABLE_LIMIT}, csv/json all; 0 = all)")
@click.option("--max-jobs", type=click.IntRange(min=1), default=DEFAULT_MAX_JOBS, show_default=True,
              help="refuse a plan with more jobs than this unless --yes")
@click.option("--yes", "-y", is_flag=True, help="plan even over --max-jobs")
def plan_cmd(recipe: Path, fmt: str, limit: int | None, max_jobs: int, yes: bool) -> int:
    """Show the jobs a recipe expands into: counts, axes, estimated cost and each request.

    The table goes to stdout with a summary above it; with --format csv or json only the jobs go
    to stdout (the summary and warnings go to stderr), so the output can be piped. The JSON is an
    array of jobs: job_id, index, axes (axis -> label), values, inputs (the exact request body),
    model and repeat.

    \b
    Example:
        seedream-pipe plan recipes/demo.yaml
        seedream-pipe plan recipes/exploration.yaml --format json | jq '.[0].inputs'
        seedream-pipe plan big.yaml --max-jobs 50000 --format csv > jobs.csv
    """
    loaded = load_recipe(recipe)
    plan = loaded.plan(max_jobs=max_jobs, allow_large=yes)
    if limit is None:
        limit = TABLE_LIMIT if fmt == "table" else 0
    jobs = plan.jobs if limit == 0 else plan.jobs[:limit]
    summary = _summary(plan)
    if fmt == "table":
        for line in summary:
            click.echo(line)
        click.echo("")
        for line in _table(jobs, plan.axis_columns()):
            click.echo(line)
        if len(jobs) < len(plan):
            click.echo(f"... {len(plan) - len(jobs):,} more (--limit 0 shows all)")
    else:
        for line in summary:
            click.echo(line, err=True)
        if fmt == "json":
            text = _json_for_terminal(json.dumps([job.as_dict() for job in jobs], ensure_ascii=False, indent=2))
            # In slices: written in one go, a text cut short by a reader that stops (`| head`)
            # lost its rest without a word, exit 0, where csv and the table exit 141 (CPython's
            # buffered writer takes the pipe's partial write of a long text as the end of it)
            for start in range(0, len(text), _JSON_SLICE):
                click.echo(text[start : start + _JSON_SLICE], nl=False)
            click.echo()
        else:
            frame = plan.to_dataframe()
            if limit:
                frame = frame.head(limit)
            from pandas.api.types import is_object_dtype

            for column in frame.columns:
                # an input that is a mapping or a list goes in as its JSON, as the body sends it
                # (pandas would write Python's repr: single quotes, None, True)
                if is_object_dtype(frame[column]):
                    frame[column] = frame[column].map(_json_if_nested)
            frame.to_csv(sys.stdout, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    for warning in plan.warnings:
        _warn(warning)
    return 0


def _json_if_nested(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


@click.command("schema", short_help="Print the JSON Schema of the recipe format, for editors.")
def schema_cmd() -> int:
    """Print the JSON Schema of the recipe format, for editors that validate and complete YAML.

    Save it next to your recipes and point the YAML language server at it with a first line
    `# yaml-language-server: $schema=recipe.schema.json`.

    \b
    Example:
        seedream-pipe schema > recipe.schema.json
    """
    click.echo(json.dumps(recipe_json_schema(), indent=2, ensure_ascii=False))
    return 0


STARTER = """\
# A seedream-pipe recipe: one prompt template, a few variables, every combination a request.
# Check it with `seedream-pipe plan {path}`; run it with `seedream-pipe run {path} --sim`.
# Every key is described in the recipe reference (docs/recipes.md). For completion and checking
# in editors, run `seedream-pipe schema > recipe.schema.json` and make the first line of this
# file `# yaml-language-server: $schema=recipe.schema.json`.

{name_line}
model: bytedance/seedream-4-0/text-to-image

# The prompt: a Jinja2 template. Each var below is in scope, as are `resolution`, `repeat` and
# `index`. Several named templates (`templates: {{short: ..., long: ...}}`) make an axis.
template: "{{{{ subject }}}}, {{{{ light }}}}, {{{{ style }}}}"

vars:
  subject:
    - a lighthouse on a rocky coast
    - a quiet mountain village
  light:
    - dawn: soft dawn light      # `label: value` gives a long value a short label
    - stormy sky
  style: [watercolor, photorealistic]

# Exact values or shorthands: 16:9, 1:1, 3:2, 2560x1440, 1K, 2K, 4K ...
resolutions: ["1:1"]

# exclude:                       # drop combinations matching every key of an entry
#   - {{subject: a quiet mountain village, light: stormy sky}}
# sample: {{n: 4, seed: 1}}        # a reproducible random subset
# repeats: 2                     # several images of each combination

run: {{rpm: 60, concurrency: 4}}
sheet: {{rows: [subject, light], cols: [style]}}
price_per_image: 0.03            # USD, for the cost estimate of `plan`
"""


def _name_line(stem: str) -> str:
    """The starter's `name:` line: the name the file gives (`Été.yaml` -> `été`), written out,
    quoted when YAML would read it as something else than that text (`123`, `yes`, `0x1f`):
    `name:` must be text, so the starter of `2024.yaml` would not have loaded."""
    import yaml

    # (PyYAML quotes a scalar exactly when a plain one would read back as something else)
    written = yaml.safe_dump({"name": default_name(stem)}, allow_unicode=True, width=1 << 30).rstrip("\n")
    return f"{written}                  # default: the file name, lower-case"


@click.command("init", short_help="Write a commented starter recipe (default: recipe.yaml).")
@click.argument("written", metavar="[PATH]", default="recipe.yaml", required=False)
@click.option("--force", is_flag=True, help="overwrite PATH if it exists")
def init_cmd(written: str, force: bool) -> int:
    """Write a commented starter recipe to PATH (default: recipe.yaml); a folder (or a path
    ending in /) gets PATH/recipe.yaml.

    It plans 8 jobs (2 subjects x 2 lights x 2 styles). An existing file is never overwritten
    unless --force is given.

    \b
    Example:
        seedream-pipe init my-sweep.yaml
        seedream-pipe plan my-sweep.yaml
    """
    path = Path(written)
    if written.endswith(("/", os.sep)) or path.is_dir():  # (Path() drops the slash: keep its meaning)
        path = path / "recipe.yaml"
    if not path.parent.is_dir():  # (`init recipes/bali.yaml` in a new project, as `init recipes/`)
        try:
            path.parent.mkdir(parents=True)
        except FileExistsError:  # (said as "File exists", of what is no folder: a file, a link loop)
            raise OutputError(f"cannot create the folder {path.parent}: something that is no folder has that name "
                              "(a file, or a symbolic link to no folder)") from None
        except OSError as exc:
            raise OutputError(f"cannot create the folder {path.parent}: {exc.strerror}") from exc
    # (a link to nothing is there too, as `ls` shows: written through, it made a file wherever
    # it pointed, out of sight)
    if (path.exists() or path.is_symlink()) and not force:
        raise UsageError(f"{printable(str(path))} already exists; pass --force to overwrite it")
    if path.exists() and not path.is_file():
        # (--force on a named pipe waited for a reader for good; on /dev/null it "wrote" nothing)
        raise UsageError(f"{printable(str(path))} is not a regular file (a pipe or a device); give init the path of a .yaml file")
    try:
        # (the path quoted, as pasted in a shell, and on one line: a newline would end its comment;
        # `./` before a leading `-`, which `plan` would take for an option)
        named = printable(shlex.quote(f"./{path}" if str(path).startswith("-") else str(path)))
        path.write_text(STARTER.format(path=named, name_line=_name_line(path.stem)), encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    click.echo(f"wrote {printable(str(path))}; next: seedream-pipe plan {named}")  # pasteable as is
    return 0


COMMANDS: list[click.Command] = [validate_cmd, plan_cmd, schema_cmd, init_cmd]
