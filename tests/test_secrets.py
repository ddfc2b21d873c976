"""The key never leaks: not from an echoing server (whatever the offset of the 500-character cut),
not from base_url credentials, not into the local server's environment, not from the last resort."""

import json
import sqlite3
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SECRET_KEY
from pipeline import cli as cli_module
from pipeline.errors import JobError
from pipeline.jobspec import build_job
from pipeline.local import server_environment
from pipeline.logs import Log
from pipeline.redaction import public_url, redact, url_secrets

# offsets of the echoed key in the server's message: around the 500-character cut, and far from it
OFFSETS = [0, 470, 474, 480, 490, 495, 497, 499, 500, 501, 520]
WRONG_KEY = "sk-wrong-KEY-0987654321xyz"


def leaks(text: str, key: str) -> bool:
    """Whether ``text`` holds the key or any prefix of it of 3 characters or more."""
    return any(key[:n] in text for n in range(3, len(key) + 1))


def everything_written(folder: Path) -> str:
    """The text of every file under ``folder``: Parquet cells, SQLite rows and raw bytes alike."""
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            parts += [json.dumps(table.to_pylist(), default=str), str(pq.read_metadata(path).metadata)]
        elif path.name == "journal.sqlite":
            with sqlite3.connect(path) as db:
                parts += [repr(db.execute(f"SELECT * FROM {t}").fetchall()) for t in ("rows", "meta", "batches")]
        parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def write_input(tmp_path, texts) -> Path:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": texts}), path)
    return path


def test_run_redacts_an_echoed_key_before_cutting_the_message(cli, fake, tmp_path):
    fake.echo_key_at = lambda prompt: int(prompt.rsplit(" ", 1)[-1]) if prompt else None
    inp = write_input(tmp_path, [f"[[status:400]] echo at {offset}" for offset in OFFSETS] + ["fine"])
    out = tmp_path / "out.parquet"
    proc = cli.run("run", "--input", inp, "--output", out, "--template", "{text}", "--model", "gpt-4o-mini",
                   "--base-url", fake.base_url, "--max-attempts", "1")
    assert proc.returncode == 1, proc.stderr
    rows = pq.read_table(out).to_pylist()
    assert [r["status"] for r in rows] == ["error"] * len(OFFSETS) + ["ok"]
    for offset, row in zip(OFFSETS, rows):
        message = row["error_message"]
        assert len(message) <= len("HTTP 400: ") + 500
        assert message.startswith("HTTP 400: " + "x" * min(offset, 490)), offset
        assert not leaks(message, SECRET_KEY), (offset, message[-40:])
    with sqlite3.connect(tmp_path / "out.parquet.state" / "journal.sqlite") as db:
        journaled = db.execute("SELECT count(*) FROM rows WHERE status = 'error'").fetchone()[0]
    assert journaled == len(OFFSETS)  # row errors are journaled: their text was checked there too
    assert not leaks(everything_written(tmp_path) + proc.stdout + proc.stderr, SECRET_KEY)


@pytest.mark.parametrize("offset", [490, 497])
def test_run_stopped_by_a_401_echoing_the_key_prints_and_stores_none_of_it(cli, fake, tmp_path, offset):
    fake.echo_key_at = offset
    inp = write_input(tmp_path, ["a", "b"])
    proc = cli.run("run", "--input", inp, "--output", tmp_path / "out.parquet", "--template", "{text}",
                   "--model", "gpt-4o-mini", "--base-url", fake.base_url, env={"OPENAI_API_KEY": WRONG_KEY})
    assert proc.returncode == 3 and "HTTP 401: xxx" in proc.stderr, proc.stderr
    assert not leaks(everything_written(tmp_path) + proc.stdout + proc.stderr, WRONG_KEY)


@pytest.mark.parametrize("offset", [0, 490, 497, 520])
def test_batch_submit_refused_with_an_echoed_key_prints_none_of_it(cli, fake, tmp_path, offset):
    fake.echo_key_at = offset
    inp = write_input(tmp_path, ["a", "b"])
    proc = cli.run("batch", "submit", "--input", inp, "--output", tmp_path / "out.parquet", "--template",
                   "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url,
                   env={"OPENAI_API_KEY": WRONG_KEY})
    assert proc.returncode == 3 and "HTTP 401" in proc.stderr, proc.stderr
    assert not leaks(everything_written(tmp_path) + proc.stdout + proc.stderr, WRONG_KEY)


@pytest.mark.parametrize("offset", [480, 497])
def test_batch_collect_redacts_a_key_echoed_in_error_lines(cli, fake, tmp_path, offset):
    fake.batch_polls_per_step = 0
    inp = write_input(tmp_path, ["[[status:400]] x", "fine"])
    args = ["--input", inp, "--output", tmp_path / "out.parquet", "--template", "{text}", "--model",
            "gpt-4o-mini", "--base-url", fake.base_url, "--quiet"]
    assert cli.run("batch", "submit", *args).returncode == 0
    fake.echo_key_at = lambda prompt: offset if prompt else None  # the error file's line only
    proc = cli.run("batch", "collect", *args, "--wait", "--poll-interval", "0")
    assert proc.returncode == 1, proc.stderr
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert rows[0]["status"] == "error" and "x" * 400 in rows[0]["error_message"]
    assert not leaks(everything_written(tmp_path) + proc.stdout + proc.stderr, SECRET_KEY)


def test_credentials_in_base_url_are_neither_stored_nor_printed(cli, fake, tmp_path):
    inp = write_input(tmp_path, ["a", "b"])
    base_url = fake.base_url + "?api-key=QUERYSECRET123"
    proc = cli.run("run", "--input", inp, "--output", tmp_path / "out.parquet", "--template", "{text}",
                   "--model", "gpt-4o-mini", "--base-url", base_url)
    assert proc.returncode == 0, proc.stderr
    assert fake.requests[0]["path"] == "/v1/chat/completions"  # the query stays after the path
    assert fake.requests[0]["query"] == {"api-key": "QUERYSECRET123"}
    with sqlite3.connect(tmp_path / "out.parquet.state" / "journal.sqlite") as db:
        fingerprint = json.loads(db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()[0])
    assert fingerprint["endpoint"] == fake.base_url + "/chat/completions"
    assert "QUERYSECRET" not in everything_written(tmp_path) + proc.stdout + proc.stderr

    batch_args = ["--input", inp, "--output", tmp_path / "batch.parquet", "--template", "{text}", "--model",
                  "gpt-4o-mini", "--base-url", base_url, "--json"]
    submitted = cli.run("batch", "submit", *batch_args)
    assert submitted.returncode == 0, submitted.stderr
    assert "QUERYSECRET" not in everything_written(tmp_path) + submitted.stdout + submitted.stderr

    bad = cli.run("estimate", "--input", inp, "--template", "{text}", "--model", "gpt-4o-mini",
                  "--base-url", "ftp://me:PASSWORD-42@example.invalid/v1")
    assert bad.returncode == 2 and "ftp://example.invalid/v1" in bad.stderr
    assert "PASSWORD-42" not in bad.stderr and "me:" not in bad.stderr


def test_user_and_password_in_base_url_authenticate_and_stay_private(cli, tmp_path):
    from fakeapi import FakeOpenAI

    inp = write_input(tmp_path, ["a"])
    with FakeOpenAI() as open_server:
        base_url = open_server.base_url.replace("http://", "http://me:PASSWORD-77@")
        proc = cli.run("run", "--input", inp, "--output", tmp_path / "out.parquet", "--template", "{text}",
                       "--model", "gpt-4o-mini", "--base-url", base_url, drop_env=["OPENAI_API_KEY"])
        sent = open_server.requests[0]["headers"]["authorization"]
    assert proc.returncode == 0, proc.stderr
    assert sent == "Basic bWU6UEFTU1dPUkQtNzc="  # base64("me:PASSWORD-77")
    written = everything_written(tmp_path) + proc.stdout + proc.stderr
    assert "PASSWORD-77" not in written and "bWU6UEFTU1dPUkQtNzc" not in written


def test_job_fingerprint_and_redaction_drop_url_credentials():
    url = "https://me:pa%40ss@example.com/v1/chat/completions?api-version=1&api-key=QKEY1234"
    assert public_url(url) == "https://example.com/v1/chat/completions?api-version=1"
    assert {"pa%40ss", "pa@ss", "QKEY1234", "me:pa%40ss"} <= set(url_secrets(url))
    assert "me" not in url_secrets(url)  # a user name alone is no secret (and would redact words)
    base_url = "https://me:pa%40ss@example.com/v1?api-key=QKEY1234"
    with pytest.raises(JobError, match="user name and password, and an API key"):
        build_job(None, {"input": "x.csv", "template": "{a}", "model": "m", "base_url": base_url},
                  {"OPENAI_API_KEY": "sk-envkey-1234"})
    base_url = "https://example.com/v1?api-key=QKEY1234"
    job = build_job(None, {"input": "x.csv", "template": "{a}", "model": "m", "base_url": base_url},
                    {"OPENAI_API_KEY": "sk-envkey-1234"})
    assert job.endpoint.url == "https://example.com/v1/chat/completions?api-key=QKEY1234"
    assert job.endpoint.public_url == "https://example.com/v1/chat/completions"
    assert job.endpoint.headers()["Authorization"] == "Bearer sk-envkey-1234"
    assert "sk-envkey-1234" in job.endpoint.secrets and "QKEY1234" in job.endpoint.secrets
    assert "sk-envkey" not in repr(job) and "QKEY" not in repr(job)
    assert redact("a sk-envkey-1234 b QKEY1234", job.endpoint.secrets) == "a [redacted] b [redacted]"


def test_the_local_server_environment_holds_no_keys():
    env = {"PATH": "/bin", "HOME": "/h", "OPENAI_API_KEY": "sk-a1234", "AZURE_OPENAI_API_KEY": "az-b1234",
           "MY_LLM_KEY": "sk-c1234", "HF_TOKEN": "hf_x", "ANTHROPIC_API_KEY": "x", "DB_PASSWORD": "p",
           "SOME_URL": "https://u:sk-c1234@h/"}
    assert server_environment(env, ["sk-c1234"]) == {"PATH": "/bin", "HOME": "/h"}


def test_the_last_resort_handler_redacts(capsys):
    with pytest.raises(SystemExit) as stopped:
        with cli_module._reported(Log(secrets=["sk-lastresort-1"]), "interrupted"):
            raise RuntimeError("unexpected: sk-lastresort-1 was in here")
    assert stopped.value.code == cli_module.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "internal error: RuntimeError" in err and "sk-lastresort" not in err and "[redacted]" in err


def test_known_secrets_cover_every_source_of_the_key():
    env = {"OPENAI_API_KEY": "sk-env-1111", "AZURE_OPENAI_API_KEY": "az-env-2222", "MINE": "sk-mine-3333",
           "HTTPS_PROXY": "http://proxyuser:proxypass9@127.0.0.1:3128"}
    found = cli_module.known_secrets(env, {"api_key": "sk-flag-4444", "api_key_env": "MINE"})
    assert {"sk-env-1111", "az-env-2222", "sk-mine-3333", "sk-flag-4444", "proxypass9"} <= set(found)


@pytest.mark.parametrize("key, problem", [(SECRET_KEY + "\n", "ends with a newline"),
                                          (SECRET_KEY[:10] + "\r" + SECRET_KEY[10:], "contains a carriage return")])
def test_a_key_with_a_control_character_stops_the_run_before_anything_is_sent(cli, fake, tmp_path, key, problem):
    inp = write_input(tmp_path, ["one", "two"])
    out = tmp_path / "out.parquet"
    proc = cli.run("run", "--input", inp, "--output", out, "--template", "{text}", "--model", "gpt-4o-mini",
                   "--base-url", fake.base_url, env={"OPENAI_API_KEY": key})
    assert proc.returncode == 2, proc.stderr
    assert f"the API key from $OPENAI_API_KEY {problem}" in proc.stderr
    assert not leaks(proc.stdout + proc.stderr, SECRET_KEY)
    assert fake.requests == [] and not out.exists()
