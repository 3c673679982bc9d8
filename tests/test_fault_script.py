"""The test kit itself: the fault script expands to the steps it names and per-task scripts go
to the right task. (`check_stream` itself is tested in `test_grammar.py`.)"""

from __future__ import annotations

import trio

from oai_adapter import (
    AdapterConfig,
    End,
    ErrorKind,
    OpenAIAdapter,
    RetryPolicy,
    TaskRequest,
)
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
