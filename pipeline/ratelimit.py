"""Rate control: run at the provider's real limits, and never into a 429 storm.

Every attempt passes :meth:`RateBudget.acquire` and reports back through :meth:`RateBudget.settle`.

**Limits in force.** The configured ``rpm``/``tpm`` are ceilings. The limits the server states in its
``x-ratelimit-limit-*`` headers (see :func:`pipeline.headers.rate_limit_info`) are learned from every
reply and lower them; with nothing configured, the learned limits are the limits.

**The first wave.** Until a reply has said what the limits are (or a reply came without any rate-limit
headers: the server does not send them), at most :data:`FIRST_WAVE` requests are in flight — even
with ``rpm`` configured, since it may be wrong. Then the run goes straight to the limit in force,
steered by the server's count (below), so a run whose limit is not known yet opens with a handful of
requests, not ``concurrency`` of them into a limit of unknown burst.

**Requests and tokens** each go through a :class:`TokenBucket` refilled at the limit in force and
holding :data:`BURST_S` seconds' worth (one holding a whole minute would fire a minute's budget at
once). Once the server has sent its ``x-ratelimit-remaining-*`` count, a bucket refills at the full
limit and the count (below) is the safety margin; a limit no count steers by is paced at
:data:`BLIND_SHARE` of it. A FIFO lock in front keeps arrival order.

**Tokens** can be refunded: a request reserves its prompt tokens plus its *expected* output (a
running mean of real replies, at most the job's maximum) × n, and :meth:`RateBudget.settle` swaps
that for the reply's real usage. A request larger than the whole minute's limit is a row error, not
an endless retry.

**The server's own count** guards both: a reply's ``x-ratelimit-remaining-*`` says what the server
had left just after it admitted that request, which is about when the request was sent (a server
admits before it generates). The refill since then is added, whatever was sent after it (at its
maximum cost, to err safe) is taken off, and nothing is sent unless the server should still have
:data:`HEADROOM_S` seconds' worth of refill to spare after it (doubled by each wave of 429s that
comes all the same, up to :data:`MAX_HEADROOM_S`). That margin is a *level*, not a share of the
rate: it costs no throughput, it absorbs the timing error of the estimate, and it makes no
difference whether the server enforces "N per rolling minute" (a minute's burst) or "N/60 each
second" (a second's burst). This holds whether the server charges ``max_tokens`` up front or real
usage afterwards.

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

from .errors import RowRejected
from .pacing import Pacer
from .tokens import ASSUMED_OUTPUT_TOKENS

BURST_S = 1.0
BLIND_SHARE = 0.99  # of a limit that no server count steers by
HEADROOM_S = 0.1  # the server's count must show this long's refill to spare after a request ...
MAX_HEADROOM_S = 1.0  # ... doubled by every 429 that still came (up to this, and half the bucket)
WIDEN_INTERVAL_S = 1.0  # at most one doubling per this long (one wave of 429s)
FIRST_WAVE = 4  # requests in flight until a reply has said what the limits are
MIN_IN_FLIGHT = 4
TOLERANCE_S = 1e-6  # a shorter wait is rounding, not a wait (it would never end on a coarse clock)
LATENCY_WEIGHT = 0.1  # of each new latency in the running mean
OUTPUT_WEIGHT = 0.05  # of each new reply's length in the running mean of output tokens


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

    def used(self) -> float:
        """How much was taken beyond the refill over the recent past (capacity − level, ≥ 0 here)."""
        self._refill()
        return self.capacity - self.level

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
        self.heard = False  # the server has stated limits, or answered a request ok without stating any
        self._remaining: dict[str, tuple[float, float, float]] = {}  # kind -> (left, at, sent through it)
        self._most: dict[str, float] = {}  # kind -> the most the server was seen to hold (left + cost)
        self.headroom_s = HEADROOM_S
        self._widened_at = -math.inf

    def observe(self, info: Mapping[str, float] | None, ticket: Ticket, ok: bool) -> bool:
        """Take in an attempt's rate-limit headers (None: it had none); True when what paces the run
        changed: a stated limit, or a count stated for the first time."""
        self.heard = self.heard or ok or bool(info)
        if not info:
            return False
        before = (self.limit_requests, self.limit_tokens, len(self._remaining))
        self.limit_requests = info.get("limit_requests", self.limit_requests)
        self.limit_tokens = info.get("limit_tokens", self.limit_tokens)
        own = {"requests": (ticket.sent_requests, 1.0), "tokens": (ticket.sent_tokens, ticket.most_tokens)}
        for kind, (sent_before, cost) in own.items():
            if f"remaining_{kind}" not in info:
                continue
            left = info[f"remaining_{kind}"]
            self._most[kind] = max(self._most.get(kind, 0.0), left + cost)
            known = self._remaining.get(kind)
            if known is None or ticket.started >= known[1]:  # the latest sent is the latest word
                self._remaining[kind] = (left, ticket.started, sent_before + cost)
        return before != (self.limit_requests, self.limit_tokens, len(self._remaining))

    def widen(self, now: float) -> None:
        """A 429 came all the same (the estimate erred: a loaded machine, replies out of order): keep
        more to spare, once per wave of 429s. A level, not a share of the rate: it costs no throughput."""
        if now - self._widened_at >= WIDEN_INTERVAL_S:
            self.headroom_s = min(2 * self.headroom_s, MAX_HEADROOM_S)
            self._widened_at = now

    def counts(self, kind: str) -> bool:
        """Whether the server has said how much of ``kind`` it had left."""
        return kind in self._remaining

    def wait_s(self, kind: str, cost: float, limit: float | None, sent_total: float, now: float,
               used: float = 0.0) -> float:
        """How long until the server should have ``cost`` to spare, and headroom (0 when unknown).

        Two estimates of what it has now, the lower wins: its last count, plus the refill since, minus
        what was sent after; and the most it was seen to hold minus ``used``, what our own bucket (at
        the same rate) says we took beyond the refill lately — the count alone would credit the refill
        of a time the server was already full.
        """
        if kind not in self._remaining or not limit:
            return 0.0
        left, at, through = self._remaining[kind]
        per_second = limit / 60.0
        need = min(cost, limit) + min(self.headroom_s * per_second, max(self._most[kind] - cost, 0.0) / 2)
        available = min(max(self._most[kind], need) - used,
                        left + (now - at) * per_second - (sent_total - through))
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
        self._requests: TokenBucket | None = None
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
        self.requests_per_minute, self.tokens_per_minute = rpm, tpm
        self._requests = self._paced(self._requests, rpm, "requests")
        self._tokens = self._paced(self._tokens, tpm, "tokens")

    def _paced(self, bucket: TokenBucket | None, limit: float | None, kind: str) -> TokenBucket | None:
        """The bucket for ``limit``: the full limit when the server's count steers, else BLIND_SHARE."""
        if not limit:
            return None
        rate = limit * (1.0 if self.server.counts(kind) else BLIND_SHARE)
        if bucket is None:
            return TokenBucket(rate, self._clock)
        bucket.set_rate(rate)
        return bucket

    def in_flight_cap(self) -> int:
        """Requests worth having in flight: the first wave until the server is heard, then twice what
        the request limit can use over the latency."""
        if not self.server.heard:
            return min(FIRST_WAVE, self.concurrency)
        if not self.requests_per_minute or self.latency_s is None:
            return self.concurrency
        useful = 2 * self.requests_per_minute / 60.0 * self.latency_s
        return max(MIN_IN_FLIGHT, min(self.concurrency, math.ceil(useful)))

    # -- admission ---------------------------------------------------------------------------
    def pause(self, seconds: float) -> None:
        """A 429: hold back every request for ``seconds`` from now, then pace (see module doc)."""
        self._resume_at = max(self._resume_at, self._clock() + seconds)
        self.pacer.cut()
        self.server.widen(self._clock())
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
                and self.server.heard and self.in_flight < self.concurrency and self._resume_at <= self._clock())

    async def _admit(self, most: float, reserve: float) -> None:
        async with self._lock:
            while True:
                while (wait_s := self._wait_s(most)) > TOLERANCE_S:
                    await self._sleep(wait_s)
                if self.in_flight < self.in_flight_cap():
                    break
                self._freed.clear()  # a reply frees a place, and may bring news: look again
                await self._freed.wait()
            for bucket, amount in ((self._requests, 1), (self._tokens, reserve)):
                if bucket is not None:
                    while (wait_s := bucket.wait_s(amount)) > TOLERANCE_S:
                        await self._sleep(wait_s)
                    bucket.take(amount)
            if self._lease is not None:
                await self._lease.take(reserve, self._sleep)

    def _wait_s(self, most: float) -> float:
        now = self._clock()
        return max(self._resume_at - now, self.pacer.wait_s(),
                   self.server.wait_s("requests", 1, self.requests_per_minute, self.sent_requests, now,
                                      self._requests.used() if self._requests is not None else 0.0),
                   self.server.wait_s("tokens", most, self.tokens_per_minute, self.sent_tokens, now,
                                      self._tokens.used() if self._tokens is not None else 0.0))

    def settle(self, ticket: Ticket, *, ok: bool, rate_info: Mapping[str, float] | None = None,
               used_tokens: int | None = None, output_tokens_per_choice: float | None = None) -> None:
        """An admitted attempt ended: learn from its headers, latency and usage; refund or charge."""
        now = self._clock()
        self.in_flight -= 1
        self._freed.set()
        if self.server.observe(rate_info, ticket, ok):
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
