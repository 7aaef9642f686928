"""Fidelity: the curl commands of the Seedream 4.0 API page, run with real curl against the simulator.

The commands are copied verbatim from RunComfy's Seedream 4.0 API page (as the project started
from it) and run through bash; only the host changes, and `{request_id}` is filled in as the page tells a user to.
Even the literal `<token>` is kept: with no --token the simulator accepts any non-empty token.
Needs curl on PATH (.ci/run installs it when missing).
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from seedream_pipe.sim import SimConfig, Simulator

REAL_HOST = "https://model-api.runcomfy.net"

SUBMIT = """curl --request POST \\
--url https://model-api.runcomfy.net/v1/models/bytedance/seedream-4-0/text-to-image \\
--header "Content-Type: application/json" \\
--header "Authorization: Bearer <token>" \\
--data '{
"prompt": "Golden hour over terraced rice fields in Bali, drifting morning mist, tiny farmers on paths, ultra detailed textures, 4K clarity"
}'"""

STATUS = """curl --request GET \\
--url https://model-api.runcomfy.net/v1/requests/{request_id}/status \\
--header "Authorization: Bearer <token>\""""

RESULT = """curl --request GET \\
--url https://model-api.runcomfy.net/v1/requests/{request_id}/result \\
--header "Authorization: Bearer <token>\""""

CANCEL = """curl --request POST \\
--url https://model-api.runcomfy.net/v1/requests/{request_id}/cancel \\
--header "Authorization: Bearer <token>\""""

def curl(command: str, origin: str, request_id: str = "") -> Any:
    """Run one of the page's commands through bash with only the host changed; parse the answer."""
    command = command.replace(REAL_HOST, origin).replace("{request_id}", request_id)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


@pytest.fixture
def paused() -> Iterator[Simulator]:
    # no workers: the job stays queued, so every answer of the queued path is exact
    with Simulator(SimConfig(workers=0)) as sim:
        yield sim


@pytest.fixture
def fast() -> Iterator[Simulator]:
    with Simulator(SimConfig(latency=0.0, latency_jitter=0.0)) as sim:
        yield sim


def origin_of(sim: Simulator) -> str:
    return sim.base_url.removesuffix("/v1")


def test_page_commands_on_a_queued_request(paused: Simulator) -> None:
    origin = origin_of(paused)
    submitted = curl(SUBMIT, origin)
    assert set(submitted) == {"request_id", "status_url", "result_url", "cancel_url"}
    rid = submitted["request_id"]
    assert isinstance(rid, str) and rid
    assert submitted["status_url"] == f"{origin}/v1/requests/{rid}/status"
    assert submitted["result_url"] == f"{origin}/v1/requests/{rid}/result"
    assert submitted["cancel_url"] == f"{origin}/v1/requests/{rid}/cancel"

    status = curl(STATUS, origin, rid)
    assert status == {
        "request_id": rid,
        "status": "in_queue",
        "queue_position": 0,
        "status_url": submitted["status_url"],
        "result_url": submitted["result_url"],
    }

    result = curl(RESULT, origin, rid)
    assert result["request_id"] == rid
    assert result["status"] == "in_queue"
    assert "output" not in result

    cancelled = curl(CANCEL, origin, rid)
    assert cancelled == {"request_id": rid, "status": "cancelled", "outcome": "cancelled"}
    assert curl(STATUS, origin, rid)["status"] == "cancelled"

    stats = paused.stats()
    assert (stats["submits_accepted"], stats["polls"], stats["result_reads"], stats["cancels"]) == (1, 2, 1, 1)


def test_page_commands_on_a_completed_request(fast: Simulator, tmp_path: Path) -> None:
    origin = origin_of(fast)
    rid = curl(SUBMIT, origin)["request_id"]
    fast.wait_status(rid, "completed")

    status = curl(STATUS, origin, rid)
    assert set(status) == {"request_id", "status", "status_url", "result_url"}
    assert status["status"] == "completed"

    result = curl(RESULT, origin, rid)
    assert set(result) == {"request_id", "status", "output", "created_at", "finished_at"}
    assert result["status"] == "completed"
    url = result["output"]["image"]
    assert url.startswith(f"{origin}/files/{rid}/0.jpg?expires=")

    # the hosted file: fetched without the token, as a pre-signed CDN link
    target = tmp_path / "image.jpg"
    subprocess.run(["curl", "--silent", "--fail", "--output", str(target), url], check=True, timeout=30)
    image = Image.open(io.BytesIO(target.read_bytes()))
    assert (image.format, image.size) == ("JPEG", (2048, 2048))

    assert curl(CANCEL, origin, rid) == {"request_id": rid, "status": "completed", "outcome": "not_cancellable"}


def run_curl(command: str) -> tuple[int, Any]:
    """Run a curl command line through bash; its HTTP status and parsed JSON body."""
    done = subprocess.run(
        ["bash", "-c", f"{command} --silent --write-out '\n%{{http_code}}'"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, code = done.stdout.rpartition("\n")
    return int(code), json.loads(body)


def test_admin_refuses_what_a_web_page_could_send(fast: Simulator) -> None:
    """The security review's requests, with real curl: a cross-site text/plain POST was applied,
    and a request naming another host (DNS rebinding) was answered."""
    origin = origin_of(fast)
    code, answer = run_curl(
        "curl -X POST -H 'Content-Type: text/plain' -H 'Origin: http://evil.example' "
        f"""--data '{{"error_rate":1.0}}' {origin}/admin/faults"""
    )
    assert (code, answer["error"]["code"]) == (403, "forbidden")
    code, answer = run_curl(
        f"""curl -X POST -H 'Content-Type: text/plain' --data '{{"error_rate":1.0}}' {origin}/admin/faults"""
    )
    assert (code, answer["error"]["code"]) == (415, "unsupported_media_type")
    code, answer = run_curl(f"curl -H 'Host: evil.example' {origin}/admin/stats")
    assert (code, answer["error"]["code"]) == (403, "forbidden")
    assert fast.cfg.faults.error_rate == 0.0

    # what the docs tell a user to type still works
    code, answer = run_curl(f"curl {origin}/admin/stats")
    assert (code, answer["submits_accepted"]) == (200, 0)
    code, answer = run_curl(
        f"""curl -X POST -H 'Content-Type: application/json' --data '{{"error_rate":0.5}}' {origin}/admin/faults"""
    )
    assert (code, answer["error_rate"]) == (200, 0.5)
    assert fast.cfg.faults.error_rate == 0.5
