"""The host's snapshots: health, capabilities and statistics of pools and replicas.

Frozen dataclasses built fresh on every call (HOST.md, "Capabilities, health, props" and
"Observability"), so a caller may keep one while the host moves on. Times named `open_until`
are on trio's clock (`trio.current_time()`); `updated_at` is Unix time, for an orchestrator's
`/v1/capabilities`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._breaker import BreakerState

__all__ = [
    "HostStatistics",
    "PoolCapabilities",
    "PoolHealth",
    "PoolStatistics",
    "ReplicaStatistics",
    "ReplicaStatus",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaStatus:
    """One replica in `PoolHealth`: `ready` from its last probe; `draining` while unbinding;
    `capacity`, `slots_total` and `engine` as routing and the capability snapshot see them."""

    replica_id: str
    live: bool
    ready: bool
    breaker: BreakerState
    running: int
    draining: bool
    open_until: float | None
    capacity: int | None = None  # what routing divides `running` by (slots, else max_connections)
    slots_total: int | None = None  # from its last props probe, when the server says
    engine: str | None = None  # "engine version", when known


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolHealth:
    """`live` if any replica is; `ready` if some replica would take a task now."""

    live: bool
    ready: bool
    detail: str
    replicas: tuple[ReplicaStatus, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolCapabilities:
    """What a pool offers, from the last probes (no I/O)."""

    model: str
    context_length: int | None
    slots_total: int | None
    replicas_ready: int
    replicas_total: int
    engines: tuple[str, ...]
    apis: tuple[str, ...]
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaStatistics:
    """`submitted`/`failures` accumulate per replica id across rebinds; `running`: tasks
    placed on it now; `consecutive_failures`, `breaker`, `open_until`: its bound breaker."""

    submitted: int
    running: int
    failures: int
    consecutive_failures: int
    breaker: BreakerState
    open_until: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStatistics:
    """`running`: tasks inside `host.submit`; `failovers` made; `budget_refused`: retries and
    failovers the pool's retry budget refused."""

    submitted: int
    running: int
    failovers: int
    budget_refused: int
    replicas: Mapping[str, ReplicaStatistics]


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatistics:
    pools: Mapping[str, PoolStatistics]
