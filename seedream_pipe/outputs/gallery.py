"""The gallery: one self-contained HTML file to browse a sweep in any browser, offline.

The sheet's grid (same rows, columns and nested headers as the contact sheet, without paging;
a single axis wrapped into a grid of labelled cells, as on the sheet), a filter per axis, and a
viewer that enlarges a job with its prompt, timings and, for a failed job, the reason; an image
file no longer on disk as downloaded is marked as the sheet marks it. Images are linked by
relative path (thumbs/ in the grid, images/ in the viewer), so the file is small and the
folder can be moved or zipped as a whole.

Every recipe value and API text is untrusted: the template is rendered by Jinja2 with
autoescaping, and the per-job data travels in a `<script type="application/json">` block whose
`<`, `>` and `&` are written as JSON escapes, so no value can close the block or open a tag;
the page's script only ever sets it with `textContent`.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup, escape

from seedream_pipe import __version__
from seedream_pipe.errors import BIDI_MARKS, visible_marks
from seedream_pipe.outputs._folder import (
    GALLERY_NAME,
    IMAGE_CHANGED,
    IMAGE_MISSING,
    OutputFolder,
    iso_utc,
    write_text,
)
from seedream_pipe.outputs.layout import SheetOptions, placeholder_kind, plan_sheet, resolve_options
from seedream_pipe.outputs.summary import format_summary, summarize_jobs
from seedream_pipe.outputs.thumbs import fit_size, locate_picture
from seedream_pipe.state import JobRecord

#: Above this many images the grid's thumbnails load lazily (as they scroll into view).
LAZY_FROM = 300
#: The grid's cell size in CSS pixels.
GALLERY_CELL = 200
STATUS_GROUPS = ("done", "failed", "cancelled", "not done")
_BADGES = {
    "failed": "FAILED",
    "cancelled": "CANCELLED",
    "not_done": "NOT DONE",
    "missing": "IMAGE MISSING",
    "no_job": "NO JOB",
}


def json_for_script(value: Any) -> Markup:
    """JSON that is safe inside a <script> element: no `</script>`, no `<!--`, no HTML at all."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    # bidi marks as the text "\u202e" (an escaped backslash in JSON): the viewer shows them, and
    # "\u202egnp.exe" does not read as "exe.png"
    text = BIDI_MARKS.sub(lambda match: f"\\\\u{ord(match.group()):04x}", text)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return Markup(text)


#: Punctuation that ends a word (Po: , . ; : ! ? 、 。; Pe: ) ] }; Pf: » ’ ”; Pd: - –).
_TRAILING = frozenset({"Po", "Pe", "Pf", "Pd"})
#: At most this many marks are kept with the character before them: a longer run may wrap.
_GLUED = 3


def label_html(label: object) -> Markup:
    """A grid label as HTML text, each punctuation mark kept on the line of the word it ends.

    A column or cell label breaks at its spaces and, in a word too long for its width, anywhere
    (overflow-wrap: anywhere): a word that filled the line to just before its comma put the comma
    at the start of the next line. (A row label breaks between words only.) So the character before a run of such marks and the run are
    one `nowrap` span: the word may still break, one character earlier.
    """
    text = visible_marks(str(label))
    pieces: list[str] = []
    done = i = 0
    while i < len(text):
        end = i + 1
        while (
            end < len(text) and end - i <= _GLUED and unicodedata.category(text[end]) in _TRAILING
        ):
            end += 1
        if end > i + 1 and not text[i].isspace():
            # the whole character before the marks: its combining marks and a ZWJ sequence too
            start = i
            while start > done and (
                unicodedata.category(text[start]).startswith("M")
                or "\u200d" in (text[start], text[start - 1])
            ):
                start -= 1
            pieces.append(escape(text[done:start]))
            pieces.append(Markup('<span class="nobr">{}</span>').format(text[start:end]))
            done = end
        i = end
    pieces.append(escape(text[done:]))
    return Markup("").join(pieces)


def _url(relative: str) -> str:
    """A relative file path as a URL: each segment percent-encoded, so '#' or '?' stay a name."""
    return "/".join(quote(part) for part in Path(relative).as_posix().split("/"))


def _status_group(job: JobRecord) -> str:
    if job.state == "downloaded":
        return "done"
    if job.state in ("failed", "cancelled"):
        return job.state
    return "not done"


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f} s"


@dataclass(slots=True)
class _JobView:
    job_id: str
    kind: str  # "image" or a placeholder kind
    title: str
    thumb: str | None
    thumb_w: int | None
    thumb_h: int | None
    badge: str
    reason: str
    band: str  # IMAGE MISSING / IMAGE CHANGED across the foot of a picture shown nonetheless


def _stale_notice(job: JobRecord, state: str) -> str:
    """What the viewer says of a done job's image file no longer on disk as downloaded."""
    if state == IMAGE_MISSING:
        return (
            f"IMAGE MISSING: {job.image_path} is no longer on disk; its thumbnail is shown "
            "(run the recipe again to fetch it)"
        )
    size = f" ({job.bytes:,} bytes)" if job.bytes is not None else ""
    return (
        f"IMAGE CHANGED: {job.image_path} is another size than it was downloaded at{size}, so it "
        "may not be the image the job made (run the recipe again to fetch it)"
    )


def _job_view(job: JobRecord, folder: OutputFolder, cell: int) -> tuple[_JobView, dict[str, Any]]:
    title = " · ".join(str(label) for label in job.axes.values()) or job.job_id
    thumb = image = None
    thumb_size: tuple[int, int] | None = None
    kind, reason, band, notice = "image", "", "", ""
    image_file = folder.image_files.get(job.job_id)
    if job.state == "downloaded":
        picture = locate_picture(job, folder.path)
        if picture.problem:
            kind, reason = "missing", picture.problem
        else:
            # A picture still to show (the thumbnail of a deleted image, or a changed file) is
            # shown, marked as the sheet marks it, and the viewer says why.
            if image_file in (IMAGE_MISSING, IMAGE_CHANGED):
                band = f"IMAGE {image_file.upper()}"
                notice = _stale_notice(job, image_file)
            if picture.thumb is not None:
                thumb = _url(picture.thumb.relative_to(folder.path).as_posix())
            if picture.image is not None:
                image = _url(picture.image.relative_to(folder.path).as_posix())
            thumb = thumb or image
            if job.width and job.height:
                thumb_size = fit_size((job.width, job.height), (cell, cell))
    else:
        kind, reason = placeholder_kind(job)
    view = _JobView(
        job_id=job.job_id,
        kind=kind,
        title=title,
        thumb=thumb,
        thumb_w=thumb_size[0] if thumb_size else None,
        thumb_h=thumb_size[1] if thumb_size else None,
        badge=_BADGES.get(kind, ""),
        reason=reason,
        band=band,
    )
    data = {
        "job_id": job.job_id,
        "index": job.job_index,
        "title": title,
        "axes": {axis: str(label) for axis, label in job.axes.items()},
        "prompt": job.prompt,
        "resolution": job.resolution,
        "status": job.state,
        "status_group": _status_group(job),
        "error": job.error,
        "badge": _BADGES.get(kind, ""),
        "reason": reason,
        "request_id": job.request_id,
        "band": band,
        "notice": notice,
        "image_path": job.image_path,
        "image_file": image_file,
        "image": image,
        "thumb": thumb,
        "width": job.width,
        "height": job.height,
        "attempts": job.attempts,
        "polls": job.polls,
        "timings": {
            name: value
            for name, value in (
                ("submitted", iso_utc(job.submitted_at)),
                ("started", iso_utc(job.started_at)),
                ("finished", iso_utc(job.finished_at)),
                ("queue", _seconds(job.queue_s)),
                ("generation", _seconds(job.generation_s)),
                ("latency", _seconds(job.latency_s)),
            )
            if value is not None
        },
    }
    return view, data


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: (resources.files("seedream_pipe.outputs") / name).read_text(
                encoding="utf-8"
            )
        ),
        autoescape=True,
        # every value shown with its bidi marks written out (labels go through label_html)
        finalize=lambda value: visible_marks(value) if type(value) is str else value,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["label"] = label_html
    return environment


def render_gallery(folder: OutputFolder, options: SheetOptions | None = None) -> str:
    """The gallery page as HTML text."""
    options = options or resolve_options(folder.sheet_settings)
    # One long page: no paging by cell count, but a page_by axis still makes sections. A single
    # axis wraps into a grid, each cell under its own label, as on the sheet.
    layout = plan_sheet(
        folder.jobs, folder.axis_names, replace(options, max_cells=10**9), wrap=True
    )
    views: dict[str, _JobView] = {}
    data: dict[str, dict[str, Any]] = {}
    for job in folder.jobs:
        views[job.job_id], data[job.job_id] = _job_view(job, folder, GALLERY_CELL)

    sections: list[dict[str, Any]] = []
    for page in layout.pages:
        if layout.wrap is not None:
            # Reading order; the grid's width in cells is a maximum (a narrow window shows fewer).
            wrapped = [
                {"label": label, "jobs": [views[job.job_id] for job in page.jobs_at(r, c)]}
                for (r, c), label in sorted(page.cell_labels.items())
            ]
            sections.append(
                {"label": page.page_label, "across": len(page.col_keys), "cells": wrapped}
            )
            continue
        col_levels = [
            {"axis": axis, "spans": [s for s in page.col_spans if s.level == level]}
            for level, axis in enumerate(layout.cols)
        ]
        rows = []
        for r in range(max(1, len(page.row_keys))):
            spans = [s for s in page.row_spans if s.start == r]
            cells = [
                {"jobs": [views[job.job_id] for job in page.jobs_at(r, c)]}
                for c in range(max(1, len(page.col_keys)))
            ]
            rows.append({"spans": spans, "cells": cells})
        sections.append(
            {"label": page.page_label, "col_levels": col_levels, "rows": rows, "cells": None}
        )

    labels: dict[str, dict[str, None]] = {axis: {} for axis in folder.axis_names}
    for job in sorted(folder.jobs, key=lambda j: j.job_index):
        for axis, label in job.axes.items():
            labels.setdefault(axis, {}).setdefault(str(label), None)
    filters = [
        {"name": axis, "labels": list(found)} for axis, found in labels.items() if len(found) > 1
    ]
    present = {_status_group(job) for job in folder.jobs}
    summary = summarize_jobs(folder.jobs, runs=folder.runs, price_per_image=folder.price_per_image)
    layout_parts = []
    if layout.rows:
        layout_parts.append("rows: " + " › ".join(layout.rows))
    if layout.cols:
        layout_parts.append("columns: " + " › ".join(layout.cols))
    if layout.wrap is not None:
        layout_parts.append(f"{layout.wrap}: left to right, then down")
    if layout.slots > 1 and layout.inline:
        layout_parts.append("side by side in a cell: " + ", ".join(layout.inline))

    template = _environment().get_template("gallery.html")
    return template.render(
        version=__version__,
        name=folder.name,
        summary=format_summary(summary, max_failures=0).splitlines()[0],
        layout_text=" · ".join(layout_parts),
        filters=filters,
        statuses=[s for s in STATUS_GROUPS if s in present],
        sections=sections,
        rows=layout.rows,
        row_levels=len(layout.rows),
        page_by=layout.page_by,
        cell=GALLERY_CELL,
        slots=layout.slots,
        lazy=len(folder.jobs) > LAZY_FROM,
        # the filters' labels exactly: a browser rewrites a checkbox's value (a CR becomes LF,
        # a NUL U+FFFD), so the boxes point into this list and are never read for their text
        data_json=json_for_script(
            {"name": folder.name, "jobs": data, "filters": {f["name"]: f["labels"] for f in filters}}
        ),
    )


def write_gallery(folder: OutputFolder, options: SheetOptions | None = None) -> Path:
    """Write `gallery.html` into the output folder; return its path."""
    return write_text(folder.path / GALLERY_NAME, render_gallery(folder, options))
