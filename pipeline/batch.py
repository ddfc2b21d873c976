"""``chatbatch batch``: the same job through OpenAI's Batch API, at half the price, within 24 hours.

* ``submit`` renders every request exactly as ``run`` would (skipped rows stay skipped; rows the
  job's journal already holds are not sent again, nor — with ``retry_errors`` — are only its ok
  rows), writes JSONL (``custom_id`` = ``row-<index>``), splits it into files of at most 50,000
  requests and 200 MB, uploads each (purpose ``batch``), creates a batch per file (endpoint
  ``/v1/chat/completions``, window ``24h``, metadata naming the job) and records each batch id in
  the job's state the moment it exists. Starting a run while batches are open is refused by
  :func:`pipeline.state.open_state`, so nothing is submitted twice. With nothing to send it returns
  ``[]`` and marks the job complete.
* ``status`` asks for each open batch's state, request counts and errors; it reads the state as it
  is (:data:`~pipeline.state.INSPECT`) and never changes whether the job is complete.
* ``collect`` (``--wait`` polls with backoff until every batch has ended) downloads the output and
  error files, maps lines back to rows by ``custom_id``, journals them, and writes the same output
  Parquet and summary as ``run``, costed at Batch prices; the job is then complete when every row
  has its final answer. Error lines (including ``status_code`` 0 style errors) become row errors; a
  reply invalid for the schema while the row has ``validation_retries`` left is counted (with its
  cost) but not journaled, so the next ``submit`` or ``run`` sends the row again. Rows of an
  expired, cancelled or failed batch with no answer are left unanswered (``batch_expired`` /
  ``batch_cancelled`` / ``batch_failed``, with a failed batch's errors) and are not journaled, so
  ``batch submit`` (again) or ``run`` sends them — with the resume state shared, ``run`` never
  re-sends what a batch answered, and ``run --retry-errors`` retries the batch's failed rows.
* ``cancel`` asks each open batch's state and cancels those still running; a cancel the server
  refuses is reported for that batch, and the others go on.

Azure OpenAI's batch routes are not supported yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from .batchapi import MAX_FILE_BYTES, MAX_REQUESTS, TERMINAL, BatchClient, batch_errors, input_line
from .client import MAX_ERROR_CHARS, http_failure, parse_completion
from .errors import JobError, RequestFailed
from .jobspec import Job
from .prompts import RowRenderer
from .records import STATUS_ERROR, RowResult
from .redaction import redact_cut
from .run import REAL_SEAMS, Prepared, RunReport, state_dir, write_report
from .runner import Seams, completion_result
from .state import INSPECT, StateStore, journaled, open_state
from .structured import Validator

POLL_START_S = 5.0
POLL_MAX_S = 300.0
UNANSWERED = {"expired": "batch_expired", "cancelled": "batch_cancelled", "failed": "batch_failed"}
SEND_AGAIN = "'chatbatch batch submit' or 'chatbatch run' sends it again"


@dataclass
class Chunk:
    lines: list[bytes]
    size: int = 0
    first_row: int = -1
    last_row: int = -1


def _client(job: Job, http: httpx.AsyncClient, seams: Seams) -> BatchClient:
    if job.endpoint.azure:
        raise JobError("batch mode does not support Azure OpenAI endpoints yet; use chatbatch run")
    return BatchClient(http, job.endpoint, job.retry, seams.sleep, seams.random)


def open_batches(job: Job) -> StateStore | None:
    """The job's state for ``status`` / ``cancel`` (locked; close it), or None when it has none."""
    directory = state_dir(job)
    if not (directory / "journal.sqlite").is_file():
        return None
    return open_state(directory, None, purpose=INSPECT)


async def submit(job: Job, prepared: Prepared, http: httpx.AsyncClient, seams: Seams = REAL_SEAMS,
                 *, retry_errors: bool = False) -> list[dict]:
    """Upload and create the job's batches; returns them as recorded (``[]``: nothing to send)."""
    store = prepared.store
    client = _client(job, http, seams)
    renderer = RowRenderer.for_job(job)
    name = job.output_path.stem
    chunk, created, start = Chunk([]), [], 0
    for batch in prepared.source.batches(65536):
        done = store.results_between(start, start + batch.num_rows, retry_errors)
        for index, item in enumerate(renderer.render_batch(batch)):
            row = start + index
            if isinstance(item, RowResult) or row in done:
                continue
            line = input_line(f"row-{row}", item[0])
            if chunk.lines and (len(chunk.lines) >= min(MAX_REQUESTS, job.batch_max_requests)
                                or chunk.size + len(line) > MAX_FILE_BYTES):
                created.append(await _send_chunk(client, store, chunk, name, len(created)))
                chunk = Chunk([])
            chunk.lines.append(line)
            chunk.size += len(line)
            chunk.first_row = row if chunk.first_row < 0 else chunk.first_row
            chunk.last_row = row
        start += batch.num_rows
    if chunk.lines:
        created.append(await _send_chunk(client, store, chunk, name, len(created)))
    if not created:  # every row already has its final answer (or is skipped)
        store.set_meta({"complete": "true"})
    return created


async def _send_chunk(client: BatchClient, store, chunk: Chunk, name: str, number: int) -> dict:
    uploaded = await client.upload(f"{name}-{number:04d}.jsonl", b"".join(chunk.lines))
    batch = await client.create(uploaded["id"], {"job": name[:512], "rows": f"{chunk.first_row}-{chunk.last_row}"})
    store.add_batch(batch["id"], uploaded["id"], chunk.first_row, chunk.last_row, len(chunk.lines), batch["status"])
    return {"batch_id": batch["id"], "input_file_id": uploaded["id"], "requests": len(chunk.lines),
            "first_row": chunk.first_row, "last_row": chunk.last_row, "status": batch["status"]}


async def status(job: Job, store: StateStore | None, http: httpx.AsyncClient,
                 seams: Seams = REAL_SEAMS) -> list[dict]:
    """Every recorded batch: collected ones as recorded, the others with their current state."""
    if store is None:
        return []
    client, out = _client(job, http, seams), []
    for recorded in store.batches():
        if recorded["collected"]:
            out.append({**recorded, "collected": True})
            continue
        info = await client.get(recorded["batch_id"])
        errors = batch_errors(info)
        store.update_batch(recorded["batch_id"], status=info["status"], errors=errors)
        out.append({**recorded, "status": info["status"], "collected": False,
                    "errors": errors or recorded["errors"], "request_counts": info.get("request_counts")})
    return out


async def cancel(job: Job, store: StateStore | None, http: httpx.AsyncClient,
                 seams: Seams = REAL_SEAMS) -> list[dict]:
    """Cancel every open batch still running; each result says ``cancel``: requested, skipped or failed."""
    if store is None:
        return []
    client = _client(job, http, seams)
    return [await _cancel_one(client, store, recorded) for recorded in store.batches() if not recorded["collected"]]


async def _cancel_one(client: BatchClient, store: StateStore, recorded: dict) -> dict:
    batch_id, state = recorded["batch_id"], recorded["status"]
    try:
        info = await client.get(batch_id)
        state = info["status"]
        store.update_batch(batch_id, status=state, errors=batch_errors(info))
        if state in TERMINAL or state == "cancelling":
            return {**recorded, "status": state, "cancel": "skipped", "reason": f"already {state}"}
        state = (await client.cancel(batch_id))["status"]
    except RequestFailed as exc:
        if exc.fatal:
            raise
        return {**recorded, "status": state, "cancel": "failed", "reason": exc.message}
    store.update_batch(batch_id, status=state)
    return {**recorded, "status": state, "cancel": "requested"}


async def collect(job: Job, prepared: Prepared, http: httpx.AsyncClient, *, wait: bool,
                  poll_s: float = POLL_START_S, seams: Seams = REAL_SEAMS) -> RunReport | list[dict]:
    """Download what ended; write the output when every batch has. Returns the report, or — when some
    batches are still running and ``wait`` is off — their states."""
    store, client = prepared.store, _client(job, http, seams)
    if not store.batches():
        raise JobError("this job has no submitted batches: run 'chatbatch batch submit' first")
    started, pending = seams.clock(), []
    for batch in store.batches():
        if batch["collected"]:
            continue
        info = await _until_done(client, batch["batch_id"], wait, poll_s, seams)
        store.update_batch(batch["batch_id"], status=info["status"], errors=batch_errors(info))
        if info["status"] not in TERMINAL:
            pending.append({**batch, "status": info["status"], "request_counts": info.get("request_counts")})
            continue
        await _download(client, store, job, prepared, info)
        store.update_batch(batch["batch_id"], status=info["status"], collected=True)
    if pending:
        return pending
    recorded = store.batches()
    failed = {b["batch_id"]: b["errors"] for b in recorded if b["errors"]}
    return await write_report(job, prepared, started, seams,
                              extra={"batches": [b["batch_id"] for b in recorded],
                                     **({"batch_errors": failed} if failed else {})},
                              unanswered=_unanswered_result(job, recorded, store.invalid_replies()))


async def _until_done(client: BatchClient, batch_id: str, wait: bool, poll_s: float, seams: Seams) -> dict:
    while True:
        info = await client.get(batch_id)
        if info["status"] in TERMINAL or not wait:
            return info
        await seams.sleep(poll_s)
        poll_s = min(poll_s * 1.5, POLL_MAX_S)


async def _download(client: BatchClient, store: StateStore, job: Job, prepared: Prepared, info: dict) -> None:
    validator = Validator(job.output) if job.output else None
    invalid = store.invalid_replies()
    for key in ("output_file_id", "error_file_id"):
        file_id = info.get(key)
        if not file_id:
            continue
        for raw in (await client.content(file_id)).splitlines():
            line = _parse_line(raw)
            if line is not None:
                row, result = _line_result(job, prepared, validator, line)
                if row is not None:
                    _keep(store, job, info["id"], row, result, invalid.get(row, (0, ""))[0])
    await store.committed()


def _parse_line(raw: bytes) -> dict | None:
    """One output/error file line; None for a blank or broken one (its row stays unanswered, sent again)."""
    try:
        line = json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def _keep(store: StateStore, job: Job, batch_id: str, row: int, result: RowResult, invalid_before: int) -> None:
    """Journal a row's batch answer — or, an invalid reply with validation retries left, count it."""
    result.attempts = invalid_before + 1  # every earlier batch answer to this row was invalid
    if result.error_type == "invalid_output" and invalid_before < job.validation_retries:
        store.record_invalid(row, batch_id, result.cost_usd, result.error_message or "invalid reply")
    elif journaled(result):  # an expired/cancelled line stays unanswered
        store.record(row, None, result)
def _line_result(job: Job, prepared: Prepared, validator, line: dict) -> tuple[int | None, RowResult]:
    """A row and its result from one output/error file line; HTTP errors mapped as ``run`` maps them."""
    custom_id = str(line.get("custom_id", ""))
    row = int(custom_id[4:]) if custom_id.startswith("row-") and custom_id[4:].isdigit() else None
    response = line.get("response") if isinstance(line.get("response"), dict) else {}
    status_code = response.get("status_code") if isinstance(response.get("status_code"), int) else 0
    body = response.get("body")
    if status_code == 200 and isinstance(body, dict):
        try:
            completion = parse_completion(json.dumps(body).encode(), job.endpoint.secrets)
        except RequestFailed as exc:
            return row, RowResult(status=STATUS_ERROR, attempts=1, error_type=exc.error_type,
                                  error_message=exc.message, http_status=200)
        cost = prepared.prices.cost_usd(completion.model or job.model, completion.usage, batch=True)
        return row, completion_result(job, validator, completion, cost, 1, None)
    if status_code >= 300:
        failure = http_failure(httpx.Response(status_code, content=json.dumps(body).encode()),
                               job.endpoint.secrets, context="batch line: ")
        return row, RowResult(status=STATUS_ERROR, attempts=1, error_type=failure.error_type,
                              error_message=failure.message, http_status=status_code)
    error = line.get("error") or {}
    code = error.get("code") if isinstance(error, dict) else None
    message = redact_cut(str(error.get("message") if isinstance(error, dict) else error), MAX_ERROR_CHARS,
                         job.endpoint.secrets)
    return row, RowResult(status=STATUS_ERROR, attempts=1, error_type=code or "server_error",
                          error_message=f"batch line failed (status_code {status_code}): {message}",
                          http_status=status_code or None)


def _unanswered_result(job: Job, batches: list[dict], invalid: dict[int, tuple[int, str]]):
    """For rows the journal lacks: why, by row — the latest batch holding the row expired, was
    cancelled or failed, or its replies so far were invalid and it is to be sent again."""
    spans = [(b["first_row"], b["last_row"], b["status"], b["errors"]) for b in reversed(batches)]
    allowed = job.validation_retries + 1

    def reason(row: int) -> RowResult | None:
        for first, last, state, errors in spans:
            if first <= row <= last:
                if state in UNANSWERED:
                    detail = f" ({errors})" if errors else ""
                    return RowResult(status=STATUS_ERROR, error_type=UNANSWERED[state],
                                     error_message=f"no answer: the batch {state}{detail}; {SEND_AGAIN}")
                break
        if row in invalid:
            count, message = invalid[row]
            return RowResult(status=STATUS_ERROR, attempts=count, error_type="invalid_output",
                             error_message=f"{message} (invalid reply {count} of {allowed} allowed by "
                                           f"validation_retries); {SEND_AGAIN}")
        return None
    return reason
