"""The test kit itself: the fault script expands to the steps it names and per-task scripts go
to the right task. (`check_stream` itself is tested in `test_grammar.py`.)"""

from __future__ import annotations

from collections import deque
from typing import Literal

import pytest
import trio
from trio.testing import MockClock

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
from oai_adapter._events import Event
from oai_adapter._sse import MAX_EVENT_BYTES
from oai_adapter.testing import (
    DEFAULT_TEXT,
    FakeUpstream,
    Fault,
    Hang,
    Reply,
    Reset,
    Responder,
    Send,
    Sleep,
    Stream,
    chat_chunk,
    check_stream,
    open_h2_upstream,
    open_upstream,
    render_stream,
    split_words,
    sse,
)
from oai_adapter.testing._script import expand_steps

from .conftest import IO_DEADLINE

Api = Literal["chat", "completions", "responses"]

NORMAL = render_stream("chat", ["a", "b", "c"])  # role, a, b, c, finish, [DONE]


def test_stream_steps_count_tokens_of_the_normal_stream() -> None:
    assert expand_steps([Stream()], NORMAL) == NORMAL
    assert expand_steps([Stream(0), Reset()], NORMAL) == [NORMAL[0], Reset()]
    assert expand_steps([Stream(2), Hang()], NORMAL) == [*NORMAL[:3], Hang()]
    assert expand_steps([Stream(1), Sleep(1.0), Stream()], NORMAL) == [
        *NORMAL[:2],
        Sleep(1.0),
        *NORMAL[2:],
    ]
    paced = expand_steps([Stream(pace=0.5)], NORMAL)
    assert paced.count(Sleep(0.5)) == 3
    assert [s for s in paced if s != Sleep(0.5)] == NORMAL


def test_faults_are_replies_made_of_steps() -> None:
    assert Fault.ok() == Reply()
    assert Fault.reset_after(2).steps == [Stream(2), Reset()]
    assert Fault.reset_after(None).steps == [Reset()]
    assert Fault.stall_after(1).steps == [Stream(1), Hang()]
    drip = Fault.keepalive_drip(0.5, after_tokens=3)
    assert drip.steps == [Stream(3), Hang(drip=Fault.KEEPALIVE, every=0.5)]
    assert Fault.reset_before_headers().before == [Reset()]
    limited = Fault.status(429, retry_after="2", retry_after_ms="1500")
    assert (limited.status, limited.steps) == (429, ())
    assert ("retry-after", "2") in limited.headers
    assert ("retry-after-ms", "1500") in limited.headers
    event = Fault.error_event(type="rate_limit_error")
    assert event.steps is not None
    (frame,) = event.steps
    assert isinstance(frame, Send)
    assert frame.data.startswith(b'data: {"error":')


async def test_per_task_scripts_reach_their_own_task_under_concurrency(
    upstream: FakeUpstream,
) -> None:
    upstream.script_for("t-reset", Fault.reset_after(1))
    upstream.script_for("t-429", *[Fault.status(429)] * 5)
    config = AdapterConfig(
        base_url=upstream.base_url,
        model=upstream.model,
        retry=RetryPolicy(max_attempts=3, base=0.01, cap=0.02),
    )
    results: dict[str, End] = {}

    async def run(task_id: str) -> None:
        req = TaskRequest(task_id=task_id, prompt="x", correlation_id=task_id)
        async with adapter.submit(req) as events:
            seen = [ev async for ev in events]
        results[task_id] = check_stream(seen, tokens=upstream.tokens)

    with trio.fail_after(20):
        async with OpenAIAdapter(config) as adapter, trio.open_nursery() as nursery:
            adapter.rng.seed(1)
            for task_id in ("t-reset", "t-429", "t-ok"):
                nursery.start_soon(run, task_id)
    assert results["t-ok"].reason == "stop"
    assert results["t-reset"].error is not None
    assert results["t-reset"].error.kind is ErrorKind.WORKER_RESET
    assert results["t-429"].error is not None
    assert results["t-429"].error.kind is ErrorKind.ADMISSION_REJECT
    assert list(upstream.replies_for) == ["t-429"]  # 3 attempts used, 2 replies left over
    assert len(upstream.replies_for["t-429"]) == 2


async def test_an_event_over_the_decoder_cap_is_protocol(upstream: FakeUpstream) -> None:
    # a peer that never ends an event must not grow our memory without bound
    upstream.script(Reply(steps=[Stream(2), Send(b"data: " + b"x" * (MAX_EVENT_BYTES + 16))]))
    config = AdapterConfig(base_url=upstream.base_url, model=upstream.model)
    with trio.fail_after(20):
        async with OpenAIAdapter(config) as adapter:
            async with adapter.submit(TaskRequest(task_id="big", prompt="x")) as events:
                seen = [ev async for ev in events]
    end = check_stream(seen, tokens=upstream.tokens)
    assert end.tokens_out == 2
    assert end.error is not None
    assert end.error.kind is ErrorKind.PROTOCOL
    assert "larger than" in end.error.message


# --- one responder: every fault means the same over HTTP/1.1 and HTTP/2 --------------------

TEXT = split_words(DEFAULT_TEXT)
ALL = len(TEXT)

#: Every `Fault` constructor (and the three APIs' normal streams), with what the adapter makes
#: of it: (api, reply, Tokens delivered, End reason, error kind).
FAULT_OUTCOMES: dict[str, tuple[Api, Reply, int, str, ErrorKind | None]] = {
    "chat": ("chat", Fault.ok(), ALL, "stop", None),
    "completions": ("completions", Fault.ok(), ALL, "stop", None),
    "responses": ("responses", Fault.ok(), ALL, "stop", None),
    "ok paced": ("chat", Fault.ok(pace=0.1), ALL, "stop", None),
    "status 400": ("chat", Fault.status(400), 0, "error", ErrorKind.INVALID_PARAMS),
    "status 404": ("chat", Fault.status(404), 0, "error", ErrorKind.UPSTREAM_NOT_FOUND),
    "status 429": (
        "chat",
        Fault.status(429, retry_after="1"),
        0,
        "error",
        ErrorKind.ADMISSION_REJECT,
    ),
    "status 500": ("chat", Fault.status(500), 0, "error", ErrorKind.UPSTREAM_ERROR),
    "status 503": ("chat", Fault.status(503), 0, "error", ErrorKind.POOL_UNAVAILABLE),
    "not an event stream": ("chat", Fault.not_event_stream(), 0, "error", ErrorKind.PROTOCOL),
    "stall before headers": ("chat", Fault.stall_before_headers(1.0), ALL, "stop", None),
    "hang before headers": (
        "chat",
        Fault.stall_before_headers(),
        0,
        "error",
        ErrorKind.DECODE_TIMEOUT,
    ),
    "reset before headers": (
        "chat",
        Fault.reset_before_headers(),
        0,
        "error",
        ErrorKind.POOL_UNAVAILABLE,
    ),
    "stall after headers": ("chat", Fault.stall_after_headers(1.0), ALL, "stop", None),
    "hang after headers": (
        "chat",
        Fault.stall_after_headers(),
        0,
        "error",
        ErrorKind.DECODE_TIMEOUT,
    ),
    "stall after 3": ("chat", Fault.stall_after(3, 1.0), ALL, "stop", None),
    "stall after 3 for 0 s": ("chat", Fault.stall_after(3, 0), ALL, "stop", None),
    "hang after 3": ("chat", Fault.stall_after(3), 3, "error", ErrorKind.DECODE_TIMEOUT),
    "keep-alive drip, then the stream": (
        "chat",
        Fault.keepalive_drip(0.5, count=3),
        ALL,
        "stop",
        None,
    ),
    "keep-alive drip forever after 2": (
        "chat",
        Fault.keepalive_drip(0.5, after_tokens=2),
        2,
        "error",
        ErrorKind.DECODE_TIMEOUT,
    ),
    "reset after 3": ("chat", Fault.reset_after(3), 3, "error", ErrorKind.WORKER_RESET),
    "reset after 3 (responses)": (
        "responses",
        Fault.reset_after(3),
        3,
        "error",
        ErrorKind.WORKER_RESET,
    ),
    "reset after the headers": (
        "chat",
        Fault.reset_after(None),
        0,
        "error",
        ErrorKind.WORKER_RESET,
    ),
    "eof after 3": ("chat", Fault.eof_after(3), 3, "error", ErrorKind.WORKER_RESET),
    "eof after the headers": ("chat", Fault.eof_after(None), 0, "error", ErrorKind.WORKER_RESET),
    "malformed first event": ("chat", Fault.malformed(), 0, "error", ErrorKind.PROTOCOL),
    "malformed after 2": (
        "chat",
        Fault.malformed(after_tokens=2),
        2,
        "error",
        ErrorKind.PROTOCOL,
    ),
    "rate limit as the first event": (
        "chat",
        Fault.error_event(type="rate_limit_error"),
        0,
        "error",
        ErrorKind.ADMISSION_REJECT,
    ),
    "error event after 2": (
        "chat",
        Fault.error_event(after_tokens=2),
        2,
        "error",
        ErrorKind.UPSTREAM_ERROR,
    ),
    "garbage before headers": (
        "chat",
        Fault.garbage_before_headers(),
        0,
        "error",
        ErrorKind.POOL_UNAVAILABLE,
    ),
}


async def _play_fault(http2: bool, api: Api, reply: Reply) -> list[Event]:
    opener = open_h2_upstream if http2 else open_upstream
    async with opener() as upstream:
        upstream.script_for("t", reply)  # per task, so the front-ends' queues are tested too
        config = AdapterConfig(
            base_url=upstream.base_url,
            model=upstream.model,
            api=api,
            http2=http2,
            retry=RetryPolicy(max_attempts=1),
            timeouts=Timeouts(first_token=5.0, idle=2.0, total=30.0),
        )
        async with OpenAIAdapter(config) as adapter:
            req = TaskRequest(task_id="t", prompt="x", correlation_id="t")
            async with adapter.submit(req) as events:
                return [ev async for ev in events]


@pytest.mark.parametrize("name", FAULT_OUTCOMES)
async def test_every_fault_means_the_same_over_http11_and_http2(
    name: str, loopback_clock: MockClock
) -> None:
    api, reply, tokens, reason, kind = FAULT_OUTCOMES[name]
    seen: dict[str, list[str]] = {}
    for http2 in (False, True):
        with trio.fail_after(IO_DEADLINE):
            events = await _play_fault(http2, api, reply)
        wire = "HTTP/2" if http2 else "HTTP/1.1"
        end = check_stream(events, tokens=TEXT)
        assert (end.tokens_out, end.reason) == (tokens, reason), (wire, end)
        assert (end.error.kind if end.error else None) is kind, (wire, end)
        if isinstance(events[0], Started):
            assert events[0].http_version == wire
        seen[wire] = [type(ev).__name__ for ev in events]
    assert seen["HTTP/1.1"] == seen["HTTP/2"]


@pytest.mark.parametrize("http2", [False, True], ids=["HTTP/1.1", "HTTP/2"])
async def test_a_hang_drips_its_bytes_on_both_wires(http2: bool, loopback_clock: MockClock) -> None:
    # each drip is a token here, so the consumer sees that the drip was played
    tick = sse(chat_chunk("tick"))
    reply = Reply(steps=[Stream(0), Hang(drip=tick, every=1.0)])
    opener = open_h2_upstream if http2 else open_upstream
    with trio.fail_after(IO_DEADLINE):
        async with opener() as upstream:
            upstream.script(reply)
            config = AdapterConfig(base_url=upstream.base_url, model=upstream.model, http2=http2)
            async with OpenAIAdapter(config) as adapter:
                async with adapter.submit(TaskRequest(task_id="t", prompt="x")) as events:
                    seen: list[Event] = []
                    async for ev in events:
                        seen.append(ev)
                        if isinstance(ev, Token) and ev.index == 2:
                            adapter.cancel("t")
    end = check_stream(seen, tokens=["tick"] * 3)
    assert (end.reason, end.tokens_out) == ("cancelled", 3)


def test_the_responder_decides_without_a_socket() -> None:
    responder = Responder(tokens=["a", "b", "c"], api_key="k")
    responder.script(Fault.reset_after(2))
    refused = responder.answer("POST", "/v1/chat/completions", {}, b"{}", at=0.0)
    assert refused.status == 401  # the scripted reply is used up all the same
    assert responder.replies == deque()
    responder.script(Fault.reset_after(2))
    auth = {"authorization": "Bearer k"}
    plan = responder.answer("POST", "/v1/chat/completions", auth, b"{}", at=1.0)
    assert plan.status == 200
    assert plan.steps == (*NORMAL[:3], Reset())  # role, a, b, then the reset
    probe = responder.answer("GET", "/v1/models", auth, b"", at=2.0)
    assert (probe.status, probe.completion) == (200, False)
    assert [r.at for r in responder.requests] == [0.0, 1.0, 2.0]
