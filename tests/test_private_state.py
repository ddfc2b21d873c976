"""State is private and durable: modes under a permissive umask, exclusive temporary files, a
journal commit that fails is reported, WAL + synchronous=NORMAL, a Bloom filter sized for its rows."""

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from pipeline.bloom import DigestFilter
from pipeline.records import RowResult
from pipeline.sinks import ParquetSink, output_schema, write_text_atomically
from pipeline.state import StateError, open_state

PRINT = {"model": "gpt-4o-mini", "template": "t1", "input content": "abc"}
OK = RowResult(status="ok", attempts=1)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_with_umask(cli, umask: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", f'umask {umask} && exec "$@"', "sh", *cli.command(*args)],
                          env=cli.env(), cwd=REPO, capture_output=True, text=True, timeout=120)


def test_state_cache_and_journal_are_private_under_umask_000(cli, fake, tmp_path):
    pq.write_table(pa.table({"text": ["a", "b", "a"]}), tmp_path / "in.parquet")
    out = tmp_path / "out" / "result.parquet"
    proc = run_with_umask(cli, "000", "run", "--input", tmp_path / "in.parquet", "--output", out, "--template",
                          "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--cache",
                          "--tpm", "1000000", "--quiet")
    assert proc.returncode == 0, proc.stderr
    state, cache = tmp_path / "out" / "result.parquet.state", tmp_path / ".cache" / "chatbatch"
    assert mode(state) == 0o700 and mode(cache) == 0o700 and mode(cache / "tiktoken") == 0o700
    private_files = [p for folder in (state, cache) for p in folder.iterdir() if p.is_file()]
    assert {p.name for p in private_files} >= {"journal.sqlite", "lock", "responses.sqlite"}
    assert {p.name: mode(p) for p in private_files} == {p.name: 0o600 for p in private_files}
    # the output and its summary are ordinary files: the umask decides (000 -> rw for all)
    assert mode(out) == 0o666 and mode(out.with_name("result.parquet.summary.json")) == 0o666
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.parquet", "result.parquet.state",
                                                            "result.parquet.summary.json"]


def test_an_existing_journal_is_tightened_and_a_foreign_folder_left_alone(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    (folder / "journal.sqlite").touch(mode=0o644)
    os.chmod(folder / "journal.sqlite", 0o644)
    store = open_state(folder, PRINT)
    store.begin()
    store.close()
    assert mode(folder) == 0o755 and mode(folder / "journal.sqlite") == 0o600 and mode(folder / "lock") == 0o600


def test_temporary_files_are_created_exclusively_never_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.parquet"
    for name in (f".{out.name}.tmp-{os.getpid()}", f".out.parquet.summary.json.tmp-{os.getpid()}"):
        (tmp_path / name).symlink_to(victim)  # where a predictable temporary name would write
    schema = output_schema(pa.schema([("text", pa.string())]), "", 1)
    sink = ParquetSink(out, schema, 1)
    assert sink.tmp_path.name.startswith(f".{out.name}.tmp-{os.getpid()}-") and not sink.tmp_path.is_symlink()
    sink.write(pa.record_batch([pa.array(["a"])], names=["text"]), [OK])
    sink.commit({})
    write_text_atomically(tmp_path / "out.parquet.summary.json", "{}\n")
    assert victim.read_text() == "precious"
    assert pq.read_table(out).column("text").to_pylist() == ["a"]
    assert (tmp_path / "out.parquet.summary.json").read_text() == "{}\n"


def test_output_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_text_atomically(tmp_path / "s.json", "{}")
    finally:
        os.umask(old)
    assert mode(tmp_path / "s.json") == 0o640


def test_journal_uses_wal_with_synchronous_normal(tmp_path):
    store = open_state(tmp_path / "s", PRINT)
    store.begin()
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] >= 1  # NORMAL (1) or FULL (2)
    store.close()
    with sqlite3.connect(tmp_path / "s" / "journal.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def fail_inserts_from(journal: Path, idx: int) -> None:
    """Make the journal refuse rows from ``idx`` on, as a full disk would (a real SQLite error)."""
    with sqlite3.connect(journal) as db:
        db.execute(f"CREATE TRIGGER full_disk BEFORE INSERT ON rows WHEN NEW.idx >= {idx} "
                   "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")


def test_a_failed_commit_is_raised_by_committed_even_after_it_was_consumed(tmp_path):
    store = open_state(tmp_path / "s", PRINT)
    store.begin()
    fail_inserts_from(tmp_path / "s" / "journal.sqlite", 1)

    async def go():
        store.record(0, b"a" * 16, OK)
        await store.committed()
        store.record(1, b"b" * 16, OK)
        store.record(2, b"c" * 16, OK)
        await asyncio.sleep(0)  # the group commit runs (and fails) with nobody awaiting it
        await asyncio.sleep(0)
        with pytest.raises(StateError, match="2 answered rows are not journaled"):
            await store.committed()
        with pytest.raises(StateError):
            await store.committed()  # sticky: never reported as saved later
    asyncio.run(go())
    assert store.rows_done() == 1
    store._db.execute("DROP TRIGGER full_disk")
    store.close()


def test_a_failed_last_commit_fails_the_run_and_keeps_the_output(cli, fake, tmp_path):
    """The last group commit of a run is awaited by no worker: its failure must still be reported."""
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(5)]}), tmp_path / "in.parquet")
    state = tmp_path / "state"
    open_state(state, PRINT).close()
    fail_inserts_from(state / "journal.sqlite", 4)
    args = ["--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet", "--template", "{text}",
            "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--state-dir", state, "--concurrency", "1",
            "--quiet"]
    proc = cli.run("run", *args)
    assert proc.returncode == 3, proc.stderr
    assert "cannot write the resume journal" in proc.stderr and "1 answered rows are not journaled" in proc.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 5  # every answered (and paid) row is in the output
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["stopped_by"] == "journal_failed" and summary["exit_code"] == 3
    with sqlite3.connect(state / "journal.sqlite") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'complete'").fetchone()[0] == "false"
        assert db.execute("SELECT count(*) FROM rows").fetchone()[0] == 4
        db.execute("DROP TRIGGER full_disk")
    fake.reset()
    again = cli.run("run", *args)
    assert again.returncode == 0, again.stderr
    assert [r["prompt"] for r in fake.requests] == ["row 4"]  # only the row the journal lacked


def test_the_bloom_filter_is_sized_for_its_rows():
    rows = 200_000
    members = [os.urandom(16) for _ in range(rows)]
    seen = DigestFilter(rows)
    seen.add_all(members[: rows // 2])
    for digest in members[rows // 2:]:
        seen.add(digest)
    assert all(digest in seen for digest in members)
    strangers = [os.urandom(16) for _ in range(50_000)]
    false_positives = sum(digest in seen for digest in strangers) / len(strangers)
    assert false_positives < 0.01
    assert seen.bits <= 32 * rows  # memory stays proportional: at most 4 bytes a row


def test_a_resumed_store_sizes_its_filter_from_the_rows(tmp_path):
    store = open_state(tmp_path / "s", PRINT)
    store.begin(expected_rows=3_000_000)
    assert store._seen.bits >= 3_000_000 * 8
    store.close()
