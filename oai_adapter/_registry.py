"""The running tasks of one adapter, by id: what `submit`, `cancel` and the consumer share.

A task is in the registry from entering `submit` until its consumer has read `End` or left the
block (the consumer's view, DESIGN.md "Public API"). `add` is the only way in and refuses an id
that is running; `discard` takes out exactly the entry it was given, so a late discard of a
finished task never removes a newer task that reused its id. `cancel` sets the flag first and
then cancels the reader's scope; it never blocks. The registry knows nothing of threads: the
adapter checks it is called from its trio thread before it gets here.

The reader's scope — one per attempt, and per backoff, made by `TaskState.renew_scope()` — also
carries the task's `total` deadline and the attempt's read deadlines (one cancel scope for all
the ways a task ends, not three: trio keeps a status and two sets per entered scope,
docs/performance.md "Memory per open stream"). So everything that ends the reader on purpose
goes through `TaskState.stop()`, and `stopped` tells the reader which it was: False after its
scope was cancelled means a deadline passed. A scope made after `stop()` is cancelled at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from ._http import ClosesNow

__all__ = ["Draining", "RegistryStatistics", "TaskRegistry", "TaskState"]


class Draining(Protocol):
    """A response whose tail a background drain reads (`_http.UpstreamResponse`)."""

    async def aclose_now(self) -> None: ...


class TaskState:
    """What `cancel()`, the consumer and the reader share about one task."""

    __slots__ = (
        "_done",
        "attempts",
        "cancel_requested",
        "draining",
        "reader_done",
        "response",
        "response_closed",
        "retry_refused",
        "scope",
        "stopped",
        "task_id",
    )

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        # The scope the reader runs in now (`renew_scope()`; None before its first attempt).
        # Cancelled by `stop()` (cancel(task_id), leaving `submit`) and by its deadlines, which
        # the reader sets.
        self.scope: trio.CancelScope | None = None
        self.stopped = False  # `stop()` was called: the reader sends no `End`
        self.cancel_requested = False
        # The reader has finished and closed (or handed off) its response: `reader_finished()`.
        # The event is made only when someone waits for it (a cancel's `End`): most tasks end
        # without, and an Event per open stream is ~0.3 KB (docs/performance.md, memory).
        self.reader_done = False
        self._done: trio.Event | None = None
        # The response the reader handed to a background drain after the upstream finished:
        # a cancel that comes later closes it before `End(cancelled)` is returned.
        self.draining: Draining | None = None
        # The response the reader is reading, set by the reader while it holds one: `stop()`
        # closes its connection at once, and `response_closed` says it did — the upstream sees
        # the close when `cancel()` returns, and the cancel's `End` need not wait for the
        # reader to unwind (DESIGN.md: the response is closed by the time `End` is read).
        self.response: ClosesNow | None = None
        self.response_closed = False
        # Written by the reader's attempts loop only: attempts made so far, and whether the
        # retry budget refused the retry after the last one (`EventStream.statistics()`).
        self.attempts = 0
        self.retry_refused = False

    def reader_finished(self) -> None:
        """The reader has finished and closed (or handed to a drain) its response."""
        self.reader_done = True
        if self._done is not None:
            self._done.set()

    async def wait_reader(self) -> None:
        """Wait until `reader_finished()` (a checkpoint when it already was)."""
        if self._done is None:
            self._done = trio.Event()
            if self.reader_done:
                self._done.set()
        await self._done.wait()

    def stop(self) -> None:
        """End the reader on purpose (a cancel, or the consumer closed the stream or left the
        block): its scope is cancelled and it sends no `End`, and the connection of the response
        it reads is closed now (`response_closed`). Never blocks; idempotent."""
        self.stopped = True
        if self.scope is not None:  # first: a reader waiting on the socket wakes cancelled
            self.scope.cancel()
        response = self.response
        if response is not None and response.close_now():
            self.response_closed = True

    def renew_scope(self, deadline: float = math.inf) -> trio.CancelScope:
        """For the reader: a fresh scope with `deadline` that `stop()` reaches (an attempt's, a
        backoff's, the one `End` is sent in), cancelled already when `stop()` came first."""
        scope = self.scope = trio.CancelScope(deadline=deadline)
        if self.stopped:
            scope.cancel()
        return scope


@dataclass(frozen=True, slots=True)
class RegistryStatistics:
    """A snapshot: tasks running now, and tasks added since the registry was made."""

    running: int
    submitted: int


class TaskRegistry:
    """Running tasks by id (see the module header)."""

    __slots__ = ("_submitted", "_tasks")

    def __init__(self) -> None:
        self._tasks: dict[str, TaskState] = {}
        self._submitted = 0

    def add(self, task_id: str) -> TaskState:
        """Register a task; `ValueError` when `task_id` is already running."""
        if task_id in self._tasks:
            raise ValueError(f"task {task_id!r} is already running")
        state = self._tasks[task_id] = TaskState(task_id)
        self._submitted += 1
        return state

    def discard(self, state: TaskState) -> None:
        """Remove `state` if it is still the entry for its id (idempotent)."""
        if self._tasks.get(state.task_id) is state:
            del self._tasks[state.task_id]

    def cancel(self, task_id: str) -> bool:
        """Cancel a running task. True if it was running and not cancelled before."""
        state = self._tasks.get(task_id)
        if state is None or state.cancel_requested:
            return False
        state.cancel_requested = True
        state.stop()
        return True

    def running(self) -> frozenset[str]:
        return frozenset(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def statistics(self) -> RegistryStatistics:
        return RegistryStatistics(running=len(self._tasks), submitted=self._submitted)
