"""The retry loop's three decisions, with injected sleep and randomness (no real waiting)."""

import asyncio

import pytest

from pipeline.errors import AuthFailed, BadResponse, RateLimited, RowRejected, ServerError, TransportFailure
from pipeline.headers import parse_duration_s, retry_after_s
from pipeline.jobspec import RetrySettings
from pipeline.retry import backoff_s, call_with_retries


@pytest.mark.parametrize("text, seconds", [
    ("1s", 1.0), ("6m0s", 360.0), ("547ms", 0.547), ("2m52.8s", 172.8), ("20", 20.0), ("0.5", 0.5),
    ("1h2m", 3720.0), ("250us", 0.00025), ("bogus", None), ("", None), (None, None), ("5x", None),
])
def test_duration_forms_seen_in_the_wild(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds) if seconds is not None else parse_duration_s(text) is None


def test_retry_after_prefers_ms_then_seconds_then_http_date_then_resets():
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after": "Thu, 01 Jan 2026 00:00:10 GMT"}, now=1767225600.0) == 10.0
    exhausted = {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s",
                 "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after_s(exhausted) == 360.0
    assert retry_after_s({"x-ratelimit-reset-requests": "547ms"}) == 0.547
    assert retry_after_s({}) is None


def test_backoff_is_full_jitter_capped_unless_the_server_said():
    settings = RetrySettings(max_attempts=10, backoff_base_s=1.0, backoff_max_s=8.0)
    failure = ServerError("x")
    assert backoff_s(settings, 1, failure, lambda: 1.0) == 1.0
    assert backoff_s(settings, 3, failure, lambda: 0.5) == 2.0
    assert backoff_s(settings, 9, failure, lambda: 1.0) == 8.0  # capped
    assert backoff_s(settings, 2, failure, lambda: 0.0) == 0.0


@pytest.mark.parametrize("failure", [ServerError("502"), TransportFailure("reset"), BadResponse("cut off")])
def test_a_transient_failure_is_retried_within_a_quarter_second_then_longer(failure):
    """The default schedule: full jitter under ceilings 0.25, 0.5, 1, 2, 4 s, capped at backoff_max."""
    settings = RetrySettings()
    ceilings = [backoff_s(settings, attempt, failure, lambda: 1.0) for attempt in range(1, 6)]
    assert ceilings == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0])
    assert backoff_s(settings, 1, failure, lambda: 0.5) == pytest.approx(0.125)  # full jitter
    assert backoff_s(settings, 12, failure, lambda: 1.0) == settings.backoff_max_s  # capped


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_a_wait_the_server_asked_for_is_honoured_exactly(jitter):
    settings = RetrySettings()
    for asked in (0.05, 0.3, 7.0, 120.0):
        assert backoff_s(settings, 3, RateLimited("x", retry_after_s=asked), lambda: jitter) == asked
        assert backoff_s(settings, 1, ServerError("503", retry_after_s=asked), lambda: jitter) == asked


class Script:
    """An attempt function that raises the scripted failures, then succeeds."""

    def __init__(self, *failures):
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def run(script, settings=RetrySettings(max_attempts=4), stopping=lambda: False):
    slept, retried = [], []

    async def sleep(seconds):
        slept.append(seconds)

    outcome = asyncio.run(call_with_retries(script, settings, sleep=sleep, random=lambda: 0.5,
                                            stopping=stopping, on_retry=lambda f, d: retried.append(f)))
    return outcome, slept, retried


def test_transient_failures_are_retried_until_success():
    script = Script(ServerError("500"), TransportFailure("reset"), RateLimited("429", retry_after_s=2.0))
    outcome, slept, retried = run(script)
    assert outcome.value == "done" and outcome.attempts == 4 and script.calls == 4
    assert slept == [0.125, 0.25, 2.0]  # half the 0.25 and 0.5 ceilings; the server's 2 s exactly
    assert len(retried) == 3


def test_row_errors_are_not_retried():
    outcome, slept, _ = run(Script(RowRejected("400", http_status=400)))
    assert outcome.value is None and outcome.attempts == 1 and slept == []
    assert outcome.failure.http_status == 400


def test_attempts_run_out():
    script = Script(*[ServerError("503")] * 10)
    outcome, slept, _ = run(script, RetrySettings(max_attempts=3))
    assert outcome.failure is not None and outcome.attempts == 3 and script.calls == 3 and len(slept) == 2


def test_fatal_failures_propagate_with_the_attempt_count():
    with pytest.raises(AuthFailed) as info:
        run(Script(ServerError("500"), AuthFailed("401", http_status=401)))
    assert info.value.attempts == 2


def test_stopping_ends_before_the_next_attempt():
    script = Script(ServerError("500"), ServerError("500"))
    calls = []
    outcome, _, _ = run(script, stopping=lambda: calls.append(1) or len(calls) > 1)
    assert outcome.stopped and script.calls == 1 and outcome.attempts == 1


def test_the_default_retries_start_soon_and_still_ride_out_a_half_minute_outage():
    """Sooner first retries must not shorten the outage a row survives (about 31 s before)."""
    settings = RetrySettings()
    ceilings = [backoff_s(settings, attempt, ServerError("HTTP 503", http_status=503), lambda: 1.0)
                for attempt in range(1, settings.max_attempts)]
    assert ceilings[0] <= 0.25
    assert sum(ceilings) >= 30
