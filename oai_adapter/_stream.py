"""The consumer's side of a task: `submit`'s context manager and its event iterator.

`Submission.__aenter__` registers the task id, opens the task's nursery, starts the reader and
returns an `EventStream`; `__aexit__` cancels the reader, waits for its bounded cleanup and
removes the registry entry, however the block is left (end, break, exception, outer cancel).

The iterator unpacks the reader's batches without a scheduler trip per event, but checks in
with trio (`checkpoint`) every `CHECKPOINT_EVERY` events, so a consumer that never awaits
anything else still lets other tasks — the one calling `cancel()` included — run. Before each
event it looks at `cancel_requested`: once `cancel()` has returned True, the next event is
`End(reason="cancelled")`, whatever is buffered, and it is returned only after the reader has
closed the upstream response.

Neither class holds the adapter: `Submission` gets the `Endpoint`, the `TaskRegistry` and the
telemetry to use, builds the `Task` its reader needs, and owns the task's nursery and channel;
`EventStream` gets the task's state, the channel's receive end, its log and the registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

import trio

from ._body import build_body
from ._config import TaskRequest
from ._events import End, Event, Token
from ._log import TaskLog, new_correlation_id
from ._task import Task, run_task

if TYPE_CHECKING:
    from ._endpoint import Endpoint
    from ._observe import Telemetry
    from ._registry import TaskRegistry, TaskState

__all__ = [
    "CHANNEL_BATCHES",
    "CHECKPOINT_EVERY",
    "NOT_OPEN",
    "BatchStream",
    "EventStream",
    "EventStreamStatistics",
    "Submission",
    "leave_nursery",
]

#: Batches (network reads) buffered between reader and consumer. A read holds at most one
#: socket read's worth of events (64 KiB), so this bounds the buffer at about 1 MiB of events.
CHANNEL_BATCHES: Final = 16

#: Events handed out between two checkpoints when the consumer never blocks.
CHECKPOINT_EVERY: Final = 64

NOT_OPEN: Final = "use the adapter inside `async with OpenAIAdapter(config)`"

_LEFT: Final = (
    "this EventStream's `async with adapter.submit(...)` block was left: iterate the stream "
    "inside its block"
)


@dataclass(frozen=True, slots=True)
class EventStreamStatistics:
    """A snapshot of one task's stream: batches (network reads) the reader has sent and the
    consumer not yet taken (at most `CHANNEL_BATCHES`), Tokens handed out, whether the
    reader has finished (its response closed or handed to a background drain), the attempts
    it has made (requests sent or tried; `Started.attempt` once started), and whether the retry
    budget refused its retry after the last failed attempt (the task then ended with that
    attempt's error). An `AdapterHost` reads the last two after an `End` to count a replica's
    attempts and to tell "retries used up" from "retry refused"."""

    buffered_batches: int
    tokens_delivered: int
    reader_done: bool
    attempts: int = 0
    retry_refused: bool = False


async def leave_nursery(
    cm: AbstractAsyncContextManager[trio.Nursery],
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool | None:
    """Exit a nursery entered by hand in an `__aenter__` (a submit block's, a host's).

    Its own tasks (a reader, a driver, probes) raise nothing of their own — every failure becomes
    an event — so a group holding only what the block raised is the nursery's wrapping: the
    block's own exception (a user's error, an outer `Cancelled`) goes on unchanged.
    """
    try:
        await cm.__aexit__(exc_type, exc, tb)
    except BaseExceptionGroup as group:
        if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
            return False
        raise
    return None


class Cancellable(Protocol):
    """What a `BatchStream` reads of its task's state before every event."""

    task_id: str
    cancel_requested: bool


S = TypeVar("S", bound=Cancellable)


class BatchStream(Generic[S]):
    """Hands out a producer's batches (lists of events, `End` last) one event at a time.

    The one consumer-side iterator of the library (the adapter's `EventStream` and the host's
    stream are both this): no scheduler trip per event, a checkpoint every `CHECKPOINT_EVERY`
    events, and `cancel_requested` looked at before every event. A subclass says where batches
    come from (`_fetch`, an async callable: the channel's own `receive` where nothing else is
    owed, so a waiting stream's stack has no frame of ours under `_refill`), what a cancel's
    `End` waits for (`_producer_stopped`) and what ending does (`_end`).
    """

    __slots__ = (
        "_batch",
        "_closed",
        "_delivered",
        "_fetch",
        "_finished",
        "_limit",
        "_pos",
        "_state",
        "task_id",
    )

    #: Who sends the batches, for the message of a producer that ends without an `End` (a bug).
    _PRODUCER = "the producer"

    def __init__(self, state: S, fetch: Callable[[], Awaitable[list[Event]]]) -> None:
        self._state = state
        #: The producer's next batch; `trio.EndOfChannel` when it has stopped.
        self._fetch = fetch
        self._batch: list[Event] = []
        self._pos = 0
        # `_batch[_pos:_limit]` can be handed out without a check-in: no End among them and
        # no checkpoint due (see `_refill`).
        self._limit = 0
        self._delivered = 0  # Tokens delivered before `_batch`; see `tokens_delivered`
        self._finished = False
        self._closed = False
        self.task_id = state.task_id

    @property
    def tokens_delivered(self) -> int:
        """Tokens handed out so far: the last one's `index` + 1 (indices run 0, 1, 2, …)."""
        batch = self._batch
        for i in range(min(self._pos, len(batch)) - 1, -1, -1):
            event = batch[i]
            if type(event) is Token:
                return event.index + 1
        return self._delivered

    def __aiter__(self) -> BatchStream[S]:
        return self

    async def __anext__(self) -> Event:
        # The per-event path: one bounds check and one flag, no counters (the hot loop).
        pos = self._pos
        if pos < self._limit and not self._state.cancel_requested:
            self._pos = pos + 1
            return self._batch[pos]
        return await self._refill()

    async def _producer_stopped(self) -> None:
        """Wait until the producer has stopped and closed the upstream response."""
        raise NotImplementedError

    def _end(self) -> None:
        """The stream has handed out its `End`."""
        self._finished = True

    def _closed_message(self) -> str:
        return "this event stream was closed"

    async def _refill(self) -> Event:
        """Everything but the common case: a cancel, a checkpoint, the next batch, `End`."""
        if self._finished:
            raise StopAsyncIteration
        if self._closed:
            raise trio.ClosedResourceError(self._closed_message())
        state = self._state
        if state.cancel_requested:
            return await self._cancelled()
        if self._pos < len(self._batch):
            if (
                self._pos >= self._limit
                and self._pos > 0
                and type(self._batch[self._pos]) is not End
            ):
                await trio.lowlevel.checkpoint()  # CHECKPOINT_EVERY events handed out
                if state.cancel_requested:
                    return await self._cancelled()
        else:
            self._delivered = self.tokens_delivered
            try:
                batch = await self._fetch()
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError(self._closed_message()) from None
            except trio.EndOfChannel:
                if state.cancel_requested:
                    return await self._cancelled()
                raise RuntimeError(f"{self._PRODUCER} ended without an End event") from None
            self._batch, self._pos = batch, 0
            if state.cancel_requested:
                return await self._cancelled()
        batch, pos = self._batch, self._pos
        last = len(batch) - 1 if type(batch[-1]) is End else len(batch)  # End: never fast
        self._limit = min(last, pos + CHECKPOINT_EVERY)
        event = batch[pos]
        self._pos = pos + 1
        if type(event) is End:
            self._end()
        return event

    async def _cancelled(self) -> End:
        self._delivered = self.tokens_delivered
        self._batch = []
        self._pos = self._limit = 0
        await self._producer_stopped()
        self._end()
        return End(task_id=self.task_id, reason="cancelled", tokens_out=self._delivered)


class EventStream(BatchStream["TaskState"]):
    """`async for ev in events`: `Started`, `Token`*, `Metrics`?, `End`."""

    __slots__ = ("_receive", "_registry", "_tlog")

    _PRODUCER = "the reader"

    def __init__(
        self,
        state: TaskState,
        receive: trio.MemoryReceiveChannel[list[Event]],
        tlog: TaskLog,
        registry: TaskRegistry,
    ) -> None:
        super().__init__(state, receive.receive)
        self._receive = receive
        self._tlog = tlog
        self._registry = registry

    def statistics(self) -> EventStreamStatistics:
        buffered = 0 if self._closed else self._receive.statistics().current_buffer_used
        return EventStreamStatistics(
            buffered_batches=buffered,
            tokens_delivered=self.tokens_delivered,
            reader_done=self._state.reader_done,
            attempts=self._state.attempts,
            retry_refused=self._state.retry_refused,
        )

    async def aclose(self) -> None:
        """Stop: the reader is cancelled (the upstream response closed), buffered events are
        dropped and the task leaves the registry. Iterating afterwards raises
        `trio.ClosedResourceError`. Leaving the `submit` block does this; idempotent."""
        self._close_nowait()
        await trio.lowlevel.checkpoint()

    def _close_nowait(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._state.stop()
        self._delivered = self.tokens_delivered
        self._batch = []
        self._pos = self._limit = 0
        self._registry.discard(self._state)
        self._tlog.closed(self._delivered)

    def _closed_message(self) -> str:
        return _LEFT

    async def _producer_stopped(self) -> None:
        state = self._state
        # The cancel closed the response's connection itself (over HTTP/1.1), or the reader
        # has finished: no wait, no scheduler pass before `End`. Else the reader closes the
        # response, or has handed it to a drain after the upstream finished: close that now.
        if not (state.reader_done or state.response_closed):
            await state.wait_reader()
        if state.draining is not None:
            await state.draining.aclose_now()

    async def _cancelled(self) -> End:
        end = await super()._cancelled()
        self._tlog.cancelled(self._delivered)
        return end

    def _end(self) -> None:
        # The receive channel is closed when the `submit` block is left (`Submission`), not
        # here: after a cancel it may still buffer thousands of Tokens, and freeing them then
        # rather than before `End(cancelled)` is returned keeps that off the cancel's latency.
        self._finished = True
        self._registry.discard(self._state)


class Submission:
    """`async with adapter.submit(req) as events:` — see the module header."""

    __slots__ = (
        "_endpoint",
        "_nursery_cm",
        "_receive",
        "_registry",
        "_req",
        "_state",
        "_stream",
        "_telemetry",
    )

    def __init__(
        self,
        endpoint: Endpoint | None,
        registry: TaskRegistry,
        req: object,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._registry = registry
        self._req = req
        self._telemetry = telemetry
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._state: TaskState | None = None
        self._receive: trio.MemoryReceiveChannel[list[Event]] | None = None
        self._stream: EventStream | None = None

    def _task(self) -> tuple[Task, Endpoint]:
        """Validate, register and set up the task; its reader is started by `__aenter__`."""
        req = self._req
        if not isinstance(req, TaskRequest):
            raise TypeError("submit() takes a TaskRequest")
        endpoint = self._endpoint
        if endpoint is None:
            raise RuntimeError(NOT_OPEN)
        config = endpoint.config
        body = build_body(config.api, config.model, req, include_usage=config.include_usage)
        state = self._registry.add(req.task_id)  # ValueError when it is running
        started_at = trio.current_time()
        correlation_id = req.correlation_id or new_correlation_id()
        headers = {"x-correlation-id": correlation_id, "accept": "text/event-stream"}
        telemetry = self._telemetry
        tlog = TaskLog(
            started_at=started_at,
            telemetry=telemetry.start_task(config, req, correlation_id) if telemetry else None,
            job_id=req.task_id,
            session_id=req.session_id,
            correlation_id=correlation_id,
            endpoint_fields=endpoint.log_fields(),
        )
        send, self._receive = trio.open_memory_channel[list[Event]](CHANNEL_BATCHES)
        endpoint.retry_budget.record_submit()
        task = Task(
            state=state,
            req=req,
            body=body,
            headers=headers,
            send=send,
            tlog=tlog,
            started_at=started_at,
        )
        return task, endpoint

    async def __aenter__(self) -> EventStream:
        if self._state is not None:
            raise RuntimeError("a submit() is entered once")
        task, endpoint = self._task()
        self._req = None  # the reader has what it needs: the block does not keep the request
        self._state = state = task.state
        # Entered by hand: the nursery spans this call and `__aexit__`, the user's block
        # between them (the reader runs in it while the user iterates).
        cm = trio.open_nursery()
        try:
            nursery = await cm.__aenter__()
        except BaseException:
            self._registry.discard(state)
            task.tlog.closed(0)
            raise
        self._nursery_cm = cm
        nursery.start_soon(run_task, endpoint, task)
        assert self._receive is not None
        self._stream = EventStream(state, self._receive, task.tlog, self._registry)
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        state, cm = self._state, self._nursery_cm
        assert state is not None
        assert cm is not None
        stream = self._stream
        if stream is not None:
            stream._close_nowait()  # cancels the reader, narrates, leaves the registry
        state.stop()
        try:
            return await leave_nursery(cm, exc_type, exc, tb)
        finally:
            if self._receive is not None:
                self._receive.close()
            self._registry.discard(state)
