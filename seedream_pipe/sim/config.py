"""The simulator's settings: how it behaves (`SimConfig`) and how it misbehaves (`Faults`).

Both are plain mutable dataclasses so that a test can change them while the simulator runs
(`Simulator.configure`, `Simulator.set_faults`, `POST /admin/config`, `POST /admin/faults`).
Every change is validated first (names and values, all or nothing), so a typo in a test or an
admin call is a `UsageError`, never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from seedream_pipe.config import is_loopback
from seedream_pipe.errors import UsageError

# Defaults in one place; the CLI's option defaults read these too.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_WORKERS = 4
#: Each worker is a task spawned at once: `--workers 1000000000` (or the same POSTed to
#: /admin/config) took gigabytes and froze the simulator. Far more jobs at once than any
#: account runs.
MAX_WORKERS = 10_000
DEFAULT_LATENCY_S = 2.0
DEFAULT_LATENCY_JITTER_S = 0.5
DEFAULT_URL_TTL_S = 3600.0
DEFAULT_SLOW_S = 30.0  # longer than any sensible client timeout
MAX_BODY_BYTES = 1024 * 1024
#: The image formats the simulator serves (`SimConfig.image_format`), each with the file suffix
#: and Content-Type it is served under. JPEG first: it is what Seedream 4.0 makes.
SERVED_FORMATS = {"jpeg": (".jpg", "image/jpeg"), "png": (".png", "image/png")}
DEFAULT_IMAGE_FORMAT = "jpeg"


def listens_beyond_loopback(host: str) -> bool:
    """True when a simulator bound to `host` can be reached from other machines.

    Only localhost, 127.0.0.0/8 and ::1 stay on this machine; "0.0.0.0", "::" and "" mean every
    interface, and any other name may resolve to a public address, so it counts as beyond.
    """
    return not is_loopback(host)


@dataclass
class Faults:
    """What goes wrong, and how often. Probabilities are 0..1; every draw is seeded.

    - `error_rate`: an API call answers 500, 502 or 503, a submit only 500 or 503 (nothing
      happens server-side: the answers that mean "not created, retry"; a 502 or 504 to a submit
      means its outcome is unknown, which is `gateway_rate`).
    - `drop_rate`: an API call's connection is closed with no answer (nothing happens).
    - `slow_rate`, `slow_s`: an API call is answered only after `slow_s` seconds (then
      processed normally: a slow submit is still accepted, even if the client gave up).
    - `malformed_rate`: a 200 answer of an API call carries a body that is not JSON (the call
      did take effect: a malformed submit answer still means the job was accepted).
    - `job_fail_rate`: a job ends `failed` with an `error` object.
    - `result_404_rate`: an image download answers 404.
    - `expired_rate`: a result read hands out an image URL whose signature already expired.
    - `truncate_rate`: an image download sends the full Content-Length, part of the body, then
      closes the connection.
    - `garbage_rate`: an image download answers 200 with the image's Content-Type and bytes
      that are no image.
    - `revoke_after`: after that many accepted submits the token is revoked: every API call 401.
    - `credit_limit`: after that many accepted submits every submit answers 402.
    - `submit_drop_rate`: a submit is accepted (and counted), then its connection is dropped.
    - `gateway_rate`: a submit is accepted (and counted), then answered 502 or 504 with a
      gateway's HTML page, as a proxy in front of the API sends when it lost or timed out
      waiting for the upstream's answer.
    - `variant_rate`: an answer takes one of the other forms RunComfy's docs and CLI show a client must
      accept: a status spelled `succeeded`/`canceled` or in other letter case, `instance_id`
      while in progress, a submit answer without its URLs, a 429 without `Retry-After`, a
      refused token as 403. Not a fault, but drawn and counted like one.
    """

    error_rate: float = 0.0
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_s: float = DEFAULT_SLOW_S
    malformed_rate: float = 0.0
    job_fail_rate: float = 0.0
    result_404_rate: float = 0.0
    expired_rate: float = 0.0
    truncate_rate: float = 0.0
    garbage_rate: float = 0.0
    revoke_after: int | None = None
    credit_limit: int | None = None
    submit_drop_rate: float = 0.0
    gateway_rate: float = 0.0
    variant_rate: float = 0.0


# The names under which injected faults are counted in stats["faults"]: every Faults field
# except the duration parameter of the slow fault.
FAULT_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Faults) if f.name != "slow_s")


@dataclass
class SimConfig:
    """How the simulator behaves when nothing goes wrong.

    - `workers`: jobs generated at the same time; the rest wait in a FIFO queue (0: paused).
    - `latency`, `latency_jitter`: a job runs `latency` +/- uniform(`latency_jitter`) seconds.
    - `rpm`: submits admitted per sliding minute (None: unlimited); beyond it 429 + Retry-After.
    - `seed`: seeds every random draw (faults, job durations), so a run is reproducible.
    - `token`: the only bearer token accepted (None: any non-empty token).
    - `url_ttl_s`: lifetime of a signed image URL, from the result read that handed it out.
    - `images_array`: results carry `{"images": [URL]}` instead of `{"image": URL}`.
    - `image_format`: "jpeg" (what Seedream 4.0 makes) or "png" (what other models, and
      Seedream from 5.0, can make): the file behind an image URL.
    """

    workers: int = DEFAULT_WORKERS
    latency: float = DEFAULT_LATENCY_S
    latency_jitter: float = DEFAULT_LATENCY_JITTER_S
    rpm: int | None = None
    seed: int = 0
    token: str | None = None
    url_ttl_s: float = DEFAULT_URL_TTL_S
    images_array: bool = False
    image_format: str = DEFAULT_IMAGE_FORMAT
    faults: Faults = field(default_factory=Faults)

    def __repr__(self) -> str:
        # The token is a secret: never let it reach a log through a repr.
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if shown["token"] is not None:
            shown["token"] = "***"
        inner = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"SimConfig({inner})"


_PROBABILITIES = frozenset(FAULT_NAMES) - {"revoke_after", "credit_limit"}


def _check_number(name: str, value: Any, *, integer: bool, optional: bool) -> int | float | None:
    if value is None:
        if optional:
            return None
        raise UsageError(f"{name} must be a number, not null")
    # bool is an int in Python, but `workers=True` is surely a mistake
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{name} must be a number, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise UsageError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    if not math.isfinite(value):
        raise UsageError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_fault(name: str, value: Any) -> Any:
    """Validate one Faults field; return the value in its proper type."""
    if name in _PROBABILITIES:
        number = _check_number(name, value, integer=False, optional=False)
        assert number is not None
        if not 0.0 <= number <= 1.0:
            raise UsageError(f"{name} is a probability: it must be between 0 and 1, got {value!r}")
        return number
    if name == "slow_s":
        number = _check_number(name, value, integer=False, optional=False)
        assert number is not None
        if number < 0:
            raise UsageError(f"slow_s must be >= 0, got {value!r}")
        return number
    if name in ("revoke_after", "credit_limit"):
        number = _check_number(name, value, integer=True, optional=True)
        if number is not None and number < 0:
            raise UsageError(f"{name} must be >= 0 (or null for never), got {value!r}")
        return number
    known = ", ".join(f.name for f in dataclasses.fields(Faults))
    raise UsageError(f"unknown fault {name!r}; known faults: {known}")


def check_setting(name: str, value: Any) -> Any:
    """Validate one SimConfig field (not `faults`); return the value in its proper type."""
    if name == "workers":
        number = _check_number(name, value, integer=True, optional=False)
        assert number is not None
        if number < 0:
            raise UsageError(f"workers must be >= 0 (0 pauses the queue), got {value!r}")
        if number > MAX_WORKERS:
            raise UsageError(f"workers must be at most {MAX_WORKERS:,}, got {value!r}")
        return number
    if name in ("latency", "latency_jitter", "url_ttl_s"):
        number = _check_number(name, value, integer=False, optional=False)
        assert number is not None
        if number < 0:
            raise UsageError(f"{name} must be >= 0, got {value!r}")
        return number
    if name == "rpm":
        number = _check_number(name, value, integer=True, optional=True)
        if number is not None and number < 1:
            raise UsageError(f"rpm must be at least 1 (or null for unlimited), got {value!r}")
        return number
    if name == "seed":
        number = _check_number(name, value, integer=True, optional=False)
        return number
    if name == "token":
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise UsageError("token must be a non-empty string (or null to accept any token)")
        return value
    if name == "images_array":
        if not isinstance(value, bool):
            raise UsageError(f"images_array must be true or false, got {value!r}")
        return value
    if name == "image_format":
        if value not in SERVED_FORMATS:
            raise UsageError(f"image_format must be one of {', '.join(map(repr, SERVED_FORMATS))}, got {value!r}")
        return value
    known = ", ".join(f.name for f in dataclasses.fields(SimConfig))
    raise UsageError(f"unknown setting {name!r}; known settings: {known}")


def validate_faults(faults: Faults) -> Faults:
    """Check every field of a Faults (e.g. one built by hand); return it for chaining."""
    for f in dataclasses.fields(faults):
        setattr(faults, f.name, check_fault(f.name, getattr(faults, f.name)))
    return faults


def validate_config(cfg: SimConfig) -> SimConfig:
    """Check every field of a SimConfig, its faults included; return it for chaining."""
    if not isinstance(cfg, SimConfig):  # (a dict, say: dataclasses.fields said only "must be a dataclass")
        raise UsageError(f"a simulator takes a SimConfig, not {type(cfg).__name__}: e.g. Simulator(SimConfig(latency=0.1))")
    for f in dataclasses.fields(cfg):
        if f.name == "faults":
            if not isinstance(cfg.faults, Faults):
                raise UsageError("faults must be a Faults instance")
            validate_faults(cfg.faults)
        else:
            setattr(cfg, f.name, check_setting(f.name, getattr(cfg, f.name)))
    return cfg


def checked_fault_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a set of fault changes as a whole before any is applied (all or nothing)."""
    return {name: check_fault(name, value) for name, value in changes.items()}


def checked_setting_changes(changes: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate setting changes (a `faults` key may hold fault changes); return both parts."""
    settings: dict[str, Any] = {}
    faults: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "faults":
            if isinstance(value, Faults):
                value = dataclasses.asdict(value)
            if not isinstance(value, Mapping):
                raise UsageError("faults must be an object of fault settings")
            faults.update(checked_fault_changes(value))
        else:
            settings[name] = check_setting(name, value)
    return settings, faults
