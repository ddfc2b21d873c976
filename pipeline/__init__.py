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

# after the submodules they import: ``pipeline.estimate`` is the function, not the module
from .api import Job, aenrich, enrich, estimate  # noqa: E402
from .errors import ChatbatchError, JobError, RunAborted  # noqa: E402

__all__ = ["ChatbatchError", "Job", "JobError", "RunAborted", "aenrich", "enrich", "estimate"]
