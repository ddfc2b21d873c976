"""Rate control with a fake clock: bursts, learned limits, settlement, the server's count, pauses."""

import asyncio
import heapq
import math

import pytest

from pipeline.errors import RowRejected
from pipeline.pacing import Pacer
from pipeline.ratelimit import BLIND_SHARE, FIRST_WAVE, RateBudget, ServerView, Ticket, TokenBucket
from test_clusterlimit import Clock
from test_runner import FakeTime


def test_request_buckets_hold_about_a_second_not_a_minute():
    time = FakeTime()
    budget = RateBudget(600, None, clock=time.clock, sleep=time.sleep)  # 10 per second
    assert budget._requests.capacity == pytest.approx(10 * BLIND_SHARE)
    slow = RateBudget(6, None, clock=time.clock, sleep=time.sleep)  # one request every 10 s: holds one
    assert slow._requests.capacity == 1


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
    assert budget._requests.per_second == pytest.approx(500 * BLIND_SHARE / 60)  # no count stated
    ticket = asyncio.run(budget.acquire(10, 5, 1))
    budget.settle(ticket, ok=True, rate_info={"limit_requests": 500, "remaining_requests": 498})
    assert budget._requests.per_second == pytest.approx(500 / 60)  # the count steers: the full limit
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
    view.observe({"limit_tokens": 6000, "remaining_tokens": 200}, ticket, ok=True)
    # 100 tokens/s refill since it went out at 0, 300 sent after it, 10 (0.1 s) of headroom kept
    assert view.wait_s("tokens", 100, 6000, sent_total=1300, now=1.0) == pytest.approx(1.1)
    assert view.wait_s("tokens", 100, 6000, sent_total=1000, now=0.0) == 0
    assert view.wait_s("requests", 1, 60, sent_total=10, now=1.0) == 0  # nothing said about requests
    view.widen(now=1.0)  # a 429 came all the same: 0.2 s (20 tokens) to spare from now on
    view.widen(now=1.5)  # the same wave: no more
    assert view.wait_s("tokens", 100, 6000, sent_total=1300, now=1.0) == pytest.approx(1.2)


def test_request_larger_than_the_whole_tpm_is_a_row_error():
    time = FakeTime()
    budget = RateBudget(None, 1000, clock=time.clock, sleep=time.sleep)
    with pytest.raises(RowRejected) as info:
        asyncio.run(budget.acquire(900, 200, 1))
    assert info.value.error_type == "exceeds_tpm_limit" and not info.value.retryable


def test_in_flight_follows_what_the_limit_can_use_over_the_latency():
    time = FakeTime()
    budget = RateBudget(600, None, clock=time.clock, sleep=time.sleep, concurrency=256)  # 10/s
    assert budget.in_flight_cap() == FIRST_WAVE  # nothing heard from the server yet
    budget.server.heard = True
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


class VirtualClock(Clock):
    """test_clusterlimit's virtual time, letting the budget's lock hand-offs settle before time moves."""

    async def run(self) -> None:
        while True:
            for _ in range(100):
                await asyncio.sleep(0)
            if self._sleepers:
                at, _, wake = heapq.heappop(self._sleepers)
                self.now = max(self.now, at)
                wake.set_result(None)


class SimServer:
    """A server enforcing ``rpm`` as fakeapi does: a bucket refilled at rpm/60 a second, holding
    ``window_s`` seconds' worth (60: "N per rolling minute"; 1: "N/60 each second"), starting full,
    stating its limit and (rounded down) remaining count on every reply, 429s included."""

    def __init__(self, clock: Clock, rpm: float, window_s: float) -> None:
        self.clock, self.rpm = clock, rpm
        self.size = max(1.0, rpm * window_s / 60)
        self.level, self.at = self.size, clock.now
        self.admitted: list[float] = []
        self.rejected: list[float] = []

    def admit(self) -> tuple[bool, dict[str, float]]:
        now = self.clock.now
        self.level = min(self.size, self.level + (now - self.at) * self.rpm / 60)
        self.at = now
        ok = self.level >= 1
        if ok:
            self.level -= 1
        (self.admitted if ok else self.rejected).append(now)
        return ok, {"limit_requests": self.rpm, "remaining_requests": math.floor(self.level)}

    def admitted_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.admitted)


def simulate(budget: RateBudget, server: SimServer, clock: Clock, *, workers: int, seconds: float,
             latency_s: float) -> list[float]:
    """``workers`` send through ``budget`` to ``server`` as the runner does; returns the send times
    before the first reply came back."""
    before_first_reply: list[float] = []
    replied = [False]

    async def worker() -> None:
        while clock.now < seconds:
            ticket = await budget.acquire(0, 1, 1)
            if not replied[0]:
                before_first_reply.append(clock.now)
            ok, info = server.admit()
            await clock.sleep(latency_s)
            replied[0] = True
            budget.settle(ticket, ok=ok, rate_info=info)
            if not ok:
                budget.pause(1.0)
                await clock.sleep(1.0)

    async def main() -> None:
        ticking = asyncio.create_task(clock.run())
        await asyncio.gather(*(worker() for _ in range(workers)))
        ticking.cancel()

    asyncio.run(main())
    return before_first_reply


def run_budget(rpm_configured, server_rpm, window_s, *, latency_s, seconds=30.0, workers=32):
    clock = VirtualClock()
    budget = RateBudget(rpm_configured, None, clock=clock, sleep=clock.sleep, concurrency=workers)
    server = SimServer(clock, server_rpm, window_s)
    first_wave = simulate(budget, server, clock, workers=workers, seconds=seconds, latency_s=latency_s)
    return server, first_wave


@pytest.mark.parametrize("window_s", [0.5, 1.0, 60.0])  # the server's burst: half a second's to a minute's
@pytest.mark.parametrize("latency_s", [0.0, 0.2, 3.0])
def test_a_known_limit_is_used_to_at_least_99_percent_without_429s(window_s, latency_s):
    server, _ = run_budget(1200, 1200, window_s, latency_s=latency_s, seconds=20.0, workers=100)
    sustained = server.admitted_between(10.0, 20.0) / 10.0  # past the opening second's burst
    assert sustained >= 0.99 * 20
    assert server.rejected == []


@pytest.mark.parametrize("window_s", [1.0, 60.0])
@pytest.mark.parametrize("configured", [None, 2400])
def test_an_unknown_limit_opens_with_a_small_wave_then_ramps_within_two_seconds(window_s, configured):
    """No rpm given (or one 2x too high): a handful go out, the headers come back, then the limit."""
    server, first_wave = run_budget(configured, 1200, window_s, latency_s=0.2, seconds=10.0)
    assert len(first_wave) == FIRST_WAVE  # not 32 requests before the server has said anything
    assert server.rejected == []  # no opening burst of 429s (nor any later)
    assert server.admitted_between(2.0, 10.0) >= 0.99 * 20 * 8  # at the limit from the third second
