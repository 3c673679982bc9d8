"""OC-ADAPT-OAI-6003: the adapter exposes no endpoint. The library opens no listening socket
(only `oai_adapter.testing`, the test upstream, does — and it binds 127.0.0.1).

One module makes a raw socket: `_connect.py`, which connects to an IP address without trio's
happy eyeballs. It is read for what a listener needs instead (bind, listen, accept), and its
socket must be connected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import oai_adapter
from oai_adapter.testing import FakeUpstream

LIBRARY = Path(oai_adapter.__file__).parent
LISTENING = re.compile(
    r"open_tcp_listeners|serve_tcp|serve_listeners|\.listen\(|socket\.socket\(|create_server|start_server"
)
#: Modules allowed a raw socket, because they only connect it (read by the second test).
CONNECTING = {"_connect.py"}
SERVING = re.compile(r"\.(bind|listen|accept)\(|SO_REUSE|open_tcp_listeners|serve_")


@pytest.mark.req("OC-ADAPT-OAI-6003")
def test_library_modules_open_no_listening_socket() -> None:
    modules = [p for p in LIBRARY.rglob("*.py") if "testing" not in p.relative_to(LIBRARY).parts]
    assert len(modules) > 10
    modules = [p for p in modules if str(p.relative_to(LIBRARY)) not in CONNECTING]
    offenders = [str(p.relative_to(LIBRARY)) for p in modules if LISTENING.search(p.read_text())]
    assert offenders == []


@pytest.mark.req("OC-ADAPT-OAI-6003")
def test_the_module_that_makes_a_raw_socket_only_connects_it() -> None:
    for name in CONNECTING:
        text = (LIBRARY / name).read_text()
        assert "socket.socket(" in text  # the exemption is still needed
        assert ".connect(" in text
        assert SERVING.search(text) is None


@pytest.mark.req("OC-ADAPT-OAI-6003")
def test_the_test_upstream_binds_loopback_by_default() -> None:
    assert FakeUpstream().host == "127.0.0.1"
    assert LISTENING.search((LIBRARY / "testing" / "_upstream.py").read_text())  # it does listen
