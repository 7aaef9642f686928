"""What carries the client's requests: an injected `httpx.AsyncClient`, or aiohttp directly.

The client speaks httpx: its public interface takes an `httpx.AsyncClient` (tests pass one with
a MockTransport), its failures are httpx's exception classes, and an answer has the attributes
of an `httpx.Response` it reads (status_code, headers, json(), text, reason_phrase; for a
stream, aiter_bytes() and aread()). Two wires provide that:

- `HttpxWire` sends through a given httpx client (never following its redirects, its answers
  held to the same size cap) and hands back an `Answer`, or its response to stream;
- `AiohttpWire` (the default, when no client is given) sends through aiohttp's connection pool
  and hands back a small `Answer` with the same attributes.

Why the second: the runner's benchmark measured httpx's own pool at 0.5-1.4 ms of CPU per
request; httpx over aiohttp's pool (an httpx transport) at about 0.2 ms, of which 0.13 ms was
httpx's request/response models and URL parsing; aiohttp alone at about 0.06 ms. A job takes
about five requests. aiohttp is already a dependency (the simulator's server).

aiohttp's exceptions are mapped to httpx's, keeping the one distinction the runner relies on:
a connection that never opened (ConnectError/ConnectTimeout: the body never left) versus one
that failed after the request went out (ReadTimeout, ReadError, RemoteProtocolError).

What a user of httpx gets by default, the aiohttp wire keeps: certificates are checked against
httpx's trust (certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR), and HTTPS_PROXY / HTTP_PROXY /
ALL_PROXY / NO_PROXY from the environment are honoured, except for a simulator on this machine.
(aiohttp's own `trust_env` is not used: it would read ~/.netrc in a thread on every request and
refuse our Authorization header when the file names the host.)
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx

from seedream_pipe.config import is_loopback

CHUNK = 256 * 1024


class NeverConnects(httpx.ConnectError):
    """A connection that will fail the same way every time: a TLS handshake that cannot work
    (https sent to a plain-http port, a certificate this machine does not trust), nothing
    listening on this machine's port (a simulator not started), or a host name that does not
    exist. The client gives up at once instead of retrying for half a minute."""


# OpenSSL's reasons for a handshake that no retry can mend: the other end does not speak TLS,
# or speaks a version this side refuses. (An EOF or reset mid-handshake is not here: a busy
# load balancer does that, and a retry may well get through; nor RECORD_LAYER_FAILURE, which
# some services are reported to give now and then.)
_TLS_FOR_GOOD = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
        "PACKET_LENGTH_TOO_LONG",
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "NO_PROTOCOLS_AVAILABLE",
        "CERTIFICATE_VERIFY_FAILED",
    }
)


class Wire(Protocol):
    """Sends one request; raises httpx.HTTPError subclasses for what failed on the way."""

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None, timeout: httpx.Timeout
    ) -> Any: ...

    def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> AbstractAsyncContextManager[Any]: ...

    async def aclose(self) -> None: ...


class HttpxWire:
    """Through a given httpx client (whoever gave it closes it). Never with its redirects
    followed, whatever the client was made with: the client here checks every hop's host."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None, timeout: httpx.Timeout
    ) -> Answer:
        stream = self.http.stream(method, url, headers=headers, content=content, timeout=timeout, follow_redirects=False)
        async with stream as response:
            body = await _read_capped(response)
            return Answer(response.status_code, response.headers, body, response.reason_phrase)

    def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> AbstractAsyncContextManager[httpx.Response]:
        return self.http.stream(method, url, headers=headers, timeout=timeout, follow_redirects=False)

    async def aclose(self) -> None:
        return None


def _map(exc: BaseException) -> httpx.HTTPError:
    """The httpx exception that says the same thing as an aiohttp one."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return NeverConnects(
            f"the server's TLS certificate is not trusted ({exc.certificate_error}); "
            "a private CA (a company proxy's, say) can be named with SSL_CERT_FILE"
        )
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return httpx.ConnectError(
            f"cannot reach the proxy at {exc.host}:{exc.port} that HTTPS_PROXY / HTTP_PROXY / ALL_PROXY "
            f"names ({exc.os_error.strerror or exc.os_error}); NO_PROXY lists hosts to reach directly"
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text)
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, ssl.SSLError) and getattr(error, "reason", None) in _TLS_FOR_GOOD:
            return NeverConnects(_cannot_connect(exc))
        if isinstance(error, ConnectionRefusedError) and is_loopback(exc.host):
            # This machine answers at once that no program has the port: a retry finds the same.
            return NeverConnects(_cannot_connect(exc))
        if isinstance(error, socket.gaierror) and error.errno == socket.EAI_NONAME:
            # The name does not exist (a mistyped host, or no DNS at all). A resolver that is
            # only slow or down for a moment says EAI_AGAIN, which is retried.
            return NeverConnects(_cannot_connect(exc))
        return httpx.ConnectError(_cannot_connect(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(text)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(text)
    if isinstance(exc, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(text)
    return httpx.ReadError(text)


def _cannot_connect(exc: aiohttp.ClientConnectorError) -> str:
    """Why no connection opened, in words: aiohttp's own text shows an SSLContext's repr."""
    error = exc.os_error
    if isinstance(error, socket.gaierror):
        return f"cannot find the host {exc.host} ({error.strerror}): check the URL and this machine's network"
    if isinstance(error, ssl.SSLError):  # its errno is OpenSSL's, not the OS's
        reason = f"TLS: {getattr(error, 'reason', None) or error}"
        return f"cannot connect to {exc.host}:{exc.port} ({reason}; is it an https port, or a proxy in the way?)"
    reason = os.strerror(error.errno) if error.errno else (error.strerror or str(error) or type(error).__name__)
    if isinstance(error, ConnectionRefusedError) and is_loopback(exc.host):
        return f"nothing listens on {exc.host}:{exc.port} ({reason}): is `seedream-pipe sim` running there?"
    return f"cannot connect to {exc.host}:{exc.port} ({reason})"


def env_proxy(scheme: str, host: str) -> str | None:
    """The proxy the environment names for this scheme and host, or None.

    Like curl and httpx: HTTPS_PROXY / HTTP_PROXY (lower case too), else ALL_PROXY, unless
    NO_PROXY covers the host. A loopback host (the simulator) is always reached directly.
    """
    if is_loopback(host):
        return None
    if urllib.request.proxy_bypass(host):  # NO_PROXY
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(scheme) or proxies.get("all") or None


#: The most an API answer (JSON) may hold. Real ones are a few hundred bytes; a server sending
#: more is broken or hostile, and reading it whole would take the machine's memory.
MAX_ANSWER_BYTES = 4 * 1024 * 1024


async def _read_capped(response: aiohttp.ClientResponse | httpx.Response) -> bytes:
    """The whole body, or httpx.ReadError once it passes MAX_ANSWER_BYTES (never held whole),
    of an aiohttp response or of an httpx one (a notebook's own client, the tests')."""
    if isinstance(response, httpx.Response):
        length = response.headers.get("Content-Length")
        declared = int(length) if length and length.isdigit() else None
        chunks: AsyncIterator[bytes] = response.aiter_bytes(CHUNK)
    else:
        declared, chunks = response.content_length, response.content.iter_chunked(CHUNK)
    if declared is not None and declared > MAX_ANSWER_BYTES:
        raise httpx.ReadError(f"the answer is {declared} bytes, over the {MAX_ANSWER_BYTES} an API answer may be")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise httpx.ReadError(f"the answer passed the {MAX_ANSWER_BYTES} bytes an API answer may be")
        parts.append(chunk)
    return b"".join(parts)


class Answer:
    """A read answer: the parts of an httpx.Response the client uses."""

    __slots__ = ("content", "headers", "reason_phrase", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes, reason: str | None) -> None:
        self.status_code = status_code
        self.headers = headers  # case-insensitive (aiohttp's CIMultiDictProxy)
        self.content = content
        self.reason_phrase = reason or _phrase(status_code)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


class StreamedAnswer:
    """An answer whose body is read by the caller, chunk by chunk (or whole, with aread())."""

    __slots__ = ("_response", "content", "headers", "reason_phrase", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers = response.headers
        self.reason_phrase = response.reason or _phrase(response.status)
        self.content = b""

    async def aiter_bytes(self, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(chunk_size):
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map(exc) from None

    async def aread(self) -> bytes:
        """The whole body of an answer that is not a file (an error page), capped as an API
        answer is."""
        try:
            self.content = await _read_capped(self._response)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map(exc) from None
        return self.content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass(frozen=True, slots=True)
class _Route:
    proxy: str | None
    tls: ssl.SSLContext | bool


class AiohttpWire:
    """Through aiohttp's pool. The session is made on first use, on the loop that uses it."""

    def __init__(self, *, limit: int = 100) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}
        self._routes: dict[str, _Route] = {}  # "scheme://netloc" -> how to reach it
        self._tls: ssl.SSLContext | None = None  # made on the first https request

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300),
                cookie_jar=aiohttp.DummyCookieJar(),  # bearer token and pre-signed URLs: no cookies
            )
        return self._session

    def _route(self, url: str) -> _Route:
        """The proxy and TLS settings for this URL's origin, worked out once per origin.

        The TLS context (loading the CA bundle takes about 16 ms) is made only once an https
        URL is asked for: a run against the simulator on this machine never needs it.
        """
        key = "/".join(url.split("/", 3)[:3])  # "https://host:port"
        route = self._routes.get(key)
        if route is None:
            parts = urlsplit(url)
            tls: ssl.SSLContext | bool = True  # (plain http: not used)
            if parts.scheme == "https":
                if self._tls is None:
                    self._tls = httpx.create_ssl_context()  # httpx's trust: certifi or SSL_CERT_FILE/_DIR
                tls = self._tls
            route = self._routes[key] = _Route(env_proxy(parts.scheme, parts.hostname or ""), tls)
        return route

    def _timeout(self, timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
        key = (timeout.connect, timeout.read)
        found = self._timeouts.get(key)
        if found is None:
            found = self._timeouts[key] = aiohttp.ClientTimeout(total=None, connect=key[0], sock_read=key[1])
        return found

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None, timeout: httpx.Timeout
    ) -> Answer:
        try:
            async with self._get_session().request(
                method,
                url,
                headers=headers,
                data=content,
                allow_redirects=False,
                timeout=self._timeout(timeout),
                proxy=(route := self._route(url)).proxy,
                ssl=route.tls,
            ) as response:
                body = await _read_capped(response)
                return Answer(response.status, response.headers, body, response.reason)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map(exc) from None

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> AsyncIterator[StreamedAnswer]:
        try:
            response = await self._get_session().request(
                method,
                url,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout(timeout),
                proxy=(route := self._route(url)).proxy,
                ssl=route.tls,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map(exc) from None
        try:
            yield StreamedAnswer(response)
        finally:
            response.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

