"""What a model can take: its context window and its largest reply, from a dated data file.

``data/models.json`` holds both for the current OpenAI chat models (``as_of`` and ``source`` say
where from). Names resolve as prices do (``gpt-4o-2024-08-06`` → ``gpt-4o``). Used by
``chatbatch estimate`` (rows over the context window, the output upper bound) and by the cost cap
(the most a request can cost when the job sets no maximum output).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from .pricing import resolve_name


@dataclass(frozen=True)
class ModelLimits:
    context_window: int
    max_output_tokens: int


@lru_cache(maxsize=1)
def _table() -> dict[str, ModelLimits]:
    data = json.loads(resources.files("pipeline").joinpath("data/models.json").read_text())
    return {name: ModelLimits(**fields) for name, fields in data["models"].items()}


def model_limits(model: str | None) -> ModelLimits | None:
    """The model's limits, or None for a model the table does not know."""
    name = resolve_name(model, _table())
    return _table()[name] if name else None
