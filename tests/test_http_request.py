"""`Upstream.build_request` builds a request with a body itself (a third of httpx2's CPU, part of
every task's set-up, docs/performance.md) and the result is the request httpx2 builds: the same
method, URL, headers in the same order, body, stream type and extensions. Where httpx2 would do
more (cookies in the jar, a `Transfer-Encoding` given) it is asked instead."""

from __future__ import annotations

from typing import Any

import h11
import httpx2
import pytest
import trio
from hypothesis import event, given, settings
from hypothesis import strategies as st

from oai_adapter import AdapterConfig, End, OpenAIAdapter, TaskRequest
from oai_adapter._h11transport import WireRequest, _plain_request
from oai_adapter._http import Upstream, parse_url
from oai_adapter.testing import FakeUpstream, Reply, render_stream

from .conftest import IO_DEADLINE, make_config

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


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"api_key": "sk-test-0123456789"},
        {"headers": {"User-Agent": "mine/1.0", "X-Tenant": "t1"}, "api_key": "sk-k"},
        {"base_url": "http://[::1]:8443/v1"},
    ],
)
def test_the_request_sent_straight_to_our_transport_is_the_one_build_request_builds(
    options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stream over our HTTP/1.1 transport is sent as a `WireRequest`, without httpx2's
    # `Request` (set-up memory and CPU, docs/performance.md): the same bytes must go out.
    config = AdapterConfig(**{"base_url": "http://127.0.0.1:8080/v1", "model": "m", **options})
    upstream = Upstream(config)
    url = upstream.url("/chat/completions")
    expected = upstream.build_request("POST", url, json=BODY, headers=TASK_HEADERS)

    def not_asked(*args: object, **kwargs: object) -> None:
        raise AssertionError("httpx2's Request was built")

    monkeypatch.setattr(upstream.client, "build_request", not_asked)
    monkeypatch.setattr(httpx2.Request, "__init__", not_asked)
    target, wire = upstream.wire_request("POST", url, json=BODY, headers=TASK_HEADERS)
    assert target == expected.url
    assert (wire.method, wire.target, wire.headers, wire.body) == (
        "POST",
        expected.url.raw_path,
        expected.headers.raw,
        BODY,
    )
    key = options.get("api_key")
    if key is not None:
        assert key not in repr(wire)
    parser = h11.Connection(h11.CLIENT)
    sent = wire.encode(parser)
    assert sent.endswith(b"\r\n\r\n" + BODY)
    assert wire.headers is None  # dropped once sent: not held while the head is awaited
    assert wire.body is None
    with pytest.raises(RuntimeError):
        wire.encode(h11.Connection(h11.CLIENT))


def test_a_request_httpx2_builds_is_sent_straight_with_what_httpx2_added() -> None:
    config = AdapterConfig(base_url="http://127.0.0.1:8080/v1", model="m", api_key="sk-k")
    upstream = Upstream(config)
    upstream.client.cookies.set("session", "s1", domain="127.0.0.1")
    url = upstream.url("/chat/completions")
    expected = upstream.build_request("POST", url, json=BODY, headers=TASK_HEADERS)
    _, wire = upstream.wire_request("POST", url, json=BODY, headers=TASK_HEADERS)
    assert wire.headers == expected.headers.raw
    assert (b"Cookie", b"session=s1") in wire.headers
    assert wire.body == BODY


async def test_a_cookie_the_upstream_sets_goes_with_the_next_request(
    upstream: FakeUpstream,
) -> None:
    # Sent straight to our transport, a response still fills httpx2's cookie jar (a load
    # balancer's sticky-session cookie), and the next request carries it.
    upstream.script(
        Reply(steps=render_stream("chat", ["a"]), headers=(("set-cookie", "route=r7; Path=/"),)),
        Reply(steps=render_stream("chat", ["b"])),
    )
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(upstream)) as adapter:
            for i in range(2):
                async with adapter.submit(TaskRequest(task_id=f"c{i}", prompt="x")) as events:
                    seen = [ev async for ev in events]
                    assert isinstance(seen[-1], End)
                    assert seen[-1].reason == "stop"
    first, second = upstream.completion_requests()
    assert "cookie" not in first.headers
    assert second.headers["cookie"] == "route=r7"


# --- the request's bytes: written by us when plainly valid, else by h11 ---------------------

_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
_NAMES = st.sampled_from(
    [b"Host", b"host", b"Content-Length", b"content-length", b"Connection", b"Expect",
     b"Transfer-Encoding", b"Upgrade", b"TE", b"x-a", b"Accept", b"bad name", b"b\xc3\xa4d",
     b"x\r\ny", b"", b"authorization"]
)  # fmt: skip
_VALUES = st.one_of(
    st.sampled_from([b"keep-alive", b"close", b"100-continue", b"chunked", b"h2c", b"0", b"7"]),
    st.binary(max_size=12),
    st.text(alphabet=" \t!~azAZ09", max_size=12).map(str.encode),
)


def _through_h11(wire: tuple[str, bytes, list[tuple[bytes, bytes]], bytes]) -> Any:
    """What h11 alone sends for the request, and what it then makes of a response."""
    method, target, headers, body = wire
    parser = h11.Connection(h11.CLIENT)
    try:
        out = parser.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if body:
            out += parser.send(h11.Data(data=body)) or b""
        out += parser.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return "refused"
    return out, _read_response(parser)


def _read_response(parser: h11.Connection) -> Any:
    parser.receive_data(_RESPONSE)
    events = []
    while (event := parser.next_event()) is not h11.NEED_DATA and event is not h11.PAUSED:
        events.append(event)
        if type(event) is h11.EndOfMessage:
            break
    return events, dict(parser.states), parser.client_is_waiting_for_100_continue


_PLAIN_NAMES = st.sampled_from([b"x-a", b"Accept", b"authorization", b"User-Agent"])
#: Mostly valid values (visible ASCII; now and then a space or tab at an end).
_PLAIN_VALUES = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"), max_size=12
).map(str.encode)


@settings(max_examples=500, deadline=None)
@given(
    # each draw leans to a request written without h11, so that path is well explored
    method=st.sampled_from(["POST", "POST", "GET", "HEAD", "PUT"]),
    target=st.sampled_from([b"/v1/chat/completions?x=1", b"/", b"/", b"/a b", b"/\xc3\xa4", b""]),
    plain=st.lists(st.tuples(_PLAIN_NAMES, _PLAIN_VALUES), max_size=4),
    other=st.lists(st.tuples(_NAMES, _VALUES), max_size=2),
    host=st.sampled_from([True, True, True, False]),
    length=st.sampled_from(["right", "right", "right", "none", "wrong"]),
    body=st.sampled_from([b"", b"{}", b'{"model": "m"}']),
    data=st.data(),
)
def test_a_request_written_without_h11_is_the_one_h11_writes_and_leaves_it_where_h11_would(
    method: str,
    target: bytes,
    plain: list[tuple[bytes, bytes]],
    other: list[tuple[bytes, bytes]],
    host: bool,
    length: str,
    body: bytes,
    data: st.DataObject,
) -> None:
    # `WireRequest.encode` writes a plainly valid request itself (h11's three sends are the
    # largest item of a stream's set-up) and hands everything else to h11: the bytes on the
    # wire, what h11 then reads of the response, and what it refuses must be h11's own.
    pairs = plain + other + ([(b"Host", b"127.0.0.1:8080")] if host else [])
    if length != "none":
        pairs.append((b"Content-Length", b"%d" % (len(body) + (length == "wrong"))))
    pairs = data.draw(st.permutations(pairs))
    expected = _through_h11((method, target, list(pairs), body))
    plain_bytes = _plain_request(method, target, list(pairs), body)
    event("written without h11" if plain_bytes is not None else "written by h11")
    parser = h11.Connection(h11.CLIENT)
    wire = WireRequest(method, target, list(pairs), body)
    try:
        sent = wire.encode(parser)
    except h11.LocalProtocolError:
        assert expected == "refused"
        return
    assert expected != "refused"
    assert (sent, _read_response(parser)) == expected


def test_the_plain_requests_the_adapter_sends_are_written_without_h11(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fast path is taken for what the adapter sends (else the property above proves
    # nothing about the set-up): no `h11.Request` is built for a stream's request.
    config = AdapterConfig(base_url="http://127.0.0.1:8080/v1", model="m", api_key="sk-k")
    upstream = Upstream(config)
    _, wire = upstream.wire_request(
        "POST", upstream.url("/chat/completions"), json=BODY, headers=TASK_HEADERS
    )

    def not_built(*args: object, **kwargs: object) -> None:
        raise AssertionError("h11 built the request")

    monkeypatch.setattr(h11, "Request", not_built)
    sent = wire.encode(h11.Connection(h11.CLIENT))
    assert sent.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert sent.endswith(b"authorization: Bearer sk-k\r\n\r\n" + BODY)
