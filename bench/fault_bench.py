"""The fault tail: how much later does a run with 10% transient faults end than one retrying at once?

A tests/fakeapi.py server on 127.0.0.1 answers ``--fault-rate`` of all requests with a 500, a
connection reset or a truncated 200 body (in turn; ``fake.fault_rate``), with ``--latency`` on
every reply and no rate limit. The real CLI sends ``--rows`` rows at ``--concurrency``, in turn as:

* ``after`` — this checkout, default backoff;
* ``immediate`` — this checkout with ``--backoff-base 0``: every retry sent at once (the floor: what
  a client that retries immediately takes);
* ``before`` — with ``--before PATH``, another checkout's ``pipeline`` at its default backoff.

The variants take turns (``--repeat`` rounds), so they see the same machine load; reported per
variant: the median wall time of the CLI process, the median span from the server's first request
to its last (no start-up), CPU seconds, requests sent and rows ok — and the ratios to ``immediate``.
Target: ``after`` within 1.1× of ``immediate``'s wall time, with no more requests than ``before``.

    python bench/fault_bench.py [--rows 2000] [--concurrency 32] [--latency 0.2] [--fault-rate 0.1]
        [--repeat 3] [--before PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import run_child  # noqa: E402
from fakeapi import FakeOpenAI  # noqa: E402


def run_once(repo: Path, extra: list[str], args, tmp: str) -> dict:
    with FakeOpenAI(latency_s=args.latency) as fake:
        fake.fault_rate = args.fault_rate
        out = f"{tmp}/out.parquet"
        cmd = [sys.executable, "-m", "pipeline", "run", "--input", f"{tmp}/in.parquet", "--output", out,
               "--template", "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url,
               "--concurrency", str(args.concurrency), "--quiet", "--overwrite", *extra]
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
        child = run_child(cmd, cpu=None, timeout=600, env=env, cwd=str(repo))
        if child.returncode not in (0, 1):  # 1: some rows ended in errors (counted below)
            raise SystemExit(f"{repo} {extra}: exit {child.returncode}\n{child.stderr[-2000:]}")
        times = [e["time"] for e in fake.requests]
        status = pq.read_table(out, columns=["status"]).column(0).to_pylist()
        return {"wall_s": child.wall_s, "span_s": max(times) - min(times), "cpu_s": child.cpu_s,
                "requests": len(fake.requests), "ok": status.count("ok"), "faults": fake.faults}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another checkout to compare (its pipeline)")
    args = parser.parse_args()
    variants = {"after": (ROOT, []), "immediate": (ROOT, ["--backoff-base", "0"])}
    if args.before:
        variants["before"] = (args.before.resolve(), [])
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.table({"text": [f"Classify review {i}: decent kettle" for i in range(args.rows)]}),
                       f"{tmp}/in.parquet")
        for _ in range(args.repeat):
            for name, (repo, extra) in variants.items():
                runs[name].append(run_once(repo, extra, args, tmp))
    print(f"{args.rows:,} rows, concurrency {args.concurrency}, latency {args.latency:g} s, "
          f"{args.fault_rate:.0%} faults; medians of {args.repeat}, variants in turn; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<11}{'wall s':>8}{'× imm.':>8}{'span s':>8}{'× imm.':>8}{'CPU s':>7}{'requests':>10}{'rows ok':>9}")
    median = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    floor = median["immediate"]
    for name, m in median.items():
        print(f"{name:<11}{m['wall_s']:>8.2f}{m['wall_s'] / floor['wall_s']:>8.2f}{m['span_s']:>8.2f}"
              f"{m['span_s'] / floor['span_s']:>8.2f}{m['cpu_s']:>7.2f}{m['requests']:>10,.0f}{m['ok']:>9,.0f}")
    return 0 if median["after"]["wall_s"] <= 1.1 * floor["wall_s"] else 1


if __name__ == "__main__":
    sys.exit(main())
