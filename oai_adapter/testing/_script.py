"""What the test upstream says: replies, their steps, and SSE bodies in real servers' shapes.

Sans-IO: these build bytes and plans; `_upstream.FakeUpstream` plays them on a socket. A reply is
a status, headers, and a list of steps — bytes to send, pauses, a reset or a hang — so any fault
a test needs (a status, a stall before or after the headers, a drip of keep-alive comments, a
reset after N tokens, malformed bytes, an error event) is a list, not a new server mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

__all__ = [
    "Hang",
    "Reply",
    "Reset",
    "Send",
    "Sleep",
    "Step",
    "Stream",
    "chat_chunk",
    "completion_chunk",
    "render_stream",
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
    """Abort the connection (TCP RST) without ending the response."""


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


Step = Send | Sleep | Reset | Hang | Stream


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
