"""Run a job on a Dask cluster, with one rate limit for the whole cluster (``pip install '.[dask]'``).

From the command line::

    chatbatch run jobs/reviews.toml --input 'lake/*.parquet' --output lake.out.parquet --dask local:4
    chatbatch run jobs/reviews.toml --dask tcp://scheduler:8786

``--dask local:N`` starts a ``LocalCluster`` of N worker processes (and closes it at the end);
``--dask ADDRESS`` uses a running scheduler. The input is a Parquet file, a glob or a directory of
Parquet files (anything ``dask.dataframe.read_parquet`` opens); each Dask partition is sent by the
same engine as a local run (:class:`~pipeline.runner.Runner`: requests, retries, structured output,
cost). The output is a Parquet dataset — a folder with one ``part.N.parquet`` per partition, the
columns and types of a local run — written to a temporary folder and moved into place at the end,
and ``<output>.summary.json``, the summary of a local run summed over the partitions.

From Python, on a ``distributed.Client``::

    import dask.dataframe as dd
    from distributed import Client
    from pipeline.dask import enrich

    client = Client("tcp://scheduler:8786")
    reviews = dd.read_parquet("lake/", dtype_backend="pyarrow")
    out = enrich(reviews, template="Sentiment of: {review}", model="gpt-4o-mini", rpm=5000)
    out[out.status == "ok"].to_parquet("sentiment/")   # lazy until here

``enrich(ddf, **job_keys)`` takes the job-file keys as keywords (plus ``api_key``) and returns a
lazy Dask DataFrame: the input columns as they were, plus the output columns (pyarrow dtypes). Its
``meta`` comes from the job, so nothing is sent before the graph runs.

**One rate limit.** A :class:`~pipeline.clusterlimit.ClusterLimiter` lives on one worker as a
``distributed`` Actor; every partition's rate budget leases requests and tokens from it in small
slices, returns what it did not use, and passes on learned limits and 429 pauses (a 429 anywhere
slows every worker). The limiter also collects progress (the client prints one line for the job)
and spreads a stop: a partition that must stop the job (auth failure, quota) stops them all. If the
worker holding the limiter dies, the run fails; run it again to resume.

**Resume.** Each partition keeps its own journal in ``<state_dir>/part-N`` (``state_dir`` defaults
to ``<output>.state``), with the fingerprint of the job and of the partition's content. A rerun
sends nothing for finished partitions and, within an unfinished one, only the rows not journaled.
A worker that dies mid-partition loses no finished row (they were journaled before its next
request), and Dask runs its partition again on another worker; at most ``concurrency`` requests
that were in flight on it are sent again. ``--fresh`` discards every partition's journal.

Not supported with ``--dask`` (refused before anything is sent): ``max_cost``, ``--local``, and
inputs other than Parquet.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from .client import ChatClient
from .clusterlimit import ClusterLease, ClusterLimiter
from .errors import InputError, JobError
from .jobspec import Job, build_job
from .pricing import load_prices
from .records import RowResult
from .run import (EXIT_ABORTED, EXIT_INTERRUPTED, EXIT_OK, EXIT_ROW_ERRORS, REAL_SEAMS, RunReport,
                  check_columns, earlier_spend, fingerprint, run_date, state_dir, token_counter)
from .runner import Reuse, Runner
from .errors import OutputExistsError
from .sinks import check_output, output_schema, result_arrays, result_fields
from .sources import TableSource
from .state import TOTALS_KEY, open_state
from .summary import Tally, merge_summaries, to_json
from .transport import make_http_client

PROGRESS_S = 1.0  # how often a partition reports its counts to the limiter


# -- Python API ------------------------------------------------------------------------------
def enrich(ddf: Any, **job_keys: Any) -> Any:
    """A lazy Dask DataFrame: ``ddf``'s columns plus the job's output columns (see module doc).

    Needs a ``distributed.Client`` (the current one); the limiter is started on its cluster.
    Partitions journal their rows (and a recomputation resumes) only when ``state_dir`` is given.
    """
    from distributed import get_client

    api_key = job_keys.pop("api_key", None)
    job = build_job(None, {**job_keys, "input": "<dask>", "output": "<dask>.parquet"}, os.environ,
                    api_key=api_key)
    check_supported(job)
    return enrich_frame(ddf, job, start_limiter(get_client(), job), state=job.state_dir)


def start_limiter(client: Any, job: Job) -> Any:
    """The job's :class:`ClusterLimiter`, started as an Actor on one of ``client``'s workers."""
    return client.submit(ClusterLimiter, job.limits.requests_per_minute, job.limits.tokens_per_minute,
                         actor=True, pure=False).result()


def enrich_frame(ddf: Any, job: Job, limiter: Any, *, state: Path | None = None,
                 retry_errors: bool = False) -> Any:
    """``ddf.map_partitions`` running the job on each partition, with ``meta`` from the job."""
    import pandas as pd

    schema = pa.Schema.from_pandas(ddf._meta, preserve_index=False)
    check_columns(job, schema.names)
    output_schema(schema, job.column_prefix, job.choices_per_request, job.output)  # no clash
    meta = ddf._meta.copy()
    for field in result_fields(job.column_prefix, job.choices_per_request, job.output):
        meta[field.name] = pd.Series([], dtype=pd.ArrowDtype(field.type), index=meta.index)
    part = PartJob(job, limiter, state, retry_errors)
    return ddf.map_partitions(_enrich_partition, part, meta=meta)


def check_supported(job: Job) -> None:
    if job.max_cost_usd is not None:
        raise JobError("max_cost is not supported with --dask yet (a cap per partition would not be "
                       "one cap); run without it, or run locally")
    if job.local:
        raise JobError("--local and --dask cannot be combined")


# -- one partition, on a worker --------------------------------------------------------------
@dataclass(frozen=True)
class PartJob:
    """What every partition task needs: the job, the limiter's Actor, where journals go."""

    job: Job
    limiter: Any
    state: Path | None
    retry_errors: bool


def _enrich_partition(frame: Any, part: PartJob, partition_info: dict | None = None) -> Any:
    import pandas as pd

    number = partition_info["number"] if partition_info else 0
    table = pa.Table.from_pandas(frame, preserve_index=False)
    results = asyncio.run(run_part(part, number, table, _ActorLink(part.limiter)))
    columns = {name: pd.arrays.ArrowExtensionArray(results.column(name)) for name in results.column_names}
    return pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)


class _ActorLink:
    """Calls to the limiter Actor: ``ask`` awaits the answer, ``tell`` does not."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    async def ask(self, method: str, *args: Any) -> Any:
        future = getattr(self._actor, method)(*args)
        return await asyncio.to_thread(future.result)

    def tell(self, method: str, *args: Any) -> None:
        getattr(self._actor, method)(*args)


class _ResultSink:
    """Collects the result columns of a partition (the input columns stay in the frame)."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self._fields = result_fields(job.column_prefix, job.choices_per_request, job.output)
        self._batches: list[pa.RecordBatch] = []

    def write(self, batch: pa.RecordBatch, results: list[RowResult]) -> None:
        arrays = result_arrays(results, self._job.choices_per_request, self._job.output)
        self._batches.append(pa.RecordBatch.from_arrays(arrays, schema=pa.schema(self._fields)))

    def commit(self, metadata: dict) -> None:
        pass

    def discard(self) -> None:
        self._batches = []

    def table(self) -> pa.Table:
        return pa.Table.from_batches(self._batches, schema=pa.schema(self._fields))


async def run_part(part: PartJob, number: int, table: pa.Table, link: Any) -> pa.Table:
    """Run one partition through the Runner, leasing from the limiter; returns its result columns."""
    job = part.job
    store = None
    if part.state is not None:
        store = open_state(part.state / f"part-{number}", fingerprint(job, _digest(table)))
        store.begin()
    try:
        return await _run_with_store(part, number, table, link, store)
    finally:
        if store is not None:
            store.close()


async def _run_with_store(part: PartJob, number: int, table: pa.Table, link: Any, store) -> pa.Table:
    job, started = part.job, time.monotonic()
    tally, sink = Tally(rows_total=table.num_rows), _ResultSink(job)
    http = make_http_client(job.limits.concurrency, job.limits.timeout_s)
    lease = ClusterLease(link.ask, link.tell, clock=time.monotonic)
    counter = token_counter(job) if job.limits.tokens_per_minute else None
    runner = Runner(job, TableSource(table), sink, ChatClient(http, job.endpoint, job.limits.timeout_s),
                    load_prices(job.prices_file, job.price_overrides), tally, REAL_SEAMS,
                    Reuse(store=store, retry_errors=part.retry_errors, dedupe=job.dedupe), counter, lease=lease)
    earlier = earlier_spend(store)  # what earlier runs spent on this partition: the summary is the job's

    def job_totals() -> str:
        this = tally.spend(time.monotonic() - started)
        return (earlier.plus(this) if earlier is not None else this).to_json()

    if store is not None:
        store.track_totals(job_totals)
    reporter = asyncio.create_task(_report_every(link, number, runner))
    try:
        await runner.run()
    finally:
        reporter.cancel()
        lease.give_back()
        await http.aclose()
        if store is not None:
            store.set_meta({TOTALS_KEY: job_totals()})
    if runner.fatal is not None:  # no retry fixes it: every partition stops
        await link.ask("stop", runner.stop_reason)
    summary = tally.summary(elapsed_s=time.monotonic() - started, earlier=earlier, extra={
        "requests_sent": runner.requests_sent, "stopped": runner.stop_reason,
        "stopped_by": runner.fatal.error_type if runner.fatal is not None else None})
    await link.ask("report", number, {**_counts(runner), "summary": summary})
    if store is not None:
        store.set_meta({"complete": "true" if not runner.stopping else "false"})
    return sink.table()


async def _report_every(link: Any, number: int, runner: Runner) -> None:
    """Report the partition's counts; stop it when the limiter says the job stops."""
    while True:
        reason = await link.ask("report", number, _counts(runner))
        if reason and not runner.stopping:
            runner.request_stop(reason)
        await asyncio.sleep(PROGRESS_S)


def _counts(runner: Runner) -> dict:
    tally = runner.tally
    return {"rows": tally.rows_total, "rows_done": tally.rows_done, "requests": runner.requests_sent,
            "ok": tally.statuses["ok"], "error": tally.errors, "rate_limited": tally.rate_limited,
            "cost_usd": float(tally.cost_known_usd)}


def _digest(table: pa.Table) -> str:
    """A digest of a partition's content (its Arrow IPC bytes), for the partition's fingerprint."""
    import hashlib

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.blake2b(sink.getvalue().to_pybytes(), digest_size=16).hexdigest()


# -- the CLI's run ---------------------------------------------------------------------------
def run_cluster(job: Job, address: str, *, fresh: bool = False, retry_errors: bool = False,
                echo: Callable[[str], None] | None = None) -> RunReport:
    """``chatbatch run --dask ADDRESS``: read, enrich on the cluster, write the dataset and summary."""
    import dask.dataframe as dd

    check_supported(job)
    files = input_files(job.input_path)
    try:
        schema = pq.read_schema(files[0])
        ddf = dd.read_parquet(files, dtype_backend="pyarrow")
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"{job.input_path}: cannot read the input as Parquet: {exc}") from exc
    output, state = job.output_path, state_dir(job)
    _check_output(output, job.overwrite or state.is_dir())
    if fresh and state.is_dir():
        for folder in state.glob("part-*"):
            shutil.rmtree(folder)
    started, started_at = time.monotonic(), _now()
    with _client(address) as client:
        limiter = start_limiter(client, job)
        frame = enrich_frame(ddf, job, limiter, state=state, retry_errors=retry_errors)
        tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
        written = frame.to_parquet(str(tmp), write_index=False, compute=False, schema=output_schema(
            schema, job.column_prefix, job.choices_per_request, job.output))
        future = client.compute(written)
        _watch(future, limiter, echo, interval_s=min(job.progress_interval_s, 2.0))
        future.result()
        parts = limiter.summaries().result()
        totals = limiter.totals().result()
    _replace(tmp, output)
    summary = merge_summaries([parts[key] for key in sorted(parts)])
    code = _exit_code(summary)
    summary.update(run_date(job))
    summary.update(elapsed_s=round(time.monotonic() - started, 3), model=job.model, input=str(job.input_path),
                   output=str(output), started_at=started_at, finished_at=_now(), exit_code=code,
                   partitions=len(parts), dask=address, state_dir=str(state),
                   limiter={key: totals[key] for key in ("leases", "pauses", "limits")})
    elapsed = summary["elapsed_s"]
    summary["rows_per_s"] = round((summary["ok"] + summary["error"]) / elapsed, 2) if elapsed else None
    summary_path = output.with_name(output.name + ".summary.json")
    tmp_summary = summary_path.with_name(f".{summary_path.name}.tmp-{os.getpid()}")
    tmp_summary.write_text(to_json(summary) + "\n")
    os.replace(tmp_summary, summary_path)
    return RunReport(summary, code, output, summary_path)


def input_files(path: Path) -> list[str]:
    """The Parquet files of a file, a glob or a directory (sorted, so partitions keep their numbers)."""
    text = str(path)
    if any(char in text for char in "*?["):
        files = sorted(glob.glob(text))
    elif path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet") if p.is_file())
    else:
        files = [text] if path.is_file() else []
    if not files:
        raise InputError(f"{path}: no Parquet files there (give a file, a glob or a folder of .parquet files)")
    return files


@contextmanager
def _client(address: str):
    from distributed import Client, LocalCluster

    if address.startswith("local:"):
        try:
            workers = int(address.removeprefix("local:"))
        except ValueError:
            workers = 0
        if workers < 1:
            raise JobError(f"--dask {address}: give local:N with N ≥ 1 worker processes, or a scheduler address")
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout="20s")
    except OSError as exc:
        raise JobError(f"--dask {address}: cannot reach the Dask scheduler: {exc}") from exc
    with client:
        yield client


def _watch(future: Any, limiter: Any, echo: Callable[[str], None] | None, interval_s: float) -> None:
    """Wait for the run, printing one progress line per interval; Ctrl-C stops the whole job."""
    from distributed import wait

    started, interrupted = time.monotonic(), False
    while not future.done():
        try:
            wait(future, timeout=interval_s, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            limiter.stop("interrupted (SIGINT)").result()
            if echo:
                echo("chatbatch: interrupted: every worker stops sending; Ctrl-C again to abandon the run")
        if echo:
            echo(_progress_line(limiter.totals().result(), time.monotonic() - started))


def _progress_line(totals: dict, elapsed_s: float) -> str:
    rows, done = totals["rows"], totals["rows_done"]
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    return (f"chatbatch: {done:,}/{rows:,} rows in {totals['parts']} partitions started  "
            f"{rate:,.1f} rows/s  requests {totals['requests']:,}  429s {totals['rate_limited']:,}  "
            f"cost ${totals['cost_usd']:.6f}")


def _check_output(output: Path, own: bool) -> None:
    try:
        check_output(output, True)
    except InputError:
        if not output.is_dir():
            raise
    if output.exists() and not own:
        raise OutputExistsError(f"output {output} exists; pass --overwrite to replace it")


def _replace(tmp: Path, output: Path) -> None:
    """Move the finished dataset folder into place; the old one goes only after."""
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    if output.exists():
        os.replace(output, old)
    os.replace(tmp, output)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def _exit_code(summary: dict) -> int:
    if summary.get("stopped_by"):
        return EXIT_ABORTED
    if summary.get("stopped"):
        return EXIT_INTERRUPTED
    return EXIT_ROW_ERRORS if summary["error"] or summary["refused"] else EXIT_OK


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
