"""A job's resume state: a SQLite journal of finished rows, its fingerprint, and a lock.

The state lives in ``<output>.state/`` beside the output (or ``state_dir``)::

    journal.sqlite   rows(idx, status, req_hash, result), meta(key, value), and for batch mode
                     batches(batch_id, rows, status, collected, errors) and
                     batch_retries(idx, invalid, discarded_cost_usd, message, batch_id)
    lock             held (flock) by the run using the state; names its pid

Every finished row is journaled *before its worker may send another request*: :meth:`record` is
a group commit — the results that arrive in one event-loop turn are written in one transaction, and
a worker awaits :meth:`committed` before it sends (usually already true, so it costs nothing). So a
run killed with SIGKILL at any moment has at most ``concurrency`` requests that were sent but not
journaled, and a rerun re-sends only those.

Durability (WAL, ``synchronous=NORMAL``): a committed transaction survives the process being killed
at once; the journal is never corrupted, even by a power loss, but a power loss (or an
operating-system crash) may undo the transactions committed since the last checkpoint — SQLite
fsyncs at each checkpoint, every :data:`CHECKPOINT_PAGES` pages of log — whose rows a rerun sends
again. A commit that fails (disk full, I/O error) is never swallowed: :meth:`committed` raises
:class:`StateError` from then on, naming how many answered rows are not journaled.

The folder is created ``0700`` and the journal and lock ``0600`` whatever the umask
(:mod:`pipeline.private`): the journal holds the replies.

A rerun of the same job resumes: journaled rows are taken from here, the rest are sent. The
journal holds ok rows and row errors; rows that were never sent, or that failed because the run was
refused (auth, quota), are not journaled and are sent again. Rows that failed transiently (see
:func:`pipeline.errors.is_transient`: timeouts, connection errors, 5xx, 429s, unusable replies) are
journaled with status ``transient`` — counted, but not finished: a rerun sends them again.
``retry_errors`` re-sends permanent row errors (and refusals) too.

Beside the rows, ``meta`` keeps the job's running totals over all its runs (``job_totals``: tokens,
cost, retries, 429s, elapsed, spend on discarded replies — see :class:`pipeline.summary.Spend`),
written by every group commit from :meth:`StateStore.track_totals`, so a kill cannot forget what was
paid.

The fingerprint (model, endpoint, parameters, templates, input content) guards against mixing old
and new replies: when it changed and the old run was unfinished, :func:`open_state` refuses, naming
what changed, unless ``fresh``. When the old run had finished, a changed job simply starts afresh
(the nightly job with a new day's input). A run has finished when ``run`` ended without being
stopped, or when ``batch collect`` wrote an output in which every row has its final answer.

Batch mode: a batch is *open* from the moment it is created until ``collect`` has journaled it.
While a job has open batches, starting a run (``run``, ``batch submit``, with or without
``--fresh``) is refused, naming them: they are billed whatever happens, so their answers must not be
thrown away or paid for twice. A batch reply that is not valid for the schema is not journaled while
the row has validation retries left; ``batch_retries`` counts them per row and keeps what they
cost, so the next ``submit`` (or ``run``) sends the row again and no spend is forgotten.

Purposes of :func:`open_state`: :data:`BEGIN` (``run``, ``batch submit``: may start afresh),
:data:`CONTINUE` (``batch collect``: the same job as submitted, never reset) and :data:`INSPECT`
(``batch status`` / ``cancel``: the batches as they are; the fingerprint and journal are untouched).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .bloom import DigestFilter
from .errors import ChatbatchError, JobError, is_transient
from .private import private_dir, private_file
from .records import STATUS_ERROR, STATUS_OK, STATUS_REFUSED, RowResult, result_from_json, result_to_json

BEGIN, CONTINUE, INSPECT = "begin", "continue", "inspect"
TRANSIENT = "transient"  # rows.status of a row that failed transiently: sent again on resume
TOTALS_KEY = "job_totals"
NOT_JOURNALED = {"not_sent", "auth_failed", "insufficient_quota", "batch_expired", "batch_cancelled", "batch_failed"}
JOURNAL_FILES = ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm")
BUSY_TIMEOUT_S = 60.0  # the run's meta writes wait this long for a group commit in flight
CHECKPOINT_PAGES = 1000  # SQLite's default wal_autocheckpoint, stated: the power-loss window
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows(idx INTEGER PRIMARY KEY, status TEXT NOT NULL, req_hash BLOB,
                                result TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS rows_by_request ON rows(req_hash);
CREATE TABLE IF NOT EXISTS batches(batch_id TEXT PRIMARY KEY, input_file_id TEXT NOT NULL,
                                   first_row INTEGER NOT NULL, last_row INTEGER NOT NULL,
                                   requests INTEGER NOT NULL, status TEXT NOT NULL,
                                   collected INTEGER NOT NULL DEFAULT 0, errors TEXT);
CREATE TABLE IF NOT EXISTS batch_retries(idx INTEGER PRIMARY KEY, invalid INTEGER NOT NULL,
                                         discarded_cost_usd TEXT NOT NULL, message TEXT NOT NULL,
                                         batch_id TEXT NOT NULL);
"""


class StateError(ChatbatchError):
    """The state store could not be written (disk full, permissions)."""

    error_type = "journal_failed"


def journaled(result: RowResult) -> bool:
    """Whether a finished row belongs in the journal (a rerun must not send it again)."""
    return result.status in (STATUS_OK, STATUS_REFUSED) or (
        result.status == STATUS_ERROR and result.error_type not in NOT_JOURNALED)


def journal_status(result: RowResult) -> str:
    """The row's status in the journal: its own, or ``transient`` for a failure worth sending again."""
    if result.status == STATUS_ERROR and is_transient(result.error_type):
        return TRANSIENT
    return result.status


class StateStore:
    """An opened, locked state. Use :func:`open_state`."""

    def __init__(self, directory: Path, db: sqlite3.Connection, writer: sqlite3.Connection, lock_fd: int,
                 resumed: bool) -> None:
        self.directory = directory
        self.resumed = resumed  # a previous run of this same job left rows here
        self.had_state = False  # some earlier run used this state (and wrote the output there)
        self._begin: Mapping[str, str] | None = None  # fingerprint to write when the run begins
        self._reset = False
        self._db = db  # reads, and the run's few meta and batch writes
        self._writer = writer  # the rows' group commits, used by the journal's thread only
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="chatbatch-journal")
        self._lock_fd = lock_fd
        self._pending: list[tuple] = []  # rows for the next commit
        self._next: asyncio.Event | None = None  # set when the next commit (pending rows, totals) is done
        self._inflight: asyncio.Event | None = None  # set when the commit being written ends
        self._writing: asyncio.Task | None = None
        self._uncommitted: dict[bytes, RowResult] = {}  # ok rows recorded, not yet committed
        self._seen = DigestFilter(0)  # journaled request digests; sized in begin()
        self._totals: Callable[[], str] | None = None  # the job's running totals, written with each commit
        self._failure: str | None = None  # why a commit failed: sticky, raised by committed()
        self._reported = False  # the failure was raised to someone
        self.unsaved_rows = 0  # rows recorded whose commit failed

    # -- reading ----------------------------------------------------------------------------
    def rows_done(self) -> int:
        """Rows finished for good (transient failures are not: they are sent again)."""
        return self._db.execute("SELECT count(*) FROM rows WHERE status != ?", (TRANSIENT,)).fetchone()[0]

    def row_counts(self) -> dict[str, int]:
        """Journaled rows by journal status: ok, refused, error (permanent), transient."""
        return dict(self._db.execute("SELECT status, count(*) FROM rows GROUP BY status").fetchall())

    def results_between(self, start: int, stop: int, retry_errors: bool = False,
                        finished_only: bool = True) -> dict[int, RowResult]:
        """Journaled results of rows ``start <= idx < stop``: the finished ones (not transient
        failures; with retry_errors only ok rows), or with ``finished_only=False`` every one."""
        query = "SELECT idx, result FROM rows WHERE idx >= ? AND idx < ?"
        if retry_errors:
            query += " AND status = 'ok'"
        elif finished_only:
            query += f" AND status != '{TRANSIENT}'"
        return {idx: result_from_json(text) for idx, text in self._db.execute(query, (start, stop))}

    def find_reply(self, req_hash: bytes) -> RowResult | None:
        """An ok result journaled for an identical request, if any.

        A Bloom filter in memory, sized for the job's rows (:mod:`pipeline.bloom`), answers
        "certainly not" for almost every new request, so unique rows cost no query.
        """
        if req_hash not in self._seen:
            return None
        if req_hash in self._uncommitted:
            return self._uncommitted[req_hash]
        row = self._db.execute("SELECT result FROM rows WHERE req_hash = ? AND status = 'ok' LIMIT 1",
                               (req_hash,)).fetchone()
        return result_from_json(row[0]) if row else None

    def add_batch(self, batch_id: str, input_file_id: str, first_row: int, last_row: int,
                  requests: int, status: str) -> None:
        """Record a submitted Batch API batch (at once: it must never be submitted twice)."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO batches(batch_id, input_file_id, first_row, last_row, "
                             "requests, status, collected) VALUES (?, ?, ?, ?, ?, ?, 0)",
                             (batch_id, input_file_id, first_row, last_row, requests, status))

    def batches(self) -> list[dict]:
        """The recorded batches, in the order they were submitted."""
        cursor = self._db.execute("SELECT batch_id, input_file_id, first_row, last_row, requests, status, "
                                  "collected, errors FROM batches ORDER BY rowid")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def open_batch_ids(self) -> list[str]:
        """Batches not collected yet (running, or ended with answers not journaled)."""
        return [row[0] for row in self._db.execute("SELECT batch_id FROM batches WHERE collected = 0 ORDER BY rowid")]

    def update_batch(self, batch_id: str, *, status: str, collected: bool | None = None,
                     errors: str | None = None) -> None:
        """Record a batch's latest state (``collected`` and ``errors`` kept unless given)."""
        with self._db:
            self._db.execute("UPDATE batches SET status = ?, collected = coalesce(?, collected), "
                             "errors = coalesce(?, errors) WHERE batch_id = ?",
                             (status, None if collected is None else int(collected), errors, batch_id))

    def invalid_replies(self) -> dict[int, tuple[int, str]]:
        """Rows whose batch replies so far were all invalid for the schema: idx -> (count, last error)."""
        return {idx: (count, message) for idx, count, message in
                self._db.execute("SELECT idx, invalid, message FROM batch_retries")}

    def record_invalid(self, idx: int, batch_id: str, cost_usd: Decimal | None, message: str) -> None:
        """Count a discarded (invalid, to be retried) reply to row ``idx`` from ``batch_id``, and its cost.

        Committed at once; counting the same batch's reply again (a collect killed before it marked
        the batch collected, then run again) changes nothing.
        """
        with self._db:
            known = self._db.execute("SELECT invalid, discarded_cost_usd, batch_id FROM batch_retries "
                                     "WHERE idx = ?", (idx,)).fetchone() or (0, "0", None)
            if known[2] == batch_id:
                return
            self._db.execute("INSERT OR REPLACE INTO batch_retries VALUES (?, ?, ?, ?, ?)",
                             (idx, known[0] + 1, str(Decimal(known[1]) + (cost_usd or 0)), message, batch_id))

    def discarded_cost_usd(self) -> Decimal:
        """What the batch replies thrown away for validation retries cost (their known part)."""
        return sum((Decimal(text) for (text,) in self._db.execute("SELECT discarded_cost_usd FROM batch_retries")),
                   Decimal(0))

    def journaled_results(self) -> Iterable[RowResult]:
        """Every journaled result, whatever its status (to rebuild the totals of a state that holds
        none: refused and invalid replies were billed too)."""
        return (result_from_json(text) for (text,) in self._db.execute("SELECT result FROM rows"))

    def totals(self) -> str | None:
        """The job's running totals over its earlier runs (JSON), if this state holds them."""
        return self.meta(TOTALS_KEY)

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- writing ----------------------------------------------------------------------------
    def record(self, idx: int, req_hash: bytes | None, result: RowResult) -> None:
        """Journal a row in the next group commit, written by the journal's own thread.

        Callers that are about to send a request call :meth:`committed` first, so that nothing is
        sent while an earlier result is still uncommitted.
        """
        self._pending.append((idx, journal_status(result), req_hash, result_to_json(result)))
        if req_hash is not None and result.status == STATUS_OK:
            self._seen.add(req_hash)
            self._uncommitted[req_hash] = result
        self.touch()

    def touch(self) -> None:
        """Ask for a commit (of the job's totals even with no row to journal: a discarded reply was
        paid); :meth:`committed` waits for it like for a row."""
        if self._next is None:
            self._next = asyncio.Event()
            if self._writing is None:
                self._writing = asyncio.get_running_loop().create_task(self._drain())

    def track_totals(self, totals: Callable[[], str] | None) -> None:
        """Write ``totals()`` (the job's running totals, JSON) with every commit from now on."""
        self._totals = totals

    async def _drain(self) -> None:
        """Commit what was asked for, commit after commit, off the event loop (an fsync never stalls
        it). The totals are taken here, on the loop, with the rows they go with."""
        loop = asyncio.get_running_loop()
        try:
            while self._next is not None:
                rows, done, totals = self._pending, self._next, self._totals() if self._totals else None
                self._pending, self._next, self._inflight = [], None, done
                try:
                    await loop.run_in_executor(self._executor, self._insert, rows, totals)
                finally:
                    for row in rows:
                        self._uncommitted.pop(row[2], None)
                    self._inflight = None
                    done.set()
        finally:
            self._writing = None

    def _insert(self, rows: list[tuple], totals: str | None) -> None:
        """One transaction of rows and the totals (in the journal's thread, on its own connection)."""
        try:
            with self._writer:
                self._writer.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?)", rows)
                if totals is not None:
                    self._writer.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (TOTALS_KEY, totals))
        except sqlite3.Error as exc:
            self._failure = self._failure or str(exc)
            self.unsaved_rows += len(rows)

    def load_seen(self, capacity: int = 0) -> None:
        """Size the filter for ``capacity`` rows and fill it from the journal (earlier replies).

        Reads the digests from their index alone (error rows' too: a "maybe" for them costs one
        query, never a wrong answer).
        """
        self._seen = DigestFilter(max(capacity, self.rows_done()))
        self._seen.add_all(digest for (digest,) in self._db.execute(
            "SELECT req_hash FROM rows INDEXED BY rows_by_request WHERE req_hash IS NOT NULL"))

    async def committed(self) -> None:
        """Return once every row recorded so far is committed (at once when none is waiting).

        Raises :class:`StateError` when any commit of this run failed: its rows are not journaled.
        """
        latest = self._next or self._inflight
        if latest is not None:
            await latest.wait()  # batches commit in order: the latest done means all are
        if self._failure is not None:
            self.check()

    def check(self) -> None:
        """Raise :class:`StateError` if a commit failed (its rows are not in the journal)."""
        if self._failure is not None:
            self._reported = True
            raise StateError(f"cannot write the resume journal in {self.directory} ({self._failure}): "
                             f"{self.unsaved_rows:,} answered rows are not journaled, so a rerun would "
                             "send them again; they are in the output")

    def flush(self) -> None:
        """Commit what is pending now, in this thread (closing, or outside an event loop)."""
        self._executor.shutdown(wait=True)  # a commit in flight ends first
        rows, self._pending = self._pending, []
        if rows or self._next is not None:
            self._insert(rows, self._totals() if self._totals else None)
        self._uncommitted.clear()
        for event in (self._next, self._inflight):
            if event is not None:
                event.set()
        self._next = self._inflight = None
        if not self._reported:
            self.check()

    def begin(self, expected_rows: int = 0) -> None:
        """Commit to this run: clear a stale or discarded journal and record the fingerprint.

        ``expected_rows`` (the input's rows) sizes the filter of journaled requests. Separate from
        :func:`open_state` so that a job refused by a later check leaves the state as it was.
        """
        if self._reset:
            try:
                with self._db:
                    self._db.execute("DELETE FROM rows")
                    self._db.execute("DELETE FROM meta")
                    self._db.execute("DELETE FROM batches")
                    self._db.execute("DELETE FROM batch_retries")
            except sqlite3.Error as exc:
                raise StateError(f"cannot write the resume journal in {self.directory}: {exc}") from exc
        self.load_seen(expected_rows)
        if self._begin is not None:
            self.set_meta({"fingerprint": json.dumps(dict(self._begin), sort_keys=True), "complete": "false"})

    def set_meta(self, values: Mapping[str, str]) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    def _write(self, statement: str, rows: list[tuple]) -> None:
        """One transaction now; StateError when it fails."""
        try:
            with self._db:
                self._db.executemany(statement, rows)
        except sqlite3.Error as exc:
            raise StateError(f"cannot write the resume journal in {self.directory}: {exc}") from exc

    def close(self) -> None:
        """Commit what is pending and release the state (StateError: a failure not yet reported)."""
        try:
            self.flush()
        finally:
            self._writer.close()
            self._db.close()
            os.close(self._lock_fd)


def open_state(directory: Path, fingerprint: Mapping[str, str] | None, *, fresh: bool = False,
               purpose: str = BEGIN) -> StateStore:
    """Open (creating) and lock the state in ``directory`` for a job with ``fingerprint``.

    Nothing is written until :meth:`StateStore.begin` (``purpose`` BEGIN only; see the module
    docstring for the purposes).
    """
    try:
        private_dir(directory)
        lock_fd = _lock(directory / "lock")
    except OSError as exc:
        raise JobError(f"cannot use the state folder {directory}: {exc.strerror}") from exc
    try:
        for name in JOURNAL_FILES:  # SQLite gives its -wal and -shm files the journal's mode
            if name == JOURNAL_FILES[0] or (directory / name).exists():
                private_file(directory / name)
        db = _connect(directory / "journal.sqlite")
        db.executescript(_SCHEMA)
        if "errors" not in {row[1] for row in db.execute("PRAGMA table_info(batches)")}:
            db.execute("ALTER TABLE batches ADD COLUMN errors TEXT")  # a state from before the column
        store = StateStore(directory, db, _connect(directory / "journal.sqlite"), lock_fd, resumed=False)
        previous = json.loads(store.meta("fingerprint") or "null")
        if purpose == INSPECT:
            return store
        changed = _changes(previous, fingerprint or {})
        if purpose == CONTINUE:
            _check_same_job(directory, previous, changed)
            store.resumed = store.had_state = True
            return store
        _check_no_open_batches(store, fresh)
        if previous is not None and changed and store.meta("complete") != "true" and not fresh:
            done = store.rows_done()
            raise JobError(
                f"the job changed since its unfinished run ({', '.join(changed)} changed) and "
                f"{done:,} finished rows in {directory} would be mixed with new replies; rerun with "
                "--fresh to discard them and start over, or restore the job as it was")
        store._reset = bool(fresh or changed)
        store._begin = fingerprint
        store.resumed = previous is not None and not store._reset
        store.had_state = previous is not None
        return store
    except OSError as exc:
        os.close(lock_fd)
        raise JobError(f"cannot use the state folder {directory}: {exc.strerror}") from exc
    except sqlite3.Error as exc:
        os.close(lock_fd)
        raise JobError(f"the state in {directory} is unreadable ({exc}); remove the folder or pass --fresh") from exc
    except BaseException:
        os.close(lock_fd)
        raise


def _check_same_job(directory: Path, previous, changed: list[str]) -> None:
    """``batch collect`` works on the job as it was submitted, or not at all."""
    if previous is None:
        raise JobError(f"this job has no submitted batches (no state in {directory}): run "
                       "'chatbatch batch submit' first")
    if changed:
        raise JobError(f"the job changed since its batches were submitted ({', '.join(changed)} changed): "
                       "collect with the job file, flags and input exactly as they were when submitted "
                       "(replies are matched to input rows by position)")


def _check_no_open_batches(store: StateStore, fresh: bool) -> None:
    """Refuse to start a run while batches are open: they are billed whatever happens."""
    open_ids = store.open_batch_ids()
    if not open_ids:
        return
    names = ", ".join(open_ids)
    if fresh:
        raise JobError(f"--fresh would discard this job's batches that were not collected ({names}), which "
                       "are billed whatever happens: run 'chatbatch batch collect' first (after "
                       "'chatbatch batch cancel' if you do not want to wait for them), then --fresh")
    raise JobError(f"this job already has batches in progress ({names}): use 'chatbatch batch status' / "
                   "'collect', or 'cancel' them and then 'collect', before submitting or running it again")


def _connect(path: Path) -> sqlite3.Connection:
    """A connection to the journal: WAL, synchronous=NORMAL, "with db:" is one transaction."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
    db.isolation_level = ""
    return db


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise JobError(f"another chatbatch run (pid {holder}) is using the state in {path.parent}; "
                       "wait for it to finish, or stop it, before running this job again") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _changes(previous: Mapping[str, str] | None, current: Mapping[str, str]) -> list[str]:
    if previous is None:
        return []
    keys: Iterable[str] = sorted(set(previous) | set(current))
    return [key for key in keys if previous.get(key) != current.get(key)]
