"""The run summary: rows by status, tokens, cost per model, time, retries and 429s.

:class:`Tally` counts as rows finish (cheap enough to call per row); :meth:`Tally.summary` turns the
counts into a JSON-ready dict, which is printed as a table (:func:`format_summary`), written beside
the output as ``<output>.summary.json`` and stored in the Parquet file's key-value metadata.

Rows answered from an identical request (``cached``) count apart and add no tokens or cost: they
were billed once, on the row that sent the request. Rows resumed from an earlier run's journal count
in full — the summary describes the whole output, and says how many rows were resumed.

Costs add up in Decimal from exact per-row costs. Rows whose model has no known price make that
model's cost, and the total, ``null`` — with ``cost_usd_known`` giving the part that is known.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .records import STATUS_ERROR, STATUS_OK, STATUS_REFUSED, STATUS_SKIPPED, RowResult

TOKEN_FIELDS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")


@dataclass
class ModelTally:
    rows: int = 0
    tokens: Counter = field(default_factory=Counter)
    cost_usd: Decimal = Decimal(0)
    rows_without_cost: int = 0


@dataclass
class Tally:
    """Running counts of a run; every field is derived from finished rows."""

    rows_total: int
    statuses: Counter = field(default_factory=Counter)
    error_types: Counter = field(default_factory=Counter)
    models: dict[str, ModelTally] = field(default_factory=dict)
    refusals: int = 0
    resumed: int = 0  # rows taken from the resume journal (billed by an earlier run)
    cached: int = 0  # rows answered by an identical request's reply (billed once, elsewhere)
    retries: int = 0
    rate_limited: int = 0
    cost_known_usd: Decimal = Decimal(0)
    discarded_cost_usd: Decimal = Decimal(0)  # billed replies thrown away (invalid, then retried)
    api_prompt_tokens: int = 0  # local runs: OpenAI's count of what was sent ...
    api_completion_tokens: int = 0  # ... and of what came back
    tokens_total: int = 0

    @property
    def rows_done(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return self.statuses[STATUS_ERROR]

    def add(self, result: RowResult) -> None:
        self.statuses[result.status] += 1
        self.retries += max(result.attempts - 1, 0)
        if result.error_type and result.status == STATUS_ERROR:
            self.error_types[result.error_type] += 1
        completion = result.completion
        if result.cached:
            self.cached += 1
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

    def summary(self, *, elapsed_s: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        models = {}
        for name, model in sorted(self.models.items()):
            models[name] = {
                "rows": model.rows,
                **{k: model.tokens[k] for k in TOKEN_FIELDS},
                "cost_usd": None if model.rows_without_cost else float(model.cost_usd),
            }
        complete = all(m.rows_without_cost == 0 for m in self.models.values())
        return {
            "rows": self.rows_total,
            "ok": self.statuses[STATUS_OK],
            "error": self.statuses[STATUS_ERROR],
            "skipped": self.statuses[STATUS_SKIPPED],
            "refused": self.statuses[STATUS_REFUSED],
            "refusals": self.refusals,
            "cached_rows": self.cached,
            "resumed_rows": self.resumed,
            "error_types": dict(self.error_types.most_common()),
            **{k: sum(m.tokens[k] for m in self.models.values()) for k in TOKEN_FIELDS},
            "total_tokens": self.tokens_total,
            "cost_usd": float(self.cost_known_usd + self.discarded_cost_usd) if complete else None,
            "cost_usd_known": float(self.cost_known_usd + self.discarded_cost_usd),
            "discarded_replies_cost_usd": float(self.discarded_cost_usd),
            "models": models,
            "elapsed_s": round(elapsed_s, 3),
            "rows_per_s": round(self.rows_done / elapsed_s, 2) if elapsed_s > 0 else None,
            "retries": self.retries,
            "rate_limited_429": self.rate_limited,
            **(extra or {}),
        }


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
