"""The planner: a checked recipe expanded into jobs, each an exact request body with its labels.

Two steps. `prepare(recipe)` builds the blueprint once: the axes in order, the compiled templates,
the filters and the model's input schema, reporting every static problem at once (unused or
undefined variables, template syntax errors, zip lengths, unknown resolutions, bodies the model
would refuse...). `build_plan(recipe)` then expands the blueprint:

1. the cartesian product of the axes in the order written (the last varies fastest);
2. `exclude`, then `include`;
3. `sample` (`random.Random(seed).sample` over the surviving combinations, order kept);
4. `repeats` (each combination's repeats are adjacent);
5. each job's prompt is rendered in a sandboxed Jinja2 environment, its body assembled and
   checked, and its job_id computed; a body equal to an earlier one is merged into it.

Speed matters (100,000 jobs in well under 2 s): templates are compiled once, renders are cached
when a template does not use every varying axis, each distinct non-prompt part of a body is
checked against the schema once (the prompt, the only part that varies per job, is checked alone
unless the schema constrains it further), and the job_id's canonical JSON is assembled from a
precomputed prefix and suffix around the prompt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import operator
import random
import re
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, NoReturn, overload

from jinja2 import (
    TemplateSyntaxError,
    meta,
    nodes,
)
from jinja2.sandbox import SecurityError

from seedream_pipe.errors import Problem, RecipeError
from seedream_pipe.jobs import Job
from seedream_pipe.models import ModelSchema, SchemaError, load_model_schema
from seedream_pipe.recipe import (
    TEMPLATE_NAME_PATTERN,
    VAR_NAME_PATTERN,
    closest,
    did_you_mean,
)
from seedream_pipe.recipe_file import KeyPath
from seedream_pipe.templates import SANDBOX, WHY_NOT_HERE, PromptTemplate, template_line
from seedream_pipe.words import option

if TYPE_CHECKING:
    import pandas as pd

    from seedream_pipe.recipe import Recipe, SheetSettings

PROMPT_WORD_LIMIT = 600  # the seed page's advice: longer prompts lose details
MAX_PLAN_JOBS = 1_000_000  # even with --yes: beyond this a plan would not fit in memory
MAX_FILTERED_GRID = 5_000_000  # combinations enumerated to apply exclude/include
JOB_ID_LENGTH = 12

#: All of a plan's renders together: a prompt's own caps still let 10,000 distinct prompts take a
#: second each (hours), and a real plan of 100,000 prompts renders in under a second.
MAX_PLAN_TEMPLATE_SECONDS = 30.0

# Names the planner itself puts in a template's scope.
BUILTIN_SCOPE = ("resolution", "repeat", "index")
# Jinja2 keywords and constants cannot be used as variable names in a template.
_JINJA_WORDS = frozenset(
    {
        "and", "or", "not", "in", "is", "if", "else", "elif", "for", "endfor", "endif", "block",
        "extends", "include", "import", "from", "as", "with", "without", "macro", "call",
        "filter", "set", "raw", "true", "false", "none", "True", "False", "None", "loop", "self",
    }
)
_RESERVED = frozenset({"resolution", "repeat", "index", "template", "prompt"})
_SPACES = re.compile(r"[ \t]{2,}")
# A prompt made only of these shows the model nothing, as an empty one does: spaces and line or
# paragraph separators, control codes, and format characters (zero-width space, BOM, joiners).
_INVISIBLE = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})
_SENTINEL = "\x00seedream-pipe-prompt\x00"

__all__ = ["Axis", "Blueprint", "Plan", "build_plan", "canonical_json", "job_id_for", "prepare"]


def canonical_json(value: Any) -> str:
    """The canonical JSON a job_id hashes: sorted keys, no spaces, UTF-8 (not \\u escapes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def job_id_for(model: str, inputs: Mapping[str, Any], repeat: int) -> str:
    """The job_id: the first 12 hex digits of sha256 over the canonical JSON of
    {"model", "inputs", "repeat"}. The same on every machine and Python version."""
    text = canonical_json({"model": model, "inputs": dict(inputs), "repeat": repeat})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:JOB_ID_LENGTH]


# --------------------------------------------------------------------------------------------
# The blueprint


@dataclass
class Axis:
    """One axis of the grid: its labels, full values and what each puts in a template's scope."""

    name: str
    kind: str  # "template" | "var" | "zip" | "resolution" | "param"
    labels: list[str]
    values: list[Any]
    scope: list[dict[str, Any]]
    key_path: KeyPath
    # var name -> its labels and values (a zip axis has several members; a var axis one)
    member_labels: dict[str, list[str]] = field(default_factory=dict)
    member_values: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


Filter = list[tuple[int, frozenset[int]]]  # (axis position, matching indices) for every key


@dataclass
class Blueprint:
    """What `prepare` checked and compiled; `build_plan` only expands it."""

    axes: list[Axis]
    templates: list[PromptTemplate]
    template_position: int | None
    schema: ModelSchema
    fixed_inputs: dict[str, Any]
    body_positions: list[int]
    excludes: list[Filter]
    includes: list[Filter]
    repeats: int
    notes: list[str] = field(default_factory=list)  # warnings every plan of the recipe repeats

    @property
    def axis_names(self) -> list[str]:
        return list(self.axis_sizes)

    @property
    def axis_sizes(self) -> dict[str, int]:
        """Each axis of the grid and its number of values, as the recipe sets them (repeats
        included): before exclude/include/sample, which may leave fewer in the jobs."""
        sizes = {axis.name: len(axis) for axis in self.axes}
        return {**sizes, "repeat": self.repeats} if self.repeats > 1 else sizes

    @property
    def grid_size(self) -> int:
        return math.prod(len(axis) for axis in self.axes)


def _param_label(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _var_entries(items: list[Any]) -> tuple[list[str], list[str]]:
    labels: list[str] = []
    values: list[str] = []
    for item in items:
        if isinstance(item, dict):
            ((label, value),) = item.items()
            labels.append(str(label))
            values.append(str(value))
        else:
            labels.append(str(item))
            values.append(str(item))
    return labels, values


@dataclass(frozen=True)
class _Unknown:
    """What the problems found in loading left unknown (`Recipe.unknown`), in the planner's
    terms: a check that needs it is skipped rather than failed, since its failure would only
    repeat a problem already reported."""

    names: bool  # vars or params as a whole: any name may be one of them
    templates: bool  # some template's text: which vars are used is not known
    zip: bool
    schema: bool  # the model or its input schema: which resolutions it accepts is not known
    axes: frozenset[str]  # axes (or zipped vars) whose values are not known

    @classmethod
    def of(cls, recipe: Recipe) -> _Unknown:
        paths = recipe.unknown
        tops = {path[0] for path in paths}
        axes = {str(path[1]) for path in paths if len(path) == 2 and path[0] in ("vars", "params")}
        templates = bool(tops & {"template", "templates"})
        schema = bool(tops & {"model", "input_schema"})
        if "resolutions" in tops or schema:
            axes.add("resolution")
        if templates:
            axes.add("template")
        return cls(names=("vars",) in paths or ("params",) in paths, templates=templates,
                   zip="zip" in tops, schema=schema, axes=frozenset(axes))


class _Problems:
    """The problems found so far, from loading the recipe on, and what they left unknown."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        # (a dict as an ordered set: `in` a list made 20,000 problems take 30 s)
        self.found: dict[Problem, None] = dict.fromkeys(recipe.loading_problems)
        self.unknown = _Unknown.of(recipe)

    def may_be_axis(self, name: str, built: Iterable[str]) -> bool:
        """Whether `name` may be an axis that a problem already reported kept from being built
        (a refused resolution or param, a zip group naming no var, a misspelt `vars:`): naming
        it in the sheet or a filter is then no second problem, only the first one again."""
        if not self.found:
            return False
        spec = self.recipe.spec
        written = ({"resolution"} if spec.resolutions else set()) | set(spec.params) | set(spec.vars)
        written |= {"+".join(group) for group in spec.zip} | self.unknown.axes
        built = set(built)
        # (a var of a built zip group is not an axis of its own, and is said so)
        written -= built | {member for axis in built for member in axis.split("+")}
        return name in written or self.unknown.names or (self.unknown.zip and "+" in name)

    def add(self, path: KeyPath, message: str) -> None:
        # (a body check meets the same fault once per value: said once)
        self.found.setdefault(self.recipe.problem(path, message))

    def add_template(self, path: KeyPath, line: int | None, message: str) -> None:
        prefix = f"template line {line}: " if line is not None else ""
        self.found.setdefault(self.recipe.problem(path, prefix + message, text_line=line))

    def raise_if_any(self) -> None:
        if self.found:
            # in file order, as an author fixes them (the checks find them in their own order)
            raise RecipeError(sorted(self.found, key=lambda p: (p.file, p.line or 0, p.column or 0)))


def _compile_templates(recipe: Recipe, problems: _Problems) -> list[PromptTemplate]:
    spec = recipe.spec
    written: list[tuple[str, str, KeyPath]] = []
    if spec.template is not None and spec.templates is not None:
        problems.add(("templates",), "give `template:` or `templates:`, not both")
        return []
    if spec.template is not None:
        written.append(("template", spec.template, ("template",)))
    elif spec.templates is not None:
        if not spec.templates and not problems.unknown.templates:
            problems.add(("templates",), "`templates:` needs at least one template")
        for name, source in spec.templates.items():
            if not re.match(TEMPLATE_NAME_PATTERN, name):
                problems.add(("templates", name), "a template name uses only letters (of any script), digits, - and _")
            written.append((name, source, ("templates", name)))
    else:
        if not problems.unknown.templates:  # (else a problem about the one written was said)
            problems.add((), "a recipe needs a prompt `template:` (or several `templates:`)")
        return []
    compiled: list[PromptTemplate] = []
    for name, source, path in written:
        try:
            tree = SANDBOX.parse(source)
            template = SANDBOX.from_string(tree)
        except TemplateSyntaxError as exc:
            why = WHY_NOT_HERE.get(str(exc.message))
            problems.add_template(path, exc.lineno, f"syntax error: {exc.message}" + (f" ({why})" if why else ""))
            continue
        except SecurityError as exc:  # pragma: no cover - parse-time sandbox refusals
            problems.add_template(path, None, f"refused by the sandbox: {exc}")
            continue
        except (RecursionError, SyntaxError) as exc:
            # Jinja2 parses and compiles recursively, to Python that Python compiles in turn:
            # some 70 brackets, or 25 {% for %}, one inside another are beyond either (exit 70).
            why = f" ({exc.msg})" if isinstance(exc, SyntaxError) else ""
            problems.add_template(path, None, f"nested too deeply to compile{why}: fewer brackets, "
                                              "filters or blocks one inside another")
            continue
        uses = frozenset(meta.find_undeclared_variables(tree)) - frozenset(SANDBOX.globals)
        compiled.append(PromptTemplate(name, source, path, template, uses, tree, _guarded_names(tree)))
    return compiled


def _guarded_names(tree: nodes.Template) -> frozenset[str]:
    """Names the template itself allows to be missing: `x | default(...)` and `x is defined`.
    A base recipe's template can so take a var that only some recipes extending it set."""
    names = {
        node.node.name
        for node in tree.find_all(nodes.Filter)
        if node.name in ("default", "d") and isinstance(node.node, nodes.Name)
    }
    names |= {
        node.node.name
        for node in tree.find_all(nodes.Test)
        if node.name in ("defined", "undefined") and isinstance(node.node, nodes.Name)
    }
    return frozenset(names)


def _first_line_of(template: PromptTemplate, name: str) -> int | None:
    for node in template.tree.find_all(nodes.Name):
        if node.name == name and node.ctx == "load":
            return int(node.lineno)
    return None


def _usable_var_name(name: str) -> bool:
    """A name a template can use: letters of any script, digits and _, no Jinja2 keyword; and
    after its first letter the marks words of many scripts are written with (the vowel signs of
    `रंग`, Hindi for colour), which Python and Jinja2 take in names as well."""
    if re.match(VAR_NAME_PATTERN, name) is None:
        bare = "".join(char for char in name[1:] if unicodedata.category(char) not in ("Mn", "Mc"))
        if re.match(VAR_NAME_PATTERN, name[:1] + bare) is None:
            return False
    return name.isidentifier() and name not in _JINJA_WORDS


def _build_var_axes(recipe: Recipe, problems: _Problems, param_names: set[str]) -> list[Axis]:
    spec = recipe.spec
    variables = spec.vars
    # Python reads names in NFKC (`ﬁsh` is `fish`), and so does the code Jinja2 compiles a
    # template to: two vars so alike were one variable in it, and both rendered one's values.
    alike: dict[str, str] = {unicodedata.normalize("NFKC", name): name for name in param_names}
    for name in variables:
        path: KeyPath = ("vars", name)
        same = alike.setdefault(unicodedata.normalize("NFKC", name), name)
        if same != name:
            problems.add(path, f"{name!r} is the name {same!r} to a template (Python reads names in their NFKC "
                               "form); give one of them another name")
            continue
        if not _usable_var_name(name):
            problems.add(path, f"{name!r} cannot be a var name: use letters and marks (of any script), digits "
                               "and _ (not starting with a digit or a mark, not a Jinja2 keyword)")
        elif name in _RESERVED:
            problems.add(path, f"{name!r} is a reserved name (the planner's own: "
                               f"{', '.join(sorted(_RESERVED))}); give the var another name")
        elif name in SANDBOX.globals:
            # (`{{ dict }}` reads Jinja2's dict(), never the var: it was "used by no template")
            problems.add(path, f"{name!r} is a name templates already have (Jinja2's {name}()); give the var "
                               "another name")
        elif name in param_names:
            problems.add(path, f"{name!r} is both a var and a param")
    grouped: dict[str, int] = {}
    groups: list[list[str]] = []
    for g, group in enumerate(spec.zip):
        path = ("zip", g)
        ok = True
        if len(group) < 2:
            problems.add(path, "a zip group needs at least two vars")
            ok = False
        if len(set(group)) < len(group):
            problems.add(path, "a zip group names the same var twice")
            continue
        for member in group:
            if member not in variables:
                if not problems.unknown.names:  # (any name may be a var of the vars unknown)
                    problems.add(path, f"zip names {member!r}, which is not a var"
                                       + did_you_mean(member, set(variables)))
                ok = False
            elif member in grouped:
                problems.add(path, f"{member!r} is in two zip groups")
                ok = False
        if not ok:
            continue
        lengths = {member: len(variables[member]) for member in group}
        if len(set(lengths.values())) > 1 and not problems.unknown.axes & set(group):
            detail = ", ".join(f"{m} has {n}" for m, n in lengths.items())
            problems.add(path, f"zipped vars need the same number of values: {detail}")
            continue
        for member in group:
            grouped[member] = len(groups)
        groups.append(list(group))

    axes: list[Axis] = []
    done: set[int] = set()
    for name, items in variables.items():
        labels, values = _var_entries(items)
        if name not in grouped:
            _check_unique_labels(problems, ("vars", name), labels, name)
            axes.append(Axis(name, "var", labels, values, [{name: v} for v in values],
                             ("vars", name), {name: labels}, {name: values}))
            continue
        g = grouped[name]
        if g in done:
            continue
        done.add(g)
        members = groups[g]
        entries = [_var_entries(variables[m]) for m in members]
        # (a member whose values are unknown leaves the group's combined values unknown)
        n = 0 if problems.unknown.axes & set(members) else len(entries[0][0])
        axis_labels = [" / ".join(entry[0][i] for entry in entries) for i in range(n)]
        axis_values = [{m: entry[1][i] for m, entry in zip(members, entries, strict=True)} for i in range(n)]
        axis_name = "+".join(members)
        _check_unique_labels(problems, ("zip", spec.zip.index(members)), axis_labels, axis_name)
        axes.append(Axis(axis_name, "zip", axis_labels, axis_values, [dict(v) for v in axis_values],
                         ("zip", spec.zip.index(members)),
                         {m: e[0] for m, e in zip(members, entries, strict=True)},
                         {m: e[1] for m, e in zip(members, entries, strict=True)}))
    return axes


def _check_unique_labels(problems: _Problems, path: KeyPath, labels: list[str], axis: str) -> None:
    """Each label of an axis once. Labels that only look alike count as the same: "café" typed
    two ways (NFC, NFD) or "x" and "x " would be two jobs, both paid for, shown as one."""
    seen: dict[str, str] = {}
    repeated = 0
    for i, label in enumerate(labels):
        key = unicodedata.normalize("NFC", label).strip()
        if key in seen:
            repeated += 1
            if repeated > _DUPLICATES_SAID:
                continue
            where = (*path, i) if path[0] == "vars" else path
            if seen[key] == label:
                problems.add(where, f"the label {label!r} appears twice on axis {axis!r} "
                                    "(values and `label:` keys must be distinct)")
            else:
                problems.add(where, f"the label {label!r} looks the same as {seen[key]!r} on axis {axis!r} "
                                    "(they differ only in Unicode form or spaces): both would be sent, "
                                    "and paid for, but show as one; keep one")
        seen.setdefault(key, label)
    if repeated > _DUPLICATES_SAID:
        problems.add(path, f"{repeated - _DUPLICATES_SAID:,} more labels on axis {axis!r} repeat an earlier one "
                           f"({repeated:,} in all; the first {_DUPLICATES_SAID} are said)")


#: Repeated labels said one by one on an axis: a var file of 100,000 lines that repeat is one
#: mistake, not 100,000 lines of errors.
_DUPLICATES_SAID = 10


def _build_resolution_axis(recipe: Recipe, schema: ModelSchema, problems: _Problems) -> Axis | None:
    written = recipe.spec.resolutions
    if written is None:
        default = schema.default_resolution
        if not schema.accepts_resolution or default is None:
            return None
        # The model's default, sent explicitly: the same body as a recipe that lists it.
        return Axis("resolution", "resolution", [str(default)], [default],
                    [{"resolution": default}], ("resolutions",))
    if problems.unknown.schema:
        return None  # (which resolutions the model meant accepts is not known)
    labels: list[str] = []
    listed: set[str] = set()  # (`in labels` made 30,000 resolutions take 8 s)
    values: list[Any] = []
    for i, text in enumerate(written):
        try:
            value = schema.canonical_resolution(text)
        except ValueError as exc:
            problems.add(("resolutions", i), str(exc))
            continue
        label = str(value)
        if label in listed:
            problems.add(("resolutions", i), f"{text!r} is {label!r}, already listed")
            continue
        listed.add(label)
        labels.append(label)
        values.append(value)
    if not labels:
        return None
    return Axis("resolution", "resolution", labels, values,
                [{"resolution": v} for v in values], ("resolutions",))


def _build_param_axes(recipe: Recipe, problems: _Problems) -> list[Axis]:
    axes: list[Axis] = []
    for name, values in recipe.spec.params.items():
        path: KeyPath = ("params", name)
        if name in ("prompt", "resolution"):
            problems.add(path, f"{name!r} cannot be a param: the prompt comes from the template "
                               "and resolutions from `resolutions:`")
            continue
        if name in ("template", "repeat", "index"):
            problems.add(path, f"{name!r} is a reserved axis name")
            continue
        if name in recipe.spec.inputs:
            problems.add(path, f"{name!r} is both a fixed input (inputs:) and a param")
            continue
        labels = [_param_label(v) for v in values]
        _check_unique_labels(problems, path, labels, name)
        axes.append(Axis(name, "param", labels, list(values), [{name: v} for v in values], path,
                         {name: labels}, {name: list(values)}))
    return axes


def _forms(axis: Axis, member: str | None) -> dict[str, set[int]]:
    """Each form a filter value may match on `axis` (a label, a full value, its text) -> the
    indices that have it."""
    if member is not None:
        labels = axis.member_labels[member]
        values: list[Any] = axis.member_values[member]
    else:
        labels, values = axis.labels, axis.values
    index: dict[str, set[int]] = {}
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        forms = {label, value if isinstance(value, str) else _param_label(value)}
        if not isinstance(value, str | dict):
            forms.add(str(value))
        for form in forms:
            index.setdefault(form, set()).add(i)
            # (as typed, "café" may be one letter é or e and an accent: both are the same text)
            index.setdefault(unicodedata.normalize("NFC", form), set()).add(i)
    return index


def _matching(axis: Axis, wanted: list[str], schema: ModelSchema, forms: dict[str, set[int]]) -> frozenset[int]:
    """The indices of `axis` whose label or full value equals one of `wanted` (`forms`: the
    axis's `_forms`, made once for all the entries that name it)."""
    targets = set(wanted) | {unicodedata.normalize("NFC", text) for text in wanted}
    if axis.kind == "resolution":
        for text in wanted:
            with contextlib.suppress(ValueError):
                targets.add(str(schema.canonical_resolution(text)))
    found: set[int] = set()
    for target in targets:
        found |= forms.get(target, set())
    return frozenset(found)


def _build_filters(recipe: Recipe, which: str, axes: list[Axis], schema: ModelSchema,
                   problems: _Problems, notes: list[str]) -> list[Filter]:
    """Compile exclude/include entries. A name or value that matches nothing is an error (a
    typo would otherwise filter nothing), except in an exclude entry a base recipe wrote about
    an axis that a recipe extending it set or removed: that entry may now exclude less, which
    is only noted, since what cannot be planned needs no excluding. (A typo in a base, on an
    axis no extending file touched, is still an error.)"""
    entries = getattr(recipe.spec, which)

    def inherited(path: KeyPath) -> Problem | None:
        where = recipe.problem(path, "")
        # (a zip axis `a+b` is narrowed when a member is: its labels are the members' labels)
        key = str(path[-1])
        touched = key in recipe.narrowed or ("+" in key and not recipe.narrowed.isdisjoint(key.split("+")))
        narrowed = which == "exclude" and where.file != recipe.display and touched
        return where if narrowed else None

    def miss(path: KeyPath, message: str) -> None:
        base = inherited(path)
        if base is None:
            problems.add(path, message)
        else:
            notes.append(f"{base}{message}. {recipe.display} extends this recipe without it, so there is "
                         f"nothing of it to exclude (`exclude: ~` in {recipe.display} drops the base's excludes)")

    by_name: dict[str, tuple[int, str | None]] = {}
    for position, axis in enumerate(axes):
        by_name[axis.name] = (position, None)
        if axis.kind == "zip":
            for var in axis.member_labels:
                by_name[var] = (position, var)
    compiled: list[Filter] = []
    # (each axis's forms made once: looked for anew for each value of each entry, 3,000 entries
    # on a var of 6,000 values took 14 s)
    forms_of: dict[tuple[int, str | None], dict[str, set[int]]] = {}
    misses = 0  # (a did-you-mean looks through every label: said for the first few only)
    for e, entry in enumerate(entries):
        path: KeyPath = (which, e)
        if not entry:
            problems.add(path, f"an empty {which} entry would match every combination")
            continue
        conditions: Filter = []
        ok = True
        for key, wanted in entry.items():
            if key == "repeat":
                problems.add((*path, key), f"repeats are made after {which}; `repeat` cannot be filtered")
                ok = False
                continue
            if key not in by_name and problems.may_be_axis(key, [a.name for a in axes]):
                ok = False
                continue
            if key not in by_name:
                miss((*path, key), f"{key!r} names no axis or var" + did_you_mean(key, set(by_name))
                     + "; axes: " + ", ".join(a.name for a in axes))
                ok = False
                continue
            position, member = by_name[key]
            if problems.unknown.axes & ({member} if member else {key, *axes[position].member_labels}):
                ok = False  # (its values are unknown: what they match cannot be told)
                continue
            wanted_list = wanted if isinstance(wanted, list) else [wanted]
            if (position, member) not in forms_of:
                forms_of[position, member] = _forms(axes[position], member)
            forms = forms_of[position, member]
            each = [_matching(axes[position], [w], schema, forms) for w in wanted_list]
            indices = frozenset().union(*each)
            unmatched = [w for w, found in zip(wanted_list, each, strict=True) if not found]
            if unmatched:
                shown = ", ".join(repr(w) for w in unmatched)
                known: list[str] = (
                    axes[position].member_labels[member] if member else axes[position].labels
                )
                misses += 1
                miss((*path, key), f"{shown} matches no value of {key!r}"
                     + (did_you_mean(unmatched[0], set(known)) if misses <= 20 else "")
                     + "; labels: " + ", ".join(known[:20]) + (" ..." if len(known) > 20 else ""))
                if not (inherited((*path, key)) and indices):
                    ok = False  # (an inherited entry still excludes the values it does match)
                    continue
            conditions.append((position, indices))
        if ok:
            compiled.append(conditions)
    return compiled


def _check_sheet(recipe: Recipe, axis_names: list[str], problems: _Problems) -> None:
    sheet = recipe.spec.sheet
    # an axis the recipe writes that could not be built was refused with its own error already:
    # saying the sheet names no axis would send the reader after a second, false problem
    known = set(axis_names) | {name for name in _sheet_names(sheet) if problems.may_be_axis(name, axis_names)}
    sides: dict[str, str] = {}

    def hint(name: str) -> str:
        # a var of a zip group is not an axis of its own: the group is ("city+place")
        group = next((axis for axis in axis_names if name in axis.split("+") and "+" in axis), None)
        return f" (did you mean {group!r}? {name!r} varies with it)" if group else did_you_mean(name, known)

    for side in ("rows", "cols"):
        for i, name in enumerate(getattr(sheet, side) or []):
            if name not in known:
                problems.add(("sheet", side, i), f"{name!r} is not an axis of this recipe"
                             + hint(name) + "; axes: " + ", ".join(axis_names))
            elif name in sides:
                problems.add(("sheet", side, i), f"axis {name!r} is already in sheet.{sides[name]}")
            else:
                sides[name] = side
    if sheet.page_by is not None:
        if sheet.page_by not in known:
            problems.add(("sheet", "page_by"), f"{sheet.page_by!r} is not an axis of this recipe"
                         + hint(sheet.page_by) + "; axes: " + ", ".join(axis_names))
        elif sheet.page_by in sides:
            problems.add(("sheet", "page_by"), f"axis {sheet.page_by!r} is already in sheet.{sides[sheet.page_by]}")


def _sheet_names(sheet: SheetSettings) -> list[str]:
    return [*(sheet.rows or []), *(sheet.cols or []), *([sheet.page_by] if sheet.page_by else [])]


def _body_problem_path(recipe: Recipe, blueprint_axes: list[Axis], where: str,
                       combo: Mapping[int, int]) -> KeyPath:
    """The recipe key path a schema error about input `where` points at."""
    if where == "resolution":
        if recipe.spec.resolutions is None:
            return ("model",)
        for position, axis in enumerate(blueprint_axes):
            if axis.kind == "resolution":
                i = combo.get(position, 0)
                written = recipe.spec.resolutions
                label = axis.labels[i]
                for j, text in enumerate(written):
                    if text == label or text == axis.values[i]:
                        return ("resolutions", j)
                return ("resolutions", i)
        return ("resolutions",)
    if where in recipe.spec.params:
        for position, axis in enumerate(blueprint_axes):
            if axis.kind == "param" and axis.name == where:
                return ("params", where, combo.get(position, 0))
    if where in recipe.spec.inputs:
        return ("inputs", where)
    if where == "prompt":
        return ("template",) if recipe.spec.template is not None else ("templates",)
    return ("inputs",) if recipe.spec.inputs else ()


def _body_part(blueprint: Blueprint, combo_at: Mapping[int, int]) -> dict[str, Any]:
    """The request body without the prompt: resolution, fixed inputs, then params."""
    part: dict[str, Any] = {}
    axes = blueprint.axes
    for position in blueprint.body_positions:
        axis = axes[position]
        if axis.kind == "resolution":
            part["resolution"] = axis.values[combo_at.get(position, 0)]
    part.update(blueprint.fixed_inputs)
    for position in blueprint.body_positions:
        axis = axes[position]
        if axis.kind == "param":
            part[axis.name] = axis.values[combo_at.get(position, 0)]
    return part


def _check_body(recipe: Recipe, blueprint: Blueprint, body: Mapping[str, Any], combo_at: Mapping[int, int],
                problems: _Problems, *, skip_prompt: bool) -> bool:
    ok = True
    for where, message in blueprint.schema.errors(body):
        if skip_prompt and where == "prompt":
            continue
        path = _body_problem_path(recipe, blueprint.axes, where, combo_at)
        if path[:1] == ("params",) and "does not accept the input" in message:
            path = path[:2]  # the whole param is refused, not one of its values
        if where == "" and "requires" in message:
            message += " (add it under `inputs:`)"
        problems.add(path, message)
        ok = False
    return ok


def _check_finite(path: KeyPath, value: Any, problems: _Problems) -> None:
    """NaN and infinities have no JSON form: a body holding one could not be sent."""
    if isinstance(value, float) and not math.isfinite(value):
        problems.add(path, f"{value} is not a number JSON can carry")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite((*path, key), item, problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite((*path, i), item, problems)


def prepare(recipe: Recipe) -> Blueprint:
    """Check everything that does not need the jobs themselves; compile the templates."""
    problems = _Problems(recipe)
    spec = recipe.spec
    try:
        schema = load_model_schema(spec.model, recipe.input_schema, display=recipe.input_schema_display)
    except SchemaError as exc:
        problems.add(("input_schema",) if spec.input_schema else ("model",), str(exc))
        # The rest is checked all the same, against a schema that takes anything: what the
        # model accepts (its resolutions, its bodies) is unknown, and so not checked.
        problems.unknown = dataclasses.replace(problems.unknown, schema=True, axes=problems.unknown.axes | {"resolution"})
        schema = ModelSchema(spec.model, {"type": "object"}, "unknown")
    for name in spec.inputs:
        if name == "prompt":
            problems.add(("inputs", name), "the prompt comes from `template:`, not `inputs:`")
        elif name == "resolution":
            problems.add(("inputs", name), "set resolutions with `resolutions: [...]`, not `inputs:`")
    _check_finite(("inputs",), spec.inputs, problems)
    _check_finite(("params",), spec.params, problems)
    templates = _compile_templates(recipe, problems)
    param_axes = _build_param_axes(recipe, problems)
    var_axes = _build_var_axes(recipe, problems, {a.name for a in param_axes})
    resolution_axis = _build_resolution_axis(recipe, schema, problems)

    axes: list[Axis] = []
    template_position: int | None = None
    if len(templates) > 1:
        template_position = 0
        axes.append(Axis("template", "template", [t.name for t in templates],
                         [t.source for t in templates], [{} for _ in templates], ("templates",)))
    axes.extend(var_axes)
    if resolution_axis is not None:
        axes.append(resolution_axis)
    axes.extend(param_axes)

    # Every name a template may use, and every var some template must use.
    # (a var whose name was refused above is left out: `{{ my-var }}` reads as my minus var)
    unusable = [name for name in spec.vars if not _usable_var_name(name)]
    scope_names = (set(spec.vars) - set(unusable)) | set(BUILTIN_SCOPE) | set(spec.params)
    used: set[str] = set()
    meant: set[str] = set()  # names an undefined one is a slip for: not also "used by no template"
    for template in templates:
        used |= template.uses
        if problems.unknown.names:
            continue  # (which names the vars or params are is not known)
        for name in sorted(template.uses - scope_names - template.optional):
            part_of = next((bad for bad in unusable if name in re.split(r"\W+", bad)), None)
            if part_of is not None:
                renamed = re.sub(r"\W+", "_", part_of)
                # (`loop` has no \W to replace: it would be suggested as its own new name)
                example = f", e.g. {renamed!r}" if _usable_var_name(renamed) else ""
                hint = f" (part of the var {part_of!r}, whose name a template cannot use: rename it{example})"
            else:
                guess = closest(name, scope_names)
                hint = f" (did you mean {guess!r}?)" if guess else ""
                meant |= {guess} if guess else set()
            problems.add_template(template.key_path, _first_line_of(template, name),
                                  f"{name!r} is undefined{hint}; the template can use: "
                                  + ", ".join(sorted(scope_names)))
    written = 1 if spec.template is not None else len(spec.templates or {})
    if templates and len(templates) == written and not problems.unknown.templates:
        for name in spec.vars:
            # (a reserved name has its own problem: `{{ index }}` would use the planner's, not the var)
            if name not in used and name not in unusable and name not in meant and name not in _RESERVED and name not in SANDBOX.globals:
                problems.add(("vars", name), f"var {name!r} is used by no template (it would only "
                                             f"repeat the same prompts); use {{{{ {name} }}}} or remove it")

    notes: list[str] = []
    excludes = _build_filters(recipe, "exclude", axes, schema, problems, notes)
    includes = _build_filters(recipe, "include", axes, schema, problems, notes)
    blueprint = Blueprint(
        axes=axes,
        templates=templates,
        template_position=template_position,
        schema=schema,
        fixed_inputs=dict(spec.inputs),
        body_positions=[i for i, a in enumerate(axes) if a.kind in ("resolution", "param")],
        excludes=excludes,
        includes=includes,
        repeats=spec.repeats,
        notes=notes,
    )
    _check_sheet(recipe, blueprint.axis_names, problems)

    # Each value of each body axis, with the others at their first value: catches inputs the
    # model refuses before any job is built. Combinations are checked again in build_plan.
    if not problems.found:
        checked: set[tuple[int, int]] = set()
        for position in blueprint.body_positions or [-1]:
            count = len(axes[position]) if position >= 0 else 1
            for i in range(count):
                combo_at = {position: i} if position >= 0 else {}
                body = {"prompt": "x", **_body_part(blueprint, combo_at)}
                if (position, i) not in checked:
                    checked.add((position, i))
                    _check_body(recipe, blueprint, body, combo_at, problems, skip_prompt=True)
    problems.raise_if_any()
    return blueprint


# --------------------------------------------------------------------------------------------
# The plan


class Plan:
    """The jobs of a recipe, in order, with the axes they span and the warnings found."""

    def __init__(self, recipe: Recipe, jobs: list[Job], axes: dict[str, list[str]], warnings: list[str],
                 *, grid_size: int, combinations: int) -> None:
        self.recipe = recipe
        self.jobs = jobs
        self.axes = axes
        self.warnings = warnings
        self.grid_size = grid_size  # combinations before exclude/include/sample
        self.combinations = combinations  # after them, before repeats
        price = recipe.price_per_image
        self.estimated_cost: float | None = None if price is None else round(price * len(jobs), 6)

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    @overload
    def __getitem__(self, index: int) -> Job: ...
    @overload
    def __getitem__(self, index: slice) -> list[Job]: ...
    def __getitem__(self, index: int | slice) -> Job | list[Job]:
        # (a slice, `plan[:10]`, is the list of those jobs, as a notebook expects of it)
        return self.jobs[index]

    def __repr__(self) -> str:
        sizes = " x ".join(f"{name}={size}" for name, size in self.recipe.blueprint.axis_sizes.items())
        return f"<Plan {self.recipe.name!r}: {len(self.jobs)} jobs ({sizes})>"

    def to_dataframe(self) -> pd.DataFrame:
        """One row per job: job_id, index, one column per axis (labels), prompt, then the other
        inputs that are not already a column, and repeat (1-based, as the repeat axis's labels;
        a number, whether or not the recipe's repeats make it an axis: `df[df.repeat == 1]`).

        No two columns share a name. job_id, index, prompt and repeat are always the plan's own.
        An input named like one of them (a custom `input_schema` may take an input `job_id`,
        `index` or `repeat`) is the column `<input>_input`. An axis named like another column (a
        var `job_id`, or a var and an `inputs:` key both called `seed`) is the column
        `<axis>_label`. Either suffix is added again while the name is still taken (vars `job_id`
        and `job_id_label`: `job_id_label_label` and `job_id_label`).
        """
        import pandas as pd

        axis_columns, input_columns = self._columns()
        with_repeat = "repeat" not in axis_columns  # (else the repeat axis is the column)
        columns = ["job_id", "index", *axis_columns.values(), "prompt", *input_columns.values(),
                   *(["repeat"] if with_repeat else [])]
        rows = [
            (job.job_id, job.index, *(job.repeat + 1 if n == "repeat" else job.axes.get(n) for n in axis_columns), job.prompt,
             *(job.inputs.get(k) for k in input_columns), *((job.repeat + 1,) if with_repeat else ()))
            for job in self.jobs
        ]
        return pd.DataFrame.from_records(rows, columns=columns)

    def axis_columns(self) -> dict[str, str]:
        """Each axis (in plan order) -> the name of its column in `to_dataframe()`, and in plan's
        table and CSV: the axis's name, or `<axis>_label` when that names another column (see
        to_dataframe)."""
        return self._columns()[0]

    def _columns(self) -> tuple[dict[str, str], dict[str, str]]:
        """The column of each axis, and of each input that is not an axis, in to_dataframe."""
        axis_names = list(self.axes)
        # (a body axis, resolution or a param, is that input's column; a var is not an input)
        body_axes = {a.name for a in self.recipe.blueprint.axes if a.kind in ("resolution", "param")}
        inputs: list[str] = []
        for job in self.jobs[:1]:
            inputs = [k for k in job.inputs if k != "prompt" and k not in body_axes]
        # (repeat too when it is the repeat axis's column: that axis keeps its name)
        own = {"job_id", "index", "prompt", "repeat"}
        taken = own | set(axis_names) | set(inputs)

        def apart(name: str, suffix: str) -> str:
            column = f"{name}{suffix}"
            while column in taken:  # (another column's own name: `job_id` and `job_id_label`)
                column += suffix
            taken.add(column)
            return column

        input_columns = {name: apart(name, "_input") if name in own else name for name in inputs}
        fixed = {"job_id", "index", "prompt", *input_columns.values()}
        axis_columns = {name: apart(name, "_label") if name in fixed else name for name in axis_names}
        return axis_columns, input_columns


def _decode(number: int, sizes: list[int]) -> tuple[int, ...]:
    """The `number`-th combination of the product of ranges `sizes` (last varies fastest)."""
    out = [0] * len(sizes)
    for position in range(len(sizes) - 1, -1, -1):
        number, out[position] = divmod(number, sizes[position])
    return tuple(out)


#: Index tuples the entries of one filter list are expanded into, at most (see _Entries).
_MAX_EXPANDED = 1_000_000


class _Entries:
    """exclude or include entries, made quick to test a combination against: the entries that
    name the same axes are one set of the index tuples they match, looked up once per
    combination, rather than each entry tried in turn (3,000 excludes of one value each took
    10 s over 6,000 combinations). An entry whose tuples would be too many stays an entry."""

    def __init__(self, entries: list[Filter]) -> None:
        by_axes: dict[tuple[int, ...], set[Any]] = {}
        self.entries: list[list[tuple[int, frozenset[int]]]] = []
        expanded = 0
        for entry in entries:
            merged: dict[int, frozenset[int]] = {}
            for position, indices in entry:  # (a zip member and its group: both must match)
                merged[position] = merged[position] & indices if position in merged else indices
            positions = tuple(sorted(merged))
            size = math.prod(len(merged[p]) for p in positions)
            if expanded + size > _MAX_EXPANDED:
                self.entries.append([(p, merged[p]) for p in positions])
                continue
            expanded += size
            found = by_axes.setdefault(positions, set())
            if len(positions) == 1:
                found.update(merged[positions[0]])
            else:
                found.update(itertools.product(*(merged[p] for p in positions)))
        self.groups = [(operator.itemgetter(*positions), found) for positions, found in by_axes.items()]

    def match(self, combo: tuple[int, ...]) -> bool:
        for get, found in self.groups:
            if get(combo) in found:
                return True
        return any(all(combo[p] in indices for p, indices in entry) for entry in self.entries)


def _keep(combo: tuple[int, ...], excludes: _Entries, includes: _Entries | None) -> bool:
    if excludes.match(combo):
        return False
    return includes.match(combo) if includes is not None else True


def _too_many(recipe: Recipe, count: int, limit: int, allow_large: bool, *, sampled: bool = False) -> None:
    if count > MAX_PLAN_JOBS:
        # (exclude/include cannot help a grid too large to filter: say what can)
        how = ("sample, or fewer values (exclude/include filter grids of at most "
               f"{MAX_FILTERED_GRID:,} combinations)" if recipe.blueprint.grid_size > MAX_FILTERED_GRID
               else "exclude/include/sample")
        if sampled:  # (the sample is what is too large)
            how = "a smaller sample.n" + (" or fewer repeats" if recipe.blueprint.repeats > 1 else "")
        raise RecipeError(recipe.problem((), f"the plan has {count:,} jobs; seedream-pipe plans at most "
                                              f"{MAX_PLAN_JOBS:,}: narrow it with {how}"))
    if count > limit and not allow_large:
        raise RecipeError(recipe.problem((), f"the plan has {count:,} jobs, over the limit of {limit:,}; pass "
                                              f"{option('--yes', 'allow_large=True')} to go ahead anyway, or "
                                              f"raise {option('--max-jobs', 'max_jobs')}"))


def _select(recipe: Recipe, blueprint: Blueprint, warnings: list[str], max_jobs: int,
            allow_large: bool) -> tuple[Iterable[tuple[int, ...]], int, list[tuple[int, ...]] | None]:
    """The combinations kept after exclude/include/sample, their count, and the list of them
    when it was materialised (None when every combination is kept). A plan over the job limits
    is refused here, and before its sample is drawn (`n: 30000000` took minutes and gigabytes
    first)."""
    sizes = [len(axis) for axis in blueprint.axes]
    total = math.prod(sizes)
    filtered = bool(blueprint.excludes or blueprint.includes)
    kept: list[tuple[int, ...]] | None = None
    if filtered:
        if total > MAX_FILTERED_GRID:
            raise RecipeError(recipe.problem((), f"the grid has {total:,} combinations before exclude/include; "
                                                  f"at most {MAX_FILTERED_GRID:,} can be filtered: use sample "
                                                  "(it draws without listing them), or fewer values"))
        excludes = _Entries(blueprint.excludes)
        includes = _Entries(blueprint.includes) if blueprint.includes else None
        kept = [c for c in itertools.product(*map(range, sizes)) if _keep(c, excludes, includes)]
        if not kept:
            raise RecipeError(recipe.problem(("include",) if blueprint.includes else ("exclude",),
                                             "no combination is left after exclude/include"))
    count = len(kept) if kept is not None else total
    sample = recipe.spec.sample
    _too_many(recipe, min(sample.n if sample else count, count) * blueprint.repeats, max_jobs, allow_large,
              sampled=sample is not None and sample.n < count)
    if sample is not None:
        if sample.n >= count:
            warnings.append(f"sample.n ({sample.n}) is not below the {count:,} combinations: all are kept")
        else:
            # Sampling indices is the same draw as sampling the list itself, without building it.
            chosen = sorted(_sample(random.Random(sample.seed), count, sample.n))
            kept = [kept[i] for i in chosen] if kept is not None else [_decode(i, sizes) for i in chosen]
            count = len(kept)
    combos: Iterable[tuple[int, ...]] = kept if kept is not None else itertools.product(*map(range, sizes))
    return combos, count, kept


def _sample(rng: random.Random, count: int, n: int) -> list[int]:
    """`n` distinct numbers below `count`: `rng.sample(range(count), n)`, which takes a range
    only of at most sys.maxsize items (OverflowError), so a larger grid (20 vars of 10 values)
    draws as that would with no such limit: n numbers by randrange, each new one kept."""
    if count <= sys.maxsize:
        return rng.sample(range(count), n)
    chosen: dict[int, None] = {}
    while len(chosen) < n:
        chosen.setdefault(rng.randrange(count))
    return list(chosen)


def build_plan(recipe: Recipe, *, max_jobs: int = 10_000, allow_large: bool = False) -> Plan:
    """Expand a recipe into its jobs (see the module docstring for the order)."""
    blueprint = recipe.blueprint
    warnings: list[str] = list(blueprint.notes)
    problems = _Problems(recipe)
    repeats = blueprint.repeats
    combos, count, kept = _select(recipe, blueprint, warnings, max_jobs, allow_large)

    axes = blueprint.axes
    names = [axis.name for axis in axes]
    all_labels = [axis.labels for axis in axes]
    all_values = [axis.values for axis in axes]
    scopes = [axis.scope for axis in axes]
    positions = range(len(axes))
    body_positions = blueprint.body_positions
    templates = blueprint.templates
    template_position = blueprint.template_position
    model = recipe.model
    schema = blueprint.schema
    full_prompt_check = schema.prompt_needs_full_check()
    repeat_labels = [str(r + 1) for r in range(repeats)]

    # Cache renders when a template ignores some axis that varies: those jobs share a prompt.
    varying = {name for axis in axes if len(axis) > 1 for name in axis.scope[0]}
    if repeats > 1:
        varying.add("repeat")
    # Local to this call (not kept on the blueprint), so that plans never share state.
    caches: dict[str, dict[tuple[Any, ...], str]] = {}
    cache_names: dict[str, tuple[str, ...]] = {}
    # (a name a template only guards, `x | default('')`, that no axis sets is not in any scope)
    supplied = {name for axis in axes for name in axis.scope[0]} | {"repeat", "index"}
    for template in templates:
        if "index" not in template.uses and not varying <= template.uses:
            caches[template.name] = {}
            cache_names[template.name] = tuple(sorted(template.uses & supplied))

    # Per distinct non-prompt part: the body's other inputs and the canonical JSON around the prompt.
    parts: dict[tuple[int, ...], tuple[dict[str, Any], str, str] | None] = {}
    model_json = encode_basestring(model)

    def make_part(key: tuple[int, ...], prompt: str) -> tuple[dict[str, Any], str, str] | None:
        combo_at = dict(zip(body_positions, key, strict=True))
        part = _body_part(blueprint, combo_at)
        body = {"prompt": prompt, **part}
        if not _check_body(recipe, blueprint, body, combo_at, problems, skip_prompt=full_prompt_check):
            return None
        text = canonical_json({"inputs": {"prompt": _SENTINEL, **part}, "model": model, "repeat": 0})
        marker = encode_basestring(_SENTINEL)
        prefix, _, suffix = text.partition(marker)
        # The suffix ends with `"repeat":0}`; the repeat number is spliced in per job.
        expected_end = f',"model":{model_json},"repeat":0}}'
        assert suffix.endswith(expected_end), suffix
        return part, prefix, suffix[: -len("0}")]

    jobs: list[Job] = []
    seen: dict[str, int] = {}
    merged = 0
    merged_example = ""
    long_prompts = 0
    long_example = 0
    # Where an empty (or invisible) prompt was rendered: its position among every job the grid
    # makes, in plan order (such a job has no index in the plan), and the first one named.
    empty: dict[str, list[int]] = {}
    invisible: dict[str, list[int]] = {}
    invisible_example: dict[str, str] = {}
    first_empty: dict[str, str] = {}
    position = 0
    sha256 = hashlib.sha256
    index = 0
    failed: set[str] = set()  # templates that could not render a prompt
    rendering = 0.0  # seconds spent in templates so far
    renders = 0
    monotonic = time.monotonic
    for combo in combos:
        scope: dict[str, Any] = {}
        for a in positions:
            scope.update(scopes[a][combo[a]])
        template = templates[combo[template_position]] if template_position is not None else templates[0]
        if template.name in failed:
            continue  # (its first failure is reported; the other templates are still tried)
        part_key = tuple(combo[p] for p in body_positions)
        if part_key in parts:
            part_entry = parts[part_key]
            needs_part = False
        else:
            part_entry = None
            needs_part = True
        labels = {names[a]: all_labels[a][combo[a]] for a in positions}
        values = {names[a]: all_values[a][combo[a]] for a in positions}
        for r in range(repeats):
            index = len(jobs) + 1
            position += 1
            scope["repeat"] = r + 1
            scope["index"] = index
            cache = caches.get(template.name)
            prompt = None
            if cache is not None:
                cache_key = tuple(v if v.__class__ is str else _cache_token(v) for v in map(scope.__getitem__, cache_names[template.name]))
                prompt = cache.get(cache_key)
            if prompt is None:
                started = monotonic()
                prompt = _render(template, scope, labels, problems)
                rendering += monotonic() - started
                if prompt is None:
                    failed.add(template.name)
                    break
                renders += 1
                if rendering > MAX_PLAN_TEMPLATE_SECONDS:
                    _too_slow(recipe, template, index, count * repeats, rendering / renders)
                if cache is not None:
                    cache[cache_key] = prompt
            if not prompt:
                empty.setdefault(template.name, []).append(position)
                first_empty.setdefault(template.name, _describe(labels, r, repeats))
                continue
            # Rendered prompts are stripped, so a first visible character settles it at once.
            if unicodedata.category(prompt[0]) in _INVISIBLE and _shows_nothing(prompt):
                invisible.setdefault(template.name, []).append(position)
                invisible_example.setdefault(template.name, prompt)
                first_empty.setdefault(template.name, _describe(labels, r, repeats))
                continue
            if len(prompt) > 2 * PROMPT_WORD_LIMIT and len(prompt.split()) > PROMPT_WORD_LIMIT:
                long_prompts += 1
                long_example = long_example or index
            if needs_part:
                part_entry = parts[part_key] = make_part(part_key, prompt)
                needs_part = False
            if part_entry is None:
                continue
            part, prefix, suffix = part_entry
            if full_prompt_check:
                body_check = {"prompt": prompt, **part}
                for where, message in schema.errors(body_check):
                    if where == "prompt" and len(problems.found) < 20:
                        problems.add(template.key_path, f"job {index}: the prompt is refused: {message}")
            canonical = prefix + encode_basestring(prompt) + suffix + str(r) + "}"
            job_id = sha256(canonical.encode("utf-8")).hexdigest()[:JOB_ID_LENGTH]
            if job_id in seen:
                merged += 1
                if not merged_example:
                    merged_example = f"{_describe(labels, r, repeats)} = job {seen[job_id]}"
                continue
            seen[job_id] = index
            if repeats > 1:
                job_labels = {**labels, "repeat": repeat_labels[r]}
                job_values = {**values, "repeat": r + 1}
            else:
                job_labels, job_values = labels, values
            inputs = {"prompt": prompt}
            inputs.update(part)
            jobs.append(Job(job_id, index, job_labels, job_values, inputs, model, r))
        if len(problems.found) >= 20:
            break

    for name, indices in empty.items():
        template = next(t for t in templates if t.name == name)
        problems.add(template.key_path, f"the template renders an empty prompt for {len(indices):,} "
                                        f"job(s), first for {first_empty[name]} (grid positions "
                                        f"{_positions(indices)})")
    for name, indices in invisible.items():
        template = next(t for t in templates if t.name == name)
        problems.add(template.key_path, f"the template renders a prompt with nothing visible for "
                                        f"{len(indices):,} job(s), first for {first_empty[name]} (grid "
                                        f"positions {_positions(indices)}): "
                                        f"only {_invisible_names(invisible_example[name])}")
    problems.raise_if_any()
    if merged:
        warnings.append(f"{merged:,} job(s) had the same request body as an earlier job and were "
                        f"merged into it (e.g. {merged_example})")
    if long_prompts:
        warnings.append(f"{long_prompts:,} prompt(s) are over {PROMPT_WORD_LIMIT} words (e.g. job "
                        f"{long_example}); the model may ignore details of long prompts")

    axis_labels: dict[str, list[str]] = {}
    for a, axis in enumerate(axes):
        if kept is None:
            axis_labels[axis.name] = list(axis.labels)
        else:
            present = {combo[a] for combo in kept}
            axis_labels[axis.name] = [label for i, label in enumerate(axis.labels) if i in present]
    if repeats > 1:
        axis_labels["repeat"] = repeat_labels
    return Plan(recipe, jobs, axis_labels, warnings, grid_size=blueprint.grid_size, combinations=count)


def _cache_token(value: Any) -> tuple[type, str]:
    """A param value (or repeat) as a render cache key: its type and repr, since values that
    are equal in Python render apart (`1`, `1.0` and `true` are equal, `0.0` and `-0.0` too, and
    render as `1`, `1.0`, `True`, `0.0`, `-0.0`); a list or mapping is so hashable as well."""
    return (value.__class__, repr(value))


def _positions(indices: list[int]) -> str:
    return ", ".join(str(i) for i in indices[:5]) + (" ..." if len(indices) > 5 else "")


def _shows_nothing(prompt: str) -> bool:
    """True for a prompt with no visible character (see `_INVISIBLE`)."""
    return all(unicodedata.category(char) in _INVISIBLE for char in prompt)


def _invisible_names(prompt: str, limit: int = 3) -> str:
    """The characters that hide in a prompt, by code point and name ("U+200B ZERO WIDTH SPACE"),
    so the author can find them; the spaces among them go without saying."""
    found = list(dict.fromkeys(char for char in prompt if not char.isspace())) or list(prompt[:1])
    names = [f"U+{ord(char):04X} {unicodedata.name(char, '')}".rstrip() for char in found[:limit]]
    return ", ".join(names) + (" ..." if len(found) > limit else "")


def _describe(labels: Mapping[str, str], repeat: int, repeats: int) -> str:
    text = ", ".join(f"{k}={v}" for k, v in labels.items())
    return f"{text}, repeat={repeat + 1}" if repeats > 1 else text


def _render(template: PromptTemplate, scope: Mapping[str, Any], labels: Mapping[str, str],
            problems: _Problems) -> str | None:
    """The prompt, or None when the template fails (the problem is added to `problems`)."""
    try:
        text = template.render(scope)
    except SecurityError as exc:
        problems.add_template(template.key_path, template_line(exc), f"refused by the sandbox: {exc}")
        return None
    except Exception as exc:
        kind = "" if type(exc).__name__ == "UndefinedError" else f"{type(exc).__name__}: "
        problems.add_template(template.key_path, template_line(exc),
                              f"{kind}{exc} (rendering {_describe(labels, 0, 1)})")
        return None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            # `{{ "\\ud800" }}` or `"%c" % 55296`: half of a UTF-16 pair, no character of its
            # own, which neither the job_id's hash nor the request's JSON can carry as UTF-8
            problems.add_template(template.key_path, None,
                                  f"the template makes U+{ord(text[exc.start]):04X}, half of a UTF-16 "
                                  "surrogate pair and no character of its own, which a request cannot carry "
                                  f"(rendering {_describe(labels, 0, 1)})")
            return None
    text = text.strip()
    if "  " in text or "\t" in text:
        text = _SPACES.sub(" ", text)
    return text


def _too_slow(recipe: Recipe, template: PromptTemplate, done: int, of: int, each: float) -> NoReturn:
    message = (
        f"the templates took over {MAX_PLAN_TEMPLATE_SECONDS:g} s in all, at job {done:,} of {of:,} "
        f"({each * 1000:,.0f} ms a prompt, where a prompt needs microseconds): a loop in a "
        "template does too much work"
    )
    raise RecipeError(recipe.problem(template.key_path, message))




