"""Tool calls and reasoning, for chat and responses: `ToolCallDelta` and `ReasoningDelta` come
in upstream order among the Tokens, argument fragments join to the call's JSON, text stays
`Token` (its index and `End.tokens_out` count Tokens only), and `finish_reason="tool_calls"`
(or a responses answer that made a call) ends with `End(reason="tool_calls")`."""

from __future__ import annotations

import gc
import json
import tracemalloc
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
    Event,
    Metrics,
    OpenAIAdapter,
    ReasoningDelta,
    Started,
    TaskRequest,
    Timeouts,
    Token,
    ToolCallDelta,
)
from oai_adapter._mappers import ChatMapper, Mapper, ProtocolError
from oai_adapter._responses import ResponsesMapper
from oai_adapter._tools import MAX_CALLS
from oai_adapter.testing import (
    FakeUpstream,
    Reply,
    ScriptedToolCall,
    Sleep,
    Step,
    chat_chunk,
    render_chat_deltas,
    render_responses_stream,
    responses_event,
    sse,
)

from .conftest import IO_DEADLINE, make_config
from .helpers import collect
from .sansio import body_of, map_stream, split_at

# --- helpers ---------------------------------------------------------------------------------


def arguments_by_call(events: Iterable[Event]) -> dict[int, str]:
    calls: dict[int, str] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            calls[e.index] = calls.get(e.index, "") + e.arguments
    return calls


def chat_delta(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = chat_chunk(finish=finish)
    chunk["choices"][0]["delta"] = delta
    return sse(chunk)


def with_pauses(steps: list[Step], seconds: float) -> list[Step]:
    out: list[Step] = []
    for step in steps:
        out += [step, Sleep(seconds)]
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


# --- argument deltas join to valid JSON, whatever the splits ---------------------------------


@settings(max_examples=60, deadline=None)
@given(
    api=st.sampled_from(["chat", "responses"]),
    args=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    text_cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=8),
    byte_cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
@pytest.mark.req("OC-ADAPT-OAI-6001")
def test_tool_call_argument_deltas_join_to_valid_json_for_any_split(
    api: str, args: dict[str, Any], text_cuts: list[int], byte_cuts: list[int]
) -> None:
    encoded = json.dumps(args, ensure_ascii=False)
    call = ScriptedToolCall("lookup", split_at(encoded, text_cuts), call_id="call_1")
    mapper: Mapper
    if api == "chat":
        body = body_of(render_chat_deltas(tool_calls=[call]))
        mapper = ChatMapper("t")
    else:
        body = body_of(render_responses_stream(tool_calls=[call]))
        mapper = ResponsesMapper("t")
    events = map_stream(mapper, split_at(body, byte_cuts))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas
    assert {(d.index, d.call_id, d.name) for d in deltas} == {(0, "call_1", "lookup")}
    assert json.loads(arguments_by_call(events)[0]) == args
    assert mapper.finish == "tool_calls"
    assert not [e for e in events if isinstance(e, Token)]


# --- chat ------------------------------------------------------------------------------------


def test_chat_parallel_calls_keep_their_index_and_repeat_id_and_name() -> None:
    body = b"".join(
        [
            chat_delta({"role": "assistant", "content": None}),
            chat_delta(
                {
                    "tool_calls": [
                        {"index": 0, "id": "c0", "function": {"name": "a", "arguments": ""}}
                    ]
                }
            ),
            chat_delta(
                {
                    "tool_calls": [
                        {"index": 1, "id": "c1", "function": {"name": "b", "arguments": ""}}
                    ]
                }
            ),
            chat_delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
            chat_delta({"tool_calls": [{"index": 1, "function": {"arguments": '{"y": 2}'}}]}),
            chat_delta({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
            chat_delta({}, finish="tool_calls"),
            b"data: [DONE]\n\n",
        ]
    )
    mapper = ChatMapper("t")
    events = map_stream(mapper, [body])
    assert events == [
        ToolCallDelta(task_id="t", index=0, call_id="c0", name="a", arguments=""),
        ToolCallDelta(task_id="t", index=1, call_id="c1", name="b", arguments=""),
        ToolCallDelta(task_id="t", index=0, call_id="c0", name="a", arguments='{"x":'),
        ToolCallDelta(task_id="t", index=1, call_id="c1", name="b", arguments='{"y": 2}'),
        ToolCallDelta(task_id="t", index=0, call_id="c0", name="a", arguments=" 1}"),
    ]
    assert {i: json.loads(a) for i, a in arguments_by_call(events).items()} == {
        0: {"x": 1},
        1: {"y": 2},
    }
    assert mapper.finish == "tool_calls"


def test_chat_calls_sent_all_under_index_zero_with_new_ids_get_their_own_index() -> None:
    # Gemini's OpenAI-compatible endpoint sends parallel calls this way
    body = b"".join(
        chat_delta(
            {"tool_calls": [{"index": 0, "id": cid, "function": {"name": "f", "arguments": arg}}]}
        )
        for cid, arg in (("c0", '{"n": 0}'), ("c1", '{"n": 1}'))
    ) + chat_delta({}, finish="tool_calls")
    events = map_stream(ChatMapper("t"), [body])
    assert [(e.index, e.call_id) for e in events if isinstance(e, ToolCallDelta)] == [
        (0, "c0"),
        (1, "c1"),
    ]


def test_chat_legacy_function_call_delta_is_a_tool_call() -> None:
    body = (
        chat_delta({"function_call": {"name": "f", "arguments": ""}})
        + chat_delta({"function_call": {"arguments": '{"a": 1}'}})
        + chat_delta({}, finish="function_call")
    )
    mapper = ChatMapper("t")
    events = map_stream(mapper, [body])
    assert events == [
        ToolCallDelta(task_id="t", index=0, name="f", arguments=""),
        ToolCallDelta(task_id="t", index=0, name="f", arguments='{"a": 1}'),
    ]
    assert mapper.finish == "tool_calls"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest.mark.req("OC-ADAPT-OAI-6011")
def test_chat_reasoning_then_text_keeps_its_order_and_token_indexes(field: str) -> None:
    steps = render_chat_deltas(["The", " answer"], reasoning=["Let me", " think"], usage=(3, 4))
    body = body_of(steps)
    if field == "reasoning":
        body = body.replace(b'"reasoning_content"', b'"reasoning"')
    mapper = ChatMapper("t")
    events = map_stream(mapper, [body])
    assert events == [
        ReasoningDelta(task_id="t", text="Let me"),
        ReasoningDelta(task_id="t", text=" think"),
        Token(task_id="t", index=0, text="The"),
        Token(task_id="t", index=1, text=" answer"),
    ]
    assert mapper.next_index == 2  # End.tokens_out counts Tokens only
    assert mapper.finish == "stop"


def test_chat_reasoning_and_text_in_one_delta_put_reasoning_first() -> None:
    body = chat_delta({"reasoning_content": "hm", "content": "ok"}, finish="stop")
    assert map_stream(ChatMapper("t"), [body]) == [
        ReasoningDelta(task_id="t", text="hm"),
        Token(task_id="t", index=0, text="ok"),
    ]


def test_chat_reasoning_object_is_not_text() -> None:
    body = chat_delta({"reasoning": {"effort": "low"}, "content": "ok"}, finish="stop")
    assert map_stream(ChatMapper("t"), [body]) == [Token(task_id="t", index=0, text="ok")]


# --- responses -------------------------------------------------------------------------------


def frames(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(
        sse(responses_event(kind, i, **fields), event=kind)
        for i, (kind, fields) in enumerate(events)
    )


def test_responses_arguments_done_fills_in_what_the_deltas_missed() -> None:
    item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f"}
    body = frames(
        ("response.output_item.added", {"output_index": 0, "item": item | {"arguments": ""}}),
        ("response.function_call_arguments.delta", {"item_id": "fc_1", "delta": '{"a"'}),
        ("response.function_call_arguments.done", {"item_id": "fc_1", "arguments": '{"a": 1}'}),
        ("response.function_call_arguments.done", {"item_id": "fc_2", "arguments": "{}"}),
        ("response.completed", {"response": {"status": "completed"}}),
    )
    mapper = ResponsesMapper("t")
    events = map_stream(mapper, [body])
    assert arguments_by_call(events) == {0: '{"a": 1}', 1: "{}"}
    assert [e.call_id for e in events if isinstance(e, ToolCallDelta)] == [
        "call_1",
        "call_1",
        "call_1",
        None,  # fc_2 was never announced
    ]
    assert mapper.finish == "tool_calls"


def test_responses_reasoning_summary_is_a_reasoning_delta_marked_summary() -> None:
    body = frames(
        ("response.reasoning_summary_text.delta", {"item_id": "rs", "delta": "Planned."}),
        ("response.output_text.delta", {"item_id": "m", "delta": "Done"}),
        ("response.completed", {"response": {}}),
    )
    assert map_stream(ResponsesMapper("t"), [body]) == [
        ReasoningDelta(task_id="t", text="Planned.", summary=True),
        Token(task_id="t", index=0, text="Done"),
    ]


def test_responses_reasoning_then_text_keeps_its_order() -> None:
    body = body_of(render_responses_stream(["A", "B"], reasoning=["x", "y"], shape="llama.cpp"))
    mapper = ResponsesMapper("t")
    assert map_stream(mapper, [body]) == [
        ReasoningDelta(task_id="t", text="x"),
        ReasoningDelta(task_id="t", text="y"),
        Token(task_id="t", index=0, text="A"),
        Token(task_id="t", index=1, text="B"),
    ]
    assert mapper.finish == "stop"


def test_new_events_encode_with_their_tags_and_decode_as_events() -> None:
    events: list[Event] = [
        ToolCallDelta(task_id="t", index=0, call_id="c", name="f", arguments="{}"),
        ReasoningDelta(task_id="t", text="hm"),
    ]
    raw = msgspec.json.encode(events)
    assert b'"type":"tool_call_delta"' in raw
    assert b'"type":"reasoning_delta"' in raw
    assert msgspec.json.decode(raw, type=list[Event]) == events


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.req("OC-ADAPT-OAI-6001")
async def test_reasoning_then_text_then_call_end_to_end(upstream: FakeUpstream, api: Any) -> None:
    call = ScriptedToolCall("get_weather", ['{"city": ', '"Paris"}'], call_id="call_7")
    render = render_chat_deltas if api == "chat" else render_responses_stream
    upstream.script(
        Reply(steps=render(["Checking", "."], reasoning=["I should", " look"], tool_calls=[call]))
    )
    async with OpenAIAdapter(make_config(upstream, api=api)) as adapter:
        events = await collect(adapter, TaskRequest(task_id="tc-1", prompt="weather in Paris?"))
    assert isinstance(events[0], Started)
    body = events[1:-2]
    assert [type(e) for e in body] == [ReasoningDelta] * 2 + [Token] * 2 + [ToolCallDelta] * 3
    assert [e.text for e in body if isinstance(e, ReasoningDelta)] == ["I should", " look"]
    assert [(e.index, e.text) for e in body if isinstance(e, Token)] == [(0, "Checking"), (1, ".")]
    assert json.loads(arguments_by_call(body)[0]) == {"city": "Paris"}
    assert {(e.call_id, e.name) for e in body if isinstance(e, ToolCallDelta)} == {
        ("call_7", "get_weather")
    }
    metrics, end = events[-2], events[-1]
    assert isinstance(metrics, Metrics)
    assert metrics.tokens_out == 2
    assert isinstance(end, End)
    assert (end.reason, end.tokens_out, end.error) == ("tool_calls", 2, None)


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_long_reasoning_before_the_first_token_is_no_first_token_timeout(
    upstream: FakeUpstream, loopback_clock: MockClock, api: Any
) -> None:
    render = render_chat_deltas if api == "chat" else render_responses_stream
    steps = with_pauses(render(["answer"], reasoning=["step"] * 6), 1.0)
    upstream.script(Reply(steps=steps))
    # the first reasoning delta comes within 4.5 s, the first Token only after 7 s
    timeouts = Timeouts(first_token=4.5, idle=5.0)
    async with OpenAIAdapter(make_config(upstream, api=api, timeouts=timeouts)) as adapter:
        events = await collect(adapter, TaskRequest(task_id="tc-2", prompt="think hard"))
    end = events[-1]
    assert isinstance(end, End)
    assert (end.reason, end.error) == ("stop", None)
    assert [e.text for e in events if isinstance(e, Token)] == ["answer"]


async def test_tool_call_only_answer_slower_than_first_token_completes(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    call = ScriptedToolCall("f", ["{", '"k"', ": ", "1", "}"], call_id="c")
    upstream.script(Reply(steps=with_pauses(render_chat_deltas(tool_calls=[call]), 1.0)))
    timeouts = Timeouts(first_token=3.0, idle=5.0)
    async with OpenAIAdapter(make_config(upstream, timeouts=timeouts)) as adapter:
        events = await collect(adapter, TaskRequest(task_id="tc-3", prompt="call it"))
    end = events[-1]
    assert isinstance(end, End)
    assert (end.reason, end.tokens_out, end.error) == ("tool_calls", 0, None)
    assert json.loads(arguments_by_call(events)[0]) == {"k": 1}


async def test_cancel_during_reasoning_ends_cancelled_with_no_tokens(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(Reply(steps=with_pauses(render_chat_deltas(["x"], reasoning=["r"] * 50), 1.0)))
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        seen: list[Event] = []
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="tc-4", prompt="p")) as events:
                async for ev in events:
                    seen.append(ev)
                    if isinstance(ev, ReasoningDelta):
                        assert adapter.cancel("tc-4")
    end = seen[-1]
    assert isinstance(end, End)
    assert (end.reason, end.tokens_out) == ("cancelled", 0)
    assert sum(isinstance(e, ReasoningDelta) for e in seen) == 1


# --- memory: fragments are not kept (issue 14) -----------------------------------------------


def _chat_fragment(piece: str) -> bytes:
    call = {"index": 0, "function": {"arguments": piece}}
    return msgspec.json.encode({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})


def _responses_fragment(piece: str) -> bytes:
    return msgspec.json.encode(
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": piece}
    )


def _growth_while_the_consumer_keeps_up(mapper: Mapper, data: bytes, fragments: int) -> int:
    """Bytes the mapper still holds after `fragments` more one-character fragments, each
    delivered (and dropped) as it comes."""
    out: list[Event] = []
    mapper.feed("", data, out)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(fragments):
            mapper.feed("", data, out)
            out.clear()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("mapper", "data"),
    [(ChatMapper("t"), _chat_fragment("x")), (ResponsesMapper("t"), _responses_fragment("x"))],
    ids=["chat", "responses"],
)
def test_tool_call_argument_fragments_are_not_kept_for_the_tasks_life(
    mapper: Mapper, data: bytes
) -> None:
    # 10,000 fragments held as a list cost ~640 KB; the bound is what a few objects cost.
    assert _growth_while_the_consumer_keeps_up(mapper, data, 10_000) < 16_384


def test_arguments_done_after_many_fragments_still_fills_in_only_the_missing_tail() -> None:
    mapper = ResponsesMapper("t")
    out: list[Event] = []
    for piece in ['{"a"', ": ", "[1, 2"]:
        mapper.feed("", _responses_fragment(piece), out)
    done = {"type": "response.function_call_arguments.done", "item_id": "fc_1"}
    mapper.feed("", msgspec.json.encode(done | {"arguments": '{"a": [1, 2, 3]}'}), out)
    mapper.feed("", msgspec.json.encode(done | {"arguments": '{"b": [1, 2, 3, 4, 5]}'}), out)
    assert arguments_by_call(out) == {0: '{"a": [1, 2, 3]}'}


def _chat_call(call_id: str) -> bytes:
    call = {"index": 0, "id": call_id, "function": {"name": "f", "arguments": "{}"}}
    return msgspec.json.encode({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})


def _responses_call(item_id: str) -> bytes:
    return msgspec.json.encode(
        {"type": "response.function_call_arguments.delta", "item_id": item_id, "delta": "{}"}
    )


@pytest.mark.parametrize(
    ("mapper", "make"),
    [(ChatMapper("t"), _chat_call), (ResponsesMapper("t"), _responses_call)],
    ids=["chat", "responses"],
)
def test_an_upstream_inventing_call_after_call_ends_the_stream_instead_of_growing_the_table(
    mapper: Mapper, make: Any
) -> None:
    """Each distinct call keeps a table entry for the task's life, so their number is capped."""
    out: list[Event] = []
    for i in range(MAX_CALLS):
        mapper.feed("", make(f"call_{i}"), out)
    assert len({ev.index for ev in out if isinstance(ev, ToolCallDelta)}) == MAX_CALLS
    with pytest.raises(ProtocolError, match=f"more than {MAX_CALLS} tool calls"):
        mapper.feed("", make("one_too_many"), out)
