"""Value types passed between the stages: a parsed completion, its usage, and a row's result.

Nothing here talks to the network or touches a table; these are plain data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Mapping

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"
STATUS_REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts exactly as the API's ``usage`` object reported them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """One successful chat completion, reduced to what the output keeps."""

    replies: tuple[str | None, ...]
    finish_reasons: tuple[str | None, ...]
    refusal: str | None
    model: str | None
    response_id: str | None
    system_fingerprint: str | None
    usage: Usage
    http_status: int = 200
    rate_info: Mapping[str, float] | None = None  # the reply's rate-limit headers, read
    logprobs: tuple | None = None  # the first choice's token logprobs ({token, logprob}), when asked
    service_tier: str | None = None  # the tier that served the request, as the reply says (for its price)


@dataclass(slots=True)
class RowResult:
    """What happened to one input row; one field per output column."""

    status: str
    attempts: int = 0
    completion: Completion | None = None
    error_type: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    cost_usd: Decimal | None = None
    latency_s: float | None = None
    cached: bool = False  # answered from an identical request's reply: nothing new was billed
    fields: tuple | None = None  # structured-output column values (see pipeline.structured)
    finished_at: float | None = None  # when its final answer came (Unix seconds); None: no request


def skipped_result(reason: str) -> RowResult:
    return RowResult(status=STATUS_SKIPPED, error_type="empty_prompt", error_message=reason)


def not_sent_result(reason: str) -> RowResult:
    """A row the run never sent because it stopped first (abort or interrupt)."""
    return RowResult(status=STATUS_ERROR, error_type="not_sent", error_message=reason)


def reused_result(result: RowResult) -> RowResult:
    """A copy of ``result`` for another row that asked the identical request: costs nothing new."""
    return replace(result, cached=True, cost_usd=Decimal(0) if result.completion else None,
                   attempts=0, latency_s=None)


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # built once: a row each


def result_to_json(result: RowResult) -> str:
    """A compact, lossless JSON form of a result, for the resume journal and the response cache."""
    c = result.completion
    completion = None if c is None else [
        list(c.replies), list(c.finish_reasons), c.refusal, c.model, c.response_id,
        c.system_fingerprint, c.http_status,
        [c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens,
         c.usage.cached_tokens, c.usage.reasoning_tokens]]
    return _encode([result.status, result.attempts, completion, result.error_type, result.error_message,
                    result.http_status, None if result.cost_usd is None else str(result.cost_usd),
                    result.latency_s, result.cached, result.fields, result.finished_at])


def result_from_json(text: str | bytes) -> RowResult:
    """The result :func:`result_to_json` wrote (one journaled before ``finished_at`` existed has none)."""
    status, attempts, c, error_type, error_message, http_status, cost, latency, cached, fields, *rest = \
        json.loads(text)
    completion = None if c is None else Completion(
        replies=tuple(c[0]), finish_reasons=tuple(c[1]), refusal=c[2], model=c[3], response_id=c[4],
        system_fingerprint=c[5], http_status=c[6], usage=Usage(*c[7]))
    return RowResult(status=status, attempts=attempts, completion=completion, error_type=error_type,
                     error_message=error_message, http_status=http_status,
                     cost_usd=None if cost is None else Decimal(cost), latency_s=latency, cached=cached,
                     fields=tuple(fields) if fields is not None else None, finished_at=rest[0] if rest else None)
