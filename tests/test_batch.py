"""chatbatch batch submit / status / collect / cancel against the loopback Files and Batch API."""

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fakeapi import FakeOpenAI  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-SECRET-batch-321"


@pytest.fixture
def fake():
    with FakeOpenAI(api_key=KEY) as server:
        server.batch_polls_per_step = 2  # it takes its time
        yield server


def chatbatch(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = KEY
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def job(fake, tmp_path, *extra):
    return ["--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet", "--template", "{text}",
            "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--quiet", *extra]


def write_input(tmp_path, texts):
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), tmp_path / "in.parquet")


def posts(fake, path):
    return sum(1 for method, p in fake.batch_requests_log if method == "POST" and p.rstrip("/") == path)


def test_submit_splits_collect_maps_rows_and_costs_at_batch_prices(fake, tmp_path):
    texts = [f"row {i}" for i in range(12)]
    texts[3] = "row 3 [[status:400]]"
    texts[5] = None  # skipped, never submitted
    write_input(tmp_path, texts)
    fake.batch_outcome = {1: "expire"}  # the second of three batches expires half done
    submitted = chatbatch("batch", "submit", *job(fake, tmp_path, "--batch-max-requests", "4"), "--json")
    assert submitted.returncode == 0, submitted.stderr
    batches = json.loads(submitted.stdout)
    assert [b["requests"] for b in batches] == [4, 4, 3] and posts(fake, "/v1/batches") == 3
    lines = [json.loads(x) for f in fake.files.values() if f["purpose"] == "batch" for x in f["content"].splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"row-{i}" for i in range(12) if i != 5)
    assert all(x["url"] == "/v1/chat/completions" and x["body"]["model"] == "gpt-4o-mini" for x in lines)

    again = chatbatch("batch", "submit", *job(fake, tmp_path))
    assert again.returncode == 2 and "already has batches" in again.stderr
    assert posts(fake, "/v1/batches") == 3  # nothing submitted twice

    running = chatbatch("batch", "collect", *job(fake, tmp_path))
    assert running.returncode == 5 and not (tmp_path / "out.parquet").exists()
    status = chatbatch("batch", "status", *job(fake, tmp_path), "--json")
    assert {b["batch_id"] for b in json.loads(status.stdout)} == {b["batch_id"] for b in batches}

    collected = chatbatch("batch", "collect", *job(fake, tmp_path), "--wait", "--poll-interval", "0.01")
    assert collected.returncode == 1, collected.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in rows] == list(range(12))
    by_id = {r["id"]: r for r in rows}
    assert by_id[5]["status"] == "skipped"
    assert (by_id[3]["status"], by_id[3]["http_status"]) == ("error", 400)
    expired = [r for r in rows if r["error_type"] == "batch_expired"]
    assert len(expired) == 2 and all(4 <= r["id"] <= 8 for r in expired)  # half of batch 2 unanswered
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 12 - 1 - 1 - 2
    for r in ok:
        assert r["reply"] == f"ECHO {r['text']}"
        expected = (r["prompt_tokens"] * Decimal("0.075") + r["completion_tokens"] * Decimal("0.30")) / 10**6
        assert Decimal(str(r["cost_usd"])) == pytest.approx(expected, abs=Decimal("1e-12"))
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["prices"] == "batch" and summary["ok"] == len(ok)

    # the expired rows — and only they — go out in real time with run (resume state shared)
    run = chatbatch("run", *job(fake, tmp_path))
    assert run.returncode == 1, run.stderr  # the 400 row stays failed
    assert sorted(e["prompt"] for e in fake.requests if e["status"] == 200) == sorted(r["text"] for r in expired)
    final = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["status"] for r in final].count("ok") == len(ok) + 2


def test_failed_batch_and_error_only_batch(fake, tmp_path):
    write_input(tmp_path, [f"row {i}" for i in range(4)])
    fake.batch_outcome = {0: "fail", 1: "errors_only"}
    assert chatbatch("batch", "submit", *job(fake, tmp_path, "--batch-max-requests", "2")).returncode == 0
    collected = chatbatch("batch", "collect", *job(fake, tmp_path), "--wait", "--poll-interval", "0.01")
    assert collected.returncode == 1, collected.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["error_type"] for r in rows[:2]] == ["batch_failed", "batch_failed"]
    assert all(r["status"] == "error" and r["error_type"] == "server_error" for r in rows[2:])  # status_code 0 lines
    resubmit = chatbatch("batch", "submit", *job(fake, tmp_path), "--json")
    # the failed batch's rows, and the rows that failed transiently (server_error): sent again
    assert resubmit.returncode == 0 and [b["requests"] for b in json.loads(resubmit.stdout)] == [4]


def test_cancel_keeps_partial_output(fake, tmp_path):
    write_input(tmp_path, [f"row {i}" for i in range(4)])
    assert chatbatch("batch", "submit", *job(fake, tmp_path)).returncode == 0
    cancelled = chatbatch("batch", "cancel", *job(fake, tmp_path), "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)[0]["status"] == "cancelling"
    collected = chatbatch("batch", "collect", *job(fake, tmp_path), "--wait", "--poll-interval", "0.01")
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["status"] for r in rows].count("ok") == 2
    assert [r["error_type"] for r in rows].count("batch_cancelled") == 2
    assert KEY not in collected.stdout + collected.stderr


def test_expired_lines_listed_in_the_error_file_stay_unanswered_and_resubmittable(fake, tmp_path):
    write_input(tmp_path, [f"row {i}" for i in range(4)])
    fake.batch_unfinished_errors = True  # newer servers list unfinished lines with code batch_expired
    fake.batch_outcome = {0: "expire"}
    assert chatbatch("batch", "submit", *job(fake, tmp_path)).returncode == 0
    chatbatch("batch", "collect", *job(fake, tmp_path), "--wait", "--poll-interval", "0.01")
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["error_type"] for r in rows].count("batch_expired") == 2
    resubmit = chatbatch("batch", "submit", *job(fake, tmp_path), "--json")
    assert [b["requests"] for b in json.loads(resubmit.stdout)] == [2]


# ---- the second night, and what a nightly user needs from batch mode ------------------------------

def collect_wait(fake, tmp_path, *extra):
    return chatbatch("batch", "collect", *job(fake, tmp_path, *extra), "--wait", "--poll-interval", "0.01")


def test_second_night_in_batch_mode_starts_afresh(fake, tmp_path):
    write_input(tmp_path, ["mon 0", "mon 1", "mon 2"])
    assert chatbatch("batch", "submit", *job(fake, tmp_path)).returncode == 0
    assert collect_wait(fake, tmp_path).returncode == 0
    assert [r["reply"] for r in pq.read_table(tmp_path / "out.parquet").to_pylist()] == [
        "ECHO mon 0", "ECHO mon 1", "ECHO mon 2"]
    # status and cancel after the collect never make the finished job unfinished again
    assert chatbatch("batch", "status", *job(fake, tmp_path)).returncode == 0
    assert chatbatch("batch", "cancel", *job(fake, tmp_path)).returncode == 0

    write_input(tmp_path, ["tue 0", "tue 1"])  # cron replaces the input
    night2 = chatbatch("batch", "submit", *job(fake, tmp_path), "--json")
    assert night2.returncode == 0, night2.stderr
    assert [b["requests"] for b in json.loads(night2.stdout)] == [2]
    collected = collect_wait(fake, tmp_path)
    assert collected.returncode == 0, collected.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(r["text"], r["status"], r["reply"]) for r in rows] == [
        ("tue 0", "ok", "ECHO tue 0"), ("tue 1", "ok", "ECHO tue 1")]
    assert posts(fake, "/v1/batches") == 2


def test_second_night_in_run_mode_with_a_batch_status_between(fake, tmp_path):
    write_input(tmp_path, ["mon 0", "mon 1"])
    assert chatbatch("run", *job(fake, tmp_path)).returncode == 0
    status = chatbatch("batch", "status", *job(fake, tmp_path))
    assert status.returncode == 0 and "no batches" in status.stderr
    write_input(tmp_path, ["tue 0", "tue 1", "tue 2"])
    night2 = chatbatch("run", *job(fake, tmp_path))
    assert night2.returncode == 0, night2.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(r["text"], r["reply"]) for r in rows] == [(f"tue {i}", f"ECHO tue {i}") for i in range(3)]


def test_fresh_and_run_refused_while_batches_are_open(fake, tmp_path):
    write_input(tmp_path, [f"row {i}" for i in range(4)])
    submitted = chatbatch("batch", "submit", *job(fake, tmp_path, "--batch-max-requests", "2"), "--json")
    ids = [b["batch_id"] for b in json.loads(submitted.stdout)]
    for command in (["run", "--fresh"], ["batch", "submit", "--fresh"], ["run"]):
        refused = chatbatch(*command, *job(fake, tmp_path))
        assert refused.returncode == 2, (command, refused.stderr)
        assert all(i in refused.stderr for i in ids) and "collect" in refused.stderr
    fresh_collect = chatbatch("batch", "collect", *job(fake, tmp_path), "--fresh")
    assert fresh_collect.returncode == 2 and "does not take --fresh" in fresh_collect.stderr
    assert posts(fake, "/v1/batches") == 2 and fake.requests == []  # nothing sent, nothing orphaned
    assert collect_wait(fake, tmp_path).returncode == 0  # the state still knows its batches
    again = chatbatch("batch", "submit", *job(fake, tmp_path), "--fresh", "--json")
    assert again.returncode == 0 and [b["requests"] for b in json.loads(again.stdout)] == [4]


def test_cancel_asks_first_skips_ended_batches_and_does_not_retry_a_refused_cancel(fake, tmp_path):
    write_input(tmp_path, [f"row {i}" for i in range(6)])
    fake.batch_outcome = {0: "fail"}
    assert chatbatch("batch", "submit", *job(fake, tmp_path, "--batch-max-requests", "2")).returncode == 0
    for _ in range(2):  # two polls: batch 0 fails, the others start
        chatbatch("batch", "status", *job(fake, tmp_path))
    fake.batch_fault = lambda method, path: (
        (409, {"error": {"message": "Batch cannot be cancelled now", "type": "invalid_request_error",
                         "code": None}}) if path == "/v1/batches/batch_1/cancel" else None)
    cancelled = chatbatch("batch", "cancel", *job(fake, tmp_path), "--json")
    assert cancelled.returncode == 1, cancelled.stderr
    result = {b["batch_id"]: b for b in json.loads(cancelled.stdout)}
    assert (result["batch_0"]["cancel"], result["batch_0"]["status"]) == ("skipped", "failed")
    assert result["batch_1"]["cancel"] == "failed" and "HTTP 409" in result["batch_1"]["reason"]
    assert (result["batch_2"]["cancel"], result["batch_2"]["status"]) == ("requested", "cancelling")
    assert posts(fake, "/v1/batches/batch_0/cancel") == 0  # ended: not asked to cancel
    assert posts(fake, "/v1/batches/batch_1/cancel") == 1  # a 409 is not retried
    log = fake.batch_requests_log
    assert log.index(("GET", "/v1/batches/batch_2")) < log.index(("POST", "/v1/batches/batch_2/cancel"))


def test_failed_batch_errors_are_printed_and_kept_in_the_rows(fake, tmp_path):
    write_input(tmp_path, [f"row {i}" for i in range(4)])
    fake.batch_outcome = {0: "fail"}
    fake.batch_fail_errors = [{"code": "token_limit_exceeded", "message": "Enqueued token limit reached for "
                               "gpt-4o-mini in organization org-x.", "param": None, "line": None}]
    assert chatbatch("batch", "submit", *job(fake, tmp_path, "--batch-max-requests", "2")).returncode == 0
    for _ in range(2):
        status = chatbatch("batch", "status", *job(fake, tmp_path))
    assert "batch_0  failed" in status.stdout and "token_limit_exceeded: Enqueued token limit" in status.stdout
    collected = collect_wait(fake, tmp_path)
    assert collected.returncode == 1
    assert "batch batch_0 failed: token_limit_exceeded: Enqueued token limit reached" in collected.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["error_type"] for r in rows[:2]] == ["batch_failed"] * 2
    assert all("token_limit_exceeded: Enqueued token limit reached" in r["error_message"] for r in rows[:2])
    assert [r["status"] for r in rows[2:]] == ["ok", "ok"]
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["rows_unfinished"] == 2 and "token_limit_exceeded" in summary["batch_errors"]["batch_0"]


def _label_reply(body):
    """'fixable' rows are invalid on their first reply, 'hopeless' ones always; the rest are fine."""
    prompt = body["messages"][-1]["content"]
    _label_reply.seen[prompt] = _label_reply.seen.get(prompt, 0) + 1
    if "hopeless" in prompt or ("fixable" in prompt and _label_reply.seen[prompt] == 1):
        return '{"label": "maybe"}'
    return '{"label": "pos"}'


def test_invalid_batch_replies_are_sent_again_within_validation_retries(fake, tmp_path):
    write_input(tmp_path, ["fine", "fixable", "hopeless"])
    _label_reply.seen = {}
    fake.reply = _label_reply
    labels = ("--labels", "pos,neg", "--validation-retries", "1")
    assert chatbatch("batch", "submit", *job(fake, tmp_path, *labels)).returncode == 0
    first = collect_wait(fake, tmp_path, *labels)
    assert first.returncode == 1 and "2 rows have no final answer" in first.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "error"]
    assert all(r["error_type"] == "invalid_output" and "sends it again" in r["error_message"] for r in rows[1:])
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    discarded_first = Decimal(str(summary["discarded_replies_cost_usd"]))
    assert discarded_first > 0  # the two discarded replies were billed

    second = chatbatch("batch", "submit", *job(fake, tmp_path, *labels), "--json")
    assert second.returncode == 0 and [b["requests"] for b in json.loads(second.stdout)] == [2]
    assert collect_wait(fake, tmp_path, *labels).returncode == 1  # 'hopeless' failed twice: final
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(r["status"], r["label"], r["attempts"]) for r in rows] == [
        ("ok", "pos", 1), ("ok", "pos", 2), ("error", None, 2)]
    assert rows[2]["error_type"] == "invalid_output" and rows[2]["reply"] == '{"label": "maybe"}'
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert Decimal(str(summary["discarded_replies_cost_usd"])) == discarded_first
    row_costs = sum(Decimal(str(r["cost_usd"])) for r in rows)
    assert Decimal(str(summary["cost_usd"])) == pytest.approx(row_costs + discarded_first, abs=Decimal("1e-12"))
    assert summary["rows_unfinished"] == 0

    third = chatbatch("batch", "submit", *job(fake, tmp_path, *labels))
    assert third.returncode == 0 and "nothing to send" in third.stderr
    assert posts(fake, "/v1/batches") == 2


def test_no_silent_no_ops(fake, tmp_path):
    write_input(tmp_path, ["a", "b"])
    status = chatbatch("batch", "status", *job(fake, tmp_path))
    assert status.returncode == 0 and "no batches" in status.stderr and status.stdout == ""
    cancel = chatbatch("batch", "cancel", *job(fake, tmp_path))
    assert cancel.returncode == 0 and "no open batches" in cancel.stderr
    assert not (tmp_path / "out.parquet.state").exists()  # looking created nothing
    assert chatbatch("batch", "submit", *job(fake, tmp_path)).returncode == 0
    assert collect_wait(fake, tmp_path).returncode == 0
    cancel = chatbatch("batch", "cancel", *job(fake, tmp_path))
    assert cancel.returncode == 0 and "no open batches" in cancel.stderr
    nothing = chatbatch("batch", "submit", *job(fake, tmp_path))
    assert nothing.returncode == 0 and "nothing to send" in nothing.stderr
    assert posts(fake, "/v1/files") == 1


def test_insufficient_quota_on_upload_stops_with_the_advice_run_gives(fake, tmp_path):
    from pipeline.cli import ABORT_ADVICE

    write_input(tmp_path, ["a", "b"])
    fake.batch_fault = lambda method, path: (429, {"error": {
        "message": "You exceeded your current quota", "type": "insufficient_quota",
        "code": "insufficient_quota"}}) if path == "/v1/files" else None
    submitted = chatbatch("batch", "submit", *job(fake, tmp_path, "--backoff-base", "0.01"))
    assert submitted.returncode == 3
    assert "You exceeded your current quota" in submitted.stderr
    assert ABORT_ADVICE["insufficient_quota"] in submitted.stderr
    assert posts(fake, "/v1/files") == 1  # not retried


def test_a_401_echoing_the_key_is_redacted(fake, tmp_path):
    write_input(tmp_path, ["a"])
    fake.batch_fault = lambda method, path: (401, {"error": {
        "message": f"Incorrect API key provided: {KEY}.", "type": "invalid_request_error",
        "code": "invalid_api_key"}})
    submitted = chatbatch("batch", "submit", *job(fake, tmp_path))
    assert submitted.returncode == 3
    assert KEY not in submitted.stdout + submitted.stderr and "[redacted]" in submitted.stderr
    assert "check OPENAI_API_KEY" in submitted.stderr
    status = chatbatch("batch", "status", *job(fake, tmp_path))
    assert KEY not in status.stdout + status.stderr


def test_batch_client_maps_transport_failures_like_run():
    import asyncio

    import httpx

    from pipeline.batchapi import BatchClient
    from pipeline.errors import TransportFailure
    from pipeline.jobspec import Endpoint, RetrySettings

    calls = []

    def handler(request):
        calls.append(request.url.path)
        if request.url.path.endswith("/files"):
            raise httpx.ConnectError(f"refused, key {KEY} in the message")
        raise httpx.ReadTimeout("slow")

    async def attempt(call):
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        endpoint = Endpoint(url="http://127.0.0.1:9/v1/chat/completions", api_key=KEY)
        client = BatchClient(http, endpoint, RetrySettings(max_attempts=3, backoff_base_s=1, backoff_max_s=1),
                             sleep=lambda s: asyncio.sleep(0), random=lambda: 0.0)
        with pytest.raises(TransportFailure) as caught:
            await call(client)
        return caught.value

    refused = asyncio.run(attempt(lambda c: c.upload("x.jsonl", b"{}\n")))
    assert refused.error_type == "connection_error" and KEY not in refused.message
    assert refused.message.startswith("POST /files: connection failed")
    slow = asyncio.run(attempt(lambda c: c.get("batch_0")))
    assert slow.error_type == "timeout"
    assert len(calls) == 6  # three attempts each: retried as run retries them
