"""Per-API mappers: SSE events in, adapter events out. Sans-IO (no trio, no httpx2).

A mapper sees the stream's `(event_name, data)` pairs in order and appends `Token`s (and
`ReasoningDelta`s, `ToolCallDelta`s) to the caller's list; what ends the stream (a finish
reason, `[DONE]`, a terminal event), the usage counts and an in-stream error are left on the
mapper for the adapter to read. It never raises
for anything the upstream sends except bytes that are not the JSON it expects (`ProtocolError`,
also for JSON nested deeper than the decoders recurse: msgspec raises `RecursionError` there).

Wire types are view Structs naming only the fields read, every field defaulted, unknown fields
skipped; one module-level `Decoder` per type, decoding straight from `bytes` (msgspec's
fastest path, ≈ 0.7 µs a chunk, FACTS.md).

Quirks handled here (FACTS.md, "Streams"): a role-only first delta (`content` null or empty)
is no Token; usage comes on a `choices: []` chunk, on a `delta: {}` chunk or on the finish
chunk; an all-zero usage is a placeholder (LiteLLM legacy completions), not a count; a count
that is not an int is converted when integral (`3.0`) and ignored otherwise (`usage_count`); `[DONE]`
may be missing after the finish, and a `[DONE]` before any finish reason means the server cut
the generation short (llama-cpp-python does, when another request arrives): a `WORKER_RESET`,
not a stop; a UTF-16 surrogate pair split across two chunks (mock-llm) is joined instead of
failing the stream. Reasoning comes as `delta.reasoning_content` (llama.cpp, vLLM, DeepSeek) or
`delta.reasoning` (newer vLLM, OpenRouter); tool calls as `delta.tool_calls[]` (or the
deprecated `delta.function_call`), see `_tools.py`. Within one delta the order is reasoning,
text, tool calls. The Responses mapper is in `_responses.py`.
"""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec

from ._errors import (
    ErrorBody,
    ErrorKind,
    ProtocolError,
    WorkerError,
    error_from_event,
    make_error,
)
from ._events import EndReason, Event, ReasoningDelta, Token
from ._tools import ToolCalls

__all__ = [
    "ChatMapper",
    "Mapper",
    "ProtocolError",
    "finish_to_reason",
    "malformed",
    "nested_too_deeply",
    "usage_count",
]


# --- wire views ------------------------------------------------------------------------------


class _Function(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct, gc=False):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | dict[str, Any] | None = None  # OpenRouter may send an object here
    tool_calls: list[_ToolCall] | None = None
    function_call: _Function | None = None  # deprecated single-call form


class _Choice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None  # chat
    text: str | None = None  # legacy completions
    finish_reason: str | None = None


class _Usage(msgspec.Struct, gc=False):
    # any JSON value: a count that is not an int (`3.0`, `"3"`) is read by `usage_count`,
    # never a reason to fail a finished stream
    prompt_tokens: Any = None
    completion_tokens: Any = None


class _Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: ErrorBody | str | None = None


_chunk_decoder: Final = msgspec.json.Decoder(_Chunk)

_DONE: Final = b"[DONE]"

_FINISH: Final[dict[str, EndReason]] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "max_output_tokens": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
}


def finish_to_reason(finish: str) -> EndReason:
    """An upstream `finish_reason` as an `End.reason` (an unknown one is a normal stop)."""
    return _FINISH.get(finish.lower(), "stop")


#: The largest count read from a float: 2**53, the last integer every smaller float holds exactly.
_MAX_COUNT: Final = 2**53


def usage_count(value: object) -> int | None:
    """An upstream's token count as an int: integral numbers (`3`, `3.0`) in `0..2**53` are
    kept; anything else (`3.5`, negative, huge, NaN, a string, a bool) is `None` — not given."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_COUNT:
        return value
    return None


class Mapper:
    """What every mapper leaves for the adapter to read."""

    __slots__ = (
        "_high_surrogate",
        "_tools",
        "completion_tokens",
        "done",
        "error",
        "events_seen",
        "finish",
        "max_tokens",
        "next_index",
        "prompt_tokens",
        "task_id",
    )

    def __init__(self, task_id: str, *, max_tokens: int | None = None) -> None:
        self.task_id = task_id
        self.max_tokens = max_tokens  # the request's limit, for upstreams that don't say "length"
        self.next_index = 0  # index of the next Token
        self.events_seen = 0  # SSE events mapped so far
        self.finish: EndReason | None = None  # how the upstream said it finished
        self.done = False  # nothing more will come that matters: stop reading
        self.error: WorkerError | None = None  # an error event (`done` is set too)
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self._high_surrogate = ""  # a UTF-16 high half held back until its low half comes
        self._tools: ToolCalls | None = None  # made at the first tool-call delta

    def feed(self, name: str, data: bytes, out: list[Event]) -> None:  # pragma: no cover
        raise NotImplementedError

    def eof_error(self) -> WorkerError | None:
        """At end of stream: `None` for a normal end, else why the stream was cut short."""
        if self.done or self.finish is not None:
            return None
        return make_error(
            ErrorKind.WORKER_RESET, "the upstream closed the stream before it finished"
        )

    def _tool_calls(self) -> ToolCalls:
        """The task's tool-call bookkeeping, made on first use."""
        tools = self._tools
        if tools is None:
            tools = self._tools = ToolCalls(self.task_id)
        return tools

    def _join_surrogates(self, text: str) -> str:
        """`text` with a UTF-16 surrogate pair split across two deltas joined (the high half
        is held back until the low half arrives; a lone half becomes U+FFFD)."""
        text = self._high_surrogate + text
        self._high_surrogate = ""
        if "\ud800" <= text[-1] <= "\udbff":
            self._high_surrogate = text[-1]
            text = text[:-1]
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class ChatMapper(Mapper):
    """Chat Completions (`choices[].delta.content`) and legacy Completions (`choices[].text`)."""

    __slots__ = ()

    def feed(self, name: str, data: bytes, out: list[Event]) -> None:
        self.events_seen += 1
        if data[:1] == b"[" and data.strip() == _DONE:
            self.done = True
            if self.finish is None:  # llama-cpp-python cuts a stream short this way
                self.error = make_error(
                    ErrorKind.WORKER_RESET,
                    "the upstream sent [DONE] before a finish reason (generation cut short)",
                )
            return
        try:
            chunk = _chunk_decoder.decode(data)
            lenient = False
        except msgspec.DecodeError:
            chunk = _decode_lenient(data)
            lenient = True
        except RecursionError:
            raise nested_too_deeply(data) from None
        if chunk.error is not None or name == "error":
            body = chunk.error if isinstance(chunk.error, ErrorBody) else None
            said = chunk.error if isinstance(chunk.error, str) else ""
            self.error = error_from_event(body, first=self.events_seen == 1, fallback_message=said)
            self.done = True
            return
        if chunk.choices:
            for choice in chunk.choices:
                if choice.index != 0:
                    continue  # n > 1 is not supported: choice 0 is the answer
                delta = choice.delta
                if delta is not None:
                    reasoning = delta.reasoning_content or delta.reasoning
                    if reasoning and isinstance(reasoning, str):
                        out.append(ReasoningDelta(task_id=self.task_id, text=reasoning))
                text: str | None = delta.content if delta is not None else choice.text
                if text:
                    if lenient or self._high_surrogate:
                        text = self._join_surrogates(text)
                    if text:
                        out.append(Token(task_id=self.task_id, index=self.next_index, text=text))
                        self.next_index += 1
                if delta is not None and (delta.tool_calls or delta.function_call):
                    self._tool_deltas(delta, out)
                if choice.finish_reason:
                    self.finish = finish_to_reason(choice.finish_reason)
        usage = chunk.usage
        if usage is not None:
            prompt = usage_count(usage.prompt_tokens)
            completion = usage_count(usage.completion_tokens)
            if prompt or completion:  # all zero: a placeholder (LiteLLM legacy completions)
                self.prompt_tokens = prompt
                self.completion_tokens = completion

    def _tool_deltas(self, delta: _Delta, out: list[Event]) -> None:
        tools = self._tool_calls()
        for call in delta.tool_calls or ():
            fn = call.function
            tools.delta(
                call.index,
                out,
                call_id=call.id,
                name=fn.name if fn is not None else None,
                arguments=fn.arguments if fn is not None else None,
            )
        if (fn := delta.function_call) is not None:
            tools.delta("function_call", out, name=fn.name, arguments=fn.arguments)


def _decode_lenient(data: bytes) -> _Chunk:
    """The chunk, decoded by the slower `json` module that accepts lone UTF-16 surrogates.

    msgspec rejects `"\\ud83d"` on its own; a server that cuts deltas on UTF-16 units sends
    exactly that, and the other half in the next chunk (FACTS.md).
    """
    try:
        return msgspec.convert(json.loads(data), _Chunk)
    except RecursionError:
        raise nested_too_deeply(data) from None
    except (ValueError, msgspec.ValidationError):
        raise malformed(data) from None


def malformed(data: bytes) -> ProtocolError:
    """The error for an event that is not the JSON we expect, with the start of it."""
    preview = data[:80].decode("utf-8", "replace")
    return ProtocolError(f"malformed JSON in the event stream: {preview!r}")


def nested_too_deeply(data: bytes) -> ProtocolError:
    """The error for an event whose JSON nests deeper than the decoders recurse: msgspec and
    `json` raise `RecursionError` (not a decode error) at about 2,000 levels (FACTS.md)."""
    preview = data[:40].decode("utf-8", "replace")
    return ProtocolError(
        f"JSON nested too deeply in the event stream ({len(data)} bytes: {preview!r}…)"
    )
