"""How fast the runner may go: submit pacing (rpm with AIMD on 429), the separate request budget
for polls/results/downloads, retry backoff, and the adaptive poll schedule.

Everything here reads time from an injected clock and sleeps through an injected `sleep`, and
jitter comes from an injected RNG, so the tests drive it with a fake clock and never sleep.

Why the submit pacer looks the way it does:
- Servers count "N per minute" over a sliding window. A token bucket with a burst can put more
  than N into some 60-second window, so submits are spaced evenly (no burst) and aimed a little
  under the configured rate (`SUBMIT_MARGIN`): network jitter then never tips a sliding-window
  server over when the recipe's rpm equals the account's.
- When the account's limit is lower than the recipe says, the first 429 carries the information
  we need: how many submits the server took since the last 429 and when it will take more
  (`Retry-After`). The pacer drops straight to that accepted rate (a far better guess than
  halving twenty times), pauses the whole client until Retry-After, and afterwards creeps up
  slowly (`RECOVERY_PER_10S`) to find out whether the limit has risen. A small overshoot steps
  down by `SMALL_DECREASE`.
"""

from __future__ import annotations

import asyncio
import bisect
import email.utils
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Submits aim this far under the configured rpm (see the module docstring).
SUBMIT_MARGIN = 0.98
#: After a 429, the rate grows by this factor for every 10 s without another one.
RECOVERY_PER_10S = 1.05
#: A 429 when we were already sending near the accepted rate: step down this much.
SMALL_DECREASE = 0.85
NO_EVIDENCE_DECREASE = 0.5
LARGEST_SMALL_STEP = 0.95
#: A 429 without Retry-After: pause this long, doubling per consecutive one, up to the cap.
DEFAULT_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 120.0
#: The lowest submit rate the pacer falls to (per second): one a minute.
MIN_SUBMIT_RATE = 1.0 / 60.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


class SubmitPacer:
    """Spaces submits to the configured rpm, and adapts to the server's 429s (AIMD).

    `await pacer.acquire()` before each submit; then tell it what happened with `accepted()` or
    `rate_limited(retry_after)`. One waiter at a time looks at the schedule (a lock), so waking
    is FIFO and costs one timer per submit, whatever the concurrency.
    """

    def __init__(
        self,
        rpm: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        margin: float = SUBMIT_MARGIN,
    ) -> None:
        if rpm <= 0:
            raise ValueError("rpm must be positive")
        self._clock = clock
        self._sleep = sleep
        self.ceiling = rpm / 60.0 * margin  # submits per second at most
        self._base_rate = self.ceiling  # the rate decided at the last 429 (or the ceiling)
        self._base_at: float | None = None  # when it was decided (None: never limited)
        self._next = -math.inf  # the earliest time of the next submit
        self.paused_until = -math.inf
        self._lock = asyncio.Lock()
        # what the server accepted since the last 429: the evidence for the next estimate
        self._accepted_since = 0
        self._first_accepted_at: float | None = None
        self._no_hint_streak = 0
        self.rate_limited_count = 0

    def __repr__(self) -> str:
        return f"<SubmitPacer {self.rate() * 60:.1f}/min (ceiling {self.ceiling * 60:.1f})>"

    def rate(self, now: float | None = None) -> float:
        """Submits per second allowed now: the decided rate, grown back since the last 429."""
        if self._base_at is None:
            return self.ceiling
        now = self._clock() if now is None else now
        tens = max(0.0, now - self._base_at) / 10.0
        # (back at the ceiling long before 1.05**tens overflows a float, some 40 h after a 429,
        # which raised OverflowError into the submit: a long run died as a bug)
        if tens * math.log(RECOVERY_PER_10S) >= math.log(self.ceiling / self._base_rate):
            return self.ceiling
        return min(self.ceiling, self._base_rate * RECOVERY_PER_10S**tens)

    def delay(self, now: float) -> float:
        """Seconds until a submit may go (0: now). Pure: reserves nothing."""
        return max(0.0, max(self._next, self.paused_until) - now)

    def take(self, now: float) -> None:
        """Use the slot that `delay()` said is open now."""
        # Spaced from when this submit really goes, never from when it was due: a late wake-up
        # (a busy loop, a GC pause) then costs a little pace, but never squeezes two submits
        # closer than the interval, which a sliding-window server would answer with a 429.
        self._next = now + 1.0 / self.rate(now)

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                wait = self.delay(now)
                if wait <= 0:
                    self.take(now)
                    return
                await self._sleep(wait)

    def accepted(self) -> None:
        now = self._clock()
        if self._first_accepted_at is None:
            self._first_accepted_at = now
        self._accepted_since += 1
        self._no_hint_streak = 0

    def rate_limited(self, retry_after: float | None) -> float:
        """A 429: pause everyone and lower the rate. Returns the pause in seconds."""
        now = self._clock()
        self.rate_limited_count += 1
        if retry_after is None:
            retry_after = min(MAX_RETRY_AFTER_S, DEFAULT_RETRY_AFTER_S * 2**self._no_hint_streak)
            self._no_hint_streak += 1
        same_episode = now < self.paused_until
        self.paused_until = max(self.paused_until, now + retry_after)
        if same_episode:
            # Submits already on the wire when the first 429 came back: same news, not new news.
            return self.paused_until - now
        current = self.rate(now)
        accepted_rate = 0.0
        if self._first_accepted_at is not None and self._accepted_since > 0:
            span = now - self._first_accepted_at + retry_after
            accepted_rate = self._accepted_since / span if span > 0 else current
        if self._accepted_since == 0:
            # Nothing accepted since the last 429 (the very first submit, say): no evidence of
            # the server's rate, so halve (AIMD) rather than drop to the floor, from which 5%
            # growth per 10 s would take 14 minutes to climb back to 60/min.
            new_rate = current * NO_EVIDENCE_DECREASE
        elif accepted_rate >= 0.5 * current:
            # a small overshoot: a real step down, but never a plunge
            new_rate = min(max(accepted_rate, current * SMALL_DECREASE), current * LARGEST_SMALL_STEP)
        else:
            # far too fast (e.g. the recipe's rpm is above the account's): go to what was taken
            new_rate = accepted_rate * SUBMIT_MARGIN
        self._base_rate = max(MIN_SUBMIT_RATE, min(self.ceiling, new_rate))
        self._base_at = now + retry_after
        self._accepted_since = 0
        self._first_accepted_at = None
        return self.paused_until - now


class RequestBudget:
    """A token bucket for everything that is not a submit (polls, result reads, downloads).

    Separate from the submit pacer so that polling never starves submits (and vice versa).
    Waiters reserve a slot and sleep until it (FIFO, one timer each). A 429 on one of these calls
    pauses the whole budget for its Retry-After.
    """

    def __init__(
        self,
        per_second: float,
        *,
        burst: int = 20,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self._clock = clock
        self._sleep = sleep
        self.per_second = per_second
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._at = clock()
        self.paused_until = -math.inf

    def __repr__(self) -> str:
        return f"<RequestBudget {self.per_second:g}/s burst {self.burst}>"

    def reserve(self, now: float) -> float:
        """Take a token (possibly borrowed from the future); return the seconds to wait for it."""
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.per_second)
        self._at = now
        self._tokens -= 1.0
        wait = -self._tokens / self.per_second if self._tokens < 0 else 0.0
        return max(wait, self.paused_until - now)

    async def acquire(self) -> None:
        wait = self.reserve(self._clock())
        while wait > 0:
            await self._sleep(wait)
            # a 429 may have paused the budget while we slept
            wait = self.paused_until - self._clock()

    def rate_limited(self, retry_after: float | None) -> None:
        pause = DEFAULT_RETRY_AFTER_S if retry_after is None else retry_after
        self.paused_until = max(self.paused_until, self._clock() + pause)


class Backoff:
    """Exponential backoff with jitter, capped: attempt 0 waits about `base`, then x`factor`.

    "Equal jitter": half the step is fixed and half random, so retries of many jobs spread out
    but none retries at once.
    """

    def __init__(
        self,
        *,
        base: float = 0.5,
        factor: float = 2.0,
        cap: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.factor = factor
        self.cap = cap
        self._rng = rng if rng is not None else random.Random()

    def __repr__(self) -> str:
        return f"<Backoff base={self.base:g}s x{self.factor:g} cap={self.cap:g}s>"

    def delay(self, attempt: int) -> float:
        step = min(self.cap, self.base * self.factor ** max(0, attempt))
        return step / 2 + self._rng.uniform(0.0, step / 2)


class PollSchedule:
    """When to look at a job again, learned from the jobs this run has already seen finish.

    Before anything has finished: the first look after `first` seconds, then gaps growing by
    `growth`. Once durations are known (submit to finish, from the server's own timestamps when
    it gives them), a job is looked at when it has reached each of `quantiles` of the recent
    durations (by default the median, p80, p95 and the slowest seen): most jobs are caught by
    the first or second look, soon after they finish. A job slower than all of them is looked
    at with gaps growing from a small fraction of the median, so a changed service is noticed.
    """

    def __init__(
        self,
        *,
        first: float = 1.0,
        growth: float = 1.5,
        max_gap: float = 30.0,
        min_gap: float = 0.01,
        window: int = 64,
        quantiles: Sequence[float] = (0.5, 0.8, 0.95, 1.0),
    ) -> None:
        self.first = first
        self.growth = growth
        self.max_gap = max_gap
        self.min_gap = min_gap
        self.quantiles = tuple(quantiles)
        self._recent: deque[float] = deque(maxlen=window)
        self._targets: list[float] = []
        self._median = 0.0

    def __repr__(self) -> str:
        return f"<PollSchedule {len(self._recent)} durations, targets {self._targets}>"

    @property
    def learned(self) -> bool:
        return bool(self._recent)

    def observe(self, duration: float) -> None:
        """A job took `duration` seconds from submit to finish."""
        if not math.isfinite(duration) or duration < 0:
            return
        self._recent.append(duration)
        ordered = sorted(self._recent)
        n = len(ordered)
        self._median = ordered[n // 2]
        targets = {ordered[min(n - 1, math.ceil(q * n) - 1 if q > 0 else 0)] for q in self.quantiles}
        self._targets = sorted(targets)

    def next_delay(self, elapsed: float, last_gap: float | None = None) -> float:
        """Seconds from now until the next look at a job submitted `elapsed` seconds ago.

        `last_gap` is the gap used before this one (None for the first look).
        """
        if not self._targets:
            if last_gap is None:
                gap = max(self.first - elapsed, self.min_gap)
            else:
                # (at least `first`: a job resumed long after its submit is looked at at once,
                # and if still running, then at a fresh job's pace, not from a 10 ms gap up)
                gap = max(last_gap * self.growth, self.first)
            return min(max(gap, self.min_gap), self.max_gap)
        i = bisect.bisect_right(self._targets, elapsed + self.min_gap / 2)
        if i < len(self._targets):
            # (capped: a look at least every max_gap, whatever a server's timestamps taught)
            return min(max(self._targets[i] - elapsed, self.min_gap), self.max_gap)
        # later than every job seen: back off from a fraction of the median
        start = max(self.min_gap, 0.1 * self._median)
        gap = start if last_gap is None or last_gap < start else last_gap * self.growth
        return min(gap, self.max_gap)
