"""Where everything on a contact sheet goes: pure functions, no Pillow, no disk.

- `resolve_options` merges the command line over the recipe's `sheet:` settings over the defaults:
  an axis named on the command line leaves whatever side or page the recipe gave it.
- `plan_sheet` decides which job goes in which cell of which page: the row axes down the side,
  the column axes across the top, any other axis (repeats, by default) side by side inside a
  cell, one page per `page_by` label and no more than `max_cells` cells per page, and the
  header spans (an outer axis's header spans all its inner values). With `wrap=True` (the
  sheet's and the gallery's), a sweep whose defaults leave a single axis on the sheet wraps its labels into a
  grid in reading order, each cell under its own label, instead of one tall column.
- `wrap_label` wraps header text at word boundaries, ending in an ellipsis when it does not fit.
- `page_geometry` places every header, text line and cell in pixels, given a function that
  measures text (Pillow's in `sheet.py`, a fake one in tests).

The gallery lays its HTML grid out with the same `plan_sheet` (wrapped too), so both agree.

Defaults: the sweep's vars (every axis but resolution and repeat) as rows, resolution as
columns. Axes with a single label are left out of the defaults: a header spanning everything
says nothing.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from seedream_pipe.errors import UsageError
from seedream_pipe.state import JobRecord
from seedream_pipe.words import option

DEFAULT_CELL = 256
DEFAULT_MAX_CELLS = 100
#: Pictures' pixels on one page at most. A page is one canvas in memory (3 bytes a pixel, two
#: pages drawn at once): 100 cells of 2048 px would be a 420-megapixel page, 1.8 GB of memory
#: and a 60 MB PNG most viewers cannot open. 64 MP still takes 61 cells of 1024 px.
MAX_PAGE_PIXELS = 64_000_000
SHEET_FORMATS = ("png", "jpeg")
RESOLUTION_AXIS = "resolution"
REPEAT_AXIS = "repeat"
ELLIPSIS = "…"

_T = TypeVar("_T")


# --- options -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SheetOptions:
    """How to lay a sheet out; None means "the recipe's setting, else the default"."""

    rows: tuple[str, ...] | None = None
    cols: tuple[str, ...] | None = None
    page_by: str | None = None
    cell: int = DEFAULT_CELL
    max_cells: int = DEFAULT_MAX_CELLS
    repeats: str = "inline"  # or "axis": the repeat axis goes on a side like any other
    fmt: str = "png"
    #: Which of "rows", "cols" and "page_by" are the recipe's `sheet:` settings rather than the
    #: command line's: a message about them names sheet.rows, not a --rows the user never typed.
    from_recipe: frozenset[str] = field(default=frozenset(), compare=False)


def split_axes(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """`"a,b"` or `["a", "b"]` -> ("a", "b"); None stays None."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    return tuple(part.strip() for part in parts if part.strip())


def resolve_options(
    settings: Mapping[str, Any],
    *,
    rows: str | Sequence[str] | None = None,
    cols: str | Sequence[str] | None = None,
    page_by: str | None = None,
    cell: int | None = None,
    max_cells: int | None = None,
    fmt: str | None = None,
) -> SheetOptions:
    """Command-line values over the recipe's `sheet:` settings over the defaults.

    An axis named by --rows, --cols or --page-by is moved there: it leaves the recipe's other
    side (or its page_by), which otherwise keeps the recipe's axes, or its default when none is
    left. Only two command-line options naming the same axis clash.
    """

    def pick(given: Any, key: str, default: Any) -> Any:
        if given is not None:
            return given
        value = settings.get(key)
        return default if value is None else value

    given_rows, given_cols = split_axes(rows), split_axes(cols)
    moved = {*(given_rows or ()), *(given_cols or ()), *([page_by] if page_by else [])}

    def recipe_side(key: str) -> tuple[str, ...] | None:
        axes = split_axes(settings.get(key))
        if axes is None:
            return None
        kept = tuple(axis for axis in axes if axis not in moved)
        # (a side the command line emptied is as if the recipe had not set it: the default)
        return kept if kept or not axes else None

    page = page_by if page_by is not None else settings.get("page_by")
    if page_by is None and page in moved:  # the recipe's page_by, put on a side by --rows/--cols
        page = None
    options = SheetOptions(
        rows=given_rows if given_rows is not None else recipe_side("rows"),
        cols=given_cols if given_cols is not None else recipe_side("cols"),
        page_by=page or None,
        cell=int(pick(cell, "cell", DEFAULT_CELL)),
        max_cells=int(pick(max_cells, "max_cells", DEFAULT_MAX_CELLS)),
        repeats=str(settings.get("repeats") or "inline"),
        fmt=(fmt or "png").lower(),
        from_recipe=frozenset(
            key
            for key, given in (("rows", rows), ("cols", cols), ("page_by", page_by))
            if given is None and settings.get(key) is not None
        ),
    )
    if options.fmt == "jpg":
        options = replace(options, fmt="jpeg")
    if options.fmt not in SHEET_FORMATS:
        raise UsageError(f"unknown sheet format {options.fmt!r}; choose png or jpeg")
    if not 32 <= options.cell <= 2048:
        raise UsageError(f"{option('--cell ', 'cell=')}{options.cell}: choose a cell size from 32 to 2048 pixels")
    if options.max_cells < 1:
        raise UsageError(f"{option('--max-cells ', 'max_cells=')}{options.max_cells}: must be at least 1")
    return options


def cells_within_budget(cell: int, slots: int = 1) -> int:
    """How many cells of `cell` px, each `slots` images wide, fit MAX_PAGE_PIXELS (at least 1)."""
    return max(1, MAX_PAGE_PIXELS // (cell * cell * max(1, slots)))


# --- layout: which job goes where (pure) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """One header box: the label of `axis` over `count` rows (or columns) from `start`."""

    axis: str
    label: str
    level: int  # 0 = the outermost axis of its side
    start: int
    count: int


@dataclass(slots=True)
class SheetPage:
    """One page of a sheet: its row and column keys (tuples of labels) and the jobs per cell."""

    number: int  # 1-based
    row_keys: list[tuple[str, ...]]
    col_keys: list[tuple[str, ...]]
    cells: dict[tuple[int, int], list[JobRecord]]  # (row, col) -> jobs side by side
    row_spans: list[Span]
    col_spans: list[Span]
    page_label: str | None = None  # the page_by label of this page
    #: A wrapped single axis (`SheetLayout.wrap`): the label over each cell; cells past the
    #: last label of the last row are absent (no cell at all, not "no job").
    cell_labels: dict[tuple[int, int], str] = field(default_factory=dict)

    def jobs_at(self, row: int, col: int) -> list[JobRecord]:
        return self.cells.get((row, col), [])


@dataclass(slots=True)
class SheetLayout:
    rows: list[str]
    cols: list[str]
    page_by: str | None
    inline: list[str]  # axes whose jobs sit side by side in a cell (repeats, unplaced axes)
    slots: int  # images side by side per cell
    pages: list[SheetPage]
    warnings: list[str] = field(default_factory=list)
    #: The one axis on the sheet, its labels wrapped into a grid in reading order (rows and
    #: cols are then empty and each cell has its label, `SheetPage.cell_labels`); else None.
    wrap: str | None = None


def label_order(jobs: Sequence[JobRecord], axes: Sequence[str]) -> dict[str, list[str]]:
    """Each axis's labels in plan order (the order the recipe wrote them)."""
    order: dict[str, dict[str, None]] = {axis: {} for axis in axes}
    for job in sorted(jobs, key=lambda j: j.job_index):
        for axis in axes:
            label = job.axes.get(axis)
            if label is not None:
                order[axis].setdefault(str(label), None)
    return {axis: list(labels) for axis, labels in order.items()}


def _check_named(axes: Sequence[str], named: Sequence[str], option: str) -> None:
    unknown = [axis for axis in named if axis not in axes]
    if unknown:
        which = ", ".join(repr(a) for a in unknown)
        raise UsageError(
            f"{option}: no axis {which} in this sweep; its axes are: {', '.join(axes)}"
        )
    doubled = sorted({axis for axis in named if list(named).count(axis) > 1})
    if doubled:
        raise UsageError(f"{option}: axis {', '.join(doubled)} named twice")


def choose_axes(
    axes: Sequence[str], labels: Mapping[str, Sequence[str]], options: SheetOptions
) -> tuple[list[str], list[str], str | None, list[str]]:
    """(rows, cols, page_by, inline axes) for these axes, checking what the user named."""
    rows = list(options.rows) if options.rows is not None else None
    cols = list(options.cols) if options.cols is not None else None
    page_by = options.page_by
    # (resolve_options moves an axis the command line names off the recipe's sides, so a clash
    # is between two options of the command line, or two settings of the recipe)
    name = {
        key: f"sheet.{key}" if key in options.from_recipe else f"--{key.replace('_', '-')}"
        for key in ("rows", "cols", "page_by")
    }
    if rows is not None:
        _check_named(axes, rows, name["rows"])
    if cols is not None:
        _check_named(axes, cols, name["cols"])
    if page_by is not None:
        _check_named(axes, [page_by], name["page_by"])
    both = [axis for axis in rows or [] if axis in (cols or [])]
    if both:
        raise UsageError(
            f"axis {', '.join(repr(a) for a in both)} is named in both {name['rows']} and "
            f"{name['cols']}; an axis goes on one side only"
        )
    if page_by is not None and page_by in (rows or []) + (cols or []):
        raise UsageError(f"{name['page_by']} {page_by!r} is also a row or column axis; choose one")

    def varies(axis: str) -> bool:
        return len(labels.get(axis, ())) > 1

    repeat_inline = options.repeats != "axis"
    taken = set(rows or []) | set(cols or []) | ({page_by} if page_by else set())

    def free(axis: str) -> bool:
        return axis not in taken and varies(axis) and not (axis == REPEAT_AXIS and repeat_inline)

    defaulted = rows is None and cols is None
    if cols is None:
        cols = [RESOLUTION_AXIS] if RESOLUTION_AXIS in axes and free(RESOLUTION_AXIS) else []
        if not repeat_inline and REPEAT_AXIS in axes and free(REPEAT_AXIS) and rows is None:
            cols.append(REPEAT_AXIS)
        taken |= set(cols)
    if rows is None:
        rows = [axis for axis in axes if free(axis) and axis not in (RESOLUTION_AXIS, REPEAT_AXIS)]
        taken |= set(rows)
    if defaulted and not cols and len(rows) > 1:
        # Every var down the side would make one tall column: put the innermost one across.
        cols = [rows.pop()]
    placed = set(rows) | set(cols) | ({page_by} if page_by else set())
    inline = [axis for axis in axes if axis not in placed and varies(axis)]
    return rows, cols, page_by, inline


def _key_order(
    keys: set[tuple[str, ...]], axes: Sequence[str], labels: Mapping[str, Sequence[str]]
) -> list[tuple[str, ...]]:
    rank = {axis: {label: i for i, label in enumerate(labels[axis])} for axis in axes}
    return sorted(
        keys, key=lambda key: tuple(rank[a].get(v, 0) for a, v in zip(axes, key, strict=True))
    )


def spans_of(keys: Sequence[tuple[str, ...]], axes: Sequence[str]) -> list[Span]:
    """Header boxes of one side: at each level, one box per run of keys sharing that prefix."""
    spans: list[Span] = []
    for level, axis in enumerate(axes):
        start = 0
        for i in range(1, len(keys) + 1):
            if i == len(keys) or keys[i][: level + 1] != keys[start][: level + 1]:
                spans.append(Span(axis, keys[start][level], level, start, i - start))
                start = i
    return spans


def _window(
    grid: Mapping[tuple[int, int], _T], corner: tuple[int, int], size: tuple[int, int]
) -> dict[tuple[int, int], _T]:
    """The part of `grid` in the `size` rows x columns from `corner`, counted from there."""
    (r0, c0), (n_rows, n_cols) = corner, size
    return {
        (r - r0, c - c0): value
        for (r, c), value in grid.items()
        if r0 <= r < r0 + n_rows and c0 <= c < c0 + n_cols
    }


def wrap_columns(count: int, slots: int = 1) -> int:
    """Cells across for `count` labels wrapped into a grid: about the square root of the count
    (of images, with `slots` side by side in a cell), so the sheet is about square; one row for
    three or fewer."""
    if count <= 3:
        return max(1, count)
    return max(1, math.ceil(math.sqrt(count / max(1, slots))))


def plan_sheet(
    jobs: Sequence[JobRecord],
    axes: Sequence[str],
    options: SheetOptions,
    *,
    wrap: bool = False,
) -> SheetLayout:
    """Decide the sheet: which job goes in which cell of which page.

    With `wrap`, a sweep whose defaults leave one axis on the sheet (one row axis and no
    column axis, or the reverse) gets its labels wrapped in reading order into a grid of about
    the square root of their number across, each cell under its own label, rather than one tall
    column or one long row. An axis named in --rows/--cols (or the recipe's sheet settings)
    stays where it was put.
    """
    labels = label_order(jobs, axes)
    rows, cols, page_by, inline = choose_axes(axes, labels, options)
    wrapped: str | None = None
    if wrap and options.rows is None and options.cols is None and len(rows) + len(cols) == 1:
        wrapped = (rows or cols)[0]
        rows, cols = [], []
    warnings = []
    shared = [axis for axis in inline if axis != REPEAT_AXIS]
    if shared:
        warnings.append(
            (f"axis {shared[0]} is on no side of the sheet: its images sit side by side in a cell "
             "(name it in --rows, --cols or --page-by to give it headers)")
            if len(shared) == 1
            else (f"axes {', '.join(shared)} are on no side of the sheet: their images sit side by "
                  "side in a cell (name them in --rows, --cols or --page-by to give them headers)")
        )

    def key(job: JobRecord, names: Sequence[str]) -> tuple[str, ...]:
        return tuple(str(job.axes.get(axis, "")) for axis in names)

    groups: dict[str | None, list[JobRecord]] = {}
    page_labels = labels[page_by] if page_by else [None]
    for label in page_labels:
        groups[label] = []
    for job in jobs:
        groups.setdefault(str(job.axes.get(page_by, "")) if page_by else None, []).append(job)

    inline_rank = {axis: {label: i for i, label in enumerate(labels[axis])} for axis in inline}

    def slot_order(job: JobRecord) -> tuple[Any, ...]:
        return (*(inline_rank[a].get(str(job.axes.get(a, "")), 0) for a in inline), job.job_index)

    # A wrapped grid: how many images share a cell decides how many cells go across.
    wrap_slots = 1
    if wrapped is not None:
        shared_cells = Counter(
            (page_key, str(job.axes.get(wrapped, "")))
            for page_key, members in groups.items()
            for job in members
        )
        wrap_slots = max(shared_cells.values(), default=1)

    pages: list[SheetPage] = []
    slots = 1
    for label, members in groups.items():
        if not members:
            continue
        cells: dict[tuple[int, int], list[JobRecord]] = {}
        cell_labels: dict[tuple[int, int], str] = {}
        if wrapped is not None:
            present = {str(job.axes.get(wrapped, "")) for job in members}
            order = [name for name in labels[wrapped] if name in present]
            order += sorted(present - set(order))  # (a job without the axis: last, not lost)
            across = min(wrap_columns(len(order), wrap_slots), options.max_cells)
            place = {name: divmod(i, across) for i, name in enumerate(order)}
            cell_labels = {where: name for name, where in place.items()}
            row_keys: list[tuple[str, ...]] = [()] * math.ceil(len(order) / across)
            col_keys: list[tuple[str, ...]] = [()] * min(across, len(order))
            for job in members:
                cells.setdefault(place[str(job.axes.get(wrapped, ""))], []).append(job)
        else:
            row_keys = _key_order({key(j, rows) for j in members}, rows, labels)
            col_keys = _key_order({key(j, cols) for j in members}, cols, labels)
            row_of = {k: i for i, k in enumerate(row_keys)}
            col_of = {k: i for i, k in enumerate(col_keys)}
            for job in members:
                cells.setdefault((row_of[key(job, rows)], col_of[key(job, cols)]), []).append(job)
        for cell_jobs in cells.values():
            cell_jobs.sort(key=slot_order)
            slots = max(slots, len(cell_jobs))
        # Page so that no page holds more than max_cells cells: whole rows per page, and a row
        # wider than a page is cut into column chunks.
        col_chunk = min(len(col_keys), options.max_cells)
        rows_per_page = max(1, options.max_cells // col_chunk)
        for r0 in range(0, len(row_keys), rows_per_page):
            for c0 in range(0, len(col_keys), col_chunk):
                page_rows = row_keys[r0 : r0 + rows_per_page]
                page_cols = col_keys[c0 : c0 + col_chunk]
                corner, size = (r0, c0), (len(page_rows), len(page_cols))
                pages.append(
                    SheetPage(
                        number=len(pages) + 1,
                        row_keys=page_rows,
                        col_keys=page_cols,
                        cells=_window(cells, corner, size),
                        row_spans=spans_of(page_rows, rows),
                        col_spans=spans_of(page_cols, cols),
                        page_label=label,
                        cell_labels=_window(cell_labels, corner, size),
                    )
                )
    return SheetLayout(rows, cols, page_by, inline, slots, pages, warnings, wrap=wrapped)


def placeholder_kind(job: JobRecord | None) -> tuple[str, str]:
    """(kind, reason) of a cell slot that shows no image, for a job not downloaded (or None)."""
    if job is None:
        return "no_job", "this combination is not in the plan"
    if job.state == "failed":
        return "failed", job.error or "no reason recorded"
    if job.state == "cancelled":
        return "cancelled", job.error or "cancelled before it ran"
    return "not_done", f"state: {job.state.replace('_', ' ')} (run the recipe again to finish it)"


# --- text wrapping (pure) ----------------------------------------------------------------------

Measure = Callable[[str], float]
_WIDE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\u3040-\u30ff\uff00-\uffef]")


def _cut(word: str, max_width: float, measure: Measure) -> str:
    """The longest prefix of `word` that fits with an ellipsis after it."""
    for end in range(len(word) - 1, 0, -1):
        candidate = word[:end].rstrip(" ,.;:-") + ELLIPSIS
        if measure(candidate) <= max_width:
            return candidate
    return ELLIPSIS


def keep_tail(head: str, tail: str, max_width: float, max_lines: int, measure: Measure) -> str:
    """`head + tail`, or, when that needs more than `max_lines` lines, `head` cut short with
    "…" so that `tail` stays whole at the end: a long value of a sheet's page axis cut the
    page's number ("page 2/5") off its title. Whole when not even one character of `head` fits."""

    def fits(text: str) -> bool:
        return " ".join(wrap_label(text, max_width, max_lines, measure)).endswith(tail.strip())

    if not tail or fits(head + tail):
        return head + tail
    low, high = 0, len(head)  # (the longest head, cut at a character, that fits with the tail)
    while low < high:
        mid = (low + high + 1) // 2
        if fits(head[:mid].rstrip() + "…" + tail):
            low = mid
        else:
            high = mid - 1
    return head[:low].rstrip() + "…" + tail if low else head + tail


def wrap_label(text: str, max_width: float, max_lines: int, measure: Measure) -> list[str]:
    """Wrap at spaces into at most `max_lines` lines of at most `max_width`.

    A word is never cut without an ellipsis: a word too long for a line is cut and ends in "…",
    and text that needs more lines than allowed ends in "…" after the last whole word that
    fits. Runs of CJK (which have no spaces) may break between any two characters.
    """
    max_lines = max(1, max_lines)
    lines: list[str] = []
    current = ""
    truncated = False
    words = text.split()
    for i, word in enumerate(words):
        candidate = f"{current} {word}" if current else word
        if measure(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
            current = ""
        if measure(word) <= max_width:
            current = word
        elif _WIDE.search(word):
            for char in word:
                if measure(current + char) > max_width and current:
                    lines.append(current)
                    current = char
                else:
                    current += char
        else:
            current = _cut(word, max_width, measure)
            if i < len(words) - 1 or len(lines) + 1 > max_lines:
                truncated = True
        if len(lines) >= max_lines:
            truncated = True
            break
    if current and len(lines) < max_lines:
        lines.append(current)
    elif current:
        truncated = True
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        truncated = True
    if truncated and lines and not lines[-1].endswith(ELLIPSIS):
        lines[-1] = _with_ellipsis(lines[-1], max_width, measure)
    return lines


def _with_ellipsis(line: str, max_width: float, measure: Measure) -> str:
    """`line` shortened by whole words until "line…" fits."""
    words = line.split(" ")
    while words:
        candidate = " ".join(words).rstrip(" ,.;:-") + ELLIPSIS
        if measure(candidate) <= max_width:
            return candidate
        if len(words) == 1:
            return _cut(words[0], max_width, measure)
        words.pop()
    return ELLIPSIS


# --- geometry (pure, given a measure) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    def contains(self, x: int, y: int) -> bool:
        return self.x <= x < self.right and self.y <= y < self.bottom


@dataclass(frozen=True, slots=True)
class TextBlock:
    """Lines of text placed in a box: each line's top-left corner, at one font size."""

    box: Box
    lines: tuple[str, ...]
    origins: tuple[tuple[int, int], ...]
    size: int
    bold: bool = False


@dataclass(frozen=True, slots=True)
class HeaderBox:
    span: Span
    box: Box
    text: TextBlock


@dataclass(frozen=True, slots=True)
class CellBox:
    row: int
    col: int
    box: Box
    slots: tuple[Box, ...]  # one per image side by side


@dataclass(slots=True)
class PageGeometry:
    width: int
    height: int
    title: TextBlock
    subtitle: TextBlock
    row_headers: list[HeaderBox]
    col_headers: list[HeaderBox]
    axis_names: list[TextBlock]  # in the corner: each column axis by its band, each row axis over its headers
    cells: list[CellBox]
    #: A wrapped single axis: the label over each cell (its span's `start` is the cell's place
    #: in reading order on the page).
    cell_labels: list[HeaderBox] = field(default_factory=list)

    def cell(self, row: int, col: int) -> CellBox:
        return next(c for c in self.cells if c.row == row and c.col == col)


@dataclass(frozen=True, slots=True)
class Metrics:
    """Sizes derived from the cell size, so a 128px and a 512px sheet both look right."""

    cell: int
    margin: int = 16
    gap: int = 6
    slot_gap: int = 4
    pad: int = 4

    @property
    def label_size(self) -> int:
        return max(11, min(20, round(self.cell / 18)))

    @property
    def line_height(self) -> int:
        return round(self.label_size * 1.3)

    @property
    def band_height(self) -> int:
        return 2 * self.line_height + 2 * self.pad

    @property
    def row_header_width(self) -> int:
        return max(90, min(220, round(self.cell * 0.55)))

    title_size: int = 20
    subtitle_size: int = 13


def text_block(
    box: Box,
    text: str,
    size: int,
    measure: Callable[[str, int, bool], float],
    *,
    bold: bool = False,
    align: str = "center",
    max_lines: int | None = None,
    pad: int = 4,
    line_height: int | None = None,
) -> TextBlock:
    line_height = line_height or round(size * 1.3)
    fit_lines = max(1, (box.h - 2 * pad) // line_height)
    lines = wrap_label(
        text,
        box.w - 2 * pad,
        min(fit_lines, max_lines) if max_lines else fit_lines,
        lambda s: measure(s, size, bold),
    )
    total = len(lines) * line_height
    top = box.y + max(pad, (box.h - total) // 2)
    origins = []
    for i, line in enumerate(lines):
        width = measure(line, size, bold)
        if align == "left":
            x = box.x + pad
        elif align == "right":
            x = box.right - pad - round(width)
        else:
            x = box.x + round((box.w - width) / 2)
        origins.append((x, top + i * line_height))
    return TextBlock(box, tuple(lines), tuple(origins), size, bold)


def page_geometry(
    layout: SheetLayout,
    page: SheetPage,
    metrics: Metrics,
    measure: Callable[[str, int, bool], float],
    *,
    title: str,
    subtitle: str,
    title_tail: str = "",
) -> PageGeometry:
    """Place the title, headers and cells of a page in pixels. `title_tail` ends the title and
    stays whole when the rest is cut (" — page 2/5")."""
    m = metrics
    n_rows, n_cols = max(1, len(page.row_keys)), max(1, len(page.col_keys))
    cell_w = layout.slots * m.cell + (layout.slots - 1) * m.slot_gap
    cell_h = m.cell
    # A wrapped axis has no header bands: each cell's label sits just over it, in a band of
    # its own, so a row of the grid is that band and the cell.
    label_h = m.band_height + m.slot_gap if layout.wrap is not None else 0
    row_h = label_h + cell_h
    row_levels = len(layout.rows)
    col_levels = len(layout.cols)
    grid_x = m.margin + row_levels * (m.row_header_width + m.gap)
    grid_w = n_cols * cell_w + (n_cols - 1) * m.gap
    width = max(grid_x + grid_w + m.margin, 360)
    # The title (name, page, the page's value) and the subtitle (date, counts, which axes where)
    # take a second line on a narrow sheet rather than losing their ends: a paged sheet's title
    # ends with what tells its pages apart.
    text_w = width - 2 * m.margin
    title_line = round(m.title_size * 1.3)
    title = keep_tail(title, title_tail, text_w, 2, lambda t: measure(t, m.title_size, True))
    title_lines = wrap_label(title, text_w, 2, lambda t: measure(t, m.title_size, True))
    subtitle_line = round(m.subtitle_size * 1.35)
    subtitle_lines = wrap_label(subtitle, text_w, 2, lambda t: measure(t, m.subtitle_size, False))
    title_box = Box(m.margin, m.margin, text_w, m.title_size + 8 + (len(title_lines) - 1) * title_line)
    subtitle_box = Box(m.margin, title_box.bottom, text_w, len(subtitle_lines) * subtitle_line)
    title_h = title_box.h + subtitle_box.h + 10
    grid_y = m.margin + title_h + col_levels * (m.band_height + m.gap)
    grid_h = n_rows * row_h + (n_rows - 1) * m.gap
    height = grid_y + grid_h + m.margin

    title_block = text_block(
        title_box, title, m.title_size, measure, bold=True, align="left", max_lines=2, pad=0,
        line_height=title_line,
    )
    subtitle_block = text_block(
        subtitle_box, subtitle, m.subtitle_size, measure, align="left", max_lines=2, pad=0,
        line_height=subtitle_line,
    )  # fmt: skip

    col_headers = []
    for span in page.col_spans:
        x = grid_x + span.start * (cell_w + m.gap)
        w = span.count * (cell_w + m.gap) - m.gap
        y = m.margin + title_h + span.level * (m.band_height + m.gap)
        box = Box(x, y, w, m.band_height)
        text = text_block(
            box,
            span.label,
            m.label_size,
            measure,
            bold=span.level < col_levels - 1,
            line_height=m.line_height,
            pad=m.pad,
        )
        col_headers.append(HeaderBox(span, box, text))

    row_headers = []
    for span in page.row_spans:
        x = m.margin + span.level * (m.row_header_width + m.gap)
        y = grid_y + span.start * (row_h + m.gap)
        h = span.count * (row_h + m.gap) - m.gap
        box = Box(x, y, m.row_header_width, h)
        text = text_block(
            box,
            span.label,
            m.label_size,
            measure,
            bold=span.level < row_levels - 1,
            line_height=m.line_height,
            pad=m.pad,
        )
        row_headers.append(HeaderBox(span, box, text))

    # The corner reads like a pivot table's: each column axis is named at the right of its band
    # ("style"), and each row axis over its own header column, in the bottom line of the band
    # just above the grid. The band is two lines high; the last column axis takes the top one.
    axis_names = []
    corner_w = grid_x - m.margin - m.gap
    if corner_w > 0:
        upper = m.band_height // 2  # the band's top line; the rest is its bottom line
        for level, axis in enumerate(layout.cols):
            y = m.margin + title_h + level * (m.band_height + m.gap)
            last = level == col_levels - 1 and row_levels > 0
            box = Box(m.margin, y, corner_w, upper if last else m.band_height)
            axis_names.append(
                text_block(box, axis, m.label_size, measure, align="right", max_lines=1,
                           line_height=m.line_height, pad=m.pad)
            )  # fmt: skip
        bottom = m.margin + title_h + col_levels * (m.band_height + m.gap) - m.gap
        for level, axis in enumerate(layout.rows if col_levels else ()):  # (no band: the subtitle names them)
            x = m.margin + level * (m.row_header_width + m.gap)
            box = Box(x, bottom - (m.band_height - upper), m.row_header_width, m.band_height - upper)
            axis_names.append(
                text_block(box, axis, m.label_size, measure, align="left", max_lines=1,
                           line_height=m.line_height, pad=m.pad)
            )  # fmt: skip

    cells = []
    cell_labels = []
    for r in range(n_rows):
        for c in range(n_cols):
            x = grid_x + c * (cell_w + m.gap)
            y = grid_y + r * (row_h + m.gap)
            if layout.wrap is not None:
                name = page.cell_labels.get((r, c))
                if name is None:
                    continue  # past the last label: no cell at all
                span = Span(layout.wrap, name, 0, r * n_cols + c, 1)
                box = Box(x, y, cell_w, m.band_height)
                text = text_block(box, name, m.label_size, measure, line_height=m.line_height, pad=m.pad)
                cell_labels.append(HeaderBox(span, box, text))
                y += label_h
            slots = tuple(
                Box(x + s * (m.cell + m.slot_gap), y, m.cell, m.cell) for s in range(layout.slots)
            )
            cells.append(CellBox(r, c, Box(x, y, cell_w, cell_h), slots))
    return PageGeometry(
        width, height, title_block, subtitle_block, row_headers, col_headers, axis_names, cells,
        cell_labels,
    )  # fmt: skip
