"""`seedream-pipe sim`: run the built-in RunComfy simulator in the foreground.

Only parses options and prints; the simulator itself is `seedream_pipe.sim`, which tests and
`run --sim` drive in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
from typing import Any

import click

from seedream_pipe.errors import EX_UNAVAILABLE
from seedream_pipe.sim.config import (
    DEFAULT_HOST,
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_LATENCY_JITTER_S,
    DEFAULT_LATENCY_S,
    DEFAULT_PORT,
    DEFAULT_SLOW_S,
    DEFAULT_URL_TTL_S,
    DEFAULT_WORKERS,
    SERVED_FORMATS,
    Faults,
    SimConfig,
    listens_beyond_loopback,
)

PROBABILITY = click.FloatRange(0.0, 1.0)
SECONDS = click.FloatRange(min=0.0)


def open_to_the_network(host: str, token: str | None) -> str | None:
    """The warning for a simulator others can use, or None.

    Without --token the simulator takes any bearer token, which is harmless on loopback but,
    on an address other machines reach, lets anyone on the network submit jobs to it.
    """
    if token is not None or not listens_beyond_loopback(host):
        return None
    return (
        f"listening on {host or 'every interface'} without --token: anyone who can reach this port "
        "can use the simulator with any bearer token. Pass --token T to accept only T, or listen "
        f"on {DEFAULT_HOST} (the default)"
    )


def _rate(flag: str, what: str) -> Any:
    return click.option(flag, type=PROBABILITY, default=0.0, show_default=True, metavar="P", help=what)


@click.command("sim", short_help="Run the built-in RunComfy Model API simulator until Ctrl-C.")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on; 0 picks a free one.")
@click.option("--token", metavar="T", default=None,
              help="The only bearer token accepted. Default: any non-empty token.")
@click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
              help="Jobs generated at once; the rest wait in a FIFO queue.")
@click.option("--latency", type=SECONDS, default=DEFAULT_LATENCY_S, show_default=True, metavar="S",
              help="Seconds a job takes to generate.")
@click.option("--latency-jitter", type=SECONDS, default=DEFAULT_LATENCY_JITTER_S, show_default=True,
              metavar="S", help="Each job takes latency +/- up to this many seconds (seeded).")
@click.option("--rpm", type=click.IntRange(min=1), default=None, metavar="N",
              help="Submits admitted per sliding minute; beyond it 429 with Retry-After. Default: no limit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random draw (faults, durations).")
@click.option("--url-ttl", "url_ttl_s", type=SECONDS, default=DEFAULT_URL_TTL_S, show_default=True, metavar="S",
              help="Lifetime in seconds of the signed image URLs a result hands out.")
@click.option("--images-array", is_flag=True, help='Results carry {"images": [URL]} instead of {"image": URL}.')
@click.option("--image-format", type=click.Choice(list(SERVED_FORMATS)), default=DEFAULT_IMAGE_FORMAT,
              show_default=True, help="Format of the images served: JPEG, as Seedream 4.0 makes, or PNG.")
@_rate("--error-rate", "Probability that an API call answers 500/502/503 (a submit 500/503), having done nothing.")
@_rate("--drop-rate", "Probability that an API call's connection closes with no answer.")
@_rate("--slow-rate", "Probability that an API call is answered only after --slow-seconds.")
@click.option("--slow-seconds", "slow_s", type=SECONDS, default=DEFAULT_SLOW_S, show_default=True, metavar="S",
              help="Delay of a slow answer (longer than a client's timeout).")
@_rate("--malformed-rate", "Probability that a 200 answer's body is broken JSON (the call took effect).")
@_rate("--job-fail-rate", "Probability that a job ends 'failed' with an error object.")
@_rate("--result-404-rate", "Probability that an image download answers 404.")
@_rate("--expired-rate", "Probability that a result hands out an already expired image URL (403).")
@_rate("--truncate-rate", "Probability that an image download is cut short (full Content-Length, part of the body).")
@_rate("--garbage-rate", "Probability that an image download returns bytes that are not an image.")
@click.option("--revoke-after", type=click.IntRange(min=0), default=None, metavar="N",
              help="Revoke the token after N accepted submits: every API call then answers 401.")
@click.option("--credit-limit", type=click.IntRange(min=0), default=None, metavar="K",
              help="Answer 402 (out of credit) to every submit after K accepted ones.")
@_rate("--submit-drop-rate", "Probability that a submit is accepted (and billed), then its connection dropped.")
@_rate("--gateway-rate", "Probability that a submit is accepted (and billed), then answered 502/504 by a "
       "gateway (an HTML page): its outcome is unknown to the client.")
@_rate("--variant-rate", "Probability that an answer takes another form clients must accept (a status "
       "spelled 'succeeded' or 'COMPLETED', no URLs in a submit answer, a 429 without Retry-After, 403 for 401).")
def sim_command(
    host: str,
    port: int,
    token: str | None,
    workers: int,
    latency: float,
    latency_jitter: float,
    rpm: int | None,
    seed: int,
    url_ttl_s: float,
    images_array: bool,
    image_format: str,
    **fault_options: Any,
) -> int:
    """Run the built-in RunComfy Model API simulator until Ctrl-C.

    It speaks the Model API (submit, status, result, cancel) under /v1 with bearer auth,
    generates labelled JPEGs (or PNGs), serves them under signed expiring URLs, and injects the faults
    you ask for, reproducibly from --seed. GET /admin/stats (loopback only, no token) counts
    what it saw; POST /admin/faults and /admin/config (JSON, with Content-Type: application/json)
    change it while it runs. /admin refuses web pages: another Origin, or a Host not loopback.

    Example:

    \b
        seedream-pipe sim --port 8765 --latency 1 --rpm 60 --error-rate 0.05
        export RUNCOMFY_MODEL_API_BASE=http://127.0.0.1:8765/v1
        curl -H "Authorization: Bearer any" -H "Content-Type: application/json" \\
             -d '{"prompt": "a lighthouse at dusk, 16:9", "resolution": "1K"}' \\
             $RUNCOMFY_MODEL_API_BASE/models/bytedance/seedream-4-0/text-to-image
        curl http://127.0.0.1:8765/admin/stats
    """
    from seedream_pipe.sim.server import SimServer  # the server stack loads only for this command

    cfg = SimConfig(
        workers=workers,
        latency=latency,
        latency_jitter=latency_jitter,
        rpm=rpm,
        seed=seed,
        token=token,
        url_ttl_s=url_ttl_s,
        images_array=images_array,
        image_format=image_format,
        faults=Faults(**fault_options),
    )
    server = SimServer(cfg, host=host, port=port)
    try:
        asyncio.run(_serve(server, warning=open_to_the_network(host, token), token_given=token is not None))
    except OSError as exc:
        reason = "the address is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        hint = " (pick another --port, or --port 0 for a free one)" if exc.errno == errno.EADDRINUSE else ""
        click.secho(f"error: cannot listen on {host}:{port}: {reason}{hint}", fg="red", err=True)
        return EX_UNAVAILABLE
    return 0


def how_to_use(host: str, port: int, *, token_given: bool) -> list[str]:
    """What a newcomer needs next to the URL (stderr): which token, and from a wildcard or
    network address, the URL seedream-pipe itself can use (it sends a token over plain http to
    this machine only, so it refuses http://0.0.0.0:PORT/v1)."""
    lines = ["Token: only the one given with --token" if token_given
             else "Token: any (e.g. export RUNCOMFY_TOKEN=sim)"]
    local = _local_origin(host, port)
    if listens_beyond_loopback(host):
        if local is not None:
            lines.append(f"From this machine: --base-url {local}/v1 (seedream-pipe sends a token over "
                         "plain http to this machine only)")
        else:
            lines.append("seedream-pipe sends a token over plain http to this machine only, so its "
                         "`run --base-url` refuses this address; other clients can use it")
    return lines


def _local_origin(host: str, port: int) -> str | None:
    """The loopback origin a simulator listening on every interface answers at, else None."""
    if host not in WILDCARD_HOSTS:
        return None
    # (on "::" asyncio's socket is IPv6 only: 127.0.0.1 would be refused there)
    return f"http://[::1]:{port}" if host == "::" else f"http://127.0.0.1:{port}"


#: Addresses that mean every interface.
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def stats_line(host: str, port: int, origin: str) -> str:
    """Where /admin/stats can be read (stderr). /admin answers only loopback requests addressed
    to a loopback name: on every interface that is the loopback URL (http://0.0.0.0:PORT/admin
    answers 403), and on another machine-facing address it cannot be read at all."""
    if not listens_beyond_loopback(host):
        return f"Stats: {origin}/admin/stats · stop with Ctrl-C"
    local = _local_origin(host, port)
    if local is not None:
        return f"Stats: {local}/admin/stats · stop with Ctrl-C"
    return (f"Stats: none on {host} (/admin answers requests from this machine to a loopback address "
            f"only; listen on {DEFAULT_HOST} or 0.0.0.0 to read them) · stop with Ctrl-C")


async def _serve(server: Any, *, warning: str | None = None, token_given: bool = False) -> None:
    """Listen until SIGINT/SIGTERM, then stop cleanly (exit 0, no traceback).

    `warning` goes to stderr once listening: a port that failed to open exposes nothing."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # e.g. not the main thread
            loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        click.echo(f"Simulator listening on {server.base_url}")
        if warning:
            click.secho(f"warning: {warning}", fg="yellow", err=True)
        for line in how_to_use(server.host, server.port, token_given=token_given):
            click.echo(line, err=True)
        click.echo(stats_line(server.host, server.port, server.base_url.removesuffix("/v1")), err=True)
        await stop.wait()
    finally:
        await server.stop()


COMMANDS: list[click.Command] = [sim_command]
