"""Fuzz: whatever bytes an upstream sends as a 200 event stream, the iteration never raises and
ends with exactly one `End`, in the grammar of DESIGN.md, "Events"; and the outcome does not
depend on how those bytes were split into network reads.

The bytes reach the reader through an in-process transport (no socket), so hypothesis can run
hundreds of examples in a second or two; everything above the transport — the reader, the SSE
decoder, the mappers, the error table — is the real code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx2
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oai_adapter import (
    AdapterConfig,
    End,
    OpenAIAdapter,
    RetryPolicy,
    Started,
    TaskRequest,
    Token,
)
from oai_adapter._events import Event
from oai_adapter.testing import chat_chunk, check_stream, completion_chunk, sse

from .sansio import split_at

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _Body(httpx2.AsyncByteStream):
    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        pass


class _Transport(httpx2.AsyncBaseTransport):
    """Every request gets a 200 event stream made of `chunks`, one read each."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.chunks = chunks
        self.requests = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.requests += 1
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Body(self.chunks)
        )


async def stream_of(chunks: Sequence[bytes], api: str = "chat") -> tuple[list[Event], int]:
    config = AdapterConfig(
        base_url="http://fuzz.test/v1",
        model="m",
        api=api,
        retry=RetryPolicy(max_attempts=3, base=0.0001, cap=0.001),
    )
    transport = _Transport(chunks)
    with trio.fail_after(30):
        async with OpenAIAdapter(config, transport=transport) as adapter:
            adapter.rng.seed(0)
            async with adapter.submit(TaskRequest(task_id="f", prompt="x")) as events:
                seen = [ev async for ev in events]
            assert adapter.running() == frozenset()
    return seen, transport.requests


def outcome(events: Sequence[Event]) -> tuple[Any, ...]:
    """What a consumer can observe, minus timings."""
    end = events[-1]
    assert isinstance(end, End)
    start = events[0] if isinstance(events[0], Started) else None
    return (
        start.attempt if start else None,
        [ev.text for ev in events if isinstance(ev, Token)],
        end.reason,
        end.error.kind if end.error else None,
        end.error.status if end.error else None,
    )


@FUZZ
@given(chunks=st.lists(st.binary(max_size=64), max_size=12))
@pytest.mark.req("OC-ADAPT-OAI-6011")
async def test_arbitrary_bytes_end_the_stream_exactly_once(chunks: list[bytes]) -> None:
    events, _ = await stream_of(chunks)
    check_stream(events)


# --- bytes that look like a real stream, with faults mixed in ----------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], min_codepoint=1), min_size=0, max_size=6
)

_FRAMES = st.one_of(
    _TEXT.map(lambda t: sse(chat_chunk(t))),
    _TEXT.map(lambda t: sse(completion_chunk(t))),
    st.just(sse(chat_chunk("", role=True))),
    st.sampled_from(["stop", "length", "tool_calls", "weird"]).map(
        lambda f: sse(chat_chunk(None, finish=f))
    ),
    st.just(sse(chat_chunk(usage=(3, 4), empty_choices=True))),
    st.just(b"data: [DONE]\n\n"),
    st.just(b": keep-alive\n\n"),
    st.just(b"\r\n"),
    st.sampled_from(
        [
            sse({"error": {"type": "rate_limit_error", "message": "slow down"}}),
            sse({"error": {"code": 503, "message": "busy"}}),
            sse({"error": "plain"}),
            sse({"message": "x"}, event="error"),
        ]
    ),
    st.sampled_from(
        [
            b"data: {not json\n\n",
            b'data: {"choices": 7}\n\n',
            b"data: \xff\xfe\n\n",
            b'data: {"choices": [{"delta": {"content": "\\ud83d"}}]}\n\n',
            b"event: ping\ndata: {}\n\n",
            b"id: 4\nretry: 10\n\n",
        ]
    ),
    st.binary(max_size=16),
)


@FUZZ
@given(
    frames=st.lists(_FRAMES, max_size=14),
    cuts_a=st.lists(st.integers(min_value=0), max_size=10),
    cuts_b=st.lists(st.integers(min_value=0), max_size=10),
    api=st.sampled_from(["chat", "completions"]),
)
@pytest.mark.req("OC-ADAPT-OAI-6011")
async def test_outcome_does_not_depend_on_how_the_bytes_are_split(
    frames: list[bytes], cuts_a: list[int], cuts_b: list[int], api: str
) -> None:
    body = b"".join(frames)
    events_a, requests_a = await stream_of(split_at(body, cuts_a), api)
    events_b, requests_b = await stream_of(split_at(body, cuts_b), api)
    check_stream(events_a)
    check_stream(events_b)
    assert outcome(events_a) == outcome(events_b)
    assert requests_a == requests_b


@FUZZ
@given(frames=st.lists(_FRAMES, max_size=14), api=st.sampled_from(["chat", "completions"]))
@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_a_stream_that_started_is_never_retried(frames: list[bytes], api: str) -> None:
    events, requests = await stream_of([b"".join(frames)], api)
    check_stream(events)
    if isinstance(events[0], Started):
        assert events[0].attempt == requests  # all earlier attempts failed before Started
