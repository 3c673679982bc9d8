"""`submit` against a real upstream on loopback: order, shapes, retries, concurrency.

Each status's kind, the `model_not_found` code and a 2xx that is not an event stream are
in `test_errors.py` (for every api), not here."""

from __future__ import annotations

import pytest
import trio

from oai_adapter import (
    End,
    ErrorKind,
    Metrics,
    OpenAIAdapter,
    Started,
    TaskRequest,
    Token,
)
from oai_adapter.testing import FakeUpstream, Reply, Reset, Send, chat_chunk, render_stream, sse

from .conftest import IO_DEADLINE, make_config
from .helpers import check_grammar, collect, text_of


@pytest.mark.req("OC-ADAPT-OAI-6000")
async def test_chat_stream_events_are_ordered_and_indexed(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    with trio.fail_after(IO_DEADLINE):
        events = await collect(adapter, TaskRequest(task_id="t1", prompt="Hello"))
    check_grammar(events)
    started, metrics, end = events[0], events[-2], events[-1]
    assert isinstance(started, Started)
    assert (started.task_id, started.model, started.attempt, started.http_version) == (
        "t1",
        "test-model",
        1,
        "HTTP/1.1",
    )
    assert started.request_id is not None
    assert text_of(events) == "".join(upstream.tokens)
    assert isinstance(end, End)
    assert end.reason == "stop"
    assert isinstance(metrics, Metrics)
    assert metrics.completion_tokens == len(upstream.tokens)
    assert metrics.prompt_tokens == 1
    assert metrics.retries == 0


@pytest.mark.req("OC-ADAPT-OAI-6001")
async def test_chat_request_body_and_headers(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    req = TaskRequest(
        task_id="t",
        prompt="Hi",
        max_tokens=5,
        temperature=0.5,
        top_p=0.9,
        stop=["\n"],
        seed=3,
        correlation_id="corr-1",
        extra={"user": "u1"},
    )
    with trio.fail_after(IO_DEADLINE):
        events = await collect(adapter, req)
    assert isinstance(events[-1], End)
    assert events[-1].reason == "length"
    sent = upstream.completion_requests()[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["x-correlation-id"] == "corr-1"
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.json == {
        "model": "test-model",
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n"],
        "seed": 3,
        "stream_options": {"include_usage": True},
        "user": "u1",
    }


async def test_correlation_id_is_generated_when_absent(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    with trio.fail_after(IO_DEADLINE):
        await collect(adapter, TaskRequest(task_id="a", prompt="x"))
        await collect(adapter, TaskRequest(task_id="b", prompt="x"))
    ids = [r.headers["x-correlation-id"] for r in upstream.completion_requests()]
    assert len(set(ids)) == 2
    assert all(len(i) == 32 for i in ids)


@pytest.mark.req("OC-ADAPT-OAI-6001")
async def test_completions_api_streams_text_chunks(upstream: FakeUpstream) -> None:
    async with OpenAIAdapter(make_config(upstream, api="completions")) as adapter:
        with trio.fail_after(IO_DEADLINE):
            events = await collect(adapter, TaskRequest(task_id="c", prompt="Once"))
    check_grammar(events)
    assert text_of(events) == "".join(upstream.tokens)
    sent = upstream.completion_requests()[0]
    assert sent.path == "/v1/completions"
    assert sent.json["prompt"] == "Once"


async def test_completions_api_refuses_messages(upstream: FakeUpstream) -> None:
    async with OpenAIAdapter(make_config(upstream, api="completions")) as adapter:
        with pytest.raises(ValueError, match="messages"):
            async with adapter.submit(
                TaskRequest(task_id="c", messages=[{"role": "user", "content": "x"}])
            ):
                pass  # pragma: no cover
        assert adapter.running() == frozenset()
    assert upstream.completion_requests() == []


@pytest.mark.req("OC-ADAPT-OAI-6011")
async def test_crlf_line_ends_and_comments_from_the_wire(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    body = b": ping\r\n\r\n" + sse(chat_chunk("", role=True)).replace(b"\n", b"\r\n")
    body += b": keep-alive\r\n" + sse(chat_chunk("Hel")).replace(b"\n", b"\r\n")
    body += sse(chat_chunk("lo")).replace(b"\n", b"\r") + sse(chat_chunk(None, finish="stop"))
    body += b"data: [DONE]\r\n\r\n"
    # Every byte in its own write: the split lands everywhere, CR/LF pairs included.
    upstream.script(Reply(steps=[Send(body[i : i + 1]) for i in range(len(body))]))
    with trio.fail_after(IO_DEADLINE):
        events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    check_grammar(events)
    assert [e.text for e in events if isinstance(e, Token)] == ["Hel", "lo"]


async def test_missing_done_after_finish_is_a_normal_end(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(Reply(steps=render_stream("chat", ["a", "b"], done=False)))
    with trio.fail_after(IO_DEADLINE):
        events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    check_grammar(events)
    assert isinstance(events[-1], End)
    assert events[-1].reason == "stop"


async def test_eof_mid_stream_is_a_worker_reset_after_started(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    steps = render_stream("chat", ["a", "b", "c"])[:3]  # role chunk, "a", "b": no finish
    upstream.script(Reply(steps=steps))
    with trio.fail_after(IO_DEADLINE):
        events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    check_grammar(events)
    end = events[-1]
    assert isinstance(events[0], Started)
    assert text_of(events) == "ab"
    assert isinstance(end, End)
    assert end.reason == "error"
    assert end.error is not None
    assert end.error.kind is ErrorKind.WORKER_RESET
    assert len(upstream.completion_requests()) == 1  # never retried after Started


async def test_connection_reset_mid_stream_is_a_worker_reset(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(Reply(steps=[*render_stream("chat", ["a", "b"])[:2], Reset()]))
    with trio.fail_after(IO_DEADLINE):
        events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    check_grammar(events)
    end = events[-1]
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.WORKER_RESET
    assert len(upstream.completion_requests()) == 1


async def test_retryable_status_then_success_reports_the_attempt(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    upstream.script(
        Reply.status_only(503, {"error": {"message": "busy"}}),
        Reply.status_only(429, retry_after_ms="5"),
    )
    with trio.fail_after(IO_DEADLINE):
        events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    check_grammar(events)
    assert isinstance(events[0], Started)
    assert events[0].attempt == 3
    metrics = events[-2]
    assert isinstance(metrics, Metrics)
    assert metrics.retries == 2
    assert text_of(events) == "".join(upstream.tokens)


@pytest.mark.req("OC-ADAPT-OAI-6000")
async def test_duplicate_running_task_id_is_refused(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    with trio.fail_after(IO_DEADLINE):
        async with adapter.submit(TaskRequest(task_id="dup", prompt="x")) as events:
            with pytest.raises(ValueError, match="already running"):
                async with adapter.submit(TaskRequest(task_id="dup", prompt="y")):
                    pass  # pragma: no cover
            seen = [ev async for ev in events]
        check_grammar(seen)
        # Once its End was read the id is free again.
        check_grammar(await collect(adapter, TaskRequest(task_id="dup", prompt="z")))


@pytest.mark.req("OC-ADAPT-OAI-6011")
async def test_fifty_concurrent_streams_are_each_ordered_and_complete(
    upstream: FakeUpstream,
) -> None:
    upstream.pace = 0.001
    results: dict[str, list[object]] = {}
    async with OpenAIAdapter(make_config(upstream)) as adapter:

        async def one(i: int) -> None:
            results[f"t{i}"] = await collect(adapter, TaskRequest(task_id=f"t{i}", prompt="x"))  # type: ignore[assignment]

        with trio.fail_after(IO_DEADLINE):
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(one, i)
        assert adapter.running() == frozenset()
    assert len(results) == 50
    for task_id, events in results.items():
        check_grammar(events)  # type: ignore[arg-type]
        assert all(e.task_id == task_id for e in events)  # type: ignore[attr-defined]
        assert text_of(events) == "".join(upstream.tokens)  # type: ignore[arg-type]
        assert events[-1].reason == "stop"  # type: ignore[attr-defined]


async def test_submit_outside_the_adapter_block_is_an_error(upstream: FakeUpstream) -> None:
    adapter = OpenAIAdapter(make_config(upstream))
    with pytest.raises(RuntimeError, match="async with"):
        async with adapter.submit(TaskRequest(task_id="t", prompt="x")):
            pass  # pragma: no cover


async def test_unreachable_upstream_ends_as_pool_unavailable_after_retries() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now: connect is refused
    config = make_config(FakeUpstream(), base_url=f"http://127.0.0.1:{port}/v1")
    async with OpenAIAdapter(config) as adapter:
        with trio.fail_after(IO_DEADLINE):
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    end = events[-1]
    assert len(events) == 1
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.POOL_UNAVAILABLE
    assert end.error.retryable


async def test_error_event_as_first_event_is_retried_before_started(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    rate_limited = sse(
        {
            "error": {
                "message": "slow down",
                "type": "rate_limit_error",
                "code": "rate_limit_exceeded",
            }
        }
    )
    upstream.script(Reply(steps=[Send(rate_limited)]))
    with trio.fail_after(IO_DEADLINE):
        events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    check_grammar(events)
    assert isinstance(events[0], Started)
    assert events[0].attempt == 2
    assert text_of(events) == "".join(upstream.tokens)


async def test_error_event_in_the_same_read_as_tokens_ends_after_started(
    adapter: OpenAIAdapter, upstream: FakeUpstream
) -> None:
    body = (
        sse(chat_chunk("a"))
        + sse(chat_chunk("b"))
        + sse({"error": {"message": "overloaded mid-way", "type": "overloaded"}})
    )
    upstream.script(Reply(steps=[Send(body)]))
    with trio.fail_after(IO_DEADLINE):
        events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    check_grammar(events)
    assert isinstance(events[0], Started)
    assert text_of(events) == "ab"
    end = events[-1]
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.UPSTREAM_ERROR
    assert end.error.message == "overloaded mid-way"
    assert len(upstream.completion_requests()) == 1
