"""The nightly user's reruns and bill with the real CLI against tests/fakeapi.py: a night-time
outage recovered by a plain rerun, the job's summary over all its runs, identical refused rows paid
once, and service tiers priced at their own rates."""

from __future__ import annotations

import json
import re
from collections import Counter
from decimal import Decimal

import pyarrow.parquet as pq
import pytest

from pipeline.sinks import read_summary_metadata
from test_cli_integration import FAST, base_args, read_rows, read_summary, sent_prompts, write_csv

OUTAGE = {  # prompt -> (status in the first night, status after the rerun)
    "fine": ("ok", "ok"),
    "[[status:503:2]] server down": ("error", "ok"),
    "[[reset:2]] connection dropped": ("error", "ok"),
    "[[429:2]] rate limited": ("error", "ok"),
    "[[truncate:2]] cut reply": ("error", "ok"),
    "[[status:400]] bad request": ("error", "error"),
    "[[refuse]] refused": ("refused", "refused"),
}
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ chatbatch: ")


def test_a_night_outage_is_recovered_by_a_plain_rerun(fake, cli, tmp_path):
    texts = list(OUTAGE)
    inp = write_csv(tmp_path / "in.csv", {"id": range(len(texts)), "text": texts})
    out = tmp_path / "out.parquet"
    args = [*base_args(fake, inp, out), "--template", "{text}", "--max-attempts", "2", "--concurrency", "2"]

    night = cli.run(*args)
    assert night.returncode == 1, night.stderr
    assert [r["status"] for r in read_rows(out)] == [first for first, _ in OUTAGE.values()]
    assert [r["error_type"] for r in read_rows(out)][1:6] == [
        "server_error", "connection_error", "rate_limited", "bad_response", "invalid_request_error"]
    first = read_summary(out)

    before = Counter(sent_prompts(fake))
    rerun = cli.run(*args)
    assert rerun.returncode == 1, rerun.stderr  # the 400 stays failed
    assert ("resuming: 3 of 7 rows finished (1 ok, 1 refused, 1 failed permanently); 4 failed transiently "
            "and will be sent again") in rerun.stderr
    rows = read_rows(out)
    assert [r["status"] for r in rows] == [after for _, after in OUTAGE.values()]
    assert [r["text"] for r in rows] == texts
    resent = sent_prompts(fake) - before
    assert resent == Counter({text: 1 for text in texts[1:5]})  # the transient rows, once each
    second = read_summary(out)
    assert second["runs"] == 2 and second["this_run"]["requests_sent"] == 4
    assert second["requests_sent"] == first["requests_sent"] + 4
    assert second["total_tokens"] == first["total_tokens"] + second["this_run"]["total_tokens"]
    lines = rerun.stderr.splitlines()
    assert len(lines) >= 3 and all(STAMP.match(line) for line in lines), rerun.stderr  # cron log lines
    assert re.search(r"chatbatch: failed: 7/7 rows done: ok 5, error 1, refused 1, skipped 0, not sent 0 "
                     r"\(3 from earlier runs, 4 requests sent\)$", lines[-1])

    idle = cli.run(*args)  # nothing left to send: the job's summary is unchanged, not zeros
    assert idle.returncode == 1 and sent_prompts(fake) - before == resent
    third = read_summary(out)
    for key in ("total_tokens", "prompt_tokens", "cost_usd", "requests_sent", "retries", "rate_limited_429",
                "models", "ok", "error", "refused"):
        assert third[key] == second[key], key
    assert third["elapsed_s"] >= second["elapsed_s"] and third["runs"] == 3
    assert third["this_run"]["requests_sent"] == 0 and third["this_run"]["total_tokens"] == 0
    assert json.loads(read_summary_metadata(out)) == third
    assert f"${third['cost_usd']:.6f}" in idle.stdout and "run 3 of the job: 0 requests" in idle.stdout
    assert re.search(r"rpm 0 tpm 0", idle.stderr)


def test_identical_refused_rows_are_paid_once(fake, cli, tmp_path):
    texts = ["[[refuse]] same"] * 3 + ["fine"]
    inp = write_csv(tmp_path / "in.csv", {"text": texts})
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert len(fake.completed()) == 2  # one refused request, one fine
    rows = read_rows(out)
    assert [r["status"] for r in rows] == ["refused"] * 3 + ["ok"]
    assert [r["cached"] for r in rows] == [False, True, True, False]
    assert rows[0]["cost_usd"] > 0 and [r["cost_usd"] for r in rows[1:3]] == [0, 0]
    summary = read_summary(out)
    assert summary["cost_usd"] == pytest.approx(rows[0]["cost_usd"] + rows[3]["cost_usd"])
    assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert summary["requests_sent"] == 2 and summary["cached_rows"] == 2


# gpt-4.1 priority rates from OpenAI's Priority processing page, written here on purpose
PRIORITY_IN, PRIORITY_OUT = Decimal("3.50"), Decimal("14.00")


def test_service_tiers_are_priced_at_their_own_rates(fake, cli, tmp_path):
    inp = write_csv(tmp_path / "in.csv", {"text": ["one question", "another question"]})
    out = tmp_path / "priority.parquet"
    proc = cli.run("run", "--input", inp, "--output", out, "--model", "gpt-4.1", "--base-url", fake.base_url,
                   *FAST, "--template", "{text}", "--service-tier", "priority", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert all(e["body"]["service_tier"] == "priority" for e in fake.requests)
    for row in read_rows(out):
        expected = (row["prompt_tokens"] * PRIORITY_IN + row["completion_tokens"] * PRIORITY_OUT) / 10**6
        assert Decimal(str(row["cost_usd"])) == pytest.approx(expected, rel=Decimal("1e-12"))

    out = tmp_path / "flex.parquet"
    proc = cli.run("run", "--input", inp, "--output", out, "--model", "gpt-4o-mini", "--base-url",
                   fake.base_url, *FAST, "--template", "{text}", "--service-tier", "flex", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "no flex price known for model 'gpt-4o-mini'" in proc.stderr
    assert [r["cost_usd"] for r in read_rows(out)] == [None, None]  # unknown, never the standard rate
    assert read_summary(out)["cost_usd"] is None
