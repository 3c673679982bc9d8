"""Chaos: a few thousand streams on one adapter against the real test upstream, each attempt
meeting a random fault, consumers that cancel, break out or dawdle at random. Every stream must
keep the grammar (`Started Token* Metrics? End` or `End`, indices consecutive, `tokens_out`
right), deliver a prefix of the upstream's text with no token lost or duplicated, end as
`cancelled` right after a `cancel()` that returned True, and end as `stop` with every token when
nothing went wrong; at the end the registry is empty and the upstream's connections and
streams, this process's file descriptors and trio's living tasks are back to their baseline.

Time runs on `loopback_clock` (conftest.py), a virtual clock, so stalls and timeouts cost no
wall time; the faults are seeded (`CHAOS_SEED`), so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from oai_adapter import (
    AdapterConfig,
    End,
    OpenAIAdapter,
    RetryPolicy,
    Started,
    TaskRequest,
    Timeouts,
    Token,
)
from oai_adapter._events import Event
from oai_adapter.testing import FakeUpstream, Fault, Reply, check_stream

STREAMS = 2000
CONCURRENCY = 64
SEED = int(os.environ.get("CHAOS_SEED", "20261125"))


def random_fault(rng: random.Random, n_tokens: int) -> Reply:
    k = rng.randrange(n_tokens)
    return rng.choice(
        [
            lambda: Fault.status(rng.choice([429, 503, 502, 408])),
            lambda: Fault.status(429, retry_after=str(rng.choice([0, 1, 30]))),
            lambda: Fault.status(rng.choice([400, 401, 404, 500, 501])),
            lambda: Fault.reset_before_headers(),
            lambda: Fault.garbage_before_headers(),
            lambda: Fault.stall_before_headers(),
            lambda: Fault.stall_before_headers(rng.random()),
            lambda: Fault.stall_after_headers(),
            lambda: Fault.reset_after(k),
            lambda: Fault.reset_after(None),
            lambda: Fault.eof_after(k),
            lambda: Fault.stall_after(k),
            lambda: Fault.stall_after(k, rng.random() * 0.5),
            lambda: Fault.keepalive_drip(0.2, after_tokens=k),
            lambda: Fault.keepalive_drip(0.1, count=3, after_tokens=k),
            lambda: Fault.malformed(after_tokens=k),
            lambda: Fault.malformed(),
            lambda: Fault.error_event(type="rate_limit_error"),
            lambda: Fault.error_event(after_tokens=k),
            lambda: Fault.not_event_stream(),
            lambda: Fault.ok(pace=0.05),
        ]
    )()


@dataclass
class Plan:
    task_id: str
    replies: list[Reply]
    behaviour: str  # read | slow | break | cancel_self | cancel_other
    at_token: int
    delay: float
    clean: bool = field(init=False)

    def __post_init__(self) -> None:
        # nothing can go wrong: the first attempt is a normal stream and nobody interferes
        self.clean = self.replies[0] == Fault.ok() and self.behaviour in ("read", "slow")


def make_plan(rng: random.Random, i: int, n_tokens: int) -> Plan:
    replies: list[Reply] = []
    for _ in range(3):
        replies.append(Fault.ok() if rng.random() < 0.4 else random_fault(rng, n_tokens))
    behaviour = rng.choices(
        ["read", "slow", "break", "cancel_self", "cancel_other"], weights=[5, 2, 1, 1, 2]
    )[0]
    return Plan(f"chaos-{i}", replies, behaviour, rng.randrange(n_tokens), rng.random() * 0.5)


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    cancel_returned_at: int | None = None  # len(events) when cancel() returned True
    left_early: bool = False


async def run_plan(adapter: OpenAIAdapter, plan: Plan, rng: random.Random) -> Outcome:
    out = Outcome()
    req = TaskRequest(task_id=plan.task_id, prompt="chaos", correlation_id=plan.task_id)

    async def cancel_later() -> None:
        await trio.sleep(plan.delay)
        if adapter.cancel(plan.task_id):
            out.cancel_returned_at = len(out.events)

    async with trio.open_nursery() as nursery, adapter.submit(req) as events:
        if plan.behaviour == "cancel_other":
            nursery.start_soon(cancel_later)
        async for ev in events:
            out.events.append(ev)
            if isinstance(ev, End):
                break
            if isinstance(ev, Token) and ev.index == plan.at_token:
                if plan.behaviour == "break":
                    out.left_early = True
                    break
                if plan.behaviour == "cancel_self":
                    assert adapter.cancel(plan.task_id)
                    out.cancel_returned_at = len(out.events)
            if plan.behaviour == "slow" and rng.random() < 0.3:
                await trio.sleep(rng.random() * 0.2)
        nursery.cancel_scope.cancel()
    return out


def check(plan: Plan, out: Outcome, tokens: list[str]) -> None:
    events = out.events
    if out.left_early:
        assert not any(isinstance(ev, End) for ev in events)
        assert isinstance(events[0], Started)
        texts = [ev.text for ev in events if isinstance(ev, Token)]
        assert texts == tokens[: len(texts)]
        assert [ev.index for ev in events if isinstance(ev, Token)] == list(range(len(texts)))
        return
    end = check_stream(events, tokens=tokens)
    if out.cancel_returned_at is not None:
        assert len(events) == out.cancel_returned_at + 1, "events after a cancel that returned"
        assert end.reason == "cancelled"
    elif end.reason == "cancelled":
        raise AssertionError(f"{plan.task_id}: cancelled, but no cancel() returned True")
    if plan.clean:
        assert (end.reason, end.tokens_out) == ("stop", len(tokens)), (plan, end)
        first = events[0]
        assert isinstance(first, Started)
        assert first.attempt == 1


def open_fds() -> int | None:
    fd_dir = Path("/proc/self/fd")
    return len(list(fd_dir.iterdir())) if fd_dir.is_dir() else None


@pytest.mark.slow
@pytest.mark.req("OC-ADAPT-OAI-6011")
async def test_chaos_thousands_of_faulty_streams_leak_nothing(
    nursery: trio.Nursery, loopback_clock: MockClock
) -> None:
    rng = random.Random(SEED)
    upstream = FakeUpstream()
    await nursery.start(upstream.serve)
    await trio.testing.wait_all_tasks_blocked()
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    fds_before = open_fds()
    tokens = upstream.tokens
    plans = [make_plan(rng, i, len(tokens)) for i in range(STREAMS)]
    for plan in plans:
        upstream.script_for(plan.task_id, *plan.replies)
    config = AdapterConfig(
        base_url=upstream.base_url,
        model=upstream.model,
        timeouts=Timeouts(connect=1.0, first_token=2.0, idle=1.0, total=6.0),
        retry=RetryPolicy(max_attempts=3, base=0.05, cap=0.5),
        max_connections=CONCURRENCY,
    )
    outcomes: dict[str, Outcome] = {}
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def one(plan: Plan, seed: int) -> None:
        async with limiter:
            outcomes[plan.task_id] = await run_plan(adapter, plan, random.Random(seed))

    with trio.fail_after(3600):  # trio seconds
        async with OpenAIAdapter(config) as adapter:
            adapter.rng.seed(SEED)
            async with trio.open_nursery() as streams:
                for plan in plans:
                    streams.start_soon(one, plan, rng.randrange(1 << 30))
            assert adapter.running() == frozenset()
            assert adapter.statistics().submitted == STREAMS
        await upstream.wait_quiet()
        await trio.testing.wait_all_tasks_blocked()

    for plan in plans:
        check(plan, outcomes[plan.task_id], tokens)
    reasons = {out.events[-1].reason for out in outcomes.values() if not out.left_early}  # type: ignore[union-attr]
    assert {"stop", "error", "cancelled"} <= reasons  # the mix really was chaotic
    assert upstream.connections_open == 0
    assert upstream.streams_open == 0
    assert trio.lowlevel.current_statistics().tasks_living == tasks_before
    if fds_before is not None:
        assert open_fds() == fds_before
