"""The one place an HTTP client is built and requests leave the process.

Everything above talks to the upstream through `Upstream.open_stream()` and `Upstream.get()`.
The client is built with `trust_env=False` (no `HTTP(S)_PROXY`, `ALL_PROXY`, `NO_PROXY`,
`SSL_CERT_*` or `.netrc`), verification always on (`ca_bundle` adds a private CA; there is no
switch to turn it off; `_tls` builds the context without reading `SSL_CERT_*`), redirects
never followed, and a proxy only when the config names one
(OC-ADAPT-OAI-6021). Every request's host is checked against `allowed_hosts` before a byte is
sent. The API key is read in one place: `_auth_header()`.

HTTP/2 (`http2=True`) goes through our own transport, `_h2transport.H2Transport`, because
httpcore2's sends no RST_STREAM when a stream is closed early (docs/http2.md); HTTP/1.1 stays
on httpx2's pool. Through a configured proxy the client speaks HTTP/1.1 (our transport does no
CONNECT tunnelling, and httpcore2's HTTP/2 would not cancel). The client is entered
(`open()`), so that the transport's connection tasks live in a nursery of the adapter's block.

Timeouts: httpx2 bounds connect (`Timeouts.connect`) and each write; reads are bounded by the
adapter's own trio deadlines (first token, idle, total), which know what a parsed event is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import httpx2
import trio

from ._config import AdapterConfig, dropped_credential
from ._errors import ErrorKind, make_error
from ._h2transport import ALPN as H2_ALPN
from ._h2transport import H2Transport
from ._tls import build_ssl_context, shared_ssl_context
from ._transport import ClosingTransport

__all__ = ["Upstream", "build_ssl_context"]

#: Headers whose value names the upstream's request id, most specific first.
REQUEST_ID_HEADERS: Final = ("x-request-id", "request-id", "x-litellm-call-id", "x-trace-id")

_USER_AGENT: Final = "oai-adapter/0.1"

#: Seconds closing the client may take (as `_task.CLEANUP_GRACE`).
_CLOSE_GRACE: Final = 1.0

#: Idle connections kept for reuse, at most. httpcore2 (2.16) walks the whole pool and polls
#: the socket of every idle connection on each request and each response close, so a pool
#: that keeps many idle connections pays O(idle) syscalls per request: 1,000 concurrent
#: streams ran at 19 k tokens/s keeping 1,000 and 44 k keeping 32 (docs/performance.md).
MAX_KEEPALIVE: Final = 32


class Upstream:
    """One endpoint: the shared client, the base URL, and the policy every request obeys."""

    def __init__(
        self, config: AdapterConfig, *, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        if (dropped := dropped_credential(config)) is not None:
            raise ValueError(dropped)
        self.config = config
        self.base_url = config.base_url
        self._entered = False
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
        if transport is None and config.http2 and config.proxy is None:
            transport = H2Transport(
                ssl_context=shared_ssl_context(config.ca_bundle, alpn=H2_ALPN),
                connect_timeout=config.timeouts.connect,
                write_timeout=config.timeouts.idle,
                max_streams=config.max_connections,
                http1=ClosingTransport(  # for a TLS origin that picks HTTP/1.1 in ALPN
                    verify=shared_ssl_context(config.ca_bundle),
                    http1=True,
                    http2=False,
                    limits=limits,
                    trust_env=False,
                ),
            )
        elif transport is None:
            # HTTP/1.1, also for http2=True through a proxy: our HTTP/2 transport has no
            # CONNECT tunnel, and httpcore2's HTTP/2 sends no RST_STREAM (docs/http2.md).
            transport = ClosingTransport(
                verify=shared_ssl_context(config.ca_bundle),
                http1=True,
                http2=False,
                limits=limits,
                proxy=config.proxy,
                trust_env=False,
            )
        self.transport = transport
        self.client = httpx2.AsyncClient(
            timeout=timeout,
            trust_env=False,
            follow_redirects=False,
            headers=headers,
            transport=transport,
        )

    async def open(self) -> None:
        """Enter the client (and so its transport's nursery); `aclose()` in the same task."""
        await self.client.__aenter__()
        self._entered = True

    async def aclose(self) -> None:
        """Close the client. With our HTTP/2 transport this exits its nursery, so it runs in no
        cancel scope of its own (trio's scopes close in LIFO order); the transport bounds its
        own cleanup. Otherwise the close is shielded and bounded here."""
        entered, self._entered = self._entered, False
        if entered and isinstance(self.transport, H2Transport):
            await self.client.__aexit__(None, None, None)
            return
        with trio.move_on_after(_CLOSE_GRACE, shield=True):
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
        hdrs: dict[str, str] = dict(headers or {})
        if json is not None:
            hdrs["content-type"] = "application/json"
        request = self.client.build_request(method, target, content=json, headers=hdrs)
        # Added last, into the request's own headers (whose repr masks it): no local variable
        # of any frame holds the key, so a traceback printed with its locals cannot show it.
        request.headers.update(self._auth_header())
        return request

    async def send(self, request: httpx2.Request, *, stream: bool) -> httpx2.Response:
        """Send; a redirect is never followed (the caller sees the 3xx and maps it)."""
        return await self.client.send(request, stream=stream, follow_redirects=False)

    async def get(self, url: str) -> httpx2.Response:
        """A small GET (probes): the body is read in full, at most `_MAX_PROBE_BYTES`."""
        request = self.build_request("GET", url, headers={"accept": "application/json"})
        response = await self.send(request, stream=True)
        chunks = response.aiter_raw()
        try:
            body = bytearray()
            async for chunk in chunks:
                body += chunk
                if len(body) > _MAX_PROBE_BYTES:
                    break
            response._content = bytes(body[:_MAX_PROBE_BYTES])
        finally:
            await chunks.aclose()  # closed here, not left to the garbage collector
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
