"""The outputs commands: `sheet`, `report` and `gallery`, over an output folder (no network).

Each takes `RECIPE|DIR` (a recipe file, whose output folder is used, or the folder itself),
calls `seedream_pipe.outputs` and prints what it wrote. A recipe given on the command line
wins over the sheet settings and price the runner recorded in the folder; the manifest keeps
the recipe the runner recorded, and a recipe edited since its last run gets a warning.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

# Only light constants at import time: the library (Pillow, pandas) loads when a command runs,
# so `seedream-pipe --help` and the other commands start fast.
from seedream_pipe.cli import printable
from seedream_pipe.outputs._folder import (
    REPORT_FORMATS,
    keeping_unchanged,
)
from seedream_pipe.outputs.layout import DEFAULT_CELL, DEFAULT_MAX_CELLS, SHEET_FORMATS
from seedream_pipe.paths import locate
from seedream_pipe.words import counted

if TYPE_CHECKING:
    from seedream_pipe.outputs import OutputFolder

TARGET = click.argument("target", metavar="RECIPE|DIR", type=click.Path(path_type=Path))


def _open(target: Path) -> OutputFolder:
    from seedream_pipe.outputs import open_output
    from seedream_pipe.outputs._folder import edited_recipe_warning
    from seedream_pipe.runner.folder import at_work_here

    out_dir, recipe = locate(target)
    folder = open_output(out_dir, recipe=recipe)
    edited = edited_recipe_warning(folder)
    if edited:
        _warn(edited)
    at_work = at_work_here(out_dir)
    if at_work is not None:  # (drawn from the jobs done so far; the run draws them again at its end)
        click.secho(
            f"note: {printable(at_work)}: these are its outputs so far, and it writes them again when it ends",
            fg="yellow",
            err=True,
        )
    return folder


def _drawn_again(command: Callable[..., int]) -> Callable[..., int]:
    """These commands draw a folder's outputs again from its state: files whose contents do not
    change keep their dates, so a make target stays older than a recipe edited since."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        with keeping_unchanged():
            return command(*args, **kwargs)

    return wrapper


def _warn(message: str) -> None:
    click.secho(f"warning: {printable(message)}", fg="yellow", err=True)


@click.command("sheet", short_help="Lay out the contact sheet of a run: a labelled grid of images.")
@TARGET
@click.option(
    "--rows", metavar="A,B", help="Axes down the side, outermost first. [default: the axes that vary, but resolution]"
)
@click.option(
    "--cols", metavar="C", help="Axes across the top, outermost first. [default: resolution, else the innermost row axis]"
)
@click.option("--page-by", metavar="D", help="One page per label of this axis.")
@click.option(
    "--cell",
    type=click.IntRange(32, 2048),
    help=f"Cell size in pixels. [default: recipe's sheet.cell, else {DEFAULT_CELL}]",
)
@click.option(
    "--max-cells",
    type=click.IntRange(min=1),
    help=f"Cells per page at most; more make pages. [default: recipe's sheet.max_cells, else {DEFAULT_MAX_CELLS}]",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(SHEET_FORMATS),
    default="png",
    show_default=True,
    help="Image format of the sheet.",
)
@_drawn_again
def sheet_command(
    target: Path,
    rows: str | None,
    cols: str | None,
    page_by: str | None,
    cell: int | None,
    max_cells: int | None,
    fmt: str,
) -> int:
    """Lay out the contact sheet of a run: a labelled grid of its images.

    Rows and columns come from --rows/--cols, else the recipe's `sheet:` settings, else the
    axes that vary: resolution across, the others down. An axis named in --rows, --cols or --page-by
    leaves the side the recipe's settings gave it. Failed, cancelled and unfinished jobs get
    a placeholder saying why. More than --max-cells cells, or --page-by, writes
    contact_sheet-01.png, -02, ...

    Example:

        seedream-pipe sheet outputs/demo --rows scene,light --cols style
    """
    from seedream_pipe.outputs import make_sheet, refresh_manifest

    folder = _open(target)
    result = make_sheet(
        folder, rows=rows, cols=cols, page_by=page_by, cell=cell, max_cells=max_cells, fmt=fmt
    )
    refresh_manifest(folder, written=result.paths)  # its list of outputs stays true
    for warning in result.warnings:
        _warn(warning)
    if result.made_thumbnails:
        click.echo(f"made {counted(result.made_thumbnails, 'missing thumbnail')} (kept for next time)")
    layout = result.layout
    sides = f"rows: {', '.join(layout.rows) or '-'}; columns: {', '.join(layout.cols) or '-'}"
    if layout.wrap is not None:
        across = max((len(page.col_keys) for page in layout.pages), default=0)
        sides = f"{layout.wrap} wrapped {across} across, left to right then down"
    click.echo(f"{len(result.paths)} page(s), {sides}")
    for path in result.paths:
        click.echo(str(path))
    return 0


@click.command("report", short_help="Write report.csv and print the summary.")
@TARGET
@click.option(
    "--format",
    "fmt",
    type=click.Choice(REPORT_FORMATS),
    default="csv",
    show_default=True,
    help="File format of the report.",
)
@_drawn_again
def report_command(target: Path, fmt: str) -> int:
    """Write report.csv (one row per job) and print the summary.

    When the folder has a manifest.json (a run that ended wrote one), its list of outputs
    gets the report too. It never makes one: a make rule's target is the manifest, and one made
    here would pass an interrupted run's folder for a finished one.

    Example:

        seedream-pipe report outputs/demo --format parquet
    """
    from seedream_pipe.outputs import format_summary, refresh_manifest, summarize_jobs, write_report
    from seedream_pipe.outputs._folder import image_files_warning

    folder = _open(target)
    report = write_report(folder, fmt=fmt)
    gone = image_files_warning(folder)
    if gone:
        _warn(f"{gone} ({report.name}'s image_file column names them)")
    # (the manifest keeps its order whichever format was just written: a make file with a csv
    # and a json target would otherwise rewrite manifest.json at every make)
    manifest = refresh_manifest(folder, written=[report])
    summary = summarize_jobs(folder.jobs, runs=folder.runs, price_per_image=folder.price_per_image)
    click.echo(printable(format_summary(summary), keep_newlines=True))  # failures quote the API
    click.echo(str(report))
    if manifest is not None:
        click.echo(str(manifest))
    return 0


@click.command("gallery", short_help="Write gallery.html: the grid in a browser, a filter per axis.")
@TARGET
@_drawn_again
def gallery_command(target: Path) -> int:
    """Write gallery.html: the grid in a browser, a filter per axis, click to enlarge.

    One self-contained file (no network); images are linked from thumbs/ and images/, so
    keep it in its folder.

    Example:

        seedream-pipe gallery outputs/demo && xdg-open outputs/demo/gallery.html
    """
    from seedream_pipe.outputs import refresh_manifest, write_gallery
    from seedream_pipe.outputs._folder import IMAGE_PRESENT, image_files_warning

    folder = _open(target)
    path = write_gallery(folder)
    gone = image_files_warning(folder)
    if gone:
        one = sum(state != IMAGE_PRESENT for state in folder.image_files.values()) == 1
        _warn(f"{gone} (the gallery marks {'it' if one else 'them'})")
    refresh_manifest(folder, written=[path])
    click.echo(str(path))
    return 0


COMMANDS: list[click.Command] = [sheet_command, report_command, gallery_command]
