"""The `oai-adapter` command. `demo`: the embedded upstream, live tokens, then the metrics."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from ._adapter import OpenAIAdapter
from ._config import AdapterConfig, TaskRequest
from ._events import End, Metrics, Started, Token


async def _demo(args: argparse.Namespace) -> int:
    from .testing import open_upstream

    async with open_upstream(pace=args.pace) as upstream:
        config = AdapterConfig(base_url=upstream.base_url, model=upstream.model, api=args.api)
        async with OpenAIAdapter(config) as adapter:
            health = await adapter.health()
            version = await adapter.engine_version()
            print(
                f"upstream {upstream.base_url}: {health.detail}; engine {version.engine} {version.version}"
            )
            request = TaskRequest(task_id="demo-1", prompt="Tell me about trio.")
            metrics: Metrics | None = None
            end: End | None = None
            async with adapter.submit(request) as events:
                async for event in events:
                    if isinstance(event, Started):
                        print(f"[started: {event.http_version}, attempt {event.attempt}]")
                    elif isinstance(event, Token):
                        print(event.text, end="", flush=True)
                    elif isinstance(event, Metrics):
                        metrics = event
                    elif isinstance(event, End):
                        end = event
            print()
            assert end is not None
            print(f"[end: {end.reason}, {end.tokens_out} tokens]")
            if metrics is not None:
                rate = (
                    metrics.tokens_out / (metrics.decode_time_ms / 1000.0)
                    if metrics.decode_time_ms
                    else float("nan")
                )
                print(f"  ttft            {metrics.ttft_ms:8.1f} ms")
                print(f"  decode time     {metrics.decode_time_ms:8.1f} ms")
                print(f"  tokens/s        {rate:8.1f}")
                print(f"  tokens in/out   {metrics.prompt_tokens} / {metrics.completion_tokens}")
            return 0 if end.reason != "error" else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oai-adapter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="stream from the embedded upstream through the adapter")
    demo.add_argument("--api", choices=("chat", "completions"), default="chat")
    demo.add_argument("--pace", type=float, default=0.04, help="seconds between upstream tokens")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return trio.run(_demo, args)
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
