"""Retry delays: capped full jitter, and the upstream's `Retry-After` clipped to the cap.

The delay before attempt n+1 is `uniform(0, min(cap, base·2ⁿ))` ("full jitter", AWS
Architecture Blog, "Exponential Backoff And Jitter", 2015): it spreads a herd of clients that
failed together better than equal or decorrelated jitter. An upstream's `retry-after-ms` or
`Retry-After` (seconds or an HTTP date) replaces it, clipped to `cap` so that no server can
park a task for longer than the policy allows (DESIGN.md, "Retries").
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping

from ._config import RetryPolicy

__all__ = ["backoff_delay", "retry_after_ms"]


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
    """The upstream's requested delay in ms, from `retry-after-ms` or `Retry-After`."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return int(value)
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0, int(seconds * 1000))
