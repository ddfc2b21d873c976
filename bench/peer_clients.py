"""The peers' side of ``bench/peers.py``: one job run through Bespoke Curator or LiteLLM.

Runs inside the separate virtualenv that ``peers.py`` builds (``bench/.peers-venv``), never in the
project's environment. Each tool is driven through its documented API, pointed at the loopback server:

* ``curator``: a ``curator.LLM`` subclass (``prompt`` returns the row's prompt, ``parse`` keeps the row
  index and the reply) with ``backend="openai"`` and ``backend_params`` ``base_url``, ``api_key``,
  ``max_concurrent_requests``, ``require_all_responses=False`` (so a run with failed rows still
  returns the rows that succeeded) and, when given, ``max_requests_per_minute`` /
  ``max_tokens_per_minute``; otherwise Curator reads the limits from the headers of the probe request
  it sends at start-up, and falls back to its defaults (200 RPM, 100k TPM) when there are none.
* ``litellm``: ``litellm.Router`` with one deployment (``openai/<model>``, ``api_base``, ``api_key``,
  and ``rpm`` in its ``litellm_params`` when given, with ``routing_strategy="usage-based-routing-v2"``,
  the strategy that checks ``rpm`` before each call) and its default retries (``num_retries`` 2);
  an asyncio loop over ``router.acompletion`` holds at most ``--concurrency`` calls in flight.

Input: a JSONL file of ``{"i": row index, "prompt": text}``. Output (``--result``): a JSON object
``{"done": [row indices with a non-empty reply], "error": null or the exception that ended the run}``.

    bench/.peers-venv/bin/python bench/peer_clients.py curator --rows rows.jsonl --base-url URL \\
        --concurrency 100 [--rpm 1200 --tpm 100000000] --result out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

MODEL = "gpt-4o-mini"
API_KEY = "sk-bench"


def read_rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return [json.loads(line) for line in fh]


def run_curator(rows: list[dict], args: argparse.Namespace) -> list[int]:
    from bespokelabs import curator

    class Job(curator.LLM):
        def prompt(self, row: dict) -> str:
            return row["prompt"]

        def parse(self, row: dict, response: str) -> dict:
            return {"i": row["i"], "reply": response}

    params = {"base_url": args.base_url, "api_key": API_KEY, "max_concurrent_requests": args.concurrency,
              "require_all_responses": False}
    if args.rpm:
        params["max_requests_per_minute"] = int(args.rpm)
    if args.tpm:
        params["max_tokens_per_minute"] = int(args.tpm)
    job = Job(model_name=MODEL, backend="openai", backend_params=params)
    result = job(rows, working_dir=args.workdir)
    return [r["i"] for r in result.dataset if r.get("reply")]


def run_litellm(rows: list[dict], args: argparse.Namespace) -> list[int]:
    import litellm
    from litellm import Router

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    params = {"model": f"openai/{MODEL}", "api_base": args.base_url, "api_key": API_KEY}
    options = {}
    if args.rpm:
        params["rpm"] = int(args.rpm)
        options["routing_strategy"] = "usage-based-routing-v2"
    router = Router(model_list=[{"model_name": MODEL, "litellm_params": params}], **options)
    return asyncio.run(_litellm_rows(router, rows, args.concurrency))


async def _litellm_rows(router, rows: list[dict], concurrency: int) -> list[int]:
    gate = asyncio.Semaphore(concurrency)

    async def one(row: dict) -> int | None:
        async with gate:
            try:
                reply = await router.acompletion(model=MODEL, messages=[{"role": "user", "content": row["prompt"]}])
            except Exception as exc:  # per row: a failed row is a lost row, the run goes on
                logging.warning("row %s failed: %s", row["i"], type(exc).__name__)
                return None
            return row["i"] if reply.choices and reply.choices[0].message.content else None

    results = await asyncio.gather(*(one(row) for row in rows))
    return [i for i in results if i is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=["curator", "litellm"])
    parser.add_argument("--rows", type=Path, required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rpm", type=float)
    parser.add_argument("--tpm", type=float)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = read_rows(args.rows)
    run = run_curator if args.tool == "curator" else run_litellm
    done, error = [], None
    try:
        done = run(rows, args)
    except Exception as exc:  # last resort: report what ended the run instead of a traceback only
        error = f"{type(exc).__name__}: {exc}"
    args.result.write_text(json.dumps({"done": done, "error": error}))


if __name__ == "__main__":
    main()
