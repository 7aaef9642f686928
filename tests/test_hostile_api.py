"""A broken or hostile API: what it answers may not leak the token, stop a run with a bug's
exit code, hang it, or take the machine's memory. Each case came from a review that wrote such a
server; the client's and runner's answers are checked here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fakes import FakeTime, Heard

from seedream_pipe.client import AcceptedUnread, ModelApiClient, UnknownOutcome, server_time
from seedream_pipe.config import ApiSettings
from seedream_pipe.errors import (
    ApiError,
    RequestRejected,
    ServiceUnavailable,
    UnusableAnswer,
)
from seedream_pipe.pacing import Backoff, PollSchedule, RequestBudget, SubmitPacer
from seedream_pipe.recipe import load_recipe
from seedream_pipe.redaction import redact
from seedream_pipe.runner import RunOptions, core, run_recipe
from seedream_pipe.runner.rules import NOT_FOUND_LOOKS
from seedream_pipe.state import StateStore

TOKEN = "tok-SECRET-0123456789abcdef"
BASE = "https://model-api.runcomfy.net/v1"


def client_for(handler: Any, **kwargs: Any) -> ModelApiClient:
    clock = FakeTime()
    return ModelApiClient(
        ApiSettings(kwargs.pop("base", BASE), TOKEN),
        http=httpx.AsyncClient(transport=httpx.MockTransport(handler)) if handler is not None else None,
        pacer=SubmitPacer(600, clock=clock, sleep=clock.sleep),
        budget=RequestBudget(1000, clock=clock, sleep=clock.sleep),
        backoff=Backoff(base=0.1, cap=1.0),
        sleep=clock.sleep,
        max_retries=2,
        **kwargs,
    )


def answering(status: int = 200, **reply: Any) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        if "content" in reply:
            return httpx.Response(status, content=reply["content"])
        return httpx.Response(status, json=reply["json"])

    return handler


# --- the token ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_id", [f"r1-Bearer {TOKEN}", f"r1-{TOKEN}", f"r1-{TOKEN[:-1]}", "a" * 500, "r1\x00", "r1\nr2", "..", "."]
)
async def test_a_request_id_holding_the_token_not_one_line_or_a_dot_path_is_not_kept(request_id: str) -> None:
    async with client_for(answering(json={"request_id": request_id})) as client:
        with pytest.raises(UnusableAnswer, match="request id seedream-pipe will not keep") as caught:
            await client.submit("m", {"prompt": "x"})
    assert TOKEN not in str(caught.value) and "the job may exist on the server" in str(caught.value)


async def test_any_other_request_id_is_kept_and_quoted_into_urls() -> None:
    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        if request.method == "POST":
            return httpx.Response(200, json={"request_id": "job/7+a==../x"})
        return httpx.Response(200, json={"status": "in_queue"})

    async with client_for(api) as client:
        submitted = await client.submit("m", {"prompt": "x"})
        assert submitted.request_id == "job/7+a==../x"  # type: ignore[union-attr]
        await client.status(submitted.request_id)  # type: ignore[union-attr]
    assert seen[-1] == "/v1/requests/job%2F7%2Ba%3D%3D..%2Fx/status"


def test_a_run_stops_submitting_at_an_unusable_request_id_and_flags_the_job(tmp_path: Path) -> None:
    posts: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        posts.append(request.method)
        return httpx.Response(200, json={"request_id": f"r-{request.headers['Authorization']}"})

    recipe = tmp_path / "r.yaml"
    recipe.write_text('template: "{{ x }}"\nvars: {x: [a, b, c]}\nresolutions: [1K]\nrun: {concurrency: 1}\n')
    result = run_recipe(
        load_recipe(recipe), api=ApiSettings(BASE, TOKEN), out_dir=tmp_path / "out",
        options=RunOptions(rpm=6000, concurrency=1), http=httpx.AsyncClient(transport=httpx.MockTransport(api)),
    )  # fmt: skip
    assert result.exit_code == 69 and posts == ["POST"]  # one job paid for at most, not three
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (failed,) = store.jobs(states=("failed",))
        assert failed.possible_duplicate and TOKEN not in str(failed.error)
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


async def test_the_token_at_the_cut_of_a_long_reason_is_scrubbed_not_cut_in_half() -> None:
    body = "x" * (300 - len(TOKEN) + 1) + TOKEN  # the token straddles character 300
    async with client_for(answering(400, content=body.encode())) as client:
        with pytest.raises(RequestRejected) as caught:
            await client.submit("m", {"prompt": "x"})
    assert TOKEN[:8] not in str(caught.value)


@pytest.mark.timeout(30)  # (a hang guard: scrubbing each run anew took minutes on such an answer)
async def test_an_answer_full_of_pieces_of_the_token_is_scrubbed_in_one_pass() -> None:
    # The API has the token (it is sent to it): an answer filled with pieces of it must neither
    # show one nor hold the event loop while it is scrubbed, however large.
    pieces = (TOKEN[:8] + " " + TOKEN[5:14].upper() + " ") * 200_000  # 3.8 MB
    assert redact(pieces, TOKEN) == "*** *** " * 200_000
    client = client_for(answering(400, content=pieces.encode()))
    with pytest.raises(RequestRejected) as caught:
        await client.status("r1")
    said = str(caught.value)
    assert "***" in said and len(said) < 400
    assert not any(TOKEN[i : i + 8].casefold() in said.casefold() for i in range(len(TOKEN) - 7))


@pytest.mark.parametrize("kind", ["request id", "image URL"])
def test_most_of_the_token_in_an_id_or_a_url_is_not_kept_either(tmp_path: Path, kind: str) -> None:
    # The token cut short in a request id or a file URL passed the check that keeps either,
    # which looked for the whole token, and went into the state, report and gallery.
    image = teal_jpeg()
    rid = "r-" + TOKEN[:-1] if kind == "request id" else "r1"
    url = f"https://files.runcomfy.net/r1.jpg?sig={TOKEN[:-1]}" if kind == "image URL" else "https://files.runcomfy.net/r1.jpg"

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"request_id": rid})
        if request.url.host == "files.runcomfy.net":
            return httpx.Response(200, content=image)
        return httpx.Response(200, json={"status": "completed", "output": {"image": url}})

    result = run_against(api, tmp_path)
    assert result.exit_code != 0
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            data = path.read_bytes().decode("utf-8", "replace").casefold()
            assert TOKEN[:12].casefold() not in data, path


async def test_errors_and_times_in_status_and_result_answers_are_scrubbed() -> None:
    answer = {
        "status": "failed",
        "error": {"message": f"echo: Bearer {TOKEN}"},
        "created_at": f"2026-01-01T00:00:00Z {TOKEN}",
        "finished_at": "2026-01-01T00:00:09Z",
    }
    async with client_for(answering(json=answer)) as client:
        status = await client.status("r1")
        result = await client.result("r1")
    assert status.error is not None and TOKEN not in status.error and "***" in status.error
    assert result.error is not None and TOKEN not in result.error
    assert (result.created_at, result.finished_at) == (None, "2026-01-01T00:00:09Z")


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("2026-01-01T00:00:09Z", "2026-01-01T00:00:09Z"),
        ("2026-01-01T00:00:09.5+02:00", "2026-01-01T00:00:09.5+02:00"),
        ("0001-01-01T00:00:00+23:59", None),
        ("9999-12-31T23:59:59-23:59", None),
        ("1970-01-01T00:00:00Z", None),
        ("yesterday", None),
        (1735689600, None),
        ("2026-01-01T00:00:09Z" + " " * 100, None),
    ],
)
def test_server_times_are_kept_only_as_plausible_timestamps(value: Any, kept: str | None) -> None:
    assert server_time(value) == kept


# --- answers that used to stop a run with exit 70 ---------------------------------------------


async def test_json_nested_past_pythons_stack_is_an_unreadable_answer_not_a_crash() -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    async with client_for(answering(content=nested)) as client:
        with pytest.raises(ServiceUnavailable, match="not a JSON object"):
            await client.status("r1")
        assert isinstance(await client.submit("m", {"prompt": "x"}), AcceptedUnread)
    async with client_for(answering(400, content=nested)) as client:
        with pytest.raises(RequestRejected):
            await client.status("r1")


async def test_a_result_nested_deep_still_gives_its_url_and_its_error() -> None:
    # as deep as json.loads takes from here; deeper is an unreadable answer (above), which
    # stops the run with the job's request id kept rather than failing a job that is paid for
    depth = 900
    output = b'{"output": ' + b"[" * depth + b'"https://cdn.runcomfy.net/deep.png"' + b"]" * depth
    error = b', "error": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b', "status": "failed"}'
    async with client_for(answering(content=output + error)) as client:
        result = await client.result("r1")
    assert result.output_urls == ["https://cdn.runcomfy.net/deep.png"]
    assert result.status == "failed" and result.error


def test_an_error_too_deep_to_show_is_said_so_not_a_crash() -> None:
    from seedream_pipe.client import _error_text

    deep: Any = {"detail": None}
    for _ in range(5000):  # past what json.dumps can take from any stack
        deep = {"x": deep}
    assert _error_text(deep) == "an error the API sent nested too deeply to show"


def test_urls_are_found_at_any_depth_without_recursion() -> None:
    from seedream_pipe.client import collect_urls

    deep: Any = ["https://a/deep.png"]
    for _ in range(5000):  # past Python's recursion limit: a recursive walk raised RecursionError
        deep = [{"x": deep}]
    assert collect_urls(deep) == ["https://a/deep.png"]


def test_urls_are_collected_in_order_once_each() -> None:
    from seedream_pipe.client import collect_urls

    output = {"image": "https://a/1", "images": ["https://a/2", {"x": ["https://a/1", "http://b/3", 7]}], "t": "ftp://c"}
    assert collect_urls(output) == ["https://a/1", "https://a/2", "http://b/3"]
    many = [f"https://a/{i}" for i in range(20_000)]
    assert collect_urls({"images": many + many}) == many


@pytest.mark.parametrize(
    "url", ["http://[::1/files/a.png", "https://cdn.runcomfy.net\uff0f.evil.com/a.png", "https://[x]:99999/a"]
)
async def test_a_malformed_file_url_is_refused_not_a_crash(url: str, tmp_path: Path) -> None:
    async with client_for(answering(json={})) as client:
        assert client.download_allowed(url) is False
        with pytest.raises(ApiError, match="refusing to download"):
            await client.fetch(url, tmp_path)
        # a malformed link to poll is ignored: the client builds its own
        assert client._api_url(url, "/requests/r1/status") == f"{BASE}/requests/r1/status"
    assert list(tmp_path.iterdir()) == []


def test_a_run_whose_result_names_a_malformed_url_fails_that_job_and_resumes_the_same(tmp_path: Path) -> None:
    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"request_id": "r1"})
        if request.url.path.endswith("/status"):
            return httpx.Response(200, json={"status": "completed"})
        return httpx.Response(200, json={"status": "completed", "output": {"image": "http://[::1/files/a.png"}})

    recipe = tmp_path / "r.yaml"
    recipe.write_text('template: "a fox"\nresolutions: [1K]\n', encoding="utf-8")
    options = RunOptions(rpm=6000, first_poll_s=0.01, backoff_base_s=0.01)  # 4 download attempts
    for _ in range(2):  # the second run retries nothing and still says why, with exit 1
        result = run_recipe(
            load_recipe(recipe),
            api=ApiSettings(BASE, TOKEN),
            out_dir=tmp_path / "out",
            options=options,
            http=httpx.AsyncClient(transport=httpx.MockTransport(api)),
        )
        assert result.exit_code == 1, result.reason
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (job,) = store.jobs()
    assert job.state == "failed" and "download failed after 1 try: refusing to download" in str(job.error)


# --- an API whose result endpoint does not answer a running job ---------------------------------


def teal_jpeg() -> bytes:
    """A small, whole JPEG: what the mock APIs below serve as every job's image."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(buffer, "JPEG")
    return buffer.getvalue()


def run_against(api: Any, tmp_path: Path, values: str = "[a]", progress: Any = None, **changes: Any) -> Any:
    """run_recipe of a one-var recipe over `values` against the mock API `api`, at quick pace."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f'template: "{{{{ x }}}}"\nvars: {{x: {values}}}\nresolutions: [1K]\n', encoding="utf-8")
    return run_recipe(
        load_recipe(recipe), api=ApiSettings(BASE, TOKEN), out_dir=tmp_path / "out",
        options=RunOptions(rpm=6000, concurrency=1, first_poll_s=0.01, **changes),
        http=httpx.AsyncClient(transport=httpx.MockTransport(api)), progress=progress,
    )  # fmt: skip


def jobs_api(read: Callable[[str, str], httpx.Response]) -> tuple[Callable[[httpx.Request], httpx.Response], list[str]]:
    """A mock API whose POSTs make requests r1, r2, ...; files.runcomfy.net serves a JPEG, and a
    read of request `rid` is `read(rid, "status" or "result")`. Returns it and the ids made."""
    image = teal_jpeg()
    made: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            made.append(f"r{len(made) + 1}")
            return httpx.Response(200, json={"request_id": made[-1]})
        if request.url.host == "files.runcomfy.net":
            return httpx.Response(200, content=image)
        _, _, _, rid, what = request.url.path.split("/")[:5]
        return read(rid, what)

    return api, made


def image_of(rid: str) -> httpx.Response:
    """A result read of a completed request, its image on files.runcomfy.net."""
    return httpx.Response(200, json={"status": "completed", "output": {"image": f"https://files.runcomfy.net/{rid}.jpg"}})


@pytest.mark.parametrize("refusal", [404, 400, 403, 405, 409, 410, 200, "not json", "error_code", 500, 502, 503])
def test_a_result_endpoint_refusing_running_jobs_turns_the_looks_to_status(
    tmp_path: Path, refusal: int | str
) -> None:
    # RunComfy documents the result endpoint for finished jobs only; the looks read it for a
    # running job too. Should an API refuse there (a 4xx, a 5xx, 200 with no state or not JSON),
    # that must not fail, lose or time out the job, nor stop the run: it polls status instead.
    status_reads: dict[str, int] = {}
    refused: list[str] = []

    def read(rid: str, what: str) -> httpx.Response:
        if what == "status":
            status_reads[rid] = status_reads.get(rid, 0) + 1
            return httpx.Response(200, json={"status": "completed" if status_reads[rid] >= 2 else "in_progress"})
        if status_reads.get(rid, 0) < 2:
            refused.append(rid)
            if refusal == 200:
                return httpx.Response(200, json={"request_id": rid})
            if refusal == "not json":
                return httpx.Response(200, text="<html><body>Not ready</body></html>")
            if refusal == "error_code":  # (it failed every running job at its first look)
                return httpx.Response(200, json={"error_code": "REQUEST_NOT_COMPLETED", "error_message": "not finished"})
            return httpx.Response(int(refusal), json={"error": {"message": "not finished yet"}})
        return image_of(rid)

    api, made = jobs_api(read)
    result = run_against(api, tmp_path, "[a, b, c]")
    assert result.exit_code == 0, result.reason
    assert result.counts["downloaded"] == 3 and len(made) == 3  # none failed, none resubmitted
    assert refused == ["r1"]  # asked once, not retried; the other jobs were polled by status from the start
    assert [status_reads.get(rid) for rid in made] == [2, 2, 2]


def test_a_huge_state_from_the_result_endpoint_is_scrubbed_only_as_far_as_it_is_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A state the runner does not know is named in an event, scrubbed of the token first. The
    # whole answer was scrubbed, then cut to 40 characters: 4 MiB of near-misses of the token
    # held the event loop for seconds at each look. The token begun inside what is shown still goes.
    scrubbed: list[int] = []

    def spy(text: str, *secrets: str | None) -> str:
        scrubbed.append(len(text))
        return redact(text, *secrets)

    monkeypatch.setattr(core, "redact", spy)
    huge = "x" * 20 + TOKEN + TOKEN[:-1] * 100_000
    status_reads = 0

    def read(rid: str, what: str) -> httpx.Response:
        nonlocal status_reads
        if what == "status":
            status_reads += 1
            return httpx.Response(200, json={"status": "completed" if status_reads >= 2 else "in_progress"})
        return httpx.Response(200, json={"status": huge}) if status_reads < 2 else image_of(rid)

    api, made = jobs_api(read)
    heard = Heard()
    result = run_against(api, tmp_path, progress=heard)
    assert result.exit_code == 0 and made == ["r1"]
    assert max(scrubbed) < 1000
    said = heard.said()
    assert "with no state it names ('" + "x" * 20 + "***" in said and TOKEN[:8] not in said, said


def test_a_failed_job_whose_result_carries_an_error_code_fails_alone(tmp_path: Path) -> None:
    # Status says failed, and the result read answers 200 with an error_code, the API's way of
    # giving the reason: taken for lost contact, it stopped every submit (exit 65 with jobs
    # never sent), and every later run met it again. Now that job fails with the API's reason.
    looks: dict[str, int] = {}

    def read(rid: str, what: str) -> httpx.Response:
        looks[rid] = looks.get(rid, 0) + 1
        done = looks[rid] >= 2
        if what == "status":
            return httpx.Response(200, json={"status": ("failed" if rid == "r1" else "completed") if done else "in_progress"})
        if not done:  # (the result endpoint refuses a running job: the looks turn to status)
            return httpx.Response(400, json={"error": {"message": "not finished yet"}})
        if rid == "r1":
            return httpx.Response(200, json={"status": "failed", "error_code": "CONTENT_POLICY", "error_message": "blocked"})
        return image_of(rid)

    api, made = jobs_api(read)
    result = run_against(api, tmp_path, "[a, b, c]")
    assert result.exit_code == 1 and len(made) == 3  # every job sent, once
    assert result.counts["downloaded"] == 2 and result.counts["failed"] == 1
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (failed,) = store.jobs(states=("failed",))
    assert failed.request_id == "r1" and failed.error == "generation failed: result of r1: blocked (CONTENT_POLICY)"


def test_a_made_job_whose_result_is_refused_is_read_again_never_submitted_again(tmp_path: Path) -> None:
    # Status says completed, and the result read is refused (400): the job fails alone, and
    # --retry-failed reads its result again. It was failed with no outputs, which
    # --retry-failed submitted again: a second charge for an image the API had made.
    refusing = True

    def read(rid: str, what: str) -> httpx.Response:
        if what == "status":
            return httpx.Response(200, json={"status": "completed"})
        if refusing:
            return httpx.Response(400, json={"error": {"message": "no result for you"}})
        return image_of(rid)

    api, posts = jobs_api(read)
    result = run_against(api, tmp_path)
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (job,) = store.jobs()
    assert result.exit_code == 1 and job.state == "failed" and job.request_id == "r1"
    assert str(job.error).startswith("result refused: ") and "--retry-failed reads it again" in str(job.error)
    refusing = False
    again = run_against(api, tmp_path, retry_failed=True)
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (job,) = store.jobs()
    assert again.exit_code == 0 and job.state == "downloaded" and posts == ["r1"]
    assert not job.possible_duplicate


def test_a_state_a_result_read_names_is_scrubbed_before_it_is_cut(tmp_path: Path) -> None:
    # The message quoting a state the API does not name cuts it to 40 characters: cut first,
    # the token straddling the cut lost its tail and slipped past the scrubbing as its head.
    image = teal_jpeg()
    reads: dict[str, int] = {"status": 0}

    def api(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST":
            return httpx.Response(200, json={"request_id": "r1"})
        if request.url.host == "files.runcomfy.net":
            return httpx.Response(200, content=image)
        if path.endswith("/status"):
            reads["status"] += 1
            return httpx.Response(200, json={"status": "completed" if reads["status"] >= 2 else "in_progress"})
        if reads["status"] < 2:
            return httpx.Response(200, json={"status": "x" * 20 + TOKEN})
        return httpx.Response(200, json={"status": "completed", "output": {"image": "https://files.runcomfy.net/r1.jpg"}})

    heard = Heard()
    result = run_against(api, tmp_path, progress=heard)
    assert result.exit_code == 0, result.reason
    said = heard.said()
    assert "polling its status instead" in said
    assert TOKEN[:12] not in said and "***" in said


@pytest.mark.parametrize("proven", [True, False])
def test_a_5xx_from_the_result_endpoint_after_it_answered_a_running_job_is_an_outage(
    tmp_path: Path, proven: bool
) -> None:
    # Once the result endpoint has answered a running job with its state, a 5xx from it is a
    # passing fault like any other: retried, the looks stay on the result endpoint. Before that,
    # a 5xx for a job that has in fact finished is checked by one status read, which says so:
    # the job is finished from there and the looks stay on the result endpoint too.
    image = teal_jpeg()
    reads: dict[str, int] = {}

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"request_id": "r1"})
        if request.url.host == "files.runcomfy.net":
            return httpx.Response(200, content=image)
        endpoint = request.url.path.split("/")[4]
        reads[endpoint] = reads.get(endpoint, 0) + 1
        if endpoint == "status":
            return httpx.Response(200, json={"status": "completed"})
        n = reads["result"]
        if proven and n == 1:
            return httpx.Response(200, json={"status": "in_progress"})
        if n == (2 if proven else 1):
            return httpx.Response(500, json={"error": {"message": "upstream hiccup"}})
        return httpx.Response(200, json={"status": "completed", "output": {"image": "https://files.runcomfy.net/r1.jpg"}})

    heard = Heard()
    result = run_against(api, tmp_path, progress=heard)
    assert result.exit_code == 0, result.reason
    assert "polling its status instead" not in heard.said()
    if proven:  # in_progress, 500 (retried), completed: no status read
        assert reads == {"result": 3}
    else:  # 500 (not retried), status: completed, the result read
        assert reads == {"result": 2, "status": 1}


@pytest.mark.parametrize("forgotten", [False, True])
def test_a_404_for_a_request_id_the_api_gave_is_looked_at_again_before_the_job_is_lost(
    tmp_path: Path, forgotten: bool
) -> None:
    # A result read answering 404 for a job the status calls completed (a replica that has not
    # seen it yet) must not fail a job that is done and billed. Only an API that keeps saying it
    # does not know the id, NOT_FOUND_LOOKS times, loses the job.
    reads: dict[str, int] = {}
    not_found = {"error": {"message": "request not found"}}

    def read(rid: str, endpoint: str) -> httpx.Response:
        key = f"{rid} {endpoint}"
        reads[key] = reads.get(key, 0) + 1
        if rid == "r1" and (forgotten or (endpoint == "result" and reads[key] <= 2)):
            return httpx.Response(404, json=not_found)
        if endpoint == "status":
            return httpx.Response(200, json={"status": "completed"})
        return image_of(rid)

    api, posts = jobs_api(read)

    result = run_against(api, tmp_path)
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (job,) = store.jobs()
    if not forgotten:
        # look: result 404 -> status completed -> result 404 (looked at again) -> result read
        assert result.exit_code == 0 and job.state == "downloaded" and posts == ["r1"]
        assert reads["r1 result"] == 3
        return
    assert result.exit_code == 1 and job.state == "failed" and "no longer knows request r1 (404)" in str(job.error)
    assert reads["r1 status"] == NOT_FOUND_LOOKS and posts == ["r1"]
    # --retry-failed sends it again, and says it may have paid twice (r1 may have been billed)
    again = run_against(api, tmp_path, retry_failed=True)
    assert again.exit_code == 0 and posts == ["r1", "r2"]
    assert again.summary["possible_duplicates"] == 1
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (job,) = store.jobs()
    assert job.state == "downloaded" and job.possible_duplicate
    # a simulator started afresh (`run --sim`: forget_lost) never knew the job: one look, made again
    with StateStore.for_output_dir(tmp_path / "out") as store:
        store.transition(job.job_id, "submitted", request_id="r1", possible_duplicate=False)
    reads.clear()
    again = run_against(api, tmp_path, forget_lost=True)
    assert again.exit_code == 0 and posts == ["r1", "r2", "r3"] and reads["r1 status"] == 1


@pytest.mark.parametrize("refusal", [401, 400])
def test_a_refusal_while_polling_keeps_the_request_and_is_never_paid_for_again(tmp_path: Path, refusal: int) -> None:
    # A token revoked while jobs run (401 to a poll) must exit 77 with the job still in flight
    # (its request id kept): the next run polls it, never submits it again. A 4xx the API gives
    # one job's poll (400) fails that job, with its reason, and keeps its request id too.
    looks: list[str] = []
    refusing = True

    def read(rid: str, what: str) -> httpx.Response:
        looks.append(f"{rid} {what}")
        if refusing:
            return httpx.Response(refusal, json={"error": {"message": f"no: {TOKEN}"}})
        return image_of(rid)

    api, posts = jobs_api(read)

    result = run_against(api, tmp_path)
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (job,) = store.jobs()
    assert posts == ["r1"] and looks and job.request_id == "r1"
    assert TOKEN not in (result.reason or "") and TOKEN not in str(job.error)
    if refusal == 401:
        assert result.exit_code == 77 and job.state == "submitted", (result.exit_code, job.state)
        # (the result endpoint's refusal is checked by one status read, then the run stops: a
        # refused token is not asked again and again)
        assert looks == ["r1 result", "r1 status"]
    else:
        assert result.exit_code == 1 and job.state == "failed" and "no: ***" in str(job.error)
    refusing = False
    again = run_against(api, tmp_path, retry_failed=refusal == 400)
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (job,) = store.jobs()
    if refusal == 401:  # polled, downloaded: one POST in all
        assert again.exit_code == 0 and job.state == "downloaded" and posts == ["r1"]
    else:  # --retry-failed sends it again, flagged as maybe paid for twice (r1 existed)
        assert again.exit_code == 0 and posts == ["r1", "r2"] and job.possible_duplicate


@pytest.mark.parametrize(("refusal", "code"), [(401, 77), (503, 69), (400, 1)])
def test_a_refusal_while_asking_for_a_fresh_image_url_keeps_the_paid_job_for_the_next_run(
    tmp_path: Path, refusal: int, code: int
) -> None:
    # A job done and billed whose signed file URL has expired (403) is asked for a fresh URL. A
    # refused token or an API down at that moment must stop the run with its own exit code and
    # leave the job completed with its request id: the next run downloads it, no POST again.
    # A 400 is the API's word on that job: it fails with the reason, and the run goes on (it
    # was taken for lost contact, which stopped every submit); --retry-failed downloads it.
    reads = 0
    broken = True

    def read(rid: str, what: str) -> httpx.Response:
        nonlocal reads
        reads += 1
        if reads == 1:  # the look that sees it finish
            return httpx.Response(200, json={"status": "completed", "output": {"image": "https://files.runcomfy.net/old.jpg"}})
        if broken:
            return httpx.Response(refusal, json={"error": {"message": "not now"}})
        return image_of("new")

    jobs, posts = jobs_api(read)

    def api(request: httpx.Request) -> httpx.Response:
        if request.url.host == "files.runcomfy.net" and request.url.path == "/old.jpg":
            return httpx.Response(403, text="signature expired")
        return jobs(request)

    quick = {"backoff_base_s": 0.001, "backoff_cap_s": 0.002, "max_retries": 1}
    result = run_against(api, tmp_path, **quick)
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (job,) = store.jobs()
    assert result.exit_code == code, result.reason
    kept = "failed" if refusal == 400 else "completed"
    assert job.state == kept and job.request_id == "r1" and not list((tmp_path / "out" / "images").iterdir())
    broken = False
    again = run_against(api, tmp_path, **quick, retry_failed=refusal == 400)
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (job,) = store.jobs()
    assert again.exit_code == 0 and job.state == "downloaded" and posts == ["r1"]
    assert job.image_url == "https://files.runcomfy.net/new.jpg"


def test_a_submit_whose_connection_never_opened_is_sent_again_unflagged(tmp_path: Path) -> None:
    # A connection that never opened proves the body never left: the job goes back to waiting
    # for its turn and is sent again, and is no "possible duplicate" (which `status` and the
    # report count as maybe paid for twice).
    image = teal_jpeg()
    posts = 0

    def api(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        if request.method == "POST":
            posts += 1
            if posts == 1:
                raise httpx.ConnectError("connection refused")
            return httpx.Response(200, json={"request_id": "r1"})
        if request.url.host == "files.runcomfy.net":
            return httpx.Response(200, content=image)
        return httpx.Response(200, json={"status": "completed", "output": {"image": "https://files.runcomfy.net/r1.jpg"}})

    result = run_against(api, tmp_path, backoff_base_s=0.001, backoff_cap_s=0.002)
    with StateStore.for_output_dir(tmp_path / "out") as store:
        (job,) = store.jobs()
        states = [e["state"] for e in store.events(job.job_id) if e["kind"] == "state"]
    assert result.exit_code == 0 and posts == 2 and job.state == "downloaded"
    assert not job.possible_duplicate and result.summary["possible_duplicates"] == 0
    assert job.attempts == 2 and job.retries == 1
    assert states[:4] == ["submitting", "planned", "submitting", "submitted"]


# --- answers that used to hang a run or fill the memory ----------------------------------------


class Hostile:
    """A loopback server answering every request with `body_parts`, `gap` seconds apart."""

    def __init__(self, body_parts: AsyncIterator[bytes] | None = None, gap: float = 0.0, size: int = 0) -> None:
        from aiohttp import web

        self.web = web
        self.gap = gap
        self.size = size
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(self.app)
        self.base = ""

    async def handle(self, request: Any) -> Any:
        response = self.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if self.size:  # a body far over any API answer, sent as fast as it is taken
            await response.write(b'{"status": "in_queue", "pad": "')
            chunk = b"x" * (1024 * 1024)
            for _ in range(self.size):
                await response.write(chunk)
            await response.write(b'"}')
        else:  # a byte at a time, forever
            while True:
                await response.write(b" ")
                await asyncio.sleep(self.gap)
        return response

    async def __aenter__(self) -> Hostile:
        await self.runner.setup()
        site = self.web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_an_answer_far_over_any_api_answer_is_refused_before_it_is_held_whole() -> None:
    async with Hostile(size=64) as server, client_for(None, base=server.base) as client:
        with pytest.raises(ServiceUnavailable, match="bytes an API answer may be"):
            await client.status("r1")


@pytest.mark.parametrize("declared", [True, False])
async def test_a_notebooks_own_http_client_is_held_to_the_same_answer_cap(declared: bool) -> None:
    big = b"x" * (5 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield big[: 1024 * 1024]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=big if declared else chunks())  # (chunks: no length said)

    with pytest.raises(ServiceUnavailable, match="an API answer may be"):
        await client_for(answer).status("r1")


async def test_a_trickling_answer_is_given_up_at_the_call_deadline() -> None:
    async with Hostile(gap=0.05) as server, client_for(None, base=server.base, timeout_s=0.3) as client:
        with pytest.raises(ServiceUnavailable, match=r"no whole answer within 0\.3 s"):
            await asyncio.wait_for(client.status("r1"), 10)
        assert isinstance(await asyncio.wait_for(client.submit("m", {"prompt": "x"}), 10), UnknownOutcome)


async def test_a_trickling_download_is_given_up_at_the_download_deadline(tmp_path: Path) -> None:
    async with Hostile(gap=0.05) as server, client_for(None, base=server.base, download_deadline_s=0.3) as client:
        url = server.base.replace("/v1", "/files/a.png")
        with pytest.raises(ServiceUnavailable, match=r"not finished within 0\.3 s"):
            await asyncio.wait_for(client.fetch(url, tmp_path), 10)
    assert list(tmp_path.iterdir()) == []  # the partial file is gone


def test_a_duration_learned_from_absurd_server_times_never_stops_the_polls() -> None:
    schedule = PollSchedule(max_gap=30.0)
    schedule.observe(3e11)  # "0001-01-01" to "9999-12-31"
    assert schedule.next_delay(1.0) <= 30.0
    assert schedule.next_delay(1.0, last_gap=30.0) <= 30.0


def test_a_model_id_cannot_steer_the_submit_elsewhere(tmp_path: Path) -> None:
    from seedream_pipe.errors import RecipeError

    recipe = tmp_path / "r.yaml"
    recipe.write_text('model: "bytedance/../../../admin/x?y=1#z"\ntemplate: x\n', encoding="utf-8")
    with pytest.raises(RecipeError, match="a model id is names of letters"):
        load_recipe(recipe)


async def test_a_notebook_model_id_is_quoted_into_the_url() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"request_id": "r1"})

    async with client_for(handler) as client:
        await client.submit("a/b?c=1#d", {"prompt": "x"})
    assert seen == [f"{BASE}/models/a/b%3Fc%3D1%23d"]
