"""`AdapterHost`: pools of replicas behind one facade (HOST.md).

A registry of `OpenAIAdapter`s keyed by `(pool_id, replica_id)`, each opened, probed, drained
and closed by one task in the host's nursery (`_serve`): the task that opens an adapter closes
it (the HTTP/2 transport's nursery lives in the adapter), and an `unbind` or rebind whose caller
goes away keeps draining there. `submit` places tasks (`_hosttask`), the pool state moves in
`_hostpool`, the breaker and routing rules are sans-IO (`_breaker`, `_routing`).

Leaving `async with AdapterHost` marks every task still placed on a replica as ended by the
host's exit (its consumer gets `End(error, POOL_UNAVAILABLE)`), cancels the probes and drains,
waits (shielded, at most `EXIT_GRACE`) for the tasks to leave their adapters, and closes every
adapter.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final

import trio

from ._adapter import OpenAIAdapter
from ._config import AdapterConfig
from ._events import EngineVersion, HealthStatus, WorkerProps
from ._hostlog import narrate
from ._hostpolicy import HostPolicy
from ._hostpool import Pool, Replica
from ._hoststats import (
    HostStatistics,
    PoolCapabilities,
    PoolHealth,
    PoolStatistics,
    ReplicaStatistics,
    ReplicaStatus,
)
from ._hosttask import HostSubmission
from ._hosttelemetry import HostTelemetry
from ._stream import leave_nursery

__all__ = ["EXIT_GRACE", "AdapterHost"]

#: Seconds an evicted task may take to leave its adapter (the adapter's own cleanup is
#: bounded by its `CLEANUP_GRACE`, 1 s) before the adapter is closed under it anyway.
EXIT_GRACE: Final = 2.0


class AdapterHost:
    """Pools of replicas behind one facade. Use as `async with AdapterHost(policy) as host:`."""

    def __init__(self, policy: HostPolicy | None = None) -> None:
        if policy is not None and not isinstance(policy, HostPolicy):
            raise TypeError("AdapterHost needs a HostPolicy")
        self.policy = policy or HostPolicy()
        self.rng = random.Random()  # ties among equally loaded replicas; seed it to reproduce
        self._pools: dict[str, Pool] = {}
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._telemetry: HostTelemetry | None = None

    # --- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> AdapterHost:
        if self._nursery_cm is not None:
            raise RuntimeError("this AdapterHost is already open")
        cm = trio.open_nursery()
        self._nursery = await cm.__aenter__()
        self._nursery_cm = cm
        self._token = trio.lowlevel.current_trio_token()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        cm, nursery = self._nursery_cm, self._nursery
        assert cm is not None
        assert nursery is not None
        self._nursery = None  # no new bind or submit
        for pool in self._pools.values():
            pool.closed = True
            for rep in [*pool.replicas.values(), *pool.draining]:
                rep.evict("closing")
        nursery.cancel_scope.cancel()
        return await leave_nursery(cm, exc_type, exc, tb)

    @property
    def _open_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("use the host inside `async with AdapterHost(policy)`")
        return self._nursery

    def _pool(self, pool_id: str) -> Pool:
        try:
            return self._pools[pool_id]
        except KeyError:
            raise KeyError(f"no pool {pool_id!r} is bound") from None

    def attach_telemetry(self, telemetry: HostTelemetry | None) -> None:
        """Report failovers, budget refusals and breaker transitions of every pool to
        `telemetry`, and every adapter of the host, open now or opened later (`None`
        detaches). See `oai_adapter.otel.instrument_host`."""
        self._telemetry = telemetry
        for pool in self._pools.values():
            pool.telemetry = telemetry
            for rep in [*pool.replicas.values(), *pool.draining]:
                if telemetry is not None and rep.adapter is not None:
                    telemetry.adapter_opened(rep.adapter)

    # --- registry ------------------------------------------------------------------------

    async def bind(self, pool_id: str, replica_id: str, config: AdapterConfig) -> None:
        """Bind (or rebind) `config` as replica `replica_id` of pool `pool_id`.

        Opens the adapter and probes it once (health, props, engine_version; bounded by the
        config's connect timeout). A replica whose probe fails is bound as not ready. Binding a
        bound key is a rebind: the new adapter takes every new task once it is open and
        probed (if that raises, the old one stays), and the old one drains in the background.
        """
        nursery = self._open_nursery
        for name, value in (("pool_id", pool_id), ("replica_id", replica_id)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"bind: {name} must be a non-empty string")
        if not isinstance(config, AdapterConfig):
            raise TypeError("bind: config must be an AdapterConfig")
        for name, key in (("pool_id", pool_id), ("replica_id", replica_id)):
            named = getattr(config, name)
            if named is not None and named != key:
                raise ValueError(f"bind: config.{name} is {named!r}, not the key's {key!r}")
        config = dataclasses.replace(config, pool_id=pool_id, replica_id=replica_id)
        pool = self._pools.get(pool_id)
        created = pool is None
        if pool is None:
            pool = self._pools[pool_id] = Pool(pool_id, self.policy, config.model)
            pool.telemetry = self._telemetry
        rep = Replica(pool, replica_id, config)
        try:
            await nursery.start(self._serve, rep)
        except BaseException:
            if created and not pool.replicas and not pool.draining and not pool.tasks:
                del self._pools[pool_id]
            raise
        old = pool.replicas.get(replica_id)
        pool.replicas[replica_id] = rep
        state = "ready" if rep.ready else f"not ready ({rep.detail})"
        if old is None:
            rep.narrate(
                "INFO",
                "bind",
                f"bound replica {replica_id} of pool {pool_id} at {config.base_url}: {state}",
            )
            return
        old.draining = "rebound"
        pool.draining.append(old)
        old.retire.set()
        rep.narrate(
            "INFO",
            "rebind",
            f"rebound replica {replica_id} of pool {pool_id} to {config.base_url}: {state};"
            f" the old adapter drains {old.running} task(s)",
        )

    async def unbind(self, pool_id: str, replica_id: str, *, drain: bool = True) -> None:
        """No new tasks for the replica; running ones go on until they end or `drain_timeout`
        passes (at once with `drain=False`); then the adapter is closed. A cancelled caller
        leaves the drain going on in the host's nursery."""
        self._open_nursery  # noqa: B018 - raises when the host is not open
        pool = self._pool(pool_id)
        rep = pool.replicas.get(replica_id)
        if rep is None:
            raise KeyError(f"no replica {replica_id!r} is bound in pool {pool_id!r}")
        del pool.replicas[replica_id]
        rep.draining = "unbound"
        rep.drain = drain
        pool.draining.append(rep)
        rep.narrate(
            "INFO",
            "unbind",
            f"unbinding replica {replica_id} of pool {pool_id}: "
            + (f"draining {rep.running} task(s)" if drain else f"ending {rep.running} task(s) now"),
        )
        rep.retire.set()
        await rep.closed.wait()

    async def _serve(
        self, rep: Replica, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One replica's whole life: open, first probe, probe loop, drain, close."""
        pool = rep.pool
        try:
            async with OpenAIAdapter(rep.config, retry_budget=pool.budget) as adapter:
                rep.adapter = adapter
                if pool.telemetry is not None:
                    pool.telemetry.adapter_opened(adapter)
                try:
                    await self._probe(rep, first=True)
                    task_status.started()
                    async with trio.open_nursery() as probes:
                        probes.start_soon(self._probe_loop, rep)
                        await rep.retire.wait()
                        probes.cancel_scope.cancel()
                    with trio.move_on_after(self.policy.drain_timeout if rep.drain else 0.0):
                        await rep.wait_idle()
                finally:
                    rep.evict("closing" if pool.closed or rep.draining is None else rep.draining)
                    with trio.move_on_after(EXIT_GRACE, shield=True):
                        await rep.wait_idle()
        finally:
            if rep in pool.draining:
                pool.draining.remove(rep)
            rep.closed.set()
            if rep.draining is not None:
                rep.narrate(
                    "INFO",
                    "unbind",
                    f"replica {rep.replica_id} of pool {pool.pool_id} drained and closed ({rep.draining})",
                )

    # --- probes --------------------------------------------------------------------------

    async def _probe_loop(self, rep: Replica) -> None:
        while True:
            await trio.sleep(self.policy.probe_interval)
            await self._probe(rep, first=False)

    async def _probe(self, rep: Replica, *, first: bool, props: bool = True) -> None:
        """One round: health and props (and engine_version at bind and when health changed),
        concurrently; the first bounded by `connect`, later ones by max(connect, interval)."""
        adapter = rep.adapter
        assert adapter is not None
        connect = rep.config.timeouts.connect
        bound = connect if first else max(connect, self.policy.probe_interval)
        health: HealthStatus | None = None
        new_props: WorkerProps | None = None
        version: EngineVersion | None = None

        async def get_health() -> None:
            nonlocal health
            health = await adapter.health()

        async def get_props() -> None:
            nonlocal new_props
            new_props = await adapter.props()

        async def get_version() -> None:
            nonlocal version
            version = await adapter.engine_version()

        with trio.move_on_after(bound):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(get_health)
                if props:
                    nursery.start_soon(get_props)
                if first:
                    nursery.start_soon(get_version)
        before = (rep.live, rep.ready)
        if new_props is not None:
            rep.props = new_props
        if version is not None:
            self._set_engine(rep, version)
        rep.probed_at = time.time()
        if health is None:
            rep.live, rep.ready = False, False
            rep.detail = f"no probe answer within {bound:g} s"
        else:
            rep.live, rep.ready, rep.detail = health.live, health.ready, health.detail
        if first:
            return
        if (rep.live, rep.ready) != before:
            rep.narrate(
                "INFO",
                "readiness",
                f"replica {rep.replica_id} is {'ready' if rep.ready else 'not ready'} ({rep.detail})",
            )
            if rep.live:
                with trio.move_on_after(bound):
                    self._set_engine(rep, await adapter.engine_version())

    @staticmethod
    def _set_engine(rep: Replica, version: EngineVersion) -> None:
        if version.version != "unknown":
            rep.engine = f"{version.engine} {version.version}"

    # --- tasks ---------------------------------------------------------------------------

    def submit(self, pool_id: str, req: object) -> HostSubmission:
        """Stream one completion through the pool: `async with host.submit(pool, req) as events:`.

        The same grammar as `OpenAIAdapter.submit`; `Started.replica_id` names the serving
        replica. Raises `KeyError` for an unknown pool; entering raises `ValueError` when the
        task id is running in the pool or the request does not fit a bound replica's api.
        """
        self._open_nursery  # noqa: B018
        return HostSubmission(self._pool(pool_id), req, self.rng)

    def cancel(self, pool_id: str, task_id: str) -> bool:
        """End a running task (from the host's trio thread). True if it was running: its next
        event is `End(cancelled)`, also while it is between two replicas."""
        self._check_thread()
        pool = self._pool(pool_id)
        task = pool.tasks.get(task_id)
        if task is None or task.cancel_requested:
            return False
        task.cancel_requested = True
        rep = task.replica
        if rep is not None and rep.adapter is not None:
            rep.adapter.cancel(task_id)  # the serving replica closes its upstream response
        task.scope.cancel()
        narrate(
            "INFO",
            "cancel",
            f"task {task_id} cancelled"
            + (f" on replica {rep.replica_id}" if rep is not None else " between replicas"),
            pool_id=pool_id,
            replica_id=rep.replica_id if rep is not None else None,
            job_id=task_id,
            target=rep.target if rep is not None else None,
        )
        return True

    def _check_thread(self) -> None:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            token = None
        if self._token is not None and token is not self._token:
            raise RuntimeError(
                "AdapterHost.cancel must be called from the host's trio thread"
                " (from another thread, use trio.from_thread.run_sync)"
            )

    # --- health, props, capabilities, statistics ------------------------------------------

    async def health(self, pool_id: str) -> PoolHealth:
        """Probe the pool's replicas now (health and props)."""
        pool = self._pool(pool_id)
        async with trio.open_nursery() as nursery:
            for rep in list(pool.replicas.values()):
                if rep.adapter is not None:
                    nursery.start_soon(self._probe_now, rep, True)
        now = trio.current_time()
        pool.poll_breakers(now)
        statuses: list[ReplicaStatus] = []
        reasons: list[str] = []
        ready = 0
        for rep in [*pool.replicas.values(), *pool.draining]:
            why, _ = pool.why_not(rep, now)
            if why is None:
                ready += 1
            else:
                reasons.append(f"{rep.replica_id}: {why}")
            statuses.append(
                ReplicaStatus(
                    replica_id=rep.replica_id,
                    live=rep.live,
                    ready=rep.ready,
                    breaker=rep.breaker.state,
                    running=rep.running,
                    draining=rep.draining is not None,
                    open_until=rep.breaker.open_until,
                    capacity=rep.capacity,
                    slots_total=rep.props.slots_total if rep.props is not None else None,
                    engine=rep.engine,
                )
            )
        detail = f"{ready} of {len(pool.replicas)} replica(s) take tasks"
        if reasons:
            detail += "; " + "; ".join(reasons)
        return PoolHealth(
            live=any(s.live for s in statuses),
            ready=ready > 0,
            detail=detail,
            replicas=tuple(statuses),
        )

    async def _probe_now(self, rep: Replica, with_health: bool) -> None:
        if with_health:
            await self._probe(rep, first=False)
            return
        adapter = rep.adapter
        assert adapter is not None
        with trio.move_on_after(max(rep.config.timeouts.connect, self.policy.probe_interval)):
            rep.props = await adapter.props()

    async def props(self, pool_id: str) -> WorkerProps:
        """Probe the pool's replicas' props now; slots summed over the ready ones."""
        pool = self._pool(pool_id)
        async with trio.open_nursery() as nursery:
            for rep in list(pool.replicas.values()):
                if rep.adapter is not None:
                    nursery.start_soon(self._probe_now, rep, False)
        ready = [rep for rep in pool.replicas.values() if rep.ready]
        return WorkerProps(
            slots_total=_sum(rep.props.slots_total if rep.props else None for rep in ready),
            slots_free=_sum(rep.props.slots_free if rep.props else None for rep in ready),
            model=pool.model,
            context_length=_min(rep.props.context_length if rep.props else None for rep in ready),
        )

    def capabilities(self) -> dict[str, PoolCapabilities]:
        """Every pool's capabilities from the last probes (no I/O)."""
        out: dict[str, PoolCapabilities] = {}
        for pool_id, pool in self._pools.items():
            bound = list(pool.replicas.values())
            ready = [rep for rep in bound if rep.ready]
            probed = [rep.probed_at for rep in bound if rep.probed_at is not None]
            out[pool_id] = PoolCapabilities(
                model=pool.model,
                context_length=_min(
                    rep.props.context_length if rep.props else None for rep in ready
                ),
                slots_total=_sum(rep.props.slots_total if rep.props else None for rep in ready),
                replicas_ready=len(ready),
                replicas_total=len(bound),
                engines=tuple(sorted({rep.engine for rep in bound if rep.engine is not None})),
                apis=tuple(sorted({rep.config.api for rep in bound})),
                updated_at=max(probed) if probed else time.time(),
            )
        return out

    def statistics(self) -> HostStatistics:
        """A snapshot of every pool's counters (no I/O)."""
        now = trio.current_time() if self._token is not None else math.inf
        pools: dict[str, PoolStatistics] = {}
        for pool_id, pool in self._pools.items():
            if self._token is not None:
                pool.poll_breakers(now)
            replicas: dict[str, ReplicaStatistics] = {}
            reps = [*pool.draining, *pool.replicas.values()]  # the bound one last: its breaker
            running: dict[str, int] = {}
            for rep in reps:
                running[rep.replica_id] = running.get(rep.replica_id, 0) + rep.running
            for rep in reps:
                counts = pool.counts.get(rep.replica_id)
                replicas[rep.replica_id] = ReplicaStatistics(
                    submitted=counts.submitted if counts else 0,
                    running=running[rep.replica_id],
                    failures=counts.failures if counts else 0,
                    consecutive_failures=rep.breaker.consecutive_failures,
                    breaker=rep.breaker.state,
                    open_until=rep.breaker.open_until,
                )
            pools[pool_id] = PoolStatistics(
                submitted=pool.submitted,
                running=pool.running,
                failovers=pool.failovers,
                budget_refused=pool.budget_refused,
                replicas=replicas,
            )
        return HostStatistics(pools=pools)

    def __repr__(self) -> str:
        return f"<AdapterHost pools={sorted(self._pools)}>"


def _sum(values: Iterable[int | None]) -> int | None:
    """The sum of the known values; None when none is known."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _min(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None
