"""Rate control with a fake clock: bursts, learned limits, settlement, the server's count, pauses."""

import asyncio

import pytest

from pipeline.errors import RowRejected
from pipeline.pacing import Pacer
from pipeline.ratelimit import SAFETY, RateBudget, ServerView, Ticket, TokenBucket, bucket
from test_runner import FakeTime


def test_request_buckets_hold_about_a_second_not_a_minute():
    limiter = bucket(600)  # 10 per second
    assert limiter.max_rate == pytest.approx(10) and limiter.time_period == pytest.approx(1.0)
    slow = bucket(6)  # one request every 10 s: the bucket holds one
    assert slow.max_rate == 1 and slow.time_period == pytest.approx(10.0)


def test_token_bucket_refills_continuously_and_refunds():
    time = FakeTime()
    tokens = TokenBucket(6000, time.clock)  # 100 per second, holds 100
    assert tokens.wait_s(100) == 0
    tokens.take(100)
    assert tokens.wait_s(50) == pytest.approx(0.5)
    tokens.give(30)  # a reply used 30 fewer than reserved
    assert tokens.wait_s(50) == pytest.approx(0.2)
    time.now = 10
    assert tokens.level <= tokens.capacity and tokens.wait_s(100) == 0
    assert tokens.wait_s(250) == 0  # larger than the bucket: waits for a full bucket, then goes into debt
    tokens.take(250)
    assert tokens.wait_s(1) == pytest.approx(1.51)


def test_learned_limits_lower_the_configured_ceiling_and_fill_in_missing_ones():
    time = FakeTime()
    budget = RateBudget(10_000, None, clock=time.clock, sleep=time.sleep)
    ticket = asyncio.run(budget.acquire(10, 5, 1))
    budget.settle(ticket, ok=True, rate_info={"limit_requests": 500, "limit_tokens": 40_000})
    assert budget.requests_per_minute == 500 and budget.tokens_per_minute == 40_000
    assert budget._requests.max_rate == pytest.approx(500 * SAFETY / 60)
    assert "rpm 500 (learned)" in budget.describe() and "tpm 40,000 (learned)" in budget.describe()


def test_settling_refunds_what_a_reply_did_not_use():
    time = FakeTime()
    budget = RateBudget(None, 60_000, clock=time.clock, sleep=time.sleep)  # 970 tokens/s
    ticket = asyncio.run(budget.acquire(100, 500, 1))
    assert ticket.tokens == 600 and ticket.most_tokens == 600  # no replies seen: expect the maximum
    level = budget._tokens.level
    budget.settle(ticket, ok=True, used_tokens=150, output_tokens_per_choice=50)
    assert budget._tokens.level == pytest.approx(level + 450)
    assert budget.output_tokens == 50
    second = asyncio.run(budget.acquire(100, 500, 2))
    assert second.tokens == 200 and second.most_tokens == 1100  # expected output 50 per choice


def test_the_servers_remaining_count_holds_requests_back():
    view = ServerView()
    ticket = Ticket(tokens=0, most_tokens=0, sent_requests=10, sent_tokens=1000, started=0)
    view.observe({"limit_tokens": 6000, "remaining_tokens": 200}, ticket, now=1.0)
    # 100 tokens/s refill; 300 sent since that request went out
    assert view.wait_s("tokens", 100, 6000, sent_total=1300, now=1.0) == pytest.approx(2.0)
    assert view.wait_s("tokens", 100, 6000, sent_total=1000, now=1.0) == 0
    assert view.wait_s("requests", 1, 60, sent_total=10, now=1.0) == 0  # nothing said about requests


def test_request_larger_than_the_whole_tpm_is_a_row_error():
    time = FakeTime()
    budget = RateBudget(None, 1000, clock=time.clock, sleep=time.sleep)
    with pytest.raises(RowRejected) as info:
        asyncio.run(budget.acquire(900, 200, 1))
    assert info.value.error_type == "exceeds_tpm_limit" and not info.value.retryable


def test_in_flight_follows_what_the_limit_can_use_over_the_latency():
    time = FakeTime()
    budget = RateBudget(600, None, clock=time.clock, sleep=time.sleep, concurrency=256)  # 10/s
    assert budget.in_flight_cap() == 256  # no latency seen yet
    budget.latency_s = 2.0
    assert budget.in_flight_cap() == 40  # 2 × 10/s × 2 s
    budget.latency_s = 0.01
    assert budget.in_flight_cap() == 4


def test_pause_holds_back_every_request_then_paces():
    time = FakeTime()

    async def scenario():
        budget = RateBudget(None, None, clock=time.clock, sleep=time.sleep)
        budget.settle(await budget.acquire(10, 1, 1), ok=True)
        budget.pause(2.5)
        budget.pause(1.0)  # a shorter pause never shortens the longer one
        for _ in range(3):
            budget.settle(await budget.acquire(10, 1, 1), ok=True)

    asyncio.run(scenario())
    assert time.slept[0] == 2.5 and time.now >= 2.5


def test_pacing_starts_at_half_the_rate_that_got_through_and_grows_back():
    time = FakeTime()
    pacer = Pacer(time.clock)
    assert pacer.wait_s() == 0 and pacer.rate is None  # off until a 429
    for i in range(40):  # 20 ok replies per second for two seconds
        time.now = i * 0.05
        pacer.ok()
    pacer.cut()
    assert pacer.rate == 10  # half of 20/s
    pacer.cut()  # the same wave of 429s cuts once
    assert pacer.rate == 10
    assert pacer.wait_s() == 0 and pacer.wait_s() == pytest.approx(0.1)  # spaced 1/rate apart
    for _ in range(10):
        pacer.ok()
    assert pacer.rate == pytest.approx(11)
    time.now += 10
    while pacer.rate is not None:  # grows until well past anything seen, then switches off
        pacer.ok()
    assert pacer.wait_s() == 0
