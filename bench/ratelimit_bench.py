"""Does a run sit at the provider's limits, without 429s, from its first second? Side by side.

Each scenario gets its own tests/fakeapi.py server on 127.0.0.1 enforcing RPM and TPM the way the
API does (token buckets refilled continuously, starting full; 429 with retry-after past them;
x-ratelimit headers on every reply; it charges prompt + max_tokens × n at admission). ``--window``
sizes the requests bucket: 60 (the default) holds a whole minute's requests ("N per rolling
minute"), 1 holds one second's ("N/60 each second": a client that opens with a burst meets 429s).
The real CLI runs against each for ``--seconds`` and is then stopped (SIGINT); the figures come from
what each server saw:

* (a) the job sets the server's real limits;
* (b) the job sets no limits: chatbatch learns them from the headers;
* (c) the job sets limits twice too high: the headers must bring them down.

Reported per scenario:

* requests/min and tokens/min the server admitted over the second half of the run, counted from its
  first request (by then a minute-sized bucket's initial stock is spent, so this is the sustained
  rate), as a fraction of the server's limits — the binding one is the one that matters — and the
  share of all requests answered 429 (targets: ≥ 99% of the binding limit, < 0.5% 429s);
* the opening: requests the server saw in the first second (from the first request), 429s in the
  first 5 s, and the time until the run holds 95% of the binding limit ("to 95%": the next 5 s
  admitted 95% of 5 s' worth).

``--before PATH`` also runs every scenario with another checkout's ``pipeline`` (e.g. ``git archive
main | tar -x -C /tmp/before``), all at the same time, so before and after see the same machine load.
The clients need little CPU at these rates.

    python bench/ratelimit_bench.py [--seconds 180] [--rpm 1200] [--tpm 40000] [--max-tokens 40]
        [--window 60] [--latency 0] [--before PATH]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
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

OPENING_S = 5.0  # 429s are counted over this long from the first request
HOLD_S, STEP_S = 5.0, 0.1  # "to 95%": the share must hold this long (see time_to_share)


def run_scenario(name: str, limits: list[str], args, repo: Path, results: dict) -> None:
    with FakeOpenAI(rpm=args.rpm, tpm=args.tpm, latency_s=args.latency) as fake, \
            tempfile.TemporaryDirectory() as tmp:
        fake.rpm_window_s = args.window
        rows = int((args.rpm + args.tpm / 20) * args.seconds / 60 * 2)
        pq.write_table(pa.table({"text": [f"Classify review {i}: decent kettle, slow to boil" for i in range(rows)]}),
                       f"{tmp}/in.parquet")
        cmd = [sys.executable, "-m", "pipeline", "run", "--input", f"{tmp}/in.parquet", "--output", f"{tmp}/out.parquet",
               "--template", "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--concurrency", "32",
               "--max-completion-tokens", str(args.max_tokens), "--quiet", "--progress-interval", "30", *limits]
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
        started = time.monotonic()
        process = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(args.seconds)
        process.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        process.communicate(timeout=60)
        results[name] = measure(fake.requests, started, stopped, args)


def measure(requests: list[dict], started: float, stopped: float, args) -> dict:
    """The figures of one scenario from the server's log of requests (times from its first request:
    a loaded machine may take seconds to start the CLI)."""
    first = min((e["time"] for e in requests), default=started)
    # the server's buckets may start full (a minute's budget in hand): measure the sustained rate
    # over the last part of the run, once that initial stock is spent
    window_start = first + (stopped - first) * args.settle_fraction
    minutes = (stopped - window_start) / 60
    admitted = [e for e in requests if e["status"] == 200 and e["time"] >= window_start]
    tokens = sum(request_token_cost(e["body"]) for e in admitted)
    answered = [e for e in requests if e["status"]]
    limited = [e for e in answered if e["status"] == 429]
    return {
        "requests_per_min": len(admitted) / minutes, "tokens_per_min": tokens / minutes,
        "rpm_fraction": len(admitted) / minutes / args.rpm, "tpm_fraction": tokens / minutes / args.tpm,
        "requests": len(answered), "rate_limited": len(limited),
        "fraction_429": len(limited) / max(len(answered), 1),
        "first_second": sum(e["time"] < first + 1.0 for e in requests),
        "opening_429": sum(e["time"] < first + OPENING_S for e in limited),
        "to_95_s": time_to_share(requests, first, 0.95, args),
    }


def time_to_share(requests: list[dict], first: float, share: float, args) -> float | None:
    """Seconds from the first request until the run holds ``share`` of the binding limit: the start of
    the first :data:`HOLD_S` span (stepped by :data:`STEP_S`) that admitted at least ``share`` of that
    span's worth of requests (or tokens); None if none did."""
    ok = sorted((e["time"], request_token_cost(e["body"])) for e in requests if e["status"] == 200)
    times = [at for at, _ in ok]
    tokens = list(itertools.accumulate((cost for _, cost in ok), initial=0))
    for step in range(int((times[-1] - first - HOLD_S) / STEP_S) + 1 if times else 0):
        low = bisect.bisect_left(times, first + step * STEP_S)
        high = bisect.bisect_left(times, first + step * STEP_S + HOLD_S)
        if high - low >= share * args.rpm / 60 * HOLD_S or tokens[high] - tokens[low] >= share * args.tpm / 60 * HOLD_S:
            return step * STEP_S
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--tpm", type=int, default=40000)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds' worth of requests the server's bucket holds (fakeapi's rpm_window_s)")
    parser.add_argument("--latency", type=float, default=0.0, help="the server's latency, seconds")
    parser.add_argument("--settle-fraction", type=float, default=0.5,
                        help="share of the run left out of the sustained-rate window (the initial stock)")
    parser.add_argument("--before", type=Path, help="another checkout to run side by side (its pipeline)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    scenarios = {
        "a: limits set right": ["--rpm", str(args.rpm), "--tpm", str(args.tpm)],
        "b: no limits set": [],
        "c: limits set 2x too high": ["--rpm", str(2 * args.rpm), "--tpm", str(2 * args.tpm)],
    }
    versions = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    runs = [(f"{version}  {name}", limits, repo) for name, limits in scenarios.items() for version, repo in versions.items()]
    results: dict = {}
    threads = [threading.Thread(target=run_scenario, args=(n, lim, args, repo, results)) for n, lim, repo in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"server limits: rpm {args.rpm:,}, tpm {args.tpm:,}, requests bucket {args.window:g} s, latency "
          f"{args.latency:g} s; {args.seconds:g} s per scenario, {len(runs)} run side by side; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'scenario':<36}{'req/min':>9}{'of rpm':>8}{'tok/min':>10}{'of tpm':>8}{'binding':>9}{'429s':>6}"
          f"{'of reqs':>9}{'1st s':>7}{'429s 5s':>8}{'to 95%':>8}")
    ok = True
    for name, _, _ in runs:
        r = results[name]
        binding = max(r["rpm_fraction"], r["tpm_fraction"])
        if name.startswith("after"):
            ok &= binding >= 0.99 and r["fraction_429"] < 0.005
        to_95 = f"{r['to_95_s']:.1f}s" if r["to_95_s"] is not None else "never"
        print(f"{name:<36}{r['requests_per_min']:>9,.0f}{r['rpm_fraction']:>8.1%}{r['tokens_per_min']:>10,.0f}"
              f"{r['tpm_fraction']:>8.1%}{binding:>9.1%}{r['rate_limited']:>6}{r['fraction_429']:>9.2%}"
              f"{r['first_second']:>7}{r['opening_429']:>8}{to_95:>8}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
