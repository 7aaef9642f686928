"""The outputs of a sweep, written into its output folder from the state alone (no network).

- `contact_sheet.png` (or `contact_sheet-01.png`, ... when it pages): the labelled grid (`sheet`)
- `report.csv`: one row per job (`report`)
- `manifest.json`: what produced each file, enough to re-run the experiment (`manifest`)
- `gallery.html`: a self-contained page with a filter per axis (`gallery`)

The runner calls `write_outputs(out_dir)` when a run ends and prints `format_summary(...)`; the
`sheet`, `report` and `gallery` commands call the same functions; so can a notebook::

    from seedream_pipe.outputs import write_outputs, summarize, format_summary
    write_outputs(Path("outputs/demo"))
    print(format_summary(summarize(Path("outputs/demo"))))
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from seedream_pipe._lazy import lazy_exports

if TYPE_CHECKING:
    from seedream_pipe.outputs._folder import OutputFolder, open_output
    from seedream_pipe.outputs.gallery import write_gallery
    from seedream_pipe.outputs.manifest import build_manifest, refresh_manifest, write_manifest
    from seedream_pipe.outputs.report import report_frame, write_report
    from seedream_pipe.outputs.sheet import SheetResult, make_sheet
    from seedream_pipe.outputs.summary import Summary, format_summary, summarize, summarize_jobs
    from seedream_pipe.recipe import Recipe

log = logging.getLogger(__name__)

# Names are imported on first use: the sheet alone must not pay for pandas (about 50 MB and
# half a second), which only the report needs.
_EXPORTS: dict[str, str] = {
    "OutputFolder": "seedream_pipe.outputs._folder",
    "SheetResult": "seedream_pipe.outputs.sheet",
    "Summary": "seedream_pipe.outputs.summary",
    "build_manifest": "seedream_pipe.outputs.manifest",
    "format_summary": "seedream_pipe.outputs.summary",
    "make_sheet": "seedream_pipe.outputs.sheet",
    "open_output": "seedream_pipe.outputs._folder",
    "refresh_manifest": "seedream_pipe.outputs.manifest",
    "report_frame": "seedream_pipe.outputs.report",
    "summarize": "seedream_pipe.outputs.summary",
    "summarize_jobs": "seedream_pipe.outputs.summary",
    "write_gallery": "seedream_pipe.outputs.gallery",
    "write_manifest": "seedream_pipe.outputs.manifest",
    "write_report": "seedream_pipe.outputs.report",
}

__all__ = [
    "OutputFolder",
    "SheetResult",
    "Summary",
    "build_manifest",
    "format_summary",
    "make_sheet",
    "open_output",
    "refresh_manifest",
    "report_frame",
    "summarize",
    "summarize_jobs",
    "write_gallery",
    "write_manifest",
    "write_outputs",
    "write_report",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, __all__)


def write_outputs(out_dir: str | os.PathLike[str], *, recipe: Recipe | None = None) -> list[Path]:
    """Write the sheet (its pages), report.csv (and report.json / .parquet when the folder has
    them), gallery.html and manifest.json; return their paths.

    The manifest comes last so that it can list the other files, and so that, as a make target
    (the README's), it is written only once every other output is. Raises NothingToShow for a
    folder with no jobs and OutputError when a file cannot be written; a missing or corrupt
    image only gives a placeholder (and a logged warning).
    """
    from seedream_pipe.errors import SeedreamPipeError
    from seedream_pipe.outputs._folder import (
        REPORT_FORMATS,
        REPORT_STEM,
        edited_recipe_warning,
        image_files_warning,
        open_output,
    )
    from seedream_pipe.outputs.gallery import write_gallery
    from seedream_pipe.outputs.manifest import write_manifest
    from seedream_pipe.outputs.report import write_report
    from seedream_pipe.outputs.sheet import make_sheet

    folder = open_output(Path(out_dir), recipe=recipe)
    edited = edited_recipe_warning(folder)
    if edited:
        log.warning("%s", edited)
    gone = image_files_warning(folder)
    if gone:
        log.warning("%s (report.csv's image_file column names them)", gone)
    written: list[Path] = [write_report(folder)]
    # A report in another format (`report --format json` once) is kept as fresh as report.csv:
    # left as it was, it would tell a script of fewer jobs than the folder holds.
    for fmt in REPORT_FORMATS[1:]:
        if (folder.path / f"{REPORT_STEM}.{fmt}").exists():
            try:
                written.append(write_report(folder, fmt=fmt))
            except SeedreamPipeError as exc:  # (parquet with pyarrow gone since)
                log.warning("%s.%s left as it was: %s", REPORT_STEM, fmt, exc)
    sheet = make_sheet(folder)
    for warning in sheet.warnings:
        log.warning("sheet: %s", warning)
    written += sheet.paths
    written.append(write_gallery(folder))
    written.append(write_manifest(folder, outputs=written))
    return written
