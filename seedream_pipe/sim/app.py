"""The simulator's HTTP face: the RunComfy Model API routes, signed file URLs and /admin.

`SimApp` owns the state of one simulator (settings, engine, counters, dice, image cache) and its
aiohttp handlers. Every change of settings goes through its `set_faults`/`configure`/`revoke`
methods, which run on the event loop (the in-process `Simulator` hops there first).

How an API call is answered, in order (faults first, as a load balancer in front of the real
service would fail before the service sees the call):
drop -> slow -> 5xx -> auth (401) -> the endpoint -> maybe malformed JSON in place of a 200.
(A submit, once accepted, may then lose its answer: dropped, or replaced by a gateway's 502/504.)
File downloads carry no token and have their own faults: signature (403) -> expiry (403) ->
404 -> garbage bytes -> truncated body.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import math
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp import web
from yarl import URL

from seedream_pipe.config import is_loopback
from seedream_pipe.errors import UsageError
from seedream_pipe.sim.config import (
    MAX_BODY_BYTES,
    SERVED_FORMATS,
    SimConfig,
    checked_fault_changes,
    checked_setting_changes,
)
from seedream_pipe.sim.engine import (
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    Clock,
    Engine,
    SimJob,
    SlidingWindowLimiter,
    Stats,
    body_hash,
)
from seedream_pipe.sim.faults import Dice
from seedream_pipe.sim.render import render_file

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
# Rendered images kept for repeated downloads (a runner retrying a truncated download, a sheet
# re-reading): bounded by bytes, since one 4K image is several MB.
IMAGE_CACHE_BYTES = 256 * 1024 * 1024
JSON = "application/json"
_FORMAT_OF_SUFFIX = {suffix: name for name, (suffix, _) in SERVED_FORMATS.items()}
# Other spellings of each status that RunComfy's docs and CLI show a client must accept
# (compared case-insensitively), sent with the variant "fault".
STATUS_SPELLINGS = {
    IN_QUEUE: ("IN_QUEUE", "In_Queue"),
    IN_PROGRESS: ("IN_PROGRESS", "In_Progress"),
    COMPLETED: ("succeeded", "Completed", "SUCCEEDED"),
    FAILED: ("FAILED", "Failed"),
    CANCELLED: ("canceled", "Cancelled", "CANCELED"),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def load_models(schema_dir: Path = SCHEMA_DIR) -> dict[str, jsonschema.protocols.Validator]:
    """Model id -> validator of its input schema, from `<owner>__<name>__<task>.json` files."""
    models: dict[str, jsonschema.protocols.Validator] = {}
    for path in sorted(schema_dir.glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        validator_cls = jsonschema.validators.validator_for(schema)
        models[path.stem.replace("__", "/")] = validator_cls(schema)
    return models


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with a Z, as APIs commonly write it."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, text=body, content_type=JSON, headers=headers)


def ok(payload: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(payload), content_type=JSON)


# What nginx, the usual gateway in front of an API, sends when the upstream's answer was lost
# (502) or did not come in time (504): HTML, not the API's JSON error.
GATEWAY_PAGES = {502: "502 Bad Gateway", 504: "504 Gateway Time-out"}


def _gateway_error(status: int) -> web.Response:
    title = GATEWAY_PAGES[status]
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return web.Response(status=status, text=page, content_type="text/html")


def _host_name(host: str) -> str:
    """The name a Host header gives, without its port: "[::1]:8765" -> "::1"."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host  # no port, or a bare IPv6 address


def _same_origin(origin: str, request: web.Request) -> bool:
    """Whether an Origin header names the origin the request was addressed to."""
    try:
        theirs = URL(origin)
        ours = URL(f"{request.scheme}://{request.headers.get('Host', '')}")
        return (
            theirs.absolute
            and (theirs.scheme, (theirs.host or "").lower(), theirs.port)
            == (ours.scheme, (ours.host or "").lower(), ours.port)
            and theirs.path in ("", "/")
        )
    except ValueError:
        return False


def _admin_refusal(request: web.Request) -> web.Response | None:
    """Why an /admin call is refused, or None. /admin takes no token, so only what its
    transport tells keeps others out:

    - the peer must be on this machine (a simulator listening on 0.0.0.0 is reachable by others);
    - the Host header must name a loopback address or localhost: a web page whose name an attacker
      rebinds to 127.0.0.1 (DNS rebinding) is same-origin to the browser, and the only sign left
      is the name it sends in Host;
    - a browser sends Origin with every cross-site POST (and with cross-origin reads): a call
      from another origin, even another port of localhost, is a web page, not a test or script;
    - a POST must say `Content-Type: application/json`: a browser sends that type cross-site only
      after a CORS preflight, which the simulator never grants, while a plain form or
      `fetch(..., {mode: "no-cors"})` can send `text/plain` with a JSON body.

    httpx, curl and aiohttp clients send no Origin and put the address they dialled in Host.
    """
    remote = request.remote
    try:
        loopback_peer = remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        loopback_peer = False
    if not loopback_peer:
        return error_response(403, "forbidden", "/admin answers loopback clients only.")
    host = request.headers.get("Host")
    if host is None or not is_loopback(_host_name(host).lower()):
        named = "no Host header" if host is None else f"Host {host!r}"
        return error_response(
            403,
            "forbidden",
            f"/admin answers only requests addressed to a loopback name (127.0.0.1, [::1] or localhost, "
            f"with or without the port); this one has {named}.",
        )
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(origin, request):
        return error_response(
            403,
            "forbidden",
            f"/admin refuses calls from web pages: Origin {origin!r} is not this simulator's own origin.",
        )
    if request.method == "POST" and request.content_type != JSON:
        return error_response(
            415,
            "unsupported_media_type",
            f"POST {request.path} takes a JSON object with 'Content-Type: {JSON}', "
            f"not {request.content_type!r}.",
        )
    return None


def _drop(request: web.Request) -> web.Response:
    """Close the socket with no answer. The returned response is never written."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=500)


class SimApp:
    """One simulator's state and handlers."""

    def __init__(self, cfg: SimConfig, *, clock: Clock, wall_clock: Clock) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.dice = Dice(cfg.seed)
        self.wall = wall_clock
        self.limiter = SlidingWindowLimiter(cfg.rpm, clock)
        self.engine = Engine(cfg, self.stats, self.dice, wall_clock)
        self.models = load_models()
        # per-server secret: a URL signed by one simulator is worthless to another
        self._secret = secrets.token_bytes(32)
        self._images: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._image_bytes = 0
        self._rendering: dict[str, asyncio.Future[bytes]] = {}
        self._executor: ThreadPoolExecutor | None = None

    # -- the aiohttp application ----------------------------------------------------------

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._json_errors], client_max_size=MAX_BODY_BYTES)
        api = self._api
        app.router.add_post("/v1/models/{model_id:.+}", api(self.submit))
        app.router.add_get("/v1/requests/{request_id}/status", api(self.status, "polls"), allow_head=False)
        app.router.add_get("/v1/requests/{request_id}/result", api(self.result, "result_reads"), allow_head=False)
        app.router.add_post("/v1/requests/{request_id}/cancel", api(self.cancel, "cancels"))
        app.router.add_get("/files/{request_id}/{name}", self.download)
        app.router.add_get("/admin/stats", self._admin(self.admin_stats), allow_head=False)
        app.router.add_post("/admin/faults", self._admin(self.admin_faults))
        app.router.add_post("/admin/config", self._admin(self.admin_config))
        app.router.add_post("/admin/revoke", self._admin(self.admin_revoke))
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        # Rendering is CPU work: it runs in threads so a 4K image never stalls the protocol
        # (Pillow's resize and zlib release the GIL).
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sim-render")
        self.engine.start()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.engine.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def _json_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count requests, and answer unknown routes in the API's JSON error shape."""
        if not request.path.startswith("/admin/"):
            self.stats.incr("requests_total")
        try:
            return await handler(request)
        except ConnectionResetError:
            # the client hung up mid-request: nobody to answer, and nothing worth a log line
            return web.Response(status=499)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # (a 405 must say)
            return error_response(exc.status, code, f"{exc.reason}: {request.method} {request.path}", allow)

    # -- the gate every API call passes -----------------------------------------------------

    def _api(self, handler: Handler, counter: str | None = None) -> Handler:
        """Wrap an API endpoint in the faults and auth every API call passes. `counter` counts
        every call received, whatever its answer: a poll that got a 502 was still a poll.

        Unlike /admin, API calls get no Host check (nor Origin check), on purpose: a simulator
        listening beyond loopback is meant to be reached by whatever name or address the client
        uses (links are built from its Host, as the real service's would be), and a call needs a
        bearer token, which a cross-site page cannot add without a CORS preflight the simulator
        never grants. A page that rebinds its name to 127.0.0.1 could still submit jobs of its own
        to a simulator that takes any token (and so move its counters), but it cannot read or
        cancel anyone else's: request ids are random UUIDs, and it cannot read /admin.
        """

        async def gated(request: web.Request) -> web.StreamResponse:
            if counter is not None:
                self.stats.incr(counter)
            faults = self.cfg.faults
            dice = self.dice
            if dice.hit("drop_rate", faults.drop_rate):
                self.stats.fault("drop_rate")
                self._count_rejected_submit(request)
                return _drop(request)
            if dice.hit("slow_rate", faults.slow_rate):
                self.stats.fault("slow_rate")
                if request.can_read_body:
                    # take the body in first (aiohttp keeps it for the handler): a client that
                    # gives up during the delay must not stop its submit from being accepted
                    try:
                        await request.read()
                    except web.HTTPRequestEntityTooLarge:
                        self._count_rejected_submit(request)
                        return self._too_large()
                await asyncio.sleep(faults.slow_s)
            if dice.hit("error_rate", faults.error_rate):
                self.stats.fault("error_rate")
                # Nothing is created, so a submit answers only what says so: a 502 or 504 to a
                # submit means a gateway lost the upstream's answer, outcome unknown (that is
                # gateway_rate). Submits draw from their own stream, so the codes other calls
                # get do not depend on how many submits came between.
                if self._is_submit(request):
                    self.stats.incr("submits_rejected")
                    status = dice.choice("submit_error_status", (500, 503))
                else:
                    status = dice.choice("error_status", (500, 502, 503))
                code = {500: "internal_error", 502: "bad_gateway", 503: "service_unavailable"}[status]
                return error_response(status, code, "Simulated server error; retry later.")
            denied = self._check_auth(request)
            if denied is not None:
                self._count_rejected_submit(request)
                return denied
            response = await handler(request)
            if (
                response.status == 200
                and isinstance(response, web.Response)
                and dice.hit("malformed_rate", faults.malformed_rate)
            ):
                self.stats.fault("malformed_rate")
                text = response.text or "{}"
                # cut mid-document: a body a JSON parser must refuse
                return web.Response(text=text[: max(1, len(text) // 2)], content_type=JSON)
            return response

        return gated

    @staticmethod
    def _is_submit(request: web.Request) -> bool:
        return request.method == "POST" and request.path.startswith("/v1/models/")

    def _count_rejected_submit(self, request: web.Request) -> None:
        if self._is_submit(request):
            self.stats.incr("submits_rejected")

    def _check_auth(self, request: web.Request) -> web.Response | None:
        denied = self._denied(request)
        if denied is not None and self._variant():
            code, message = denied
            return error_response(403, "forbidden" if code == "unauthorized" else code, message)
        return None if denied is None else error_response(401, *denied)

    def _denied(self, request: web.Request) -> tuple[str, str] | None:
        """Why the call's token is refused (code, message), or None."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "unauthorized", "Missing bearer token: send 'Authorization: Bearer <token>'."
        faults = self.cfg.faults
        if faults.revoke_after is not None and self.stats.submits_accepted >= faults.revoke_after:
            self.stats.token_revoked = True
        if self.stats.token_revoked:
            self.stats.fault("revoke_after")
            return "token_revoked", "This API token has been revoked."
        if self.cfg.token is not None and not hmac.compare_digest(token.encode(), self.cfg.token.encode()):
            return "unauthorized", "Invalid API token."
        return None

    def _variant(self) -> bool:
        """Whether this answer takes another form a client must accept (see Faults.variant_rate)."""
        if self.dice.hit("variant_rate", self.cfg.faults.variant_rate):
            self.stats.fault("variant_rate")
            return True
        return False

    def _spelled(self, status: str) -> str:
        if status in STATUS_SPELLINGS and self._variant():
            spellings = STATUS_SPELLINGS[status]
            return spellings[self.dice.choice("variant_spelling", tuple(range(len(spellings))))]
        return status

    # -- the API ----------------------------------------------------------------------------

    @staticmethod
    def _base(request: web.Request) -> str:
        # Links are built from the Host the client used, as a real service behind its own
        # domain would, so they work whatever address the simulator was reached at.
        return f"{request.scheme}://{request.host}/v1"

    def _links(self, request: web.Request, request_id: str) -> dict[str, str]:
        base = f"{self._base(request)}/requests/{request_id}"
        return {"status_url": f"{base}/status", "result_url": f"{base}/result", "cancel_url": f"{base}/cancel"}

    async def submit(self, request: web.Request) -> web.StreamResponse:
        response, job = await self._admit(request)
        if job is None:
            self.stats.incr("submits_rejected")
            return response
        faults = self.cfg.faults
        if self.dice.hit("submit_drop_rate", faults.submit_drop_rate):
            # the job stands (and is billed); only the answer is lost
            self.stats.fault("submit_drop_rate")
            return _drop(request)
        if self.dice.hit("gateway_rate", faults.gateway_rate):
            # the job stands (and is billed); a gateway in front answers in its place
            self.stats.fault("gateway_rate")
            return _gateway_error(self.dice.choice("gateway_status", (502, 504)))
        return response

    async def _admit(self, request: web.Request) -> tuple[web.Response, SimJob | None]:
        retry_after = self.limiter.admit()
        if retry_after is not None:
            self.stats.incr("rate_limited")
            seconds = max(1, math.ceil(retry_after))
            message = f"Too many requests: at most {self.limiter.rpm} submits per minute. Retry after {seconds} s."
            if self._variant():
                return error_response(429, "rate_limited", "Too many requests."), None  # no Retry-After
            return error_response(429, "rate_limited", message, {"Retry-After": str(seconds)}), None
        model = request.match_info["model_id"]
        validator = self.models.get(model)
        if validator is None:
            known = ", ".join(sorted(self.models))
            return error_response(404, "model_not_found", f"Unknown model {model!r}. Known models: {known}."), None
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(), None
        try:
            body = json.loads(raw)
            error = jsonschema.exceptions.best_match(validator.iter_errors(body))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return error_response(400, "invalid_json", f"Request body is not valid JSON: {exc}"), None
        except RecursionError:  # (the body's fault, not the server's: a 5xx would be retried)
            return error_response(400, "invalid_json", "Request body is nested too deeply."), None
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "body"
            return error_response(422, "validation_error", f"{where}: {error.message}"), None
        credit_limit = self.cfg.faults.credit_limit
        if credit_limit is not None and self.stats.submits_accepted >= credit_limit:
            self.stats.fault("credit_limit")
            return error_response(402, "insufficient_credit", "Not enough credit to run this request."), None
        job = self.engine.submit(model, body, body_hash(body))
        links = {} if self._variant() else self._links(request, job.request_id)  # (build them from the base)
        return ok({"request_id": job.request_id, **links}), job

    @staticmethod
    def _too_large() -> web.Response:
        return error_response(413, "payload_too_large", f"Request body over {MAX_BODY_BYTES} bytes.")

    def _job(self, request: web.Request) -> SimJob | web.Response:
        request_id = request.match_info["request_id"]
        job = self.engine.jobs.get(request_id)
        if job is None:
            return error_response(404, "request_not_found", f"Unknown request id {request_id!r}.")
        return job

    async def status(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        base = f"{self._base(request)}/requests/{job.request_id}"
        payload: dict[str, Any] = {"request_id": job.request_id, "status": self._spelled(job.status)}
        if job.status == IN_QUEUE:
            payload["queue_position"] = self.engine.queue_position(job)
        elif job.status == IN_PROGRESS and self._variant():
            payload["instance_id"] = f"sim-{job.request_id[:8]}"
        payload["status_url"] = f"{base}/status"
        payload["result_url"] = f"{base}/result"
        return ok(payload)

    async def result(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        payload: dict[str, Any] = {"request_id": job.request_id, "status": self._spelled(job.status)}
        if job.status == COMPLETED:
            urls = [self._file_url(request, job, 0)]
            payload["output"] = {"images": urls} if self.cfg.images_array else {"image": urls[0]}
        elif job.status == FAILED:
            payload["error"] = job.error
        elif job.status not in (CANCELLED,):
            # not finished: the same answer as a status read, with no output yet
            if job.status == IN_QUEUE:
                payload["queue_position"] = self.engine.queue_position(job)
            links = self._links(request, job.request_id)
            payload["status_url"] = links["status_url"]
            payload["result_url"] = links["result_url"]
        payload["created_at"] = iso(job.created_at)
        if job.finished_at is not None:
            payload["finished_at"] = iso(job.finished_at)
        return ok(payload)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        outcome = self.engine.cancel(job)
        return ok({"request_id": job.request_id, "status": self._spelled(job.status), "outcome": outcome})

    # -- files ------------------------------------------------------------------------------

    def _sign(self, request_id: str, n: int, expires: int) -> str:
        message = f"{request_id}/{n}:{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _file_url(self, request: web.Request, job: SimJob, n: int) -> str:
        now = self.wall()
        if self.dice.hit("expired_rate", self.cfg.faults.expired_rate):
            self.stats.fault("expired_rate")
            expires = math.floor(now) - 1  # signed correctly, but already in the past
        else:
            expires = math.ceil(now + self.cfg.url_ttl_s)
        sig = self._sign(job.request_id, n, expires)
        suffix = SERVED_FORMATS[self.cfg.image_format][0]
        return f"{request.scheme}://{request.host}/files/{job.request_id}/{n}{suffix}?expires={expires}&sig={sig}"

    async def download(self, request: web.Request) -> web.StreamResponse:
        self.stats.incr("downloads")
        if "Authorization" in request.headers:
            # Served all the same (what a CDN does with one is not known), but counted: file
            # URLs are fetched without the token, and a test can so assert that none leaked.
            self.stats.incr("downloads_with_token")
        request_id = request.match_info["request_id"]
        name = request.match_info["name"]
        stem, dot, ext = name.partition(".")
        # the suffix names the format: a URL handed out before /admin/config changed
        # image_format still serves the file it named
        image_format = _FORMAT_OF_SUFFIX.get(dot + ext)
        job = self.engine.jobs.get(request_id)
        if job is None or job.status != COMPLETED or not stem.isdigit() or image_format is None or int(stem) != 0:
            return error_response(404, "file_not_found", "No such file.")
        try:
            expires = int(request.query.get("expires", ""))
        except ValueError:
            return error_response(403, "invalid_signature", "Missing or malformed 'expires' in the signed URL.")
        sig = request.query.get("sig", "")
        if not hmac.compare_digest(sig.encode(), self._sign(request_id, 0, expires).encode()):
            return error_response(403, "invalid_signature", "The URL's signature does not match.")
        if self.wall() > expires:
            return error_response(
                403, "url_expired", "This signed URL has expired; read the request's result again for a fresh one."
            )
        faults = self.cfg.faults
        if self.dice.hit("result_404_rate", faults.result_404_rate):
            self.stats.fault("result_404_rate")
            return error_response(404, "file_not_found", "No such file (simulated CDN miss).")
        if self.dice.hit("garbage_rate", faults.garbage_rate):
            self.stats.fault("garbage_rate")
            junk = b"\x00not an image\x00" + self.dice.stream("garbage_bytes").randbytes(2048)
            return web.Response(body=junk, content_type=SERVED_FORMATS[image_format][1])
        data = await self._image(job, image_format)
        if self.dice.hit("truncate_rate", faults.truncate_rate):
            self.stats.fault("truncate_rate")
            response = web.StreamResponse(headers={"Content-Type": SERVED_FORMATS[image_format][1]})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            if request.transport is not None:
                request.transport.close()
            return response
        return web.Response(body=data, content_type=SERVED_FORMATS[image_format][1])

    async def _image(self, job: SimJob, image_format: str) -> bytes:
        """The job's image file: rendered once, off the loop, then served from a small LRU cache.
        (A repeat of a body is another take: another picture, as the real model would draw.)"""
        key = f"{job.digest}.{job.take}.{image_format}"
        cached = self._images.get(key)
        if cached is not None:
            self._images.move_to_end(key)
            return cached
        pending = self._rendering.get(key)
        if pending is None:
            loop = asyncio.get_running_loop()
            prompt = str(job.body.get("prompt", ""))
            resolution = job.body.get("resolution")
            pending = asyncio.ensure_future(
                loop.run_in_executor(
                    self._executor,
                    render_file,
                    prompt,
                    None if resolution is None else str(resolution),
                    image_format,
                    job.take,
                )
            )
            self._rendering[key] = pending
            try:
                data = await asyncio.shield(pending)
            finally:
                self._rendering.pop(key, None)
            self._remember(key, data)
            return data
        return await asyncio.shield(pending)

    def _remember(self, key: str, data: bytes) -> None:
        self._images[key] = data
        self._image_bytes += len(data)
        while self._image_bytes > IMAGE_CACHE_BYTES and len(self._images) > 1:
            _, old = self._images.popitem(last=False)
            self._image_bytes -= len(old)

    # -- run-time control -------------------------------------------------------------------

    def set_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        checked = checked_fault_changes(changes)
        for name, value in checked.items():
            setattr(self.cfg.faults, name, value)
        return dataclasses.asdict(self.cfg.faults)

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        settings, faults = checked_setting_changes(changes)
        for name, value in settings.items():
            setattr(self.cfg, name, value)
            if name == "workers":
                self.engine.set_workers(value)
            elif name == "rpm":
                self.limiter.rpm = value
            elif name == "seed":
                self.dice.reseed(value)
        self.set_faults(faults)
        return self.describe()

    def revoke(self, revoked: bool = True) -> None:
        if not revoked:
            # restoring the token also disarms the fault that would revoke it again at once
            self.cfg.faults.revoke_after = None
        self.stats.token_revoked = revoked

    def describe(self) -> dict[str, Any]:
        """The current settings, with the token replaced by whether one is set."""
        shown = {f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(self.cfg) if f.name != "faults"}
        shown["token"] = "***" if self.cfg.token is not None else None
        shown["faults"] = dataclasses.asdict(self.cfg.faults)
        return shown

    # -- /admin (loopback only, no token) -----------------------------------------------------

    def _admin(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            refused = _admin_refusal(request)
            if refused is not None:
                return refused
            try:
                return await handler(request)
            except UsageError as exc:
                return error_response(400, "invalid_setting", str(exc))

        return guarded

    @staticmethod
    async def _json_object(request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read() or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"body is not valid JSON: {exc}") from exc
        except RecursionError:
            raise UsageError("body is nested too deeply") from None
        if not isinstance(body, dict):
            raise UsageError("body must be a JSON object")
        return body

    async def admin_stats(self, request: web.Request) -> web.StreamResponse:
        return ok(self.stats.snapshot())

    async def admin_faults(self, request: web.Request) -> web.StreamResponse:
        return ok(self.set_faults(await self._json_object(request)))

    async def admin_config(self, request: web.Request) -> web.StreamResponse:
        return ok(self.configure(await self._json_object(request)))

    async def admin_revoke(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_object(request)
        revoked = body.get("revoked", True)
        if not isinstance(revoked, bool):
            raise UsageError("revoked must be true or false")
        self.revoke(revoked)
        return ok({"token_revoked": self.stats.token_revoked})

