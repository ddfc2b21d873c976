"""The resume journal: lock, fingerprint guard, group commit, what is journaled."""

import asyncio
from decimal import Decimal

import pytest

from pipeline.errors import JobError
from pipeline.records import Completion, RowResult, Usage, not_sent_result, result_from_json, result_to_json
from pipeline.state import journaled, open_state

PRINT = {"model": "gpt-4o-mini", "template": "t1", "input content": "abc"}
OK = RowResult(status="ok", attempts=2, cost_usd=Decimal("0.000123"), latency_s=0.5,
               completion=Completion(("hi", "yo"), ("stop", "length"), None, "m", "id", "fp", Usage(1, 2, 3, 0, None)))


def test_result_json_round_trip_is_lossless():
    assert result_from_json(result_to_json(OK)) == OK
    error = RowResult(status="error", attempts=3, error_type="server_error", error_message="boom ✓", http_status=503)
    assert result_from_json(result_to_json(error)) == error


def test_what_is_journaled():
    assert journaled(OK)
    assert journaled(RowResult(status="error", error_type="context_length_exceeded", http_status=400))
    assert not journaled(not_sent_result("stopped"))
    assert not journaled(RowResult(status="error", error_type="auth_failed", http_status=401))
    assert not journaled(RowResult(status="skipped"))


def record(store, *rows):
    async def go():
        for idx, digest, result in rows:
            store.record(idx, digest, result)
        await store.committed()
    asyncio.run(go())


def test_rows_survive_reopen_and_only_the_same_job_resumes(tmp_path):
    store = open_state(tmp_path / "s", PRINT)
    assert not store.resumed
    store.begin()
    failed = RowResult(status="error", attempts=1, error_type="context_length_exceeded", http_status=400)
    record(store, (0, b"h0", OK), (5, b"h5", failed))
    store.close()

    store = open_state(tmp_path / "s", PRINT)
    assert store.resumed and store.rows_done() == 2
    store.begin()
    assert store.results_between(0, 10) == {0: OK, 5: failed}
    assert store.results_between(1, 5) == {}
    assert store.results_between(0, 10, retry_errors=True) == {0: OK}
    assert store.find_reply(b"h0") == OK and store.find_reply(b"h5") is None
    store.close()


def test_a_changed_unfinished_job_is_refused_naming_what_changed(tmp_path):
    store = open_state(tmp_path / "s", PRINT)
    store.begin()
    record(store, (0, b"h", OK))
    store.close()
    with pytest.raises(JobError) as info:
        open_state(tmp_path / "s", {**PRINT, "model": "gpt-4o", "input content": "xyz"})
    assert "input content, model changed" in str(info.value) and "--fresh" in str(info.value)
    store = open_state(tmp_path / "s", {**PRINT, "model": "gpt-4o"}, fresh=True)
    store.begin()
    assert store.rows_done() == 0 and not store.resumed
    store.close()


def test_a_changed_finished_job_starts_afresh_but_only_once_begun(tmp_path):
    store = open_state(tmp_path / "s", PRINT)
    store.begin()
    record(store, (0, b"h", OK))
    store.set_meta({"complete": "true"})
    store.close()
    store = open_state(tmp_path / "s", {**PRINT, "input content": "tomorrow"})
    assert not store.resumed
    store.close()  # refused later (e.g. output exists): nothing was changed
    store = open_state(tmp_path / "s", PRINT)
    assert store.resumed and store.rows_done() == 1
    store.close()


def test_a_second_run_is_locked_out(tmp_path):
    store = open_state(tmp_path / "s", PRINT)
    with pytest.raises(JobError, match="another chatbatch run"):
        open_state(tmp_path / "s", PRINT)
    store.close()
    open_state(tmp_path / "s", PRINT).close()  # free again once closed
