"""The run summary: rows by status, tokens, cost per model, time, retries and 429s.

:class:`Tally` counts as rows finish (cheap enough to call per row); :meth:`Tally.summary` turns the
counts into a JSON-ready dict, which is printed as a table (:func:`format_summary`), written beside
the output as ``<output>.summary.json`` and stored in the Parquet file's key-value metadata.

Rows answered from an identical request (``cached``) count apart and add no tokens or cost: they
were billed once, on the row that sent the request.

The summary describes the whole job: row counts describe the whole output (resumed rows included),
and the spend — tokens, cost, retries, 429s, requests, elapsed — is the job's over all its runs:
what earlier runs spent (a :class:`Spend` the state keeps, see :mod:`pipeline.state`) plus this run.
This run's own part is beside it, under ``this_run``; a rerun that sends nothing shows the job's
figures unchanged and zeros only there. ``this_run.rate_limited_429_at`` says when its 429s came
(UTC second -> count; per minute beyond :data:`MAX_429_TIMES` seconds), for the run report's timeline.

Costs add up in Decimal from exact per-row costs. Rows whose model has no known price make that
model's cost, and the total, ``null`` — with ``cost_usd_known`` giving the part that is known.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from .records import STATUS_ERROR, STATUS_OK, STATUS_REFUSED, STATUS_SKIPPED, RowResult

TOKEN_FIELDS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")
MAX_429_TIMES = 1440  # this_run.rate_limited_429_at: per second, or per minute beyond this many entries


@dataclass
class ModelTally:
    rows: int = 0
    tokens: Counter = field(default_factory=Counter)
    cost_usd: Decimal = Decimal(0)
    rows_without_cost: int = 0


@dataclass
class Spend:
    """What requests cost — per model, and retries, 429s, requests, time — for one run or a whole job."""

    runs: int = 0
    elapsed_s: float = 0.0
    requests_sent: int = 0
    retries: int = 0
    rate_limited: int = 0
    refusals: int = 0
    tokens_total: int = 0
    cost_known_usd: Decimal = Decimal(0)
    discarded_cost_usd: Decimal = Decimal(0)  # billed replies thrown away (invalid, then retried)
    models: dict[str, ModelTally] = field(default_factory=dict)

    @property
    def billed_usd(self) -> Decimal:
        """Everything known to be billed: kept replies and discarded ones."""
        return self.cost_known_usd + self.discarded_cost_usd

    def plus(self, other: "Spend") -> "Spend":
        models = {name: ModelTally(m.rows, Counter(m.tokens), m.cost_usd, m.rows_without_cost)
                  for name, m in self.models.items()}
        for name, m in other.models.items():
            mine = models.setdefault(name, ModelTally())
            mine.rows += m.rows
            mine.tokens.update(m.tokens)
            mine.cost_usd += m.cost_usd
            mine.rows_without_cost += m.rows_without_cost
        return Spend(self.runs + other.runs, self.elapsed_s + other.elapsed_s,
                     self.requests_sent + other.requests_sent, self.retries + other.retries,
                     self.rate_limited + other.rate_limited, self.refusals + other.refusals,
                     self.tokens_total + other.tokens_total, self.cost_known_usd + other.cost_known_usd,
                     self.discarded_cost_usd + other.discarded_cost_usd, models)

    def to_json(self) -> str:
        """Exact (Decimals as text), for the state."""
        data = {k: getattr(self, k) for k in _SPEND_COUNTS}
        data.update(cost_known_usd=str(self.cost_known_usd), discarded_cost_usd=str(self.discarded_cost_usd),
                    models={name: [m.rows, dict(m.tokens), str(m.cost_usd), m.rows_without_cost]
                            for name, m in self.models.items()})
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Spend":
        data = json.loads(text)
        models = {name: ModelTally(rows, Counter(tokens), Decimal(cost), without)
                  for name, (rows, tokens, cost, without) in data["models"].items()}
        return cls(**{k: data[k] for k in _SPEND_COUNTS}, cost_known_usd=Decimal(data["cost_known_usd"]),
                   discarded_cost_usd=Decimal(data["discarded_cost_usd"]), models=models)

    def figures(self) -> dict[str, Any]:
        """The JSON-ready summary keys for this spend."""
        models = {}
        for name, model in sorted(self.models.items()):
            models[name] = {
                "rows": model.rows,
                **{k: model.tokens[k] for k in TOKEN_FIELDS},
                "cost_usd": None if model.rows_without_cost else float(model.cost_usd),
            }
        complete = all(m.rows_without_cost == 0 for m in self.models.values())
        return {
            "refusals": self.refusals,
            **{k: sum(m.tokens[k] for m in self.models.values()) for k in TOKEN_FIELDS},
            "total_tokens": self.tokens_total,
            "cost_usd": float(self.billed_usd) if complete else None,
            "cost_usd_known": float(self.billed_usd),
            "discarded_replies_cost_usd": float(self.discarded_cost_usd),
            "models": models,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests_sent": self.requests_sent,
            "retries": self.retries,
            "rate_limited_429": self.rate_limited,
        }


_SPEND_COUNTS = ("runs", "elapsed_s", "requests_sent", "retries", "rate_limited", "refusals", "tokens_total")


@dataclass
class Tally:
    """Running counts of a run: its rows (for the output) and what its requests cost (a :class:`Spend`)."""

    rows_total: int
    statuses: Counter = field(default_factory=Counter)
    error_types: Counter = field(default_factory=Counter)
    models: dict[str, ModelTally] = field(default_factory=dict)
    refusals: int = 0
    resumed: int = 0  # rows taken from the resume journal (billed by an earlier run)
    cached: int = 0  # rows answered by an identical request's reply (billed once, elsewhere)
    retries: int = 0
    rate_limited: int = 0
    rate_limited_seconds: Counter = field(default_factory=Counter)  # Unix second -> 429s in it
    cost_known_usd: Decimal = Decimal(0)
    discarded_cost_usd: Decimal = Decimal(0)  # billed replies thrown away (invalid, then retried)
    api_prompt_tokens: int = 0  # local runs: OpenAI's count of what was sent ...
    api_completion_tokens: int = 0  # ... and of what came back
    tokens_total: int = 0
    requests_sent: int = 0  # HTTP requests sent by this run (every attempt)

    @property
    def rows_done(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return self.statuses[STATUS_ERROR]

    @property
    def not_sent(self) -> int:
        return self.error_types["not_sent"]

    def note_rate_limited(self, wall_s: float) -> None:
        """Count a 429 (rate limited) reply that came at Unix time ``wall_s``."""
        self.rate_limited += 1
        self.rate_limited_seconds[int(wall_s)] += 1

    def add(self, result: RowResult, *, resumed: bool = False) -> None:
        """Count a finished row; a ``resumed`` one (an earlier run's) counts in the rows, not the spend."""
        self.statuses[result.status] += 1
        if result.error_type and result.status == STATUS_ERROR:
            self.error_types[result.error_type] += 1
        if result.cached:
            self.cached += 1
        if resumed:
            self.resumed += 1
            return
        self.retries += max(result.attempts - 1, 0)
        completion = result.completion
        if result.cached:
            return
        if completion is None:
            return
        if completion.refusal:
            self.refusals += 1
        model = self.models.setdefault(completion.model or "(not reported)", ModelTally())
        model.rows += 1
        usage, tokens = completion.usage, model.tokens
        tokens["prompt_tokens"] += usage.prompt_tokens or 0
        tokens["cached_tokens"] += usage.cached_tokens or 0
        tokens["completion_tokens"] += usage.completion_tokens or 0
        tokens["reasoning_tokens"] += usage.reasoning_tokens or 0
        self.tokens_total += usage.total_tokens or 0
        if result.cost_usd is None:
            model.rows_without_cost += 1
        else:
            model.cost_usd += result.cost_usd
            self.cost_known_usd += result.cost_usd

    def add_many(self, result: RowResult, count: int) -> None:
        """Count ``count`` rows with the same result, one that carries no reply (not sent, skipped)."""
        if result.completion is not None or result.attempts:
            raise ValueError("add_many counts rows without a reply or attempts only")
        self.statuses[result.status] += count
        if result.error_type and result.status == STATUS_ERROR:
            self.error_types[result.error_type] += count
        if result.cached:
            self.cached += count

    def spend(self, elapsed_s: float) -> Spend:
        """This run's spend."""
        return Spend(1, elapsed_s, self.requests_sent, self.retries, self.rate_limited, self.refusals,
                     self.tokens_total, self.cost_known_usd, self.discarded_cost_usd, self.models)

    def summary(self, *, elapsed_s: float, extra: dict[str, Any] | None = None,
                earlier: Spend | None = None) -> dict[str, Any]:
        """The job's summary: the output's rows, the job's spend (``earlier`` runs' plus this one's)
        and this run's part under ``this_run``."""
        this = self.spend(elapsed_s)
        job = earlier.plus(this) if earlier is not None else this
        settled = self.rows_done - self.resumed
        return {
            "rows": self.rows_total,
            "ok": self.statuses[STATUS_OK],
            "error": self.statuses[STATUS_ERROR],
            "skipped": self.statuses[STATUS_SKIPPED],
            "refused": self.statuses[STATUS_REFUSED],
            "cached_rows": self.cached,
            "resumed_rows": self.resumed,
            "error_types": dict(self.error_types.most_common()),
            "runs": job.runs,
            **job.figures(),
            "rows_per_s": round(self.rows_done / job.elapsed_s, 2) if job.elapsed_s > 0 else None,
            "this_run": {**this.figures(), "rows_settled": settled, "resumed_rows": self.resumed,
                         "rows_per_s": round(settled / elapsed_s, 2) if elapsed_s > 0 else None,
                         "rate_limited_429_at": times_429(self.rate_limited_seconds)},
            **(extra or {}),
        }


def times_429(per_second: Counter) -> dict[str, int]:
    """When this run's 429s came: ISO 8601 UTC second (minute, when there are more than
    :data:`MAX_429_TIMES` seconds) -> how many, in time order."""
    width = 1 if len(per_second) <= MAX_429_TIMES else 60
    binned: Counter = Counter()
    for second, count in per_second.items():
        binned[second - second % width] += count
    return {datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"): count
            for second, count in sorted(binned.items())}


NOT_SUMMED = ("elapsed_s", "rows_per_s", "runs")  # a run's own figures: set by whoever merges


def merge_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for a run made of parts (Dask partitions): numbers summed (money in Decimal; an
    unknown cost, ``null``, makes the sum unknown), nested tables merged key by key, anything else
    (``stopped``, ``stopped_by``) the first part's that has one."""
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(key for part in parts for key in part):
        values = [part[key] for part in parts if key in part]
        if key in NOT_SUMMED:
            continue
        if all(isinstance(v, dict) for v in values):
            merged[key] = merge_summaries(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) or v is None for v in values) and any(
                v is not None for v in values):
            merged[key] = None if None in values else _add(values)
        else:
            merged[key] = next((v for v in values if v), values[0])
    return merged


def _add(values: list) -> int | float:
    if all(isinstance(v, int) for v in values):
        return sum(values)
    return float(sum(Decimal(str(v)) for v in values))


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table for people."""
    cost = summary.get("cost_usd")
    cost_text = f"${cost:.6f}" if cost is not None else f"unknown (known part ${summary['cost_usd_known']:.6f})"
    lines = [
        f"rows       {summary['rows']:>12,}   ok {summary['ok']:,}  error {summary['error']:,}  "
        f"skipped {summary['skipped']:,}" + (f"  refusals {summary['refusals']:,}" if summary.get("refusals") else ""),
        f"reused     cached {summary.get('cached_rows', 0):,} (identical requests, billed once)  "
        f"resumed {summary.get('resumed_rows', 0):,} (finished by an earlier run)",
        f"tokens     prompt {summary['prompt_tokens']:,} (cached {summary['cached_tokens']:,})  "
        f"completion {summary['completion_tokens']:,} (reasoning {summary['reasoning_tokens']:,})",
    ]
    for name, model in summary["models"].items():
        model_cost = f"${model['cost_usd']:.6f}" if model["cost_usd"] is not None else "unknown (no price)"
        lines.append(f"  {name:<32} {model['rows']:>9,} rows  {model_cost}")
    lines.append(f"cost       {cost_text}")
    rate = summary.get("rows_per_s")
    lines.append(f"elapsed    {summary['elapsed_s']:.1f}s" + (f"  ({rate:,.1f} rows/s)" if rate else "")
                 + f"  retries {summary['retries']:,}  429s {summary['rate_limited_429']:,}")
    this = summary.get("this_run")
    if this and summary.get("runs", 1) > 1:
        this_cost = f"${this['cost_usd']:.6f}" if this["cost_usd"] is not None else "unknown"
        lines.append(f"this run   run {summary['runs']:,} of the job: {this['requests_sent']:,} requests, "
                     f"{this['rows_settled']:,} rows settled, tokens {this['total_tokens']:,}, cost {this_cost}, "
                     f"elapsed {this['elapsed_s']:.1f}s, retries {this['retries']:,}, "
                     f"429s {this['rate_limited_429']:,}")
    if summary["error_types"]:
        lines.append("errors     " + ", ".join(f"{k} {v:,}" for k, v in summary["error_types"].items()))
    equivalent = summary.get("api_equivalent")
    if equivalent:
        api_cost = f"${equivalent['cost_usd']:.6f}" if equivalent["cost_usd"] is not None else "unknown"
        lines.append(f"on the API  {equivalent['model']} would have cost {api_cost} "
                     f"({equivalent['prompt_tokens']:,} prompt + {equivalent['completion_tokens']:,} completion tokens)")
    if summary.get("stopped"):
        lines.append(f"stopped    {summary['stopped']}")
    return "\n".join(lines)


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=False)
