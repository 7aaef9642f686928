"""Where the Model API is and who we are to it: the base URL and the token, found as the
official `runcomfy` CLI finds them, so a user who has logged in with it needs nothing more.

Base URL: `--base-url`, else `RUNCOMFY_MODEL_API_BASE`, else the public endpoint.
Token: `RUNCOMFY_TOKEN`, else `RUNCOMFY_API_TOKEN`, else `access_token` in `token.json` of the
runcomfy config folder (`$RUNCOMFY_CONFIG_DIR`, else `$XDG_CONFIG_HOME/runcomfy`, else
`~/.config/runcomfy`).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from seedream_pipe import words
from seedream_pipe.errors import CONTROL_CHARS, AuthError, UsageError
from seedream_pipe.redaction import redact

DEFAULT_BASE_URL = "https://model-api.runcomfy.net/v1"
#: Jobs in flight at most, in a recipe's `run:` as with `run --concurrency`.
MAX_CONCURRENCY = 1000
BASE_URL_ENV = "RUNCOMFY_MODEL_API_BASE"
TOKEN_ENVS = ("RUNCOMFY_TOKEN", "RUNCOMFY_API_TOKEN")
TOKEN_FILE = "token.json"

NO_TOKEN_MESSAGE = (
    "no RunComfy API token found. Either set RUNCOMFY_TOKEN (or sign in with the official CLI: "
    "`runcomfy login`), or {sim}"
)


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The API to talk to. The token is kept out of `repr` so it never reaches a log."""

    base_url: str
    token: str

    def __repr__(self) -> str:
        return f"ApiSettings(base_url={self.base_url!r}, token='***')"

    @property
    def host(self) -> str:
        """The API's host name only: what a run records (never the token, never a path)."""
        return api_host(self.base_url)


def api_host(base_url: str) -> str:
    return urlsplit(base_url).hostname or ""


def resolve_base_url(option: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The base URL to use, checked: an http(s) URL with a host, without a trailing slash."""
    env = os.environ if env is None else env
    raw = option or env.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    # (a notebook's api_settings("http://...") gave base_url=: it has no --base-url to fix)
    return _checked_base_url(raw, words.option("--base-url", "base_url") if option else BASE_URL_ENV)


#: What a run given `ApiSettings(url, "")` says when it has something to send after all.
EMPTY_TOKEN_MESSAGE = "the token in ApiSettings is empty: api_settings() finds it as the CLI does"


def checked_api(api: ApiSettings, *, token_required: bool = True) -> ApiSettings:
    """`api` with the checks `api_settings()` makes, for settings built by hand (a notebook's
    `ApiSettings(url, token)`): the token never goes over plain http to another machine, nor
    into a header it would break. Raises UsageError or AuthError before anything is sent.

    `token_required=False` lets an empty token through, as "", for a run that turns out to
    have nothing to send (the runner checks that before it sends anything)."""
    if not isinstance(api, ApiSettings):
        raise UsageError(
            f"api= takes ApiSettings, not {type(api).__name__}: api_settings() finds the URL and token "
            "as the CLI does, or ApiSettings(base_url, token) names them"
        )
    if not isinstance(api.token, str) or (token_required and not api.token.strip()):
        raise AuthError(EMPTY_TOKEN_MESSAGE)
    token = _header_safe(api.token.strip(), "ApiSettings")
    raw = api.base_url if isinstance(api.base_url, str) else ""
    try:
        base_url = _checked_base_url(raw, "ApiSettings.base_url", quote=False)
    except UsageError as exc:  # (never quoted back: with the two swapped, it is the token)
        raise UsageError(redact(str(exc), token)) from None
    return api if (base_url, token) == (api.base_url, api.token) else ApiSettings(base_url, token)


def _checked_base_url(raw: str, source: str, *, quote: bool = True) -> str:
    not_a_url = UsageError(
        f"{source}: {raw!r} is not an http(s) URL with a host, e.g. {DEFAULT_BASE_URL}"
        if quote
        else f"{source} is not an http(s) URL with a host, e.g. {DEFAULT_BASE_URL} "
        "(ApiSettings takes the base URL first, then the token)"
    )
    try:
        parts = urlsplit(raw.strip())
        hostname = parts.hostname
        _ = parts.port  # a port that is no number raises here, not at the first request
    except ValueError:  # "http://[::1/v1", "http://h:port/v1"
        raise not_a_url from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise not_a_url
    if "@" in parts.netloc:
        # The API takes the token, not a user and password: with both, aiohttp refuses the
        # request (after the job was marked as being submitted), and the password would be
        # stored and shown with the URL.
        raise UsageError(
            f"{source}: the URL carries a user name or password (user:password@host); remove it: "
            "the token (RUNCOMFY_TOKEN) is what the API takes"
        )
    if "?" in raw or "#" in raw:
        # The paths of the API are appended to the base: after a query or a fragment they would
        # not be paths at all, and every submit would go to the base itself and answer 404,
        # said as an unknown model (exit 65).
        raise UsageError(
            f"{source}: the URL carries a query or fragment (?... or #...); remove it: the API's "
            f"paths are added to the base, e.g. {DEFAULT_BASE_URL}"
        )
    if parts.scheme == "http" and not is_loopback(hostname):
        # Every API call carries the bearer token: over plain http anyone on the path can read it.
        raise UsageError(
            f"{source}: refusing to send the token over plain http to {hostname}; "
            "use https (plain http is only for a simulator on this machine, e.g. 127.0.0.1)"
        )
    return raw.strip().rstrip("/")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """The official runcomfy CLI's config folder."""
    env = os.environ if env is None else env
    if env.get("RUNCOMFY_CONFIG_DIR"):
        return Path(env["RUNCOMFY_CONFIG_DIR"])
    if env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]) / "runcomfy"
    return Path(env.get("HOME") or Path.home()) / ".config" / "runcomfy"


def find_token(env: Mapping[str, str] | None = None) -> str | None:
    """The token from the environment or the runcomfy CLI's token.json, or None.

    A token holding a control character raises AuthError naming where it came from.
    """
    token, source = _token_and_source(env)
    return None if token is None or source is None else _header_safe(token, source)


def token_source(env: Mapping[str, str] | None = None) -> str | None:
    """Where `find_token` takes the token from (a variable's name, or the login file's path),
    for a message about a refused token: a stale RUNCOMFY_API_TOKEN beats a fresh login."""
    return _token_and_source(env)[1]


def _token_and_source(env: Mapping[str, str] | None) -> tuple[str | None, str | None]:
    """The token, unchecked, and where it was found, in the order the official CLI reads them."""
    env = os.environ if env is None else env
    for name in TOKEN_ENVS:
        value = env.get(name, "").strip()
        if value:
            return value, name
    path = config_dir(env) / TOKEN_FILE
    token, _problem = _read_token_file(path)
    return (token, str(path)) if token is not None else (None, None)


def _read_token_file(path: Path) -> tuple[str | None, str | None]:
    """The token in the official CLI's token.json, or None and what is wrong with the file
    (None too when there is no file: no login at all)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path} cannot be read ({exc.strerror or exc})"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, f"{path} is not valid JSON"
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token.strip():
        return None, f"{path} holds no access_token"
    return token.strip(), None


def _header_safe(token: str, source: str) -> str:
    """The token, if it can go in an Authorization header.

    A line break or other control character (a paste that took two lines) is refused by the HTTP
    stack only once the first submit is on its way, which left that job's outcome unknown and
    the run ending with exit 1 and no word of why. The message never shows the token itself.
    """
    if CONTROL_CHARS.search(token):
        raise AuthError(
            f"the token in {source} contains a control character (a line break, tab or similar, "
            "often from pasting); set it again to the token alone"
        )
    return token


def require_token(env: Mapping[str, str] | None = None) -> str:
    """The token, or an AuthError (exit 77) that says both ways forward."""
    token = find_token(env)
    if token is None:
        # a login file that is there but broken is a different fix from no login: name it
        _, problem = _read_token_file(config_dir(os.environ if env is None else env) / TOKEN_FILE)
        # (a notebook has no --sim to add: it starts a Simulator and gives the run its base_url)
        sim = words.option(
            "add --sim to run against the built-in simulator, which needs no token.",
            "run against the built-in simulator, which needs no token: `with seedream_pipe.Simulator() "
            "as sim:`, then api=ApiSettings(sim.base_url, 'any').",
        )
        message = NO_TOKEN_MESSAGE.format(sim=sim)
        raise AuthError(message + (f" (The login file {problem}.)" if problem else ""))
    return token


def api_settings(
    base_url: str | None = None, env: Mapping[str, str] | None = None, *, token_required: bool = True
) -> ApiSettings:
    """Base URL and token for a run against the real API (or any server given by URL).

    `token_required=False`: the token "" when none is found, for a run with nothing to send."""
    url = resolve_base_url(base_url, env)  # (first: a mistyped URL is said before a missing token)
    return ApiSettings(base_url=url, token=require_token(env) if token_required else (find_token(env) or ""))
