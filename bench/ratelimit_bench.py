"""Does a run sit just under the provider's limits, without 429s? Three scenarios side by side.

Each scenario gets its own tests/fakeapi.py server on 127.0.0.1 enforcing RPM and TPM the way the
API does (token buckets refilled continuously, starting full; 429 with retry-after past them;
x-ratelimit headers on every reply; it charges prompt + max_tokens × n at admission). The real CLI
runs against each for ``--seconds`` and is then stopped (SIGINT); the figures come from what each
server admitted:

* (a) the job sets the server's real limits;
* (b) the job sets no limits: chatbatch learns them from the headers;
* (c) the job sets limits twice too high: the headers must bring them down.

Reported per scenario: requests/min and tokens/min the server admitted over the second half of the
run (by then the minute's budget the buckets start with is spent, so this is the sustained rate), as
a fraction of the server's limits — the binding one is the one that matters — and the fraction of all
requests answered 429. Targets:
≥ 95% of the binding limit, < 0.5% 429s. The three run at the same time (two cores; each client
needs little CPU at these rates).

    python bench/ratelimit_bench.py [--seconds 180] [--rpm 1200] [--tpm 40000] [--max-tokens 40]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fakeapi import FakeOpenAI, request_token_cost  # noqa: E402


def run_scenario(name: str, limits: list[str], args, results: dict) -> None:
    with FakeOpenAI(rpm=args.rpm, tpm=args.tpm) as fake, tempfile.TemporaryDirectory() as tmp:
        rows = int((args.rpm + args.tpm / 20) * args.seconds / 60 * 2)
        pq.write_table(pa.table({"text": [f"Classify review {i}: decent kettle, slow to boil" for i in range(rows)]}),
                       f"{tmp}/in.parquet")
        cmd = [sys.executable, "-m", "pipeline", "run", "--input", f"{tmp}/in.parquet", "--output", f"{tmp}/out.parquet",
               "--template", "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--concurrency", "32",
               "--max-completion-tokens", str(args.max_tokens), "--quiet", "--progress-interval", "30", *limits]
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
        started = time.monotonic()
        process = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(args.seconds)
        process.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        process.communicate(timeout=60)
        # the server's buckets start full (a minute's budget in hand): measure the sustained rate
        # over the last part of the run, once that initial stock is spent
        window_start = started + args.seconds * args.settle_fraction
        minutes = (stopped - window_start) / 60
        admitted = [e for e in fake.requests if e["status"] == 200 and e["time"] >= window_start]
        tokens = sum(request_token_cost(e["body"]) for e in admitted)
        answered = [e for e in fake.requests if e["status"]]
        results[name] = {
            "requests_per_min": len(admitted) / minutes, "tokens_per_min": tokens / minutes,
            "rpm_fraction": len(admitted) / minutes / args.rpm, "tpm_fraction": tokens / minutes / args.tpm,
            "requests": len(answered), "rate_limited": fake.rate_limited,
            "fraction_429": fake.rate_limited / max(len(answered), 1),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--tpm", type=int, default=40000)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--settle-fraction", type=float, default=0.5,
                        help="share of the run left out of the sustained-rate window (the initial stock)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    scenarios = {
        "a: limits set right": ["--rpm", str(args.rpm), "--tpm", str(args.tpm)],
        "b: no limits set": [],
        "c: limits set 2x too high": ["--rpm", str(2 * args.rpm), "--tpm", str(2 * args.tpm)],
    }
    results: dict = {}
    threads = [threading.Thread(target=run_scenario, args=(n, lim, args, results)) for n, lim in scenarios.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"server limits: rpm {args.rpm:,}, tpm {args.tpm:,}; {args.seconds:g} s per scenario, run side by side")
    print(f"{'scenario':<28}{'req/min':>9}{'of rpm':>8}{'tok/min':>10}{'of tpm':>8}{'binding':>9}{'429s':>7}{'of reqs':>9}")
    ok = True
    for name in scenarios:
        r = results[name]
        binding = max(r["rpm_fraction"], r["tpm_fraction"])
        ok &= binding >= 0.95 and r["fraction_429"] < 0.005
        print(f"{name:<28}{r['requests_per_min']:>9,.0f}{r['rpm_fraction']:>8.1%}{r['tokens_per_min']:>10,.0f}"
              f"{r['tpm_fraction']:>8.1%}{binding:>9.1%}{r['rate_limited']:>7}{r['fraction_429']:>9.2%}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
