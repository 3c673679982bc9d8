"""The `oai-adapter` command: `demo`, `stream`, `check`, `bench` and `pool` (`_pool`).

argparse and plain ANSI only — a library's users should not inherit a CLI toolkit's
dependencies. Results go to stdout (tokens, tables, `--json`), everything else to stderr, so a
script can pipe one and read the other. Exit codes (`docs/cli.md`): 0 done, 1 the upstream
failed (an error End, a failed check, a failed request), 2 bad arguments or configuration,
130 interrupted by Ctrl-C after a clean cancel.

Ctrl-C: a trio signal receiver turns the first SIGINT into an `interrupted` event, which the
running command answers with `adapter.cancel(...)`; a second Ctrl-C raises KeyboardInterrupt
and stops at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

import trio

from ._commands import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    make_config,
    run_bench,
    run_check,
    run_demo,
    run_stream,
)
from ._hosttarget import SeveralBaseUrls
from ._pool import add_pool_command
from ._term import Term

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

_EPILOG = (
    "The API key is read from OPENAI_API_KEY (never from an argument, never printed); "
    "--base-url defaults to OPENAI_BASE_URL. Exit codes: 0 ok, 1 upstream failure, "
    "2 usage or configuration error, 130 interrupted."
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _endpoint_options(
    p: argparse.ArgumentParser, *, api: bool = True, several: bool = False
) -> None:
    p.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL"),
        action=SeveralBaseUrls if several else "store",
        help="the endpoint, e.g. http://127.0.0.1:8080/v1 (default: $OPENAI_BASE_URL)"
        + ("; repeat it to bench a pool of replicas through an AdapterHost" if several else ""),
    )
    p.add_argument("--model", required=True, help="the model name to send")
    if api:
        p.add_argument(
            "--api",
            choices=("chat", "completions", "responses"),
            default="chat",
            help="which OpenAI API to call (default: chat)",
        )
    p.add_argument("--http2", action="store_true", help="use HTTP/2 (TLS endpoints negotiate it)")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        help="seconds to wait for the first token and between events (default: 30)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oai-adapter",
        description="Stream completions from OpenAI-compatible endpoints through oai_adapter.",
        epilog=_EPILOG,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"oai-adapter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="stream from the embedded test upstream, then show the metrics",
        description="Start the embedded upstream on 127.0.0.1, stream a completion through "
        "the adapter with tokens appearing live, then print TTFT, decode time, tokens/s and "
        "tokens in/out.",
        epilog=_EPILOG,
    )
    demo.add_argument("--api", choices=("chat", "completions"), default="chat")
    demo.add_argument(
        "--pace", type=float, default=0.04, help="seconds between upstream tokens (default: 0.04)"
    )
    demo.add_argument("--prompt", default="Tell me about trio.")
    demo.set_defaults(run=run_demo)

    stream = sub.add_parser(
        "stream",
        help="stream one completion from any endpoint, tokens live",
        description="Stream one completion: tokens on stdout as they arrive; the end and the "
        "metrics on stderr. Ctrl-C cancels the task cleanly, prints what was received and "
        "exits 130.",
        epilog=_EPILOG,
    )
    _endpoint_options(stream)
    stream.add_argument("--max-tokens", type=_positive_int, default=None)
    stream.add_argument("--temperature", type=float, default=None)
    stream.add_argument("--quiet", action="store_true", help="no metrics table on stderr")
    stream.add_argument("prompt", help="the prompt ('-' reads it from stdin)")
    stream.set_defaults(run=run_stream)

    check = sub.add_parser(
        "check",
        help="probe an endpoint: health, props, version, a stream per api, a cancel",
        description="Health, props and engine version; a short stream on chat, completions "
        "and responses (an api answering 404 is reported as not supported); a cancel. Prints "
        "a pass/fail table with the reason for each failure; exits 1 if any check failed.",
        epilog=_EPILOG,
    )
    _endpoint_options(check, api=False)
    check.add_argument("--prompt", default="Count from one to twenty.")
    check.add_argument("--max-tokens", type=_positive_int, default=16)
    check.add_argument(
        "--cancel-tokens",
        type=_positive_int,
        default=256,
        help="max_tokens of the stream that is cancelled after its first token (default: 256)",
    )
    check.add_argument("--json", action="store_true", help="one JSON document on stdout")
    check.set_defaults(run=run_check)

    bench = sub.add_parser(
        "bench",
        help="latency percentiles and throughput under concurrency",
        description="Send --requests completions, --concurrency at a time; then TTFT, ITL, "
        "TPOT = (E2EL - TTFT)/(n - 1) and E2EL percentiles (p50, p90, p99) and output "
        "tokens/s, measured on the client as the serving benchmarks define them.",
        epilog=_EPILOG,
    )
    _endpoint_options(bench, several=True)
    bench.add_argument("--concurrency", type=_positive_int, default=8)
    bench.add_argument("--requests", type=_positive_int, default=64)
    bench.add_argument("--max-tokens", type=_positive_int, default=128)
    bench.add_argument("--prompt", default="Write a short story about a lighthouse keeper.")
    bench.add_argument("--json", action="store_true", help="one JSON document on stdout")
    bench.set_defaults(run=run_bench)
    add_pool_command(sub, _EPILOG)
    return parser


async def _run_with_sigint(command: Command, args: argparse.Namespace, term: Term) -> int:
    """Run `command` with the first SIGINT turned into its `interrupted` event."""
    interrupted = trio.Event()

    async def watch_sigint(
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                if interrupted.is_set():
                    raise KeyboardInterrupt
                interrupted.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_sigint)
        code = await command(args, term, interrupted)
        nursery.cancel_scope.cancel()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    term = Term(sys.stdout, sys.stderr)
    if getattr(args, "prompt", None) == "-":
        args.prompt = sys.stdin.read()
    if args.command not in ("demo", "pool"):
        try:  # a bad configuration is a usage error, found before anything is sent
            make_config(args, getattr(args, "api", "chat"))
        except ValueError as exc:
            term.error(str(exc))
            return EXIT_USAGE
    try:
        return trio.run(_run_with_sigint, args.run, args, term)
    except KeyboardInterrupt:
        term.error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
