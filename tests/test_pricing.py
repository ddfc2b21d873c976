"""Prices come from the dated data file; dated model names resolve; unknown models cost None."""

from decimal import Decimal

import pytest

from pipeline.errors import JobError
from pipeline.pricing import load_prices
from pipeline.records import Usage

USAGE = Usage(prompt_tokens=1000, completion_tokens=200, total_tokens=1200, cached_tokens=400, reasoning_tokens=0)


def test_shipped_table_is_dated_and_sourced():
    table = load_prices()
    assert table.as_of and table.source
    for model in ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o3-mini",
                  "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-3.5-turbo"]:
        assert table.resolve(model) == model


@pytest.mark.parametrize("answered, family", [
    ("gpt-4o-2024-08-06", "gpt-4o"), ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"), ("openai/gpt-4.1-mini", "gpt-4.1-mini"), ("GPT-4o", "gpt-4o"),
    ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # a dated model with its own price wins over the family
    ("llama-3.1-8b", None), ("", None), (None, None),
])
def test_model_names_resolve(answered, family):
    assert load_prices().resolve(answered) == family


def test_cost_is_exact_with_cached_tokens_at_the_cached_rate():
    # gpt-4o-mini: input 0.15, cached 0.075, output 0.60 per 1M
    expected = (Decimal(600) * Decimal("0.15") + Decimal(400) * Decimal("0.075") + Decimal(200) * Decimal("0.60")) / 10**6
    assert load_prices().cost_usd("gpt-4o-mini-2024-07-18", USAGE) == expected
    batch = (Decimal(1000) * Decimal("0.075") + Decimal(200) * Decimal("0.30")) / 10**6
    assert load_prices().cost_usd("gpt-4o-mini", USAGE, batch=True) == batch


def test_unknown_model_or_missing_usage_is_unknown_not_zero():
    assert load_prices().cost_usd("my-local-model", USAGE) is None
    assert load_prices().cost_usd("gpt-4o", Usage()) is None


def test_user_file_and_job_table_override(tmp_path):
    file = tmp_path / "prices.toml"
    file.write_text('as_of = "2026-11-01"\nsource = "our contract"\n[models."my-model"]\ninput = 1\noutput = 2\n'
                    '[models."gpt-4o-mini"]\ninput = 0.1\noutput = 0.2\n')
    table = load_prices(file, {"gpt-4o": {"input": 0, "output": 0}})
    assert table.as_of == "2026-11-01" and "our contract" in table.source
    assert table.cost_usd("my-model", USAGE) == Decimal("0.0014")  # cached defaults to the input rate
    assert table.models["gpt-4o-mini"].input == Decimal("0.1")
    assert table.cost_usd("gpt-4o", USAGE) == 0
    assert table.cost_usd("my-model", USAGE, batch=True) is None  # no batch price given


@pytest.mark.parametrize("prices, words", [
    ({"m": {"input": 1}}, "need at least"),
    ({"m": {"input": 1, "output": -2}}, "non-negative"),
    ({"m": {"input": 1, "output": 2, "outptu": 3}}, "outptu"),
])
def test_bad_price_tables_are_job_errors(prices, words):
    with pytest.raises(JobError, match=words):
        load_prices(None, prices)


NO_CACHE = Usage(prompt_tokens=1000, completion_tokens=200, total_tokens=1200, cached_tokens=0, reasoning_tokens=0)


def test_service_tiers_are_priced_at_their_own_rates():
    table = load_prices()
    # gpt-4.1 priority (OpenAI's Priority processing page): input 3.50, cached 0.875, output 14.00 per 1M
    priority = (Decimal(600) * Decimal("3.50") + Decimal(400) * Decimal("0.875") + Decimal(200) * Decimal("14.00")) / 10**6
    assert table.cost_usd("gpt-4.1-2025-04-14", USAGE, tier="priority") == priority
    # o4-mini flex: Batch API rates, 0.55 in and 2.20 out
    assert table.cost_usd("o4-mini", NO_CACHE, tier="flex") == (Decimal(1000) * Decimal("0.55")
                                                                 + Decimal(200) * Decimal("2.20")) / 10**6
    standard = table.cost_usd("gpt-4.1", USAGE)
    for tier in (None, "default", "auto"):
        assert table.cost_usd("gpt-4.1", USAGE, tier=tier) == standard


def test_a_tier_without_a_price_is_unknown_not_the_standard_rate():
    table = load_prices()
    assert table.cost_usd("gpt-3.5-turbo", NO_CACHE, tier="flex") is None
    assert table.cost_usd("gpt-5-nano", NO_CACHE, tier="priority") is None
    assert not table.has_tier("gpt-3.5-turbo", "flex") and table.has_tier("gpt-3.5-turbo", "default")
    # flex has no published cached rate: a reply with cached tokens is unknown, one without is priced
    assert table.cost_usd("o3", USAGE, tier="flex") is None
    assert table.cost_usd("o3", NO_CACHE, tier="flex") is not None


def test_tier_prices_can_be_given_in_a_job_table():
    table = load_prices(None, {"m": {"input": 1, "output": 2, "flex_input": 0.5, "flex_output": 1}})
    assert table.cost_usd("m", NO_CACHE, tier="flex") == Decimal("0.0007")
    assert table.cost_usd("m", NO_CACHE, tier="priority") is None


def test_shipped_tier_prices_are_dated_and_sourced():
    import json
    from importlib import resources
    shipped = json.loads(resources.files("pipeline").joinpath("data/prices.json").read_text())
    assert shipped["tiers_as_of"] and "priority" in shipped["tiers_source"] and "flex" in shipped["tiers_source"]
