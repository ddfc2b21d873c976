"""``chatbatch estimate``: what a job will cost and how long it will take, without sending anything.

Reads the whole input, renders every prompt exactly as ``run`` would, and counts:

* rows, rows to send, skipped rows, unreadable messages cells; identical requests are counted once
  (``run`` sends them once), so ``requests`` and ``prompt_tokens`` are what will be billed;
* prompt tokens — exact for OpenAI models (tiktoken, see :mod:`pipeline.tokens`), else estimated
  and flagged ``prompt_tokens_exact: false``;
* completion tokens: an upper bound (``max_completion_tokens`` × n per request, else the model's
  largest reply) and, when an earlier run of the job left an output, a likely figure (its mean
  completion tokens per ok row);
* cost: ``cost_usd_max`` (every prompt at the uncached input price, every reply at its bound),
  ``cost_usd_likely``, and both at Batch API prices; with ``--local``, $0, beside
  ``api_equivalent_cost_usd_max``/``_likely`` (the job's API model; replies capped as a local run
  caps them);
* duration under the job's ``rpm`` / ``tpm`` (the slower of the two);
* problems a run would hit: rows whose prompt plus maximum output exceeds the context window.

Missing columns and unreadable input fail before counting, as they would in ``run``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from .cache import request_digest
from .jobspec import Job
from .local import DEFAULT_MAX_TOKENS
from .models import model_limits
from .pricing import MILLION, PriceTable
from .prompts import RowRenderer
from .records import RowResult
from .sources import Source
from .tokens import TokenCounter

SAMPLE_PROBLEM_ROWS = 5


@dataclass
class Counts:
    rows: int = 0
    requests: int = 0
    duplicates: int = 0
    skipped: int = 0
    invalid: int = 0
    prompt_tokens: int = 0
    largest_prompt: int = 0
    over_context: int = 0
    over_context_rows: list[int] = field(default_factory=list)


def estimate(job: Job, source: Source, prices: PriceTable, counter: TokenCounter) -> dict[str, Any]:
    """The figures, as one JSON-ready dict."""
    started = time.monotonic()
    limits = model_limits(job.model)
    max_output = job.max_output_tokens or (DEFAULT_MAX_TOKENS if job.local else None) or (
        limits.max_output_tokens if limits else None)
    counts = _count(job, source, counter, limits.context_window if limits else None, max_output)
    choices = job.choices_per_request
    completion_max = max_output * choices * counts.requests if max_output is not None else None
    likely_per_request = _likely_completion_tokens(job.output_path, job.column_prefix)
    completion_likely = round(likely_per_request * counts.requests) if likely_per_request is not None else None
    price_name = prices.resolve(job.model)
    price = prices.models.get(price_name) if price_name else None

    def cost(completion: int | None, batch: bool = False) -> float | None:
        if price is None or completion is None:
            return None
        rates = (price.batch_input, price.batch_output) if batch else (price.input, price.output)
        if None in rates:
            return None
        return float((counts.prompt_tokens * rates[0] + completion * rates[1]) / MILLION)

    return {
        "model": job.model,
        "rows": counts.rows,
        "requests": counts.requests,
        "duplicate_rows": counts.duplicates,
        "skipped_rows": counts.skipped,
        "invalid_rows": counts.invalid,
        "prompt_tokens": counts.prompt_tokens,
        "prompt_tokens_exact": counter.exact,
        "encoding": counter.encoding_name,
        "largest_prompt_tokens": counts.largest_prompt,
        "completion_tokens_max": completion_max,
        "completion_tokens_likely": completion_likely,
        "completion_tokens_likely_source": str(job.output_path) if likely_per_request is not None else None,
        "price_model": price_name,
        "prices_as_of": prices.as_of,
        **_costs(job, cost(completion_max), cost(completion_likely)),
        "batch_cost_usd_max": cost(completion_max, batch=True),
        "batch_cost_usd_likely": cost(completion_likely, batch=True),
        "duration_s": _duration_s(job, counts, completion_max),
        "context_window": limits.context_window if limits else None,
        "rows_over_context_window": counts.over_context,
        "rows_over_context_window_sample": counts.over_context_rows,
        "max_cost_usd": job.max_cost_usd,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def _costs(job: Job, at_most: float | None, likely: float | None) -> dict[str, Any]:
    """The cost figures; on a local model $0, beside what the job's API model would have cost."""
    if not job.local:
        return {"cost_usd_max": at_most, "cost_usd_likely": likely}
    return {"local": True, "cost_usd_max": 0.0, "cost_usd_likely": 0.0 if likely is not None else None,
            "api_equivalent_cost_usd_max": at_most, "api_equivalent_cost_usd_likely": likely}


def _count(job: Job, source: Source, counter: TokenCounter, context: int | None, max_output: int | None) -> Counts:
    renderer = RowRenderer.for_job(job, counter)
    counts, seen = Counts(), set()
    url = job.endpoint.url
    for batch in source.batches(65536):
        for item in renderer.render_batch(batch):
            row = counts.rows
            counts.rows += 1
            if isinstance(item, RowResult):
                counts.skipped += item.status == "skipped"
                counts.invalid += item.status == "error"
                continue
            body, prompt_tokens = item
            digest = hash(request_digest(url, body)) if job.dedupe else row
            if digest in seen:
                counts.duplicates += 1
                continue
            seen.add(digest)
            counts.requests += 1
            counts.prompt_tokens += prompt_tokens
            counts.largest_prompt = max(counts.largest_prompt, prompt_tokens)
            if context is not None and prompt_tokens + (max_output or 0) > context:
                counts.over_context += 1
                if len(counts.over_context_rows) < SAMPLE_PROBLEM_ROWS:
                    counts.over_context_rows.append(row)
    return counts


def _likely_completion_tokens(output: Path, prefix: str = "") -> float | None:
    """Mean completion tokens per ok, uncached row of an earlier run's output, if there is one.

    The output's columns are read through the job's ``column_prefix`` (``llm_status``, ...).
    """
    status, tokens, cached = prefix + "status", prefix + "completion_tokens", prefix + "cached"
    try:
        names = pq.read_schema(output).names
        table = pq.read_table(output, columns=[c for c in (status, tokens, cached) if c in names])
    except (OSError, ValueError, KeyError):
        return None
    if status not in names or tokens not in names:
        return None
    import pyarrow.compute as pc

    fresh_ok = pc.equal(table[status], "ok")
    if cached in names:
        fresh_ok = pc.and_(fresh_ok, pc.invert(pc.fill_null(table[cached], False)))
    counts = pc.filter(table[tokens], fresh_ok)
    return pc.mean(counts).as_py() if len(counts) else None


def _duration_s(job: Job, counts: Counts, completion_max: int | None) -> float | None:
    """Seconds the requests take at the configured limits (None when no limit is set)."""
    spans = []
    if job.limits.requests_per_minute:
        spans.append(60.0 * counts.requests / job.limits.requests_per_minute)
    if job.limits.tokens_per_minute:
        spans.append(60.0 * (counts.prompt_tokens + (completion_max or 0)) / job.limits.tokens_per_minute)
    return round(max(spans), 1) if spans else None


def _cost_line(figures: dict[str, Any], money: Callable[[float | None], str]) -> str:
    likely = figures["completion_tokens_likely"] is not None
    if figures.get("local"):
        return (f"cost         $0 (local model); on the API {figures['model']} at most "
                f"{money(figures['api_equivalent_cost_usd_max'])}"
                + (f", likely {money(figures['api_equivalent_cost_usd_likely'])}" if likely else ""))
    return (f"cost         at most {money(figures['cost_usd_max'])}"
            + (f", likely {money(figures['cost_usd_likely'])}" if likely else ""))


def format_estimate(figures: dict[str, Any]) -> str:
    def money(value: float | None) -> str:
        return f"${value:,.4f}" if value is not None else "unknown"

    exact = "exact, " + str(figures["encoding"]) if figures["prompt_tokens_exact"] else "estimated: no tokenizer for this model"
    likely = figures["completion_tokens_likely"]
    duration = figures["duration_s"]
    lines = [
        f"model        {figures['model']} (prices as of {figures['prices_as_of']})",
        f"rows         {figures['rows']:,}: {figures['requests']:,} requests, {figures['duplicate_rows']:,} duplicates "
        f"(sent once), {figures['skipped_rows']:,} skipped, {figures['invalid_rows']:,} unreadable",
        f"prompt       {figures['prompt_tokens']:,} tokens ({exact}); largest {figures['largest_prompt_tokens']:,}",
        "completion   at most " + (f"{figures['completion_tokens_max']:,}" if figures["completion_tokens_max"] is not None
                                   else "unknown") + " tokens" + (f"; likely {likely:,} (from the last run)" if likely is not None else ""),
        _cost_line(figures, money),
        f"batch API    at most {money(figures['batch_cost_usd_max'])}" + (
            f", likely {money(figures['batch_cost_usd_likely'])}" if likely is not None else ""),
        "duration     " + (f"about {duration / 60:,.1f} min at the configured rpm/tpm" if duration is not None
                           else "not bounded by the job's limits (no rpm/tpm set)"),
    ]
    if figures["rows_over_context_window"]:
        lines.append(f"problem      {figures['rows_over_context_window']:,} rows exceed the {figures['context_window']:,}-token "
                     f"context window with the maximum output (rows {figures['rows_over_context_window_sample']})")
    if figures["max_cost_usd"] is not None and figures["cost_usd_max"] is not None \
            and figures["cost_usd_max"] > figures["max_cost_usd"]:
        lines.append(f"note         the worst case exceeds max_cost ${figures['max_cost_usd']}: the run may stop at the cap")
    return "\n".join(lines)

