"""How many paid requests does a SIGKILL cost? Kill `chatbatch run` at random moments, rerun it.

Starts tests/fakeapi.py's FakeOpenAI on 127.0.0.1 (it records every billed request), runs the real
CLI on a generated input with duplicates, SIGKILLs it after a random number of billed requests,
``--kills`` times, then reruns it to completion, and reports per kill how many requests were billed
again (a request billed twice for the same prompt) against the ``--concurrency`` bound.

    python bench/kill_resume.py [--rows 5000] [--distinct 4000] [--concurrency 32] [--kills 8]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fakeapi import FakeOpenAI  # noqa: E402


def billed(fake) -> Counter:
    return Counter(entry["prompt"] for entry in fake.completed())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--distinct", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = [f"prompt {i % args.distinct}" for i in range(args.rows)]
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(latency_s=args.latency) as fake:
        pq.write_table(pa.table({"text": rows}), Path(tmp) / "in.parquet")
        cmd = [sys.executable, "-m", "pipeline", "run", "--input", f"{tmp}/in.parquet", "--output",
               f"{tmp}/out.parquet", "--template", "{text}", "--model", "gpt-4o-mini", "--base-url",
               fake.base_url, "--concurrency", str(args.concurrency), "--quiet"]
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
        resent_before, per_kill = 0, []
        for _ in range(args.kills):
            start = sum(billed(fake).values())
            target = start + rng.randint(args.concurrency, max(args.concurrency + 1, args.distinct // (args.kills + 2)))
            process = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while sum(billed(fake).values()) < target and process.poll() is None:
                time.sleep(0.002)
            process.kill()
            process.wait()
            time.sleep(args.latency * 3)  # let replies to the dead client's requests be billed
            counts = billed(fake)
            resent = sum(counts.values()) - len(counts)
            per_kill.append(resent - resent_before)
            resent_before = resent
        final = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        counts = billed(fake)
        out = pq.read_table(f"{tmp}/out.parquet")
        ok = final.returncode == 0 and out.column("reply").to_pylist() == [f"ECHO {r}" for r in rows]
        print(f"rows {args.rows:,} ({args.distinct:,} distinct), concurrency {args.concurrency}, kills {args.kills}")
        print(f"re-billed per kill: {per_kill}  (max {max(per_kill)}, bound {args.concurrency})")
        print(f"billed in all: {sum(counts.values()):,} for {len(counts):,} distinct requests; "
              f"final output correct: {ok}")
        return 0 if ok and max(per_kill) <= args.concurrency else 1


if __name__ == "__main__":
    sys.exit(main())
