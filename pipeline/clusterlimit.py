"""One rate limit, cost cap and progress count for many processes: a limiter and its leases.

A :class:`ClusterLimiter` lives in one place in the cluster (a ``distributed`` Actor on a worker,
see :mod:`pipeline.dask`); every process running part of the job holds a :class:`ClusterLease`,
which its :class:`~pipeline.ratelimit.RateBudget` takes requests and tokens from.

**Leasing.** The limiter keeps one bucket of requests and one of tokens, refilled at
:data:`SHARE` × the limits in force (configured ``rpm``/``tpm``, lowered by
what any server reply stated), each holding :data:`~pipeline.ratelimit.BURST_S` seconds' worth. A
lease hands out a small slice — at most :data:`SLICE_S` seconds' worth of the rate, and never more
than the bucket holds — so an idle process holds almost nothing and a busy one asks again soon.
What a process has not used within :data:`LEASE_TTL_S` goes back (so does everything on a 429 and
at the end), so leased capacity is never saved up into a burst. Tokens are reserved as the local
budget reserves them and adjusted when the reply's real usage is known. With no limit known, a
lease grants "unlimited" for :data:`LEASE_TTL_S`, after which the process asks again (a limit
learned meanwhile then applies everywhere).

**429s** anywhere pause every process: :meth:`ClusterLimiter.pause` grants nothing until the
server's retry-after has passed, empties the buckets, and halves the cluster's rate (at most once
a second), which then grows back linearly to the full rate over :data:`RECOVER_S` seconds.

**Cost.** With ``max_cost_usd`` the limiter is the one cost cap: a process reserves each request's
worst case (:meth:`ClusterLimiter.reserve_cost`) before sending it and settles it with the exact cost.

**Progress and stop.** Processes report their counts per part (:meth:`ClusterLimiter.report`); the
client reads the totals (:meth:`ClusterLimiter.totals`). A process that must stop the job (auth
failure, cost cap, Ctrl-C on the client) calls :meth:`ClusterLimiter.stop`; every process sees the
reason in its next report's answer.

The limiter's methods are plain and quick (an Actor runs them one at a time); the clock is
injectable, so tests drive it without a cluster.
"""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any, Awaitable, Callable

from .ratelimit import TokenBucket

SHARE = 0.97  # of the limits: the processes share no server count to steer by (see ratelimit)
SLICE_S = 0.25  # a lease holds at most this long's worth of the rate
LEASE_TTL_S = 1.0  # capacity unused this long after it was leased goes back
RECOVER_S = 10.0  # after a 429 the halved rate grows back to the full rate over this long
CUT_INTERVAL_S = 1.0  # at most one cut of the rate per this long (one wave of 429s)
MIN_FACTOR = 1 / 16
UNLIMITED = math.inf


class ClusterLimiter:
    """The cluster's one budget (see the module docstring). Plain methods, called one at a time."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None,
                 max_cost_usd: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.configured = (requests_per_minute, tokens_per_minute)
        self.learned_limits: list[float | None] = [None, None]
        self.limits: tuple[float | None, float | None] = (None, None)
        self._requests: TokenBucket | None = None
        self._tokens: TokenBucket | None = None
        self._resume_at = 0.0
        self._factor, self._factor_at, self._last_cut = 1.0, clock(), -math.inf
        self.cost_cap = Decimal(max_cost_usd) if max_cost_usd is not None else None
        self.spent_usd = Decimal(0)
        self.reserved_usd = Decimal(0)
        self.granted_requests = 0
        self.leases = 0  # lease calls answered (each one a round trip from a process)
        self.pauses = 0
        self.parts: dict[Any, dict] = {}
        self.stop_reason: str | None = None
        self._apply()

    # -- limits ------------------------------------------------------------------------------
    def _apply(self) -> None:
        self.limits = tuple(_lowest(c, l) for c, l in zip(self.configured, self.learned_limits))
        factor = self._current_factor()
        for index, name in ((0, "_requests"), (1, "_tokens")):
            limit, bucket = self.limits[index], getattr(self, name)
            if not limit:
                setattr(self, name, None)
            elif bucket is None:
                setattr(self, name, TokenBucket(limit * SHARE * factor, self._clock))
            else:
                bucket.set_rate(limit * SHARE * factor)

    def _current_factor(self) -> float:
        now = self._clock()
        if self._factor < 1.0 and now > self._factor_at:
            self._factor = min(1.0, self._factor + (now - self._factor_at) / RECOVER_S)
            self._factor_at = now
        return self._factor

    def learned(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        """A server stated its limits: the lowest seen applies to the whole cluster."""
        for index, value in enumerate((requests_per_minute, tokens_per_minute)):
            if value:
                self.learned_limits[index] = _lowest(self.learned_limits[index], value)
        self._apply()

    def pause(self, seconds: float) -> None:
        """A 429 somewhere: nothing is granted for ``seconds``; the rate halves, then recovers."""
        now = self._clock()
        self._resume_at = max(self._resume_at, now + seconds)
        self.pauses += 1
        if now - self._last_cut >= CUT_INTERVAL_S:
            self._last_cut = now
            self._factor = max(MIN_FACTOR, self._current_factor() / 2)
        self._factor_at = self._resume_at  # the rate grows back from the end of the pause
        for bucket in (self._requests, self._tokens):
            if bucket is not None:  # what the buckets held is spent: the server says so
                bucket.drain(self._resume_at)
        self._apply()

    # -- leases ------------------------------------------------------------------------------
    def lease(self, requests: int, tokens: float) -> tuple[float, float, float]:
        """Grant up to a slice of requests (when ``requests``) and at least ``tokens`` tokens.

        Returns (requests granted, tokens granted, seconds to wait before asking again); what is
        granted may be :data:`UNLIMITED`.
        """
        now = self._clock()
        self.leases += 1
        if self._resume_at > now:
            return 0, 0.0, self._resume_at - now
        self._apply()
        granted_requests, granted_tokens, wait_s = 0, 0.0, 0.0
        if requests:
            granted_requests, wait_s = _grant(self._requests, 1, SLICE_S)
            self.granted_requests += granted_requests if granted_requests != UNLIMITED else requests
        if tokens and not wait_s:
            granted_tokens, wait_s = _grant(self._tokens, tokens, SLICE_S)
        return granted_requests, granted_tokens, wait_s

    def give_back(self, requests: float, tokens: float) -> None:
        """Return unused capacity (``tokens`` < 0 charges a reply that used more than reserved)."""
        if self._requests is not None and requests and requests != UNLIMITED:
            self._requests.give(requests)
            self.granted_requests -= int(requests)
        if self._tokens is not None and tokens and tokens != UNLIMITED:
            if tokens > 0:
                self._tokens.give(tokens)
            else:
                self._tokens.take(-tokens)

    # -- cost --------------------------------------------------------------------------------
    def reserve_cost(self, amount_usd: str) -> bool:
        """Reserve one request's worst case; False when it could push the spend past the cap."""
        amount = Decimal(amount_usd)
        if self.cost_cap is not None and self.spent_usd + self.reserved_usd + amount > self.cost_cap:
            return False
        self.reserved_usd += amount
        return True

    def settle_cost(self, reserved_usd: str, cost_usd: str | None) -> None:
        """Replace a reservation by what the attempt cost (None: unknown, assume the reservation)."""
        self.reserved_usd -= Decimal(reserved_usd)
        self.spent_usd += Decimal(reserved_usd if cost_usd is None else cost_usd)

    # -- progress and stop -------------------------------------------------------------------
    def report(self, part: Any, counts: dict) -> str | None:
        """A part's counts so far (each report replaces the last); returns the stop reason, if any."""
        self.parts[part] = counts
        return self.stop_reason

    def stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def totals(self) -> dict:
        """The counts over every part, plus the limiter's own figures."""
        keys = ("rows", "rows_done", "requests", "ok", "error", "rate_limited")
        total = {key: sum(part.get(key, 0) for part in self.parts.values()) for key in keys}
        total.update(cost_usd=sum(part.get("cost_usd", 0.0) for part in self.parts.values()),
                     parts=len(self.parts), granted_requests=self.granted_requests, leases=self.leases, pauses=self.pauses,
                     limits=self.limits, stopped=self.stop_reason, spent_usd=str(self.spent_usd))
        return total

    def summaries(self) -> dict:
        """Each part's final summary, by part."""
        return {part: counts["summary"] for part, counts in self.parts.items() if "summary" in counts}


def _grant(bucket: TokenBucket | None, need: float, slice_s: float) -> tuple[float, float]:
    """(granted, wait_s) from ``bucket``: at least ``need`` and up to a slice, or a wait."""
    if bucket is None:
        return UNLIMITED, 0.0
    wait_s = bucket.wait_s(need)
    if wait_s > 1e-6:  # (below a microsecond the refill is lost in float rounding: grant it)
        return 0, wait_s
    granted = max(need, min(bucket.level, bucket.per_second * slice_s))
    if need == 1:
        granted = max(1, int(granted))
    bucket.take(granted)
    return granted, 0.0


def _lowest(*values: float | None) -> float | None:
    known = [v for v in values if v]
    return min(known) if known else None


class ClusterLease:
    """A process's share of a :class:`ClusterLimiter`: the :class:`~pipeline.ratelimit.Lease` its
    RateBudget takes from.

    ``ask(method, *args)`` calls the limiter and awaits the answer; ``tell(method, *args)`` calls it
    without waiting. (Over Dask these go to the Actor; in tests straight to the object.)
    """

    def __init__(self, ask: Callable[..., Awaitable[Any]], tell: Callable[..., Any], *,
                 clock: Callable[[], float]) -> None:
        self._ask, self._tell, self._clock = ask, tell, clock
        self.requests: float = 0
        self.tokens: float = 0.0
        self._leased_at = -math.inf

    async def take(self, tokens: float, sleep: Callable[[float], Awaitable[Any]]) -> None:
        while True:
            if self._clock() - self._leased_at > LEASE_TTL_S:
                self.give_back()
            if self.requests >= 1 and self.tokens >= tokens:
                self.requests -= 1
                self.tokens -= tokens
                return
            need_requests = 0 if self.requests >= 1 else 1
            need_tokens = max(tokens - self.tokens, 0.0)
            granted_requests, granted_tokens, wait_s = await self._ask("lease", need_requests, need_tokens)
            if granted_requests or granted_tokens:
                self._leased_at = self._clock()
            self.requests += granted_requests
            self.tokens += granted_tokens
            if wait_s > 0:
                await sleep(wait_s)

    def adjust(self, tokens: float) -> None:
        self.tokens += tokens

    def pause(self, seconds: float) -> None:
        self.give_back()
        self._tell("pause", seconds)

    def learned(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        if requests_per_minute or tokens_per_minute:
            self._tell("learned", requests_per_minute, tokens_per_minute)

    def give_back(self) -> None:
        """Return what is unused (a token debt is charged)."""
        requests = self.requests if self.requests != UNLIMITED else 0
        tokens = self.tokens if self.tokens != UNLIMITED else 0.0
        if requests or tokens:
            self._tell("give_back", requests, tokens)
        self.requests, self.tokens = 0, 0.0
