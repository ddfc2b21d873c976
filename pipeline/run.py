"""The engine behind ``chatbatch run`` and ``pipeline.enrich``: check everything, run the job, commit
the output.

Users call it through :mod:`pipeline.api` (``enrich(df, ...)``, ``Job.from_toml(path).run()``), which
also works where an event loop is already running (Jupyter). Directly, in a script::

    from pipeline.jobspec import build_job
    from pipeline.run import run_job
    job = build_job(Path("jobs/reviews-sentiment.toml"), {}, os.environ)
    report = asyncio.run(run_job(job))
    print(report.summary["cost_usd"], report.exit_code)

Order of work: open the input (a streaming pass for CSV/JSONL), check that every column the job
names exists, that the output can be written and its columns do not clash, and open (and lock) the
job's resume state — all before the first request, so a bad job costs nothing. Then run, write
``<output>`` and ``<output>.summary.json`` atomically, and report. An unexpected error removes the
temporary file and leaves any previous output untouched; finished rows stay in the journal.

Rerunning the same job resumes from its state (see :mod:`pipeline.state`): an output written by an
earlier run of the same job is replaced without ``--overwrite``, since it is that run's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
from decimal import Decimal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    import httpx


from . import __version__
from .client import ChatClient
from .transport import make_http_client
from .errors import InputError, OutputError
from .jobspec import Job
from .pricing import PriceTable, load_prices
from .progress import Progress
from .prompts import RowRenderer, Template
from .records import RowResult, Usage, not_sent_result
from .runner import CHUNK_ROWS, Runner, Seams
from .cache import ResponseCache
from .runner import Reuse
from .redaction import redact
from .sinks import (SUMMARY_KEY, ParquetSink, TableSink, check_output, output_schema, remove_stale_temp,
                    structured_columns, write_text_atomically)
from .sources import Source, TableSource, open_source
from .records import STATUS_ERROR, STATUS_OK, STATUS_REFUSED
from .state import BEGIN, TOTALS_KEY, TRANSIENT, StateStore, open_state
from .summary import Spend, Tally, to_json
from .tokens import TokenCounter
from .spend import SpendCap

if TYPE_CHECKING:
    from .clusterlimit import ClusterCap
    from .ratelimit import Lease

EXIT_OK, EXIT_ROW_ERRORS, EXIT_BAD_JOB, EXIT_ABORTED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
GRACE_S = 10.0  # how long in-flight requests may finish after Ctrl-C / SIGTERM
REAL_SEAMS = Seams(clock=time.monotonic, sleep=asyncio.sleep, random=random.random)


@dataclass(frozen=True)
class RunReport:
    summary: dict[str, Any]
    exit_code: int
    output_path: Path
    summary_path: Path | None  # None when the output went to an in-memory sink
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shared:
    """What a run shares with other processes running parts of the same job (a Dask cluster, see
    :mod:`pipeline.dask`): where its rate budget takes capacity, the cost cap it asks (instead of
    its own), and ``watch``, started beside the run with its Runner before anything is sent (it may
    stop the run) and cancelled when the run ends."""

    lease: Lease | None = None
    cap: ClusterCap | None = None
    watch: Callable[[Runner], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Prepared:
    """A job checked against its input, its state opened and locked, ready to run."""

    job: Job
    source: Source
    prices: PriceTable
    warnings: tuple[str, ...]
    store: StateStore | None = None
    notes: tuple[str, ...] = ()


def token_counter(job: Job) -> TokenCounter:
    return TokenCounter.for_model(job.model, job.cache_dir)


def state_dir(job: Job) -> Path:
    return job.state_dir or job.output_path.with_name(job.output_path.name + ".state")


def fingerprint(job: Job, input_digest: str) -> dict[str, str]:
    """What makes the job's requests what they are; a change means old replies no longer fit."""
    def digest(value: Any) -> str:
        return hashlib.blake2b(json.dumps(value, sort_keys=True).encode(), digest_size=12).hexdigest()
    return {
        "model": job.model,
        "endpoint": (f"local:{job.local_model.name if job.local_model else 'default'}" if job.local
                     else job.endpoint.public_url),  # never the credentials a base_url may hold
        "parameters": digest(dict(job.params)),
        "template": digest(job.template), "system prompt": digest(job.system),
        "messages_column": str(job.messages_column), "required_columns": digest(list(job.required_columns)),
        "input content": input_digest,
        # json_schema mode sends the schema in the parameters; the other modes in a system message
        **({"structured output": digest({"schema": dict(job.output.schema), "mode": job.output.mode})}
           if job.output is not None and job.output.mode != "json_schema" else {}),
        **({"input reading": digest([job.encoding, list(job.null_values)])}
           if (job.encoding, job.null_values) != ("utf-8", ()) else {}),
    }


def prepare(job: Job, *, fresh: bool = False, use_state: bool = True, check_overwrite: bool = True,
            purpose: str = BEGIN, retry_errors: bool = False,
            source: Source | TableSource | None = None) -> Prepared:
    """Every check that needs no request; raises JobError (exit 2) on the first problem.

    With ``use_state`` the job's state is opened and locked (close ``prepared.store``; run_job
    does): for ``purpose`` BEGIN a run begins (``run``, ``batch submit``), for CONTINUE the state is
    used as the job left it (``batch collect``) — see :mod:`pipeline.state`. ``source`` is an input
    already opened (the Python API's in-memory tables); else the job's input file is opened. Without
    ``check_overwrite`` the output file is not looked at (an in-memory run writes none).
    """
    source = source or open_source(job.input_path, encoding=job.encoding,
                                   null_values=job.null_values).with_text_columns(
        [*Template(job.template or "").columns, *Template(job.system or "").columns,
         *([job.messages_column] if job.messages_column else []), *job.required_columns])
    if source.columns:  # an empty file has no columns to check (and no rows to send)
        check_columns(job, source.columns)
    output_schema(source.schema, job.column_prefix, job.choices_per_request, job.output)
    prices = load_prices(job.prices_file, job.price_overrides)
    warnings, notes = [], []
    if source.num_rows == 0:
        warnings.append(f"the input {job.input_path} has no rows: nothing to send, the output will be empty")
    if prices.resolve(job.model) is None:
        warnings.append(f"no price known for model {job.model!r}: cost_usd will be null (unknown); "
                        "add it with a [prices] table or prices_file")
    elif not job.local and not prices.has_tier(job.model, job.service_tier):
        warnings.append(f"no {job.service_tier} price known for model {job.model!r}: cost_usd will be null "
                        f"(unknown) for requests served in that tier; add {job.service_tier}_input and "
                        f"{job.service_tier}_output with a [prices] table or prices_file")
    if job.max_cost_usd is not None:  # its errors (unknown price or output bound) before any request
        SpendCap.for_job(job, prices)
    if not use_state:
        if check_overwrite:
            check_output(job.output_path, job.overwrite)
        return Prepared(job, source, prices, tuple(warnings))
    store = open_state(state_dir(job), fingerprint(job, source.digest()), fresh=fresh, purpose=purpose)
    try:
        # an output from an earlier run of this job's state is its own: resuming, starting afresh on
        # purpose or the next night's input replaces it; anything else needs --overwrite
        if check_overwrite:
            check_output(job.output_path, job.overwrite or store.had_state)
            remove_stale_temp(job.output_path)
        if purpose == BEGIN:
            store.begin(source.num_rows)
    except BaseException:
        store.close()
        raise
    if store.resumed and purpose == BEGIN:
        notes.append(resume_note(store, source.num_rows, retry_errors))
    return Prepared(job, source, prices, tuple(warnings), store, tuple(notes))


def resume_note(store: StateStore, rows: int, retry_errors: bool) -> str:
    """What a resumed run takes from the journal and what it sends again, counted by kind."""
    counts = store.row_counts()
    ok, refused, failed = counts.get(STATUS_OK, 0), counts.get(STATUS_REFUSED, 0), counts.get(STATUS_ERROR, 0)
    transient = counts.get(TRANSIENT, 0)
    kinds = [f"{ok:,} ok"] + ([f"{refused:,} refused"] if refused else []) + [f"{failed:,} failed permanently"]
    kept = ("--retry-errors: the refused and permanently failed ones will be sent again"
            if retry_errors else "finished rows will not be sent again")
    return (f"resuming: {ok + refused + failed:,} of {rows:,} rows finished ({', '.join(kinds)}); "
            f"{transient:,} failed transiently and will be sent again; {kept} (state in {store.directory})")


def earlier_spend(store: StateStore | None) -> Spend | None:
    """What earlier runs of this job spent (None on its first run): the totals the state keeps, or
    for a state that holds none (batch mode, an older version), what its journaled rows cost."""
    if store is None or not store.resumed:
        return None
    return stored_spend(store)


def stored_spend(store: StateStore) -> Spend:
    """What the runs a state holds spent, whether or not this run resumes from it."""
    totals = store.totals()
    if totals is not None:
        return Spend.from_json(totals)
    tally = Tally(rows_total=0, discarded_cost_usd=store.discarded_cost_usd())  # batch replies discarded
    for result in store.journaled_results():
        tally.add(result)
    return tally.spend(0.0)


def check_columns(job: Job, columns: list[str]) -> None:
    """Every column the job names exists in the input; InputError naming the first that does not."""
    if job.template is not None:
        Template(job.template).check_columns(columns)
    if job.system is not None:
        Template(job.system).check_columns(columns, what="system prompt")
    for what, names in (("messages_column", [job.messages_column] if job.messages_column else []),
                        ("required_columns", job.required_columns)):
        missing = [name for name in names if name not in columns]
        if missing:
            raise InputError(f"{what} names column {missing[0]!r}, which the input lacks; "
                             f"the input's columns are: {', '.join(columns)}")


async def run_job(
    job: Job,
    *,
    prepared: Prepared | None = None,
    http: httpx.AsyncClient | None = None,
    seams: Seams = REAL_SEAMS,
    progress_mode: str = "quiet",
    handle_signals: bool = False,
    fresh: bool = False,
    retry_errors: bool = False,
    grace_s: float = GRACE_S,
    sink: TableSink | None = None,
    stop: StopSwitch | None = None,
    shared: Shared = Shared(),
) -> RunReport:
    """Run ``job`` end to end and return its report (the summary and the exit code).

    With ``handle_signals``, SIGINT/SIGTERM stop the run; requests in flight get
    ``min(grace_s, timeout)`` seconds to finish. Raises :class:`~pipeline.errors.OutputError` when
    the output cannot be written (finished rows stay in the journal). With ``sink`` the output goes
    there (and no file is written: neither output nor summary); ``stop`` lets another thread stop
    the run as a signal does; ``shared`` is what a part of a cluster's job shares with the others.
    """
    prepared = prepared or prepare(job, fresh=fresh, retry_errors=retry_errors)
    try:
        grace_s = min(job.limits.timeout_s, grace_s)
        return await _run_prepared(job, prepared, http, seams, progress_mode, grace_s, handle_signals,
                                   retry_errors, sink, stop, shared)
    finally:
        if prepared.store is not None:
            prepared.store.close()


async def _run_prepared(job, prepared, http, seams, progress_mode, grace_s, handle_signals, retry_errors,
                        sink=None, stop=None, shared=Shared()) -> RunReport:
    source = prepared.source
    tally = Tally(rows_total=source.num_rows)
    schema = output_schema(source.schema, job.column_prefix, job.choices_per_request, job.output)
    own_http = http is None
    http = http or make_http_client(job.limits.concurrency, job.limits.timeout_s, job.endpoint.proxy)
    to_file = sink is None
    sink = sink or ParquetSink(job.output_path, schema, job.choices_per_request, job.output)
    cache = ResponseCache(job.cache_dir) if job.cache and job.cache_dir else None
    reuse = Reuse(store=prepared.store, cache=cache, retry_errors=retry_errors, dedupe=job.dedupe)
    counter = (token_counter(job) if job.limits.tokens_per_minute or job.max_cost_usd is not None or job.local
               else None)
    earlier = earlier_spend(prepared.store)
    runner = Runner(job, source, sink, ChatClient(http, job.endpoint, job.limits.timeout_s),
                    prepared.prices, tally, seams, reuse, counter, shared.cap or _spend_cap(job, prepared, earlier),
                    lease=shared.lease)
    progress = Progress(tally, mode=progress_mode, interval_s=job.progress_interval_s,
                        limits=runner.budget.describe)
    started_at, started = _now(), seams.clock()

    def job_totals() -> str:
        this = tally.spend(seams.clock() - started)
        return (earlier.plus(this) if earlier is not None else this).to_json()

    if prepared.store is not None:
        prepared.store.track_totals(job_totals)
    watcher = asyncio.create_task(shared.watch(runner)) if shared.watch else None  # first: before any send
    ticker = asyncio.create_task(progress.run())
    # signals stay handled until the output is in place: a stop during the final write changes nothing
    stop = stop or StopSwitch()
    stop.attach(runner, grace_s)
    undo_signals = _install_signals(stop) if handle_signals else (lambda: None)
    outcome = "crashed"
    try:
        try:
            await runner.run()
            outcome = "stopped" if runner.stopping else ("failed" if tally.errors or tally.statuses["refused"] else "ok")
        finally:
            ticker.cancel()
            if watcher is not None:
                watcher.cancel()
            progress.close(outcome, runner.stop_reason)
            if prepared.store is not None:
                prepared.store.set_meta({TOTALS_KEY: job_totals()})
            if cache is not None:
                cache.close()
            if own_http:
                await http.aclose()
        exit_code = _exit_code(runner, tally)
        summary = tally.summary(elapsed_s=seams.clock() - started, earlier=earlier, extra=_run_facts(
            job, prepared, runner, started_at, exit_code))
        text = redact(to_json(summary), job.endpoint.secrets)
        sink.commit({SUMMARY_KEY: text.encode()})
        summary_path = job.output_path.with_name(job.output_path.name + ".summary.json") if to_file else None
        if summary_path is not None:
            _write_summary(summary_path, text)
    except BaseException:
        sink.discard()
        raise
    finally:
        undo_signals()
        stop.detach()
    if prepared.store is not None:
        prepared.store.set_meta({"complete": "true" if not runner.stopping else "false"})
    return RunReport(summary, exit_code, job.output_path, summary_path, prepared.warnings)


async def write_report(job: Job, prepared: Prepared, started: float, seams: Seams, *, extra: dict,
                       unanswered: Callable[[int], RowResult | None]) -> RunReport:
    """Write the output from the journal alone (``batch collect``): journaled rows as they are,
    skipped rows skipped, the rest explained by ``unanswered`` or marked not sent. The job is
    complete when no row is left without its final answer."""
    source, store = prepared.source, prepared.store
    tally = Tally(rows_total=source.num_rows, discarded_cost_usd=store.discarded_cost_usd())
    unfinished = 0
    sink = ParquetSink(job.output_path, output_schema(source.schema, job.column_prefix, job.choices_per_request,
                                                      job.output), job.choices_per_request, job.output)
    renderer = RowRenderer.for_job(job)
    try:
        start = 0
        for batch in source.batches(CHUNK_ROWS):
            done = store.results_between(start, start + batch.num_rows, finished_only=False)
            results = []
            for index, item in enumerate(renderer.render_batch(batch)):
                row = start + index
                result = done.get(row) or (item if isinstance(item, RowResult) else None)
                if result is None:
                    unfinished += 1
                    result = unanswered(row) or not_sent_result("not sent: the row is in no batch")
                tally.add(result)
                results.append(result)
            await asyncio.to_thread(sink.write, batch, results)
            start += batch.num_rows
    except BaseException:
        sink.discard()
        raise
    exit_code = EXIT_ROW_ERRORS if tally.errors or tally.statuses["refused"] else EXIT_OK
    summary = tally.summary(elapsed_s=seams.clock() - started, extra={
        "model": job.model, **run_date(job), "input": str(job.input_path), "output": str(job.output_path),
        "finished_at": _now(),
        "exit_code": exit_code, "prices": "batch", "prices_as_of": prepared.prices.as_of,
        "state_dir": str(store.directory), "rows_unfinished": unfinished, "chatbatch_version": __version__,
        **job_facts(job), **extra})
    text = redact(to_json(summary), job.endpoint.secrets)
    sink.commit({SUMMARY_KEY: text.encode()})
    summary_path = job.output_path.with_name(job.output_path.name + ".summary.json")
    _write_summary(summary_path, text)
    store.set_meta({"complete": "false" if unfinished else "true"})
    return RunReport(summary, exit_code, job.output_path, summary_path, prepared.warnings)


def _spend_cap(job: Job, prepared: Prepared, earlier: Spend | None) -> SpendCap | None:
    """The cost cap, starting from everything earlier runs of the job were billed (kept replies,
    refused and invalid ones, replies discarded for validation)."""
    if job.max_cost_usd is None:
        return None
    return SpendCap.for_job(job, prepared.prices, earlier.billed_usd if earlier is not None else Decimal(0))


def _api_equivalent(job: Job, prepared: Prepared, runner: Runner) -> dict:
    """What the same run would have cost on the job's API model, from OpenAI's token counts."""
    tally = runner.tally
    usage = Usage(prompt_tokens=tally.api_prompt_tokens, completion_tokens=tally.api_completion_tokens)
    cost = prepared.prices.cost_usd(job.model, usage)
    return {"model": job.model, "prompt_tokens": tally.api_prompt_tokens,
            "completion_tokens": tally.api_completion_tokens,
            "prompt_tokens_exact": runner.counter.exact if runner.counter else False,
            "cost_usd": float(cost) if cost is not None else None}


def _exit_code(runner: Runner, tally: Tally) -> int:
    if runner.fatal is not None:
        return EXIT_ABORTED
    if runner.stopping:
        return EXIT_INTERRUPTED
    return EXIT_ROW_ERRORS if tally.errors or tally.statuses["refused"] else EXIT_OK


def run_date(job: Job) -> dict[str, str]:
    """The summary's ``date``: the day ``{date}`` in the job's paths stood for (see pipeline.dates)."""
    return {"date": job.run_date.isoformat()} if job.run_date is not None else {}


def job_facts(job: Job) -> dict:
    """What a reader of the output needs from the job (the run report): its name and its columns."""
    spec = job.output
    metadata = job.params.get("metadata")
    name = metadata.get("job") if isinstance(metadata, dict) else None
    if not name and job.source.endswith(".toml"):  # the job file's name
        name = Path(job.source).stem
    return {"job": name or None, "column_prefix": job.column_prefix,
            "structured": None if spec is None else {
                "labels": list(spec.labels) if spec.labels is not None else None,
                "columns": [column for column, _ in structured_columns(spec)]}}


def _run_facts(job: Job, prepared: Prepared, runner: Runner, started_at: str, exit_code: int) -> dict:
    return {
        **job_facts(job),
        "model": job.served_model or job.model,
        **({"local": True, "local_model": str(job.local_model)} if job.local else {}),
        **run_date(job),
        "input": str(job.input_path),
        "output": str(job.output_path),
        "started_at": started_at,
        "finished_at": _now(),
        "state_dir": str(prepared.store.directory) if prepared.store else None,
        "exit_code": exit_code,
        "stopped": runner.stop_reason,
        "stopped_by": runner.fatal.error_type if runner.fatal is not None else None,
        "max_cost_usd": job.max_cost_usd,
        **({"api_equivalent": _api_equivalent(job, prepared, runner)} if job.local else {}),
        "prices_as_of": prepared.prices.as_of,
        "chatbatch_version": __version__,
    }


SIGNAL_REASONS = {signal.SIGINT: "interrupted (SIGINT)", signal.SIGTERM: "terminated (SIGTERM)"}


class StopSwitch:
    """Stops a run as Ctrl-C does, from a signal handler or from any thread (the Python API).

    The first stop stops dispatching and gives requests in flight ``grace_s`` to finish; a second
    stop, or the end of the grace, cancels them. A stop before the run starts stops it as soon as it
    does; one after the run has finished (while the output is written) changes nothing. ``say``
    tells the user a stop began (default: a line on stderr).
    """

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self._say = say or (lambda text: sys.stderr.write(f"\nchatbatch: {text}\n"))  # the CLI's log
        self._lock = threading.RLock()  # re-entrant: a signal handler may press while this thread holds it
        self._runner: Runner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grace_s = GRACE_S
        self._early: list[str] = []
        self._timers: list[asyncio.TimerHandle] = []

    def attach(self, runner: Runner, grace_s: float) -> None:
        """Called by run_job in the run's event loop."""
        with self._lock:
            self._runner, self._loop, self._grace_s = runner, asyncio.get_running_loop(), grace_s
            early, self._early = self._early, []
        for reason in early:
            self.stop(reason)

    def detach(self) -> None:
        with self._lock:
            self._runner = self._loop = None
        for timer in self._timers:
            timer.cancel()

    def press(self, reason: str) -> None:
        """Stop the run, from any thread."""
        with self._lock:
            if self._loop is None:
                self._early.append(reason)
                return
            self._loop.call_soon_threadsafe(self.stop, reason)

    def stop(self, reason: str) -> None:
        """Stop the run, in its event loop (what a signal handler calls)."""
        runner = self._runner
        if runner is None or runner.finished:
            return
        first = not runner.stopping
        runner.request_stop(reason)
        if first:
            self._say(f"{reason}: sending no more requests; those in flight get up to "
                      f"{self._grace_s:g}s to finish (signal again to cancel them)")
            self._timers.append(asyncio.get_running_loop().call_later(
                self._grace_s, lambda: runner.request_stop(reason)))


def _install_signals(switch: StopSwitch) -> Callable[[], None]:
    """SIGINT/SIGTERM press ``switch``: a first signal stops the run gracefully, a second cancels."""
    loop = asyncio.get_running_loop()
    names = SIGNAL_REASONS
    for signum, reason in names.items():
        loop.add_signal_handler(signum, switch.stop, reason)

    def undo() -> None:
        for signum in names:
            loop.remove_signal_handler(signum)
    return undo


def _write_summary(path: Path, text: str) -> None:
    try:
        write_text_atomically(path, text + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_summary(path: Path) -> dict[str, Any]:
    """The summary of a finished run, from the output's metadata (or the JSON beside it)."""
    from .sinks import read_summary_metadata

    try:
        raw = read_summary_metadata(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if raw is None:
        beside = path.with_name(path.name + ".summary.json")
        if not beside.is_file():
            raise InputError(f"{path} holds no chatbatch summary (was it written by chatbatch run?)")
        raw = beside.read_bytes()
    return json.loads(raw)
