"""Structured output: a JSON schema (or a list of labels) in, typed columns out.

A job declares its output either as ``labels = ["positive", "negative", "neutral"]`` — which
becomes the strict schema ``{"label": enum of the labels}`` — or as ``output_schema``, a JSON schema
of an object (inline table, JSON text, or a path to a ``.json`` file). Each top-level property
becomes a typed column, named after the property (with the job's ``column_prefix``); the types come
from the schema alone, at every depth (:mod:`pipeline.columns`): string, int64, float64, bool, list,
struct — and JSON text for a value with no single Arrow type (a union, a free-form value). So they
are the same when every row failed, and no reply value can stop the writer.

**How it is asked for** (``structured_mode``): ``json_schema`` (default) sends
``response_format = {type: json_schema, json_schema: {name, strict, schema}}`` — with ``strict``,
the schema made strict-compatible by :func:`pipeline.strict.strict_schema` (or the job is refused
before anything is sent); ``json_object`` sends ``{type: json_object}`` and puts the schema in a
system message (which says "JSON", as JSON mode requires); ``prompt`` only puts it in the system
message, for endpoints with no ``response_format`` at all.

**On a local model** (``--local``) labels are asked for as the bare label: the reply *is* the label,
forced by the local server (how: :func:`pipeline.local.label_params`). Schemas go to llama.cpp's
JSON-schema grammar.

**Checked either way**: every reply is parsed and validated against the schema as the user wrote
it (jsonschema, Draft 2020-12; an optional property may come back null, meaning absent), and each
value must fit its column; a label outside the allowed set fails validation. A reply that fails is
retried ``validation_retries`` times, then recorded as a row error ``invalid_output`` with the raw
reply kept.

**Confidence** (labels with ``logprobs = true``): the probability of the chosen label is the product
of the probabilities of the tokens that spell it in the reply (``exp`` of their summed logprobs),
written as ``label_confidence`` in [0, 1].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa

from .columns import Column, Unstorable, column_for
from .errors import JobError
from .strict import ADVICE, Incompatible, optional_nullable, strict_schema

MODES = ("json_schema", "json_object", "prompt")
LABEL_FIELD = "label"


@dataclass(frozen=True)
class OutputSpec:
    schema: Mapping[str, Any]  # as the user wrote it (or the labels' schema)
    name: str
    mode: str
    strict: bool
    labels: tuple[str, ...] | None
    confidence: bool
    columns: tuple[tuple[str, Column], ...]
    sent_schema: Mapping[str, Any] | None = None  # what json_schema mode sends (strict-compatible)
    bare: bool = False  # labels on a local model: the reply is the bare label (forced by pipeline.local)

    @property
    def fields(self) -> tuple[tuple[str, pa.DataType], ...]:
        """One (name, Arrow type) per column."""
        return tuple((name, column.arrow) for name, column in self.columns)

    def request_params(self) -> dict[str, Any]:
        if self.bare:
            return {}  # the local server forces the label: pipeline.local.label_params
        if self.mode == "json_schema":
            return {"response_format": {"type": "json_schema", "json_schema": {
                "name": self.name, "strict": self.strict, "schema": dict(self.sent_schema or self.schema)}}}
        if self.mode == "json_object":
            return {"response_format": {"type": "json_object"}}
        return {}

    def instructions(self) -> str | None:
        """For the modes that cannot send the schema: the system-prompt text that describes it (it
        names JSON, which OpenAI's JSON mode requires in the messages)."""
        if self.mode == "json_schema" or self.bare:
            return None
        return ("Reply with one JSON object and nothing else, valid against this JSON schema:\n"
                + json.dumps(self.schema, ensure_ascii=False))


def build_spec(labels: Sequence[str] | None, schema: Any, *, mode: str, strict: bool, name: str,
               logprobs: bool, base_dir: Path, where: str, local: bool = False) -> OutputSpec | None:
    """The job's output spec, or None for free text. Errors name ``where`` (file or flag).

    On a ``local`` model the schema goes to llama.cpp's grammar, not to OpenAI's strict mode, so
    it is not rewritten (nor refused) for strict mode.
    """
    if labels is None and schema is None:
        return None
    if labels is not None and schema is not None:
        raise JobError(f"{where}: give either 'labels' or 'output_schema', not both")
    if mode not in MODES:
        raise JobError(f"{where}: 'structured_mode' must be one of {', '.join(MODES)}, got {mode!r}")
    if labels is not None:
        if not labels or not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
            raise JobError(f"{where}: 'labels' must be a list of distinct, non-empty strings")
        schema = {"type": "object", "properties": {LABEL_FIELD: {"type": "string", "enum": list(labels)}},
                  "required": [LABEL_FIELD], "additionalProperties": False}
    else:
        schema = _load_schema(schema, base_dir, where)
    _check_schema(schema, where)
    sent = None
    if mode == "json_schema" and strict and not local:
        try:
            sent = strict_schema(schema)
        except Incompatible as exc:
            raise JobError(f"{where}: output_schema cannot be sent in strict mode: {exc}; {ADVICE}") from exc
    columns = tuple((key, column_for(sub, schema)) for key, sub in schema["properties"].items())
    return OutputSpec(schema=schema, name=name, mode=mode, strict=strict,
                      labels=tuple(labels) if labels is not None else None,
                      confidence=bool(labels is not None and logprobs), columns=columns, sent_schema=sent,
                      bare=labels is not None and local)


def label_grammar(labels: Sequence[str]) -> str:
    """A GBNF grammar whose only sentences are the labels (JSON string escapes are GBNF's too)."""
    return "root ::= " + " | ".join(json.dumps(label, ensure_ascii=False) for label in labels)


def _load_schema(schema: Any, base_dir: Path, where: str) -> dict:
    if isinstance(schema, str) and schema.lstrip().startswith("{"):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise JobError(f"{where}: output_schema is JSON text but not valid JSON: {exc}") from exc
    elif isinstance(schema, str):
        path = (base_dir / schema) if not Path(schema).is_absolute() else Path(schema)
        try:
            schema = json.loads(path.read_text())
        except OSError as exc:
            raise JobError(f"{where}: cannot read output_schema file {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise JobError(f"{where}: output_schema file {path} is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise JobError(f"{where}: 'output_schema' must be a table (a JSON schema), JSON text or a path to one")
    return schema


def _check_schema(schema: Mapping[str, Any], where: str) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise JobError(f"{where}: output_schema is not a valid JSON schema: {exc.message}") from exc
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        raise JobError(f"{where}: output_schema must describe an object with 'properties' (one column each)")


def arrow_type(schema: Mapping[str, Any]) -> pa.DataType:
    """The Arrow type of a column holding values of this (sub)schema (see :mod:`pipeline.columns`)."""
    return column_for(schema).arrow


class Validator:
    """Parses and validates replies against an :class:`OutputSpec`."""

    def __init__(self, spec: OutputSpec) -> None:
        from jsonschema import Draft202012Validator

        self.spec = spec
        self._validator = Draft202012Validator(optional_nullable(dict(spec.schema)))

    def read(self, text: str | None) -> tuple[dict[str, Any], tuple]:
        """The reply's object and its column values; ValueError with a readable reason when the reply
        is not valid for the schema or a value cannot be stored in its column."""
        if text is None or not text.strip():
            raise ValueError("the reply is empty")
        try:
            value = _decode(self.spec, text)
        except ValueError as exc:
            raise ValueError(f"the reply is not valid JSON: {exc}") from exc
        errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            error = errors[0]
            where = "/".join(str(p) for p in error.path) or "the reply"
            raise ValueError(f"the reply does not match the schema at {where}: {error.message}")
        try:
            return value, column_values(self.spec, value)
        except Unstorable as exc:
            raise ValueError(f"the reply's value at {exc} (the reply is kept in 'reply')") from exc


def _decode(spec: OutputSpec, text: str) -> Any:
    """The reply's value: a bare label stands for ``{"label": ...}``; anything else is JSON."""
    if spec.bare:
        return {LABEL_FIELD: text.strip()}
    return json.loads(_strip_fence(text))


def _strip_fence(text: str) -> str:
    """Tolerate a reply wrapped in a Markdown code fence (prompt mode)."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped


def column_values(spec: OutputSpec, value: Mapping[str, Any]) -> tuple:
    """One value per column, as its Arrow type takes it; :class:`Unstorable` (naming where) if one
    cannot be stored."""
    out = []
    for name, column in spec.columns:
        try:
            out.append(column.convert(value.get(name)))
        except Unstorable as exc:
            exc.path.insert(0, name)
            raise
    return tuple(out)


def stored_values(spec: OutputSpec, text: str | None) -> tuple | None:
    """The column values of a reply validated earlier, read again; None when it cannot be read.

    For rows a resume journal kept from a chatbatch that stored values unconverted (before
    :mod:`pipeline.columns`): they were valid for the schema, so only the conversion is redone.
    """
    try:
        return column_values(spec, _decode(spec, text or ""))
    except (ValueError, AttributeError):  # not JSON, not an object, or a value that fits no column
        return None


def label_confidence(content: str, label: str, token_logprobs: Sequence[Mapping[str, Any]] | None) -> float | None:
    """Probability of ``label`` as written in ``content``, from the reply's token logprobs."""
    if not token_logprobs:
        return None
    tokens = [(t.get("token") or "", t.get("logprob")) for t in token_logprobs]
    text = "".join(token for token, _ in tokens)
    start = _label_span(text, label)
    if start is None:
        return None
    end, position, total = start + len(label), 0, 0.0
    for token, logprob in tokens:
        token_end = position + len(token)
        if token_end > start and position < end:
            if not isinstance(logprob, (int, float)):
                return None
            total += logprob
        position = token_end
    return min(1.0, max(0.0, math.exp(total)))


def _label_span(text: str, label: str) -> int | None:
    key = text.find(f'"{LABEL_FIELD}"')
    if key < 0:  # a bare label (local models) is the whole reply
        return text.find(label) if text.strip() == label else None
    quoted = text.find(f'"{label}"', key + len(LABEL_FIELD) + 2)
    return quoted + 1 if quoted >= 0 else None
