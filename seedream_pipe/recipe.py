"""Recipes: the YAML format, its loading (with `extends` and var files) and its validation.

`load_recipe(path)` reads a recipe, resolves `extends` and `{file: ...}` var values, checks it
against the recipe model (pydantic, unknown keys refused with a did-you-mean) and then against
itself (templates, axes, filters, the model's input schema: see `seedream_pipe.plan`). Every
problem found is reported at once as a `RecipeError` whose `Problem`s name the file, the key path
and the line. `Recipe.plan()` expands it into jobs.

YAML is read (in `seedream_pipe.recipe_file`) with the safe loader's composer and converted by
hand, so that each key path keeps its line, duplicate keys are refused and aliases cannot expand
without bound (an alias bomb). Values that are text for the planner (var values, resolutions,
exclude/include values) keep the text as written: `16:9` stays "16:9" (YAML 1.1 would read 969)
and `on` stays "on" (not True).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import numbers
import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from seedream_pipe.config import MAX_CONCURRENCY
from seedream_pipe.errors import UNSHOWN, Problem, RecipeError, printable
from seedream_pipe.models import DEFAULT_MODEL
from seedream_pipe.paths import file_sha256, real_path
from seedream_pipe.recipe_file import (
    LITERAL_BLOCK,
    Document,
    KeyPath,
    Location,
    SourceFile,
    decode_text,
    format_key_path,
    parse_yaml,
    read_limited,
    source_file,
)

if TYPE_CHECKING:
    from seedream_pipe.plan import Blueprint, Plan

# Limits that keep a hostile or mistaken file from hanging the planner.
MAX_VAR_FILE_BYTES = 16 * 1024 * 1024
#: Values all the var files of a recipe (and its bases) hold together: each takes some 600 bytes
#: once planned, and a 16 MB file of one-letter lines holds 8 million (a MemoryError at 8 GB),
#: as do 20 vars naming the same file of 16 MB. A plan has at most 1,000,000 jobs too; only a
#: `sample:` could draw from more values, and a subset of the file's lines does that as well.
MAX_VAR_FILE_VALUES = 1_000_000
DEFAULT_MAX_JOBS = 10_000
#: The longest name a folder may have on the usual file systems (ext4, APFS, NTFS: 255).
MAX_NAME_BYTES = 255
#: Files one `extends` chain may hold: each is read in a nested call, and some 1,000 of them
#: ended plan with a RecursionError (exit 70).
MAX_EXTENDS_DEPTH = 100

# Keys a recipe does not inherit through `extends`: they name this file's own run.
_NOT_INHERITED = ("name", "output", "extends")


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice `word` is most likely a slip for, or None."""
    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(word: str, choices: list[str] | set[str] | frozenset[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    found = closest(word, choices)
    return f" (did you mean {found!r}?)" if found else ""


# --------------------------------------------------------------------------------------------
# The recipe model (its JSON Schema is `seedream-pipe schema`)

#: Letters of any script, digits and _ (Python's \w), not starting with a digit: names a
#: Jinja2 template can use. (The JSON Schema checks only part of it: an editor's regex reads \w
#: as ASCII only.)
VAR_NAME_PATTERN = r"^(?!\d)\w+$"
#: owner/model/task: the id goes into the submit URL, which carries the token, so no `..`, `?`,
#: `#` or `%` may steer that POST elsewhere on the API's host.
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$"
TEMPLATE_NAME_PATTERN = r"^[\w-]+$"  # letters of any script, digits, - and _ (a label)
#: Top-level keys that start so are the author's own and ignored: a place for YAML anchors
#: (`x-styles: &styles [...]`), as in Compose files.
EXTENSION_PREFIX = "x-"

_VAR_VALUES_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    {"type": ["string", "number", "boolean"]},
                    {
                        "type": "object",
                        "minProperties": 1,
                        "maxProperties": 1,
                        "additionalProperties": {"type": ["string", "number", "boolean"]},
                        "description": "label: value (the label names the value on sheets)",
                    },
                ]
            },
        },
        {
            "type": "object",
            "required": ["file"],
            "additionalProperties": False,
            "properties": {
                "file": {
                    "type": "string",
                    "description": "a text file, one value per line, relative to the recipe",
                }
            },
        },
    ],
    "description": "The values of a var: a list (items may be `label: value`) or {file: PATH}.",
}


def _check_var_values(value: Any) -> Any:
    if isinstance(value, dict) and "file" in value:
        raise PydanticCustomError(
            "var_file", "a var file is written {file: PATH} with no other key"
        )
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), str):
        ((key, path),) = value.items()
        if key.lower() in ("path", "filename", "from", "files", "file", "source"):  # (File: too)
            raise PydanticCustomError(
                "var_file_key", f"a var file is written {{file: PATH}}: file: {path}, not {key}: {path}"
            )
    if not isinstance(value, list):
        raise PydanticCustomError(
            "var_values", "expected a list of values, or {file: PATH}"
        )
    if not value:
        raise PydanticCustomError("var_empty", "a var needs at least one value")
    return value


def _check_var_item(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((label, text),) = value.items()
        if isinstance(text, str) and label:
            return value
    raise PydanticCustomError(
        "var_item", "expected text, or a one-key mapping `label: text`"
    )


def _check_name(value: str) -> str:
    """A name is what `default_name` makes of itself: the rule that names a recipe by its file
    (`Été.yaml` -> `été`) is the rule an explicit `name:` follows."""
    fixed = default_name(value)
    if fixed != value and not re.fullmatch(r"[a-z0-9_-]+", value):  # (`sweep-`: as ever)
        # (two spellings that look alike, `é` as one code point or as e + U+0301: say so)
        how = " (its letters composed, NFC)" if unicodedata.normalize("NFC", value) == fixed else ""
        raise PydanticCustomError(
            "recipe_name",
            "a name uses only lower-case letters (any script), digits, - and _ (it names the "
            "output folder), got {got}; {fixed}{how} would do",
            {"got": repr(value), "fixed": repr(fixed), "how": how},
        )
    if len(value.encode()) > MAX_NAME_BYTES:
        # (else every check passed and `run` stopped at its first write: "File name too long")
        raise PydanticCustomError(
            "recipe_name",
            "a name is at most {most} bytes in UTF-8 (it names the output folder, and file systems "
            "allow no longer), got {got} bytes", {"most": MAX_NAME_BYTES, "got": len(value.encode())},
        )
    return value


RecipeName = Annotated[str, AfterValidator(_check_name)]


def _check_folder(value: str) -> str:
    """An `output:` folder is printed by every command: a control character in it would be a
    terminal's command (`\\e]0;...`: the window title, colours), a bidi mark would reorder it."""
    if UNSHOWN.search(value):
        raise PydanticCustomError(
            "output_folder", "a folder path with a control character or an invisible reordering mark in it, "
            "got {got}; name the folder with printable characters", {"got": printable(value)},
        )
    return value


FolderPath = Annotated[str, AfterValidator(_check_folder)]


def _check_file(value: str) -> str:
    """A NUL names no file: opening the path would raise ValueError (exit 70), not say so."""
    if "\0" in value:
        raise PydanticCustomError("file_path", "a file path cannot hold a NUL character")
    return value


FilePath = Annotated[str, AfterValidator(_check_file)]
VarItem = Annotated[str | dict[str, str], BeforeValidator(_check_var_item)]
VarValues = Annotated[
    list[VarItem], BeforeValidator(_check_var_values), WithJsonSchema(_VAR_VALUES_SCHEMA)
]


def _check_filter_value(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise PydanticCustomError(
        "filter_value", "expected a value, or a list of values (any of them matches)"
    )


FilterValue = Annotated[
    str | list[str],
    BeforeValidator(_check_filter_value),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": ["string", "number", "boolean"]},
                {"type": "array", "items": {"type": ["string", "number", "boolean"]}},
            ]
        }
    ),
]
FilterEntry = Annotated[
    dict[str, FilterValue],
    Field(
        description="axis or var name -> a label or value (or a list: any of them); "
        "an entry matches a combination when every key given matches"
    ),
]


class _Strict(BaseModel):
    # frozen: a recipe is checked and planned from what was loaded (its blueprint is cached), so
    # `recipe.run.rpm = 5` in a notebook raises rather than being silently ignored
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RunSettings(_Strict):
    """How the runner paces a run."""

    rpm: float = Field(default=60.0, gt=0, allow_inf_nan=False, description="submits per minute at most")
    concurrency: int = Field(default=4, ge=1, le=MAX_CONCURRENCY, description="jobs in flight at most")
    timeout_s: float = Field(default=900.0, gt=0, allow_inf_nan=False, description="give up on a job after this long")
    resubmit_unknown: bool = Field(
        default=True,
        description="submit again (once) a job whose submit outcome is unknown; "
        "false leaves it failed, never risking a second charge",
    )


class SheetSettings(_Strict):
    """How the contact sheet lays the images out."""

    rows: list[str] | None = Field(
        default=None, description="axes down the side (default: the axes that vary, but resolution and repeat)"
    )
    cols: list[str] | None = Field(
        default=None,
        description="axes across the top (default: resolution if it varies, else the innermost row axis)",
    )
    page_by: str | None = Field(default=None, description="one page per label of this axis")
    cell: int = Field(default=256, ge=32, le=2048, description="cell size in pixels")
    max_cells: int = Field(default=100, ge=1, description="cells per page at most")
    repeats: Literal["inline", "axis"] = Field(
        default="inline", description="repeats side by side in a cell, or as an axis"
    )


class SampleSettings(_Strict):
    """A reproducible random subset of the combinations (after exclude/include)."""

    n: int = Field(ge=1, description="how many combinations to keep")
    seed: int = Field(default=0, description="the random seed; the same seed keeps the same subset")


class RecipeSpec(_Strict):
    """A seedream-pipe recipe: a sweep of text-to-image requests."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        title="seedream-pipe recipe",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    name: RecipeName | None = Field(
        default=None,
        description="lower-case letters of any script, digits, - and _; default: the file's stem, "
        "made so (not inherited)",
    )
    description: str | None = Field(default=None, description="free text for people")
    extends: str | None = Field(
        default=None, description="a recipe this one overrides key by key, relative to this file"
    )
    model: str = Field(
        default=DEFAULT_MODEL,
        pattern=MODEL_PATTERN,
        description="the RunComfy model id, e.g. bytedance/seedream-4-0/text-to-image",
    )
    input_schema: FilePath | None = Field(
        default=None, description="a JSON Schema file of the model's inputs, relative to this file"
    )
    template: str | None = Field(default=None, description="the prompt, a Jinja2 template")
    templates: dict[str, str] | None = Field(
        default=None,
        description="several named prompt templates (names: letters of any script, digits, - and _); "
        "with more than one, `template` is an axis",
    )
    vars: dict[str, VarValues] = Field(
        default_factory=dict,
        description="the template's variables (names: letters of any script, digits and _, not "
        "starting with a digit); each is an axis, in the order written",
        # (the part of the name rule an editor's ASCII-only \w can still check)
        json_schema_extra={"propertyNames": {"pattern": r"^[^0-9\s\-][^\s\-]*$"}},
    )
    resolutions: list[str] | None = Field(
        default=None, min_length=1, description="resolution enum values or aliases (16:9, 1:1, 1k, ...)"
    )
    zip: list[list[str]] = Field(
        default_factory=list, description="groups of vars that vary together (one axis each)"
    )
    exclude: list[FilterEntry] = Field(
        default_factory=list, description="drop the combinations matching any entry"
    )
    include: list[FilterEntry] = Field(
        default_factory=list, description="if not empty, keep only combinations matching an entry"
    )
    sample: SampleSettings | None = None
    repeats: int = Field(default=1, ge=1, le=1000, description="distinct jobs per combination")
    inputs: dict[str, JsonValue] = Field(
        default_factory=dict, description="further model inputs, the same for every job"
    )
    params: dict[str, Annotated[list[JsonValue], Field(min_length=1)]] = Field(
        default_factory=dict, description="further model inputs swept as axes"
    )
    run: RunSettings = Field(default_factory=lambda: RunSettings())
    sheet: SheetSettings = Field(default_factory=lambda: SheetSettings())
    price_per_image: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="USD, for cost estimates")
    output: FolderPath | None = Field(
        default=None, description="output folder, relative to this file (not inherited)"
    )


# Which model describes the mapping at a key path, for the did-you-mean of unknown keys.
_MODEL_AT: dict[KeyPath, type[BaseModel]] = {
    (): RecipeSpec,
    ("run",): RunSettings,
    ("sheet",): SheetSettings,
    ("sample",): SampleSettings,
}


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file as written (`seedream-pipe schema`).

    A file that `extends` a base may set any key of a mapping to null to remove what the base
    set, so each such key also takes null here: an editor checks one file, not the merged recipe.
    """
    schema = RecipeSpec.model_json_schema()
    defs = schema.get("$defs", {})
    for properties in (schema["properties"], *(d.get("properties", {}) for d in defs.values())):
        for key, rule in properties.items():
            properties[key] = _or_null(rule)
    schema["patternProperties"] = {f"^{EXTENSION_PREFIX}": {"description": "the author's own: ignored (YAML anchors)"}}
    for key in ("vars", "inputs", "params", "templates"):
        rule = schema["properties"][key]
        for mapping in (rule, *rule.get("anyOf", ())):
            if isinstance(mapping.get("additionalProperties"), dict):
                mapping["additionalProperties"] = _or_null(mapping["additionalProperties"])
    return {"$schema": schema.pop("$schema"), **schema}


def _or_null(rule: dict[str, Any]) -> dict[str, Any]:
    """`rule`, or null (as `extends` removal), unless it takes null already."""
    choices = rule.get("anyOf", ())
    if rule.get("type") == "null" or any(c.get("type") == "null" for c in choices):
        return rule
    if choices:
        return {**rule, "anyOf": [*choices, {"type": "null"}]}
    described: dict[str, Any] = {k: rule[k] for k in ("title", "description", "default") if k in rule}
    inner = {k: v for k, v in rule.items() if k not in described}
    return {**described, "anyOf": [inner, {"type": "null"}]}


# --------------------------------------------------------------------------------------------
# extends and var files


def _problem_at(locations: dict[KeyPath, Location], default_file: str, path: KeyPath, message: str) -> Problem:
    """A Problem located at the closest key path that has a location."""
    probe = path
    while probe and probe not in locations:
        probe = probe[:-1]
    loc = locations.get(probe)
    if loc is None:
        return Problem(default_file, message, format_key_path(path))
    return Problem(loc.file, message, format_key_path(path), loc.line, loc.column)


def _real_or_absolute(path: Path) -> Path:
    """`real_path(path)`, or `path` made absolute when it has no real path (a link loop): what
    is found through it then says so (`parse_recipe(..., folder=a_loop)` ended with RuntimeError)."""
    return real_path(path) or Path(os.path.abspath(path))


def _join_display(display: str, relative: str) -> str:
    return os.path.normpath(os.path.join(os.path.dirname(display), relative))


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _lines(text: str) -> Iterator[str]:
    """`_LINE_BREAK.split(text)`, one line at a time."""
    start = 0
    for found in _LINE_BREAK.finditer(text):
        yield text[start : found.start()]
        start = found.end()
    yield text[start:]


def _read_var_file(doc: Document, name: str, written: str, problems: list[Problem],
                   values_read: list[int]) -> tuple[list[str], dict[KeyPath, Location]] | None:
    """The values of a `{file: ...}` var, one per line, and where each came from. `values_read`
    counts the values of every var file the recipe has read (see MAX_VAR_FILE_VALUES)."""
    key: KeyPath = ("vars", name, "file")
    if not written or "\0" in written or os.path.isabs(written) or written.startswith("~"):
        problems.append(
            _problem_at(doc.locations, doc.display, key,
                        f"a var file must be a path relative to the recipe's folder, not {written!r}")
        )
        return None
    folder = _real_or_absolute(doc.path.parent)
    target = real_path(folder / written)
    if target is None:
        problems.append(_problem_at(doc.locations, doc.display, key,
                                    f"var file {written!r} is a symbolic link that leads back to itself"))
        return None
    if not target.is_relative_to(folder):
        # Var values are sent to the API: a recipe must not be able to read files from
        # elsewhere on the machine (e.g. ~/.ssh) into prompts.
        problems.append(
            _problem_at(doc.locations, doc.display, key,
                        f"var file {written!r} is outside the recipe's folder; keep var files "
                        "in the recipe's folder or below it")
        )
        return None
    display = _join_display(doc.display, written)
    at = _problem_at(doc.locations, doc.display, key, "")
    try:
        raw = read_limited(target, display, MAX_VAR_FILE_BYTES, "var file", at, regular_only=True)
        text = decode_text(raw, display, "the var file")
    except RecipeError as exc:
        problems.extend(exc.problems)
        return None
    doc.sources.append(source_file(display, target, raw))
    values: list[str] = []
    locations: dict[KeyPath, Location] = {}
    # Lines as an editor counts them: str.splitlines() would also break a value at a form feed,
    # U+0085 or U+2028, and number the lines after it differently from the editor.
    for number, line in enumerate(_lines(text), start=1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        if values_read[0] >= MAX_VAR_FILE_VALUES:
            problems.append(
                _problem_at(doc.locations, doc.display, key,
                            f"var file {display} brings the values of the recipe's var files over "
                            f"{MAX_VAR_FILE_VALUES:,} together (line {number}), the most a recipe may hold, "
                            "sampled or not (each value takes memory once planned): keep a subset of its lines")
            )
            return None
        values_read[0] += 1
        locations[("vars", name, len(values))] = Location(display, number, 1)
        values.append(value)
    if not values:
        problems.append(
            _problem_at(doc.locations, doc.display, ("vars", name),
                        f"var file {display} has no values (blank lines and # comments are skipped)")
        )
        return None
    return values, locations


def _inline_var_files(doc: Document, values_read: list[int]) -> None:
    """Replace each `{file: ...}` var by the file's values. A file that cannot be read is a
    problem of the document, and its var a var whose values are unknown: it still exists for the
    template, zip, exclude and sheet checks, so they say nothing false about it."""
    variables = doc.data.get("vars")
    if not isinstance(variables, dict):
        return
    # Where the YAML wrote inside each var (its `file:`), found once: looked for among every
    # location for each var file, values read before included, 1,000 var files took a minute.
    written_under: dict[Any, list[KeyPath]] = {}
    for path in doc.locations:
        if len(path) > 2 and path[0] == "vars":
            written_under.setdefault(path[1], []).append(path)
    for name, value in list(variables.items()):
        if isinstance(value, dict) and set(value) == {"file"} and isinstance(value["file"], str):
            found = _read_var_file(doc, name, value["file"], doc.problems, values_read)
            if found is None:
                doc.unknown.add(("vars", name))
                continue
            variables[name], locations = found
            for path in written_under.get(name, ()):
                del doc.locations[path]
            doc.locations.update(locations)


#: Text of the parsed recipe files one RecipeFiles keeps at most: thousands of recipes of the
#: usual few kB, but only four of the largest (a parsed file takes some ten times its text in
#: memory). Files past it are parsed again at each use, as they all were before any was kept.
MAX_KEPT_RECIPE_BYTES = 8 * 1024 * 1024


class RecipeFiles:
    """The recipe files that one command reads, each read and parsed once, for all the recipes it
    checks: `validate` of 400 files, each extending the one before, parsed each base again for
    every recipe above it in the chain (and again to find which files a problem came from),
    110,000 parses and 21 s. A file edited after its first use is not read again, so every
    recipe is checked against the same bases.
    """

    def __init__(self) -> None:
        self._parsed: dict[tuple[Path, str], Document] = {}
        self._kept_bytes = 0
        self._bases: dict[Path, Path | None] = {}
        self._real: dict[Path, Path | None] = {}

    def real_path(self, path: Path) -> Path | None:
        """`paths.real_path(path)`, found once: each recipe of a chain resolves every base below it."""
        if path not in self._real:
            self._real[path] = real_path(path)
        return self._real[path]

    def parse(self, path: Path, display: str, problem_at: Problem | None = None) -> Document:
        """`parse_yaml(path, display, problem_at)`: a copy of the file's first parse, which the
        caller may change (extends merges into it). A file that does not parse is read again at
        each use: its problem is located where that use names it (`problem_at`)."""
        doc, kept = self._read(path, display, problem_at)
        return _copy_of(doc) if kept else doc

    def data(self, path: Path) -> dict[str, Any]:
        """The file's data as parsed, to read only (no copy): what it extends, whether it has a
        template. Raises RecipeError if it does not parse."""
        return self._read(path, str(path))[0].data

    def _read(self, path: Path, display: str, problem_at: Problem | None = None) -> tuple[Document, bool]:
        """The file's parse, and whether it is the one kept (which no caller may change)."""
        kept = self._parsed.get((path, display))
        if kept is not None:
            return kept, True
        doc = parse_yaml(path, display, problem_at)
        if self._kept_bytes + len(doc.text) > MAX_KEPT_RECIPE_BYTES:
            return doc, False
        self._kept_bytes += len(doc.text)
        self._parsed[(path, display)] = doc
        return doc, True

    def base_of(self, path: Path) -> Path | None:
        """The file `path` extends (resolved), or None: it extends none, or it is not a regular
        file or a recipe that parses. A named pipe, which extends refuses, is not opened: read
        for this, it waited for a writer for good."""
        if path not in self._bases:
            base = None
            if path.is_file():
                try:
                    parent = self.data(path).get("extends")
                except RecipeError:
                    parent = None
                base = self.real_path(path.parent / parent) if isinstance(parent, str) and parent else None
            self._bases[path] = base
        return self._bases[path]


def _copy_of(doc: Document) -> Document:
    """A Document that shares nothing changeable with `doc`."""
    return Document(doc.display, doc.path, doc.text, copy.deepcopy(doc.data), locations=dict(doc.locations),
                    narrowed=set(doc.narrowed), problems=list(doc.problems), unknown=set(doc.unknown),
                    sources=list(doc.sources))


def _rebase_paths(doc: Document, top_folder: Path) -> None:
    """Make `input_schema` relative to the top recipe's folder (it was relative to this file)."""
    value = doc.data.get("input_schema")
    if isinstance(value, str) and value and not os.path.isabs(value):
        absolute = _real_or_absolute(doc.path.parent / value)
        doc.data["input_schema"] = os.path.relpath(absolute, _real_or_absolute(top_folder))


def _drop_under(locations: dict[KeyPath, Location], prefix: KeyPath) -> None:
    for path in [p for p in locations if p[: len(prefix)] == prefix]:
        del locations[path]


def _merge(base: dict[str, Any], base_locs: dict[KeyPath, Location], child: dict[str, Any],
           child_locs: dict[KeyPath, Location], prefix: KeyPath = ()) -> None:
    """Override `base` with `child` key by key, in place (mappings merge, the rest replaces)."""
    for key, value in child.items():
        here = (*prefix, key)
        if value is None:
            base.pop(key, None)
            _drop_under(base_locs, here)
            continue
        if isinstance(value, dict):
            if not isinstance(base.get(key), dict):  # (merged into nothing, so a null in it removes nothing)
                base[key] = {}
                _drop_under(base_locs, here)
            if here in child_locs:
                base_locs[here] = child_locs[here]
            _merge(base[key], base_locs, value, child_locs, here)
            continue
        base[key] = value
        _drop_under(base_locs, here)
        base_locs.update({p: loc for p, loc in child_locs.items() if p[: len(here)] == here})


def _load_with_extends(path: Path, display: str, top_folder: Path, chain: list[Path], files: RecipeFiles | None,
                       problem_at: Problem | None = None, *, text: str | None = None,
                       values_read: list[int] | None = None) -> Document:
    values_read = [0] if values_read is None else values_read  # (the var files' values, bases' too)
    if files is not None and text is None:
        doc = files.parse(path, display, problem_at)
    else:  # (one recipe alone reads each file once: nothing to keep, nor to copy)
        doc = parse_yaml(path, display, problem_at, text=text)
    for key in [k for k in doc.data if isinstance(k, str) and k.startswith(EXTENSION_PREFIX)]:
        del doc.data[key]  # (its anchors have been copied where aliases use them)
        _drop_under(doc.locations, (key,))
    _inline_var_files(doc, values_read)
    _rebase_paths(doc, top_folder)
    parent = doc.data.get("extends")
    if parent is None:
        return doc
    # Without its base a recipe cannot be checked: a problem of `extends` ends the checks, with
    # the problems found so far.
    problems = doc.problems
    where = _problem_at(doc.locations, display, ("extends",), "")
    if not isinstance(parent, str) or not parent or "\0" in parent:
        got = f", not {parent!r}" if isinstance(parent, str) and parent else ""  # (a NUL in it)
        problems.append(Problem(where.file, f"expected the path of a recipe file{got}",
                                "extends", where.line, where.column))
        raise RecipeError(problems)
    base_path = (path.parent / parent)
    base_display = _join_display(display, parent)
    real = files.real_path(base_path) if files is not None else real_path(base_path)
    if real is None:
        problems.append(Problem(where.file, f"{base_display} is a symbolic link that leads back to itself",
                                "extends", where.line, where.column))
        raise RecipeError(problems)
    if real in set(chain):  # (a set: Path equality, tried down a list of 100, was most of validate's time)
        cycle = " -> ".join([*(str(p.name) for p in chain[chain.index(real):]), real.name])
        problems.append(Problem(where.file, f"cycle: {cycle}", "extends", where.line, where.column))
        raise RecipeError(problems)
    if len(chain) >= MAX_EXTENDS_DEPTH:
        problems.append(Problem(where.file, f"{base_display} makes the chain of extends longer than "
                                f"{MAX_EXTENDS_DEPTH} files, the most a recipe may build on",
                                "extends", where.line, where.column))
        raise RecipeError(problems)
    if base_path.is_dir():
        problems.append(Problem(where.file, f"{base_display} is a folder; give the path of a recipe .yaml file",
                                "extends", where.line, where.column))
        raise RecipeError(problems)
    if base_path.exists() and not base_path.is_file():
        problems.append(Problem(where.file, f"{base_display} is not a regular file (a pipe or a device)",
                                "extends", where.line, where.column))
        raise RecipeError(problems)
    if not base_path.is_file():
        problems.append(Problem(where.file, f"recipe not found: {base_display} (paths are relative to the recipe that extends)",
                                "extends", where.line, where.column))
        raise RecipeError(problems)
    try:
        base = _load_with_extends(base_path, base_display, top_folder, [*chain, real], files, where,
                                  values_read=values_read)
    except RecipeError as exc:
        raise RecipeError([*problems, *exc.problems]) from None
    for key in _NOT_INHERITED:
        base.data.pop(key, None)
        _drop_under(base.locations, (key,))
    # `template` and `templates` are two spellings of one thing: setting either replaces both.
    for one, other in (("template", "templates"), ("templates", "template")):
        if one in doc.data:
            base.data.pop(other, None)
            _drop_under(base.locations, (other,))
    child = dict(doc.data)
    child.pop("extends", None)
    # (the axes files extending the one that wrote `exclude` set: an exclude this file writes
    # replaces the base's, and what it names is held to what this file's own axes plan)
    narrowed = set() if "exclude" in child else base.narrowed | _axes_written(child, base.data)
    _merge(base.data, base.locations, child, doc.locations)
    # Keep this file's own keys that were not inherited.
    for key in ("name", "output"):
        if key in doc.data:
            base.data[key] = doc.data[key]
    doc.data = base.data
    doc.locations = base.locations
    doc.narrowed = narrowed
    doc.problems = [*base.problems, *doc.problems]
    doc.sources = [*doc.sources, *base.sources]
    # (a var the base could not read is known again where this file sets or removes it)
    doc.unknown |= {p for p in base.unknown if not _written(child, p)}
    return doc


def _written(data: dict[str, Any], path: KeyPath) -> bool:
    """Whether `data` sets the value at `path`, or removes it (`key: ~` on the way there)."""
    here: Any = data
    for key in path:
        if not isinstance(here, dict) or key not in here:
            return False
        here = here[key]
        if here is None:
            return True
    return True


def _axes_written(child: dict[str, Any], base: dict[str, Any]) -> set[str]:
    """The axes an extending file sets or removes (`vars: ~` removes every var of the base)."""
    names: set[str] = set()
    for key in ("vars", "params"):
        if key in child:
            written = child[key]
            names |= set(written) if isinstance(written, dict) else set(base.get(key) or {})
    if "resolutions" in child:
        names.add("resolution")
    if "template" in child or "templates" in child:  # (setting either replaces both, above)
        names.add("template")
    return names


# --------------------------------------------------------------------------------------------
# Validation


# Top-level keys people write from other tools' words, and the key that means it here.
_MEANT_AT_TOP = {
    "prompt": "template",
    "prompts": "templates",
    "seed": "sample",
    "variables": "vars",
    "size": "resolutions",
    "sizes": "resolutions",
    "image_size": "resolutions",
}
_SHOWN_AS = {"sample": "`sample: {n: N, seed: S}`"}  # (how a did-you-mean names it, when not 'key')


def _meant_key(key: str) -> str | None:
    """The recipe key an unknown top-level key is most likely a slip for."""
    fields = set(RecipeSpec.model_fields)
    return _MEANT_AT_TOP.get(key.lower()) or closest(key, fields) or closest(key.lower(), fields)


# pydantic's wording for the errors a recipe author meets most, in the author's terms.
_PLAIN_MESSAGES = {
    "model_type": "should be a mapping (key: value)",
    "model_attributes_type": "should be a mapping (key: value)",
    "dict_type": "should be a mapping (key: value)",
    "list_type": "should be a list ([a, b] or one `- item` per line)",
    "too_short": "needs at least one value",
    "finite_number": "should be a finite number",
}


def _pydantic_problems(exc: ValidationError, doc: Document) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for error in exc.errors():
        loc: KeyPath = tuple(p for p in error["loc"] if isinstance(p, int) or not str(p).startswith("function-"))
        kind = error["type"]
        if kind == "extra_forbidden":
            parent, key = loc[:-1], str(loc[-1])
            model = _MODEL_AT.get(tuple(parent))
            allowed = set(model.model_fields) if model else set()
            if parent == ():
                meant = _meant_key(key)
                hint = f" (did you mean {_SHOWN_AS.get(meant, repr(meant))}?)" if meant else ""
            else:
                hint = did_you_mean(key, allowed)
            if not hint and allowed:
                hint = " (known keys: " + ", ".join(sorted(allowed)) + ")"
            message = f"unknown key {key!r}{hint}"
        elif kind == "missing":
            message = "missing required key"
        elif kind == "list_type" and len(loc) == 2 and loc[0] == "zip":
            # `zip: [a, b]`: one group written as the list of groups
            loc = ("zip",)
            message = "a list of groups, each a list of vars that vary together: zip: [[a, b]]"
        elif kind == "string_pattern_mismatch" and loc == ("model",):
            message = (
                "a model id is names of letters, digits, '.', '_' and '-' joined by '/' (e.g. "
                f"{DEFAULT_MODEL}), got {str(error['input'])[:80]!r}"
            )
        else:
            message = _PLAIN_MESSAGES.get(kind) or str(error["msg"])
            for start in ("Input should", "String should", "List should", "Dictionary should"):
                if message.startswith(start):
                    message = "should" + message[len(start):]
            value = error.get("input")
            if kind in ("var_empty", "var_item", "var_file", "var_file_key", "filter_value", "recipe_name", "output_folder"):  # said already
                pass
            elif value is None:
                message += ", got nothing"
            elif isinstance(value, str | int | float | bool):
                shown = repr(value)
                if len(shown) > 60:
                    shown = shown[:57] + "..."
                message += f", got {shown}"
            elif kind == "too_short":
                pass
            elif isinstance(value, list):
                message += ", got a list"
            elif isinstance(value, dict):
                message += ", got a mapping"
        problem = _problem_at(doc.locations, doc.display, loc, message)
        if (problem.key_path, message) not in seen:
            seen.add((problem.key_path, message))
            problems.append(problem)
    return sorted(problems, key=lambda p: (p.file, p.line or 0, p.column or 0))


def _name_char(char: str) -> str:
    """What a character of a file stem becomes in a default recipe name: itself, '' or ' '.

    Letters, marks (the vowel signs of Devanagari, say) and digits of any script are the user's
    words and stay. Invisible format characters (zero-width space, BOM) vanish: a name should not
    hide a difference. Everything else (separators, dots, so no `..`, controls, spaces,
    punctuation) marks a break, which becomes one '-'.
    """
    if char in "-_":
        return char
    category = unicodedata.category(char)
    if category[0] in "LMN":
        return char
    return "" if category == "Cf" else " "


def default_name(stem: str) -> str:
    """The recipe name a file stem gives: `Été` -> `été`, `My Sweep` -> `my-sweep`, `🐱` ->
    `recipe-` and 8 hex digits of its SHA-256.

    It names the output folder `outputs/<name>/`, so it keeps only what is safe in a folder name:
    lower case, letters and digits of any script, '-' and '_'; runs of anything else -> '-'.
    NFC, because macOS hands out decomposed names: the same file must give the same folder.
    """
    text = unicodedata.normalize("NFC", stem.lower())
    kept = "".join(_name_char(char) for char in text)
    slug = re.sub(" +", "-", kept).strip("-")
    if slug or text.isascii():
        return slug or "recipe"
    # A stem of symbols with no letter or digit to keep (`🐱.yaml`, `🐶.yaml`): one folder each,
    # not one `recipe` that both would run into, each replacing the other's sheet and report.
    return "recipe-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


class Recipe:
    """A loaded, checked recipe. Build one with `load_recipe(path)`; expand it with `plan()`."""

    def __init__(self, spec: RecipeSpec, path: Path, source_text: str, resolved: dict[str, Any],
                 locations: dict[KeyPath, Location], display: str, narrowed: frozenset[str] = frozenset(),
                 *, unknown: frozenset[KeyPath] = frozenset(), problems: Iterable[Problem] = (),
                 sources: Iterable[SourceFile] = ()) -> None:
        self.spec = spec
        # The files it was read from, each once, as read: see changed_sources.
        once: dict[Path, SourceFile] = {}
        for source in sources:  # (a var file a base and its child both read: once)
            once.setdefault(source.path, source)
        self.sources = tuple(once.values())
        self.narrowed = narrowed  # axes a file extending a base set or removed
        # Key paths whose values a problem found in loading left unknown: a var whose file is
        # missing (in spec.vars, with no values), a value the model refused, or the key a
        # misspelt one meant (`resolutons` -> ("resolutions",)). The blueprint's checks skip
        # what needs them, so nothing is said that fixing the first problem would unsay.
        self.unknown = unknown
        self.loading_problems = tuple(problems)  # reported with the blueprint's own
        self.path = path
        # (as it was when loaded: a notebook's `%cd` afterwards moves a relative `path`, and the
        # recipe was then taken for text, not its file: no record of its file in the state, nor
        # the check that another recipe is not taking over its folder)
        self.resolved_path: Path = _real_or_absolute(path)
        self.display = display
        self.source_text = source_text
        self.resolved = resolved
        self._locations = locations
        self.name: str = spec.name or default_name(path.stem)
        self.model: str = spec.model
        self.run: RunSettings = spec.run
        self.sheet: SheetSettings = spec.sheet
        self.price_per_image: float | None = spec.price_per_image
        # Absolute, as input_schema below: relative to the working folder, a recipe sent to a
        # worker process or run after a notebook's `%cd` wrote its images into that folder's
        # `out/x`. From the recipe's real folder, as its var files, bases and schema are found:
        # tidied from the path it was given, `links/../out/x` of a recipe reached through a
        # linked folder was another folder than the system's, and every job was paid for again.
        # Messages name it as before (`output_display`, lexically tidied: "recipes/../outputs/x"
        # to "outputs/x") wherever that is the same folder (see default_output_dir).
        folder = _real_or_absolute(path.parent)  # (the recipe's real folder: see the two below)
        self.output: Path | None = None
        self.output_display: str | None = None
        self.output_as_text: Path | None = None  # (tidied as text, as earlier versions took it)
        if spec.output:
            self.output_display = os.path.normpath(path.parent / spec.output)
            self.output = Path(os.path.normpath(folder / spec.output))
            self.output_as_text = Path(os.path.abspath(self.output_display))
        # Absolute, as resolved_path: kept relative to the working folder, a recipe sent to a
        # worker process or planned after a notebook's `%cd` read the schema file of that folder
        # (another model's, or none). Messages name it as before: joined to the recipe's path.
        self.input_schema: Path | None = None
        self.input_schema_display: str | None = None
        if spec.input_schema:
            # (`_rebase_paths` made it relative to the real folder of the recipe)
            self.input_schema = folder / spec.input_schema
            self.input_schema_display = str(path.parent / spec.input_schema)
        canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        self.hash: str = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        self._blueprint: Blueprint | None = None

    def __repr__(self) -> str:
        return f"<Recipe {self.name!r} from {self.display}>"

    def __getstate__(self) -> dict[str, Any]:
        # Without the blueprint, which is built again when needed: its compiled templates cannot
        # be pickled, so a recipe or plan sent to a worker process (ProcessPoolExecutor) failed
        # with "Can't pickle local object '_result_checked.<locals>.checked'".
        return {**self.__dict__, "_blueprint": None}

    @property
    def from_file(self) -> bool:
        """Whether the recipe was read from its `path` (not text or a dict given as if it were
        the file there: `parse_recipe`)."""
        return any(source.path == self.resolved_path for source in self.sources)

    def changed_sources(self) -> list[SourceFile]:
        """The files this recipe was read from that no longer hold what was read: edited (or
        removed) since, so that the recipe on disk may plan other jobs than this one."""
        changed = []
        for source in self.sources:
            # (read as the runner checks a kept image: at most the size a var file may have, and
            # only a regular file, so that one replaced by a pipe cannot hang the end of a run)
            if file_sha256(source.path, max_bytes=MAX_VAR_FILE_BYTES) != source.sha256:
                changed.append(source)
        return changed

    def problem(self, path: KeyPath, message: str, *, text_line: int | None = None) -> Problem:
        """A Problem about the value at `path`, located where it was written. `text_line` is a
        line within a multi-line text value (a template): written as a `|` block, the problem
        points at that very line of the file."""
        block = self._locations.get((*path, LITERAL_BLOCK)) if text_line is not None else None
        if block is not None and text_line is not None:
            return Problem(block.file, message, format_key_path(path), block.line + text_line - 1, None)
        return _problem_at(self._locations, self.display, path, message)

    def location(self, path: KeyPath) -> Location | None:
        return self._locations.get(path)

    @property
    def blueprint(self) -> Blueprint:
        """The checked axes, templates and model schema (built once)."""
        if self._blueprint is None:
            from seedream_pipe.plan import prepare

            self._blueprint = prepare(self)
        return self._blueprint

    @property
    def axis_names(self) -> list[str]:
        """The axes a plan of this recipe has, in order (the sheet's rows/cols name these)."""
        return self.blueprint.axis_names

    def plan(self, *, max_jobs: int = DEFAULT_MAX_JOBS, allow_large: bool = False) -> Plan:
        """Expand into jobs. Over `max_jobs` jobs is an error unless `allow_large`."""
        from seedream_pipe.plan import build_plan

        return build_plan(self, max_jobs=max_jobs, allow_large=allow_large)


def load_recipe(path: str | os.PathLike[str], *, files: RecipeFiles | None = None) -> Recipe:
    """Read, resolve and check a recipe file. Raises RecipeError listing every problem found.

    `files`: the recipe files read so far, to read the bases that many recipes share once
    (validate's recipes).
    """
    if isinstance(path, str) and ("\n" in path or len(path) > 4096):
        # recipe text given where its file's path goes: not echoed back whole as a file name
        raise RecipeError(Problem("<text>", "load_recipe takes the path of a recipe file, not its text: parse_recipe(text) reads text"))
    path = Path(path)
    display = str(path)
    if not path.exists():
        if path.is_symlink() and real_path(path) is None:  # (`ls` shows it: not "no such file")
            raise RecipeError(Problem(display, "is a symbolic link that leads back to itself"))
        if path.is_symlink():
            target = printable(os.readlink(path))
            raise RecipeError(Problem(display, f"is a symbolic link to {target}, which is not there"))
        raise RecipeError(Problem(display, "no such recipe file"))
    if path.is_dir():
        raise RecipeError(Problem(display, "is a folder; give the path of a recipe .yaml file"))
    doc = _load_with_extends(path, display, path.parent, [_real_or_absolute(path)], files)
    return _checked(path, display, doc)


def parse_recipe(
    text: str | Mapping[str, Any], *, folder: str | os.PathLike[str] = ".", name: str = "recipe"
) -> Recipe:
    """A recipe from its YAML text, as `load_recipe` reads one from a file (for a notebook).

    It stands as if it were the file `<folder>/<name>.yaml`: `extends`, var files and
    `input_schema` are relative to `folder`, and `name` is its name unless the text sets one.
    Raises RecipeError listing every problem found, located in `<name>.yaml`.

    A dict (a recipe built in Python: `"vars": {"hour": list(range(6, 22, 4))}`) is written as YAML
    first and read as that text, so it is the same recipe as that file would be;
    `recipe.source_text` shows the YAML its problems are located in.
    """
    if isinstance(text, Mapping):
        text = _as_yaml(text)
    if not isinstance(text, str):
        raise RecipeError(Problem(
            "<text>", f"parse_recipe takes the recipe's YAML text or a dict, not {type(text).__name__}"
        ))  # fmt: skip
    if not isinstance(name, str) or not name:
        # (name=None made a recipe named "none", writing to outputs/none/)
        raise RecipeError(Problem("<text>", f"parse_recipe's name= is the recipe file's stem, text such as 'sweep', not {name!r}"))
    path = Path(folder) / f"{name}.yaml"
    display = f"{name}.yaml"
    doc = _load_with_extends(path, display, path.parent, [_real_or_absolute(path)], None, text=text)
    return _checked(path, display, doc)


def _plain_scalar(value: Any) -> Any:
    """A number, bool or text of another type as the Python int, float, bool or str it stands for;
    anything else as it is.

    A notebook's values often come from numpy or pandas (`np.int64(3)`, `np.float64(0.5)`,
    `np.str_("fox")`, `np.True_`): YAML writes only the exact built-in types, and refused these
    as types it "cannot hold", naming `int64` or even `bool`. What is no number, bool or text
    (a Decimal, a complex, an object) is left for YAML to refuse.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, numbers.Integral):  # (after the exact types: a bool is an Integral too)
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)  # (its text, whatever a subclass's __str__ makes of it)
    numpy = sys.modules.get("numpy")  # (loaded if the value is numpy's; never imported for this)
    if numpy is not None and isinstance(value, numpy.bool_):  # (numpy's bool is no Integral)
        return bool(value)
    return value


def _as_yaml(data: Mapping[str, Any]) -> str:
    """The YAML text of a recipe given as a dict (tuples as lists; numpy's numbers as Python's),
    or RecipeError saying which value YAML cannot hold."""

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {_plain_scalar(key): plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, (set, frozenset)):  # (YAML would write a !!set the loader refuses)
            raise RecipeError(Problem("<dict>", "the recipe dict holds a set, which has no order; use a list"))
        return _plain_scalar(value)

    try:
        return yaml.safe_dump(plain(data), sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
    except RecursionError:
        raise RecipeError(Problem("<dict>", "the recipe dict is nested too deeply to be a recipe")) from None
    except ValueError:  # (an int of more digits than Python writes as text: 4,300 by default)
        raise RecipeError(Problem(
            "<dict>", f"the recipe dict holds a number of over {sys.get_int_max_str_digits():,} digits; no model input needs one"
        )) from None  # fmt: skip
    except yaml.representer.RepresenterError as exc:  # (an object YAML has no form for)
        kind = type(exc.args[1]).__name__ if len(exc.args) > 1 else "unknown"
        raise RecipeError(Problem(
            "<dict>", f"the recipe dict holds a value of type {kind}, which YAML cannot hold; use str, int, float, bool, "
            "None, lists and dicts"
        )) from None  # fmt: skip


def _checked(path: Path, display: str, doc: Document) -> Recipe:
    """The Recipe of a document whose extends are resolved: validated, its templates checked.

    Every problem is reported at once: an unknown key or a value of the wrong kind is left out
    (the default stands in) and what it held marked unknown, and the templates, axes and inputs
    are checked all the same; the checks that would need an unknown value skip it (see
    `Recipe.unknown`).
    """
    resolved = dict(doc.data)
    resolved.pop("extends", None)
    problems = list(doc.problems)
    unknown = set(doc.unknown)
    spec = _validated(resolved, doc, problems, unknown)
    recipe = Recipe(spec, path, doc.text, json.loads(json.dumps(resolved)), doc.locations, display,
                    frozenset(doc.narrowed), unknown=frozenset(unknown), problems=problems,
                    sources=doc.sources)
    recipe.blueprint  # noqa: B018 - check templates, axes and inputs now, reporting all at once
    return recipe


# Top-level mappings whose entries are checked one by one: a refused entry leaves the others.
_MAPPINGS = ("vars", "params", "inputs", "templates", "run", "sheet")
# Entries whose names the planner still needs when their values are unknown (a template uses
# them): they stay, with no values.
_NAMED_AXES = ("vars", "params")
_MAX_PASSES = 5  # validations of what is left (one, and a second that finds nothing, in practice)


def _validated(data: dict[str, Any], doc: Document, problems: list[Problem], unknown: set[KeyPath]) -> RecipeSpec:
    """`data` checked against the recipe model. Each problem is added to `problems`, the value
    it refuses is left out and its key path added to `unknown`, and what is left is checked
    again, so that the spec returned holds every value that could be read."""
    data = _without(data, [p for p in unknown if p[:1] == ("vars",)])
    for _ in range(_MAX_PASSES):
        try:
            spec = RecipeSpec.model_validate(data)
        except ValidationError as exc:
            problems.extend(p for p in _pydantic_problems(exc, doc) if p not in problems)
            refused = {_refused_part(error) for error in exc.errors()}
            unknown |= refused
            for key in {str(p[0]) for p in refused if len(p) == 1}:
                unknown |= _meant_unknown(key, data)
            data = _without(data, refused)
            continue
        names: dict[str, dict[str, Any]] = {}
        for key in _NAMED_AXES:
            written = doc.data.get(key)
            if isinstance(written, dict) and (key,) not in unknown:
                kept = getattr(spec, key)
                names[key] = {n: kept.get(n, []) for n in written if n in kept or (key, n) in unknown}
        return spec.model_copy(update=names)
    raise RecipeError(problems)  # pragma: no cover - each pass leaves out what the last refused


def _meant_unknown(key: str, data: dict[str, Any]) -> set[KeyPath]:
    """For an unknown top-level key, the key it is a slip for when that is not written too:
    what it holds is then unknown rather than absent (`resolutons: [2K]` says nothing of the
    resolutions meant, so an exclude of 2K is not refused as matching none)."""
    if key in RecipeSpec.model_fields:
        return set()  # (a key of the recipe, refused for its value)
    meant = _meant_key(key)
    spellings = {"template", "templates"} if meant in ("template", "templates") else {meant} if meant else set()
    return set() if spellings & set(data) else {(spelling,) for spelling in spellings}


def _refused_part(error: ErrorDetails) -> KeyPath:
    """The key path a validation error refuses: an entry of a mapping in _MAPPINGS, else the
    whole top-level key (`missing` refuses the mapping that lacks the key)."""
    loc = tuple(p for p in error["loc"] if isinstance(p, int) or not str(p).startswith("function-"))
    if error["type"] == "missing":
        loc = loc[:-1]
    if len(loc) >= 2 and loc[0] in _MAPPINGS:
        return (loc[0], str(loc[1]))
    return loc[:1]


def _without(data: dict[str, Any], paths: Iterable[KeyPath]) -> dict[str, Any]:
    """A copy of `data` less the values at `paths` (top-level keys, or an entry of one)."""
    out = dict(data)
    for path in paths:
        if len(path) == 1:
            out.pop(str(path[0]), None)
        elif isinstance(out.get(str(path[0])), dict):
            out[str(path[0])] = {k: v for k, v in out[str(path[0])].items() if k != path[1]}
    return out


def iter_recipe_files(folder: Path) -> Iterator[Path]:
    """The recipe files in a folder (*.yaml, *.yml), sorted; not its subfolders. A link to
    nothing (or to itself) is one too: passed over, a recipe whose link broke was not said to
    be missing, and `validate recipes/` said all was well."""
    yield from sorted(
        p for p in folder.iterdir()
        if p.suffix in (".yaml", ".yml") and (p.is_file() or (p.is_symlink() and not p.exists()))
    )


def partial_bases_among(paths: Iterable[Path], files: RecipeFiles | None = None) -> dict[Path, list[Path]]:
    """Which of `paths` are partial bases (resolved path -> the files among them that extend it).

    A partial base is a file another of them `extends` that has no prompt template of its own
    (say, shared `run:` settings): not a recipe by itself, so it is checked as part of each
    recipe that extends it. A base with a template is a recipe too, and is checked as one. A
    file that does not parse names no base; loading it says why. `files`: the recipe files read
    so far (each path is read as `load_recipe` reads it, so that it need not be read again).
    """
    files = files or RecipeFiles()
    # (a symbolic link loop has no real path: it is no base, and its own check says why)
    found = [(file, real) for file in paths if (real := real_path(file)) is not None]
    known = {real for _, real in found}
    extended_by: dict[Path, list[Path]] = {}
    data_of: dict[Path, dict[str, Any]] = {}
    for file, real in found:
        if not file.is_file():
            # A pipe (`validate <(generate-recipe)`) is read once, by its own check: read here
            # first, it was empty there. Nor can it be a base: `extends` refuses a pipe.
            continue
        try:
            data = files.data(file)
        except RecipeError:
            continue
        data_of[real] = data
        parent = data.get("extends")
        if isinstance(parent, str) and parent:
            target = real_path(file.parent / parent)
            if target in known and target != real:
                extended_by.setdefault(target, []).append(file)
    steps: dict[Path, int | None] = {}
    return {
        base: children for base, children in extended_by.items()
        if base in data_of and not _has_template(base, data_of, files, steps)
    }


def bases_of(path: Path, files: RecipeFiles | None = None) -> set[Path]:
    """The files `path` extends, directly or through others (resolved paths), as far as they
    parse; a problem found in one of them while checking `path` is one `path` inherits.
    `files`: the recipe files read so far, whose bases are then looked up once for all."""
    files = files or RecipeFiles()
    found: set[Path] = set()
    base = files.base_of(path)
    while base is not None and base not in found:  # (a cycle ends at a file found before)
        found.add(base)
        base = files.base_of(base)
    return found


def _has_template(path: Path, data_of: dict[Path, dict[str, Any]], files: RecipeFiles,
                  steps: dict[Path, int | None]) -> bool:
    """Whether a file, or a base it extends within the files an `extends` chain may hold
    (MAX_EXTENDS_DEPTH), writes `template:` or `templates:`. `data_of`: the files given, read;
    `steps`: for each file followed so far, how many `extends` away its nearest template is (None:
    none is on its chain). Each file is followed once, for all the bases whose chains pass by it:
    followed for each base in turn, up to 100 files each, a chain of 400 bases is 35,000 steps."""
    walked: dict[Path, None] = {}  # (an ordered set: the files with no template of their own, in chain order)
    file: Path | None = path
    nearest: int | None = None  # (how far the nearest template is from the file the walk stops at)
    while file is not None and file not in walked:  # (a cycle: no template on it)
        if file in steps:
            nearest = steps[file]
            break
        data = data_of.get(file)
        if data is None and file.is_file():
            # A base not among the files given (`lib/root.yaml` under the folder validated): its
            # template makes the files extending it whole recipes all the same.
            with contextlib.suppress(RecipeError):  # (it names no base, nor a template)
                data = files.data(file)
        if data is not None and (data.get("template") is not None or data.get("templates") is not None):
            steps[file] = nearest = 0
            break
        walked[file] = None
        parent = data.get("extends") if data is not None else None
        file = real_path(file.parent / parent) if isinstance(parent, str) and parent else None
    for file in reversed(walked):
        nearest = None if nearest is None else nearest + 1
        steps[file] = nearest
    found = steps[path]
    return found is not None and found < MAX_EXTENDS_DEPTH
