"""The ``chatbatch`` command line: a thin shell over :mod:`pipeline.run`.

Reads the environment (the only place that does), turns flags into job overrides, picks the
progress display, prints the summary, and maps outcomes to the documented exit codes:

====  =============================================================
0     every row ok (skipped rows are fine)
1     the run finished but some rows failed (see status/error_type)
2     bad job, flag or input: nothing was sent
3     run aborted (auth, quota, cost cap, fail fast): partial output written
4     internal error (a bug), or the output could not be written (disk full)
130   interrupted (Ctrl-C / SIGTERM): partial output written
5     batch status / collect: batches still running
====  =============================================================

``batch`` subcommands: ``submit`` 0 (also with nothing to send, said on stderr), 2, 3; ``status``
0 or 5; ``collect`` 0, 1 (rows failed or still unanswered) or 5; ``cancel`` 0, or 1 when a cancel
was refused (the other batches are still cancelled). 2, 3, 4 and 130 as above for all of them.

Every message goes through one :class:`~pipeline.logs.Log` (redacted; ``--log-format json``: one JSON
object a line, click's usage errors included; text lines are timestamped when stderr is not a
terminal).

``CHATBATCH_STOP_GRACE_S`` sets how long requests in flight may finish after the first Ctrl-C /
SIGTERM (default 10 s, never more than the job's ``timeout``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import click

# Arrow's allocator is chosen when pyarrow is first imported (by the modules below). Its default,
# mimalloc, keeps freed buffers for reuse: ~25 MB more peak RSS on 20k rows (bench/README.md,
# start-up and memory). The system allocator gives them back; the output's buffers are few and
# large, so it costs no speed. A user's own ARROW_DEFAULT_MEMORY_POOL still wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from .logs import JSON, TEXT, Log
from .redaction import redact, url_secrets
from .local import local_job
from .errors import ChatbatchError, JobError, OutputError, RequestFailed
from .jobspec import build_job
from .options import FLAG_OPTIONS, Option
from .pricing import load_prices
from .run import (EXIT_ABORTED, EXIT_BAD_JOB, EXIT_INTERRUPTED, EXIT_ROW_ERRORS, GRACE_S, RunReport,
                  SIGNAL_REASONS, StopSwitch, prepare, read_summary, run_job, token_counter)
from .state import BEGIN, CONTINUE, INSPECT
from .summary import format_summary

if TYPE_CHECKING:
    from .clusterlimit import ClusterStop

EXIT_INTERNAL = 4
EXIT_PENDING = 5  # batch collect/status: batches still running
ABORT_ADVICE = {
    "auth_failed": "the endpoint refused the API key: check OPENAI_API_KEY (or the variable named by "
                   "api_key_env) and, for Azure, the resource's key",
    "max_cost_reached": "raise max_cost (--max-cost) and run the same command again to continue; "
                        "finished rows will not be sent (or paid for) again",
    "journal_failed": "free disk space or fix the state folder's permissions, then run the same command "
                      "again; rows the message counts as not journaled will be sent (and paid for) again",
    "insufficient_quota": "the account is out of credit or over its spending limit: add credit or raise "
                          "the limit on the provider's billing page, then run the job again",
    "connection_error": "check base_url (host and port), that the server is running and reachable from "
                        "here (firewall, proxy, VPN), then run the same command again",
    "timeout": "the endpoint answered nothing within the timeout: check base_url and the server, or "
               "raise timeout (--timeout), then run the same command again",
    "invalid_output": "check output_schema (or labels), structured_mode and that the model supports "
                      "structured output, then run the job again",
}
GRACE_ENV = "CHATBATCH_STOP_GRACE_S"


def _kv_pairs(ctx, param, values) -> dict[str, str] | None:
    pairs = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx=ctx, param=param)
        pairs[key] = value
    return pairs or None


def _json_pairs(ctx, param, values) -> dict[str, Any] | None:
    pairs = _kv_pairs(ctx, param, values) or {}
    for key, value in pairs.items():
        try:
            pairs[key] = json.loads(value)
        except json.JSONDecodeError:
            pass  # a plain string
    return pairs or None


def _json_object(ctx, param, value) -> dict | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", ctx=ctx, param=param) from exc
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object", ctx=ctx, param=param)
    return parsed


def _labels(ctx, param, values) -> list[str] | None:
    labels = [label.strip() for value in values or () for label in value.split(",") if label.strip()]
    return labels or None


def _split_commas(ctx, param, values) -> list[str] | None:
    items = [item.strip() for value in values or () for item in value.split(",") if item.strip()]
    return items or None


def _schema(ctx, param, value) -> dict | str | None:
    if value is None or not value.lstrip().startswith("{"):
        return value  # a path (or nothing)
    return _json_object(ctx, param, value)


_PARSERS = {"json": _json_object, "pairs": _kv_pairs, "json_pairs": _json_pairs, "labels": _labels,
            "schema": _schema, "commas": _split_commas}
_PATHS = {"file": click.Path(dir_okay=False), "folder": click.Path(file_okay=False), "path": click.Path()}


def _click_option(option: Option):
    """The ``click.option`` of one line of the option table (pipeline/options.py)."""
    kwargs: dict[str, Any] = {"help": option.help}
    flag_type = option.kind.flag_type
    if option.multiple:
        kwargs["multiple"] = True
    if option.parse:
        kwargs["callback"] = _PARSERS[option.parse]
    if option.choices:
        kwargs["type"] = click.Choice(list(option.choices))
    elif flag_type == "switch":
        kwargs.update({"default": None} if "/" in option.flag_name else {"is_flag": True, "default": None})
    elif flag_type in ("int", "float"):
        bounds = option.bounds if option.flag_bounds is True else option.flag_bounds
        if not bounds:
            kwargs["type"] = int if flag_type == "int" else float
        elif flag_type == "int":
            kwargs["type"] = click.IntRange(*bounds)
        else:
            kwargs["type"] = click.FloatRange(*bounds, min_open=option.positive)
    elif flag_type in _PATHS:
        kwargs["type"] = _PATHS[flag_type]
    return click.option(option.flag_name, **kwargs)


def _with_run_options(func):
    for option in reversed(FLAG_OPTIONS):
        func = _click_option(option)(func)
    return func


def _overrides(options: dict[str, Any]) -> dict[str, Any]:
    overrides = {k: v for k, v in options.items() if v not in (None, ())}
    if "stop" in overrides:
        stops = list(overrides["stop"])
        overrides["stop"] = stops[0] if len(stops) == 1 else stops
    if "param" in overrides:
        overrides["extra_body"] = overrides.pop("param")
    overrides.pop("api_key", None)
    return overrides


class _Group(click.Group):
    """The command group; with ``--log-format json`` anywhere in the arguments, click's own usage
    errors (a bad flag value) are a JSON line too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["log_json"] = any(arg == "--log-format=json" or (arg == "--log-format" and following == "json")
                                   for arg, following in zip(args, [*args[1:], None]))
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if not ctx.meta.get("log_json"):
                raise
            Log(JSON).error("error", exc.format_message(), exit_code=exc.exit_code)
            sys.exit(exc.exit_code)


def _log(flags: dict[str, Any]) -> Log:
    """The log of a command taking the run flags (``--log-format``), redacting every secret known yet."""
    return Log(flags.pop("log_format") or TEXT, secrets=known_secrets(os.environ, flags))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chatbatch", prog_name="chatbatch")
def main() -> None:
    """Send every row of a table to a Chat Completions endpoint and write the replies to Parquet."""


@main.command()
@click.argument("job_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_with_run_options
def run(job_file: Path | None, **options: Any) -> None:
    """Run a job: JOB_FILE (TOML) and/or flags; flags win over the file's keys."""
    api_key = options.get("api_key")
    fresh, retry_errors = bool(options.pop("fresh")), bool(options.pop("retry_errors"))
    dask_address = options.pop("dask")
    log = _log(options)
    switch = _stop_on_signals(log, dask=bool(dask_address))
    with _reported(log, "interrupted before the run started: nothing was sent"):
        job = build_job(job_file, _overrides(options), os.environ, api_key=api_key)
        log.secrets.extend(job.endpoint.secrets)
        if dask_address and job.report:
            raise JobError("--report (report = true) is not available with --dask yet: run "
                           "'chatbatch report' on a single Parquet file instead")
        with ExitStack() as stack:
            if dask_address:
                report = _run_dask(job, dask_address, fresh, retry_errors, log, switch)
            else:
                if job.local:
                    job = stack.enter_context(local_job(job, os.environ, log.secrets))
                report = _run(job, fresh, retry_errors, log, switch)
    summary = report.summary
    if not job.quiet:
        _show_summary(report, log)
    if job.report:
        _write_run_report(report.output_path, job.quiet, log)
    stop = {"stopped": summary.get("stopped"), "exit_code": report.exit_code, "output": str(report.output_path)}
    if report.exit_code == EXIT_ABORTED:
        advice = ABORT_ADVICE.get(summary.get("stopped_by") or "",
                                  "no retry can fix this: correct the job and run it again")
        log.error("aborted", f"run aborted: {summary['stopped']}\n  what to do: {advice}.\n"
                  f"  Rows finished before the stop were written to {report.output_path}; rows "
                  "not sent have error_type 'not_sent'. Run the same command again to resume: "
                  "finished rows will not be sent again.", stopped_by=summary.get("stopped_by"), **stop)
    elif summary.get("stopped"):
        log.warning("stopped", f"stopped: {summary['stopped']}; rows finished were written to "
                    f"{report.output_path}; rows not sent have error_type 'not_sent'.\n"
                    "  To resume, run the same command again: finished rows will not be sent again.", **stop)
    sys.exit(report.exit_code)


def _show_summary(report: RunReport, log: Log, as_json: bool = False) -> None:
    """The summary on stdout: the table and where the files are, indented JSON (``--json``), or with
    ``--log-format json`` one JSON line (event ``summary``) holding it all."""
    summary, paths = report.summary, {"output": str(report.output_path), "summary_path": str(report.summary_path)}
    if log.json:
        log.result("summary", "", f"{summary.get('rows', 0):,} rows written to {report.output_path}",
                   exit_code=report.exit_code, **paths, summary=summary)
        return
    table = json.dumps(summary, indent=2) if as_json else format_summary(summary)
    log.result("summary", f"{table}\noutput: {report.output_path}\nsummary: {report.summary_path}")


@main.command()
@click.argument("job_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_with_run_options
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def estimate(job_file: Path | None, as_json: bool, **options: Any) -> None:
    """Dry run: count tokens and cost for JOB_FILE and/or flags, sending nothing."""
    for flag in ("fresh", "retry_errors"):
        options.pop(flag)
    dask_address = options.pop("dask")
    log = _log(options)
    with _reported(log, "interrupted"):
        if dask_address:
            raise JobError("'estimate' does not take --dask (it sends nothing)")
        job = build_job(job_file, _overrides(options), os.environ, api_key=options.get("api_key"),
                        require_key=False)
        log.secrets.extend(job.endpoint.secrets)
        prepared = prepare(job, use_state=False, check_overwrite=False)
        from .estimate import estimate as estimate_job, format_estimate

        figures = estimate_job(job, prepared.source, prepared.prices, token_counter(job))
    for warning in prepared.warnings:
        log.warning("warning", warning)
    click.echo(redact(json.dumps(figures, indent=2) if as_json else format_estimate(figures), log.secrets))


@main.command()
@click.option("--prices-file", type=click.Path(dir_okay=False, path_type=Path),
              help="A JSON/TOML price table adding to the shipped one.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def prices(prices_file: Path | None, as_json: bool) -> None:
    """List the price table (USD per 1M tokens) with its date and source."""
    try:
        table = load_prices(prices_file)
    except JobError as exc:
        _fail(str(exc), EXIT_BAD_JOB, Log())
    rows = {name: {f: (float(v) if v is not None else None) for f, v in vars(price).items()}
            for name, price in sorted(table.models.items())}
    if as_json:
        click.echo(json.dumps({"as_of": table.as_of, "source": table.source, "unit": "USD per 1M tokens",
                               "models": rows}, indent=2))
        return
    click.echo(f"prices as of {table.as_of}, USD per 1M tokens\nsource: {table.source}\n")
    click.echo(f"{'model':<22}{'input':>9}{'cached':>9}{'output':>9}{'batch in':>10}{'batch out':>11}")
    for name, price in rows.items():
        cells = [price[f] for f in ("input", "cached_input", "output", "batch_input", "batch_output")]
        click.echo(f"{name:<22}" + "".join(f"{c:>{w}.3f}" if c is not None else f"{'-':>{w}}"
                                             for c, w in zip(cells, (9, 9, 9, 10, 11))))


@main.group()
def batch() -> None:
    """The same job through OpenAI's Batch API: half the price, answers within 24 hours."""


def _batch_command(name: str, help_text: str, action, *, purpose: str, empty: str, takes: tuple = (),
                   options: tuple = ()) -> None:
    """Register ``batch NAME``: JOB_FILE and the run flags, then ``action(job, state, http, **options)``.

    ``purpose`` says how the job's state is opened (:mod:`pipeline.state`); ``empty`` is said on
    stderr when there was nothing to do; ``takes`` names which of ``fresh`` / ``retry_errors`` apply.
    """
    @click.argument("job_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
    @_with_run_options
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def command(job_file: Path | None, as_json: bool, **flags: Any) -> None:
        kwargs = {key: flags.pop(key) for key in extra}
        resume = {key: bool(flags.pop(key)) for key in ("fresh", "retry_errors")}
        dask = flags.pop("dask")
        log = _log(flags)
        with _reported(log, "interrupted"):
            if dask:
                raise JobError(f"'batch {name}' does not take --dask")
            refused = [f"--{key.replace('_', '-')}" for key, given in resume.items() if given and key not in takes]
            if refused:
                raise JobError(f"'batch {name}' does not take {' or '.join(refused)}")
            job = build_job(job_file, _overrides(flags), os.environ, api_key=flags.get("api_key"))
            log.secrets.extend(job.endpoint.secrets)
            if resume["retry_errors"]:
                kwargs["retry_errors"] = True
            result = _run_batch_action(job, action, purpose, resume["fresh"], kwargs, log)
        code = _show_batch_result(name, result, as_json, job.quiet, empty, log)
        if isinstance(result, RunReport) and job.report:
            _write_run_report(result.output_path, job.quiet or as_json, log)
        sys.exit(code)

    extra = {option.name for option in options}
    for option in reversed(options):
        command = click.option(*option.opts, **option.kwargs)(command)
    batch.command(name=name, help=help_text)(command)


def _run_batch_action(job, action, purpose: str, fresh: bool, kwargs: dict, log: Log):
    """Open the job's state as ``purpose`` says, run ``action`` with an HTTP client, close the state."""
    if purpose == INSPECT:
        state = store = _batch_mode().open_batches(job)
    else:
        state = prepare(job, fresh=fresh, purpose=purpose)
        store = state.store
        for warning in state.warnings:
            log.warning("warning", warning)
    try:
        return asyncio.run(_with_http(action, job, state, **kwargs))
    finally:
        if store is not None:
            store.close()


async def _with_http(action, job, state, **kwargs):
    import httpx

    async with httpx.AsyncClient(timeout=300.0) as http:
        return await action(job, state, http, **kwargs)


def _show_batch_result(name: str, result, as_json: bool, quiet: bool, empty: str, log: Log) -> int:
    """Print a batch command's result (redacted); return its exit code (see the module docstring)."""
    if isinstance(result, RunReport):
        return _show_collected(result, as_json, quiet, log)
    if as_json:
        log.result("batches", json.dumps(result, indent=2), f"{len(result)} batch(es)", batches=result)
    else:
        for item in result:
            log.result("batch", _batch_line(item), batch=item)
    if not result:
        log.info("note", empty)
    if name == "cancel":
        return EXIT_ROW_ERRORS if any(item["cancel"] == "failed" for item in result) else 0
    from .batchapi import TERMINAL as BATCH_ENDED

    running = [item for item in result if item["status"] not in BATCH_ENDED]
    if name == "collect":
        log.info("note", f"{len(running)} batch(es) still running: collect again later, or with --wait",
                 running=len(running))
    return EXIT_PENDING if running and name in ("status", "collect") else 0


def _batch_line(item: dict) -> str:
    parts = [f"{item['batch_id']}  {item['status']:<11} rows {item.get('first_row', '?')}-{item.get('last_row', '?')}"]
    counts = item.get("request_counts") or {}
    if counts:
        parts.append(f"requests {counts.get('completed', 0)}/{counts.get('total', 0)} done, "
                     f"{counts.get('failed', 0)} failed")
    if item.get("collected"):
        parts.append("collected")
    if "cancel" in item:
        parts.append(f"cancel {item['cancel']}" + (f": {item['reason']}" if item.get("reason") else ""))
    if item.get("errors"):
        parts.append(f"errors: {item['errors']}")
    return "  ".join(parts)


def _show_collected(report: RunReport, as_json: bool, quiet: bool, log: Log) -> int:
    summary = report.summary
    for batch_id, errors in (summary.get("batch_errors") or {}).items():
        log.warning("batch_failed", f"batch {batch_id} failed: {errors}", batch_id=batch_id, errors=errors)
    if summary.get("rows_unfinished"):
        log.warning("unfinished", f"{summary['rows_unfinished']:,} rows have no final answer yet (their batch "
                    "expired, was cancelled or failed, or the reply was invalid and is to be retried; see "
                    "error_type): 'chatbatch batch submit' or 'chatbatch run' sends them again",
                    rows_unfinished=summary["rows_unfinished"])
    if not quiet:
        _show_summary(report, log, as_json)
    return report.exit_code


def _with_advice(message: str, error_type: str | None) -> str:
    advice = ABORT_ADVICE.get(error_type or "")
    return f"{message}\n  what to do: {advice}." if advice else message


@dataclass(frozen=True)
class _Option:
    name: str
    opts: tuple
    kwargs: dict


async def _collect(job, prepared, http, wait: bool, poll_interval: float):
    return await _batch_mode().collect(job, prepared, http, wait=wait, poll_s=poll_interval)


def _batch_mode():
    """:mod:`pipeline.batch`, imported by the batch commands only (it brings httpx)."""
    from . import batch

    return batch


async def _submit(*args, **kwargs):
    return await _batch_mode().submit(*args, **kwargs)


async def _status(*args, **kwargs):
    return await _batch_mode().status(*args, **kwargs)


async def _cancel(*args, **kwargs):
    return await _batch_mode().cancel(*args, **kwargs)


_batch_command("submit", "Upload the job's requests and create its batches (never twice).", _submit,
               purpose=BEGIN, takes=("fresh", "retry_errors"),
               empty="nothing to send: every row already has its final answer or is skipped")
_batch_command("status", "Show each batch's state, request counts and errors.", _status,
               purpose=INSPECT, empty="this job has no batches")
_batch_command("collect", "Download results and write the output (--wait to wait for them).", _collect,
               purpose=CONTINUE, empty="", options=(
    _Option("wait", ("--wait",), dict(is_flag=True, help="Poll (with backoff) until every batch has ended.")),
    _Option("poll_interval", ("--poll-interval",), dict(type=click.FloatRange(0), default=5.0,
                                                        help="First wait between polls in seconds [5]."))))
_batch_command("cancel", "Cancel the job's batches that are still running.", _cancel,
               purpose=INSPECT, empty="this job has no open batches to cancel")


@main.command()
@click.argument("output", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def summary(output: Path, as_json: bool) -> None:
    """Print the summary stored in an OUTPUT Parquet file written by chatbatch run."""
    try:
        data = read_summary(output)
    except JobError as exc:
        _fail(str(exc), EXIT_BAD_JOB, Log())
    click.echo(json.dumps(data, indent=2) if as_json else format_summary(data))


@main.command()
@click.argument("output", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output-html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the page [OUTPUT.report.html].")
@click.option("--compare", "previous", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An earlier output of the job (e.g. yesterday's): its figures beside today's.")
def report(output: Path, html_path: Path | None, previous: Path | None) -> None:
    """Write a self-contained HTML page of charts for an OUTPUT Parquet file (the report extra)."""
    log = Log(secrets=known_secrets(os.environ, {}))
    with _reported(log, "interrupted"):
        write_report = _report_writer()
        try:
            path = write_report(output, html_path, compare_with=previous, secrets=log.secrets)
        except OutputError as exc:  # not a run's output: no journal to speak of
            _fail(str(exc), EXIT_INTERNAL, log)
    log.result("report", f"report: {path}", report=str(path))


def _report_writer():
    """:func:`pipeline.reportpage.write_report` (matplotlib, the report extra, is loaded only now)."""
    from .report import page_writer

    return page_writer()


def _write_run_report(output: Path, quiet: bool, log: Log) -> None:
    """``--report`` after a run: the page of what was done. Its failure is said on stderr and changes
    neither the output (already in place) nor the run's exit code."""
    from .report import write_run_report

    path, problem = write_run_report(output, secrets=log.secrets)
    if problem is not None:
        log.error("report_failed", problem, output=str(output))
    elif not quiet:
        log.result("report", f"report: {path}", f"report written to {path}", report=str(path))


def _stop_on_signals(log: Log, dask: bool = False) -> StopSwitch | ClusterStop:
    """From here on SIGINT/SIGTERM stop the run gracefully, even one that has not started yet: it
    then starts stopped and writes every row (journaled ones as they are, the rest ``not_sent``).
    With ``--dask`` they stop every partition of the job (:class:`~pipeline.clusterlimit.ClusterStop`)."""
    if dask:
        from .clusterlimit import ClusterStop
        switch = ClusterStop()
    else:
        switch = StopSwitch(_say_stopping(log))
    for signum, reason in SIGNAL_REASONS.items():
        signal.signal(signum, lambda _signum, _frame, reason=reason: switch.press(reason))
    return switch


def _say_stopping(log: Log) -> Callable[[str], None]:
    """How a stop that began is told: a warning (``stopping``) in the log."""
    def say(text: str) -> None:
        if not (log.json or log.stamp):
            log.stream.write("\n")  # on a terminal: end the progress bar's line first
        log.warning("stopping", text)
    return say


def _run(job, fresh: bool, retry_errors: bool, log: Log, switch: StopSwitch):
    _pyarrow_without_pandas()
    grace_s = _grace_s()
    prepared = prepare(job, fresh=fresh, retry_errors=retry_errors)
    mode = "quiet" if job.quiet else "json" if log.json else ("bar" if sys.stderr.isatty() else "log")
    for warning in prepared.warnings:
        log.warning("warning", warning)
    for note in prepared.notes:
        if not job.quiet:
            log.info("note", note)
    return asyncio.run(run_job(job, prepared=prepared, progress_mode=mode, handle_signals=True,
                               retry_errors=retry_errors, grace_s=grace_s, stop=switch))


class _NoPandas:
    """An import hook under which ``import pandas`` fails."""

    def find_spec(self, name: str, path=None, target=None):
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError("hidden from pyarrow's pandas checks", name=name)
        return None


def _pyarrow_without_pandas() -> None:
    """Keep pyarrow from importing pandas (a third of a second and ~40 MB) in a run that never uses it.

    The first time ``pa.array`` converts a Python list, pyarrow imports pandas (if installed) just to
    ask whether the list is a pandas object or holds ``pd.NA``. A CLI run never hands pyarrow a
    pandas object, so pyarrow is let to find pandas missing for those checks, once; its explicit
    conversions (``to_pandas``, ``from_pandas``) still import pandas when asked.
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    hook = _NoPandas()
    sys.meta_path.insert(0, hook)
    try:
        pa.array(["", None])  # pyarrow's checks ask for pandas now, and remember the answer
    finally:
        sys.meta_path.remove(hook)


def _grace_s() -> float:
    value = os.environ.get(GRACE_ENV)
    try:
        return GRACE_S if value is None else max(float(value), 0.0)
    except ValueError:
        raise JobError(f"{GRACE_ENV} must be a number of seconds, got {value!r}") from None


def _run_dask(job, address: str, fresh: bool, retry_errors: bool, log: Log, switch: ClusterStop):
    try:
        from .dask import run_cluster
        import distributed  # noqa: F401  (the extra's second half)
    except ImportError as exc:
        raise JobError(f"--dask needs the dask extra: pip install 'chatbatch[dask]' ({exc})") from exc
    echo = None if job.quiet else (lambda line: log.info("progress", line.removeprefix("chatbatch: ")))
    return run_cluster(job, address, fresh=fresh, retry_errors=retry_errors, echo=echo, say=_say_stopping(log),
                       stop=switch, grace_s=_grace_s())


KEY_VARIABLES = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")
URL_VARIABLES = ("OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                 "http_proxy", "ALL_PROXY", "all_proxy")


def known_secrets(env: Mapping[str, str], flags: Mapping[str, Any]) -> list[str]:
    """Every key and URL credential the run may use, known before the job is built.

    The job's own (``job.endpoint.secrets``: the key ``api_key_env`` names in the job file, ...) are
    added once it is built; redacting a key that turns out unused costs nothing.
    """
    keys = [flags.get("api_key"), *(env.get(name) for name in KEY_VARIABLES)]
    if flags.get("api_key_env"):
        keys.append(env.get(flags["api_key_env"]))
    urls = [flags.get("base_url"), *(env.get(name) for name in URL_VARIABLES)]
    return [k for k in keys if k] + [s for url in urls for s in url_secrets(url)]


@contextmanager
def _reported(log: Log, interrupted: str) -> Iterator[None]:
    """The CLI boundary: every failure becomes one redacted line on stderr and its exit code."""
    try:
        yield
    except JobError as exc:
        _fail(str(exc), EXIT_BAD_JOB, log)
    except KeyboardInterrupt:
        _fail(interrupted, EXIT_INTERRUPTED, log)
    except RequestFailed as exc:  # the API refused (auth, quota, ...): said as run says it
        _fail(_with_advice(str(exc), exc.error_type), EXIT_ABORTED, log)
    except OutputError as exc:
        _fail(f"{exc}\n  The run stopped; rows finished before the stop are kept in the job's journal "
              "(the state folder). Fix the cause (e.g. free disk space) and run the same command again: "
              "finished rows will not be sent again.", EXIT_INTERNAL, log)
    except ChatbatchError as exc:
        _fail(str(exc), EXIT_ABORTED, log)
    except (Exception, asyncio.CancelledError) as exc:  # the last resort: never a traceback (secrets)
        _fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL, log)


def _fail(message: str, code: int, log: Log) -> None:
    log.error("error", message, exit_code=code)
    sys.exit(code)
