"""How the command line's messages reach the terminal or the log: text, or one JSON object a line.

``--log-format text`` (the default) writes what a person reads: ``chatbatch: warning: ...``, each
line stamped with the time (ISO 8601 UTC, to the second) when stderr is not a terminal — a cron
log — as :mod:`pipeline.progress` stamps its lines. ``--log-format json`` writes every message as
one JSON object on one line, for log aggregators (Loki, CloudWatch, Datadog, ``jq``)::

    {"timestamp": "2026-12-01T02:30:31.250Z", "level": "info", "event": "progress",
     "message": "120/200 rows (60.0%), ...", "rows_done": 120, "rows_total": 200, "rows_per_s": 4.0, ...}

Every object has ``timestamp`` (UTC, milliseconds), ``level`` (``info``, ``warning``, ``error``),
``event`` (what happened: ``progress``, ``finished``, ``warning``, ``note``, ``stopping``,
``stopped``, ``aborted``, ``error``, ``summary``, ``batch``) and ``message`` (the text mode's
words), then the event's figures as fields. Every text is redacted (:mod:`pipeline.redaction`)
before it is written, in either format: the run's secrets never reach a log.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

from .redaction import redact

TEXT, JSON = "text", "json"
FORMATS = (TEXT, JSON)


def timestamp(epoch_s: float) -> str:
    """ISO 8601 UTC, to the second: the prefix of every text log line."""
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_timestamp(epoch_s: float) -> str:
    """ISO 8601 UTC to the millisecond, as JSON log lines carry it."""
    moment = datetime.fromtimestamp(epoch_s, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def json_line(level: str, event: str, message: str, fields: dict[str, Any], epoch_s: float) -> str:
    """One JSON log object, on one line (``default=str`` for paths and Decimals)."""
    record = {"timestamp": json_timestamp(epoch_s), "level": level, "event": event, "message": message}
    record.update(fields)
    return json.dumps(record, default=str, ensure_ascii=False)


class Log:
    """Writes the CLI's messages to ``stream`` (stderr) in ``format``, redacting ``secrets``.

    ``secrets`` is the CLI's own list, extended as the job reveals more; ``stamp`` says whether text
    lines carry a timestamp (stderr is not a terminal); ``wall`` gives epoch seconds.
    """

    def __init__(self, format: str = TEXT, *, secrets: list[str] | None = None, stream: TextIO | None = None,
                 stamp: bool | None = None, wall: Callable[[], float] = time.time) -> None:
        self.format = format
        self.secrets = secrets if secrets is not None else []
        self.stream = stream or sys.stderr
        self.stamp = (not _is_terminal(self.stream)) if stamp is None else stamp
        self.wall = wall

    @property
    def json(self) -> bool:
        return self.format == JSON

    def info(self, event: str, message: str, **fields: Any) -> None:
        self.write("info", event, message, **fields)

    def warning(self, event: str, message: str, **fields: Any) -> None:
        self.write("warning", event, message, **fields)

    def error(self, event: str, message: str, **fields: Any) -> None:
        self.write("error", event, message, **fields)

    def write(self, level: str, event: str, message: str, *, stream: TextIO | None = None, **fields: Any) -> None:
        """One message: in JSON one object; in text ``chatbatch: message`` (``chatbatch: warning:
        message`` for the events ``warning`` and ``error``), stamped unless on a terminal."""
        if self.json:
            message, fields = redact_all(message, self.secrets), redact_all(fields, self.secrets)
            line = json_line(level, event, message, fields, self.wall())
        else:
            line = "chatbatch: " + (f"{event}: " if event in ("warning", "error") else "") + message
            if self.stamp:
                line = f"{timestamp(self.wall())} {line}"
        print(redact(line, self.secrets), file=stream or self.stream, flush=True)

    def result(self, event: str, text: str, message: str | None = None, **fields: Any) -> None:
        """A command's result on stdout: ``text`` as it is, or in JSON one ``info`` object whose
        message is ``message`` (else ``text``) and whose fields hold the result."""
        if self.json:
            self.write("info", event, message or text, stream=sys.stdout, **fields)
        else:
            print(redact(text, self.secrets), file=sys.stdout, flush=True)


def redact_all(value: Any, secrets: list[str]) -> Any:
    """``value`` with every text in it redacted, inside dicts and lists too (before JSON escapes them)."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {key: redact_all(item, secrets) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(item, secrets) for item in value]
    return value


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stream-like object
        return False
