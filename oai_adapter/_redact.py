"""Secrets and their redaction (OC-ADAPT-OAI-6020).

`Secret` holds an API key so that it cannot be printed by mistake: `repr`, `str`, f-strings,
`%`-formatting, pickling and loguru all see `****<fp6>`, the first 6 hex digits of the key's
sha256. The value is read in one place only — `Secret.reveal()`, called where the
`Authorization` header is built.

`redact(text)` rewrites anything that looks like a credential — `Bearer …`, `sk-…`/`sk-proj-…`
keys, `Authorization`/`api-key`/`x-api-key` values, and every live `Secret`'s value wherever it
stands — to `****<fp6>`. It cleans log records (the patcher in `_log`), `ErrorInfo.message` and
`WorkerError` text, so an upstream that echoes the key in an error body cannot carry it into
our output.
"""

from __future__ import annotations

import hashlib
import re
import threading
import weakref
from typing import Any, Final, NoReturn

__all__ = ["Secret", "fingerprint", "redact", "redact_value"]


def fingerprint(value: str) -> str:
    """`****` and the first 6 hex digits of the sha256 of `value`."""
    return "****" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:6]


_live_lock = threading.Lock()
_live: weakref.WeakSet[Secret] = weakref.WeakSet()


class Secret:
    """An API key that shows only its fingerprint. Compare with `==`; read with `reveal()`."""

    __slots__ = ("__value", "__weakref__", "fingerprint")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("api_key: must be a non-empty string")
        if value != value.strip() or any(ch in value for ch in "\r\n\0"):
            raise ValueError("api_key: must not contain whitespace or control characters")
        self.__value: str | None = value
        self.fingerprint: str = fingerprint(value)
        with _live_lock:
            _live.add(self)

    def reveal(self) -> str:
        """The key itself. Call it only to build the `Authorization` header."""
        if self.__value is None:
            raise ValueError(f"api_key {self.fingerprint} was dropped when this config was pickled")
        return self.__value

    def __repr__(self) -> str:
        return self.fingerprint

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(self.fingerprint, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.fingerprint == other.fingerprint and self.__value == other.__value

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling drops the key: what unpickles knows the fingerprint and nothing more.
        return (_dropped, (self.fingerprint,))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: object) -> Secret:
        return self

    def __getstate__(self) -> NoReturn:  # pragma: no cover - __reduce__ takes precedence
        raise TypeError("a Secret is not serialisable")


def _dropped(fp: str) -> Secret:
    secret = Secret.__new__(Secret)
    secret._Secret__value = None  # type: ignore[attr-defined]
    secret.fingerprint = fp
    return secret


# Credentials that look like credentials. Each pattern's group "secret" is what is replaced.
_PATTERNS: Final = re.compile(
    r"""
      (?P<bearer>\b(?:Bearer|Basic)\s+)(?P<s1>[A-Za-z0-9._~+/=\-]{4,})
    | (?P<header>\b(?:authorization|proxy-authorization|x-api-key|api-key|api_key|apikey)
         ["']?\s*[:=]\s*["']?(?:(?:Bearer|Basic)\s+)?)(?P<s2>[^\s"',;}&]{4,})
    | (?P<s3>\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{8,})
    """,
    re.IGNORECASE | re.VERBOSE,
)


def _replace(match: re.Match[str]) -> str:
    for prefix, group in (("bearer", "s1"), ("header", "s2"), (None, "s3")):
        secret = match.group(group)
        if secret is not None:
            if secret.startswith("****"):  # already redacted
                return match.group(0)
            head = match.group(prefix) if prefix else ""
            return head + fingerprint(secret)
    return match.group(0)  # pragma: no cover - one group always matches


def redact(text: str) -> str:
    """`text` with every credential in it replaced by its fingerprint."""
    if not text:
        return text
    with _live_lock:
        secrets = list(_live)
    for secret in secrets:
        value = secret._Secret__value  # type: ignore[attr-defined]
        if value and value in text:
            text = text.replace(value, secret.fingerprint)
    return _PATTERNS.sub(_replace, text)


def redact_value(value: Any) -> Any:
    """`value` redacted: strings rewritten, containers walked, `Secret`s fingerprinted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Secret):
        return value.fingerprint
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if isinstance(value, BaseException):
        return _RedactedException(redact(f"{type(value).__name__}: {value}"))
    return value


class _RedactedException(Exception):
    """Stands in for an exception whose text was redacted."""
