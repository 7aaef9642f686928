"""The built-in simulator, over a real socket: protocol, lifecycle, images, rate limit, stats, faults."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from click.testing import CliRunner
from PIL import Image, ImageChops

from seedream_pipe.cli import cli
from seedream_pipe.errors import UsageError
from seedream_pipe.sim import (
    FAULT_NAMES,
    Faults,
    SimConfig,
    Simulator,
    body_hash,
    image_size,
    render_file,
    render_png,
)
from seedream_pipe.sim.app import SimApp

MODEL = "bytedance/seedream-4-0/text-to-image"
AUTH = {"Authorization": "Bearer test-token"}


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_open_clients: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().close()


class Api:
    """A tiny client of the simulator, for tests."""

    def __init__(self, sim: Simulator, token: str | None = "test-token") -> None:
        self.sim = sim
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=sim.base_url, headers=headers, timeout=10)
        _open_clients.append(self.http)

    def submit(self, body: Any = None, *, model: str = MODEL, **kwargs: Any) -> httpx.Response:
        if body is None and "content" not in kwargs:
            body = {"prompt": "a red fox in snow", "resolution": "1K"}
        if body is not None:
            kwargs["json"] = body
        return self.http.post(f"/models/{model}", **kwargs)

    def submit_ok(self, body: Any = None) -> str:
        response = self.submit(body)
        assert response.status_code == 200, response.text
        return str(response.json()["request_id"])

    def status(self, request_id: str) -> httpx.Response:
        return self.http.get(f"/requests/{request_id}/status")

    def result(self, request_id: str) -> httpx.Response:
        return self.http.get(f"/requests/{request_id}/result")

    def cancel(self, request_id: str) -> httpx.Response:
        return self.http.post(f"/requests/{request_id}/cancel")

    def image_url(self, request_id: str) -> str:
        self.sim.wait_status(request_id, "completed")
        return str(self.result(request_id).json()["output"]["image"])

    def admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        origin = self.sim.base_url.removesuffix("/v1")
        return httpx.request(method, f"{origin}/admin/{path}", json=body)


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def make(*, clock: Any = None, wall_clock: Any = None, **settings: Any) -> Simulator:
        settings.setdefault("latency", 0.01)
        settings.setdefault("latency_jitter", 0.0)
        extra: dict[str, Any] = {}
        if clock is not None:
            extra["clock"] = clock
        if wall_clock is not None:
            extra["wall_clock"] = wall_clock
        sim = Simulator(SimConfig(**settings), **extra).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., Simulator]) -> Simulator:
    return make_sim()


@pytest.fixture
def api(sim: Simulator) -> Api:
    return Api(sim)


# -- protocol ---------------------------------------------------------------------------------


def test_submit_answers_an_id_and_absolute_urls(api: Api) -> None:
    response = api.submit()
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"request_id", "status_url", "result_url", "cancel_url"}
    rid = data["request_id"]
    base = api.sim.base_url
    assert data["status_url"] == f"{base}/requests/{rid}/status"
    assert data["result_url"] == f"{base}/requests/{rid}/result"
    assert data["cancel_url"] == f"{base}/requests/{rid}/cancel"


def test_base_url_is_loopback_with_the_bound_port(sim: Simulator) -> None:
    assert sim.base_url == f"http://127.0.0.1:{sim.port}/v1"
    assert sim.port > 0


def test_lifecycle_and_queue_positions(make_sim: Callable[..., Simulator]) -> None:
    # workers=0 holds every job in the queue, so positions are exact; a long latency then keeps
    # the first job running for the rest of the test (stop() ends it).
    sim = make_sim(workers=0, latency=60.0)
    api = Api(sim)
    a, b, c = (api.submit_ok({"prompt": f"job {i}"}) for i in range(3))
    for position, rid in enumerate((a, b, c)):
        data = api.status(rid).json()
        assert data["status"] == "in_queue"
        assert data["queue_position"] == position
        assert set(data) == {"request_id", "status", "queue_position", "status_url", "result_url"}
    sim.configure(workers=1)
    assert sim.wait_status(a, "in_progress") == "in_progress"
    running = api.status(a).json()
    assert running["status"] == "in_progress"
    assert "queue_position" not in running
    assert api.status(b).json()["queue_position"] == 0
    assert api.status(c).json()["queue_position"] == 1
    stats = sim.stats()
    assert (stats["in_flight"], stats["peak_in_flight"]) == (3, 3)


def test_jobs_complete_with_a_result(api: Api) -> None:
    rid = api.submit_ok()
    assert api.sim.wait_status(rid) == "completed"
    assert api.status(rid).json()["status"] == "completed"
    data = api.result(rid).json()
    assert set(data) == {"request_id", "status", "output", "created_at", "finished_at"}
    assert data["request_id"] == rid
    assert data["status"] == "completed"
    assert set(data["output"]) == {"image"}
    assert data["output"]["image"].startswith(api.sim.base_url.removesuffix("/v1") + f"/files/{rid}/0.jpg?expires=")
    for key in ("created_at", "finished_at"):
        assert data[key].endswith("Z") and "T" in data[key]
    assert data["created_at"] <= data["finished_at"]


def test_result_before_completion_is_200_with_status_and_no_output(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(workers=0)
    api = Api(sim)
    rid = api.submit_ok()
    response = api.result(rid)
    assert response.status_code == 200
    data = response.json()
    assert data["status"] == "in_queue"
    assert data["queue_position"] == 0  # as a status read says it
    assert "output" not in data
    assert "finished_at" not in data


def test_images_array_option(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(images_array=True)
    api = Api(sim)
    rid = api.submit_ok()
    sim.wait_status(rid)
    output = api.result(rid).json()["output"]
    assert set(output) == {"images"}
    assert len(output["images"]) == 1
    assert httpx.get(output["images"][0]).status_code == 200


def test_cancel_queued_running_and_finished(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(workers=1, latency=60.0)
    api = Api(sim)
    running = api.submit_ok({"prompt": "first"})
    queued = api.submit_ok({"prompt": "second"})
    sim.wait_status(running, "in_progress")

    assert api.cancel(queued).json() == {"request_id": queued, "status": "cancelled", "outcome": "cancelled"}
    assert api.status(queued).json()["status"] == "cancelled"
    result = api.result(queued).json()
    assert result["status"] == "cancelled" and "output" not in result
    # a retried cancel gets the same answer
    assert api.cancel(queued).json()["outcome"] == "cancelled"

    assert api.cancel(running).json() == {"request_id": running, "status": "in_progress", "outcome": "not_cancellable"}
    assert api.status(running).json()["status"] == "in_progress"

    sim.configure(latency=0.0)
    done = api.submit_ok({"prompt": "third"})
    sim.configure(workers=2)  # a fresh worker takes it while the first is still busy
    sim.wait_status(done, "completed")
    assert api.cancel(done).json()["outcome"] == "not_cancellable"
    stats = sim.stats()
    assert (stats["cancels"], stats["cancelled"], stats["completed"]) == (4, 1, 1)


def test_auth_missing_or_malformed_header_is_401(api: Api) -> None:
    rid = api.submit_ok()
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}, {"Authorization": "test-token"}):
        response = httpx.get(f"{api.sim.base_url}/requests/{rid}/status", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


def test_any_token_is_accepted_when_none_is_configured(api: Api) -> None:
    assert Api(api.sim, token="whatever-else").submit().status_code == 200


def test_configured_token_is_required(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(token="s3cret")
    assert Api(sim, token="s3cret").submit().status_code == 200
    wrong = Api(sim, token="guess").submit()
    assert wrong.status_code == 401
    assert "s3cret" not in wrong.text
    assert "s3cret" not in repr(sim.cfg)
    assert sim.stats()["submits_rejected"] == 1


def test_revoked_token_gets_401_everywhere_until_restored(api: Api) -> None:
    rid = api.submit_ok()
    api.sim.revoke_token()
    for response in (api.submit(), api.status(rid), api.result(rid), api.cancel(rid)):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "token_revoked"
    stats = api.sim.stats()
    assert stats["token_revoked"] is True
    assert stats["faults"]["revoke_after"] == 4
    api.sim.restore_token()
    assert api.status(rid).status_code == 200


def test_unknown_model_and_request_are_404(api: Api) -> None:
    response = api.submit(model="acme/nope/text-to-image")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    for call in (api.status, api.result, api.cancel):
        response = call("no-such-id")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "request_not_found"
    unknown_route = api.http.get("/nothing/here")
    assert unknown_route.status_code == 404
    assert unknown_route.json()["error"]["code"] == "not_found"


def test_invalid_json_is_400(api: Api) -> None:
    response = api.submit(content=b'{"prompt": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "body", [b"[" * 100_000 + b"]" * 100_000, b'{"prompt": "x", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}"]
)
def test_json_nested_too_deep_is_a_400_not_a_500_a_client_would_retry(api: Api, body: bytes) -> None:
    response = api.submit(content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == {"code": "invalid_json", "message": "Request body is nested too deeply."}
    assert api.sim.stats()["submits_accepted"] == 0
    deep = httpx.post(
        api.sim.base_url.removesuffix("/v1") + "/admin/faults",
        content=b"[" * 100_000 + b"]" * 100_000,
        headers={"Content-Type": "application/json"},
    )
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]


def test_a_405_says_which_methods_are_allowed(api: Api) -> None:
    response = api.http.get(f"/models/{MODEL}")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_body_over_one_mib_is_413(api: Api) -> None:
    response = api.submit({"prompt": "x" * (1024 * 1024)})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert api.sim.stats()["submits_rejected"] == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"resolution": "1K"}, "'prompt' is a required property"),
        ({"prompt": "x", "resolution": "5K"}, "resolution: '5K' is not one of"),
        ({"prompt": 3}, "prompt: 3 is not of type 'string'"),
        ({"prompt": "x", "seed": 1}, "Additional properties are not allowed ('seed' was unexpected)"),
        ([1, 2], "is not of type 'object'"),
    ],
)
def test_schema_mismatch_is_422_with_the_reason(api: Api, body: Any, reason: str) -> None:
    response = api.submit(body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert reason in error["message"]


# -- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resolution", "prompt", "size"),
    [
        ("1K", "a lighthouse", (1024, 1024)),
        ("2K", "a lighthouse", (2048, 2048)),
        ("4K", "a lighthouse", (4096, 4096)),
        ("1K", "a lighthouse, 16:9", (1368, 768)),
        ("1K", "portrait 3:4 of a sailor", (888, 1184)),
        ("1K", "portrait 4:3 of a sailor", (888, 1184)),
        ("2K", "wide 21:9 panorama", (3128, 1344)),
        ("1K", "meet at 10:30 by the sea", (1024, 1024)),
        ("1K", "lunch at 12:15, 3:2 photo", (1256, 840)),
        ("2048x2048 (1:1)", "x 16:9", (2048, 2048)),
        ("2304x1728 (4:3)", "x", (2304, 1728)),
        ("1728x2304 (3:4)", "x", (1728, 2304)),
        ("2560x1440 (16:9)", "x", (2560, 1440)),
        ("1440x2560 (9:16)", "x", (1440, 2560)),
        ("2496x1664 (3:2)", "x", (2496, 1664)),
        ("1664x2496 (2:3)", "x", (1664, 2496)),
        ("3024x1296 (21:9)", "x", (3024, 1296)),
        (None, "x", (2048, 2048)),
    ],
)
def test_image_size_per_resolution(resolution: str | None, prompt: str, size: tuple[int, int]) -> None:
    assert image_size(resolution, prompt) == size


@pytest.mark.parametrize(
    ("body", "size"),
    [
        ({"prompt": "a fox", "resolution": "1K"}, (1024, 1024)),
        ({"prompt": "a fox, cinematic 16:9", "resolution": "1K"}, (1368, 768)),
        ({"prompt": "a fox", "resolution": "2560x1440 (16:9)"}, (2560, 1440)),
    ],
)
def test_downloaded_image_has_the_requested_size(api: Api, body: dict[str, str], size: tuple[int, int]) -> None:
    rid = api.submit_ok(body)
    response = httpx.get(api.image_url(rid))  # no token: file URLs are pre-signed
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"  # what Seedream 4.0 makes
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG"
    assert image.size == size


def test_image_format_png_serves_pngs_and_a_handed_out_url_keeps_its_format(
    make_sim: Callable[..., Simulator],
) -> None:
    sim = make_sim(image_format="png")
    api = Api(sim)
    rid = api.submit_ok({"prompt": "a fox", "resolution": "1K"})
    png_url = api.image_url(rid)
    assert "/0.png?" in png_url
    response = httpx.get(png_url)
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).format == "PNG"
    assert response.content == render_png("a fox", "1K")

    # switched while running: new result reads hand out JPEG URLs; the PNG URL still serves PNG
    sim.configure(image_format="jpeg")
    jpeg_url = api.image_url(rid)
    assert "/0.jpg?" in jpeg_url
    assert Image.open(io.BytesIO(httpx.get(jpeg_url).content)).format == "JPEG"
    assert Image.open(io.BytesIO(httpx.get(png_url).content)).format == "PNG"

    # a suffix it does not serve is no file
    assert httpx.get(png_url.replace("/0.png?", "/0.gif?")).status_code == 404
    with pytest.raises(UsageError, match="image_format must be one of 'jpeg', 'png'"):
        sim.configure(image_format="gif")


def test_images_are_deterministic_per_body_and_take_and_differ_per_prompt(api: Api) -> None:
    first = api.submit_ok({"prompt": "a fox", "resolution": "1K"})
    again = api.submit_ok({"prompt": "a fox", "resolution": "1K"})  # a repeat: the second take
    other = api.submit_ok({"prompt": "a heron", "resolution": "1K"})
    data = {rid: httpx.get(api.image_url(rid)).content for rid in (first, again, other)}
    assert httpx.get(api.image_url(first)).content == data[first]  # the same file every time
    assert data[first] == render_file("a fox", "1K", "jpeg")
    assert data[again] == render_file("a fox", "1K", "jpeg", take=2)
    assert data[other] == render_file("a heron", "1K", "jpeg")
    pixels = {rid: Image.open(io.BytesIO(data[rid])).convert("RGB") for rid in data}
    # visibly different per prompt: the background colours differ, not only the text
    assert pixels[first].getpixel((1023, 1023)) != pixels[other].getpixel((1023, 1023))
    # a repeat is another picture, as the real model's would be, not the same file again
    diff = ImageChops.difference(pixels[first], pixels[again]).convert("L")
    changed = sum(diff.histogram()[25:])  # pixels more than a JPEG's noise apart
    assert changed > 0.05 * 1024 * 1024


def test_takes_are_counted_per_body(api: Api) -> None:
    body = {"prompt": "an owl", "resolution": "1K"}
    rids = [api.submit_ok(body) for _ in range(3)]
    api.submit_ok({"prompt": "a wren", "resolution": "1K"})  # another body: its own first take
    assert sorted(api.sim.stats()["submits_per_body"].values()) == [1, 3]
    assert api.sim.stats()["duplicate_submits"] == 2
    data = [httpx.get(api.image_url(rid)).content for rid in reversed(rids)]  # any fetch order
    assert data == [render_file("an owl", "1K", "jpeg", take=t) for t in (3, 2, 1)]
    with pytest.raises(ValueError, match="take must be 1 or more"):
        render_file("an owl", "1K", "jpeg", take=0)


def test_tampered_or_unsigned_file_urls_are_403(api: Api) -> None:
    url = api.image_url(api.submit_ok())
    base, _, query = url.partition("?")
    params = dict(p.split("=") for p in query.split("&"))
    tampered_sig = f"{base}?expires={params['expires']}&sig={'0' * 64}"
    later = f"{base}?expires={int(params['expires']) + 1000}&sig={params['sig']}"
    for bad in (tampered_sig, later, base, f"{base}?expires=soon&sig=x"):
        response = httpx.get(bad)
        assert response.status_code == 403, bad
        assert response.json()["error"]["code"] == "invalid_signature"
    assert httpx.get(url).status_code == 200


def test_file_urls_expire_after_the_ttl(make_sim: Callable[..., Simulator]) -> None:
    wall = FakeClock(1_800_000_000.0)
    sim = make_sim(wall_clock=wall, url_ttl_s=60.0)
    api = Api(sim)
    url = api.image_url(api.submit_ok())
    assert "expires=1800000060&" in url
    wall.now += 60.0
    assert httpx.get(url).status_code == 200
    wall.now += 1.0
    response = httpx.get(url)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "url_expired"
    assert "expired" in response.json()["error"]["message"]
    # reading the result again hands out a fresh URL
    rid = url.split("/files/")[1].split("/")[0]
    assert httpx.get(api.result(rid).json()["output"]["image"]).status_code == 200


def test_file_of_unknown_or_unfinished_job_is_404(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(workers=0)
    api = Api(sim)
    rid = api.submit_ok()
    origin = sim.base_url.removesuffix("/v1")
    assert httpx.get(f"{origin}/files/{rid}/0.png?expires=1&sig=x").status_code == 404
    assert httpx.get(f"{origin}/files/nope/0.png?expires=1&sig=x").status_code == 404


# -- rate limit -------------------------------------------------------------------------------


def test_rpm_limit_answers_429_with_retry_after(make_sim: Callable[..., Simulator]) -> None:
    clock = FakeClock(1000.0)
    sim = make_sim(rpm=2, clock=clock)
    api = Api(sim)
    assert api.submit().status_code == 200
    clock.now += 20
    assert api.submit().status_code == 200
    limited = api.submit()
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "40"
    assert limited.json()["error"]["code"] == "rate_limited"
    clock.now += 39.5
    assert api.submit().headers["Retry-After"] == "1"  # never less than one second
    clock.now += 0.5
    assert api.submit().status_code == 200  # the first submit left the window
    assert api.submit().status_code == 429
    stats = sim.stats()
    assert (stats["submits_accepted"], stats["rate_limited"], stats["submits_rejected"]) == (3, 3, 3)
    # polls are not rate limited
    assert api.status("x").status_code == 404


def test_rpm_can_change_at_run_time(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(rpm=1, clock=FakeClock(0.0))
    api = Api(sim)
    assert [api.submit().status_code for _ in range(2)] == [200, 429]
    sim.configure(rpm=None)
    assert [api.submit().status_code for _ in range(3)] == [200, 200, 200]


# -- stats ------------------------------------------------------------------------------------


def test_stats_count_everything(api: Api) -> None:
    body = {"prompt": "twice", "resolution": "1K"}
    a = api.submit_ok(body)
    b = api.submit_ok(body)
    c = api.submit_ok({"prompt": "once", "resolution": "1K"})
    assert api.submit({"prompt": 1}).status_code == 422
    api.sim.wait_idle()
    for rid in (a, b, c):
        api.status(rid)
    url = str(api.result(a).json()["output"]["image"])
    httpx.get(url)
    api.cancel(c)
    stats = api.sim.stats()
    assert stats["submits_per_body"] == {body_hash(body): 2, body_hash({"prompt": "once", "resolution": "1K"}): 1}
    assert body_hash(body) == hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    expected = {
        "submits_accepted": 3,
        "submits_rejected": 1,
        "duplicate_submits": 1,
        "rate_limited": 0,
        "polls": 3,
        "result_reads": 1,
        "downloads": 1,
        "downloads_with_token": 0,
        "cancels": 1,
        "cancelled": 0,
        "completed": 3,
        "failed": 0,
        "in_flight": 0,
        "requests_total": 10,
        "token_revoked": False,
    }
    assert {k: stats[k] for k in expected} == expected
    assert 1 <= stats["peak_in_flight"] <= 3
    assert stats["faults"] == dict.fromkeys(FAULT_NAMES, 0)


def test_variant_answers_take_the_other_forms_the_protocol_allows(make_sim: Callable[..., Simulator]) -> None:
    from seedream_pipe.sim.app import STATUS_SPELLINGS

    sim = make_sim(workers=1, latency=1.0, rpm=1, token="tok", faults=Faults(variant_rate=1.0))
    api = Api(sim, token="tok")
    submitted = api.submit()
    assert submitted.status_code == 200 and set(submitted.json()) == {"request_id"}  # no URLs: build them
    rid = submitted.json()["request_id"]
    limited = api.submit()
    assert limited.status_code == 429 and "Retry-After" not in limited.headers
    sim.wait_status(rid, "in_progress")
    seen = api.status(rid).json()
    assert seen["status"] in STATUS_SPELLINGS["in_progress"] and seen["instance_id"]
    sim.wait_status(rid, "completed")
    done = api.result(rid).json()
    assert done["status"] in STATUS_SPELLINGS["completed"] and done["output"]["image"]
    wrong = Api(sim, token="nope").status(rid)
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"


def test_a_download_that_carries_a_token_is_counted(api: Api) -> None:
    url = api.image_url(api.submit_ok())
    assert httpx.get(url).status_code == 200
    assert httpx.get(url, headers={"Authorization": "Bearer leaked"}).status_code == 200
    assert api.sim.stats()["downloads_with_token"] == 1


def test_admin_stats_matches_the_python_api(api: Api) -> None:
    api.submit_ok()
    response = api.admin("GET", "stats")
    assert response.status_code == 200
    assert response.json() == api.sim.stats()
    # reading stats is not counted as API traffic
    assert api.admin("GET", "stats").json()["requests_total"] == 1


def test_admin_changes_faults_config_and_token(api: Api) -> None:
    response = api.admin("POST", "faults", {"error_rate": 1.0})
    assert response.status_code == 200
    assert response.json()["error_rate"] == 1.0
    assert api.sim.cfg.faults.error_rate == 1.0
    assert api.status("x").status_code in (500, 502, 503)
    api.admin("POST", "faults", {"error_rate": 0})

    config = api.admin("POST", "config", {"latency": 0.02, "rpm": 5, "faults": {"drop_rate": 0.0}}).json()
    assert (config["latency"], config["rpm"], config["token"]) == (0.02, 5, None)
    assert api.sim.cfg.rpm == 5

    assert api.admin("POST", "revoke", {}).json() == {"token_revoked": True}
    assert api.status("x").status_code == 401
    assert api.admin("POST", "revoke", {"revoked": False}).json() == {"token_revoked": False}
    assert api.status("x").status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("faults", {"error_rat": 0.1}, "unknown fault 'error_rat'"),
        ("faults", {"error_rate": 1.5}, "between 0 and 1"),
        ("faults", [1], "must be a JSON object"),
        ("config", {"workers": -1}, "workers must be >= 0"),
        ("config", {"workers": 10_001}, "workers must be at most 10,000"),  # (a task each, spawned at once)
        ("config", {"latency": "slow"}, "latency must be a number"),
        ("config", {"colour": "red"}, "unknown setting 'colour'"),
        ("revoke", {"revoked": "yes"}, "revoked must be true or false"),
    ],
)
def test_admin_rejects_bad_settings(api: Api, path: str, body: Any, message: str) -> None:
    response = api.admin("POST", path, body)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_bad_settings_raise_usage_error_and_change_nothing(sim: Simulator) -> None:
    with pytest.raises(UsageError, match="between 0 and 1"):
        sim.set_faults(drop_rate=0.5, error_rate=2)
    assert sim.cfg.faults.drop_rate == 0.0
    with pytest.raises(UsageError, match="unknown setting"):
        sim.configure(lag=1)
    with pytest.raises(UsageError, match="probability"):
        Simulator(SimConfig(faults=Faults(job_fail_rate=-0.1)))


async def test_admin_answers_loopback_clients_only() -> None:
    app = SimApp(SimConfig(), clock=lambda: 0.0, wall_clock=lambda: 0.0)
    handler = app._admin(app.admin_stats)
    for peer, status in ((("10.1.2.3", 5000), 403), (("127.0.0.1", 5000), 200), (("::1", 5000, 0, 0), 200)):
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None, peer=peer: peer if name == "peername" else default
        request = make_mocked_request("GET", "/admin/stats", {"Host": "127.0.0.1:8765"}, transport=transport)
        response = await handler(request)
        assert isinstance(response, web.Response)
        assert response.status == status


def test_admin_posts_need_a_json_content_type(api: Api) -> None:
    # a web page can POST text/plain (or a form) anywhere without asking; application/json it
    # can send cross-site only after a CORS preflight, which the simulator never grants
    origin = api.sim.base_url.removesuffix("/v1")
    for path, body in (("faults", b'{"error_rate": 1.0}'), ("config", b'{"workers": 0}'), ("revoke", b"{}")):
        for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
            response = httpx.post(f"{origin}/admin/{path}", content=body, headers=headers)
            assert response.status_code == 415, (path, headers)
            error = response.json()["error"]
            assert error["code"] == "unsupported_media_type"
            assert "Content-Type: application/json" in error["message"]
    assert (api.sim.cfg.faults.error_rate, api.sim.cfg.workers, api.sim.stats()["token_revoked"]) == (0.0, 4, False)
    # a charset parameter is still JSON
    with_charset = {"Content-Type": "application/json; charset=utf-8"}
    response = httpx.post(f"{origin}/admin/faults", content=b'{"error_rate": 0.5}', headers=with_charset)
    assert response.status_code == 200 and api.sim.cfg.faults.error_rate == 0.5


def test_admin_refuses_calls_from_another_origin(api: Api) -> None:
    port = api.sim.port
    origin = api.sim.base_url.removesuffix("/v1")
    foreign = ["http://evil.example", f"http://evil.example:{port}", "null", f"http://localhost:{port + 1}",
               f"https://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]  # fmt: skip
    for other in foreign:
        response = httpx.post(f"{origin}/admin/faults", json={"error_rate": 1.0}, headers={"Origin": other})
        assert response.status_code == 403, other
        assert response.json()["error"] == {
            "code": "forbidden",
            "message": f"/admin refuses calls from web pages: Origin {other!r} is not this simulator's own origin.",
        }
        assert httpx.get(f"{origin}/admin/stats", headers={"Origin": other}).status_code == 403
    assert api.sim.cfg.faults.error_rate == 0.0
    # the security review's request: a page's text/plain POST carrying its Origin
    review = httpx.post(
        f"{origin}/admin/faults",
        content=b'{"error_rate":1.0}',
        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
    )
    assert review.status_code == 403 and api.sim.cfg.faults.error_rate == 0.0
    # the simulator's own origin (any spelling of it) is no stranger
    for own in (origin, origin.upper(), f"{origin}/"):
        response = httpx.post(f"{origin}/admin/faults", json={"slow_s": 1.0}, headers={"Origin": own})
        assert response.status_code == 200, own
    assert api.sim.cfg.faults.slow_s == 1.0


def test_admin_answers_only_requests_addressed_to_a_loopback_name(api: Api) -> None:
    # DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 is same-origin
    # to the browser; the Host it sends is what gives it away
    port = api.sim.port
    origin = api.sim.base_url.removesuffix("/v1")
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "10.0.0.1", "localhost.", ""):
        response = httpx.get(f"{origin}/admin/stats", headers={"Host": host})
        assert response.status_code == 403, host
        error = response.json()["error"]
        assert error["code"] == "forbidden"
        assert error["message"].startswith("/admin answers only requests addressed to a loopback name")
        assert f"Host {host!r}" in error["message"]
        refused = httpx.post(f"{origin}/admin/faults", json={"error_rate": 1.0}, headers={"Host": host})
        assert refused.status_code == 403, host
    assert api.sim.cfg.faults.error_rate == 0.0
    for host in ("localhost", f"localhost:{port}", f"LocalHost:{port}", "127.0.0.1", f"127.0.0.1:{port}",
                 "127.1.2.3", "[::1]", f"[::1]:{port}"):  # fmt: skip
        response = httpx.get(f"{origin}/admin/stats", headers={"Host": host})
        assert response.status_code == 200, host
        assert response.json()["submits_accepted"] == 0
    # the API itself answers any name (a simulator on 0.0.0.0 is reached by many), and builds its
    # links from the name used
    submitted = api.submit(headers={"Host": f"sim.example:{port}"})
    assert submitted.status_code == 200
    assert submitted.json()["status_url"].startswith(f"http://sim.example:{port}/v1/requests/")


async def test_admin_refuses_a_request_with_no_host_header() -> None:
    app = SimApp(SimConfig(), clock=lambda: 0.0, wall_clock=lambda: 0.0)
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: ("127.0.0.1", 5000) if name == "peername" else default
    response = await app._admin(app.admin_stats)(make_mocked_request("GET", "/admin/stats", transport=transport))
    assert isinstance(response, web.Response)
    assert response.status == 403
    assert "this one has no Host header" in json.loads(response.text or "")["error"]["message"]


# -- faults -----------------------------------------------------------------------------------


def test_error_rate_answers_5xx(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(error_rate=1.0))
    api = Api(sim)
    codes = {api.status("x").status_code for _ in range(20)}
    assert codes <= {500, 502, 503} and len(codes) > 1
    response = api.submit()
    assert response.json()["error"]["code"] in ("internal_error", "bad_gateway", "service_unavailable")
    stats = sim.stats()
    assert stats["faults"]["error_rate"] == 21
    assert stats["polls"] == 20  # a poll answered 5xx is still a poll the client made
    assert (stats["submits_accepted"], stats["submits_rejected"]) == (0, 1)


def test_error_rate_on_a_submit_creates_nothing_and_never_answers_502_or_504(
    make_sim: Callable[..., Simulator],
) -> None:
    # a 502/504 to a submit means "outcome unknown" (gateway_rate); error_rate creates nothing,
    # so it answers a submit only what says "not created, retry"
    sim = make_sim(faults=Faults(error_rate=1.0))
    api = Api(sim)
    answers = [api.submit() for _ in range(30)]
    assert {r.status_code for r in answers} == {500, 503}
    assert {r.json()["error"]["code"] for r in answers} == {"internal_error", "service_unavailable"}
    stats = sim.stats()
    assert (stats["submits_accepted"], stats["submits_rejected"], stats["faults"]["error_rate"]) == (0, 30, 30)
    assert (stats["submits_per_body"], stats["in_flight"]) == ({}, 0)
    # other calls still get all three
    assert {api.status("x").status_code for _ in range(30)} == {500, 502, 503}


def test_faults_are_reproducible_from_the_seed(make_sim: Callable[..., Simulator]) -> None:
    def codes(seed: int) -> list[int]:
        sim = make_sim(seed=seed, faults=Faults(error_rate=0.5))
        api = Api(sim)
        return [api.status("x").status_code for _ in range(40)]

    first = codes(7)
    assert first == codes(7)
    assert first != codes(8)
    assert 404 in first and any(code >= 500 for code in first)


def test_drop_rate_closes_the_connection_without_an_answer(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(drop_rate=1.0))
    api = Api(sim)
    with pytest.raises(httpx.RemoteProtocolError):
        api.submit()
    with pytest.raises(httpx.RemoteProtocolError):
        api.status("x")
    stats = sim.stats()
    assert stats["faults"]["drop_rate"] == 2
    assert stats["polls"] == 1
    assert (stats["submits_accepted"], stats["submits_rejected"]) == (0, 1)


def test_slow_rate_answers_after_the_client_gave_up(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(slow_rate=1.0, slow_s=0.5))
    api = Api(sim)
    with pytest.raises(httpx.ReadTimeout):
        api.http.get("/requests/x/status", timeout=0.05)
    assert sim.stats()["faults"]["slow_rate"] == 1
    sim.set_faults(slow_rate=0.0)
    assert api.status("x").status_code == 404


def test_malformed_rate_sends_broken_json_in_a_200(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(malformed_rate=1.0))
    api = Api(sim)
    response = api.submit()
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()
    # the submit took effect even though its answer was unreadable
    stats = sim.stats()
    assert (stats["submits_accepted"], stats["faults"]["malformed_rate"]) == (1, 1)
    # errors are never garbled, only 200s
    assert api.status("x").status_code == 404
    assert sim.stats()["faults"]["malformed_rate"] == 1


def test_job_fail_rate_ends_jobs_failed_with_an_error(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(job_fail_rate=1.0))
    api = Api(sim)
    rid = api.submit_ok()
    assert sim.wait_status(rid) == "failed"
    assert api.status(rid).json()["status"] == "failed"
    data = api.result(rid).json()
    assert data["status"] == "failed"
    assert set(data["error"]) == {"code", "message"}
    assert "output" not in data
    stats = sim.stats()
    assert (stats["failed"], stats["faults"]["job_fail_rate"]) == (1, 1)


def test_result_404_rate_makes_downloads_404(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(result_404_rate=1.0))
    api = Api(sim)
    response = httpx.get(api.image_url(api.submit_ok()))
    assert response.status_code == 404
    assert sim.stats()["faults"]["result_404_rate"] == 1


def test_expired_rate_hands_out_expired_urls(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(expired_rate=1.0))
    api = Api(sim)
    response = httpx.get(api.image_url(api.submit_ok()))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "url_expired"
    assert sim.stats()["faults"]["expired_rate"] == 1


def test_truncate_rate_cuts_downloads_short(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(truncate_rate=1.0))
    api = Api(sim)
    url = api.image_url(api.submit_ok())
    with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        httpx.get(url)
    sim.set_faults(truncate_rate=0.0)
    full = httpx.get(url)
    assert full.status_code == 200
    with httpx.stream("GET", url) as response:
        assert int(response.headers["Content-Length"]) == len(full.content)
    assert sim.stats()["faults"]["truncate_rate"] == 1


def test_garbage_rate_serves_bytes_that_are_not_an_image(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(garbage_rate=1.0))
    api = Api(sim)
    response = httpx.get(api.image_url(api.submit_ok()))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"  # garbage under the image's own type
    with pytest.raises(OSError):
        Image.open(io.BytesIO(response.content))
    assert sim.stats()["faults"]["garbage_rate"] == 1


def test_revoke_after_revokes_the_token_after_n_submits(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(revoke_after=2))
    api = Api(sim)
    rid = api.submit_ok()
    api.submit_ok()
    assert api.submit().status_code == 401
    assert api.status(rid).status_code == 401
    stats = sim.stats()
    assert (stats["submits_accepted"], stats["token_revoked"], stats["faults"]["revoke_after"]) == (2, True, 2)


def test_credit_limit_answers_402_after_k_jobs(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(credit_limit=1))
    api = Api(sim)
    rid = api.submit_ok()
    response = api.submit()
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credit"
    assert api.status(rid).status_code == 200  # only submits are refused
    stats = sim.stats()
    assert (stats["submits_accepted"], stats["submits_rejected"], stats["faults"]["credit_limit"]) == (1, 1, 1)


def test_submit_drop_rate_accepts_the_job_then_drops_the_answer(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(submit_drop_rate=1.0))
    api = Api(sim)
    with pytest.raises(httpx.RemoteProtocolError):
        api.submit()
    sim.wait_idle()
    stats = sim.stats()
    assert (stats["submits_accepted"], stats["completed"], stats["faults"]["submit_drop_rate"]) == (1, 1, 1)
    # polls are untouched by this fault
    assert api.status("x").status_code == 404


def test_gateway_rate_accepts_the_submit_then_answers_a_gateway_error(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(gateway_rate=1.0))
    api = Api(sim)
    body = {"prompt": "a red fox in snow", "resolution": "1K"}
    answers = [api.submit(body) for _ in range(12)]
    assert {r.status_code for r in answers} == {502, 504}
    for response in answers:
        # a gateway's own page, not the API's JSON: no request id to be found in it
        assert response.headers["Content-Type"].startswith("text/html")
        title = "502 Bad Gateway" if response.status_code == 502 else "504 Gateway Time-out"
        assert f"<title>{title}</title>" in response.text and "request_id" not in response.text
    sim.wait_idle()
    stats = sim.stats()
    # every job stands, runs and finishes (and is billed): only its answer was lost
    assert (stats["submits_accepted"], stats["submits_rejected"], stats["completed"]) == (12, 0, 12)
    assert stats["submits_per_body"] == {body_hash(body): 12}
    assert stats["faults"]["gateway_rate"] == 12
    # only submits: polls are untouched by this fault
    assert api.status("x").status_code == 404


def test_gateway_rate_is_reproducible_from_the_seed(make_sim: Callable[..., Simulator]) -> None:
    def codes(seed: int) -> list[int]:
        sim = make_sim(seed=seed, faults=Faults(gateway_rate=0.5))
        api = Api(sim)
        answers = [api.submit().status_code for _ in range(24)]
        assert sim.stats()["submits_accepted"] == 24
        return answers

    first = codes(7)
    assert first == codes(7)
    assert first != codes(8)
    assert {200, 502, 504} <= set(first)


def test_every_fault_option_has_a_test() -> None:
    tested = {
        "error_rate", "drop_rate", "slow_rate", "malformed_rate", "job_fail_rate", "result_404_rate",
        "expired_rate", "truncate_rate", "garbage_rate", "revoke_after", "credit_limit", "submit_drop_rate",
        "gateway_rate", "variant_rate",
    }  # fmt: skip
    assert set(FAULT_NAMES) == tested


# -- the command ------------------------------------------------------------------------------


def test_sim_help_has_an_example_and_every_fault_option() -> None:
    result = CliRunner().invoke(cli, ["sim", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    for name in FAULT_NAMES:
        assert "--" + name.replace("_", "-") in result.output


def test_sim_command_on_a_port_in_use_exits_69(sim: Simulator) -> None:
    result = CliRunner().invoke(cli, ["sim", "--port", str(sim.port)])
    assert result.exit_code == 69
    assert "already in use" in result.output
    assert "Traceback" not in result.output


def test_sim_command_rejects_bad_options() -> None:
    result = CliRunner().invoke(cli, ["sim", "--error-rate", "1.5"])
    assert result.exit_code == 64
    assert "--error-rate" in result.output


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_sim_command_serves_until_a_signal_and_never_prints_the_token(stop_signal: signal.Signals) -> None:
    def use(line: str) -> None:
        assert line.startswith("Simulator listening on http://127.0.0.1:")
        base = line.removeprefix("Simulator listening on ")
        assert base.endswith("/v1")
        response = httpx.post(
            f"{base}/models/{MODEL}", json={"prompt": "cli"}, headers={"Authorization": "Bearer tok-XYZ"}
        )
        assert response.status_code == 200

    line, out, err = run_sim_command("--token", "tok-XYZ", use=use, stop_signal=stop_signal)
    assert "Traceback" not in err
    assert "tok-XYZ" not in line + out + err


def run_sim_command(
    *args: str, use: Callable[[str], None] = lambda line: None, stop_signal: signal.Signals = signal.SIGINT
) -> tuple[str, str, str]:
    """Start `seedream-pipe sim --port 0 --latency 0 ARGS`, hand its first line to `use`, stop it
    with `stop_signal`; check it exited 0, and return (first line, the rest of stdout, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "seedream_pipe", "sim", "--port", "0", "--latency", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "0"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        use(line)
        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return line, out, err


def test_a_request_the_server_cannot_parse_is_one_log_line_not_a_traceback() -> None:
    def bad_request(line: str) -> None:
        host_port = line.split("http://", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"GET /admin/stats HTTP/1.1\r\n\r\n")  # no Host header
            assert b" 400 " in conn.recv(100)

    _, _, err = run_sim_command(use=bad_request)
    assert "Traceback" not in err
    assert "answered 400, Missing 'Host' header in request." in err


def test_simulator_on_a_port_in_use_raises_oserror(sim: Simulator) -> None:
    with pytest.raises(OSError):
        Simulator(SimConfig(), port=sim.port).start()


def test_a_stopped_simulator_can_start_again_and_finishes_its_jobs(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(workers=1, latency=60.0)
    api = Api(sim)
    rid = api.submit_ok()
    sim.wait_status(rid, "in_progress")
    sim.stop()
    sim.configure(latency=0.0, workers=2)  # allowed while stopped: takes effect at the next start
    sim.start()
    assert sim.wait_status(rid) == "completed"
    assert Api(sim).status(rid).json()["status"] == "completed"


def test_a_slow_submit_is_accepted_after_the_client_gave_up(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(faults=Faults(slow_rate=1.0, slow_s=0.2))
    api = Api(sim)
    with pytest.raises(httpx.ReadTimeout):
        api.http.post(f"/models/{MODEL}", json={"prompt": "slow"}, timeout=0.02)
    stats = sim.wait_for(lambda s: s["submits_accepted"] == 1)
    assert stats["submits_per_body"] == {body_hash({"prompt": "slow"}): 1}
    assert stats["faults"]["slow_rate"] == 1


def test_images_render_once_in_the_render_threads(
    make_sim: Callable[..., Simulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import seedream_pipe.sim.app as app_module

    calls: list[str] = []

    def spy(prompt: str, resolution: str | None, image_format: str, take: int) -> bytes:
        calls.append(threading.current_thread().name)
        return render_file(prompt, resolution, image_format, take)

    monkeypatch.setattr(app_module, "render_file", spy)
    sim = make_sim()
    api = Api(sim)
    url = api.image_url(api.submit_ok({"prompt": "cached", "resolution": "1K"}))
    twin = api.image_url(api.submit_ok({"prompt": "cached", "resolution": "1K"}))
    assert len({httpx.get(u).content for u in (url, url, url)}) == 1
    assert len(calls) == 1  # same job, same bytes: rendered once, then from the cache
    assert httpx.get(twin).content != httpx.get(url).content  # the body's second take
    assert httpx.get(twin).status_code == 200
    assert len(calls) == 2  # each take rendered once
    assert all(name.startswith("sim-render") for name in calls)  # off the event loop's thread


async def test_queue_positions_follow_the_queue_through_cancels_starts_and_a_stop() -> None:
    from seedream_pipe.sim.engine import Engine, Stats
    from seedream_pipe.sim.faults import Dice

    engine = Engine(SimConfig(workers=0, latency=60.0), Stats(), Dice(0), wall_clock=lambda: 0.0)
    engine.start()
    jobs = [engine.submit(MODEL, {"prompt": str(i)}, str(i)) for i in range(20)]

    def positions_in_order() -> list[int]:
        queued = [job for job in jobs if job.status == "in_queue"]
        return [engine.queue_position(job) for job in queued]

    for i in (0, 3, 4, 10, 19):
        assert engine.cancel(jobs[i]) == "cancelled"
    assert positions_in_order() == list(range(15))
    engine.set_workers(2)
    await engine.wait_for(lambda: sum(job.status == "in_progress" for job in jobs) == 2)
    assert positions_in_order() == list(range(13))
    engine.cancel(jobs[12])
    assert positions_in_order() == list(range(12))
    await engine.stop()  # the two running jobs go back to the head of the queue
    assert sum(job.status == "in_queue" for job in jobs) == 14
    assert [engine.queue_position(job) for job in engine._queue] == list(range(14))


def test_docs_describe_every_option_and_stats_key() -> None:
    from pathlib import Path

    from seedream_pipe.cli.sim_cmds import sim_command

    docs = (Path(__file__).resolve().parent.parent / "docs" / "simulator.md").read_text(encoding="utf-8")
    for param in sim_command.params:
        for flag in param.opts:
            if flag.startswith("--"):
                assert f"`{flag}" in docs, flag
    with Simulator(SimConfig()) as sim:
        keys = set(sim.stats())
    for key in keys:
        assert f'"{key}"' in docs, key


@pytest.mark.parametrize(
    ("host", "beyond"),
    [("127.0.0.1", False), ("127.0.0.2", False), ("localhost", False), ("::1", False),
     ("0.0.0.0", True), ("::", True), ("", True), ("192.168.1.5", True), ("sim.example.org", True)],
)
def test_listens_beyond_loopback(host: str, beyond: bool) -> None:
    from seedream_pipe.sim.config import listens_beyond_loopback

    assert listens_beyond_loopback(host) is beyond


def _sim_command_stderr(*args: str) -> str:
    """Start `seedream-pipe sim` with these options, wait until it listens, stop it; its stderr."""
    line, _, err = run_sim_command(*args)
    assert line.startswith("Simulator listening on http://")
    return err


def test_sim_command_beyond_loopback_without_a_token_warns() -> None:
    err = _sim_command_stderr("--host", "0.0.0.0")
    assert "warning: listening on 0.0.0.0 without --token: anyone who can reach this port can use" in err
    assert "--token" in err.split("warning:", 1)[1]
    assert "Traceback" not in err


def test_sim_command_says_which_token_and_the_url_seedream_pipe_can_use() -> None:
    assert "Token: any (e.g. export RUNCOMFY_TOKEN=sim)" in _sim_command_stderr()
    assert "Token: only the one given with --token" in _sim_command_stderr("--token", "tok-XYZ")
    # http://0.0.0.0:PORT/v1 is refused by seedream-pipe's own client (a token over plain http
    # to a non-loopback address): the hint names the URL that works from this machine
    hosts = [("0.0.0.0", "127.0.0.1")]
    if _ipv6_loopback():
        hosts.append(("::", "[::1]"))  # (asyncio makes "::" IPv6 only: 127.0.0.1 is refused there)
    for host, local in hosts:

        def answers(line: str, local: str = local) -> None:
            port = line.rsplit(":", 1)[1].removesuffix("/v1")
            assert httpx.get(f"http://{local}:{port}/admin/stats").status_code == 200

        line, _, err = run_sim_command("--host", host, "--token", "tok-XYZ", use=answers)
        port = line.rsplit(":", 1)[1].removesuffix("/v1")
        assert f"From this machine: --base-url http://{local}:{port}/v1" in err


def test_sim_command_names_a_stats_url_that_answers() -> None:
    # On --host 0.0.0.0 it printed "Stats: http://0.0.0.0:PORT/admin/stats", which /admin refuses
    # (403: a Host that is not loopback); the URL it names must answer, as a newcomer pastes it.
    hosts = ["127.0.0.1", "0.0.0.0"] + (["::"] if _ipv6_loopback() else [])
    for host in hosts:
        proc = subprocess.Popen(
            [sys.executable, "-m", "seedream_pipe", "sim", "--port", "0", "--host", host, "--token", "tok-XYZ"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline().startswith("Simulator listening on http://")
            stats = next(line for line in iter(proc.stderr.readline, "") if line.startswith("Stats: "))
            url = stats.split()[1]
            assert httpx.get(url).status_code == 200, (host, stats)
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0


def test_sim_command_on_an_address_of_the_network_says_its_stats_cannot_be_read() -> None:
    from seedream_pipe.cli.sim_cmds import stats_line

    assert stats_line("127.0.0.1", 8765, "http://127.0.0.1:8765") == "Stats: http://127.0.0.1:8765/admin/stats · stop with Ctrl-C"
    line = stats_line("192.0.2.2", 8765, "http://192.0.2.2:8765")
    assert "http://192.0.2.2" not in line  # (it would answer 403)
    assert line.startswith("Stats: none on 192.0.2.2 (/admin answers requests from this machine")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("args", [("--host", "0.0.0.0", "--token", "tok-XYZ"), ("--host", "127.0.0.1"), ()])
def test_sim_command_with_a_token_or_on_loopback_does_not_warn(args: tuple[str, ...]) -> None:
    err = _sim_command_stderr(*args)
    assert "warning" not in err
    assert "tok-XYZ" not in err
