"""The real ``chatbatch run`` CLI, as a subprocess, against the fake API in tests/fakeapi.py.

Every test reads the output Parquet row by row, in input order (one output row per input row), and
checks what the fake recorded (``fake.requests``): which prompts were sent, how often, with which
body and headers. Every test also checks that the API key never shows in what the run printed or
left on disk. Retries use tiny backoffs so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, SECRET_KEY, make_cli  # tests/ is on sys.path (pytest's prepend mode)
from fakeapi import REFUSAL, FakeOpenAI, Reply, error_body, prompt_tokens

KEY = SECRET_KEY
MODEL = "gpt-4o-mini"
# gpt-4o-mini list prices in USD per 1M tokens, written here on purpose (not read from prices.json)
PRICE_INPUT, PRICE_CACHED, PRICE_OUTPUT = Decimal("0.15"), Decimal("0.075"), Decimal("0.60")
RESULT_COLUMNS = ("reply", "finish_reason", "refusal", "status", "error_type", "error_message",
                  "http_status", "model", "response_id", "system_fingerprint", "prompt_tokens",
                  "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens", "cost_usd",
                  "latency_s", "attempts")
FAST = ("--backoff-base", "0.01", "--backoff-max", "0.05")


# --------------------------------------------------------------------------------------------------
# helpers


def write_csv(path: Path, columns: dict) -> Path:
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def base_args(fake: FakeOpenAI, inp: Path, out: Path, *extra: object) -> list:
    return ["run", "--input", inp, "--output", out, "--model", MODEL, "--base-url", fake.base_url,
            *FAST, *extra]


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def read_summary(out: Path) -> dict:
    return json.loads(out.with_name(out.name + ".summary.json").read_text())


def sent_prompts(fake: FakeOpenAI) -> Counter:
    """How many requests the fake received per prompt (all statuses, retries included)."""
    return Counter(entry["prompt"] for entry in fake.requests)


def temp_files(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def parquet_text(path: Path) -> str:
    """Every value and every metadata entry of a Parquet file, as text."""
    table = pq.read_table(path)
    parts = [json.dumps(table.to_pylist(), default=str)]
    for meta in (table.schema.metadata or {}, pq.read_metadata(path).metadata or {}):
        parts += [k.decode("utf-8", "replace") + v.decode("utf-8", "replace") for k, v in meta.items()]
    return "\n".join(parts)


def assert_no_secret(proc, *folders: Path, secret: str = KEY) -> None:
    """The key is in no output stream, no file under ``folders`` and no decoded Parquet value."""
    assert secret not in (proc.stdout or ""), "API key printed on stdout"
    assert secret not in (proc.stderr or ""), "API key printed on stderr"
    for folder in folders:
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            assert secret.encode() not in data, f"API key stored in {path}"
            if data[:4] == data[-4:] == b"PAR1":  # a Parquet file: its values are compressed
                assert secret not in parquet_text(path), f"API key stored in {path}"


def assert_result_columns(out: Path, input_columns: list[str], prefix: str = "") -> None:
    names = pq.read_schema(out).names
    assert names[: len(input_columns)] == input_columns, "input columns first, unchanged, in order"
    for column in RESULT_COLUMNS:
        assert prefix + column in names, f"missing output column {prefix + column}"


def wait_for(condition, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def expected_cost(p: int, cached: int, c: int) -> float:
    return float(((p - cached) * PRICE_INPUT + cached * PRICE_CACHED + c * PRICE_OUTPUT) / Decimal(1_000_000))


# --------------------------------------------------------------------------------------------------
# 1. happy path (one run, several tests)

HAPPY_SYSTEM = "You label the sentiment of product reviews."
HAPPY_TEMPLATE = "Review of {product} ({rating}/5): {review}"
HAPPY_INPUT = {
    "product": ["OXO mixing bowls", 'Lodge 10.25" skillet', "JBL Flip 6", "Kindle, Paperwhite", "Mug"],
    "rating": [5, 4, 2, 3, 1],
    "review": [
        "Pour spouts are a small detail that make a big difference.",
        'Heavy, "pre-seasoned", and\nit rusted after one wash.',
        "Très bon son — 日本語のレビュー 🎵",
        "Literal {title} braces stay as they are.",
        "A very long review. " * 15,  # cut by max_completion_tokens: finish_reason "length"
    ],
}
HAPPY_MAX_TOKENS = 50
CACHED, REASONING = 3, 2


@pytest.fixture(scope="module")
def happy(tmp_path_factory):
    """One happy-path run: 5 rows, system + template, temperature, max tokens, dated model answer."""
    tmp = tmp_path_factory.mktemp("happy")
    inp = write_csv(tmp / "reviews.csv", HAPPY_INPUT)
    out = tmp / "out" / "labelled.parquet"
    with FakeOpenAI(api_key=KEY, cached_tokens=CACHED, reasoning_tokens=REASONING,
                    answered_model=lambda model: model + "-2024-07-18") as fake:
        proc = make_cli(tmp / ".cache").run(
            *base_args(fake, inp, out), "--system", HAPPY_SYSTEM, "--template", HAPPY_TEMPLATE,
            "--temperature", "0.2", "--max-completion-tokens", HAPPY_MAX_TOKENS, "--concurrency", "3")
        requests = list(fake.requests)
    return {"tmp": tmp, "inp": inp, "out": out, "proc": proc, "requests": requests}


def happy_prompts() -> list[str]:
    return [HAPPY_TEMPLATE.format(product=p, rating=r, review=v)
            for p, r, v in zip(HAPPY_INPUT["product"], HAPPY_INPUT["rating"], HAPPY_INPUT["review"])]


def test_happy_path_rows(happy):
    proc, out = happy["proc"], happy["out"]
    assert proc.returncode == 0, proc.stderr
    assert_result_columns(out, ["product", "rating", "review"])
    rows = read_rows(out)
    prompts = happy_prompts()
    assert len(rows) == len(prompts)
    # response ids are handed out in arrival order; every request here got a normal 200
    assert [r["status"] for r in happy["requests"]] == [200] * len(prompts)
    ids = {r["prompt"]: f"chatcmpl-{i}" for i, r in enumerate(happy["requests"], 1)}
    total_cost = Decimal(0)
    for i, (row, prompt) in enumerate(zip(rows, prompts)):
        # input columns unchanged
        assert (row["product"], row["rating"], row["review"]) == (
            HAPPY_INPUT["product"][i], HAPPY_INPUT["rating"][i], HAPPY_INPUT["review"][i])
        echo = "ECHO " + prompt
        cut = max(1, len(echo) // 4) > HAPPY_MAX_TOKENS
        reply = echo[: 4 * HAPPY_MAX_TOKENS] if cut else echo
        p = prompt_tokens([{"content": HAPPY_SYSTEM}, {"content": prompt}])
        c = max(1, len(reply) // 4) + REASONING
        assert row["reply"] == reply, f"row {i}"
        assert row["finish_reason"] == ("length" if cut else "stop"), f"row {i}"
        assert row["refusal"] is None
        assert (row["status"], row["error_type"], row["error_message"]) == ("ok", None, None)
        assert row["http_status"] == 200
        assert row["model"] == "gpt-4o-mini-2024-07-18"
        assert row["response_id"] == ids[prompt]
        assert row["system_fingerprint"] == "fp_fake"
        assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (p, c, p + c)
        assert (row["cached_tokens"], row["reasoning_tokens"]) == (CACHED, REASONING)
        assert row["cost_usd"] == expected_cost(p, CACHED, c), f"row {i}"
        total_cost += (p - CACHED) * PRICE_INPUT + CACHED * PRICE_CACHED + c * PRICE_OUTPUT
        assert row["attempts"] == 1
        assert 0 < row["latency_s"] < 5
    assert rows[4]["finish_reason"] == "length"  # the long review really was cut
    assert temp_files(out) == []
    assert_no_secret(proc, happy["tmp"])


def test_happy_path_request_bodies(happy):
    requests = happy["requests"]
    assert sorted(r["prompt"] for r in requests) == sorted(happy_prompts())  # each row once
    for entry in requests:
        assert entry["path"] == "/v1/chat/completions"
        assert entry["headers"]["authorization"] == f"Bearer {KEY}"
        assert entry["headers"]["content-type"].startswith("application/json")
        assert "openai-organization" not in entry["headers"] and "api-key" not in entry["headers"]
        body = entry["body"]
        assert body["model"] == MODEL
        assert body["messages"] == [{"role": "system", "content": HAPPY_SYSTEM},
                                    {"role": "user", "content": entry["prompt"]}]
        assert body["temperature"] == 0.2
        assert body["max_completion_tokens"] == HAPPY_MAX_TOKENS
        assert "n" not in body and "max_tokens" not in body


def test_happy_path_summary(happy):
    out, proc = happy["out"], happy["proc"]
    rows = read_rows(out)
    summary = read_summary(out)
    in_metadata = json.loads(pq.read_schema(out).metadata[b"chatbatch.summary"])
    assert in_metadata == summary
    n = len(rows)
    assert (summary["rows"], summary["ok"], summary["error"], summary["skipped"]) == (n, n, 0, 0)
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens"):
        assert summary[name] == sum(r[name] for r in rows), name
    cost = sum(Decimal(str(r["cost_usd"])) for r in rows)
    assert summary["cost_usd"] == pytest.approx(float(cost), rel=1e-12)
    assert summary["cost_usd_known"] == summary["cost_usd"]
    assert summary["models"]["gpt-4o-mini-2024-07-18"]["rows"] == n
    assert summary["error_types"] == {}
    assert (summary["retries"], summary["rate_limited_429"], summary["refusals"]) == (0, 0, 0)
    assert summary["exit_code"] == 0
    assert summary["requests_sent"] == n
    assert summary["model"] == MODEL
    assert summary["stopped"] is None
    # the table printed at the end
    assert f"ok {n}" in proc.stdout and "cost" in proc.stdout
    assert str(out) in proc.stdout
    assert "Traceback" not in proc.stderr


def test_summary_subcommand(happy, tmp_path):
    out = happy["out"]
    cli = make_cli(tmp_path / ".cache")
    text = cli.run("summary", out)
    assert text.returncode == 0, text.stderr
    summary = read_summary(out)
    assert f"ok {summary['ok']}" in text.stdout
    assert f"${summary['cost_usd']:.6f}" in text.stdout
    assert "gpt-4o-mini-2024-07-18" in text.stdout
    as_json = cli.run("summary", out, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == summary
    # a Parquet file chatbatch did not write: a clear error, exit 2
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1]}), foreign)
    refused = cli.run("summary", foreign)
    assert refused.returncode == 2
    assert "no chatbatch summary" in refused.stderr and "Traceback" not in refused.stderr
    assert_no_secret(text, tmp_path)
    assert_no_secret(as_json)


def test_sample_reviews_parquet_row_by_row(fake, cli, tmp_path):
    """200 real-looking reviews (quotes, newlines, non-ASCII, braces, nulls, blanks, duplicates)."""
    inp = REPO / "data" / "sample" / "reviews.parquet"
    table = pq.read_table(inp)
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "{review}", "--concurrency", "16", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # --quiet
    result = pq.read_table(out)
    assert result.schema.field("rating").type == pa.int64() and result.num_rows == table.num_rows
    assert result.select(table.column_names).to_pylist() == table.to_pylist()  # input kept as it was
    blank = 0
    for row in result.to_pylist():
        if row["review"] is None or not row["review"].strip():
            blank += 1
            assert (row["status"], row["attempts"], row["reply"]) == ("skipped", 0, None), row["review_id"]
        else:
            assert row["status"] == "ok" and row["reply"] == "ECHO " + row["review"], row["review_id"]
    assert blank == 7
    # every distinct non-blank review was sent exactly once
    texts = {r for r in table.column("review").to_pylist() if r is not None and r.strip()}
    assert sent_prompts(fake) == Counter(dict.fromkeys(texts, 1))
    assert read_summary(out)["skipped"] == blank
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# 2. one row per fault

# (text, status, attempts, error_type, http_status); --max-attempts 3 --timeout 0.75
FAULTS = [
    ("plain row", "ok", 1, None, 200),
    ("[[status:400]] bad request", "error", 1, "invalid_request_error", 400),
    ("[[context]] too long", "error", 1, "context_length_exceeded", 400),
    ("[[status:404]] not found", "error", 1, "invalid_request_error", 404),
    ("[[status:422]] unprocessable", "error", 1, "invalid_request_error", 422),
    ("[[status:500:2]] flaky twice", "ok", 3, None, 200),
    ("[[status:502:1]] bad gateway once", "ok", 2, None, 200),
    ("[[status:503:1]] unavailable once", "ok", 2, None, 200),
    ("[[status:408:1]] request timeout once", "ok", 2, None, 200),
    ("[[status:409:1]] conflict once", "ok", 2, None, 200),
    ("[[429:2]] rate limited twice", "ok", 3, None, 200),
    ("[[reset:1]] dropped once", "ok", 2, None, 200),
    ("[[truncate:1]] truncated once", "ok", 2, None, 200),
    ("[[nochoices:1]] no choices once", "ok", 2, None, 200),
    ("[[slow:3:1]] slow once", "ok", 2, None, 200),
    ("[[status:500]] always failing", "error", 3, "server_error", 500),
    ("[[truncate]] always truncated", "error", 3, "bad_response", 200),
    ("[[slow:3]] always slow", "error", 3, "timeout", None),
    ("[[refuse]] refused", "refused", 1, "refusal", 200),
]


def test_mixed_faults_row_by_row(fake, cli, tmp_path):
    inp = write_csv(tmp_path / "faults.csv", {"id": range(len(FAULTS)), "text": [f[0] for f in FAULTS]})
    out = tmp_path / "out.parquet"
    started = time.monotonic()
    proc = cli.run(*base_args(fake, inp, out), "--template", "Q: {text}", "--max-attempts", "3",
                   "--timeout", "0.75", "--concurrency", "8")
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr  # some rows failed
    rows = read_rows(out)
    assert [r["id"] for r in rows] == list(range(len(FAULTS)))
    seen = sent_prompts(fake)
    for row, (text, status, attempts, error_type, http_status) in zip(rows, FAULTS):
        prompt = "Q: " + text
        where = f"row {text!r}: {row['error_message']}"
        assert row["text"] == text
        assert row["status"] == status, where
        assert row["attempts"] == attempts, where
        assert seen[prompt] == attempts, f"{where}: the fake saw {seen[prompt]} requests"
        assert row["error_type"] == error_type, where
        assert row["http_status"] == http_status, where
        if status == "refused":  # a billed answer: its own status, the refusal text kept
            assert row["refusal"] == REFUSAL and row["reply"] is None
            assert row["error_message"] == REFUSAL
            assert row["prompt_tokens"] > 0 and row["cost_usd"] > 0
        elif status == "ok":
            assert row["error_message"] is None
            assert row["reply"] == "ECHO " + prompt and row["refusal"] is None
            assert row["prompt_tokens"] > 0 and row["cost_usd"] > 0
        else:
            assert row["error_message"], where
            assert row["reply"] is None and row["prompt_tokens"] is None and row["cost_usd"] is None
    by_text = {row["text"]: row for row in rows}
    assert "maximum context length" in by_text["[[context]] too long"]["error_message"]
    assert "500" in by_text["[[status:500]] always failing"]["error_message"]
    summary = read_summary(out)
    errors = [r for r in rows if r["status"] == "error"]
    assert summary["refused"] == 1
    assert summary["error"] == len(errors) and summary["ok"] == len(rows) - len(errors) - 1
    assert summary["error_types"] == dict(Counter(r["error_type"] for r in errors))
    assert summary["retries"] == sum(r["attempts"] - 1 for r in rows)
    assert summary["rate_limited_429"] == 2 and summary["refusals"] == 1
    assert summary["exit_code"] == 1
    assert elapsed < 15, f"faults took {elapsed:.1f}s"
    assert_no_secret(proc, tmp_path)


@pytest.mark.parametrize("failure", ["reset", "refused"])
def test_connection_failures_are_reported_as_connection_errors(failure, fake, cli, tmp_path):
    inp = write_csv(tmp_path / "in.csv", {"text": ["[[reset]] always dropped"]})
    out = tmp_path / "out.parquet"
    base_url = fake.base_url
    if failure == "refused":
        import socket
        with socket.socket() as sock:  # a port on 127.0.0.1 that nobody listens on
            sock.bind(("127.0.0.1", 0))
            base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    proc = cli.run("run", "--input", inp, "--output", out, "--model", MODEL, "--base-url", base_url,
                   *FAST, "--template", "{text}", "--max-attempts", "2", "--timeout", "30")
    assert proc.returncode == 1, proc.stderr
    (row,) = read_rows(out)
    assert (row["status"], row["attempts"], row["http_status"]) == ("error", 2, None)
    assert row["error_type"] == "connection_error", row["error_message"]
    assert "30s" not in row["error_message"]


# --------------------------------------------------------------------------------------------------
# 3. blank rows are skipped and never sent


def test_blank_and_null_prompts_are_skipped(fake, cli, tmp_path):
    inp = tmp_path / "blank.csv"
    # row 1 empty cells (null), row 2 whitespace only, row 4 one of two columns null (still sent)
    inp.write_text('title,review\nT0,first review\n,\n"   ","  "\nT3,third review\nT4,\n')
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "Title: {title}\nReview: {review}")
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out)
    assert [r["status"] for r in rows] == ["ok", "skipped", "skipped", "ok", "ok"]
    expected_prompts = ["Title: T0\nReview: first review", "Title: T3\nReview: third review",
                        "Title: T4\nReview: "]
    assert sorted(r["prompt"] for r in fake.requests) == sorted(expected_prompts)
    for row in rows:
        if row["status"] == "skipped":
            assert row["attempts"] == 0 and row["reply"] is None and row["http_status"] is None
    assert rows[4]["reply"] == "ECHO Title: T4\nReview: "
    summary = read_summary(out)
    assert (summary["ok"], summary["skipped"], summary["error"], summary["requests_sent"]) == (3, 2, 0, 3)
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# 4. a refused key: abort, partial output, and the key shows nowhere


class EchoingKeyFake(FakeOpenAI):
    """A server that echoes the full key it was sent in its 401 message (some proxies do)."""

    @staticmethod
    def _auth_error(sent: str) -> Reply:
        return Reply(401, error_body(f"Incorrect API key provided: {sent}. Try another one.",
                                     "invalid_request_error", "invalid_api_key"))


@pytest.mark.parametrize("key_from", ["env", "flag"])
def test_wrong_key_aborts_with_partial_output_and_no_secret(key_from, cli, tmp_path):
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(12)]})
    out = tmp_path / "out.parquet"
    with EchoingKeyFake(api_key="sk-the-server-wants-another-key") as fake:
        if key_from == "env":
            proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--concurrency", "2")
        else:
            proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--concurrency", "2",
                           "--api-key", KEY, drop_env=["OPENAI_API_KEY"])
        requests = list(fake.requests)
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in requests)
    assert proc.returncode == 3, proc.stderr
    assert 1 <= len(requests) <= 2 + 1, "dispatching must stop at the first 401"
    assert all(r["status"] == 401 for r in requests)
    assert "run aborted" in proc.stderr and "401" in proc.stderr
    assert "what to do" in proc.stderr
    assert str(out) in proc.stderr and "not_sent" in proc.stderr
    rows = read_rows(out)
    assert [r["text"] for r in rows] == [f"row {i}" for i in range(12)]
    assert {r["status"] for r in rows} == {"error"}
    failed = [r for r in rows if r["error_type"] == "auth_failed"]
    assert len(failed) == len(requests)
    for row in failed:
        assert row["http_status"] == 401 and row["attempts"] == 1
        assert "Incorrect API key" in row["error_message"]
    for row in rows:
        if row["error_type"] != "auth_failed":
            assert row["error_type"] == "not_sent" and row["attempts"] == 0 and row["http_status"] is None
    summary = read_summary(out)
    assert summary["exit_code"] == 3 and "401" in summary["stopped"]
    assert summary["error"] == 12 and summary["requests_sent"] == len(requests)
    assert_no_secret(proc, tmp_path)


class EchoingKeyOn400Fake(FakeOpenAI):
    """A server that rejects every row with a 400 quoting the full Authorization header."""

    def _check_auth(self, request, azure: bool) -> None:
        raise Reply(400, error_body(f"Malformed header: {request.headers.get('Authorization')}",
                                    "invalid_request_error", None))


def test_key_echoed_in_row_errors_is_redacted(cli, tmp_path):
    inp = write_csv(tmp_path / "in.csv", {"text": ["one", "two", "three"]})
    out = tmp_path / "out.parquet"
    with EchoingKeyOn400Fake(api_key=KEY) as fake:
        proc = cli.run(*base_args(fake, inp, out), "--template", "{text}")
        assert len(fake.requests) == 3
    assert proc.returncode == 1, proc.stderr
    rows = read_rows(out)
    assert [(r["status"], r["http_status"], r["attempts"]) for r in rows] == [("error", 400, 1)] * 3
    for row in rows:
        assert row["error_message"].startswith("HTTP 400: Malformed header: Bearer ")
    assert_no_secret(proc, tmp_path)


@pytest.mark.parametrize("fault, advice", [
    ("auth", "refused the API key"),
    ("quota", "out of credit"),
])
def test_abort_message_says_what_to_do(fault, advice, cli, tmp_path):
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(10)]})
    out = tmp_path / "out.parquet"
    server_key = "sk-another-key" if fault == "auth" else KEY
    with FakeOpenAI(api_key=server_key, quota_after=2 if fault == "quota" else None) as fake:
        proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--concurrency", "1")
    assert proc.returncode == 3, proc.stderr
    assert advice in proc.stderr


# --------------------------------------------------------------------------------------------------
# 5. quota runs out after N completions


@pytest.mark.parametrize("concurrency", [1, 4])
def test_quota_exhausted_keeps_finished_rows(concurrency, fake, cli, tmp_path):
    n_ok, n_rows = 5, 40
    fake.quota_after = n_ok
    fake.latency_s = 0.01
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(n_rows)]})
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--concurrency", concurrency)
    assert proc.returncode == 3, proc.stderr
    assert "run aborted" in proc.stderr and "quota" in proc.stderr
    assert len(fake.requests) <= n_ok + concurrency + 2, "the run must stop promptly"
    rows = read_rows(out)
    assert [r["text"] for r in rows] == [f"row {i}" for i in range(n_rows)]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == n_ok == fake.billed_count
    assert {r["text"] for r in ok} == {r["prompt"] for r in fake.completed()}
    for row in ok:
        assert row["reply"] == "ECHO " + row["text"] and row["cost_usd"] > 0
    if concurrency == 1:  # in order: the first N rows are the ok ones
        assert [r["status"] for r in rows[:n_ok]] == ["ok"] * n_ok
        assert rows[n_ok]["error_type"] == "insufficient_quota" and rows[n_ok]["http_status"] == 429
        assert {r["error_type"] for r in rows[n_ok + 1:]} == {"not_sent"}
    for row in rows:
        if row["status"] != "ok":
            assert row["status"] == "error"
            assert row["error_type"] in ("insufficient_quota", "not_sent")
    summary = read_summary(out)
    assert summary["ok"] == n_ok and summary["exit_code"] == 3
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# 6. bad jobs and inputs: exit 2, nothing sent, a clear message


def _case_missing_column(tmp_path, good_csv):
    return ["--input", good_csv, "--template", "Review: {reviw}"], ["'reviw'", "review, product"]


def _case_system_missing_column(tmp_path, good_csv):
    return (["--input", good_csv, "--template", "{review}", "--system", "You are {persona}"],
            ["'persona'", "system", "review, product"])


def _case_unknown_job_key(tmp_path, good_csv):
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{good_csv.name}"\ntemplate = "{{review}}"\nmax_attempt = 3\n')
    return [job], [str(job), "'max_attempt'", "max_attempts"]


def _case_wrong_type_job_key(tmp_path, good_csv):
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{good_csv.name}"\ntemplate = "{{review}}"\nconcurrency = "lots"\n')
    return [job], [str(job), "'concurrency'", "integer"]


def _case_missing_input(tmp_path, good_csv):
    missing = tmp_path / "nowhere.csv"
    return ["--input", missing, "--template", "{review}"], ["not found", str(missing)]


def _case_ragged_csv(tmp_path, good_csv):
    bad = tmp_path / "ragged.csv"
    bad.write_text("review,product\nfine,mug\nbroken,row,with,extra,cells\n")
    return ["--input", bad, "--template", "{review}"], [str(bad), "csv", "columns"]


def _case_garbage_csv(tmp_path, good_csv):
    bad = tmp_path / "garbage.csv"
    bad.write_bytes(bytes(range(256)) * 40)
    return ["--input", bad, "--template", "{review}"], [str(bad), "csv"]


def _case_garbage_parquet(tmp_path, good_csv):
    bad = tmp_path / "garbage.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet " * 50)
    return ["--input", bad, "--template", "{review}"], [str(bad), "parquet"]


def _case_garbage_jsonl(tmp_path, good_csv):
    bad = tmp_path / "garbage.jsonl"
    bad.write_text('{"review": "ok"}\n{"review": \n')
    return ["--input", bad, "--template", "{review}"], [str(bad), "JSON"]


def _case_unknown_format(tmp_path, good_csv):
    bad = tmp_path / "reviews.txt"
    bad.write_text("review\nx\n")
    return ["--input", bad, "--template", "{review}"], [str(bad), "format"]


def _case_status_column_clash(tmp_path, good_csv):
    clash = write_csv(tmp_path / "clash.csv", {"review": ["a", "b"], "status": ["new", "old"]})
    return ["--input", clash, "--template", "{review}"], ["status", "--column-prefix"]


def _case_missing_messages_column(tmp_path, good_csv):
    return ["--input", good_csv, "--messages-column", "messages"], ["'messages'", "review, product"]


def _case_template_and_messages(tmp_path, good_csv):
    return (["--input", good_csv, "--template", "{review}", "--messages-column", "review"],
            ["exactly one", "template", "messages_column"])


def _case_output_not_parquet(tmp_path, good_csv):
    return ["--input", good_csv, "--template", "{review}", "--output", tmp_path / "out.csv"], [".parquet"]


BAD_JOBS = {name[len("_case_"):]: func for name, func in list(globals().items()) if name.startswith("_case_")}


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_bad_job_exits_2_and_sends_nothing(case, fake, cli, tmp_path):
    good_csv = write_csv(tmp_path / "good.csv", {"review": ["great", "bad"], "product": ["mug", "pan"]})
    args, expected = BAD_JOBS[case](tmp_path, good_csv)
    out = tmp_path / "out.parquet"
    common = ["--model", MODEL, "--base-url", fake.base_url, *FAST]
    if "--output" not in args:
        common += ["--output", out]
    proc = cli.run("run", *args, *common)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert fake.requests == [], "nothing may be sent for a bad job"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ chatbatch: error:", proc.stderr), proc.stderr  # stamped: not a terminal
    for text in expected:
        assert text in proc.stderr, f"{text!r} not in {proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    assert not out.exists() and temp_files(out) == []
    assert_no_secret(proc, tmp_path)


def test_existing_output_is_not_replaced_without_overwrite(fake, cli, tmp_path):
    inp = write_csv(tmp_path / "in.csv", {"review": ["great", "bad"]})
    out = tmp_path / "out.parquet"
    out.write_bytes(b"precious results of last night")
    for attempt in range(2):  # a second identical try must be refused the same way
        proc = cli.run(*base_args(fake, inp, out), "--template", "{review}")
        assert proc.returncode == 2, (attempt, proc.stderr)
        assert "exists" in proc.stderr and "--overwrite" in proc.stderr
        assert out.read_bytes() == b"precious results of last night"
        assert fake.requests == []
    proc = cli.run(*base_args(fake, inp, out), "--template", "{review}", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert [r["reply"] for r in read_rows(out)] == ["ECHO great", "ECHO bad"]
    assert_no_secret(proc, tmp_path)


def test_column_prefix_resolves_a_clash(fake, cli, tmp_path):
    inp = write_csv(tmp_path / "in.csv", {"review": ["a", "b"], "status": ["new", "old"]})
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "{review}", "--column-prefix", "llm_")
    assert proc.returncode == 0, proc.stderr
    assert_result_columns(out, ["review", "status"], prefix="llm_")
    rows = read_rows(out)
    assert [(r["status"], r["llm_status"], r["llm_reply"]) for r in rows] == [
        ("new", "ok", "ECHO a"), ("old", "ok", "ECHO b")]
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# 7. rate limits


def test_rpm_budget_paces_requests(fake, cli, tmp_path):
    arrivals: list[float] = []

    def reply(body):
        arrivals.append(time.monotonic())
        return "ECHO " + body["messages"][-1]["content"]

    fake.rpm, fake.reply = 600, reply
    n = 30
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(n)]})
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--rpm", "600", "--concurrency", "8")
    assert proc.returncode == 0, proc.stderr
    assert fake.rate_limited == 0
    assert [r["status"] for r in read_rows(out)] == ["ok"] * n
    # 600 rpm holds one second's worth (10 requests), then 10 per second
    assert len(arrivals) == n
    for i, t in enumerate(arrivals):
        assert t - arrivals[0] >= (i - 10) * 0.1 - 0.05, f"request {i} came too early"
    assert_no_secret(proc, tmp_path)


def _drain_tokens(fake: FakeOpenAI, leave: int) -> None:
    """Empty the fake's token bucket down to ``leave`` tokens with one big request."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "drain"}],
            "max_completion_tokens": fake.tpm - prompt_tokens([{"content": "drain"}]) - leave}
    response = httpx.post(fake.base_url + "/chat/completions", json=body, timeout=5,
                          headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    assert int(response.headers["x-ratelimit-remaining-tokens"]) <= leave


def test_tpm_budget_avoids_429s_on_a_nearly_empty_bucket(fake, cli, tmp_path):
    fake.tpm = 12_000  # refills 200 tokens/s
    _drain_tokens(fake, leave=400)
    n = 20
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(n)]})
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--tpm", "10800",
                   "--max-completion-tokens", "16", "--concurrency", "8")
    assert proc.returncode == 0, proc.stderr
    assert fake.rate_limited == 0
    assert [r["attempts"] for r in read_rows(out)] == [1] * n
    assert_no_secret(proc, tmp_path)


def test_429s_stay_bounded_without_a_budget(fake, cli, tmp_path):
    fake.tpm = 12_000  # refills 200 tokens/s: about 8 of these rows per second
    _drain_tokens(fake, leave=0)
    n = 20
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(n)]})
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--max-completion-tokens", "16",
                   "--concurrency", "8")
    rows = read_rows(out)
    outcome = f"{fake.rate_limited} 429s for {n} rows; {Counter(r['error_type'] for r in rows)}"
    assert [r["status"] for r in rows] == ["ok"] * n and fake.rate_limited <= 2 * n, outcome
    assert proc.returncode == 0


@pytest.mark.parametrize("rpm_given", [None, "1200"])  # not given, or given 2x too high
def test_a_limit_not_known_yet_is_learned_without_an_opening_burst_of_429s(rpm_given, fake, cli, tmp_path):
    """The server allows 10 a second and a burst of 10; 32 workers. Before the first reply only the
    first wave (4) goes out, and from then on the server's remaining count steers every send, so no
    request should meet an empty bucket: 2 allows for a badly stalled machine. (Before: all 32 went
    out at once, 22 of them into 429s.)"""
    fake.rpm, fake.rpm_window_s, fake.latency_s = 600, 1.0, 0.05
    n = 40
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(n)]})
    out = tmp_path / "out.parquet"
    limit = ["--rpm", rpm_given] if rpm_given else []
    proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--concurrency", "32", *limit)
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out)
    assert [(r["status"], r["reply"]) for r in rows] == [("ok", f"ECHO row {i}") for i in range(n)]
    assert fake.rate_limited <= 2, f"{fake.rate_limited} 429s"
    assert sum(r["attempts"] for r in rows) <= n + 2
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# 8. messages column


def test_jsonl_messages_column(fake, cli, tmp_path):
    tickets = [json.loads(line) for line in
               (REPO / "data" / "sample" / "tickets.jsonl").read_text().splitlines()[:4]]
    records = [{"ticket_id": t["ticket_id"], "messages": t["messages"]} for t in tickets]
    records.insert(2, {"ticket_id": "EMPTY", "messages": []})
    records.append({"ticket_id": "NULL", "messages": None})
    records.append({"ticket_id": "USER-ONLY", "messages": [{"role": "user", "content": "just me"}]})
    inp = tmp_path / "tickets.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--messages-column", "messages")
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out)
    assert [r["ticket_id"] for r in rows] == [r["ticket_id"] for r in records]
    bodies = {entry["prompt"]: entry["body"] for entry in fake.requests}
    assert len(fake.requests) == len(records) - 2
    for row, record in zip(rows, records):
        if not record["messages"]:
            assert row["status"] == "skipped" and row["attempts"] == 0
            continue
        user_text = record["messages"][-1]["content"]
        assert bodies[user_text]["messages"] == record["messages"]  # sent exactly as given
        assert row["status"] == "ok" and row["reply"] == "ECHO " + user_text
    assert_no_secret(proc, tmp_path)


def test_csv_messages_column_with_bad_cells(fake, cli, tmp_path):
    cells = [json.dumps([{"role": "user", "content": "hello"}]), "[]", "not json at all",
             json.dumps([{"role": "robot", "content": "beep"}])]
    inp = write_csv(tmp_path / "in.csv", {"id": [0, 1, 2, 3], "messages": cells})
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--messages-column", "messages")
    assert proc.returncode == 1, proc.stderr
    rows = read_rows(out)
    assert [r["status"] for r in rows] == ["ok", "skipped", "error", "error"]
    assert [r["error_type"] for r in rows[2:]] == ["invalid_messages", "invalid_messages"]
    assert "robot" in rows[3]["error_message"]
    assert [e["prompt"] for e in fake.requests] == ["hello"]
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# 9. literal braces


def test_literal_braces_in_template(fake, cli, tmp_path):
    inp = write_csv(tmp_path / "in.csv", {"review": ["great mug", "says {price} twice"]})
    out = tmp_path / "out.parquet"
    template = 'Return {"label": "x"} for {review}; {{review}} is literal'
    proc = cli.run(*base_args(fake, inp, out), "--template", template)
    assert proc.returncode == 0, proc.stderr
    expected = ['Return {"label": "x"} for great mug; {review} is literal',
                'Return {"label": "x"} for says {price} twice; {review} is literal']
    assert sorted(e["body"]["messages"][0]["content"] for e in fake.requests) == sorted(expected)
    assert [r["reply"] for r in read_rows(out)] == ["ECHO " + e for e in expected]
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# 10. n > 1 and pass-through parameters


def test_n2_list_columns_and_params(fake, cli, tmp_path):
    texts = ["first", "second", "third"]
    inp = write_csv(tmp_path / "in.csv", {"text": texts})
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--n", "2",
                   "--param", 'logit_bias={"50256": -100}', "--param", "custom_tag=batch-7", "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_schema(out).field("replies").type == pa.list_(pa.string())
    for row, text in zip(read_rows(out), texts):
        replies = [f"ECHO {text}", f"ECHO#1 ECHO {text}"]
        assert row["replies"] == replies
        assert row["finish_reasons"] == ["stop", "stop"]
        assert row["reply"] == replies[0] and row["finish_reason"] == "stop"
        assert row["completion_tokens"] == sum(max(1, len(r) // 4) for r in replies)
    for entry in fake.requests:
        body = entry["body"]
        assert (body["n"], body["seed"], body["custom_tag"]) == (2, 7, "batch-7")
        assert body["logit_bias"] == {"50256": -100}
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# 11./12. Azure and organisation headers


@pytest.mark.parametrize("key_var, use_endpoint_env, deployment", [
    ("AZURE_OPENAI_API_KEY", False, "dep1"),
    ("OPENAI_API_KEY", False, "dep1"),
    ("AZURE_OPENAI_API_KEY", True, None),  # $AZURE_OPENAI_ENDPOINT, deployment = the model
])
def test_azure_paths_and_api_key_header(key_var, use_endpoint_env, deployment, fake, cli, tmp_path):
    inp = write_csv(tmp_path / "in.csv", {"text": ["one", "two"]})
    out = tmp_path / "out.parquet"
    env = {key_var: KEY}
    args = ["run", "--input", inp, "--output", out, "--model", MODEL, "--template", "{text}",
            "--api-version", "2024-10-21", *FAST]
    if use_endpoint_env:
        env["AZURE_OPENAI_ENDPOINT"] = fake.root_url
    else:
        args += ["--base-url", fake.root_url]
    if deployment:
        args += ["--deployment", deployment]
    proc = cli.run(*args, env=env, drop_env=["OPENAI_API_KEY"] if key_var != "OPENAI_API_KEY" else [])
    assert proc.returncode == 0, proc.stderr
    assert [r["reply"] for r in read_rows(out)] == ["ECHO one", "ECHO two"]
    assert len(fake.requests) == 2
    for entry in fake.requests:
        assert entry["path"] == f"/openai/deployments/{deployment or MODEL}/chat/completions"
        assert entry["query"] == {"api-version": "2024-10-21"}
        assert entry["deployment"] == (deployment or MODEL)
        assert entry["headers"]["api-key"] == KEY
        assert "authorization" not in entry["headers"]
    assert_no_secret(proc, tmp_path)


@pytest.mark.parametrize("by_flag", [False, True])
def test_organization_and_project_headers(by_flag, fake, cli, tmp_path):
    inp = write_csv(tmp_path / "in.csv", {"text": ["one"]})
    out = tmp_path / "out.parquet"
    env = {"OPENAI_ORG_ID": "org-from-env", "OPENAI_PROJECT_ID": "proj_from_env"}
    flags = ["--organization", "org-from-flag", "--project", "proj_from_flag"] if by_flag else []
    proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", *flags, env=env)
    assert proc.returncode == 0, proc.stderr
    (entry,) = fake.requests
    source = "flag" if by_flag else "env"
    assert entry["headers"]["openai-organization"] == f"org-from-{source}"
    assert entry["headers"]["openai-project"] == f"proj_from_{source}"
    assert entry["headers"]["authorization"] == f"Bearer {KEY}"
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# 14. a job file; flags win over its keys


def test_job_file_relative_paths_and_flag_overrides(fake, cli, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "jobs").mkdir()
    write_csv(tmp_path / "data" / "reviews.csv", {"review": ["lovely", "[[status:500]] broken"]})
    job = tmp_path / "jobs" / "nightly.toml"
    job.write_text(f"""
input = "../data/reviews.csv"
output = "../out/nightly.parquet"
model = "gpt-4o"
base_url = "{fake.base_url}"
system = "Classify the review."
template = "Review: {{review}}"
temperature = 0.7
max_attempts = 2
backoff_base = 0.01
backoff_max = 0.05
concurrency = 2

[metadata]
job = "nightly"

[extra_body]
custom_knob = true
""")
    # run from the repository root: the file's relative paths are relative to the file
    proc = cli.run("run", job, "--model", MODEL, "--temperature", "0")
    assert proc.returncode == 1, proc.stderr  # the [[status:500]] row fails after max_attempts = 2
    out = tmp_path / "out" / "nightly.parquet"
    rows = read_rows(out)
    assert [(r["status"], r["attempts"]) for r in rows] == [("ok", 1), ("error", 2)]
    assert rows[0]["reply"] == "ECHO Review: lovely"
    assert sent_prompts(fake)["Review: [[status:500]] broken"] == 2
    for entry in fake.requests:
        body = entry["body"]
        assert body["model"] == MODEL  # --model beats the file's gpt-4o
        assert body["temperature"] == 0  # --temperature 0 beats the file's 0.7
        assert body["metadata"] == {"job": "nightly"}
        assert body["custom_knob"] is True
        assert body["messages"][0] == {"role": "system", "content": "Classify the review."}
    assert read_summary(out)["model"] == MODEL
    assert not (REPO / "out" / "nightly.parquet").exists()
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# fail fast on a job every row of which the server rejects


def test_fail_fast_when_every_request_is_rejected(fake, cli, tmp_path):
    n = 60
    inp = write_csv(tmp_path / "in.csv", {"text": [f"[[status:404]] row {i}" for i in range(n)]})
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--concurrency", "4")
    assert proc.returncode == 3, proc.stderr
    assert len(fake.requests) <= 20 + 4
    assert "404" in proc.stderr
    rows = read_rows(out)
    assert len(rows) == n
    assert {r["error_type"] for r in rows} <= {"invalid_request_error", "not_sent"}
    assert sum(r["error_type"] == "not_sent" for r in rows) >= n - 24
    assert_no_secret(proc, tmp_path)


# --------------------------------------------------------------------------------------------------
# 15. signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_run_and_writes_a_complete_output(signum, fake, cli, tmp_path):
    n = 30
    fake.latency_s = 0.2
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(n)]})
    out = tmp_path / "out.parquet"
    process = cli.popen(*base_args(fake, inp, out), "--template", "{text}", "--concurrency", "2")
    try:
        wait_for(lambda: len(fake.completed()) >= 4 or process.poll() is not None, what="4 rows")
        assert process.poll() is None, process.communicate()
        assert not out.exists(), "the output path must not exist before the run ends"
        assert temp_files(out), "rows are written to a temporary file first"
        process.send_signal(signum)
        sent_at = time.monotonic()
        stdout, stderr = process.communicate(timeout=20)
        took = time.monotonic() - sent_at
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert took < 5, f"exit took {took:.1f}s after the signal"
    name = signal.Signals(signum).name
    assert "stopped" in stderr and name in stderr
    rows = read_rows(out)
    assert [r["text"] for r in rows] == [f"row {i}" for i in range(n)]
    ok = [r["text"] for r in rows if r["status"] == "ok"]
    assert set(ok) == {e["prompt"] for e in fake.completed()}, "every billed row is kept"
    assert ok == [f"row {i}" for i in range(len(ok))], "rows are dispatched in order"
    assert 4 <= len(ok) < n
    for row in rows[len(ok):]:
        assert (row["status"], row["error_type"], row["attempts"]) == ("error", "not_sent", 0)
        assert name in row["error_message"]
    assert temp_files(out) == []
    summary = read_summary(out)
    assert summary["exit_code"] == 130 and name in summary["stopped"]
    assert summary["ok"] == len(ok) and summary["error"] == n - len(ok)
    assert_no_secret(subprocess.CompletedProcess([], 130, stdout, stderr), tmp_path)


def test_second_sigint_cancels_requests_in_flight(fake, cli, tmp_path):
    n = 12
    texts = [f"row {i}" if i < 4 else f"row {i} [[slow:30]]" for i in range(n)]
    inp = write_csv(tmp_path / "in.csv", {"text": texts})
    out = tmp_path / "out.parquet"
    process = cli.popen(*base_args(fake, inp, out), "--template", "{text}", "--concurrency", "2")
    try:
        wait_for(lambda: len(fake.completed()) >= 4
                 and sum(e["status"] is None for e in fake.requests) >= 2, what="2 slow requests in flight")
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert process.poll() is None, "one Ctrl-C lets requests in flight finish"
        process.send_signal(signal.SIGINT)
        sent_at = time.monotonic()
        stdout, stderr = process.communicate(timeout=20)
        took = time.monotonic() - sent_at
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert took < 3, f"exit took {took:.1f}s after the second SIGINT"
    rows = read_rows(out)
    assert [r["text"] for r in rows] == texts
    assert [r["status"] for r in rows[:4]] == ["ok"] * 4
    assert {(r["status"], r["error_type"]) for r in rows[4:]} == {("error", "not_sent")}
    assert sum("cancelled" in r["error_message"] for r in rows[4:]) == 2  # the two in flight
    assert temp_files(out) == []
    assert_no_secret(subprocess.CompletedProcess([], 130, stdout, stderr), tmp_path)
