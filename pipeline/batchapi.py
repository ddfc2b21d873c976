"""OpenAI's Files and Batch APIs: the HTTP exchanges ``chatbatch batch`` needs, and nothing more.

Every call goes through :func:`pipeline.retry.call_with_retries` (the one retry loop), and every
failure through :func:`pipeline.client.http_failure` / :func:`~pipeline.client.transport_failure`,
the same mapping as chat completions: 401/403 and ``insufficient_quota`` stop; 5xx, 408/409, 429,
timeouts and connection failures are retried; the API key is redacted from every message. A cancel
that the server refuses (400, 409: the batch has ended or cannot be cancelled) is not retried. The
``httpx.AsyncClient`` is injected.

Limits of one batch input file, from OpenAI's documentation: :data:`MAX_REQUESTS` requests and
:data:`MAX_FILE_BYTES` bytes, one model per file.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

import httpx

from .client import http_failure, transport_failure
from .errors import BadResponse
from .jobspec import Endpoint, RetrySettings
from .retry import call_with_retries
from .transport import no_reply

MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
TERMINAL = {"completed", "failed", "expired", "cancelled"}
CHAT_PATH = "/v1/chat/completions"
TIMEOUT_S = 300.0  # one Files/Batch call (an upload may be 200 MB)
CANCEL_REFUSED = (400, 409)  # the batch has ended or cannot be cancelled: final, not retried


class BatchClient:
    def __init__(self, http: httpx.AsyncClient, endpoint: Endpoint, retry: RetrySettings,
                 sleep: Callable[[float], Awaitable[Any]], random: Callable[[], float]) -> None:
        self._http = http
        base, _, query = endpoint.url.partition("?")  # a query in base_url (?api-key=...) goes on every call
        self._base, self._query = base.rsplit("/chat/completions", 1)[0], f"?{query}" if query else ""
        self._headers = {k: v for k, v in endpoint.headers().items() if k != "Content-Type"}
        self._secrets = endpoint.secrets
        self._retry, self._sleep, self._random = retry, sleep, random

    async def upload(self, filename: str, content: bytes) -> dict:
        return await self._call("POST", "/files", files={"file": (filename, content, "application/jsonl")},
                                data={"purpose": "batch"})

    async def create(self, input_file_id: str, metadata: dict[str, str]) -> dict:
        return await self._call("POST", "/batches", json={
            "input_file_id": input_file_id, "endpoint": CHAT_PATH, "completion_window": "24h",
            "metadata": metadata})

    async def get(self, batch_id: str) -> dict:
        return await self._call("GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict:
        return await self._call("POST", f"/batches/{batch_id}/cancel", final=CANCEL_REFUSED)

    async def content(self, file_id: str) -> bytes:
        return await self._call("GET", f"/files/{file_id}/content", raw=True)

    async def _call(self, method: str, path: str, *, raw: bool = False, final: tuple[int, ...] = (),
                    **kwargs: Any) -> Any:
        context = f"{method} {path}: "

        async def attempt() -> Any:
            try:
                response = await self._http.request(method, self._base + path + self._query, headers=self._headers,
                                                    timeout=TIMEOUT_S, **kwargs)
            except TimeoutError as exc:
                raise transport_failure(exc, self._secrets, TIMEOUT_S, context=context) from exc
            except httpx.TransportError as exc:
                raise transport_failure(no_reply(exc), self._secrets, TIMEOUT_S, context=context) from exc
            if response.status_code >= 300:
                raise http_failure(response, self._secrets, context=context, final=final)
            if raw:
                return response.content
            try:
                return response.json()
            except ValueError as exc:
                raise BadResponse(f"{context}reply is not JSON", http_status=response.status_code) from exc

        outcome = await call_with_retries(attempt, self._retry, sleep=self._sleep, random=self._random)
        if outcome.failure is not None:
            raise outcome.failure
        return outcome.value


def batch_errors(info: dict) -> str | None:
    """A failed batch's errors (``errors.data``: code, message, line) as one line of text."""
    errors = info.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if not isinstance(data, list) or not data:
        return None
    texts = []
    for error in data:
        if isinstance(error, dict):
            line = f" (line {error['line']})" if error.get("line") is not None else ""
            texts.append(f"{error.get('code') or 'error'}: {error.get('message') or 'no message'}{line}")
    return "; ".join(texts) or None


def input_line(custom_id: str, body: bytes) -> bytes:
    """One line of a batch input file."""
    return (b'{"custom_id":' + json.dumps(custom_id).encode() + b',"method":"POST","url":"'
            + CHAT_PATH.encode() + b'","body":' + body + b"}\n")
