"""The Model API client against httpx.MockTransport: outcomes the simulator cannot easily stage
(exact headers, odd status words, redirects, hosts), mapped to the error tree. At the end, the
default wire (aiohttp, no httpx client given) against a small server on the loopback address."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fakes import FakeTime

from seedream_pipe.client import (
    MAX_REDIRECTS,
    AcceptedUnread,
    ModelApiClient,
    Submission,
    UnknownOutcome,
    collect_urls,
)
from seedream_pipe.config import (
    ApiSettings,
    api_settings,
    find_token,
    resolve_base_url,
    token_source,
)
from seedream_pipe.errors import (
    ApiError,
    AuthError,
    CreditError,
    NotFound,
    NotRetried,
    RequestRejected,
    ServiceUnavailable,
    UsageError,
)
from seedream_pipe.pacing import Backoff, RequestBudget, SubmitPacer

TOKEN = "tok-SECRET-123"
BASE = "https://model-api.runcomfy.net/v1"
MODEL = "bytedance/seedream-4-0/text-to-image"



Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, clock: FakeTime | None = None) -> tuple[ModelApiClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    clock = clock or FakeTime()

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(record))
    client = ModelApiClient(
        ApiSettings(BASE, TOKEN),
        http=http,
        pacer=SubmitPacer(600, clock=clock, sleep=clock.sleep),
        budget=RequestBudget(1000, clock=clock, sleep=clock.sleep),
        backoff=Backoff(base=0.1, cap=1.0),
        sleep=clock.sleep,
        max_retries=3,
    )
    return client, seen


def accepted(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "request_id": "r1",
            "status_url": f"{BASE}/requests/r1/status",
            "result_url": f"{BASE}/requests/r1/result",
            "cancel_url": f"{BASE}/requests/r1/cancel",
        },
    )


def sequence(*responses: Any) -> Handler:
    """Answer with each item in turn (an exception is raised instead of answered)."""
    items = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        item = items.pop(0) if len(items) > 1 else items[0]
        if isinstance(item, Exception):
            raise item
        if callable(item):
            return item(request)  # type: ignore[no-any-return]
        return item  # type: ignore[no-any-return]

    return handler


async def test_submit_sends_the_body_with_the_token_and_returns_the_links() -> None:
    client, seen = make_client(accepted)
    sent: list[int] = []
    result = await client.submit(MODEL, {"prompt": "a cat", "resolution": "1K"}, on_send=lambda: sent.append(1))
    assert isinstance(result, Submission)
    assert result.request_id == "r1"
    assert result.status_url == f"{BASE}/requests/r1/status"
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/models/{MODEL}"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {"prompt": "a cat", "resolution": "1K"}
    assert sent == [1]


async def test_submit_honours_429_retry_after_then_goes_on() -> None:
    clock = FakeTime()
    client, seen = make_client(
        sequence(httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow down"}), accepted), clock
    )
    result = await client.submit(MODEL, {"prompt": "x"})
    assert isinstance(result, Submission)
    assert len(seen) == 2
    assert clock.now >= 7.0
    assert client.counters["rate_limited"] == 1


async def test_submit_retries_5xx_and_connect_errors_then_gives_up() -> None:
    client, seen = make_client(sequence(httpx.Response(503), httpx.ConnectError("refused"), accepted))
    assert isinstance(await client.submit(MODEL, {"prompt": "x"}), Submission)
    assert len(seen) == 3
    assert client.counters["retries"] == 2

    client, seen = make_client(sequence(httpx.Response(500)))
    with pytest.raises(ServiceUnavailable, match="after 4 tries"):
        await client.submit(MODEL, {"prompt": "x"})
    assert len(seen) == 4


async def test_a_submit_told_at_its_turn_that_the_run_stopped_sends_nothing() -> None:
    # on_send is the last word before a POST leaves (the run commits "submitting" in it): a job
    # whose run stopped while it waited for its turn, first or after a refused try, sends
    # nothing more and is no unknown outcome.
    sends: list[bool] = []
    refused: list[bool] = []

    def on_send() -> bool:
        sends.append(True)
        return len(sends) < 2  # the first try goes out; by the second, the run has stopped

    client, seen = make_client(sequence(httpx.Response(503), accepted))
    outcome = await client.submit(MODEL, {"prompt": "x"}, on_send=on_send, on_refused=lambda: refused.append(True))
    assert outcome is None and len(seen) == 1 and len(sends) == 2 and refused == [True]
    assert client.counters["submits"] == 1 and client.counters["unknown_submits"] == 0


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateways_502_or_504_to_a_submit_is_an_unknown_outcome_never_retried(status: int) -> None:
    # the body went through the gateway; the API behind it may have taken (and billed) the job
    page = f"<html><body><h1>{status} Gateway Time-out</h1></body></html>"
    client, seen = make_client(sequence(httpx.Response(status, text=page)))
    result = await client.submit(MODEL, {"prompt": "x"})
    assert isinstance(result, UnknownOutcome) and f"HTTP {status} from a gateway" in result.reason
    assert len(seen) == 1 and client.counters["unknown_submits"] == 1
    # a poll's 502 is still only a failed read: asked again
    client, seen = make_client(sequence(httpx.Response(502), httpx.Response(200, json={"status": "in_queue"})))
    assert (await client.status("r1")).status == "in_queue" and len(seen) == 2


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("Server disconnected"), httpx.ReadError("reset")],
)
async def test_submit_without_an_answer_is_an_unknown_outcome_never_retried(failure: Exception) -> None:
    client, seen = make_client(sequence(failure))
    result = await client.submit(MODEL, {"prompt": "x"})
    assert isinstance(result, UnknownOutcome)
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (httpx.Response(200, text='{"request_id": "r'), "was not readable JSON"),
        (httpx.Response(201, text="<html>ok</html>"), "was not readable JSON"),
        (httpx.Response(200, json={"id": "r1"}), "carried no request_id"),
        (httpx.Response(200, json={"request_id": ""}), "carried no request_id"),
        (httpx.Response(200, json={"request_id": True}), "carried no request_id"),
    ],
)
async def test_a_2xx_submit_answer_with_no_request_id_is_accepted_and_unread(answer: httpx.Response, said: str) -> None:
    # a 2xx says the job was taken (and will be billed): not an unknown outcome to send again
    client, seen = make_client(sequence(answer))
    result = await client.submit(MODEL, {"prompt": "x"})
    assert isinstance(result, AcceptedUnread) and said in result.reason
    assert f"accepted the submit (HTTP {answer.status_code})" in result.reason
    assert len(seen) == 1 and client.counters["accepted"] == 1 and client.counters["unknown_submits"] == 0


async def test_a_numeric_request_id_is_kept_as_its_digits() -> None:
    client, _ = make_client(sequence(httpx.Response(200, json={"request_id": 1000})))
    result = await client.submit(MODEL, {"prompt": "x"})
    assert isinstance(result, Submission) and result.request_id == "1000"


@pytest.mark.parametrize(
    ("response", "error", "text"),
    [
        (httpx.Response(401, json={"error": {"message": f"bad token {TOKEN}"}}), AuthError, "refused the token"),
        (httpx.Response(403, json={"detail": "forbidden"}), AuthError, "forbidden"),
        (httpx.Response(402, json={"error": {"code": "insufficient_credit", "message": "no money"}}), CreditError, "no money"),
        (httpx.Response(422, json={"error": {"message": "prompt: too long"}}), RequestRejected, "prompt: too long"),
        (httpx.Response(400, text="bad json"), RequestRejected, "bad json"),
        (httpx.Response(404, json={"error": "unknown model"}), NotFound, "unknown model"),
        (httpx.Response(200, json={"error_code": "E42", "error_message": "nope"}), RequestRejected, "nope"),
    ],
)
async def test_submit_refusals_map_to_the_error_tree_without_the_token(
    response: httpx.Response, error: type[Exception], text: str
) -> None:
    client, _ = make_client(sequence(response))
    with pytest.raises(error) as info:
        await client.submit(MODEL, {"prompt": "x"})
    assert text in str(info.value)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("word", "state"),
    [("in_queue", "in_queue"), ("IN_PROGRESS", "in_progress"), ("succeeded", "completed"),
     ("Completed", "completed"), ("canceled", "cancelled"), ("cancelled", "cancelled"), ("failed", "failed")],
)
async def test_status_words_are_normalised(word: str, state: str) -> None:
    client, _ = make_client(sequence(httpx.Response(200, json={"status": word, "queue_position": 2})))
    status = await client.status("r1")
    assert status.status == state
    assert status.queue_position == 2


async def test_status_retries_malformed_and_5xx_answers() -> None:
    client, seen = make_client(
        sequence(httpx.Response(200, text="{oops"), httpx.Response(500), httpx.Response(200, json={"status": "in_progress"}))
    )
    assert (await client.status("r1")).status == "in_progress"
    assert len(seen) == 3


async def test_status_follows_only_links_on_the_api_origin() -> None:
    client, seen = make_client(sequence(httpx.Response(200, json={"status": "in_queue"})))
    await client.status("r1", "https://evil.example.com/steal")
    await client.status("r1", f"{BASE}/requests/r1/status")
    assert [str(r.url) for r in seen] == [f"{BASE}/requests/r1/status"] * 2


async def test_result_collects_urls_only_from_output() -> None:
    payload = {
        "status": "succeeded",
        "status_url": f"{BASE}/requests/r1/status",
        "output": {"image": "https://cdn.runcomfy.net/a.png", "images": ["https://cdn.runcomfy.net/b.png", "x"]},
        "created_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:09Z",
    }
    client, _ = make_client(sequence(httpx.Response(200, json=payload)))
    result = await client.result("r1")
    assert result.status == "completed"
    assert result.output_urls == ["https://cdn.runcomfy.net/a.png", "https://cdn.runcomfy.net/b.png"]
    assert result.finished_at == "2026-01-01T00:00:09Z"
    assert collect_urls({"videos": [{"url": "http://a.runcomfy.com/v.mp4"}]}) == ["http://a.runcomfy.com/v.mp4"]


async def test_links_that_carry_the_token_are_dropped() -> None:
    """A link echoing the token would be written into state.sqlite and report.csv: never kept."""
    payload = {
        "status": "completed",
        "output": {"images": [f"https://cdn.runcomfy.net/a.png?t={TOKEN}", "https://cdn.runcomfy.net/b.png"]},
    }
    client, _ = make_client(sequence(httpx.Response(200, json=payload)))
    assert (await client.result("r1")).output_urls == ["https://cdn.runcomfy.net/b.png"]
    answer = {"request_id": "r1", "status_url": f"{BASE}/requests/r1/status?token={TOKEN}"}
    client, _ = make_client(sequence(httpx.Response(200, json=answer)))
    submitted = await client.submit(MODEL, {"prompt": "a cat", "resolution": "1K"})
    assert isinstance(submitted, Submission)
    assert submitted.status_url is None
    # a stand-in token such as `x` (the README's simulator example) is no secret to look for
    short = ModelApiClient(ApiSettings(BASE, "x"), http=httpx.AsyncClient(transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={"status": "completed", "output": {"image": "https://a.runcomfy.net/x.png"}})
    )))
    assert (await short.result("r1")).output_urls == ["https://a.runcomfy.net/x.png"]


async def test_cancel_outcomes() -> None:
    client, _ = make_client(sequence(httpx.Response(200, json={"status": "cancelled", "outcome": "cancelled"})))
    assert (await client.cancel("r1")).cancelled
    client, _ = make_client(sequence(httpx.Response(200, json={"status": "in_progress", "outcome": "not_cancellable"})))
    assert not (await client.cancel("r1")).cancelled


async def test_download_sends_no_token_and_writes_a_temp_file(tmp_path: Path) -> None:
    client, seen = make_client(sequence(httpx.Response(200, content=b"PNGDATA" * 10)))
    fetched = await client.fetch("https://cdn.runcomfy.net/x.png?sig=1", tmp_path)
    assert fetched.bytes == 70
    assert fetched.path.read_bytes() == b"PNGDATA" * 10
    assert "Authorization" not in seen[0].headers


async def test_a_download_asks_for_no_compression_and_takes_one_given_anyway(tmp_path: Path) -> None:
    # A gzip-encoded file declares its compressed length: compared with the bytes written, the
    # download was taken as cut short and retried until the job failed.
    import gzip

    data = b"PNGDATA" * 1000
    packed = gzip.compress(data)
    client, seen = make_client(
        sequence(httpx.Response(200, content=packed, headers={"Content-Encoding": "gzip", "Content-Length": str(len(packed))}))
    )
    fetched = await client.fetch("https://cdn.runcomfy.net/x.png?sig=1", tmp_path)
    assert fetched.path.read_bytes() == data and fetched.bytes == len(data)
    assert seen[0].headers["Accept-Encoding"] == "identity"


async def test_download_refuses_foreign_hosts_and_redirects_to_them(tmp_path: Path) -> None:
    client, seen = make_client(
        sequence(httpx.Response(302, headers={"Location": "https://evil.example.com/x.png"}))
    )
    with pytest.raises(ApiError, match=r"refusing to download from evil\.example\.com"):
        await client.fetch("https://files.runcomfy.com/x.png", tmp_path)
    assert len(seen) == 1
    with pytest.raises(ApiError, match="refusing"):
        await client.fetch("https://runcomfy.net.evil.com/x.png", tmp_path)
    assert client.download_allowed(f"{BASE.rsplit('/v1', 1)[0]}/files/x.png")


async def test_a_notebooks_client_that_follows_redirects_does_not_follow_them_here(tmp_path: Path) -> None:
    # Given httpx.AsyncClient(follow_redirects=True), httpx followed a file host's redirect to
    # a cloud metadata address itself, where no host check saw it.
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.host == "files.runcomfy.net":
            return httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/meta-data"})
        return httpx.Response(200, content=b"secret metadata")

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer), follow_redirects=True)
    client = ModelApiClient(ApiSettings(BASE, TOKEN), http=http)
    with pytest.raises(ApiError, match=r"refusing to download from 169\.254\.169\.254"):
        await client.fetch("https://files.runcomfy.net/x.png", tmp_path)
    assert seen == ["https://files.runcomfy.net/x.png"] and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("base", "url", "ok"),
    [
        ("http://127.0.0.1:8765/v1", "http://127.0.0.1:8765/files/r1/0.jpg", True),
        # the API's host, but another service on it: no
        ("http://127.0.0.1:8765/v1", "http://127.0.0.1:5432/files/r1/0.jpg", False),
        ("http://127.0.0.1:8765/v1", "http://127.0.0.1/files/r1/0.jpg", False),
        ("https://model-api.runcomfy.net/v1", "https://model-api.runcomfy.net:443/f/x.jpg", True),
        ("https://model-api.runcomfy.net/v1", "https://model-api.runcomfy.net:8443/f/x.jpg", False),
        ("https://model-api.runcomfy.net/v1", "https://cdn.runcomfy.com/f/x.jpg", True),
        ("https://model-api.runcomfy.net/v1", "http://cdn.runcomfy.com:80/f/x.jpg", True),
        ("https://model-api.runcomfy.net/v1", "https://cdn.runcomfy.com:2379/f/x.jpg", False),
        ("https://model-api.runcomfy.net/v1", "https://cdn.runcomfy.com:99999/f/x.jpg", False),
        # a user name or password would go along to the host as Basic auth
        ("http://127.0.0.1:8765/v1", "http://evil.example@127.0.0.1:8765/files/x.jpg", False),
        ("https://model-api.runcomfy.net/v1", "https://u:p@cdn.runcomfy.com/f/x.jpg", False),
        # an IPv6 literal whose zone id ends like a RunComfy host is still ::1
        ("https://model-api.runcomfy.net/v1", "https://[::1%25.runcomfy.net]/f/x.jpg", False),
        ("https://model-api.runcomfy.net/v1", "https://[::1%.runcomfy.com]:443/f/x.jpg", False),
        ("https://model-api.runcomfy.net/v1", "https://cdn_1.runcomfy.net/f/x.jpg", True),
        ("http://[::1]:8765/v1", "http://[::1]:8765/files/r1/0.jpg", True),
    ],
)
def test_downloads_come_from_runcomfy_on_web_ports_or_the_apis_own_host_and_port(base: str, url: str, ok: bool) -> None:
    client = ModelApiClient(ApiSettings(base, TOKEN))
    assert client.download_allowed(url) is ok


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:5432/f.jpg", "from 127.0.0.1:5432: the API's host, but not its port (8765)"),
        ("https://cdn.runcomfy.com:2379/f.jpg", "from cdn.runcomfy.com:2379: a RunComfy host, but not on a web port (80, 443)"),
        ("http://u@127.0.0.1:8765/f.jpg", "a URL with a user name or password in it"),
        ("https://evil.example.com/f.jpg", "from evil.example.com: not a RunComfy host"),
    ],
)
async def test_a_refused_download_says_what_was_wrong_with_its_url(url: str, said: str, tmp_path: Path) -> None:
    client = ModelApiClient(ApiSettings("http://127.0.0.1:8765/v1", TOKEN))
    with pytest.raises(ApiError, match="refusing to download") as caught:
        await client.fetch(url, tmp_path)
    assert str(caught.value) == f"refusing to download {said}"


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateways_html_error_page_is_said_as_its_words_on_one_line(status: int) -> None:
    page = (
        f"<html>\r\n<head><title>{status} Gateway Time-out</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    client, _ = make_client(sequence(httpx.Response(status, text=page)))
    result = await client.submit(MODEL, {"prompt": "x"})
    assert isinstance(result, UnknownOutcome)
    assert f"from a gateway: {status} Gateway Time-out {status} Gateway Time-out nginx)" in result.reason
    assert "<" not in result.reason and "\r" not in result.reason


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com\\@cdn.runcomfy.net/x.png",
        "https://cdn.runcomfy.net/x .png",
        "https://cdn.runcomfy.net/x\r\nHost: evil.example.com",
        "https://cdn.runcomfy.net/\x00x.png",
    ],
)
async def test_download_refuses_urls_whose_host_parsers_disagree_on(url: str, tmp_path: Path) -> None:
    client, seen = make_client(sequence(httpx.Response(200, content=b"x")))
    assert not client.download_allowed(url)
    with pytest.raises(ApiError, match="malformed URL"):
        await client.fetch(url, tmp_path)
    assert seen == []


async def test_download_failures_leave_no_partial_file(tmp_path: Path) -> None:
    client, _ = make_client(sequence(httpx.Response(404)))
    with pytest.raises(NotFound):
        await client.fetch("https://cdn.runcomfy.net/x.png", tmp_path)
    client, _ = make_client(sequence(httpx.Response(200, content=b"x" * 100)))
    client.max_download_bytes = 50
    with pytest.raises(ApiError, match="cap"):
        await client.fetch("https://cdn.runcomfy.net/x.png", tmp_path)
    assert list(tmp_path.iterdir()) == []


async def test_every_way_a_download_goes_wrong_is_its_error_and_leaves_no_partial_file(tmp_path: Path) -> None:
    # A file host with no Content-Length streaming on and on would fill the disk; one that cuts
    # the file short would leave an image no check of its bytes flags; a redirect loop would
    # never end. Each is an error of the tree (ServiceUnavailable: the caller tries again), and
    # no .part file is ever left in images/.
    url = "https://cdn.runcomfy.net/x.png"

    def streamed(*parts: bytes, then: Exception | None = None, **headers: str) -> Handler:
        async def body() -> Any:
            for part in parts:
                yield part
            if then is not None:
                raise then

        return lambda request: httpx.Response(200, content=body(), headers=headers)

    cases: list[tuple[Handler, type[Exception], str]] = [
        (streamed(b"x" * 40, b"x" * 40), ApiError, "over the cap of 50 bytes"),  # (no length said)
        (streamed(b"x" * 10, **{"Content-Length": "30"}), ServiceUnavailable, r"cut short \(10 of 30 bytes\)"),
        (streamed(b"x" * 10, then=httpx.ReadError("connection reset")), ServiceUnavailable, "ReadError: connection reset"),
        (sequence(httpx.Response(302, headers={"Location": url})), ApiError, "too many redirects"),
        (sequence(httpx.Response(503)), ServiceUnavailable, "HTTP 503"),
    ]
    for handler, error, said in cases:
        client, seen = make_client(handler)
        client.max_download_bytes = 50
        with pytest.raises(error, match=said):
            await client.fetch(url, tmp_path)
        assert list(tmp_path.iterdir()) == [], said
        assert len(seen) == (MAX_REDIRECTS + 1 if said == "too many redirects" else 1)
    # a 429 pauses every later call of the budget for its Retry-After, not only this download
    clock = FakeTime()
    client, seen = make_client(sequence(httpx.Response(429, headers={"Retry-After": "30"}), accepted), clock)
    with pytest.raises(ServiceUnavailable, match="rate limited"):
        await client.fetch(url, tmp_path)
    assert client.counters["rate_limited"] == 1 and clock.now == 0
    await client.status("r1")
    assert clock.now >= 30 and len(seen) == 2


def test_token_discovery(tmp_path: Path) -> None:
    assert find_token({"RUNCOMFY_TOKEN": " a ", "RUNCOMFY_API_TOKEN": "b"}) == "a"
    assert find_token({"RUNCOMFY_API_TOKEN": "b", "HOME": str(tmp_path)}) == "b"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "token.json").write_text(json.dumps({"access_token": "c"}))
    assert find_token({"RUNCOMFY_CONFIG_DIR": str(conf)}) == "c"
    xdg = tmp_path / "xdg"
    (xdg / "runcomfy").mkdir(parents=True)
    (xdg / "runcomfy" / "token.json").write_text(json.dumps({"access_token": "d"}))
    assert find_token({"XDG_CONFIG_HOME": str(xdg)}) == "d"
    home = tmp_path / "home"
    (home / ".config" / "runcomfy").mkdir(parents=True)
    (home / ".config" / "runcomfy" / "token.json").write_text("not json")
    assert find_token({"HOME": str(home)}) is None
    # where each came from, as a refused run says it
    assert token_source({"RUNCOMFY_TOKEN": " a ", "RUNCOMFY_API_TOKEN": "b"}) == "RUNCOMFY_TOKEN"
    assert token_source({"RUNCOMFY_TOKEN": " ", "RUNCOMFY_API_TOKEN": "b"}) == "RUNCOMFY_API_TOKEN"
    assert token_source({"RUNCOMFY_CONFIG_DIR": str(conf)}) == str(conf / "token.json")
    assert token_source({"HOME": str(home)}) is None
    with pytest.raises(AuthError, match=r"RUNCOMFY_TOKEN.*Simulator\(\)") as info:
        api_settings(None, {"HOME": str(home)})
    assert info.value.exit_code == 77
    assert f"(The login file {home / '.config' / 'runcomfy' / 'token.json'} is not valid JSON.)" in str(info.value)
    (home / ".config" / "runcomfy" / "token.json").write_text(json.dumps({"refresh_token": "r"}))
    with pytest.raises(AuthError, match="holds no access_token"):
        api_settings(None, {"HOME": str(home)})
    with pytest.raises(AuthError) as info:
        api_settings(None, {"HOME": str(tmp_path / "nobody")})
    assert "login file" not in str(info.value)  # no file at all: nothing more to say


def test_base_url_resolution() -> None:
    assert resolve_base_url(None, {}) == "https://model-api.runcomfy.net/v1"
    assert resolve_base_url(None, {"RUNCOMFY_MODEL_API_BASE": "http://127.0.0.1:9/v1/"}) == "http://127.0.0.1:9/v1"
    assert resolve_base_url("https://h:1/v1", {"RUNCOMFY_MODEL_API_BASE": "https://x/v1"}) == "https://h:1/v1"
    for bad in ("ftp://x", "http://[::1/v1", "http://127.0.0.1:port/v1"):
        with pytest.raises(UsageError, match=r"base_url: .* is not an http"):
            resolve_base_url(bad, {})
    assert "zzz-secret" not in repr(ApiSettings(BASE, "zzz-secret"))


# --- the default wire (aiohttp, no httpx client given) over a real loopback socket -------------


class LoopbackApi:
    """A tiny API and file host on 127.0.0.1 that records what it was sent."""

    def __init__(self) -> None:
        from aiohttp import web

        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.web = web
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(self.app)
        self.port = 0

    async def handle(self, request: Any) -> Any:
        web = self.web
        body = await request.read()
        self.seen.append((request.method, request.path, dict(request.headers), body))
        if request.path == "/v1/models/m":
            return web.json_response({"request_id": "r9", "status_url": f"{self.base}/requests/r9/status"})
        if request.path == "/v1/requests/r9/status":
            return web.json_response({"status": "IN_PROGRESS", "queue_position": 0})
        if request.path == "/v1/requests/gone/status":
            return web.json_response({"detail": "no such request"}, status=404)
        if request.path == "/v1/requests/busy/status":
            return web.json_response({"detail": "busy"}, status=429, headers={"Retry-After": "0"})
        if request.path == "/files/moved.png":
            raise web.HTTPFound("/files/x.png")
        if request.path == "/files/x.png":
            return web.Response(body=b"PNGDATA" * 1000, content_type="image/png")
        if request.path == "/v1/models/drop":
            assert request.transport is not None
            request.transport.close()  # the request arrived, the answer never comes
            await asyncio.sleep(0.05)
        return web.Response(status=404)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> LoopbackApi:
        await self.runner.setup()
        site = self.web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def default_client(base: str, clock: FakeTime) -> ModelApiClient:
    return ModelApiClient(
        ApiSettings(base, TOKEN),
        pacer=SubmitPacer(600, clock=clock, sleep=clock.sleep),
        budget=RequestBudget(1000, clock=clock, sleep=clock.sleep),
        backoff=Backoff(base=0.1, cap=1.0),
        sleep=clock.sleep,
        max_retries=2,
        max_rate_limited=2,
    )


async def test_default_wire_sends_the_token_to_the_api_and_never_with_a_download(tmp_path: Path) -> None:
    import hashlib

    async with LoopbackApi() as api, default_client(api.base, FakeTime()) as client:
        sub = await client.submit("m", {"prompt": "a cat"})
        assert isinstance(sub, Submission) and sub.request_id == "r9"
        status = await client.status("r9", sub.status_url)
        assert (status.status, status.queue_position) == ("in_progress", 0)
        with pytest.raises(NotFound, match="no such request"):
            await client.status("gone")
        fetched = await client.fetch(f"http://127.0.0.1:{api.port}/files/moved.png", tmp_path)
    method, path, headers, body = api.seen[0]
    assert (method, path, json.loads(body)) == ("POST", "/v1/models/m", {"prompt": "a cat"})
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/json"
    assert api.seen[1][2]["Authorization"] == f"Bearer {TOKEN}"
    downloads = [seen for seen in api.seen if seen[1].startswith("/files/")]
    assert [p for _, p, _, _ in downloads] == ["/files/moved.png", "/files/x.png"]  # redirect followed
    assert all("Authorization" not in h for _, _, h, _ in downloads)
    assert fetched.path.read_bytes() == b"PNGDATA" * 1000
    assert fetched.sha256 == hashlib.sha256(b"PNGDATA" * 1000).hexdigest()
    assert fetched.bytes == 7000


async def test_default_wire_tells_a_connection_never_made_from_an_answer_lost() -> None:
    import socket

    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    clock = FakeTime()
    async with default_client(f"http://127.0.0.1:{closed_port}/v1", clock) as client:
        # refused: the body never left (not an unknown outcome); and on this machine a refusal
        # means no program has the port, which a retry would find again: given up at once
        with pytest.raises(NotRetried, match=rf"nothing listens on 127.0.0.1:{closed_port} \(Connection refused\)"):
            await client.submit("m", {"prompt": "x"})
        assert client.counters["submits"] == 1 and client.counters["unknown_submits"] == 0
    async with LoopbackApi() as api, default_client(api.base, clock) as client:
        outcome = await client.submit("drop", {"prompt": "x"})
        assert isinstance(outcome, UnknownOutcome)  # the body went out: never retried here
        assert client.counters["submits"] == 1
        assert TOKEN not in outcome.reason
        with pytest.raises(Exception, match="rate limited"):
            await client.status("busy")
        assert client.counters["rate_limited"] == 3


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8765/v1", True),
        ("http://localhost:8765/v1", True),
        ("http://[::1]:8765/v1", True),
        ("https://model-api.example.com/v1", True),
        ("http://model-api.example.com/v1", False),
        ("http://192.168.1.20:8765/v1", False),
    ],
)
def test_the_token_never_goes_over_plain_http_beyond_this_machine(url: str, ok: bool) -> None:
    if ok:
        assert resolve_base_url(url, {}) == url
    else:
        with pytest.raises(UsageError, match="refusing to send the token over plain http"):
            resolve_base_url(url, {})


# --- what httpx users get by default: proxies from the environment, checked certificates -------


@pytest.mark.parametrize(
    ("env", "scheme", "host", "proxy"),
    [
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https", "model-api.runcomfy.net", "http://proxy:3128"),
        ({"https_proxy": "http://proxy:3128"}, "https", "cdn.runcomfy.com", "http://proxy:3128"),
        ({"ALL_PROXY": "http://all:1080"}, "https", "model-api.runcomfy.net", "http://all:1080"),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".runcomfy.net"}, "https", "model-api.runcomfy.net", None),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, "https", "model-api.runcomfy.net", None),
        ({"HTTP_PROXY": "http://proxy:3128"}, "http", "127.0.0.1", None),  # the simulator: never proxied
        ({"HTTP_PROXY": "http://proxy:3128"}, "http", "localhost", None),
        ({"HTTP_PROXY": "http://proxy:3128"}, "https", "model-api.runcomfy.net", None),  # not for https
        ({}, "https", "model-api.runcomfy.net", None),
    ],
)
def test_env_proxy_follows_the_environment_but_never_for_this_machine(
    env: dict[str, str], scheme: str, host: str, proxy: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seedream_pipe.transport import env_proxy

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert env_proxy(scheme, host) == proxy


async def test_default_wire_goes_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    async with LoopbackApi() as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        # a made-up host that does not resolve: only the proxy can have answered
        async with default_client("http://api.seedream-pipe.invalid/v1", FakeTime()) as client:
            sub = await client.submit("m", {"prompt": "a cat"})
    assert isinstance(sub, Submission) and sub.request_id == "r9"
    method, path, headers, _ = proxy.seen[0]
    assert (method, path, headers["Host"]) == ("POST", "/v1/models/m", "api.seedream-pipe.invalid")


async def test_a_proxy_that_cannot_be_reached_is_named_as_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with default_client("http://api.seedream-pipe.invalid/v1", FakeTime()) as client:
        with pytest.raises(ServiceUnavailable, match=f"cannot reach the proxy at 127.0.0.1:{closed_port}"):
            await client.submit("m", {"prompt": "a cat"})
        assert client.counters["unknown_submits"] == 0  # never connected: safe to send again


async def test_default_wire_refuses_a_certificate_it_cannot_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    async with LoopbackApi() as api:
        await api.runner.cleanup()  # serve the same routes over TLS instead
        await api.runner.setup()
        site = api.web.TCPSite(api.runner, "127.0.0.1", 0, ssl_context=server_tls)
        await site.start()
        base = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]

        # a self-signed certificate: refused before anything (the token above all) is sent, and
        # not tried again, since every try would meet the same certificate
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        async with default_client(base, FakeTime()) as client:
            with pytest.raises(NotRetried, match=r"certificate is not trusted .*SSL_CERT_FILE"):
                await client.submit("m", {"prompt": "a cat"})
            assert client.counters["retries"] == 0
        assert api.seen == []

        # the same server, its CA trusted the way httpx is told to: SSL_CERT_FILE
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        async with default_client(base, FakeTime()) as client:
            sub = await client.submit("m", {"prompt": "a cat"})
        assert isinstance(sub, Submission) and sub.request_id == "r9"
        assert api.seen[0][2]["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("token", ["SECRET\r\nX-Evil: 1", "SEC\tRET", "SECRET\x01x", "SECRET\x7f"])
def test_token_with_a_control_character_is_refused_by_name_not_shown(tmp_path: Path, token: str) -> None:
    # it used to reach the first POST, fail there, and leave a job "submitting" and a silent exit 1
    with pytest.raises(AuthError, match="RUNCOMFY_TOKEN contains a control character") as info:
        api_settings(None, {"RUNCOMFY_TOKEN": token})
    assert info.value.exit_code == 77 and "SECRET" not in str(info.value)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "token.json").write_text(json.dumps({"access_token": token}))
    with pytest.raises(AuthError, match=r"token\.json contains a control character"):
        find_token({"RUNCOMFY_CONFIG_DIR": str(conf)})


def test_a_host_that_does_not_resolve_is_said_in_words() -> None:
    import socket
    import ssl
    from types import SimpleNamespace

    import aiohttp

    from seedream_pipe.transport import _map

    key = SimpleNamespace(host="model-api.runcomfy.net", port=443, ssl=ssl.create_default_context())
    dns = aiohttp.ClientConnectorError(key, socket.gaierror(-2, "Name or service not known"))  # type: ignore[arg-type]
    said = str(_map(dns))
    assert said.startswith("cannot find the host model-api.runcomfy.net (Name or service not known)")
    assert "SSLContext" not in said  # aiohttp's own text shows the context's repr
    # a name that does not exist is not retried; a resolver down for a moment is
    from seedream_pipe.transport import NeverConnects

    assert isinstance(_map(dns), NeverConnects)
    flaky = aiohttp.ClientConnectorError(key, socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))  # type: ignore[arg-type]
    assert not isinstance(_map(flaky), NeverConnects)


def test_a_tls_handshake_that_fails_is_said_as_tls_not_as_an_os_error() -> None:
    import ssl
    from types import SimpleNamespace

    import aiohttp

    from seedream_pipe.transport import _map

    key = SimpleNamespace(host="127.0.0.1", port=8765, ssl=True)
    wrong = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    said = str(_map(aiohttp.ClientConnectorError(key, wrong)))  # type: ignore[arg-type]
    assert "WRONG_VERSION_NUMBER" in said and "Operation not permitted" not in said


async def test_https_to_a_plain_http_port_is_given_up_at_once_not_retried() -> None:
    async with LoopbackApi() as api:
        https = api.base.replace("http://", "https://", 1)
        async with default_client(https, FakeTime()) as client:
            with pytest.raises(NotRetried, match=r"WRONG_VERSION_NUMBER.*not retried") as info:
                await client.status("r9")
            assert info.value.exit_code == 69
            with pytest.raises(NotRetried):
                await client.submit("m", {"prompt": "a cat"})
            assert client.counters["retries"] == 0 and client.counters["unknown_submits"] == 0
        assert api.seen == []  # nothing readable reached the server


def test_only_a_tls_failure_every_try_would_repeat_is_marked_so() -> None:
    import ssl
    from types import SimpleNamespace

    import aiohttp

    from seedream_pipe.transport import NeverConnects, _map

    key = SimpleNamespace(host="127.0.0.1", port=8765, ssl=True)

    def mapped(reason: str) -> httpx.HTTPError:
        error = ssl.SSLError(1, f"[SSL: {reason}] ...")
        error.reason = reason  # what OpenSSL's errors carry
        return _map(aiohttp.ClientConnectorError(key, error))  # type: ignore[arg-type]

    assert isinstance(mapped("WRONG_VERSION_NUMBER"), NeverConnects)
    # a handshake cut off mid-way: a busy load balancer does that, and a retry may get through
    cut = mapped("UNEXPECTED_EOF_WHILE_READING")
    assert isinstance(cut, httpx.ConnectError) and not isinstance(cut, NeverConnects)
