"""Logging (OC-ADAPT-OAI-6030, 6031; shared/spec/log-fields.md): off until enabled; every record
of a task carries exactly the standard fields; one narration record per step at its level; the
correlation id is the same on every attempt and every record; no headers in ERROR records."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from loguru import logger
from trio.testing import MockClock

from oai_adapter import (
    End,
    ErrorKind,
    OpenAIAdapter,
    RetryPolicy,
    TaskRequest,
    Token,
)
from oai_adapter._log import ERROR_FIELDS, TASK_FIELDS, new_correlation_id
from oai_adapter.testing import FakeUpstream, Reply, Send, chat_chunk, sse

from .conftest import IO_DEADLINE, make_config
from .helpers import collect

Record = dict[str, Any]


@pytest.fixture
def records() -> Iterator[list[Record]]:
    """Every record the library writes, at every level, while the test runs."""
    got: list[Record] = []
    logger.enable("oai_adapter")
    sink = logger.add(
        lambda message: got.append(message.record),
        level="TRACE",
        filter="oai_adapter",
        format="{message}",
    )
    try:
        yield got
    finally:
        logger.remove(sink)
        logger.disable("oai_adapter")


def narration(records: list[Record]) -> list[tuple[str, str]]:
    """(level, first word(s) of the message) per record, in order."""
    out = []
    for r in records:
        head = re.split(r" \(|:", r["message"], maxsplit=1)[0]
        out.append((r["level"].name, head))
    return out


def keys(record: Record) -> set[str]:
    return set(record["extra"])


TASK = set(TASK_FIELDS)
TASK_AND_ERROR = TASK | set(ERROR_FIELDS)


_SILENT_THEN_ENABLED = """
import trio
from loguru import logger
from oai_adapter import AdapterConfig, OpenAIAdapter, TaskRequest
from oai_adapter.testing import open_upstream

got = []
logger.add(lambda m: got.append(m.record["name"]), level="TRACE")

async def task(adapter, task_id):
    async with adapter.submit(TaskRequest(task_id=task_id, prompt="hi")) as events:
        async for _ in events:
            pass

async def main():
    with trio.fail_after(20):
        async with open_upstream() as up:
            config = AdapterConfig(base_url=up.base_url, model=up.model)
            async with OpenAIAdapter(config) as adapter:
                await adapter.health()
                await task(adapter, "quiet")
                assert not [n for n in got if n.startswith("oai_adapter")], got
                logger.enable("oai_adapter")
                await task(adapter, "loud")
                assert [n for n in got if n.startswith("oai_adapter")], got

trio.run(main)
"""


def test_library_is_silent_until_the_application_enables_it() -> None:
    """In a fresh interpreter, so no other test's `enable` can hide a missing `disable`."""
    done = subprocess.run(
        [sys.executable, "-c", _SILENT_THEN_ENABLED],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_every_record_of_a_task_has_exactly_the_standard_fields(
    upstream: FakeUpstream, records: list[Record]
) -> None:
    config = make_config(upstream, pool_id="pool-a", replica_id="r-7")
    async with OpenAIAdapter(config) as adapter:
        events = await collect(adapter, TaskRequest(task_id="t-1", prompt="hi", session_id="s-9"))
    tokens = sum(isinstance(e, Token) for e in events)
    assert records
    for r in records:
        assert keys(r) == TASK, r["message"]
        extra = r["extra"]
        assert extra["job_id"] == "t-1"
        assert extra["session_id"] == "s-9"
        assert extra["engine"] == "openai-http"
        assert extra["engine_version"] is None  # not probed yet
        assert (extra["pool_id"], extra["replica_id"]) == ("pool-a", "r-7")
        assert (extra["model"], extra["api"]) == (upstream.model, "chat")
        assert extra["attempt"] == 1
        assert extra["queue_position"] is None
        assert extra["predicted_start_ms"] is None
    end = records[-1]["extra"]
    assert end["tokens_out"] == tokens
    assert end["tokens_in"] == 1  # the upstream's usage: one prompt word
    assert end["ttft_ms"] is not None
    assert end["decode_time_ms"] is not None


@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_a_task_is_narrated_once_per_step_never_per_token(
    upstream: FakeUpstream, records: list[Record]
) -> None:
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        upstream.tokens = ["a"] * 3
        await collect(adapter, TaskRequest(task_id="few", prompt="hi"))
        few = narration(records)
        records.clear()
        upstream.tokens = ["a"] * 300
        await collect(adapter, TaskRequest(task_id="many", prompt="hi"))
        many = narration(records)
    assert (
        few == many == [("DEBUG", "request sent"), ("INFO", "stream accepted"), ("INFO", "ended")]
    )
    assert "tokens_out 300" in records[-1]["message"]


@pytest.mark.req("OC-ADAPT-OAI-6030")
async def test_retries_are_narrated_once_each_at_warning_with_the_error_fields(
    upstream: FakeUpstream, records: list[Record]
) -> None:
    upstream.script(
        Reply.status_only(503, {"error": {"message": "busy"}}),
        Reply.status_only(429, {"error": {"message": "slow down"}}, retry_after_ms="20"),
        Reply(),
    )
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        await collect(adapter, TaskRequest(task_id="r", prompt="hi"))
    assert narration(records) == [
        ("DEBUG", "request sent"),
        ("WARNING", "attempt 1 failed"),
        ("DEBUG", "request sent"),
        ("WARNING", "attempt 2 failed"),
        ("DEBUG", "request sent"),
        ("INFO", "stream accepted"),
        ("INFO", "ended"),
    ]
    assert [r["extra"]["attempt"] for r in records] == [1, 1, 2, 2, 3, 3, 3]
    retries = [r for r in records if r["level"].name == "WARNING"]
    for r in retries:
        assert keys(r) == TASK_AND_ERROR
        assert r["extra"]["retryable"] is True
    assert [(r["extra"]["error_kind"], r["extra"]["status"]) for r in retries] == [
        ("POOL_UNAVAILABLE", 503),
        ("ADMISSION_REJECT", 429),
    ]
    assert [r["extra"]["retry_after_ms"] for r in retries] == [None, 20]
    assert "retrying in 20 ms" in retries[1]["message"]
    for r in records:
        if r["level"].name != "WARNING":
            assert keys(r) == TASK


@pytest.mark.req("OC-ADAPT-OAI-6031")
async def test_correlation_id_is_identical_on_every_attempt_and_every_record(
    upstream: FakeUpstream, records: list[Record]
) -> None:
    upstream.script(Reply.status_only(503), Reply.status_only(502), Reply())
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        await collect(adapter, TaskRequest(task_id="c", prompt="hi", correlation_id="corr-42"))
    sent = [r.headers.get("x-correlation-id") for r in upstream.completion_requests()]
    assert sent == ["corr-42"] * 3
    assert {r["extra"]["correlation_id"] for r in records} == {"corr-42"}
    assert len(records) == 7  # 3 sent, 2 retries, accepted, ended


async def test_a_missing_correlation_id_is_generated_as_uuid4_hex_and_kept_across_attempts(
    upstream: FakeUpstream, records: list[Record]
) -> None:
    upstream.script(Reply.status_only(503), Reply())
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        await collect(adapter, TaskRequest(task_id="g1", prompt="hi"))
        await collect(adapter, TaskRequest(task_id="g2", prompt="hi"))
    sent = [r.headers["x-correlation-id"] for r in upstream.completion_requests()]
    first, retried, second = sent
    assert first == retried != second
    for value in (first, second):
        assert len(value) == 32
        assert uuid.UUID(hex=value).version == 4
        assert value == uuid.UUID(hex=value).hex
    by_task = {
        job: {r["extra"]["correlation_id"] for r in records if r["extra"]["job_id"] == job}
        for job in ("g1", "g2")
    }
    assert by_task == {"g1": {first}, "g2": {second}}


@pytest.mark.req("OC-ADAPT-OAI-6020")
async def test_an_error_is_narrated_once_at_error_with_its_fields_and_no_headers(
    upstream: FakeUpstream, records: list[Record]
) -> None:
    upstream.script(
        Reply(
            status=500,
            headers=(("x-backend-trace", "hdr-value-6f1c"), ("set-cookie", "sid=cookie-77")),
            body=b'{"error": {"message": "the model crashed", "type": "server_error"}}',
            steps=(),
            content_type="application/json",
        )
    )
    async with OpenAIAdapter(make_config(upstream, api_key="sk-test-abcdefghijkl")) as adapter:
        events = await collect(adapter, TaskRequest(task_id="e", prompt="hi"))
    end = events[-1]
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.UPSTREAM_ERROR
    assert narration(records) == [
        ("DEBUG", "request sent"),
        ("ERROR", "error UPSTREAM_ERROR"),
        ("INFO", "ended"),
    ]
    error = records[1]
    assert keys(error) == TASK_AND_ERROR
    assert error["extra"]["error_kind"] == "UPSTREAM_ERROR"
    assert error["extra"]["status"] == 500
    assert error["extra"]["retryable"] is False
    assert error["extra"]["retry_after_ms"] is None
    assert "the model crashed" in error["message"]
    assert error["exception"] is None
    text = (error["message"] + repr(error["extra"])).lower()
    for header in (
        "x-backend-trace",
        "hdr-value-6f1c",
        "set-cookie",
        "cookie-77",
        "content-type",
        "authorization",
        "bearer",
        "x-request-id",
        "server:",
        "fake-upstream",
        "sk-test-abcdefghijkl",
    ):
        assert header not in text


async def test_an_error_inside_the_stream_is_narrated_with_its_kind(
    upstream: FakeUpstream, records: list[Record]
) -> None:
    upstream.script(
        Reply(
            steps=[
                Send(sse(chat_chunk("one"))),
                Send(sse({"error": {"message": "oops", "type": "server_error"}})),
            ]
        )
    )
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        await collect(adapter, TaskRequest(task_id="mid", prompt="hi"))
    assert narration(records) == [
        ("DEBUG", "request sent"),
        ("INFO", "stream accepted"),
        ("ERROR", "error UPSTREAM_ERROR"),
        ("INFO", "ended"),
    ]
    assert records[2]["extra"]["tokens_out"] == 1
    assert keys(records[2]) == TASK_AND_ERROR
    assert keys(records[3]) == TASK


async def test_a_cancel_is_narrated_once_with_the_tokens_delivered(
    upstream: FakeUpstream, records: list[Record], loopback_clock: MockClock
) -> None:
    upstream.pace = 1.0
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="x", prompt="hi")) as events:
                delivered = 0
                async for ev in events:
                    if isinstance(ev, Token):
                        delivered += 1
                        if delivered == 2:
                            assert adapter.cancel("x")
                    elif isinstance(ev, End):
                        assert ev.reason == "cancelled"
    assert narration(records) == [
        ("DEBUG", "request sent"),
        ("INFO", "stream accepted"),
        ("INFO", "cancelled"),
    ]
    assert records[-1]["message"] == "cancelled (2 tokens delivered before the cancel)"
    assert records[-1]["extra"]["tokens_out"] == 2
    assert keys(records[-1]) == TASK


async def test_leaving_the_submit_block_early_is_narrated_as_one_cancel(
    upstream: FakeUpstream, records: list[Record], loopback_clock: MockClock
) -> None:
    upstream.pace = 1.0
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="b", prompt="hi")) as events:
                async for ev in events:
                    if isinstance(ev, Token):
                        break
    assert narration(records)[-1] == ("INFO", "cancelled")
    assert [level for level, head in narration(records)].count("INFO") == 2
    assert "left the submit block; 1 tokens delivered" in records[-1]["message"]
    assert keys(records[-1]) == TASK


async def test_leaving_after_the_upstream_finished_adds_no_cancel_record(
    upstream: FakeUpstream, records: list[Record]
) -> None:
    async with OpenAIAdapter(make_config(upstream)) as adapter:
        with trio.fail_after(IO_DEADLINE):
            async with adapter.submit(TaskRequest(task_id="m", prompt="hi")) as events:
                async for ev in events:
                    if type(ev).__name__ == "Metrics":
                        break  # the reader has made its End: the task ended, not cancelled
    assert narration(records)[-1] == ("INFO", "ended")
    assert not [r for r in records if r["message"].startswith("cancelled")]


@pytest.mark.req("OC-ADAPT-OAI-6010")
async def test_engine_version_is_logged_once_known(
    adapter: OpenAIAdapter, records: list[Record]
) -> None:
    await collect(adapter, TaskRequest(task_id="before", prompt="hi"))
    version = await adapter.engine_version()
    records.clear()
    await collect(adapter, TaskRequest(task_id="after", prompt="hi"))
    assert version.engine == "llama.cpp"
    assert {r["extra"]["engine_version"] for r in records} == {"llama.cpp b1-0c1e570"}


@pytest.mark.req("OC-ADAPT-OAI-6030")
async def test_probe_retries_carry_the_adapter_fields_with_task_ones_none(
    upstream: FakeUpstream, records: list[Record], loopback_clock: MockClock
) -> None:
    upstream.loading = True
    config = make_config(
        upstream, retry=RetryPolicy(max_attempts=2, base=0.01, cap=0.05), pool_id="p"
    )
    async with OpenAIAdapter(config) as adapter:
        health = await adapter.health()
    assert not health.ready
    retries = [r for r in records if r["level"].name == "WARNING"]
    assert retries
    for r in retries:
        assert keys(r) == TASK_AND_ERROR | {"probe"}
        extra = r["extra"]
        assert extra["probe"] in ("/v1/models", "/health")
        assert extra["attempt"] == 1
        assert (extra["error_kind"], extra["status"]) == ("POOL_UNAVAILABLE", 503)
        assert (extra["engine"], extra["pool_id"], extra["model"]) == (
            "openai-http",
            "p",
            "test-model",
        )
        for field in ("job_id", "session_id", "correlation_id", "tokens_out", "ttft_ms"):
            assert extra[field] is None


@pytest.mark.req("OC-ADAPT-OAI-6020")
async def test_json_lines_sink_gets_every_field_and_no_key(records: list[Record]) -> None:
    """The JSON-lines recipe of docs/observability.md (`serialize=True`): one JSON object per
    record, the standard fields under `record.extra`, the key redacted even where the upstream
    echoed it in its error body."""
    wrong_key = "sk-proj-wrongkey0123456789"
    out = io.StringIO()
    sink = logger.add(out, serialize=True, level="DEBUG", filter="oai_adapter")
    try:
        async with trio.open_nursery() as nursery:
            upstream = FakeUpstream(api_key="sk-proj-rightkey0123456789")
            await nursery.start(upstream.serve)
            config = make_config(upstream, api_key=wrong_key)
            async with OpenAIAdapter(config) as adapter:
                events = await collect(adapter, TaskRequest(task_id="j", prompt="hi"))
            nursery.cancel_scope.cancel()
    finally:
        logger.remove(sink)
    end = events[-1]
    assert isinstance(end, End)
    assert end.error is not None
    assert end.error.kind is ErrorKind.UPSTREAM_AUTH
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["record"]["level"]["name"] for line in lines] == ["DEBUG", "ERROR", "INFO"]
    for line in lines:
        extra = line["record"]["extra"]
        assert set(extra) >= TASK
        assert extra["job_id"] == "j"
    assert "Incorrect API key provided: ****" in lines[1]["text"]
    assert wrong_key not in out.getvalue()


def test_a_generated_correlation_id_is_what_uuid4_hex_gives() -> None:
    # made without the `UUID` object (set-up CPU): the same 32 hex digits, version and variant
    ids = [new_correlation_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, value)
