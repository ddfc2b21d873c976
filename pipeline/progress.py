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
how the run ended (ok, failed, stopped, crashed) with the row counts. With ``--log-format json``
the same lines are JSON objects (events ``progress`` and ``finished``) holding the figures as fields.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from typing import Any, Callable, TextIO


from .logs import json_line, timestamp
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


class Progress:
    """Shows a run's progress in ``mode`` 'bar', 'log', 'json' (log lines as JSON objects, see
    :mod:`pipeline.logs`) or 'quiet' — or 'auto', the Python API's bar: ``tqdm.auto`` (a widget in
    Jupyter, text elsewhere).

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
        self._bar: Any = None  # a tqdm bar, once shown

    async def run(self) -> None:
        """Refresh until cancelled."""
        if self.mode == "quiet":
            return
        if self.mode in ("bar", "auto"):
            if self.mode == "auto":
                from tqdm.auto import tqdm as bar  # a widget in Jupyter
            else:
                from tqdm import tqdm as bar  # imported only when a bar is shown
            self._bar = bar(total=self.tally.rows_total, unit="row", file=self.stream,
                            dynamic_ncols=True, smoothing=0.1)
        period = self.interval_s if self.mode in ("log", "json") else BAR_REFRESH_S
        while True:
            await asyncio.sleep(period)
            self.refresh()

    def rates(self) -> str:
        """Requests sent and reply tokens per minute over the last minute, and the limits in force."""
        rpm, tpm, limits = self._rates()
        return f"rpm {rpm:,.0f} tpm {tpm:,.0f}" + (f" ({limits})" if limits else "")

    def _rates(self) -> tuple[float, float, str]:
        now, requests, tokens = self.clock(), self.tally.requests_sent, self.tally.tokens_total
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= now - RATE_WINDOW_S:
            samples.popleft()  # keep the newest sample at least a minute old (or the start)
        then, requests_then, tokens_then = samples[0]
        samples.append((now, requests, tokens))
        minutes = max(now - then, 1e-9) / 60
        return (requests - requests_then) / minutes, (tokens - tokens_then) / minutes, self._limits()

    def refresh(self) -> None:
        t = self.tally
        if self._bar is not None:
            self._bar.update(self._done() - self._bar.n)
            self._bar.set_postfix_str(
                f"tokens={t.tokens_total:,} cost={_money(t.cost_known_usd)} errors={t.errors - t.not_sent:,} "
                f"429s={t.rate_limited:,} {self.rates()}", refresh=True)
        elif self.mode in ("log", "json"):
            self._show("progress", self.figures())

    def _done(self) -> int:
        return self.tally.rows_done - self.tally.not_sent

    def figures(self) -> dict:
        """The progress line's figures: rows done of all, rows/s, ETA, tokens, cost, errors, rates."""
        t = self.tally
        done = self._done()
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = (done - t.resumed) / elapsed  # rows this run settled; journal replays are instant
        rpm, tpm, limits = self._rates()
        return {"rows_done": done, "rows_total": t.rows_total,
                "percent": 100.0 * done / t.rows_total if t.rows_total else 100.0, "rows_per_s": rate,
                "eta_s": (t.rows_total - done) / rate if rate > 0 else None, "tokens": t.tokens_total,
                "cost_usd": float(t.cost_known_usd), "errors": t.errors - t.not_sent,
                "rate_limited_429": t.rate_limited, "not_sent": t.not_sent,
                "requests_per_minute": rpm, "tokens_per_minute": tpm, "limits": limits}

    def line(self, figures: dict | None = None) -> str:
        f = figures or self.figures()
        eta = _duration(f["eta_s"]) if f["eta_s"] is not None else "?"
        return (f"chatbatch: {f['rows_done']:,}/{f['rows_total']:,} rows ({f['percent']:.1f}%), "
                f"{f['rows_per_s']:,.1f} rows/s, ETA {eta}, tokens {f['tokens']:,}, cost {_money(f['cost_usd'])}, "
                f"errors {f['errors']:,}, 429s {f['rate_limited_429']:,}, not sent {f['not_sent']:,}, "
                f"rpm {f['requests_per_minute']:,.0f} tpm {f['tokens_per_minute']:,.0f}"
                + (f" ({f['limits']})" if f["limits"] else ""))

    def final_figures(self, outcome: str, reason: str | None = None) -> dict:
        t = self.tally
        return {"outcome": outcome, "reason": reason if outcome == "stopped" else None,
                "rows_done": self._done(), "rows_total": t.rows_total, "ok": t.statuses["ok"],
                "error": t.errors - t.not_sent, "refused": t.statuses["refused"], "skipped": t.statuses["skipped"],
                "not_sent": t.not_sent, "resumed": t.resumed, "requests_sent": t.requests_sent}

    def final_line(self, outcome: str, reason: str | None = None, figures: dict | None = None) -> str:
        """How the run ended — ``ok``, ``failed`` (some rows failed), ``stopped``, ``crashed`` — and its counts."""
        f = figures or self.final_figures(outcome, reason)
        return (f"chatbatch: {outcome}" + (f" ({f['reason']})" if f["reason"] else "")
                + f": {f['rows_done']:,}/{f['rows_total']:,} rows done: ok {f['ok']:,}, "
                f"error {f['error']:,}, refused {f['refused']:,}, "
                f"skipped {f['skipped']:,}, not sent {f['not_sent']:,} "
                f"({f['resumed']:,} from earlier runs, {f['requests_sent']:,} requests sent)")

    def _show(self, event: str, figures: dict) -> None:
        """One log line: timestamped text, or (mode 'json') one JSON object with the figures as fields."""
        if event == "progress":
            text, level = self.line(figures), "info"
        else:
            text, level = self.final_line(figures["outcome"], figures["reason"], figures), _LEVELS[figures["outcome"]]
        if self.mode == "json":
            rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
            line = json_line(level, event, text.removeprefix("chatbatch: "), rounded, self.wall())
        else:
            line = f"{timestamp(self.wall())} {text}"
        print(line, file=self.stream, flush=True)

    def close(self, outcome: str | None = None, reason: str | None = None) -> None:
        if self._bar is not None:
            self.refresh()
            self._bar.close()
            self._bar = None
        elif self.mode in ("log", "json"):
            self._show("progress", self.figures())
            if outcome is not None:
                self._show("finished", self.final_figures(outcome, reason))


_LEVELS = {"ok": "info", "failed": "warning", "stopped": "warning", "crashed": "error"}
