"""pipeline.dask on a LocalCluster: throughput of 1 vs 2 workers, and the share of a server's limit used.

::

    python bench/dask_bench.py [--rows 20000] [--files 8] [--latency 0.02] [--limit-rpm 6000] [--json FILE]

1. **Throughput** against ``bench/fastserver.py`` (canned reply, never the bottleneck), no rate
   limit configured: the same job on a LocalCluster of 1 and of 2 worker processes (one thread
   each). Reports rows/s of the compute (cluster start-up excluded, shown apart), the 2/1 ratio,
   and where the time goes: cluster start-up, the run (read, partitions, write), CPU seconds per
   worker process and in the client, and the limiter's lease round trips.
2. **Share of a server-enforced limit**: ``tests/fakeapi.py`` enforcing ``--limit-rpm`` over a
   one-second bucket, 2 workers, ``rpm`` configured at that limit: requests the server accepted per
   second over the steady part of the run, as a share of the limit, and the share of 429s.

The cluster, the server and this client share the machine: figures depend on its load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from benchlib import start_server  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from pipeline.dask import run_cluster  # noqa: E402
from pipeline.jobspec import build_job  # noqa: E402

KEY = "sk-bench"


def write_lake(folder: Path, rows: int, files: int) -> None:
    folder.mkdir(parents=True)
    per = rows // files
    for part in range(files):
        ids = range(part * per, (part + 1) * per)
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": [f"row {i}" for i in ids]}),
                       folder / f"f{part}.parquet")


def make_job(folder: Path, base_url: str, out: str, **keys):
    values = {"input": str(folder / "lake"), "output": str(folder / out), "template": "Say: {text}",
              "model": "gpt-4o-mini", "base_url": base_url, "concurrency": 64, "quiet": True, **keys}
    return build_job(None, values, {"OPENAI_API_KEY": KEY})


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def throughput(folder: Path, base_url: str, workers: int) -> dict:
    started = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        startup_s = time.perf_counter() - started
        before_workers = client.run(cpu_s)
        before_client, t0 = cpu_s(), time.perf_counter()
        report = run_cluster(make_job(folder, base_url, f"out{workers}.parquet"), cluster.scheduler_address)
        run_s = time.perf_counter() - t0
        client_cpu = cpu_s() - before_client
        after_workers = client.run(cpu_s)
    rows = report.summary["ok"]
    return {"workers": workers, "rows": rows, "run_s": round(run_s, 2), "rows_per_s": round(rows / run_s, 1),
            "startup_s": round(startup_s, 2), "client_cpu_s": round(client_cpu, 2),
            "worker_cpu_s": sorted(round(after_workers[w] - before_workers[w], 2) for w in after_workers),
            "errors": report.summary["error"]}


def limit_share(folder: Path, limit_rpm: int, rows: int) -> dict:
    from fakeapi import FakeOpenAI

    with FakeOpenAI(api_key=KEY, rpm=limit_rpm) as fake, LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None) as cluster, Client(cluster):
        fake.rpm_window_s, fake.latency_s = 1.0, 0.02
        report = run_cluster(make_job(folder, fake.base_url, "limited.parquet", rpm=limit_rpm, concurrency=16),
                             cluster.scheduler_address)
        accepted = sorted(r["time"] for r in fake.requests if r["status"] == 200)
        refused = sum(1 for r in fake.requests if r["status"] == 429)
    # steady state: after the first 3 s (the server's and the limiter's full buckets at the start)
    steady = [t for t in accepted if t >= accepted[0] + 3.0]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    overall = (len(accepted) - 1) / (accepted[-1] - accepted[0])
    return {"limit_rpm": limit_rpm, "rows": rows, "ok": report.summary["ok"],
            "accepted_per_s_overall": round(overall, 2), "leases": report.summary["limiter"]["leases"],
            "accepted_per_s": round(rate, 2), "share_of_limit": round(rate / (limit_rpm / 60), 3),
            "429s": refused, "share_429": round(refused / max(len(accepted) + refused, 1), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--limit-rpm", type=int, default=6000)
    parser.add_argument("--limit-rows", type=int, default=3000)
    parser.add_argument("--only-limit", action="store_true", help="Skip the throughput part.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_lake(folder / "lake", args.rows, args.files)
        if not args.only_limit:
            with start_server(latency=args.latency, cpu=None) as server:
                results["throughput"] = [throughput(folder, server.base_url, workers) for workers in (1, 2)]
            one, two = results["throughput"]
            results["ratio_2_to_1"] = round(two["rows_per_s"] / one["rows_per_s"], 2)
        limited = Path(tmp) / "limited"
        write_lake(limited / "lake", args.limit_rows, args.files)
        results["limit"] = limit_share(limited, args.limit_rpm, args.limit_rows)
    results["load_avg_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
