"""Client-side admission per model: stay under the registry's limits, and slow down together on 429.

The proxy enforces rpm/tpm too, as a fence: over the limit it answers 429 with a 60 s Retry-After
(left to itself, LiteLLM would hold the request for that minute, which from outside looks exactly
like a hang). So the client paces itself below the registry's limits and the fence is only reached
when something else shares the quota:

* requests start evenly, ``rpm - 1`` per minute, from a token bucket that allows a small burst;
* no more than ``rpm - 1`` requests and ``tpm`` tokens fall in one wall-clock minute - LiteLLM's
  usage-based routing counts per UTC minute (``%H-%M`` buckets), and it admitted ``rpm - 1``
  requests in a minute when measured;
* at most ``client_concurrency`` calls are in flight.

When a 429 still arrives (the provider's own quota, a proxy key's limit, another client), every
call of the model waits out the ``Retry-After`` together and the number of calls in flight is
halved (AIMD: it grows back by one per window of successes). Waits of a second or more are
announced through ``report`` - a user must never mistake a wait for a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mva_dagster.llm.registry import ModelEntry

Report = Callable[[str], None]
Clock = Callable[[], float]

MINUTE_S = 60.0
DEFAULT_RATE_LIMIT_WAIT_S = 2.0  # a 429 without Retry-After
ANNOUNCE_EVERY_S = 5.0
ANNOUNCE_MIN_WAIT_S = 1.0
PACE_ANNOUNCE_EVERY_S = 60.0  # even pacing is the normal cadence of a rate-limited run: said once a minute
BURST_SHARE = 6  # the bucket holds a tenth of a minute's requests (at most the concurrency)


@dataclass
class Ticket:
    """One admitted request: when it started, in which minute, how many tokens it is counted for."""

    started: float
    minute: int
    tokens: int
    waited_s: float = 0.0


@dataclass
class LimiterStats:
    admitted: int = 0
    rate_limited: int = 0
    cooldowns: int = 0
    decreases: int = 0
    waited_s: float = 0.0
    lowest_limit: float = 0.0
    waits_by_reason: dict[str, float] = field(default_factory=dict)


class ModelLimiter:
    """Admission control for one model within one process (one analysis run).

    ``clock`` measures waits (monotonic); ``wall`` places requests in minutes (the proxy's clock).
    """

    def __init__(
        self,
        model: str,
        *,
        concurrency: int,
        rpm: int,
        tpm: int,
        report: Report | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.model = model
        self.max_concurrency = max(1, concurrency)
        self.rpm = max(1, rpm)
        self.tpm = max(1, tpm)
        self.limit = float(self.max_concurrency)
        self.in_flight = 0
        self.queued = 0
        self.paused_until = 0.0
        self.pause_reason = ""
        self.stats = LimiterStats(lowest_limit=self.limit)
        self.capacity = float(max(1, min(self.max_concurrency, self.rpm // BURST_SHARE)))
        self._report = report
        self._clock = clock
        self._wall = wall
        self._bucket = self.capacity
        self._bucket_at = clock()
        self._minutes: dict[int, list[int]] = {}  # wall-clock minute -> [requests, tokens]
        self._last_decrease = -1e9
        self._announced: dict[str, float] = {}
        self._cond = asyncio.Condition()

    @classmethod
    def for_entry(cls, entry: ModelEntry, *, concurrency: int | None = None, report: Report | None = None,
                  clock: Clock = time.monotonic, wall: Clock = time.time) -> ModelLimiter:
        """Limits from the registry; ``concurrency`` (e.g. ``$MVA_MAX_CONCURRENCY``) can only lower them."""
        cap = entry.client_concurrency if concurrency is None else min(concurrency, entry.client_concurrency)
        return cls(entry.name, concurrency=cap, rpm=entry.client_rpm, tpm=entry.tpm, report=report,
                   clock=clock, wall=wall)

    # -- admission -----------------------------------------------------------------------------

    async def acquire(self, tokens: int) -> Ticket:
        """Wait until one more request of ``tokens`` fits every limit, then count it in."""
        began = self._clock()
        self.queued += 1
        try:
            async with self._cond:
                while True:
                    now = self._clock()
                    reason, wait = self._blocked(now, tokens)
                    if reason is None:
                        minute = self._minute()
                        ticket = Ticket(started=now, minute=minute, tokens=max(0, tokens), waited_s=now - began)
                        self._bucket -= 1
                        counts = self._minutes.setdefault(minute, [0, 0])
                        counts[0] += 1
                        counts[1] += ticket.tokens
                        self.in_flight += 1
                        self.stats.admitted += 1
                        self.stats.waited_s += ticket.waited_s
                        return ticket
                    if wait is not None and wait >= ANNOUNCE_MIN_WAIT_S:
                        self._announce(reason, wait, now)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._cond.wait(), timeout=wait)
                    self.stats.waits_by_reason[reason] = (
                        self.stats.waits_by_reason.get(reason, 0.0) + self._clock() - now
                    )
        finally:
            self.queued -= 1

    async def release(self, ticket: Ticket, *, tokens_used: int | None = None, extra_requests: int = 0) -> None:
        """The request is over: free its slot; count its real tokens and the proxy's own retries."""
        async with self._cond:
            self.in_flight = max(0, self.in_flight - 1)
            counts = self._minutes.setdefault(self._minute(), [0, 0])
            if tokens_used is not None and tokens_used > ticket.tokens:
                counts[1] += tokens_used - ticket.tokens  # the proxy counts tokens when a call ends
                ticket.tokens = tokens_used
            counts[0] += max(0, extra_requests)  # retries inside the proxy use its rpm too
            self._bucket -= max(0, extra_requests)
            self._cond.notify_all()

    # -- feedback ------------------------------------------------------------------------------

    async def succeeded(self) -> None:
        """Additive increase: one more call in flight per ``limit`` successes."""
        async with self._cond:
            self.limit = min(float(self.max_concurrency), self.limit + 1.0 / max(self.limit, 1.0))
            self._cond.notify_all()

    async def rate_limited(self, retry_after: float | None, *, cooldown: bool = False) -> float:
        """A 429: every call of this model pauses for ``retry_after``; in-flight calls are halved.

        Returns the pause in seconds. Calls that were already in flight when the first 429 came
        back report the same event, so the cut happens at most once per pause.
        """
        async with self._cond:
            now = self._clock()
            wait = retry_after if retry_after is not None and retry_after > 0 else DEFAULT_RATE_LIMIT_WAIT_S
            if cooldown:
                self.stats.cooldowns += 1
            else:
                self.stats.rate_limited += 1
            if now - self._last_decrease >= max(1.0, wait):
                self.limit = max(1.0, self.limit / 2)
                self._last_decrease = now
                self.stats.decreases += 1
                self.stats.lowest_limit = min(self.stats.lowest_limit, self.limit)
            if now + wait > self.paused_until:
                self.paused_until = now + wait
                self.pause_reason = (
                    "the proxy's circuit breaker (cooldown after repeated failures)" if cooldown
                    else "a rate limit (HTTP 429)"
                )
            self._cond.notify_all()
            return wait

    # -- state ---------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line of state for progress output."""
        now = self._clock()
        parts = [f"{self.in_flight} in flight (limit {int(self.limit)}/{self.max_concurrency})"]
        if self.queued:
            parts.append(f"{self.queued} queued")
        if now < self.paused_until:
            parts.append(f"paused {self.paused_until - now:.0f}s more for {self.pause_reason}")
        requests = self._minutes.get(self._minute(), [0, 0])[0]
        parts.append(f"{requests}/{self.rpm} requests this minute")
        if self.queued and now >= self.paused_until:
            reason, wait = self._blocked(now, 0)
            if reason in ("pace", "rpm", "tpm") and wait is not None:
                parts.append(f"next start in {wait:.0f}s ({'token' if reason == 'tpm' else 'rate'} limit)")
        return f"{self.model}: " + ", ".join(parts)

    def _minute(self) -> int:
        return int(self._wall() // MINUTE_S)

    def _to_next_minute(self) -> float:
        return MINUTE_S - self._wall() % MINUTE_S + 0.05

    def _blocked(self, now: float, tokens: int) -> tuple[str | None, float | None]:
        """(why a new request must wait, for how long at most; None = until something changes)."""
        if now < self.paused_until:
            return "pause", self.paused_until - now
        if self.in_flight >= int(self.limit):
            return "concurrency", None
        rate = self.rpm / MINUTE_S
        self._bucket = min(self.capacity, self._bucket + (now - self._bucket_at) * rate)
        self._bucket_at = now
        if self._bucket < 1 - 1e-9:
            return "pace", max(0.01, (1 - self._bucket) / rate)
        minute = self._minute()
        for old in [m for m in self._minutes if m < minute - 1]:
            del self._minutes[old]
        requests, used = self._minutes.get(minute, [0, 0])
        if requests >= self.rpm:
            return "rpm", self._to_next_minute()
        if used and used + tokens > self.tpm:
            return "tpm", self._to_next_minute()
        return None, None

    def _announce(self, reason: str, wait: float, now: float) -> None:
        every = PACE_ANNOUNCE_EVERY_S if reason == "pace" else ANNOUNCE_EVERY_S
        if self._report is None or now - self._announced.get(reason, -1e9) < every:
            return
        self._announced[reason] = now
        what = {
            "pace": f"pacing requests at {self.rpm} per minute (the registry's rpm - 1)",
            "pause": f"waiting {wait:.1f}s on {self.pause_reason}",
            "rpm": f"waiting {wait:.1f}s on the rate limit ({self.rpm} requests per minute)",
            "tpm": f"waiting {wait:.1f}s on the token limit ({self.tpm} tokens per minute)",
        }[reason]
        self._report(f"  [{self.model}] {what}; {self.queued} call(s) waiting, {self.in_flight} in flight "
                     f"(limit {int(self.limit)}/{self.max_concurrency})")
