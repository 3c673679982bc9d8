"""The events a task yields, and what the probes return.

A task's stream is `Started Token* Metrics? End` or just `End` (DESIGN.md, "Events"). Events
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
    "Started",
    "Token",
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


class Token(_Event, frozen=True, tag="token"):
    """One non-empty text delta, in upstream order; `index` counts 0, 1, 2, … per task."""

    index: int
    text: str


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


Event: TypeAlias = Started | Token | Metrics | End


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
