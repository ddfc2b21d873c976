"""Shared helpers for the chatbatch benchmark scripts.

Everything here is stdlib-only so that the scripts stay importable even when
the product package is broken:

* ``pin_cpu`` – pin the current process to one core;
* ``prompt`` / ``request_body`` – the request payload every client sends;
* ``start_server`` – context manager running ``fastserver.py`` in a child
  process (pinned to a core), yielding its port and killing it on exit;
* ``server_stats`` – read-and-reset the server's request-window counters;
* ``proc_cpu_seconds`` – user+sys CPU seconds of any live process (``/proc``);
* ``run_child`` – run a command with a timeout and return wall time plus the
  child's own rusage (``os.wait4``), so peak RSS is per child, not the max
  over all children.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

BENCH_DIR = Path(__file__).resolve().parent
MODEL = "gpt-4o-mini"
API_KEY = "sk-bench"
PROMPT_FMT = "Classify sentiment: review number {} was great"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def pin_cpu(cpu: int | None) -> None:
    """Pin this process to ``cpu`` (no-op when ``cpu`` is None)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def prompt(i: int) -> str:
    """The i-th prompt, identical to the rows of the generated input table."""
    return PROMPT_FMT.format(i)


def request_body(i: int) -> bytes:
    """JSON body of the i-th chat-completion request."""
    msg = {"role": "user", "content": prompt(i)}
    return json.dumps({"model": MODEL, "messages": [msg]}).encode()


def request_headers() -> dict[str, str]:
    """Headers an OpenAI client would send (minus the SDK's telemetry)."""
    return {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {API_KEY}",
    }


def chat_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def _read_ready_line(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for the server's ``READY <port>`` line and return the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline().decode().strip()
            if line.startswith("READY "):
                return int(line.split()[1])
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"fastserver did not become ready (rc={proc.poll()})")


def stop_process(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def start_server(latency: float = 0.0, cpu: int | None = 1,
                 timeout: float = 15.0) -> Iterator["ServerHandle"]:
    """Run ``fastserver.py`` on a free port; always killed on exit."""
    cmd = [sys.executable, str(BENCH_DIR / "fastserver.py"), "--port", "0",
           "--latency", str(latency)]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        port = _read_ready_line(proc, timeout)
        yield ServerHandle(proc=proc, port=port, latency=latency)
    finally:
        stop_process(proc)
        if proc.stdout:
            proc.stdout.close()


@dataclass
class ServerHandle:
    proc: subprocess.Popen
    port: int
    latency: float

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_url(self) -> str:
        return chat_url(self.port)

    def stats(self) -> dict:
        return server_stats(self.port)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)


def server_stats(port: int, timeout: float = 10.0) -> dict:
    """Read and reset the server's counters (``GET /__stats``)."""
    url = f"http://127.0.0.1:{port}/__stats"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a live process in seconds, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass
class ChildResult:
    """Outcome of one ``run_child`` call."""
    returncode: int | None
    wall_s: float
    cpu_s: float
    maxrss_kb: int
    timed_out: bool
    stdout: str
    stderr: str


def _pinned_preexec(cpu: int | None):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def run_child(cmd: Sequence[str], *, cpu: int | None, timeout: float,
              env: dict | None = None, cwd: str | None = None) -> ChildResult:
    """Run ``cmd`` pinned to ``cpu``; reap it with ``os.wait4`` for rusage.

    A helper thread blocks in ``wait4`` so wall time is exact; on timeout (or
    Ctrl-C/SIGTERM in the caller) the child is killed before returning/raising.
    """
    with _temp_output() as (out, err):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL,
                                preexec_fn=_pinned_preexec(cpu))
        reaped: dict = {}
        done = threading.Event()
        threading.Thread(target=_wait4, args=(proc.pid, reaped, done),
                         daemon=True).start()
        # Not Thread.join(): in 3.11 an interrupted join() marks the thread
        # as stopped, so is_alive() would lie and the child would survive.
        try:
            finished = done.wait(timeout)
        finally:
            if not done.is_set():
                _kill(proc.pid)
                done.wait()
        status, ru = reaped["status"], reaped["rusage"]
        proc.returncode = os.waitstatus_to_exitcode(status)
        return ChildResult(
            returncode=proc.returncode, wall_s=reaped["t1"] - t0,
            cpu_s=ru.ru_utime + ru.ru_stime, maxrss_kb=ru.ru_maxrss,
            timed_out=not finished, stdout=_slurp(out), stderr=_slurp(err))


def _wait4(pid: int, into: dict, done: threading.Event) -> None:
    _, status, rusage = os.wait4(pid, 0)
    into.update(status=status, rusage=rusage, t1=time.perf_counter())
    done.set()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _temp_output():
    import tempfile
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        yield out, err


def _slurp(fh) -> str:
    fh.seek(0)
    return fh.read().decode(errors="replace")


def install_sigterm_handler() -> None:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` blocks clean up."""
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _raise)


class Budget:
    """Shared request-index iterator: stops after ``n`` items or at a deadline.

    Workers pull from one instance; ``issued`` is how many requests were sent.
    """
    __slots__ = ("n", "deadline", "issued")

    def __init__(self, n: int, max_seconds: float | None = None) -> None:
        self.n, self.issued = n, 0
        self.deadline = (time.perf_counter() + max_seconds
                         if max_seconds else float("inf"))

    def __iter__(self) -> "Budget":
        return self

    def __next__(self) -> int:
        i = self.issued
        if i >= self.n or (i & 15 == 0 and time.perf_counter() > self.deadline):
            raise StopIteration
        self.issued = i + 1
        return i


def median(values: Sequence[float]) -> float:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
