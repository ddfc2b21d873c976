"""chatbatch against its peers: the same jobs side by side on loopback servers.

Tools, each run as a child process pinned to ``--client-cpu`` (the server gets ``--server-cpu``):

* ``chatbatch`` — the real CLI, ``python -m pipeline run ...`` from the repository root;
* ``curator`` — Bespoke Curator (``bespokelabs-curator``) through ``curator.LLM`` (bench/peer_clients.py);
* ``litellm`` — LiteLLM's ``Router`` and an asyncio loop over ``acompletion`` (bench/peer_clients.py);
* ``cookbook`` — the OpenAI cookbook's parallel processor, re-implemented in bench/cookbook_processor.py.

Curator and LiteLLM are not project dependencies: they are installed from PyPI, once, into a separate
virtualenv (``bench/.peers-venv``, git-ignored; ``--reinstall`` builds it again), which also runs the
cookbook processor. Once it exists, the script runs itself again inside a new network namespace that
has only a loopback interface (``unshare --net``; root needed), so no tool can reach anything but
127.0.0.1 whatever it tries; telemetry is switched off by environment as well (Curator's
``TELEMETRY_ENABLED``, its viewer, LiteLLM's remote cost map, Hugging Face offline). ``--no-netns``
skips the namespace (the environment switches stay).

Scenarios (``--scenarios``, all by default):

=========  ==================================================================================
right      tests/fakeapi.py enforcing ``--rpm`` (1,200) over a ``--bucket-s`` (1 s) bucket with
           x-ratelimit-limit/remaining/reset headers and 429s + retry-after; every tool is
           given that limit; ``--limit-latency`` (0.2 s) per reply; ``--limit-rows`` (400) rows
high       the same server; every tool is given twice the limit
none       the same server; no tool is given a limit (the cookbook falls back to its defaults,
           1,500 RPM and 125k TPM; Curator reads the headers of its start-up probe)
faults     tests/fakeapi.py without a limit, ``--fault-latency`` (0.1 s); one row in ten fails
           its first attempt: 500, 503, a connection reset or truncated JSON in turn
zero       bench/fastserver.py, no latency, ``--rows`` (2,000) rows
slow       bench/fastserver.py, 200 ms per reply
=========  ==================================================================================

Without a limit (faults, zero, slow) a tool that needs one is given a limit far above what it can
reach (10M RPM), so it is not the limiter that is measured. Every tool has at most
``--concurrency`` (100) requests in flight (the cookbook has no such setting: aiohttp's default pool
of 100 connections bounds it). The limit servers also send tokens headers for a TPM of 100M, never
binding. They answer Curator's start-up probe (a request with empty ``messages``, a 400) with the
rate-limit headers, which Curator's limit detection relies on (``--no-headers-on-400``: without them).

Figures per tool × scenario: ``share`` = requests the server accepted (not 429) per second over the
steady window — from ``--settle-s`` (5 s) after the first request to the last accepted one — over the
limit; ``429s`` in all and in the first 5 s; ``1st s`` = requests that arrived in the first second;
``lost`` = input rows without a successful output; ``reqs`` = chat requests the server saw, and their
rate from the first arrival to the last (start-up and file I/O left out); wall seconds (spawn to
exit); CPU seconds and peak RSS of the client's process tree (``os.wait4``).

    python bench/peers.py                                  # the whole grid: 10-13 minutes on this 2-core machine
    python bench/peers.py --scenarios right,none --tools chatbatch,curator --limit-rows 300
    python bench/peers.py --json bench/results/peers.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchlib import (API_KEY, BENCH_DIR, MODEL, PROMPT_FMT, install_sigterm_handler, pin_cpu, run_child,
                      start_server)

REPO_DIR = BENCH_DIR.parent
VENV_DIR = BENCH_DIR / ".peers-venv"
VENV_PY = VENV_DIR / "bin" / "python"
READY = VENV_DIR / "peers-ready.json"
PEER_PACKAGES = ("bespokelabs-curator", "litellm")
TOOLS = ("chatbatch", "curator", "litellm", "cookbook")
UNBOUNDED_RPM, UNBOUNDED_TPM, SERVER_TPM = 10_000_000, 10_000_000_000, 100_000_000
FAULTS = ("[[status:500:1]]", "[[status:503:1]]", "[[reset:1]]", "[[truncate:1]]")

sys.path[1:1] = [str(REPO_DIR), str(REPO_DIR / "tests")]
from fakeapi import FakeOpenAI, Reply, limit_headers  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str  # "fake" (tests/fakeapi.py) or "fast" (bench/fastserver.py)
    latency_s: float
    rows: int
    server_rpm: int | None = None  # the limit the server enforces
    given_factor: float | None = None  # the limit each tool is told: factor × server_rpm
    faults: bool = False


def scenarios(args: argparse.Namespace) -> dict[str, Scenario]:
    limit = dict(server="fake", latency_s=args.limit_latency, rows=args.limit_rows, server_rpm=args.rpm)
    return {
        "right": Scenario("right", given_factor=1.0, **limit),
        "high": Scenario("high", given_factor=2.0, **limit),
        "none": Scenario("none", **limit),
        "faults": Scenario("faults", "fake", args.fault_latency, args.rows, faults=True),
        "zero": Scenario("zero", "fast", 0.0, args.rows),
        "slow": Scenario("slow", "fast", 0.2, args.rows),
    }


# ------------------------------------------------------------------ the venv and the namespace ---

def ensure_venv(reinstall: bool) -> dict:
    """Build the peers' virtualenv once; return the installed versions."""
    if reinstall and VENV_DIR.exists():
        shutil.rmtree(VENV_DIR)
    if not READY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
        subprocess.run([str(VENV_PY), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
        code = ("import importlib.metadata as m, json, sys; "
                "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))")
        versions = subprocess.run([str(VENV_PY), "-c", code, *PEER_PACKAGES, "aiohttp", "openai"],
                                  check=True, capture_output=True, text=True).stdout
        READY.write_text(versions)
    return json.loads(READY.read_text())


def reexec_in_netns() -> None:
    """Run this script again in a network namespace with only loopback (never returns on success)."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        sys.exit("peers.py: cannot create a network namespace (unshare --net needs root); "
                 "rerun with --no-netns to rely on the telemetry switches alone")
    script = 'ip link set lo up && exec "$@"'
    os.execvp("unshare", ["unshare", "--net", "--", "sh", "-c", script, "sh",
                          sys.executable, *sys.argv, "--in-netns"])


def peer_env(home: Path) -> dict:
    """Environment for every child: dummy key, loopback only, telemetry and remote look-ups off."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        OPENAI_API_KEY=API_KEY, HOME=str(home), TELEMETRY_ENABLED="false", CURATOR_VIEWER="0",
        CURATOR_DISABLE_RICH_DISPLAY="1", CURATOR_CACHE_DIR=str(home / "curator"),
        LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False", DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(home / "hf"),
        TIKTOKEN_CACHE_DIR=str(tiktoken_cache()), TOKENIZERS_PARALLELISM="false")
    env.pop("OPENAI_BASE_URL", None)
    return env


def tiktoken_cache() -> Path:
    """A tiktoken cache holding cl100k_base, filled from chatbatch's offline copy (no download)."""
    from pipeline.tokens import load_encoding

    cache = VENV_DIR / "cache"
    load_encoding("cl100k_base", cache_dir=cache)
    return cache / "tiktoken"


# ----------------------------------------------------------------------------------- servers ---

class LimitServer(FakeOpenAI):
    """tests/fakeapi.py, plus the rate-limit headers on a 400 (Curator's start-up probe reads them)."""

    headers_on_400 = True

    def _decide(self, request, entry, headers):
        try:
            return super()._decide(request, entry, headers)
        except Reply as err:
            if err.status == 400 and not err.headers and self.rpm and self.headers_on_400:
                err.headers = limit_headers(self._bucket("requests", self.rpm), self._bucket("tokens", self.tpm))
            raise


@contextlib.contextmanager
def serve(scenario: Scenario, args: argparse.Namespace):
    """Yield (base_url, read_figures) for a fresh server of the scenario's kind."""
    if scenario.server == "fast":
        with start_server(scenario.latency_s, cpu=None) as srv:
            srv.stats()
            yield srv.base_url, lambda: fast_figures(srv.stats())
        return
    tpm = SERVER_TPM if scenario.server_rpm else None
    with LimitServer(rpm=scenario.server_rpm, tpm=tpm, latency_s=scenario.latency_s) as fake:
        fake.rpm_window_s, fake.headers_on_400 = args.bucket_s, not args.no_headers_on_400
        yield fake.base_url, lambda: server_figures(fake.requests, scenario, args.settle_s)


def fast_figures(stats: dict) -> dict:
    window = stats["window_s"]
    return {"reqs": stats["requests"], "req_per_s": stats["requests"] / window if window > 0 else None}


def server_figures(requests: list[dict], scenario: Scenario, settle_s: float) -> dict:
    chat = [e for e in requests if isinstance(e["body"], dict) and e["body"].get("messages")]
    if not chat:
        return {"reqs": 0}
    t0 = min(e["time"] for e in chat)
    accepted = [e["time"] for e in chat if e["status"] != 429]
    limited = [e["time"] for e in chat if e["status"] == 429]
    span = max(e["time"] for e in chat) - t0
    figures = {"reqs": len(chat), "req_per_s": len(chat) / span if span > 0 else None,
               "429s": len(limited), "429s_5s": sum(t < t0 + 5 for t in limited)}
    if scenario.server_rpm and accepted:
        figures["first_s"] = sum(e["time"] < t0 + 1 for e in chat)
        steady = sorted(t for t in accepted if t >= t0 + settle_s)
        if len(steady) > 1 and steady[-1] - steady[0] >= 1:  # n arrivals span n - 1 intervals
            figures["share"] = (len(steady) - 1) / (steady[-1] - steady[0]) / (scenario.server_rpm / 60)
    return figures


# ------------------------------------------------------------------------------------- tools ---

def write_inputs(scenario: Scenario, workdir: Path) -> None:
    prompts = [PROMPT_FMT.format(i) + (f" {FAULTS[i // 10 % 4]}" if scenario.faults and i % 10 == 5 else "")
               for i in range(scenario.rows)]
    pq.write_table(pa.table({"i": list(range(scenario.rows)), "prompt": prompts}), workdir / "rows.parquet")
    with (workdir / "rows.jsonl").open("w") as fh, (workdir / "requests.jsonl").open("w") as req:
        for i, text in enumerate(prompts):
            fh.write(json.dumps({"i": i, "prompt": text}) + "\n")
            body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "metadata": {"i": i}}
            req.write(json.dumps(body) + "\n")


def given_limit(scenario: Scenario) -> float | None:
    """The RPM a tool is told: None when the scenario gives none."""
    if scenario.server_rpm is None:
        return UNBOUNDED_RPM
    return scenario.server_rpm * scenario.given_factor if scenario.given_factor else None


def command(tool: str, scenario: Scenario, base_url: str, workdir: Path, concurrency: int) -> list[str]:
    rpm = given_limit(scenario)
    if tool == "chatbatch":
        cmd = [sys.executable, "-m", "pipeline", "run", "--input", str(workdir / "rows.parquet"),
               "--output", str(workdir / "out.parquet"), "--template", "{prompt}", "--model", MODEL,
               "--base-url", base_url, "--concurrency", str(concurrency), "--quiet", "--overwrite", "--fresh"]
        return cmd + (["--rpm", f"{rpm:g}"] if rpm and rpm != UNBOUNDED_RPM else [])
    if tool == "cookbook":
        cmd = [str(VENV_PY), str(BENCH_DIR / "cookbook_processor.py"), "--requests_filepath",
               str(workdir / "requests.jsonl"), "--save_filepath", str(workdir / "cookbook.jsonl"),
               "--request_url", base_url + "/chat/completions"]
        if rpm:
            cmd += ["--max_requests_per_minute", f"{rpm:g}"]
        return cmd + (["--max_tokens_per_minute", f"{UNBOUNDED_TPM}"] if rpm == UNBOUNDED_RPM else [])
    cmd = [str(VENV_PY), str(BENCH_DIR / "peer_clients.py"), tool, "--rows", str(workdir / "rows.jsonl"),
           "--base-url", base_url, "--concurrency", str(concurrency), "--workdir", str(workdir / "peer"),
           "--result", str(workdir / "peer.json")]
    if rpm and (tool == "curator" or rpm != UNBOUNDED_RPM):
        cmd += ["--rpm", f"{rpm:g}"]
    return cmd + (["--tpm", f"{UNBOUNDED_TPM}"] if tool == "curator" and rpm == UNBOUNDED_RPM else [])


def done_rows(tool: str, workdir: Path) -> tuple[set[int], str | None]:
    """Row indices with a successful output, and an error message when the tool reported one."""
    if tool == "chatbatch":
        out = workdir / "out.parquet"
        if not out.exists():
            return set(), "no output file"
        table = pq.read_table(out, columns=["i", "status"]).to_pydict()
        return {i for i, s in zip(table["i"], table["status"]) if s == "ok"}, None
    if tool == "cookbook":
        path = workdir / "cookbook.jsonl"
        lines = [json.loads(line) for line in path.open()] if path.exists() else []
        return {meta["i"] for _, reply, meta in lines if isinstance(reply, dict) and reply.get("choices")}, None
    path = workdir / "peer.json"
    if not path.exists():
        return set(), "no result file"
    result = json.loads(path.read_text())
    return set(result["done"]), result["error"]


def run_one(tool: str, scenario: Scenario, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"peers-{tool}-") as tmp:
        workdir = Path(tmp)
        write_inputs(scenario, workdir)
        (workdir / "home").mkdir()
        with serve(scenario, args) as (base_url, figures):
            cmd = command(tool, scenario, base_url, workdir, args.concurrency)
            res = run_child(cmd, cpu=args.client_cpu, timeout=args.timeout, env=peer_env(workdir / "home"),
                            cwd=str(REPO_DIR))
            server = figures()
        done, error = done_rows(tool, workdir)
    row = {"scenario": scenario.name, "tool": tool, "rows": scenario.rows, "lost": scenario.rows - len(done),
           "wall_s": res.wall_s, "cpu_s": res.cpu_s, "rss_mb": res.maxrss_kb / 1024, "rc": res.returncode,
           "timed_out": res.timed_out, "error": error, **server}
    if res.returncode or res.timed_out or error:
        row["stderr_tail"] = res.stderr[-600:]
    return row


# ----------------------------------------------------------------------------------- report ---

def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    head = ("| scenario | tool | share of limit | 429s | 429s in first 5 s | sent in 1st s | rows lost "
            "| requests | server req/s | wall s | CPU s | peak RSS MB |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        note = " (timed out)" if r["timed_out"] else (" (exit %s)" % r["rc"] if r["rc"] else "")
        cells = [r["scenario"], r["tool"] + note, fmt(r.get("share"), ".3f"), fmt(r.get("429s"), "d"),
                 fmt(r.get("429s_5s"), "d"), fmt(r.get("first_s"), "d"), str(r["lost"]), f"{r['reqs']:,}",
                 fmt(r.get("req_per_s"), ",.0f"), f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="right,high,none,faults,zero,slow")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--rows", type=int, default=2000, help="rows in faults, zero and slow")
    parser.add_argument("--limit-rows", type=int, default=400, help="rows in right, high and none")
    parser.add_argument("--rpm", type=int, default=1200, help="the limit the server enforces")
    parser.add_argument("--bucket-s", type=float, default=1.0, help="the server's RPM bucket holds rpm × this / 60")
    parser.add_argument("--limit-latency", type=float, default=0.2)
    parser.add_argument("--fault-latency", type=float, default=0.1)
    parser.add_argument("--settle-s", type=float, default=5.0, help="left out of the share's steady window")
    parser.add_argument("--no-headers-on-400", action="store_true",
                        help="answer a 400 without rate-limit headers (Curator then falls back to its defaults)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds before a run is killed")
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--reinstall", action="store_true", help="build the peers' virtualenv again")
    parser.add_argument("--no-netns", action="store_true", help="do not run in a loopback-only network namespace")
    parser.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    versions = ensure_venv(args.reinstall and not args.in_netns)
    if not (args.in_netns or args.no_netns):
        reexec_in_netns()
    install_sigterm_handler()
    pin_cpu(args.server_cpu)  # the in-process fake server; fastserver children inherit it
    chosen = [scenarios(args)[name] for name in args.scenarios.split(",")]
    tools = args.tools.split(",")
    started, load_before = datetime.datetime.now(datetime.timezone.utc), os.getloadavg()
    results = []
    for scenario in chosen:
        for tool in tools:
            results.append(run_one(tool, scenario, args))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "stderr_tail"}), flush=True)
    load_after = os.getloadavg()
    print(f"\n{started:%Y-%m-%d %H:%M} UTC, load average {load_before[0]:.1f} → {load_after[0]:.1f} "
          f"(1 min), {os.cpu_count()} cores; {', '.join(f'{k} {v}' for k, v in versions.items())}; "
          f"rpm {args.rpm} over a {args.bucket_s:g} s bucket, concurrency {args.concurrency}\n")
    print(table(results))
    for r in results:
        if r.get("stderr_tail"):
            print(f"\n{r['scenario']}/{r['tool']}: rc={r['rc']} error={r['error']}\n{r['stderr_tail']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"started": started.isoformat(), "load": [load_before, load_after],
                                         "versions": versions, "args": vars(args) | {"json": str(args.json)},
                                         "runs": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
