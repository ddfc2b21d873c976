"""Transport comparison: httpx default vs httpx+AiohttpTransport vs bare aiohttp.

For every (server latency, in-flight C) cell, the client process (pinned to
``--cpu``, default core 0) sends requests to a ``fastserver.py`` pinned to
``--server-cpu`` (default core 1) with:

* ``httpx``      – ``httpx.AsyncClient(limits=Limits(C, C))``, default transport;
* ``httpx+aio``  – ``httpx.AsyncClient(transport=AiohttpTransport(limits=...))``;
* ``direct``     – chatbatch's own client, ``pipeline.transport.make_http_client``: a POST straight
  through aiohttp, returning status, headers and body (no httpx objects), as
  ``pipeline.client.ChatClient`` uses it;
* ``aiohttp``    – the bare loop of ``bare_loop.py`` (the ceiling).

Each measurement first sends C untimed warm-up requests (opens the pool),
then times N requests.  N is ``--n`` at zero latency and ``C * --rounds`` with
latency (so every run lasts about ``rounds * latency`` seconds); no request
is started after ``--max-seconds`` (default 6 s), so a pathologically slow
client cannot stall the comparison (its rate is over the requests sent).  Reports
req/s, client CPU seconds per 1,000 requests, the ratio to bare aiohttp and,
with latency, the fraction of the ideal rate C/latency.

Usage::

    python bench/transport.py [--n 3000] [--rounds 10] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from pathlib import Path

import httpx
from httpx_aiohttp import AiohttpTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's pipeline package

import bare_loop
from benchlib import MODEL, Budget, pin_cpu, prompt, request_headers, start_server

CLIENTS = ("httpx", "httpx+aio", "direct", "aiohttp")


def _make_httpx(kind: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency,
                          max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(120.0)
    if kind == "httpx":
        return httpx.AsyncClient(limits=limits, timeout=timeout)
    if kind == "direct":
        from pipeline.transport import make_http_client
        return make_http_client(concurrency, 120.0)
    return httpx.AsyncClient(transport=AiohttpTransport(limits=limits),
                             timeout=timeout)


async def _httpx_worker(client: httpx.AsyncClient, url: str, headers: dict,
                        indices, errors: list) -> None:
    dumps = json.dumps
    direct = not isinstance(client, httpx.AsyncClient)
    for i in indices:
        body = dumps({"model": MODEL,
                      "messages": [{"role": "user", "content": prompt(i)}]})
        if direct:
            resp = await client.post(url, headers, body.encode())
        else:
            resp = await client.post(url, content=body.encode(), headers=headers)
        if resp.status_code != 200:
            errors.append(resp.status_code)


async def _httpx_drive(client, url: str, indices, concurrency: int) -> int:
    headers, errors = request_headers(), []
    await asyncio.gather(*[_httpx_worker(client, url, headers, indices, errors)
                           for _ in range(concurrency)])
    return len(errors)


async def run_httpx(kind: str, url: str, n: int, concurrency: int,
                    warmup: int, max_seconds: float | None) -> dict:
    """Time up to ``n`` requests through an httpx client (after ``warmup``)."""
    client = _make_httpx(kind, concurrency)
    try:
        if warmup:
            await _httpx_drive(client, url, iter(range(warmup)), concurrency)
        indices = Budget(n, max_seconds)
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        errors = await _httpx_drive(client, url, indices, concurrency)
        t1, ru1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await client.aclose()
    return bare_loop.timing_result(kind, indices.issued, concurrency, t1 - t0,
                                   ru0, ru1, errors)


def measure(kind: str, url: str, n: int, concurrency: int,
            max_seconds: float | None) -> dict:
    """One measurement in a fresh event loop."""
    gc.collect()
    if kind == "aiohttp":
        coro = bare_loop.run(url, n, concurrency, concurrency, max_seconds)
    else:
        coro = run_httpx(kind, url, n, concurrency, concurrency, max_seconds)
    result = asyncio.run(coro)
    result["cpu_ms_per_req"] = 1000 * result["cpu_s"] / max(result["n"], 1)
    result["truncated"] = result["n"] < n
    return result


def run_cell(srv, latency: float, concurrency: int, n: int, repeat: int,
             max_seconds: float | None) -> list[dict]:
    """All clients for one (latency, C) cell; best-of-``repeat`` per client."""
    rows = []
    for kind in CLIENTS:
        runs = [measure(kind, srv.chat_url, n, concurrency, max_seconds)
                for _ in range(repeat)]
        best = max(runs, key=lambda r: r["req_per_s"])
        best.update(latency_s=latency, all_req_per_s=[r["req_per_s"] for r in runs])
        rows.append(best)
        print(f"  {kind:<10} lat={latency:<4} C={concurrency:<4} n={best['n']:<6} "
              f"{best['req_per_s']:8.0f} req/s", file=sys.stderr, flush=True)
    bare = rows[-1]["req_per_s"]
    for row in rows:
        row["ratio_to_aiohttp"] = row["req_per_s"] / bare
        row["ideal_req_per_s"] = concurrency / latency if latency else None
        row["frac_of_ideal"] = (row["req_per_s"] / row["ideal_req_per_s"]
                                if latency else None)
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'latency':>7} {'C':>4} {'client':<10} {'N':>6} {'req/s':>8} "
            f"{'vs aiohttp':>10} {'of ideal':>8} {'CPU ms/req':>10} {'errors':>6}")
    note = False
    print(head)
    print("-" * len(head))
    for r in rows:
        ideal = f"{r['frac_of_ideal']:.0%}" if r["frac_of_ideal"] else "-"
        mark = "*" if r["truncated"] else " "
        note |= r["truncated"]
        print(f"{r['latency_s']:>7g} {r['concurrency']:>4} {r['client']:<10} "
              f"{r['n']:>6}{mark}{r['req_per_s']:>8.0f} {r['ratio_to_aiohttp']:>10.2f} "
              f"{ideal:>8} {r['cpu_ms_per_req']:>10.3f} {r['errors']:>6}")
    if note:
        print("* stopped by --max-seconds before N requests (rate is over those sent)")


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=3000,
                   help="timed requests per run at zero latency")
    p.add_argument("--rounds", type=int, default=10,
                   help="with latency, N = C * rounds")
    p.add_argument("--latencies", default="0,0.2")
    p.add_argument("--concurrency", default="16,256")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell (best kept)")
    p.add_argument("--max-seconds", type=float, default=6.0,
                   help="stop starting requests after this long (0 = no limit)")
    p.add_argument("--cpu", type=int, default=0)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    pin_cpu(args.cpu)
    rows: list[dict] = []
    for latency in (float(x) for x in args.latencies.split(",")):
        with start_server(latency, args.server_cpu) as srv:
            for conc in (int(x) for x in args.concurrency.split(",")):
                n = args.n if latency == 0 else conc * args.rounds
                rows += run_cell(srv, latency, conc, n, args.repeat,
                                 args.max_seconds or None)
    print_table(rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"results": rows}, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
