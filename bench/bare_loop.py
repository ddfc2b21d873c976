"""The ceiling: a bare aiohttp client loop, pinned to one core.

One ``aiohttp.ClientSession`` with ``TCPConnector(limit=C)`` and C worker
coroutines pulling request indices from a shared iterator.  Each request is
the same JSON chat-completion body the product would send for row i
(``json.dumps`` per request, as any real client must); the reply is read in
full and its status checked, but not JSON-decoded.

Usage::

    python bench/bare_loop.py --n 20000 --concurrency 64 [--url URL] [--cpu 0]

Without ``--url`` a ``fastserver.py`` is started on ``--server-cpu`` (default
1) for the duration of the run.  Prints a one-line summary, or one JSON
object with ``--json``: elapsed_s, req_per_s, cpu_s (getrusage self, timed
part only), errors.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import aiohttp

from benchlib import MODEL, Budget, chat_url, pin_cpu, prompt, request_headers, start_server


async def _worker(session: aiohttp.ClientSession, url: str, headers: dict,
                  indices, errors: list) -> None:
    dumps = json.dumps
    for i in indices:
        body = dumps({"model": MODEL,
                      "messages": [{"role": "user", "content": prompt(i)}]})
        async with session.post(url, data=body.encode(), headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                errors.append(resp.status)


async def _drive(session, url: str, indices, concurrency: int) -> int:
    """Send one request per index with ``concurrency`` workers; return errors."""
    headers = request_headers()
    errors: list = []
    workers = [_worker(session, url, headers, indices, errors)
               for _ in range(concurrency)]
    await asyncio.gather(*workers)
    return len(errors)


async def run(url: str, n: int, concurrency: int, warmup: int = 0,
              max_seconds: float | None = None) -> dict:
    """Run the loop; ``warmup`` untimed requests first open the connections.

    With ``max_seconds`` no new request starts after that time, and ``n`` in
    the result is the number actually sent.
    """
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if warmup:
            await _drive(session, url, iter(range(warmup)), concurrency)
        indices = Budget(n, max_seconds) if max_seconds else iter(range(n))
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        errors = await _drive(session, url, indices, concurrency)
        t1, ru1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    return timing_result("aiohttp", n if not max_seconds else indices.issued,
                         concurrency, t1 - t0, ru0, ru1, errors)


def timing_result(client: str, n: int, concurrency: int, elapsed: float,
                  ru0, ru1, errors: int) -> dict:
    """The result dict shared by bare_loop.py and transport.py."""
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"client": client, "n": n, "concurrency": concurrency,
            "elapsed_s": elapsed, "req_per_s": n / elapsed if elapsed else 0.0,
            "cpu_s": cpu, "errors": errors}


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="chat completions URL (default: own fastserver)")
    p.add_argument("--n", type=int, default=20000, help="number of requests")
    p.add_argument("--concurrency", "-c", type=int, default=64)
    p.add_argument("--warmup", type=int, default=0, help="untimed requests first")
    p.add_argument("--cpu", type=int, default=0, help="core to pin the client to")
    p.add_argument("--server-cpu", type=int, default=1,
                   help="core for the server started when --url is absent")
    p.add_argument("--latency", type=float, default=0.0,
                   help="latency of the server started when --url is absent")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    pin_cpu(args.cpu)
    if args.url:
        result = asyncio.run(run(args.url, args.n, args.concurrency, args.warmup))
    else:
        with start_server(args.latency, args.server_cpu) as srv:
            result = asyncio.run(run(chat_url(srv.port), args.n,
                                     args.concurrency, args.warmup))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"aiohttp bare loop: n={result['n']} c={result['concurrency']} "
              f"elapsed={result['elapsed_s']:.3f}s "
              f"rate={result['req_per_s']:.0f} req/s "
              f"cpu={result['cpu_s']:.3f}s errors={result['errors']}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
