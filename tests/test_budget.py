"""The retry budget (DESIGN.md "Configuration", HOST.md "Retry budget"): over any window,
retries ≤ percent/100 × submits in it + min_per_s × window; a refused retry is not made and the
task ends with the error at hand, still retryable."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from oai_adapter import (
    AdapterConfig,
    End,
    ErrorKind,
    EventStreamStatistics,
    OpenAIAdapter,
    RetryBudget,
    RetryPolicy,
    Started,
    TaskRequest,
)
from oai_adapter.testing import FakeUpstream, Fault, check_stream

from .conftest import IO_DEADLINE


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_quiet_budget_allows_its_reserve_and_no_more() -> None:
    clock = FakeClock()
    budget = RetryBudget(percent=20.0, window=10.0, min_per_s=1.0, clock=clock)
    allowed = sum(budget.try_spend() for _ in range(50))
    assert allowed == 10  # 1/s × 10 s, no submits
    stats = budget.statistics()
    assert (stats.spent, stats.refused, stats.available) == (10, 40, 0)


def test_submits_buy_a_percentage_of_retries() -> None:
    clock = FakeClock()
    budget = RetryBudget(percent=20.0, window=10.0, min_per_s=0.0, clock=clock)
    for _ in range(100):
        budget.record_submit()
    assert sum(budget.try_spend() for _ in range(100)) == 20


def test_spent_retries_leave_the_window_and_the_budget_refills() -> None:
    clock = FakeClock()
    budget = RetryBudget(percent=0.0, window=10.0, min_per_s=0.5, clock=clock)
    assert sum(budget.try_spend() for _ in range(10)) == 5
    clock.now = 5.0
    assert not budget.try_spend()  # still inside the window
    clock.now = 10.2
    assert sum(budget.try_spend() for _ in range(10)) == 5


@settings(max_examples=200, deadline=None)
@given(
    percent=st.floats(0, 100),
    min_per_s=st.floats(0, 5),
    steps=st.lists(st.tuples(st.floats(0, 3), st.integers(0, 20), st.integers(0, 20)), max_size=40),
)
def test_no_window_ever_holds_more_retries_than_the_budget_allows(
    percent: float, min_per_s: float, steps: list[tuple[float, int, int]]
) -> None:
    window = 10.0
    clock = FakeClock()
    budget = RetryBudget(percent=percent, window=window, min_per_s=min_per_s, clock=clock)
    submits: list[float] = []
    spent: list[float] = []
    for advance, n_submits, n_retries in steps:
        clock.now += advance
        for _ in range(n_submits):
            budget.record_submit()
            submits.append(clock.now)
        for _ in range(n_retries):
            if budget.try_spend():
                spent.append(clock.now)
                # the window ending now: retries in it within the allowance of submits in it
                lo = clock.now - window
                in_window = sum(1 for t in spent if t > lo)
                subs = sum(1 for t in submits if t > lo - window / 100)  # one bucket of slack
                assert in_window <= percent / 100 * subs + min_per_s * window + 1e-6


@pytest.mark.parametrize(
    ("field", "value"),
    [("budget_percent", -1.0), ("budget_window", 0.0), ("budget_min_per_s", float("nan"))],
)
def test_retry_policy_refuses_a_bad_budget_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"RetryPolicy.{field}"):
        RetryPolicy(**{field: value})


async def test_a_storm_of_failing_tasks_gets_only_the_budgeted_retries(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    # 10 tasks, every attempt a 503. Without a budget: 10 × 4 attempts. With a reserve of
    # 0.2/s over 10 s and 0 %: two retries in all, then each task ends with its 503 at once.
    upstream.script(*[Fault.status(503)] * 40)
    policy = RetryPolicy(
        max_attempts=4, base=0.001, cap=0.002, budget_percent=0.0, budget_min_per_s=0.2
    )
    config = AdapterConfig(base_url=upstream.base_url, model=upstream.model, retry=policy)
    ends: list[End] = []
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(config) as adapter:
            for i in range(10):
                async with adapter.submit(TaskRequest(task_id=f"t{i}", prompt="hi")) as events:
                    seen = [ev async for ev in events]
                check_stream(seen)
                end = seen[-1]
                assert isinstance(end, End)
                ends.append(end)
            stats = adapter.retry_budget.statistics()
    assert len(upstream.completion_requests()) == 10 + 2
    assert stats.spent == 2
    assert stats.refused == 10  # the first task's third retry, then one per later task
    for end in ends:
        assert end.error is not None
        assert end.error.kind is ErrorKind.POOL_UNAVAILABLE
        assert end.error.retryable


async def test_adapters_given_one_budget_share_it(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    upstream.script(*[Fault.status(503)] * 20)
    budget = RetryBudget(percent=0.0, window=10.0, min_per_s=0.1)
    policy = RetryPolicy(max_attempts=4, base=0.001, cap=0.002)
    config = AdapterConfig(base_url=upstream.base_url, model=upstream.model, retry=policy)
    with trio.fail_after(IO_DEADLINE):
        async with (
            OpenAIAdapter(config, retry_budget=budget) as a,
            OpenAIAdapter(config, retry_budget=budget) as b,
        ):
            for adapter in (a, b):
                async with adapter.submit(TaskRequest(task_id="t", prompt="hi")) as events:
                    check_stream([ev async for ev in events])
    # one retry in the shared reserve (0.1/s × 10 s): the first task takes it, the second none
    assert len(upstream.completion_requests()) == 3
    assert budget.statistics().spent == 1


async def test_stream_statistics_count_attempts_and_say_when_the_budget_refused_a_retry(
    upstream: FakeUpstream, loopback_clock: MockClock
) -> None:
    # One retry in the reserve: the first task makes 2 attempts and is refused a third; the
    # second is refused its first retry; the third is served at its first attempt.
    upstream.script(*[Fault.status(503)] * 3)
    policy = RetryPolicy(max_attempts=3, base=0.001, cap=0.002)
    budget = RetryBudget(percent=0.0, window=10.0, min_per_s=0.1)
    config = AdapterConfig(base_url=upstream.base_url, model=upstream.model, retry=policy)
    seen: list[EventStreamStatistics] = []
    with trio.fail_after(IO_DEADLINE):
        async with OpenAIAdapter(config, retry_budget=budget) as adapter:
            for i in range(2):
                async with adapter.submit(TaskRequest(task_id=f"t{i}", prompt="hi")) as events:
                    check_stream([ev async for ev in events])
                    seen.append(events.statistics())
            async with adapter.submit(TaskRequest(task_id="ok", prompt="hi")) as events:
                evs = [ev async for ev in events]
                check_stream(evs)
                seen.append(events.statistics())
    assert [(s.attempts, s.retry_refused) for s in seen] == [(2, True), (1, True), (1, False)]
    started = evs[0]
    assert isinstance(started, Started)
    assert started.attempt == seen[-1].attempts
