"""The one table of a job's options: job-file keys, ``chatbatch`` flags and Python keywords.

Every option is one :class:`Option` line in :data:`OPTIONS`. From it come

* the job-file key checks (:data:`FILE_KEYS`, :data:`REQUEST_PARAMS`, :data:`RANGES`), used by
  :mod:`pipeline.jobspec`;
* the ``run``/``estimate``/``batch`` flags, their order and help text (``cli.py`` turns each line
  into a ``click.Option``);
* the keywords of :func:`pipeline.enrich`, :func:`pipeline.estimate` and
  :meth:`pipeline.Job.from_toml` (:func:`check_keywords`: an unknown one is a ``TypeError`` with a
  did-you-mean, as Python's own).

So adding an option is one line here (plus its use). An option's name is its job-file key and its
keyword; its flag is the name with dashes (``max_attempts`` ↔ ``--max-attempts``) unless ``flag``
spells it (``--logprobs/--no-logprobs``). ``places`` says where it exists: the API key, for one, is
never a job-file key, and ``--param`` is the flag form of the ``extra_body`` table.
"""

from __future__ import annotations

import datetime
import difflib
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

FILE, FLAG, PYTHON = "file", "flag", "python"
EVERYWHERE = frozenset({FILE, FLAG, PYTHON})
NOT_FLAG = frozenset({FILE, PYTHON})
NOT_FILE = frozenset({FLAG, PYTHON})


@dataclass(frozen=True)
class Kind:
    """What values a key takes: the accepted Python types and how errors say it."""

    types: tuple[type, ...]
    wanted: str
    flag_type: str = ""  # how the flag parses it: "", "int", "float", "file", "folder", "switch"


STR = Kind((str,), "a string")
FILE_PATH = Kind((str,), "a string", "file")
FOLDER = Kind((str,), "a string", "folder")
PATH = Kind((str,), "a string", "path")  # a file, or with --dask a folder or glob
INT = Kind((int,), "an integer", "int")
NUM = Kind((int, float), "a number", "float")
BOOL = Kind((bool,), "true or false", "switch")
TABLE = Kind((dict,), "a table")
LIST = Kind((list,), "a list of strings")
STR_OR_LIST = Kind((str, list), "a string or a list of strings")
SCHEMA = Kind((dict, str), "a table (a JSON schema), JSON text or a path to one")
DATE = Kind((str, datetime.date), "a date YYYY-MM-DD")


@dataclass(frozen=True)
class Option:
    """One option. ``bounds`` are inclusive (``positive``: above ``low``, not equal); the flag
    checks them too when ``flag_bounds`` is True (or gives its own, looser, pair)."""

    name: str
    kind: Kind
    help: str
    flag: str | None = None  # spelling when not just the name with dashes
    places: frozenset = EVERYWHERE
    request: bool = False  # a request-body parameter, sent as it is
    bounds: tuple[float, float | None] | None = None
    positive: bool = False
    flag_bounds: bool | tuple = False
    parse: str | None = None  # the flag's parser in cli.py: "json", "pairs", "json_pairs", "labels", "schema"
    multiple: bool = False  # the flag may be repeated
    choices: tuple[str, ...] = ()
    dated: bool = False  # a path in which {date}/{yesterday} are resolved (pipeline/dates.py)

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


O = Option
OPTIONS: tuple[Option, ...] = (
    # what to read, render and write
    O("input", PATH, "Input table: .csv, .parquet or .jsonl (with --dask: Parquet file, glob or folder); "
      "{date}, {yesterday}, {date:%Y%m%d} are replaced.", dated=True),
    O("output", PATH, "Output Parquet file (default: <input>.out.parquet; with --dask a dataset folder); "
      "{date} etc. are replaced.", dated=True),
    O("date", DATE, "The run's date for {date}/{yesterday} in paths, YYYY-MM-DD, for backfills [today, "
      "local time]."),
    O("template", STR, "User prompt template; {column} inserts a column's value."),
    O("system", STR, "System prompt (may also use {column} placeholders)."),
    O("messages_column", STR, "Column holding a whole messages list (JSON) instead of a template."),
    O("required_columns", LIST, "Rows where any of these columns is null or blank are skipped.", places=NOT_FLAG),
    O("encoding", STR, "Text encoding of a CSV/JSONL input, e.g. latin-1 [utf-8]."),
    O("null_values", STR_OR_LIST, "CSV cell texts read as null besides empty cells, e.g. NA,null,N/A "
      "(comma-separated or repeated).", parse="commas", multiple=True),
    # where to send it
    O("model", STR, "Model name, e.g. gpt-4o-mini."),
    O("base_url", STR, "API base URL (default $OPENAI_BASE_URL or https://api.openai.com/v1)."),
    O("api_key", STR, "API key (prefer $OPENAI_API_KEY: flags show in process lists).", places=NOT_FILE),
    O("api_key_env", STR, "Name of the environment variable holding the API key."),
    O("organization", STR, "OpenAI-Organization header (default $OPENAI_ORG_ID)."),
    O("project", STR, "OpenAI-Project header (default $OPENAI_PROJECT_ID)."),
    O("api_version", STR, "Azure OpenAI api-version; turns on Azure deployment URLs and api-key auth."),
    O("deployment", STR, "Azure OpenAI deployment name (default: the model)."),
    # limits and retries
    O("max_cost", NUM, "Cost cap in USD: no request starts that could cross it.", bounds=(0, None), flag_bounds=True),
    O("concurrency", INT, "Most requests in flight at once [32].", bounds=(1, 100_000), flag_bounds=(1, None)),
    O("rpm", NUM, "Requests-per-minute budget.", bounds=(0, None), positive=True, flag_bounds=True),
    O("tpm", NUM, "Tokens-per-minute budget.", bounds=(0, None), positive=True, flag_bounds=True),
    O("max_attempts", INT, "Attempts per row, the first included [8].", bounds=(1, 1000), flag_bounds=(1, None)),
    O("timeout", NUM, "Seconds to wait for one reply [120].", bounds=(0, None), positive=True, flag_bounds=True),
    O("backoff_base", NUM, "First retry's backoff ceiling, seconds [0.25]; 2x per retry.", bounds=(0, None), flag_bounds=True),
    O("backoff_max", NUM, "Largest backoff in seconds [60].", bounds=(0, None), flag_bounds=True),
    # the request body (CreateChatCompletionRequest names)
    O("temperature", NUM, "Sampling temperature, 0 to 2.", request=True, bounds=(0, 2)),
    O("top_p", NUM, "Nucleus sampling, 0 to 1.", request=True, bounds=(0, 1)),
    O("max_completion_tokens", INT, "Most tokens a reply may use (reasoning included).", request=True,
      bounds=(1, None)),
    O("max_tokens", INT, "Legacy max_tokens, for endpoints that still need it.", request=True, bounds=(1, None)),
    O("stop", STR_OR_LIST, "Stop sequence (repeatable, up to 4).", request=True, multiple=True),
    O("seed", INT, "Seed for best-effort deterministic sampling.", request=True),
    O("n", INT, "Choices per row; n > 1 adds replies/finish_reasons list columns.", request=True, bounds=(1, 128)),
    O("response_format", TABLE, "response_format as JSON, e.g. '{\"type\": \"json_object\"}'.", request=True,
      parse="json"),
    O("logprobs", BOOL, "Ask for token log probabilities.", flag="--logprobs/--no-logprobs", request=True),
    O("top_logprobs", INT, "Top alternatives per token (needs --logprobs).", request=True, bounds=(0, 20)),
    O("service_tier", STR, "service_tier: auto, default, flex, priority.", request=True),
    O("reasoning_effort", STR, "reasoning_effort for reasoning models: minimal, low, medium, high.", request=True),
    O("metadata", TABLE, "Request metadata KEY=VALUE (repeatable).", request=True, parse="pairs", multiple=True),
    O("frequency_penalty", NUM, "Penalty on tokens by how often they appeared, -2 to 2.", places=NOT_FLAG,
      request=True, bounds=(-2, 2)),
    O("presence_penalty", NUM, "Penalty on tokens that appeared at all, -2 to 2.", places=NOT_FLAG, request=True,
      bounds=(-2, 2)),
    O("verbosity", STR, "verbosity of the reply: low, medium, high.", places=NOT_FLAG, request=True),
    O("user", STR, "user: an end-user id (superseded by safety_identifier).", places=NOT_FLAG, request=True),
    O("safety_identifier", STR, "safety_identifier: a stable id of the end user.", places=NOT_FLAG, request=True),
    O("prompt_cache_key", STR, "prompt_cache_key: groups requests for the provider's prompt cache.",
      places=NOT_FLAG, request=True),
    O("store", BOOL, "store: let the provider keep the completion.", places=NOT_FLAG, request=True),
    O("param", TABLE, "Any other body key, KEY=VALUE with VALUE parsed as JSON when it can be (repeatable).",
      places=frozenset({FLAG}), parse="json_pairs", multiple=True),
    O("extra_body", TABLE, "Any other request-body keys, passed through unchanged.", places=NOT_FLAG),
    # structured output
    O("labels", LIST, "Classify into these labels (comma-separated or repeated): a 'label' column.",
      parse="labels", multiple=True),
    O("output_schema", SCHEMA, "JSON schema of the reply (JSON text or a .json path): typed columns.",
      parse="schema"),
    O("structured_mode", STR, "How the schema is asked for [json_schema].",
      choices=("json_schema", "json_object", "prompt")),
    O("strict", BOOL, "Strict json_schema mode [on].", flag="--strict/--no-strict"),
    O("validation_retries", INT, "Retries of replies that fail the schema [2].", bounds=(0, 100), flag_bounds=True),
    O("schema_name", STR, "json_schema name sent with the schema [output]."),
    # a local model instead of the API
    O("local", BOOL, "Run on a local model (llama.cpp server), no key, no cost."),
    O("local_model", FILE_PATH, "GGUF model file for --local [Gemma 3 270M]."),
    O("local_threads", INT, "Threads for the local model [one per core].", bounds=(1, None), flag_bounds=True),
    O("dask", STR, "run: on a Dask cluster, a scheduler address or local:N for N local worker processes "
      "(the dask extra; input: Parquet file, glob or folder; output: a Parquet dataset folder).",
      places=frozenset({FLAG})),
    O("batch_max_requests", INT, "batch submit: most requests per batch file [50,000].", bounds=(1, 50_000),
      flag_bounds=True),
    # output, prices, progress
    O("column_prefix", STR, "Prefix for chatbatch's output columns, e.g. llm_."),
    O("prices_file", FILE_PATH, "JSON/TOML price table adding to the shipped one."),
    O("prices", TABLE, "Per-model price overrides (USD per 1M tokens).", places=NOT_FLAG),
    O("progress_interval", NUM, "Seconds between progress lines when stderr is not a terminal [30].",
      bounds=(0, None), positive=True, flag_bounds=True),
    # resume, reuse, output
    O("state_dir", FOLDER, "Folder for the resume journal (default: <output>.state); {date} etc. are replaced.",
      dated=True),
    O("fresh", BOOL, "Discard the job's resume state and start over.", places=NOT_FILE),
    O("retry_errors", BOOL, "On resume, send rows that failed before again.", places=NOT_FILE),
    O("cache", BOOL, "Reuse replies to identical requests from earlier runs (opt-in).", flag="--cache/--no-cache"),
    O("cache_dir", FOLDER, "Response cache folder (default ~/.cache/chatbatch)."),
    O("dedupe", BOOL, "Send identical requests within a run once [on].", flag="--dedupe/--no-dedupe"),
    O("overwrite", BOOL, "Replace an existing output file."),
    O("quiet", BOOL, "No progress and no summary table; errors only."),
    O("log_format", STR, "stderr lines: text (timestamped when not a terminal) or json (one object a line, "
      "for log aggregators) [text].", places=frozenset({FLAG}), choices=("text", "json")),
    O("report", BOOL, "run / batch collect: also write <output>.report.html, a page of charts (the report "
      "extra).", places=frozenset({FILE, FLAG})),
    O("progress", BOOL, "Show a progress bar (tqdm.auto: a notebook widget in Jupyter) [on].",
      places=frozenset({PYTHON})),
)
del O

BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
FLAG_OPTIONS = tuple(o for o in OPTIONS if FLAG in o.places)
FILE_OPTIONS = tuple(o for o in OPTIONS if FILE in o.places)
# job-file key -> (accepted types, description for errors)
FILE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {o.name: (o.kind.types, o.kind.wanted) for o in FILE_OPTIONS}
REQUEST_PARAMS = tuple(o.name for o in FILE_OPTIONS if o.request)
RANGES: dict[str, tuple] = {o.name: o.bounds for o in OPTIONS if o.bounds is not None}
POSITIVE = frozenset(o.name for o in OPTIONS if o.positive)
PYTHON_KEYWORDS = frozenset(o.name for o in OPTIONS if PYTHON in o.places)
DATED_PATHS = tuple(o.name for o in OPTIONS if o.dated)


def check_keywords(function: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Raise ``TypeError`` for the first keyword not in ``allowed``, with a did-you-mean."""
    allowed = sorted(allowed)
    for name in given:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise TypeError(f"{function}() got an unexpected keyword argument '{name}'{hint}")


def keyword_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Python values as a job file would hold them: paths as text, tuples as lists, numpy scalars
    as Python numbers; ``None`` means "not given", as an absent flag."""
    converted = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif hasattr(value, "item") and type(value).__module__ == "numpy":
            value = value.item()
        converted[name] = value
    return converted
