"""`OpenAIAdapter`: one endpoint, one shared HTTP client, a registry of running tasks.

A task runs from entering `submit` until its consumer has read `End` (or left the block); while
it runs its id is in the registry and `cancel(task_id)` can end it. `cancel` only sets a flag
and cancels the reader's scope, so it is a plain function: it cannot block (trio's rule: only
what may block is `async`), and it is safe from any task of the same trio run.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import httpx2
import trio

from ._body import build_body, endpoint_path
from ._budget import RetryBudget
from ._config import AdapterConfig, TaskRequest
from ._events import EngineVersion, Event, HealthStatus, WorkerProps
from ._http import Upstream
from ._log import TaskLog, adapter_fields
from ._observe import Telemetry
from ._stream import CHANNEL_BATCHES, Submission
from ._task import TaskState, run_task

__all__ = ["AdapterStatistics", "OpenAIAdapter"]


@dataclass(frozen=True, slots=True)
class AdapterStatistics:
    """A snapshot: tasks in the registry now, and tasks submitted since the adapter opened."""

    running: int
    submitted: int


class OpenAIAdapter:
    """Drive one OpenAI-compatible endpoint. Use as `async with OpenAIAdapter(config) as a:`."""

    def __init__(
        self,
        config: AdapterConfig,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        """`retry_budget`: share one budget among several adapters (a host shares its pool's);
        by default the adapter has its own, from `config.retry`'s budget numbers."""
        if not isinstance(config, AdapterConfig):
            raise TypeError("OpenAIAdapter needs an AdapterConfig")
        self.config = config
        self.retry_budget = retry_budget or RetryBudget.from_policy(config.retry)
        self._transport = transport
        self._upstream: Upstream | None = None
        self._tasks: dict[str, TaskState] = {}
        self._submitted = 0
        self._telemetry: Telemetry | None = None  # set by `oai_adapter.otel.instrument`
        self.endpoint = config.base_url + endpoint_path(config.api)
        self.engine_version_cache: str | None = None
        self.litellm_version: str | None = None  # from `x-litellm-version` on a stream response
        self.rng = random.Random()  # retry jitter; tests may seed or replace it

    # --- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> OpenAIAdapter:
        if self._upstream is not None:
            raise RuntimeError("this OpenAIAdapter is already open")
        upstream = Upstream(self.config, transport=self._transport)
        await upstream.open()  # the HTTP/2 transport's connection tasks live in its nursery
        self._upstream = upstream
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the shared client (and every pooled connection). Call it from the task that
        opened the adapter (`__aexit__` does): it exits the client's transport nursery."""
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            await upstream.aclose()  # bounded and shielded inside; see `Upstream.aclose`

    @property
    def upstream(self) -> Upstream:
        if self._upstream is None:
            raise RuntimeError("use the adapter inside `async with OpenAIAdapter(config)`")
        return self._upstream

    # --- tasks ---------------------------------------------------------------------------

    def submit(self, req: TaskRequest) -> Submission:
        """Stream one completion: `async with adapter.submit(req) as events: async for ev in events`.

        Entering raises `ValueError` when `req.task_id` is already running or `req` does not fit
        the configured api; every upstream failure arrives as `End(reason="error")`.
        """
        return Submission(self, req)

    def cancel(self, task_id: str) -> bool:
        """End a running task. True if it was running (its next event is `End(cancelled)`)."""
        state = self._tasks.get(task_id)
        if state is None or state.cancel_requested:
            return False
        state.cancel_requested = True
        state.scope.cancel()
        return True

    def running(self) -> frozenset[str]:
        """The ids of the tasks running now."""
        return frozenset(self._tasks)

    def statistics(self) -> AdapterStatistics:
        return AdapterStatistics(running=len(self._tasks), submitted=self._submitted)

    def _prepare(
        self, req: object
    ) -> tuple[
        TaskState, Callable[[], Awaitable[None]], trio.MemoryReceiveChannel[list[Event]], TaskLog
    ]:
        """Validate, register and set up a task; the reader is started by the caller."""
        if not isinstance(req, TaskRequest):
            raise TypeError("submit() takes a TaskRequest")
        self.upstream  # noqa: B018 - raises when the adapter is not open
        config = self.config
        body = build_body(config.api, config.model, req, include_usage=config.include_usage)
        if req.task_id in self._tasks:
            raise ValueError(f"task {req.task_id!r} is already running")
        started_at = trio.current_time()
        correlation_id = req.correlation_id or uuid.uuid4().hex
        headers = {"x-correlation-id": correlation_id, "accept": "text/event-stream"}
        telemetry = self._telemetry
        tlog = TaskLog(
            started_at=started_at,
            telemetry=telemetry.start_task(config, req, correlation_id) if telemetry else None,
            job_id=req.task_id,
            session_id=req.session_id,
            correlation_id=correlation_id,
            **adapter_fields(self),
        )
        state = TaskState(req.task_id)
        send, receive = trio.open_memory_channel[list[Event]](CHANNEL_BATCHES)
        self._tasks[req.task_id] = state
        self._submitted += 1
        self.retry_budget.record_submit()

        async def start_reader() -> None:
            await run_task(self, state, req, body, headers, send, tlog, started_at)

        return state, start_reader, receive, tlog

    def _unregister(self, state: TaskState) -> None:
        if self._tasks.get(state.task_id) is state:
            del self._tasks[state.task_id]

    # --- probes --------------------------------------------------------------------------

    async def health(self) -> HealthStatus:
        """Live and ready? Never raises for a down upstream."""
        from ._probes import probe_health

        return await probe_health(self)

    async def props(self) -> WorkerProps:
        """Slots and context length, where the upstream says."""
        from ._probes import probe_props

        return await probe_props(self)

    async def engine_version(self) -> EngineVersion:
        """Engine, version, model digest and web server, where the upstream says."""
        from ._probes import probe_engine_version

        version = await probe_engine_version(self)
        if version.version != "unknown":
            self.engine_version_cache = f"{version.engine} {version.version}"
        return version

    def __repr__(self) -> str:
        return f"<OpenAIAdapter {self.config.base_url} model={self.config.model!r} running={len(self._tasks)}>"
