"""Minimal, fast OpenAI Chat Completions imitation for benchmarking.

A raw ``asyncio.Protocol`` HTTP/1.1 server (keep-alive, pipelining, partial
reads, Content-Length or chunked request bodies).  ``POST
/v1/chat/completions`` gets a canned, valid chat-completion JSON reply; the
request body is never parsed, so the server costs as little CPU per request
as is practical in pure Python on one core.

Other routes:

* ``GET /__stats`` – JSON ``{"requests", "window_s", "first", "last"}`` for
  chat requests since the previous ``/__stats`` call, then resets.  ``window_s``
  is the time from the first chat request's arrival to the last reply's
  write, i.e. the client's steady-state request window (excludes its start-up).
* ``GET /v1/models`` – a one-model list.  Anything else → 404 JSON.

``--latency S`` delays every reply by S seconds with ``loop.call_later`` (one
timer per batch of pipelined requests, no task per request).

Usage::

    python bench/fastserver.py --port 0 --latency 0.2 --cpu 1

prints ``READY <port>`` on stdout once listening.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from collections import deque

MODEL = "gpt-4o-mini"
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024


def _response(status: bytes, body: bytes, close: bool = False) -> bytes:
    conn = b"close" if close else b"keep-alive"
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() +
            b"\r\nconnection: " + conn + b"\r\n\r\n" + body)


def _completion_body() -> bytes:
    body = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "ok", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "system_fingerprint": "fp_bench",
    }
    return json.dumps(body, separators=(",", ":")).encode()


_COMPLETION = _completion_body()
CHAT_OK = _response(b"200 OK", _COMPLETION)
CHAT_OK_CLOSE = _response(b"200 OK", _COMPLETION, close=True)
MODELS = _response(b"200 OK", json.dumps({"object": "list", "data": [
    {"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}).encode())
NOT_FOUND = _response(b"404 Not Found", b'{"error":{"message":"not found"}}')
BAD_REQUEST = _response(b"400 Bad Request", b'{"error":{"message":"bad request"}}',
                        close=True)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Stats:
    """Counters for the chat-request window, read-and-reset by /__stats."""
    __slots__ = ("requests", "first", "last")

    def __init__(self) -> None:
        self.requests, self.first, self.last = 0, 0.0, 0.0

    def snapshot_and_reset(self) -> bytes:
        window = self.last - self.first if self.requests else 0.0
        data = {"requests": self.requests, "window_s": window,
                "first": self.first, "last": self.last}
        self.__init__()
        return _response(b"200 OK", json.dumps(data).encode())


STATS = Stats()


def _parse_head(head: bytes):
    """Return (method, path, content_length | -1 for chunked, close, expect)."""
    line_end = head.find(b"\r\n")
    request_line = head if line_end < 0 else head[:line_end]
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    lower = head.lower()
    clen = 0
    i = lower.find(b"\r\ncontent-length:")
    if i >= 0:
        j = lower.find(b"\r\n", i + 2)
        clen = int(lower[i + 17: j if j >= 0 else len(lower)])
    elif b"\r\ntransfer-encoding:" in lower and b"chunked" in lower:
        clen = -1
    close = b"\r\nconnection: close" in lower or (
        parts[2] == b"HTTP/1.0" and b"\r\nconnection: keep-alive" not in lower)
    expect = b"\r\nexpect: 100-continue" in lower
    return parts[0], parts[1], clen, close, expect


def _chunked_end(buf: bytearray, pos: int) -> int:
    """End offset of a complete chunked body starting at ``pos``, or -1."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # optional trailers
            if buf[eol:eol + 4] == b"\r\n\r\n":
                return eol + 4
            return -1 if end < 0 else end + 4
        pos = eol + 2 + size + 2
        if pos > len(buf):
            return -1


def _route(method: bytes, path: bytes, close: bool) -> bytes:
    if path == b"/v1/chat/completions" and method == b"POST":
        STATS.requests += 1
        if STATS.requests == 1:
            STATS.first = time.monotonic()
        return CHAT_OK_CLOSE if close else CHAT_OK
    if path == b"/__stats":
        return STATS.snapshot_and_reset()
    if path == b"/v1/models" and method == b"GET":
        return MODELS
    return NOT_FOUND


class HttpProtocol(asyncio.Protocol):
    """One connection: parse as many complete requests as the buffer holds."""

    __slots__ = ("transport", "buf", "pending", "queue", "latency", "loop",
                 "closing", "sent_continue")

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.pending = None  # parsed head of a request whose body is incomplete
        self.queue: deque = deque()
        self.transport = None
        self.closing = False
        self.sent_continue = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        buf = self.buf
        buf += data
        out = []
        close = False
        try:
            pos, close = self._consume(buf, out)
        except ValueError:
            out.append(BAD_REQUEST)
            pos, close = len(buf), True
        if pos:
            del buf[:pos]
        if out:
            self._reply(b"".join(out), close)
        elif len(buf) > MAX_HEAD and self.pending is None:
            self._reply(BAD_REQUEST, True)

    def _consume(self, buf: bytearray, out: list) -> tuple[int, bool]:
        """Parse complete requests from ``buf``; return (consumed, close)."""
        pos = 0
        while True:
            if self.pending is None:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    return pos, False
                self.pending = (end + 4,) + _parse_head(bytes(buf[pos:end]))
                self.sent_continue = False
            body_start, method, path, clen, close, expect = self.pending
            body_end = self._body_end(buf, body_start, clen)
            if body_end < 0:
                if expect and not self.sent_continue:
                    self.transport.write(CONTINUE)
                    self.sent_continue = True
                return pos, False
            self.pending = None
            out.append(_route(method, path, close))
            pos = body_end
            if close:
                return pos, True

    @staticmethod
    def _body_end(buf: bytearray, start: int, clen: int) -> int:
        if clen < 0:
            return _chunked_end(buf, start)
        if clen > MAX_BODY:
            raise ValueError("body too large")
        end = start + clen
        return end if end <= len(buf) else -1

    def _reply(self, payload: bytes, close: bool) -> None:
        if close:
            self.closing = True
        if self.latency > 0:
            self.queue.append((payload, close))
            self.loop.call_later(self.latency, self._flush_one)
        else:
            self._write(payload, close)

    def _flush_one(self) -> None:
        # Timers with equal deadlines may fire in any order; popping the
        # queue head keeps replies in request order regardless.
        if self.queue:
            self._write(*self.queue.popleft())

    def _write(self, payload: bytes, close: bool) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(payload)
        STATS.last = time.monotonic()
        if close:
            transport.close()


async def serve(host: str, port: int, latency: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(latency), host, port,
                                      backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds to delay each reply")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    gc.freeze()  # everything allocated so far is permanent
    try:
        asyncio.run(serve(args.host, args.port, args.latency))
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()


if __name__ == "__main__":
    main()
