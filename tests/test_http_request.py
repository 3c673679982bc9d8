"""`Upstream.build_request` builds a request with a body itself (a third of httpx2's CPU, part of
every task's set-up, docs/performance.md) and the result is the request httpx2 builds: the same
method, URL, headers in the same order, body, stream type and extensions. Where httpx2 would do
more (cookies in the jar, a `Transfer-Encoding` given) it is asked instead."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from oai_adapter import AdapterConfig
from oai_adapter._http import Upstream, parse_url

BODY = b'{"model": "m", "messages": [], "stream": true}'
TASK_HEADERS = {"x-correlation-id": "c0ffee", "accept": "text/event-stream"}


def httpx2_request(upstream: Upstream, url: str, body: bytes, headers: dict[str, str]) -> Any:
    """What `Upstream.build_request` built before: httpx2's, then the key."""
    hdrs = {**headers, "content-type": "application/json"}
    request = upstream.client.build_request("POST", parse_url(url), content=body, headers=hdrs)
    request.headers.update(upstream._auth_header())
    return request


def same(a: httpx2.Request, b: httpx2.Request) -> None:
    assert a.method == b.method
    assert a.url == b.url
    assert a.headers.raw == b.headers.raw
    assert a.content == b.content
    assert type(a.stream) is type(b.stream)
    assert a.extensions == b.extensions


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"api_key": "sk-test-0123456789"},
        {"headers": {"User-Agent": "mine/1.0", "X-Tenant": "t1"}},
        {"headers": {"accept-encoding": "gzip", "x-route": "a"}, "api_key": "sk-k"},
        {"base_url": "http://[::1]:8443/v1"},
        {"base_url": "https://api.example.com/v1", "allowed_hosts": ["api.example.com"]},
    ],
)
def test_a_request_with_a_body_is_built_as_httpx2_builds_it_without_asking_httpx2(
    options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = AdapterConfig(**{"base_url": "http://127.0.0.1:8080/v1", "model": "m", **options})
    upstream = Upstream(config)
    url = upstream.url("/chat/completions")
    expected = httpx2_request(upstream, url, BODY, TASK_HEADERS)

    def not_asked(*args: object, **kwargs: object) -> None:
        raise AssertionError("httpx2's build_request was asked")

    monkeypatch.setattr(upstream.client, "build_request", not_asked)
    same(upstream.build_request("POST", url, json=BODY, headers=TASK_HEADERS), expected)


@pytest.mark.parametrize(
    "case", ["cookie in the jar", "transfer-encoding given", "no body", "empty body"]
)
def test_httpx2_builds_what_it_would_add_more_to(case: str) -> None:
    headers = {"Transfer-Encoding": "chunked"} if case == "transfer-encoding given" else {}
    config = AdapterConfig(base_url="http://127.0.0.1:8080/v1", model="m", headers=headers)
    upstream = Upstream(config)
    if case == "cookie in the jar":
        upstream.client.cookies.set("session", "s1", domain="127.0.0.1")
    url = upstream.url("/chat/completions")
    body = {"no body": None, "empty body": b""}.get(case, BODY)
    built = upstream.build_request("POST", url, json=body, headers=TASK_HEADERS)
    hdrs = dict(TASK_HEADERS)
    if body is not None:
        hdrs["content-type"] = "application/json"
    expected = upstream.client.build_request("POST", parse_url(url), content=body, headers=hdrs)
    same(built, expected)
    if case == "cookie in the jar":
        assert built.headers["cookie"] == "session=s1"
