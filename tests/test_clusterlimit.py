"""The cluster's one limiter and its leases (pipeline/clusterlimit.py), on a fake clock: no Dask here."""

from __future__ import annotations

import asyncio
import heapq

import pytest

from decimal import Decimal

from pipeline.clusterlimit import (LEASE_TTL_S, SHARE, UNLIMITED, ActorLink, ClusterCap, ClusterLease, ClusterLimiter,
                                  ClusterStop)
from pipeline.errors import LimiterLost
from pipeline.pricing import load_prices
from pipeline.ratelimit import RateBudget
from pipeline.spend import SpendCap, cap_reached


class Clock:
    """Virtual time for concurrent sleepers: time jumps to the next wake-up once every task waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list = []
        self._order = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        self._order += 1
        heapq.heappush(self._sleepers, (self.now + seconds, self._order, wake))
        await wake

    async def run(self) -> None:
        while True:
            for _ in range(5):
                await asyncio.sleep(0)
            if self._sleepers:
                at, _, wake = heapq.heappop(self._sleepers)
                self.now = max(self.now, at)
                wake.set_result(None)


def lease_on(limiter: ClusterLimiter, clock: Clock) -> ClusterLease:
    async def ask(method, *args):
        return getattr(limiter, method)(*args)

    return ClusterLease(ask, lambda method, *args: getattr(limiter, method)(*args), clock=clock)


def drive(clock: Clock, leases: list[ClusterLease], seconds: float, active=lambda index, now: True) -> list[int]:
    """Each lease takes requests as fast as it is granted them for ``seconds``; returns the counts."""
    counts = [0] * len(leases)

    async def one(index: int, lease: ClusterLease) -> None:
        while clock.now < seconds:
            if not active(index, clock.now):
                await clock.sleep(0.05)
                continue
            await lease.take(0, clock.sleep)
            counts[index] += 1
            await clock.sleep(0.001)

    async def main() -> None:
        ticking = asyncio.create_task(clock.run())
        await asyncio.gather(*(one(i, lease) for i, lease in enumerate(leases)))
        ticking.cancel()
    asyncio.run(main())
    return counts


def test_two_processes_share_one_rate():
    clock = Clock()
    limiter = ClusterLimiter(600, None, clock=clock)  # 10 requests a second for the whole cluster
    counts = drive(clock, [lease_on(limiter, clock), lease_on(limiter, clock)], 20.0)
    allowed = 10 * SHARE * 20 + 10 + 2  # the rate over 20 s, the one-second bucket it starts with, rounding
    assert sum(counts) <= allowed
    assert sum(counts) >= 0.95 * 10 * SHARE * 20
    assert min(counts) > 0.3 * sum(counts)  # both are served


def test_an_idle_process_leaves_its_share_to_the_others():
    """Not a fixed split: while one process is idle, the other gets the whole rate."""
    clock = Clock()
    limiter = ClusterLimiter(600, None, clock=clock)
    counts = drive(clock, [lease_on(limiter, clock), lease_on(limiter, clock)], 20.0,
                   active=lambda index, now: index == 0)
    assert counts[1] == 0
    assert counts[0] >= 0.95 * 10 * SHARE * 20


def test_a_429_anywhere_pauses_everyone_and_halves_the_rate():
    clock = Clock()
    limiter = ClusterLimiter(600, None, clock=clock)
    first, second = lease_on(limiter, clock), lease_on(limiter, clock)
    first.pause(5.0)
    assert limiter.lease(1, 0) == (0, 0.0, 5.0)  # nothing for anyone until the retry-after passed
    counts = drive(clock, [second], 5.0 + 2.0)
    assert 0.4 * 10 * 2.0 <= counts[0] <= 0.6 * 10 * 2.0 + 2  # then about half the rate


def test_a_limit_learned_by_one_process_applies_to_all():
    clock = Clock()
    limiter = ClusterLimiter(None, None, clock=clock)
    assert limiter.lease(1, 0)[0] == UNLIMITED
    lease_on(limiter, clock).learned(120, None)  # the server said 120 rpm
    counts = drive(clock, [lease_on(limiter, clock)], 10.0)
    assert counts[0] <= 2 * SHARE * 10 + 2 + 1


def test_unused_capacity_goes_back_after_its_time():
    clock = Clock()
    limiter = ClusterLimiter(6000, None, clock=clock)  # 100/s: a lease holds a slice of 24
    lease = lease_on(limiter, clock)
    asyncio.run(lease.take(0, clock.sleep))
    held = lease.requests
    assert held > 5 and limiter.granted_requests == held + 1
    level = limiter._requests.level
    lease.give_back()
    assert limiter.granted_requests == 1
    assert limiter._requests.level == pytest.approx(level + held)
    asyncio.run(lease.take(0, clock.sleep))
    clock.now += LEASE_TTL_S + 0.01
    asyncio.run(lease.take(0, clock.sleep))  # the stale stock went back before the new lease
    assert limiter.granted_requests == 3 + lease.requests  # three used, the rest held


def test_tokens_are_leased_then_charged_for_what_the_reply_really_used():
    clock = Clock()
    limiter = ClusterLimiter(None, 60_000, clock=clock)  # 1,000 tokens a second
    full = limiter._tokens.level
    lease = lease_on(limiter, clock)
    asyncio.run(lease.take(400, clock.sleep))
    lease.adjust(-300)  # the reply used 300 more than its reservation
    lease.give_back()
    assert limiter._tokens.level == pytest.approx(full - 700)


def test_rate_budget_passes_429s_and_learned_limits_to_its_lease():
    clock = Clock()
    limiter = ClusterLimiter(None, None, clock=clock)
    lease = lease_on(limiter, clock)

    async def main():
        budget = RateBudget(None, None, clock=clock, sleep=clock.sleep, lease=lease)
        ticket = await budget.acquire(10, 20, 1)
        budget.settle(ticket, ok=True, rate_info={"limit_requests": 300.0, "remaining_requests": 299.0})
        budget.pause(2.0)
    asyncio.run(main())
    assert limiter.limits == (300.0, None)
    assert limiter.pauses == 1
    assert limiter.lease(1, 0)[2] == pytest.approx(2.0)


def test_the_cost_cap_reserves_worst_cases_settles_exact_costs_and_stops_the_job_once():
    # the client's bound for what earlier runs spent: each part's journal total
    limiter = ClusterLimiter(None, None, "0.010", earlier_usd={0: "0.002", 1: "0.003"})
    assert limiter.spent_usd == Decimal("0.005")
    assert limiter.begin(1, "0") == (None, False)  # part 1's journal was reset: it spent nothing
    assert limiter.spent_usd == Decimal("0.002")
    assert limiter.reserve_cost("0.004") is None and limiter.reserve_cost("0.004") is None  # 0.010: at the cap
    assert limiter.reserved_usd == Decimal("0.008")
    limiter.settle_cost("0.004", "0.001")  # the exact cost, from usage
    limiter.settle_cost("0.004", None)  # unknown (a 200 with an unusable body): the worst case counts
    assert (limiter.spent_usd, limiter.reserved_usd) == (Decimal("0.007"), Decimal(0))
    refusal = limiter.reserve_cost("0.004")  # 0.007 + 0.004 > 0.010
    assert refusal == cap_reached(Decimal("0.010"), Decimal("0.007"))  # a local run's words
    assert limiter.report(0, {}) == (refusal, False)  # every part hears it
    assert limiter.totals()["stopped_by"] == "max_cost_reached"
    assert limiter.reserve_cost("0.000001") == refusal  # once reached, nobody sends again
    assert limiter.begin(2, "0") == (refusal, False)  # a part starting later starts stopped
    assert limiter.reserved_usd == 0


def test_without_a_cap_the_limiter_reserves_nothing():
    limiter = ClusterLimiter(None, None)
    assert limiter.reserve_cost("5") is None
    limiter.settle_cost("5", "4")
    assert (limiter.spent_usd, limiter.reserved_usd, limiter.stop_reason) == (0, 0, None)


def test_processes_claiming_from_one_cluster_cap_get_what_one_local_cap_would():
    limiter = ClusterLimiter(None, None, "0.001")
    local = SpendCap(Decimal("0.001"), load_prices(), "gpt-4o-mini", 100, 1)

    async def ask(method, *args):
        return getattr(limiter, method)(*args)

    def tell(method, *args):
        getattr(limiter, method)(*args)

    caps = [ClusterCap(SpendCap(Decimal("0.001"), load_prices(), "gpt-4o-mini", 100, 1), ask, tell)
            for _ in range(2)]

    async def claims() -> list:
        return [await caps[index % 2].claim(1000) for index in range(5)]
    claimed = asyncio.run(claims())
    assert claimed == [local.reserve(1000) for _ in range(5)]  # four of $0.00021 fit in $0.001, not five
    assert claimed[-1] is None and caps[0].describe() == limiter.stop_reason == local.describe()
    caps[0].settle(claimed[0], Decimal("0.00005"))
    assert limiter.spent_usd == Decimal("0.00005") and limiter.reserved_usd == 3 * claimed[1]


class Answer:
    """An Actor call's future, as distributed returns one: ``result()`` gives the answer or raises."""

    def __init__(self, value=None, error: Exception | None = None) -> None:
        self._value, self._error = value, error

    def result(self):
        if self._error is not None:
            raise self._error
        return self._value


class DyingActor:
    """A limiter Actor whose worker dies at the ``dies_at``-th ``reserve_cost``: that call fails as
    distributed fails it (OSError from the future) — or, ``after_answering``, gets its answer first —
    and every later call raises at once (RuntimeError), a ``tell`` included."""

    def __init__(self, limiter: ClusterLimiter, dies_at: int, after_answering: bool = False) -> None:
        self._limiter, self._dies_at, self._after_answering = limiter, dies_at, after_answering
        self.reserves, self.dead = 0, False

    def __getattr__(self, method: str):
        if self.dead:
            raise RuntimeError("Worker holding Actor was lost.  Status: lost")

        def call(*args):
            if method == "reserve_cost":
                self.reserves += 1
                if self.reserves == self._dies_at:
                    self.dead = True
                    if not self._after_answering:
                        return Answer(error=OSError("Unable to contact Actor's worker"))
            return Answer(getattr(self._limiter, method)(*args))
        return call


def test_a_lost_limiter_is_a_chatbatch_error_naming_the_call_for_asks_and_tells():
    link = ActorLink(DyingActor(ClusterLimiter(None, None, "1"), dies_at=1))
    cap = ClusterCap(SpendCap(Decimal("1"), load_prices(), "gpt-4o-mini", 100, 1), link.ask, link.tell)
    with pytest.raises(LimiterLost, match=r"^the cluster's limiter failed \(reserve_cost: OSError: Unable to "
                                          r"contact Actor's worker\); its worker may have died") as caught:
        asyncio.run(cap.claim(1000))
    assert isinstance(caught.value.__cause__, OSError)
    cap.settle(Decimal("0.0001"), Decimal("0.0001"))  # a tell never raises: it settles a reply already paid for
    with pytest.raises(LimiterLost, match=r"\(reserve_cost: OSError"):  # later asks raise the first loss met
        asyncio.run(cap.claim(1000))
    told = ActorLink(DyingActor(ClusterLimiter(None, None, "1"), dies_at=1, after_answering=True))
    cap = ClusterCap(SpendCap(Decimal("1"), load_prices(), "gpt-4o-mini", 100, 1), told.ask, told.tell)
    reservation = asyncio.run(cap.claim(1000))  # answered; then the worker dies
    cap.settle(reservation, Decimal("0.0001"))  # the settle meets the loss, and keeps it
    with pytest.raises(LimiterLost, match=r"\(settle_cost: RuntimeError: Worker holding Actor was lost"):
        asyncio.run(cap.claim(1000))


@pytest.mark.parametrize("after_answering, sent", [
    (False, 2),  # dies when asked before the third send: two rows sent
    (True, 3),  # answers the third ask, then dies: the third reply's settle fails, and the reply is kept
])
def test_a_partition_whose_limiter_dies_mid_run_stops_sending_and_keeps_its_finished_rows(
        fake, tmp_path, after_answering, sent):
    import pyarrow as pa

    from conftest import SECRET_KEY
    from pipeline.dask import PartJob, run_part
    from pipeline.jobspec import build_job
    from pipeline.state import INSPECT, open_state

    job = build_job(None, {"input": "<dask>", "output": "<dask>.parquet", "template": "{text}", "model": "gpt-4o-mini",
                           "base_url": fake.base_url, "max_cost": 1.0, "max_completion_tokens": 5,
                           "concurrency": 1}, {"OPENAI_API_KEY": SECRET_KEY})
    actor = DyingActor(ClusterLimiter(None, None, "1.0"), dies_at=3, after_answering=after_answering)
    table = pa.table({"text": [f"row {n}" for n in range(6)]})
    with pytest.raises(LimiterLost, match="the cluster.s limiter failed"):
        asyncio.run(run_part(PartJob(job, actor, tmp_path / "state", False), 0, table, ActorLink(actor)))
    assert [r["prompt"] for r in fake.requests] == [f"row {n}" for n in range(sent)]
    store = open_state(tmp_path / "state" / "part-0", None, purpose=INSPECT)
    try:  # every reply paid for is journaled: a rerun sends none of them again
        assert {idx: r.status for idx, r in store.results_between(0, 6).items()} == {n: "ok" for n in range(sent)}
    finally:
        store.close()


def test_a_stop_pressed_before_the_limiter_exists_applies_when_it_does_and_a_second_cancels():
    stop, limiter = ClusterStop(), ClusterLimiter(None, None)
    stop.press("terminated (SIGTERM)")  # the cluster is still starting
    stop.attach(limiter)
    assert limiter.report(0, {}) == ("terminated (SIGTERM)", False)
    assert limiter.totals()["stopped_by"] is None  # a signal is no error
    stop.press("interrupted (SIGINT)")
    assert limiter.report(0, {}) == ("terminated (SIGTERM)", True)  # the first reason stays; cancel now
    stop.detach()
    stop.press("interrupted (SIGINT)")  # after the run: nothing to reach
    assert stop.reasons == ["terminated (SIGTERM)", "interrupted (SIGINT)", "interrupted (SIGINT)"]


def test_the_core_install_never_imports_dask():
    import subprocess
    import sys

    code = ("import sys, pipeline.cli, pipeline.dask, pipeline.clusterlimit; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
