"""Every row of DESIGN.md's error table, end to end through a real upstream (OC-ADAPT-OAI-6030).

The fault matrix is status × phase × api: each status as the HTTP status, as the first event
of a 200 stream (how some servers send a rate limit), and as an error event after `Started`;
for chat, legacy completions and Responses. Then the rows that are not statuses: transport
faults on each side of the headers, malformed streams, timeouts, cancel (TLS is in
`test_security_transport.py`). The expected kinds below are written out
by hand from DESIGN.md (`expected_errors.py`) — not computed by the code under test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from oai_adapter import (
    AdapterConfig,
    End,
    ErrorKind,
    Metrics,
    OpenAIAdapter,
    RetryPolicy,
    Started,
    TaskRequest,
    Timeouts,
    Token,
    WorkerError,
)
from oai_adapter._events import Event
from oai_adapter.testing import (
    FakeUpstream,
    Fault,
    Reply,
    Send,
    Stream,
    chat_chunk,
    check_stream,
    sse,
)

from .expected_errors import ERROR_STATUSES, REDIRECTS, RETRYABLE_KINDS, expected_kind

DEADLINE = 600  # trio seconds, free under loopback_clock
POLICY = RetryPolicy(max_attempts=3, base=0.01, cap=0.05)
APIS = ["chat", "completions", "responses"]


def config(upstream: FakeUpstream, api: str, **kw: Any) -> AdapterConfig:
    values: dict[str, Any] = {
        "base_url": upstream.base_url,
        "model": upstream.model,
        "api": api,
        "retry": POLICY,
        "timeouts": Timeouts(first_token=5.0, idle=2.0, total=60.0),
    }
    values.update(kw)
    return AdapterConfig(**values)


async def run(upstream: FakeUpstream, api: str, **kw: Any) -> list[Event]:
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(config(upstream, api, **kw)) as adapter:
            req = TaskRequest(task_id="e", prompt="hi")
            async with adapter.submit(req) as events:
                seen = [ev async for ev in events]
            assert adapter.running() == frozenset()
    check_stream(seen, tokens=upstream.tokens)
    return seen


def error_of(events: list[Event]) -> Any:
    end = events[-1]
    assert isinstance(end, End)
    assert end.reason == "error"
    assert end.error is not None
    return end.error


def started(events: list[Event]) -> bool:
    return isinstance(events[0], Started)


# --- the matrix: status × phase × api ----------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("status", ERROR_STATUSES)
@pytest.mark.req("OC-ADAPT-OAI-6030")
async def test_status_as_http_status(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str, status: int
) -> None:
    kind = expected_kind(status)
    retryable = kind in RETRYABLE_KINDS
    upstream.script(
        *[Fault.status(status, retry_after="1.5", message=f"upstream says {status}")] * 3,
        Fault.ok(),
    )
    events = await run(upstream, api)
    error = error_of(events)
    assert len(events) == 1  # failed before Started
    assert (error.kind, error.status, error.retryable) == (kind, status, retryable)
    assert error.retry_after_ms == 1500
    assert error.message == f"upstream says {status}"
    assert len(upstream.completion_requests()) == (POLICY.max_attempts if retryable else 1)
    with pytest.raises(WorkerError) as caught:
        events[-1].raise_for_error()  # type: ignore[union-attr]
    assert caught.value.kind is kind


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("status", ERROR_STATUSES)
@pytest.mark.req("OC-ADAPT-OAI-6030")
async def test_status_as_first_event_of_a_200_stream(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str, status: int
) -> None:
    kind = expected_kind(status)
    retryable = kind in RETRYABLE_KINDS
    upstream.script(*[Fault.error_event(type=None, code=status, message="in-band")] * 3)
    events = await run(upstream, api)
    error = error_of(events)
    assert len(events) == 1  # the first event was an error: never accepted
    assert (error.kind, error.status, error.retryable) == (kind, status, retryable)
    assert error.retry_after_ms is None
    assert error.message == "in-band"
    assert len(upstream.completion_requests()) == (POLICY.max_attempts if retryable else 1)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("status", ERROR_STATUSES)
@pytest.mark.req("OC-ADAPT-OAI-6030")
async def test_status_as_error_event_after_started(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str, status: int
) -> None:
    upstream.script(Fault.error_event(after_tokens=1, type=None, code=status), Fault.ok())
    events = await run(upstream, api)
    error = error_of(events)
    assert started(events)
    assert isinstance(events[-2], Metrics)
    assert sum(isinstance(ev, Token) for ev in events) == 1
    assert (error.kind, error.status, error.retryable) == (ErrorKind.UPSTREAM_ERROR, status, False)
    assert len(upstream.completion_requests()) == 1


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("status", REDIRECTS)
async def test_redirect_is_policy_and_never_followed(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str, status: int
) -> None:
    upstream.script(
        Fault.status(status, body=b"", headers=[("location", "http://elsewhere.test/v1")])
    )
    events = await run(upstream, api)
    error = error_of(events)
    assert (error.kind, error.status, error.retryable) == (ErrorKind.POLICY, status, False)
    assert "redirect" in error.message
    assert len(upstream.requests) == 1


# --- error bodies and in-band errors -----------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_model_not_found_code_wins_over_the_status(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str
) -> None:
    upstream.script(Fault.status(400, code="model_not_found", message="no model x"))
    error = error_of(await run(upstream, api))
    assert (error.kind, error.status, error.message) == (
        ErrorKind.UPSTREAM_NOT_FOUND,
        400,
        "no model x",
    )


@pytest.mark.parametrize("api", APIS)
async def test_500_with_an_sse_error_frame_as_body(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str
) -> None:
    frame = sse({"error": {"message": "litellm exploded", "type": "internal"}})
    upstream.script(Fault.status(500, body=frame, content_type="text/event-stream"))
    error = error_of(await run(upstream, api))
    assert (error.kind, error.status, error.message) == (
        ErrorKind.UPSTREAM_ERROR,
        500,
        "litellm exploded",
    )


@pytest.mark.parametrize("api", APIS)
async def test_named_error_event_is_an_upstream_error_after_started(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str
) -> None:
    upstream.script(Fault.error_event(after_tokens=2, event="error", message="went wrong"))
    events = await run(upstream, api)
    error = error_of(events)
    assert started(events)
    assert (error.kind, error.message) == (ErrorKind.UPSTREAM_ERROR, "went wrong")


@pytest.mark.parametrize("api", APIS)
async def test_rate_limit_event_as_first_event_is_admission_reject(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str
) -> None:
    upstream.script(*[Fault.error_event(type="rate_limit_error", code="rate_limit_exceeded")] * 3)
    events = await run(upstream, api)
    error = error_of(events)
    assert len(events) == 1
    assert (error.kind, error.retryable) == (ErrorKind.ADMISSION_REJECT, True)
    assert len(upstream.completion_requests()) == POLICY.max_attempts


# --- PROTOCOL --------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (200, "application/json", b'{"object": "chat.completion", "choices": []}'),
        (200, "text/html", b"<html>proxy login</html>"),
        (201, "text/plain", b"data: looks like sse but is not labelled so"),
    ],
)
async def test_2xx_that_is_not_an_event_stream_is_protocol(
    upstream: FakeUpstream,
    loopback_clock: MockClock,
    api: str,
    status: int,
    content_type: str,
    body: bytes,
) -> None:
    upstream.script(Fault.not_event_stream(status, body, content_type))
    events = await run(upstream, api)
    error = error_of(events)
    assert len(events) == 1
    assert (error.kind, error.status, error.retryable) == (ErrorKind.PROTOCOL, status, False)
    assert content_type in error.message
    assert len(upstream.completion_requests()) == 1


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "data",
    [
        b'data: {"choices": [{"delta": {"content": \n\n',  # truncated JSON
        b"data: not json at all\n\n",
        b'data: {"choices": "not a list"}\n\n',  # JSON, wrong shape
        b"data: \xff\xfe\xfd\n\n",  # not UTF-8
    ],
)
async def test_malformed_first_event_is_protocol_before_started(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str, data: bytes
) -> None:
    if api == "responses" and b"not a list" in data:
        # A Responses event is typed: one without a known `type` is skipped (new upstream
        # events must not break old adapters); a known one of the wrong shape is malformed.
        data = b'data: {"type": "response.output_text.delta", "delta": ["not", "text"]}\n\n'
    upstream.script(Fault.malformed(data))
    events = await run(upstream, api)
    error = error_of(events)
    assert len(events) == 1
    assert (error.kind, error.retryable) == (ErrorKind.PROTOCOL, False)
    assert len(upstream.completion_requests()) == 1


@pytest.mark.parametrize("api", APIS)
async def test_malformed_event_after_started_is_protocol(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str
) -> None:
    upstream.script(Fault.malformed(after_tokens=3), Fault.ok())
    events = await run(upstream, api)
    error = error_of(events)
    assert started(events)
    assert sum(isinstance(ev, Token) for ev in events) == 3
    assert error.kind is ErrorKind.PROTOCOL
    assert len(upstream.completion_requests()) == 1


async def test_malformed_event_in_the_same_read_as_the_first_ends_after_started(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    # only the first event decides whether the upstream accepted: the outcome must not
    # depend on whether the malformed frame came in the first network read or the next
    role = sse(chat_chunk("", role=True))
    upstream.script(Reply(steps=[Send(role + sse(chat_chunk("A")) + b"data: {oops\n\n")]))
    upstream.tokens = ["A"]
    events = await run(upstream, "chat")
    error = error_of(events)
    assert started(events)
    assert [ev.text for ev in events if isinstance(ev, Token)] == ["A"]
    assert error.kind is ErrorKind.PROTOCOL


async def test_tokens_before_a_malformed_event_in_the_same_read_are_delivered(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    frames = sse(chat_chunk("B")) + sse(chat_chunk("C")) + b"data: {oops\n\n"
    upstream.script(Reply(steps=[Stream(1), Send(frames)]))
    upstream.tokens = ["Trio", "B", "C"]
    events = await run(upstream, "chat")  # check_stream: tokens_out == Tokens delivered
    error = error_of(events)
    assert [ev.text for ev in events if isinstance(ev, Token)] == ["Trio", "B", "C"]
    assert error.kind is ErrorKind.PROTOCOL


# --- transport faults: before the headers (retried) and after them (never) --------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "fault",
    [Fault.reset_before_headers(), Fault.garbage_before_headers()],
    ids=["reset", "garbage"],
)
async def test_connection_lost_before_the_headers_is_pool_unavailable(
    upstream: FakeUpstream, loopback_clock: MockClock, api: str, fault: Reply
) -> None:
    upstream.script(*[fault] * 3)
    events = await run(upstream, api)
    error = error_of(events)
    assert len(events) == 1
    assert (error.kind, error.status, error.retryable) == (ErrorKind.POOL_UNAVAILABLE, None, True)
    assert len(upstream.completion_requests()) == POLICY.max_attempts


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("fault", "tokens"),
    [
        (Fault.reset_after(None), None),
        (Fault.eof_after(None), None),
        (Fault.reset_after(0), 0),
        (Fault.reset_after(4), 4),
        (Fault.eof_after(4), 4),
    ],
    ids=["reset-before-any-event", "eof-before-any-event", "reset-at-0", "reset-at-4", "eof-at-4"],
)
async def test_connection_lost_after_the_headers_is_worker_reset(
    upstream: FakeUpstream,
    loopback_clock: MockClock,
    api: str,
    fault: Reply,
    tokens: int | None,
) -> None:
    upstream.script(fault, Fault.ok())
    events = await run(upstream, api)
    error = error_of(events)
    assert (error.kind, error.status, error.retryable) == (ErrorKind.WORKER_RESET, None, False)
    assert len(upstream.completion_requests()) == 1
    # before any event there is nothing to start; chat's role delta is an event, and so is
    # Responses' `output_item.added` after its created/in_progress preamble; completions'
    # stream opens with its first token
    head_is_event = api in ("chat", "responses") and tokens is not None
    assert started(events) == (head_is_event or bool(tokens))
    assert sum(isinstance(ev, Token) for ev in events) == (tokens or 0)


# --- timeouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("fault", "kind", "which"),
    [
        (Fault.stall_before_headers(), ErrorKind.DECODE_TIMEOUT, "first_token"),
        (Fault.stall_after_headers(), ErrorKind.DECODE_TIMEOUT, "idle"),  # idle < first_token
        (Fault.stall_after(2), ErrorKind.DECODE_TIMEOUT, "idle"),
        (Fault.ok(pace=1.0), ErrorKind.DEADLINE_UNMET, "total"),
    ],
    ids=["before-headers", "after-headers", "mid-stream", "total"],
)
async def test_timeouts_map_to_their_kinds(
    upstream: FakeUpstream,
    loopback_clock: MockClock,
    api: str,
    fault: Reply,
    kind: ErrorKind,
    which: str,
) -> None:
    upstream.script(fault, Fault.ok())
    timeouts = Timeouts(first_token=3.0, idle=1.5, total=10.0)
    events = await run(upstream, api, timeouts=timeouts)
    error = error_of(events)
    assert (error.kind, error.status, error.retryable) == (kind, None, False)
    assert which in error.message
    assert len(upstream.completion_requests()) == 1


# --- POLICY: TLS: test_security_transport.py (an untrusted certificate, and the trust rules) ------


# --- CANCELLED ---------------------------------------------------------------------------------


async def test_cancel_raises_cancelled_from_raise_for_error(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(Fault.stall_after(2))
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(config(upstream, "chat")) as adapter:
            async with adapter.submit(TaskRequest(task_id="c", prompt="hi")) as events:
                seen: list[Event] = []
                async for ev in events:
                    seen.append(ev)
                    if isinstance(ev, Token) and ev.index == 1:
                        assert adapter.cancel("c")
    end = check_stream(seen)
    assert end.reason == "cancelled"
    with pytest.raises(WorkerError) as caught:
        end.raise_for_error()
    assert (caught.value.kind, caught.value.retryable) == (ErrorKind.CANCELLED, False)


# --- the docs list every kind ----------------------------------------------------------------


@pytest.mark.req("OC-ADAPT-OAI-6030")
def test_docs_list_every_error_kind_with_cause_and_retry_rule() -> None:
    text = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([A-Z_]+)` \|.*$", text, re.M)}
    assert set(rows) == {kind.value for kind in ErrorKind}
    for kind in ErrorKind:
        cells = [c.strip() for c in rows[kind.value].strip("|").split("|")]
        assert len(cells) >= 3, f"{kind}: cause and retry rule"
        assert all(cells[:3]), f"{kind}: cause and retry rule"
        retried = cells[2].lower().startswith("yes")
        assert retried == (kind in RETRYABLE_KINDS), f"{kind}: retry rule in the docs"
