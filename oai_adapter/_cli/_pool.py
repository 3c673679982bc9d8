"""`oai-adapter pool --config pools.toml`: pools of replicas in an `AdapterHost`, as a live table.

The file (TOML, read with the standard library's `tomllib`; the format is in docs/cli.md and
docs/host.md) names pools, each a model and its replicas' URLs, and optionally the host's
policy. API keys never sit in the file: a pool names the *environment variable* that holds its
key (`api_key_env`, default `OPENAI_API_KEY`, the variable every other command reads), so the
file can be committed and shown. Any other key, or a key of the wrong type, is a usage error
(exit 2) naming the key, found before anything is sent.

The table (replica, ready, breaker, running/capacity, slots, engine) is built from the host's
own snapshot, `health(pool)` (which probes now), so it shows what routing sees. On a terminal it is redrawn every `--interval` seconds (default 1,
as `top` does) until Ctrl-C; `--once` prints it once, after every replica's first probe, and
exits 1 when a pool has no ready replica (so a script can wait for a pool), else 0.
"""

from __future__ import annotations

import argparse
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from .. import AdapterConfig, AdapterHost, HostPolicy, Secret, Timeouts
from ._term import Term, render_table

__all__ = ["PoolsFile", "add_pool_command", "load_pools", "pool_rows", "run_pool"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: The keys a pool may have; `replicas` and `model` are required.
_POOL_KEYS = frozenset({"model", "api", "http2", "timeout", "api_key_env", "replicas"})
_DEFAULT_KEY_ENV = "OPENAI_API_KEY"
HEADERS = ("pool", "replica", "ready", "breaker", "running/capacity", "slots", "engine")


@dataclass(frozen=True)
class PoolsFile:
    """A parsed pools file: the host's policy and, per pool, a config per replica id."""

    policy: HostPolicy
    pools: Mapping[str, Mapping[str, AdapterConfig]]


def _fail(path: str, where: str, why: str) -> ValueError:
    return ValueError(f"{path}: {where}: {why}")


def _pool_configs(
    path: str, pool_id: str, table: Any, environ: Mapping[str, str]
) -> dict[str, AdapterConfig]:
    where = f"[pools.{pool_id}]"
    if not isinstance(table, dict):
        raise _fail(path, where, "must be a table")
    if "api_key" in table:
        raise _fail(
            path, where, "no API key in the file: name its environment variable with api_key_env"
        )
    unknown = sorted(set(table) - _POOL_KEYS)
    if unknown:
        raise _fail(path, where, f"unknown key(s) {', '.join(unknown)}")
    model = table.get("model")
    if not isinstance(model, str) or not model:
        raise _fail(path, where, "model must be a non-empty string")
    replicas = table.get("replicas")
    if not isinstance(replicas, dict) or not replicas:
        raise _fail(path, where, 'replicas must be a table of replica id = "base URL"')
    key_env = table.get("api_key_env", _DEFAULT_KEY_ENV)
    if not isinstance(key_env, str) or not key_env:
        raise _fail(path, where, "api_key_env must name an environment variable")
    timeout = table.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise _fail(path, where, "timeout must be a number of seconds")
    if not math.isfinite(timeout) or timeout <= 0:
        raise _fail(path, where, "timeout must be a finite number > 0")
    key_text = environ.get(key_env)
    key = Secret(key_text) if key_text else None
    configs: dict[str, AdapterConfig] = {}
    for replica_id, url in replicas.items():
        if not isinstance(url, str):
            raise _fail(path, f"{where} replicas.{replica_id}", "must be a base URL string")
        try:
            configs[replica_id] = AdapterConfig(
                base_url=url,
                model=model,
                api=table.get("api", "chat"),
                http2=bool(table.get("http2", False)),
                api_key=key,
                timeouts=Timeouts(
                    connect=min(float(timeout), 10.0),
                    first_token=float(timeout),
                    idle=float(timeout),
                    total=max(600.0, float(timeout)),
                ),
            )
        except ValueError as exc:
            raise _fail(path, f"{where} replicas.{replica_id}", str(exc)) from None
    return configs


def load_pools(path: str, environ: Mapping[str, str] | None = None) -> PoolsFile:
    """Parse a pools file. `ValueError` (naming the file and the key) for anything wrong."""
    environ = os.environ if environ is None else environ
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not TOML: {exc}") from None
    unknown = sorted(set(doc) - {"host", "pools"})
    if unknown:
        raise _fail(path, "top level", f"unknown table(s) {', '.join(unknown)}")
    host = doc.get("host", {})
    if not isinstance(host, dict):
        raise _fail(path, "[host]", "must be a table of HostPolicy fields")
    try:
        policy = HostPolicy(**host)
    except TypeError as exc:
        raise _fail(path, "[host]", f"not a HostPolicy field ({exc})") from None
    except ValueError as exc:
        raise _fail(path, "[host]", str(exc)) from None
    pools = doc.get("pools")
    if not isinstance(pools, dict) or not pools:
        raise _fail(path, "[pools]", "name at least one pool: [pools.<id>]")
    return PoolsFile(
        policy=policy,
        pools={pid: _pool_configs(path, pid, table, environ) for pid, table in pools.items()},
    )


# --- the table ---------------------------------------------------------------------------


async def pool_rows(host: AdapterHost, pool_ids: list[str]) -> list[list[str]]:
    """One row per replica of each pool, probing every pool now (`health`)."""
    rows: list[list[str]] = []
    for pool_id in pool_ids:
        health = await host.health(pool_id)
        for status in health.replicas:
            breaker = status.breaker.replace("_", "-")
            if status.draining:
                breaker += " (draining)"
            capacity = "?" if status.capacity is None else str(status.capacity)
            rows.append(
                [
                    pool_id,
                    status.replica_id,
                    "yes" if status.ready else "no",
                    breaker,
                    f"{status.running}/{capacity}",
                    "-" if status.slots_total is None else str(status.slots_total),
                    status.engine or "-",
                ]
            )
    return rows


def _is_tty(term: Term) -> bool:
    isatty = getattr(term.out, "isatty", None)
    return bool(isatty and isatty())


async def run_pool(args: argparse.Namespace, term: Term, interrupted: trio.Event) -> int:
    """Bind every replica of the file, then print the table (once, or live until Ctrl-C)."""
    try:
        spec = load_pools(args.config)
    except ValueError as exc:
        term.error(str(exc))
        return EXIT_USAGE
    pool_ids = list(spec.pools)
    async with AdapterHost(spec.policy) as host:
        async with trio.open_nursery() as nursery:  # first probes of all replicas at once
            for pool_id, replicas in spec.pools.items():
                for replica_id, config in replicas.items():
                    nursery.start_soon(host.bind, pool_id, replica_id, config)
        live = _is_tty(term) and not args.once
        while True:
            table = render_table(HEADERS, await pool_rows(host, pool_ids))
            if live:
                term.write("\x1b[H\x1b[2J" + table)  # home + clear: redraw in place
            else:
                term.write(table)
            if args.once or interrupted.is_set():
                break
            with trio.move_on_after(args.interval):
                await interrupted.wait()
            if interrupted.is_set():
                break
            if not live:
                term.write("\n")
        ready = {p: host.capabilities()[p].replicas_ready for p in pool_ids}
    if args.once:
        down = [p for p, n in ready.items() if n == 0]
        for pool_id in down:
            term.error(f"pool {pool_id}: no replica is ready")
        return EXIT_FAILED if down else EXIT_OK
    return EXIT_OK


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0.1:
        raise argparse.ArgumentTypeError(f"must be a number >= 0.1, got {text}")
    return value


def add_pool_command(add_parser: Callable[..., argparse.ArgumentParser], epilog: str) -> None:
    """Register `pool` with the CLI's `add_parser` (an entry of `_cli.COMMANDS`)."""
    pool = add_parser(
        "pool",
        help="pools of replicas from a TOML file, as a live table",
        description="Bind every replica named in --config to an AdapterHost and show, per "
        "replica: ready, breaker, running/capacity, slots and engine — redrawn every second "
        "on a terminal until Ctrl-C, printed once with --once (exit 1 if a pool has no ready "
        "replica). Keys come from the environment variable each pool names (api_key_env, "
        "default OPENAI_API_KEY), never from the file.",
        epilog=epilog,
    )
    pool.add_argument("--config", required=True, help="the pools file (TOML), e.g. pools.toml")
    pool.add_argument("--once", action="store_true", help="print the table once and exit")
    pool.add_argument(
        "--interval", type=_interval, default=1.0, help="seconds between redraws (default: 1)"
    )
    pool.set_defaults(run=run_pool)
