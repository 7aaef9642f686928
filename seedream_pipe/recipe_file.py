"""Reading a recipe or var file: its bytes, safely (at most a limit; a pipe or a device refused
for a var file), decoded from UTF-8, and the recipe's YAML with the location of every key path.
Hostile input is held to limits (size, nesting depth, values after aliases); scalars under text
keys keep the text as written (`16:9` stays "16:9", `on` stays "on").
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from seedream_pipe.errors import Problem, RecipeError
from seedream_pipe.paths import NotARegularFile, read_regular

# Limits that keep a hostile or mistaken file from hanging the planner.
MAX_RECIPE_BYTES = 2 * 1024 * 1024
MAX_YAML_NODES = 100_000  # values after alias expansion
MAX_YAML_DEPTH = 50

# Top-level keys whose scalars keep the text as written (see the module docstring).
_TEXT_KEYS = frozenset({"vars", "resolutions", "exclude", "include", "zip"})
_SAFE_SCALAR_TAGS = {
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:str",
}
_AS_TEXT_TAGS = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"}
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"  # `~`, `null` or nothing at all; a quoted "null" is text

KeyPath = tuple[str | int, ...]
LITERAL_BLOCK = "|"  # a pseudo key: where the content of a `|` block scalar starts


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int
    column: int


def format_key_path(path: KeyPath) -> str:
    """("vars", "mood", 1) -> "vars.mood[1]"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _Refused(Exception):
    def __init__(self, message: str, path: KeyPath, node: yaml.Node | None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.node = node


class SourceFile(NamedTuple):
    """A file a recipe was read from (the recipe, a base it extends, a var file), as it was read."""

    display: str  # as messages name it: the path as written, joined to the recipe's
    path: Path
    sha256: str  # of the bytes read


def source_file(display: str, path: Path, raw: bytes) -> SourceFile:
    # (resolved: a notebook that changes its folder still finds it)
    return SourceFile(display, path.resolve(), hashlib.sha256(raw).hexdigest())


@dataclass
class Document:
    """One parsed file: its data and the location of every key path."""

    display: str
    path: Path
    text: str
    data: Any
    locations: dict[KeyPath, Location] = field(default_factory=dict)
    # Axes (var and param names, "resolution") that the files below the one that wrote the
    # `exclude` in force set or removed: an entry of it may then match less, or nothing
    # (plan.py's _build_filters). A file that writes its own `exclude` starts it afresh.
    narrowed: set[str] = field(default_factory=set)
    # Problems that leave the rest checkable (a var file not found), reported with the rest, and
    # the key paths whose values they left unknown (see `Recipe.unknown`).
    problems: list[Problem] = field(default_factory=list)
    unknown: set[KeyPath] = field(default_factory=set)
    # Every file read for it: this one (unless given as text), its var files, its bases.
    sources: list[SourceFile] = field(default_factory=list)


class _Converter:
    """Composed YAML nodes -> Python values, recording where each key path was written."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.locations: dict[KeyPath, Location] = {}
        self.count = 0
        self.active: set[int] = set()
        self.constructor = yaml.constructor.SafeConstructor()

    def mark(self, path: KeyPath, node: yaml.Node) -> None:
        mark = node.start_mark
        self.locations.setdefault(path, Location(self.display, mark.line + 1, mark.column + 1))

    def convert(self, node: yaml.Node, path: KeyPath) -> Any:
        self.count += 1
        if self.count > MAX_YAML_NODES:
            raise _Refused(
                f"the YAML expands to more than {MAX_YAML_NODES:,} values through aliases "
                "(an alias bomb?); write the values out or use fewer aliases",
                path[:1],
                None,
            )
        if len(path) > MAX_YAML_DEPTH:
            raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep", path[:3], node)
        if id(node) in self.active:
            raise _Refused("an alias refers to a value that contains it", path, node)
        if isinstance(node, yaml.ScalarNode):
            if node.style == "|":
                # A literal block keeps its lines, so a template's line N is the file's line
                # (first content line + N - 1); remembered under a key no recipe can write.
                self.locations.setdefault(
                    (*path, LITERAL_BLOCK), Location(self.display, node.start_mark.line + 2, 1)
                )
            return self.scalar(node, path)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != "tag:yaml.org,2002:seq":
                    raise _Refused(f"unsupported YAML tag {node.tag}", path, node)
                out = []
                for i, item in enumerate(node.value):
                    self.mark((*path, i), item)
                    out.append(self.convert(item, (*path, i)))
                return out
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
            raise _Refused("unsupported YAML node", path, node)  # pragma: no cover
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        if path and path[0] in _TEXT_KEYS:
            if node.tag == _NULL_TAG and (len(path) == 1 or (path[0] == "vars" and len(path) == 2)):
                return None  # `exclude: ~`, `vars: {light: ~}`: remove what a base recipe set
            if path[0] == "vars" and node.value == "" and not node.style:
                # A `-` (or a `- label:`) with nothing after it: an empty prompt part sent and
                # paid for, most likely a value not written yet. An empty value is written "".
                _refuse_empty_var_value(path, node)
            return node.value
        if node.tag in _AS_TEXT_TAGS:
            return node.value
        if node.tag not in _SAFE_SCALAR_TAGS:
            raise _Refused(f"unsupported YAML tag {node.tag}", path, node)
        try:
            value = self.constructor.construct_object(node, deep=True)
            if type(value) is int and value.bit_length() > 64:
                str(value)  # (a hex or binary one is read whole, but has no decimal text either)
        except ValueError:
            # An integer of more digits than Python converts to or from text (4,300 by default):
            # the recipe's hash and every request body are JSON text, so it could not be used.
            raise _Refused(f"a number of over {sys.get_int_max_str_digits():,} digits; no model input "
                           "needs one (quote it if it is text)", path, node) from None
        return value

    def mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        if node.tag != "tag:yaml.org,2002:map":
            raise _Refused(f"unsupported YAML tag {node.tag}", path, node)
        out: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                # `<<: *base` merges an anchored mapping; keys written here win.
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    value = self.convert(source, path)
                    if not isinstance(value, dict):
                        raise _Refused("`<<` merges only mappings", path, value_node)
                    for k, v in value.items():
                        merged.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused("a key must be plain text, not a list or mapping", path, key_node)
            key = key_node.value
            if key in out:
                raise _Refused(
                    f"duplicate key {key!r} (first written on line {first_line[key]})",
                    (*path, key),
                    key_node,
                )
            first_line[key] = key_node.start_mark.line + 1
            self.mark((*path, key), key_node)
            out[key] = self.convert(value_node, (*path, key))
        for k, v in merged.items():
            out.setdefault(k, v)
        return out


def _refuse_empty_var_value(path: KeyPath, node: yaml.ScalarNode) -> None:
    """Refuse a var's value written as nothing (an empty scalar, not quoted), saying how to
    write what was most likely meant; other empty scalars under `vars` are left to the checks."""
    if len(path) == 3 and isinstance(path[2], int):
        raise _Refused('an empty list item (a "-" with nothing after it); write "" for an '
                       "empty value, or remove the item", path, node)
    if len(path) == 4 and isinstance(path[2], int):  # (`- mist:`: a label, and no value)
        label = path[3]
        raise _Refused(f"the label {label!r} has no value after it; write the value after the colon, "
                       f'`{label}: ""` for an empty one, or `- {label}` for a value that is its own label',
                       path, node)
    if path[2:] == ("file",):
        raise _Refused("`file:` names no file; give the path of a text file of values, one per line", path, node)


def decode_text(raw: bytes, display: str, what: str) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = raw[exc.start : exc.start + 1].hex()
        encoding = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        if raw[:4] == b"\xff\xfe\x00\x00":  # (UTF-32's mark begins with UTF-16's)
            encoding = " (it looks like UTF-32)"
        raise RecipeError(
            Problem(
                display,
                f"{what} is not UTF-8 text{encoding}: byte 0x{bad} cannot be decoded; "
                "save the file as UTF-8",
                "",
                line,
                column,
            )
        ) from None


def read_limited(path: Path, display: str, limit: int, what: str, problem_at: Problem, *,
                regular_only: bool = False) -> bytes:
    """At most `limit` bytes of a file a recipe reads, else a located problem. `regular_only`:
    a pipe or a device is refused, not read (a var file: a named pipe shipped in a recipe's
    folder would wait for a writer for good); the recipe itself may be one (`plan <(...)`)."""
    try:
        # Read at most limit + 1 bytes: a device (/dev/zero) or a pipe (`plan <(...)`) has no
        # size to check first, and reading it whole would never end.
        if regular_only:
            data = read_regular(path, limit)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        if len(data) > limit:
            size = path.stat().st_size
            amount = f"{size:,} bytes, over" if size > limit else "over"  # a pipe has no size
            raise RecipeError(
                Problem(
                    problem_at.file,
                    f"{what} {display} is {amount} the limit of {limit:,} bytes",
                    problem_at.key_path,
                    problem_at.line,
                    problem_at.column,
                )
            )
        return data
    except FileNotFoundError:
        raise RecipeError(
            Problem(
                problem_at.file,
                f"{what} not found: {display}",
                problem_at.key_path,
                problem_at.line,
                problem_at.column,
            )
        ) from None
    except NotARegularFile:
        raise RecipeError(
            Problem(
                problem_at.file,
                f"{what} {display} is not a regular file (a pipe or a device)",
                problem_at.key_path,
                problem_at.line,
                problem_at.column,
            )
        ) from None
    except IsADirectoryError:
        raise RecipeError(
            Problem(
                problem_at.file,
                f"{what} {display} is a folder, not a file",
                problem_at.key_path,
                problem_at.line,
                problem_at.column,
            )
        ) from None
    except OSError as exc:
        raise RecipeError(
            Problem(
                problem_at.file,
                f"cannot read {what} {display}: {exc.strerror}",
                problem_at.key_path,
                problem_at.line,
                problem_at.column,
            )
        ) from None


def _check_depth(text: str, display: str, loader: Any) -> None:
    """Refuse deep nesting before composing: the composer recurses once per level (libyaml's
    in C), so `[[[[...` a hundred thousand deep would crash the interpreter. The event stream
    is read iteratively."""
    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                mark = event.start_mark
                raise RecipeError(
                    Problem(display, f"nested more than {MAX_YAML_DEPTH} levels deep", "",
                            mark.line + 1 if mark else None, mark.column + 1 if mark else None)
                )
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            depth -= 1


#: `key: {{ x }}` or `- {% if ... %}`: a template written without quotes, which YAML reads as
#: its own `{...}` mapping syntax. The commonest slip in a first recipe.
_UNQUOTED_TEMPLATE = re.compile(r"(?:^\s*-|:)\s+\{[{%]")


def _yaml_hint(text: str, *marks: yaml.Mark | None) -> str:
    """What to do about a YAML error on these lines, when the slip is a common one; else ""."""
    lines = text.splitlines()
    for mark in marks:
        if mark is None or mark.line >= len(lines):
            continue
        line = lines[mark.line]
        if _UNQUOTED_TEMPLATE.search(line):
            return (
                ". A value starting with {{ or {% must be quoted, or YAML reads it as a mapping, e.g. "
                'template: "{{ subject }} at dawn"'
            )
        if "\t" in line[: len(line) - len(line.lstrip())]:
            return ". YAML indents with spaces, not tabs"
    return ""


def parse_yaml(path: Path, display: str, problem_at: Problem | None = None, *, text: str | None = None) -> Document:
    """Read one YAML file (or `text`, said to be that file) into data plus key-path
    locations; RecipeError if it cannot be."""
    sources = []
    if text is None:
        at = problem_at or Problem(display, "")
        raw = read_limited(path, display, MAX_RECIPE_BYTES, "recipe", at)
        text = decode_text(raw, display, "the recipe")
        sources.append(source_file(display, path, raw))
    elif len(text.encode("utf-8")) > MAX_RECIPE_BYTES:
        raise RecipeError(Problem(display, f"the recipe is over the limit of {MAX_RECIPE_BYTES:,} bytes"))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        _check_depth(text, display, loader)
        root = yaml.compose(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or "malformed YAML"
        if "maximum nesting depth" in message:
            # (PyYAML 6.0.4's own limit, met while it scans ahead of the depth check above:
            # the same refusal in the same words, at the place PyYAML stopped)
            where = (mark.line + 1, mark.column + 1) if mark else (None, None)
            raise RecipeError(Problem(display, f"nested more than {MAX_YAML_DEPTH} levels deep", "", *where)) from None
        if exc.context:
            message = f"{message} ({exc.context})"
        message += _yaml_hint(text, exc.problem_mark, exc.context_mark)
        raise RecipeError(
            Problem(
                display,
                f"malformed YAML: {message}",
                "",
                mark.line + 1 if mark else None,
                mark.column + 1 if mark else None,
            )
        ) from None
    except yaml.reader.ReaderError as exc:
        bad_line = text.count("\n", 0, exc.position) + 1
        bad_column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise RecipeError(
            Problem(display, f"malformed YAML: character #x{exc.character:04x} is not allowed "
                             "(control characters cannot appear in YAML)", "", bad_line, bad_column)
        ) from None
    except yaml.YAMLError as exc:
        raise RecipeError(Problem(display, f"malformed YAML: {exc}")) from None
    except RecursionError:
        raise RecipeError(Problem(display, "the YAML is nested too deeply")) from None
    doc = Document(display, path, text, None, sources=sources)
    if root is None:
        raise RecipeError(
            Problem(display, "the recipe is empty; it needs at least a `template:` (`template: \"a fox\"` alone plans one job)")
        )
    converter = _Converter(display)
    try:
        doc.data = converter.convert(root, ())
    except _Refused as exc:
        loc = converter.locations.get(exc.path)
        line = column = None
        if exc.node is not None:
            line, column = exc.node.start_mark.line + 1, exc.node.start_mark.column + 1
        elif loc is not None:
            line, column = loc.line, loc.column
        hint = _yaml_hint(text, exc.node.start_mark) if exc.node is not None else ""
        raise RecipeError(
            Problem(display, exc.message + hint, format_key_path(exc.path), line, column)
        ) from None
    doc.locations = converter.locations
    if not isinstance(doc.data, dict):
        # (a value is named by its type only: `extends:` can point at any file, whose text
        # should not be printed back, and a whole document would not fit a line anyway)
        kind = "a list" if isinstance(doc.data, list) else "a single value"
        raise RecipeError(
            Problem(
                display,
                f"a recipe must be a mapping of keys (template:, vars:, ...), not {kind}",
                "",
                root.start_mark.line + 1,
                root.start_mark.column + 1,
            )
        )
    return doc
