"""Errors that say why: a compressed event stream, `https://` to a plain-HTTP port, and which
certificate check failed (issue 14, "Errors that do not say why").

Real servers on 127.0.0.1 port 0: the scripted `FakeUpstream` (plain or TLS with `trustme`
certificates) and `H2Upstream` for the HTTP/2 transport, which maps the same exceptions.
"""

from __future__ import annotations

import datetime
import gzip
import socket
import ssl
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
import trio
import trustme

from oai_adapter import End, ErrorKind, Event, OpenAIAdapter, RetryPolicy
from oai_adapter._errors import error_from_transport
from oai_adapter.testing import FakeUpstream, Reply, Send, render_stream

from .conftest import make_config
from .helpers import collect


def the_error(events: list[Event]) -> tuple[ErrorKind, str, bool]:
    assert len(events) == 1, events  # nothing started
    end = events[0]
    assert isinstance(end, End)
    assert end.error is not None
    return end.error.kind, end.error.message, end.error.retryable


# --- a compressed event stream -----------------------------------------------------------------


def _stream_bytes() -> bytes:
    steps = render_stream("chat", ["Hello", " world"], usage=(1, 2))
    return b"".join(s.data for s in steps if isinstance(s, Send))


_COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
}


@pytest.mark.parametrize("encoding", sorted(_COMPRESSORS))
async def test_a_compressed_event_stream_ends_as_protocol_naming_the_encoding(
    upstream: FakeUpstream, encoding: str
) -> None:
    body = _COMPRESSORS[encoding](_stream_bytes())
    upstream.script(Reply(headers=[("content-encoding", encoding)], steps=[Send(body)]))
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        kind, message, retryable = the_error(await collect(adapter))
    assert kind is ErrorKind.PROTOCOL
    assert message.startswith(
        f"the upstream compressed the event stream (content-encoding: {encoding}) although the "
        "adapter asked for identity"
    )
    assert not retryable
    assert len(upstream.completion_requests()) == 1
    assert upstream.completion_requests()[0].headers["accept-encoding"] == "identity"


async def test_content_encoding_identity_streams_as_usual(upstream: FakeUpstream) -> None:
    upstream.script(
        Reply(headers=[("content-encoding", "identity")], steps=[Send(_stream_bytes())])
    )
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        events = await collect(adapter)
    end = events[-1]
    assert isinstance(end, End)
    assert end.reason == "stop"
    assert end.tokens_out == 2


# --- https:// to a plain-HTTP port ---------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_https_to_a_plain_http_port_is_one_policy_error_saying_it_is_not_tls(
    upstream: FakeUpstream, http2: bool
) -> None:
    url = f"https://localhost:{upstream.port}/v1"
    config = make_config(
        upstream, base_url=url, http2=http2, retry=RetryPolicy(max_attempts=3, base=0.01, cap=0.05)
    )
    async with OpenAIAdapter(config) as adapter:
        kind, message, retryable = the_error(await collect(adapter))
    assert kind is ErrorKind.POLICY
    assert message == (
        f"TLS handshake failed: the server at localhost:{upstream.port} does not speak TLS "
        "(plain HTTP? then base_url should start with http://)"
    )
    assert not retryable
    assert upstream.connections_total == 1  # tried once, not three times
    assert upstream.completion_requests() == []


# --- which certificate check failed -------------------------------------------------------------


def _server_context(ca: trustme.CA, case: str, tmp_path: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    now = datetime.datetime.now(datetime.UTC)
    if case == "expired":
        ca.issue_cert("localhost", not_after=now - datetime.timedelta(days=1)).configure_cert(ctx)
    elif case == "wrong host":
        ca.issue_cert("example.invalid").configure_cert(ctx)
    elif case == "unknown CA":
        trustme.CA().issue_cert("localhost").configure_cert(ctx)
    else:  # self-signed: the CA's own certificate served as the leaf, outside any trust store
        other = trustme.CA()
        cert, key = tmp_path / "self.pem", tmp_path / "self.key"
        other.cert_pem.write_to_path(str(cert))
        other.private_key_pem.write_to_path(str(key))
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


@pytest.mark.parametrize(
    ("case", "why"),
    [
        pytest.param("expired", "it has expired (OpenSSL: certificate has expired)", id="expired"),
        pytest.param(
            "wrong host", "it was issued for another host (hostname mismatch)", id="wrong-host"
        ),
        pytest.param(
            "unknown CA",
            "it was issued by an unknown CA (not in the system store or ca_bundle)",
            id="unknown-ca",
        ),
        pytest.param("self-signed", "it is self-signed", id="self-signed"),
    ],
)
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_a_certificate_failure_says_which_check_failed(
    ca: trustme.CA,
    ca_file: str,
    tmp_path: Path,
    nursery: trio.Nursery,
    case: str,
    why: str,
    http2: bool,
) -> None:
    server = FakeUpstream(ssl_context=_server_context(ca, case, tmp_path))
    await nursery.start(server.serve)
    async with OpenAIAdapter(make_config(server, ca_bundle=ca_file, http2=http2)) as adapter:
        kind, message, retryable = the_error(await collect(adapter))
    assert kind is ErrorKind.POLICY
    prefix = (
        f"TLS verification failed for localhost:{server.port}: the upstream's certificate "
        f"was not trusted: {why}"
    )
    assert message.startswith(prefix), message
    assert not retryable
    assert server.completion_requests() == []


# --- a wrapper whose message ends at a colon ---------------------------------------------------


def test_a_connect_error_ending_in_a_colon_is_completed_by_its_cause() -> None:
    # Regression: `connect to host:port failed: ` around an exception whose text is empty
    # ended the message (and the CLI's error line) at "failed:".
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as inner:
            try:
                raise trio.BrokenResourceError from inner
            except trio.BrokenResourceError as exc:
                raise httpx2.ConnectError("connect to localhost:8443 failed: ") from exc
    except httpx2.ConnectError as exc:
        error = error_from_transport(exc, after_headers=False)
    assert error.kind is ErrorKind.POOL_UNAVAILABLE
    assert error.message == (
        "connect failed (ConnectError: connect to localhost:8443 failed: "
        "[Errno 104] Connection reset by peer)"
    )


async def test_a_refused_connection_says_connection_refused(upstream: FakeUpstream) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening, closed: connecting is refused
    config = make_config(
        upstream, base_url=f"http://127.0.0.1:{port}/v1", retry=RetryPolicy(max_attempts=1)
    )
    async with OpenAIAdapter(config) as adapter:
        kind, message, retryable = the_error(await collect(adapter))
    assert kind is ErrorKind.POOL_UNAVAILABLE
    assert retryable
    assert message.startswith("connect failed (ConnectError: ")
    assert message.endswith("Connection refused)"), message
