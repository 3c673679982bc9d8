"""One host task: placement, failover before `Started`, and the consumer's stream.

`HostSubmission.__aenter__` registers the task in its pool, places it on its first replica
(`Pool.route`, `Replica.enter`: synchronously, so an `unbind` or rebind the moment after finds it
running there and drains it), opens the task's nursery and starts the *driver*; `__aexit__`
cancels the driver, waits for it and unregisters, however the block is left. The driver enters
the replica's adapter's `submit` and reads its stream, handing the events on to the consumer. An `End(error)` before any `Started`
whose kind blames the replica is not handed on: the driver places the task again on a replica
that has not failed it (up to `max_failovers`, each one paid from the pool's retry budget), so
the consumer sees one stream. Once `Started` has been handed on there is no failover.

Why a driver task and not an iterator that enters the next adapter itself: entering a `submit`
opens a nursery, and an async iterator must not open a nursery or cancel scope in one
`__anext__` and leave it in another (PEP 789, STYLE.md rule 7) — a consumer's own cancel scope
around the loop would corrupt trio's stack. The driver lives in the nursery this block opened.

Events reach the consumer through `_Pipe`: a memory channel of one list, where the list still
waiting in the channel keeps growing (up to `MAX_BATCH` events) until the consumer takes it. A
fast consumer gets each adapter batch at once; a slow one finds everything read meanwhile in one
list — no scheduler round trip per token, and at most `2 × MAX_BATCH` events buffered, so a slow
consumer still gives the upstream backpressure (and holds a draining replica: HOST.md counts a
task as ended there when its events are handed on).

Under a host, `Started.attempt` counts every attempt on every replica (the adapter's own count
on the serving replica, plus the attempts each replica that failed before made: its stream's
`statistics().attempts`, which also says whether its last retry was refused), and
`Started.replica_id` names the serving replica; `Metrics.retries = attempt − 1`, and `ttft_ms`
and `duration_ms` count from entering `host.submit`. The first replica's `total` timeout bounds
the whole task, failovers included.
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final

import msgspec
import trio

from ._body import build_body
from ._config import TaskRequest
from ._errors import ErrorInfo, ErrorKind
from ._events import End, Event, Metrics, Started, Token
from ._hostpolicy import HostPolicy
from ._hostpool import (
    BLAMES_REPLICA,
    BREAKER_FAILURES,
    Outcome,
    Pool,
    Replica,
    TaskState,
)
from ._log import new_correlation_id
from ._stream import BatchStream, EventStream, leave_nursery

__all__ = ["MAX_BATCH", "HostEventStream", "HostSubmission"]

#: Most events in one list between driver and consumer (two lists at most are buffered).
MAX_BATCH: Final = 256

_FINISH: Final = frozenset({"stop", "length", "content_filter", "tool_calls"})


class _Pipe:
    """Driver → consumer. See the module header."""

    __slots__ = ("open", "receive", "send")

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[list[Event]](1)
        self.open: list[Event] | None = None  # sent or being sent, not yet taken

    async def put_new(self, event: Event) -> None:
        """Start a new list (the open one is full, or taken)."""
        batch = [event]
        self.open = batch  # before a blocking send: the consumer may take it meanwhile
        try:
            self.send.send_nowait(batch)
        except trio.WouldBlock:
            try:
                await self.send.send(batch)
            except BaseException:
                self.open = None
                raise

    def taken(self, batch: list[Event]) -> None:
        if self.open is batch:
            self.open = None


class HostEventStream(BatchStream[TaskState]):
    """`async for ev in events`: the same grammar (and the same iterator) as the adapter's
    `EventStream`; batches come from the driver through the `_Pipe`."""

    __slots__ = ("_pipe", "_pool")

    _PRODUCER = "the host's driver"

    def __init__(self, pool: Pool, task: TaskState, pipe: _Pipe) -> None:
        super().__init__(task, self._next_batch)
        self._pool = pool
        self._pipe = pipe

    async def _next_batch(self) -> list[Event]:
        batch = await self._pipe.receive.receive()
        self._pipe.taken(batch)
        return batch

    async def _producer_stopped(self) -> None:
        await self._state.done.wait()  # the driver has left the adapter: upstream closed

    def _end(self) -> None:
        self._finished = True
        self._pool.unregister(self._state)


class HostSubmission:
    """`async with host.submit(pool, req) as events:` — see the module header."""

    __slots__ = ("_driver", "_nursery_cm", "_pool", "_req", "_rng", "_stream", "_task")

    def __init__(self, pool: Pool, req: object, rng: random.Random) -> None:
        self._pool = pool
        self._req = req
        self._rng = rng
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._task: TaskState | None = None
        self._stream: HostEventStream | None = None
        self._driver: _Driver | None = None

    async def __aenter__(self) -> HostEventStream:
        pool, req = self._pool, self._req
        if not isinstance(req, TaskRequest):
            raise TypeError("submit() takes a TaskRequest")
        for api in sorted({rep.config.api for rep in pool.replicas.values()}):
            build_body(api, pool.model, req, include_usage=False)  # the adapter's ValueErrors
        if req.task_id in pool.tasks:
            raise ValueError(f"task {req.task_id!r} is already running in pool {pool.pool_id!r}")
        if req.correlation_id is None:  # one id for every replica the task tries
            req = dataclasses.replace(req, correlation_id=new_correlation_id())
        started_at = trio.current_time()
        task = TaskState(req.task_id)
        pipe = _Pipe()
        first = pool.route(started_at, req.session_id, set(), self._rng)
        driver = _Driver(pool, task, req, self._rng, pipe, started_at, first)
        pool.register(task)
        if first[0] is not None:
            driver.place(first[0])
        self._task = task
        cm = trio.open_nursery()
        try:
            nursery = await cm.__aenter__()
        except BaseException:
            driver.release()
            pool.unregister(task)
            pool.running -= 1
            raise
        self._nursery_cm = cm
        self._driver = driver
        nursery.start_soon(driver.run)
        self._stream = HostEventStream(pool, task, pipe)
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task, cm = self._task, self._nursery_cm
        assert task is not None
        assert cm is not None
        task.scope.cancel()
        try:
            return await leave_nursery(cm, exc_type, exc, tb)
        finally:
            if self._driver is not None:
                self._driver.pipe.receive.close()
            self._pool.unregister(task)
            self._pool.running -= 1


def _outcome(end: End) -> tuple[Outcome, str]:
    """How the breaker sees a try that ended with `end`: success, failure or neither."""
    if end.reason in _FINISH:
        return "success", ""
    error = end.error
    if error is not None and error.kind in BREAKER_FAILURES:
        return "failure", f"{error.kind.value}: {error.message}"
    return "neither", ""


class _Failed(Exception):
    """A try ended before `Started` in a way that may fail over."""

    def __init__(self, error: ErrorInfo, attempts: int) -> None:
        self.error = error
        self.attempts = attempts


class _Driver:
    """The task's driver: see the module header."""

    __slots__ = (
        "end_sent",
        "first",
        "first_token_at",
        "held",
        "last_token_at",
        "pipe",
        "pool",
        "req",
        "rng",
        "started",
        "started_at",
        "task",
        "tokens",
    )

    def __init__(
        self,
        pool: Pool,
        task: TaskState,
        req: TaskRequest,
        rng: random.Random,
        pipe: _Pipe,
        started_at: float,
        first: tuple[Replica | None, str, int | None],
    ) -> None:
        self.pool = pool
        self.task = task
        self.req = req
        self.rng = rng
        self.pipe = pipe
        self.started_at = started_at
        self.started: Started | None = None
        self.end_sent = False
        self.tokens = 0
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.first: tuple[Replica | None, str, int | None] | None = first  # the first route
        self.held: tuple[Replica, int] | None = None  # placed on, and its breaker trial

    def place(self, rep: Replica) -> None:
        """Take the task's place on `rep`: given back by `_try`'s `finally` (or `release`)."""
        self.held = (rep, rep.enter(self.task))

    def release(self) -> None:
        """Give back a place no try used (a task cancelled before its driver ran)."""
        if self.held is not None:
            rep, trial = self.held
            self.held = None
            self.pool.record(rep, "neither", trial, trio.current_time())
            rep.leave(self.task)

    async def run(self) -> None:
        try:
            async with self.pipe.send:
                with self.task.scope:
                    await self._run()
        finally:
            self.release()
            self.task.done.set()

    async def _put(self, event: Event) -> None:
        batch = self.pipe.open
        if batch is not None and len(batch) < MAX_BATCH:
            batch.append(event)
        else:
            await self.pipe.put_new(event)

    async def _end(self, error: ErrorInfo) -> None:
        """End the task with `error`: `Metrics` first when `Started` was handed on."""
        started = self.started
        if started is not None:
            now = trio.current_time()
            first, last = self.first_token_at, self.last_token_at
            await self._put(
                Metrics(
                    task_id=self.task.task_id,
                    ttft_ms=(first - self.started_at) * 1000.0 if first is not None else None,
                    decode_time_ms=(last - first) * 1000.0
                    if first is not None and last is not None
                    else None,
                    duration_ms=(now - self.started_at) * 1000.0,
                    tokens_out=self.tokens,
                    retries=started.attempt - 1,
                )
            )
        await self._put(
            End(task_id=self.task.task_id, reason="error", tokens_out=self.tokens, error=error)
        )
        self.end_sent = True

    async def _run(self) -> None:
        pool, task, req = self.pool, self.task, self.req
        policy: HostPolicy = pool.policy
        pool.budget.record_task()
        tried: set[str] = set()
        attempts = 0  # attempts on the replicas tried before
        error: ErrorInfo | None = None  # the last replica's, when it failed before Started
        previous: Replica | None = None
        failovers = 0
        total: float | None = None
        with trio.CancelScope() as deadline:
            while True:
                if self.first is not None:  # decided when the task entered `submit`
                    (rep, why, retry_after_ms), self.first = self.first, None
                else:
                    now = trio.current_time()
                    rep, why, retry_after_ms = pool.route(now, req.session_id, tried, self.rng)
                if rep is None:
                    if error is None:
                        await self._end(
                            ErrorInfo(
                                kind=ErrorKind.POOL_UNAVAILABLE,
                                message=f"pool {pool.pool_id}: no replica can take the task ({why})",
                                retryable=True,
                                retry_after_ms=retry_after_ms,
                            )
                        )
                    else:
                        await self._end(error)
                    return
                if previous is not None and error is not None:
                    if not pool.budget.try_failover():
                        pool.budget_refused += 1
                        previous.narrate(
                            "WARNING",
                            "retry-budget",
                            f"the retry budget refused a failover of task {task.task_id} from replica"
                            f" {previous.replica_id} ({error.kind.value}: {error.message})",
                            job_id=task.task_id,
                            session_id=req.session_id,
                            correlation_id=req.correlation_id,
                            error_kind=error.kind.value,
                        )
                        await self._end(error)
                        return
                    failovers += 1
                    pool.failovers += 1
                    previous.narrate(
                        "WARNING",
                        "failover",
                        f"task {task.task_id} fails over from replica {previous.replica_id}"
                        f" ({error.kind.value}: {error.message}) to replica {rep.replica_id}",
                        job_id=task.task_id,
                        session_id=req.session_id,
                        correlation_id=req.correlation_id,
                        error_kind=error.kind.value,
                        to_replica_id=rep.replica_id,
                    )
                if total is None:
                    total = rep.config.timeouts.total
                    deadline.deadline = self.started_at + total
                rep.narrate(
                    "DEBUG",
                    "route",
                    f"task {task.task_id} placed on replica {rep.replica_id}: {why}",
                    job_id=task.task_id,
                    session_id=req.session_id,
                    correlation_id=req.correlation_id,
                    attempt=attempts + 1,
                )
                if self.held is None:
                    self.place(rep)
                try:
                    ending = await self._try(attempts)
                except _Failed as failed:
                    error = failed.error
                    attempts += failed.attempts
                else:
                    if ending is not None:  # ended by the host, after leaving the replica
                        await self._end(ending)
                    return
                tried.add(rep.replica_id)
                previous = rep
                if failovers >= policy.max_failovers:
                    await self._end(error)
                    return
        if deadline.cancelled_caught and not self.end_sent:
            await self._end(
                ErrorInfo(
                    kind=ErrorKind.DEADLINE_UNMET,
                    message=f"total timeout: the task took longer than {total:g} s (failovers included)",
                )
            )

    async def _try(self, attempts_before: int) -> ErrorInfo | None:
        """The task on the replica it is placed on (`held`). Returns None when it ended there
        (its `End` handed on), or the error to end it with once it has left the replica (a
        drain or the host's exit evicted it); raises `_Failed` when it failed before `Started`
        in a way that may fail over."""
        pool, task, req = self.pool, self.task, self.req
        assert self.held is not None
        rep, trial = self.held
        adapter = rep.adapter
        scope = task.attempt_scope
        assert adapter is not None
        assert scope is not None
        stream: EventStream | None = None
        outcome: Outcome = "neither"
        cause = ""
        failed: _Failed | None = None
        try:
            with scope:
                offset_ms = (trio.current_time() - self.started_at) * 1000.0
                async with adapter.submit(req) as events:
                    stream = events
                    async for event in events:
                        cls = type(event)
                        if cls is Token:
                            now = trio.current_time()
                            if self.first_token_at is None:
                                self.first_token_at = now
                            self.last_token_at = now
                            batch = self.pipe.open
                            if batch is not None and len(batch) < MAX_BATCH:
                                batch.append(event)
                            else:
                                await self.pipe.put_new(event)
                            self.tokens += 1  # handed on (a cancelled send is not)
                            continue
                        if cls is Started:
                            assert isinstance(event, Started)
                            event = self.started = msgspec.structs.replace(
                                event,
                                attempt=attempts_before + event.attempt,
                                replica_id=rep.replica_id,
                            )
                        elif cls is Metrics:
                            assert isinstance(event, Metrics)
                            assert self.started is not None
                            event = msgspec.structs.replace(
                                event,
                                ttft_ms=None
                                if event.ttft_ms is None
                                else event.ttft_ms + offset_ms,
                                duration_ms=event.duration_ms + offset_ms,
                                retries=self.started.attempt - 1,
                            )
                        elif cls is End:
                            assert isinstance(event, End)
                            outcome, cause = _outcome(event)
                            stats = events.statistics()
                            self._after_end(rep, event, refused=stats.retry_refused)
                            error = event.error
                            if (
                                self.started is None
                                and error is not None
                                and error.kind in BLAMES_REPLICA
                                and not stats.retry_refused
                            ):
                                # Raised once the adapter's block is left: raised inside it,
                                # an eviction landing during the adapter's exit wraps it in an
                                # ExceptionGroup that `except _Failed` misses (just soak).
                                failed = _Failed(error, stats.attempts)
                                break
                            await self._put(event)
                            self.end_sent = True
                            return None
                        await self._put(event)
            if failed is not None:
                raise failed
            reason = task.evicted
            if scope.cancelled_caught and reason is not None:
                what = (
                    "the host closed"
                    if reason == "closing"
                    else f"replica {rep.replica_id} was {reason}"
                )
                error = ErrorInfo(kind=ErrorKind.POOL_UNAVAILABLE, message=what, retryable=True)
                if self.started is not None or reason == "closing":
                    return error  # not a failover: ended once it has left the replica
                raise _Failed(error, 0 if stream is None else stream.statistics().attempts)
            raise RuntimeError("the adapter's stream ended without an End event")  # a bug
        finally:
            self.held = None
            pool.record(rep, outcome, trial, trio.current_time(), cause)
            rep.leave(task)

    def _after_end(self, rep: Replica, end: End, *, refused: bool) -> None:
        """What a try's `End` tells the pool: a 429's cool-off, a missing model, a refusal."""
        error = end.error
        if error is None:
            return
        now = trio.current_time()
        fields = {
            "job_id": self.task.task_id,
            "session_id": self.req.session_id,
            "correlation_id": self.req.correlation_id,
            "error_kind": error.kind.value,
        }
        if error.kind is ErrorKind.ADMISSION_REJECT and error.retry_after_ms is not None:
            cool = min(error.retry_after_ms / 1000.0, self.pool.policy.breaker_open_max)
            rep.cool_until = max(rep.cool_until or now, now + cool)
        if error.kind is ErrorKind.UPSTREAM_NOT_FOUND and rep.ready:
            rep.ready = False
            rep.detail = (
                f"the model was not found ({error.message}); waiting for a probe to find it"
            )
            rep.narrate(
                "INFO",
                "readiness",
                f"replica {rep.replica_id} is not ready: {rep.detail}",
                **fields,
            )
        if refused:
            self.pool.budget_refused += 1
            rep.narrate(
                "WARNING",
                "retry-budget",
                f"the retry budget refused a retry of task {self.task.task_id} on replica"
                f" {rep.replica_id} ({error.kind.value}: {error.message})",
                **fields,
            )
