"""The CLI's commands as async functions: `demo`, `serve`, `stream`, `check`, `bench`.

Each takes the parsed arguments, a `Term` and an `interrupted` event (set by the first Ctrl-C,
see `__init__`), and returns the process exit code (`EXIT_*`). They are separate from argument
parsing so that tests can run them in-process, in the same trio run as a test upstream.

A Ctrl-C never tears a stream down from the outside: it sets `interrupted`, and the command
calls `adapter.cancel(task_id)`, so the stream ends the documented way (`End(cancelled)`, the
upstream response closed) and what was received can still be printed.
"""

from __future__ import annotations

import argparse
import ipaddress
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import trio

from .._adapter import OpenAIAdapter
from .._config import AdapterConfig, Api, TaskRequest, Timeouts
from .._errors import ErrorInfo, ErrorKind
from .._events import (
    End,
    Event,
    Metrics,
    ReasoningDelta,
    Started,
    Token,
    ToolCallDelta,
    WorkerProps,
)
from .._grammar import stream_problem
from .._redact import redact
from ._hosttarget import TaskTarget, open_task_target
from ._stats import PERCENTILES, RequestSample, summarize
from ._term import Term, plural, render_table

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "StreamResult",
    "make_request",
    "run_bench",
    "run_check",
    "run_demo",
    "run_serve",
    "run_stream",
    "validate",
]

EXIT_OK = 0  # did what was asked: the stream finished, every check passed, no request failed
EXIT_FAILED = 1  # the upstream failed: an error End, a failed check row, a failed request
EXIT_USAGE = 2  # bad arguments or configuration (argparse's own code for usage errors)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), after a clean cancel

APIS: tuple[Api, ...] = ("chat", "completions", "responses")

#: End reasons that mean the upstream answered normally.
_FINISHED = frozenset({"stop", "length", "content_filter", "tool_calls"})

Command = Callable[[argparse.Namespace, Term, trio.Event], Awaitable[int]]


# --- shared pieces ---------------------------------------------------------------------------


def make_config(args: argparse.Namespace, api: Api) -> AdapterConfig:
    """The adapter's config: `--base-url` (else `OPENAI_BASE_URL`), the key from
    `OPENAI_API_KEY` (never from an argument, which `ps` would show). Raises `ValueError`."""
    timeout = float(args.timeout)
    overrides: dict[str, object] = {
        "model": args.model,
        "api": api,
        "http2": bool(args.http2),
        "timeouts": Timeouts(
            connect=min(timeout, 10.0),
            first_token=timeout,
            idle=timeout,
            total=max(600.0, timeout),
        ),
        "max_connections": max(100, int(getattr(args, "concurrency", 1))),
    }
    if args.base_url:
        overrides["base_url"] = args.base_url
    if getattr(args, "ca_bundle", None):
        overrides["ca_bundle"] = args.ca_bundle
    return AdapterConfig.from_env(**overrides)


def make_request(args: argparse.Namespace) -> TaskRequest:
    """`stream`'s request. Raises `ValueError` (a usage error) for a value the library refuses."""
    return TaskRequest(
        task_id=f"cli-{uuid.uuid4().hex[:12]}",
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
    )


def validate(args: argparse.Namespace) -> None:
    """Build what the command will send, before anything is sent: a value the library refuses
    (`ValueError`) is then a usage error (exit 2), never a traceback from inside the run."""
    if args.command == "serve" and not (is_loopback(args.host) or args.allow_remote):
        raise ValueError(
            f"--host {args.host} is not a loopback address and the embedded upstream has no "
            "authentication: add --allow-remote to serve it there"
        )
    if args.command in ("demo", "serve", "pool"):
        return
    make_config(args, getattr(args, "api", "chat"))
    if args.command == "stream":
        make_request(args)


def describe_exception(exc: BaseException) -> str:
    """`internal error: Type: message` for the first leaf of an exception group (a nursery
    wraps what its tasks raise), redacted like every message the adapter shows."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return redact(f"internal error: {type(exc).__name__}: {exc}")


def describe_error(error: ErrorInfo) -> str:
    status = f" (HTTP {error.status})" if error.status is not None else ""
    return redact(f"{error.kind.value}{status}: {error.message}")


@dataclass
class StreamResult:
    """What a consumer saw of one task."""

    events: list[Event] = field(default_factory=list)
    started: Started | None = None
    tokens: list[str] = field(default_factory=list)
    metrics: Metrics | None = None
    end: End | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)


async def consume(
    adapter: TaskTarget,
    req: TaskRequest,
    *,
    on_token: Callable[[Token], None] | None = None,
    interrupted: trio.Event | None = None,
    cancel_after_tokens: int | None = None,
) -> StreamResult:
    """Read one task to its `End`. When `interrupted` is set, or after `cancel_after_tokens`
    Tokens, the task is cancelled through `adapter.cancel`, as an orchestrator would."""
    result = StreamResult()
    async with adapter.submit(req) as events, trio.open_nursery() as nursery:
        if interrupted is not None:

            async def cancel_on_interrupt() -> None:
                await interrupted.wait()
                adapter.cancel(req.task_id)

            nursery.start_soon(cancel_on_interrupt)
        async for event in events:
            result.events.append(event)
            if isinstance(event, Token):
                result.tokens.append(event.text)
                if on_token is not None:
                    on_token(event)
                if cancel_after_tokens is not None and len(result.tokens) >= cancel_after_tokens:
                    adapter.cancel(req.task_id)
            elif isinstance(event, Started):
                result.started = event
            elif isinstance(event, Metrics):
                result.metrics = event
            elif isinstance(event, End):
                result.end = event
        nursery.cancel_scope.cancel()
    return result


def decode_rate(metrics: Metrics) -> float | None:
    """Tokens per second while decoding: the n − 1 gaps after the first token over the time
    from first to last token (the first token's wait is TTFT, not decode)."""
    if metrics.decode_time_ms and metrics.tokens_out >= 2:
        return (metrics.tokens_out - 1) / (metrics.decode_time_ms / 1000.0)
    return None


def _fmt(value: float | int | None, unit: str = "") -> str:
    if value is None:
        return "-"  # ASCII: a script may read this with any encoding
    if isinstance(value, int):
        return f"{value}{unit}"
    return f"{value:.1f}{unit}"


def metrics_table(metrics: Metrics) -> str:
    rows = [
        ["TTFT", _fmt(metrics.ttft_ms, " ms")],
        ["decode time", _fmt(metrics.decode_time_ms, " ms")],
        ["tokens/s", _fmt(decode_rate(metrics))],
        [
            "tokens in/out",
            f"{_fmt(metrics.prompt_tokens)} / {_fmt(metrics.completion_tokens)}"
            f" (Token events: {metrics.tokens_out})",
        ],
        ["duration", _fmt(metrics.duration_ms, " ms")],
        ["retries", str(metrics.retries)],
    ]
    return render_table(["metric", "value"], rows)


def _end_line(end: End) -> str:
    line = f"end: {end.reason}, {plural(end.tokens_out, 'token')}"
    if end.error is not None:
        line += f": {describe_error(end.error)}"
    return line


def _exit_for(end: End | None, interrupted: trio.Event | None) -> int:
    if end is None:
        return EXIT_FAILED
    if end.reason == "cancelled" and interrupted is not None and interrupted.is_set():
        return EXIT_INTERRUPTED
    return EXIT_OK if end.reason in _FINISHED else EXIT_FAILED


# --- demo ------------------------------------------------------------------------------------


async def run_demo(args: argparse.Namespace, term: Term, interrupted: trio.Event) -> int:
    """The embedded upstream → the adapter → live tokens, then the metrics table."""
    from ..testing import open_upstream

    async with open_upstream(pace=args.pace) as upstream:
        config = AdapterConfig(base_url=upstream.base_url, model=upstream.model, api=args.api)
        async with OpenAIAdapter(config) as adapter:
            health = await adapter.health()
            version = await adapter.engine_version()
            term.write(
                term.paint(f"upstream {upstream.base_url}", "cyan")
                + f" — {health.detail}; engine {version.engine} {version.version}\n"
            )
            req = TaskRequest(task_id="demo-1", prompt=args.prompt)
            result = await consume(
                adapter,
                req,
                on_token=lambda t: term.write(t.text),
                interrupted=interrupted,
            )
            term.write("\n")
            if result.started is not None:
                term.write(
                    term.paint(
                        f"started: {result.started.http_version}, attempt {result.started.attempt}\n",
                        "dim",
                    )
                )
            if result.end is not None:
                term.write(term.paint(_end_line(result.end), "bold") + "\n")
            if result.metrics is not None:
                term.write(metrics_table(result.metrics))
            return _exit_for(result.end, interrupted)


# --- serve -----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run_serve(args: argparse.Namespace, term: Term, interrupted: trio.Event) -> int:
    """The embedded upstream on `--host:--port` until Ctrl-C: its base URL on stdout."""
    from ..testing import FakeUpstream, H2Upstream

    kind = H2Upstream if args.http2 else FakeUpstream
    upstream = kind(model=args.model, host=args.host, port=args.port, pace=args.pace)
    failed: OSError | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            wire = "HTTP/2 h2c with prior knowledge" if args.http2 else "HTTP/1.1"
            what = f"{wire}; chat, completions and responses"
            term.write(f"{upstream.base_url}\n")
            term.note(
                f"serving model {upstream.model!r} at {upstream.base_url} ({what}, and the "
                "probes); Ctrl-C stops"
            )
            await interrupted.wait()
            nursery.cancel_scope.cancel()
    except* OSError as group:
        failed = _first_leaf(group)
    if failed is not None:
        term.error(f"cannot listen on {args.host}:{args.port}: {failed.strerror or failed}")
        return EXIT_USAGE
    term.note("stopped")
    return EXIT_OK


def _first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, OSError)
    return first


# --- stream ----------------------------------------------------------------------------------


async def run_stream(args: argparse.Namespace, term: Term, interrupted: trio.Event) -> int:
    """Live tokens from any endpoint on stdout; the end and the metrics on stderr."""
    config = make_config(args, args.api)
    req = make_request(args)
    async with OpenAIAdapter(config) as adapter:
        result = await consume(
            adapter, req, on_token=lambda t: term.write(t.text), interrupted=interrupted
        )
    if result.tokens:
        term.write("\n")
    end = result.end
    if end is None:  # pragma: no cover - the adapter always ends a stream with End
        term.error("the stream ended without an End event")
        return EXIT_FAILED
    if end.reason == "cancelled":
        term.note(
            f"interrupted: cancelled after {plural(end.tokens_out, 'token')}; received:", "yellow"
        )
        term.err.write(result.text + "\n")
        term.err.flush()
    elif end.error is not None:
        term.error(describe_error(end.error))
    else:
        term.note(_end_line(end))
    if result.metrics is not None and not args.quiet:
        term.err.write(metrics_table(result.metrics))
        term.err.flush()
    return _exit_for(end, interrupted)


# --- check -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckRow:
    name: str
    status: str  # "pass" | "fail" | "skip"
    detail: str
    error: ErrorInfo | None = None  # what ended the row's stream, when it ended in an error


def _describe_props(props: WorkerProps) -> str:
    parts = []
    if props.slots_total is not None:
        free = f" ({props.slots_free} free)" if props.slots_free is not None else ""
        parts.append(f"slots {props.slots_total}{free}")
    if props.context_length is not None:
        parts.append(f"context {props.context_length}")
    if props.model is not None:
        parts.append(f"model {props.model}")
    return ", ".join(parts) or "not reported by this upstream"


async def _check_stream(
    args: argparse.Namespace, api: Api, adapter: OpenAIAdapter | None = None
) -> tuple[CheckRow, bool]:
    """A short stream on `api` (through `adapter` when given, else a new one). The bool says
    whether the api is supported."""
    name = f"stream {api}"
    try:
        req = TaskRequest(task_id=f"check-{api}", prompt=args.prompt, max_tokens=args.max_tokens)
        if adapter is not None:
            result = await consume(adapter, req)
            leaked = adapter.running()
        else:
            async with OpenAIAdapter(make_config(args, api)) as own:
                result = await consume(own, req)
                leaked = own.running()
    except Exception as exc:  # report, do not crash: one row per failure
        return CheckRow(name, "fail", describe_exception(exc)), False
    end = result.end
    assert end is not None
    if end.error is not None:
        err = end.error
        if err.kind is ErrorKind.UPSTREAM_NOT_FOUND and err.status == 404:
            return CheckRow(name, "skip", f"not supported ({describe_error(err)})"), False
        return CheckRow(name, "fail", describe_error(err), err), False
    if problem := stream_problem(result.events):
        return CheckRow(name, "fail", f"event order: {problem}"), True
    if leaked:
        return CheckRow(name, "fail", f"tasks still registered after End: {sorted(leaked)}"), True
    calls = sum(isinstance(ev, ToolCallDelta) for ev in result.events)
    thoughts = sum(isinstance(ev, ReasoningDelta) for ev in result.events)
    if not (result.tokens or calls or thoughts):
        return CheckRow(name, "fail", f"no output (end: {end.reason})"), True
    m = result.metrics
    usage = (
        f"usage {m.prompt_tokens}/{m.completion_tokens}"
        if m is not None and m.completion_tokens is not None
        else "no usage"
    )
    started = result.started
    http = started.http_version if started is not None else "?"
    return (
        CheckRow(
            name,
            "pass",
            ", ".join(
                [plural(len(result.tokens), "token")]
                + ([plural(calls, "tool-call delta")] if calls else [])
                + ([plural(thoughts, "reasoning delta")] if thoughts else [])
                + [f"finish {end.reason}", usage, http]
            ),
        ),
        True,
    )


async def _check_cancel(args: argparse.Namespace, api: Api) -> CheckRow:
    name = f"cancel ({api})"
    try:
        config = make_config(args, api)
        req = TaskRequest(task_id="check-cancel", prompt=args.prompt, max_tokens=args.cancel_tokens)
        async with OpenAIAdapter(config) as adapter:
            result = await consume(adapter, req, cancel_after_tokens=1)
            leaked = adapter.running()
    except Exception as exc:
        return CheckRow(name, "fail", describe_exception(exc))
    end = result.end
    assert end is not None
    if end.reason == "cancelled":
        if leaked:
            return CheckRow(name, "fail", f"tasks still registered: {sorted(leaked)}")
        return CheckRow(name, "pass", f"End(cancelled) after {plural(end.tokens_out, 'token')}")
    if end.error is not None:
        return CheckRow(name, "fail", describe_error(end.error))
    return CheckRow(
        name,
        "fail",
        f"ended {end.reason} with {plural(end.tokens_out, 'token')} instead of cancelled",
    )


async def collect_checks(args: argparse.Namespace) -> list[CheckRow]:
    rows: list[CheckRow] = []
    supported: list[Api] = []
    async with OpenAIAdapter(make_config(args, "chat")) as adapter:
        health = await adapter.health()
        status = "pass" if health.live and health.ready else "fail"
        rows.append(CheckRow("health", status, health.detail))
        if not health.live:
            return rows
        props = await adapter.props()
        # The chat stream goes first, through this adapter: LiteLLM names its version only in
        # a header of a completion response, which the version probe below can then use.
        row, ok = await _check_stream(args, "chat", adapter)
        stream_rows = [row]
        if ok and row.status == "pass":
            supported.append("chat")
        # A refused key makes every probe that needs it say nothing: that is not "this upstream
        # does not report it" (a PASS), it is a key to fix.
        refused = row.error if row.error and row.error.kind is ErrorKind.UPSTREAM_AUTH else None
        if refused is not None and props == WorkerProps():
            rows.append(CheckRow("props", "fail", f"not read: {_key_refused(refused)}"))
        else:
            rows.append(CheckRow("props", "pass", _describe_props(props)))
        version = await adapter.engine_version()
        if version.version == "unknown":
            detail = "unknown (the upstream does not say)"
        else:
            detail = f"{version.engine} {version.version}"
        if version.server:
            detail += f" (server: {version.server})"
        if refused is not None and version.version == "unknown":
            rows.append(CheckRow("engine version", "fail", f"not read: {_key_refused(refused)}"))
        else:
            rows.append(CheckRow("engine version", "pass", detail))
    for api in APIS[1:]:
        row, ok = await _check_stream(args, api)
        stream_rows.append(row)
        if ok and row.status == "pass":
            supported.append(api)
    rows.extend(stream_rows)
    if supported:
        rows.append(await _check_cancel(args, supported[0]))
    else:
        rows.append(CheckRow("cancel", "fail", "no api streamed, nothing to cancel"))
    return rows


def _key_refused(error: ErrorInfo) -> str:
    status = f" (HTTP {error.status})" if error.status is not None else ""
    return f"the upstream refused the API key{status}; set OPENAI_API_KEY to a key it accepts"


async def run_check(args: argparse.Namespace, term: Term, interrupted: trio.Event) -> int:
    """Probes, a short stream on each api, a cancel: a pass/fail table (or `--json`)."""
    with trio.CancelScope() as scope:

        async def stop_on_interrupt() -> None:
            await interrupted.wait()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_interrupt)
            rows = await collect_checks(args)
            nursery.cancel_scope.cancel()
    if scope.cancelled_caught:
        term.error("interrupted")
        return EXIT_INTERRUPTED
    failed = [r for r in rows if r.status == "fail"]
    if args.json:
        doc = {
            "ok": not failed,
            "checks": [{"name": r.name, "status": r.status, "detail": r.detail} for r in rows],
        }
        term.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        styles = {"pass": "green", "fail": "red", "skip": "yellow"}
        table = render_table(
            ["check", "result", "detail"], [[r.name, r.status.upper(), r.detail] for r in rows]
        )
        for r in rows:  # colour the result column on a TTY
            table = table.replace(
                f"  {r.status.upper()}  ",
                f"  {term.paint(r.status.upper(), styles[r.status])}  ",
                1,
            )
        term.write(table)
        summary = f"{len(rows) - len(failed)} passed or skipped, {len(failed)} failed"
        term.note(summary, "red" if failed else "green")
    return EXIT_FAILED if failed else EXIT_OK


# --- bench -----------------------------------------------------------------------------------


async def run_bench(args: argparse.Namespace, term: Term, interrupted: trio.Event) -> int:
    """K requests, N at a time; then TTFT / ITL / TPOT / E2EL percentiles and throughput."""
    config = make_config(args, args.api)
    total: int = args.requests
    samples: list[RequestSample] = []
    messages: dict[str, str] = {}  # error kind -> the first message of that kind
    next_index = 0
    stopping = False

    async with open_task_target(config, getattr(args, "base_urls", None)) as adapter:

        async def one(i: int) -> None:
            req = TaskRequest(task_id=f"bench-{i}", prompt=args.prompt, max_tokens=args.max_tokens)
            token_times: list[float] = []
            start = trio.current_time()
            result = await consume(
                adapter, req, on_token=lambda _t: token_times.append(trio.current_time())
            )
            end = result.end
            assert end is not None
            if end.reason == "cancelled":
                return  # interrupted: not a sample
            error = (end.error.kind.value if end.error is not None else None) or (
                None if end.reason in _FINISHED else end.reason
            )
            if error is not None and end.error is not None:
                messages.setdefault(error, end.error.message)
            samples.append(
                RequestSample(start, token_times, trio.current_time(), error is None, error)
            )
            term.progress(len(samples), total, sum(1 for s in samples if not s.ok))

        async def worker() -> None:
            nonlocal next_index
            while not stopping and next_index < total:
                i = next_index
                next_index += 1
                await one(i)

        async def stop_on_interrupt() -> None:
            nonlocal stopping
            await interrupted.wait()
            stopping = True
            for task_id in adapter.running():
                adapter.cancel(task_id)

        began = trio.current_time()
        term.progress(0, total, 0)
        async with trio.open_nursery() as outer:
            outer.start_soon(stop_on_interrupt)
            async with trio.open_nursery() as workers:
                for _ in range(min(args.concurrency, total)):
                    workers.start_soon(worker)
            outer.cancel_scope.cancel()
        wall = trio.current_time() - began
        term.end_progress()

    report = summarize(samples, wall)
    if args.json:
        doc = {
            "base_url": config.base_url,
            "model": config.model,
            "api": config.api,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "interrupted": interrupted.is_set(),
            **report.as_dict(),
            "error_messages": {kind: messages[kind] for kind in sorted(messages)},
            "hints": bench_hints(report.errors, args.concurrency),
        }
        term.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        heads = ["ms", "mean", *(f"p{q:g}" for q in PERCENTILES), "n"]
        rows = []
        for label, dist in (
            ("TTFT", report.ttft_ms),
            ("ITL", report.itl_ms),
            ("TPOT", report.tpot_ms),
            ("E2EL", report.e2el_ms),
        ):
            pcts = [_fmt(dist.percentiles[f"p{q:g}"]) for q in PERCENTILES]
            rows.append([label, _fmt(dist.mean), *pcts, str(dist.count)])
        term.write(render_table(heads, rows))
        term.write(
            f"requests {report.succeeded} ok / {report.failed} failed in {report.wall_s:.2f} s"
            f" ({_fmt(report.requests_per_s)} req/s); output tokens {report.tokens_out}"
            f" ({_fmt(report.tokens_per_s)} tokens/s)\n"
        )
        for kind, count in sorted(report.errors.items()):
            said = f": {redact(messages[kind])}" if kind in messages else ""
            term.error(f"{plural(count, 'request')} failed with {kind}{said}")
        for hint in bench_hints(report.errors, args.concurrency):
            term.note(f"hint: {hint}", "yellow")
    if interrupted.is_set():
        return EXIT_INTERRUPTED
    return EXIT_FAILED if report.failed else EXIT_OK


def bench_hints(errors: dict[str, int], concurrency: int) -> list[str]:
    """What a person can do about the failures: streams cut short while others ran are what a
    server that serves one request at a time does (llama-cpp-python ends the running stream
    with `[DONE]` and no finish reason when the next request arrives, FACTS.md)."""
    hints: list[str] = []
    if errors.get(ErrorKind.WORKER_RESET.value) and concurrency > 1:
        hints.append(
            "the upstream cut streams short while others were running (WORKER_RESET); a "
            "server that serves one request at a time (llama-cpp-python ends the running "
            "stream with [DONE] and no finish reason when the next request arrives) needs "
            "--concurrency 1"
        )
    return hints
