"""Chat and completions mappers, sans-IO: SSE bytes in, Tokens and end state out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oai_adapter import ErrorKind, Token
from oai_adapter._events import Event
from oai_adapter._mappers import ChatMapper, ProtocolError, finish_to_reason
from oai_adapter.testing import chat_chunk, completion_chunk, render_stream, sse

from .sansio import body_of, map_stream, split_at


def run(body: bytes, cuts: list[int] | None = None) -> tuple[ChatMapper, list[Event]]:
    mapper = ChatMapper("t")
    return mapper, map_stream(mapper, split_at(body, cuts or []))


def texts(out: list[Event]) -> list[str]:
    return [e.text for e in out if isinstance(e, Token)]


@pytest.mark.req("OC-ADAPT-OAI-6001")
def test_role_only_first_delta_and_empty_content_yield_no_token() -> None:
    body = sse(chat_chunk("", role=True)) + sse(chat_chunk(None, role=True)) + sse(chat_chunk("Hi"))
    _, out = run(body)
    assert texts(out) == ["Hi"]


def test_tokens_are_indexed_consecutively_from_zero() -> None:
    mapper, out = run(body_of(render_stream("chat", ["a", " b", " c"])))
    assert [(e.index, e.text) for e in out if isinstance(e, Token)] == [
        (0, "a"),
        (1, " b"),
        (2, " c"),
    ]
    assert mapper.next_index == 3
    assert mapper.done
    assert mapper.finish == "stop"


def test_completions_text_chunks_map_to_tokens() -> None:
    mapper, out = run(
        body_of(render_stream("completions", ["x", "y"], finish="length", usage=(3, 2)))
    )
    assert texts(out) == ["x", "y"]
    assert mapper.finish == "length"
    assert (mapper.prompt_tokens, mapper.completion_tokens) == (3, 2)


def test_usage_on_an_empty_choices_chunk_is_read() -> None:
    mapper, _ = run(body_of(render_stream("chat", ["a"], usage=(7, 1))))
    assert (mapper.prompt_tokens, mapper.completion_tokens) == (7, 1)


def test_usage_on_a_delta_without_content_is_read() -> None:
    chunk = {
        "choices": [{"index": 0, "delta": {}, "finish_reason": None}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 9},
    }
    mapper, out = run(sse(chat_chunk("a", finish="stop")) + sse(chunk) + b"data: [DONE]\n\n")
    assert (mapper.prompt_tokens, mapper.completion_tokens) == (4, 9)
    assert texts(out) == ["a"]


def test_all_zero_usage_is_a_placeholder_not_a_count() -> None:
    chunk = completion_chunk("a", usage=(0, 0))
    mapper, _ = run(sse(chunk) + sse(completion_chunk("", finish="stop", usage=(0, 0))))
    assert mapper.prompt_tokens is None
    assert mapper.completion_tokens is None


def test_missing_done_after_finish_is_a_normal_end() -> None:
    mapper, _ = run(body_of(render_stream("chat", ["a"], done=False)))
    assert not mapper.done
    assert mapper.eof_error() is None


def test_eof_before_finish_is_a_worker_reset() -> None:
    mapper, _ = run(sse(chat_chunk("a")))
    error = mapper.eof_error()
    assert error is not None
    assert error.kind is ErrorKind.WORKER_RESET


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("eos", "stop"),
        ("something_new", "stop"),
    ],
)
def test_finish_reasons_map_to_end_reasons(finish: str, reason: str) -> None:
    assert finish_to_reason(finish) == reason
    mapper, _ = run(sse(chat_chunk(None, finish=finish)))
    assert mapper.finish == reason


def test_error_as_first_event_stands_for_its_status() -> None:
    body = sse(
        {
            "error": {
                "message": "slow down",
                "type": "rate_limit_error",
                "code": "rate_limit_exceeded",
            }
        }
    )
    mapper, out = run(body)
    assert out == []
    assert mapper.error is not None
    assert mapper.error.kind is ErrorKind.ADMISSION_REJECT
    assert mapper.error.retryable


def test_error_after_tokens_is_an_upstream_error() -> None:
    body = sse(chat_chunk("a")) + sse({"error": {"message": "boom", "type": "rate_limit_error"}})
    mapper, out = run(body)
    assert texts(out) == ["a"]
    assert mapper.error is not None
    assert mapper.error.kind is ErrorKind.UPSTREAM_ERROR
    assert not mapper.error.retryable
    assert mapper.error.message == "boom"


def test_malformed_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        run(b"data: {not json\n\n")


def test_utf16_surrogate_pair_split_across_chunks_is_joined() -> None:
    # mock-llm cuts on UTF-16 units: "\ud83d" then "\ude00" (FACTS.md).
    body = b'data: {"choices":[{"index":0,"delta":{"content":"a\\ud83d"}}]}\n\n'
    body += b'data: {"choices":[{"index":0,"delta":{"content":"\\ude00b"}}]}\n\n'
    _, out = run(body)
    assert "".join(texts(out)) == "a😀b"


def test_choices_other_than_zero_are_ignored() -> None:
    chunk = {
        "choices": [
            {"index": 1, "delta": {"content": "other"}},
            {"index": 0, "delta": {"content": "mine"}},
        ]
    }
    _, out = run(sse(chunk))
    assert texts(out) == ["mine"]


def test_unknown_fields_are_skipped() -> None:
    chunk = chat_chunk("a") | {"system_fingerprint": "fp", "x_new": {"deep": [1, 2]}}
    _, out = run(sse(chunk))
    assert texts(out) == ["a"]


TOKENS = st.lists(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8
    ),
    max_size=20,
)


@given(
    tokens=TOKENS,
    cuts=st.lists(st.integers(min_value=0, max_value=100_000), max_size=30),
    api=st.sampled_from(["chat", "completions"]),
)
@pytest.mark.req("OC-ADAPT-OAI-6001", "OC-ADAPT-OAI-6011")
def test_any_byte_split_gives_the_same_tokens(tokens: list[str], cuts: list[int], api: str) -> None:
    body = body_of(render_stream(api, tokens, usage=(1, len(tokens))))  # type: ignore[arg-type]
    mapper, out = run(body, cuts)
    assert texts(out) == tokens
    assert "".join(texts(out)) == "".join(tokens)
    assert [e.index for e in out if isinstance(e, Token)] == list(range(len(tokens)))
    assert mapper.done
    assert mapper.completion_tokens == len(tokens)
