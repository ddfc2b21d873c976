"""Crash safety with the real CLI: SIGKILL at random moments, SIGINT, locks, changed jobs.

A FakeOpenAI on 127.0.0.1 records every billed request; the CLI runs as a subprocess.
"""

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fakeapi import FakeOpenAI  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-SECRET-resume-777"
CONCURRENCY = 8


@pytest.fixture
def fake():
    with FakeOpenAI(api_key=KEY, latency_s=0.02) as server:
        yield server


def command(fake, tmp_path, *extra):
    return [sys.executable, "-m", "pipeline", "run", "--input", str(tmp_path / "in.parquet"),
            "--output", str(tmp_path / "out.parquet"), "--template", "{text}", "--model", "gpt-4o-mini",
            "--base-url", fake.base_url, "--concurrency", str(CONCURRENCY), "--quiet", *extra]


def environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return {**env, "OPENAI_API_KEY": KEY}


def wait_for(condition, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def billed(fake):
    return Counter(entry["prompt"] for entry in fake.completed())


def write_input(tmp_path, rows):
    pq.write_table(pa.table({"id": list(range(len(rows))), "text": rows}), tmp_path / "in.parquet")


def test_sigkill_at_random_moments_then_rerun_pays_at_most_in_flight(fake, tmp_path):
    rows = [f"question {i % 1500}" for i in range(2000)]  # 500 duplicates
    write_input(tmp_path, rows)
    rng = random.Random(7)
    kills, resent_per_kill = 0, []
    for _ in range(4):
        before = sum(billed(fake).values())
        process = subprocess.Popen(command(fake, tmp_path), env=environment(), cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        target = before + rng.randint(40, 300)
        try:
            wait_for(lambda: sum(billed(fake).values()) >= target or process.poll() is not None)
        finally:
            process.kill()
            process.wait()
        kills += 1
        counts = billed(fake)
        resent_per_kill.append(sum(counts.values()) - len(counts))
    final = subprocess.run(command(fake, tmp_path), env=environment(), cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    counts = billed(fake)
    assert set(counts) == set(rows)  # every distinct request answered...
    resent = sum(counts.values()) - len(counts)
    assert resent <= CONCURRENCY * kills, (resent, resent_per_kill)  # ...and re-billed only in flight
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in out] == list(range(len(rows)))
    assert [r["reply"] for r in out] == [f"ECHO {t}" for t in rows]
    assert all(r["status"] == "ok" for r in out)
    assert not list(tmp_path.glob(".out.parquet.tmp-*"))


def test_sigint_stops_gracefully_and_the_rerun_sends_only_what_is_left(fake, tmp_path):
    rows = [f"item {i}" for i in range(600)]
    write_input(tmp_path, rows)
    process = subprocess.Popen(command(fake, tmp_path), env=environment(), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(fake.completed()) >= 100)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "run the same command again" in stderr
    partial = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(partial) == 600 and {r["status"] for r in partial} == {"ok", "error"}
    assert {r["error_type"] for r in partial if r["status"] == "error"} == {"not_sent"}

    rerun = subprocess.run(command(fake, tmp_path), env=environment(), cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    counts = billed(fake)
    assert max(counts.values()) == 1 and set(counts) == set(rows)  # graceful: nothing billed twice
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["reply"] for r in out] == [f"ECHO {t}" for t in rows]


def test_changed_job_after_an_interrupted_run_is_refused(fake, tmp_path):
    write_input(tmp_path, [f"item {i}" for i in range(400)])
    process = subprocess.Popen(command(fake, tmp_path), env=environment(), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: len(fake.completed()) >= 20)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    sent_before = len(fake.requests)

    changed = command(fake, tmp_path)
    changed[changed.index("{text}")] = "Q: {text}"
    result = subprocess.run(changed, env=environment(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "template changed" in result.stderr and "--fresh" in result.stderr
    assert len(fake.requests) == sent_before
    fresh = subprocess.run(changed + ["--fresh"], env=environment(), cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert fresh.returncode == 0, fresh.stderr
    assert pq.read_table(tmp_path / "out.parquet").column("reply").to_pylist()[0] == "ECHO Q: item 0"


def test_a_concurrent_run_of_the_same_job_is_locked_out(fake, tmp_path):
    write_input(tmp_path, [f"[[slow:0.2]] item {i}" for i in range(400)])  # the first run lasts seconds
    first = subprocess.Popen(command(fake, tmp_path), env=environment(), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(fake.requests) >= 1)
        second = subprocess.run(command(fake, tmp_path), env=environment(), cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 2
        assert "another chatbatch run" in second.stderr and str(first.pid) in second.stderr
    finally:
        first.wait(timeout=60)
    assert first.returncode == 0
