"""Reading the server's rate-limit and retry headers.

OpenAI sends ``retry-after-ms`` / ``retry-after`` on 429s and, on every reply,
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``. The reset values are Go-style durations;
forms seen in the wild: ``"1s"``, ``"6m0s"``, ``"547ms"``, ``"2m52.8s"``, ``"1h2m"``, plain seconds
(``"20"``, ``"0.5"``)::

    >>> parse_duration_s("2m52.8s")
    172.8
    >>> parse_duration_s("547ms")
    0.547
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from typing import Mapping

_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


def parse_duration_s(text: str | None) -> float | None:
    """Seconds in a Go-style duration or a plain number; None when absent or unreadable."""
    if text is None:
        return None
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return max(value, 0.0) if math.isfinite(value) else None
    total, position = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    return total if position == len(text) and position > 0 else None


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long the server asked us to wait, from the most precise header it sent."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    after = headers.get("retry-after")
    if after is not None:
        seconds = parse_duration_s(after)
        if seconds is not None:
            return seconds
        try:
            moment = email.utils.parsedate_to_datetime(after).timestamp()
        except (TypeError, ValueError):
            moment = None
        if moment is not None:
            return max(moment - (time.time() if now is None else now), 0.0)
    return reset_after_s(headers)


def reset_after_s(headers: Mapping[str, str]) -> float | None:
    """Time until an exhausted limit resets (or the longest reset sent when none says exhausted)."""
    resets, exhausted = [], []
    for kind in ("requests", "tokens"):
        reset = parse_duration_s(headers.get(f"x-ratelimit-reset-{kind}"))
        if reset is None:
            continue
        resets.append(reset)
        if headers.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0":
            exhausted.append(reset)
    chosen = exhausted or resets
    return max(chosen) if chosen else None


_NAMES = {
    "limit_requests": ("x-ratelimit-limit-requests", "x-ratelimit-limit-requests-minute", "x-ratelimit-limit-req-minute"),
    "limit_tokens": ("x-ratelimit-limit-tokens", "x-ratelimit-limit-tokens-minute"),
    "remaining_requests": ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-requests-minute",
                           "x-ratelimit-remaining-req-minute"),
    "remaining_tokens": ("x-ratelimit-remaining-tokens", "x-ratelimit-remaining-tokens-minute"),
}


def rate_limit_info(headers: Mapping[str, str]) -> dict[str, float] | None:
    """The per-minute limits and what remains of them, from whichever header forms the server sent.

    OpenAI (and Groq, and most compatible servers) send ``x-ratelimit-{limit,remaining}-{requests,
    tokens}``; Azure OpenAI sends the ``remaining`` pair (and, on newer deployments, the limits);
    some providers add a ``-minute`` suffix (``x-ratelimit-limit-tokens-minute``,
    ``x-ratelimit-remaining-req-minute``). Returns None when none is present.
    """
    found = {}
    for field, names in _NAMES.items():
        for name in names:
            value = headers.get(name)
            if value is not None:
                try:
                    found[field] = float(value)
                except ValueError:
                    pass
                break
    return found or None
