"""Unattended runs with the real CLI: stops that keep every row, fail-fast on a dead endpoint or on a
schema no reply fits, and an empty input that says so.

Each test runs ``python -m pipeline run`` against tests/fakeapi.py (or a closed loopback port) and
reads the output Parquet row by row.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from pipeline.runner import WINDOW_ROWS
from test_cli_integration import assert_no_secret, base_args, read_rows, read_summary, temp_files, wait_for, write_csv

GRACE_ENV = {"CHATBATCH_STOP_GRACE_S": "1"}  # the default is 10 s; the behaviour is the same


def communicate(process: subprocess.Popen, timeout_s: float = 60) -> tuple[str, str, float]:
    started = time.monotonic()
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return stdout, stderr, time.monotonic() - started


# --------------------------------------------------------------------------------------------------
# stopping: a large input, requests that outlive the grace period, one or two signals


@pytest.mark.parametrize("signals", [1, 2], ids=["one-signal", "two-signals"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_with_hanging_requests_on_a_large_input_keeps_every_row(signum, signals, fake, cli, tmp_path):
    # More rows than the read-ahead window, two requests that hang far beyond the grace period and
    # fast ones around them: after the stop the writer waits for the hanging rows, the window fills,
    # the producer waits and the other workers sit idle when the grace period ends.
    n = WINDOW_ROWS + 7000
    hanging = {5, 6}
    texts = [f"row {i} [[slow:60]]" if i in hanging else f"row {i}" for i in range(n)]
    inp = write_csv(tmp_path / "in.csv", {"text": texts})
    out = tmp_path / "out.parquet"
    process = cli.popen(*base_args(fake, inp, out), "--template", "{text}", "--concurrency", "4",
                        "--timeout", "120", env=GRACE_ENV)
    try:
        wait_for(lambda: len(fake.completed()) >= 20 and sum(e["status"] is None for e in fake.requests) >= 2
                 or process.poll() is not None, timeout_s=60, what="2 hanging requests in flight")
        assert process.poll() is None, process.communicate()
        process.send_signal(signum)
        if signals == 2:
            time.sleep(0.2)
            process.send_signal(signum)
        stdout, stderr, took = communicate(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "CancelledError" not in stderr
    assert took < 1 + 20, f"exit took {took:.1f}s after the signal (grace 1 s)"
    rows = read_rows(out)
    assert [r["text"] for r in rows] == texts, "every input row once, in order"
    ok = {r["text"] for r in rows if r["status"] == "ok"}
    assert ok == {e["prompt"] for e in fake.completed()}, "every answered row is kept"
    assert len(ok) >= 20
    for index in hanging:
        assert rows[index]["error_type"] == "not_sent" and "cancelled" in rows[index]["error_message"]
    rest = [r for r in rows if r["status"] != "ok"]
    assert {(r["status"], r["error_type"]) for r in rest} == {("error", "not_sent")}
    assert temp_files(out) == []
    summary = read_summary(out)
    assert summary["exit_code"] == 130 and summary["ok"] == len(ok) and summary["error"] == n - len(ok)
    assert_no_secret(subprocess.CompletedProcess([], 130, stdout, stderr), tmp_path)


def test_an_output_that_cannot_be_written_exits_4_with_the_reason_and_the_rerun_resumes(fake, cli, tmp_path):
    n = 30
    fake.latency_s = 0.1
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(n)]})
    folder = tmp_path / "out"
    out = folder / "out.parquet"
    args = (*base_args(fake, inp, out), "--template", "{text}", "--concurrency", "2",
            "--state-dir", tmp_path / "state")
    process = cli.popen(*args)
    wait_for(lambda: len(fake.completed()) >= 4 or process.poll() is not None, what="4 rows")
    shutil.rmtree(folder)  # the output's folder disappears: the file cannot be put in place
    _, stderr, _ = communicate(process)
    assert process.returncode == 4, stderr
    assert "cannot write the output" in stderr and str(out) in stderr and "Traceback" not in stderr
    assert "run the same command again" in stderr
    assert not out.exists()
    answered = {e["prompt"] for e in fake.completed()}
    fake.reset()
    rerun = cli.run(*args, "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert not answered & {e["prompt"] for e in fake.requests}, "finished rows come from the journal"
    assert [r["status"] for r in read_rows(out)] == ["ok"] * n


# --------------------------------------------------------------------------------------------------
# fail fast: a dead endpoint, a schema no reply fits


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("concurrency", [1, 32])
def test_dead_endpoint_stops_early_naming_the_host(concurrency, cli, tmp_path):
    port = closed_port()
    n = 191
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(n)]})
    out = tmp_path / "out.parquet"
    proc = cli.run("run", "--input", inp, "--output", out, "--model", "gpt-4o-mini", "--template", "{text}",
                   "--base-url", f"http://127.0.0.1:{port}/v1", "--backoff-base", "0.01", "--backoff-max",
                   "0.05", "--concurrency", concurrency)
    assert proc.returncode == 3, proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr and "connection" in proc.stderr
    assert "base_url" in proc.stderr, "the message says what to check"
    assert "Traceback" not in proc.stderr
    rows = read_rows(out)
    assert [r["text"] for r in rows] == [f"row {i}" for i in range(n)]
    failed = [r for r in rows if r["error_type"] == "connection_error"]
    assert sum(r["attempts"] for r in failed) <= 20 + concurrency, "stops after about 20 attempts"
    assert {r["error_type"] for r in rows} == {"connection_error", "not_sent"}
    summary = read_summary(out)
    assert summary["exit_code"] == 3 and summary["stopped_by"] == "connection_error"
    assert_no_secret(proc, tmp_path)


def test_a_schema_no_reply_fits_stops_after_the_first_twenty_replies(cli, tmp_path):
    from fakeapi import FakeOpenAI
    from conftest import SECRET_KEY

    n = 200
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(n)]})
    out = tmp_path / "out.parquet"
    with FakeOpenAI(api_key=SECRET_KEY, reply=lambda body: "Sure! Here is the JSON you asked for.") as fake:
        proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--labels", "good,bad",
                       "--concurrency", "2")
        billed = fake.billed_count
    assert proc.returncode == 3, proc.stderr
    assert "invalid" in proc.stderr and "schema" in proc.stderr and "Traceback" not in proc.stderr
    assert billed <= 20 + 2, f"{billed} replies paid for; the run should stop after about 20"
    rows = read_rows(out)
    assert len(rows) == n
    assert {r["error_type"] for r in rows} == {"invalid_output", "not_sent"}
    assert read_summary(out)["stopped_by"] == "invalid_output"


def test_nineteen_invalid_replies_then_valid_ones_do_not_stop_the_run(cli, tmp_path):
    from fakeapi import FakeOpenAI
    from conftest import SECRET_KEY

    n = 60
    inp = write_csv(tmp_path / "in.csv", {"text": [f"row {i}" for i in range(n)]})
    out = tmp_path / "out.parquet"

    def reply(body):  # the first 19 rows get an invalid reply, the rest a valid one
        index = int(body["messages"][-1]["content"].split()[1])
        return "nonsense" if index < 19 else '{"label": "good"}'

    with FakeOpenAI(api_key=SECRET_KEY, reply=reply) as fake:
        proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--labels", "good,bad",
                       "--concurrency", "1", "--validation-retries", "0")
    assert proc.returncode == 1, proc.stderr
    statuses = [r["error_type"] or r["status"] for r in read_rows(out)]
    assert statuses == ["invalid_output"] * 19 + ["ok"] * (n - 19), "19 invalid replies do not stop it"


# --------------------------------------------------------------------------------------------------
# an empty input


@pytest.mark.parametrize("content", ["text\n", ""], ids=["header-only", "empty-file"])
def test_an_empty_input_says_so(content, fake, cli, tmp_path):
    inp = tmp_path / "in.csv"
    inp.write_text(content)
    out = tmp_path / "out.parquet"
    proc = cli.run(*base_args(fake, inp, out), "--template", "{text}", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "has no rows" in proc.stderr
    assert pq.read_table(out).num_rows == 0
    assert fake.requests == []


# --------------------------------------------------------------------------------------------------
# a signal before the run has started


def _has_open(pid: int, path) -> bool:
    """True while process ``pid`` holds ``path`` open (it is reading its input: preparing the job)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_job_is_prepared_still_writes_every_row(signum, fake, cli, tmp_path):
    # The signal lands while the CLI reads its input to check the job, before the run starts (before
    # this fix SIGTERM killed the process there and SIGINT wrote nothing). The run then starts stopped:
    # every row is written once, none sent after the stop, exit 130.
    n = 400_000
    texts = [f"row {i}" for i in range(n)]
    inp = write_csv(tmp_path / "in.csv", {"text": texts})
    out = tmp_path / "out.parquet"
    process = cli.popen(*base_args(fake, inp, out), "--template", "{text}", env=GRACE_ENV)
    try:
        wait_for(lambda: _has_open(process.pid, inp) or process.poll() is not None, timeout_s=60,
                 what="the CLI reading its input")
        process.send_signal(signum)
        stdout, stderr, _ = communicate(process, timeout_s=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    rows = pq.read_table(out, columns=["text", "status", "error_type"]).to_pydict()
    assert rows["text"] == texts, "every input row once, in order"
    answered = [s for s in rows["status"] if s == "ok"]
    assert len(answered) == len(fake.completed()) <= 64, "at most what was in flight when the signal landed"
    assert set(rows["error_type"]) <= {None, "not_sent"}
    assert read_summary(out)["exit_code"] == 130
