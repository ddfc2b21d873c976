"""Reading CSV/Parquet/JSONL in batches, and writing the output schema safely."""

import json

import pyarrow as pa
import pyarrow.compute as pc
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
                                      latency_s=0.5, finished_at=1764567890.1234)], 2)
    values = [a.to_pylist()[0] for a in arrays]
    finished = values.pop(19)
    assert values == ["a", "stop", None, "ok", None, None, 200, "m", "id1", "fp", 10, 2, 12, 4, 1, None,
                      0.5, 1, False, ["a", "b"], ["stop", "length"]]
    assert json.dumps(values)  # plain values, nothing exotic
    assert finished.isoformat() == "2025-12-01T05:44:50.123000+00:00"  # UTC, to the millisecond
    assert arrays[19].type == pa.timestamp("ms", tz="UTC")


@pytest.mark.parametrize("cells, expected", [
    (["0", "-7", "9223372036854775807", "-9223372036854775808"], pa.int64()),
    (["1", "00501"], pa.string()),  # a leading zero would be lost
    (["1", "+2"], pa.string()),  # so would a plus sign
    (["1", "9223372036854775808"], pa.string()),  # beyond int64
    (["1", "-0"], pa.string()),
    (["2.5", "-0.125", "0.1", "0.30000000000000004", "123456.789"], pa.float64()),  # each prints back the same
    (["2.5", "2.50"], pa.string()),
    (["2.5", "1"], pa.string()),  # 1 would print as 1.0
    (["2.5", "3.0"], pa.string()),  # Arrow prints 3.0 as 3
    (["2.5", "1e-05"], pa.string()),  # and 1e-05 as 0.00001
    (["2.5", "12345678901234567.5"], pa.string()),  # beyond a float's precision
    (["0.1", "0.30000000000000004", "nan"], pa.string()),
    (["true", "false"], pa.string()),
])
def test_csv_columns_are_typed_only_when_every_cell_prints_back_the_same(tmp_path, cells, expected):
    path = tmp_path / "in.csv"
    path.write_text("x\n" + "\n".join(cells) + "\n\n")
    source = open_source(path)
    assert source.schema.field("x").type == expected
    values = pa.Table.from_batches(list(source.batches(100))).column("x").to_pylist()
    assert ["" if v is None else str(v) for v in values] == cells
    as_arrow_text = pc.cast(pa.Table.from_batches(list(source.batches(100))).column("x"), pa.string())
    assert [v or "" for v in as_arrow_text.to_pylist()] == cells  # printed by Arrow, the same too


def test_csv_null_values_and_encoding(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes("text,n\nNA,1\nnull,NA\nCrème,\n".encode("cp1252"))
    with pytest.raises(InputError, match=r"line 4 is not valid UTF-8.*--encoding"):
        open_source(path)
    source = open_source(path, encoding="cp1252")
    assert pa.Table.from_batches(list(source.batches(10))).to_pylist() == [
        {"text": "NA", "n": "1"}, {"text": "null", "n": "NA"}, {"text": "Crème", "n": None}]
    source = open_source(path, encoding="cp1252", null_values=("NA", "null"))
    assert source.schema.field("n").type == pa.int64()
    assert pa.Table.from_batches(list(source.batches(10))).to_pylist() == [
        {"text": None, "n": 1}, {"text": None, "n": None}, {"text": "Crème", "n": None}]
    with pytest.raises(InputError, match="unknown encoding"):
        open_source(path, encoding="nope")


def test_an_empty_jsonl_is_an_empty_table(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n")
    source = open_source(path)
    assert (source.num_rows, source.columns, list(source.batches(10))) == (0, [], [])
    assert source.with_text_columns(["text", "text", "id"]).schema == pa.schema([("text", pa.string()),
                                                                                 ("id", pa.string())])


@pytest.mark.parametrize("name", ["in.parquet", "in.csv", "in.jsonl"])
def test_batches_are_bounded_in_bytes_as_well_as_rows(tmp_path, name):
    docs = [f"{i:04d} " + "x" * 10_000 for i in range(300)]  # 3 MB in all
    path = tmp_path / name
    table = pa.table({"id": list(range(300)), "doc": docs})
    if name.endswith(".parquet"):
        pq.write_table(table, path)  # one row group
    else:
        path.write_text("id,doc\n" + "".join(f"{i},{d}\n" for i, d in enumerate(docs)) if name.endswith(".csv")
                        else "".join(json.dumps({"id": i, "doc": d}) + "\n" for i, d in enumerate(docs)))
    batches = list(open_source(path).batches(1024, 50_000))
    assert max(b.num_rows for b in batches) <= 5 and max(b.nbytes for b in batches) <= 60_000
    assert pa.Table.from_batches(batches).column("doc").to_pylist() == docs


def test_sink_row_groups_are_bounded_in_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.sinks.ROW_GROUP_BYTES", 100_000)
    schema = pa.schema([("doc", pa.string())])
    sink = ParquetSink(tmp_path / "out.parquet", output_schema(schema, "", 1), 1)
    for i in range(10):
        sink.write(pa.record_batch([pa.array([f"{i}" + "y" * 30_000] * 2)], schema=schema),
                   [RowResult(status="skipped")] * 2)
    sink.commit({b"chatbatch.summary": b"{}"})
    meta = pq.read_metadata(tmp_path / "out.parquet")
    assert meta.num_rows == 20 and meta.num_row_groups >= 5  # a row group per ~100 KB, not one for all


def test_output_keeps_exact_arrow_types_and_shows_the_summary(tmp_path):
    schema = pa.schema([("when", pa.timestamp("us", tz="Europe/Berlin")), ("cat", pa.dictionary(pa.int8(), pa.string())),
                        ("big", pa.large_string()), ("tiny", pa.int8())], metadata={b"origin": b"test"})
    batch = pa.record_batch([pa.array([0], schema.field("when").type), pa.array(["a"]).dictionary_encode().cast(schema.field("cat").type),
                             pa.array(["z"], pa.large_string()), pa.array([-1], pa.int8())], schema=schema)
    sink = ParquetSink(tmp_path / "out.parquet", output_schema(schema, "", 1), 1)
    sink.write(batch, [RowResult(status="skipped")])
    sink.commit({b"chatbatch.summary": b'{"rows": 1}'})
    for read in (pq.read_schema, lambda p: pq.read_table(p).schema):
        written = read(tmp_path / "out.parquet")
        assert [written.field(n).type for n in schema.names] == list(schema.types)
        assert written.metadata[b"chatbatch.summary"] == b'{"rows": 1}' and written.metadata[b"origin"] == b"test"
    assert pq.read_table(tmp_path / "out.parquet").select(schema.names).to_batches()[0].equals(batch)


@pytest.mark.parametrize("name", ["in.csv", "in.jsonl"])
def test_a_row_longer_than_a_read_block_is_read(tmp_path, name, monkeypatch):
    monkeypatch.setattr("pipeline.sources.BLOCK_BYTES", 1000)  # a 20 KB document spans blocks
    docs = ["short", "x" * 20_000, "end"]
    path = tmp_path / name
    path.write_text("doc\n" + "\n".join(docs) + "\n" if name.endswith(".csv")
                    else "".join(json.dumps({"doc": d}) + "\n" for d in docs))
    source = open_source(path)
    assert pa.Table.from_batches(list(source.batches(10))).column("doc").to_pylist() == docs
def test_rows_sharing_one_result_are_written_like_rows_with_their_own():
    # a stopped run settles the rest of its input with one shared not_sent result (the fast path)
    from pipeline.records import not_sent_result
    from pipeline.sinks import result_arrays
    shared = not_sent_result("not sent: the run stopped (terminated (SIGTERM))")
    fast = result_arrays([shared] * 5, 1)
    slow = result_arrays([not_sent_result(shared.error_message) for _ in range(5)], 1)
    assert [a.to_pylist() for a in fast] == [a.to_pylist() for a in slow]
    assert [a.type for a in fast] == [a.type for a in slow]
