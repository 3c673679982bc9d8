"""The one place an HTTP client is built and requests leave the process.

Everything above talks to the upstream through `Upstream.open_stream()` and `Upstream.get()`.
The client is built with `trust_env=False` (no `HTTP(S)_PROXY`, `ALL_PROXY`, `NO_PROXY`,
`SSL_CERT_*` or `.netrc`), verification always on (`ca_bundle` adds a private CA; there is no
switch to turn it off; `_tls` builds the context without reading `SSL_CERT_*`), redirects
never followed, and a proxy only when the config names one
(OC-ADAPT-OAI-6021). Every request's host is checked against `allowed_hosts` before a byte is
sent. The API key is read in one place: `_auth_header()`.

HTTP/2 (`http2=True`) goes through our own transport, `_h2transport.H2Transport`, because
httpcore2's sends no RST_STREAM when a stream is closed early (docs/http2.md); HTTP/1.1 through
our own `_h11transport.H11Transport`, whose body reads skip httpx2's and httpcore2's per-read
layers (docs/performance.md, the decode-step regime). Through a configured proxy the client
speaks HTTP/1.1 on httpx2's own transport (ours do no CONNECT tunnelling, and httpcore2's
HTTP/2 would not cancel). The client is entered
(`open()`), so that the transport's connection tasks live in a nursery of the adapter's block.

Timeouts: httpx2 bounds connect (`Timeouts.connect`) and each write; reads are bounded by the
adapter's own trio deadlines (first token, idle, total), which know what a parsed event is.

A response's whole life is here (STYLE.md 14): `open_stream()` sends and hands back an
`UpstreamResponse` (status, headers, `next_chunk()`, a bounded error-body read, a bounded drain),
and closes it, shielded and bounded, when its block is left. A caller that read the upstream's
end marker (`[DONE]`, a terminal event) calls `finish()`: when the body's end is already
here (over our HTTP/1.1 transport: parsed, buffered, or waiting on a plain socket — servers
write the terminator with or right after the end marker) the connection goes back to the pool
at once, before the caller's `End`, so a next request finds it idle. Otherwise
`keep_connection()` hands the body's tail to a background drain owned by the `Upstream` (its
nursery lives from `open()` to `aclose()`): the caller's `End` never waits for it, and the
connection still goes back to the pool when the tail comes within the drain's bounds. `aclose()` cancels
every drain still running; each closes its response within `CLOSE_GRACE`. `aclose_now()` ends
one drain early (a cancel that comes after the upstream finished).

Numbers: `CLOSE_GRACE` (1 s, from `_transport`, with its precedent) bounds every shielded close
here. `DRAIN_GRACE` (50 ms) and
`MAX_DRAIN` (64 KiB): after `[DONE]` only the chunked terminator (5 bytes) or a closing frame is
due, and it comes in the same segment on every server in FACTS.md; a server that holds the body
open (hypercorn over HTTP/2) costs its connection, not a wait. `MAX_ERROR_BODY` (64 KiB): error
bodies are a few hundred bytes (FACTS.md, "Error bodies"); `MAX_PROBE_BYTES` (1 MiB): `/models`
of a LiteLLM proxy with hundreds of models is ~100 KiB.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Protocol

import h11
import httpx2
import trio

from ._config import AdapterConfig, dropped_credential
from ._errors import ErrorKind, make_error
from ._h2transport import ALPN as H2_ALPN
from ._h2transport import CLOSE_EXTENSION, H2Transport
from ._h11transport import BODY_EXTENSION, H11Body, H11Transport, WireRequest, origin_of
from ._log import log, log_httpx2_request
from ._tls import build_ssl_context, shared_ssl_context
from ._transport import CLOSE_GRACE, ClosingTransport

__all__ = [
    "CLOSE_GRACE",
    "DRAIN_GRACE",
    "MAX_DRAIN",
    "MAX_ERROR_BODY",
    "MAX_PARSED_URLS",
    "MAX_PROBE_BYTES",
    "ClosesNow",
    "Upstream",
    "UpstreamResponse",
    "UpstreamStatistics",
    "build_ssl_context",
    "parse_url",
    "parsed_url_count",
]

#: Headers whose value names the upstream's request id, most specific first.
REQUEST_ID_HEADERS: Final = ("x-request-id", "request-id", "x-litellm-call-id", "x-trace-id")

_USER_AGENT: Final = "oai-adapter/0.1"

#: Headers httpx2 adds to a request itself (`Request._prepare`), lower case.
_AUTO_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding"})

#: The headers of a response after `forget_headers()`: empty, shared, never written.
_NO_HEADERS: Final = httpx2.Headers()

#: Seconds, and bytes, read after the stream's end marker to let the connection be reused.
DRAIN_GRACE: Final = 0.05
MAX_DRAIN: Final = 64 * 1024

#: Most bytes of an error response body read to find the upstream's message.
MAX_ERROR_BODY: Final = 64 * 1024

#: Most bytes of a probe's answer read.
MAX_PROBE_BYTES: Final = 1 << 20

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
        self._drains: trio.Nursery | None = None  # background drains, open from `open()`
        self._drains_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._draining = 0
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
                http1=_h11_transport(config),  # for a TLS origin that picks HTTP/1.1 in ALPN
            )
        elif transport is None and config.proxy is None:
            transport = _h11_transport(config)
        elif transport is None:
            # Through a proxy (also for http2=True): httpx2's own HTTP/1.1, since our transports
            # do no CONNECT tunnel and httpcore2's HTTP/2 sends no RST_STREAM (docs/http2.md).
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
        """Enter the client (and so its transport's nursery), then open the nursery that holds
        the background drains; `aclose()` in the same task (trio's scopes close LIFO)."""
        await self.client.__aenter__()
        self._entered = True
        # Entered by hand, not with `async with`: the nursery lives from the adapter's
        # `__aenter__` to its `aclose()`, two calls of the user's task, and closes before the
        # client it drains responses of.
        drains = trio.open_nursery()
        self._drains = await drains.__aenter__()
        self._drains_cm = drains

    async def aclose(self) -> None:
        """End every background drain (each closes its response, shielded and bounded), then
        close the client. With our HTTP/2 transport this exits its nursery, so it runs in no
        cancel scope of its own (trio's scopes close in LIFO order); the transport bounds its
        own cleanup. Otherwise the close is shielded and bounded here."""
        drains, drains_cm = self._drains, self._drains_cm
        self._drains = self._drains_cm = None
        if drains is not None and drains_cm is not None:
            drains.cancel_scope.cancel()
            await drains_cm.__aexit__(None, None, None)
        entered, self._entered = self._entered, False
        if entered and isinstance(self.transport, H2Transport):
            await self.client.__aexit__(None, None, None)
            return
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            await self.client.aclose()

    @property
    def draining(self) -> int:
        """Background drains running now."""
        return self._draining

    def statistics(self) -> UpstreamStatistics:
        """A snapshot: background drains running, and the transport's connections when it
        says (our HTTP/1.1 and HTTP/2 transports do; a transport given by the caller may not)."""
        connections = idle = None
        transport = self.transport
        if isinstance(transport, H11Transport):
            stats = transport.statistics()
            connections, idle = stats.connections, stats.idle
        elif isinstance(transport, ClosingTransport):
            connections, idle = transport.pool_statistics()
        elif isinstance(transport, H2Transport):
            connections = transport.statistics().connections
        return UpstreamStatistics(
            draining=self._draining, connections=connections, idle_connections=idle
        )

    def open_stream(
        self,
        url: str,
        *,
        json: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        method: str = "POST",
    ) -> StreamOpening:
        """`async with upstream.open_stream(url, json=body) as resp:` — send the request and
        hand back its response; leaving the block closes it (see the module header).

        Raises what sending raises: `WorkerError` (POLICY) for a host outside `allowed_hosts`,
        `httpx2.HTTPError` or `OSError` when no response came."""
        return StreamOpening(self, method, url, json, headers)

    def _release(self, resp: UpstreamResponse) -> bool:
        """Hand a finished response's tail to a background drain. False when no drain
        nursery is open (the caller then drains inline)."""
        drains = self._drains
        if drains is None:
            return False
        self._draining += 1  # given back in `_drain`'s finally
        drains.start_soon(self._drain, resp)
        return True

    async def _drain(self, resp: UpstreamResponse) -> None:
        try:
            with resp._drain_scope:
                await resp.drain()
        except Exception as exc:  # a background job must not break the adapter's block
            log.opt(exception=exc).debug("a background drain failed; the connection is closed")
        finally:
            self._draining -= 1
            await resp.aclose()
            resp._closed.set()

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
        target, hdrs = self._target(url, json, headers)
        pairs = self._header_pairs(target, json, hdrs) if json else None
        return self._httpx2_request(method, target, json, hdrs, pairs)

    def _httpx2_request(
        self,
        method: str,
        target: httpx2.URL,
        json: bytes | None,
        headers: dict[str, str],
        pairs: list[tuple[bytes, bytes]] | None,
    ) -> httpx2.Request:
        """httpx2's `Request`: from the `pairs` built here when there are some, else built by
        httpx2 (cookies in the jar, no body, a header httpx2 adds itself); the key last."""
        if pairs is not None and json:
            client = self.client
            request = httpx2.Request(
                method,
                target,
                headers=pairs,
                stream=httpx2.ByteStream(json),
                extensions={"timeout": client.timeout.as_dict()},
            )
            request.read()  # as httpx2 does for a body given whole: `request.content` is set
        else:
            request = self.client.build_request(method, target, content=json, headers=headers)
        # Added last, into the request's own headers (whose repr masks it): no local variable
        # of any frame holds the key, so a traceback printed with its locals cannot show it.
        request.headers.update(self._auth_header())
        return request

    def wire_request(
        self,
        method: str,
        url: str,
        *,
        json: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[httpx2.URL, WireRequest]:
        """The request `build_request` builds, as our HTTP/1.1 transport sends it — the same
        headers in the same order and the same body — without httpx2's `Request` when the
        headers are built here (≈ 1.5 KB per stream held while 1,000 streams connect at once,
        and ≈ 8 µs of the set-up: docs/performance.md); with it (then read into a
        `WireRequest`) where httpx2 would do more. The key goes into the request's own
        headers last, as in `build_request`."""
        target, hdrs = self._target(url, json, headers)
        pairs = self._header_pairs(target, json, hdrs) if json else None
        if pairs is None or not json:
            request = self._httpx2_request(method, target, json, hdrs, None)
            return target, WireRequest.of(request, request.content)
        wire = WireRequest(method, target.raw_path, pairs, json)
        wire.add_headers(self._auth_header())
        return target, wire

    def _target(
        self, url: str, json: bytes | None, headers: Mapping[str, str] | None
    ) -> tuple[httpx2.URL, dict[str, str]]:
        """The request's URL, checked against `allowed_hosts`, and its own headers."""
        target = parse_url(url)
        self.check_egress(target)
        hdrs: dict[str, str] = dict(headers or {})
        if json is not None:
            hdrs["content-type"] = "application/json"
        return target, hdrs

    def _header_pairs(
        self, target: httpx2.URL, body: bytes, headers: dict[str, str]
    ) -> list[tuple[bytes, bytes]] | None:
        """The headers `client.build_request(method, target, content=body, headers=headers)`
        builds — the same headers in the same order — in a third of its CPU (≈ 8 µs instead of
        ≈ 23 µs: httpx2 merges the headers through its generic `MutableMapping` methods, builds
        them three times and finds the missing `Content-Length` by a caught `KeyError`; part of
        every task's set-up, docs/performance.md). Its order, as httpx2's: `Host`, the client's
        headers not overridden (case-insensitively), `headers`, `Content-Length`. None, and the
        caller asks httpx2, whenever httpx2 would do more: cookies in the client's jar, or a
        `Host`, `Content-Length` or `Transfer-Encoding` header given
        (`tests/test_http_request.py` compares the two)."""
        client = self.client
        own = {name.lower() for name in headers}
        if not own.isdisjoint(_AUTO_HEADERS) or client.cookies:
            return None
        pairs: list[tuple[bytes, bytes]] = [(b"Host", target.netloc)]
        for key, value in client.headers.raw:
            name = key.lower().decode("latin-1")
            if name in _AUTO_HEADERS:
                return None
            if name not in own:
                pairs.append((key, value))
        pairs.extend((k.encode("ascii"), v.encode("ascii")) for k, v in headers.items())
        pairs.append((b"Content-Length", b"%d" % len(body)))
        return pairs

    async def send(self, request: httpx2.Request, *, stream: bool) -> httpx2.Response:
        """Send through httpx2; a redirect is never followed (the caller sees the 3xx and maps
        it)."""
        return await self.client.send(request, stream=stream, follow_redirects=False)

    def h11_response(
        self, method: str, target: httpx2.URL, head: h11.Response, body: H11Body
    ) -> UpstreamResponse:
        """The response of a request sent straight to our HTTP/1.1 transport, without httpx2's
        send layers (auth and redirect generators, the byte-counting stream wrapper, its
        `Request` and `Response`: ≈ 4 coroutine frames and 2 KB per stream while it connects,
        and part of the set-up CPU, docs/performance.md). Kept from httpx2's
        `AsyncClient._send_single_request`: the cookie jar (only when the response sets a
        cookie: then httpx2's objects are built for it) and httpx2's request line on its logger."""
        headers = httpx2.Headers(head.headers.raw_items())
        if "set-cookie" in headers:
            self.client.cookies.extract_cookies(
                httpx2.Response(
                    head.status_code, headers=headers, request=httpx2.Request(method, target)
                )
            )
        log_httpx2_request(method, target, "HTTP/1.1", head.status_code, head.reason)
        return UpstreamResponse(self, head.status_code, headers, "HTTP/1.1", body=body)

    async def get(self, url: str) -> tuple[int, httpx2.Headers, bytes]:
        """A small GET (probes): status, headers and the body, at most `MAX_PROBE_BYTES`."""
        async with self.open_stream(
            url, method="GET", headers={"accept": "application/json"}
        ) as resp:
            body = await resp.read_body(MAX_PROBE_BYTES, errors=True)
            return resp.status, resp.headers, body


class ClosesNow(Protocol):
    """A synchronous close: a response's (`UpstreamResponse`, which `TaskState.stop()` closes),
    and its HTTP/2 stream's (`_h2connection.ResponseBody`)."""

    def close_now(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class UpstreamStatistics:
    """A snapshot of an `Upstream`: background drains running, and the transport's pooled
    connections (`None` when the transport does not say; `idle_connections` is HTTP/1.1's)."""

    draining: int
    connections: int | None
    idle_connections: int | None


class StreamOpening:
    """What `Upstream.open_stream()` returns: an async context manager (see there)."""

    __slots__ = ("_headers", "_json", "_method", "_resp", "_upstream", "_url")

    def __init__(
        self,
        upstream: Upstream,
        method: str,
        url: str,
        json: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        self._upstream = upstream
        self._method = method
        self._url = url
        self._json = json
        self._headers = headers
        self._resp: UpstreamResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        upstream, method = self._upstream, self._method
        json, headers = self._json, self._headers
        self._json = self._headers = None  # the request has them; the block may last long
        transport = upstream.transport
        if type(transport) is not H11Transport:
            request = upstream.build_request(method, self._url, json=json, headers=headers)
            response = await upstream.send(request, stream=True)
            self._resp = resp = UpstreamResponse.of(response, upstream)
            return resp
        # Straight to our HTTP/1.1 transport (`Upstream.h11_response`), here rather than in a
        # method: every stream waits for its head on this stack, a frame less.
        target, wire = upstream.wire_request(method, self._url, json=json, headers=headers)
        try:
            head, body = await transport.open(origin_of(target), wire)
        except httpx2.RequestError as exc:
            exc.request = httpx2.Request(method, target)  # as httpx2 sets it: the error's host
            raise
        self._resp = resp = upstream.h11_response(method, target, head, body)
        return resp

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        resp, self._resp = self._resp, None
        if resp is None:
            return
        if resp.released:
            return  # a background drain has it, and closes it
        # `keep_connection(in_background=False)` asked for the tail: read it unless the block
        # is being cancelled (a `Cancelled` or another BaseException: close at once).
        if resp.keep and not resp.ended and (exc is None or isinstance(exc, Exception)):
            try:
                await resp.drain()
            finally:
                await resp.aclose()
            return
        await resp.aclose()


class UpstreamResponse:
    """One response, open: `status`, `headers`, `http_version`, `request_id`, and its body
    read raw, chunk by chunk, with `next_chunk()` (or `async for`). Reads raise what the
    transport raises (`httpx2.HTTPError`, `OSError`); the caller maps them, since only it knows
    whether the stream had started."""

    __slots__ = (
        "_body",
        "_chunks",
        "_closed",
        "_closer",
        "_drain_scope",
        "_ended",
        "_next",
        "_response",
        "_upstream",
        "headers",
        "http_version",
        "keep",
        "receive",
        "released",
        "request_id",
        "status",
    )

    _drain_scope: trio.CancelScope  # both set by `keep_connection()` before a background drain
    _closed: trio.Event

    def __init__(
        self,
        upstream: Upstream,
        status: int,
        headers: httpx2.Headers,
        version: str,
        *,
        body: H11Body | None = None,
        response: httpx2.Response | None = None,
        closer: ClosesNow | None = None,
    ) -> None:
        """Over our HTTP/1.1 transport, its `body`; else httpx2's `response`, read through it,
        and over our HTTP/2 transport its stream's `closer` (`close_now()`)."""
        self._upstream = upstream
        self.status = status
        self.headers: httpx2.Headers = headers
        self.http_version = version
        self.request_id = request_id(headers)
        self._body: H11Body | None = body
        self._closer = closer
        self._chunks: AsyncIterator[bytes] | None = None
        #: `await resp.receive()`: the body bytes of the next network read, `b""` at its end.
        #: Over our HTTP/1.1 transport it is the transport's own read (no httpx2 layers).
        self.receive: Callable[[], Awaitable[bytes]]
        # Over our HTTP/1.1 transport the body is all a running stream needs: httpx2's
        # `Response` and the `Request` it holds (≈ 2 KB with their headers, docs/performance.md)
        # are not kept; the body's `aclose()` closes it. Otherwise the response is closed.
        self._response: httpx2.Response | None = None
        if body is not None:
            self.receive = body.receive_some
        else:
            assert response is not None
            self._response = response
            self._chunks = chunks = response.aiter_raw()
            self._next = chunks.__anext__
            self.receive = self._receive_iterated
        self._ended = False
        self.keep = False  # drain when the block is left: `keep_connection(in_background=False)`
        self.released = False  # handed to a background drain: `keep_connection()`

    @classmethod
    def of(cls, response: httpx2.Response, upstream: Upstream) -> UpstreamResponse:
        """An httpx2 response; one of our HTTP/1.1 transport's (HTTP/2's fallback) is read
        through its body, and httpx2's objects are not kept."""
        body = response.extensions.get(BODY_EXTENSION)
        return cls(
            upstream,
            response.status_code,
            response.headers,
            http_version(response),
            body=body,
            response=None if body is not None else response,
            closer=response.extensions.get(CLOSE_EXTENSION),
        )

    def forget_headers(self) -> None:
        """The caller has read what it needs of the head (a stream, once accepted): the
        headers are not kept for the body's life (≈ 1 KB with h11's parsed values,
        docs/performance.md, memory). `headers` is empty afterwards."""
        self.headers = _NO_HEADERS

    @property
    def ended(self) -> bool:
        """The body was read to its end (over our HTTP/1.1 transport: its end was parsed,
        possibly with the last bytes `receive()` returned)."""
        body = self._body
        return body.complete if body is not None else self._ended

    async def _receive_iterated(self) -> bytes:
        try:
            return await self._next()
        except StopAsyncIteration:
            self._ended = True
            return b""

    async def next_chunk(self) -> bytes | None:
        """The next network read of the body, `None` at its end."""
        return await self.receive() or None

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def finish(self) -> None:
        """The upstream said it finished: give the connection back to the pool now when the
        body's end is already here (over our HTTP/1.1 transport: parsed, buffered, or waiting
        on the socket — the usual case, since servers write the terminator with or right after
        the end marker), so the caller's next request finds it idle; else `keep_connection()`
        (a background drain). Never waits for a server that holds the body open."""
        body = self._body
        if body is not None and await body.end_if_here(MAX_DRAIN):
            await self.aclose()
            return
        self.keep_connection()

    def keep_connection(self, *, in_background: bool = True) -> None:
        """The upstream said it finished: read the body's tail so the connection goes back to
        the pool instead of being closed. By default a background drain of the `Upstream` takes
        the response now (do not read it afterwards; the block's exit does not wait for it);
        with `in_background=False` (or when the `Upstream` has no drain nursery), the block's
        exit drains it, bounded by `DRAIN_GRACE`, if it is left without an exception."""
        if self.ended or self.released or self.keep:
            return
        if in_background:
            self._drain_scope = trio.CancelScope()
            self._closed = trio.Event()
            if self._upstream._release(self):
                self.released = True
                return
        self.keep = True

    def close_now(self) -> bool:
        """Close the response at once, synchronously, for a cancel (`TaskState.stop()`): over
        HTTP/1.1 its connection is closed, so the upstream sees the close when `cancel()`
        returns, not after the reader has unwound; over our HTTP/2 its stream is released, its
        RST_STREAM queued for the connection's writer. True when the response holds nothing
        afterwards; False when only an awaited close can end it (httpx2's transport, a
        background drain's response), and the reader's own close does."""
        if self.released:
            return False
        body = self._body
        if body is not None:
            return body.close_now()
        closer = self._closer
        return closer is not None and closer.close_now()

    async def aclose_now(self) -> None:
        """Close the response now: a background drain of it is cancelled and waited for
        (its close is bounded by `CLOSE_GRACE`). A cancel after the upstream finished uses it,
        so the response is closed by the time the cancel's `End` is read."""
        if self.released:
            self._drain_scope.cancel()
            await self._closed.wait()
        else:
            await self.aclose()

    async def read_body(self, limit: int = MAX_ERROR_BODY, *, errors: bool = True) -> bytes:
        """The rest of the body, at most `limit` bytes. With `errors` (the default) a transport
        error ends the read with what came before it; without, it is raised."""
        body = bytearray()
        try:
            while len(body) < limit:
                chunk = await self.next_chunk()
                if chunk is None:
                    break
                body += chunk
        except (httpx2.HTTPError, OSError):
            if not errors:
                raise
        return bytes(body[:limit])

    async def drain(self, grace: float = DRAIN_GRACE, limit: int = MAX_DRAIN) -> bool:
        """Read and drop what is left of the body, within `grace` seconds and `limit` bytes.
        True when the body ended (the connection can be reused)."""
        drained = 0
        with trio.move_on_after(grace):
            try:
                while (chunk := await self.next_chunk()) is not None:
                    drained += len(chunk)
                    if drained > limit:
                        return False
            except (httpx2.HTTPError, OSError):
                return False
        return self.ended

    async def aclose(self) -> None:
        """Close the body's reader and the response, shielded and bounded by `CLOSE_GRACE`."""
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            try:
                if self._chunks is not None:
                    await self._chunks.aclose()  # type: ignore[attr-defined]
                if self._response is not None:
                    await self._response.aclose()
                elif self._body is not None:
                    await self._body.aclose()
            except (httpx2.HTTPError, OSError):
                pass


def _h11_transport(config: AdapterConfig) -> H11Transport:
    """Our HTTP/1.1 transport for a direct (non-proxied) origin, pooled as httpx2's would be."""
    return H11Transport(
        ssl_context=shared_ssl_context(config.ca_bundle),
        connect_timeout=config.timeouts.connect,
        write_timeout=config.timeouts.idle,
        max_connections=config.max_connections,
        max_keepalive=min(config.max_connections, MAX_KEEPALIVE),
        keepalive_expiry=30.0,
    )


def request_id(headers: httpx2.Headers) -> str | None:
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def http_version(response: httpx2.Response) -> str:
    version = response.http_version
    return "HTTP/2" if version in ("HTTP/2", "HTTP/2.0") else version


#: Parsed URLs by their text (the endpoint, the probe paths): at most `MAX_PARSED_URLS`.
_parsed_urls: dict[str, httpx2.URL] = {}
MAX_PARSED_URLS: Final = 64


def parsed_url_count() -> int:
    """URLs in the parse cache now (at most `MAX_PARSED_URLS`)."""
    return len(_parsed_urls)


def parse_url(url: str) -> httpx2.URL:
    """`httpx2.URL(url)`, parsed once per text. Every task targets the same endpoint; a `str`
    costs ≈ 12 µs to parse here and again in the client's `build_request`, a `URL` ≈ 0.5 µs.
    `httpx2.URL` is immutable, so one instance serves every request."""
    parsed = _parsed_urls.get(url)
    if parsed is None:
        parsed = httpx2.URL(url)
        if len(_parsed_urls) >= MAX_PARSED_URLS:
            _parsed_urls.clear()  # rare (many endpoints in one process): start over
        _parsed_urls[url] = parsed
    return parsed
