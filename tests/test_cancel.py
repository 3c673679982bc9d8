"""Cancel and early exit: the next event is `End(cancelled)`, the upstream is closed, nothing leaks."""

from __future__ import annotations

import gc

import pytest
import trio
import trio.testing

from oai_adapter import AdapterConfig, End, OpenAIAdapter, Started, TaskRequest, Token
from oai_adapter._events import Event
from oai_adapter._stream import CHANNEL_BATCHES
from oai_adapter.testing import FakeUpstream, Hang, Reply, Send, render_stream, sse

from .conftest import IO_DEADLINE, make_config
from .helpers import check_grammar


def hanging_after(tokens: list[str]) -> Reply:
    """A stream that sends `tokens` then stays open without finishing."""
    steps = render_stream("chat", tokens)[: len(tokens) + 1]  # role chunk + tokens
    return Reply(steps=[*steps, Hang()])


@pytest.mark.req("OC-ADAPT-OAI-6000")
async def test_cancel_mid_stream_ends_cancelled_and_closes_upstream(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(hanging_after(["a", "b", "c", "d"]))
    seen: list[Event] = []
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="t", prompt="x")) as events:
            async for ev in events:
                seen.append(ev)
                if isinstance(ev, Token) and ev.index == 1:
                    assert adapter.cancel("t") is True
                    assert adapter.cancel("t") is False  # a second cancel
        await upstream.disconnected.wait()
    check_grammar(seen)
    end = seen[-1]
    assert isinstance(end, End)
    assert end.reason == "cancelled"
    assert end.tokens_out == 2  # a and b delivered; c, d buffered and dropped
    assert end.error is None
    assert adapter.running() == frozenset()
    assert adapter.cancel("t") is False


@pytest.mark.req("OC-ADAPT-OAI-6000")
async def test_cancel_with_full_buffer_and_consumer_that_read_nothing(
    upstream: FakeUpstream,
) -> None:
    # Far more tokens than the channel holds, sent one read at a time, then the stream hangs.
    many = [f" w{i}" for i in range(4000)]
    upstream.script(Reply(steps=[*render_stream("chat", many)[:-3], Hang()]))
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="full", prompt="x")) as events:
                while events.statistics().buffered_batches < CHANNEL_BATCHES:
                    await trio.testing.wait_all_tasks_blocked()
                assert adapter.cancel("full") is True
                first = await events.__anext__()
                assert isinstance(first, End)
                assert first.reason == "cancelled"
                assert first.tokens_out == 0
                with pytest.raises(StopAsyncIteration):
                    await events.__anext__()
            await upstream.disconnected.wait()
        assert adapter.running() == frozenset()


@pytest.mark.parametrize("reader", ["blocked on a full channel", "waiting on the socket"])
async def test_cancel_closes_the_connection_before_it_returns(
    upstream: FakeUpstream, reader: str
) -> None:
    # The upstream sees the close when `cancel()` returns (bench_cancel's "upstream closed"),
    # not after the reader task has run and unwound; and the cancel's `End` does not wait for it.
    await cancel_closes_before_it_returns(upstream, make_config(upstream), reader)


@pytest.mark.parametrize("reader", ["blocked on a full channel", "waiting on the socket"])
async def test_cancel_closes_a_tls_connection_before_it_returns(
    tls_upstream: FakeUpstream, ca_file: str, reader: str
) -> None:
    # The socket under trio's SSLStream is closed (no close_notify: a cancel owes none).
    config = make_config(tls_upstream, ca_bundle=ca_file)
    await cancel_closes_before_it_returns(tls_upstream, config, reader)


async def cancel_closes_before_it_returns(
    upstream: FakeUpstream, config: AdapterConfig, reader: str
) -> None:
    many = [f" w{i}" for i in range(4000)] if reader.startswith("blocked") else ["a", "b"]
    upstream.script(Reply(steps=[*render_stream("chat", many)[: len(many) + 1], Hang()]))
    async with OpenAIAdapter(config) as adapter:
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="t", prompt="x")) as events:
                assert isinstance(await events.__anext__(), Started)
                while events.statistics().buffered_batches < (
                    CHANNEL_BATCHES if reader.startswith("blocked") else 1
                ):
                    await trio.testing.wait_all_tasks_blocked()
                await trio.testing.wait_all_tasks_blocked()
                stats = adapter.upstream.statistics()
                assert stats.connections == 1
                assert adapter.cancel("t") is True
                # no checkpoint since: the reader has not run
                assert not events.statistics().reader_done
                stats = adapter.upstream.statistics()
                assert stats.connections == 0  # closed, and out of the pool
                end = await events.__anext__()
                assert isinstance(end, End)
                assert end.reason == "cancelled"
            await upstream.disconnected.wait()
        assert adapter.running() == frozenset()


@pytest.mark.req("OC-ADAPT-OAI-6000")
async def test_cancel_after_upstream_finished_but_consumer_behind(upstream: FakeUpstream) -> None:
    # A fast server: the whole answer arrives in one write, before the consumer reads its
    # third token (nginx, hypercorn: FACTS.md).
    whole = b"".join(s.data for s in render_stream("chat", upstream.tokens) if isinstance(s, Send))
    upstream.script(Reply(steps=[Send(whole)]))
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="fast", prompt="x")) as events:
                seen = [await events.__anext__() for _ in range(3)]  # Started, token 0, token 1
                while not events.statistics().reader_done:  # the reader has sent End
                    await trio.testing.wait_all_tasks_blocked()
                assert "fast" in adapter.running()
                assert adapter.cancel("fast") is True
                end = await events.__anext__()
        assert isinstance(seen[0], Started)
        assert isinstance(end, End)
        assert end.reason == "cancelled"
        assert end.tokens_out == 2
        assert adapter.running() == frozenset()


@pytest.mark.req("OC-ADAPT-OAI-6000")
async def test_cancel_of_unknown_task_returns_false(adapter: OpenAIAdapter) -> None:
    assert adapter.cancel("nope") is False


async def test_cancel_after_end_was_read_returns_false(adapter: OpenAIAdapter) -> None:
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="done", prompt="x")) as events:
            async for _ in events:
                pass
            assert adapter.cancel("done") is False


async def test_cancel_from_another_task_while_consumer_waits(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(hanging_after(["a"]))
    seen: list[Event] = []
    with trio.fail_after(IO_DEADLINE):
        async with trio.open_nursery() as nursery:
            got_token = trio.Event()

            async def consume() -> None:
                async with adapter.submit(TaskRequest(task_id="w", prompt="x")) as events:
                    async for ev in events:
                        seen.append(ev)
                        if isinstance(ev, Token):
                            got_token.set()

            nursery.start_soon(consume)
            await got_token.wait()
            await trio.testing.wait_all_tasks_blocked()  # the consumer is blocked on receive
            assert adapter.cancel("w") is True
        await upstream.disconnected.wait()
    assert [type(e).__name__ for e in seen] == ["Started", "Token", "End"]
    end = seen[-1]
    assert isinstance(end, End)
    assert end.reason == "cancelled"


async def test_cancel_before_the_upstream_answered(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(Reply(delay=1000.0))  # stalls before the headers
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="early", prompt="x")) as events:
            while not upstream.completion_requests():
                await trio.testing.wait_all_tasks_blocked()
            assert adapter.cancel("early") is True
            seen = [ev async for ev in events]
    assert len(seen) == 1
    assert isinstance(seen[0], End)
    assert seen[0].reason == "cancelled"


async def test_break_out_early_closes_upstream_and_frees_the_id(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(hanging_after(["a", "b", "c"]))
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="brk", prompt="x")) as events:
            async for ev in events:
                if isinstance(ev, Token):
                    break
        assert adapter.running() == frozenset()
        await upstream.disconnected.wait()
        # The id can be used again at once.
        async with adapter.submit(TaskRequest(task_id="brk", prompt="x")) as events:
            check_grammar([ev async for ev in events])


async def test_exception_in_block_propagates_and_closes_upstream(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(hanging_after(["a", "b"]))
    with trio.fail_after(IO_DEADLINE):

        async def consume_then_fail() -> None:
            async with adapter.submit(TaskRequest(task_id="exc", prompt="x")) as events:
                async for ev in events:
                    if isinstance(ev, Token):
                        raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await consume_then_fail()
        await upstream.disconnected.wait()
    assert adapter.running() == frozenset()


@pytest.mark.req("OC-ADAPT-OAI-6000")
async def test_outer_cancellation_closes_upstream_and_leaks_nothing(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(hanging_after(["a", "b"]))
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    with trio.fail_after(IO_DEADLINE):
        with trio.CancelScope() as outer:
            async with adapter.submit(TaskRequest(task_id="outer", prompt="x")) as events:
                async for ev in events:
                    if isinstance(ev, Token):
                        outer.cancel()
        assert outer.cancelled_caught
        await upstream.disconnected.wait()
        # Back to the baseline: the server's handler for the closed connection has ended
        # and no task of ours is left (a leak would hang here until the deadline).
        while trio.lowlevel.current_statistics().tasks_living != tasks_before:
            await trio.testing.wait_all_tasks_blocked()
    assert upstream.connections_open == 0
    assert adapter.running() == frozenset()


async def test_pool_holds_no_active_connection_after_cancels(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    with trio.fail_after(IO_DEADLINE):
        for i in range(10):
            upstream.script(hanging_after(["a", "b"]))
            async with adapter.submit(TaskRequest(task_id=f"c{i}", prompt="x")) as events:
                async for ev in events:
                    if isinstance(ev, Token):
                        adapter.cancel(f"c{i}")
        while upstream.connections_open:
            await trio.testing.wait_all_tasks_blocked()
    stats = adapter.upstream.statistics()
    assert stats.connections == stats.idle_connections  # none active
    assert upstream.streams_open == 0
    assert upstream.disconnects == 10


async def test_a_response_closed_before_its_end_leaves_no_generator_behind(
    adapter: OpenAIAdapter,
) -> None:
    # Guards ClosingTransport's reach into httpx2 internals: if the private names it uses move,
    # responses carry httpx2's own stream again, and a response closed before its body ended
    # leaves an async generator to the collector, which warns (an error here).
    upstream = adapter.upstream
    with trio.fail_after(IO_DEADLINE):
        async with upstream.open_stream(upstream.url("/models"), method="GET") as resp:
            assert resp.status == 200
            assert await resp.next_chunk()  # the body has begun; the block leaves before its end
    gc.collect()


async def test_cancelled_consumer_that_keeps_iterating_gets_nothing_more(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(
        Reply(steps=[Send(sse({"choices": [{"index": 0, "delta": {"content": "a"}}]})), Hang()])
    )
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="it", prompt="x")) as events:
            async for ev in events:
                if isinstance(ev, Token):
                    adapter.cancel("it")
            with pytest.raises(StopAsyncIteration):
                await events.__anext__()


async def test_cancel_from_another_thread_raises_and_leaves_the_task_running(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="th", prompt="x")) as events:
            first = await events.__anext__()
            assert isinstance(first, Started)

            def from_thread() -> BaseException | None:
                try:
                    adapter.cancel("th")
                except RuntimeError as exc:
                    return exc
                return None

            error = await trio.to_thread.run_sync(from_thread)
            assert isinstance(error, RuntimeError)
            assert "trio.from_thread.run_sync" in str(error)
            assert adapter.running() == frozenset({"th"})  # the registry is untouched
            rest = [ev async for ev in events]
    end = rest[-1]
    assert isinstance(end, End)
    assert end.reason == "stop"  # the task ran on and ended normally
    # The way the error names works: the cancel reaches the run.
    upstream.script(hanging_after(["a"]))
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="th2", prompt="x")) as events:
            async for ev in events:
                if isinstance(ev, Token):
                    assert await trio.to_thread.run_sync(
                        lambda: trio.from_thread.run_sync(adapter.cancel, "th2")
                    )
    assert isinstance(ev, End)
    assert ev.reason == "cancelled"


async def test_iterating_after_the_submit_block_was_left_says_so(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(hanging_after(["a", "b"]))
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="left", prompt="x")) as events:
            await events.__anext__()  # Started
    with pytest.raises(trio.ClosedResourceError, match="block was left"):
        await events.__anext__()


async def test_aclose_inside_the_block_ends_the_task_and_closes_the_upstream(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(hanging_after(["a", "b"]))
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="ac", prompt="x")) as events:
            async for ev in events:
                if isinstance(ev, Token):
                    await events.aclose()
                    assert adapter.running() == frozenset()
                    await events.aclose()  # idempotent
                    break
            with pytest.raises(trio.ClosedResourceError):
                await events.__anext__()
        await upstream.disconnected.wait()
    assert adapter.statistics().running == 0
