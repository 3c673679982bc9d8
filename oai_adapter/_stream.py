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
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Final

import trio

from ._events import End, Event, Token

if TYPE_CHECKING:
    from ._adapter import OpenAIAdapter
    from ._log import TaskLog
    from ._task import TaskState

__all__ = ["CHANNEL_BATCHES", "CHECKPOINT_EVERY", "EventStream"]

#: Batches (network reads) buffered between reader and consumer. A read holds at most one
#: socket read's worth of events (64 KiB), so this bounds the buffer at about 1 MiB of events.
CHANNEL_BATCHES: Final = 16

#: Events handed out between two checkpoints when the consumer never blocks.
CHECKPOINT_EVERY: Final = 64


class EventStream:
    """`async for ev in events`: `Started`, `Token`*, `Metrics`?, `End`."""

    __slots__ = (
        "_adapter",
        "_batch",
        "_delivered",
        "_finished",
        "_pos",
        "_receive",
        "_since_checkpoint",
        "_state",
        "_tlog",
        "task_id",
    )

    def __init__(
        self,
        adapter: OpenAIAdapter,
        state: TaskState,
        receive: trio.MemoryReceiveChannel[list[Event]],
        tlog: TaskLog,
    ) -> None:
        self._adapter = adapter
        self._state = state
        self._receive = receive
        self._tlog = tlog
        self._batch: list[Event] = []
        self._pos = 0
        self._delivered = 0
        self._since_checkpoint = 0
        self._finished = False
        self.task_id = state.task_id

    @property
    def tokens_delivered(self) -> int:
        return self._delivered

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._finished:
            raise StopAsyncIteration
        state = self._state
        if state.cancel_requested:
            return await self._cancelled()
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            await trio.lowlevel.checkpoint()
            if state.cancel_requested:
                return await self._cancelled()
        if self._pos >= len(self._batch):
            try:
                self._batch = await self._receive.receive()
            except trio.EndOfChannel:
                if state.cancel_requested:
                    return await self._cancelled()
                raise RuntimeError("the reader ended without an End event") from None  # a bug
            self._pos = 0
            self._since_checkpoint = 0
            if state.cancel_requested:
                return await self._cancelled()
        event = self._batch[self._pos]
        self._pos += 1
        if type(event) is Token:
            self._delivered += 1
        elif type(event) is End:
            self._close()
        return event

    async def _cancelled(self) -> End:
        self._batch = []
        self._pos = 0
        await self._state.done.wait()  # the reader has closed the upstream response
        self._close()
        self._tlog.tokens_out = self._delivered
        self._tlog.info(f"cancelled ({self._delivered} tokens delivered before the cancel)")
        return End(task_id=self.task_id, reason="cancelled", tokens_out=self._delivered)

    def _close(self) -> None:
        self._finished = True
        self._adapter._unregister(self._state)
        self._receive.close()


class Submission:
    """`async with adapter.submit(req) as events:` — see the module header."""

    __slots__ = ("_adapter", "_nursery_cm", "_req", "_state", "_stream")

    def __init__(self, adapter: OpenAIAdapter, req: object) -> None:
        self._adapter = adapter
        self._req = req
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._state: TaskState | None = None
        self._stream: EventStream | None = None

    async def __aenter__(self) -> EventStream:
        adapter = self._adapter
        state, start_reader, receive, tlog = adapter._prepare(self._req)
        self._state = state
        cm = trio.open_nursery()
        try:
            nursery = await cm.__aenter__()
        except BaseException:
            adapter._unregister(state)
            raise
        self._nursery_cm = cm
        nursery.start_soon(start_reader)
        self._stream = EventStream(adapter, state, receive, tlog)
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
        state.scope.cancel()
        try:
            await cm.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The reader raises nothing of its own (every failure becomes an `End`), so a
            # group holding only what the block raised is the nursery's wrapping: let the
            # block's own exception (a user's error, an outer `Cancelled`) go on unchanged.
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                return False
            raise
        finally:
            if self._stream is not None:
                self._stream._receive.close()
            self._adapter._unregister(state)
        return None
