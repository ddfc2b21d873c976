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

**Cost.** With ``max_cost_usd`` the limiter is the one cost cap (:class:`ClusterCap` is a
process's side of it): before each request a process reserves its worst case — the estimate of the
local cap, :meth:`pipeline.spend.SpendCap.most` — with :meth:`ClusterLimiter.reserve_cost`, and
settles it with the exact cost from ``usage`` (:meth:`ClusterLimiter.settle_cost`); the arithmetic is
a local cap's, :class:`pipeline.spend.CostLedger`. The spend counts
what earlier runs of the job were billed, part by part: the client starts the limiter with each
part's billed total as its journal holds it (an upper bound: a part whose journal is then reset
spent nothing in this job), and each part states its own when it starts (:meth:`ClusterLimiter.begin`),
replacing the bound. The first reservation that could cross the cap is refused and stops the job
(stopped by ``max_cost_reached``); every later one is refused too, so no process sends again.

**Progress and stop.** Processes report their counts per part (:meth:`ClusterLimiter.report`); the
client reads the totals (:meth:`ClusterLimiter.totals`). A process that must stop the job (auth
failure) and the client (a signal: :class:`ClusterStop`) call :meth:`ClusterLimiter.stop`; every
process sees the reason in its next report's answer (and a part that starts later, in
:meth:`ClusterLimiter.begin`'s), and whether requests in flight are to be cancelled (a second stop).

**Losing the limiter.** A process reaches the limiter through an :class:`ActorLink`, the one
boundary with the Actor: whatever a call raises there (the limiter's worker died — ``distributed``
raises ``RuntimeError``/``OSError`` — or the limiter itself failed) becomes
:class:`~pipeline.errors.LimiterLost`, chained to the cause. The runner stops on it as on any
error that is no row's fault (nothing more is sent, finished rows stay in the partition's journal)
and the job fails with it; a rerun resumes.

The limiter's methods are plain and quick (an Actor runs them one at a time); the clock is
injectable, so tests drive it without a cluster.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from decimal import Decimal
from typing import Any, Awaitable, Callable, Mapping

from .errors import CostCapReached, LimiterLost
from .ratelimit import TokenBucket
from .spend import CostLedger, SpendCap, cap_reached

SHARE = 0.97  # of the limits: the processes share no server count to steer by (see ratelimit)
SLICE_S = 0.25  # a lease holds at most this long's worth of the rate
LEASE_TTL_S = 1.0  # capacity unused this long after it was leased goes back
RECOVER_S = 10.0  # after a 429 the halved rate grows back to the full rate over this long
CUT_INTERVAL_S = 1.0  # at most one cut of the rate per this long (one wave of 429s)
MIN_FACTOR = 1 / 16
UNLIMITED = math.inf
CAP_REACHED = CostCapReached.error_type


class ClusterLimiter:
    """The cluster's one budget (see the module docstring). Plain methods, called one at a time."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None,
                 max_cost_usd: str | None = None, clock: Callable[[], float] = time.monotonic,
                 earlier_usd: Mapping[Any, str] | None = None) -> None:
        self._clock = clock
        self.configured = (requests_per_minute, tokens_per_minute)
        self.learned_limits: list[float | None] = [None, None]
        self.limits: tuple[float | None, float | None] = (None, None)
        self._requests: TokenBucket | None = None
        self._tokens: TokenBucket | None = None
        self._resume_at = 0.0
        self._factor, self._factor_at, self._last_cut = 1.0, clock(), -math.inf
        self.cost_cap = Decimal(max_cost_usd) if max_cost_usd is not None else None
        self.earlier_usd = {part: Decimal(amount) for part, amount in (earlier_usd or {}).items()}
        self.ledger = CostLedger(self.cost_cap or Decimal(0), sum(self.earlier_usd.values(), Decimal(0)))
        self.stopped_by: str | None = None
        self.hard_stop = False
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
    @property
    def spent_usd(self) -> Decimal:
        """The job's spend: earlier runs' (per part) and this run's."""
        return self.ledger.spent_usd

    @property
    def reserved_usd(self) -> Decimal:
        """What requests in flight may still cost."""
        return self.ledger.reserved_usd

    def reserve_cost(self, amount_usd: str) -> str | None:
        """Reserve one request's worst case: None when reserved, else why not (the job then stops)."""
        amount = Decimal(amount_usd)
        if self.cost_cap is None:
            return None
        if self.stopped_by == CAP_REACHED:
            return self.stop_reason
        if not self.ledger.reserve(amount):
            reason = cap_reached(self.cost_cap, self.spent_usd)
            self.stop(reason, CAP_REACHED)
            return reason
        return None

    def settle_cost(self, reserved_usd: str, cost_usd: str | None) -> None:
        """Replace a reservation by what the attempt cost (None: unknown, assume the reservation)."""
        if self.cost_cap is None:
            return
        self.ledger.settle(Decimal(reserved_usd), None if cost_usd is None else Decimal(cost_usd))

    # -- progress and stop -------------------------------------------------------------------
    def begin(self, part: Any, earlier_usd: str) -> tuple[str | None, bool]:
        """A part starts: what earlier runs spent on it (replacing the client's bound); returns
        :meth:`report`'s answer."""
        self.earlier_usd[part] = Decimal(earlier_usd)
        self.ledger.earlier_usd = sum(self.earlier_usd.values(), Decimal(0))
        return self.stop_reason, self.hard_stop

    def report(self, part: Any, counts: dict) -> tuple[str | None, bool]:
        """A part's counts so far (each report replaces the last); returns (the stop reason, if any;
        whether requests in flight are to be cancelled)."""
        self.parts[part] = counts
        return self.stop_reason, self.hard_stop

    def stop(self, reason: str, stopped_by: str | None = None, hard: bool = False) -> None:
        """Stop the job: the first reason stays, and the first error class that stopped it
        (``stopped_by``, None for a signal); ``hard`` cancels requests in flight too."""
        self.stop_reason = self.stop_reason or reason
        self.stopped_by = self.stopped_by or stopped_by
        self.hard_stop = self.hard_stop or hard

    def totals(self) -> dict:
        """The counts over every part, plus the limiter's own figures."""
        keys = ("rows", "rows_done", "requests", "ok", "error", "rate_limited")
        total = {key: sum(part.get(key, 0) for part in self.parts.values()) for key in keys}
        total.update(cost_usd=sum(part.get("cost_usd", 0.0) for part in self.parts.values()),
                     parts=len(self.parts), granted_requests=self.granted_requests, leases=self.leases, pauses=self.pauses,
                     limits=self.limits, stopped=self.stop_reason, stopped_by=self.stopped_by,
                     spent_usd=str(self.spent_usd))
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


class ClusterCap:
    """A process's side of the cluster's cost cap: what a :class:`~pipeline.runner.Runner` asks
    instead of a local :class:`~pipeline.spend.SpendCap`. ``estimate`` (a SpendCap) says what a
    request may cost at most; the limiter holds the spend and says yes or no."""

    def __init__(self, estimate: SpendCap, ask: Callable[..., Awaitable[Any]], tell: Callable[..., Any]) -> None:
        self._estimate, self._ask, self._tell = estimate, ask, tell
        self._refusal = ""

    async def claim(self, prompt_tokens: int) -> Decimal | None:
        """Reserve the request's worst case at the limiter; None when the cap refuses it."""
        amount = self._estimate.most(prompt_tokens)
        refusal = await self._ask("reserve_cost", str(amount))
        if refusal is not None:
            self._refusal = refusal
            return None
        return amount

    def settle(self, reservation: Decimal, cost_usd: Decimal | None) -> None:
        self._tell("settle_cost", str(reservation), None if cost_usd is None else str(cost_usd))

    def describe(self) -> str:
        """Why the last claim was refused (the limiter's words: the job's spend and cap)."""
        return self._refusal


class ActorLink:
    """Calls to the limiter Actor: ``ask`` awaits the answer, ``call`` blocks for it, ``tell`` does not.

    The one boundary with the Actor: any exception a call raises (its worker was lost, it could not
    be reached, the limiter failed) is raised as :class:`~pipeline.errors.LimiterLost` — by ``ask``
    and ``call`` at once, and for a ``tell`` by the next ``ask`` or ``call``. A ``tell`` never raises:
    it settles requests already sent, and their replies (paid for) must reach the journal; every send
    is preceded by an ``ask``, so nothing more is sent after a failed ``tell``.
    """

    def __init__(self, actor: Any) -> None:
        self._actor = actor
        self._lost: LimiterLost | None = None  # what a tell met, raised by the next ask or call

    async def ask(self, method: str, *args: Any) -> Any:
        self._raise_if_lost()
        try:
            future = getattr(self._actor, method)(*args)
            return await asyncio.to_thread(future.result)
        except Exception as exc:  # the documented boundary: whatever distributed or the limiter raised
            raise self._note_lost(method, exc) from exc

    def call(self, method: str, *args: Any) -> Any:
        """``ask``, blocking (the client's thread, outside any event loop)."""
        self._raise_if_lost()
        try:
            return getattr(self._actor, method)(*args).result()
        except Exception as exc:  # the documented boundary, as in ask
            raise self._note_lost(method, exc) from exc

    def tell(self, method: str, *args: Any) -> None:
        try:
            getattr(self._actor, method)(*args)
        except Exception as exc:  # the documented boundary (a lost Actor refuses even to be called)
            self._note_lost(method, exc)

    def _note_lost(self, method: str, exc: Exception) -> LimiterLost:
        """The loss, kept: the first one met is what every later ask or call raises."""
        if self._lost is None:
            self._lost = _lost(method, exc)
            self._lost.__cause__ = exc
        return self._lost

    def _raise_if_lost(self) -> None:
        if self._lost is not None:
            raise self._lost


def _lost(method: str, exc: Exception) -> LimiterLost:
    return LimiterLost(f"the cluster's limiter failed ({method}: {type(exc).__name__}: {exc}); its worker may "
                       "have died. Nothing more is sent; rows finished are kept in each partition's journal "
                       "(the state folder): run the same command again to resume")


class ClusterStop:
    """Signals on the client stop the job: press once, every process stops sending (requests in
    flight get their grace); press again, they are cancelled. Presses before the limiter exists
    (the cluster is still starting) apply as soon as it does; after :meth:`detach`, none do.

    ``press`` is what a signal handler calls: it only sends a message (it waits for nothing).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: a signal may come while this thread holds it
        self._limiter: Any = None
        self.reasons: list[str] = []

    def press(self, reason: str) -> None:
        with self._lock:
            self.reasons.append(reason)
            limiter, hard = self._limiter, len(self.reasons) > 1
        if limiter is not None:
            ActorLink(limiter).tell("stop", reason, None, hard)  # sent, not awaited; never raises

    def attach(self, limiter: Any) -> None:
        with self._lock:
            self._limiter = limiter
            reasons = list(self.reasons)
        for index, reason in enumerate(reasons):
            ActorLink(limiter).tell("stop", reason, None, index > 0)

    def detach(self) -> None:
        with self._lock:
            self._limiter = None
