"""A trio program run one Gherkin step at a time, with the clock standing still between steps.

pytest-bdd calls steps as plain functions, one after another, and a scenario interleaves
actions (`When`) and checks (`Then`) on the same running host. So the scenario's program runs
in trio's *guest mode* (`trio.lowlevel.start_guest_run`) on a host loop that is only pumped
while a step is being served: each step hands an async function to the program, pumps until it
has returned, and takes its result. Between steps nothing of the program runs, so the virtual
clock (`MockClock(autojump_threshold=…)`, the `loopback_clock` of the other tests: real
sockets run here) stands still, background tasks wait, and a check sees exactly the state the
previous action left.

Every step runs under `IO_DEADLINE` seconds of trio time, and pumping is bounded in real time
too (`REAL_DEADLINE`), so a broken program fails the scenario instead of hanging it.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio
from trio.testing import MockClock

from ..conftest import IO_DEADLINE, JUMP_AFTER_IDLE

__all__ = ["Stepper"]

T = TypeVar("T")

#: Real seconds one step may take before the scenario fails (a loaded 2-core machine included).
REAL_DEADLINE = 60.0

Job = tuple[Callable[[], Awaitable[Any]], float, list[outcome.Outcome[Any]]]


class Stepper:
    """Runs `main(stepper)` in guest mode; `step(fn)` runs `await fn()` inside it.

    `main` sets up what the scenario needs and then calls `await stepper.serve()`, which
    serves steps until `close()`; `nursery` (set by `serve`) is where steps start background
    tasks. An exception from a step is re-raised in the step that ran it.
    """

    def __init__(self) -> None:
        self.clock = MockClock(autojump_threshold=JUMP_AFTER_IDLE)
        self.nursery: trio.Nursery | None = None
        self._callbacks: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._jobs: trio.MemorySendChannel[Job] | None = None
        self._done: outcome.Outcome[None] | None = None

    def start(self, main: Callable[[Stepper], Awaitable[None]]) -> None:
        async def guest() -> None:
            await main(self)

        trio.lowlevel.start_guest_run(
            guest,
            run_sync_soon_threadsafe=self._callbacks.put,
            done_callback=self._finished,
            clock=self.clock,
            host_uses_signal_set_wakeup_fd=False,
        )
        self._pump(lambda: self._jobs is not None)

    async def serve(self) -> None:
        """Serve steps until `close()`; background tasks started by steps are cancelled then."""
        send, receive = trio.open_memory_channel[Job](1)
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._jobs = send
            async with receive:
                async for fn, deadline, box in receive:
                    with trio.fail_after(deadline):
                        box.append(await outcome.acapture(fn))
            nursery.cancel_scope.cancel()

    def step(self, fn: Callable[[], Awaitable[T]], *, sleeps: float = 0.0) -> T:
        """Run `await fn()` in the program and return what it returns. Its deadline is
        `IO_DEADLINE` plus `sleeps`, the seconds the step means to let pass."""
        assert self._token is not None, "the program is not serving"
        assert self._jobs is not None, "the program is not serving"
        box: list[outcome.Outcome[Any]] = []
        jobs = self._jobs
        self._token.run_sync_soon(jobs.send_nowait, (fn, IO_DEADLINE + sleeps, box))
        self._pump(lambda: bool(box))
        result: T = box[0].unwrap()
        return result

    def close(self) -> None:
        """End the program (background tasks are cancelled) and re-raise what it raised."""
        if self._token is not None and self._jobs is not None and self._done is None:
            self._token.run_sync_soon(self._jobs.close)
        self._pump(lambda: self._done is not None)
        assert self._done is not None
        self._done.unwrap()

    def _finished(self, result: outcome.Outcome[None]) -> None:
        self._done = result

    def _pump(self, until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + REAL_DEADLINE
        while not until():
            if self._done is not None:
                self._done.unwrap()
                raise RuntimeError("the scenario's program ended before the step was served")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"a step took more than {REAL_DEADLINE} s of real time")
            try:
                callback = self._callbacks.get(timeout=left)
            except queue.Empty:
                continue
            callback()
