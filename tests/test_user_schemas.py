"""Structured jobs with schemas as users write them, end to end: the real CLI against tests/fakeapi.py.

Nested unions and free-form values reach typed Parquet columns (JSON text where no single Arrow type
fits), plain schemas are made strict before sending (or refused, naming the keyword), JSON mode always
says "json", a JSON-text ``output_schema`` in a job file works, labels and schema are in the job's
fingerprint, and a reply cut off at the token limit says so.
"""

import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# A plain schema: optional properties, no additionalProperties, unions at depth 1-3.
NESTED = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "score": {"type": ["integer", "string"]},
        "meta": {"type": "object", "properties": {
            "source": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "rating": {"type": ["number", "null"]},
            "tags": {"type": "array", "items": {"type": ["string", "number"]}},
        }, "required": ["source"]},
        "parts": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"},
            "value": {"oneOf": [{"type": "integer"}, {"type": "string"}, {"type": "boolean"}]},
            "detail": {"type": "object", "properties": {
                "unit": {"type": ["string", "integer"]}, "size": {"type": "number"}}},
        }, "required": ["id", "value"]}},
        "count": {"type": "integer"},
    },
    "required": ["title", "score", "parts"],
}
NESTED_REPLIES = {
    "r0": {"title": "a", "score": 5, "meta": {"source": "web", "rating": 4.5, "tags": ["x", 2]},
           "parts": [{"id": 1, "value": 7, "detail": {"unit": "cm", "size": 2}},
                     {"id": 2, "value": "big", "detail": None}], "count": 3},
    "r1": {"title": "b", "score": "n/a", "meta": {"source": 12, "rating": None, "tags": []},
           "parts": [{"id": 3, "value": True, "detail": {"unit": 4, "size": None}}], "count": None},
    "r2": {"title": "c", "score": -1, "meta": None, "parts": [], "count": None},
    "r3": {"title": "d", "score": 0, "meta": None, "parts": [], "count": 2 ** 70},  # beyond int64
}


def write_rows(path: Path, prompts) -> Path:
    pq.write_table(pa.table({"id": list(range(len(prompts))), "text": prompts}), path)
    return path


def run_args(fake, tmp_path, *extra):
    return ("run", "--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet",
            "--template", "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--quiet",
            "--backoff-base", "0", *extra)


def reply_by_prompt(replies):
    return lambda body: json.dumps(replies[body["messages"][-1]["content"]])


def objects_in(schema):
    """Every object schema in a (sent) schema."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "object" in (schema.get("type") or []):
            yield schema
        for value in schema.values():
            yield from objects_in(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from objects_in(value)


def test_nested_unions_reach_typed_columns_and_a_rerun_rewrites_them(cli, fake, tmp_path):
    write_rows(tmp_path / "in.parquet", list(NESTED_REPLIES))
    (tmp_path / "schema.json").write_text(json.dumps(NESTED))
    fake.reply = reply_by_prompt(NESTED_REPLIES)
    fake.strict_schemas = True  # as OpenAI: a schema strict mode refuses gets a 400
    args = run_args(fake, tmp_path, "--output-schema", tmp_path / "schema.json", "--validation-retries", "1")
    first = cli.run(*args)
    assert first.returncode == 1, first.stderr  # one row's count does not fit int64
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.field("score").type == pa.string()  # ["integer", "string"]: JSON text
    assert out.schema.field("meta").type == pa.struct([
        pa.field("source", pa.string()), pa.field("rating", pa.float64()), pa.field("tags", pa.list_(pa.string()))])
    assert out.schema.field("parts").type == pa.list_(pa.struct([
        pa.field("id", pa.int64()), pa.field("value", pa.string()),
        pa.field("detail", pa.struct([pa.field("unit", pa.string()), pa.field("size", pa.float64())]))]))
    assert out.schema.field("count").type == pa.int64()
    rows = out.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"]
    assert rows[0]["title"] == "a" and rows[0]["score"] == "5" and rows[0]["count"] == 3
    assert rows[0]["meta"] == {"source": '"web"', "rating": 4.5, "tags": ['"x"', "2"]}
    assert rows[0]["parts"] == [{"id": 1, "value": "7", "detail": {"unit": '"cm"', "size": 2.0}},
                                {"id": 2, "value": '"big"', "detail": None}]
    assert rows[1]["score"] == '"n/a"' and rows[1]["count"] is None
    assert rows[1]["meta"] == {"source": "12", "rating": None, "tags": []}
    assert rows[1]["parts"] == [{"id": 3, "value": "true", "detail": {"unit": "4", "size": None}}]
    assert rows[2]["score"] == "-1" and rows[2]["meta"] is None and rows[2]["parts"] == []
    assert json.loads(rows[1]["parts"][0]["value"]) is True  # JSON text gives the value back exactly
    bad = rows[3]
    assert bad["error_type"] == "invalid_output" and bad["attempts"] == 2 and bad["count"] is None
    assert "count" in bad["error_message"] and "64-bit" in bad["error_message"]
    assert json.loads(bad["reply"])["count"] == 2 ** 70  # the value is kept, not lost
    sent = len(fake.requests)
    assert sent == 5 and all(r["status"] == 200 for r in fake.requests)

    again = cli.run(*args)  # every row is journaled: the rerun sends nothing and writes the same output
    assert again.returncode == 1, again.stderr
    assert len(fake.requests) == sent
    assert pq.read_table(tmp_path / "out.parquet").select(out.column_names).to_pylist() == rows


def test_free_form_values_in_lists_of_objects_are_json_text(cli, fake, tmp_path):
    schema = {"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "attrs": {"type": "object"}, "extra": {}}}},
        "raw": {},
        "big_id": {"type": "integer", "minimum": 0, "maximum": 1e30},
        "loose": {"type": "array"}}}
    replies = {
        "f0": {"items": [{"name": "n", "attrs": {"k": [1, {"z": None}]}, "extra": "s"},
                         {"name": "m", "attrs": {}, "extra": [1, 2.5]}],
               "raw": {"deep": {"deeper": [True]}}, "big_id": 10 ** 25, "loose": [1, "a", None]},
        "f1": {"items": [{"name": "o", "extra": None}], "raw": "plain", "big_id": 7, "loose": []},
    }
    write_rows(tmp_path / "in.parquet", list(replies))
    fake.reply = reply_by_prompt(replies)
    fake.json_word = True  # as OpenAI: JSON mode needs "json" in the messages
    proc = cli.run(*run_args(fake, tmp_path, "--output-schema", json.dumps(schema),
                             "--structured-mode", "json_object"))
    assert proc.returncode == 0, proc.stderr
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.field("items").type == pa.list_(pa.struct([
        pa.field("name", pa.string()), pa.field("attrs", pa.string()), pa.field("extra", pa.string())]))
    assert [out.schema.field(c).type for c in ("raw", "big_id", "loose")] == [
        pa.string(), pa.string(), pa.list_(pa.string())]
    first, second = out.to_pylist()
    assert first["items"] == [{"name": "n", "attrs": '{"k": [1, {"z": null}]}', "extra": '"s"'},
                              {"name": "m", "attrs": "{}", "extra": "[1, 2.5]"}]
    assert first["raw"] == '{"deep": {"deeper": [true]}}'
    assert first["big_id"] == "10000000000000000000000000"  # bounds beyond int64: kept exactly
    assert first["loose"] == ["1", '"a"', None]
    assert second["items"] == [{"name": "o", "attrs": None, "extra": None}]
    assert second["raw"] == '"plain"' and second["big_id"] == "7" and second["loose"] == []
    system = [m["content"] for m in fake.requests[0]["body"]["messages"] if m["role"] == "system"]
    assert any("JSON" in text for text in system)

    again = cli.run(*run_args(fake, tmp_path, "--output-schema", json.dumps(schema),
                              "--structured-mode", "json_object"))
    assert again.returncode == 0 and len(fake.requests) == 2
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == out.to_pylist()


def test_plain_schema_is_sent_strict_and_optional_nulls_are_valid(cli, fake, tmp_path):
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20},
        "nickname": {"type": "string"},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city"]},
        "kind": {"enum": ["person", "company"]}},
        "required": ["name"]}
    replies = {"p0": {"name": "Ana", "nickname": None, "address": {"city": "Porto", "zip": None}, "kind": None},
               "p1": {"name": "Bo", "nickname": "B", "address": None, "kind": "company"},
               "p2": {"name": "x" * 30, "nickname": None, "address": None, "kind": None}}
    write_rows(tmp_path / "in.parquet", list(replies))
    fake.reply = reply_by_prompt(replies)
    fake.strict_schemas = True
    proc = cli.run(*run_args(fake, tmp_path, "--output-schema", json.dumps(schema), "--validation-retries", "0"))
    assert proc.returncode == 1, proc.stderr  # p2's name breaks the user's maxLength
    assert all(r["status"] == 200 for r in fake.requests)
    sent = fake.requests[0]["body"]["response_format"]["json_schema"]
    assert sent["strict"] is True
    for node in objects_in(sent["schema"]):
        assert node["additionalProperties"] is False and node["required"] == list(node["properties"])
    assert sent["schema"]["properties"]["nickname"]["type"] == ["string", "null"]
    assert "maxLength: 20" in sent["schema"]["properties"]["name"]["description"]
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert (rows[0]["nickname"], rows[0]["address"], rows[0]["kind"]) == (None, {"city": "Porto", "zip": None}, None)
    assert (rows[1]["nickname"], rows[1]["address"], rows[1]["kind"]) == ("B", None, "company")
    assert rows[2]["error_type"] == "invalid_output" and "name" in rows[2]["error_message"]


def test_a_schema_strict_mode_cannot_take_is_refused_before_sending(cli, fake, tmp_path):
    schema = {"type": "object", "properties": {
        "person": {"type": "object", "properties": {"name": {"type": "string"}},
                   "patternProperties": {"^x-": {"type": "string"}}}}}
    write_rows(tmp_path / "in.parquet", ["a", "b"])
    proc = cli.run(*run_args(fake, tmp_path, "--output-schema", json.dumps(schema)))
    assert proc.returncode == 2
    assert "'patternProperties' at #/properties/person" in proc.stderr and "strict = false" in proc.stderr
    assert fake.requests == [] and not (tmp_path / "out.parquet").exists()

    submit = cli.run("batch", "submit", *run_args(fake, tmp_path, "--output-schema", json.dumps(schema))[1:])
    assert submit.returncode == 2 and "'patternProperties' at #/properties/person" in submit.stderr
    assert fake.batch_requests_log == [] and fake.files == {}

    relaxed = cli.run(*run_args(fake, tmp_path, "--output-schema", json.dumps(schema), "--no-strict",
                                "--validation-retries", "0"))
    assert relaxed.returncode == 1 and len(fake.requests) == 2  # sent as written (the ECHO replies are not JSON)


def test_batch_submit_uploads_the_strict_schema(cli, fake, tmp_path):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
              "required": ["city"]}
    write_rows(tmp_path / "in.parquet", ["a", "b"])
    fake.strict_schemas = True
    submit = cli.run("batch", "submit", *run_args(fake, tmp_path, "--output-schema", json.dumps(schema))[1:])
    assert submit.returncode == 0, submit.stderr
    lines = [json.loads(x) for f in fake.files.values() if f["purpose"] == "batch"
             for x in f["content"].splitlines()]
    assert len(lines) == 2
    for line in lines:
        sent = line["body"]["response_format"]["json_schema"]["schema"]
        assert sent["additionalProperties"] is False and sent["required"] == ["city", "zip"]
        assert sent["properties"]["zip"]["type"] == ["string", "null"]


def test_json_mode_without_the_word_json_is_refused_or_not_sent(cli, fake, tmp_path):
    fake.json_word = True
    write_rows(tmp_path / "in.parquet", ["a", "b"])
    proc = cli.run(*run_args(fake, tmp_path, "--response-format", '{"type": "json_object"}'))
    assert proc.returncode == 2 and "'json'" in proc.stderr and fake.requests == []

    ok = cli.run(*run_args(fake, tmp_path, "--response-format", '{"type": "json_object"}',
                           "--system", "Answer in JSON."))
    assert ok.returncode == 0, ok.stderr
    assert all("JSON" in r["body"]["messages"][0]["content"] for r in fake.requests)

    fake.reset()
    messages = [json.dumps([{"role": "user", "content": "give me json"}]),
                json.dumps([{"role": "user", "content": "no format word here"}])]
    pq.write_table(pa.table({"messages": messages}), tmp_path / "msgs.parquet")
    proc = cli.run("run", "--input", tmp_path / "msgs.parquet", "--output", tmp_path / "msgs.out.parquet",
                   "--messages-column", "messages", "--model", "gpt-4o-mini", "--base-url", fake.base_url,
                   "--quiet", "--response-format", '{"type": "json_object"}')
    assert proc.returncode == 1, proc.stderr
    rows = pq.read_table(tmp_path / "msgs.out.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert rows[1]["error_type"] == "invalid_messages" and "'json'" in rows[1]["error_message"]
    assert len(fake.requests) == 1 and all(r["status"] == 200 for r in fake.requests)


def test_changed_labels_or_schema_in_a_system_message_mode_is_a_changed_job(cli, fake, tmp_path):
    write_rows(tmp_path / "in.parquet", ["a", "[[auth]] stop here", "c"])
    fake.reply = lambda body: '{"label": "yes"}'
    for mode in ("json_object", "prompt"):
        first = cli.run(*run_args(fake, tmp_path, "--labels", "yes,no", "--structured-mode", mode,
                                  "--concurrency", "1", "--fresh", "--overwrite"))
        assert first.returncode == 3, first.stderr  # stopped by the 401: an unfinished run
        changed = cli.run(*run_args(fake, tmp_path, "--labels", "yes,no,maybe", "--structured-mode", mode))
        assert changed.returncode == 2 and "structured output changed" in changed.stderr, changed.stderr


def test_a_reply_cut_off_at_the_token_limit_says_so(cli, fake, tmp_path):
    write_rows(tmp_path / "in.parquet", ["a"])
    fake.reply = lambda body: '{"label": "positive"}'  # cut to 12 characters at 3 tokens
    proc = cli.run(*run_args(fake, tmp_path, "--labels", "positive,negative", "--max-completion-tokens", "3",
                             "--validation-retries", "0"))
    assert proc.returncode == 1, proc.stderr
    (row,) = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert row["finish_reason"] == "length" and row["error_type"] == "invalid_output"
    assert "finish_reason 'length'" in row["error_message"] and "max_completion_tokens" in row["error_message"]


def test_a_journal_from_before_the_mapping_resumes_without_crashing(cli, fake, tmp_path):
    """An older chatbatch journaled nested values unconverted (then crashed writing them): the rerun
    converts them again from the replies instead of crashing again."""
    replies = {k: v for k, v in NESTED_REPLIES.items() if k != "r3"}
    write_rows(tmp_path / "in.parquet", list(replies))
    fake.reply = reply_by_prompt(replies)
    args = run_args(fake, tmp_path, "--output-schema", json.dumps(NESTED))
    assert cli.run(*args).returncode == 0
    expected = pq.read_table(tmp_path / "out.parquet").to_pylist()
    db = sqlite3.connect(tmp_path / "out.parquet.state" / "journal.sqlite")
    with db:
        for idx, text in db.execute("SELECT idx, result FROM rows").fetchall():
            result = json.loads(text)
            raw = replies[f"r{idx}"]
            result[9] = [json.dumps(raw[k]) if k == "score" else raw[k] for k in NESTED["properties"]]
            db.execute("UPDATE rows SET result = ? WHERE idx = ?", (json.dumps(result), idx))
    db.close()
    again = cli.run(*args)
    assert again.returncode == 0, again.stderr
    assert len(fake.requests) == 3
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == expected
