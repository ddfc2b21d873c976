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
