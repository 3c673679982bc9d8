"""The Responses API mapper: typed SSE events in, adapter events out. Sans-IO.

A Responses stream is a sequence of typed events: the type is in each event's `type` field and,
on most servers, in an `event:` line too (the field wins when both are given; a frame without a
`type` field falls back to the `event:` name). What we map:

    response.output_text.delta             → Token (non-empty `delta`)
    response.reasoning_text.delta          → ReasoningDelta
    response.reasoning_summary_text.delta  → ReasoningDelta(summary=True)
    response.output_item.added (function_call)        → ToolCallDelta (the call: id, name)
    response.function_call_arguments.delta / .done    → ToolCallDelta (argument fragments)
    response.completed    → usage; finish `stop`, or `tool_calls` when a call was streamed
    response.incomplete   → usage; `incomplete_details.reason`: max_output_tokens → `length`,
                            content_filter → `content_filter`
    response.failed, error → an error (`UPSTREAM_ERROR` with the upstream's code and message
                             after `Started`; as the first event, the status it stands for)

Every other type is skipped, so an upstream that adds event types does not break us. A terminal
event ends the stream (`done`); `data: [DONE]` after it is never read, and its absence is a
normal end (llama-server and OpenAI send none; LiteLLM does).

Quirks (FACTS.md, "Streams"): llama-server and transformers send `response.completed` even when
`max_output_tokens` was hit, so a completed response ends with `length` when its status is
`incomplete`, or when its `output_tokens` equal the request's limit *and* it has no
`incomplete_details` key. Both conditions keep an explicit `completed` believed where the
heuristic would be wrong: a server that writes the full schema (OpenAI: `incomplete_details:
null`) sends `response.incomplete` when the limit cuts, and a server that ignores the limit
(nginx replaying a capture, some proxies) goes past it rather than stopping exactly on it.
llama-server's `response.completed` has no `incomplete_details` key (its source builds `id`,
`object`, `created_at`, `status`, `model`, `output`, `usage` only); transformers leaves `None`
fields out. The lifecycle preamble
(`response.created`, `response.in_progress`, `response.queued`) is not counted in `events_seen`:
it says nothing about the outcome, so an `error` right after it is still the *first* event and
is treated like the status it names (a rate limit is retried before `Started`). `response.completed`
repeats the whole output, which can be large; the view below names only status, usage and the
incomplete/error details, so msgspec skips the output without building it.
"""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec

from ._errors import ErrorBody, error_from_event
from ._events import Event, ReasoningDelta, Token
from ._mappers import (
    Mapper,
    ProtocolError,
    finish_to_reason,
    malformed,
    nested_too_deeply,
    usage_count,
)

__all__ = ["ResponsesMapper"]


# --- wire views ------------------------------------------------------------------------------


class _Usage(msgspec.Struct, gc=False):
    input_tokens: Any = None  # any JSON value, read by `usage_count` (as in `_mappers`)
    output_tokens: Any = None


class _Incomplete(msgspec.Struct, gc=False):
    reason: str | None = None


class _Response(msgspec.Struct, gc=False):
    status: str | None = None
    usage: _Usage | None = None
    # UNSET (the key is absent) tells a server that writes the full schema — `null` when
    # nothing was cut — from one that leaves it out (llama-server, transformers)
    incomplete_details: _Incomplete | msgspec.UnsetType | None = msgspec.UNSET
    error: ErrorBody | None = None


class _Item(msgspec.Struct, gc=False):
    type: str | None = None
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


class _Event(msgspec.Struct, gc=False):
    type: str | None = None
    delta: str | None = None
    item_id: str | None = None
    output_index: int | None = None
    item: _Item | None = None
    arguments: str | None = None
    response: _Response | None = None
    # the `error` event: OpenAI puts code and message at the top; some servers nest `error`
    code: str | int | None = None
    message: str | None = None
    error: ErrorBody | str | None = None


class _TypeOnly(msgspec.Struct, gc=False):
    type: str | None = None


_decoder: Final = msgspec.json.Decoder(_Event)
_type_decoder: Final = msgspec.json.Decoder(_TypeOnly)

_DONE: Final = b"[DONE]"
_PREAMBLE: Final = frozenset({"response.created", "response.in_progress", "response.queued"})
#: Types whose fields we read: a shape we cannot read is an error only for these.
_MAPPED: Final = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.added",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "error",
    }
)


class ResponsesMapper(Mapper):
    """`POST /responses` with `stream: true`. See the module header."""

    __slots__ = ()

    def feed(self, name: str, data: bytes, out: list[Event]) -> None:
        if data[:1] == b"[" and data.strip() == _DONE:
            self.events_seen += 1
            self.done = True
            return
        try:
            decoded = _decode(name, data)
        except RecursionError:
            raise nested_too_deeply(data) from None
        if isinstance(decoded, str):  # a type we do not map, in a shape we cannot read
            if decoded not in _PREAMBLE:
                self.events_seen += 1
            return
        ev, lenient = decoded
        kind = ev.type or name
        if kind in _PREAMBLE:
            return
        self.events_seen += 1
        if kind == "response.output_text.delta":
            text = ev.delta
            if text and (lenient or self._high_surrogate):
                text = self._join_surrogates(text)
            if text:
                out.append(Token(task_id=self.task_id, index=self.next_index, text=text))
                self.next_index += 1
        elif kind == "response.reasoning_text.delta":
            if ev.delta:
                out.append(ReasoningDelta(task_id=self.task_id, text=ev.delta))
        elif kind == "response.reasoning_summary_text.delta":
            if ev.delta:
                out.append(ReasoningDelta(task_id=self.task_id, text=ev.delta, summary=True))
        elif kind == "response.function_call_arguments.delta":
            self._tool_calls().delta(self._call_key(ev), out, arguments=ev.delta)
        elif kind == "response.function_call_arguments.done":
            self._tool_calls().done(self._call_key(ev), ev.arguments, out)
        elif kind == "response.output_item.added":
            item = ev.item
            if item is not None and item.type == "function_call":
                key = item.id if item.id is not None else ev.output_index
                self._tool_calls().delta(
                    key, out, call_id=item.call_id, name=item.name, arguments=item.arguments
                )
        elif kind == "response.completed" or kind == "response.incomplete":
            self._terminal(kind, ev.response)
        elif kind == "response.failed":
            self._fail(ev.response.error if ev.response is not None else None, "")
        elif kind == "error" or ev.error is not None:
            if isinstance(ev.error, ErrorBody):
                self._fail(ev.error, "")
            else:
                body = ErrorBody(message=ev.message, code=ev.code)
                self._fail(body, ev.error if isinstance(ev.error, str) else "")
        # anything else (content parts, item done, annotations, new types) is skipped

    # --- pieces --------------------------------------------------------------------------

    @staticmethod
    def _call_key(ev: _Event) -> str | int | None:
        return ev.item_id if ev.item_id is not None else ev.output_index

    def _terminal(self, kind: str, response: _Response | None) -> None:
        self.done = True
        usage = response.usage if response is not None else None
        if usage is not None:
            self.prompt_tokens = usage_count(usage.input_tokens)
            self.completion_tokens = usage_count(usage.output_tokens)
        details = response.incomplete_details if response is not None else None
        if isinstance(details, _Incomplete) and details.reason:
            self.finish = finish_to_reason(details.reason)
        elif kind == "response.incomplete" or (
            response is not None and response.status == "incomplete"
        ):
            self.finish = "length"  # incomplete without a reason: cut short, by a limit
        elif (
            details is msgspec.UNSET
            and self.max_tokens is not None
            and self.completion_tokens == self.max_tokens
        ):
            self.finish = "length"  # llama-server, transformers: `completed` at the limit
        elif self._tools is not None and self._tools.count:
            self.finish = "tool_calls"
        else:
            self.finish = "stop"

    def _fail(self, body: ErrorBody | None, said: str) -> None:
        if body is not None and isinstance(body.code, str) and body.message:
            # keep the upstream's code in the message: ErrorInfo has no field for it
            body = ErrorBody(message=f"{body.code}: {body.message}", type=body.type, code=body.code)
        self.error = error_from_event(
            body, first=self.events_seen == 1, fallback_message=said or "response failed"
        )
        self.done = True


def _decode(name: str, data: bytes) -> tuple[_Event, bool] | str:
    """The event and whether the slow `json` path read it, or — for an event whose fields have
    a shape we cannot read — its type, when it is a type we skip anyway. Raises `ProtocolError`
    for what we cannot read in a type we map."""
    try:
        return _decoder.decode(data), False
    except msgspec.ValidationError as exc:
        problem = str(exc)  # valid JSON, but a field we name has another shape
    except msgspec.DecodeError:
        return _decode_lenient(data), True
    try:
        # `json` reads what msgspec refuses in an otherwise fine event: a number beyond a
        # double (inf) in a usage count, which `usage_count` then ignores
        return msgspec.convert(json.loads(data), _Event), True
    except (ValueError, msgspec.ValidationError):
        pass
    kind = _type_decoder.decode(data).type or name
    if kind in _MAPPED:
        raise ProtocolError(f"unexpected {kind} event: {problem}")
    return kind


def _decode_lenient(data: bytes) -> _Event:
    """The event, decoded by the slower `json` module that accepts lone UTF-16 surrogates
    (a server that cuts deltas on UTF-16 units, FACTS.md)."""
    try:
        return msgspec.convert(json.loads(data), _Event)
    except (ValueError, msgspec.ValidationError):
        raise malformed(data) from None
