"""Reading CSV/Parquet/JSONL in batches, and writing the output schema safely."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError, OutputExistsError
from pipeline.records import Completion, RowResult, Usage
from pipeline.sinks import ParquetSink, check_output, output_schema, result_arrays
from pipeline.sources import open_source


def test_csv_types_are_inferred_over_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.sources.BLOCK_BYTES", 64)  # many small blocks
    path = tmp_path / "in.csv"
    rows = ["id,code,text,score,flag"] + [f"{i},{i},t{i},{i}.5,true" for i in range(50)] + [
        '50,A7,"multi\nline, ""quoted""",,false']
    path.write_text("\n".join(rows) + "\n")
    source = open_source(path)
    assert source.num_rows == 51
    types = {f.name: f.type for f in source.schema}
    assert types == {"id": pa.int64(), "code": pa.string(), "text": pa.string(), "score": pa.float64(),
                     "flag": pa.string()}  # true/false stay the text they are
    table = pa.Table.from_batches(list(source.batches(7)))
    assert table.num_rows == 51 and max(b.num_rows for b in source.batches(7)) <= 7
    assert table.column("code").to_pylist()[-1] == "A7"
    assert table.column("text").to_pylist()[-1] == 'multi\nline, "quoted"'
    assert table.column("score").to_pylist()[-1] is None


def test_parquet_and_jsonl(tmp_path):
    pq.write_table(pa.table({"a": [1, 2, 3]}), tmp_path / "in.parquet")
    assert open_source(tmp_path / "in.parquet").num_rows == 3
    (tmp_path / "in.jsonl").write_text('{"a": 1, "m": [{"role": "user", "content": "x"}]}\n{"a": 2, "m": []}\n')
    source = open_source(tmp_path / "in.jsonl")
    assert source.num_rows == 2 and source.columns == ["a", "m"]


@pytest.mark.parametrize("name, content, words", [
    ("in.xlsx", b"x", "cannot tell the input format"),
    ("missing.csv", None, "not found"),
    ("bad.parquet", b"not parquet at all", "cannot read parquet"),
    ("bad.jsonl", b'{"a": 1}\n{"a": \n', "bad.jsonl"),
    ("dup.csv", b"a,a\n1,2\n", "duplicate column"),
])
def test_unreadable_inputs_say_what_and_where(tmp_path, name, content, words):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=words):
        open_source(path)


def test_output_schema_is_fixed_and_clashes_are_named():
    schema = output_schema(pa.schema([("review", pa.string())]), "", 2)
    assert schema.field("prompt_tokens").type == pa.int64()
    assert schema.field("replies").type == pa.list_(pa.string())
    with pytest.raises(InputError, match="status.*column_prefix"):
        output_schema(pa.schema([("status", pa.string())]), "", 1)
    assert "llm_status" in output_schema(pa.schema([("status", pa.string())]), "llm_", 1).names


def test_all_failed_rows_keep_integer_columns(tmp_path):
    input_schema = pa.schema([("x", pa.string())])
    sink = ParquetSink(tmp_path / "out.parquet", output_schema(input_schema, "", 1), 1)
    batch = pa.record_batch([pa.array(["a", "b"])], schema=input_schema)
    sink.write(batch, [RowResult(status="error", error_type="server_error", attempts=3)] * 2)
    assert not (tmp_path / "out.parquet").exists()  # only the temporary file so far
    sink.commit({b"chatbatch.summary": b"{}"})
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("prompt_tokens").type == pa.int64()
    assert table.column("attempts").to_pylist() == [3, 3]
    assert list(tmp_path.iterdir()) == [tmp_path / "out.parquet"]


def test_discard_leaves_the_previous_output_untouched(tmp_path):
    out = tmp_path / "out.parquet"
    out.write_bytes(b"previous")
    sink = ParquetSink(out, output_schema(pa.schema([("x", pa.string())]), "", 1), 1)
    sink.discard()
    assert out.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [out]


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out.parquet"
    out.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output(out, overwrite=False)
    check_output(out, overwrite=True)
    with pytest.raises(InputError, match=".parquet"):
        check_output(tmp_path / "out.csv", overwrite=True)


def test_result_arrays_carry_every_field():
    completion = Completion(("a", "b"), ("stop", "length"), None, "m", "id1", "fp",
                            Usage(10, 2, 12, 4, 1))
    arrays = result_arrays([RowResult(status="ok", attempts=1, completion=completion, http_status=200,
                                      latency_s=0.5)], 2)
    values = [a.to_pylist()[0] for a in arrays]
    assert values == ["a", "stop", None, "ok", None, None, 200, "m", "id1", "fp", 10, 2, 12, 4, 1, None,
                      0.5, 1, False, ["a", "b"], ["stop", "length"]]
    assert json.dumps(values)  # plain values, nothing exotic
