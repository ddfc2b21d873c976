"""Fail fast: stop a run whose first requests all fail the same way — the job is wrong, not the rows.

A misspelt model, a wrong base URL, a dead server or a schema the model cannot follow fail every
row alike; sending a million rows (and paying for some) to learn that helps nobody. :class:`FailFast`
watches the outcome of every *attempt this run sends* — rows taken from the resume journal, copies
of an identical request's reply and cached replies are no requests and are never counted — and
names the error that stops the run (exit 3) when one of these holds:

* **The endpoint is unreachable:** the first ``limit`` attempts all failed to connect or timed out
  (``connection_error`` / ``timeout``) and not one got an HTTP answer. Attempts are counted, not rows,
  so retry backoff does not delay the verdict: with the default concurrency a closed port stops the
  run in its first wave, and nothing is paid (no request reached a server).
* **Every reply is invalid for the schema:** the first ``limit`` replies all failed validation
  (``invalid_output``) — each of them billed, so the run stops before paying
  ``validation_retries + 1`` replies for every row.
* **Every request is rejected the same way:** the first ``limit`` requests all got the same 4xx row
  error (a misspelt model is a 404 ``model_not_found`` for every row).

One valid reply anywhere turns every check off for the rest of the run; any HTTP answer turns off
the unreachable-endpoint check (the host is up)::

    fail_fast = FailFast("https://api.example.com/v1/chat/completions")
    stop = fail_fast.attempt(failure)  # None after a valid reply; an error class after a failed one
    if stop is not None:
        ...  # stop the run with ``stop`` (its message names what happened and the host)
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import InvalidOutput, NotSent, RequestFailed, RowRejected, TransportFailure

FAIL_FAST_ROWS = 20  # this many identical failures, before any valid reply, stop the run
_DEFAULT_PORTS = {"http": 80, "https": 443}


class FailFast:
    """Counts this run's failed attempts until the first valid reply; says when to stop."""

    def __init__(self, endpoint_url: str, limit: int = FAIL_FAST_ROWS) -> None:
        url = urlsplit(endpoint_url)
        self.limit = limit
        self.host = f"{url.hostname}:{url.port or _DEFAULT_PORTS.get(url.scheme, '?')}"
        self.armed = True  # until the first valid reply
        self._unanswered: int | None = 0  # connect failures; None once any HTTP answer came
        self._invalid = 0
        self._rejected: dict[tuple, int] = {}

    def attempt(self, failure: RequestFailed | None) -> RequestFailed | None:
        """Count one sent attempt (``failure`` None: a valid reply); the error to stop with, if any."""
        if not self.armed or isinstance(failure, NotSent):
            return None
        if failure is None:
            self.armed = False
            return None
        if isinstance(failure, TransportFailure):
            return self._unreachable(failure)
        self._unanswered = None  # the server answered: it is reachable
        if isinstance(failure, InvalidOutput):
            return self._invalid_output(failure)
        if isinstance(failure, RowRejected) and failure.http_status is not None \
                and 400 <= failure.http_status < 500:
            return self._rejected_row(failure)
        return None

    def _unreachable(self, failure: TransportFailure) -> RequestFailed | None:
        if self._unanswered is None:
            return None
        self._unanswered += 1
        if self._unanswered < self.limit:
            return None
        return TransportFailure(
            f"cannot reach the endpoint at {self.host}: the first {self.limit} attempts all failed "
            f"({failure.error_type}: {failure.message}) and none got an answer",
            error_type=failure.error_type)

    def _invalid_output(self, failure: InvalidOutput) -> RequestFailed | None:
        self._invalid += 1
        if self._invalid < self.limit:
            return None
        return RowRejected(
            f"the first {self.limit} replies were all invalid for the output schema and none was valid, "
            f"so the schema or the prompt looks wrong: {failure.message}",
            http_status=200, error_type="invalid_output")

    def _rejected_row(self, failure: RowRejected) -> RequestFailed | None:
        key = (failure.error_type, failure.http_status)
        self._rejected[key] = count = self._rejected.get(key, 0) + 1
        if len(self._rejected) != 1 or count < self.limit:
            return None
        return RowRejected(
            f"the first {self.limit} requests all failed with HTTP {failure.http_status} "
            f"({failure.error_type}) and none succeeded, so the job itself looks wrong "
            f"(model name? base URL? parameters?): {failure.message}",
            http_status=failure.http_status, error_type=failure.error_type)
