"""Prices and cost, from a dated data file — never hard-coded in logic.

The package ships ``data/prices.json`` (its ``as_of`` date and ``source`` say where the figures come
from): USD per 1M tokens for input, cached input, output, the Batch API's input and output, and —
where OpenAI publishes them — the ``flex`` and ``priority`` service tiers' input, cached input and
output (``flex_input``, ``priority_cached_input``, ...). A
user file (``prices_file``, JSON or TOML of the same shape) and a job's ``[prices.MODEL]`` table add
or override models, in that order::

    [prices."my-finetune"]
    input = 0.30
    output = 1.20          # cached_input defaults to input; batch prices are unknown unless given

A model resolves exactly, then case-insensitively, then without a provider prefix (``openai/``) and
without a date or version suffix (``gpt-4o-2024-08-06`` → ``gpt-4o``, ``gpt-3.5-turbo-0125`` →
``gpt-3.5-turbo``). A model with no price costs ``None`` — unknown, never zero.

Cost is computed in Decimal from the API's usage: uncached prompt tokens at the input rate, cached
prompt tokens at the cached rate, completion tokens (reasoning included) at the output rate. A
request served in the ``flex`` or ``priority`` tier is priced at that tier's rates; where the table
has none for the model (or no cached rate, and the reply had cached tokens) its cost is ``None``.
Every other tier (``default``, ``auto``, none) is priced at the standard rates.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import JobError
from .records import Usage

MILLION = Decimal(1_000_000)
TIERS = ("flex", "priority")  # service tiers with their own prices
PRICE_FIELDS = ("input", "cached_input", "output", "batch_input", "batch_output",
                *(f"{tier}_{kind}" for tier in TIERS for kind in ("input", "cached_input", "output")))
_SUFFIX = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{4}|-preview|-latest)$")


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens. Batch and service-tier prices may be unknown (None)."""

    input: Decimal
    cached_input: Decimal
    output: Decimal
    batch_input: Decimal | None = None
    batch_output: Decimal | None = None
    flex_input: Decimal | None = None
    flex_cached_input: Decimal | None = None
    flex_output: Decimal | None = None
    priority_input: Decimal | None = None
    priority_cached_input: Decimal | None = None
    priority_output: Decimal | None = None

    def rates(self, tier: str | None = None, batch: bool = False) -> tuple[Decimal | None, ...]:
        """(input, cached input, output) for the Batch API, a service tier, or the standard tier."""
        if batch:
            return self.batch_input, self.batch_input, self.batch_output
        if tier in TIERS:
            return tuple(getattr(self, f"{tier}_{kind}") for kind in ("input", "cached_input", "output"))
        return self.input, self.cached_input, self.output


@dataclass(frozen=True)
class PriceTable:
    as_of: str
    source: str
    models: Mapping[str, Price]
    _resolved: dict = field(default_factory=dict, compare=False, repr=False)

    def resolve(self, model: str | None) -> str | None:
        """The table's name for ``model``, or None when it has no price (remembered per name)."""
        try:
            return self._resolved[model]
        except KeyError:
            name = self._resolved[model] = resolve_name(model, self.models)
            return name

    def has_tier(self, model: str | None, tier: str | None) -> bool:
        """Whether ``model`` has a price in ``tier`` (its input and output rates)."""
        name = self.resolve(model)
        if name is None:
            return False
        rates = self.models[name].rates(tier)
        return rates[0] is not None and rates[2] is not None

    def cost_usd(self, model: str | None, usage: Usage, batch: bool = False,
                 tier: str | None = None) -> Decimal | None:
        name = self.resolve(model)
        if name is None or usage.prompt_tokens is None or usage.completion_tokens is None:
            return None
        rate_in, rate_cached, rate_out = self.models[name].rates(tier, batch)
        cached = min(usage.cached_tokens or 0, usage.prompt_tokens)
        if rate_in is None or rate_out is None or (cached and rate_cached is None):
            return None
        total = (usage.prompt_tokens - cached) * rate_in + usage.completion_tokens * rate_out
        if cached:
            total += cached * rate_cached
        return total / MILLION


def resolve_name(model: str | None, names: Iterable[str]) -> str | None:
    """``model``'s entry among ``names``: exact, case-insensitive, then without a provider prefix
    and a date or version suffix; None when there is none."""
    if not model:
        return None
    lowered = {name.lower(): name for name in names}
    candidate = model.lower().split("/")[-1] if model.lower() not in lowered else model.lower()
    for _ in range(3):
        if candidate in lowered:
            return lowered[candidate]
        stripped = _SUFFIX.sub("", candidate)
        if stripped == candidate:
            break
        candidate = stripped
    return None


def load_prices(user_file: Path | None = None, overrides: Mapping[str, Any] | None = None) -> PriceTable:
    """The shipped table, updated by a user file and then by the job's ``[prices]`` table."""
    shipped = json.loads(resources.files("pipeline").joinpath("data/prices.json").read_text())
    models = _parse_models(shipped["models"], "the shipped price table")
    as_of, source = shipped["as_of"], shipped["source"]
    if user_file is not None:
        data = _read_price_file(user_file)
        models.update(_parse_models(data.get("models", {}), str(user_file)))
        as_of = str(data.get("as_of", as_of))
        source = f"{data.get('source', user_file)}; shipped table of {shipped['as_of']}"
    if overrides:
        models.update(_parse_models(overrides, "the job's [prices] table"))
    return PriceTable(as_of=as_of, source=source, models=models)


def _read_price_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except OSError as exc:
        raise JobError(f"cannot read price file {path}: {exc.strerror}") from exc
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise JobError(f"price file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise JobError(f"price file {path} must hold a 'models' table of per-model prices")
    return data


def _parse_models(raw: Mapping[str, Any], where: str) -> dict[str, Price]:
    models = {}
    for model, fields in raw.items():
        if not isinstance(fields, Mapping):
            raise JobError(f"{where}: prices for {model!r} must be a table")
        unknown = set(fields) - set(PRICE_FIELDS)
        if unknown:
            raise JobError(f"{where}: unknown price field(s) for {model!r}: {', '.join(sorted(unknown))}")
        values = {}
        for name in PRICE_FIELDS:
            value = fields.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise JobError(f"{where}: price {model!r}.{name} must be a non-negative number")
            values[name] = Decimal(str(value)) if value is not None else None
        if values["input"] is None or values["output"] is None:
            raise JobError(f"{where}: prices for {model!r} need at least 'input' and 'output'")
        if values["cached_input"] is None:
            values["cached_input"] = values["input"]
        models[model] = Price(**values)
    return models
