"""The contact sheet: a labelled grid of a sweep's images, like an X/Y plot, drawn with Pillow.

`layout.py` decides where everything goes (pure); this module draws it from the thumbnails
(`thumbs.py`), with a placeholder saying which and why for every job that has no picture to
show, and writes the pages (`contact_sheet.png`, or `contact_sheet-01.png`, ... when it pages).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageDraw

from seedream_pipe.errors import UsageError, printable
from seedream_pipe.images import THUMB_SIZE
from seedream_pipe.outputs._folder import (
    IMAGE_PRESENT,
    SHEET_STEM,
    OutputFolder,
    write_atomically,
)
from seedream_pipe.outputs.fonts import font_for, spelled_out, undrawn
from seedream_pipe.outputs.layout import (
    MAX_PAGE_PIXELS,
    Box,
    Metrics,
    PageGeometry,
    SheetLayout,
    SheetOptions,
    SheetPage,
    TextBlock,
    cells_within_budget,
    page_geometry,
    placeholder_kind,
    plan_sheet,
    resolve_options,
    text_block,
)
from seedream_pipe.outputs.thumbs import DECODE_ERRORS as _DECODE_ERRORS
from seedream_pipe.outputs.thumbs import (
    MadeThumb,
    Picture,
    load_fitted,
    locate_picture,
    make_thumbnail,
    make_thumbnails,
)
from seedream_pipe.state import JobRecord
from seedream_pipe.words import counted, option, some_of

# Colours (RGB)
BACKGROUND = (255, 255, 255)
INK = (24, 24, 24)
MUTED = (110, 110, 110)
LETTERBOX = (34, 34, 34)
HEADER_FILLS = ((214, 222, 235), (230, 235, 243), (240, 243, 248), (246, 248, 251))
NO_JOB_FILL = (246, 246, 246)
PLACEHOLDER_STYLE: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], str]] = {
    # kind: (fill, ink, title)
    "failed": ((253, 226, 226), (165, 20, 20), "FAILED"),
    "cancelled": ((232, 232, 232), (80, 80, 80), "CANCELLED"),
    "not_done": ((255, 244, 214), (130, 90, 0), "NOT DONE"),
    "missing": ((255, 231, 204), (165, 75, 0), "IMAGE MISSING"),
    "unreadable": ((255, 231, 204), (165, 75, 0), "IMAGE UNREADABLE"),
    "no_job": (NO_JOB_FILL, (160, 160, 160), "no job"),
}


@dataclass(slots=True)
class SheetResult:
    paths: list[Path]
    layout: SheetLayout
    warnings: list[str]
    made_thumbnails: int = 0  # missing thumbnails made and saved into thumbs/
    geometries: list[PageGeometry] = field(default_factory=list)  # one per page, where things are

    def __repr__(self) -> str:
        # (the dataclass's would print every cell's job: pages, in a notebook)
        layout = self.layout
        axes = f"rows={layout.rows}, cols={layout.cols}" if layout.wrap is None else f"wrap={layout.wrap!r}"
        pages = ", ".join(repr(str(path)) for path in self.paths)
        return f"<SheetResult [{pages}]: {axes}, {counted(len(self.warnings), 'warning')}>"


# Text is measured and drawn as `spelled_out` shows it: a character no font here draws (an
# emoji, with no emoji font) goes by its name, so "✨" and "🌙" are not two identical boxes.
# Its bidi marks and control characters are written out first, as the gallery and the terminal
# write them: "\u202egnp.exe" read "exe.png", and "a\x07" and "a\x08" were the same empty box.
# (A line holds no line break or tab: labels are wrapped at whitespace.)
def pillow_measure(text: str, size: int, bold: bool) -> float:
    shown = spelled_out(printable(text))
    return float(font_for(shown, size, bold=bold).getlength(shown))


def _draw_text(draw: ImageDraw.ImageDraw, block: TextBlock, fill: tuple[int, int, int]) -> None:
    for line, origin in zip(block.lines, block.origins, strict=True):
        shown = spelled_out(printable(line))
        draw.text(origin, shown, font=font_for(shown, block.size, bold=block.bold), fill=fill)


def _draw_placeholder(
    canvas: Image.Image, box: Box, kind: str, reason: str, metrics: Metrics
) -> None:
    fill, ink, title = PLACEHOLDER_STYLE[kind]
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((box.x, box.y, box.right - 1, box.bottom - 1), fill=fill)
    if kind == "no_job":
        block = text_block(box, "no job", metrics.label_size, pillow_measure, pad=metrics.pad)
        _draw_text(draw, block, ink)
        return
    size = metrics.label_size
    title_box = Box(box.x, box.y + metrics.pad, box.w, round(size * 1.6))
    _draw_text(
        draw, text_block(title_box, title, size, pillow_measure, bold=True, max_lines=1), ink
    )
    reason_size = max(10, size - 2)
    body = Box(box.x, title_box.bottom, box.w, box.h - (title_box.bottom - box.y) - metrics.pad)
    block = text_block(
        body, reason, reason_size, pillow_measure, align="center", pad=metrics.pad + 2
    )
    _draw_text(draw, block, (60, 60, 60))


def _title_texts(folder: OutputFolder, layout: SheetLayout, page: SheetPage) -> tuple[str, str, str]:
    """The page's title, the part of it that must stay whole (" — page 2/5"), and its subtitle."""
    counts: dict[str, int] = {}
    for job in folder.jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    done = counts.get("downloaded", 0)
    failed = counts.get("failed", 0)
    cancelled = counts.get("cancelled", 0)
    pending = len(folder.jobs) - done - failed - cancelled
    title = folder.name  # (the page's value before its number: the file name has the number too)
    if page.page_label is not None:
        title += f" — {layout.page_by}: {page.page_label}"
    tail = f" — page {page.number}/{len(layout.pages)}" if len(layout.pages) > 1 else ""
    stamps = [run.get("finished_at") or run.get("started_at") for run in folder.runs]
    moment = max((s for s in stamps if s is not None), default=None) or time.time()
    date = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")
    total = len(folder.jobs)
    parts = [date, f"{counted(total, 'job')}: {done:,} done"]  # as `report` says it
    if failed:
        parts[-1] += f", {failed:,} failed"
    if cancelled:
        parts[-1] += f", {cancelled:,} cancelled"
    if pending:
        parts[-1] += f", {pending:,} not done"
    if layout.rows:
        parts.append("rows: " + " › ".join(layout.rows))
    if layout.cols:
        parts.append("columns: " + " › ".join(layout.cols))
    if layout.wrap is not None:
        parts.append(f"{layout.wrap}: left to right, then down")
    if layout.slots > 1 and layout.inline:
        parts.append("side by side: " + ", ".join(layout.inline))
    return title, tail, " · ".join(parts)


def _page_path(out_dir: Path, number: int, total: int, fmt: str) -> Path:
    suffix = ".png" if fmt == "png" else ".jpg"
    if total == 1:
        return out_dir / f"{SHEET_STEM}{suffix}"
    return out_dir / f"{SHEET_STEM}-{number:02d}{suffix}"


def _remove_stale_pages(out_dir: Path, keep: set[Path]) -> None:
    """Pages left from an earlier sheet with more pages would mislead: remove them."""
    for pattern in (
        f"{SHEET_STEM}.png",
        f"{SHEET_STEM}.jpg",
        f"{SHEET_STEM}-*.png",
        f"{SHEET_STEM}-*.jpg",
    ):
        for path in out_dir.glob(pattern):
            if path not in keep and re.fullmatch(rf"{SHEET_STEM}(-\d+)?\.(png|jpg)", path.name):
                with contextlib.suppress(OSError):
                    path.unlink()


#: Pages drawn at once, on any number of cores: a page's canvas may be 64 Mpx (about 190 MB
#: in RGB), so one per core would be 1.5 GB on eight; two already keep both cores of a small
#: machine busy.
PAGES_AT_ONCE = 2

#: The longest side a page may have and still open everywhere: ImageMagick's default policy
#: (Debian's) refuses images over 16K pixels wide or high.
VIEWABLE_SIDE = 16_384
#: The longest side a JPEG may have (libjpeg's limit).
JPEG_MAX_SIDE = 65_500


def render_sheet(folder: OutputFolder, options: SheetOptions) -> SheetResult:
    """Lay out and draw every page; write them into the output folder."""
    layout = plan_sheet(folder.jobs, folder.axis_names, options, wrap=True)
    warnings = list(layout.warnings)
    # Big cells: fewer per page, so that no page outgrows memory (or an image viewer).
    budget = cells_within_budget(options.cell, layout.slots)
    if budget < options.max_cells and any(len(page.row_keys) * len(page.col_keys) > budget for page in layout.pages):
        layout = plan_sheet(folder.jobs, folder.axis_names, replace(options, max_cells=budget), wrap=True)
        warnings.append(
            f"cells of {options.cell} px: at most {budget} a page ({counted(len(layout.pages), 'page')}), "
            f"to keep each page under {MAX_PAGE_PIXELS // 1_000_000} megapixels (smaller cells "
            "put more on a page)"
        )
    spelled = undrawn([*folder.axis_names, *(label for job in folder.jobs for label in job.axes.values())])
    if spelled:  # (the gallery shows them as written: a browser has the fonts)
        shown = some_of([f"{printable(text)!r} as {shown!r}" for text, shown in spelled])
        warnings.append(
            f"no font on this machine draws some labels, so the sheet writes them another way: {shown} "
            "(a font for their script draws them as written: Debian's fonts-noto-core, "
            "fonts-noto-cjk, fonts-noto-color-emoji)"
        )
    metrics = Metrics(options.cell)
    total = len(layout.pages)

    # Where each done job's picture comes from.
    pictures: dict[str, Picture] = {}
    for done in folder.jobs:
        if done.state == "downloaded":
            pictures[done.job_id] = locate_picture(done, folder.path)
    big_cells = options.cell > THUMB_SIZE
    problems: dict[str, tuple[str, str]] = {}
    sources: dict[str, Path | bytes] = {}
    to_make: list[Picture] = []
    # A done job whose image is gone (or another size) but whose thumbnail is left: the
    # thumbnail still shows what the job made, marked, with a warning.
    stale = {
        job_id: state
        for job_id, state in folder.image_files.items()
        if state != IMAGE_PRESENT and job_id in pictures and not pictures[job_id].problem
    }
    for job_id, picture in pictures.items():
        if picture.problem:
            problems[job_id] = ("missing", picture.problem)
        elif big_cells and picture.image is not None:
            # Cells larger than a thumbnail: decode the image rather than blow a thumbnail up.
            sources[job_id] = picture.image
        elif picture.thumb is not None:
            sources[job_id] = picture.thumb
        else:
            to_make.append(picture)

    def record(result: MadeThumb) -> None:
        if result.error:
            problems[result.job_id] = ("unreadable", result.error)
        elif result.saved is not None:
            sources[result.job_id] = result.saved
        elif result.data is not None:
            sources[result.job_id] = result.data
            warnings.append(
                f"could not save a thumbnail for job {result.job_id} (output folder not writable?)"
            )

    def draw_page(page: SheetPage) -> tuple[Path, PageGeometry]:
        title, tail, subtitle = _title_texts(folder, layout, page)
        geometry = page_geometry(
            layout, page, metrics, pillow_measure, title=title, title_tail=tail, subtitle=subtitle
        )
        dest = _page_path(folder.path, page.number, total, options.fmt)
        if options.fmt == "jpeg" and max(geometry.width, geometry.height) > JPEG_MAX_SIDE:
            # (libjpeg refuses it: the write failed as if the folder could not be written, 73)
            png = option("--format png", "fmt='png'")
            raise UsageError(
                f"{dest.name}: a page of {geometry.width:,} x {geometry.height:,} px is too large "
                f"for JPEG ({JPEG_MAX_SIDE:,} px a side at most); use {png}, "
                f"page by an axis ({option('--page-by', 'page_by=')}), move one to the other side, or "
                f"use smaller cells ({option('--cell', 'cell=')})"
            )
        canvas = Image.new("RGB", (geometry.width, geometry.height), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        _draw_text(draw, geometry.title, INK)
        _draw_text(draw, geometry.subtitle, MUTED)
        for header in (*geometry.col_headers, *geometry.row_headers, *geometry.cell_labels):
            fill = HEADER_FILLS[min(header.span.level, len(HEADER_FILLS) - 1)]
            b = header.box
            draw.rectangle((b.x, b.y, b.right - 1, b.bottom - 1), fill=fill)
            _draw_text(draw, header.text, INK)
        for block in geometry.axis_names:
            _draw_text(draw, block, MUTED)
        for cell in geometry.cells:
            jobs = page.jobs_at(cell.row, cell.col)
            if not jobs:
                # an excluded combination: the whole cell says so, not its first slot alone
                _draw_placeholder(canvas, cell.box, *placeholder_kind(None), metrics)
                continue
            for s, slot in enumerate(cell.slots):
                if s >= len(jobs):
                    break  # fewer repeats here than elsewhere: leave the other slots blank
                job = jobs[s]
                shown = _draw_slot(canvas, slot, job, sources, pictures, problems, warnings, metrics)
                if shown and job.job_id in stale:
                    _mark_stale(canvas, slot, job, stale[job.job_id], warnings, metrics)
        return _save(canvas, dest, options.fmt), geometry

    # Every missing thumbnail first, then the pages: drawing while the workers decode saves
    # little time on two cores but keeps a page's canvas alive beside two decoded images,
    # half as much memory again at the peak.
    made = make_thumbnails(to_make, on_done=record)
    if total > 1:
        # Pages in threads: Pillow releases the GIL while it decodes thumbnails and encodes
        # PNG, which is most of a page's time; two pages in memory at once, not all of them.
        # (each in a copy of this context: `keeping_unchanged()` must reach the pages' writes)
        context = contextvars.copy_context()
        with ThreadPoolExecutor(max_workers=min(total, PAGES_AT_ONCE, os.cpu_count() or 1)) as pool:
            drawn = list(pool.map(lambda page: context.copy().run(draw_page, page), layout.pages))
    else:
        drawn = [draw_page(page) for page in layout.pages]
    paths = [path for path, _ in drawn]
    geometries = [geometry for _, geometry in drawn]
    wide = [(path, g) for path, g in drawn if max(g.width, g.height) > VIEWABLE_SIDE]
    if wide:  # (made as asked: say what will not open it, and what makes pages smaller)
        path, g = wide[0]
        warnings.append(
            f"{counted(len(wide), 'page')} over {VIEWABLE_SIDE:,} px on a side ({path.name}: "
            f"{g.width:,} x {g.height:,}), which some viewers refuse (ImageMagick's default policy); "
            f"page by an axis ({option('--page-by', 'page_by=')}), move one to the other side, or use "
            f"smaller cells ({option('--cell', 'cell=')})"
        )
    _remove_stale_pages(folder.path, set(paths))
    # (the ones saved for next time: an image that could not be decoded, or a thumbnail that
    # could not be saved, has its own warning, and is no thumbnail made)
    saved = sum(result.saved is not None for result in made.values())
    return SheetResult(paths, layout, warnings, made_thumbnails=saved, geometries=geometries)


def _draw_slot(
    canvas: Image.Image,
    slot: Box,
    job: JobRecord | None,
    sources: Mapping[str, Path | bytes],
    pictures: Mapping[str, Picture],
    problems: dict[str, tuple[str, str]],
    warnings: list[str],
    metrics: Metrics,
) -> bool:
    """Draw one slot; True when it shows the job's picture, False for a placeholder."""
    if job is None or job.state != "downloaded":
        kind, reason = placeholder_kind(job)
        _draw_placeholder(canvas, slot, kind, reason, metrics)
        return False
    source = sources.get(job.job_id)
    if source is not None:
        picture = _load_or_remake(
            job, source, pictures.get(job.job_id), (slot.w, slot.h), problems, warnings
        )
        if picture is not None:
            ImageDraw.Draw(canvas).rectangle(
                (slot.x, slot.y, slot.right - 1, slot.bottom - 1), fill=LETTERBOX
            )
            canvas.paste(
                picture,
                (slot.x + (slot.w - picture.width) // 2, slot.y + (slot.h - picture.height) // 2),
            )
            return True
    kind, reason = problems.get(job.job_id, ("missing", "no picture"))
    warnings.append(
        f"job {job.job_id} (#{job.job_index}): {reason}; a placeholder stands in its cell"
    )
    _draw_placeholder(canvas, slot, kind, reason, metrics)
    return False


def _mark_stale(
    canvas: Image.Image, slot: Box, job: JobRecord, state: str, warnings: list[str], metrics: Metrics
) -> None:
    """A band across the foot of a picture shown from the thumbnail of an image no longer on disk."""
    fill, ink, _ = PLACEHOLDER_STYLE["missing"]
    title = f"IMAGE {state.upper()}"  # IMAGE MISSING, IMAGE CHANGED
    size = metrics.label_size
    band = Box(slot.x, slot.bottom - round(size * 1.6), slot.w, round(size * 1.6))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((band.x, band.y, band.right - 1, band.bottom - 1), fill=fill)
    _draw_text(draw, text_block(band, title, size, pillow_measure, bold=True, max_lines=1, pad=1), ink)
    what = "missing" if state == "missing" else "changed on disk (another size than downloaded)"
    warnings.append(
        f"job {job.job_id} (#{job.job_index}): image file {what}: {job.image_path}; its thumbnail "
        "is shown, marked (run the recipe again to fetch it)"
    )


def _load_or_remake(
    job: JobRecord,
    source: Path | bytes,
    picture: Picture | None,
    box: tuple[int, int],
    problems: dict[str, tuple[str, str]],
    warnings: list[str],
) -> Image.Image | None:
    """The job's picture at cell size; a corrupt thumbnail is remade from the full image."""
    try:
        return load_fitted(source, box)
    except _DECODE_ERRORS as exc:
        problem = f"thumbnail unreadable: {exc}"
    if picture is not None and picture.image is not None and picture.thumb_dest is not None:
        made = make_thumbnail(job.job_id, picture.image, picture.thumb_dest)
        remade = made.saved or made.data
        if remade is not None:
            warnings.append(
                f"job {job.job_id} (#{job.job_index}): {problem}; remade it from the image"
            )
            try:
                return load_fitted(remade, box)
            except _DECODE_ERRORS as exc:
                problem = f"thumbnail unreadable: {exc}"
        else:
            problem = made.error or problem
    problems[job.job_id] = ("unreadable", problem)
    return None


def _save(canvas: Image.Image, dest: Path, fmt: str) -> Path:
    def write(out: BinaryIO) -> None:
        if fmt == "png":
            # zlib level 1: a third of the default's encoding time for about 20% more bytes
            # (photographic cells barely compress anyway); a 1,000-image sheet is ten pages.
            canvas.save(out, "PNG", compress_level=1)
        else:
            canvas.save(out, "JPEG", quality=90)

    return write_atomically(dest, write)


def make_sheet(
    folder: OutputFolder,
    *,
    rows: str | Sequence[str] | None = None,
    cols: str | Sequence[str] | None = None,
    page_by: str | None = None,
    cell: int | None = None,
    max_cells: int | None = None,
    fmt: str | None = None,
) -> SheetResult:
    """The contact sheet of an output folder, as `seedream-pipe sheet` makes it."""
    options = resolve_options(
        folder.sheet_settings,
        rows=rows,
        cols=cols,
        page_by=page_by,
        cell=cell,
        max_cells=max_cells,
        fmt=fmt,
    )
    return render_sheet(folder, options)


__all__ = [
    "LETTERBOX",
    "PLACEHOLDER_STYLE",
    "SheetResult",
    "make_sheet",
    "pillow_measure",
    "render_sheet",
]
