"""What the runner's HTTP requests cost on their own: the floor under its CPU per job.

Two clients do each job's requests the way the runner does (submit; a first look at the
result after `first_poll` seconds, then every `poll_every` until it says the job finished; the
image, written to a file), W at a time, with nothing else: no state, no pacing, no retries, no
checks, no thumbnail.

- `aiohttp`: the same HTTP stack the runner sends through (aiohttp's pool).
- `raw`: a minimal HTTP/1.1 client on an asyncio Protocol, written here only as a lower bound.
  It has no TLS, no timeouts, no chunked bodies and no error handling, and must never be used
  for anything else: it shows what the requests cost with almost no client code at all.

Used by run_bench.py (scenario F); the figures sit next to the runner's own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

# one request: (method, url, headers, body) -> (status, body)
Send = Callable[[str, str, dict[str, str], bytes], Awaitable[tuple[int, bytes]]]


async def run_jobs(
    send: Send,
    base_url: str,
    model: str,
    bodies: list[dict[str, Any]],
    folder: Path,
    *,
    token: str,
    workers: int,
    first_poll: float,
    poll_every: float,
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    slots = asyncio.Semaphore(workers)

    async def one(i: int, body: dict[str, Any]) -> None:
        async with slots:
            _, answer = await send("POST", f"{base_url}/models/{model}", headers, json.dumps(body).encode())
            request_id = json.loads(answer)["request_id"]
            await asyncio.sleep(first_poll)
            while True:
                _, answer = await send("GET", f"{base_url}/requests/{request_id}/result", headers, b"")
                result = json.loads(answer)
                if result["status"] in ("completed", "failed", "cancelled"):
                    break
                await asyncio.sleep(poll_every)
            url = result["output"]["image"]
            _, data = await send("GET", url, {}, b"")
            (folder / f"{i}.jpg").write_bytes(data)

    await asyncio.gather(*(one(i, body) for i, body in enumerate(bodies)))


async def with_aiohttp(run: Callable[[Send], Awaitable[None]]) -> None:
    async with aiohttp.ClientSession() as session:

        async def send(method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
            async with session.request(method, url, headers=headers, data=body or None) as response:
                return response.status, await response.read()

        await run(send)


class _Exchange(asyncio.Protocol):
    """One keep-alive connection; one request at a time; Content-Length bodies only."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body_start = -1
        self.end = -1
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.body_start < 0:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = bytes(self.buffer[:head_end]).decode("latin-1").split("\r\n")
            self.status = int(lines[0].split(" ", 2)[1])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            self.body_start = head_end + 4
            self.end = self.body_start + length
        if len(self.buffer) >= self.end and self.waiter is not None:
            body = bytes(self.buffer[self.body_start : self.end])
            del self.buffer[: self.end]
            self.body_start = self.end = -1
            waiter, self.waiter = self.waiter, None
            waiter.set_result((self.status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))


async def with_raw(run: Callable[[Send], Awaitable[None]]) -> None:
    idle: dict[tuple[str, int], list[_Exchange]] = {}
    loop = asyncio.get_running_loop()

    async def send(method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        parts = urlsplit(url)
        key = (parts.hostname or "", parts.port or 80)
        pool = idle.setdefault(key, [])
        if pool:
            conn = pool.pop()
        else:
            _, conn = await loop.create_connection(_Exchange, *key)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        conn.waiter = loop.create_future()
        assert conn.transport is not None
        conn.transport.write(
            f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n{lines}\r\n".encode()
            + body
        )
        answer = await conn.waiter
        pool.append(conn)
        return answer

    try:
        await run(send)
    finally:
        for pool in idle.values():
            for conn in pool:
                if conn.transport is not None:
                    conn.transport.close()


CLIENTS = {"aiohttp": with_aiohttp, "raw": with_raw}
