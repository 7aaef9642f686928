"""Reading an output folder for the outputs: its jobs, its recipe as the runner recorded it, and
safe writes back into it.

Everything here works with no network and no recipe file: the runner records the recipe (as
written and resolved, its sheet settings and price) in the state's `meta` at every run start, so
`sheet DIR` and `report DIR` need only the folder. A folder written by an older or interrupted
run may lack some of it; every reader tolerates that.
"""

from __future__ import annotations

import contextlib
import filecmp
import functools
import os
import shlex
import stat
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from seedream_pipe.errors import NothingToShow, OutputError
from seedream_pipe.paths import fresh_temp, removed_on_error
from seedream_pipe.state import STATE_FILE, JobRecord, StateStore
from seedream_pipe.words import counted

if TYPE_CHECKING:
    from seedream_pipe.recipe import Recipe

#: Names of the files the outputs write into an output folder.
SHEET_STEM = "contact_sheet"
REPORT_STEM = "report"
REPORT_FORMATS: tuple[str, ...] = ("csv", "json", "parquet")
MANIFEST_NAME = "manifest.json"
GALLERY_NAME = "gallery.html"


@dataclass
class OutputFolder:
    """What the outputs need from one output folder, read once."""

    path: Path
    jobs: list[JobRecord]
    recipe_meta: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    #: The recipe file given on the command line, if any: its sheet settings and price win over
    #: the recorded ones (the manifest's record of the recipe stays the recorded one).
    recipe: Recipe | None = None

    def __repr__(self) -> str:
        # (the dataclass's would print every job with its signed URLs: pages, in a notebook)
        return f"<OutputFolder {str(self.path)!r}: {counted(len(self.jobs), 'job')}, {counted(len(self.runs), 'run')}>"

    @property
    def name(self) -> str:
        if self.recipe is not None:
            return str(self.recipe.name)
        return str(self.recipe_meta.get("name") or self.path.resolve().name)

    @property
    def sheet_settings(self) -> dict[str, Any]:
        """The recipe's `sheet:` settings as a plain dict (given recipe first, else recorded)."""
        if self.recipe is not None:
            sheet = self.recipe.sheet
            dumped = sheet.model_dump() if hasattr(sheet, "model_dump") else dict(sheet)
            return {k: v for k, v in dumped.items() if v is not None}
        recorded = self.recipe_meta.get("sheet")
        return dict(recorded) if isinstance(recorded, Mapping) else {}

    @property
    def price_per_image(self) -> float | None:
        price = (
            self.recipe.price_per_image
            if self.recipe is not None
            else self.recipe_meta.get("price_per_image")
        )
        return float(price) if isinstance(price, int | float) else None

    @functools.cached_property
    def image_files(self) -> dict[str, str]:
        """job_id -> `image_file_state` of every job with an image recorded (a stat each)."""
        states = {job.job_id: image_file_state(job, self.path) for job in self.jobs}
        return {job_id: state for job_id, state in states.items() if state is not None}

    @property
    def axis_names(self) -> list[str]:
        """Every axis of the jobs, in the planner's order (first seen in plan order)."""
        names: dict[str, None] = {}
        for job in self.jobs:
            for axis in job.axes:
                names.setdefault(axis, None)
        return list(names)


#: `image_file_state` values: the file is there at its recorded size, gone, or another size.
IMAGE_PRESENT, IMAGE_MISSING, IMAGE_CHANGED = "present", "missing", "changed"


def image_file_state(job: JobRecord, out_dir: Path) -> str | None:
    """Whether a job's image file is still on disk as downloaded, by one stat (no hashing):
    "present", "missing" (no file) or "changed" (another size than it was downloaded at);
    None for a job with no image recorded. A file changed at the same size reads as present:
    `run` compares sha256 and downloads again whatever differs."""
    if not job.image_path:
        return None
    try:
        found = (out_dir / job.image_path).stat()
    except OSError:
        return IMAGE_MISSING
    if not stat.S_ISREG(found.st_mode):
        return IMAGE_MISSING
    if job.bytes is not None and found.st_size != job.bytes:
        return IMAGE_CHANGED
    return IMAGE_PRESENT


def image_files_warning(folder: OutputFolder) -> str | None:
    """What to say when image files of done jobs are not on disk as downloaded; else None."""
    gone = [state for state in folder.image_files.values() if state != IMAGE_PRESENT]
    if not gone:
        return None
    how = ", ".join(
        f"{gone.count(state)} {state}" for state in (IMAGE_MISSING, IMAGE_CHANGED) if state in gone
    )
    if len(gone) == 1:
        return f"1 image file of a done job is not on disk as downloaded ({how}): run the recipe again to fetch it"
    return (
        f"{len(gone)} image files of done jobs are not on disk as downloaded ({how}): "
        "run the recipe again to fetch them"
    )


def edited_recipe_warning(folder: OutputFolder) -> str | None:
    """What to say when the recipe file given is not the one the folder's jobs follow (edited
    since its last run); else None. Its sheet settings and price still apply, but the jobs, and
    the manifest's record of the recipe, stay those of the run."""
    recorded = folder.recipe_meta.get("hash")
    if folder.recipe is None or not recorded or folder.recipe.hash == recorded:
        return None
    return (
        f"{folder.recipe.display} was edited since its last run: the outputs show the jobs of the "
        f"recipe that ran, and manifest.json keeps that recipe; run it to bring them up to date"
    )


def no_run_yet(out_dir: Path, run_args: list[str] | None, more: str = "") -> NothingToShow:
    """The error of a folder no run wrote into, with the command that makes it: `run_args`,
    what follows `seedream-pipe run` (None: no recipe known), quoted to paste as it is."""
    if out_dir.is_symlink() and not out_dir.exists():
        # (a link to nothing or to itself: `run` refuses to write through it, so the hint to
        # run into it first would only lead to that refusal)
        return NothingToShow(f"{out_dir}: a symbolic link to no folder (to nothing, or back to itself): "
                             "no run has written there, nor can one")
    return NothingToShow(f"{out_dir}: no run has written here yet ({_run_hint(run_args)}){more}")


def _run_hint(run_args: list[str] | None) -> str:
    if run_args is None:
        return "run a recipe into it first: seedream-pipe run RECIPE"
    return f"run it first: {shlex.join(['seedream-pipe', 'run', *run_args])}"


def open_output(
    out_dir: str | os.PathLike[str], *, recipe: Recipe | None = None, for_writing: bool = True
) -> OutputFolder:
    """Read an output folder; NothingToShow when no run ever wrote a job into it.

    The state file is checked for before opening it, because opening creates it: a sheet of a
    folder that was never run must not leave an empty database behind. With `for_writing`, a
    folder we may not write into is refused first, with that reason, rather than failing later
    on the state database's lock files with a vaguer one.
    """
    out_dir = Path(out_dir)  # (a notebook's "outputs/demo" as well)
    run_args = [str(recipe.path)] if recipe is not None else None
    if not (out_dir / STATE_FILE).is_file():
        raise no_run_yet(out_dir, run_args)
    if for_writing and not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(
            f"{out_dir}: the output folder is read-only; cannot write the sheet, report or "
            "gallery into it (make it writable, or copy the folder and run the command on the copy)"
        )
    with StateStore.for_reading(out_dir) as store:
        jobs = store.jobs()
        meta = store.get_meta("recipe", {})
        runs = store.runs()
    if not jobs:
        raise NothingToShow(f"{out_dir}: the state holds no jobs ({_run_hint(run_args)})")
    return OutputFolder(
        path=out_dir,
        jobs=jobs,
        recipe_meta=dict(meta) if isinstance(meta, Mapping) else {},
        runs=runs,
        recipe=recipe,
    )


#: Set by `keeping_unchanged()`: a file whose new bytes equal the old is left as it is.
_KEEP_UNCHANGED: ContextVar[bool] = ContextVar("keep_unchanged", default=False)


@contextlib.contextmanager
def keeping_unchanged() -> Iterator[None]:
    """Within this block, outputs whose contents would not change keep their files, dates and
    all, and outputs drawn anew over older ones keep the older ones' dates.

    For `seedream-pipe report|sheet|gallery DIR`, which draw a folder's outputs again without
    running anything: a report.csv (or a manifest.json listing a new sheet page) they rewrote
    with a new date made make take it as newer than a recipe edited since, and skip the run the
    edit needs. Only a run makes something new. `run` always writes anew: its outputs must be
    newer than its recipe after every run.
    """
    token = _KEEP_UNCHANGED.set(True)
    try:
        yield
    finally:
        _KEEP_UNCHANGED.reset(token)


def write_atomically(dest: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(out)` with a new temporary file beside `dest` open for writing (binary), then
    rename it over `dest`, so a reader never sees half a file.

    Any OSError (read-only folder, a directory in the way, a full disk) becomes an OutputError
    naming the file; whatever goes wrong, the temporary file is removed.
    """
    try:
        tmp, out = fresh_temp(dest.parent, f".{dest.name}.", ".tmp")
        with removed_on_error(tmp):  # (parquet without pyarrow, Ctrl-C: no temporary file left either)
            with out:
                write(out)
                out.flush()
                before = _earlier_file(dest) if _KEEP_UNCHANGED.get() else None
                if before is not None:  # (drawn again; see keeping_unchanged)
                    if out.tell() == before.st_size and _same_bytes(tmp, dest):
                        tmp.unlink()
                        return dest
                    # as no run made anything new: the old file's date
                    os.utime(out.fileno(), ns=(before.st_atime_ns, before.st_mtime_ns))
            os.replace(tmp, dest)
    except OSError as exc:
        raise OutputError(f"{dest}: cannot write: {exc.strerror or exc}") from exc
    return dest


def _same_bytes(new: Path, old: Path) -> bool:
    try:
        return filecmp.cmp(new, old, shallow=False)
    except OSError:  # unreadable: write it anew
        return False


def _earlier_file(path: Path) -> os.stat_result | None:
    """The file an output replaces, if it is a regular one (not a link, nor missing)."""
    try:
        found = path.lstat()
    except OSError:
        return None
    return found if stat.S_ISREG(found.st_mode) else None


def keeps_unchanged() -> bool:
    """Whether outputs are being drawn again inside `keeping_unchanged()`."""
    return _KEEP_UNCHANGED.get()


def write_text(dest: Path, text: str) -> Path:
    return write_atomically(dest, lambda out: out.write(text.encode("utf-8")))


def iso_utc(timestamp: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with milliseconds, e.g. 2026-11-23T20:04:24.123Z."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
