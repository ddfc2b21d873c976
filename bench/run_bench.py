"""End-to-end benchmark of the ``chatbatch`` CLI against the bare aiohttp loop.

Generates an input Parquet (column ``prompt``) in a temp dir, starts
``fastserver.py`` pinned to ``--server-cpu`` (default core 1), then runs each
child process pinned to ``--client-cpu`` (default core 0), one at a time:

* ``bare_loop.py`` – the ceiling, N requests at concurrency C;
* the real CLI – ``python -m pipeline run --input … --output … --quiet``.

Scenarios (``--scenarios a,b,c``):

a. zero latency, C=64, N=20000: rows/s of both, ratio chatbatch/bare;
b. 0.2 s latency, C=256, N=5000: rows/s as a fraction of the ideal C/latency;
c. memory: zero latency, chatbatch at each of ``--memory-sizes`` rows, peak
   RSS of each and the ratio largest/smallest.

Per child: wall time (spawn to exit), rows/s = N / wall, the server-side
request window and rate (first request in → last reply out, so interpreter
start-up, file reading and writing are excluded), CPU seconds per 1,000 rows
(user+sys of that child, from ``os.wait4``) and peak RSS (``ru_maxrss`` of
that child).  ``--repeat`` runs each measurement several times (bare and CLI
alternate) and reports medians.  Results go to ``bench/results/latest.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchlib import (API_KEY, BENCH_DIR, MODEL, PROMPT_FMT, install_sigterm_handler,
                      median, run_child, start_server)

REPO_DIR = BENCH_DIR.parent
TARGETS = {"a_rows_per_s": 3000.0, "a_ratio_to_bare": 0.35,
           "b_frac_of_ideal": 0.90, "c_rss_ratio_max": 1.2}
METRICS = ("wall_s", "rows_per_s", "window_s", "window_rows_per_s",
           "cpu_s_per_1k", "maxrss_mb", "server_cpu_util")


# ---------------------------------------------------------------- inputs ---

def make_input(workdir: Path, n: int, cache: dict) -> Path:
    """Write (once per size) an N-row Parquet with a short ``prompt`` column."""
    if n not in cache:
        path = workdir / f"input_{n}.parquet"
        prompts = pa.array([PROMPT_FMT.format(i) for i in range(n)], pa.string())
        pq.write_table(pa.table({"prompt": prompts}), path)
        cache[n] = path
    return cache[n]


def cli_command(inp: Path, out: Path, port: int, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", "--input", str(inp),
            "--output", str(out), "--template", "{prompt}", "--model", MODEL,
            "--base-url", f"http://127.0.0.1:{port}/v1",
            "--concurrency", str(concurrency), "--quiet", "--overwrite", "--fresh"]  # a new run each time, never a resume


def bare_command(port: int, n: int, concurrency: int, cpu: int) -> list[str]:
    return [sys.executable, str(BENCH_DIR / "bare_loop.py"),
            "--url", f"http://127.0.0.1:{port}/v1/chat/completions",
            "--n", str(n), "--concurrency", str(concurrency), "--cpu", str(cpu),
            "--json"]


# ----------------------------------------------------------- measurement ---

def _check_cli_output(out: Path, n: int) -> str | None:
    """None when the output has N rows, all with status "ok"; else a message."""
    if not out.exists():
        return "no output file"
    status = pq.read_table(out, columns=["status"]).column("status").to_pylist()
    ok = sum(1 for s in status if s == "ok")
    if len(status) != n or ok != n:
        return f"output has {len(status)} rows, {ok} ok (expected {n})"
    return None


def _check_bare_output(stdout: str) -> str | None:
    try:
        errors = json.loads(stdout.strip().splitlines()[-1])["errors"]
    except (ValueError, IndexError, KeyError):
        return "bare_loop printed no result"
    return f"{errors} request errors" if errors else None


def measure(tool: str, srv, n: int, concurrency: int, args, inp: Path | None,
            out: Path) -> dict:
    """Run one child (``bare`` or ``cli``) once and collect its figures."""
    if tool == "cli":
        cmd = cli_command(inp, out, srv.port, concurrency)
    else:
        cmd = bare_command(srv.port, n, concurrency, args.client_cpu)
    env = dict(os.environ, OPENAI_API_KEY=API_KEY)
    timeout = args.timeout or 60 + n / 300
    srv.stats()  # reset the request window
    srv_cpu0 = srv.cpu_seconds()
    res = run_child(cmd, cpu=args.client_cpu, timeout=timeout, env=env,
                    cwd=str(REPO_DIR))
    srv_cpu = srv.cpu_seconds() - srv_cpu0
    window = srv.stats()
    error = _run_error(res, timeout) or (
        _check_cli_output(out, n) if tool == "cli" else _check_bare_output(res.stdout))
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    return _figures(tool, n, concurrency, srv.latency, res, window, srv_cpu, error)


def _run_error(res, timeout: float) -> str | None:
    if res.timed_out:
        return f"timed out after {timeout:.0f}s"
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return f"exit code {res.returncode}: {tail[:300]}"
    return None


def _figures(tool, n, concurrency, latency, res, window, srv_cpu, error) -> dict:
    win_s = window["window_s"]
    return {
        "tool": tool, "n": n, "concurrency": concurrency, "latency_s": latency,
        "ok": error is None, "error": error,
        "wall_s": res.wall_s, "rows_per_s": n / res.wall_s,
        "window_s": win_s, "server_requests": window["requests"],
        "window_rows_per_s": window["requests"] / win_s if win_s else None,
        "cpu_s": res.cpu_s, "cpu_s_per_1k": 1000 * res.cpu_s / n,
        "maxrss_mb": res.maxrss_kb / 1024,
        "server_cpu_util": srv_cpu / res.wall_s,
        "stderr_tail": res.stderr[-2000:] if error else "",
    }


def repeated(tools: list[str], srv, n: int, concurrency: int, args,
             inp: Path, out: Path) -> dict:
    """``--repeat`` runs of each tool (order alternating); medians per tool."""
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    for r in range(args.repeat):
        for tool in (tools if r % 2 == 0 else tools[::-1]):
            fig = measure(tool, srv, n, concurrency, args, inp, out)
            runs[tool].append(fig)
            _progress(fig)
    return {tool: _summarise(rs) for tool, rs in runs.items()}


def _summarise(runs: list[dict]) -> dict:
    good = [r for r in runs if r["ok"]]
    summary = {m: median([r[m] for r in good]) if good else None for m in METRICS}
    summary.update(ok=bool(good) and len(good) == len(runs),
                   errors=[r["error"] for r in runs if r["error"]], runs=runs)
    return summary


def _progress(fig: dict) -> None:
    status = "ok" if fig["ok"] else f"FAILED: {fig['error']}"
    print(f"  {fig['tool']:<4} n={fig['n']:<8} C={fig['concurrency']:<4} "
          f"lat={fig['latency_s']:<4} wall={fig['wall_s']:7.2f}s "
          f"{fig['rows_per_s']:7.0f} rows/s  rss={fig['maxrss_mb']:6.0f} MB  {status}",
          file=sys.stderr, flush=True)


# ------------------------------------------------------------- scenarios ---

def scenario_a(ctx) -> dict:
    """Zero latency: chatbatch vs bare loop, rows/s and their ratio."""
    a = ctx.args
    srv = ctx.server(0.0)
    res = repeated(["bare", "cli"], srv, a.a_n, a.a_concurrency, a,
                   ctx.input(a.a_n), ctx.out)
    res["n"], res["concurrency"] = a.a_n, a.a_concurrency
    res["ratio_to_bare"] = _ratio(res["cli"]["rows_per_s"], res["bare"]["rows_per_s"])
    res["window_ratio_to_bare"] = _ratio(res["cli"]["window_rows_per_s"],
                                         res["bare"]["window_rows_per_s"])
    return res


def scenario_b(ctx) -> dict:
    """High latency: rows/s as a fraction of the ideal C / latency."""
    a = ctx.args
    srv = ctx.server(a.b_latency)
    res = repeated(["bare", "cli"], srv, a.b_n, a.b_concurrency, a,
                   ctx.input(a.b_n), ctx.out)
    ideal = a.b_concurrency / a.b_latency
    res.update(n=a.b_n, concurrency=a.b_concurrency, latency_s=a.b_latency,
               ideal_rows_per_s=ideal)
    for tool in ("bare", "cli"):
        res[tool]["frac_of_ideal"] = _ratio(res[tool]["rows_per_s"], ideal)
        res[tool]["window_frac_of_ideal"] = _ratio(res[tool]["window_rows_per_s"], ideal)
    return res


def scenario_c(ctx) -> dict:
    """Memory: chatbatch's peak RSS at each size, ratio largest/smallest."""
    a = ctx.args
    srv = ctx.server(0.0)
    sizes = sorted(int(x) for x in a.memory_sizes.split(","))
    per_size = {}
    for n in sizes:
        per_size[str(n)] = repeated(["cli"], srv, n, a.c_concurrency, a,
                                    ctx.input(n), ctx.out)["cli"]
    lo, hi = per_size[str(sizes[0])], per_size[str(sizes[-1])]
    return {"sizes": sizes, "concurrency": a.c_concurrency, "per_size": per_size,
            "rss_ratio": _ratio(hi["maxrss_mb"], lo["maxrss_mb"])}


def _ratio(num, den):
    return num / den if num is not None and den else None


class Context:
    """Temp dir, input cache and one server per latency (all cleaned up)."""

    def __init__(self, args, stack: contextlib.ExitStack) -> None:
        self.args, self._stack = args, stack
        self.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="chatbatch-bench-")))
        self.out = self.workdir / "out.parquet"
        self._inputs: dict = {}
        self._servers: dict = {}

    def input(self, n: int) -> Path:
        return make_input(self.workdir, n, self._inputs)

    def server(self, latency: float):
        if latency not in self._servers:
            self._servers[latency] = self._stack.enter_context(
                start_server(latency, self.args.server_cpu))
        return self._servers[latency]


SCENARIOS = {"a": scenario_a, "b": scenario_b, "c": scenario_c}


# ------------------------------------------------------------- reporting ---

def _fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _fmt_measure(value) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3f}"


def _tool_rows(res: dict, with_ideal: bool) -> list[str]:
    head = (f"  {'tool':<10}{'wall s':>8}{'rows/s':>9}{'window/s':>10}"
            f"{'CPU s/1k':>10}{'RSS MB':>8}{'srv CPU':>8}"
            + (f"{'of ideal':>10}{'win ideal':>10}" if with_ideal else ""))
    lines = [head]
    for tool, label in (("bare", "bare loop"), ("cli", "chatbatch")):
        r = res[tool]
        line = (f"  {label:<10}{_fmt(r['wall_s'], '.2f'):>8}{_fmt(r['rows_per_s']):>9}"
                f"{_fmt(r['window_rows_per_s']):>10}{_fmt(r['cpu_s_per_1k'], '.3f'):>10}"
                f"{_fmt(r['maxrss_mb']):>8}{_fmt(r['server_cpu_util'], '.0%'):>8}")
        if with_ideal:
            line += (f"{_fmt(r['frac_of_ideal'], '.1%'):>10}"
                     f"{_fmt(r['window_frac_of_ideal'], '.1%'):>10}")
        lines.append(line + ("" if r["ok"] else "  FAILED"))
    return lines


def report_a(res: dict, repeat: int) -> list[str]:
    lines = [f"(a) zero latency, C={res['concurrency']}, N={res['n']}, "
             f"median of {repeat}"] + _tool_rows(res, False)
    lines.append(f"  chatbatch / bare: {_fmt(res['ratio_to_bare'], '.2f')} (wall), "
                 f"{_fmt(res['window_ratio_to_bare'], '.2f')} (server window)")
    return lines


def report_b(res: dict, repeat: int) -> list[str]:
    return [f"(b) latency {res['latency_s']} s, C={res['concurrency']}, "
            f"N={res['n']}, ideal {res['ideal_rows_per_s']:.0f} rows/s, "
            f"median of {repeat}"] + _tool_rows(res, True)


def report_c(res: dict, repeat: int) -> list[str]:
    lines = [f"(c) memory, zero latency, C={res['concurrency']}, median of {repeat}",
             f"  {'rows':>9}{'wall s':>9}{'rows/s':>9}{'CPU s/1k':>10}{'RSS MB':>9}"]
    for n, r in res["per_size"].items():
        lines.append(f"  {int(n):>9}{_fmt(r['wall_s'], '.2f'):>9}"
                     f"{_fmt(r['rows_per_s']):>9}{_fmt(r['cpu_s_per_1k'], '.3f'):>10}"
                     f"{_fmt(r['maxrss_mb']):>9}" + ("" if r["ok"] else "  FAILED"))
    lines.append(f"  peak RSS ratio {res['sizes'][-1]}/{res['sizes'][0]} rows: "
                 f"{_fmt(res['rss_ratio'], '.2f')}")
    return lines


def check_targets(results: dict) -> list[dict]:
    """Compare the medians with the README's targets."""
    checks = []

    def add(name, value, target, higher_is_better=True):
        passed = None if value is None else (
            value >= target if higher_is_better else value <= target)
        checks.append({"name": name, "value": value, "target": target,
                       "pass": passed})

    if "a" in results:
        add("a: chatbatch rows/s (wall) >=", results["a"]["cli"]["rows_per_s"],
            TARGETS["a_rows_per_s"])
        add("a: chatbatch/bare (wall) >=", results["a"]["ratio_to_bare"],
            TARGETS["a_ratio_to_bare"])
    if "b" in results:
        add("b: fraction of ideal (server window) >=",
            results["b"]["cli"]["window_frac_of_ideal"], TARGETS["b_frac_of_ideal"])
    if "c" in results:
        add("c: peak RSS ratio largest/smallest <=", results["c"]["rss_ratio"],
            TARGETS["c_rss_ratio_max"], higher_is_better=False)
    return checks


def report(results: dict, checks: list[dict], repeat: int) -> str:
    reporters = {"a": report_a, "b": report_b, "c": report_c}
    lines: list[str] = []
    for key, res in results.items():
        lines += reporters[key](res, repeat) + [""]
    lines.append("Targets")
    for c in checks:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c["pass"]]
        lines.append(f"  {c['name']:<44}{c['target']:>8g}  "
                     f"measured {_fmt_measure(c['value']):>7}  {verdict}")
    errors = _collect_errors(results)
    if errors:
        lines += ["", "Errors"] + [f"  {e}" for e in errors]
    return "\n".join(lines)


def _collect_errors(results: dict) -> list[str]:
    """Every failed run's error, labelled by scenario and tool/size."""
    found = []
    for key, res in results.items():
        groups = res["per_size"] if key == "c" else {t: res[t] for t in ("bare", "cli")}
        for label, summary in groups.items():
            found += [f"({key}) {label}: {e}" for e in summary["errors"]]
    return found


# ------------------------------------------------------------------ main ---

def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenarios", default="a,b,c", help="subset of a,b,c")
    p.add_argument("--a-n", type=int, default=20000)
    p.add_argument("--a-concurrency", type=int, default=64)
    p.add_argument("--b-n", type=int, default=5000)
    p.add_argument("--b-concurrency", type=int, default=256)
    p.add_argument("--b-latency", type=float, default=0.2)
    p.add_argument("--memory-sizes", default="100000,1000000")
    p.add_argument("--c-concurrency", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1, help="runs per measurement (median)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per child run (default 60 + N/300)")
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--json-out", default=str(BENCH_DIR / "results" / "latest.json"))
    return p.parse_args(argv)


def _meta(args) -> dict:
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version,
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "args": vars(args), "targets": TARGETS}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    install_sigterm_handler()
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    results: dict = {}
    try:
        with contextlib.ExitStack() as stack:
            ctx = Context(args, stack)
            for key in wanted:
                print(f"scenario {key} ...", file=sys.stderr, flush=True)
                results[key] = SCENARIOS[key](ctx)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    checks = check_targets(results)
    print(report(results, checks, args.repeat))
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": _meta(args), "results": results,
                               "targets": checks}, indent=2))
    print(f"\nwrote {out}")
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
