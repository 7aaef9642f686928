"""Starting and stopping a simulator: `SimServer` on the caller's event loop, `Simulator` in a thread.

`SimServer` is the async core (the CLI runs it on the main thread's loop, with signal handling).
`Simulator` runs one in a background thread with its own loop, so synchronous code and tests
(whatever loop they run, if any) can use a real simulator on a real socket:

    with Simulator(SimConfig(latency=0.05), port=0) as sim:
        httpx.get(f"{sim.base_url}/requests/x/status", headers={"Authorization": "Bearer t"})
        sim.set_faults(error_rate=0.5)
        sim.stats()["polls"]
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from seedream_pipe.sim.app import SimApp
from seedream_pipe.sim.config import DEFAULT_HOST, SimConfig, validate_config
from seedream_pipe.sim.engine import TERMINAL, Clock

T = TypeVar("T")


class _MalformedRequestsInOneLine(logging.Filter):
    """aiohttp logs a request it cannot parse (no Host header, a bad request line) with its whole
    traceback, after answering it 400. For a simulator that is a client's mistake, not ours:
    one line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: answered 400, {' '.join(str(error.message).split())}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


_aiohttp_server_log = logging.getLogger("aiohttp.server")
if not any(isinstance(f, _MalformedRequestsInOneLine) for f in _aiohttp_server_log.filters):
    _aiohttp_server_log.addFilter(_MalformedRequestsInOneLine())
# How long stopping waits for answers still being written (a slow fault sleeps far longer:
# it is cut short, as a real server restart would cut it).
SHUTDOWN_GRACE_S = 0.25


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class SimServer:
    """One simulator listening on a socket, driven from the event loop it was started on."""

    def __init__(
        self,
        cfg: SimConfig | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        # A copy: configure() and set_faults() change the live settings, and they changed the
        # caller's SimConfig with them, so the next Simulator(cfg) started paused, say, or failing.
        self.cfg = validate_config(copy.deepcopy(cfg) if cfg is not None else SimConfig())
        self.host = host
        self.requested_port = port
        self.app = SimApp(self.cfg, clock=clock, wall_clock=wall_clock)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the simulator is not running")
        return f"http://{_url_host(self.host)}:{self.port}/v1"

    async def start(self) -> None:
        """Bind and listen. Raises OSError when the address cannot be bound (e.g. port in use)."""
        runner = web.AppRunner(self.app.build(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.port = None


class Simulator:
    """A simulator in a background thread: a context manager for tests, notebooks and `run --sim`.

    Every method may be called from any thread. Settings changes run on the simulator's loop
    and are in effect when the call returns.
    """

    def __init__(
        self,
        cfg: SimConfig | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self._server = SimServer(cfg, host=host, port=port, clock=clock, wall_clock=wall_clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None

    def __repr__(self) -> str:
        where = self._server.base_url if self._server.port is not None else "stopped"
        return f"<Simulator {where}>"

    @property
    def cfg(self) -> SimConfig:
        """The live settings (read them; change them with `configure`/`set_faults`)."""
        return self._server.cfg

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT/v1`, the value to give a client as its API base."""
        return self._server.base_url

    @property
    def port(self) -> int:
        if self._server.port is None:
            raise RuntimeError("the simulator is not running")
        return self._server.port

    # -- start / stop ---------------------------------------------------------------------

    def start(self) -> Simulator:
        """Start listening; returns once the port accepts connections. Raises OSError if it cannot bind."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            try:
                await self._server.start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await self._stop_event.wait()
            finally:
                await self._server.stop()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="seedream-sim", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self._loop = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop listening and end the thread (idempotent)."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None or loop is None or stop_event is None:
            return
        loop.call_soon_threadsafe(stop_event.set)
        thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- run-time control -------------------------------------------------------------------

    def _on_loop(self, func: Callable[[], T]) -> T:
        """Run `func` on the simulator's loop (where its state lives) and return its result."""
        loop = self._loop
        if loop is None:
            return func()  # not running: nothing else touches the state

        async def call() -> T:
            return func()

        coro: Coroutine[Any, Any, T] = call()
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def stats(self) -> dict[str, Any]:
        """The counters, the same dict `GET /admin/stats` answers."""
        return self._server.app.stats.snapshot()

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Change any `Faults` fields now, e.g. `set_faults(job_fail_rate=0.5)`. Returns all faults."""
        return self._on_loop(lambda: self._server.app.set_faults(changes))

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change `SimConfig` fields now (workers, latency, rpm, seed, token, ...). Returns them all."""
        return self._on_loop(lambda: self._server.app.configure(changes))

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until no job is queued or running (raises TimeoutError after `timeout` s)."""
        stats = self._server.app.stats
        self._wait(lambda: stats.in_flight == 0, timeout)

    def wait_status(self, request_id: str, *statuses: str, timeout: float = 30.0) -> str:
        """Block until the job is in one of `statuses` (default: any terminal one); return it."""
        wanted = frozenset(statuses) if statuses else TERMINAL
        jobs = self._server.app.engine.jobs
        if request_id not in jobs:
            raise KeyError(f"unknown request id {request_id!r}")
        job = jobs[request_id]
        self._wait(lambda: job.status in wanted, timeout)
        return job.status

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        """Block until `predicate(stats)` holds; return those stats.

        Re-checked whenever a job is accepted or changes state, e.g.
        `sim.wait_for(lambda s: s["submits_accepted"] >= 3)`.
        """
        stats = self._server.app.stats
        seen: list[dict[str, Any]] = []

        def check() -> bool:
            snapshot = stats.snapshot()
            if predicate(snapshot):
                seen.append(snapshot)
                return True
            return False

        self._wait(check, timeout)
        return seen[-1]

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the simulator is not running")
        future = asyncio.run_coroutine_threadsafe(self._server.app.engine.wait_for(predicate), loop)
        try:
            future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def revoke_token(self) -> None:
        """From now on every API call answers 401."""
        self._on_loop(lambda: self._server.app.revoke(True))

    def restore_token(self) -> None:
        """Undo a revocation (and disarm `revoke_after`), e.g. to test that a run resumes."""
        self._on_loop(lambda: self._server.app.revoke(False))
