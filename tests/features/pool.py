"""The world of a host feature: test servers, a host over them, and what each task streamed.

`Given` steps declare it (servers, replicas, scripts, policy) before anything runs; the first
`When` starts the program (`Stepper`): the servers serve on 127.0.0.1 port 0, an `AdapterHost`
opens and binds every replica. Tasks carry their id as `X-Correlation-Id`, so what each server
received is known per task, and a script can be meant for one task wherever it lands.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from oai_adapter import (
    AdapterConfig,
    AdapterHost,
    End,
    Event,
    HostPolicy,
    RetryPolicy,
    TaskRequest,
    Token,
)
from oai_adapter.testing import FakeUpstream, Reply

from .stepper import Stepper

__all__ = ["TaskRecord", "World"]

T = TypeVar("T")

POOL = "chat"


@dataclass
class TaskRecord:
    """One task as its consumer saw it; times on the scenario's clock."""

    task_id: str
    events: list[Event] = field(default_factory=list)
    submitted_at: float | None = None
    ended_at: float | None = None

    @property
    def end(self) -> End | None:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, End) else None

    @property
    def tokens(self) -> list[str]:
        return [ev.text for ev in self.events if isinstance(ev, Token)]


class World:
    """See the module header. One per scenario (a fixture)."""

    def __init__(self) -> None:
        self.servers: dict[str, FakeUpstream] = {}
        self.replicas: dict[str, str] = {}  # replica id -> the name of its server now
        self.policy: dict[str, Any] = {}
        self.retry = RetryPolicy(max_attempts=3, base=0.01, cap=0.05)
        self.tasks: dict[str, TaskRecord] = {}
        self.batch: list[str] = []  # the tasks of the latest "tasks are submitted" step
        self.marks: dict[str, float] = {}  # named moments, e.g. "rebind"
        self.results: dict[str, Any] = {}  # what the last actions returned, by name
        self._host: AdapterHost | None = None
        self._stepper: Stepper | None = None
        self._changed = trio.lowlevel.ParkingLot()
        self._next_task = 0

    # --- declaring (Given) --------------------------------------------------------------------

    def add_server(self, name: str, **kwargs: Any) -> FakeUpstream:
        self.servers[name] = FakeUpstream(**kwargs)
        return self.servers[name]

    def add_replica(self, replica_id: str, server: str | None = None) -> None:
        server = server or replica_id
        if server not in self.servers:
            self.add_server(server)
        self.replicas[replica_id] = server

    def server_of(self, replica_id: str) -> FakeUpstream:
        return self.servers[self.replicas[replica_id]]

    def share_task_scripts(self) -> None:
        """Every server plays from one book of per-task scripts: a reply scripted for a task
        goes to the first server the task meets, whichever that is, then the next."""
        shared: dict[str, deque[Reply]] = {}
        for server in self.servers.values():
            server.replies_for = shared

    def config(self, server: str) -> AdapterConfig:
        upstream = self.servers[server]
        return AdapterConfig(base_url=upstream.base_url, model=upstream.model, retry=self.retry)

    # --- running (When) -----------------------------------------------------------------------

    @property
    def host(self) -> AdapterHost:
        assert self._host is not None, "the scenario has not started"
        return self._host

    def run(self, fn: Callable[[], Awaitable[T]], *, sleeps: float = 0.0) -> T:
        """Run one action in the scenario's program, starting it on first use. `sleeps`: the
        seconds it means to let pass (added to its deadline)."""
        if self._stepper is None:
            self._stepper = Stepper()
            self._stepper.start(self._main)
        return self._stepper.step(fn, sleeps=sleeps)

    def close(self) -> None:
        if self._stepper is not None:
            self._stepper.close()

    async def _main(self, stepper: Stepper) -> None:
        async with trio.open_nursery() as servers:
            for upstream in self.servers.values():
                await servers.start(upstream.serve)
            async with AdapterHost(HostPolicy(**self.policy)) as host:
                host.rng.seed(15)
                for replica_id, server in self.replicas.items():
                    await host.bind(POOL, replica_id, self.config(server))
                self._host = host
                await stepper.serve()
            servers.cancel_scope.cancel()

    def _nursery(self) -> trio.Nursery:
        assert self._stepper is not None
        assert self._stepper.nursery is not None
        return self._stepper.nursery

    def new_task_id(self) -> str:
        self._next_task += 1
        return f"task-{self._next_task}"

    async def consume(self, task_id: str) -> TaskRecord:
        """Submit `task_id` to the pool and read it to its End, recording every event."""
        record = self.tasks[task_id] = TaskRecord(task_id, submitted_at=trio.current_time())
        req = TaskRequest(task_id=task_id, prompt="Hello", correlation_id=task_id)
        async with self.host.submit(POOL, req) as events:
            async for event in events:
                record.events.append(event)
                self._changed.unpark_all()
        record.ended_at = trio.current_time()
        self._changed.unpark_all()
        return record

    def start_task(self, task_id: str) -> None:
        """Submit `task_id` in the background (its consumer keeps reading between steps)."""

        async def start() -> None:
            self._nursery().start_soon(self.consume, task_id)
            await self.wait_until(lambda: task_id in self.tasks)

        self.run(start)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.park()

    def wait_for_end(self, task_id: str) -> TaskRecord:
        async def ended() -> TaskRecord:
            await self.wait_until(
                lambda: task_id in self.tasks and self.tasks[task_id].ended_at is not None
            )
            return self.tasks[task_id]

        return self.run(ended)

    # --- looking (Then) -----------------------------------------------------------------------

    def received(self, server: str, task_id: str) -> int:
        """How many completion requests of `task_id` the server received."""
        upstream = self.servers[server]
        return sum(
            1
            for r in upstream.completion_requests()
            if r.headers.get("x-correlation-id") == task_id
        )

    def received_by(self, task_id: str) -> dict[str, int]:
        """The servers that received `task_id`, with how many requests each."""
        counts = {name: self.received(name, task_id) for name in self.servers}
        return {name: n for name, n in counts.items() if n}
