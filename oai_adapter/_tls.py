"""The TLS context every connection uses: verification always on, nothing from the environment.

`ssl.create_default_context()` is not used because it reads the environment: OpenSSL's
`set_default_verify_paths()` trusts whatever `SSL_CERT_FILE` / `SSL_CERT_DIR` name (an attacker
who can set one variable could then intercept the Authorization header), and
`create_default_context` also honours `SSLKEYLOGFILE`, which writes the session keys to a file.
OC-ADAPT-OAI-6021 says proxies and trust come from the config only, so the context is built by
hand from OpenSSL's *compiled-in* CA locations (the system store), the Windows certificate
store on Windows, and `ca_bundle` when given. There is no switch that turns verification off:
`check_hostname` and `CERT_REQUIRED` are set here and nowhere else.
"""

from __future__ import annotations

import os
import ssl
import sys
from typing import Final

__all__ = ["build_ssl_context"]

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
