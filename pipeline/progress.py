"""Progress while a run goes: a tqdm bar on a terminal, plain log lines for cron, or nothing.

The display is refreshed by a ticker (twice a second for the bar, every ``interval_s`` for log
lines) reading the run's :class:`~pipeline.summary.Tally` — nothing is done per row.

A log line (cron) starts with an ISO 8601 UTC timestamp and counts only what this run did::

    2026-12-01T03:00:30Z chatbatch: 120/200 rows (60.0%), 4.0 rows/s, ETA 0m20s, tokens 1,440,
        cost $0.0004, errors 0, 429s 0, not sent 0, rpm 240 tpm 2,880 (limits ...)

Rows are done when they were settled: answered, failed, skipped, or taken from the journal; rows a
stopped run never sent are counted apart (``not sent``), not as done. ``rpm``/``tpm`` are the
requests this run sent (every attempt) and the tokens of the replies it got, over the last minute —
or over the time since the start when the run is younger than a minute — so a short burst is not
reported as a minute's rate, and rows replayed from the journal count for nothing. The last line says
how the run ended (ok, failed, stopped, crashed) with the row counts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from datetime import datetime, timezone
from typing import Callable, TextIO

from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

from .summary import Tally

BAR_REFRESH_S = 0.5
RATE_WINDOW_S = 60.0


def _money(value) -> str:
    return f"${float(value):.4f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def timestamp(epoch_s: float) -> str:
    """ISO 8601 UTC, to the second: the prefix of every log line."""
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Progress:
    """Shows a run's progress in ``mode`` 'bar', 'log' or 'quiet' — or 'auto', the Python API's
    bar: ``tqdm.auto`` (a widget in Jupyter, text elsewhere).

    ``clock`` (monotonic) times the rates; ``wall`` (epoch seconds) stamps the log lines.
    """

    def __init__(self, tally: Tally, *, mode: str, interval_s: float = 30.0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, limits: Callable[[], str] = lambda: "") -> None:
        self.tally, self.mode, self.interval_s = tally, mode, interval_s
        self._limits = limits
        self.stream = stream or sys.stderr
        self.clock, self.wall = clock, wall
        self.started = clock()
        self._samples: deque[tuple[float, int, int]] = deque([(self.started, 0, 0)])  # (when, requests, tokens)
        self._bar: tqdm | None = None

    async def run(self) -> None:
        """Refresh until cancelled."""
        if self.mode == "quiet":
            return
        if self.mode in ("bar", "auto"):
            bar = auto_tqdm if self.mode == "auto" else tqdm
            self._bar = bar(total=self.tally.rows_total, unit="row", file=self.stream,
                            dynamic_ncols=True, smoothing=0.1)
        period = self.interval_s if self.mode == "log" else BAR_REFRESH_S
        while True:
            await asyncio.sleep(period)
            self.refresh()

    def rates(self) -> str:
        """Requests sent and reply tokens per minute over the last minute, and the limits in force."""
        now, requests, tokens = self.clock(), self.tally.requests_sent, self.tally.tokens_total
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= now - RATE_WINDOW_S:
            samples.popleft()  # keep the newest sample at least a minute old (or the start)
        then, requests_then, tokens_then = samples[0]
        samples.append((now, requests, tokens))
        minutes = max(now - then, 1e-9) / 60
        limits = self._limits()
        return (f"rpm {(requests - requests_then) / minutes:,.0f} tpm {(tokens - tokens_then) / minutes:,.0f}"
                + (f" ({limits})" if limits else ""))

    def refresh(self) -> None:
        t = self.tally
        if self._bar is not None:
            self._bar.update(self._done() - self._bar.n)
            self._bar.set_postfix_str(
                f"tokens={t.tokens_total:,} cost={_money(t.cost_known_usd)} errors={t.errors - t.not_sent:,} "
                f"429s={t.rate_limited:,} {self.rates()}", refresh=True)
        elif self.mode == "log":
            self._print(self.line())

    def _done(self) -> int:
        return self.tally.rows_done - self.tally.not_sent

    def line(self) -> str:
        t = self.tally
        done = self._done()
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = (done - t.resumed) / elapsed  # rows this run settled; journal replays are instant
        left = t.rows_total - done
        eta = _duration(left / rate) if rate > 0 else "?"
        share = 100.0 * done / t.rows_total if t.rows_total else 100.0
        return (f"chatbatch: {done:,}/{t.rows_total:,} rows ({share:.1f}%), {rate:,.1f} rows/s, "
                f"ETA {eta}, tokens {t.tokens_total:,}, cost {_money(t.cost_known_usd)}, "
                f"errors {t.errors - t.not_sent:,}, 429s {t.rate_limited:,}, not sent {t.not_sent:,}, "
                f"{self.rates()}")

    def final_line(self, outcome: str, reason: str | None = None) -> str:
        """How the run ended — ``ok``, ``failed`` (some rows failed), ``stopped``, ``crashed`` — and its counts."""
        t = self.tally
        return (f"chatbatch: {outcome}" + (f" ({reason})" if reason and outcome == "stopped" else "")
                + f": {self._done():,}/{t.rows_total:,} rows done: ok {t.statuses['ok']:,}, "
                f"error {t.errors - t.not_sent:,}, refused {t.statuses['refused']:,}, "
                f"skipped {t.statuses['skipped']:,}, not sent {t.not_sent:,} "
                f"({t.resumed:,} from earlier runs, {t.requests_sent:,} requests sent)")

    def _print(self, text: str) -> None:
        print(f"{timestamp(self.wall())} {text}", file=self.stream, flush=True)

    def close(self, outcome: str | None = None, reason: str | None = None) -> None:
        if self._bar is not None:
            self.refresh()
            self._bar.close()
            self._bar = None
        elif self.mode == "log":
            self._print(self.line())
            if outcome is not None:
                self._print(self.final_line(outcome, reason))
