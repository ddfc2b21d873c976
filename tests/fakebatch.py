"""Files and Batch API part of the fake OpenAI server in tests/fakeapi.py.

:class:`FakeBatchAPI` is a mixin of :class:`fakeapi.FakeOpenAI`; the manual is the section
"Files and Batch API" of fakeapi's module docstring.  This module imports nothing from fakeapi:
it uses the host's ``_check_auth`` (raises ``fakeapi.Reply``) and ``_line_answer`` (the chat
route's answer to one request body), and raises :class:`ApiError` for its own error answers.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Callable

from aiohttp import web

CHAT_URL = "/v1/chat/completions"
BATCH_PATH = re.compile(r"^/v1/(files|batches)(/|$)")
# (method, path pattern, handler method name); the first group is the object id
ROUTES = [
    ("POST", re.compile(r"^/v1/files/?$"), "_upload_file"),
    ("GET", re.compile(r"^/v1/files/([^/]+)/?$"), "_get_file"),
    ("GET", re.compile(r"^/v1/files/([^/]+)/content/?$"), "_file_content"),
    ("POST", re.compile(r"^/v1/batches/?$"), "_create_batch"),
    ("GET", re.compile(r"^/v1/batches/([^/]+)/?$"), "_get_batch"),
    ("POST", re.compile(r"^/v1/batches/([^/]+)/cancel/?$"), "_cancel_batch"),
]
OUTCOMES = ("complete", "expire", "fail", "errors_only")
TERMINAL = ("completed", "failed", "expired", "cancelled")
UNFINISHED = {  # status -> error of a line left unanswered (batch_unfinished_errors)
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


class ApiError(Exception):
    """An OpenAI-style error answer (same attributes as fakeapi.Reply)."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(status, message)
        self.status, self.headers = status, {}
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def parse_batch_file(content: bytes, max_requests: int) -> list[dict]:
    """Validate a batch input file and return its lines; raise ApiError (400) if it is bad."""
    def bad(line: int, code: str, what: str) -> ApiError:
        return ApiError(400, f"Invalid batch input file: line {line}: {what}", code, "file")
    try:
        rows = content.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid batch input file: not UTF-8 text", "invalid_json", "file") from None
    if not rows:
        raise ApiError(400, "Invalid batch input file: it holds no requests", "empty_file", "file")
    if len(rows) > max_requests:
        raise ApiError(400, f"Invalid batch input file: {len(rows)} requests, more than the "
                       f"limit of {max_requests}", "too_many_requests", "file")
    lines, seen, models = [], set(), set()
    for number, row in enumerate(rows, 1):
        try:
            line = json.loads(row)
        except ValueError:
            line = None
        if not isinstance(line, dict):
            raise bad(number, "invalid_json", "not a JSON object")
        custom_id, body = line.get("custom_id"), line.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            raise bad(number, "missing_required_parameter", "'custom_id' must be a non-empty string")
        if custom_id in seen:
            raise bad(number, "duplicate_custom_id", f"custom_id {custom_id!r} is used twice")
        if line.get("method") != "POST":
            raise bad(number, "invalid_method", "'method' must be \"POST\"")
        if line.get("url") != CHAT_URL:
            raise bad(number, "invalid_url", f"'url' must be \"{CHAT_URL}\"")
        if (not isinstance(body, dict) or not isinstance(body.get("model"), str)
                or not isinstance(body.get("messages"), list) or not body["messages"]):
            raise bad(number, "missing_required_parameter",
                      "'body' must be an object with a 'model' string and a non-empty 'messages' array")
        seen.add(custom_id)
        models.add(body["model"])
        lines.append(line)
    if len(models) > 1:
        raise ApiError(400, "Invalid batch input file: all requests must use the same model, found "
                       + ", ".join(sorted(models)), "mixed_models", "file")
    return lines


def check_create_body(body: Any) -> dict:
    """Validate a POST /v1/batches body (not the file); return it."""
    if not isinstance(body, dict):
        raise ApiError(400, "We could not parse the JSON body of your request.")
    if body.get("endpoint") != CHAT_URL:
        raise ApiError(400, f"Invalid 'endpoint': {body.get('endpoint')!r}; this fake serves only "
                       f"'{CHAT_URL}'.", "invalid_value", "endpoint")
    if body.get("completion_window") != "24h":
        raise ApiError(400, "Invalid 'completion_window': only '24h' is supported.",
                       "invalid_value", "completion_window")
    meta = body.get("metadata")
    if meta is not None and not (
            isinstance(meta, dict) and len(meta) <= 16
            and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                    for k, v in meta.items())):
        raise ApiError(400, "Invalid 'metadata': at most 16 string keys (<= 64 chars) with string "
                       "values (<= 512 chars).", "invalid_value", "metadata")
    return body


def empty_usage() -> dict:
    return {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}


def add_usage(total: dict, usage: dict) -> None:
    """Add a ChatCompletion usage to a Batch usage."""
    total["input_tokens"] += usage.get("prompt_tokens", 0)
    total["output_tokens"] += usage.get("completion_tokens", 0)
    total["total_tokens"] += usage.get("total_tokens", 0)
    total["input_tokens_details"]["cached_tokens"] += (
        usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    total["output_tokens_details"]["reasoning_tokens"] += (
        usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)


def batch_object(batch_id: str, body: dict, model: str) -> dict:
    """A new Batch object (status "validating")."""
    stamps = ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
              "expired_at", "cancelling_at", "cancelled_at")
    return {
        "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "model": model,
        "errors": None, "input_file_id": body["input_file_id"],
        "completion_window": body["completion_window"], "status": "validating",
        "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
        **{name: None for name in stamps},
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": empty_usage(), "metadata": body.get("metadata"),
    }


class FakeBatchAPI:
    """Mixin: OpenAI Files and Batch API routes for FakeOpenAI (see fakeapi's docstring)."""

    _check_auth: Callable[[web.Request, bool], None]
    _line_answer: Callable[[Any], tuple[int, Any, str]]

    def _init_batches(self) -> None:
        """Set the batch knobs to their defaults (reset() keeps them)."""
        self.max_file_bytes = 200_000_000
        self.max_batch_requests = 50_000
        self.batch_polls_per_step = 1
        self.batch_outcome: dict[int, str] | Callable[[int, dict], str | None] = {}
        self.batch_shuffle = True
        self.batch_unfinished_errors = False
        self.batch_fail_errors = [{"code": "invalid_json", "message": "fakeapi: batch failed on purpose "
                                   "(batch_outcome 'fail')", "param": None, "line": 1}]
        self.batch_fault: Callable[[str, str], tuple[int, Any] | None] | None = None

    def _reset_batches(self) -> None:
        """Forget files, batches and the batch request log."""
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.batch_requests_log: list[tuple[str, str]] = []

    # ---- routing -----------------------------------------------------------

    async def _batch_route(self, request: web.Request) -> web.StreamResponse:
        """Route (404) -> auth (401) -> the handler; errors are raised (ApiError / Reply)."""
        self.batch_requests_log.append((request.method, request.path))
        fault = self.batch_fault(request.method, request.path) if self.batch_fault else None
        if fault is not None:
            error = ApiError(fault[0], "fakeapi: batch_fault")
            error.body = fault[1]
            raise error
        for method, pattern, name in ROUTES:
            match = pattern.match(request.path)
            if match and request.method == method:
                self._check_auth(request, False)
                return await getattr(self, name)(request, *match.groups())
        raise ApiError(404, f"Invalid URL ({request.method} {request.path})")

    def _new_file(self, content: bytes, filename: str, purpose: str) -> str:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = {"purpose": purpose, "filename": filename, "content": content,
                               "created_at": int(time.time())}
        return file_id

    def _file_object(self, file_id: str) -> dict:
        if file_id not in self.files:
            raise ApiError(404, f"No such File object: {file_id}", None, "id")
        f = self.files[file_id]
        return {"id": file_id, "object": "file", "bytes": len(f["content"]),
                "created_at": f["created_at"], "filename": f["filename"],
                "purpose": f["purpose"], "status": "processed"}

    def _batch_state(self, batch_id: str) -> dict:
        if batch_id not in self.batches:
            raise ApiError(404, f"No batch found with id '{batch_id}'.", None, "batch_id")
        return self.batches[batch_id]

    # ---- files ---------------------------------------------------------------

    async def _upload_file(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "Expected a multipart/form-data body with 'file' and 'purpose'.")
        fields: dict[str, str] = {}
        upload: tuple[str, bytes] | None = None
        async for part in await request.multipart():
            data = bytes(await part.read())  # type: ignore[union-attr]
            if part.name == "file":
                upload = (part.filename or "file.jsonl", data)  # type: ignore[union-attr]
            elif part.name:
                fields[part.name] = data.decode("utf-8", "replace")
        if upload is None:
            raise ApiError(400, "Missing required parameter: 'file'.", "missing_required_parameter", "file")
        if fields.get("purpose") != "batch":
            raise ApiError(400, f"Invalid 'purpose': {fields.get('purpose')!r}; this fake accepts only "
                           "'batch'.", "invalid_value", "purpose")
        filename, content = upload
        if len(content) > self.max_file_bytes:
            raise ApiError(400, f"File is too large: {len(content)} bytes, more than the limit of "
                           f"{self.max_file_bytes} bytes for batch input files.", "file_too_large", "file")
        parse_batch_file(content, self.max_batch_requests)
        return web.json_response(self._file_object(self._new_file(content, filename, "batch")))

    async def _get_file(self, request: web.Request, file_id: str) -> web.Response:
        return web.json_response(self._file_object(file_id))

    async def _file_content(self, request: web.Request, file_id: str) -> web.Response:
        self._file_object(file_id)  # 404 if unknown
        return web.Response(body=self.files[file_id]["content"],
                            content_type="application/octet-stream")

    # ---- batches ---------------------------------------------------------------

    async def _create_batch(self, request: web.Request) -> web.Response:
        try:
            body = check_create_body(await request.json())
        except ValueError:
            body = check_create_body(None)
        file_id = body.get("input_file_id")
        f = self.files.get(file_id) if isinstance(file_id, str) else None
        if f is None or f["purpose"] != "batch":
            raise ApiError(400, f"Invalid 'input_file_id': {file_id!r} is not an uploaded file with "
                           "purpose 'batch'.", "invalid_value", "input_file_id")
        lines = parse_batch_file(f["content"], self.max_batch_requests)
        index = len(self.batches)
        batch = batch_object(f"batch_{index}", body, lines[0]["body"]["model"])
        self.batches[batch["id"]] = {"batch": batch, "index": index, "lines": lines, "polls": 0}
        return web.json_response(batch)

    async def _get_batch(self, request: web.Request, batch_id: str) -> web.Response:
        state = self._batch_state(batch_id)
        state["polls"] += 1
        if self.batch_polls_per_step <= 0:
            while state["batch"]["status"] not in TERMINAL:
                self._step(state)
        elif state["polls"] >= self.batch_polls_per_step:
            state["polls"] = 0
            if state["batch"]["status"] not in TERMINAL:
                self._step(state)
        return web.json_response(state["batch"])

    async def _cancel_batch(self, request: web.Request, batch_id: str) -> web.Response:
        state = self._batch_state(batch_id)
        batch = state["batch"]
        if batch["status"] in ("completed", "failed", "expired"):
            raise ApiError(400, f"Cannot cancel a batch with status '{batch['status']}'.")
        if batch["status"] not in ("cancelling", "cancelled"):
            batch.update(status="cancelling", cancelling_at=int(time.time()))
            state["polls"] = 0
        return web.json_response(batch)

    # ---- lifecycle ---------------------------------------------------------------

    def _outcome(self, state: dict) -> str:
        chooser = self.batch_outcome
        if callable(chooser):
            outcome = chooser(state["index"], state["batch"])
        else:
            outcome = chooser.get(state["index"])
        outcome = outcome or "complete"
        if outcome not in OUTCOMES:
            raise ApiError(500, f"fakeapi: unknown batch outcome {outcome!r} (one of {OUTCOMES})",
                           None, None, "fakeapi_error")
        return outcome

    def _step(self, state: dict) -> None:
        """Move a batch one step along its lifecycle."""
        batch, now = state["batch"], int(time.time())
        status, half = batch["status"], len(state["lines"]) // 2
        if status == "cancelling":
            return self._finish(state, "cancelled", half)
        outcome = self._outcome(state)
        if outcome == "fail":
            batch.update(status="failed", failed_at=now,
                         errors={"object": "list", "data": [dict(e) for e in self.batch_fail_errors]})
        elif status == "validating":
            batch.update(status="in_progress", in_progress_at=now, expires_at=batch["created_at"] + 86400)
            batch["request_counts"]["total"] = len(state["lines"])
        elif outcome == "expire":
            self._finish(state, "expired", half)
        elif status == "in_progress":
            batch.update(status="finalizing", finalizing_at=now)
        else:
            self._finish(state, "completed", len(state["lines"]), outcome == "errors_only")

    def _finish(self, state: dict, status: str, answered: int, errors_only: bool = False) -> None:
        """Answer the first `answered` lines, write the output and error files, end the batch."""
        batch, lines = state["batch"], state["lines"]
        outputs, errors = [], []
        for line in lines[:answered]:
            if errors_only:
                text, ok = error_line(line["custom_id"], "server_error",
                                      "fakeapi: the batch failed this request (batch_outcome "
                                      "'errors_only')")
            else:
                text, ok = self._answer_line(line, batch["usage"])
            (outputs if ok else errors).append(text)
        if self.batch_unfinished_errors and status in UNFINISHED:
            errors += [error_line(line["custom_id"], *UNFINISHED[status])[0] for line in lines[answered:]]
        for kind, found in (("output", outputs), ("error", errors)):
            if self.batch_shuffle:
                found.reverse()
            if found:
                content = "".join(text + "\n" for text in found).encode()
                batch[f"{kind}_file_id"] = self._new_file(
                    content, f"{batch['id']}_{kind}.jsonl", "batch_output")
        batch["request_counts"].update(total=len(lines), completed=len(outputs), failed=len(errors))
        batch.update(status=status, **{f"{status}_at": int(time.time())})

    def _answer_line(self, line: dict, usage: dict) -> tuple[str, bool]:
        """Answer one input line like the chat route; return (output line text, goes to output file)."""
        status, body, kind = self._line_answer(line["body"])
        if status == 0:  # [[reset]]: no response at all
            return error_line(line["custom_id"], "server_error",
                              "fakeapi: the connection was reset while processing this request")
        if status == 200 and isinstance(body, dict) and kind != "truncate":
            add_usage(usage, body.get("usage") or {})
        out = {"id": new_id("batch_req_"), "custom_id": line["custom_id"],
               "response": {"status_code": status, "request_id": new_id("req_"), "body": body},
               "error": None}
        text = json.dumps(out)
        if kind == "truncate":
            text = text[: len(text) // 2]
        return text, status == 200


def error_line(custom_id: str, code: str, message: str) -> tuple[str, bool]:
    """A status-0-style error line (no response); second item False (goes to the error file)."""
    out = {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None,
           "error": {"code": code, "message": message}}
    return json.dumps(out), False
