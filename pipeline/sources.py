"""Reading the input table — CSV, Parquet or JSONL, chosen by extension — in record batches.

Nothing is ever loaded whole, and batches are bounded in bytes as well as rows (a table of 100 KB
documents is read a few MB at a time). :func:`open_source` makes one streaming pass over CSV and JSONL
files before any request is sent: it counts the rows (for progress and ETA) and surfaces unreadable
lines early. Parquet needs no pass: its footer has the schema and row count.

CSV cells come back as the same text. A column is typed only where that loses nothing, judged over
the *whole* file: ``int64`` when every non-empty cell is an integer written the way it prints (no
leading zero or plus sign, within 64 bits: ``00501``, ``+4915112345678`` and 23-digit order numbers
stay text), ``float64`` when every cell is a decimal fraction that is the shortest text of its float
(``2.5``, ``-0.125``; not ``2.50``, ``3.0`` or ``1e-05``, which Python and Arrow print differently), else
text (``true``/``false`` included). Only empty cells are null, unless
``null_values`` names more markers (``NA``, ``null``, …). ``encoding`` decodes CSV and JSONL (UTF-8 by
default); a byte that does not decode is an error naming its line.

Supported: ``.csv``, ``.tsv``, ``.parquet``/``.pq``, ``.jsonl``/``.ndjson``; CSV and JSONL may be
compressed (``.gz``, ``.bz2``, ``.zst``). An empty JSONL file is an empty table, like a header-only CSV.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .errors import InputError

BLOCK_BYTES = 1 << 20  # CSV/JSONL read size; a longer row gets blocks 8x larger, up to:
MAX_BLOCK_BYTES = 64 << 20
BATCH_BYTES = 8 << 20  # most bytes of input a batch holds (at least one row)
PARQUET_BATCH_ROWS = 65536
_COMPRESSED = (".gz", ".bz2", ".zst")
_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".ndjson": "jsonl"}
_INTEGER = r"^(0|-?[1-9][0-9]{0,18})$"  # the text str(int) gives; int64 has at most 19 digits
# a decimal fraction without a trailing zero or exponent, which Python, pandas and Arrow all print
# back the same way (Python shows 3.0 where Arrow shows 3); checked exactly in _lossless
_FLOAT = r"^-?(0|[1-9][0-9]*)\.[0-9]*[1-9]$"
_UTF8 = "utf8"  # pyarrow's name: any other encoding is transcoded


@dataclass(frozen=True)
class Source:
    """An opened input: its path, format, schema and row count, and how its text is read."""

    path: Path
    format: str
    schema: pa.Schema
    num_rows: int
    _csv_types: dict[str, pa.DataType] | None = None
    _json_schema: pa.Schema | None = None
    encoding: str = _UTF8
    null_values: tuple[str, ...] = ()
    block_bytes: int = BLOCK_BYTES

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def with_text_columns(self, names) -> "Source":
        """An input with no rows and no columns (an empty JSONL file) given these text columns, as a
        header-only CSV would have: the job's columns exist, with nothing in them."""
        if self.num_rows or self.columns:
            return self
        return replace(self, schema=pa.schema([pa.field(n, pa.string()) for n in dict.fromkeys(names)]))

    def batches(self, max_rows: int, max_bytes: int = BATCH_BYTES) -> Iterator[pa.RecordBatch]:
        """Yield record batches of at most ``max_rows`` rows and about ``max_bytes``, in input order."""
        try:
            for batch in self._raw_batches(max_bytes):
                step = _rows_within(batch, max_rows, max_bytes)
                for offset in range(0, batch.num_rows, step):
                    yield batch.slice(offset, step)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise _read_error(self.path, self.encoding, exc) from exc

    def digest(self) -> str:
        """The input's part of a job's fingerprint: a digest of the file's bytes."""
        return file_digest(self.path)

    def _raw_batches(self, max_bytes: int) -> Iterator[pa.RecordBatch]:
        if self.num_rows == 0:  # nothing to read (and an empty JSONL file has nothing Arrow can open)
            return
        if self.format == "parquet":
            parquet = pq.ParquetFile(self.path, pre_buffer=False, buffer_size=BLOCK_BYTES)  # pages, not row groups
            yield from parquet.iter_batches(batch_size=_parquet_batch_rows(parquet, max_bytes))
        elif self.format == "csv":
            yield from _open_csv(self.path, self._csv_types, self.encoding, self.null_values, self.block_bytes)
        else:
            yield from _open_jsonl(self.path, self.encoding, self.block_bytes, self._json_schema)


def _rows_within(batch: pa.RecordBatch, max_rows: int, max_bytes: int) -> int:
    """Rows per slice so that a slice holds at most ``max_rows`` rows and about ``max_bytes``."""
    if not batch.num_rows:
        return max(max_rows, 1)
    row_bytes = batch.nbytes / batch.num_rows
    return max(1, min(max_rows, int(max_bytes // row_bytes) if row_bytes else max_rows))


def _parquet_batch_rows(parquet: pq.ParquetFile, max_bytes: int) -> int:
    """Rows per Parquet read so that a batch is about ``max_bytes`` uncompressed."""
    meta = parquet.metadata
    row_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / max(meta.num_rows, 1)
    return max(1, min(PARQUET_BATCH_ROWS, int(max_bytes // row_bytes) if row_bytes else PARQUET_BATCH_ROWS))


def file_digest(path: Path) -> str:
    """A hex digest of the file's bytes: the input's part of a job's fingerprint."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(BLOCK_BYTES):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read input {path}: {exc.strerror}") from exc
    return digest.hexdigest()


def input_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputError(f"{path}: cannot tell the input format from its name; use one of "
                         + ", ".join(sorted(_FORMATS)))
    return fmt


def open_source(path: Path, *, encoding: str = "utf-8", null_values: tuple[str, ...] = ()) -> Source:
    """Open and check the input; raise :class:`InputError` saying what and where on any problem.

    ``encoding`` is the text encoding of a CSV or JSONL file; ``null_values`` are the CSV cell texts
    read as null besides the empty cell.
    """
    fmt = input_format(path)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    encoding = _arrow_encoding(encoding)
    try:
        if fmt == "parquet":
            meta = pq.ParquetFile(path)
            source = Source(path, fmt, meta.schema_arrow, meta.metadata.num_rows)
        else:
            source = _scan_text(path, fmt, encoding, tuple(null_values))
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise _read_error(path, encoding, exc, f"cannot read {fmt} input") from exc
    duplicated = {n for n in source.schema.names if source.schema.names.count(n) > 1}
    if duplicated:
        raise InputError(f"{path}: duplicate column name(s): {', '.join(sorted(duplicated))}")
    return source


def _arrow_encoding(encoding: str) -> str:
    try:
        name = codecs.lookup(encoding).name
    except LookupError as exc:
        raise InputError(f"unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from exc
    return _UTF8 if name == "utf-8" else name


def _read_error(path: Path, encoding: str, exc: BaseException, what: str = "cannot read input") -> InputError:
    """The error for an unreadable input: the line of a byte that does not decode, else Arrow's words."""
    line = _undecodable_line(path, encoding)
    if line is not None:
        name = "UTF-8" if encoding == _UTF8 else encoding
        return InputError(f"{path}: line {line} is not valid {name} text; if the file is in another "
                          "encoding, name it with --encoding (e.g. --encoding latin-1)")
    return InputError(f"{path}: {what}: {exc}")


def _undecodable_line(path: Path, encoding: str) -> int | None:
    """The 1-based line holding the first byte that does not decode, or None when all of it does."""
    decoder = codecs.getincrementaldecoder("utf-8" if encoding == _UTF8 else encoding)()
    line = 1
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            while chunk := stream.read(BLOCK_BYTES):
                try:
                    line += decoder.decode(chunk).count("\n")
                except UnicodeDecodeError as exc:
                    return line + chunk[:exc.start].count(b"\n")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return line
    except (pa.ArrowException, OSError):
        return None
    return None


def _text_stream(path: Path, encoding: str):
    """The file's bytes as UTF-8, decompressed by extension."""
    stream = pa.input_stream(str(path), compression="detect")
    return stream if encoding == _UTF8 else pa.transcoding_input_stream(stream, encoding, _UTF8)


def _scan_text(path: Path, fmt: str, encoding: str, null_values: tuple[str, ...]) -> Source:
    """Scan a CSV or JSONL file; when a row is longer than a block (a document of megabytes), Arrow
    cannot read it, so the file is scanned again with blocks 8 times larger, up to MAX_BLOCK_BYTES."""
    block = BLOCK_BYTES
    while True:
        try:
            if fmt == "csv":
                return _scan_csv(path, encoding, null_values, block)
            return _scan_jsonl(path, encoding, block)
        except pa.ArrowInvalid:
            if block >= MAX_BLOCK_BYTES or _undecodable_line(path, encoding) is not None:
                raise
            block *= 8


def _open_csv(path: Path, types: dict[str, pa.DataType] | None, encoding: str,
              null_values: tuple[str, ...], block_bytes: int) -> pacsv.CSVStreamingReader:
    delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    return pacsv.open_csv(
        _text_stream(path, encoding),
        read_options=pacsv.ReadOptions(block_size=block_bytes),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=types or {}, null_values=["", *null_values],
                                             strings_can_be_null=True))


def _scan_csv(path: Path, encoding: str, null_values: tuple[str, ...], block_bytes: int) -> Source:
    if _blank(path):  # an empty file: no header, no rows (like a header-only file)
        return Source(path, "csv", pa.schema([]), 0, {}, encoding=encoding, null_values=null_values)
    names = _open_csv(path, None, encoding, null_values, block_bytes).schema.names
    as_text = {name: pa.string() for name in names}
    candidates = {name: [pa.int64(), pa.float64()] for name in names}
    seen_value = dict.fromkeys(names, False)
    rows = 0
    for batch in _open_csv(path, as_text, encoding, null_values, block_bytes):
        rows += batch.num_rows
        for name, column in zip(names, batch.columns):
            if candidates[name] and column.null_count < len(column):
                seen_value[name] = True
                cells = column.drop_null()
                candidates[name] = [t for t in candidates[name] if _lossless(cells, t)]
    types = {n: (candidates[n][0] if seen_value[n] and candidates[n] else pa.string()) for n in names}
    schema = pa.schema([pa.field(n, types[n]) for n in names])
    return Source(path, "csv", schema, rows, types, encoding=encoding, null_values=null_values, block_bytes=block_bytes)


def _lossless(cells: pa.Array, target: pa.DataType) -> bool:
    """True when every cell is exactly the text its value as ``target`` prints as."""
    import pyarrow.compute as pc  # only CSV typing needs it (its import costs a tenth of a second)

    pattern = _INTEGER if target == pa.int64() else _FLOAT
    if not pc.all(pc.match_substring_regex(cells, pattern)).as_py():
        return False
    if target == pa.float64():
        return all(repr(float(cell)) == cell for cell in cells.to_pylist())
    try:
        pc.cast(cells, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False  # beyond int64
    return True


def _open_jsonl(path: Path, encoding: str, block_bytes: int,
                schema: pa.Schema | None = None) -> pajson.JSONStreamingReader:
    return pajson.open_json(_text_stream(path, encoding), read_options=pajson.ReadOptions(block_size=block_bytes),
                            parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer"))


def _scan_jsonl(path: Path, encoding: str, block_bytes: int) -> Source:
    if _blank(path):
        return Source(path, "jsonl", pa.schema([]), 0, encoding=encoding)
    # Arrow reads JSON strings that look like times as timestamps: read them as the strings they are
    inferred = _open_jsonl(path, encoding, block_bytes).schema
    textual = pa.schema([f.with_type(_timestamps_as_text(f.type)) for f in inferred])
    explicit = textual if textual != inferred else None
    reader = _open_jsonl(path, encoding, block_bytes, explicit)
    rows = 0
    for batch in reader:
        batch.validate(full=True)  # Arrow's JSON parser lets invalid UTF-8 through; this does not
        rows += batch.num_rows
    return Source(path, "jsonl", reader.schema, rows, _json_schema=explicit, encoding=encoding,
                  block_bytes=block_bytes)


def _timestamps_as_text(dtype: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(dtype):
        return pa.string()
    if pa.types.is_list(dtype):
        return pa.list_(dtype.value_field.with_type(_timestamps_as_text(dtype.value_type)))
    if pa.types.is_struct(dtype):
        return pa.struct([f.with_type(_timestamps_as_text(f.type)) for f in dtype])
    return dtype


def _blank(path: Path) -> bool:
    """True when the (decompressed) file holds nothing but whitespace."""
    with pa.input_stream(str(path), compression="detect") as stream:
        while chunk := stream.read(BLOCK_BYTES):
            if chunk.strip():
                return False
    return True


@dataclass(frozen=True)
class TableSource:
    """An input already in memory: a pyarrow Table (the Python API's DataFrames, tables, lists).

    It offers what :class:`Source` offers (schema, row count, batches, digest); its batches are the
    table's own arrays, so every column keeps its exact type. Use :func:`table_source`.
    """

    table: pa.Table
    name: str = "<table>"

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @property
    def columns(self) -> list[str]:
        return list(self.table.schema.names)

    def batches(self, max_rows: int, max_bytes: int = BATCH_BYTES) -> Iterator[pa.RecordBatch]:
        """The table's own record batches, sliced as :meth:`Source.batches` slices."""
        for batch in self.table.to_batches():
            step = _rows_within(batch, max_rows, max_bytes)
            for offset in range(0, batch.num_rows, step):
                yield batch.slice(offset, step)

    def digest(self) -> str:
        """A hex digest of the table's schema and values (Arrow IPC stream bytes), computed once."""
        if "_digest" not in self.__dict__:
            digest = hashlib.blake2b(digest_size=16)
            with pa.ipc.new_stream(pa.PythonFile(_Hashing(digest), mode="w"), self.table.schema) as writer:
                for batch in self.table.to_batches(max_chunksize=65536):
                    writer.write_batch(batch)
            object.__setattr__(self, "_digest", digest.hexdigest())
        return self.__dict__["_digest"]


class _Hashing:
    """A write-only file object that feeds a hash."""

    def __init__(self, digest) -> None:
        self._digest = digest
        self.closed = False

    def write(self, data) -> int:
        self._digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def table_source(table: pa.Table, name: str = "<table>") -> TableSource:
    """Check an in-memory table as :func:`open_source` checks a file."""
    duplicated = {n for n in table.schema.names if table.schema.names.count(n) > 1}
    if duplicated:
        raise InputError(f"{name}: duplicate column name(s): {', '.join(sorted(duplicated))}")
    return TableSource(table, name)
