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
    assert resubmit.returncode == 0 and [b["requests"] for b in json.loads(resubmit.stdout)] == [2]  # the failed batch's rows


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
