"""`Metrics` is exact (OC-ADAPT-OAI-6031): with `loopback_clock` (virtual time that jumps only
by deadlines, safe beside real loopback sockets) and an upstream that paces its tokens with
`trio.sleep`, every figure is known in advance, to the bit.

`ttft_ms`: `submit` entered → the network read that carried the first Token (connect, a stall
before the headers and retries included); `decode_time_ms`: that read → the read carrying the
last Token; `duration_ms`: `submit` entered → the reader made `End`. Paces are powers of two so
the float arithmetic is exact."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from oai_adapter import (
    AdapterConfig,
    End,
    Metrics,
    OpenAIAdapter,
    RetryPolicy,
    Started,
    TaskRequest,
    Token,
)
from oai_adapter.testing import FakeUpstream, Reply, Send, chat_chunk, sse

from .conftest import make_config
from .helpers import collect

PACE = 0.25  # seconds before each token


def metrics_of(events: list[object]) -> Metrics:
    found = [e for e in events if isinstance(e, Metrics)]
    assert len(found) == 1
    assert isinstance(events[-1], End)
    return found[0]


async def paced(nursery: trio.Nursery, tokens: int, **kwargs: object) -> FakeUpstream:
    upstream = FakeUpstream(tokens=[f" t{i}" for i in range(tokens)], pace=PACE)
    for name, value in kwargs.items():
        setattr(upstream, name, value)
    await nursery.start(upstream.serve)
    return upstream


@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_ttft_decode_time_and_duration_are_exact_with_a_paced_upstream(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    upstream = await paced(nursery, 8)
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        events = await collect(adapter, TaskRequest(task_id="p", prompt="one two three"))
    m = metrics_of(events)
    assert m.ttft_ms == 250.0  # one pace before the first token
    assert m.decode_time_ms == 7 * 250.0  # seven paces between the first and the eighth
    assert m.duration_ms == 8 * 250.0  # the end follows the last token at once
    assert m.tokens_out == 8 == sum(isinstance(e, Token) for e in events)
    assert (m.prompt_tokens, m.completion_tokens) == (3, 8)  # the upstream's usage
    assert m.retries == 0


async def test_ttft_counts_from_submit_so_a_stall_before_the_headers_is_in_it(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    upstream = await paced(nursery, 4)
    upstream.script(Reply(delay=1.5))  # the upstream sits on the request before answering
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        m = metrics_of(await collect(adapter, TaskRequest(task_id="s", prompt="hi")))
    assert m.ttft_ms == 1500.0 + 250.0
    assert m.decode_time_ms == 3 * 250.0
    assert m.duration_ms == 1500.0 + 4 * 250.0


@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_ttft_and_duration_include_failed_attempts_and_their_backoff(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    upstream = await paced(nursery, 2)
    upstream.script(
        Reply(
            status=503,
            delay=0.5,  # a stall before the 503's headers
            headers=(("retry-after-ms", "500"),),
            body=b'{"error": {"message": "busy"}}',
            steps=(),
        ),
        Reply.status_only(429, retry_after_ms="1000"),
        Reply(),
    )
    config = make_config(upstream, retry=RetryPolicy(max_attempts=3, base=0.5, cap=2.0))
    async with OpenAIAdapter(config) as adapter:
        events = await collect(adapter, TaskRequest(task_id="r", prompt="hi"))
    started = events[0]
    assert isinstance(started, Started)
    assert started.attempt == 3
    m = metrics_of(events)
    assert m.retries == 2
    # 0.5 s stall, 0.5 s backoff (retry-after-ms), 1 s backoff (retry-after-ms), one pace.
    assert m.ttft_ms == 500.0 + 500.0 + 1000.0 + 250.0
    assert m.decode_time_ms == 250.0
    assert m.duration_ms == m.ttft_ms + 250.0


async def test_one_read_carrying_every_token_has_zero_decode_time(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    body = b"".join(sse(chat_chunk(t)) for t in ("a", "b", "c"))
    body += sse(chat_chunk(None, finish="stop")) + b"data: [DONE]\n\n"
    upstream.script(Reply(delay=0.125, steps=[Send(body)]))
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        m = metrics_of(await collect(adapter, TaskRequest(task_id="one", prompt="hi")))
    assert m.tokens_out == 3
    assert m.ttft_ms == 125.0
    assert m.decode_time_ms == 0.0  # FACTS.md: a fast server may send the whole answer at once


@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_usage_is_requested_and_reported_when_include_usage(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.tokens = ["x"] * 5
    async with OpenAIAdapter(make_config(upstream, include_usage=True)) as adapter:
        m = metrics_of(await collect(adapter, TaskRequest(task_id="u", prompt="a b c d")))
    (request,) = upstream.completion_requests()
    assert request.json["stream_options"] == {"include_usage": True}
    assert (m.prompt_tokens, m.completion_tokens) == (4, 5)


async def test_no_usage_is_requested_or_invented_without_include_usage(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    async with OpenAIAdapter(make_config(upstream, include_usage=False)) as adapter:
        m = metrics_of(await collect(adapter, TaskRequest(task_id="n", prompt="a b")))
    (request,) = upstream.completion_requests()
    assert "stream_options" not in request.json
    assert (m.prompt_tokens, m.completion_tokens) == (None, None)
    assert m.tokens_out > 0


async def test_completions_usage_comes_from_the_finish_chunk(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.tokens = ["y"] * 3
    upstream.pace = PACE
    config = make_config(upstream, api="completions")
    async with OpenAIAdapter(config) as adapter:
        m = metrics_of(await collect(adapter, TaskRequest(task_id="c", prompt="a b c d e")))
    (request,) = upstream.completion_requests()
    assert request.path == "/v1/completions"
    assert request.json["stream_options"] == {"include_usage": True}
    assert (m.prompt_tokens, m.completion_tokens) == (5, 3)
    assert (m.ttft_ms, m.decode_time_ms, m.duration_ms) == (250.0, 500.0, 750.0)


@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_tokens_out_counts_token_events_whatever_the_usage_says(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(
        Reply(
            steps=[
                Send(sse(chat_chunk("", role=True))),
                Send(sse(chat_chunk("merged by the server"))),
                Send(sse(chat_chunk(None, finish="stop"))),
                Send(sse(chat_chunk(usage=(7, 4), empty_choices=True))),
                Send(b"data: [DONE]\n\n"),
            ]
        )
    )
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        m = metrics_of(await collect(adapter, TaskRequest(task_id="t", prompt="hi")))
    assert m.tokens_out == 1
    assert (m.prompt_tokens, m.completion_tokens) == (7, 4)


async def test_a_task_without_tokens_has_no_ttft_or_decode_time(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(
        Reply(
            delay=0.5,
            steps=[Send(sse(chat_chunk(None, finish="length"))), Send(b"data: [DONE]\n\n")],
        )
    )
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        events = await collect(adapter, TaskRequest(task_id="z", prompt="hi"))
    m = metrics_of(events)
    assert (m.ttft_ms, m.decode_time_ms, m.tokens_out) == (None, None, 0)
    assert m.duration_ms == 500.0
    end = events[-1]
    assert isinstance(end, End)
    assert end.reason == "length"


def test_config_defaults_request_usage() -> None:
    config = AdapterConfig(base_url="http://127.0.0.1:1/v1", model="m")
    assert config.include_usage is True
