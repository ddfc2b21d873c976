"""The Python API: enrich a DataFrame from a script or a notebook, on the same engine as the CLI.

::

    import pandas as pd
    from pipeline import enrich

    reviews = pd.DataFrame({"review": ["Great mug", "Broke in a week"]}, index=[101, 102])
    result = enrich(reviews, template="Sentiment of: {review}", model="gpt-4o-mini",
                    labels=["positive", "negative", "neutral"], max_cost=2.0)
    result[["review", "label", "status", "cost_usd"]]   # same index, input columns unchanged
    result.attrs["chatbatch"]["cost_usd"]                 # the run's summary

* ``enrich(data, **keywords)`` takes a pandas DataFrame, a pyarrow Table or RecordBatchReader, a
  list of dicts, or a path (CSV, Parquet, JSONL), and returns the input columns plus the CLI's output
  columns: pandas for pandas, list and path input (index kept), Arrow for Arrow input (every input
  column with its exact type; the summary in the schema metadata under ``chatbatch.summary``).
  ``aenrich`` is the same as a coroutine; ``estimate(data, **keywords)`` is the dry run's dict.
* The keywords are the job-file keys (pipeline/options.py: one table for flags, keys, keywords),
  plus ``fresh``, ``retry_errors``, ``api_key`` and ``progress``. An unknown keyword is a
  ``TypeError`` with a did-you-mean; a bad value, a missing column or an unknown price with
  ``max_cost`` is a :class:`~pipeline.errors.JobError` raised before anything is sent. The
  environment (``OPENAI_API_KEY``, ...) is read at call time, as the CLI reads it.
* Row errors never raise: they are rows with ``status == "error"``. A stop no retry fixes (auth,
  quota, ``max_cost``) raises :class:`~pipeline.errors.RunAborted`, whose ``result`` holds every
  row (those not sent have error_type ``not_sent``).
* ``enrich`` runs its event loop in a worker thread, so it works the same in a script, in Jupyter
  (whose loop is already running) and inside any coroutine. Ctrl-C (interrupting the cell) stops as
  the CLI does: no new requests, those in flight get up to 10 s (a second Ctrl-C cancels them), then
  ``KeyboardInterrupt`` is raised with the partial result as its ``result`` attribute.
* **Calling again resumes**: finished rows are journaled in
  ``<cache_dir>/runs/<key>/`` (``cache_dir`` defaults to ``~/.cache/chatbatch``), ``key`` a digest of
  the job's fingerprint and the data's content, so nothing is written beside the user's data;
  ``state_dir=`` puts the journal elsewhere and ``fresh=True`` starts over.
* ``Job.from_toml("jobs/x.toml", **overrides).run()`` runs a job file as ``chatbatch run`` does
  (output file, summary, state beside the output, the report page with ``report = true``) and
  returns its :class:`~pipeline.run.RunReport`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import threading
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import pyarrow as pa

from .errors import InputError, RunAborted
from .estimate import estimate as estimate_job
from .jobspec import Job as JobSpec
from .jobspec import build_job
from .local import local_job
from .options import PYTHON_KEYWORDS, check_keywords, keyword_values
from .run import EXIT_ABORTED, EXIT_INTERRUPTED, RunReport, StopSwitch, fingerprint, prepare, run_job, token_counter
from .sinks import TableSink, output_schema, result_fields
from .sources import TableSource, file_digest, table_source

RUN_KEYWORDS = frozenset({"fresh", "retry_errors", "progress"})  # how to run, not what the job is
ENRICH_KEYWORDS = PYTHON_KEYWORDS - {"input", "output"}  # the data is the first argument, the output returned
ESTIMATE_KEYWORDS = ENRICH_KEYWORDS - RUN_KEYWORDS
IN_MEMORY = "<in memory>"  # the output "path" of an in-memory run (never written)


class ChatbatchWarning(UserWarning):
    """Something to know before the run (e.g. no price known for the model)."""


# -- public functions ------------------------------------------------------------------------
def enrich(data: Any, **keywords: Any) -> Any:
    """Send every row of ``data`` to the model and return it with the reply columns added.

    See the module docstring; the keywords are the job-file keys (``template``, ``model``,
    ``labels``, ``max_cost``, ...) plus ``fresh``, ``retry_errors``, ``api_key`` and ``progress``.
    """
    check_keywords("enrich", keywords, ENRICH_KEYWORDS)
    call = _Call.plan("enrich", data, keywords)
    switch = StopSwitch()
    (report, table), interrupted = _in_worker_thread(lambda: call.execute(switch), switch)
    return call.finish(report, table, interrupted)


async def aenrich(data: Any, **keywords: Any) -> Any:
    """:func:`enrich` as a coroutine, in the caller's event loop. Cancelling it keeps the rows
    finished so far in the journal: calling again resumes."""
    check_keywords("aenrich", keywords, ENRICH_KEYWORDS)
    call = _Call.plan("aenrich", data, keywords)
    report, table = await call.execute(StopSwitch())
    return call.finish(report, table, False)


def estimate(data: Any, **keywords: Any) -> dict[str, Any]:
    """The dry run (``chatbatch estimate --json``) of ``enrich(data, **keywords)``: sends nothing."""
    check_keywords("estimate", keywords, ESTIMATE_KEYWORDS)
    call = _Call.plan("estimate", data, keywords, require_key=False)
    prepared = prepare(call.job, use_state=False, check_overwrite=False, source=call.data.source)
    _warn(prepared.warnings)
    return estimate_job(call.job, prepared.source, prepared.prices, token_counter(call.job))


class Job:
    """A job file for scripts, run with the CLI's semantics::

        report = Job.from_toml("jobs/reviews.toml", max_cost=5).run()
        report.exit_code, report.output_path, report.summary["cost_usd"]
    """

    def __init__(self, spec: JobSpec, *, fresh: bool = False, retry_errors: bool = False,
                 progress: bool = True) -> None:
        self.spec, self.fresh, self.retry_errors, self.progress = spec, fresh, retry_errors, progress

    @classmethod
    def from_toml(cls, path: str | os.PathLike, **overrides: Any) -> "Job":
        """The job file at ``path``; keywords override its keys, as flags do on the command line."""
        check_keywords("Job.from_toml", overrides, PYTHON_KEYWORDS)
        run = {name: bool(overrides.pop(name)) for name in RUN_KEYWORDS if name in overrides}
        api_key = overrides.pop("api_key", None)
        spec = build_job(Path(path), keyword_values(overrides), os.environ, api_key=api_key,
                         overrides_from="Job.from_toml()")
        return cls(spec, **run)

    def run(self) -> RunReport:
        """Run the job: output and summary files as ``chatbatch run`` writes them; the report's
        ``exit_code`` is the CLI's. Ctrl-C stops gracefully, then raises ``KeyboardInterrupt``."""
        switch = StopSwitch()
        report, interrupted = _in_worker_thread(lambda: self._run(switch), switch)
        if self.spec.report:
            _write_run_report(report.output_path, self.spec.endpoint.secrets)
        if interrupted or report.exit_code == EXIT_INTERRUPTED:
            raise KeyboardInterrupt(f"chatbatch: interrupted; rows finished were written to {report.output_path}"
                                    "; run the job again to resume: finished rows will not be sent again")
        return report

    def estimate(self) -> dict[str, Any]:
        prepared = prepare(self.spec, use_state=False, check_overwrite=False)
        _warn(prepared.warnings)
        return estimate_job(self.spec, prepared.source, prepared.prices, token_counter(self.spec))

    async def _run(self, stop: StopSwitch) -> RunReport:
        with ExitStack() as stack:
            job = stack.enter_context(local_job(self.spec)) if self.spec.local else self.spec
            prepared = prepare(job, fresh=self.fresh)
            quiet = job.quiet or not self.progress
            _announce(prepared, quiet)
            return await run_job(job, prepared=prepared, progress_mode="quiet" if quiet else "auto",
                                 retry_errors=self.retry_errors, stop=stop)


def _write_run_report(output: Path, secrets: tuple[str, ...]) -> None:
    """``report = true``: the CLI's page beside the output; if it cannot be written (no report
    extra, ...), a :class:`ChatbatchWarning` says why, as the CLI says it on stderr."""
    from .report import write_run_report

    _, problem = write_run_report(output, secrets)
    if problem is not None:
        warnings.warn(problem, ChatbatchWarning, stacklevel=3)


# -- one call --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Data:
    """The caller's data as a source (a file is opened by the run, as ``--input`` is), and how to
    hand the result back."""

    source: TableSource | None = None
    path: Path | None = None
    frame: Any = None  # the pandas DataFrame the result columns are added to
    arrow: bool = False  # return an Arrow table (else pandas)

    @classmethod
    def read(cls, data: Any, function: str) -> "_Data":
        if isinstance(data, (str, os.PathLike)):
            return cls(path=Path(data).expanduser())
        if isinstance(data, pa.RecordBatchReader):
            return cls(table_source(data.read_all(), "<RecordBatchReader>"), arrow=True)
        if isinstance(data, pa.RecordBatch):
            return cls(table_source(pa.Table.from_batches([data]), "<RecordBatch>"), arrow=True)
        if isinstance(data, pa.Table):
            return cls(table_source(data, "<Table>"), arrow=True)
        pandas = sys.modules.get("pandas")
        if isinstance(data, list) and all(isinstance(row, Mapping) for row in data):
            import pandas
            data = pandas.DataFrame.from_records(data) if data else pandas.DataFrame()
        if pandas is not None and isinstance(data, pandas.DataFrame):
            return cls(table_source(frame_to_arrow(data), "<DataFrame>"), frame=data)
        raise TypeError(f"{function}() takes a pandas DataFrame, a pyarrow Table or RecordBatchReader, a list "
                        f"of dicts or a path to a .csv/.parquet/.jsonl file, not {type(data).__name__}")

    def result(self, table: pa.Table, job: JobSpec, summary: dict) -> Any:
        if self.arrow:
            return table
        if self.frame is None:
            frame = table.to_pandas()
        else:
            frame = _with_result_columns(self.frame, table, job)
        frame.attrs = {**frame.attrs, "chatbatch": summary}
        return frame


@dataclass(frozen=True)
class _Call:
    """One call of enrich/aenrich/estimate: the checked job and its data."""

    job: JobSpec
    data: _Data
    fresh: bool = False
    retry_errors: bool = False
    progress: bool = True

    @classmethod
    def plan(cls, function: str, data: Any, keywords: Mapping[str, Any], require_key: bool = True) -> "_Call":
        keywords = dict(keywords)
        run = {name: bool(keywords.pop(name)) for name in RUN_KEYWORDS if name in keywords}
        api_key = keywords.pop("api_key", None)
        read = _Data.read(data, function)
        label = str(read.path) if read.path is not None else read.source.name
        label = label.replace("{", "{{").replace("}", "}}")  # the data as given: no date placeholders
        job = build_job(None, {**keyword_values(keywords), "input": label, "output": IN_MEMORY}, os.environ,
                        api_key=api_key, require_key=require_key, overrides_from=f"{function}()")
        return cls(job, read, **run)

    async def execute(self, stop: StopSwitch) -> tuple[RunReport, pa.Table]:
        """Run in the current event loop; the output is collected in memory."""
        job = self.job
        if job.state_dir is None:
            job = replace(job, state_dir=_default_state_dir(job, self.data))
        with ExitStack() as stack:
            if job.local:
                job = stack.enter_context(local_job(job))
            prepared = prepare(job, fresh=self.fresh, check_overwrite=False, source=self.data.source)
            source = prepared.source
            quiet = job.quiet or not self.progress
            _announce(prepared, quiet)
            sink = TableSink(output_schema(source.schema, job.column_prefix, job.choices_per_request, job.output),
                             job.choices_per_request, job.output)
            report = await run_job(job, prepared=prepared, progress_mode="quiet" if quiet else "auto",
                                   retry_errors=self.retry_errors, sink=sink, stop=stop)
        return report, sink.table

    def finish(self, report: RunReport, table: pa.Table, interrupted: bool) -> Any:
        """The result, or the exception that carries it."""
        summary = report.summary
        result = self.data.result(table, self.job, summary)
        if interrupted or report.exit_code == EXIT_INTERRUPTED:
            error = KeyboardInterrupt(
                f"chatbatch: interrupted; {_finished(summary):,} of {summary['rows']:,} rows finished and saved in "
                f"{summary.get('state_dir')}; call again to resume: finished rows will not be sent again")
            error.result = result
            raise error
        if report.exit_code == EXIT_ABORTED:
            raise RunAborted(
                f"chatbatch: run aborted: {summary.get('stopped')}. The {_finished(summary):,} rows finished are in "
                "this exception's .result (rows not sent have error_type 'not_sent'); fix the cause and call "
                "again to resume: finished rows will not be sent again.", result=result, summary=summary)
        return result


def _finished(summary: dict) -> int:
    return summary["rows"] - summary.get("error_types", {}).get("not_sent", 0)


def _default_state_dir(job: JobSpec, data: _Data) -> Path:
    """``<cache_dir>/runs/<digest of the job's fingerprint and the data's content>``."""
    digest = data.source.digest() if data.source is not None else file_digest(data.path)
    text = json.dumps(fingerprint(job, digest), sort_keys=True)
    return job.cache_dir / "runs" / hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# -- data in and out -------------------------------------------------------------------------
def frame_to_arrow(frame: Any) -> pa.Table:
    """A DataFrame's columns as Arrow (index left out: the result keeps the frame's own).

    Column names become text; a column Arrow cannot take as it is (mixed types, say), or only as an
    extension type (periods, intervals), is sent as text (``str`` of each value, nulls null) — the
    result still holds the original column.
    """
    names = [str(name) for name in frame.columns]
    arrays = []
    for position in range(len(names)):
        column = frame.iloc[:, position]
        try:
            array = pa.array(column, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            array = None
        if array is None or isinstance(array.type, pa.ExtensionType):
            array = pa.array([_text(value) for value in column], pa.string())
        arrays.append(array)
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"<DataFrame>: duplicate column name(s): {', '.join(repeated)}")
    return pa.Table.from_arrays(arrays, names=names)


def _text(value: Any) -> str | None:
    import pandas

    try:
        if pandas.isna(value) is True:
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _with_result_columns(frame: Any, table: pa.Table, job: JobSpec) -> Any:
    """``frame`` (values and index untouched) with the result columns of ``table`` after it, typed
    as pandas reads them from the CLI's Parquet output (integers with nulls as Int64)."""
    import pandas

    fields = result_fields(job.column_prefix, job.choices_per_request, job.output)
    results = table.select([f.name for f in fields])
    schema = output_schema(pa.schema([]), job.column_prefix, job.choices_per_request, job.output)
    columns = results.replace_schema_metadata(schema.metadata).to_pandas()
    columns.index = frame.index
    return pandas.concat([frame, columns], axis=1)


# -- running ---------------------------------------------------------------------------------
def _in_worker_thread(make_coroutine: Callable[[], Any], switch: StopSwitch) -> tuple[Any, bool]:
    """Run a coroutine in a fresh event loop in a worker thread and wait for it.

    A loop already running in the caller's thread (Jupyter's) is no obstacle. Ctrl-C in the caller's
    thread presses ``switch`` (the first stops the run gracefully, a second cancels what is in
    flight) and the wait goes on until the run has saved its work. Returns the coroutine's value and
    whether it was interrupted; an exception in the worker is raised here (the thread boundary).
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = asyncio.run(make_coroutine())
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="chatbatch-run", daemon=True)
    worker.start()
    interrupted = False
    while not done.is_set():
        try:
            done.wait()
        except KeyboardInterrupt:
            interrupted = True
            switch.press("interrupted (KeyboardInterrupt)")
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], interrupted


def _announce(prepared, quiet: bool) -> None:
    _warn(prepared.warnings)
    if not quiet:
        for note in prepared.notes:
            print(f"chatbatch: {note}", file=sys.stderr)


def _warn(messages) -> None:
    for message in messages:
        warnings.warn(message, ChatbatchWarning, stacklevel=4)
