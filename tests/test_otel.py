"""The `otel` extra: OpenTelemetry GenAI semantic-convention metrics and a span per task, read
back through the SDK's in-memory reader and exporter; and no opentelemetry import without it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from trio.testing import MockClock

from oai_adapter import End, OpenAIAdapter, TaskRequest, Token
from oai_adapter.otel import instrument, uninstrument
from oai_adapter.testing import FakeUpstream, Reply

from .conftest import IO_DEADLINE, make_config
from .helpers import collect


class Telemetry:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))

    def instrument(self, adapter: OpenAIAdapter) -> None:
        instrument(adapter, meter_provider=self.meters, tracer_provider=self.tracers)

    def metrics(self) -> dict[str, tuple[str, list[HistogramDataPoint]]]:
        """name → (unit, data points)."""
        data = self.reader.get_metrics_data()
        out: dict[str, tuple[str, list[HistogramDataPoint]]] = {}
        if data is None:
            return out
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "oai_adapter"
                for metric in scope.metrics:
                    points = list(metric.data.data_points)
                    assert all(isinstance(p, HistogramDataPoint) for p in points)
                    out[metric.name] = (metric.unit or "", points)  # type: ignore[assignment]
        return out

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.meters.shutdown()
    t.tracers.shutdown()


def attrs(point: Any) -> dict[str, Any]:
    return dict(point.attributes)


def test_import_oai_adapter_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, oai_adapter, oai_adapter.testing\n"
        "from oai_adapter import AdapterConfig, OpenAIAdapter\n"
        "OpenAIAdapter(AdapterConfig(base_url='http://127.0.0.1:1/v1', model='m'))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
        "import oai_adapter.otel\n"
        "assert 'opentelemetry.metrics' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_metric_names_units_and_attributes_follow_the_genai_conventions(
    nursery: trio.Nursery, otel: Telemetry, loopback_clock: MockClock
) -> None:
    upstream = FakeUpstream(tokens=["a", "b", "c", "d", "e"], pace=0.25)
    await nursery.start(upstream.serve)
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        otel.instrument(adapter)
        await collect(adapter, TaskRequest(task_id="m", prompt="one two three"))
    got = otel.metrics()
    assert {name: unit for name, (unit, _) in got.items()} == {
        "gen_ai.client.operation.duration": "s",
        "gen_ai.client.token.usage": "{token}",
        "gen_ai.client.operation.time_to_first_chunk": "s",
        "gen_ai.client.operation.time_per_output_chunk": "s",
    }
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "test-model",
        "server.address": "127.0.0.1",
        "server.port": upstream.port,
    }
    for name in (
        "gen_ai.client.operation.duration",
        "gen_ai.client.operation.time_to_first_chunk",
        "gen_ai.client.operation.time_per_output_chunk",
    ):
        (point,) = got[name][1]
        assert attrs(point) == common
        assert point.count == 1
    (duration,) = got["gen_ai.client.operation.duration"][1]
    assert duration.sum == 5 * 0.25  # exact: virtual time (loopback_clock)
    assert duration.explicit_bounds[:3] == (0.01, 0.02, 0.04)
    (first,) = got["gen_ai.client.operation.time_to_first_chunk"][1]
    assert first.sum == 0.25
    (per_chunk,) = got["gen_ai.client.operation.time_per_output_chunk"][1]
    assert per_chunk.sum == 0.25  # decode 1 s over 4 gaps
    usage = {attrs(p)["gen_ai.token.type"]: p for p in got["gen_ai.client.token.usage"][1]}
    assert set(usage) == {"input", "output"}
    assert (usage["input"].sum, usage["output"].sum) == (3, 5)
    for p in usage.values():
        assert attrs(p) == common | {"gen_ai.token.type": attrs(p)["gen_ai.token.type"]}
        assert p.explicit_bounds[:3] == (1, 4, 16)


@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_each_task_has_one_client_span_with_the_genai_attributes(
    upstream: FakeUpstream, otel: Telemetry
) -> None:
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        otel.instrument(adapter)
        req = TaskRequest(
            task_id="s1", prompt="a b", max_tokens=3, temperature=0.5, correlation_id="corr-1"
        )
        events = await collect(adapter, req)
    assert sum(isinstance(e, Token) for e in events) == 3
    (span,) = otel.spans()
    assert span.name == "chat test-model"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    a = dict(span.attributes or {})
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "test-model"
    assert a["gen_ai.request.max_tokens"] == 3
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.usage.input_tokens"] == 2
    assert a["gen_ai.usage.output_tokens"] == 3
    assert a["gen_ai.response.finish_reasons"] == ("length",)
    assert a["oai_adapter.task_id"] == "s1"
    assert a["oai_adapter.correlation_id"] == "corr-1"
    assert "error.type" not in a


async def test_legacy_completions_are_text_completion_operations(
    upstream: FakeUpstream, otel: Telemetry
) -> None:
    async with OpenAIAdapter(make_config(upstream, api="completions")) as adapter:
        otel.instrument(adapter)
        await collect(adapter, TaskRequest(task_id="c", prompt="hi"))
    (span,) = otel.spans()
    assert span.name == "text_completion test-model"
    (point,) = otel.metrics()["gen_ai.client.operation.duration"][1]
    assert attrs(point)["gen_ai.operation.name"] == "text_completion"


async def test_a_failed_task_records_error_type_on_its_span_and_duration(
    upstream: FakeUpstream, otel: Telemetry
) -> None:
    upstream.script(Reply.status_only(400, {"error": {"message": "bad temperature"}}))
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        otel.instrument(adapter)
        events = await collect(adapter, TaskRequest(task_id="f", prompt="hi"))
    end = events[-1]
    assert isinstance(end, End)
    assert end.reason == "error"
    (span,) = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    a = dict(span.attributes or {})
    assert a["error.type"] == "INVALID_PARAMS"
    assert "gen_ai.response.finish_reasons" not in a
    assert "gen_ai.usage.input_tokens" not in a
    got = otel.metrics()
    (point,) = got["gen_ai.client.operation.duration"][1]
    assert attrs(point)["error.type"] == "INVALID_PARAMS"
    # No token came and no usage was reported: nothing is guessed.
    assert set(got) == {"gen_ai.client.operation.duration"}


async def test_a_cancelled_task_ends_its_span_once_as_cancelled(
    nursery: trio.Nursery, otel: Telemetry, loopback_clock: MockClock
) -> None:
    upstream = FakeUpstream(pace=1.0)
    await nursery.start(upstream.serve)
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        otel.instrument(adapter)
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="x", prompt="hi")) as events:
                async for ev in events:
                    if isinstance(ev, Token):
                        assert adapter.cancel("x")
    (span,) = otel.spans()
    assert dict(span.attributes or {})["error.type"] == "CANCELLED"
    assert dict(span.attributes or {})["oai_adapter.tokens_out"] == 1
    (point,) = otel.metrics()["gen_ai.client.operation.duration"][1]
    assert attrs(point)["error.type"] == "CANCELLED"
    assert point.sum == 1.0  # cancelled right after the first token, one pace in


async def test_leaving_the_submit_block_early_still_ends_the_span(
    nursery: trio.Nursery, otel: Telemetry, loopback_clock: MockClock
) -> None:
    upstream = FakeUpstream(pace=1.0)
    await nursery.start(upstream.serve)
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        otel.instrument(adapter)
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="b", prompt="hi")) as events:
                async for _ in events:
                    break
    (span,) = otel.spans()
    assert span.end_time is not None
    assert dict(span.attributes or {})["error.type"] == "CANCELLED"


async def test_uninstrument_stops_recording_new_tasks(
    upstream: FakeUpstream, otel: Telemetry
) -> None:
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        otel.instrument(adapter)
        await collect(adapter, TaskRequest(task_id="1", prompt="hi"))
        uninstrument(adapter)
        await collect(adapter, TaskRequest(task_id="2", prompt="hi"))
    assert [dict(s.attributes or {})["oai_adapter.task_id"] for s in otel.spans()] == ["1"]


def test_otel_module_all_is_complete_and_sorted() -> None:
    import oai_adapter.otel as otel_module

    assert list(otel_module.__all__) == sorted(otel_module.__all__)
    assert {
        "instrument",
        "uninstrument",
        "GenAITelemetry",
        "HostCounters",
        "instrument_host",
        "uninstrument_host",
    } == set(otel_module.__all__)


class _BrokenTaskTelemetry:
    def end(self, outcome: object) -> None:
        raise RuntimeError("exporter down")


class _BrokenTelemetry:
    def start_task(self, config: object, req: object, correlation_id: str) -> _BrokenTaskTelemetry:
        return _BrokenTaskTelemetry()


async def test_a_failing_telemetry_does_not_break_the_task(upstream: FakeUpstream) -> None:
    from loguru import logger

    got: list[Any] = []
    logger.enable("oai_adapter")
    sink = logger.add(lambda m: got.append(m.record), level="WARNING", filter="oai_adapter")
    try:
        async with OpenAIAdapter(make_config(upstream)) as adapter:
            adapter.attach_telemetry(_BrokenTelemetry())
            events = await collect(adapter, TaskRequest(task_id="t", prompt="hi"))
    finally:
        logger.remove(sink)
        logger.disable("oai_adapter")
    end = events[-1]
    assert isinstance(end, End)
    assert end.reason == "stop"
    (warning,) = got
    assert warning["message"] == "telemetry failed to record the end of the task"
    assert warning["exception"] is not None
    assert warning["extra"]["job_id"] == "t"
