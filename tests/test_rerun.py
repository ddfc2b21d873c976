"""Reruns and money on httpx.MockTransport: transient failures sent again, the job's summary over all
its runs, identical billed replies paid once, the cost cap and discarded replies across runs."""

import json
import sqlite3
from collections import Counter
from decimal import Decimal

import httpx
import pyarrow.parquet as pq
import pytest

from pipeline.errors import (BadResponse, InvalidOutput, RateLimited, RowRejected, ServerError,
                             TransportFailure, is_transient)
from pipeline.records import RowResult
from pipeline.run import prepare, read_summary, state_dir
from pipeline.state import journal_status, open_state
from pipeline.summary import Spend, format_summary
from test_reuse import make_job, run
from test_runner import completion, prompt_of

PRICE_IN, PRICE_OUT = Decimal("0.15") / 10**6, Decimal("0.60") / 10**6  # gpt-4o-mini, per token


def refusal(usage=(10, 4)):
    body = completion(None, usage)
    body["choices"][0]["message"].update(content=None, refusal="I can't help with that.")
    return body


class Outage:
    """ "down ..." rows fail the way ``kind`` says while ``down``; "bad" gets a 400; "no" is refused."""

    def __init__(self, kind="503"):
        self.kind, self.down, self.sent = kind, True, Counter()

    def __call__(self, request):
        text = prompt_of(request)
        self.sent[text] += 1
        if text.startswith("down") and self.down:
            if self.kind == "connect":
                raise httpx.ConnectError("connection refused")
            if self.kind == "truncated":
                return httpx.Response(200, content=b'{"choices": [')
            return httpx.Response(int(self.kind), json={"error": {"message": "down", "type": "server_error"}})
        if text == "bad":
            return httpx.Response(400, json={"error": {"message": "nope", "code": "context_length_exceeded"}})
        if text == "no":
            return httpx.Response(200, json=refusal())
        return httpx.Response(200, json=completion("ECHO " + text, usage=(10, 4)))


# -- transient vs permanent ----------------------------------------------------------------------

def test_transient_and_permanent_are_told_apart_by_the_error_class():
    transient = {RateLimited.error_type, ServerError.error_type, BadResponse.error_type,
                 *TransportFailure.error_types}
    assert transient == {"rate_limited", "server_error", "bad_response", "timeout", "connection_error",
                         "transport_error"}
    assert all(is_transient(name) for name in transient)
    for permanent in ("context_length_exceeded", "invalid_request", RowRejected.error_type,
                      InvalidOutput.error_type, "refusal", "internal_error", None):
        assert not is_transient(permanent)
    assert journal_status(RowResult(status="error", error_type="timeout")) == "transient"
    assert journal_status(RowResult(status="error", error_type="context_length_exceeded")) == "error"
    assert journal_status(RowResult(status="refused", error_type="refusal")) == "refused"


@pytest.mark.parametrize("kind", ["503", "429", "connect", "truncated"])
def test_transient_failures_are_sent_again_by_a_plain_rerun(kind, tmp_path):
    rows = ["fine", "down 1", "bad", "no", "down 2"]
    job = make_job(tmp_path, rows)
    server = Outage(kind)
    report, out = run(job, server)
    assert report.exit_code == 1 and [r["status"] for r in out] == ["ok", "error", "error", "refused", "error"]

    prepared = prepare(job)
    prepared.store.close()
    assert prepared.notes == (
        f"resuming: 3 of 5 rows finished (1 ok, 1 refused, 1 failed permanently); 2 failed transiently and "
        f"will be sent again; finished rows will not be sent again (state in {state_dir(job)})",)

    server.down, server.sent = False, Counter()
    report, out = run(job, server)
    assert server.sent == Counter({"down 1": 1, "down 2": 1})  # only the transient ones, once each
    assert [r["status"] for r in out] == ["ok", "ok", "error", "refused", "ok"]
    assert [r["reply"] for r in out] == ["ECHO fine", "ECHO down 1", None, None, "ECHO down 2"]
    assert report.summary["resumed_rows"] == 3 and report.summary["ok"] == 3

    server.sent = Counter()
    report, out = run(job, server, retry_errors=True)  # permanent ones only on request
    assert server.sent == Counter({"bad": 1, "no": 1})


# -- the job's summary over all its runs ---------------------------------------------------------

def test_a_rerun_that_sends_nothing_keeps_the_jobs_figures(tmp_path):
    job = make_job(tmp_path, [f"row {i}" for i in range(6)] + ["row 0"])
    first, _ = run(job, Outage())
    second, _ = run(job, Outage())
    one, two = first.summary, second.summary
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "requests_sent", "retries",
                "rate_limited_429", "elapsed_s", "models", "ok", "cached_rows"):
        assert two[key] == one[key], key
    assert one["cost_usd"] == pytest.approx(float(6 * (10 * PRICE_IN + 4 * PRICE_OUT)))
    assert (one["runs"], two["runs"]) == (1, 2)
    this = two["this_run"]
    assert this["requests_sent"] == 0 and this["total_tokens"] == 0 and this["cost_usd"] == 0
    assert this["resumed_rows"] == 7
    # one summary, three places: the JSON beside the output, the Parquet metadata, the printed table
    assert read_summary(job.output_path) == json.loads(
        job.output_path.with_name(job.output_path.name + ".summary.json").read_text()) == two
    table = format_summary(two)
    assert "run 2 of the job: 0 requests" in table and f"${two['cost_usd']:.6f}" in table


def test_the_jobs_figures_add_up_over_runs(tmp_path):
    job = make_job(tmp_path, ["fine", "down 1", "down 2"])
    server = Outage()
    first, _ = run(job, server)
    server.down = False
    second, _ = run(job, server)
    assert first.summary["requests_sent"] == 1 + 2 * 2  # two attempts for each failing row
    assert second.summary["this_run"]["requests_sent"] == 2
    assert second.summary["requests_sent"] == 7 and second.summary["retries"] == 2
    assert second.summary["total_tokens"] == 3 * 14 and second.summary["this_run"]["total_tokens"] == 2 * 14


# -- money ---------------------------------------------------------------------------------------

def test_identical_refused_requests_are_paid_once(tmp_path):
    report, out = run(make_job(tmp_path, ["no", "no", "no", "fine"]), Outage())
    refused = [r for r in out if r["status"] == "refused"]
    assert [r["cached"] for r in refused] == [False, True, True]
    assert [r["cost_usd"] for r in refused[1:]] == [0, 0] and refused[0]["cost_usd"] > 0
    assert report.summary["requests_sent"] == 2
    assert report.summary["cost_usd"] == pytest.approx(float(2 * (10 * PRICE_IN + 4 * PRICE_OUT)))
    assert report.summary["refused"] == 3 and report.summary["cached_rows"] == 2


def test_identical_invalid_replies_are_paid_once(tmp_path):
    job = make_job(tmp_path, ["same"] * 3, labels=["yes", "no"], validation_retries=0)
    report, out = run(job, lambda request: httpx.Response(200, json=completion('{"label": "maybe"}', (10, 4))))
    assert [r["error_type"] for r in out] == ["invalid_output"] * 3
    assert [r["cached"] for r in out] == [False, True, True] and [r["cost_usd"] for r in out][1:] == [0, 0]
    assert report.summary["cost_usd"] == pytest.approx(float(10 * PRICE_IN + 4 * PRICE_OUT))


def test_the_cost_cap_on_a_rerun_counts_refused_replies_earlier_runs_paid(tmp_path):
    rows = [f"no {i}" for i in range(5)] + [f"row {i}" for i in range(5)]

    def refuse_then_revoke(request):
        if prompt_of(request).startswith("no"):
            return httpx.Response(200, json=refusal())
        return httpx.Response(401, json={"error": {"message": "key revoked", "code": "invalid_api_key"}})

    job = make_job(tmp_path, rows, concurrency=1, max_completion_tokens=10)
    report, _ = run(job, refuse_then_revoke)
    assert report.exit_code == 3 and report.summary["refused"] == 5
    paid = 5 * (10 * PRICE_IN + 4 * PRICE_OUT)
    sent = []
    capped = make_job(tmp_path, rows, concurrency=1, max_completion_tokens=10, max_cost=float(paid + PRICE_IN))
    report, out = run(capped, lambda request: sent.append(1) or httpx.Response(200, json=completion("x", (10, 4))))
    assert report.exit_code == 3 and not sent  # what the refusals cost is already spent
    assert report.summary["stopped_by"] == "max_cost_reached"


def test_discarded_replies_are_journaled_with_their_cost_before_the_retry(tmp_path):
    job = make_job(tmp_path, ["one"], labels=["yes", "no"], validation_retries=1)
    journal = state_dir(job) / "journal.sqlite"
    seen_at_retry = []

    def invalid_then_valid(request):
        if seen_at_retry or journal.exists() and _totals(journal) is not None:
            seen_at_retry.append(_totals(journal))
            return httpx.Response(200, json=completion('{"label": "yes"}', (10, 4)))
        seen_at_retry.append(None)
        return httpx.Response(200, json=completion('{"label": "maybe"}', (10, 4)))

    report, out = run(job, invalid_then_valid)
    one_reply = 10 * PRICE_IN + 4 * PRICE_OUT
    assert seen_at_retry[0] is None and seen_at_retry[1].discarded_cost_usd == one_reply
    assert report.summary["discarded_replies_cost_usd"] == pytest.approx(float(one_reply))
    assert report.summary["cost_usd"] == pytest.approx(float(2 * one_reply))
    # and a rerun's cap starts from both replies
    store = open_state(state_dir(job), {}, fresh=False)
    try:
        assert Spend.from_json(store.totals()).billed_usd == 2 * one_reply
    finally:
        store.close()


def _totals(journal):
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'job_totals'").fetchone()
    return Spend.from_json(row[0]) if row else None


def test_a_state_without_totals_counts_what_every_journaled_row_cost(tmp_path):
    """Rows journaled by batch collect (or an older version) carry no totals: rebuild them from the rows."""
    import asyncio

    from pipeline.records import Completion, Usage
    from pipeline.run import earlier_spend

    billed = [RowResult(status=status, attempts=1, cost_usd=Decimal("0.25"), error_type=error_type,
                        completion=Completion((None,), ("stop",), "no", "m", "id", None, Usage(1, 1, 2)))
              for status, error_type in (("ok", None), ("refused", "refusal"), ("error", "invalid_output"))]
    store = open_state(tmp_path / "s", {"model": "m"})
    store.begin()

    async def journal():
        for idx, result in enumerate(billed):
            store.record(idx, None, result)
        await store.committed()
    asyncio.run(journal())
    store.close()
    store = open_state(tmp_path / "s", {"model": "m"})
    try:
        assert store.resumed and store.totals() is None
        assert earlier_spend(store).billed_usd == Decimal("0.75")
    finally:
        store.close()
