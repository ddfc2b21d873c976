"""The job: a TOML job file plus CLI overrides, validated into frozen dataclasses.

A job file is flat: every scalar key has the same name as its ``chatbatch run`` flag (``--max-attempts``
is ``max_attempts``), and a flag given on the command line wins over the file. Tables hold what has
structure: ``response_format``, ``metadata``, ``extra_body`` (any other request-body key, passed
through), ``prices`` (per-model price overrides). Example::

    input = "../data/sample/reviews.csv"      # relative paths are relative to the job file
    output = "../out/reviews-sentiment.parquet"
    model = "gpt-4o-mini"
    system = "You label the sentiment of product reviews."
    template = "Review of {product}: {review}\\nAnswer positive, negative or neutral."
    temperature = 0
    max_completion_tokens = 3
    rpm = 500
    tpm = 200000

    [extra_body]
    store = false

Unknown keys and wrong types are :class:`JobError` naming the file (or flag) and the key. Nothing here
reads the environment: the CLI passes the variables it read in. Date placeholders in the path keys
(``input = "exports/{date}/reviews.csv"``) are resolved here, once, for the run's date
(:mod:`pipeline.dates`): the job holds only resolved paths.
"""

from __future__ import annotations

import base64
import codecs
import datetime
import difflib
import ipaddress
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from . import dates
from .errors import JobError
from .options import DATED_PATHS, FILE_KEYS, POSITIVE, RANGES, REQUEST_PARAMS
from .prompts import json_mode, mentions_json
from .redaction import public_url, url_secrets
from .structured import OutputSpec, build_spec
from .transport import proxy_for

DEFAULT_BASE_URL = "https://api.openai.com/v1"
ALL_KEYS = FILE_KEYS  # every job-file key -> (accepted types, description for errors), from options.py


@dataclass(frozen=True)
class Endpoint:
    """Where requests go, how they authenticate and through which proxy.

    ``url`` may hold credentials the user wrote into ``base_url``: show :attr:`public_url`, never
    ``url``. The key and the proxy (which may hold a password) are never shown by repr().
    """

    url: str = field(repr=False)
    api_key: str | None = field(default=None, repr=False)
    azure: bool = False
    organization: str | None = None
    project: str | None = None
    proxy: str | None = field(default=None, repr=False)  # from HTTPS_PROXY/HTTP_PROXY/NO_PROXY
    basic_auth: str | None = field(default=None, repr=False)  # "user:password" written into base_url

    @property
    def public_url(self) -> str:
        return public_url(self.url)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be printed or stored: the key, and credentials in the URL or the proxy."""
        basic = (self.basic_auth, self.basic_auth.partition(":")[2], _basic_token(self.basic_auth)) \
            if self.basic_auth else ()
        return tuple(s for s in (self.api_key, *basic, *url_secrets(self.url), *url_secrets(self.proxy)) if s)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.basic_auth:
            headers["Authorization"] = f"Basic {_basic_token(self.basic_auth)}"
        if self.api_key:
            if self.azure:
                headers["api-key"] = self.api_key
            else:
                headers["Authorization"] = f"Bearer {self.api_key}"
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        return headers


@dataclass(frozen=True)
class Limits:
    concurrency: int = 32
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    timeout_s: float = 120.0


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 8  # with the 0.25 s doubling backoff: up to ~32 s of outage ridden out
    backoff_base_s: float = 0.25
    backoff_max_s: float = 60.0
    retry_timeouts: bool = True  # False: a timed-out request ends its row (local runs)


@dataclass(frozen=True)
class Job:
    input_path: Path
    output_path: Path
    model: str
    template: str | None
    system: str | None
    messages_column: str | None
    params: Mapping[str, Any]
    endpoint: Endpoint
    required_columns: tuple[str, ...] = ()
    encoding: str = "utf-8"
    null_values: tuple[str, ...] = ()
    limits: Limits = Limits()
    retry: RetrySettings = RetrySettings()
    overwrite: bool = False
    quiet: bool = False
    report: bool = False  # write <output>.report.html after the run (the CLI does)
    column_prefix: str = ""
    progress_interval_s: float = 30.0
    prices_file: Path | None = None
    state_dir: Path | None = None
    cache: bool = False
    cache_dir: Path | None = None
    dedupe: bool = True
    max_cost_usd: float | None = None
    output: OutputSpec | None = None
    validation_retries: int = 2
    local: bool = False
    local_model: Path | None = None
    local_threads: int | None = None
    served_model: str | None = None  # the name sent and answered as, when not ``model`` (a local model's)
    batch_max_requests: int = 50_000
    price_overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    source: str = "command line"
    run_date: datetime.date | None = None  # what {date} in the paths stood for (pipeline/dates.py)

    @property
    def choices_per_request(self) -> int:
        return int(self.params.get("n", 1))

    @property
    def service_tier(self) -> str | None:
        """The ``service_tier`` the job asks for (priced at its own rates: see pipeline.pricing)."""
        value = self.params.get("service_tier")
        return str(value) if value is not None else None

    @property
    def max_output_tokens(self) -> int | None:
        value = self.params.get("max_completion_tokens", self.params.get("max_tokens"))
        return int(value) if value is not None else None


def read_job_file(path: Path) -> dict[str, Any]:
    """Parse a TOML job file into a dict; errors name the file."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise JobError(f"job file not found: {path}") from exc
    except OSError as exc:
        raise JobError(f"cannot read job file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"{path}: not valid TOML: {exc}") from exc


def build_job(
    job_file: Path | None,
    overrides: Mapping[str, Any],
    env: Mapping[str, str],
    api_key: str | None = None,
    require_key: bool = True,
    overrides_from: str | None = None,
    today: Callable[[], datetime.date] = dates.local_today,
) -> Job:
    """Merge the job file (if any) with flag overrides and the environment into a :class:`Job`.

    ``overrides`` holds only flags the user gave (None values are ignored); ``api_key`` is the
    ``--api-key`` flag, which wins over the environment. Errors name an override by its flag, or by
    ``overrides_from`` (e.g. ``"enrich()"``) when the overrides are Python keywords. ``today`` is
    read once, for ``{date}`` in the paths when no ``date`` is given.
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    base_dir = Path.cwd()
    if job_file is not None:
        for key, value in read_job_file(job_file).items():
            values[key], origin[key] = value, str(job_file)
        base_dir = job_file.parent
    for key, value in overrides.items():
        if value is not None:
            values[key], origin[key] = value, overrides_from or "--" + key.replace("_", "-")
    _check_keys(values, origin)
    day = dates.run_date(values.get("date"), origin.get("date", ""), today)
    for key in DATED_PATHS:
        if key in values:
            values[key] = dates.resolve(values[key], day, f"{origin[key]}: key '{key}'")
    paths_from_file = {k for k in ("input", "output", "prices_file", "state_dir", "cache_dir", "local_model")
                       if origin.get(k) == str(job_file)}
    if api_key:
        check_key(api_key, f"{overrides_from}: keyword 'api_key'" if overrides_from else "--api-key")
    job = _assemble(values, origin, env, base_dir, paths_from_file, str(job_file or "command line"),
                    bool(api_key) or not require_key or bool(values.get("local")))
    job = replace(job, run_date=day)
    if api_key:
        job = replace(job, endpoint=replace(job.endpoint, api_key=api_key))
    return job


def _check_keys(values: Mapping[str, Any], origin: Mapping[str, str]) -> None:
    for key, value in values.items():
        where = origin[key]
        if key in ("api_key", "key", "openai_api_key"):
            raise JobError(f"{where}: do not put the API key in a job file; name its variable with api_key_env")
        if key not in ALL_KEYS:
            close = difflib.get_close_matches(key, ALL_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise JobError(f"{where}: unknown key '{key}'{hint}")
        types, wanted = ALL_KEYS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise JobError(f"{where}: key '{key}' must be {wanted}, got {value!r}")
        _check_range(key, value, where)
    if "stop" in values:
        stop = values["stop"]
        if isinstance(stop, list) and not (1 <= len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
            raise JobError(f"{origin['stop']}: key 'stop' must be a string or 1 to 4 strings")
    if not all(isinstance(c, str) for c in values.get("required_columns", [])):
        raise JobError(f"{origin['required_columns']}: key 'required_columns' must be a list of column names")
    if isinstance(values.get("null_values"), list) and not all(isinstance(v, str) for v in values["null_values"]):
        raise JobError(f"{origin['null_values']}: key 'null_values' must be a string or a list of strings")
    if "encoding" in values:
        try:
            codecs.lookup(values["encoding"])
        except LookupError:
            raise JobError(f"{origin['encoding']}: key 'encoding' names no known encoding: "
                           f"{values['encoding']!r} (e.g. utf-8, latin-1, cp1252)") from None
    if "top_logprobs" in values and not values.get("logprobs"):
        raise JobError(f"{origin['top_logprobs']}: 'top_logprobs' needs 'logprobs = true'")
    extra = values.get("extra_body", {})
    for key in extra:
        if key in ALL_KEYS or key in ("model", "messages"):
            raise JobError(f"{origin['extra_body']}: extra_body.{key} — set '{key}' as its own key instead")


def _check_range(key: str, value: Any, where: str) -> None:
    if key not in RANGES:
        return
    low, high = RANGES[key]
    too_low = value < low or (key in POSITIVE and value == 0)
    if too_low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"above {low}" if key in POSITIVE else f"at least {low}"
        raise JobError(f"{where}: key '{key}' must be {bound}, got {value!r}")


def _assemble(values, origin, env, base_dir, paths_from_file, source, env_key_unused) -> Job:
    def path(key: str) -> Path | None:
        if key not in values:
            return None
        raw = Path(values[key]).expanduser()
        return (base_dir / raw) if key in paths_from_file and not raw.is_absolute() else raw

    input_path = path("input")
    if input_path is None:
        raise JobError(f"{source}: no input: give --input or set 'input' in the job file")
    if "model" not in values:
        raise JobError(f"{source}: no model: give --model or set 'model' in the job file")
    if ("template" in values) == ("messages_column" in values):
        raise JobError(f"{source}: give exactly one of 'template' (--template) or 'messages_column' (--messages-column)")
    output_path = path("output") or input_path.with_name(input_path.stem + ".out.parquet")
    params = {k: values[k] for k in REQUEST_PARAMS if k in values}
    params.update(values.get("extra_body", {}))
    spec_where = origin.get("labels") or origin.get("output_schema") or source
    spec = build_spec(values.get("labels"), values.get("output_schema"),
                      mode=values.get("structured_mode", "json_schema"), strict=values.get("strict", True),
                      name=values.get("schema_name", "output"), logprobs=bool(values.get("logprobs")),
                      base_dir=base_dir if origin.get("output_schema") == source else Path.cwd(),
                      where=spec_where, local=bool(values.get("local")))
    if spec is not None:
        if "response_format" in params and spec.request_params():
            raise JobError(f"{spec_where}: 'response_format' is set by 'labels'/'output_schema'; remove it")
        params.update(spec.request_params())
    elif json_mode(params) and "template" in values and not mentions_json(values["template"], values.get("system")):
        raise JobError(f"{origin.get('response_format') or source}: response_format json_object needs the word "
                       "'json' in the messages (the API refuses them otherwise); say it in 'system' or "
                       "'template' (e.g. \"Answer in JSON.\"), or use 'output_schema'")
    return Job(
        input_path=input_path,
        output_path=output_path,
        model=values["model"],
        template=values.get("template"),
        system=values.get("system"),
        messages_column=values.get("messages_column"),
        params=params,
        required_columns=tuple(values.get("required_columns", ())),
        encoding=codecs.lookup(values.get("encoding", "utf-8")).name,
        null_values=_strings(values.get("null_values", ())),
        endpoint=_endpoint(values, env, source, env_key_unused),
        limits=Limits(
            concurrency=values.get("concurrency", Limits.concurrency),
            requests_per_minute=values.get("rpm"),
            tokens_per_minute=values.get("tpm"),
            timeout_s=float(values.get("timeout", Limits.timeout_s)),
        ),
        retry=RetrySettings(
            max_attempts=values.get("max_attempts", RetrySettings.max_attempts),
            backoff_base_s=float(values.get("backoff_base", RetrySettings.backoff_base_s)),
            backoff_max_s=float(values.get("backoff_max", RetrySettings.backoff_max_s)),
        ),
        overwrite=values.get("overwrite", False),
        quiet=values.get("quiet", False),
        report=values.get("report", False),
        column_prefix=values.get("column_prefix", ""),
        progress_interval_s=float(values.get("progress_interval", 30.0)),
        prices_file=path("prices_file"),
        state_dir=path("state_dir"),
        cache=values.get("cache", False),
        cache_dir=path("cache_dir") or _default_cache_dir(env),
        dedupe=values.get("dedupe", True),
        max_cost_usd=values.get("max_cost"),
        output=spec,
        validation_retries=values.get("validation_retries", 2),
        local=values.get("local", False),
        local_model=path("local_model"),
        local_threads=values.get("local_threads"),
        batch_max_requests=values.get("batch_max_requests", 50_000),
        price_overrides=values.get("prices", {}),
        source=source,
    )


def _strings(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _endpoint(values: Mapping[str, Any], env: Mapping[str, str], source: str, env_key_unused: bool) -> Endpoint:
    """The endpoint. ``env_key_unused``: the environment's key will not be sent — a key was passed in
    (``--api-key``), or the run is on a local model, or the command sends nothing (``estimate``) — so
    neither a missing key nor one no header can carry is an error."""
    api_version = values.get("api_version") or None
    base_url = values.get("base_url") or env.get("OPENAI_BASE_URL")
    if api_version and not base_url:
        base_url = env.get("AZURE_OPENAI_ENDPOINT")
    base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
    try:
        host = urlsplit(base_url).hostname or ""
    except ValueError:
        host = ""
    if urlsplit(base_url).scheme not in ("http", "https") or not host:
        raise JobError(f"{source}: base_url must be an http(s) URL, got {public_url(base_url)!r}")
    azure = bool(api_version) or host.endswith((".openai.azure.com", ".cognitiveservices.azure.com"))
    if azure and not api_version and "/openai/v1" not in base_url:
        raise JobError(f"{source}: an Azure OpenAI endpoint needs 'api_version' (e.g. 2024-10-21)")
    key_names = [values["api_key_env"]] if "api_key_env" in values else (
        ["AZURE_OPENAI_API_KEY", "OPENAI_API_KEY"] if azure else ["OPENAI_API_KEY"])
    key_name = next((n for n in key_names if env.get(n)), None)
    api_key = env[key_name] if key_name else None
    if api_key and not env_key_unused:
        check_key(api_key, f"${key_name}")
    if not api_key and not env_key_unused and not _is_loopback(host):
        raise JobError(f"no API key: set {key_names[0]} in the environment (or pass --api-key)")
    base_url, basic_auth = _split_userinfo(base_url)
    if basic_auth and api_key and not azure:
        raise JobError(f"{source}: base_url holds a user name and password, and an API key is set: both "
                       "would go in the Authorization header; remove one (a loopback endpoint needs no key)")
    url = _chat_url(base_url, azure, api_version, values.get("deployment") or values["model"])
    proxy = proxy_for(url, env)
    if proxy is not None and urlsplit(proxy).scheme not in ("http", "https"):
        raise JobError(f"the proxy for {public_url(url)} from the environment ({public_url(proxy)}) is not "
                       "an http(s) proxy; only http(s) proxies are supported")
    return Endpoint(
        url=url,
        api_key=api_key,
        azure=azure,
        organization=values.get("organization") or env.get("OPENAI_ORG_ID") or None,
        project=values.get("project") or env.get("OPENAI_PROJECT_ID") or None,
        proxy=proxy,
        basic_auth=basic_auth,
    )


def check_key(key: str, where: str) -> None:
    """Refuse an API key no HTTP header can carry (a newline from ``$(cat key.txt)``, a ``\\r``, a
    space, another control character), naming ``where`` it came from and what is wrong — never any
    part of the key."""
    bad = next((i for i, char in enumerate(key) if not " " < char < "\x7f"), None)
    if bad is None:
        return
    what = KEY_CHARACTERS.get(key[bad], "a control character" if key[bad] < " " or key[bad] == "\x7f"
                              else "a non-ASCII character")
    if bad == len(key) - 1 or not key[bad:].strip():
        place = f"ends with {what}"
    elif bad == 0:
        place = f"starts with {what}"
    else:
        place = f"contains {what} at position {bad + 1} of {len(key)}"
    raise JobError(f"the API key from {where} {place}; an API key is one line of printable characters "
                   "(a trailing newline often comes from a key file: strip it, e.g. $(tr -d '\\r\\n' < key.txt))")


KEY_CHARACTERS = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", " ": "a space"}


def _split_userinfo(base_url: str) -> tuple[str, str | None]:
    """(``base_url`` without ``user:password@``, ``"user:password"`` decoded, or None)."""
    parts = urlsplit(base_url)
    if "@" not in parts.netloc:
        return base_url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), f"{unquote(user)}:{unquote(password)}"


def _basic_token(user_password: str) -> str:
    return base64.b64encode(user_password.encode()).decode()


def _chat_url(base_url: str, azure: bool, api_version: str | None, deployment: str) -> str:
    """The chat-completions URL; a query in ``base_url`` (``?api-key=...``) stays after the path."""
    parts = urlsplit(base_url)
    path, query = parts.path.rstrip("/"), parts.query
    if not azure or "/openai/v1" in path:
        path += "/chat/completions"
    else:
        if "/openai/deployments/" not in path:
            path = f"{path}/openai/deployments/{deployment}"
        path += "/chat/completions"
        query = "&".join(q for q in (query, f"api-version={api_version}") if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "chatbatch"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
