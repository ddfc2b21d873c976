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
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd
        self.reserved_usd = Decimal(0)
        self._input = rate_in / MILLION
        self._output_max = rate_out * max_output_tokens * choices / MILLION

    @classmethod
    def for_job(cls, job: Job, prices: PriceTable, spent_usd: Decimal = Decimal(0)) -> "SpendCap":
        """The cap of ``job`` (its ``max_cost``); JobError when its worst case cannot be priced."""
        return cls(Decimal(str(job.max_cost_usd)), prices, job.model, job.max_output_tokens,
                   job.choices_per_request, spent_usd=spent_usd, tier=job.service_tier)

    def most(self, prompt_tokens: int) -> Decimal:
        """The most one request with ``prompt_tokens`` can cost."""
        return prompt_tokens * self._input + self._output_max

    def reserve(self, prompt_tokens: int) -> Decimal | None:
        """Reserve a request's worst case; None when it could push the spend past the cap."""
        amount = self.most(prompt_tokens)
        if self.spent_usd + self.reserved_usd + amount > self.cap_usd:
            return None
        self.reserved_usd += amount
        return amount

    def settle(self, reservation: Decimal, cost_usd: Decimal | None) -> None:
        """Replace a reservation by what the attempt really cost (None: assume the worst)."""
        self.reserved_usd -= reservation
        self.spent_usd += reservation if cost_usd is None else cost_usd

    async def claim(self, prompt_tokens: int) -> Decimal | None:
        """:meth:`reserve`, as the runner asks a cap (a cluster's cap answers over the network)."""
        return self.reserve(prompt_tokens)

    def describe(self) -> str:
        return cap_reached(self.cap_usd, self.spent_usd)


def cap_reached(cap_usd: Decimal, spent_usd: Decimal) -> str:
    """Why a run stops at its cost cap (the stop reason in its summary)."""
    return (f"the cost cap of ${cap_usd} is reached: ${spent_usd:.6f} spent, and the next "
            f"request could cost more than the ${max(cap_usd - spent_usd, 0):.6f} left")
