"""Pacing: submit spacing and AIMD, the request budget, backoff and the poll schedule.

Driven by a fake clock whose `sleep` only moves time forward: nothing here really sleeps.
"""

from __future__ import annotations

import itertools
import random

import pytest
from _fakes import FakeTime

from seedream_pipe.pacing import (
    MIN_SUBMIT_RATE,
    SUBMIT_MARGIN,
    Backoff,
    PollSchedule,
    RequestBudget,
    SubmitPacer,
    parse_retry_after,
)


async def submit_times(pacer: SubmitPacer, clock: FakeTime, n: int) -> list[float]:
    times = []
    for _ in range(n):
        await pacer.acquire()
        pacer.accepted()
        times.append(clock.now)
    return times


async def test_submits_are_spaced_evenly_just_under_the_rpm() -> None:
    clock = FakeTime(100.0)
    pacer = SubmitPacer(60, clock=clock, sleep=clock.sleep)
    times = await submit_times(pacer, clock, 5)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 100.0  # the first goes at once
    assert gaps == pytest.approx([1 / SUBMIT_MARGIN] * 4)


async def test_no_sixty_second_window_holds_more_than_rpm() -> None:
    clock = FakeTime(100.0)
    pacer = SubmitPacer(10, clock=clock, sleep=clock.sleep)
    times = await submit_times(pacer, clock, 40)
    for i, start in enumerate(times):
        in_window = [t for t in times[i:] if t < start + 60.0]
        assert len(in_window) <= 10


async def test_an_idle_spell_does_not_save_up_a_burst() -> None:
    clock = FakeTime(100.0)
    pacer = SubmitPacer(60, clock=clock, sleep=clock.sleep)
    await submit_times(pacer, clock, 2)
    clock.now += 100.0
    times = await submit_times(pacer, clock, 3)
    assert times[1] - times[0] == pytest.approx(1 / SUBMIT_MARGIN)
    assert times[2] - times[1] == pytest.approx(1 / SUBMIT_MARGIN)


async def test_first_429_drops_to_the_accepted_rate_and_pauses_for_retry_after() -> None:
    clock = FakeTime(100.0)
    # the recipe says 6000/min, the server takes 20 in its window, then says "after 1 s"
    pacer = SubmitPacer(6000, clock=clock, sleep=clock.sleep)
    await submit_times(pacer, clock, 20)
    start = clock.now
    pause = pacer.rate_limited(1.0)
    assert pause == pytest.approx(1.0)
    assert pacer.delay(clock.now) == pytest.approx(1.0)
    accepted_span = start - 100.0 + 1.0
    assert pacer.rate(clock.now + 1.0) == pytest.approx(20 / accepted_span * SUBMIT_MARGIN)
    # the pause holds everyone back: the next submit goes at the end of it
    await pacer.acquire()
    assert clock.now == pytest.approx(start + 1.0)


async def test_a_429_with_nothing_accepted_halves_the_rate_rather_than_plunging() -> None:
    clock = FakeTime(100.0)
    pacer = SubmitPacer(60, clock=clock, sleep=clock.sleep)
    await pacer.acquire()
    pacer.rate_limited(2.0)  # the very first submit: no evidence of the server's rate
    assert pacer.rate(clock.now + 2.0) == pytest.approx(pacer.ceiling / 2)
    clock.now += 3.0
    pacer.rate_limited(2.0)  # and again, still nothing accepted: halved again
    assert pacer.rate(clock.now + 2.0) == pytest.approx(pacer.ceiling / 4, rel=0.01)


async def test_429s_of_one_episode_lower_the_rate_once() -> None:
    clock = FakeTime(100.0)
    pacer = SubmitPacer(6000, clock=clock, sleep=clock.sleep)
    await submit_times(pacer, clock, 20)
    pacer.rate_limited(1.0)
    rate = pacer.rate(clock.now + 1.0)
    clock.now += 0.001  # answers of submits already on the wire
    pacer.rate_limited(1.0)
    pacer.rate_limited(1.0)
    assert pacer.rate(clock.now + 1.0) == pytest.approx(rate, rel=1e-3)
    assert pacer.rate_limited_count == 3


async def test_a_small_overshoot_steps_down_gently_and_recovers_slowly() -> None:
    clock = FakeTime(100.0)
    pacer = SubmitPacer(60, clock=clock, sleep=clock.sleep)
    await submit_times(pacer, clock, 30)
    before = pacer.rate(clock.now)
    pacer.rate_limited(1.0)
    after = pacer.rate(clock.now + 1.0)
    assert 0.85 * before <= after <= 0.95 * before
    assert pacer.rate(clock.now + 11.0) == pytest.approx(after * 1.05)
    assert pacer.rate(clock.now + 10_000.0) == pytest.approx(pacer.ceiling)


async def test_429_without_retry_after_backs_off_exponentially() -> None:
    clock = FakeTime(100.0)
    pacer = SubmitPacer(60, clock=clock, sleep=clock.sleep)
    assert pacer.rate_limited(None) == pytest.approx(1.0)
    clock.now += 1.0
    assert pacer.rate_limited(None) == pytest.approx(2.0)
    clock.now += 2.0
    assert pacer.rate_limited(None) == pytest.approx(4.0)
    assert pacer.rate(clock.now + 4.0) >= MIN_SUBMIT_RATE


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)


async def test_request_budget_allows_a_burst_then_paces() -> None:
    clock = FakeTime(100.0)
    budget = RequestBudget(10.0, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await budget.acquire()
    assert clock.now == 100.0
    await budget.acquire()
    assert clock.now == pytest.approx(100.1)


async def test_request_budget_pauses_on_429() -> None:
    clock = FakeTime(100.0)
    budget = RequestBudget(100.0, burst=5, clock=clock, sleep=clock.sleep)
    budget.rate_limited(2.0)
    await budget.acquire()
    assert clock.now == pytest.approx(102.0)


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=8.0, rng=random.Random(1))
    delays = [backoff.delay(n) for n in range(6)]
    for n, delay in enumerate(delays):
        step = min(8.0, 2.0**n)
        assert step / 2 <= delay <= step
    assert max(delays) <= 8.0
    assert len({round(d, 6) for d in delays[3:]}) == 3  # same step, different jitter


def test_poll_schedule_starts_soon_and_backs_off_before_learning() -> None:
    schedule = PollSchedule(first=0.5, growth=2.0, max_gap=3.0)
    assert schedule.next_delay(0.0) == 0.5
    assert schedule.next_delay(0.5, last_gap=0.5) == 1.0
    assert schedule.next_delay(1.5, last_gap=1.0) == 2.0
    assert schedule.next_delay(3.5, last_gap=2.0) == 3.0  # capped


def test_a_job_resumed_long_after_its_submit_is_looked_at_once_then_at_a_fresh_jobs_pace() -> None:
    # (a resumed run knows no durations yet): no run of looks 10 ms apart at a job still running
    schedule = PollSchedule(first=1.0, growth=1.5, max_gap=30.0)
    first = schedule.next_delay(600.0)
    assert first == schedule.min_gap
    assert schedule.next_delay(600.0 + first, last_gap=first) == 1.0
    assert schedule.next_delay(601.0, last_gap=1.0) == 1.5


def test_poll_schedule_polls_at_quantiles_of_observed_durations() -> None:
    schedule = PollSchedule(first=0.5, quantiles=(0.5, 0.8, 1.0))
    for duration in [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9]:
        schedule.observe(duration)
    # median (5th of 10) is 1.4, p80 is 1.7, slowest 1.9
    assert schedule.next_delay(0.0) == pytest.approx(1.4)
    assert schedule.next_delay(1.4, last_gap=1.4) == pytest.approx(0.3)
    assert schedule.next_delay(1.7, last_gap=0.3) == pytest.approx(0.2)
    # beyond every duration seen: from a tenth of the median, growing
    assert schedule.next_delay(1.9, last_gap=0.2) == pytest.approx(0.2 * 1.5)
    assert schedule.next_delay(1.9, last_gap=0.01) == pytest.approx(0.15)  # upper median 1.5


def test_poll_schedule_forgets_old_durations() -> None:
    schedule = PollSchedule(window=4, quantiles=(0.5,))
    for duration in [10.0, 10.0, 10.0, 10.0, 1.0, 1.0, 1.0, 1.0]:
        schedule.observe(duration)
    assert schedule.next_delay(0.0) == pytest.approx(1.0)


def test_the_rate_long_after_a_429_is_the_ceiling_not_an_overflow() -> None:
    # 1.05 ** (seconds / 10) overflows a float some 40 hours after the last 429: rate() raised
    # OverflowError into the next submit, and a long, slow run died as "a bug" (exit 70).
    clock = FakeTime()
    pacer = SubmitPacer(60, clock=clock)
    pacer.rate_limited(1.0)
    assert pacer.rate() < pacer.ceiling
    for later in (3600.0, 150_000.0, 1e12):
        clock.now = later
        assert pacer.rate() == pytest.approx(pacer.ceiling)
    clock.now = 2.0  # (just after the pause: still well under the ceiling)
    assert pacer.rate() < pacer.ceiling
