"""Logging: loguru, off until the application calls `logger.enable("oai_adapter")`.

Every record the library writes goes through `log`, a logger patched with `_redact_record`, so
no record can leave without redaction — not one written by a future change that forgets to
clean its message (OC-ADAPT-OAI-6020). A task's records carry every field of
`shared/spec/log-fields.md`: the fixed ones bound once per task, the changing ones filled in
on each record by `TaskLog`, so a sink can rely on every key being present.

Narration is one record per step (sent, started, retry, end, cancel, error), never one per
token: the hot path writes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import httpx2
from loguru import logger as _root

from ._redact import redact, redact_value

if TYPE_CHECKING:
    from loguru import Logger, Record

__all__ = ["ENGINE", "TASK_FIELDS", "TaskLog", "log"]

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


#: The library's logger. Disabled until the application enables "oai_adapter".
log: Logger = _root.patch(_redact_record)
_root.disable("oai_adapter")


class TaskLog:
    """A task's logger: fixed fields bound once, changing ones given on every record."""

    __slots__ = ("_log", "attempt", "decode_time_ms", "tokens_in", "tokens_out", "ttft_ms")

    def __init__(self, **fixed: Any) -> None:
        self._log = log.bind(queue_position=None, predicted_start_ms=None, **fixed)
        self.attempt = 1
        self.tokens_in: int | None = None
        self.tokens_out = 0
        self.ttft_ms: float | None = None
        self.decode_time_ms: float | None = None

    def _fields(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "ttft_ms": self.ttft_ms,
            "decode_time_ms": self.decode_time_ms,
        }

    # Messages are passed pre-formatted and fields through `bind`: loguru would run
    # `str.format` on a message given keyword arguments, and an upstream's text may hold braces.

    def debug(self, message: str, **extra: Any) -> None:
        self._log.bind(**self._fields(), **extra).opt(depth=1).debug(message)

    def info(self, message: str, **extra: Any) -> None:
        self._log.bind(**self._fields(), **extra).opt(depth=1).info(message)

    def warning(self, message: str, **extra: Any) -> None:
        self._log.bind(**self._fields(), **extra).opt(depth=1).warning(message)

    def error(self, message: str, **extra: Any) -> None:
        self._log.bind(**self._fields(), **extra).opt(depth=1).error(message)
