"""The overhead of ``pipeline.enrich`` on an in-memory DataFrame vs the CLI on the same rows.

Side by side against ``fastserver.py`` (zero latency, pinned to ``--server-cpu``), each child pinned
to ``--client-cpu``, alternating, ``--repeat`` times (medians):

* ``cli``    – ``python -m pipeline run --input rows.parquet --output … --quiet --fresh``;
* ``enrich`` – a child that builds the same N rows as a pandas DataFrame (column ``prompt``) and
  calls ``enrich(df, template="{prompt}", …, progress=False, fresh=True)``, its state in the temp dir.

Per child: wall time from spawn to exit, CPU seconds (user+sys, ``wait4``) per 1,000 rows, peak RSS,
and the server-side request window (first request in → last reply out) and its rate. The enrich child
also reports the time inside the ``enrich`` call and the time it took to build the DataFrame. The
target: enrich within 10% of the CLI on wall time and CPU. Results go to
``bench/results/enrich.json``.

    python bench/enrich_bench.py [--n 100000] [--concurrency 64] [--repeat 3]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import API_KEY, BENCH_DIR, MODEL, PROMPT_FMT, install_sigterm_handler, median, run_child, start_server

REPO_DIR = BENCH_DIR.parent
TARGET_RATIO = 1.10  # enrich's wall time and CPU at most 10% above the CLI's


def child(args) -> None:
    """In the enrich child: build the DataFrame, call enrich, print the figures as JSON."""
    started = time.perf_counter()
    import pandas as pd

    sys.path.insert(0, str(REPO_DIR))
    from pipeline import enrich

    imported = time.perf_counter()
    frame = pd.DataFrame({"prompt": [PROMPT_FMT.format(i) for i in range(args.n)]})
    built = time.perf_counter()
    result = enrich(frame, template="{prompt}", model=MODEL, base_url=f"http://127.0.0.1:{args.port}/v1",
                    concurrency=args.concurrency, progress=False, fresh=True, state_dir=args.state_dir)
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - started, "build_s": built - imported, "call_s": done - built,
                      "rows": len(result), "ok": int((result["status"] == "ok").sum())}))


def command(tool: str, args, workdir: Path, port: int) -> list[str]:
    if tool == "cli":
        return [sys.executable, "-m", "pipeline", "run", "--input", str(workdir / "rows.parquet"),
                "--output", str(workdir / "out.parquet"), "--template", "{prompt}", "--model", MODEL,
                "--base-url", f"http://127.0.0.1:{port}/v1", "--concurrency", str(args.concurrency),
                "--quiet", "--overwrite", "--fresh"]
    return [sys.executable, str(Path(__file__).resolve()), "--child", "--n", str(args.n), "--port", str(port),
            "--concurrency", str(args.concurrency), "--state-dir", str(workdir / "enrich.state")]


def check(tool: str, res, workdir: Path, n: int) -> tuple[str | None, dict]:
    if res.timed_out or res.returncode != 0:
        return f"exit {res.returncode}: {res.stderr.strip()[-300:]}", {}
    if tool == "enrich":
        inner = json.loads(res.stdout.strip().splitlines()[-1])
        return (None if inner["ok"] == n else f"{inner['ok']} of {n} ok"), inner
    import pyarrow.parquet as pq

    status = pq.read_table(workdir / "out.parquet", columns=["status"]).column("status").to_pylist()
    return (None if status.count("ok") == n else f"{status.count('ok')} of {n} ok"), {}


def measure(tool: str, args, workdir: Path, srv) -> dict:
    srv.stats()  # reset the server's request window
    res = run_child(command(tool, args, workdir, srv.port), cpu=args.client_cpu, timeout=60 + args.n / 200,
                    env=dict(os.environ, OPENAI_API_KEY=API_KEY), cwd=str(REPO_DIR))
    window = srv.stats()
    error, inner = check(tool, res, workdir, args.n)
    with contextlib.suppress(FileNotFoundError):
        (workdir / "out.parquet").unlink()
    return {"tool": tool, "ok": error is None, "error": error, "wall_s": res.wall_s,
            "rows_per_s": args.n / res.wall_s, "cpu_s_per_1k": 1000 * res.cpu_s / args.n,
            "maxrss_mb": res.maxrss_kb / 1024, "window_s": window["window_s"],
            "window_rows_per_s": window["requests"] / window["window_s"] if window["window_s"] else None,
            **inner}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--json", default=str(BENCH_DIR / "results" / "enrich.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    install_sigterm_handler()
    import pyarrow as pa
    import pyarrow.parquet as pq

    runs: dict[str, list[dict]] = {"cli": [], "enrich": []}
    with tempfile.TemporaryDirectory(prefix="enrich-bench-") as tmp, start_server(0.0, args.server_cpu) as srv:
        workdir = Path(tmp)
        pq.write_table(pa.table({"prompt": [PROMPT_FMT.format(i) for i in range(args.n)]}), workdir / "rows.parquet")
        for round_ in range(args.repeat):
            for tool in (("cli", "enrich") if round_ % 2 == 0 else ("enrich", "cli")):
                fig = measure(tool, args, workdir, srv)
                runs[tool].append(fig)
                print(f"{tool:<6} wall={fig['wall_s']:6.2f}s rows/s={fig['rows_per_s']:7.0f} "
                      f"cpu/1k={fig['cpu_s_per_1k']:.3f}s rss={fig['maxrss_mb']:.0f}MB "
                      f"window={fig['window_rows_per_s'] or 0:7.0f}/s"
                      + (f" call={fig['call_s']:.2f}s build={fig['build_s']:.2f}s" if "call_s" in fig else "")
                      + ("" if fig["ok"] else f" ERROR {fig['error']}"), flush=True)
    report(args, runs)


def report(args, runs: dict[str, list[dict]]) -> None:
    medians = {tool: {key: median([r[key] for r in rs if r["ok"] and r.get(key) is not None])
                      for key in ("wall_s", "rows_per_s", "cpu_s_per_1k", "maxrss_mb", "window_rows_per_s",
                                  "call_s", "build_s", "import_s") if any(key in r for r in rs)}
               for tool, rs in runs.items()}
    ratios = {key: medians["enrich"][key] / medians["cli"][key] for key in ("wall_s", "cpu_s_per_1k", "maxrss_mb")}
    verdict = all(ratios[k] <= TARGET_RATIO for k in ("wall_s", "cpu_s_per_1k"))
    print(f"\nN={args.n}, C={args.concurrency}, zero latency, median of {args.repeat}")
    for tool, m in medians.items():
        print(f"  {tool:<6} " + "  ".join(f"{k}={v:.3f}" for k, v in m.items()))
    print("  enrich/cli: " + "  ".join(f"{k} {v:.3f}" for k, v in ratios.items())
          + f"  -> {'PASS' if verdict else 'FAIL'} (target <= {TARGET_RATIO})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"n": args.n, "concurrency": args.concurrency, "repeat": args.repeat,
                                           "medians": medians, "ratios": ratios, "pass": verdict,
                                           "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
