"""The per-model limiter: pacing under rpm/tpm, AIMD on 429, and announcing waits (no wall clock)."""

from __future__ import annotations

import asyncio

import pytest

from mva_dagster.llm.limits import ModelLimiter
from mva_dagster.llm.registry import load_registry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limits_come_from_the_registry() -> None:
    entry = load_registry().resolve("gemini-2.5-flash")
    limiter = ModelLimiter.for_entry(entry)
    assert limiter.max_concurrency == min(entry.max_concurrency, entry.rpm)
    assert limiter.rpm == entry.rpm - 1  # LiteLLM admits rpm - 1 per minute (measured)
    assert limiter.tpm == entry.tpm
    assert ModelLimiter.for_entry(entry, concurrency=2).max_concurrency == 2  # an override only lowers
    local = ModelLimiter.for_entry(load_registry().resolve("smollm2-135m"))
    assert local.max_concurrency == 1


def test_requests_start_evenly_and_never_exceed_rpm_in_a_wall_clock_minute() -> None:
    clock = FakeClock()
    clock.now = 60 * 1000.0  # the start of a minute
    limiter = ModelLimiter("m", concurrency=100, rpm=59, tpm=10**9, clock=clock, wall=clock)

    async def scenario() -> int:
        started = 0
        while clock.now < 60 * 1000.0 + 59.9:  # one minute, a request whenever one may start
            reason, wait = limiter._blocked(clock.now, 1)
            if reason is None:
                await limiter.release(await limiter.acquire(1))
                started += 1
            else:
                assert reason in ("pace", "rpm") and wait is not None
                clock.now += min(wait, 0.25)
        return started

    started = asyncio.run(scenario())
    assert started == 59  # rpm - 1 of the registry's 60, what LiteLLM admits per minute (measured)
    # A burst is small: at most a tenth of the minute's requests at once.
    assert limiter.capacity == 9


def test_the_minute_cap_counts_the_proxys_retries_and_real_tokens() -> None:
    clock = FakeClock()
    clock.now = 60 * 2000.0 + 1
    limiter = ModelLimiter("m", concurrency=10, rpm=12, tpm=1000, clock=clock, wall=clock)

    async def scenario() -> None:
        ticket = await limiter.acquire(100)
        await limiter.release(ticket, tokens_used=900, extra_requests=10)  # ten retries inside the proxy
        clock.now += 55  # the bucket has refilled, the minute is the same
        assert limiter._blocked(clock.now, 200) == ("tpm", pytest.approx(4.05))  # 900 + 200 > 1000
        assert limiter._blocked(clock.now, 50) == (None, None)
        await limiter.release(await limiter.acquire(50))
        assert limiter._blocked(clock.now, 1) == ("rpm", pytest.approx(4.05))  # 1 + 10 + 1 = 12 this minute
        clock.now += 5  # a new minute
        assert limiter._blocked(clock.now, 200) == (None, None)

    asyncio.run(scenario())


def test_a_429_halves_concurrency_once_per_pause_and_successes_grow_it_back() -> None:
    clock = FakeClock()
    limiter = ModelLimiter("m", concurrency=16, rpm=1000, tpm=10**9, clock=clock, wall=clock)

    async def scenario() -> None:
        assert await limiter.rate_limited(2.0) == 2.0
        assert limiter.limit == 8
        await limiter.rate_limited(2.0)  # the same storm, reported by another call in flight
        assert limiter.limit == 8 and limiter.stats.rate_limited == 2 and limiter.stats.decreases == 1
        assert limiter._blocked(clock.now, 1)[0] == "pause"
        clock.now += 2.5
        await limiter.rate_limited(None)  # no Retry-After: a default pause
        assert limiter.limit == 4 and limiter.paused_until > clock.now
        for _ in range(40):
            await limiter.succeeded()
        assert 8 < limiter.limit <= 16
        for _ in range(400):
            await limiter.succeeded()
        assert limiter.limit == 16

    asyncio.run(scenario())


def test_concurrency_admits_the_next_call_when_one_is_released() -> None:
    limiter = ModelLimiter("m", concurrency=1, rpm=1000, tpm=10**9)

    async def scenario() -> None:
        first = await limiter.acquire(1)
        waiting = asyncio.create_task(limiter.acquire(1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not waiting.done() and limiter.queued == 1
        await limiter.release(first)
        second = await asyncio.wait_for(waiting, timeout=5)
        assert limiter.in_flight == 1 and second.tokens == 1

    asyncio.run(scenario())


def test_a_long_wait_is_announced_with_its_reason() -> None:
    clock = FakeClock()
    lines: list[str] = []
    limiter = ModelLimiter("gemini-2.5-flash", concurrency=4, rpm=1000, tpm=10**9, report=lines.append,
                           clock=clock, wall=clock)

    async def scenario() -> None:
        await limiter.rate_limited(30.0)
        waiting = asyncio.create_task(limiter.acquire(1))
        await asyncio.sleep(0.05)
        assert lines and "rate limit (HTTP 429)" in lines[0] and "30.0s" in lines[0]
        assert "paused" in limiter.describe()
        clock.now += 31
        await limiter.succeeded()  # any state change wakes the waiters, who see the pause is over
        await asyncio.wait_for(waiting, timeout=5)

    asyncio.run(scenario())
