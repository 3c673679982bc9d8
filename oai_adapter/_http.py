"""The one place an HTTP client is built and requests leave the process.

Everything above talks to the upstream through `Upstream.open_stream()` and `Upstream.get()`.
The client is built with `trust_env=False` (no `HTTP(S)_PROXY`, `ALL_PROXY`, `NO_PROXY`,
`SSL_CERT_*` or `.netrc`), verification always on (`ca_bundle` adds a private CA; there is no
switch to turn it off), redirects never followed, and a proxy only when the config names one
(OC-ADAPT-OAI-6021). Every request's host is checked against `allowed_hosts` before a byte is
sent. The API key is read in one place: `_auth_header()`.

Timeouts: httpx2 bounds connect (`Timeouts.connect`) and each write; reads are bounded by the
adapter's own trio deadlines (first token, idle, total), which know what a parsed event is.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Final

import httpx2

from ._config import AdapterConfig
from ._errors import ErrorKind, make_error

__all__ = ["Upstream", "build_ssl_context"]

#: Headers whose value names the upstream's request id, most specific first.
REQUEST_ID_HEADERS: Final = ("x-request-id", "request-id", "x-litellm-call-id", "x-trace-id")

_USER_AGENT: Final = "oai-adapter/0.1"

#: Idle connections kept for reuse, at most. httpcore2 (2.16) walks the whole pool and polls
#: the socket of every idle connection on each request and each response close, so a pool
#: that keeps many idle connections pays O(idle) syscalls per request: 1,000 concurrent
#: streams ran at 19 k tokens/s keeping 1,000 and 44 k keeping 32 (docs/performance.md).
MAX_KEEPALIVE: Final = 32


def build_ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying context: the system store, plus `ca_bundle` when given."""
    ctx = ssl.create_default_context()
    if ca_bundle is not None:
        ctx.load_verify_locations(cafile=ca_bundle)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Upstream:
    """One endpoint: the shared client, the base URL, and the policy every request obeys."""

    def __init__(
        self, config: AdapterConfig, *, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.base_url = config.base_url
        limits = httpx2.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=min(config.max_connections, MAX_KEEPALIVE),
            keepalive_expiry=30.0,
        )
        timeout = httpx2.Timeout(
            connect=config.timeouts.connect,
            read=None,  # bounded by the adapter's trio deadlines
            write=config.timeouts.idle,
            pool=None,  # likewise: waiting for a pooled connection counts toward first_token
        )
        headers = {
            "user-agent": _USER_AGENT,
            "accept-encoding": "identity",
            **dict(config.headers),
        }
        self.client = httpx2.AsyncClient(
            verify=build_ssl_context(config.ca_bundle),
            http1=True,
            http2=config.http2,
            limits=limits,
            timeout=timeout,
            proxy=config.proxy,
            trust_env=False,
            follow_redirects=False,
            headers=headers,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def url(self, path: str) -> str:
        return self.base_url + path

    def root_url(self, path: str) -> str:
        """`path` at the server's root (`/health`, `/props`), outside the `/v1` prefix."""
        url = httpx2.URL(self.base_url)
        return str(url.copy_with(path=path, query=None))

    def _auth_header(self) -> dict[str, str]:
        key = self.config.api_key
        return {"authorization": f"Bearer {key.reveal()}"} if key is not None else {}

    def check_egress(self, url: httpx2.URL) -> None:
        """Refuse, before anything is sent, a request to a host outside `allowed_hosts`."""
        allowed = self.config.allowed_hosts or frozenset()
        if url.host not in allowed:
            raise make_error(ErrorKind.POLICY, f"host {url.host!r} is not in allowed_hosts")
        if url.scheme not in ("http", "https"):
            raise make_error(ErrorKind.POLICY, f"scheme {url.scheme!r} is not allowed")

    def build_request(
        self,
        method: str,
        url: str,
        *,
        json: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx2.Request:
        target = _parse_url(url)
        self.check_egress(target)
        hdrs: dict[str, str] = {**self._auth_header(), **(headers or {})}
        if json is not None:
            hdrs["content-type"] = "application/json"
        return self.client.build_request(method, target, content=json, headers=hdrs)

    async def send(self, request: httpx2.Request, *, stream: bool) -> httpx2.Response:
        """Send; a redirect is never followed (the caller sees the 3xx and maps it)."""
        return await self.client.send(request, stream=stream, follow_redirects=False)

    async def get(self, url: str) -> httpx2.Response:
        """A small GET (probes): the body is read in full, at most `_MAX_PROBE_BYTES`."""
        request = self.build_request("GET", url, headers={"accept": "application/json"})
        response = await self.send(request, stream=True)
        try:
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > _MAX_PROBE_BYTES:
                    break
            response._content = bytes(body[:_MAX_PROBE_BYTES])
        finally:
            await response.aclose()
        return response


_MAX_PROBE_BYTES: Final = 1 << 20


def request_id(headers: httpx2.Headers) -> str | None:
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def http_version(response: httpx2.Response) -> str:
    version = response.http_version
    return "HTTP/2" if version in ("HTTP/2", "HTTP/2.0") else version


#: Parsed URLs by their text (the endpoint, the probe paths): at most `_MAX_PARSED_URLS`.
_parsed_urls: dict[str, httpx2.URL] = {}
_MAX_PARSED_URLS: Final = 64


def _parse_url(url: str) -> httpx2.URL:
    """`httpx2.URL(url)`, parsed once per text. Every task targets the same endpoint; a `str`
    costs ≈ 12 µs to parse here and again in the client's `build_request`, a `URL` ≈ 0.5 µs.
    `httpx2.URL` is immutable, so one instance serves every request."""
    parsed = _parsed_urls.get(url)
    if parsed is None:
        parsed = httpx2.URL(url)
        if len(_parsed_urls) >= _MAX_PARSED_URLS:
            _parsed_urls.clear()  # rare (many endpoints in one process): start over
        _parsed_urls[url] = parsed
    return parsed
