"""HTTP/2 that cancels properly (`_h2transport.H2Transport`) against `H2Upstream`, which records
the frames it receives: a cancel resets exactly its stream and the connection lives on."""

from __future__ import annotations

import ssl
from contextlib import aclosing

import h2.errors
import httpx2
import pytest
import trio
import trio.testing
import trustme

from oai_adapter import (
    AdapterConfig,
    End,
    ErrorKind,
    OpenAIAdapter,
    RetryPolicy,
    Started,
    TaskRequest,
    Timeouts,
    Token,
)
from oai_adapter._h2transport import H2Transport
from oai_adapter._transport import ClosingTransport
from oai_adapter.testing import (
    DEFAULT_TEXT,
    FakeUpstream,
    Gate,
    GoAway,
    H2Upstream,
    Hang,
    Reply,
    Reset,
    ResetStream,
    Send,
    UpdateSettings,
    chat_chunk,
    render_stream,
    split_words,
    sse,
)

from .conftest import IO_DEADLINE

CANCEL = h2.errors.ErrorCodes.CANCEL


@pytest.fixture
async def h2up(nursery: trio.Nursery) -> H2Upstream:
    server = H2Upstream()
    await nursery.start(server.serve)
    return server


def h2config(upstream: FakeUpstream, **overrides: object) -> AdapterConfig:
    values: dict[str, object] = {
        "base_url": upstream.base_url,
        "model": upstream.model,
        "http2": True,
        "retry": RetryPolicy(max_attempts=3, base=0.01, cap=0.05),
    }
    values.update(overrides)
    return AdapterConfig(**values)  # type: ignore[arg-type]


def transport_of(adapter: OpenAIAdapter) -> H2Transport:
    transport = adapter.upstream.transport
    assert isinstance(transport, H2Transport)
    return transport


async def collect(adapter: OpenAIAdapter, task_id: str, **kw: object) -> list[object]:
    req = TaskRequest(task_id=task_id, prompt="hi", correlation_id=task_id, **kw)  # type: ignore[arg-type]
    async with adapter.submit(req) as events:
        return [ev async for ev in events]


def text_of(events: list[object]) -> str:
    return "".join(ev.text for ev in events if isinstance(ev, Token))


def to_eof() -> Reply:
    """The default chat stream without `[DONE]`, so the reader reads HTTP/1.1 to its end.

    (Over HTTP/1.1 a reader that stops at `[DONE]` leaves httpx2's and httpcore2's nested body
    generators unexhausted; trio reports them at garbage collection, which `filterwarnings =
    error` turns into a failure. Not a concern of this file; see the report.)"""
    return Reply(steps=render_stream("chat", split_words(DEFAULT_TEXT), done=False))


def held_stream(gate: trio.Event) -> Reply:
    """The default chat stream, held after its first token until `gate` is set."""
    steps = render_stream("chat", split_words(DEFAULT_TEXT))
    return Reply(steps=[*steps[:2], Gate(gate), *steps[2:]])


def hanging_stream() -> Reply:
    """A role chunk and one token, then silence until the client goes away."""
    return Reply(steps=[Send(sse(chat_chunk("", role=True))), Send(sse(chat_chunk("tok"))), Hang()])


# --- protocol selection ---------------------------------------------------------------------


@pytest.mark.req("OC-ADAPT-OAI-6001")
async def test_h2c_prior_knowledge_streams_and_reports_http2(h2up: H2Upstream) -> None:
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            events = await collect(adapter, "t")
    started = events[0]
    assert isinstance(started, Started)
    assert started.http_version == "HTTP/2"
    assert text_of(events) == DEFAULT_TEXT
    assert isinstance(events[-1], End)
    assert events[-1].reason == "stop"


@pytest.mark.req("OC-ADAPT-OAI-6021")
async def test_tls_alpn_negotiates_http2_with_verification_on(nursery: trio.Nursery) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    upstream = H2Upstream(ssl_context=server_ctx)
    await nursery.start(upstream.serve)
    with ca.cert_pem.tempfile() as ca_path, trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(upstream, ca_bundle=ca_path)) as adapter:
            events = await collect(adapter, "t")
        async with OpenAIAdapter(h2config(upstream)) as adapter:  # CA not trusted
            refused = await collect(adapter, "u")
    assert isinstance(events[0], Started)
    assert events[0].http_version == "HTTP/2"
    assert text_of(events) == DEFAULT_TEXT
    end = refused[-1]
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.POLICY


async def test_tls_origin_that_picks_http11_in_alpn_is_served_over_http11(
    nursery: trio.Nursery,
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["http/1.1"])
    upstream = FakeUpstream(ssl_context=server_ctx)
    await nursery.start(upstream.serve)
    upstream.script(to_eof(), to_eof())
    with ca.cert_pem.tempfile() as ca_path, trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(upstream, ca_bundle=ca_path)) as adapter:
            first = await collect(adapter, "t")
            second = await collect(adapter, "u")
    for events in (first, second):
        assert isinstance(events[0], Started)
        assert events[0].http_version == "HTTP/1.1"
        assert text_of(events) == DEFAULT_TEXT


async def test_http2_false_stays_http11(upstream: FakeUpstream) -> None:
    upstream.script(to_eof())
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(upstream, http2=False)) as adapter:
            assert not isinstance(adapter.upstream.transport, H2Transport)
            events = await collect(adapter, "t")
    assert isinstance(events[0], Started)
    assert events[0].http_version == "HTTP/1.1"


async def test_probes_work_over_http2(h2up: H2Upstream) -> None:
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            health = await adapter.health()
            props = await adapter.props()
    assert health.ready
    assert props.slots_total == h2up.slots
    assert h2up.connections_total == 1
    assert all(r.method == "GET" for r in h2up.requests)


async def test_http2_through_a_configured_proxy_uses_the_http11_client() -> None:
    config = AdapterConfig(
        base_url="https://example.invalid/v1", model="m", http2=True, proxy="http://127.0.0.1:1"
    )
    async with OpenAIAdapter(config) as adapter:
        transport = adapter.upstream.transport
        assert isinstance(transport, ClosingTransport)  # httpx2's pool, HTTP/1.1 only
        assert not isinstance(transport, H2Transport)
        assert transport._pool._http2 is False  # type: ignore[attr-defined]


# --- cancel → RST_STREAM(CANCEL) for exactly that stream ------------------------------------


async def test_cancel_resets_exactly_its_stream_while_two_others_finish(
    h2up: H2Upstream,
) -> None:
    gate = trio.Event()
    h2up.script(held_stream(gate), held_stream(gate), hanging_stream())
    results: dict[str, list[object]] = {}
    first_token = {name: trio.Event() for name in ("a", "b", "c")}

    async def run(adapter: OpenAIAdapter, name: str) -> None:
        req = TaskRequest(task_id=name, prompt="hi", correlation_id=name)
        out: list[object] = []
        async with adapter.submit(req) as events:
            async for ev in events:
                out.append(ev)
                if isinstance(ev, Token):
                    first_token[name].set()
        results[name] = out

    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter, trio.open_nursery() as nursery:
            for name in ("a", "b", "c"):
                nursery.start_soon(run, adapter, name)
                await first_token[name].wait()  # in order: a, b, c get streams 1, 3, 5
            assert adapter.cancel("c")
            await h2up.wait_frames(1)
            assert transport_of(adapter).statistics().streams_open == 2  # c's slot is free
            gate.set()
    assert h2up.resets() == [(h2up.stream_ids["c"], CANCEL)]
    assert h2up.connections_total == 1
    for name in ("a", "b"):
        assert text_of(results[name]) == DEFAULT_TEXT
        end = results[name][-1]
        assert isinstance(end, End)
        assert end.reason == "stop"
    end = results["c"][-1]
    assert isinstance(end, End)
    assert end.reason == "cancelled"


async def test_cancel_releases_the_stream_before_it_returns(h2up: H2Upstream) -> None:
    # As over HTTP/1.1: `cancel()` itself releases the stream (its RST_STREAM queued, the
    # connection's writer woken), and the cancel's `End` does not wait for the reader to unwind.
    h2up.script(hanging_stream())
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            req = TaskRequest(task_id="t", prompt="hi")
            async with adapter.submit(req) as events:
                async for ev in events:
                    if isinstance(ev, Token):
                        break
                await trio.testing.wait_all_tasks_blocked()
                assert transport_of(adapter).statistics().streams_open == 1
                assert adapter.cancel("t")
                # no checkpoint since: the reader has not run
                assert not events.statistics().reader_done
                assert transport_of(adapter).statistics().streams_open == 0
                end = await events.__anext__()
                assert isinstance(end, End)
                assert end.reason == "cancelled"
            await h2up.wait_frames(1)
            assert h2up.connections_total == 1  # the connection lives on
    assert h2up.resets() == [(1, CANCEL)]


async def test_breaking_out_of_submit_resets_the_stream(h2up: H2Upstream) -> None:
    h2up.script(hanging_stream())
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            req = TaskRequest(task_id="t", prompt="hi")
            async with adapter.submit(req) as events:
                async for ev in events:
                    if isinstance(ev, Token):
                        break
            await h2up.wait_frames(1)
            assert transport_of(adapter).statistics().streams_open == 0
    assert h2up.resets() == [(1, CANCEL)]


async def test_outer_cancel_scope_resets_the_stream(h2up: H2Upstream) -> None:
    h2up.script(hanging_stream())
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            with trio.CancelScope() as scope:
                async with adapter.submit(TaskRequest(task_id="t", prompt="hi")) as events:
                    async for ev in events:
                        if isinstance(ev, Token):
                            scope.cancel()
            await h2up.wait_frames(1)
    assert h2up.resets() == [(1, CANCEL)]


@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_idle_timeout_resets_the_stream(h2up: H2Upstream) -> None:
    h2up.script(hanging_stream())
    timeouts = Timeouts(idle=0.2, first_token=5.0)
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up, timeouts=timeouts)) as adapter:
            events = await collect(adapter, "t")
            await h2up.wait_frames(1)
    end = events[-1]
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.DECODE_TIMEOUT
    assert h2up.resets() == [(1, CANCEL)]


async def test_cancel_while_waiting_for_headers_resets_the_stream(h2up: H2Upstream) -> None:
    h2up.script(Reply(delay=60.0))  # no headers: the request waits inside the transport
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            async with adapter.submit(TaskRequest(task_id="t", prompt="hi")) as events:
                await h2up.wait_streams(1)
                assert adapter.cancel("t")
                out = [ev async for ev in events]
            await h2up.wait_frames(1)
    assert isinstance(out[-1], End)
    assert out[-1].reason == "cancelled"
    assert h2up.resets() == [(1, CANCEL)]


async def test_window_of_dropped_data_is_returned_to_the_connection(h2up: H2Upstream) -> None:
    """A stream's unread data goes back to the connection window when the stream is reset.
    The connection window (128 KiB) holds one 100 KiB payload: the second stream's payload can
    arrive (unread, so nothing else returns window) only if the first one's was returned."""
    payload = b"x" * (100 * 1024)
    more = trio.Event()
    octets = "application/octet-stream"
    h2up.script(
        Reply(steps=[Send(b"head"), Gate(more), Send(payload), Hang()], content_type=octets),
        Reply(steps=[Send(payload), Hang()], content_type=octets),
    )
    transport = H2Transport(
        ssl_context=ssl.create_default_context(),
        connect_timeout=5.0,
        write_timeout=5.0,
        connection_window=128 * 1024,
    )
    url = h2up.base_url + "/chat/completions"

    async def buffered(size: int) -> None:
        while transport.statistics().unread_bytes < size:
            await trio.testing.wait_all_tasks_blocked()

    with trio.fail_after(IO_DEADLINE):
        async with httpx2.AsyncClient(transport=transport, trust_env=False) as client:
            async with (
                client.stream("POST", url, content=b"{}") as first,
                aclosing(first.aiter_raw()) as chunks,
            ):
                assert await chunks.__anext__() == b"head"
                more.set()
                await buffered(len(payload))  # all of it arrived, unread
            assert transport.statistics().unread_bytes == 0  # dropped with the stream
            async with client.stream("POST", url, content=b"{}"):
                await buffered(len(payload))
    assert h2up.resets() == [(1, CANCEL), (3, CANCEL)]
    assert h2up.connections_total == 1


# --- multiplexing, limits, drift ------------------------------------------------------------


@pytest.mark.req("OC-ADAPT-OAI-6011")
async def test_200_streams_multiplex_over_one_connection_each_ordered_and_complete(
    nursery: trio.Nursery,
) -> None:
    h2up = H2Upstream(max_concurrent_streams=200)
    await nursery.start(h2up.serve)
    gate = trio.Event()
    tokens = split_words(DEFAULT_TEXT)
    h2up.script(*[Reply(steps=[Gate(gate), *render_stream("chat", tokens)])] * 200)
    results: dict[int, list[object]] = {}

    async def run(adapter: OpenAIAdapter, i: int) -> None:
        results[i] = await collect(adapter, f"t{i}")

    with trio.fail_after(IO_DEADLINE):
        config = h2config(h2up, max_connections=200)
        async with OpenAIAdapter(config) as adapter, trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(run, adapter, i)
            await h2up.wait_streams(200)
            gate.set()
    assert h2up.connections_total == 1
    assert h2up.peak_streams == 200
    for events in results.values():
        indexes = [ev.index for ev in events if isinstance(ev, Token)]
        assert indexes == list(range(len(tokens)))
        assert text_of(events) == DEFAULT_TEXT
        assert isinstance(events[-1], End)
        assert events[-1].reason == "stop"


async def test_peer_max_concurrent_streams_of_2_serves_10_tasks(nursery: trio.Nursery) -> None:
    upstream = H2Upstream(max_concurrent_streams=2)
    await nursery.start(upstream.serve)
    gate = trio.Event()
    upstream.script(*[held_stream(gate)] * 10)
    results: list[list[object]] = []

    async def run(adapter: OpenAIAdapter, i: int) -> None:
        results.append(await collect(adapter, f"t{i}"))

    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(upstream)) as adapter, trio.open_nursery() as tasks:
            for i in range(10):
                tasks.start_soon(run, adapter, i)
            await upstream.wait_streams(2)
            gate.set()
    assert len(results) == 10
    assert all(text_of(events) == DEFAULT_TEXT for events in results)
    assert upstream.peak_streams == 2
    assert upstream.connections_total == 1
    assert upstream.resets() == []


@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_waiting_for_a_stream_slot_is_bounded_by_the_connect_timeout(
    nursery: trio.Nursery,
) -> None:
    upstream = H2Upstream(max_concurrent_streams=1)
    await nursery.start(upstream.serve)
    upstream.script(hanging_stream())
    config = h2config(upstream, timeouts=Timeouts(connect=0.2), retry=RetryPolicy(max_attempts=1))
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(config) as adapter:
            async with adapter.submit(TaskRequest(task_id="hold", prompt="hi")) as held:
                async for ev in held:
                    if isinstance(ev, Token):
                        break
                events = await collect(adapter, "waiting")
    end = events[-1]
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.POOL_UNAVAILABLE
    assert "stream slot" in end.error.message


async def test_no_stream_slot_drift_after_1000_cancels(nursery: trio.Nursery) -> None:
    upstream = H2Upstream(max_concurrent_streams=4)
    await nursery.start(upstream.serve)
    upstream.script(*[hanging_stream()] * 1000)
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(upstream)) as adapter:
            for i in range(1000):
                req = TaskRequest(task_id=f"t{i}", prompt="hi")
                async with adapter.submit(req) as events:
                    async for ev in events:
                        if isinstance(ev, Token):
                            break  # leave the block: the stream is reset
            final = await collect(adapter, "last")
            await upstream.wait_frames(1000)
            assert transport_of(adapter).statistics().streams_open == 0
    assert text_of(final) == DEFAULT_TEXT
    assert upstream.connections_total == 1
    assert upstream.streams_open == 0  # the server stopped every cancelled stream
    resets = upstream.resets()
    assert len(resets) == 1000
    assert {code for _, code in resets} == {CANCEL}
    assert len({sid for sid, _ in resets}) == 1000


# --- the peer's side: GOAWAY, RST_STREAM --------------------------------------------------


async def test_goaway_mid_stream_finishes_covered_stream_and_retries_the_unprocessed(
    h2up: H2Upstream,
) -> None:
    """Stream 1 plays GOAWAY(last_stream_id=1) while stream 3 waits for its headers: 1 finishes
    on the old connection (h2 alone would refuse its frames after the GOAWAY), 3 was not
    processed and is retried on a new connection."""
    go = trio.Event()
    steps = render_stream("chat", split_words(DEFAULT_TEXT))
    h2up.script(
        Reply(steps=[*steps[:2], Gate(go), GoAway(), *steps[2:]]),
        Reply(delay=60.0),  # never answered: the GOAWAY cancels it
    )
    results: dict[str, list[object]] = {}
    first_token = trio.Event()

    async def run_a(adapter: OpenAIAdapter) -> None:
        out: list[object] = []
        async with adapter.submit(TaskRequest(task_id="a", prompt="hi")) as events:
            async for ev in events:
                out.append(ev)
                if isinstance(ev, Token):
                    first_token.set()
        results["a"] = out

    async def run_b(adapter: OpenAIAdapter) -> None:
        results["b"] = await collect(adapter, "b")

    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter, trio.open_nursery() as nursery:
            nursery.start_soon(run_a, adapter)
            await first_token.wait()
            nursery.start_soon(run_b, adapter)
            await h2up.wait_streams(2)
            go.set()
    assert text_of(results["a"]) == DEFAULT_TEXT
    assert isinstance(results["a"][0], Started)
    assert results["a"][0].attempt == 1
    assert text_of(results["b"]) == DEFAULT_TEXT
    assert isinstance(results["b"][0], Started)
    assert results["b"][0].attempt == 2
    assert h2up.connections_total == 2


@pytest.mark.req("OC-ADAPT-OAI-6030")
async def test_peer_reset_after_headers_is_worker_reset_and_connection_survives(
    h2up: H2Upstream,
) -> None:
    h2up.script(
        Reply(
            steps=[Send(sse(chat_chunk("", role=True))), Send(sse(chat_chunk("x"))), ResetStream()]
        )
    )
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            reset = await collect(adapter, "t")
            after = await collect(adapter, "u")
    end = reset[-1]
    assert isinstance(end, End)
    assert end.reason == "error"
    assert end.error is not None
    assert end.error.kind is ErrorKind.WORKER_RESET
    assert "INTERNAL_ERROR" in end.error.message
    assert text_of(after) == DEFAULT_TEXT
    assert h2up.connections_total == 1
    assert h2up.resets() == []  # a reset from the peer is not answered with one


async def test_connection_lost_mid_stream_is_worker_reset(h2up: H2Upstream) -> None:
    h2up.script(
        Reply(steps=[Send(sse(chat_chunk("", role=True))), Send(sse(chat_chunk("x"))), Reset()])
    )
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            lost = await collect(adapter, "t")
            after = await collect(adapter, "u")  # a new connection
    end = lost[-1]
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.WORKER_RESET
    assert text_of(after) == DEFAULT_TEXT
    assert h2up.connections_total == 2


async def test_connect_refused_is_pool_unavailable() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    config = AdapterConfig(
        base_url=f"http://127.0.0.1:{port}/v1",
        model="m",
        http2=True,
        retry=RetryPolicy(max_attempts=1),
    )
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(config) as adapter:
            events = await collect(adapter, "t")
    end = events[-1]
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.POOL_UNAVAILABLE


# --- structured concurrency -----------------------------------------------------------------


async def test_closing_the_adapter_sends_goaway_and_ends_connection_tasks(
    h2up: H2Upstream,
) -> None:
    with trio.fail_after(IO_DEADLINE):
        me = trio.lowlevel.current_task()
        before = list(me.child_nurseries)
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            await collect(adapter, "t")
            transport = transport_of(adapter)
            assert transport.statistics().connections == 1
            opened = set(me.child_nurseries) - set(before)  # the transport's, the drains'
            assert any(n.child_tasks for n in opened)  # the connection's tasks live there
        assert transport.statistics().connections == 0
        assert me.child_nurseries == before  # no task outlives the adapter
        await h2up.wait_frames(1)
    assert [f.kind for f in h2up.frames] == ["GOAWAY"]


async def test_cancelling_a_scope_around_the_adapter_ends_its_connections(
    h2up: H2Upstream,
) -> None:
    h2up.script(hanging_stream())
    me = trio.lowlevel.current_task()
    before = list(me.child_nurseries)
    with trio.fail_after(IO_DEADLINE):
        with trio.CancelScope() as scope:
            async with OpenAIAdapter(h2config(h2up)) as adapter:
                async with adapter.submit(TaskRequest(task_id="t", prompt="hi")) as events:
                    async for ev in events:
                        if isinstance(ev, Token):
                            scope.cancel()
        assert scope.cancelled_caught
        assert me.child_nurseries == before
        while h2up.connections_open:
            await trio.testing.wait_all_tasks_blocked()


async def test_transport_used_without_entering_refuses() -> None:
    transport = H2Transport(
        ssl_context=ssl.create_default_context(), connect_timeout=1.0, write_timeout=1.0
    )
    client = httpx2.AsyncClient(transport=transport, trust_env=False)
    with pytest.raises(RuntimeError, match="async with"):
        await client.get("http://127.0.0.1:1/")
    await client.aclose()


async def test_peer_refusing_a_stream_before_headers_is_retried(h2up: H2Upstream) -> None:
    h2up.script(Reply(steps=[ResetStream(h2.errors.ErrorCodes.REFUSED_STREAM)]))
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            events = await collect(adapter, "t")
    started = events[0]
    assert isinstance(started, Started)
    assert started.attempt == 2
    assert text_of(events) == DEFAULT_TEXT
    assert h2up.connections_total == 1


async def test_lowered_max_concurrent_streams_mid_connection_is_honoured(
    h2up: H2Upstream,
) -> None:
    """The peer starts at 100 streams and lowers its limit to 1 in a SETTINGS frame sent
    with a response; the five concurrent tasks that follow share one slot."""
    steps = render_stream("chat", split_words(DEFAULT_TEXT))
    h2up.script(Reply(steps=[UpdateSettings(max_concurrent_streams=1), *steps]))
    gate = trio.Event()
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(h2config(h2up)) as adapter:
            first = await collect(adapter, "first")
            h2up.peak_streams = 0
            h2up.script(*[held_stream(gate)] * 5)
            results: list[list[object]] = []

            async def run(i: int) -> None:
                results.append(await collect(adapter, f"t{i}"))

            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(run, i)
                await h2up.wait_streams(2)
                gate.set()
    assert text_of(first) == DEFAULT_TEXT
    assert len(results) == 5
    assert all(text_of(events) == DEFAULT_TEXT for events in results)
    assert h2up.peak_streams == 1
    assert h2up.connections_total == 1


@pytest.mark.req("OC-ADAPT-OAI-6020")
async def test_debug_logging_of_the_http2_stack_never_shows_the_key(h2up: H2Upstream) -> None:
    # An application that turns on DEBUG for every stdlib logger must not get the key from
    # hpack, which logs whole encoded header blocks (Huffman-coded, decodable) at DEBUG.
    import logging

    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    key = "sk-h2-debug-key-0123456789abcdef"
    huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(f"Bearer {key}".encode())
    as_logged = "".join(repr(bytes([b]))[2:-1] for b in huffman)
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Capture(level=logging.DEBUG)
    loggers = [
        logging.getLogger(name)
        for name in ("", "hpack", "hpack.hpack", "h2", "httpx2", "httpcore2")
    ]
    saved = [(lg, lg.level) for lg in loggers]
    logging.getLogger().addHandler(handler)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    try:
        with trio.fail_after(IO_DEADLINE):
            async with OpenAIAdapter(h2config(h2up, api_key=key)) as adapter:
                events = await collect(adapter, "t")
    finally:
        logging.getLogger().removeHandler(handler)
        for lg, level in saved:
            lg.setLevel(level)
    assert isinstance(events[-1], End)
    assert any("hpack" in r or "Encoding" in r or "Decoded" in r for r in records)  # it did log
    joined = "\n".join(records)
    assert key not in joined
    assert as_logged not in joined
