"""Resume start-up with a large journal, and the journal filter's false-positive rate.

For each size N (``--sizes``, default 1M and 10M journaled ok rows) it builds a journal the way a run
leaves it (the real schema, 16-byte request digests, a typical ok result per row; kept in
``--workdir`` between runs), then, in a fresh child process pinned to ``--cpu``:

* times what a resumed run does before its first request: ``open_state`` (lock, fingerprint) and
  ``begin`` (count the rows, size the filter and fill it from the digest index);
* reports the child's peak RSS and the filter's size;
* looks up 200,000 digests the journal does not hold: the share the filter answers "maybe" for
  (each one costs a query) and the time per lookup through ``find_reply``;
* computes the same share for the filter chatbatch used before (fixed 16M bits, 2 probes) holding
  the same digests.

    python bench/resume_startup.py [--sizes 1000000,10000000] [--workdir /var/tmp/chatbatch-resume]

Building the 10M journal takes a few minutes and about 2.5 GB of disk; it is reused on later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

FINGERPRINT = {"model": "gpt-4o-mini", "endpoint": "bench", "input content": "bench"}
RESULT = ('["ok",1,[["positive"],["stop"],null,"gpt-4o-mini-2024-07-18","chatcmpl-AbCdEfGhIjKlMnOpQrStUv",'
          '"fp_0123456789",200,[41,1,42,0,0]],null,null,200,"0.0000066",0.412,false,null]')
OLD_BITS = 1 << 24
STRANGERS = 200_000


def digest(i: int) -> bytes:
    import hashlib
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()


def build(folder: Path, rows: int) -> None:
    """A journal of ``rows`` ok rows, as a run leaves it (unfinished, so a rerun resumes)."""
    from pipeline.state import open_state

    if (folder / "built").exists():
        return
    store = open_state(folder, FINGERPRINT, fresh=True)
    store.begin()
    store.close()
    started = time.monotonic()
    with sqlite3.connect(folder / "journal.sqlite") as db:
        db.execute("PRAGMA synchronous=OFF")
        for start in range(0, rows, 200_000):
            db.executemany("INSERT INTO rows VALUES (?, 'ok', ?, ?)",
                           ((i, digest(i), RESULT) for i in range(start, min(rows, start + 200_000))))
            db.commit()
    (folder / "built").write_text(str(rows))
    print(f"  built {rows:,} rows in {time.monotonic() - started:.0f}s "
          f"({(folder / 'journal.sqlite').stat().st_size / 1e9:.2f} GB)", flush=True)


def measure(folder: Path, rows: int) -> dict:
    """In this (fresh) process: resume start-up, peak RSS, the filter's false positives."""
    import numpy as np

    from pipeline.state import open_state

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    store = open_state(folder, FINGERPRINT)
    assert store.resumed
    store.begin(expected_rows=rows)
    startup_s = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    strangers = [digest(rows + i) for i in range(STRANGERS)]
    maybe = sum(d in store._seen for d in strangers) / STRANGERS
    started = time.perf_counter()
    found = sum(store.find_reply(d) is not None for d in strangers)
    lookup_us = (time.perf_counter() - started) / STRANGERS * 1e6
    assert found == 0 and store.find_reply(digest(0)) is not None
    filter_mib = store._seen.bits / 8 / 2**20
    store.close()
    old = np.zeros(OLD_BITS // 8, dtype=np.uint8)  # the fixed filter: 16M bits, bytes 0-3 and 4-7
    for start in range(0, rows, 1_000_000):
        words = np.frombuffer(b"".join(digest(i) for i in range(start, min(rows, start + 1_000_000))),
                              dtype="<u4").reshape(-1, 4)[:, :2] & np.uint32(OLD_BITS - 1)
        np.bitwise_or.at(old, words.ravel() >> 3, np.uint8(1) << (words.ravel() & 7).astype(np.uint8))
    probes = np.frombuffer(b"".join(strangers), dtype="<u4").reshape(-1, 4)[:, :2] & np.uint32(OLD_BITS - 1)
    old_maybe = float(np.all(old[probes >> 3] & (np.uint8(1) << (probes & 7).astype(np.uint8)), axis=1).mean())
    return {"rows": rows, "startup_s": round(startup_s, 2), "rss_mb_before": round(rss_before),
            "rss_mb_peak": round(rss_after), "filter_mib": filter_mib, "maybe_share": maybe,
            "old_filter_maybe_share": old_maybe, "find_reply_us": round(lookup_us, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--workdir", default="/var/tmp/chatbatch-resume-bench")
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), int(args.measure[1]))))
        return
    results = []
    for rows in (int(n) for n in args.sizes.split(",")):
        folder = Path(args.workdir) / f"state-{rows}"
        print(f"{rows:,} journaled rows", flush=True)
        build(folder, rows)
        child = subprocess.run(["taskset", "-c", str(args.cpu), sys.executable, __file__, "--measure", str(folder),
                                str(rows)], capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"  resume start-up {result['startup_s']:.2f}s, peak RSS {result['rss_mb_peak']} MB "
              f"(filter {result['filter_mib']:.0f} MiB); filter says 'maybe' for "
              f"{result['maybe_share']:.2%} of new requests (the old fixed filter: "
              f"{result['old_filter_maybe_share']:.1%}); find_reply {result['find_reply_us']} µs", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
