"""Reading the input table — CSV, Parquet or JSONL, chosen by extension — in record batches.

Nothing is ever loaded whole. :func:`open_source` makes one streaming pass over CSV and JSONL files
before any request is sent: it counts the rows (for progress and ETA), surfaces unreadable lines
early, and for CSV infers each column's type over the *whole* file (int64, float64, bool, else
string), so a column that looks numeric in the first block and has text later cannot fail mid-run.
Parquet needs no pass: its footer has the schema and row count.

Supported: ``.csv``, ``.tsv``, ``.parquet``/``.pq``, ``.jsonl``/``.ndjson``; CSV and JSONL may be
compressed (``.gz``, ``.bz2``, ``.zst``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .errors import InputError

BLOCK_BYTES = 1 << 20
_COMPRESSED = (".gz", ".bz2", ".zst")
_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".ndjson": "jsonl"}
_CANDIDATES = (pa.int64(), pa.float64(), pa.bool_())


@dataclass(frozen=True)
class Source:
    """An opened input: its path, format, schema and row count."""

    path: Path
    format: str
    schema: pa.Schema
    num_rows: int
    _csv_types: dict[str, pa.DataType] | None = None

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def batches(self, max_rows: int) -> Iterator[pa.RecordBatch]:
        """Yield record batches of at most ``max_rows`` rows, in input order."""
        try:
            for batch in self._raw_batches():
                for offset in range(0, batch.num_rows, max_rows):
                    yield batch.slice(offset, max_rows)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{self.path}: cannot read input: {exc}") from exc

    def _raw_batches(self) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=65536)
        elif self.format == "csv":
            if self.schema.names:  # an empty file has no header and no rows
                yield from _open_csv(self.path, self._csv_types)
        else:
            yield from _open_jsonl(self.path)


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


def open_source(path: Path) -> Source:
    """Open and check the input; raise :class:`InputError` saying what and where on any problem."""
    fmt = input_format(path)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    try:
        if fmt == "parquet":
            meta = pq.ParquetFile(path)
            source = Source(path, fmt, meta.schema_arrow, meta.metadata.num_rows)
        elif fmt == "csv":
            source = _scan_csv(path)
        else:
            source = _scan_jsonl(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: cannot read {fmt} input: {exc}") from exc
    duplicated = {n for n in source.schema.names if source.schema.names.count(n) > 1}
    if duplicated:
        raise InputError(f"{path}: duplicate column name(s): {', '.join(sorted(duplicated))}")
    return source


def _csv_options(path: Path, types: dict[str, pa.DataType] | None):
    delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    return dict(
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=types or {}, strings_can_be_null=True),
    )


def _open_csv(path: Path, types: dict[str, pa.DataType] | None) -> pacsv.CSVStreamingReader:
    return pacsv.open_csv(path, **_csv_options(path, types))


def _scan_csv(path: Path) -> Source:
    with pa.input_stream(path, compression="detect") as stream:
        if not stream.read(1):  # an empty file: no header, no rows (like a header-only file)
            return Source(path, "csv", pa.schema([]), 0, {})
    names = _open_csv(path, None).schema.names
    as_text = {name: pa.string() for name in names}
    candidates = {name: list(_CANDIDATES) for name in names}
    seen_value = dict.fromkeys(names, False)
    rows = 0
    for batch in _open_csv(path, as_text):
        rows += batch.num_rows
        for name, column in zip(names, batch.columns):
            if column.null_count < len(column):
                seen_value[name] = True
                candidates[name] = [t for t in candidates[name] if _casts(column, t)]
    types = {n: (candidates[n][0] if seen_value[n] and candidates[n] else pa.string()) for n in names}
    schema = pa.schema([pa.field(n, types[n]) for n in names])
    return Source(path, "csv", schema, rows, types)


def _casts(column: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _open_jsonl(path: Path) -> pajson.JSONStreamingReader:
    return pajson.open_json(path, read_options=pajson.ReadOptions(block_size=BLOCK_BYTES))


def _scan_jsonl(path: Path) -> Source:
    reader = _open_jsonl(path)
    rows = 0
    try:
        for batch in reader:
            rows += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise InputError(f"{path}: unreadable JSON after about row {rows + 1}: {exc}") from exc
    return Source(path, "jsonl", reader.schema, rows)
