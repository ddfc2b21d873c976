"""Exact offline token counts, `chatbatch estimate`, the price listing and the cost cap."""

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import JobError
from pipeline.pricing import load_prices
from pipeline.spend import SpendCap
from pipeline.tokens import TokenCounter, encoding_name, load_encoding

sys.path.insert(0, str(Path(__file__).parent))
from fakeapi import FakeOpenAI  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-SECRET-tokens-555"


def cookbook_count(messages, encoding):
    """OpenAI's published counting recipe, written out independently of pipeline.tokens."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode(value))
            if key == "name":
                total += 1
    return total


def test_model_to_encoding_follows_tiktoken():
    assert encoding_name("gpt-4o-mini-2024-07-18") == "o200k_base"
    assert encoding_name("gpt-4.1") == encoding_name("o3-mini") == encoding_name("gpt-5-nano") == "o200k_base"
    assert encoding_name("gpt-3.5-turbo-0125") == encoding_name("gpt-4") == "cl100k_base"
    assert encoding_name("llama-3.1-8b") is None


def test_counts_are_exact_and_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIKTOKEN")}
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", XDG_CACHE_HOME=str(tmp_path))
    code = ("from pipeline.tokens import TokenCounter;"
            "print(TokenCounter.for_model('gpt-4o').count_messages([{'role': 'user', 'content': 'Hello'}]))")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "8", result.stderr  # user(1) + Hello(1) + 3 per message + 3 priming
    messages = [{"role": "system", "content": "You label reviews. Answer {\"label\": ...}"},
                {"role": "user", "content": "Größe passt nicht 😕 — returned it.\n<|endoftext|> literal", "name": "bob"}]
    for model in ("gpt-4o-mini", "gpt-3.5-turbo"):
        encoding = load_encoding(encoding_name(model))
        expected = cookbook_count(messages, type("E", (), {"encode": staticmethod(encoding.encode_ordinary)}))
        assert TokenCounter.for_model(model).count_messages(messages) == expected


def test_unknown_models_fall_back_to_a_flagged_estimate():
    counter = TokenCounter.for_model("my-local-llama")
    assert not counter.exact
    assert counter.count_text("abcdefgh") == 2


def test_spend_cap_reserves_the_worst_case_and_settles_the_actual():
    cap = SpendCap(Decimal("0.001"), load_prices(), "gpt-4o-mini", 100, 1)
    most = cap.most(1000)  # 1000 × 0.15/1M + 100 × 0.60/1M
    assert most == Decimal("0.00021")
    reservations = [cap.reserve(1000) for _ in range(4)]
    assert None not in reservations and cap.reserve(1000) is None  # a fifth could cross $0.001
    cap.settle(reservations[0], Decimal("0.00005"))
    cap.settle(reservations[1], Decimal(0))
    assert cap.spent_usd == Decimal("0.00005") and cap.reserve(1000) is not None


def test_spend_cap_needs_a_price_and_an_output_bound():
    with pytest.raises(JobError, match="price"):
        SpendCap(Decimal(1), load_prices(), "my-model", 10, 1)
    assert SpendCap(Decimal(1), load_prices(), "gpt-4o", None, 1).most(0) == Decimal("0.16384")  # 16,384 × $10/1M


# -- through the CLI, against the fake API counting tokens with the same recipe ------------------

def exact_prompt_tokens(messages):
    return TokenCounter.for_model("gpt-4o-mini").count_messages(messages)


@pytest.fixture
def fake():
    with FakeOpenAI(api_key=KEY, count_prompt=exact_prompt_tokens) as server:
        yield server


def cli(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = KEY
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def job_args(fake, tmp_path, *extra):
    return ["--input", ROOT / "data" / "sample" / "reviews.csv", "--output", tmp_path / "out.parquet",
            "--model", "gpt-4o-mini", "--system", "Label the sentiment.", "--template",
            "Product: {product}\nReview: {review}", "--max-completion-tokens", "20",
            "--base-url", fake.base_url, "--quiet", *extra]


def test_estimate_matches_what_the_run_is_billed(fake, tmp_path):
    estimated = cli("estimate", *job_args(fake, tmp_path), "--json")
    assert estimated.returncode == 0, estimated.stderr
    figures = json.loads(estimated.stdout)
    assert not fake.requests  # a dry run sends nothing
    assert figures["rows"] == 200 and figures["prompt_tokens_exact"]
    run = cli("run", *job_args(fake, tmp_path))
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert figures["prompt_tokens"] == summary["prompt_tokens"]
    assert figures["requests"] == len(fake.completed())
    assert summary["cost_usd"] <= figures["cost_usd_max"]
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    for row in rows:
        if row["status"] == "ok" and not row["cached"]:
            expected = (row["prompt_tokens"] * Decimal("0.15") + row["completion_tokens"] * Decimal("0.60")) / 10**6
            assert Decimal(str(row["cost_usd"])) == pytest.approx(expected, abs=Decimal("1e-12"))
    again = json.loads(cli("estimate", *job_args(fake, tmp_path), "--json").stdout)
    assert again["completion_tokens_likely"] == pytest.approx(
        summary["completion_tokens"] / figures["requests"] * figures["requests"], abs=1)


def test_estimate_reports_problems_and_needs_no_key(tmp_path):
    pq.write_table(pa.table({"text": ["short", "word " * 130_000, None]}), tmp_path / "in.parquet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    result = subprocess.run([sys.executable, "-m", "pipeline", "estimate", "--input", tmp_path / "in.parquet",
                             "--template", "{text}", "--model", "gpt-4o", "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["rows_over_context_window"] == 1 and figures["rows_over_context_window_sample"] == [1]
    assert figures["skipped_rows"] == 1
    assert figures["completion_tokens_max"] == 2 * 16384  # no max set: the model's largest reply
    missing = cli("estimate", "--input", tmp_path / "in.parquet", "--template", "{txt}", "--model", "gpt-4o")
    assert missing.returncode == 2 and "'txt'" in missing.stderr


def test_the_cost_cap_stops_the_run_within_the_cap_and_a_rerun_respects_it(fake, tmp_path):
    fake.latency_s = 0.01
    capped = cli("run", *job_args(fake, tmp_path), "--max-cost", "0.0005", "--concurrency", "4")
    assert capped.returncode == 3, capped.stderr
    assert "cost cap" in capped.stderr and "--max-cost" in capped.stderr
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert 0 < summary["cost_usd"] <= 0.0005
    billed = len(fake.completed())
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert 0 < sum(r["status"] == "ok" for r in rows) < 193
    assert {r["error_type"] for r in rows if r["status"] == "error"} == {"not_sent"}

    again = cli("run", *job_args(fake, tmp_path), "--max-cost", "0.0005", "--concurrency", "4")
    assert again.returncode == 3
    assert json.loads((tmp_path / "out.parquet.summary.json").read_text())["cost_usd"] <= 0.0005
    assert len(fake.completed()) - billed <= 1  # at most what the small remainder of the cap allows

    finish = cli("run", *job_args(fake, tmp_path), "--max-cost", "1")
    assert finish.returncode == 0, finish.stderr
    prompts = [entry["prompt"] for entry in fake.completed()]
    assert len(prompts) == len(set(prompts))  # nothing paid for twice across the three runs


def test_prices_lists_the_dated_table():
    text = cli("prices")
    assert text.returncode == 0 and "as of" in text.stdout and "gpt-4o-mini" in text.stdout
    table = json.loads(cli("prices", "--json").stdout)
    assert table["models"]["gpt-4o-mini"]["output"] == 0.6 and table["as_of"]
