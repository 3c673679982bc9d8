"""What the test upstream says: replies, their steps, and SSE bodies in real servers' shapes.

Sans-IO: these build bytes and steps; the `Responder` turns a request and its reply into a plan,
and the HTTP/1.1 and HTTP/2 front-ends play it. A reply is a status, headers, and a list of
steps — bytes to send, pauses, a reset or a hang — so any fault a test needs (a status, a stall
before or after the headers, a drip of keep-alive comments, a reset after N tokens, malformed
bytes, an error event) is a list, not a new server mode. Each step says what it means on each
wire; a step only one wire has (`GoAway`, `ResetStream`, `UpdateSettings`) has the nearest
meaning on the other, so one script plays on both.

Stream shapes: `render_stream` (chat and completions, text only), `render_chat_deltas` (chat
with reasoning and tool-call deltas) and `render_responses_stream` (the Responses API, in the
shapes of OpenAI — `event:` lines and `type` fields, no `[DONE]`, `response.incomplete` at the
limit —, of llama.cpp's server — the same frames, but `response.completed` even at the limit —
and of LiteLLM — `data:` only, `response.incomplete`, then `[DONE]`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import trio

__all__ = [
    "Gate",
    "GoAway",
    "Hang",
    "Reply",
    "Reset",
    "ResetStream",
    "ResponsesShape",
    "ScriptedToolCall",
    "Send",
    "Sleep",
    "Step",
    "Stream",
    "UpdateSettings",
    "chat_chunk",
    "completion_chunk",
    "render_chat_deltas",
    "render_responses_stream",
    "render_stream",
    "responses_event",
    "split_words",
    "sse",
]

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Send:
    """Write these bytes (one socket write). `token`: this frame carries one token of the
    normal stream (what `Stream(n)` counts)."""

    data: bytes
    token: bool = False


@dataclass(frozen=True)
class Sleep:
    """Pause (trio time, so `autojump_clock` skips it)."""

    seconds: float


@dataclass(frozen=True)
class Reset:
    """Abort the connection (TCP RST) without ending the response — over HTTP/2 too, where it
    drops every stream of the connection (`ResetStream` resets one)."""


@dataclass(frozen=True)
class Hang:
    """Stop sending and keep the connection open until the client goes away; with `drip`,
    send those bytes (a keep-alive comment) every `every` seconds meanwhile."""

    drip: bytes = b""
    every: float = 1.0


@dataclass(frozen=True)
class Stream:
    """Play on the request's normal stream from where the last `Stream` step stopped: through
    `tokens` more token frames (0: only what precedes the next token, e.g. chat's role-only
    delta), or to its end — finish, usage and `[DONE]` — when `tokens` is None. `pace`
    pauses before each token frame (a slow drip)."""

    tokens: int | None = None
    pace: float = 0.0


@dataclass(frozen=True)
class Gate:
    """Wait until `event` is set (tests use it to hold streams open together)."""

    event: trio.Event


@dataclass(frozen=True)
class GoAway:
    """HTTP/2: send GOAWAY naming `last_stream_id` (default: this stream) and `error_code`;
    refuse new streams; finish the streams at or below it, then close the connection.
    HTTP/1.1: close the connection once this response is done."""

    last_stream_id: int | None = None
    error_code: int = 0


#: RFC 9113 §7: the error code of a `ResetStream` unless told.
INTERNAL_ERROR = 0x2


@dataclass(frozen=True)
class ResetStream:
    """HTTP/2: reset this stream (RST_STREAM) with `error_code`; as the first step, before the
    headers (a refused stream). HTTP/1.1, which cannot reset one response: a `Reset`."""

    error_code: int = INTERNAL_ERROR


@dataclass(frozen=True)
class UpdateSettings:
    """HTTP/2: send a SETTINGS frame mid-connection (`None`: leave that setting as it is).
    HTTP/1.1 has no settings: nothing."""

    max_concurrent_streams: int | None = None
    initial_window_size: int | None = None


Step = Send | Sleep | Reset | Hang | Stream | Gate | GoAway | ResetStream | UpdateSettings


def expand_steps(steps: Iterable[Step], normal: Sequence[Step]) -> list[Step]:
    """`steps` with every `Stream` replaced by its part of `normal` (the request's normal
    stream, whose token frames are `Send(..., token=True)`)."""
    out: list[Step] = []
    pos = 0
    for step in steps:
        if not isinstance(step, Stream):
            out.append(step)
            continue
        left = step.tokens
        while pos < len(normal):
            item = normal[pos]
            if isinstance(item, Send) and item.token:
                if left == 0:
                    break
                if left is not None:
                    left -= 1
                if step.pace:
                    out.append(Sleep(step.pace))
            out.append(item)
            pos += 1
    return out


@dataclass(frozen=True)
class Reply:
    """One response. `steps=None` on a 2xx means the normal stream for the request."""

    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    delay: float = 0.0  # before the status line (a stall before the headers; inf: forever)
    steps: Sequence[Step] | None = None
    content_type: str | None = None  # default: event stream for 2xx, JSON otherwise
    before: Sequence[Step] = ()  # played before the status line (raw bytes, a reset, a hang)

    @classmethod
    def status_only(cls, status: int, body: bytes | dict[str, Any] = b"", **headers: str) -> Reply:
        """A plain, non-streaming answer, e.g. `Reply.status_only(429, retry_after="1")`."""
        raw = _json.encode(body) if isinstance(body, dict) else body
        hdrs = tuple((k.replace("_", "-"), v) for k, v in headers.items())
        return cls(status=status, headers=hdrs, body=raw, steps=())


def sse(data: bytes | str | dict[str, Any], *, event: str | None = None) -> bytes:
    """One SSE frame."""
    if isinstance(data, dict):
        payload = _json.encode(data)
    else:
        payload = data.encode() if isinstance(data, str) else data
    head = b"event: " + event.encode() + b"\n" if event else b""
    lines = b"".join(b"data: " + line + b"\n" for line in payload.split(b"\n"))
    return head + lines + b"\n"


def split_words(text: str) -> list[str]:
    """`text` cut into word tokens that keep their leading space, as most tokenisers do."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        piece = word if i == 0 else " " + word
        if piece:
            out.append(piece)
    return out


def chat_chunk(
    content: str | None = None,
    *,
    finish: str | None = None,
    role: bool = False,
    model: str = "test-model",
    usage: tuple[int, int] | None = None,
    empty_choices: bool = False,
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None or role:
        delta["content"] = content
    chunk: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1764000000,
        "model": model,
        "choices": []
        if empty_choices
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        p, c = usage
        chunk["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    return chunk


def completion_chunk(
    text: str = "",
    *,
    finish: str | None = None,
    model: str = "test-model",
    usage: tuple[int, int] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "cmpl-test",
        "object": "text_completion",
        "created": 1764000000,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        p, c = usage
        chunk["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    return chunk


def render_stream(
    api: Literal["chat", "completions"],
    tokens: Iterable[str],
    *,
    finish: str = "stop",
    usage: tuple[int, int] | None = None,
    done: bool = True,
    model: str = "test-model",
    pace: float = 0.0,
) -> list[Step]:
    """The steps of a well-formed stream, in the shape OpenAI and llama.cpp send.

    Chat opens with a role-only delta; usage (when given) comes on a `choices: []` chunk after
    the finish chunk; `[DONE]` ends it unless `done=False`. `pace` pauses before each token.
    """
    steps: list[Step] = []
    if api == "chat":
        steps.append(Send(sse(chat_chunk("", role=True, model=model))))
    for token in tokens:
        if pace:
            steps.append(Sleep(pace))
        chunk = (
            chat_chunk(token, model=model)
            if api == "chat"
            else completion_chunk(token, model=model)
        )
        steps.append(Send(sse(chunk), token=True))
    if api == "chat":
        steps.append(Send(sse(chat_chunk(None, finish=finish, model=model))))
        if usage is not None:
            steps.append(Send(sse(chat_chunk(model=model, usage=usage, empty_choices=True))))
    else:
        steps.append(Send(sse(completion_chunk("", finish=finish, model=model, usage=usage))))
    if done:
        steps.append(Send(b"data: [DONE]\n\n"))
    return steps


@dataclass
class RecordedRequest:
    """What the upstream received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = 0.0  # trio time when the request was complete
    json: Any = field(default=None)

    @classmethod
    def received(
        cls, method: str, path: str, headers: dict[str, str], body: bytes, *, at: float
    ) -> RecordedRequest:
        """A request as a server read it; `json` is the body decoded, or None if it is not JSON."""
        parsed: Any = None
        if body:
            try:
                parsed = msgspec.json.decode(body)
            except msgspec.DecodeError:
                parsed = None
        return cls(method=method, path=path, headers=headers, body=body, at=at, json=parsed)


# --- tool calls and reasoning (chat) ----------------------------------------------------------


@dataclass(frozen=True)
class ScriptedToolCall:
    """A tool call the upstream streams: its `arguments` fragments, joined, are the arguments."""

    name: str
    arguments: Sequence[str] = ()
    call_id: str = "call_0"


def render_chat_deltas(
    tokens: Iterable[str] = (),
    *,
    reasoning: Iterable[str] = (),
    tool_calls: Sequence[ScriptedToolCall] = (),
    finish: str | None = None,
    usage: tuple[int, int] | None = None,
    done: bool = True,
    model: str = "test-model",
    reasoning_field: str = "reasoning_content",
) -> list[Step]:
    """A chat stream with reasoning, text and tool calls, in that order, as llama.cpp and vLLM
    send it: reasoning in `delta.reasoning_content` (or `reasoning_field`), each call announced
    by a delta with its `id`, `type` and `function.name`, then its argument fragments under its
    `index`. `finish` defaults to `tool_calls` when there are calls, else `stop`."""
    steps: list[Step] = [Send(sse(chat_chunk("", role=True, model=model)))]

    def delta_chunk(delta: dict[str, Any]) -> dict[str, Any]:
        chunk = chat_chunk(model=model)
        chunk["choices"][0]["delta"] = delta
        return chunk

    for piece in reasoning:
        steps.append(Send(sse(delta_chunk({reasoning_field: piece}))))
    for token in tokens:
        steps.append(Send(sse(chat_chunk(token, model=model))))
    for i, call in enumerate(tool_calls):
        head = {"index": i, "id": call.call_id, "type": "function"}
        head["function"] = {"name": call.name, "arguments": ""}
        steps.append(Send(sse(delta_chunk({"tool_calls": [head]}))))
        for fragment in call.arguments:
            part = {"index": i, "function": {"arguments": fragment}}
            steps.append(Send(sse(delta_chunk({"tool_calls": [part]}))))
    if finish is None:
        finish = "tool_calls" if tool_calls else "stop"
    steps.append(Send(sse(chat_chunk(None, finish=finish, model=model))))
    if usage is not None:
        steps.append(Send(sse(chat_chunk(model=model, usage=usage, empty_choices=True))))
    if done:
        steps.append(Send(b"data: [DONE]\n\n"))
    return steps


# --- the Responses API -----------------------------------------------------------------------

ResponsesShape = Literal["openai", "llama.cpp", "litellm"]


def responses_event(type_: str, sequence_number: int = 0, **fields: Any) -> dict[str, Any]:
    """One Responses stream event: its `type`, `sequence_number` and fields."""
    return {"type": type_, "sequence_number": sequence_number, **fields}


def render_responses_stream(
    tokens: Iterable[str] = (),
    *,
    shape: ResponsesShape = "openai",
    finish: Literal["stop", "length", "content_filter"] = "stop",
    usage: tuple[int, int] | None = None,
    reasoning: Iterable[str] = (),
    tool_calls: Sequence[ScriptedToolCall] = (),
    model: str = "test-model",
    pace: float = 0.0,
    done: bool | None = None,
) -> list[Step]:
    """The steps of a Responses stream: created, in_progress, a reasoning item, a message item,
    function-call items, then the terminal event (see the module header for the shapes).

    `finish="length"` is `response.incomplete` (reason `max_output_tokens`), except in the
    llama.cpp shape, which says `response.completed`; `content_filter` is always
    `response.incomplete`. `done` (default: only for LiteLLM) adds `data: [DONE]`. `pace`
    pauses before each text token.
    """
    named = shape != "litellm"
    steps: list[Step] = []
    seq = 0
    rid = "resp_test"
    output: list[dict[str, Any]] = []

    def emit(type_: str, **fields: Any) -> None:
        nonlocal seq
        frame = responses_event(type_, seq, **fields)
        seq += 1
        # Text deltas are marked as tokens, so `Stream(n)` and `Fault.*(after_tokens=n)`
        # cut a Responses stream after n of them, as they cut a chat stream.
        token = type_ == "response.output_text.delta"
        steps.append(Send(sse(frame, event=type_ if named else None), token=token))

    def response(status: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "response",
            "created_at": 1764000000,
            "model": model,
            "status": status,
            "output": list(output),
            **extra,
        }

    emit("response.created", response=response("in_progress"))
    emit("response.in_progress", response=response("in_progress"))
    reasoning = list(reasoning)
    if reasoning:
        idx = len(output)
        item: dict[str, Any] = {"type": "reasoning", "id": "rs_0", "summary": [], "content": []}
        emit("response.output_item.added", output_index=idx, item=item)
        for piece in reasoning:
            emit(
                "response.reasoning_text.delta",
                item_id="rs_0",
                output_index=idx,
                content_index=0,
                delta=piece,
            )
        text = "".join(reasoning)
        emit(
            "response.reasoning_text.done",
            item_id="rs_0",
            output_index=idx,
            content_index=0,
            text=text,
        )
        item = item | {"content": [{"type": "reasoning_text", "text": text}]}
        emit("response.output_item.done", output_index=idx, item=item)
        output.append(item)
    tokens = list(tokens)
    if tokens or not tool_calls:
        idx = len(output)
        msg: dict[str, Any] = {
            "type": "message",
            "id": "msg_0",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
        emit("response.output_item.added", output_index=idx, item=msg)
        emit(
            "response.content_part.added",
            item_id="msg_0",
            output_index=idx,
            content_index=0,
            part=part,
        )
        for token in tokens:
            if pace:
                steps.append(Sleep(pace))
            emit(
                "response.output_text.delta",
                item_id="msg_0",
                output_index=idx,
                content_index=0,
                delta=token,
                logprobs=[],
            )
        text = "".join(tokens)
        emit(
            "response.output_text.done",
            item_id="msg_0",
            output_index=idx,
            content_index=0,
            text=text,
            logprobs=[],
        )
        part = part | {"text": text}
        emit(
            "response.content_part.done",
            item_id="msg_0",
            output_index=idx,
            content_index=0,
            part=part,
        )
        msg = msg | {"status": "completed", "content": [part]}
        emit("response.output_item.done", output_index=idx, item=msg)
        output.append(msg)
    for i, call in enumerate(tool_calls):
        idx = len(output)
        fc: dict[str, Any] = {
            "type": "function_call",
            "id": f"fc_{i}",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": "",
            "status": "in_progress",
        }
        emit("response.output_item.added", output_index=idx, item=fc)
        for fragment in call.arguments:
            emit(
                "response.function_call_arguments.delta",
                item_id=f"fc_{i}",
                output_index=idx,
                delta=fragment,
            )
        arguments = "".join(call.arguments)
        emit(
            "response.function_call_arguments.done",
            item_id=f"fc_{i}",
            output_index=idx,
            arguments=arguments,
        )
        fc = fc | {"arguments": arguments, "status": "completed"}
        emit("response.output_item.done", output_index=idx, item=fc)
        output.append(fc)
    extra: dict[str, Any] = {}
    if usage is not None:
        p, c = usage
        extra["usage"] = {
            "input_tokens": p,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": c,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": p + c,
        }
    if finish == "stop" or (finish == "length" and shape == "llama.cpp"):
        emit("response.completed", response=response("completed", **extra))
    else:
        reason = "max_output_tokens" if finish == "length" else "content_filter"
        details = {"incomplete_details": {"reason": reason}}
        emit("response.incomplete", response=response("incomplete", **details, **extra))
    if done if done is not None else shape == "litellm":
        steps.append(Send(b"data: [DONE]\n\n"))
    return steps
