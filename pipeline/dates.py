"""Date placeholders in a job's paths, for scheduled jobs: ``{date}``, ``{yesterday}``, strftime.

A nightly job names its files by day::

    input = "exports/{date}/reviews.csv"                 # exports/2026-11-30/reviews.csv
    output = "out/{yesterday:%Y/%m/%d}/reviews.parquet"  # out/2026/11/29/reviews.parquet

* ``{date}`` is the run's date, ``{yesterday}`` the day before, both ISO ``YYYY-MM-DD``;
  ``{date:FORMAT}`` / ``{yesterday:FORMAT}`` format it with strftime directives of a day
  (:data:`DAY_DIRECTIVES`: ``%Y %m %d %j %a %b ...``). Time-of-day directives (``%H``, ``%M``, ...)
  are errors, not midnight: the placeholder is a day.
* ``{{`` and ``}}`` are literal braces; any other ``{...}`` (``{dat}``), a lone brace or an
  unknown directive is a :class:`~pipeline.errors.JobError` naming the key and the text.
* The run's date is "today" in the local time zone (the zone cron runs the job in, as ``date +%F``
  says it; ``TZ=UTC`` for UTC days), read once when the job is built, so one run has one date
  whatever midnight it straddles — or the date given (``--date 2026-11-30``, a backfill).

>>> import datetime
>>> resolve("out/{date:%Y/%m/%d}/{yesterday}-{{x}}.parquet", datetime.date(2026, 12, 1))
'out/2026/12/01/2026-11-30-{x}.parquet'
"""

from __future__ import annotations

import datetime
import re
import string
from typing import Callable

from .errors import JobError

PLACEHOLDERS = {"date": 0, "yesterday": -1}  # name -> days from the run's date
# strftime directives that describe a day (portable: C89 plus ISO 8601 week dates)
DAY_DIRECTIVES = frozenset("aAwdbBmyYjUWGuV%")
_DIRECTIVE = re.compile(r"%(.?)", re.DOTALL)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def local_today() -> datetime.date:
    """Today in the local time zone (``$TZ``, else the system's): what ``{date}`` is by default."""
    return datetime.date.today()


def run_date(given: object, where: str, today: Callable[[], datetime.date] = local_today) -> datetime.date:
    """The run's date: ``given`` (``YYYY-MM-DD`` text or a ``datetime.date``), else ``today()``."""
    if given is None:
        return today()
    if isinstance(given, datetime.date) and not isinstance(given, datetime.datetime):
        return given
    if isinstance(given, str) and _ISO_DATE.fullmatch(given.strip()):
        try:
            return datetime.date.fromisoformat(given.strip())
        except ValueError:
            pass
    raise JobError(f"{where}: key 'date' must be a date YYYY-MM-DD (e.g. 2026-11-30), got {given!r}")


def resolve(text: str, day: datetime.date, where: str = "path") -> str:
    """``text`` with every placeholder replaced for the run's date ``day``; ``{{``/``}}`` are braces."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone brace
        raise JobError(f"{where}: {exc} in {text!r} (write {{{{ and }}}} for literal braces)") from None
    out = []
    for literal, name, spec, conversion in parts:
        out.append(literal)
        if name is None:
            continue
        if name not in PLACEHOLDERS or conversion:
            field = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise JobError(f"{where}: unknown placeholder {field} in {text!r}: use {{date}}, {{yesterday}} "
                           "or {date:%Y%m%d}-style formats (write {{ and }} for literal braces)")
        when = day + datetime.timedelta(days=PLACEHOLDERS[name])
        out.append(_format(when, spec, name, text, where) if spec else when.isoformat())
    return "".join(out)


def _format(day: datetime.date, spec: str, name: str, text: str, where: str) -> str:
    for directive in _DIRECTIVE.findall(spec):
        if directive not in DAY_DIRECTIVES:
            raise JobError(f"{where}: {{{name}:{spec}}} in {text!r}: %{directive} is not a directive of a day "
                           f"(use {' '.join('%' + d for d in sorted(DAY_DIRECTIVES - {'%'}))})")
    return day.strftime(spec)
