"""The state store: its schema, migrations, plan sync and transitions."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from seedream_pipe.errors import NothingToShow, StateError
from seedream_pipe.jobs import Job
from seedream_pipe.state import JOB_STATES, MIGRATIONS, StateStore


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def make_job(n: int, prompt: str = "a cat") -> Job:
    return Job(
        job_id=f"job{n:03d}",
        index=n,
        axes={"subject": f"s{n}"},
        values={"subject": f"subject {n}"},
        inputs={"prompt": f"{prompt} {n}", "resolution": "1K"},
        model="bytedance/seedream-4-0/text-to-image",
    )


def test_fresh_database_has_every_migration_and_expected_columns(tmp_path: Path) -> None:
    store = StateStore.for_output_dir(tmp_path)
    db = sqlite3.connect(tmp_path / "state.sqlite")
    applied = [row[0] for row in db.execute("SELECT name FROM migrations ORDER BY rowid")]
    assert applied == [name for name, _ in MIGRATIONS]
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for state in JOB_STATES:
        assert f"{state}_at" in columns
    assert {"job_id", "request_id", "attempts", "polls", "sha256", "width", "height"} <= columns
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.migrate() == []  # idempotent
    store.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    StateStore.for_output_dir(tmp_path).close()
    db = sqlite3.connect(tmp_path / "state.sqlite")
    db.execute("INSERT INTO migrations VALUES ('m999_future', 0)")
    db.commit()
    with pytest.raises(StateError, match="newer seedream-pipe"):
        StateStore.for_output_dir(tmp_path)


def test_someone_elses_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("INSERT INTO invoices VALUES (1, 9.5)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match=r"not a seedream-pipe state file .*invoices.*left untouched"):
        StateStore.for_output_dir(tmp_path)
    assert path.read_bytes() == before  # no migrations table, no switch to WAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.sqlite"]


def test_a_file_that_is_not_sqlite_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="cannot open"):
        StateStore.for_output_dir(tmp_path)


def test_sync_plan_keeps_history_and_marks_dropped_jobs(tmp_path: Path) -> None:
    clock = FakeClock()
    store = StateStore.for_output_dir(tmp_path, clock=clock)
    assert store.sync_plan([make_job(1), make_job(2)]) == {"new": 2, "existing": 0, "dropped": 0, "left": 0}
    store.transition("job001", "submitted", request_id="r-1")

    # The recipe was edited: job 2 dropped, job 3 added, job 1 moved to index 5.
    moved = make_job(1)
    moved = Job(**{**{f: getattr(moved, f) for f in moved.__slots__}, "index": 5})
    assert store.sync_plan([moved, make_job(3)]) == {"new": 1, "existing": 1, "dropped": 1, "left": 1}
    # planned again as it is: job 2 is still dropped, but it left the plan before this change
    assert store.sync_plan([moved, make_job(3)]) == {"new": 0, "existing": 2, "dropped": 1, "left": 0}

    planned = store.jobs()
    assert [(r.job_id, r.job_index, r.state) for r in planned] == [
        ("job003", 3, "planned"),
        ("job001", 5, "submitted"),
    ]
    assert planned[1].request_id == "r-1"
    everything = store.jobs(in_plan=None)
    assert {r.job_id for r in everything} == {"job001", "job002", "job003"}
    assert store.counts()["planned"] == 1
    store.close()


def test_a_jobs_finish_is_the_apis_time_when_it_fits_not_when_a_later_run_saw_it(tmp_path: Path) -> None:
    # A job that finished while the run was stopped for a minute got a minute more latency in
    # report.csv and the summary's percentiles: the time the next run looked.
    clock = FakeClock(100.0)
    store = StateStore.for_output_dir(tmp_path, clock=clock)
    store.sync_plan([make_job(1), make_job(2, "a dog"), make_job(3, "an owl")])
    for job_id in ("job001", "job002", "job003"):
        store.transition(job_id, "submitted", request_id=job_id)
    clock.now = 102.0
    store.transition("job001", "in_progress")
    clock.now = 170.0  # seen a minute after the API finished them (at 105 s)
    finished = datetime.fromtimestamp(105.0, UTC).isoformat().replace("+00:00", "Z")
    store.transition("job001", "completed", server_finished_at=finished)
    store.transition("job002", "failed", server_finished_at=finished)
    # a clock the API keeps far off (after this tool saw it) is not taken: the time seen stands
    store.transition("job003", "completed", server_finished_at="2999-01-01T00:00:00Z")
    one, two, three = (store.get(j) for j in ("job001", "job002", "job003"))
    assert one and two and three
    assert (one.finished_at, one.latency_s, one.generation_s) == (105.0, 5.0, 3.0)
    assert (two.finished_at, two.latency_s, two.generation_s) == (105.0, 5.0, None)
    assert (three.finished_at, three.latency_s) == (170.0, 70.0)
    store.close()


def test_transition_stamps_time_logs_event_and_survives_reopen(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    store = StateStore.for_output_dir(tmp_path, clock=clock)
    store.sync_plan([make_job(1)])
    store.start_run(recipe_path="r.yaml", api_host="127.0.0.1")
    store.transition("job001", "submitting")
    clock.now = 101.0
    store.transition("job001", "submitted", request_id="abc", detail={"http": 200})
    clock.now = 103.5
    store.transition("job001", "in_progress")
    clock.now = 110.0
    store.transition("job001", "completed", output_urls=["http://x/1.png"])
    store.update("job001", bump=["polls"])
    store.close()

    again = StateStore.for_output_dir(tmp_path)
    record = again.get("job001")
    assert record is not None
    assert (record.state, record.request_id, record.output_urls) == (
        "completed",
        "abc",
        ["http://x/1.png"],
    )
    assert record.polls == 1
    assert (record.submitted_at, record.started_at, record.finished_at) == (101.0, 103.5, 110.0)
    assert (record.queue_s, record.generation_s, record.latency_s) == (2.5, 6.5, 9.0)
    kinds = [(e["kind"], e["state"]) for e in again.events("job001")]
    assert kinds == [
        ("state", "submitting"),
        ("state", "submitted"),
        ("state", "in_progress"),
        ("state", "completed"),
    ]
    assert again.events("job001")[1]["detail"] == {"http": 200}
    assert again.events("job001")[0]["run_id"] == 1
    again.close()


def test_the_commit_before_a_submit_and_the_one_of_its_request_id_are_synced_to_disk(tmp_path: Path) -> None:
    # With synchronous=NORMAL alone, a power cut could undo the 'submitting' commit, and the
    # next run would send the job again with nothing saying it may have been paid for.
    store = StateStore.for_output_dir(tmp_path)
    store.sync_plan([make_job(1)])
    store.start_run(recipe_path="r.yaml", api_host="127.0.0.1")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)

    def synced_commits() -> list[str]:
        """The levels each COMMIT of the statements so far was made at."""
        level, levels = "NORMAL", []
        for text in statements:
            if text.startswith("PRAGMA synchronous="):
                level = text.removeprefix("PRAGMA synchronous=")
            elif text == "COMMIT":
                levels.append(level)
        statements.clear()
        return levels

    store.transition("job001", "submitting")
    assert synced_commits() == ["FULL"]
    store.transition("job001", "submitted", request_id="abc")
    assert synced_commits() == ["FULL"]
    store.transition("job001", "in_progress")
    store.update("job001", bump=["polls"])
    assert synced_commits() == ["NORMAL", "NORMAL"]
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # (NORMAL again)
    store.close()


def test_a_synced_transition_inside_an_open_transaction_fails_as_any_other_does(tmp_path: Path) -> None:
    # The pragma cannot change inside a transaction: sqlite3's own OperationalError escaped
    # (exit 70, "a bug"), where every other transition there is a StateError.
    store = StateStore.for_output_dir(tmp_path)
    store.sync_plan([make_job(1)])
    store._db.execute("BEGIN")
    with pytest.raises(StateError):
        store.transition("job001", "submitting")
    store._db.execute("ROLLBACK")
    store.close()


def test_unknown_state_and_column_are_refused(tmp_path: Path) -> None:
    store = StateStore(":memory:")
    store.sync_plan([make_job(1)])
    with pytest.raises(ValueError, match="unknown job state"):
        store.transition("job001", "exploded")
    with pytest.raises(ValueError, match="not a writable job column"):
        store.update("job001", **{"state; DROP TABLE jobs": 1})
    with pytest.raises(StateError, match="no job"):
        store.transition("nope", "failed")
    assert store.get("job001") is not None


def test_runs_and_meta_round_trip() -> None:
    store = StateStore(":memory:")
    run_id = store.start_run(recipe_path="demo.yaml", recipe_hash="h", tool_version="0.1.0")
    store.finish_run(exit_code=0, summary={"downloaded": 8})
    store.set_meta("recipe", {"name": "demo"})
    assert store.get_meta("recipe") == {"name": "demo"}
    assert store.get_meta("missing", 7) == 7
    (run,) = store.runs()
    assert (run["id"], run["exit_code"], run["summary"]) == (run_id, 0, {"downloaded": 8})


def _sqlite_cannot_open_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a read-only folder does to `mode=ro` on a WAL file (SQLite cannot make its -shm):
    simulated, since the tests may run as root, whom permissions do not stop."""
    real = sqlite3.connect

    def connect(target: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        if "mode=ro" in str(target):
            raise sqlite3.OperationalError("unable to open database file")
        return real(target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite3, "connect", connect)


def test_a_read_only_folder_is_read_without_writing_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with StateStore.for_output_dir(tmp_path) as store:
        store.sync_plan([make_job(1), make_job(2)])
        store.transition("job001", "submitting")
    before = sorted(p.name for p in tmp_path.iterdir())
    _sqlite_cannot_open_read_only(monkeypatch)
    monkeypatch.setattr("os.access", lambda *args, **kwargs: False)  # the folder is read-only
    with StateStore.for_reading(tmp_path) as store:
        assert store.counts()["submitting"] == 1 and store.counts()["planned"] == 1
        with pytest.raises(StateError, match="cannot write the state: attempt to write a readonly database"):
            store.transition("job002", "submitting")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no -wal, no -shm made


def test_a_read_only_folder_with_unmerged_commits_is_refused_not_read_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = StateStore.for_output_dir(tmp_path)  # left open, as by a run killed mid-way
    writer.sync_plan([make_job(1)])
    assert (tmp_path / "state.sqlite-wal").stat().st_size > 0
    _sqlite_cannot_open_read_only(monkeypatch)
    monkeypatch.setattr("os.access", lambda *args, **kwargs: False)
    with pytest.raises(StateError, match="commits not yet merged"):
        StateStore.for_reading(tmp_path)
    writer.close()


def test_reading_a_writable_folder_opens_it_as_usual(tmp_path: Path) -> None:
    with StateStore.for_output_dir(tmp_path) as store:
        store.sync_plan([make_job(1)])
    with StateStore.for_reading(tmp_path) as store:
        assert store.counts()["planned"] == 1


def test_a_state_is_opened_at_the_path_any_path_like_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Spot:  # an os.PathLike other than Path: its str() is no path
        def __init__(self, path: Path) -> None:
            self.path = path

        def __fspath__(self) -> str:
            return str(self.path)

    monkeypatch.chdir(tmp_path)  # (where the str() of it would have made a file)
    with StateStore(Spot(tmp_path / "s.sqlite")) as store:
        store.sync_plan([make_job(1)])
    assert [p.name for p in tmp_path.iterdir()] == ["s.sqlite"]
    (tmp_path / "out").mkdir()
    with StateStore.for_output_dir(Spot(tmp_path / "out")) as store:
        store.sync_plan([make_job(1)])
    with StateStore.for_reading(Spot(tmp_path / "out")) as store:
        assert store.counts()["planned"] == 1


def test_reading_a_folder_with_no_state_says_so_and_leaves_nothing_behind(tmp_path: Path) -> None:
    # it made an empty state.sqlite, after which the outputs said "no jobs" instead of "no run"
    with pytest.raises(NothingToShow, match="no run here yet"):
        StateStore.for_reading(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_reading_a_0_byte_state_alone_in_its_folder_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (a first run cut short before its first commit) status, sheet and report read it as a new
    # database and the migrations wrote the schema into it: 49 kB written by a command that reads
    (tmp_path / "state.sqlite").write_bytes(b"")
    for read_only_folder in (False, True):
        monkeypatch.setattr("os.access", lambda *args, _ro=read_only_folder, **kwargs: not _ro)
        with StateStore.for_reading(tmp_path) as store:
            assert store.jobs() == [] and set(store.counts().values()) == {0} and store.runs() == []
            assert store.path == tmp_path / "state.sqlite"
        assert [(p.name, p.stat().st_size) for p in tmp_path.iterdir()] == [("state.sqlite", 0)]
    monkeypatch.undo()
    with StateStore.for_output_dir(tmp_path) as store:  # a run still takes it up as its state
        store.sync_plan([make_job(1)])
    with StateStore.for_reading(tmp_path) as store:
        assert store.counts()["planned"] == 1


def test_a_read_only_state_of_another_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with StateStore.for_output_dir(tmp_path) as store:
        store._db.execute("DELETE FROM migrations WHERE name = ?", (MIGRATIONS[-1][0],))
    monkeypatch.setattr("os.access", lambda *args, **kwargs: False)
    with pytest.raises(StateError, match="another version"):
        StateStore.for_reading(tmp_path)


def test_a_full_disk_is_a_state_error_and_loses_nothing_committed(tmp_path: Path) -> None:
    # SQLite's "database or disk is full" at a commit escaped as an OperationalError: exit 70,
    # "a bug in seedream-pipe".
    store = StateStore.for_output_dir(tmp_path)
    store.add_event("before")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from here on
    with pytest.raises(StateError, match="cannot write the state: database or disk is full") as caught:
        for _ in range(10_000):
            store.add_event("x", detail={"pad": "x" * 2000})
    assert caught.value.exit_code == 74
    kinds = [e["kind"] for e in store.events()]
    assert kinds[0] == "before" and set(kinds[1:]) <= {"x"}  # what was committed is still there
    store.close()


def _damage_the_jobs_table(folder: Path) -> None:
    """Overwrite the first page of the jobs table with bytes that are no b-tree page."""
    db = sqlite3.connect(folder / "state.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
    db.close()
    with (folder / "state.sqlite").open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)


def test_a_damaged_state_file_is_a_state_error_on_read_and_write(tmp_path: Path) -> None:
    # A state.sqlite whose header is whole but whose pages are not opens, then fails on the
    # first read of a damaged page: that is 'the state file cannot be read' (StateError, exit
    # 74), not a bug's 70 (it was a bare sqlite3.DatabaseError), and not 'free space'.
    with StateStore.for_output_dir(tmp_path) as store:
        store.sync_plan([make_job(n) for n in range(50)])
    _damage_the_jobs_table(tmp_path)
    for opener in (StateStore.for_output_dir, StateStore.for_reading):
        with opener(tmp_path) as store:
            for read in (store.jobs, store.counts, lambda: store.get("job001")):
                with pytest.raises(StateError, match=r"state database is damaged.*restore state\.sqlite"):
                    read()
            if opener is StateStore.for_output_dir:
                with pytest.raises(StateError, match="state database is damaged") as caught:
                    store.sync_plan([make_job(1)])
                assert "free space" not in str(caught.value)
