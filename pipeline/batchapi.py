"""OpenAI's Files and Batch APIs: the HTTP exchanges ``chatbatch batch`` needs, and nothing more.

Every call goes through :func:`pipeline.retry.call_with_retries` (the one retry loop), with HTTP
statuses mapped to the same error tree as chat completions (401/403 stop; 5xx, 408/409, 429 and
connection failures are retried). The ``httpx.AsyncClient`` is injected.

Limits of one batch input file, from OpenAI's documentation: :data:`MAX_REQUESTS` requests and
:data:`MAX_FILE_BYTES` bytes, one model per file.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

import httpx

from .errors import AuthFailed, RateLimited, RequestFailed, RowRejected, ServerError, TransportFailure
from .headers import retry_after_s
from .jobspec import Endpoint, RetrySettings
from .retry import call_with_retries

MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
TERMINAL = {"completed", "failed", "expired", "cancelled"}
CHAT_PATH = "/v1/chat/completions"


class BatchClient:
    def __init__(self, http: httpx.AsyncClient, endpoint: Endpoint, retry: RetrySettings,
                 sleep: Callable[[float], Awaitable[Any]], random: Callable[[], float]) -> None:
        self._http = http
        self._base = endpoint.url.rsplit("/chat/completions", 1)[0]
        self._headers = {k: v for k, v in endpoint.headers().items() if k != "Content-Type"}
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
        return await self._call("POST", f"/batches/{batch_id}/cancel")

    async def content(self, file_id: str) -> bytes:
        return await self._call("GET", f"/files/{file_id}/content", raw=True)

    async def _call(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        async def attempt() -> Any:
            try:
                response = await self._http.request(method, self._base + path, headers=self._headers,
                                                    timeout=300.0, **kwargs)
            except httpx.TransportError as exc:
                raise TransportFailure(f"{method} {path}: connection failed: {exc}") from exc
            if response.status_code >= 300:
                raise _failure(method, path, response)
            if raw:
                return response.content
            try:
                return response.json()
            except ValueError as exc:
                raise ServerError(f"{method} {path}: reply is not JSON", http_status=response.status_code) from exc

        outcome = await call_with_retries(attempt, self._retry, sleep=self._sleep, random=self._random)
        if outcome.failure is not None:
            raise outcome.failure
        return outcome.value


def _failure(method: str, path: str, response: httpx.Response) -> RequestFailed:
    status = response.status_code
    try:
        error = response.json().get("error") or {}
        detail = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        detail = response.text[:300]
    message = f"{method} {path}: HTTP {status}: {detail or 'no message'}"
    if status in (401, 403):
        return AuthFailed(message, http_status=status)
    if status == 429:
        return RateLimited(message, http_status=status, retry_after_s=retry_after_s(response.headers))
    if status in (408, 409) or status >= 500:
        return ServerError(message, http_status=status, retry_after_s=retry_after_s(response.headers))
    return RowRejected(message, http_status=status)


def input_line(custom_id: str, body: bytes) -> bytes:
    """One line of a batch input file."""
    return (b'{"custom_id":' + json.dumps(custom_id).encode() + b',"method":"POST","url":"'
            + CHAT_PATH.encode() + b'","body":' + body + b"}\n")
