"""Rendering input rows into chat messages and request bodies.

A template names columns in braces: ``"Sentiment of: {review}"``. A placeholder is ``{name}`` where
``name`` holds no braces, quotes, colon or newline and does not start or end with a space; any other
brace is literal, so a JSON example in a prompt needs no escaping::

    >>> t = Template('Answer as {"label": "positive"} for: {review}')
    >>> t.columns
    ('review',)
    >>> t.render({"review": "Great mug"})
    'Answer as {"label": "positive"} for: Great mug'

``{{`` and ``}}`` also give literal braces. Null values render as an empty string. A row whose
prompt is blank, or whose referenced values are all null or blank, is not sent (status ``skipped``).

Instead of a template, a job may name a column holding a whole messages list (a JSON string, or a
list of ``{role, content}`` structs in Parquet/JSONL); a ``system`` prompt, placeholders rendered
from the row, is put before it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence

from . import tokens
from .errors import InputError
from .records import STATUS_ERROR, RowResult, skipped_result

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}\"'\n:\s](?:[^{}\"'\n:]*[^{}\"'\n:\s])?)\}")
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


class Template:
    """A prompt template compiled to a positional ``str.format`` string (fast C rendering)."""

    def __init__(self, text: str) -> None:
        self.text = text
        names: list[str] = []
        parts: list[str] = []
        position = 0
        for match in _TOKEN.finditer(text):
            parts.append(_escape(text[position:match.start()]))
            token = match.group(0)
            if token in ("{{", "}}"):
                parts.append(token)
            else:
                name = match.group(1)
                if name not in names:
                    names.append(name)
                parts.append("{%d}" % names.index(name))
            position = match.end()
        parts.append(_escape(text[position:]))
        self.columns: tuple[str, ...] = tuple(names)
        self._format = "".join(parts).format

    def check_columns(self, available: Sequence[str], what: str = "template") -> None:
        missing = [name for name in self.columns if name not in available]
        if missing:
            raise InputError(
                f"the {what} names column {missing[0]!r}, which the input lacks; "
                f"the input's columns are: {', '.join(available)}"
            )

    def render(self, row: dict[str, Any]) -> str:
        return self.render_values([row.get(name) for name in self.columns])

    def render_values(self, values: Sequence[Any]) -> str:
        return self._format(*("" if v is None else v for v in values))


def _escape(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


def is_blank(values: Iterable[Any]) -> bool:
    """True when every value is null or whitespace-only text."""
    return all(v is None or (isinstance(v, str) and not v.strip()) for v in values)


def json_mode(params: dict[str, Any]) -> bool:
    """True when the body asks for JSON mode, which OpenAI refuses unless the messages say "json"."""
    response_format = params.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") == "json_object"


def mentions_json(*texts: Any) -> bool:
    return any("json" in str(text).lower() for text in texts if text)


def parse_messages(value: Any) -> list[dict[str, Any]] | None:
    """A messages cell as a list of message dicts; None when null or empty.

    Raises ValueError with a readable reason when the cell is not a messages list.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"messages cell is not valid JSON: {exc}") from exc
    if not isinstance(value, list):
        raise ValueError(f"messages cell must be a list of messages, got {type(value).__name__}")
    if not value:
        return None
    messages = []
    for position, message in enumerate(value):
        if not isinstance(message, dict):
            raise ValueError(f"message {position} is not an object")
        message = {k: v for k, v in message.items() if v is not None}
        if message.get("role") not in ROLES:
            raise ValueError(f"message {position} has role {message.get('role')!r}; expected one of {sorted(ROLES)}")
        if "content" not in message and message["role"] != "assistant":
            raise ValueError(f"message {position} has no content")
        messages.append(message)
    return messages


class BodyEncoder:
    """Encodes messages into a request body, serialising the job's fixed part only once."""

    def __init__(self, model: str, params: dict[str, Any]) -> None:
        fixed = json.dumps({"model": model, **params}, ensure_ascii=False, separators=(",", ":"))
        self._tail = "," + fixed[1:]

    def encode(self, messages: list[dict[str, Any]]) -> bytes:
        head = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
        return ('{"messages":' + head + self._tail).encode()


class RowRenderer:
    """Turns a record batch into, per row, ``(body, prompt_tokens)`` or — when the row is not to be
    sent — its result (skipped, or an unreadable messages cell). Prompt tokens are counted when a
    :class:`~pipeline.tokens.TokenCounter` is given, else None."""

    def __init__(self, *, model: str, params: dict[str, Any], template: str | None, system: str | None,
                 messages_column: str | None, required_columns: Sequence[str],
                 counter: "tokens.TokenCounter | None" = None, instructions: str | None = None,
                 fold_system: bool = False) -> None:
        self._encoder = BodyEncoder(model, params)
        self._fold_system = fold_system
        self._instructions = instructions
        self._counter = counter
        self._template = Template(template) if template else None
        self._system = Template(system) if system else None
        self._messages_column = messages_column
        self._required = tuple(required_columns)
        # JSON mode with messages from a column: a row whose messages never say "json" is not sent
        self._json_word = json_mode(params) and not mentions_json(instructions, system)

    @classmethod
    def for_job(cls, job, counter: "tokens.TokenCounter | None" = None) -> "RowRenderer":
        """The renderer for a :class:`~pipeline.jobspec.Job`: its requests exactly as ``run`` sends them."""
        return cls(model=job.served_model or job.model, params=dict(job.params), template=job.template, system=job.system,
                   messages_column=job.messages_column, required_columns=job.required_columns, counter=counter,
                   instructions=job.output.instructions() if job.output else None, fold_system=job.local)

    def render_batch(self, batch) -> list[RowResult | tuple[bytes, int | None]]:
        rows = self._from_template(batch) if self._template is not None else self._from_column(batch)
        if self._required:
            required = [batch.column(name).to_pylist() for name in self._required]
            for i, values in enumerate(zip(*required)):
                if not isinstance(rows[i], RowResult) and any(is_blank((v,)) for v in values):
                    rows[i] = skipped_result("a required column is empty: nothing to send")
        if self._instructions:
            note = {"role": "system", "content": self._instructions}
            rows = [row if isinstance(row, RowResult) else [*_leading_system(row), note, *_rest(row)]
                    for row in rows]
        if self._fold_system:
            rows = [row if isinstance(row, RowResult) else fold_system(row) for row in rows]
        counter, encode = self._counter, self._encoder.encode
        return [row if isinstance(row, RowResult) else
                (encode(row), counter.count_messages(row) if counter is not None else None) for row in rows]

    def _from_template(self, batch) -> list:
        template, system = self._template, self._system
        columns = [batch.column(name).to_pylist() for name in template.columns]
        system_columns = [batch.column(n).to_pylist() for n in system.columns] if system else []
        out: list = []
        for i in range(batch.num_rows):
            values = [column[i] for column in columns]
            prompt = template.render_values(values)
            if (columns and is_blank(values)) or not prompt.strip():
                out.append(skipped_result("empty prompt: nothing to send"))
                continue
            messages = [{"role": "user", "content": prompt}]
            if system is not None:
                system_text = system.render_values([c[i] for c in system_columns])
                if system_text.strip():
                    messages.insert(0, {"role": "system", "content": system_text})
            out.append(messages)
        return out

    def _from_column(self, batch) -> list:
        system = self._system
        system_columns = [batch.column(n).to_pylist() for n in system.columns] if system else []
        out: list = []
        for i, cell in enumerate(batch.column(self._messages_column).to_pylist()):
            try:
                messages = parse_messages(cell)
            except ValueError as exc:
                out.append(RowResult(status=STATUS_ERROR, error_type="invalid_messages", error_message=str(exc)))
                continue
            if messages is None:
                out.append(skipped_result("empty messages: nothing to send"))
                continue
            if system is not None:
                system_text = system.render_values([c[i] for c in system_columns])
                if system_text.strip():
                    messages.insert(0, {"role": "system", "content": system_text})
            if self._json_word and not mentions_json(*(m.get("content") for m in messages)):
                out.append(RowResult(status=STATUS_ERROR, error_type="invalid_messages", error_message=(
                    "response_format json_object needs the word 'json' in the messages (the API refuses "
                    "them otherwise) and this row's lack it; say it in 'system'")))
                continue
            out.append(messages)
        return out


def fold_system(messages: list) -> list:
    """The leading system/developer messages folded into the first user turn, as Gemma's own chat
    template does (``system + "\n\n" + user``): a local model's chat format may drop system messages
    (llama-cpp-python's ``gemma`` format does), so on ``--local`` the instruction travels as user text.
    Any other system message (not text, or not followed by a user turn) is sent as a user turn.
    """
    lead = 0
    while lead < len(messages) and messages[lead].get("role") in ("system", "developer"):
        lead += 1
    parts = [m.get("content") for m in messages[:lead + 1]]
    if lead and lead < len(messages) and messages[lead].get("role") == "user" and all(isinstance(p, str) for p in parts):
        return [{**messages[lead], "content": "\n\n".join(parts)}, *messages[lead + 1:]]
    return [{**m, "role": "user"} if m.get("role") in ("system", "developer") else m for m in messages]


def _leading_system(messages: list) -> list:
    return messages[:1] if messages and messages[0].get("role") in ("system", "developer") else []


def _rest(messages: list) -> list:
    return messages[len(_leading_system(messages)):]
