"""OpenTelemetry for an adapter: GenAI semantic-convention metrics and a span per task.

Opt in per adapter, with the `oai-adapter[otel]` extra installed::

    from oai_adapter.otel import instrument

    async with OpenAIAdapter(config) as adapter:
        instrument(adapter)  # the global providers, or meter_provider=/tracer_provider=
        ...

For an `AdapterHost`, `instrument_host(host)` does the same for every adapter it opens and adds
counters of failovers, retry-budget refusals and breaker transitions (`_otelhost`).

Only this module imports opentelemetry; `import oai_adapter` does not. What is recorded, and
when, is in `oai_adapter._otel` and docs/observability.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    from ._otel import GenAITelemetry
    from ._otelhost import HostCounters
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "oai_adapter.otel needs OpenTelemetry: pip install 'oai-adapter[otel]'"
    ) from exc

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._adapter import OpenAIAdapter
    from ._host import AdapterHost

__all__ = [
    "GenAITelemetry",
    "HostCounters",
    "instrument",
    "instrument_host",
    "uninstrument",
    "uninstrument_host",
]


def instrument(
    adapter: OpenAIAdapter,
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> GenAITelemetry:
    """Record every task `adapter` submits from now on; returns the telemetry installed.

    `None` providers mean OpenTelemetry's global ones. Tasks already running are not recorded.
    """
    telemetry = GenAITelemetry(meter_provider=meter_provider, tracer_provider=tracer_provider)
    adapter.attach_telemetry(telemetry)
    return telemetry


def uninstrument(adapter: OpenAIAdapter) -> None:
    """Stop recording tasks that `adapter` submits from now on (running ones still end theirs)."""
    adapter.attach_telemetry(None)


def instrument_host(
    host: AdapterHost,
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> HostCounters:
    """Count `host`'s failovers, retry-budget refusals and breaker transitions, and record
    every task of every adapter it has open or opens later, as `instrument` does."""
    counters = HostCounters(meter_provider=meter_provider, tracer_provider=tracer_provider)
    host.attach_telemetry(counters)
    return counters


def uninstrument_host(host: AdapterHost) -> None:
    """Stop counting for `host` (its adapters keep recording the tasks they have)."""
    host.attach_telemetry(None)
