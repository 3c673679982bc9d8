"""Retries (DESIGN.md, "Retries"; OC-ADAPT-OAI-6002, 6030): only the "yes" rows, only before
`Started`; full jitter `uniform(0, min(cap, base·2ⁿ))`; `Retry-After` / `retry-after-ms`
honoured and clipped to `cap`; `max_attempts` counts every attempt; a WARNING per retry.

The jitter is made exact by replacing `adapter.rng` with one that returns the ceiling it was
given, and time runs on `loopback_clock`, so the gap between two attempts as the upstream saw
them *is* the backoff.
"""

from __future__ import annotations

import email.utils
import itertools
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger
from trio.testing import MockClock

from oai_adapter import (
    AdapterConfig,
    End,
    ErrorKind,
    Metrics,
    OpenAIAdapter,
    RetryPolicy,
    Started,
    TaskRequest,
    Timeouts,
    Token,
)
from oai_adapter._events import Event
from oai_adapter._retry import MAX_RETRY_AFTER_MS, retry_after_ms
from oai_adapter.testing import FakeUpstream, Fault, Reply, check_stream

from .expected_errors import NOT_RETRIED_STATUSES, RETRIED_STATUSES, expected_kind

DEADLINE = 600  # trio seconds, free under loopback_clock
POLICY = RetryPolicy(max_attempts=4, base=0.1, cap=0.3)


class CeilingRng(random.Random):
    """`uniform(a, b)` returns `b` and records `(a, b)`: the jitter at its ceiling."""

    def __init__(self) -> None:
        super().__init__(0)
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b


def config(upstream: FakeUpstream, policy: RetryPolicy = POLICY, **kw: Any) -> AdapterConfig:
    return AdapterConfig(
        base_url=upstream.base_url,
        model=upstream.model,
        retry=policy,
        timeouts=Timeouts(first_token=5.0, idle=2.0, total=60.0),
        **kw,
    )


@pytest.fixture
def warnings_logged() -> Iterator[list[dict[str, Any]]]:
    """The WARNING records the library writes during the test."""
    records: list[dict[str, Any]] = []
    logger.enable("oai_adapter")
    sink = logger.add(
        lambda m: records.append(m.record),
        level="WARNING",
        filter=lambda r: r["level"].name == "WARNING",
        format="{message}",
    )
    try:
        yield records
    finally:
        logger.remove(sink)
        logger.disable("oai_adapter")


async def run_one(
    upstream: FakeUpstream, policy: RetryPolicy = POLICY, rng: random.Random | None = None
) -> tuple[list[Event], CeilingRng | random.Random]:
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(config(upstream, policy)) as adapter:
            adapter.rng = rng or CeilingRng()
            async with adapter.submit(TaskRequest(task_id="r", prompt="hi")) as events:
                seen = [ev async for ev in events]
    check_stream(seen, tokens=upstream.tokens)
    return seen, adapter.rng


def gaps(upstream: FakeUpstream) -> list[float]:
    times = [r.at for r in upstream.completion_requests()]
    return [b - a for a, b in itertools.pairwise(times)]


def end_error(events: list[Event]) -> tuple[End, Any]:
    end = events[-1]
    assert isinstance(end, End)
    assert end.error is not None
    return end, end.error


@pytest.mark.parametrize("status", RETRIED_STATUSES)
@pytest.mark.req("OC-ADAPT-OAI-6002", "OC-ADAPT-OAI-6030")
async def test_retryable_status_is_retried_with_capped_full_jitter(
    upstream: FakeUpstream,
    loopback_clock: MockClock,
    warnings_logged: list[dict[str, Any]],
    status: int,
) -> None:
    kind = expected_kind(status)
    upstream.script(Fault.status(status), Fault.status(status), Fault.status(status))
    events, rng = await run_one(upstream)
    assert isinstance(rng, CeilingRng)
    # ceilings min(cap, base·2ⁿ) for n = 1, 2, 3: 0.2, 0.3 (capped), 0.3 (capped)
    assert rng.calls == [(0.0, pytest.approx(0.2)), (0.0, 0.3), (0.0, 0.3)]
    assert gaps(upstream) == [pytest.approx(0.2), pytest.approx(0.3), pytest.approx(0.3)]
    started, metrics = events[0], events[-2]
    assert isinstance(started, Started)
    assert started.attempt == 4
    assert isinstance(metrics, Metrics)
    assert metrics.retries == 3
    assert [r["extra"]["attempt"] for r in warnings_logged] == [1, 2, 3]
    for record, delay_ms in zip(warnings_logged, (200, 300, 300), strict=True):
        extra = record["extra"]
        assert extra["error_kind"] == kind.value
        assert extra["status"] == status
        assert f"retrying in {delay_ms} ms" in record["message"]
        assert f"status {status}" in record["message"]


async def test_jitter_draws_from_zero_to_the_ceiling(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    class FloorRng(CeilingRng):
        def uniform(self, a: float, b: float) -> float:
            self.calls.append((a, b))
            return a

    upstream.script(Fault.status(503), Fault.status(503))
    events, rng = await run_one(upstream, rng=FloorRng())
    assert isinstance(rng, CeilingRng)
    assert [a for a, _ in rng.calls] == [0.0, 0.0]
    assert gaps(upstream) == [0.0, 0.0]  # full jitter may retry at once
    assert isinstance(events[0], Started)


async def test_seeded_jitter_stays_under_the_ceiling(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(*[Fault.status(503)] * 3)
    await run_one(upstream, rng=random.Random(1234))
    for gap, ceiling in zip(gaps(upstream), (0.2, 0.3, 0.3), strict=True):
        assert 0.0 <= gap <= ceiling + 1e-9


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "delay"),
    [
        ({"retry_after": "0.15"}, 0.15),
        ({"retry_after": "0"}, 0.0),
        ({"retry_after": "120"}, 0.3),  # clipped to cap
        ({"retry_after_ms": "50"}, 0.05),
        ({"retry_after_ms": "100000"}, 0.3),  # clipped to cap
        ({"retry_after_ms": "40", "retry_after": "0.2"}, 0.04),  # the ms header wins
        ({"retry_after": _http_date(3600)}, 0.3),  # an HTTP date, clipped
        ({"retry_after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({"retry_after": "soon"}, 0.2),  # unparsable: the jitter's ceiling
        ({"retry_after": "1e308"}, 0.3),  # overflowed int(seconds * 1000) (issue 14)
        ({"retry_after_ms": "1e308"}, 0.3),
        ({"retry_after": "-1e308"}, 0.0),
        ({"retry_after": "Fri, 31 Dec 9999 23:59:59 GMT"}, 0.3),
    ],
)
@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_retry_after_is_honoured_and_clipped_to_cap(
    upstream: FakeUpstream, loopback_clock: MockClock, headers: dict[str, str], delay: float
) -> None:
    upstream.script(Fault.status(429, **headers))
    events, _ = await run_one(upstream)
    assert gaps(upstream) == [pytest.approx(delay, abs=0.002)]
    assert isinstance(events[0], Started)
    assert events[0].attempt == 2


async def test_retry_after_of_the_last_attempt_is_reported(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(*[Fault.status(429, retry_after="7")] * 2)
    events, _ = await run_one(upstream, RetryPolicy(max_attempts=2, base=0.1, cap=0.3))
    _, error = end_error(events)
    assert len(events) == 1
    assert (error.kind, error.status, error.retryable) == (ErrorKind.ADMISSION_REJECT, 429, True)
    assert error.retry_after_ms == 7000  # the upstream's ask, not the clipped delay


@pytest.mark.parametrize("max_attempts", [1, 2, 5])
@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_max_attempts_counts_every_attempt(
    upstream: FakeUpstream,
    loopback_clock: MockClock,
    warnings_logged: list[dict[str, Any]],
    max_attempts: int,
) -> None:
    upstream.script(*[Fault.status(503)] * 10)
    events, _ = await run_one(upstream, RetryPolicy(max_attempts=max_attempts, base=0.1, cap=0.3))
    _, error = end_error(events)
    assert len(events) == 1
    assert error.kind is ErrorKind.POOL_UNAVAILABLE
    assert error.retryable is True
    assert len(upstream.completion_requests()) == max_attempts
    assert len(warnings_logged) == max_attempts - 1


@pytest.mark.parametrize("status", NOT_RETRIED_STATUSES)
async def test_non_retryable_status_is_not_retried(
    upstream: FakeUpstream,
    loopback_clock: MockClock,
    warnings_logged: list[dict[str, Any]],
    status: int,
) -> None:
    kind = expected_kind(status)
    # even when the upstream asks for a retry
    upstream.script(Fault.status(status, retry_after="1"), Fault.ok())
    events, _ = await run_one(upstream)
    _, error = end_error(events)
    assert (error.kind, error.status, error.retryable) == (kind, status, False)
    assert len(upstream.completion_requests()) == 1
    assert warnings_logged == []


MID_STREAM_FAULTS = [
    pytest.param(Fault.reset_after(2), ErrorKind.WORKER_RESET, id="reset"),
    pytest.param(Fault.eof_after(2), ErrorKind.WORKER_RESET, id="eof"),
    pytest.param(Fault.stall_after(2), ErrorKind.DECODE_TIMEOUT, id="stall"),
    pytest.param(Fault.keepalive_drip(0.1, after_tokens=2), ErrorKind.DECODE_TIMEOUT, id="drip"),
    pytest.param(Fault.malformed(after_tokens=2), ErrorKind.PROTOCOL, id="malformed"),
    pytest.param(
        Fault.error_event(after_tokens=2, type="rate_limit_error"),
        ErrorKind.UPSTREAM_ERROR,
        id="rate-limit-event",
    ),
    pytest.param(
        Fault.error_event(after_tokens=2, type=None, code=503),
        ErrorKind.UPSTREAM_ERROR,
        id="503-event",
    ),
    pytest.param(
        Fault.error_event(after_tokens=0, type="overloaded"),
        ErrorKind.UPSTREAM_ERROR,
        id="overloaded-after-role-delta",
    ),
]


@pytest.mark.parametrize(("fault", "kind"), MID_STREAM_FAULTS)
@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_no_retry_once_started_whatever_fails(
    upstream: FakeUpstream,
    loopback_clock: MockClock,
    warnings_logged: list[dict[str, Any]],
    fault: Reply,
    kind: ErrorKind,
) -> None:
    upstream.script(fault, Fault.ok())
    events, _ = await run_one(upstream)
    end, error = end_error(events)
    assert isinstance(events[0], Started)
    assert events[0].attempt == 1
    assert error.kind is kind
    assert error.retryable is False
    assert len(upstream.completion_requests()) == 1
    assert warnings_logged == []
    assert end.tokens_out == sum(isinstance(ev, Token) for ev in events)


FIRST_EVENT_ERRORS = [
    pytest.param({"type": "rate_limit_error"}, ErrorKind.ADMISSION_REJECT, True, id="rate_limit"),
    pytest.param(
        {"type": None, "code": "rate_limit_exceeded"},
        ErrorKind.ADMISSION_REJECT,
        True,
        id="rate_limit_exceeded",
    ),
    pytest.param({"type": None, "code": 429}, ErrorKind.ADMISSION_REJECT, True, id="code-429"),
    pytest.param({"type": "overloaded"}, ErrorKind.POOL_UNAVAILABLE, True, id="overloaded"),
    pytest.param({"type": None, "code": 503}, ErrorKind.POOL_UNAVAILABLE, True, id="code-503"),
    pytest.param({"type": "server_error"}, ErrorKind.UPSTREAM_ERROR, False, id="server_error"),
    pytest.param(
        {"type": None, "code": "model_not_found"},
        ErrorKind.UPSTREAM_NOT_FOUND,
        False,
        id="model_not_found",
    ),
    pytest.param(
        {"type": "invalid_request_error"}, ErrorKind.INVALID_PARAMS, False, id="invalid_request"
    ),
]


@pytest.mark.parametrize(("fields", "kind", "retried"), FIRST_EVENT_ERRORS)
async def test_error_as_first_event_stands_for_its_status(
    upstream: FakeUpstream,
    loopback_clock: MockClock,
    fields: dict[str, Any],
    kind: ErrorKind,
    retried: bool,
) -> None:
    upstream.script(Fault.error_event(**fields), Fault.ok())
    events, _ = await run_one(upstream)
    if retried:
        assert isinstance(events[0], Started)
        assert events[0].attempt == 2
        assert len(upstream.completion_requests()) == 2
    else:
        _, error = end_error(events)
        assert len(events) == 1  # never started
        assert (error.kind, error.retryable) == (kind, False)
        assert len(upstream.completion_requests()) == 1


async def test_error_as_first_event_on_every_attempt_reports_its_kind(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(*[Fault.error_event(type="rate_limit_error")] * 4)
    events, _ = await run_one(upstream)
    _, error = end_error(events)
    assert len(events) == 1
    assert (error.kind, error.retryable) == (ErrorKind.ADMISSION_REJECT, True)
    assert len(upstream.completion_requests()) == POLICY.max_attempts


async def test_connection_lost_before_the_headers_is_retried(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(Fault.reset_before_headers(), Fault.garbage_before_headers(), Fault.ok())
    events, _ = await run_one(upstream)
    assert isinstance(events[0], Started)
    assert events[0].attempt == 3


async def test_connect_refused_is_retried_then_pool_unavailable(
    loopback_clock: MockClock,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    cfg = AdapterConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", retry=POLICY)
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(cfg) as adapter:
            rng = adapter.rng = CeilingRng()
            async with adapter.submit(TaskRequest(task_id="r", prompt="hi")) as events:
                seen = [ev async for ev in events]
    _, error = end_error(seen)
    assert len(seen) == 1
    assert (error.kind, error.retryable) == (ErrorKind.POOL_UNAVAILABLE, True)
    assert len(rng.calls) == POLICY.max_attempts - 1


# --- probes: idempotent GETs, retried on the same rows -----------------------------------------


@pytest.mark.req("OC-ADAPT-OAI-6002")
async def test_health_of_a_loading_upstream_retries_then_reports_not_ready(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.loading = True
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(config(upstream)) as adapter:
            adapter.rng = rng = CeilingRng()
            health = await adapter.health()
    assert (health.live, health.ready) == (True, False)
    assert "Loading model" in health.detail
    models = [r for r in upstream.requests if r.path == "/v1/models"]
    assert len(models) == POLICY.max_attempts
    assert [b for _, b in rng.calls] == [pytest.approx(0.2), 0.3, 0.3]


async def test_health_of_a_refused_connection_is_not_live_after_retries(
    loopback_clock: MockClock,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = AdapterConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", retry=POLICY)
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(cfg) as adapter:
            adapter.rng = rng = CeilingRng()
            health = await adapter.health()
    assert (health.live, health.ready) == (False, False)
    assert "POOL_UNAVAILABLE" in health.detail
    assert len(rng.calls) == POLICY.max_attempts - 1


async def test_probe_is_not_retried_on_a_non_retryable_status(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    upstream = FakeUpstream(api_key="right-key")
    await nursery.start(upstream.serve)
    with trio.fail_after(DEADLINE):
        async with OpenAIAdapter(config(upstream, api_key="wrong-key")) as adapter:
            adapter.rng = rng = CeilingRng()
            health = await adapter.health()
    assert (health.live, health.ready) == (True, False)
    assert rng.calls == []
    assert len([r for r in upstream.requests if r.path == "/v1/models"]) == 1


@settings(deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["retry-after", "retry-after-ms", "x-other"]),
        st.one_of(
            st.text(),
            st.floats().map(repr),
            st.integers().map(str),
            st.datetimes().map(lambda d: email.utils.format_datetime(d)),
        ),
    )
)
@pytest.mark.req("OC-ADAPT-OAI-6002")
def test_retry_after_ms_never_raises_and_is_bounded(headers: dict[str, str]) -> None:
    delay = retry_after_ms(headers)
    assert delay is None or (isinstance(delay, int) and 0 <= delay <= MAX_RETRY_AFTER_MS)
