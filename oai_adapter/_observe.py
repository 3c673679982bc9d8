"""What a task's observers see: its outcome, and the hook that telemetry plugs into.

The adapter itself knows nothing of OpenTelemetry (or of any metrics library): a task reports
once, when it is over, through `TaskTelemetry.end(outcome)`, and `oai_adapter.otel` is the one
implementation shipped. Nothing here runs per token — an observer is started when `submit` is
entered and ended once, so the hot path pays nothing for it, instrumented or not.

A task is over at the first of: the reader produced its `End` (normal end or error), the
consumer got `End(reason="cancelled")`, or the consumer left the `submit` block without an
`End` (break, exception, outer cancel). `TaskLog` (in `_log`) guarantees `end` is called
exactly once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import msgspec

from ._events import EndReason

if TYPE_CHECKING:
    from ._config import AdapterConfig, TaskRequest

__all__ = ["TaskOutcome", "TaskTelemetry", "Telemetry"]


class TaskOutcome(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """How a task ended, with the figures of its `Metrics` (milliseconds, trio's clock).

    `reason` is `End.reason` as the reader made it, or `"cancelled"` for a cancel or a consumer
    that left early; `error_kind` is the `ErrorKind` value for an error, `"CANCELLED"` for a
    cancel, else `None`. `ttft_ms` and `decode_time_ms` are `None` when unknown (no token, or a
    cancel: the reader's figures are not kept after it is cancelled). `attempts` counts the
    requests sent.
    """

    reason: EndReason
    error_kind: str | None
    duration_ms: float
    tokens_out: int
    attempts: int
    ttft_ms: float | None = None
    decode_time_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class TaskTelemetry(Protocol):
    """One task's observer, started when `submit` is entered."""

    def end(self, outcome: TaskOutcome) -> None:
        """The task is over; called exactly once."""


class Telemetry(Protocol):
    """Makes a `TaskTelemetry` per task. Set on an adapter by `oai_adapter.otel.instrument`."""

    def start_task(
        self, config: AdapterConfig, req: TaskRequest, correlation_id: str
    ) -> TaskTelemetry:
        """Called in `submit`, when the task starts (before the first request is sent)."""
