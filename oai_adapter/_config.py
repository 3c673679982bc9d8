"""Configuration and requests: immutable, validated on construction.

A bad value raises `ValueError` naming the field and the reason. Every timeout is finite and
positive (OC-ADAPT-OAI-6002): there is no "wait forever" setting. TLS verification has no
switch (6021); proxies come only from `proxy`; nothing is read from the environment unless
the caller asks for it with `AdapterConfig.from_env()`. Credentials live only in `api_key` (a
`Secret`): a `base_url` with `user:password@` and a credential header in `headers`
(`x-api-key`, `api-key`, `cookie`…) are refused, and `repr` redacts a proxy URL's password.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import ssl
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx2

from ._redact import Secret, is_credential_name, redact
from ._tls import shared_ssl_context

__all__ = [
    "FIELD_NAME",
    "AdapterConfig",
    "RetryPolicy",
    "TaskRequest",
    "Timeouts",
    "dropped_credential",
    "positive_finite",
]

Api = Literal["chat", "completions", "responses"]
_APIS = ("chat", "completions", "responses")

#: Header names the adapter sets itself; a caller's `headers` may not override them.
_RESERVED_HEADERS = frozenset(
    {"authorization", "content-type", "accept", "content-length", "host", "x-correlation-id"}
)


def positive_finite(owner: str, name: str, value: object, *, allow_zero: bool = False) -> None:
    """`ValueError` naming `owner.name` unless `value` is a finite number > 0 (>= 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{owner}.{name}: must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{name}: must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}.{name}: must be {bound}, got {value!r}")


class FrozenMap(Mapping[str, Any]):
    """A read-only mapping that pickles (unlike `types.MappingProxyType`)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._data,))

    def __hash__(self) -> int:
        # Hashable when its values are, so a frozen config can be a dict key or a set member.
        return hash(frozenset(self._data.items()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Seconds. `first_token`: request sent → first Token (headers included); `idle`: the
    longest wait for the next parsed event from the network; `total`: the whole task,
    retries included."""

    connect: float = 5.0
    first_token: float = 30.0
    idle: float = 30.0
    total: float = 600.0

    def __post_init__(self) -> None:
        for name in ("connect", "first_token", "idle", "total"):
            positive_finite("Timeouts", name, getattr(self, name))


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Full jitter: the delay before attempt n+1 is `uniform(0, min(cap, base·2ⁿ))`, or the
    upstream's `Retry-After` clipped to `cap`. `max_attempts` counts every attempt.

    The retry budget (`_budget.RetryBudget`, shared by every task of the adapter): over any
    `budget_window` seconds, retries may be at most `budget_percent` % of the tasks submitted in
    it plus `budget_min_per_s` per second; a retry it refuses is not made. Finagle's defaults."""

    max_attempts: int = 4
    base: float = 0.1
    cap: float = 2.0
    budget_percent: float = 20.0
    budget_window: float = 10.0
    budget_min_per_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError("RetryPolicy.max_attempts: must be an int")
        if not 1 <= self.max_attempts <= 100:
            raise ValueError(f"RetryPolicy.max_attempts: must be 1..100, got {self.max_attempts}")
        positive_finite("RetryPolicy", "base", self.base, allow_zero=True)
        positive_finite("RetryPolicy", "cap", self.cap, allow_zero=True)
        positive_finite("RetryPolicy", "budget_percent", self.budget_percent, allow_zero=True)
        positive_finite("RetryPolicy", "budget_window", self.budget_window)
        positive_finite("RetryPolicy", "budget_min_per_s", self.budget_min_per_s, allow_zero=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterConfig:
    """One OpenAI-compatible endpoint and how to talk to it."""

    base_url: str
    model: str
    api: Api = "chat"
    api_key: Secret | None = None
    headers: Mapping[str, str] = field(default_factory=FrozenMap)
    http2: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ca_bundle: str | None = None
    proxy: str | None = None
    allowed_hosts: frozenset[str] | None = None
    include_usage: bool = True
    max_connections: int = 100
    model_digest: str | None = None
    pool_id: str | None = None
    replica_id: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        url = _parse_url("base_url", self.base_url)
        set_(self, "base_url", str(url).rstrip("/"))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("AdapterConfig.model: must be a non-empty string")
        if self.api not in _APIS:
            raise ValueError(f"AdapterConfig.api: must be one of {_APIS}, got {self.api!r}")
        key: Any = self.api_key
        if isinstance(key, str):
            try:
                set_(self, "api_key", Secret(key))
            except ValueError as exc:
                raise ValueError(f"AdapterConfig.{exc}") from None
        elif key is not None and not isinstance(key, Secret):
            raise ValueError("AdapterConfig.api_key: must be a str, a Secret or None")
        set_(self, "headers", _check_headers(self.headers))
        if not isinstance(self.timeouts, Timeouts):
            raise ValueError("AdapterConfig.timeouts: must be a Timeouts")
        if not isinstance(self.retry, RetryPolicy):
            raise ValueError("AdapterConfig.retry: must be a RetryPolicy")
        if self.ca_bundle is not None:
            if not isinstance(self.ca_bundle, str) or not os.path.isfile(self.ca_bundle):
                raise ValueError(f"AdapterConfig.ca_bundle: no such file {self.ca_bundle!r}")
            try:
                shared_ssl_context(self.ca_bundle)  # validates, and warms the cache
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"AdapterConfig.ca_bundle: not a PEM file of CA certificates ({exc})"
                ) from None
        if self.proxy is not None:
            proxy = _parse_url("proxy", self.proxy, allow_credentials=True)
            set_(self, "proxy", str(proxy))
        hosts = self.allowed_hosts
        if hosts is None:
            hosts = frozenset({url.host})
        elif isinstance(hosts, str) or not isinstance(hosts, Sequence | frozenset | set):
            raise ValueError("AdapterConfig.allowed_hosts: must be a collection of host names")
        if not all(isinstance(h, str) for h in hosts):
            raise ValueError("AdapterConfig.allowed_hosts: host names must be str")
        hosts = frozenset(_normal_host(h) for h in hosts)
        if not hosts or "" in hosts:
            raise ValueError("AdapterConfig.allowed_hosts: must name at least one host")
        set_(self, "allowed_hosts", hosts)
        if url.host not in hosts:
            raise ValueError(
                f"AdapterConfig.allowed_hosts: the base_url host {url.host!r} is not allowed"
            )
        mc = self.max_connections
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
            raise ValueError(f"AdapterConfig.max_connections: must be an int >= 1, got {mc!r}")
        for name in ("model_digest", "pool_id", "replica_id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"AdapterConfig.{name}: must be a str or None")

    @classmethod
    def from_env(cls, **overrides: Any) -> AdapterConfig:
        """A config from `OPENAI_BASE_URL` and `OPENAI_API_KEY`, then `overrides`.

        The only place the environment is read; `model` must be given as an override.
        """
        values: dict[str, Any] = {}
        if base := os.environ.get("OPENAI_BASE_URL"):
            values["base_url"] = base
        if key := os.environ.get("OPENAI_API_KEY"):
            values["api_key"] = key
        values.update(overrides)
        if "base_url" not in values:
            raise ValueError("AdapterConfig.base_url: not given and OPENAI_BASE_URL is not set")
        if "model" not in values:
            raise ValueError("AdapterConfig.model: must be given")
        return cls(**values)

    @property
    def host(self) -> str:
        return httpx2.URL(self.base_url).host

    def __getstate__(self) -> list[Any]:
        # Pickling drops the credentials: the key (its `Secret` pickles as its fingerprint) and
        # a proxy URL's password (written as its fingerprint, `user:****<fp6>@host`); an
        # adapter refuses to open with either (`dropped_credential`).
        state = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return [
            redact(v) if f.name == "proxy" and v else v
            for f, v in zip(dataclasses.fields(self), state, strict=True)
        ]

    def __repr__(self) -> str:
        # `api_key` shows its fingerprint; redaction also hides a proxy URL's password.
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return redact(f"AdapterConfig({fields})")


#: A proxy password replaced by its fingerprint when its config was pickled.
_DROPPED_PASSWORD: Final = re.compile(r"\*\*\*\*[0-9a-f]{6}")


def dropped_credential(config: AdapterConfig) -> str | None:
    """Why `config` cannot be used to open an adapter — a credential dropped when it was
    pickled (the key, a proxy's password) — or None."""
    key = config.api_key
    if key is not None and key.dropped:
        return (
            f"AdapterConfig.api_key: {key} was dropped when the config was pickled; give the "
            "key again, e.g. dataclasses.replace(config, api_key=...)"
        )
    if config.proxy and _DROPPED_PASSWORD.fullmatch(httpx2.URL(config.proxy).password or ""):
        return (
            "AdapterConfig.proxy: its password was dropped when the config was pickled; give "
            "the proxy again, e.g. dataclasses.replace(config, proxy=...)"
        )
    return None


def _normal_host(name: str) -> str:
    """`name` as httpx2's `URL.host` gives a host — lower case, IDNA decoded (`xn--bcher-kva`
    → `bücher`), an IPv6 address without brackets —, the form the egress check compares, so
    an allowlist written in punycode or in Unicode matches either form of `base_url`."""
    host = name.strip().lower().strip("[]")
    if not host:
        return ""
    if any(ch.isspace() or ch in "/?#@%\\" for ch in host):
        raise ValueError(f"AdapterConfig.allowed_hosts: {name!r} is not a host name")
    try:
        return httpx2.URL(f"http://[{host}]/" if ":" in host else f"http://{host}/").host
    except Exception:
        raise ValueError(f"AdapterConfig.allowed_hosts: {name!r} is not a host name") from None


def _parse_url(name: str, value: object, *, allow_credentials: bool = False) -> httpx2.URL:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"AdapterConfig.{name}: must be a non-empty URL string")
    try:
        url = httpx2.URL(value.strip())
    except Exception as exc:
        raise ValueError(f"AdapterConfig.{name}: not a valid URL ({type(exc).__name__})") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"AdapterConfig.{name}: scheme must be http or https, got {url.scheme!r}")
    if not url.host:
        raise ValueError(f"AdapterConfig.{name}: has no host")
    if (url.username or url.password) and not allow_credentials:
        raise ValueError(
            f"AdapterConfig.{name}: must not carry credentials; give the key as api_key"
        )
    if url.query or url.fragment or "?" in value or "#" in value:
        # also an empty one (`/v1?`, `/v1#`): httpx2 keeps it, and every path joined on would
        # land in the query or fragment instead of the path
        raise ValueError(f"AdapterConfig.{name}: must not have a query or fragment")
    return url


#: An HTTP field name (RFC 9110 §5.1, `token`): what h11 and h2 accept on the wire. The one
#: pattern of it: a configured header is checked with it here, and the HTTP/1.1 transport's
#: plain request writer (`_h11transport._plain_request`) checks every header name with it.
FIELD_NAME: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN: Final = re.compile(FIELD_NAME)


def _is_field_value(value: str) -> bool:
    """True for a header value every transport can send: visible ASCII, spaces and tabs (RFC
    9110 §5.5 also allows obs-text, but httpx2 encodes values as ASCII)."""
    return all(" " <= ch <= "~" or ch == "\t" for ch in value)


def _check_headers(headers: object) -> Mapping[str, str]:
    if not isinstance(headers, Mapping):
        raise ValueError("AdapterConfig.headers: must be a mapping of str to str")
    clean: dict[str, str] = {}
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError("AdapterConfig.headers: names and values must be str")
        if not _TOKEN.fullmatch(k):
            raise ValueError(
                f"AdapterConfig.headers: {k!r} is not a header name (letters, digits and "
                "!#$%&'*+-.^_`|~ only: no spaces, no control or non-ASCII characters)"
            )
        if not _is_field_value(v):
            # the value is not echoed: a caller may keep something private in a custom header
            raise ValueError(
                f"AdapterConfig.headers: the value of {k!r} must be printable ASCII "
                "(no control or non-ASCII characters)"
            )
        if k.lower() in _RESERVED_HEADERS:
            raise ValueError(f"AdapterConfig.headers: {k!r} is set by the adapter")
        if is_credential_name(k):
            raise ValueError(
                f"AdapterConfig.headers: {k!r} carries a credential; give the key as api_key "
                "(headers are plain strings, so they would show in repr, logs and pickles)"
            )
        clean[k] = v
    return FrozenMap(clean)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRequest:
    """One completion. Exactly one of `prompt` / `messages`; `extra` is merged into the body."""

    task_id: str
    prompt: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | Sequence[str] | None = None
    seed: int | None = None
    session_id: str | None = None
    correlation_id: str | None = None
    extra: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ValueError("TaskRequest.task_id: must be a non-empty string")
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("TaskRequest: give exactly one of prompt and messages")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValueError("TaskRequest.prompt: must be a str")
        if self.messages is not None:
            if isinstance(self.messages, str | bytes) or not isinstance(self.messages, Sequence):
                raise ValueError("TaskRequest.messages: must be a list of message mappings")
            if not self.messages or not all(isinstance(m, Mapping) for m in self.messages):
                raise ValueError("TaskRequest.messages: must be a non-empty list of mappings")
            object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        mt = self.max_tokens
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise ValueError(f"TaskRequest.max_tokens: must be an int >= 1, got {mt!r}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if value is not None:
                positive_finite("TaskRequest", name, value, allow_zero=True)
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
            if not all(isinstance(s, str) and s for s in stops):
                raise ValueError("TaskRequest.stop: must be a non-empty str or a list of them")
            object.__setattr__(
                self, "stop", self.stop if isinstance(self.stop, str) else tuple(stops)
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError("TaskRequest.seed: must be an int")
        sid = self.session_id
        if sid is not None and (
            not isinstance(sid, str) or any(unicodedata.category(c) == "Cc" for c in sid)
        ):
            raise ValueError("TaskRequest.session_id: must be a str without control characters")
        cid = self.correlation_id
        if cid is not None and (not isinstance(cid, str) or not _is_field_value(cid)):
            raise ValueError(
                "TaskRequest.correlation_id: must be a str of printable ASCII characters "
                "(it is sent as the X-Correlation-Id header)"
            )
        if self.extra is not None:
            if not isinstance(self.extra, Mapping):
                raise ValueError("TaskRequest.extra: must be a mapping")
            object.__setattr__(self, "extra", FrozenMap(self.extra))
