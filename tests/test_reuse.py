"""Resume, in-run dedupe and the cross-run cache, end to end on httpx.MockTransport."""

import asyncio
import json
from collections import Counter

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.jobspec import build_job
from pipeline.run import run_job
from test_runner import FakeTime, completion, prompt_of

ENV = {"OPENAI_API_KEY": "sk-unit-SECRET-42"}


def make_job(tmp_path, rows, **overrides):
    pq.write_table(pa.table({"text": rows}), tmp_path / "in.parquet")
    values = {"input": str(tmp_path / "in.parquet"), "output": str(tmp_path / "out.parquet"),
              "model": "gpt-4o-mini", "template": "{text}", "concurrency": 4, "max_attempts": 2,
              "backoff_base": 0, **overrides}
    return build_job(None, values, ENV)


def run(job, handler, **kwargs):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await run_job(job, http=http, seams=FakeTime().seams(), **kwargs)
    report = asyncio.run(go())
    return report, pq.read_table(job.output_path).to_pylist()


class Server:
    """Answers "ECHO <prompt>"; bills every 200; can refuse with 401 after ``allow`` requests."""

    def __init__(self, allow=None, fail=()):
        self.billed = Counter()
        self.allow, self.fail = allow, set(fail)

    def __call__(self, request):
        text = prompt_of(request)
        if self.allow is not None and sum(self.billed.values()) >= self.allow:
            return httpx.Response(401, json={"error": {"message": "key revoked", "code": "invalid_api_key"}})
        if text in self.fail:
            return httpx.Response(400, json={"error": {"message": "nope", "code": "bad_row"}})
        self.billed[text] += 1
        return httpx.Response(200, json=completion("ECHO " + text, usage=(10, 4)))


def test_duplicate_heavy_input_is_billed_once_per_distinct_request(tmp_path):
    rows = [f"q{i % 7}" for i in range(200)]
    server = Server()
    report, out = run(make_job(tmp_path, rows), server)
    assert server.billed == Counter({f"q{i}": 1 for i in range(7)})
    assert [r["reply"] for r in out] == [f"ECHO {t}" for t in rows]
    assert sum(r["cached"] for r in out) == 193
    assert all(r["cost_usd"] == 0 for r in out if r["cached"])
    assert report.summary["cached_rows"] == 193 and report.summary["prompt_tokens"] == 70
    assert report.summary["requests_sent"] == 7


def test_dedupe_can_be_turned_off(tmp_path):
    server = Server()
    run(make_job(tmp_path, ["same"] * 5, dedupe=False), server)
    assert server.billed["same"] == 5


def test_an_aborted_run_resumes_without_paying_twice(tmp_path):
    rows = [f"row {i}" for i in range(300)]
    job = make_job(tmp_path, rows, concurrency=1)
    first = Server(allow=120)
    report, out = run(job, first)
    assert report.exit_code == 3 and sum(r["status"] == "ok" for r in out) == 120

    second = Server()
    report, out = run(job, second)  # same job, output exists: it is this job's own, so it is replaced
    assert report.exit_code == 0
    assert not set(first.billed) & set(second.billed)  # nothing billed twice
    assert sum(second.billed.values()) == 180
    assert [r["reply"] for r in out] == [f"ECHO {t}" for t in rows]
    assert report.summary["resumed_rows"] == 120 and report.summary["ok"] == 300
    assert report.summary["prompt_tokens"] == 3000  # the whole output's tokens, resumed rows included


def test_row_errors_stay_failed_unless_retry_errors(tmp_path):
    job = make_job(tmp_path, ["good", "bad"])
    run(job, Server(fail={"bad"}))
    again = Server()
    report, out = run(job, again)
    assert [r["status"] for r in out] == ["ok", "error"] and not again.billed
    report, out = run(job, again, retry_errors=True)
    assert [r["status"] for r in out] == ["ok", "ok"] and again.billed == Counter({"bad": 1})


def test_cross_run_cache_is_opt_in_and_shared_between_jobs(tmp_path):
    cache = str(tmp_path / "cache")
    first = Server()
    run(make_job(tmp_path, ["a", "b"], cache=True, cache_dir=cache, output=str(tmp_path / "one.parquet")), first)
    second = Server()
    report, out = run(make_job(tmp_path, ["a", "b", "c"], cache=True, cache_dir=cache,
                               output=str(tmp_path / "two.parquet")), second)
    assert second.billed == Counter({"c": 1})
    assert [r["cached"] for r in out] == [True, True, False]
    assert [r["reply"] for r in out] == ["ECHO a", "ECHO b", "ECHO c"]
    third = Server()
    run(make_job(tmp_path, ["a"], output=str(tmp_path / "three.parquet")), third)  # no cache: sent
    assert third.billed == Counter({"a": 1})
