"""`HostPolicy`: how an `AdapterHost` fails over, ejects, budgets, probes and drains.

Immutable and validated on construction: a bad value raises `ValueError` naming the field
(HOST.md, "HostPolicy"). Precedents for the defaults:
- `max_failovers=2`: three replicas tried at most, as Envoy's default `num_retries` is 1–2 and
  LiteLLM's router tries `num_retries` other deployments; more only spreads one bad request.
- `breaker_failures=5`, `breaker_open=10 s` doubling to `300 s`: Envoy's outlier detection
  (`consecutive_5xx: 5`, `base_ejection_time: 30s` growing per ejection, `max_ejection_time: 300s`),
  with a shorter base because an LLM replica that restarts is usually back within seconds.
- `max_ejected=0.5`: a breaker never ejects more than half a pool (Envoy's
  `max_ejection_percent` exists for the same reason: a pool-wide fault must reach the caller).
- `budget_percent=20`, `budget_window=10 s`, `budget_min_per_s=10`: Finagle's `RetryBudget`.
- `probe_interval=5 s`: Kubernetes' readiness probes default to 10 s; halved, since routing
  reads readiness directly. `drain_timeout=30 s`: Kubernetes' `terminationGracePeriodSeconds`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._config import positive_finite

__all__ = ["HostPolicy"]


def _number(name: str, value: object, *, allow_zero: bool) -> float:
    positive_finite("HostPolicy", name, value, allow_zero=allow_zero)
    return float(value)  # type: ignore[arg-type]  # a number: checked above


def _integer(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"HostPolicy.{name}: must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPolicy:
    """Failover, breaker, retry budget, probes and drain of an `AdapterHost` (see HOST.md)."""

    max_failovers: int = 2
    breaker_failures: int = 5
    breaker_open: float = 10.0
    breaker_open_max: float = 300.0
    max_ejected: float = 0.5
    budget_percent: float = 20.0
    budget_window: float = 10.0
    budget_min_per_s: float = 10.0
    probe_interval: float = 5.0
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        _integer("max_failovers", self.max_failovers, 0)
        _integer("breaker_failures", self.breaker_failures, 1)
        _number("breaker_open", self.breaker_open, allow_zero=False)
        _number("probe_interval", self.probe_interval, allow_zero=False)
        _number("breaker_open_max", self.breaker_open_max, allow_zero=False)
        if self.breaker_open_max < self.breaker_open:
            raise ValueError(
                f"HostPolicy.breaker_open_max: must be >= breaker_open ({self.breaker_open!r}),"
                f" got {self.breaker_open_max!r}"
            )
        _number("drain_timeout", self.drain_timeout, allow_zero=True)
        ejected = _number("max_ejected", self.max_ejected, allow_zero=True)
        if ejected > 1:
            raise ValueError(f"HostPolicy.max_ejected: must be in [0, 1], got {self.max_ejected!r}")
        _number("budget_percent", self.budget_percent, allow_zero=True)
        _number("budget_min_per_s", self.budget_min_per_s, allow_zero=True)
        _number("budget_window", self.budget_window, allow_zero=False)
