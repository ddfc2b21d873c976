"""A faithful minimal re-implementation of the OpenAI cookbook's ``api_request_parallel_processor.py``.

No copy of the cookbook script is kept in this repository, so ``bench/peers.py`` runs this one: the
same algorithm, written anew, with the same command-line flags and the same result file. What it
keeps from the cookbook (``examples/api_request_parallel_processor.py``, as published in 2024–2026):

* requests are read one at a time from a JSONL file (one request body per line, an optional
  ``metadata`` field copied to the result);
* two capacity counters, requests and tokens, start **full** (a whole minute's budget) and refill
  continuously at ``max_requests_per_minute`` / ``max_tokens_per_minute``; a request is sent when both
  have room; its token cost is counted with tiktoken (``cl100k_base``): 4 per message plus the encoded
  length of every field of every message, plus 2, plus ``n × max_tokens`` (``max_tokens`` default 15);
* a main loop that sleeps 1 ms per turn (so at most about 1,000 requests a second), one asyncio task
  per request, one ``aiohttp.ClientSession`` with its defaults (a pool of 100 connections);
* a failed request (an ``error`` field in the JSON reply, or any exception: a reset, a body that is not
  JSON) goes back on a retry queue at once — no backoff — until ``max_attempts`` attempts were made;
* after a rate-limit error the main loop pauses 15 s; the published script recognises one by
  ``error["code"] == "429"``, which OpenAI's 429 body (``"code": "rate_limit_exceeded"``) never
  matches, so in practice it does not pause: kept as published;
* every result is appended to the save file (opened and closed per line) as
  ``[request, response, metadata]``, or ``[request, [errors...], metadata]`` once attempts run out;
* logging at INFO by default (a line per request started).

What differs: the endpoint is taken from any ``http(s)://host/v1/...`` URL (the published regex
accepts only ``https://``, so it cannot be pointed at a loopback server); only chat requests are
supported.

    python bench/cookbook_processor.py --requests_filepath in.jsonl --save_filepath out.jsonl \\
        --request_url http://127.0.0.1:PORT/v1/chat/completions --max_requests_per_minute 1200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field

import aiohttp
import tiktoken

PAUSE_AFTER_RATE_LIMIT_S = 15
LOOP_SLEEP_S = 0.001


@dataclass
class Tracker:
    """Counters shared by the main loop and the request tasks."""

    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    rate_limit_errors: int = 0
    api_errors: int = 0
    other_errors: int = 0
    last_rate_limit_error: float = 0.0


@dataclass
class Request:
    """One request: its body, token cost, attempts left and the errors met so far."""

    task_id: int
    body: dict
    tokens: int
    attempts_left: int
    metadata: dict | None
    errors: list = field(default_factory=list)

    async def call(self, session: aiohttp.ClientSession, url: str, headers: dict,
                   retry_queue: asyncio.Queue, save_path: str, tracker: Tracker) -> None:
        logging.info("Starting request #%s", self.task_id)
        error = None
        try:
            async with session.post(url=url, headers=headers, json=self.body) as response:
                reply = await response.json()
            if "error" in reply:
                logging.warning("Request %s failed with error %s", self.task_id, reply["error"])
                tracker.api_errors += 1
                error = reply
                if reply["error"].get("code") == "429":  # as published: never OpenAI's code
                    tracker.last_rate_limit_error = time.time()
                    tracker.rate_limit_errors += 1
                    tracker.api_errors -= 1
        except Exception as exc:  # the cookbook's catch-all, kept: every failure is retried
            logging.warning("Request %s failed with Exception %s", self.task_id, exc)
            tracker.other_errors += 1
            error = exc
        if error is not None:
            self.errors.append(error)
            if self.attempts_left:
                retry_queue.put_nowait(self)
                return
            logging.error("Request %s failed after all attempts", self.body)
            append_line([self.body, [str(e) for e in self.errors], self.metadata], save_path)
            tracker.in_progress -= 1
            tracker.failed += 1
            return
        append_line([self.body, reply, self.metadata], save_path)
        tracker.in_progress -= 1
        tracker.succeeded += 1


def append_line(data: list, path: str) -> None:
    """Append one JSON line, opening the file each time (as the cookbook does)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(data) + "\n")


def token_cost(body: dict, encoding) -> int:
    """The cookbook's estimate for a chat request: messages + 2 + n × max_tokens."""
    tokens = 2
    for message in body["messages"]:
        tokens += 4
        for key, value in message.items():
            tokens += len(encoding.encode(value))
            if key == "name":
                tokens -= 1
    return tokens + body.get("n", 1) * body.get("max_tokens", 15)


def endpoint(url: str) -> str:
    match = re.search(r"^https?://[^/]+/v\d+/(.+)$", url)
    if match is None or not match[1].startswith("chat/"):
        raise SystemExit(f"only chat/completions URLs are supported here: {url}")
    return match[1]


async def process(args: argparse.Namespace) -> Tracker:
    """The cookbook's main loop: read, wait for capacity, send, poll every millisecond."""
    endpoint(args.request_url)
    encoding = tiktoken.get_encoding(args.token_encoding_name)
    headers = {"Authorization": f"Bearer {args.api_key}"}
    retry_queue: asyncio.Queue = asyncio.Queue()
    tracker, next_request, next_id = Tracker(), None, 0
    request_capacity, token_capacity = args.max_requests_per_minute, args.max_tokens_per_minute
    last_update, file_open = time.time(), True
    with open(args.requests_filepath) as lines:
        async with aiohttp.ClientSession() as session:
            while True:
                if next_request is None:
                    if not retry_queue.empty():
                        next_request = retry_queue.get_nowait()
                    elif file_open:
                        line = next(lines, None)
                        if line is None:
                            file_open = False
                        else:
                            body = json.loads(line)
                            metadata = body.pop("metadata", None)
                            next_request = Request(next_id, body, token_cost(body, encoding), args.max_attempts,
                                                   metadata)
                            next_id += 1
                            tracker.in_progress += 1
                now = time.time()
                elapsed, last_update = now - last_update, now
                request_capacity = min(request_capacity + args.max_requests_per_minute * elapsed / 60,
                                       args.max_requests_per_minute)
                token_capacity = min(token_capacity + args.max_tokens_per_minute * elapsed / 60,
                                     args.max_tokens_per_minute)
                if next_request is not None and request_capacity >= 1 and token_capacity >= next_request.tokens:
                    request_capacity -= 1
                    token_capacity -= next_request.tokens
                    next_request.attempts_left -= 1
                    asyncio.create_task(next_request.call(session, args.request_url, headers, retry_queue,
                                                          args.save_filepath, tracker))
                    next_request = None
                if tracker.in_progress == 0:
                    break
                await asyncio.sleep(LOOP_SLEEP_S)
                pause = PAUSE_AFTER_RATE_LIMIT_S - (time.time() - tracker.last_rate_limit_error)
                if pause > 0:
                    await asyncio.sleep(pause)
    return tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests_filepath", required=True)
    parser.add_argument("--save_filepath", required=True)
    parser.add_argument("--request_url", required=True)
    parser.add_argument("--api_key", default=os.getenv("OPENAI_API_KEY"))
    parser.add_argument("--max_requests_per_minute", type=float, default=3_000 * 0.5)
    parser.add_argument("--max_tokens_per_minute", type=float, default=250_000 * 0.5)
    parser.add_argument("--token_encoding_name", default="cl100k_base")
    parser.add_argument("--max_attempts", type=int, default=5)
    parser.add_argument("--logging_level", type=int, default=logging.INFO)
    args = parser.parse_args()
    logging.basicConfig(level=args.logging_level)
    tracker = asyncio.run(process(args))
    logging.info("Parallel processing complete: %s succeeded, %s failed, %s rate-limit errors",
                 tracker.succeeded, tracker.failed, tracker.rate_limit_errors)


if __name__ == "__main__":
    main()
