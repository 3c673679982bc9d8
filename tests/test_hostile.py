"""Hostile upstreams, played byte for byte by `tests/hostile.py` (issue 14).

Each case is an upstream no real server framework would let us write — a stream of nested
brackets, a header value that overflows a float conversion, a usage block of floats — and the
outcome the adapter owes the consumer for it: one `End`, naming the cause, never an exception
out of the iteration.
"""

from __future__ import annotations

import logging

import pytest
import trio

from oai_adapter import End, ErrorKind, Metrics, OpenAIAdapter, TaskRequest, Timeouts
from oai_adapter._config import Api
from oai_adapter._events import Event

from .conftest import IO_DEADLINE, make_config
from .helpers import check_grammar, collect, text_of
from .hostile import (
    Close,
    Hold,
    HostileUpstream,
    Read,
    Reset,
    Wait,
    Write,
    json_response,
    sse_response,
)

_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
_FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'


def end_of(events: list[Event]) -> End:
    """The task's `End`, after checking the whole stream's grammar."""
    check_grammar(events)
    end = events[-1]
    assert isinstance(end, End)
    return end


async def test_hostile_upstream_plays_a_scripted_stream(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock
) -> None:
    hostile.play(sse_response(_CHUNK, _FINISH))
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile)) as adapter:
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    assert end_of(events).reason == "stop"
    assert text_of(events) == "hi"
    assert hostile.requests[0].startswith(b"POST /v1/chat/completions ")


async def test_hostile_upstream_pauses_on_an_event_then_resets(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock
) -> None:
    go = trio.Event()
    head = sse_response(_CHUNK)
    hostile.script([Read(), Write(head), Wait(go), Reset()])
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile)) as adapter:
            async with adapter.submit(TaskRequest(task_id="t", prompt="x")) as events:
                seen = []
                async for ev in events:
                    seen.append(ev)
                    if text_of(seen) == "hi":
                        go.set()
    error = end_of(seen).error
    assert error is not None
    assert error.kind is ErrorKind.WORKER_RESET


async def test_hostile_upstream_closing_before_a_response_is_retried(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock
) -> None:
    hostile.script([Read(), Close()], [Read(), Write(sse_response(_CHUNK, _FINISH)), Close()])
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile)) as adapter:
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    check_grammar(events)
    assert text_of(events) == "hi"
    assert hostile.connections == 2


async def test_hostile_upstream_holding_the_connection_meets_the_first_token_timeout(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock
) -> None:
    hostile.script([Read(), Write(sse_response()), Hold()])
    config = make_config(hostile, timeouts=Timeouts(first_token=2.0))
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(config) as adapter:
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    error = end_of(events).error
    assert error is not None
    assert error.kind is ErrorKind.DECODE_TIMEOUT


# --- usage counts that are not ints (issue 14: "some servers send 3.0") ------------------------


def _usage_stream(api: Api, prompt: str, completion: str) -> bytes:
    """A one-token answer in `api`'s shape whose usage block carries these raw JSON numbers."""
    if api == "responses":
        usage = f'{{"input_tokens":{prompt},"output_tokens":{completion}}}'
        return sse_response(
            b'data: {"type":"response.output_text.delta","delta":"hi"}\n\n',
            b'data: {"type":"response.completed","response":{"status":"completed","usage":'
            + usage.encode()
            + b"}}\n\n",
        )
    usage = f'{{"prompt_tokens":{prompt},"completion_tokens":{completion}}}'
    piece = b'"delta":{"content":"hi"}' if api == "chat" else b'"text":"hi"'
    return sse_response(
        b'data: {"choices":[{"index":0,'
        + piece
        + b',"finish_reason":"stop"}],"usage":'
        + usage.encode()
        + b"}\n\n",
        b"data: [DONE]\n\n",
    )


@pytest.mark.parametrize("api", ["chat", "completions", "responses"])
@pytest.mark.parametrize(
    ("prompt", "completion", "counts"),
    [
        ("3.0", "1.0", (3, 1)),  # integral floats: converted
        ("3.5", "1", (None, 1)),  # a fraction: ignored
        ("-2", "1e300", (None, None)),  # negative, huge
        ("NaN", "Infinity", (None, None)),  # what Python's json writes for nan and inf
        ("1e400", "2", (None, 2)),  # beyond a double
        ('"3"', "true", (None, None)),  # not numbers at all
    ],
)
@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_odd_usage_counts_end_as_stop_with_integral_counts_kept(
    hostile: HostileUpstream,
    loopback_clock: trio.abc.Clock,
    api: Api,
    prompt: str,
    completion: str,
    counts: tuple[int | None, int | None],
) -> None:
    hostile.play(_usage_stream(api, prompt, completion))
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile, api=api)) as adapter:
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    assert end_of(events).reason == "stop", events[-1]
    metrics = events[-2]
    assert isinstance(metrics, Metrics)
    assert (metrics.prompt_tokens, metrics.completion_tokens) == counts
    assert text_of(events) == "hi"


# --- JSON nested deeper than the decoder recurses (msgspec raises RecursionError) -------------

#: 100 KB of `[`: far past the ~2,000 levels at which msgspec gives up (FACTS.md).
_DEEP = b"[" * 100_000


def _first_delta(api: Api) -> bytes:
    if api == "responses":
        return b'data: {"type":"response.output_text.delta","delta":"hi"}\n\n'
    piece = b'"delta":{"content":"hi"}' if api == "chat" else b'"text":"hi"'
    return b'data: {"choices":[{"index":0,' + piece + b',"finish_reason":null}]}\n\n'


@pytest.mark.parametrize("api", ["chat", "completions", "responses"])
@pytest.mark.parametrize(
    "deep",
    [
        b"data: " + _DEEP + b"\n\n",  # the whole event
        b'data: {"choices":' + _DEEP + b"\n\n",  # a field we read
        b'data: {"type":"response.completed","response":' + _DEEP + b"\n\n",
        b'data: {"unknown":' + _DEEP + b"\n\n",  # a field every view skips
        b'data: {"x":"\\ud83d","y":' + _DEEP + b"\n\n",  # the slow json path's recursion
    ],
)
async def test_deeply_nested_json_in_a_stream_ends_it_as_protocol_naming_the_cause(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock, api: Api, deep: bytes
) -> None:
    hostile.play(sse_response(_first_delta(api), deep))
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile, api=api)) as adapter:
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    error = end_of(events).error
    assert error is not None
    assert error.kind is ErrorKind.PROTOCOL
    assert "nested too deeply" in error.message
    assert text_of(events) == "hi"


async def test_a_deeply_nested_error_body_keeps_its_status_kind(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock
) -> None:
    hostile.play(json_response(400, b'{"error":{"message":"no","detail":' + _DEEP))
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile)) as adapter:
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    error = end_of(events).error
    assert error is not None
    assert (error.kind, error.status) == (ErrorKind.INVALID_PARAMS, 400)


async def test_deeply_nested_json_as_the_first_event_ends_the_task_as_protocol(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock
) -> None:
    hostile.play(sse_response(b"data: " + _DEEP + b"\n\n"))
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile)) as adapter:
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    error = end_of(events).error
    assert error is not None
    assert error.kind is ErrorKind.PROTOCOL
    assert "nested too deeply" in error.message


# --- the HTTP stack's own DEBUG records (stdlib logging) --------------------------------------

_KEY = "sk-proj-Hostile0Echo1Key2Zq8Xr4Lm2Np7"


@pytest.mark.req("OC-ADAPT-OAI-6020")
async def test_debug_records_of_the_http_stack_never_show_an_echoed_key(
    hostile: HostileUpstream, loopback_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # a hostile upstream echoes the Authorization header back in response headers, which
    # httpcore2 logs at DEBUG with their values ("receive_response_headers.complete …")
    echo = [("x-echo-authorization", f"Bearer {_KEY}"), ("x-key", _KEY)]
    hostile.play(sse_response(_CHUNK, _FINISH, headers=echo))
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(make_config(hostile, api_key=_KEY)) as adapter:
            events = await collect(adapter, TaskRequest(task_id="t", prompt="x"))
    assert end_of(events).reason == "stop"
    http_records = [r for r in caplog.records if r.name.startswith(("httpcore2", "httpx2"))]
    # httpcore2 serves only proxied connections now (direct HTTP/1.1 is `H11Transport`, which
    # logs nothing per request); httpx2's own request line is still there
    assert any("HTTP Request" in r.getMessage() for r in http_records)
    for record in caplog.records:
        assert _KEY not in record.getMessage(), record.name
