"""Model input schemas: which request bodies a RunComfy model accepts, and resolution aliases.

The Seedream 4.0 schema ships as package data (`schemas/<model id with "/" -> "__">.json`). A recipe
may point `input_schema:` at a JSON Schema file for another model. The planner checks every request
body against the schema, so that no request the API would reject leaves the planner; the simulator
checks bodies against the same schemas.

Resolution aliases are derived from the schema's `resolution` enum, so they work for any model
whose enum uses the `WIDTHxHEIGHT (W:H)` form: for `"2560x1440 (16:9)"` the aliases are
`"2560x1440"` and `"16:9"`; every value also matches case-insensitively and ignoring spaces
(`"1k"` -> `"1K"`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

from seedream_pipe.paths import NotARegularFile, read_regular

DEFAULT_MODEL = "bytedance/seedream-4-0/text-to-image"

# Keys of a property schema that only describe it; anything else constrains the value.
_DESCRIPTIVE_KEYS = frozenset(
    {"type", "title", "description", "default", "examples", "$comment", "deprecated"}
)
_SIZE_RATIO = re.compile(r"^\s*(\d+)\s*[xX×*]\s*(\d+)\s*\(\s*(\d+)\s*:\s*(\d+)\s*\)\s*$")


class SchemaError(ValueError):
    """A model input schema that cannot be found, read or used (the caller locates it)."""


def schema_file_name(model_id: str) -> str:
    """The package-data file name of a model's input schema."""
    return model_id.replace("/", "__") + ".json"


def builtin_models() -> list[str]:
    """Model ids whose input schema ships with seedream-pipe."""
    folder = resources.files("seedream_pipe") / "schemas"
    return sorted(
        entry.name[: -len(".json")].replace("__", "/")
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    )


@lru_cache(maxsize=16)
def builtin_schema(model_id: str) -> dict[str, Any] | None:
    """The shipped input schema of `model_id`, or None when none ships."""
    entry = resources.files("seedream_pipe") / "schemas" / schema_file_name(model_id)
    if not entry.is_file():
        return None
    data: dict[str, Any] = json.loads(entry.read_text(encoding="utf-8"))
    return data


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).lower().replace("×", "x").replace("*", "x")


@dataclass
class ModelSchema:
    """One model's input schema, compiled once, with what the planner needs to know about it."""

    model: str
    schema: dict[str, Any]
    source: str  # "built-in" or the schema file's path, for messages
    validator: Validator = field(init=False, repr=False)
    _aliases: dict[str, str] = field(init=False, repr=False)
    _shared_ratios: dict[str, list[str]] = field(init=False, repr=False)  # ratio -> its values

    def __post_init__(self) -> None:
        if not isinstance(self.schema, dict):
            raise SchemaError(f"input schema {self.source} is not a JSON object")
        cls = jsonschema.validators.validator_for(self.schema)
        try:
            cls.check_schema(self.schema)
        except jsonschema.SchemaError as exc:
            raise SchemaError(f"input schema {self.source} is not a valid JSON Schema: {exc.message}") from exc
        self.validator = cls(self.schema)
        self._aliases = {}
        for value in self.resolution_values or []:
            self._aliases.setdefault(_squash(value), value)
        ratios: dict[str, list[str]] = {}
        for value in self.resolution_values or []:
            match = _SIZE_RATIO.match(value)
            if match:
                width, height, rw, rh = match.groups()
                self._aliases.setdefault(f"{width}x{height}", value)
                ratios.setdefault(f"{rw}:{rh}", []).append(value)
        # A ratio two enum values share would be ambiguous, so it is no alias at all.
        for ratio, values in ratios.items():
            if len(values) == 1:
                self._aliases.setdefault(ratio, values[0])
        self._shared_ratios = {ratio: values for ratio, values in ratios.items() if len(values) > 1}

    @property
    def properties(self) -> Mapping[str, Any]:
        props = self.schema.get("properties")
        return props if isinstance(props, dict) else {}

    @property
    def accepts_resolution(self) -> bool:
        return "resolution" in self.properties

    @property
    def resolution_values(self) -> list[str] | None:
        """The resolution enum, or None when the schema has no enum of strings for it."""
        prop = self.properties.get("resolution")
        if not isinstance(prop, dict) or not isinstance(prop.get("enum"), list):
            return None
        values = prop["enum"]
        return [v for v in values if isinstance(v, str)] or None

    @property
    def default_resolution(self) -> Any:
        prop = self.properties.get("resolution")
        return prop.get("default") if isinstance(prop, dict) else None

    @property
    def resolution_aliases(self) -> dict[str, str]:
        """Alias -> canonical value (the shorthands only, not the canonical values themselves)."""
        canonical = {_squash(value) for value in self.resolution_values or []}
        return {alias: value for alias, value in self._aliases.items() if alias not in canonical}

    def canonical_resolution(self, written: str) -> Any:
        """The enum value a written resolution means; ValueError listing the choices if none.

        Without an enum the value passes through (converted to a number when the schema wants
        one), and the schema judges the whole body later.
        """
        values = self.resolution_values
        if values is None:
            prop = self.properties.get("resolution")
            kind = prop.get("type") if isinstance(prop, dict) else None
            if kind in ("integer", "number"):
                try:
                    return int(written) if kind == "integer" else float(written)
                except ValueError:
                    pass
            return written
        if written in values:
            return written
        found = self._aliases.get(_squash(written))
        if found is not None:
            return found
        shared = self._shared_ratios.get(_squash(written))
        if shared is not None:
            # (not "unknown": a schema with two sizes of one ratio cannot take the ratio alone)
            raise ValueError(f"resolution {written!r} is the ratio of several of {self.model}'s sizes: "
                             f"{', '.join(shared)}; write the one you mean")
        ratios = sorted((a for a in self.resolution_aliases if ":" in a), key=_ratio_order)
        shorthand = ""
        if self.resolution_aliases:
            shorthand = " (or " + (f"a shorthand: {', '.join(ratios)}, or " if ratios else "")
            shorthand += "WIDTHxHEIGHT alone)"
        raise ValueError(
            f"unknown resolution {written!r}; {self.model} accepts: "
            + ", ".join(values)
            + shorthand
        )

    def prompt_needs_full_check(self) -> bool:
        """True when the schema constrains the prompt beyond "a string"."""
        prop = self.properties.get("prompt")
        if not isinstance(prop, dict):
            return True
        return prop.get("type", "string") != "string" or bool(set(prop) - _DESCRIPTIVE_KEYS)

    def errors(self, body: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(input name or "", message) for every way `body` breaks the schema."""
        found: list[tuple[str, str]] = []
        for error in self.validator.iter_errors(dict(body)):
            where = str(error.path[0]) if error.path else ""
            if error.validator == "additionalProperties" and not error.path:
                extra = sorted(set(body) - set(self.properties))
                known = sorted(self.properties)
                for name in extra:
                    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                    hint = f" (did you mean {close[0]!r}?)" if close else f" (it accepts: {', '.join(known)})"
                    found.append((name, f"{self.model} does not accept the input {name!r}{hint}"))
                continue
            if error.validator == "required" and not error.path:
                required = error.validator_value if isinstance(error.validator_value, list) else []
                missing = [n for n in required if n not in body]
                for name in missing or [error.message]:
                    found.append(("", f"{self.model} requires the input {name!r}"))
                continue
            found.append((where, error.message))
        return found


def _ratio_order(ratio: str) -> tuple[float, str]:
    width, _, height = ratio.partition(":")
    try:
        return (int(width) / int(height), ratio)
    except (ValueError, ZeroDivisionError):
        return (0.0, ratio)


#: The largest input schema file read (the shipped ones are a few kB).
MAX_SCHEMA_BYTES = 4 * 1024 * 1024


def load_model_schema(model_id: str, input_schema: str | os.PathLike[str] | None = None, *,
                      display: str | None = None) -> ModelSchema:
    """The schema for `model_id`: from `input_schema` when given, else the shipped one.

    Raises SchemaError with a message naming what is missing or broken; it names the file
    `display` when given (a recipe reads its schema by its absolute path, but says the path
    written), else `input_schema`.
    """
    if input_schema is not None:
        shown = display if display is not None else os.fspath(input_schema)
        try:
            raw = read_regular(input_schema, MAX_SCHEMA_BYTES)
        except NotARegularFile:
            raise SchemaError(f"input schema {shown} is not a regular file (a pipe or a device)") from None
        except OSError as exc:
            raise SchemaError(f"cannot read input schema {shown}: {exc.strerror}") from exc
        if len(raw) > MAX_SCHEMA_BYTES:
            raise SchemaError(f"input schema {shown} is over the limit of {MAX_SCHEMA_BYTES:,} bytes")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise SchemaError(f"input schema {shown} is not UTF-8 text") from exc
        except json.JSONDecodeError as exc:
            raise SchemaError(
                f"input schema {shown} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
            ) from exc
        return ModelSchema(model_id, data, shown)
    data = builtin_schema(model_id)
    if data is None:
        known = ", ".join(builtin_models())
        raise SchemaError(
            f"no input schema ships for model {model_id!r} (built in: {known}); "
            "point `input_schema:` at the model's JSON Schema file"
        )
    return ModelSchema(model_id, data, "built-in")
