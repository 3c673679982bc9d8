"""Retry delays: capped full jitter, and the upstream's `Retry-After` clipped to the cap.

The delay before attempt n+1 is `uniform(0, min(cap, base·2ⁿ))` ("full jitter", AWS
Architecture Blog, "Exponential Backoff And Jitter", 2015): it spreads a herd of clients that
failed together better than equal or decorrelated jitter. An upstream's `retry-after-ms` or
`Retry-After` (seconds or an HTTP date) replaces it, clipped to `cap` so that no server can
park a task for longer than the policy allows (DESIGN.md, "Retries").

`retry_after_ms` never raises, whatever the header says: an unparsable value is `None`, and a
parsable one is clipped to `0..MAX_RETRY_AFTER_MS` (a hostile `1e308` once overflowed
`int(seconds * 1000)` and killed the reader). The bound is one day: more than any policy waits
(`Timeouts.total` defaults to 600 s), and small enough to stay an ordinary int in `ErrorInfo`,
logs and JSON.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping

from ._config import RetryPolicy

__all__ = ["MAX_RETRY_AFTER_MS", "backoff_delay", "retry_after_ms"]

#: The longest delay `retry_after_ms` reports: one day (see the module header).
MAX_RETRY_AFTER_MS = 86_400_000


def backoff_delay(
    policy: RetryPolicy,
    attempt: int,
    retry_after: int | None = None,
    *,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based) before the next one."""
    if retry_after is not None:
        return min(policy.cap, max(0.0, retry_after / 1000.0))
    ceiling = min(policy.cap, policy.base * 2.0**attempt)
    return (rng or random).uniform(0.0, ceiling)


def retry_after_ms(headers: Mapping[str, str], *, now: float | None = None) -> int | None:
    """The upstream's requested delay in ms, from `retry-after-ms` or `Retry-After`, clipped
    to `0..MAX_RETRY_AFTER_MS`; `None` when neither says a number or a date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        ms = _number(raw_ms)
        if ms is not None and ms >= 0:
            return _clip(ms)
    raw = headers.get("retry-after")
    if not raw:
        return None
    seconds = _number(raw)
    if seconds is None:
        try:
            when = email.utils.parsedate_to_datetime(raw.strip())
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
            return None
    return _clip(seconds * 1000.0)


def _number(raw: str) -> float | None:
    """`raw` as a finite float, or None."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _clip(ms: float) -> int:
    """`ms` (possibly ±inf after a multiplication) as an int in `0..MAX_RETRY_AFTER_MS`."""
    if math.isnan(ms):
        return 0
    return int(min(max(ms, 0.0), MAX_RETRY_AFTER_MS))
