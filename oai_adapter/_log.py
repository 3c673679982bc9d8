"""Logging: loguru, off until the application calls `logger.enable("oai_adapter")`.

Every record the library writes goes through `log`, a logger patched with `_redact_record`, so
no record can leave without redaction — not one written by a future change that forgets to
clean its message (OC-ADAPT-OAI-6020). A task's records carry every field of
`shared/spec/log-fields.md`: the fixed ones bound once per task, the changing ones filled in
on each record by `TaskLog`, so a sink can rely on every key being present.

Narration is one record per step (sent, started, retry, end, cancel, error), never one per
token: the hot path writes nothing. `TaskLog` is also the task's observer: it writes the
terminal record and reports the outcome to the task's telemetry exactly once (`_observe`).
The adapter's own records (probes) carry the same keys through `adapter_log`, with the task
ones `None`. docs/observability.md lists every record and field.

The one stdlib `logging` use: a redaction filter (`_HpackRedaction`) on hpack's logger, which
would otherwise log HTTP/2 header blocks — the key among them — at DEBUG, and on httpcore2's and
httpx2's, whose DEBUG records show response header values (an upstream may echo the key there);
and httpx2's own request line for the streamed requests that skip `AsyncClient.send`
(`log_httpx2_request`), so an application watching httpx2's logger sees every request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import httpx2
import trio
from loguru import logger as _root

from ._observe import TaskOutcome
from ._redact import redact, redact_value

if TYPE_CHECKING:
    from loguru import Logger, Record

    from ._events import End, Metrics
    from ._observe import TaskTelemetry

__all__ = [
    "ENGINE",
    "ERROR_FIELDS",
    "TASK_FIELDS",
    "TaskLog",
    "adapter_log",
    "log",
    "new_correlation_id",
]

ENGINE: Final = "openai-http"

#: The standard fields of every task record (log-fields.md), in the spec's order.
TASK_FIELDS: Final = (
    "job_id",
    "session_id",
    "correlation_id",
    "engine",
    "engine_version",
    "pool_id",
    "replica_id",
    "model",
    "api",
    "attempt",
    "tokens_in",
    "tokens_out",
    "ttft_ms",
    "decode_time_ms",
    "queue_position",
    "predicted_start_ms",
)

#: Added on error records.
ERROR_FIELDS: Final = ("error_kind", "status", "retryable", "retry_after_ms")


#: Records at this level (loguru's ERROR) and above never carry request or response headers.
_ERROR_LEVEL: Final = 40

#: What a header-like `extra` holds on an ERROR+ record instead of the headers.
HEADERS_DROPPED: Final = "(headers are not logged at ERROR or above)"


def _is_headers(name: str, value: Any) -> bool:
    return "header" in name.lower() or isinstance(
        value, httpx2.Headers | httpx2.Request | httpx2.Response
    )


def _redact_record(record: Record) -> None:
    """The patcher: runs on every record of `log`, after loguru has formatted the message.

    The message and every `extra` value are redacted (`redact_value`: a `Secret` or any value
    under a credential-like name becomes its fingerprint, other objects their redacted `str`,
    so no sink ever formats an object we did not check). On ERROR and above, an `extra` that is
    or names headers is replaced by `HEADERS_DROPPED` (OC-ADAPT-OAI-6020). An exception is
    replaced by one carrying its redacted text and no traceback: loguru's `diagnose` would print
    the frames' local variables, and a frame that built the Authorization header holds the key.
    """
    record["message"] = redact(record["message"])
    extra = record["extra"]
    error = record["level"].no >= _ERROR_LEVEL
    for key, value in extra.items():
        if error and _is_headers(key, value):
            extra[key] = HEADERS_DROPPED
        else:
            extra[key] = redact_value(value, key)
    exc = record["exception"]
    if exc is not None:
        cleaned = redact_value(exc.value) if exc.value is not None else None
        kind = type(cleaned) if cleaned is not None else exc.type
        record["exception"] = type(exc)(kind, cleaned, None)


class _HpackRedaction(logging.Filter):
    """Keeps the API key out of hpack's DEBUG records.

    h2 sends `authorization` as never-indexed and hpack logs its value as `SENSITIVE_REDACTED`
    when it encodes it, but hpack also logs every encoded block it builds ("Encoded header
    block to …") and every block it decodes ("Decoding …") — Huffman-coded bytes, decodable,
    the key among them — and each decoded header in plain text. An application that turns on
    DEBUG for everything must not leak the key that way (OC-ADAPT-OAI-6020): the two block
    records are dropped, and every other record is passed through `redact`. Filters run only
    for records the logger is enabled for, so this costs nothing while hpack is quiet.
    """

    _DROPPED: Final = frozenset({"Encoded header block to %s", "Decoding %s"})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self._DROPPED:
            return False
        text = record.getMessage()
        clean = redact(text)
        if clean != text:
            record.msg, record.args = clean, ()
        return True


_HPACK_FILTER: Final = _HpackRedaction()

#: The stdlib loggers that get the filter: hpack's, and httpcore2's and httpx2's, whose DEBUG
#: records carry response header values ("receive_response_headers.complete return_value=…"),
#: which a hostile upstream can make echo the key. A logger's filters do not apply to its
#: children's records, so each logger is named.
_FILTERED_LOGGERS: Final = (
    "hpack.hpack",
    "httpcore2.connection",
    "httpcore2.http11",
    "httpcore2.http2",
    "httpcore2.proxy",
    "httpcore2.socks",
    "httpx2",
)
for _name in _FILTERED_LOGGERS:
    if not any(isinstance(f, _HpackRedaction) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_HPACK_FILTER)


_HTTPX2_LOG: Final = logging.getLogger("httpx2")


def log_httpx2_request(
    method: str, url: httpx2.URL, http_version: str, status: int, reason: bytes
) -> None:
    """httpx2's INFO request line, as `AsyncClient.send` writes it, for a request sent straight
    to our HTTP/1.1 transport (`Upstream.h11_response`). The URL carries no key (the key is a
    header)."""
    _HTTPX2_LOG.info(
        'HTTP Request: %s %s "%s %d %s"',
        method,
        url,
        http_version,
        status,
        reason.decode("ascii", errors="ignore"),
    )


def _enabled_before_import() -> bool:
    """True when the application called `logger.enable("oai_adapter")` before importing us
    (the order docs/observability.md shows). loguru has no public way to ask, so this reads its
    activation list (loguru 0.7: most specific prefix first); if that ever moves, the answer is
    False and the import disables as before (tests/test_logging_import_order.py notices)."""
    activations = getattr(getattr(_root, "_core", None), "activation_list", ())
    for prefix, enabled in activations:
        if "oai_adapter.".startswith(prefix):
            return bool(enabled)
    return False


#: The library's logger. Disabled until the application enables "oai_adapter" — before or
#: after this import: an `enable` that came first is not undone.
log: Logger = _root.patch(_redact_record)
if not _enabled_before_import():
    _root.disable("oai_adapter")


def new_correlation_id() -> str:
    """A task's correlation id when the request names none: `uuid.uuid4().hex` (16 random
    bytes from the OS, the version and variant bits set), without the `UUID` object — a
    third of the cost (≈ 0.5 µs instead of ≈ 1.6 µs, part of every task's set-up)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # variant RFC 4122
    return raw.hex()


#: No endpoint fields (a `TaskLog` made without an endpoint: tests).
_NO_FIELDS: Final[Mapping[str, Any]] = MappingProxyType({})


class TaskLog:
    """A task's logger and observer: fixed fields bound once, changing ones given on every
    record, and the task's end reported once (a terminal record and `TaskTelemetry.end`).

    Terminal narration: `finished` (the reader made its `End`: ERROR first if it failed, then
    `ended`), `cancelled` (the consumer got `End(cancelled)`), `closed` (the `submit` block was
    left; narrates a cancel only when neither of the others happened). A cancel that arrives
    after the reader finished, while Tokens were still buffered, is narrated by both `ended`
    and `cancelled`: each is a fact, the upstream's and the consumer's.
    """

    __slots__ = (
        "_correlation_id",
        "_endpoint_fields",
        "_job_id",
        "_over",
        "_session_id",
        "_started_at",
        "_telemetry",
        "attempt",
        "decode_time_ms",
        "tokens_in",
        "tokens_out",
        "ttft_ms",
    )

    def __init__(
        self,
        *,
        started_at: float = 0.0,
        telemetry: TaskTelemetry | None = None,
        job_id: str | None = None,
        session_id: str | None = None,
        correlation_id: str | None = None,
        endpoint_fields: Mapping[str, Any] = _NO_FIELDS,
    ) -> None:
        # The fixed fields, bound into a logger only when a record is written: a bound loguru
        # logger per open task would cost ~0.5 KB each, a dict of them ~0.3 KB; the endpoint's
        # are one mapping its tasks share (docs/performance.md, memory).
        self._job_id = job_id
        self._session_id = session_id
        self._correlation_id = correlation_id
        self._endpoint_fields = endpoint_fields
        self._started_at = started_at
        self._telemetry = telemetry
        self._over = False
        self.attempt = 1
        self.tokens_in: int | None = None
        self.tokens_out = 0
        self.ttft_ms: float | None = None
        self.decode_time_ms: float | None = None

    def _fields(self) -> dict[str, Any]:
        return {
            "queue_position": None,
            "predicted_start_ms": None,
            "job_id": self._job_id,
            "session_id": self._session_id,
            "correlation_id": self._correlation_id,
            **self._endpoint_fields,
            "attempt": self.attempt,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "ttft_ms": self.ttft_ms,
            "decode_time_ms": self.decode_time_ms,
        }

    # Messages are passed pre-formatted and fields through `bind`: loguru would run
    # `str.format` on a message given keyword arguments, and an upstream's text may hold braces.
    # `depth=2` names the caller of the public method as the record's origin (module, line),
    # so a record says where in the library it was written — and the module name stays under
    # "oai_adapter", which is what `logger.enable`/`disable` match.

    def _write(self, level: str, message: str, extra: dict[str, Any]) -> None:
        log.bind(**self._fields(), **extra).opt(depth=2).log(level, message)

    def debug(self, message: str, **extra: Any) -> None:
        self._write("DEBUG", message, extra)

    def info(self, message: str, **extra: Any) -> None:
        self._write("INFO", message, extra)

    def warning(self, message: str, **extra: Any) -> None:
        self._write("WARNING", message, extra)

    def error(self, message: str, **extra: Any) -> None:
        self._write("ERROR", message, extra)

    # --- the task's end ------------------------------------------------------------------

    def finished(self, end: End, metrics: Metrics | None, duration_ms: float) -> None:
        """The reader made `end` (and `metrics` when the stream started): narrate, report."""
        self.tokens_out = end.tokens_out
        if metrics is not None:
            self.tokens_in = metrics.prompt_tokens
            self.ttft_ms = metrics.ttft_ms
            self.decode_time_ms = metrics.decode_time_ms
        info = end.error
        if info is not None:
            self._write(
                "ERROR",
                f"error {info.kind.value}"
                f"{f' (status {info.status})' if info.status is not None else ''}: {info.message}",
                {
                    "error_kind": info.kind.value,
                    "status": info.status,
                    "retryable": info.retryable,
                    "retry_after_ms": info.retry_after_ms,
                },
            )
        self._write(
            "INFO",
            f"ended (reason {end.reason}, tokens_out {end.tokens_out}, "
            f"ttft_ms {_ms(self.ttft_ms)}, decode_time_ms {_ms(self.decode_time_ms)})",
            {},
        )
        self._end(
            TaskOutcome(
                reason=end.reason,
                error_kind=info.kind.value if info is not None else None,
                duration_ms=duration_ms,
                tokens_out=end.tokens_out,
                attempts=self.attempt,
                ttft_ms=self.ttft_ms,
                decode_time_ms=self.decode_time_ms,
                prompt_tokens=self.tokens_in,
                completion_tokens=metrics.completion_tokens if metrics is not None else None,
            )
        )

    def cancelled(self, delivered: int) -> None:
        """The consumer got `End(reason="cancelled")` after `delivered` Tokens."""
        self.tokens_out = delivered
        self._write("INFO", f"cancelled ({delivered} tokens delivered before the cancel)", {})
        self._end_cancelled(delivered)

    def closed(self, delivered: int) -> None:
        """The `submit` block was left; a task that had not ended was cancelled by leaving."""
        if self._over:
            return
        self.tokens_out = delivered
        self._write(
            "INFO",
            f"cancelled (the consumer left the submit block; {delivered} tokens delivered)",
            {},
        )
        self._end_cancelled(delivered)

    def _end_cancelled(self, delivered: int) -> None:
        self._end(
            TaskOutcome(
                reason="cancelled",
                error_kind="CANCELLED",
                duration_ms=(trio.current_time() - self._started_at) * 1000.0,
                tokens_out=delivered,
                attempts=self.attempt,
            )
        )

    def _end(self, outcome: TaskOutcome) -> None:
        if self._over:
            return
        self._over = True
        telemetry, self._telemetry = self._telemetry, None
        if telemetry is not None:
            try:
                telemetry.end(outcome)
            except Exception as exc:  # a broken exporter must not break the task
                log.bind(**self._fields()).opt(exception=exc).warning(
                    "telemetry failed to record the end of the task"
                )


def adapter_log(adapter_fields: Mapping[str, Any], **extra: Any) -> Logger:
    """A logger for the adapter's own records (the probes): the task fields are all present,
    `None` where they belong to a task, so one schema serves every record of the library.
    `adapter_fields`: the fields of the endpoint (`Endpoint.log_fields()`)."""
    fields: dict[str, Any] = dict.fromkeys(TASK_FIELDS)
    fields.update(adapter_fields)
    fields.update(extra)
    return log.bind(**fields)


def _ms(value: float | None) -> str:
    return "None" if value is None else f"{value:.1f}"
