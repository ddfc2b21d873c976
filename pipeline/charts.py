"""The run report's charts: figures (:mod:`pipeline.report`) in, inline SVG text out, drawn by matplotlib.

matplotlib is the ``report`` extra (``pip install 'chatbatch[report]'``): only this module imports
it, and only :mod:`pipeline.reportpage` imports this module, which the CLI imports when a report is
asked for — a run without ``--report`` never loads matplotlib.

Each function returns one ``<svg>`` element to put straight into an HTML page::

    svg = bars((("positive", 120), ("negative", 51)), title="label", unit="rows", key="c1")

How the SVG is kept self-contained and safe to inline:

* Figures are made with ``matplotlib.figure.Figure`` — no pyplot, so no GUI backend is ever chosen
  (the process's backend setting is left alone) and no figure is kept globally; each is saved with
  ``savefig(format="svg")`` and its settings apply only inside ``matplotlib.rc_context``.
* ``svg.fonttype = none``: text stays ``<text>`` in the page's own sans-serif font (no embedded or
  downloaded font; matplotlib escapes it, so a label like ``<script>`` is text, never markup);
  ``text.parse_math`` off, so a ``$`` in a label is a dollar sign, not TeX.
* The XML prolog, DOCTYPE, comments and ``xmlns`` declarations are dropped (HTML needs none, and the
  page must hold no ``http://`` reference at all); the ``<metadata>`` block is never written.
* Every ``id`` (and each ``#id`` reference to it) gets the chart's own prefix: several charts in one
  page never clash, and ``svg.hashsalt`` makes the output the same on every run.
"""

from __future__ import annotations

import io
import itertools
import re
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import matplotlib
from matplotlib.figure import Figure

WIDTH_IN = 6.4
BAR_COLOR = "#3b6ea8"
PREVIOUS_COLOR = "#b0b7c3"
MARK_COLORS = ("#2a9d8f", "#e9a23b", "#c0392b")
RATE_LIMITED_COLOR = "#c0392b"
LABEL_CHARS = 32  # longest category name drawn on an axis
RC = {"svg.fonttype": "none", "text.parse_math": False, "font.size": 9, "font.family": "sans-serif",
      "axes.spines.top": False, "axes.spines.right": False}


def bars(items: Sequence[tuple[str, float]], *, title: str, unit: str, key: str) -> str:
    """Horizontal bars, one per (name, value), the first on top, each with its value written beside."""
    def paint(axes) -> None:
        positions = list(range(len(items)))[::-1]
        drawn = axes.barh(positions, [value for _, value in items], color=BAR_COLOR, height=0.7)
        axes.bar_label(drawn, labels=[_number(value) for _, value in items], padding=3)
        axes.set_yticks(positions, [_short(name) for name, _ in items])
        axes.set_xlabel(unit)
        axes.margins(x=0.15)
    return _chart(key, title, 0.9 + 0.28 * max(len(items), 1), paint)


def paired_bars(items: Sequence[tuple[str, float | None, float | None]], *, title: str, unit: str, key: str,
                names: tuple[str, str] = ("previous", "today")) -> str:
    """Two bars per name: (name, previous, today); a missing value draws no bar."""
    def paint(axes) -> None:
        rows = list(range(len(items)))[::-1]
        for offset, column, color, legend in ((0.2, 1, PREVIOUS_COLOR, names[0]), (-0.2, 2, BAR_COLOR, names[1])):
            drawn = axes.barh([r + offset for r in rows], [item[column] or 0 for item in items], height=0.38,
                              color=color, label=legend)
            axes.bar_label(drawn, labels=[_number(item[column]) for item in items], padding=3, fontsize=8)
        axes.set_yticks(rows, [_short(item[0]) for item in items])
        axes.set_xlabel(unit)
        axes.margins(x=0.15)
        axes.legend(loc="lower right", frameon=False)
    return _chart(key, title, 1.1 + 0.45 * max(len(items), 1), paint)


def histogram(edges: Sequence[float], counts: Sequence[int], *, title: str, unit: str, key: str,
              marks: Sequence[tuple[str, float]] = ()) -> str:
    """Binned values as filled steps, with named values (percentiles) as labelled vertical lines."""
    def paint(axes) -> None:
        axes.stairs(counts, edges, fill=True, color=BAR_COLOR)
        for (name, value), color in zip(marks, itertools.cycle(MARK_COLORS)):
            axes.axvline(value, color=color, linewidth=1.2, linestyle="--", label=f"{name} {_number(value)}")
        if marks:
            axes.legend(frameon=False)
        axes.set_xlabel(unit)
        axes.set_ylabel("rows")
    return _chart(key, title, 2.4, paint)


def timeline(start_s: int, width_s: int, rows: Sequence[int], rate_limited: Sequence[int], *, title: str,
             key: str) -> str:
    """Rows finished per second in each bucket (bars) and the 429s in it (a line on its own axis)."""
    def paint(axes) -> None:
        starts = [start_s + i * width_s for i in range(len(rows))]
        axes.bar(starts, [n / width_s for n in rows], width=width_s, align="edge", color=BAR_COLOR,
                 label="rows finished per second")
        axes.set_ylabel("rows/s")
        axes.set_xlabel(f"UTC, from {_clock(start_s, True)} (buckets of {width_s:,} s)")
        ticks = starts[:: max(1, len(starts) // 6)]
        axes.set_xticks(ticks, [_clock(t, width_s >= 3600) for t in ticks])
        limited = axes.twinx()
        limited.plot([s + width_s / 2 for s in starts], rate_limited, color=RATE_LIMITED_COLOR, marker="o",
                     markersize=3, linewidth=1.2, label="429s")
        limited.set_ylabel("429s", color=RATE_LIMITED_COLOR)
        limited.set_ylim(bottom=0, top=max(max(rate_limited, default=0), 1) * 1.2)
        limited.spines["right"].set_visible(True)
        handles = [*axes.get_legend_handles_labels()[0], *limited.get_legend_handles_labels()[0]]
        axes.legend(handles=handles, loc="upper left", frameon=False, fontsize=8)
    return _chart(key, title, 2.6, paint)


# -- drawing and saving --------------------------------------------------------------------
def _chart(key: str, title: str, height_in: float, paint: Callable[[Any], None]) -> str:
    """Draw one chart with ``paint(axes)`` and return it as an inline ``<svg>`` element whose ids
    all start with ``key`` (unique within the page)."""
    out = io.StringIO()
    with matplotlib.rc_context({**RC, "svg.hashsalt": key}):
        figure = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        paint(figure.subplots())
        figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return _inline(out.getvalue(), f"{key}-", title)


_PROLOG = re.compile(r"\A.*?(?=<svg\b)", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')
_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(xlink:href="#|href="#|url\(#)([^")]+)')


def _inline(svg: str, prefix: str, title: str) -> str:
    svg = _COMMENT.sub("", _PROLOG.sub("", svg, count=1))
    svg = _XMLNS.sub("", svg)
    svg = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = _REF.sub(lambda m: f"{m.group(1)}{prefix}{m.group(2)}", svg)
    label = title.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return svg.replace("<svg ", f'<svg role="img" aria-label="{label}" ', 1).strip()


def _short(name: str) -> str:
    name = " ".join(name.split())
    return name if len(name) <= LABEL_CHARS else name[:LABEL_CHARS - 1] + "…"


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _clock(unix_s: float, with_date: bool) -> str:
    moment = datetime.fromtimestamp(unix_s, timezone.utc)
    return moment.strftime("%m-%d %H:%M" if with_date else "%H:%M:%S")
