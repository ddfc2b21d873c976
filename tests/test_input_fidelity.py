"""Input columns come out as they went in: the real CLI against tests/fakeapi.py, compared cell by cell.

* an awkward CSV (zip codes, 23-digit order numbers, phone numbers, ``NA``/``null``/``N/A`` texts):
  every cell comes back as the same text, and every row is sent with that text in its prompt;
* ``--null-values`` for those who want markers read as null; ``--encoding`` for a latin-1 file; an
  invalid UTF-8 byte is an error naming its line, and nothing is sent;
* a Parquet input with timestamps (unit, time zone), date32, dictionary, large_string, decimal128,
  int8, list and struct columns keeps each column's exact Arrow type and values; so does JSONL;
* an empty JSONL file runs like a header-only CSV;
* ``messages_column`` renders ``{column}`` placeholders in ``system``.
"""

from __future__ import annotations

import csv
import datetime
import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

MODEL = "gpt-4o-mini"
FAST = ("--backoff-base", "0.01", "--backoff-max", "0.05")

AWKWARD = [  # every cell as the file holds it
    ["id", "zip", "order_no", "phone", "review", "score", "flag", "price"],
    ["1", "00501", "12345678901234567890123", "+4915112345678", "NA", "2.5", "true", "10"],
    ["2", "10001", "98765432109876543210987", "+14155550100", "null", "-0.125", "false", "12.50"],
    ["3", "02134", "00000000000000000000001", "0049301234567", "N/A", "0.1", "TRUE", "1e3"],
    ["4", "99501", "1", "+447911123456", "Great, \"quoted\"\nand multi-line", "4.75", "no", "3.0"],
    ["5", "", "", "", "", "", "", ""],
]


def run_args(fake, inp: Path, out: Path, *extra: object) -> list:
    return ["run", "--input", inp, "--output", out, "--model", MODEL, "--base-url", fake.base_url, *FAST, *extra]


def write_awkward(path: Path, encoding: str = "utf-8", rows=AWKWARD) -> Path:
    with open(path, "w", newline="", encoding=encoding) as handle:
        csv.writer(handle).writerows(rows)
    return path


def as_text(value) -> str:
    """A cell as text, the way Python prints it ('' for null)."""
    return "" if value is None else str(value)


def test_awkward_csv_cells_come_back_as_the_same_text_and_every_row_is_sent(cli, fake, tmp_path):
    inp, out = write_awkward(tmp_path / "orders.csv"), tmp_path / "out.parquet"
    template = "{zip}|{order_no}|{phone}|{review}|{score}|{flag}|{price}"
    proc = cli.run(*run_args(fake, inp, out, "--template", template, "--quiet"))
    assert proc.returncode == 0, proc.stderr
    header, *cells = AWKWARD
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == len(cells)
    for row, expected in zip(rows, cells):
        assert [as_text(row[name]) for name in header] == expected  # cell by cell, the same text
    types = {f.name: f.type for f in pq.read_schema(out)}
    assert types["id"] == pa.int64() and types["score"] == pa.float64()  # typed: nothing lost
    assert all(types[n] == pa.string() for n in ("zip", "order_no", "phone", "review", "flag", "price"))
    assert [r["review"] for r in rows[:3]] == ["NA", "null", "N/A"]  # text, not null
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["skipped"]  # NA/null/N/A rows are sent
    sent = {entry["prompt"] for entry in fake.completed()}
    assert sent == {"|".join(c[1:]) for c in cells[:4]}  # the prompts hold the very same text


def test_null_values_flag_reads_the_markers_as_null(cli, fake, tmp_path):
    inp, out = write_awkward(tmp_path / "orders.csv"), tmp_path / "out.parquet"
    proc = cli.run(*run_args(fake, inp, out, "--template", "{review}", "--null-values", "NA,null",
                             "--null-values", "N/A", "--quiet"))
    assert proc.returncode == 0, proc.stderr
    rows = pq.read_table(out).to_pylist()
    assert [r["review"] for r in rows[:3]] == [None, None, None]
    assert [r["status"] for r in rows] == ["skipped"] * 3 + ["ok", "skipped"]
    assert rows[0]["zip"] == "00501"  # the markers change nothing else


def test_null_values_job_key(cli, fake, tmp_path):
    inp, out = write_awkward(tmp_path / "orders.csv"), tmp_path / "out.parquet"
    job = tmp_path / "job.toml"
    job.write_text(f'input = "orders.csv"\noutput = "out.parquet"\nmodel = "{MODEL}"\ntemplate = "{{review}}"\n'
                   f'base_url = "{fake.base_url}"\nnull_values = ["null"]\nquiet = true\n')
    proc = cli.run("run", job)
    assert proc.returncode == 0, proc.stderr
    assert [r["review"] for r in pq.read_table(out).to_pylist()][:3] == ["NA", None, "N/A"]


def test_latin1_csv_with_encoding(cli, fake, tmp_path):
    rows = [["name", "text"], ["José", "Crème brûlée, très bon"], ["Jürgen", "Größe: ½ Liter"]]
    inp, out = write_awkward(tmp_path / "latin.csv", "latin-1", rows), tmp_path / "out.parquet"
    refused = cli.run(*run_args(fake, inp, out, "--template", "{name}: {text}", "--quiet"))
    assert refused.returncode == 2 and "line 2" in refused.stderr and "--encoding" in refused.stderr
    assert not fake.requests
    proc = cli.run(*run_args(fake, inp, out, "--template", "{name}: {text}", "--encoding", "latin-1", "--quiet"))
    assert proc.returncode == 0, proc.stderr
    assert [[r["name"], r["text"]] for r in pq.read_table(out).to_pylist()] == rows[1:]
    assert sorted(e["prompt"] for e in fake.completed()) == sorted(f"{n}: {t}" for n, t in rows[1:])


@pytest.mark.parametrize("name, data, line", [
    ("bad.csv", b'id,text\n1,ok\n2,"two\nlines"\n3,caf\xe9\n4,fine\n', 5),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', 2),
])
def test_invalid_utf8_is_an_error_naming_the_line(cli, fake, tmp_path, name, data, line):
    inp = tmp_path / name
    inp.write_bytes(data)
    proc = cli.run(*run_args(fake, inp, tmp_path / "out.parquet", "--template", "{text}"))
    assert proc.returncode == 2
    assert f"line {line} is not valid UTF-8" in proc.stderr and str(inp) in proc.stderr
    assert "Traceback" not in proc.stderr and not fake.requests


def test_unknown_encoding_is_a_job_error(cli, fake, tmp_path):
    inp = write_awkward(tmp_path / "orders.csv")
    proc = cli.run(*run_args(fake, inp, tmp_path / "out.parquet", "--template", "{review}", "--encoding", "klingon"))
    assert proc.returncode == 2 and "encoding" in proc.stderr and "klingon" in proc.stderr


BERLIN = "Europe/Berlin"


def typed_table() -> pa.Table:
    """One column of each awkward Arrow type (what a Parquet file can hold: seconds read back as ms)."""
    stamp = datetime.datetime(2024, 3, 31, 1, 30, 15, 123456)
    return pa.table({
        "text": pa.array(["first", "second", None]),
        "ts_ms_tz": pa.array([stamp, None, stamp], pa.timestamp("ms", tz=BERLIN)),
        "ts_us": pa.array([stamp, stamp, None], pa.timestamp("us")),
        "ts_ns_tz": pa.array([1, 1_711_848_615_123_456_789, None], pa.timestamp("ns", tz="America/New_York")),
        "day": pa.array([datetime.date(2024, 2, 29), None, datetime.date(1970, 1, 1)], pa.date32()),
        "category": pa.array(["a", "b", "a"]).dictionary_encode(),
        "long_text": pa.array(["x" * 10, "", None], pa.large_string()),
        "amount": pa.array([Decimal("12345678901234.5678"), Decimal("-0.0001"), None], pa.decimal128(20, 4)),
        "small": pa.array([-128, 127, None], pa.int8()),
        "tags": pa.array([["a", "b"], [], None], pa.list_(pa.string())),
        "point": pa.array([{"x": 1, "label": "p"}, None, {"x": None, "label": None}],
                          pa.struct([("x", pa.int32()), ("label", pa.string())])),
    })


def test_parquet_input_keeps_every_arrow_type_and_value(cli, fake, tmp_path):
    inp, out = tmp_path / "typed.parquet", tmp_path / "out.parquet"
    pq.write_table(typed_table(), inp)
    proc = cli.run(*run_args(fake, inp, out, "--template", "{text} {day} {amount} {category}", "--quiet"))
    assert proc.returncode == 0, proc.stderr
    expected = pq.read_table(inp)
    names = expected.column_names
    table = pq.read_table(out)
    assert table.schema.names[:len(names)] == names
    for name in names:
        assert table.schema.field(name).type == expected.schema.field(name).type, name
        assert table.column(name).combine_chunks().equals(expected.column(name).combine_chunks()), name
    assert table.select(names).to_pylist() == expected.to_pylist()
    assert json.loads(table.schema.metadata[b"chatbatch.summary"])["rows"] == 3  # the summary still shows


def test_jsonl_input_keeps_its_values(cli, fake, tmp_path):
    lines = [
        {"id": 1, "text": "first", "when": "2024-03-31 01:30:15", "tags": ["a"], "meta": {"k": 1, "s": "00501"},
         "score": 2.5, "flag": True, "zip": "00501"},
        {"id": 2, "text": "second", "when": "2024-04-01T10:00:00", "tags": [], "meta": {"k": 2, "s": "x"},
         "score": -1.25, "flag": False, "zip": "10001"},
    ]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    inp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = cli.run(*run_args(fake, inp, out, "--template", "{text} at {when}", "--quiet"))
    assert proc.returncode == 0, proc.stderr
    rows = pq.read_table(out).to_pylist()
    assert [{k: row[k] for k in lines[0]} for row in rows] == lines  # date-like strings stay strings
    assert sorted(e["prompt"] for e in fake.completed()) == ["first at 2024-03-31 01:30:15",
                                                            "second at 2024-04-01T10:00:00"]


@pytest.mark.parametrize("name, content", [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("header.csv", "text\n")])
def test_empty_jsonl_runs_like_a_header_only_csv(cli, fake, tmp_path, name, content):
    inp, out = tmp_path / name, tmp_path / "out.parquet"
    inp.write_text(content)
    proc = cli.run(*run_args(fake, inp, out, "--template", "{text}", "--quiet"))
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.column_names[0] == "text" and "status" in table.column_names
    assert not fake.requests


def test_messages_column_renders_system_placeholders(cli, fake, tmp_path):
    inp, out = tmp_path / "chats.jsonl", tmp_path / "out.parquet"
    inp.write_text(json.dumps({"lang": "German", "messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    proc = cli.run(*run_args(fake, inp, out, "--messages-column", "messages",
                             "--system", "Answer in {lang}. Keep {\"json\": true} as is.", "--quiet"))
    assert proc.returncode == 0, proc.stderr
    (entry,) = fake.completed()
    assert entry["body"]["messages"] == [
        {"role": "system", "content": 'Answer in German. Keep {"json": true} as is.'},
        {"role": "user", "content": "Hi"}]


def test_estimate_reads_an_earlier_output_through_the_column_prefix(cli, fake, tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    inp.write_text("status,text\nnew,hello there\nold,general kenobi\n")  # 'status' clashes: a prefix is needed
    args = run_args(fake, inp, out, "--template", "{text}", "--column-prefix", "llm_",
                    "--max-completion-tokens", "50", "--quiet")
    assert cli.run(*args).returncode == 0
    rows = pq.read_table(out).to_pylist()
    per_row = sum(r["llm_completion_tokens"] for r in rows) / len(rows)
    estimate = cli.run("estimate", *args[1:], "--json")
    assert estimate.returncode == 0, estimate.stderr
    figures = json.loads(estimate.stdout)
    assert figures["completion_tokens_likely_source"] == str(out)
    assert figures["completion_tokens_likely"] == round(per_row * 2)
