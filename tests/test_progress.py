"""Progress lines for cron: counts, rate, cost, and the request/token rates against the limits."""

import io

from pipeline.progress import Progress
from pipeline.records import Completion, RowResult, Usage
from pipeline.summary import Tally


def test_log_line_shows_rates_and_limits():
    now = [0.0]
    sent = [0]
    tally = Tally(rows_total=100)
    stream = io.StringIO()
    progress = Progress(tally, mode="log", stream=stream, clock=lambda: now[0],
                        requests_sent=lambda: sent[0], limits=lambda: "limits rpm 600 (learned), tpm none")
    for _ in range(30):
        tally.add(RowResult(status="ok", attempts=1, completion=Completion(
            ("x",), ("stop",), None, "m", "id", None, Usage(8, 2, 10, 0, 0))))
    now[0], sent[0] = 6.0, 30
    progress.refresh()
    line = stream.getvalue()
    assert "30/100 rows (30.0%)" in line and "5.0 rows/s" in line
    assert "rpm 300 tpm 3,000 (limits rpm 600 (learned), tpm none)" in line
