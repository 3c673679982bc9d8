"""The events a task yields, and what the probes return.

A task's stream is `Started (Token | ToolCallDelta | ReasoningDelta)* Metrics? End` or just
`End` (DESIGN.md, "Events"; the full grammar is in docs/events.md). Text is `Token`; tool-call
argument deltas and reasoning deltas are their own events, so a consumer that wants only the
answer's text matches on `Token` and ignores the rest. `Token.index` and `End.tokens_out` count
Tokens only. Events
are small frozen msgspec Structs: keyword-only, tagged (`type` names the event when encoded),
`gc=False` because they hold only strings, numbers and other gc-free Structs, so no cycle can
form through them.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from ._errors import ErrorInfo, ErrorKind, WorkerError

__all__ = [
    "End",
    "EndReason",
    "EngineVersion",
    "Event",
    "HealthStatus",
    "Metrics",
    "ReasoningDelta",
    "Started",
    "Token",
    "ToolCallDelta",
    "WorkerProps",
]

EndReason: TypeAlias = Literal[
    "stop", "length", "content_filter", "tool_calls", "cancelled", "error"
]


class _Event(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type"):
    task_id: str


class Started(_Event, frozen=True, tag="started"):
    """The upstream accepted: a 2xx event stream whose first event is not an error."""

    model: str
    attempt: int
    http_version: str
    request_id: str | None = None
    replica_id: str | None = None  # the serving replica (the config's; under a host, its key)


class Token(_Event, frozen=True, tag="token"):
    """One non-empty text delta, in upstream order; `index` counts 0, 1, 2, … per task."""

    index: int
    text: str


class ToolCallDelta(_Event, frozen=True, tag="tool_call_delta"):
    """A piece of a tool (function) call, in upstream order.

    `index` says which call of the answer (0, 1, … in order of first appearance; not a count of
    these events). `call_id` and `name` are repeated on every delta once the upstream has said
    them (`None` until then). Joining the `arguments` of one index gives the call's arguments
    as the upstream wrote them (a JSON text when the upstream keeps its promise).
    """

    index: int
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""


class ReasoningDelta(_Event, frozen=True, tag="reasoning_delta"):
    """A non-empty piece of the model's reasoning, in upstream order (no index: order is the
    stream's). `summary` is True for a reasoning *summary* (Responses'
    `response.reasoning_summary_text.delta`) rather than the reasoning text itself."""

    text: str
    summary: bool = False


class Metrics(_Event, frozen=True, tag="metrics"):
    """Once, just before `End`, when the stream started (not after a cancel). Milliseconds."""

    ttft_ms: float | None
    decode_time_ms: float | None
    duration_ms: float
    tokens_out: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    retries: int = 0


class End(_Event, frozen=True, tag="end"):
    """Always, exactly once, last. `error` is set iff `reason == "error"`."""

    reason: EndReason
    tokens_out: int
    error: ErrorInfo | None = None

    def raise_for_error(self) -> None:
        """Raise the matching `WorkerError` for an error or a cancel; return otherwise."""
        if self.error is not None:
            raise self.error.to_exception()
        if self.reason == "cancelled":
            raise WorkerError(ErrorKind.CANCELLED, f"task {self.task_id} was cancelled")


Event: TypeAlias = Started | Token | ToolCallDelta | ReasoningDelta | Metrics | End


class HealthStatus(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """`live`: the upstream answers; `ready`: it serves the configured model."""

    live: bool
    ready: bool
    detail: str


class WorkerProps(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Capacity as the upstream reports it; `None` where it does not say."""

    slots_total: int | None = None
    slots_free: int | None = None
    model: str | None = None
    context_length: int | None = None


class EngineVersion(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Which engine serves, its version, the model digest and the web server's name."""

    engine: str
    version: str
    model_digest: str | None = None
    server: str | None = None
