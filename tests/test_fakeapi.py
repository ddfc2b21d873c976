"""Self-tests for the fake OpenAI server (tests/fakeapi.py)."""

from __future__ import annotations

import httpx
import pytest

try:
    from tests.fakeapi import FakeOpenAI
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from fakeapi import FakeOpenAI

KEY = "sk-abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def fake():
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def client():
    with httpx.Client(timeout=5, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def chat(client, fake, text, **extra):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}
    return client.post(fake.base_url + "/chat/completions", json=body)


def test_normal_reply_shape_and_usage(fake, client):
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello world"}]}]
    resp = client.post(fake.base_url + "/chat/completions",
                       json={"model": "gpt-4o-mini", "messages": messages, "n": 2})
    assert resp.status_code == 200 and resp.headers["x-request-id"]
    data = resp.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert data["model"] == "gpt-4o-mini" and data["system_fingerprint"] == "fp_fake"
    texts = [c["message"]["content"] for c in data["choices"]]
    assert texts == ["ECHO hello world", "ECHO#1 ECHO hello world"]
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["choices"][0]["message"]["refusal"] is None
    usage = data["usage"]
    assert usage["prompt_tokens"] == max(1, len("be brief" "hello world") // 4) + 3 * 2
    assert usage["completion_tokens"] == len(texts[0]) // 4 + len(texts[1]) // 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert fake.requests[0]["prompt"] == "hello world"
    assert fake.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert len(fake.completed()) == 1


def test_max_tokens_truncates_with_length(fake, client):
    data = chat(client, fake, "x" * 100, max_completion_tokens=3).json()
    assert data["choices"][0]["message"]["content"] == "ECHO " + "x" * 7
    assert data["choices"][0]["finish_reason"] == "length"


def test_status_400_directive(fake, client):
    resp = chat(client, fake, "bad row [[status:400]]")
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert chat(client, fake, "bad row [[status:400]]").status_code == 400
    assert fake.completed() == []


def test_context_directive(fake, client):
    err = chat(client, fake, "[[context]]").json()["error"]
    assert err["code"] == "context_length_exceeded"


def test_status_500_once_then_ok(fake, client):
    first = chat(client, fake, "flaky [[status:500:1]]")
    assert first.status_code == 500
    assert first.json()["error"]["type"] == "server_error"
    second = chat(client, fake, "flaky [[status:500:1]]")
    assert second.status_code == 200
    assert [r["status"] for r in fake.requests] == [500, 200]
    assert [r["attempt"] for r in fake.requests] == [1, 2]


def test_auth_401_masks_sent_key(fake):
    with httpx.Client(headers={"Authorization": "Bearer sk-ab1234567890yz"}) as c:
        resp = chat(c, fake, "hi")
    assert resp.status_code == 401
    err = resp.json()["error"]
    assert err["code"] == "invalid_api_key"
    assert err["message"].startswith("Incorrect API key provided: sk-ab***yz.")


def test_rpm_limit_429_on_third_request(client):
    with FakeOpenAI(api_key=KEY, rpm=2, tpm=100_000) as fake:
        ok1, ok2, limited = (chat(client, fake, f"row {i}") for i in range(3))
        assert [ok1.status_code, ok2.status_code] == [200, 200]
        assert ok1.headers["x-ratelimit-limit-requests"] == "2"
        assert ok1.headers["x-ratelimit-remaining-requests"] == "1"
        assert ok2.headers["x-ratelimit-remaining-requests"] == "0"
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert limited.json()["error"]["type"] == "requests"
        assert 0 < int(limited.headers["retry-after-ms"]) <= 30_000
        assert limited.headers["retry-after"] == "30"
        assert limited.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-remaining-tokens" in limited.headers
        assert fake.rate_limited == 1 and len(fake.completed()) == 2


def test_azure_path_needs_api_version(fake):
    url = fake.root_url + "/openai/deployments/my-gpt/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(headers={"api-key": KEY}) as c:
        missing = c.post(url, json=body)
        ok = c.post(url, params={"api-version": "2024-10-21"}, json=body)
    assert missing.status_code == 404 and "error" in missing.json()
    assert ok.status_code == 200 and ok.json()["model"] == "my-gpt"
    assert fake.requests[-1]["deployment"] == "my-gpt"
    assert fake.requests[-1]["query"] == {"api-version": "2024-10-21"}


def test_unknown_route_404(fake, client):
    assert client.post(fake.root_url + "/v1/embeddings", json={}).status_code == 404


def test_reset_drops_connection(fake, client):
    with pytest.raises(httpx.TransportError):
        chat(client, fake, "[[reset:1]]")
    assert chat(client, fake, "[[reset:1]]").status_code == 200
    assert [r["status"] for r in fake.requests] == [0, 200]


def test_truncate_nochoices_refuse(fake, client):
    truncated = chat(client, fake, "[[truncate:1]]")
    assert truncated.status_code == 200
    with pytest.raises(ValueError):
        truncated.json()
    assert chat(client, fake, "[[nochoices]]").json()["choices"] == []
    refused = chat(client, fake, "[[refuse]]").json()["choices"][0]["message"]
    assert refused["content"] is None and refused["refusal"].startswith("I'm sorry")
    assert [r["prompt"] for r in fake.completed()] == ["[[refuse]]"]


def test_quota_after(client):
    with FakeOpenAI(quota_after=1) as fake:
        assert chat(client, fake, "a").status_code == 200
        resp = chat(client, fake, "b")
        assert resp.status_code == 429
        assert resp.json()["error"]["code"] == "insufficient_quota"
