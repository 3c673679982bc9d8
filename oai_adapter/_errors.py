"""The one error table: upstream status codes, stream failures and transport faults → `ErrorKind`.

Every failure the adapter reports is a `WorkerError` (raised) or an `ErrorInfo` (carried by
`End`). Both come from here, so the mapping from a cause to a kind, and from a kind to "worth
retrying", lives in exactly one place (DESIGN.md, "Errors").

    Exception
    └── WorkerError(kind, message, status, retryable, retry_after_ms)
         our side ─── INVALID_PARAMS (a 4xx: the request was wrong), POLICY (egress, TLS,
         │            redirect), CANCELLED
         └ upstream ─ UPSTREAM_AUTH, UPSTREAM_NOT_FOUND, ADMISSION_REJECT, POOL_UNAVAILABLE,
                      UPSTREAM_ERROR, WORKER_RESET, DECODE_TIMEOUT, DEADLINE_UNMET, PROTOCOL

Messages pass through `redact()` before they are stored: an upstream that echoes the API key
in its error body does not get it into our output (OC-ADAPT-OAI-6020).
"""

from __future__ import annotations

import enum
import ssl
from typing import TYPE_CHECKING, Any, Final, TypeVar

import httpx2
import msgspec

from ._redact import redact

if TYPE_CHECKING:
    from ._config import Timeouts


class ErrorKind(enum.StrEnum):
    """The orchestrator's error codes."""

    INVALID_PARAMS = "INVALID_PARAMS"
    UPSTREAM_AUTH = "UPSTREAM_AUTH"
    UPSTREAM_NOT_FOUND = "UPSTREAM_NOT_FOUND"
    ADMISSION_REJECT = "ADMISSION_REJECT"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    WORKER_RESET = "WORKER_RESET"
    DECODE_TIMEOUT = "DECODE_TIMEOUT"
    DEADLINE_UNMET = "DEADLINE_UNMET"
    PROTOCOL = "PROTOCOL"
    POLICY = "POLICY"
    CANCELLED = "CANCELLED"


#: Kinds worth trying again (later, or as another attempt before `Started`).
RETRYABLE: Final = frozenset({ErrorKind.ADMISSION_REJECT, ErrorKind.POOL_UNAVAILABLE})

#: Longest upstream message kept in an `ErrorInfo` (a 404 may be a whole HTML page).
MAX_MESSAGE_CHARS: Final = 500


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What went wrong, carried by `End(reason="error")`."""

    kind: ErrorKind
    message: str
    status: int | None = None
    retryable: bool = False
    retry_after_ms: int | None = None

    def __post_init__(self) -> None:
        # Also when built or decoded by a caller: a message never carries a secret.
        cleaned = redact(self.message)
        if cleaned != self.message:
            msgspec.structs.force_setattr(self, "message", cleaned)

    def to_exception(self) -> WorkerError:
        return WorkerError(
            self.kind,
            self.message,
            status=self.status,
            retryable=self.retryable,
            retry_after_ms=self.retry_after_ms,
        )


class WorkerError(Exception):
    """A failure of a worker call, with the orchestrator's error kind."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retryable: bool | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        self.kind = ErrorKind(kind)
        self.message = redact(message)
        self.status = status
        self.retryable = self.kind in RETRYABLE if retryable is None else retryable
        self.retry_after_ms = retry_after_ms
        super().__init__(self.message)

    def __str__(self) -> str:
        status = f" (status {self.status})" if self.status is not None else ""
        return f"{self.kind.value}{status}: {self.message}"

    def __repr__(self) -> str:
        return f"WorkerError({self.kind.value!r}, {self.message!r}, status={self.status!r})"

    def info(self) -> ErrorInfo:
        return ErrorInfo(
            kind=self.kind,
            message=self.message,
            status=self.status,
            retryable=self.retryable,
            retry_after_ms=self.retry_after_ms,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as `cls(*args)`; ours has keyword-only fields, so say them all
        # (an orchestrator may send a task's error to another process).
        return (_rebuild, (self.info(),))


class ProtocolError(ValueError):
    """The upstream sent bytes that are not the event stream we expect (a sans-IO mapper's
    complaint; the reader turns it into `ErrorKind.PROTOCOL`)."""


def _rebuild(info: ErrorInfo) -> WorkerError:
    return info.to_exception()


def make_error(
    kind: ErrorKind,
    message: str,
    *,
    status: int | None = None,
    retry_after_ms: int | None = None,
) -> WorkerError:
    """A `WorkerError` whose `retryable` follows the table."""
    return WorkerError(kind, message, status=status, retry_after_ms=retry_after_ms)


# ---------------------------------------------------------------------------------------------
# Status codes and upstream error bodies
# ---------------------------------------------------------------------------------------------

_STATUS_KIND: Final[dict[int, ErrorKind]] = {
    401: ErrorKind.UPSTREAM_AUTH,
    403: ErrorKind.UPSTREAM_AUTH,
    404: ErrorKind.UPSTREAM_NOT_FOUND,
    408: ErrorKind.POOL_UNAVAILABLE,
    429: ErrorKind.ADMISSION_REJECT,
    502: ErrorKind.POOL_UNAVAILABLE,
    503: ErrorKind.POOL_UNAVAILABLE,
    504: ErrorKind.POOL_UNAVAILABLE,
}

#: Error `type`/`code` strings that stand for a status (servers that send a rate limit as
#: `200` + an error event, FACTS.md "Streams").
_CODE_KIND: Final[dict[str, ErrorKind]] = {
    "model_not_found": ErrorKind.UPSTREAM_NOT_FOUND,
    "rate_limit_error": ErrorKind.ADMISSION_REJECT,
    "rate_limit_exceeded": ErrorKind.ADMISSION_REJECT,
    "too_many_requests": ErrorKind.ADMISSION_REJECT,
    "overloaded": ErrorKind.POOL_UNAVAILABLE,
    "overloaded_error": ErrorKind.POOL_UNAVAILABLE,
    "unavailable_error": ErrorKind.POOL_UNAVAILABLE,
    "service_unavailable": ErrorKind.POOL_UNAVAILABLE,
    "server_overloaded": ErrorKind.POOL_UNAVAILABLE,
    "invalid_api_key": ErrorKind.UPSTREAM_AUTH,
    "authentication_error": ErrorKind.UPSTREAM_AUTH,
    "permission_error": ErrorKind.UPSTREAM_AUTH,
    "invalid_request_error": ErrorKind.INVALID_PARAMS,
    "context_length_exceeded": ErrorKind.INVALID_PARAMS,
}


def kind_for_status(status: int) -> ErrorKind:
    """DESIGN's table, for an HTTP status that is not a 2xx."""
    if status in _STATUS_KIND:
        return _STATUS_KIND[status]
    if 300 <= status < 400:
        return ErrorKind.POLICY
    if 400 <= status < 500:
        return ErrorKind.INVALID_PARAMS
    return ErrorKind.UPSTREAM_ERROR


def _status_code(code: object) -> int | None:
    """An HTTP status given as an error `code`: an int, or digits in a string (LiteLLM writes
    `"code": "500"`)."""
    if isinstance(code, str) and code.isascii() and code.isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 100 <= code < 600:
        return code
    return None


def kind_for_code(*codes: object) -> ErrorKind | None:
    """The kind an upstream error `code` or `type` names, if it names one we know."""
    for code in codes:
        if (status := _status_code(code)) is not None and status >= 300:
            return kind_for_status(status)
        if isinstance(code, str) and code.lower() in _CODE_KIND:
            return _CODE_KIND[code.lower()]
    return None


class ErrorBody(msgspec.Struct, gc=False):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class _ErrorEnvelope(msgspec.Struct, gc=False):
    error: ErrorBody | str | None = None
    detail: str | None = None
    message: str | None = None


_error_decoder: Final = msgspec.json.Decoder(_ErrorEnvelope)


def _parse_error_body(body: bytes) -> tuple[str, ErrorBody | None]:
    """The upstream's message and error object, from JSON, an SSE error frame or plain text."""
    text = body.strip()
    if text.startswith(b"data:"):  # LiteLLM answers some 500s with an SSE error frame
        text = text.split(b"\n", 1)[0][5:].strip()
    try:
        envelope = _error_decoder.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # RecursionError: msgspec's answer to JSON nested ~2,000 deep (FACTS.md)
        return body.decode("utf-8", "replace").strip(), None
    if isinstance(envelope.error, ErrorBody):
        return envelope.error.message or envelope.error.type or "", envelope.error
    if isinstance(envelope.error, str):
        return envelope.error, None
    return envelope.detail or envelope.message or "", None


def error_from_status(
    status: int, body: bytes = b"", *, retry_after_ms: int | None = None
) -> WorkerError:
    """The error for a non-2xx response, its kind from the status and the body's error `code`."""
    message, err = _parse_error_body(body)
    kind = kind_for_status(status)
    if err is not None and kind_for_code(err.code) is ErrorKind.UPSTREAM_NOT_FOUND:
        kind = ErrorKind.UPSTREAM_NOT_FOUND
    if 300 <= status < 400:
        message = "redirects are never followed" + (f": {message}" if message else "")
    message = _clip(message) or f"HTTP {status}"
    return make_error(kind, message, status=status, retry_after_ms=retry_after_ms)


def error_from_event(
    payload: ErrorBody | None, *, first: bool, fallback_message: str = ""
) -> WorkerError:
    """The error for an error event inside a 2xx stream.

    As the *first* event it stands for the status it names (a rate limit sent as `200` + an
    error event is an `ADMISSION_REJECT`, retried like a 429); after `Started` it is always an
    `UPSTREAM_ERROR` (DESIGN.md, "Retries").
    """
    code = payload.code if payload is not None else None
    etype = payload.type if payload is not None else None
    message = _clip((payload.message if payload is not None else None) or fallback_message)
    message = message or f"error event from upstream ({etype or code or 'no detail'})"
    status = _status_code(code)
    kind = kind_for_code(etype, code) if first else None
    return make_error(kind or ErrorKind.UPSTREAM_ERROR, message, status=status)


def _clip(message: str) -> str:
    # Redact before clipping: a key cut in two by the limit would no longer be recognised.
    message = " ".join(redact(message).split())
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return message


# ---------------------------------------------------------------------------------------------
# Transport exceptions — mapped here and nowhere else
# ---------------------------------------------------------------------------------------------


def error_from_transport(
    exc: BaseException, *, after_headers: bool, timeouts: Timeouts | None = None
) -> WorkerError:
    """The error for an exception raised by the HTTP client.

    Before the response headers a lost connection means the pool could not serve us
    (`POOL_UNAVAILABLE`, retried); after them it is a `WORKER_RESET` (never retried).
    `timeouts`, when given, names the value of a timeout that fired in the message.

    TLS failures are `POLICY` and never retried (the configuration must change): a certificate
    that does not verify says why (expired, another host, an unknown CA, self-signed — from
    OpenSSL's `verify_code`), and a handshake that fails while connecting says so; a server that
    answers a ClientHello with something that is not TLS, or closes the connection on it,
    is a plain-HTTP port behind an `https://` URL (FACTS.md: retrying cannot help).
    """
    if (cert_error := _cert_failure(exc)) is not None:
        return make_error(
            ErrorKind.POLICY,
            f"TLS verification failed{_where(exc, ' for ')}: the upstream's certificate was "
            f"not trusted: {cert_error}",
        )
    if not after_headers and isinstance(exc, httpx2.ConnectError):
        if (tls := _in_chain(exc, ssl.SSLError)) is not None:
            return make_error(ErrorKind.POLICY, _handshake_message(tls, _where(exc, " at ")))
    if isinstance(exc, httpx2.UnsupportedProtocol | httpx2.InvalidURL):
        return make_error(ErrorKind.POLICY, f"unsupported URL: {_name(exc)}")
    if isinstance(exc, httpx2.ProxyError):
        return make_error(ErrorKind.POOL_UNAVAILABLE, f"proxy failed: {_name(exc)}")
    if after_headers:
        return make_error(
            ErrorKind.WORKER_RESET, f"connection lost during the stream ({_name(exc)})"
        )
    if isinstance(exc, httpx2.ConnectTimeout):
        within = f" within {timeouts.connect:g} s" if timeouts is not None else ""
        return make_error(ErrorKind.POOL_UNAVAILABLE, f"connect timeout: no connection{within}")
    if isinstance(exc, httpx2.WriteTimeout):
        within = f" within {timeouts.idle:g} s (idle)" if timeouts is not None else ""
        return make_error(
            ErrorKind.POOL_UNAVAILABLE, f"write timeout: the request was not sent{within}"
        )
    if isinstance(exc, httpx2.ConnectError):
        return make_error(ErrorKind.POOL_UNAVAILABLE, f"connect failed ({_name(exc)})")
    return make_error(
        ErrorKind.POOL_UNAVAILABLE, f"connection lost before the response ({_name(exc)})"
    )


def compressed_stream_error(content_encoding: str | None, status: int) -> WorkerError | None:
    """`PROTOCOL` when a 2xx event stream came with a `content-encoding` other than identity.

    The adapter asks for `accept-encoding: identity` and does not decode: an SSE body is small
    text read as it arrives, a compressing proxy also buffers it (tokens arrive late, in
    bursts), and a decoder would need its own bound against a decompression bomb. Refusing
    with the reason beats the alternative seen before — gzip bytes fed to the SSE parser, which
    finds no event and ends as a `WORKER_RESET` "closed the stream before any event".
    """
    if content_encoding is None:
        return None
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    return make_error(
        ErrorKind.PROTOCOL,
        f"the upstream compressed the event stream (content-encoding: {_clip(encoding)}) "
        "although the adapter asked for identity; turn compression off for this route",
        status=status,
    )


#: OpenSSL's X509_V_ERR_* codes (`SSLCertVerificationError.verify_code`) → what a person
#: needs to know. The rest are named by OpenSSL's own `verify_message`.
_VERIFY_REASONS: Final[dict[int, str]] = {
    2: "it was issued by an unknown CA (not in the system store or ca_bundle)",
    7: "its signature is invalid",
    9: "it is not valid yet",
    10: "it has expired",
    18: "it is self-signed (give it as ca_bundle to trust it)",
    19: "its chain ends in a self-signed CA that is not trusted (add the CA with ca_bundle)",
    20: "it was issued by an unknown CA (not in the system store or ca_bundle)",
    21: "it was issued by an unknown CA (not in the system store or ca_bundle)",
    23: "it has been revoked",
    26: "it is not meant for a TLS server",
    62: "it was issued for another host (hostname mismatch)",
    64: "it was issued for another IP address (IP address mismatch)",
}

#: `ssl.SSLError.reason` values that mean the peer does not speak TLS at all: OpenSSL read an
#: HTTP response (or nothing) where a ServerHello was due.
_NOT_TLS: Final = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "UNEXPECTED_EOF_WHILE_READING",
    }
)


_E = TypeVar("_E", bound=BaseException)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes (`__cause__`, else `__context__`), outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _in_chain(exc: BaseException, cls: type[_E]) -> _E | None:
    return next((e for e in _chain(exc) if isinstance(e, cls)), None)


def _cert_failure(exc: BaseException) -> str | None:
    """Why the certificate did not verify, if that is what `exc` is about."""
    cert = _in_chain(exc, ssl.SSLCertVerificationError)
    if cert is not None:
        code = getattr(cert, "verify_code", None)
        detail = str(getattr(cert, "verify_message", "") or "").strip()
        reason = _VERIFY_REASONS.get(code) if isinstance(code, int) else None
        if reason is None:
            return detail or "it did not verify"
        return f"{reason} (OpenSSL: {detail})" if detail else reason
    if any("CERTIFICATE_VERIFY_FAILED" in str(e) for e in _chain(exc)):
        return "it did not verify"
    return None


def _handshake_message(tls: ssl.SSLError, where: str) -> str:
    reason = getattr(tls, "reason", None)
    if isinstance(tls, ssl.SSLEOFError | ssl.SSLZeroReturnError) or reason in _NOT_TLS:
        return (
            f"TLS handshake failed: the server{where} does not speak TLS (plain HTTP? then "
            "base_url should start with http://)"
        )
    return f"TLS handshake failed{where}: {_clip(str(tls)) or type(tls).__name__}"


def _where(exc: BaseException, prefix: str) -> str:
    """`prefix` + `host:port` of the request `exc` belongs to, or "" when it is not known."""
    try:
        url = exc.request.url  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # httpx2 raises RuntimeError when it was not set
        return ""
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{prefix}{url.host}:{port}"


def _name(exc: BaseException) -> str:
    """`Type: message`; an empty message, or one that ends in a colon, is completed by the
    first cause that has one (a wrapper such as `connect … failed:` around an exception whose
    own text is empty must not end the message at the colon)."""
    detail = str(exc).strip()
    if not detail or detail.endswith(":"):
        inner = next((str(e).strip() for e in _chain(exc)[1:] if str(e).strip()), "")
        detail = f"{detail} {inner}".strip() if inner else detail.rstrip(":")
    if (root := _os_reason(exc)) and root not in detail:
        detail = f"{detail}: {root}" if detail else root
    return f"{type(exc).__name__}: {_clip(detail)}" if detail else type(exc).__name__


def _os_reason(exc: BaseException) -> str | None:
    """The operating system's words for the failure under `exc` (`Connection refused`, `Name
    or service not known`): the `strerror` of the first `OSError` in its chain, looking into
    the group trio raises when every address of a host failed."""
    for link in _chain(exc):
        while isinstance(link, BaseExceptionGroup) and link.exceptions:
            link = link.exceptions[0]
        if isinstance(link, OSError) and link.strerror:
            return str(link.strerror)
    return None
