"""The TLS context every connection uses: verification always on, nothing from the environment.

`ssl.create_default_context()` is not used because it reads the environment: OpenSSL's
`set_default_verify_paths()` trusts whatever `SSL_CERT_FILE` / `SSL_CERT_DIR` name (an attacker
who can set one variable could then intercept the Authorization header), and
`create_default_context` also honours `SSLKEYLOGFILE`, which writes the session keys to a file.
OC-ADAPT-OAI-6021 says proxies and trust come from the config only, so the context is built by
hand from OpenSSL's *compiled-in* CA locations (the system store), the Windows certificate
store on Windows, and `ca_bundle` when given. There is no switch that turns verification off:
`check_hostname` and `CERT_REQUIRED` are set here and nowhere else.

Loading the system store takes 50–100 ms (it parses every CA of the distribution's bundle), and
every adapter needs a context per transport: a host with many replicas, or a test suite, paid it
per adapter. `shared_ssl_context` keeps one context per (`ca_bundle` file as it is now, ALPN list)
— a changed bundle file is a new key — in a small LRU. Sharing is safe because a context is not
changed after it is built: the ALPN list is part of the key and set here, and the transports set
nothing else (httpcore2 sets ALPN on every connect, to the same `["http/1.1"]` its key has).
"""

from __future__ import annotations

import os
import ssl
import sys
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

__all__ = ["build_ssl_context", "shared_ssl_context"]

#: Contexts kept by `shared_ssl_context`: a process talks to a few CA bundles, two ALPN lists.
_CACHE_SIZE: Final = 16
_cache: OrderedDict[tuple[object, ...], ssl.SSLContext] = OrderedDict()

#: Where distributions keep their CA bundle, tried when OpenSSL's compiled-in paths do not
#: exist (a Python built elsewhere, e.g. a relocatable build, has paths of its build machine).
_SYSTEM_CA_FILES: Final = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, Alpine, BSDs
)


def build_ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system store, plus `ca_bundle` when given.

    Raises `ssl.SSLError` / `OSError` when `ca_bundle` is not a readable PEM file.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_system_store(ctx)
    if ca_bundle is not None:
        ctx.load_verify_locations(cafile=ca_bundle)
    return ctx


def shared_ssl_context(
    ca_bundle: str | None = None, *, alpn: Sequence[str] = ("http/1.1",)
) -> ssl.SSLContext:
    """`build_ssl_context(ca_bundle)` with ALPN `alpn`, built once per bundle file version.

    Callers must not change the context they get (it is shared). Raises as `build_ssl_context`.
    """
    stamp: tuple[object, ...] = ()
    if ca_bundle is not None:
        st = os.stat(ca_bundle)
        stamp = (os.path.abspath(ca_bundle), st.st_mtime_ns, st.st_size, st.st_ino)
    key = (*stamp, tuple(alpn))
    ctx = _cache.get(key)
    if ctx is None:
        ctx = build_ssl_context(ca_bundle)
        ctx.set_alpn_protocols(list(alpn))
        _cache[key] = ctx
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return ctx


def _load_system_store(ctx: ssl.SSLContext) -> None:
    if sys.platform == "win32":  # pragma: no cover - not run on CI
        for store in ("CA", "ROOT"):
            for cert, encoding, trust in ssl.enum_certificates(store):  # type: ignore[attr-defined]
                if encoding == "x509_asn" and (
                    trust is True or ssl.Purpose.SERVER_AUTH.oid in trust
                ):
                    try:
                        ctx.load_verify_locations(cadata=cert)
                    except ssl.SSLError:
                        pass
        return
    paths = ssl.get_default_verify_paths()  # the `openssl_*` fields ignore the environment
    cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if cafile is None:
        cafile = next((f for f in _SYSTEM_CA_FILES if os.path.isfile(f)), None)
    if cafile is not None or capath is not None:
        ctx.load_verify_locations(cafile=cafile, capath=capath)
