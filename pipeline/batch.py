"""``chatbatch batch``: the same job through OpenAI's Batch API, at half the price, within 24 hours.

* ``submit`` renders every request exactly as ``run`` would (skipped rows stay skipped; rows the
  job's journal already holds are not sent again), writes JSONL (``custom_id`` = ``row-<index>``),
  splits it into files of at most 50,000 requests and 200 MB, uploads each (purpose ``batch``),
  creates a batch per file (endpoint ``/v1/chat/completions``, window ``24h``, metadata naming the
  job) and records each batch id in the job's state the moment it exists — a second ``submit``
  while batches are open is refused, so nothing is submitted twice.
* ``status`` asks for each batch's state and request counts.
* ``collect`` (``--wait`` polls with backoff until every batch has ended) downloads the output and
  error files, maps lines back to rows by ``custom_id``, journals them, and writes the same output
  Parquet and summary as ``run``, costed at Batch prices. Error lines (including ``status_code`` 0
  style errors) become row errors; rows of an expired, cancelled or failed batch with no answer are
  left unanswered (``batch_expired`` / ``batch_cancelled`` / ``batch_failed``) and are not
  journaled, so ``batch submit`` (again) or ``run`` sends them — with the resume state shared, ``run``
  never re-sends what a batch answered, and ``run --retry-errors`` retries the batch's failed rows.
* ``cancel`` cancels every open batch.

Azure OpenAI's batch routes are not supported yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from .batchapi import MAX_FILE_BYTES, MAX_REQUESTS, TERMINAL, BatchClient, input_line
from .client import parse_completion
from .errors import JobError, RequestFailed
from .jobspec import Job
from .prompts import RowRenderer
from .records import STATUS_ERROR, RowResult
from .run import REAL_SEAMS, Prepared, RunReport, write_report
from .runner import Seams, completion_result
from .state import journaled
from .structured import Validator

POLL_START_S = 5.0
POLL_MAX_S = 300.0
UNANSWERED = {"expired": "batch_expired", "cancelled": "batch_cancelled", "failed": "batch_failed"}


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


async def submit(job: Job, prepared: Prepared, http: httpx.AsyncClient, seams: Seams = REAL_SEAMS) -> list[dict]:
    """Upload and create the job's batches; returns them as recorded."""
    store = prepared.store
    open_batches = [b["batch_id"] for b in store.batches() if not b["collected"]]
    if open_batches:
        raise JobError(f"this job already has batches in progress ({', '.join(open_batches)}): use "
                       "'chatbatch batch status' / 'collect', or 'cancel' them, before submitting again")
    client = _client(job, http, seams)
    renderer = RowRenderer.for_job(job)
    name = job.output_path.stem
    chunk, created, start = Chunk([]), [], 0
    for batch in prepared.source.batches(65536):
        done = store.results_between(start, start + batch.num_rows)
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
    return created


async def _send_chunk(client: BatchClient, store, chunk: Chunk, name: str, number: int) -> dict:
    uploaded = await client.upload(f"{name}-{number:04d}.jsonl", b"".join(chunk.lines))
    batch = await client.create(uploaded["id"], {"job": name[:512], "rows": f"{chunk.first_row}-{chunk.last_row}"})
    store.add_batch(batch["id"], uploaded["id"], chunk.first_row, chunk.last_row, len(chunk.lines), batch["status"])
    return {"batch_id": batch["id"], "input_file_id": uploaded["id"], "requests": len(chunk.lines),
            "first_row": chunk.first_row, "last_row": chunk.last_row, "status": batch["status"]}


async def status(job: Job, prepared: Prepared, http: httpx.AsyncClient, seams: Seams = REAL_SEAMS) -> list[dict]:
    """Every recorded batch with its current state and request counts."""
    client, out = _client(job, http, seams), []
    for recorded in prepared.store.batches():
        info = await client.get(recorded["batch_id"])
        prepared.store.update_batch(recorded["batch_id"], status=info["status"], collected=bool(recorded["collected"]))
        out.append({**recorded, "status": info["status"], "request_counts": info.get("request_counts")})
    return out


async def cancel(job: Job, prepared: Prepared, http: httpx.AsyncClient, seams: Seams = REAL_SEAMS) -> list[dict]:
    client, out = _client(job, http, seams), []
    for recorded in prepared.store.batches():
        if recorded["collected"] or recorded["status"] in TERMINAL:
            continue
        info = await client.cancel(recorded["batch_id"])
        prepared.store.update_batch(recorded["batch_id"], status=info["status"])
        out.append({"batch_id": recorded["batch_id"], "status": info["status"]})
    return out


async def collect(job: Job, prepared: Prepared, http: httpx.AsyncClient, *, wait: bool,
                  poll_s: float = POLL_START_S, seams: Seams = REAL_SEAMS) -> RunReport | list[dict]:
    """Download what ended; write the output when every batch has. Returns the report, or — when some
    batches are still running and ``wait`` is off — their states."""
    store, client = prepared.store, _client(job, http, seams)
    recorded = store.batches()
    if not recorded:
        raise JobError("this job has no submitted batches: run 'chatbatch batch submit' first")
    started, pending = seams.clock(), []
    for batch in recorded:
        info = await _until_done(client, batch["batch_id"], wait, poll_s, seams)
        store.update_batch(batch["batch_id"], status=info["status"], collected=bool(batch["collected"]))
        if info["status"] not in TERMINAL:
            pending.append({**batch, "status": info["status"], "request_counts": info.get("request_counts")})
            continue
        if not batch["collected"]:
            await _download(client, store, job, prepared, info)
            store.update_batch(batch["batch_id"], status=info["status"], collected=True)
    if pending:
        return pending
    return await write_report(job, prepared, started, seams, extra={"batches": [b["batch_id"] for b in recorded]},
                              unanswered=_unanswered_result(store.batches()))


async def _until_done(client: BatchClient, batch_id: str, wait: bool, poll_s: float, seams: Seams) -> dict:
    while True:
        info = await client.get(batch_id)
        if info["status"] in TERMINAL or not wait:
            return info
        await seams.sleep(poll_s)
        poll_s = min(poll_s * 1.5, POLL_MAX_S)


async def _download(client: BatchClient, store, job: Job, prepared: Prepared, info: dict) -> None:
    validator = Validator(job.output) if job.output else None
    for key in ("output_file_id", "error_file_id"):
        file_id = info.get(key)
        if not file_id:
            continue
        for raw in (await client.content(file_id)).splitlines():
            if raw.strip():
                row, result = _line_result(job, prepared, validator, json.loads(raw))
                if row is not None and journaled(result):  # an expired/cancelled line stays unanswered
                    store.record(row, None, result)
    await store.committed()


def _line_result(job: Job, prepared: Prepared, validator, line: dict) -> tuple[int | None, RowResult]:
    custom_id = str(line.get("custom_id", ""))
    row = int(custom_id[4:]) if custom_id.startswith("row-") and custom_id[4:].isdigit() else None
    response = line.get("response") or {}
    status_code = response.get("status_code") or 0
    body = response.get("body")
    if status_code == 200 and isinstance(body, dict):
        try:
            completion = parse_completion(json.dumps(body).encode())
        except RequestFailed as exc:
            return row, RowResult(status=STATUS_ERROR, attempts=1, error_type=exc.error_type,
                                  error_message=exc.message, http_status=200)
        cost = prepared.prices.cost_usd(completion.model or job.model, completion.usage, batch=True)
        return row, completion_result(job, validator, completion, cost, 1, None)
    error = line.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else str(error)
    return row, RowResult(status=STATUS_ERROR, attempts=1, error_type=code or f"batch_http_{status_code}",
                          error_message=f"batch line failed (status_code {status_code}): {message}",
                          http_status=status_code or None)


def _unanswered_result(batches: list[dict]):
    """For rows the journal lacks: why (their batch expired, was cancelled or failed), by row."""
    spans = [(b["first_row"], b["last_row"], b["status"]) for b in batches if b["status"] in UNANSWERED]

    def reason(row: int) -> RowResult | None:
        for first, last, state in spans:
            if first <= row <= last:
                return RowResult(status=STATUS_ERROR, error_type=UNANSWERED[state],
                                 error_message=f"no answer: the batch {state}; 'chatbatch batch submit' or "
                                               "'chatbatch run' sends it again")
        return None
    return reason

