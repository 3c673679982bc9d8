"""OpenTelemetry counters for an `AdapterHost`: failovers, retry-budget refusals, breaker moves.

Imported only by `oai_adapter.otel` (the opt-in extra); `import oai_adapter` never imports
opentelemetry. Implements `_hosttelemetry.HostTelemetry`: the host calls it at the steps it
narrates as `failover`, `retry-budget` and `breaker`, so each counter matches the log. Each
adapter the host opens is instrumented with the GenAI metrics and spans of `_otel` (one
`GenAITelemetry`, shared), so a host's tasks are measured as a lone adapter's are.

Attribute names are namespaced (`oai_adapter.pool`, `oai_adapter.replica`,
`oai_adapter.breaker.state`): the GenAI conventions define none for pools, and OpenTelemetry
asks for a namespace on custom attributes. Counts are bounded by the pools and replicas bound,
so the attribute sets stay few.
"""

from __future__ import annotations

from typing import Final

from opentelemetry import metrics, trace

from . import __version__
from ._adapter import OpenAIAdapter
from ._breaker import BreakerState
from ._otel import SCOPE, GenAITelemetry

__all__ = ["HostCounters"]

POOL: Final = "oai_adapter.pool"
REPLICA: Final = "oai_adapter.replica"
STATE: Final = "oai_adapter.breaker.state"


class HostCounters:
    """Three counters, created once per `instrument_host`; see the module header."""

    def __init__(
        self,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        meter = metrics.get_meter(SCOPE, __version__, meter_provider)
        self.genai = GenAITelemetry(meter_provider=meter_provider, tracer_provider=tracer_provider)
        self.failovers = meter.create_counter(
            "oai_adapter.host.failovers",
            unit="{failover}",
            description="Tasks placed on another replica after this one failed them before Started.",
        )
        self.budget_refusals = meter.create_counter(
            "oai_adapter.host.retry_budget.refused",
            unit="{retry}",
            description="Retries and failovers the pool's retry budget refused.",
        )
        self.breaker_transitions = meter.create_counter(
            "oai_adapter.host.breaker.transitions",
            unit="{transition}",
            description="Circuit-breaker transitions of a replica, by the state entered.",
        )

    def failover(self, pool_id: str, replica_id: str) -> None:
        self.failovers.add(1, {POOL: pool_id, REPLICA: replica_id})

    def budget_refused(self, pool_id: str, replica_id: str) -> None:
        self.budget_refusals.add(1, {POOL: pool_id, REPLICA: replica_id})

    def breaker(self, pool_id: str, replica_id: str, state: BreakerState) -> None:
        self.breaker_transitions.add(1, {POOL: pool_id, REPLICA: replica_id, STATE: state})

    def adapter_opened(self, adapter: OpenAIAdapter) -> None:
        adapter.attach_telemetry(self.genai)
