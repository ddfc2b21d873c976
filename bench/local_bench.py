"""The local sample job: rows/s on the bundled model and agreement of its labels with the stars.

Runs the real CLI, ``chatbatch run JOB --local``, on the sample reviews (all 200 rows, or the
first ``--rows``), then reads the output::

    python bench/local_bench.py [--rows 200] [--job jobs/reviews-classify.toml]

Prints one JSON object:

* ``rows_per_s``: the run's own figure from its summary (rows settled / seconds of the run, the
  server's start excluded), and ``server_start_s`` (chatbatch started to the run's first second);
* ``agreement``: the share of rated rows whose label agrees with the stars — 1–2 stars ``negative``,
  3 stars ``neutral`` or ``mixed``, 4–5 stars ``positive`` (unrated and failed rows are left out);
* ``baseline_positive``: the same share for a model that always answers ``positive``;
* ``by_stars``: how the labels spread over each star rating;
* ``load_average``: the 1-minute load when the run ended (the figures are only comparable at equal
  load: the model takes both cores).

Needs the local extra (llama-cpp-python and the Gemma 3 270M package). Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "reviews.csv"


def expected(stars: float | None) -> set[str] | None:
    """The labels that agree with a star rating (None: unrated)."""
    try:
        stars = float(stars)
    except (TypeError, ValueError):  # unrated (empty, or not a number)
        return None
    if stars != stars:
        return None
    if stars <= 2:
        return {"negative"}
    if stars >= 4:
        return {"positive"}
    return {"neutral", "mixed"}


def agreement(rows: list[dict]) -> dict:
    rated = [(r, expected(r["rating"])) for r in rows if expected(r["rating"]) is not None]
    labelled = [(r, want) for r, want in rated if r["status"] == "ok"]
    by_stars: dict[str, Counter] = {}
    for r, _ in labelled:
        by_stars.setdefault(str(int(float(r["rating"]))), Counter())[r["label"]] += 1
    return {
        "rated_rows": len(rated),
        "labelled_rows": len(labelled),
        "agreement": round(sum(r["label"] in want for r, want in labelled) / len(labelled), 3) if labelled else None,
        "baseline_positive": round(sum("positive" in want for _, want in rated) / len(rated), 3) if rated else None,
        "by_stars": {stars: dict(counts) for stars, counts in sorted(by_stars.items())},
    }


def run(job: Path, rows: int | None, workdir: Path) -> dict:
    source = workdir / "reviews.csv"
    if rows is not None:
        import pandas as pd

        pd.read_csv(SAMPLE).head(rows).to_csv(source, index=False)
    else:
        source.write_bytes(SAMPLE.read_bytes())
    output = workdir / "out.parquet"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(job), "--local", "--input", str(source),
         "--output", str(output), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    wall_s = time.monotonic() - started
    if result.returncode not in (0, 1):
        raise SystemExit(f"the run failed (exit {result.returncode}):\n{result.stderr}")
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())
    table = pq.read_table(output, columns=["rating", "status", "label"]).to_pylist()
    return {
        "job": str(job.relative_to(ROOT) if job.is_relative_to(ROOT) else job),
        "rows": len(table),
        "model": summary["model"],
        "rows_per_s": summary.get("rows_per_s"),
        "wall_s": round(wall_s, 1),
        "errors": sum(r["status"] == "error" for r in table),
        **agreement(table),
        "load_average": round(os.getloadavg()[0], 2),
        "cpus": len(os.sched_getaffinity(0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", type=Path, default=ROOT / "jobs" / "reviews-classify.toml")
    parser.add_argument("--rows", type=int, default=None, help="only the first N sample rows [all]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        print(json.dumps(run(args.job.resolve(), args.rows, Path(workdir)), indent=2))


if __name__ == "__main__":
    main()
