"""The one exception tree of chatbatch.

Foreign exceptions (httpx, pyarrow, tomllib) are translated into these at one boundary each
(``client.py`` for HTTP, ``sources.py``/``sinks.py`` for files, ``jobspec.py`` for job files) and
chained with ``raise ... from exc``. Whether a failure is retried, or stops the whole run, is a
property of its class — never a string match on a message. So is whether a row that failed
should be sent again by a plain rerun: :func:`is_transient` answers it from the row's ``error_type``
(the failure's class named it), for the resume journal::

    ChatbatchError
    ├── JobError                 bad job file, flag or input: nothing was sent (exit 2)
    │   ├── InputError           unreadable input, missing column, ...
    │   └── OutputExistsError    output exists and --overwrite was not given
    ├── CostCapReached           the next request could cross max_cost (the run stops, exit 3)
    ├── OutputError              the output cannot be written (disk full, ...): the run stops (exit 4)
    ├── RunAborted               Python API: the run stopped (auth, quota, cost cap); carries the
    │                            partial result
    ├── LimiterLost              --dask: the cluster's limiter (an Actor) failed or its worker died:
    │                            the job stops (exit 3); finished rows are in the journals
    └── RequestFailed            one HTTP exchange failed (carries http_status, error_type)
        ├── retryable = True       transient: a rerun sends the row again
        │   ├── RateLimited        429 rate_limit_exceeded (slows the whole run)
        │   ├── ServerError        5xx, 408, 409
        │   ├── TransportFailure   connection refused/reset
        │   │   └── TimedOut       no reply in time (final on a local model: retry_timeouts)
        │   └── BadResponse        200 whose body is not JSON or has no choices
        ├── RowRejected            400, 404, 422, ...: recorded on the row, not retried (permanent)
        ├── InvalidOutput          a reply that is not valid JSON for the job's schema (retried
        │                          validation_retries times; billed, so it carries its completion)
        ├── NotSent                the run stopped before this request went out
        └── fatal = True (stop the run: no retry can fix it)
            ├── AuthFailed         401, 403
            └── QuotaExhausted     429 insufficient_quota
"""

from __future__ import annotations


class ChatbatchError(Exception):
    """Base of every error chatbatch raises on purpose."""


class JobError(ChatbatchError):
    """The job file, a flag or the input is wrong; nothing has been sent."""


class InputError(JobError):
    """The input table cannot be read or does not fit the job."""


class OutputExistsError(JobError):
    """The output file exists and overwriting was not asked for."""


class CostCapReached(ChatbatchError):
    """Sending another request could push the spend past the job's max_cost."""

    error_type = "max_cost_reached"


class OutputError(ChatbatchError):
    """The output file could not be written (disk full, permissions, a value Arrow refused)."""


class RunAborted(ChatbatchError):
    """A run of the Python API stopped for a reason no retry fixes (the CLI's exit 3).

    ``result`` is what the call would have returned — every row, those not sent with error_type
    ``not_sent`` — and ``summary`` the run's summary. Calling again resumes.
    """

    def __init__(self, message: str, *, result, summary: dict) -> None:
        super().__init__(message)
        self.result = result
        self.summary = summary
        self.stopped_by = summary.get("stopped_by")


class LimiterLost(ChatbatchError):
    """A call to the cluster's limiter (a ``distributed`` Actor, see :mod:`pipeline.clusterlimit`)
    failed: its worker died or it raised. No process can send without it, so the job stops."""


class RequestFailed(ChatbatchError):
    """One exchange with the endpoint failed.

    ``error_type`` is a short stable name for the output's ``error_type`` column; ``http_status``
    is None when no HTTP response arrived. ``retry_after_s`` is what the server asked us to wait.
    """

    retryable = False
    fatal = False
    error_type = "request_failed"
    error_types: tuple[str, ...] = ()  # every error_type an instance may carry, when not just error_type

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_type: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        if error_type:
            self.error_type = error_type
        self.retry_after_s = retry_after_s
        self.attempts: int | None = None  # set by the retry loop when it gives up
        self.rate_info: dict | None = None  # the reply's rate-limit headers, when there was a reply


class RateLimited(RequestFailed):
    retryable = True
    error_type = "rate_limited"


class ServerError(RequestFailed):
    retryable = True
    error_type = "server_error"


class TransportFailure(RequestFailed):
    retryable = True
    error_type = "transport_error"
    error_types = ("transport_error", "timeout", "connection_error")


class TimedOut(TransportFailure):
    """No reply within the timeout. Retried like any transport failure, unless the job says a
    timeout is final (``RetrySettings.retry_timeouts``: a local server still generating the reply
    would only queue the retry behind it)."""

    error_type = "timeout"


class BadResponse(RequestFailed):
    retryable = True
    error_type = "bad_response"


class RowRejected(RequestFailed):
    error_type = "invalid_request"


class InvalidOutput(RequestFailed):
    error_type = "invalid_output"

    def __init__(self, message: str, *, completion, cost_usd, retryable: bool) -> None:
        super().__init__(message, http_status=200)
        self.completion = completion
        self.cost_usd = cost_usd
        self.retryable = retryable


class NotSent(RequestFailed):
    error_type = "not_sent"


class AuthFailed(RequestFailed):
    fatal = True
    error_type = "auth_failed"


class QuotaExhausted(RequestFailed):
    fatal = True
    error_type = "insufficient_quota"


def _transient_error_types() -> frozenset[str]:
    """The error types of every class that says ``retryable`` (a class attribute, not per instance)."""
    names, classes = set(), [RequestFailed]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if cls.__dict__.get("retryable") is True:
            names.update(cls.error_types or (cls.error_type,))
    return frozenset(names)


TRANSIENT_ERROR_TYPES = _transient_error_types()


def is_transient(error_type: str | None) -> bool:
    """Whether a row that failed with ``error_type`` after every attempt may succeed if sent again.

    Transient: the retryable classes (rate limits, 5xx/408/409, timeouts, connection failures,
    unusable 200 bodies) — a rerun sends such rows again. Everything else a row can fail with is
    permanent (400/404/422 rejections such as ``context_length_exceeded``, ``invalid_output``,
    refusals): sending the same request again would get the same answer, so it stays failed unless
    ``--retry-errors``.
    """
    return error_type in TRANSIENT_ERROR_TYPES
