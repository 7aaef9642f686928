"""The state of a sweep: one SQLite file (`state.sqlite`) per output folder.

The runner writes every job transition here *before* the network call that depends on it, so a
crash at any instant loses nothing that was paid for: a job with a request_id is polled on the
next run, never submitted again. The outputs (sheet, report, manifest, gallery) read it back with
no network at all.

The store owns its schema. Each change is a small named migration function, registered in order
by `@migration`, applied in a transaction together with its record in `migrations`; old
migrations are never edited, only new ones added (the way simonw/llm does it).

WAL mode with synchronous=NORMAL: durable against the process dying (Ctrl-C, SIGKILL, a crash),
which is what resume needs; a power cut could lose the last few commits. Two kinds of commit are
synced to disk all the same (synchronous=FULL for that commit, about 0.15 ms): the one before a
submit and the one that records its request id. Undone by a power cut, the first would let the
next run send the job again with nothing to say it may have been paid for, and the second would
send it again (flagged) when it could have been polled.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from seedream_pipe.errors import NothingToShow, StateError
from seedream_pipe.jobs import Job
from seedream_pipe.paths import IMAGES_DIR, THUMBS_DIR, folder_file
from seedream_pipe.words import option, some_of

STATE_FILE = "state.sqlite"

#: Every state a job can be in, in lifecycle order.
JOB_STATES: tuple[str, ...] = (
    "planned",
    "submitting",  # the body is about to be sent: outcome unknown if we crash now
    "submit_unknown",  # the POST timed out or lost its connection after the body was sent
    "submitted",  # the API answered with a request_id
    "in_queue",
    "in_progress",
    "completed",  # the API says done; the image is not yet on disk
    "downloaded",  # image on disk, checked and thumbnailed: done
    "failed",
    "cancelled",
)
#: States a run never leaves on its own.
FINAL_STATES = frozenset({"downloaded", "failed", "cancelled"})
#: States in which the job has a request_id and must be polled, never submitted again.
REMOTE_STATES = frozenset({"submitted", "in_queue", "in_progress", "completed"})
#: States of a job the API took and has not finished: billed when it does (unless cancelled).
IN_FLIGHT_STATES = ("submitted", "in_queue", "in_progress")

Clock = Callable[[], float]

# --- migrations --------------------------------------------------------------------------------

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    """Register a migration; they run in the order they are defined."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    timestamp_columns = ",\n".join(f"    {state}_at REAL" for state in JOB_STATES)
    db.execute(
        f"""
        CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY,
            job_index INTEGER NOT NULL,
            model TEXT NOT NULL,
            axes TEXT NOT NULL,            -- JSON: axis -> label
            axis_values TEXT NOT NULL,     -- JSON: axis -> full value
            inputs TEXT NOT NULL,          -- JSON: the exact request body
            prompt TEXT NOT NULL,
            resolution TEXT,
            repeat INTEGER NOT NULL DEFAULT 0,
            in_plan INTEGER NOT NULL DEFAULT 1,  -- 0 once a recipe edit drops the job
            state TEXT NOT NULL DEFAULT 'planned',
            request_id TEXT,
            status_url TEXT,
            result_url TEXT,
            cancel_url TEXT,
            queue_position INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,   -- submits sent for this job
            polls INTEGER NOT NULL DEFAULT 0,
            retries INTEGER NOT NULL DEFAULT 0,
            possible_duplicate INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            output_urls TEXT,              -- JSON list of every http(s) URL in the result's output
            image_url TEXT,
            image_path TEXT,               -- relative to the output folder
            thumb_path TEXT,               -- relative to the output folder
            sha256 TEXT,
            width INTEGER,
            height INTEGER,
            bytes INTEGER,
            server_created_at TEXT,
            server_finished_at TEXT,
            updated_at REAL,
{timestamp_columns}
        )
        """
    )
    db.execute("CREATE INDEX jobs_state ON jobs(state)")
    db.execute("CREATE INDEX jobs_index ON jobs(job_index)")
    db.execute(
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            run_id INTEGER,
            job_id TEXT,
            kind TEXT NOT NULL,
            state TEXT,
            detail TEXT                    -- JSON
        )
        """
    )
    db.execute("CREATE INDEX events_job ON events(job_id)")
    db.execute(
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            started_at REAL NOT NULL,
            finished_at REAL,
            recipe_path TEXT,
            recipe_hash TEXT,
            api_host TEXT,
            tool_version TEXT,
            exit_code INTEGER,
            summary TEXT                   -- JSON
        )
        """
    )
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


# --- records -----------------------------------------------------------------------------------


@dataclass(slots=True)
class JobRecord:
    """One row of `jobs`, decoded. Timestamps are Unix seconds (float) or None."""

    job_id: str
    job_index: int
    model: str
    axes: dict[str, str]
    axis_values: dict[str, Any]
    inputs: dict[str, Any]
    prompt: str
    resolution: str | None
    repeat: int
    in_plan: bool
    state: str
    request_id: str | None
    status_url: str | None
    result_url: str | None
    cancel_url: str | None
    queue_position: int | None
    attempts: int
    polls: int
    retries: int
    possible_duplicate: bool
    error: str | None
    output_urls: list[str]
    image_url: str | None
    image_path: str | None
    thumb_path: str | None
    sha256: str | None
    width: int | None
    height: int | None
    bytes: int | None
    server_created_at: str | None
    server_finished_at: str | None
    updated_at: float | None
    planned_at: float | None
    submitting_at: float | None
    submit_unknown_at: float | None
    submitted_at: float | None
    in_queue_at: float | None
    in_progress_at: float | None
    completed_at: float | None
    downloaded_at: float | None
    failed_at: float | None
    cancelled_at: float | None

    @property
    def started_at(self) -> float | None:
        """When the job left the queue (first seen in progress)."""
        return self.in_progress_at

    @property
    def finished_at(self) -> float | None:
        """When the job finished (completed, failed or cancelled): the API's own time when it
        gave one that fits (after the submit, before this tool saw it), else when this tool saw
        it. A run stopped for an hour sees a job finish an hour late; the API's time is not."""
        seen = self.completed_at or self.failed_at or self.cancelled_at
        server = iso_seconds(self.server_finished_at)
        if seen is None or server is None or self.submitted_at is None:
            return seen
        return server if self.submitted_at <= server <= seen else seen

    @property
    def queue_s(self) -> float | None:
        return _span(self.submitted_at, self.started_at)

    @property
    def generation_s(self) -> float | None:
        return _span(self.started_at, self.finished_at if self.completed_at is not None else None)

    @property
    def latency_s(self) -> float | None:
        return _span(self.submitted_at, self.finished_at)


def iso_seconds(text: str | None) -> float | None:
    """An API's ISO 8601 time as Unix seconds; None when absent, not such a time, or with no
    time zone (whose clock would it be?)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


_JSON_COLUMNS = {"axes": dict, "axis_values": dict, "inputs": dict, "output_urls": list}
_BOOL_COLUMNS = {"in_plan", "possible_duplicate"}
#: File columns and the one folder each names a file in (what a state says is checked, not trusted).
_FOLDER_OF = {"image_path": IMAGES_DIR, "thumb_path": THUMBS_DIR}
_RECORD_FIELDS = [f.name for f in fields(JobRecord)]
#: Columns a caller may set through transition()/update(); identity columns come from the plan.
_WRITABLE = frozenset(_RECORD_FIELDS) - {"job_id", "state"}


def _decode(row: sqlite3.Row) -> JobRecord:
    values: dict[str, Any] = {}
    for name in _RECORD_FIELDS:
        value = row[name]
        if name in _JSON_COLUMNS:
            value = json.loads(value) if value else _JSON_COLUMNS[name]()
        elif name in _BOOL_COLUMNS:
            value = bool(value)
        elif name in _FOLDER_OF:
            value = folder_file(value, _FOLDER_OF[name])
        values[name] = value
    return JobRecord(**values)


def _encode(name: str, value: Any) -> Any:
    if name in _JSON_COLUMNS:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if name in _BOOL_COLUMNS:
        return int(bool(value))
    return value


def _damaged(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file itself is damaged (not a full disk, a lock, a permission)."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


# --- the store ---------------------------------------------------------------------------------


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes to the folder of `path`.

    A WAL database is read through its `-shm` index, which SQLite creates beside it; in a
    read-only folder it cannot. If no `-wal` file holds unmerged commits, the file alone is the
    whole state and can be read as immutable. Otherwise reading it would show an older state, so
    this refuses instead.
    """
    if not path.exists():
        raise sqlite3.OperationalError("no such file")
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.OperationalError:
        pass
    else:
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the file opens lazily
            return db
        except sqlite3.OperationalError:
            db.close()
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise sqlite3.OperationalError(
            "its folder is read-only and it holds commits not yet merged (a run was killed); "
            "copy the folder somewhere writable to read it"
        )
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)


def _refuse_emptied(out_dir: Path) -> None:
    """Raise StateError for a state.sqlite of 0 bytes in a folder that holds more than it.

    SQLite opens an empty file as a new database: the folder's jobs (and the record of what was
    paid for) would be gone without a word, and a run would submit every job again and write
    over the images. A 0-byte state alone in its folder is a first run cut short: fine.
    """
    path = out_dir / STATE_FILE
    try:
        if path.stat().st_size != 0:
            return
        others = sorted(
            entry.name for entry in out_dir.iterdir()
            if not entry.name.startswith(".") and not entry.name.startswith(STATE_FILE)
        )  # fmt: skip
    except OSError:
        return  # (no state yet, or a folder that cannot be listed: opening it says what is wrong)
    if others:
        raise StateError(
            f"{path}: is empty, but its folder holds {some_of(others)}: the record of its jobs (and of what was "
            f"paid for) is gone; restore state.sqlite from a copy, or give the run a new folder ({option('--out', 'out_dir')})"
        )


class StateStore:
    """The jobs, events and runs of one output folder.

    >>> store = StateStore(":memory:")
    >>> store.sync_plan(plan.jobs)
    >>> store.transition(job_id, "submitting")   # committed before the POST goes out
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock = time.time, read_only: bool = False) -> None:
        path = os.fspath(path)  # (str() of an os.PathLike other than Path need not be its path)
        self.path = Path(path) if path != ":memory:" else None
        self._clock = clock
        self.run_id: int | None = None
        try:
            # Autocommit mode: we open every transaction ourselves, so each commit is explicit.
            self._db = _connect_read_only(Path(path)) if read_only else sqlite3.connect(
                path, isolation_level=None, timeout=10.0
            )
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: cannot open the state database: {exc}") from exc
        try:
            self._db.row_factory = sqlite3.Row
            self._refuse_foreign()  # before anything below writes to the file
            if read_only:
                self._check_current()
            else:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self.migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StateError(f"{path}: cannot open the state database: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    def _refuse_foreign(self) -> None:
        """A database with tables but none of ours is someone else's: leave it exactly as it is."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "migrations" not in tables:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            # (met by run, status, cancel, sheet, report and gallery alike: the hint suits each,
            # not only run's --out)
            raise StateError(
                f"{self.path}: not a seedream-pipe state file (its tables: {shown}); left untouched: "
                "its folder is not the output folder of a seedream-pipe run (use one a run wrote, or "
                f"give a run a folder of its own: {option('--out', 'out_dir')})"
            )

    def _check_current(self) -> None:
        """Read-only: the schema must be this version's already, as nothing can be migrated."""
        if self._migrations_applied() != {name for name, _ in MIGRATIONS}:
            raise StateError(
                f"{self.path}: written by another version of seedream-pipe, and its folder is "
                "read-only, so it cannot be brought up to date; copy the folder somewhere writable"
            )

    @classmethod
    def for_output_dir(cls, out_dir: str | os.PathLike[str], *, clock: Clock = time.time) -> StateStore:
        """Open (creating if needed) the state of an output folder."""
        out_dir = Path(out_dir)
        _refuse_emptied(out_dir)
        return cls(out_dir / STATE_FILE, clock=clock)

    @classmethod
    def for_reading(cls, out_dir: str | os.PathLike[str], *, clock: Clock = time.time) -> StateStore:
        """Open the state of an output folder to read it: as `for_output_dir`, but read-only
        where the folder or file cannot be written (an archived run, a read-only mount), so that
        looking at a finished run never needs write access. A folder with no state yet raises
        NothingToShow: reading must not leave an empty state.sqlite behind."""
        out_dir = Path(out_dir)
        path = out_dir / STATE_FILE
        if not path.exists():
            raise NothingToShow(f"{out_dir}: no run here yet (no {STATE_FILE})")
        _refuse_emptied(out_dir)
        with suppress(OSError):
            if path.stat().st_size == 0:
                # A 0-byte state alone in its folder (a first run cut short before its first
                # commit) holds no jobs. Opened as a file, SQLite would take it for a new
                # database and the migrations would write the schema into it (some 49 kB),
                # though reading must write nothing. An empty state in memory reads the same.
                store = cls(":memory:", clock=clock)
                store.path = path
                return store
        writable = os.access(out_dir, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
        return cls(path, clock=clock, read_only=not writable)

    def __repr__(self) -> str:
        return f"<StateStore {self.path or ':memory:'}>"

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception. SQLite's own failures (a
        full disk, a file gone read-only) are StateError: exit 74, not a bug's 70."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._cannot_write(exc) from exc
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:  # (a failed COMMIT may have rolled back already)
                with suppress(sqlite3.DatabaseError):
                    self._db.execute("ROLLBACK")
            # (what the disk or the file refused: full, read-only, locked, an I/O error; a
            # constraint broken is a bug, and stays one)
            if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
                raise self._cannot_write(exc) from exc
            raise

    def _cannot_write(self, exc: sqlite3.Error) -> StateError:
        if _damaged(exc):
            return self._damaged(exc)
        return StateError(
            f"{self.path or ':memory:'}: cannot write the state: {exc} (free space, or make the folder "
            "writable, and run again: nothing committed before is lost)"
        )

    def _damaged(self, exc: sqlite3.Error) -> StateError:
        return StateError(
            f"{self.path or ':memory:'}: the state database is damaged ({exc}): its record of the jobs "
            "(and of what was paid for) cannot be read; restore state.sqlite from a copy, or give "
            f"the run a new folder ({option('--out', 'out_dir')})"
        )

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A read of the state: SQLite's own failures (a damaged file, a disk error) are
        StateError, exit 74 ('the state file cannot be read'), not a bug's 70."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError or isinstance(exc, sqlite3.OperationalError):
                if _damaged(exc):
                    raise self._damaged(exc) from exc
                raise StateError(f"{self.path or ':memory:'}: cannot read the state: {exc}") from exc
            raise

    # -- schema --

    def _migrations_applied(self) -> set[str]:
        with self._reading():
            return {row[0] for row in self._db.execute("SELECT name FROM migrations")}

    def migrate(self) -> list[str]:
        """Apply the migrations this database lacks; return their names."""
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        done = self._migrations_applied()
        known = {name for name, _ in MIGRATIONS}
        if done - known:
            raise StateError(
                f"{self.path}: written by a newer seedream-pipe "
                f"(unknown migrations: {', '.join(sorted(done - known))}); upgrade to read it"
            )
        applied = []
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            with self.transaction() as db:
                fn(db)
                db.execute(
                    "INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, self._clock())
                )
            applied.append(name)
        return applied

    # -- the plan --

    def sync_plan(self, jobs: Sequence[Job]) -> dict[str, int]:
        """Make the stored jobs match a fresh plan, matched by job_id.

        New jobs are inserted as `planned`; jobs already known keep their state and history (only
        their index and labels follow the plan); jobs no longer planned are kept, with in_plan=0,
        because what was paid for is never thrown away. Returns counts: new, existing, dropped
        (all jobs not planned now), left (those of them the plan before had: this change's).
        """
        now = self._clock()
        planned_ids = {job.job_id for job in jobs}
        with self.transaction() as db:
            rows = db.execute("SELECT job_id, in_plan FROM jobs").fetchall()
            known = {job_id for job_id, _ in rows}
            planned_before = {job_id for job_id, in_plan in rows if in_plan}
            db.execute("UPDATE jobs SET in_plan = 0")
            new_rows = []
            for job in jobs:
                identity = (
                    job.index,
                    json.dumps(dict(job.axes), ensure_ascii=False),
                    json.dumps(dict(job.values), ensure_ascii=False, default=str),
                )
                if job.job_id in known:
                    db.execute(
                        "UPDATE jobs SET job_index = ?, axes = ?, axis_values = ?, in_plan = 1 "
                        "WHERE job_id = ?",
                        (*identity, job.job_id),
                    )
                else:
                    new_rows.append(
                        (
                            job.job_id,
                            *identity,
                            job.model,
                            json.dumps(dict(job.inputs), ensure_ascii=False, sort_keys=True),
                            job.prompt,
                            job.resolution,
                            job.repeat,
                            now,
                            now,
                        )
                    )
            db.executemany(
                "INSERT INTO jobs (job_id, job_index, axes, axis_values, model, inputs, prompt, "
                "resolution, repeat, in_plan, state, planned_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'planned', ?, ?)",
                new_rows,
            )
        return {
            "new": len(new_rows),
            "existing": len(planned_ids & known),
            "dropped": len(known - planned_ids),
            "left": len(planned_before - planned_ids),
        }

    # -- reading --

    def get(self, job_id: str) -> JobRecord | None:
        with self._reading():
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _decode(row)

    def jobs(
        self, *, in_plan: bool | None = True, states: Iterable[str] | None = None
    ) -> list[JobRecord]:
        """Jobs in plan order; by default only those in the latest plan."""
        sql = "SELECT * FROM jobs"
        where: list[str] = []
        args: list[Any] = []
        if in_plan is not None:
            where.append("in_plan = ?")
            args.append(int(in_plan))
        if states is not None:
            wanted = list(states)
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            args.extend(wanted)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY in_plan DESC, job_index, job_id"
        with self._reading():
            return [_decode(row) for row in self._db.execute(sql, args)]

    def counts(self, *, in_plan: bool | None = True) -> dict[str, int]:
        """Number of jobs per state (every state present, zeros included)."""
        sql = "SELECT state, COUNT(*) FROM jobs"
        args: tuple[Any, ...] = ()
        if in_plan is not None:
            sql += " WHERE in_plan = ?"
            args = (int(in_plan),)
        with self._reading():
            found = dict(self._db.execute(sql + " GROUP BY state", args).fetchall())
        return {state: int(found.get(state, 0)) for state in JOB_STATES}

    def events(self, job_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM events"
        args: tuple[Any, ...] = ()
        if job_id is not None:
            sql += " WHERE job_id = ?"
            args = (job_id,)
        with self._reading():
            return [
                {**dict(row), "detail": json.loads(row["detail"]) if row["detail"] else None}
                for row in self._db.execute(sql + " ORDER BY id", args)
            ]

    # -- writing: every call commits before it returns --

    def transition(
        self, job_id: str, state: str, *, detail: Mapping[str, Any] | None = None, **fields: Any
    ) -> None:
        """Move a job to `state`, stamp `<state>_at`, set `fields`, log an event, and commit."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        now = self._clock()
        values = {**fields, f"{state}_at": now}
        durable = state == "submitting" or fields.get("request_id") is not None
        with self._synced(durable), self.transaction() as db:
            self._update(db, job_id, values, state=state, now=now)
            self._event(db, job_id, "state", state, detail, now)

    @contextmanager
    def _synced(self, durable: bool) -> Iterator[None]:
        """The commit inside is on disk before it returns, when `durable` (see the module's doc)."""
        if not durable or self._db.in_transaction:  # (a pragma cannot change inside one)
            yield
            return
        self._db.execute("PRAGMA synchronous=FULL")  # (outside a transaction: a pragma of the connection)
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

    def update(self, job_id: str, *, bump: Iterable[str] = (), **fields: Any) -> None:
        """Set fields (and add 1 to each column in `bump`) without a state change; commits."""
        with self.transaction() as db:
            self._update(db, job_id, fields, bump=tuple(bump), now=self._clock())

    def add_event(
        self, kind: str, *, job_id: str | None = None, detail: Mapping[str, Any] | None = None
    ) -> None:
        with self.transaction() as db:
            self._event(db, job_id, kind, None, detail, self._clock())

    def _update(
        self,
        db: sqlite3.Connection,
        job_id: str,
        values: Mapping[str, Any],
        *,
        state: str | None = None,
        bump: tuple[str, ...] = (),
        now: float,
    ) -> None:
        unknown = (set(values) | set(bump)) - _WRITABLE
        if unknown:
            raise ValueError(f"not a writable job column: {', '.join(sorted(unknown))}")
        assignments = [f"{name} = ?" for name in values]
        args = [_encode(name, value) for name, value in values.items()]
        assignments += [f"{name} = {name} + 1" for name in bump]
        if state is not None:
            assignments.append("state = ?")
            args.append(state)
        assignments.append("updated_at = ?")
        args.append(now)
        cursor = db.execute(
            f"UPDATE jobs SET {', '.join(assignments)} WHERE job_id = ?", (*args, job_id)
        )
        if cursor.rowcount != 1:
            raise StateError(f"no job {job_id!r} in {self}")

    def _event(
        self,
        db: sqlite3.Connection,
        job_id: str | None,
        kind: str,
        state: str | None,
        detail: Mapping[str, Any] | None,
        now: float,
    ) -> None:
        db.execute(
            "INSERT INTO events (at, run_id, job_id, kind, state, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (
                now,
                self.run_id,
                job_id,
                kind,
                state,
                json.dumps(dict(detail), ensure_ascii=False, default=str) if detail else None,
            ),
        )

    # -- runs and metadata --

    def start_run(self, **info: Any) -> int:
        """Record the start of a run; later events carry its id."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (started_at, recipe_path, recipe_hash, api_host, tool_version) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    self._clock(),
                    info.get("recipe_path"),
                    info.get("recipe_hash"),
                    info.get("api_host"),
                    info.get("tool_version"),
                ),
            )
        self.run_id = int(cursor.lastrowid or 0)
        return self.run_id

    def finish_run(self, *, exit_code: int, summary: Mapping[str, Any] | None = None) -> None:
        if self.run_id is None:
            return
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, exit_code = ?, summary = ? WHERE id = ?",
                (
                    self._clock(),
                    exit_code,
                    json.dumps(dict(summary or {}), ensure_ascii=False, default=str),
                    self.run_id,
                ),
            )

    def runs(self) -> list[dict[str, Any]]:
        with self._reading():
            return [
                {**dict(row), "summary": json.loads(row["summary"]) if row["summary"] else None}
                for row in self._db.execute("SELECT * FROM runs ORDER BY id")
            ]

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value, ensure_ascii=False, default=str)),
            )

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._reading():
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])
