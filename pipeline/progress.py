"""Progress while a run goes: a tqdm bar on a terminal, plain log lines for cron, or nothing.

The display is refreshed by a ticker (twice a second for the bar, every ``interval_s`` for log
lines) reading the run's :class:`~pipeline.summary.Tally` — nothing is done per row.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm

from .summary import Tally

BAR_REFRESH_S = 0.5


def _money(value) -> str:
    return f"${float(value):.4f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Shows a run's progress in ``mode`` 'bar', 'log' or 'quiet'."""

    def __init__(self, tally: Tally, *, mode: str, interval_s: float = 30.0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 requests_sent: Callable[[], int] = lambda: 0, limits: Callable[[], str] = lambda: "") -> None:
        self.tally, self.mode, self.interval_s = tally, mode, interval_s
        self._requests_sent, self._limits = requests_sent, limits
        self._last = (clock(), 0, 0)  # (when, requests sent, tokens) at the last refresh
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = clock()
        self._bar: tqdm | None = None

    async def run(self) -> None:
        """Refresh until cancelled."""
        if self.mode == "quiet":
            return
        if self.mode == "bar":
            self._bar = tqdm(total=self.tally.rows_total, unit="row", file=self.stream,
                             dynamic_ncols=True, smoothing=0.1)
        period = BAR_REFRESH_S if self.mode == "bar" else self.interval_s
        while True:
            await asyncio.sleep(period)
            self.refresh()

    def rates(self) -> str:
        """Requests and tokens per minute since the last refresh, and the limits in force."""
        now, requests, tokens = self.clock(), self._requests_sent(), self.tally.tokens_total
        then, requests_then, tokens_then = self._last
        self._last = (now, requests, tokens)
        minutes = max(now - then, 1e-9) / 60
        limits = self._limits()
        return (f"rpm {(requests - requests_then) / minutes:,.0f} tpm {(tokens - tokens_then) / minutes:,.0f}"
                + (f" ({limits})" if limits else ""))

    def refresh(self) -> None:
        t = self.tally
        if self._bar is not None:
            self._bar.update(t.rows_done - self._bar.n)
            self._bar.set_postfix_str(
                f"tokens={t.tokens_total:,} cost={_money(t.cost_known_usd)} errors={t.errors:,} "
                f"429s={t.rate_limited:,} {self.rates()}", refresh=True)
        elif self.mode == "log":
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        t = self.tally
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = t.rows_done / elapsed
        left = t.rows_total - t.rows_done
        eta = _duration(left / rate) if rate > 0 else "?"
        share = 100.0 * t.rows_done / t.rows_total if t.rows_total else 100.0
        return (f"chatbatch: {t.rows_done:,}/{t.rows_total:,} rows ({share:.1f}%), {rate:,.1f} rows/s, "
                f"ETA {eta}, tokens {t.tokens_total:,}, cost {_money(t.cost_known_usd)}, "
                f"errors {t.errors:,}, 429s {t.rate_limited:,}, {self.rates()}")

    def close(self) -> None:
        if self._bar is not None:
            self.refresh()
            self._bar.close()
            self._bar = None
        elif self.mode == "log":
            print(self.line(), file=self.stream, flush=True)
