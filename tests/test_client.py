"""One HTTP exchange on httpx.MockTransport: statuses and transport failures map to the error tree."""

import asyncio
import json

import httpx
import pytest

from pipeline.client import ChatClient, parse_completion
from pipeline.errors import (AuthFailed, BadResponse, QuotaExhausted, RateLimited, RowRejected,
                             ServerError, TransportFailure)
from pipeline.jobspec import Endpoint

SECRET = "sk-live-SECRET-0123456789"
ENDPOINT = Endpoint(url="https://api.example.test/v1/chat/completions", api_key=SECRET,
                    organization="org-9", project="proj-9")
COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "positive", "refusal": None},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22,
              "prompt_tokens_details": {"cached_tokens": 8},
              "completion_tokens_details": {"reasoning_tokens": 0}},
}


def exchange(handler, timeout_s=5.0):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await ChatClient(http, ENDPOINT, timeout_s).complete(b'{"model": "m"}')
    return asyncio.run(go())


def error_body(kind, code, message="boom"):
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def test_success_is_parsed_and_headers_sent():
    seen = {}

    def handler(request):
        seen.update(request.headers)
        seen["url"] = str(request.url)
        return httpx.Response(200, json=COMPLETION)

    completion = exchange(handler)
    assert completion.replies == ("positive",) and completion.finish_reasons == ("stop",)
    assert completion.model == "gpt-4o-mini-2024-07-18" and completion.response_id == "chatcmpl-1"
    assert completion.usage.prompt_tokens == 20 and completion.usage.cached_tokens == 8
    assert seen["authorization"] == f"Bearer {SECRET}"
    assert seen["openai-organization"] == "org-9" and seen["openai-project"] == "proj-9"
    assert seen["url"] == ENDPOINT.url


@pytest.mark.parametrize("status, body, headers, error, retry_after", [
    (429, error_body("requests", "rate_limit_exceeded"), {"retry-after-ms": "1500"}, RateLimited, 1.5),
    (429, error_body("tokens", "rate_limit_exceeded"), {"x-ratelimit-remaining-tokens": "0",
                                                        "x-ratelimit-reset-tokens": "2m52.8s"}, RateLimited, 172.8),
    (429, error_body("insufficient_quota", "insufficient_quota"), {}, QuotaExhausted, None),
    (401, error_body("invalid_request_error", "invalid_api_key"), {}, AuthFailed, None),
    (403, error_body("invalid_request_error", "unsupported_country_region_territory"), {}, AuthFailed, None),
    (500, error_body("server_error", None), {}, ServerError, None),
    (503, {"error": "overloaded"}, {"retry-after": "7"}, ServerError, 7.0),
    (408, {}, {}, ServerError, None),
    (409, {}, {}, ServerError, None),
    (400, error_body("invalid_request_error", "context_length_exceeded"), {}, RowRejected, None),
    (404, error_body("invalid_request_error", "model_not_found"), {}, RowRejected, None),
    (422, {}, {}, RowRejected, None),
])
def test_statuses_map_to_the_error_tree(status, body, headers, error, retry_after):
    with pytest.raises(error) as info:
        exchange(lambda request: httpx.Response(status, json=body, headers=headers))
    assert info.value.http_status == status
    assert info.value.retry_after_s == retry_after
    assert str(status) in info.value.message


def test_row_error_type_comes_from_the_error_code():
    with pytest.raises(RowRejected) as info:
        exchange(lambda r: httpx.Response(400, json=error_body("invalid_request_error", "context_length_exceeded")))
    assert info.value.error_type == "context_length_exceeded"


def test_the_key_is_redacted_from_server_messages():
    body = error_body("invalid_request_error", "invalid_api_key", f"Incorrect API key provided: {SECRET}.")
    with pytest.raises(AuthFailed) as info:
        exchange(lambda r: httpx.Response(401, json=body))
    assert SECRET not in info.value.message and "[redacted]" in info.value.message


@pytest.mark.parametrize("content, reason", [
    (b'{"id": "x", "choices": [', "not valid JSON"),
    (json.dumps({**COMPLETION, "choices": []}).encode(), "no choices"),
    (b'{"error": {"message": "upstream failed"}}', "upstream failed"),
])
def test_unusable_200_bodies_are_bad_responses(content, reason):
    with pytest.raises(BadResponse, match=reason) as info:
        exchange(lambda r: httpx.Response(200, content=content))
    assert info.value.retryable


def test_transport_failures_and_timeouts():
    def reset(request):
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    with pytest.raises(TransportFailure) as info:
        exchange(reset)
    assert info.value.error_type == "connection_error" and info.value.retryable

    async def slow(request):
        await asyncio.sleep(10)

    with pytest.raises(TransportFailure) as info:
        exchange(slow, timeout_s=0.01)
    assert info.value.error_type == "timeout"


def test_completion_with_n_choices_content_parts_and_refusal():
    body = {**COMPLETION, "choices": [
        {"index": 1, "message": {"content": [{"type": "text", "text": "b"}]}, "finish_reason": "length"},
        {"index": 0, "message": {"content": None, "refusal": "I can't."}, "finish_reason": "stop"},
    ], "usage": None}
    completion = parse_completion(json.dumps(body).encode())
    assert completion.replies == (None, "b") and completion.finish_reasons == ("stop", "length")
    assert completion.refusal == "I can't."
    assert completion.usage.prompt_tokens is None  # unknown, not zero


def test_a_redirect_is_never_followed_so_the_key_stays_with_the_endpoint():
    """A 307 to another host: the key-bearing request is not re-sent there; the row gets the 3xx."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.transport import make_http_client

    seen: list[str] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(self.headers.get("api-key", ""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)

    class Redirecting(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{other.server_address[1]}/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    endpoint_server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    for server in (other, endpoint_server):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = Endpoint(url=f"http://127.0.0.1:{endpoint_server.server_address[1]}/v1/chat/completions",
                        api_key=SECRET, azure=True)

    async def go():
        http = make_http_client(2, 10.0)
        try:
            return await ChatClient(http, endpoint, 10.0).complete(b'{"model": "m"}')
        finally:
            await http.aclose()

    try:
        with pytest.raises(RowRejected) as caught:
            asyncio.run(go())
    finally:
        for server in (other, endpoint_server):
            server.shutdown()
            server.server_close()
    assert caught.value.http_status == 307
    assert seen == []
