"""The run report: ``chatbatch report``, ``run --report``, the page's sections and figures, and the
per-row ``finished_at`` column it charts. Jobs run through the real CLI against tests/fakeapi.py; the
page is parsed with the standard library's ``html.parser``."""

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from conftest import REPO, SECRET_KEY, make_cli
from fakeapi import FakeOpenAI
from pipeline.cli import main
from pipeline.records import RowResult, result_from_json, result_to_json

pytest.importorskip("matplotlib")

SCRIPT_LABEL = "<script>alert(1)</script>"
LABELS = ["positive", "negative", "neutral", SCRIPT_LABEL]
ANSWERS = {"good mug": "positive", "great": "positive", "lovely": "positive", "broken": "negative",
           "meh": "neutral", "evil": SCRIPT_LABEL, "weird": "delighted"}
REVIEWS = [*ANSWERS, "[[status:500]] down", "[[429:1]] busy", ""]
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source", "track", "param", "embed"}


class Page(HTMLParser):
    """What a test reads from the page: sections (by id) with their tables, headline cards and
    charts; every tag's attributes; and a strict nesting check (the page parses as HTML)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, dict] = {}
        self.attributes: list[tuple[str, str, str]] = []
        self.tags: Counter = Counter()
        self._open: list[str] = []
        self._section: dict | None = None
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._term: str | None = None
        self.feed(text)
        self.close()
        assert not self._open, f"unclosed: {self._open}"

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        if tag not in VOID:
            self._open.append(tag)
        if tag == "section":
            self._section = self.sections[dict(attrs)["id"]] = {"tables": [], "cards": {}, "svgs": 0, "h3": []}
        elif tag == "table":
            self._section["tables"].append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th", "dt", "dd", "h3"):
            self._cell = []
        elif tag == "svg" and self._section is not None:
            self._section["svgs"] += 1

    def handle_startendtag(self, tag, attrs):
        self.tags[tag] += 1
        self.attributes += [(tag, name, value or "") for name, value in attrs]

    def handle_endtag(self, tag):
        assert self._open and self._open[-1] == tag, f"</{tag}> closes <{self._open[-1] if self._open else None}>"
        self._open.pop()
        text = "".join(self._cell).strip() if self._cell is not None else None
        if tag in ("td", "th"):
            self._row.append(text)
        elif tag == "tr":
            self._section["tables"][-1].append(self._row)
        elif tag == "dt":
            self._term = text
        elif tag == "dd":
            self._section["cards"][self._term] = text
        elif tag == "h3":
            self._section["h3"].append(text)
        elif tag == "section":
            self._section = None
        if tag in ("td", "th", "dt", "dd", "h3"):
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def table(self, section: str, index: int = 0) -> dict[str, list[str]]:
        """A table of a section as {first cell: the other cells} (its header row included)."""
        return {row[0]: row[1:] for row in self.sections[section]["tables"][index]}


def assert_self_contained(text: str, page: Page) -> None:
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "@import" not in text and "@font-face" not in text
    assert page.tags["script"] == 0 and page.tags["img"] == 0 and page.tags["link"] == 0
    for tag, name, value in page.attributes:
        if name in ("src", "href", "xlink:href", "action", "srcset") or name.startswith("on"):
            assert name.endswith("href") and value.startswith("#"), (tag, name, value)  # in-page references only
    assert "url(" not in text.replace("url(#", "")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert "@media print" in text


def classify_reply(body):
    text = body["messages"][-1]["content"]
    return json.dumps({"label": ANSWERS.get(text, "positive")})


def run_classification(cli, fake, folder: Path, *extra):
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": list(range(len(REVIEWS))), "review": REVIEWS}), folder / "in.parquet")
    fake.reply = classify_reply
    return cli.run("run", "--input", folder / "in.parquet", "--output", folder / "out.parquet", "--template",
                   "{review}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--backoff-base", "0",
                   "--max-attempts", "2", "--validation-retries", "0", "--labels", ",".join(LABELS), "--logprobs",
                   *extra)


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """One classification run with --report: (the process, its output, the page's text, before, after)."""
    folder = tmp_path_factory.mktemp("classified")
    with FakeOpenAI(api_key=SECRET_KEY) as fake:
        before = time.time()
        proc = run_classification(make_cli(folder / ".cache"), fake, folder, "--report")
        after = time.time()
    out = folder / "out.parquet"
    return proc, out, Path(f"{out}.report.html").read_text(encoding="utf-8"), before, after


def test_run_report_writes_every_section_of_a_classification(classified):
    proc, out, text, _, _ = classified
    assert proc.returncode == 1, proc.stderr  # an invalid label and a 500: the run's own exit code
    assert f"report: {out}.report.html" in proc.stdout
    page = Page(text)
    assert_self_contained(text, page)
    assert list(page.sections) == ["headline", "labels", "errors", "latency", "tokens", "timeline"]
    table = pq.read_table(out)
    summary = json.loads(Path(f"{out}.summary.json").read_text())

    cards = page.sections["headline"]["cards"]
    assert {k: cards[k] for k in ("rows", "ok", "error", "skipped", "refused", "429s", "retries")} == {
        "rows": "10", "ok": "7", "error": "2", "skipped": "1", "refused": "0", "429s": "1",
        "retries": str(summary["retries"])}
    assert cards["model"] == "gpt-4o-mini" and cards["input"] == summary["input"]
    assert cards["date"] == summary["date"] and cards["finished"] == summary["finished_at"]
    assert cards["cost"] == f"${summary['cost_usd']:.6f}".rstrip("0")
    assert cards["tokens"] == f"{summary['total_tokens']:,}"

    labels = page.table("labels")
    expected = Counter(v for v in table.column("label").to_pylist() if v is not None)
    assert {k: int(v[0]) for k, v in labels.items() if k not in ("label", "(none)")} == dict(expected)
    assert expected == {"positive": 4, "negative": 1, "neutral": 1, SCRIPT_LABEL: 1}
    assert labels["(none)"][0] == "3"
    assert page.sections["labels"]["h3"] == ["label_confidence"]
    assert page.sections["labels"]["svgs"] == 2  # the labels' bars and the confidence histogram

    errors = page.table("errors")
    assert {k: v[0] for k, v in errors.items() if k != "error_type"} == {"server_error": "1", "invalid_output": "1"}
    assert "injected 500" in errors["server_error"][1] and "delighted" in errors["invalid_output"][1]

    latency = table.column("latency_s").drop_null().to_numpy()
    assert page.table("latency") == {"percentile": ["seconds"], **{
        f"p{p}": [f"{np.percentile(latency, p):,.3f}"] for p in (50, 95, 99)}}
    assert page.sections["tokens"]["h3"] == ["prompt tokens", "completion tokens"]
    assert page.table("tokens")["rows"] == [str(len(table.column("prompt_tokens").drop_null()))]
    assert page.sections["timeline"]["svgs"] == 1


def test_data_is_escaped_never_markup(classified):
    _, _, text, _, _ = classified
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the label, in the table and the chart
    assert SCRIPT_LABEL not in text
    assert SCRIPT_LABEL in Page(text).table("labels")


def test_finished_at_is_a_utc_timestamp_of_every_row_sent(classified):
    _, out, _, before, after = classified
    table = pq.read_table(out)
    assert table.schema.field("finished_at").type == pa.timestamp("ms", tz="UTC")
    rows = table.to_pylist()
    for row in rows:
        if row["status"] == "skipped":
            assert row["finished_at"] is None  # no request, no finish time
        else:
            assert row["finished_at"].utcoffset() == timedelta(0)
            assert before - 1 <= row["finished_at"].timestamp() <= after + 1
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert sum(summary["this_run"]["rate_limited_429_at"].values()) == summary["rate_limited_429"] == 1


def test_a_resumed_run_keeps_the_finish_times_of_journaled_rows(cli, fake, tmp_path):
    assert run_classification(cli, fake, tmp_path).returncode == 1
    first = pq.read_table(tmp_path / "out.parquet").to_pylist()
    fake.reset()
    again = run_classification(cli, fake, tmp_path)
    sent = [entry["prompt"] for entry in fake.requests]
    assert again.returncode == 1, again.stderr
    assert sent == ["[[status:500]] down"] * 2  # the transient failure is sent again, nothing else
    second = pq.read_table(tmp_path / "out.parquet").to_pylist()
    for before, after in zip(first, second):
        if before["review"] == "[[status:500]] down":
            assert after["finished_at"] > before["finished_at"]
        else:
            assert after["finished_at"] == before["finished_at"]  # from the journal, as the row finished


def test_journal_lines_keep_finished_at_and_older_lines_still_read():
    result = RowResult(status="ok", attempts=1, finished_at=1764567890.123)
    assert result_from_json(result_to_json(result)) == result
    older = json.dumps(["ok", 1, None, None, None, 200, "0.1", 0.5, False, None])  # before finished_at
    assert result_from_json(older).finished_at is None and result_from_json(older).cost_usd is not None


def test_extraction_report_charts_every_typed_column(cli, fake, tmp_path):
    schema = {"type": "object", "additionalProperties": False,
              "required": ["category", "stars", "price", "recommend", "tags"],
              "properties": {"category": {"type": "string", "enum": ["kitchen", "garden", "toys"]},
                             "stars": {"type": "integer"}, "price": {"type": ["number", "null"]},
                             "recommend": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}}}}
    items = [{"category": c, "stars": s, "price": p, "recommend": r, "tags": ["x"]} for c, s, p, r in
             [("kitchen", 5, 19.5, True), ("kitchen", 4, 7.25, True), ("garden", 1, None, False),
              ("toys", 3, 12.0, True), ("kitchen", 2, 30.0, False)]]
    fake.reply = lambda body: json.dumps(items[int(body["messages"][-1]["content"].split()[-1])])
    pq.write_table(pa.table({"text": [f"review {i}" for i in range(len(items))]}), tmp_path / "in.parquet")
    (tmp_path / "job.toml").write_text(
        f'input = "in.parquet"\noutput = "extracted.parquet"\nmodel = "gpt-4o-mini"\ntemplate = "{{text}}"\n'
        f'base_url = "{fake.base_url}"\nreport = true\noutput_schema = \'{json.dumps(schema)}\'\n')
    proc = cli.run("run", tmp_path / "job.toml")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "extracted.parquet"
    text = Path(f"{out}.report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert_self_contained(text, page)
    assert list(page.sections) == ["headline", "columns", "errors", "latency", "tokens", "timeline"]
    assert page.sections["headline"]["cards"]["job"] == "job"  # the job file's name
    columns = page.sections["columns"]
    assert columns["h3"] == ["category", "stars", "price", "recommend", "tags"]
    assert columns["svgs"] == 4  # tags (a list) is not charted, and says so
    assert "not charted" in text
    table = pq.read_table(out)
    category, stars, price, recommend = (page.table("columns", i) for i in range(4))
    assert {k: int(v[0]) for k, v in category.items() if k != "category"} == \
        dict(Counter(table.column("category").to_pylist()))
    assert {k: int(v[0]) for k, v in recommend.items() if k != "recommend"} == {"true": 3, "false": 2}
    assert stars["rows"] == ["5"] and stars["min"] == ["1"] and stars["max"] == ["5"] and stars["median"] == ["3"]
    assert price["rows"] == ["4"] and price["mean"] == [f"{pc.mean(table.column('price')).as_py():,.4g}"]
    assert page.sections["errors"]["tables"] == []  # "No errors."


def test_report_command_on_an_existing_output_with_compare(classified, cli, fake, tmp_path):
    _, today, _, _, _ = classified
    answers = dict(ANSWERS, great="negative", lovely="negative", weird="neutral")
    fake.reply = lambda body: json.dumps({"label": answers.get(body["messages"][-1]["content"], "positive")})
    pq.write_table(pa.table({"id": list(range(len(REVIEWS))), "review": REVIEWS}), tmp_path / "in.parquet")
    yesterday = tmp_path / "yesterday.parquet"
    proc = cli.run("run", "--input", tmp_path / "in.parquet", "--output", yesterday, "--template", "{review}",
                   "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--backoff-base", "0", "--max-attempts",
                   "2", "--labels", ",".join(LABELS), "--quiet")
    assert proc.returncode == 1, proc.stderr
    html_path = tmp_path / "page.html"
    proc = cli.run("report", today, "-o", html_path, "--compare", yesterday)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"report: {html_path}"
    text = html_path.read_text(encoding="utf-8")
    page = Page(text)
    assert_self_contained(text, page)
    assert list(page.sections) == ["headline", "compare", "labels", "errors", "latency", "tokens", "timeline"]
    compare = page.table("compare")
    # yesterday: positive 2, negative 3, neutral 2, <script> 1 of 8 labelled; today 4, 1, 1, 1 of 7
    assert compare["share: positive"][:2] == ["25.0%", "57.1%"]
    assert compare["share: negative"][:2] == ["37.5%", "14.3%"]
    assert compare[f"share: {SCRIPT_LABEL}"][:2] == ["12.5%", "14.3%"]
    assert compare["error rate"] == ["10.0%", "20.0%", "+10.0 pts"]  # one error of 10 rows yesterday, two today
    summaries = [json.loads(Path(f"{p}.summary.json").read_text()) for p in (yesterday, today)]
    assert compare["cost (USD)"][:2] == [f"${s['cost_usd']:.6f}".rstrip("0") for s in summaries]
    assert page.sections["compare"]["svgs"] == 1


def test_report_of_a_file_chatbatch_did_not_write_is_a_clear_error(cli, tmp_path):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "plain.parquet")
    proc = cli.run("report", tmp_path / "plain.parquet")
    assert proc.returncode == 2 and "holds no chatbatch summary" in proc.stderr
    assert not (tmp_path / "plain.parquet.report.html").exists()


def test_a_report_that_cannot_be_written_keeps_the_run_and_its_exit_code(cli, fake, tmp_path):
    (tmp_path / "in.csv").write_text("text\nhello\n")
    (tmp_path / "out.parquet.report.html").mkdir()  # the page cannot take its place
    proc = cli.run("run", "--input", tmp_path / "in.csv", "--output", tmp_path / "out.parquet", "--template",
                   "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--report")
    assert proc.returncode == 0, proc.stderr
    assert "the report could not be written" in proc.stderr and "chatbatch report" in proc.stderr
    assert pq.read_table(tmp_path / "out.parquet").column("status").to_pylist() == ["ok"]
    assert "Traceback" not in proc.stderr


def test_without_the_report_extra_the_run_is_kept_and_the_error_says_what_to_install(cli, fake, tmp_path):
    stub = tmp_path / "stub" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named matplotlib (a test stub)')\n")
    env = {"PYTHONPATH": str(stub.parent)}
    (tmp_path / "in.csv").write_text("text\nhello\n")
    proc = cli.run("run", "--input", tmp_path / "in.csv", "--output", tmp_path / "out.parquet", "--template",
                   "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--report", env=env)
    assert proc.returncode == 0 and "pip install 'chatbatch[report]'" in proc.stderr
    assert (tmp_path / "out.parquet").exists()
    proc = cli.run("report", tmp_path / "out.parquet", env=env)
    assert proc.returncode == 2 and "pip install 'chatbatch[report]'" in proc.stderr


def test_an_ordinary_run_never_imports_matplotlib(cli, fake, tmp_path):
    (tmp_path / "in.csv").write_text("text\nhello\n")
    command = [sys.executable, "-X", "importtime", "-m", "pipeline", "run", "--input", tmp_path / "in.csv",
               "--output", tmp_path / "out.parquet", "--template", "{text}", "--model", "gpt-4o-mini",
               "--base-url", fake.base_url, "--quiet"]
    proc = subprocess.run(command, env=cli.env(), cwd=Path(__file__).parent.parent, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pipeline.run" in proc.stderr  # -X importtime lists every module imported, lazily or not
    assert "matplotlib" not in proc.stderr and "pipeline.charts" not in proc.stderr
    code = "import sys, pipeline, pipeline.cli, pipeline.report; print([m for m in sys.modules if 'matplotlib' in m])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_the_headline_shows_what_a_local_run_would_have_cost_on_the_api(classified, tmp_path):
    _, out, _, _, _ = classified
    table = pq.read_table(out)
    summary = json.loads(table.schema.metadata[b"chatbatch.summary"])
    summary.update(cost_usd=0.0, local=True,
                   api_equivalent={"model": "gpt-4o-mini", "cost_usd": 0.0123, "prompt_tokens": 1, "completion_tokens": 1})
    local = tmp_path / "local.parquet"
    pq.write_table(table.replace_schema_metadata({b"chatbatch.summary": json.dumps(summary).encode()}), local)
    assert CliRunner().invoke(main, ["report", str(local)]).exit_code == 0
    cards = Page(Path(f"{local}.report.html").read_text()).sections["headline"]["cards"]
    assert cards["cost"] == "$0" and cards["on the API (gpt-4o-mini)"] == "$0.0123"


def test_report_is_refused_with_dask_before_anything_runs(tmp_path):
    (tmp_path / "in.parquet").write_bytes(b"")
    result = CliRunner().invoke(main, ["run", "--input", str(tmp_path / "in.parquet"), "--model", "m",
                                       "--template", "{a}", "--dask", "local:1", "--report"],
                                env={"OPENAI_API_KEY": "sk-test-x"})
    assert result.exit_code == 2 and "--report" in result.output and "--dask" in result.output


def test_a_run_stopped_by_the_cost_cap_reports_what_was_done(cli, fake, tmp_path):
    (tmp_path / "in.csv").write_text("text\n" + "".join(f"row {i}\n" for i in range(5)))
    proc = cli.run("run", "--input", tmp_path / "in.csv", "--output", tmp_path / "out.parquet", "--template",
                   "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--max-cost", "0.0000001",
                   "--max-completion-tokens", "10", "--report")
    assert proc.returncode == 3, proc.stderr  # the cap's exit code, report or not
    assert f"report: {tmp_path / 'out.parquet'}.report.html" in proc.stdout
    text = (tmp_path / "out.parquet.report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert_self_contained(text, page)
    cards = page.sections["headline"]["cards"]
    assert cards["not sent"] == "5" and cards["ok"] == "0" and cards["exit code"] == "3"
    assert "cost cap" in text or "max_cost" in text  # why it stopped
    assert page.table("errors")["not_sent"][0] == "5"
    assert "No row has a finish time" in text and "No request was timed" in text


def test_batch_collect_writes_the_report(cli, fake, tmp_path):
    pq.write_table(pa.table({"text": ["one", "two", "three [[status:400]]"]}), tmp_path / "in.parquet")
    flags = ["--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet", "--template", "{text}",
             "--model", "gpt-4o-mini", "--base-url", fake.base_url]
    assert cli.run("batch", "submit", *flags).returncode == 0
    proc = cli.run("batch", "collect", *flags, "--wait", "--poll-interval", "0.01", "--report")
    assert proc.returncode == 1, proc.stderr
    assert f"report: {tmp_path / 'out.parquet'}.report.html" in proc.stdout
    text = (tmp_path / "out.parquet.report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections["headline"]["cards"]["ok"] == "2"
    failed = pq.read_table(tmp_path / "out.parquet").column("error_type").drop_null().to_pylist()
    assert {k: v[0] for k, v in page.table("errors").items() if k != "error_type"} == {failed[0]: "1"}
    assert "No row has a finish time" in text  # Batch API rows have none


def test_the_headline_date_is_the_jobs_date_and_json_logs_name_the_report(cli, fake, tmp_path):
    (tmp_path / "in.csv").write_text("text\nhello\n")
    proc = cli.run("run", "--input", tmp_path / "in.csv", "--output", tmp_path / "out-{date}.parquet", "--template",
                   "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--report", "--date",
                   "2026-11-30", "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out-2026-11-30.parquet"
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["report"] for line in lines if line["event"] == "report"] == [f"{out}.report.html"]
    cards = Page(Path(f"{out}.report.html").read_text()).sections["headline"]["cards"]
    assert cards["date"] == "2026-11-30" and cards["finished"].startswith("20")


def write_report_job(tmp_path, fake) -> Path:
    (tmp_path / "in.csv").write_text("text\nhello\nbad [[status:422]]\n")
    job = tmp_path / "job.toml"
    job.write_text(f'input = "in.csv"\noutput = "out.parquet"\nmodel = "gpt-4o-mini"\ntemplate = "{{text}}"\n'
                   f'base_url = "{fake.base_url}"\nreport = true\n')
    return job


def test_the_python_api_writes_the_report_beside_the_output_when_the_job_says_report(fake, tmp_path, monkeypatch):
    from pipeline.api import Job

    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    report = Job.from_toml(write_report_job(tmp_path, fake), progress=False).run()
    assert report.exit_code == 1 and report.output_path == tmp_path / "out.parquet"
    page = (tmp_path / "out.parquet.report.html").read_text()
    assert "invalid_request" in page and SECRET_KEY not in page  # the errors section, of this run


def test_the_python_api_without_the_report_extra_keeps_the_run_and_warns_what_to_install(cli, fake, tmp_path):
    stub = tmp_path / "stub" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named matplotlib (a test stub)')\n")
    code = ("import sys, warnings\nfrom pipeline.api import ChatbatchWarning, Job\n"
            "with warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n"
            "    report = Job.from_toml(sys.argv[1], progress=False).run()\n"
            "print(report.exit_code)\nprint('|'.join(str(w.message) for w in caught if w.category is ChatbatchWarning))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(write_report_job(tmp_path, fake))], cwd=REPO,
                          env=cli.env({"PYTHONPATH": str(stub.parent)}), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1\nthe report could not be written: the report needs the report extra: "
                                  "pip install 'chatbatch[report]'"), proc.stdout
    assert pq.read_table(tmp_path / "out.parquet").column("status").to_pylist() == ["ok", "error"]
    assert not (tmp_path / "out.parquet.report.html").exists()
