"""The only retry loop in chatbatch, as three small decisions.

* *Should I retry?* — only a :class:`~pipeline.errors.RequestFailed` whose class says ``retryable``
  (429 rate limits, 5xx, 408/409, timeouts — unless ``retry_timeouts`` is off —, connection failures,
  unusable 200 bodies). Fatal errors
  (auth, quota) propagate at once; row errors (400, 404, 422, ...) end the row.
* *How long do I wait?* — exactly what the server asked for (``retry-after-ms``, ``retry-after``,
  reset headers) if it said (the rate budget then spaces the retries, so they do not land
  together); else exponential backoff with full jitter: a uniform draw in
  ``[0, min(backoff_max, backoff_base * 2**(attempt-1))]``. With the defaults the ceilings are
  0.25, 0.5, 1, 2, 4, 8 and 16 s (openai-python's start at 0.5 s): a transient failure (a 5xx, a
  reset, a cut-off body) is retried within a quarter of a second, so the last rows of a run do not
  wait seconds for nothing, while the eight attempts still span up to ~32 s, so a short outage of
  the endpoint fails no row (raise ``max_attempts`` for longer ones).
* *When do I stop?* — after ``max_attempts`` attempts, or when the run is stopping.

``sleep`` and ``random`` are injected so tests run instantly and the same way every time. Every
attempt calls ``attempt()`` afresh, so it goes back through the rate limiter each time::

    outcome = await call_with_retries(send_once, settings, sleep=asyncio.sleep, random=random.random)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, TypeVar

from .errors import RequestFailed, TimedOut
from .jobspec import RetrySettings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """The end of a row's attempts: a value, or the last failure, and how many attempts it took."""

    value: T | None
    failure: RequestFailed | None
    attempts: int
    stopped: bool = False


def backoff_s(settings: RetrySettings, attempt: int, failure: RequestFailed, random: Callable[[], float]) -> float:
    """How long to wait after ``attempt`` (1-based) failed with ``failure``."""
    if failure.retry_after_s is not None:  # the server said: exactly that
        return failure.retry_after_s
    ceiling = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempt - 1))
    return random() * ceiling


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    settings: RetrySettings,
    *,
    sleep: Callable[[float], Awaitable[object]],
    random: Callable[[], float],
    stopping: Callable[[], bool] = lambda: False,
    on_retry: Callable[[RequestFailed, float], None] = lambda failure, delay: None,
) -> Outcome[T]:
    """Run ``attempt`` until it succeeds, fails for good, runs out of attempts, or the run stops.

    Fatal failures (``failure.fatal``) are raised to the caller, which stops the run.
    """
    failure: RequestFailed | None = None
    for number in range(1, settings.max_attempts + 1):
        if stopping():
            return Outcome(None, failure, number - 1, stopped=True)
        try:
            return Outcome(await attempt(), None, number)
        except RequestFailed as exc:
            exc.attempts = number
            if exc.fatal:
                raise
            failure = exc
        if not _retryable(failure, settings) or number == settings.max_attempts:
            return Outcome(None, failure, number)
        delay = backoff_s(settings, number, failure, random)
        on_retry(failure, delay)
        await sleep(delay)
    raise AssertionError("unreachable: the loop returns on its last attempt")


def _retryable(failure: RequestFailed, settings: RetrySettings) -> bool:
    return failure.retryable and (settings.retry_timeouts or not isinstance(failure, TimedOut))
