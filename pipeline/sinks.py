"""Writing the output Parquet file safely.

The output is every input column unchanged (the same Arrow type and values), in input order,
followed by the result columns of :data:`RESULT_COLUMNS` (with ``replies``/``finish_reasons`` list
columns when ``n > 1``). The schema is fixed up front, so integer columns stay integers even when
every row failed.

Rows are written batch by batch to ``.<output>.tmp-<pid>-<random>`` in the same folder — created
exclusively (``O_EXCL``: never an existing file, nor a link planted there), with the permissions the
umask gives any new file — and renamed into place only when the run has written every row: an
interrupted run never leaves a half-written file where the user expects output, and an existing
output is only replaced when overwriting was asked for. :func:`write_text_atomically` does the same
for the summary. Before the rename the file is fsynced, after it the folder: once the run reports
the output written, a power loss cannot take it back or leave it half-written.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError, OutputError, OutputExistsError
from .records import RowResult
from .structured import stored_values

RESULT_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("reply", pa.string()),
    ("finish_reason", pa.string()),
    ("refusal", pa.string()),
    ("status", pa.string()),
    ("error_type", pa.string()),
    ("error_message", pa.string()),
    ("http_status", pa.int64()),
    ("model", pa.string()),
    ("response_id", pa.string()),
    ("system_fingerprint", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("total_tokens", pa.int64()),
    ("cached_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("latency_s", pa.float64()),
    ("attempts", pa.int64()),
    ("cached", pa.bool_()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
)
LIST_COLUMNS = (("replies", pa.list_(pa.string())), ("finish_reasons", pa.list_(pa.string())))
SUMMARY_KEY = b"chatbatch.summary"
ROW_GROUP_ROWS = 65536  # rows per Parquet row group: few enough groups that the footer stays small
ROW_GROUP_BYTES = 64 << 20  # ...and at most about this many bytes buffered before a row group is written
ARROW_SCHEMA_KEY = b"ARROW:schema"


def structured_columns(spec) -> list[tuple[str, pa.DataType]]:
    """The typed columns of a job's structured output (and the label's confidence)."""
    if spec is None:
        return []
    return list(spec.fields) + ([("label_confidence", pa.float64())] if spec.confidence else [])


def result_fields(prefix: str, choices: int, spec=None) -> list[pa.Field]:
    columns = RESULT_COLUMNS + (LIST_COLUMNS if choices > 1 else ()) + tuple(structured_columns(spec))
    return [pa.field(prefix + name, dtype) for name, dtype in columns]


def output_schema(input_schema: pa.Schema, prefix: str, choices: int, spec=None) -> pa.Schema:
    """The output schema; raises InputError when an input column clashes with a result column."""
    fields = result_fields(prefix, choices, spec)
    names = [f.name for f in fields]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"output_schema property {repeated[0]!r} clashes with one of chatbatch's output "
                         "columns; rename the property or set column_prefix")
    clashes = [f.name for f in fields if f.name in input_schema.names]
    if clashes:
        raise InputError(
            f"input column(s) {', '.join(clashes)} clash with chatbatch's output columns; "
            "set column_prefix (--column-prefix llm_) to prefix the output columns"
        )
    schema = pa.schema(list(input_schema) + fields, metadata=input_schema.metadata)
    return schema.with_metadata({**(input_schema.metadata or {}), b"pandas": _pandas_metadata(schema)})


def _pandas_metadata(schema: pa.Schema) -> bytes:
    """pandas metadata so that pandas reads integer columns with nulls as Int64, not float64.

    An input's own pandas metadata (index columns, its dtypes) is kept and extended.
    """
    meta = json.loads((schema.metadata or {}).get(b"pandas", b"null")) or {
        "index_columns": [], "column_indexes": [], "columns": [],
        "creator": {"library": "chatbatch"}, "pandas_version": None}
    described = {column.get("field_name", column.get("name")) for column in meta["columns"]}
    for schema_field in schema:
        if schema_field.name not in described and pa.types.is_integer(schema_field.type):
            meta["columns"].append({"name": schema_field.name, "field_name": schema_field.name,
                                    "pandas_type": str(schema_field.type), "numpy_type": "Int64",
                                    "metadata": None})
    return json.dumps(meta).encode()


def check_output(path: Path, overwrite: bool) -> None:
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise InputError(f"output {path} must end in .parquet")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise InputError(f"output {path} is a directory")


def check_fields(spec, fields: Sequence) -> None:
    """Raise if one row's structured values do not fit their columns, as :meth:`ParquetSink.write`
    would: a row's own failure, found before it can stop the whole output."""
    for value, (_, dtype) in zip(fields, structured_columns(spec)):
        if value is not None:
            pa.array([value], type=dtype)


def result_arrays(results: Sequence[RowResult], choices: int, spec=None) -> list[pa.Array]:
    """One array per result column, in :func:`result_fields` order."""
    if len(results) > 1 and all(r is results[0] for r in results):  # one result for every row: the
        return [pa.repeat(a[0], len(results)) for a in result_arrays(results[:1], choices, spec)]  # rest of a stopped run
    arrays = _base_arrays(results, choices)
    for position, (_, dtype) in enumerate(structured_columns(spec)):
        values = [r.fields[position] if r.fields is not None and position < len(r.fields) else None
                  for r in results]
        try:
            arrays.append(pa.array(values, type=dtype))
        except (pa.ArrowException, OverflowError, UnicodeError):
            # values journaled unconverted by an older chatbatch: convert them again from the replies
            arrays.append(pa.array([_stored_value(spec, r, position) for r in results], type=dtype))
    return arrays


def _stored_value(spec, result: RowResult, position: int):
    if result.fields is None or result.completion is None:
        return None
    values = stored_values(spec, result.completion.replies[0])
    return values[position] if values is not None and position < len(values) else None


def _base_arrays(results: Sequence[RowResult], choices: int) -> list[pa.Array]:
    columns: list[list] = [[] for _ in range(len(RESULT_COLUMNS) + (2 if choices > 1 else 0))]
    for r in results:
        c = r.completion
        u = c.usage if c else None
        values = (
            c.replies[0] if c else None, c.finish_reasons[0] if c else None, c.refusal if c else None,
            r.status, r.error_type, r.error_message, r.http_status,
            c.model if c else None, c.response_id if c else None, c.system_fingerprint if c else None,
            u.prompt_tokens if u else None, u.completion_tokens if u else None,
            u.total_tokens if u else None, u.cached_tokens if u else None,
            u.reasoning_tokens if u else None,
            None if r.cost_usd is None else float(r.cost_usd), r.latency_s, r.attempts, r.cached,
            None if r.finished_at is None else int(r.finished_at * 1000),
        )
        if choices > 1:
            values += (list(c.replies) if c else None, list(c.finish_reasons) if c else None)
        for column, value in zip(columns, values):
            column.append(value)
    types = [t for _, t in RESULT_COLUMNS] + ([t for _, t in LIST_COLUMNS] if choices > 1 else [])
    return [pa.array(column, type=dtype) for column, dtype in zip(columns, types)]


class ParquetSink:
    """Streams batches into a temporary Parquet file; :meth:`commit` renames it into place."""

    def __init__(self, path: Path, schema: pa.Schema, choices: int, spec=None) -> None:
        self.path = path
        self.schema = schema
        self.choices = choices
        self.spec = spec
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path, self._fd = create_temp(path)
        self._file = open(self._fd, "wb", closefd=False)
        # The Arrow schema is stored so that every input column reads back with its exact type
        # (time zone, dictionary, large_string, ...). It holds the schema's metadata as of when it
        # is written, so commit() writes it again with the summary in it: pq.read_schema,
        # pq.read_table and pq.read_metadata then all show the summary.
        self._writer = pq.ParquetWriter(self._file, schema, compression="zstd", store_schema=True)
        self.rows_written = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._buffered_bytes = 0

    def write(self, batch: pa.RecordBatch, results: Sequence[RowResult]) -> None:
        """Append rows; they reach the file in row groups of about :data:`ROW_GROUP_ROWS` rows or
        :data:`ROW_GROUP_BYTES` bytes, whichever comes first.

        Raises :class:`OutputError` when they cannot be written (disk full, a value Arrow refuses).
        """
        try:
            arrays = list(batch.columns) + result_arrays(results, self.choices, self.spec)
            rows = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
            self._buffer.append(rows)
            self._buffered += batch.num_rows
            self._buffered_bytes += rows.nbytes
            self.rows_written += batch.num_rows
            if self._buffered >= ROW_GROUP_ROWS or self._buffered_bytes >= ROW_GROUP_BYTES:
                self._flush()
        except (OSError, pa.ArrowException) as exc:
            raise OutputError(f"cannot write the output {self.tmp_path}: {exc}") from exc

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_batches(self._buffer, schema=self.schema),
                                     row_group_size=max(self._buffered, 1))
        self._buffer, self._buffered, self._buffered_bytes = [], 0, 0

    def commit(self, metadata: Mapping[bytes, bytes]) -> None:
        try:
            self._flush()
            final = self.schema.with_metadata({**(self.schema.metadata or {}), **metadata})
            self._writer.add_key_value_metadata(
                {**final.metadata, ARROW_SCHEMA_KEY: base64.b64encode(final.serialize().to_pybytes())})
            self._writer.close()
            self._file.close()
            fd, self._fd = self._fd, -1
            commit_temp(fd, self.tmp_path, self.path)
        except (OSError, pa.ArrowException) as exc:
            raise OutputError(f"cannot write the output {self.path}: {exc}") from exc

    def discard(self) -> None:
        """Remove the temporary file; a writer that already failed (disk full) cannot hide the reason."""
        try:
            self._writer.close()
            self._file.close()
        except (OSError, pa.ArrowException):
            pass  # the file is removed anyway; the error that led here is the one to report
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self.tmp_path.unlink(missing_ok=True)


class TableSink:
    """Collects the output in memory (the Python API); :meth:`commit` makes :attr:`table`.

    The same rows and columns as :class:`ParquetSink` writes; input columns are the input's own
    arrays, so they keep their exact Arrow types.
    """

    def __init__(self, schema: pa.Schema, choices: int, spec=None) -> None:
        self.schema = schema
        self.choices = choices
        self.spec = spec
        self.rows_written = 0
        self.table: pa.Table | None = None
        self._batches: list[pa.RecordBatch] = []

    def write(self, batch: pa.RecordBatch, results: Sequence[RowResult]) -> None:
        arrays = list(batch.columns) + result_arrays(results, self.choices, self.spec)
        self._batches.append(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self.rows_written += batch.num_rows

    def commit(self, metadata: Mapping[bytes, bytes]) -> None:
        schema = self.schema.with_metadata({**(self.schema.metadata or {}), **metadata})
        self.table = pa.Table.from_batches(self._batches, schema=schema)
        self._batches = []

    def discard(self) -> None:
        self._batches = []


def create_temp(path: Path) -> tuple[Path, int]:
    """A new, empty temporary file beside ``path``, created exclusively: (its path, a descriptor)."""
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue  # a name left by an earlier process with our pid: draw another


def commit_temp(fd: int, tmp: Path, path: Path) -> None:
    """fsync and close ``fd`` (the file at ``tmp``), rename ``tmp`` to ``path``, fsync the folder."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through an exclusive temporary file, durably (see the module)."""
    tmp, fd = create_temp(path)
    try:
        with open(fd, "w", encoding="utf-8", closefd=False) as handle:
            handle.write(text)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    commit_temp(fd, tmp, path)


def remove_stale_temp(path: Path) -> None:
    """Remove temporary files a killed run left beside ``path`` (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[-1].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_summary_metadata(path: Path) -> bytes | None:
    """The summary JSON stored in an output file's key-value metadata, if any."""
    metadata = pq.read_metadata(path).metadata or {}
    return metadata.get(SUMMARY_KEY)
