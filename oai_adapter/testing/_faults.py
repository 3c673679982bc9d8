"""The fault script: named faults for one attempt each, built on `Reply` and its steps.

`upstream.script(Fault.status(429, retry_after="1"), Fault.reset_after(3), Fault.ok())` makes
the next three completion requests — the three attempts of a retried task — meet a rate limit,
a connection reset after three tokens, and a normal stream. Every fault is a plain `Reply`
(a status, headers, a body, steps before and after the status line), so a test that needs
something no constructor names writes the steps itself; there is no second server mode.

Where a fault sits in the stream is counted in tokens of the request's normal stream
(`Stream(n)`): `after_tokens=0` is after the head of the stream (chat's role-only delta, an
event: the adapter has emitted `Started`), `after_tokens=None` is before any event.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec

from ._script import Hang, Reply, Reset, Send, Sleep, Step, Stream, sse

__all__ = ["KEEPALIVE", "Fault"]

#: The keep-alive comment real servers send while a model is busy (an SSE comment: no event).
KEEPALIVE = b": keep-alive\n\n"

_json = msgspec.json.Encoder()


def _head(after_tokens: int | None) -> list[Step]:
    return [] if after_tokens is None else [Stream(after_tokens)]


def _error_body(status: int, message: str | None, type_: str | None, code: Any) -> bytes:
    error = {
        "message": message or f"scripted HTTP {status}",
        "type": type_ or ("rate_limit_error" if status == 429 else "scripted_error"),
        "code": status if code is None else code,
    }
    return _json.encode({"error": error})


class Fault:
    """Constructors of one attempt's `Reply`. See the module header."""

    KEEPALIVE = KEEPALIVE

    @staticmethod
    def ok(*, pace: float = 0.0) -> Reply:
        """The normal stream; `pace` pauses before each token frame (a slow drip)."""
        return Reply(steps=[Stream(pace=pace)]) if pace else Reply()

    @staticmethod
    def status(
        status: int,
        *,
        retry_after: str | None = None,
        retry_after_ms: str | None = None,
        message: str | None = None,
        type: str | None = None,
        code: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Reply:
        """A complete non-stream answer with this status: an OpenAI-shaped error body unless
        `body` is given; `Retry-After` / `retry-after-ms` when given."""
        hdrs = list(headers)
        if retry_after is not None:
            hdrs.append(("retry-after", retry_after))
        if retry_after_ms is not None:
            hdrs.append(("retry-after-ms", retry_after_ms))
        raw = _error_body(status, message, type, code) if body is None else body
        return Reply(
            status=status, headers=tuple(hdrs), body=raw, steps=(), content_type=content_type
        )

    @staticmethod
    def not_event_stream(
        status: int = 200,
        body: bytes = b'{"object": "chat.completion", "choices": []}',
        content_type: str = "application/json",
    ) -> Reply:
        """A 2xx whose body is not an event stream (a server that ignored `stream: true`)."""
        return Reply(status=status, body=body, steps=(), content_type=content_type)

    @staticmethod
    def stall_before_headers(seconds: float | None = None) -> Reply:
        """No status line for `seconds` (None: until the client goes away), then the stream."""
        return Reply(delay=math.inf if seconds is None else seconds)

    @staticmethod
    def reset_before_headers() -> Reply:
        """The connection is reset after the request, before any byte of the response."""
        return Reply(before=[Reset()])

    @staticmethod
    def stall_after_headers(seconds: float | None = None) -> Reply:
        """The headers, then nothing for `seconds` (None: until the client goes away)."""
        if seconds is None:
            return Reply(steps=[Hang()])
        return Reply(steps=[Sleep(seconds), Stream()])

    @staticmethod
    def stall_after(tokens: int, seconds: float | None = None) -> Reply:
        """`tokens` tokens, then nothing for `seconds` (None: until the client goes away)."""
        if seconds is None:
            return Reply(steps=[Stream(tokens), Hang()])
        return Reply(steps=[Stream(tokens), Sleep(seconds), Stream()])

    @staticmethod
    def keepalive_drip(
        interval: float,
        *,
        count: int | None = None,
        after_tokens: int | None = None,
        comment: bytes = KEEPALIVE,
    ) -> Reply:
        """After `after_tokens` tokens (None: right after the headers), a keep-alive comment
        every `interval` seconds — `count` of them then the rest of the stream, or forever."""
        if count is None:
            return Reply(steps=[*_head(after_tokens), Hang(drip=comment, every=interval)])
        drip: list[Step] = [Sleep(interval), Send(comment)] * count
        return Reply(steps=[*_head(after_tokens), *drip, Stream()])

    @staticmethod
    def reset_after(tokens: int | None) -> Reply:
        """`tokens` tokens (None: none, not even the head of the stream), then a TCP reset."""
        return Reply(steps=[*_head(tokens), Reset()])

    @staticmethod
    def eof_after(tokens: int | None) -> Reply:
        """`tokens` tokens, then a clean end of the response with no finish and no `[DONE]`."""
        return Reply(steps=_head(tokens))

    @staticmethod
    def malformed(
        data: bytes = b'data: {"choices": [{"delta": {"content": \n\n',
        *,
        after_tokens: int | None = None,
    ) -> Reply:
        """`after_tokens` tokens, then `data` (by default a truncated JSON event), then the
        rest of the stream."""
        return Reply(steps=[*_head(after_tokens), Send(data), Stream()])

    @staticmethod
    def error_event(
        *,
        after_tokens: int | None = None,
        type: str | None = "server_error",
        code: Any = None,
        message: str = "scripted error event",
        event: str | None = None,
        status: int = 200,
    ) -> Reply:
        """A 2xx stream carrying `data: {"error": {...}}`: as its first event
        (`after_tokens=None`, how some servers send a rate limit) or after that many tokens."""
        error: dict[str, Any] = {"message": message}
        if type is not None:
            error["type"] = type
        if code is not None:
            error["code"] = code
        frame = sse({"error": error}, event=event)
        return Reply(status=status, steps=[*_head(after_tokens), Send(frame)])

    @staticmethod
    def garbage_before_headers(data: bytes = b"NOT HTTP\r\n\r\n") -> Reply:
        """Bytes that are not an HTTP response, then the connection closes."""
        return Reply(before=[Send(data), Reset()])
