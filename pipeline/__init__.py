"""chatbatch: a table of prompts in, an enriched Parquet file out — rate-limited, retried, costed.

The command line (``chatbatch``, or ``python -m pipeline``) is a thin shell over
:func:`pipeline.jobspec.build_job` and :func:`pipeline.run.run_job`.
"""

__version__ = "0.1.0"
