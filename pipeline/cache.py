"""The opt-in response cache shared across runs, and the request digest used for reuse.

With ``cache = true`` (``--cache``) every ok reply is stored under the digest of its request —
the endpoint URL and the exact body, so the model and every parameter are part of the key — in
``responses.sqlite`` in the cache folder (``cache_dir``, default ``$XDG_CACHE_HOME/chatbatch`` or
``~/.cache/chatbatch``). A later run (any job) that would send an identical request takes the reply
from here instead: the row is marked ``cached`` and costs nothing new.

Writes are buffered and committed every :data:`COMMIT_EVERY` replies and on close: a crash can lose
the last few cache entries, never a row (the resume journal is what guarantees rows). The folder and
the database are private to their owner (``0700``/``0600``, :mod:`pipeline.private`).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

from .errors import JobError
from .private import private_dir, private_file
from .records import RowResult, result_from_json, result_to_json

COMMIT_EVERY = 200


def request_digest(url: str, body: bytes) -> bytes:
    """16 bytes identifying a request: the same URL and body give the same digest."""
    digest = hashlib.blake2b(url.encode(), digest_size=16)
    digest.update(b"\n")
    digest.update(body)
    return digest.digest()


class ResponseCache:
    """A SQLite table of ok replies keyed by request digest."""

    def __init__(self, directory: Path) -> None:
        try:
            path = private_file(private_dir(directory) / "responses.sqlite")
            self._db = sqlite3.connect(path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS responses(key BLOB PRIMARY KEY, result TEXT NOT NULL,"
                             " stored_at REAL NOT NULL)")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise JobError(f"cannot open the response cache in {directory}: {exc}") from exc
        self.directory = directory
        self._pending: list[tuple] = []

    def get(self, key: bytes) -> RowResult | None:
        row = self._db.execute("SELECT result FROM responses WHERE key = ?", (key,)).fetchone()
        return result_from_json(row[0]) if row else None

    def put(self, key: bytes, result: RowResult) -> None:
        self._pending.append((key, result_to_json(result), time.time()))
        if len(self._pending) >= COMMIT_EVERY:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?)", pending)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()
