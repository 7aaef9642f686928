"""The report: one row per job, for a script or a spreadsheet to analyse (pandas writes it).

The first columns are fixed, in this order: job_id, index, one label column per axis (named by
the axis), one value column per axis (`<axis>_value`), prompt, resolution, status, request_id,
error, attempts, polls, submitted_at, started_at, finished_at (ISO 8601 UTC), queue_s,
generation_s, latency_s, image_url, image_path, width, height, bytes, sha256,
possible_duplicate. A few more follow (retries, thumb_path, model, image_file). width to sha256
describe the image as downloaded; image_file says whether its file is still on disk so
("present", "missing", "changed": one stat per job, no hashing). An axis whose name would
clash with a fixed column (`resolution`, above all) gets `<axis>_label` and `<axis>_value`: the
resolution axis's columns are `resolution_label` and `resolution_value` (both the canonical
value, "2560x1440 (16:9)", as a resolution's label is), while `resolution` is the request's.

report.csv is for spreadsheets too: a text cell one would run as a formula starts with `'`
there (see `spreadsheet_safe`); the other formats keep every value exactly.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pandas as pd

from seedream_pipe.errors import UsageError
from seedream_pipe.outputs._folder import (
    REPORT_FORMATS,
    REPORT_STEM,
    OutputFolder,
    iso_utc,
    write_atomically,
)
from seedream_pipe.state import JobRecord
from seedream_pipe.words import option

ReportFormat = Literal["csv", "json", "parquet"]

#: The fixed columns around the axis columns (which sit between HEAD and TAIL).
HEAD_COLUMNS: tuple[str, ...] = ("job_id", "index")
TAIL_COLUMNS: tuple[str, ...] = (
    "prompt",
    "resolution",
    "status",
    "request_id",
    "error",
    "attempts",
    "polls",
    "submitted_at",
    "started_at",
    "finished_at",
    "queue_s",
    "generation_s",
    "latency_s",
    "image_url",
    "image_path",
    "width",
    "height",
    "bytes",
    "sha256",
    "possible_duplicate",
)
EXTRA_COLUMNS: tuple[str, ...] = ("retries", "thumb_path", "model", "image_file")
TIME_COLUMNS: tuple[str, ...] = ("submitted_at", "started_at", "finished_at")
#: A text cell a spreadsheet would run as a formula (OWASP's "CSV injection" characters), unless
#: the whole text is a plain number, which a spreadsheet reads as the number it is.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
FORMULA_LIKE = re.compile(r"(?![+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z)[=+\-@\t\r\n]")
_RESERVED = frozenset(HEAD_COLUMNS + TAIL_COLUMNS + EXTRA_COLUMNS)


def axis_columns(axes: Sequence[str]) -> tuple[list[str], list[str]]:
    """(label columns, value columns) for these axes, renamed only where they would clash."""
    labels: list[str] = []
    values: list[str] = []
    for axis in axes:
        clash = axis in _RESERVED or axis.endswith(("_value", "_label"))
        labels.append(f"{axis}_label" if clash else axis)
        values.append(f"{axis}_value")
    return labels, values


def _value_text(value: Any) -> Any:
    # Axis values are usually text, but params may be numbers or JSON: keep scalars, encode the rest.
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def report_frame(
    jobs: Sequence[JobRecord],
    axes: Sequence[str] | None = None,
    *,
    image_files: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The report as a DataFrame (a notebook's entry point).

    `image_files` (an OutputFolder's `image_files`) fills the image_file column; without it the
    column is empty, since the jobs alone do not say where their folder is.
    """
    image_files = image_files or {}
    if axes is None:
        seen: dict[str, None] = {}
        for job in jobs:
            seen.update(dict.fromkeys(job.axes))
        axes = list(seen)
    label_cols, value_cols = axis_columns(axes)
    columns = [*HEAD_COLUMNS, *label_cols, *value_cols, *TAIL_COLUMNS, *EXTRA_COLUMNS]
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job_id": job.job_id, "index": job.job_index}
        for axis, label_col, value_col in zip(axes, label_cols, value_cols, strict=True):
            row[label_col] = job.axes.get(axis)
            row[value_col] = _value_text(job.axis_values.get(axis))
        row.update(
            prompt=job.prompt,
            resolution=job.resolution,
            status=job.state,
            request_id=job.request_id,
            error=job.error,
            attempts=job.attempts,
            polls=job.polls,
            submitted_at=iso_utc(job.submitted_at),
            started_at=iso_utc(job.started_at),
            finished_at=iso_utc(job.finished_at),
            queue_s=job.queue_s,
            generation_s=job.generation_s,
            latency_s=job.latency_s,
            image_url=job.image_url,
            image_path=job.image_path,
            width=job.width,
            height=job.height,
            bytes=job.bytes,
            sha256=job.sha256,
            possible_duplicate=job.possible_duplicate,
            retries=job.retries,
            thumb_path=job.thumb_path,
            model=job.model,
            image_file=image_files.get(job.job_id),
        )
        rows.append(row)
    frame = pd.DataFrame(rows, columns=columns)
    # Nullable integers: a job with no image has no width, which must not turn 1024 into 1024.0.
    for name in ("index", "attempts", "polls", "width", "height", "bytes", "retries"):
        frame[name] = frame[name].astype("Int64")
    for name in ("queue_s", "generation_s", "latency_s"):
        frame[name] = frame[name].astype("Float64")
    frame["possible_duplicate"] = frame["possible_duplicate"].astype("boolean")
    return frame


def write_report(folder: OutputFolder, *, fmt: str = "csv", dest: str | os.PathLike[str] | None = None) -> Path:
    """Write `report.<fmt>` into the output folder (or `dest`); return its path."""
    if fmt not in REPORT_FORMATS:
        raise UsageError(
            f"unknown report format {fmt!r}; choose one of {', '.join(REPORT_FORMATS)}"
        )
    frame = report_frame(folder.jobs, folder.axis_names, image_files=folder.image_files)
    dest = Path(dest) if dest is not None else folder.path / f"{REPORT_STEM}.{fmt}"

    def write(out: BinaryIO) -> None:
        if fmt == "parquet":
            _write_parquet(frame, out)
            return
        text = io.TextIOWrapper(out, encoding="utf-8", newline="")
        if fmt == "csv":
            spreadsheet_safe(frame).to_csv(text, index=False)
        else:
            frame.to_json(text, orient="records", force_ascii=False, indent=1)
        text.flush()
        text.detach()  # (the file stays open: write_atomically closes it)

    return write_atomically(dest, write)


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text cell a spreadsheet would run as a formula behind a `'`.

    report.csv is opened in spreadsheets, and its text comes from recipes and from the API: an
    error reading `=HYPERLINK("https://…?"&A1, "retry")` must show as text there, not become a
    link that sends the sheet's cells away. A leading `'` is what spreadsheets themselves use to
    mark text; report.json, report.parquet and `report_frame` keep every value exactly.
    """
    safe = frame.copy()
    for name in frame.columns:
        column = frame[name]
        if column.dtype != object and not pd.api.types.is_string_dtype(column.dtype):
            continue  # (text is `object` before pandas 3, `str` from it)
        try:
            # (a first-character test, vectorised, narrows 100,000 rows to the few the regex reads)
            risky = column.str[:1].isin(FORMULA_STARTS)
        except AttributeError:  # pandas' word for "no text in this column" (all booleans, say)
            continue
        risky[risky] = column[risky].map(lambda v: FORMULA_LIKE.match(v) is not None)
        if risky.any():
            safe[name] = column.mask(risky, "'" + column[risky].astype(str))
    return safe


def _write_parquet(frame: pd.DataFrame, out: BinaryIO) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        asked = option("--format parquet", "fmt='parquet'")
        raise UsageError(f"{asked} needs pyarrow: pip install 'seedream-pipe[parquet]'") from exc
    typed = frame.copy()
    # Parquet has a real timestamp type: use it rather than text.
    for name in TIME_COLUMNS:
        typed[name] = pd.to_datetime(typed[name], utc=True, format="ISO8601")
    typed.to_parquet(out, index=False)
