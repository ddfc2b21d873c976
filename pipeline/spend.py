"""The cost cap: never start a request that could push the spend past ``max_cost``.

Before each attempt the runner asks :meth:`SpendCap.reserve` for the most that request can cost:
its exact prompt tokens at the (uncached) input price plus its maximum output — the job's
``max_completion_tokens`` (or ``max_tokens``), else the model's largest reply — × ``n`` at the
output price. The request is sent only if the spend so far, plus what every request in flight may
still cost, plus this one, stays within the cap. When the reply comes, :meth:`settle` swaps the
reservation for the exact cost from ``usage``; a failed attempt costs nothing, except a 200 whose
body was unusable, which is counted at its full reservation (it may have been billed).

The spend so far includes everything earlier runs of the same job were billed — ok rows, refusals,
invalid replies, replies discarded for validation (the job's totals in its state, see
:func:`pipeline.run.earlier_spend`) — so a rerun continues only as far as the cap allows. With a
``service_tier`` of ``flex`` or ``priority`` the cap uses that tier's prices (and needs them).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from .errors import JobError
from .models import model_limits
from .pricing import MILLION, PriceTable

if TYPE_CHECKING:
    from .jobspec import Job


class CostLedger:
    """The cost cap's arithmetic, for a run's :class:`SpendCap` and a cluster's limiter alike.

    The spend so far is ``earlier_usd`` (what earlier runs of the job were billed; a cluster's
    limiter replaces it as parts state theirs) plus this run's ``run_spent_usd``. A worst case fits
    when the spend, plus what requests in flight may still cost (``reserved_usd``), plus it, stays
    within ``cap_usd``; settling swaps a reservation for the exact cost (None: unknown, the
    reservation counts)::

        >>> ledger = CostLedger(Decimal("0.010"), earlier_usd=Decimal("0.002"))
        >>> ledger.reserve(Decimal("0.004")), ledger.reserve(Decimal("0.004")), ledger.reserve(Decimal("0.001"))
        (True, True, False)
        >>> ledger.settle(Decimal("0.004"), Decimal("0.001")); ledger.spent_usd, ledger.reserved_usd
        (Decimal('0.003'), Decimal('0.004'))
    """

    def __init__(self, cap_usd: Decimal, earlier_usd: Decimal = Decimal(0)) -> None:
        self.cap_usd = cap_usd
        self.earlier_usd = earlier_usd
        self.run_spent_usd = Decimal(0)
        self.reserved_usd = Decimal(0)

    @property
    def spent_usd(self) -> Decimal:
        return self.earlier_usd + self.run_spent_usd

    def reserve(self, amount_usd: Decimal) -> bool:
        """Reserve a worst case; False (nothing reserved) when it could push the spend past the cap."""
        if self.spent_usd + self.reserved_usd + amount_usd > self.cap_usd:
            return False
        self.reserved_usd += amount_usd
        return True

    def settle(self, reservation_usd: Decimal, cost_usd: Decimal | None) -> None:
        """Replace a reservation by what the attempt really cost (None: assume the worst)."""
        self.reserved_usd -= reservation_usd
        self.run_spent_usd += reservation_usd if cost_usd is None else cost_usd


class SpendCap:
    def __init__(self, cap_usd: Decimal, prices: PriceTable, model: str, max_output_tokens: int | None,
                 choices: int, spent_usd: Decimal = Decimal(0), tier: str | None = None) -> None:
        name = prices.resolve(model)
        if name is None:
            raise JobError(f"max_cost needs a known price for model {model!r}; add it with a [prices] table")
        if not prices.has_tier(model, tier):
            raise JobError(f"max_cost needs a known {tier} price for model {model!r} (service_tier = {tier!r}); "
                           f"add {tier}_input and {tier}_output to a [prices] table")
        if max_output_tokens is None:
            limits = model_limits(model)
            if limits is None:
                raise JobError(f"max_cost needs max_completion_tokens for model {model!r} "
                               "(its largest reply is not known)")
            max_output_tokens = limits.max_output_tokens
        rate_in, _, rate_out = prices.models[name].rates(tier)
        self.ledger = CostLedger(cap_usd, earlier_usd=spent_usd)
        self._input = rate_in / MILLION
        self._output_max = rate_out * max_output_tokens * choices / MILLION

    @classmethod
    def for_job(cls, job: Job, prices: PriceTable, spent_usd: Decimal = Decimal(0)) -> "SpendCap":
        """The cap of ``job`` (its ``max_cost``); JobError when its worst case cannot be priced."""
        return cls(Decimal(str(job.max_cost_usd)), prices, job.model, job.max_output_tokens,
                   job.choices_per_request, spent_usd=spent_usd, tier=job.service_tier)

    @property
    def cap_usd(self) -> Decimal:
        return self.ledger.cap_usd

    @property
    def spent_usd(self) -> Decimal:
        return self.ledger.spent_usd

    @property
    def reserved_usd(self) -> Decimal:
        return self.ledger.reserved_usd

    def most(self, prompt_tokens: int) -> Decimal:
        """The most one request with ``prompt_tokens`` can cost."""
        return prompt_tokens * self._input + self._output_max

    def reserve(self, prompt_tokens: int) -> Decimal | None:
        """Reserve a request's worst case; None when it could push the spend past the cap."""
        amount = self.most(prompt_tokens)
        return amount if self.ledger.reserve(amount) else None

    def settle(self, reservation: Decimal, cost_usd: Decimal | None) -> None:
        """Replace a reservation by what the attempt really cost (None: assume the worst)."""
        self.ledger.settle(reservation, cost_usd)

    async def claim(self, prompt_tokens: int) -> Decimal | None:
        """:meth:`reserve`, as the runner asks a cap (a cluster's cap answers over the network)."""
        return self.reserve(prompt_tokens)

    def describe(self) -> str:
        return cap_reached(self.cap_usd, self.spent_usd)


def cap_reached(cap_usd: Decimal, spent_usd: Decimal) -> str:
    """Why a run stops at its cost cap (the stop reason in its summary)."""
    return (f"the cost cap of ${cap_usd} is reached: ${spent_usd:.6f} spent, and the next "
            f"request could cost more than the ${max(cap_usd - spent_usd, 0):.6f} left")
