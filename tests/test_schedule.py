"""Scheduled jobs: date placeholders in paths (one date a run, --date for backfills) and JSON log lines.

Unit tests inject the date (and the wall clock); the CLI tests run the real command against
tests/fakeapi.py and compute "today" as pipeline.dates documents it: the local date, here in a
fixed time zone given to the subprocess (``TZ=UTC-14``, i.e. UTC+14, so it is not UTC's date for
most of the day).
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import SECRET_KEY
from pipeline import api
from pipeline.dates import resolve, run_date
from pipeline.errors import JobError
from pipeline.jobspec import build_job
from pipeline.logs import Log
from pipeline.progress import Progress
from pipeline.records import Completion, RowResult, Usage
from pipeline.summary import Tally

DAY = datetime.date(2026, 12, 1)
ISO_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ISO_UTC_S = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
EPOCH = 1796094000.25  # 2026-12-01T03:00:00.250Z
FAST = ("--backoff-base", "0.01", "--backoff-max", "0.05")


# -- resolving placeholders (an injected date) ----------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("exports/{date}/reviews.csv", "exports/2026-12-01/reviews.csv"),
    ("out/{date:%Y/%m/%d}/reviews.parquet", "out/2026/12/01/reviews.parquet"),
    ("{yesterday}", "2026-11-30"),
    ("x-{yesterday:%Y%m%d}-{date:%j}", "x-20261130-335"),
    ("literal {{braces}} and {{date}}", "literal {braces} and {date}"),
    ("100%{date:%%}", "100%%"),
    ("no placeholders", "no placeholders"),
])
def test_placeholders_resolve_for_the_given_day(text, expected):
    assert resolve(text, DAY) == expected


def test_yesterday_crosses_month_and_year():
    assert resolve("{yesterday}/{yesterday:%Y}", datetime.date(2026, 1, 1)) == "2025-12-31/2025"
    assert resolve("{yesterday}", datetime.date(2028, 3, 1)) == "2028-02-29"


@pytest.mark.parametrize("text, says", [
    ("exports/{dat}/x.csv", "unknown placeholder {dat}"),
    ("exports/{}/x.csv", "unknown placeholder {}"),
    ("{date!r}", "unknown placeholder {date!r}"),
    ("{date.year}", "unknown placeholder {date.year}"),
    ("{date:%H}", "%H is not a directive of a day"),
    ("{date:%Y%}", "% is not a directive of a day"),
    ("exports/{date", "expected '}'"),
    ("exports/}x", "Single '}'"),
])
def test_a_bad_placeholder_is_a_job_error_naming_it(text, says):
    with pytest.raises(JobError) as info:
        resolve(text, DAY, "job.toml: key 'input'")
    assert says in str(info.value) and "job.toml: key 'input'" in str(info.value)


@pytest.mark.parametrize("given", ["2026-13-01", "2026-02-30", "20261130", "30.11.2026", "2026-W48-1",
                                   datetime.datetime(2026, 11, 30, 10, 0), 20261130])
def test_a_bad_date_is_a_job_error(given):
    with pytest.raises(JobError, match="--date: key 'date' must be a date YYYY-MM-DD"):
        run_date(given, "--date", today=lambda: DAY)


def test_the_date_is_the_given_one_else_today_read_once():
    calls = []

    def today():
        calls.append(1)
        return DAY
    assert run_date("2026-11-30", "--date", today) == datetime.date(2026, 11, 30) and calls == []
    assert run_date(datetime.date(2026, 11, 30), "x", today) == datetime.date(2026, 11, 30)
    assert run_date(None, "x", today) == DAY and calls == [1]


def write_job(folder: Path, **keys) -> Path:
    lines = [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    path = folder / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_build_job_resolves_the_path_keys_once_for_one_date(tmp_path):
    job_file = write_job(tmp_path, input="exports/{date}/in.csv", output="out/{date:%Y/%m/%d}/out.parquet",
                         state_dir="state/{yesterday}", cache_dir="cache/{{x}}", model="gpt-4o-mini",
                         template="{text} {{date}}", base_url="http://127.0.0.1:9/v1")
    days = iter([DAY, DAY + datetime.timedelta(days=1)])  # a second read would see the next day
    job = build_job(job_file, {}, {}, today=lambda: next(days))
    assert job.input_path == tmp_path / "exports/2026-12-01/in.csv"
    assert job.output_path == tmp_path / "out/2026/12/01/out.parquet"
    assert job.state_dir == tmp_path / "state/2026-11-30"
    assert job.cache_dir == tmp_path / "cache/{{x}}"  # not a dated key: taken as written
    assert job.template == "{text} {{date}}"  # prompts are not paths: their own placeholders
    assert job.run_date == DAY


def test_a_date_flag_or_key_overrides_today(tmp_path):
    job_file = write_job(tmp_path, input="in-{date}.csv", model="m", template="{t}", base_url="http://127.0.0.1:9/v1",
                         date="2026-01-15")
    never = lambda: pytest.fail("today must not be read when a date is given")  # noqa: E731
    assert build_job(job_file, {}, {}, today=never).input_path == tmp_path / "in-2026-01-15.csv"
    flagged = build_job(job_file, {"date": "2026-11-30"}, {}, today=never)
    assert flagged.input_path == tmp_path / "in-2026-11-30.csv" and flagged.run_date == datetime.date(2026, 11, 30)
    # TOML's own date type works as well
    (tmp_path / "job.toml").write_text('input = "in-{yesterday}.csv"\nmodel = "m"\ntemplate = "{t}"\n'
                                       'base_url = "http://127.0.0.1:9/v1"\ndate = 2026-03-01\n')
    assert build_job(tmp_path / "job.toml", {}, {}, today=never).input_path == tmp_path / "in-2026-02-28.csv"


def test_a_bad_placeholder_in_a_job_file_names_the_file_and_the_key(tmp_path):
    job_file = write_job(tmp_path, input="exports/{dat}/in.csv", model="m", template="{t}",
                         base_url="http://127.0.0.1:9/v1")
    with pytest.raises(JobError, match=r"job\.toml: key 'input': unknown placeholder \{dat\}"):
        build_job(job_file, {}, {}, today=lambda: DAY)


def test_python_job_from_toml_takes_a_date_and_enrich_takes_its_path_as_given(tmp_path):
    job_file = write_job(tmp_path, input="in-{date}.csv", model="m", template="{t}", base_url="http://127.0.0.1:9/v1")
    assert api.Job.from_toml(job_file, date="2026-11-30").spec.input_path == tmp_path / "in-2026-11-30.csv"
    call = api._Call.plan("enrich", tmp_path / "odd {name}.csv", {"model": "m", "template": "{t}",
                                                                  "base_url": "http://127.0.0.1:9/v1"})
    assert call.job.input_path == tmp_path / "odd {name}.csv"


# -- log lines (an injected wall clock) -----------------------------------------------------------
def test_json_log_lines_carry_timestamp_level_event_and_fields_redacted():
    stream = io.StringIO()
    log = Log("json", secrets=["sk-SECRET-1"], stream=stream, wall=lambda: EPOCH)
    log.error("error", "HTTP 401: bad key sk-SECRET-1", exit_code=3, detail={"echo": ["sk-SECRET-1"]})
    record = json.loads(stream.getvalue())
    assert record == {"timestamp": "2026-12-01T03:00:00.250Z", "level": "error", "event": "error",
                      "message": "HTTP 401: bad key [redacted]", "exit_code": 3, "detail": {"echo": ["[redacted]"]}}


def test_text_log_lines_are_stamped_when_not_on_a_terminal():
    stream = io.StringIO()
    Log("text", secrets=["sk-SECRET-1"], stream=stream, wall=lambda: EPOCH).warning("warning", "x sk-SECRET-1")
    assert stream.getvalue() == "2026-12-01T03:00:00Z chatbatch: warning: x [redacted]\n"
    stream = io.StringIO()
    Log("text", stream=stream, stamp=False).info("note", "resuming")
    assert stream.getvalue() == "chatbatch: resuming\n"


def test_progress_in_json_mode_writes_its_figures_as_fields():
    now, stream, tally = [0.0], io.StringIO(), Tally(rows_total=4)
    progress = Progress(tally, mode="json", stream=stream, clock=lambda: now[0], wall=lambda: EPOCH + now[0])
    ok = RowResult(status="ok", attempts=1, completion=Completion(("x",), ("stop",), None, "m", "id", None,
                                                                   Usage(8, 2, 10, 0, 0)), cost_usd=decimal.Decimal("0.25"))
    for _ in range(3):
        tally.add(ok)
    now[0], tally.requests_sent = 2.0, 3
    progress.refresh()
    progress.close("ok")
    first, again, last = map(json.loads, stream.getvalue().splitlines())
    assert first["timestamp"] == "2026-12-01T03:00:02.250Z" and first["level"] == "info"
    assert first["event"] == "progress" and first["message"].startswith("3/4 rows (75.0%), 1.5 rows/s")
    assert {k: first[k] for k in ("rows_done", "rows_total", "percent", "rows_per_s", "eta_s", "tokens",
                                  "errors", "rate_limited_429", "not_sent", "requests_per_minute")} == {
        "rows_done": 3, "rows_total": 4, "percent": 75.0, "rows_per_s": 1.5, "eta_s": 0.667, "tokens": 30,
        "errors": 0, "rate_limited_429": 0, "not_sent": 0, "requests_per_minute": 90.0}
    assert again["event"] == "progress"
    assert last["event"] == "finished" and last["level"] == "info" and last["outcome"] == "ok"
    assert (last["rows_done"], last["ok"], last["requests_sent"]) == (3, 3, 3)


# -- the real CLI against the fake API ------------------------------------------------------------
def nightly_job(folder: Path, fake, **more) -> Path:
    keys = dict(input="exports/{date}/in.csv", output="out/{date:%Y/%m/%d}/reviews.parquet",
                model="gpt-4o-mini", template="{text}", base_url=fake.base_url)
    return write_job(folder, **{**keys, **more})


def export(folder: Path, day: str, texts: list[str]) -> None:
    path = folder / "exports" / day / "in.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text\n" + "\n".join(texts) + "\n")


def summary_of(out: Path) -> dict:
    return json.loads(out.with_name(out.name + ".summary.json").read_text())


def test_a_backfill_writes_that_days_output_and_reruns_resume(cli, fake, tmp_path):
    export(tmp_path, "2026-11-30", ["a", "b"])
    export(tmp_path, "2026-12-01", ["c", "d", "e"])
    job = nightly_job(tmp_path, fake)
    proc = cli.run("run", job, "--date", "2026-11-30", *FAST)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out/2026/11/30/reviews.parquet"
    assert [(r["text"], r["reply"]) for r in pq.read_table(out).to_pylist()] == [("a", "ECHO a"), ("b", "ECHO b")]
    summary = summary_of(out)
    assert summary["date"] == "2026-11-30"
    assert summary["input"] == str(tmp_path / "exports/2026-11-30/in.csv") and summary["output"] == str(out)
    assert summary["state_dir"] == str(out) + ".state"
    assert sorted(r["prompt"] for r in fake.requests) == ["a", "b"]

    again = cli.run("run", job, "--date", "2026-11-30", *FAST)  # the same day: resumes, sends nothing
    assert again.returncode == 0, again.stderr
    assert len(fake.requests) == 2 and "resuming: 2 of 2 rows finished" in again.stderr

    next_day = cli.run("run", job, "--date", "2026-12-01", *FAST)  # the next day: a new run
    assert next_day.returncode == 0, next_day.stderr
    assert sorted(r["prompt"] for r in fake.requests[2:]) == ["c", "d", "e"]
    assert summary_of(tmp_path / "out/2026/12/01/reviews.parquet")["date"] == "2026-12-01"
    assert [r["text"] for r in pq.read_table(out).to_pylist()] == ["a", "b"]  # the backfill is untouched


def local_days(utc_offset_h: int) -> set[datetime.date]:
    return {datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=utc_offset_h))).date()}


def test_without_date_the_run_uses_todays_local_date(cli, fake, tmp_path):
    days = local_days(14)  # TZ=UTC-14 is POSIX for UTC+14
    for day in days | {d + datetime.timedelta(days=1) for d in days}:  # a run straddling midnight
        export(tmp_path, day.isoformat(), ["x"])
    proc = cli.run("run", nightly_job(tmp_path, fake), *FAST, env={"TZ": "UTC-14"})
    days |= local_days(14)
    assert proc.returncode == 0, proc.stderr
    outputs = sorted(tmp_path.glob("out/*/*/*/reviews.parquet"))
    assert len(outputs) == 1
    day = datetime.date.fromisoformat(summary_of(outputs[0])["date"])
    assert day in days and outputs[0] == tmp_path / f"out/{day:%Y/%m/%d}/reviews.parquet"
    assert summary_of(outputs[0])["input"] == str(tmp_path / f"exports/{day}/in.csv")


@pytest.mark.parametrize("args, says", [
    (("--output", "{tmp}/out/{{dat}}.parquet"), "--output: key 'output': unknown placeholder {dat}"),
    (("--date", "2026-13-01"), "--date: key 'date' must be a date YYYY-MM-DD"),
    (("--state-dir", "{tmp}/state/{{date:%H}}"), "%H is not a directive of a day"),
])
def test_a_bad_placeholder_or_date_is_exit_2_and_nothing_is_sent(cli, fake, tmp_path, args, says):
    export(tmp_path, "2026-11-30", ["a"])
    args = [arg.format(tmp=tmp_path) for arg in args]
    proc = cli.run("run", nightly_job(tmp_path, fake), "--date", "2026-11-30", *args)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert fake.requests == [] and not (tmp_path / "out").exists()


def json_lines(text: str) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    for record in records:
        assert ISO_UTC_MS.fullmatch(record["timestamp"]), record
        assert record["level"] in ("info", "warning", "error") and record["event"] and "message" in record
    return records


def test_log_format_json_makes_every_line_json_with_the_figures(cli, fake, tmp_path):
    export(tmp_path, "2026-11-30", ["a", "b", "[[status:400]] c"])
    job = nightly_job(tmp_path, fake, model="no-such-priced-model")
    proc = cli.run("run", job, "--date", "2026-11-30", "--log-format", "json", "--max-attempts", "1", *FAST)
    assert proc.returncode == 1, proc.stderr
    records = json_lines(proc.stderr)
    events = [r["event"] for r in records]
    assert events[0] == "warning" and "no price known" in records[0]["message"] and records[0]["level"] == "warning"
    assert events[-2:] == ["progress", "finished"]
    progress, finished = records[-2:]
    assert (progress["rows_done"], progress["rows_total"], progress["errors"]) == (3, 3, 1)
    assert {"rows_per_s", "eta_s", "tokens", "cost_usd", "rate_limited_429", "requests_per_minute"} <= set(progress)
    assert finished["outcome"] == "failed" and finished["level"] == "warning"
    assert (finished["ok"], finished["error"], finished["requests_sent"]) == (2, 1, 3)
    [summary] = json_lines(proc.stdout)  # the summary is one JSON line on stdout too
    out = tmp_path / "out/2026/11/30/reviews.parquet"
    assert summary["event"] == "summary" and summary["exit_code"] == 1 and summary["output"] == str(out)
    assert summary["summary"]["date"] == "2026-11-30" and summary["summary"]["rows"] == 3


def test_log_format_json_resume_note_and_the_default_text_is_stamped(cli, fake, tmp_path):
    export(tmp_path, "2026-11-30", ["a"])
    job = nightly_job(tmp_path, fake)
    first = cli.run("run", job, "--date", "2026-11-30", *FAST)
    assert first.returncode == 0 and all(ISO_UTC_S.match(line) for line in first.stderr.splitlines()), first.stderr
    again = cli.run("run", job, "--date", "2026-11-30", "--log-format", "json", *FAST)
    records = json_lines(again.stderr)
    assert records[0]["event"] == "note" and records[0]["message"].startswith("resuming: 1 of 1 rows finished")


def test_log_format_json_keeps_an_echoed_key_out_of_every_line(cli, fake, tmp_path):
    fake.echo_key_at = 7
    export(tmp_path, "2026-11-30", ["[[auth]] a", "b"])
    proc = cli.run("run", nightly_job(tmp_path, fake), "--date", "2026-11-30", "--log-format", "json",
                   "--concurrency", "1", *FAST)
    assert proc.returncode == 3, proc.stderr
    records = json_lines(proc.stderr)
    aborted = [r for r in records if r["event"] == "aborted"]
    assert len(aborted) == 1 and aborted[0]["level"] == "error" and aborted[0]["exit_code"] == 3
    assert aborted[0]["stopped_by"] == "auth_failed" and "[redacted]" in aborted[0]["message"]
    json_lines(proc.stdout)
    for n in range(4, len(SECRET_KEY) + 1):
        assert SECRET_KEY[:n] not in proc.stderr + proc.stdout


@pytest.mark.parametrize("args, code, says", [
    (("--output", "{tmp}/out/{{dat}}.parquet"), 2, "unknown placeholder {dat}"),
    (("--concurrency", "many"), 2, "'many' is not a valid integer"),  # click's own usage error
    (("--input", "{tmp}/missing.csv"), 2, "missing.csv"),
])
def test_log_format_json_errors_are_json_too(cli, fake, tmp_path, args, code, says):
    export(tmp_path, "2026-11-30", ["a"])
    args = [arg.format(tmp=tmp_path) for arg in args]
    proc = cli.run("run", nightly_job(tmp_path, fake), "--log-format", "json", *args)
    assert proc.returncode == code
    [record] = json_lines(proc.stderr)
    assert record["level"] == "error" and record["event"] == "error" and record["exit_code"] == code
    assert says in record["message"] and fake.requests == []
