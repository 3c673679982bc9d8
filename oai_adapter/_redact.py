"""Secrets and their redaction (OC-ADAPT-OAI-6020).

`Secret` holds an API key so that it cannot be printed by mistake: `repr`, `str`, f-strings,
`%`-formatting, loguru and `json.dumps(default=str)` see `****<fp6>`, the first 6 hex digits of
the key's sha256. Serialisers that do not fall back to `str` see nothing: pickling drops the
key (what unpickles knows the fingerprint only, and an adapter refuses to open with it), and
msgspec refuses a `Secret` unless given `enc_hook=Secret.enc_hook`, which writes the
fingerprint. The value is read in one place only — `Secret.reveal()`, called where the
`Authorization` header is built (`_http.Upstream._auth_header`).

`redact(text)` rewrites anything that looks like a credential to `****<fp6>`: every live
`Secret`'s value wherever it stands (also JSON-, repr- and URL-escaped), `Bearer …` tokens,
`sk-…`/`sk-proj-…` keys, the values of `Authorization`, `api-key`, `x-api-key`, `password`…
fields, and the password of a URL's `user:password@`. It cleans log records (the patcher in
`_log`), `ErrorInfo.message` and `WorkerError` text, so an upstream that echoes the key in an
error body cannot carry it into our output. `redact_value` does the same for structured values
(log `extra`): strings are redacted, a value under a credential-like name (`api_key`,
`authorization`, `password`, …) is replaced by its fingerprint whatever it looks like, and any
other object is reduced to its redacted `str`.

What it will not rewrite: plain words ("basic usage", "the bearer of") — a standalone `Basic`
credential is only recognised after an `Authorization:` name; a key cut into pieces that are
each too short to recognise. Text is clipped only after redaction (`_errors._clip`), so a key
cut by the 500-character limit is still whole when it is replaced.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import urllib.parse
import weakref
from collections.abc import Mapping
from typing import Any, Final, NoReturn

__all__ = ["Secret", "fingerprint", "is_credential_name", "redact", "redact_value"]


def fingerprint(value: str) -> str:
    """`****` and the first 6 hex digits of the sha256 of `value`."""
    return "****" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:6]


#: Every `Secret` alive, by identity: equal Secrets (two configs with one key) are all kept,
#: so that the death of one does not stop the redaction of the other's key.
_live_lock = threading.Lock()
_live: weakref.WeakValueDictionary[int, Secret] = weakref.WeakValueDictionary()


def _escaped_forms(value: str) -> tuple[str, ...]:
    """`value` as it may stand in text: itself, JSON-escaped, repr-escaped, URL-encoded."""
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        repr(value + '"')[1:-2],  # as inside a repr that needed single quotes: \' escaped
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value, safe=""),
    }
    return tuple(sorted(forms, key=len, reverse=True))


class Secret:
    """An API key that shows only its fingerprint. Compare with `==`; read with `reveal()`."""

    __slots__ = ("__forms", "__value", "__weakref__", "fingerprint")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("api_key: must be a non-empty string")
        _check_key_characters(value)
        self.__value: str | None = value
        self.__forms: tuple[str, ...] = _escaped_forms(value)
        self.fingerprint: str = fingerprint(value)
        with _live_lock:
            _live[id(self)] = self

    def reveal(self) -> str:
        """The key itself. Call it only to build the `Authorization` header."""
        if self.__value is None:
            raise ValueError(f"api_key {self.fingerprint} was dropped when this config was pickled")
        return self.__value

    @property
    def dropped(self) -> bool:
        """True for a `Secret` that was unpickled: it knows its fingerprint, not its value."""
        return self.__value is None

    @staticmethod
    def enc_hook(obj: Any) -> Any:
        """A msgspec `enc_hook` that writes a `Secret` as its fingerprint (and any other
        read-only mapping, such as `AdapterConfig.headers`, as a dict):
        `msgspec.json.encode(config, enc_hook=Secret.enc_hook)`. Without it msgspec refuses
        to encode a `Secret` (a `TypeError` that names the type, not the value)."""
        if isinstance(obj, Secret):
            return obj.fingerprint
        if isinstance(obj, Mapping):
            return dict(obj)
        raise NotImplementedError(f"Encoding objects of type {type(obj).__name__} is unsupported")

    def __repr__(self) -> str:
        return self.fingerprint

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(self.fingerprint, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        if self.__value is None or other.__value is None:
            return self is other
        return hmac.compare_digest(self.__value.encode(), other.__value.encode())

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


def _check_key_characters(value: str) -> None:
    """Refuse a key that cannot stand in an `Authorization` header: every character must be
    visible ASCII (RFC 9110 field values are ASCII to every client we run on; a key never has a
    space). Caught here, the mistake is a `ValueError` naming the position and the character's
    code point — never the key — instead of a `UnicodeEncodeError` at the first request whose
    message holds `Bearer <key>` in clear. The usual culprit is a zero-width space or a
    non-breaking space pasted along with the key."""
    for position, ch in enumerate(value, 1):
        if "!" <= ch <= "~":
            continue
        if ch.isascii():
            raise ValueError("api_key: must not contain whitespace or control characters")
        raise ValueError(
            f"api_key: must be ASCII, but character {position} is "
            f"U+{ord(ch):04X} (pasted along with the key?)"
        )


def _dropped(fp: str) -> Secret:
    secret = Secret.__new__(Secret)
    secret._Secret__value = None  # type: ignore[attr-defined]
    secret._Secret__forms = ()  # type: ignore[attr-defined]
    secret.fingerprint = fp
    return secret


#: Field names whose value is a credential, whatever the value looks like: `Authorization`,
#: `x-api-key`, `openai_api_key`, `client_secret`, `password`, `access_token`, `cookie`…
#: (Not a bare "token": in this library a token is a piece of generated text.)
_CREDENTIAL_WORDS: Final = (
    r"(?:proxy[_-]?)?authorization|api[_-]?key|secret(?:[_-]?key)?|password|passwd"
    r"|(?:access|refresh|id|auth|api|bearer|session)[_-]?token|(?:set[_-]?)?cookie"
)
_CREDENTIAL_NAME: Final = re.compile(rf"(?:.*[_\-.])?(?:{_CREDENTIAL_WORDS})", re.IGNORECASE)


def is_credential_name(name: str) -> bool:
    """True for a field or header name whose value is a credential (`x-api-key`, …)."""
    return _CREDENTIAL_NAME.fullmatch(name) is not None


# Credentials that look like credentials. Each alternative's group `s*` is what is replaced.
_PATTERNS: Final = re.compile(
    rf"""
      (?P<bearer>(?<![A-Za-z0-9])(?-i:Bearer|BEARER)\s+)(?P<s1>[A-Za-z0-9._~+/\-]{{8,}}=*)
    | (?P<header>(?<![A-Za-z0-9])(?:{_CREDENTIAL_WORDS})
         ["']?\s*[:=]\s*["']?(?:(?:Bearer|Basic|Token)\s+)?)(?P<s2>[^\s"',;}}&]+)
    | (?P<s3>(?<![A-Za-z0-9])sk-(?:proj-|ant-|live-|test-|svcacct-|admin-)?[A-Za-z0-9_\-]{{8,}})
    | (?P<url>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://(?:[^\s/?#@:]*:)?)
         (?P<s4>[^\s/?#@]+)(?=@)
    """,
    re.IGNORECASE | re.VERBOSE,
)

#: Values after a credential name that are not credentials (`'api_key': None` in a repr).
_NOT_SECRETS: Final = frozenset({"none", "null"})


def _replace(match: re.Match[str]) -> str:
    for prefix, group in (("bearer", "s1"), ("header", "s2"), (None, "s3"), ("url", "s4")):
        secret = match.group(group)
        if secret is not None:
            if secret.startswith("****") or secret.lower() in _NOT_SECRETS:
                return match.group(0)  # already redacted, or nothing to hide
            head = match.group(prefix) if prefix else ""
            return head + fingerprint(secret)
    return match.group(0)  # pragma: no cover - one group always matches


def redact(text: str) -> str:
    """`text` with every credential in it replaced by its fingerprint."""
    if not text:
        return text
    with _live_lock:
        secrets = list(_live.values())
    for secret in secrets:
        fp = secret.fingerprint
        for form in secret._Secret__forms:  # type: ignore[attr-defined]
            if form in text:
                text = text.replace(form, fp)
    return _PATTERNS.sub(_replace, text)


def redact_value(value: Any, name: object = None) -> Any:
    """`value` redacted for a log record: strings rewritten, containers walked, `Secret`s and
    anything under a credential-like `name` fingerprinted, other objects reduced to their
    redacted `str`. `None`, bools and numbers pass as they are (unless under such a name)."""
    if isinstance(value, Secret):
        return value.fingerprint
    if isinstance(name, str) and value is not None and is_credential_name(name):
        return fingerprint(value if isinstance(value, str) else _text(value))
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            (redact(k) if isinstance(k, str) else k): redact_value(v, k) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        items = [redact_value(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, set | frozenset):
        return frozenset(redact_value(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return redact(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, BaseException):
        return _RedactedException(redact(f"{type(value).__name__}: {value}"))
    return redact(_text(value))


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


class _RedactedException(Exception):
    """Stands in for an exception whose text was redacted."""
