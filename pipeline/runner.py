"""Async orchestration: one reader, ``2 × concurrency`` workers, one writer, bounded queues.

::

    source ──batches──▶ producer ──(bounded work queue)──▶ N workers ──▶ journal, then PendingBatch
                            │                                                   │
                            └──(bounded window of PendingBatch, in order)──▶ writer ──▶ ParquetSink

* The producer reads the input in record batches and settles every row it can without a request:
  skipped rows, rows the resume journal already holds, and rows whose identical request was already
  answered (in this run, or in the opt-in cross-run cache). Identical requests still in flight get
  the leader's reply when it comes. The rest go to the work queue. There is no task per row: the
  queue holds at most ``2 × concurrency`` requests and the writer's window a bounded number of rows,
  so memory stays flat however long the input.
* Each worker runs one request through :func:`pipeline.retry.call_with_retries`; every attempt first
  passes the :class:`~pipeline.ratelimit.RateBudget`, and a 429 pauses the budget for the whole run.
  A worker holds one of ``concurrency`` sending slots while it handles its row, but not while the row
  waits for a retry: the spare workers (:data:`WORKERS_PER_SLOT`) keep the other rows going, so a
  backoff delays only its own row.
  A finished row is journaled (group commit) and no request is sent while a finished row is still
  uncommitted, so a SIGKILL leaves at most ``concurrency`` sent-but-unrecorded requests.
* The writer waits for batches to complete in input order and appends them to the sink.

Stopping: a fatal error (401/403, insufficient quota, a job failing every row the same way — see
:mod:`pipeline.failfast`), a failed write, or :meth:`Runner.request_stop` (a signal) stops
dispatching at once. Requests in flight finish (a second stop request cancels them); idle workers
drain the work queue, the producer reads the rest of the input, and every row not sent is written
with status ``error`` and error_type ``not_sent``, so the output still has one row per input row —
whatever the input's size and whenever the stop came; a rerun sends those rows.

Per-row boundary: an unexpected exception while handling one row (rendering it, parsing or
validating its reply, turning the reply into its columns) becomes that row's error
(``internal_error``, with the exception's message) and the run goes on. The writer is the other
boundary: if the sink fails (disk full), the run stops as above, the workers and producer finish
without it (nothing waits on a dead writer), and :meth:`Runner.run` raises the
:class:`~pipeline.errors.OutputError` at the end; finished rows are in the journal. An error that is
no row's fault (the journal cannot be written) stops the run the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Awaitable

import pyarrow as pa

from .cache import ResponseCache, request_digest
from .client import ChatClient
from .errors import (ChatbatchError, CostCapReached, InvalidOutput, NotSent, OutputError, RateLimited,
                     RequestFailed)
from .failfast import FailFast
from .jobspec import Job
from .pricing import PriceTable
from .prompts import RowRenderer
from .ratelimit import Lease, RateBudget
from .redaction import redact_cut
from .records import (STATUS_ERROR, STATUS_OK, STATUS_REFUSED, Completion, RowResult, not_sent_result,
                      reused_result)
from .retry import call_with_retries
from .sinks import ParquetSink, check_fields
from .sources import Source
from .spend import SpendCap
from .state import StateError, StateStore, journaled
from .structured import LABEL_FIELD, Validator, label_confidence
from .summary import Tally
from .tokens import TokenCounter

if TYPE_CHECKING:
    from .clusterlimit import ClusterCap

CHUNK_ROWS = 1024
CHUNK_BYTES = 4 << 20  # a chunk also holds at most about this much input (100 KB rows: 40 a chunk)
WINDOW_ROWS = 32768  # the writer's window holds WINDOW_ROWS // CHUNK_ROWS chunks: at most 128 MB
DEFAULT_PAUSE_S = 1.0  # run-wide pause after a 429 that named no wait
WORKERS_PER_SLOT = 2  # workers per sending slot: rows waiting for a retry hold no slot
MAX_INTERNAL_ERROR_CHARS = 500


@dataclass(slots=True)
class PendingBatch:
    """One input batch waiting for its rows' results."""

    start: int
    batch: pa.RecordBatch
    results: list[RowResult | None]
    remaining: int
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, index: int, result: RowResult) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()

    def deliver_rest(self, result: RowResult) -> None:
        """``result`` for every row still waiting."""
        self.results = [result if r is None else r for r in self.results]
        self.remaining = 0
        self.done.set()


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply that passed: what it cost, and (structured output) its value and column values."""

    completion: Completion
    cost: Decimal | None
    read: tuple | None


@dataclass(frozen=True, slots=True)
class Seams:
    """Everything outside the process the runner touches, injectable for tests."""

    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[Any]]
    random: Callable[[], float]
    wall: Callable[[], float] = time.time  # Unix time: a row's finished_at, when its 429s came


@dataclass(frozen=True)
class Reuse:
    """Where rows may be settled without a request."""

    store: StateStore | None = None
    cache: ResponseCache | None = None
    retry_errors: bool = False
    dedupe: bool = True


class Runner:
    def __init__(self, job: Job, source: Source, sink: ParquetSink, client: ChatClient,
                 prices: PriceTable, tally: Tally, seams: Seams, reuse: Reuse = Reuse(),
                 counter: TokenCounter | None = None, cap: SpendCap | ClusterCap | None = None,
                 lease: Lease | None = None) -> None:
        self.job, self.source, self.sink, self.client = job, source, sink, client
        self.prices, self.tally, self.seams, self.reuse = prices, tally, seams, reuse
        self.budget = RateBudget(job.limits.requests_per_minute, job.limits.tokens_per_minute,
                                 clock=seams.clock, sleep=self._sleep, concurrency=job.limits.concurrency,
                                 lease=lease)
        self.cap = cap
        self.counter = counter
        self.stop_reason: str | None = None
        self.fatal: RequestFailed | CostCapReached | StateError | None = None
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(job.limits.concurrency)  # rows being handled, not waiting to retry
        self._workers: list[asyncio.Task] = []
        self._waiting: set[asyncio.Task] = set()  # workers waiting for the rate budget
        self._busy: set[asyncio.Task] = set()  # workers handling a row (a second stop cancels them)
        self._cancelled: dict[asyncio.Task, bool] = {}  # workers we cancelled on purpose -> in flight?
        self._followers: dict[bytes, list[tuple[PendingBatch, int]]] = {}  # in-flight digest -> waiting rows
        self.fail_fast = FailFast(job.endpoint.public_url)
        self.error: ChatbatchError | None = None  # what stopped the run and is raised when it ends
        self.finished = False
        self._url = job.endpoint.public_url  # request digests never depend on credentials
        self._renderer = RowRenderer.for_job(job, counter)
        self._validator = Validator(job.output) if job.output else None

    @property
    def requests_sent(self) -> int:
        """HTTP requests this run sent (every attempt; not rows settled from the journal or a copy)."""
        return self.tally.requests_sent

    # -- control -----------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, reason: str) -> None:
        """Stop dispatching now; called a second time, cancel requests in flight too.

        Only workers busy with a row are cancelled: idle ones must stay to drain the work queue.
        Once the run has finished, a stop changes nothing.
        """
        if self.finished:
            return
        hard = self.stopping
        targets = list(self._busy if hard else self._waiting)
        if not hard:
            self.stop_reason = reason
            self._stop.set()
        for task in targets:
            self._cancelled[task] = hard
            task.cancel()

    async def _sleep(self, seconds: float) -> None:
        """The injected sleep, ended early when the run stops."""
        if seconds <= 0 or self.stopping:
            return
        sleeper = asyncio.ensure_future(self.seams.sleep(seconds))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()

    # -- the run -----------------------------------------------------------------------------
    async def run(self) -> None:
        work: asyncio.Queue = asyncio.Queue(maxsize=2 * self.job.limits.concurrency)
        window: asyncio.Queue = asyncio.Queue(maxsize=max(2, WINDOW_ROWS // CHUNK_ROWS))
        self._workers = [asyncio.create_task(self._worker(work))
                         for _ in range(WORKERS_PER_SLOT * self.job.limits.concurrency)]
        writer = asyncio.create_task(self._writer(window))
        try:
            await self._produce(work, window)
            for _ in self._workers:
                await work.put(None)
            await asyncio.gather(*self._workers)
            await window.put(None)
            await writer
            if self.reuse.store is not None:
                try:
                    await self.reuse.store.committed()  # the last group commit, which no worker awaited
                except StateError as exc:
                    self._journal_failed(exc)
        finally:
            self.finished = True
            for task in (*self._workers, writer):
                task.cancel()
        if self.error is not None:
            raise self.error

    async def _produce(self, work: asyncio.Queue, window: asyncio.Queue) -> None:
        batches = self.source.batches(CHUNK_ROWS, CHUNK_BYTES)
        start = 0
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            pending = PendingBatch(start, batch, [None] * batch.num_rows, batch.num_rows)
            start += batch.num_rows
            await window.put(pending)
            done = self._journaled(pending)
            if self.stopping and not done:  # the whole batch unsent: settle it at once (a stop on a
                self._deliver_unsent(pending)  # large input must not cost seconds per 100k rows)
                continue
            for index, item in enumerate(self._render(batch)):
                if index in done:
                    self._deliver(pending, index, done[index], resumed=True)
                elif isinstance(item, RowResult):
                    self._deliver(pending, index, item)
                elif self.stopping:
                    self._deliver(pending, index, not_sent_result(self._not_sent_reason()))
                elif (digest := self._settle_from_reuse(pending, index, item[0])) is not None:
                    await work.put((pending, index, item[0], item[1], digest))

    def _render(self, batch: pa.RecordBatch) -> list:
        """The batch's requests; once stopping, none (rows not journaled are not sent anyway).

        The per-row boundary for rendering: if the batch fails to render, each row is rendered on
        its own and a row that still fails becomes its ``internal_error``.
        """
        if self.stopping:
            return [not_sent_result(self._not_sent_reason())] * batch.num_rows
        try:
            return self._renderer.render_batch(batch)
        except Exception:  # the documented per-row boundary: find the row, keep the run
            return [self._render_row(batch.slice(index, 1)) for index in range(batch.num_rows)]

    def _render_row(self, row: pa.RecordBatch):
        try:
            return self._renderer.render_batch(row)[0]
        except Exception as exc:  # the documented per-row boundary
            return self._internal_error(exc, "rendering the request")

    def _internal_error(self, exc: Exception, doing: str) -> RowResult:
        """A row's result for an unexpected exception (a bug): the row fails, the run goes on."""
        return internal_error_result(exc, doing, self.job.endpoint.secrets)

    def _journaled(self, pending: PendingBatch) -> dict[int, RowResult]:
        store = self.reuse.store
        if store is None or not store.resumed:
            return {}
        rows = store.results_between(pending.start, pending.start + pending.batch.num_rows,
                                     self.reuse.retry_errors)
        return {idx - pending.start: result for idx, result in rows.items()}

    def _settle_from_reuse(self, pending: PendingBatch, index: int, body: bytes) -> bytes | None:
        """Settle the row from an identical request if possible; else return its digest (send it)."""
        digest = request_digest(self._url, body)
        if not self.reuse.dedupe:
            return digest
        if digest in self._followers:
            self._followers[digest].append((pending, index))
            return None
        store, cache = self.reuse.store, self.reuse.cache
        earlier = (store.find_reply(digest) if store else None) or (cache.get(digest) if cache else None)
        if earlier is not None:
            result = reused_result(earlier)
            result.finished_at = self.seams.wall()
            if store is not None:
                store.record(pending.start + index, digest, result)
            self._deliver(pending, index, result)
            return None
        self._followers[digest] = []
        return digest

    async def _worker(self, work: asyncio.Queue) -> None:
        task = asyncio.current_task()
        while (item := await work.get()) is not None:
            pending, index, body, prompt_tokens, digest = item
            async with self._slots:  # released while the row waits to retry (see _retry_wait)
                result = await self._handle(task, body, prompt_tokens)
            self._finish(pending, index, digest, result)

    async def _handle(self, task: asyncio.Task, body: bytes, prompt_tokens: int) -> RowResult:
        """The row's result: sent (with retries), or not sent because the run stopped."""
        if self.stopping:
            return not_sent_result(self._not_sent_reason())
        self._busy.add(task)
        try:
            return await self._process(body, prompt_tokens)
        except asyncio.CancelledError:
            if task not in self._cancelled:
                raise
            task.uncancel()
            return not_sent_result(
                "cancelled after the run was stopped a second time (if it was in flight, it may "
                "have been billed)" if self._cancelled.pop(task) else self._not_sent_reason())
        except ChatbatchError as exc:  # not the row's fault (the journal cannot be written): stop
            self._abort(exc)
            return not_sent_result(self._not_sent_reason())
        except Exception as exc:  # the documented per-row boundary: this row fails, the run goes on
            return self._internal_error(exc, "sending the request")
        finally:
            self._busy.discard(task)

    def _finish(self, pending: PendingBatch, index: int, digest: bytes, result: RowResult) -> None:
        """Journal the row (committed before any worker sends again), deliver it and its followers."""
        store, cache = self.reuse.store, self.reuse.cache
        if result.error_type != "not_sent":
            result.finished_at = self.seams.wall()  # copied to its followers below
        if store is not None and journaled(result):
            store.record(pending.start + index, digest, result)
        if cache is not None and result.status == STATUS_OK:
            cache.put(digest, result)
        self._deliver(pending, index, result)
        for follower, follower_index in self._followers.pop(digest, ()):
            # a copy of a billed reply (ok, refused, invalid_output) is cached: the request was paid once
            copy = reused_result(result) if result.completion is not None else replace(result, attempts=0)
            if store is not None and journaled(copy):
                store.record(follower.start + follower_index, digest, copy)
            self._deliver(follower, follower_index, copy)

    async def _attempt(self, body: bytes, prompt_tokens: int | None, latency: list, invalid: list) -> Answer:
        """One attempt: wait for the budget, then send. A 429 pauses the whole run."""
        if prompt_tokens is None:  # not counted (no tpm set): a rough bound, for limits learned later
            prompt_tokens = len(body) // 4 if self.budget.tokens_per_minute else 0
        task = asyncio.current_task()
        self._waiting.add(task)
        try:
            ticket = await self.budget.acquire(prompt_tokens, self.job.max_output_tokens,
                                               self.job.choices_per_request)
            if self.reuse.store is not None:
                await self.reuse.store.committed()  # never send while an earlier result is unrecorded
        finally:
            self._waiting.discard(task)
        ok, info, completion = False, None, None
        try:
            completion, cost = await self._send(body, prompt_tokens, latency)
            ok, info = True, completion.rate_info
            read = self._validate(completion, cost, invalid)
            self._judge(None)
            return Answer(completion, cost, read)
        except RequestFailed as exc:
            info = exc.rate_info
            self._judge(exc)
            raise
        finally:
            self._settle(ticket, ok, info, completion)

    def _judge(self, failure: RequestFailed | None) -> None:
        """Let the fail-fast policy see one sent attempt; stop the run when it says the job is wrong."""
        stop = self.fail_fast.attempt(failure)
        if stop is not None and not self.stopping:
            self.fatal = self.fatal or stop
            self.request_stop(stop.message)

    def _validate(self, completion: Completion, cost: Decimal | None, invalid: list) -> tuple | None:
        """Read a structured reply: its (value, column values), or None (not structured, or refused).

        An invalid one is retried (validation_retries), then kept as an error.
        """
        if self._validator is None or (completion.refusal and not completion.replies[0]):
            return None
        try:
            return self._validator.read(completion.replies[0])
        except ValueError as exc:
            invalid[0] += 1
            retryable = invalid[0] <= self.job.validation_retries
            if retryable and cost is not None:
                self.tally.discarded_cost_usd += cost  # billed, but this reply is thrown away
                if self.reuse.store is not None:
                    self.reuse.store.touch()  # journal the spend before the retry is sent
            raise InvalidOutput(invalid_message(completion, exc), completion=completion, cost_usd=cost,
                                retryable=retryable) from exc

    def _cost(self, completion: Completion) -> Decimal | None:
        """What a reply cost: from the price table and its usage; nothing on a local model."""
        if self.job.local:
            return Decimal(0)
        return self.prices.cost_usd(completion.model or self.job.model, completion.usage,
                                    tier=completion.service_tier or self.job.service_tier)

    def _settle(self, ticket, ok: bool, info, completion: Completion | None) -> None:
        usage = completion.usage if completion is not None else None
        used = usage.total_tokens if usage is not None else None
        per_choice = (usage.completion_tokens / max(len(completion.replies), 1)
                      if usage is not None and usage.completion_tokens is not None else None)
        self.budget.settle(ticket, ok=ok, rate_info=info, used_tokens=used, output_tokens_per_choice=per_choice)

    async def _send(self, body: bytes, prompt_tokens: int, latency: list) -> tuple[Completion, Decimal | None]:
        """One request, and what it cost (None: unknown price)."""
        reservation = await self._reserve(prompt_tokens)
        started = self.seams.clock()
        self.tally.requests_sent += 1
        cost: Decimal | None = None  # what this attempt cost; None: maybe billed, unknown
        try:
            completion = await self.client.complete(body)
            cost = self._cost(completion)
        except RateLimited as exc:
            cost = Decimal(0)
            self.tally.note_rate_limited(self.seams.wall())
            self.budget.pause(exc.retry_after_s if exc.retry_after_s is not None else DEFAULT_PAUSE_S)
            raise
        except RequestFailed as exc:
            cost = None if exc.http_status == 200 else Decimal(0)
            raise
        finally:
            latency[0] = self.seams.clock() - started
            if reservation is not None:
                self.cap.settle(reservation, cost)
        return completion, cost

    async def _reserve(self, prompt_tokens: int) -> Decimal | None:
        """Check the cost cap before a send; stop the run when this request could cross it."""
        if self.stopping:
            raise NotSent(self._not_sent_reason())
        if self.cap is None:
            return None
        reservation = await self.cap.claim(prompt_tokens)
        if self.stopping:  # stopped while the cap answered (a cluster's cap is a round trip away)
            if reservation is not None:
                self.cap.settle(reservation, Decimal(0))
            raise NotSent(self._not_sent_reason())
        if reservation is None:
            self.fatal = self.fatal or CostCapReached(self.cap.describe())
            self.request_stop(self.cap.describe())
            raise NotSent(self._not_sent_reason())
        return reservation

    async def _retry_wait(self, seconds: float) -> None:
        """Wait before a retry without a sending slot: another row uses it meanwhile."""
        self._slots.release()
        try:
            await self._sleep(seconds)
        finally:  # shielded: cancelled here, the acquire still completes, balancing the caller's release
            await asyncio.shield(self._slots.acquire())

    async def _process(self, body: bytes, prompt_tokens: int) -> RowResult:
        latency: list = [None]
        invalid = [0]  # replies that failed validation so far (each one billed)
        try:
            outcome = await call_with_retries(
                lambda: self._attempt(body, prompt_tokens, latency, invalid), self.job.retry,
                sleep=self._retry_wait, random=self.seams.random, stopping=lambda: self.stopping)
        except RequestFailed as exc:  # fatal: record it on the row and stop the run
            self.fatal = self.fatal or exc
            if not self.stopping:
                self.request_stop(exc.message)
            return _failed(exc, exc.attempts or 1, latency[0])
        except StateError as exc:  # the journal cannot be written: send nothing more
            self._journal_failed(exc)
            return not_sent_result(self._not_sent_reason())
        if outcome.value is not None:
            if self.job.local and self.counter is not None:  # what the API would have billed
                self.tally.api_prompt_tokens += prompt_tokens or 0
                self.tally.api_completion_tokens += sum(self.counter.count_text(r or "")
                                                        for r in outcome.value.completion.replies)
            return self._success(outcome.value, outcome.attempts, latency[0])
        if outcome.failure is None or isinstance(outcome.failure, NotSent):
            return not_sent_result(self._not_sent_reason())
        return _failed(outcome.failure, outcome.attempts, latency[0])

    def _success(self, answer: Answer, attempts: int, latency_s: float | None) -> RowResult:
        completion, cost = answer.completion, answer.cost
        try:
            result = completion_result(self.job, self._validator, completion, cost, attempts, latency_s,
                                       read=answer.read)
            if result.fields is not None:
                check_fields(self.job.output, result.fields)
            return result
        except Exception as exc:  # the documented per-row boundary: the reply is kept (it was billed)
            failed = self._internal_error(exc, "turning the reply into its columns")
            return replace(failed, attempts=attempts, http_status=200, cost_usd=cost, latency_s=latency_s,
                           completion=replace(completion, rate_info=None, logprobs=None))

    def _deliver(self, pending: PendingBatch, index: int, result: RowResult, resumed: bool = False) -> None:
        self.tally.add(result, resumed=resumed)
        pending.deliver(index, result)

    def _journal_failed(self, exc: StateError) -> None:
        """A commit failed: stop the run as for a fatal reply (the output still gets every row)."""
        self.fatal = self.fatal or exc
        if not self.stopping:
            self.request_stop(str(exc))

    def _deliver_unsent(self, pending: PendingBatch) -> None:
        """Every row of ``pending`` not sent because the run stopped: one result, counted in bulk."""
        result = not_sent_result(self._not_sent_reason())
        self.tally.add_many(result, pending.remaining)
        pending.deliver_rest(result)

    def _not_sent_reason(self) -> str:
        return f"not sent: the run stopped ({self.stop_reason})"

    async def _writer(self, window: asyncio.Queue) -> None:
        """Append finished batches in order. It never dies: after a failed write it stops the run and
        keeps taking batches (unwritten), so the producer is never left waiting on a full window."""
        while (pending := await window.get()) is not None:
            await pending.done.wait()
            if isinstance(self.error, OutputError):
                continue
            try:
                await asyncio.to_thread(self.sink.write, pending.batch, pending.results)
            except Exception as exc:  # the writer's last-resort boundary: a failed write stops the run
                self._abort(_output_error(exc))

    def _abort(self, error: ChatbatchError) -> None:
        """Stop the run for an error no row can absorb; :meth:`run` raises it once everything settled."""
        self.error = self.error or error
        self.request_stop(str(error))


def completion_result(job: Job, validator: Validator | None, completion: Completion, cost: Decimal | None,
                      attempts: int, latency_s: float | None, read: tuple | None = None) -> RowResult:
    """A row's result from a reply: ok, refused, or (structured and not valid) invalid_output.

    ``read`` is the reply already read by ``validator`` (its value and column values), if it was.
    """
    refused = bool(completion.refusal) and not completion.replies[0]
    kept = completion if completion.rate_info is None and completion.logprobs is None else \
        replace(completion, rate_info=None, logprobs=None)
    if refused:
        return RowResult(status=STATUS_REFUSED, attempts=attempts, completion=kept, http_status=200,
                         cost_usd=cost, latency_s=latency_s, error_type="refusal", error_message=completion.refusal)
    fields = None
    if validator is not None:
        try:
            value, fields = read if read is not None else validator.read(completion.replies[0])
        except ValueError as exc:
            return RowResult(status=STATUS_ERROR, attempts=attempts, completion=kept, http_status=200,
                             cost_usd=cost, latency_s=latency_s, error_type="invalid_output",
                             error_message=invalid_message(completion, exc))
        if job.output.confidence:
            fields += (label_confidence(completion.replies[0], value[LABEL_FIELD], completion.logprobs),)
    return RowResult(status=STATUS_OK, attempts=attempts, completion=kept, http_status=200, cost_usd=cost,
                     latency_s=latency_s, fields=fields)


def invalid_message(completion: Completion, exc: ValueError) -> str:
    """Why a structured reply was rejected, saying so when it was cut off at the token limit."""
    if completion.finish_reasons and completion.finish_reasons[0] == "length":
        return (f"{exc} — the reply was cut off at the token limit (finish_reason 'length'): raise "
                "max_completion_tokens")
    return str(exc)


def _output_error(exc: Exception) -> OutputError:
    if isinstance(exc, OutputError):
        return exc
    error = OutputError(f"cannot write the output: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def internal_error_result(exc: BaseException, doing: str, secrets: Iterable[str]) -> RowResult:
    """The result of a row whose handling raised an unexpected exception (a bug, to be reported)."""
    message = redact_cut(f"internal error while {doing}: {type(exc).__name__}: {exc}", MAX_INTERNAL_ERROR_CHARS,
                         secrets)
    return RowResult(status=STATUS_ERROR, error_type="internal_error", error_message=message)


def _failed(failure: RequestFailed, attempts: int, latency_s: float | None) -> RowResult:
    completion = getattr(failure, "completion", None)  # an invalid structured reply: kept, and billed
    return RowResult(status=STATUS_ERROR, attempts=attempts, error_type=failure.error_type,
                     error_message=failure.message, http_status=failure.http_status, latency_s=latency_s,
                     completion=replace(completion, rate_info=None, logprobs=None) if completion else None,
                     cost_usd=getattr(failure, "cost_usd", None))
