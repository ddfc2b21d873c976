"""The production HTTP client: httpx's API over aiohttp's connection pool, with a short send path.

Measured on this machine (``bench/transport.py``, one core, fast local server): httpx's own pool
collapses under concurrency (about 1,000 req/s at 16 in flight, under 150 req/s at 256), while httpx
over the ``httpx-aiohttp`` transport holds about 4,400–4,900 req/s and 89% of the ideal rate at
256 in flight with 200 ms latency. Of what is left, half the CPU per request goes to
``AsyncClient.send``'s machinery — auth flow, redirect handling, the cookie jar, event hooks — none of
which a chat-completions POST uses. :class:`DirectClient` is an ``httpx.AsyncClient`` whose
:meth:`send` hands a ready-built request straight to its transport, which about doubles the client's
throughput (bench/transport.py, "direct" row).

Code that takes an ``httpx.AsyncClient`` keeps working with either: unit tests inject a plain
``httpx.AsyncClient(transport=httpx.MockTransport(...))``.

**Proxies.** :func:`proxy_for` picks the proxy for the endpoint from ``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``ALL_PROXY`` and ``NO_PROXY`` (either case, lowercase first), as curl, Python's
urllib and httpx (hence ``chatbatch batch``) read them; the CLI passes in the environment and the
client sends through that proxy (``CONNECT`` for https).
"""

from __future__ import annotations

import urllib.request
from typing import Mapping
from urllib.parse import urlsplit

import httpx


class DirectClient(httpx.AsyncClient):
    """An AsyncClient whose ``send`` skips auth, redirects, cookies and hooks (none are used here)."""

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs) -> httpx.Response:
        if stream or kwargs:
            return await super().send(request, stream=stream, **kwargs)
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        response.request = request
        return response


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


def make_http_client(concurrency: int, timeout_s: float, proxy: str | None = None) -> httpx.AsyncClient:
    """The production client, its pool sized for ``concurrency`` connections, through ``proxy``."""
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = AiohttpTransport(limits=limits, proxy=httpx.Proxy(proxy) if proxy else None)
    return DirectClient(transport=transport, timeout=timeout_s, follow_redirects=False)
