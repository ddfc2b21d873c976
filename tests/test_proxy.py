"""``run`` honours HTTPS_PROXY / HTTP_PROXY / NO_PROXY, through a proxy on 127.0.0.1 (nothing leaves
the machine: the proxy forwards only to 127.0.0.1, and answers CONNECT without opening a tunnel)."""

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.transport import proxy_for

PROXY_VARIABLES = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                   "NO_PROXY", "no_proxy"]


class LoopbackProxy(ThreadingHTTPServer):
    """Records what it is asked; forwards plain-HTTP requests to 127.0.0.1 only; refuses tunnels."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: list[tuple[str, str]] = []  # (method, target)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_CONNECT(self) -> None:
        self.server.seen.append(("CONNECT", self.path))
        self.send_response(502, "no tunnels in tests")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def do_POST(self) -> None:
        self.server.seen.append(("POST", self.path))
        target = urlsplit(self.path)
        assert target.hostname == "127.0.0.1", "the test proxy forwards to loopback only"
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection", "host")}
        upstream = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
        upstream.request("POST", target.path + (f"?{target.query}" if target.query else ""), body, headers)
        reply = upstream.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cli, tmp_path, base_url, env, *extra):
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), tmp_path / "in.parquet")
    return cli.run("run", "--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet", "--template",
                   "{text}", "--model", "gpt-4o-mini", "--base-url", base_url, "--quiet", *extra,
                   env={**dict.fromkeys(PROXY_VARIABLES, ""), **env})  # only the proxies the test sets


def test_run_sends_through_http_proxy(cli, fake, tmp_path):
    with LoopbackProxy() as proxy:
        proc = run(cli, tmp_path, fake.base_url, {"HTTP_PROXY": proxy.url})
    assert proc.returncode == 0, proc.stderr
    assert proxy.seen and all(seen == ("POST", fake.base_url + "/chat/completions") for seen in proxy.seen)
    assert len(fake.completed()) == 3
    assert pq.read_table(tmp_path / "out.parquet").column("status").to_pylist() == ["ok"] * 3


def test_run_tunnels_https_through_https_proxy(cli, tmp_path):
    port = closed_port()  # nothing listens there: only the proxy could make this work
    with LoopbackProxy() as proxy:
        proc = run(cli, tmp_path, f"https://127.0.0.1:{port}/v1", {"https_proxy": proxy.url}, "--max-attempts", "1")
    assert proc.returncode in (1, 3), proc.stderr  # the test proxy refuses to tunnel
    assert ("CONNECT", f"127.0.0.1:{port}") in proxy.seen


def test_no_proxy_bypasses_the_proxy(cli, fake, tmp_path):
    with LoopbackProxy() as proxy:
        proc = run(cli, tmp_path, fake.base_url, {"HTTP_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"})
    assert proc.returncode == 0, proc.stderr
    assert proxy.seen == [] and len(fake.completed()) == 3


@pytest.mark.parametrize("env, url, expected", [
    ({}, "https://api.openai.com/v1/chat/completions", None),
    ({"HTTPS_PROXY": "http://p:3128"}, "https://api.openai.com/v1/chat/completions", "http://p:3128"),
    ({"HTTPS_PROXY": "http://p:3128"}, "http://127.0.0.1:8000/v1/chat/completions", None),
    ({"HTTP_PROXY": "p:3128"}, "http://127.0.0.1:8000/v1/chat/completions", "http://p:3128"),
    ({"ALL_PROXY": "http://all:1"}, "https://api.openai.com/v1", "http://all:1"),
    ({"HTTPS_PROXY": "http://UPPER:1", "https_proxy": "http://lower:1"}, "https://x.com/v1", "http://lower:1"),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".openai.com"}, "https://api.openai.com/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "no_proxy": "*"}, "https://api.openai.com/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "https://api.openai.com/v1", "http://p:1"),
])
def test_proxy_for_reads_the_environment_like_other_tools(env, url, expected):
    assert proxy_for(url, env) == expected
