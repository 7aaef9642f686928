"""The output folder's guards: one run at a time (its lock), nothing written through a symbolic
link or into someone else's folder, no jobs of another API taken as done; stale temporary
outputs swept."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from seedream_pipe.config import api_host, is_loopback
from seedream_pipe.errors import FolderBusy, OutputError, UsageError, printable
from seedream_pipe.paths import IMAGES_DIR, THUMBS_DIR, no_folder
from seedream_pipe.state import STATE_FILE, StateStore
from seedream_pipe.words import option, some_of

#: How old a temporary output file (`.report.csv.<hex>.tmp`) must be for a run to take it as
#: left by a process killed while writing, and remove it.
STALE_OUTPUT_S = 3600


LOCK_FILE = ".run.lock"
#: What a run opens or writes into inside its folder other than by renaming a finished file
#: into place: none of these may be a symbolic link, or the run would write where it points.
_OPENED_IN_PLACE = (LOCK_FILE, STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm", IMAGES_DIR, THUMBS_DIR)


def refuse_links(out_dir: Path) -> None:
    """Raise OutputError when a file or folder a run writes into is a symbolic link: a folder
    shared with others (or unpacked from an archive) could point it at ~/.bashrc."""
    linked = [name for name in _OPENED_IN_PLACE if (out_dir / name).is_symlink()]
    if linked:
        raise OutputError(
            f"{out_dir}: {', '.join(linked)} {'is a symbolic link' if len(linked) == 1 else 'are symbolic links'}; "
            f"seedream-pipe writes only into its own files and folders: remove the link or use another {option('--out', 'out_dir')}"
        )


def refuse_foreign(out_dir: Path) -> None:
    """Raise OutputError when a folder a first run would write into already holds files of
    someone else's: the run would add its own and replace any report.csv or gallery.html."""
    if (out_dir / STATE_FILE).exists():
        return
    theirs = sorted(entry.name for entry in out_dir.iterdir() if not _as_good_as_empty(entry.name))
    if theirs:
        raise OutputError(
            f"{out_dir}: holds {some_of(theirs)} but no {STATE_FILE}, so it is no seedream-pipe output folder "
            f"(or one whose state was deleted); give {option('--out', 'out_dir')} a new or empty folder, or empty this one"
        )


def refuse_unwritable(out_dir: Path) -> None:
    """Raise OutputError when a run could not make `out_dir` or write in it (a path below a
    file, a read-only disk, no permission), found without writing: the dry run says what the
    run would meet rather than a plan and a cost it would never get to."""
    existing = out_dir
    # (a link to nothing, or a link loop, is there too: the run's mkdir refuses it)
    while not existing.exists() and not existing.is_symlink() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{out_dir}: cannot create the output folder: {existing} is {no_folder(existing)}")
    if not os.access(existing, os.W_OK | os.X_OK):
        doing = "write in the output folder" if existing == out_dir else f"create the output folder in {existing}"
        raise OutputError(f"{out_dir}: cannot {doing}: it is read-only, or not yours to write in")


def _as_good_as_empty(name: str) -> bool:
    """A file a new output folder may hold: a placeholder (`.gitkeep`), a file manager's, or
    what a run cut short before its state left (its lock, a temporary file). Other hidden
    files are someone's (`.bashrc`: `output: ~` is a home folder, not an empty one)."""
    return name in (LOCK_FILE, ".gitkeep", ".keep", ".gitignore", ".DS_Store") or (
        name.startswith(".") and name.endswith((".tmp", ".part"))
    )


@contextlib.contextmanager
def folder_lock(out_dir: Path, *, busy: str = "wait for it or stop it first") -> Iterator[None]:
    """One run per output folder at a time: two runs of the same recipe would both submit the
    jobs still planned, and pay twice. The OS drops the lock when the process dies, even by
    SIGKILL, so a crashed run never blocks the next one. `busy` says what to do when the folder
    is in use ("{pid}" in it is the holder's). Whoever writes in a folder takes this lock first,
    so it is also where a folder whose files are links is refused (see refuse_links)."""
    refuse_links(out_dir)
    path = out_dir / LOCK_FILE
    try:
        # (O_NOFOLLOW: a link put there after the check above is refused all the same)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        handle = open(fd, "a+", encoding="utf-8", errors="replace")  # noqa: SIM115 - held for the whole run
    except OSError as exc:  # a read-only folder, say: nothing was written, so nothing is lost
        raise OutputError(f"{out_dir}: cannot write in the output folder: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise folder_busy(out_dir, handle.read(32).strip(), busy) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def folder_busy(out_dir: Path, holder: str, busy: str) -> FolderBusy:
    """The error of a folder whose lock `holder` (a pid, as its lock file says) holds; `busy`
    says what to do ("{pid}" in it is the holder's)."""
    pid = holder if holder.isdigit() else "<its pid>"
    return FolderBusy(f"{out_dir} is in use by {holder_of(holder)}; {busy.format(pid=pid)}")


def holder_of(pid: str) -> str:
    """Who holds a folder's lock, in words: "another run (pid 123)", and which one when it is
    this very process (a notebook's run started earlier and still going)."""
    if not pid.isdigit():  # (a lock file it had no time to write its pid in)
        return "another run"
    if pid == str(os.getpid()):
        return f"another run (pid {pid}, this same process: a run started earlier here, still going)"
    return f"another run (pid {pid})"


def run_in_progress(out_dir: Path) -> str | None:
    """The pid of a run at work in the folder now, or None. Reads only: `--dry-run` and
    `status` may look at a folder they cannot write."""
    try:
        with open(out_dir / LOCK_FILE, encoding="utf-8", errors="replace") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                # (its pid, as the run wrote it; anything else, from a file anyone can write, is
                # not shown: no escape codes to the terminal, no megabytes read)
                pid = handle.read(32).strip()
                return pid if pid.isdigit() else "unknown"
    except OSError:  # no lock file: no run ever held one here
        return None
    return None


def at_work_here(out_dir: Path) -> str | None:
    """"a run (pid 123) is at work in DIR now", for a command that only reads or draws a folder a
    run may be changing; None when none is."""
    holder = run_in_progress(out_dir)
    if holder is None:
        return None
    pid = f" (pid {holder})" if holder.isdigit() else ""
    return f"a run{pid} is at work in {out_dir} now"


def sweep_stale_outputs(out_dir: Path, now: float) -> None:
    """Remove the temporary outputs (`.report.csv.<hex>.tmp`) of a process killed while it wrote
    them, those an hour old: `sheet DIR` takes no lock, and one at work may be writing now."""
    for stale in out_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if stale.is_file() and now - stale.lstat().st_mtime > STALE_OUTPUT_S:
                stale.unlink()


def _reached_its_api(run: Mapping[str, Any]) -> bool:
    """Whether a run got anything from its API host: a job accepted, a submit of unknown outcome,
    a poll or a download. A run that never reached its host (a typo in --base-url) leaves nothing
    another host's run could take as done. A run killed before its summary, or recorded by an
    older version, is taken to have reached it."""
    summary = run.get("summary")
    if not isinstance(summary, Mapping) or "accepted" not in summary:
        return True
    return any(summary.get(key) for key in ("accepted", "unknown_submits", "polls", "result_reads", "downloads"))


#: The meta key of the API the folder's last run went to: {"base_url", "built_in_simulator"}.
LAST_API = "last_api"


def go_on_with(store: StateStore) -> str:
    """The option that sends a run to the simulator this folder's last run used: `--sim` for
    the built-in one (and for folders of older versions, which did not say), else the base URL
    of the `seedream-pipe sim` it ran against, whose jobs only that simulator knows."""
    last = store.get_meta(LAST_API)
    if isinstance(last, dict) and last.get("built_in_simulator") is False and isinstance(last.get("base_url"), str):
        # (only a simulator's, on this machine: a state is just a file, and one made to name
        # another host would have the user send the token there)
        with contextlib.suppress(ValueError):
            if is_loopback(api_host(last["base_url"])):
                return f"--base-url {printable(last['base_url'])}"
    return "--sim"


def check_same_api(store: StateStore, out: Path, host: str) -> None:
    """Refuse a folder whose jobs went to another API host (UsageError).

    E.g. `run --sim`, then the real API: the simulator's images would count as done.
    """
    earlier = {run["api_host"] for run in store.runs() if run["api_host"] and _reached_its_api(run)}
    if earlier and host not in earlier:
        hosts = ", ".join(sorted(earlier))
        if all(is_loopback(h) for h in earlier):  # (plain http goes to this machine only: a simulator)
            raise UsageError(
                f"{out} holds the jobs of a run against {hosts}, a simulator on this machine; this "
                f"run goes to {host} and would take them as done. To go on with the simulator, "
                f"{option(f'add {go_on_with(store)}', 'pass its ApiSettings as api=')}; for {host}, give the run its "
                f"own folder with {option('--out', 'out_dir')}, or delete {out}"
            )
        raise UsageError(
            f"{out} holds the jobs of a run against {hosts}; this run goes to "
            f"{host} and would take them as done. Give it its own folder with {option('--out', 'out_dir')}, or delete "
            f"{out} to start afresh"
        )
