"""The run report page: one self-contained HTML file of a run's figures and charts.

``chatbatch report OUT.parquet`` and ``chatbatch run --report`` call :func:`write_report`::

    path = write_report(Path("out/reviews.parquet"), compare_with=Path("out/yesterday.parquet"))
    # -> out/reviews.parquet.report.html

The figures come from :mod:`pipeline.report`, the charts from :mod:`pipeline.charts` (matplotlib:
the ``report`` extra; importing this module imports it). The page is ``data/report.html`` filled
with :class:`string.Template` — the standard library's, so the report needs no template engine
beside matplotlib; the page has a handful of placeholders and no logic, which is all a template
needs here. Sections are built below from small templates, every value that comes from data
(labels, column values, error messages, paths, model names) HTML-escaped on the way in.

The page opens offline and anywhere: charts are inline SVG, styles inline, no script, no font or
image or link to fetch; it scales to a phone (viewport meta, a single column on narrow screens)
and prints (print styles keep each chart on one page). It holds the sections ``headline``,
``compare`` (with a previous output), ``labels`` (classification), ``columns`` (extraction),
``errors``, ``latency``, ``tokens`` and ``timeline``; every chart has its numbers beside it in a
table. The whole page is redacted with the caller's secrets before it is written.
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from string import Template
from typing import Iterable, Sequence

from . import __version__, charts
from .errors import OutputError
from .redaction import redact
from .report import (Comparison, Counts, ErrorGroup, Figures, Histogram, NotCharted, Timeline, compare,
                     read_figures)
from .sinks import write_text_atomically

REPORT_SUFFIX = ".report.html"
SECTION = Template('<section id="$id">\n<h2>$title</h2>\n$body\n</section>')
FIGURE = Template('<figure>$svg<figcaption class="note">$caption</figcaption></figure>')


def default_path(output: Path) -> Path:
    """Where a run's report goes: ``<output>.report.html``."""
    return output.with_name(output.name + REPORT_SUFFIX)


def write_report(output: Path, html_path: Path | None = None, *, compare_with: Path | None = None,
                 secrets: Iterable[str] = ()) -> Path:
    """Write the report of ``output`` (beside it unless ``html_path``) and return its path.

    Raises :class:`~pipeline.errors.InputError` for an output that is not a chatbatch output,
    :class:`~pipeline.errors.OutputError` when the page cannot be written (written atomically: an
    earlier report is replaced whole or not at all).
    """
    secrets = tuple(secrets)
    figures = read_figures(output, secrets)
    previous = read_figures(compare_with, secrets) if compare_with is not None else None
    path = html_path or default_path(output)
    try:
        write_text_atomically(path, redact(render(figures, previous), secrets))
    except OSError as exc:
        raise OutputError(f"cannot write the report {path}: {exc}") from exc
    return path


def render(figures: Figures, previous: Figures | None = None) -> str:
    """The whole page, as text."""
    keys = (f"c{n}" for n in range(1, 10_000))  # chart ids, unique within the page
    summary = figures.summary
    sections = [_headline(summary)]
    if previous is not None:
        sections.append(_compare(compare(figures, previous), keys))
    if figures.labels is not None:
        sections.append(_labels(figures, keys))
    if summary.get("structured") and summary["structured"].get("labels") is None:
        sections.append(_columns(figures.columns, keys))
    sections += [_errors(figures.errors), _latency(figures.latency, keys),
                 _tokens(figures.prompt_tokens, figures.completion_tokens, keys), _timeline(figures.timeline, keys)]
    name = summary.get("job") or Path(figures.output).name
    page = Template(resources.files("pipeline").joinpath("data/report.html").read_text(encoding="utf-8"))
    return page.substitute(
        version=_e(__version__), title=_e(f"chatbatch report: {name}"), heading=_e(f"Run report: {name}"),
        subtitle=" · ".join(_e(part) for part in (summary.get("model"), summary.get("input"),
                                                  summary.get("finished_at")) if part),
        sections="\n".join(sections),
        footer=_e(f"From {figures.output}, written by chatbatch {summary.get('chatbatch_version', '')}; "
                  f"report by chatbatch {__version__}. Times are UTC."))


# -- sections ------------------------------------------------------------------------------
def _headline(summary: dict) -> str:
    equivalent = summary.get("api_equivalent") or {}
    cost = summary.get("cost_usd")
    cards = [
        ("job", summary.get("job") or "—"), ("model", summary.get("model") or "—"),
        ("input", summary.get("input") or "—"),
        ("date", summary.get("date") or summary.get("finished_at") or "—"),  # the day {date} stands for
        ("finished", summary.get("finished_at") or "—"),
        ("rows", _n(summary.get("rows"))), ("ok", _n(summary.get("ok"))),
        ("error", _n(summary.get("error"))), ("skipped", _n(summary.get("skipped"))),
        ("refused", _n(summary.get("refused"))), ("not sent", _n((summary.get("error_types") or {}).get("not_sent", 0))),
        ("cost", _usd(cost) if cost is not None else f"unknown (known {_usd(summary.get('cost_usd_known'))})"),
        *([(f"on the API ({equivalent.get('model')})", _usd(equivalent.get("cost_usd")))] if equivalent else []),
        ("tokens", _n(summary.get("total_tokens"))), ("prompt tokens", _n(summary.get("prompt_tokens"))),
        ("completion tokens", _n(summary.get("completion_tokens"))),
        ("elapsed", f"{summary.get('elapsed_s', 0):,.1f} s"), ("rows/s", _n(summary.get("rows_per_s"))),
        ("retries", _n(summary.get("retries"))), ("429s", _n(summary.get("rate_limited_429"))),
        ("exit code", _n(summary.get("exit_code"))),
    ]
    bad = {"error", "refused", "not sent", "429s"}
    flagged = ' class="bad"'
    items = "\n".join(f'<div{flagged if key in bad and value not in ("0", "—") else ""}>'
                      f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd></div>" for key, value in cards)
    stopped = summary.get("stopped")
    note = f'<p class="note">Stopped: {_e(stopped)}. Rows not sent have error_type not_sent.</p>' if stopped else ""
    runs = summary.get("runs") or 1
    if runs > 1:
        note += (f'<p class="note">Figures of the whole job over its {runs:,} runs; this run settled '
                 f'{_n((summary.get("this_run") or {}).get("rows_settled"))} rows.</p>')
    return SECTION.substitute(id="headline", title="Headline", body=f'<dl class="cards">\n{items}\n</dl>{note}')


def _compare(comparison: Comparison, keys) -> str:
    rows = [(what, _ratio(what, before), _ratio(what, now), _change(what, before, now))
            for what, before, now in comparison.rows]
    rows += [(f"share: {label}", _pct(before), _pct(now), _change("share", before, now))
             for label, before, now in comparison.label_shares]
    body = (f'<p class="note">Previous: {_e(comparison.previous_output)}'
            f'{", " + _e(comparison.previous_date) if comparison.previous_date else ""}.</p>'
            + _table(("", "previous", "today", "change"), rows, numeric=(1, 2, 3)))
    if comparison.label_shares:
        items = [(label, _percent(before), _percent(now)) for label, before, now in comparison.label_shares]
        body += _figure(charts.paired_bars(items, title="label shares", unit="% of labelled rows", key=next(keys)),
                        "Label shares, previous run and today.")
    return SECTION.substitute(id="compare", title="Compared with the previous run", body=body)


def _labels(figures: Figures, keys) -> str:
    counts = figures.labels
    body = _counts_block(counts, keys, "rows") if counts.items else '<p class="note">No row has a label.</p>'
    if figures.confidence is not None:
        body += "<h3>label_confidence</h3>" + _histogram_block(figures.confidence, keys)
    return SECTION.substitute(id="labels", title="Labels", body=body)


def _columns(columns: Sequence[Counts | Histogram | NotCharted], keys) -> str:
    blocks = []
    for figure in columns:
        if isinstance(figure, Counts):
            inner = _counts_block(figure, keys, "rows") if figure.items else '<p class="note">No values.</p>'
        elif isinstance(figure, Histogram):
            inner = _histogram_block(figure, keys)
        else:
            inner = f'<p class="note">{_e(figure.reason)}.</p>'
        blocks.append(f"<div><h3>{_e(figure.title)}</h3>{inner}</div>")
    body = f'<div class="grid">{"".join(blocks)}</div>' if blocks else '<p class="note">No typed column has values.</p>'
    return SECTION.substitute(id="columns", title="Extracted columns", body=body)


def _errors(groups: Sequence[ErrorGroup]) -> str:
    if not groups:
        return SECTION.substitute(id="errors", title="Errors", body='<p class="note">No errors.</p>')
    rows = [(group.error_type, _n(group.rows),
             Raw('<ul class="examples">' + "".join(f"<li>{_e(m)}</li>" for m in group.examples) + "</ul>"))
            for group in groups]
    body = ('<p class="note">Rows with status error or refused, by error_type, with a few of their messages '
            '(redacted, shortened).</p>' + _table(("error_type", "rows", "examples"), rows, numeric=(1,)))
    return SECTION.substitute(id="errors", title="Errors", body=body)


def _latency(latency: Histogram | None, keys) -> str:
    if latency is None:
        return SECTION.substitute(id="latency", title="Latency", body='<p class="note">No request was timed.</p>')
    marks = _table(("percentile", "seconds"), [(name, f"{value:,.3f}") for name, value in latency.marks],
                   numeric=(1,))
    body = marks + _histogram_block(latency, keys, table=False)
    return SECTION.substitute(id="latency", title="Latency (seconds of the last attempt)", body=body)


def _tokens(prompt: Histogram | None, completion: Histogram | None, keys) -> str:
    blocks = [f"<div><h3>{_e(h.title)}</h3>{_histogram_block(h, keys)}</div>" for h in (prompt, completion) if h]
    body = f'<div class="grid">{"".join(blocks)}</div>' if blocks else '<p class="note">No usage reported.</p>'
    return SECTION.substitute(id="tokens", title="Tokens per row", body=body)


def _timeline(timeline: Timeline | None, keys) -> str:
    if timeline is None:
        return SECTION.substitute(id="timeline", title="Throughput and 429s over time",
                                  body='<p class="note">No row has a finish time (finished_at).</p>')
    svg = charts.timeline(timeline.start_s, timeline.width_s, timeline.rows, timeline.rate_limited,
                          title="throughput and 429s over time", key=next(keys))
    caption = (f"Rows by their finished_at, {sum(timeline.rows):,} in all; 429s of the last run: "
               f"{sum(timeline.rate_limited):,}.")
    return SECTION.substitute(id="timeline", title="Throughput and 429s over time", body=_figure(svg, caption))


# -- blocks --------------------------------------------------------------------------------
class Raw(str):
    """Markup built here, put into a table cell as it is (everything else is escaped)."""


def _counts_block(counts: Counts, keys, unit: str) -> str:
    items = list(counts.items) + ([("(other values)", counts.other)] if counts.other else [])
    svg = charts.bars(items, title=counts.title, unit=unit, key=next(keys))
    total = counts.total
    rows = [(name, _n(count), f"{100 * count / total:.1f}%") for name, count in items]
    if counts.missing:
        rows.append((Raw("<em>(none)</em>"), _n(counts.missing), ""))
    return _figure(svg, f"{counts.title}: {total:,} rows with a value.") + _table((counts.title, unit, "share"), rows,
                                                                                   numeric=(1, 2))


def _histogram_block(histogram: Histogram, keys, table: bool = True) -> str:
    svg = charts.histogram(histogram.edges, histogram.counts, title=histogram.title, unit=histogram.unit,
                           marks=histogram.marks, key=next(keys))
    caption = f"{histogram.total:,} rows" + (f"; {histogram.missing:,} without a value" if histogram.missing else "")
    block = _figure(svg, caption + ".")
    if table:
        block += _table(("", histogram.unit), [("rows", _n(histogram.total))]
                        + [(name, f"{value:,.4g}") for name, value in histogram.stats], numeric=(1,))
    return block


def _figure(svg: str, caption: str) -> str:
    return FIGURE.substitute(svg=svg, caption=_e(caption))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    right = ' class="n"'

    def cell(tag: str, index: int, value) -> str:
        kind = right if index in numeric else ""
        scope = ' scope="row"' if tag == "th" else ""
        return f"<{tag}{kind}{scope}>{value if isinstance(value, Raw) else _e(value)}</{tag}>"
    header = "".join(f'<th{right if i in numeric else ""} scope="col">{_e(h)}</th>' for i, h in enumerate(head))
    body = "\n".join("<tr>" + "".join(cell("th" if i == 0 else "td", i, v) for i, v in enumerate(row)) + "</tr>"
                     for row in rows)
    return f'<div class="table"><table><thead><tr>{header}</tr></thead><tbody>\n{body}\n</tbody></table></div>'


# -- values --------------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _n(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def _usd(value) -> str:
    return "unknown" if value is None else f"${value:,.6f}".rstrip("0").rstrip(".") if value else "$0"


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f}%"


def _percent(share: float | None) -> float | None:
    return None if share is None else round(100 * share, 1)


def _ratio(what: str, value: float | None) -> str:
    if what == "error rate":
        return _pct(value)
    if what.startswith("cost"):
        return _usd(value)
    return _n(value)


def _change(what: str, before: float | None, now: float | None) -> str:
    if before is None or now is None:
        return "—"
    if what in ("error rate", "share"):
        return f"{100 * (now - before):+.1f} pts"
    return f"{now - before:+,.6g}"
