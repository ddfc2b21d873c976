"""Keeping the run's secrets out of everything chatbatch prints or stores.

A run's secrets are the API key in use (from ``--api-key``, the environment, ``api_key_env`` or
Azure's variables) and any credentials written into a URL: ``https://user:password@host/...``,
``?api-key=...`` (or any query parameter named like a key, token, secret or signature). Where text
leaves the process — an error message (redacted *before* it is cut to length), the CLI's messages,
the summary — :func:`redact` replaces every occurrence of each with ``[redacted]``, whatever a
server echoed back::

    >>> redact("HTTP 401: Incorrect API key provided: sk-abc123", ("sk-abc123",))
    'HTTP 401: Incorrect API key provided: [redacted]'
    >>> public_url("https://me:pw@example.com/v1/chat/completions?api-key=abc123&api-version=1")
    'https://example.com/v1/chat/completions?api-version=1'
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 4  # shorter values are not treated as secrets (they would redact ordinary words)
_SECRET_PARAM = re.compile(r"key|token|secret|sig|password|passwd|auth|credential", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of every secret replaced by ``[redacted]`` (longest first)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_CHARS and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_cut(text: str, limit: int, secrets: Iterable[str]) -> str:
    """Redact, then cut to ``limit`` characters: a secret straddling the cut never leaks a prefix."""
    return redact(text, secrets)[:limit]


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The credentials written into ``url``: its password (and ``user:password``), key-like query values."""
    if not url:
        return ()
    try:
        parts = urlsplit(url)
        found = [parts.password]
        found += [value for name, value in parse_qsl(parts.query, keep_blank_values=True)
                  if _SECRET_PARAM.search(name)]
    except ValueError:
        return ()
    secrets = {value for value in found if value}
    if parts.netloc and "@" in parts.netloc:
        secrets.add(parts.netloc.rsplit("@", 1)[0])  # the whole userinfo, as written
    return tuple(secrets | {unquote(s) for s in secrets})


def public_url(url: str) -> str:
    """``url`` without its credentials (user, password, key-like query parameters)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        query = urlencode([(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True)
                           if not _SECRET_PARAM.search(name)])
    except ValueError:
        return "(a URL that cannot be parsed)"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
