"""An eviction that lands while an adapter's `submit` block is being left (found by `just soak`).

The host's driver decides inside an adapter's `submit` block what a try's `End` means: hand it on,
or fail over. Leaving that block waits for the adapter's reader to finish its (shielded, bounded)
cleanup; a drain's eviction landing in that wait used to turn the failover into an
`ExceptionGroup` that escaped `host.submit` (one task in 100,000 in the soak, more under load).
Here the wait is made to last until the eviction has landed: a wrapper around the adapter's `Submission` leaves it with one more
shielded child task, as a slow reader cleanup would.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from oai_adapter import OpenAIAdapter, RetryPolicy, TaskRequest
from oai_adapter.testing import Fault, check_stream

from .hostkit import DEADLINE, open_host, session_for, start_upstreams


class SlowExit:
    """The adapter's `Submission`, whose exit after the block waits, shielded, for `release`."""

    def __init__(self, inner: Any, leaving: trio.Event, release: trio.Event) -> None:
        self.inner = inner
        self.leaving = leaving
        self.release = release

    async def __aenter__(self) -> Any:
        self.events = await self.inner.__aenter__()
        self.cm = trio.open_nursery()
        self.nursery = await self.cm.__aenter__()
        return self.events

    async def _cleanup(self) -> None:
        with trio.CancelScope(shield=True):
            self.leaving.set()
            await self.release.wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.nursery.start_soon(self._cleanup)
        try:
            return await self.cm.__aexit__(exc_type, exc, tb)
        finally:
            await self.inner.__aexit__(None, None, None)


@pytest.fixture
def slow_exits(monkeypatch: pytest.MonkeyPatch) -> tuple[trio.Event, trio.Event]:
    leaving, release = trio.Event(), trio.Event()
    submit = OpenAIAdapter.submit

    def slow_submit(self: OpenAIAdapter, req: TaskRequest) -> Any:
        return SlowExit(submit(self, req), leaving, release)

    monkeypatch.setattr(OpenAIAdapter, "submit", slow_submit)
    return leaving, release


async def test_a_failover_still_happens_when_an_eviction_lands_while_leaving_the_adapter(
    nursery: trio.Nursery,
    loopback_clock: MockClock,
    slow_exits: tuple[trio.Event, trio.Event],
) -> None:
    """r0 answers 503 before `Started`; while the driver leaves r0's adapter to fail over, r0 is
    unbound at once: the task still fails over to r1 and streams, nothing escapes `submit`."""
    leaving, release = slow_exits
    r0, r1 = await start_upstreams(nursery, 2)
    r0.script(Fault.status(503))
    r1.script(Fault.ok())
    req = TaskRequest(task_id="t1", prompt="hi", session_id=session_for(["r0"], ["r0", "r1"]))
    seen: list[Any] = []
    with trio.fail_after(DEADLINE):
        async with open_host([r0, r1], retry=RetryPolicy(max_attempts=1)) as host:

            async def consume() -> None:
                async with host.submit("p", req) as events:
                    seen.extend([ev async for ev in events])

            async with trio.open_nursery() as tasks:
                tasks.start_soon(consume)
                await leaving.wait()  # the driver is leaving r0's adapter
                tasks.start_soon(lambda: host.unbind("p", "r0", drain=False))
                await trio.testing.wait_all_tasks_blocked()  # the eviction has landed
                release.set()
    end = check_stream(seen, tokens=r0.tokens)
    assert (end.reason, seen[0].replica_id, seen[0].attempt) == ("stop", "r1", 2)  # failed over
