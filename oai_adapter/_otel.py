"""OpenTelemetry GenAI semantic conventions: a span and four histograms per task.

Imported only by `oai_adapter.otel`, which the application imports when it opts in (the
`oai-adapter[otel]` extra); `import oai_adapter` never imports opentelemetry. Only the
opentelemetry *API* is used: the application chooses the SDK, its exporters and its views.

Per task, once, when it is over (`_observe.TaskTelemetry.end`) — nothing per token:
- a CLIENT span named `"{gen_ai.operation.name} {gen_ai.request.model}"`, started when `submit`
  is entered and ended when the task is over, with the request attributes at its start and the
  usage, finish reason and `error.type` at its end;
- `gen_ai.client.operation.duration` (s): `Metrics.duration_ms` (for a cancel: `submit`
  entered → the cancel is delivered);
- `gen_ai.client.token.usage` ({token}): the upstream's usage, `gen_ai.token.type` `input` and
  `output` — only when the upstream reported it (the conventions forbid guessing);
- `gen_ai.client.operation.time_to_first_chunk` (s): `Metrics.ttft_ms`, the same origin as the
  duration (`submit` entered, retries included);
- `gen_ai.client.operation.time_per_output_chunk` (s): one sample per task, the mean gap
  between Tokens, `decode_time_ms / (tokens_out - 1)` (the benchmarks' TPOT). The conventions
  ask for one sample per chunk; that would put a histogram update on the hot path, so we
  record the task's mean instead (docs/observability.md).

Attribute names and bucket boundaries follow the GenAI semantic conventions (development
status, as of 2025): `gen_ai.provider.name` is `"openai"` (the API spoken, whatever engine
serves it), operation `chat` for the chat and responses apis and `text_completion` for legacy
completions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import __version__
from ._observe import TaskOutcome

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from ._config import AdapterConfig, TaskRequest

__all__ = ["GenAITelemetry"]

SCOPE: Final = "oai_adapter"

OPERATION: Final = {"chat": "chat", "completions": "text_completion", "responses": "chat"}

#: Bucket boundaries: the conventions' advisory ones for duration and token usage; for the two
#: chunk histograms ours (sub-second, finer at the low end). An SDK View can override them.
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
CHUNK_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
FIRST_CHUNK_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip


class GenAITelemetry:
    """Makes a `_TaskSpan` per task; holds the instruments (created once)."""

    def __init__(
        self,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        meter = metrics.get_meter(SCOPE, __version__, meter_provider)
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.time_to_first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk in a streaming operation.",
            explicit_bucket_boundaries_advisory=FIRST_CHUNK_BUCKETS,
        )
        self.time_per_output_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_per_output_chunk",
            unit="s",
            description="Mean time between output chunks after the first, one sample per task.",
            explicit_bucket_boundaries_advisory=CHUNK_BUCKETS,
        )

    def start_task(self, config: AdapterConfig, req: TaskRequest, correlation_id: str) -> _TaskSpan:
        operation = OPERATION[config.api]
        common: dict[str, AttributeValue] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": config.model,
        }
        url = urlsplit(config.base_url)
        if url.hostname:
            common["server.address"] = url.hostname
            common["server.port"] = url.port or (443 if url.scheme == "https" else 80)
        attributes = dict(common)
        for name, value in (
            ("gen_ai.request.max_tokens", req.max_tokens),
            ("gen_ai.request.temperature", req.temperature),
            ("gen_ai.request.top_p", req.top_p),
            ("gen_ai.request.seed", req.seed),
        ):
            if value is not None:
                attributes[name] = value
        attributes["oai_adapter.task_id"] = req.task_id
        attributes["oai_adapter.correlation_id"] = correlation_id
        if req.session_id is not None:
            attributes["oai_adapter.session_id"] = req.session_id
        span = self.tracer.start_span(
            f"{operation} {config.model}", kind=SpanKind.CLIENT, attributes=attributes
        )
        return _TaskSpan(self, span, common)


class _TaskSpan:
    """One task's span and the metric attributes it shares with its histogram samples."""

    __slots__ = ("_common", "_span", "_telemetry")

    def __init__(
        self, telemetry: GenAITelemetry, span: trace.Span, common: dict[str, AttributeValue]
    ) -> None:
        self._telemetry = telemetry
        self._span = span
        self._common = common

    def end(self, outcome: TaskOutcome) -> None:
        t = self._telemetry
        span = self._span
        common = self._common
        if outcome.error_kind is not None:
            common = {**common, "error.type": outcome.error_kind}
        t.duration.record(outcome.duration_ms / 1000.0, common)
        if outcome.ttft_ms is not None:
            t.time_to_first_chunk.record(outcome.ttft_ms / 1000.0, common)
        if outcome.decode_time_ms is not None and outcome.tokens_out >= 2:
            mean = outcome.decode_time_ms / 1000.0 / (outcome.tokens_out - 1)
            t.time_per_output_chunk.record(mean, common)
        attributes: dict[str, AttributeValue] = {
            "oai_adapter.tokens_out": outcome.tokens_out,
            "oai_adapter.retries": outcome.attempts - 1,
        }
        if outcome.prompt_tokens is not None:
            t.token_usage.record(outcome.prompt_tokens, {**common, "gen_ai.token.type": "input"})
            attributes["gen_ai.usage.input_tokens"] = outcome.prompt_tokens
        if outcome.completion_tokens is not None:
            t.token_usage.record(
                outcome.completion_tokens, {**common, "gen_ai.token.type": "output"}
            )
            attributes["gen_ai.usage.output_tokens"] = outcome.completion_tokens
        if outcome.error_kind is None:
            attributes["gen_ai.response.finish_reasons"] = (outcome.reason,)
        else:
            attributes["error.type"] = outcome.error_kind
            span.set_status(Status(StatusCode.ERROR, outcome.reason))
        span.set_attributes(attributes)
        span.end()
