"""Shared fixtures for tests that run the real ``chatbatch`` CLI against tests/fakeapi.py.

* ``fake``: a started :class:`fakeapi.FakeOpenAI` on 127.0.0.1 that accepts only :data:`SECRET_KEY`
  (change its attributes in a test: ``fake.rpm = 600``, ``fake.latency_s = 0.2``).
* ``cli``: runs ``python -m pipeline ...`` as a subprocess from the repository root, with a clean
  environment: every ``OPENAI_*``/``AZURE_OPENAI_*`` variable removed, ``OPENAI_API_KEY`` set to
  :data:`SECRET_KEY` and the cache folder inside the test's tmp_path::

      proc = cli.run("run", "--input", inp, "--output", out, "--template", "{text}", ...)
      proc = cli.run("run", ..., env={"OPENAI_ORG_ID": "org-1"}, drop_env=["OPENAI_API_KEY"])
      process = cli.popen("run", ...)  # for signals

``make_cli(cache_dir)`` builds the same runner for module-scoped fixtures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakeapi import FakeOpenAI  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SECRET_KEY = "sk-test-SECRET-abcdef123456"
_SCRUBBED_PREFIXES = ("OPENAI_", "AZURE_OPENAI_")


class CLI:
    """Runs the real command line as a subprocess."""

    def __init__(self, base_env: Mapping[str, str]) -> None:
        self.base_env = dict(base_env)

    def env(self, extra: Mapping[str, str] | None = None, drop: Iterable[str] = ()) -> dict[str, str]:
        env = {**self.base_env, **(extra or {})}
        for name in drop:
            env.pop(name, None)
        return env

    def command(self, *args: object) -> list[str]:
        return [sys.executable, "-m", "pipeline", *map(str, args)]

    def run(self, *args: object, env: Mapping[str, str] | None = None, drop_env: Iterable[str] = (),
            cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env(env, drop_env), cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: object, env: Mapping[str, str] | None = None, drop_env: Iterable[str] = (),
              cwd: Path = REPO) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args), env=self.env(env, drop_env), cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def fake():
    with FakeOpenAI(api_key=SECRET_KEY) as server:
        yield server


def make_cli(cache_dir: Path) -> CLI:
    """A :class:`CLI` whose environment holds only the test key (and a private cache folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.update(OPENAI_API_KEY=SECRET_KEY, XDG_CACHE_HOME=str(cache_dir), PYTHONUNBUFFERED="1")
    return CLI(env)


@pytest.fixture
def cli(tmp_path) -> CLI:
    return make_cli(tmp_path / ".cache")
