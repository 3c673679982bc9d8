"""The retry budget: retries (and a host's failovers) as a bounded share of recent submits.

Capped, jittered retries still multiply an overloaded upstream's load by `max_attempts` when
every task fails. A budget caps the *sum* instead: over the last `window` seconds, retries may
be at most `percent`/100 of the submits in that window plus `min_per_s` per second (so a quiet
endpoint can still retry). Precedent and defaults: Finagle's `RetryBudget` (20 %, 10 s TTL,
10 retries/s reserve) and Envoy's `retry_budget`; gRPC's retry throttling is the same idea.

Sans-IO: time comes from `clock` (trio's by default, read only when the budget is used). The
window is kept as a ring of `_BUCKETS` + 1 time buckets, so memory is fixed whatever the rate
(a deque of timestamps would grow with the submit rate); a count leaves the window at most one
bucket (1 % of the window) late, never early, so no window of exactly `window` seconds holds more
retries than the rule allows. A refused retry is not counted as spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import trio

__all__ = ["BudgetPolicy", "RetryBudget", "RetryBudgetStatistics"]

#: Buckets per window: a count expires at most window/100 late (1 %), at 2 × 101 ints of memory.
_BUCKETS: Final = 100
_SLOTS: Final = _BUCKETS + 1


class BudgetPolicy(Protocol):
    """Anything with the budget's three numbers (`RetryPolicy`, `HostPolicy`)."""

    @property
    def budget_percent(self) -> float: ...
    @property
    def budget_window(self) -> float: ...
    @property
    def budget_min_per_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RetryBudgetStatistics:
    """A snapshot: counts inside the current window, and refusals since the budget was made."""

    submits: int
    spent: int
    available: int
    refused: int


class RetryBudget:
    """Shared by every task of one endpoint (a lone adapter) or one pool (a host)."""

    __slots__ = (
        "_bucket_width",
        "_clock",
        "_epoch",
        "_ratio",
        "_refused",
        "_reserve",
        "_spent",
        "_submits",
        "min_per_s",
        "percent",
        "window",
    )

    def __init__(
        self,
        percent: float = 20.0,
        window: float = 10.0,
        min_per_s: float = 10.0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        for name, value in (("percent", percent), ("min_per_s", min_per_s)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"RetryBudget.{name}: must be finite and >= 0, got {value!r}")
        if not math.isfinite(window) or window <= 0:
            raise ValueError(f"RetryBudget.window: must be finite and > 0, got {window!r}")
        self.percent = percent
        self.window = window
        self.min_per_s = min_per_s
        self._ratio = percent / 100.0
        self._reserve = min_per_s * window
        self._clock = clock or trio.current_time
        self._bucket_width = window / _BUCKETS
        self._submits = [0] * _SLOTS
        self._spent = [0] * _SLOTS
        self._epoch: int | None = None  # index of the newest bucket, counted from clock 0
        self._refused = 0

    @classmethod
    def from_policy(
        cls, policy: BudgetPolicy, *, clock: Callable[[], float] | None = None
    ) -> RetryBudget:
        return cls(
            policy.budget_percent, policy.budget_window, policy.budget_min_per_s, clock=clock
        )

    def _advance(self) -> int:
        """Expire the buckets that left the window; the index of the bucket for now."""
        now = math.floor(self._clock() / self._bucket_width)
        last = self._epoch
        if last is None or now - last >= _SLOTS:
            self._submits = [0] * _SLOTS
            self._spent = [0] * _SLOTS
        elif now > last:
            for tick in range(last + 1, now + 1):
                slot = tick % _SLOTS
                self._submits[slot] = 0
                self._spent[slot] = 0
        if last is None or now > last:
            self._epoch = now
        return (self._epoch if self._epoch is not None else now) % _SLOTS

    def _allowance(self) -> int:
        return math.floor(self._ratio * sum(self._submits) + self._reserve + 1e-9)

    def record_submit(self) -> None:
        """A task was submitted (once per task, however many attempts it makes)."""
        slot = self._advance()  # before indexing: advancing may replace the lists
        self._submits[slot] += 1

    def try_spend(self) -> bool:
        """May one more retry (or failover) be made now? Counts it when it may."""
        slot = self._advance()
        if sum(self._spent) + 1 > self._allowance():
            self._refused += 1
            return False
        self._spent[slot] += 1
        return True

    def statistics(self) -> RetryBudgetStatistics:
        self._advance()
        spent = sum(self._spent)
        return RetryBudgetStatistics(
            submits=sum(self._submits),
            spent=spent,
            available=max(0, self._allowance() - spent),
            refused=self._refused,
        )

    def __repr__(self) -> str:
        return (
            f"<RetryBudget {self.percent:g}% of submits over {self.window:g} s"
            f" + {self.min_per_s:g}/s>"
        )
