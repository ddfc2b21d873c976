"""Rate budgets: bounded bursts, big requests, the run-wide pause; fake clock, no real sleeping."""

import asyncio

import pytest

from pipeline.errors import RowRejected
from pipeline.pacing import Pacer
from pipeline.ratelimit import RateBudget, bucket, chunks


def test_buckets_hold_about_a_second_not_a_minute():
    limiter = bucket(600)  # 10 per second
    assert limiter.max_rate == pytest.approx(10)
    assert limiter.time_period == pytest.approx(1.0)
    slow = bucket(6)  # one request every 10 s: the bucket holds one
    assert slow.max_rate == 1 and slow.time_period == pytest.approx(10.0)
    assert bucket(120_000).max_rate == pytest.approx(2000)


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def clock(self):
        return self.now

    async def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_pause_holds_back_every_request_until_it_ends():
    time = FakeTime()

    async def scenario():
        budget = RateBudget(None, None, clock=time.clock, sleep=time.sleep)
        await budget.acquire(10)  # no limits, no pause: free
        budget.pause(2.5)
        budget.pause(1.0)  # a shorter pause never shortens the longer one
        await budget.acquire(10)
        await budget.acquire(10)

    asyncio.run(scenario())
    assert time.slept[0] == 2.5  # everyone waits out the pause, then requests are paced
    assert time.now >= 2.5


def test_request_larger_than_the_whole_tpm_is_a_row_error():
    async def scenario():
        budget = RateBudget(None, 1000, clock=lambda: 0.0, sleep=asyncio.sleep)
        await budget.acquire(1001)

    with pytest.raises(RowRejected) as info:
        asyncio.run(scenario())
    assert info.value.error_type == "exceeds_tpm_limit"
    assert not info.value.retryable


def test_request_larger_than_the_bucket_is_acquired_in_chunks():
    assert chunks(2500, 1000) == [1000, 1000, 500]
    assert chunks(1000, 1000) == [1000]
    assert chunks(10, 1000) == [10]
    assert sum(chunks(12345.5, 1000)) == 12345.5



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


def test_pause_turns_pacing_on_for_the_whole_budget():
    time = FakeTime()
    budget = RateBudget(None, None, clock=time.clock, sleep=time.sleep)
    assert not budget.limited
    budget.succeeded()
    budget.pause(1.0)
    assert budget.limited and budget.pacer.rate is not None
