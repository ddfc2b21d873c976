"""Self-tests for the fake Files and Batch APIs (tests/fakeapi.py, tests/fakebatch.py)."""

from __future__ import annotations

import json

import httpx
import pytest

try:
    from tests.fakeapi import FakeOpenAI
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from fakeapi import FakeOpenAI

KEY = "sk-abcdefghijklmnopqrstuvwxyz"
MODEL = "gpt-4o-mini"
TIMESTAMPS = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
              "failed_at", "expired_at", "cancelling_at", "cancelled_at")


@pytest.fixture
def fake():
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def client():
    with httpx.Client(timeout=5, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def jsonl(texts, model=MODEL, ids=None):
    ids = ids or [f"row-{i}" for i in range(len(texts))]
    lines = [{"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model, "messages": [{"role": "user", "content": text}]}}
             for cid, text in zip(ids, texts)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(client, fake, content, purpose="batch"):
    return client.post(fake.base_url + "/files", data={"purpose": purpose},
                       files={"file": ("input.jsonl", content, "application/jsonl")})


def create(client, fake, texts, **extra):
    file_id = upload(client, fake, jsonl(texts)).json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", **extra}
    resp = client.post(fake.base_url + "/batches", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def poll(client, fake, batch_id, limit=20):
    """GET the batch until it ends; return (final batch, statuses seen)."""
    seen = []
    for _ in range(limit):
        batch = client.get(f"{fake.base_url}/batches/{batch_id}").json()
        seen.append(batch["status"])
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch, seen
    raise AssertionError(f"batch never ended: {seen}")


def download(client, fake, file_id):
    """{custom_id: line} of a generated file (None when file_id is None)."""
    if file_id is None:
        return None
    resp = client.get(f"{fake.base_url}/files/{file_id}/content")
    assert resp.status_code == 200
    lines = [json.loads(row) for row in resp.text.splitlines()]
    return {line["custom_id"]: line for line in lines}


def test_upload_returns_file_object_and_records_it(fake, client):
    content = jsonl(["a", "b", "c"])
    resp = upload(client, fake, content)
    assert resp.status_code == 200 and resp.headers["x-request-id"].startswith("req_")
    data = resp.json()
    assert data == {"id": data["id"], "object": "file", "bytes": len(content),
                    "created_at": data["created_at"], "filename": "input.jsonl",
                    "purpose": "batch", "status": "processed"}
    assert data["id"].startswith("file-")
    assert fake.files[data["id"]]["content"] == content
    assert client.get(f"{fake.base_url}/files/{data['id']}").json() == data
    assert client.get(f"{fake.base_url}/files/{data['id']}/content").content == content
    assert fake.requests == [] and fake.batch_requests_log[0] == ("POST", "/v1/files")


def test_batch_lifecycle_output_and_error_files(fake, client):
    batch = create(client, fake, ["hello", "bad [[status:400]]", "boom [[status:500]]"],
                   metadata={"job": "t1"})
    assert batch["status"] == "validating" and batch["id"] == "batch_0"
    assert batch["object"] == "batch" and batch["model"] == MODEL and batch["metadata"] == {"job": "t1"}
    assert batch["output_file_id"] is None and batch["error_file_id"] is None and batch["errors"] is None
    assert all(batch[name] is None for name in TIMESTAMPS[1:])
    final, seen = poll(client, fake, batch["id"])
    assert seen == ["in_progress", "finalizing", "completed"]
    assert all(isinstance(final[name], int) for name in TIMESTAMPS[:5])
    assert final["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    out = download(client, fake, final["output_file_id"])
    err = download(client, fake, final["error_file_id"])
    assert set(out) == {"row-0"} and set(err) == {"row-1", "row-2"}
    line = out["row-0"]
    assert line["id"].startswith("batch_req_") and line["error"] is None
    assert line["response"]["status_code"] == 200 and line["response"]["request_id"].startswith("req_")
    completion = line["response"]["body"]
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "ECHO hello"
    assert final["usage"]["total_tokens"] == completion["usage"]["total_tokens"] > 0
    assert err["row-1"]["response"]["status_code"] == 400
    assert err["row-2"]["response"]["status_code"] == 500
    assert err["row-2"]["response"]["body"]["error"]["type"] == "server_error"
    assert fake.files[final["output_file_id"]]["purpose"] == "batch_output"
    assert fake.files[final["error_file_id"]]["filename"] == "batch_0_error.jsonl"
    assert fake.batch_requests_log == [("POST", "/v1/files"), ("POST", "/v1/batches")] + \
        [("GET", "/v1/batches/batch_0")] * 3 + \
        [("GET", f"/v1/files/{final['output_file_id']}/content"),
         ("GET", f"/v1/files/{final['error_file_id']}/content")]


def test_batch_answer_matches_chat_route_and_shares_attempts(fake, client):
    final, _ = poll(client, fake, create(client, fake, ["flaky [[status:503:1]]", "x", "y"])["id"])
    assert download(client, fake, final["error_file_id"])["row-0"]["response"]["status_code"] == 503
    body = {"model": MODEL, "messages": [{"role": "user", "content": "flaky [[status:503:1]]"}]}
    retried = client.post(fake.base_url + "/chat/completions", json=body)
    assert retried.status_code == 200  # attempt 2 of the same prompt
    out = download(client, fake, final["output_file_id"])
    assert list(out) == ["row-2", "row-1"]  # batch_shuffle: reverse input order


def test_polls_per_step_and_callable_outcome(fake, client):
    fake.batch_polls_per_step = 2
    fake.batch_outcome = lambda index, batch: "errors_only" if batch["metadata"] else None
    _, seen = poll(client, fake, create(client, fake, ["a"])["id"])
    assert seen == ["validating", "in_progress", "in_progress", "finalizing", "finalizing", "completed"]
    fake.batch_polls_per_step = 0
    final, seen = poll(client, fake, create(client, fake, ["a", "b"], metadata={"k": "v"})["id"])
    assert seen == ["completed"] and final["output_file_id"] is None
    err = download(client, fake, final["error_file_id"])
    assert set(err) == {"row-0", "row-1"}
    assert err["row-0"]["response"] is None and err["row-0"]["error"]["code"] == "server_error"
    assert final["request_counts"] == {"total": 2, "completed": 0, "failed": 2}


def test_expired_batch_has_partial_output(fake, client):
    batch = create(client, fake, ["a", "b", "c", "d"])
    fake.batch_outcome[0] = "expire"
    final, seen = poll(client, fake, batch["id"])
    assert seen == ["in_progress", "expired"] and isinstance(final["expired_at"], int)
    assert set(download(client, fake, final["output_file_id"])) == {"row-0", "row-1"}
    assert final["error_file_id"] is None
    assert final["request_counts"] == {"total": 4, "completed": 2, "failed": 0}


def test_unfinished_lines_can_go_to_the_error_file(fake, client):
    fake.batch_unfinished_errors = True
    fake.batch_outcome = {0: "expire"}
    final, _ = poll(client, fake, create(client, fake, ["a", "b", "c"])["id"])
    err = download(client, fake, final["error_file_id"])
    assert set(download(client, fake, final["output_file_id"])) == {"row-0"}
    assert set(err) == {"row-1", "row-2"} and err["row-1"]["error"]["code"] == "batch_expired"


def test_failed_batch_has_errors_and_no_files(fake, client):
    fake.batch_outcome[0] = "fail"
    final, seen = poll(client, fake, create(client, fake, ["a", "b"])["id"])
    assert seen == ["failed"] and isinstance(final["failed_at"], int)
    assert final["errors"]["object"] == "list"
    assert final["errors"]["data"][0]["code"] == "invalid_json" and final["errors"]["data"][0]["line"] == 1
    assert final["output_file_id"] is None and final["error_file_id"] is None


def test_cancel_gives_partial_output(fake, client):
    batch = create(client, fake, ["a", "b", "c", "d"])
    client.get(f"{fake.base_url}/batches/{batch['id']}")  # in_progress
    cancelling = client.post(f"{fake.base_url}/batches/{batch['id']}/cancel").json()
    assert cancelling["status"] == "cancelling" and isinstance(cancelling["cancelling_at"], int)
    final, seen = poll(client, fake, batch["id"])
    assert seen == ["cancelled"] and isinstance(final["cancelled_at"], int)
    assert set(download(client, fake, final["output_file_id"])) == {"row-0", "row-1"}
    again = client.post(f"{fake.base_url}/batches/{batch['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    done, _ = poll(client, fake, create(client, fake, ["z"])["id"])
    refused = client.post(f"{fake.base_url}/batches/{done['id']}/cancel")
    assert refused.status_code == 400 and "completed" in refused.json()["error"]["message"]


@pytest.mark.parametrize("setup, content, code", [
    ({"max_batch_requests": 2}, jsonl(["a", "b", "c"]), "too_many_requests"),
    ({"max_file_bytes": 100}, jsonl(["a", "b", "c"]), "file_too_large"),
    ({}, jsonl(["a"]) + jsonl(["b"], model="gpt-4o", ids=["row-1"]), "mixed_models"),
    ({}, jsonl(["a", "b"], ids=["same", "same"]), "duplicate_custom_id"),
    ({}, jsonl(["a"]).replace(b"/v1/chat/completions", b"/v1/embeddings"), "invalid_url"),
    ({}, b"not json\n", "invalid_json"),
    ({}, b"", "empty_file"),
])
def test_bad_files_are_rejected(fake, client, setup, content, code):
    for name, value in setup.items():
        setattr(fake, name, value)
    resp = upload(client, fake, content)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["param"] == "file"
    assert fake.files == {}


def test_auth_bad_requests_and_unknown_ids(fake, client):
    content = jsonl(["a"])
    anon = httpx.post(fake.base_url + "/files", data={"purpose": "batch"},
                      files={"file": ("in.jsonl", content)})
    assert anon.status_code == 401 and fake.files == {}
    assert upload(client, fake, content, purpose="fine-tune").status_code == 400
    file_id = upload(client, fake, content).json()["id"]
    good = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    for change in ({"endpoint": "/v1/embeddings"}, {"completion_window": "1h"},
                   {"input_file_id": "file-nope"}, {"metadata": {"k": 1}}):
        resp = client.post(fake.base_url + "/batches", json={**good, **change})
        assert resp.status_code == 400 and resp.json()["error"]["param"] in change
    assert fake.batches == {}
    assert client.get(fake.base_url + "/batches/batch_9").status_code == 404
    assert client.get(fake.base_url + "/files/file-99/content").status_code == 404
    assert client.delete(f"{fake.base_url}/files/{file_id}").status_code == 404
    fake.reset()
    assert fake.files == {} and fake.batches == {} and fake.batch_requests_log == []


def test_reset_truncate_and_refuse_lines(fake, client):
    batch = create(client, fake, ["[[reset]] a", "[[truncate]] b", "[[refuse]] c"])
    final, _ = poll(client, fake, batch["id"])
    err = download(client, fake, final["error_file_id"])
    assert err["row-0"]["response"] is None and err["row-0"]["error"]["code"] == "server_error"
    rows = client.get(f"{fake.base_url}/files/{final['output_file_id']}/content").text.splitlines()
    assert len(rows) == 2 and final["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    refused = json.loads(rows[0])  # reverse order: row-2 first, then the broken row-1
    assert refused["custom_id"] == "row-2"
    assert refused["response"]["body"]["choices"][0]["message"]["refusal"]
    with pytest.raises(ValueError):
        json.loads(rows[1])
    assert '"custom_id": "row-1"' in rows[1]
