"""What a host's observer sees: failovers, retry-budget refusals and breaker transitions.

The host knows nothing of OpenTelemetry: it reports these three kinds of step, once each, to
the `HostTelemetry` attached with `AdapterHost.attach_telemetry`, and `oai_adapter.otel`
(`instrument_host`) is the one implementation shipped. They are the steps the host narrates as
`failover`, `retry-budget` and `breaker` (`_hostlog`), reported from the same place, so a
counter and the log never disagree. Nothing here runs per token. `adapter_opened` lets the
observer instrument each adapter the host opens (a bind or a rebind) for the per-task metrics.
"""

from __future__ import annotations

from typing import Protocol

from ._adapter import OpenAIAdapter
from ._breaker import BreakerState

__all__ = ["HostTelemetry"]


class HostTelemetry(Protocol):
    """Called by the host from its own trio task; each call must return at once."""

    def failover(self, pool_id: str, replica_id: str) -> None:
        """A task left `replica_id` (which failed it before `Started`) for another replica."""

    def budget_refused(self, pool_id: str, replica_id: str) -> None:
        """The pool's retry budget refused a retry on `replica_id`, or a failover from it."""

    def breaker(self, pool_id: str, replica_id: str, state: BreakerState) -> None:
        """The replica's breaker moved to `state` (`"open"`, `"half_open"` or `"closed"`)."""

    def adapter_opened(self, adapter: OpenAIAdapter) -> None:
        """The host opened an adapter for a replica (before its first probe)."""
