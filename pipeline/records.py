"""Value types passed between the stages: a parsed completion, its usage, and a row's result.

Nothing here talks to the network or touches a table; these are plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"


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


def skipped_result(reason: str) -> RowResult:
    return RowResult(status=STATUS_SKIPPED, error_type="empty_prompt", error_message=reason)


def not_sent_result(reason: str) -> RowResult:
    """A row the run never sent because it stopped first (abort or interrupt)."""
    return RowResult(status=STATUS_ERROR, error_type="not_sent", error_message=reason)
