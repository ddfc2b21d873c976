"""AIMD pacing after 429s: how fast to send once the server has said "too fast".

Without 429s a :class:`Pacer` is off and costs one attribute check. A wave of 429s (at most one
cut per :data:`CUT_INTERVAL_S`) turns it on at half the rate that was getting through just before —
measured as ok replies over the last :data:`WINDOW_S` seconds (or :data:`START_RATE` when none got
through) — and each later ok reply raises the rate by ``max(GROWTH_PER_S, 1 / rate)``: about +1/s per
second below 10/s (slow start), about 10% a second above. Requests are then spaced
``1 / rate`` apart: no bursts, so after a pause the run does not fire every worker into the same
wall. Once the rate has grown well past anything the server was seen to take, pacing switches off.

That is additive-increase/multiplicative-decrease on the *rate*, not on the number in flight: at
near-zero latency even one request in flight can outrun a limit, so only a rate can stay under it.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

CUT_INTERVAL_S = 1.0
WINDOW_S = 2.0
GROWTH_PER_S = 0.10
MIN_RATE = 0.2  # requests per second: never slower than one every 5 s
START_RATE = 1.0  # when a 429 comes before any ok reply
OFF_FACTOR = 4.0  # pacing ends when the rate is this many times the best rate seen


class Pacer:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.rate: float | None = None  # requests per second; None: not pacing
        self._next_at = 0.0
        self._last_cut = float("-inf")
        self._ok_times: deque[float] = deque()
        self._best_rate = 0.0

    def cut(self) -> None:
        """A 429 arrived: halve the rate that was getting through (once per wave)."""
        now = self._clock()
        if now - self._last_cut < CUT_INTERVAL_S:
            return
        self._last_cut = now
        observed = self._observed_rate(now)
        self._best_rate = max(self._best_rate, observed)
        if self.rate is None:
            self.rate = max(START_RATE, observed / 2)  # nothing got through yet: start slow
        else:
            self.rate = max(MIN_RATE, min(self.rate, observed or self.rate) / 2)

    def ok(self) -> None:
        """An ok reply arrived: remember it, and speed up a little if pacing."""
        now = self._clock()
        self._ok_times.append(now)
        while self._ok_times and self._ok_times[0] < now - WINDOW_S:
            self._ok_times.popleft()
        if self.rate is not None:
            self.rate += max(GROWTH_PER_S, 1.0 / self.rate)  # slow start below 10/s, then ~10%/s
            if self.rate > OFF_FACTOR * max(self._best_rate, MIN_RATE) and now - self._last_cut > WINDOW_S:
                self.rate = None

    def wait_s(self) -> float:
        """How long the next request must wait; reserves its slot when that is 0."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        if self._next_at > now:
            return self._next_at - now
        self._next_at = now + 1.0 / self.rate
        return 0.0

    def _observed_rate(self, now: float) -> float:
        while self._ok_times and self._ok_times[0] < now - WINDOW_S:
            self._ok_times.popleft()
        return len(self._ok_times) / WINDOW_S
