"""The test kit itself: the fault script expands to the steps it names, per-task scripts go to
the right task, and `check_stream` rejects every broken grammar (a checker that accepts
anything would make the chaos and fuzz tests prove nothing)."""

from __future__ import annotations

import pytest
import trio

from oai_adapter import (
    AdapterConfig,
    End,
    ErrorInfo,
    ErrorKind,
    Metrics,
    OpenAIAdapter,
    RetryPolicy,
    Started,
    TaskRequest,
    Token,
)
from oai_adapter._events import Event
from oai_adapter._sse import MAX_EVENT_BYTES
from oai_adapter.testing import (
    FakeUpstream,
    Fault,
    Hang,
    Reply,
    Reset,
    Send,
    Sleep,
    Stream,
    check_stream,
    render_stream,
)
from oai_adapter.testing._script import expand_steps

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


# --- check_stream rejects what DESIGN forbids ------------------------------------------------

S = Started(task_id="t", model="m", attempt=1, http_version="HTTP/1.1")
S2 = Started(task_id="t", model="m", attempt=2, http_version="HTTP/1.1")


def tok(i: int, text: str = "x") -> Token:
    return Token(task_id="t", index=i, text=text)


def metrics(n: int, retries: int = 0) -> Metrics:
    return Metrics(
        task_id="t",
        ttft_ms=1.0,
        decode_time_ms=1.0,
        duration_ms=2.0,
        tokens_out=n,
        prompt_tokens=None,
        completion_tokens=None,
        retries=retries,
    )


def end(n: int, reason: str = "stop") -> End:
    error = ErrorInfo(kind=ErrorKind.UPSTREAM_ERROR, message="m") if reason == "error" else None
    return End(task_id="t", reason=reason, tokens_out=n, error=error)  # type: ignore[arg-type]


GOOD: list[list[Event]] = [
    [end(0, "error")],
    [end(0, "cancelled")],
    [S, metrics(0), end(0)],
    [S, tok(0), tok(1), metrics(2), end(2)],
    [S, tok(0), end(1, "cancelled")],
    [S2, tok(0), metrics(1, retries=1), end(1, "error")],
]

BAD: list[list[Event]] = [
    [],
    [S, tok(0), metrics(1)],  # no End
    [S, tok(0), metrics(1), end(1), end(1)],  # two Ends
    [S, tok(0), end(1)],  # no Metrics before a non-cancel End
    [tok(0), metrics(1), end(1)],  # no Started
    [S, tok(1), metrics(1), end(1)],  # index not from 0
    [S, tok(0), tok(0), metrics(2), end(2)],  # index repeated
    [S, tok(0), metrics(1), end(2)],  # tokens_out wrong
    [S, tok(0), metrics(2), end(1)],  # Metrics.tokens_out wrong
    [S2, tok(0), metrics(1, retries=0), end(1)],  # retries != attempt - 1
    [S, metrics(0), tok(0), end(1)],  # Token after Metrics
    [S, S, metrics(0), end(0)],  # two Started
    [End(task_id="t", reason="error", tokens_out=0)],  # error without ErrorInfo
    [S, tok(0, ""), metrics(1), end(1)],  # an empty Token
]


@pytest.mark.parametrize("events", GOOD)
def test_check_stream_accepts_the_grammar(events: list[Event]) -> None:
    check_stream(events)


@pytest.mark.parametrize("events", BAD)
def test_check_stream_rejects_broken_streams(events: list[Event]) -> None:
    with pytest.raises(AssertionError):
        check_stream(events)


def test_check_stream_rejects_tokens_that_are_not_the_upstream_prefix() -> None:
    events: list[Event] = [S, tok(0, "a"), tok(1, "c"), metrics(2), end(2)]
    check_stream(events, tokens=["a", "c", "d"])
    with pytest.raises(AssertionError):
        check_stream(events, tokens=["a", "b", "c"])
    with pytest.raises(AssertionError):
        check_stream(events, tokens=["a"])  # more Tokens than sent
