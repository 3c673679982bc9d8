"""One task's reader: request, retries before `Started`, the stream, and its `End`.

The reader runs in the task's nursery (opened by `submit`) inside the cancel scope that
`cancel(task_id)` cancels. It sends batches of events — one list per network read — over a
bounded trio memory channel; the consumer unpacks them (`_stream.EventStream`). A batch per
read instead of a channel item per token saves a scheduler round trip per token (≈ 7 µs,
FACTS.md) and keeps the stream's order, since one task writes the channel.

Deadlines (DESIGN.md, "Configuration"): `total` bounds the whole task, retries and backoff
included; until the first output delta (a Token, or a ReasoningDelta or ToolCallDelta: a
reasoning model or a tool-call-only answer may stream long before, or without, any text) the
read deadline is `first_token` after the request was sent (headers included), and every read
is also bounded by `idle` after the last parsed event (before the first one: after the response
headers). SSE comments and keep-alive bytes parse to no event and so do not move the idle
deadline; time spent blocked on a full channel (a slow consumer) does, since that is
backpressure, not upstream silence. Connect is bounded by httpx2 (`Timeouts.connect`).

The response's life (send, close, drain) is `_http.Upstream.open_stream`'s; this module keeps
attempts, deadlines and events. Given an `Endpoint` and a `Task`, nothing more.

Invariants: at most one `Started`, and never a retry after it; exactly one `End` unless the
task was cancelled (then the consumer makes `End(cancelled)`); the upstream response is closed,
with a bounded, shielded cleanup, before the reader says it finished
(`TaskState.reader_finished()`) — except after the upstream said it
finished: then the connection goes back to the pool at once if the body's end is already here,
else `Metrics` and `End` are sent first and the body's tail is drained (and the response
closed) in the `Upstream`'s background, so `End` never waits for a server that holds the body
open after `[DONE]`.
"""

from __future__ import annotations

import math
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Final

import httpx2
import msgspec
import trio

from ._errors import (
    ErrorKind,
    WorkerError,
    compressed_stream_error,
    error_from_status,
    error_from_transport,
    make_error,
)
from ._events import End, Event, Metrics, Started
from ._mappers import ChatMapper, Mapper, ProtocolError
from ._responses import ResponsesMapper
from ._retry import backoff_delay, retry_after_ms
from ._sse import SSEDecoder, SSEError, SSEEvent

if TYPE_CHECKING:
    from ._config import TaskRequest
    from ._endpoint import Endpoint
    from ._http import UpstreamResponse
    from ._log import TaskLog
    from ._registry import TaskState

__all__ = ["MAPPERS", "Task", "run_task"]

MAPPERS: Final[dict[str, type[Mapper]]] = {
    "chat": ChatMapper,
    "completions": ChatMapper,
    "responses": ResponsesMapper,
}


class Task:
    """One submitted task: what its reader needs besides the `Endpoint`."""

    __slots__ = ("body", "headers", "req", "send", "started_at", "state", "tlog")

    def __init__(
        self,
        *,
        state: TaskState,
        req: TaskRequest,
        body: bytes,
        headers: dict[str, str],
        send: trio.MemorySendChannel[list[Event]],
        tlog: TaskLog,
        started_at: float,
    ) -> None:
        self.state = state
        self.req = req
        self.body = body
        self.headers = headers
        self.send = send
        self.tlog = tlog
        self.started_at = started_at


class _Failed(Exception):
    """An attempt failed; `error` says how."""

    def __init__(self, error: WorkerError) -> None:
        self.error = error


def run_task(endpoint: Endpoint, task: Task) -> Coroutine[object, object, None]:
    """The reader task, for `nursery.start_soon(run_task, endpoint, task)`. Sends every event
    but a cancel's `End`; calls `task.state.reader_finished()` last. A plain function that
    returns the reader's coroutine: one frame less on the stack of every waiting stream."""
    return _Reader(endpoint, task).run()


class _Reader:
    __slots__ = (
        "_first_deadline",
        "_first_token_read",
        "_max_tokens",
        "_pending",
        "_total_deadline",
        "body",
        "config",
        "decoder",
        "endpoint",
        "first_token_at",
        "headers",
        "last_token_at",
        "mapper",
        "output_seen",
        "retry_cause",
        "send",
        "started",
        "started_at",
        "state",
        "task_id",
        "tlog",
    )

    def __init__(self, endpoint: Endpoint, task: Task) -> None:
        self.endpoint = endpoint
        self.config = endpoint.config
        self.state = task.state
        # What attempts send. Only attempts before `Started` need it (none follows it), so
        # `_start` drops it: a running stream keeps neither the request body nor the
        # `TaskRequest` (nor the `Task`, which is not kept).
        self.body: bytes | None = task.body
        self.headers: dict[str, str] | None = task.headers
        self.task_id = task.req.task_id
        self._max_tokens = _token_limit(task.req)
        self.send = task.send
        self.tlog = task.tlog
        self.started_at = task.started_at
        self.started: Started | None = None
        self.mapper = self._new_mapper()
        self.decoder = SSEDecoder()
        self.first_token_at: float | None = None
        self.output_seen = False  # any delta event (Token, ReasoningDelta, ToolCallDelta) yet
        self.last_token_at: float | None = None
        self._first_deadline = 0.0
        self._total_deadline = math.inf  # `run` sets it: the task's `total` deadline
        # The read waiting now has the first-token deadline (True) or the idle one (False);
        # None while the request is sent and its head awaited (the first-token deadline).
        self._first_token_read: bool | None = None
        self.retry_cause: WorkerError | None = None  # set while waiting to retry
        self._pending: list[SSEEvent] = []  # read with the first event, mapped after Started

    # --- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        """Attempts until one is accepted (`Started` sent) or the last one fails, the stream
        (in the accepted attempt, `_attempt`), and `End`. The retry loop is here, not in a
        function of its own: a waiting stream's stack is `run` → `_attempt` → `_stream` → the
        read, and every coroutine frame on it is kept for the stream's life.

        Each attempt, and each backoff, runs in a scope of its own that `cancel()` reaches
        (`TaskState.renew_scope()`), and that one scope carries every deadline: the task's
        `total` and the attempt's read deadlines, whichever comes first (`_limit`). One scope,
        not two: trio keeps a status and two sets per entered scope (docs/performance.md,
        memory). When it fires, `stopped` says whether it was a stop, and the clock which
        deadline it was."""
        state = self.state
        total = self._total_deadline = self.started_at + self.config.timeouts.total
        try:
            error: WorkerError | None = None
            attempt = 0
            while True:
                attempt += 1
                self.tlog.attempt = attempt
                state.attempts = attempt  # `EventStream.statistics().attempts`
                error = None
                # The first-token deadline bounds the send, the headers and the first event; once
                # the stream is accepted the same scope carries its read deadlines (`_stream`).
                first_deadline = trio.current_time() + self.config.timeouts.first_token
                with state.renew_scope(self._limit(first_deadline)) as scope:
                    try:
                        if await self._attempt(attempt, scope, first_deadline):
                            return  # `End` sent; a tail is drained in the background
                    except _Failed as failed:
                        error = failed.error
                if state.stopped:
                    return  # cancelled, or the consumer left: it makes its own `End`
                if scope.cancelled_caught:
                    error = self._deadline_error()
                if error is None:
                    break  # the body ended without an end marker: no error
                delay = self._retry_delay(error, attempt)
                if delay is None:
                    break
                self.retry_cause, error = error, None
                with state.renew_scope(total) as scope:  # past it, DEADLINE_UNMET
                    await trio.sleep(delay)
                if state.stopped:
                    return
                if scope.cancelled_caught:
                    error = self._total_timeout()
                    break
                self.retry_cause = None
                self.mapper = self._new_mapper()
                self.decoder = SSEDecoder()
            # This `End` goes out however late: only a stop ends it.
            with state.renew_scope():
                await self._finish(error)
        finally:
            self.send.close()  # synchronous: no scheduler pass between a cancel and the end
            state.reader_finished()

    def _limit(self, deadline: float) -> float:
        """`deadline`, or the task's `total` deadline when that comes first."""
        total = self._total_deadline
        return deadline if deadline < total else total

    def _deadline_error(self) -> WorkerError:
        """The error of the attempt scope's deadline that passed: `total`, the first-token
        deadline before `Started`, or a read's (first token, or idle)."""
        if trio.current_time() >= self._total_deadline:
            return self._total_timeout()
        first_token_read = self._first_token_read
        if self.started is not None or first_token_read is False:
            return self._read_timeout(bool(first_token_read))
        timeouts = self.config.timeouts
        return make_error(
            ErrorKind.DECODE_TIMEOUT,
            f"first_token timeout: no event within {timeouts.first_token:g} s of the request",
        )

    def _new_mapper(self) -> Mapper:
        return MAPPERS[self.config.api](self.task_id, max_tokens=self._max_tokens)

    def _retry_delay(self, error: WorkerError, attempt: int) -> float | None:
        """The backoff before the next attempt after `error`, or None: no retry (the stream had
        started, the error is final, attempts are used up, or the retry budget refused)."""
        policy = self.config.retry
        if self.started is not None:
            return None  # never a retry after `Started`
        if not error.retryable or attempt >= policy.max_attempts:
            return None
        if not self.endpoint.retry_budget.try_spend():
            self.state.retry_refused = True
            self.tlog.warning(
                f"attempt {attempt} failed ({error.kind.value}: {error.message});"
                " the retry budget refused a retry",
                error_kind=error.kind.value,
                status=error.status,
                retryable=error.retryable,
                retry_after_ms=error.retry_after_ms,
            )
            return None
        delay = backoff_delay(policy, attempt, error.retry_after_ms, rng=self.endpoint.rng)
        self.tlog.warning(
            f"attempt {attempt} failed ({error.kind.value}"
            f"{f', status {error.status}' if error.status else ''}: {error.message}), "
            f"retrying in {delay * 1000:.0f} ms",
            error_kind=error.kind.value,
            status=error.status,
            retryable=error.retryable,
            retry_after_ms=error.retry_after_ms,
        )
        return delay

    def _total_timeout(self) -> WorkerError:
        total = self.config.timeouts.total
        cause = self.retry_cause
        return make_error(
            ErrorKind.DEADLINE_UNMET,
            f"total timeout: the task took longer than {total:g} s"
            + (
                f" (waiting to retry after: {cause.kind.value}: {cause.message})"
                if cause is not None
                else ""
            ),
        )

    def _narrate_request(self, attempt: int) -> None:
        # Written here, not in `_attempt`: a log record looks up its caller's frame, and a
        # frame once looked up stays allocated while its coroutine runs (≈ 0.3 KB per stream).
        config = self.config
        self.tlog.debug(f"request sent (api {config.api}, model {config.model}, attempt {attempt})")

    async def _attempt(self, attempt: int, scope: trio.CancelScope, first_deadline: float) -> bool:
        """One request, in `scope` (`run`'s, its deadline the first token's, `first_deadline`,
        or `total`'s when that comes first). Before `Started` a failure raises `_Failed`
        (retried where the table says); after it, the stream runs to its end here. True when
        `End` was sent. A deadline is set only when it changes (each set is ≈ 2 µs of trio's,
        and the set-up is a few hundred µs: docs/performance.md)."""
        endpoint = self.endpoint
        timeouts = self.config.timeouts
        self._first_token_read = None
        self._narrate_request(attempt)
        error: WorkerError | None = None
        try:
            async with endpoint.upstream.open_stream(
                endpoint.url, json=self.body, headers=self.headers
            ) as resp:
                self.state.response = resp  # `stop()` closes it at once (a cancel)
                try:
                    out = await self._accept(resp, first_deadline, scope)
                    await self._start(resp, attempt, first_deadline, out)
                    try:
                        await self._stream(resp, scope)
                    except _Failed as failed:
                        error = failed.error
                    if self.mapper.done:
                        # The upstream said it finished: the connection goes back to the pool
                        # now if the body's end is here, else the tail is drained in the
                        # background; `End` goes now, without waiting for a drain.
                        await resp.finish()
                        if resp.released:
                            self.state.draining = resp
                        await self._finish(error)
                        return True
                finally:
                    self.state.response = None
        except WorkerError as exc:
            raise _Failed(exc) from exc
        except (httpx2.HTTPError, OSError) as exc:
            error = error_from_transport(exc, after_headers=False, timeouts=timeouts)
            raise _Failed(error) from exc
        if error is not None:  # after `Started`: `run` does not retry it
            raise _Failed(error)
        return False  # the body ended without an end marker, and that is no error

    async def _accept(
        self, resp: UpstreamResponse, first_deadline: float, scope: trio.CancelScope
    ) -> list[Event]:
        """Read up to the first event the mapper counts; `_Failed` if the stream is refused.
        The reads are bounded through the attempt's `scope` (no scope of their own:
        one is ≈ 5 µs of the set-up, docs/performance.md): by the first-token deadline, or by
        `idle` after the headers when that comes first (`_first_token_read` says which)."""
        timeouts = self.config.timeouts
        status = resp.status
        if not 200 <= status < 300:
            raw = await resp.read_body()
            after = retry_after_ms(resp.headers)
            try:
                error = error_from_status(status, raw, retry_after_ms=after)
            except RecursionError:  # a hostile body nested too deep: the status still speaks
                error = error_from_status(status, b"", retry_after_ms=after)
            raise _Failed(error)
        ctype = resp.headers.get("content-type", "")
        if not ctype.lower().startswith("text/event-stream"):
            raise _Failed(
                make_error(
                    ErrorKind.PROTOCOL,
                    f"expected an event stream, got {ctype or 'no content-type'} (status {status})",
                    status=status,
                )
            )
        if err := compressed_stream_error(resp.headers.get("content-encoding"), status):
            raise _Failed(err)
        # Accepted only once the first event the mapper counts is known not to be an
        # error. Only that event decides; what follows it in the same read is mapped once
        # the stream is accepted, so the outcome does not depend on how bytes were chunked.
        out: list[Event] = []
        idle_deadline = trio.current_time() + timeouts.idle  # idle counts from the headers
        self._first_token_read = first_deadline <= idle_deadline
        deadline = self._limit(min(idle_deadline, first_deadline))
        if deadline != scope.deadline:  # usually the first token's still
            scope.deadline = deadline
        mapper = self.mapper
        self._pending = []
        while mapper.events_seen == 0 and not mapper.done:
            try:
                chunk = await resp.next_chunk()
            except (httpx2.HTTPError, OSError) as exc:
                raise _Failed(error_from_transport(exc, after_headers=True)) from exc
            events = self.decoder.close() if chunk is None else self._decode(chunk)
            for i, event in enumerate(events):
                self._map([event], out)
                if mapper.events_seen or mapper.done:
                    self._pending = events[i + 1 :]
                    break
            if chunk is None:
                break
        if mapper.error is not None:
            if mapper.done:
                # The first event is an error: not accepted. The upstream said it finished, so
                # read the tail before retrying, to retry on the same connection.
                resp.keep_connection(in_background=False)
            raise _Failed(mapper.error)
        if mapper.events_seen == 0 and not mapper.done:
            raise _Failed(
                make_error(
                    ErrorKind.WORKER_RESET, "the upstream closed the stream before any event"
                )
            )
        return out

    async def _start(
        self, resp: UpstreamResponse, attempt: int, first_deadline: float, out: list[Event]
    ) -> None:
        """Send `Started`, with `out` (the events mapped with the first one)."""
        config = self.config
        self.started = Started(
            task_id=self.task_id,
            model=config.model,
            attempt=attempt,
            http_version=resp.http_version,
            request_id=resp.request_id,
            replica_id=config.replica_id,
        )
        self.tlog.info(
            f"stream accepted (status {resp.status}, {self.started.http_version}, "
            f"upstream request id {self.started.request_id})"
        )
        if litellm := resp.headers.get("x-litellm-version"):
            self.endpoint.info.litellm_version = litellm
        # No attempt follows `Started`: what only attempts need is not kept for the stream's
        # life (the request body and headers, the response's headers).
        self.body = self.headers = None
        resp.forget_headers()
        pending, self._pending = self._pending, []
        if pending and not self.mapper.done:
            # What came in the same read as the first event, mapped now that the stream is
            # accepted (an error among it ends the stream after Started, in `_stream`), and sent
            # in the same batch as `Started`: one channel hop to the first Token, not two.
            self._map(pending, out)
        out.insert(0, self.started)
        self._first_deadline = first_deadline
        # The task's first batch: the channel is empty, so this never waits under the read
        # deadline the scope still has (a wait on the consumer is bounded by `total` only:
        # `_stream` and `_finish` send under it).
        await self._emit(out)
        # Let the consumer have `Started` (and the first Tokens, when they came in the same
        # read) now, before this task goes on to read, drain or finish: time to first token.
        await trio.lowlevel.checkpoint()

    async def _stream(self, resp: UpstreamResponse, scope: trio.CancelScope) -> None:
        """Read, parse and send until the upstream finishes. Raises `_Failed` after `Started`.

        The hot loop: one network read (`resp.receive()`, the transport's own read over
        HTTP/1.1), straight into the SSE decoder and the mapper, one batch to the channel. The
        attempt's `scope` carries the read deadline (first token or idle; `total` when that
        comes first), moved before each read; it is lifted (to `total`) while a full channel
        blocks the send, since a slow consumer is backpressure, not upstream silence. When it
        fires, `run` names the timeout (`_first_token_read` says which)."""
        idle = self.config.timeouts.idle
        mapper = self.mapper
        receive = resp.receive
        feed = self.decoder.feed
        send = self.send
        first_deadline = self._first_deadline
        total = self._total_deadline
        try:
            last_event = trio.current_time()
            while not mapper.done:
                deadline = last_event + idle
                if not self.output_seen and first_deadline <= deadline:
                    self._first_token_read = True
                    deadline = first_deadline
                else:
                    self._first_token_read = False
                scope.deadline = deadline if deadline < total else total
                try:
                    chunk = await receive()
                except (httpx2.HTTPError, OSError) as exc:
                    raise _Failed(error_from_transport(exc, after_headers=True)) from exc
                out: list[Event] = []
                if not chunk:
                    scope.deadline = total
                    self._feed_eof(out)
                    if out:
                        await self._emit(out)
                    if mapper.error is None and (err := mapper.eof_error()) is not None:
                        raise _Failed(err)
                    break
                try:
                    events = feed(chunk)
                except SSEError as exc:
                    raise _Failed(
                        make_error(ErrorKind.PROTOCOL, f"malformed event stream: {exc}")
                    ) from exc
                if not events:
                    continue  # comments, keep-alive bytes, a partial event: no idle reset
                self._map(events, out)
                if out:
                    try:
                        send.send_nowait(out)
                    except trio.WouldBlock:
                        scope.deadline = total
                        await send.send(out)
                last_event = trio.current_time()
        finally:
            scope.deadline = total  # `Metrics` and `End` are sent within it
        if mapper.error is not None:
            raise _Failed(mapper.error)

    # --- pieces --------------------------------------------------------------------------

    def _read_timeout(self, first_token: bool) -> WorkerError:
        """The error of a read deadline that passed: first token's, or idle's."""
        timeouts = self.config.timeouts
        if first_token:
            message = (
                f"first_token timeout: no token within {timeouts.first_token:g} s of the request"
            )
        else:
            message = f"idle timeout: no event from the upstream for {timeouts.idle:g} s"
        return make_error(ErrorKind.DECODE_TIMEOUT, message)

    def _decode(self, chunk: bytes) -> list[SSEEvent]:
        try:
            return self.decoder.feed(chunk)
        except SSEError as exc:
            raise _Failed(make_error(ErrorKind.PROTOCOL, f"malformed event stream: {exc}")) from exc

    def _feed_eof(self, out: list[Event]) -> None:
        self._map(self.decoder.close(), out)

    def _map(self, events: list[tuple[str, bytes]], out: list[Event]) -> None:
        mapper = self.mapper
        before = mapper.next_index
        produced = len(out)
        try:
            for name, data in events:
                mapper.feed(name, data, out)
                if mapper.done:
                    break
        except (ProtocolError, msgspec.DecodeError) as exc:
            # Ends the stream like an error event: the Tokens mapped before it in this read
            # are still delivered (End.tokens_out counts them).
            mapper.error = make_error(ErrorKind.PROTOCOL, str(exc))
            mapper.done = True
        except RecursionError:
            # msgspec raises it, not DecodeError, for JSON nested ~2,000 deep (the mappers
            # turn it into ProtocolError; this keeps any path that does not a PROTOCOL end too).
            mapper.error = make_error(
                ErrorKind.PROTOCOL, "malformed JSON in an event: nested too deeply"
            )
            mapper.done = True
        if len(out) != produced:
            self.output_seen = True
        if mapper.next_index != before:
            now = trio.current_time()
            if self.first_token_at is None:
                self.first_token_at = now
            self.last_token_at = now

    async def _emit(self, batch: list[Event]) -> None:
        try:
            self.send.send_nowait(batch)
        except trio.WouldBlock:
            await self.send.send(batch)

    async def _finish(self, error: WorkerError | None) -> None:
        """Send `Metrics` (when the stream started) and `End`; narrate and report the end."""
        now = trio.current_time()
        mapper = self.mapper
        tokens = mapper.next_index
        first, last = self.first_token_at, self.last_token_at
        ttft_ms = (first - self.started_at) * 1000.0 if first is not None else None
        decode_ms = (last - first) * 1000.0 if first is not None and last is not None else None
        duration_ms = (now - self.started_at) * 1000.0
        out: list[Event] = []
        task_id = self.task_id
        metrics: Metrics | None = None
        if self.started is not None:
            metrics = Metrics(
                task_id=task_id,
                ttft_ms=ttft_ms,
                decode_time_ms=decode_ms,
                duration_ms=duration_ms,
                tokens_out=tokens,
                prompt_tokens=mapper.prompt_tokens,
                completion_tokens=mapper.completion_tokens,
                retries=self.started.attempt - 1,
            )
            out.append(metrics)
        if error is None:
            end = End(task_id=task_id, reason=mapper.finish or "stop", tokens_out=tokens)
        else:
            end = End(task_id=task_id, reason="error", tokens_out=tokens, error=error.info())
        out.append(end)
        self.tlog.finished(end, metrics, duration_ms)
        await self._emit(out)


def _token_limit(req: TaskRequest) -> int | None:
    """The output limit the upstream was sent (`extra` is merged last, so it wins)."""
    limit = (req.extra or {}).get("max_output_tokens", req.max_tokens)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None
