"""The figures of a run report: an output Parquet file and its summary in, plain numbers out.

:func:`read_figures` reads ``OUT.parquet`` — the summary stored in it (see :mod:`pipeline.summary`)
and the few output columns a report needs — and returns :class:`Figures`: counts, histograms,
percentiles and a timeline, as tuples of numbers and texts. Nothing here draws or writes HTML:
:mod:`pipeline.charts` draws the figures, :mod:`pipeline.reportpage` lays out the page. So this
module needs no matplotlib, and tests can check the numbers alone (:func:`write_run_report`, what a
run with ``report = true`` calls — the CLI's and :meth:`pipeline.api.Job.run` alike — loads the page
writer, and matplotlib, only then)::

    figures = read_figures(Path("out/reviews-classified.parquet"))
    figures.labels.items            # (("positive", 120), ("negative", 51), ...)
    figures.latency.marks           # (("p50", 0.41), ("p95", 1.2), ("p99", 2.3))
    compare(figures, read_figures(Path("yesterday.parquet"))).rows

What is read where:

* the headline (rows by status, cost, tokens, elapsed, rows/s, retries, 429s, job, model, input,
  date) comes from the summary the run wrote, as ``chatbatch summary`` prints it;
* which output columns are labels or typed columns comes from the summary's ``structured`` fact
  (an output written before it existed: a ``label`` column makes it a classification);
* the distributions come from the output columns (``status``, ``error_type``, ``latency_s``, the
  token counts, ``finished_at``, the structured columns), with the job's ``column_prefix``;
* error messages are the output's (already redacted by the run), redacted again with the secrets
  the caller knows now, and shortened to :data:`EXAMPLE_CHARS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ChatbatchError, InputError, JobError
from .redaction import redact_cut
from .run import read_summary

MAX_CATEGORIES = 12  # values shown of a categorical column; the rest are counted as "other"
MAX_BINS = 30
EXAMPLES_PER_ERROR = 3
EXAMPLE_CHARS = 200
MAX_TIME_BUCKETS = 60
BUCKET_WIDTHS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Counts:
    """A categorical distribution: ``items`` (value, rows) most frequent first (labels: in the job's
    order), ``other`` rows holding values beyond them, ``missing`` rows holding none."""

    title: str
    items: tuple[tuple[str, int], ...]
    other: int = 0
    missing: int = 0

    @property
    def total(self) -> int:
        return sum(count for _, count in self.items) + self.other


@dataclass(frozen=True)
class Histogram:
    """Values binned: ``counts[i]`` values in ``[edges[i], edges[i + 1])`` (the last bin closed);
    ``stats`` are their min, median, mean and max; ``marks`` named values drawn over it
    (percentiles); ``missing`` rows hold no (finite) value."""

    title: str
    unit: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    stats: tuple[tuple[str, float], ...] = ()
    marks: tuple[tuple[str, float], ...] = ()
    missing: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class NotCharted:
    """A typed column with no chart (a list or struct), and why."""

    title: str
    reason: str


@dataclass(frozen=True)
class ErrorGroup:
    error_type: str
    rows: int
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Timeline:
    """Rows finished and 429s over time, in buckets of ``width_s`` seconds from ``start_s`` (Unix)."""

    start_s: int
    width_s: int
    rows: tuple[int, ...]
    rate_limited: tuple[int, ...]


@dataclass(frozen=True)
class Figures:
    output: str
    summary: dict[str, Any]
    labels: Counts | None
    confidence: Histogram | None
    columns: tuple[Counts | Histogram | NotCharted, ...]
    errors: tuple[ErrorGroup, ...]
    latency: Histogram | None
    prompt_tokens: Histogram | None
    completion_tokens: Histogram | None
    timeline: Timeline | None

    @property
    def rows(self) -> int:
        return int(self.summary.get("rows") or 0)

    @property
    def error_rate(self) -> float | None:
        """Rows with status ``error`` over all rows."""
        return self.summary.get("error", 0) / self.rows if self.rows else None

    @property
    def cost_usd(self) -> float | None:
        return self.summary.get("cost_usd")


@dataclass(frozen=True)
class Comparison:
    """Two runs side by side: ``rows`` of (what, previous, today), values as numbers or None."""

    previous_output: str
    previous_date: str | None
    rows: tuple[tuple[str, float | None, float | None], ...]
    label_shares: tuple[tuple[str, float | None, float | None], ...]


def read_figures(path: Path, secrets: Iterable[str] = ()) -> Figures:
    """The figures of the output at ``path``; :class:`InputError` when it is no chatbatch output."""
    summary = read_summary(path)
    prefix = summary.get("column_prefix") or ""
    try:
        table = _read_columns(path, summary)
        errors = _errors(path, prefix, secrets)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {path} as a chatbatch output: {exc}") from exc
    labels_known, typed = _structured(summary, table, prefix)

    def column(name: str) -> pa.ChunkedArray | None:
        return table.column(prefix + name) if prefix + name in table.column_names else None

    label = column("label") if labels_known is not None else None
    return Figures(
        output=str(path), summary=summary,
        labels=_label_counts(label, labels_known) if label is not None else None,
        confidence=_histogram(column("label_confidence"), "label_confidence", "probability")
        if label is not None else None,
        columns=tuple(_column_figure(name, column(name)) for name in typed if column(name) is not None),
        errors=errors,
        latency=_histogram(column("latency_s"), "latency", "seconds", marks=True),
        prompt_tokens=_histogram(column("prompt_tokens"), "prompt tokens", "tokens"),
        completion_tokens=_histogram(column("completion_tokens"), "completion tokens", "tokens"),
        timeline=_timeline(column("finished_at"), summary),
    )


def compare(today: Figures, previous: Figures) -> Comparison:
    """Today's figures beside an earlier run's: label shares, cost, error rate, rows."""
    rows = (("rows", previous.rows, today.rows), ("cost (USD)", previous.cost_usd, today.cost_usd),
            ("error rate", previous.error_rate, today.error_rate))
    shares = ()
    if today.labels is not None or previous.labels is not None:
        now, before = _shares(today.labels), _shares(previous.labels)
        shares = tuple((label, before.get(label), now.get(label)) for label in dict.fromkeys([*now, *before]))
    return Comparison(previous.output, previous.summary.get("finished_at"), rows, shares)


def _shares(counts: Counts | None) -> dict[str, float]:
    if counts is None or not counts.total:
        return {}
    return {label: count / counts.total for label, count in counts.items}


# -- reading -------------------------------------------------------------------------------
def _read_columns(path: Path, summary: dict) -> pa.Table:
    """The output columns the report charts (not the input's, nor the replies' text)."""
    prefix = summary.get("column_prefix") or ""
    structured = summary.get("structured") or {}
    wanted = ["latency_s", "prompt_tokens", "completion_tokens", "finished_at", "label", "label_confidence",
              *(structured.get("columns") or ())]
    names = pq.read_schema(path).names
    return pq.read_table(path, columns=[prefix + n for n in dict.fromkeys(wanted) if prefix + n in names])


def _structured(summary: dict, table: pa.Table, prefix: str) -> tuple[list[str] | None, list[str]]:
    """(the job's labels, or None for no classification; the typed columns of an extraction)."""
    spec = summary.get("structured")
    if spec is None:
        if "structured" in summary or prefix + "label" not in table.column_names:
            return None, []
        return [], []  # an output from before the summary said: a label column is a classification
    if spec.get("labels") is not None:
        return list(spec["labels"]), []
    return None, list(spec.get("columns") or ())


def _errors(path: Path, prefix: str, secrets: Iterable[str]) -> tuple[ErrorGroup, ...]:
    """Rows with status error (and refusals) by error_type, most first, with a few examples each."""
    secrets = tuple(secrets)
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    columns = [prefix + "status", prefix + "error_type", prefix + "error_message"]
    output = pq.ParquetFile(path)
    if not set(columns) <= set(output.schema_arrow.names):
        raise InputError(f"{path} lacks chatbatch's {', '.join(columns)} columns")
    for batch in output.iter_batches(columns=columns, batch_size=65536):
        failed = batch.filter(pc.is_in(batch.column(0), pa.array(["error", "refused"])))
        for error_type, message in zip(failed.column(1).to_pylist(), failed.column(2).to_pylist()):
            error_type = error_type or "(none)"
            counts[error_type] = counts.get(error_type, 0) + 1
            kept = examples.setdefault(error_type, [])
            if message and len(kept) < EXAMPLES_PER_ERROR and message not in kept:
                kept.append(message)
    return tuple(ErrorGroup(t, n, tuple(_shorten(redact_cut(m, EXAMPLE_CHARS + 1, secrets)) for m in examples[t]))
                 for t, n in sorted(counts.items(), key=lambda item: -item[1]))


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 1] + "…"


# -- figures -------------------------------------------------------------------------------
def _label_counts(column: pa.ChunkedArray, labels: list[str]) -> Counts:
    found = _value_counts(column)
    order = [label for label in labels if label in found] + sorted(set(found) - set(labels), key=lambda v: -found[v])
    return Counts("label", tuple((label, found[label]) for label in order), missing=column.null_count)


def _column_figure(name: str, column: pa.ChunkedArray) -> Counts | Histogram | NotCharted:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _histogram(column, name, "value", integers=pa.types.is_integer(kind))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind):
        found = _value_counts(column)
        ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))
        shown = ranked[:MAX_CATEGORIES]
        return Counts(name, tuple(shown), other=sum(n for _, n in ranked[MAX_CATEGORIES:]),
                      missing=column.null_count)
    return NotCharted(name, f"{kind} values are not charted")


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    values = column.drop_null()
    if not len(values):
        return {}
    return {_text(item["values"].as_py()): item["counts"].as_py() for item in pc.value_counts(values)}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _histogram(column: pa.ChunkedArray | None, title: str, unit: str, *, marks: bool = False,
               integers: bool | None = None) -> Histogram | None:
    """The column's finite values binned (whole numbers one per bin when few), or None with none."""
    if column is None:
        return None
    values = column.drop_null().to_numpy(zero_copy_only=False).astype(float)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    integers = pa.types.is_integer(column.type) if integers is None else integers
    low, high = float(finite.min()), float(finite.max())
    if integers and high - low < MAX_BINS:
        edges = np.arange(low - 0.5, high + 1.5)
    else:
        bins = min(MAX_BINS, max(1, len(np.histogram_bin_edges(finite, "auto")) - 1))
        edges = np.histogram_bin_edges(finite, bins)
    counts, edges = np.histogram(finite, edges)
    named = tuple((f"p{p}", float(v)) for p, v in zip(PERCENTILES, np.percentile(finite, PERCENTILES))) if marks else ()
    stats = (("min", low), ("median", float(np.median(finite))), ("mean", float(finite.mean())), ("max", high))
    return Histogram(title, unit, tuple(float(e) for e in edges), tuple(int(c) for c in counts), stats, named,
                     missing=len(column) - len(finite))


def _timeline(column: pa.ChunkedArray | None, summary: dict) -> Timeline | None:
    """Rows by the time they finished, and this run's 429s (from the summary), in equal buckets."""
    finished = [] if column is None else column.drop_null().cast(pa.int64()).to_numpy() / 1000.0
    limited = {_unix(when): count for when, count in ((summary.get("this_run") or {}).get("rate_limited_429_at")
                                                      or {}).items()}
    times = [*([finished.min(), finished.max()] if len(finished) else []), *limited]
    if not times:
        return None
    first, last = int(min(times)), int(max(times))
    width = next((w for w in BUCKET_WIDTHS_S if (last - first) // w < MAX_TIME_BUCKETS), BUCKET_WIDTHS_S[-1])
    start = first - first % width
    buckets = (last - start) // width + 1
    rows = np.bincount(((np.asarray(finished) - start) // width).astype(int), minlength=buckets) \
        if len(finished) else np.zeros(buckets, int)
    rate_limited = np.zeros(buckets, int)
    for when, count in limited.items():
        rate_limited[int(when - start) // width] += count
    return Timeline(start, width, tuple(int(n) for n in rows), tuple(int(n) for n in rate_limited))


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def write_run_report(output: Path, secrets: Iterable[str] = ()) -> tuple[Path | None, str | None]:
    """``report = true`` after a run: write the page of what was done beside ``output``.

    Returns (its path, None), or (None, what went wrong, to be said): a report never costs a run its
    output, result or exit code.
    """
    try:
        path = page_writer()(output, secrets=secrets)
    except ChatbatchError as exc:
        problem = str(exc)
    except Exception as exc:  # the last resort: a report must never cost the run its result
        problem = f"internal error: {type(exc).__name__}: {exc}"
    else:
        return path, None
    return None, (f"the report could not be written: {problem}\n  The run's output {output} is "
                  f"complete; 'chatbatch report {output}' tries again.")


def page_writer():
    """:func:`pipeline.reportpage.write_report`, imported only now: matplotlib is the report extra."""
    try:
        from .reportpage import write_report
    except ImportError as exc:
        raise JobError(f"the report needs the report extra: pip install 'chatbatch[report]' ({exc})") from exc
    return write_report
