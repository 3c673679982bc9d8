"""A pool's state: its replicas, their breakers and loads, its tasks, its retry budget.

No I/O here: the host (`_host`) opens adapters and probes them, the task driver (`_hosttask`)
streams; both change this state only through the methods below, which narrate each step.

The retry budget is one per pool (HOST.md, "Retry budget"), handed to every adapter of the pool
as its `retry_budget`. An adapter calls `record_submit()` once per `submit` and `try_spend()`
before each retry; a host task is one submit however many replicas it tries, so `PoolBudget`
ignores the adapters' `record_submit` and the host calls `record_task` once. How many attempts a
replica made and whether its last retry was refused, the driver reads from the adapter's own
stream (`EventStream.statistics()`) after its `End`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import trio

from ._adapter import OpenAIAdapter
from ._breaker import Breaker, BreakerState
from ._budget import RetryBudget
from ._config import AdapterConfig
from ._errors import ErrorKind
from ._events import WorkerProps
from ._hostlog import Action, Level, narrate
from ._hostpolicy import HostPolicy
from ._hosttelemetry import HostTelemetry
from ._log import ENGINE
from ._routing import Load, choose

__all__ = [
    "BLAMES_REPLICA",
    "BREAKER_FAILURES",
    "Outcome",
    "Pool",
    "PoolBudget",
    "Replica",
    "TaskState",
]

#: Kinds that blame the replica: a task ending in one before `Started` fails over.
BLAMES_REPLICA: Final = frozenset(
    {
        ErrorKind.POOL_UNAVAILABLE,
        ErrorKind.ADMISSION_REJECT,
        ErrorKind.UPSTREAM_ERROR,
        ErrorKind.WORKER_RESET,
        ErrorKind.DECODE_TIMEOUT,
        ErrorKind.PROTOCOL,
        ErrorKind.UPSTREAM_NOT_FOUND,
    }
)
#: Those that count against the breaker: overload (429) is met with the cool-off instead.
BREAKER_FAILURES: Final = BLAMES_REPLICA - {ErrorKind.ADMISSION_REJECT}

Outcome: TypeAlias = Literal["success", "failure", "neither"]
EvictReason: TypeAlias = Literal["unbound", "rebound", "closing"]


class PoolBudget(RetryBudget):
    """The pool's budget as its adapters see it: see the module header."""

    __slots__ = ()

    def record_submit(self) -> None:
        """An adapter's submit: not a new task under a host (`record_task` counts it)."""

    def record_task(self) -> None:
        """A host task entered `submit`: one submit however many replicas it tries."""
        RetryBudget.record_submit(self)

    def try_failover(self) -> bool:
        """The host asks to place a task on another replica."""
        return RetryBudget.try_spend(self)


class TaskState:
    """What `cancel()`, the driver, the consumer and a draining replica share about a task."""

    __slots__ = (
        "attempt_scope",
        "cancel_requested",
        "done",
        "evicted",
        "replica",
        "scope",
        "task_id",
    )

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.scope = trio.CancelScope()  # the driver's; cancelled by cancel() and by leaving
        self.cancel_requested = False
        self.done = trio.Event()  # the driver has finished (and left every adapter)
        self.replica: Replica | None = None  # serving now
        self.attempt_scope: trio.CancelScope | None = None  # this try on `replica`
        self.evicted: EvictReason | None = None  # why `attempt_scope` was cancelled


@dataclass(slots=True)
class _Counts:
    """Per replica id, across rebinds."""

    submitted: int = 0
    failures: int = 0


class Replica:
    """One bound adapter. A rebind makes a new one (fresh breaker, no cool-off, own probes)."""

    def __init__(self, pool: Pool, replica_id: str, config: AdapterConfig) -> None:
        policy = pool.policy
        self.pool = pool
        self.replica_id = replica_id
        self.config = config
        self.adapter: OpenAIAdapter | None = None
        self.breaker = Breaker(
            policy.breaker_failures, policy.breaker_open, policy.breaker_open_max
        )
        self.running = 0
        self.tasks: set[TaskState] = set()
        self.draining: EvictReason | None = None
        self.drain = True  # False: `unbind(drain=False)`, evict at once
        self.live = False
        self.ready = False
        self.detail = "not probed yet"
        self.props: WorkerProps | None = None
        self.engine: str | None = None  # "engine version", when known
        self.cool_until: float | None = None
        self.probed_at: float | None = None  # Unix time of the last probe
        self.retire = trio.Event()  # unbind or rebind: drain, then close
        self.closed = trio.Event()  # the adapter is closed
        self._idle = trio.lowlevel.ParkingLot()

    @property
    def target(self) -> str:
        return self.engine or ENGINE

    @property
    def capacity(self) -> int:
        slots = self.props.slots_total if self.props is not None else None
        return slots if slots is not None and slots > 0 else self.config.max_connections

    def enter(self, task: TaskState) -> int:
        """`task` is placed here (taken before the driver's `try`): the breaker's trial permit
        number (0: not the trial), to hand back to `Pool.record` in the driver's `finally`.
        The try's cancel scope is made here, so an eviction before the driver enters it
        still ends the try."""
        trial = self.breaker.take()
        self.running += 1
        self.tasks.add(task)
        self.pool.counts.setdefault(self.replica_id, _Counts()).submitted += 1
        task.replica = self
        task.attempt_scope = trio.CancelScope()
        task.evicted = None
        return trial

    def leave(self, task: TaskState) -> None:
        """`task` is done here (the driver's `finally`)."""
        self.running -= 1
        self.tasks.discard(task)
        task.replica = None
        task.attempt_scope = None
        if self.running == 0:
            self._idle.unpark_all()

    async def wait_idle(self) -> None:
        while self.running:
            await self._idle.park()

    def evict(self, reason: EvictReason) -> None:
        """End every task still placed here (a drain's timeout, `drain=False`, the host's exit)."""
        for task in list(self.tasks):
            task.evicted = reason
            if task.attempt_scope is not None:
                task.attempt_scope.cancel()

    def narrate(
        self,
        level: Level,
        action: Action,
        message: str,
        **fields: Any,
    ) -> None:
        telemetry = self.pool.telemetry
        if telemetry is not None:  # the same steps as the narration, from the same place
            if action == "failover":
                telemetry.failover(self.pool.pool_id, self.replica_id)
            elif action == "retry-budget":
                telemetry.budget_refused(self.pool.pool_id, self.replica_id)
            elif action == "breaker":
                telemetry.breaker(self.pool.pool_id, self.replica_id, fields["breaker"])
        narrate(
            level,
            action,
            message,
            pool_id=self.pool.pool_id,
            replica_id=self.replica_id,
            target=self.target,
            model=self.config.model,
            api=self.config.api,
            engine_version=self.engine,
            **fields,
        )


class Pool:
    """A pool: its bound replicas, those draining, its running tasks and its counters."""

    def __init__(self, pool_id: str, policy: HostPolicy, model: str) -> None:
        self.pool_id = pool_id
        self.policy = policy
        self.model = model  # the configured model, from the first bind
        self.replicas: dict[str, Replica] = {}  # bound, serving new tasks
        self.draining: list[Replica] = []  # unbound or rebound, not yet closed
        self.tasks: dict[str, TaskState] = {}  # running (the consumer's view)
        self.budget = PoolBudget(
            policy.budget_percent, policy.budget_window, policy.budget_min_per_s
        )
        self.submitted = 0
        self.running = 0  # tasks inside `host.submit`
        self.failovers = 0
        self.budget_refused = 0
        self.counts: dict[str, _Counts] = {}
        self.closed = False  # the host is closing: no placement, every eviction ends the task
        self.telemetry: HostTelemetry | None = None  # `AdapterHost.attach_telemetry`

    def register(self, task: TaskState) -> None:
        """A task entered `submit` (taken before the submission's `try`)."""
        self.tasks[task.task_id] = task
        self.submitted += 1
        self.running += 1

    def unregister(self, task: TaskState) -> None:
        """The consumer read `End` or left the block (idempotent)."""
        if self.tasks.get(task.task_id) is task:
            del self.tasks[task.task_id]

    # --- breakers ------------------------------------------------------------------------

    def poll_breakers(self, now: float) -> None:
        for rep in self.replicas.values():
            if rep.breaker.poll(now) is not None:
                rep.narrate(
                    "INFO",
                    "breaker",
                    f"breaker half-open: replica {rep.replica_id} gets one trial task",
                    breaker="half_open",
                )

    def may_open(self, rep: Replica) -> bool:
        """The pool's rule: two replicas at least, and at most `max_ejected` of them not closed."""
        bound = [r for r in self.replicas.values()]
        if len(bound) < 2 or rep not in bound:
            return False
        not_closed = sum(1 for r in bound if r is not rep and r.breaker.state != "closed") + 1
        return not_closed <= self.policy.max_ejected * len(bound)

    def record(
        self, rep: Replica, outcome: Outcome, trial: int, now: float, cause: str = ""
    ) -> None:
        """A task's try on `rep` ended: move its breaker, narrate any transition."""
        breaker = rep.breaker
        if outcome == "success":
            state = breaker.succeeded(trial)
        elif outcome == "failure":
            self.counts.setdefault(rep.replica_id, _Counts()).failures += 1
            state = breaker.failed(now, trial, may_open=self.may_open(rep))
        else:
            breaker.neither(trial)
            state = None
        if state == "open":
            until = breaker.open_until or now
            rep.narrate(
                "WARNING",
                "breaker",
                f"breaker open: replica {rep.replica_id} gets no task for {until - now:g} s after "
                f"{breaker.consecutive_failures} consecutive failures ({cause})",
                breaker=state,
            )
        elif state is not None:
            rep.narrate(
                "INFO",
                "breaker",
                f"breaker {state.replace('_', '-')}: replica {rep.replica_id}",
                breaker=state,
            )

    # --- routing -------------------------------------------------------------------------

    def why_not(self, rep: Replica, now: float) -> tuple[str | None, float | None]:
        """Why `rep` may not take a new task now (None if it may), and when it may again."""
        if rep.draining is not None:
            return "draining", None
        if not rep.ready:
            return f"not ready ({rep.detail})", None
        breaker = rep.breaker
        if not breaker.admits(now):
            if breaker.state == "open" and breaker.open_until is not None:
                return f"breaker open for {breaker.open_until - now:.3g} s more", breaker.open_until
            return "breaker half-open, its trial task running", None
        if rep.cool_until is not None and now < rep.cool_until:
            return f"cooling off after a 429 for {rep.cool_until - now:.3g} s more", rep.cool_until
        return None, None

    def route(
        self, now: float, session_id: str | None, exclude: set[str], rng: random.Random
    ) -> tuple[Replica | None, str, int | None]:
        """The replica to place a task on and why; or None, why not, and `retry_after_ms`."""
        if self.closed:
            return None, "the host closed", None
        self.poll_breakers(now)
        candidates: list[Replica] = []
        reasons: list[str] = []
        earliest = math.inf
        for rep in self.replicas.values():
            if rep.replica_id in exclude:
                reasons.append(f"{rep.replica_id}: already failed this task")
                continue
            why, until = self.why_not(rep, now)
            if why is None:
                candidates.append(rep)
            else:
                reasons.append(f"{rep.replica_id}: {why}")
                if until is not None:
                    earliest = min(earliest, until)
        for rep in self.draining:
            reasons.append(f"{rep.replica_id}: draining")
        if not candidates:
            if not self.replicas:
                return None, "no replica is bound", None
            retry_after = (
                None if math.isinf(earliest) else max(0, math.ceil((earliest - now) * 1000))
            )
            return None, "; ".join(reasons), retry_after
        loads = [Load(r.replica_id, r.running, r.capacity) for r in candidates]
        i, why = choose(loads, session_id, rng)
        return candidates[i], why, None

    def breaker_state(self, rep: Replica) -> BreakerState:
        return rep.breaker.state
