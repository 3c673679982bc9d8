"""`OpenAIAdapter`: one endpoint, one shared HTTP client, a registry of running tasks.

The adapter owns an `Endpoint` (config, client, URL, retry jitter and budget, what the upstream
told us) while it is open, and a `TaskRegistry`; `submit` hands both to a `Submission`, the
probes get the `Endpoint`. Nothing below reaches back up into the adapter.

A task runs from entering `submit` until its consumer has read `End` (or left the block); while
it runs its id is in the registry and `cancel(task_id)` can end it. `cancel` only sets a flag
and cancels the reader's scope, so it is a plain function: it cannot block (trio's rule: only
what may block is `async`), and it is safe from any task of the same trio run — but not from
another thread: a cancel scope is not thread-safe, and cancelling one from outside the run
wedges it. `cancel` compares the calling thread with the one that opened the adapter before it
touches anything (one `get_ident()` call: it is on the hot path of a busy orchestrator).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from types import TracebackType

import httpx2

from ._budget import RetryBudget
from ._config import AdapterConfig, TaskRequest
from ._endpoint import Endpoint, UpstreamInfo
from ._events import EngineVersion, HealthStatus, WorkerProps
from ._http import Upstream
from ._observe import Telemetry
from ._probes import probe_engine_version, probe_health, probe_props
from ._registry import TaskRegistry
from ._stream import NOT_OPEN, Submission

__all__ = ["AdapterStatistics", "OpenAIAdapter"]


@dataclass(frozen=True, slots=True)
class AdapterStatistics:
    """A snapshot: tasks in the registry now, tasks submitted since the adapter was made, and
    background drains of finished responses still running (connections kept for reuse)."""

    running: int
    submitted: int
    draining: int = 0


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
        self._retry_budget = retry_budget or RetryBudget.from_policy(config.retry)
        self._transport = transport
        self._endpoint: Endpoint | None = None
        self._registry = TaskRegistry()
        self._telemetry: Telemetry | None = None  # see `attach_telemetry`
        self._info = UpstreamInfo()
        self._rng = random.Random()  # retry jitter; tests may seed or replace it
        self._thread: int | None = None  # the thread of the trio run that opened the adapter

    # --- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> OpenAIAdapter:
        if self._endpoint is not None:
            raise RuntimeError("this OpenAIAdapter is already open")
        upstream = Upstream(self.config, transport=self._transport)
        await upstream.open()  # the transport's tasks and the drains live in its nurseries
        self._endpoint = Endpoint(
            self.config,
            upstream,
            retry_budget=self._retry_budget,
            rng=self._rng,
            info=self._info,
        )
        self._thread = threading.get_ident()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the background drains and close the shared client (every pooled connection).
        Call it from the task that opened the adapter (`__aexit__` does): it exits the
        nurseries `__aenter__` opened."""
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            await endpoint.upstream.aclose()  # bounded and shielded inside; see `Upstream.aclose`

    @property
    def endpoint(self) -> Endpoint:
        """What tasks and probes are given: config, client, URL, rng, budget, upstream info."""
        if self._endpoint is None:
            raise RuntimeError(NOT_OPEN)
        return self._endpoint

    @property
    def upstream(self) -> Upstream:
        return self.endpoint.upstream

    @property
    def retry_budget(self) -> RetryBudget:
        return self._retry_budget

    @property
    def rng(self) -> random.Random:
        """The retry jitter's random source; tests may seed or replace it."""
        return self._rng

    @rng.setter
    def rng(self, rng: random.Random) -> None:
        self._rng = rng
        if self._endpoint is not None:
            self._endpoint.rng = rng

    @property
    def engine_version_cache(self) -> str | None:
        """ "<engine> <version>" from the last `engine_version()` that found one, else None."""
        return self._info.engine_version

    @property
    def litellm_version(self) -> str | None:
        """`x-litellm-version` of the last stream response that carried it, else None."""
        return self._info.litellm_version

    def attach_telemetry(self, telemetry: Telemetry | None) -> None:
        """Report every task submitted from now on to `telemetry` (`None`: stop). Tasks
        already running keep the telemetry they started with. `oai_adapter.otel.instrument`
        calls this."""
        self._telemetry = telemetry

    # --- tasks ---------------------------------------------------------------------------

    def submit(self, req: TaskRequest) -> Submission:
        """Stream one completion: `async with adapter.submit(req) as events: async for ev in events`.

        Entering raises `ValueError` when `req.task_id` is already running or `req` does not fit
        the configured api; every upstream failure arrives as `End(reason="error")`.
        """
        # The endpoint as it is now (None when the adapter is not open: entering says so).
        return Submission(self._endpoint, self._registry, req, self._telemetry)

    def cancel(self, task_id: str) -> bool:
        """End a running task. True if it was running (its next event is `End(cancelled)`).

        Call it from the adapter's trio run; from another thread use
        `trio.from_thread.run_sync(adapter.cancel, task_id)`."""
        if self._thread is not None and threading.get_ident() != self._thread:
            raise RuntimeError(
                "OpenAIAdapter.cancel() was called from another thread than the adapter's trio"
                " run; call it there, e.g. trio.from_thread.run_sync(adapter.cancel, task_id)"
            )
        return self._registry.cancel(task_id)

    def running(self) -> frozenset[str]:
        """The ids of the tasks running now."""
        return self._registry.running()

    def statistics(self) -> AdapterStatistics:
        registry = self._registry.statistics()
        endpoint = self._endpoint
        return AdapterStatistics(
            running=registry.running,
            submitted=registry.submitted,
            draining=endpoint.upstream.draining if endpoint is not None else 0,
        )

    # --- probes --------------------------------------------------------------------------

    async def health(self) -> HealthStatus:
        """Live and ready? Never raises for a down upstream."""
        return await probe_health(self.endpoint)

    async def props(self) -> WorkerProps:
        """Slots and context length, where the upstream says."""
        return await probe_props(self.endpoint)

    async def engine_version(self) -> EngineVersion:
        """Engine, version, model digest and web server, where the upstream says."""
        return await probe_engine_version(self.endpoint)

    def __repr__(self) -> str:
        return (
            f"<OpenAIAdapter {self.config.base_url} model={self.config.model!r}"
            f" running={len(self._registry)}>"
        )
