"""Schemas → Arrow columns (pipeline.columns), → strict-mode schemas (pipeline.strict), and the job."""

import pyarrow as pa
import pytest

from pipeline.columns import Unstorable, column_for
from pipeline.errors import JobError
from pipeline.jobspec import build_job
from pipeline.records import Completion, Usage
from pipeline.run import fingerprint
from pipeline.runner import completion_result
from pipeline.strict import Incompatible, strict_schema
from pipeline.structured import Validator

JSON = pa.string()


def struct(**fields):
    return pa.struct([pa.field(name, dtype) for name, dtype in fields.items()])


@pytest.mark.parametrize("schema, dtype", [
    ({"type": "string"}, pa.string()),
    ({"type": "integer"}, pa.int64()),
    ({"type": "integer", "minimum": 0, "maximum": 2 ** 63 - 1}, pa.int64()),
    ({"type": "integer", "maximum": 1e30}, JSON),  # the schema allows values beyond int64
    ({"type": "integer", "enum": [1, 2 ** 64]}, JSON),
    ({"type": "number"}, pa.float64()),
    ({"type": "boolean"}, pa.bool_()),
    ({"type": ["string", "null"]}, pa.string()),
    ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, pa.int64()),
    ({"enum": ["a", "b", None]}, pa.string()),
    ({"enum": [1, 2]}, pa.int64()),
    ({"enum": [1, "a"]}, JSON),
    ({"const": True}, pa.bool_()),
    ({"type": ["integer", "string"]}, JSON),
    ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, JSON),
    ({"oneOf": [{"type": "string", "format": "date"}, {"type": "string", "pattern": "^x"}]}, pa.string()),
    ({}, JSON),
    (True, JSON),
    ({"type": "object"}, JSON),
    ({"type": "object", "properties": {}}, JSON),
    ({"type": "array"}, pa.list_(JSON)),
    ({"type": "array", "prefixItems": [{"type": "string"}]}, JSON),
    ({"type": "array", "items": {"type": "object", "properties": {
        "v": {"type": ["integer", "string"]},
        "w": {"type": "object", "properties": {"x": {"anyOf": [{"type": "number"}, {"type": "boolean"}]},
                                               "y": {"type": "array", "items": {}}}}}}},
     pa.list_(struct(v=JSON, w=struct(x=JSON, y=pa.list_(JSON))))),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "anyOf": [{"required": ["a"]}]}, JSON),
    ({"allOf": [{"type": "integer"}]}, pa.int64()),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}},
                {"type": "object", "properties": {"b": {"type": "string"}}}]}, JSON),
])
def test_every_depth_maps_by_the_schema_alone(schema, dtype):
    assert column_for(schema).arrow == dtype


def test_local_refs_are_followed_and_recursive_ones_are_json_text():
    root = {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}, "n": {"$ref": "#/$defs/Node"}},
            "$defs": {"A": {"type": "object", "properties": {"x": {"type": "integer"}}},
                      "Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}}
    assert column_for(root["properties"]["a"], root).arrow == struct(x=pa.int64())
    assert column_for(root["properties"]["n"], root).arrow == struct(next=JSON)
    assert column_for({"$ref": "#/$defs/missing"}, root).arrow == JSON


def test_values_are_converted_exactly_and_what_cannot_be_stored_names_where():
    column = column_for({"type": "array", "items": {"type": "object", "properties": {
        "n": {"type": "integer"}, "u": {"type": ["integer", "string"]}, "s": {"type": "string"}}}})
    assert column.convert([{"n": 5.0, "u": "x", "s": "é"}, {"u": 10 ** 30}]) == [
        {"n": 5, "u": '"x"', "s": "é"}, {"n": None, "u": "1000000000000000000000000000000", "s": None}]
    pa.array([column.convert([{"n": 1, "u": {"deep": [1, None]}}])], type=column.arrow)  # never raises
    for value, words in (([{"n": 2 ** 63}], "0/n: 9223372036854775808 does not fit"),
                         ([{}, {"n": True}], "1/n: true is not an integer"),
                         ([{"s": "\ud800"}], "0/s: .* lone surrogate")):
        with pytest.raises(Unstorable, match=words):
            column.convert(value)
    assert column_for({}).convert({"a": "\ud800"}) == '{"a": "\\ud800"}'  # escaped, still exact


def test_validation_accepts_null_for_optional_and_keeps_the_users_constraints(tmp_path):
    job = build_job(None, {"input": "x.csv", "model": "m", "template": "{a}", "output_schema": {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 3}, "age": {"type": "integer"}},
        "required": ["name"]}}, {"OPENAI_API_KEY": "k"})
    validator = Validator(job.output)
    assert validator.read('{"name": "Ana", "age": null}')[1] == ("Ana", None)
    with pytest.raises(ValueError, match="name"):
        validator.read('{"name": null, "age": 3}')  # required: null is not absent
    with pytest.raises(ValueError, match="name"):
        validator.read('{"name": "Anabel"}')  # maxLength is not sent to strict mode, but still checked
    with pytest.raises(ValueError, match="age: 9223372036854775808 does not fit"):
        validator.read('{"name": "Bo", "age": 9223372036854775808}')


def test_strict_schema_closes_every_object_and_makes_optional_nullable():
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "properties": {
        "a": {"type": "string", "default": "x", "minLength": 2},
        "b": {"type": "array", "items": {"type": "object", "properties": {"c": {"enum": ["p", "q"]}}}},
        "d": {"oneOf": [{"type": "integer"}, {"$ref": "#/$defs/D"}]},
        "e": {"$ref": "#/$defs/D", "description": "an e"}},
        "required": ["a", "d"], "$defs": {"D": {"type": "object", "properties": {"f": {"type": "boolean"}}}}}
    sent = strict_schema(schema)
    assert "$schema" not in sent and sent["required"] == ["a", "b", "d", "e"] and sent["additionalProperties"] is False
    assert sent["properties"]["a"] == {"type": "string", "description": "minLength: 2"}
    assert sent["properties"]["b"]["type"] == ["array", "null"]
    item = sent["properties"]["b"]["items"]
    assert item["additionalProperties"] is False and item["required"] == ["c"]
    assert item["properties"]["c"] == {"anyOf": [{"enum": ["p", "q"], "type": "string"}, {"type": "null"}]}
    assert sent["properties"]["d"] == {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/D"}]}
    assert sent["properties"]["e"]["anyOf"][0] == {"description": "an e", "anyOf": [{"$ref": "#/$defs/D"}]}
    assert sent["$defs"]["D"] == {"type": "object", "properties": {"f": {"type": ["boolean", "null"]}},
                                  "required": ["f"], "additionalProperties": False}
    assert schema["properties"]["a"]["default"] == "x"  # the user's schema is untouched


def test_a_schema_that_is_already_strict_is_sent_unchanged():
    schema = {"type": "object", "properties": {
        "label": {"type": "string", "enum": ["a", "b"]},
        "items": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": ["number", "null"]}},
                                             "required": ["x"], "additionalProperties": False}}},
        "required": ["label", "items"], "additionalProperties": False}
    assert strict_schema(schema) == schema


@pytest.mark.parametrize("schema, keyword, pointer", [
    ({"properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}},
                           "patternProperties": {"^x": {}}}}}, "patternProperties", "#/properties/a"),
    ({"properties": {"a": {"type": "string", "if": {}, "then": {}}}}, "if", "#/properties/a"),
    ({"properties": {"a": {"type": "string"}}, "dependentRequired": {"a": []}}, "dependentRequired", "#"),
    ({"properties": {"a": {"allOf": [{"type": "string"}]}}}, "allOf", "#/properties/a"),
    ({"properties": {"a": {"type": "string", "not": {"const": ""}}}}, "not", "#/properties/a"),
    ({"properties": {"a": {"type": "array", "items": {}}}}, "type", "#/properties/a/items"),
    ({"properties": {"a": {"type": "array"}}}, "items", "#/properties/a"),
    ({"properties": {"a": {"type": "object"}}}, "properties", "#/properties/a"),
    ({"properties": {"a": {"type": "string"}}, "additionalProperties": True}, "additionalProperties", "#"),
    ({"properties": {"a": {"type": "string"}}, "anyOf": [{"required": ["a"]}]}, "anyOf", "#"),
    ({"properties": {"a": {"type": "string"}}, "required": ["b"]}, "required", "#"),
    ({"properties": {"a": {"type": "array", "items": {"type": "string"}, "prefixItems": []}}}, "prefixItems",
     "#/properties/a"),
    ({"properties": {"a": {"anyOf": [True]}}}, "true", "#/properties/a/anyOf/0"),
    ({"properties": {f"p{i}": {"type": "string"} for i in range(5001)}}, "properties", "#"),
    ({"properties": {"a": {"enum": list(range(1001))}}}, "enum", "#"),
])
def test_what_strict_mode_cannot_take_is_refused_naming_keyword_and_place(schema, keyword, pointer):
    with pytest.raises(Incompatible) as caught:
        strict_schema({"type": "object", **schema})
    assert (caught.value.keyword, caught.value.pointer) == (keyword, pointer)


def test_nesting_deeper_than_strict_mode_allows_is_refused():
    schema = {"type": "string"}
    for _ in range(10):
        schema = {"type": "object", "properties": {"x": schema}}
    strict_schema(schema)
    with pytest.raises(Incompatible, match="at most 10 levels"):
        strict_schema({"type": "object", "properties": {"x": schema}})


def test_the_job_refuses_before_sending_unless_strict_is_off_or_the_model_is_local():
    schema = {"type": "object", "properties": {"meta": {}}}
    base = {"input": "x.csv", "model": "m", "template": "{a}", "output_schema": schema}
    with pytest.raises(JobError, match=r"'type' at #/properties/meta: missing.*strict = false"):
        build_job(None, base, {"OPENAI_API_KEY": "k"})
    for extra in ({"strict": False}, {"structured_mode": "json_object"}, {"structured_mode": "prompt"},
                  {"local": True}):
        job = build_job(None, {**base, **extra}, {"OPENAI_API_KEY": "k"})
        assert job.output.fields == (("meta", JSON),)
    off = build_job(None, {**base, "strict": False}, {"OPENAI_API_KEY": "k"})
    assert off.params["response_format"]["json_schema"]["schema"] == schema  # sent as written


def test_output_schema_as_json_text_in_a_job_file(tmp_path):
    job_file = tmp_path / "job.toml"
    job_file.write_text('input = "in.csv"\nmodel = "m"\ntemplate = "{a}"\n'
                        'output_schema = \'\'\'\n  {"type": "object", "properties": {"n": {"type": "integer"}}}\n\'\'\'\n')
    job = build_job(job_file, {}, {"OPENAI_API_KEY": "k"})
    assert job.output.fields == (("n", pa.int64()),)
    job_file.write_text('input = "in.csv"\nmodel = "m"\ntemplate = "{a}"\noutput_schema = \'{"type": \'\n')
    with pytest.raises(JobError, match=rf"{job_file}: output_schema is JSON text but not valid JSON"):
        build_job(job_file, {}, {"OPENAI_API_KEY": "k"})
    (tmp_path / "s.json").write_text('{"type": "object", "properties": {"b": {"type": "boolean"}}}')
    job_file.write_text('input = "in.csv"\nmodel = "m"\ntemplate = "{a}"\noutput_schema = "s.json"\n')
    assert build_job(job_file, {}, {"OPENAI_API_KEY": "k"}).output.fields == (("b", pa.bool_()),)


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "prompt"])
def test_labels_and_schema_are_in_the_fingerprint_in_every_mode(mode):
    def print_of(**values):
        job = build_job(None, {"input": "x.csv", "model": "m", "template": "{a}", "structured_mode": mode,
                               **values}, {"OPENAI_API_KEY": "k"})
        return fingerprint(job, "digest")
    labels = print_of(labels=["a", "b"])
    assert labels != print_of(labels=["a", "c"]) and labels == print_of(labels=["a", "b"])
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    changed = {"type": "object", "properties": {"n": {"type": "number"}}}
    assert print_of(output_schema=schema) != print_of(output_schema=changed)
    assert "structured output" not in print_of()  # free text: as before


def test_a_collected_reply_cut_off_at_the_token_limit_says_so():
    job = build_job(None, {"input": "x.csv", "model": "m", "template": "{a}", "labels": ["yes", "no"]},
                    {"OPENAI_API_KEY": "k"})
    cut = Completion(replies=('{"label": "y',), finish_reasons=("length",), refusal=None, model="m",
                     response_id="r", system_fingerprint=None, usage=Usage(1, 3, 4))
    result = completion_result(job, Validator(job.output), cut, None, 1, None)
    assert result.error_type == "invalid_output" and "raise max_completion_tokens" in result.error_message
    whole = completion_result(job, Validator(job.output), Completion(
        replies=('{"label": "maybe"}',), finish_reasons=("stop",), refusal=None, model="m", response_id="r",
        system_fingerprint=None, usage=Usage(1, 3, 4)), None, 1, None)
    assert "max_completion_tokens" not in whole.error_message
