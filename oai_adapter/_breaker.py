"""A replica's circuit breaker: closed → open → half-open → closed, sans-IO.

`failures` consecutive failed tasks open it for `open_s` seconds; each reopening without a
success in between doubles that period, up to `open_max` (Envoy's outlier detection grows the
ejection time the same way). When the period has passed it is half-open: it admits one trial
task; the trial's success closes it (and resets the period), its failure reopens it, and a trial
that ends as neither (a cancel, a 429, a caller's error) frees the permit and leaves it half-open.
Any success closes it, even of a task placed before it opened: the replica served.

Whether it *may* open is the pool's call (`may_open`: at least two replicas bound, and at most
`max_ejected` of them not closed, HOST.md); a breaker that may not open stays closed and keeps
counting, and a half-open one that may not reopen closes.

Time is whatever the caller passes as `now` (the host passes `trio.current_time()`), so tests
drive it with any clock. Invariants: at most one trial permit is out; `open_until` is set iff
the state is `open`; every open period is in [`open_s`, `open_max`].
"""

from __future__ import annotations

from typing import Literal, TypeAlias

__all__ = ["Breaker", "BreakerState"]

BreakerState: TypeAlias = Literal["closed", "open", "half_open"]


class Breaker:
    """One replica's breaker. Transitions return the new state (for narration), else None."""

    __slots__ = (
        "_next_period",
        "_trial",
        "_trial_out",
        "consecutive_failures",
        "failures",
        "open_max",
        "open_s",
        "open_until",
        "state",
    )

    def __init__(self, failures: int, open_s: float, open_max: float) -> None:
        self.failures = failures
        self.open_s = open_s
        self.open_max = open_max
        self.state: BreakerState = "closed"
        self.consecutive_failures = 0
        self.open_until: float | None = None
        self._next_period = open_s
        self._trial_out = False
        self._trial = 0  # the permit's number: a stale trial (of an earlier half-open) is not it

    def poll(self, now: float) -> BreakerState | None:
        """Move an open breaker whose period has passed to half-open."""
        if self.state == "open" and self.open_until is not None and now >= self.open_until:
            self.state = "half_open"
            self.open_until = None
            return "half_open"
        return None

    def admits(self, now: float) -> bool:
        """May a new task be placed now? (Call `poll` first to let time move the state.)"""
        return self.state == "closed" or (self.state == "half_open" and not self._trial_out)

    @property
    def trial_out(self) -> bool:
        return self._trial_out

    def take(self) -> int:
        """A task is placed here: the trial permit's number if it is the half-open trial,
        else 0. Hand it back to `succeeded`, `failed` or `neither` when the task ends."""
        if self.state == "half_open":
            if self._trial_out:
                raise RuntimeError("the half-open trial permit is already out")
            self._trial_out = True
            self._trial += 1
            return self._trial
        return 0

    def _is_trial(self, trial: int) -> bool:
        """Give the permit back if `trial` holds the current one."""
        if trial and trial == self._trial and self._trial_out:
            self._trial_out = False
            return True
        return False

    def succeeded(self, trial: int) -> BreakerState | None:
        """A task placed here ended with a finish reason."""
        self._is_trial(trial)
        self.consecutive_failures = 0
        self._next_period = self.open_s
        if self.state == "closed":
            return None
        self.state = "closed"
        self.open_until = None
        return "closed"

    def failed(self, now: float, trial: int, *, may_open: bool) -> BreakerState | None:
        """A task placed here ended in a kind that blames the replica."""
        self.consecutive_failures += 1
        trial_ended = self._is_trial(trial)
        if self.state == "closed":
            if self.consecutive_failures >= self.failures and may_open:
                return self._open(now)
            return None
        if self.state == "half_open" and trial_ended:
            if may_open:
                return self._open(now)
            self.state = "closed"
            return "closed"
        return None  # already open, or a non-trial task while half-open

    def neither(self, trial: int) -> None:
        """A task placed here ended as neither success nor failure (cancel, 429, …)."""
        self._is_trial(trial)

    def _open(self, now: float) -> BreakerState:
        period = self._next_period
        self.state = "open"
        self.open_until = now + period
        self._next_period = min(period * 2.0, self.open_max)
        return "open"
