"""OC-ADAPT-OAI-6003: the adapter exposes no endpoint. The library opens no listening socket
(only `oai_adapter.testing`, the test upstream, does — and it binds 127.0.0.1)."""

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


@pytest.mark.req("OC-ADAPT-OAI-6003")
def test_library_modules_open_no_listening_socket() -> None:
    modules = [p for p in LIBRARY.rglob("*.py") if "testing" not in p.relative_to(LIBRARY).parts]
    assert len(modules) > 10
    offenders = [str(p.relative_to(LIBRARY)) for p in modules if LISTENING.search(p.read_text())]
    assert offenders == []


@pytest.mark.req("OC-ADAPT-OAI-6003")
def test_the_test_upstream_binds_loopback_by_default() -> None:
    assert FakeUpstream().host == "127.0.0.1"
    assert LISTENING.search((LIBRARY / "testing" / "_upstream.py").read_text())  # it does listen
