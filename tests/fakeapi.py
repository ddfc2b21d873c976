"""Fake OpenAI Chat Completions server with fault injection, for tests.

It also imitates the Files and Batch APIs (section "Files and Batch API" below;
code in tests/fakebatch.py).

Start it in a test and point the pipeline at ``fake.base_url``::

    from fakeapi import FakeOpenAI

    with FakeOpenAI(api_key="sk-test", rpm=60) as fake:
        run_pipeline(base_url=fake.base_url, api_key="sk-test", ...)
        assert len(fake.completed()) == 3

The server runs an aiohttp app on 127.0.0.1 (free port) in a daemon thread with
its own event loop.  Every attribute given to the constructor may be changed
between runs (``fake.latency_s = 0.2``, ``fake.rpm = 5``); ``reset()`` forgets
the recorded requests, counters, rate-limit buckets, per-prompt attempts,
files and batches (knobs such as ``batch_outcome`` are kept).

Manual use: ``python tests/fakeapi.py --port 8123 [--rpm N --tpm N
--latency 0.1 --api-key K]`` serves until Ctrl-C.

Routes
------
* ``POST /v1/chat/completions`` (auth: ``Authorization: Bearer <key>``).
* ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``
  (Azure style, auth: ``api-key: <key>``).  Without ``api-version`` -> 404.
  ``model`` may be omitted from the body; it defaults to the deployment.
* ``/v1/files...`` and ``/v1/batches...``: see "Files and Batch API".
* Anything else -> 404 with an OpenAI-style error body.

Order of checks for every request: route (404) -> auth (401) -> body (400:
must be a JSON object with a ``model`` string and a non-empty ``messages``
list) -> quota (429 insufficient_quota once ``quota_after`` completions were
billed) -> rate limits (429 rate_limit_exceeded, see below) -> fault
directives -> normal 200 reply.  ``latency_s`` (plus any ``[[slow]]``) is
awaited before every reply, whatever its status.

Normal reply
------------
OpenAI's ChatCompletion shape.  Choice 0 says ``reply(body)`` if ``reply`` is
given, else ``"ECHO " + <last user message text>``; choice i>0 (``n`` > 1)
says ``"ECHO#<i> " + <that text>``.  Content given as a list of parts uses
its ``text`` parts joined with "\\n".  Token counts are deterministic:

* with ``logprobs: true`` in the body, each choice carries ``logprobs.content``: the reply split into
  word and punctuation tokens, each with logprob ``token_logprob`` (default -0.05)
* prompt_tokens P = max(1, chars of all message contents // 4) + 3 * messages, or
  ``count_prompt(messages)`` when given (e.g. a tiktoken count)
* completion_tokens C = sum over choices of max(1, len(text) // 4),
  plus ``reasoning_tokens``
* ``max_completion_tokens`` / ``max_tokens`` cut a longer choice to
  4*limit chars with finish_reason "length".
* cached_tokens = min(``cached_tokens``, P).
``model`` in the reply is ``answered_model(requested_model)`` if given.
``service_tier`` in the reply is the request's, else "default".

Rate limits (``rpm``, ``tpm``)
------------------------------
Two token buckets (capacity = the per-minute limit, refilled continuously at
limit/60 per second, starting full).  A request costs 1 request and
P + (max_completion_tokens or max_tokens or 1000) * n tokens.  If a bucket
lacks capacity the reply is 429 (type "requests" or "tokens", code
"rate_limit_exceeded") with ``retry-after`` (whole seconds, rounded up) and
``retry-after-ms``; nothing is consumed.  A request whose token cost exceeds
``tpm`` itself gets a 429 "Request too large" without retry-after headers.
Every reply that got past the rate-limit stage carries the ``x-ratelimit-*``
headers (limit/remaining as ints, reset as Go-style durations like "1s",
"547ms", "2m52.8s").  ``fake.rpm_window_s`` (default 60) sizes the requests
bucket to ``rpm × rpm_window_s / 60``: e.g. 1.0 enforces the rate over each
second instead of allowing a whole minute's burst.  ``fake.rate_limited`` counts 429 rate_limit_exceeded
replies (bucket ones and ``[[429]]`` ones, not quota ones).

Random transient faults
-----------------------
``fake.fault_rate`` (default 0): each request that gets past the rate limits
fails with this probability, whatever its prompt — a 500, a connection reset
or a truncated 200 body, in turn — as a flaky provider does.  The draws come
from ``fake.fault_random`` (``random.Random(0)`` after ``reset()``), so a run
is repeatable given the order of requests.  ``fake.faults`` counts them.

Fault directives
----------------
Written anywhere in the text of the last user message, so one input table can
mix faulty and normal rows.  Attempts are counted per distinct prompt text
(counting only requests that reach the directive stage, i.e. not those
rejected by auth/validation/quota/rate limits), so "first K attempts" works
across retries.  K omitted means "always".  Several directives may be
combined: all active ``[[slow]]`` delays add up, and the first other active
directive decides the reply.  An unknown directive name gets a 400 with type
"fakeapi_error" so that typos are loud.

``[[status:CODE]]``, ``[[status:CODE:K]]``
    Answer CODE (400-599, e.g. 400, 404, 408, 409, 422, 500, 502, 503) with an
    OpenAI error body; type "invalid_request_error" for 4xx, "server_error"
    for 5xx, code null.
``[[context]]``
    400, code "context_length_exceeded" (128000-token context message).
``[[429]]``, ``[[429:K]]``
    429 rate_limit_exceeded (type "requests") with ``retry-after-ms: 50`` and
    ``retry-after: 1``.
``[[quota]]``
    429 insufficient_quota (always).
``[[auth]]``
    401 invalid_api_key (always).
``[[reset]]``, ``[[reset:K]]``
    Abort the TCP connection without any response (httpx raises
    RemoteProtocolError, a TransportError); recorded with status 0.
``[[slow:SECONDS]]``, ``[[slow:SECONDS:K]]``
    Sleep SECONDS (may be fractional) before answering.
``[[truncate]]``, ``[[truncate:K]]``
    200, Content-Type application/json, body cut in half (invalid JSON).
``[[nochoices]]``, ``[[nochoices:K]]``
    200 with a valid completion whose ``choices`` is ``[]`` (not billed).
``[[refuse]]``
    200 whose message has ``content: null`` and ``refusal: "I'm sorry, I
    can't help with that."`` (billed, like the real API).

OpenAI's request checks (off by default)
---------------------------------------
``fake.strict_schemas = True``: a ``response_format`` of type json_schema with
``strict: true`` whose schema strict mode refuses (an object without
``additionalProperties: false`` or not requiring every property, a subschema
without ``type``/``anyOf``/``$ref``/``enum``/``const``, or a keyword such as
``patternProperties``, ``allOf``, ``if``) -> 400 invalid_request_error, param
"response_format", naming the problem as OpenAI does.  ``fake.json_word =
True``: ``response_format`` json_object while no message content contains
"json" (any case) -> 400, param "messages".  Both apply to batch lines too.

Example row texts: ``"Summarise X [[status:500:2]]"`` fails twice then
succeeds; ``"[[slow:0.3:1]] Y"`` is slow once; ``"[[reset:1]] Z"`` drops the
first connection.  Notes: rows with identical text share one attempt counter
(make them distinct if they must fail independently); the directive stays in
the prompt, so the ECHO reply contains it too.

Echoing the key
---------------
``fake.echo_key_at`` (default None) makes every error answer (chat, Files and Batch routes) echo the
key the client sent, as careless servers do (a batch's error lines echo ``api_key``): the error
message becomes ``"x" * OFFSET + <key> + " "
+ "y" * 600 + <the usual message>``.  OFFSET is ``echo_key_at`` itself, or ``echo_key_at(prompt)``
when it is callable (prompt: the last user message, None on the batch routes; return None to leave
that answer alone).

Recording
---------
``fake.requests`` lists every request in arrival order as a dict with keys
``path``, ``query``, ``headers`` (lowercase keys), ``body`` (parsed JSON or
None), ``prompt`` (last user message text or None), ``status`` (None while
in flight, 0 for a dropped connection), ``deployment`` (Azure paths, else
None), ``attempt`` (1-based attempt number of this prompt, None if the
request did not reach the directive stage), ``billed`` (True for a valid 200
completion) and ``client_gone`` (True if the client had already hung up when
the answer was sent -- it is still billed, as with the real API; best
effort, it depends on the client having closed its socket).
``fake.completed()`` returns the billed entries; ``fake.billed_count`` counts
billed completions and ``fake.rate_limited`` the rate-limit 429s.

Files and Batch API
-------------------
Routes (checks: route 404 -> auth 401, ``Authorization: Bearer`` as for
/v1/chat/completions -> the route's own 400/404; ``latency_s`` applies; every
call is appended to ``fake.batch_requests_log`` as ``(method, path)``, none to
``fake.requests``):

* ``POST /v1/files``, multipart form: ``purpose`` must be "batch", ``file`` a
  JSONL batch input file.  Every line must be a JSON object with a unique
  non-empty ``custom_id``, ``"method": "POST"``, ``"url":
  "/v1/chat/completions"`` and a ``body`` object with a ``model`` string and a
  non-empty ``messages`` list; all lines must use one model.  A bad line, an
  empty file, more than ``max_batch_requests`` lines (default 50,000) or more
  than ``max_file_bytes`` (default 200,000,000) -> 400 invalid_request_error,
  param "file", code naming the problem (invalid_json, duplicate_custom_id,
  invalid_method, invalid_url, missing_required_parameter, mixed_models,
  empty_file, too_many_requests, file_too_large).  200: an OpenAIFile
  ``{"id": "file-<n>", "object": "file", "bytes", "created_at", "filename",
  "purpose": "batch", "status": "processed"}``.
* ``GET /v1/files/{id}`` -> the OpenAIFile; ``GET /v1/files/{id}/content`` ->
  the raw bytes (uploads and generated output/error files).  Unknown id -> 404.
* ``POST /v1/batches`` JSON ``{"input_file_id", "endpoint":
  "/v1/chat/completions", "completion_window": "24h", "metadata"?}`` (other
  values, an unknown file or one whose purpose is not "batch" -> 400) -> a
  Batch ``{"id": "batch_<n>", "object": "batch", "endpoint", "model",
  "errors": null, "input_file_id", "completion_window", "status":
  "validating", "output_file_id": null, "error_file_id": null, "created_at",
  "in_progress_at" ... "cancelled_at" (null until reached), "request_counts":
  {"total", "completed", "failed"}, "usage" (Batch usage: input/output/total
  tokens of the answered lines), "metadata"}``.  ``<n>`` is the creation
  index, 0-based.
* ``GET /v1/batches/{id}`` -> the Batch, moved one step every
  ``batch_polls_per_step`` GETs (default 1; 0 or less: the first GET finishes
  it): validating -> in_progress (total and expires_at set) -> finalizing ->
  completed.  Unknown id -> 404.
* ``POST /v1/batches/{id}/cancel`` -> the Batch in "cancelling"; the next step
  makes it "cancelled" with the first half of the lines answered.  Cancelling
  a completed/failed/expired batch -> 400; a cancelling/cancelled one is
  returned unchanged.

When a batch ends, its answered lines are computed by the chat route's own
logic (same "ECHO ..." replies, usage, ``reply``/``answered_model`` hooks and
fault directives, sharing the per-prompt attempt counters, so
``[[status:500:1]]`` fails in the batch and succeeds when retried later), but
without auth, quota, rate limits, delays, ``billed_count`` or ``requests``.
Each answer becomes one line of a new file (purpose "batch_output", filename
``batch_<n>_output.jsonl`` / ``batch_<n>_error.jsonl``):

* 200 -> output file: ``{"id": "batch_req_...", "custom_id", "response":
  {"status_code": 200, "request_id": "req_...", "body": <ChatCompletion>},
  "error": null}``.  ``[[truncate]]`` writes that line cut in half (a broken
  JSONL line); ``[[nochoices]]``/``[[refuse]]`` answer as in the chat route.
* an error status (``[[status:CODE]]``, ``[[context]]``, ``[[429]]``,
  ``[[quota]]``, ``[[auth]]``, bad directive, bad ``n``) -> error file, same
  shape with that ``status_code`` and the OpenAI error body.
* ``[[reset]]`` -> error file: ``"response": null, "error": {"code":
  "server_error", "message": ...}``.

``output_file_id``/``error_file_id`` stay null when that file would be empty;
``request_counts.completed``/``failed`` count the lines of each file.  Lines
are written in reverse input order while ``batch_shuffle`` is True (the
default; OpenAI does not keep the input order either; map by custom_id).

``fake.batch_outcome`` forces how a batch ends, read at every step so it may
be set after creation: a dict keyed by creation index, or a callable
``(index, batch_object) -> outcome or None``; the outcomes are

* "complete" (default): as above.
* "expire": in_progress (or finalizing) -> "expired" with ``expired_at``;
  only the first half of the lines (``total // 2``) are answered, the rest
  are in neither file.
* "fail": the next step -> "failed" with ``failed_at`` and ``errors: {"object":
  "list", "data": fake.batch_fail_errors}`` (default ``[{"code": "invalid_json",
  "message", "param": null, "line": 1}]``); no output or error file.
* "errors_only": "completed" with only an error file, every line
  ``"response": null, "error": {"code": "server_error", ...}``.

With ``fake.batch_unfinished_errors = True`` (default False) the lines an
expired or cancelled batch left unanswered go to the error file with
``"response": null`` and error code "batch_expired" / "batch_cancelled" (as
OpenAI's newer documentation describes) instead of being absent.

``fake.batch_fault``: None, or a callable ``(method, path) -> (status, body)
or None`` asked first for every Files/Batch call (before auth); a tuple is
answered as is (JSON body), e.g. ``lambda m, p: (429, {"error": {"code":
"insufficient_quota", ...}}) if p == "/v1/files" else None``.

Recorded state: ``fake.files`` (id -> {"purpose", "filename", "content":
bytes, "created_at"}), ``fake.batches`` (id -> {"batch": the Batch object,
"index", "lines": the parsed input lines, "polls"}) and
``fake.batch_requests_log``.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import math
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

if __package__:  # imported as tests.fakeapi
    from .fakebatch import BATCH_PATH, ApiError, FakeBatchAPI
else:  # tests/ on sys.path (pytest, conftest) or run as a script
    from fakebatch import BATCH_PATH, ApiError, FakeBatchAPI

REFUSAL = "I'm sorry, I can't help with that."
KEY_URL = "https://platform.openai.com/account/api-keys"
CONTEXT_MSG = (
    "This model's maximum context length is 128000 tokens. However, your "
    "messages resulted in 130000 tokens. Please reduce the length of the messages."
)
QUOTA_MSG = "You exceeded your current quota, please check your plan and billing details."
NO_KEY_MSG = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
    f"or as the password field (with blank username) if you're accessing the API "
    f"from your browser and are prompted for a username and password. You can "
    f"obtain an API key from {KEY_URL}."
)
OPENAI_PATH = re.compile(r"^/v1/chat/completions/?$")
AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions/?$")
DIRECTIVE = re.compile(r"\[\[([A-Za-z0-9_]+)((?::[^:\[\]]*)*)\]\]")
# name -> (number of leading required args, index of the optional K arg or None)
DIRECTIVES = {
    "status": (1, 1), "context": (0, None), "429": (0, 0), "quota": (0, None),
    "auth": (0, None), "reset": (0, 0), "slow": (1, 1), "truncate": (0, 0),
    "nochoices": (0, 0), "refuse": (0, None),
}


# --------------------------------------------------------------------------
# helpers


def go_duration(seconds: float) -> str:
    """Format like Go's time.Duration (ms precision): "0s", "547ms", "6m0s", "2m52.8s"."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, frac = divmod(rest, 1000)
    out = f"{secs}" + (f".{frac:03d}".rstrip("0") if frac else "") + "s"
    if hours or minutes:
        out = f"{minutes}m" + out
    if hours:
        out = f"{hours}h" + out
    return out


def sent_key(request: web.Request) -> str:
    """The key a request carried (``api-key`` header, or a Bearer token)."""
    auth = request.headers.get("Authorization", "")
    return request.headers.get("api-key") or (auth[7:].strip() if auth[:7].lower() == "bearer " else auth)


def mask_key(key: str) -> str:
    return f"{key[:5]}***{key[-2:]}"


def content_text(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "") for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def last_user_text(messages: list) -> str | None:
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return content_text(msg.get("content"))
    return None


def prompt_tokens(messages: list) -> int:
    chars = sum(len(content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    return max(1, chars // 4) + 3 * len(messages)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def directive_state(name: str, args: list[str], attempt: int) -> tuple[bool, float]:
    """Validate one directive; return (active on this attempt, slow seconds).

    Raises KeyError for an unknown name, ValueError for bad arguments.
    """
    required, k_index = DIRECTIVES[name]
    allowed = required if k_index is None else k_index + 1
    if not required <= len(args) <= allowed:
        raise ValueError(args)
    if name == "status" and not 400 <= int(args[0]) <= 599:
        raise ValueError(args)
    seconds = float(args[0]) if name == "slow" else 0.0
    k = args[k_index] if k_index is not None and len(args) > k_index else ""
    return (not k or attempt <= int(k)), seconds


def parse_directives(text: str | None) -> list[tuple[str, list[str]]]:
    """Return [(name, args)] for every ``[[name:arg:...]]`` in text."""
    if not text:
        return []
    return [(m.group(1).lower(), m.group(2).split(":")[1:])
            for m in DIRECTIVE.finditer(text)]


STRICT_REFUSED = ("patternProperties", "allOf", "not", "if", "then", "else", "dependentRequired",
                  "dependentSchemas", "unevaluatedProperties", "unevaluatedItems", "prefixItems", "default")
JSON_WORD_MSG = ("'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                 "'json_object'.")


def strict_schema_problem(schema: Any, context: tuple = ()) -> str | None:
    """Why OpenAI's strict mode would refuse ``schema`` (its wording), or None."""
    where = f"In context={context}, "
    if not isinstance(schema, dict):
        return f"{where}schema must be a JSON Schema of 'type: \"object\"', got {schema!r}."
    for key in STRICT_REFUSED:
        if key in schema:
            return f"{where}'{key}' is not permitted."
    if not {"type", "anyOf", "$ref", "enum", "const"} & schema.keys():
        return f"{where}schema must have a 'type' key."
    kinds = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    if "object" in kinds:
        if schema.get("additionalProperties") is not False:
            return f"{where}'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        missing = [k for k in properties if k not in (schema.get("required") or [])]
        if missing:
            return (f"{where}'required' is required to be supplied and to be an array including every key "
                    f"in properties. Missing '{missing[0]}'.")
    subs = [(("properties", k), v) for k, v in (schema.get("properties") or {}).items()]
    subs += [(("$defs", k), v) for k, v in (schema.get("$defs") or {}).items()]
    subs += [(("anyOf", i), v) for i, v in enumerate(schema.get("anyOf") or [])]
    subs += [(("items",), schema["items"])] if "items" in schema else []
    for path, sub in subs:
        problem = strict_schema_problem(sub, context + path)
        if problem:
            return problem
    return None


def openai_format_problem(body: dict, strict_schemas: bool, json_word: bool) -> tuple[str, str] | None:
    """(message, param) of the 400 OpenAI gives for this body's response_format, or None."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    if json_word and response_format.get("type") == "json_object":
        if not any("json" in content_text(m.get("content")).lower() for m in body["messages"]
                   if isinstance(m, dict)):
            return JSON_WORD_MSG, "messages"
    spec = response_format.get("json_schema") or {}
    if strict_schemas and response_format.get("type") == "json_schema" and spec.get("strict"):
        problem = strict_schema_problem(spec.get("schema"))
        if problem:
            return f"Invalid schema for response_format '{spec.get('name')}': {problem}", "response_format"
    return None


class Bucket:
    """Continuously refilled token bucket: capacity per minute, starts full.

    ``window_s`` (default 60) sizes the bucket: it holds ``capacity × window_s / 60`` (at least 1),
    so a short window enforces the per-minute rate over seconds, not over a whole minute.
    """

    def __init__(self, capacity: int, window_s: float = 60.0):
        self.capacity = capacity
        self.rate = max(capacity, 1) / 60.0  # rpm=0 would never refill
        self.size = max(1.0, capacity * window_s / 60.0) if window_s != 60.0 else float(capacity)
        self.level = self.size
        self.stamp = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.size, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, cost: int) -> float:
        """Seconds until `cost` is available (0 if available now; inf if never)."""
        if cost > self.capacity:
            return math.inf
        return max(0.0, (min(cost, self.size) - self.level) / self.rate)

    def until_full(self) -> float:
        return (self.size - self.level) / self.rate

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": str(self.capacity),
            f"x-ratelimit-remaining-{kind}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{kind}": go_duration(self.until_full()),
        }


@dataclass
class Action:
    """What to answer: kind is "json", "reset" (drop) or "truncate"."""

    kind: str
    status: int
    payload: dict
    delay: float = 0.0
    billed: bool = False


class Reply(Exception):
    """Raised inside the handler to answer immediately with an error."""

    def __init__(self, status: int, body: dict, headers: dict | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}
        self.delay = 0.0


# --------------------------------------------------------------------------
# the server


class FakeOpenAI(FakeBatchAPI):
    """Fake OpenAI Chat Completions (plus Files and Batch) server; see the module docstring."""

    def __init__(self, *, api_key: str | None = None, rpm: int | None = None,
                 tpm: int | None = None, latency_s: float = 0.0,
                 quota_after: int | None = None, cached_tokens: int = 0,
                 reasoning_tokens: int = 0,
                 answered_model: Callable[[str], str] | None = None,
                 reply: Callable[[dict], str] | None = None, port: int = 0,
                 count_prompt: Callable[[list], int] | None = None):
        self.api_key, self.rpm, self.tpm = api_key, rpm, tpm
        self.latency_s, self.quota_after = latency_s, quota_after
        self.cached_tokens, self.reasoning_tokens = cached_tokens, reasoning_tokens
        self.answered_model, self.reply = answered_model, reply
        self.count_prompt = count_prompt  # usage.prompt_tokens from messages (default: chars // 4)
        self.token_logprob = -0.05  # the logprob given to every token when logprobs are asked for
        self.strict_schemas = False  # 400 a strict json_schema that OpenAI's strict mode refuses
        self.json_word = False  # 400 a json_object request whose messages never say "json"
        self.echo_key_at: int | Callable[[str | None], int | None] | None = None  # see "Echoing the key"
        self.rpm_window_s = 60.0  # the requests bucket holds rpm × this / 60 (see Bucket)
        self.fault_rate = 0.0  # share of requests failing at random (see "Random transient faults")
        self.port = port
        self.base_url = self.root_url = ""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._init_batches()
        self.reset()

    def reset(self) -> None:
        """Forget recorded requests, counters, buckets, per-prompt attempts, files and batches."""
        with self._lock:
            self.requests: list[dict] = []
        self._reset_batches()
        self.rate_limited = 0
        self.billed_count = 0
        self.faults = 0
        self.fault_random = random.Random(0)
        self._ids = 0
        self._attempts: dict[str, int] = {}
        self._buckets: dict[str, Bucket] = {}

    def completed(self) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["billed"]]

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> "FakeOpenAI":
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="FakeOpenAI", daemon=True)
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(10)
        self.root_url = f"http://127.0.0.1:{port}"
        self.base_url = self.root_url + "/v1"
        return self

    async def _astart(self) -> int:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self._runner.addresses[0][1]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    async def _astop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        me = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not me:
                task.cancel()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- request handling ------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if BATCH_PATH.match(request.path):
            return await self._handle_batch(request)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        messages = body.get("messages") if isinstance(body, dict) else None
        entry = {
            "path": request.path, "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body, "status": None, "deployment": None, "attempt": None,
            "prompt": last_user_text(messages) if isinstance(messages, list) else None,
            "billed": False, "client_gone": False, "time": time.monotonic(),
        }
        with self._lock:
            self.requests.append(entry)
        headers = {"x-request-id": "req_" + uuid.uuid4().hex}
        try:
            action = self._decide(request, entry, headers)
        except Reply as err:
            headers.update(err.headers)
            action = Action("json", err.status, self._echo_key(sent_key(request), entry["prompt"], err.body),
                            err.delay)
        return await self._respond(request, entry, headers, action)

    def _echo_key(self, sent: str, prompt: str | None, body: Any) -> Any:
        """``body`` with the key the client sent echoed into its error message (``echo_key_at``)."""
        offset = self.echo_key_at(prompt) if callable(self.echo_key_at) else self.echo_key_at
        if offset is None or not isinstance(body, dict) or not isinstance(body.get("error"), dict):
            return body
        error = {**body["error"], "message": "x" * offset + sent + " " + "y" * 600 + str(body["error"]["message"])}
        return {**body, "error": error}

    async def _handle_batch(self, request: web.Request) -> web.StreamResponse:
        """Files and Batch routes (fakebatch.py); not recorded in ``requests``."""
        try:
            response = await self._batch_route(request)
        except (Reply, ApiError) as err:
            response = web.json_response(self._echo_key(sent_key(request), None, err.body), status=err.status,
                                         headers=err.headers)
        response.headers["x-request-id"] = "req_" + uuid.uuid4().hex
        await asyncio.sleep(self.latency_s)
        return response

    def _line_answer(self, body: Any) -> tuple[int, Any, str]:
        """Answer one batch input line's body like the chat route, minus auth, quota, rate
        limits and delays.  Return (status_code, response body, kind): kind is "error" (body is an
        OpenAI error body), "reset" (status 0, no body) or the completion variant ("ok",
        "nochoices", "refuse", "truncate"; the body is the ChatCompletion).
        """
        prompt = None
        try:
            body = self._validate(body, None)
            self._check_format(body)
            prompt = last_user_text(body["messages"])
            self._attempts[prompt or ""] = attempt = self._attempts.get(prompt or "", 0) + 1
            kind, _delay = self._directive(prompt, attempt, body)
        except Reply as err:  # a line's error echoes the key the batch was created with (echo_key_at)
            return err.status, self._echo_key(self.api_key or "", prompt, err.body), "error"
        if kind == "reset":
            return 0, None, kind
        return 200, self._completion(body, "ok" if kind == "truncate" else kind), kind

    async def _respond(self, request: web.Request, entry: dict, headers: dict,
                       action: Action) -> web.StreamResponse:
        await asyncio.sleep(self.latency_s + action.delay)
        transport = request.transport
        entry["client_gone"] = transport is None or transport.is_closing()
        if action.kind == "reset":
            entry["status"] = 0
            if transport is not None:
                transport.abort()
            return web.Response(status=500)  # never reaches the client
        data = json.dumps(action.payload).encode()
        if action.kind == "truncate":
            data = data[: len(data) // 2]
        entry["status"], entry["billed"] = action.status, action.billed
        return web.Response(status=action.status, body=data, headers=headers,
                            content_type="application/json")

    def _decide(self, request: web.Request, entry: dict, headers: dict) -> Action:
        """Run the checks in order and return what to answer (or raise Reply)."""
        deployment = self._route(request)
        entry["deployment"] = deployment
        self._check_auth(request, deployment is not None)
        body = self._validate(entry["body"], deployment)
        self._check_format(body)
        if self.quota_after is not None and self.billed_count >= self.quota_after:
            raise Reply(429, error_body(QUOTA_MSG, "insufficient_quota", "insufficient_quota"))
        headers.update(self._rate_limit(body))
        prompt = entry["prompt"] or ""
        self._attempts[prompt] = attempt = self._attempts.get(prompt, 0) + 1
        entry["attempt"] = attempt
        kind, delay = self._directive(entry["prompt"], attempt, body)
        if kind == "ok" and self.fault_rate and self.fault_random.random() < self.fault_rate:
            kind = self._random_fault()
        if kind in ("reset", "truncate"):
            return Action(kind, 200, self._completion(body, "ok"), delay)
        self.billed_count += kind != "nochoices"  # reserved now so quota is strict
        return Action("json", 200, self._completion(body, kind), delay,
                      billed=kind != "nochoices")

    def _random_fault(self) -> str:
        """The next random fault: a 500 (raised), a reset or a truncated body, in turn."""
        self.faults += 1
        kind = ("status", "reset", "truncate")[self.faults % 3]
        if kind == "status":
            raise Reply(500, error_body("fakeapi: injected 500 Internal Server Error", "server_error", None))
        return kind

    def _route(self, request: web.Request) -> str | None:
        """Return the Azure deployment (or None for /v1); raise 404 otherwise."""
        not_found = Reply(404, error_body(
            f"Invalid URL ({request.method} {request.path})", "invalid_request_error", None))
        if request.method != "POST":
            raise not_found
        if OPENAI_PATH.match(request.path):
            return None
        match = AZURE_PATH.match(request.path)
        if not match:
            raise not_found
        if "api-version" not in request.query:
            raise Reply(404, error_body("Resource not found", "invalid_request_error", "404"))
        return match.group(1)

    def _check_auth(self, request: web.Request, azure: bool) -> None:
        if self.api_key is None:
            return
        if azure:
            sent = request.headers.get("api-key")
        else:
            auth = request.headers.get("Authorization", "")
            sent = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if sent == self.api_key:
            return
        if not sent:
            raise Reply(401, error_body(NO_KEY_MSG, "invalid_request_error", None))
        raise self._auth_error(sent)

    @staticmethod
    def _auth_error(sent: str) -> Reply:
        msg = (f"Incorrect API key provided: {mask_key(sent)}. "
               f"You can find your API key at {KEY_URL}.")
        return Reply(401, error_body(msg, "invalid_request_error", "invalid_api_key"))

    @staticmethod
    def _validate(body: Any, deployment: str | None) -> dict:
        def bad(msg: str, param: str | None = None) -> Reply:
            return Reply(400, error_body(msg, "invalid_request_error", None, param))
        if not isinstance(body, dict):
            raise bad("We could not parse the JSON body of your request. (HINT: This "
                      "likely means you aren't using your HTTP library correctly.)")
        if deployment is not None and "model" not in body:
            body = {**body, "model": deployment}
        if not isinstance(body.get("model"), str):
            raise bad("you must provide a model parameter", "model")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise bad("'messages' must be a non-empty array.", "messages")
        n = body.get("n", 1)
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise bad(f"{n!r} is less than the minimum of 1 - 'n'", "n")
        return body

    def _check_format(self, body: dict) -> None:
        problem = openai_format_problem(body, self.strict_schemas, self.json_word)
        if problem is not None:
            raise Reply(400, error_body(problem[0], "invalid_request_error", None, problem[1]))

    # ---- rate limits -----------------------------------------------------

    def _bucket(self, kind: str, limit: int | None) -> Bucket | None:
        if limit is None:
            self._buckets.pop(kind, None)
            return None
        bucket = self._buckets.get(kind)
        window_s = self.rpm_window_s if kind == "requests" else 60.0
        if bucket is None or bucket.capacity != limit or bucket.size != Bucket(limit, window_s).size:
            bucket = self._buckets[kind] = Bucket(limit, window_s)
        bucket.refill()
        return bucket

    def _rate_limit(self, body: dict) -> dict[str, str]:
        """Consume from the buckets or raise a 429; return x-ratelimit headers."""
        req_b = self._bucket("requests", self.rpm)
        tok_b = self._bucket("tokens", self.tpm)
        cost = request_token_cost(body)
        for kind, bucket, amount in (("requests", req_b, 1), ("tokens", tok_b, cost)):
            if bucket is not None and bucket.wait_for(amount) > 0:
                raise self._limit_error(kind, bucket, amount, body["model"], req_b, tok_b)
        for bucket, amount in ((req_b, 1), (tok_b, cost)):
            if bucket is not None:
                bucket.level -= amount
        return limit_headers(req_b, tok_b)

    def _limit_error(self, kind: str, bucket: Bucket, amount: int, model: str,
                     req_b: Bucket | None, tok_b: Bucket | None) -> Reply:
        self.rate_limited += 1
        wait = bucket.wait_for(amount)
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        head = f"in organization org-fake on {unit}: Limit {bucket.capacity}"
        headers = limit_headers(req_b, tok_b)
        if math.isinf(wait):
            msg = (f"Request too large for {model} {head}, Requested {amount}. The input "
                   "or output tokens must be reduced in order to run successfully.")
        else:
            used = bucket.capacity - max(0, int(bucket.level))
            msg = (f"Rate limit reached for {model} {head}, Used {used}, Requested "
                   f"{amount}. Please try again in {go_duration(wait)}.")
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return Reply(429, error_body(msg, kind, "rate_limit_exceeded"), headers)

    # ---- directives and completions ---------------------------------------

    def _directive(self, prompt: str | None, attempt: int, body: dict) -> tuple[str, float]:
        """Apply the active fault directives.

        Raise Reply for error answers; otherwise return (kind, extra_delay) where
        kind is "ok", "reset", "truncate", "nochoices" or "refuse".
        """
        delay, decided = 0.0, None
        for name, args in parse_directives(prompt):
            try:
                active, seconds = directive_state(name, args, attempt)
            except (ValueError, KeyError):
                raise Reply(400, error_body(f"fakeapi: bad directive [[{':'.join([name, *args])}]]",
                                            "fakeapi_error", None)) from None
            if not active:
                continue
            if name == "slow":
                delay += seconds
            elif decided is None:
                decided = (name, args)
        if decided is None:
            return ("ok", delay)
        try:
            return (self._apply(decided[0], decided[1], body), delay)
        except Reply as err:
            err.delay = delay  # [[slow]] also delays injected errors
            raise

    def _apply(self, name: str, args: list[str], body: dict) -> str:
        """Raise the Reply of an error directive, or return the completion kind."""
        if name == "status":
            code = int(args[0])
            type_ = "server_error" if code >= 500 else "invalid_request_error"
            msg = f"fakeapi: injected {code} {http.HTTPStatus(code).phrase}"
            raise Reply(code, error_body(msg, type_, None))
        if name == "context":
            raise Reply(400, error_body(CONTEXT_MSG, "invalid_request_error",
                                        "context_length_exceeded", "messages"))
        if name == "429":
            self.rate_limited += 1
            msg = (f"Rate limit reached for {body['model']} in organization org-fake on "
                   "requests per min (RPM): Limit 3, Used 3, Requested 1. "
                   "Please try again in 50ms.")
            raise Reply(429, error_body(msg, "requests", "rate_limit_exceeded"),
                        {"retry-after": "1", "retry-after-ms": "50"})
        if name == "quota":
            raise Reply(429, error_body(QUOTA_MSG, "insufficient_quota", "insufficient_quota"))
        if name == "auth":
            raise self._auth_error("sk-fake-key-from-directive")
        return name  # reset / truncate / nochoices / refuse

    def _completion(self, body: dict, variant: str) -> dict:
        """Build the ChatCompletion; variant is "ok", "nochoices" or "refuse"."""
        messages = body["messages"]
        n = body.get("n") or 1
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if self.reply is not None:
            text = self.reply(body)
        else:
            text = "ECHO " + (last_user_text(messages) or "")
        choices, c_tokens = [], self.reasoning_tokens
        for i in range(n):
            content = text if i == 0 else f"ECHO#{i} {text}"
            if variant == "refuse":
                content = REFUSAL
            finish = "stop"
            if limit and max(1, len(content) // 4) > limit:
                content, finish = content[: 4 * limit], "length"
            c_tokens += max(1, len(content) // 4)
            message = {"role": "assistant", "content": content, "refusal": None}
            if variant == "refuse":
                message.update(content=None, refusal=content)
            logprobs = None
            if body.get("logprobs") and message["content"]:
                logprobs = {"content": fake_logprobs(message["content"], self.token_logprob), "refusal": None}
            choices.append({"index": i, "message": message, "logprobs": logprobs,
                            "finish_reason": finish})
        return self._envelope(body, [] if variant == "nochoices" else choices, c_tokens)

    def _envelope(self, body: dict, choices: list, c_tokens: int) -> dict:
        self._ids += 1
        p_tokens = (self.count_prompt or prompt_tokens)(body["messages"])
        model = body["model"]
        return {
            "id": f"chatcmpl-{self._ids}", "object": "chat.completion",
            "created": int(time.time()),
            "model": self.answered_model(model) if self.answered_model else model,
            "system_fingerprint": "fp_fake", "choices": choices,
            "service_tier": body.get("service_tier") or "default",  # the tier asked for (as served)
            "usage": {
                "prompt_tokens": p_tokens, "completion_tokens": c_tokens,
                "total_tokens": p_tokens + c_tokens,
                "prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, p_tokens),
                                          "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": self.reasoning_tokens, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
            },
        }


def fake_logprobs(content: str, logprob: float) -> list[dict]:
    """Token logprobs for ``content``: words and punctuation as tokens, each with ``logprob``."""
    import re
    return [{"token": t, "logprob": logprob, "bytes": list(t.encode()), "top_logprobs": []}
            for t in re.findall(r"\s?\w+|\s?[^\w\s]|\s+", content)]


def request_token_cost(body: dict) -> int:
    """Tokens a request reserves: P + (max_completion_tokens|max_tokens|1000) * n."""
    out = body.get("max_completion_tokens") or body.get("max_tokens") or 1000
    return prompt_tokens(body["messages"]) + out * (body.get("n") or 1)


def limit_headers(req_b: Bucket | None, tok_b: Bucket | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if req_b is not None:
        headers.update(req_b.headers("requests"))
    if tok_b is not None:
        headers.update(tok_b.headers("tokens"))
    return headers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI Chat Completions server")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--rpm", type=int)
    parser.add_argument("--tpm", type=int)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)
    fake = FakeOpenAI(api_key=args.api_key, rpm=args.rpm, tpm=args.tpm,
                      latency_s=args.latency, port=args.port).start()
    print(f"FakeOpenAI serving at {fake.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
