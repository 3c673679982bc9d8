"""Egress and transport policy (OC-ADAPT-OAI-6021): TLS always verified (a private CA only
through `ca_bundle`), proxies only from `AdapterConfig.proxy`, no trust taken from the
environment, redirects never followed, and no byte sent to a host outside `allowed_hosts`."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
import trustme
from loguru import logger

from oai_adapter import End, ErrorKind, Event, OpenAIAdapter, Token, WorkerError
from oai_adapter._http import Upstream
from oai_adapter.testing import FakeUpstream, Reply

from .conftest import IO_DEADLINE, make_config
from .helpers import collect

# --- helpers ---------------------------------------------------------------------------------


def end_of(events: list[Event]) -> End:
    end = events[-1]
    assert isinstance(end, End)
    return end


def text_of(events: list[Event]) -> str:
    return "".join(ev.text for ev in events if isinstance(ev, Token))


def dead_port() -> int:
    """A loopback port that was bound and closed: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


ENV_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def hostile_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> int:
    """Every variable an HTTP client might read, set to something dead or hostile."""
    port = dead_port()
    for name in ENV_VARS:
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "nothing.invalid")
    monkeypatch.setenv("no_proxy", "nothing.invalid")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing-ca.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "missing-ca-dir"))
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1\n  login netrc-user\n  password netrc-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    return port


# --- TLS -------------------------------------------------------------------------------------


@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_tls_with_the_private_ca_in_ca_bundle_streams(
    tls_upstream: FakeUpstream, ca_file: str
) -> None:
    assert tls_upstream.base_url.startswith("https://localhost:")
    async with OpenAIAdapter(make_config(tls_upstream, ca_bundle=ca_file)) as adapter:
        events = await collect(adapter)
    assert end_of(events).reason == "stop"
    assert text_of(events) == "".join(tls_upstream.tokens)


@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_tls_without_the_ca_ends_as_policy_saying_the_certificate_was_not_trusted(
    tls_upstream: FakeUpstream,
) -> None:
    async with OpenAIAdapter(make_config(tls_upstream)) as adapter:
        events = await collect(adapter)
    end = end_of(events)
    assert len(events) == 1
    assert end.reason == "error"
    assert end.error is not None
    assert end.error.kind is ErrorKind.POLICY
    assert "certificate was not trusted" in end.error.message
    assert not end.error.retryable
    assert tls_upstream.completion_requests() == []  # nothing was sent over the bad channel


@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_ssl_cert_file_and_dir_naming_the_ca_do_not_make_it_trusted(
    tls_upstream: FakeUpstream, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: `ssl.create_default_context()` trusts whatever SSL_CERT_FILE names, so one
    # environment variable was enough to have the adapter accept an interceptor's certificate.
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    monkeypatch.setenv("SSL_CERT_DIR", str(Path(ca_file).parent))
    async with OpenAIAdapter(make_config(tls_upstream)) as adapter:
        events = await collect(adapter)
    end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.POLICY
    assert tls_upstream.completion_requests() == []


async def test_sslkeylogfile_is_not_written(
    tls_upstream: FakeUpstream, ca_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    async with OpenAIAdapter(make_config(tls_upstream, ca_bundle=ca_file)) as adapter:
        events = await collect(adapter)
    assert end_of(events).reason == "stop"
    assert not keylog.exists()


async def test_a_certificate_for_another_host_is_refused(
    ca: trustme.CA, ca_file: str, nursery: trio.Nursery
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(server_ctx)
    server = FakeUpstream(ssl_context=server_ctx)
    await nursery.start(server.serve)
    async with OpenAIAdapter(make_config(server, ca_bundle=ca_file)) as adapter:
        events = await collect(adapter)
    end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.POLICY
    assert "not trusted" in end.error.message


@pytest.mark.req("OC-ADAPT-OAI-6021")
def test_there_is_no_switch_to_turn_verification_off(tmp_path: Path) -> None:
    from oai_adapter import AdapterConfig
    from oai_adapter._tls import build_ssl_context

    names = {f for f in AdapterConfig.__dataclass_fields__}
    assert not names & {"verify", "insecure", "verify_tls", "ssl_verify", "tls_verify"}
    ctx = build_ssl_context(None)
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


# --- the environment -------------------------------------------------------------------------


@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_proxy_certificate_and_netrc_environment_has_no_effect(
    hostile_env: int, upstream: FakeUpstream
) -> None:
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        events = await collect(adapter)
        health = await adapter.health()
    assert end_of(events).reason == "stop"
    assert health.ready
    for request in upstream.requests:
        assert "authorization" not in request.headers  # no .netrc credentials
        assert "proxy-authorization" not in request.headers


async def test_hostile_environment_does_not_affect_tls_either(
    hostile_env: int, tls_upstream: FakeUpstream, ca_file: str
) -> None:
    async with OpenAIAdapter(make_config(tls_upstream, ca_bundle=ca_file)) as adapter:
        events = await collect(adapter)
    assert end_of(events).reason == "stop"


# --- an explicit proxy -----------------------------------------------------------------------


class Proxy:
    """A tiny HTTP proxy on loopback: CONNECT tunnels and absolute-form requests, recorded."""

    def __init__(self) -> None:
        self.port = 0
        self.heads: list[bytes] = []

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await client.receive_some(65536)
            if not data:
                return
            buf += data
        head, rest = buf.split(b"\r\n\r\n", 1)
        self.heads.append(head)
        method, target, version = head.split(b"\r\n", 1)[0].split(b" ")
        if method == b"CONNECT":
            host, port = target.rsplit(b":", 1)
            upstream = await trio.open_tcp_stream(host.decode(), int(port))
            await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # absolute form: http://host:port/path -> origin form to the upstream
            authority, path = target.split(b"://", 1)[1].split(b"/", 1)
            host, port = authority.rsplit(b":", 1)
            upstream = await trio.open_tcp_stream(host.decode(), int(port))
            lines = head.split(b"\r\n")
            lines[0] = b" ".join((method, b"/" + path, version))
            await upstream.send_all(b"\r\n".join(lines) + b"\r\n\r\n" + rest)
        async with upstream, trio.open_nursery() as nursery:

            async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                try:
                    while data := await src.receive_some(65536):
                        await dst.send_all(data)
                except trio.BrokenResourceError:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)


@pytest.fixture
async def proxy(nursery: trio.Nursery) -> Proxy:
    server = Proxy()
    await nursery.start(server.serve)
    return server


@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_explicit_proxy_is_used_for_plain_http(
    proxy: Proxy, upstream: FakeUpstream, hostile_env: int
) -> None:
    config = make_config(upstream, proxy=f"http://127.0.0.1:{proxy.port}")
    async with OpenAIAdapter(config) as adapter:
        events = await collect(adapter)
    assert end_of(events).reason == "stop"
    assert len(proxy.heads) == 1
    assert proxy.heads[0].startswith(f"POST {upstream.base_url}/chat/completions ".encode())


@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_explicit_proxy_tunnels_tls_and_sends_its_credentials(
    proxy: Proxy, tls_upstream: FakeUpstream, ca_file: str, hostile_env: int
) -> None:
    config = make_config(
        tls_upstream,
        ca_bundle=ca_file,
        proxy=f"http://proxyuser:Pr0xyPa55@127.0.0.1:{proxy.port}",
    )
    async with OpenAIAdapter(config) as adapter:
        events = await collect(adapter)
    assert end_of(events).reason == "stop"
    assert len(proxy.heads) == 1
    head = proxy.heads[0].decode()
    assert head.startswith(f"CONNECT localhost:{tls_upstream.port} ")
    assert "proxy-authorization: basic" in head.lower()


# --- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_a_redirect_is_never_followed_and_ends_as_policy(
    status: int, upstream: FakeUpstream, nursery: trio.Nursery
) -> None:
    elsewhere = FakeUpstream()
    await nursery.start(elsewhere.serve)
    # Same host, allowed: the redirect alone is the reason it is not followed.
    upstream.script(
        Reply.status_only(status, location=f"{elsewhere.base_url}/chat/completions"),
        Reply.status_only(status, location=f"{elsewhere.base_url}/chat/completions"),
    )
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        events = await collect(adapter)
    end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.POLICY
    assert end.error.status == status
    assert "never followed" in end.error.message
    assert len(upstream.completion_requests()) == 1  # not retried either
    assert elsewhere.requests == []


# --- egress ----------------------------------------------------------------------------------


class Listener:
    """A socket that records whether anything connected to it."""

    def __init__(self) -> None:
        self.port = 0
        self.connected = trio.Event()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connected.set()
        await stream.aclose()


@pytest.mark.req("OC-ADAPT-OAI-6003", "OC-ADAPT-OAI-6021")
async def test_a_host_outside_allowed_hosts_is_refused_before_any_byte_is_sent(
    upstream: FakeUpstream, nursery: trio.Nursery
) -> None:
    listener = Listener()
    await nursery.start(listener.serve)
    config = make_config(upstream)  # allowed_hosts: {"127.0.0.1"}
    upstream_client = Upstream(config)
    try:
        with trio.fail_after(IO_DEADLINE):
            for url in (
                f"http://localhost:{listener.port}/v1/models",  # same machine, other name
                f"http://127.0.0.2:{listener.port}/v1/models",
                f"http://attacker.invalid:{listener.port}/",
            ):
                with pytest.raises(WorkerError) as info:
                    await upstream_client.get(url)
                assert info.value.kind is ErrorKind.POLICY
                assert "allowed_hosts" in info.value.message
            await trio.testing.wait_all_tasks_blocked()
    finally:
        await upstream_client.aclose()
    assert not listener.connected.is_set()
    # The detector works: a real connection is seen.
    with trio.fail_after(IO_DEADLINE):
        stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
        await listener.connected.wait()
        await stream.aclose()


async def test_a_scheme_other_than_http_or_https_is_refused(upstream: FakeUpstream) -> None:
    upstream_client = Upstream(make_config(upstream))
    try:
        with pytest.raises(WorkerError) as info:
            upstream_client.build_request("GET", "ftp://127.0.0.1/x")
        assert info.value.kind is ErrorKind.POLICY
    finally:
        await upstream_client.aclose()


async def test_allowed_hosts_can_name_more_hosts_and_the_base_url_host_is_used(
    upstream: FakeUpstream,
) -> None:
    config = make_config(upstream, allowed_hosts={"127.0.0.1", "backup.internal"})
    assert config.allowed_hosts == frozenset({"127.0.0.1", "backup.internal"})
    async with OpenAIAdapter(config) as adapter:
        events = await collect(adapter)
    assert end_of(events).reason == "stop"


async def test_no_frame_local_holds_the_key_when_building_a_request_fails(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A traceback printed with its frames' locals (loguru's diagnose, the application's own
    # logger) must not show the Authorization header the failing frame was building.
    key = "local-key-0f1e2d3c4b5a69788796a5b4"
    client = Upstream(make_config(upstream, api_key=key))
    lines: list[str] = []
    sink = logger.add(lines.append, level="TRACE", backtrace=True, diagnose=True)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("client refused to build the request")

    try:
        with monkeypatch.context() as patch:
            # httpx2's `Request` fails, whichever way the request is built (`Upstream` builds
            # one with a body itself, and asks `client.build_request` otherwise)
            patch.setattr(httpx2.Request, "__init__", broken)
            try:
                client.build_request("POST", client.url("/chat/completions"), json=b"{}")
            except RuntimeError:
                logger.exception("the application logs it")  # root logger: no patcher
        request = client.build_request("POST", client.url("/chat/completions"), json=b"{}")
    finally:
        logger.remove(sink)
        await client.aclose()
    assert lines
    assert "client refused" in lines[0]
    assert key not in lines[0]
    # and the request that is built carries the header, masked in its repr
    assert request.headers["authorization"] == f"Bearer {key}"
    assert key not in repr(request.headers)


# --- the shared context cache ------------------------------------------------------------------


def test_ssl_contexts_are_shared_per_bundle_and_rebuilt_when_the_bundle_file_changes(
    ca: trustme.CA, tmp_path: Path
) -> None:
    from oai_adapter._tls import shared_ssl_context

    path = tmp_path / "bundle.pem"
    ca.cert_pem.write_to_path(str(path))
    first = shared_ssl_context(str(path))
    assert shared_ssl_context(str(path)) is first  # loading the store once, not per adapter
    assert first.verify_mode is ssl.CERT_REQUIRED
    assert first.check_hostname
    other = trustme.CA()
    other.cert_pem.write_to_path(str(path), append=True)
    changed = shared_ssl_context(str(path))
    assert changed is not first  # a changed file is read again
    assert len(changed.get_ca_certs()) == len(first.get_ca_certs()) + 1


def test_a_context_trusting_a_private_ca_is_never_handed_out_without_it(
    ca: trustme.CA, ca_file: str
) -> None:
    from oai_adapter._h2transport import ALPN
    from oai_adapter._tls import shared_ssl_context

    private = shared_ssl_context(ca_file)
    system = shared_ssl_context(None)
    h2 = shared_ssl_context(ca_file, alpn=ALPN)
    assert len({id(private), id(system), id(h2)}) == 3
    assert len(private.get_ca_certs()) == len(system.get_ca_certs()) + 1
