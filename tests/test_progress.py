"""Progress lines for cron: timestamped, counts, rate, cost, and the request/token rates against the limits."""

import io
import re

from pipeline.progress import Progress
from pipeline.records import Completion, RowResult, Usage, not_sent_result
from pipeline.summary import Tally

EPOCH = 1796094000.0  # 2026-12-01T03:00:00Z
OK = RowResult(status="ok", attempts=1, completion=Completion(
    ("x",), ("stop",), None, "m", "id", None, Usage(8, 2, 10, 0, 0)))


def make(tally, now, limits=lambda: ""):
    stream = io.StringIO()
    progress = Progress(tally, mode="log", stream=stream, clock=lambda: now[0], wall=lambda: EPOCH + now[0],
                        limits=limits)
    return progress, stream


def test_log_line_shows_rates_and_limits():
    now = [0.0]
    tally = Tally(rows_total=100)
    progress, stream = make(tally, now, limits=lambda: "limits rpm 600 (learned), tpm none")
    for _ in range(30):
        tally.add(OK)
    now[0], tally.requests_sent = 6.0, 30
    progress.refresh()
    line = stream.getvalue()
    assert "30/100 rows (30.0%)" in line and "5.0 rows/s" in line
    assert "rpm 300 tpm 3,000 (limits rpm 600 (learned), tpm none)" in line


def test_every_line_is_timestamped_in_utc():
    now = [0.0]
    tally = Tally(rows_total=2)
    progress, stream = make(tally, now)
    now[0] = 30.0
    progress.refresh()
    tally.add(OK)
    tally.add(OK)
    now[0] = 42.0
    progress.close("ok")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("2026-12-01T03:00:30Z chatbatch: ")
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ chatbatch: ", line) for line in lines)
    assert lines[-1] == ("2026-12-01T03:00:42Z chatbatch: ok: 2/2 rows done: ok 2, error 0, refused 0, "
                         "skipped 0, not sent 0 (0 from earlier runs, 0 requests sent)")


def test_a_stopped_run_counts_rows_not_sent_apart_and_says_it_stopped():
    now = [0.0]
    tally = Tally(rows_total=200)
    progress, stream = make(tally, now)
    tally.add(OK)
    tally.requests_sent = 1
    for _ in range(199):
        tally.add(not_sent_result("not sent: the run stopped (terminated (SIGTERM))"))
    now[0] = 5.0
    progress.close("stopped", "terminated (SIGTERM)")
    progress_line, last = stream.getvalue().splitlines()
    assert "1/200 rows (0.5%)" in progress_line and "errors 0" in progress_line
    assert "not sent 199" in progress_line
    assert last.endswith("chatbatch: stopped (terminated (SIGTERM)): 1/200 rows done: ok 1, error 0, "
                         "refused 0, skipped 0, not sent 199 (0 from earlier runs, 1 requests sent)")


def test_a_rerun_that_sends_nothing_reports_no_rate():
    now = [0.0]
    tally = Tally(rows_total=200)
    progress, stream = make(tally, now)
    for _ in range(200):
        tally.add(OK, resumed=True)  # replayed from the journal: billed by an earlier run
    now[0] = 0.02
    progress.close("ok")
    line = stream.getvalue().splitlines()[0]
    assert "200/200 rows (100.0%), 0.0 rows/s" in line
    assert "tokens 0," in line and "rpm 0 tpm 0" in line


def test_rpm_is_the_last_minute_not_a_short_burst():
    """A 450 rpm job whose limiter lets requests through in bursts: 258 then 192 per 30 s."""
    now = [0.0]
    tally = Tally(rows_total=10_000)
    progress, stream = make(tally, now)
    rpms = []
    for step, burst in enumerate([258, 192, 258, 192, 258], start=1):
        tally.requests_sent += burst
        now[0] = 30.0 * step
        progress.refresh()
        rpms.append(int(re.search(r"rpm ([\d,]+)", stream.getvalue().splitlines()[-1]).group(1).replace(",", "")))
    assert rpms[0] == 516  # under a minute old: over the time since the start
    assert rpms[1:] == [450, 450, 450, 450]  # then requests in the last minute, never one burst's rate
