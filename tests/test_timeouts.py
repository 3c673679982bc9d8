"""The four timeouts (DESIGN.md, "Configuration"; OC-ADAPT-OAI-6002): each fires, at its value
and not before, with the kind and message the error table gives; keep-alive bytes do not hold
`idle` off; a slow consumer is backpressure, not a timeout; cleanup that hangs is abandoned.

Timing runs on `loopback_clock` (conftest.py): a virtual clock that jumps to the next deadline
when every task waits, so "fired at 2.0 s" is a fact about the deadline, not a measured speed.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from oai_adapter import (
    AdapterConfig,
    End,
    ErrorKind,
    Event,
    Metrics,
    OpenAIAdapter,
    RetryPolicy,
    Started,
    TaskRequest,
    Timeouts,
    Token,
)
from oai_adapter._http import CLOSE_GRACE
from oai_adapter._stream import CHANNEL_BATCHES
from oai_adapter.testing import (
    FakeUpstream,
    Fault,
    Hang,
    Reply,
    Send,
    Sleep,
    chat_chunk,
    check_stream,
    sse,
)

DEADLINE = 600  # trio seconds; the virtual clock makes them free


def config(base_url: str, model: str = "test-model", **timeouts: float) -> AdapterConfig:
    return AdapterConfig(
        base_url=base_url,
        model=model,
        timeouts=Timeouts(**timeouts),
        retry=RetryPolicy(max_attempts=3, base=0.01, cap=0.05),
    )


async def timed(cfg: AdapterConfig, **adapter_kw: Any) -> list[tuple[float, Event]]:
    """One task on a fresh adapter, under `DEADLINE`: each event with its time since `submit`."""
    out: list[tuple[float, Event]] = []
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(cfg, **adapter_kw) as adapter:
            t0 = trio.current_time()
            async with adapter.submit(TaskRequest(task_id="t", prompt="hi")) as events:
                async for ev in events:
                    out.append((trio.current_time() - t0, ev))
    check_stream([ev for _, ev in out])
    return out


def end_of(events: list[tuple[float, Event]]) -> tuple[float, End]:
    at, end = events[-1]
    assert isinstance(end, End)
    return at, end


def token_times(events: list[tuple[float, Event]]) -> list[float]:
    return [at for at, ev in events if isinstance(ev, Token)]


# --- first_token ------------------------------------------------------------------------------


@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_first_token_fires_on_a_stall_before_the_headers(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(Fault.stall_before_headers())
    events = await timed(config(upstream.base_url, first_token=2.0, idle=5.0))
    at, end = end_of(events)
    assert len(events) == 1  # never started
    assert end.error is not None
    assert end.error.kind is ErrorKind.DECODE_TIMEOUT
    assert end.error.message.startswith("first_token timeout: no event within 2 s")
    assert end.error.retryable is False
    assert at == pytest.approx(2.0)
    assert len(upstream.completion_requests()) == 1  # DECODE_TIMEOUT is never retried


async def test_first_token_fires_on_a_stall_after_the_headers(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(Fault.stall_after_headers())
    events = await timed(config(upstream.base_url, first_token=3.0, idle=10.0))
    at, end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.DECODE_TIMEOUT
    assert end.error.message.startswith("first_token timeout: no event within 3 s")
    assert at == pytest.approx(3.0)
    assert len(upstream.completion_requests()) == 1


async def test_idle_fires_on_a_stall_after_the_headers_when_it_comes_before_first_token(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    # idle counts from the response head: 2 s after it, before first_token's 10 s
    upstream.script(Fault.stall_after_headers())
    events = await timed(config(upstream.base_url, first_token=10.0, idle=2.0))
    at, end = end_of(events)
    assert len(events) == 1  # never started
    assert end.error is not None
    assert end.error.kind is ErrorKind.DECODE_TIMEOUT
    assert end.error.message.startswith("idle timeout: no event from the upstream for 2 s")
    assert at == pytest.approx(2.0)
    assert len(upstream.completion_requests()) == 1


async def test_first_token_fires_after_started_when_no_token_follows(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    # chat's role-only delta is an event (Started is emitted) but not a Token
    upstream.script(Fault.stall_after(0))
    events = await timed(config(upstream.base_url, first_token=3.0, idle=10.0))
    at, end = end_of(events)
    assert [type(ev).__name__ for _, ev in events] == ["Started", "Metrics", "End"]
    assert end.error is not None
    assert end.error.kind is ErrorKind.DECODE_TIMEOUT
    assert "first_token" in end.error.message
    assert at == pytest.approx(3.0)


async def test_keepalive_comments_do_not_hold_off_first_token(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(Fault.keepalive_drip(0.25))
    events = await timed(config(upstream.base_url, first_token=2.0, idle=30.0))
    at, end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.DECODE_TIMEOUT
    assert at == pytest.approx(2.0)


# --- idle -------------------------------------------------------------------------------------


async def test_idle_fires_when_the_stream_stalls_mid_way(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(Fault.stall_after(3))
    events = await timed(config(upstream.base_url, first_token=10.0, idle=1.5))
    at, end = end_of(events)
    assert len(token_times(events)) == 3
    assert end.error is not None
    assert end.error.kind is ErrorKind.DECODE_TIMEOUT
    assert "idle" in end.error.message
    assert "1.5 s" in end.error.message
    assert at - token_times(events)[-1] == pytest.approx(1.5)
    assert len(upstream.completion_requests()) == 1  # never a retry after Started


@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_keepalive_comments_do_not_defeat_idle(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    # a comment every 0.2 s keeps the socket busy, but no event comes: idle must still fire
    upstream.script(Fault.keepalive_drip(0.2, after_tokens=2))
    events = await timed(config(upstream.base_url, first_token=10.0, idle=1.0))
    at, end = end_of(events)
    assert len(token_times(events)) == 2
    assert end.error is not None
    assert end.error.kind is ErrorKind.DECODE_TIMEOUT
    assert "idle" in end.error.message
    assert at - token_times(events)[-1] == pytest.approx(1.0)


async def test_keepalive_bytes_outside_sse_comments_do_not_defeat_idle(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    # bare blank lines (some proxies' keep-alive) parse to no event either
    upstream.script(Fault.keepalive_drip(0.2, after_tokens=1, comment=b"\n"))
    events = await timed(config(upstream.base_url, first_token=10.0, idle=1.0))
    _, end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.DECODE_TIMEOUT


@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_no_timeout_fires_early_on_a_slow_but_live_stream(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    # each gap just under idle, the first token just under first_token, the whole stream
    # longer than both: a normal end
    upstream.script(Fault.ok(pace=0.9))
    events = await timed(config(upstream.base_url, first_token=1.0, idle=1.0, total=60.0))
    at, end = end_of(events)
    assert end.reason == "stop"
    assert len(token_times(events)) == len(upstream.tokens)
    assert at > 10.0


async def test_keepalive_gap_shorter_than_idle_does_not_fire(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(Fault.keepalive_drip(0.5, count=5, after_tokens=2))  # a 2.5 s gap
    events = await timed(config(upstream.base_url, first_token=5.0, idle=3.0))
    _, end = end_of(events)
    assert end.reason == "stop"
    assert len(token_times(events)) == len(upstream.tokens)


@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_a_slow_consumer_gets_backpressure_not_an_idle_timeout(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    tokens: list[str] = []
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(config(upstream.base_url, first_token=5.0, idle=1.0)) as a:
            async with a.submit(TaskRequest(task_id="slow", prompt="hi")) as events:
                async for ev in events:
                    if isinstance(ev, Token):
                        tokens.append(ev.text)
                    await trio.sleep(5.0)  # far longer than idle, per event
                    last = ev
    assert isinstance(last, End)
    assert last.reason == "stop"
    assert tokens == upstream.tokens


# --- total ------------------------------------------------------------------------------------


async def test_total_fires_on_a_stream_that_is_live_but_too_long(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(Fault.ok(pace=0.5))
    events = await timed(config(upstream.base_url, first_token=1.0, idle=1.0, total=4.0))
    at, end = end_of(events)
    assert isinstance(events[-2][1], Metrics)
    assert end.error is not None
    assert end.error.kind is ErrorKind.DEADLINE_UNMET
    assert "total" in end.error.message
    assert "4 s" in end.error.message
    assert end.error.retryable is False
    assert at == pytest.approx(4.0)


@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_total_fires_during_a_retry_backoff(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(Fault.status(429, retry_after="30"), Fault.ok())
    cfg = AdapterConfig(
        base_url=upstream.base_url,
        model=upstream.model,
        timeouts=Timeouts(total=2.0),
        retry=RetryPolicy(max_attempts=3, base=0.1, cap=10.0),
    )
    events = await timed(cfg)
    at, end = end_of(events)
    assert len(events) == 1
    assert end.error is not None
    assert end.error.kind is ErrorKind.DEADLINE_UNMET
    assert "waiting to retry" in end.error.message
    assert "ADMISSION_REJECT" in end.error.message
    assert at == pytest.approx(2.0)  # the backoff (10 s, clipped from 30) never outlives total
    assert len(upstream.completion_requests()) == 1


async def test_total_bounds_the_retries_together(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    # attempts that each answer 503 after a 1.5 s stall: total stops the second one at 2 s
    upstream.script(*[dataclasses.replace(Fault.status(503), delay=1.5)] * 3)
    cfg = AdapterConfig(
        base_url=upstream.base_url,
        model=upstream.model,
        timeouts=Timeouts(total=2.0, first_token=10.0),
        retry=RetryPolicy(max_attempts=10, base=0.1, cap=0.1),
    )
    events = await timed(cfg)
    at, end = end_of(events)
    assert end.error is not None
    assert end.error.kind is ErrorKind.DEADLINE_UNMET
    assert at == pytest.approx(2.0)
    assert len(upstream.completion_requests()) == 2


# --- connect ----------------------------------------------------------------------------------


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: a connect to it hangs (SYNs are dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    try:
        yield port
    finally:
        filler.close()
        server.close()


@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_connect_timeout_is_pool_unavailable_and_retried(
    blackhole: int, loopback_clock: MockClock
) -> None:
    cfg = AdapterConfig(
        base_url=f"http://127.0.0.1:{blackhole}/v1",
        model="m",
        timeouts=Timeouts(connect=1.5, first_token=30.0),
        retry=RetryPolicy(max_attempts=2, base=0.1, cap=0.1),
    )
    events = await timed(cfg)
    at, end = end_of(events)
    assert len(events) == 1
    assert end.error is not None
    assert end.error.kind is ErrorKind.POOL_UNAVAILABLE
    assert end.error.retryable is True
    assert "connect timeout" in end.error.message
    assert "1.5 s" in end.error.message
    assert 3.0 <= at <= 3.1  # two attempts of 1.5 s, one backoff of at most 0.1 s


# --- bounded cleanup --------------------------------------------------------------------------


class _HangingClose(httpx2.AsyncByteStream):
    """A response body of `tokens` token frames, each its own read, whose close never returns
    (until cancelled): what a wedged connection's close looks like to the reader."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.close_started = trio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield sse(chat_chunk("", role=True))
        for i in range(self.tokens):
            yield sse(chat_chunk(f"t{i} "))
        await trio.sleep_forever()

    async def aclose(self) -> None:
        self.close_started.set()
        await trio.sleep_forever()


class _HangingTransport(httpx2.AsyncBaseTransport):
    def __init__(self, *, tokens: int = 1, content_type: str = "text/event-stream") -> None:
        self.tokens = tokens
        self.content_type = content_type
        self.bodies: list[_HangingClose] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = _HangingClose(self.tokens)
        self.bodies.append(body)
        return httpx2.Response(200, headers={"content-type": self.content_type}, stream=body)


@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_a_close_that_hangs_is_abandoned_after_the_grace(
    loopback_clock: MockClock,
) -> None:
    # the body is never read (not an event stream), so the reader's own cleanup closes it
    transport = _HangingTransport(content_type="application/json")
    events = await timed(config("http://upstream.test/v1"), transport=transport)
    at, end = end_of(events)
    assert transport.bodies[0].close_started.is_set()
    assert end.error is not None
    assert end.error.kind is ErrorKind.PROTOCOL
    assert at == pytest.approx(CLOSE_GRACE)


async def test_a_cancel_with_a_close_that_hangs_ends_within_the_grace(
    loopback_clock: MockClock,
) -> None:
    # the consumer does not read, the channel fills, the reader waits on it; then a cancel
    transport = _HangingTransport(tokens=200)
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(config("http://upstream.test/v1"), transport=transport) as a:
            async with a.submit(TaskRequest(task_id="c", prompt="hi")) as events:
                first = await events.__anext__()
                await trio.testing.wait_all_tasks_blocked()
                t0 = trio.current_time()
                assert a.cancel("c")
                rest = [ev async for ev in events]
                t1 = trio.current_time()
    end = check_stream([first, *rest])
    assert end.reason == "cancelled"
    assert transport.bodies[0].close_started.is_set()
    assert t1 - t0 == pytest.approx(CLOSE_GRACE)


async def test_leaving_the_block_with_a_close_that_hangs_is_bounded(
    loopback_clock: MockClock,
) -> None:
    transport = _HangingTransport(tokens=200)
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(config("http://upstream.test/v1"), transport=transport) as a:
            async with a.submit(TaskRequest(task_id="b", prompt="hi")) as events:
                await events.__anext__()
                await trio.testing.wait_all_tasks_blocked()
                t0 = trio.current_time()
            t1 = trio.current_time()
            assert a.running() == frozenset()
    assert transport.bodies[0].close_started.is_set()
    assert t1 - t0 == pytest.approx(CLOSE_GRACE)


async def test_cancel_still_reaches_a_reader_whose_total_end_waits_on_a_full_buffer(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    # The consumer reads nothing after Started: 16 batches fill the channel, `total` passes
    # while the reader waits to send, and its DEADLINE_UNMET `End` cannot be sent either. A
    # cancel must still end the reader (the scope `cancel()` reaches is the one that carried
    # `total`; the `End` after it waits in a fresh one), or `End(cancelled)` never comes.
    steps: list[Any] = []
    for i in range(40):
        steps += [Send(sse(chat_chunk(f"w{i} "))), Sleep(0.05)]
    upstream.script(Reply(steps=[*steps, Hang()]))
    cfg = config(upstream.base_url, first_token=1.0, idle=1.0, total=3.0)
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(cfg) as adapter:
            async with adapter.submit(TaskRequest(task_id="t", prompt="hi")) as events:
                first = await events.__anext__()
                assert isinstance(first, Started)
                await trio.sleep(10.0)  # past total, reading nothing
                assert events.statistics().buffered_batches == CHANNEL_BATCHES
                assert not events.statistics().reader_done  # waiting to send its End
                assert adapter.cancel("t")
                rest = [ev async for ev in events]
    end = rest[-1]
    assert isinstance(end, End)
    assert end.reason == "cancelled"
    assert events.statistics().reader_done
