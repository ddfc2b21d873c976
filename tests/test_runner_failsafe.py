"""The runner's safety nets, on httpx.MockTransport: one bad row never costs the run, a failed write
stops it cleanly (and never hangs), and fail-fast judges only the requests this run sent."""

import asyncio
import datetime
import errno
import json

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.client import ChatClient
from pipeline.errors import (InvalidOutput, NotSent, OutputError, RateLimited, RowRejected, ServerError,
                             TransportFailure)
from pipeline.failfast import FAIL_FAST_ROWS, FailFast
from pipeline.run import prepare, run_job
from pipeline.runner import WINDOW_ROWS, Reuse, Runner
from pipeline.sinks import ParquetSink, output_schema
from pipeline.summary import Tally
from test_runner import ENV, FakeTime, completion, make_job, prompt_of, run

NOT_FOUND = {"error": {"message": "The model `gpt-40-mini` does not exist", "type": "invalid_request_error",
                       "code": "model_not_found"}}


# --------------------------------------------------------------------------------------------------
# one bad row never costs the run


def test_an_unexpected_exception_handling_one_reply_fails_only_that_row(tmp_path):
    def handler(request):
        if prompt_of(request) == "Say: odd":
            body = completion("x")
            body["choices"][0]["message"] = "not an object"  # parsing it raises AttributeError
            return httpx.Response(200, json=body)
        return httpx.Response(200, json=completion("fine"))

    report, out = run(make_job(tmp_path, ["a", "odd", "b"]), handler)
    assert [r["status"] for r in out] == ["ok", "error", "ok"]
    assert out[1]["error_type"] == "internal_error" and "AttributeError" in out[1]["error_message"]
    assert ENV["OPENAI_API_KEY"] not in out[1]["error_message"]
    assert report.exit_code == 1


def test_an_unexpected_exception_rendering_one_row_fails_only_that_row(tmp_path):
    struct = pa.struct([("role", pa.string()), ("content", pa.string()), ("sent", pa.date32())])
    cells = [[{"role": "user", "content": "a", "sent": None}],
             [{"role": "user", "content": "b", "sent": datetime.date(2026, 1, 1)}],  # not JSON-encodable
             [{"role": "user", "content": "c", "sent": None}]]
    pq.write_table(pa.table({"messages": pa.array(cells, type=pa.list_(struct))}), tmp_path / "in.parquet")
    sent = []

    def handler(request):
        sent.append(prompt_of(request))
        return httpx.Response(200, json=completion("fine"))

    job = make_job(tmp_path, ["unused"], template=None, system=None, messages_column="messages")
    pq.write_table(pa.table({"messages": pa.array(cells, type=pa.list_(struct))}), job.input_path)
    report, out = run(job, handler)
    assert [r["status"] for r in out] == ["ok", "error", "ok"]
    assert out[1]["error_type"] == "internal_error" and "TypeError" in out[1]["error_message"]
    assert sorted(sent) == ["a", "c"] and report.exit_code == 1


def test_a_value_that_fits_no_column_fails_only_that_row_and_keeps_the_reply(tmp_path):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}

    def handler(request):
        value = 2 ** 70 if prompt_of(request).endswith("big") else 7  # beyond int64: no int64 holds it
        return httpx.Response(200, json=completion(json.dumps({"n": value})))

    report, out = run(make_job(tmp_path, ["a", "big", "b"], output_schema=schema), handler)
    assert [r["status"] for r in out] == ["ok", "error", "ok"]
    assert [r["n"] for r in out[::2]] == [7, 7]
    assert out[1]["error_type"] in ("internal_error", "invalid_output")  # the latter once values are checked
    assert out[1]["reply"] == json.dumps({"n": 2 ** 70}) and out[1]["cost_usd"] > 0, "billed: kept"
    assert report.exit_code == 1


# --------------------------------------------------------------------------------------------------
# the writer never dies, never hangs


class FullDisk(ParquetSink):
    """A sink whose disk fills up after ``ok_writes`` batches."""

    def __init__(self, *args, ok_writes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.ok_writes = ok_writes

    def write(self, batch, results):
        if self.ok_writes == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.ok_writes -= 1
        super().write(batch, results)


def test_a_failed_write_stops_the_run_without_hanging_and_the_rerun_finishes(tmp_path):
    # mostly blank rows: they need no request, so the producer races ahead and fills the window
    n = WINDOW_ROWS + 5000
    rows = [f"row {i}" if i % 1000 == 0 else None for i in range(n)]
    job = make_job(tmp_path, rows, concurrency=2)
    sent = []

    def handler(request):
        sent.append(prompt_of(request))
        return httpx.Response(200, json=completion("fine"))

    async def first_run():
        prepared = prepare(job)
        sink = FullDisk(job.output_path, output_schema(prepared.source.schema, "", 1), 1, ok_writes=1)
        try:
            async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
                runner = Runner(job, prepared.source, sink, ChatClient(http, job.endpoint, 60), prepared.prices,
                                Tally(rows_total=n), FakeTime().seams(), Reuse(store=prepared.store))
                with pytest.raises(OutputError, match="No space left"):
                    await asyncio.wait_for(runner.run(), timeout=120)  # a guard: today it hangs here
                return runner
        finally:
            sink.discard()
            prepared.store.close()

    runner = asyncio.run(first_run())
    assert runner.stopping and "No space left" in runner.stop_reason
    first = set(sent)
    assert first, "rows were answered before the disk filled"
    sent.clear()
    report, out = run(job, handler)  # the rerun: the answered rows come from the journal
    assert report.exit_code == 0 and len(out) == n
    assert not first & set(sent), "rows answered before the failure are not sent again"
    assert {r["text"] for r in out if r["status"] == "ok"} == {t for t in rows if t}


def test_a_failed_write_is_reported_with_its_reason(tmp_path):
    job = make_job(tmp_path, ["a", "b"])
    job.output_path.mkdir()  # the output's place is taken by a folder: the final rename fails
    prepared = prepare(job, use_state=False, check_overwrite=False)
    with pytest.raises(OutputError, match=str(job.output_path)):
        asyncio.run(run_job(job, prepared=prepared, http=httpx.AsyncClient(
            transport=httpx.MockTransport(lambda r: httpx.Response(200, json=completion("x")))),
            seams=FakeTime().seams()))
    assert list(tmp_path.glob(".out.parquet.tmp-*")) == [], "the temporary file is removed"


# --------------------------------------------------------------------------------------------------
# fail fast counts only requests this run sent


def test_fail_fast_does_not_count_copies_of_an_identical_request(tmp_path):
    rows = ["same"] * 25 + [f"r{i}" for i in range(30)]
    sent = []

    def handler(request):
        sent.append(prompt_of(request))
        if prompt_of(request) == "Say: same":
            return httpx.Response(404, json=NOT_FOUND)
        return httpx.Response(200, json=completion("x"))

    report, out = run(make_job(tmp_path, rows, concurrency=1), handler)
    assert sent.count("Say: same") == 1, "one request for the 25 identical rows"
    assert report.exit_code == 1, report.summary["stopped"]
    assert [r["status"] for r in out] == ["error"] * 25 + ["ok"] * 30


def test_fail_fast_does_not_count_rows_taken_from_the_journal(tmp_path):
    rows = [f"good {i}" for i in range(15)] + [f"bad {i}" for i in range(25)]  # good first: the first
    job = make_job(tmp_path, rows, concurrency=64)  # wave (ratelimit.FIRST_WAVE) must be answered

    def first_handler():
        answered = asyncio.Event()

        async def handler(request):  # the good rows are answered first: this run does not fail fast
            if prompt_of(request).startswith("Say: bad"):
                await answered.wait()
                return httpx.Response(404, json=NOT_FOUND)
            answered.set()
            return httpx.Response(200, json=completion("x"))
        return handler

    report, _ = run(job, first_handler())
    assert report.exit_code == 1 and report.summary["error"] == 25
    report, out = run(job, lambda request: pytest.fail("the rerun sends nothing"))
    assert report.exit_code == 1, report.summary["stopped"]
    assert [r["status"] for r in out] == ["ok"] * 15 + ["error"] * 25


def test_fail_fast_judges_attempts_until_the_first_valid_reply():
    refused = ConnectionRefusedError("refused")
    connect = TransportFailure(f"connection failed: {refused}", error_type="connection_error")
    fail_fast = FailFast("http://127.0.0.1:8123/v1/chat/completions")
    assert [fail_fast.attempt(connect) for _ in range(FAIL_FAST_ROWS - 1)] == [None] * (FAIL_FAST_ROWS - 1)
    assert fail_fast.attempt(NotSent("stopped")) is None, "a request not sent is not counted"
    stop = fail_fast.attempt(connect)
    assert isinstance(stop, TransportFailure) and stop.error_type == "connection_error"
    assert "127.0.0.1:8123" in stop.message and "refused" in stop.message

    answered = FailFast("https://api.example.com/v1/chat/completions")
    answered.attempt(ServerError("HTTP 502", http_status=502))  # the host answered: it is up
    assert all(answered.attempt(connect) is None for _ in range(2 * FAIL_FAST_ROWS))

    invalid = InvalidOutput("not JSON", completion=None, cost_usd=None, retryable=True)
    schema = FailFast("https://api.example.com/v1")
    assert all(schema.attempt(invalid) is None for _ in range(FAIL_FAST_ROWS - 1))
    assert schema.attempt(RateLimited("HTTP 429", http_status=429)) is None
    assert schema.attempt(invalid).error_type == "invalid_output"

    mixed = FailFast("https://api.example.com/v1")
    mixed.attempt(RowRejected("HTTP 400", http_status=400, error_type="context_length_exceeded"))
    rejected = RowRejected("HTTP 404", http_status=404, error_type="model_not_found")
    assert all(mixed.attempt(rejected) is None for _ in range(2 * FAIL_FAST_ROWS)), "not all the same"

    healthy = FailFast("https://api.example.com/v1")
    healthy.attempt(None)
    assert all(healthy.attempt(f) is None for f in [connect, invalid, rejected] * FAIL_FAST_ROWS)
