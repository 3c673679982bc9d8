"""Configuration and requests are immutable and validated; a bad value names its field."""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest

from oai_adapter import AdapterConfig, RetryPolicy, TaskRequest, Timeouts

BASE = "http://127.0.0.1:8080/v1"


def test_defaults_match_design() -> None:
    config = AdapterConfig(base_url=BASE, model="m")
    assert config.api == "chat"
    assert config.api_key is None
    assert dict(config.headers) == {}
    assert config.http2 is False
    assert config.timeouts == Timeouts(connect=5.0, first_token=30.0, idle=30.0, total=600.0)
    assert config.retry == RetryPolicy(max_attempts=4, base=0.1, cap=2.0)
    assert config.allowed_hosts == frozenset({"127.0.0.1"})
    assert config.include_usage is True
    assert config.max_connections == 100


@pytest.mark.parametrize("name", ["connect", "first_token", "idle", "total"])
@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, "5", None, True])
@pytest.mark.req("OC-ADAPT-OAI-6002")
def test_every_timeout_must_be_finite_and_positive(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"Timeouts.{name}"):
        Timeouts(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"base": -0.1}, "base"),
        ({"cap": math.inf}, "cap"),
    ],
)
def test_retry_policy_is_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"RetryPolicy.{field}"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_url": "ftp://h/v1"}, "base_url"),
        ({"base_url": "http://user:pw@h/v1"}, "base_url"),
        ({"base_url": ""}, "base_url"),
        ({"base_url": "http://h/v1?x=1"}, "base_url"),
        ({"model": ""}, "model"),
        ({"api": "embeddings"}, "api"),
        ({"api_key": ""}, "api_key"),
        ({"api_key": "sk-a\nb"}, "api_key"),
        ({"headers": {"Authorization": "x"}}, "headers"),
        ({"headers": {"x-a": "b\r\nc"}}, "headers"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle"),
        ({"proxy": "socks9://p"}, "proxy"),
        ({"allowed_hosts": []}, "allowed_hosts"),
        ({"allowed_hosts": ["other"]}, "allowed_hosts"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
@pytest.mark.req("OC-ADAPT-OAI-6021")
def test_bad_config_values_name_their_field(kwargs: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"base_url": BASE, "model": "m"} | kwargs
    with pytest.raises(ValueError, match=f"AdapterConfig.{field}"):
        AdapterConfig(**values)  # type: ignore[arg-type]


def test_config_is_immutable() -> None:
    config = AdapterConfig(base_url=BASE, model="m", headers={"x-a": "1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.headers["x-a"] = "2"  # type: ignore[index]


def test_config_copies_the_callers_headers() -> None:
    headers = {"x-a": "1"}
    config = AdapterConfig(base_url=BASE, model="m", headers=headers)
    headers["x-a"] = "2"
    assert config.headers["x-a"] == "1"


def test_trailing_slash_is_dropped_from_base_url() -> None:
    assert AdapterConfig(base_url=BASE + "/", model="m").base_url == BASE


def test_from_env_reads_only_the_two_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", BASE)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-12345678")
    config = AdapterConfig.from_env(model="m", api="completions")
    assert config.base_url == BASE
    assert config.api_key is not None
    assert config.api_key.reveal() == "sk-env-key-12345678"
    assert config.api == "completions"


def test_from_env_without_base_url_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        AdapterConfig.from_env(model="m")


def test_nothing_is_read_from_the_environment_implicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-12345678")
    assert AdapterConfig(base_url=BASE, model="m").api_key is None


def test_config_pickles_without_its_key() -> None:
    config = AdapterConfig(
        base_url=BASE, model="m", api_key="sk-pickle-me-0000000", headers={"x-a": "1"}
    )
    data = pickle.dumps(config)
    assert b"sk-pickle-me" not in data
    back = pickle.loads(data)
    assert back.base_url == BASE
    assert back.headers == {"x-a": "1"}
    assert repr(back.api_key) == repr(config.api_key)
    with pytest.raises(ValueError, match="dropped"):
        back.api_key.reveal()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one"),
        ({"prompt": "a", "task_id": ""}, "task_id"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "temperature": -1}, "temperature"),
        ({"prompt": "a", "top_p": math.nan}, "top_p"),
        ({"prompt": "a", "stop": [""]}, "stop"),
        ({"prompt": "a", "seed": 1.5}, "seed"),
        ({"prompt": "a", "correlation_id": "a\nb"}, "correlation_id"),
        ({"prompt": "a", "extra": [1]}, "extra"),
    ],
)
def test_bad_requests_are_value_errors(kwargs: dict[str, object], match: str) -> None:
    values: dict[str, object] = {"task_id": "t"} | kwargs
    with pytest.raises(ValueError, match=match):
        TaskRequest(**values)  # type: ignore[arg-type]


def test_request_is_immutable_and_copies_messages() -> None:
    messages = [{"role": "user", "content": "hi"}]
    req = TaskRequest(task_id="t", messages=messages)
    messages[0]["content"] = "changed"
    assert req.messages is not None
    assert req.messages[0]["content"] == "hi"
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.prompt = "x"  # type: ignore[misc]


def test_configs_are_hashable_and_equal_by_value() -> None:
    a = AdapterConfig(base_url=BASE, model="m", headers={"x-a": "1"}, api_key="sk-hash-me-00000000")
    b = AdapterConfig(base_url=BASE, model="m", headers={"x-a": "1"}, api_key="sk-hash-me-00000000")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != dataclasses.replace(a, headers={"x-a": "2"})


@pytest.mark.parametrize("url", ["http://h/v1?", "http://h/v1#", "http://h/v1/?#", "http://h?/v1"])
def test_base_url_with_an_empty_query_or_fragment_is_refused(url: str) -> None:
    # httpx2 keeps an empty `?` or `#`, and every request path joined on would land behind it
    with pytest.raises(ValueError, match=r"AdapterConfig\.base_url: must not have a query"):
        AdapterConfig(base_url=url, model="m")


@pytest.mark.parametrize(
    ("base_url", "allowed"),
    [
        ("http://bücher.example/v1", "xn--bcher-kva.example"),
        ("http://xn--bcher-kva.example/v1", "bücher.example"),
        ("http://BÜCHER.example/v1", "XN--BCHER-KVA.example"),
        ("http://[::1]:8080/v1", "[::1]"),
        ("http://[::1]:8080/v1", "::1"),
    ],
)
@pytest.mark.req("OC-ADAPT-OAI-6021")
def test_allowed_hosts_match_an_idn_base_url_in_either_spelling(
    base_url: str, allowed: str
) -> None:
    config = AdapterConfig(base_url=base_url, model="m", allowed_hosts={allowed, "other.example"})
    assert config.allowed_hosts is not None
    assert config.host in config.allowed_hosts  # what the egress check compares


def test_an_allowed_host_that_is_no_host_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"AdapterConfig\.allowed_hosts"):
        AdapterConfig(base_url=BASE, model="m", allowed_hosts={"127.0.0.1", "a b/c"})
