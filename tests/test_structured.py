"""Structured output: typed columns, validation retries, confidence, refusals, request shapes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import JobError
from pipeline.jobspec import build_job
from pipeline.structured import arrow_type, label_confidence

sys.path.insert(0, str(Path(__file__).parent))
from fakeapi import FakeOpenAI  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-SECRET-structured-9"
SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["kitchen", "electronics", "other"]},
        "stars": {"type": "integer"},
        "price": {"type": ["number", "null"]},
        "recommend": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "buyer": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                  "required": ["name", "age"], "additionalProperties": False},
    },
    "required": ["category", "stars", "price", "recommend", "tags", "buyer"],
    "additionalProperties": False,
}


def test_schema_types_become_arrow_types():
    assert [arrow_type(s) for s in SCHEMA["properties"].values()] == [
        pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.list_(pa.string()),
        pa.struct([pa.field("name", pa.string()), pa.field("age", pa.int64())])]


def test_labels_become_a_strict_enum_schema_in_the_request():
    job = build_job(None, {"input": "x.csv", "model": "m", "template": "{a}", "labels": ["pos", "neg"]},
                    {"OPENAI_API_KEY": "k"})
    response_format = job.params["response_format"]
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"] is True
    assert response_format["json_schema"]["schema"]["properties"]["label"]["enum"] == ["pos", "neg"]


@pytest.mark.parametrize("values, words", [
    ({"labels": ["a", "a"]}, "distinct"),
    ({"labels": ["a"], "output_schema": SCHEMA}, "not both"),
    ({"output_schema": {"type": "string"}}, "object with 'properties'"),
    ({"output_schema": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}, "not a valid JSON schema"),
    ({"labels": ["a"], "response_format": {"type": "json_object"}}, "response_format"),
    ({"labels": ["a"], "structured_mode": "yaml"}, "structured_mode"),
    ({"output_schema": "missing.json"}, "cannot read"),
])
def test_bad_structured_jobs_fail_before_sending(values, words):
    with pytest.raises(JobError, match=words):
        build_job(None, {"input": "x.csv", "model": "m", "template": "{a}", **values}, {"OPENAI_API_KEY": "k"})


def test_label_confidence_multiplies_the_label_tokens():
    tokens = [{"token": t, "logprob": lp} for t, lp in
              [('{"', -0.01), ("label", -0.01), ('":"', 0.0), ("neg", -0.2), ("ative", -0.1), ('"}', 0.0)]]
    assert label_confidence('{"label":"negative"}', "negative", tokens) == pytest.approx(math.exp(-0.3))
    assert label_confidence('{"label":"negative"}', "negative", None) is None


def run_cli(fake, tmp_path, rows, *extra):
    pq.write_table(pa.table({"id": list(range(len(rows))), "review": rows}), tmp_path / "in.parquet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = KEY
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--input", tmp_path / "in.parquet", "--output",
         tmp_path / "out.parquet", "--template", "{review}", "--model", "gpt-4o-mini", "--base-url",
         fake.base_url, "--quiet", "--backoff-base", "0", *extra], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=60)
    out = pq.read_table(tmp_path / "out.parquet") if (tmp_path / "out.parquet").exists() else None
    return result, out


def test_classification_with_labels_and_confidence(tmp_path):
    answers = {"good mug": '{"label": "positive"}', "broken": '{"label": "negative"}',
               "weird": '{"label": "delighted"}'}

    def reply(body):
        return answers.get(body["messages"][-1]["content"], "")

    with FakeOpenAI(api_key=KEY, reply=reply) as fake:
        result, out = run_cli(fake, tmp_path, ["good mug", "broken", "weird", "[[refuse]] refuse me"],
                              "--labels", "positive,negative,neutral", "--logprobs", "--validation-retries", "1")
        bodies = [e["body"] for e in fake.requests]
    assert result.returncode == 1, result.stderr  # one invalid label, one refusal
    rows = out.to_pylist()
    assert out.schema.field("label").type == pa.string()
    assert out.schema.field("label_confidence").type == pa.float64()
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "refused"]
    assert [r["label"] for r in rows] == ["positive", "negative", None, None]
    assert rows[0]["label_confidence"] == pytest.approx(math.exp(-0.05))
    assert 0 <= rows[1]["label_confidence"] <= 1
    bad = rows[2]
    assert bad["error_type"] == "invalid_output" and "delighted" in bad["error_message"]
    assert bad["reply"] == '{"label": "delighted"}' and bad["attempts"] == 2  # raw reply kept; retried once
    assert bad["cost_usd"] > 0  # it was billed
    assert rows[3]["refusal"] and rows[3]["label"] is None
    assert all(b["response_format"]["type"] == "json_schema" and b["logprobs"] is True for b in bodies)
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["refused"] == 1 and summary["discarded_replies_cost_usd"] > 0


def test_extraction_schema_gives_typed_columns_even_when_every_row_fails(tmp_path):
    good = {"category": "kitchen", "stars": 4, "price": 19.5, "recommend": True, "tags": ["mug", "gift"],
            "buyer": {"name": "Ana", "age": 31}}
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    with FakeOpenAI(api_key=KEY, reply=lambda b: json.dumps(good)) as fake:
        result, out = run_cli(fake, tmp_path, ["a review"], "--output-schema", tmp_path / "schema.json")
    assert result.returncode == 0, result.stderr
    (row,) = out.to_pylist()
    assert {k: row[k] for k in good} == good
    assert out.schema.field("stars").type == pa.int64()
    assert out.schema.field("buyer").type == pa.struct([pa.field("name", pa.string()), pa.field("age", pa.int64())])

    with FakeOpenAI(api_key=KEY, reply=lambda b: '{"category": "kitchen"}') as fake:
        result, out = run_cli(fake, tmp_path, ["a", "b"], "--output-schema", json.dumps(SCHEMA),
                              "--validation-retries", "0", "--overwrite", "--fresh")
    assert result.returncode == 1
    assert out.schema.field("stars").type == pa.int64() and out.column("stars").null_count == 2
    assert set(out.column("error_type").to_pylist()) == {"invalid_output"}


def test_json_object_mode_describes_the_schema_in_a_system_message(tmp_path):
    with FakeOpenAI(api_key=KEY, reply=lambda b: 'Sure:\n```json\n{"label": "neutral"}\n```') as fake:
        result, out = run_cli(fake, tmp_path, ["meh"], "--labels", "positive,negative,neutral",
                              "--structured-mode", "prompt", "--system", "You are terse.")
        body = fake.requests[0]["body"]
    assert "response_format" not in body
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert body["messages"][1]["role"] == "system" and '"enum"' in body["messages"][1]["content"]
    assert result.returncode == 1  # the fenced reply has text before it: not valid JSON
    with FakeOpenAI(api_key=KEY, reply=lambda b: '```json\n{"label": "neutral"}\n```') as fake:
        result, out = run_cli(fake, tmp_path, ["meh"], "--labels", "positive,negative,neutral",
                              "--structured-mode", "json_object", "--overwrite", "--fresh")
        assert fake.requests[0]["body"]["response_format"] == {"type": "json_object"}
    assert result.returncode == 0 and out.column("label").to_pylist() == ["neutral"]
