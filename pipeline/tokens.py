"""Token estimates used to budget tokens-per-minute before a request is sent.

Billing never uses these: token counts in the output come from the API's ``usage``. Until exact
offline counting lands, the estimate is deliberately on the high side — a quarter of the UTF-8 bytes
of each message, rounded up, plus OpenAI's per-message overhead (about 4 tokens per message and 3 to
prime the reply) — so that a tokens-per-minute budget errs towards caution, not 429s.

When the job sets no ``max_completion_tokens``/``max_tokens``, :data:`ASSUMED_OUTPUT_TOKENS` per
choice stands in for the output.
"""

from __future__ import annotations

from typing import Any, Iterable

TOKENS_PER_MESSAGE = 4
REPLY_PRIMING_TOKENS = 3
ASSUMED_OUTPUT_TOKENS = 1024


def estimate_prompt_tokens(messages: Iterable[dict[str, Any]]) -> int:
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        text_bytes = len(str(content or "").encode()) + len(str(message.get("name") or ""))
        total += TOKENS_PER_MESSAGE + (text_bytes + 3) // 4
    return total


def request_token_cost(prompt_tokens: int, max_output_tokens: int | None, choices: int) -> int:
    """Prompt tokens plus the most the reply may use, as the TPM budget counts it."""
    output = max_output_tokens if max_output_tokens is not None else ASSUMED_OUTPUT_TOKENS
    return prompt_tokens + output * choices
