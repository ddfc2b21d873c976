"""A run pays only for the imports it uses: start-up time and memory of a small job (issue 17).

The real CLI runs a one-row job against the fake server, in a subprocess that reports which heavy
libraries ended up imported. Start-up time and RSS themselves are measured in bench/, not here.
"""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import REPO

HEAVY = ("pandas", "httpx", "tiktoken", "jsonschema", "pyarrow.compute", "matplotlib", "dask", "tqdm")

PROBE = """
import json, runpy, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["chatbatch", *json.loads(sys.argv[1])]
code = None
try:
    runpy.run_module("pipeline", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "imported": [m for m in heavy if m in sys.modules]}))
"""


def imported_by(cli, *args) -> dict:
    """Run the CLI with ``args`` in a fresh interpreter; its exit code and which HEAVY modules it imported."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps([str(a) for a in args]), json.dumps(HEAVY)],
                          cwd=REPO, env=cli.env(), capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_plain_parquet_run_imports_no_heavy_library_it_does_not_use(cli, fake, tmp_path):
    pq.write_table(pa.table({"text": ["hello"]}), tmp_path / "in.parquet")
    result = imported_by(cli, "run", "--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet",
                         "--template", "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--quiet")
    assert result == {"code": 0, "imported": []}
    assert pq.read_table(tmp_path / "out.parquet").column("status").to_pylist() == ["ok"]


def test_a_csv_run_imports_only_what_csv_typing_needs(cli, fake, tmp_path):
    (tmp_path / "in.csv").write_text("text,n\nhello,1\n")
    result = imported_by(cli, "run", "--input", tmp_path / "in.csv", "--output", tmp_path / "out.parquet",
                         "--template", "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--quiet")
    assert result == {"code": 0, "imported": ["pyarrow.compute"]}


def test_what_a_job_uses_is_still_imported(cli, fake, tmp_path):
    """A schema brings jsonschema, a tokens-per-minute limit brings the tokenizer."""
    pq.write_table(pa.table({"text": ["hello"]}), tmp_path / "in.parquet")
    result = imported_by(cli, "run", "--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet",
                         "--template", "{text}", "--model", "gpt-4o-mini", "--base-url", fake.base_url, "--quiet",
                         "--labels", "positive,negative", "--tpm", "100000")
    assert result["code"] in (0, 1)
    assert {"jsonschema", "tiktoken"} <= set(result["imported"]) and "pandas" not in result["imported"]
