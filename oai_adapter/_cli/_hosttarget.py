"""What `bench` sends its tasks to: one adapter, or a host over a pool of several endpoints.

`bench --base-url A --base-url B …` puts every URL in one pool of an `AdapterHost` (replica ids
are the URLs' `host:port`), so the figures include the host's routing, failover and retry
budget — what an orchestrator using the host would see. With one URL nothing changes: the
adapter is used directly. Both are driven through `TaskTarget`, the three calls `bench` makes. `SeveralBaseUrls` is the
argparse action that lets `--base-url` be repeated.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit

from .. import AdapterHost, HostPolicy
from .._adapter import OpenAIAdapter
from .._config import AdapterConfig, TaskRequest
from .._events import Event

__all__ = [
    "BENCH_POOL",
    "PoolTarget",
    "SeveralBaseUrls",
    "TaskTarget",
    "open_task_target",
    "replica_ids",
]

BENCH_POOL = "bench"


class TaskTarget(Protocol):
    """Submit, cancel and list running tasks: an `OpenAIAdapter` or a `PoolTarget`."""

    def submit(self, req: TaskRequest) -> AbstractAsyncContextManager[AsyncIterable[Event]]: ...

    def cancel(self, task_id: str) -> bool: ...

    def running(self) -> frozenset[str]: ...


class PoolTarget:
    """One pool of a host, with the ids of the tasks submitted through it and still running."""

    def __init__(self, host: AdapterHost, pool_id: str) -> None:
        self.host = host
        self.pool_id = pool_id
        self._running: set[str] = set()

    @asynccontextmanager
    async def submit(self, req: TaskRequest) -> AsyncIterator[AsyncIterable[Event]]:
        self._running.add(req.task_id)
        try:
            async with self.host.submit(self.pool_id, req) as events:
                yield events
        finally:
            self._running.discard(req.task_id)

    def cancel(self, task_id: str) -> bool:
        return self.host.cancel(self.pool_id, task_id)

    def running(self) -> frozenset[str]:
        return frozenset(self._running)


def replica_ids(urls: list[str]) -> list[str]:
    """`host:port` of each URL; `ValueError` when two URLs name the same server."""
    ids = [urlsplit(url).netloc or url for url in urls]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--base-url: the same server is given twice: {', '.join(urls)}")
    return ids


@asynccontextmanager
async def open_task_target(
    config: AdapterConfig, urls: list[str] | None
) -> AsyncIterator[TaskTarget]:
    """The adapter for `config` when `urls` names at most one endpoint; else a host whose one
    pool binds `config` once per URL (each replica keeps `config`'s other settings)."""
    if not urls or len(urls) == 1:
        async with OpenAIAdapter(config) as adapter:
            yield adapter
        return
    async with AdapterHost(HostPolicy()) as host:
        for replica_id, url in zip(replica_ids(urls), urls, strict=True):
            replica = dataclasses.replace(config, base_url=url, allowed_hosts=None)
            await host.bind(BENCH_POOL, replica_id, replica)
        yield PoolTarget(host, BENCH_POOL)


class SeveralBaseUrls(argparse.Action):
    """`--base-url` given once or more: `base_urls` lists them all, `base_url` is the first
    (what the single-endpoint code reads, so it validates as before). A URL that is not
    http(s), or a server given twice, is a usage error (exit 2) at parsing."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        urls = [*(getattr(namespace, "base_urls", None) or []), str(values)]
        if urlsplit(urls[-1]).scheme not in ("http", "https"):
            parser.error(f"--base-url: not an http(s) URL: {urls[-1]!r}")
        try:
            replica_ids(urls)
        except ValueError as exc:
            parser.error(str(exc))
        namespace.base_urls = urls
        namespace.base_url = urls[0]
