"""Requests-per-minute and tokens-per-minute budgets, and the run-wide pause after a 429.

Built on aiolimiter's leaky bucket, with its two surprises handled:

* ``AsyncLimiter(rate, period)`` lets ``rate`` acquisitions through at once, so a limiter built as
  ``AsyncLimiter(rpm, 60)`` would fire a whole minute's budget in one burst. Buckets here hold
  :data:`BURST_S` seconds' worth (at least one request): ``rpm=600`` becomes ``AsyncLimiter(10, 1)``.
* ``acquire(n)`` raises when ``n`` exceeds the bucket; a request bigger than the token bucket is
  acquired in bucket-sized chunks (the same budget, spread over time). A request bigger than the
  whole minute's TPM can never be sent and is a row error.
* Its waiters are served smallest-first, which can starve a large request behind a stream of small
  ones; a FIFO lock in front keeps arrival order.

A request's token cost is its estimated prompt tokens plus max output tokens × n (see
:mod:`pipeline.tokens`).

A 429 slows the whole run, twice over: :meth:`RateBudget.pause` holds back *every* request until the
server's retry-after has passed, and a :class:`~pipeline.pacing.Pacer` then spaces requests at half
the rate that was getting through, growing again with every ok reply — so when the pause ends the
run does not fire every worker into the same wall. Without 429s neither costs anything.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from aiolimiter import AsyncLimiter

from .errors import RowRejected
from .pacing import Pacer

BURST_S = 1.0


def bucket(per_minute: float, minimum: float = 1.0) -> AsyncLimiter:
    """A leaky bucket refilling ``per_minute`` that holds ``BURST_S`` seconds' worth (≥ minimum)."""
    capacity = max(per_minute * BURST_S / 60.0, minimum)
    return AsyncLimiter(capacity, capacity * 60.0 / per_minute)


class RateBudget:
    """Gate every attempt through :meth:`acquire`; ``None`` limits cost nothing."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[object]],
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._requests = bucket(requests_per_minute) if requests_per_minute else None
        self._tokens = bucket(tokens_per_minute) if tokens_per_minute else None
        self._clock = clock
        self._sleep = sleep
        self._resume_at = 0.0
        self._lock = asyncio.Lock()
        self.pacer = Pacer(clock)

    @property
    def limited(self) -> bool:
        return (self._requests is not None or self._tokens is not None or self.pacer.rate is not None
                or self._resume_at > self._clock())

    def pause(self, seconds: float) -> None:
        """A 429: hold back every request for ``seconds`` from now, then pace (see module doc)."""
        self._resume_at = max(self._resume_at, self._clock() + seconds)
        self.pacer.cut()

    def succeeded(self) -> None:
        """An ok reply arrived (feeds the pacer)."""
        self.pacer.ok()

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of ``tokens`` tokens fits the budgets (and the pacing)."""
        if self.tokens_per_minute and tokens > self.tokens_per_minute:
            raise RowRejected(
                f"request needs about {tokens} tokens, more than the whole tokens-per-minute "
                f"limit ({self.tokens_per_minute:g}); shorten the prompt or lower max_completion_tokens",
                error_type="exceeds_tpm_limit",
            )
        if not self.limited:
            return
        async with self._lock:
            while (wait_s := max(self._resume_at - self._clock(), self.pacer.wait_s())) > 0:
                await self._sleep(wait_s)
            if self._requests is not None:
                await self._requests.acquire(1)
            if self._tokens is not None:
                await self._acquire_tokens(tokens)

    async def _acquire_tokens(self, tokens: float) -> None:
        assert self._tokens is not None
        for amount in chunks(tokens, self._tokens.max_rate):
            await self._tokens.acquire(amount)


def chunks(amount: float, capacity: float) -> list[float]:
    """``amount`` split into pieces no larger than ``capacity`` (aiolimiter's largest acquire)."""
    whole, rest = divmod(amount, capacity)
    return [capacity] * int(whole) + ([rest] if rest else [])
