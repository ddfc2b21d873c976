"""The production HTTP client: a short POST path over aiohttp's connection pool.

Measured on this machine (``bench/transport.py``, one core, fast local server): httpx's own pool
collapses under concurrency (about 1,000 req/s at 16 in flight, under 150 req/s at 256), while
httpx over the ``httpx-aiohttp`` transport holds about 4,400–4,900 req/s. Of what is left, most of
the client's CPU per request went to httpx's model objects (``Request``, ``Response``, ``Headers``,
the byte-stream iterators) wrapped around aiohttp's own. :class:`AiohttpPoster` skips them: it POSTs
a ready-made body with aiohttp and returns a :class:`Reply` (status, headers, body), the only
things :mod:`pipeline.client` reads (``bench/transport.py``, "direct" row).

:class:`HttpxPoster` does the same over any ``httpx.AsyncClient``: unit tests inject one built on
``httpx.MockTransport``. The Files and Batch APIs (:mod:`pipeline.batchapi`) keep httpx.

**Proxies.** :func:`proxy_for` picks the proxy for the endpoint from ``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``ALL_PROXY`` and ``NO_PROXY`` (either case, lowercase first), as curl, Python's
urllib and httpx (hence ``chatbatch batch``) read them; the CLI passes in the environment and the
client sends through that proxy (``CONNECT`` for https).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP reply, fully read: what :mod:`pipeline.client` needs and nothing more."""

    status_code: int
    headers: Mapping[str, str]  # looked up case-insensitively
    content: bytes


class Poster(Protocol):
    """What :class:`pipeline.client.ChatClient` sends through."""

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Reply: ...

    async def aclose(self) -> None: ...


class AiohttpPoster:
    """POSTs ready-made bodies to one URL over aiohttp's connection pool (the production path).

    A request that gets no HTTP reply raises ``TimeoutError`` or :class:`ConnectionFailed` (aiohttp's
    exception as the cause), which :func:`pipeline.client.transport_failure` maps.
    """

    def __init__(self, concurrency: int, proxy: str | None = None) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._concurrency, self._proxy = concurrency, proxy
        self._session: aiohttp.ClientSession | None = None  # opened by the first request

    def _open(self):
        aiohttp = self._aiohttp
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None),  # the caller times each request
            cookie_jar=aiohttp.DummyCookieJar())  # no state carried from one request to the next
        return self._session

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """One POST. A redirect is returned as it is, never followed: following it would re-send the
        body and headers such as Azure's ``api-key`` (which aiohttp keeps) to another host."""
        try:
            async with (self._session or self._open()).post(url, data=body, headers=headers, proxy=self._proxy,
                                          allow_redirects=False) as response:
                return Reply(response.status, response.headers, await response.read())
        except self._aiohttp.ClientError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise ConnectionFailed(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpxPoster:
    """The same over an ``httpx.AsyncClient`` (unit tests inject one on ``httpx.MockTransport``)."""

    def __init__(self, http: httpx.AsyncClient, timeout_s: float) -> None:
        import httpx

        self._http = http
        self._extensions = {"timeout": httpx.Timeout(timeout_s).as_dict()}

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Reply:
        import httpx

        try:
            response = await self._http.post(url, content=body, headers=headers, extensions=self._extensions)
        except httpx.TransportError as exc:
            raise no_reply(exc) from exc
        return Reply(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        await self._http.aclose()


class ConnectionFailed(Exception):
    """A request that got no HTTP reply and did not time out: refused, reset, or cut off."""


def no_reply(exc: httpx.TransportError) -> TimeoutError | ConnectionFailed:
    """httpx's transport exception as ``TimeoutError`` or :class:`ConnectionFailed`.

    httpx-aiohttp maps every aiohttp connection error (refused, reset, server disconnected) to
    ``httpx.ConnectTimeout``; what caused it tells a real timeout from a failed connection.
    """
    import httpx

    cause = exc.__cause__
    if isinstance(exc, httpx.TimeoutException) and (cause is None or isinstance(cause, TimeoutError)):
        return TimeoutError(str(exc) or "timed out")
    return ConnectionFailed(str(exc) or type(exc).__name__)


def proxy_for(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy URL the environment ``env`` names for requests to ``url`` (None: go direct)."""
    proxies: dict[str, str] = {}
    for name in sorted(env, key=str.islower):  # lowercase names win, as in urllib and curl
        if name.lower().endswith("_proxy") and env[name]:
            proxies[name[:-6].lower()] = env[name]
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not proxies or (proxies.get("no") and urllib.request.proxy_bypass_environment(
            f"{host}:{parts.port}" if parts.port else host, proxies)):
        return None
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    return proxy if proxy is None or "://" in proxy else "http://" + proxy


def is_poster(http: object) -> bool:
    return isinstance(http, (AiohttpPoster, HttpxPoster))


def make_http_client(concurrency: int, timeout_s: float, proxy: str | None = None) -> AiohttpPoster:
    """The production client, its pool sized for ``concurrency`` connections, through ``proxy``.

    ``timeout_s`` is enforced per request by :class:`pipeline.client.ChatClient`.
    """
    return AiohttpPoster(concurrency, proxy)
