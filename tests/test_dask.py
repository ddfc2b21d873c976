"""A job on a Dask cluster (pipeline/dask.py): 2 worker processes against the loopback fake server,
which enforces an RPM limit over a one-second window; output checked row by row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from decimal import Decimal

import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from conftest import REPO, SECRET_KEY  # noqa: E402
from pipeline.sinks import result_fields  # noqa: E402

RPM = 600  # 10 a second for the whole cluster
FILES, ROWS_PER_FILE = 4, 20


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as local, distributed.Client(local) as client:
        yield local, client


def text_of(row: int) -> str:
    if row % 17 == 3:
        return f"row {row} [[status:500:1]]"  # fails once, then succeeds
    if row == 10:
        return f"row {row} [[429:1]]"  # one 429: the whole cluster pauses
    return f"row {row}"


def write_lake(folder) -> None:
    folder.mkdir()
    for part in range(FILES):
        ids = list(range(part * ROWS_PER_FILE, (part + 1) * ROWS_PER_FILE))
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": [text_of(i) for i in ids]}),
                       folder / f"f{part}.parquet")


def run_args(tmp_path, fake, dask: str):
    return ("run", "--input", tmp_path / "lake", "--output", tmp_path / "out.parquet", "--template", "{text}",
            "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--rpm", RPM, "--concurrency", 4,
            "--backoff-base", 0.05, "--dask", dask)


def limited(fake) -> None:
    fake.rpm, fake.rpm_window_s, fake.latency_s = RPM, 1.0, 0.05


def check_output(tmp_path, resent: bool = False) -> None:
    out = tmp_path / "out.parquet"
    assert sorted(p.name for p in out.iterdir()) == [f"part.{i}.parquet" for i in range(FILES)]
    schema = pq.read_schema(out / "part.0.parquet")
    expected = [("id", pa.int64()), ("text", pa.string())] + [(f.name, f.type) for f in result_fields("", 1)]
    assert [(f.name, f.type) for f in schema] == expected  # the columns and types of a local run
    rows = sorted(ds.dataset(out).to_table().to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(FILES * ROWS_PER_FILE))
    for row in rows:
        assert row["text"] == text_of(row["id"])
        assert (row["status"], row["reply"]) == ("ok", "ECHO " + text_of(row["id"]))
        if not resent:  # (a faulty row sent again after a kill may pass at its first attempt)
            assert row["attempts"] == (2 if "[[" in row["text"] else 1)
        assert row["cost_usd"] > 0
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert (summary["rows"], summary["ok"], summary["error"], summary["partitions"]) == (80, 80, 0, FILES)
    assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))


def limit_429s(fake) -> list[dict]:
    """429s the server's own limit gave (not the one the [[429]] row asks for)."""
    return [r for r in fake.requests if r["status"] == 429 and "[[429" not in (r["prompt"] or "")]


def test_cli_on_a_local_cluster_of_two_stays_within_one_rate_limit(cli, fake, tmp_path):
    limited(fake)
    write_lake(tmp_path / "lake")
    proc = cli.run(*run_args(tmp_path, fake, "local:2"), timeout=240)
    assert proc.returncode == 0, proc.stderr
    check_output(tmp_path)
    assert "rows in" in proc.stderr  # the one progress line for the whole job
    # one limit for both workers: the server's own limit (10/s, a one-second bucket) was not hit
    # (two workers each pacing at the limit would send twice that, and get 429s by the dozen)
    assert len(limit_429s(fake)) <= 1
    sent = sorted(r["time"] for r in fake.requests if r["status"] == 200)
    steady = [t for t in sent if t >= sent[0] + 1.0]  # after the first second's bucket
    assert len(steady) - 1 <= 1.05 * RPM / 60 * (steady[-1] - steady[0]) + 2
    assert SECRET_KEY not in proc.stderr + proc.stdout


def test_enrich_is_lazy_with_meta_from_the_job(fake, cluster):
    from pipeline.dask import enrich

    frame = pd.DataFrame({"text": [f"line {i}" for i in range(10)]}, index=range(100, 110))
    lazy = enrich(dd.from_pandas(frame, npartitions=2), template="{text}", model="gpt-4o-mini",
                  base_url=fake.base_url, api_key=SECRET_KEY, rpm=6000)
    names = [f.name for f in result_fields("", 1)]
    assert list(lazy.columns) == ["text", *names]
    assert lazy.dtypes["status"] == pd.ArrowDtype(pa.string())
    assert fake.requests == []  # meta from the job: nothing sent to build the graph
    result = lazy.compute()
    assert list(result.index) == list(range(100, 110))
    assert list(result["reply"]) == [f"ECHO line {i}" for i in range(10)]
    assert set(result["status"]) == {"ok"}


def _limiter_workers(dask_scheduler) -> list[str]:
    return [ws.address for key, task in dask_scheduler.tasks.items() if "ClusterLimiter" in str(key)
            for ws in task.who_has]


def test_rerun_after_killing_a_worker_sends_every_row_once(cli, fake, tmp_path, cluster):
    local, client = cluster
    limited(fake)
    write_lake(tmp_path / "lake")
    process = cli.popen(*run_args(tmp_path, fake, local.scheduler_address))
    deadline = time.monotonic() + 120
    while len(fake.completed()) < 25 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    spared = set(client.run_on_scheduler(_limiter_workers))
    pids = client.run(os.getpid)
    victim = next(address for address in pids if address not in spared)
    os.kill(pids[victim], signal.SIGKILL)  # mid-partition: Dask runs its partition again elsewhere
    process.communicate(timeout=240)
    again = cli.run(*run_args(tmp_path, fake, local.scheduler_address), timeout=240)
    assert again.returncode == 0, again.stderr
    check_output(tmp_path, resent=True)
    sent = Counter(r["prompt"] for r in fake.completed())
    assert set(sent) == {text_of(i) for i in range(80)}
    resent = sum(count - 1 for count in sent.values())
    assert resent <= 4  # at most the killed worker's requests in flight (concurrency 4)


def test_a_fatal_error_in_one_partition_stops_them_all(cli, fake, tmp_path, cluster):
    local, _ = cluster
    limited(fake)
    lake = tmp_path / "lake"
    lake.mkdir()
    for part in range(FILES):
        ids = list(range(part * ROWS_PER_FILE, (part + 1) * ROWS_PER_FILE))
        texts = [f"row {i} [[auth]]" if part == 0 else f"row {i}" for i in ids]
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": texts}), lake / f"f{part}.parquet")
    proc = cli.run(*run_args(tmp_path, fake, local.scheduler_address), timeout=240)
    assert proc.returncode == 3, proc.stderr  # aborted: no retry can fix a refused key
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert summary["stopped_by"] == "auth_failed"
    rows = ds.dataset(tmp_path / "out.parquet").to_table().to_pylist()
    assert len(rows) == 80
    not_sent = [r for r in rows if r["error_type"] == "not_sent" and r["id"] >= ROWS_PER_FILE]
    assert not_sent  # the other partitions stopped too, well before their 60 rows at 10 a second
    assert len(fake.requests) < 60


# -- the cost cap: one for the whole cluster --------------------------------------------------
CAP = "0.00009"  # about half the 80 rows (each costs 4 × $0.15/1M + 2 × $0.60/1M = $0.0000018)


def write_plain_lake(folder, text=lambda row: f"row {row}") -> None:
    folder.mkdir()
    for part in range(FILES):
        ids = list(range(part * ROWS_PER_FILE, (part + 1) * ROWS_PER_FILE))
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": [text(i) for i in ids]}),
                       folder / f"f{part}.parquet")


def capped_args(tmp_path, fake, dask: str, cap: float):
    return ("run", "--input", tmp_path / "lake", "--output", tmp_path / "out.parquet", "--template", "{text}",
            "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--concurrency", 4,
            "--max-completion-tokens", 2, "--max-cost", cap, "--dask", dask)


def dataset_rows(tmp_path) -> list[dict]:
    return sorted(ds.dataset(tmp_path / "out.parquet").to_table().to_pylist(), key=lambda r: r["id"])


def test_the_cost_cap_is_one_for_the_whole_cluster_and_a_rerun_counts_what_was_spent(cli, fake, tmp_path, cluster):
    local, _ = cluster
    write_plain_lake(tmp_path / "lake")
    proc = cli.run(*capped_args(tmp_path, fake, local.scheduler_address, CAP), timeout=240)
    assert proc.returncode == 3, proc.stderr  # aborted by the cap, as a local run
    rows = dataset_rows(tmp_path)
    assert [r["id"] for r in rows] == list(range(80))  # every row once
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["status"], r["error_type"]) for r in rows if r["status"] != "ok"} == {("error", "not_sent")}
    assert 10 <= len(ok) <= 70, len(ok)  # it stopped about half way, not at once and not at the end
    assert len(fake.completed()) == len(ok)  # every paid reply is in the output
    assert sum(Decimal(str(r["cost_usd"])) for r in ok) <= Decimal(CAP)  # never past the cap
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    assert (summary["exit_code"], summary["stopped_by"]) == (3, "max_cost_reached")
    assert summary["stopped"].startswith(f"the cost cap of ${CAP} is reached")
    assert summary["max_cost_usd"] == float(CAP) and summary["ok"] == len(ok)
    assert "cost cap" in proc.stderr and "not_sent" in proc.stderr

    # a local run of the same rows and cap stops the same way
    pq.write_table(ds.dataset(tmp_path / "lake").to_table(), tmp_path / "all.parquet")
    local_run = cli.run("run", "--input", tmp_path / "all.parquet", "--output", tmp_path / "local.parquet",
                        "--template", "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url,
                        "--concurrency", 8, "--max-completion-tokens", 2, "--max-cost", CAP)
    local_summary = json.loads((tmp_path / "local.parquet.summary.json").read_text())
    assert local_run.returncode == 3 and local_summary["stopped_by"] == summary["stopped_by"]
    assert local_summary["stopped"].startswith(f"the cost cap of ${CAP} is reached")

    # a rerun with the same cap counts what the first run spent: the job as a whole stays within it
    fake.reset()
    again = cli.run(*capped_args(tmp_path, fake, local.scheduler_address, CAP), timeout=240)
    assert again.returncode == 3, again.stderr
    rows = dataset_rows(tmp_path)
    ok = [r for r in rows if r["status"] == "ok"]
    assert sum(Decimal(str(r["cost_usd"])) for r in ok) <= Decimal(CAP)
    assert len(fake.completed()) < 10  # only what the last few cents allowed
    # raised, the cap lets the rest through: each row sent once over the three runs
    sent_before = {r["text"] for r in ok}
    fake.reset()
    done = cli.run(*capped_args(tmp_path, fake, local.scheduler_address, 1), timeout=240)
    assert done.returncode == 0, done.stderr
    assert [(r["id"], r["status"]) for r in dataset_rows(tmp_path)] == [(i, "ok") for i in range(80)]
    resent = Counter(r["prompt"] for r in fake.completed())
    assert set(resent) == {f"row {i}" for i in range(80)} - sent_before and set(resent.values()) == {1}


def test_an_unknown_price_with_a_cost_cap_is_refused_before_anything_is_sent(cli, fake, tmp_path):
    write_plain_lake(tmp_path / "lake")
    args = list(capped_args(tmp_path, fake, "local:2", 1))
    args[args.index("gpt-4o-mini")] = "unpriced-model"
    proc = cli.run(*args)
    assert proc.returncode == 2, proc.stderr  # as a local run: a bad job, nothing sent
    assert "max_cost needs a known price for model 'unpriced-model'" in proc.stderr
    assert fake.requests == [] and not (tmp_path / "out.parquet").exists()


# -- a signal on the client -------------------------------------------------------------------
HANGING = {2, 22}  # rows that hang far beyond the grace on their first attempt only


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_worker_within_the_grace_and_a_rerun_sends_the_rest_once(signum, cli, fake, tmp_path,
                                                                                        cluster):
    fake.latency_s = 0.3
    hanging = {f"row {row} [[slow:60:1]]" for row in HANGING}
    write_plain_lake(tmp_path / "lake", lambda row: f"row {row} [[slow:60:1]]" if row in HANGING else f"row {row}")
    args = ("run", "--input", tmp_path / "lake", "--output", tmp_path / "out.parquet", "--template", "{text}",
            "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--concurrency", 2, "--timeout", 120,
            "--dask", "local:2")
    # its own process group: SIGINT goes to the whole group, workers too, as a terminal's Ctrl-C does
    process = subprocess.Popen(cli.command(*args), env=cli.env({"CHATBATCH_STOP_GRACE_S": "1"}), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (len(fake.completed()) >= 6 and {r["prompt"] for r in fake.requests if r["status"] is None} >= hanging) \
                and process.poll() is None and time.monotonic() < deadline:  # both hanging rows in flight
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)  # SIGTERM as cron or a service manager sends it: to the process
        signalled = time.monotonic()
        stdout, stderr = process.communicate(timeout=120)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert took < 1 + 30, f"exit took {took:.1f}s after the signal (grace 1 s)"
    rows = dataset_rows(tmp_path)
    assert [r["id"] for r in rows] == list(range(80))  # a readable dataset, every row once
    first = fake.completed()
    ok = {r["text"] for r in rows if r["status"] == "ok"}
    assert ok == {r["prompt"] for r in first}  # every answered row is kept
    assert {(r["status"], r["error_type"]) for r in rows if r["status"] != "ok"} == {("error", "not_sent")}
    assert all("cancelled" in r["error_message"] for r in rows if r["id"] in HANGING)  # after the grace
    summary = json.loads((tmp_path / "out.parquet.summary.json").read_text())
    reason = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (SIGINT)"
    assert (summary["exit_code"], summary["stopped"], summary["stopped_by"]) == (130, reason, None)
    assert summary["ok"] == len(ok) and summary["error"] == 80 - len(ok)

    fake.latency_s = 0.0
    sent_before = len(fake.requests)
    again = cli.run(*args[:-1], cluster[0].scheduler_address, timeout=240)  # (a running cluster: quicker)
    assert again.returncode == 0, again.stderr
    assert [(r["id"], r["status"]) for r in dataset_rows(tmp_path)] == [(i, "ok") for i in range(80)]
    resent = Counter(r["prompt"] for r in fake.requests[sent_before:])
    assert set(resent) == {r["text"] for r in rows if r["status"] != "ok"} and set(resent.values()) == {1}
