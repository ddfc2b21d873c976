"""One HTTP exchange with an OpenAI-compatible Chat Completions endpoint.

:class:`ChatClient` posts a ready-made JSON body and returns a :class:`~pipeline.records.Completion`,
or raises one of the :mod:`pipeline.errors` classes. :func:`http_failure` and
:func:`transport_failure` are the one place where HTTP statuses and httpx's exceptions are translated —
for chat completions here and for the Files and Batch APIs (:mod:`pipeline.batchapi`) alike. Nothing
here retries or sleeps; :mod:`pipeline.retry` does that.

The HTTP client is injected: :func:`pipeline.transport.make_http_client` builds the production
one (:class:`~pipeline.transport.AiohttpPoster`); unit tests pass an ``httpx.AsyncClient`` built on
``httpx.MockTransport``, used through :class:`~pipeline.transport.HttpxPoster`.

Every message that reaches an error has the endpoint's secrets (the API key, credentials in the
URL) removed — before it is cut to :data:`MAX_ERROR_CHARS` — whatever the server echoed.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Collection

from .errors import (AuthFailed, BadResponse, QuotaExhausted, RateLimited, RequestFailed,
                     RowRejected, ServerError, TimedOut, TransportFailure)
from .headers import rate_limit_info, retry_after_s
from .jobspec import Endpoint
from .records import Completion, Usage
from .redaction import redact, redact_cut
from .transport import ConnectionFailed, HttpxPoster, Poster, Reply, is_poster

if TYPE_CHECKING:
    import httpx

MAX_ERROR_CHARS = 500


class ChatClient:
    """Sends chat-completion bodies to one endpoint."""

    def __init__(self, http: Poster | httpx.AsyncClient, endpoint: Endpoint, timeout_s: float) -> None:
        self._poster = http if is_poster(http) else HttpxPoster(http, timeout_s)
        self._url = endpoint.url
        self._headers = endpoint.headers()
        self._secrets = endpoint.secrets
        self._timeout_s = timeout_s

    async def complete(self, body: bytes) -> Completion:
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._poster.post(self._url, self._headers, body)
        except (TimeoutError, ConnectionFailed) as exc:
            raise transport_failure(exc, self._secrets, self._timeout_s) from exc
        info = rate_limit_info(response.headers)
        if response.status_code == 200:
            try:
                return parse_completion(response.content, self._secrets, info)
            except RequestFailed as exc:
                exc.rate_info = info
                raise
        failure = http_failure(response, self._secrets)
        failure.rate_info = info
        raise failure


def http_failure(response: httpx.Response | Reply, secrets: Collection[str], *, context: str = "",
                 final: Collection[int] = ()) -> RequestFailed:
    """The error for an HTTP error ``response`` (chat, files and batches alike), ``secrets`` (the
    endpoint's key and URL credentials) redacted before the message is cut to length.

    ``context`` prefixes the message (e.g. ``"POST /files: "``); statuses in ``final`` are never
    retried (a 409 on a batch cancel means the batch cannot be cancelled, not "try again").
    """
    status = response.status_code
    kind, code, message = error_fields(response.content, secrets)
    message = f"{context}HTTP {status}: {message}"
    wait_s = retry_after_s(response.headers)
    if status == 429:
        if "insufficient_quota" in (kind, code):
            return QuotaExhausted(message, http_status=status)
        return RateLimited(message, http_status=status, retry_after_s=wait_s)
    if status in (401, 403):
        return AuthFailed(message, http_status=status, error_type=code if status == 403 and code else None)
    if status not in final and (status in (408, 409) or status >= 500):
        return ServerError(message, http_status=status, retry_after_s=wait_s)
    return RowRejected(message, http_status=status, error_type=code or kind or None)


def transport_failure(exc: TimeoutError | ConnectionFailed, secrets: Collection[str], timeout_s: float, *,
                      context: str = "") -> TransportFailure:
    """The error for a request that got no HTTP response: a timeout, or a failed connection
    (see :func:`pipeline.transport.no_reply` for httpx's exceptions)."""
    if isinstance(exc, TimeoutError):
        return TimedOut(f"{context}no reply within {timeout_s:g}s")
    detail = redact_cut(str(exc) or type(exc).__name__, MAX_ERROR_CHARS, secrets)
    return TransportFailure(f"{context}connection failed: {detail}", error_type="connection_error")


def error_fields(content: bytes, secrets: Collection[str] = ()) -> tuple[str | None, str | None, str]:
    """(type, code, message) from an OpenAI error body, tolerating other shapes.

    ``secrets`` are redacted from all three, then the message is cut to :data:`MAX_ERROR_CHARS`
    (in that order: a secret straddling the cut leaves no prefix behind).
    """
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        kind, code = error.get("type"), error.get("code")
        message = str(error.get("message") or kind or code or "no message")
        kind, code = (redact(str(kind), secrets) if kind else None), (redact(str(code), secrets) if code else None)
        return kind, code, redact_cut(message, MAX_ERROR_CHARS, secrets)
    if isinstance(error, str):
        return None, None, redact_cut(error, MAX_ERROR_CHARS, secrets)
    text = content.decode("utf-8", "replace").strip()
    return None, None, (redact_cut(text, MAX_ERROR_CHARS, secrets) or "empty body")


def parse_completion(content: bytes, secrets: Collection[str] = (), rate_info: dict | None = None) -> Completion:
    """A 200 body as a Completion; BadResponse (retried) when it is not a usable completion."""
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise BadResponse("reply is not valid JSON (truncated?)", http_status=200) from exc
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
        detail = error_fields(content, secrets)[2] if isinstance(data, dict) and "error" in data else "no choices"
        raise BadResponse(f"reply has {detail}", http_status=200)
    choices = sorted(choices, key=lambda c: c.get("index") or 0)
    messages = [c.get("message") or {} for c in choices]
    return Completion(
        replies=tuple(_text(m.get("content")) for m in messages),
        finish_reasons=tuple(c.get("finish_reason") for c in choices),
        refusal=next((m["refusal"] for m in messages if m.get("refusal")), None),
        model=data.get("model"),
        response_id=data.get("id"),
        system_fingerprint=data.get("system_fingerprint"),
        usage=_usage(data.get("usage")),
        logprobs=_logprobs(choices[0]),
        service_tier=data.get("service_tier") if isinstance(data.get("service_tier"), str) else None,
        rate_info=rate_info,
    )


def _logprobs(choice: dict) -> tuple | None:
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return None
    return tuple({"token": t.get("token"), "logprob": t.get("logprob")} for t in content if isinstance(t, dict))


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        total_tokens=_int(usage.get("total_tokens")),
        cached_tokens=_int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else None,
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else None,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
