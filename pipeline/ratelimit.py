"""Rate control: run just under the provider's real limits, and never into a 429 storm.

Every attempt passes :meth:`RateBudget.acquire` and reports back through :meth:`RateBudget.settle`.

**Limits in force.** The configured ``rpm``/``tpm`` are ceilings. The limits the server states in its
``x-ratelimit-limit-*`` headers (see :func:`pipeline.headers.rate_limit_info`) are learned from every
reply and lower them; with nothing configured, the learned limits are the limits. A run paces at
:data:`SAFETY` (97%) of the limits in force.

**Requests** go through aiolimiter's leaky bucket, holding :data:`BURST_S` seconds' worth (a fresh
``AsyncLimiter(rpm, 60)`` would fire a whole minute's budget at once), rebuilt when the limit
changes. Its waiters are served smallest-first, so a FIFO lock in front keeps arrival order.

**Tokens** go through :class:`TokenBucket`, which — unlike aiolimiter — can refund: a request
reserves its prompt tokens plus its *expected* output (a running mean of real replies, at most the
job's maximum) × n, and :meth:`RateBudget.settle` swaps that for the reply's real usage. A request
larger than the whole minute's limit is a row error, not an endless retry.

**The server's own count** guards both: a reply's ``x-ratelimit-remaining-*`` says what the server
had left; what was sent since that request went out (at its maximum cost, to err safe) is taken off,
the refill since added, and nothing is sent that the server would refuse. This holds whether the
server charges ``max_tokens`` up front or real usage afterwards.

**Latency.** In flight are at most as many requests as the limits can use over the current
latency (twice the rate × mean latency, at least :data:`MIN_IN_FLIGHT`), so a server that slows down
is not flooded with requests that only queue there.

**429s** slow the whole run: :meth:`RateBudget.pause` holds back every request until the server's
retry-after has passed, and a :class:`~pipeline.pacing.Pacer` then spaces requests at half the rate
that was getting through, growing again with every ok reply (AIMD on the rate).

**A shared budget.** Given a :class:`Lease`, the budget takes its requests and tokens from there
instead of its own buckets: several processes (the workers of a Dask cluster, see
:mod:`pipeline.dask`) then share one limit. 429 pauses, learned limits and token refunds are passed
on to the lease, so a 429 in one process slows them all.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Protocol

from aiolimiter import AsyncLimiter

from .errors import RowRejected
from .pacing import Pacer
from .tokens import ASSUMED_OUTPUT_TOKENS

BURST_S = 1.0
SAFETY = 0.97
MIN_IN_FLIGHT = 4
LATENCY_WEIGHT = 0.1  # of each new latency in the running mean
OUTPUT_WEIGHT = 0.05  # of each new reply's length in the running mean of output tokens


def bucket(per_minute: float, minimum: float = 1.0) -> AsyncLimiter:
    """A leaky bucket refilling ``per_minute`` that holds ``BURST_S`` seconds' worth (≥ minimum)."""
    capacity = max(per_minute * BURST_S / 60.0, minimum)
    return AsyncLimiter(capacity, capacity * 60.0 / per_minute)


class TokenBucket:
    """Continuously refilled tokens, holding :data:`BURST_S` seconds' worth; refunds allowed.

    A request larger than the bucket waits for a full bucket and leaves it in debt.
    """

    def __init__(self, per_minute: float, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.set_rate(per_minute)
        self.level = self.capacity
        self._at = clock()

    def set_rate(self, per_minute: float) -> None:
        self.per_second = per_minute / 60.0
        self.capacity = max(self.per_second * BURST_S, 1.0)

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._at) * self.per_second)
        self._at = now

    def wait_s(self, amount: float) -> float:
        self._refill()
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.per_second

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def give(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def drain(self, until: float) -> None:
        """Empty the bucket, with no refill before the clock reads ``until`` (a 429's pause)."""
        self._refill()
        self.level = min(self.level, 0.0)
        self._at = max(self._at, until)


class Lease(Protocol):
    """Where a :class:`RateBudget` takes its capacity when it shares a limit with other processes."""

    async def take(self, tokens: float, sleep: Callable[[float], Awaitable[object]]) -> None:
        """Wait (with ``sleep``) until one request and ``tokens`` tokens are granted; use them."""

    def adjust(self, tokens: float) -> None:
        """A reply's real usage differed from its reservation: give back (> 0) or charge (< 0) tokens."""

    def pause(self, seconds: float) -> None:
        """A 429: hold back every process sharing the limit for ``seconds``."""

    def learned(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        """The limits a server stated in its headers."""


@dataclass(slots=True)
class Ticket:
    """One admitted attempt: what it reserved, and the totals sent when it went out."""

    tokens: float
    most_tokens: float
    sent_requests: int
    sent_tokens: float
    started: float


class ServerView:
    """The server's last word on what it had left, and the limits it stated."""

    def __init__(self) -> None:
        self.limit_requests: float | None = None
        self.limit_tokens: float | None = None
        self._remaining: dict[str, tuple[float, float, float]] = {}  # kind -> (left, at, sent before)

    def observe(self, info: Mapping[str, float], ticket: Ticket, now: float) -> bool:
        """Take in a reply's headers; True when a stated limit changed."""
        before = (self.limit_requests, self.limit_tokens)
        self.limit_requests = info.get("limit_requests", self.limit_requests)
        self.limit_tokens = info.get("limit_tokens", self.limit_tokens)
        for kind, sent in (("requests", ticket.sent_requests), ("tokens", ticket.sent_tokens)):
            if f"remaining_{kind}" in info:
                self._remaining[kind] = (info[f"remaining_{kind}"], now, sent)
        return before != (self.limit_requests, self.limit_tokens)

    def wait_s(self, kind: str, cost: float, limit: float | None, sent_total: float, now: float) -> float:
        """How long until the server should have ``cost`` to spare (0 when unknown)."""
        if kind not in self._remaining or not limit:
            return 0.0
        left, at, sent_before = self._remaining[kind]
        per_second = limit / 60.0
        available = min(limit, left + (now - at) * per_second) - (sent_total - sent_before)
        need = min(cost, limit)
        return 0.0 if available >= need else (need - available) / per_second


class RateBudget:
    """Gate every attempt through :meth:`acquire`, and report it with :meth:`settle`."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[object]],
        concurrency: int = 1_000_000,
        lease: Lease | None = None,
    ) -> None:
        self.configured = (requests_per_minute, tokens_per_minute)
        self.requests_per_minute: float | None = None
        self.tokens_per_minute: float | None = None
        self._requests: AsyncLimiter | None = None
        self._tokens: TokenBucket | None = None
        self._clock, self._sleep = clock, sleep
        self._resume_at = 0.0
        self._lock = asyncio.Lock()
        self.pacer = Pacer(clock)
        self.server = ServerView()
        self.concurrency = concurrency
        self.in_flight = 0
        self._freed = asyncio.Event()
        self.latency_s: float | None = None
        self.output_tokens: float | None = None  # running mean per choice
        self.sent_requests = 0
        self.sent_tokens = 0.0
        self._lease = lease
        self._apply_limits()

    # -- limits ------------------------------------------------------------------------------
    def _apply_limits(self) -> None:
        rpm = _lowest(self.configured[0], self.server.limit_requests)
        tpm = _lowest(self.configured[1], self.server.limit_tokens)
        if self._lease is not None:  # the lease paces; keep the limits for the in-flight cap
            if (rpm, tpm) != (self.requests_per_minute, self.tokens_per_minute):
                self._lease.learned(self.server.limit_requests, self.server.limit_tokens)
            self.requests_per_minute, self.tokens_per_minute = rpm, tpm
            return
        if rpm != self.requests_per_minute:
            self.requests_per_minute = rpm
            self._requests = bucket(rpm * SAFETY) if rpm else None
        if tpm != self.tokens_per_minute:
            self.tokens_per_minute = tpm
            if not tpm:
                self._tokens = None
            elif self._tokens is None:
                self._tokens = TokenBucket(tpm * SAFETY, self._clock)
            else:
                self._tokens.set_rate(tpm * SAFETY)

    def in_flight_cap(self) -> int:
        """Requests worth having in flight: twice what the request limit can use over the latency."""
        if not self.requests_per_minute or self.latency_s is None:
            return self.concurrency
        useful = 2 * self.requests_per_minute / 60.0 * self.latency_s
        return max(MIN_IN_FLIGHT, min(self.concurrency, math.ceil(useful)))

    # -- admission ---------------------------------------------------------------------------
    def pause(self, seconds: float) -> None:
        """A 429: hold back every request for ``seconds`` from now, then pace (see module doc)."""
        self._resume_at = max(self._resume_at, self._clock() + seconds)
        self.pacer.cut()
        if self._lease is not None:
            self._lease.pause(seconds)

    async def acquire(self, prompt_tokens: int, max_output_tokens: int | None, choices: int) -> Ticket:
        """Wait until one request fits every limit; reserve it."""
        most = prompt_tokens + (max_output_tokens if max_output_tokens is not None else ASSUMED_OUTPUT_TOKENS) * choices
        expected_output = self.output_tokens if self.output_tokens is not None else most - prompt_tokens
        reserve = prompt_tokens + min(most - prompt_tokens, expected_output * choices)
        if self.tokens_per_minute and prompt_tokens + (max_output_tokens or 0) * choices > self.tokens_per_minute:
            raise RowRejected(
                f"request needs about {most} tokens, more than the whole tokens-per-minute limit "
                f"({self.tokens_per_minute:g}); shorten the prompt or lower max_completion_tokens",
                error_type="exceeds_tpm_limit")
        if not self._idle():
            await self._admit(most, reserve)
        ticket = Ticket(reserve, most, self.sent_requests, self.sent_tokens, self._clock())
        self.in_flight += 1
        self.sent_requests += 1
        self.sent_tokens += most
        return ticket

    def _idle(self) -> bool:
        """Nothing to wait for: no limit known, no pause or pacing, room in flight (the fast path)."""
        return (self._requests is None and self._tokens is None and self._lease is None and self.pacer.rate is None
                and self.in_flight < self.concurrency and self._resume_at <= self._clock())

    async def _admit(self, most: float, reserve: float) -> None:
        async with self._lock:
            while (wait_s := self._wait_s(most)) > 0:
                await self._sleep(wait_s)
            while self.in_flight >= self.in_flight_cap():
                self._freed.clear()
                await self._freed.wait()
            if self._requests is not None:
                await self._requests.acquire(1)
            if self._tokens is not None:
                while (wait_s := self._tokens.wait_s(reserve)) > 0:
                    await self._sleep(wait_s)
                self._tokens.take(reserve)
            if self._lease is not None:
                await self._lease.take(reserve, self._sleep)

    def _wait_s(self, most: float) -> float:
        now = self._clock()
        return max(self._resume_at - now, self.pacer.wait_s(),
                   self.server.wait_s("requests", 1, self.requests_per_minute, self.sent_requests, now),
                   self.server.wait_s("tokens", most, self.tokens_per_minute, self.sent_tokens, now))

    def settle(self, ticket: Ticket, *, ok: bool, rate_info: Mapping[str, float] | None = None,
               used_tokens: int | None = None, output_tokens_per_choice: float | None = None) -> None:
        """An admitted attempt ended: learn from its headers, latency and usage; refund or charge."""
        now = self._clock()
        self.in_flight -= 1
        self._freed.set()
        if rate_info and self.server.observe(rate_info, ticket, now):
            self._apply_limits()
        if not ok:
            return
        self.pacer.ok()
        latency = now - ticket.started
        self.latency_s = latency if self.latency_s is None else (
            (1 - LATENCY_WEIGHT) * self.latency_s + LATENCY_WEIGHT * latency)
        if output_tokens_per_choice is not None:
            self.output_tokens = output_tokens_per_choice if self.output_tokens is None else (
                (1 - OUTPUT_WEIGHT) * self.output_tokens + OUTPUT_WEIGHT * output_tokens_per_choice)
        if self._lease is not None and used_tokens is not None:
            self._lease.adjust(ticket.tokens - used_tokens)
        if self._tokens is not None and used_tokens is not None:
            difference = ticket.tokens - used_tokens
            if difference > 0:
                self._tokens.give(difference)
            else:
                self._tokens.take(-difference)

    def describe(self) -> str:
        """The limits in force, for progress lines."""
        def limit(value: float | None, configured: float | None) -> str:
            if not value:
                return "none"
            source = "learned" if configured is None or value < configured else "set"
            return f"{value:,.0f} ({source})"
        return (f"limits rpm {limit(self.requests_per_minute, self.configured[0])}, "
                f"tpm {limit(self.tokens_per_minute, self.configured[1])}")


def _lowest(configured: float | None, learned: float | None) -> float | None:
    known = [v for v in (configured, learned) if v]
    return min(known) if known else None
