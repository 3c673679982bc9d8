"""HTTP/1.1 on h11 + trio (`_h11transport.H11Transport`): its pool, its closes, TLS, errors.

A connection goes back to the pool only after a clean end of its exchange; an early close
closes the socket at once; at most `max_connections` requests are in flight; connection
set-up is not serialised; TLS offers ALPN http/1.1 with SNI; a lost connection raises the
httpx2 exceptions `_errors.error_from_transport` maps to the same kinds as before.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import pytest
import trio
import trio.testing
import trustme

from oai_adapter import ErrorKind
from oai_adapter import _h11transport as h11transport
from oai_adapter._errors import error_from_transport
from oai_adapter._h11transport import BODY_EXTENSION, H11Body, H11Statistics, H11Transport
from oai_adapter._tls import build_ssl_context
from oai_adapter.testing import FakeUpstream, Gate, Hang, Reply, Reset, Stream

from .conftest import IO_DEADLINE
from .helpers import make_transport


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port on 127.0.0.1 where a listener accepts connections and never reads or answers."""
    silent = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with silent:
        yield silent.socket.getsockname()[1]


CHAT = b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": true}'


@asynccontextmanager
async def client_on(
    transport: H11Transport, timeouts: httpx2.Timeout | None = None
) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        transport=transport, trust_env=False, timeout=timeouts or httpx2.Timeout(5.0)
    ) as client:
        yield client


#: As the adapter sends: no read timeout (its own deadlines bound reads), so reads take the
#: transport's hot path.
NO_READ_TIMEOUT = httpx2.Timeout(5.0, read=None)


async def open_chat(client: httpx2.AsyncClient, base_url: str) -> httpx2.Response:
    request = client.build_request(
        "POST",
        base_url + "/chat/completions",
        content=CHAT,
        headers={"content-type": "application/json"},
    )
    return await client.send(request, stream=True)


def body_of(response: httpx2.Response) -> H11Body:
    body = response.extensions[BODY_EXTENSION]
    assert isinstance(body, H11Body)
    return body


async def read_all(body: H11Body) -> bytes:
    out = b""
    while chunk := await body.receive_some():
        out += chunk
    return out


async def open_and_read(client: httpx2.AsyncClient, base_url: str) -> bytes:
    response = await open_chat(client, base_url)
    try:
        return await read_all(body_of(response))
    finally:
        await response.aclose()


async def test_connection_goes_back_to_the_pool_after_a_clean_end(
    upstream: FakeUpstream,
) -> None:
    transport = make_transport()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client:
            for _ in range(3):
                response = await open_chat(client, upstream.base_url)
                body = body_of(response)
                data = await read_all(body)
                assert body.complete
                assert data.endswith(b"data: [DONE]\n\n")
                await response.aclose()
                assert transport.statistics().idle == 1
            assert transport.statistics().connects_total == 1
    assert upstream.connections_total == 1


async def test_end_if_here_parses_a_waiting_end_and_never_waits_for_one(
    upstream: FakeUpstream,
) -> None:
    terminator_due = trio.Event()
    upstream.script(Reply(steps=[Stream(), Gate(terminator_due)]))
    transport = make_transport()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client:
            response = await open_chat(client, upstream.base_url)
            body = body_of(response)
            data = b""
            while not data.endswith(b"data: [DONE]\n\n"):
                data += await body.receive_some()
            assert not await body.end_if_here(65536)  # the server holds the end: no wait
            assert not body.complete
            terminator_due.set()
            await trio.testing.wait_all_tasks_blocked()  # the terminator is on the socket
            assert await body.end_if_here(65536)
            assert body.complete
            await response.aclose()
            assert transport.statistics().idle == 1
    assert upstream.connections_total == 1


async def test_early_close_closes_the_socket_and_is_not_reused(upstream: FakeUpstream) -> None:
    upstream.script(Reply(steps=[Stream(tokens=1), Hang()]))
    transport = make_transport()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client:
            response = await open_chat(client, upstream.base_url)
            assert await body_of(response).receive_some()  # mid-body
            await response.aclose()  # e.g. a cancel
            stats = transport.statistics()
            assert (stats.connections, stats.idle, stats.in_flight) == (0, 0, 0)
            await upstream.wait_quiet()  # the server saw the close
            assert upstream.disconnects >= 1
            second = await open_chat(client, upstream.base_url)
            await read_all(body_of(second))
            await second.aclose()
    assert upstream.connections_total == 2


async def test_a_cancelled_read_closes_the_connection(upstream: FakeUpstream) -> None:
    upstream.script(Reply(steps=[Stream(tokens=1), Hang()]))
    transport = make_transport()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client:
            response = await open_chat(client, upstream.base_url)
            body = body_of(response)
            with trio.CancelScope() as scope:
                while await body.receive_some():
                    scope.cancel()  # cancels the next read, blocked on the hanging server
            await response.aclose()
            assert transport.statistics().connections == 0
            await upstream.wait_quiet()


async def test_at_most_max_connections_requests_are_in_flight(upstream: FakeUpstream) -> None:
    upstream.script(*[Reply(steps=[Stream(tokens=1), Hang()])] * 3)
    transport = make_transport(max_connections=2)
    third: list[httpx2.Response] = []
    third_opened = trio.Event()

    async def open_third(client: httpx2.AsyncClient) -> None:
        third.append(await open_chat(client, upstream.base_url))
        third_opened.set()

    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client, trio.open_nursery() as nursery:
            first = await open_chat(client, upstream.base_url)
            second = await open_chat(client, upstream.base_url)
            nursery.start_soon(open_third, client)
            await trio.testing.wait_all_tasks_blocked()
            assert third == []  # waiting for a permit, no connection opened for it
            assert transport.statistics().in_flight == 2
            assert upstream.connections_total == 2
            await first.aclose()
            await third_opened.wait()  # the third request connects now
            assert transport.statistics().connections == 2
            await second.aclose()
            await third[0].aclose()
    assert transport.statistics().in_flight == 0


@pytest.mark.parametrize(
    ("reply", "after_headers", "kind"),
    [
        (Reply(steps=[Stream(tokens=2), Reset()]), True, ErrorKind.WORKER_RESET),
        (Reply(before=[Reset()]), False, ErrorKind.POOL_UNAVAILABLE),
    ],
    ids=["mid-body", "before-headers"],
)
async def test_a_lost_connection_raises_what_error_from_transport_maps(
    upstream: FakeUpstream, reply: Reply, after_headers: bool, kind: ErrorKind
) -> None:
    upstream.script(reply)
    transport = make_transport()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client:
            with pytest.raises(httpx2.TransportError) as caught:
                await open_and_read(client, upstream.base_url)
            assert transport.statistics().connections == 0
    assert isinstance(caught.value, httpx2.ReadError | httpx2.RemoteProtocolError)
    assert error_from_transport(caught.value, after_headers=after_headers).kind is kind


async def test_server_closing_mid_body_is_a_remote_protocol_error(nursery: trio.Nursery) -> None:
    """A clean FIN inside a chunked body (no RST) is h11's incomplete-body error."""

    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n"
        )
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, serve, 0)
    port = listeners[0].socket.getsockname()[1]
    transport = make_transport()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client:
            response = await open_chat(client, f"http://127.0.0.1:{port}/v1")
            body = body_of(response)
            assert await body.receive_some() == b"data: "
            with pytest.raises(httpx2.RemoteProtocolError):
                await body.receive_some()
            await response.aclose()
            assert transport.statistics().connections == 0


@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_connects_run_concurrently_over_tls_with_alpn_and_sni(
    nursery: trio.Nursery,
) -> None:
    """The server completes no TLS handshake until all `n` TCP connections have arrived, so a
    pool that set connections up one at a time would never get past the first."""
    n = 8
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    server_names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: server_names.append(name)  # type: ignore[assignment,misc,return-value]
    alpn: list[str | None] = []
    arrived = 0
    all_arrived = trio.Event()

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == n:
            all_arrived.set()
        await all_arrived.wait()
        tls = trio.SSLStream(stream, server_ctx, server_side=True)
        async with tls:
            await tls.do_handshake()
            alpn.append(tls.selected_alpn_protocol())
            await tls.receive_some(65536)
            await tls.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            with pytest.raises(trio.BrokenResourceError):  # no close_notify: closed at once
                await tls.receive_some(65536)

    listeners = await nursery.start(trio.serve_tcp, serve, 0)
    port = listeners[0].socket.getsockname()[1]
    client_ctx = build_ssl_context()
    client_ctx.set_alpn_protocols(["http/1.1"])  # as `shared_ssl_context` does
    ca.configure_trust(client_ctx)
    transport = make_transport(max_connections=n, ssl_context=client_ctx)
    statuses: list[int] = []

    async def one(client: httpx2.AsyncClient) -> None:
        response = await client.get(f"https://localhost:{port}/")
        statuses.append(response.status_code)

    # real time: "localhost" is resolved in a worker thread
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client, trio.open_nursery() as inner:
            for _ in range(n):
                inner.start_soon(one, client)
    assert statuses == [200] * n
    assert alpn == ["http/1.1"] * n
    assert server_names == ["localhost"] * n
    assert transport.statistics().connects_total == n


@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_untrusted_certificate_is_a_connect_error_mapped_to_policy(
    nursery: trio.Nursery,
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    upstream = FakeUpstream(ssl_context=server_ctx)
    await nursery.start(upstream.serve)
    transport = make_transport()  # the private CA is not trusted
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client:
            with pytest.raises(httpx2.ConnectError) as caught:
                await open_chat(client, upstream.base_url)
    assert error_from_transport(caught.value, after_headers=False).kind is ErrorKind.POLICY
    assert transport.statistics().connections == 0
    assert upstream.completion_requests() == []


async def test_a_tls_handshake_that_never_ends_is_a_connect_timeout(
    loopback_clock: trio.testing.MockClock, silent_port: int
) -> None:
    """The connect timeout bounds TCP and the TLS handshake; the socket is closed."""
    port = silent_port
    transport = make_transport()
    started = trio.current_time()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client:
            with pytest.raises(httpx2.ConnectTimeout, match=f"127.0.0.1:{port} timed out"):
                await client.get(
                    f"https://127.0.0.1:{port}/v1/models", timeout=httpx2.Timeout(9, connect=3)
                )
    assert trio.current_time() - started == pytest.approx(3.0, abs=0.5)
    assert transport.statistics() == H11Statistics(0, 0, 0, 0)


async def test_a_request_the_server_never_reads_is_a_write_timeout_on_a_fresh_connection(
    loopback_clock: trio.testing.MockClock, silent_port: int
) -> None:
    """The write timeout counts from the write, not from the connect (one scope, its deadline
    moved), and a timed-out write closes the connection."""
    transport = make_transport()
    started = trio.current_time()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport) as client:
            with pytest.raises(httpx2.WriteTimeout, match="not sent within 5 s"):
                await client.post(
                    f"http://127.0.0.1:{silent_port}/v1/x",
                    content=b"x" * (64 << 20),
                    timeout=httpx2.Timeout(9, connect=2, write=5),
                )
    assert trio.current_time() - started == pytest.approx(5.0, abs=0.5)
    assert transport.statistics() == H11Statistics(0, 0, 0, 1)


async def _serve_waiting_body(nursery: trio.Nursery, size: int, written: trio.Event) -> str:
    """A server that answers with a `size`-byte body written at once, setting `written` when
    the kernel has taken all of it: from then on the client finds data waiting on every read
    (the bulk case). Returns the base URL."""

    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        await stream.send_all(head + b"content-length: %d\r\n\r\n" % size + b"x" * size)
        written.set()
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, serve, 0)
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v1"


#: Small enough for loopback's socket buffers to hold it all (the server's write completes);
#: read 4 KiB at a time (`READ_SIZE`, patched) so that it takes many reads, each finding the
#: next 4 KiB waiting.
_WAITING = 128 * 1024
_SMALL_READ = 4096


async def test_every_read_of_a_waiting_body_lets_other_tasks_run(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain socket is read off its file descriptor, trying the socket first after a full
    read: each socket read is still a schedule point, so a body that is all there never
    starves other tasks."""
    monkeypatch.setattr(h11transport, "READ_SIZE", _SMALL_READ)
    written = trio.Event()
    base_url = await _serve_waiting_body(nursery, _WAITING, written)
    ticks = 0

    async def ticker(task_status: trio.TaskStatus[None]) -> None:
        nonlocal ticks
        task_status.started()
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    transport = make_transport()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport, NO_READ_TIMEOUT) as client, trio.open_nursery() as inner:
            response = await open_chat(client, base_url)
            body = body_of(response)
            await written.wait()
            await inner.start(ticker)
            reads = got = ticks = 0
            while got < _WAITING:
                got += len(await body.receive_some())
                reads += 1
            # trio runs every runnable task once per scheduling batch, in random order: one
            # schedule point per read lets the ticker run about once per read
            assert reads > _WAITING // _SMALL_READ // 2
            assert ticks >= reads - 2, (ticks, reads)
            await response.aclose()
            inner.cancel_scope.cancel()


async def test_a_read_of_a_waiting_body_is_a_cancel_point(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h11transport, "READ_SIZE", _SMALL_READ)
    written = trio.Event()
    base_url = await _serve_waiting_body(nursery, _WAITING, written)
    transport = make_transport()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport, NO_READ_TIMEOUT) as client:
            response = await open_chat(client, base_url)
            body = body_of(response)
            await written.wait()
            # reads until one fills the buffer: the next read tries the socket first
            while len(await body.receive_some()) < _SMALL_READ:
                pass
            with trio.CancelScope() as scope:
                scope.cancel()
                await body.receive_some()
            assert scope.cancelled_caught
            await response.aclose()
            assert transport.statistics().connections == 0


async def test_a_body_read_after_the_transport_closed_fails_even_when_its_fd_is_reused(
    upstream: FakeUpstream,
) -> None:
    """A plain socket is read off its file descriptor: once the transport has closed it, the
    number may belong to a newer socket, and the old body must not read that socket's bytes."""
    upstream.script(Reply(steps=[Stream(tokens=1), Hang()]))
    transport = make_transport()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport, NO_READ_TIMEOUT) as client:
            response = await open_chat(client, upstream.base_url)
            body = body_of(response)
            assert await body.receive_some()
            await transport.aclose()  # closes the connection in use
            with trio.socket.socket() as newer:  # likely given the closed socket's number
                await newer.connect(("127.0.0.1", upstream.port))
                with pytest.raises(httpx2.ReadError):
                    await body.receive_some()
            await response.aclose()


async def test_closing_the_transport_closes_every_connection_even_when_cancelled_midway(
    upstream: FakeUpstream,
) -> None:
    """The adapter bounds its transport's close (`CLOSE_GRACE`): a close cut short must still
    have closed every socket, none left to the garbage collector."""
    upstream.script(*[Reply(steps=[Stream(tokens=1), Hang()])] * 3)
    transport = make_transport()
    with trio.fail_after(IO_DEADLINE):
        async with client_on(transport, NO_READ_TIMEOUT) as client:
            responses = [await open_chat(client, upstream.base_url) for _ in range(3)]
            for response in responses:
                assert await body_of(response).receive_some()
            assert upstream.connections_open == 3
            with trio.CancelScope() as scope:
                scope.cancel()  # the close's time is up before it starts
                await transport.aclose()
            await upstream.wait_quiet()  # the server saw all three closes
            for response in responses:
                await response.aclose()
