"""run_job end to end on httpx.MockTransport: order, statuses, retries, pauses, aborts, schema."""

import asyncio
import json
from pathlib import Path

import httpx
import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.jobspec import build_job
from pipeline.run import prepare, run_job
from pipeline.runner import Seams

SCHEMA = json.loads((Path(__file__).parent / "data" / "create_chat_completion_request.schema.json").read_text())
ENV = {"OPENAI_API_KEY": "sk-unit-SECRET-42"}


class FakeTime:
    """A clock that only moves when the run sleeps: retries and pauses cost no real time."""

    def __init__(self):
        self.now = 0.0
        self.slept = []

    def clock(self):
        return self.now

    async def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def seams(self):
        return Seams(clock=self.clock, sleep=self.sleep, random=lambda: 0.5)


def completion(text, usage=(10, 2)):
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}


def make_job(tmp_path, rows, **overrides):
    pq.write_table(pa.table({"text": rows}), tmp_path / "in.parquet")
    values = {"input": str(tmp_path / "in.parquet"), "output": str(tmp_path / "out.parquet"),
              "model": "gpt-4o-mini", "template": "Say: {text}", "system": "Be brief.",
              "concurrency": 4, "max_attempts": 3, **overrides}
    return build_job(None, values, ENV)


def run(job, handler, time=None):
    time = time or FakeTime()

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await run_job(job, http=http, seams=time.seams())
    return asyncio.run(go()), pq.read_table(job.output_path).to_pylist()


def prompt_of(request):
    return json.loads(request.content)["messages"][-1]["content"]


def test_rows_come_back_in_input_order_whatever_the_reply_order(tmp_path):
    rows = [f"row {i}" for i in range(300)]

    async def handler(request):
        text = prompt_of(request)
        await asyncio.sleep(0.001 * (hash(text) % 3))  # replies finish out of order
        return httpx.Response(200, json=completion("re " + text))

    report, out = run(make_job(tmp_path, rows), handler)
    assert [r["text"] for r in out] == rows
    assert [r["reply"] for r in out] == [f"re Say: {t}" for t in rows]
    assert report.exit_code == 0 and report.summary["ok"] == 300
    assert report.summary["prompt_tokens"] == 3000


def test_bodies_conform_to_the_published_request_schema(tmp_path):
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=completion("x"))

    job = make_job(tmp_path, ["a"], temperature=0.2, top_p=0.9, max_completion_tokens=5, stop=["\n"], seed=7,
                   n=1, response_format={"type": "json_object"}, logprobs=True, top_logprobs=2,
                   service_tier="auto", metadata={"job": "nightly"}, extra_body={"parallel_tool_calls": False},
                   system="Be brief. Answer in JSON.")  # JSON mode needs the word in the messages
    run(job, handler)
    jsonschema.Draft202012Validator(SCHEMA).validate(bodies[0])
    assert bodies[0]["messages"] == [{"role": "system", "content": "Be brief. Answer in JSON."},
                                     {"role": "user", "content": "Say: a"}]
    assert bodies[0]["parallel_tool_calls"] is False and bodies[0]["seed"] == 7


def test_blank_rows_are_skipped_and_never_sent(tmp_path):
    sent = []

    def handler(request):
        sent.append(prompt_of(request))
        return httpx.Response(200, json=completion("x"))

    report, out = run(make_job(tmp_path, ["a", None, "  ", "b"]), handler)
    assert [r["status"] for r in out] == ["ok", "skipped", "skipped", "ok"]
    assert sorted(sent) == ["Say: a", "Say: b"]
    assert out[1]["attempts"] == 0 and report.exit_code == 0


def test_transient_failures_retry_then_row_errors_stay_and_exit_code_is_1(tmp_path):
    calls = {}

    def handler(request):
        text = prompt_of(request)
        calls[text] = calls.get(text, 0) + 1
        if text == "Say: flaky" and calls[text] < 3:
            return httpx.Response(503, json={"error": {"message": "overloaded", "type": "server_error"}})
        if text == "Say: bad":
            return httpx.Response(400, json={"error": {"message": "too long", "type": "invalid_request_error",
                                                       "code": "context_length_exceeded"}})
        return httpx.Response(200, json=completion("fine"))

    time = FakeTime()
    report, out = run(make_job(tmp_path, ["flaky", "bad", "ok"]), handler, time)
    assert [(r["status"], r["attempts"]) for r in out] == [("ok", 3), ("error", 1), ("ok", 1)]
    assert out[1]["error_type"] == "context_length_exceeded" and out[1]["http_status"] == 400
    assert calls["Say: bad"] == 1
    assert time.slept == [0.125, 0.25]  # full jitter with random()=0.5 under 0.25 s, then 0.5 s
    assert report.exit_code == 1 and report.summary["retries"] == 2


class SlowSleep(FakeTime):
    """A fake clock whose sleeps let the rest of the run go on for a while (a backoff takes time)."""

    async def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
        for _ in range(50):
            await asyncio.sleep(0)


def test_a_row_waiting_to_retry_leaves_its_sending_slot_to_the_next_rows(tmp_path):
    sent, in_flight = [], [0, 0]  # now, most

    async def handler(request):
        sent.append(prompt_of(request))
        first_flaky = sent.count("Say: flaky") == 1 and sent[-1] == "Say: flaky"
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        await asyncio.sleep(0)
        in_flight[0] -= 1
        if first_flaky:
            return httpx.Response(503, json={"error": {"message": "overloaded", "type": "server_error"}})
        return httpx.Response(200, json=completion("fine"))

    report, out = run(make_job(tmp_path, ["flaky", "b", "c"], concurrency=1), handler, SlowSleep())
    assert [(r["status"], r["attempts"]) for r in out] == [("ok", 2), ("ok", 1), ("ok", 1)]
    assert sent[:2] == ["Say: flaky", "Say: b"]  # b went out while flaky waited
    assert sent.count("Say: flaky") == 2 and len(sent) == 4
    assert in_flight[1] == 1  # still one request at a time


def test_a_429_pauses_the_whole_run(tmp_path):
    state = {"limited": 0}

    def handler(request):
        if state["limited"] == 0:
            state["limited"] += 1
            return httpx.Response(429, headers={"retry-after-ms": "4000"},
                                  json={"error": {"message": "slow down", "type": "requests",
                                                  "code": "rate_limit_exceeded"}})
        return httpx.Response(200, json=completion("x"))

    time = FakeTime()
    report, out = run(make_job(tmp_path, ["a"], concurrency=1), handler, time)
    assert out[0]["status"] == "ok" and out[0]["attempts"] == 2
    assert report.summary["rate_limited_429"] == 1
    assert time.slept[0] >= 4.0  # at least the server's wait


def test_auth_failure_aborts_keeps_every_row_and_hides_the_key(tmp_path):
    def handler(request):
        if prompt_of(request) == "Say: row 0":
            return httpx.Response(200, json=completion("first"))
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided: sk-unit-SECRET-42",
                                                   "type": "invalid_request_error", "code": "invalid_api_key"}})

    job = make_job(tmp_path, [f"row {i}" for i in range(2000)], concurrency=1)
    report, out = run(job, handler)
    assert report.exit_code == 3
    assert len(out) == 2000 and out[0]["status"] == "ok"
    assert out[1]["error_type"] == "auth_failed"
    assert {r["error_type"] for r in out[2:]} == {"not_sent"}
    assert report.summary["requests_sent"] <= 4
    for blob in (job.output_path.read_bytes(), report.summary_path.read_bytes()):
        assert b"sk-unit-SECRET-42" not in blob


def test_unknown_model_price_is_null_and_summary_says_unknown(tmp_path):
    job = make_job(tmp_path, ["a"], model="my-local-model")
    warnings = prepare(job, use_state=False).warnings
    assert warnings and "my-local-model" in warnings[0]

    def handler(request):
        body = completion("x")
        body["model"] = "my-local-model"
        return httpx.Response(200, json=body)

    report, out = run(job, handler)
    assert out[0]["cost_usd"] is None and out[0]["prompt_tokens"] == 10
    assert report.summary["cost_usd"] is None and report.summary["models"]["my-local-model"]["cost_usd"] is None


def test_summary_is_in_parquet_metadata_and_beside_the_output(tmp_path):
    report, out = run(make_job(tmp_path, ["a", "b"]), lambda r: httpx.Response(200, json=completion("x")))
    stored = json.loads(pq.read_schema(report.output_path).metadata[b"chatbatch.summary"])
    beside = json.loads(report.summary_path.read_text())
    assert stored == beside == report.summary
    assert beside["cost_usd"] == pytest.approx(2 * (10 * 0.15 + 2 * 0.60) / 1e6)


def test_a_job_that_fails_every_row_the_same_way_stops_early(tmp_path):
    def handler(request):
        return httpx.Response(404, json={"error": {"message": "The model `gpt-40-mini` does not exist",
                                                   "type": "invalid_request_error", "code": "model_not_found"}})

    report, out = run(make_job(tmp_path, [f"r{i}" for i in range(500)], concurrency=2), handler)
    assert report.exit_code == 3
    assert report.summary["requests_sent"] < 30
    assert "model_not_found" in report.summary["stopped"] and "does not exist" in report.summary["stopped"]
    assert len(out) == 500 and out[-1]["error_type"] == "not_sent"


def test_sporadic_row_errors_do_not_stop_the_run(tmp_path):
    def handler(request):
        if prompt_of(request).endswith("0"):
            return httpx.Response(400, json={"error": {"message": "bad", "type": "invalid_request_error"}})
        return httpx.Response(200, json=completion("x"))

    report, out = run(make_job(tmp_path, [f"r{i}" for i in range(100)], concurrency=1), handler)
    assert report.exit_code == 1 and report.summary["error"] == 10 and report.summary["ok"] == 90
