"""chatbatch: a table of prompts in, an enriched table out — rate-limited, retried, costed.

From Python and notebooks (see :mod:`pipeline.api`)::

    import pandas as pd
    from pipeline import enrich

    reviews = pd.DataFrame({"review": ["Great mug", "Broke in a week"]})
    result = enrich(reviews, template="Sentiment of: {review}", model="gpt-4o-mini",
                    labels=["positive", "negative", "neutral"], max_cost=2.0)
    print(result[["review", "label", "cost_usd"]], result.attrs["chatbatch"]["cost_usd"])

``aenrich`` is its coroutine, ``estimate(df, ...)`` the dry run, and
``Job.from_toml("jobs/x.toml", **overrides).run()`` runs a job file as the CLI does.

The command line (``chatbatch``, or ``python -m pipeline``) is a thin shell over the same engine:
:func:`pipeline.jobspec.build_job` and :func:`pipeline.run.run_job`.
"""

__version__ = "0.1.0"

__all__ = ["ChatbatchError", "Job", "JobError", "RunAborted", "aenrich", "enrich", "estimate"]

_API = {"Job", "aenrich", "enrich", "estimate"}


def __getattr__(name: str):
    """The Python API, imported when first used: the CLI (``python -m pipeline``) never pays for it."""
    if name in _API or name in {"ChatbatchError", "JobError", "RunAborted"}:
        from . import api, errors

        # ``pipeline.estimate`` is the function, not the module of that name
        globals().update({n: getattr(api, n) for n in _API})
        globals().update(ChatbatchError=errors.ChatbatchError, JobError=errors.JobError,
                         RunAborted=errors.RunAborted)
        return globals()[name]
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
