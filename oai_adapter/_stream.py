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
        "_limit",
        "_pos",
        "_receive",
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
        # `_batch[_pos:_limit]` can be handed out without a check-in: no End among them and
        # no checkpoint due (see `_refill`).
        self._limit = 0
        self._delivered = 0  # Tokens delivered before `_batch`; see `tokens_delivered`
        self._finished = False
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

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        # The per-event path: one bounds check and one flag, no counters (the hot loop).
        pos = self._pos
        if pos < self._limit and not self._state.cancel_requested:
            self._pos = pos + 1
            return self._batch[pos]
        return await self._refill()

    async def _refill(self) -> Event:
        """Everything but the common case: a cancel, a checkpoint, the next batch, `End`."""
        if self._finished:
            raise StopAsyncIteration
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
                self._batch = await self._receive.receive()
            except trio.EndOfChannel:
                if state.cancel_requested:
                    return await self._cancelled()
                raise RuntimeError("the reader ended without an End event") from None  # a bug
            self._pos = 0
            if state.cancel_requested:
                return await self._cancelled()
        batch, pos = self._batch, self._pos
        last = len(batch) - 1 if type(batch[-1]) is End else len(batch)  # End: never fast
        self._limit = min(last, pos + CHECKPOINT_EVERY)
        event = batch[pos]
        self._pos = pos + 1
        if type(event) is End:
            self._close()
        return event

    async def _cancelled(self) -> End:
        self._delivered = self.tokens_delivered
        self._batch = []
        self._pos = 0
        await self._state.done.wait()  # the reader has closed the upstream response
        self._close()
        self._tlog.cancelled(self._delivered)
        return End(task_id=self.task_id, reason="cancelled", tokens_out=self._delivered)

    def _close(self) -> None:
        # The receive channel is closed when the `submit` block is left (`Submission`), not
        # here: after a cancel it may still buffer thousands of Tokens, and freeing them then
        # rather than before `End(cancelled)` is returned keeps that off the cancel's latency.
        self._finished = True
        self._adapter._unregister(self._state)


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
            tlog.closed(0)
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
                self._stream._tlog.closed(self._stream.tokens_delivered)
            self._adapter._unregister(state)
        return None
