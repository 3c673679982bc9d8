"""Real servers' quirks, each fed byte for byte to the SSE decoder and the chat mapper (sans-IO).

The bytes under `tests/fixtures/litellm-1.108.7/` were captured from LiteLLM's proxy by
`just compat` (see `docs/compat.md`, where each quirk is described). Every stream is also fed
in several chunkings: the result may not depend on where the network cut the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from oai_adapter import End, ErrorKind, OpenAIAdapter, TaskRequest, Token
from oai_adapter._errors import error_from_status
from oai_adapter._mappers import ChatMapper
from oai_adapter.testing import FakeUpstream, Reply, Send, chat_chunk, sse

from .sansio import map_stream

FIXTURES = Path(__file__).parent / "fixtures" / "litellm-1.108.7"
LLAMA = Path(__file__).parent / "fixtures" / "llama-cpp-python-0.3.36"

#: What the test upstream behind LiteLLM streamed (`max_tokens: 8` of DEFAULT_TEXT).
BACKEND_TEXT = "Trio makes structured concurrency feel natural: every task"
#: LiteLLM's `mock_response` in `compat/litellm.yaml.in`.
MOCK_TEXT = "Hello from the mock! This reply is streamed by LiteLLM itself."

#: What the tiny GGUF model says (compat/make_tiny_gguf.py), with llama.cpp's leading space.
TINY_TEXT = " Trio makes structured concurrency feel natural: every task has a parent."

#: Chunk sizes each stream is fed in (None: the whole body as one read).
CHUNKINGS = [None, 1, 7, 64]


@dataclass
class Mapped:
    tokens: list[Token]
    mapper: ChatMapper

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)


def _raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _llama(name: str) -> bytes:
    return (LLAMA / name).read_bytes()


def _map(raw: bytes, chunk: int | None = None) -> Mapped:
    """What the reader does: feed reads to the decoder, events to the mapper, stop at `done`."""
    mapper = ChatMapper("t")
    reads = [raw] if chunk is None else [raw[i : i + chunk] for i in range(0, len(raw), chunk)]
    out = map_stream(mapper, reads)
    tokens = [e for e in out if isinstance(e, Token)]
    assert [t.index for t in tokens] == list(range(len(tokens)))
    return Mapped(tokens, mapper)


@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize(
    ("fixture", "text"),
    [
        ("chat-usage.sse", BACKEND_TEXT),
        ("chat-nousage.sse", BACKEND_TEXT),
        ("completions-usage.sse", BACKEND_TEXT),
        ("completions-nousage.sse", BACKEND_TEXT),
        ("mock-chat.sse", MOCK_TEXT),
        ("mock-completions.sse", MOCK_TEXT),
        ("../llama-cpp-python-0.3.36/chat-usage.sse", " ".join(TINY_TEXT.split(" ")[:9])),
        ("../llama-cpp-python-0.3.36/chat-stop.sse", TINY_TEXT),
        ("../llama-cpp-python-0.3.36/completions-usage.sse", " ".join(TINY_TEXT.split(" ")[:9])),
    ],
)
@pytest.mark.req("OC-ADAPT-OAI-6001")
def test_real_server_streams_give_the_same_text_for_any_chunking(
    fixture: str, text: str, chunk: int | None
) -> None:
    mapped = _map(_raw(fixture), chunk)
    assert mapped.text == text
    assert mapped.mapper.done  # `[DONE]` seen
    assert mapped.mapper.error is None


@pytest.mark.req("OC-ADAPT-OAI-6001")
def test_litellm_chat_role_only_first_delta_is_not_a_token() -> None:
    # {"delta":{"role":"assistant","content":""}} opens the stream.
    raw = _raw("chat-nousage.sse")
    assert b'"delta":{"role":"assistant","content":""}' in raw.split(b"\n\n")[0]
    mapped = _map(raw)
    assert mapped.tokens[0].text == "Trio"
    assert len(mapped.tokens) == 8


@pytest.mark.req("OC-ADAPT-OAI-6011")
def test_litellm_tokens_keep_their_leading_spaces() -> None:
    mapped = _map(_raw("chat-nousage.sse"))
    assert [t.text for t in mapped.tokens[:3]] == ["Trio", " makes", " structured"]


def test_litellm_chat_finish_chunk_has_an_empty_delta_and_no_content() -> None:
    mapped = _map(_raw("chat-nousage.sse"))
    assert mapped.mapper.finish == "length"
    assert mapped.mapper.prompt_tokens is None
    assert mapped.mapper.completion_tokens is None  # no include_usage: no usage at all


def test_litellm_chat_usage_comes_on_a_choice_with_an_empty_delta_after_the_finish() -> None:
    # {"choices":[{"index":0,"delta":{}}],"usage":{...}} — not the `choices: []` of OpenAI.
    raw = _raw("chat-usage.sse")
    assert b'"choices":[{"index":0,"delta":{}}],"usage"' in raw
    mapped = _map(raw)
    assert (mapped.mapper.prompt_tokens, mapped.mapper.completion_tokens) == (1, 8)
    assert mapped.mapper.finish == "length"


@pytest.mark.req("OC-ADAPT-OAI-6031")
def test_litellm_completions_all_zero_usage_on_every_chunk_is_a_placeholder() -> None:
    raw = _raw("completions-nousage.sse")
    assert raw.count(b'"usage":{"completion_tokens":0,"prompt_tokens":0') == 9
    mapped = _map(raw)
    assert mapped.mapper.prompt_tokens is None
    assert mapped.mapper.completion_tokens is None
    assert mapped.mapper.finish == "length"


def test_litellm_completions_finish_and_usage_come_on_choices_without_text() -> None:
    # {"choices":[{"finish_reason":"length","index":0}]} then {"choices":[{"index":0}],"usage":…}
    raw = _raw("completions-usage.sse")
    assert b'"choices":[{"finish_reason":"length","index":0}]' in raw
    mapped = _map(raw)
    assert (mapped.mapper.prompt_tokens, mapped.mapper.completion_tokens) == (1, 8)
    assert mapped.mapper.finish == "length"
    assert len(mapped.tokens) == 8


def test_litellm_mock_first_delta_carries_role_and_content_together() -> None:
    raw = _raw("mock-chat.sse")
    assert b'"delta":{"role":"assistant","content":"Hel"}' in raw.split(b"\n\n")[0]
    mapped = _map(raw)
    assert mapped.tokens[0].text == "Hel"  # not dropped as a "role chunk"
    assert mapped.tokens[1].text == "lo "  # cut every 3 characters, not on words
    assert (mapped.mapper.prompt_tokens, mapped.mapper.completion_tokens) == (8, 15)
    assert mapped.mapper.finish == "stop"


def test_litellm_error_event_as_the_first_event_of_a_200_stream_fails_the_task() -> None:
    # /v1/responses on a mock model: `200` + `data: {"error": {..., "code": "500"}}` + [DONE].
    mapped = _map(_raw("mock-responses.sse"))
    error = mapped.mapper.error
    assert error is not None
    assert error.kind is ErrorKind.UPSTREAM_ERROR
    assert not error.retryable
    assert error.message == "Error processing stream start"
    assert mapped.tokens == []


def test_missing_done_after_the_finish_is_a_normal_end() -> None:
    # transformers serve ends without `[DONE]` (FACTS.md): LiteLLM's bytes with it cut off.
    raw = _raw("chat-usage.sse")
    cut = raw[: raw.index(b"data: [DONE]")]
    mapped = _map(cut)
    assert not mapped.mapper.done
    assert mapped.mapper.finish == "length"
    assert mapped.mapper.eof_error() is None  # EOF after a finish is not a reset
    assert mapped.text == BACKEND_TEXT


def test_litellm_404_for_an_unsupported_route_is_upstream_not_found() -> None:
    # LiteLLM forwards the backend's 404 with its own envelope and a *string* code "404".
    error = error_from_status(404, _raw("responses-404.json"))
    assert error.kind is ErrorKind.UPSTREAM_NOT_FOUND
    assert error.message.startswith("litellm.NotFoundError")


@pytest.mark.req("OC-ADAPT-OAI-6030")
def test_litellm_unknown_model_is_a_400_invalid_params() -> None:
    error = error_from_status(400, _raw("unknown-model-400.json"))
    assert error.kind is ErrorKind.INVALID_PARAMS
    assert "Invalid model name passed in model=no-such-model" in error.message


def test_litellm_string_status_code_in_an_error_event_keeps_its_status() -> None:
    # LiteLLM writes the HTTP status as a string ("500", "404", "400" in every body captured).
    mapped = _map(_raw("mock-responses.sse"))
    assert mapped.mapper.error is not None
    assert mapped.mapper.error.status == 500


def test_string_429_as_the_first_event_is_an_admission_reject_worth_retrying() -> None:
    raw = b'data: {"error": {"message": "slow down", "type": "throttled", "code": "429"}}\n\n'
    mapped = _map(raw)
    error = mapped.mapper.error
    assert error is not None
    assert error.kind is ErrorKind.ADMISSION_REJECT
    assert error.retryable
    assert error.status == 429


# --- llama-cpp-python[server] 0.3.36 (llama.cpp's engine, the tiny GGUF model) ------------------


@pytest.mark.req("OC-ADAPT-OAI-6001")
def test_llama_cpp_python_role_only_first_delta_has_no_content_key() -> None:
    raw = _llama("chat-stop.sse")
    assert b'"delta": {"role": "assistant"}, ' in raw.split(b"\n\n")[0]
    mapped = _map(raw)
    assert mapped.tokens[0].text == " Trio"


def test_llama_cpp_python_first_token_keeps_its_leading_space() -> None:
    # SentencePiece's "\u2581Trio" is detokenized as " Trio": the answer starts with a space.
    mapped = _map(_llama("chat-stop.sse"))
    assert mapped.text == TINY_TEXT
    assert mapped.mapper.finish == "stop"


def test_llama_cpp_python_sends_no_usage_even_when_asked() -> None:
    raw = _llama("chat-usage.sse")
    assert b'"usage"' not in raw
    mapped = _map(raw)
    assert mapped.mapper.prompt_tokens is None
    assert mapped.mapper.completion_tokens is None
    assert mapped.mapper.finish == "length"


def test_llama_cpp_python_completions_finish_chunk_has_empty_text() -> None:
    raw = _llama("completions-usage.sse")
    assert b'"text": "", "index": 0, "logprobs": null, "finish_reason": "length"' in raw
    mapped = _map(raw)
    assert len(mapped.tokens) == 8  # the empty text is no Token
    assert mapped.mapper.finish == "length"


def test_llama_cpp_python_fastapi_404_detail_body_is_upstream_not_found() -> None:
    error = error_from_status(404, _llama("not-found-404.json"))
    assert error.kind is ErrorKind.UPSTREAM_NOT_FOUND
    assert error.message == "Not Found"


@pytest.mark.req("OC-ADAPT-OAI-6011")
def test_llama_cpp_python_done_without_a_finish_reason_is_a_cut_short_stream() -> None:
    # With interrupt_requests (its default), a request that arrives while another one runs
    # makes the server end the running stream with `[DONE]` and no finish_reason.
    raw = _llama("interrupted-by-next-request.sse")
    assert b'finish_reason": null' in raw
    assert b"data: [DONE]" in raw
    mapped = _map(raw)
    assert mapped.tokens == []
    error = mapped.mapper.error
    assert error is not None
    assert error.kind is ErrorKind.WORKER_RESET
    assert "[DONE]" in error.message


@pytest.mark.req("OC-ADAPT-OAI-6030")
async def test_done_before_a_finish_reason_ends_the_task_with_an_error_not_a_stop(
    upstream: FakeUpstream, adapter: OpenAIAdapter
) -> None:
    upstream.script(
        Reply(
            steps=[
                Send(sse(chat_chunk("", role=True))),
                Send(sse(chat_chunk("Hello"))),
                Send(sse(chat_chunk(" there"))),
                Send(b"data: [DONE]\n\n"),
            ]
        )
    )
    with trio.fail_after(20):
        async with adapter.submit(TaskRequest(task_id="t", prompt="Hi")) as events:
            seen = [event async for event in events]
    assert [type(e).__name__ for e in seen] == ["Started", "Token", "Token", "Metrics", "End"]
    end = seen[-1]
    assert isinstance(end, End)
    assert end.reason == "error"
    assert end.tokens_out == 2
    assert end.error is not None
    assert end.error.kind is ErrorKind.WORKER_RESET


def test_litellm_wrong_key_without_a_database_is_a_400_not_an_auth_error() -> None:
    # A refused key looks like a bad request: the adapter can only report what was said.
    error = error_from_status(400, _raw("wrong-key-400.json"))
    assert error.kind is ErrorKind.INVALID_PARAMS
    assert not error.retryable
    assert error.message == "No connected db."


def test_litellm_missing_key_is_a_bare_500_in_plain_text() -> None:
    error = error_from_status(500, _raw("no-key-500.txt"))
    assert error.kind is ErrorKind.UPSTREAM_ERROR
    assert error.message == "Internal Server Error"
