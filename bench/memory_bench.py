"""Peak memory of ``chatbatch run`` on large documents: is it bounded in bytes, not only in rows?

Writes an input of ``--rows`` rows (default 10,000), each a ``--doc-kb`` KB document (default 100 KB,
so about 1 GB in all), in each of ``--formats`` (parquet, csv, jsonl; Parquet as one row group, the
way ``pandas.DataFrame.to_parquet`` writes it), then runs the real CLI against ``fastserver.py`` on
127.0.0.1::

    python -m pipeline run --input IN --output OUT --template "{doc}" --model gpt-4o-mini \\
        --base-url http://127.0.0.1:PORT/v1 --concurrency C --quiet --overwrite

and reports the child's peak RSS (``ru_maxrss`` from ``os.wait4``), wall time, and whether every row
came back ``ok``. ``--repo PATH`` runs the ``pipeline`` package of another checkout (e.g. an export of
an older commit), to compare before and after::

    python bench/memory_bench.py                                  # this checkout
    python bench/memory_bench.py --repo /tmp/old --formats parquet  # another one

The input and output (about 2 GB per format) go to a temporary folder, removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORDS = ("order shipped late but the support team answered quickly and refunded the fee "
         "the product works as described although the battery drains faster than promised").split()


def corpus(size: int, seed: int = 7) -> str:
    """``size`` characters of word salad, sliced per row so that rows differ."""
    rng = random.Random(seed)
    parts, length = [], 0
    while length < size:
        word = rng.choice(WORDS)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:size]


def documents(rows: int, doc_bytes: int):
    text = corpus(doc_bytes * 2)
    for i in range(rows):
        start = (i * 7919) % doc_bytes
        yield f"#{i} " + text[start:start + doc_bytes - 8]


def write_input(folder: Path, fmt: str, rows: int, doc_bytes: int) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = folder / f"docs.{fmt}"
    if fmt == "jsonl":
        with open(path, "w") as handle:
            for i, doc in enumerate(documents(rows, doc_bytes)):
                handle.write(json.dumps({"id": i, "doc": doc}) + "\n")
        return path
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "doc": pa.array(documents(rows, doc_bytes))})
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=rows)  # one row group, as pandas writes it
    else:
        pacsv.write_csv(table, path)
    return path


def make_input(folder: Path, fmt: str, rows: int, doc_bytes: int) -> Path:
    """Write the input in a child process: a child forked from a big parent reports the parent's
    peak as its own ``ru_maxrss`` (Linux carries the pre-exec high-water mark over)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import memory_bench as m; "
            "print(m.write_input(m.Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(folder), fmt, str(rows),
                           str(doc_bytes)], check=True, capture_output=True, text=True)
    return Path(done.stdout.strip())


def run_once(repo: Path, inp: Path, out: Path, port: int, concurrency: int, cpu: int | None,
             timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pipeline", "run", "--input", str(inp), "--output", str(out),
           "--template", "{doc}", "--model", benchlib.MODEL, "--base-url", f"http://127.0.0.1:{port}/v1",
           "--concurrency", str(concurrency), "--quiet", "--overwrite"]
    env = {**os.environ, "OPENAI_API_KEY": benchlib.API_KEY, "PYTHONPATH": str(repo)}
    env = {k: v for k, v in env.items() if not k.startswith("AZURE_OPENAI_")}
    res = benchlib.run_child(cmd, cpu=cpu, timeout=timeout, env=env, cwd=str(repo))
    ok = res.returncode == 0 and _all_ok(out)
    return {"peak_rss_mb": round(res.maxrss_kb / 1024), "wall_s": round(res.wall_s, 1), "ok": ok,
            "returncode": res.returncode, "timed_out": res.timed_out,
            "stderr": res.stderr[-2000:] if not ok else ""}


def _all_ok(out: Path) -> bool:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not out.exists():
        return False
    status = pq.read_table(out, columns=["status"]).column("status")
    return pc.all(pc.equal(status, "ok")).as_py() is True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--doc-kb", type=int, default=100)
    p.add_argument("--formats", default="parquet,csv,jsonl")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose pipeline package runs")
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    a = p.parse_args(argv)
    benchlib.install_sigterm_handler()
    results = []
    with tempfile.TemporaryDirectory(prefix="chatbatch-membench-") as tmp, \
            benchlib.start_server(cpu=a.server_cpu) as server:
        for fmt in a.formats.split(","):
            inp = make_input(Path(tmp), fmt, a.rows, a.doc_kb * 1000)
            out = Path(tmp) / f"out-{fmt}.parquet"
            figures = run_once(a.repo.resolve(), inp, out, server.port, a.concurrency, a.client_cpu, a.timeout)
            figures.update(format=fmt, rows=a.rows, doc_kb=a.doc_kb, input_mb=round(inp.stat().st_size / 1e6))
            results.append(figures)
            inp.unlink()
            out.unlink(missing_ok=True)
            if not a.json:
                print(f"{fmt:8} {a.rows:,} rows x {a.doc_kb} KB ({figures['input_mb']:,} MB): "
                      f"peak RSS {figures['peak_rss_mb']:,} MB, {figures['wall_s']} s, "
                      + ("all ok" if figures["ok"] else f"FAILED (exit {figures['returncode']}) "
                                                         f"{figures['stderr']}"), flush=True)
    if a.json:
        print(json.dumps({"repo": str(a.repo), "results": results}, indent=2))


if __name__ == "__main__":
    main()
