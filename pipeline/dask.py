"""Run a job on a Dask cluster, with one rate limit for the whole cluster (``pip install '.[dask]'``).

From the command line::

    chatbatch run jobs/reviews.toml --input 'lake/*.parquet' --output lake.out.parquet --dask local:4
    chatbatch run jobs/reviews.toml --dask tcp://scheduler:8786

``--dask local:N`` starts a ``LocalCluster`` of N worker processes (and closes it at the end);
``--dask ADDRESS`` uses a running scheduler. The input is a Parquet file, a glob or a directory of
Parquet files (anything ``dask.dataframe.read_parquet`` opens); each Dask partition is run as a
local run is (:func:`pipeline.run.run_job` into a :class:`~pipeline.sinks.TableSink`: requests,
retries, structured output, cost, journal), sharing the cluster's rate budget and cost cap. The
output is a Parquet dataset — a folder with one ``part.N.parquet`` per partition, the columns and
types of a local run — written to a temporary folder and moved into place at the end, and
``<output>.summary.json``, the summary of a local run summed over the partitions.

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
worker holding the limiter dies (or the limiter fails), every call to it raises
:class:`~pipeline.errors.LimiterLost` (:class:`~pipeline.clusterlimit.ActorLink`): no partition
sends again and the run fails with it; finished rows are journaled, so running it again resumes.

**One cost cap.** With ``max_cost`` the limiter holds the job's spend: before each request a
partition reserves its worst case (the local cap's estimate) there and settles it with the exact
cost, so the sum over the cluster never passes the cap; the first request that could stops the job
(exit 3, ``stopped_by`` ``max_cost_reached``) and every partition writes its unsent rows as
``not_sent``. A rerun counts what earlier runs spent, as a local rerun does (see
:mod:`pipeline.clusterlimit` for how). An unknown price is refused before anything is sent.

**Stopping.** SIGINT or SIGTERM on the client (:class:`~pipeline.clusterlimit.ClusterStop`) stops
every partition from sending; requests in flight get the grace period (a second signal cancels
them); every partition still writes all its rows, so the dataset and summary are written as after a
local stop (exit 130), and a rerun resumes. The response cache (``cache``) is not used.

**Resume.** Each partition keeps its own journal in ``<state_dir>/part-N`` (``state_dir`` defaults
to ``<output>.state``), with the fingerprint of the job and of the partition's content. A rerun
sends nothing for finished partitions and, within an unfinished one, only the rows not journaled.
A worker that dies mid-partition loses no finished row (they were journaled before its next
request), and Dask runs its partition again on another worker; at most ``concurrency`` requests
that were in flight on it are sent again. ``--fresh`` discards every partition's journal.

Not supported with ``--dask`` (refused before anything is sent): ``--local``, and inputs other than
Parquet.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from .clusterlimit import ActorLink, ClusterCap, ClusterLease, ClusterLimiter, ClusterStop
from .errors import InputError, JobError, OutputExistsError
from .jobspec import Job, build_job
from .pricing import load_prices
from .run import (EXIT_ABORTED, EXIT_INTERRUPTED, EXIT_OK, EXIT_ROW_ERRORS, GRACE_S, Prepared, RunReport, Shared,
                  check_columns, earlier_spend, fingerprint, run_date, run_job, state_dir, stored_spend)
from .runner import Runner
from .redaction import redact
from .sinks import TableSink, check_output, output_schema, result_fields, write_text_atomically
from .sources import TableSource
from .spend import SpendCap
from .state import INSPECT, JOURNAL_FILES, open_state
from .summary import merge_summaries, to_json

PROGRESS_S = 1.0  # how often a partition reports its counts to the limiter
# A worker preload (script text) for ``local:N``: Ctrl-C in a terminal signals the whole process
# group, and the worker processes must leave it to the client (which stops the job gracefully).
IGNORE_CTRL_C = "import signal\n\ndef dask_setup(worker):\n    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"


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
    return enrich_frame(ddf, job, start_limiter(get_client(), job, job.state_dir), state=job.state_dir)


def start_limiter(client: Any, job: Job, state: Path | None) -> Any:
    """The job's :class:`ClusterLimiter`, started as an Actor on one of ``client``'s workers; with
    ``max_cost`` it starts from what the partitions' journals in ``state`` say was spent."""
    cap = str(job.max_cost_usd) if job.max_cost_usd is not None else None
    earlier = stored_spend_by_part(state) if cap is not None and state is not None else {}
    return client.submit(ClusterLimiter, job.limits.requests_per_minute, job.limits.tokens_per_minute, cap,
                         earlier_usd=earlier, actor=True, pure=False).result()


def stored_spend_by_part(state: Path) -> dict[int, str]:
    """Each partition's billed spend over the job's runs (``part-N`` → N), when a run of the job
    was stopped: a rerun's cap starts there (an upper bound; each partition then states its own).
    Empty when every partition finished: the next run may have new input, and each partition states
    what it resumes from when it starts."""
    spend, finished = {}, True
    for folder in sorted(state.glob("part-*")) if state.is_dir() else ():
        number = folder.name.removeprefix("part-")
        if not number.isdigit() or not (folder / JOURNAL_FILES[0]).is_file():
            continue
        store = open_state(folder, None, purpose=INSPECT)
        try:
            finished = finished and store.meta("complete") == "true"
            spend[int(number)] = str(stored_spend(store).billed_usd)
        finally:
            store.close()
    return {} if finished else spend


def enrich_frame(ddf: Any, job: Job, limiter: Any, *, state: Path | None = None,
                 retry_errors: bool = False, grace_s: float = GRACE_S) -> Any:
    """``ddf.map_partitions`` running the job on each partition, with ``meta`` from the job."""
    import pandas as pd

    schema = pa.Schema.from_pandas(ddf._meta, preserve_index=False)
    check_columns(job, schema.names)
    output_schema(schema, job.column_prefix, job.choices_per_request, job.output)  # no clash
    meta = ddf._meta.copy()
    for field in result_fields(job.column_prefix, job.choices_per_request, job.output):
        meta[field.name] = pd.Series([], dtype=pd.ArrowDtype(field.type), index=meta.index)
    part = PartJob(replace(job, cache=False), limiter, state, retry_errors, min(grace_s, job.limits.timeout_s))
    return ddf.map_partitions(_enrich_partition, part, meta=meta)


def check_supported(job: Job) -> None:
    """Refuse what a cluster run cannot do, and a cost cap a local run would refuse (unknown price)."""
    if job.local:
        raise JobError("--local and --dask cannot be combined")
    if job.max_cost_usd is not None:
        SpendCap.for_job(job, load_prices(job.prices_file, job.price_overrides))


# -- one partition, on a worker --------------------------------------------------------------
@dataclass(frozen=True)
class PartJob:
    """What every partition task needs: the job, the limiter's Actor, where journals go, how long
    requests in flight may finish after a stop."""

    job: Job
    limiter: Any
    state: Path | None
    retry_errors: bool
    grace_s: float = GRACE_S


def _enrich_partition(frame: Any, part: PartJob, partition_info: dict | None = None) -> Any:
    import pandas as pd

    number = partition_info["number"] if partition_info else 0
    table = pa.Table.from_pandas(frame, preserve_index=False)
    results = asyncio.run(run_part(part, number, table, ActorLink(part.limiter)))
    columns = {name: pd.arrays.ArrowExtensionArray(results.column(name)) for name in results.column_names}
    return pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)


async def run_part(part: PartJob, number: int, table: pa.Table, link: Any) -> pa.Table:
    """Run one partition as a local run (:func:`pipeline.run.run_job`) sharing the limiter's rate
    budget and cost cap; returns its result columns."""
    job, source = part.job, TableSource(table)
    prices = load_prices(job.prices_file, job.price_overrides)
    store = None
    try:
        if part.state is not None:
            store = open_state(part.state / f"part-{number}", fingerprint(job, source.digest()))
            store.begin(table.num_rows)
        earlier = earlier_spend(store)
        started = await link.ask("begin", number, str(earlier.billed_usd if earlier is not None else 0))
    except BaseException:
        if store is not None:
            store.close()
        raise
    schema = output_schema(table.schema, job.column_prefix, job.choices_per_request, job.output)
    sink = TableSink(schema, job.choices_per_request, job.output)
    lease = ClusterLease(link.ask, link.tell, clock=time.monotonic)
    cap = ClusterCap(SpendCap.for_job(job, prices), link.ask, link.tell) if job.max_cost_usd is not None else None
    watch = _Watch(link, number, started, part.grace_s)
    try:
        report = await run_job(job, prepared=Prepared(job, source, prices, (), store),
                               retry_errors=part.retry_errors, sink=sink, shared=Shared(lease, cap, watch))
    finally:
        lease.give_back()
    summary = report.summary
    if summary.get("stopped_by"):  # no retry fixes it: every partition stops (if not told already)
        await link.ask("stop", summary["stopped"], summary["stopped_by"])
    await link.ask("report", number, {**(_counts(watch.runner) if watch.runner else {}), "summary": summary})
    return sink.table.select([field.name for field in schema][table.num_columns:])


class _Watch:
    """Runs beside a partition's run: reports its counts to the limiter every :data:`PROGRESS_S`,
    stops it when the job stops (requests in flight get ``grace_s``, a second stop cancels them),
    and tells the limiter at once when this partition must stop the job (auth, quota)."""

    def __init__(self, link: Any, number: int, started: tuple[str | None, bool], grace_s: float) -> None:
        self._link, self._number, self._answer, self._grace_s = link, number, started, grace_s
        self.runner: Runner | None = None

    async def __call__(self, runner: Runner) -> None:
        self.runner = runner
        loop, timer, cancelled, told = asyncio.get_running_loop(), None, False, False
        try:
            while True:  # the first pass runs before the partition sends anything
                reason, hard = self._answer
                if reason and not runner.stopping:
                    runner.request_stop(reason)
                    timer = loop.call_later(self._grace_s, runner.request_stop, reason)
                if reason and hard and not cancelled:
                    cancelled = True
                    runner.request_stop(reason)
                if runner.fatal is not None and not told:
                    told = True
                    await self._link.ask("stop", runner.stop_reason, runner.fatal.error_type)
                await asyncio.sleep(PROGRESS_S)
                self._answer = await self._link.ask("report", self._number, _counts(runner))
        finally:
            if timer is not None:
                timer.cancel()


def _counts(runner: Runner) -> dict:
    tally = runner.tally
    return {"rows": tally.rows_total, "rows_done": tally.rows_done, "requests": runner.requests_sent,
            "ok": tally.statuses["ok"], "error": tally.errors, "rate_limited": tally.rate_limited,
            "cost_usd": float(tally.cost_known_usd)}


# -- the CLI's run ---------------------------------------------------------------------------
def run_cluster(job: Job, address: str, *, fresh: bool = False, retry_errors: bool = False,
                echo: Callable[[str], None] | None = None, say: Callable[[str], None] | None = None,
                stop: ClusterStop | None = None, grace_s: float = GRACE_S) -> RunReport:
    """``chatbatch run --dask ADDRESS``: read, enrich on the cluster, write the dataset and summary.

    ``echo`` gets the progress lines. ``stop`` (pressed by the CLI's signal handlers) stops the job:
    every partition stops sending, its requests in flight get ``grace_s`` to finish (a second press
    cancels them), and the output is written with every row, as a local run's; ``say`` tells it.
    """
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
    stop = stop or ClusterStop()
    started, started_at = time.monotonic(), _now()
    with _client(address) as client:
        limiter = start_limiter(client, job, state)
        stop.attach(limiter)
        try:
            frame = enrich_frame(ddf, job, limiter, state=state, retry_errors=retry_errors, grace_s=grace_s)
            tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
            written = frame.to_parquet(str(tmp), write_index=False, compute=False, schema=output_schema(
                schema, job.column_prefix, job.choices_per_request, job.output))
            future = client.compute(written)
            _watch(future, ActorLink(limiter), stop, echo, say, interval_s=min(job.progress_interval_s, 2.0), grace_s=grace_s)
            future.result()
        finally:
            stop.detach()
        parts = ActorLink(limiter).call("summaries")
        totals = ActorLink(limiter).call("totals")
    _replace(tmp, output)
    summary = _job_summary(job, [parts[key] for key in sorted(parts)], totals)
    code = _exit_code(summary)
    summary.update(run_date(job))
    summary.update(elapsed_s=round(time.monotonic() - started, 3), model=job.model, input=str(job.input_path),
                   output=str(output), started_at=started_at, finished_at=_now(), exit_code=code,
                   partitions=len(parts), dask=address, state_dir=str(state))
    elapsed = summary["elapsed_s"]
    summary["rows_per_s"] = round((summary["ok"] + summary["error"]) / elapsed, 2) if elapsed else None
    summary_path = output.with_name(output.name + ".summary.json")
    write_text_atomically(summary_path, redact(to_json(summary), job.endpoint.secrets) + "\n")
    return RunReport(summary, code, output, summary_path)


def _job_summary(job: Job, parts: list[dict], totals: dict) -> dict:
    """The partitions' summaries summed; the job's own facts (why it stopped: the limiter knows)."""
    summary = merge_summaries(parts)
    if summary.get("stopped"):  # (a stop after every partition had finished changed nothing)
        summary.update(stopped=totals["stopped"] or summary["stopped"],
                       stopped_by=totals["stopped_by"] or summary.get("stopped_by"))
    summary.update(max_cost_usd=job.max_cost_usd,
                   limiter={key: totals[key] for key in ("leases", "pauses", "limits")})
    return summary


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
                          dashboard_address=None, preload=[IGNORE_CTRL_C]) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout="20s")
    except OSError as exc:
        raise JobError(f"--dask {address}: cannot reach the Dask scheduler: {exc}") from exc
    with client:
        yield client


def _watch(future: Any, link: ActorLink, stop: ClusterStop, echo: Callable[[str], None] | None,
           say: Callable[[str], None] | None, interval_s: float, grace_s: float) -> None:
    """Wait for the run, printing one progress line per interval, and what a stop does."""
    from distributed import wait

    started, said = time.monotonic(), 0
    while not future.done():
        try:
            wait(future, timeout=interval_s, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        if say and len(stop.reasons) > said:
            said = len(stop.reasons)
            say(f"{stop.reasons[-1]}: every partition stops sending; " + (
                f"requests in flight get up to {grace_s:g}s to finish (signal again to cancel them)"
                if said == 1 else "requests in flight are cancelled"))
        if echo:
            echo(_progress_line(link.call("totals"), time.monotonic() - started))


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
