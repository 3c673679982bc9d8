"""What a task or a probe needs of the endpoint it talks to, and nothing more.

An `Endpoint` is made when the adapter opens: its config, its `Upstream` (the shared client),
the URL that streams are POSTed to, the retry jitter's `rng`, the `RetryBudget` every task of
the endpoint (or of a host's pool) draws on, and `info`: the one mutable record of what the
upstream told us (engine version from a probe, LiteLLM's version from a stream's headers). Tasks
and probes read it and write only `info`; nothing reaches back into the adapter (STYLE.md 13).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ._body import endpoint_path
from ._budget import RetryBudget
from ._config import AdapterConfig
from ._http import Upstream
from ._log import ENGINE

__all__ = ["Endpoint", "UpstreamInfo"]


class UpstreamInfo:
    """What the upstream told us about itself; `None` until it did."""

    __slots__ = ("engine_version", "litellm_version")

    def __init__(self) -> None:
        self.engine_version: str | None = None  # "<engine> <version>", from `engine_version()`
        self.litellm_version: str | None = None  # `x-litellm-version` of a stream response


class Endpoint:
    """One open endpoint (see the module header)."""

    __slots__ = ("_log_fields", "config", "info", "retry_budget", "rng", "upstream", "url")

    def __init__(
        self,
        config: AdapterConfig,
        upstream: Upstream,
        *,
        retry_budget: RetryBudget,
        rng: random.Random,
        info: UpstreamInfo,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.url = config.base_url + endpoint_path(config.api)
        self.retry_budget = retry_budget
        self.rng = rng
        self.info = info
        self._log_fields: Mapping[str, Any] | None = None

    def log_fields(self) -> Mapping[str, Any]:
        """The standard log fields that belong to the endpoint, not to one task: one read-only
        mapping shared by every task submitted while they stay the same (a task's log keeps the
        one it started with; a copy per open task was ~0.3 KB, docs/performance.md, memory)."""
        fields = self._log_fields
        if fields is None or fields["engine_version"] != self.info.engine_version:
            config = self.config
            fields = self._log_fields = MappingProxyType(
                {
                    "engine": ENGINE,
                    "engine_version": self.info.engine_version,
                    "pool_id": config.pool_id,
                    "replica_id": config.replica_id,
                    "model": config.model,
                    "api": config.api,
                }
            )
        return fields
