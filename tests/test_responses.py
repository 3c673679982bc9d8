"""The Responses API (`api="responses"`): the sans-IO mapper from typed events to ours, its
terminal events and errors, and end to end through `OpenAIAdapter` against the test upstream
in the shapes of OpenAI/vLLM, llama.cpp's server and LiteLLM (FACTS.md, "Streams")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from oai_adapter import (
    End,
    ErrorKind,
    Event,
    Metrics,
    OpenAIAdapter,
    ReasoningDelta,
    Started,
    TaskRequest,
    Token,
    ToolCallDelta,
)
from oai_adapter._mappers import ProtocolError
from oai_adapter._responses import ResponsesMapper
from oai_adapter.testing import (
    FakeUpstream,
    Reply,
    ResponsesShape,
    ScriptedToolCall,
    Send,
    Sleep,
    render_responses_stream,
    responses_event,
    sse,
)

from .conftest import make_config
from .helpers import collect
from .sansio import body_of, map_stream, split_at

SHAPES: tuple[ResponsesShape, ...] = ("openai", "llama.cpp", "litellm")
WORDS = ["Hello", ",", " wörld", " 🙂", " again"]


# --- helpers ---------------------------------------------------------------------------------


def run_mapper(
    chunks: Iterable[bytes], *, max_tokens: int | None = None
) -> tuple[list[Event], ResponsesMapper]:
    mapper = ResponsesMapper("t", max_tokens=max_tokens)
    return map_stream(mapper, chunks), mapper


def frames(*events: tuple[str, dict[str, Any]], named: bool = True) -> bytes:
    return b"".join(
        sse(responses_event(kind, i, **fields), event=kind if named else None)
        for i, (kind, fields) in enumerate(events)
    )


def text_of(events: Iterable[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))


# --- the mapper, sans-IO ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.req("OC-ADAPT-OAI-6031")
def test_text_deltas_become_consecutive_tokens_and_usage_becomes_counts(
    shape: ResponsesShape,
) -> None:
    body = body_of(render_responses_stream(WORDS, shape=shape, usage=(7, 5)))
    out, mapper = run_mapper([body])
    assert out == [Token(task_id="t", index=i, text=w) for i, w in enumerate(WORDS)]
    assert (mapper.finish, mapper.error) == ("stop", None)
    assert (mapper.prompt_tokens, mapper.completion_tokens) == (7, 5)
    assert mapper.eof_error() is None


@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from(SHAPES),
    words=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=6),
    reasoning=st.lists(st.text(min_size=1, max_size=6), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=40),
)
@pytest.mark.req("OC-ADAPT-OAI-6011")
def test_every_byte_split_of_a_responses_stream_gives_the_same_events(
    shape: ResponsesShape, words: list[str], reasoning: list[str], cuts: list[int]
) -> None:
    call = ScriptedToolCall("lookup", ['{"q": ', '"ü"}'], call_id="call_x")
    body = body_of(
        render_responses_stream(
            words, shape=shape, reasoning=reasoning, tool_calls=[call], usage=(3, len(words))
        )
    )
    whole, whole_mapper = run_mapper([body])
    split, split_mapper = run_mapper(split_at(body, cuts))
    assert split == whole
    assert text_of(split) == "".join(words)
    assert [e.text for e in split if isinstance(e, ReasoningDelta)] == reasoning
    assert split_mapper.finish == whole_mapper.finish == "tool_calls"
    assert split_mapper.completion_tokens == len(words)


def test_bytes_fed_one_at_a_time_give_the_same_events() -> None:
    body = body_of(render_responses_stream(WORDS, shape="openai", reasoning=["hm"]))
    whole, _ = run_mapper([body])
    drip, _ = run_mapper(body[i : i + 1] for i in range(len(body)))
    assert drip == whole
    assert text_of(drip) == "".join(WORDS)


@pytest.mark.parametrize(
    ("shape", "finish", "max_tokens", "reason"),
    [
        ("openai", "stop", None, "stop"),
        ("openai", "length", 2, "length"),  # response.incomplete, max_output_tokens
        ("litellm", "length", 2, "length"),  # response.incomplete, then [DONE]
        ("llama.cpp", "length", 2, "length"),  # response.completed at the limit (FACTS.md)
        ("openai", "content_filter", None, "content_filter"),
        ("litellm", "content_filter", None, "content_filter"),
    ],
)
@pytest.mark.req("OC-ADAPT-OAI-6001")
def test_each_terminal_event_sets_the_end_reason(
    shape: ResponsesShape, finish: Any, max_tokens: int | None, reason: str
) -> None:
    tokens = WORDS[:2] if max_tokens else WORDS
    steps = render_responses_stream(tokens, shape=shape, finish=finish, usage=(4, len(tokens)))
    out, mapper = run_mapper([body_of(steps)], max_tokens=max_tokens)
    assert mapper.done
    assert mapper.error is None
    assert mapper.finish == reason
    assert (mapper.prompt_tokens, mapper.completion_tokens) == (4, len(tokens))
    assert text_of(out) == "".join(tokens)


def test_completed_below_the_request_limit_is_a_stop() -> None:
    steps = render_responses_stream(WORDS[:2], shape="llama.cpp", usage=(4, 2))
    _, mapper = run_mapper([body_of(steps)], max_tokens=3)
    assert mapper.finish == "stop"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        # llama-server, transformers: no `incomplete_details` key, output stopped at the cap
        ({"status": "completed", "usage": {"output_tokens": 3}}, "length"),
        # a server that ignores the cap (nginx replaying a capture, some proxies): it went past
        ({"status": "completed", "usage": {"output_tokens": 7}}, "stop"),
        # the full schema (OpenAI) says `incomplete_details: null`: it would have sent
        # `response.incomplete` had the cap cut the answer, so `completed` is believed
        (
            {"status": "completed", "incomplete_details": None, "usage": {"output_tokens": 3}},
            "stop",
        ),
        # an explicit reason always wins
        (
            {
                "status": "completed",
                "incomplete_details": {"reason": "content_filter"},
                "usage": {"output_tokens": 3},
            },
            "content_filter",
        ),
    ],
    ids=["llama-server-at-the-cap", "cap-ignored", "full-schema-completed", "explicit-reason"],
)
def test_completed_at_the_request_limit_is_a_length_only_for_servers_that_need_it(
    response: dict[str, Any], reason: str
) -> None:
    body = frames(
        ("response.output_text.delta", {"delta": "a"}),
        ("response.completed", {"response": response}),
    )
    _, mapper = run_mapper([body], max_tokens=3)
    assert mapper.finish == reason


def test_completed_with_status_incomplete_is_a_length() -> None:
    body = frames(
        ("response.output_text.delta", {"delta": "a"}),
        ("response.completed", {"response": {"status": "incomplete"}}),
    )
    _, mapper = run_mapper([body])
    assert mapper.finish == "length"


def test_incomplete_without_a_reason_is_a_length() -> None:
    body = frames(
        ("response.output_text.delta", {"delta": "a"}),
        ("response.incomplete", {"response": {"status": "incomplete"}}),
    )
    _, mapper = run_mapper([body])
    assert mapper.finish == "length"


@pytest.mark.parametrize("done", [True, False])
@pytest.mark.parametrize("named", [True, False])
def test_done_marker_after_completed_or_none_is_a_normal_end(done: bool, named: bool) -> None:
    body = frames(
        ("response.created", {"response": {"status": "in_progress"}}),
        ("response.output_text.delta", {"delta": "hi"}),
        ("response.completed", {"response": {"status": "completed"}}),
        named=named,
    ) + (b"data: [DONE]\n\n" if done else b"")
    out, mapper = run_mapper([body])
    assert text_of(out) == "hi"
    assert mapper.finish == "stop"
    assert mapper.eof_error() is None


def test_eof_before_a_terminal_event_is_a_worker_reset() -> None:
    body = frames(("response.output_text.delta", {"delta": "hi"}))
    out, mapper = run_mapper([body])
    assert text_of(out) == "hi"
    err = mapper.eof_error()
    assert err is not None
    assert err.kind is ErrorKind.WORKER_RESET


def test_event_name_is_used_when_the_type_field_is_missing() -> None:
    body = (
        b'event: response.output_text.delta\ndata: {"delta": "x"}\n\n'
        b'event: response.completed\ndata: {"response": {}}\n\n'
    )
    out, mapper = run_mapper([body])
    assert out == [Token(task_id="t", index=0, text="x")]
    assert mapper.finish == "stop"


def test_unknown_event_types_are_skipped() -> None:
    plain = frames(
        ("response.output_text.delta", {"delta": "a"}),
        ("response.output_text.delta", {"delta": "b"}),
        ("response.completed", {"response": {"status": "completed"}}),
    )
    noisy = (
        frames(
            ("response.output_text.delta", {"delta": "a"}),
            ("response.future_thing.delta", {"delta": {"an": "object"}, "item": [1, 2]}),
            ("response.image_generation_call.partial_image", {"partial_image_b64": "AAAA"}),
            ("response.output_text.annotation.added", {"annotation": {"type": "url_citation"}}),
            ("response.refusal.delta", {"delta": "no"}),
            ("response.steer.accepted", {"code": ["not", "a", "string"], "message": 5}),
            ("response.output_text.delta", {"delta": "b"}),
            ("response.completed", {"response": {"status": "completed"}}),
        )
        + b"event: keepalive\ndata: {}\n\n"
    )
    assert run_mapper([noisy])[0] == run_mapper([plain])[0]
    _, mapper = run_mapper([noisy])
    assert (mapper.finish, mapper.error) == ("stop", None)


def test_a_mapped_event_with_a_wrong_shape_is_a_protocol_error() -> None:
    body = frames(("response.output_text.delta", {"delta": 5}))
    with pytest.raises(ProtocolError, match=r"response\.output_text\.delta"):
        run_mapper([body])


def test_malformed_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="malformed JSON"):
        run_mapper([b'event: response.output_text.delta\ndata: {"delta": \n\n'])


@pytest.mark.parametrize(
    "terminal",
    [
        ("error", {"code": "server_error", "message": "The model exploded", "param": None}),
        ("error", {"error": {"code": "server_error", "message": "The model exploded"}}),
        (
            "response.failed",
            {
                "response": {
                    "status": "failed",
                    "error": {"code": "server_error", "message": "The model exploded"},
                }
            },
        ),
    ],
    ids=["error-event", "error-event-nested", "response.failed"],
)
@pytest.mark.req("OC-ADAPT-OAI-6030")
def test_an_error_mid_stream_is_an_upstream_error_with_its_code_and_message(
    terminal: tuple[str, dict[str, Any]],
) -> None:
    body = frames(
        ("response.created", {"response": {"status": "in_progress"}}),
        ("response.output_text.delta", {"delta": "par"}),
        terminal,
        ("response.output_text.delta", {"delta": "never"}),
    )
    out, mapper = run_mapper([body])
    assert out == [Token(task_id="t", index=0, text="par")]  # the error is no data
    assert mapper.done
    assert mapper.error is not None
    assert mapper.error.kind is ErrorKind.UPSTREAM_ERROR
    assert "server_error" in mapper.error.message
    assert "The model exploded" in mapper.error.message


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("rate_limit_exceeded", ErrorKind.ADMISSION_REJECT),
        ("server_error", ErrorKind.UPSTREAM_ERROR),
    ],
)
def test_an_error_right_after_the_preamble_stands_for_its_status(
    code: str, kind: ErrorKind
) -> None:
    body = frames(
        ("response.created", {"response": {"status": "in_progress"}}),
        ("response.in_progress", {"response": {"status": "in_progress"}}),
        ("error", {"code": code, "message": "busy"}),
    )
    out, mapper = run_mapper([body])
    assert out == []
    assert mapper.error is not None
    assert mapper.error.kind is kind
    assert mapper.error.retryable is (kind is ErrorKind.ADMISSION_REJECT)


def test_the_lifecycle_preamble_is_not_counted_as_an_event() -> None:
    mapper = ResponsesMapper("t")
    out: list[Event] = []
    mapper.feed("response.created", msgspec.json.encode({"type": "response.created"}), out)
    mapper.feed("message", msgspec.json.encode({"type": "response.in_progress"}), out)
    assert mapper.events_seen == 0
    mapper.feed("message", msgspec.json.encode({"type": "response.output_item.added"}), out)
    assert mapper.events_seen == 1


def test_a_large_completed_event_is_read_without_its_output() -> None:
    big = "x" * (3 * 1024 * 1024)
    body = frames(
        ("response.output_text.delta", {"delta": "x"}),
        (
            "response.completed",
            {
                "response": {
                    "status": "completed",
                    "output": [{"type": "message", "content": [{"text": big}]}],
                    "usage": {"input_tokens": 1, "output_tokens": 1},
                }
            },
        ),
    )
    out, mapper = run_mapper(split_at(body, range(0, len(body), 65536)))
    assert text_of(out) == "x"
    assert (mapper.finish, mapper.completion_tokens) == ("stop", 1)


def test_a_surrogate_pair_split_across_two_deltas_is_joined() -> None:
    body = (
        b'data: {"type": "response.output_text.delta", "delta": "a\\ud83d"}\n\n'
        b'data: {"type": "response.output_text.delta", "delta": "\\ude00b"}\n\n'
        b'data: {"type": "response.completed", "response": {}}\n\n'
    )
    out, _ = run_mapper([body])
    assert text_of(out) == "a\U0001f600b"


# --- end to end through OpenAIAdapter --------------------------------------------------------


@pytest.mark.parametrize("flavor", ["openai", "vllm", "llama.cpp", "litellm"])
@pytest.mark.req("OC-ADAPT-OAI-6001")
async def test_responses_stream_end_to_end_in_each_upstream_shape(
    nursery: trio.Nursery, flavor: Any
) -> None:
    upstream = FakeUpstream(flavor=flavor)
    await nursery.start(upstream.serve)
    async with OpenAIAdapter(make_config(upstream, api="responses")) as adapter:
        events = await collect(adapter, TaskRequest(task_id="r-1", prompt="say it"))
    assert isinstance(events[0], Started)
    tokens = [e for e in events if isinstance(e, Token)]
    assert [t.index for t in tokens] == list(range(len(upstream.tokens)))
    assert "".join(t.text for t in tokens) == "".join(upstream.tokens)
    metrics, end = events[-2], events[-1]
    assert isinstance(metrics, Metrics)
    assert (metrics.prompt_tokens, metrics.completion_tokens) == (2, len(upstream.tokens))
    assert isinstance(end, End)
    assert (end.reason, end.tokens_out, end.error) == ("stop", len(upstream.tokens), None)


@pytest.mark.parametrize("flavor", ["openai", "llama.cpp", "litellm"])
async def test_responses_limit_ends_with_length_in_each_upstream_shape(
    nursery: trio.Nursery, flavor: Any
) -> None:
    upstream = FakeUpstream(flavor=flavor)
    await nursery.start(upstream.serve)
    async with OpenAIAdapter(make_config(upstream, api="responses")) as adapter:
        events = await collect(adapter, TaskRequest(task_id="r-2", prompt="hi", max_tokens=3))
    end = events[-1]
    assert isinstance(end, End)
    assert (end.reason, end.tokens_out) == ("length", 3)


async def test_responses_limit_given_in_extra_is_honoured_for_completed_at_the_limit(
    upstream: FakeUpstream,
) -> None:
    # llama.cpp flavor: `response.completed` even though the limit was hit (FACTS.md)
    async with OpenAIAdapter(make_config(upstream, api="responses")) as adapter:
        req = TaskRequest(task_id="r-x", prompt="hi", extra={"max_output_tokens": 2})
        events = await collect(adapter, req)
    end = events[-1]
    assert isinstance(end, End)
    assert (end.reason, end.tokens_out) == ("length", 2)


@pytest.mark.req("OC-ADAPT-OAI-6001")
async def test_responses_request_body_carries_input_limits_and_extra(
    upstream: FakeUpstream,
) -> None:
    async with OpenAIAdapter(make_config(upstream, api="responses")) as adapter:
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
        req = TaskRequest(
            task_id="r-3",
            messages=messages,
            max_tokens=99,
            temperature=0.5,
            top_p=0.9,
            extra={"reasoning": {"effort": "low"}},
        )
        events = await collect(adapter, req)
    assert isinstance(events[-1], End)
    assert events[-1].reason == "stop"
    (sent,) = upstream.completion_requests()
    assert sent.path == "/v1/responses"
    assert sent.json == {
        "model": upstream.model,
        "stream": True,
        "input": messages,
        "max_output_tokens": 99,
        "temperature": 0.5,
        "top_p": 0.9,
        "reasoning": {"effort": "low"},
    }


async def test_responses_prompt_becomes_one_user_message(upstream: FakeUpstream) -> None:
    async with OpenAIAdapter(make_config(upstream, api="responses")) as adapter:
        await collect(adapter, TaskRequest(task_id="r-4", prompt="Hello"))
    (sent,) = upstream.completion_requests()
    assert sent.json["input"] == [{"role": "user", "content": "Hello"}]
    assert "max_tokens" not in sent.json
    assert "stream_options" not in sent.json


@pytest.mark.parametrize("field", [{"stop": ["\n"]}, {"seed": 1}])
async def test_responses_refuses_stop_and_seed(upstream: FakeUpstream, field: Any) -> None:
    async with OpenAIAdapter(make_config(upstream, api="responses")) as adapter:
        with pytest.raises(ValueError, match="no stop or seed"):
            async with adapter.submit(TaskRequest(task_id="r-5", prompt="x", **field)):
                pass  # pragma: no cover
    assert upstream.completion_requests() == []


async def test_responses_error_event_mid_stream_ends_with_upstream_error(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    body = frames(
        ("response.created", {"response": {"status": "in_progress"}}),
        ("response.output_text.delta", {"delta": "one"}),
        ("response.output_text.delta", {"delta": " two"}),
    )
    error = sse(responses_event("error", 3, code="server_error", message="kaput"), event="error")
    # the pause lets the reader see the tokens (and send Started) before the error arrives
    upstream.script(Reply(steps=[Send(body), Sleep(1.0), Send(error)]))
    async with OpenAIAdapter(make_config(upstream, api="responses")) as adapter:
        events = await collect(adapter, TaskRequest(task_id="r-6", prompt="x"))
    assert [type(e) for e in events] == [Started, Token, Token, Metrics, End]
    end = events[-1]
    assert isinstance(end, End)
    assert (end.reason, end.tokens_out) == ("error", 2)
    assert end.error is not None
    assert end.error.kind is ErrorKind.UPSTREAM_ERROR
    assert "server_error" in end.error.message
    assert "kaput" in end.error.message
    assert len(upstream.completion_requests()) == 1  # never retried after Started


async def test_responses_rate_limit_as_first_event_is_retried_before_started(
    upstream: FakeUpstream,
) -> None:
    limited = frames(
        ("response.created", {"response": {"status": "in_progress"}}),
        (
            "response.failed",
            {"response": {"error": {"code": "rate_limit_exceeded", "message": "slow down"}}},
        ),
    )
    upstream.script(Reply(steps=[Send(limited)]))
    async with OpenAIAdapter(make_config(upstream, api="responses")) as adapter:
        events = await collect(adapter, TaskRequest(task_id="r-7", prompt="x"))
    started, end = events[0], events[-1]
    assert isinstance(started, Started)
    assert started.attempt == 2
    assert isinstance(end, End)
    assert end.reason == "stop"
    assert len(upstream.completion_requests()) == 2


async def test_responses_stream_cut_before_a_terminal_event_is_a_worker_reset(
    upstream: FakeUpstream,
) -> None:
    body = frames(("response.output_text.delta", {"delta": "half"}))
    upstream.script(Reply(steps=[Send(body)]))
    async with OpenAIAdapter(make_config(upstream, api="responses")) as adapter:
        events = await collect(adapter, TaskRequest(task_id="r-8", prompt="x"))
    end = events[-1]
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.WORKER_RESET
    assert text_of(events) == "half"


async def test_responses_tool_call_and_reasoning_end_to_end(upstream: FakeUpstream) -> None:
    call = ScriptedToolCall("get_weather", ['{"city"', ': "Paris"}'], call_id="call_9")
    upstream.script(
        Reply(steps=render_responses_stream(reasoning=["Think", "ing"], tool_calls=[call]))
    )
    async with OpenAIAdapter(make_config(upstream, api="responses")) as adapter:
        events = await collect(adapter, TaskRequest(task_id="r-9", prompt="weather?"))
    kinds = [type(e) for e in events]
    assert kinds == [
        Started,
        ReasoningDelta,
        ReasoningDelta,
        ToolCallDelta,
        ToolCallDelta,
        ToolCallDelta,
        Metrics,
        End,
    ]
    end = events[-1]
    assert isinstance(end, End)
    assert (end.reason, end.tokens_out) == ("tool_calls", 0)
