"""The `oai-adapter` command: `demo`, `serve`, `stream`, `check`, `bench` and `pool` (`_pool`).

argparse and plain ANSI only — a library's users should not inherit a CLI toolkit's
dependencies. Results go to stdout (tokens, tables, `--json`), everything else to stderr, so a
script can pipe one and read the other. Exit codes (`docs/cli.md`): 0 done, 1 the upstream
failed (an error End, a failed check, a failed request), 2 bad arguments or configuration,
130 interrupted by Ctrl-C after a clean cancel (`serve`, which runs until Ctrl-C, exits 0).
Every numeric option is checked by argparse (finite, in range), and what a command will send is
built before the run starts (`validate`), so a bad value is one usage line, never a traceback.

Ctrl-C: a trio signal receiver turns the first SIGINT into an `interrupted` event, which the
running command answers with `adapter.cancel(...)`; a second Ctrl-C raises KeyboardInterrupt
and stops at once.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence

import trio

from ._commands import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    run_bench,
    run_check,
    run_demo,
    run_serve,
    run_stream,
    validate,
)
from ._hosttarget import SeveralBaseUrls
from ._pool import add_pool_command
from ._term import Term

__all__ = [
    "COMMANDS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

_EPILOG = (
    "The API key is read from OPENAI_API_KEY (never from an argument, never printed); "
    "--base-url defaults to OPENAI_BASE_URL. Exit codes: 0 ok, 1 upstream failure, "
    "2 usage or configuration error, 130 interrupted."
)


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type`: an integer in `[low, high]`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"{low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def _finite_float(*, zero_ok: bool) -> Callable[[str], float]:
    """An argparse `type`: a finite float > 0 (or >= 0 when `zero_ok`); NaN and inf refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            bound = ">= 0" if zero_ok else "> 0"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value

    return parse


_positive_int = _int_in(1)
_port = _int_in(0, 65535)  # 0: any free port
_positive_float = _finite_float(zero_ok=False)
_non_negative_float = _finite_float(zero_ok=True)


#: `add_parser` of the subcommands (`argparse`'s subparsers action), handed to each `_add_*`.
_AddParser = Callable[..., argparse.ArgumentParser]


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
        "--ca-bundle",
        metavar="PATH",
        default=None,
        help="a PEM file of CA certificates to trust besides the system store, for an endpoint "
        "with a private CA (SSL_CERT_FILE is never read)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        help="seconds to wait for the first token and between events (default: 30)",
    )


def _add_demo(add_parser: _AddParser) -> None:
    demo = add_parser(
        "demo",
        help="stream from the embedded test upstream, then show the metrics",
        description="Start the embedded upstream on 127.0.0.1, stream a completion through "
        "the adapter with tokens appearing live, then print TTFT, decode time, tokens/s and "
        "tokens in/out.",
        epilog=_EPILOG,
    )
    demo.add_argument("--api", choices=("chat", "completions", "responses"), default="chat")
    demo.add_argument(
        "--pace",
        type=_non_negative_float,
        default=0.04,
        help="seconds between upstream tokens (default: 0.04)",
    )
    demo.add_argument("--prompt", default="Tell me about trio.")
    demo.set_defaults(run=run_demo)


def _add_serve(add_parser: _AddParser) -> None:
    serve = add_parser(
        "serve",
        help="run the embedded upstream until Ctrl-C, to try the other commands against",
        description="Serve the embedded OpenAI-compatible upstream (oai_adapter.testing): "
        "chat, completions and responses streams and the probes (/v1/models, /health, /props, "
        "/slots). Prints its base URL on stdout; Ctrl-C stops it (exit 0). HTTP/1.1, or h2c "
        "with --http2 (chat and completions only; one protocol per port). Binds 127.0.0.1 "
        "unless told otherwise; it has no authentication, so a non-loopback --host also needs "
        "--allow-remote.",
        epilog=_EPILOG,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, default=8080, help="port to bind, 0 for any free one (default: 8080)"
    )
    serve.add_argument(
        "--model", default="test-model", help="the model name it serves (default: test-model)"
    )
    serve.add_argument(
        "--pace",
        type=_non_negative_float,
        default=0.02,
        help="seconds between tokens (default: 0.02)",
    )
    serve.add_argument("--http2", action="store_true", help="speak HTTP/2 (h2c) instead of 1.1")
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host that is not a loopback address",
    )
    serve.set_defaults(run=run_serve)


def _add_stream(add_parser: _AddParser) -> None:
    stream = add_parser(
        "stream",
        help="stream one completion from any endpoint, tokens live",
        description="Stream one completion: tokens on stdout as they arrive; the end and the "
        "metrics on stderr. Ctrl-C cancels the task cleanly, prints what was received and "
        "exits 130.",
        epilog=_EPILOG,
    )
    _endpoint_options(stream)
    stream.add_argument("--max-tokens", type=_positive_int, default=None)
    stream.add_argument("--temperature", type=_non_negative_float, default=None)
    stream.add_argument("--quiet", action="store_true", help="no metrics table on stderr")
    stream.add_argument("prompt", help="the prompt ('-' reads it from stdin)")
    stream.set_defaults(run=run_stream)


def _add_check(add_parser: _AddParser) -> None:
    check = add_parser(
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


def _add_bench(add_parser: _AddParser) -> None:
    bench = add_parser(
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


#: The commands, in `--help` order: each adds its subparser, with `run=` its command function.
#: A new command is one `_add_*` function and one entry here.
COMMANDS: tuple[Callable[[_AddParser], None], ...] = (
    _add_demo,
    _add_serve,
    _add_stream,
    _add_check,
    _add_bench,
    lambda add_parser: add_pool_command(add_parser, _EPILOG),
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
    for add in COMMANDS:
        add(sub.add_parser)
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
    try:  # a bad configuration or request is a usage error, found before anything is sent
        validate(args)
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
