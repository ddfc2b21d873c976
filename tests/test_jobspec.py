"""Job files and flags become a validated Job; mistakes name the file (or flag) and the key."""

from pathlib import Path

import pytest

from pipeline.errors import JobError
from pipeline.jobspec import build_job

ENV = {"OPENAI_API_KEY": "sk-test-key-000"}


def write_job(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobs" / "job.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_job_file_keys_and_paths_relative_to_the_file(tmp_path):
    path = write_job(tmp_path, '''
input = "../data/in.csv"
output = "../out/result.parquet"
model = "gpt-4o-mini"
template = "Sentiment of: {review}"
temperature = 0
max_completion_tokens = 5
rpm = 500
tpm = 20000
max_attempts = 3
[extra_body]
parallel_tool_calls = false
''')
    job = build_job(path, {}, ENV)
    assert job.input_path == tmp_path / "jobs" / "../data/in.csv"
    assert job.output_path == tmp_path / "jobs" / "../out/result.parquet"
    assert job.params == {"temperature": 0, "max_completion_tokens": 5, "parallel_tool_calls": False}
    assert job.limits.requests_per_minute == 500 and job.limits.tokens_per_minute == 20000
    assert job.retry.max_attempts == 3
    assert job.endpoint.url == "https://api.openai.com/v1/chat/completions"
    assert job.endpoint.headers()["Authorization"] == "Bearer sk-test-key-000"


def test_flags_override_the_file(tmp_path):
    path = write_job(tmp_path, 'input = "a.csv"\nmodel = "gpt-4o"\ntemplate = "{x}"\ntemperature = 1\n')
    job = build_job(path, {"model": "gpt-4o-mini", "temperature": 0.5, "input": "b.csv"}, ENV)
    assert job.model == "gpt-4o-mini"
    assert job.params["temperature"] == 0.5
    assert job.input_path == Path("b.csv")  # flags are relative to the working directory


def test_unknown_key_names_file_and_key_with_a_suggestion(tmp_path):
    path = write_job(tmp_path, 'input = "a.csv"\nmodel = "m"\ntemplate = "{x}"\ntemprature = 0\n')
    with pytest.raises(JobError) as info:
        build_job(path, {}, ENV)
    assert str(path) in str(info.value)
    assert "'temprature'" in str(info.value) and "temperature" in str(info.value)


@pytest.mark.parametrize("line, words", [
    ('rpm = "fast"', ["'rpm'", "number"]),
    ("temperature = 3", ["'temperature'", "between 0 and 2"]),
    ("concurrency = 0", ["'concurrency'"]),
    ("top_logprobs = 2", ["logprobs"]),
    ('stop = ["a", "b", "c", "d", "e"]', ["'stop'"]),
    ('api_key = "sk-secret"', ["api_key_env"]),
    ("[extra_body]\ntemperature = 1", ["extra_body.temperature"]),
])
def test_bad_values_are_named(tmp_path, line, words):
    path = write_job(tmp_path, f'input = "a.csv"\nmodel = "m"\ntemplate = "{{x}}"\n{line}\n')
    with pytest.raises(JobError) as info:
        build_job(path, {}, ENV)
    for word in words:
        assert word in str(info.value)
    assert "sk-secret" not in str(info.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = write_job(tmp_path, "input = \n")
    with pytest.raises(JobError, match="not valid TOML"):
        build_job(path, {}, ENV)


def test_a_run_needs_no_job_file():
    job = build_job(None, {"input": "x.csv", "model": "m", "template": "{a}"}, ENV)
    assert job.output_path == Path("x.out.parquet")


def test_template_or_messages_column_exactly_one():
    with pytest.raises(JobError, match="exactly one"):
        build_job(None, {"input": "x.csv", "model": "m"}, ENV)


def test_missing_key_for_remote_endpoint_is_an_error_but_loopback_needs_none():
    with pytest.raises(JobError, match="OPENAI_API_KEY"):
        build_job(None, {"input": "x.csv", "model": "m", "template": "{a}"}, {})
    job = build_job(None, {"input": "x.csv", "model": "m", "template": "{a}",
                           "base_url": "http://127.0.0.1:9/v1"}, {})
    assert "Authorization" not in job.endpoint.headers()


def test_environment_supplies_base_url_org_and_project():
    env = {**ENV, "OPENAI_BASE_URL": "http://localhost:8000/v1/", "OPENAI_ORG_ID": "org-1",
           "OPENAI_PROJECT_ID": "proj-1"}
    job = build_job(None, {"input": "x.csv", "model": "m", "template": "{a}"}, env)
    headers = job.endpoint.headers()
    assert job.endpoint.url == "http://localhost:8000/v1/chat/completions"
    assert headers["OpenAI-Organization"] == "org-1" and headers["OpenAI-Project"] == "proj-1"


def test_azure_deployment_url_and_api_key_header():
    env = {"AZURE_OPENAI_API_KEY": "az-key-123"}
    job = build_job(None, {"input": "x.csv", "model": "gpt-4o", "template": "{a}", "api_version": "2024-10-21",
                           "base_url": "https://res.openai.azure.com", "deployment": "prod-4o"}, env)
    assert job.endpoint.url == ("https://res.openai.azure.com/openai/deployments/prod-4o/chat/completions"
                                "?api-version=2024-10-21")
    headers = job.endpoint.headers()
    assert headers["api-key"] == "az-key-123" and "Authorization" not in headers


def test_azure_host_without_api_version_is_an_error():
    with pytest.raises(JobError, match="api_version"):
        build_job(None, {"input": "x.csv", "model": "m", "template": "{a}",
                         "base_url": "https://res.openai.azure.com"}, ENV)


def test_api_key_flag_wins_and_is_not_in_repr():
    job = build_job(None, {"input": "x.csv", "model": "m", "template": "{a}"}, ENV, api_key="sk-flag-999")
    assert job.endpoint.api_key == "sk-flag-999"
    assert "sk-flag-999" not in repr(job)


def test_encoding_and_null_values(tmp_path):
    job = build_job(write_job(tmp_path, 'input = "in.csv"\nmodel = "m"\ntemplate = "{x}"\nencoding = "Latin-1"\n'
                                        'null_values = "NA"\n'), {}, ENV)
    assert (job.encoding, job.null_values) == ("iso8859-1", ("NA",))
    job = build_job(None, {"input": "in.csv", "model": "m", "template": "{x}", "null_values": ["NA", "null"]}, ENV)
    assert (job.encoding, job.null_values) == ("utf-8", ("NA", "null"))
    with pytest.raises(JobError, match="job.toml: key 'encoding' names no known encoding: 'latin-9000'"):
        build_job(write_job(tmp_path, 'input = "in.csv"\nmodel = "m"\ntemplate = "{x}"\nencoding = "latin-9000"\n'),
                  {}, ENV)
    with pytest.raises(JobError, match="null_values"):
        build_job(write_job(tmp_path, 'input = "in.csv"\nmodel = "m"\ntemplate = "{x}"\nnull_values = [1]\n'), {}, ENV)


KEY = "sk-test-key-000"
JOB = {"input": "x.csv", "model": "m", "template": "{a}"}


@pytest.mark.parametrize("key, problem", [
    (KEY + "\n", "ends with a newline"),
    (KEY + "\r\n", "ends with a carriage return"),
    (KEY + " ", "ends with a space"),
    ("\t" + KEY, "starts with a tab"),
    ("sk-test key-000", "contains a space at position 8 of 15"),
    ("sk-test\x00key-000", "contains a control character at position 8 of 15"),
    ("sk-test\u00e9key-000", "contains a non-ASCII character at position 8 of 15"),
])
def test_a_key_no_header_can_carry_is_refused_naming_its_variable_and_never_showing_it(key, problem):
    with pytest.raises(JobError) as caught:
        build_job(None, JOB, {"OPENAI_API_KEY": key})
    message = str(caught.value)
    assert message.startswith(f"the API key from $OPENAI_API_KEY {problem};"), message
    assert not any(key.strip()[:n] in message for n in range(3, len(key) + 1))


def test_a_bad_key_is_refused_from_the_flag_the_python_keyword_azure_and_api_key_env():
    with pytest.raises(JobError, match=r"^the API key from --api-key ends with a newline"):
        build_job(None, JOB, ENV, api_key=KEY + "\n")
    with pytest.raises(JobError, match=r"^the API key from Job\(\): keyword 'api_key' ends with a newline"):
        build_job(None, JOB, ENV, api_key=KEY + "\n", overrides_from="Job()")
    azure = {**JOB, "api_version": "2024-10-21", "base_url": "https://res.openai.azure.com"}
    with pytest.raises(JobError, match=r"^the API key from \$AZURE_OPENAI_API_KEY ends with a carriage return"):
        build_job(None, azure, {"AZURE_OPENAI_API_KEY": "0123abcd\r"})
    with pytest.raises(JobError, match=r"^the API key from \$MY_KEY contains a space"):
        build_job(None, {**JOB, "api_key_env": "MY_KEY"}, {"MY_KEY": "sk-a b"})


def test_a_good_flag_key_wins_over_a_bad_one_in_the_environment():
    job = build_job(None, JOB, {"OPENAI_API_KEY": KEY + "\n"}, api_key="sk-flag-999")
    assert job.endpoint.api_key == "sk-flag-999"


def test_a_bad_key_that_will_not_be_sent_does_not_stop_a_local_run_or_an_estimate():
    bad = {"OPENAI_API_KEY": KEY + "\n"}
    assert build_job(None, {**JOB, "local": True}, bad).local  # the local model never sees the key
    build_job(None, JOB, bad, require_key=False)  # estimate sends nothing
    with pytest.raises(JobError, match="ends with a newline"):
        build_job(None, JOB, bad)  # a run on the API would send it
