"""Cancelling a folder's queued jobs on the API (`seedream-pipe cancel`, and a run that is
interrupted), and telling when the simulator on this machine that held them is gone."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from seedream_pipe.client import ModelApiClient
from seedream_pipe.config import ApiSettings, checked_api, is_loopback
from seedream_pipe.errors import ApiError, AuthError
from seedream_pipe.runner.folder import folder_lock
from seedream_pipe.state import IN_FLIGHT_STATES, STATE_FILE, JobRecord, StateStore


async def cancel_queued(
    store: StateStore,
    client: ModelApiClient,
    *,
    on_done: Callable[[JobRecord, str, str | None], None] | None = None,
) -> tuple[int, int]:
    """Ask the API to cancel every job of this folder that is in flight. Returns (cancelled,
    kept): queued jobs are cancelled (never billed) and recorded as such; running ones answer
    not_cancellable and are kept, to be polled by the next run."""
    jobs = store.jobs(in_plan=None, states=IN_FLIGHT_STATES)
    cancelled = kept = 0

    async def cancel_one(rec: JobRecord) -> None:
        nonlocal cancelled, kept
        if not rec.request_id:
            return
        try:
            outcome = await client.cancel(rec.request_id, rec.cancel_url)
        except AuthError:
            raise
        except ApiError as exc:
            kept += 1
            if on_done is not None:
                on_done(rec, "error", str(exc))
            return
        if outcome.cancelled:
            cancelled += 1
            store.transition(rec.job_id, "cancelled", detail={"by": "cancel"})
        else:
            kept += 1
            if outcome.status in ("in_progress", "completed") and outcome.status != rec.state:
                store.transition(rec.job_id, outcome.status)
        if on_done is not None:
            on_done(rec, "cancelled" if outcome.cancelled else (outcome.outcome or "kept"), None)

    await asyncio.gather(*(cancel_one(rec) for rec in jobs))
    return cancelled, kept


#: What `cancel` says of a folder a run is at work in ("{pid}": that run's).
CANCEL_WHILE_RUNNING = (
    "interrupt it instead (Ctrl-C in its terminal, or `kill -INT {pid}`): it cancels its queued jobs itself"
)


def cancel_folder(
    out_dir: str | os.PathLike[str],
    *,
    api: ApiSettings,
    http: httpx.AsyncClient | None = None,
    on_done: Callable[[JobRecord, str, str | None], None] | None = None,
) -> tuple[int, int]:
    """`seedream-pipe cancel`: cancel the queued jobs of an earlier run of this folder.

    `on_done(job, outcome, error)` hears of each job; outcome "error" when the API could not be
    asked (the job is counted as kept)."""
    out_dir = Path(out_dir)
    if not (out_dir / STATE_FILE).exists():
        from seedream_pipe.errors import NothingToShow

        raise NothingToShow(f"{out_dir}: no run here (no {STATE_FILE})")
    api = checked_api(api)

    async def go() -> tuple[int, int]:
        with StateStore.for_output_dir(out_dir) as store:
            async with ModelApiClient(api, http=http) as client:
                return await cancel_queued(store, client, on_done=on_done)

    # A run at work in the folder would take its cancelled jobs as finished; it cancels its
    # queued jobs itself when interrupted.
    with folder_lock(out_dir, busy=CANCEL_WHILE_RUNNING):
        return asyncio.run(go())


#: How long `gone_simulator` waits for a simulator on this machine to accept a connection.
#: Loopback refuses at once when nothing listens; this only bounds a port slow to answer.
PROBE_TIMEOUT_S = 1.0


def _sent_to(rec: JobRecord) -> tuple[str, int] | None:
    """The (host, port) a job's API links point at, as the API handed them out, or None."""
    url = rec.cancel_url or rec.status_url
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a malformed host or a port that is no number: no address to look at
        return None
    return (parts.hostname, port) if parts.hostname else None


def _nothing_listens(host: str, port: int) -> bool:
    """True only when the address refuses a connection: proof that no server is there any more.

    Any other failure (a timeout, say) proves nothing, so `cancel` goes on and reports what the
    API answers."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def gone_simulator(last_host: str | None, in_flight: list[JobRecord]) -> str | None:
    """The address of the simulator on this machine that held these jobs, if it is gone; else None.

    `run --sim` starts its simulator inside the run's process: once that run is killed, its jobs
    exist nowhere, so asking to cancel them could only fail, and retrying would never help.
    """
    if not last_host or not is_loopback(last_host):
        return None
    addresses: set[tuple[str, int]] = set()
    for rec in in_flight:
        address = _sent_to(rec)
        if address is None or not is_loopback(address[0]):
            return None  # a job we cannot place on this machine: let the API say what it holds
        addresses.add(address)
    if not all(_nothing_listens(host, port) for host, port in addresses):
        return None
    return ", ".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in sorted(addresses))
