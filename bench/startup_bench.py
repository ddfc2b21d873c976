"""Start-up and memory: a 1-row job and a 20k-row job, chatbatch vs the bare aiohttp loop, side by side.

For each git revision given (default: the working tree only), runs the real CLI
(``python -m pipeline run``, from a ``git worktree`` of that revision) against ``fastserver.py``:

* a 1-row job (Parquet and CSV input): wall time and peak RSS, median of ``--repeat`` runs;
* a 20,000-row job (short prompts, Parquet): peak RSS and CPU seconds.

The bare loop (``bare_loop.py``, 1 row and 20,000 rows) is measured in the same run as the floor,
and so are two floors below it: the interpreter alone (``python -c pass``: with this machine's
``site`` hooks) and the interpreter importing only what any aiohttp client writing Parquet must
(``aiohttp``, ``asyncio``, ``pyarrow.parquet``). ::

    python bench/startup_bench.py [--revs main~3,HEAD] [--repeat 5] [--rows 20000]

Each checkout is byte-compiled first (``compileall``), as ``pip install`` does: this machine sets
``PYTHONDONTWRITEBYTECODE=1``, so an uncompiled checkout would compile every module on every start
— a cost an installed chatbatch never pays.

Prints a table; every figure comes from ``wait4`` on the child (wall, CPU, max RSS).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import MODEL, median, prompt, run_child, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FLOOR_IMPORTS = "import asyncio, aiohttp, pyarrow.parquet"  # what an aiohttp client writing Parquet imports


def cli(repo: Path, inp: Path, out: Path, base_url: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", "--input", str(inp), "--output", str(out),
            "--template", "{prompt}", "--model", MODEL, "--base-url", base_url, "--quiet", "--overwrite",
            "--fresh"]


def bare(url: str, n: int) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "bare_loop.py"), "--url", url, "--n", str(n),
            "--concurrency", "64", "--json"]


def measure(cmd: list[str], repeat: int, cwd: Path, env: dict) -> dict:
    runs = [run_child(cmd, cpu=0, timeout=600, env=env, cwd=str(cwd)) for _ in range(repeat)]
    bad = [r for r in runs if r.returncode != 0]
    if bad:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{bad[0].stderr[-2000:]}")
    return {"wall_s": median([r.wall_s for r in runs]), "cpu_s": median([r.cpu_s for r in runs]),
            "rss_mb": max(r.maxrss_kb for r in runs) / 1024}


@contextlib.contextmanager
def checkout(rev: str | None):
    """The repository at ``rev`` (None: the working tree as it is)."""
    if rev is None:
        yield ROOT
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wt"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path), rev], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revs", default="", help="comma-separated git revisions (default: the working tree)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ARROW_"))}
    env["OPENAI_API_KEY"] = "sk-bench"
    revs = [r for r in args.revs.split(",") if r] or [None]
    with tempfile.TemporaryDirectory() as tmp, start_server(cpu=1) as srv:
        tmp = Path(tmp)
        pq.write_table(pa.table({"prompt": [prompt(0)]}), tmp / "one.parquet")
        (tmp / "one.csv").write_text(f"prompt\n{prompt(0)}\n")
        pq.write_table(pa.table({"prompt": [prompt(i) for i in range(args.rows)]}), tmp / "many.parquet")
        rows = [("python -c pass", "-", measure([sys.executable, "-c", "pass"], args.repeat, ROOT, env)),
                ("python: imports only", "-", measure([sys.executable, "-c", FLOOR_IMPORTS], args.repeat, ROOT, env)),
                ("bare loop", "1 row", measure(bare(srv.chat_url, 1), args.repeat, ROOT, env)),
                ("bare loop", f"{args.rows:,} rows", measure(bare(srv.chat_url, args.rows), 1, ROOT, env))]
        for rev in revs:
            with checkout(rev) as repo:
                subprocess.run([sys.executable, "-m", "compileall", "-q", str(repo / "pipeline")], check=True)
                name = f"chatbatch {rev or 'worktree'}"
                for label, inp, repeat in (("1 row, Parquet", "one.parquet", args.repeat),
                                           ("1 row, CSV", "one.csv", args.repeat),
                                           (f"{args.rows:,} rows", "many.parquet", 1)):
                    cmd = cli(repo, tmp / inp, tmp / "out.parquet", srv.base_url)
                    rows.append((name, label, measure(cmd, repeat, repo, env)))
    print(f"{'client':<28} {'job':<16} {'wall s':>7} {'CPU s':>7} {'peak RSS MB':>12}")
    for name, label, fig in rows:
        print(f"{name:<28} {label:<16} {fig['wall_s']:7.2f} {fig['cpu_s']:7.2f} {fig['rss_mb']:12.0f}")
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
