"""The cost cap's arithmetic (CostLedger), shared by a run's SpendCap and a cluster's limiter."""

import doctest
from decimal import Decimal

import pipeline.spend
from pipeline.clusterlimit import ClusterLimiter
from pipeline.pricing import load_prices
from pipeline.spend import CostLedger, SpendCap


def test_the_ledger_fits_up_to_the_cap_exactly_and_settles_exact_or_worst_costs():
    ledger = CostLedger(Decimal("0.010"), earlier_usd=Decimal("0.001"))
    assert ledger.reserve(Decimal("0.006")) and ledger.reserve(Decimal("0.003"))  # 0.001 + 0.009: at the cap
    assert not ledger.reserve(Decimal("0.000001")) and ledger.reserved_usd == Decimal("0.009")  # refused: nothing held
    ledger.settle(Decimal("0.006"), Decimal("0.002"))  # the exact cost from usage
    ledger.settle(Decimal("0.003"), None)  # unknown (maybe billed): the worst case counts
    assert (ledger.spent_usd, ledger.run_spent_usd, ledger.reserved_usd) == (Decimal("0.006"), Decimal("0.005"), 0)
    ledger.earlier_usd = Decimal(0)  # a cluster's part stated it spent nothing earlier
    assert ledger.spent_usd == Decimal("0.005") and ledger.reserve(Decimal("0.005"))


def test_a_spend_cap_and_the_cluster_limiter_keep_their_books_in_one_ledger():
    cap = SpendCap(Decimal("0.001"), load_prices(), "gpt-4o-mini", 100, 1, spent_usd=Decimal("0.0002"))
    limiter = ClusterLimiter(None, None, "0.001", earlier_usd={0: "0.0002"})
    ledger = CostLedger(Decimal("0.001"), earlier_usd=Decimal("0.0002"))
    amount = cap.most(1000)
    local = [cap.reserve(1000) is not None for _ in range(5)]
    cluster = [limiter.reserve_cost(str(amount)) is None for _ in range(5)]
    assert local == cluster == [ledger.reserve(amount) for _ in range(5)] == [True, True, True, False, False]
    cap.settle(amount, Decimal("0.00001"))
    limiter.settle_cost(str(amount), "0.00001")
    ledger.settle(amount, Decimal("0.00001"))
    assert (cap.spent_usd, cap.reserved_usd) == (limiter.spent_usd, limiter.reserved_usd) == \
        (ledger.spent_usd, ledger.reserved_usd)
    assert isinstance(cap.ledger, CostLedger) and isinstance(limiter.ledger, CostLedger)


def test_the_ledger_docstring_example_holds():
    assert doctest.testmod(pipeline.spend).failed == 0
